//! The forward pass: a [`Model`] owns the weights, the KV cache, every activation buffer and every
//! bind group, all made at load. A step writes the token ids and a small uniform (position, token
//! count), records every kernel of the step in order into one command encoder, submits once and
//! reads back only what the caller asked for (a token id, k candidates or logits).

use std::sync::Arc;

use crate::error::NO_FINITE_LOGIT;
use crate::format::checkpoint::Checkpoint;
use crate::format::config::{Activation, ModelConfig};
use crate::gpu::{
    read_buffer, BufferUsage, Context, GpuBuffer, KernelProfile, KernelTiming, StepRecorder,
};
use crate::model::limits;
use crate::model::weights::{
    self, LoadProgress, ProjectionKind, ProjectionWeight, TernaryWeight, Weights,
};
use crate::ops::attention::{
    AttentionBuffers, AttentionDecode, AttentionDecodeBinding, AttentionPrefill,
    AttentionPrefillBinding, AttentionShape,
};
use crate::ops::dense_matvec::{DenseMatvec, DenseMatvecBinding};
use crate::ops::dense_projection::{DenseProjection, DenseProjectionBinding, DenseProjectionSite};
use crate::ops::embedding::{Embedding, EmbeddingBinding, FloatDType};
use crate::ops::rmsnorm::{RmsNorm, RmsNormBinding};
use crate::ops::rmsnorm_quant::{RmsNormQuant, RmsNormQuantBinding};
use crate::ops::rope::{Rope, RopeBinding};
use crate::ops::select::{Argmax, Candidate, SelectBinding, TopK, MAX_TOP_K};
use crate::ops::ternary_matmul::TernaryMatmul;
use crate::ops::ternary_matvec::{Epilogue, TernaryBinding, TernaryMatvec, TernaryProjection};
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
    /// The k highest logits of the last position, sorted descending (k ≤ [`MAX_TOP_K`]).
    TopK(usize),
    /// All logits of the last position.
    LastLogits,
    /// Logits of every position of the step, [T, vocab].
    AllLogits,
}

/// What a step returns, matching the requested [`Output`].
#[derive(Clone, Debug, PartialEq)]
pub enum StepResult {
    Token(u32),
    Candidates(Vec<Candidate>),
    Logits(Vec<f32>),
}

/// See [`Model::last_layer_activations`].
pub struct LastLayerActivations {
    /// Attention output before the sub-norm and o_proj.
    pub attention: Vec<f32>,
    /// act(gate)·up, before the sub-norm and down_proj.
    pub ffn_activation: Vec<f32>,
    /// The residual stream after the last layer.
    pub residual: Vec<f32>,
    pub final_norm: Vec<f32>,
}

/// Kernels of one layer: the four projection sites (each with the norm that prepares its input),
/// rope, attention.
struct LayerBindings {
    qkv: ProjectionSite,
    o: ProjectionSite,
    gate_up: ProjectionSite,
    down: ProjectionSite,
    rope: RopeBinding,
    attention_decode: AttentionDecodeBinding,
    attention_prefill: AttentionPrefillBinding,
}

