// Int8 matrix-vector product for one row chunk of a per-row absmax int8 table (the int8 LM head,
// made by quantize_rows_int8.wgsl): out[t, first_row + r] = s_r · Σ_k q[r, k] · x[t, k] in f32, x in f32
// (only the weights are rounded). Codes are four int8 per u32 word, rows padded to whole vec4<u32>s.
// The two work layouts are common/row_matvec.wgsl's (as for dense_matvec.wgsl), over this file's
// `partial_dot` (`vec4<u32>` loads: 16 codes) and the row's scale.
// ALIGNED (cols % 16 == 0: no padding, x rows start on a vec4) enables the vec4 loads of x (bound a
// second time as `x4`); otherwise codes are decoded one at a time. Each token's sum runs in the same
// order whatever the step's token count, so a row's logit does not depend on the batch around it.
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    cols: u32,       // K
    first_row: u32,  // first output row of this chunk
    rows: u32,       // rows in this chunk
    out_stride: u32, // total rows V (output row length)
}

override ALIGNED: bool = false;
override WG: u32 = 64u;

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> codes: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>; // x again; rows of x start on a vec4 when ALIGNED
@group(0) @binding(6) var<storage, read> scales: array<f32>;

// The four int8 of a word (byte i is element i), sign-extended, as f32 (exact).
fn unpack_codes(w: u32) -> vec4<f32> {
    let shifted = vec4<u32>(w << 24u, w << 16u, w << 8u, w);
    return vec4<f32>(bitcast<vec4<i32>>(shifted) >> vec4<u32>(24u));
}

// Vec4s of codes per row.
fn row_vecs() -> u32 {
    return (params.cols + 15u) / 16u;
}

// The part of Σ_k q[r, k] · x[t, k] over the lanes `lane, lane + stride, …` (vec4s of 16 codes when
// ALIGNED, else single codes).
fn partial_dot(r: u32, t: u32, lane: u32, stride: u32) -> f32 {
    let xrow = t * params.cols;
    let n = row_vecs();
    let base = r * n;
    var acc = 0.0;
    if (ALIGNED) {
        let x4row = xrow >> 2u;
        for (var i = lane; i < n; i = i + stride) {
            let v = codes[base + i];
            let xb = x4row + i * 4u;
            acc = acc + (dot(unpack_codes(v.x), x4[xb]) + dot(unpack_codes(v.y), x4[xb + 1u]))
                + (dot(unpack_codes(v.z), x4[xb + 2u]) + dot(unpack_codes(v.w), x4[xb + 3u]));
        }
    } else {
        let word_base = base * 4u;
        for (var k = lane; k < params.cols; k = k + stride) {
            let w = word_base + (k >> 2u);
            let byte = (codes[w >> 2u][w & 3u] >> ((k & 3u) * 8u)) << 24u;
            acc = acc + f32(bitcast<i32>(byte) >> 24u) * x[xrow + k];
        }
    }
    return acc;
}

fn row_scale(r: u32) -> f32 {
    return scales[r];
}
