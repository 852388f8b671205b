//! Per-row absmax int8 tables (the int8 LM head): the twins of `shaders/quantize_rows_int8.wgsl`, of
//! `shaders/int8_matvec.wgsl` and of the int8 path of `shaders/embedding.wgsl`.

use super::embedding::table_element;
use crate::layout::FloatDType;
use crate::ops::embedding::int8_row_words;

/// The f32 nearest 1/127: a row's scale is max|w| times it (the kernel's `INV_127`).
pub const INV_127: f32 = 1.0 / 127.0;

/// |w| / s as an integer in [0, 127] for `a` = |w| and `m` = max|w| > 0: the largest q with
/// (q − ½)·m ≤ 127·a, with f32 products as the kernel makes them (exact for f16 and bf16 values), so
/// exact ties round away from zero.
fn magnitude_code(a: f32, m: f32) -> i32 {
    let target = 127.0 * a;
    (1..=127)
        .rev()
        .find(|&q| (q as f32 - 0.5) * m <= target)
        .unwrap_or(0)
}

/// Codes (u32 [rows, [`int8_row_words`]], four int8 per word, rows zero-padded) and scales (f32
/// `[rows]`) of the [rows, cols] table stored as `bytes` in `dtype`, bit for bit as the kernel.
pub fn quantize_rows_int8(
    bytes: &[u8],
    dtype: FloatDType,
    rows: usize,
    cols: usize,
) -> (Vec<u32>, Vec<f32>) {
    let row_words = int8_row_words(cols);
    let mut codes = vec![0u32; rows * row_words];
    let mut scales = vec![0.0f32; rows];
    for r in 0..rows {
        let row: Vec<f32> = (0..cols)
            .map(|k| table_element(bytes, dtype, r * cols + k))
            .collect();
        let m = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        scales[r] = m * INV_127;
        if m == 0.0 {
            continue;
        }
        for (k, &w) in row.iter().enumerate() {
            let q = magnitude_code(w.abs(), m) * if w < 0.0 { -1 } else { 1 };
            codes[r * row_words + k / 4] |= (q as u8 as u32) << (8 * (k % 4));
        }
    }
    (codes, scales)
}

/// Code `k` of row `r` of an int8 table with `cols` columns.
pub fn int8_code(codes: &[u32], cols: usize, r: usize, k: usize) -> i32 {
    (codes[r * int8_row_words(cols) + k / 4] >> (8 * (k % 4))) as u8 as i8 as i32
}

/// `out[t, v] = s_v · Σ_k q[v, k] · x[t, k]` accumulated in f32 in k order: the twin of
/// `shaders/int8_matvec.wgsl` (which sums in another order). Output [T, rows].
pub fn int8_matvec(codes: &[u32], scales: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let tokens = x.len() / cols;
    let mut out = vec![0.0f32; tokens * rows];
    for v in 0..rows {
        for (t, xt) in x.chunks_exact(cols).enumerate() {
            let sum: f32 = xt
                .iter()
                .enumerate()
                .map(|(k, x)| int8_code(codes, cols, v, k) as f32 * x)
                .sum();
            out[t * rows + v] = scales[v] * sum;
        }
    }
    out
}

/// The rows `ids` of an int8 table, code · scale: the twin of `shaders/embedding.wgsl` with an int8
/// table (exact). Output [T, cols].
pub fn int8_embed(codes: &[u32], scales: &[f32], cols: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| {
            let r = id as usize;
            (0..cols).map(move |k| int8_code(codes, cols, r, k) as f32 * scales[r])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_127_is_the_kernel_constant() {
        // quantize_rows_int8.wgsl writes the literal 0.007874016, which rounds to these bits.
        assert_eq!(INV_127.to_bits(), 0x3c01_0204);
        assert_eq!(0.007874016f32.to_bits(), INV_127.to_bits());
    }

    #[test]
    fn ties_round_away_from_zero_and_rows_of_zeros_stay_zero() {
        let values = [1.0f32, 0.5, -0.5, 0.25, 0.0, -1.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (codes, scales) = quantize_rows_int8(&bytes, FloatDType::F32, 1, 6);
        let q: Vec<i32> = (0..6).map(|k| int8_code(&codes, 6, 0, k)).collect();
        // 0.5 · 127 = 63.5 → 64, 0.25 · 127 = 31.75 → 32.
        assert_eq!(q, [127, 64, -64, 32, 0, -127]);
        assert_eq!(scales[0], INV_127);
        let (codes, scales) = quantize_rows_int8(&[0u8; 12], FloatDType::F32, 1, 3);
        assert_eq!((codes, scales), (vec![0; 4], vec![0.0]));
    }
}
