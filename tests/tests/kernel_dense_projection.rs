//! `dense_projection.wgsl` (both decode layouts and the prefill matmul, every epilogue, chunked
//! weights) against `reference::dense::dense_project`.
//! Tolerance: each row value may differ by 1e-5 · Σ_k |w·x| (f32 sums in a different order); the
//! epilogue's bound propagates that error through relu²·u or silu·u, plus 1e-6 of the residual.

use proptest::prelude::*;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::dense_projection::{DenseLayout, DenseProjection, DenseProjectionSite};
use tern::ops::embedding::{DenseTable, FloatDType};
use tern::ops::ternary_matvec::Epilogue;
use tern::ops::StepParams;
use tern::reference::dense::{dense_project, matvec};
use tern::reference::embedding::table_element;
use tern_tests::{for_each_adapter, random_f32, seeded, table_bytes};

const EPILOGUES: [Epilogue; 4] = [
    Epilogue::Store,
    Epilogue::AddResidual,
    Epilogue::Relu2Mul,
    Epilogue::SiluMul,
];

/// The kernel variants: a decode layout, or the prefill matmul.
#[derive(Clone, Copy, Debug)]
enum Variant {
    Decode(DenseLayout),
    Prefill,
}

const VARIANTS: [Variant; 3] = [
    Variant::Decode(DenseLayout::RowPerInvocation),
    Variant::Decode(DenseLayout::RowPerWorkgroup),
    Variant::Prefill,
];

/// A weight matrix: its bytes and its table on the GPU.
struct Weight {
    bytes: Vec<u8>,
    table: DenseTable,
}

fn weight(
    ctx: &Context,
    dtype: FloatDType,
    rows: usize,
    cols: usize,
    chunk: usize,
    seed: u64,
) -> Weight {
    let mut rng = seeded(seed);
    let bytes = table_bytes(dtype, &random_f32(&mut rng, rows * cols, 1.0));
    let table = DenseTable::allocate_with_chunk_rows(ctx, "w", dtype, rows, cols, chunk).unwrap();
    table.write_rows(ctx, 0, &bytes).unwrap();
    Weight { bytes, table }
}

#[allow(clippy::too_many_arguments)]
fn run_gpu(
    ctx: &Context,
    variant: Variant,
    epilogue: Epilogue,
    gate: &Weight,
    up: Option<&Weight>,
    x: &[f32],
    initial: &[f32],
) -> Vec<f32> {
    let (rows, cols) = (gate.table.rows, gate.table.cols);
    let tokens = x.len() / cols;
    let layout = match variant {
        Variant::Decode(layout) => layout,
        Variant::Prefill => DenseLayout::for_adapter(ctx),
    };
    let kernel = DenseProjection::with_layout(ctx, epilogue, gate.table.dtype, cols, layout);
    let step = StepParams {
        pos: 0,
        tokens: tokens as u32,
        row: 0,
        _pad: 0,
    };
    let step = GpuBuffer::from_slice(ctx, "step", &[step], BufferUsage::Uniform).unwrap();
    let xb = GpuBuffer::from_slice(ctx, "x", x, BufferUsage::Storage).unwrap();
    let out = GpuBuffer::from_slice(ctx, "out", initial, BufferUsage::Storage).unwrap();
    assert_eq!(initial.len(), tokens * rows);
    let site = DenseProjectionSite {
        weights: &gate.table,
        up: up.map(|u| &u.table),
        step: &step,
        x: &xb,
        out: &out,
    };
    let binding = kernel.bind(ctx, &site).unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        match variant {
            Variant::Decode(_) => kernel.dispatch_decode(&mut pass, &binding),
            Variant::Prefill => kernel.dispatch_prefill(&mut pass, &binding, tokens as u32),
        }
    }))
    .unwrap();
    pollster::block_on(out.read_vec(ctx)).unwrap()
}

/// Σ_k |w·x| per [token, row]: the scale of a row value's rounding error.
fn magnitudes(w: &Weight, x: &[f32]) -> Vec<f32> {
    let (rows, cols) = (w.table.rows, w.table.cols);
    let abs: Vec<f32> = (0..rows * cols)
        .map(|i| table_element(&w.bytes, w.table.dtype, i).abs())
        .collect();
    let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    matvec(
        bytemuck::cast_slice(&abs),
        FloatDType::F32,
        rows,
        cols,
        &abs_x,
    )
}

