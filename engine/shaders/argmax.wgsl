// Greedy decoding on the GPU: out[t] = argmax_v logits[t, v], one workgroup per token row. Ties go to the
// lowest index and NaN never wins (a comparison with NaN is false); a row with no non-NaN value yields
// 0xffffffff, which the host reports as an error rather than invent a token. The (value, index) order
// is total, so the tree reduction equals a sequential scan.

struct Params {
    vocab: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
var<workgroup> best_value: array<f32, WG>;
var<workgroup> best_index: array<u32, WG>;

fn better(v: f32, i: u32, than_v: f32, than_i: u32) -> bool {
    return v > than_v || (v == than_v && i < than_i);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wid.x * params.vocab;
    // −∞ (every non-NaN value is at least as good), built from a runtime value: an infinite constant
    // expression is a shader-creation error in WGSL (Chromium's Tint enforces it; naga does not).
    var bv = -bitcast<f32>(0x7f800000u | (params.vocab & 0u));
    var bi = NONE;
    for (var v = lid; v < params.vocab; v = v + WG) {
        let value = logits[base + v];
        if (better(value, v, bv, bi)) {
            bv = value;
            bi = v;
        }
    }
    best_value[lid] = bv;
    best_index[lid] = bi;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride && better(best_value[lid + stride], best_index[lid + stride], best_value[lid], best_index[lid])) {
            best_value[lid] = best_value[lid + stride];
            best_index[lid] = best_index[lid + stride];
        }
    }
    if (lid == 0u) {
        out[wid.x] = best_index[0];
    }
}
