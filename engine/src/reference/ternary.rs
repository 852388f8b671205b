//! The engine's ternary weight layout and its CPU packer.
//!
//! Row n of W[N, K] is `words_per_row(K)` u32 words; word j holds k = 16j … 16j+15 as 2-bit codes
//! (code = t + 1 ∈ {0, 1, 2}); the code of k = 16j + 4s + b sits at bit 8b + 2s, so
//! `(word >> 2s) & 0x03030303` gives the codes of k = 16j+4s … 16j+4s+3 as the four bytes that
//! `dot4I8Packed` multiplies with one word of packed int8 activations. K is padded with code 1 (t = 0).

pub use crate::layout::{code_shift, words_per_row};

/// Packs ternary values t ∈ {−1, 0, 1} of a row-major [rows, k] matrix into the engine layout.
pub fn pack_ternary(t: &[i8], rows: usize, k: usize) -> Vec<u32> {
    assert_eq!(
        t.len(),
        rows * k,
        "pack_ternary: {rows}×{k} needs {} values",
        rows * k
    );
    let words = words_per_row(k);
    // Padding columns hold code 1 (t = 0) in every 2-bit slot.
    let mut packed = vec![0x5555_5555u32; rows * words];
    for (r, row) in t.chunks_exact(k).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            debug_assert!((-1..=1).contains(&v), "ternary value {v} at ({r}, {c})");
            let word = &mut packed[r * words + c / 16];
            let shift = code_shift(c);
            *word = (*word & !(3 << shift)) | (((v + 1) as u32) << shift);
        }
    }
    packed
}

/// Inverse of [`pack_ternary`].
pub fn unpack_ternary(packed: &[u32], rows: usize, k: usize) -> Vec<i8> {
    let words = words_per_row(k);
    (0..rows)
        .flat_map(|r| {
            (0..k).map(move |c| ((packed[r * words + c / 16] >> code_shift(c)) & 3) as i8 - 1)
        })
        .collect()
}
