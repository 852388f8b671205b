//! Decode (split over the sequence + combine) and prefill attention against
//! `reference::attention::attention`, over f32 and f16 caches (the twin reads the same f16 values
//! the kernels unpack, so the tolerance is the same). Tolerance: |gpu − cpu| ≤ 1e-5 absolute (+1e-5 relative) on
//! outputs of inputs drawn from [−1, 1] (the softmax sums in another order and, for decode, is merged
//! across chunks).

use proptest::prelude::*;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::attention::{
    AttentionBuffers, AttentionDecode, AttentionPrefill, AttentionShape, KvCacheDtype,
};
use tern::ops::StepParams;
use tern::reference::attention::attention;
use tern_tests::{assert_close, for_each_adapter, random_f32, seeded};

/// Inputs for T queries at positions pos .. pos + T; q rows carry k|v-sized padding like the fused
/// q|k|v buffer does (q_stride > heads·head_dim).
struct Case {
    shape: AttentionShape,
    q: Vec<f32>,
    q_stride: usize,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    pos: usize,
    tokens: usize,
}

impl Case {
    fn new(shape: AttentionShape, pos: usize, tokens: usize, seed: u64) -> Self {
        let mut rng = seeded(seed);
        let q_stride = (shape.heads + 2 * shape.kv_heads) * shape.head_dim;
        Case {
            q: random_f32(&mut rng, tokens * q_stride, 1.0),
            q_stride,
            k_cache: random_f32(&mut rng, shape.cache_len(), 1.0),
            v_cache: random_f32(&mut rng, shape.cache_len(), 1.0),
            shape,
            pos,
            tokens,
        }
    }

    fn cpu(&self) -> Vec<f32> {
        attention(
            &self.q,
            self.q_stride,
            &self.k_cache,
            &self.v_cache,
            self.shape,
            self.pos,
            self.tokens,
        )
    }

    fn gpu(&self, ctx: &Context, decode: bool) -> Vec<f32> {
        let step = StepParams {
            pos: self.pos as u32,
            tokens: self.tokens as u32,
            row: 0,
            _pad: 0,
        };
        let step = GpuBuffer::from_slice(ctx, "step", &[step], BufferUsage::Uniform).unwrap();
        let q = GpuBuffer::from_slice(ctx, "q", &self.q, BufferUsage::Storage).unwrap();
        let upload = |label, values: &[f32]| {
            let words = self.shape.cache.encode(values);
            GpuBuffer::from_slice(ctx, label, &words, BufferUsage::Storage).unwrap()
        };
        let k_cache = upload("k", &self.k_cache);
        let v_cache = upload("v", &self.v_cache);
        let out_len = self.tokens * self.shape.heads * self.shape.head_dim;
        let out = GpuBuffer::from_slice(ctx, "out", &vec![f32::NAN; out_len], BufferUsage::Storage)
            .unwrap();
        let buffers = AttentionBuffers {
            step: &step,
            q: &q,
            q_stride: self.q_stride,
            k_cache: &k_cache,
            v_cache: &v_cache,
            out: &out,
        };
        if decode {
            assert_eq!(self.tokens, 1);
            let kernel = AttentionDecode::new(ctx);
            let binding = kernel.bind(ctx, self.shape, &buffers).unwrap();
            pollster::block_on(ctx.run(|encoder| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                kernel.dispatch(&mut pass, &binding, self.pos as u32);
            }))
            .unwrap();
        } else {
            let kernel = AttentionPrefill::new(ctx);
            let binding = kernel.bind(ctx, self.shape, &buffers).unwrap();
            pollster::block_on(ctx.run(|encoder| {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                kernel.dispatch(&mut pass, &binding, self.tokens as u32);
            }))
            .unwrap();
        }
        let result: Vec<f32> = pollster::block_on(out.read_vec(ctx)).unwrap();
        result[..out_len].to_vec()
    }

    fn check(&self, ctx: &Context) {
        let cpu = self.cpu();
        let what = format!("{:?} pos={} T={}", self.shape, self.pos, self.tokens);
        if self.tokens == 1 {
            assert_close(
                &format!("decode {what}"),
                &self.gpu(ctx, true),
                &cpu,
                1e-5,
                1e-5,
            );
        }
        assert_close(
            &format!("prefill {what}"),
            &self.gpu(ctx, false),
            &cpu,
            1e-5,
            1e-5,
        );
    }
}

fn shape(kv_heads: usize, group: usize, head_dim: usize, max_seq: usize) -> AttentionShape {
    AttentionShape {
        heads: kv_heads * group,
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
fn long_context_split() {
    for_each_adapter(|ctx| {
        // 2B-4T geometry at position 2999: 12 decode chunks, the last one partial.
        Case::new(shape(5, 4, 128, 3100), 2999, 1, 1).check(ctx);
        Case::new(shape(1, 5, 256, 3000), 2999, 1, 2).check(ctx);
        // Chunked prefill continuing a long cache, tile boundaries crossed inside the step.
        Case::new(shape(2, 2, 100, 3100), 2900, 5, 3).check(ctx);
    });
}

#[test]
fn f16_cache_long_context_split() {
    for_each_adapter(|ctx| {
        Case::new(f16_cache(shape(5, 4, 128, 3100)), 2999, 1, 1).check(ctx);
        Case::new(f16_cache(shape(1, 5, 256, 3000)), 2999, 1, 2).check(ctx);
        Case::new(f16_cache(shape(2, 2, 100, 3100)), 2900, 5, 3).check(ctx);
        // An odd number of positions × head_dim 4: the cache ends mid 16-byte vector.
        Case::new(f16_cache(shape(3, 3, 4, 7)), 2, 5, 4).check(ctx);
    });
}

#[test]
fn chunk_boundaries() {
    for_each_adapter(|ctx| {
        for pos in [254, 255, 256, 511, 512] {
            Case::new(shape(1, 2, 64, 600), pos, 1, pos as u64).check(ctx);
        }
    });
}

#[test]
fn prefill_from_empty_cache() {
    for_each_adapter(|ctx| Case::new(shape(2, 4, 96, 300), 0, 40, 9).check(ctx));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(
        kv_heads in 1usize..3,
        // Decode serves up to 4 heads of a group per workgroup: 8 and 9 take several slices.
        group in prop::sample::select(vec![1usize, 2, 4, 5, 8, 9]),
        head_dim in prop::sample::select(vec![64usize, 96, 100, 128, 256, 4, 36]),
        len in 1usize..=600,
        tokens in 1usize..5,
        cache in prop::sample::select(vec![KvCacheDtype::F32, KvCacheDtype::F16]),
        seed in any::<u64>(),
    ) {
        let tokens = tokens.min(len);
        let shape = AttentionShape { cache, ..shape(kv_heads, group, head_dim, len + 5) };
        // A prefill step ending at position len − 1, and the decode step at len − 1 (also run as prefill).
        let prefill = Case::new(shape, len - tokens, tokens, seed);
        let decode = Case::new(shape, len - 1, 1, seed ^ 1);
        for_each_adapter(|ctx| {
            prefill.check(ctx);
            decode.check(ctx);
        });
    }
}
