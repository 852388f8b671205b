//! Dense (float-weight) projections with the ternary projections' epilogues, for decode and prefill:
//! `shaders/dense_projection.wgsl`. They run the FP16 baseline of the BitNet b1.58 paper's comparisons
//! (`tern bench --compare dense`). CPU twin: [`crate::reference::dense::dense_project`].

use super::embedding::{DenseTable, FloatDType};
use super::sources;
use super::ternary_matvec::Epilogue;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::{Error, Result};

/// How the decode kernel maps rows to invocations; see the shader's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseLayout {
    /// One invocation per row: fastest on CPU adapters.
    RowPerInvocation,
    /// One workgroup per row with a reduction: coalesced loads for real GPUs.
    RowPerWorkgroup,
}

impl DenseLayout {
    /// Per invocation on CPU adapters, per workgroup elsewhere.
    pub fn for_adapter(ctx: &Context) -> Self {
        if ctx.caps.is_cpu {
            DenseLayout::RowPerInvocation
        } else {
            DenseLayout::RowPerWorkgroup
        }
    }
}

/// WGSL twin: `struct Params` in `shaders/dense_projection.wgsl`.
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
/// Tokens per prefill invocation: the shader's `TILE`.
const TILE: u32 = 8;

/// The buffers of one dense projection site, bound once at load.
pub struct DenseProjectionSite<'a> {
    /// [N, K]; for a gated epilogue the gate rows [I, K].
    pub weights: &'a DenseTable,
    /// Gated epilogues only: the up rows [I, K], chunked like `weights`.
    pub up: Option<&'a DenseTable>,
    /// [`super::StepParams`]: T is read from it at run time.
    pub step: &'a GpuBuffer,
    /// f32 [T, K].
    pub x: &'a GpuBuffer,
    /// f32 [T, N] (N = I when gated).
    pub out: &'a GpuBuffer,
}

struct ChunkBinding {
    decode: wgpu::BindGroup,
    prefill: wgpu::BindGroup,
    rows: u32,
    _params: GpuBuffer,
}

/// One bind group per weight chunk and kernel, made at load.
pub struct DenseProjectionBinding {
    chunks: Vec<ChunkBinding>,
}

/// A float-weight projection with an [`Epilogue`]: a matvec for decode, a tiled matmul for
/// prefill.
pub struct DenseProjection {
    decode: wgpu::ComputePipeline,
    prefill: wgpu::ComputePipeline,
    layout: DenseLayout,
    epilogue: Epilogue,
    dtype: FloatDType,
    cols: usize,
}

impl DenseProjection {
    /// The kernels for `epilogue` over `dtype` weights with `cols` columns, in this adapter's layout.
    pub fn new(ctx: &Context, epilogue: Epilogue, dtype: FloatDType, cols: usize) -> Self {
        Self::with_layout(ctx, epilogue, dtype, cols, DenseLayout::for_adapter(ctx))
    }

    /// As [`DenseProjection::new`] with a given decode layout (tests run both).
    pub fn with_layout(
        ctx: &Context,
        epilogue: Epilogue,
        dtype: FloatDType,
        cols: usize,
        layout: DenseLayout,
    ) -> Self {
        let aligned = (cols * dtype.bytes()).is_multiple_of(16);
        // 16-bit weights in rows of whole u32 words: two elements per word load.
        let pairs = !aligned && dtype.bytes() == 2 && cols.is_multiple_of(2);
        let pipeline = |entry: &str, workgroup: u32| {
            let constants = [
                ("DTYPE", dtype.shader_code()),
                ("ALIGNED", f64::from(u8::from(aligned))),
                ("PAIRS", f64::from(u8::from(pairs))),
                ("EPILOGUE", epilogue.shader_code()),
                ("WG", f64::from(workgroup)),
            ];
            ctx.pipeline(
                "dense_projection",
                sources::DENSE_PROJECTION,
                entry,
                &constants,
            )
        };
        let decode = match layout {
            DenseLayout::RowPerInvocation => pipeline("row_per_invocation", ROWS_PER_WORKGROUP),
            DenseLayout::RowPerWorkgroup => pipeline("row_per_workgroup", WORKGROUP_PER_ROW),
        };
        DenseProjection {
            decode,
            prefill: pipeline("matmul", ROWS_PER_WORKGROUP),
            layout,
            epilogue,
            dtype,
            cols,
        }
    }

