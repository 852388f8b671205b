//! Online absmean quantization of float latent weights at load, on the GPU:
//! `shaders/absmean_sum.wgsl` reduces Σ|W| in a fixed blocked order, the host turns the total into
//! s = mean|W| (clamped ≥ 1e-5) and 1/s, and `shaders/absmean_quantize.wgsl` writes
//! t = clamp(round(W · (1/s)), −1, 1) in the engine layout. CPU twin:
//! [`crate::reference::quantize::absmean_quantize`].
//!
//! Tensors larger than the binding limit (7B-class fp32 latents) are read through windows of the one
//! raw buffer bound at aligned offsets: whole 4096-value blocks for the sum, whole rows for the pack.

use super::{dispatch_grid, sources};
use crate::gpu::{read_buffer, BufferUsage, Context, GpuBuffer};
use crate::layout::words_per_row;
pub use crate::layout::FloatDType;
use crate::{Error, Result};

/// Lanes of one summing workgroup.
pub const SUM_LANES: usize = 256;
/// Values summed by one workgroup (each lane adds 16 in sequence).
pub const SUM_BLOCK: usize = SUM_LANES * 16;

/// Element type of a latent float tensor, stored little-endian.
/// `s = max(Σ|W| / n, 1e-5)`; the division is done in f64 (n may exceed 2²⁴).
pub fn absmean_scale(abs_sum: f32, n: usize) -> f32 {
    ((f64::from(abs_sum) / n as f64) as f32).max(1e-5)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SumParams {
    count: u32,
    first_block: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct QuantizeParams {
    rows: u32,
    cols: u32,
    words_per_row: u32,
    first_row: u32,
    window_first: u32,
    inv_scale: f32,
    _pad: [u32; 2],
}

const QUANTIZE_WORKGROUP: usize = 64;

/// One recorded dispatch: its pipeline, bindings and workgroup count.
struct Step<'a> {
    pipeline: &'a wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: usize,
}

async fn run_steps(ctx: &Context, steps: &[Step<'_>]) -> Result<()> {
    ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for step in steps {
            let (x, y) = dispatch_grid(step.workgroups as u32);
            pass.set_pipeline(step.pipeline);
            pass.set_bind_group(0, &step.bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
    })
    .await
}

/// The summing and quantizing pipelines for each dtype, built once.
pub struct Quantizer {
    sum: [wgpu::ComputePipeline; 3],
    quantize: [wgpu::ComputePipeline; 3],
    max_window: u64,
}

impl Quantizer {
    /// Builds both passes for f32, f16 and bf16 latents.
    pub fn new(ctx: &Context) -> Self {
        let build = |label: &str, source: &str, dtype: FloatDType| {
            ctx.pipeline(label, source, "main", &[("DTYPE", dtype.shader_code())])
        };
        let dtypes = [FloatDType::F32, FloatDType::F16, FloatDType::BF16];
        Quantizer {
            sum: dtypes.map(|d| build("absmean_sum", sources::ABSMEAN_SUM, d)),
            quantize: dtypes.map(|d| build("absmean_quantize", sources::ABSMEAN_QUANTIZE, d)),
            max_window: ctx.caps.max_binding_bytes,
        }
    }

    /// Binds at most `bytes` of a tensor at once (below the adapter's limit), so that small tensors
    /// take the chunked path too (tests).
    #[cfg(feature = "internals")]
    pub fn with_max_window(mut self, bytes: u64) -> Self {
        self.max_window = self.max_window.min(bytes);
        self
    }

    /// Quantizes tensor `name` (W[rows, cols] of `dtype`, its file bytes in `raw`) into a new buffer
    /// in the engine layout and returns it with its multiplier s. Two submits and one 4-byte readback;
    /// `raw` can be dropped afterwards.
    pub async fn quantize(
        &self,
        ctx: &Context,
        name: &str,
        dtype: FloatDType,
        raw: &GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<(GpuBuffer, f32)> {
        let n = rows * cols;
        if n == 0 || u32::try_from(n).is_err() {
            return Err(Error::Invalid(format!(
                "{name}: {rows}×{cols} values: expected between 1 and 2³² − 1"
            )));
        }
        let needed = (n * dtype.bytes()) as u64;
        if raw.size < needed {
            return Err(Error::Invalid(format!(
                "{name}: {dtype:?} {rows}×{cols} needs {needed} bytes, the upload has {}",
                raw.size
            )));
        }
        let scale = absmean_scale(self.abs_sum(ctx, name, dtype, raw, n).await?, n);
        let packed = self
            .pack(ctx, name, dtype, raw, rows, cols, 1.0 / scale)
            .await?;
        Ok((packed, scale))
    }

    /// Σ|W| over the tensor, summed in the blocked order of `absmean_sum.wgsl`.
    async fn abs_sum(
        &self,
        ctx: &Context,
        name: &str,
        dtype: FloatDType,
        raw: &GpuBuffer,
        n: usize,
    ) -> Result<f32> {
        let bytes = dtype.bytes() as u64;
        // Whole blocks a window; block bytes (8 or 16 KiB) keep window offsets aligned.
        let window_values = (self.max_window / (bytes * SUM_BLOCK as u64)) as usize * SUM_BLOCK;
        if window_values == 0 {
            return Err(Error::Gpu(format!(
                "{name}: binding limit {} bytes is too small",
                self.max_window
            )));
        }
        let blocks = n.div_ceil(SUM_BLOCK);
        let mut levels = vec![GpuBuffer::new(
            ctx,
            "absmean.sums",
            blocks as u64 * 4,
            BufferUsage::Storage,
        )?];
        let mut params = Vec::new();
        let mut steps = Vec::new();
        for start in (0..n).step_by(window_values) {
            let count = window_values.min(n - start);
            let p = SumParams {
                count: count as u32,
                first_block: (start / SUM_BLOCK) as u32,
                _pad: [0; 2],
            };
            params.push(GpuBuffer::from_slice(
                ctx,
                "absmean_sum.params",
                &[p],
                BufferUsage::Uniform,
            )?);
            let window = raw.slice_binding(
                start as u64 * bytes,
                (count as u64 * bytes).next_multiple_of(4),
            );
            let bind_group = ctx.bind_group(
                "absmean_sum",
                &self.sum[dtype.shader_code() as usize],
                &[
                    params.last().unwrap().binding(),
                    window,
                    levels[0].binding(),
                ],
            );
            steps.push(Step {
                pipeline: &self.sum[dtype.shader_code() as usize],
                bind_group,
                workgroups: count.div_ceil(SUM_BLOCK),
            });
        }
        // Sum the block sums (f32) the same way until one value is left.
        let mut count = blocks;
        while count > 1 {
            let next = count.div_ceil(SUM_BLOCK);
            levels.push(GpuBuffer::new(
                ctx,
                "absmean.sums",
                next as u64 * 4,
                BufferUsage::Storage,
            )?);
            let p = SumParams {
                count: count as u32,
                first_block: 0,
                _pad: [0; 2],
            };
            params.push(GpuBuffer::from_slice(
                ctx,
                "absmean_sum.params",
                &[p],
                BufferUsage::Uniform,
            )?);
            let [.., input, output] = levels.as_slice() else {
                unreachable!("two levels at least")
            };
            let f32_sum = &self.sum[FloatDType::F32.shader_code() as usize];
            let bind_group = ctx.bind_group(
                "absmean_sum",
                f32_sum,
                &[
                    params.last().unwrap().binding(),
                    input.binding(),
                    output.binding(),
                ],
            );
            steps.push(Step {
                pipeline: f32_sum,
                bind_group,
                workgroups: next,
            });
            count = next;
        }
        run_steps(ctx, &steps).await?;
        let total = read_buffer(ctx, &levels.last().unwrap().buffer, 0, 4).await?;
        Ok(f32::from_le_bytes(total[..4].try_into().expect("4 bytes")))
    }

    /// Quantizes and packs with the host-computed 1/s, in chunks of whole rows.
    #[allow(clippy::too_many_arguments)]
    async fn pack(
        &self,
        ctx: &Context,
        name: &str,
        dtype: FloatDType,
        raw: &GpuBuffer,
        rows: usize,
        cols: usize,
        inv_scale: f32,
    ) -> Result<GpuBuffer> {
        let bytes = dtype.bytes() as u64;
        let row_words = words_per_row(cols);
        let out_bytes = (rows * row_words * 4) as u64;
        if out_bytes > ctx.caps.max_binding_bytes {
            return Err(Error::Gpu(format!(
                "{name}: {rows}×{cols} ternary weights exceed the adapter's {}-byte binding limit",
                ctx.caps.max_binding_bytes
            )));
        }
        let packed = GpuBuffer::new(ctx, name, out_bytes, BufferUsage::Storage)?;
        // A window starts up to `align` bytes before its first row.
        let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment);
        let row_bytes = cols as u64 * bytes;
        let rows_per_chunk = (self.max_window.saturating_sub(align) / row_bytes) as usize;
        if rows_per_chunk == 0 {
            return Err(Error::Gpu(format!(
                "{name}: one row ({row_bytes} bytes) exceeds the binding limit of {} bytes",
                self.max_window
            )));
        }
        let mut params = Vec::new();
        let mut steps = Vec::new();
        for first_row in (0..rows).step_by(rows_per_chunk) {
            let chunk_rows = rows_per_chunk.min(rows - first_row);
            let start = first_row as u64 * row_bytes / align * align;
            let end = ((first_row + chunk_rows) as u64 * row_bytes).next_multiple_of(4);
            let p = QuantizeParams {
                rows: chunk_rows as u32,
                cols: cols as u32,
                words_per_row: row_words as u32,
                first_row: first_row as u32,
                window_first: (start / bytes) as u32,
                inv_scale,
                _pad: [0; 2],
            };
            params.push(GpuBuffer::from_slice(
                ctx,
                "absmean_quantize.params",
                &[p],
                BufferUsage::Uniform,
            )?);
            let quantize = &self.quantize[dtype.shader_code() as usize];
            let bind_group = ctx.bind_group(
                "absmean_quantize",
                quantize,
                &[
                    params.last().unwrap().binding(),
                    raw.slice_binding(start, end - start),
                    packed.binding(),
                ],
            );
            let workgroups = (chunk_rows * row_words).div_ceil(QUANTIZE_WORKGROUP);
            steps.push(Step {
                pipeline: quantize,
                bind_group,
                workgroups,
            });
        }
        run_steps(ctx, &steps).await?;
        Ok(packed)
    }
}
