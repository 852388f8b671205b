//! `tern bench`: load, prefill and greedy-decode throughput of a model (or a synthetic checkpoint of
//! any shape), with the adapter's memory bandwidth as the yardstick. Method: BENCHMARKS.md.

use std::time::Instant;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tern::format::checkpoint::Checkpoint;
use tern::format::source::read_range_into;
use tern::gpu::{
    BufferUsage, Context, ContextOptions, GpuBuffer, KernelProfile, KernelTiming, Uploader,
};
use tern::model::synthetic::{self, Shape};
use tern::model::weights::ProjectionKind;
use tern::model::{ModelOptions, Sequence};
use tern::ops::bandwidth;
use tern::{BatchEvent, BatchOptions, GenerateOptions, Model};

use crate::compare::{self, Baseline};
use crate::energy::{self, Dims};
use crate::load::{KvCacheArg, LmHeadArg};

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// A model directory, .gguf file or Hugging Face repo id.
    #[arg(long, short = 'm', conflicts_with = "shape")]
    pub model: Option<String>,
    /// A synthetic checkpoint with random ternary weights instead of a model: `2b4t`, `tiny`, or
    /// `hidden,layers,heads,kv_heads,intermediate,vocab`.
    #[arg(long)]
    pub shape: Option<String>,
    /// Prompt length of the prefill.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens decoded greedily after the prefill.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Tokens per prefill batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// KV-cache positions to allocate, if more than the prompt, generated and profiled tokens need:
    /// e.g. 4096 to measure the memory of a full-length session.
    #[arg(long, value_name = "TOKENS")]
    pub context: Option<usize>,
    /// How the KV cache stores keys and values (f16 halves its memory; f32 is exact).
    #[arg(long, value_enum, default_value_t = KvCacheArg::F16)]
    pub kv_cache: KvCacheArg,
    /// MiB of the bandwidth yardstick's buffer (far larger than the last-level cache).
    #[arg(long, default_value_t = 256)]
    pub copy_mib: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also run a baseline of the same shape in the same process and report `dense.*`,
    /// `speedup_decode` and `memory_ratio` (synthetic shapes only).
    #[arg(long, value_enum, requires = "shape")]
    pub compare: Option<Baseline>,
    /// Ternary and dense models at the BitNet b1.58 paper's sizes (700M, 1.3B, 3B, 7B): decode
    /// latency and memory per size; sizes that do not fit are skipped with the reason.
    #[arg(long, conflicts_with_all = ["model", "shape", "compare"])]
    pub sweep: bool,
    /// Profiled decode steps after the timed ones; `kernel_ms` keeps each kernel's fastest.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub profile_steps: u64,
    /// Continuous batching: for each N of the list, N requests at once (--prompt-tokens then
    /// --gen-tokens each, greedy) through a batch of N slots. Reports aggregate and per-stream
    /// decode tok/s (steps where all N decode), time to first token p50/p95 and GPU memory, and
    /// each aggregate over one stream's.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", conflicts_with_all = ["sweep", "compare"])]
    pub concurrent: Vec<usize>,
    /// How `kernel_ms` is timed: GPU timestamps where the adapter has them, else CPU-timed submits.
    #[arg(long, value_enum, default_value_t = KernelTimingArg::Auto)]
    pub kernel_timing: KernelTimingArg,
    /// The LM head as stored, or int8 made at load (reported as `lm_head`).
    #[arg(long, value_enum, default_value_t = LmHeadArg::Stored)]
    pub lm_head: LmHeadArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum KernelTimingArg {
    Auto,
    Timestamps,
    CpuSubmit,
}

