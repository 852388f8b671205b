//! Online absmean quantization of float latent weights: the twin of
//! `shaders/absmean_sum.wgsl` + `shaders/absmean_quantize.wgsl`.

use crate::ops::quantize::{absmean_scale, SUM_BLOCK, SUM_LANES};

/// Σ|x| over one block of at most [`SUM_BLOCK`] values, in the kernel's order: lane l adds
/// x[l], x[l + SUM_LANES], … in sequence, then lanes are summed pairwise as a tree (l += l + stride).
fn block_abs_sum(block: &[f32]) -> f32 {
    let mut lanes = [0.0f32; SUM_LANES];
    for (l, lane) in lanes.iter_mut().enumerate() {
        *lane = block
            .iter()
            .skip(l)
            .step_by(SUM_LANES)
            .fold(0.0, |acc, v| acc + v.abs());
    }
    let mut stride = SUM_LANES / 2;
    while stride > 0 {
        for l in 0..stride {
            lanes[l] += lanes[l + stride];
        }
        stride /= 2;
    }
    lanes[0]
}

/// Σ|x| summed as the GPU sums it: block sums, then block sums of those, until one value is left.
pub fn blocked_abs_sum(values: &[f32]) -> f32 {
    let mut level: Vec<f32> = values.chunks(SUM_BLOCK).map(block_abs_sum).collect();
    while level.len() > 1 {
        level = level.chunks(SUM_BLOCK).map(block_abs_sum).collect();
    }
    level[0]
}

/// `s = mean(|W|)` (clamped ≥ 1e-5), `t = clamp(round_half_even(W · (1/s)), −1, 1)`: the ternary
/// values of a row-major tensor and its multiplier s.
pub fn absmean_quantize(values: &[f32]) -> (Vec<i8>, f32) {
    let scale = absmean_scale(blocked_abs_sum(values), values.len());
    let inv = 1.0 / scale;
    let t = values
        .iter()
        .map(|v| (v * inv).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (t, scale)
}
