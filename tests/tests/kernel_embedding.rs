//! `embedding.wgsl` against `reference::embedding::embed`, and with int8 tables (quantized by
//! `quantize_rows_int8.wgsl`) against `reference::quantize_rows::int8_embed`: exact equality (every
//! conversion is exact, and code · scale is one f32 product).

use proptest::prelude::*;
use rand::Rng as _;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::embedding::{DenseTable, Embedding, FloatDType, TokenTable};
use tern::ops::quantize_rows::RowQuantizer;
use tern::ops::StepParams;
use tern::reference::embedding::embed;
use tern::reference::quantize_rows::{int8_embed, quantize_rows_int8};
use tern_tests::{for_each_adapter, random_f32, seeded, table_bytes};

fn run_gpu(ctx: &Context, table: &TokenTable, ids: &[u32]) -> Vec<f32> {
    let kernel = Embedding::new(ctx, table.format());
    let step = StepParams {
        pos: 0,
        tokens: ids.len() as u32,
        row: 0,
        _pad: 0,
    };
    let step = GpuBuffer::from_slice(ctx, "step", &[step], BufferUsage::Uniform).unwrap();
    let ids_buffer = GpuBuffer::from_slice(ctx, "ids", ids, BufferUsage::Storage).unwrap();
    // Filled with NaN so that a row the kernel skipped cannot pass.
    let out = GpuBuffer::from_slice(
        ctx,
        "out",
        &vec![f32::NAN; ids.len() * table.cols()],
        BufferUsage::Storage,
    )
    .unwrap();
    let binding = kernel.bind(ctx, table, &step, &ids_buffer, &out).unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding);
    }))
    .unwrap();
    pollster::block_on(out.read_vec(ctx)).unwrap()
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
    let mut values = random_f32(&mut rng, rows * cols, 2.0);
    // A few f16 subnormals and signed zeros.
    for (i, v) in values.iter_mut().enumerate().step_by(7) {
        *v = if i % 2 == 0 { *v * 1e-5 } else { -0.0 };
    }
    let bytes = table_bytes(dtype, &values);
    let table =
        DenseTable::allocate_with_chunk_rows(ctx, "table", dtype, rows, cols, chunk_rows).unwrap();
    table.write_rows(ctx, 0, &bytes).unwrap();
    let ids: Vec<u32> = (0..tokens)
        .map(|_| rng.random_range(0..rows as u32))
        .collect();
    let int8 = pollster::block_on(RowQuantizer::new(ctx).quantize(ctx, "int8", &table)).unwrap();
    let (codes, scales) = quantize_rows_int8(&bytes, dtype, rows, cols);
    let cases = [
        (TokenTable::Float(table), embed(&bytes, dtype, cols, &ids)),
        (
            TokenTable::Int8(int8),
            int8_embed(&codes, &scales, cols, &ids),
        ),
    ];
    for (table, cpu) in cases {
        let gpu = run_gpu(ctx, &table, &ids);
        let (gpu_bits, cpu_bits): (Vec<u32>, Vec<u32>) = (
            gpu.iter().map(|v| v.to_bits()).collect(),
            cpu.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(
            gpu_bits,
            cpu_bits,
            "{:?} from {dtype:?} rows {rows} cols {cols} chunk {chunk_rows} ids {ids:?}",
            table.format()
        );
    }
}

const DTYPES: [FloatDType; 3] = [FloatDType::F32, FloatDType::F16, FloatDType::BF16];

#[test]
fn default_chunking() {
    for_each_adapter(|ctx| {
        for dtype in DTYPES {
            let rows_per_chunk = DenseTable::rows_per_chunk(ctx, dtype, 2560).unwrap();
            check(ctx, dtype, 300, 2560, rows_per_chunk, 7, 1);
        }
    });
}

#[test]
fn full_size_bf16_table_spans_chunks() {
    // The 2B-4T embedding: 128256 × 2560 bf16 = 656 MB: six chunks under lavapipe's 128 MiB bindings
    // (SwiftShader's 1 GiB bindings hold it whole); ids on both sides of chunk edges.
    let (rows, cols) = (128_256, 2560);
    let mut rng = seeded(3);
    let bytes: Vec<u8> = (0..rows * cols)
        .flat_map(|_| half::bf16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes())
        .collect();
    let ids = [0u32, 128_255, 26_207, 26_208, 52_415, 52_416, 70_000, 5];
    for_each_adapter(|ctx| {
        let table = DenseTable::upload(ctx, "embed", FloatDType::BF16, rows, cols, &bytes).unwrap();
        let gpu = run_gpu(ctx, &TokenTable::Float(table), &ids);
        assert_eq!(gpu, embed(&bytes, FloatDType::BF16, cols, &ids));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(rows in 1usize..200, cols in 1usize..300, chunk in 1usize..6, tokens in 1usize..12, seed in any::<u64>()) {
        for_each_adapter(|ctx| {
            for dtype in DTYPES {
                check(ctx, dtype, rows, cols, chunk * 8, tokens, seed);
            }
        });
    }
}
