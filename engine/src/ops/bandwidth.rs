//! Memory-bandwidth yardstick for benchmarks: `shaders/copy_bandwidth.wgsl` over a large buffer split
//! into binding-sized chunks (one buffer and one binding each). CPU twin of the read kernel's checksum:
//! [`crate::reference::bandwidth::checksum`].

use super::sources;
use crate::gpu::{BufferUsage, Context, GpuBuffer};
use crate::layout::checksum;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vecs: u32,
    invocations: u32,
    _pad: [u32; 2],
}

/// The shader's workgroup size.
const WG: u32 = 256;
/// vec4s each invocation walks: enough work per invocation, few per-invocation sums.
const VECS_PER_INVOCATION: u32 = 64;

/// Throughput measured by [`measure`].
#[derive(Clone, Copy, Debug)]
pub struct BandwidthReport {
    /// GB/s (10⁹ bytes) read by the read kernel.
    pub read_gbps: f64,
    /// GB/s moved by the copy kernel, counting the bytes read and the bytes written.
    pub copy_gbps: f64,
    /// Bytes of the source buffer (all chunks).
    pub bytes: u64,
    /// Binding-sized buffers the source was split into.
    pub chunks: usize,
}

/// The read and copy kernels of the bandwidth yardstick.
pub struct CopyBandwidth {
    read: wgpu::ComputePipeline,
    copy: wgpu::ComputePipeline,
}

/// One chunk bound to the read or the copy kernel.
pub struct BandwidthBinding {
    bind_group: wgpu::BindGroup,
    is_copy: bool,
    workgroups: u32,
    _params: GpuBuffer,
}

fn layout(bytes: u64) -> Result<(u32, u32)> {
    if bytes == 0 || !bytes.is_multiple_of(16) {
        return Err(Error::Invalid(format!(
            "bandwidth chunk of {bytes} bytes: must be a non-empty multiple of 16"
        )));
    }
    let vecs = u32::try_from(bytes / 16)
        .map_err(|_| Error::Invalid(format!("bandwidth chunk of {bytes} bytes is too large")))?;
    let workgroups = vecs.div_ceil(WG * VECS_PER_INVOCATION).min(65535);
    Ok((vecs, workgroups))
}

impl CopyBandwidth {
    /// Builds both pipelines.
    pub fn new(ctx: &Context) -> Self {
        CopyBandwidth {
            read: ctx.pipeline(
                "copy_bandwidth.read",
                sources::COPY_BANDWIDTH,
                "read_all",
                &[],
            ),
            copy: ctx.pipeline(
                "copy_bandwidth.copy",
                sources::COPY_BANDWIDTH,
                "copy_all",
                &[],
            ),
        }
    }

    /// Bytes of the per-invocation sums the read kernel writes for a `src_bytes` chunk.
    pub fn sums_bytes(src_bytes: u64) -> Result<u64> {
        let (_, workgroups) = layout(src_bytes)?;
        Ok(u64::from(workgroups * WG) * 16)
    }

    /// Reads all of `src` (a multiple of 16 bytes); `sums` gets [`Self::sums_bytes`] of u32 words
    /// whose wrapping sum is the checksum of `src`.
    pub fn bind_read(
        &self,
        ctx: &Context,
        src: &GpuBuffer,
        sums: &GpuBuffer,
    ) -> Result<BandwidthBinding> {
        if sums.size < Self::sums_bytes(src.size)? {
            return Err(Error::Invalid(format!(
                "bandwidth read: sums buffer needs {} bytes",
                Self::sums_bytes(src.size)?
            )));
        }
        self.bind(ctx, false, src, sums)
    }

    /// Copies all of `src` (a multiple of 16 bytes) into `dst`.
    pub fn bind_copy(
        &self,
        ctx: &Context,
        src: &GpuBuffer,
        dst: &GpuBuffer,
    ) -> Result<BandwidthBinding> {
        if dst.size < src.size {
            return Err(Error::Invalid(format!(
                "bandwidth copy: {}-byte destination for a {}-byte source",
                dst.size, src.size
            )));
        }
        self.bind(ctx, true, src, dst)
    }

    fn bind(
        &self,
        ctx: &Context,
        is_copy: bool,
        src: &GpuBuffer,
        dst: &GpuBuffer,
    ) -> Result<BandwidthBinding> {
        let (vecs, workgroups) = layout(src.size)?;
        let params = Params {
            vecs,
            invocations: workgroups * WG,
            _pad: [0; 2],
        };
        let params = GpuBuffer::from_slice(ctx, "copy_bandwidth", &[params], BufferUsage::Uniform)?;
        let pipeline = if is_copy { &self.copy } else { &self.read };
        let bind_group = ctx.bind_group(
            "copy_bandwidth",
            pipeline,
            &[params.binding(), src.binding(), dst.binding()],
        );
        Ok(BandwidthBinding {
            bind_group,
            is_copy,
            workgroups,
            _params: params,
        })
    }

    /// Runs the kernel `binding` was made for over its chunk once.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>, binding: &BandwidthBinding) {
        pass.set_pipeline(if binding.is_copy {
            &self.copy
        } else {
            &self.read
        });
        pass.set_bind_group(0, &binding.bind_group, &[]);
        pass.dispatch_workgroups(binding.workgroups, 1, 1);
    }
}

