//! Tern: ternary (BitNet b1.58) LLM inference on WebGPU, natively and in the browser.
//!
//! - [`gpu`]: the device context, buffers and kernel pipelines.
//! - [`ops`]: one wrapper per WGSL kernel (`shaders/`), each with a CPU twin in [`reference`].
//! - [`format`]: safetensors, GGUF and Hugging Face config readers.
//! - [`model`]: model configuration, weights on the GPU, KV cache and the forward pass.
//! - [`text`]: tokenizer and chat template.
//! - [`generate`]: sampling and generation sessions.

pub mod error;
pub mod format;
pub mod generate;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod model;
pub mod ops;
pub mod reference;
pub mod text;

pub use error::{Error, Result};
