//! `tern bench --compare dense` and `tern bench --sweep`: the BitNet b1.58 paper's comparison with a
//! dense model of the same architecture and shape (f16 weights, f32 activations), run by the same
//! engine in the same process, so the ratios come from one run on one adapter. Method: BENCHMARKS.md.

use std::time::Instant;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tern::format::checkpoint::Checkpoint;
use tern::gpu::{Context, KernelProfile, KernelTiming};
use tern::model::synthetic::{self, Shape};
use tern::model::weights::ProjectionKind;
use tern::model::{ModelOptions, Output, Sequence, StepResult};

use crate::energy::{self, Dims, Phase};

/// `--compare`: the baseline to run beside the ternary model.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// The same architecture and shape with f16 weights and f32 activations.
    Dense,
}

/// Seed of every synthetic checkpoint the benchmark builds.
pub const SEED: u64 = 0x7e27;

/// The sizes of the BitNet b1.58 paper's latency and memory comparison (its Table 1 and Figure 2),
/// as the LLaMA-style shapes of the models it reports: the 1bitLLM reproductions of 700M
/// (`bitnet_b1_58-large`), 1.3B (`-xl`) and 3B, and LLaMA-7B; vocabulary 32000 (LLaMA tokenizer).
pub const PAPER_SIZES: [(&str, Shape); 4] = [
    ("700M", shape(1536, 24, 16, 4096)),
    ("1.3B", shape(2048, 24, 32, 5460)),
    ("3B", shape(3200, 26, 32, 8640)),
    ("7B", shape(4096, 32, 32, 11008)),
];

const fn shape(hidden: usize, layers: usize, heads: usize, intermediate: usize) -> Shape {
    Shape {
        hidden,
        layers,
        heads,
        kv_heads: heads,
        intermediate,
        vocab: 32000,
    }
}

/// On a CPU adapter "GPU" memory is host memory: a model is loaded only if its estimated size is at
/// most this share of the memory the OS reports available (the rest is left to other processes).
const HOST_MEMORY_SHARE: f64 = 0.6;

/// What one model measured.
pub struct Figures {
    pub load_s: f64,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub gpu_bytes: u64,
    /// One more decode step, timed kernel by kernel (outside the timed steps).
    pub kernel_ms: KernelProfile,
    /// The timed phases' measured energy, or why there is no counter (`energy::Recorder`).
    pub energy: Value,
}

impl Figures {
    fn json(&self) -> Value {
        json!({
            "load_s": self.load_s,
            "ttft_ms": self.ttft_ms,
            "prefill_tok_s": self.prefill_tok_s,
            "decode_tok_s": self.decode_tok_s,
            "decode_ms_per_token": 1e3 / self.decode_tok_s,
            "gpu_bytes": self.gpu_bytes,
            "kernel_ms_source": self.kernel_ms.timing.label(),
            "kernel_ms": Value::Object(
                self.kernel_ms
                    .kernels
                    .iter()
                    .map(|k| (k.name.to_string(), json!(k.ms)))
                    .collect(),
            ),
            "energy": self.energy,
        })
    }
}

/// The sizes of one benchmark run.
#[derive(Clone, Copy)]
pub struct Run {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub batch: usize,
    /// KV-cache positions the models are loaded with.
    pub context: usize,
    /// How their KV caches store keys and values.
    pub kv_cache: tern::KvCacheDtype,
}

