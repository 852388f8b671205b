//! `rmsnorm_quant.wgsl` against `reference::norm::rmsnorm_quant`.

use proptest::prelude::*;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::{padded_activation_words, rmsnorm_quant::RmsNormQuant, ActStats};
use tern::reference::norm::{pack_activations, quantize_activations, rmsnorm, rmsnorm_quant};
use tern_tests::{for_each_adapter, random_f32, seeded};

fn run_gpu(ctx: &Context, x: &[f32], gain: &[f32], norm: Option<f32>) -> (Vec<i8>, Vec<ActStats>) {
    let k = gain.len();
    let tokens = x.len() / k;
    let words = padded_activation_words(k);
    let kernel = RmsNormQuant::new(ctx);
    let xb = GpuBuffer::from_slice(ctx, "x", x, BufferUsage::Storage).unwrap();
    let gb = GpuBuffer::from_slice(ctx, "gain", gain, BufferUsage::Storage).unwrap();
    let xq = GpuBuffer::new(ctx, "xq", (tokens * words * 4) as u64, BufferUsage::Storage).unwrap();
    let stats = GpuBuffer::new(ctx, "stats", (tokens * 8) as u64, BufferUsage::Storage).unwrap();
    let binding = kernel.bind(ctx, k, norm, &xb, &gb, &xq, &stats).unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding, tokens as u32);
    }))
    .unwrap();
    let words_out: Vec<u32> = pollster::block_on(xq.read_vec(ctx)).unwrap();
    let stats: Vec<ActStats> = pollster::block_on(stats.read_vec(ctx)).unwrap();
    // Unpack, and check the padding lanes are zero.
    let mut q = Vec::with_capacity(tokens * k);
    for row in words_out[..tokens * words].chunks_exact(words) {
        let lanes: Vec<i8> = row
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .map(|b| b as i8)
            .collect();
        assert!(
            lanes[k..].iter().all(|&v| v == 0),
            "padding lanes must be zero"
        );
        q.extend_from_slice(&lanes[..k]);
    }
    (q, stats[..tokens].to_vec())
}

/// Codes may differ by one only where the CPU value sits on a rounding boundary (float reductions
/// in another order move y by an ulp or two); scales agree to 1e-5 relative; Σq is exact.
/// `normalize` false checks the quantize-only mode, where everything must match exactly.
fn check(ctx: &Context, tokens: usize, k: usize, seed: u64, normalize: bool) {
    let mut rng = seeded(seed);
    let x = random_f32(&mut rng, tokens * k, 3.0);
    let gain: Vec<f32> = random_f32(&mut rng, k, 1.0)
        .iter()
        .map(|g| g + 1.2)
        .collect();
    let eps = 1e-5;
    let norm = normalize.then_some(eps);
    let (gpu_q, gpu_stats) = run_gpu(ctx, &x, &gain, norm);
    let (y, (cpu_q, cpu_stats)) = if normalize {
        (rmsnorm(&x, &gain, eps), rmsnorm_quant(&x, &gain, eps))
    } else {
        (x.clone(), quantize_activations(&x, k))
    };
    if !normalize {
        assert_eq!(gpu_q, cpu_q, "quantize-only codes must be exact");
    }
    for t in 0..tokens {
        let (g, c) = (gpu_stats[t], cpu_stats[t]);
        assert!(
            (g.inv_scale - c.inv_scale).abs() <= 1e-5 * c.inv_scale,
            "token {t}: scale {g:?} vs {c:?}"
        );
        let row = t * k..(t + 1) * k;
        let gpu_sum: i32 = gpu_q[row.clone()].iter().map(|&v| i32::from(v)).sum();
        assert_eq!(
            g.sum, gpu_sum,
            "token {t}: Σq must equal the sum of the written codes"
        );
        for i in row {
            let diff = (i32::from(gpu_q[i]) - i32::from(cpu_q[i])).abs();
            let scaled = y[i] / c.inv_scale;
            let at_boundary =
                ((scaled - scaled.trunc()).abs() - 0.5).abs() < 1e-3 || scaled.abs() > 127.0;
            assert!(
                diff == 0 || (diff == 1 && at_boundary),
                "token {t} elem {}: gpu {} cpu {} (y·s = {scaled})",
                i - t * k,
                gpu_q[i],
                cpu_q[i]
            );
        }
    }
}

#[test]
fn model_shapes() {
    for_each_adapter(|ctx| {
        for (tokens, k) in [(1, 2560), (3, 6912), (1, 256), (5, 640), (2, 3200)] {
            check(ctx, tokens, k, k as u64, true);
            check(ctx, tokens, k, k as u64 + 1, false);
        }
    });
}

#[test]
fn packing_matches_reference_layout() {
    // The CPU packer is what the ternary-kernel tests feed to the GPU: it must agree with the kernel.
    for_each_adapter(|ctx| {
        let k = 37;
        let mut rng = seeded(7);
        let x = random_f32(&mut rng, 2 * k, 1.0);
        let gain = vec![1.0; k];
        let (gpu_q, _) = run_gpu(ctx, &x, &gain, Some(1e-6));
        let packed = pack_activations(&gpu_q, k);
        assert_eq!(packed.len(), 2 * padded_activation_words(k));
        let unpacked: Vec<i8> = packed
            .chunks_exact(padded_activation_words(k))
            .flat_map(|row| {
                row.iter()
                    .flat_map(|w| w.to_le_bytes())
                    .take(k)
                    .map(|b| b as i8)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(unpacked, gpu_q);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(tokens in 1usize..20, k in 1usize..1200, seed in any::<u64>(), normalize in any::<bool>()) {
        for_each_adapter(|ctx| check(ctx, tokens, k, seed, normalize));
    }
}
