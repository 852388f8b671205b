// Shared by attention_decode and attention_prefill (the engine appends it): one host-side Params
// (ops::attention), the q / KV-cache bindings and the cache reads. Each kernel declares its output at
// binding 5.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
    q_stride: u32, // elements per token row of the q buffer (q of head h at h·head_dim)
    max_chunks: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> q: array<f32>;
// The caches as raw words: f32 elements, or (KV_F16) f16 pairs packed by rope.wgsl.
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<u32>>;

override KV_F16: bool = false; // the cache dtype (ops::attention::KvCacheDtype)

// Elements 4·i .. 4·i + 3 of a cache whose i / 2-th (KV_F16) or i-th vec4 of words is `words`.
fn cache_vec4(words: vec4<u32>, i: u32) -> vec4<f32> {
    if (KV_F16) {
        let pair = select(words.xy, words.zw, (i & 1u) == 1u);
        return vec4<f32>(unpack2x16float(pair.x), unpack2x16float(pair.y));
    }
    return bitcast<vec4<f32>>(words);
}

// Elements 4·i .. 4·i + 3 of the K cache as f32.
fn k_vec4(i: u32) -> vec4<f32> {
    return cache_vec4(k_cache[select(i, i >> 1u, KV_F16)], i);
}

// Elements 4·i .. 4·i + 3 of the V cache as f32.
fn v_vec4(i: u32) -> vec4<f32> {
    return cache_vec4(v_cache[select(i, i >> 1u, KV_F16)], i);
}

const MAX_HEAD_DIM: u32 = 256u;
