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

#[cfg(test)]
mod tests {
    /// Sessions move between threads (the native server); so must everything they hold.
    #[test]
    fn text_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Tokenizer>();
        check::<super::TextStreamer>();
        check::<super::ChatTemplate>();
        check::<crate::generate::sampling::Sampler>();
    }
}
