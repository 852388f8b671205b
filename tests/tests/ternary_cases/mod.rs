//! Random ternary projection cases shared by `kernel_ternary_matvec.rs` and `kernel_ternary_matmul.rs`:
//! inputs in the GPU layouts, a GPU run, and the comparison with the CPU twin.
//!
//! Tolerances: the integer part Σ t·q must match exactly (checked through [`Case::unscaled`], whose
//! output is that integer as an f32). After the float epilogue, |gpu − cpu| ≤ 1e-6 · magnitude, where
//! magnitude is |cpu| (for AddResidual |residual| + |value|, since the add may be fused into an FMA);
//! SiluMul allows 4e-6: Vulkan lets `exp` be off by 3 + 2·|x| ulp.

use rand::Rng;
use tern::gpu::{BufferUsage, Context, GpuBuffer};
use tern::ops::ternary_matvec::{weight_bytes, Epilogue, TernaryBinding, TernaryProjection};
use tern::ops::{ActStats, StepParams};
use tern::reference::norm::pack_activations;
use tern::reference::ternary::pack_ternary;
use tern::reference::ternary_ops::{code_dots, ternary_project, PackedTernary};
use tern_tests::seeded;

pub const EPILOGUES: [Epilogue; 4] = [
    Epilogue::Store,
    Epilogue::AddResidual,
    Epilogue::Relu2Mul,
    Epilogue::SiluMul,
];

pub struct Case {
    pub k: usize,
    pub rows: usize,
    pub tokens: usize,
    pub weights: Vec<u32>,
    pub row_scale: Vec<f32>,
    pub xq: Vec<u32>,
    pub stats: Vec<ActStats>,
    /// The output buffer's contents before the run (the residual for AddResidual).
    pub out: Vec<f32>,
}

impl Case {
    /// A weight of `rows` rows × `k` and `tokens` tokens of activations. `segments` are row counts
    /// with one scale each (q|k|v, gate|up); the rows after them share one more scale.
    pub fn random(k: usize, rows: usize, tokens: usize, segments: &[usize], seed: u64) -> Case {
        let mut rng = seeded(seed);
        let mut t = Vec::with_capacity(rows * k);
        for _ in 0..rows {
            // Rows of all −1 (every code 0) and all +1 next to random ones: lanes must not borrow.
            match rng.random_range(0..6) {
                0 => t.extend(std::iter::repeat_n(-1i8, k)),
                1 => t.extend(std::iter::repeat_n(1i8, k)),
                _ => t.extend((0..k).map(|_| rng.random_range(-1i8..=1))),
            }
        }
        let mut q = Vec::with_capacity(tokens * k);
        for _ in 0..tokens {
            match rng.random_range(0..4) {
                0 => q.extend(std::iter::repeat_n(0i8, k)),
                1 => q.extend((0..k).map(|_| if rng.random() { -128i8 } else { 127 })),
                _ => q.extend((0..k).map(|_| rng.random_range(-128i8..=127))),
            }
        }
        let stats = q
            .chunks_exact(k)
            .map(|row| ActStats {
                inv_scale: rng.random_range(1e-4f32..2e-3),
                sum: row.iter().map(|&v| i32::from(v)).sum(),
            })
            .collect();
        let mut row_scale = Vec::with_capacity(rows);
        for &segment in segments.iter().chain([&rows]) {
            let scale = rng.random_range(0.25f32..4.0);
            row_scale.extend(std::iter::repeat_n(
                scale,
                segment.min(rows - row_scale.len()),
            ));
        }
        Case {
            k,
            rows,
            tokens,
            weights: pack_ternary(&t, rows, k),
            row_scale,
            xq: pack_activations(&q, k),
            out: (0..tokens * rows)
                .map(|_| rng.random_range(-8.0f32..8.0))
                .collect(),
            stats,
        }
    }

    /// All scales 1 and the output cleared: a Store then writes the exact integer Σ t·q as f32
    /// (|Σ t·q| ≤ 128·K < 2²⁴, so the conversion is exact).
    pub fn unscaled(mut self) -> Case {
        self.row_scale.fill(1.0);
        for s in &mut self.stats {
            s.inv_scale = 1.0;
        }
        self.out.fill(0.0);
        self
    }

