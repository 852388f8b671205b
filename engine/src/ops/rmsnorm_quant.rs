//! RMSNorm fused with per-token int8 activation quantization: `shaders/rmsnorm_quant.wgsl`.
//! CPU twin: [`crate::reference::norm::rmsnorm_quant`].

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    k: u32,
    padded_words: u32,
    eps: f32,
    normalize: u32,
}

/// Optional RMSNorm then absmax int8 quantization of each token's row, for the ternary
/// projections.
pub struct RmsNormQuant {
    pipeline: wgpu::ComputePipeline,
}

/// Bindings for one norm site (e.g. a layer's input_layernorm), made at load.
pub struct RmsNormQuantBinding {
    bind_group: wgpu::BindGroup,
    _params: GpuBuffer,
}

impl RmsNormQuant {
    /// Builds the pipeline.
    pub fn new(ctx: &Context) -> Self {
        RmsNormQuant {
            pipeline: ctx.pipeline("rmsnorm_quant", sources::RMSNORM_QUANT, "main", &[]),
        }
    }

    /// `x`: f32 [T, k]; `gain`: f32 `[k]`; `xq`: u32 [T, padded_activation_words(k)]; `stats`: `[T]` ActStats.
    /// `norm`: `Some(eps)` normalizes with `gain` first; `None` only quantizes (`gain` is not read).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &Context,
        k: usize,
        norm: Option<f32>,
        x: &GpuBuffer,
        gain: &GpuBuffer,
        xq: &GpuBuffer,
        stats: &GpuBuffer,
    ) -> Result<RmsNormQuantBinding> {
        let params = Params {
            k: k as u32,
            padded_words: super::padded_activation_words(k) as u32,
            eps: norm.unwrap_or(0.0),
            normalize: u32::from(norm.is_some()),
        };
        let params =
            GpuBuffer::from_slice(ctx, "rmsnorm_quant.params", &[params], BufferUsage::Uniform)?;
        let bind_group = ctx.bind_group(
            "rmsnorm_quant",
            &self.pipeline,
            &[
                params.binding(),
                x.binding(),
                gain.binding(),
                xq.binding(),
                stats.binding(),
            ],
        );
        Ok(RmsNormQuantBinding {
            bind_group,
            _params: params,
        })
    }

    /// Normalizes and quantizes `tokens` rows.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &RmsNormQuantBinding,
        tokens: u32,
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(tokens, 1, 1);
    }
}
