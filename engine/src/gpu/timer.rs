//! GPU timers: a [`StepRecorder`] records a step's kernels into one command encoder and, on a
//! profiled step, times each kernel — with timestamp queries around a compute pass per kernel where
//! the adapter has `TIMESTAMP_QUERY`, else (natively) by submitting and waiting for each kernel on
//! its own and timing that on the CPU. Times are summed per kernel name into a [`KernelProfile`].

use super::{read_buffer, Context};
use crate::{Error, Result};

/// How a profiled step's kernel times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTiming {
    /// Begin/end-of-pass timestamp queries, one compute pass per kernel: GPU time only.
    GpuTimestamps,
    /// One submit per kernel, waited for and timed on the CPU: includes submit and wait overhead,
    /// so it overstates short kernels. The fallback where the adapter has no timestamp queries.
    CpuSubmit,
}

impl KernelTiming {
    /// Timestamps where the adapter has them, else CPU-timed submits.
    pub fn for_adapter(ctx: &Context) -> Self {
        if ctx.caps.timestamps {
            KernelTiming::GpuTimestamps
        } else {
            KernelTiming::CpuSubmit
        }
    }

    /// The name reports use (`kernel_ms_source`).
    pub fn label(self) -> &'static str {
        match self {
            KernelTiming::GpuTimestamps => "gpu-timestamps",
            KernelTiming::CpuSubmit => "cpu-submit",
        }
    }
}

/// Time spent in one kernel over a profiled step.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The name the kernel was recorded under ([`StepRecorder::kernel`]).
    pub name: &'static str,
    /// Total time over the step's dispatches of it, in milliseconds.
    pub ms: f64,
    /// How many times the step ran it (e.g. once per layer).
    pub dispatches: u32,
}

/// Per-kernel times of one step, in the order each kernel first ran.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelProfile {
    /// How the times were taken.
    pub timing: KernelTiming,
    /// One entry per kernel name.
    pub kernels: Vec<KernelTime>,
}

impl KernelProfile {
    /// Sum of the kernels' times, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.kernels.iter().map(|k| k.ms).sum()
    }

    /// Keeps, per kernel, the smaller time of this profile and `other` (another profile of the same
    /// step): on a shared machine interruptions only add time, so the minimum over a few steps is the
    /// least disturbed figure. Kernels only one profile has are kept as they are.
    pub fn keep_fastest(&mut self, other: &KernelProfile) {
        for theirs in &other.kernels {
            match self.kernels.iter_mut().find(|k| k.name == theirs.name) {
                Some(ours) if theirs.ms < ours.ms => *ours = theirs.clone(),
                Some(_) => {}
                None => self.kernels.push(theirs.clone()),
            }
        }
    }

    fn add(&mut self, name: &'static str, ms: f64) {
        match self.kernels.iter_mut().find(|k| k.name == name) {
            Some(k) => {
                k.ms += ms;
                k.dispatches += 1;
            }
            None => self.kernels.push(KernelTime {
                name,
                ms,
                dispatches: 1,
            }),
        }
    }
}

/// Timestamp pairs one profiled step may record (wgpu's query-set maximum, two per kernel).
const MAX_TIMED_KERNELS: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

enum Mode {
    /// Every kernel in one compute pass, opened on first use (a plain step).
    Plain(Option<Box<wgpu::ComputePass<'static>>>),
    Timestamps {
        queries: wgpu::QuerySet,
        names: Vec<&'static str>,
    },
    CpuSubmit {
        profile: KernelProfile,
    },
}

/// Records a step's kernels in order; see the module docs.
pub struct StepRecorder<'a> {
    ctx: &'a Context,
    encoder: Option<wgpu::CommandEncoder>,
    mode: Mode,
    /// The first failure while timing, reported by `finish`.
    error: Option<Error>,
}

