//! Embedding lookup: `shaders/embedding.wgsl`. CPU twin: [`crate::reference::embedding::embed`].
//!
//! Also defines [`DenseTable`], the row-chunked f32/f16/bf16 matrix shared by the embedding and the
//! LM head ([`super::dense_matvec`]): a tied head reads the embedding's own buffers. A [`TokenTable`]
//! is either such a float table or its int8 form ([`Int8Table`]).

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer, Uploader};
pub use crate::layout::FloatDType;
use crate::{Error, Result};

/// Rows `first_row .. first_row + rows` of a table, in a buffer of their own.
pub struct RowChunk {
    /// The chunk's rows in the table's dtype, padded to 16 bytes.
    pub buffer: GpuBuffer,
    /// Index of the chunk's first row in the whole table.
    pub first_row: usize,
    /// Rows in this chunk.
    pub rows: usize,
}

/// A [rows, cols] matrix split into row chunks that each fit one storage binding. Chunk buffers are
/// padded to 16 bytes so kernels may read them as `vec4<u32>`; a chunk's row count is a multiple of 8
/// (except the last) so every chunk starts on a 16-byte boundary of the full matrix's bytes.
pub struct DenseTable {
    /// Element type of every chunk.
    pub dtype: FloatDType,
    /// Rows of the whole matrix (vocab for the embedding and the head).
    pub rows: usize,
    /// Elements per row (hidden for the embedding and the head).
    pub cols: usize,
    /// The chunks, in row order, covering every row once.
    pub chunks: Vec<RowChunk>,
}

impl DenseTable {
    /// Rows per chunk for this adapter: as many as fit its binding limit, a multiple of 8.
    pub fn rows_per_chunk(ctx: &Context, dtype: FloatDType, cols: usize) -> Result<usize> {
        let row_bytes = (cols * dtype.bytes()) as u64;
        let rows =
            (ctx.caps.max_binding_bytes.min(ctx.caps.max_buffer_bytes) - 16) / row_bytes.max(1) / 8
                * 8;
        if rows == 0 {
            return Err(Error::Gpu(format!(
                "a table row of {row_bytes} bytes exceeds the binding limit"
            )));
        }
        Ok(rows as usize)
    }

    /// Allocates zeroed chunk buffers; the loader fills them with [`DenseTable::write_rows`].
    pub fn allocate(
        ctx: &Context,
        label: &str,
        dtype: FloatDType,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        Self::allocate_with_chunk_rows(
            ctx,
            label,
            dtype,
            rows,
            cols,
            Self::rows_per_chunk(ctx, dtype, cols)?,
        )
    }

    /// As [`DenseTable::allocate`] with an explicit chunk size (a multiple of 8; tests use small ones).
    pub fn allocate_with_chunk_rows(
        ctx: &Context,
        label: &str,
        dtype: FloatDType,
        rows: usize,
        cols: usize,
        chunk_rows: usize,
    ) -> Result<Self> {
        if chunk_rows == 0 || !chunk_rows.is_multiple_of(8) {
            return Err(Error::Invalid(format!(
                "{label}: chunk rows {chunk_rows} must be a positive multiple of 8"
            )));
        }
        let mut chunks = Vec::new();
        for first_row in (0..rows).step_by(chunk_rows) {
            let chunk = chunk_rows.min(rows - first_row);
            let bytes = ((chunk * cols * dtype.bytes()) as u64).next_multiple_of(16);
            let buffer = GpuBuffer::new(
                ctx,
                &format!("{label}[{first_row}..]"),
                bytes,
                BufferUsage::Storage,
            )?;
            chunks.push(RowChunk {
                buffer,
                first_row,
                rows: chunk,
            });
        }
        Ok(DenseTable {
            dtype,
            rows,
            cols,
            chunks,
        })
    }

    /// Writes `bytes` (whole rows in the table's dtype, row-major) starting at row `first_row`.
    pub fn write_rows(&self, ctx: &Context, first_row: usize, bytes: &[u8]) -> Result<()> {
        self.for_each_chunk(first_row, bytes, |buffer, offset, src| {
            buffer.write(ctx, offset, src);
            Ok(())
        })
    }

