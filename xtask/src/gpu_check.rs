//! `cargo xtask gpu-check`: everything a machine with a real GPU can tell us, in one run and one
//! report. It builds in release, then on the chosen adapter runs the kernel tests (every kernel
//! against its CPU twin), model parity, the batching and adapter-limit tests — once with the
//! adapter's own features (subgroup kernels where it has subgroups) and once portable
//! (`TERN_PORTABLE=1`: the device is created without subgroups and `shader-f16`, as a browser
//! without them) — then `tern bench --shape 2b4t --compare dense`, the same bench portable (the
//! subgroup kernels' gain), and the continuous-batching bench. Every step is timed; the report,
//! `target/bench/gpu-check-<adapter>.json`, holds each step's outcome and test counts, both benches'
//! JSON and the adapter listing. A failed step is recorded and the run goes on; the command fails at
//! the end if any step did.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::bench::{run_tern, slug, write};

#[derive(clap::Args)]
pub struct Args {
    /// Case-insensitive part of the adapter's name (as `tern info` lists it); default: the adapter
    /// the engine selects (a real GPU before a CPU rasterizer).
    #[arg(long)]
    adapter: Option<String>,
    /// Streams for the batching bench.
    #[arg(long, default_value = "1,2,4,8,16")]
    concurrent: String,
}

/// The integration tests (package tern-tests) that run on the adapter, besides every `kernel_*`.
const MODEL_TESTS: [&str; 5] = [
    "model_parity",
    "model_layer0",
    "model_dense",
    "batch",
    "adapter_limits",
];

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    let started = Instant::now();
    let mut steps = Vec::new();
    let build = step(
        &mut steps,
        "build (release)",
        cargo(root, &["build", "--release", "-p", "tern-cli"], &[]),
    );
    let tests = test_names(root)?;
    let mut test_args = vec!["test", "--release", "-p", "tern-tests"];
    for name in &tests {
        test_args.extend(["--test", name.as_str()]);
    }
    step(
        &mut steps,
        "build tests (release)",
        cargo(root, &[&test_args[..], &["--no-run"]].concat(), &[]),
    );
    if !build {
        bail!("the release build failed: {}", steps[0]["output_tail"]);
    }

    let listing = tern_output(root, &["info"])?;
    let adapter = match &args.adapter {
        Some(name) => name.clone(),
        None => selected_adapter(&listing)?,
    };
    eprintln!("gpu-check on {adapter}");
    let on_adapter = [("TERN_ADAPTER", adapter.as_str())];
    let portable = [("TERN_ADAPTER", adapter.as_str()), ("TERN_PORTABLE", "1")];

    for (variant, env) in [("native", &on_adapter[..]), ("portable", &portable[..])] {
        step(
            &mut steps,
            &format!("kernel and model tests ({variant})"),
            cargo(root, &test_args, env),
        );
    }
    let bench = [
        "bench",
        "--shape",
        "2b4t",
        "--prompt-tokens",
        "128",
        "--gen-tokens",
        "32",
        "--compare",
        "dense",
        "--json",
    ];
    let native_bench = bench_step(&mut steps, "bench 2b4t vs dense", root, &bench, &on_adapter);
    let portable_bench = bench_step(
        &mut steps,
        "bench 2b4t vs dense (portable)",
        root,
        &bench,
        &portable,
    );
    let concurrent = [
        "bench",
        "--shape",
        "2b4t",
        "--prompt-tokens",
        "128",
        "--gen-tokens",
        "32",
        "--concurrent",
        &args.concurrent,
        "--json",
    ];
    let batching = bench_step(&mut steps, "bench batching", root, &concurrent, &on_adapter);

    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| s["ok"] != true)
        .filter_map(|s| s["step"].as_str())
        .collect();
    let report = json!({
        "adapter": adapter,
        "adapters": listing,
        "commit": git_commit(root),
        "seconds": started.elapsed().as_secs_f64(),
        "steps": steps,
        "bench": native_bench,
        "bench_portable": portable_bench,
        "batching": batching,
    });
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("gpu-check-{}.json", slug(&adapter)));
    write(&path, &(serde_json::to_string_pretty(&report)? + "\n"))?;
    eprintln!(
        "gpu-check: {} steps in {:.0} s, report {}",
        report["steps"].as_array().map_or(0, Vec::len),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    if !failed.is_empty() {
        bail!("gpu-check: failed steps: {}", failed.join(", "));
    }
    Ok(())
}

/// The outcome of one command: whether it succeeded, how long it took, the end of its output.
struct Outcome {
    ok: bool,
    seconds: f64,
    output: String,
}

