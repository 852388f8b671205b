// Top-k candidates per token row for host-side sampling: out[t, 0..k] = the k best (index, value) pairs
// of logits[t, ..], sorted by value descending, ties by lower index first; NaN never enters. Slots left
// when a row has fewer than k non-NaN values hold (0xffffffff, −∞).
// One workgroup per row: each invocation keeps a sorted top-k of its strided slice in private memory,
// then k rounds of a workgroup reduction pop the best head among the 256 lists.

struct Params {
    vocab: u32,
    k: u32, // ≤ MAX_K
    _pad0: u32,
    _pad1: u32,
}

struct Candidate {
    index: u32,
    value: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<Candidate>;

const WG: u32 = 256u;
const MAX_K: u32 = 64u;
const NONE: u32 = 0xffffffffu;
var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;
var<workgroup> best_lane: array<u32, WG>;

fn better(v: f32, i: u32, than_v: f32, than_i: u32) -> bool {
    return v > than_v || (v == than_v && i < than_i);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = params.k;
    let base = wid.x * params.vocab;
    // Built from a runtime value: an infinite constant expression is a shader-creation error in WGSL.
    let neg_inf = -bitcast<f32>(0x7f800000u | (params.vocab & 0u));
    var values: array<f32, MAX_K>;
    var indices: array<u32, MAX_K>;
    for (var j = 0u; j < k; j = j + 1u) {
        values[j] = neg_inf;
        indices[j] = NONE;
    }
    // Insertion into this invocation's sorted list; most values fail the first test.
    for (var v = lid; v < params.vocab; v = v + WG) {
        let value = logits[base + v];
        if (better(value, v, values[k - 1u], indices[k - 1u])) {
            var j = k - 1u;
            while (j > 0u && better(value, v, values[j - 1u], indices[j - 1u])) {
                values[j] = values[j - 1u];
                indices[j] = indices[j - 1u];
                j = j - 1u;
            }
            values[j] = value;
            indices[j] = v;
        }
    }
    var head = 0u; // next unpopped entry of this invocation's list
    for (var round = 0u; round < k; round = round + 1u) {
        if (head < k) {
            best_value[lid] = values[head];
            best_index[lid] = indices[head];
        } else {
            best_value[lid] = neg_inf;
            best_index[lid] = NONE;
        }
        best_lane[lid] = lid;
        for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
            workgroupBarrier();
            if (lid < stride && better(best_value[lid + stride], best_index[lid + stride], best_value[lid], best_index[lid])) {
                best_value[lid] = best_value[lid + stride];
                best_index[lid] = best_index[lid + stride];
                best_lane[lid] = best_lane[lid + stride];
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            out[wid.x * k + round] = Candidate(best_index[0], best_value[0]);
        }
        if (best_lane[0] == lid && best_index[0] != NONE) {
            head = head + 1u;
        }
        workgroupBarrier();
    }
}
