//! Loading a model for any command: resolve the argument (directory, .gguf, or Hugging Face repo id,
//! downloaded on first use), pick the GPU, upload with a progress bar.

use std::sync::Arc;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use tern::format::checkpoint::Checkpoint;
use tern::generate::Session;
use tern::gpu::{Context, ContextOptions};
use tern::model::ModelOptions;

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A model directory (config.json + safetensors + tokenizer.json), a .gguf file, or a Hugging Face
    /// repo id such as microsoft/bitnet-b1.58-2B-4T (downloaded into the HF cache on first use).
    #[arg(long, short = 'm')]
    pub model: String,
    /// KV-cache length in tokens (at most the model's max_position_embeddings).
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Tokens per prefill batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
}

pub fn session(args: &ModelArgs) -> anyhow::Result<Session> {
    let path = tern::hub::resolve(&args.model, true)?;
    let checkpoint =
        Checkpoint::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let ctx = Arc::new(pollster::block_on(Context::new(
        &ContextOptions::from_env(),
    ))?);
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {bar:30} {pos}/{len} tensors [{elapsed}] {msg}")
            .expect("valid template"),
    );
    bar.set_message(ctx.adapter_name());
    let options = ModelOptions {
        max_context: args.context,
        max_batch: args.batch,
        ..ModelOptions::default()
    };
    let session = pollster::block_on(Session::load(
        ctx,
        &checkpoint,
        options,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    ))?;
    bar.finish_and_clear();
    Ok(session)
}