/// A projection and the norm that prepares its input, bound for decode (T = 1) and for prefill.
/// `names`: the profile names of its decode and prefill kernels.
enum ProjectionSite {
    /// RMSNorm + int8 quantization (or quantization only, without a sub-norm), then the ternary
    /// matvec / matmul with `epilogue`.
    Ternary {
        norm: RmsNormQuantBinding,
        epilogue: Epilogue,
        decode: TernaryBinding,
        prefill: TernaryBinding,
        names: [&'static str; 2],
    },
    /// f32 RMSNorm (none without a sub-norm: the input is read as is), then the dense projection.
    Dense {
        norm: Option<RmsNormBinding>,
        kernel: Arc<DenseProjection>,
        binding: DenseProjectionBinding,
        names: [&'static str; 2],
    },
}

/// Pipelines, built once per model.
struct Kernels {
    embedding: Embedding,
    norm_quant: RmsNormQuant,
    norm: RmsNorm,
    rope: Rope,
    attention_decode: AttentionDecode,
    attention_prefill: AttentionPrefill,
    matvec_store: TernaryMatvec,
    matvec_residual: TernaryMatvec,
    matvec_gated: TernaryMatvec,
    matmul_store: TernaryMatmul,
    matmul_residual: TernaryMatmul,
    matmul_gated: TernaryMatmul,
    lm_head: DenseMatvec,
    argmax: Argmax,
    top_k: TopK,
}

/// Activations for up to `max_batch` tokens, reused by every layer in turn.
struct Activations {
    step: GpuBuffer,
    /// StepParams with tokens = 1, for the LM head over the last position only.
    last_step: GpuBuffer,
    ids: GpuBuffer,
    /// The residual stream, f32 [T, hidden].
    x: GpuBuffer,
    xq: GpuBuffer,
    stats: GpuBuffer,
    /// Dense models: a projection's normalized f32 input, [T, widest projection input].
    dense_input: Option<GpuBuffer>,
    qkv: GpuBuffer,
    attention: GpuBuffer,
    ffn: GpuBuffer,
    normed: GpuBuffer,
    last: GpuBuffer,
    logits: GpuBuffer,
    all_logits: GpuBuffer,
    argmax: GpuBuffer,
    top_k: GpuBuffer,
}

pub struct Model {
    pub ctx: std::sync::Arc<Context>,
    pub config: ModelConfig,
    pub options: ModelOptions,
    weights: Weights,
    k_cache: Vec<GpuBuffer>,
    v_cache: Vec<GpuBuffer>,
    kernels: Kernels,
    act: Activations,
    layers: Vec<LayerBindings>,
    embed: EmbeddingBinding,
    final_norm: RmsNormBinding,
    head_last: DenseMatvecBinding,
    head_all: DenseMatvecBinding,
    argmax: SelectBinding,
    top_k: SelectBinding,
    top_k_len: usize,
    /// Tokens already in the KV cache.
    position: usize,
}

impl Model {
    /// Uploads `checkpoint`'s weights and makes every buffer and bind group.
    pub async fn load(
        ctx: std::sync::Arc<Context>,
        checkpoint: &Checkpoint,
        options: ModelOptions,
        progress: LoadProgress<'_>,
    ) -> Result<Model> {
        let config = checkpoint.config.clone();
        let options = ModelOptions {
            max_context: options
                .max_context
                .min(config.max_position_embeddings)
                .max(1),
            max_batch: options.max_batch.max(1),
            projections: options.projections,
        };
        limits::check(&ctx.limits, &config, &options)
            .map_err(|exceeded| exceeded.into_error(&ctx.adapter_name()))?;
        let weights = weights::load(&ctx, checkpoint, options.projections, progress).await?;
        let c = &ctx;
        let kernels = Kernels {
            embedding: Embedding::new(c, weights.embedding.dtype),
            norm_quant: RmsNormQuant::new(c),
            norm: RmsNorm::new(c),
            rope: Rope::new(c),
            attention_decode: AttentionDecode::new(c),
            attention_prefill: AttentionPrefill::new(c),
            matvec_store: TernaryMatvec::new(c, Epilogue::Store)?,
            matvec_residual: TernaryMatvec::new(c, Epilogue::AddResidual)?,
            matvec_gated: TernaryMatvec::new(c, gated_epilogue(config.activation))?,
            matmul_store: TernaryMatmul::new(c, Epilogue::Store),
            matmul_residual: TernaryMatmul::new(c, Epilogue::AddResidual),
            matmul_gated: TernaryMatmul::new(c, gated_epilogue(config.activation)),
            lm_head: DenseMatvec::new(c, weights.head().dtype, config.hidden_size),
            argmax: Argmax::new(c),
            top_k: TopK::new(c),
        };

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
        let cache = |label: &str| f32s(label, shape.cache_len());
        let k_cache = (0..config.num_layers)
            .map(|_| cache("k cache"))
            .collect::<Result<Vec<_>>>()?;
        let v_cache = (0..config.num_layers)
            .map(|_| cache("v cache"))
            .collect::<Result<Vec<_>>>()?;
        let frequencies = config.rope_inv_freq();

        let mut layers = Vec::with_capacity(config.num_layers);
        let mut sites = SiteBinder {
            ctx: c,
            kernels: &kernels,
            act: &act,
            eps: config.rms_norm_eps,
            quantize_only_gain: &weights.final_norm,
            dense_kernels: Vec::new(),
        };
        let input = |width, gain, x| SiteInput { width, gain, x };
        for (i, w) in weights.layers.iter().enumerate() {
            let attention_buffers = AttentionBuffers {
                step: &act.step,
                q: &act.qkv,
                q_stride: qkv_width,
                k_cache: &k_cache[i],
                v_cache: &v_cache[i],
                out: &act.attention,
            };
            layers.push(LayerBindings {
                qkv: sites.bind(
                    Site::Qkv,
                    &w.qkv,
                    input(h, Some(&w.input_norm), &act.x),
                    Epilogue::Store,
                    &act.qkv,
                )?,
                o: sites.bind(
                    Site::O,
                    &w.o,
                    input(
                        attention_width,
                        w.attention_sub_norm.as_ref(),
                        &act.attention,
                    ),
                    Epilogue::AddResidual,
                    &act.x,
                )?,
                gate_up: sites.bind(
                    Site::GateUp,
                    &w.gate_up,
                    input(h, Some(&w.post_attention_norm), &act.x),
                    gated_epilogue(config.activation),
                    &act.ffn,
                )?,
                down: sites.bind(
                    Site::Down,
                    &w.down,
                    input(config.intermediate_size, w.ffn_sub_norm.as_ref(), &act.ffn),
                    Epilogue::AddResidual,
                    &act.x,
                )?,
                rope: kernels.rope.bind(
                    c,
                    shape,
                    &frequencies,
                    &act.step,
                    &act.qkv,
                    &k_cache[i],
                    &v_cache[i],
                )?,
                attention_decode: kernels
                    .attention_decode
                    .bind(c, shape, &attention_buffers)?,
                attention_prefill: kernels
                    .attention_prefill
                    .bind(c, shape, &attention_buffers)?,
            });
        }
        let embed = kernels
            .embedding
            .bind(c, &weights.embedding, &act.step, &act.ids, &act.x)?;
        let final_norm = kernels.norm.bind(
            c,
            h,
            config.rms_norm_eps,
            &act.x,
            &weights.final_norm,
            &act.normed,
        )?;
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
        // Pipelines and bind groups report validation errors asynchronously: surface them here.
        ctx.wait().await?;
        Ok(Model {
            ctx,
            config,
            options,
            weights,
            k_cache,
            v_cache,
            kernels,
            act,
            layers,
            embed,
            final_norm,
            head_last,
            head_all,
            argmax,
            top_k,
            top_k_len,
            position: 0,
        })
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

    /// Bytes the model holds on the GPU: weights, KV cache and activations.
    pub fn gpu_bytes(&self) -> u64 {
        let cache: u64 = self
            .k_cache
            .iter()
            .chain(&self.v_cache)
            .map(|b| b.size)
            .sum();
        let a = &self.act;
        let activations: u64 = [
            &a.step,
            &a.last_step,
            &a.ids,
            &a.x,
            &a.xq,
            &a.stats,
            &a.qkv,
            &a.attention,
            &a.ffn,
            &a.normed,
            &a.last,
            &a.logits,
            &a.all_logits,
            &a.argmax,
            &a.top_k,
        ]
        .into_iter()
        .chain(a.dense_input.as_ref())
        .map(|b| b.size)
        .sum();
        self.weights.gpu_bytes() + cache + activations
    }

    /// The last layer's activations of the last step, [T, width] each — for bisecting a parity
    /// failure against the reference's per-op dumps (layer 0 is reached with a one-layer config).
    pub async fn last_layer_activations(&self, tokens: usize) -> Result<LastLayerActivations> {
        let ctx = &self.ctx;
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
        let ctx = self.ctx.clone();
        let tokens = ids.len() as u32;
        let params = StepParams {
            pos: self.position as u32,
            tokens,
            _pad: [0; 2],
        };
        self.act.step.write(&ctx, 0, bytemuck::bytes_of(&params));
        self.act.ids.write(&ctx, 0, bytemuck::cast_slice(ids));

        let mut recorder = StepRecorder::new(&ctx, timing)?;
        self.record_layers(&mut recorder, tokens);
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
        let k = &self.kernels;
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
                let bytes = read_buffer(&ctx, &self.act.argmax.buffer, 0, 4).await?;
                match u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) {
                    u32::MAX => return Err(Error::Invalid(NO_FINITE_LOGIT.into())),
                    token => StepResult::Token(token),
                }
            }
            Output::TopK(k) => {
                let bytes = read_buffer(
                    &ctx,
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
                StepResult::Logits(read_f32(&ctx, &self.act.logits, vocab * 4).await?)
            }
            Output::AllLogits => StepResult::Logits(
                read_f32(&ctx, &self.act.all_logits, tokens as u64 * vocab * 4).await?,
            ),
        };
        Ok((result, profile))
    }

    /// Records the embedding, every layer and the final norm for `tokens` tokens — the whole decode
    /// step, in order (ARCHITECTURE.md, Pipeline).
    /// Kernel names (the profile's keys) say which projection site a matvec or matmul serves.
    fn record_layers(&self, recorder: &mut StepRecorder<'_>, tokens: u32) {
        let k = &self.kernels;
        recorder.kernel("embedding", |pass| k.embedding.dispatch(pass, &self.embed));
        for layer in &self.layers {
            // Attention block: x += o(sub_norm(attention(rope(qkv(input_norm(x))))))
            self.project(recorder, &layer.qkv, tokens);
            recorder.kernel("rope", |pass| k.rope.dispatch(pass, &layer.rope, tokens));
            if tokens == 1 {
                recorder.kernel("attention_decode", |pass| {
                    k.attention_decode
                        .dispatch(pass, &layer.attention_decode, self.position as u32)
                });
            } else {
                recorder.kernel("attention_prefill", |pass| {
                    k.attention_prefill
                        .dispatch(pass, &layer.attention_prefill, tokens)
                });
            }
            self.project(recorder, &layer.o, tokens);

            // Feed-forward block: x += down(sub_norm(act(gate(h)) · up(h))), h = post_attention_norm(x)
            self.project(recorder, &layer.gate_up, tokens);
            self.project(recorder, &layer.down, tokens);
        }
        recorder.kernel("rmsnorm", |pass| {
            k.norm.dispatch(pass, &self.final_norm, tokens)
        });
    }

    /// Records one projection site: its norm, then the projection — the matvec for decode (T = 1),
    /// the matmul for prefill — ternary or dense as the site's weight is.
    fn project(&self, recorder: &mut StepRecorder<'_>, site: &ProjectionSite, tokens: u32) {
        let k = &self.kernels;
        match site {
            ProjectionSite::Ternary {
                norm,
                epilogue,
                decode,
                prefill,
                names: [matvec_name, matmul_name],
            } => {
                recorder.kernel("rmsnorm_quant", |pass| {
                    k.norm_quant.dispatch(pass, norm, tokens)
                });
                let (matvec, matmul) = k.ternary(*epilogue);
                if tokens == 1 {
                    recorder.kernel(matvec_name, |pass| matvec.dispatch(pass, decode));
                } else {
                    recorder.kernel(matmul_name, |pass| matmul.dispatch(pass, prefill, tokens));
                }
            }
            ProjectionSite::Dense {
                norm,
                kernel,
                binding,
                names: [matvec_name, matmul_name],
            } => {
                if let Some(norm) = norm {
                    recorder.kernel("rmsnorm", |pass| k.norm.dispatch(pass, norm, tokens));
                }
                if tokens == 1 {
                    recorder.kernel(matvec_name, |pass| kernel.dispatch_decode(pass, binding));
                } else {
                    recorder.kernel(matmul_name, |pass| {
                        kernel.dispatch_prefill(pass, binding, tokens)
                    });
                }
            }
        }
    }
}

impl Kernels {
    /// The ternary matvec and matmul with `epilogue`.
    fn ternary(&self, epilogue: Epilogue) -> (&TernaryMatvec, &TernaryMatmul) {
        match epilogue {
            Epilogue::Store => (&self.matvec_store, &self.matmul_store),
            Epilogue::AddResidual => (&self.matvec_residual, &self.matmul_residual),
            Epilogue::Relu2Mul | Epilogue::SiluMul => (&self.matvec_gated, &self.matmul_gated),
        }
    }
}

fn gated_epilogue(activation: Activation) -> Epilogue {
    match activation {
        Activation::Relu2 => Epilogue::Relu2Mul,
        Activation::Silu => Epilogue::SiluMul,
    }
}

/// The four projection sites of a layer.
#[derive(Clone, Copy)]
enum Site {
    Qkv,
    O,
    GateUp,
    Down,
}

impl Site {
    /// Profile names of the site's decode and prefill kernels.
    fn kernel_names(self, kind: ProjectionKind) -> [&'static str; 2] {
        match (kind, self) {
            (ProjectionKind::Ternary, Site::Qkv) => ["matvec_qkv", "matmul_qkv"],
            (ProjectionKind::Ternary, Site::O) => ["matvec_o", "matmul_o"],
            (ProjectionKind::Ternary, Site::GateUp) => ["matvec_gate_up", "matmul_gate_up"],
            (ProjectionKind::Ternary, Site::Down) => ["matvec_down", "matmul_down"],
            (ProjectionKind::Dense, Site::Qkv) => ["dense_matvec_qkv", "dense_matmul_qkv"],
            (ProjectionKind::Dense, Site::O) => ["dense_matvec_o", "dense_matmul_o"],
            (ProjectionKind::Dense, Site::GateUp) => {
                ["dense_matvec_gate_up", "dense_matmul_gate_up"]
            }
            (ProjectionKind::Dense, Site::Down) => ["dense_matvec_down", "dense_matmul_down"],
        }
    }
}

/// A projection's input: f32 [T, width] in `x`, normalized with `gain` first (no gain: the
/// architecture has no sub-norm here, and the input is used as is).
struct SiteInput<'a> {
    width: usize,
    gain: Option<&'a GpuBuffer>,
    x: &'a GpuBuffer,
}

