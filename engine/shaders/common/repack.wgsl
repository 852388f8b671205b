// Shared by the repack_* kernels (the engine appends it to each): the bindings, byte access to the
// file's words, the engine word's code order, and the TQ block-scale reduction. `Params` is each
// kernel's own; every one ends with `out_offset` (the first output word: a tensor is written into
// its rows of a fused q|k|v or gate|up weight) and `slot` (its entry in `status`, one per tensor of a
// load, read back once at the end).

struct Status {
    invalid_codes: atomic<u32>, // count of code 3 (not a ternary value)
    scale_min: atomic<u32>,     // TQ*_0: min / max of the f16 bits of d over blocks with a non-zero value
    scale_max: atomic<u32>,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>; // the file's bytes, little-endian words
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;
@group(0) @binding(3) var<storage, read_write> status: array<Status>;

const WG: u32 = 64u;

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

// Code s of an engine word sits at bit 8·(s % 4) + 2·(s / 4).
fn code_shift(s: u32) -> u32 {
    return 8u * (s & 3u) + 2u * (s >> 2u);
}

// The codes at bit `shift` of the 16 bytes from `first`, as one engine word: byte lane l of the q-th
// loaded word is code 4q + l, so it moves to bit 8l + 2q.
fn gather16(first: u32, shift: u32) -> u32 {
    var word = 0u;
    for (var q = 0u; q < 4u; q = q + 1u) {
        word = word | (((bytes4(first + 4u * q) >> shift) & 0x03030303u) << (2u * q));
    }
    return word;
}

// Stores engine word `index`, counting its 2-bit fields that hold code 3 (not a ternary value).
fn store_word(index: u32, word: u32) {
    packed[params.out_offset + index] = word;
    let invalid = countOneBits(word & (word >> 1u) & 0x55555555u);
    if (invalid != 0u) {
        atomicAdd(&status[params.slot].invalid_codes, invalid);
    }
}

// TQ*_0: the engine keeps one scale per tensor, so every block with a non-zero value must carry the
// same d. Min and max of those d bits are reduced per workgroup, then with one global atomic each;
// the host checks min == max. Call begin and end from uniform control flow.
var<workgroup> group_min: atomic<u32>;
var<workgroup> group_max: atomic<u32>;

fn block_scales_begin(lid: u32) {
    if (lid == 0u) {
        atomicStore(&group_min, 0xffffffffu);
        atomicStore(&group_max, 0u);
    }
    workgroupBarrier();
}

fn block_scale(d: u32) {
    atomicMin(&group_min, d);
    atomicMax(&group_max, d);
}

fn block_scales_end(lid: u32) {
    workgroupBarrier();
    if (lid == 0u) {
        let lo = atomicLoad(&group_min);
        if (lo != 0xffffffffu) {
            atomicMin(&status[params.slot].scale_min, lo);
            atomicMax(&status[params.slot].scale_max, atomicLoad(&group_max));
        }
    }
}
