//! The forward pass: a [`Model`] owns the weights, the KV cache, every activation buffer and every
//! bind group, all made at load. A step writes the token ids and a small uniform (position, token
//! count), records every kernel of the step in order into one command encoder, submits once and
//! reads back only what the caller asked for (a token id, k candidates or logits).

use crate::format::checkpoint::Checkpoint;
use crate::gpu::{read_buffer, BufferUsage, Context, GpuBuffer};
use crate::model::config::{Activation, ModelConfig};
use crate::model::weights::{self, LayerWeights, LoadProgress, TernaryWeight, Weights};
use crate::ops::attention::{
    AttentionBuffers, AttentionDecode, AttentionDecodeBinding, AttentionPrefill,
    AttentionPrefillBinding, AttentionShape,
};
use crate::ops::dense_matvec::{DenseMatvec, DenseMatvecBinding};
use crate::ops::embedding::{Embedding, EmbeddingBinding};
use crate::ops::rmsnorm::{RmsNorm, RmsNormBinding};
use crate::ops::rmsnorm_quant::{RmsNormQuant, RmsNormQuantBinding};
use crate::ops::rope::{Rope, RopeBinding};
use crate::ops::select::{Argmax, Candidate, SelectBinding, TopK, MAX_TOP_K};
use crate::ops::ternary_matmul::TernaryMatmul;
use crate::ops::ternary_matvec::{Epilogue, TernaryBinding, TernaryMatvec, TernaryProjection};
use crate::ops::{padded_activation_words, ActStats, StepParams};
use crate::reference::rope::inv_freq;
use crate::{Error, Result};

/// Sizes chosen at load.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// KV-cache length in tokens (capped at the model's `max_position_embeddings`).
    pub max_context: usize,
    /// Tokens per prefill batch; longer prompts run in several batches.
    pub max_batch: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_context: 4096,
            max_batch: 128,
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

/// Kernels of one layer: norm/quant sites, projections (decode and prefill variants), rope, attention.
struct LayerBindings {
    input_norm: RmsNormQuantBinding,
    attention_sub_norm: RmsNormQuantBinding,
    post_attention_norm: RmsNormQuantBinding,
    ffn_sub_norm: RmsNormQuantBinding,
    rope: RopeBinding,
    decode: ProjectionBindings,
    prefill: ProjectionBindings,
    attention_decode: AttentionDecodeBinding,
    attention_prefill: AttentionPrefillBinding,
}

