//! One wrapper per WGSL kernel (`shaders/`): it builds the pipeline once, creates bind groups at load
//! time (never per token) and records dispatches into a compute pass. Each kernel has a CPU twin in
//! [`crate::reference`] that the tests compare against.

pub mod attention;
pub mod bandwidth;
pub mod dense_matvec;
pub mod dense_projection;
pub mod embedding;
pub mod quantize;
pub mod repack;
pub mod rmsnorm;
pub mod rmsnorm_quant;
pub mod rope;
pub mod select;
pub mod ternary_matmul;
pub mod ternary_matvec;

/// The WGSL source of `shaders/<name>.wgsl`, embedded at compile time, followed by the shared
/// declarations it uses from `shaders/common/<lib>.wgsl` (WGSL resolves module-scope names in any
/// order, so a kernel may use what is appended after it).
macro_rules! shader {
    ($name:literal $(, $lib:literal)*) => {
        concat!(
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shaders/",
                $name,
                ".wgsl"
            ))
            $(, "\n", include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shaders/common/",
                $lib,
                ".wgsl"
            )))*
        )
    };
}
pub(crate) use shader;

impl crate::format::checkpoint::FloatDType {
    /// The `DTYPE` override constant of the kernels that read raw float tensors (tables, quantizer).
    pub(crate) fn shader_code(self) -> f64 {
        match self {
            Self::F32 => 0.0,
            Self::F16 => 1.0,
            Self::BF16 => 2.0,
        }
    }
}

/// Per-token statistics written by the activation quantizer, read by the ternary kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActStats {
    /// max|y| / 127: the factor that turns the integer dot product back into activation units.
    pub inv_scale: f32,
    /// Σ q over the token's int8 activations.
    pub sum: i32,
}

/// The per-step uniform the model writes before each submit, so bind groups stay fixed across tokens.
/// WGSL twin: `struct StepParams { pos: u32, tokens: u32, _pad0: u32, _pad1: u32 }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Position of this step's first token in the sequence (and in the KV cache).
    pub pos: u32,
    /// Tokens processed in this step (T).
    pub tokens: u32,
    pub _pad: [u32; 2],
}

/// K padded to a multiple of 16 (one u32 of ternary codes), in u32 words of packed int8 activations.
pub fn padded_activation_words(k: usize) -> usize {
    k.next_multiple_of(16) / 4
}

/// Workgroups [`dispatch_grid`] puts along x: WebGPU's guaranteed `maxComputeWorkgroupsPerDimension`
/// (`model::limits` checks the device has it).
pub const MAX_DISPATCH_X: u32 = 65535;

/// Spreads dispatches larger than [`MAX_DISPATCH_X`] workgroups over y.
pub fn dispatch_grid(workgroups: u32) -> (u32, u32) {
    if workgroups <= MAX_DISPATCH_X {
        (workgroups, 1)
    } else {
        (MAX_DISPATCH_X, workgroups.div_ceil(MAX_DISPATCH_X))
    }
}
