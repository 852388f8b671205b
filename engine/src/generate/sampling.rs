//! Token sampling: repetition penalty, OpenAI's presence/frequency penalties and logit bias
//! ([`Penalties`]), temperature, top-k, top-p, min-p, then a seeded draw.
//!
//! The order and the semantics follow Hugging Face `generate`: the repetition penalty divides
//! positive logits and multiplies negative ones of every token seen in the history (once per
//! token, however often it occurs), temperature scales the logits, top-k keeps the k largest,
//! top-p keeps the smallest most-probable set whose mass reaches p, min-p drops tokens whose
//! probability is below `min_p` times the largest one, and the draw is made from what is left,
//! renormalized.
//!
//! Logit policy: NaN logits are dropped (never sampled), `+inf` counts as the largest finite
//! value, and when no finite logit is left `sample` returns [`Error::Invalid`] instead of
//! inventing a token.
//!
//! Determinism: a seed fixes the ChaCha stream of [`StdRng`], and candidates are always walked in
//! an order that depends only on their logits and ids, so the same seed and the same logits give
//! the same tokens on every run and platform (barring a last-ulp difference of `exp` between
//! platforms landing exactly on a draw boundary).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// How the next token is chosen. The default is greedy decoding.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Logits are divided by it; `0` (or less) means greedy: the most likely token, lowest id on ties.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Nucleus sampling in (0, 1]; `1` disables.
    pub top_p: f32,
    /// Drop tokens with probability below `min_p` × the largest probability, in [0, 1]; `0` disables.
    pub min_p: f32,
    /// HF repetition penalty (> 0); `1` disables, above 1 discourages repeats.
    pub repetition_penalty: f32,
    /// `Some` for reproducible sampling; `None` seeds from the operating system.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32| Err(Error::Invalid(format!("sampling: {what} = {v}")));
        if self.temperature.is_nan() || self.temperature.is_infinite() {
            return bad("temperature", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]; top_p", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]; min_p", self.min_p);
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty must be positive; repetition_penalty",
                self.repetition_penalty,
            );
        }
        Ok(())
    }

    /// True when the choice does not depend on the random stream.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// OpenAI's logit adjustments, applied after the repetition penalty: `logit_bias` adds its bias to
/// a token's logit, and each token generated so far in this reply loses
/// `presence + frequency × count` (count: how often the reply holds it). All zero: no change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Penalties {
    /// Subtracted once from every token the reply already holds, in [-2, 2].
    pub presence: f32,
    /// Subtracted from a token's logit once per occurrence in the reply, in [-2, 2].
    pub frequency: f32,
    /// `(token id, bias)`: added to the token's logit, bias in [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
}

impl Penalties {
    /// True when they change some logit.
    pub fn is_active(&self) -> bool {
        self.presence != 0.0
            || self.frequency != 0.0
            || self.logit_bias.iter().any(|&(_, bias)| bias != 0.0)
    }

    fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("presence_penalty", self.presence),
            ("frequency_penalty", self.frequency),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::Invalid(format!(
                    "sampling: {what} must be in [-2, 2]; {what} = {v}"
                )));
            }
        }
        if let Some(&(id, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, bias)| !(-100.0..=100.0).contains(bias))
        {
            return Err(Error::Invalid(format!(
                "sampling: a logit bias must be in [-100, 100]; token {id} has {bias}"
            )));
        }
        Ok(())
    }

    fn apply(&self, cands: &mut [(u32, f32)], generated: &[u32]) {
        if self.logit_bias.is_empty() && generated.is_empty() {
            return;
        }
        let mut delta: HashMap<u32, f32> = HashMap::new();
        for &(id, bias) in &self.logit_bias {
            *delta.entry(id).or_default() += bias;
        }
        if self.presence != 0.0 || self.frequency != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &id in generated {
                *counts.entry(id).or_default() += 1;
            }
            for (id, count) in counts {
                *delta.entry(id).or_default() -= self.presence + self.frequency * count as f32;
            }
        }
        for (id, l) in cands {
            if let Some(d) = delta.get(id) {
                *l += d;
            }
        }
    }
}

/// Chooses tokens from logits with a fixed [`SamplingParams`] and its own random stream.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    penalties: Penalties,
    rng: StdRng,
}

impl Sampler {
    /// Fails on out-of-range parameters (NaN temperature, top_p outside (0, 1], …).
    pub fn new(params: SamplingParams) -> Result<Self> {
        Self::with_penalties(params, Penalties::default())
    }

