//! One sequence of a model: a [`SequenceBatch`] of one slot, for a caller that runs one
//! conversation (a [`crate::Session`], the CLI, tests and benchmarks).

use crate::format::checkpoint::Checkpoint;
use crate::format::config::ModelConfig;
use crate::gpu::{Context, KernelProfile, KernelTiming};
use crate::model::batch::SequenceBatch;
use crate::model::forward::{LastLayerActivations, ModelOptions, Output, StepResult, Transformer};
use crate::model::weights::LoadProgress;
use crate::ops::attention::KvCacheDtype;
use crate::Result;

/// One sequence's state on the GPU: its KV cache, its activations and every bind group of its
/// step, made when it is created; the weights are the [`Transformer`]'s, shared. (A batch of one
/// slot: [`SequenceBatch`] runs several sequences together.)
pub struct Sequence {
    batch: SequenceBatch,
    /// The model's architecture (a copy of the [`Transformer`]'s).
    pub config: ModelConfig,
    /// The sizes it was made with (`max_context` capped at the model's positions).
    pub options: ModelOptions,
}

impl Sequence {
    /// Loads a [`Transformer`] and makes one sequence of it: the simplest way to run a checkpoint
    /// when nothing else will share its weights.
    pub async fn load(
        ctx: &Context,
        checkpoint: &Checkpoint,
        options: ModelOptions,
        progress: LoadProgress<'_>,
    ) -> Result<Sequence> {
        let model = Transformer::load(
            ctx,
            checkpoint,
            options.projections,
            options.lm_head,
            progress,
        )
        .await?;
        Sequence::new(
            &model,
            options.max_context,
            options.max_batch,
            options.kv_cache,
        )
        .await
    }

    /// A KV cache of `max_context` positions (capped at the model's `max_position_embeddings`)
    /// and activations for prefill batches of `max_batch` tokens, with every bind group of the
    /// step, the cache storing k and v as `kv_cache`. Sizes past the device's limits fail, naming
    /// the largest that fit.
    pub async fn new(
        model: &Transformer,
        max_context: usize,
        max_batch: usize,
        kv_cache: KvCacheDtype,
    ) -> Result<Sequence> {
        let batch = SequenceBatch::new(model, 1, max_context, max_batch, kv_cache).await?;
        Ok(Sequence {
            config: model.config().clone(),
            options: ModelOptions {
                max_context: batch.max_context(),
                max_batch: batch.max_batch(),
                projections: model.projections(),
                kv_cache,
                lm_head: model.lm_head(),
            },
            batch,
        })
    }

    /// The model whose weights this sequence runs.
    pub fn transformer(&self) -> &Transformer {
        self.batch.transformer()
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.batch.position(0)
    }

    /// Forgets the sequence (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.batch.truncate(0, 0);
    }

    /// Keeps the first `tokens` positions of the cache and forgets the rest.
    pub fn truncate(&mut self, tokens: usize) {
        self.batch.truncate(0, tokens);
    }

    /// Bytes on the GPU that this sequence alone holds: its KV cache, activations and kernel
    /// parameters.
    pub fn state_bytes(&self) -> u64 {
        self.batch.state_bytes()
    }

    /// Bytes on the GPU this sequence uses: the shared weights and its own state.
    pub fn gpu_bytes(&self) -> u64 {
        self.transformer().gpu_bytes() + self.state_bytes()
    }

    /// The last layer's activations of the last step, [T, width] each — for bisecting a parity
    /// failure against the reference's per-op dumps (layer 0 is reached with a one-layer config).
    pub async fn last_layer_activations(&self, tokens: usize) -> Result<LastLayerActivations> {
        self.batch.last_layer_activations(tokens).await
    }

    /// Feeds `ids` at the current position (in batches of at most `max_batch`) and returns `output`
    /// for the last batch.
    pub async fn forward(&mut self, ids: &[u32], output: Output) -> Result<StepResult> {
        self.batch.forward(0, ids, output).await
    }

    /// One decode step of `token` (argmax) whose kernels are timed one by one with `timing` (see
    /// [`crate::gpu::StepRecorder`]): where a decode step's time goes. The step itself runs as usual (the token
    /// enters the cache), only split into a compute pass or a submit per kernel.
    pub async fn profile_decode(
        &mut self,
        token: u32,
        timing: KernelTiming,
    ) -> Result<(u32, KernelProfile)> {
        self.batch.profile_decode(0, token, timing).await
    }
}