/// Read and copy bandwidth over `total_bytes` split into chunks as large as one storage binding,
/// each kernel run `iterations` times over every chunk, timed with the wall clock around submit and wait.
#[cfg(not(target_arch = "wasm32"))]
pub async fn measure(ctx: &Context, total_bytes: u64, iterations: u32) -> Result<BandwidthReport> {
    let chunk = ctx.caps.max_binding_bytes.min(ctx.caps.max_buffer_bytes);
    let start = std::time::Instant::now();
    measure_with_clock(ctx, total_bytes, chunk, iterations, || {
        start.elapsed().as_secs_f64()
    })
    .await
}

/// [`measure`] with chunks of at most `chunk_bytes` and a clock in seconds (`performance.now()` in
/// the browser). Fails if a checksum of the data read, or of the copy, is wrong.
pub async fn measure_with_clock(
    ctx: &Context,
    total_bytes: u64,
    chunk_bytes: u64,
    iterations: u32,
    now: impl Fn() -> f64,
) -> Result<BandwidthReport> {
    let chunk_bytes = (chunk_bytes / 16) * 16;
    if total_bytes == 0 || chunk_bytes == 0 || iterations == 0 {
        return Err(Error::Invalid(format!(
            "bandwidth: {total_bytes} bytes in {chunk_bytes}-byte chunks × {iterations} iterations"
        )));
    }
    let kernel = CopyBandwidth::new(ctx);
    let mut sources = Vec::new();
    let mut expected = Vec::new();
    let mut offset = 0;
    while offset < total_bytes {
        let bytes = chunk_bytes.min(total_bytes - offset).next_multiple_of(16);
        // A distinct pattern per chunk, so reading one chunk twice would fail the checksum.
        let seed = (sources.len() as u32).wrapping_mul(0x9e37_79b9);
        let words: Vec<u32> = (0..(bytes / 4) as u32)
            .map(|i| i.wrapping_mul(0x85eb_ca6b) ^ seed)
            .collect();
        expected.push(checksum(&words));
        sources.push(GpuBuffer::from_slice(
            ctx,
            "bandwidth.src",
            &words,
            BufferUsage::Storage,
        )?);
        offset += bytes;
    }
    let bytes: u64 = sources.iter().map(|s| s.size).sum();
    let mut reads = Vec::new();
    let mut copies = Vec::new();
    let mut checks = Vec::new();
    for src in &sources {
        let sums_bytes = CopyBandwidth::sums_bytes(src.size)?;
        let sums = GpuBuffer::new(ctx, "bandwidth.sums", sums_bytes, BufferUsage::Storage)?;
        let dst = GpuBuffer::new(ctx, "bandwidth.dst", src.size, BufferUsage::Storage)?;
        let dst_sums = GpuBuffer::new(ctx, "bandwidth.sums", sums_bytes, BufferUsage::Storage)?;
        reads.push((kernel.bind_read(ctx, src, &sums)?, sums));
        copies.push(kernel.bind_copy(ctx, src, &dst)?);
        checks.push((kernel.bind_read(ctx, &dst, &dst_sums)?, dst_sums, dst));
    }
    let read_bindings: Vec<&BandwidthBinding> = reads.iter().map(|(b, _)| b).collect();
    let copy_bindings: Vec<&BandwidthBinding> = copies.iter().collect();
    let mut seconds = [0.0; 2];
    for (bindings, seconds) in [read_bindings, copy_bindings].iter().zip(&mut seconds) {
        // One untimed pass first: first-touch allocation and pipeline warm-up are not bandwidth.
        run_repeated(ctx, &kernel, bindings, 1).await?;
        let start = now();
        run_repeated(ctx, &kernel, bindings, iterations).await?;
        *seconds = now() - start;
    }
    run_repeated(
        ctx,
        &kernel,
        &checks.iter().map(|(b, _, _)| b).collect::<Vec<_>>(),
        1,
    )
    .await?;
    for (chunk, expected) in expected.iter().enumerate() {
        for (what, sums) in [("read", &reads[chunk].1), ("copy", &checks[chunk].1)] {
            let got = checksum(&sums.read_vec::<u32>(ctx).await?);
            if got != *expected {
                return Err(Error::Gpu(format!(
                    "{}: bandwidth {what} checksum of chunk {chunk} is {got:#x}, expected {expected:#x}",
                    ctx.adapter_name()
                )));
            }
        }
    }
    let gbps = |bytes: f64, seconds: f64| bytes * f64::from(iterations) / seconds / 1e9;
    Ok(BandwidthReport {
        read_gbps: gbps(bytes as f64, seconds[0]),
        copy_gbps: gbps(2.0 * bytes as f64, seconds[1]),
        bytes,
        chunks: sources.len(),
    })
}

/// Submits `repeat` passes over `bindings` in one command buffer and waits for them.
async fn run_repeated(
    ctx: &Context,
    kernel: &CopyBandwidth,
    bindings: &[&BandwidthBinding],
    repeat: u32,
) -> Result<()> {
    ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for _ in 0..repeat {
            for binding in bindings {
                kernel.dispatch(&mut pass, binding);
            }
        }
    })
    .await
}
