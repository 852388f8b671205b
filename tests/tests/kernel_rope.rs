//! `rope.wgsl` (RoPE on q and k + KV-cache append) against `reference::rope::rope_append`, with an
//! f32 and an f16 cache.
//! Tolerance on rotated values (inputs in [−1, 1]): |gpu − cpu| ≤ 1e-6 absolute — the angle is the
//! same f32 on both sides; the shader's own sin/cos differ from libm by ~1e-7. In an f16 cache a
//! rotated k that close to a rounding boundary may round to the neighbouring f16 on one side: one
//! f16 step more (2⁻¹⁰ relative). v and every untouched cache entry must match exactly (both sides
//! round the same f32 to nearest, ties to even).

use proptest::prelude::*;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::attention::{AttentionShape, KvCacheDtype};
use tern::ops::rope::Rope;
use tern::ops::StepParams;
use tern::reference::rope::{inv_freq, rope_append};
use tern_tests::{assert_close, for_each_adapter, random_f32, seeded};

const TOLERANCE: f32 = 1e-6;
/// One f16 step, relative: the most that rounding f32s a hair apart to f16 can add.
const F16_STEP: f32 = 1.0 / 1024.0;

fn check(ctx: &Context, shape: AttentionShape, theta: f32, pos: usize, tokens: usize, seed: u64) {
    let mut rng = seeded(seed);
    let row = (shape.heads + 2 * shape.kv_heads) * shape.head_dim;
    let qkv = random_f32(&mut rng, tokens * row, 1.0);
    // What the caches hold before the step: values they can store.
    let stored = |values: Vec<f32>| -> Vec<f32> {
        values.into_iter().map(|x| shape.cache.round(x)).collect()
    };
    let k_cache = stored(random_f32(&mut rng, shape.cache_len(), 1.0));
    let v_cache = stored(random_f32(&mut rng, shape.cache_len(), 1.0));
    let freqs = inv_freq(theta, shape.head_dim);

    let kernel = Rope::new(ctx);
    let step = StepParams {
        pos: pos as u32,
        tokens: tokens as u32,
        row: 0,
        _pad: 0,
    };
    let step = GpuBuffer::from_slice(ctx, "step", &[step], BufferUsage::Uniform).unwrap();
    let qkv_b = GpuBuffer::from_slice(ctx, "qkv", &qkv, BufferUsage::Storage).unwrap();
    let upload = |label, values: &[f32]| {
        GpuBuffer::from_slice(
            ctx,
            label,
            &shape.cache.encode(values),
            BufferUsage::Storage,
        )
        .unwrap()
    };
    let (k_b, v_b) = (upload("k", &k_cache), upload("v", &v_cache));
    let binding = kernel
        .bind(ctx, shape, &freqs, &step, &qkv_b, &k_b, &v_b)
        .unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding, tokens as u32);
    }))
    .unwrap();
    let gpu_qkv: Vec<f32> = pollster::block_on(qkv_b.read_vec(ctx)).unwrap();
    let download = |buffer: &GpuBuffer| {
        let words: Vec<u32> = pollster::block_on(buffer.read_vec(ctx)).unwrap();
        shape.cache.decode(&words, shape.cache_len())
    };
    let (gpu_k, gpu_v) = (download(&k_b), download(&v_b));

    let (mut cpu_qkv, mut cpu_k, mut cpu_v) = (qkv.clone(), k_cache, v_cache);
    rope_append(&mut cpu_qkv, &mut cpu_k, &mut cpu_v, shape, pos, &freqs);
    let what = format!("{shape:?} θ={theta} pos={pos} T={tokens}");
    assert_close(
        &format!("q|k|v {what}"),
        &gpu_qkv[..qkv.len()],
        &cpu_qkv,
        TOLERANCE,
        0.0,
    );
    let q_len = shape.heads * shape.head_dim;
    for t in 0..tokens {
        // k and v stay as they were in the projection output.
        assert_eq!(
            gpu_qkv[t * row + q_len..(t + 1) * row],
            qkv[t * row + q_len..(t + 1) * row],
            "{what}"
        );
    }
    let rounding = match shape.cache {
        KvCacheDtype::F32 => 0.0,
        KvCacheDtype::F16 => F16_STEP,
    };
    assert_close(
        &format!("k cache {what}"),
        &gpu_k,
        &cpu_k,
        TOLERANCE,
        rounding,
    );
    assert_eq!(gpu_v, cpu_v, "v cache {what}");
}

fn shape(heads: usize, kv_heads: usize, head_dim: usize, max_seq: usize) -> AttentionShape {
    AttentionShape {
        heads,
        kv_heads,
        head_dim,
        max_seq,
        cache: KvCacheDtype::F32,
    }
}

fn f16_cache(shape: AttentionShape) -> AttentionShape {
    AttentionShape {
        cache: KvCacheDtype::F16,
        ..shape
    }
}

#[test]
fn model_shapes_and_long_positions() {
    for_each_adapter(|ctx| {
        // 2B-4T (20/5 × 128, θ 500000), Llama-style θ 10000, Falcon3 head_dim 256 θ 1000042.
        check(ctx, shape(20, 5, 128, 4100), 500_000.0, 4090, 3, 1);
        check(ctx, shape(4, 2, 64, 4096), 10_000.0, 4000, 96, 2);
        check(ctx, shape(4, 1, 256, 4097), 1_000_042.0, 4095, 2, 3);
        check(ctx, shape(3, 3, 96, 600), 10_000.0, 0, 17, 4);
        check(ctx, shape(5, 1, 100, 64), 500_000.0, 31, 33, 5);
        // Llama-3's 128k context: angles up to 1.3e5 rad.
        check(ctx, shape(2, 1, 64, 131_072), 500_000.0, 131_060, 4, 6);
    });
}

#[test]
fn f16_cache_model_shapes_and_long_positions() {
    for_each_adapter(|ctx| {
        check(
            ctx,
            f16_cache(shape(20, 5, 128, 4100)),
            500_000.0,
            4090,
            3,
            1,
        );
        check(
            ctx,
            f16_cache(shape(4, 1, 256, 4097)),
            1_000_042.0,
            4095,
            2,
            3,
        );
        // Odd head counts and positions, head_dim 100 (a half_dim of 50 pairs, 25 per invocation).
        check(ctx, f16_cache(shape(3, 3, 96, 600)), 10_000.0, 0, 17, 4);
        check(ctx, f16_cache(shape(5, 1, 100, 64)), 500_000.0, 31, 33, 5);
        check(ctx, f16_cache(shape(2, 1, 4, 9)), 10_000.0, 3, 5, 7);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(
        kv_heads in 1usize..4,
        group in prop::sample::select(vec![1usize, 2, 4, 5]),
        head_dim in prop::sample::select(vec![64usize, 96, 100, 128, 256, 4, 20]),
        theta in prop::sample::select(vec![10_000.0f32, 500_000.0, 1_000_042.0]),
        pos in 0usize..4096,
        tokens in 1usize..8,
        cache in prop::sample::select(vec![KvCacheDtype::F32, KvCacheDtype::F16]),
        seed in any::<u64>(),
    ) {
        let shape = AttentionShape {
            cache,
            ..shape(kv_heads * group, kv_heads, head_dim, pos + tokens + 3)
        };
        for_each_adapter(|ctx| check(ctx, shape, theta, pos, tokens, seed));
    }
}
