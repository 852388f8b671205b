//! Plain f32 RMSNorm (the final norm before the LM head): `shaders/rmsnorm.wgsl`.
//! CPU twin: [`crate::reference::norm::rmsnorm`].

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    k: u32,
    eps: f32,
    _pad: [u32; 2],
}

/// f32 RMSNorm of each token's row, times a gain.
pub struct RmsNorm {
    pipeline: wgpu::ComputePipeline,
}

/// Bindings for one norm site, made at load.
pub struct RmsNormBinding {
    bind_group: wgpu::BindGroup,
    _params: GpuBuffer,
}

impl RmsNorm {
    /// Builds the pipeline.
    pub fn new(ctx: &Context) -> Self {
        RmsNorm {
            pipeline: ctx.pipeline("rmsnorm", sources::RMSNORM, "main", &[]),
        }
    }

    /// `x`: f32 [T, k]; `gain`: f32 `[k]`; `y`: f32 [T, k] (may not alias `x`).
    pub fn bind(
        &self,
        ctx: &Context,
        k: usize,
        eps: f32,
        x: &GpuBuffer,
        gain: &GpuBuffer,
        y: &GpuBuffer,
    ) -> Result<RmsNormBinding> {
        let params = Params {
            k: k as u32,
            eps,
            _pad: [0; 2],
        };
        let params = GpuBuffer::from_slice(ctx, "rmsnorm.params", &[params], BufferUsage::Uniform)?;
        let bind_group = ctx.bind_group(
            "rmsnorm",
            &self.pipeline,
            &[params.binding(), x.binding(), gain.binding(), y.binding()],
        );
        Ok(RmsNormBinding {
            bind_group,
            _params: params,
        })
    }

    /// Normalizes `tokens` rows.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &RmsNormBinding,
        tokens: u32,
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(tokens, 1, 1);
    }
}
