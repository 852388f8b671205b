//! The whole model against the reference goldens (tests/reference), for every checkpoint format, in
//! both teacher-forced modes (one prefill batch; token by token through the decode path) and for the
//! 32-token greedy continuation. Criteria: DESIGN §6 (see `tern_tests::goldens`).

use std::sync::Arc;

use tern::format::checkpoint::Checkpoint;
use tern::generate::{CancelToken, GenerateOptions, Session};
use tern::gpu::Context;
use tern::model::ModelOptions;
use tern_tests::contexts;
use tern_tests::goldens::{
    assert_greedy_parity, assert_logit_parity, compare_logits, fixture, load_goldens,
};

fn session(ctx: &Context, fixture_name: &str) -> Session {
    let checkpoint =
        Checkpoint::open(&fixture(fixture_name)).unwrap_or_else(|e| panic!("{fixture_name}: {e}"));
    // A context sharing the device: Session wants an Arc, the harness keeps the Context itself.
    let ctx = Arc::new(Context {
        device: ctx.device.clone(),
        queue: ctx.queue.clone(),
        info: ctx.info.clone(),
        limits: ctx.limits.clone(),
        caps: ctx.caps.clone(),
    });
    let options = ModelOptions {
        max_context: 256,
        max_batch: 64,
        ..ModelOptions::default()
    };
    pollster::block_on(Session::load(ctx, &checkpoint, options, &mut |_, _| {}))
        .unwrap_or_else(|e| panic!("{fixture_name}: {e}"))
}

fn check_fixture(fixture_name: &str, golden_name: &str) {
    let goldens = load_goldens(golden_name);
    for ctx in contexts() {
        let adapter = ctx.adapter_name();
        let mut session = session(ctx, fixture_name);
        let vocab = session.model.config.vocab_size;
        for mode in ["prefill", "decode"] {
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            for golden in &goldens {
                ours.extend(
                    pollster::block_on(session.logits(&golden.ids, mode == "decode")).unwrap(),
                );
                reference.extend_from_slice(&golden.logits);
            }
            assert_logit_parity(
                &format!("{fixture_name} {mode} on {adapter}"),
                compare_logits(&ours, &reference, vocab),
            );
        }
        for (p, golden) in goldens.iter().enumerate() {
            session.reset();
            let options = GenerateOptions {
                max_new_tokens: golden.greedy.len(),
                ignore_eos: true,
                ..Default::default()
            };
            let generation = pollster::block_on(session.generate(
                &golden.ids,
                &options,
                &CancelToken::default(),
                |_| {},
            ))
            .unwrap();
            assert_greedy_parity(
                &format!("{fixture_name} p{p} greedy on {adapter}"),
                &generation.ids,
                golden,
            );
        }
    }
}

#[test]
fn bitnet_2b4t_packed() {
    check_fixture("bitnet-2b4t", "bitnet-2b4t");
}

#[test]
fn bitnet_2b4t_sharded() {
    check_fixture("bitnet-2b4t-sharded", "bitnet-2b4t");
}

#[test]
fn bitnet_2b4t_bf16_online() {
    check_fixture("bitnet-2b4t-bf16", "bitnet-2b4t-bf16");
}

#[test]
fn gguf_i2s() {
    check_fixture("bitnet-2b4t-i2s.gguf", "bitnet-2b4t");
}

#[test]
fn gguf_tq2_0() {
    check_fixture("bitnet-2b4t-tq2_0.gguf", "bitnet-2b4t");
}

#[test]
fn gguf_tq1_0() {
    check_fixture("bitnet-2b4t-tq1_0.gguf", "bitnet-2b4t");
}

#[test]
fn llama_1bitllm_online() {
    check_fixture("llama-1bitllm", "llama-1bitllm");
}

#[test]
fn plain_bitnet_divide_convention() {
    check_fixture("plain-bitnet", "plain-bitnet");
}

/// GGUF `llama` architecture (Llama3-8B-1.58 / Falcon3 conversions): q/k rows permuted for
/// interleaved RoPE, undone at load; must match the HF checkpoint it was converted from.
#[test]
fn gguf_llama_rope_permuted() {
    check_fixture("plain-bitnet-i2s.gguf", "plain-bitnet");
}
