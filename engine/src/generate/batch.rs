//! Many generations of one model at once (continuous batching): a [`Batch`] takes requests at any
//! time and runs them together on the model's GPU, a step at a time.
//!
//! Each step the scheduler
//! 1. ends cancelled requests, waiting or running;
//! 2. admits waiting requests, oldest first, into free slots (each slot is a KV cache of the
//!    batch's context length, allocated once and reused) — into the slot whose cache already holds
//!    the longest part of the prompt (a chat that grows turn by turn), of which whole prefill chunks
//!    are kept;
//! 3. runs **one prefill chunk** (at most `max_batch` prompt tokens) of the oldest request still
//!    reading its prompt, so a long prompt delays the others by one chunk per step, never by the
//!    whole prompt;
//! 4. runs **one decode step** for every request that has a token to feed: one pass over the
//!    weights for all of them, each attending over its own cache.
//!
//! Each request has its own sampler (parameters and seed), stop strings and token budget; its
//! tokens and text come back as [`BatchEvent`]s. A request's reply is identical to the one it gets
//! alone in the batch (tests/tests/batch.rs): no number depends on what shares the step. Keeping
//! only whole chunks of an earlier prompt keeps that true: those keys and values are exactly what
//! the same chunks would compute again, while a cut inside a chunk (or through the reply's tokens,
//! computed one at a time) would change how later positions are computed, and with them the bits.

use std::collections::VecDeque;

use crate::generate::{
    check_prompt, common_prefix, now, GenerateOptions, Generation, Model, Reply, StopReason,
    TokenLogprobs,
};
use crate::model::{DecodeRow, KvCacheDtype, SequenceBatch, StepResult};
use crate::{Error, Result};

/// The sizes of a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// Requests generated at once (each holds a KV cache of `max_context` positions); more wait.
    pub slots: usize,
    /// KV-cache length of each slot in tokens (capped at the model's `max_position_embeddings`).
    pub max_context: usize,
    /// Prompt tokens per prefill chunk.
    pub max_batch: usize,
    /// How each slot's KV cache stores k and v: [`KvCacheDtype::F16`] (the engine's default) takes
    /// half the memory of [`KvCacheDtype::F32`], so twice the slots fit in the same memory.
    pub kv_cache: KvCacheDtype,
}

/// Names a request submitted to a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// What a [`Batch::step`] produced for one request.
#[derive(Debug)]
pub enum BatchEvent {
    /// The request's next token and the text it completes (often empty mid-character).
    Token {
        /// The request.
        request: RequestId,
        /// The token id.
        id: u32,
        /// Text completed by the token.
        text: String,
        /// Its log-probabilities, when [`GenerateOptions::logprobs`] asked for them.
        logprobs: Option<TokenLogprobs>,
    },
    /// The request ended; `text` is what was held back until now (often empty). Its slot is free.
    Finished {
        /// The request.
        request: RequestId,
        /// Text released at the end (a partial character, an unfinished stop-string prefix).
        text: String,
        /// The whole generation.
        generation: Generation,
    },
    /// The request failed (its slot is free); the others go on.
    Failed {
        /// The request.
        request: RequestId,
        /// Why.
        error: Error,
    },
}

impl BatchEvent {
    /// The request the event belongs to.
    pub fn request(&self) -> RequestId {
        match self {
            BatchEvent::Token { request, .. }
            | BatchEvent::Finished { request, .. }
            | BatchEvent::Failed { request, .. } => *request,
        }
    }
}

struct Waiting {
    request: RequestId,
    prompt: Vec<u32>,
    reply: Reply,
}

/// A request in a slot.
struct Running {
    request: RequestId,
    prompt: Vec<u32>,
    reply: Reply,
    /// Tokens in the slot's cache: the prompt read so far, then the reply.
    history: Vec<u32>,
    /// Prompt tokens whose keys and values the slot already held.
    kept: usize,
    /// The token chosen last, to feed at the next decode step.
    next: Option<u32>,
    cancelled: bool,
    prefill_started: f64,
    prefill_seconds: f64,
    /// When the first token was chosen.
    decode_started: Option<f64>,
}

/// Generations of one [`Model`] stepping together (see the module documentation). Make one with
/// [`Model::batch`], [`Batch::submit`] requests, and call [`Batch::step`] until [`Batch::is_idle`].
pub struct Batch {
    model: Model,
    sequences: SequenceBatch,
    slots: Vec<Option<Running>>,
    waiting: VecDeque<Waiting>,
    /// Requests cancelled while waiting: they end at the next step.
    cancelled: Vec<Waiting>,
    /// The prompt tokens each free slot's cache holds (its last request's, as far as it was read),
    /// set when that request ends.
    cached_prompts: Vec<Vec<u32>>,
    next_request: u64,
}

