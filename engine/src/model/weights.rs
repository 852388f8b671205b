//! Weights on the GPU: every tensor streamed from its file straight to the device, ternary tensors
//! repacked (or absmean-quantized) there into the engine layout, q|k|v and gate|up fused row-wise.
//! The host holds at most one tensor's bytes at a time.

use crate::format::checkpoint::{
    Checkpoint, FloatRef, NormWeight, Projection, TernaryLayout, WeightData, WeightRef,
};
use crate::format::gguf::unpermute_rope_rows;
use crate::format::source::read_range;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::model::config::ScaleConvention;
use crate::ops::embedding::DenseTable;
use crate::ops::quantize::Quantizer;
use crate::ops::repack::Repacker;
use crate::reference::ternary::words_per_row;
use crate::{Error, Result};

/// A ternary matrix in the engine layout with the scale of each of its rows.
pub struct TernaryWeight {
    /// u32 [rows, words_per_row(cols)].
    pub codes: GpuBuffer,
    /// f32 [rows]: multiplies each row's integer dot product (file scales already inverted where the
    /// checkpoint's convention divides).
    pub row_scale: GpuBuffer,
    pub rows: usize,
    pub cols: usize,
}

pub struct LayerWeights {
    pub input_norm: GpuBuffer,
    pub post_attention_norm: GpuBuffer,
    /// `None` for architectures without sub-norms (plain llama-style BitNet).
    pub attention_sub_norm: Option<GpuBuffer>,
    pub ffn_sub_norm: Option<GpuBuffer>,
    /// Rows: q (heads·hd), then k and v (kv_heads·hd each).
    pub qkv: TernaryWeight,
    pub o: TernaryWeight,
    /// Rows: gate (intermediate), then up (intermediate).
    pub gate_up: TernaryWeight,
    pub down: TernaryWeight,
}

pub struct Weights {
    pub embedding: DenseTable,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<DenseTable>,
    pub final_norm: GpuBuffer,
    pub layers: Vec<LayerWeights>,
}

impl Weights {
    /// The LM head's table: its own or the embedding's.
    pub fn head(&self) -> &DenseTable {
        self.lm_head.as_ref().unwrap_or(&self.embedding)
    }

    /// Bytes these weights occupy on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        let table = |t: &DenseTable| t.chunks.iter().map(|c| c.buffer.size).sum::<u64>();
        let ternary = |w: &TernaryWeight| w.codes.size + w.row_scale.size;
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
        table(&self.embedding)
            + self.lm_head.as_ref().map_or(0, table)
            + self.final_norm.size
            + self
                .layers
                .iter()
                .map(|l| {
                    norms(l)
                        + ternary(&l.qkv)
                        + ternary(&l.o)
                        + ternary(&l.gate_up)
                        + ternary(&l.down)
                })
                .sum::<u64>()
    }
}

/// Called after each tensor with (tensors done, tensors in all).
pub type LoadProgress<'a> = &'a mut dyn FnMut(usize, usize);

/// Uploads every weight of `checkpoint`.
pub async fn load(
    ctx: &Context,
    checkpoint: &Checkpoint,
    progress: LoadProgress<'_>,
) -> Result<Weights> {
    let config = &checkpoint.config;
    let loader = Loader {
        ctx,
        checkpoint,
        repacker: Repacker::new(ctx),
        quantizer: Quantizer::new(ctx),
    };
    let total = config.num_layers * 11 + 3;
    let mut done = 0;
    let mut step = |progress: &mut dyn FnMut(usize, usize), n: usize| {
        done += n;
        progress(done, total);
    };

    let embedding = loader.table(&checkpoint.embedding()?).await?;
    step(progress, 1);
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(loader.table(&checkpoint.lm_head()?).await?)
    };
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
                .fused(layer, &[Projection::Q, Projection::K, Projection::V])
                .await?,
            o: loader.fused(layer, &[Projection::O]).await?,
            gate_up: loader
                .fused(layer, &[Projection::Gate, Projection::Up])
                .await?,
            down: loader.fused(layer, &[Projection::Down]).await?,
        };
        layers.push(weights);
        step(progress, 11);
    }
    Ok(Weights {
        embedding,
        lm_head,
        final_norm,
        layers,
    })
}

struct Loader<'a> {
    ctx: &'a Context,
    checkpoint: &'a Checkpoint,
    repacker: Repacker,
    quantizer: Quantizer,
}

