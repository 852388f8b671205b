//! Causal GQA attention over a layer's KV cache: decode (`shaders/attention_decode.wgsl` +
//! `shaders/attention_combine.wgsl`, split over the sequence) and prefill
//! (`shaders/attention_prefill.wgsl`). CPU twin: [`crate::reference::attention::attention`].
//!
//! KV-cache layout (owned by the model): per layer, K and V are f32 [kv_heads, max_seq, head_dim],
//! head-major so one head's sequence is contiguous. [`super::rope`] appends to it.
//! head_dim must be a multiple of 4 (K and V are read as `vec4<f32>`) and at most [`MAX_HEAD_DIM`].

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::{Error, Result};

/// Cached positions per decode workgroup (`CHUNK` in the decode and combine shaders).
pub const DECODE_CHUNK: usize = 256;
/// Largest head_dim the kernels hold in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;
/// Query heads of one GQA group a decode workgroup serves (`LANES` in the decode shader).
const DECODE_LANES: usize = 4;

/// Attention geometry of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// Width of one head: a multiple of 4, at most [`MAX_HEAD_DIM`].
    pub head_dim: usize,
    /// Positions the KV cache holds.
    pub max_seq: usize,
}

impl AttentionShape {
    /// [`Error::Invalid`] unless the kernels can run this shape (see the fields).
    pub fn validate(&self) -> Result<()> {
        let ok = self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim.is_multiple_of(4)
            && (2..=MAX_HEAD_DIM).contains(&self.head_dim)
            && self.max_seq > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "attention shape {self:?}: need heads a multiple of kv_heads and a head_dim that is a multiple of 4 and ≤ {MAX_HEAD_DIM}"
            )))
        }
    }

    /// Elements of one layer's K (or V) cache.
    pub fn cache_len(&self) -> usize {
        self.kv_heads * self.max_seq * self.head_dim
    }

    fn max_chunks(&self) -> usize {
        self.max_seq.div_ceil(DECODE_CHUNK)
    }

    /// Decode workgroups per chunk: each GQA group cut into slices of at most [`DECODE_LANES`]
    /// query heads that read their shared K/V rows once.
    fn decode_slices(&self) -> usize {
        self.kv_heads * (self.heads / self.kv_heads).div_ceil(DECODE_LANES)
    }
}

/// The buffers one attention site reads and writes.
pub struct AttentionBuffers<'a> {
    /// [`super::StepParams`]: `pos` is the position of the step's first query.
    pub step: &'a GpuBuffer,
    /// Rotated queries: token t, head h at `t·q_stride + h·head_dim` (e.g. the fused q|k|v buffer).
    pub q: &'a GpuBuffer,
    /// Elements (f32) from one token's queries to the next.
    pub q_stride: usize,
    /// This layer's K cache, f32 [kv_heads, max_seq, head_dim].
    pub k_cache: &'a GpuBuffer,
    /// This layer's V cache, laid out like `k_cache`.
    pub v_cache: &'a GpuBuffer,
    /// f32 [T, heads·head_dim].
    pub out: &'a GpuBuffer,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
    q_stride: u32,
    max_chunks: u32,
    scale: f32,
    _pad: u32,
}

fn params(ctx: &Context, shape: AttentionShape, q_stride: usize) -> Result<GpuBuffer> {
    shape.validate()?;
    let params = Params {
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        head_dim: shape.head_dim as u32,
        max_seq: shape.max_seq as u32,
        q_stride: q_stride as u32,
        max_chunks: shape.max_chunks() as u32,
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
        _pad: 0,
    };
    GpuBuffer::from_slice(ctx, "attention.params", &[params], BufferUsage::Uniform)
}

/// Single-query attention at position `pos` over cache 0 ..= pos, split into chunks of
/// [`DECODE_CHUNK`] positions whose partial softmax states a second pass combines.
pub struct AttentionDecode {
    partial: wgpu::ComputePipeline,
    combine: wgpu::ComputePipeline,
}

