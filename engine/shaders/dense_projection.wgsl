// Dense projection: the float-weight twin of ternary_matvec/ternary_matmul, for the FP16 baseline the
// BitNet b1.58 paper compares against (same architecture and shape, float weights, f32 activations, no
// int8 quantization). For one row chunk of a weight table (f32, f16 or bf16 read as raw u32 words: f16 via
// unpack2x16float, so no shader-f16 feature is needed; bf16 as bits << 16):
//   value = Σ_k W[r, k] · x[t, k]                       (f32 accumulation)
// EPILOGUE (common/epilogue.wgsl): 0 store, 1 add into out (the residual stream), 2 relu(g)²·u,
// 3 silu(g)·u. Gated: `weights` holds the gate rows of the chunk and `up` the same rows of the up table;
// otherwise `up` is bound to the same buffer and never read.
// Entry points over the same bindings:
//   row_per_invocation: decode, one invocation per row, vec4 weight loads, no reduction (CPU adapters);
//   row_per_workgroup: decode, a workgroup per row, tree reduction in workgroup memory (GPUs);
//   matmul: prefill, one invocation per row × a tile of TILE tokens (workgroup_id.z picks the tile), so
//           each weight vec4 is loaded once per tile. The last tile re-reads the last token (discarded).
// ALIGNED (rows start on 16 bytes: cols · dtype bytes % 16 == 0) enables the vec4 loads; otherwise
// PAIRS (16-bit weights, even cols: rows start on 4 bytes) decodes two elements per u32 word, and the
// rest one element at a time.
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    cols: u32,       // K
    first_row: u32,  // output index of the chunk's first row
    rows: u32,       // rows in this chunk
    out_stride: u32, // floats per token in out
}

override DTYPE: u32 = 1u; // 0 = f32, 1 = f16, 2 = bf16
override ALIGNED: bool = false;
override PAIRS: bool = false;
override WG: u32 = 64u;

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> weights: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> up: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const TILE: u32 = 8u;

// vec4 `i` of the gate (or only) chunk, or of the up chunk.
fn load(from_up: bool, i: u32) -> vec4<u32> {
    if (from_up) {
        return up[i];
    }
    return weights[i];
}

// Element `e` of a chunk (row-major) as f32.
fn element(from_up: bool, e: u32) -> f32 {
    if (DTYPE == 0u) {
        let w = e;
        return bitcast<f32>(load(from_up, w >> 2u)[w & 3u]);
    }
    let w = e >> 1u;
    let bits = (load(from_up, w >> 2u)[w & 3u] >> ((e & 1u) * 16u)) & 0xffffu;
    if (DTYPE == 1u) {
        return unpack2x16float(bits).x;
    }
    return bitcast<f32>(bits << 16u);
}

// Word `w` of a chunk (16-bit weights) as two f32: elements 2w and 2w + 1.
fn pair(from_up: bool, w: u32) -> vec2<f32> {
    let bits = load(from_up, w >> 2u)[w & 3u];
    if (DTYPE == 1u) {
        return unpack2x16float(bits);
    }
    return bitcast<vec2<f32>>(vec2<u32>(bits << 16u, bits & 0xffff0000u));
}

// Elements per vec4<u32> of weights.
fn per_vec() -> u32 {
    if (DTYPE == 0u) {
        return 4u;
    }
    return 8u;
}