struct ProjectionBindings {
    qkv: TernaryBinding,
    o: TernaryBinding,
    gate_up: TernaryBinding,
    down: TernaryBinding,
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
        };
        let weights = weights::load(&ctx, checkpoint, progress).await?;
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
        let frequencies = inv_freq(config.rope_theta, config.head_dim);

        let mut layers = Vec::with_capacity(config.num_layers);
        for (i, w) in weights.layers.iter().enumerate() {
            let norm_quant = |k: usize, gain: Option<&GpuBuffer>, input: &GpuBuffer| {
                // Without a sub-norm the projection input is only quantized; the gain is not read.
                let (eps, gain) = match gain {
                    Some(g) => (Some(config.rms_norm_eps), g),
                    None => (None, &w.input_norm),
                };
                kernels
                    .norm_quant
                    .bind(c, k, eps, input, gain, &act.xq, &act.stats)
            };
            let attention_buffers = AttentionBuffers {
                step: &act.step,
                q: &act.qkv,
                q_stride: qkv_width,
                k_cache: &k_cache[i],
                v_cache: &v_cache[i],
                out: &act.attention,
            };
            layers.push(LayerBindings {
                input_norm: norm_quant(h, Some(&w.input_norm), &act.x)?,
                attention_sub_norm: norm_quant(
                    attention_width,
                    w.attention_sub_norm.as_ref(),
                    &act.attention,
                )?,
                post_attention_norm: norm_quant(h, Some(&w.post_attention_norm), &act.x)?,
                ffn_sub_norm: norm_quant(
                    config.intermediate_size,
                    w.ffn_sub_norm.as_ref(),
                    &act.ffn,
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
                decode: bind_projections(
                    c,
                    &act,
                    w,
                    [
                        &kernels.matvec_store,
                        &kernels.matvec_residual,
                        &kernels.matvec_gated,
                    ],
                )?,
                prefill: bind_projections(
                    c,
                    &act,
                    w,
                    [
                        &kernels.matmul_store,
                        &kernels.matmul_residual,
                        &kernels.matmul_gated,
                    ],
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
        .iter()
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
            let result = self
                .step(batch, batch_output, last || output == Output::AllLogits)
                .await?;
            match (result, last) {
                (StepResult::Logits(l), _) if output == Output::AllLogits => all_logits.extend(l),
                (result, true) => return Ok(result),
                _ => {}
            }
        }
        Ok(StepResult::Logits(all_logits))
    }

    /// One submit: `ids` at the current position, reading back `output` when `read` is set.
    async fn step(&mut self, ids: &[u32], output: Output, read: bool) -> Result<StepResult> {
        let ctx = self.ctx.clone();
        let tokens = ids.len() as u32;
        let params = StepParams {
            pos: self.position as u32,
            tokens,
            _pad: [0; 2],
        };
        self.act.step.write(&ctx, 0, bytemuck::bytes_of(&params));
        self.act.ids.write(&ctx, 0, bytemuck::cast_slice(ids));

        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        self.record_layers(&mut encoder, tokens);
        let hidden_bytes = (self.config.hidden_size * 4) as u64;
        if output != Output::AllLogits {
            encoder.copy_buffer_to_buffer(
                &self.act.normed.buffer,
                (tokens as u64 - 1) * hidden_bytes,
                &self.act.last.buffer,
                0,
                hidden_bytes,
            );
        }
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let k = &self.kernels;
            match output {
                Output::AllLogits => k.lm_head.dispatch(&mut pass, &self.head_all),
                Output::LastLogits => k.lm_head.dispatch(&mut pass, &self.head_last),
                Output::Argmax => {
                    k.lm_head.dispatch(&mut pass, &self.head_last);
                    k.argmax.dispatch(&mut pass, &self.argmax, 1);
                }
                Output::TopK(_) => {
                    k.lm_head.dispatch(&mut pass, &self.head_last);
                    k.top_k.dispatch(&mut pass, &self.top_k, 1);
                }
            }
        }
        ctx.queue.submit([encoder.finish()]);
        self.position += ids.len();
        if !read {
            ctx.wait().await?;
            return Ok(StepResult::Token(0));
        }
        let vocab = self.config.vocab_size as u64;
        Ok(match output {
            Output::Argmax => {
                let bytes = read_buffer(&ctx, &self.act.argmax.buffer, 0, 4).await?;
                StepResult::Token(u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")))
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
        })
    }

    /// Records the embedding, every layer and the final norm for `tokens` tokens — the whole decode
    /// step of DESIGN §2, in order.
    fn record_layers(&self, encoder: &mut wgpu::CommandEncoder, tokens: u32) {
        let k = &self.kernels;
        let decode = tokens == 1;
        let mut pass = encoder.begin_compute_pass(&Default::default());
        k.embedding.dispatch(&mut pass, &self.embed);
        for layer in &self.layers {
            let projections = if decode {
                &layer.decode
            } else {
                &layer.prefill
            };
            let project = |pass: &mut wgpu::ComputePass<'_>,
                           kernel: Kernel<'_>,
                           binding: &TernaryBinding| match kernel {
                Kernel::Matvec(m) => m.dispatch(pass, binding),
                Kernel::Matmul(m) => m.dispatch(pass, binding, tokens),
            };
            let (store, residual, gated) = if decode {
                (
                    Kernel::Matvec(&k.matvec_store),
                    Kernel::Matvec(&k.matvec_residual),
                    Kernel::Matvec(&k.matvec_gated),
                )
            } else {
                (
                    Kernel::Matmul(&k.matmul_store),
                    Kernel::Matmul(&k.matmul_residual),
                    Kernel::Matmul(&k.matmul_gated),
                )
            };

            // Attention block: x += o(sub_norm(attention(rope(qkv(input_norm(x))))))
            k.norm_quant.dispatch(&mut pass, &layer.input_norm, tokens);
            project(&mut pass, store, &projections.qkv);
            k.rope.dispatch(&mut pass, &layer.rope, tokens);
            if decode {
                k.attention_decode.dispatch(
                    &mut pass,
                    &layer.attention_decode,
                    self.position as u32,
                );
            } else {
                k.attention_prefill
                    .dispatch(&mut pass, &layer.attention_prefill, tokens);
            }
            k.norm_quant
                .dispatch(&mut pass, &layer.attention_sub_norm, tokens);
            project(&mut pass, residual, &projections.o);

            // Feed-forward block: x += down(sub_norm(act(gate(h)) · up(h))), h = post_attention_norm(x)
            k.norm_quant
                .dispatch(&mut pass, &layer.post_attention_norm, tokens);
            project(&mut pass, gated, &projections.gate_up);
            k.norm_quant
                .dispatch(&mut pass, &layer.ffn_sub_norm, tokens);
            project(&mut pass, residual, &projections.down);
        }
        k.norm.dispatch(&mut pass, &self.final_norm, tokens);
    }
}

#[derive(Clone, Copy)]
enum Kernel<'a> {
    Matvec(&'a TernaryMatvec),
    Matmul(&'a TernaryMatmul),
}

fn gated_epilogue(activation: Activation) -> Epilogue {
    match activation {
        Activation::Relu2 => Epilogue::Relu2Mul,
        Activation::Silu => Epilogue::SiluMul,
    }
}

/// Something that binds projection sites: the decode matvec or the prefill matmul.
trait BindProjection {
    fn bind_site(&self, ctx: &Context, site: &TernaryProjection<'_>) -> Result<TernaryBinding>;
}

impl BindProjection for TernaryMatvec {
    fn bind_site(&self, ctx: &Context, site: &TernaryProjection<'_>) -> Result<TernaryBinding> {
        self.bind(ctx, site)
    }
}

impl BindProjection for TernaryMatmul {
    fn bind_site(&self, ctx: &Context, site: &TernaryProjection<'_>) -> Result<TernaryBinding> {
        self.bind(ctx, site)
    }
}

/// Binds a layer's four projections with `[store, residual, gated]` kernels.
fn bind_projections<K: BindProjection>(
    ctx: &Context,
    act: &Activations,
    w: &LayerWeights,
    [store, residual, gated]: [&K; 3],
) -> Result<ProjectionBindings> {
    fn site<'a>(
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
    Ok(ProjectionBindings {
        qkv: store.bind_site(ctx, &site(act, &w.qkv, &act.qkv))?,
        o: residual.bind_site(ctx, &site(act, &w.o, &act.x))?,
        gate_up: gated.bind_site(ctx, &site(act, &w.gate_up, &act.ffn))?,
        down: residual.bind_site(ctx, &site(act, &w.down, &act.x))?,
    })
}

async fn read_f32(ctx: &Context, buffer: &GpuBuffer, bytes: u64) -> Result<Vec<f32>> {
    Ok(bytemuck::pod_collect_to_vec(
        &read_buffer(ctx, &buffer.buffer, 0, bytes).await?,
    ))
}
