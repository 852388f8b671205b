//! `dense_matvec.wgsl` (both work layouts) against `reference::dense::matvec`, and `int8_matvec.wgsl`
//! (both layouts, tables quantized by `quantize_rows_int8.wgsl`) against
//! `reference::quantize_rows::int8_matvec`.
//! Tolerance: |gpu − cpu| ≤ 1e-5 · Σ_k |w·x| + 1e-30 per output (f32 sums in a different order; for
//! int8, w = code · scale).

use proptest::prelude::*;
use rand::Rng as _;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::dense_matvec::{DenseMatvec, MatvecLayout};
use tern::ops::embedding::{DenseTable, FloatDType, TableFormat, TokenTable};
use tern::ops::quantize_rows::RowQuantizer;
use tern::ops::StepParams;
use tern::reference::dense::matvec;
use tern::reference::embedding::table_element;
use tern::reference::quantize_rows::{int8_code, int8_matvec, quantize_rows_int8};
use tern_tests::{for_each_adapter, random_f32, seeded, table_bytes};

const LAYOUTS: [MatvecLayout; 2] = [
    MatvecLayout::RowPerInvocation,
    MatvecLayout::RowPerWorkgroup,
];
const DTYPES: [FloatDType; 3] = [FloatDType::F32, FloatDType::F16, FloatDType::BF16];

fn run_gpu(ctx: &Context, layout: MatvecLayout, table: &TokenTable, x: &[f32]) -> Vec<f32> {
    let tokens = x.len() / table.cols();
    let kernel = DenseMatvec::with_layout(ctx, table.format(), table.cols(), layout);
    let step = StepParams {
        pos: 0,
        tokens: tokens as u32,
        row: 0,
        _pad: 0,
    };
    let step = GpuBuffer::from_slice(ctx, "step", &[step], BufferUsage::Uniform).unwrap();
    let xb = GpuBuffer::from_slice(ctx, "x", x, BufferUsage::Storage).unwrap();
    let out = GpuBuffer::from_slice(
        ctx,
        "out",
        &vec![f32::NAN; tokens * table.rows()],
        BufferUsage::Storage,
    )
    .unwrap();
    let binding = kernel.bind(ctx, table, &step, &xb, &out).unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding);
    }))
    .unwrap();
    pollster::block_on(out.read_vec(ctx)).unwrap()
}

/// `weight(v, k)`: the table's element as the kernel multiplies it.
fn assert_matches(
    what: &str,
    gpu: &[f32],
    cpu: &[f32],
    weight: impl Fn(usize, usize) -> f32,
    rows: usize,
    x: &[f32],
) {
    let cols = x.len() / (gpu.len() / rows);
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let (t, v) = (i / rows, i % rows);
        let magnitude: f32 = (0..cols)
            .map(|k| (weight(v, k) * x[t * cols + k]).abs())
            .sum();
        assert!(
            (g - c).abs() <= 1e-5 * magnitude + 1e-30,
            "{what}: token {t} row {v}: gpu {g} cpu {c} (Σ|w·x| {magnitude})"
        );
    }
}

fn check(
    ctx: &Context,
    dtype: FloatDType,
    rows: usize,
    cols: usize,
    chunk_rows: usize,
    tokens: usize,
    seed: u64,
) {
    let mut rng = seeded(seed);
    let bytes = table_bytes(dtype, &random_f32(&mut rng, rows * cols, 1.0));
    let x = random_f32(&mut rng, tokens * cols, 2.0);
    let table =
        DenseTable::allocate_with_chunk_rows(ctx, "w", dtype, rows, cols, chunk_rows).unwrap();
    table.write_rows(ctx, 0, &bytes).unwrap();
    let cpu = matvec(&bytes, dtype, rows, cols, &x);
    let table = TokenTable::Float(table);
    for layout in LAYOUTS {
        let gpu = run_gpu(ctx, layout, &table, &x);
        assert_matches(
            &format!("{dtype:?} {layout:?} [{rows}, {cols}] T={tokens}"),
            &gpu,
            &cpu,
            |v, k| table_element(&bytes, dtype, v * cols + k),
            rows,
            &x,
        );
    }
}

/// The int8 table quantized on the GPU from a random `dtype` table, against the twin.
fn check_int8(
    ctx: &Context,
    dtype: FloatDType,
    rows: usize,
    cols: usize,
    chunk_rows: usize,
    tokens: usize,
    seed: u64,
) {
    let mut rng = seeded(seed);
    let mut values = random_f32(&mut rng, rows * cols, 1.0);
    values[..cols.min(rows * cols)].fill(0.0); // a row of zeros: scale 0
    let bytes = table_bytes(dtype, &values);
    let x = random_f32(&mut rng, tokens * cols, 2.0);
    let float =
        DenseTable::allocate_with_chunk_rows(ctx, "w", dtype, rows, cols, chunk_rows).unwrap();
    float.write_rows(ctx, 0, &bytes).unwrap();
    let int8 = pollster::block_on(RowQuantizer::new(ctx).quantize(ctx, "w8", &float)).unwrap();
    let table = TokenTable::Int8(int8);
    let (codes, scales) = quantize_rows_int8(&bytes, dtype, rows, cols);
    let cpu = int8_matvec(&codes, &scales, rows, cols, &x);
    for layout in LAYOUTS {
        let gpu = run_gpu(ctx, layout, &table, &x);
        assert_matches(
            &format!("int8 from {dtype:?} {layout:?} [{rows}, {cols}] T={tokens}"),
            &gpu,
            &cpu,
            |v, k| int8_code(&codes, cols, v, k) as f32 * scales[v],
            rows,
            &x,
        );
    }
}

