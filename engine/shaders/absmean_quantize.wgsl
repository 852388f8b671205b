// Second pass of online absmean quantization (ARCHITECTURE.md, float latents):
// t = clamp(round(W · inv_scale), −1, 1) (round is half-to-even; inv_scale = 1 / mean|W| computed
// on the host from absmean_sum's total, as transformers multiplies by the reciprocal), packed into
// the engine layout (ARCHITECTURE.md). One invocation per output word of a chunk of rows; the
// chunk's values are a window of the tensor bound at an aligned offset, `window_first` being the
// flat index of the window's first value.
// Values are read in the tensor's dtype (DTYPE) by common/float_load.wgsl.

struct Params {
    rows: u32,          // rows in this chunk
    cols: u32,
    words_per_row: u32,
    first_row: u32,     // tensor row of the chunk's first row
    window_first: u32,  // flat index of the window's first value
    inv_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>;
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let index = (wid.y * groups.x + wid.x) * WG + lid.x;
    if (index >= params.rows * params.words_per_row) {
        return;
    }
    let row = params.first_row + index / params.words_per_row;
    let first = (index % params.words_per_row) * 16u;
    let count = min(16u, params.cols - first);
    let source = row * params.cols + first - params.window_first;
    var word = 0x55555555u; // padding columns keep code 1 (t = 0)
    for (var s = 0u; s < count; s = s + 1u) {
        let t = clamp(round(load(source + s) * params.inv_scale), -1.0, 1.0);
        let shift = 8u * (s & 3u) + 2u * (s >> 2u);
        word = (word & ~(3u << shift)) | (u32(i32(t) + 1) << shift);
    }
    packed[params.first_row * params.words_per_row + index] = word;
}
