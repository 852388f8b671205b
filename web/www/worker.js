// The engine's thread: loads the wasm package and one model, runs chat requests and streams their
// tokens back, so the page stays responsive while the GPU works.
//
// Page → worker: {type: "load", url, maxContext} | {type: "chat", messages, options} |
//                {type: "stop"} | {type: "reset"} | {type: "cache-size"} | {type: "clear-cache"}
// Worker → page: {type: "progress", loaded, total} | {type: "loaded", info} | {type: "cache", bytes} |
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

// The model in use stays loaded until the new one has loaded (a failed load keeps it: `kept`).
async function load({ url, maxContext }) {
  try {
    await wasmReady;
    const problem = await webgpuProblem();
    if (problem) return post({ type: "error", during: "load", kept: engine !== null, ...problem });
    let lastPost = 0;
    const loaded = await Engine.load(url, {
      maxContext,
      onProgress: (loaded, total) => {
        // At most ~20 updates a second: the bar does not need every chunk.
        const now = performance.now();
        if (now - lastPost > 50 || loaded === total) {
          lastPost = now;
          post({ type: "progress", loaded, total });
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
