// Repack of GGUF TQ2_0 ternary weights (llama.cpp type 35) into the engine layout (both in
// ARCHITECTURE.md, "Checkpoint formats, byte by byte"). 256-value blocks of 66 bytes = qs[64] then
// an f16 d; value 128h + 32l + m is bits 2l..2l+1 of qs[32h + m], code q = t + 1 (the engine's
// code), value (q − 1)·d. Blocks are not 4-byte aligned, so bytes are read from the u32 words with
// shifts. Rows hold whole blocks (cols % 256 == 0), so block b fills output words 16b … 16b+15. One
// invocation per block.
// The engine keeps one scale per tensor: every block with a non-zero value must carry the same d.
// Bindings, helpers and that check: common/repack.wgsl.

struct Params {
    blocks: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    out_offset: u32,
    slot: u32,
    _pad3: u32,
    _pad4: u32,
}

const BLOCK_BYTES: u32 = 66u;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    block_scales_begin(lid.x);

    let block = (wid.y * groups.x + wid.x) * WG + lid.x;
    if (block < params.blocks) {
        let base = block * BLOCK_BYTES;
        var live = false;
        for (var w = 0u; w < 16u; w = w + 1u) {
            // Values 16w … 16w+15 share h and l: bytes qs[32h + m0 …], bits 2l.
            let h = w >> 3u;
            let l = (w >> 1u) & 3u;
            let first_byte = base + 32u * h + 16u * (w & 1u);
            let word = gather16(first_byte, 2u * l);
            live = live || word != 0x55555555u;
            store_word(block * 16u + w, word);
        }
        if (live) {
            let d = read_byte(base + 64u) | (read_byte(base + 65u) << 8u);
            block_scale(d);
        }
    }

    block_scales_end(lid.x);
}
