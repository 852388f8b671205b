//! The forward pass: a [`Transformer`] owns the weights and pipelines, loaded once; a [`Sequence`]
//! owns one sequence's KV cache, activations and the bound kernels of its step
//! ([`super::graph`]), all made when it opens. A step writes the token ids and a small uniform
//! (position, token count), records every kernel in order into one command encoder (the layers,
//! then the LM head and the token selection), submits once and reads back only what the caller
//! asked for (a token id, k candidates or logits).

use std::sync::Arc;

use crate::error::NO_FINITE_LOGIT;
use crate::format::checkpoint::Checkpoint;
use crate::format::config::ModelConfig;
use crate::gpu::{
    read_buffer, AllocationCount, BufferUsage, Context, GpuBuffer, KernelProfile, KernelTiming,
    StepRecorder,
};
use crate::model::graph::{bitnet_step, Activations, GraphBuilder, Kernels, KvCache, StepGraph};
use crate::model::limits;
use crate::model::weights::{self, LoadProgress, ProjectionKind, Weights};
use crate::ops::attention::AttentionShape;
use crate::ops::dense_matvec::DenseMatvecBinding;
use crate::ops::select::{Candidate, SelectBinding, MAX_TOP_K};
use crate::ops::{padded_activation_words, ActStats, StepParams};
use crate::{Error, Result};

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
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_context: 4096,
            max_batch: 128,
            projections: ProjectionKind::Ternary,
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

/// See [`Sequence::last_layer_activations`].
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
/// [`Sequence`] of the model: a clone is another handle on the same device memory.
#[derive(Clone)]
pub struct Transformer(Arc<Loaded>);

struct Loaded {
    ctx: Context,
    config: ModelConfig,
    projections: ProjectionKind,
    weights: Weights,
    kernels: Kernels,
}

