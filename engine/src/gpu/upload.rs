//! Uploads of a model load through reused staging memory. `Queue::write_buffer` stages every write
//! in a fresh allocation; a gigabyte of weights then pays for a gigabyte of new pages (on a CPU
//! adapter, page faults on the same cores that read the file). The uploader's staging belt maps the
//! same chunks again once the GPU has copied them, so a load touches a few chunks of staging memory.
//! In the browser `writeBuffer` already stages efficiently and map callbacks wait for the event
//! loop, so there it writes directly.

use super::{Context, GpuBuffer};
use crate::Result;

/// Staging chunk size: the loader's largest single write (a table block) fits one chunk.
#[cfg(not(target_arch = "wasm32"))]
const CHUNK_BYTES: u64 = 32 << 20;

/// Batches writes into one submission each time [`Uploader::submit`] is called; a write waits
/// for the previous submission's copies, so one submission of staging is in flight at a time
/// (host memory stays bounded) while the caller reads and prepares the next.
pub struct Uploader {
    #[cfg(not(target_arch = "wasm32"))]
    belt: wgpu::util::StagingBelt,
    #[cfg(not(target_arch = "wasm32"))]
    encoder: Option<wgpu::CommandEncoder>,
    #[cfg(not(target_arch = "wasm32"))]
    in_flight: bool,
}

impl Uploader {
    /// An uploader for `ctx`'s device; it allocates staging on first use.
    pub fn new(ctx: &Context) -> Self {
        #[cfg(target_arch = "wasm32")]
        let _ = ctx;
        Uploader {
            #[cfg(not(target_arch = "wasm32"))]
            belt: wgpu::util::StagingBelt::new(ctx.device.clone(), CHUNK_BYTES),
            #[cfg(not(target_arch = "wasm32"))]
            encoder: None,
            #[cfg(not(target_arch = "wasm32"))]
            in_flight: false,
        }
    }

    /// Queues a write of `data` to `target` at `offset` (a multiple of 4); data that is not a
    /// multiple of 4 bytes is zero-padded. It reaches the GPU at the next [`Uploader::submit`].
    pub fn write(
        &mut self,
        ctx: &Context,
        target: &GpuBuffer,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        target.write(ctx, offset, data);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let size = wgpu::BufferSize::new(data.len().next_multiple_of(4) as u64);
            let Some(size) = size.filter(|_| offset.is_multiple_of(4)) else {
                // Nothing to stage, or an offset no copy may start at: the queue's own write
                // (which reports a misaligned offset as a device error instead of panicking).
                target.write(ctx, offset, data);
                return Ok(());
            };
            if std::mem::take(&mut self.in_flight) {
                // The copies done, the belt's chunks are mapped again for this write.
                ctx.poll_blocking()?;
            }
            let encoder = self
                .encoder
                .get_or_insert_with(|| ctx.device.create_command_encoder(&Default::default()));
            let mut staging = self
                .belt
                .write_buffer(encoder, &target.buffer, offset, size);
            let staging = staging.slice(..);
            let (mut body, mut padding) = staging.split_at(data.len());
            body.copy_from_slice(data);
            padding.fill(0);
        }
        Ok(())
    }

    /// Submits the queued writes; their staging chunks return to the belt once the GPU has copied
    /// them (a later [`Context::wait`] lets that happen).
    pub fn submit(&mut self, ctx: &Context) {
        // The browser's queue sends its written bytes on with the next submission.
        #[cfg(target_arch = "wasm32")]
        ctx.queue.submit([]);
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(encoder) = self.encoder.take() {
            self.belt.finish();
            ctx.queue.submit([encoder.finish()]);
            self.belt.recall();
            self.in_flight = true;
        }
    }
}
