// First pass of online absmean quantization (ARCHITECTURE.md, float latents): Σ|x| over a float
// tensor, one partial sum per block of 4096 values. The host runs it again over the partial sums
// (DTYPE f32) until one value is left, so the order of every addition is fixed: lane l of a block
// adds x[l], x[l + 256], … in sequence, then lanes are summed as a tree. The CPU twin
// (reference::quantize::blocked_abs_sum) adds in the same order.
// The input is a window of the tensor bound at an aligned offset (tensors may exceed the binding limit);
// windows start on block boundaries, so `first_block` places this window's sums.
// Values are read in the tensor's dtype (DTYPE) by common/float_load.wgsl.

struct Params {
    count: u32,       // values in this window
    first_block: u32, // index in `sums` of this window's first block
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>;
@group(0) @binding(2) var<storage, read_write> sums: array<f32>;

const LANES: u32 = 256u;
const PER_LANE: u32 = 16u;

var<workgroup> partial: array<f32, LANES>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let block = wid.y * groups.x + wid.x;
    let base = block * LANES * PER_LANE;
    if (base >= params.count) {
        return; // whole workgroup: the grid's last row overshoots
    }
    var acc = 0.0;
    for (var i = 0u; i < PER_LANE; i = i + 1u) {
        let e = base + i * LANES + lid.x;
        if (e < params.count) {
            acc = acc + abs(load(e));
        }
    }
    partial[lid.x] = acc;
    for (var stride = LANES / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid.x < stride) {
            partial[lid.x] = partial[lid.x] + partial[lid.x + stride];
        }
    }
    if (lid.x == 0u) {
        sums[params.first_block + block] = partial[0];
    }
}