impl Transformer {
    /// Uploads `checkpoint`'s weights (`projections` says ternary or the dense baseline) and builds
    /// every pipeline.
    // In the browser wgpu's handles are neither Send nor Sync, and there is one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub async fn load(
        ctx: &Context,
        checkpoint: &Checkpoint,
        projections: ProjectionKind,
        progress: LoadProgress<'_>,
    ) -> Result<Transformer> {
        let config = checkpoint.config.clone();
        let on_adapter = |exceeded: limits::LimitExceeded| exceeded.into_error(&ctx.adapter_name());
        limits::check_kernels(&ctx.limits).map_err(on_adapter)?;
        limits::check_weights(&ctx.limits, &config).map_err(on_adapter)?;
        let weights = weights::load(ctx, checkpoint, projections, progress).await?;
        let kernels = Kernels::new(ctx, &config, &weights)?;
        // Pipelines report validation errors asynchronously: surface them here.
        ctx.wait().await?;
        Ok(Transformer(Arc::new(Loaded {
            ctx: ctx.clone(),
            config,
            projections,
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

    /// Bytes of the weights on the GPU (once, however many sequences share them).
    pub fn gpu_bytes(&self) -> u64 {
        self.0.weights.gpu_bytes()
    }
}

/// One sequence's state on the GPU: its KV cache, its activations and every bind group of its
/// step, made when it is created; the weights are the [`Transformer`]'s, shared.
pub struct Sequence {
    model: Transformer,
    /// The model's architecture (a copy of the [`Transformer`]'s).
    pub config: ModelConfig,
    /// The sizes it was made with (`max_context` capped at the model's positions).
    pub options: ModelOptions,
    /// Each layer's K and V caches, kept for as long as the bind groups that use them.
    _cache: Vec<KvCache>,
    act: Activations,
    /// The bound kernels of the step up to the final norm ([`bitnet_step`]).
    graph: StepGraph,
    head_last: DenseMatvecBinding,
    head_all: DenseMatvecBinding,
    argmax: SelectBinding,
    top_k: SelectBinding,
    top_k_len: usize,
    /// Tokens already in the KV cache.
    position: usize,
    /// Bytes of the buffers made for this sequence (cache, activations, kernel parameters).
    state_bytes: u64,
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
        let model = Transformer::load(ctx, checkpoint, options.projections, progress).await?;
        Sequence::new(&model, options.max_context, options.max_batch).await
    }

    /// A KV cache of `max_context` positions (capped at the model's `max_position_embeddings`)
    /// and activations for prefill batches of `max_batch` tokens, with every bind group of the
    /// step. Sizes past the device's limits fail, naming the largest that fit.
    pub async fn new(
        model: &Transformer,
        max_context: usize,
        max_batch: usize,
    ) -> Result<Sequence> {
        let ctx = model.context();
        let config = model.config().clone();
        let options = ModelOptions {
            max_context: max_context.min(config.max_position_embeddings).max(1),
            max_batch: max_batch.max(1),
            projections: model.projections(),
        };
        limits::check(&ctx.limits, &config, &options)
            .map_err(|exceeded| exceeded.into_error(&ctx.adapter_name()))?;
        let allocations = AllocationCount::start();
        let (weights, kernels) = (&model.0.weights, &model.0.kernels);
        let c = ctx;
        let (t, h, v) = (options.max_batch, config.hidden_size, config.vocab_size);
        let attention_width = config.num_heads * config.head_dim;
        let qkv_width = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim;
        let widest = h.max(attention_width).max(config.intermediate_size);
        let f32s =
            |label: &str, n: usize| GpuBuffer::new(c, label, (n * 4) as u64, BufferUsage::Storage);
        let step_params = |tokens: u32| StepParams {
            pos: 0,
            tokens,
            _pad: [0; 2],
        };
        let act = Activations {
            step: GpuBuffer::from_slice(c, "step", &[step_params(1)], BufferUsage::Uniform)?,
            last_step: GpuBuffer::from_slice(
                c,
                "last step",
                &[step_params(1)],
                BufferUsage::Uniform,
            )?,
            ids: GpuBuffer::new(c, "ids", (t * 4) as u64, BufferUsage::Storage)?,
            x: f32s("residual", t * h)?,
            xq: GpuBuffer::new(
                c,
                "xq",
                (t * padded_activation_words(widest) * 4) as u64,
                BufferUsage::Storage,
            )?,
            stats: GpuBuffer::new(
                c,
                "act stats",
                (t * size_of::<ActStats>()) as u64,
                BufferUsage::Storage,
            )?,
            dense_input: match options.projections {
                ProjectionKind::Dense => Some(f32s("dense input", t * widest)?),
                ProjectionKind::Ternary => None,
            },
            qkv: f32s("qkv", t * qkv_width)?,
            attention: f32s("attention", t * attention_width)?,
            ffn: f32s("ffn", t * config.intermediate_size)?,
            normed: f32s("normed", t * h)?,
            last: f32s("last", h)?,
            logits: f32s("logits", v)?,
            all_logits: f32s("all logits", t * v)?,
            argmax: GpuBuffer::new(c, "argmax", 4, BufferUsage::Storage)?,
            top_k: GpuBuffer::new(
                c,
                "top-k",
                (MAX_TOP_K * size_of::<Candidate>()) as u64,
                BufferUsage::Storage,
            )?,
        };

        let shape = AttentionShape {
            heads: config.num_heads,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            max_seq: options.max_context,
        };
        let cache = (0..config.num_layers)
            .map(|_| {
                Ok(KvCache {
                    k: f32s("k cache", shape.cache_len())?,
                    v: f32s("v cache", shape.cache_len())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut builder = GraphBuilder::new(c, &config, kernels, &act, shape, &weights.final_norm);
        bitnet_step(&mut builder, weights, &act, &cache)?;
        let graph = builder.finish();
        let head_last =
            kernels
                .lm_head
                .bind(c, weights.head(), &act.last_step, &act.last, &act.logits)?;
        let head_all =
            kernels
                .lm_head
                .bind(c, weights.head(), &act.step, &act.normed, &act.all_logits)?;
        let argmax = kernels.argmax.bind(c, v, &act.logits, &act.argmax)?;
        let top_k_len = MAX_TOP_K.min(v);
        let top_k = kernels
            .top_k
            .bind(c, v, top_k_len, &act.logits, &act.top_k)?;
        let state_bytes = allocations.finish();
        // Bind groups report validation errors asynchronously: surface them here.
        ctx.wait().await?;
        Ok(Sequence {
            model: model.clone(),
            config,
            options,
            _cache: cache,
            act,
            graph,
            head_last,
            head_all,
            argmax,
            top_k,
            top_k_len,
            position: 0,
            state_bytes,
        })
    }

    /// The model whose weights this sequence runs.
    pub fn transformer(&self) -> &Transformer {
        &self.model
    }

    /// Tokens in the KV cache.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Forgets the sequence (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Keeps the first `tokens` positions of the cache and forgets the rest.
    pub fn truncate(&mut self, tokens: usize) {
        self.position = self.position.min(tokens);
    }

    /// Bytes on the GPU that this sequence alone holds: its KV cache, activations and kernel
    /// parameters.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// Bytes on the GPU this sequence uses: the shared weights and its own state.
    pub fn gpu_bytes(&self) -> u64 {
        self.model.gpu_bytes() + self.state_bytes()
    }

    /// The last layer's activations of the last step, [T, width] each — for bisecting a parity
    /// failure against the reference's per-op dumps (layer 0 is reached with a one-layer config).
    pub async fn last_layer_activations(&self, tokens: usize) -> Result<LastLayerActivations> {
        let ctx = self.model.context();
        let c = &self.config;
        let bytes = |width: usize| (tokens * width * 4) as u64;
        Ok(LastLayerActivations {
            attention: read_f32(ctx, &self.act.attention, bytes(c.num_heads * c.head_dim)).await?,
            ffn_activation: read_f32(ctx, &self.act.ffn, bytes(c.intermediate_size)).await?,
            residual: read_f32(ctx, &self.act.x, bytes(c.hidden_size)).await?,
            final_norm: read_f32(ctx, &self.act.normed, bytes(c.hidden_size)).await?,
        })
    }

    /// Feeds `ids` at the current position (in batches of at most `max_batch`) and returns `output`
    /// for the last batch.
    pub async fn forward(&mut self, ids: &[u32], output: Output) -> Result<StepResult> {
        if ids.is_empty() {
            return Err(Error::Invalid("forward needs at least one token".into()));
        }
        if let Some(&bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.config.vocab_size
            )));
        }
        let needed = self.position + ids.len();
        if needed > self.options.max_context {
            return Err(Error::ContextOverflow {
                needed,
                limit: self.options.max_context,
            });
        }
        let batches: Vec<&[u32]> = ids.chunks(self.options.max_batch).collect();
        let mut all_logits = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            let last = i + 1 == batches.len();
            let batch_output = if output == Output::AllLogits {
                Output::AllLogits
            } else if last {
                output
            } else {
                Output::Argmax
            };
            let (result, _) = self
                .step(
                    batch,
                    batch_output,
                    last || output == Output::AllLogits,
                    None,
                )
                .await?;
            match (result, last) {
                (StepResult::Logits(l), _) if output == Output::AllLogits => all_logits.extend(l),
                (result, true) => return Ok(result),
                _ => {}
            }
        }
        Ok(StepResult::Logits(all_logits))
    }

    /// One decode step of `token` (argmax) whose kernels are timed one by one with `timing` (see
    /// [`StepRecorder`]): where a decode step's time goes. The step itself runs as usual (the token
    /// enters the cache), only split into a compute pass or a submit per kernel.
    pub async fn profile_decode(
        &mut self,
        token: u32,
        timing: KernelTiming,
    ) -> Result<(u32, KernelProfile)> {
        if token as usize >= self.config.vocab_size || self.position >= self.options.max_context {
            return Err(Error::Invalid(format!(
                "profile_decode: token {token} at position {} is outside the vocabulary ({}) or \
                 the context ({})",
                self.position, self.config.vocab_size, self.options.max_context
            )));
        }
        match self
            .step(&[token], Output::Argmax, true, Some(timing))
            .await?
        {
            (StepResult::Token(next), Some(profile)) => Ok((next, profile)),
            (other, _) => Err(Error::Gpu(format!(
                "a profiled argmax step returned {other:?} without a profile"
            ))),
        }
    }

    /// One submit (one per kernel when `timing` is set): `ids` at the current position, reading
    /// back `output` when `read` is set.
    async fn step(
        &mut self,
        ids: &[u32],
        output: Output,
        read: bool,
        timing: Option<KernelTiming>,
    ) -> Result<(StepResult, Option<KernelProfile>)> {
        let model = self.model.clone();
        let ctx = model.context();
        let tokens = ids.len() as u32;
        let params = StepParams {
            pos: self.position as u32,
            tokens,
            _pad: [0; 2],
        };
        self.act.step.write(ctx, 0, bytemuck::bytes_of(&params));
        self.act.ids.write(ctx, 0, bytemuck::cast_slice(ids));

        let mut recorder = StepRecorder::new(ctx, timing)?;
        let k = &model.0.kernels;
        self.graph
            .record(&mut recorder, k, tokens, self.position as u32);
        let hidden_bytes = (self.config.hidden_size * 4) as u64;
        if output != Output::AllLogits {
            recorder.encoder().copy_buffer_to_buffer(
                &self.act.normed.buffer,
                (tokens as u64 - 1) * hidden_bytes,
                &self.act.last.buffer,
                0,
                hidden_bytes,
            );
        }
        let head = if output == Output::AllLogits {
            &self.head_all
        } else {
            &self.head_last
        };
        recorder.kernel("lm_head", |pass| k.lm_head.dispatch(pass, head));
        match output {
            Output::Argmax => {
                recorder.kernel("argmax", |pass| k.argmax.dispatch(pass, &self.argmax, 1))
            }
            Output::TopK(_) => {
                recorder.kernel("top_k", |pass| k.top_k.dispatch(pass, &self.top_k, 1))
            }
            Output::LastLogits | Output::AllLogits => {}
        }
        let profile = recorder.finish().await?;
        self.position += ids.len();
        if !read {
            ctx.wait().await?;
            return Ok((StepResult::Token(0), profile));
        }
        let vocab = self.config.vocab_size as u64;
        let result = match output {
            Output::Argmax => {
                let bytes = read_buffer(ctx, &self.act.argmax.buffer, 0, 4).await?;
                match u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) {
                    u32::MAX => return Err(Error::Invalid(NO_FINITE_LOGIT.into())),
                    token => StepResult::Token(token),
                }
            }
            Output::TopK(k) => {
                let bytes = read_buffer(
                    ctx,
                    &self.act.top_k.buffer,
                    0,
                    (self.top_k_len * size_of::<Candidate>()) as u64,
                )
                .await?;
                let mut candidates: Vec<Candidate> = bytemuck::pod_collect_to_vec(&bytes);
                candidates.truncate(k.min(self.top_k_len));
                candidates.retain(|c| c.index != u32::MAX);
                StepResult::Candidates(candidates)
            }
            Output::LastLogits => {
                StepResult::Logits(read_f32(ctx, &self.act.logits, vocab * 4).await?)
            }
            Output::AllLogits => StepResult::Logits(
                read_f32(ctx, &self.act.all_logits, tokens as u64 * vocab * 4).await?,
            ),
        };
        Ok((result, profile))
    }
}

async fn read_f32(ctx: &Context, buffer: &GpuBuffer, bytes: u64) -> Result<Vec<f32>> {
    Ok(bytemuck::pod_collect_to_vec(
        &read_buffer(ctx, &buffer.buffer, 0, bytes).await?,
    ))
}
