//! Several sequences of one model stepping together: continuous batching on one GPU.
//!
//! A [`SequenceBatch`] holds `slots` sequences of one [`Transformer`]. Each slot has its own KV cache,
//! allocated once and reused by every sequence that takes the slot (no paging: the attention
//! kernels read one contiguous cache per sequence, and a slot's memory is known when the batch is
//! made). Two kinds of step run on it:
//! - **prefill** of one slot, in chunks of at most `max_batch` tokens, through activations shared
//!   by every slot (one slot prefills at a time, so one set suffices);
//! - **decode** of one token for each of several slots at once: the embedding, every norm,
//!   projection and the LM head run once over all their rows (the weights are read once per step
//!   whatever the number of sequences), and each slot's RoPE and attention run over its own cache
//!   at its own position. Slot `s` is row `s` of the decode activations.
//!
//! A row's numbers never depend on the other rows: norms and quantization are per row, ternary
//! projections accumulate exact integers and share one epilogue, the LM head reduces each row in
//! the same order whatever the row count, attention is per sequence. So a sequence decoded in a
//! batch gets bit-identical logits to the same sequence alone (tests/tests/batch.rs).

use crate::error::NO_FINITE_LOGIT;
use crate::format::config::ModelConfig;
use crate::gpu::{read_buffer, AllocationCount, KernelProfile, KernelTiming, StepRecorder};
use crate::model::forward::{
    read_f32, LastLayerActivations, ModelOptions, Output, StepResult, Transformer,
};
use crate::model::graph::{bitnet_step, Activations, GraphBuilder, Slot, SlotStep, StepGraph};
use crate::model::limits;
use crate::ops::attention::KvCacheDtype;
use crate::ops::dense_matvec::DenseMatvecBinding;
use crate::ops::select::{Candidate, SelectBinding, MAX_TOP_K};
use crate::ops::StepParams;
use crate::{Error, Result};

/// One token of one slot in a decode step, and what to read back for it.
#[derive(Clone, Copy, Debug)]
pub struct DecodeRow {
    /// The slot whose sequence the token extends.
    pub slot: usize,
    /// The token, at the slot's current position.
    pub token: u32,
    /// What to read back: [`Output::Argmax`], [`Output::TopK`] or [`Output::LastLogits`].
    pub output: Output,
}

/// `slots` sequences of one model, each with its own KV cache, stepping together (see the module
/// documentation).
pub struct SequenceBatch {
    model: Transformer,
    config: ModelConfig,
    max_context: usize,
    max_batch: usize,
    slots: Vec<Slot>,
    /// Tokens in each slot's cache.
    positions: Vec<usize>,
    prefill: Stage,
    /// The bound kernels of a prefill chunk, one graph per slot (its cache).
    prefill_graphs: Vec<StepGraph>,
    /// Batches of more than one slot: activations of one row per slot and the graph over all.
    decode: Option<(Stage, StepGraph)>,
    top_k_len: usize,
    state_bytes: u64,
}

/// Activations and the bound LM head and token selection over them.
struct Stage {
    act: Activations,
    /// The last row's logits (`act.logits`) from `act.last`.
    head_last: DenseMatvecBinding,
    /// Every row's logits (`act.all_logits`) from `act.normed`.
    head_all: DenseMatvecBinding,
    /// Prefill: over `act.logits`; decode: over each row of `act.all_logits`.
    argmax: SelectBinding,
    top_k: SelectBinding,
}

impl Stage {
    fn new(
        model: &Transformer,
        rows: usize,
        select_all_rows: bool,
        options: &ModelOptions,
    ) -> Result<Stage> {
        let (c, config) = (model.context(), model.config());
        let (weights, kernels) = (model.weights(), model.kernels());
        let act = Activations::new(c, config, options.projections, rows)?;
        let head = weights.head();
        let head_last = kernels
            .lm_head
            .bind(c, head, &act.last_step, &act.last, &act.logits)?;
        let head_all = kernels
            .lm_head
            .bind(c, head, &act.step, &act.normed, &act.all_logits)?;
        let v = config.vocab_size;
        let logits = if select_all_rows {
            &act.all_logits
        } else {
            &act.logits
        };
        let argmax = kernels.argmax.bind(c, v, logits, &act.argmax)?;
        let top_k = kernels
            .top_k
            .bind(c, v, MAX_TOP_K.min(v), logits, &act.top_k)?;
        Ok(Stage {
            act,
            head_last,
            head_all,
            argmax,
            top_k,
        })
    }
}

