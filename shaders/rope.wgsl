// RoPE (NeoX rotate_half: pairs (j, j + head_dim/2)) fused with the KV-cache append. Input: the fused
// q|k|v projection [T, (heads + 2·kv_heads)·head_dim]. q is rotated in place; rotated k and raw v are
// written to the layer's caches [kv_heads, max_seq, head_dim] at positions pos .. pos + T.
// angle = f32(position) · inv_freq[j] in f32, exactly as the CPU twin (inv_freq comes from the host);
// the angle is reduced to [−π, π] exactly before cos/sin, since GPU cos/sin are only accurate there.
// One invocation per (token, head, pair j).

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
}

@group(0) @binding(0) var<uniform> step: StepParams;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;

// a − n·2π with 2π = C1 + C2 + C3, C1 and C2 short enough that n·C1, n·C2 and both subtractions are
// exact for n < 2^15 (|a| < ~200000): the result is within ~2.5e-7 of the exact reduction.
fn reduce_angle(a: f32) -> f32 {
    let n = round(a * 0.15915494);
    return ((a - n * 6.28125) - n * 0.001934051513671875) - n * 1.2556659e-06;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let all_heads = params.heads + 2u * params.kv_heads;
    let per_token = all_heads * half_dim;
    let index = gid.x + gid.y * groups.x * 64u;
    let t = index / per_token;
    let position = step.pos + t;
    if (t >= step.tokens || position >= params.max_seq) {
        return;
    }
    let head = (index % per_token) / half_dim;
    let j = index % half_dim;
    let src = t * all_heads * params.head_dim + head * params.head_dim + j;
    let x1 = qkv[src];
    let x2 = qkv[src + half_dim];
    if (head >= params.heads + params.kv_heads) {
        let dst = ((head - params.heads - params.kv_heads) * params.max_seq + position) * params.head_dim + j;
        v_cache[dst] = x1;
        v_cache[dst + half_dim] = x2;
        return;
    }
    let angle = reduce_angle(f32(position) * inv_freq[j]);
    let c = cos(angle);
    let s = sin(angle);
    let y1 = x1 * c + (-x2) * s;
    let y2 = x2 * c + x1 * s;
    if (head < params.heads) {
        qkv[src] = y1;
        qkv[src + half_dim] = y2;
    } else {
        let dst = ((head - params.heads) * params.max_seq + position) * params.head_dim + j;
        k_cache[dst] = y1;
        k_cache[dst + half_dim] = y2;
    }
}
