//! `argmax.wgsl` and `topk.wgsl` against `reference::select`: exact equality, ties and NaN included.

use proptest::prelude::*;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::select::{Argmax, Candidate, TopK, MAX_TOP_K};
use tern::reference::select::{argmax, top_k};
use tern_tests::{for_each_adapter, seeded};

fn run_argmax(ctx: &Context, logits: &[f32], vocab: usize) -> Vec<u32> {
    let rows = logits.len() / vocab;
    let kernel = Argmax::new(ctx);
    let input = GpuBuffer::from_slice(ctx, "logits", logits, BufferUsage::Storage).unwrap();
    let out = GpuBuffer::new(ctx, "out", (rows * 4) as u64, BufferUsage::Storage).unwrap();
    let binding = kernel.bind(ctx, vocab, &input, &out).unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding, rows as u32);
    }))
    .unwrap();
    pollster::block_on(out.read_vec(ctx)).unwrap()
}

fn run_top_k(ctx: &Context, logits: &[f32], vocab: usize, k: usize) -> Vec<Candidate> {
    let rows = logits.len() / vocab;
    let kernel = TopK::new(ctx);
    let input = GpuBuffer::from_slice(ctx, "logits", logits, BufferUsage::Storage).unwrap();
    let out = GpuBuffer::new(ctx, "out", (rows * k * 8) as u64, BufferUsage::Storage).unwrap();
    let binding = kernel.bind(ctx, vocab, k, &input, &out).unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding, rows as u32);
    }))
    .unwrap();
    pollster::block_on(out.read_vec(ctx)).unwrap()
}

/// Logits drawn from a few distinct values (many ties), with NaN, ±∞ and ±0 sprinkled in.
fn logits(rng: &mut impl rand::Rng, n: usize, distinct: u32) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.random_range(0..100) {
            0 => f32::NAN,
            1 => f32::NEG_INFINITY,
            2 => -0.0,
            3 => 0.0,
            _ => rng.random_range(0..distinct) as f32 * 0.25 - 8.0,
        })
        .collect()
}

fn check(ctx: &Context, rows: usize, vocab: usize, k: usize, distinct: u32, seed: u64) {
    let mut rng = seeded(seed);
    let values = logits(&mut rng, rows * vocab, distinct);
    let cpu_argmax: Vec<u32> = values.chunks_exact(vocab).map(argmax).collect();
    assert_eq!(
        run_argmax(ctx, &values, vocab),
        cpu_argmax,
        "argmax rows {rows} vocab {vocab}"
    );
    let cpu_top: Vec<Candidate> = values
        .chunks_exact(vocab)
        .flat_map(|row| top_k(row, k))
        .collect();
    let gpu_top = run_top_k(ctx, &values, vocab, k);
    let bits = |c: &[Candidate]| {
        c.iter()
            .map(|c| (c.index, c.value.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bits(&gpu_top),
        bits(&cpu_top),
        "top-{k} rows {rows} vocab {vocab}"
    );
}

#[test]
fn full_vocabulary() {
    for_each_adapter(|ctx| {
        check(ctx, 1, 128_256, MAX_TOP_K, 100_000, 1);
        check(ctx, 2, 128_256, 40, 50, 2); // heavy ties
    });
}

#[test]
fn degenerate_rows() {
    for_each_adapter(|ctx| {
        // All NaN: argmax u32::MAX (nothing to choose), top-k all empty. All equal: lowest indices win. A single element.
        let vocab = 300;
        let mut values = vec![f32::NAN; vocab];
        values.extend(vec![1.5f32; vocab]);
        assert_eq!(run_argmax(ctx, &values, vocab), vec![u32::MAX, 0]);
        let top = run_top_k(ctx, &values, vocab, 5);
        assert!(top[..5]
            .iter()
            .all(|c| c.index == u32::MAX && c.value == f32::NEG_INFINITY));
        assert_eq!(
            top[5..].iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(run_argmax(ctx, &[f32::NEG_INFINITY], 1), vec![0]);
        assert_eq!(
            run_top_k(ctx, &[3.0], 1, 4)[..2],
            [
                Candidate {
                    index: 0,
                    value: 3.0
                },
                Candidate {
                    index: u32::MAX,
                    value: f32::NEG_INFINITY
                }
            ]
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(rows in 1usize..5, vocab in 1usize..3000, k in 1usize..=MAX_TOP_K, distinct in 1u32..1000, seed in any::<u64>()) {
        for_each_adapter(|ctx| check(ctx, rows, vocab, k, distinct, seed));
    }
}
