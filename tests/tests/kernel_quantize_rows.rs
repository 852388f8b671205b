//! `quantize_rows_int8.wgsl` (per-row absmax int8 tables for the int8 LM head) against
//! `reference::quantize_rows::quantize_rows_int8`: exact equality of every code word and scale, for
//! f32, f16 and bf16 sources, odd shapes, chunked tables, rows of zeros and exact rounding ties.

use proptest::prelude::*;
use tern::gpu::Context;
use tern::ops::embedding::{int8_row_words, Int8Table};
use tern::ops::embedding::{DenseTable, FloatDType};
use tern::ops::quantize_rows::RowQuantizer;
use tern::reference::quantize_rows::{int8_code, quantize_rows_int8};
use tern_tests::{for_each_adapter, random_f32, seeded, table_bytes};

const DTYPES: [FloatDType; 3] = [FloatDType::F32, FloatDType::F16, FloatDType::BF16];

/// Every chunk's codes and scales, concatenated in row order.
fn read_back(ctx: &Context, table: &Int8Table) -> (Vec<u32>, Vec<f32>) {
    let (mut codes, mut scales) = (Vec::new(), Vec::new());
    for chunk in &table.chunks {
        codes.extend(pollster::block_on(chunk.codes.read_vec::<u32>(ctx)).unwrap());
        scales.extend(pollster::block_on(chunk.scales.read_vec::<f32>(ctx)).unwrap());
    }
    (codes, scales)
}

fn check(ctx: &Context, dtype: FloatDType, values: &[f32], rows: usize, chunk_rows: usize) {
    let cols = values.len() / rows;
    let bytes = table_bytes(dtype, values);
    let table =
        DenseTable::allocate_with_chunk_rows(ctx, "w", dtype, rows, cols, chunk_rows).unwrap();
    table.write_rows(ctx, 0, &bytes).unwrap();
    let int8 = pollster::block_on(RowQuantizer::new(ctx).quantize(ctx, "w8", &table)).unwrap();
    assert_eq!((int8.rows, int8.cols), (rows, cols));
    let (gpu_codes, gpu_scales) = read_back(ctx, &int8);
    let (cpu_codes, cpu_scales) = quantize_rows_int8(&bytes, dtype, rows, cols);
    let what = format!("{dtype:?} [{rows}, {cols}] chunk {chunk_rows}");
    let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&gpu_scales), bits(&cpu_scales), "{what}: scales");
    let row_words = int8_row_words(cols);
    for r in 0..rows {
        let (gpu, cpu) = (
            &gpu_codes[r * row_words..(r + 1) * row_words],
            &cpu_codes[r * row_words..(r + 1) * row_words],
        );
        assert_eq!(gpu, cpu, "{what}: codes of row {r}");
    }
}

#[test]
fn exact_ties_round_away_from_zero() {
    // With max|w| = 127 every w = j + ½ is an exact tie of w / s (representable in all three dtypes).
    let mut row = vec![127.0f32];
    for j in [0.0f32, 1.0, 2.0, 62.0, 63.0, 125.0, 126.0] {
        row.extend([j + 0.5, -(j + 0.5)]);
    }
    let cols = row.len();
    for_each_adapter(|ctx| {
        for dtype in DTYPES {
            check(ctx, dtype, &row, 1, 8);
        }
    });
    let bytes = table_bytes(FloatDType::BF16, &row);
    let (codes, _) = quantize_rows_int8(&bytes, FloatDType::BF16, 1, cols);
    let q: Vec<i32> = (0..cols).map(|k| int8_code(&codes, cols, 0, k)).collect();
    assert_eq!(
        q,
        [127, 1, -1, 2, -2, 3, -3, 63, -63, 64, -64, 126, -126, 127, -127]
    );
}

#[test]
fn odd_shapes_rows_of_zeros_and_chunks() {
    for_each_adapter(|ctx| {
        for dtype in DTYPES {
            for (rows, cols, chunk_rows) in [(1, 1, 8), (3, 7, 8), (19, 33, 8), (77, 2560, 24)] {
                let mut rng = seeded((rows * 1000 + cols) as u64);
                let mut values = random_f32(&mut rng, rows * cols, 3.0);
                // Row 1 all zeros (signed), and f16-subnormal-sized values in the last row.
                if rows > 1 {
                    for (k, v) in values[cols..2 * cols].iter_mut().enumerate() {
                        *v = if k % 2 == 0 { 0.0 } else { -0.0 };
                    }
                }
                let last = (rows - 1) * cols;
                for v in &mut values[last..] {
                    *v *= 1e-5;
                }
                check(ctx, dtype, &values, rows, chunk_rows);
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(rows in 1usize..120, cols in 1usize..300, chunk in 1usize..6, scale in 1e-3f32..1e3, seed in any::<u64>()) {
        let mut rng = seeded(seed);
        let values = random_f32(&mut rng, rows * cols, scale);
        for_each_adapter(|ctx| {
            for dtype in DTYPES {
                check(ctx, dtype, &values, rows, chunk * 8);
            }
        });
    }
}
