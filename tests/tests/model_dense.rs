//! The dense baseline's forward (`ProjectionKind::Dense`: f16 projections, f32 activations) against
//! its CPU twin (`tern::model::cpu_step`, the step composed from the kernels' CPU twins), in both modes: one prefill batch (dense
//! matmul, causal attention) and token by token (dense matvec, split attention over the cache).
//! Tolerance: 2e-3 absolute + 2e-3 relative on logits of magnitude ~10 (f32 sums in other orders).

use tern::model::cpu_step::dense_logits;
use tern::model::synthetic::{self, Shape};
use tern::model::weights::ProjectionKind;
use tern::model::{KvCacheDtype, ModelOptions, Output, Sequence, StepResult};
use tern_tests::{assert_close, for_each_adapter};

const CONTEXT: usize = 16;
const IDS: [u32; 6] = [1, 77, 400, 3, 1023, 512];

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
    let cpu = dense_logits(&checkpoint, &IDS, CONTEXT, KvCacheDtype::default()).unwrap();
    let vocab = checkpoint.config.vocab_size;
    assert!(cpu.iter().all(|v| v.is_finite()) && cpu.iter().any(|v| v.abs() > 1.0));
    for_each_adapter(|ctx| {
        let options = ModelOptions {
            max_context: CONTEXT,
            max_batch: 8,
            projections: ProjectionKind::Dense,
            ..ModelOptions::default()
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
            ..ModelOptions::default()
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
