// Decode attention, split over the sequence (flash-decoding), first pass: one workgroup per (chunk of
// CHUNK cached positions, query head). The single query sits at position `pos` and attends to cache
// positions 0 ..= pos. Each workgroup writes its chunk's partial softmax state to `partials`:
// [heads, max_chunks] records of (m = max score, l = Σ exp(s − m), o[d] = Σ exp(s − m) · V[d]);
// attention_combine.wgsl merges them. GQA: kv head = head / (heads / kv_heads). Scores = q·k · scale.

struct StepParams {
    pos: u32,
    tokens: u32,
    _pad0: u32,
    _pad1: u32,
}

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

@group(0) @binding(0) var<uniform> step: StepParams;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

const WG: u32 = 64u;
const CHUNK: u32 = 256u; // cached positions per workgroup; 4 per invocation
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> q_shared: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
var<workgroup> weights: array<f32, CHUNK>;
var<workgroup> reduction: array<f32, WG>;

fn reduce_max(lid: u32, value: f32) -> f32 {
    reduction[lid] = value;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            reduction[lid] = max(reduction[lid], reduction[lid + stride]);
        }
    }
    workgroupBarrier();
    let result = reduction[0];
    workgroupBarrier();
    return result;
}

fn reduce_sum(lid: u32, value: f32) -> f32 {
    reduction[lid] = value;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            reduction[lid] = reduction[lid] + reduction[lid + stride];
        }
    }
    workgroupBarrier();
    let result = reduction[0];
    workgroupBarrier();
    return result;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x;
    let head = wid.y;
    let hd = params.head_dim;
    let kv_head = head / (params.heads / params.kv_heads);
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, step.pos + 1u);
    let hd4 = hd / 4u; // head_dim is a multiple of 4: K and V are read as vec4
    let cache_base = kv_head * params.max_seq * hd4;

    if (lid < hd4) {
        let q_base = head * hd + 4u * lid;
        q_shared[lid] = vec4<f32>(q[q_base], q[q_base + 1u], q[q_base + 2u], q[q_base + 3u]);
    }
    workgroupBarrier();

    var local_max = -3.0e38;
    for (var i = lid; i < CHUNK; i = i + WG) {
        let p = start + i;
        var score = -3.0e38;
        if (p < end) {
            let key = cache_base + p * hd4;
            var dot_qk = 0.0;
            for (var j = 0u; j < hd4; j = j + 1u) {
                dot_qk = dot_qk + dot(q_shared[j], k_cache[key + j]);
            }
            score = dot_qk * params.scale;
        }
        weights[i] = score;
        local_max = max(local_max, score);
    }
    let m = reduce_max(lid, local_max);

    var local_sum = 0.0;
    for (var i = lid; i < CHUNK; i = i + WG) {
        var e = 0.0;
        if (start + i < end) {
            e = exp(weights[i] - m);
        }
        weights[i] = e;
        local_sum = local_sum + e;
    }
    let l = reduce_sum(lid, local_sum); // its barriers also publish `weights`

    // Invocation lid owns output elements 4·lid .. 4·lid + 3 (WG · 4 = MAX_HEAD_DIM).
    let record = (head * params.max_chunks + chunk) * (hd + 2u);
    if (lid < hd4) {
        var acc = vec4<f32>(0.0);
        for (var p = start; p < end; p = p + 1u) {
            acc = acc + weights[p - start] * v_cache[cache_base + p * hd4 + lid];
        }
        let o = record + 2u + 4u * lid;
        partials[o] = acc.x;
        partials[o + 1u] = acc.y;
        partials[o + 2u] = acc.z;
        partials[o + 3u] = acc.w;
    }
    if (lid == 0u) {
        partials[record] = m;
        partials[record + 1u] = l;
    }
}