impl KernelTimingArg {
    fn resolve(self, ctx: &Context) -> KernelTiming {
        match self {
            KernelTimingArg::Auto => KernelTiming::for_adapter(ctx),
            KernelTimingArg::Timestamps => KernelTiming::GpuTimestamps,
            KernelTimingArg::CpuSubmit => KernelTiming::CpuSubmit,
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.model.is_none() && args.shape.is_none() && !args.sweep {
        bail!(
            "what to measure? --shape 2b4t (a synthetic BitNet b1.58 2B-4T; also `tiny` or \
             `hidden,layers,heads,kv_heads,intermediate,vocab`), --model M (a model directory, \
             .gguf file or repo id), or --sweep (ternary vs dense at four sizes)"
        );
    }
    if args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--prompt-tokens and --gen-tokens must be at least 1");
    }
    let ctx = pollster::block_on(Context::new(&ContextOptions::from_env()))?;
    let run = compare::Run {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        batch: args.batch,
        context: args.prompt_tokens + args.gen_tokens + 1,
        kv_cache: args.kv_cache.into(),
    };
    if args.sweep {
        let report = pollster::block_on(compare::sweep(&ctx, run))?;
        if args.json {
            println!("{report}");
        } else {
            compare::print_sweep(&report);
        }
        return Ok(());
    }
    if !args.concurrent.is_empty() {
        let report = pollster::block_on(concurrent(&ctx, args))?;
        if args.json {
            println!("{report}");
        } else {
            print_concurrent(&report);
        }
        return Ok(());
    }
    let mut report = pollster::block_on(measure(ctx.clone(), args))?;
    if let (Some(Baseline::Dense), Some(shape)) = (args.compare, &args.shape) {
        let shape = Shape::parse(shape)?;
        pollster::block_on(compare::add_dense(&mut report, &ctx, shape, run))?;
    }
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn measure(ctx: Context, args: &BenchArgs) -> anyhow::Result<Value> {
    // More positions for the profiled decode steps after the timed ones.
    let needed = args.prompt_tokens + args.gen_tokens + args.profile_steps as usize;
    let context = args.context.unwrap_or(0).max(needed);
    let start = Instant::now();
    let (checkpoint, source) = open_checkpoint(args, context)?;
    let options = ModelOptions {
        max_context: context,
        max_batch: args.batch,
        kv_cache: args.kv_cache.into(),
        lm_head: args.lm_head.into(),
        ..ModelOptions::default()
    };
    let mut model = Sequence::load(&ctx, &checkpoint, options, &mut |_, _| {}).await?;
    let load_s = start.elapsed().as_secs_f64();
    // Read now: the high-water mark of loading, before the yardstick allocates its buffers.
    let host_peak_rss_bytes = peak_rss_bytes();
    let config = checkpoint.config.clone();
    if model.options.max_context < needed {
        bail!(
            "{} prompt + {} generated + {} profiled tokens exceed the model's context of {}",
            args.prompt_tokens,
            args.gen_tokens,
            args.profile_steps,
            model.options.max_context
        );
    }

    let timed = compare::timed_generation(
        &ctx,
        &mut model,
        config.vocab_size,
        args.prompt_tokens,
        args.gen_tokens,
    )
    .await?;
    let (mut token, ttft_s, decode_s, energy) =
        (timed.token, timed.ttft_s, timed.decode_s, timed.energy);
    // Again after running: the device zero-fills a buffer (the KV cache) on its first use, so on a CPU
    // adapter its pages count only from then on.
    let host_peak_rss_after_decode_bytes = peak_rss_bytes();
    // The load's yardsticks, after the memory readings (their buffers must not count there).
    let source_read_s = read_sources_once(&checkpoint).await?;
    drop(checkpoint);
    let upload_gbps = upload_gbps(&ctx).await?;
    let decode_tok_s = args.gen_tokens as f64 / decode_s;
    // Outside the timed steps: a profiled step runs a pass (or a submit) per kernel.
    let timing = args.kernel_timing.resolve(&ctx);
    let mut fastest: Option<KernelProfile> = None;
    for _ in 0..args.profile_steps {
        let (next, profile) = model.profile_decode(token, timing).await?;
        token = next;
        match &mut fastest {
            Some(fastest) => fastest.keep_fastest(&profile),
            None => fastest = Some(profile),
        }
    }
    let profile = fastest.context("--profile-steps must be at least 1")?;

    let dims = Dims::of_config(&config);
    let ternary_bytes = dims.ternary_weight_bytes();
    let copy = bandwidth::measure(&ctx, args.copy_mib << 20, 3).await?;
    let matvec_gbps = ternary_bytes as f64 * decode_tok_s / 1e9;
    let matvec_kernel_ms: f64 = profile
        .kernels
        .iter()
        .filter(|k| k.name.starts_with("matvec_"))
        .map(|k| k.ms)
        .sum();
    let matvec_kernel_gbps = ternary_bytes as f64 / (matvec_kernel_ms * 1e6);
    Ok(json!({
        "model": source,
        "adapter": ctx.adapter_name(),
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "load_s": load_s,
        "source_read_s": source_read_s,
        "load_over_source_read": load_s / source_read_s,
        "upload_gbps": upload_gbps,
        "upload_s_of_gpu_bytes": model.gpu_bytes() as f64 / (upload_gbps * 1e9),
        "ttft_ms": ttft_s * 1e3,
        "prefill_tok_s": args.prompt_tokens as f64 / ttft_s,
        "decode_tok_s": decode_tok_s,
        "gpu_bytes": model.gpu_bytes(),
        "kv_cache": args.kv_cache.name(),
        "lm_head": {
            "format": model.transformer().lm_head().name(),
            "bytes": model.transformer().lm_head_bytes(),
        },
        "host_peak_rss_bytes": host_peak_rss_bytes,
        "host_peak_rss_after_decode_bytes": host_peak_rss_after_decode_bytes,
        "kv_positions": context,
        "ternary_weight_bytes": ternary_bytes,
        "copy_gbps": copy.copy_gbps,
        "read_gbps": copy.read_gbps,
        "matvec_gbps": matvec_gbps,
        "matvec_over_copy": matvec_gbps / copy.copy_gbps,
        "decode_step_ms": 1e3 / decode_tok_s,
        "kernel_ms_source": profile.timing.label(),
        "kernel_ms_total": profile.total_ms(),
        "kernel_ms": kernel_ms(&profile),
        "matvec_kernel_gbps": matvec_kernel_gbps,
        "matvec_kernel_over_copy": matvec_kernel_gbps / copy.copy_gbps,
        "energy": energy,
        "energy_estimate": energy::estimate(dims),
    }))
}

/// Seconds to read every byte of the checkpoint's files once more (page-cached after the load, or
/// generated for a synthetic one) in the loader's 32 MiB blocks into one buffer: `load_s`'s yardstick.
async fn read_sources_once(checkpoint: &Checkpoint) -> anyhow::Result<f64> {
    const BLOCK: u64 = 32 << 20;
    let start = Instant::now();
    let mut block = Vec::new();
    for source in &checkpoint.sources {
        for offset in (0..source.len()).step_by(BLOCK as usize) {
            let len = BLOCK.min(source.len() - offset);
            read_range_into(source.as_ref(), offset, len, &mut block).await?;
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The adapter's upload rate into fresh device memory through the loader's uploader (256 MiB, or
/// the largest buffer if smaller, in 32 MiB writes): what a load must pay per byte beyond reading.
async fn upload_gbps(ctx: &Context) -> anyhow::Result<f64> {
    const WRITE: u64 = 32 << 20;
    let total = (256u64 << 20).min(ctx.caps.max_buffer_bytes) / WRITE * WRITE;
    let target = GpuBuffer::new(ctx, "upload yardstick", total, BufferUsage::Storage)?;
    let bytes = vec![0x5a_u8; WRITE as usize];
    let mut uploader = Uploader::new(ctx);
    let start = Instant::now();
    for offset in (0..total).step_by(WRITE as usize) {
        uploader.write(ctx, &target, offset, &bytes)?;
        uploader.submit(ctx);
    }
    ctx.wait().await?;
    Ok(total as f64 / start.elapsed().as_secs_f64() / 1e9)
}

/// The checkpoint `--model` names, or a synthetic one of `--shape` with `context` positions; and
/// how to call it in the report.
fn open_checkpoint(args: &BenchArgs, context: usize) -> anyhow::Result<(Checkpoint, String)> {
    Ok(match (&args.model, &args.shape) {
        (Some(model), _) => {
            let path = tern::hub::resolve(model, true)?;
            let checkpoint =
                Checkpoint::open(&path).with_context(|| format!("opening {}", path.display()))?;
            (checkpoint, model.clone())
        }
        (None, Some(shape)) => {
            let checkpoint = synthetic::checkpoint(Shape::parse(shape)?, context, 0x7e27)?;
            (checkpoint, format!("synthetic {shape}"))
        }
        (None, None) => bail!("give --model or --shape"),
    })
}

/// `--concurrent`: each count of streams through one batch, in one process on one adapter.
async fn concurrent(ctx: &Context, args: &BenchArgs) -> anyhow::Result<Value> {
    if args.concurrent.contains(&0) {
        bail!("--concurrent counts must be at least 1");
    }
    let context = args.prompt_tokens + args.gen_tokens + 1;
    let (mut checkpoint, source) = open_checkpoint(args, context)?;
    let vocab = checkpoint.config.vocab_size;
    if checkpoint.tokenizer_json.is_none() {
        checkpoint.tokenizer_json = Some(synthetic::word_level_tokenizer(vocab));
    }
    let model = Model::load(
        ctx,
        &checkpoint,
        ProjectionKind::Ternary,
        args.lm_head.into(),
        &mut |_, _| {},
    )
    .await?;
    drop(checkpoint);
    let options = GenerateOptions {
        max_new_tokens: args.gen_tokens,
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    let mut settings = Vec::new();
    for &streams in &args.concurrent {
        let sizes = BatchOptions {
            slots: streams,
            max_context: context,
            max_batch: args.batch,
            kv_cache: args.kv_cache.into(),
        };
        let mut batch = model.open_batch(sizes).await?;
        for i in 0..streams {
            let prompt = (0..args.prompt_tokens)
                .map(|j| ((1 + i * 7919 + j * 104_729) % vocab) as u32)
                .collect();
            batch.submit(prompt, options.clone())?;
        }
        let start = Instant::now();
        let mut started = std::collections::HashSet::new();
        let mut first_token_s = Vec::new();
        // Tokens and seconds of the steps where every stream decoded: N streams' steady state.
        let (mut steady_tokens, mut steady_s) = (0, 0.0);
        while !batch.is_idle() {
            let step_start = Instant::now();
            let events = batch.step().await?;
            let step_s = step_start.elapsed().as_secs_f64();
            let (mut tokens, mut firsts) = (0, 0);
            for event in events {
                match event {
                    BatchEvent::Token { request, .. } => {
                        tokens += 1;
                        if started.insert(request) {
                            first_token_s.push(start.elapsed().as_secs_f64());
                            firsts += 1;
                        }
                    }
                    BatchEvent::Failed { error, .. } => bail!("{error}"),
                    BatchEvent::Finished { .. } => {}
                }
            }
            if firsts == 0 && tokens == streams {
                steady_tokens += tokens;
                steady_s += step_s;
            }
        }
        first_token_s.sort_by(f64::total_cmp);
        let percentile = |p: f64| {
            let i = ((first_token_s.len() as f64 * p).ceil() as usize).max(1) - 1;
            first_token_s[i.min(first_token_s.len() - 1)] * 1e3
        };
        let aggregate = (steady_s > 0.0).then(|| steady_tokens as f64 / steady_s);
        settings.push(json!({
            "streams": streams,
            "aggregate_decode_tok_s": aggregate,
            "per_stream_decode_tok_s": aggregate.map(|a| a / streams as f64),
            "steady_steps": steady_tokens / streams,
            "ttft_p50_ms": percentile(0.5),
            "ttft_p95_ms": percentile(0.95),
            "gpu_bytes": model.transformer().gpu_bytes() + batch.state_bytes(),
            "kv_cache_bytes_per_slot": batch.slot_bytes(),
            "wall_s": start.elapsed().as_secs_f64(),
        }));
    }
    let single = settings
        .iter()
        .find(|s| s["streams"] == 1)
        .and_then(|s| s["aggregate_decode_tok_s"].as_f64());
    for setting in &mut settings {
        let ratio = match (setting["aggregate_decode_tok_s"].as_f64(), single) {
            (Some(aggregate), Some(single)) => json!(aggregate / single),
            _ => Value::Null,
        };
        setting["aggregate_over_single"] = ratio;
    }
    Ok(json!({
        "model": source,
        "adapter": ctx.adapter_name(),
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "weight_bytes": model.transformer().gpu_bytes(),
        "concurrent": settings,
    }))
}

fn print_concurrent(report: &Value) {
    println!(
        "{} on {}: {} prompt + {} generated tokens per stream",
        report["model"].as_str().unwrap_or("?"),
        report["adapter"].as_str().unwrap_or("?"),
        report["prompt_tokens"],
        report["gen_tokens"]
    );
    println!(
        "{:>7} {:>13} {:>13} {:>9} {:>12} {:>12} {:>10}",
        "streams", "aggregate/s", "per stream/s", "vs one", "TTFT p50 ms", "TTFT p95 ms", "GPU MiB"
    );
    let number = |v: &Value, width: usize| match v.as_f64() {
        Some(x) => format!("{x:>width$.2}"),
        None => format!("{:>width$}", "-"),
    };
    for s in report["concurrent"].as_array().into_iter().flatten() {
        println!(
            "{:>7} {} {} {} {} {} {:>10}",
            s["streams"],
            number(&s["aggregate_decode_tok_s"], 13),
            number(&s["per_stream_decode_tok_s"], 13),
            number(&s["aggregate_over_single"], 9),
            number(&s["ttft_p50_ms"], 12),
            number(&s["ttft_p95_ms"], 12),
            s["gpu_bytes"].as_u64().unwrap_or(0) >> 20
        );
    }
}

/// {kernel name: ms in one decode step}, summed over the step's dispatches (e.g. all layers).
fn kernel_ms(profile: &KernelProfile) -> Value {
    Value::Object(
        profile
            .kernels
            .iter()
            .map(|k| (k.name.to_string(), json!(k.ms)))
            .collect(),
    )
}

/// The process's peak resident set (VmHWM) in bytes, where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    compare::proc_kib_field("/proc/self/status", "VmHWM:")
}

fn print_table(report: &Value) {
    if let Some(fields) = report.as_object() {
        print_fields(fields, 0);
    }
}

fn print_fields(fields: &serde_json::Map<String, Value>, indent: usize) {
    let pad = " ".repeat(indent);
    for (name, value) in fields {
        let Value::Object(inner) = value else {
            let shown = match value {
                Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(f64::NAN)),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "{pad}{name:<width$} {shown}",
                width = 22usize.saturating_sub(indent)
            );
            continue;
        };
        println!("{pad}{name}");
        if inner.values().all(Value::is_number) {
            // kernel_ms (and dense's): one line per number, the largest first.
            let mut rows: Vec<(&String, f64)> = inner
                .iter()
                .filter_map(|(k, ms)| Some((k, ms.as_f64()?)))
                .collect();
            rows.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (kernel, ms) in rows {
                println!("{pad}  {kernel:<20} {ms:.3}");
            }
        } else {
            print_fields(inner, indent + 2);
        }
    }
}
