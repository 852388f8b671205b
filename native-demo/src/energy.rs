//! Energy per token, the BitNet b1.58 paper's third axis: measured where the platform has an energy
//! or power counter for the adapter (NVML or `nvidia-smi` for NVIDIA GPUs, the Linux RAPL powercap
//! files for CPU adapters), and beside it, on every machine, the paper's arithmetic-energy model
//! plus weight traffic, labelled as an estimate. Parsing is kept apart from I/O so the tests feed it
//! text. Method, assumptions and sources: BENCHMARKS.md.

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tern::format::config::ModelConfig;
use tern::gpu::Context;
use tern::layout::words_per_row;
use tern::model::synthetic::Shape;

/// How long the idle draw is measured right before the timed phases: long enough to span two of
/// the 1 s averages that recent NVIDIA boards report as their power draw.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// How often a cumulative counter (RAPL, NVML) is read: RAPL's 32-bit-range counters wrap every
/// few hundred joules, so a read every 50 ms sees at most one wrap even at kilowatts.
const COUNTER_INTERVAL: Duration = Duration::from_millis(50);

/// `nvidia-smi -lms`: its power samples' period.
const NVIDIA_SMI_INTERVAL_MS: u64 = 100;

/// How long opening a counter may wait for its first reading (`nvidia-smi` starts the driver).
const FIRST_READING_TIMEOUT: Duration = Duration::from_secs(10);

const NVIDIA_VENDOR: u32 = 0x10de;
const APPLE_VENDOR: u32 = 0x106b;

/// What a counter says at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reading {
    /// Energy since some fixed origin (already unwrapped).
    Joules(f64),
    /// Instantaneous (or short-average) power.
    Watts(f64),
}

/// Cumulative joules over time, from counter readings or integrated from power samples.
#[derive(Default)]
struct Timeline {
    samples: Vec<(Instant, f64)>,
    last_watts: Option<f64>,
    error: Option<String>,
}

impl Timeline {
    fn push(&mut self, at: Instant, reading: Reading) {
        let joules = match reading {
            Reading::Joules(joules) => joules,
            // Trapezoids between power samples; the first sample starts the integral at 0.
            Reading::Watts(watts) => match (self.samples.last(), self.last_watts) {
                (Some(&(before, joules)), Some(watts_before)) => {
                    joules + 0.5 * (watts + watts_before) * (at - before).as_secs_f64()
                }
                _ => 0.0,
            },
        };
        if let Reading::Watts(watts) = reading {
            self.last_watts = Some(watts);
        }
        self.samples.push((at, joules));
    }

    /// Cumulative joules at `at`, interpolated between the samples around it; `None` outside them.
    fn joules_at(&self, at: Instant) -> Option<f64> {
        let after = self.samples.partition_point(|&(t, _)| t < at);
        let &(t1, j1) = self.samples.get(after)?;
        if t1 == at {
            return Some(j1);
        }
        let &(t0, j0) = self.samples.get(after.checked_sub(1)?)?;
        let share = (at - t0).as_secs_f64() / (t1 - t0).as_secs_f64();
        Some(j0 + share * (j1 - j0))
    }

    fn last_time(&self) -> Option<Instant> {
        self.samples.last().map(|&(t, _)| t)
    }
}

/// A counter read on a thread of its own for as long as the meter lives.
pub struct Meter {
    /// What is measured, e.g. `RAPL package-0 + dram (Linux powercap)`.
    counter: String,
    timeline: Arc<Mutex<Timeline>>,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
    /// `nvidia-smi` streaming samples: killed on drop, which also ends its reader thread.
    child: Option<Child>,
}

enum Source {
    Rapl(Vec<RaplZone>),
    Nvml {
        /// Boxed: the library's table of function pointers is ~12 KB.
        nvml: Box<nvml_wrapper::Nvml>,
        index: u32,
        /// Volta and newer have a millijoule counter; older boards only report power.
        energy_counter: bool,
    },
    NvidiaSmi(Lines<BufReader<ChildStdout>>),
}

