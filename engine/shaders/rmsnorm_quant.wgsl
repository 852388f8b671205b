// RMSNorm fused with per-token absmax int8 quantization (the input of every ternary projection).
// With `normalize` = 0 it only quantizes (projections without a sub-norm before them).
// One workgroup per token. y = w · x · rsqrt(mean(x²) + eps); s = 127 / max(|y|) (max clamped ≥ 1e-5);
// q = clamp(round_half_even(y · s), −128, 127), packed 4 lanes a u32 (lane l in byte l), padded with
// zeros to `padded_words`. Per token it also writes 1/s and Σq (the ternary kernels subtract Σq once
// instead of decoding codes to signed values).

struct Params {
    k: u32,            // elements per token
    padded_words: u32, // u32 words per token in the output (K padded to a multiple of 16, / 4)
    eps: f32,
    normalize: u32, // 0: y = x (quantize only)
}

struct ActStats {
    inv_scale: f32, // 1/s = max|y| / 127: multiply the integer dot product by this
    sum: i32,       // Σ q over the token
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gain: array<f32>;
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;
@group(0) @binding(4) var<storage, read_write> stats: array<ActStats>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;
var<workgroup> partial_sum: array<i32, WG>;

fn reduce_sum(lid: u32) -> f32 {
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
    }
    workgroupBarrier();
    let total = partial[0];
    workgroupBarrier();
    return total;
}

fn reduce_max(lid: u32) -> f32 {
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            partial[lid] = max(partial[lid], partial[lid + stride]);
        }
    }
    workgroupBarrier();
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// The normalized value of element i (gain and inv_rms are 1 when only quantizing).
fn normalized(base: u32, i: u32, inv_rms: f32) -> f32 {
    if (params.normalize == 0u) {
        return x[base + i];
    }
    return gain[i] * (x[base + i] * inv_rms);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let token = wid.x;
    let base = token * params.k;

    var squares = 0.0;
    for (var i = lid; i < params.k; i = i + WG) {
        let v = x[base + i];
        squares = squares + v * v;
    }
    partial[lid] = squares;
    let inv_rms = 1.0 / sqrt(reduce_sum(lid) / f32(params.k) + params.eps);

    var absmax = 0.0;
    for (var i = lid; i < params.k; i = i + WG) {
        absmax = max(absmax, abs(normalized(base, i, inv_rms)));
    }
    partial[lid] = absmax;
    let scale = 127.0 / max(reduce_max(lid), 1e-5);

    var qsum = 0;
    let out_base = token * params.padded_words;
    for (var w = lid; w < params.padded_words; w = w + WG) {
        var word = 0u;
        for (var lane = 0u; lane < 4u; lane = lane + 1u) {
            let i = w * 4u + lane;
            var q = 0;
            if (i < params.k) {
                q = i32(clamp(round(normalized(base, i, inv_rms) * scale), -128.0, 127.0));
            }
            qsum = qsum + q;
            word = word | ((u32(q) & 0xffu) << (8u * lane));
        }
        xq[out_base + w] = word;
    }
    partial_sum[lid] = qsum;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            partial_sum[lid] = partial_sum[lid] + partial_sum[lid + stride];
        }
    }
    if (lid == 0u) {
        stats[token] = ActStats(1.0 / scale, partial_sum[0]);
    }
}
