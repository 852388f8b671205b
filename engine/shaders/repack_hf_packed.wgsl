// Repack of HF packed ternary weights (microsoft/bitnet-b1.58-2B-4T) into the engine layout (both
// in ARCHITECTURE.md, "Checkpoint formats, byte by byte"). The file tensor is U8 [rows/4, cols]:
// output row i·rows/4 + r takes bits 2i..2i+1 of packed[r, k] (4 output-axis blocks, not 4 adjacent
// rows). Both layouts store code = t + 1, so the repack only moves 2-bit codes. One invocation per
// output word (16 codes of one row): a full word is 16 consecutive bytes of one packed row, read as
// 4 words. Bindings and helpers: common/repack.wgsl.

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
            word = (word & ~(3u << code_shift(s))) | (code << code_shift(s));
        }
    }
    store_word(index, word);
}