impl<'a> StepRecorder<'a> {
    /// A recorder for a plain step (`timing` None) or a profiled one.
    pub fn new(ctx: &'a Context, timing: Option<KernelTiming>) -> Result<Self> {
        let mode = match timing {
            None => Mode::Plain(None),
            Some(KernelTiming::GpuTimestamps) => {
                if !ctx.caps.timestamps {
                    return Err(Error::Invalid(format!(
                        "{}: no TIMESTAMP_QUERY, so kernels can only be timed by CPU submits",
                        ctx.info.name
                    )));
                }
                Mode::Timestamps {
                    queries: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("kernel timestamps"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2 * MAX_TIMED_KERNELS,
                    }),
                    names: Vec::new(),
                }
            }
            Some(KernelTiming::CpuSubmit) => Mode::CpuSubmit {
                profile: KernelProfile {
                    timing: KernelTiming::CpuSubmit,
                    kernels: Vec::new(),
                },
            },
        };
        Ok(StepRecorder {
            ctx,
            encoder: Some(ctx.device.create_command_encoder(&Default::default())),
            mode,
            error: None,
        })
    }

    fn encoder_mut(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder
            .get_or_insert_with(|| self.ctx.device.create_command_encoder(&Default::default()))
    }

    /// Records one kernel (`record` sets pipelines and dispatches) under `name`.
    pub fn kernel(&mut self, name: &'static str, record: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
        match &mut self.mode {
            Mode::Plain(pass) => {
                let pass = match pass {
                    Some(pass) => pass,
                    None => {
                        let encoder = self.encoder.get_or_insert_with(|| {
                            self.ctx.device.create_command_encoder(&Default::default())
                        });
                        pass.insert(Box::new(
                            encoder
                                .begin_compute_pass(&Default::default())
                                .forget_lifetime(),
                        ))
                    }
                };
                record(pass);
            }
            Mode::Timestamps { queries, names } => {
                let index = names.len() as u32;
                names.push(name);
                if index >= MAX_TIMED_KERNELS {
                    return; // reported by `finish`
                }
                let encoder = self.encoder.get_or_insert_with(|| {
                    self.ctx.device.create_command_encoder(&Default::default())
                });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(name),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: queries,
                        beginning_of_pass_write_index: Some(2 * index),
                        end_of_pass_write_index: Some(2 * index + 1),
                    }),
                });
                record(&mut pass);
            }
            Mode::CpuSubmit { profile } => {
                // Work recorded before (copies, queued writes) goes first, untimed.
                if let Some(pending) = self.encoder.take() {
                    self.ctx.queue.submit([pending.finish()]);
                }
                match cpu_timed_submit(self.ctx, record) {
                    Ok(ms) => profile.add(name, ms),
                    Err(e) => {
                        self.error.get_or_insert(e);
                    }
                }
            }
        }
    }

    /// The encoder, for copies between kernels (closes the open pass of a plain step).
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        if let Mode::Plain(pass) = &mut self.mode {
            pass.take();
        }
        self.encoder_mut()
    }

    /// Submits what was recorded. A plain step returns at once with no profile; a profiled one
    /// waits for the GPU and returns the per-kernel times.
    pub async fn finish(mut self) -> Result<Option<KernelProfile>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        match std::mem::replace(&mut self.mode, Mode::Plain(None)) {
            Mode::Plain(pass) => {
                drop(pass);
                self.submit();
                Ok(None)
            }
            Mode::CpuSubmit { profile } => {
                self.submit();
                self.ctx.wait().await?;
                Ok(Some(profile))
            }
            Mode::Timestamps { queries, names } => {
                let timed = names.len() as u32;
                if timed > MAX_TIMED_KERNELS {
                    self.submit();
                    return Err(Error::Invalid(format!(
                        "a profiled step ran {timed} kernels; timestamps cover at most {MAX_TIMED_KERNELS}"
                    )));
                }
                let bytes = u64::from(2 * timed.max(1)) * wgpu::QUERY_SIZE as u64;
                let resolved = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kernel timestamps"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                if timed > 0 {
                    self.encoder_mut()
                        .resolve_query_set(&queries, 0..2 * timed, &resolved, 0);
                }
                self.submit();
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(
                    &read_buffer(self.ctx, &resolved, 0, bytes).await?,
                );
                let ns_per_tick = f64::from(self.ctx.queue.get_timestamp_period());
                let mut profile = KernelProfile {
                    timing: KernelTiming::GpuTimestamps,
                    kernels: Vec::new(),
                };
                for (name, pair) in names.iter().zip(ticks.chunks_exact(2)) {
                    profile.add(
                        name,
                        pair[1].saturating_sub(pair[0]) as f64 * ns_per_tick / 1e6,
                    );
                }
                Ok(Some(profile))
            }
        }
    }

    fn submit(&mut self) {
        if let Some(encoder) = self.encoder.take() {
            self.ctx.queue.submit([encoder.finish()]);
        }
    }
}

/// Runs one kernel alone and returns the wall time from its submit until the device is idle, in ms.
#[cfg(not(target_arch = "wasm32"))]
fn cpu_timed_submit(ctx: &Context, record: impl FnOnce(&mut wgpu::ComputePass<'_>)) -> Result<f64> {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    record(&mut encoder.begin_compute_pass(&Default::default()));
    // Wait for the work submitted before, so only this kernel is timed.
    ctx.poll_blocking()?;
    let start = std::time::Instant::now();
    ctx.queue.submit([encoder.finish()]);
    ctx.poll_blocking()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

#[cfg(target_arch = "wasm32")]
fn cpu_timed_submit(
    ctx: &Context,
    _record: impl FnOnce(&mut wgpu::ComputePass<'_>),
) -> Result<f64> {
    // The browser cannot wait for one submit synchronously.
    Err(Error::Invalid(format!(
        "{}: kernels cannot be timed by CPU submits in the browser",
        ctx.info.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(kernels: &[(&'static str, f64)]) -> KernelProfile {
        KernelProfile {
            timing: KernelTiming::GpuTimestamps,
            kernels: kernels
                .iter()
                .map(|&(name, ms)| KernelTime {
                    name,
                    ms,
                    dispatches: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn keep_fastest_takes_each_kernels_minimum() {
        let mut first = profile(&[("lm_head", 5.0), ("rope", 1.0)]);
        first.keep_fastest(&profile(&[
            ("lm_head", 3.0),
            ("rope", 2.0),
            ("argmax", 0.5),
        ]));
        assert_eq!(
            first,
            profile(&[("lm_head", 3.0), ("rope", 1.0), ("argmax", 0.5)])
        );
        assert_eq!(first.total_ms(), 4.5);
    }

    #[test]
    fn add_sums_dispatches_by_name() {
        let mut p = profile(&[]);
        p.add("matvec_o", 1.5);
        p.add("rope", 0.25);
        p.add("matvec_o", 2.0);
        assert_eq!(p.kernels.len(), 2);
        assert_eq!((p.kernels[0].ms, p.kernels[0].dispatches), (3.5, 2));
    }
}
