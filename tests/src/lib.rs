//! Shared harness for Tern's integration tests: one GPU context per adapter, so every kernel and model
//! test runs on each adapter the machine has (lavapipe and SwiftShader in CI), plus helpers for random
//! inputs and tolerance checks that say where a comparison failed.

pub mod goldens;

use std::sync::OnceLock;
use tern::gpu::{Context, ContextOptions};

/// Debian's Chromium ships SwiftShader as a Vulkan driver that the loader does not list by default.
const SWIFTSHADER_ICD: &str = "/usr/lib/chromium/vk_swiftshader_icd.json";

/// A context for each adapter under test. `TERN_ADAPTER` (substring of the name) narrows the set;
/// by default every Vulkan/Metal/DX12 adapter is used, with SwiftShader added when it is installed.
pub fn contexts() -> &'static [Context] {
    static CONTEXTS: OnceLock<Vec<Context>> = OnceLock::new();
    CONTEXTS.get_or_init(|| {
        if std::env::var_os("VK_ICD_FILENAMES").is_none()
            && std::env::var_os("VK_DRIVER_FILES").is_none()
            && std::path::Path::new(SWIFTSHADER_ICD).exists()
        {
            // Safe here: set once, before any thread of this process has started the Vulkan loader.
            std::env::set_var("VK_ADD_DRIVER_FILES", SWIFTSHADER_ICD);
        }
        let mut options = ContextOptions::from_env();
        if options.backend.is_none() {
            options.backend = Some(native_backend().into());
        }
        let adapters = pollster::block_on(Context::adapters(&options)).expect("listing adapters");
        let contexts: Vec<Context> = adapters
            .into_iter()
            .map(|a| {
                pollster::block_on(Context::from_adapter(a, &options)).expect("creating a device")
            })
            .collect();
        assert!(
            !contexts.is_empty(),
            "no GPU adapter found for {options:?}: install mesa-vulkan-drivers"
        );
        for ctx in &contexts {
            eprintln!("testing on {}", ctx.adapter_name());
        }
        contexts
    })
}

/// A second device on each adapter under test, created with the adapter's limits as `lower`
/// changes them: a model loaded there meets the limits of a smaller GPU.
pub fn contexts_with_limits(lower: impl Fn(&mut wgpu::Limits)) -> Vec<Context> {
    second_contexts(lower, ContextOptions::from_env().portable)
}

/// A second device on each adapter under test without its optional shader features (subgroups,
/// `shader-f16`): the kernels a browser without them would run.
pub fn portable_contexts() -> Vec<Context> {
    second_contexts(|_| {}, true)
}

fn second_contexts(lower: impl Fn(&mut wgpu::Limits), portable: bool) -> Vec<Context> {
    contexts()
        .iter()
        .map(|ctx| {
            let options = ContextOptions {
                backend: Some(format!("{:?}", ctx.info.backend).to_lowercase()),
                adapter_name: Some(ctx.info.name.clone()),
                portable,
                ..ContextOptions::from_env()
            };
            let adapter = pollster::block_on(Context::adapters(&options))
                .expect("listing adapters")
                .into_iter()
                .next()
                .expect("the adapter under test");
            let mut limits = adapter.limits();
            lower(&mut limits);
            pollster::block_on(Context::with_limits(adapter, limits, &options))
                .expect("creating a device")
        })
        .collect()
}

fn native_backend() -> &'static str {
    if cfg!(target_os = "macos") {
        "metal"
    } else if cfg!(target_os = "windows") {
        "dx12"
    } else {
        "vulkan"
    }
}

/// Runs `test` on every adapter, naming the adapter when it fails.
pub fn for_each_adapter(mut test: impl FnMut(&Context)) {
    for ctx in contexts() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(ctx)));
        if let Err(panic) = result {
            eprintln!("failed on adapter {}", ctx.adapter_name());
            std::panic::resume_unwind(panic);
        }
    }
}

/// Asserts `|gpu − cpu| ≤ atol + rtol·|cpu|` elementwise, reporting the worst element.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let mut worst: Option<(usize, f32)> = None;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let excess = (g - c).abs() - (atol + rtol * c.abs());
        // NaN never passes: it fails `excess <= 0` and is reported in preference to finite excesses.
        let fails = excess.is_nan() || excess > 0.0;
        if fails && worst.is_none_or(|(_, w)| excess > w || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i}: gpu {} vs cpu {} (atol {atol}, rtol {rtol})",
            gpu[i], cpu[i]
        );
    }
}

/// Deterministic random f32s in [−scale, scale].
pub fn random_f32(rng: &mut impl rand::Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..=scale)).collect()
}

pub fn seeded(seed: u64) -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(seed)
}

/// `values` as the little-endian bytes of a table in `dtype` (each value rounded to it).
pub fn table_bytes(dtype: tern::layout::FloatDType, values: &[f32]) -> Vec<u8> {
    use tern::layout::FloatDType;
    match dtype {
        FloatDType::F32 => bytemuck::cast_slice(values).to_vec(),
        FloatDType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        FloatDType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}
