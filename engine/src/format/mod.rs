//! Checkpoint readers: safetensors (single and sharded), GGUF, Hugging Face config files.
//!
//! Header parsers take bytes plus the file length and never touch files, so the browser can feed them
//! fetched ranges; [`source::TensorSource`] abstracts where tensor bytes come from.

/// Said of every range that runs past the end of a file: the usual cause is an interrupted copy.
pub const INCOMPLETE: &str = "the file is incomplete or damaged: re-download it";

pub mod checkpoint;
pub mod config;
pub mod discovery;
pub mod gguf;
mod resolve;
pub mod safetensors;
pub mod source;
mod tensors;