    fn packed(&self) -> PackedTernary<'_> {
        PackedTernary {
            packed: &self.weights,
            rows: self.rows,
            k: self.k,
            row_scale: &self.row_scale,
        }
    }

    /// The initial output as the kernel sees it: [T, outputs].
    fn initial_out(&self, epilogue: Epilogue) -> Vec<f32> {
        self.out[..self.tokens * epilogue.outputs(self.rows)].to_vec()
    }

    pub fn expected(&self, epilogue: Epilogue) -> Vec<f32> {
        let mut out = self.initial_out(epilogue);
        ternary_project(&self.packed(), &self.xq, &self.stats, epilogue, &mut out);
        out
    }

    /// Binds the case's buffers with `bind`, records `dispatch`, and reads the output back.
    pub fn run_gpu(
        &self,
        ctx: &Context,
        epilogue: Epilogue,
        bind: impl FnOnce(&TernaryProjection<'_>) -> TernaryBinding,
        dispatch: impl FnOnce(&mut wgpu::ComputePass<'_>, &TernaryBinding),
    ) -> Vec<f32> {
        let storage = |label, bytes: &[u8]| {
            GpuBuffer::from_bytes(ctx, label, bytes, BufferUsage::Storage).unwrap()
        };
        let step = StepParams {
            pos: 0,
            tokens: self.tokens as u32,
            row: 0,
            _pad: 0,
        };
        let step = GpuBuffer::from_slice(ctx, "step", &[step], BufferUsage::Uniform).unwrap();
        let weights = GpuBuffer::new(
            ctx,
            "weights",
            weight_bytes(self.rows, self.k),
            BufferUsage::Storage,
        )
        .unwrap();
        weights.write(ctx, 0, bytemuck::cast_slice(&self.weights));
        let row_scale = storage("row_scale", bytemuck::cast_slice(&self.row_scale));
        let xq = storage("xq", bytemuck::cast_slice(&self.xq));
        let stats = storage("stats", bytemuck::cast_slice(&self.stats));
        let initial = self.initial_out(epilogue);
        let out = storage("out", bytemuck::cast_slice(&initial));
        let binding = bind(&TernaryProjection {
            k: self.k,
            rows: self.rows,
            weights: &weights,
            row_scale: &row_scale,
            step: &step,
            xq: &xq,
            stats: &stats,
            out: &out,
        });
        pollster::block_on(ctx.run(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            dispatch(&mut pass, &binding);
        }))
        .unwrap();
        let result: Vec<f32> = pollster::block_on(out.read_vec(ctx)).unwrap();
        result[..initial.len()].to_vec()
    }

    /// Compares an [`Case::unscaled`] Store run with the exact integer dot products.
    pub fn check_exact(&self, what: &str, gpu: &[f32]) {
        let dots = code_dots(&self.packed(), &self.xq, &self.stats);
        assert_eq!(gpu.len(), dots.len(), "{what}: length");
        for (i, (&g, &d)) in gpu.iter().zip(&dots).enumerate() {
            assert_eq!(
                g,
                d as f32,
                "{what}: token {} row {}: Σ t·q",
                i / self.rows,
                i % self.rows
            );
        }
    }

    /// Compares a run with the CPU twin under the tolerances in the module header.
    pub fn check(&self, what: &str, epilogue: Epilogue, gpu: &[f32], expected: &[f32]) {
        let initial = self.initial_out(epilogue);
        let rtol = if epilogue == Epilogue::SiluMul {
            4e-6
        } else {
            1e-6
        };
        assert_eq!(gpu.len(), expected.len(), "{what}: length");
        for (i, (&g, &c)) in gpu.iter().zip(expected).enumerate() {
            let magnitude = if epilogue == Epilogue::AddResidual {
                initial[i].abs() + (c - initial[i]).abs()
            } else {
                c.abs()
            };
            assert!(
                (g - c).abs() <= rtol * magnitude,
                "{what} {epilogue:?}: element {i}: gpu {g} vs cpu {c} (rtol {rtol})"
            );
        }
    }
}