/// Loads the synthetic checkpoint of `shape` with `kind` projections (packed ternary weights for
/// `Ternary`, f16 latents kept dense for `Dense`), then times a prefill of the prompt and greedy
/// decode steps exactly as the main benchmark does, then profiles one more decode step (`run.context`
/// must leave a position for it). The model is freed before returning.
pub async fn measure(
    ctx: &Context,
    shape: Shape,
    kind: ProjectionKind,
    run: Run,
) -> anyhow::Result<Figures> {
    let start = Instant::now();
    let checkpoint = match kind {
        ProjectionKind::Ternary => synthetic::checkpoint(shape, run.context, SEED)?,
        ProjectionKind::Dense => synthetic::dense_checkpoint(shape, run.context, SEED)?,
    };
    let mut model = load(ctx, &checkpoint, kind, run).await?;
    let load_s = start.elapsed().as_secs_f64();
    let vocab = checkpoint.config.vocab_size;
    drop(checkpoint);
    let timed = timed_generation(ctx, &mut model, vocab, run.prompt_tokens, run.gen_tokens).await?;
    let (_, kernel_ms) = model
        .profile_decode(timed.token, KernelTiming::for_adapter(ctx))
        .await?;
    Ok(Figures {
        load_s,
        ttft_ms: timed.ttft_s * 1e3,
        prefill_tok_s: run.prompt_tokens as f64 / timed.ttft_s,
        decode_tok_s: run.gen_tokens as f64 / timed.decode_s,
        gpu_bytes: model.gpu_bytes(),
        kernel_ms,
        energy: timed.energy,
    })
}

/// What the timed part of a benchmark measured.
pub struct TimedGeneration {
    /// The last token decoded: the input of the profiled steps that follow.
    pub token: u32,
    pub ttft_s: f64,
    pub decode_s: f64,
    /// The energy counter's report over the two phases (or why there is none).
    pub energy: Value,
}

/// The timed part of every benchmark: a prefill of `prompt_tokens` ids spread over the vocabulary
/// (the values do not change the work a step does), then `gen_tokens` greedy decode steps, with the
/// energy counter running across both.
pub async fn timed_generation(
    ctx: &Context,
    model: &mut Sequence,
    vocab: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> anyhow::Result<TimedGeneration> {
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|i| ((i * 7919 + 1) % vocab) as u32)
        .collect();
    let energy = energy::Recorder::start(ctx);
    let prefill_start = Instant::now();
    let mut token = next_token(model.forward(&prompt, Output::Argmax).await?)?;
    let decode_start = Instant::now();
    for _ in 0..gen_tokens {
        token = next_token(model.forward(&[token], Output::Argmax).await?)?;
    }
    let decode_end = Instant::now();
    let energy = energy.report(
        Phase {
            start: prefill_start,
            end: decode_start,
            tokens: prompt_tokens,
        },
        Phase {
            start: decode_start,
            end: decode_end,
            tokens: gen_tokens,
        },
    );
    Ok(TimedGeneration {
        token,
        ttft_s: (decode_start - prefill_start).as_secs_f64(),
        decode_s: (decode_end - decode_start).as_secs_f64(),
        energy,
    })
}

async fn load(
    ctx: &Context,
    checkpoint: &Checkpoint,
    kind: ProjectionKind,
    run: Run,
) -> anyhow::Result<Sequence> {
    let options = ModelOptions {
        max_context: run.context,
        max_batch: run.batch,
        projections: kind,
        kv_cache: run.kv_cache,
        ..ModelOptions::default()
    };
    let model = Sequence::load(ctx, checkpoint, options, &mut |_, _| {})
        .await
        .with_context(|| format!("loading the synthetic model with {kind:?} projections"))?;
    if model.options.max_context < run.context {
        bail!(
            "{} positions exceed the model's context of {}",
            run.context,
            model.options.max_context
        );
    }
    Ok(model)
}

fn next_token(result: StepResult) -> anyhow::Result<u32> {
    match result {
        StepResult::Token(t) => Ok(t),
        other => bail!("an argmax step returned {other:?}"),
    }
}

