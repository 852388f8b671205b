//! Continuous batching in the engine: sequences decoded together in a `SequenceBatch` get
//! bit-identical logits to each sequence run alone in a `Sequence`, whatever shares the step with
//! them — sequences admitted and retired between steps, slots reused, rows left idle between busy
//! ones, and each row reading back a different output (argmax, top-k, logits) — with the stored LM
//! head and with the int8 one.

use tern::format::checkpoint::Checkpoint;
use tern::model::weights::{LmHead, ProjectionKind};
use tern::model::{
    slot_bytes, DecodeRow, KvCacheDtype, Output, Sequence, SequenceBatch, StepResult, Transformer,
};
use tern_tests::contexts;
use tern_tests::goldens::fixture;

const CONTEXT: usize = 96;
const CHUNK: usize = 16;

fn load(ctx: &tern::gpu::Context, lm_head: LmHead) -> Transformer {
    let checkpoint = Checkpoint::open(&fixture("bitnet-2b4t")).unwrap();
    let projections = ProjectionKind::Ternary;
    pollster::block_on(Transformer::load(
        ctx,
        &checkpoint,
        projections,
        lm_head,
        &mut |_, _| {},
    ))
    .unwrap()
}

/// A prompt and how many tokens to decode after it.
struct Request {
    prompt: Vec<u32>,
    decode: usize,
}

fn requests(vocab: u32) -> Vec<Request> {
    // Mixed lengths: one token, shorter and longer than a prefill chunk, several chunks.
    let lengths = [1, 3, 17, 40, 5, 33, 2, 9, 16, 12];
    let budgets = [6, 9, 3, 12, 1, 7, 10, 4, 8, 5];
    lengths
        .iter()
        .zip(budgets)
        .enumerate()
        .map(|(i, (&len, decode))| Request {
            prompt: (0..len)
                .map(|j| (1 + i as u32 * 7919 + j as u32 * 104_729) % vocab)
                .collect(),
            decode,
        })
        .collect()
}

fn logits(result: StepResult) -> Vec<f32> {
    match result {
        StepResult::Logits(logits) => logits,
        other => panic!("expected logits, got {other:?}"),
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Each request alone: the logits after its prompt and after each greedy token.
fn alone(model: &Transformer, request: &Request) -> Vec<Vec<f32>> {
    let mut sequence = pollster::block_on(Sequence::new(
        model,
        CONTEXT,
        CHUNK,
        KvCacheDtype::default(),
    ))
    .unwrap();
    let mut steps = vec![logits(
        pollster::block_on(sequence.forward(&request.prompt, Output::LastLogits)).unwrap(),
    )];
    for _ in 0..request.decode {
        let token = argmax(steps.last().unwrap());
        steps.push(logits(
            pollster::block_on(sequence.forward(&[token], Output::LastLogits)).unwrap(),
        ));
    }
    steps
}

/// A sequence in a slot of the batch: which request, and the logits it has seen so far.
struct Running {
    request: usize,
    steps: Vec<Vec<f32>>,
}

#[test]
fn batched_sequences_get_the_logits_they_get_alone() {
    batched_logits_match_alone(LmHead::Stored);
}

#[test]
fn batched_sequences_get_the_logits_they_get_alone_with_an_int8_head() {
    batched_logits_match_alone(LmHead::Int8);
}

fn batched_logits_match_alone(lm_head: LmHead) {
    for ctx in contexts() {
        let adapter = ctx.adapter_name();
        let model = load(ctx, lm_head);
        let vocab = model.config().vocab_size;
        let requests = requests(vocab as u32);
        let expected: Vec<Vec<Vec<f32>>> = requests.iter().map(|r| alone(&model, r)).collect();

        let mut batch = pollster::block_on(SequenceBatch::new(
            &model,
            4,
            CONTEXT,
            CHUNK,
            KvCacheDtype::default(),
        ))
        .unwrap();
        let mut slots: Vec<Option<Running>> = (0..4).map(|_| None).collect();
        let mut waiting = 0..requests.len();
        let mut finished = 0;
        let mut step = 0usize;
        while finished < requests.len() {
            // Admit one waiting request per step into the highest free slot, so that rows below
            // busy ones sit idle now and then.
            if let Some(slot) = slots.iter().rposition(Option::is_none) {
                if let Some(request) = waiting.next() {
                    batch.truncate(slot, 0);
                    let first = pollster::block_on(batch.forward(
                        slot,
                        &requests[request].prompt,
                        Output::LastLogits,
                    ))
                    .unwrap();
                    slots[slot] = Some(Running {
                        request,
                        steps: vec![logits(first)],
                    });
                }
            }
            // One decode step for every running sequence that has tokens left; rows cycle through
            // the three outputs.
            let mut rows = Vec::new();
            for (slot, running) in slots.iter().enumerate() {
                let Some(running) = running else { continue };
                if running.steps.len() > requests[running.request].decode {
                    continue;
                }
                let output = match (slot + step) % 3 {
                    0 => Output::Argmax,
                    1 => Output::TopK(5),
                    _ => Output::LastLogits,
                };
                let token = argmax(running.steps.last().unwrap());
                rows.push(DecodeRow {
                    slot,
                    token,
                    output,
                });
            }
            let results = pollster::block_on(batch.decode(&rows)).unwrap();
            for (row, result) in rows.iter().zip(results) {
                let running = slots[row.slot].as_mut().unwrap();
                let at = running.steps.len();
                let want = &expected[running.request][at];
                let what = format!(
                    "request {} token {at} in slot {} of {} rows on {adapter}, {lm_head:?} head",
                    running.request,
                    row.slot,
                    rows.len()
                );
                match result {
                    StepResult::Token(id) => assert_eq!(id, argmax(want), "{what}"),
                    StepResult::Candidates(candidates) => {
                        assert_eq!(candidates.len(), 5, "{what}");
                        assert_eq!(candidates[0].index, argmax(want), "{what}");
                        for c in candidates {
                            let value = want[c.index as usize];
                            assert_eq!(c.value.to_bits(), value.to_bits(), "{what}");
                        }
                    }
                    StepResult::Logits(logits) => {
                        let bits = |l: &[f32]| l.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&logits), bits(want), "{what}: logits differ");
                    }
                }
                // The next token comes from the expected logits: every row, whatever it read
                // back, continues exactly as alone.
                running.steps.push(want.clone());
            }
            for slot in slots.iter_mut() {
                if slot
                    .as_ref()
                    .is_some_and(|r| r.steps.len() > requests[r.request].decode)
                {
                    *slot = None;
                    finished += 1;
                }
            }
            step += 1;
        }
        assert_eq!(waiting.len(), 0);
    }
}

