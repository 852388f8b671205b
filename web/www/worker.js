// The engine's thread: loads the wasm package and one model, runs chat requests and streams their
// tokens back, so the page stays responsive while the GPU works.
//
// Page → worker: {type: "load", url, maxContext} | {type: "chat", messages, options} |
//                {type: "stop"} | {type: "reset"} | {type: "cache-size"} | {type: "clear-cache"}
// Worker → page: {type: "progress", loaded, total, known (the total is all files', from the start)} | {type: "loaded", info} | {type: "cache", bytes} |
//                {type: "token", text, pieces} | {type: "done", text, stats, timing} |
//                {type: "error", during, kind, message, kept (a load: the previous model is still in use)}
import init, { Engine } from "../pkg/tern.js";
import { classifyError } from "./errors.js";

const wasmReady = init();
let engine = null;
let generation = null; // the AbortController of the chat in progress

const post = (message) => self.postMessage(message);
const fail = (during, error) => post({ type: "error", during, ...classifyError(error) });

// Why this browser cannot run the engine, before downloading anything.
async function webgpuProblem() {
  if (!("gpu" in navigator) || !navigator.gpu) {
    return { kind: "no-webgpu", message: "navigator.gpu is missing in the worker" };
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    return { kind: "no-adapter", message: "navigator.gpu.requestAdapter() returned null" };
  }
  return null;
}

// The bytes kept in the download cache (Cache Storage), after clearing it when asked.
async function reportCache(clear) {
  try {
    await wasmReady;
    if (clear) await Engine.clearCache();
    post({ type: "cache", bytes: await Engine.cacheBytes() });
  } catch (error) {
    fail("cache", error);
  }
}

// The package's download cache (web/src/cache.rs): small files whole under their URL (a 404 as an
// entry marked absent), weight files in blocks under `URL?tern-block=I&of=BYTES` with the length.
const CACHE_NAME = "tern-models-v1";
// What the engine reads from a model directory (engine/src/format/discovery.rs; a chat_template.jinja
// it may also read is small enough to leave out).
const DIRECTORY_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
const HUB = "https://huggingface.co";

/** The URLs of the files a load of `model` obtains, where they can be told in advance. */
function modelFiles(model) {
  let url = model;
  if (!/^https?:/.test(model)) {
    const [owner, name, ...file] = model.split("/");
    if (!owner || !name) return [];
    url = `${HUB}/${owner}/${name}/resolve/main${file.length ? `/${file.join("/")}` : ""}`;
  }
  if (/\.gguf$/i.test(new URL(url).pathname)) return [url];
  return DIRECTORY_FILES.map((file) => `${url.replace(/\/+$/, "")}/${file}`);
}

/** A file's length from the download cache, else from a HEAD request; null when not known. */
async function fileLength(url, cache, keys) {
  // A side file may be absent (0 bytes); absent weights are not known here (shards: totalUpFront).
  const absent = url.endsWith(".json") ? 0 : null;
  const block = keys.find((key) => key.startsWith(`${url}?tern-block=`));
  if (block) return Number((await cache.match(block)).headers.get("x-tern-file-length")) || null;
  const whole = await cache?.match(url);
  if (whole) return whole.headers.has("x-tern-absent") ? absent : (await whole.blob()).size;
  const response = await fetch(url, { method: "HEAD" });
  if (response.status === 404) return absent;
  const length = response.headers.get("content-length");
  return response.ok && length !== null ? Number(length) : null;
}

/** The URLs of a sharded model's index and shards (from the index, which the engine reads too). */
async function shardFiles(base, cache) {
  const index = `${base}/model.safetensors.index.json`;
  const response = (await cache?.match(index)) ?? (await fetch(index));
  if (!response.ok || response.headers.has("x-tern-absent")) return null;
  const shards = new Set(Object.values((await response.json()).weight_map ?? {}));
  return [index, ...[...shards].map((shard) => `${base}/${shard}`)];
}

/**
 * The bytes a load of `model` obtains, known before it starts so the page's bar has its total from
 * the first update (the engine learns each file's size only as it opens it). 0 when not known (a
 * server that does not say): the bar then counts bytes without a fraction.
 */
