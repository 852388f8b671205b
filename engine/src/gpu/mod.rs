//! The GPU context: instance, adapter choice, device with the adapter's own limits, optional
//! features, and the helpers every kernel wrapper uses (pipelines, buffers, readback).

mod buffers;
mod context;
mod timer;
mod upload;

pub use buffers::{read_buffer, AllocationCount, BufferUsage, GpuBuffer};
pub use context::{AdapterReport, Capabilities, Context, ContextOptions};
pub use timer::{KernelProfile, KernelTime, KernelTiming, StepRecorder};
pub use upload::Uploader;
