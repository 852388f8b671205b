use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// How to pick the adapter. Empty options mean: the best real GPU, else whatever the platform has.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// `vulkan`, `metal`, `dx12` or `gl` (natively; the browser always uses WebGPU).
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name, e.g. `llvmpipe` or `swiftshader`.
    pub adapter_name: Option<String>,
    /// A `max_storage_buffer_binding_size` in bytes to request instead of the adapter's own, if
    /// smaller: to check on a large GPU that a model fits a smaller one (WebGPU's default is
    /// 134217728).
    pub max_storage_binding: Option<String>,
    /// Create the device without the optional shader features (subgroups, `shader-f16`) even where
    /// the adapter has them, so the portable kernels run as in a browser that lacks them: checks
    /// those kernels on a GPU that would otherwise pick the subgroup variants.
    pub portable: bool,
}

impl ContextOptions {
    /// Options from `TERN_BACKEND`, `TERN_ADAPTER`, `TERN_MAX_STORAGE_BINDING` and `TERN_PORTABLE`
    /// (any value but `0`).
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        ContextOptions {
            backend: var("TERN_BACKEND"),
            adapter_name: var("TERN_ADAPTER"),
            max_storage_binding: var("TERN_MAX_STORAGE_BINDING"),
            portable: var("TERN_PORTABLE").is_some_and(|v| v != "0"),
        }
    }

    /// The optional features the device is created with: what the adapter has of those the
    /// kernels can use, less the shader features when `portable`.
    fn features(&self, adapter: &wgpu::Adapter) -> wgpu::Features {
        let mut features = adapter.features() & OPTIONAL_FEATURES;
        if self.portable {
            features.remove(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP);
        }
        features
    }

    /// The adapter's limits, lowered as asked.
    fn limits(&self, adapter: &wgpu::Adapter) -> Result<wgpu::Limits> {
        let mut limits = adapter.limits();
        if let Some(bytes) = &self.max_storage_binding {
            let bytes: u64 = bytes.parse().map_err(|_| {
                Error::Invalid(format!(
                    "TERN_MAX_STORAGE_BINDING={bytes}: expected a number of bytes"
                ))
            })?;
            limits.max_storage_buffer_binding_size =
                bytes.min(limits.max_storage_buffer_binding_size);
        }
        Ok(limits)
    }

    fn backends(&self) -> Result<wgpu::Backends> {
        Ok(
            match self
                .backend
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None => wgpu::Backends::all(),
                Some("vulkan") => wgpu::Backends::VULKAN,
                Some("metal") => wgpu::Backends::METAL,
                Some("dx12") => wgpu::Backends::DX12,
                Some("gl") => wgpu::Backends::GL,
                Some("webgpu") => wgpu::Backends::BROWSER_WEBGPU,
                Some(other) => {
                    return Err(Error::Invalid(format!(
                        "TERN_BACKEND={other}: expected vulkan, metal, dx12, gl or webgpu"
                    )))
                }
            },
        )
    }
}

/// What the kernels may use on this device, decided once from the adapter.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// The device has `SHADER_F16`: kernels may use `f16` arithmetic.
    pub shader_f16: bool,
    /// The device has `SUBGROUP`: kernels may use subgroup operations.
    pub subgroups: bool,
    /// The device has `TIMESTAMP_QUERY`: kernels can be timed on the GPU.
    pub timestamps: bool,
    /// Smallest subgroup size the adapter may use (0 without subgroups).
    pub subgroup_min_size: u32,
    /// The adapter is a CPU rasterizer (lavapipe, SwiftShader): one invocation per row wins there.
    pub is_cpu: bool,
    /// Largest storage-buffer binding, in bytes (`max_storage_buffer_binding_size`).
    pub max_binding_bytes: u64,
    /// Largest buffer, in bytes (`max_buffer_size`).
    pub max_buffer_bytes: u64,
    /// Most invocations in one workgroup (`max_compute_invocations_per_workgroup`).
    pub max_workgroup_invocations: u32,
}

/// Owns the device. Everything on the GPU is created through it. A clone shares the device (and
/// its error state).
#[derive(Clone)]
pub struct Context {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// The device's queue: writes and submits go here.
    pub queue: wgpu::Queue,
    /// Name, vendor, backend and type of the adapter the device was made from.
    pub info: wgpu::AdapterInfo,
    /// The limits the device was created with (what it enforces).
    pub limits: wgpu::Limits,
    /// What the kernels may use, derived from the adapter's features and `limits`.
    pub caps: Capabilities,
    /// The first wgpu error no error scope caught, until [`Context::check_errors`] returns it
    /// (wgpu's default handler would panic).
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Bytes of the [`GpuBuffer`](super::GpuBuffer)s alive on this device.
    pub(super) live_bytes: Arc<AtomicU64>,
}

/// One adapter as `tern info` prints it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Name, vendor, backend and type of the adapter.
    pub info: wgpu::AdapterInfo,
    /// The adapter's best limits (not those a device is created with).
    pub limits: wgpu::Limits,
    /// Every feature the adapter offers.
    pub features: wgpu::Features,
}

const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY);

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = backends;
    wgpu::Instance::new(descriptor)
}

#[cfg(not(target_arch = "wasm32"))]
fn device_rank(info: &wgpu::AdapterInfo) -> u8 {
    use wgpu::DeviceType::*;
    match info.device_type {
        DiscreteGpu => 0,
        IntegratedGpu => 1,
        VirtualGpu => 2,
        Other => 3,
        Cpu => 4,
    }
}

