// Ternary projection for decode (a few tokens): out[t, n] from row n of the engine-layout ternary
// weight (ARCHITECTURE.md, the engine layout) and token t's packed int8 activations (written by
// rmsnorm_quant.wgsl).
//   acc = Σ_j Σ_s dot4I8Packed((w_j >> 2s) & 0x03030303, xq[4j + s])   codes c = t + 1 ≥ 0, exact in i32
//   value = f32(acc − Σq) · inv_scale · row_scale[n]                    Σ t·q = Σ c·q − Σ q
// Never subtract 0x01010101 from the codes: a zero code would borrow from the next lane.
// EPILOGUE (common/epilogue.wgsl): 0 store, 1 add into out (the residual stream), 2 relu(g)²·u,
// 3 silu(g)·u. The gated ones read gate row n and up row up_row + n of a fused gate|up weight and write
// out[t, n] for n < rows (= I).
// Two work layouts here (the subgroup one is in subgroup/ternary_matvec.wgsl, which is prepended to this
// file), all sharing row_dot and finish:
//   row_per_invocation: one invocation per row, vec4 weight loads, no reduction — fastest on CPU adapters;
//   workgroup_reduce: TPR invocations per row, tree reduction in workgroup memory — GPUs without subgroups.
// ternary_matmul.wgsl (appended for prefill) reuses the bindings and the epilogue.
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    words: u32,      // words_per_row(K): u32 code words per weight row; a token's xq has 4× as many
    rows: u32,       // outputs per token: N, or I for the gated epilogues
    up_row: u32,     // gated: the first up row of the fused weight (= I)
    out_stride: u32, // floats per token in out
}

struct ActStats {
    inv_scale: f32,
    sum: i32,
}

override WG: u32 = 64u;
override TPR: u32 = 32u; // workgroup_reduce: invocations per row (a power of two dividing WG)

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> weights: array<vec4<u32>>; // 4 code words
@group(0) @binding(3) var<storage, read> xq: array<vec4<u32>>; // 16 int8 lanes: one code word's worth
@group(0) @binding(4) var<storage, read> stats: array<ActStats>;
@group(0) @binding(5) var<storage, read> row_scale: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const CODES: u32 = 0x03030303u;

// Word i of the weight. The binding is padded to whole vec4s (see weight_bytes in the wrapper).
fn weight(i: u32) -> u32 {
    return weights[i >> 2u][i & 3u];
}

// The codes of one weight word as four int8x4 words: lane s holds columns 4s … 4s + 3.
fn codes(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(CODES);
}

// Σ c·q over the 16 columns of one code word.
fn codes_dot(c: vec4<u32>, x: vec4<u32>) -> i32 {
    return dot4I8Packed(c.x, x.x) + dot4I8Packed(c.y, x.y) + dot4I8Packed(c.z, x.z) + dot4I8Packed(c.w, x.w);
}

// Σ c·q of weight row `row` with token `t` over the words `lane, lane + stride, …`.
fn row_dot(row: u32, t: u32, lane: u32, stride: u32) -> i32 {
    let base = row * params.words;
    let xbase = t * params.words;
    var acc = 0;
    for (var j = lane; j < params.words; j = j + stride) {
        acc = acc + codes_dot(codes(weight(base + j)), xq[xbase + j]);
    }
    return acc;
}

// row_dot over the whole row with one vec4 load per 4 words (rows must start on a vec4: words % 4 == 0).
fn row_dot_vec4(row: u32, t: u32) -> i32 {
    let base = row * (params.words / 4u);
    let xbase = t * params.words;
    var acc = 0;
    for (var j = 0u; j < params.words / 4u; j = j + 1u) {
        let w = weights[base + j];
        let x = xbase + 4u * j;
        acc = acc + codes_dot(codes(w.x), xq[x]) + codes_dot(codes(w.y), xq[x + 1u])
            + codes_dot(codes(w.z), xq[x + 2u]) + codes_dot(codes(w.w), xq[x + 3u]);
    }
    return acc;
}

// The whole row, by vec4s where the layout allows.
fn row_dot_serial(row: u32, t: u32) -> i32 {
    if (params.words % 4u == 0u) {
        return row_dot_vec4(row, t);
    }
    return row_dot(row, t, 0u, 1u);
}

fn project(acc: i32, t: u32, row: u32) -> f32 {
    let s = stats[t];
    return f32(acc - s.sum) * s.inv_scale * row_scale[row];
}

// Writes output n of token t from the code dot products of its gate (or only) row and its up row.
fn finish(t: u32, n: u32, acc: i32, up_acc: i32) {
    var up_value = 0.0;
    if (gated()) {
        up_value = project(up_acc, t, params.up_row + n);
    }
    write_output(t * params.out_stride + n, project(acc, t, n), up_value);
}

@compute @workgroup_size(WG)
fn row_per_invocation(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = gid.x + gid.y * groups.x * WG;
    if (n >= params.rows) {
        return;
    }
    for (var t = 0u; t < step.tokens; t = t + 1u) {
        var up_acc = 0;
        if (gated()) {
            up_acc = row_dot_serial(params.up_row + n, t);
        }
        finish(t, n, row_dot_serial(n, t), up_acc);
    }
}

var<workgroup> partial: array<vec2<i32>, WG>;

@compute @workgroup_size(WG)
fn workgroup_reduce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = lid % TPR;
    let n = (wid.x + wid.y * groups.x) * (WG / TPR) + lid / TPR;
    let valid = n < params.rows;
    for (var t = 0u; t < step.tokens; t = t + 1u) {
        var acc = vec2<i32>(0, 0);
        if (valid) {
            acc.x = row_dot(n, t, lane, TPR);
            if (gated()) {
                acc.y = row_dot(params.up_row + n, t, lane, TPR);
            }
        }
        partial[lid] = acc;
        for (var stride = TPR / 2u; stride > 0u; stride = stride / 2u) {
            workgroupBarrier();
            if (lane < stride) {
                partial[lid] = partial[lid] + partial[lid + stride];
            }
        }
        workgroupBarrier();
        if (valid && lane == 0u) {
            finish(t, n, partial[lid].x, partial[lid].y);
        }
        workgroupBarrier();
    }
}
