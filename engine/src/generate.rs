//! Generation: a [`Session`] holds a loaded model with its tokenizer and chat template, and turns a
//! prompt into streamed tokens — sampling, stop conditions (EOS/end-of-turn ids, stop strings, token
//! budget), cancellation, and reuse of the KV cache for a prompt that extends the previous one.

pub mod sampling;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::format::checkpoint::Checkpoint;
use crate::format::gguf::MetaValue;
use crate::gpu::Context;
use crate::model::weights::LoadProgress;
use crate::model::{Model, ModelOptions, Output, StepResult};
use crate::text::chat_template::{ChatMessage, ChatTemplate};
use crate::text::stream::{StopMatcher, TextStreamer};
use crate::text::tokenizer::Tokenizer;
use crate::{Error, Result};
pub use sampling::{log_softmax_at, Sampler, SamplingParams};

/// Largest top-k served from the GPU's candidate list instead of full logits.
const GPU_TOP_K: usize = crate::ops::select::MAX_TOP_K;

/// How one [`Session::generate`] call runs. The default: greedy decoding of up to 256 tokens,
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
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
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
    /// The [`CancelToken`] was cancelled.
    Cancelled,
}

/// The outcome of [`Session::generate`]: tokens, text, why it stopped and how long it took.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (including a final EOS token, if one ended it).
    pub ids: Vec<u32>,
    /// Generated text, without special tokens and stop strings.
    pub text: String,
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

/// Cancels a running generation from another thread (or a UI callback). Clones share one flag;
/// once cancelled a token stays cancelled, so use a new one per generation.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Ends the generation using this token after its current token ([`StopReason::Cancelled`]).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether [`CancelToken::cancel`] was called on this token or a clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One streamed token: its id and the text it completes (often empty mid-character).
pub struct TokenEvent<'a> {
    /// The token id.
    pub id: u32,
    /// The text it completes, without special tokens and held-back stop-string prefixes.
    pub text: &'a str,
}

/// A model loaded on the GPU with its tokenizer and chat template, and one conversation's KV cache.
/// Load one with [`Session::load`]; see the crate docs for a complete example.
pub struct Session {
    /// The weights on the GPU and the forward pass.
    pub model: Model,
    /// Encodes prompts and decodes generated ids.
    pub tokenizer: Tokenizer,
    /// The checkpoint's chat template (or a plain fallback), used by [`Session::chat_prompt`].
    pub template: ChatTemplate,
    /// Ids that end generation.
    end_ids: Vec<u32>,
    /// Tokens whose keys and values are in the cache, in order.
    history: Vec<u32>,
}

impl Session {
    /// Loads the model onto `ctx`'s device, with the tokenizer and chat template of `checkpoint`.
    pub async fn load(
        ctx: Arc<Context>,
        checkpoint: &Checkpoint,
        options: ModelOptions,
        progress: LoadProgress<'_>,
    ) -> Result<Session> {
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
        let model = Model::load(ctx, checkpoint, options, progress).await?;
        Ok(Session {
            model,
            tokenizer,
            template,
            end_ids,
            history: Vec::new(),
        })
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        self.history.clear();
        self.model.reset();
    }

    /// The ids of a chat prompt: the template rendered with a generation prompt, without a second BOS.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.template.prompt_ids(&self.tokenizer, messages)
    }

    /// Teacher-forced logits [ids.len(), vocab] from an empty cache. `one_at_a_time` feeds the
    /// tokens through the decode path one by one instead of one prefill batch.
    pub async fn logits(&mut self, ids: &[u32], one_at_a_time: bool) -> Result<Vec<f32>> {
        self.reset();
        let mut logits = Vec::with_capacity(ids.len() * self.model.config.vocab_size);
        if one_at_a_time {
            for &id in ids {
                logits.extend(expect_logits(
                    self.model.forward(&[id], Output::LastLogits).await?,
                )?);
            }
        } else {
            logits = expect_logits(self.model.forward(ids, Output::AllLogits).await?)?;
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
        cancel: &CancelToken,
        mut on_token: impl FnMut(TokenEvent<'_>),
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        let limit = self.model.options.max_context;
        if prompt.len() >= limit {
            return Err(Error::ContextOverflow {
                needed: prompt.len() + 1,
                limit,
            });
        }
        let mut sampler = Sampler::new(options.sampling.clone())?;
        let output = output_for(&options.sampling);

        // Reuse the cache for the common prefix; at least the last prompt token is recomputed.
        let reused = common_prefix(&self.history, prompt).min(prompt.len() - 1);
        self.history.truncate(reused);
        self.model.truncate(reused);
        let started = now();
        let mut next = self.model.forward(&prompt[reused..], output).await?;
        self.history.extend_from_slice(&prompt[reused..]);
        let prefill_seconds = now() - started;

        let mut streamer = TextStreamer::new(self.tokenizer.clone(), true);
        let mut stops = StopMatcher::new(options.stop.iter().cloned());
        let mut generated: Vec<u32> = Vec::new();
        let mut text = String::new();
        let decode_started = now();
        let stop_reason = loop {
            let id = choose(&mut sampler, next, &self.history)?;
            generated.push(id);
            if !options.ignore_eos && self.end_ids.binary_search(&id).is_ok() {
                on_token(TokenEvent { id, text: "" });
                break StopReason::EndOfSequence;
            }
            let shown = stops.push(&streamer.push(id)?);
            text.push_str(&shown);
            on_token(TokenEvent { id, text: &shown });
            if let Some(stop) = stops.stopped() {
                break StopReason::StopString(stop.to_string());
            }
            if generated.len() >= options.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if cancel.is_cancelled() {
                break StopReason::Cancelled;
            }
            if self.model.position() >= limit {
                break StopReason::ContextFull;
            }
            next = self.model.forward(&[id], output).await?;
            self.history.push(id);
        };
        if !matches!(stop_reason, StopReason::StopString(_)) {
            let tail = stops.push(&streamer.finish()?) + &stops.flush();
            if !tail.is_empty() {
                text.push_str(&tail);
                on_token(TokenEvent {
                    id: *generated.last().expect("one token"),
                    text: &tail,
                });
            }
        }
        Ok(Generation {
            ids: generated,
            text,
            stop_reason,
            prompt_tokens: prompt.len(),
            prefilled_tokens: prompt.len() - reused,
            prefill_seconds,
            decode_seconds: now() - decode_started,
        })
    }
}

/// The cheapest readback that serves `sampling`: the argmax for greedy decoding, the GPU's top-k
/// candidates when top-k bounds the choice, the full logits otherwise.
fn output_for(sampling: &SamplingParams) -> Output {
    if sampling.repetition_penalty != 1.0 {
        Output::LastLogits
    } else if sampling.is_greedy() {
        Output::Argmax
    } else if (1..=GPU_TOP_K).contains(&sampling.top_k) {
        Output::TopK(sampling.top_k)
    } else {
        Output::LastLogits
    }
}

fn choose(sampler: &mut Sampler, result: StepResult, history: &[u32]) -> Result<u32> {
    match result {
        StepResult::Token(id) => Ok(id),
        StepResult::Candidates(c) => {
            let pairs: Vec<(u32, f32)> = c.iter().map(|c| (c.index, c.value)).collect();
            sampler.sample_candidates(&pairs, history)
        }
        StepResult::Logits(logits) => sampler.sample(&logits, history),
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

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

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
