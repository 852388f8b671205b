//! Causal GQA attention over a layer's KV cache: decode (`shaders/attention_decode.wgsl` +
//! `shaders/attention_combine.wgsl`, split over the sequence) and prefill
//! (`shaders/attention_prefill.wgsl`). CPU twin: [`crate::reference::attention::attention`].
//!
//! KV-cache layout (owned by the model): per layer, K and V are [kv_heads, max_seq, head_dim],
//! head-major so one head's sequence is contiguous, in f32 or f16 ([`KvCacheDtype`]).
//! [`super::rope`] appends to it. head_dim must be a multiple of 4 (K and V are read four elements
//! at a time) and at most [`MAX_HEAD_DIM`].

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::{Error, Result};

/// Cached positions per decode workgroup (`CHUNK` in the decode and combine shaders).
pub const DECODE_CHUNK: usize = 256;
/// Largest head_dim the kernels hold in workgroup memory.
pub const MAX_HEAD_DIM: usize = 256;
/// Query heads of one GQA group a decode workgroup serves (`LANES` in the decode shader).
const DECODE_LANES: usize = 4;

/// How the KV cache stores its elements. Attention accumulates in f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvCacheDtype {
    /// f32: k and v exactly as RoPE produced them.
    F32,
    /// f16 (IEEE binary16), two consecutive elements of a head row per little-endian u32 word
    /// (WGSL's `pack2x16float`, no `shader-f16` feature needed): half the memory and the attention
    /// reads of f32, each k and v rounded to the nearest f16 when it enters the cache.
    #[default]
    F16,
}

impl KvCacheDtype {
    /// Bytes of one cached element.
    pub fn element_bytes(self) -> usize {
        match self {
            KvCacheDtype::F32 => 4,
            KvCacheDtype::F16 => 2,
        }
    }

    /// The value an f32 becomes in the cache (what the kernels read back): itself, or the nearest
    /// f16 (ties to even), saturated to ±65504 as the shaders clamp before packing.
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvCacheDtype::F32 => x,
            KvCacheDtype::F16 => half::f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_f32(),
        }
    }

    /// `values` (a cache's elements in order) as the u32 words of its GPU buffer, padded to whole
    /// 16-byte vectors as [`AttentionShape::cache_bytes`] sizes them.
    pub fn encode(self, values: &[f32]) -> Vec<u32> {
        let mut words: Vec<u32> = match self {
            KvCacheDtype::F32 => values.iter().map(|x| x.to_bits()).collect(),
            KvCacheDtype::F16 => values
                .chunks(2)
                .map(|pair| {
                    let bits = |x: Option<&f32>| {
                        half::f16::from_f32(self.round(x.copied().unwrap_or(0.0))).to_bits() as u32
                    };
                    bits(pair.first()) | bits(pair.get(1)) << 16
                })
                .collect(),
        };
        words.resize(words.len().next_multiple_of(4), 0);
        words
    }

    /// The first `len` elements of a cache buffer's `words` (the inverse of [`Self::encode`]).
    pub fn decode(self, words: &[u32], len: usize) -> Vec<f32> {
        match self {
            KvCacheDtype::F32 => words[..len].iter().map(|&w| f32::from_bits(w)).collect(),
            KvCacheDtype::F16 => (0..len)
                .map(|i| half::f16::from_bits((words[i / 2] >> (16 * (i % 2))) as u16).to_f32())
                .collect(),
        }
    }

    /// The shaders' `KV_F16` override.
    fn shader_constants(self) -> [(&'static str, f64); 1] {
        [("KV_F16", f64::from(u8::from(self == KvCacheDtype::F16)))]
    }
}

/// The largest finite f16.
const F16_MAX: f32 = 65504.0;

/// Attention geometry of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; divides `heads`.
    pub kv_heads: usize,
    /// Width of one head: a multiple of 4, at most [`MAX_HEAD_DIM`].
    pub head_dim: usize,
    /// Positions the KV cache holds.
    pub max_seq: usize,
    /// How the KV cache stores its elements.
    pub cache: KvCacheDtype,
}