    /// [`DenseTable::write_rows`] through the loader's `uploader` (sent at its next submit).
    pub fn upload_rows(
        &self,
        ctx: &Context,
        uploader: &mut Uploader,
        first_row: usize,
        bytes: &[u8],
    ) -> Result<()> {
        self.for_each_chunk(first_row, bytes, |buffer, offset, src| {
            uploader.write(ctx, buffer, offset, src)
        })
    }

    /// Splits whole rows from `first_row` on by chunk: `write(chunk buffer, byte offset, bytes)`.
    fn for_each_chunk(
        &self,
        first_row: usize,
        bytes: &[u8],
        mut write: impl FnMut(&GpuBuffer, u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let row_bytes = self.cols * self.dtype.bytes();
        if !bytes.len().is_multiple_of(row_bytes) || first_row + bytes.len() / row_bytes > self.rows
        {
            return Err(Error::Invalid(format!(
                "table write of {} bytes at row {first_row} does not fit [{}, {}] {:?}",
                bytes.len(),
                self.rows,
                self.cols,
                self.dtype
            )));
        }
        let end_row = first_row + bytes.len() / row_bytes;
        for chunk in &self.chunks {
            let start = first_row.max(chunk.first_row);
            let end = end_row.min(chunk.first_row + chunk.rows);
            if start < end {
                let src = &bytes[(start - first_row) * row_bytes..(end - first_row) * row_bytes];
                write(
                    &chunk.buffer,
                    ((start - chunk.first_row) * row_bytes) as u64,
                    src,
                )?;
            }
        }
        Ok(())
    }

    /// A table holding `bytes` (the whole matrix), chunked for this adapter.
    pub fn upload(
        ctx: &Context,
        label: &str,
        dtype: FloatDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Self> {
        let table = Self::allocate(ctx, label, dtype, rows, cols)?;
        table.write_rows(ctx, 0, bytes)?;
        Ok(table)
    }
}

/// How a [`TokenTable`]'s elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// As loaded from the checkpoint, in its float dtype.
    Float(FloatDType),
    /// Per-row absmax int8 codes with an f32 scale per row ([`Int8Table`]).
    Int8,
}

impl TableFormat {
    /// The `DTYPE` override constant of the kernels that read tables (int8 is 3).
    pub(crate) fn shader_code(self) -> f64 {
        match self {
            TableFormat::Float(dtype) => dtype.shader_code(),
            TableFormat::Int8 => 3.0,
        }
    }
}

/// A [vocab, hidden] table of the embedding or the LM head, in either storage.
pub enum TokenTable {
    /// Stored float rows.
    Float(DenseTable),
    /// Int8 rows quantized from the stored ones at load.
    Int8(Int8Table),
}

impl TokenTable {
    /// How the elements are stored.
    pub fn format(&self) -> TableFormat {
        match self {
            TokenTable::Float(t) => TableFormat::Float(t.dtype),
            TokenTable::Int8(_) => TableFormat::Int8,
        }
    }

    /// Rows of the whole matrix.
    pub fn rows(&self) -> usize {
        match self {
            TokenTable::Float(t) => t.rows,
            TokenTable::Int8(t) => t.rows,
        }
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        match self {
            TokenTable::Float(t) => t.cols,
            TokenTable::Int8(t) => t.cols,
        }
    }

