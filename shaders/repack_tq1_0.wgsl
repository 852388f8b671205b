// Repack of GGUF TQ1_0 ternary weights (llama.cpp type 34, DESIGN §7) into the engine layout
// (DESIGN §3). 256-value blocks of 54 bytes = qs[48], qh[4], f16 d. Each byte holds base-3 digits
// pre-scaled to ⌈c·256/243⌉ (first digit most significant); digit n is x = (u8(byte·3ⁿ)·3) >> 8,
// the code t + 1 (the engine's code). qs[0..32] hold values 32n + m (0–159), qs[32..48] hold
// 160 + 16n + m, qh[0..4] hold 240 + 4n + j. Blocks are not 4-byte aligned, so bytes are read from the
// u32 words with shifts. Rows hold whole blocks (cols % 256 == 0), so block b fills output words
// 16b … 16b+15. One invocation per block.
// The engine keeps one scale per tensor: every block with a non-zero value must carry the same d.
// The kernel reduces min and max of those d bits (workgroup first, then one global atomic each); the
// host checks min == max.

struct Params {
    blocks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Status {
    invalid_codes: atomic<u32>, // unused: every byte decodes to digits 0..2
    scale_min: atomic<u32>,     // min / max of the f16 bits of d over blocks with a non-zero value
    scale_max: atomic<u32>,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>; // the file's bytes, little-endian words
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;
@group(0) @binding(3) var<storage, read_write> status: Status;

const WG: u32 = 64u;
const BLOCK_BYTES: u32 = 54u;

var<workgroup> group_min: atomic<u32>;
var<workgroup> group_max: atomic<u32>;

fn read_byte(i: u32) -> u32 {
    return (raw[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// Byte offset within the block and digit index of value v.
fn position(v: u32) -> vec2<u32> {
    if (v < 160u) {
        return vec2<u32>(v & 31u, v >> 5u);
    }
    if (v < 240u) {
        let u = v - 160u;
        return vec2<u32>(32u + (u & 15u), u >> 4u);
    }
    let u = v - 240u;
    return vec2<u32>(48u + (u & 3u), u >> 2u);
}

fn digit(byte: u32, n: u32) -> u32 {
    var power = 1u;
    for (var i = 0u; i < n; i = i + 1u) {
        power = power * 3u;
    }
    return (((byte * power) & 0xffu) * 3u) >> 8u;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    if (lid.x == 0u) {
        atomicStore(&group_min, 0xffffffffu);
        atomicStore(&group_max, 0u);
    }
    workgroupBarrier();

    let block = (wid.y * groups.x + wid.x) * WG + lid.x;
    if (block < params.blocks) {
        let base = block * BLOCK_BYTES;
        var live = false;
        for (var w = 0u; w < 16u; w = w + 1u) {
            var word = 0u;
            for (var s = 0u; s < 16u; s = s + 1u) {
                let at = position(16u * w + s);
                let code = digit(read_byte(base + at.x), at.y);
                live = live || code != 1u;
                word = word | (code << (8u * (s & 3u) + 2u * (s >> 2u)));
            }
            packed[block * 16u + w] = word;
        }
        if (live) {
            let d = read_byte(base + 52u) | (read_byte(base + 53u) << 8u);
            atomicMin(&group_min, d);
            atomicMax(&group_max, d);
        }
    }

    workgroupBarrier();
    if (lid.x == 0u) {
        let lo = atomicLoad(&group_min);
        if (lo != 0xffffffffu) {
            atomicMin(&status.scale_min, lo);
            atomicMax(&status.scale_max, atomicLoad(&group_max));
        }
    }
}
