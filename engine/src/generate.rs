//! The front door: a [`Model`] is a checkpoint loaded on the GPU with its tokenizer and chat
//! template; each [`Session`] of it is one conversation (its own KV cache; the weights are shared)
//! that turns a prompt into streamed tokens — sampling, stop conditions (EOS/end-of-turn ids, stop
//! strings, token budget), cancellation, and reuse of the KV cache for a prompt that extends the
//! previous one.

mod batch;
mod reply;
pub mod sampling;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::format::checkpoint::Checkpoint;
use crate::format::config::ModelConfig;
use crate::format::gguf::MetaValue;
use crate::gpu::Context;
use crate::model::weights::LoadProgress;
use crate::model::weights::{LmHead, ProjectionKind};
use crate::model::{KvCacheDtype, Output, Sequence, StepResult, Transformer};
use crate::text::chat_template::{ChatMessage, ChatTemplate};
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
pub use batch::{Batch, BatchEvent, BatchOptions, RequestId};
use reply::Reply;
pub use sampling::{log_softmax_at, Penalties, Sampler, SamplingParams, TokenLogprobs};

/// Largest top-k served from the GPU's candidate list instead of full logits.
const GPU_TOP_K: usize = crate::ops::select::MAX_TOP_K;

/// How one [`Session::generate`] or [`Session::chat`] call runs. The default: greedy decoding of up to 256 tokens,
/// stopping at EOS / end-of-turn tokens.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Tokens to generate at most (an ending EOS token included).
    pub max_new_tokens: usize,
    /// Temperature, top-k, top-p, min-p, repetition penalty and seed.
    pub sampling: SamplingParams,
    /// Generation ends before any of these strings; they are not part of the text.
    pub stop: Vec<String>,
    /// Keep going past EOS / end-of-turn tokens (benchmarks, parity checks).
    pub ignore_eos: bool,
    /// OpenAI's presence and frequency penalties and logit bias (none by default).
    pub penalties: Penalties,
    /// `Some(n)`: give every token its [`TokenLogprobs`] with the `n` most likely alternatives
    /// (each step then reads the full logits back).
    pub logprobs: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            penalties: Penalties::default(),
            logprobs: None,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence or end-of-turn token.
    EndOfSequence,
    /// One of [`GenerateOptions::stop`] (not part of the text).
    StopString(String),
    /// [`GenerateOptions::max_new_tokens`] were generated.
    MaxTokens,
    /// The KV cache is full.
    ContextFull,
    /// The session's [`CancelHandle`] was cancelled.
    Cancelled,
}

/// The outcome of [`Session::generate`]: tokens, text, why it stopped and how long it took.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (including a final EOS token, if one ended it).
    pub ids: Vec<u32>,
    /// Generated text, without special tokens and stop strings.
    pub text: String,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens actually computed (the rest came from the KV cache).
    pub prefilled_tokens: usize,
    /// Wall time of the prompt's forward pass (0 in the browser, which has no clock here).
    pub prefill_seconds: f64,
    /// Wall time from the first sampled token to the end.
    pub decode_seconds: f64,
}

/// Stops a running generation from another thread (or a UI callback): get one from
/// [`Session::cancel_handle`]. Clones share one flag, which every generation of the session clears
/// when it starts, so one handle serves a Stop button for the whole conversation.
#[derive(Clone, Debug, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Ends the generation running now after its current token ([`StopReason::Cancelled`]).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether [`CancelHandle::cancel`] was called since the current generation started.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn rearm(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// One streamed token: its id and the text it completes (often empty mid-character).
pub struct TokenEvent<'a> {
    /// The token id.
    pub id: u32,
    /// The text it completes, without special tokens and held-back stop-string prefixes.
    pub text: &'a str,
    /// Its log-probabilities, when [`GenerateOptions::logprobs`] asked for them (`None` on the event
    /// that only releases held-back text at the end).
    pub logprobs: Option<&'a TokenLogprobs>,
}

/// A checkpoint loaded on the GPU with its tokenizer and chat template. Open [`Session`]s on it with
/// [`Model::session`]: they share the weights. Cloning is cheap (a handle on the same model).
#[derive(Clone)]
pub struct Model(Arc<LoadedModel>);

struct LoadedModel {
    transformer: Transformer,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// Ids that end generation, sorted.
    end_ids: Vec<u32>,
}

