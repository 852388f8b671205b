//! CPU f32 twins of every GPU kernel: the test oracle inside Rust. Each function computes what its WGSL
//! kernel computes, with the same rounding (`round_ties_even`, like WGSL `round`) and integer
//! accumulation where the kernel is integer, so tests can demand equality on integer paths and tight
//! tolerances on float paths.

pub mod attention;
pub mod bandwidth;
pub mod dense;
pub mod embedding;
pub mod norm;
pub mod quantize;
pub mod quantize_rows;
pub mod repack;
pub mod rope;
pub mod select;
pub mod ternary;
pub mod ternary_ops;
