//! `tern logits` (teacher-forced logits to a safetensors file) and `tern perplexity`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use safetensors::{tensor::TensorView, Dtype};
use tern::generate::log_softmax_at;

use crate::load::{session, ModelArgs};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// All tokens as one batch.
    Prefill,
    /// One token at a time through the decode path and the KV cache.
    Decode,
}

#[derive(clap::Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// Output file: one f32 tensor `logits` of shape [T, vocab].
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Prefill)]
    mode: Mode,
}

pub fn logits(args: &LogitsArgs) -> anyhow::Result<()> {
    let mut session = session(&args.model)?;
    let vocab = session.model().config().vocab_size;
    let logits = pollster::block_on(session.logits(&args.ids, args.mode == Mode::Decode))?;
    let bytes: &[u8] = bytemuck::cast_slice(&logits);
    let view = TensorView::new(Dtype::F32, vec![args.ids.len(), vocab], bytes)?;
    let tensors: HashMap<String, TensorView<'_>> = [("logits".to_string(), view)].into();
    safetensors::serialize_to_file(tensors, None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote logits [{}, {vocab}] to {}",
        args.ids.len(),
        args.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    // `--context` is the evaluation window here: tokens per window (non-overlapping; each starts
    // from an empty cache), 512 unless given.
    #[command(flatten)]
    model: ModelArgs,
    /// A UTF-8 text file.
    #[arg(long)]
    file: PathBuf,
}

/// Perplexity = exp(mean negative log-likelihood of each token given the ones before it in its window).
pub fn perplexity(args: &PerplexityArgs) -> anyhow::Result<()> {
    let mut model = args.model.clone();
    let window = *model.context.get_or_insert(512);
    if window < 2 {
        bail!("--context must be at least 2");
    }
    // The file first: a wrong path fails before a model is loaded.
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut session = session(&model)?;
    let ids = session.model().tokenizer().encode(&text, true)?;
    if ids.len() < 2 {
        bail!("{}: fewer than two tokens", args.file.display());
    }
    let vocab = session.model().config().vocab_size;
    let window = session.max_context();
    let (mut nll, mut count) = (0f64, 0usize);
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        let logits = pollster::block_on(session.logits(chunk, false))?;
        for (row, &next) in logits.chunks_exact(vocab).zip(&chunk[1..]) {
            nll -= log_softmax_at(row, next as usize);
            count += 1;
        }
        eprint!(
            "\r{count} tokens, perplexity {:.4}",
            (nll / count as f64).exp()
        );
    }
    eprintln!();
    println!(
        "perplexity {:.4} over {count} tokens (window {window})",
        (nll / count as f64).exp()
    );
    Ok(())
}
