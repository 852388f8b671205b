//! One step of a BitNet b1.58 model as a list of bound kernels. [`bitnet_step`] describes the step
//! top to bottom — every kernel in order, every buffer by name, the residual stream `x` visible —
//! as llama.cpp's per-architecture graphs and llama2.c's `forward()` do. A sequence runs it once,
//! through a [`GraphBuilder`] that binds each kernel to its buffers; every step then replays the
//! [`StepGraph`]: no allocation per token, and prefill and decode come from the same description
//! (a ternary projection runs as the matmul for T > 1 tokens and as the matvec for one; attention
//! runs causal over the batch or split over the cache). A step may carry several sequences, each in
//! its own [`Slot`] (its rows of the activations, its KV cache): the projections run once over all
//! their rows, and each sequence's RoPE and attention run over its own cache.

use std::sync::Arc;

use crate::format::config::{Activation, ModelConfig};
use crate::gpu::{BufferUsage, Context, GpuBuffer, StepRecorder};
use crate::model::weights::{
    LayerWeights, ProjectionKind, ProjectionWeight, TernaryWeight, Weights,
};
use crate::ops::attention::{
    AttentionBuffers, AttentionDecode, AttentionDecodeBinding, AttentionPrefill,
    AttentionPrefillBinding, AttentionShape,
};
use crate::ops::dense_matvec::DenseMatvec;
use crate::ops::dense_projection::{DenseProjection, DenseProjectionBinding, DenseProjectionSite};
use crate::ops::embedding::{Embedding, EmbeddingBinding, FloatDType};
use crate::ops::rmsnorm::{RmsNorm, RmsNormBinding};
use crate::ops::rmsnorm_quant::{RmsNormQuant, RmsNormQuantBinding};
use crate::ops::rope::{Rope, RopeBinding};
use crate::ops::select::{Argmax, Candidate, TopK, MAX_TOP_K};
use crate::ops::ternary_matmul::TernaryMatmul;
use crate::ops::ternary_matvec::{Epilogue, TernaryBinding, TernaryMatvec, TernaryProjection};
use crate::ops::{padded_activation_words, ActStats, StepParams};
use crate::{Error, Result};

/// The buffers a step reads and writes, sized for up to `rows` tokens and reused by every layer in
/// turn.
pub(super) struct Activations {
    /// `StepParams` of the step: token count T (the rows of every buffer below in use).
    pub step: GpuBuffer,
    /// `StepParams` with T = 1, for the LM head over the last position only.
    pub last_step: GpuBuffer,
    /// u32 [T] token ids.
    pub ids: GpuBuffer,
    /// The residual stream, f32 [T, hidden].
    pub x: GpuBuffer,
    /// A projection's input as int8 (packed 4 to a word) [T, widest input].
    pub xq: GpuBuffer,
    /// Per-token scale of `xq` [T].
    pub stats: GpuBuffer,
    /// Dense models only: a projection's normalized f32 input [T, widest input].
    pub dense_input: Option<GpuBuffer>,
    /// q|k|v [T, (heads + 2·kv_heads)·head_dim]; q is rotated in place.
    pub qkv: GpuBuffer,
    /// Attention output [T, heads·head_dim].
    pub attention: GpuBuffer,
    /// act(gate)·up [T, intermediate].
    pub ffn: GpuBuffer,
    /// The final norm's output [T, hidden].
    pub normed: GpuBuffer,
    /// The last position's `normed` row [hidden].
    pub last: GpuBuffer,
    /// The last position's logits [vocab].
    pub logits: GpuBuffer,
    /// Every row's logits [T, vocab] (teacher forcing; a batch's sequences).
    pub all_logits: GpuBuffer,
    /// The argmax token of each row of `all_logits` [T] (or of `logits`).
    pub argmax: GpuBuffer,
    /// The top candidates of each row of `all_logits` [T, MAX_TOP_K] (or of `logits`).
    pub top_k: GpuBuffer,
}