impl Context {
    /// Picks an adapter according to `options` and creates the device.
    pub async fn new(options: &ContextOptions) -> Result<Self> {
        let backends = options.backends()?;
        let instance = instance(backends);
        let adapter = Self::choose_adapter(&instance, backends, options).await?;
        Self::from_adapter(adapter, options).await
    }

    #[cfg(not(target_arch = "wasm32"))]
    async fn choose_adapter(
        instance: &wgpu::Instance,
        backends: wgpu::Backends,
        options: &ContextOptions,
    ) -> Result<wgpu::Adapter> {
        let mut adapters = instance.enumerate_adapters(backends).await;
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        if let Some(filter) = &options.adapter_name {
            let filter = filter.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&filter));
        }
        // A real GPU first; among equals prefer Vulkan/Metal/DX12 over GL.
        adapters.sort_by_key(|a| {
            let info = a.get_info();
            (device_rank(&info), info.backend == wgpu::Backend::Gl)
        });
        adapters.into_iter().next().ok_or_else(|| {
            Error::Gpu(format!(
                "no adapter matches (backends {backends:?}, name filter {:?}); adapters found: [{}]. \
                 Install a Vulkan driver (e.g. mesa-vulkan-drivers for lavapipe) or set TERN_BACKEND=gl",
                options.adapter_name,
                seen.join(", ")
            ))
        })
    }

    #[cfg(target_arch = "wasm32")]
    async fn choose_adapter(
        instance: &wgpu::Instance,
        _backends: wgpu::Backends,
        _options: &ContextOptions,
    ) -> Result<wgpu::Adapter> {
        instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("this browser offers no WebGPU adapter: {e}")))
    }

    /// Creates the device with the adapter's own maxima (lowered as `options` ask) and every
    /// optional feature it has (less the shader features when `options.portable`).
    pub async fn from_adapter(adapter: wgpu::Adapter, options: &ContextOptions) -> Result<Self> {
        let limits = options.limits(&adapter)?;
        Self::with_limits(adapter, limits, options).await
    }

    /// Creates the device with `limits` (at most the adapter's: lower ones make a large GPU
    /// behave like a smaller one) and the optional features `options` allow.
    pub async fn with_limits(
        adapter: wgpu::Adapter,
        limits: wgpu::Limits,
        options: &ContextOptions,
    ) -> Result<Self> {
        let info = adapter.get_info();
        let features = options.features(&adapter);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tern"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("{}: device creation failed: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(None));
        let first_error = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| error.to_string());
        }));
        let caps = Capabilities {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_min_size: if features.contains(wgpu::Features::SUBGROUP) {
                info.subgroup_min_size
            } else {
                0
            },
            is_cpu: info.device_type == wgpu::DeviceType::Cpu
                || info.name.to_lowercase().contains("swiftshader"),
            max_binding_bytes: limits.max_storage_buffer_binding_size,
            max_buffer_bytes: limits.max_buffer_size,
            max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
        };
        Ok(Context {
            device,
            queue,
            info,
            limits,
            caps,
            uncaptured,
            live_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Bytes of the engine's buffers alive on the device now (weights, caches, activations; not
    /// wgpu's own staging): what loading a model or opening a session costs in device memory.
    pub fn live_buffer_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    /// The first wgpu error (validation, out of memory) since the last call, as an [`Error`].
    /// Checked whenever the engine waits for the device, so a failure surfaces as an error of the
    /// load or step that caused it.
    pub fn check_errors(&self) -> Result<()> {
        let mut first = self.uncaptured.lock().unwrap_or_else(|e| e.into_inner());
        match first.take() {
            Some(error) => Err(Error::Gpu(format!("{}: {error}", self.adapter_name()))),
            None => Ok(()),
        }
    }

    /// Every adapter the platform offers, for `tern info` and for tests that cover all of them.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn adapters(options: &ContextOptions) -> Result<Vec<wgpu::Adapter>> {
        let backends = options.backends()?;
        let mut adapters = instance(backends).enumerate_adapters(backends).await;
        if let Some(filter) = &options.adapter_name {
            let filter = filter.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&filter));
        }
        Ok(adapters)
    }

    /// [`Context::adapters`] as printable reports.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn adapter_reports(options: &ContextOptions) -> Result<Vec<AdapterReport>> {
        Ok(Self::adapters(options)
            .await?
            .into_iter()
            .map(|a| AdapterReport {
                info: a.get_info(),
                limits: a.limits(),
                features: a.features(),
            })
            .collect())
    }

    /// One line naming the adapter, for logs and benchmark output.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// A compute pipeline from WGSL source with an automatic layout. `constants` fill the shader's
    /// `override` declarations (workgroup sizes and the like).
    pub fn pipeline(
        &self,
        label: &str,
        source: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            })
    }

    /// A bind group for `pipeline`'s group 0 with the given buffers at bindings 0, 1, 2, …
    pub fn bind_group(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[wgpu::BufferBinding<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(b.clone()),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Records work with `record`, submits it once and waits for it to finish (tests, loading).
    pub async fn run(&self, record: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        record(&mut encoder);
        self.queue.submit([encoder.finish()]);
        self.wait().await
    }

    /// Waits until the queue is idle.
    pub async fn wait(&self) -> Result<()> {
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = sender.send(());
        });
        self.poll_blocking()?;
        receiver
            .await
            .map_err(|_| Error::Gpu("device lost while waiting for work".into()))
    }

    /// Natively, drives the device until submitted work is done; in the browser the event loop does.
    pub(crate) fn poll_blocking(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("{}: {e}", self.info.name)))?;
        self.check_errors()
    }
}
