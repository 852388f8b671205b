// Decode attention, split over the sequence (flash-decoding), first pass: one workgroup per (chunk of
// CHUNK cached positions, slice of a GQA group). The single query sits at position `pos` and attends
// to cache positions 0 ..= pos. The query heads sharing a kv head (group = heads / kv_heads) are
// taken up to LANES at a time, one per vec4 component of the scores, so each K and V row is read
// once per slice instead of once per query head; a group of g heads is cut into ⌈g / LANES⌉ slices
// of near-equal size. Each workgroup writes each of its heads' partial softmax state to `partials`:
// [heads, max_chunks] records of (m = max score, l = Σ exp(s − m), o[d] = Σ exp(s − m) · V[d]);
// attention_combine.wgsl merges them. Scores = q·k · scale.
// `step` (binding 0) is declared in common/step.wgsl; params, q and the KV caches in
// common/attention.wgsl.

@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

const WG: u32 = 64u;
const CHUNK: u32 = 256u; // cached positions per workgroup; 4 per invocation
const LANES: u32 = 4u; // query heads per workgroup (vec4 components)
var<workgroup> q_shared: array<vec4<f32>, LANES * MAX_HEAD_DIM / 4u>; // [lane, head_dim / 4]
var<workgroup> weights: array<vec4<f32>, CHUNK>; // per position, one score then weight per lane
var<workgroup> reduction: array<vec4<f32>, WG>;

fn reduce_max(lid: u32, value: vec4<f32>) -> vec4<f32> {
    reduction[lid] = value;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            reduction[lid] = max(reduction[lid], reduction[lid + stride]);
        }
    }
    workgroupBarrier();
    let result = reduction[0];
    workgroupBarrier();
    return result;
}

fn reduce_sum(lid: u32, value: vec4<f32>) -> vec4<f32> {
    reduction[lid] = value;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (lid < stride) {
            reduction[lid] = reduction[lid] + reduction[lid + stride];
        }
    }
    workgroupBarrier();
    let result = reduction[0];
    workgroupBarrier();
    return result;
}

fn store_output(record: u32, lid: u32, acc: vec4<f32>) {
    let o = record + 2u + 4u * lid;
    partials[o] = acc.x;
    partials[o + 1u] = acc.y;
    partials[o + 2u] = acc.z;
    partials[o + 3u] = acc.w;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x;
    let hd = params.head_dim;
    let group = params.heads / params.kv_heads;
    let slices = (group + LANES - 1u) / LANES;
    let per_slice = (group + slices - 1u) / slices;
    let kv_head = wid.y / slices;
    let slice = wid.y % slices;
    let first_head = kv_head * group + slice * per_slice;
    let lanes = min(per_slice, group - slice * per_slice);
    let start = chunk * CHUNK;
    let end = min(start + CHUNK, step.pos + 1u);
    let hd4 = hd / 4u; // head_dim is a multiple of 4: K and V are read four elements at a time
    let cache_base = kv_head * params.max_seq * hd4;

    // Unused lanes hold a zero query: their scores are computed and never written.
    for (var i = lid; i < LANES * hd4; i = i + WG) {
        let lane = i / hd4;
        var value = vec4<f32>(0.0);
        if (lane < lanes) {
            let q_base = step.row * params.q_stride + (first_head + lane) * hd + 4u * (i % hd4);
            value = vec4<f32>(q[q_base], q[q_base + 1u], q[q_base + 2u], q[q_base + 3u]);
        }
        q_shared[i] = value;
    }
    workgroupBarrier();

    var local_max = vec4<f32>(-3.0e38);
    for (var i = lid; i < CHUNK; i = i + WG) {
        let p = start + i;
        var score = vec4<f32>(-3.0e38);
        if (p < end) {
            let key = cache_base + p * hd4;
            var dots = vec4<f32>(0.0);
            for (var j = 0u; j < hd4; j = j + 1u) {
                let k = k_vec4(key + j);
                dots = dots + vec4<f32>(
                    dot(q_shared[j], k),
                    dot(q_shared[hd4 + j], k),
                    dot(q_shared[2u * hd4 + j], k),
                    dot(q_shared[3u * hd4 + j], k),
                );
            }
            score = dots * params.scale;
        }
        weights[i] = score;
        local_max = max(local_max, score);
    }
    let m = reduce_max(lid, local_max);

    var local_sum = vec4<f32>(0.0);
    for (var i = lid; i < CHUNK; i = i + WG) {
        var e = vec4<f32>(0.0);
        if (start + i < end) {
            e = exp(weights[i] - m);
        }
        weights[i] = e;
        local_sum = local_sum + e;
    }
    let l = reduce_sum(lid, local_sum); // its barriers also publish `weights`

    // Invocation lid owns output elements 4·lid .. 4·lid + 3 of every lane (WG · 4 = MAX_HEAD_DIM).
    let stride = params.max_chunks * (hd + 2u); // between heads' records of one chunk
    let record = (first_head * params.max_chunks + chunk) * (hd + 2u);
    if (lid < hd4) {
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        for (var p = start; p < end; p = p + 1u) {
            let v = v_vec4(cache_base + p * hd4 + lid);
            let w = weights[p - start];
            acc0 = acc0 + w.x * v;
            acc1 = acc1 + w.y * v;
            acc2 = acc2 + w.z * v;
            acc3 = acc3 + w.w * v;
        }
        store_output(record, lid, acc0);
        if (lanes > 1u) {
            store_output(record + stride, lid, acc1);
        }
        if (lanes > 2u) {
            store_output(record + 2u * stride, lid, acc2);
        }
        if (lanes > 3u) {
            store_output(record + 3u * stride, lid, acc3);
        }
    }
    if (lid < lanes) {
        partials[record + lid * stride] = m[lid];
        partials[record + lid * stride + 1u] = l[lid];
    }
}