impl Source {
    fn read(&mut self) -> Result<Reading, String> {
        match self {
            Source::Rapl(zones) => {
                let mut micro_joules = 0;
                for zone in zones.iter_mut() {
                    micro_joules += zone.read()?;
                }
                Ok(Reading::Joules(micro_joules as f64 * 1e-6))
            }
            Source::Nvml {
                nvml,
                index,
                energy_counter,
            } => {
                let device = nvml.device_by_index(*index).map_err(|e| e.to_string())?;
                if *energy_counter {
                    let milli_joules = device
                        .total_energy_consumption()
                        .map_err(|e| e.to_string())?;
                    Ok(Reading::Joules(milli_joules as f64 * 1e-3))
                } else {
                    let milli_watts = device.power_usage().map_err(|e| e.to_string())?;
                    Ok(Reading::Watts(f64::from(milli_watts) * 1e-3))
                }
            }
            Source::NvidiaSmi(lines) => match lines.next() {
                Some(Ok(line)) => parse_watts(&line).map(Reading::Watts),
                Some(Err(e)) => Err(format!("reading nvidia-smi: {e}")),
                None => Err("nvidia-smi stopped".into()),
            },
        }
    }

    /// Streaming sources block until their next sample; counters are polled.
    fn poll_interval(&self) -> Option<Duration> {
        match self {
            Source::NvidiaSmi(_) => None,
            _ => Some(COUNTER_INTERVAL),
        }
    }
}

impl Meter {
    /// The counter that covers `ctx`'s adapter, or why there is none.
    pub fn open(ctx: &Context) -> Result<Meter, String> {
        let info = &ctx.info;
        if ctx.caps.is_cpu {
            let zones = rapl_zones(Path::new("/sys/class/powercap"))?;
            let names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
            let counter = format!("RAPL {} (Linux powercap)", names.join(" + "));
            return Meter::start(counter, Source::Rapl(zones), None);
        }
        if info.vendor == NVIDIA_VENDOR {
            return match open_nvml(info.device) {
                Ok((counter, source)) => Meter::start(counter, source, None),
                Err(nvml) => open_nvidia_smi(info.device)
                    .map_err(|smi| format!("NVML: {nvml}; nvidia-smi: {smi}")),
            };
        }
        if info.vendor == APPLE_VENDOR || info.backend == wgpu::Backend::Metal {
            return Err(
                "Apple GPU: no non-privileged energy counter is read (powermetrics needs \
                        root; the IOReport energy channels that sudo-less monitors read are a \
                        private macOS API)"
                    .into(),
            );
        }
        Err(format!(
            "no energy counter is read for this adapter (PCI vendor {:#06x}): Tern reads NVML or \
             nvidia-smi for NVIDIA GPUs and RAPL for CPU adapters",
            info.vendor
        ))
    }