#[allow(clippy::too_many_arguments)]
fn check(
    ctx: &Context,
    dtype: FloatDType,
    rows: usize,
    cols: usize,
    chunk: usize,
    tokens: usize,
    variants: &[Variant],
    seed: u64,
) {
    let gate = weight(ctx, dtype, rows, cols, chunk, seed);
    let up = weight(ctx, dtype, rows, cols, chunk, seed ^ 1);
    let mut rng = seeded(seed ^ 2);
    let x = random_f32(&mut rng, tokens * cols, 2.0);
    let initial = random_f32(&mut rng, tokens * rows, 3.0);
    let g = matvec(&gate.bytes, dtype, rows, cols, &x);
    let u = matvec(&up.bytes, dtype, rows, cols, &x);
    let (mg, mu) = (magnitudes(&gate, &x), magnitudes(&up, &x));
    for epilogue in EPILOGUES {
        let up_weight = epilogue.is_gated().then_some(&up);
        let mut cpu = initial.clone();
        dense_project(
            &gate.bytes,
            up_weight.map(|u| &u.bytes[..]),
            dtype,
            rows,
            cols,
            &x,
            epilogue,
            &mut cpu,
        );
        for &variant in variants {
            let gpu = run_gpu(ctx, variant, epilogue, &gate, up_weight, &x, &initial);
            for i in 0..gpu.len() {
                let (eg, eu) = (1e-5 * mg[i] + 1e-30, 1e-5 * mu[i] + 1e-30);
                let (gv, uv) = (g[i].abs() + eg, u[i].abs() + eu);
                let bound = match epilogue {
                    Epilogue::Store => eg,
                    Epilogue::AddResidual => eg + 1e-6 * initial[i].abs(),
                    // |d(relu(g)²·u)| ≤ 2|g|·|u|·δg + g²·δu (with |g|, |u| widened by their errors).
                    Epilogue::Relu2Mul => 2.0 * gv * uv * eg + gv * gv * eu,
                    // silu' ≤ 1.1 and |silu(g)| ≤ |g|.
                    Epilogue::SiluMul => 1.1 * uv * eg + gv * eu,
                };
                assert!(
                    (gpu[i] - cpu[i]).abs() <= bound * 1.01,
                    "{dtype:?} {variant:?} {epilogue:?} [{rows}, {cols}] chunk {chunk} T={tokens}: \
                     output {i}: gpu {} cpu {} (bound {bound})",
                    gpu[i],
                    cpu[i]
                );
            }
        }
    }
}

#[test]
fn aligned_and_unaligned_rows_every_variant() {
    // cols·bytes % 16 == 0 takes the vec4 path (256 for every dtype, 36 for f32); 16-bit rows of
    // whole words (36, 10) the pair path; the others decode element by element. T = 11 gives the
    // matmul a partial second tile.
    for_each_adapter(|ctx| {
        for dtype in [FloatDType::F16, FloatDType::F32, FloatDType::BF16] {
            for cols in [256, 36, 10, 7] {
                check(ctx, dtype, 45, cols, 16, 11, &VARIANTS, cols as u64);
            }
        }
    });
}

#[test]
fn bitnet_2b4t_down_projection_shape() {
    // The 2B-4T down projection's width (K = 6912) in f16, the baseline's dtype, decode and prefill.
    for_each_adapter(|ctx| {
        check(ctx, FloatDType::F16, 72, 6912, 64, 1, &VARIANTS, 5);
        check(
            ctx,
            FloatDType::F16,
            72,
            6912,
            64,
            9,
            &[Variant::Prefill],
            6,
        );
    });
}

#[test]
fn rejects_mismatched_sites() {
    for_each_adapter(|ctx| {
        let gate = weight(ctx, FloatDType::F16, 16, 32, 8, 1);
        let up = weight(ctx, FloatDType::F16, 16, 32, 16, 2); // chunked differently
        let buffer = GpuBuffer::new(ctx, "b", 1024, BufferUsage::Storage).unwrap();
        let step =
            GpuBuffer::from_slice(ctx, "step", &[StepParams::default()], BufferUsage::Uniform)
                .unwrap();
        let error = |epilogue, dtype, cols, up: Option<&DenseTable>| {
            let site = DenseProjectionSite {
                weights: &gate.table,
                up,
                step: &step,
                x: &buffer,
                out: &buffer,
            };
            DenseProjection::new(ctx, epilogue, dtype, cols)
                .bind(ctx, &site)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(error(Epilogue::Relu2Mul, FloatDType::F16, 32, None).contains("needs up rows"));
        assert!(error(Epilogue::Store, FloatDType::F16, 32, Some(&gate.table)).contains("no up"));
        assert!(error(Epilogue::SiluMul, FloatDType::F16, 32, Some(&up.table)).contains("chunked"));
        assert!(error(Epilogue::Store, FloatDType::BF16, 32, None).contains("built for"));
        assert!(error(Epilogue::Store, FloatDType::F16, 33, None).contains("built for"));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(rows in 1usize..200, cols in 1usize..300, chunk in 1usize..8, tokens in 1usize..20, seed in any::<u64>()) {
        for_each_adapter(|ctx| {
            check(ctx, FloatDType::F16, rows, cols, chunk * 8, tokens, &VARIANTS, seed);
        });
    }
}