/// `model::slot_bytes` (what the server sizes `--parallel` from) is what a batch allocates, for
/// both cache dtypes, an odd context and one past the model's maximum (capped).
#[test]
fn slot_bytes_are_known_before_allocating() {
    let ctx = &contexts()[0];
    let model = load(ctx, LmHead::Stored);
    let too_long = model.config().max_position_embeddings + 5;
    for kv_cache in [KvCacheDtype::F32, KvCacheDtype::F16] {
        for context in [7, too_long] {
            let batch =
                pollster::block_on(SequenceBatch::new(&model, 2, context, 4, kv_cache)).unwrap();
            let expected = slot_bytes(model.config(), context, kv_cache);
            assert_eq!(batch.slot_bytes(), expected, "{kv_cache:?} {context}");
        }
    }
    let f32_bytes = slot_bytes(model.config(), 64, KvCacheDtype::F32);
    assert_eq!(
        slot_bytes(model.config(), 64, KvCacheDtype::F16) * 2,
        f32_bytes
    );
}

#[test]
fn a_batch_refuses_bad_rows() {
    let ctx = &contexts()[0];
    let model = load(ctx, LmHead::Stored);
    let mut batch =
        pollster::block_on(SequenceBatch::new(&model, 2, 8, 4, KvCacheDtype::default())).unwrap();
    let row = |slot, token| DecodeRow {
        slot,
        token,
        output: Output::Argmax,
    };
    let refused = |batch: &mut SequenceBatch, rows: &[DecodeRow]| {
        pollster::block_on(batch.decode(rows))
            .unwrap_err()
            .to_string()
    };
    assert!(refused(&mut batch, &[row(2, 1)]).contains("slot 2 does not exist"));
    assert!(refused(&mut batch, &[row(0, 1), row(0, 2)]).contains("twice"));
    let vocab = model.config().vocab_size as u32;
    assert!(refused(&mut batch, &[row(1, vocab)]).contains("outside the vocabulary"));
    pollster::block_on(batch.forward(1, &[1; 8], Output::Argmax)).unwrap();
    assert!(refused(&mut batch, &[row(0, 1), row(1, 1)]).contains("context"));
    // Nothing moved: slot 0 is still empty, slot 1 full.
    assert_eq!((batch.position(0), batch.position(1)), (0, 8));
}