/// Binds projection sites at load; dense kernels are built once per (epilogue, dtype, width) and
/// shared by every layer.
struct SiteBinder<'a> {
    ctx: &'a Context,
    kernels: &'a Kernels,
    act: &'a Activations,
    eps: f32,
    /// Bound as the gain of quantize-only sites, which never read it.
    quantize_only_gain: &'a GpuBuffer,
    dense_kernels: Vec<((Epilogue, FloatDType, usize), Arc<DenseProjection>)>,
}

impl SiteBinder<'_> {
    /// `weight` reading `input` and writing `out` through `epilogue`.
    fn bind(
        &mut self,
        site: Site,
        weight: &ProjectionWeight,
        input: SiteInput<'_>,
        epilogue: Epilogue,
        out: &GpuBuffer,
    ) -> Result<ProjectionSite> {
        let (c, k, act) = (self.ctx, self.kernels, self.act);
        match weight {
            ProjectionWeight::Ternary(w) => {
                let (eps, gain) = match input.gain {
                    Some(gain) => (Some(self.eps), gain),
                    None => (None, self.quantize_only_gain),
                };
                let norm =
                    k.norm_quant
                        .bind(c, input.width, eps, input.x, gain, &act.xq, &act.stats)?;
                let projection = ternary_site(act, w, out);
                let (matvec, matmul) = k.ternary(epilogue);
                Ok(ProjectionSite::Ternary {
                    norm,
                    epilogue,
                    decode: matvec.bind(c, &projection)?,
                    prefill: matmul.bind(c, &projection)?,
                    names: site.kernel_names(ProjectionKind::Ternary),
                })
            }
            ProjectionWeight::Dense(w) => {
                let dense_input = act.dense_input.as_ref().ok_or_else(|| {
                    Error::Invalid("dense weights in a model loaded for ternary ones".into())
                })?;
                let (norm, x) = match input.gain {
                    Some(gain) => (
                        Some(
                            k.norm
                                .bind(c, input.width, self.eps, input.x, gain, dense_input)?,
                        ),
                        dense_input,
                    ),
                    None => (None, input.x),
                };
                let key = (epilogue, w.table.dtype, w.table.cols);
                let kernel = match self.dense_kernels.iter().find(|(k, _)| *k == key) {
                    Some((_, kernel)) => kernel.clone(),
                    None => {
                        let kernel = Arc::new(DenseProjection::new(c, key.0, key.1, key.2));
                        self.dense_kernels.push((key, kernel.clone()));
                        kernel
                    }
                };
                let binding = kernel.bind(
                    c,
                    &DenseProjectionSite {
                        weights: &w.table,
                        up: w.up.as_ref(),
                        step: &act.step,
                        x,
                        out,
                    },
                )?;
                Ok(ProjectionSite::Dense {
                    norm,
                    kernel,
                    binding,
                    names: site.kernel_names(ProjectionKind::Dense),
                })
            }
        }
    }
}

fn ternary_site<'a>(
    act: &'a Activations,
    weight: &'a TernaryWeight,
    out: &'a GpuBuffer,
) -> TernaryProjection<'a> {
    TernaryProjection {
        k: weight.cols,
        rows: weight.rows,
        weights: &weight.codes,
        row_scale: &weight.row_scale,
        step: &act.step,
        xq: &act.xq,
        stats: &act.stats,
        out,
    }
}

async fn read_f32(ctx: &Context, buffer: &GpuBuffer, bytes: u64) -> Result<Vec<f32>> {
    Ok(bytemuck::pod_collect_to_vec(
        &read_buffer(ctx, &buffer.buffer, 0, bytes).await?,
    ))
}
