//! Tokenizer and chat template.
//!
//! - [`tokenizer`]: `tokenizer.json` or GGUF vocabularies, through the `tokenizers` crate.
//! - [`stream`]: incremental detokenization and stop strings for streamed output.
//! - [`chat_template`]: Hugging Face chat templates, rendered as transformers renders them.

pub mod chat_template;
pub mod stream;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate, RenderedPrompt};
pub use stream::{StopMatcher, TextStreamer};
pub use tokenizer::Tokenizer;
