//! Ternary weight file layouts: CPU decoders, the twins of the `repack_*` kernels,
//! and encoders from ternary values into each layout (test inputs and fixture writers).
//!
//! Every layout stores code = t + 1 ∈ {0, 1, 2}, the same code the engine layout uses; only the
//! position of each code differs. Decoders return the ternary values t (row-major [rows, cols]) and
//! reject code 3, which none of the writers produce.

use half::f16;

use crate::{Error, Result};

pub use crate::layout::{
    I2S_BLOCK, I2S_TAIL_BYTES, TQ1_0_BLOCK_BYTES, TQ2_0_BLOCK_BYTES, TQ_BLOCK,
};

fn code(t: i8) -> u8 {
    assert!((-1..=1).contains(&t), "ternary value {t} out of range");
    (t + 1) as u8
}

fn ternary(code: u8, layout: &str, index: usize) -> Result<i8> {
    if code > 2 {
        return Err(Error::Invalid(format!(
            "{layout}: invalid ternary code 3 at element {index}"
        )));
    }
    Ok(code as i8 - 1)
}

// ---- HF packed (microsoft/bitnet-b1.58-2B-4T): U8 [rows/4, cols], 4 output-axis blocks of rows/4 ----

/// `packed[r, k] = Σ_i code[i·rows/4 + r, k] << 2i`.
pub fn encode_hf_packed(t: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(
        rows.is_multiple_of(4) && t.len() == rows * cols,
        "HF packed: {rows}×{cols} (rows must be a multiple of 4)"
    );
    let block_rows = rows / 4;
    let mut packed = vec![0u8; block_rows * cols];
    for (n, row) in t.chunks_exact(cols).enumerate() {
        let (plane, r) = (n / block_rows, n % block_rows);
        for (k, &v) in row.iter().enumerate() {
            packed[r * cols + k] |= code(v) << (2 * plane);
        }
    }
    packed
}

