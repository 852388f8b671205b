//! The device's limits through the real load path: a device created with a smaller storage-binding
//! limit than the adapter's (as a smaller GPU or a browser has) refuses a KV cache that does not fit
//! with an error naming the limit, and runs a model that fits — embedding and LM head split into
//! binding-sized chunks — to the same logits as the adapter's own limits. And a wgpu validation
//! error becomes an `Error`, not a panic. A portable device (`TERN_PORTABLE`, what `cargo xtask
//! gpu-check` runs the tests on a second time) leaves out subgroups and `shader-f16` and computes the
//! same logits.

use tern::gpu::Context;
use tern::model::synthetic::{self, Shape};
use tern::model::{ModelOptions, Output, Sequence, StepResult};
use tern_tests::{
    assert_close, contexts, contexts_with_limits, for_each_adapter, portable_contexts,
};

/// Smaller than the tiny shape's 512 KiB bf16 embedding (so it is chunked), larger than its
/// largest ternary weight (gate|up, 96 KiB).
const BINDING: u64 = 256 << 10;

fn load(ctx: &Context, max_context: usize, max_batch: usize) -> tern::Result<Sequence> {
    let checkpoint = synthetic::checkpoint(Shape::TINY, 8192, 7).expect("synthetic checkpoint");
    let options = ModelOptions {
        max_context,
        max_batch,
        ..ModelOptions::default()
    };
    pollster::block_on(Sequence::load(ctx, &checkpoint, options, &mut |_, _| {}))
}

fn logits(model: &mut Sequence, ids: &[u32]) -> Vec<f32> {
    match pollster::block_on(model.forward(ids, Output::AllLogits)).expect("forward") {
        StepResult::Logits(l) => l,
        other => panic!("expected logits, got {other:?}"),
    }
}

#[test]
fn a_smaller_binding_limit_refuses_the_kv_cache_and_runs_what_fits() {
    let small = contexts_with_limits(|l| l.max_storage_buffer_binding_size = BINDING);
    for (ctx, full) in small.iter().zip(contexts()) {
        let adapter = ctx.adapter_name();
        assert_eq!(ctx.limits.max_storage_buffer_binding_size, BINDING);

        // The tiny shape's (default, f16) K cache: 2 KV heads × 32 × 2 bytes = 128 bytes a position.
        let error = load(ctx, 4096, 16)
            .err()
            .expect("a 512 KiB K cache is refused");
        let message = error.to_string();
        for expected in [
            "max_storage_buffer_binding_size",
            "262144",
            "--context 2048",
        ] {
            assert!(message.contains(expected), "{adapter}: {message}");
        }
        // [T, 1024] f32 logits: 4 KiB a token, 64 tokens in 256 KiB.
        let error = load(ctx, 1024, 65)
            .err()
            .expect("a 65-token batch is refused");
        assert!(
            error.to_string().contains("--batch 64"),
            "{adapter}: {error}"
        );

        let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 1024).collect();
        let mut constrained = load(ctx, 1024, 16).expect("what fits loads");
        let mut reference = load(full, 1024, 16).expect("the adapter's own limits");
        assert_close(
            &format!("{adapter}: logits under a {BINDING}-byte binding limit"),
            &logits(&mut constrained, &ids),
            &logits(&mut reference, &ids),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn wgpu_validation_errors_become_errors() {
    for_each_adapter(|ctx| {
        // MAP_READ may only be combined with COPY_DST: a validation error, which wgpu's default
        // handler would turn into a panic.
        let _invalid = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid on purpose"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let error = pollster::block_on(ctx.wait()).expect_err("the validation error surfaces");
        let message = error.to_string();
        assert!(message.contains(&ctx.info.name), "{message}");
        assert!(message.contains("invalid on purpose"), "{message}");
        // Reported once: the device goes on working.
        pollster::block_on(ctx.wait()).expect("no error left");
    });
}

#[test]
fn a_portable_device_leaves_out_the_shader_features_and_computes_the_same() {
    for (portable, full) in portable_contexts().iter().zip(contexts()) {
        let adapter = portable.adapter_name();
        assert!(
            !portable.caps.subgroups
                && !portable.caps.shader_f16
                && portable.caps.subgroup_min_size == 0,
            "{adapter}: a portable device has no subgroups or shader-f16: {:?}",
            portable.caps
        );
        assert_eq!(
            portable.caps.timestamps, full.caps.timestamps,
            "{adapter}: timestamps stay"
        );
        assert_eq!(
            portable.limits, full.limits,
            "{adapter}: the limits stay the adapter's"
        );
        let ids = [1, 5, 900, 42, 7];
        let expected = logits(&mut load(full, 64, 8).expect("load"), &ids);
        let got = logits(&mut load(portable, 64, 8).expect("load"), &ids);
        assert_close(
            &format!("{adapter}: portable logits"),
            &got,
            &expected,
            1e-4,
            1e-4,
        );
    }
}
