//! The repack on the host, for CPU adapters (lavapipe, SwiftShader): there the "GPU" is the same
//! cores, and a kernel interpreted lane by lane moves the codes several times slower than this loop
//! (a 2B-4T load spent most of its time waiting for the repack kernel). It writes the same words
//! and reports the same status as the `repack_*` kernels, with the same gathers (16 bytes under one
//! shift make a word); the kernel tests hold both to the CPU twins.

use super::{Status, EMPTY_STATUS};
use crate::layout::{
    words_per_row, TernaryLayout, I2S_BLOCK, TQ1_0_BLOCK_BYTES, TQ2_0_BLOCK_BYTES, TQ_BLOCK,
};

/// A word of 16 zero values (code 1): padding columns keep it.
const ZERO_WORD: u32 = 0x5555_5555;

/// Output words a thread is given at least: smaller tensors are repacked on the calling thread.
const WORDS_PER_THREAD: usize = 1 << 18;

/// Writes tensor W[rows, cols] (its file bytes in `raw`, at least `layout.code_bytes(rows, cols)`)
/// to `out` (rows × `words_per_row(cols)` words) in the engine layout and returns its status.
/// Natively the rows are shared among the machine's cores.
pub(super) fn repack(
    layout: TernaryLayout,
    raw: &[u8],
    rows: usize,
    cols: usize,
    out: &mut [u32],
) -> Status {
    let row_words = words_per_row(cols);
    let out = &mut out[..rows * row_words];
    #[cfg(not(target_arch = "wasm32"))]
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_arch = "wasm32")]
    let threads = 1;
    let threads = threads.min((rows * row_words / WORDS_PER_THREAD).max(1));
    if threads == 1 {
        return repack_rows(layout, raw, rows, cols, 0, out);
    }
    let rows_per_thread = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = out
            .chunks_mut(rows_per_thread * row_words)
            .enumerate()
            .map(|(part, out)| {
                let first_row = part * rows_per_thread;
                scope.spawn(move || repack_rows(layout, raw, rows, cols, first_row, out))
            })
            .collect();
        parts.into_iter().fold(EMPTY_STATUS, |total, part| {
            let part = part.join().expect("a repack thread does not panic");
            Status {
                invalid_codes: total.invalid_codes + part.invalid_codes,
                scale_min: total.scale_min.min(part.scale_min),
                scale_max: total.scale_max.max(part.scale_max),
                _pad: 0,
            }
        })
    })
}

/// Rows `first_row..` of the tensor into `out` (whole rows).
fn repack_rows(
    layout: TernaryLayout,
    raw: &[u8],
    rows: usize,
    cols: usize,
    first_row: usize,
    out: &mut [u32],
) -> Status {
    let mut status = EMPTY_STATUS;
    let blocks_per_row = cols / TQ_BLOCK;
    match layout {
        TernaryLayout::HfPacked => hf_packed(raw, rows, cols, first_row, out, &mut status),
        TernaryLayout::I2S => i2s(raw, cols, first_row, out, &mut status),
        TernaryLayout::Tq2_0 => {
            let raw = &raw[first_row * blocks_per_row * TQ2_0_BLOCK_BYTES..];
            tq2_0(raw, out, &mut status)
        }
        TernaryLayout::Tq1_0 => {
            let raw = &raw[first_row * blocks_per_row * TQ1_0_BLOCK_BYTES..];
            tq1_0(raw, out, &mut status)
        }
    }
    status
}

/// Bits `shift..shift+1` of 16 bytes as one engine word: byte b of the word takes bytes b, b+4,
/// b+8, b+12 (the code of column 4s + b sits at bit 8b + 2s). In two 64-bit halves: after the
/// shift and mask each byte holds its code, and folding a half's upper 32 bits onto its lower ones
/// (shifted by 2) interleaves bytes b and b+4 without crossing a byte.
fn gather16(bytes: &[u8; 16], shift: u32) -> u32 {
    const CODES: u64 = 0x0303_0303_0303_0303;
    let (halves, _) = bytes.as_chunks::<8>();
    let fold = |half: [u8; 8]| {
        let codes = (u64::from_le_bytes(half) >> shift) & CODES;
        (codes | (codes >> 30)) as u32
    };
    fold(halves[0]) | (fold(halves[1]) << 4)
}