    fn start(counter: String, mut source: Source, child: Option<Child>) -> Result<Meter, String> {
        let opened = Instant::now();
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (timeline, stop) = (timeline.clone(), stop.clone());
            std::thread::spawn(move || {
                let interval = source.poll_interval();
                while !stop.load(Ordering::Relaxed) {
                    let reading = source.read();
                    let mut timeline = timeline.lock().unwrap_or_else(|e| e.into_inner());
                    match reading {
                        Ok(reading) => timeline.push(Instant::now(), reading),
                        Err(e) => {
                            timeline.error = Some(e);
                            return;
                        }
                    }
                    drop(timeline);
                    if let Some(interval) = interval {
                        std::thread::sleep(interval);
                    }
                }
            })
        };
        let meter = Meter {
            counter,
            timeline,
            stop,
            sampler: Some(sampler),
            child,
        };
        meter.wait_for_sample_after(opened)?;
        Ok(meter)
    }

    fn wait_for_sample_after(&self, at: Instant) -> Result<(), String> {
        let deadline = Instant::now().max(at) + FIRST_READING_TIMEOUT;
        loop {
            {
                let timeline = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
                if timeline.last_time().is_some_and(|t| t >= at) {
                    return Ok(());
                }
                if let Some(e) = &timeline.error {
                    return Err(format!("{}: {e}", self.counter));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: no reading for {FIRST_READING_TIMEOUT:?}",
                    self.counter
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Joules the counter measured from `from` to `to` (waits for the sample after `to`).
    fn joules_between(&self, from: Instant, to: Instant) -> Result<f64, String> {
        self.wait_for_sample_after(to)?;
        let timeline = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        match (timeline.joules_at(from), timeline.joules_at(to)) {
            (Some(start), Some(end)) => Ok(end - start),
            _ => Err(format!("{}: no reading before the phase", self.counter)),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(child) = &mut self.child {
            // Ends the stream the sampler blocks on; a failure means it has exited already.
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}

/// One timed phase of a benchmark run.
#[derive(Clone, Copy)]
pub struct Phase {
    pub start: Instant,
    pub end: Instant,
    pub tokens: usize,
}

/// The energy side of one model's timed phases: the counter (or why there is none) and the idle
/// draw measured right before them.
pub struct Recorder {
    meter: Result<Meter, String>,
    idle: Result<(f64, Duration), String>,
}

impl Recorder {
    /// Opens the adapter's counter and, where there is one, measures the idle draw for
    /// [`IDLE_WINDOW`]: call it right before the timed phases.
    pub fn start(ctx: &Context) -> Recorder {
        let meter = Meter::open(ctx);
        let idle = match &meter {
            Ok(meter) => {
                let start = Instant::now();
                std::thread::sleep(IDLE_WINDOW);
                let end = Instant::now();
                meter
                    .joules_between(start, end)
                    .map(|joules| (joules / (end - start).as_secs_f64(), end - start))
            }
            Err(reason) => Err(reason.clone()),
        };
        Recorder { meter, idle }
    }

    /// `energy` of the report: per phase the measured joules, the idle draw's share of them and
    /// joules per token with and without it; or `counter: null` and the reason.
    pub fn report(&self, prefill: Phase, decode: Phase) -> Value {
        self.measured(prefill, decode)
            .unwrap_or_else(|reason| json!({ "counter": null, "no_counter": reason }))
    }

    fn measured(&self, prefill: Phase, decode: Phase) -> Result<Value, String> {
        let meter = self.meter.as_ref().map_err(Clone::clone)?;
        let &(idle_w, idle_window) = self.idle.as_ref().map_err(Clone::clone)?;
        let phase = |phase: Phase| -> Result<Value, String> {
            let joules = meter.joules_between(phase.start, phase.end)?;
            let seconds = (phase.end - phase.start).as_secs_f64();
            let idle_joules = idle_w * seconds;
            let tokens = phase.tokens as f64;
            Ok(json!({
                "seconds": seconds,
                "tokens": phase.tokens,
                "joules": joules,
                "idle_joules": idle_joules,
                "j_per_token": joules / tokens,
                "above_idle_j_per_token": (joules - idle_joules) / tokens,
            }))
        };
        Ok(json!({
            "counter": meter.counter,
            "idle_w": idle_w,
            "idle_window_s": idle_window.as_secs_f64(),
            "prefill": phase(prefill)?,
            "decode": phase(decode)?,
        }))
    }
}

/// `energy_ternary_over_dense` of a comparison: the estimate's ratio always, the measured ratios
/// where both models were measured (else `measured: null` and the reason).
pub fn ratios(ternary: &Value, dense: &Value, estimate: &Value) -> Value {
    let mut measured = serde_json::Map::new();
    for phase in ["prefill", "decode"] {
        for field in ["j_per_token", "above_idle_j_per_token"] {
            if let (Some(t), Some(d)) =
                (ternary[phase][field].as_f64(), dense[phase][field].as_f64())
            {
                measured.insert(format!("{phase}_{field}"), json!(t / d));
            }
        }
    }
    let mut out = json!({ "estimate": estimate["ternary_over_dense"] });
    if measured.is_empty() {
        out["measured"] = Value::Null;
        out["no_counter"] = ternary["no_counter"]
            .as_str()
            .or(dense["no_counter"].as_str())
            .map_or(json!("no phase was measured"), |r| json!(r));
    } else {
        out["measured"] = Value::Object(measured);
    }
    out
}

// ---- NVIDIA --------------------------------------------------------------------------------

fn open_nvml(adapter_device: u32) -> Result<(String, Source), String> {
    let nvml = nvml_wrapper::Nvml::init().map_err(|e| e.to_string())?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        let pci = device.pci_info().map_err(|e| e.to_string())?;
        gpus.push((index, pci.pci_device_id));
    }
    let index = pick_gpu(&gpus, adapter_device)
        .ok_or_else(|| format!("no NVML device has PCI device id {adapter_device:#06x}"))?;
    let (counter, energy_counter) = {
        let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        let name = device.name().unwrap_or_else(|_| "?".into());
        if device.total_energy_consumption().is_ok() {
            (format!("NVML total energy of GPU {index} ({name})"), true)
        } else {
            device.power_usage().map_err(|e| e.to_string())?;
            (
                format!("NVML power of GPU {index} ({name}), integrated"),
                false,
            )
        }
    };
    Ok((
        counter,
        Source::Nvml {
            nvml: Box::new(nvml),
            index,
            energy_counter,
        },
    ))
}

fn open_nvidia_smi(adapter_device: u32) -> Result<Meter, String> {
    let listing = Command::new("nvidia-smi")
        .args(["--query-gpu=index,pci.device_id", "--format=csv,noheader"])
        .output()
        .map_err(|e| format!("running nvidia-smi: {e}"))?;
    if !listing.status.success() {
        return Err(format!("nvidia-smi failed ({})", listing.status));
    }
    let gpus = parse_nvidia_smi_gpus(&String::from_utf8_lossy(&listing.stdout))?;
    let index = pick_gpu(&gpus, adapter_device)
        .ok_or_else(|| format!("no GPU has PCI device id {adapter_device:#06x}"))?;
    let mut child = Command::new("nvidia-smi")
        .args([
            "--query-gpu=power.draw",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
            &format!("-lms={NVIDIA_SMI_INTERVAL_MS}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running nvidia-smi: {e}"))?;
    let stdout = child.stdout.take().ok_or("nvidia-smi has no stdout")?;
    let counter = format!("nvidia-smi power.draw of GPU {index}, integrated");
    Meter::start(
        counter,
        Source::NvidiaSmi(BufReader::new(stdout).lines()),
        Some(child),
    )
}

/// `nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits`: one line of watts.
fn parse_watts(line: &str) -> Result<f64, String> {
    let text = line.trim();
    text.parse::<f64>()
        .ok()
        .filter(|w| w.is_finite() && *w >= 0.0)
        .ok_or_else(|| format!("power.draw is {text:?}")) // e.g. "[N/A]", "[Not Supported]"
}

/// `nvidia-smi --query-gpu=index,pci.device_id --format=csv,noheader`: `0, 0x233010DE` per GPU.
fn parse_nvidia_smi_gpus(text: &str) -> Result<Vec<(u32, u32)>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let bad = || format!("unexpected nvidia-smi line {line:?}");
            let (index, id) = line.split_once(',').ok_or_else(bad)?;
            let index = index.trim().parse::<u32>().map_err(|_| bad())?;
            let id = id.trim();
            let hex = id
                .strip_prefix("0x")
                .or(id.strip_prefix("0X"))
                .ok_or_else(bad)?;
            Ok((index, u32::from_str_radix(hex, 16).map_err(|_| bad())?))
        })
        .collect()
}

/// The GPU whose PCI id (device << 16 | vendor, as NVML and nvidia-smi give it) is the adapter's
/// device id; the only one if there is one GPU (some drivers report no device id to wgpu).
fn pick_gpu(gpus: &[(u32, u32)], adapter_device: u32) -> Option<u32> {
    match gpus {
        [(index, _)] => Some(*index),
        _ => gpus
            .iter()
            .find(|&&(_, id)| id >> 16 == adapter_device)
            .map(|&(index, _)| index),
    }
}

// ---- RAPL ----------------------------------------------------------------------------------

/// One RAPL zone's counter, unwrapped.
#[derive(Debug)]
struct RaplZone {
    name: String,
    energy_file: PathBuf,
    max_range_uj: u64,
    last_uj: u64,
    total_uj: u64,
}

impl RaplZone {
    /// Energy since the zone was opened, in µJ.
    fn read(&mut self) -> Result<u64, String> {
        let now = read_counter(&self.energy_file)?;
        self.total_uj += rapl_delta_uj(self.last_uj, now, self.max_range_uj);
        self.last_uj = now;
        Ok(self.total_uj)
    }
}

/// The package zones (`intel-rapl:N`, `package-N`) and their DRAM subzones under `root`: what a
/// CPU adapter spends. `psys` (the whole platform, overlapping them) and the core/uncore subzones
/// (inside the package) are left out so nothing is counted twice.
fn rapl_zones(root: &Path) -> Result<Vec<RaplZone>, String> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        format!(
            "no RAPL counter: {}: {e} (needs Linux's powercap intel_rapl driver, usually on bare metal)",
            root.display()
        )
    })?;
    let mut zones = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let Ok(name) = std::fs::read_to_string(dir.join("name")) else {
            continue;
        };
        if !is_counted_rapl_zone(&dir_name, name.trim()) {
            continue;
        }
        let energy_file = dir.join("energy_uj");
        let last_uj = read_counter(&energy_file)?;
        let max_range_uj = read_counter(&dir.join("max_energy_range_uj"))?;
        zones.push(RaplZone {
            name: name.trim().to_string(),
            energy_file,
            max_range_uj,
            last_uj,
            total_uj: 0,
        });
    }
    if zones.is_empty() {
        return Err(format!("no RAPL package zone under {}", root.display()));
    }
    zones.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(zones)
}

