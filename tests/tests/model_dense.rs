//! The dense baseline's forward (`ProjectionKind::Dense`: f16 projections, f32 activations) against
//! the same forward composed from the kernels' CPU twins, in both modes: one prefill batch (dense
//! matmul, causal attention) and token by token (dense matvec, split attention over the cache).
//! Tolerance: 2e-3 absolute + 2e-3 relative on logits of magnitude ~10 (f32 sums in other orders).

use tern::format::checkpoint::{Checkpoint, NormWeight, Projection};
use tern::format::source::{complete_now, read_range};
use tern::model::synthetic::{self, Shape};
use tern::model::weights::ProjectionKind;
use tern::model::{ModelOptions, Output, Sequence, StepResult};
use tern::ops::attention::AttentionShape;
use tern::ops::embedding::FloatDType;
use tern::ops::ternary_matvec::Epilogue;
use tern::reference::attention::attention;
use tern::reference::dense::{dense_project, matvec};
use tern::reference::embedding::embed;
use tern::reference::norm::rmsnorm;
use tern::reference::rope::rope_append;
use tern_tests::{assert_close, for_each_adapter};

const CONTEXT: usize = 16;
const IDS: [u32; 6] = [1, 77, 400, 3, 1023, 512];

fn bytes(c: &Checkpoint, layer: usize, parts: &[Projection]) -> Vec<u8> {
    parts
        .iter()
        .flat_map(|&p| {
            let r = c.projection(layer, p).unwrap();
            complete_now(
                "dense",
                read_range(c.sources[r.source].as_ref(), r.offset, r.len),
            )
            .unwrap()
        })
        .collect()
}

fn gain(c: &Checkpoint, layer: usize, n: NormWeight) -> Vec<f32> {
    complete_now("dense", c.read_f32_vector(&c.norm(layer, n).unwrap())).unwrap()
}

/// Logits [T, vocab] of `IDS` from position 0, computed on the CPU with the kernels' twins.
fn cpu_logits(c: &Checkpoint) -> Vec<f32> {
    let cfg = &c.config;
    let (h, hd, t) = (cfg.hidden_size, cfg.head_dim, IDS.len());
    let (attn, kv, ff) = (
        cfg.num_heads * hd,
        cfg.num_kv_heads * hd,
        cfg.intermediate_size,
    );
    let f16 = FloatDType::F16;
    let e = c.embedding().unwrap();
    let table = complete_now(
        "dense",
        read_range(c.sources[e.source].as_ref(), e.offset, e.len),
    )
    .unwrap();
    let mut x = embed(&table, e.dtype, h, &IDS);
    let shape = AttentionShape {
        heads: cfg.num_heads,
        kv_heads: cfg.num_kv_heads,
        head_dim: hd,
        max_seq: CONTEXT,
    };
    let freqs = cfg.rope_inv_freq();
    let eps = cfg.rms_norm_eps;
    for layer in 0..cfg.num_layers {
        let qkv_w = bytes(c, layer, &[Projection::Q, Projection::K, Projection::V]);
        let mut qkv = vec![0.0; t * (attn + 2 * kv)];
        let normed = rmsnorm(&x, &gain(c, layer, NormWeight::InputLn), eps);
        dense_project(
            &qkv_w,
            None,
            f16,
            attn + 2 * kv,
            h,
            &normed,
            Epilogue::Store,
            &mut qkv,
        );
        let (mut k_cache, mut v_cache) = (vec![0.0; kv * CONTEXT], vec![0.0; kv * CONTEXT]);
        rope_append(&mut qkv, &mut k_cache, &mut v_cache, shape, 0, &freqs);
        let a = attention(&qkv, attn + 2 * kv, &k_cache, &v_cache, shape, 0, t);
        // Without sub-norms (plain llama-style BitNet) o and down read their input as is.
        let sub_norm = |x: Vec<f32>, n| match cfg.sub_norms {
            true => rmsnorm(&x, &gain(c, layer, n), eps),
            false => x,
        };
        let a = sub_norm(a, NormWeight::AttnSub);
        let o = bytes(c, layer, &[Projection::O]);
        dense_project(&o, None, f16, h, attn, &a, Epilogue::AddResidual, &mut x);

        let normed = rmsnorm(&x, &gain(c, layer, NormWeight::PostAttnLn), eps);
        let (gate, up) = (
            bytes(c, layer, &[Projection::Gate]),
            bytes(c, layer, &[Projection::Up]),
        );
        let mut f = vec![0.0; t * ff];
        dense_project(
            &gate,
            Some(&up),
            f16,
            ff,
            h,
            &normed,
            Epilogue::Relu2Mul,
            &mut f,
        );
        let f = sub_norm(f, NormWeight::FfnSub);
        let down = bytes(c, layer, &[Projection::Down]);
        dense_project(&down, None, f16, h, ff, &f, Epilogue::AddResidual, &mut x);
    }
    let final_gain = complete_now("dense", c.read_f32_vector(&c.final_norm().unwrap())).unwrap();
    let normed = rmsnorm(&x, &final_gain, eps);
    matvec(&table, e.dtype, cfg.vocab_size, h, &normed)
}

fn logits(result: StepResult) -> Vec<f32> {
    match result {
        StepResult::Logits(l) => l,
        other => panic!("expected logits, got {other:?}"),
    }
}

#[test]
fn dense_forward_matches_its_cpu_twins_in_prefill_and_decode() {
    check_against_cpu(true);
}

#[test]
fn dense_forward_without_sub_norms_matches_its_cpu_twins() {
    check_against_cpu(false);
}

fn check_against_cpu(sub_norms: bool) {
    let mut checkpoint = synthetic::dense_checkpoint(Shape::TINY, CONTEXT, 3).unwrap();
    checkpoint.config.sub_norms = sub_norms;
    let cpu = cpu_logits(&checkpoint);
    let vocab = checkpoint.config.vocab_size;
    assert!(cpu.iter().all(|v| v.is_finite()) && cpu.iter().any(|v| v.abs() > 1.0));
    for_each_adapter(|ctx| {
        let options = ModelOptions {
            max_context: CONTEXT,
            max_batch: 8,
            projections: ProjectionKind::Dense,
        };
        let mut model =
            pollster::block_on(Sequence::load(ctx, &checkpoint, options, &mut |_, _| {}))
                .expect("loading the dense model");
        let prefill = logits(pollster::block_on(model.forward(&IDS, Output::AllLogits)).unwrap());
        assert_close("dense prefill logits", &prefill, &cpu, 2e-3, 2e-3);

        model.reset();
        for (t, &id) in IDS.iter().enumerate() {
            let step =
                logits(pollster::block_on(model.forward(&[id], Output::LastLogits)).unwrap());
            let want = &cpu[t * vocab..(t + 1) * vocab];
            assert_close(
                &format!("dense decode logits at {t}"),
                &step,
                want,
                2e-3,
                2e-3,
            );
        }
    });
}

#[test]
fn dense_load_rejects_packed_ternary_weights() {
    let checkpoint = synthetic::checkpoint(Shape::TINY, CONTEXT, 3).unwrap();
    for_each_adapter(|ctx| {
        let options = ModelOptions {
            max_context: CONTEXT,
            max_batch: 8,
            projections: ProjectionKind::Dense,
        };
        let error = pollster::block_on(Sequence::load(ctx, &checkpoint, options, &mut |_, _| {}))
            .err()
            .expect("packed ternary weights cannot be loaded dense")
            .to_string();
        assert!(
            error.contains("q_proj") && error.contains("float"),
            "{error}"
        );
    });
}