/// [`AttentionDecode`]'s bind groups for one site, with its parameters and scratch.
pub struct AttentionDecodeBinding {
    partial: wgpu::BindGroup,
    combine: wgpu::BindGroup,
    heads: u32,
    slices: u32,
    _params: GpuBuffer,
    _partials: GpuBuffer,
}

impl AttentionDecode {
    /// Builds the partial and combine pipelines.
    pub fn new(ctx: &Context) -> Self {
        AttentionDecode {
            partial: ctx.pipeline("attention_decode", sources::ATTENTION_DECODE, "main", &[]),
            combine: ctx.pipeline("attention_combine", sources::ATTENTION_COMBINE, "main", &[]),
        }
    }

    /// Makes the bind groups and the per-chunk scratch ([heads, max_seq / DECODE_CHUNK, head_dim + 2]).
    pub fn bind(
        &self,
        ctx: &Context,
        shape: AttentionShape,
        buffers: &AttentionBuffers<'_>,
    ) -> Result<AttentionDecodeBinding> {
        let params = params(ctx, shape, buffers.q_stride)?;
        let scratch_bytes = (shape.heads * shape.max_chunks() * (shape.head_dim + 2) * 4) as u64;
        let partials = GpuBuffer::new(
            ctx,
            "attention.partials",
            scratch_bytes,
            BufferUsage::Storage,
        )?;
        let partial = ctx.bind_group(
            "attention_decode",
            &self.partial,
            &[
                buffers.step.binding(),
                params.binding(),
                buffers.q.binding(),
                buffers.k_cache.binding(),
                buffers.v_cache.binding(),
                partials.binding(),
            ],
        );
        let combine = ctx.bind_group(
            "attention_combine",
            &self.combine,
            &[
                buffers.step.binding(),
                params.binding(),
                partials.binding(),
                buffers.out.binding(),
            ],
        );
        Ok(AttentionDecodeBinding {
            partial,
            combine,
            heads: shape.heads as u32,
            slices: shape.decode_slices() as u32,
            _params: params,
            _partials: partials,
        })
    }

    /// Attention for the query at `pos` (the step uniform must hold the same `pos`).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &AttentionDecodeBinding,
        pos: u32,
    ) {
        let chunks = pos / DECODE_CHUNK as u32 + 1;
        pass.set_pipeline(&self.partial);
        pass.set_bind_group(0, &binding.partial, &[]);
        pass.dispatch_workgroups(chunks, binding.slices, 1);
        pass.set_pipeline(&self.combine);
        pass.set_bind_group(0, &binding.combine, &[]);
        pass.dispatch_workgroups(binding.heads, 1, 1);
    }
}

/// T queries at positions pos .. pos + T, each attending causally to cache 0 ..= its position.
pub struct AttentionPrefill {
    pipeline: wgpu::ComputePipeline,
}

/// [`AttentionPrefill`]'s bind group for one site, with its parameters.
pub struct AttentionPrefillBinding {
    bind_group: wgpu::BindGroup,
    heads: u32,
    _params: GpuBuffer,
}

impl AttentionPrefill {
    /// Builds the pipeline.
    pub fn new(ctx: &Context) -> Self {
        AttentionPrefill {
            pipeline: ctx.pipeline("attention_prefill", sources::ATTENTION_PREFILL, "main", &[]),
        }
    }

    /// Makes the bind group for one site.
    pub fn bind(
        &self,
        ctx: &Context,
        shape: AttentionShape,
        buffers: &AttentionBuffers<'_>,
    ) -> Result<AttentionPrefillBinding> {
        let params = params(ctx, shape, buffers.q_stride)?;
        let bind_group = ctx.bind_group(
            "attention_prefill",
            &self.pipeline,
            &[
                buffers.step.binding(),
                params.binding(),
                buffers.q.binding(),
                buffers.k_cache.binding(),
                buffers.v_cache.binding(),
                buffers.out.binding(),
            ],
        );
        Ok(AttentionPrefillBinding {
            bind_group,
            heads: shape.heads as u32,
            _params: params,
        })
    }

    /// Attention for `tokens` queries (the step uniform must hold the same count).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &AttentionPrefillBinding,
        tokens: u32,
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(binding.heads, tokens, 1);
    }
}