/// The front door's scheduler: every request's reply through a `Batch` of 3 slots equals the one a
/// fresh `Session` gives it alone — greedy, seeded sampling (GPU top-k and full logits), a
/// repetition penalty, a stop string, OpenAI's penalties and logit bias, log-probabilities (equal
/// too) — while requests queue, prefill in chunks between decode
/// steps, get cancelled midway, and (second round) start from the whole prefill chunks of a
/// previous prompt left in a slot.
#[test]
fn batch_replies_equal_the_replies_of_sessions_alone() {
    use std::collections::HashMap;
    use tern::{
        BatchEvent, BatchOptions, ChatMessage, GenerateOptions, Model, OpenOptions, Penalties,
        SamplingParams, SessionOptions, StopReason, TokenLogprobs,
    };

    for ctx in contexts() {
        let adapter = ctx.adapter_name();
        let options = OpenOptions {
            context: Some(ctx.clone()),
            ..OpenOptions::default()
        };
        let model = Model::open_with(&fixture("bitnet-2b4t").to_string_lossy(), options).unwrap();
        let (context, chunk) = (160, 8);
        let requests: Vec<(Vec<u32>, GenerateOptions)> = (0..10)
            .map(|i| {
                let text = "tell me about the sea and the ships ".repeat(1 + i % 4);
                let prompt = model
                    .chat_prompt(&[ChatMessage::new("user", format!("{text}{i}"))])
                    .unwrap();
                let sampling = match i % 4 {
                    0 => SamplingParams::default(),
                    1 => SamplingParams {
                        temperature: 0.9,
                        top_k: 20,
                        seed: Some(i as u64),
                        ..SamplingParams::default()
                    },
                    2 => SamplingParams {
                        temperature: 0.7,
                        top_p: 0.9,
                        seed: Some(100 + i as u64),
                        ..SamplingParams::default()
                    },
                    _ => SamplingParams {
                        repetition_penalty: 1.3,
                        ..SamplingParams::default()
                    },
                };
                let options = GenerateOptions {
                    max_new_tokens: 3 + (i * 5) % 17,
                    sampling,
                    stop: if i == 6 { vec!["e".into()] } else { Vec::new() },
                    ignore_eos: i % 2 == 0,
                    penalties: match i {
                        7 => Penalties {
                            presence: 0.5,
                            frequency: 1.5,
                            logit_bias: vec![(5, 3.0), (17, -100.0)],
                        },
                        9 => Penalties {
                            frequency: 2.0,
                            logit_bias: vec![(5, 100.0)],
                            ..Penalties::default()
                        },
                        _ => Penalties::default(),
                    },
                    logprobs: (i >= 8).then(|| i - 6),
                };
                (prompt, options)
            })
            .collect();
        let sizes = SessionOptions {
            max_context: context,
            max_batch: chunk,
            kv_cache: KvCacheDtype::default(),
        };
        let mut alone_logprobs: Vec<Vec<TokenLogprobs>> = Vec::new();
        let alone: Vec<_> = requests
            .iter()
            .map(|(prompt, options)| {
                let mut session = model.session(sizes).unwrap();
                let mut logprobs = Vec::new();
                let generation = pollster::block_on(
                    session.generate(prompt, options, |t| logprobs.extend(t.logprobs.cloned())),
                )
                .unwrap();
                assert_eq!(options.logprobs.is_some(), !logprobs.is_empty());
                alone_logprobs.push(logprobs);
                generation
            })
            .collect();
        // The bias bites: +100 outweighs a frequency penalty of 2 for every token of the reply.
        assert!(alone[9].ids.iter().all(|&id| id == 5), "{adapter}");

        let mut batch = model
            .batch(BatchOptions {
                slots: 3,
                max_context: context,
                max_batch: chunk,
                kv_cache: KvCacheDtype::default(),
            })
            .unwrap();
        for round in 0..2 {
            let ids: Vec<_> = requests
                .iter()
                .map(|(prompt, options)| batch.submit(prompt.clone(), options.clone()).unwrap())
                .collect();
            let cancelled = ids[4 + round];
            let mut tokens: HashMap<_, usize> = HashMap::new();
            let mut done = HashMap::new();
            let mut logprobs: HashMap<_, Vec<TokenLogprobs>> = HashMap::new();
            while !batch.is_idle() {
                let events = pollster::block_on(batch.step());
                for event in events.unwrap_or_else(|e| panic!("{adapter}: {e}")) {
                    match event {
                        BatchEvent::Token {
                            request,
                            logprobs: token_logprobs,
                            ..
                        } => {
                            logprobs.entry(request).or_default().extend(token_logprobs);
                            let count = tokens.entry(request).or_default();
                            *count += 1;
                            if request == cancelled && *count == 2 {
                                batch.cancel(request);
                            }
                        }
                        BatchEvent::Finished {
                            request,
                            generation,
                            ..
                        } => {
                            done.insert(request, generation);
                        }
                        BatchEvent::Failed { error, .. } => panic!("{adapter}: {error}"),
                    }
                }
            }
            for (i, id) in ids.iter().enumerate() {
                let got = &done[id];
                let what = format!("request {i} round {round} on {adapter}");
                if *id == cancelled {
                    assert_eq!(got.stop_reason, StopReason::Cancelled, "{what}");
                    assert_eq!(got.ids[..], alone[i].ids[..got.ids.len()], "{what}");
                    continue;
                }
                assert_eq!(got.ids, alone[i].ids, "{what}");
                assert_eq!(got.text, alone[i].text, "{what}");
                assert_eq!(got.stop_reason, alone[i].stop_reason, "{what}");
                let got_logprobs = logprobs.remove(id).unwrap_or_default();
                assert_eq!(got_logprobs, alone_logprobs[i], "{what}");
                if round == 1 {
                    // Every prompt of round 2 was prefilled in round 1 and finds whole chunks of
                    // itself in some slot unless they were overwritten since.
                    assert!(got.prefilled_tokens <= got.prompt_tokens, "{what}");
                }
            }
            let reused: usize = ids
                .iter()
                .map(|id| done[id].prompt_tokens - done[id].prefilled_tokens)
                .sum();
            if round == 1 {
                assert!(reused > 0, "no prompt reused a cached chunk on {adapter}");
            }
        }
    }
}