/// Records `outcome` as step `name` (with the tests' pass/fail counts when it ran tests) and
/// returns whether it succeeded.
fn step(steps: &mut Vec<Value>, name: &str, outcome: Outcome) -> bool {
    let (passed, failed) = test_counts(&outcome.output);
    eprintln!(
        "{name}: {} in {:.1} s{}",
        if outcome.ok { "ok" } else { "FAILED" },
        outcome.seconds,
        if passed + failed > 0 {
            format!(" ({passed} tests passed, {failed} failed)")
        } else {
            String::new()
        }
    );
    steps.push(json!({
        "step": name,
        "ok": outcome.ok,
        "seconds": outcome.seconds,
        "tests_passed": passed,
        "tests_failed": failed,
        "output_tail": tail(&outcome.output, 4000),
    }));
    outcome.ok
}

/// Runs `tern <args>` (release) as a step and returns its JSON report (null if it failed).
fn bench_step(
    steps: &mut Vec<Value>,
    name: &str,
    root: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Value {
    let started = Instant::now();
    let result = run_tern(root, args, env);
    let seconds = started.elapsed().as_secs_f64();
    let (outcome, report) = match result {
        Ok(report) => (
            Outcome {
                ok: true,
                seconds,
                output: String::new(),
            },
            report,
        ),
        Err(e) => (
            Outcome {
                ok: false,
                seconds,
                output: format!("{e:#}"),
            },
            Value::Null,
        ),
    };
    step(steps, name, outcome);
    report
}

fn cargo(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ {} cargo {}", env_prefix(env), args.join(" "));
    let started = Instant::now();
    let output = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output();
    let seconds = started.elapsed().as_secs_f64();
    match output {
        Ok(output) => Outcome {
            ok: output.status.success(),
            seconds,
            output: String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        },
        Err(e) => Outcome {
            ok: false,
            seconds,
            output: format!("cannot run cargo: {e}"),
        },
    }
}

fn env_prefix(env: &[(&str, &str)]) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `tern <args>` (release build) and its standard output.
fn tern_output(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let outcome = cargo(
        root,
        &[
            &["run", "--quiet", "--release", "-p", "tern-cli", "--"],
            args,
        ]
        .concat(),
        &[],
    );
    if !outcome.ok {
        bail!(
            "tern {} failed:\n{}",
            args.join(" "),
            tail(&outcome.output, 2000)
        );
    }
    Ok(outcome.output)
}

/// The adapter `tern info` says it selects (its `selected: NAME (…)` line).
fn selected_adapter(listing: &str) -> anyhow::Result<String> {
    let line = listing
        .lines()
        .find_map(|l| l.strip_prefix("selected: "))
        .context("`tern info` printed no `selected:` line")?;
    match line.split(" (override with").next() {
        Some(name) if !name.starts_with("none:") => Ok(name.trim().to_string()),
        _ => bail!("no adapter selected: {line}"),
    }
}

/// Every `kernel_*` test file of tests/tests, then the model tests.
fn test_names(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("tests/tests");
    let mut kernels: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".rs")?;
            stem.starts_with("kernel_").then(|| stem.to_string())
        })
        .collect();
    kernels.sort();
    kernels.extend(MODEL_TESTS.iter().map(|t| t.to_string()));
    Ok(kernels)
}

/// Σ passed and Σ failed over the `test result:` lines of libtest's output.
fn test_counts(output: &str) -> (u64, u64) {
    let count = |line: &str, word: &str| -> u64 {
        line.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(word)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    output
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .fold((0, 0), |(p, f), l| {
            (p + count(l, "passed"), f + count(l, "failed"))
        })
}

fn tail(text: &str, chars: usize) -> String {
    let skip = text.chars().count().saturating_sub(chars);
    text.chars().skip(skip).collect()
}

fn git_commit(root: &Path) -> Value {
    Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(Value::Null, |o| {
            Value::String(String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tests_over_every_result_line() {
        let output = "running 3 tests\n\
            test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 2.1s\n\
            test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(test_counts(output), (7, 2));
        assert_eq!(test_counts("no tests here"), (0, 0));
    }

    #[test]
    fn finds_the_selected_adapter() {
        let listing = "[0] NVIDIA H200 — Vulkan, DiscreteGpu, driver NVIDIA 570\n\
            selected: NVIDIA H200 (override with TERN_BACKEND=vulkan|metal|dx12|gl, TERN_ADAPTER=<name>)\n";
        assert_eq!(selected_adapter(listing).unwrap(), "NVIDIA H200");
        assert!(selected_adapter("selected: none: no adapter matches").is_err());
        assert!(selected_adapter("[0] llvmpipe").is_err());
    }

    #[test]
    fn keeps_the_end_of_long_output() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
    }
}