/// `intel-rapl:0` named `package-0`, or `intel-rapl:0:2` named `dram`.
fn is_counted_rapl_zone(dir_name: &str, name: &str) -> bool {
    let Some(path) = dir_name.strip_prefix("intel-rapl:") else {
        return false; // intel-rapl-mmio duplicates the package counter
    };
    match path.matches(':').count() {
        0 => name.starts_with("package-"),
        1 => name == "dram",
        _ => false,
    }
}

fn read_counter(file: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (root only since the PLATYPUS fix, CVE-2020-8694)"
        } else {
            ""
        };
        format!("{}: {e}{hint}", file.display())
    })?;
    parse_counter(&text).ok_or_else(|| format!("{}: not a counter: {text:?}", file.display()))
}

/// A powercap counter file: one unsigned integer and a newline.
fn parse_counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// µJ between two reads of a counter that wraps to 0 after `max_range_uj`.
fn rapl_delta_uj(before: u64, now: u64, max_range_uj: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        max_range_uj.saturating_sub(before) + now
    }
}

// ---- The estimate --------------------------------------------------------------------------

/// Per-operation energies at 7 nm that the BitNet b1.58 paper uses (Horowitz 2014 ISSCC, scaled
/// to 7 nm as in the BitNet papers), in pJ.
const INT8_ADD_PJ: f64 = 0.007;
const FP16_ADD_PJ: f64 = 0.16;
const FP16_MUL_PJ: f64 = 0.34;
/// DRAM energy per byte moved: HBM2-class, ≈ 3.9 pJ/bit (O'Connor et al., MICRO 2017).
const DRAM_PJ_PER_BYTE: f64 = 31.2;