/// How [`Model::open_with`] finds the GPU and loads the weights.
pub struct OpenOptions<'a> {
    /// The device to load onto; `None`: the adapter `TERN_BACKEND` / `TERN_ADAPTER` name, else the
    /// best GPU.
    pub context: Option<Context>,
    /// Ternary projections (BitNet b1.58) or the dense baseline (needs float latent weights).
    pub projections: ProjectionKind,
    /// The LM head as stored (default) or int8 made at load: half the head's bytes per decode step
    /// for a small change in the logits ([`LmHead`]).
    pub lm_head: LmHead,
    /// Show a progress bar on stderr while a Hugging Face repo downloads.
    pub download_progress: bool,
    /// Called with (tensors uploaded, tensors in all) while the weights load.
    pub progress: Option<LoadProgress<'a>>,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            context: None,
            projections: ProjectionKind::Ternary,
            lm_head: LmHead::Stored,
            download_progress: true,
            progress: None,
        }
    }
}

/// The sizes of one [`Session`]'s KV cache and prefill batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// KV-cache length in tokens (capped at the model's `max_position_embeddings`). A cache larger
    /// than the device's binding limit fails, naming the largest that fits.
    pub max_context: usize,
    /// Tokens per prefill batch; longer prompts run in several batches.
    pub max_batch: usize,
    /// How the KV cache stores k and v: [`KvCacheDtype::F16`] (the default) halves its memory and
    /// attention's reads of it; [`KvCacheDtype::F32`] keeps them exact.
    pub kv_cache: KvCacheDtype,
}

impl Default for SessionOptions {
    /// The engine's default sizes ([`crate::model::ModelOptions::default`]): 4096 positions,
    /// prefill batches of 128, an f16 KV cache.
    fn default() -> Self {
        let sizes = crate::model::ModelOptions::default();
        SessionOptions {
            max_context: sizes.max_context,
            max_batch: sizes.max_batch,
            kv_cache: sizes.kv_cache,
        }
    }
}

impl Model {
    /// Opens `source` — a model directory, a `.gguf` file, or a Hugging Face repo id such as
    /// `microsoft/bitnet-b1.58-2B-4T` (downloaded into the HF cache on first use) — on the best GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(source: &str) -> Result<Model> {
        Self::open_with(source, OpenOptions::default())
    }

    /// [`Model::open`] with a chosen adapter and projection kind, and progress reports.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_with(source: &str, options: OpenOptions<'_>) -> Result<Model> {
        let path = crate::hub::resolve(source, options.download_progress)?;
        let checkpoint = Checkpoint::open(&path)?;
        let ctx = match options.context {
            Some(ctx) => ctx,
            None => pollster::block_on(Context::new(&crate::gpu::ContextOptions::from_env()))?,
        };
        let mut no_progress = |_: usize, _: usize| {};
        let progress = options.progress.unwrap_or(&mut no_progress);
        pollster::block_on(Self::load(
            &ctx,
            &checkpoint,
            options.projections,
            options.lm_head,
            progress,
        ))
    }

    /// Loads an opened checkpoint onto `ctx`'s device: the async form of [`Model::open`], for the
    /// browser (where nothing may block) and for checkpoints read from elsewhere.
    // In the browser wgpu's handles are neither Send nor Sync, and there is one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub async fn load(
        ctx: &Context,
        checkpoint: &Checkpoint,
        projections: ProjectionKind,
        lm_head: LmHead,
        progress: LoadProgress<'_>,
    ) -> Result<Model> {
        let tokenizer = tokenizer_of(checkpoint)?;
        let template = match &checkpoint.chat_template {
            Some(source) => ChatTemplate::new(source).map_err(|e| {
                let field = match checkpoint.gguf_metadata {
                    Some(_) => "tokenizer.chat_template",
                    None => "chat_template",
                };
                Error::format(text_file(checkpoint, "tokenizer_config.json"), field, e)
            })?,
            None => ChatTemplate::fallback_for(&tokenizer),
        };
        let mut end_ids = tokenizer.end_of_generation_ids();
        end_ids.extend(&checkpoint.config.eos_token_ids);
        end_ids.sort_unstable();
        end_ids.dedup();
        // The largest id, not the count: a vocabulary with gaps can name rows past the end.
        let rows = checkpoint.config.vocab_size;
        if let Some(max_id) = tokenizer.max_id().filter(|&id| id as usize >= rows) {
            return Err(Error::format(
                text_file(checkpoint, "tokenizer.json"),
                "vocab",
                format!(
                    "the tokenizer uses ids up to {max_id} but the model's embedding has only \
                     {rows} rows: the tokenizer does not belong to this model"
                ),
            ));
        }
        let transformer =
            Transformer::load(ctx, checkpoint, projections, lm_head, progress).await?;
        Ok(Model(Arc::new(LoadedModel {
            transformer,
            tokenizer,
            template,
            end_ids,
        })))
    }

    /// A new conversation: its own KV cache and activations on the GPU, the model's weights.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn session(&self, options: SessionOptions) -> Result<Session> {
        pollster::block_on(self.open_session(options))
    }

    /// [`Model::session`] without blocking (the browser).
    pub async fn open_session(&self, options: SessionOptions) -> Result<Session> {
        let sequence = Sequence::new(
            &self.0.transformer,
            options.max_context,
            options.max_batch,
            options.kv_cache,
        )
        .await?;
        Ok(Session {
            model: self.clone(),
            sequence,
            history: Vec::new(),
            cancel: CancelHandle::default(),
        })
    }

    /// The model's architecture: sizes, vocabulary, special tokens.
    pub fn config(&self) -> &ModelConfig {
        self.0.transformer.config()
    }

    /// Encodes prompts and decodes generated ids.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.0.tokenizer
    }

    /// The checkpoint's chat template (or a plain fallback).
    pub fn template(&self) -> &ChatTemplate {
        &self.0.template
    }

    /// The weights on the GPU and the pipelines that run them.
    pub fn transformer(&self) -> &Transformer {
        &self.0.transformer
    }

    /// The ids of a chat prompt: the template rendered with a generation prompt, without a second
    /// BOS, control-token text inside messages tokenized as text.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.0.template.prompt_ids(&self.0.tokenizer, messages)
    }
}

