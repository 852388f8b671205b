// Shared by dense_matvec.wgsl and int8_matvec.wgsl (the engine appends it to each): their two work
// layouts over one row chunk of a table, out[t, first_row + r] = row_scale(r) · partial_dot(r, t, …):
//   row_per_invocation: one invocation per row, no reduction (CPU adapters);
//   row_per_workgroup: a workgroup per row, coalesced loads, tree reduction in workgroup memory (GPUs).
// Each kernel declares `params` (rows, first_row, out_stride), `out`, `WG`, and defines
// `partial_dot(r, t, lane, stride)` (row r · x[t] over lanes lane, lane + stride, …) and
// `row_scale(r)`. A token's sum runs in the same order whatever the step's token count, so a row's
// logit does not depend on the batch around it.

@compute @workgroup_size(WG)
fn row_per_invocation(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let r = gid.x + gid.y * groups.x * WG;
    if (r >= params.rows) {
        return;
    }
    let scale = row_scale(r);
    for (var t = 0u; t < step.tokens; t = t + 1u) {
        out[t * params.out_stride + params.first_row + r] = scale * partial_dot(r, t, 0u, 1u);
    }
}

var<workgroup> partial: array<f32, WG>;

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
    let scale = row_scale(r);
    for (var t = 0u; t < step.tokens; t = t + 1u) {
        partial[lid] = partial_dot(r, t, lid, WG);
        for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
            workgroupBarrier();
            if (lid < stride) {
                partial[lid] = partial[lid] + partial[lid + stride];
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            out[t * params.out_stride + params.first_row + r] = scale * partial[0];
        }
        workgroupBarrier();
    }
}
