//! GPU repack of ternary weights from a file's layout into the engine layout: the loader
//! uploads a tensor's raw bytes and runs one dispatch, so no CPU pass touches the weights.
//! Kernels: `shaders/repack_{hf_packed,i2s,tq2_0,tq1_0}.wgsl`. CPU twins: [`crate::reference::repack`]
//! (decode) followed by [`crate::reference::ternary::pack_ternary`].

use half::f16;

use super::{dispatch_grid, sources};
use crate::gpu::{BufferUsage, Context, GpuBuffer};
pub use crate::layout::TernaryLayout;
use crate::layout::{words_per_row, I2S_BLOCK, TQ1_0_BLOCK_BYTES, TQ2_0_BLOCK_BYTES, TQ_BLOCK};
use crate::{Error, Result};

/// A file layout of ternary weights W[rows = out_features, cols = in_features].
impl TernaryLayout {
    /// The layout's name in messages (`HF packed U8`, `I2_S`, `TQ2_0`, `TQ1_0`).
    pub fn name(self) -> &'static str {
        match self {
            TernaryLayout::HfPacked => "HF packed U8",
            TernaryLayout::I2S => "I2_S",
            TernaryLayout::Tq2_0 => "TQ2_0",
            TernaryLayout::Tq1_0 => "TQ1_0",
        }
    }

    /// Bytes of the tensor's codes (for I2_S the scale and padding follow them).
    pub fn code_bytes(self, rows: usize, cols: usize) -> usize {
        match self {
            TernaryLayout::HfPacked | TernaryLayout::I2S => rows * cols / 4,
            TernaryLayout::Tq2_0 => rows * cols / TQ_BLOCK * TQ2_0_BLOCK_BYTES,
            TernaryLayout::Tq1_0 => rows * cols / TQ_BLOCK * TQ1_0_BLOCK_BYTES,
        }
    }

    /// Rejects shapes the layout cannot hold. I2_S: bitnet.cpp's quantizer cuts the flattened tensor
    /// into 128-value blocks and drops a remainder, so rows·cols must be a multiple of 128 (its x86 dot
    /// product further assumes cols % 128 == 0, but the layout itself is defined by flat index).
    pub fn check_shape(self, name: &str, rows: usize, cols: usize) -> Result<()> {
        let n = rows * cols;
        let problem = if n == 0 || u32::try_from(n).is_err() {
            Some(format!(
                "{rows}×{cols} values: expected between 1 and 2³² − 1"
            ))
        } else {
            match self {
                TernaryLayout::HfPacked if !rows.is_multiple_of(4) => Some(format!(
                    "{rows} output rows: the packing needs a multiple of 4"
                )),
                TernaryLayout::I2S if !n.is_multiple_of(I2S_BLOCK) => Some(format!(
                    "{rows}×{cols} = {n} values: I2_S stores whole blocks of {I2S_BLOCK}"
                )),
                TernaryLayout::Tq2_0 | TernaryLayout::Tq1_0 if !cols.is_multiple_of(TQ_BLOCK) => {
                    Some(format!(
                        "row length {cols}: rows must hold whole blocks of {TQ_BLOCK} values"
                    ))
                }
                _ => None,
            }
        };
        match problem {
            Some(msg) => Err(Error::Invalid(format!(
                "{name}: {} weights: {msg}",
                self.name()
            ))),
            None => Ok(()),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    /// HF/I2_S: rows, cols, words per row, output words. TQ: blocks, then padding.
    fields: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Status {
    invalid_codes: u32,
    scale_min: u32,
    scale_max: u32,
    _pad: u32,
}

const WORKGROUP: usize = 64;

/// The four repack pipelines, built once.
pub struct Repacker {
    hf_packed: wgpu::ComputePipeline,
    i2s: wgpu::ComputePipeline,
    tq2_0: wgpu::ComputePipeline,
    tq1_0: wgpu::ComputePipeline,
}

impl Repacker {
    /// Builds the four pipelines.
    pub fn new(ctx: &Context) -> Self {
        Repacker {
            hf_packed: ctx.pipeline("repack_hf_packed", sources::REPACK_HF_PACKED, "main", &[]),
            i2s: ctx.pipeline("repack_i2s", sources::REPACK_I2S, "main", &[]),
            tq2_0: ctx.pipeline("repack_tq2_0", sources::REPACK_TQ2_0, "main", &[]),
            tq1_0: ctx.pipeline("repack_tq1_0", sources::REPACK_TQ1_0, "main", &[]),
        }
    }

    /// Repacks tensor `name` (W[rows, cols] in `layout`, its file bytes in `raw`) into a new buffer in
    /// the engine layout: rows of `words_per_row(cols)` u32. Returns the tensor scale when the layout
    /// stores it in its blocks (TQ1_0/TQ2_0: d, a multiplier); HF packed takes it from a separate
    /// tensor and I2_S from the blob's tail ([`crate::reference::repack::i2s_scale`]). One submit and
    /// one 16-byte readback; `raw` can be dropped afterwards.
    pub async fn repack(
        &self,
        ctx: &Context,
        name: &str,
        layout: TernaryLayout,
        raw: &GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<(GpuBuffer, Option<f32>)> {
        layout.check_shape(name, rows, cols)?;
        let code_bytes = layout.code_bytes(rows, cols) as u64;
        if raw.size < code_bytes {
            return Err(Error::Invalid(format!(
                "{name}: {} {rows}×{cols} needs {code_bytes} bytes, the upload has {}",
                layout.name(),
                raw.size
            )));
        }
        let words = rows * words_per_row(cols);
        let out_bytes = words as u64 * 4;
        let limit = ctx.caps.max_binding_bytes;
        if code_bytes > limit || out_bytes > limit {
            return Err(Error::Gpu(format!(
                "{name}: {rows}×{cols} ternary weights exceed the adapter's {limit}-byte binding limit"
            )));
        }
        let (pipeline, fields, invocations) = match layout {
            TernaryLayout::HfPacked | TernaryLayout::I2S => {
                let pipeline = if layout == TernaryLayout::HfPacked {
                    &self.hf_packed
                } else {
                    &self.i2s
                };
                (pipeline, [rows, cols, words_per_row(cols), words], words)
            }
            TernaryLayout::Tq2_0 | TernaryLayout::Tq1_0 => {
                let pipeline = if layout == TernaryLayout::Tq2_0 {
                    &self.tq2_0
                } else {
                    &self.tq1_0
                };
                let blocks = rows * cols / TQ_BLOCK;
                (pipeline, [blocks, 0, 0, 0], blocks)
            }
        };
        let params = Params {
            fields: fields.map(|f| f as u32),
        };
        let params = GpuBuffer::from_slice(ctx, "repack.params", &[params], BufferUsage::Uniform)?;
        let status = Status {
            invalid_codes: 0,
            scale_min: u32::MAX,
            scale_max: 0,
            _pad: 0,
        };
        let status = GpuBuffer::from_slice(ctx, "repack.status", &[status], BufferUsage::Storage)?;
        let packed = GpuBuffer::new(ctx, name, out_bytes, BufferUsage::Storage)?;
        let bind_group = ctx.bind_group(
            "repack",
            pipeline,
            &[
                params.binding(),
                raw.slice_binding(0, code_bytes.next_multiple_of(4)),
                packed.binding(),
                status.binding(),
            ],
        );
        let (x, y) = dispatch_grid(invocations.div_ceil(WORKGROUP) as u32);
        ctx.run(|encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        })
        .await?;
        let status: Status = status.read_vec(ctx).await?[0];
        if status.invalid_codes != 0 {
            return Err(Error::Invalid(format!(
                "{name}: {} weights hold {} invalid 2-bit codes (3): not a ternary tensor",
                layout.name(),
                status.invalid_codes
            )));
        }
        let scale = match layout {
            TernaryLayout::HfPacked | TernaryLayout::I2S => None,
            // No block with a non-zero value: every scale gives the same (zero) weights.
            _ if status.scale_min > status.scale_max => Some(0.0),
            _ if status.scale_min == status.scale_max => {
                Some(f16::from_bits(status.scale_min as u16).to_f32())
            }
            _ => {
                return Err(Error::Invalid(format!(
                "{name}: {} block scales differ ({} … {}): the engine needs one scale per tensor",
                layout.name(),
                f16::from_bits(status.scale_min as u16),
                f16::from_bits(status.scale_max as u16)
            )))
            }
        };
        Ok((packed, scale))
    }
}