/// Adds the dense baseline at `shape` to the ternary `report` (which holds `decode_tok_s` and
/// `gpu_bytes` measured by the main benchmark): `dense.*`, `speedup_decode` (dense decode time over
/// ternary decode time), `memory_ratio` (dense GPU bytes over ternary GPU bytes) and
/// `energy_ternary_over_dense` (ternary joules per token over dense, estimated and measured).
pub async fn add_dense(
    report: &mut Value,
    ctx: &Context,
    shape: Shape,
    run: Run,
) -> anyhow::Result<()> {
    if let Some(reason) = does_not_fit(ctx, shape, ProjectionKind::Dense, run) {
        bail!("the dense baseline at this shape does not fit: {reason}; try a smaller --shape");
    }
    let dense = measure(ctx, shape, ProjectionKind::Dense, run).await?;
    let number = |field: &str| {
        report[field]
            .as_f64()
            .with_context(|| format!("the report has no {field}"))
    };
    let (decode_tok_s, gpu_bytes) = (number("decode_tok_s")?, number("gpu_bytes")?);
    let mut dense_json = dense.json();
    dense_json["weight_dtype"] = json!("f16");
    report["dense"] = dense_json;
    report["speedup_decode"] = json!(decode_tok_s / dense.decode_tok_s);
    report["memory_ratio"] = json!(dense.gpu_bytes as f64 / gpu_bytes);
    report["energy_ternary_over_dense"] =
        energy::ratios(&report["energy"], &dense.energy, &report["energy_estimate"]);
    Ok(())
}

/// Runs the ternary model and its dense baseline at each of [`PAPER_SIZES`], skipping (with the
/// reason, printed and in the report) what does not fit.
pub async fn sweep(ctx: &Context, run: Run) -> anyhow::Result<Value> {
    let mut sizes = Vec::new();
    for (name, shape) in PAPER_SIZES {
        let mut entry = json!({
            "size": name,
            "shape": format!(
                "{},{},{},{},{},{}",
                shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.intermediate,
                shape.vocab
            ),
            "parameters": shape.parameters(),
            "energy_estimate": energy::estimate(Dims::of_shape(shape)),
        });
        for kind in [ProjectionKind::Ternary, ProjectionKind::Dense] {
            let key = match kind {
                ProjectionKind::Ternary => "ternary",
                ProjectionKind::Dense => "dense",
            };
            if let Some(reason) = does_not_fit(ctx, shape, kind, run) {
                eprintln!("sweep {name} {key}: skipped: {reason}");
                entry[format!("{key}_skipped")] = json!(reason);
                continue;
            }
            eprintln!("sweep {name} {key}: measuring");
            match measure(ctx, shape, kind, run).await {
                Ok(figures) => entry[key] = figures.json(),
                Err(e) => {
                    eprintln!("sweep {name} {key}: skipped: {e:#}");
                    entry[format!("{key}_skipped")] = json!(format!("{e:#}"));
                }
            }
        }
        if let (Some(t), Some(d)) = (entry.get("ternary").cloned(), entry.get("dense").cloned()) {
            let ratio = |a: &Value, b: &Value| a.as_f64().zip(b.as_f64()).map(|(a, b)| a / b);
            entry["speedup_decode"] = json!(ratio(&t["decode_tok_s"], &d["decode_tok_s"]));
            entry["memory_ratio"] = json!(ratio(&d["gpu_bytes"], &t["gpu_bytes"]));
            entry["energy_ternary_over_dense"] =
                energy::ratios(&t["energy"], &d["energy"], &entry["energy_estimate"]);
        }
        sizes.push(entry);
    }
    Ok(json!({
        "adapter": ctx.adapter_name(),
        "prompt_tokens": run.prompt_tokens,
        "gen_tokens": run.gen_tokens,
        "dense_weight_dtype": "f16",
        "sizes": sizes,
    }))
}

