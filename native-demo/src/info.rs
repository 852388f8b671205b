use tern::gpu::{Context, ContextOptions};

/// Prints every adapter the platform offers, then the one `ContextOptions::from_env()` selects.
pub fn run() -> anyhow::Result<()> {
    let all = ContextOptions::default();
    let reports = pollster::block_on(Context::adapter_reports(&all))?;
    if reports.is_empty() {
        println!("no GPU adapters found (install a Vulkan driver, e.g. mesa-vulkan-drivers, or try TERN_BACKEND=gl)");
    }
    for (i, report) in reports.iter().enumerate() {
        let info = &report.info;
        let limits = &report.limits;
        println!(
            "[{i}] {} — {:?}, {:?}, driver {} {}",
            info.name, info.backend, info.device_type, info.driver, info.driver_info
        );
        println!(
            "    max buffer {} MiB, max storage binding {} MiB, storage buffers/stage {}",
            limits.max_buffer_size >> 20,
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_storage_buffers_per_shader_stage
        );
        println!(
            "    workgroup: {} invocations, {} KiB shared, size {}×{}×{}; dispatch ≤ {}",
            limits.max_compute_invocations_per_workgroup,
            limits.max_compute_workgroup_storage_size >> 10,
            limits.max_compute_workgroup_size_x,
            limits.max_compute_workgroup_size_y,
            limits.max_compute_workgroup_size_z,
            limits.max_compute_workgroups_per_dimension
        );
        let has = |f: wgpu::Features| {
            if report.features.contains(f) {
                "yes"
            } else {
                "no"
            }
        };
        println!(
            "    shader-f16 {}, subgroups {} (size {}–{}), timestamp queries {}",
            has(wgpu::Features::SHADER_F16),
            has(wgpu::Features::SUBGROUP),
            info.subgroup_min_size,
            info.subgroup_max_size,
            has(wgpu::Features::TIMESTAMP_QUERY)
        );
    }
    match pollster::block_on(Context::new(&ContextOptions::from_env())) {
        Ok(ctx) => println!(
            "selected: {} (override with TERN_BACKEND=vulkan|metal|dx12|gl, TERN_ADAPTER=<name>)",
            ctx.adapter_name()
        ),
        Err(e) => println!("selected: none: {e}"),
    }
    Ok(())
}