/// Rows streamed per read when uploading a dense table (bounded host memory for a 656 MB embedding).
const TABLE_READ_BYTES: usize = 32 << 20;

impl Loader<'_> {
    async fn read(&self, source: usize, offset: u64, len: u64) -> Result<Vec<u8>> {
        let source = self.checkpoint.sources.get(source).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor refers to source {source}, the checkpoint has {}",
                self.checkpoint.sources.len()
            ))
        })?;
        read_range(source.as_ref(), offset, len).await
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
        let mut row = 0;
        while row < r.rows {
            let rows = rows_per_read.min(r.rows - row);
            let bytes = self
                .read(
                    r.source,
                    r.offset + (row * row_bytes) as u64,
                    (rows * row_bytes) as u64,
                )
                .await?;
            table.write_rows(self.ctx, row, &bytes)?;
            row += rows;
        }
        self.ctx.wait().await?;
        Ok(table)
    }

    /// The projections `parts` of `layer`, each converted to the engine layout on the GPU, stacked
    /// row-wise into one weight.
    async fn fused(&self, layer: usize, parts: &[Projection]) -> Result<TernaryWeight> {
        let mut pieces = Vec::with_capacity(parts.len());
        for &part in parts {
            let r = self.checkpoint.projection(layer, part)?;
            pieces.push((self.ternary(&r).await?, r.rows, r.cols));
        }
        let cols = pieces[0].2;
        let rows: usize = pieces.iter().map(|p| p.1).sum();
        let label = format!("layer {layer} {parts:?}");
        let row_scale: Vec<f32> = pieces
            .iter()
            .flat_map(|((_, scale), rows, _)| std::iter::repeat_n(*scale, *rows))
            .collect();
        let row_scale = GpuBuffer::from_slice(self.ctx, &label, &row_scale, BufferUsage::Storage)?;
        if pieces.len() == 1 {
            let ((codes, _), rows, cols) = pieces.pop().expect("one piece");
            return Ok(TernaryWeight {
                codes,
                row_scale,
                rows,
                cols,
            });
        }
        let row_bytes = (words_per_row(cols) * 4) as u64;
        let codes = GpuBuffer::new(
            self.ctx,
            &label,
            rows as u64 * row_bytes,
            BufferUsage::Storage,
        )?;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        let mut offset = 0;
        for ((piece, _), piece_rows, piece_cols) in &pieces {
            if *piece_cols != cols {
                return Err(Error::Invalid(format!(
                    "{label}: fused projections differ in width"
                )));
            }
            let bytes = *piece_rows as u64 * row_bytes;
            encoder.copy_buffer_to_buffer(&piece.buffer, 0, &codes.buffer, offset, bytes);
            offset += bytes;
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.ctx.wait().await?;
        Ok(TernaryWeight {
            codes,
            row_scale,
            rows,
            cols,
        })
    }

    /// One projection in the engine layout and the multiplier of its integer dot products.
    async fn ternary(&self, r: &WeightRef) -> Result<(GpuBuffer, f32)> {
        let mut bytes = self.read(r.source, r.offset, r.len).await?;
        if r.rope_permuted {
            let row_bytes = match r.data {
                WeightData::Ternary { layout, .. } => layout.code_bytes(r.rows, r.cols) / r.rows,
                WeightData::Float { dtype } => r.cols * dtype.bytes(),
            };
            let head_dim = self.checkpoint.config.head_dim;
            bytes = unpermute_rope_rows(&r.file, &r.name, &bytes, r.rows, row_bytes, head_dim)?;
        }
        let raw = GpuBuffer::from_bytes(self.ctx, &r.name, &bytes, BufferUsage::Storage)?;
        match r.data {
            WeightData::Ternary { layout, scale } => {
                let (codes, block_scale) = self
                    .repacker
                    .repack(self.ctx, &r.name, layout, &raw, r.rows, r.cols)
                    .await?;
                let stored = scale
                    .or(block_scale)
                    .ok_or_else(|| Error::format(&r.file, &r.name, "no scale"))?;
                // Only HF packed files store the reciprocal under the plain-BitLinear convention;
                // GGUF scales are always multipliers.
                let divide = layout == TernaryLayout::HfPacked
                    && self.checkpoint.config.scale_convention == ScaleConvention::Divide;
                Ok((codes, if divide { 1.0 / stored } else { stored }))
            }
            WeightData::Float { dtype } => {
                self.quantizer
                    .quantize(self.ctx, &r.name, dtype, &raw, r.rows, r.cols)
                    .await
            }
        }
    }
}