impl AttentionShape {
    /// [`Error::Invalid`] unless the kernels can run this shape (see the fields).
    pub fn validate(&self) -> Result<()> {
        let ok = self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim.is_multiple_of(4)
            && (2..=MAX_HEAD_DIM).contains(&self.head_dim)
            && self.max_seq > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "attention shape {self:?}: need heads a multiple of kv_heads and a head_dim that is a multiple of 4 (an f16 cache packs element pairs, read four at a time) and ≤ {MAX_HEAD_DIM}"
            )))
        }
    }

    /// Elements of one layer's K (or V) cache (the length of the CPU twins' caches; the GPU's are
    /// sized by [`Self::cache_bytes`]).
    #[cfg(any(test, feature = "internals"))]
    pub fn cache_len(&self) -> usize {
        self.kv_heads * self.max_seq * self.head_dim
    }

    /// Bytes of one layer's K (or V) cache buffer: its elements in [`Self::cache`]'s dtype, rounded
    /// up to the 16 bytes the attention kernels read at a time. In u64: a long context's cache
    /// passes 4 GiB, which wraps a wasm32 usize.
    pub fn cache_bytes(&self) -> u64 {
        let elements = self.kv_heads as u64 * self.max_seq as u64 * self.head_dim as u64;
        (elements * self.cache.element_bytes() as u64).next_multiple_of(16)
    }

    fn max_chunks(&self) -> usize {
        self.max_seq.div_ceil(DECODE_CHUNK)
    }

    /// Decode workgroups per chunk: each GQA group cut into slices of at most [`DECODE_LANES`]
    /// query heads that read their shared K/V rows once.
    fn decode_slices(&self) -> usize {
        self.kv_heads * (self.heads / self.kv_heads).div_ceil(DECODE_LANES)
    }
}

/// The buffers one attention site reads and writes.
pub struct AttentionBuffers<'a> {
    /// [`super::StepParams`]: `pos` is the position of the step's first query.
    pub step: &'a GpuBuffer,
    /// Rotated queries: token t, head h at `t·q_stride + h·head_dim` (e.g. the fused q|k|v buffer).
    pub q: &'a GpuBuffer,
    /// Elements (f32) from one token's queries to the next.
    pub q_stride: usize,
    /// This layer's K cache, [kv_heads, max_seq, head_dim] in the shape's [`KvCacheDtype`].
    pub k_cache: &'a GpuBuffer,
    /// This layer's V cache, laid out like `k_cache`.
    pub v_cache: &'a GpuBuffer,
    /// f32 [T, heads·head_dim].
    pub out: &'a GpuBuffer,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_seq: u32,
    q_stride: u32,
    max_chunks: u32,
    scale: f32,
    _pad: u32,
}

fn params(ctx: &Context, shape: AttentionShape, q_stride: usize) -> Result<GpuBuffer> {
    shape.validate()?;
    let params = Params {
        heads: shape.heads as u32,
        kv_heads: shape.kv_heads as u32,
        head_dim: shape.head_dim as u32,
        max_seq: shape.max_seq as u32,
        q_stride: q_stride as u32,
        max_chunks: shape.max_chunks() as u32,
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
        _pad: 0,
    };
    GpuBuffer::from_slice(ctx, "attention.params", &[params], BufferUsage::Uniform)
}

/// Single-query attention at position `pos` over cache 0 ..= pos, split into chunks of
/// [`DECODE_CHUNK`] positions whose partial softmax states a second pass combines.
pub struct AttentionDecode {
    /// The first pass for each [`KvCacheDtype`] (indexed by [`pipeline_index`]).
    partial: [wgpu::ComputePipeline; 2],
    combine: wgpu::ComputePipeline,
}

/// Index into a kernel's per-[`KvCacheDtype`] pipelines.
pub(super) fn pipeline_index(dtype: KvCacheDtype) -> usize {
    match dtype {
        KvCacheDtype::F32 => 0,
        KvCacheDtype::F16 => 1,
    }
}

/// `label`'s pipeline for each [`KvCacheDtype`], in [`pipeline_index`] order.
pub(super) fn cache_pipelines(
    ctx: &Context,
    label: &str,
    source: &str,
) -> [wgpu::ComputePipeline; 2] {
    [KvCacheDtype::F32, KvCacheDtype::F16]
        .map(|dtype| ctx.pipeline(label, source, "main", &dtype.shader_constants()))
}

/// [`AttentionDecode`]'s bind groups for one site, with its parameters and scratch.
pub struct AttentionDecodeBinding {
    cache: KvCacheDtype,
    partial: wgpu::BindGroup,
    combine: wgpu::BindGroup,
    heads: u32,
    slices: u32,
    _params: GpuBuffer,
    _partials: GpuBuffer,
}

