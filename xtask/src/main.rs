//! `cargo xtask <command>`: project automation (fixtures, and later goldens, wasm, web, bench).

use clap::{Parser, Subcommand};

mod fixtures;

#[derive(Parser)]
#[command(name = "xtask", about = "Tern project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the deterministic random-weight test checkpoints (HF safetensors + GGUF).
    Fixtures(fixtures::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fixtures(args) => fixtures::run(&args),
    }
}
