//! The engine in headless Chromium on the browser's WebGPU adapter (SwiftShader here):
//! `CHROMEDRIVER=/usr/bin/chromedriver cargo test -p tern-web --target wasm32-unknown-unknown`.
//! A kernel against its CPU twin, the bitnet-2b4t fixture against the reference goldens through the
//! JS API (same criteria as natively, `tern_tests::goldens`), streaming chat, abort, download
//! progress and the error for a missing model; the streaming loader against an in-page HTTP server
//! (Range reads in bounded blocks, the download cache, servers without Range, truncated and missing
//! files).
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Float32Array, Promise, Reflect, Uint32Array, Uint8Array};
use safetensors::{Dtype, SafeTensors};
use tern::format::source::{BytesSource, TensorSource};
use tern::gpu::{BufferUsage, Context, ContextOptions, GpuBuffer};
use tern::ops::select::{Argmax, Candidate, TopK};
use tern::ops::{padded_activation_words, rmsnorm_quant::RmsNormQuant, ActStats};
use tern::reference::norm::{quantize_activations, rmsnorm_quant};
use tern::reference::select::{argmax as cpu_argmax, top_k as cpu_top_k};
use tern_web::cache::DownloadCache;
use tern_web::fetch::{HttpFetcher, LoadStats};
use tern_web::loader::{load_checkpoint, Fetcher};
use tern_web::location::ModelLocation;
use tern_web::Engine;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// The files of a model directory (config, weights, tokenizer), compiled into the test.
macro_rules! model_files {
    ($dir:literal) => {
        &[
            model_files!(@file $dir, "config.json"),
            model_files!(@file $dir, "model.safetensors"),
            model_files!(@file $dir, "tokenizer.json"),
            model_files!(@file $dir, "tokenizer_config.json"),
        ]
    };
    (@file $dir:literal, $file:literal) => {
        ($file, include_bytes!(concat!("../../", $dir, "/", $file)).as_slice())
    };
}

/// The bitnet-2b4t fixture directory, served from memory.
const FIXTURE: &[(&str, &[u8])] = model_files!("tests/fixtures/bitnet-2b4t");
const GOLDENS: &[u8] = include_bytes!("../../tests/reference/goldens/bitnet-2b4t.safetensors");
const FIXTURE_BASE: &str = "mem://bitnet-2b4t";
/// The trained model Tern ships, and PyTorch's figures for it (train/evaluate.py).
const TRAINED: &[(&str, &[u8])] = model_files!("models/tern-pydoc-6m");
const TRAINED_GOLDENS: &[u8] =
    include_bytes!("../../tests/reference/goldens/tern-pydoc-6m.safetensors");
const TRAINED_BASE: &str = "mem://tern-pydoc-6m";

/// Model directories served from memory under `mem://<name>/`.
struct MemoryFetcher;

impl Fetcher for MemoryFetcher {
    async fn fetch(&mut self, url: &str) -> tern::Result<Option<Vec<u8>>> {
        let found = [(FIXTURE_BASE, FIXTURE), (TRAINED_BASE, TRAINED)]
            .iter()
            .find_map(|(base, files)| {
                let file = url.strip_prefix(base)?.strip_prefix('/')?;
                files.iter().find(|(name, _)| *name == file)
            });
        Ok(found.map(|(_, bytes)| bytes.to_vec()))
    }

    async fn open(&mut self, url: &str) -> tern::Result<Option<Box<dyn TensorSource>>> {
        let bytes = self.fetch(url).await?;
        Ok(bytes.map(|b| Box::new(BytesSource::new(url, b)) as Box<dyn TensorSource>))
    }
}

async fn context() -> Context {
    Context::new(&ContextOptions::default())
        .await
        .expect("a WebGPU adapter (run Chromium with --enable-unsafe-webgpu)")
}

/// 256 positions of the exact f32 KV cache: the reference comparisons hold the engine to TESTING.md
/// §2's criteria on the exact path, as the native parity tests do.
fn exact_session() -> tern::SessionOptions {
    Engine::session_options(Some(256), Some("f32")).unwrap()
}