    /// [`Sampler::new`] that also applies `penalties` (out-of-range values fail).
    pub fn with_penalties(params: SamplingParams, penalties: Penalties) -> Result<Self> {
        params.validate()?;
        penalties.validate()?;
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Sampler {
            params,
            penalties,
            rng,
        })
    }

    /// The validated parameters this sampler draws with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token from the full logits row (`logits[id]`). `history` holds the tokens the
    /// repetition penalty applies to (usually prompt and generated tokens so far).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        self.sample_reply(logits, history, &[])
    }

    /// [`Sampler::sample`] for a reply that has generated `generated` so far (what the presence
    /// and frequency [`Penalties`] count).
    pub fn sample_reply(
        &mut self,
        logits: &[f32],
        history: &[u32],
        generated: &[u32],
    ) -> Result<u32> {
        let candidates = logits
            .iter()
            .enumerate()
            .map(|(id, &l)| (id as u32, l))
            .collect();
        self.pick(candidates, history, generated)
    }

    /// Picks a token from `(id, logit)` pairs, e.g. the top candidates the GPU returned; the
    /// distribution is renormalized over the candidates given.
    pub fn sample_candidates(&mut self, candidates: &[(u32, f32)], history: &[u32]) -> Result<u32> {
        self.pick(candidates.to_vec(), history, &[])
    }

    fn pick(
        &mut self,
        mut cands: Vec<(u32, f32)>,
        history: &[u32],
        generated: &[u32],
    ) -> Result<u32> {
        cands.retain(|&(_, l)| !l.is_nan());
        for (_, l) in &mut cands {
            *l = l.min(f32::MAX);
        }
        let penalty = self.params.repetition_penalty;
        if penalty != 1.0 && !history.is_empty() {
            let seen: HashSet<u32> = history.iter().copied().collect();
            for (id, l) in &mut cands {
                if seen.contains(id) {
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
        self.penalties.apply(&mut cands, generated);
        // -inf (a masked token) is never a valid choice.
        cands.retain(|&(_, l)| l > f32::NEG_INFINITY);
        if cands.is_empty() {
            return Err(Error::Invalid(crate::error::NO_FINITE_LOGIT.into()));
        }
        if self.params.is_greedy() {
            let best = cands
                .iter()
                .min_by(|a, b| by_rank(a, b))
                .expect("non-empty");
            return Ok(best.0);
        }

        // Candidates stay in the caller's order or in rank order, both independent of the sort
        // algorithm, so the draw below walks them identically everywhere.
        let mut sorted = false;
        let k = self.params.top_k;
        if k > 0 && k < cands.len() {
            cands.select_nth_unstable_by(k - 1, by_rank);
            cands.truncate(k);
            cands.sort_unstable_by(by_rank);
            sorted = true;
        }
        // Temperature only rescales: it cannot change the rank order top-k used. In f64 so that
        // logits near f32::MAX neither overflow nor cancel to NaN.
        let max = f64::from(cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max));
        let inv_t = 1.0 / f64::from(self.params.temperature);
        let weight = |l: f32| ((f64::from(l) - max) * inv_t).exp();

        if self.params.top_p < 1.0 {
            let total: f64 = cands.iter().map(|c| weight(c.1)).sum();
            // The tolerance keeps a set whose mass reaches p up to rounding from pulling in one more token.
            let target = (f64::from(self.params.top_p) - 1e-6) * total;
            let mut n = if sorted {
                cands.len()
            } else {
                256.min(cands.len())
            };
            // Sort only as long a prefix as the nucleus needs: usually a few hundred of 128k tokens.
            let keep = loop {
                if !sorted {
                    if n < cands.len() {
                        cands.select_nth_unstable_by(n - 1, by_rank);
                    }
                    cands[..n].sort_unstable_by(by_rank);
                }
                let mut mass = 0.0;
                let reached = cands[..n].iter().position(|c| {
                    mass += weight(c.1);
                    mass >= target
                });
                match reached {
                    Some(i) => break i + 1,
                    None if n == cands.len() => break n,
                    None => n = (n * 4).min(cands.len()),
                }
            };
            cands.truncate(keep);
        }
        if self.params.min_p > 0.0 {
            // The largest weight is exp(0) = 1, so the threshold is min_p itself.
            let min_p = f64::from(self.params.min_p);
            cands.retain(|c| weight(c.1) >= min_p);
        }

        let total: f64 = cands.iter().map(|c| weight(c.1)).sum();
        let u = self.rng.random::<f64>() * total;
        let mut acc = 0.0;
        for c in &cands {
            acc += weight(c.1);
            if acc > u {
                return Ok(c.0);
            }
        }
        // Rounding left `u` just past the last cumulative sum.
        Ok(cands.last().expect("max is always kept").0)
    }
}

/// Rank order: larger logit first, lower id first among equals (NaN was removed before).
fn by_rank(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The log-probabilities of one step: of the model's own distribution (log-softmax of the raw
/// logits), before temperature, penalties, bias and truncation change it.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first (lowest id on ties).
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprobs {
    /// The log-probability of `id` and the `top` most likely tokens in the `logits` row.
    pub fn of(logits: &[f32], id: u32, top: usize) -> TokenLogprobs {
        let max = logits
            .iter()
            .copied()
            .filter(|l| !l.is_nan())
            .fold(f32::NEG_INFINITY, f32::max)
            .min(f32::MAX);
        let max = f64::from(max);
        let sum: f64 = logits
            .iter()
            .filter(|l| !l.is_nan())
            .map(|&l| (f64::from(l.min(f32::MAX)) - max).exp())
            .sum();
        let log_z = max + sum.ln();
        let logprob = |l: f32| (f64::from(l) - log_z) as f32;
        let mut ranked: Vec<(u32, f32)> = (0u32..)
            .zip(logits.iter().copied())
            .filter(|(_, l)| !l.is_nan())
            .collect();
        let top = top.min(ranked.len());
        if top > 0 && top < ranked.len() {
            ranked.select_nth_unstable_by(top - 1, by_rank);
        }
        ranked.truncate(top);
        ranked.sort_unstable_by(by_rank);
        TokenLogprobs {
            logprob: logits
                .get(id as usize)
                .map_or(f32::NEG_INFINITY, |&l| logprob(l)),
            top: ranked.into_iter().map(|(i, l)| (i, logprob(l))).collect(),
        }
    }
}

/// log softmax(logits)`[index]`, in f64: a token's log-probability (perplexity sums these).
pub fn log_softmax_at(logits: &[f32], index: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits[index] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [u32; 16] = [0, 0, 1, 0, 1, 0, 1, 3, 2, 0, 2, 0, 1, 1, 1, 0];

    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(SamplingParams {
            seed: Some(7),
            ..params
        })
        .unwrap()
    }

    fn support(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<u32> {
        let mut s = sampler(params);
        let mut seen: Vec<u32> = (0..draws).map(|_| s.sample(logits, &[]).unwrap()).collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut s = sampler(params);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(logits, &[]).unwrap() as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn temp(t: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_max_and_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0], &[]).unwrap(), 1);
        assert_eq!(
            s.sample_candidates(&[(9, 1.0), (4, 1.0), (7, 0.5)], &[])
                .unwrap(),
            4
        );
        let mut k1 = sampler(SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        });
        assert_eq!(k1.sample(&[0.0, 3.0, 1.0], &[]).unwrap(), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) * 0.05).collect();
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
            seed: Some(42),
            ..Default::default()
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..200)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(&params);
        assert_eq!(a, run(&params));
        assert_ne!(
            a,
            run(&SamplingParams {
                seed: Some(43),
                ..params.clone()
            })
        );
        assert!(
            a.iter().collect::<HashSet<_>>().len() > 5,
            "it samples, not argmax"
        );
    }

    #[test]
    fn seeded_stream_is_pinned() {
        // Guards reproducibility across releases: a change of RNG or walk order shows up here.
        let logits = logits_of(&[0.4, 0.3, 0.2, 0.1]);
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(1234),
            ..Default::default()
        })
        .unwrap();
        let got: Vec<u32> = (0..16).map(|_| s.sample(&logits, &[]).unwrap()).collect();
        assert_eq!(got, PINNED);
    }

    #[test]
    fn candidates_in_id_order_sample_like_the_full_row() {
        let logits: Vec<f32> = (0..300).map(|i| ((i * 7919 % 257) as f32) * 0.02).collect();
        let cands: Vec<(u32, f32)> = (0u32..).zip(logits.iter().copied()).collect();
        let params = SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            ..Default::default()
        };
        let (mut a, mut b) = (sampler(params.clone()), sampler(params));
        for _ in 0..100 {
            assert_eq!(
                a.sample(&logits, &[3, 5]).unwrap(),
                b.sample_candidates(&cands, &[3, 5]).unwrap()
            );
        }
    }

    #[test]
    fn top_k_keeps_exactly_k() {
        let logits = logits_of(&[0.1, 0.4, 0.2, 0.3]);
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        assert_eq!(support(params, &logits, 2000), vec![1, 3]);
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        let logits = logits_of(&[0.5, 0.3, 0.15, 0.05]);
        let p = |top_p| SamplingParams {
            temperature: 1.0,
            top_p,
            ..Default::default()
        };
        assert_eq!(support(p(0.8), &logits, 2000), vec![0, 1]);
        assert_eq!(support(p(0.81), &logits, 4000), vec![0, 1, 2]);
        assert_eq!(
            support(p(0.3), &logits, 500),
            vec![0],
            "always at least one"
        );
        // Shuffled ids: the nucleus follows probability, not position.
        let mut s = sampler(p(0.8));
        let cands = [
            (10, 0.05f64.ln() as f32),
            (11, 0.3f64.ln() as f32),
            (12, 0.5f64.ln() as f32),
            (13, 0.15f64.ln() as f32),
        ];
        let got: HashSet<u32> = (0..2000)
            .map(|_| s.sample_candidates(&cands, &[]).unwrap())
            .collect();
        assert_eq!(got, HashSet::from([11, 12]));
    }

    #[test]
    fn top_p_over_a_large_vocabulary_grows_its_prefix() {
        // 2000 equally likely tokens: a 0.5 nucleus needs 1000 of them, past the first 256 sorted.
        let logits = vec![0.0f32; 2000];
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let got = support(params, &logits, 20000);
        assert_eq!(got.len(), 1000);
        assert_eq!(*got.last().unwrap(), 999, "ties broken by lowest id");
    }

    #[test]
    fn min_p_is_relative_to_max() {
        let logits = logits_of(&[0.5, 0.3, 0.15, 0.05]);
        let params = SamplingParams {
            temperature: 1.0,
            min_p: 0.25,
            ..Default::default()
        };
        // Threshold 0.125: keeps 0.5, 0.3, 0.15.
        assert_eq!(support(params, &logits, 4000), vec![0, 1, 2]);
    }

    #[test]
    fn frequencies_match_renormalized_distribution() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let logits = logits_of(&probs);
        let draws = 40000;
        let f = frequencies(temp(1.0), &logits, draws);
        for (got, want) in f.iter().zip(probs) {
            assert!((got - want).abs() < 0.01, "{f:?}");
        }
        let f = frequencies(
            SamplingParams {
                temperature: 1.0,
                top_k: 2,
                ..Default::default()
            },
            &logits,
            draws,
        );
        let want = [0.625, 0.375, 0.0, 0.0];
        for (got, want) in f.iter().zip(want) {
            assert!((got - want).abs() < 0.01, "{f:?}");
        }
        // Temperature 2 flattens: p ∝ sqrt(p).
        let roots: Vec<f64> = probs.iter().map(|p: &f64| p.sqrt()).collect();
        let z: f64 = roots.iter().sum();
        let f = frequencies(temp(2.0), &logits, draws);
        for (got, r) in f.iter().zip(&roots) {
            assert!((got - r / z).abs() < 0.01, "{f:?}");
        }
    }

    #[test]
    fn repetition_penalty_direction() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(params).unwrap();
        // Positive logit of a seen token is halved: 3.0 → 1.5 < 2.0.
        assert_eq!(s.sample(&[3.0, 2.0], &[0]).unwrap(), 1);
        // Negative logit of a seen token is doubled: -1.0 → -2.0 < -1.5.
        assert_eq!(s.sample(&[-1.0, -1.5], &[0, 0, 0]).unwrap(), 1);
        // Unseen tokens keep their logits.
        assert_eq!(s.sample(&[3.0, 2.0], &[1]).unwrap(), 0);
        // A penalty below 1 encourages repeats.
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 0.5,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[3.0, 2.0], &[1]).unwrap(), 1);
    }

    fn penalized(penalties: Penalties) -> Sampler {
        Sampler::with_penalties(SamplingParams::default(), penalties).unwrap()
    }

    #[test]
    fn frequency_penalty_counts_occurrences_in_the_reply() {
        let f = |frequency| Penalties {
            frequency,
            ..Default::default()
        };
        // Token 0 leads by 1.5; generated twice, it loses 2 × 1.0 and token 1 wins.
        let logits = [3.0, 1.5, 0.0];
        assert_eq!(
            penalized(f(1.0))
                .sample_reply(&logits, &[], &[0, 0])
                .unwrap(),
            1
        );
        // Once: it loses only 1.0 and still wins.
        assert_eq!(
            penalized(f(1.0)).sample_reply(&logits, &[], &[0]).unwrap(),
            0
        );
        // The prompt (history) does not count, only the reply.
        assert_eq!(
            penalized(f(2.0))
                .sample_reply(&logits, &[0, 0], &[])
                .unwrap(),
            0
        );
        // A negative penalty encourages repeats.
        assert_eq!(
            penalized(f(-1.0))
                .sample_reply(&logits, &[], &[1, 1])
                .unwrap(),
            1
        );
    }

    #[test]
    fn presence_penalty_counts_once() {
        let p = Penalties {
            presence: 1.0,
            ..Default::default()
        };
        let logits = [3.0, 1.5, 0.0];
        // However often token 0 occurs it loses 1.0: 2.0 > 1.5.
        assert_eq!(
            penalized(p.clone())
                .sample_reply(&logits, &[], &[0; 5])
                .unwrap(),
            0
        );
        let both = Penalties {
            presence: 1.0,
            frequency: 0.5,
            ..Default::default()
        };
        // 3.0 - 1.0 - 0.5 × 2 = 1.0 < 1.5.
        assert_eq!(
            penalized(both).sample_reply(&logits, &[], &[0, 0]).unwrap(),
            1
        );
    }

    #[test]
    fn logit_bias_adds_to_the_logit() {
        let bias = |logit_bias: Vec<(u32, f32)>| Penalties {
            logit_bias,
            ..Default::default()
        };
        let logits = [3.0, 1.5, 0.0];
        assert_eq!(
            penalized(bias(vec![(2, 100.0)]))
                .sample(&logits, &[])
                .unwrap(),
            2
        );
        assert_eq!(
            penalized(bias(vec![(0, -2.0)]))
                .sample(&logits, &[])
                .unwrap(),
            1
        );
        // -100 bans a token under sampling too.
        let mut s = Sampler::with_penalties(temp(1.0), bias(vec![(0, -100.0)])).unwrap();
        for _ in 0..200 {
            assert_ne!(s.sample(&[0.0, 0.0, 0.0], &[]).unwrap(), 0);
        }
        assert!(!bias(vec![(0, 0.0)]).is_active());
        assert!(bias(vec![(0, 1.0)]).is_active());
    }

    #[test]
    fn rejects_bad_penalties() {
        for p in [
            Penalties {
                presence: 2.5,
                ..Default::default()
            },
            Penalties {
                frequency: f32::NAN,
                ..Default::default()
            },
            Penalties {
                logit_bias: vec![(1, -101.0)],
                ..Default::default()
            },
        ] {
            assert!(Sampler::with_penalties(SamplingParams::default(), p).is_err());
        }
    }

    #[test]
    fn token_logprobs_are_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN];
        let lp = TokenLogprobs::of(&logits, 2, 3);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|l| l.exp()).sum();
        let want = |l: f64| (l - z.ln()) as f32;
        assert!((lp.logprob - want(2.0)).abs() < 1e-6, "{lp:?}");
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2], "most likely first, lowest id on ties");
        assert!((lp.top[0].1 - want(3.0)).abs() < 1e-6);
        assert!((lp.logprob - log_softmax_at(&logits[..4], 2) as f32).abs() < 1e-6);
        assert_eq!(TokenLogprobs::of(&logits, 0, 0).top, []);
        assert_eq!(TokenLogprobs::of(&logits, 0, 99).top.len(), 4);
    }

    #[test]
    fn nan_and_inf_policy() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[f32::NAN, 1.0, 0.5], &[]).unwrap(), 1);
        assert_eq!(s.sample(&[1.0, f32::INFINITY], &[]).unwrap(), 1);
        assert!(s.sample(&[f32::NAN, f32::NEG_INFINITY], &[]).is_err());
        assert!(s.sample(&[], &[]).is_err());
        let mut s = sampler(temp(1.0));
        for _ in 0..100 {
            assert_eq!(
                s.sample(&[f32::NAN, 0.0, f32::NEG_INFINITY, f32::NAN], &[])
                    .unwrap(),
                1
            );
            assert_eq!(s.sample(&[0.0, f32::INFINITY, 5.0], &[]).unwrap(), 1);
        }
    }

    #[test]
    fn rejects_bad_params() {
        for p in [
            temp(f32::NAN),
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(p).is_err());
        }
    }
}
