//! Rotary position embedding (NeoX rotate_half layout) and the KV-cache append that follows it.

pub use crate::layout::inv_freq;
use crate::ops::attention::AttentionShape;

/// Rotates one head in place: pairs (j, j + hd/2) by angle `position · inv_freq[j]` (f32).
pub fn rotate(head: &mut [f32], position: usize, inv_freq: &[f32]) {
    let half = head.len() / 2;
    for (j, &freq) in inv_freq.iter().enumerate() {
        let angle = position as f32 * freq;
        let (s, c) = (angle.sin(), angle.cos());
        let (x1, x2) = (head[j], head[j + half]);
        head[j] = x1 * c + (-x2) * s;
        head[j + half] = x2 * c + x1 * s;
    }
}

/// The twin of `shaders/rope.wgsl`: `qkv` [T, (heads + 2·kv_heads)·head_dim] with q rotated in place
/// (k and v there are left as they are); rotated k and raw v written to the caches [kv_heads, max_seq, head_dim] at positions pos .. pos + T,
/// each rounded as `shape.cache` stores it ([`crate::ops::attention::KvCacheDtype::round`]).
pub fn rope_append(
    qkv: &mut [f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    shape: AttentionShape,
    pos: usize,
    inv_freq: &[f32],
) {
    let hd = shape.head_dim;
    let row = (shape.heads + 2 * shape.kv_heads) * hd;
    for (t, token) in qkv.chunks_exact_mut(row).enumerate() {
        let position = pos + t;
        let (q, kv) = token.split_at_mut(shape.heads * hd);
        let (k, v) = kv.split_at(shape.kv_heads * hd);
        for head in q.chunks_exact_mut(hd) {
            rotate(head, position, inv_freq);
        }
        for h in 0..shape.kv_heads {
            let dst = (h * shape.max_seq + position) * hd..(h * shape.max_seq + position + 1) * hd;
            k_cache[dst.clone()].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            rotate(&mut k_cache[dst.clone()], position, inv_freq);
            v_cache[dst.clone()].copy_from_slice(&v[h * hd..(h + 1) * hd]);
            for x in k_cache[dst.clone()].iter_mut().chain(&mut v_cache[dst]) {
                *x = shape.cache.round(*x);
            }
        }
    }
}