/// `t[i·rows/4 + r, k] = ((packed[r, k] >> 2i) & 3) − 1`.
pub fn decode_hf_packed(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>> {
    let block_rows = rows / 4;
    (0..rows * cols)
        .map(|e| {
            let (n, k) = (e / cols, e % cols);
            let byte = packed[(n % block_rows) * cols + k];
            ternary((byte >> (2 * (n / block_rows))) & 3, "HF packed", e)
        })
        .collect()
}

// ---- I2_S (bitnet.cpp, ggml type 36): the flattened tensor in 128-value blocks of 32 bytes ----

fn i2s_position(e: usize) -> (usize, u32) {
    let (block, j) = (e / I2S_BLOCK, e % I2S_BLOCK);
    (block * 32 + j % 32, 6 - 2 * (j / 32) as u32)
}

/// The blob bitnet.cpp writes: n/4 code bytes, the f32 scale, zero padding to 32 bytes.
pub fn encode_i2s(t: &[i8], scale: f32) -> Vec<u8> {
    let n = t.len();
    assert!(
        n.is_multiple_of(I2S_BLOCK),
        "I2_S: {n} values is not a multiple of {I2S_BLOCK}"
    );
    let mut blob = vec![0u8; n / 4 + I2S_TAIL_BYTES];
    for (e, &v) in t.iter().enumerate() {
        let (byte, shift) = i2s_position(e);
        blob[byte] |= code(v) << shift;
    }
    blob[n / 4..n / 4 + 4].copy_from_slice(&scale.to_le_bytes());
    blob
}

/// The ternary values of an I2_S tensor of `n` values (the scale is read by [`i2s_scale`]).
pub fn decode_i2s(blob: &[u8], n: usize) -> Result<Vec<i8>> {
    (0..n)
        .map(|e| {
            let (byte, shift) = i2s_position(e);
            ternary((blob[byte] >> shift) & 3, "I2_S", e)
        })
        .collect()
}

/// The per-tensor multiplier stored after the `n / 4` code bytes of an I2_S tensor.
pub fn i2s_scale(blob: &[u8], n: usize) -> Result<f32> {
    let at = n / 4;
    let bytes = blob.get(at..at + 4).ok_or_else(|| {
        Error::Invalid(format!(
            "I2_S: a {n}-value tensor needs {} bytes (codes + scale), got {}",
            at + 4,
            blob.len()
        ))
    })?;
    Ok(f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

// ---- TQ2_0 / TQ1_0 (llama.cpp, types 35 / 34): 256-value blocks, each with its own f16 d ----

/// Keeps the block scale that the whole tensor must share. Blocks whose values are all zero carry
/// no information about the scale (llama.cpp writes d = 0 there) and are skipped.
struct SharedScale {
    layout: &'static str,
    scale: Option<f16>,
}

impl SharedScale {
    fn add(&mut self, block: usize, codes: &[u8], d: f16) -> Result<()> {
        if codes.iter().all(|&c| c == 1) {
            return Ok(());
        }
        match self.scale {
            Some(s) if s.to_bits() != d.to_bits() => Err(Error::Invalid(format!(
                "{}: block {block} has scale {d} but earlier blocks have {s}: the engine needs one scale per tensor",
                self.layout
            ))),
            _ => {
                self.scale = Some(d);
                Ok(())
            }
        }
    }

    /// The shared scale; an all-zero tensor gets 0 (any scale gives the same weights).
    fn get(&self) -> f32 {
        self.scale.map_or(0.0, f16::to_f32)
    }
}

fn check_blocks(len: usize, n: usize, block_bytes: usize, layout: &str) -> Result<()> {
    if !n.is_multiple_of(TQ_BLOCK) || len < n / TQ_BLOCK * block_bytes {
        return Err(Error::Invalid(format!(
            "{layout}: {n} values need a multiple of {TQ_BLOCK} and {} bytes, got {len} bytes",
            n / TQ_BLOCK * block_bytes
        )));
    }
    Ok(())
}

/// Byte and bit shift of value v (0..256) of a TQ2_0 block: value 128h + 32l + m is bits 2l..2l+1
/// of qs[32h + m].
fn tq2_0_position(v: usize) -> (usize, u32) {
    let (h, l, m) = (v / 128, (v % 128) / 32, v % 32);
    (32 * h + m, 2 * l as u32)
}

/// Every non-zero block gets d = `scale`; all-zero blocks get d = 0, as llama.cpp writes them.
pub fn encode_tq2_0(t: &[i8], scale: f16) -> Vec<u8> {
    assert!(
        t.len().is_multiple_of(TQ_BLOCK),
        "TQ2_0: {} values is not a multiple of {TQ_BLOCK}",
        t.len()
    );
    let mut out = Vec::with_capacity(t.len() / TQ_BLOCK * TQ2_0_BLOCK_BYTES);
    for block in t.chunks_exact(TQ_BLOCK) {
        let mut qs = [0u8; 64];
        for (v, &x) in block.iter().enumerate() {
            let (byte, shift) = tq2_0_position(v);
            qs[byte] |= code(x) << shift;
        }
        let d = if block.iter().all(|&x| x == 0) {
            f16::ZERO
        } else {
            scale
        };
        out.extend_from_slice(&qs);
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

/// The ternary values of `n` TQ2_0 values and the scale every non-zero block shares.
pub fn decode_tq2_0(bytes: &[u8], n: usize) -> Result<(Vec<i8>, f32)> {
    check_blocks(bytes.len(), n, TQ2_0_BLOCK_BYTES, "TQ2_0")?;
    let mut values = Vec::with_capacity(n);
    let mut shared = SharedScale {
        layout: "TQ2_0",
        scale: None,
    };
    for (b, block) in bytes
        .chunks_exact(TQ2_0_BLOCK_BYTES)
        .take(n / TQ_BLOCK)
        .enumerate()
    {
        let codes: Vec<u8> = (0..TQ_BLOCK)
            .map(|v| {
                let (byte, shift) = tq2_0_position(v);
                (block[byte] >> shift) & 3
            })
            .collect();
        shared.add(b, &codes, f16::from_le_bytes([block[64], block[65]]))?;
        for (v, &c) in codes.iter().enumerate() {
            values.push(ternary(c, "TQ2_0", b * TQ_BLOCK + v)?);
        }
    }
    Ok((values, shared.get()))
}

/// Byte and base-3 digit (0 = most significant) of value v (0..256) of a TQ1_0 block:
/// qs[0..32] hold values 32n + m, qs[32..48] hold 160 + 16n + m, qh[0..4] hold 240 + 4n + j.
fn tq1_0_position(v: usize) -> (usize, u32) {
    match v {
        0..160 => (v % 32, (v / 32) as u32),
        160..240 => (32 + (v - 160) % 16, ((v - 160) / 16) as u32),
        _ => (48 + (v - 240) % 4, ((v - 240) / 4) as u32),
    }
}

/// Digit `n` (most significant first) of a byte holding ⌈c·256/243⌉ for a 5-digit base-3 number c.
fn tq1_0_digit(byte: u8, n: u32) -> u8 {
    let q = byte.wrapping_mul(3u8.pow(n));
    ((u16::from(q) * 3) >> 8) as u8
}

/// Every non-zero block gets d = `scale`; all-zero blocks get d = 0, as llama.cpp writes them.
pub fn encode_tq1_0(t: &[i8], scale: f16) -> Vec<u8> {
    assert!(
        t.len().is_multiple_of(TQ_BLOCK),
        "TQ1_0: {} values is not a multiple of {TQ_BLOCK}",
        t.len()
    );
    let mut out = Vec::with_capacity(t.len() / TQ_BLOCK * TQ1_0_BLOCK_BYTES);
    for block in t.chunks_exact(TQ_BLOCK) {
        // Each byte holds 5 digits (qh bytes 4, the fifth digit is 0), first digit most significant.
        let mut numbers = [0u16; 52];
        for (v, &x) in block.iter().enumerate() {
            let (byte, digit) = tq1_0_position(v);
            numbers[byte] += u16::from(code(x)) * 3u16.pow(4 - digit);
        }
        // Pre-scale to a byte so that multiplying by 3ⁿ (mod 256) brings digit n to the top.
        out.extend(numbers.iter().map(|&c| (c * 256).div_ceil(243) as u8));
        let d = if block.iter().all(|&x| x == 0) {
            f16::ZERO
        } else {
            scale
        };
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

/// The ternary values of `n` TQ1_0 values and the scale every non-zero block shares.
pub fn decode_tq1_0(bytes: &[u8], n: usize) -> Result<(Vec<i8>, f32)> {
    check_blocks(bytes.len(), n, TQ1_0_BLOCK_BYTES, "TQ1_0")?;
    let mut values = Vec::with_capacity(n);
    let mut shared = SharedScale {
        layout: "TQ1_0",
        scale: None,
    };
    for (b, block) in bytes
        .chunks_exact(TQ1_0_BLOCK_BYTES)
        .take(n / TQ_BLOCK)
        .enumerate()
    {
        let codes: Vec<u8> = (0..TQ_BLOCK)
            .map(|v| {
                let (byte, digit) = tq1_0_position(v);
                tq1_0_digit(block[byte], digit)
            })
            .collect();
        shared.add(b, &codes, f16::from_le_bytes([block[52], block[53]]))?;
        values.extend(codes.iter().map(|&c| c as i8 - 1));
    }
    Ok((values, shared.get()))
}