/// One conversation with a [`Model`]: its KV cache on the GPU, the tokens in it, and a
/// [`CancelHandle`]. Several sessions of one model share its weights.
pub struct Session {
    model: Model,
    sequence: Sequence,
    /// Tokens whose keys and values are in the cache, in order.
    history: Vec<u32>,
    cancel: CancelHandle,
}

impl Session {
    /// The model this session runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The KV cache length in tokens (the asked one, capped at the model's positions).
    pub fn max_context(&self) -> usize {
        self.sequence.options.max_context
    }

    /// Tokens in the KV cache now.
    pub fn position(&self) -> usize {
        self.sequence.position()
    }

    /// Bytes on the GPU that this session alone holds (its KV cache, activations and kernel
    /// parameters).
    pub fn state_bytes(&self) -> u64 {
        self.sequence.state_bytes()
    }

    /// Bytes on the GPU this session uses, the shared weights included.
    pub fn gpu_bytes(&self) -> u64 {
        self.sequence.gpu_bytes()
    }

    /// A handle that stops this session's running generation from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        self.history.clear();
        self.sequence.reset();
    }

    /// Replies to `messages` (the whole conversation so far, rendered with the model's chat
    /// template), calling `on_token` for every token; the cached prefix of the previous turn is
    /// reused.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_token: impl FnMut(TokenEvent<'_>),
    ) -> Result<Generation> {
        pollster::block_on(self.chat_async(messages, options, on_token))
    }

    /// [`Session::chat`] without blocking (the browser).
    pub async fn chat_async(
        &mut self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        on_token: impl FnMut(TokenEvent<'_>),
    ) -> Result<Generation> {
        let prompt = self.model.chat_prompt(messages)?;
        self.generate(&prompt, options, on_token).await
    }

    /// Teacher-forced logits [ids.len(), vocab] from an empty cache. `one_at_a_time` feeds the
    /// tokens through the decode path one by one instead of one prefill batch.
    pub async fn logits(&mut self, ids: &[u32], one_at_a_time: bool) -> Result<Vec<f32>> {
        self.reset();
        let mut logits = Vec::with_capacity(ids.len() * self.model.config().vocab_size);
        if one_at_a_time {
            for &id in ids {
                logits.extend(expect_logits(
                    self.sequence.forward(&[id], Output::LastLogits).await?,
                )?);
            }
        } else {
            logits = expect_logits(self.sequence.forward(ids, Output::AllLogits).await?)?;
        }
        self.history = ids.to_vec();
        Ok(logits)
    }

    /// Generates after `prompt` (ids, BOS included if wanted), calling `on_token` for every token.
    /// A prompt that extends the previous prompt + reply reuses the cached prefix.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_token: impl FnMut(TokenEvent<'_>),
    ) -> Result<Generation> {
        self.cancel.rearm();
        let limit = self.max_context();
        check_prompt(&self.model, prompt, limit)?;
        let mut reply = Reply::new(&self.model, options)?;

        // Reuse the cache for the common prefix; at least the last prompt token is recomputed.
        let reused = common_prefix(&self.history, prompt).min(prompt.len() - 1);
        self.history.truncate(reused);
        self.sequence.truncate(reused);
        let started = now();
        let mut next = self
            .sequence
            .forward(&prompt[reused..], reply.output())
            .await?;
        self.history.extend_from_slice(&prompt[reused..]);
        let prefill_seconds = now() - started;

        let decode_started = now();
        let stop_reason = loop {
            let token = reply.accept(next, &self.history)?;
            on_token(TokenEvent {
                id: token.id,
                text: &token.text,
                logprobs: token.logprobs.as_ref(),
            });
            if let Some(stop) = token.stop {
                break stop;
            }
            if self.cancel.is_cancelled() {
                break StopReason::Cancelled;
            }
            if self.sequence.position() >= limit {
                break StopReason::ContextFull;
            }
            next = self.sequence.forward(&[token.id], reply.output()).await?;
            self.history.push(token.id);
        };
        let (tail, generation) = reply.finish(stop_reason)?;
        if !tail.is_empty() {
            on_token(TokenEvent {
                id: *generation.ids.last().expect("a reply has a token"),
                text: &tail,
                logprobs: None,
            });
        }
        Ok(Generation {
            prompt_tokens: prompt.len(),
            prefilled_tokens: prompt.len() - reused,
            prefill_seconds,
            decode_seconds: now() - decode_started,
            ..generation
        })
    }
}

