//! Matrix-vector product over a row-chunked [`TokenTable`] (the LM head): f32/f16/bf16 tables through
//! `shaders/dense_matvec.wgsl` (CPU twin: [`crate::reference::dense::matvec`]), int8 ones through
//! `shaders/int8_matvec.wgsl` (CPU twin: [`crate::reference::quantize_rows::int8_matvec`]).

use super::embedding::{TableFormat, TokenTable};
use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::{Error, Result};

/// How rows map to invocations; see the shader's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatvecLayout {
    /// One invocation per row: fastest on CPU adapters.
    RowPerInvocation,
    /// One workgroup per row with a reduction: coalesced loads for real GPUs.
    RowPerWorkgroup,
}

impl MatvecLayout {
    /// Per invocation on CPU adapters, per workgroup elsewhere.
    pub fn for_adapter(ctx: &Context) -> Self {
        if ctx.caps.is_cpu {
            MatvecLayout::RowPerInvocation
        } else {
            MatvecLayout::RowPerWorkgroup
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    cols: u32,
    first_row: u32,
    rows: u32,
    out_stride: u32,
}

const ROWS_PER_WORKGROUP: u32 = 64;
const WORKGROUP_PER_ROW: u32 = 128;

/// f32 `out = table · x` for one or more tokens over a [`TokenTable`] (the LM head's logits).
pub struct DenseMatvec {
    pipeline: wgpu::ComputePipeline,
    layout: MatvecLayout,
    format: TableFormat,
    cols: usize,
}

/// One bind group per table chunk, made at load.
pub struct DenseMatvecBinding {
    chunks: Vec<(wgpu::BindGroup, GpuBuffer, u32)>,
}

impl DenseMatvec {
    /// A kernel for tables of `format` with `cols` columns, laid out for this adapter.
    pub fn new(ctx: &Context, format: TableFormat, cols: usize) -> Self {
        Self::with_layout(ctx, format, cols, MatvecLayout::for_adapter(ctx))
    }

    /// As [`DenseMatvec::new`] with a given layout (tests run both).
    pub fn with_layout(
        ctx: &Context,
        format: TableFormat,
        cols: usize,
        layout: MatvecLayout,
    ) -> Self {
        let (entry, workgroup) = match layout {
            MatvecLayout::RowPerInvocation => ("row_per_invocation", ROWS_PER_WORKGROUP),
            MatvecLayout::RowPerWorkgroup => ("row_per_workgroup", WORKGROUP_PER_ROW),
        };
        let pipeline = match format {
            TableFormat::Float(dtype) => {
                let aligned = (cols * dtype.bytes()).is_multiple_of(16);
                let constants = [
                    ("DTYPE", dtype.shader_code()),
                    ("ALIGNED", f64::from(u8::from(aligned))),
                    ("WG", f64::from(workgroup)),
                ];
                ctx.pipeline("dense_matvec", sources::DENSE_MATVEC, entry, &constants)
            }
            TableFormat::Int8 => {
                let aligned = cols.is_multiple_of(16);
                let constants = [
                    ("ALIGNED", f64::from(u8::from(aligned))),
                    ("WG", f64::from(workgroup)),
                ];
                ctx.pipeline("int8_matvec", sources::INT8_MATVEC, entry, &constants)
            }
        };
        DenseMatvec {
            pipeline,
            layout,
            format,
            cols,
        }
    }

    /// `step`: [`super::StepParams`] (T = `tokens`); `x`: f32 [T, cols]; `out`: f32 [T, table.rows].
    /// `x` is bound twice, as f32s and as vec4s (the shader's aligned path loads four at once).
    pub fn bind(
        &self,
        ctx: &Context,
        table: &TokenTable,
        step: &GpuBuffer,
        x: &GpuBuffer,
        out: &GpuBuffer,
    ) -> Result<DenseMatvecBinding> {
        if table.format() != self.format || table.cols() != self.cols {
            return Err(Error::Invalid(format!(
                "dense matvec built for {:?} × {} columns, table is {:?} × {}",
                self.format,
                self.cols,
                table.format(),
                table.cols()
            )));
        }
        let mut chunks = Vec::new();
        for (values, scales, first_row, rows) in table.chunk_bindings() {
            let params = Params {
                cols: table.cols() as u32,
                first_row: first_row as u32,
                rows: rows as u32,
                out_stride: table.rows() as u32,
            };
            let params =
                GpuBuffer::from_slice(ctx, "dense_matvec.params", &[params], BufferUsage::Uniform)?;
            let mut buffers = vec![
                step.binding(),
                params.binding(),
                values.binding(),
                x.binding(),
                out.binding(),
                x.binding(),
            ];
            if self.format == TableFormat::Int8 {
                buffers.push(scales.binding());
            }
            let bind_group = ctx.bind_group("dense_matvec", &self.pipeline, &buffers);
            let workgroups = match self.layout {
                MatvecLayout::RowPerInvocation => (rows as u32).div_ceil(ROWS_PER_WORKGROUP),
                MatvecLayout::RowPerWorkgroup => rows as u32,
            };
            chunks.push((bind_group, params, workgroups));
        }
        Ok(DenseMatvecBinding { chunks })
    }

    /// All rows for the step's tokens: one dispatch per table chunk.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, binding: &DenseMatvecBinding) {
        pass.set_pipeline(&self.pipeline);
        for (bind_group, _, workgroups) in &binding.chunks {
            let (x, y) = super::dispatch_grid(*workgroups);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
    }
}