/// The dimensions that set the work of a decoded token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub hidden: usize,
    /// Query heads × head dim.
    pub attention: usize,
    /// Key/value heads × head dim.
    pub kv: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub vocab: usize,
}

impl Dims {
    pub fn of_config(c: &ModelConfig) -> Dims {
        Dims {
            hidden: c.hidden_size,
            attention: c.num_heads * c.head_dim,
            kv: c.num_kv_heads * c.head_dim,
            intermediate: c.intermediate_size,
            layers: c.num_layers,
            vocab: c.vocab_size,
        }
    }

    pub fn of_shape(s: Shape) -> Dims {
        Dims {
            hidden: s.hidden,
            attention: s.hidden,
            kv: s.hidden / s.heads * s.kv_heads,
            intermediate: s.intermediate,
            layers: s.layers,
            vocab: s.vocab,
        }
    }

    /// (rows, cols) of one layer's fused projections: q|k|v, o, gate|up, down.
    fn projections(&self) -> [(usize, usize); 4] {
        [
            (self.attention + 2 * self.kv, self.hidden),
            (self.hidden, self.attention),
            (2 * self.intermediate, self.hidden),
            (self.hidden, self.intermediate),
        ]
    }

    /// Weights of all layers' projections: one operation each per decoded token.
    fn projection_weights(&self) -> u64 {
        let layer: usize = self.projections().iter().map(|(r, c)| r * c).sum();
        (layer * self.layers) as u64
    }

