//! `cargo xtask test`: everything CI checks, in order — formatting, lints, the whole test suite
//! (kernel, model-parity and CLI tests run on every GPU adapter the machine has: lavapipe and, when
//! Chromium's SwiftShader driver is installed, SwiftShader too), `cargo package -p tern` (the crate
//! as published, built on its own), a 2B-4T-shaped checkpoint (all real dimensions, written by
//! `fixtures --full`) loaded and run, and the browser: the wasm package built, the kernel and
//! model-parity tests run in headless Chromium on its WebGPU adapter, the optimized npm package
//! smoke-tested in a page, and the chat page driven through its UI (needs /usr/bin/chromium,
//! chromedriver, node and npm).

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
    package()?;
    crate::fixtures::run(&crate::fixtures::Args::full())?;
    cargo(&["test", "-p", "tern-cli", "--test", "cli", "--", "--ignored"])?;
    browser(args)
}

/// `cargo package -p tern`: the crate as crates.io would get it — only its own files (nothing
/// outside engine/: the WGSL it embeds lives in engine/shaders/), its metadata complete — unpacked
/// into target/package/ and built there on its own. That build has tern's own feature set and no
/// workspace profile, so the first run compiles tern's dependencies once more (at opt-level 0:
/// about 2 minutes on 2 cores); later runs find them in target/ and take seconds.
fn package() -> anyhow::Result<()> {
    eprintln!(
        "package check: `tern` packages from engine/ alone (src/, shaders/, examples/, README) \
         and the unpacked crate builds"
    );
    // --allow-dirty: local runs with uncommitted edits check the same thing (CI's tree is clean).
    cargo(&["package", "-p", "tern", "--allow-dirty"])
}

fn browser(args: &Args) -> anyhow::Result<()> {
    const WASM: &str = "wasm32-unknown-unknown";
    cargo(&["check", "-p", "tern", "--target", WASM])?;
    if !args.no_lint {
        cargo(&[
            "clippy",
            "-p",
            "tern-web",
            "--all-targets",
            "--target",
            WASM,
            "--",
            "-D",
            "warnings",
        ])?;
    }
    crate::wasm::run(&crate::wasm::Args::default())?;
    std::env::set_var("CHROMEDRIVER", "/usr/bin/chromedriver");
    cargo(&["test", "-p", "tern-web", "--target", WASM])?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    run_command(Command::new("npm").current_dir(root).args([
        "install",
        "--no-save",
        "--no-audit",
        "--no-fund",
        "--prefix",
        "target/npm/playwright",
        "playwright-core",
    ]))?;
    run_command(
        Command::new("node")
            .current_dir(root)
            .arg("web/tests/pkg_smoke.mjs")
            .env("NODE_PATH", "target/npm/playwright/node_modules"),
    )?;
    // The chat page through `xtask web --no-build` (this binary), against the native `tern` that
    // the CLI tests above built.
    run_command(
        Command::new("node")
            .current_dir(root)
            .arg("web/tests/ui.test.mjs")
            .env("NODE_PATH", "target/npm/playwright/node_modules")
            .env("TERN_XTASK", std::env::current_exe()?)
            .env("TERN_BIN", root.join("target/debug/tern")),
    )
}

fn run_command(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run_command(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}
