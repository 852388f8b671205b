// Subgroup layout of the ternary matvec: one subgroup per row, lanes stride over the row's code words
// and `subgroupAdd` reduces them. The wrapper prepends this file to ../ternary_matvec.wgsl (bindings,
// row_dot, finish), so it is only valid WGSL together with that file.
// The subgroup size is only known at run time: a workgroup owns SG_ROWS = WG / subgroup_min_size rows
// and its subgroups take them in turns, so any actual size ≥ the minimum covers every row.
// Subgroup s is taken to be invocations s·size … s·size + size − 1 (how every driver splits a 1-D
// workgroup; the `subgroup_id` builtin would say so explicitly but browsers do not offer it yet).
// No `enable subgroups;` here: naga (wgpu 30) rejects the directive and needs only the device feature;
// the wrapper adds it for the browser, whose WGSL compiler requires it.

override SG_ROWS: u32 = 8u;

@compute @workgroup_size(WG)
fn subgroup_per_row(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
) {
    let subgroup = lid / size;
    let subgroups = WG / size;
    let first = (wid.x + wid.y * groups.x) * SG_ROWS;
    for (var r = 0u; r < SG_ROWS; r = r + subgroups) {
        let n = first + r + subgroup;
        let valid = r + subgroup < SG_ROWS && n < params.rows;
        for (var t = 0u; t < step.tokens; t = t + 1u) {
            var acc = vec2<i32>(0, 0);
            if (valid) {
                acc.x = row_dot(n, t, lane, size);
                if (gated()) {
                    acc.y = row_dot(params.up_row + n, t, lane, size);
                }
            }
            let total = subgroupAdd(acc);
            if (valid && lane == 0u) {
                finish(t, n, total.x, total.y);
            }
        }
    }
}