impl Activations {
    /// Buffers for steps of up to `rows` tokens.
    pub fn new(
        c: &Context,
        config: &ModelConfig,
        projections: ProjectionKind,
        rows: usize,
    ) -> Result<Activations> {
        let (t, h, v) = (rows, config.hidden_size, config.vocab_size);
        let attention_width = config.num_heads * config.head_dim;
        let qkv_width = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim;
        let widest = h.max(attention_width).max(config.intermediate_size);
        let f32s =
            |label: &str, n: usize| GpuBuffer::new(c, label, (n * 4) as u64, BufferUsage::Storage);
        Ok(Activations {
            step: step_params(c, "step")?,
            last_step: step_params(c, "last step")?,
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
            dense_input: match projections {
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
            argmax: GpuBuffer::new(c, "argmax", (t * 4) as u64, BufferUsage::Storage)?,
            top_k: GpuBuffer::new(
                c,
                "top-k",
                (t * MAX_TOP_K * size_of::<Candidate>()) as u64,
                BufferUsage::Storage,
            )?,
        })
    }
}

/// A `StepParams` uniform for one token at position 0 (each step writes its own).
fn step_params(c: &Context, label: &str) -> Result<GpuBuffer> {
    let one_token = StepParams {
        tokens: 1,
        ..StepParams::default()
    };
    GpuBuffer::from_slice(c, label, &[one_token], BufferUsage::Uniform)
}

/// One layer's K and V caches, [kv_heads, max_context, head_dim] each in the shape's
/// [`crate::ops::attention::KvCacheDtype`].
pub(super) struct KvCache {
    pub k: GpuBuffer,
    pub v: GpuBuffer,
}

/// One sequence's place in a step: its `StepParams` (its position, its token count, its first row
/// in the activations) and each layer's KV cache. A lone sequence is one slot; a batch has one per
/// sequence it can hold.
pub(super) struct Slot {
    pub step: GpuBuffer,
    pub cache: Vec<KvCache>,
}

impl Slot {
    /// A slot with an empty cache of `shape.max_seq` positions per layer.
    pub fn new(c: &Context, layers: usize, shape: AttentionShape) -> Result<Slot> {
        let bytes = shape.cache_bytes();
        let cache = (0..layers)
            .map(|_| {
                Ok(KvCache {
                    k: GpuBuffer::new(c, "k cache", bytes, BufferUsage::Storage)?,
                    v: GpuBuffer::new(c, "v cache", bytes, BufferUsage::Storage)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Slot {
            step: step_params(c, "slot step")?,
            cache,
        })
    }
}

/// What a slot does in one step: `tokens` tokens from cache position `position`.
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotStep {
    pub position: u32,
    pub tokens: u32,
}

/// The step of a BitNet b1.58 transformer (llama-like blocks with sub-norms), top to bottom.
pub(super) fn bitnet_step(
    g: &mut GraphBuilder<'_>,
    weights: &Weights,
    a: &Activations,
    slots: &[Slot],
) -> Result<()> {
    let c = g.config;
    let (hidden, attention_width) = (c.hidden_size, c.num_heads * c.head_dim);
    let gated = gated_epilogue(c.activation);

    g.embedding(&weights.embedding, &a.ids, &a.x)?;
    for (l, layer) in weights.layers.iter().enumerate() {
        let LayerWeights {
            input_norm,
            post_attention_norm,
            attention_sub_norm,
            ffn_sub_norm,
            ..
        } = layer;
        // Attention block: x += o(sub_norm(attention(rope(q|k|v(input_norm(x))))))
        let input = Input::normed(&a.x, hidden, Some(input_norm));
        g.project(Site::Qkv, &layer.qkv, input, Epilogue::Store, &a.qkv)?;
        // Each sequence's queries attend over its own keys and values.
        for (s, slot) in slots.iter().enumerate() {
            g.rope_and_append(s, &slot.step, &a.qkv, &slot.cache[l])?;
            g.attention(s, &slot.step, &a.qkv, &slot.cache[l], &a.attention)?;
        }
        let input = Input::normed(&a.attention, attention_width, attention_sub_norm.as_ref());
        g.project(Site::O, &layer.o, input, Epilogue::AddResidual, &a.x)?;

        // Feed-forward block: x += down(sub_norm(act(gate(h)) · up(h))), h = post_attention_norm(x)
        let input = Input::normed(&a.x, hidden, Some(post_attention_norm));
        g.project(Site::GateUp, &layer.gate_up, input, gated, &a.ffn)?;
        let input = Input::normed(&a.ffn, c.intermediate_size, ffn_sub_norm.as_ref());
        g.project(Site::Down, &layer.down, input, Epilogue::AddResidual, &a.x)?;
    }
    g.final_norm(&a.x, &weights.final_norm, &a.normed)
}

/// The epilogue that applies the feed-forward activation to gate and multiplies by up.
pub(super) fn gated_epilogue(activation: Activation) -> Epilogue {
    match activation {
        Activation::Relu2 => Epilogue::Relu2Mul,
        Activation::Silu => Epilogue::SiluMul,
    }
}

/// Pipelines, built once per model and shared by all its sequences.
pub(super) struct Kernels {
    pub embedding: Embedding,
    pub norm_quant: RmsNormQuant,
    pub norm: RmsNorm,
    pub rope: Rope,
    pub attention_decode: AttentionDecode,
    pub attention_prefill: AttentionPrefill,
    pub matvec_store: TernaryMatvec,
    pub matvec_residual: TernaryMatvec,
    pub matvec_gated: TernaryMatvec,
    pub matmul_store: TernaryMatmul,
    pub matmul_residual: TernaryMatmul,
    pub matmul_gated: TernaryMatmul,
    pub lm_head: DenseMatvec,
    pub argmax: Argmax,
    pub top_k: TopK,
    /// Most tokens a ternary projection runs as the matvec (which decodes each weight word once
    /// per token) rather than the matmul (once per tile of 8 tokens, padding a smaller step).
    pub matvec_max_tokens: u32,
}

impl Kernels {
    pub fn new(ctx: &Context, config: &ModelConfig, weights: &Weights) -> Result<Kernels> {
        let gated = gated_epilogue(config.activation);
        Ok(Kernels {
            embedding: Embedding::new(ctx, weights.embedding.format()),
            norm_quant: RmsNormQuant::new(ctx),
            norm: RmsNorm::new(ctx),
            rope: Rope::new(ctx),
            attention_decode: AttentionDecode::new(ctx),
            attention_prefill: AttentionPrefill::new(ctx),
            matvec_store: TernaryMatvec::new(ctx, Epilogue::Store)?,
            matvec_residual: TernaryMatvec::new(ctx, Epilogue::AddResidual)?,
            matvec_gated: TernaryMatvec::new(ctx, gated)?,
            matmul_store: TernaryMatmul::new(ctx, Epilogue::Store),
            matmul_residual: TernaryMatmul::new(ctx, Epilogue::AddResidual),
            matmul_gated: TernaryMatmul::new(ctx, gated),
            lm_head: DenseMatvec::new(ctx, weights.head().format(), config.hidden_size),
            argmax: Argmax::new(ctx),
            top_k: TopK::new(ctx),
            // Measured on lavapipe at the 2B-4T shape (BENCHMARKS.md, continuous batching): the
            // matvec costs ~T single steps, the matmul ~5 whatever T ≤ 8, so the matvec wins up to
            // 5 tokens on a compute-bound CPU adapter. A GPU is bound by the weight bytes, which
            // the matmul reads once per tile.
            matvec_max_tokens: if ctx.caps.is_cpu { 5 } else { 1 },
        })
    }

    /// The ternary matvec and matmul with `epilogue`.
    fn ternary(&self, epilogue: Epilogue) -> (&TernaryMatvec, &TernaryMatmul) {
        match epilogue {
            Epilogue::Store => (&self.matvec_store, &self.matmul_store),
            Epilogue::AddResidual => (&self.matvec_residual, &self.matmul_residual),
            Epilogue::Relu2Mul | Epilogue::SiluMul => (&self.matvec_gated, &self.matmul_gated),
        }
    }
}

/// The four projections of a layer; they name the kernels in a profile.
#[derive(Clone, Copy)]
pub(super) enum Site {
    Qkv,
    O,
    GateUp,
    Down,
}

impl Site {
    /// Profile names of the ternary decode and prefill kernels, then of the dense ones.
    fn kernel_names(self) -> [[&'static str; 2]; 2] {
        match self {
            Site::Qkv => [
                ["matvec_qkv", "matmul_qkv"],
                ["dense_matvec_qkv", "dense_matmul_qkv"],
            ],
            Site::O => [
                ["matvec_o", "matmul_o"],
                ["dense_matvec_o", "dense_matmul_o"],
            ],
            Site::GateUp => [
                ["matvec_gate_up", "matmul_gate_up"],
                ["dense_matvec_gate_up", "dense_matmul_gate_up"],
            ],
            Site::Down => [
                ["matvec_down", "matmul_down"],
                ["dense_matvec_down", "dense_matmul_down"],
            ],
        }
    }
}

/// A projection's input: f32 [T, width] in `x`, RMS-normalized with `gain` first (no gain: the
/// architecture has no sub-norm there and the input is used as is).
pub(super) struct Input<'a> {
    x: &'a GpuBuffer,
    width: usize,
    gain: Option<&'a GpuBuffer>,
}

impl<'a> Input<'a> {
    fn normed(x: &'a GpuBuffer, width: usize, gain: Option<&'a GpuBuffer>) -> Self {
        Input { x, width, gain }
    }
}

/// One bound kernel of the step.
enum Node {
    Embedding(EmbeddingBinding),
    NormQuant(RmsNormQuantBinding),
    Norm(RmsNormBinding),
    Ternary {
        epilogue: Epilogue,
        decode: TernaryBinding,
        prefill: TernaryBinding,
        names: [&'static str; 2],
    },
    Dense {
        kernel: Arc<DenseProjection>,
        binding: DenseProjectionBinding,
        names: [&'static str; 2],
    },
    Rope {
        slot: usize,
        binding: RopeBinding,
    },
    Attention {
        slot: usize,
        decode: AttentionDecodeBinding,
        prefill: AttentionPrefillBinding,
    },
}

/// The bound kernels of one sequence's step, in order.
pub(super) struct StepGraph {
    nodes: Vec<Node>,
}

impl StepGraph {
    /// Records the step over `tokens` rows: the ternary matvecs for a few (see
    /// [`Kernels::matvec_max_tokens`]), the matmuls for more; the dense kernels' decode form for
    /// one. `slots`
    /// says what each slot does (`None`: nothing, its RoPE and attention are skipped): the split
    /// attention for one token, the causal attention for more.
    pub fn record(
        &self,
        recorder: &mut StepRecorder<'_>,
        k: &Kernels,
        tokens: u32,
        slots: &[Option<SlotStep>],
    ) {
        let decode = tokens == 1;
        for node in &self.nodes {
            match node {
                Node::Embedding(b) => recorder.kernel("embedding", |p| k.embedding.dispatch(p, b)),
                Node::NormQuant(b) => {
                    recorder.kernel("rmsnorm_quant", |p| k.norm_quant.dispatch(p, b, tokens))
                }
                Node::Norm(b) => recorder.kernel("rmsnorm", |p| k.norm.dispatch(p, b, tokens)),
                Node::Ternary {
                    epilogue,
                    decode: matvec_binding,
                    prefill: matmul_binding,
                    names: [matvec_name, matmul_name],
                } => {
                    let (matvec, matmul) = k.ternary(*epilogue);
                    if tokens <= k.matvec_max_tokens {
                        recorder.kernel(matvec_name, |p| matvec.dispatch(p, matvec_binding));
                    } else {
                        recorder
                            .kernel(matmul_name, |p| matmul.dispatch(p, matmul_binding, tokens));
                    }
                }
                Node::Dense {
                    kernel,
                    binding,
                    names: [matvec_name, matmul_name],
                } => {
                    if decode {
                        recorder.kernel(matvec_name, |p| kernel.dispatch_decode(p, binding));
                    } else {
                        recorder
                            .kernel(matmul_name, |p| kernel.dispatch_prefill(p, binding, tokens));
                    }
                }
                Node::Rope { slot, binding } => {
                    if let Some(s) = slots[*slot] {
                        recorder.kernel("rope", |p| k.rope.dispatch(p, binding, s.tokens));
                    }
                }
                Node::Attention {
                    slot,
                    decode: split,
                    prefill: causal,
                } => match slots[*slot] {
                    Some(s) if s.tokens == 1 => recorder.kernel("attention_decode", |p| {
                        k.attention_decode.dispatch(p, split, s.position)
                    }),
                    Some(s) => recorder.kernel("attention_prefill", |p| {
                        k.attention_prefill.dispatch(p, causal, s.tokens)
                    }),
                    None => {}
                },
            }
        }
    }
}

/// Binds each kernel of a step description to its buffers, in order.
pub(super) struct GraphBuilder<'a> {
    pub ctx: &'a Context,
    pub config: &'a ModelConfig,
    pub kernels: &'a Kernels,
    pub act: &'a Activations,
    pub shape: AttentionShape,
    /// RoPE frequencies, per rotated pair.
    pub inv_freq: Vec<f32>,
    /// Bound as the gain of quantize-only inputs, which never read it.
    pub unused_gain: &'a GpuBuffer,
    /// Dense projection pipelines by (epilogue, dtype, width), shared by every layer.
    dense_kernels: Vec<((Epilogue, FloatDType, usize), Arc<DenseProjection>)>,
    nodes: Vec<Node>,
}

impl<'a> GraphBuilder<'a> {
    pub fn new(
        ctx: &'a Context,
        config: &'a ModelConfig,
        kernels: &'a Kernels,
        act: &'a Activations,
        shape: AttentionShape,
        unused_gain: &'a GpuBuffer,
    ) -> Self {
        GraphBuilder {
            ctx,
            config,
            kernels,
            act,
            shape,
            inv_freq: config.rope_inv_freq(),
            unused_gain,
            dense_kernels: Vec::new(),
            nodes: Vec::new(),
        }
    }

    pub fn finish(self) -> StepGraph {
        StepGraph { nodes: self.nodes }
    }

    /// `out` [T, cols] = the rows of `table` named by `ids`.
    fn embedding(
        &mut self,
        table: &crate::ops::embedding::TokenTable,
        ids: &GpuBuffer,
        out: &GpuBuffer,
    ) -> Result<()> {
        let binding = self
            .kernels
            .embedding
            .bind(self.ctx, table, &self.act.step, ids, out)?;
        self.nodes.push(Node::Embedding(binding));
        Ok(())
    }

    /// `out` = `weight` · `input` through `epilogue` (store, add to the residual, or the gated
    /// activation of gate|up). Ternary: the input's norm fused with int8 quantization into `xq`,
    /// then the ternary kernel. Dense: the f32 norm into `dense_input`, then the dense kernel.
    fn project(
        &mut self,
        site: Site,
        weight: &ProjectionWeight,
        input: Input<'_>,
        epilogue: Epilogue,
        out: &GpuBuffer,
    ) -> Result<()> {
        let (c, k, a, eps) = (self.ctx, self.kernels, self.act, self.config.rms_norm_eps);
        let [ternary_names, dense_names] = site.kernel_names();
        match weight {
            ProjectionWeight::Ternary(w) => {
                let (eps, gain) = match input.gain {
                    Some(gain) => (Some(eps), gain),
                    None => (None, self.unused_gain),
                };
                let norm =
                    k.norm_quant
                        .bind(c, input.width, eps, input.x, gain, &a.xq, &a.stats)?;
                self.nodes.push(Node::NormQuant(norm));
                let projection = ternary_projection(a, w, out);
                let (matvec, matmul) = k.ternary(epilogue);
                self.nodes.push(Node::Ternary {
                    epilogue,
                    decode: matvec.bind(c, &projection)?,
                    prefill: matmul.bind(c, &projection)?,
                    names: ternary_names,
                });
            }
            ProjectionWeight::Dense(w) => {
                let dense_input = a.dense_input.as_ref().ok_or_else(|| {
                    Error::Invalid("dense weights in a model loaded for ternary ones".into())
                })?;
                let x = match input.gain {
                    Some(gain) => {
                        let norm = k
                            .norm
                            .bind(c, input.width, eps, input.x, gain, dense_input)?;
                        self.nodes.push(Node::Norm(norm));
                        dense_input
                    }
                    None => input.x,
                };
                let kernel = self.dense_kernel(epilogue, w.table.dtype, w.table.cols);
                let binding = kernel.bind(
                    c,
                    &DenseProjectionSite {
                        weights: &w.table,
                        up: w.up.as_ref(),
                        step: &a.step,
                        x,
                        out,
                    },
                )?;
                self.nodes.push(Node::Dense {
                    kernel,
                    binding,
                    names: dense_names,
                });
            }
        }
        Ok(())
    }

    fn dense_kernel(
        &mut self,
        epilogue: Epilogue,
        dtype: FloatDType,
        cols: usize,
    ) -> Arc<DenseProjection> {
        let key = (epilogue, dtype, cols);
        if let Some((_, kernel)) = self.dense_kernels.iter().find(|(k, _)| *k == key) {
            return kernel.clone();
        }
        let kernel = Arc::new(DenseProjection::new(self.ctx, epilogue, dtype, cols));
        self.dense_kernels.push((key, kernel.clone()));
        kernel
    }

    /// Rotates q and k of slot `slot`'s rows of `qkv` in place and appends k and v at its positions
    /// of `cache` (`step`: the slot's position, token count and first row).
    fn rope_and_append(
        &mut self,
        slot: usize,
        step: &GpuBuffer,
        qkv: &GpuBuffer,
        cache: &KvCache,
    ) -> Result<()> {
        let binding = self.kernels.rope.bind(
            self.ctx,
            self.shape,
            &self.inv_freq,
            step,
            qkv,
            &cache.k,
            &cache.v,
        )?;
        self.nodes.push(Node::Rope { slot, binding });
        Ok(())
    }

    /// Slot `slot`'s rows of `out` = causal GQA attention of its queries in `qkv` over `cache`.
    fn attention(
        &mut self,
        slot: usize,
        step: &GpuBuffer,
        qkv: &GpuBuffer,
        cache: &KvCache,
        out: &GpuBuffer,
    ) -> Result<()> {
        let s = self.shape;
        let buffers = AttentionBuffers {
            step,
            q: qkv,
            q_stride: (s.heads + 2 * s.kv_heads) * s.head_dim,
            k_cache: &cache.k,
            v_cache: &cache.v,
            out,
        };
        let k = self.kernels;
        self.nodes.push(Node::Attention {
            slot,
            decode: k.attention_decode.bind(self.ctx, s, &buffers)?,
            prefill: k.attention_prefill.bind(self.ctx, s, &buffers)?,
        });
        Ok(())
    }

    /// `out` = RMSNorm(`x`) · `gain` in f32 (the norm before the LM head).
    fn final_norm(&mut self, x: &GpuBuffer, gain: &GpuBuffer, out: &GpuBuffer) -> Result<()> {
        let c = self.config;
        let binding =
            self.kernels
                .norm
                .bind(self.ctx, c.hidden_size, c.rms_norm_eps, x, gain, out)?;
        self.nodes.push(Node::Norm(binding));
        Ok(())
    }
}

fn ternary_projection<'a>(
    a: &'a Activations,
    weight: &'a TernaryWeight,
    out: &'a GpuBuffer,
) -> TernaryProjection<'a> {
    TernaryProjection {
        k: weight.cols,
        rows: weight.rows,
        weights: &weight.codes,
        row_scale: &weight.row_scale,
        step: &a.step,
        xq: &a.xq,
        stats: &a.stats,
        out,
    }
}