/// The context a cache of `max_context` positions gets: capped at the model's
/// `max_position_embeddings`, at least 1.
fn capped_context(config: &ModelConfig, max_context: usize) -> usize {
    max_context.min(config.max_position_embeddings).max(1)
}

/// Bytes of one sequence's KV cache (every layer's K and V) for a model of `config` asked for
/// `max_context` positions stored as `kv_cache`: what [`SequenceBatch::slot_bytes`] reports once
/// allocated, known before anything is.
pub fn slot_bytes(config: &ModelConfig, max_context: usize, kv_cache: KvCacheDtype) -> u64 {
    let shape = limits::attention_shape(config, capped_context(config, max_context), kv_cache);
    2 * config.num_layers as u64 * shape.cache_bytes()
}

impl SequenceBatch {
    /// `slots` empty sequences with KV caches of `max_context` positions (capped at the model's
    /// `max_position_embeddings`) storing k and v as `kv_cache`, and prefill chunks of `max_batch`
    /// tokens, with every bind group of both steps. Sizes past the device's limits fail, naming the
    /// largest that fit.
    pub async fn new(
        model: &Transformer,
        slots: usize,
        max_context: usize,
        max_batch: usize,
        kv_cache: KvCacheDtype,
    ) -> Result<SequenceBatch> {
        let ctx = model.context();
        let config = model.config().clone();
        if slots == 0 {
            return Err(Error::Invalid("a batch needs at least one slot".into()));
        }
        let options = ModelOptions {
            max_context: capped_context(&config, max_context),
            max_batch: max_batch.max(1),
            projections: model.projections(),
            kv_cache,
            lm_head: model.lm_head(),
        };
        let on_adapter = |exceeded: limits::LimitExceeded| exceeded.into_error(&ctx.adapter_name());
        limits::check(&ctx.limits, &config, &options).map_err(on_adapter)?;
        limits::check_batch(&ctx.limits, &config, options.projections, slots)
            .map_err(on_adapter)?;
        let allocations = AllocationCount::start();
        let (weights, kernels) = (model.weights(), model.kernels());
        let shape = limits::attention_shape(&config, options.max_context, kv_cache);
        let slots = (0..slots)
            .map(|_| Slot::new(ctx, config.num_layers, shape))
            .collect::<Result<Vec<_>>>()?;
        let graph = |act: &Activations, slots: &[Slot]| -> Result<StepGraph> {
            let mut builder =
                GraphBuilder::new(ctx, &config, kernels, act, shape, &weights.final_norm);
            bitnet_step(&mut builder, weights, act, slots)?;
            Ok(builder.finish())
        };
        let prefill = Stage::new(model, options.max_batch, false, &options)?;
        let prefill_graphs = slots
            .iter()
            .map(|slot| graph(&prefill.act, std::slice::from_ref(slot)))
            .collect::<Result<Vec<_>>>()?;
        let decode = if slots.len() > 1 {
            let stage = Stage::new(model, slots.len(), true, &options)?;
            let all = graph(&stage.act, &slots)?;
            Some((stage, all))
        } else {
            None
        };
        let state_bytes = allocations.finish();
        // Bind groups report validation errors asynchronously: surface them here.
        ctx.wait().await?;
        Ok(SequenceBatch {
            model: model.clone(),
            max_context: options.max_context,
            max_batch: options.max_batch,
            positions: vec![0; slots.len()],
            slots,
            prefill,
            prefill_graphs,
            decode,
            top_k_len: MAX_TOP_K.min(config.vocab_size),
            config,
            state_bytes,
        })
    }

    /// The model whose weights the batch runs.
    pub fn transformer(&self) -> &Transformer {
        &self.model
    }

    /// Sequences the batch holds at once.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Positions in each slot's KV cache.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Tokens per prefill chunk.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Tokens in slot `slot`'s KV cache.
    pub fn position(&self, slot: usize) -> usize {
        self.positions[slot]
    }