impl Model {
    /// A batch of `options.slots` concurrent generations on this model's weights.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn batch(&self, options: BatchOptions) -> Result<Batch> {
        pollster::block_on(self.open_batch(options))
    }

    /// [`Model::batch`] without blocking (the browser).
    pub async fn open_batch(&self, options: BatchOptions) -> Result<Batch> {
        let sequences = SequenceBatch::new(
            self.transformer(),
            options.slots,
            options.max_context,
            options.max_batch,
            options.kv_cache,
        )
        .await?;
        Ok(Batch {
            model: self.clone(),
            slots: (0..sequences.slots()).map(|_| None).collect(),
            cached_prompts: vec![Vec::new(); sequences.slots()],
            sequences,
            waiting: VecDeque::new(),
            cancelled: Vec::new(),
            next_request: 0,
        })
    }
}

impl Batch {
    /// The model the batch runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Requests generated at once.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Positions of each slot's KV cache.
    pub fn max_context(&self) -> usize {
        self.sequences.max_context()
    }

    /// Bytes on the GPU the batch holds (every slot's KV cache, the activations), weights aside.
    pub fn state_bytes(&self) -> u64 {
        self.sequences.state_bytes()
    }

    /// Bytes of one slot's KV cache.
    pub fn slot_bytes(&self) -> u64 {
        self.sequences.slot_bytes()
    }

    /// Requests in a slot now.
    pub fn running(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Nothing to do: no request running, waiting or ending.
    pub fn is_idle(&self) -> bool {
        self.running() == 0 && self.waiting.is_empty() && self.cancelled.is_empty()
    }

    /// Queues a generation after `prompt` (ids, BOS included if wanted). A prompt that leaves no
    /// room for a reply in a slot's context, or names ids outside the vocabulary, is refused here.
    pub fn submit(&mut self, prompt: Vec<u32>, options: GenerateOptions) -> Result<RequestId> {
        check_prompt(&self.model, &prompt, self.max_context())?;
        // Sampling parameters are checked now, not when a slot frees up.
        let reply = Reply::new(&self.model, &options)?;
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.waiting.push_back(Waiting {
            request,
            prompt,
            reply,
        });
        Ok(request)
    }

    /// Ends `request` at the next step ([`StopReason::Cancelled`]), whether it waits or runs.
    /// Unknown or finished requests are ignored.
    pub fn cancel(&mut self, request: RequestId) {
        if let Some(i) = self.waiting.iter().position(|w| w.request == request) {
            let waiting = self.waiting.remove(i).expect("position is in range");
            self.cancelled.push(waiting);
        }
        for running in self.slots.iter_mut().flatten() {
            if running.request == request {
                running.cancelled = true;
            }
        }
    }

    /// One step of the schedule (see the module documentation); returns what happened to each
    /// request. Errors of one request are [`BatchEvent::Failed`]; an `Err` means the device is
    /// lost.
    pub async fn step(&mut self) -> Result<Vec<BatchEvent>> {
        let mut events = Vec::new();
        for waiting in self.cancelled.drain(..) {
            events.push(BatchEvent::Finished {
                request: waiting.request,
                text: String::new(),
                generation: Generation {
                    ids: Vec::new(),
                    text: String::new(),
                    stop_reason: StopReason::Cancelled,
                    prompt_tokens: waiting.prompt.len(),
                    prefilled_tokens: 0,
                    prefill_seconds: 0.0,
                    decode_seconds: 0.0,
                },
            });
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(|r| r.cancelled) {
                self.finish(slot, StopReason::Cancelled, &mut events)?;
            }
        }
        self.admit();
        self.prefill_one_chunk(&mut events).await?;
        self.decode(&mut events).await?;
        Ok(events)
    }

    fn admit(&mut self) {
        while self.slots.iter().any(Option::is_none) {
            let Some(waiting) = self.waiting.pop_front() else {
                break;
            };
            // The free slot that keeps the most of the prompt (the lowest on a tie).
            let chunk = self.sequences.max_batch();
            let (kept, slot) = (0..self.slots.len())
                .filter(|&slot| self.slots[slot].is_none())
                .map(|slot| {
                    let cached = &self.cached_prompts[slot];
                    let shared =
                        common_prefix(cached, &waiting.prompt).min(waiting.prompt.len() - 1);
                    (shared / chunk * chunk, slot)
                })
                .max_by_key(|&(kept, slot)| (kept, std::cmp::Reverse(slot)))
                .expect("a free slot");
            self.sequences.truncate(slot, kept);
            self.slots[slot] = Some(Running {
                request: waiting.request,
                reply: waiting.reply,
                history: waiting.prompt[..kept].to_vec(),
                kept,
                prompt: waiting.prompt,
                next: None,
                cancelled: false,
                prefill_started: now(),
                prefill_seconds: 0.0,
                decode_started: None,
            });
        }
    }

    /// The next chunk of the prompt of the request admitted first among those still reading theirs.
    async fn prefill_one_chunk(&mut self, events: &mut Vec<BatchEvent>) -> Result<()> {
        let reading = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| r.as_ref().map(|r| (slot, r)))
            .filter(|(_, r)| r.history.len() < r.prompt.len())
            .min_by_key(|(_, r)| r.request);
        let Some((slot, running)) = reading else {
            return Ok(());
        };
        let start = running.history.len();
        let end = running.prompt.len().min(start + self.sequences.max_batch());
        let chunk = running.prompt[start..end].to_vec();
        let output = running.reply.output();
        let result = self.sequences.forward(slot, &chunk, output).await;
        let running = self.slots[slot].as_mut().expect("the slot runs a request");
        running.history.extend_from_slice(&chunk);
        match result {
            Ok(result) if end == running.prompt.len() => {
                running.prefill_seconds = now() - running.prefill_started;
                running.decode_started = Some(now());
                self.take(slot, result, events)
            }
            Ok(_) => Ok(()),
            Err(error) => self.fail(slot, error, events),
        }
    }

