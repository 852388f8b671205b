// Dense matrix-vector product for one row chunk of a table (the LM head):
// out[t, first_row + r] = Σ_k W[r, k] · x[t, k] for the step's tokens t, W in f32, f16 or bf16 read as
// raw u32 words (f16 via unpack2x16float, so no shader-f16 feature is needed; bf16 as bits << 16).
// The two work layouts (one invocation per row on CPU adapters, a workgroup per row on GPUs) are
// common/row_matvec.wgsl's, over this file's `partial_dot`.
// ALIGNED (rows start on 16 bytes: cols · dtype bytes % 16 == 0) enables the vec4 loads of weights and
// of x (bound a second time as `x4`: a vec4 binding hides a trailing partial vec4, which only unaligned
// x rows have); otherwise elements are decoded one at a time.
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    cols: u32,      // K
    first_row: u32, // first output row of this chunk
    rows: u32,      // rows in this chunk
    out_stride: u32, // total rows V (output row length)
}

override DTYPE: u32 = 0u; // 0 = f32, 1 = f16, 2 = bf16
override ALIGNED: bool = false;
override WG: u32 = 64u;

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>; // x again; rows of x start on a vec4 when ALIGNED

fn word(w: u32) -> u32 {
    return table[w >> 2u][w & 3u];
}

fn half_to_f32(bits: u32) -> f32 {
    if (DTYPE == 1u) {
        return unpack2x16float(bits).x;
    }
    return bitcast<f32>(bits << 16u);
}

// Element `e` of the chunk (row-major) as f32.
fn element(e: u32) -> f32 {
    if (DTYPE == 0u) {
        return bitcast<f32>(word(e));
    }
    return half_to_f32((word(e >> 1u) >> ((e & 1u) * 16u)) & 0xffffu);
}

// Elements per vec4<u32> of weights.
fn per_vec() -> u32 {
    if (DTYPE == 0u) {
        return 4u;
    }
    return 8u;
}

// Σ over the vec4 `v` (elements k0 .. k0 + per_vec()) of W · x[xbase + k].
fn dot_vec(v: vec4<u32>, xbase: u32) -> f32 {
    if (DTYPE == 0u) {
        return dot(bitcast<vec4<f32>>(v), x4[xbase >> 2u]);
    }
    var lo: vec4<f32>;
    var hi: vec4<f32>;
    if (DTYPE == 1u) {
        lo = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
        hi = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
    } else {
        lo = bitcast<vec4<f32>>(vec4<u32>(v.x << 16u, v.x & 0xffff0000u, v.y << 16u, v.y & 0xffff0000u));
        hi = bitcast<vec4<f32>>(vec4<u32>(v.z << 16u, v.z & 0xffff0000u, v.w << 16u, v.w & 0xffff0000u));
    }
    return dot(lo, x4[xbase >> 2u]) + dot(hi, x4[(xbase >> 2u) + 1u]);
}

// The part of row `r` · x[t] over the lanes `lane, lane + stride, …` (vec4s when ALIGNED, else elements).
fn partial_dot(r: u32, t: u32, lane: u32, stride: u32) -> f32 {
    let xrow = t * params.cols;
    var acc = 0.0;
    if (ALIGNED) {
        let n = params.cols / per_vec();
        let base = r * n;
        for (var i = lane; i < n; i = i + stride) {
            acc = acc + dot_vec(table[base + i], xrow + i * per_vec());
        }
    } else {
        let base = r * params.cols;
        for (var k = lane; k < params.cols; k = k + stride) {
            acc = acc + element(base + k) * x[xrow + k];
        }
    }
    return acc;
}

// Float tables carry no row scale (× 1 is exact).
fn row_scale(r: u32) -> f32 {
    return 1.0;
}
