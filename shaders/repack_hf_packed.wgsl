// Repack of HF packed ternary weights (microsoft/bitnet-b1.58-2B-4T, DESIGN §4.1) into the engine
// layout (DESIGN §3). The file tensor is U8 [rows/4, cols]: output row i·rows/4 + r takes bits 2i..2i+1
// of packed[r, k] (4 output-axis blocks, not 4 adjacent rows). Both layouts store code = t + 1, so the
// repack only moves 2-bit codes. One invocation per output word (16 codes of one row): a full word
// is 16 consecutive bytes of one packed row, read as 4 words.

struct Params {
    rows: u32,
    cols: u32,
    words_per_row: u32,
    words: u32, // rows · words_per_row
}

struct Status {
    invalid_codes: atomic<u32>, // count of code 3 (not a ternary value)
    scale_min: atomic<u32>,     // unused by this layout (shared with the TQ kernels)
    scale_max: atomic<u32>,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>; // the file's bytes, little-endian words
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;
@group(0) @binding(3) var<storage, read_write> status: Status;

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
    let index = (wid.y * groups.x + wid.x) * WG + lid.x;
    if (index >= params.words) {
        return;
    }
    let row = index / params.words_per_row;
    let first = (index % params.words_per_row) * 16u;
    let block_rows = params.rows / 4u;
    let plane = 2u * (row / block_rows);
    let source = (row % block_rows) * params.cols + first;
    let count = min(16u, params.cols - first);
    var word = 0x55555555u; // padding columns keep code 1 (t = 0)
    if (count == 16u) {
        word = gather16(source, plane);
    } else {
        for (var s = 0u; s < count; s = s + 1u) {
            let code = (read_byte(source + s) >> plane) & 3u;
            let shift = 8u * (s & 3u) + 2u * (s >> 2u);
            word = (word & ~(3u << shift)) | (code << shift);
        }
    }
    let invalid = invalid_codes(word);
    packed[index] = word;
    if (invalid != 0u) {
        atomicAdd(&status.invalid_codes, invalid);
    }
}
