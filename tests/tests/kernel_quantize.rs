//! `absmean_sum.wgsl` + `absmean_quantize.wgsl` against `reference::quantize::absmean_quantize`.
//!
//! Tolerance: the CPU twin sums |W| in the kernel's blocked order, so the scales agree exactly unless
//! a driver reorders float additions; the test allows the scale 1e-6 relative, and a ternary value
//! may differ only where |W·(1/s)| lies within 2e-6 of the rounding boundary 0.5 (where such a scale
//! difference can flip it). Everything else must be equal.

use half::{bf16, f16};
use proptest::prelude::*;
use rand::Rng;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::quantize::{FloatDType, Quantizer};
use tern::reference::quantize::absmean_quantize;
use tern::reference::ternary::{unpack_ternary, words_per_row};
use tern_tests::{for_each_adapter, seeded};

const DTYPES: [FloatDType; 3] = [FloatDType::F32, FloatDType::F16, FloatDType::BF16];

/// Roughly normal latent weights (sum of uniforms), times `scale`, in the file's bytes.
fn random_tensor(rng: &mut impl Rng, n: usize, dtype: FloatDType, scale: f32) -> Vec<u8> {
    let values =
        (0..n).map(|_| (0..3).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * scale);
    match dtype {
        FloatDType::F32 => values.flat_map(f32::to_le_bytes).collect(),
        FloatDType::F16 => values
            .flat_map(|v| f16::from_f32(v).to_le_bytes())
            .collect(),
        FloatDType::BF16 => values
            .flat_map(|v| bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

fn gpu_quantize(
    ctx: &Context,
    quantizer: &Quantizer,
    dtype: FloatDType,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> (Vec<i8>, f32) {
    let raw = GpuBuffer::from_bytes(ctx, "raw", bytes, BufferUsage::Storage).unwrap();
    let (packed, scale) =
        pollster::block_on(quantizer.quantize(ctx, "test.weight", dtype, &raw, rows, cols))
            .unwrap();
    let words: Vec<u32> = pollster::block_on(packed.read_vec(ctx)).unwrap();
    assert_eq!(words.len(), rows * words_per_row(cols));
    // Padding columns must hold code 1 (t = 0) so that the matvec's Σc·x − Σx stays exact.
    for (w, &word) in words.iter().enumerate() {
        let valid = (cols - (w % words_per_row(cols)) * 16).min(16);
        for s in valid..16 {
            assert_eq!(
                (word >> (8 * (s % 4) + 2 * (s / 4))) & 3,
                1,
                "padding code in word {w}"
            );
        }
    }
    (unpack_ternary(&words, rows, cols), scale)
}

fn compare(what: &str, values: &[f32], gpu: (Vec<i8>, f32), cpu: &(Vec<i8>, f32)) {
    let ((gpu_t, gpu_scale), (cpu_t, cpu_scale)) = (gpu, cpu);
    assert!(
        (gpu_scale - cpu_scale).abs() <= 1e-6 * cpu_scale,
        "{what}: scale gpu {gpu_scale} vs cpu {cpu_scale}"
    );
    let inv = 1.0 / cpu_scale;
    for (i, (&g, &c)) in gpu_t.iter().zip(cpu_t).enumerate() {
        let x = (values[i] * inv).abs();
        assert!(
            g == c || (x - 0.5).abs() <= 2e-6,
            "{what}: element {i}: gpu {g} cpu {c} (W·(1/s) = {})",
            values[i] * inv
        );
    }
}

fn check(
    ctx: &Context,
    quantizer: &Quantizer,
    dtype: FloatDType,
    rows: usize,
    cols: usize,
    seed: u64,
) {
    let mut rng = seeded(seed);
    let scale = rng.random_range(0.001..2.0);
    let bytes = random_tensor(&mut rng, rows * cols, dtype, scale);
    let values = dtype.decode(&bytes);
    let cpu = absmean_quantize(&values);
    let gpu = gpu_quantize(ctx, quantizer, dtype, &bytes, rows, cols);
    compare(&format!("{dtype:?} {rows}×{cols}"), &values, gpu, &cpu);
}

#[test]
fn model_shapes() {
    // 2B-4T-bf16 gate (6912×2560: three summing levels) and down (2560×6912); 1bitLLM-large q (fp16).
    let cases = [
        (FloatDType::BF16, 6912, 2560),
        (FloatDType::BF16, 2560, 6912),
        (FloatDType::F16, 1536, 1536),
    ];
    for (dtype, rows, cols) in cases {
        let mut rng = seeded(rows as u64 + cols as u64);
        let bytes = random_tensor(&mut rng, rows * cols, dtype, 0.02);
        let values = dtype.decode(&bytes);
        let cpu = absmean_quantize(&values);
        for_each_adapter(|ctx| {
            let gpu = gpu_quantize(ctx, &Quantizer::new(ctx), dtype, &bytes, rows, cols);
            compare(&format!("{dtype:?} {rows}×{cols}"), &values, gpu, &cpu);
        });
    }
}

#[test]
fn chunked_windows_match() {
    // Windows of 48 KiB: the sum reads whole 4096-value blocks a window, the pack whole rows a window
    // starting below an aligned offset (bf16 rows of odd length start mid-word).
    for_each_adapter(|ctx| {
        let quantizer = Quantizer::new(ctx).with_max_window(48 << 10);
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            check(ctx, &quantizer, dtype, 97, 777, i as u64);
            check(ctx, &quantizer, dtype, 300, 129, 10 + i as u64);
        }
    });
}

#[test]
fn special_values() {
    for_each_adapter(|ctx| {
        let quantizer = Quantizer::new(ctx);
        // All zeros: the scale clamps to 1e-5 and every value quantizes to 0.
        let zeros = vec![0u8; 5 * 33 * 2];
        let (t, scale) = gpu_quantize(ctx, &quantizer, FloatDType::BF16, &zeros, 5, 33);
        assert_eq!((t, scale), (vec![0; 5 * 33], 1e-5));
        // f16 subnormals (|x| < 6.1e-5) must decode exactly on the GPU.
        let mut rng = seeded(3);
        let bytes = random_tensor(&mut rng, 40 * 50, FloatDType::F16, 3e-5);
        let values = FloatDType::F16.decode(&bytes);
        assert!(values.iter().filter(|v| v.abs() < 6.1e-5).count() > 1000);
        let gpu = gpu_quantize(ctx, &quantizer, FloatDType::F16, &bytes, 40, 50);
        compare("f16 subnormals", &values, gpu, &absmean_quantize(&values));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(dtype in 0usize..3, rows in 1usize..40, cols in 1usize..700, seed in any::<u64>()) {
        for_each_adapter(|ctx| check(ctx, &Quantizer::new(ctx), DTYPES[dtype], rows, cols, seed));
    }
}
