// RoPE (NeoX rotate_half: pairs (j, j + head_dim/2)) fused with the KV-cache append. Input: the fused
// q|k|v projection [T, (heads + 2·kv_heads)·head_dim]. q is rotated in place; rotated k and raw v are
// written to the layer's caches [kv_heads, max_seq, head_dim] at positions pos .. pos + T, as f32
// words or (KV_F16) as f16 pairs: elements 2i and 2i + 1 of a head row in one u32 (pack2x16float,
// after clamping to the finite f16 range, whose overflow pack2x16float leaves undefined).
// angle = f32(position) · inv_freq[j] in f32, exactly as the CPU twin (inv_freq comes from the host);
// sin/cos are evaluated by this shader itself (see sin_cos) to stay within ~1e-7 of libm everywhere.
// One invocation per (token, head, pair j), or with KV_F16 per (token, head, pairs j and j + 1), so
// that each writes whole cache words (head_dim is a multiple of 4: half_dim is even).
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
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;

override KV_F16: bool = false; // the cache dtype (ops::attention::KvCacheDtype): f32 or f16 pairs

const F16_MAX: f32 = 65504.0;

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

// (x1, x2) of pair j rotated by angle position · inv_freq[j].
fn rotate(x1: f32, x2: f32, position: u32, j: u32) -> vec2<f32> {
    let sc = sin_cos(f32(position) * inv_freq[j]);
    let s = sc.x;
    let c = sc.y;
    return vec2<f32>(x1 * c + (-x2) * s, x2 * c + x1 * s);
}

// Cache elements e and e + half_dim (of the kv-head `head` of the v cache when `is_v`, else the k
// cache) = lo.x and hi.x; with KV_F16 elements e, e + 1 = lo and e + half_dim, e + half_dim + 1 = hi
// (e is even).
fn store(is_v: bool, e: u32, half_dim: u32, lo: vec2<f32>, hi: vec2<f32>) {
    var first = bitcast<u32>(lo.x);
    var second = bitcast<u32>(hi.x);
    var index = e;
    var offset = half_dim;
    if (KV_F16) {
        first = pack2x16float(clamp(lo, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
        second = pack2x16float(clamp(hi, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
        index = e / 2u;
        offset = half_dim / 2u;
    }
    if (is_v) {
        v_cache[index] = first;
        v_cache[index + offset] = second;
    } else {
        k_cache[index] = first;
        k_cache[index + offset] = second;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half_dim = params.head_dim / 2u;
    let pairs = select(1u, 2u, KV_F16); // rotation pairs per invocation
    let lanes = half_dim / pairs; // invocations per head
    let all_heads = params.heads + 2u * params.kv_heads;
    let per_token = all_heads * lanes;
    let index = gid.x + gid.y * groups.x * 64u;
    let t = index / per_token;
    let position = step.pos + t;
    if (t >= step.tokens || position >= params.max_seq) {
        return;
    }
    let head = (index % per_token) / lanes;
    let j = (index % lanes) * pairs;
    let src = (step.row + t) * all_heads * params.head_dim + head * params.head_dim + j;
    // lo: elements j (and j + 1); hi: elements j + half_dim (and j + half_dim + 1).
    var lo = vec2<f32>(qkv[src], 0.0);
    var hi = vec2<f32>(qkv[src + half_dim], 0.0);
    if (KV_F16) {
        lo.y = qkv[src + 1u];
        hi.y = qkv[src + half_dim + 1u];
    }
    if (head >= params.heads + params.kv_heads) {
        let kv_head = head - params.heads - params.kv_heads;
        store(true, (kv_head * params.max_seq + position) * params.head_dim + j, half_dim, lo, hi);
        return;
    }
    let first = rotate(lo.x, hi.x, position, j);
    lo.x = first.x;
    hi.x = first.y;
    if (KV_F16) {
        let second = rotate(lo.y, hi.y, position, j + 1u);
        lo.y = second.x;
        hi.y = second.y;
    }
    if (head < params.heads) {
        qkv[src] = lo.x;
        qkv[src + half_dim] = hi.x;
        if (KV_F16) {
            qkv[src + 1u] = lo.y;
            qkv[src + half_dim + 1u] = hi.y;
        }
    } else {
        let kv_head = head - params.heads;
        store(false, (kv_head * params.max_seq + position) * params.head_dim + j, half_dim, lo, hi);
    }
}
