// Memory-bandwidth yardstick for benchmarks, over one binding-sized chunk of a large buffer.
//   read_all: invocation i sums (wrapping) the vec4s i, i + G, i + 2G, … of `src` (G = params.invocations)
//         into dst[i]; the sums form a checksum, so no load can be elided;
//   copy_all: the same walk, dst[j] = src[j].
// Adjacent invocations touch adjacent vec4s, so a GPU's loads coalesce.

struct Params {
    vecs: u32,        // vec4<u32> elements in src
    invocations: u32, // G: invocations in the dispatch (workgroups · WG)
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(WG)
fn read_all(@builtin(global_invocation_id) gid: vec3<u32>) {
    var sum = vec4<u32>(0u);
    for (var j = gid.x; j < params.vecs; j = j + params.invocations) {
        sum = sum + src[j];
    }
    dst[gid.x] = sum;
}

@compute @workgroup_size(WG)
fn copy_all(@builtin(global_invocation_id) gid: vec3<u32>) {
    for (var j = gid.x; j < params.vecs; j = j + params.invocations) {
        dst[j] = src[j];
    }
}
