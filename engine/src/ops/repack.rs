//! Repack of ternary weights from a file's layout into the engine layout. On a GPU the loader
//! uploads a tensor's raw bytes and runs one dispatch, so no CPU pass touches the weights; on a CPU
//! adapter it repacks on the host ([`host`]) and uploads the result, the same words and checks.
//! Kernels: `shaders/repack_{hf_packed,i2s,tq2_0,tq1_0}.wgsl`. CPU twins: [`crate::reference::repack`]
//! (decode) followed by [`crate::reference::ternary::pack_ternary`].

mod host;

use half::f16;

use super::{dispatch_grid, sources};
use crate::gpu::{BufferUsage, Context, GpuBuffer, Uploader};
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
    /// First output word (the tensor's first row in a fused weight).
    out_offset: u32,
    /// The tensor's entry in the queue's status array.
    slot: u32,
    _pad: [u32; 2],
}

/// What a repack reports in its status entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Status {
    invalid_codes: u32,
    scale_min: u32,
    scale_max: u32,
    _pad: u32,
}

const EMPTY_STATUS: Status = Status {
    invalid_codes: 0,
    scale_min: u32::MAX,
    scale_max: 0,
    _pad: 0,
};

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

    /// A queue for up to `capacity` repacks whose checks are read back together.
    pub fn queue(&self, ctx: &Context, capacity: usize) -> Result<RepackQueue<'_>> {
        let status = vec![EMPTY_STATUS; capacity.max(1)];
        Ok(RepackQueue {
            repacker: self,
            status: GpuBuffer::from_slice(ctx, "repack.status", &status, BufferUsage::Storage)?,
            tensors: Vec::with_capacity(capacity),
            host_words: Vec::new(),
        })
    }
}

/// Bytes of a [rows, cols] ternary matrix in the engine layout.
pub fn engine_bytes(rows: usize, cols: usize) -> u64 {
    (rows * words_per_row(cols)) as u64 * 4
}

/// Repacks submitted to the GPU one after another without waiting for any, so the loader reads the
/// next tensor from its file while the GPU repacks the last; each writes its invalid-code count and
/// block-scale range to its own status entry, and [`RepackQueue::finish`] reads them all back once.
/// Repacks done on the host ([`RepackQueue::repack_on_host`]) keep their status here instead.
pub struct RepackQueue<'a> {
    repacker: &'a Repacker,
    status: GpuBuffer,
    /// Each submitted tensor by status slot: its name, layout and, if repacked on the host, status.
    tensors: Vec<(String, TernaryLayout, Option<Status>)>,
    /// The host repack's output, reused from tensor to tensor.
    host_words: Vec<u32>,
}

/// Where a tensor's repacked words go: `words` u32 from word `out_offset` of the output.
struct Placement {
    code_bytes: u64,
    words: usize,
    out_offset: usize,
}

