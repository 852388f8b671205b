// Prefill ternary projection (T tokens): the math and epilogues of ternary_matvec.wgsl, to which the
// wrapper appends this file. One invocation per output row × a tile of TILE tokens (workgroup_id.z
// picks the tile): each weight word is loaded and decoded once per tile and dotted with TILE tokens.
// The last tile is padded by re-reading the last token (in bounds, discarded), so the inner loop has a
// constant trip count and the accumulators can live in registers.

const TILE: u32 = 8u;

@compute @workgroup_size(WG)
fn matmul(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let n = gid.x + gid.y * groups.x * WG;
    if (n >= params.rows) {
        return;
    }
    let t0 = wid.z * TILE;
    let last = step.tokens - 1u;
    let base = n * params.words;
    let up_base = (params.up_row + n) * params.words;
    var acc: array<i32, TILE>;
    var up_acc: array<i32, TILE>;
    for (var j = 0u; j < params.words; j = j + 1u) {
        let c = codes(weight(base + j));
        var up_c = vec4<u32>(0u);
        if (gated()) {
            up_c = codes(weight(up_base + j));
        }
        for (var i = 0u; i < TILE; i = i + 1u) {
            let x = xq[min(t0 + i, last) * params.words + j];
            acc[i] = acc[i] + codes_dot(c, x);
            if (gated()) {
                up_acc[i] = up_acc[i] + codes_dot(up_c, x);
            }
        }
    }
    for (var i = 0u; i < TILE; i = i + 1u) {
        if (t0 + i < step.tokens) {
            finish(t0 + i, n, acc[i], up_acc[i]);
        }
    }
}
