//! Ternary projection for prefill (T tokens): `shaders/ternary_matmul.wgsl`, appended to
//! `shaders/ternary_matvec.wgsl` whose bindings and epilogues it shares.
//! CPU twin: [`crate::reference::ternary_ops::ternary_project`].

use super::sources;
use super::ternary_matvec::{bind_projection, Epilogue, TernaryBinding, TernaryProjection};
use crate::gpu::Context;
use crate::Result;

/// Rows per workgroup (one invocation each).
const WG: u32 = 64;
/// Tokens per invocation: the shader's `TILE`.
const TILE: u32 = 8;

/// Ternary projection of T tokens at once (prefill), 8 tokens per invocation.
pub struct TernaryMatmul {
    pipeline: wgpu::ComputePipeline,
    epilogue: Epilogue,
}

impl TernaryMatmul {
    /// The kernel for `epilogue`.
    pub fn new(ctx: &Context, epilogue: Epilogue) -> Self {
        let source = sources::TERNARY_MATMUL;
        let constants = [("EPILOGUE", epilogue.shader_code()), ("WG", f64::from(WG))];
        TernaryMatmul {
            pipeline: ctx.pipeline("ternary_matmul", source, "matmul", &constants),
            epilogue,
        }
    }

    /// Checks `site`'s buffers against its sizes and makes its bind group.
    pub fn bind(&self, ctx: &Context, site: &TernaryProjection<'_>) -> Result<TernaryBinding> {
        bind_projection(ctx, "ternary_matmul", &self.pipeline, self.epilogue, site)
    }

    /// Every output for `tokens` tokens, which must equal the step uniform's T.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &TernaryBinding,
        tokens: u32,
    ) {
        let (x, y) = super::dispatch_grid(binding.outputs.div_ceil(WG));
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(x, y, tokens.div_ceil(TILE));
    }
}
