//! A Hugging Face config.json.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::format::config::ModelConfig;

fuzz_target!(|json: &str| {
    let _ = ModelConfig::from_hf_json("config.json", json);
});
