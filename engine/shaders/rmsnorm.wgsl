// Plain f32 RMSNorm (the final norm): y = gain · (x · rsqrt(mean(x²) + eps)), the same math and order
// as rmsnorm_quant.wgsl without the quantization. One workgroup per token.

struct Params {
    k: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gain: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let base = wid.x * params.k;
    var squares = 0.0;
    for (var i = lid; i < params.k; i = i + WG) {
        let v = x[base + i];
        squares = squares + v * v;
    }
    partial[lid] = squares;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
    }
    workgroupBarrier();
    let inv_rms = 1.0 / sqrt(partial[0] / f32(params.k) + params.eps);
    for (var i = lid; i < params.k; i = i + WG) {
        y[base + i] = gain[i] * (x[base + i] * inv_rms);
    }
}
