//! Dense matrix-vector products against stored (f32/f16/bf16) tables: the LM head.

use super::embedding::table_element;
use crate::ops::embedding::FloatDType;

/// `out[t, v] = Σ_k W[v, k] · x[t, k]` for W [rows, cols] stored as `bytes` in `dtype`, accumulated in
/// f32 in k order: the twin of `shaders/dense_matvec.wgsl`. Output [T, rows].
pub fn matvec(bytes: &[u8], dtype: FloatDType, rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    let tokens = x.len() / cols;
    let mut out = vec![0.0f32; tokens * rows];
    let mut row = vec![0.0f32; cols];
    for v in 0..rows {
        for (k, w) in row.iter_mut().enumerate() {
            *w = table_element(bytes, dtype, v * cols + k);
        }
        for (t, xt) in x.chunks_exact(cols).enumerate() {
            out[t * rows + v] = row.iter().zip(xt).map(|(w, x)| w * x).sum();
        }
    }
    out
}