/// The 16 bytes from `first`.
fn bytes16(raw: &[u8], first: usize) -> &[u8; 16] {
    raw[first..first + 16].try_into().expect("16 bytes")
}

/// Code `s` (0..16) of a word at its bit, the rest of the word kept.
fn with_code(word: u32, s: usize, code: u32) -> u32 {
    let shift = 8 * (s % 4) + 2 * (s / 4);
    (word & !(3 << shift)) | (code << shift)
}

/// Fills `words` with `word(j)` and counts their code-3 fields (not ternary values); the count
/// runs only where one is present, so the fill stays a loop without branches.
fn fill_words(words: &mut [u32], status: &mut Status, word: impl Fn(usize) -> u32) {
    let mut invalid = 0;
    for (j, out) in words.iter_mut().enumerate() {
        *out = word(j);
        invalid |= *out & (*out >> 1);
    }
    if invalid & 0x5555_5555 != 0 {
        let count = |w: &u32| (w & (w >> 1) & 0x5555_5555).count_ones();
        status.invalid_codes += words.iter().map(count).sum::<u32>();
    }
}

/// U8 [rows/4, cols]: output row i·rows/4 + r takes bits 2i of packed row r.
fn hf_packed(
    raw: &[u8],
    rows: usize,
    cols: usize,
    first_row: usize,
    out: &mut [u32],
    status: &mut Status,
) {
    let block_rows = rows / 4;
    for (local, words) in out.chunks_exact_mut(words_per_row(cols)).enumerate() {
        let row = first_row + local;
        let plane = 2 * (row / block_rows) as u32;
        let source = &raw[(row % block_rows) * cols..][..cols];
        let (full, tail) = source.as_chunks::<16>();
        let (words, tail_word) = words.split_at_mut(full.len());
        fill_words(words, status, |j| gather16(&full[j], plane));
        fill_words(tail_word, status, |_| {
            tail.iter().enumerate().fold(ZERO_WORD, |word, (s, &byte)| {
                with_code(word, s, u32::from(byte >> plane) & 3)
            })
        });
    }
}

/// The flattened tensor in 128-value blocks of 32 bytes: value j of a block is bits 6 − 2·(j / 32)
/// of byte j mod 32. Blocks run across row ends, so only 16-aligned runs take the fast gather.
fn i2s(raw: &[u8], cols: usize, first_row: usize, out: &mut [u32], status: &mut Status) {
    let position = |e: usize| {
        let j = e % I2S_BLOCK;
        ((e / I2S_BLOCK) * 32 + j % 32, 6 - 2 * (j / 32) as u32)
    };
    for (local, words) in out.chunks_exact_mut(words_per_row(cols)).enumerate() {
        let row = first_row + local;
        fill_words(words, status, |j| {
            let first = 16 * j;
            let count = (cols - first).min(16);
            let start = row * cols + first;
            if count == 16 && start.is_multiple_of(16) {
                let (byte, shift) = position(start);
                gather16(bytes16(raw, byte), shift)
            } else {
                (0..count).fold(ZERO_WORD, |word, s| {
                    let (byte, shift) = position(start + s);
                    with_code(word, s, u32::from(raw[byte] >> shift) & 3)
                })
            }
        });
    }
}

/// Folds a block's d (f16 bits) into the tensor's range, for blocks holding a non-zero value.
fn block_scale(status: &mut Status, block: &[u8], at: usize) {
    let d = u32::from(u16::from_le_bytes([block[at], block[at + 1]]));
    status.scale_min = status.scale_min.min(d);
    status.scale_max = status.scale_max.max(d);
}

