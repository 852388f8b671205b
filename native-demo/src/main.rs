//! `tern`: chat with, run, inspect and benchmark ternary LLMs on the GPU.

mod info;

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
    /// List every GPU adapter with its limits and features, and the one Tern would pick.
    Info,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => info::run(),
    }
}
