//! `cargo xtask bench`: builds `tern` in release, runs `tern bench --json` on a synthetic shape and
//! writes the report to target/bench/<shape>-<adapter>.json. With `--sweep` it runs
//! `tern bench --sweep --json` (ternary and dense at the BitNet b1.58 paper's sizes) and writes
//! sweep-<adapter>.json, a Markdown table (.md) and the scaling plot (.svg) beside it. Method and
//! figures: BENCHMARKS.md.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use plotters::prelude::*;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// `2b4t`, `tiny` or `hidden,layers,heads,kv_heads,intermediate,vocab`.
    #[arg(long, default_value = "2b4t", conflicts_with = "sweep")]
    shape: String,
    /// Prompt length (default 128; 4 with --sweep).
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// Decoded tokens (default 8; 3 with --sweep): a 2B decode step takes seconds on a software
    /// adapter, a dense 3B one ten.
    #[arg(long)]
    gen_tokens: Option<usize>,
    /// Also run the dense baseline of the same shape (`tern bench --compare dense`).
    #[arg(long)]
    compare_dense: bool,
    /// Ternary and dense at the paper's sizes, with the plot.
    #[arg(long)]
    sweep: bool,
    /// With --sweep: render the table and plot from this saved `tern bench --sweep --json` report
    /// instead of running the sweep.
    #[arg(long, requires = "sweep")]
    report: Option<std::path::PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    let (prompt, generated) = if args.sweep { (4, 3) } else { (128, 8) };
    let prompt = args.prompt_tokens.unwrap_or(prompt).to_string();
    let generated = args.gen_tokens.unwrap_or(generated).to_string();
    let mut bench = vec![
        "bench",
        "--prompt-tokens",
        &prompt,
        "--gen-tokens",
        &generated,
    ];
    if args.sweep {
        bench.push("--sweep");
    } else {
        bench.extend(["--shape", &args.shape]);
        if args.compare_dense {
            bench.extend(["--compare", "dense"]);
        }
    }
    bench.push("--json");
    let report = match &args.report {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a sweep report", path.display()))?
        }
        None => run_tern(root, &bench, &[])?,
    };
    let adapter = slug(report["adapter"].as_str().unwrap_or("unknown"));
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = if args.sweep {
        format!("sweep-{adapter}")
    } else {
        format!("{}-{adapter}", args.shape.replace(',', "x"))
    };
    let json = dir.join(format!("{stem}.json"));
    write(&json, &(serde_json::to_string_pretty(&report)? + "\n"))?;
    if args.sweep {
        let table = sweep_table(&report);
        write(&dir.join(format!("{stem}.md")), &table)?;
        let svg = dir.join(format!("{stem}.svg"));
        plot_sweep(&report, &svg)?;
        println!("{table}");
        eprintln!("wrote {}, {stem}.md and {stem}.svg", json.display());
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
        eprintln!("wrote {}", json.display());
    }
    Ok(())
}

/// `cargo run --release -p tern-cli -- <bench>` with `env` set, its standard output parsed as JSON.
pub(crate) fn run_tern(root: &Path, bench: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo run --release -p tern-cli -- {}", bench.join(" "));
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["run", "--quiet", "--release", "-p", "tern-cli", "--"])
        .args(bench)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running tern bench")?;
    if !output.status.success() {
        bail!("tern bench failed ({})", output.status);
    }
    serde_json::from_slice(&output.stdout).context("tern bench printed no JSON object")
}