/// 256-value blocks of 64 code bytes and d: value 128h + 32l + m is bits 2l of byte 32h + m, so
/// word w of a block is 16 consecutive bytes under one shift.
fn tq2_0(raw: &[u8], out: &mut [u32], status: &mut Status) {
    let blocks = raw.chunks_exact(TQ2_0_BLOCK_BYTES);
    for (block, words) in blocks.zip(out.chunks_exact_mut(16)) {
        fill_words(words, status, |w| {
            let (h, l) = (w / 8, (w / 2) % 4);
            gather16(bytes16(block, 32 * h + 16 * (w % 2)), 2 * l as u32)
        });
        if words.iter().any(|&word| word != ZERO_WORD) {
            block_scale(status, block, 64);
        }
    }
}

/// Digit `n` (most significant first) of each byte value of a TQ1_0 block: the byte holds
/// ⌈c·256/243⌉ of a 5-digit base-3 number c, and multiplying by 3ⁿ (mod 256) brings digit n up.
const TQ1_0_DIGITS: [[u8; 5]; 256] = {
    let mut table = [[0u8; 5]; 256];
    let mut byte = 0;
    while byte < 256 {
        let (mut n, mut power) = (0, 1u32);
        while n < 5 {
            table[byte][n] = ((((byte as u32 * power) & 0xff) * 3) >> 8) as u8;
            power *= 3;
            n += 1;
        }
        byte += 1;
    }
    table
};

