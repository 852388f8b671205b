//! `rmsnorm.wgsl` against `reference::norm::rmsnorm`.
//! Tolerance: |gpu − cpu| ≤ 2e-6·|gain| + 1e-5·|cpu| (only the sum of squares is reduced in another order).

use proptest::prelude::*;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::rmsnorm::RmsNorm;
use tern::reference::norm::rmsnorm;
use tern_tests::{assert_close, for_each_adapter, random_f32, seeded};

fn check(ctx: &Context, tokens: usize, k: usize, seed: u64) {
    let mut rng = seeded(seed);
    let x = random_f32(&mut rng, tokens * k, 3.0);
    let gain: Vec<f32> = random_f32(&mut rng, k, 1.0)
        .iter()
        .map(|g| g + 1.2)
        .collect();
    let eps = 1e-5;
    let kernel = RmsNorm::new(ctx);
    let xb = GpuBuffer::from_slice(ctx, "x", &x, BufferUsage::Storage).unwrap();
    let gb = GpuBuffer::from_slice(ctx, "gain", &gain, BufferUsage::Storage).unwrap();
    let yb = GpuBuffer::new(ctx, "y", (tokens * k * 4) as u64, BufferUsage::Storage).unwrap();
    let binding = kernel.bind(ctx, k, eps, &xb, &gb, &yb).unwrap();
    pollster::block_on(ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding, tokens as u32);
    }))
    .unwrap();
    let gpu: Vec<f32> = pollster::block_on(yb.read_vec(ctx)).unwrap();
    assert_close(
        &format!("rmsnorm T={tokens} k={k}"),
        &gpu[..tokens * k],
        &rmsnorm(&x, &gain, eps),
        5e-6,
        1e-5,
    );
}

#[test]
fn model_shapes() {
    for_each_adapter(|ctx| {
        for (tokens, k) in [(1, 2560), (4, 2560), (1, 4096), (3, 256), (2, 3072)] {
            check(ctx, tokens, k, k as u64);
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_shapes(tokens in 1usize..20, k in 1usize..1500, seed in any::<u64>()) {
        for_each_adapter(|ctx| check(ctx, tokens, k, seed));
    }
}
