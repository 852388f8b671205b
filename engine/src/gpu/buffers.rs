use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Context;
use crate::{Error, Result};

/// What a buffer is for; decides its wgpu usage flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferUsage {
    /// Read and written by kernels, uploaded to and read back.
    Storage,
    /// Small parameter blocks written before a submit.
    Uniform,
}

/// A GPU buffer with its size in bytes. Sizes are rounded up to 4 bytes as WebGPU requires. Its
/// bytes count in [`Context::live_buffer_bytes`] until it is dropped.
pub struct GpuBuffer {
    /// The wgpu buffer itself.
    pub buffer: wgpu::Buffer,
    /// Size in bytes after rounding (at least 4, a multiple of 4).
    pub size: u64,
    live_bytes: Arc<AtomicU64>,
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.live_bytes.fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// The smallest buffer made on the device: one `vec4<f32>`.
const MIN_DEVICE_BYTES: u64 = 16;

impl GpuBuffer {
    /// An uninitialised buffer of `size` bytes (rounded up); fails if it exceeds the adapter's
    /// largest buffer.
    pub fn new(ctx: &Context, label: &str, size: u64, usage: BufferUsage) -> Result<Self> {
        let size = size.max(4).next_multiple_of(4);
        if size > ctx.caps.max_buffer_bytes {
            return Err(Error::Gpu(format!(
                "{label}: {size} bytes exceed the adapter's largest buffer ({} bytes)",
                ctx.caps.max_buffer_bytes
            )));
        }
        let usage = match usage {
            BufferUsage::Storage => {
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST
            }
            BufferUsage::Uniform => wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        };
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            // At least one vec4: a kernel may also view an f32 buffer as `array<vec4<f32>>` (the
            // dense matvec's aligned path), and WebGPU refuses to bind fewer bytes than one element.
            // `size` stays what was asked; reads and copies use it.
            size: size.max(MIN_DEVICE_BYTES),
            usage,
            mapped_at_creation: false,
        });
        ctx.live_bytes.fetch_add(size, Ordering::Relaxed);
        COUNTED.with(|counted| counted.set(counted.get().map(|bytes| bytes + size)));
        Ok(GpuBuffer {
            buffer,
            size,
            live_bytes: ctx.live_bytes.clone(),
        })
    }

    /// A buffer holding `data` (padded with zeros to 4 bytes).
    pub fn from_bytes(ctx: &Context, label: &str, data: &[u8], usage: BufferUsage) -> Result<Self> {
        let buffer = Self::new(ctx, label, data.len() as u64, usage)?;
        buffer.write(ctx, 0, data);
        Ok(buffer)
    }

    /// A buffer holding `data`'s bytes (padded with zeros to 4 bytes).
    pub fn from_slice<T: bytemuck::Pod>(
        ctx: &Context,
        label: &str,
        data: &[T],
        usage: BufferUsage,
    ) -> Result<Self> {
        Self::from_bytes(ctx, label, bytemuck::cast_slice(data), usage)
    }

    /// Queues a write at `offset`; data that is not a multiple of 4 bytes is zero-padded.
    pub fn write(&self, ctx: &Context, offset: u64, data: &[u8]) {
        if data.len().is_multiple_of(4) {
            ctx.queue.write_buffer(&self.buffer, offset, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            ctx.queue.write_buffer(&self.buffer, offset, &padded);
        }
    }

    /// The whole buffer as a binding.
    pub fn binding(&self) -> wgpu::BufferBinding<'_> {
        self.buffer.as_entire_buffer_binding()
    }

    /// `size` bytes from `offset` as a binding (chunks of tensors larger than the binding limit).
    pub fn slice_binding(&self, offset: u64, size: u64) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.buffer,
            offset,
            size: std::num::NonZeroU64::new(size),
        }
    }

    /// Reads the whole buffer back.
    pub async fn read(&self, ctx: &Context) -> Result<Vec<u8>> {
        read_buffer(ctx, &self.buffer, 0, self.size).await
    }

    /// Reads the whole buffer back as `T`s (including any padding to 4 bytes).
    pub async fn read_vec<T: bytemuck::Pod>(&self, ctx: &Context) -> Result<Vec<T>> {
        let bytes = self.read(ctx).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

thread_local! {
    /// Bytes of buffers created on this thread since the innermost [`AllocationCount`] started.
    static COUNTED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Counts the bytes of the buffers this thread creates from [`AllocationCount::start`] to
/// [`AllocationCount::finish`]: what one object (a session's state) holds, whatever it is made of.
/// Counts nest; one dropped unfinished (an early error) gives its bytes to the enclosing count.
pub struct AllocationCount {
    enclosing: Option<u64>,
}

impl AllocationCount {
    /// Starts counting on this thread, inside any count already running.
    pub fn start() -> Self {
        AllocationCount {
            enclosing: COUNTED.with(|counted| counted.replace(Some(0))),
        }
    }

    /// Bytes created since [`AllocationCount::start`] on this thread.
    pub fn finish(self) -> u64 {
        COUNTED.with(|counted| counted.get().unwrap_or(0))
    }
}

impl Drop for AllocationCount {
    fn drop(&mut self) {
        COUNTED.with(|counted| {
            let inner = counted.get().unwrap_or(0);
            counted.set(self.enclosing.map(|outer| outer + inner));
        });
    }
}

/// Copies `size` bytes at `offset` of `buffer` to the host (through a staging buffer).
pub async fn read_buffer(
    ctx: &Context,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u8>> {
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    ctx.queue.submit([encoder.finish()]);
    let (sender, receiver) = futures_channel::oneshot::channel();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
    ctx.poll_blocking()?;
    receiver
        .await
        .map_err(|_| Error::Gpu("device lost during readback".into()))?
        .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
    let data = staging
        .slice(..)
        .get_mapped_range()
        .map_err(|e| Error::Gpu(format!("readback mapping failed: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(data)
}
