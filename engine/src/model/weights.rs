//! Weights on the GPU: every tensor streamed from its file straight to the device, ternary tensors
//! repacked (or absmean-quantized) there into the engine layout, q|k|v and gate|up fused row-wise.
//! The host holds at most one tensor's bytes at a time.

use crate::format::checkpoint::{
    check_finite, Checkpoint, FloatRef, NormWeight, Projection, WeightData, WeightRef,
};
use crate::format::config::ScaleConvention;
use crate::format::gguf::unpermute_rope_rows;
use crate::format::source::read_range_into;
use crate::gpu::{BufferUsage, Context, GpuBuffer, Uploader};
use crate::layout::TernaryLayout;
use crate::ops::embedding::{DenseTable, TokenTable};
use crate::ops::quantize::Quantizer;
use crate::ops::quantize_rows::RowQuantizer;
use crate::ops::repack::{engine_bytes, RepackQueue, Repacker};
use crate::{Error, Result};
use std::cell::RefCell;

/// A ternary matrix in the engine layout with the scale of each of its rows.
pub struct TernaryWeight {
    /// u32 [rows, words_per_row(cols)].
    pub codes: GpuBuffer,
    /// f32 `[rows]`: multiplies each row's integer dot product (file scales already inverted where the
    /// checkpoint's convention divides).
    pub row_scale: GpuBuffer,
    /// Output features (rows of the matrix).
    pub rows: usize,
    /// Input features (logical columns, before packing).
    pub cols: usize,
}

/// A float matrix kept dense (the FP16 baseline), in row chunks that each fit one storage binding.
pub struct DenseWeight {
    /// [rows, cols]; for gate|up the gate rows [I, cols].
    pub table: DenseTable,
    /// gate|up only: the up rows [I, cols], chunked like `table`.
    pub up: Option<DenseTable>,
}

/// A projection's weight: ternary (BitNet b1.58) or dense (the baseline it is compared against).
pub enum ProjectionWeight {
    /// Loaded with [`ProjectionKind::Ternary`].
    Ternary(TernaryWeight),
    /// Loaded with [`ProjectionKind::Dense`].
    Dense(DenseWeight),
}

impl ProjectionWeight {
    /// Bytes the weight occupies on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        match self {
            ProjectionWeight::Ternary(w) => w.codes.size + w.row_scale.size,
            ProjectionWeight::Dense(w) => {
                table_bytes(&w.table) + w.up.as_ref().map_or(0, table_bytes)
            }
        }
    }
}

fn table_bytes(t: &DenseTable) -> u64 {
    t.chunks.iter().map(|c| c.buffer.size).sum()
}

/// How a model's projections are held on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProjectionKind {
    /// Ternary codes in the engine layout, int8 activations (float latents are quantized at load).
    #[default]
    Ternary,
    /// Float latent weights kept in their stored dtype (f16 for the synthetic baseline), f32
    /// activations: the dense model the BitNet b1.58 paper compares against, at the same shape.
    Dense,
}

/// How the LM head (the [vocab, hidden] matrix that turns the final hidden state into logits) is held
/// on the GPU. At 2B-4T's vocabulary it is the largest single read of a decode step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LmHead {
    /// In the checkpoint's float dtype (bf16 for 2B-4T), as stored.
    #[default]
    Stored,
    /// Per-row absmax int8 with an f32 scale per row, quantized on the GPU at load from the stored
    /// table: half the bytes of bf16, logits `s_r · Σ_k q[r, k] · x[k]` with x kept in f32. A head
    /// tied to the embedding makes the embedding int8 too (the float table is dropped).
    Int8,
}

impl LmHead {
    /// The name the CLI and reports use: `stored` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            LmHead::Stored => "stored",
            LmHead::Int8 => "int8",
        }
    }
}

/// One transformer block's weights on the GPU.
pub struct LayerWeights {
    /// f32 `[hidden]`: RMSNorm weight before attention.
    pub input_norm: GpuBuffer,
    /// f32 `[hidden]`: RMSNorm weight before the feed-forward block.
    pub post_attention_norm: GpuBuffer,
    /// f32 `[heads·hd]`: RMSNorm weight on the attention output, before `o`; `None` for
    /// architectures without sub-norms (plain llama-style BitNet).
    pub attention_sub_norm: Option<GpuBuffer>,
    /// f32 `[intermediate]`: RMSNorm weight on act(gate)·up, before `down`; `None` like
    /// `attention_sub_norm`.
    pub ffn_sub_norm: Option<GpuBuffer>,
    /// Rows: q (heads·hd), then k and v (kv_heads·hd each).
    pub qkv: ProjectionWeight,
    /// Attention output projection: [hidden, heads·hd].
    pub o: ProjectionWeight,
    /// Rows: gate (intermediate), then up (intermediate).
    pub gate_up: ProjectionWeight,
    /// Feed-forward output projection: [hidden, intermediate].
    pub down: ProjectionWeight,
}

