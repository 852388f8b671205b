// Embedding gather for one row chunk of the table: out[t, c] = table[ids[t], c] for each id that falls
// in this chunk's rows (one dispatch per chunk; ids elsewhere are written by the other dispatches).
// One invocation per column, looping over the step's tokens. The table is read as raw u32 words in any
// dtype: f32 as is, f16 through unpack2x16float (no shader-f16 feature needed), bf16 as bits << 16.
// All three conversions are exact.
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    cols: u32,
    first_row: u32, // first table row held by this chunk
    rows: u32,      // rows in this chunk
    _pad: u32,
}

override DTYPE: u32 = 0u; // 0 = f32, 1 = f16, 2 = bf16

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Element `e` of the chunk (row-major) as f32.
fn element(e: u32) -> f32 {
    if (DTYPE == 0u) {
        return bitcast<f32>(table[e]);
    }
    let bits = (table[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu;
    if (DTYPE == 1u) {
        return unpack2x16float(bits).x;
    }
    return bitcast<f32>(bits << 16u);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let col = gid.x + gid.y * groups.x * 64u;
    if (col >= params.cols) {
        return;
    }
    for (var t = 0u; t < step.tokens; t = t + 1u) {
        let row = ids[t] - params.first_row; // wraps to a huge value for ids below the chunk
        if (row < params.rows) {
            out[t * params.cols + col] = element(row * params.cols + col);
        }
    }
}
