//! What the GPU kernels, their Rust wrappers, the loader and the CPU twins (`reference`) agree on:
//! the engine's packed ternary word layout, the file layouts and dtypes the repack and table kernels
//! read, the bandwidth kernel's checksum and RoPE's frequencies. A leaf: it imports nothing from the
//! crate, so `ops` (kernels), `format` (files) and `reference` (test oracle) can all depend on it
//! without depending on each other (ARCHITECTURE.md, "Module layers").

// ---- The engine's ternary weight layout ----
//
// Row n of W[N, K] is `words_per_row(K)` u32 words; word j holds k = 16j … 16j+15 as 2-bit codes
// (code = t + 1 ∈ {0, 1, 2}); the code of k = 16j + 4s + b sits at bit 8b + 2s (CPU packer:
// `reference::ternary::pack_ternary`). K is padded with code 1 (t = 0).

/// u32 words per packed row.
pub fn words_per_row(k: usize) -> usize {
    k.div_ceil(16)
}

/// Bit position of column `k` within its word.
#[cfg(any(test, feature = "internals"))]
pub fn code_shift(k: usize) -> u32 {
    let within = k % 16;
    (8 * (within % 4) + 2 * (within / 4)) as u32
}

// ---- File layouts and dtypes ----

/// File layout of ternary codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryLayout {
    /// U8 [out/4, in]; the output axis is split into 4 blocks of out/4 rows, block i in bits 2i.
    HfPacked,
    /// bitnet.cpp I2_S: 128-value blocks along the input axis, MSB first, then one f32 scale.
    I2S,
    /// ggml TQ2_0: 256-value blocks of 2-bit codes and an f16 scale, 66 bytes each.
    Tq2_0,
    /// ggml TQ1_0: 256-value blocks of base-3 packed codes and an f16 scale, 54 bytes each.
    Tq1_0,
}

/// Element type of a float tensor in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl FloatDType {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// The little-endian values of a raw tensor of this dtype as f32 (exact for every dtype).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Self::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Self::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// The element index of the first NaN or infinity in `bytes` (little-endian), if any: all
    /// exponent bits set. One pass over the bytes that loading reads anyway.
    pub fn first_non_finite(self, bytes: &[u8]) -> Option<usize> {
        match self {
            Self::F32 => first_where(bytes, |b: [u8; 4]| {
                u32::from_le_bytes(b) & 0x7f80_0000 == 0x7f80_0000
            }),
            Self::F16 => first_where(bytes, |b: [u8; 2]| u16::from_le_bytes(b) & 0x7c00 == 0x7c00),
            Self::BF16 => first_where(bytes, |b: [u8; 2]| u16::from_le_bytes(b) & 0x7f80 == 0x7f80),
        }
    }
}

/// The index of the first `N`-byte element where `test` holds. Runs of elements are tested
/// without an early exit, which the compiler turns into vector code: the check runs at memory
/// speed over a gigabyte-sized table.
fn first_where<const N: usize>(bytes: &[u8], test: impl Fn([u8; N]) -> bool) -> Option<usize> {
    const RUN: usize = 512;
    let (elements, _) = bytes.as_chunks::<N>();
    elements.chunks(RUN).enumerate().find_map(|(run, items)| {
        let any = items.iter().fold(false, |any, &item| any | test(item));
        any.then(|| run * RUN + items.iter().position(|&item| test(item)).expect("found"))
    })
}

/// Values per I2_S block (bitnet.cpp x86 layout, `QK_I2_S`).
pub const I2S_BLOCK: usize = 128;
/// Bytes after an I2_S tensor's codes: one f32 scale, padded to 32 bytes.
#[cfg(any(test, feature = "internals"))]
pub const I2S_TAIL_BYTES: usize = 32;
/// Values per TQ1_0 / TQ2_0 block (`QK_K`).
pub const TQ_BLOCK: usize = 256;
/// `qs[64]` then an f16 d.
pub const TQ2_0_BLOCK_BYTES: usize = 66;
/// `qs[48]`, `qh[4]` then an f16 d.
pub const TQ1_0_BLOCK_BYTES: usize = 54;

// ---- Kernel twins the host computes too: the bandwidth check's checksum, RoPE's frequencies ----

/// The wrapping sum of every u32 word: what the read kernel's per-invocation sums add up to.
#[cfg(any(test, feature = "internals"))]
pub fn checksum(words: &[u32]) -> u32 {
    words.iter().fold(0u32, |sum, &w| sum.wrapping_add(w))
}

/// `inv_freq[j] = 1 / θ^(2j / head_dim)` in f32, as Hugging Face computes it.
pub fn inv_freq(theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|j| 1.0 / theta.powf((2 * j) as f32 / head_dim as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::FloatDType;

    #[test]
    fn the_first_nan_or_infinity_is_found_wherever_it_lies() {
        let n = 1500; // three runs of 512 elements, the last one short
        for dtype in [FloatDType::F32, FloatDType::F16, FloatDType::BF16] {
            let encode = |values: &[f32]| -> Vec<u8> {
                values
                    .iter()
                    .flat_map(|&v| match dtype {
                        FloatDType::F32 => v.to_le_bytes().to_vec(),
                        FloatDType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                        FloatDType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                    })
                    .collect()
            };
            // The largest finite values and subnormals pass.
            let mut values: Vec<f32> = (0..n).map(|i| (i as f32 - 700.0) * 0.37).collect();
            values[3] = if dtype == FloatDType::F16 {
                65504.0
            } else {
                3.0e38
            };
            values[4] = -1e-40;
            assert_eq!(dtype.first_non_finite(&encode(&values)), None, "{dtype:?}");
            for (at, bad) in [
                (0, f32::NAN),
                (511, f32::INFINITY),
                (512, f32::NEG_INFINITY),
                (1499, f32::NAN),
            ] {
                let mut values = values.clone();
                values[at] = bad;
                values[(at + 700) % n] = f32::NAN; // a later or earlier one: the first is named
                let first = at.min((at + 700) % n);
                assert_eq!(
                    dtype.first_non_finite(&encode(&values)),
                    Some(first),
                    "{dtype:?} {bad} at {at}"
                );
            }
        }
    }
}