    /// Keeps the first `tokens` positions of slot `slot`'s cache and forgets the rest (0: the slot
    /// is empty, ready for a new sequence).
    pub fn truncate(&mut self, slot: usize, tokens: usize) {
        self.positions[slot] = self.positions[slot].min(tokens);
    }

    /// Bytes on the GPU that the batch alone holds: every slot's KV cache, the activations and
    /// kernel parameters (the weights are the [`Transformer`]'s).
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// Bytes of one slot's KV cache ([`slot_bytes`] of the batch's sizes).
    pub fn slot_bytes(&self) -> u64 {
        self.slots[0]
            .cache
            .iter()
            .map(|kv| kv.k.size + kv.v.size)
            .sum()
    }

    /// Feeds `ids` to slot `slot` at its position, in chunks of at most `max_batch` tokens, and
    /// returns `output` for the last chunk.
    pub async fn forward(
        &mut self,
        slot: usize,
        ids: &[u32],
        output: Output,
    ) -> Result<StepResult> {
        self.check_slot(slot)?;
        if ids.is_empty() {
            return Err(Error::Invalid("forward needs at least one token".into()));
        }
        self.check_ids(ids)?;
        let needed = self.positions[slot] + ids.len();
        if needed > self.max_context {
            return Err(Error::ContextOverflow {
                needed,
                limit: self.max_context,
            });
        }
        let chunks: Vec<&[u32]> = ids.chunks(self.max_batch).collect();
        let mut all_logits = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let chunk_output = if output == Output::AllLogits {
                Output::AllLogits
            } else if last {
                output
            } else {
                Output::Argmax
            };
            let read = last || output == Output::AllLogits;
            let (result, _) = self
                .prefill_chunk(slot, chunk, chunk_output, read, None)
                .await?;
            match (result, last) {
                (StepResult::Logits(l), _) if output == Output::AllLogits => all_logits.extend(l),
                (result, true) => return Ok(result),
                _ => {}
            }
        }
        Ok(StepResult::Logits(all_logits))
    }

    /// One decode step of slot `slot`'s `token` (argmax) whose kernels are timed one by one with
    /// `timing` (see [`StepRecorder`]).
    pub async fn profile_decode(
        &mut self,
        slot: usize,
        token: u32,
        timing: KernelTiming,
    ) -> Result<(u32, KernelProfile)> {
        self.check_slot(slot)?;
        self.check_ids(&[token])?;
        if self.positions[slot] >= self.max_context {
            return Err(Error::ContextOverflow {
                needed: self.positions[slot] + 1,
                limit: self.max_context,
            });
        }
        match self
            .prefill_chunk(slot, &[token], Output::Argmax, true, Some(timing))
            .await?
        {
            (StepResult::Token(next), Some(profile)) => Ok((next, profile)),
            (other, _) => Err(Error::Gpu(format!(
                "a profiled argmax step returned {other:?} without a profile"
            ))),
        }
    }

    /// One token for each row's slot, all in one step; returns each row's `output` in order. A
    /// slot appears at most once; slots not named do nothing.
    pub async fn decode(&mut self, rows: &[DecodeRow]) -> Result<Vec<StepResult>> {
        for (i, row) in rows.iter().enumerate() {
            self.check_slot(row.slot)?;
            self.check_ids(&[row.token])?;
            if rows[..i].iter().any(|other| other.slot == row.slot) {
                return Err(Error::Invalid(format!(
                    "slot {} appears twice in one decode step",
                    row.slot
                )));
            }
            if self.positions[row.slot] >= self.max_context {
                return Err(Error::ContextOverflow {
                    needed: self.positions[row.slot] + 1,
                    limit: self.max_context,
                });
            }
            if matches!(row.output, Output::AllLogits) {
                return Err(Error::Invalid(
                    "a decode step reads one row's logits at most (Output::LastLogits)".into(),
                ));
            }
        }
        match rows {
            [] => Ok(Vec::new()),
            // One sequence: the prefill path with one token is the same kernels, over one row.
            [row] => {
                let (result, _) = self
                    .prefill_chunk(row.slot, &[row.token], row.output, true, None)
                    .await?;
                Ok(vec![result])
            }
            _ => self.decode_rows(rows).await,
        }
    }

    async fn decode_rows(&mut self, rows: &[DecodeRow]) -> Result<Vec<StepResult>> {
        let model = self.model.clone();
        let (ctx, k) = (model.context(), model.kernels());
        let (stage, graph) = self
            .decode
            .as_ref()
            .expect("a batch of more than one slot has a decode graph");
        // Rows 0 ..= the highest slot; a free slot's row carries token 0 and nothing reads it.
        let used_rows = 1 + rows.iter().map(|r| r.slot).max().expect("rows");
        let mut ids = vec![0u32; used_rows];
        let mut slot_steps = vec![None; self.slots.len()];
        for row in rows {
            ids[row.slot] = row.token;
            let position = self.positions[row.slot] as u32;
            let params = StepParams {
                pos: position,
                tokens: 1,
                row: row.slot as u32,
                _pad: 0,
            };
            self.slots[row.slot]
                .step
                .write(ctx, 0, bytemuck::bytes_of(&params));
            slot_steps[row.slot] = Some(SlotStep {
                position,
                tokens: 1,
            });
        }
        let tokens = used_rows as u32;
        let step = StepParams {
            tokens,
            ..StepParams::default()
        };
        let act = &stage.act;
        act.step.write(ctx, 0, bytemuck::bytes_of(&step));
        act.ids.write(ctx, 0, bytemuck::cast_slice(&ids));

        let mut recorder = StepRecorder::new(ctx, None)?;
        graph.record(&mut recorder, k, tokens, &slot_steps);
        recorder.kernel("lm_head", |pass| k.lm_head.dispatch(pass, &stage.head_all));
        let wants = |f: fn(&Output) -> bool| rows.iter().any(|r| f(&r.output));
        let (argmax, top_k, logits) = (
            wants(|o| matches!(o, Output::Argmax)),
            wants(|o| matches!(o, Output::TopK(_))),
            wants(|o| matches!(o, Output::LastLogits)),
        );
        if argmax {
            recorder.kernel("argmax", |pass| {
                k.argmax.dispatch(pass, &stage.argmax, tokens)
            });
        }
        if top_k {
            recorder.kernel("top_k", |pass| k.top_k.dispatch(pass, &stage.top_k, tokens));
        }
        recorder.finish().await?;
        for row in rows {
            self.positions[row.slot] += 1;
        }

        let vocab = self.config.vocab_size;
        let candidate_bytes = self.top_k_len * size_of::<Candidate>();
        let argmax_ids: Vec<u32> = if argmax {
            bytemuck::pod_collect_to_vec(
                &read_buffer(ctx, &act.argmax.buffer, 0, tokens as u64 * 4).await?,
            )
        } else {
            Vec::new()
        };
        let candidates = if top_k {
            let bytes = (used_rows * candidate_bytes) as u64;
            read_buffer(ctx, &act.top_k.buffer, 0, bytes).await?
        } else {
            Vec::new()
        };
        let all_logits = if logits {
            let bytes = (used_rows * vocab * 4) as u64;
            read_f32(ctx, &act.all_logits, bytes).await?
        } else {
            Vec::new()
        };
        rows.iter()
            .map(|row| {
                let s = row.slot;
                Ok(match row.output {
                    Output::Argmax => token_result(argmax_ids[s])?,
                    Output::TopK(k) => candidates_result(
                        &candidates[s * candidate_bytes..(s + 1) * candidate_bytes],
                        k.min(self.top_k_len),
                    ),
                    _ => StepResult::Logits(all_logits[s * vocab..(s + 1) * vocab].to_vec()),
                })
            })
            .collect()
    }

    /// The last layer's activations of the last prefill chunk, [T, width] each (see
    /// [`super::Sequence::last_layer_activations`]).
    pub async fn last_layer_activations(&self, tokens: usize) -> Result<LastLayerActivations> {
        let ctx = self.model.context();
        let (c, act) = (&self.config, &self.prefill.act);
        let bytes = |width: usize| (tokens * width * 4) as u64;
        Ok(LastLayerActivations {
            attention: read_f32(ctx, &act.attention, bytes(c.num_heads * c.head_dim)).await?,
            ffn_activation: read_f32(ctx, &act.ffn, bytes(c.intermediate_size)).await?,
            residual: read_f32(ctx, &act.x, bytes(c.hidden_size)).await?,
            final_norm: read_f32(ctx, &act.normed, bytes(c.hidden_size)).await?,
        })
    }

    /// One submit of a prefill chunk (one per kernel when `timing` is set): `ids` at slot `slot`'s
    /// position, reading back `output` when `read` is set.
    async fn prefill_chunk(
        &mut self,
        slot: usize,
        ids: &[u32],
        output: Output,
        read: bool,
        timing: Option<KernelTiming>,
    ) -> Result<(StepResult, Option<KernelProfile>)> {
        let model = self.model.clone();
        let (ctx, k) = (model.context(), model.kernels());
        let (stage, act) = (&self.prefill, &self.prefill.act);
        let tokens = ids.len() as u32;
        let position = self.positions[slot] as u32;
        let params = StepParams {
            pos: position,
            tokens,
            ..StepParams::default()
        };
        act.step.write(ctx, 0, bytemuck::bytes_of(&params));
        self.slots[slot]
            .step
            .write(ctx, 0, bytemuck::bytes_of(&params));
        act.ids.write(ctx, 0, bytemuck::cast_slice(ids));

        let mut recorder = StepRecorder::new(ctx, timing)?;
        let slot_step = SlotStep { position, tokens };
        self.prefill_graphs[slot].record(&mut recorder, k, tokens, &[Some(slot_step)]);
        let hidden_bytes = (self.config.hidden_size * 4) as u64;
        let head = if output == Output::AllLogits {
            &stage.head_all
        } else {
            recorder.encoder().copy_buffer_to_buffer(
                &act.normed.buffer,
                (tokens as u64 - 1) * hidden_bytes,
                &act.last.buffer,
                0,
                hidden_bytes,
            );
            &stage.head_last
        };
        recorder.kernel("lm_head", |pass| k.lm_head.dispatch(pass, head));
        match output {
            Output::Argmax => {
                recorder.kernel("argmax", |pass| k.argmax.dispatch(pass, &stage.argmax, 1))
            }
            Output::TopK(_) => {
                recorder.kernel("top_k", |pass| k.top_k.dispatch(pass, &stage.top_k, 1))
            }
            Output::LastLogits | Output::AllLogits => {}
        }
        let profile = recorder.finish().await?;
        self.positions[slot] += ids.len();
        if !read {
            ctx.wait().await?;
            return Ok((StepResult::Token(0), profile));
        }
        let vocab = self.config.vocab_size as u64;
        let result = match output {
            Output::Argmax => {
                let bytes = read_buffer(ctx, &act.argmax.buffer, 0, 4).await?;
                token_result(bytemuck::pod_read_unaligned(&bytes[..4]))?
            }
            Output::TopK(k) => {
                let bytes = (self.top_k_len * size_of::<Candidate>()) as u64;
                let bytes = read_buffer(ctx, &act.top_k.buffer, 0, bytes).await?;
                candidates_result(&bytes, k.min(self.top_k_len))
            }
            Output::LastLogits => StepResult::Logits(read_f32(ctx, &act.logits, vocab * 4).await?),
            Output::AllLogits => {
                StepResult::Logits(read_f32(ctx, &act.all_logits, tokens as u64 * vocab * 4).await?)
            }
        };
        Ok((result, profile))
    }

    fn check_slot(&self, slot: usize) -> Result<()> {
        if slot >= self.slots.len() {
            return Err(Error::Invalid(format!(
                "slot {slot} does not exist: the batch has {} slots",
                self.slots.len()
            )));
        }
        Ok(())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            Some(bad) => Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.config.vocab_size
            ))),
            None => Ok(()),
        }
    }
}

/// The argmax kernel's answer: a token, or `u32::MAX` for a row without a finite logit.
fn token_result(id: u32) -> Result<StepResult> {
    match id {
        u32::MAX => Err(Error::Invalid(NO_FINITE_LOGIT.into())),
        token => Ok(StepResult::Token(token)),
    }
}

/// The top-k kernel's candidates (a row of them, as bytes), the best `k` that exist.
fn candidates_result(bytes: &[u8], k: usize) -> StepResult {
    let mut candidates: Vec<Candidate> = bytemuck::pod_collect_to_vec(bytes);
    candidates.truncate(k);
    candidates.retain(|c| c.index != u32::MAX);
    StepResult::Candidates(candidates)
}
