//! Does a model fit the device? Every buffer the model binds whole, the kernels' workgroup size,
//! workgroup memory and storage buffers per stage, and the dispatches that grow with the batch or the context, checked
//! against the device's [`wgpu::Limits`] before anything is allocated — so that a GPU whose limits
//! are smaller than the test adapters' refuses a model with an error naming the limit, the adapter's
//! value, what was needed and what to do, instead of a wgpu validation error mid-load.
//!
//! Pure functions of the limits and the model's shape, so any GPU's limits can be checked anywhere.

use crate::format::config::ModelConfig;
use crate::model::weights::ProjectionKind;
use crate::model::ModelOptions;
use crate::ops::attention::{AttentionShape, KvCacheDtype, DECODE_CHUNK};
use crate::ops::ternary_matvec::weight_bytes;
use crate::ops::{padded_activation_words, ActStats, MAX_DISPATCH_X};
use crate::{Error, Result};

/// The most invocations in any kernel's workgroup (all are 1-D, so also the largest x size).
/// tests/tests/shaders_translate.rs checks every kernel against it.
pub const KERNEL_WORKGROUP_INVOCATIONS: u32 = 256;
/// The most workgroup memory any kernel declares, in bytes (WebGPU guarantees 16 KiB). Checked
/// against every kernel by the same test.
pub const KERNEL_WORKGROUP_STORAGE: u32 = 16 << 10;
/// The most storage buffers any kernel binds (the ternary matvec: codes, activations, their
/// statistics, row scales, output). Checked against every kernel by the same test.
pub const KERNEL_STORAGE_BUFFERS: u32 = 5;

/// A limit the model exceeds on this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitExceeded {
    /// The `wgpu::Limits` field (WebGPU's limit of the same name in camelCase).
    pub limit: &'static str,
    /// The device's value.
    pub available: u64,
    /// What the model needs.
    pub needed: u64,
    /// What needs it.
    pub what: String,
    /// What the user can do about it.
    pub advice: String,
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.limit.ends_with("_size") {
            " bytes"
        } else {
            ""
        };
        write!(
            f,
            "{} needs {}{unit}, more than the device's {} ({}{unit}): {}",
            self.what, self.needed, self.limit, self.available, self.advice
        )
    }
}

impl LimitExceeded {
    /// The engine error for `adapter`.
    pub fn into_error(self, adapter: &str) -> Error {
        Error::Gpu(format!("{adapter}: {self}"))
    }
}

/// The attention shape of `config` with a cache of `max_context` positions stored as `cache`.
pub(super) fn attention_shape(
    config: &ModelConfig,
    max_context: usize,
    cache: KvCacheDtype,
) -> AttentionShape {
    AttentionShape {
        heads: config.num_heads,
        kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
        max_seq: max_context,
        cache,
    }
}

/// Checks everything a model of `config`, loaded with `options`, binds and dispatches against
/// `limits`. The first limit exceeded is returned: kernels first (nothing helps but another GPU),
/// then weights (another model), then the context and the batch (smaller values help).
pub fn check(
    limits: &wgpu::Limits,
    config: &ModelConfig,
    options: &ModelOptions,
) -> Result<(), LimitExceeded> {
    check_kernels(limits)?;
    check_weights(limits, config)?;
    check_context(limits, config, options.max_context, options.kv_cache)?;
    check_batch(limits, config, options.projections, options.max_batch)
}

