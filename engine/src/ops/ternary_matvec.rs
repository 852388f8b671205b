//! Ternary projection for decode: `shaders/ternary_matvec.wgsl` (+ `shaders/subgroup/ternary_matvec.wgsl`).
//! CPU twin: [`crate::reference::ternary_ops::ternary_project`].
//!
//! Also defines what the matvec and [`super::ternary_matmul`] share: the [`Epilogue`], the buffers of a
//! projection site ([`TernaryProjection`]) and its bind group.

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::layout::words_per_row;
use crate::{Error, Result};

/// What a projection does with its value `f32(Σ t·q) · inv_scale · row_scale[n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// `out[t, n] = value`.
    Store,
    /// `out[t, n] += value` (out is the residual stream).
    AddResidual,
    /// Fused gate|up weight (2·I rows, gate first): `out[t, i] = relu(gate_i)² · up_i`, out is [T, I].
    Relu2Mul,
    /// As [`Epilogue::Relu2Mul`] with `silu(gate_i) · up_i` (SwiGLU).
    SiluMul,
}

impl Epilogue {
    /// Reads a gate row and an up row per output.
    pub fn is_gated(self) -> bool {
        matches!(self, Epilogue::Relu2Mul | Epilogue::SiluMul)
    }

    /// Outputs per token for a weight of `rows` rows.
    pub fn outputs(self, rows: usize) -> usize {
        if self.is_gated() {
            rows / 2
        } else {
            rows
        }
    }

    /// The shader's `EPILOGUE` override.
    pub(crate) fn shader_code(self) -> f64 {
        match self {
            Epilogue::Store => 0.0,
            Epilogue::AddResidual => 1.0,
            Epilogue::Relu2Mul => 2.0,
            Epilogue::SiluMul => 3.0,
        }
    }
}

/// How rows map to invocations; see the shaders' headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatvecLayout {
    /// One invocation per row, no reduction: fastest on CPU adapters.
    RowPerInvocation,
    /// One subgroup per row reduced with `subgroupAdd`: real GPUs with subgroups.
    SubgroupPerRow,
    /// A group of invocations per row reduced in workgroup memory: GPUs without subgroups.
    WorkgroupReduce,
}

impl MatvecLayout {
    /// The fastest layout this adapter supports: per invocation on CPU adapters, per subgroup
    /// where there are subgroups, else workgroup reduction.
    pub fn for_adapter(ctx: &Context) -> Self {
        if ctx.caps.is_cpu {
            MatvecLayout::RowPerInvocation
        } else if ctx.caps.subgroups && ctx.caps.subgroup_min_size > 0 {
            MatvecLayout::SubgroupPerRow
        } else {
            MatvecLayout::WorkgroupReduce
        }
    }
}

const ROW_PER_INVOCATION_WG: u32 = 64;
const SUBGROUP_WG: u32 = 128;
const REDUCE_WG: u32 = 256;
/// Invocations per row in [`MatvecLayout::WorkgroupReduce`] (8 rows per workgroup).
const REDUCE_THREADS_PER_ROW: u32 = 32;

/// The buffers of one projection site, bound once at load.
pub struct TernaryProjection<'a> {
    /// Input width K.
    pub k: usize,
    /// Weight rows: N, or 2·I for a fused gate|up weight with a gated epilogue.
    pub rows: usize,
    /// u32 [rows, words_per_row(k)] in the engine layout ([`crate::reference::ternary`]), in a buffer
    /// of at least [`weight_bytes`].
    pub weights: &'a GpuBuffer,
    /// f32 `[rows]`: the scale each row's value is multiplied by.
    pub row_scale: &'a GpuBuffer,
    /// [`super::StepParams`]: T is read from it at run time.
    pub step: &'a GpuBuffer,
    /// u32 [T, padded_activation_words(k)]: packed int8 activations.
    pub xq: &'a GpuBuffer,
    /// `[T]` [`super::ActStats`].
    pub stats: &'a GpuBuffer,
    /// f32 [T, epilogue.outputs(rows)].
    pub out: &'a GpuBuffer,
}

/// Bytes a weight buffer of `rows` × `k` must have: the packed rows, padded to whole `vec4<u32>`
/// because the kernels load 4 code words at a time (no padding when rows · words_per_row(k) % 4 == 0,
/// as in every model whose K is a multiple of 64).
pub fn weight_bytes(rows: usize, k: usize) -> u64 {
    ((rows * words_per_row(k) * 4) as u64).next_multiple_of(16)
}

/// WGSL twin: `struct Params` in `shaders/ternary_matvec.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    words: u32,
    rows: u32,
    up_row: u32,
    out_stride: u32,
}

/// A projection site's bind group (ternary matvec or matmul), made at load.
pub struct TernaryBinding {
    pub(crate) bind_group: wgpu::BindGroup,
    /// Outputs per token.
    pub(crate) outputs: u32,
    _params: GpuBuffer,
}

