//! `cargo xtask <command>`: project automation (test, fixtures).

use clap::{Parser, Subcommand};

mod bench;
mod fixtures;
mod gguf;
mod gpu_check;
mod test;
mod wasm;
mod web;

#[derive(Parser)]
#[command(name = "xtask", about = "Tern project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything CI runs: fmt, clippy, the test suite on every adapter, the wasm build.
    Test(test::Args),
    /// Run `tern bench --json` (release) on a synthetic shape; the report goes to target/bench/.
    Bench(bench::Args),
    /// Write the deterministic random-weight test checkpoints (HF safetensors + GGUF).
    Fixtures(fixtures::Args),
    /// Convert a model in the 2B-4T packed layout (HF safetensors) to a bitnet.cpp I2_S GGUF.
    Gguf(gguf::Args),
    /// On a machine with a real GPU: release build, kernel and model tests on its adapter (native
    /// and portable kernels), the 2B-4T and batching benches, one report in target/bench/.
    GpuCheck(gpu_check::Args),
    /// Build the browser package web/pkg (tern.js, .wasm, .d.ts, package.json).
    Wasm(wasm::Args),
    /// Build the browser package and serve the chat page and local models on 127.0.0.1.
    Web(web::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fixtures(args) => fixtures::run(&args),
        Command::Gguf(args) => gguf::run(&args),
        Command::GpuCheck(args) => gpu_check::run(&args),
        Command::Wasm(args) => wasm::run(&args),
        Command::Web(args) => web::run(&args),
    }
}