    /// Checks `site`'s tables and buffers against this kernel and makes one bind group per chunk.
    pub fn bind(
        &self,
        ctx: &Context,
        site: &DenseProjectionSite<'_>,
    ) -> Result<DenseProjectionBinding> {
        let w = site.weights;
        let invalid = |what: String| Err(Error::Invalid(format!("dense projection: {what}")));
        if w.dtype != self.dtype || w.cols != self.cols {
            return invalid(format!(
                "built for {:?} × {} columns, weight is {:?} × {}",
                self.dtype, self.cols, w.dtype, w.cols
            ));
        }
        match (self.epilogue.is_gated(), site.up) {
            (true, None) => return invalid(format!("{:?} needs up rows", self.epilogue)),
            (false, Some(_)) => return invalid(format!("{:?} takes no up rows", self.epilogue)),
            (true, Some(up)) => {
                let same_chunks = up.chunks.len() == w.chunks.len()
                    && up
                        .chunks
                        .iter()
                        .zip(&w.chunks)
                        .all(|(u, g)| (u.first_row, u.rows) == (g.first_row, g.rows));
                if (up.dtype, up.rows, up.cols) != (w.dtype, w.rows, w.cols) || !same_chunks {
                    return invalid(format!(
                        "up [{}, {}] {:?} is not chunked like gate [{}, {}] {:?}",
                        up.rows, up.cols, up.dtype, w.rows, w.cols, w.dtype
                    ));
                }
            }
            (false, None) => {}
        }
        let mut chunks = Vec::with_capacity(w.chunks.len());
        for (i, chunk) in w.chunks.iter().enumerate() {
            let up = site.up.map_or(&chunk.buffer, |up| &up.chunks[i].buffer);
            let params = Params {
                cols: w.cols as u32,
                first_row: chunk.first_row as u32,
                rows: chunk.rows as u32,
                out_stride: w.rows as u32,
            };
            let params = GpuBuffer::from_slice(
                ctx,
                "dense_projection.params",
                &[params],
                BufferUsage::Uniform,
            )?;
            let group = |pipeline: &wgpu::ComputePipeline| {
                ctx.bind_group(
                    "dense_projection",
                    pipeline,
                    &[
                        site.step.binding(),
                        params.binding(),
                        chunk.buffer.binding(),
                        up.binding(),
                        site.x.binding(),
                        site.out.binding(),
                    ],
                )
            };
            chunks.push(ChunkBinding {
                decode: group(&self.decode),
                prefill: group(&self.prefill),
                rows: chunk.rows as u32,
                _params: params,
            });
        }
        Ok(DenseProjectionBinding { chunks })
    }

    /// Decode: every output for the step's tokens (T from the step uniform; meant for T = 1).
    pub fn dispatch_decode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &DenseProjectionBinding,
    ) {
        pass.set_pipeline(&self.decode);
        for chunk in &binding.chunks {
            let workgroups = match self.layout {
                DenseLayout::RowPerInvocation => chunk.rows.div_ceil(ROWS_PER_WORKGROUP),
                DenseLayout::RowPerWorkgroup => chunk.rows,
            };
            let (x, y) = super::dispatch_grid(workgroups);
            pass.set_bind_group(0, &chunk.decode, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
    }

    /// Prefill: every output for `tokens` tokens, which must equal the step uniform's T.
    pub fn dispatch_prefill(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &DenseProjectionBinding,
        tokens: u32,
    ) {
        pass.set_pipeline(&self.prefill);
        for chunk in &binding.chunks {
            let (x, y) = super::dispatch_grid(chunk.rows.div_ceil(ROWS_PER_WORKGROUP));
            pass.set_bind_group(0, &chunk.prefill, &[]);
            pass.dispatch_workgroups(x, y, tokens.div_ceil(TILE));
        }
    }
}
