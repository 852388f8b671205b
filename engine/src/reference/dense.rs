//! Dense matrix-vector products against stored (f32/f16/bf16) tables: the LM head, and the dense
//! projections of the FP16 baseline.

use super::embedding::table_element;
use crate::ops::embedding::FloatDType;
use crate::ops::ternary_matvec::Epilogue;

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

/// The twin of `shaders/dense_projection.wgsl`: each row's value `Σ_k W[n, k] · x[t, k]` (as
/// [`matvec`]) through `epilogue` into `out` ([T, rows]). Gated epilogues take the gate rows in
/// `weights` and the up rows in `up`.
#[allow(clippy::too_many_arguments)]
pub fn dense_project(
    weights: &[u8],
    up: Option<&[u8]>,
    dtype: FloatDType,
    rows: usize,
    cols: usize,
    x: &[f32],
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let values = matvec(weights, dtype, rows, cols, x);
    let up_values = up.map(|up| matvec(up, dtype, rows, cols, x));
    for (i, (o, &v)) in out.iter_mut().zip(&values).enumerate() {
        let up = || up_values.as_ref().map_or(0.0, |u| u[i]);
        *o = match epilogue {
            Epilogue::Store => v,
            Epilogue::AddResidual => *o + v,
            Epilogue::Relu2Mul => {
                let g = v.max(0.0);
                g * g * up()
            }
            Epilogue::SiluMul => v / (1.0 + (-v).exp()) * up(),
        };
    }
}
