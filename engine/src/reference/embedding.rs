//! Embedding lookup and the conversions of stored table elements to f32.

use crate::ops::embedding::FloatDType;

/// Element `index` of a row-major table stored as `bytes` in `dtype`, as f32 (exact).
pub fn table_element(bytes: &[u8], dtype: FloatDType, index: usize) -> f32 {
    match dtype {
        FloatDType::F32 => f32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap()),
        FloatDType::F16 => {
            half::f16::from_le_bytes([bytes[index * 2], bytes[index * 2 + 1]]).to_f32()
        }
        FloatDType::BF16 => {
            half::bf16::from_le_bytes([bytes[index * 2], bytes[index * 2 + 1]]).to_f32()
        }
    }
}

/// The rows `ids` of a [rows, cols] table: the twin of `shaders/embedding.wgsl`, output [T, cols].
pub fn embed(bytes: &[u8], dtype: FloatDType, cols: usize, ids: &[u32]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| (0..cols).map(move |c| table_element(bytes, dtype, id as usize * cols + c)))
        .collect()
}
