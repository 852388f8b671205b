//! Every kernel, as the engine assembles it (`tern::ops::sources`), parsed and validated by naga —
//! the translator wgpu itself uses natively — and written for each native backend: SPIR-V (Vulkan),
//! MSL (Metal) and HLSL (DX12, at Shader Model 5.1 as FXC compiles it and at 6.0 / 6.4 as DXC does).
//! Catches a kernel that works on the test adapters (Vulkan) but not on Metal or DX12, without those
//! GPUs. Also checks each entry point against the constants `tern::model::limits` checks devices
//! against: workgroup size, storage buffers and workgroup memory.

use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage};
use tern::model::limits::{
    KERNEL_STORAGE_BUFFERS, KERNEL_WORKGROUP_INVOCATIONS, KERNEL_WORKGROUP_STORAGE,
};
use tern::ops::sources;

/// Kernels that use subgroup operations (need the SUBGROUP feature: DXC / Shader Model 6.0 on DX12).
fn uses_subgroups(name: &str) -> bool {
    name.starts_with("subgroup/")
}

/// Whether `module` declares the pipeline-overridable constant `name`.
fn has_override(module: &Module, name: &str) -> bool {
    module
        .overrides
        .iter()
        .any(|(_, o)| o.name.as_deref() == Some(name))
}

/// The module and its validation, with `WG` (where a kernel's workgroup size is an override) at the
/// largest size any wrapper uses, so workgroup memory sized by it is checked at its largest, and
/// `KV_F16` (where a kernel reads or writes the KV cache) as given.
fn compile(name: &str, source: &str, kv_f16: bool) -> Result<(Module, ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("WGSL parse: {}", e.emit_to_string(source)))?;
    // As wgpu grants a WebGPU-compliant device (unpack2x16float needs this one).
    let mut capabilities = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if uses_subgroups(name) {
        capabilities |= Capabilities::SUBGROUP;
    }
    let info = Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| format!("validation: {}", e.emit_to_string(source)))?;
    let mut constants = naga::back::PipelineConstants::default();
    if has_override(&module, "WG") {
        constants.insert("WG".into(), f64::from(KERNEL_WORKGROUP_INVOCATIONS));
    }
    if has_override(&module, "KV_F16") {
        constants.insert("KV_F16".into(), f64::from(u8::from(kv_f16)));
    }
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
            .map_err(|e| format!("overrides: {e}"))?;
    Ok((module.into_owned(), info.into_owned()))
}

fn spirv(module: &Module, info: &ModuleInfo, subgroups: bool) -> Result<(), String> {
    let options = spv::Options {
        // Vulkan 1.1's SPIR-V 1.3 has the subgroup operations.
        lang_version: if subgroups { (1, 3) } else { (1, 0) },
        ..Default::default()
    };
    spv::write_vec(module, info, &options, None)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn metal(module: &Module, info: &ModuleInfo) -> Result<(), String> {
    let options = msl::Options {
        // macOS 11 / iOS 14; simdgroup reductions need 2.1.
        lang_version: (2, 3),
        ..Default::default()
    };
    msl::write_string(module, info, &options, &msl::PipelineOptions::default())
        .map(drop)
        .map_err(|e| e.to_string())
}

fn dx12(module: &Module, info: &ModuleInfo, shader_model: hlsl::ShaderModel) -> Result<(), String> {
    let options = hlsl::Options {
        shader_model,
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions::default();
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(module, info, None)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// What one entry point uses against the engine's kernel constants.
fn check_entry_points(module: &Module, info: &ModuleInfo) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, entry) in module.entry_points.iter().enumerate() {
        if entry.stage != ShaderStage::Compute {
            continue;
        }
        let uses = info.get_entry_point(index);
        let used = || {
            module
                .global_variables
                .iter()
                .filter(|&(handle, _)| !uses[handle].is_empty())
        };
        let storage_buffers = used()
            .filter(|(_, g)| matches!(g.space, AddressSpace::Storage { .. }))
            .count() as u32;
        let workgroup_bytes: u32 = used()
            .filter(|(_, g)| g.space == AddressSpace::WorkGroup)
            .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
            .sum();
        let invocations: u32 = entry.workgroup_size.iter().product();
        if storage_buffers > KERNEL_STORAGE_BUFFERS {
            problems.push(format!(
                "{}: {storage_buffers} storage buffers > KERNEL_STORAGE_BUFFERS ({KERNEL_STORAGE_BUFFERS})",
                entry.name
            ));
        }
        if invocations > KERNEL_WORKGROUP_INVOCATIONS {
            problems.push(format!(
                "{}: workgroup of {invocations} > KERNEL_WORKGROUP_INVOCATIONS ({KERNEL_WORKGROUP_INVOCATIONS})",
                entry.name
            ));
        }
        if workgroup_bytes > KERNEL_WORKGROUP_STORAGE {
            problems.push(format!(
                "{}: {workgroup_bytes} bytes of workgroup memory > KERNEL_WORKGROUP_STORAGE ({KERNEL_WORKGROUP_STORAGE})",
                entry.name
            ));
        }
    }
    problems
}

#[test]
fn every_kernel_translates_for_vulkan_metal_and_dx12() {
    let mut failures = Vec::new();
    // Kernels over the KV cache are translated for both cache dtypes (f32, f16 pairs).
    let variants = sources::ALL.iter().flat_map(|&(name, source)| {
        let both = source.contains("override KV_F16");
        [(name.to_string(), source, false)]
            .into_iter()
            .chain(both.then(|| (format!("{name} (KV_F16)"), source, true)))
    });
    for (label, source, kv_f16) in variants {
        let name = label.as_str();
        let (module, info) = match compile(name, source, kv_f16) {
            Ok(compiled) => compiled,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let subgroups = uses_subgroups(name);
        let mut backends = vec![
            ("SPIR-V (Vulkan)", spirv(&module, &info, subgroups)),
            ("MSL (Metal)", metal(&module, &info)),
        ];
        // FXC (Shader Model 5.1) has no wave operations: the engine only builds the subgroup
        // kernel where the device offers SUBGROUP, which DX12 does only with DXC.
        let shader_models = if subgroups {
            vec![hlsl::ShaderModel::V6_0, hlsl::ShaderModel::V6_4]
        } else {
            vec![
                hlsl::ShaderModel::V5_1,
                hlsl::ShaderModel::V6_0,
                hlsl::ShaderModel::V6_4,
            ]
        };
        for model in shader_models {
            let label = format!("HLSL {model:?} (DX12)");
            backends.push((label.leak(), dx12(&module, &info, model)));
        }
        for (backend, result) in backends {
            if let Err(e) = result {
                failures.push(format!("{name} → {backend}: {e}"));
            }
        }
        failures.extend(
            check_entry_points(&module, &info)
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
    }
    assert!(
        failures.is_empty(),
        "{} kernel translation failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_kernel_file_is_in_the_list() {
    let shaders = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/shaders");
    let listed: Vec<&str> = sources::ALL.iter().map(|&(name, _)| name).collect();
    for dir in ["", "subgroup/"] {
        for entry in std::fs::read_dir(shaders.join(dir)).expect("engine/shaders/ readable") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "wgsl") {
                let stem = path.file_stem().unwrap().to_string_lossy();
                let name = format!("{dir}{stem}");
                assert!(
                    listed.contains(&name.as_str()),
                    "engine/shaders/{name}.wgsl is not in tern::ops::sources::ALL"
                );
            }
        }
    }
}
