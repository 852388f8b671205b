//! `cargo xtask test`: everything CI checks, in order — formatting, lints, the whole test suite
//! (kernel, model-parity and CLI tests run on every GPU adapter the machine has: lavapipe and, when
//! Chromium's SwiftShader driver is installed, SwiftShader too), and the engine's wasm32 build.

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