fn expect_logits(result: StepResult) -> Result<Vec<f32>> {
    match result {
        StepResult::Logits(l) => Ok(l),
        other => Err(Error::Invalid(format!(
            "expected logits from the model, got {other:?}"
        ))),
    }
}

/// A prompt must have a token, leave room for a reply in a cache of `limit` positions, and name
/// only ids of the model's vocabulary.
fn check_prompt(model: &Model, prompt: &[u32], limit: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Invalid("empty prompt".into()));
    }
    if prompt.len() >= limit {
        return Err(Error::ContextOverflow {
            needed: prompt.len() + 1,
            limit,
        });
    }
    let vocab = model.config().vocab_size;
    match prompt.iter().find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        ))),
        None => Ok(()),
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Seconds since the Unix epoch (0 in the browser, which has no clock here).
fn now() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
    #[cfg(target_arch = "wasm32")]
    {
        0.0
    }
}

/// The file that `hf_file` (tokenizer.json, tokenizer_config.json) of `checkpoint` came from, for
/// error messages: the GGUF file itself, or `hf_file` beside the safetensors weights.
fn text_file(checkpoint: &Checkpoint, hf_file: &str) -> String {
    let weights = checkpoint.sources.first().map_or("", |s| s.name());
    match checkpoint.gguf_metadata {
        Some(_) => weights.to_string(),
        None => std::path::Path::new(weights)
            .with_file_name(hf_file)
            .display()
            .to_string(),
    }
}

/// The checkpoint's tokenizer: tokenizer.json, or the vocabulary in GGUF metadata.
pub fn tokenizer_of(checkpoint: &Checkpoint) -> Result<Tokenizer> {
    let config = &checkpoint.config;
    if let Some(json) = &checkpoint.tokenizer_json {
        let tokenizer = Tokenizer::from_json(&text_file(checkpoint, "tokenizer.json"), json)?;
        return Ok(
            tokenizer.with_special_ids(config.bos_token_id, config.eos_token_ids.first().copied())
        );
    }
    let Some(meta) = &checkpoint.gguf_metadata else {
        return Err(Error::Tokenizer(
            "the model directory has no tokenizer.json (SentencePiece tokenizer.model alone is not supported)".into(),
        ));
    };
    let strings = |key: &str| -> Vec<String> {
        meta.get(key)
            .and_then(MetaValue::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let id = |key: &str| {
        meta.get(key)
            .and_then(MetaValue::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let types: Option<Vec<i32>> = meta
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_u64().map_or(-1, |t| i32::try_from(t).unwrap_or(-1)))
                .collect()
        });
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .unwrap_or("gpt2");
    Tokenizer::from_gguf(
        &strings("tokenizer.ggml.tokens"),
        types.as_deref(),
        &strings("tokenizer.ggml.merges"),
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
        model,
    )
}
