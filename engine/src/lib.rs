//! Tern: ternary (BitNet b1.58) LLM inference on WebGPU, natively and in the browser.
//!
//! # Embedding
//!
//! Three calls: open a [`Model`] (a model directory, a `.gguf` file or a Hugging Face repo id,
//! downloaded on first use), open a [`Session`] on it (one conversation: its own KV cache, the
//! model's weights shared), chat:
//!
//! ```no_run
//! # fn main() -> tern::Result<()> {
//! let model = tern::Model::open("microsoft/bitnet-b1.58-2B-4T")?;
//! let mut session = model.session(tern::SessionOptions::default())?;
//! let messages = [tern::ChatMessage::new("user", "Hello!")];
//! let options = tern::GenerateOptions::default(); // greedy, up to 256 tokens
//! let reply = session.chat(&messages, &options, |token| print!("{}", token.text))?;
//! println!("\n[{:?} after {} tokens]", reply.stop_reason, reply.ids.len());
//! # Ok(())
//! # }
//! ```
//!
//! [`Session::cancel_handle`] gives a handle that stops the running reply from another thread (a
//! Stop button); [`GenerateOptions::sampling`] sets temperature, top-k/p, min-p, repetition
//! penalty and seed. `engine/examples/generate.rs` runs a session on a background thread as a
//! desktop app would; in the browser, [`Model::load`], [`Model::open_session`] and
//! [`Session::chat_async`] are the same calls without blocking. The C API is the `tern-capi` crate.
//!
//! Many conversations on one GPU (a server, an app with several chats): [`Model::batch`] gives a
//! [`Batch`] that runs up to N requests together — one pass over the weights per step for all of
//! them — admitting new ones between steps ([`Batch::submit`], [`Batch::step`]).
//!
//! # Inside
//!
//! - [`gpu`]: the device context, buffers and kernel pipelines.
//! - `ops`: one wrapper per WGSL kernel, each with a CPU twin in `reference` (both public with the
//!   `internals` feature, for Tern's own tests and benchmarks).
//! - [`format`](mod@format): safetensors, GGUF and Hugging Face config readers.
//! - [`model`]: model configuration, weights on the GPU ([`model::Transformer`]), one sequence's KV
//!   cache and the forward pass ([`model::Sequence`]).
//! - [`text`]: tokenizer and chat template.
//! - [`generate`]: the front door above, sampling and generation.

#![warn(missing_docs)]

pub mod error;
pub mod format;
pub mod generate;
pub mod gpu;
#[cfg(not(target_arch = "wasm32"))]
pub mod hub;
pub mod model;
pub mod text;

// Internals (the `internals` feature): Tern's tests, benchmarks and tools reach the kernels and
// their CPU twins; an app sees only the modules above.
#[cfg(feature = "internals")]
pub mod layout;
#[cfg(not(feature = "internals"))]
pub(crate) mod layout;
#[cfg(feature = "internals")]
pub mod ops;
#[cfg(not(feature = "internals"))]
pub(crate) mod ops;
#[cfg(any(test, feature = "internals"))]
pub mod reference;

pub use error::{Error, Result};
pub use generate::{
    Batch, BatchEvent, BatchOptions, CancelHandle, GenerateOptions, Generation, Model, OpenOptions,
    Penalties, RequestId, SamplingParams, Session, SessionOptions, StopReason, TokenEvent,
    TokenLogprobs,
};
pub use model::KvCacheDtype;
pub use text::chat_template::ChatMessage;
