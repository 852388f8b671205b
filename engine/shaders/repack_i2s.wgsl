// Repack of GGUF I2_S ternary weights (bitnet.cpp type 36) into the engine layout (both in
// ARCHITECTURE.md, "Checkpoint formats, byte by byte"). The flattened row-major tensor is cut into
// 128-value blocks of 32 bytes: value j of a block sits in byte j mod 32 at bit shift
// 6 − 2·(j div 32). Codes 0/1/2 = −1/0/+1, the engine's codes.
// The per-tensor scale after the codes is read on the host. One invocation per output word.
// Bindings and helpers: common/repack.wgsl.

struct Params {
    rows: u32,
    cols: u32,
    words_per_row: u32,
    words: u32, // rows · words_per_row
    out_offset: u32,
    slot: u32,
    _pad0: u32,
    _pad1: u32,
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
    let count = min(16u, params.cols - first);
    let start = row * params.cols + first; // flat index: blocks run across row ends
    var word = 0x55555555u; // padding columns keep code 1 (t = 0)
    if (count == 16u && (start & 15u) == 0u) {
        // 16 values of one block: bytes j mod 32 … +15, one shift.
        let j = start & 127u;
        word = gather16((start >> 7u) * 32u + (j & 31u), 6u - 2u * (j >> 5u));
    } else {
        for (var s = 0u; s < count; s = s + 1u) {
            let j = (start + s) & 127u;
            let code = (read_byte(((start + s) >> 7u) * 32u + (j & 31u)) >> (6u - 2u * (j >> 5u))) & 3u;
            word = (word & ~(3u << code_shift(s))) | (code << code_shift(s));
        }
    }
    store_word(index, word);
}
