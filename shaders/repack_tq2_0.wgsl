// Repack of GGUF TQ2_0 ternary weights (llama.cpp type 35, DESIGN §7) into the engine layout
// (DESIGN §3). 256-value blocks of 66 bytes = qs[64] then an f16 d; value 128h + 32l + m is bits
// 2l..2l+1 of qs[32h + m], code q = t + 1 (the engine's code), value (q − 1)·d. Blocks are not 4-byte
// aligned, so bytes are read from the u32 words with shifts. Rows hold whole blocks (cols % 256 == 0),
// so block b fills output words 16b … 16b+15. One invocation per block.
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
    invalid_codes: atomic<u32>, // count of code 3 (not a ternary value)
    scale_min: atomic<u32>,     // min / max of the f16 bits of d over blocks with a non-zero value
    scale_max: atomic<u32>,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>; // the file's bytes, little-endian words
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;
@group(0) @binding(3) var<storage, read_write> status: Status;

const WG: u32 = 64u;
const BLOCK_BYTES: u32 = 66u;

var<workgroup> group_min: atomic<u32>;
var<workgroup> group_max: atomic<u32>;

fn read_byte(i: u32) -> u32 {
    return (raw[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// Bytes b … b+3 as one little-endian word, for any alignment of b.
fn bytes4(b: u32) -> u32 {
    let k = b & 3u;
    let low = raw[b >> 2u];
    if (k == 0u) {
        return low;
    }
    return (low >> (8u * k)) | (raw[(b >> 2u) + 1u] << (32u - 8u * k));
}

// The codes at bit `shift` of the 16 bytes from `first`, as one engine word: code s belongs at bit
// 8·(s % 4) + 2·(s / 4), so byte lane l of the q-th loaded word moves to 8l + 2q.
fn gather16(first: u32, shift: u32) -> u32 {
    var word = 0u;
    for (var q = 0u; q < 4u; q = q + 1u) {
        word = word | (((bytes4(first + 4u * q) >> shift) & 0x03030303u) << (2u * q));
    }
    return word;
}

// Number of 2-bit fields holding code 3 (not a ternary value).
fn invalid_codes(word: u32) -> u32 {
    return countOneBits(word & (word >> 1u) & 0x55555555u);
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
        var invalid = 0u;
        for (var w = 0u; w < 16u; w = w + 1u) {
            // Values 16w … 16w+15 share h and l: bytes qs[32h + m0 …], bits 2l.
            let h = w >> 3u;
            let l = (w >> 1u) & 3u;
            let first_byte = base + 32u * h + 16u * (w & 1u);
            let word = gather16(first_byte, 2u * l);
            live = live || word != 0x55555555u;
            invalid = invalid + invalid_codes(word);
            packed[block * 16u + w] = word;
        }
        if (live) {
            let d = read_byte(base + 64u) | (read_byte(base + 65u) << 8u);
            atomicMin(&group_min, d);
            atomicMax(&group_max, d);
        }
        if (invalid != 0u) {
            atomicAdd(&status.invalid_codes, invalid);
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
