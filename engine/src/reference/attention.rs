//! Causal GQA attention over a KV cache, computed as Hugging Face's eager attention does:
//! scores = q·k · scale, softmax in f32 (max-subtracted), then the weighted sum of V.

use crate::ops::attention::AttentionShape;

/// The twin of the decode and prefill attention kernels. `q`: [T, q_stride] with head h of token t at
/// `t·q_stride + h·head_dim`; caches [kv_heads, max_seq, head_dim]; query t sits at position pos + t
/// and attends to positions 0 ..= pos + t. The caches are read as `shape.cache` stores them (each
/// element rounded by [`crate::ops::attention::KvCacheDtype::round`], a no-op on values the twin
/// of RoPE wrote). Output [T, heads·head_dim].
pub fn attention(
    q: &[f32],
    q_stride: usize,
    k_cache: &[f32],
    v_cache: &[f32],
    shape: AttentionShape,
    pos: usize,
    tokens: usize,
) -> Vec<f32> {
    let hd = shape.head_dim;
    let group = shape.heads / shape.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let stored =
        |cache: &[f32]| -> Vec<f32> { cache.iter().map(|&x| shape.cache.round(x)).collect() };
    let (k_cache, v_cache) = (stored(k_cache), stored(v_cache));
    let mut out = vec![0.0f32; tokens * shape.heads * hd];
    for t in 0..tokens {
        let len = pos + t + 1;
        for h in 0..shape.heads {
            let query = &q[t * q_stride + h * hd..][..hd];
            let cache = (h / group) * shape.max_seq * hd;
            let scores: Vec<f32> = (0..len)
                .map(|p| {
                    let key = &k_cache[cache + p * hd..][..hd];
                    query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let o = &mut out[(t * shape.heads + h) * hd..][..hd];
            for (p, e) in exps.iter().enumerate() {
                let weight = e / sum;
                let value = &v_cache[cache + p * hd..][..hd];
                for (o, v) in o.iter_mut().zip(value) {
                    *o += weight * v;
                }
            }
        }
    }
    out
}