async fn fixture_engine() -> Engine {
    memory_engine(FIXTURE_BASE).await
}

async fn memory_engine(base: &str) -> Engine {
    let location = ModelLocation::Directory { base: base.into() };
    let checkpoint = load_checkpoint(&mut MemoryFetcher, &location)
        .await
        .unwrap();
    Engine::from_checkpoint(&context().await, &checkpoint, exact_session())
        .await
        .unwrap_or_else(|e| panic!("{:?}", JsValue::from(e)))
}

async fn resolve(promise: Promise) -> JsValue {
    JsFuture::from(promise)
        .await
        .unwrap_or_else(|e| panic!("{}", tern_web::fetch::js_message(&e)))
}

fn options(json: serde_json::Value) -> JsValue {
    use serde::Serialize;
    json.serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap()
}

/// A deterministic xorshift stream in [-scale, scale).
fn random_f32(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

async fn rmsnorm_quant_gpu(
    ctx: &Context,
    x: &[f32],
    gain: &[f32],
    norm: Option<f32>,
) -> (Vec<i8>, Vec<ActStats>) {
    let k = gain.len();
    let tokens = x.len() / k;
    let words = padded_activation_words(k);
    let kernel = RmsNormQuant::new(ctx);
    let xb = GpuBuffer::from_slice(ctx, "x", x, BufferUsage::Storage).unwrap();
    let gb = GpuBuffer::from_slice(ctx, "gain", gain, BufferUsage::Storage).unwrap();
    let xq = GpuBuffer::new(ctx, "xq", (tokens * words * 4) as u64, BufferUsage::Storage).unwrap();
    let stats = GpuBuffer::new(ctx, "stats", (tokens * 8) as u64, BufferUsage::Storage).unwrap();
    let binding = kernel.bind(ctx, k, norm, &xb, &gb, &xq, &stats).unwrap();
    ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        kernel.dispatch(&mut pass, &binding, tokens as u32);
    })
    .await
    .unwrap();
    let words_out: Vec<u32> = xq.read_vec(ctx).await.unwrap();
    let stats: Vec<ActStats> = stats.read_vec(ctx).await.unwrap();
    let q = words_out[..tokens * words]
        .chunks_exact(words)
        .flat_map(|row| {
            row.iter()
                .flat_map(|w| w.to_le_bytes())
                .map(|b| b as i8)
                .take(k)
                .collect::<Vec<_>>()
        })
        .collect();
    (q, stats[..tokens].to_vec())
}

/// rmsnorm_quant.wgsl on the browser's adapter against `reference::norm`: quantize-only is exact;
/// with the norm, scales agree to 1e-5 relative and codes by at most one (rounding boundaries).
#[wasm_bindgen_test]
async fn rmsnorm_quant_matches_cpu_twin() {
    let ctx = context().await;
    for (tokens, k, seed) in [(1, 256, 1), (3, 768, 2), (5, 100, 3)] {
        let x = random_f32(seed, tokens * k, 3.0);
        let gain: Vec<f32> = random_f32(seed + 100, k, 1.0)
            .iter()
            .map(|g| g + 1.2)
            .collect();

        let (gpu_q, gpu_stats) = rmsnorm_quant_gpu(&ctx, &x, &gain, None).await;
        let (cpu_q, cpu_stats) = quantize_activations(&x, k);
        assert_eq!(gpu_q, cpu_q, "quantize-only codes, k {k}");
        for (g, c) in gpu_stats.iter().zip(&cpu_stats) {
            assert_eq!(g.sum, c.sum, "quantize-only Σq, k {k}");
            assert!(
                (g.inv_scale - c.inv_scale).abs() <= 1e-6 * c.inv_scale,
                "k {k}: {g:?} vs {c:?}"
            );
        }

        let (gpu_q, gpu_stats) = rmsnorm_quant_gpu(&ctx, &x, &gain, Some(1e-5)).await;
        let (cpu_q, cpu_stats) = rmsnorm_quant(&x, &gain, 1e-5);
        for (t, (g, c)) in gpu_stats.iter().zip(&cpu_stats).enumerate() {
            assert!(
                (g.inv_scale - c.inv_scale).abs() <= 1e-5 * c.inv_scale,
                "k {k} token {t}: {g:?} vs {c:?}"
            );
            let row = &gpu_q[t * k..(t + 1) * k];
            assert_eq!(g.sum, row.iter().map(|&v| i32::from(v)).sum::<i32>());
        }
        let worst = gpu_q
            .iter()
            .zip(&cpu_q)
            .map(|(g, c)| (i32::from(*g) - i32::from(*c)).abs())
            .max();
        assert!(worst <= Some(1), "k {k}: codes differ by {worst:?}");
    }
}

