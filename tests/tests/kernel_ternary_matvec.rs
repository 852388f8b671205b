//! `ternary_matvec.wgsl` (every work layout) against `reference::ternary_ops`. Tolerances: see
//! `ternary_cases` (integer part exact; epilogues ≤ 1e-6 relative, SiluMul 4e-6).

mod ternary_cases;

use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;
use tern::gpu::Context;
use tern::ops::ternary_matvec::{Epilogue, MatvecLayout, TernaryMatvec};
use tern_tests::for_each_adapter;
use ternary_cases::{Case, EPILOGUES};

/// Every layout the adapter can run, so the GPU layouts are tested on the CPU adapters too.
fn layouts(ctx: &Context) -> Vec<MatvecLayout> {
    let mut layouts = vec![
        MatvecLayout::RowPerInvocation,
        MatvecLayout::WorkgroupReduce,
    ];
    if ctx.caps.subgroups {
        layouts.push(MatvecLayout::SubgroupPerRow);
    }
    layouts
}

/// Pipelines built once per adapter, layout and epilogue (compiling dominates small cases).
fn kernel(ctx: &Context, layout: MatvecLayout, epilogue: Epilogue) -> &'static TernaryMatvec {
    type Cache = HashMap<(usize, MatvecLayout, Epilogue), &'static TernaryMatvec>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let key = (ctx as *const Context as usize, layout, epilogue);
    let mut cache = CACHE.lock().unwrap();
    cache
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert_with(|| {
            Box::leak(Box::new(
                TernaryMatvec::with_layout(ctx, epilogue, layout).unwrap(),
            ))
        })
}

fn run(ctx: &Context, case: &Case, layout: MatvecLayout, epilogue: Epilogue) -> Vec<f32> {
    let kernel = kernel(ctx, layout, epilogue);
    case.run_gpu(
        ctx,
        epilogue,
        |site| kernel.bind(ctx, site).unwrap(),
        |pass, binding| kernel.dispatch(pass, binding),
    )
}

/// The exact integer result and the `epilogue` result in every layout.
fn check(ctx: &Context, case: &Case, epilogue: Epilogue, expected: &[f32], exact: &Case) {
    for layout in layouts(ctx) {
        let what = format!(
            "{layout:?} K={} rows={} T={}",
            case.k, case.rows, case.tokens
        );
        exact.check_exact(&what, &run(ctx, exact, layout, Epilogue::Store));
        case.check(&what, epilogue, &run(ctx, case, layout, epilogue), expected);
    }
}

/// A 2B-4T layer shape: weight `rows` × `k` with per-segment scales.
fn model_shape(k: usize, rows: usize, segments: &[usize], epilogue: Epilogue) {
    let case = Case::random(k, rows, 1, segments, (k * rows) as u64);
    let expected = case.expected(epilogue);
    let exact = Case::random(k, rows, 1, segments, (k * rows) as u64 + 1).unscaled();
    for_each_adapter(|ctx| check(ctx, &case, epilogue, &expected, &exact));
}

#[test]
fn qkv_fused() {
    model_shape(2560, 3840, &[2560, 640, 640], Epilogue::Store);
}

#[test]
fn square_store() {
    model_shape(2560, 2560, &[], Epilogue::Store);
}

#[test]
fn gate_up_relu2() {
    model_shape(2560, 2 * 6912, &[6912], Epilogue::Relu2Mul);
}

#[test]
fn down_add_residual() {
    model_shape(6912, 2560, &[], Epilogue::AddResidual);
}

#[test]
fn rows_beyond_one_dispatch_dimension() {
    // 65535 · 64 + 37 rows: more than 65535 workgroups of 64 rows, so the grid spills into y. Only the
    // row-per-invocation layout: the reduction layouts index the grid the same way but need 8–32
    // invocations per row, minutes for 4 M rows on the CPU adapters.
    let rows = 65535 * 64 + 37;
    let case = Case::random(16, rows, 1, &[], 3);
    let expected = case.expected(Epilogue::Store);
    for_each_adapter(|ctx| {
        let layout = MatvecLayout::RowPerInvocation;
        let gpu = run(ctx, &case, layout, Epilogue::Store);
        case.check(
            "rows beyond 65535 workgroups",
            Epilogue::Store,
            &gpu,
            &expected,
        );
    });
}

#[test]
fn rejects_odd_gate_up() {
    let case = Case::random(32, 7, 1, &[], 5);
    for_each_adapter(|ctx| {
        let kernel = kernel(ctx, MatvecLayout::RowPerInvocation, Epilogue::SiluMul);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            case.run_gpu(
                ctx,
                Epilogue::SiluMul,
                |site| kernel.bind(ctx, site).unwrap(),
                |_, _| {},
            )
        }));
        assert!(
            result.is_err(),
            "a gate|up weight with 7 rows must be rejected"
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(
        k in 1usize..=700,
        outputs in 1usize..=300,
        tokens in 1usize..=3,
        epilogue in proptest::sample::select(EPILOGUES.to_vec()),
        seed in any::<u64>(),
    ) {
        let rows = if epilogue.is_gated() { 2 * outputs } else { outputs };
        let case = Case::random(k, rows, tokens, &[outputs], seed);
        let expected = case.expected(epilogue);
        let exact = Case::random(k, rows, tokens, &[], seed ^ 1).unscaled();
        for_each_adapter(|ctx| check(ctx, &case, epilogue, &expected, &exact));
    }
}
