// Embedding gather for one row chunk of the table: out[t, c] = table[ids[t], c] for each id that falls
// in this chunk's rows (one dispatch per chunk; ids elsewhere are written by the other dispatches).
// One invocation per column, looping over the step's tokens. The table is read as raw u32 words in any
// dtype: f32 as is, f16 through unpack2x16float (no shader-f16 feature needed), bf16 as bits << 16.
// All three conversions are exact. DTYPE 3 is the int8 table of quantize_rows_int8.wgsl (four codes per
// word, rows padded to whole vec4<u32>s): the value is q · scales[row], one f32 product.
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    cols: u32,
    first_row: u32, // first table row held by this chunk
    rows: u32,      // rows in this chunk
    _pad: u32,
}

override DTYPE: u32 = 0u; // 0 = f32, 1 = f16, 2 = bf16, 3 = int8 × row scale

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> scales: array<f32>; // int8: per chunk row; floats: unused

// Code `col` of chunk row `row` of an int8 table, times the row's scale.
fn int8_element(row: u32, col: u32) -> f32 {
    let w = row * ((params.cols + 15u) / 16u * 4u) + (col >> 2u);
    let byte = (table[w] >> ((col & 3u) * 8u)) << 24u;
    return f32(bitcast<i32>(byte) >> 24u) * scales[row];
}

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
            if (DTYPE == 3u) {
                out[t * params.cols + col] = int8_element(row, col);
            } else {
                out[t * params.cols + col] = element(row * params.cols + col);
            }
        }
    }
}
