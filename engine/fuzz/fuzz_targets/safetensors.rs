//! A safetensors file: the header length, the JSON header and every tensor's byte range, read from
//! memory as the native and browser loaders read them. Any input must give `Ok` or an `Err`, never
//! a panic, an abort or an allocation sized by an unchecked number.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::format::safetensors::read_header;
use tern::format::source::{complete_now, read_range, BytesSource};

fuzz_target!(|data: &[u8]| {
    let source = BytesSource::new("fuzz.safetensors", data.to_vec());
    if let Ok(header) = complete_now("fuzz", read_header(&source)) {
        for tensor in &header.tensors {
            complete_now("fuzz", read_range(&source, tensor.offset, tensor.len))
                .expect("a validated tensor range lies inside the file");
        }
    }
});
