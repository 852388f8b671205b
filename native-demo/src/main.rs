//! `tern`: chat with, run and inspect ternary (BitNet b1.58) LLMs on the GPU.

mod bench;
mod compare;
mod energy;
mod generate;
mod info;
mod load;
mod logits;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Ternary (BitNet b1.58) LLM inference on WebGPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat interactively (streaming, chat template applied; /help lists the commands, Ctrl-C stops a reply).
    Chat(generate::ChatArgs),
    /// Generate once from a prompt (or token ids) and stream the result to stdout.
    Run(generate::RunArgs),
    /// Teacher-forced logits of every position, written to a safetensors file.
    Logits(logits::LogitsArgs),
    /// Perplexity of a text file.
    Perplexity(logits::PerplexityArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat and text completions, SSE streaming).
    Serve(serve::ServeArgs),
    /// Prefill/decode throughput, memory and bandwidth of a model or a synthetic shape.
    Bench(bench::BenchArgs),
    /// List every GPU adapter with its limits and features, and the one Tern would pick.
    Info,
    /// Download a Hugging Face model into the HF cache (resuming) and print its local path.
    Pull {
        /// A repo id such as microsoft/bitnet-b1.58-2B-4T, or owner/name/file.gguf.
        model: String,
    },
}

fn main() -> anyhow::Result<()> {
    // wgpu's backends log every adapter they fail to open (e.g. EGL without a display) as errors;
    // Tern reports what matters itself. RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,wgpu_hal=off,wgpu_core=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Chat(args) => generate::chat(&args),
        Command::Run(args) => generate::run(&args),
        Command::Logits(args) => logits::logits(&args),
        Command::Perplexity(args) => logits::perplexity(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Info => info::run(),
        Command::Pull { model } => {
            println!("{}", tern::hub::resolve(&model, true)?.display());
            Ok(())
        }
    }
}