/// The limits every kernel needs whatever the model.
pub fn check_kernels(limits: &wgpu::Limits) -> Result<(), LimitExceeded> {
    let no_fix = "this GPU (or backend) cannot run Tern's kernels; try another adapter with \
                  TERN_ADAPTER or TERN_BACKEND";
    let needs = [
        (
            "max_compute_invocations_per_workgroup",
            limits.max_compute_invocations_per_workgroup,
            KERNEL_WORKGROUP_INVOCATIONS,
            "a kernel's workgroup",
        ),
        (
            "max_compute_workgroup_size_x",
            limits.max_compute_workgroup_size_x,
            KERNEL_WORKGROUP_INVOCATIONS,
            "a kernel's workgroup (x)",
        ),
        (
            "max_storage_buffers_per_shader_stage",
            limits.max_storage_buffers_per_shader_stage,
            KERNEL_STORAGE_BUFFERS,
            "the ternary matvec's storage buffers",
        ),
        (
            "max_compute_workgroup_storage_size",
            limits.max_compute_workgroup_storage_size,
            KERNEL_WORKGROUP_STORAGE,
            "a kernel's workgroup memory",
        ),
        (
            "max_compute_workgroups_per_dimension",
            limits.max_compute_workgroups_per_dimension,
            MAX_DISPATCH_X,
            "a dispatch of large tensors (workgroups along x)",
        ),
    ];
    for (limit, available, needed, what) in needs {
        if available < needed {
            return Err(LimitExceeded {
                limit,
                available: available.into(),
                needed: needed.into(),
                what: what.into(),
                advice: no_fix.into(),
            });
        }
    }
    Ok(())
}

/// The ternary projection weights, each bound whole (the embedding and LM head are split into
/// row chunks that fit any binding, see `ops::embedding::DenseTable`).
pub fn check_weights(limits: &wgpu::Limits, config: &ModelConfig) -> Result<(), LimitExceeded> {
    let c = config;
    let attention_width = c.num_heads * c.head_dim;
    let qkv_rows = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
    let weights = [
        ("q|k|v", qkv_rows, c.hidden_size),
        ("o", c.hidden_size, attention_width),
        ("gate|up", 2 * c.intermediate_size, c.hidden_size),
        ("down", c.hidden_size, c.intermediate_size),
    ];
    let (limit, available) = whole_binding(limits);
    for (name, rows, cols) in weights {
        let needed = weight_bytes(rows, cols);
        if needed > available {
            return Err(LimitExceeded {
                limit,
                available,
                needed,
                what: format!(
                    "the {name} projection weight ({rows} × {cols} ternary, bound whole)"
                ),
                advice: "this model is too large for this GPU; use a GPU with a larger limit"
                    .into(),
            });
        }
    }
    Ok(())
}

/// One layer's K (or V) cache, stored as `kv_cache`, and the decode attention's partial results for
/// `context` tokens.
pub fn check_context(
    limits: &wgpu::Limits,
    config: &ModelConfig,
    context: usize,
    kv_cache: KvCacheDtype,
) -> Result<(), LimitExceeded> {
    let largest = largest_context(limits, config, kv_cache);
    let advice = || format!("use a context of {largest} tokens or fewer (--context {largest})");
    let (limit, available) = whole_binding(limits);
    for (what, needed) in context_buffers(config, context, kv_cache) {
        if needed > available {
            return Err(LimitExceeded {
                limit,
                available,
                needed,
                what: format!("{what} for a {context}-token context"),
                advice: advice(),
            });
        }
    }
    let chunks = context.div_ceil(DECODE_CHUNK) as u64;
    if chunks > limits.max_compute_workgroups_per_dimension.into() {
        return Err(LimitExceeded {
            limit: "max_compute_workgroups_per_dimension",
            available: limits.max_compute_workgroups_per_dimension.into(),
            needed: chunks,
            what: format!("decode attention over a {context}-token context (workgroups along x)"),
            advice: advice(),
        });
    }
    Ok(())
}

/// Activation buffers for a prefill batch of `batch` tokens, and the prefill attention's dispatch
/// (one workgroup row per token).
pub fn check_batch(
    limits: &wgpu::Limits,
    config: &ModelConfig,
    projections: ProjectionKind,
    batch: usize,
) -> Result<(), LimitExceeded> {
    let largest = largest_batch(limits, config, projections);
    let advice = || format!("use a prefill batch of {largest} tokens or fewer (--batch {largest})");
    let (limit, available) = whole_binding(limits);
    for (what, per_token) in batch_buffers(config, projections) {
        let needed = per_token.saturating_mul(batch as u64);
        if needed > available {
            return Err(LimitExceeded {
                limit,
                available,
                needed,
                what: format!("the {what} buffer of a {batch}-token prefill batch"),
                advice: advice(),
            });
        }
    }
    if batch as u64 > limits.max_compute_workgroups_per_dimension.into() {
        return Err(LimitExceeded {
            limit: "max_compute_workgroups_per_dimension",
            available: limits.max_compute_workgroups_per_dimension.into(),
            needed: batch as u64,
            what: format!("prefill attention over a {batch}-token batch (workgroups along y)"),
            advice: advice(),
        });
    }
    Ok(())
}

