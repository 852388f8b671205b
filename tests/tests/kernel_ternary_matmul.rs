//! `ternary_matmul.wgsl` against `reference::ternary_ops`. Tolerances: see `ternary_cases` (integer
//! part exact; epilogues ≤ 1e-6 relative, SiluMul 4e-6).

mod ternary_cases;

use proptest::prelude::*;
use tern::gpu::Context;
use tern::ops::ternary_matmul::TernaryMatmul;
use tern::ops::ternary_matvec::Epilogue;
use tern_tests::for_each_adapter;
use ternary_cases::{Case, EPILOGUES};

fn run(ctx: &Context, case: &Case, epilogue: Epilogue) -> Vec<f32> {
    let kernel = TernaryMatmul::new(ctx, epilogue);
    case.run_gpu(
        ctx,
        epilogue,
        |site| kernel.bind(ctx, site).unwrap(),
        |pass, binding| kernel.dispatch(pass, binding, case.tokens as u32),
    )
}

/// The exact integer result (from `exact`, an unscaled case) and the `epilogue` result of `case`.
fn check(k: usize, rows: usize, tokens: usize, segments: &[usize], epilogue: Epilogue, seed: u64) {
    let case = Case::random(k, rows, tokens, segments, seed);
    let expected = case.expected(epilogue);
    let exact = Case::random(k, rows, tokens, segments, seed ^ 1).unscaled();
    for_each_adapter(|ctx| {
        let what = format!("K={k} rows={rows} T={tokens}");
        exact.check_exact(&what, &run(ctx, &exact, Epilogue::Store));
        case.check(&what, epilogue, &run(ctx, &case, epilogue), &expected);
    });
}

#[test]
fn long_prompt() {
    check(256, 640, 512, &[], Epilogue::Store, 1);
}

#[test]
fn square_model_shape() {
    check(2560, 2560, 37, &[], Epilogue::AddResidual, 2);
}

#[test]
fn gate_up_silu() {
    check(256, 2 * 688, 21, &[688], Epilogue::SiluMul, 3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(
        k in 1usize..=700,
        outputs in 1usize..=300,
        tokens in 1usize..=9,
        epilogue in proptest::sample::select(EPILOGUES.to_vec()),
        seed in any::<u64>(),
    ) {
        let rows = if epilogue.is_gated() { 2 * outputs } else { outputs };
        check(k, rows, tokens, &[outputs], epilogue, seed);
    }
}