/// argmax.wgsl and topk.wgsl (token selection) on the browser's adapter against
/// `reference::select`, with ties (lowest index first) and a row of −∞.
#[wasm_bindgen_test]
async fn selection_matches_cpu_twin() {
    let ctx = context().await;
    let (vocab, rows, k) = (1000, 4, 40);
    let mut logits = random_f32(7, rows * vocab, 5.0);
    logits[vocab + 10] = 9.0;
    logits[vocab + 700] = 9.0;
    logits[2 * vocab..3 * vocab].fill(f32::NEG_INFINITY);
    let lb = GpuBuffer::from_slice(&ctx, "logits", &logits, BufferUsage::Storage).unwrap();
    let argmax_out = GpuBuffer::new(&ctx, "argmax", 4 * rows as u64, BufferUsage::Storage).unwrap();
    let top_k_bytes = (rows * k * size_of::<Candidate>()) as u64;
    let top_k_out = GpuBuffer::new(&ctx, "top-k", top_k_bytes, BufferUsage::Storage).unwrap();
    let argmax = Argmax::new(&ctx);
    let top_k = TopK::new(&ctx);
    let argmax_binding = argmax.bind(&ctx, vocab, &lb, &argmax_out).unwrap();
    let top_k_binding = top_k.bind(&ctx, vocab, k, &lb, &top_k_out).unwrap();
    ctx.run(|encoder| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        argmax.dispatch(&mut pass, &argmax_binding, rows as u32);
        top_k.dispatch(&mut pass, &top_k_binding, rows as u32);
    })
    .await
    .unwrap();
    let gpu: Vec<u32> = argmax_out.read_vec(&ctx).await.unwrap();
    let cpu: Vec<u32> = logits.chunks_exact(vocab).map(cpu_argmax).collect();
    assert_eq!(gpu, cpu, "argmax");
    let gpu: Vec<Candidate> = top_k_out.read_vec(&ctx).await.unwrap();
    let cpu: Vec<Candidate> = logits
        .chunks_exact(vocab)
        .flat_map(|row| cpu_top_k(row, k))
        .collect();
    assert_eq!(gpu, cpu, "top-k");
}

struct GoldenPrompt {
    ids: Vec<u32>,
    logits: Vec<f32>,
    greedy: Vec<u32>,
    greedy_margin: Vec<f32>,
}