/// The longest context whose buffers fit `limits` with the K/V cache stored as `kv_cache` (0 if none
/// does): an f16 cache holds twice the positions of an f32 one in the same binding.
pub fn largest_context(
    limits: &wgpu::Limits,
    config: &ModelConfig,
    kv_cache: KvCacheDtype,
) -> usize {
    let (_, available) = whole_binding(limits);
    // The K/V cache grows fastest; step down past the partials' and the cache's rounding.
    let per_token = (config.num_kv_heads * config.head_dim * kv_cache.element_bytes()) as u64;
    let mut context = (available / per_token.max(1)) as usize;
    context = context.min(limits.max_compute_workgroups_per_dimension as usize * DECODE_CHUNK);
    while context > 0
        && context_buffers(config, context, kv_cache)
            .iter()
            .any(|&(_, bytes)| bytes > available)
    {
        context -= 1;
    }
    context
}

/// The largest prefill batch whose buffers fit `limits`.
pub fn largest_batch(
    limits: &wgpu::Limits,
    config: &ModelConfig,
    projections: ProjectionKind,
) -> usize {
    let (_, available) = whole_binding(limits);
    let widest_per_token = batch_buffers(config, projections)
        .iter()
        .map(|&(_, bytes)| bytes)
        .max()
        .unwrap_or(1);
    (available / widest_per_token.max(1)).min(limits.max_compute_workgroups_per_dimension.into())
        as usize
}

/// A buffer bound whole must fit both the binding and the buffer limit: the smaller one, named.
fn whole_binding(limits: &wgpu::Limits) -> (&'static str, u64) {
    let binding = limits.max_storage_buffer_binding_size;
    if limits.max_buffer_size < binding {
        ("max_buffer_size", limits.max_buffer_size)
    } else {
        ("max_storage_buffer_binding_size", binding)
    }
}

