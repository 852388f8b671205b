// Repack of GGUF TQ1_0 ternary weights (llama.cpp type 34) into the engine layout (both in
// ARCHITECTURE.md, "Checkpoint formats, byte by byte"). 256-value blocks of 54 bytes = qs[48],
// qh[4], f16 d. Each byte holds base-3 digits pre-scaled to ⌈c·256/243⌉ (first digit most
// significant); digit n is x = (u8(byte·3ⁿ)·3) >> 8, the code t + 1 (the engine's code). qs[0..32]
// hold values 32n + m (0–159), qs[32..48] hold 160 + 16n + m, qh[0..4] hold 240 + 4n + j. Blocks
// are not 4-byte aligned, so bytes are read from the u32 words with shifts. Rows hold whole blocks
// (cols % 256 == 0), so block b fills output words 16b … 16b+15. One invocation per block.
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

const BLOCK_BYTES: u32 = 54u;

fn power3(n: u32) -> u32 {
    var power = 1u;
    for (var i = 0u; i < n; i = i + 1u) {
        power = power * 3u;
    }
    return power;
}

// Digit of a pre-scaled byte, brought to the top by multiplying by 3ⁿ (mod 256).
fn digit(byte: u32, power: u32) -> u32 {
    return (((byte * power) & 0xffu) * 3u) >> 8u;
}

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
            // Code s of the word belongs at bit 8·(s % 4) + 2·(s / 4) = 8·lane + 2q for s = 4q + lane.
            // Words 0–9: values 16w … 16w+15 are digit w/2 of qs[16·(w % 2) …], words 10–14: digit
            // w − 10 of qs[32 …]; word 15 (values 240 + 4n + j): digit n = q of qh[j = lane].
            var word = 0u;
            for (var q = 0u; q < 4u; q = q + 1u) {
                var first = base + 48u;
                var power = power3(q);
                if (w < 10u) {
                    first = base + 16u * (w & 1u) + 4u * q;
                    power = power3(w >> 1u);
                } else if (w < 15u) {
                    first = base + 32u + 4u * q;
                    power = power3(w - 10u);
                }
                let four = bytes4(first);
                for (var lane = 0u; lane < 4u; lane = lane + 1u) {
                    word = word | (digit((four >> (8u * lane)) & 0xffu, power) << (8u * lane + 2u * q));
                }
            }
            live = live || word != 0x55555555u;
            packed[params.out_offset + block * 16u + w] = word;
        }
        if (live) {
            let d = read_byte(base + 52u) | (read_byte(base + 53u) << 8u);
            block_scale(d);
        }
    }

    block_scales_end(lid.x);
}