pub(crate) fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)` → `llvmpipe-llvm-15-0-6-256-bits-vulkan`.
pub(crate) fn slug(name: &str) -> String {
    name.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// One measured model of the sweep: (parameters in billions, decode ms/token, GPU GB).
type Point = (f64, f64, f64);

/// One panel of the plot: its y-axis label and the coordinate of a point it shows.
type Panel = (&'static str, fn(&Point) -> f64);

/// The sweep's points for `kind` (`ternary` or `dense`), sizes that were skipped left out.
fn points(report: &Value, kind: &str) -> Vec<Point> {
    report["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|size| {
            let figures = &size[kind];
            Some((
                size["parameters"].as_f64()? / 1e9,
                figures["decode_ms_per_token"].as_f64()?,
                figures["gpu_bytes"].as_f64()? / 1e9,
            ))
        })
        .collect()
}

/// (parameters in billions, J per decoded token) of each size that has the figure.
type EnergySeries = Vec<(f64, f64)>;

/// The sweep's decode energy per token for `kind`: the estimate at every size, and what the
/// counter measured where there was one.
fn energy_points(report: &Value, kind: &str) -> (EnergySeries, EnergySeries) {
    let sizes = || report["sizes"].as_array().into_iter().flatten();
    let series = |joules: fn(&Value, &str) -> Option<f64>| -> EnergySeries {
        sizes()
            .filter_map(|size| Some((size["parameters"].as_f64()? / 1e9, joules(size, kind)?)))
            .collect()
    };
    (
        series(|size, kind| size["energy_estimate"][kind]["j_per_token"].as_f64()),
        series(|size, kind| size[kind]["energy"]["decode"]["j_per_token"].as_f64()),
    )
}

/// Why the sweep measured no energy, if a model said so.
fn no_counter(report: &Value) -> Option<&str> {
    report["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|size| ["ternary", "dense"].map(|kind| &size[kind]["energy"]["no_counter"]))
        .find_map(Value::as_str)
}

/// The sweep as Markdown tables (latency and memory; energy), with the reasons for skipped sizes
/// and for an energy that was not measured below them.
fn sweep_table(report: &Value) -> String {
    let mut out = format!(
        "Adapter: {}; {} prompt tokens, {} decoded; dense weights {}.\n\n\
         | size | shape (H,L,heads,kv,I,V) | parameters | ternary ms/token | dense ms/token | \
         speedup_decode | ternary GPU GB | dense GPU GB | memory_ratio |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        report["adapter"].as_str().unwrap_or("?"),
        report["prompt_tokens"],
        report["gen_tokens"],
        report["dense_weight_dtype"].as_str().unwrap_or("?"),
    );
    let mut energy = String::from(
        "\nDecode energy per token: the estimate (BitNet b1.58 paper's 7 nm arithmetic + weight \
         traffic; assumptions in the report's `energy_estimate`) and the measurement.\n\n\
         | size | est. ternary mJ/token | est. dense mJ/token | est. ternary / dense | \
         measured ternary J/token | measured dense J/token | measured ternary / dense |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut notes = String::new();
    let show = |v: Option<f64>, scale: f64| v.map_or("—".into(), |v| format!("{:.2}", v * scale));
    let show_small = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.4}"));
    for size in report["sizes"].as_array().into_iter().flatten() {
        let name = size["size"].as_str().unwrap_or("?");
        out += &format!(
            "| {name} | {} | {:.2} B | {} | {} | {} | {} | {} | {} |\n",
            size["shape"].as_str().unwrap_or("?"),
            size["parameters"].as_f64().unwrap_or(f64::NAN) / 1e9,
            show(size["ternary"]["decode_ms_per_token"].as_f64(), 1.0),
            show(size["dense"]["decode_ms_per_token"].as_f64(), 1.0),
            show(size["speedup_decode"].as_f64(), 1.0),
            show(size["ternary"]["gpu_bytes"].as_f64(), 1e-9),
            show(size["dense"]["gpu_bytes"].as_f64(), 1e-9),
            show(size["memory_ratio"].as_f64(), 1.0),
        );
        let estimate = &size["energy_estimate"];
        let measured = |kind: &str| {
            let energy = &size[kind]["energy"];
            match energy["no_counter"].as_str() {
                Some(_) => "no counter".to_string(),
                None => show_small(energy["decode"]["j_per_token"].as_f64()),
            }
        };
        energy += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            show(estimate["ternary"]["j_per_token"].as_f64(), 1e3),
            show(estimate["dense"]["j_per_token"].as_f64(), 1e3),
            show_small(estimate["ternary_over_dense"].as_f64()),
            measured("ternary"),
            measured("dense"),
            show_small(
                size["energy_ternary_over_dense"]["measured"]["decode_j_per_token"].as_f64()
            ),
        );
        for kind in ["ternary", "dense"] {
            if let Some(reason) = size[format!("{kind}_skipped")].as_str() {
                notes += &format!("- {name} {kind} skipped: {reason}\n");
            }
        }
    }
    if let Some(reason) = no_counter(report) {
        notes += &format!("- energy not measured: {reason}\n");
    }
    out += &energy;
    if !notes.is_empty() {
        out += "\n";
        out += &notes;
    }
    out
}

/// Decode latency and GPU memory against model size, ternary beside dense (the paper's Figure 2),
/// and decode energy per token (its Figure 3's axis).
fn plot_sweep(report: &Value, path: &Path) -> anyhow::Result<()> {
    let series = [
        ("BitNet b1.58 (ternary)", points(report, "ternary"), BLUE),
        ("dense f16", points(report, "dense"), RED),
    ];
    let all: Vec<Point> = series.iter().flat_map(|s| s.1.clone()).collect();
    if all.is_empty() {
        bail!("the sweep measured no model: nothing to plot");
    }
    let max = |f: fn(&Point) -> f64| all.iter().map(f).fold(0.0, f64::max) * 1.3; // headroom for the legend
    let x_max = max(|p| p.0);
    let root = SVGBackend::new(path, (1500, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let title = format!(
        "Tern on {}: decode latency, memory and energy vs model size",
        report["adapter"].as_str().unwrap_or("?")
    );
    let root = root
        .titled(&title, ("sans-serif", 18))
        .map_err(plot_error)?;
    let panels = root.split_evenly((1, 3));
    let charts: [Panel; 2] = [
        ("decode latency (ms / token)", |p| p.1),
        ("GPU memory (GB)", |p| p.2),
    ];
    for (panel, (y_label, y)) in panels.iter().zip(charts) {
        let mut chart = ChartBuilder::on(panel)
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..max(y))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("parameters (billions)")
            .y_desc(y_label)
            .draw()
            .map_err(plot_error)?;
        for (name, points, color) in &series {
            let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.0, y(p))).collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(plot_error)?;
    }
    plot_energy(report, &panels[2], x_max)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// The energy panel: J per decoded token on a log axis (the estimate and a measurement on a CPU
/// adapter differ by orders of magnitude), estimates as lines with circles, measurements as
/// lines with triangles, and a note where nothing was measured.
fn plot_energy(
    report: &Value,
    panel: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    x_max: f64,
) -> anyhow::Result<()> {
    let kinds = [("ternary", BLUE), ("dense", RED)];
    let series: Vec<_> = kinds
        .iter()
        .map(|&(kind, color)| (kind, energy_points(report, kind), color))
        .collect();
    let all_y = series
        .iter()
        .flat_map(|(_, (estimate, measured), _)| estimate.iter().chain(measured).map(|p| p.1));
    let (low, high) = all_y
        .filter(|y| *y > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    let (low, high) = if high > 0.0 {
        (low / 3.0, high * 30.0) // headroom for the legend
    } else {
        (1e-3, 1.0)
    };
    let mut chart = ChartBuilder::on(panel)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, (low..high).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("parameters (billions)")
        .y_desc("decode energy (J / token, log)")
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()
        .map_err(plot_error)?;
    for (kind, (estimate, measured), color) in &series {
        let name = if *kind == "ternary" {
            "BitNet b1.58"
        } else {
            "dense f16"
        };
        for (points, label, is_measured) in
            [(estimate, "estimate", false), (measured, "measured", true)]
        {
            if points.is_empty() {
                continue;
            }
            let width = if is_measured { 1 } else { 2 };
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
                .map_err(plot_error)?
                .label(format!("{name} ({label})"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(width))
                });
            if is_measured {
                chart
                    .draw_series(
                        points
                            .iter()
                            .map(|&p| TriangleMarker::new(p, 6, color.filled())),
                    )
                    .map_err(plot_error)?;
            } else {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(plot_error)?;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(plot_error)?;
    if no_counter(report).is_some() {
        let (width, height) = panel.dim_in_pixel();
        panel
            .draw(&Text::new(
                "measured: no energy counter on this machine (estimate only)",
                (width as i32 / 6, height as i32 - 70),
                ("sans-serif", 13),
            ))
            .map_err(plot_error)?;
    }
    Ok(())
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the sweep plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        serde_json::json!({
            "adapter": "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)",
            "prompt_tokens": 4, "gen_tokens": 3, "dense_weight_dtype": "f16",
            "sizes": [
                {"size": "700M", "shape": "1536,24,16,16,4096,32000", "parameters": 7.3e8,
                 "ternary": {"decode_ms_per_token": 300.0, "gpu_bytes": 2.9e8,
                             "energy": {"counter": null, "no_counter": "no RAPL counter"}},
                 "dense": {"decode_ms_per_token": 900.0, "gpu_bytes": 1.4e9,
                           "energy": {"counter": null, "no_counter": "no RAPL counter"}},
                 "speedup_decode": 3.0, "memory_ratio": 4.8,
                 "energy_estimate": {"ternary": {"j_per_token": 0.012},
                                     "dense": {"j_per_token": 0.05},
                                     "ternary_over_dense": 0.24},
                 "energy_ternary_over_dense": {"estimate": 0.24, "measured": null}},
                {"size": "7B", "shape": "4096,32,32,32,11008,32000", "parameters": 6.7e9,
                 "ternary": {"decode_ms_per_token": 2000.0, "gpu_bytes": 2.0e9,
                             "energy": {"counter": "RAPL package-0", "decode": {"j_per_token": 150.0}}},
                 "dense_skipped": "needs about 13.5 GB",
                 "energy_estimate": {"ternary": {"j_per_token": 0.06},
                                     "dense": {"j_per_token": 0.42},
                                     "ternary_over_dense": 0.1429}}
            ]
        })
    }

    #[test]
    fn table_lists_every_size_and_why_one_was_skipped() {
        let table = sweep_table(&report());
        assert!(
            table.contains("| 700M | 1536,24,16,16,4096,32000 | 0.73 B | 300.00 | 900.00 | 3.00 |")
        );
        assert!(table.contains("| 7B |") && table.contains("| — |"));
        assert!(table.contains("- 7B dense skipped: needs about 13.5 GB"));
        assert_eq!(points(&report(), "dense"), vec![(0.73, 900.0, 1.4)]);
        assert_eq!(points(&report(), "ternary").len(), 2);
    }

    #[test]
    fn table_shows_the_energy_estimate_and_why_nothing_was_measured() {
        let table = sweep_table(&report());
        assert!(
            table.contains("| 700M | 12.00 | 50.00 | 0.2400 | no counter | no counter | — |"),
            "{table}"
        );
        assert!(table.contains("| 7B | 60.00 | 420.00 | 0.1429 | 150.0000 | — | — |"));
        assert!(table.contains("- energy not measured: no RAPL counter"));
        let (estimate, measured) = energy_points(&report(), "ternary");
        assert_eq!(estimate, vec![(0.73, 0.012), (6.7, 0.06)]);
        assert_eq!(measured, vec![(6.7, 150.0)]);
        assert_eq!(energy_points(&report(), "dense").1, vec![]);
    }

    #[test]
    fn plot_is_an_svg_with_both_series() {
        let path = std::env::temp_dir().join(format!("tern-sweep-{}.svg", std::process::id()));
        plot_sweep(&report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("dense f16") && svg.contains("ternary"));
        assert!(svg.contains("J / token") && svg.contains("BitNet b1.58 (estimate)"));
        assert!(svg.contains("BitNet b1.58 (measured)") && svg.contains("no energy counter"));
        assert!(
            slug("llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)")
                == "llvmpipe-llvm-15-0-6-256-bits-vulkan"
        );
    }
}