impl AttentionDecode {
    /// Builds the partial and combine pipelines.
    pub fn new(ctx: &Context) -> Self {
        AttentionDecode {
            partial: cache_pipelines(ctx, "attention_decode", sources::ATTENTION_DECODE),
            combine: ctx.pipeline("attention_combine", sources::ATTENTION_COMBINE, "main", &[]),
        }
    }

    /// Makes the bind groups and the per-chunk scratch ([heads, max_seq / DECODE_CHUNK, head_dim + 2]).
    pub fn bind(
        &self,
        ctx: &Context,
        shape: AttentionShape,
        buffers: &AttentionBuffers<'_>,
    ) -> Result<AttentionDecodeBinding> {
        let params = params(ctx, shape, buffers.q_stride)?;
        let scratch_bytes = (shape.heads * shape.max_chunks() * (shape.head_dim + 2) * 4) as u64;
        let partials = GpuBuffer::new(
            ctx,
            "attention.partials",
            scratch_bytes,
            BufferUsage::Storage,
        )?;
        let partial = ctx.bind_group(
            "attention_decode",
            &self.partial[pipeline_index(shape.cache)],
            &[
                buffers.step.binding(),
                params.binding(),
                buffers.q.binding(),
                buffers.k_cache.binding(),
                buffers.v_cache.binding(),
                partials.binding(),
            ],
        );
        let combine = ctx.bind_group(
            "attention_combine",
            &self.combine,
            &[
                buffers.step.binding(),
                params.binding(),
                partials.binding(),
                buffers.out.binding(),
            ],
        );
        Ok(AttentionDecodeBinding {
            cache: shape.cache,
            partial,
            combine,
            heads: shape.heads as u32,
            slices: shape.decode_slices() as u32,
            _params: params,
            _partials: partials,
        })
    }

    /// Attention for the query at `pos` (the step uniform must hold the same `pos`).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &AttentionDecodeBinding,
        pos: u32,
    ) {
        let chunks = pos / DECODE_CHUNK as u32 + 1;
        pass.set_pipeline(&self.partial[pipeline_index(binding.cache)]);
        pass.set_bind_group(0, &binding.partial, &[]);
        pass.dispatch_workgroups(chunks, binding.slices, 1);
        pass.set_pipeline(&self.combine);
        pass.set_bind_group(0, &binding.combine, &[]);
        pass.dispatch_workgroups(binding.heads, 1, 1);
    }
}

/// T queries at positions pos .. pos + T, each attending causally to cache 0 ..= its position.
pub struct AttentionPrefill {
    /// One per [`KvCacheDtype`] (indexed by [`pipeline_index`]).
    pipelines: [wgpu::ComputePipeline; 2],
}

/// [`AttentionPrefill`]'s bind group for one site, with its parameters.
pub struct AttentionPrefillBinding {
    cache: KvCacheDtype,
    bind_group: wgpu::BindGroup,
    heads: u32,
    _params: GpuBuffer,
}

impl AttentionPrefill {
    /// Builds the pipeline.
    pub fn new(ctx: &Context) -> Self {
        AttentionPrefill {
            pipelines: cache_pipelines(ctx, "attention_prefill", sources::ATTENTION_PREFILL),
        }
    }

    /// Makes the bind group for one site.
    pub fn bind(
        &self,
        ctx: &Context,
        shape: AttentionShape,
        buffers: &AttentionBuffers<'_>,
    ) -> Result<AttentionPrefillBinding> {
        let params = params(ctx, shape, buffers.q_stride)?;
        let bind_group = ctx.bind_group(
            "attention_prefill",
            &self.pipelines[pipeline_index(shape.cache)],
            &[
                buffers.step.binding(),
                params.binding(),
                buffers.q.binding(),
                buffers.k_cache.binding(),
                buffers.v_cache.binding(),
                buffers.out.binding(),
            ],
        );
        Ok(AttentionPrefillBinding {
            cache: shape.cache,
            bind_group,
            heads: shape.heads as u32,
            _params: params,
        })
    }

    /// Attention for `tokens` queries (the step uniform must hold the same count).
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        binding: &AttentionPrefillBinding,
        tokens: u32,
    ) {
        pass.set_pipeline(&self.pipelines[pipeline_index(binding.cache)]);
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(binding.heads, tokens, 1);
    }
}