/// Bytes of the buffers that grow with the context; the K/V cache first.
fn context_buffers(
    config: &ModelConfig,
    context: usize,
    kv_cache: KvCacheDtype,
) -> [(&'static str, u64); 2] {
    // In u64: a long context's cache passes 4 GiB, which wraps a wasm32 usize.
    let [heads, head_dim] = [config.num_heads, config.head_dim].map(|n| n as u64);
    let chunks = context.div_ceil(DECODE_CHUNK) as u64;
    [
        (
            "one layer's K (and V) cache",
            attention_shape(config, context, kv_cache).cache_bytes(),
        ),
        (
            "the decode attention's partial results",
            heads * chunks * (head_dim + 2) * 4,
        ),
    ]
}

/// Bytes per token of every activation buffer the forward binds whole (see `Activations`).
fn batch_buffers(config: &ModelConfig, projections: ProjectionKind) -> Vec<(&'static str, u64)> {
    let c = config;
    let attention_width = c.num_heads * c.head_dim;
    let qkv_width = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
    let widest = c.hidden_size.max(attention_width).max(c.intermediate_size);
    let mut buffers = vec![
        ("all-logits (tokens × vocab)", c.vocab_size * 4),
        ("token ids", 4),
        ("residual", c.hidden_size * 4),
        ("normed", c.hidden_size * 4),
        ("int8 activations", padded_activation_words(widest) * 4),
        ("activation statistics", size_of::<ActStats>()),
        ("q|k|v", qkv_width * 4),
        ("attention output", attention_width * 4),
        ("feed-forward", c.intermediate_size * 4),
    ];
    if projections == ProjectionKind::Dense {
        buffers.push(("dense projection input", widest * 4));
    }
    buffers
        .into_iter()
        .map(|(what, bytes)| (what, bytes as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic::{self, Shape};

    const MIB_128: u64 = 128 << 20;

    fn config_of(shape: Shape, max_position_embeddings: usize) -> ModelConfig {
        synthetic::checkpoint(shape, max_position_embeddings, 0)
            .expect("synthetic checkpoint")
            .config
    }

    fn options(max_context: usize, max_batch: usize) -> ModelOptions {
        ModelOptions {
            max_context,
            max_batch,
            ..ModelOptions::default()
        }
    }

    /// WebGPU's default limits: 128 MiB bindings, 256 MiB buffers, 8 storage buffers per stage.
    fn webgpu_defaults() -> wgpu::Limits {
        wgpu::Limits::default()
    }

    #[test]
    fn bitnet_2b4t_fits_webgpu_defaults_at_default_options() {
        let limits = webgpu_defaults();
        assert_eq!(limits.max_storage_buffer_binding_size, MIB_128);
        let config = config_of(Shape::BITNET_2B4T, 4096);
        assert_eq!(check(&limits, &config, &ModelOptions::default()), Ok(()));
    }

    #[test]
    fn bitnet_2b4t_batch_is_capped_by_the_all_logits_buffer() {
        let limits = webgpu_defaults();
        let config = config_of(Shape::BITNET_2B4T, 4096);
        // [T, 128256] f32 logits: 513 024 bytes a token, 261 tokens in 128 MiB.
        let largest = largest_batch(&limits, &config, ProjectionKind::Ternary);
        assert_eq!(largest, 261);
        assert_eq!(check(&limits, &config, &options(4096, largest)), Ok(()));
        let error = check(&limits, &config, &options(4096, 2400)).unwrap_err();
        assert_eq!(error.limit, "max_storage_buffer_binding_size");
        assert_eq!(error.available, MIB_128);
        assert_eq!(error.needed, 2400 * 128_256 * 4);
        assert!(error.what.contains("all-logits"), "{error}");
        assert!(error.advice.contains("--batch 261"), "{error}");
        let message = error.into_error("some GPU").to_string();
        assert!(message.starts_with("GPU: some GPU: "), "{message}");
        assert!(message.contains("134217728 bytes"), "{message}");
    }

    /// Llama-3-8B-1.58: 8 KV heads × head_dim 128.
    const LLAMA_3_8B: Shape = Shape {
        hidden: 4096,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        intermediate: 14336,
        vocab: 128_256,
    };

    #[test]
    fn kv_cache_larger_than_a_binding_names_the_largest_context() {
        let limits = webgpu_defaults();
        // 2B-4T: 5 KV heads × 128 × 4 bytes = 2 560 bytes a position, 52 428 positions in 128 MiB.
        let config = config_of(Shape::BITNET_2B4T, 1 << 17);
        let f32_cache = |max_context| ModelOptions {
            kv_cache: KvCacheDtype::F32,
            ..options(max_context, 128)
        };
        assert_eq!(largest_context(&limits, &config, KvCacheDtype::F32), 52_428);
        assert_eq!(check(&limits, &config, &f32_cache(52_428)), Ok(()));
        let error = check(&limits, &config, &f32_cache(65_536)).unwrap_err();
        assert_eq!(error.limit, "max_storage_buffer_binding_size");
        assert_eq!(error.needed, 5 * 65_536 * 128 * 4);
        assert!(error.what.contains("K (and V) cache"), "{error}");
        assert!(error.advice.contains("--context 52428"), "{error}");

        // 8 KV heads × head_dim 128 (Llama-3-8B-1.58): exactly 128 MiB at 32k, too much beyond.
        let config = config_of(LLAMA_3_8B, 1 << 17);
        assert_eq!(largest_context(&limits, &config, KvCacheDtype::F32), 32_768);
        assert!(check_context(&limits, &config, 32_769, KvCacheDtype::F32).is_err());
    }

    #[test]
    fn an_f16_kv_cache_fits_twice_the_positions() {
        let limits = webgpu_defaults();
        // 2B-4T: 5 KV heads × 128 × 2 bytes = 1 280 bytes a position, 104 857 positions in 128 MiB.
        let config = config_of(Shape::BITNET_2B4T, 1 << 17);
        assert_eq!(
            largest_context(&limits, &config, KvCacheDtype::F16),
            104_857
        );
        assert_eq!(check(&limits, &config, &options(104_857, 128)), Ok(()));
        let error = check(&limits, &config, &options(104_858, 128)).unwrap_err();
        assert_eq!(
            error.needed,
            (5 * 104_858 * 128 * 2_u64).next_multiple_of(16)
        );
        assert!(error.advice.contains("--context 104857"), "{error}");
        // Llama-3-8B-1.58's 8 KV heads: 64k positions in f16 where f32 holds 32k.
        let config = config_of(LLAMA_3_8B, 1 << 17);
        assert_eq!(largest_context(&limits, &config, KvCacheDtype::F16), 65_536);
    }

    #[test]
    fn the_smaller_of_buffer_and_binding_limit_is_named() {
        let limits = wgpu::Limits {
            max_buffer_size: 64 << 20,
            ..webgpu_defaults()
        };
        let config = config_of(Shape::BITNET_2B4T, 4096);
        let error = check(&limits, &config, &options(4096, 200)).unwrap_err();
        assert_eq!(error.limit, "max_buffer_size");
        assert_eq!(error.available, 64 << 20);
        assert!(error.advice.contains("--batch 130"), "{error}");
    }

    #[test]
    fn weights_larger_than_a_binding_are_refused_without_a_batch_or_context_fix() {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 20,
            ..webgpu_defaults()
        };
        // q|k|v: 3 840 rows × 160 code words × 4 bytes = 2.4 MB, bound whole.
        let error = check(
            &limits,
            &config_of(Shape::BITNET_2B4T, 4096),
            &options(16, 1),
        )
        .unwrap_err();
        assert!(error.what.contains("q|k|v"), "{error}");
        assert_eq!(error.needed, 3840 * 160 * 4);
        assert!(error.advice.contains("too large for this GPU"), "{error}");
    }

    #[test]
    fn downlevel_limits_lack_storage_buffers_for_the_ternary_matvec() {
        let limits = wgpu::Limits::downlevel_defaults();
        let error = check(
            &limits,
            &config_of(Shape::TINY, 256),
            &ModelOptions::default(),
        )
        .unwrap_err();
        assert_eq!(error.limit, "max_storage_buffers_per_shader_stage");
        assert_eq!((error.available, error.needed), (4, 5));
    }

    #[test]
    fn small_workgroups_and_dispatch_grids_are_refused() {
        let config = config_of(Shape::TINY, 256);
        let small_workgroups = wgpu::Limits {
            max_compute_invocations_per_workgroup: 128,
            ..webgpu_defaults()
        };
        let error = check(&small_workgroups, &config, &ModelOptions::default()).unwrap_err();
        assert_eq!(error.limit, "max_compute_invocations_per_workgroup");
        assert_eq!((error.available, error.needed), (128, 256));

        let narrow_x = wgpu::Limits {
            max_compute_workgroup_size_x: 64,
            ..webgpu_defaults()
        };
        let error = check(&narrow_x, &config, &ModelOptions::default()).unwrap_err();
        assert_eq!(error.limit, "max_compute_workgroup_size_x");

        let few_workgroups = wgpu::Limits {
            max_compute_workgroups_per_dimension: 1024,
            ..webgpu_defaults()
        };
        let error = check(&few_workgroups, &config, &ModelOptions::default()).unwrap_err();
        assert_eq!(error.limit, "max_compute_workgroups_per_dimension");
    }

    #[test]
    fn prefill_batches_beyond_the_dispatch_limit_are_refused() {
        // Huge bindings, so only the prefill attention's one workgroup row per token limits T.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 40,
            max_buffer_size: 1 << 40,
            ..webgpu_defaults()
        };
        let config = config_of(Shape::TINY, 256);
        assert_eq!(
            largest_batch(&limits, &config, ProjectionKind::Ternary),
            65_535
        );
        let error = check_batch(&limits, &config, ProjectionKind::Ternary, 100_000).unwrap_err();
        assert_eq!(error.limit, "max_compute_workgroups_per_dimension");
        assert_eq!(error.needed, 100_000);
    }
}
