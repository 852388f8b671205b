//! The forward pass: a [`Transformer`] owns the weights and pipelines, loaded once and shared by
//! every sequence ([`super::SequenceBatch`] runs the steps, [`super::Sequence`] is one of one), and
//! the types a step is asked and answers with. A step writes the token ids and small uniforms
//! (positions, token counts), records every kernel in order into one command encoder (the layers,
//! then the LM head and the token selection), submits once and reads back only what the caller
//! asked for (a token id, k candidates or logits).

use std::sync::Arc;

use crate::format::checkpoint::Checkpoint;
use crate::format::config::ModelConfig;
use crate::gpu::{read_buffer, Context, GpuBuffer};
use crate::model::graph::Kernels;
use crate::model::limits;
use crate::model::weights::{self, LmHead, LoadProgress, ProjectionKind, Weights};
use crate::ops::attention::KvCacheDtype;
use crate::ops::select::Candidate;
use crate::Result;

/// Sizes chosen at load.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// KV-cache length in tokens (capped at the model's `max_position_embeddings`). A cache larger
    /// than the device's binding limit fails the load, naming the largest that fits
    /// ([`super::limits::largest_context`]).
    pub max_context: usize,
    /// Tokens per prefill batch; longer prompts run in several batches. A batch whose buffers
    /// exceed the device's limits fails the load, naming the largest that fits
    /// ([`super::limits::largest_batch`]).
    pub max_batch: usize,
    /// Ternary (BitNet b1.58) or dense projections (the baseline; needs float latent weights).
    pub projections: ProjectionKind,
    /// How the KV cache stores k and v: f16 (the default: half the memory and attention reads,
    /// each value rounded to f16 once) or f32 (exact).
    pub kv_cache: KvCacheDtype,
    /// The LM head as stored (default) or as int8 made at load ([`LmHead`]).
    pub lm_head: LmHead,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_context: 4096,
            max_batch: 128,
            projections: ProjectionKind::Ternary,
            kv_cache: KvCacheDtype::default(),
            lm_head: LmHead::Stored,
        }
    }
}

/// What a step reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The argmax token of the last position (4 bytes back).
    Argmax,
    /// The k highest logits of the last position, sorted descending (k ≤ 64).
    TopK(usize),
    /// All logits of the last position.
    LastLogits,
    /// Logits of every position of the step, [T, vocab].
    AllLogits,
}

/// What a step returns, matching the requested [`Output`].
#[derive(Clone, Debug, PartialEq)]
pub enum StepResult {
    /// The argmax token id ([`Output::Argmax`]).
    Token(u32),
    /// The top-k candidates, highest logit first ([`Output::TopK`]).
    Candidates(Vec<Candidate>),
    /// Logits, `[vocab]` for [`Output::LastLogits`] or `[T, vocab]` for [`Output::AllLogits`].
    Logits(Vec<f32>),
}

/// See [`super::Sequence::last_layer_activations`].
pub struct LastLayerActivations {
    /// Attention output before the sub-norm and o_proj.
    pub attention: Vec<f32>,
    /// act(gate)·up, before the sub-norm and down_proj.
    pub ffn_activation: Vec<f32>,
    /// The residual stream after the last layer.
    pub residual: Vec<f32>,
    /// The residual stream after the final RMSNorm (the LM head's input).
    pub final_norm: Vec<f32>,
}

/// A model's weights on the GPU and the pipelines that run them, loaded once and shared by every
/// [`super::Sequence`] of the model: a clone is another handle on the same device memory.
#[derive(Clone)]
pub struct Transformer(Arc<Loaded>);

struct Loaded {
    ctx: Context,
    config: ModelConfig,
    projections: ProjectionKind,
    lm_head: LmHead,
    weights: Weights,
    kernels: Kernels,
}

impl Transformer {
    /// Uploads `checkpoint`'s weights (`projections` says ternary or the dense baseline, `lm_head`
    /// the head's format) and builds every pipeline.
    // In the browser wgpu's handles are neither Send nor Sync, and there is one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub async fn load(
        ctx: &Context,
        checkpoint: &Checkpoint,
        projections: ProjectionKind,
        lm_head: LmHead,
        progress: LoadProgress<'_>,
    ) -> Result<Transformer> {
        let config = checkpoint.config.clone();
        let on_adapter = |exceeded: limits::LimitExceeded| exceeded.into_error(&ctx.adapter_name());
        limits::check_kernels(&ctx.limits).map_err(on_adapter)?;
        limits::check_weights(&ctx.limits, &config).map_err(on_adapter)?;
        let weights = weights::load(ctx, checkpoint, projections, lm_head, progress).await?;
        let kernels = Kernels::new(ctx, &config, &weights)?;
        // Pipelines report validation errors asynchronously: surface them here.
        ctx.wait().await?;
        Ok(Transformer(Arc::new(Loaded {
            ctx: ctx.clone(),
            config,
            projections,
            lm_head,
            weights,
            kernels,
        })))
    }

    /// The architecture the weights were loaded for.
    pub fn config(&self) -> &ModelConfig {
        &self.0.config
    }

    /// The device the weights live on.
    pub fn context(&self) -> &Context {
        &self.0.ctx
    }

    /// Ternary projections, or the dense baseline.
    pub fn projections(&self) -> ProjectionKind {
        self.0.projections
    }

    /// The LM head's format.
    pub fn lm_head(&self) -> LmHead {
        self.0.lm_head
    }

    /// Bytes of the LM head's table on the GPU (the embedding's when tied).
    pub fn lm_head_bytes(&self) -> u64 {
        self.0.weights.head_bytes()
    }

    /// Bytes of the weights on the GPU (once, however many sequences share them).
    pub fn gpu_bytes(&self) -> u64 {
        self.0.weights.gpu_bytes()
    }

    pub(super) fn weights(&self) -> &Weights {
        &self.0.weights
    }

    pub(super) fn kernels(&self) -> &Kernels {
        &self.0.kernels
    }
}

pub(super) async fn read_f32(ctx: &Context, buffer: &GpuBuffer, bytes: u64) -> Result<Vec<f32>> {
    Ok(bytemuck::pod_collect_to_vec(
        &read_buffer(ctx, &buffer.buffer, 0, bytes).await?,
    ))
}