/// A whole model's weights on the GPU.
pub struct Weights {
    /// [vocab, hidden] token embedding, in its stored float dtype (int8 when an [`LmHead::Int8`]
    /// head is tied to it).
    pub embedding: TokenTable,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<TokenTable>,
    /// f32 `[hidden]`: RMSNorm weight after the last layer.
    pub final_norm: GpuBuffer,
    /// One entry per transformer block, in order.
    pub layers: Vec<LayerWeights>,
}

impl Weights {
    /// The LM head's table: its own or the embedding's.
    pub fn head(&self) -> &TokenTable {
        self.lm_head.as_ref().unwrap_or(&self.embedding)
    }

    /// Bytes the LM head's table occupies on the GPU (the embedding's when tied).
    pub fn head_bytes(&self) -> u64 {
        self.head().gpu_bytes()
    }

    /// Bytes these weights occupy on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        let norms = |l: &LayerWeights| {
            [
                Some(&l.input_norm),
                Some(&l.post_attention_norm),
                l.attention_sub_norm.as_ref(),
                l.ffn_sub_norm.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|b| b.size)
            .sum::<u64>()
        };
        self.embedding.gpu_bytes()
            + self.lm_head.as_ref().map_or(0, TokenTable::gpu_bytes)
            + self.final_norm.size
            + self
                .layers
                .iter()
                .map(|l| {
                    norms(l)
                        + [&l.qkv, &l.o, &l.gate_up, &l.down]
                            .iter()
                            .map(|w| w.gpu_bytes())
                            .sum::<u64>()
                })
                .sum::<u64>()
    }
}

/// Called after each tensor with (tensors done, tensors in all).
pub type LoadProgress<'a> = &'a mut dyn FnMut(usize, usize);

/// Uploads every weight of `checkpoint`, the projections as `kind`, the LM head as `lm_head`.
pub async fn load(
    ctx: &Context,
    checkpoint: &Checkpoint,
    kind: ProjectionKind,
    lm_head: LmHead,
    progress: LoadProgress<'_>,
) -> Result<Weights> {
    let config = &checkpoint.config;
    let repacker = Repacker::new(ctx);
    let loader = Loader {
        ctx,
        checkpoint,
        repacks: RefCell::new(repacker.queue(ctx, config.num_layers * TENSORS_PER_LAYER)?),
        row_scales: RefCell::new(Vec::new()),
        quantizer: Quantizer::new(ctx),
        uploader: RefCell::new(Uploader::new(ctx)),
    };
    let total = config.num_layers * 11 + 3;
    let mut done = 0;
    let mut step = |progress: &mut dyn FnMut(usize, usize), n: usize| {
        done += n;
        progress(done, total);
    };

    let embedding = loader.table(&checkpoint.embedding()?).await?;
    let (embedding, head) = match (lm_head, config.tie_word_embeddings) {
        (LmHead::Stored, true) => (TokenTable::Float(embedding), None),
        (LmHead::Int8, true) => (loader.int8(&embedding, "embedding.int8").await?, None),
        (LmHead::Stored, false) => {
            let head = loader.table(&checkpoint.lm_head()?).await?;
            (TokenTable::Float(embedding), Some(TokenTable::Float(head)))
        }
        (LmHead::Int8, false) => {
            let head = loader.table(&checkpoint.lm_head()?).await?;
            let head = loader.int8(&head, "lm_head.int8").await?;
            (TokenTable::Float(embedding), Some(head))
        }
    };
    step(progress, 1);
    let final_norm = loader.vector(&checkpoint.final_norm()?).await?;
    step(progress, 2);

    let mut layers = Vec::with_capacity(config.num_layers);
    for layer in 0..config.num_layers {
        let norm = async |n| loader.vector(&checkpoint.norm(layer, n)?).await;
        let sub_norm = async |n| -> Result<Option<GpuBuffer>> {
            match config.sub_norms {
                true => norm(n).await.map(Some),
                false => Ok(None),
            }
        };
        let weights = LayerWeights {
            input_norm: norm(NormWeight::InputLn).await?,
            post_attention_norm: norm(NormWeight::PostAttnLn).await?,
            attention_sub_norm: sub_norm(NormWeight::AttnSub).await?,
            ffn_sub_norm: sub_norm(NormWeight::FfnSub).await?,
            qkv: loader
                .projection(kind, layer, &[Projection::Q, Projection::K, Projection::V])
                .await?,
            o: loader.projection(kind, layer, &[Projection::O]).await?,
            gate_up: loader
                .projection(kind, layer, &[Projection::Gate, Projection::Up])
                .await?,
            down: loader.projection(kind, layer, &[Projection::Down]).await?,
        };
        layers.push(weights);
        step(progress, 11);
    }
    loader.write_row_scales().await?;
    Ok(Weights {
        embedding,
        lm_head: head,
        final_norm,
        layers,
    })
}