    /// Bytes of the layers' ternary projections in the engine layout: 2-bit codes (16 per u32
    /// word, rows padded to whole words) and one f32 scale per row.
    pub fn ternary_weight_bytes(&self) -> u64 {
        let layer: usize = self
            .projections()
            .iter()
            .map(|&(rows, cols)| rows * (words_per_row(cols) * 4 + 4))
            .sum();
        (layer * self.layers) as u64
    }
}

/// The estimate for a model of `dims`, ternary and dense f16: per decoded token, the projections'
/// arithmetic (an int8 addition per ternary weight, an FP16 multiply and add per dense one), the
/// bf16 LM head's (FP16 multiply-adds in both) and every weight byte read once from DRAM.
pub fn estimate(dims: Dims) -> Value {
    let weights = dims.projection_weights() as f64;
    let lm_head = (dims.vocab * dims.hidden) as f64;
    let lm_head_arithmetic = lm_head * (FP16_MUL_PJ + FP16_ADD_PJ);
    let kind = |projection_pj: f64, projection_bytes: f64| {
        let bytes = projection_bytes + 2.0 * lm_head;
        let memory_pj = bytes * DRAM_PJ_PER_BYTE;
        let total_pj = projection_pj + lm_head_arithmetic + memory_pj;
        json!({
            "projection_arithmetic_pj": projection_pj,
            "lm_head_arithmetic_pj": lm_head_arithmetic,
            "weight_bytes_read": bytes,
            "memory_pj": memory_pj,
            "j_per_token": total_pj * 1e-12,
        })
    };
    let ternary_projection_pj = weights * INT8_ADD_PJ;
    let dense_projection_pj = weights * (FP16_MUL_PJ + FP16_ADD_PJ);
    let ternary = kind(ternary_projection_pj, dims.ternary_weight_bytes() as f64);
    let dense = kind(dense_projection_pj, 2.0 * weights);
    let ratio = ternary["j_per_token"].as_f64().unwrap_or(f64::NAN)
        / dense["j_per_token"].as_f64().unwrap_or(f64::NAN);
    json!({
        "note": "an estimate, not a measurement: the BitNet b1.58 paper's arithmetic-energy model \
                 at 7 nm plus weight traffic, per decoded token (batch 1)",
        "assumptions": {
            "int8_add_pj": INT8_ADD_PJ,
            "fp16_add_pj": FP16_ADD_PJ,
            "fp16_mul_pj": FP16_MUL_PJ,
            "arithmetic_source": "Horowitz 2014 ISSCC, scaled to 7 nm as used in the BitNet b1.58 paper",
            "dram_pj_per_byte": DRAM_PJ_PER_BYTE,
            "dram_source": "HBM2, ~3.9 pJ/bit (O'Connor et al., Fine-Grained DRAM, MICRO 2017)",
            "counted": "one int8 add per ternary weight, one FP16 mul + add per dense f16 weight, \
                        FP16 mul + add per bf16 LM-head weight in both; every weight byte read once",
            "left_out": "attention and the KV cache, norms, activations, per-row scales, caches \
                         (weights are assumed to stream from DRAM every token)",
        },
        "projection_weights": weights,
        "ternary": ternary,
        "dense": dense,
        "arithmetic_ternary_over_dense": ternary_projection_pj / dense_projection_pj,
        "ternary_over_dense": ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_nvidia_smi_power_lines_parse_or_say_why_not() {
        assert_eq!(parse_watts("71.42\n"), Ok(71.42));
        assert_eq!(parse_watts(" 300.00"), Ok(300.0));
        assert!(parse_watts("[N/A]").unwrap_err().contains("[N/A]"));
        assert!(parse_watts("[Not Supported]").is_err());
        assert!(parse_watts("-1").is_err());
        assert!(parse_watts("").is_err());
    }

    #[test]
    fn energy_nvidia_smi_gpu_listing_picks_the_adapters_gpu() {
        let gpus = parse_nvidia_smi_gpus("0, 0x233510DE\n1, 0x20B010DE\n\n").unwrap();
        assert_eq!(gpus, vec![(0, 0x2335_10de), (1, 0x20b0_10de)]);
        assert_eq!(pick_gpu(&gpus, 0x20b0), Some(1));
        assert_eq!(pick_gpu(&gpus, 0x1234), None);
        // One GPU: it, whatever the adapter reports.
        assert_eq!(pick_gpu(&gpus[..1], 0), Some(0));
        assert!(parse_nvidia_smi_gpus("0, 233510DE").is_err());
        assert!(parse_nvidia_smi_gpus("GPU 0").is_err());
    }

    #[test]
    fn energy_rapl_counters_parse_and_unwrap() {
        assert_eq!(parse_counter("123456789\n"), Some(123_456_789));
        assert_eq!(parse_counter("x"), None);
        assert_eq!(rapl_delta_uj(1_000, 5_000, 262_143_328_850), 4_000);
        // Wrapped: from 100 µJ below the range's end to 900 past 0.
        assert_eq!(rapl_delta_uj(262_143_328_750, 900, 262_143_328_850), 1_000);
        assert!(is_counted_rapl_zone("intel-rapl:0", "package-0"));
        assert!(is_counted_rapl_zone("intel-rapl:1", "package-1"));
        assert!(is_counted_rapl_zone("intel-rapl:0:2", "dram"));
        assert!(!is_counted_rapl_zone("intel-rapl:0:0", "core"));
        assert!(!is_counted_rapl_zone("intel-rapl:1", "psys"));
        assert!(!is_counted_rapl_zone("intel-rapl-mmio:0", "package-0"));
    }

    #[test]
    fn energy_rapl_zones_are_read_from_a_powercap_tree() {
        let root = std::env::temp_dir().join(format!("tern-powercap-{}", std::process::id()));
        let zone = |dir: &str, name: &str, energy: u64| {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
            std::fs::write(dir.join("energy_uj"), format!("{energy}\n")).unwrap();
            std::fs::write(dir.join("max_energy_range_uj"), "1000000\n").unwrap();
        };
        zone("intel-rapl:0", "package-0", 999_000);
        zone("intel-rapl:0:0", "core", 5);
        zone("intel-rapl:0:2", "dram", 10);
        zone("intel-rapl:1", "psys", 7);
        let mut zones = rapl_zones(&root).unwrap();
        let names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(names, ["dram", "package-0"]);
        // The package wraps (999 000 → 1 000 000 → 500: 1 500 µJ), DRAM adds 20 µJ.
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "500\n").unwrap();
        std::fs::write(root.join("intel-rapl:0:2/energy_uj"), "30\n").unwrap();
        let mut source = Source::Rapl(std::mem::take(&mut zones));
        let Ok(Reading::Joules(joules)) = source.read() else {
            panic!("RAPL gave no joules");
        };
        assert!((joules - 1_520e-6).abs() < 1e-15, "{joules}");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(rapl_zones(&root).unwrap_err().contains("no RAPL counter"));
    }

    #[test]
    fn energy_timeline_integrates_power_and_interpolates() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut power = Timeline::default();
        power.push(at(0), Reading::Watts(100.0));
        power.push(at(1000), Reading::Watts(300.0)); // 200 J
        power.push(at(2000), Reading::Watts(300.0)); // 300 J more
        assert_eq!(power.joules_at(at(1000)), Some(200.0));
        assert_eq!(power.joules_at(at(1500)), Some(350.0));
        assert_eq!(power.joules_at(at(2001)), None);
        let mut counter = Timeline::default();
        counter.push(at(0), Reading::Joules(10.0));
        counter.push(at(100), Reading::Joules(12.0));
        let quarter = counter.joules_at(at(25)).unwrap();
        assert!((quarter - 10.5).abs() < 1e-12, "{quarter}");
        assert_eq!(counter.joules_at(t0 - Duration::from_millis(1)), None);
    }

    #[test]
    fn energy_ratios_divide_measured_phases_or_give_the_reason() {
        let estimate = json!({"ternary_over_dense": 0.25});
        let measured = |d: f64| {
            json!({"counter": "x", "prefill": {"j_per_token": 2.0 * d, "above_idle_j_per_token": d},
                   "decode": {"j_per_token": 4.0 * d, "above_idle_j_per_token": 3.0 * d}})
        };
        let r = ratios(&measured(1.0), &measured(4.0), &estimate);
        assert_eq!(r["estimate"], 0.25);
        assert_eq!(r["measured"]["decode_j_per_token"], 0.25);
        assert_eq!(r["measured"]["prefill_above_idle_j_per_token"], 0.25);
        let none = json!({"counter": null, "no_counter": "no RAPL counter"});
        let r = ratios(&none, &none, &estimate);
        assert_eq!(r["measured"], Value::Null);
        assert_eq!(r["no_counter"], "no RAPL counter");
    }

    /// hidden 4, 4 query and 2 kv dims, intermediate 8, one layer, vocabulary 10, by hand:
    /// q|k|v 8×4 = 32, o 4×4 = 16, gate|up 16×4 = 64, down 4×8 = 32 → 144 projection weights;
    /// the LM head 10×4 = 40.
    #[test]
    fn energy_estimate_of_a_hand_computed_shape() {
        let dims = Dims {
            hidden: 4,
            attention: 4,
            kv: 2,
            intermediate: 8,
            layers: 1,
            vocab: 10,
        };
        assert_eq!(dims.projection_weights(), 144);
        // Every row fits one u32 word of codes (≤ 16 columns) + an f32 scale: 8 bytes a row,
        // 8 + 4 + 16 + 4 = 32 rows.
        assert_eq!(dims.ternary_weight_bytes(), 256);
        let e = estimate(dims);
        let close = |v: &Value, want: f64| {
            let got = v.as_f64().unwrap();
            assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        };
        // Ternary: 144 int8 adds × 0.007 pJ; dense: 144 × (0.34 + 0.16) pJ.
        close(&e["ternary"]["projection_arithmetic_pj"], 1.008);
        close(&e["dense"]["projection_arithmetic_pj"], 72.0);
        // The LM head: 40 × 0.5 pJ in both.
        close(&e["ternary"]["lm_head_arithmetic_pj"], 20.0);
        // Bytes: 256 + 80 (bf16 LM head) ternary, 288 + 80 dense; × 31.2 pJ/byte.
        close(&e["ternary"]["weight_bytes_read"], 336.0);
        close(&e["dense"]["memory_pj"], 368.0 * 31.2);
        close(
            &e["ternary"]["j_per_token"],
            (1.008 + 20.0 + 336.0 * 31.2) * 1e-12,
        );
        close(
            &e["dense"]["j_per_token"],
            (72.0 + 20.0 + 368.0 * 31.2) * 1e-12,
        );
        close(
            &e["ternary_over_dense"],
            (1.008 + 20.0 + 10_483.2) / (72.0 + 20.0 + 11_481.6),
        );
        // The paper's 71.4× for the matrix multiplications at 7 nm.
        close(&e["arithmetic_ternary_over_dense"], 0.007 / 0.5);
        assert!((1.0 / e["arithmetic_ternary_over_dense"].as_f64().unwrap() - 71.43).abs() < 0.01);
    }

    #[test]
    fn energy_dims_of_a_shape_match_its_config_layout() {
        let dims = Dims::of_shape(Shape::BITNET_2B4T);
        assert_eq!((dims.attention, dims.kv), (2560, 640));
        assert_eq!(
            dims.projection_weights(),
            Shape::BITNET_2B4T.projection_parameters()
        );
    }
}
