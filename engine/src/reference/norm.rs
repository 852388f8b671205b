//! RMSNorm, alone and fused with int8 activation quantization.

use crate::ops::ActStats;

/// `w · x · rsqrt(mean(x²) + eps)` for each row of `x` (rows of `gain.len()`).
pub fn rmsnorm(x: &[f32], gain: &[f32], eps: f32) -> Vec<f32> {
    let k = gain.len();
    x.chunks_exact(k)
        .flat_map(|row| {
            let mean = row.iter().map(|v| v * v).sum::<f32>() / k as f32;
            let inv_rms = 1.0 / (mean + eps).sqrt();
            row.iter().zip(gain).map(move |(v, g)| g * (v * inv_rms))
        })
        .collect()
}

/// Per-token absmax int8 quantization of rows of length `k`: `q = clamp(round(y · 127/max|y|))`.
/// Returns the int8 values (unpadded) and each token's [`ActStats`].
pub fn quantize_activations(y: &[f32], k: usize) -> (Vec<i8>, Vec<ActStats>) {
    let mut q = Vec::with_capacity(y.len());
    let mut stats = Vec::with_capacity(y.len() / k);
    for row in y.chunks_exact(k) {
        let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = 127.0 / absmax.max(1e-5);
        let mut sum = 0i32;
        for v in row {
            let code = (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8;
            sum += i32::from(code);
            q.push(code);
        }
        stats.push(ActStats {
            inv_scale: 1.0 / scale,
            sum,
        });
    }
    (q, stats)
}

/// RMSNorm then quantization: the twin of `shaders/rmsnorm_quant.wgsl` (unpacked, unpadded).
pub fn rmsnorm_quant(x: &[f32], gain: &[f32], eps: f32) -> (Vec<i8>, Vec<ActStats>) {
    quantize_activations(&rmsnorm(x, gain, eps), gain.len())
}

/// Packs int8 rows of length `k` into u32 words (lane l in byte l), zero-padded to
/// [`crate::ops::padded_activation_words`] per row: the GPU layout of quantized activations.
pub fn pack_activations(q: &[i8], k: usize) -> Vec<u32> {
    let words = crate::ops::padded_activation_words(k);
    q.chunks_exact(k)
        .flat_map(|row| {
            (0..words).map(move |w| {
                (0..4).fold(0u32, |word, lane| {
                    let value = row.get(w * 4 + lane).copied().unwrap_or(0);
                    word | (u32::from(value as u8) << (8 * lane))
                })
            })
        })
        .collect()
}
