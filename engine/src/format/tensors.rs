//! The checked tensor references a [`Checkpoint`](super::checkpoint::Checkpoint) hands out: which
//! file, byte range, layout/dtype and scale hold each projection, norm, embedding and head, and the
//! model's projections and norms by role.

use super::config::ModelConfig;
use crate::layout::{FloatDType, TernaryLayout};
use crate::{Error, Result};

/// A float tensor must hold finite values: one NaN or infinity in a norm, the embedding or the
/// head makes every later logit NaN, and generation would have nothing to choose from.
pub fn check_finite(r: &FloatRef, first_element: usize, bytes: &[u8]) -> Result<()> {
    match r.dtype.first_non_finite(bytes) {
        None => Ok(()),
        Some(i) => {
            let at = first_element + i;
            let (row, col) = (at / r.cols.max(1), at % r.cols.max(1));
            Err(Error::format(
                &r.file,
                &r.name,
                format!(
                    "element [{row}, {col}] is NaN or infinite: the checkpoint is damaged \
                     (re-download it) or was written by a broken converter"
                ),
            ))
        }
    }
}

/// How a projection's bytes encode its weights.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightData {
    /// Ternary codes in a file layout + the per-tensor scale (read as f32 and checked finite and
    /// positive; for I2_S it was read from the blob's tail; for TQ*_0 the per-block f16 scales stay in
    /// the blob and `scale` is None).
    Ternary {
        /// How the codes are packed in the file.
        layout: TernaryLayout,
        /// The per-tensor scale, as stored (see [`ScaleConvention`](super::config::ScaleConvention)).
        scale: Option<f32>,
    },
    /// Float latent weights [out, in] to be absmean-quantized at load (online mode).
    Float {
        /// The stored element type.
        dtype: FloatDType,
    },
}

/// A projection's bytes: `len` bytes at `offset` of `sources[source]`.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightRef {
    /// Index into the checkpoint's `sources`.
    pub source: usize,
    /// Absolute byte offset in that source.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The encoding of the bytes.
    pub data: WeightData,
    /// GGUF `llama` q/k: rows are permuted to the interleaved RoPE layout; the loader un-permutes them.
    pub rope_permuted: bool,
    /// The source's name, for errors.
    pub file: String,
    /// The tensor's name in its file.
    pub name: String,
}

/// A float tensor (norm gain: rows 1; embedding / LM head: [vocab, hidden]).
#[derive(Clone, Debug, PartialEq)]
pub struct FloatRef {
    /// Index into the checkpoint's `sources`.
    pub source: usize,
    /// Absolute byte offset in that source.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// The stored element type.
    pub dtype: FloatDType,
    /// Rows (1 for a norm gain).
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// The source's name, for errors.
    pub file: String,
    /// The tensor's name in its file.
    pub name: String,
}

/// One of a layer's seven linear projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    /// Attention query: [heads·hd, hidden].
    Q,
    /// Attention key: [kv_heads·hd, hidden].
    K,
    /// Attention value: [kv_heads·hd, hidden].
    V,
    /// Attention output: [hidden, heads·hd].
    O,
    /// Feed-forward gate: [intermediate, hidden].
    Gate,
    /// Feed-forward up: [intermediate, hidden].
    Up,
    /// Feed-forward down: [hidden, intermediate].
    Down,
}

impl Projection {
    /// Every projection, in layer order.
    pub const ALL: [Projection; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    pub(crate) fn hf_name(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    pub(crate) fn gguf_name(self) -> &'static str {
        match self {
            Self::Q => "attn_q",
            Self::K => "attn_k",
            Self::V => "attn_v",
            Self::O => "attn_output",
            Self::Gate => "ffn_gate",
            Self::Up => "ffn_up",
            Self::Down => "ffn_down",
        }
    }

    /// (out, in) implied by the config.
    pub(crate) fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (h, attn, kv, ff) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        match self {
            Self::Q => (attn, h),
            Self::K | Self::V => (kv, h),
            Self::O => (h, attn),
            Self::Gate | Self::Up => (ff, h),
            Self::Down => (h, ff),
        }
    }
}

/// One of a layer's RMSNorm gains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormWeight {
    /// Before attention (`input_layernorm`), `[hidden]`.
    InputLn,
    /// Before the feed-forward block (`post_attention_layernorm`), `[hidden]`.
    PostAttnLn,
    /// BitNet sub-norm on the attention output, before `o_proj`, `[heads·hd]`.
    AttnSub,
    /// BitNet sub-norm on act(gate)·up, before `down_proj`, `[intermediate]`.
    FfnSub,
}

impl NormWeight {
    pub(crate) const ALL: [NormWeight; 4] =
        [Self::InputLn, Self::PostAttnLn, Self::AttnSub, Self::FfnSub];

    /// Candidate HF names: 2B-4T spelling first, then the 1bitLLM one.
    pub(crate) fn hf_names(self) -> &'static [&'static str] {
        match self {
            Self::InputLn => &["input_layernorm"],
            Self::PostAttnLn => &["post_attention_layernorm"],
            Self::AttnSub => &["self_attn.attn_sub_norm", "self_attn.inner_attn_ln"],
            Self::FfnSub => &["mlp.ffn_sub_norm", "mlp.ffn_layernorm"],
        }
    }

    pub(crate) fn gguf_name(self) -> &'static str {
        match self {
            Self::InputLn => "attn_norm",
            Self::PostAttnLn => "ffn_norm",
            Self::AttnSub => "attn_sub_norm",
            Self::FfnSub => "ffn_sub_norm",
        }
    }

    pub(crate) fn width(self, c: &ModelConfig) -> usize {
        match self {
            Self::InputLn | Self::PostAttnLn => c.hidden_size,
            Self::AttnSub => c.num_heads * c.head_dim,
            Self::FfnSub => c.intermediate_size,
        }
    }

    pub(crate) fn is_sub(self) -> bool {
        matches!(self, Self::AttnSub | Self::FfnSub)
    }
}

pub(crate) struct Layer {
    pub(crate) projections: Vec<WeightRef>,
    pub(crate) norms: Vec<Option<FloatRef>>,
}