/// 256-value blocks of 52 base-3 bytes and d: words 0–9 are digit w/2 of bytes 16·(w % 2) …,
/// words 10–14 digit w − 10 of bytes 32 …, word 15 digit s/4 of byte 48 + s % 4.
fn tq1_0(raw: &[u8], out: &mut [u32], status: &mut Status) {
    let blocks = raw.chunks_exact(TQ1_0_BLOCK_BYTES);
    for (block, words) in blocks.zip(out.chunks_exact_mut(16)) {
        for (w, out) in words.iter_mut().enumerate() {
            *out = (0..16).fold(0, |word, s| {
                let (q, lane) = (s / 4, s % 4);
                let (byte, digit) = match w {
                    0..10 => (16 * (w % 2) + 4 * q + lane, w / 2),
                    10..15 => (32 + 4 * q + lane, w - 10),
                    _ => (48 + lane, q),
                };
                word | (u32::from(TQ1_0_DIGITS[block[byte] as usize][digit]) << (8 * lane + 2 * q))
            });
        }
        if words.iter().any(|&word| word != ZERO_WORD) {
            block_scale(status, block, 52);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::repack::{encode_hf_packed, encode_i2s, encode_tq1_0, encode_tq2_0};
    use crate::reference::ternary::pack_ternary;
    use half::f16;

    fn values(n: usize, seed: u64) -> Vec<i8> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    fn repacked(layout: TernaryLayout, raw: &[u8], rows: usize, cols: usize) -> (Vec<u32>, Status) {
        let mut out = vec![0; rows * words_per_row(cols)];
        let status = repack(layout, raw, rows, cols, &mut out);
        (out, status)
    }

    #[test]
    fn every_layout_matches_the_cpu_packer_on_odd_shapes() {
        let scale = f16::from_f32(0.75);
        for (rows, cols) in [(4, 16), (8, 37), (12, 128), (20, 200), (4, 1)] {
            let t = values(rows * cols, (rows * 1000 + cols) as u64);
            let expected = pack_ternary(&t, rows, cols);
            let (words, status) = repacked(
                TernaryLayout::HfPacked,
                &encode_hf_packed(&t, rows, cols),
                rows,
                cols,
            );
            assert_eq!(words, expected, "HF packed {rows}×{cols}");
            assert_eq!(status.invalid_codes, 0);
            if (rows * cols).is_multiple_of(I2S_BLOCK) {
                let (words, _) = repacked(TernaryLayout::I2S, &encode_i2s(&t, 1.0), rows, cols);
                assert_eq!(words, expected, "I2_S {rows}×{cols}");
            }
        }
        for (rows, cols) in [(1, 256), (3, 512), (5, 768)] {
            let t = values(rows * cols, cols as u64);
            let expected = pack_ternary(&t, rows, cols);
            for (layout, raw) in [
                (TernaryLayout::Tq2_0, encode_tq2_0(&t, scale)),
                (TernaryLayout::Tq1_0, encode_tq1_0(&t, scale)),
            ] {
                let (words, status) = repacked(layout, &raw, rows, cols);
                assert_eq!(words, expected, "{layout:?} {rows}×{cols}");
                assert_eq!(
                    (status.scale_min, status.scale_max),
                    (scale.to_bits().into(), scale.to_bits().into())
                );
            }
        }
    }

    #[test]
    fn code_3_and_differing_block_scales_show_in_the_status() {
        let t = values(8 * 64, 7);
        let mut raw = encode_hf_packed(&t, 8, 64);
        raw[5] |= 0b1100_0000; // row 3·2 + 0, column 5: code 3
        raw[70] |= 0b0000_0011;
        let (_, status) = repacked(TernaryLayout::HfPacked, &raw, 8, 64);
        assert_eq!(status.invalid_codes, 2);

        let t = values(2 * 256, 9);
        let mut raw = encode_tq2_0(&t, f16::from_f32(0.5));
        raw[66 + 64..66 + 66].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        let (_, status) = repacked(TernaryLayout::Tq2_0, &raw, 2, 256);
        assert_eq!(
            (status.scale_min, status.scale_max),
            (
                f16::from_f32(0.25).to_bits().into(),
                f16::from_f32(0.5).to_bits().into()
            )
        );

        let zeros = encode_tq1_0(&[0; 256], f16::from_f32(0.5));
        let (words, status) = repacked(TernaryLayout::Tq1_0, &zeros, 1, 256);
        assert!(words.iter().all(|&w| w == ZERO_WORD));
        assert!(
            status.scale_min > status.scale_max,
            "an all-zero block has no scale"
        );
    }

    #[test]
    fn a_tensor_shared_among_threads_gets_the_words_and_status_of_one_thread() {
        // 2049 rows: an uneven split; enough words for two threads on any machine with two cores.
        let (rows, cols) = (2049, 4096);
        let mut raw = encode_i2s(&values(rows * cols, 3), 1.0);
        raw[rows * cols / 4 - 1] |= 0b11; // code 3 in the last row
        raw[5] |= 0b1100_0000; // and in the first
        let mut threaded = vec![0; rows * words_per_row(cols)];
        let status = repack(TernaryLayout::I2S, &raw, rows, cols, &mut threaded);
        let mut single = vec![0; threaded.len()];
        let one = repack_rows(TernaryLayout::I2S, &raw, rows, cols, 0, &mut single);
        assert!(threaded == single, "the words differ");
        assert_eq!((status.invalid_codes, one.invalid_codes), (2, 2));

        let mut raw = encode_tq2_0(&values(rows * cols, 4), f16::from_f32(0.5));
        let last = raw.len() - 2;
        raw[last..].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        let status = repack(TernaryLayout::Tq2_0, &raw, rows, cols, &mut threaded);
        let one = repack_rows(TernaryLayout::Tq2_0, &raw, rows, cols, 0, &mut single);
        assert!(threaded == single, "the words differ");
        let range = (status.scale_min, status.scale_max);
        assert_eq!(range, (one.scale_min, one.scale_max));
        let (quarter, half) = (f16::from_f32(0.25).to_bits(), f16::from_f32(0.5).to_bits());
        assert_eq!(range, (quarter.into(), half.into()));
    }
}