/// Ternary tensors of a layer: q, k, v, o, gate, up, down.
const TENSORS_PER_LAYER: usize = 7;

struct Loader<'a> {
    ctx: &'a Context,
    checkpoint: &'a Checkpoint,
    /// Every ternary tensor of the load is repacked through one queue, checked once at the end.
    repacks: RefCell<RepackQueue<'a>>,
    /// Fused weights whose row scales are written once the repack queue's block scales are known.
    row_scales: RefCell<Vec<PendingRowScales>>,
    quantizer: Quantizer,
    /// Tables and host-repacked weights go to the GPU through reused staging memory.
    uploader: RefCell<Uploader>,
}

/// A fused weight's row-scale buffer and, per part, its rows and where its scale comes from.
struct PendingRowScales {
    buffer: wgpu::Buffer,
    parts: Vec<(usize, PartScale)>,
}

/// Where one part's scale comes from.
enum PartScale {
    /// Known at upload: the file's scale tensor or I2_S tail, or the absmean of float latents.
    Known(f32),
    /// The block scale of the queue's `slot`-th repack (TQ1_0/TQ2_0 store d in every block).
    Blocks { slot: usize },
}

/// Rows streamed per read when uploading a dense table (bounded host memory for a 656 MB embedding).
const TABLE_READ_BYTES: usize = 32 << 20;

