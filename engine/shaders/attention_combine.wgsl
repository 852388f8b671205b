// Decode attention, second pass: merges the per-chunk partial softmax states of attention_decode.wgsl.
// One workgroup per head, invocations over head_dim:
// M = max m_c, L = Σ l_c·exp(m_c − M), out[d] = Σ o_c[d]·exp(m_c − M) / L.
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
    q_stride: u32,
    max_chunks: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const CHUNK: u32 = 256u; // must equal attention_decode.wgsl's

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let hd = params.head_dim;
    let chunks = step.pos / CHUNK + 1u;
    let first = head * params.max_chunks * (hd + 2u);
    var m = -3.0e38;
    for (var c = 0u; c < chunks; c = c + 1u) {
        m = max(m, partials[first + c * (hd + 2u)]);
    }
    var l = 0.0;
    for (var c = 0u; c < chunks; c = c + 1u) {
        let record = first + c * (hd + 2u);
        l = l + partials[record + 1u] * exp(partials[record] - m);
    }
    for (var d = lid; d < hd; d = d + WG) {
        var acc = 0.0;
        for (var c = 0u; c < chunks; c = c + 1u) {
            let record = first + c * (hd + 2u);
            acc = acc + partials[record + 2u + d] * exp(partials[record] - m);
        }
        out[step.row * params.heads * hd + head * hd + d] = acc / l;
    }
}