    /// Bytes the table occupies on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        match self {
            TokenTable::Float(t) => t.chunks.iter().map(|c| c.buffer.size).sum(),
            TokenTable::Int8(t) => t.gpu_bytes(),
        }
    }

    /// Each chunk as (values, scales, first row, rows); a float table has no scales and gives its
    /// values again (kernels bind a scales buffer whatever the format, and read it only for int8).
    pub(crate) fn chunk_bindings(&self) -> Vec<(&GpuBuffer, &GpuBuffer, usize, usize)> {
        match self {
            TokenTable::Float(t) => t
                .chunks
                .iter()
                .map(|c| (&c.buffer, &c.buffer, c.first_row, c.rows))
                .collect(),
            TokenTable::Int8(t) => t
                .chunks
                .iter()
                .map(|c| (&c.codes, &c.scales, c.first_row, c.rows))
                .collect(),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    cols: u32,
    first_row: u32,
    rows: u32,
    _pad: u32,
}

/// Looks up token rows of a [`TokenTable`] into f32 activations.
pub struct Embedding {
    pipeline: wgpu::ComputePipeline,
    format: TableFormat,
}

/// One bind group per table chunk, made at load.
pub struct EmbeddingBinding {
    chunks: Vec<(wgpu::BindGroup, GpuBuffer)>,
    cols: usize,
}

const WORKGROUP: u32 = 64;

impl Embedding {
    /// Builds the pipeline for tables of `format`.
    pub fn new(ctx: &Context, format: TableFormat) -> Self {
        let pipeline = ctx.pipeline(
            "embedding",
            sources::EMBEDDING,
            "main",
            &[("DTYPE", format.shader_code())],
        );
        Embedding { pipeline, format }
    }

    /// `step`: [`super::StepParams`] (T = `tokens`); `ids`: u32 `[T]`; `out`: f32 [T, table.cols].
    /// Ids outside the table leave their output row untouched.
    pub fn bind(
        &self,
        ctx: &Context,
        table: &TokenTable,
        step: &GpuBuffer,
        ids: &GpuBuffer,
        out: &GpuBuffer,
    ) -> Result<EmbeddingBinding> {
        if table.format() != self.format {
            return Err(Error::Invalid(format!(
                "embedding built for {:?}, table is {:?}",
                self.format,
                table.format()
            )));
        }
        let mut chunks = Vec::new();
        for (values, scales, first_row, rows) in table.chunk_bindings() {
            let params = Params {
                cols: table.cols() as u32,
                first_row: first_row as u32,
                rows: rows as u32,
                _pad: 0,
            };
            let params =
                GpuBuffer::from_slice(ctx, "embedding.params", &[params], BufferUsage::Uniform)?;
            let bind_group = ctx.bind_group(
                "embedding",
                &self.pipeline,
                &[
                    step.binding(),
                    params.binding(),
                    values.binding(),
                    ids.binding(),
                    out.binding(),
                    scales.binding(),
                ],
            );
            chunks.push((bind_group, params));
        }
        Ok(EmbeddingBinding {
            chunks,
            cols: table.cols(),
        })
    }

    /// Gathers the rows of this step's ids (one dispatch per table chunk; the count of ids is read
    /// from the step uniform, so the dispatch is the same for every step).
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, binding: &EmbeddingBinding) {
        pass.set_pipeline(&self.pipeline);
        let (x, y) = super::dispatch_grid((binding.cols as u32).div_ceil(WORKGROUP));
        for (bind_group, _) in &binding.chunks {
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
    }
}

/// u32 words per row of an int8 table with `cols` columns: four codes a word, rows padded with zero
/// codes to whole 16-byte vec4s (the matvec's loads).
pub fn int8_row_words(cols: usize) -> usize {
    cols.div_ceil(16) * 4
}

/// Rows `first_row .. first_row + rows` of an int8 table: codes and scales in buffers of their own.
pub struct Int8Chunk {
    /// u32 [rows, [`int8_row_words`]]: int8 codes, element k of a row in byte k % 4 of word k / 4.
    pub codes: GpuBuffer,
    /// f32 `[rows]`: each row's scale, max|w| / 127 (a row's values are code · scale).
    pub scales: GpuBuffer,
    /// Index of the chunk's first row in the whole table.
    pub first_row: usize,
    /// Rows in this chunk.
    pub rows: usize,
}

/// A [rows, cols] matrix as per-row absmax int8 codes with an f32 scale per row, in row chunks that
/// each fit one storage binding (those of the float table it was made from).
pub struct Int8Table {
    /// Rows of the whole matrix.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// The chunks, in row order, covering every row once.
    pub chunks: Vec<Int8Chunk>,
}

impl Int8Table {
    /// Bytes the codes and scales occupy on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.codes.size + c.scales.size)
            .sum()
    }
}
