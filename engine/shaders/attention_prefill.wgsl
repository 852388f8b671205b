// Prefill attention: T queries at positions pos .. pos + T, query t attending causally to cache
// positions 0 ..= pos + t (pos > 0 is chunked prefill over an existing cache). One workgroup per
// (head, token) runs an online softmax over tiles of CHUNK positions: running max m, per-invocation
// partial sums of exp(s − m) and per-invocation output vec4s, rescaled whenever m grows.
// GQA: kv head = head / (heads / kv_heads). Scores = q·k · scale. Output [T, heads·head_dim].
// `step` (binding 0) is declared in common/step.wgsl; params, q and the KV caches in
// common/attention.wgsl.

@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const CHUNK: u32 = 256u;
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
    let head = wid.x;
    let t = wid.y;
    let hd = params.head_dim;
    let kv_head = head / (params.heads / params.kv_heads);
    let end = step.pos + t + 1u;
    let hd4 = hd / 4u; // head_dim is a multiple of 4: K and V are read four elements at a time
    let cache_base = kv_head * params.max_seq * hd4;

    if (lid < hd4) {
        let q_base = (step.row + t) * params.q_stride + head * hd + 4u * lid;
        q_shared[lid] = vec4<f32>(q[q_base], q[q_base + 1u], q[q_base + 2u], q[q_base + 3u]);
    }
    workgroupBarrier();

    var m = -3.0e38;
    var partial_sum = 0.0;
    var acc = vec4<f32>(0.0); // output elements 4·lid .. 4·lid + 3 (WG · 4 = MAX_HEAD_DIM)
    for (var start = 0u; start < end; start = start + CHUNK) {
        let tile_end = min(start + CHUNK, end);
        var local_max = -3.0e38;
        for (var i = lid; i < CHUNK; i = i + WG) {
            let p = start + i;
            var score = -3.0e38;
            if (p < tile_end) {
                let key = cache_base + p * hd4;
                var dot_qk = 0.0;
                for (var j = 0u; j < hd4; j = j + 1u) {
                    dot_qk = dot_qk + dot(q_shared[j], k_vec4(key + j));
                }
                score = dot_qk * params.scale;
            }
            weights[i] = score;
            local_max = max(local_max, score);
        }
        let m_new = max(m, reduce_max(lid, local_max)); // its barriers also publish `weights`
        let rescale = exp(m - m_new);
        partial_sum = partial_sum * rescale;
        for (var i = lid; i < CHUNK; i = i + WG) {
            var e = 0.0;
            if (start + i < tile_end) {
                e = exp(weights[i] - m_new);
            }
            weights[i] = e;
            partial_sum = partial_sum + e;
        }
        workgroupBarrier();
        if (lid < hd4) {
            acc = acc * rescale;
            for (var p = start; p < tile_end; p = p + 1u) {
                acc = acc + weights[p - start] * v_vec4(cache_base + p * hd4 + lid);
            }
        }
        workgroupBarrier(); // the next tile overwrites `weights`
        m = m_new;
    }
    let l = reduce_sum(lid, partial_sum);
    if (lid < hd4) {
        let o = (step.row + t) * params.heads * hd + head * hd + 4u * lid;
        let result = acc / l;
        out[o] = result.x;
        out[o + 1u] = result.y;
        out[o + 2u] = result.z;
        out[o + 3u] = result.w;
    }
}
