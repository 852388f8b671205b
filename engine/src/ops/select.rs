//! Token selection on the GPU, so only a few bytes per token come back: `shaders/argmax.wgsl` (greedy)
//! and `shaders/topk.wgsl` (candidates for temperature / top-k / top-p sampling on the host).
//! CPU twins: [`crate::reference::select`].

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::{Error, Result};

/// Largest k the top-k kernel supports.
pub const MAX_TOP_K: usize = 64;

/// One top-k result as the kernel writes it (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Candidate {
    /// Token id; `u32::MAX` marks an empty slot (fewer than k non-NaN logits).
    pub index: u32,
    /// The token's logit.
    pub value: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    k: u32,
    _pad: [u32; 2],
}

/// A bind group for one of the selection kernels, made at load.
pub struct SelectBinding {
    bind_group: wgpu::BindGroup,
    _params: GpuBuffer,
}

fn bind(
    ctx: &Context,
    pipeline: &wgpu::ComputePipeline,
    label: &str,
    params: Params,
    logits: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<SelectBinding> {
    let params = GpuBuffer::from_slice(ctx, label, &[params], BufferUsage::Uniform)?;
    let bind_group = ctx.bind_group(
        label,
        pipeline,
        &[params.binding(), logits.binding(), out.binding()],
    );
    Ok(SelectBinding {
        bind_group,
        _params: params,
    })
}

fn dispatch(
    pass: &mut wgpu::ComputePass<'_>,
    pipeline: &wgpu::ComputePipeline,
    binding: &SelectBinding,
    rows: u32,
) {
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, &binding.bind_group, &[]);
    pass.dispatch_workgroups(rows, 1, 1);
}

/// Greedy selection: the id of each row's highest logit.
pub struct Argmax {
    pipeline: wgpu::ComputePipeline,
}

impl Argmax {
    /// Builds the pipeline.
    pub fn new(ctx: &Context) -> Self {
        Argmax {
            pipeline: ctx.pipeline("argmax", sources::ARGMAX, "main", &[]),
        }
    }

    /// `logits`: f32 [rows, vocab]; `out`: u32 `[rows]` (usable directly as the next step's token ids).
    pub fn bind(
        &self,
        ctx: &Context,
        vocab: usize,
        logits: &GpuBuffer,
        out: &GpuBuffer,
    ) -> Result<SelectBinding> {
        bind(
            ctx,
            &self.pipeline,
            "argmax",
            Params {
                vocab: vocab as u32,
                k: 1,
                _pad: [0; 2],
            },
            logits,
            out,
        )
    }

    /// The argmax of the first `rows` rows.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, binding: &SelectBinding, rows: u32) {
        dispatch(pass, &self.pipeline, binding, rows);
    }
}

/// The k highest logits of each row, as [`Candidate`]s sorted descending.
pub struct TopK {
    pipeline: wgpu::ComputePipeline,
}

impl TopK {
    /// Builds the pipeline.
    pub fn new(ctx: &Context) -> Self {
        TopK {
            pipeline: ctx.pipeline("topk", sources::TOPK, "main", &[]),
        }
    }

    /// `logits`: f32 [rows, vocab]; `out`: [rows, k] [`Candidate`]s; 1 ≤ k ≤ [`MAX_TOP_K`].
    pub fn bind(
        &self,
        ctx: &Context,
        vocab: usize,
        k: usize,
        logits: &GpuBuffer,
        out: &GpuBuffer,
    ) -> Result<SelectBinding> {
        if !(1..=MAX_TOP_K).contains(&k) {
            return Err(Error::Invalid(format!(
                "top-k: k = {k} outside 1..={MAX_TOP_K}"
            )));
        }
        bind(
            ctx,
            &self.pipeline,
            "topk",
            Params {
                vocab: vocab as u32,
                k: k as u32,
                _pad: [0; 2],
            },
            logits,
            out,
        )
    }

    /// The top-k of the first `rows` rows.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, binding: &SelectBinding, rows: u32) {
        dispatch(pass, &self.pipeline, binding, rows);
    }
}