fn goldens() -> Vec<GoldenPrompt> {
    let st = SafeTensors::deserialize(GOLDENS).unwrap();
    let data = |key: &str, dtype: Dtype| {
        let t = st.tensor(key).unwrap();
        assert_eq!(t.dtype(), dtype, "{key}");
        t.data().to_vec()
    };
    let ids = |key: &str| -> Vec<u32> {
        data(key, Dtype::I64)
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let floats = |key: &str| -> Vec<f32> {
        data(key, Dtype::F32)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    (0..)
        .take_while(|p| st.tensor(&format!("p{p}.ids")).is_ok())
        .map(|p| GoldenPrompt {
            ids: ids(&format!("p{p}.ids")),
            logits: floats(&format!("p{p}.logits")),
            greedy: ids(&format!("p{p}.greedy")),
            greedy_margin: floats(&format!("p{p}.greedy_margin")),
        })
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Teacher-forced logits of every golden prompt through `engine.logits`, and greedy continuations
/// through `engine.generateIds`, against the reference with TESTING.md §2's criteria (top-1 ≥ 98 %, max |Δ| ≤ 1.5,
/// mean |Δ| ≤ 0.1; greedy identical except after a reference near-tie, margin < 0.25).
#[wasm_bindgen_test]
async fn bitnet_2b4t_matches_reference_goldens() {
    let engine = fixture_engine().await;
    let vocab = 1024;
    let (mut agree, mut rows, mut max_diff, mut sum_diff, mut count) = (0, 0, 0f32, 0f64, 0usize);
    let goldens = goldens();
    for golden in &goldens {
        let logits: Float32Array = resolve(engine.logits(golden.ids.clone()))
            .await
            .unchecked_into();
        let ours = logits.to_vec();
        assert_eq!(ours.len(), golden.logits.len(), "logit count");
        for (a, b) in ours
            .chunks_exact(vocab)
            .zip(golden.logits.chunks_exact(vocab))
        {
            agree += usize::from(argmax(a) == argmax(b));
            rows += 1;
        }
        for (a, b) in ours.iter().zip(&golden.logits) {
            max_diff = max_diff.max((a - b).abs());
            sum_diff += f64::from((a - b).abs());
            count += 1;
        }
    }
    let top1 = agree as f64 / rows as f64;
    let mean = sum_diff / count as f64;
    web_sys::console::log_1(
        &format!(
            "logits: top-1 {:.1} %, max |Δ| {max_diff:.3}, mean |Δ| {mean:.4}",
            100.0 * top1
        )
        .into(),
    );
    assert!(top1 >= 0.98, "top-1 agreement {top1}");
    assert!(max_diff <= 1.5, "max |Δlogit| {max_diff}");
    assert!(mean <= 0.1, "mean |Δlogit| {mean}");

    for (p, golden) in goldens.iter().enumerate() {
        let started = js_sys::Date::now();
        engine.reset().unwrap();
        let opts =
            options(serde_json::json!({"maxNewTokens": golden.greedy.len(), "ignoreEos": true}));
        let ids: Uint32Array = resolve(engine.generate_ids(golden.ids.clone(), opts))
            .await
            .unchecked_into();
        let ours = ids.to_vec();
        web_sys::console::log_1(
            &format!("p{p} greedy: {} ms", js_sys::Date::now() - started).into(),
        );
        assert_eq!(ours.len(), golden.greedy.len(), "p{p} continuation length");
        if let Some(i) = (0..ours.len()).find(|&i| ours[i] != golden.greedy[i]) {
            assert!(
                p != 0 && golden.greedy_margin[i] < 0.25,
                "p{p} greedy parts from the reference at step {i} (margin {}):\nours {ours:?}\nref  {:?}",
                golden.greedy_margin[i],
                golden.greedy
            );
        }
    }
}

/// The trained default model in the browser: its perplexity over the held-out excerpt (256-token
/// windows, each from an empty context) agrees with PyTorch's within 0.5 %, as natively.
#[wasm_bindgen_test]
async fn trained_model_perplexity_matches_pytorch() {
    let engine = memory_engine(TRAINED_BASE).await;
    let st = SafeTensors::deserialize(TRAINED_GOLDENS).unwrap();
    let tensor = |key: &str| st.tensor(key).unwrap().data().to_vec();
    let ids: Vec<u32> = tensor("eval.ids")
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let window = i64::from_le_bytes(tensor("eval.window")[..8].try_into().unwrap()) as usize;
    let reference = f64::from(f32::from_le_bytes(
        tensor("eval.perplexity")[..4].try_into().unwrap(),
    ));
    let (mut nll, mut count) = (0f64, 0usize);
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        let logits: Float32Array = resolve(engine.logits(chunk.to_vec()))
            .await
            .unchecked_into();
        let logits = logits.to_vec();
        let vocab = logits.len() / chunk.len();
        for (row, &next) in logits.chunks_exact(vocab).zip(&chunk[1..]) {
            nll -= tern::generate::log_softmax_at(row, next as usize);
            count += 1;
        }
    }
    let ours = (nll / count as f64).exp();
    web_sys::console::log_1(
        &format!("tern-pydoc-6m perplexity {ours:.4} vs PyTorch {reference:.4}").into(),
    );
    assert!(
        (ours / reference - 1.0).abs() <= 0.005,
        "perplexity {ours} vs PyTorch {reference}"
    );
}

/// `chat` streams pieces whose concatenation is the reply, stops at once when its signal is
/// aborted, and rejects overlapping calls.
#[wasm_bindgen_test]
async fn chat_streams_and_aborts() {
    let engine = fixture_engine().await;
    let messages = options(serde_json::json!([{"role": "user", "content": "Hello there"}]));
    let pieces = Rc::new(RefCell::new(Vec::<String>::new()));
    let seen = pieces.clone();
    let on_token = Closure::<dyn FnMut(String, u32)>::new(move |text: String, _id: u32| {
        seen.borrow_mut().push(text)
    });
    let opts = options(serde_json::json!({"maxNewTokens": 12}));
    let reply = resolve(engine.chat(messages.clone(), opts, on_token.as_ref().clone())).await;
    let reply = reply.as_string().unwrap();
    assert!(!pieces.borrow().is_empty());
    assert_eq!(pieces.borrow().concat(), reply);

    // Overlapping calls: the second is refused while the first runs.
    let first = engine.chat(messages.clone(), JsValue::UNDEFINED, JsValue::UNDEFINED);
    let second = JsFuture::from(engine.logits(vec![1019, 72])).await;
    assert!(tern_web::fetch::js_message(&second.unwrap_err()).contains("busy"));
    resolve(first).await;

    let controller = web_sys::AbortController::new().unwrap();
    controller.abort();
    pieces.borrow_mut().clear();
    let opts = options(serde_json::json!({"maxNewTokens": 50, "ignoreEos": true}));
    Reflect::set(&opts, &"signal".into(), &controller.signal()).unwrap();
    resolve(engine.chat(messages, opts, on_token.as_ref().clone())).await;
    assert_eq!(
        pieces.borrow().len(),
        1,
        "an aborted chat stops after one token"
    );

    engine.dispose();
    let gone = JsFuture::from(engine.logits(vec![1019])).await.unwrap_err();
    assert!(tern_web::fetch::js_message(&gone).contains("disposed"));
}

/// The HTTP fetcher reads a body chunk by chunk and reports progress up to its full size.
#[wasm_bindgen_test]
async fn http_fetcher_reads_whole_body_with_progress() {
    let (_, bytes) = FIXTURE[1];
    let parts = js_sys::Array::of1(&Uint8Array::from(bytes));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).unwrap();
    let url = web_sys::Url::create_object_url_with_blob(&blob).unwrap();
    let reports = Rc::new(RefCell::new(Vec::<(f64, f64)>::new()));
    let seen = reports.clone();
    let on_progress = Closure::<dyn FnMut(f64, f64)>::new(move |loaded, total| {
        seen.borrow_mut().push((loaded, total))
    });
    let mut fetcher = HttpFetcher::new(Some(on_progress.as_ref().clone().unchecked_into()));
    let fetched = fetcher.fetch(&url).await.unwrap().unwrap();
    assert!(fetched == bytes, "fetched bytes differ");
    let last = *reports.borrow().last().unwrap();
    assert_eq!(last, (bytes.len() as f64, bytes.len() as f64));
}

/// `Engine.load` of a directory without config.json names the missing file.
#[wasm_bindgen_test]
async fn load_reports_missing_model() {
    let err = Engine::load("/no-such-model".into(), JsValue::UNDEFINED)
        .await
        .err()
        .expect("loading a missing model fails");
    let message = tern_web::fetch::js_message(&JsValue::from(err));
    assert!(
        message.contains("/no-such-model/config.json") && message.contains("404"),
        "{message}"
    );

    let err = Engine::load("not a model".into(), JsValue::UNDEFINED)
        .await
        .err()
        .unwrap();
    let message = tern_web::fetch::js_message(&JsValue::from(err));
    assert!(message.contains("Hugging Face repo id"), "{message}");
}

/// How the in-page test server answers.
#[derive(Clone, Copy, Default)]
struct ServerBehaviour {
    /// Answer Range requests with the whole file (HTTP 200), as a server without Range support.
    ignores_range: bool,
    /// Send only this many bytes of every model-file body (a connection dropped midway).
    cut_bodies_to: Option<usize>,
    /// Serve model.safetensors cut to this many bytes (a truncated upload).
    truncated_file: Option<usize>,
    /// Leave Content-Range out of 206 answers (a cross-origin server that does not expose it).
    hides_content_range: bool,
}

/// An HTTP server inside the page, as a `fetch(url, init)` function over the fixture files at
/// `SERVER_BASE`, answering `Range: bytes=a-b` with 206 + Content-Range; counts its requests.
struct TestServer {
    fetch: Closure<dyn FnMut(String, JsValue) -> Promise>,
    requests: Rc<RefCell<Vec<String>>>,
}

const SERVER_BASE: &str = "http://fixture.test/bitnet-2b4t";

impl TestServer {
    fn new(behaviour: ServerBehaviour) -> Self {
        let requests = Rc::new(RefCell::new(Vec::new()));
        let log = requests.clone();
        let fetch = Closure::new(move |url: String, init: JsValue| {
            let range = Reflect::get(&init, &"headers".into())
                .ok()
                .and_then(|h| h.dyn_into::<web_sys::Headers>().ok())
                .and_then(|h| h.get("range").ok().flatten());
            let method = Reflect::get(&init, &"method".into())
                .ok()
                .and_then(|m| m.as_string())
                .unwrap_or_else(|| "GET".into());
            log.borrow_mut().push(format!("{method} {url} {range:?}"));
            let file = url
                .strip_prefix(SERVER_BASE)
                .and_then(|f| f.strip_prefix('/'));
            let found = FIXTURE.iter().find(|(name, _)| Some(*name) == file);
            let Some((name, bytes)) = found else {
                return Promise::resolve(&JsValue::from(respond(404, &[], None)));
            };
            let mut bytes = bytes.to_vec();
            let weights = *name == "model.safetensors";
            if let Some(n) = behaviour.truncated_file.filter(|_| weights) {
                bytes.truncate(n);
            }
            let total = bytes.len();
            if method == "HEAD" {
                let headers = [("content-length", total.to_string())];
                return Promise::resolve(&JsValue::from(respond(200, &[], Some(&headers))));
            }
            let requested = range.filter(|_| !behaviour.ignores_range).map(|r| {
                let (a, b) = r.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
                let first: usize = a.parse().unwrap();
                let last = b.parse::<usize>().unwrap().min(total - 1);
                (first, last)
            });
            let (status, mut body, content_range) = match requested {
                Some((first, last)) => (
                    206,
                    bytes[first..=last].to_vec(),
                    Some(format!("bytes {first}-{last}/{total}")),
                ),
                None => (200, bytes, None),
            };
            let length = body.len();
            if let Some(n) = behaviour.cut_bodies_to.filter(|_| weights) {
                body.truncate(n);
            }
            let mut headers = vec![("content-length", length.to_string())];
            if !behaviour.hides_content_range {
                headers.extend(content_range.map(|r| ("content-range", r)));
            }
            Promise::resolve(&JsValue::from(respond(status, &body, Some(&headers))))
        });
        Self { fetch, requests }
    }

    fn fetcher(&self, block_bytes: u64, on_progress: Option<js_sys::Function>) -> HttpFetcher {
        HttpFetcher::with_fetch(self.fetch.as_ref().clone().unchecked_into(), on_progress)
            .block_bytes(block_bytes)
    }

    fn requests(&self) -> usize {
        self.requests.borrow().len()
    }
}

fn respond(status: u16, body: &[u8], headers: Option<&[(&str, String)]>) -> web_sys::Response {
    let init = web_sys::ResponseInit::new();
    init.set_status(status);
    let h = web_sys::Headers::new().unwrap();
    for (name, value) in headers.unwrap_or_default() {
        h.set(name, value).unwrap();
    }
    init.set_headers(&h);
    let mut body = body.to_vec();
    web_sys::Response::new_with_opt_u8_array_and_init(Some(&mut body), &init).unwrap()
}

/// A fresh download cache for one test.
async fn empty_cache(name: &str) -> DownloadCache {
    DownloadCache::delete(name).await.unwrap();
    DownloadCache::open(name)
        .await
        .expect("Cache Storage on the test page")
}

/// The engine loaded from the test server (or the error), and what the load fetched.
async fn load_from(mut fetcher: HttpFetcher) -> (tern::Result<Engine>, LoadStats) {
    let location = ModelLocation::Directory {
        base: SERVER_BASE.into(),
    };
    let engine = match load_checkpoint(&mut fetcher, &location).await {
        Ok(c) => Ok(
            Engine::from_checkpoint(&context().await, &c, exact_session())
                .await
                .unwrap_or_else(|e| panic!("{:?}", JsValue::from(e))),
        ),
        Err(e) => Err(e),
    };
    (engine, fetcher.stats())
}

async fn logits_of(engine: &Engine) -> Vec<f32> {
    let logits: Float32Array = resolve(engine.logits(vec![1019, 39, 895, 821]))
        .await
        .unchecked_into();
    logits.to_vec()
}

fn wasm_memory_bytes() -> f64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    memory
        .buffer()
        .unchecked_into::<js_sys::ArrayBuffer>()
        .byte_length() as f64
}

