//! `cargo xtask test`: everything CI checks, in order — formatting, lints, the whole test suite
//! (kernel, model-parity and CLI tests run on every GPU adapter the machine has: lavapipe and, when
//! Chromium's SwiftShader driver is installed, SwiftShader too), the engine's wasm32 build, and a
//! 2B-4T-shaped checkpoint (all real dimensions, written by `fixtures --full`) loaded and run.

use std::process::Command;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy (quicker local runs).
    #[arg(long)]
    no_lint: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !args.no_lint {
        cargo(&["fmt", "--all", "--", "--check"])?;
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    cargo(&["test", "--workspace"])?;
    cargo(&["check", "-p", "tern", "--target", "wasm32-unknown-unknown"])?;
    crate::fixtures::run(&crate::fixtures::Args::full())?;
    cargo(&["test", "-p", "tern-cli", "--test", "cli", "--", "--ignored"])?;
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