/// Why a model of `shape` should not be loaded here, if it should not: on a CPU adapter its
/// estimated size against the host memory available now.
fn does_not_fit(ctx: &Context, shape: Shape, kind: ProjectionKind, run: Run) -> Option<String> {
    if !ctx.caps.is_cpu {
        return None; // device memory is not reported; a failed allocation is reported instead
    }
    let needed = estimated_gpu_bytes(shape, kind, run.context, run.kv_cache);
    let available = available_host_bytes()?;
    let limit = (available as f64 * HOST_MEMORY_SHARE) as u64;
    (needed > limit).then(|| {
        format!(
            "needs about {:.1} GB of device memory, which on this CPU adapter is host memory; \
             {:.1} GB available, {:.0} % of it may be used",
            needed as f64 / 1e9,
            available as f64 / 1e9,
            HOST_MEMORY_SHARE * 100.0
        )
    })
}

/// Weights (2-bit codes or f16; the bf16 embedding) plus the KV cache stored as `kv_cache`.
fn estimated_gpu_bytes(
    shape: Shape,
    kind: ProjectionKind,
    context: usize,
    kv_cache: tern::KvCacheDtype,
) -> u64 {
    let projections = shape.projection_parameters();
    let projection_bytes = match kind {
        ProjectionKind::Ternary => projections / 4,
        ProjectionKind::Dense => projections * 2,
    };
    let kv = shape.hidden / shape.heads * shape.kv_heads;
    let cache = (2 * shape.layers * context * kv * kv_cache.element_bytes()) as u64;
    projection_bytes + 2 * (shape.vocab * shape.hidden) as u64 + cache
}

/// `MemAvailable` from /proc/meminfo, where the OS reports it.
fn available_host_bytes() -> Option<u64> {
    proc_kib_field("/proc/meminfo", "MemAvailable:")
}

/// A `Name: N kB` field of a Linux /proc file, in bytes.
pub(crate) fn proc_kib_field(file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let kib = text
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The sweep as a table, one row per size, then why energy was not measured where it was not.
pub fn print_sweep(report: &Value) {
    println!("adapter: {}", report["adapter"].as_str().unwrap_or("?"));
    println!(
        "{:<6} {:>14} {:>14} {:>8} {:>11} {:>11} {:>8} {:>13} {:>13} {:>13} {:>13}",
        "size",
        "ternary ms/tok",
        "dense ms/tok",
        "speedup",
        "ternary GB",
        "dense GB",
        "memory",
        "est. t mJ/tok",
        "est. d mJ/tok",
        "meas. t J/tok",
        "meas. d J/tok"
    );
    let empty = Vec::new();
    let mut no_counter = None;
    for entry in report["sizes"].as_array().unwrap_or(&empty) {
        let field = |kind: &str, name: &str| entry[kind][name].as_f64();
        let show =
            |v: Option<f64>, scale: f64| v.map_or("-".into(), |v| format!("{:.2}", v * scale));
        let estimate = |kind: &str| entry["energy_estimate"][kind]["j_per_token"].as_f64();
        let mut measured = |kind: &str| {
            let energy = &entry[kind]["energy"];
            if let Some(reason) = energy["no_counter"].as_str() {
                no_counter = Some(reason.to_string());
                return "no counter".to_string();
            }
            show(energy["decode"]["j_per_token"].as_f64(), 1.0)
        };
        println!(
            "{:<6} {:>14} {:>14} {:>8} {:>11} {:>11} {:>8} {:>13} {:>13} {:>13} {:>13}",
            entry["size"].as_str().unwrap_or("?"),
            show(field("ternary", "decode_ms_per_token"), 1.0),
            show(field("dense", "decode_ms_per_token"), 1.0),
            show(entry["speedup_decode"].as_f64(), 1.0),
            show(field("ternary", "gpu_bytes"), 1e-9),
            show(field("dense", "gpu_bytes"), 1e-9),
            show(entry["memory_ratio"].as_f64(), 1.0),
            show(estimate("ternary"), 1e3),
            show(estimate("dense"), 1e3),
            measured("ternary"),
            measured("dense"),
        );
    }
    println!("est.: estimated decode energy (BitNet b1.58 paper's 7 nm model + weight traffic)");
    if let Some(reason) = no_counter {
        println!("energy not measured: {reason}");
    }
}
