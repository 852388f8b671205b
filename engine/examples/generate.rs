//! Embedding Tern in a desktop app: load a model, stream a chat reply to the UI, cancel on demand.
//!
//!     cargo run -p tern --example generate -- tests/fixtures/bitnet-2b4t "Hello"
//!
//! The model argument is a directory (config.json + safetensors + tokenizer.json), a .gguf file or
//! a Hugging Face repo id. Generation runs on its own thread, as it would behind a UI: tokens reach
//! the UI thread over a channel, and the session's cancel handle (here fired by a timer standing in
//! for a Stop button) ends the reply early.

use std::sync::mpsc;
use std::time::Duration;

use tern::{
    CancelHandle, ChatMessage, GenerateOptions, Generation, Model, OpenOptions, SamplingParams,
    SessionOptions,
};

/// What the generation thread tells the UI.
enum Update {
    Loading {
        done: usize,
        total: usize,
    },
    /// The session is open; its handle is the Stop button's.
    Ready {
        adapter: String,
        stop: CancelHandle,
    },
    Text(String),
    Finished(tern::Result<Generation>),
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(message)) = (args.next(), args.next()) else {
        eprintln!("usage: generate <model dir | .gguf | repo id> <message>");
        std::process::exit(2);
    };

    let (updates, ui) = mpsc::channel();
    std::thread::spawn(move || {
        let result = reply(&model, &message, &updates);
        let _ = updates.send(Update::Finished(result));
    });

    for update in ui {
        match update {
            Update::Loading { done, total } => eprint!("\rloading {done}/{total} tensors"),
            Update::Ready { adapter, stop } => {
                eprintln!(" on {adapter}");
                // Stands in for the user pressing Stop.
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(60));
                    stop.cancel();
                });
            }
            Update::Text(text) => print!("{text}"),
            Update::Finished(Ok(generation)) => {
                println!();
                eprintln!(
                    "[{} tokens, stop: {:?}]",
                    generation.ids.len(),
                    generation.stop_reason
                );
                return;
            }
            Update::Finished(Err(error)) => {
                eprintln!("\nerror: {error}");
                std::process::exit(1);
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}

/// Loads `model` and streams the assistant's reply to `message` as `Update`s.
fn reply(model: &str, message: &str, updates: &mpsc::Sender<Update>) -> tern::Result<Generation> {
    let model = Model::open_with(
        model,
        OpenOptions {
            progress: Some(&mut |done, total| {
                let _ = updates.send(Update::Loading { done, total });
            }),
            ..OpenOptions::default()
        },
    )?;
    let mut session = model.session(SessionOptions {
        max_context: 2048,
        max_batch: 128,
        ..SessionOptions::default()
    })?;
    let stop = session.cancel_handle();
    let adapter = model.transformer().context().adapter_name();
    let _ = updates.send(Update::Ready {
        adapter,
        stop: stop.clone(),
    });

    let options = GenerateOptions {
        max_new_tokens: 128,
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            ..SamplingParams::default()
        },
        ..GenerateOptions::default()
    };
    let messages = [ChatMessage::new("user", message)];
    session.chat(&messages, &options, |token| {
        // A UI that has gone away stops the generation too.
        if updates.send(Update::Text(token.text.to_string())).is_err() {
            stop.cancel();
        }
    })
}
