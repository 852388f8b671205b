// RoPE (NeoX rotate_half: pairs (j, j + head_dim/2)) fused with the KV-cache append. Input: the fused
// q|k|v projection [T, (heads + 2·kv_heads)·head_dim]. q is rotated in place; rotated k and raw v are
// written to the layer's caches [kv_heads, max_seq, head_dim] at positions pos .. pos + T.
// angle = f32(position) · inv_freq[j] in f32, exactly as the CPU twin (inv_freq comes from the host);
// sin/cos are evaluated by this shader itself (see sin_cos) to stay within ~1e-7 of libm everywhere.
// One invocation per (token, head, pair j).
// `step` (binding 0) is declared in common/step.wgsl.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
}

@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;

// (sin a, cos a) for |a| < ~1.3e5 without the builtins, whose accuracy outside [−π, π] is unspecified
// and which SwiftShader evaluates to only ~2e-4 even inside it. r = a − n·π/2 with π/2 split into
// C1 + C2 + C3 so that n·C1, n·C2 and the first subtractions are exact; then Taylor polynomials on
// |r| ≤ π/4 (truncation < 2e-9) and the quadrant n mod 4. Agrees with libm's sinf/cosf to ~1e-7.
fn sin_cos(a: f32) -> vec2<f32> {
    let n = round(a * 0.63661977);
    let r = ((a - n * 1.5625) - n * 0.00830078125) - n * -4.454455e-06;
    let r2 = r * r;
    let s = r + r * r2 * (-0.16666667 + r2 * (0.008333334 + r2 * (-0.0001984127 + r2 * 2.7557319e-06)));
    let c = 1.0 + r2 * (-0.5 + r2 * (0.041666668 + r2 * (-0.0013888889 + r2 * (2.4801588e-05 + r2 * -2.7557319e-07))));
    switch (i32(n) & 3) {
        case 0: {
            return vec2<f32>(s, c);
        }
        case 1: {
            return vec2<f32>(c, -s);
        }
        case 2: {
            return vec2<f32>(-s, -c);
        }
        default: {
            return vec2<f32>(-c, s);
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let all_heads = params.heads + 2u * params.kv_heads;
    let per_token = all_heads * half_dim;
    let index = gid.x + gid.y * groups.x * 64u;
    let t = index / per_token;
    let position = step.pos + t;
    if (t >= step.tokens || position >= params.max_seq) {
        return;
    }
    let head = (index % per_token) / half_dim;
    let j = index % half_dim;
    let src = (step.row + t) * all_heads * params.head_dim + head * params.head_dim + j;
    let x1 = qkv[src];
    let x2 = qkv[src + half_dim];
    if (head >= params.heads + params.kv_heads) {
        let dst = ((head - params.heads - params.kv_heads) * params.max_seq + position) * params.head_dim + j;
        v_cache[dst] = x1;
        v_cache[dst + half_dim] = x2;
        return;
    }
    let sc = sin_cos(f32(position) * inv_freq[j]);
    let s = sc.x;
    let c = sc.y;
    let y1 = x1 * c + (-x2) * s;
    let y2 = x2 * c + x1 * s;
    if (head < params.heads) {
        qkv[src] = y1;
        qkv[src + half_dim] = y2;
    } else {
        let dst = ((head - params.heads) * params.max_seq + position) * params.head_dim + j;
        k_cache[dst] = y1;
        k_cache[dst + half_dim] = y2;
    }
}
