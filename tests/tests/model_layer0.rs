//! Layer 0 of every architecture against the reference's per-op dumps — the bisecting tool of
//! the parity tests. The model is loaded with one layer, so the "last layer" buffers are layer 0's.
//! On the short prompt p0 the engine must match the reference to float rounding (1e-4). Longer prompts
//! are left to the parity test: there one int8 code that rounds the other way at an exact boundary
//! moves a whole KV head's later positions by a quantization step (the comparison's noise floor).

use safetensors::SafeTensors;
use tern::format::checkpoint::Checkpoint;
use tern::model::{KvCacheDtype, ModelOptions, Output, Sequence};
use tern_tests::goldens::{fixture, repo_root};
use tern_tests::{assert_close, contexts};

fn check(fixture_name: &str, golden_name: &str) {
    let bytes = std::fs::read(
        repo_root().join(format!("tests/reference/goldens/{golden_name}.safetensors")),
    )
    .unwrap();
    let goldens = SafeTensors::deserialize(&bytes).unwrap();
    let floats = |key: &str| -> Vec<f32> {
        let t = goldens
            .tensor(key)
            .unwrap_or_else(|_| panic!("{golden_name}: no {key}"));
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for ctx in contexts() {
        let mut checkpoint = Checkpoint::open(&fixture(fixture_name)).unwrap();
        checkpoint.config.num_layers = 1;
        let options = ModelOptions {
            max_context: 64,
            max_batch: 64,
            kv_cache: KvCacheDtype::F32, // the exact path the reference dumps are held to
            ..ModelOptions::default()
        };
        let mut model =
            pollster::block_on(Sequence::load(ctx, &checkpoint, options, &mut |_, _| {})).unwrap();
        let prompt = "p0";
        let ids: Vec<u32> = goldens
            .tensor(&format!("{prompt}.ids"))
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        pollster::block_on(model.forward(&ids, Output::Argmax)).unwrap();
        let ours = pollster::block_on(model.last_layer_activations(ids.len())).unwrap();
        let what = |op: &str| {
            format!(
                "{fixture_name} {prompt} layer 0 {op} on {}",
                ctx.adapter_name()
            )
        };
        let close = |op: &str, ours: &[f32], key: &str| {
            assert_close(
                &what(op),
                ours,
                &floats(&format!("{prompt}.layer0.{key}")),
                1e-4,
                1e-4,
            )
        };
        close("attention", &ours.attention, "attn");
        close("act(gate)·up", &ours.ffn_activation, "ffn_act");
        close("residual out", &ours.residual, "out");
    }
}

#[test]
fn bitnet_2b4t() {
    check("bitnet-2b4t", "bitnet-2b4t");
}

#[test]
fn llama_1bitllm() {
    check("llama-1bitllm", "llama-1bitllm");
}

#[test]
fn plain_bitnet() {
    check("plain-bitnet", "plain-bitnet");
}