/// Checks the buffers of `site` and makes its bind group for `pipeline` (shared with the matmul).
pub(crate) fn bind_projection(
    ctx: &Context,
    label: &str,
    pipeline: &wgpu::ComputePipeline,
    epilogue: Epilogue,
    site: &TernaryProjection<'_>,
) -> Result<TernaryBinding> {
    let invalid = |what: String| Err(Error::Invalid(format!("{label}: {what}")));
    if site.k == 0 || site.rows == 0 {
        return invalid(format!("empty weight {}×{}", site.rows, site.k));
    }
    if epilogue.is_gated() && !site.rows.is_multiple_of(2) {
        return invalid(format!(
            "{epilogue:?} needs a fused gate|up weight with an even row count, got {}",
            site.rows
        ));
    }
    let words = words_per_row(site.k);
    let weight_bytes = weight_bytes(site.rows, site.k);
    if site.weights.size < weight_bytes {
        return invalid(format!(
            "weight buffer holds {} bytes, {}×{} needs {weight_bytes} (see weight_bytes)",
            site.weights.size, site.rows, site.k
        ));
    }
    // Ternary tensors are small (a 70B model's largest is under 128 MiB), so one binding suffices.
    if weight_bytes > ctx.caps.max_binding_bytes {
        return invalid(format!(
            "{weight_bytes}-byte weight exceeds the adapter's {}-byte storage binding",
            ctx.caps.max_binding_bytes
        ));
    }
    if site.row_scale.size < (site.rows * 4) as u64 {
        return invalid(format!("row_scale needs {} floats", site.rows));
    }
    let outputs = epilogue.outputs(site.rows);
    let params = Params {
        words: words as u32,
        rows: outputs as u32,
        up_row: outputs as u32,
        out_stride: outputs as u32,
    };
    let params = GpuBuffer::from_slice(ctx, label, &[params], BufferUsage::Uniform)?;
    let bind_group = ctx.bind_group(
        label,
        pipeline,
        &[
            site.step.binding(),
            params.binding(),
            site.weights.slice_binding(0, weight_bytes),
            site.xq.binding(),
            site.stats.binding(),
            site.row_scale.binding(),
            site.out.binding(),
        ],
    );
    Ok(TernaryBinding {
        bind_group,
        outputs: outputs as u32,
        _params: params,
    })
}

/// Ternary projection of one token (decode): int8 activations times ternary rows.
pub struct TernaryMatvec {
    pipeline: wgpu::ComputePipeline,
    epilogue: Epilogue,
    rows_per_workgroup: u32,
}

impl TernaryMatvec {
    /// The kernel for `epilogue` in this adapter's layout.
    pub fn new(ctx: &Context, epilogue: Epilogue) -> Result<Self> {
        Self::with_layout(ctx, epilogue, MatvecLayout::for_adapter(ctx))
    }

    /// The kernel in a given layout (tests run every layout the adapter supports).
    pub fn with_layout(ctx: &Context, epilogue: Epilogue, layout: MatvecLayout) -> Result<Self> {
        let code = epilogue.shader_code();
        let (pipeline, rows_per_workgroup) = match layout {
            MatvecLayout::RowPerInvocation => {
                let constants = [("EPILOGUE", code), ("WG", f64::from(ROW_PER_INVOCATION_WG))];
                let pipeline = ctx.pipeline(
                    "ternary_matvec",
                    sources::TERNARY_MATVEC,
                    "row_per_invocation",
                    &constants,
                );
                (pipeline, ROW_PER_INVOCATION_WG)
            }
            MatvecLayout::WorkgroupReduce => {
                let constants = [
                    ("EPILOGUE", code),
                    ("WG", f64::from(REDUCE_WG)),
                    ("TPR", f64::from(REDUCE_THREADS_PER_ROW)),
                ];
                let pipeline = ctx.pipeline(
                    "ternary_matvec",
                    sources::TERNARY_MATVEC,
                    "workgroup_reduce",
                    &constants,
                );
                (pipeline, REDUCE_WG / REDUCE_THREADS_PER_ROW)
            }
            MatvecLayout::SubgroupPerRow => {
                if !ctx.caps.subgroups || ctx.caps.subgroup_min_size == 0 {
                    return Err(Error::Gpu(format!(
                        "{}: the subgroup matvec needs subgroup support",
                        ctx.adapter_name()
                    )));
                }
                let rows = (SUBGROUP_WG / ctx.caps.subgroup_min_size).max(1);
                let constants = [
                    ("EPILOGUE", code),
                    ("WG", f64::from(SUBGROUP_WG)),
                    ("SG_ROWS", f64::from(rows)),
                ];
                #[cfg(not(target_arch = "wasm32"))]
                let directive = "";
                #[cfg(target_arch = "wasm32")]
                let directive = "enable subgroups;\n";
                let source = [directive, sources::SUBGROUP_TERNARY_MATVEC].concat();
                let pipeline =
                    ctx.pipeline("ternary_matvec", &source, "subgroup_per_row", &constants);
                (pipeline, rows)
            }
        };
        Ok(TernaryMatvec {
            pipeline,
            epilogue,
            rows_per_workgroup,
        })
    }

    /// Checks `site`'s buffers against its sizes and makes its bind group.
    pub fn bind(&self, ctx: &Context, site: &TernaryProjection<'_>) -> Result<TernaryBinding> {
        bind_projection(ctx, "ternary_matvec", &self.pipeline, self.epilogue, site)
    }

    /// Every output for the step's tokens (T from the step uniform; meant for T = 1).
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, binding: &TernaryBinding) {
        let (x, y) = super::dispatch_grid(binding.outputs.div_ceil(self.rows_per_workgroup));
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
}
