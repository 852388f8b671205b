//! One wrapper per WGSL kernel (`shaders/`): it builds the pipeline once, creates bind groups at load
//! time (never per token) and records dispatches into a compute pass. Each kernel has a CPU twin in
//! [`crate::reference`] that the tests compare against.

pub mod attention;
#[cfg(feature = "internals")]
pub mod bandwidth;
pub mod dense_matvec;
pub mod dense_projection;
pub mod embedding;
pub mod quantize;
pub mod quantize_rows;
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
                "/shaders/",
                $name,
                ".wgsl"
            ))
            $(, "\n", include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/shaders/common/",
                $lib,
                ".wgsl"
            )))*
        )
    };
}
/// Every kernel's WGSL as its wrapper compiles it (the kernel file with its shared declarations
/// appended; natively, so without the browser's `enable subgroups;`). The wrappers take their
/// source from here, so a test that translates these translates exactly what runs.
pub mod sources {
    /// Online quantization, second pass: float latents to packed ternary codes.
    pub const ABSMEAN_QUANTIZE: &str = shader!("absmean_quantize", "float_load");
    /// Online quantization, first pass: Σ|w| of a float tensor in fixed-order partial sums.
    pub const ABSMEAN_SUM: &str = shader!("absmean_sum", "float_load");
    /// Greedy selection: each row's argmax ([`super::select::Argmax`]).
    pub const ARGMAX: &str = shader!("argmax");
    /// Decode attention, second pass: merges the per-chunk softmax states.
    pub const ATTENTION_COMBINE: &str = shader!("attention_combine", "step");
    /// Decode attention, first pass: one query over chunks of the KV cache.
    pub const ATTENTION_DECODE: &str = shader!("attention_decode", "step", "attention");
    /// Prefill attention: T causal queries with an online softmax.
    pub const ATTENTION_PREFILL: &str = shader!("attention_prefill", "step", "attention");
    #[cfg(feature = "internals")]
    /// The memory-bandwidth yardstick's read and copy kernels.
    pub const COPY_BANDWIDTH: &str = shader!("copy_bandwidth");
    /// Dense matvec over one table chunk (the LM head).
    pub const DENSE_MATVEC: &str = shader!("dense_matvec", "step", "row_matvec");
    /// Float-weight projections with the ternary epilogues (the FP16 baseline).
    pub const DENSE_PROJECTION: &str = shader!("dense_projection", "step", "epilogue");
    /// Embedding gather from one table chunk.
    pub const EMBEDDING: &str = shader!("embedding", "step");
    /// Repacks HF packed U8 ternary weights into the engine layout.
    pub const REPACK_HF_PACKED: &str = shader!("repack_hf_packed", "repack");
    /// Repacks GGUF I2_S ternary weights into the engine layout.
    pub const REPACK_I2S: &str = shader!("repack_i2s", "repack");
    /// Repacks GGUF TQ1_0 ternary weights into the engine layout.
    pub const REPACK_TQ1_0: &str = shader!("repack_tq1_0", "repack");
    /// Repacks GGUF TQ2_0 ternary weights into the engine layout.
    pub const REPACK_TQ2_0: &str = shader!("repack_tq2_0", "repack");
    /// Int8 matvec over one chunk of a per-row int8 table (the int8 LM head).
    pub const INT8_MATVEC: &str = shader!("int8_matvec", "step", "row_matvec");
    /// Per-row absmax int8 quantization of one float table chunk (the int8 LM head, at load).
    pub const QUANTIZE_ROWS_INT8: &str = shader!("quantize_rows_int8", "float_load");
    /// Plain f32 RMSNorm (the final norm).
    pub const RMSNORM: &str = shader!("rmsnorm");
    /// RMSNorm fused with per-token absmax int8 quantization.
    pub const RMSNORM_QUANT: &str = shader!("rmsnorm_quant");
    /// RoPE on q and k fused with the KV-cache append.
    pub const ROPE: &str = shader!("rope", "step");
    /// The k highest logits of each row ([`super::select::TopK`]).
    pub const TOPK: &str = shader!("topk");
    /// Ternary projection for decode, without subgroups.
    pub const TERNARY_MATVEC: &str = shader!("ternary_matvec", "step", "epilogue");
    /// The matmul reuses the matvec's bindings and row helpers.
    pub const TERNARY_MATMUL: &str = concat!(
        shader!("ternary_matvec", "step", "epilogue"),
        shader!("ternary_matmul")
    );
    /// Needs the `SUBGROUP` feature; prepended to the matvec, whose bindings it uses.
    pub const SUBGROUP_TERNARY_MATVEC: &str = concat!(
        shader!("subgroup/ternary_matvec"),
        shader!("ternary_matvec", "step", "epilogue")
    );

    /// `(name, source)` of every kernel above.
    #[cfg(feature = "internals")]
    pub const ALL: &[(&str, &str)] = &[
        ("absmean_quantize", ABSMEAN_QUANTIZE),
        ("absmean_sum", ABSMEAN_SUM),
        ("argmax", ARGMAX),
        ("attention_combine", ATTENTION_COMBINE),
        ("attention_decode", ATTENTION_DECODE),
        ("attention_prefill", ATTENTION_PREFILL),
        ("copy_bandwidth", COPY_BANDWIDTH),
        ("dense_matvec", DENSE_MATVEC),
        ("dense_projection", DENSE_PROJECTION),
        ("embedding", EMBEDDING),
        ("int8_matvec", INT8_MATVEC),
        ("quantize_rows_int8", QUANTIZE_ROWS_INT8),
        ("repack_hf_packed", REPACK_HF_PACKED),
        ("repack_i2s", REPACK_I2S),
        ("repack_tq1_0", REPACK_TQ1_0),
        ("repack_tq2_0", REPACK_TQ2_0),
        ("rmsnorm", RMSNORM),
        ("rmsnorm_quant", RMSNORM_QUANT),
        ("rope", ROPE),
        ("topk", TOPK),
        ("ternary_matvec", TERNARY_MATVEC),
        ("ternary_matmul", TERNARY_MATMUL),
        ("subgroup/ternary_matvec", SUBGROUP_TERNARY_MATVEC),
    ];
}

impl crate::layout::FloatDType {
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
/// WGSL twin: `struct StepParams { pos: u32, tokens: u32, row: u32, _pad: u32 }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Position of this step's first token in the sequence (and in the KV cache).
    pub pos: u32,
    /// Tokens processed in this step (T).
    pub tokens: u32,
    /// Row of the step's first token in the activation buffers: 0 for a lone sequence; a batched
    /// decode step gives each sequence's RoPE and attention the row of its slot.
    pub row: u32,
    /// Zero: pads the uniform to 16 bytes.
    pub _pad: u32,
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