// Σ over the elements of weight vec4 `v` of W · x[xbase + k].
fn dot_vec(v: vec4<u32>, xbase: u32) -> f32 {
    let xl = vec4<f32>(x[xbase], x[xbase + 1u], x[xbase + 2u], x[xbase + 3u]);
    if (DTYPE == 0u) {
        return dot(bitcast<vec4<f32>>(v), xl);
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
    let xh = vec4<f32>(x[xbase + 4u], x[xbase + 5u], x[xbase + 6u], x[xbase + 7u]);
    return dot(lo, xl) + dot(hi, xh);
}

// The part of chunk row `r` · x[t] over the lanes `lane, lane + stride, …` (vec4s when ALIGNED).
fn row_dot(from_up: bool, r: u32, t: u32, lane: u32, stride: u32) -> f32 {
    let xrow = t * params.cols;
    var acc = 0.0;
    if (ALIGNED) {
        let n = params.cols / per_vec();
        let base = r * n;
        for (var i = lane; i < n; i = i + stride) {
            acc = acc + dot_vec(load(from_up, base + i), xrow + i * per_vec());
        }
    } else if (PAIRS) {
        let n = params.cols / 2u;
        let base = r * n;
        for (var i = lane; i < n; i = i + stride) {
            acc = acc + dot(pair(from_up, base + i), vec2<f32>(x[xrow + 2u * i], x[xrow + 2u * i + 1u]));
        }
    } else {
        let base = r * params.cols;
        for (var k = lane; k < params.cols; k = k + stride) {
            acc = acc + element(from_up, base + k) * x[xrow + k];
        }
    }
    return acc;
}

// Writes output first_row + r of token t from the row's value and (gated) its up row's value.
fn finish(t: u32, r: u32, value: f32, up_value: f32) {
    write_output(t * params.out_stride + params.first_row + r, value, up_value);
}

@compute @workgroup_size(WG)
fn row_per_invocation(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let r = gid.x + gid.y * groups.x * WG;
    if (r >= params.rows) {
        return;
    }
    for (var t = 0u; t < step.tokens; t = t + 1u) {
        var up_value = 0.0;
        if (gated()) {
            up_value = row_dot(true, r, t, 0u, 1u);
        }
        finish(t, r, row_dot(false, r, t, 0u, 1u), up_value);
    }
}

var<workgroup> partial: array<vec2<f32>, WG>;

@compute @workgroup_size(WG)
fn row_per_workgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wid.x + wid.y * groups.x;
    if (r >= params.rows) {
        return; // uniform across the workgroup
    }
    for (var t = 0u; t < step.tokens; t = t + 1u) {
        var acc = vec2<f32>(row_dot(false, r, t, lid, WG), 0.0);
        if (gated()) {
            acc.y = row_dot(true, r, t, lid, WG);
        }
        partial[lid] = acc;
        for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
            workgroupBarrier();
            if (lid < stride) {
                partial[lid] = partial[lid] + partial[lid + stride];
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            finish(t, r, partial[0].x, partial[0].y);
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn matmul(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let r = gid.x + gid.y * groups.x * WG;
    if (r >= params.rows) {
        return;
    }
    let t0 = wid.z * TILE;
    let last = step.tokens - 1u;
    var acc: array<f32, TILE>;
    var up_acc: array<f32, TILE>;
    if (ALIGNED) {
        let n = params.cols / per_vec();
        let base = r * n;
        for (var i = 0u; i < n; i = i + 1u) {
            let w = load(false, base + i);
            var u = vec4<u32>(0u);
            if (gated()) {
                u = load(true, base + i);
            }
            for (var j = 0u; j < TILE; j = j + 1u) {
                let xbase = min(t0 + j, last) * params.cols + i * per_vec();
                acc[j] = acc[j] + dot_vec(w, xbase);
                if (gated()) {
                    up_acc[j] = up_acc[j] + dot_vec(u, xbase);
                }
            }
        }
    } else if (PAIRS) {
        let n = params.cols / 2u;
        let base = r * n;
        for (var i = 0u; i < n; i = i + 1u) {
            let w = pair(false, base + i);
            var u = vec2<f32>(0.0);
            if (gated()) {
                u = pair(true, base + i);
            }
            for (var j = 0u; j < TILE; j = j + 1u) {
                let xbase = min(t0 + j, last) * params.cols + 2u * i;
                let xk = vec2<f32>(x[xbase], x[xbase + 1u]);
                acc[j] = acc[j] + dot(w, xk);
                up_acc[j] = up_acc[j] + dot(u, xk);
            }
        }
    } else {
        let base = r * params.cols;
        for (var k = 0u; k < params.cols; k = k + 1u) {
            let w = element(false, base + k);
            var u = 0.0;
            if (gated()) {
                u = element(true, base + k);
            }
            for (var j = 0u; j < TILE; j = j + 1u) {
                let xk = x[min(t0 + j, last) * params.cols + k];
                acc[j] = acc[j] + w * xk;
                up_acc[j] = up_acc[j] + u * xk;
            }
        }
    }
    for (var j = 0u; j < TILE; j = j + 1u) {
        if (t0 + j < step.tokens) {
            finish(t0 + j, r, acc[j], up_acc[j]);
        }
    }
}