async function totalUpFront(model) {
  try {
    const cache = self.caches ? await caches.open(CACHE_NAME) : null;
    const keys = cache ? (await cache.keys()).map((request) => request.url) : [];
    const length = (url) => fileLength(url, cache, keys);
    let files = modelFiles(model);
    const weights = files.find((url) => url.endsWith("/model.safetensors"));
    const base = weights?.slice(0, -"/model.safetensors".length);
    // A cached index says the model is sharded without asking for model.safetensors.
    const index = weights && (await cache?.match(`${base}/model.safetensors.index.json`));
    const shardedInCache = index && !index.headers.has("x-tern-absent");
    if (shardedInCache) files = files.filter((url) => url !== weights);
    let lengths = await Promise.all(files.map(length));
    if (weights && (shardedInCache || lengths[files.indexOf(weights)] === null)) {
      const shards = await shardFiles(base, cache);
      if (!shards) return 0;
      lengths = [...lengths.filter((_, i) => files[i] !== weights), ...(await Promise.all(shards.map(length)))];
    }
    return files.length && lengths.every((n) => n !== null) ? lengths.reduce((a, b) => a + b, 0) : 0;
  } catch {
    return 0;
  }
}

// The model in use stays loaded until the new one has loaded (a failed load keeps it: `kept`).
async function load({ url, maxContext }) {
  try {
    await wasmReady;
    const problem = await webgpuProblem();
    if (problem) return post({ type: "error", during: "load", kept: engine !== null, ...problem });
    const upFront = await totalUpFront(url);
    post({ type: "progress", loaded: 0, total: upFront, known: upFront > 0 });
    let lastPost = 0;
    const loaded = await Engine.load(url, {
      maxContext,
      onProgress: (bytes, total) => {
        // At most ~20 updates a second: the bar does not need every chunk.
        const now = performance.now();
        if (now - lastPost > 50 || bytes === total) {
          lastPost = now;
          post({ type: "progress", loaded: bytes, total: Math.max(upFront, total), known: upFront > 0 });
        }
      },
    });
    engine?.dispose();
    engine = loaded;
    post({ type: "loaded", info: engine.info() });
    reportCache(false);
  } catch (error) {
    post({ type: "error", during: "load", kept: engine !== null, ...classifyError(error) });
  }
}

async function chat({ messages, options }) {
  if (!engine) return fail("chat", new Error("no model is loaded"));
  generation = new AbortController();
  const started = performance.now();
  let pieces = 0;
  let firstToken = 0;
  let lastToken = 0;
  try {
    const text = await engine.chat(messages, { ...options, signal: generation.signal }, (piece) => {
      lastToken = performance.now();
      if (pieces === 0) firstToken = lastToken;
      pieces += 1;
      post({ type: "token", text: piece, pieces });
    });
    const stats = engine.lastChat();
    const tokens = stats.generatedTokens;
    post({
      type: "done",
      text,
      stats,
      timing: {
        firstTokenSeconds: pieces ? (firstToken - started) / 1000 : 0,
        // Decode rate over the tokens after the first (the first one includes the prefill).
        decodeTokensPerSecond: tokens > 1 ? ((tokens - 1) * 1000) / (lastToken - firstToken) : 0,
      },
    });
  } catch (error) {
    const problem = classifyError(error);
    // A wasm trap leaves the engine in an unknown state: the model must be loaded again.
    if (problem.kind === "crash" || problem.kind === "device-lost") engine = null;
    post({ type: "error", during: "chat", ...problem });
  } finally {
    generation = null;
  }
}

self.onmessage = ({ data }) => {
  switch (data.type) {
    case "load":
      return load(data);
    case "chat":
      return chat(data);
    case "stop":
      return generation?.abort();
    case "cache-size":
      return reportCache(false);
    case "clear-cache":
      return reportCache(true);
    case "reset":
      try {
        engine?.reset();
      } catch (error) {
        fail("reset", error);
      }
      return;
    default:
      return fail("message", new Error(`unknown request ${data.type}`));
  }
};