impl Loader<'_> {
    /// The int8 form of `table` (the float table's buffers are freed when the caller drops it).
    async fn int8(&self, table: &DenseTable, label: &str) -> Result<TokenTable> {
        let quantizer = RowQuantizer::new(self.ctx);
        Ok(TokenTable::Int8(
            quantizer.quantize(self.ctx, label, table).await?,
        ))
    }

    async fn read(&self, source: usize, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.read_into(source, offset, len, &mut bytes).await?;
        Ok(bytes)
    }

    /// [`Loader::read`] into a buffer reused from block to block.
    async fn read_into(
        &self,
        source: usize,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let source = self.checkpoint.sources.get(source).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor refers to source {source}, the checkpoint has {}",
                self.checkpoint.sources.len()
            ))
        })?;
        read_range_into(source.as_ref(), offset, len, buf).await
    }

    /// Uploads rows `first_row..` of `table` from `bytes` (the uploader waits for the previous
    /// block's copy; the next block is read from the file meanwhile).
    fn upload_rows(&self, table: &DenseTable, first_row: usize, bytes: &[u8]) -> Result<()> {
        let mut uploader = self.uploader.borrow_mut();
        table.upload_rows(self.ctx, &mut uploader, first_row, bytes)?;
        uploader.submit(self.ctx);
        Ok(())
    }

    /// A small f32 vector (norm gains).
    async fn vector(&self, r: &FloatRef) -> Result<GpuBuffer> {
        let values = self.checkpoint.read_f32_vector(r).await?;
        GpuBuffer::from_slice(self.ctx, &r.name, &values, BufferUsage::Storage)
    }

    /// A [rows, cols] float table (embedding, untied head), streamed in row blocks into its chunks.
    async fn table(&self, r: &FloatRef) -> Result<DenseTable> {
        let dtype = r.dtype;
        let table = DenseTable::allocate(self.ctx, &r.name, dtype, r.rows, r.cols)?;
        let row_bytes = r.cols * dtype.bytes();
        let rows_per_read = (TABLE_READ_BYTES / row_bytes.max(1)).max(1);
        let (mut row, mut block) = (0, Vec::new());
        while row < r.rows {
            let rows = rows_per_read.min(r.rows - row);
            let (offset, len) = (r.offset + (row * row_bytes) as u64, rows * row_bytes);
            self.read_into(r.source, offset, len as u64, &mut block)
                .await?;
            check_finite(r, row * r.cols, &block)?;
            self.upload_rows(&table, row, &block)?;
            row += rows;
        }
        self.ctx.wait().await?;
        Ok(table)
    }

    /// The projections `parts` of `layer` as one weight of `kind`.
    async fn projection(
        &self,
        kind: ProjectionKind,
        layer: usize,
        parts: &[Projection],
    ) -> Result<ProjectionWeight> {
        Ok(match kind {
            ProjectionKind::Ternary => ProjectionWeight::Ternary(self.fused(layer, parts).await?),
            ProjectionKind::Dense => ProjectionWeight::Dense(self.dense(layer, parts).await?),
        })
    }

    /// The float projections `parts` of `layer` kept dense: q|k|v stacked row-wise into one table;
    /// gate and up in two tables chunked alike, so a chunk's gate and up rows meet in one dispatch.
    async fn dense(&self, layer: usize, parts: &[Projection]) -> Result<DenseWeight> {
        let refs = parts
            .iter()
            .map(|&p| self.checkpoint.projection(layer, p))
            .collect::<Result<Vec<_>>>()?;
        let float_dtype = |r: &WeightRef| match r.data {
            WeightData::Float { dtype } if !r.rope_permuted => Ok(dtype),
            _ => Err(Error::format(
                &r.file,
                &r.name,
                "a dense model needs float projection weights in HF row order",
            )),
        };
        let dtype = float_dtype(&refs[0])?;
        for r in &refs {
            if float_dtype(r)? != dtype || r.cols != refs[0].cols {
                return Err(Error::format(
                    &r.file,
                    &r.name,
                    "fused projections differ in dtype or width",
                ));
            }
        }
        let label = format!("layer {layer} {parts:?}");
        let (cols, gated) = (refs[0].cols, parts == [Projection::Gate, Projection::Up]);
        let stacks: Vec<&[WeightRef]> = if gated {
            refs.chunks(1).collect()
        } else {
            vec![&refs[..]]
        };
        let (mut tables, mut block) = (Vec::with_capacity(stacks.len()), Vec::new());
        for stack in stacks {
            let rows = stack.iter().map(|r| r.rows).sum();
            let table = DenseTable::allocate(self.ctx, &label, dtype, rows, cols)?;
            let mut first_row = 0;
            for r in stack {
                let row_bytes = cols * dtype.bytes();
                let rows_per_read = (TABLE_READ_BYTES / row_bytes).max(1);
                for row in (0..r.rows).step_by(rows_per_read) {
                    let n = rows_per_read.min(r.rows - row);
                    let offset = r.offset + (row * row_bytes) as u64;
                    self.read_into(r.source, offset, (n * row_bytes) as u64, &mut block)
                        .await?;
                    self.upload_rows(&table, first_row + row, &block)?;
                }
                first_row += r.rows;
            }
            tables.push(table);
        }
        self.ctx.wait().await?;
        let up = gated.then(|| tables.pop()).flatten();
        let table = tables.pop().expect("one table per stack");
        Ok(DenseWeight { table, up })
    }

    /// The projections `parts` of `layer` in the engine layout, stacked row-wise into one weight:
    /// each part repacked straight into its rows, on the GPU (on a CPU adapter, on the host; float
    /// latents quantized, then copied). Nothing waits for a GPU repack: the next part is read from
    /// its file while the GPU works.
    async fn fused(&self, layer: usize, parts: &[Projection]) -> Result<TernaryWeight> {
        let refs = parts
            .iter()
            .map(|&p| self.checkpoint.projection(layer, p))
            .collect::<Result<Vec<_>>>()?;
        let label = format!("layer {layer} {parts:?}");
        let cols = refs[0].cols;
        if refs.iter().any(|r| r.cols != cols) {
            return Err(Error::Invalid(format!(
                "{label}: fused projections differ in width"
            )));
        }
        let rows: usize = refs.iter().map(|r| r.rows).sum();
        let codes = GpuBuffer::new(
            self.ctx,
            &label,
            engine_bytes(rows, cols),
            BufferUsage::Storage,
        )?;
        let row_scale = GpuBuffer::new(self.ctx, &label, rows as u64 * 4, BufferUsage::Storage)?;
        let mut part_scales = Vec::with_capacity(refs.len());
        let mut first_row = 0;
        for r in &refs {
            part_scales.push((r.rows, self.ternary(r, &codes, first_row).await?));
            first_row += r.rows;
        }
        self.row_scales.borrow_mut().push(PendingRowScales {
            buffer: row_scale.buffer.clone(),
            parts: part_scales,
        });
        Ok(TernaryWeight {
            codes,
            row_scale,
            rows,
            cols,
        })
    }

    /// Puts projection `r` in the engine layout into rows `first_row..` of `codes` and says where
    /// the multiplier of its integer dot products comes from.
    async fn ternary(
        &self,
        r: &WeightRef,
        codes: &GpuBuffer,
        first_row: usize,
    ) -> Result<PartScale> {
        let mut bytes = self.read(r.source, r.offset, r.len).await?;
        if r.rope_permuted {
            let row_bytes = match r.data {
                WeightData::Ternary { layout, .. } => layout.code_bytes(r.rows, r.cols) / r.rows,
                WeightData::Float { dtype } => r.cols * dtype.bytes(),
            };
            let head_dim = self.checkpoint.config.head_dim;
            bytes = unpermute_rope_rows(&r.file, &r.name, &bytes, r.rows, row_bytes, head_dim)?;
        }
        // Uploads through the uploader wait for their predecessor themselves; before an upload
        // of raw bytes, the previous tensor's repack has run: one in flight bounds host memory.
        if !(self.ctx.caps.is_cpu && matches!(r.data, WeightData::Ternary { .. })) {
            self.ctx.wait().await?;
        }
        match r.data {
            WeightData::Ternary { layout, scale } => {
                let mut repacks = self.repacks.borrow_mut();
                let slot = repacks.submitted();
                if self.ctx.caps.is_cpu {
                    let mut uploader = self.uploader.borrow_mut();
                    repacks.repack_on_host(
                        self.ctx,
                        &mut uploader,
                        &r.name,
                        layout,
                        &bytes,
                        r.rows,
                        r.cols,
                        codes,
                        first_row,
                    )?;
                } else {
                    let raw =
                        GpuBuffer::from_bytes(self.ctx, &r.name, &bytes, BufferUsage::Storage)?;
                    repacks.submit(
                        self.ctx, &r.name, layout, &raw, r.rows, r.cols, codes, first_row,
                    )?;
                }
                // Only HF packed files store the reciprocal under the plain-BitLinear convention;
                // GGUF scales are always multipliers.
                let divide = layout == TernaryLayout::HfPacked
                    && self.checkpoint.config.scale_convention == ScaleConvention::Divide;
                Ok(match scale {
                    Some(stored) if divide => PartScale::Known(1.0 / stored),
                    Some(stored) => PartScale::Known(stored),
                    None if matches!(layout, TernaryLayout::Tq2_0 | TernaryLayout::Tq1_0) => {
                        PartScale::Blocks { slot }
                    }
                    None => return Err(Error::format(&r.file, &r.name, "no scale")),
                })
            }
            WeightData::Float { dtype } => {
                let raw = GpuBuffer::from_bytes(self.ctx, &r.name, &bytes, BufferUsage::Storage)?;
                drop(bytes);
                let (part, scale) = self
                    .quantizer
                    .quantize(self.ctx, &r.name, dtype, &raw, r.rows, r.cols)
                    .await?;
                let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
                let offset = engine_bytes(first_row, r.cols);
                let bytes = engine_bytes(r.rows, r.cols);
                encoder.copy_buffer_to_buffer(&part.buffer, 0, &codes.buffer, offset, bytes);
                self.ctx.queue.submit([encoder.finish()]);
                Ok(PartScale::Known(scale))
            }
        }
    }

    /// Checks every repack (one readback) and writes each fused weight's row scales.
    async fn write_row_scales(self) -> Result<()> {
        let block_scales = self.repacks.into_inner().finish(self.ctx).await?;
        for pending in self.row_scales.into_inner() {
            let mut scales = Vec::new();
            for (rows, scale) in pending.parts {
                let scale = match scale {
                    PartScale::Known(s) => s,
                    // TQ statuses always carry a scale (0 when every block is zero).
                    PartScale::Blocks { slot } => block_scales[slot].unwrap_or(0.0),
                };
                scales.extend(std::iter::repeat_n(scale, rows));
            }
            self.ctx
                .queue
                .write_buffer(&pending.buffer, 0, bytemuck::cast_slice(&scales));
        }
        self.ctx.wait().await
    }
}
