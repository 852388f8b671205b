//! One reply being generated: its sampler, its stop conditions and the text streamed so far. A
//! [`super::Session`] runs one at a time, a [`super::Batch`] one per request; both feed it each
//! step's result and act on what it says.

use crate::generate::{
    GenerateOptions, Generation, Model, Sampler, StopReason, TokenLogprobs, GPU_TOP_K,
};
use crate::model::{Output, StepResult};
use crate::text::stream::{StopMatcher, TextStreamer};
use crate::{Error, Result};

pub(super) struct Reply {
    sampler: Sampler,
    output: Output,
    streamer: TextStreamer,
    stops: StopMatcher,
    max_new_tokens: usize,
    /// Ids that end the reply (empty with `ignore_eos`), sorted.
    end_ids: Vec<u32>,
    /// Generated ids (a final EOS included).
    ids: Vec<u32>,
    text: String,
    /// Alternatives per token when log-probabilities are asked for.
    logprobs: Option<usize>,
}

/// The token a step chose, the text it completes, and whether the reply ends with it.
pub(super) struct Accepted {
    pub id: u32,
    pub text: String,
    pub stop: Option<StopReason>,
    pub logprobs: Option<TokenLogprobs>,
}

impl Reply {
    pub fn new(model: &Model, options: &GenerateOptions) -> Result<Reply> {
        let sampling = &options.sampling;
        let penalties = &options.penalties;
        let vocab = model.config().vocab_size;
        if let Some((id, _)) = penalties
            .logit_bias
            .iter()
            .find(|&&(id, _)| id as usize >= vocab)
        {
            return Err(Error::Invalid(format!(
                "logit_bias: token id {id} is outside the vocabulary ({vocab})"
            )));
        }
        // The cheapest readback that serves the sampling: the argmax for greedy decoding, the
        // GPU's top-k candidates when top-k bounds the choice, the full logits otherwise (and
        // whenever a penalty or bias changes logits, or log-probabilities are asked for).
        let output = if sampling.repetition_penalty != 1.0
            || penalties.is_active()
            || options.logprobs.is_some()
        {
            Output::LastLogits
        } else if sampling.is_greedy() {
            Output::Argmax
        } else if (1..=GPU_TOP_K).contains(&sampling.top_k) {
            Output::TopK(sampling.top_k)
        } else {
            Output::LastLogits
        };
        Ok(Reply {
            sampler: Sampler::with_penalties(sampling.clone(), penalties.clone())?,
            output,
            streamer: TextStreamer::new(model.tokenizer().clone(), true),
            stops: StopMatcher::new(options.stop.iter().cloned()),
            max_new_tokens: options.max_new_tokens,
            end_ids: match options.ignore_eos {
                true => Vec::new(),
                false => model.0.end_ids.clone(),
            },
            ids: Vec::new(),
            text: String::new(),
            logprobs: options.logprobs,
        })
    }

    /// What each step of this reply reads back.
    pub fn output(&self) -> Output {
        self.output
    }

    /// Chooses the next token from a step's `result` (`history`: the tokens in the cache, for the
    /// repetition penalty; the reply's own tokens count for the presence and frequency penalties)
    /// and streams its text.
    pub fn accept(&mut self, result: StepResult, history: &[u32]) -> Result<Accepted> {
        let mut logprobs = None;
        let id = match result {
            StepResult::Token(id) => id,
            StepResult::Candidates(c) => {
                let pairs: Vec<(u32, f32)> = c.iter().map(|c| (c.index, c.value)).collect();
                self.sampler.sample_candidates(&pairs, history)?
            }
            StepResult::Logits(logits) => {
                let id = self.sampler.sample_reply(&logits, history, &self.ids)?;
                logprobs = self.logprobs.map(|n| TokenLogprobs::of(&logits, id, n));
                id
            }
        };
        self.ids.push(id);
        if self.end_ids.binary_search(&id).is_ok() {
            return Ok(Accepted {
                id,
                text: String::new(),
                stop: Some(StopReason::EndOfSequence),
                logprobs,
            });
        }
        let text = self.stops.push(&self.streamer.push(id)?);
        self.text.push_str(&text);
        let stop = match self.stops.stopped() {
            Some(stop) => Some(StopReason::StopString(stop.to_string())),
            None if self.ids.len() >= self.max_new_tokens => Some(StopReason::MaxTokens),
            None => None,
        };
        Ok(Accepted {
            id,
            text,
            stop,
            logprobs,
        })
    }

    /// Ends the reply for `stop_reason`: the text held back until now (a partial character, a
    /// prefix of a stop string that never completed) and the whole generation.
    pub fn finish(mut self, stop_reason: StopReason) -> Result<(String, Generation)> {
        let mut tail = String::new();
        if !matches!(stop_reason, StopReason::StopString(_)) {
            tail = self.stops.push(&self.streamer.finish()?) + &self.stops.flush();
            self.text.push_str(&tail);
        }
        let generation = Generation {
            ids: self.ids,
            text: self.text,
            stop_reason,
            prompt_tokens: 0,
            prefilled_tokens: 0,
            prefill_seconds: 0.0,
            decode_seconds: 0.0,
        };
        Ok((tail, generation))
    }
}