#[test]
fn int8_aligned_and_unaligned_rows_one_to_five_tokens() {
    // cols % 16 == 0 takes the vec4 path; the others decode code by code from padded rows.
    for_each_adapter(|ctx| {
        for (i, cols) in [2560, 64, 16, 36, 100, 7, 1].into_iter().enumerate() {
            for tokens in 1..=5 {
                let dtype = DTYPES[(i + tokens) % 3];
                check_int8(
                    ctx,
                    dtype,
                    77,
                    cols,
                    24,
                    tokens,
                    (cols * 10 + tokens) as u64,
                );
            }
        }
    });
}

#[test]
fn int8_rows_of_a_token_do_not_depend_on_the_batch() {
    // The batch decode path's bit-identity: token t's logits are the same alone or among others.
    let (rows, cols) = (45, 200);
    let mut rng = seeded(5);
    let bytes = table_bytes(FloatDType::BF16, &random_f32(&mut rng, rows * cols, 1.0));
    let x = random_f32(&mut rng, 5 * cols, 2.0);
    for_each_adapter(|ctx| {
        let float = DenseTable::upload(ctx, "w", FloatDType::BF16, rows, cols, &bytes).unwrap();
        let int8 = pollster::block_on(RowQuantizer::new(ctx).quantize(ctx, "w8", &float)).unwrap();
        let table = TokenTable::Int8(int8);
        assert_eq!(table.format(), TableFormat::Int8);
        for layout in LAYOUTS {
            let batch = run_gpu(ctx, layout, &table, &x);
            for (t, xt) in x.chunks_exact(cols).enumerate() {
                let alone = run_gpu(ctx, layout, &table, xt);
                assert_eq!(
                    alone,
                    batch[t * rows..(t + 1) * rows],
                    "{layout:?} token {t}"
                );
            }
        }
    });
}

#[test]
fn aligned_and_unaligned_rows() {
    // cols·bytes % 16 == 0 takes the vec4 path; the others decode element by element.
    for_each_adapter(|ctx| {
        for dtype in DTYPES {
            for cols in [2560, 64, 8, 36, 100, 7] {
                check(ctx, dtype, 77, cols, 24, 2, cols as u64);
            }
        }
    });
}

#[test]
fn inputs_smaller_than_one_vec4() {
    // 1-3 floats of x (and of output): the kernel still binds x as vec4s on one path, which
    // WebGPU refuses below 16 bytes; random_shapes draws such shapes only now and then.
    for_each_adapter(|ctx| {
        for dtype in DTYPES {
            for (rows, cols, tokens) in [(1, 1, 1), (3, 2, 1), (2, 3, 1), (5, 1, 3)] {
                check(ctx, dtype, rows, cols, 8, tokens, (rows * 10 + cols) as u64);
            }
        }
    });
}

#[test]
fn lm_head_bf16_128256_x_2560() {
    // The 2B-4T LM head (tied to the 656 MB embedding): six chunks under lavapipe's 128 MiB bindings.
    let (rows, cols) = (128_256, 2560);
    let mut rng = seeded(11);
    let bytes: Vec<u8> = (0..rows * cols)
        .flat_map(|_| half::bf16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes())
        .collect();
    let x = random_f32(&mut rng, cols, 2.0);
    let cpu = matvec(&bytes, FloatDType::BF16, rows, cols, &x);
    for_each_adapter(|ctx| {
        let table =
            DenseTable::upload(ctx, "lm_head", FloatDType::BF16, rows, cols, &bytes).unwrap();
        let kernel = MatvecLayout::for_adapter(ctx);
        let gpu = run_gpu(ctx, kernel, &TokenTable::Float(table), &x);
        let weight = |v, k| table_element(&bytes, FloatDType::BF16, v * cols + k);
        assert_matches("lm head", &gpu, &cpu, weight, rows, &x);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(rows in 1usize..300, cols in 1usize..400, chunk in 1usize..20, tokens in 1usize..4, seed in any::<u64>()) {
        for_each_adapter(|ctx| {
            for dtype in DTYPES {
                check(ctx, dtype, rows, cols, chunk * 8, tokens, seed);
                check_int8(ctx, dtype, rows, cols, chunk * 8, tokens + 1, seed);
            }
        });
    }
}
