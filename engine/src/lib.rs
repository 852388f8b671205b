//! Tern: ternary (BitNet b1.58) LLM inference on WebGPU, natively and in the browser.
//!
//! - [`gpu`]: the device context, buffers and kernel pipelines.
//! - [`ops`]: one wrapper per WGSL kernel (`shaders/`), each with a CPU twin in [`reference`].
//! - [`format`]: safetensors, GGUF and Hugging Face config readers.
//! - [`model`]: model configuration, weights on the GPU, KV cache and the forward pass.
//! - [`text`]: tokenizer and chat template.
//! - [`generate`]: sampling and generation sessions.
//!
//! # Embedding
//!
//! Open a checkpoint, pick the GPU, load a [`generate::Session`], then stream a reply; a
//! [`generate::CancelToken`] clone stops it from another thread. `engine/examples/generate.rs` runs
//! this on a background thread as a desktop app would; the C API is the `tern-capi` crate.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use tern::format::checkpoint::Checkpoint;
//! use tern::generate::{CancelToken, GenerateOptions, SamplingParams, Session};
//! use tern::gpu::{Context, ContextOptions};
//! use tern::model::ModelOptions;
//! use tern::text::chat_template::ChatMessage;
//!
//! # fn main() -> tern::Result<()> {
//! // A model directory, a .gguf file or a Hugging Face repo id (downloaded on first use).
//! let path = tern::hub::resolve("microsoft/bitnet-b1.58-2B-4T", true)?;
//! let checkpoint = Checkpoint::open(&path)?;
//! // TERN_BACKEND / TERN_ADAPTER pick an adapter; the default is the best GPU.
//! let ctx = Arc::new(pollster::block_on(Context::new(&ContextOptions::from_env()))?);
//! let mut session = pollster::block_on(Session::load(
//!     ctx,
//!     &checkpoint,
//!     ModelOptions::default(),
//!     &mut |done, total| eprint!("\rloading {done}/{total}"),
//! ))?;
//!
//! let prompt = session.chat_prompt(&[ChatMessage::new("user", "Hello!")])?;
//! let options = GenerateOptions {
//!     max_new_tokens: 128,
//!     sampling: SamplingParams {
//!         temperature: 0.7,
//!         top_p: 0.9,
//!         seed: Some(42),
//!         ..SamplingParams::default()
//!     },
//!     ..GenerateOptions::default()
//! };
//! let cancel = CancelToken::default(); // give a clone to the Stop button
//! let generation = pollster::block_on(session.generate(&prompt, &options, &cancel, |token| {
//!     print!("{}", token.text)
//! }))?;
//! println!("\n[{:?} after {} tokens]", generation.stop_reason, generation.ids.len());
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod format;
pub mod generate;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod layout;
pub mod model;
pub mod ops;
pub mod reference;
pub mod text;

pub use error::{Error, Result};