    /// One token for every request that has one to feed, in one step.
    async fn decode(&mut self, events: &mut Vec<BatchEvent>) -> Result<()> {
        let rows: Vec<DecodeRow> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| {
                let r = r.as_ref()?;
                Some(DecodeRow {
                    slot,
                    token: r.next?,
                    output: r.reply.output(),
                })
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        match self.sequences.decode(&rows).await {
            Ok(results) => {
                for (row, result) in rows.iter().zip(results) {
                    let running = self.slots[row.slot].as_mut().expect("a running slot");
                    running.history.push(row.token);
                    running.next = None;
                    self.take(row.slot, result, events)?;
                }
            }
            Err(error @ Error::Gpu(_)) => return Err(error),
            // A step fails as a whole (a row without a finite logit, say): its requests fail.
            Err(error) => {
                for row in &rows {
                    self.fail(row.slot, Error::Invalid(error.to_string()), events)?;
                }
            }
        }
        Ok(())
    }

    /// Chooses slot `slot`'s next token from its step's `result`, streams it, and ends the request
    /// if that was its last.
    fn take(
        &mut self,
        slot: usize,
        result: StepResult,
        events: &mut Vec<BatchEvent>,
    ) -> Result<()> {
        let position = self.sequences.position(slot);
        let limit = self.sequences.max_context();
        let running = self.slots[slot].as_mut().expect("a running slot");
        let token = match running.reply.accept(result, &running.history) {
            Ok(token) => token,
            Err(error) => return self.fail(slot, error, events),
        };
        events.push(BatchEvent::Token {
            request: running.request,
            id: token.id,
            text: token.text,
            logprobs: token.logprobs,
        });
        let stop = match token.stop {
            Some(stop) => Some(stop),
            None if position >= limit => Some(StopReason::ContextFull),
            None => None,
        };
        match stop {
            Some(stop) => self.finish(slot, stop, events),
            None => {
                running.next = Some(token.id);
                Ok(())
            }
        }
    }

    fn finish(
        &mut self,
        slot: usize,
        stop: StopReason,
        events: &mut Vec<BatchEvent>,
    ) -> Result<()> {
        let running = self.slots[slot].take().expect("a running slot");
        let prefilled = running.prompt.len().min(running.history.len());
        self.cached_prompts[slot] = running.history[..prefilled].to_vec();
        let (text, generation) = running.reply.finish(stop)?;
        let decode_seconds = running
            .decode_started
            .map_or(0.0, |started| now() - started);
        events.push(BatchEvent::Finished {
            request: running.request,
            text,
            generation: Generation {
                prompt_tokens: running.prompt.len(),
                prefilled_tokens: prefilled - running.kept,
                prefill_seconds: running.prefill_seconds,
                decode_seconds,
                ..generation
            },
        });
        Ok(())
    }

    fn fail(&mut self, slot: usize, error: Error, events: &mut Vec<BatchEvent>) -> Result<()> {
        self.cached_prompts[slot].clear();
        if let Error::Gpu(_) = error {
            // The device itself failed: nothing further can run.
            return Err(error);
        }
        let running = self.slots[slot].take().expect("a running slot");
        events.push(BatchEvent::Failed {
            request: running.request,
            error,
        });
        Ok(())
    }
}
