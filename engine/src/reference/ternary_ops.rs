//! CPU twin of the ternary projection kernels (`shaders/ternary_matvec.wgsl`, its subgroup layout and
//! `shaders/ternary_matmul.wgsl`). It decodes the packed layouts with the plain unpackers, not with the
//! kernels' bit tricks, then does the same integer sum and the same float epilogue in the same order.

use super::ternary::unpack_ternary;
use crate::ops::ternary_matvec::Epilogue;
use crate::ops::{padded_activation_words, ActStats};

/// A packed ternary weight with its per-row scales.
pub struct PackedTernary<'a> {
    /// u32 [rows, words_per_row(k)] in the engine layout.
    pub packed: &'a [u32],
    /// Weight rows (2·I for a fused gate|up weight).
    pub rows: usize,
    /// Input width: logical columns before packing.
    pub k: usize,
    /// f32 `[rows]`.
    pub row_scale: &'a [f32],
}

/// The first `k` int8 lanes of each token's packed activations ([T, padded_activation_words(k)]).
pub fn unpack_activations(xq: &[u32], k: usize) -> Vec<i8> {
    xq.chunks_exact(padded_activation_words(k))
        .flat_map(|row| {
            row.iter()
                .flat_map(|w| w.to_le_bytes())
                .take(k)
                .map(|b| b as i8)
        })
        .collect()
}

/// `Σ_k (t[n, k] + 1) · q[t, k] − stats[t].sum` for every token t and row n, as [T, rows]: the kernels'
/// exact integer result (Σ t·q when the stats hold Σ q, as the quantizer writes them).
pub fn code_dots(weights: &PackedTernary<'_>, xq: &[u32], stats: &[ActStats]) -> Vec<i32> {
    let k = weights.k;
    let t = unpack_ternary(weights.packed, weights.rows, k);
    let q = unpack_activations(xq, k);
    q.chunks_exact(k)
        .zip(stats)
        .flat_map(|(q, s)| {
            t.chunks_exact(k).map(move |row| {
                let codes: i32 = row
                    .iter()
                    .zip(q)
                    .map(|(&t, &q)| (i32::from(t) + 1) * i32::from(q))
                    .sum();
                codes - s.sum
            })
        })
        .collect()
}

/// What the kernels write into `out` ([T, epilogue.outputs(rows)]) for the tokens in `stats`.
pub fn ternary_project(
    weights: &PackedTernary<'_>,
    xq: &[u32],
    stats: &[ActStats],
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let rows = weights.rows;
    let outputs = epilogue.outputs(rows);
    let dots = code_dots(weights, xq, stats);
    for (t, s) in stats.iter().enumerate() {
        let value = |row: usize| dots[t * rows + row] as f32 * s.inv_scale * weights.row_scale[row];
        for n in 0..outputs {
            let o = &mut out[t * outputs + n];
            let v = value(n);
            *o = match epilogue {
                Epilogue::Store => v,
                Epilogue::AddResidual => *o + v,
                Epilogue::Relu2Mul => {
                    let r = v.max(0.0);
                    r * r * value(outputs + n)
                }
                Epilogue::SiluMul => v / (1.0 + (-v).exp()) * value(outputs + n),
            };
        }
    }
}