impl RepackQueue<'_> {
    /// Repacks submitted so far: the status slot of the next one.
    pub fn submitted(&self) -> usize {
        self.tensors.len()
    }

    /// Checks tensor `name` (W[rows, cols] in `layout`, `raw_bytes` of it) against the layout, the
    /// binding limit, the rows of `out` it goes to and the queue's capacity.
    #[allow(clippy::too_many_arguments)] // one tensor's description, as the kernels take it
    fn place(
        &self,
        ctx: &Context,
        name: &str,
        layout: TernaryLayout,
        raw_bytes: u64,
        rows: usize,
        cols: usize,
        out: &GpuBuffer,
        first_row: usize,
    ) -> Result<Placement> {
        layout.check_shape(name, rows, cols)?;
        let code_bytes = layout.code_bytes(rows, cols) as u64;
        if raw_bytes < code_bytes {
            return Err(Error::Invalid(format!(
                "{name}: {} {rows}×{cols} needs {code_bytes} bytes, the upload has {raw_bytes}",
                layout.name(),
            )));
        }
        let words = rows * words_per_row(cols);
        let out_offset = first_row * words_per_row(cols);
        let limit = ctx.caps.max_binding_bytes;
        if code_bytes > limit || out.size > limit {
            return Err(Error::Gpu(format!(
                "{name}: {rows}×{cols} ternary weights exceed the adapter's {limit}-byte binding limit"
            )));
        }
        if (out_offset + words) as u64 * 4 > out.size {
            return Err(Error::Invalid(format!(
                "{name}: rows {first_row}..{} do not fit the {}-byte weight they are written to",
                first_row + rows,
                out.size
            )));
        }
        if self.tensors.len() as u64 * 16 >= self.status.size {
            return Err(Error::Invalid(format!(
                "{name}: the repack queue holds {} tensors",
                self.status.size / 16
            )));
        }
        Ok(Placement {
            code_bytes,
            words,
            out_offset,
        })
    }

    /// Repacks tensor `name` (W[rows, cols] in `layout`, its file bytes in `raw`) on the host into
    /// `out` from row `first_row` on, as [`RepackQueue::submit`] does on the GPU: for CPU adapters.
    /// The upload through `uploader` starts at once; its status is checked with the others at
    /// [`RepackQueue::finish`].
    #[allow(clippy::too_many_arguments)] // one tensor's description, as `submit` takes it
    pub fn repack_on_host(
        &mut self,
        ctx: &Context,
        uploader: &mut Uploader,
        name: &str,
        layout: TernaryLayout,
        raw: &[u8],
        rows: usize,
        cols: usize,
        out: &GpuBuffer,
        first_row: usize,
    ) -> Result<()> {
        let place = self.place(
            ctx,
            name,
            layout,
            raw.len() as u64,
            rows,
            cols,
            out,
            first_row,
        )?;
        self.host_words.resize(place.words, 0);
        let status = host::repack(layout, raw, rows, cols, &mut self.host_words);
        let bytes = bytemuck::cast_slice(&self.host_words);
        uploader.write(ctx, out, place.out_offset as u64 * 4, bytes)?;
        uploader.submit(ctx);
        self.tensors.push((name.to_string(), layout, Some(status)));
        Ok(())
    }

    /// Submits the repack of tensor `name` (W[rows, cols] in `layout`, its file bytes in `raw`) into
    /// `out` from row `first_row` on (rows of `words_per_row(cols)` u32). `raw` may be dropped at
    /// once: the GPU keeps it until the repack has run.
    #[allow(clippy::too_many_arguments)] // one tensor's description, as the kernels take it
    pub fn submit(
        &mut self,
        ctx: &Context,
        name: &str,
        layout: TernaryLayout,
        raw: &GpuBuffer,
        rows: usize,
        cols: usize,
        out: &GpuBuffer,
        first_row: usize,
    ) -> Result<()> {
        let Placement {
            code_bytes,
            words,
            out_offset,
        } = self.place(ctx, name, layout, raw.size, rows, cols, out, first_row)?;
        let slot = self.tensors.len();
        let r = self.repacker;
        let (pipeline, fields, grid) = match layout {
            TernaryLayout::HfPacked | TernaryLayout::I2S => {
                let pipeline = if layout == TernaryLayout::HfPacked {
                    &r.hf_packed
                } else {
                    &r.i2s
                };
                let (x, y) = dispatch_grid(words.div_ceil(WORKGROUP) as u32);
                let grid = (x, y, 1);
                (pipeline, [rows, cols, words_per_row(cols), words], grid)
            }
            TernaryLayout::Tq2_0 | TernaryLayout::Tq1_0 => {
                let pipeline = if layout == TernaryLayout::Tq2_0 {
                    &r.tq2_0
                } else {
                    &r.tq1_0
                };
                let blocks = rows * cols / TQ_BLOCK;
                let (x, y) = dispatch_grid(blocks.div_ceil(WORKGROUP) as u32);
                (pipeline, [blocks, 0, 0, 0], (x, y, 1))
            }
        };
        let params = Params {
            fields: fields.map(|f| f as u32),
            out_offset: out_offset as u32,
            slot: slot as u32,
            _pad: [0; 2],
        };
        let params = GpuBuffer::from_slice(ctx, "repack.params", &[params], BufferUsage::Uniform)?;
        let bind_group = ctx.bind_group(
            "repack",
            pipeline,
            &[
                params.binding(),
                raw.slice_binding(0, code_bytes.next_multiple_of(4)),
                out.binding(),
                self.status.binding(),
            ],
        );
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        }
        ctx.queue.submit([encoder.finish()]);
        self.tensors.push((name.to_string(), layout, None));
        Ok(())
    }

    /// Waits for every submitted repack and checks each: an error names the first tensor with codes
    /// that are not ternary or with differing block scales. Returns, in submission order, the tensor
    /// scale each layout stores in its blocks (TQ1_0/TQ2_0: d, a multiplier); HF packed takes it from
    /// a separate tensor and I2_S from the blob's tail ([`crate::reference::repack::i2s_scale`]).
    pub async fn finish(self, ctx: &Context) -> Result<Vec<Option<f32>>> {
        let on_gpu = self.tensors.iter().any(|(_, _, host)| host.is_none());
        let gpu_status: Vec<Status> = match on_gpu {
            true => self.status.read_vec(ctx).await?,
            false => vec![EMPTY_STATUS; self.tensors.len()],
        };
        self.tensors
            .iter()
            .zip(gpu_status)
            .map(|((name, layout, host), gpu)| checked_scale(name, *layout, host.unwrap_or(gpu)))
            .collect()
    }
}

/// The tensor scale a repack's status reports, or the error it shows.
fn checked_scale(name: &str, layout: TernaryLayout, status: Status) -> Result<Option<f32>> {
    if status.invalid_codes != 0 {
        return Err(Error::Invalid(format!(
            "{name}: {} weights hold {} invalid 2-bit codes (3): not a ternary tensor",
            layout.name(),
            status.invalid_codes
        )));
    }
    Ok(match layout {
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
    })
}