/// The model streamed by Range requests in 64 KiB blocks gives exactly the logits of the model
/// loaded from memory (so the parity above carries over); no request or engine read exceeds its
/// bound, every byte is downloaded once and progress ends at the total. A second load is served
/// from the cache without a single request, with the same logits.
#[wasm_bindgen_test]
async fn range_loader_streams_blocks_and_reloads_from_cache() {
    const BLOCK: u64 = 64 << 10;
    let expected = logits_of(&fixture_engine().await).await;
    let server = TestServer::new(ServerBehaviour::default());
    let reports = Rc::new(RefCell::new(Vec::<(f64, f64)>::new()));
    let seen = reports.clone();
    let on_progress = Closure::<dyn FnMut(f64, f64)>::new(move |loaded, total| {
        seen.borrow_mut().push((loaded, total))
    });
    let memory_before = wasm_memory_bytes();
    let fetcher = server
        .fetcher(BLOCK, Some(on_progress.as_ref().clone().unchecked_into()))
        .cached(empty_cache("tern-test-range").await);
    let (engine, stats) = load_from(fetcher).await;
    let engine = engine.unwrap();
    let memory_after = wasm_memory_bytes();
    let model_bytes = FIXTURE[1].1.len() as u64;
    let all_bytes: u64 = FIXTURE.iter().map(|(_, b)| b.len() as u64).sum();
    web_sys::console::log_1(
        &format!(
            "range load: {stats:?}; wasm memory {memory_before} → {memory_after} bytes; \
             model file {model_bytes} bytes"
        )
        .into(),
    );
    assert_eq!(logits_of(&engine).await, expected, "logits differ");
    assert!(stats.largest_request <= BLOCK, "{stats:?}");
    // The engine reads one tensor at a time: the largest is the 1024 × 256 bf16 embedding.
    assert!(stats.largest_read <= 1024 * 256 * 2, "{stats:?}");
    assert_eq!(stats.network_bytes, all_bytes, "every byte downloaded once");
    let blocks = model_bytes.div_ceil(BLOCK) as usize;
    // The blocks, config.json, tokenizer.json, tokenizer_config.json.
    assert_eq!(
        server.requests(),
        blocks + 3,
        "{:?}",
        server.requests.borrow()
    );
    let last = *reports.borrow().last().unwrap();
    assert_eq!(last, (all_bytes as f64, all_bytes as f64));

    reports.borrow_mut().clear();
    let fetcher = server
        .fetcher(BLOCK, Some(on_progress.as_ref().clone().unchecked_into()))
        .cached(DownloadCache::open("tern-test-range").await.unwrap());
    let (engine, stats) = load_from(fetcher).await;
    assert_eq!(
        server.requests(),
        blocks + 3,
        "the reload sent requests: {:?}",
        server.requests.borrow()
    );
    assert_eq!(stats.network_bytes, 0);
    assert!(stats.cache_hits as usize >= blocks + 3, "{stats:?}");
    assert_eq!(
        logits_of(&engine.unwrap()).await,
        expected,
        "cached logits differ"
    );
    assert_eq!(*reports.borrow().last().unwrap(), last);
    assert!(DownloadCache::size("tern-test-range").await.unwrap() >= all_bytes as f64);
    assert!(DownloadCache::delete("tern-test-range").await.unwrap());
}

