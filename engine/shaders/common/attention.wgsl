// Shared by attention_decode and attention_prefill (the engine appends it): one host-side Params
// (ops::attention) and the q / KV-cache bindings. Each kernel declares its output at binding 5.

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
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;

const MAX_HEAD_DIM: u32 = 256u;
