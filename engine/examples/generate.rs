//! Embedding Tern in a desktop app: load a model, stream a chat reply to the UI, cancel on demand.
//!
//!     cargo run -p tern --example generate -- tests/fixtures/bitnet-2b4t "Hello"
//!
//! The model argument is a directory (config.json + safetensors + tokenizer.json), a .gguf file or
//! a Hugging Face repo id. Generation runs on its own thread, as it would behind a UI: tokens reach
//! the UI thread over a channel, and a `CancelToken` (here fired by a timer standing in for a Stop
//! button) ends the reply early.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tern::format::checkpoint::Checkpoint;
use tern::generate::{CancelToken, GenerateOptions, SamplingParams, Session};
use tern::gpu::{Context, ContextOptions};
use tern::model::ModelOptions;
use tern::text::chat_template::ChatMessage;

/// What the generation thread tells the UI.
enum Update {
    Loading { done: usize, total: usize },
    Ready { adapter: String },
    Text(String),
    Finished(tern::Result<tern::generate::Generation>),
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(message)) = (args.next(), args.next()) else {
        eprintln!("usage: generate <model dir | .gguf | repo id> <message>");
        std::process::exit(2);
    };

    let cancel = CancelToken::default();
    let (updates, ui) = mpsc::channel();
    let generation_cancel = cancel.clone();
    std::thread::spawn(move || {
        let result = reply(&model, &message, &generation_cancel, &updates);
        let _ = updates.send(Update::Finished(result));
    });
    // Stands in for the user pressing Stop.
    let stop_button = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        stop_button.cancel();
    });

    for update in ui {
        match update {
            Update::Loading { done, total } => eprint!("\rloading {done}/{total} tensors"),
            Update::Ready { adapter } => eprintln!(" on {adapter}"),
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
fn reply(
    model: &str,
    message: &str,
    cancel: &CancelToken,
    updates: &mpsc::Sender<Update>,
) -> tern::Result<tern::generate::Generation> {
    let path = tern::hub::resolve(model, true)?;
    let checkpoint = Checkpoint::open(&path)?;
    let ctx = Arc::new(pollster::block_on(Context::new(
        &ContextOptions::from_env(),
    ))?);
    let options = ModelOptions {
        max_context: 2048,
        max_batch: 128,
        ..ModelOptions::default()
    };
    let adapter = ctx.adapter_name();
    let mut session = pollster::block_on(Session::load(
        ctx,
        &checkpoint,
        options,
        &mut |done, total| {
            let _ = updates.send(Update::Loading { done, total });
        },
    ))?;
    let _ = updates.send(Update::Ready { adapter });

    let prompt = session.chat_prompt(&[ChatMessage::new("user", message)])?;
    let options = GenerateOptions {
        max_new_tokens: 128,
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            ..SamplingParams::default()
        },
        ..GenerateOptions::default()
    };
    pollster::block_on(session.generate(&prompt, &options, cancel, |token| {
        // A UI that has gone away stops the generation too.
        if updates.send(Update::Text(token.text.to_string())).is_err() {
            cancel.cancel();
        }
    }))
}