/// A server without Range support: a file within one block is fetched whole and loads; a larger
/// one is refused with an error naming the URL.
#[wasm_bindgen_test]
async fn server_without_range_only_serves_small_files() {
    let server = TestServer::new(ServerBehaviour {
        ignores_range: true,
        ..Default::default()
    });
    let (engine, stats) = load_from(server.fetcher(4 << 20, None)).await;
    assert!(engine.is_ok());
    assert_eq!(stats.largest_request, FIXTURE[1].1.len() as u64);

    let (engine, _) = load_from(server.fetcher(64 << 10, None)).await;
    let message = engine.err().unwrap().to_string();
    assert!(
        message.contains(&format!("{SERVER_BASE}/model.safetensors"))
            && message.contains("ignores HTTP Range"),
        "{message}"
    );
}

/// A server that does not expose Content-Range: the file's length comes from a HEAD request and
/// each block's length is checked against its body.
#[wasm_bindgen_test]
async fn range_loader_without_readable_content_range() {
    let server = TestServer::new(ServerBehaviour {
        hides_content_range: true,
        ..Default::default()
    });
    let cache = empty_cache("tern-test-hidden-range").await;
    let (engine, stats) = load_from(server.fetcher(64 << 10, None).cached(cache)).await;
    assert!(engine.is_ok());
    assert!(DownloadCache::delete("tern-test-hidden-range")
        .await
        .unwrap());
    let heads = server
        .requests
        .borrow()
        .iter()
        .filter(|r| r.starts_with("HEAD"))
        .count();
    assert_eq!(heads, 1, "{:?}", server.requests.borrow());
    assert_eq!(
        stats.network_bytes,
        FIXTURE.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
}

/// A body cut short, a truncated file and a missing weight file give errors naming the URL.
#[wasm_bindgen_test]
async fn range_loader_reports_truncated_and_missing_files() {
    let url = format!("{SERVER_BASE}/model.safetensors");
    let cut = TestServer::new(ServerBehaviour {
        cut_bodies_to: Some(1000),
        ..Default::default()
    });
    let message = load_from(cut.fetcher(64 << 10, None))
        .await
        .0
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&url) && message.contains("truncated download"),
        "{message}"
    );

    let truncated = TestServer::new(ServerBehaviour {
        truncated_file: Some(FIXTURE[1].1.len() / 2),
        ..Default::default()
    });
    let message = load_from(truncated.fetcher(64 << 10, None))
        .await
        .0
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains(&url), "{message}");

    let server = TestServer::new(ServerBehaviour::default());
    let mut fetcher = server.fetcher(64 << 10, None);
    let missing = format!("{SERVER_BASE}/missing.gguf");
    let location = ModelLocation::Gguf {
        url: missing.clone(),
    };
    let message = load_checkpoint(&mut fetcher, &location)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&missing) && message.contains("404"),
        "{message}"
    );
}
