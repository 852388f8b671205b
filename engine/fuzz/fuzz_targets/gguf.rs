//! A GGUF file: header, metadata, tensor infos, then the model config and the checkpoint built from
//! them (tensor lookup, layout and scale checks), read from memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::format::checkpoint::Checkpoint;
use tern::format::gguf;
use tern::format::source::{complete_now, BytesSource};
use tern::format::config::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let source = BytesSource::new("fuzz.gguf", data.to_vec());
    let Ok(file) = complete_now("fuzz", gguf::read(&source)) else {
        return;
    };
    if ModelConfig::from_gguf("fuzz.gguf", &file).is_ok() {
        let _ = complete_now("fuzz", Checkpoint::from_gguf(Box::new(source), file));
    }
});
