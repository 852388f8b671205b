//! The chat template of a tokenizer_config.json (a string or a list of named templates), then
//! compiled as Jinja.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::format::checkpoint::chat_template_from_tokenizer_config;
use tern::text::chat_template::ChatTemplate;

fuzz_target!(|json: &str| {
    if let Ok(Some(source)) = chat_template_from_tokenizer_config("tokenizer_config.json", json) {
        let _ = ChatTemplate::new(&source);
    }
});
