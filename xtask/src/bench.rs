//! `cargo xtask bench`: builds `tern` in release, runs `tern bench --json` on a synthetic shape and
//! writes the report to target/bench/<shape>-<adapter>.json (method and figures: BENCHMARKS.md).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// `2b4t`, `tiny` or `hidden,layers,heads,kv_heads,intermediate,vocab`.
    #[arg(long, default_value = "2b4t")]
    shape: String,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Few by default: a 2B-4T decode step takes seconds on a software adapter.
    #[arg(long, default_value_t = 8)]
    gen_tokens: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (prompt, generated) = (args.prompt_tokens.to_string(), args.gen_tokens.to_string());
    let bench = [
        "bench",
        "--shape",
        &args.shape,
        "--prompt-tokens",
        &prompt,
        "--gen-tokens",
        &generated,
        "--json",
    ];
    eprintln!("+ cargo run --release -p tern-cli -- {}", bench.join(" "));
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["run", "--quiet", "--release", "-p", "tern-cli", "--"])
        .args(bench)
        .output()
        .context("running tern bench")?;
    if !output.status.success() {
        bail!(
            "tern bench failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("tern bench printed no JSON object")?;
    let adapter = report["adapter"]
        .as_str()
        .unwrap_or("unknown")
        .to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let shape: String = args.shape.replace(',', "x");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{shape}-{adapter}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("wrote {}", path.display());
    Ok(())
}
