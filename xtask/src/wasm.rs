//! `cargo xtask wasm`: builds web/ (crate `tern-web`) for wasm32 into the npm package web/pkg/:
//! `tern.js` (ES module), `tern_bg.wasm`, `tern.d.ts` and `package.json`, optimized with wasm-opt
//! from npm's `binaryen` (never Debian's: its wasm-opt 108 corrupts wasm-bindgen 0.2.130 output).
//! The wasm is read from cargo's target directory as cargo resolves it (`CARGO_TARGET_DIR`,
//! `build.target-dir` or `target/`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Must equal the `wasm-bindgen` version pinned in web/Cargo.toml.
const WASM_BINDGEN_VERSION: &str = "0.2.130";
const BINARYEN_VERSION: &str = "132.0.0";

#[derive(clap::Args, Default)]
pub struct Args {
    /// Skip wasm-opt (faster builds while developing).
    #[arg(long)]
    pub no_opt: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = workspace_root();
    ensure_wasm_bindgen()?;
    run_command(Command::new(cargo()).args([
        "build",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "tern-web",
    ]))?;
    let built = target_dir()?.join("wasm32-unknown-unknown/release/tern_web.wasm");
    let pkg = root.join("web/pkg");
    run_command(
        Command::new("wasm-bindgen")
            .args(["--target", "web", "--out-name", "tern", "--out-dir"])
            .arg(&pkg)
            .arg(&built),
    )?;
    let wasm = pkg.join("tern_bg.wasm");
    if args.no_opt {
        eprintln!("wasm-opt skipped (--no-opt)");
    } else if let Some(wasm_opt) = npm_wasm_opt(&root) {
        run_command(
            Command::new(wasm_opt)
                // The features rustc enables by default for wasm32-unknown-unknown.
                .args([
                    "-Os",
                    "--enable-bulk-memory",
                    "--enable-nontrapping-float-to-int",
                    "--enable-sign-ext",
                    "--enable-mutable-globals",
                    "--enable-reference-types",
                    "--enable-multivalue",
                ])
                .arg(&wasm)
                .arg("-o")
                .arg(&wasm),
        )?;
    } else {
        eprintln!(
            "warning: npm's binaryen is not installed and could not be installed: web/pkg is not \
             optimized (npm install --prefix target/npm/binaryen binaryen@{BINARYEN_VERSION})"
        );
    }
    fs::write(pkg.join("package.json"), package_json())?;
    let size = fs::metadata(&wasm)?.len();
    println!(
        "web/pkg: tern.js, tern.d.ts, tern_bg.wasm ({:.2} MB)",
        size as f64 / 1e6
    );
    Ok(())
}

fn package_json() -> String {
    let json = serde_json::json!({
        "name": "tern",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Ternary (BitNet b1.58) LLM inference on WebGPU",
        "license": "MIT OR Apache-2.0",
        "type": "module",
        "main": "tern.js",
        "module": "tern.js",
        "types": "tern.d.ts",
        "files": ["tern.js", "tern.d.ts", "tern_bg.wasm", "tern_bg.wasm.d.ts"],
        "sideEffects": ["./snippets/*"],
    });
    serde_json::to_string_pretty(&json).expect("JSON") + "\n"
}

/// Installs wasm-bindgen-cli unless the one on PATH already has the pinned version.
fn ensure_wasm_bindgen() -> anyhow::Result<()> {
    let installed = Command::new("wasm-bindgen")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if installed.as_deref() == Some(&format!("wasm-bindgen {WASM_BINDGEN_VERSION}")) {
        return Ok(());
    }
    let found = match installed.as_deref() {
        Some(version) if !version.is_empty() => format!("PATH has {version}"),
        _ => "none is on PATH".to_string(),
    };
    eprintln!(
        "installing wasm-bindgen-cli {WASM_BINDGEN_VERSION}, the version web/Cargo.toml pins \
         ({found}): `cargo install wasm-bindgen-cli --version {WASM_BINDGEN_VERSION}` into \
         cargo's bin directory, once, a few minutes"
    );
    // Not --locked: a dependency in its lock file is no longer served.
    run_command(Command::new(cargo()).args([
        "install",
        "wasm-bindgen-cli",
        "--version",
        WASM_BINDGEN_VERSION,
    ]))
}

/// wasm-opt from npm's `binaryen` package in target/npm/binaryen (a prefix of its own, so npm does
/// not prune other tools' packages), installing it there when missing.
fn npm_wasm_opt(root: &Path) -> Option<PathBuf> {
    let npm_dir = root.join("target/npm/binaryen");
    let wasm_opt = npm_dir.join("node_modules/.bin/wasm-opt");
    if wasm_opt.is_file() {
        return Some(wasm_opt);
    }
    fs::create_dir_all(&npm_dir).ok()?;
    let status = Command::new("npm")
        .args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
        ])
        .arg(&npm_dir)
        .arg(format!("binaryen@{BINARYEN_VERSION}"))
        .status()
        .ok()?;
    (status.success() && wasm_opt.is_file()).then_some(wasm_opt)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Cargo's target directory as cargo resolves it (`CARGO_TARGET_DIR`, `build.target-dir` in a
/// config file, or the workspace's `target/`), from `cargo metadata`.
fn target_dir() -> anyhow::Result<PathBuf> {
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata's output")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata names no target_directory")
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

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}
