//! Per-row absmax int8 tables ([`Int8Table`], the int8 LM head), made on the GPU from a float
//! [`DenseTable`] at load: `shaders/quantize_rows_int8.wgsl`. CPU twin:
//! [`crate::reference::quantize_rows::quantize_rows_int8`].

use super::embedding::{int8_row_words, DenseTable, FloatDType, Int8Chunk, Int8Table};
use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    cols: u32,
    rows: u32,
    _pad: [u32; 2],
}

/// Builds [`Int8Table`]s from float tables on the GPU: one pipeline per float dtype.
pub struct RowQuantizer {
    pipelines: [wgpu::ComputePipeline; 3],
}

impl RowQuantizer {
    /// Builds the pipelines (f32, f16 and bf16 sources).
    pub fn new(ctx: &Context) -> Self {
        let build = |dtype: FloatDType| {
            ctx.pipeline(
                "quantize_rows_int8",
                sources::QUANTIZE_ROWS_INT8,
                "main",
                &[("DTYPE", dtype.shader_code())],
            )
        };
        RowQuantizer {
            pipelines: [FloatDType::F32, FloatDType::F16, FloatDType::BF16].map(build),
        }
    }

    /// The int8 table of `table` (chunked like it), quantized on the GPU; waits for the work to finish
    /// so the caller may drop `table` at once.
    pub async fn quantize(
        &self,
        ctx: &Context,
        label: &str,
        table: &DenseTable,
    ) -> Result<Int8Table> {
        let pipeline = &self.pipelines[table.dtype.shader_code() as usize];
        let row_bytes = (int8_row_words(table.cols) * 4) as u64;
        let largest = table.chunks.iter().map(|c| c.rows).max().unwrap_or(0) as u64 * row_bytes;
        if largest > ctx.caps.max_binding_bytes {
            // Only rows of fewer than 8 columns grow when padded to 16 bytes.
            return Err(Error::Gpu(format!(
                "{label}: an int8 chunk of {largest} bytes exceeds the binding limit"
            )));
        }
        let mut chunks = Vec::with_capacity(table.chunks.len());
        let mut work = Vec::with_capacity(table.chunks.len());
        for source in &table.chunks {
            let name = format!("{label}[{}..]", source.first_row);
            let chunk = Int8Chunk {
                codes: GpuBuffer::new(
                    ctx,
                    &format!("{name}.codes"),
                    source.rows as u64 * row_bytes,
                    BufferUsage::Storage,
                )?,
                scales: GpuBuffer::new(
                    ctx,
                    &format!("{name}.scales"),
                    source.rows as u64 * 4,
                    BufferUsage::Storage,
                )?,
                first_row: source.first_row,
                rows: source.rows,
            };
            let params = Params {
                cols: table.cols as u32,
                rows: source.rows as u32,
                _pad: [0; 2],
            };
            let params = GpuBuffer::from_slice(
                ctx,
                "quantize_rows_int8.params",
                &[params],
                BufferUsage::Uniform,
            )?;
            let bind_group = ctx.bind_group(
                "quantize_rows_int8",
                pipeline,
                &[
                    params.binding(),
                    source.buffer.binding(),
                    chunk.codes.binding(),
                    chunk.scales.binding(),
                ],
            );
            work.push((bind_group, params, source.rows as u32));
            chunks.push(chunk);
        }
        ctx.run(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            for (bind_group, _, rows) in &work {
                let (x, y) = super::dispatch_grid(*rows);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
        })
        .await?;
        Ok(Int8Table {
            rows: table.rows,
            cols: table.cols,
            chunks,
        })
    }
}
