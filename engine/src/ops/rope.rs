//! RoPE on q and k fused with the KV-cache append: `shaders/rope.wgsl`.
//! CPU twin: [`crate::reference::rope::rope_append`].

use super::attention::{cache_pipelines, pipeline_index, AttentionShape, KvCacheDtype};
use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
}

const WORKGROUP: u32 = 64;

/// Rotates a step's q in place and appends its rotated k and raw v to the layer's KV cache.
pub struct Rope {
    /// One per [`KvCacheDtype`] (indexed by [`pipeline_index`]).
    pipelines: [wgpu::ComputePipeline; 2],
}

/// Bindings for one layer (its q|k|v buffer and caches), made at load.
pub struct RopeBinding {
    bind_group: wgpu::BindGroup,
    shape: AttentionShape,
    _params: GpuBuffer,
    _inv_freq: GpuBuffer,
}

impl Rope {
    /// Builds the pipelines (one per cache dtype).
    pub fn new(ctx: &Context) -> Self {
        Rope {
            pipelines: cache_pipelines(ctx, "rope", sources::ROPE),
        }
    }

    /// `step`: [`super::StepParams`]; `inv_freq`: [head_dim / 2] (see
    /// [`crate::reference::rope::inv_freq`], or a scaled variant); `qkv`: f32
    /// [T, (heads + 2·kv_heads)·head_dim]; `k_cache`, `v_cache`: [kv_heads, max_seq, head_dim] in
    /// `shape.cache`'s dtype ([`AttentionShape::cache_bytes`] each).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &Context,
        shape: AttentionShape,
        inv_freq: &[f32],
        step: &GpuBuffer,
        qkv: &GpuBuffer,
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
    ) -> Result<RopeBinding> {
        shape.validate()?;
        if inv_freq.len() != shape.head_dim / 2 {
            return Err(Error::Invalid(format!(
                "rope: {} frequencies for head_dim {}",
                inv_freq.len(),
                shape.head_dim
            )));
        }
        let params = Params {
            heads: shape.heads as u32,
            kv_heads: shape.kv_heads as u32,
            head_dim: shape.head_dim as u32,
            max_seq: shape.max_seq as u32,
        };
        let params = GpuBuffer::from_slice(ctx, "rope.params", &[params], BufferUsage::Uniform)?;
        let inv_freq = GpuBuffer::from_slice(ctx, "rope.inv_freq", inv_freq, BufferUsage::Storage)?;
        let bind_group = ctx.bind_group(
            "rope",
            &self.pipelines[pipeline_index(shape.cache)],
            &[
                step.binding(),
                params.binding(),
                inv_freq.binding(),
                qkv.binding(),
                k_cache.binding(),
                v_cache.binding(),
            ],
        );
        Ok(RopeBinding {
            bind_group,
            shape,
            _params: params,
            _inv_freq: inv_freq,
        })
    }

    /// Rotates and appends `tokens` tokens (the step uniform must hold the same count).
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, binding: &RopeBinding, tokens: u32) {
        let shape = binding.shape;
        // One rotation pair (two elements) per invocation; an f16 cache packs element pairs, so two.
        let elements_per_invocation = match shape.cache {
            KvCacheDtype::F32 => 2,
            KvCacheDtype::F16 => 4,
        };
        let per_token =
            (shape.heads + 2 * shape.kv_heads) * shape.head_dim / elements_per_invocation;
        let invocations = tokens * per_token as u32;
        let (x, y) = super::dispatch_grid(invocations.div_ceil(WORKGROUP));
        pass.set_pipeline(&self.pipelines[pipeline_index(shape.cache)]);
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
}
