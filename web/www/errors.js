// What went wrong, in words a person can act on. The engine reports errors as text (tern::Error's
// Display); the kind is read from it so the page can say what to do next.

const KINDS = [
  // The order matters: the first pattern that matches wins (a malformed file's header can
  // mention a limit, so model files come before adapter limits).
  ["device-lost", /device (was )?lost|lost device|DeviceLost/i],
  ["oom", /out of memory|OutOfMemory|could not allocate|cannot allocate|allocation failed|Memory\.grow/i],
  ["context", /context overflow/i],
  // A request that got no answer at all (fetch's TypeError: offline, DNS, connection refused, a
  // cross-origin server without CORS): before "model", since the engine's message names the file.
  [
    "network",
    /failed to fetch|NetworkError|network error|Load failed|ERR_(CONNECTION|NAME|INTERNET|NETWORK|ADDRESS)|connection (refused|reset)/i,
  ],
  [
    "model",
    /download|HTTP \d{3}|not found|safetensors|gguf|config\.json|tokenizer|truncated|unexpected end|too short|shorter than|past the end|header|tensor|field `|not UTF-8|not a model|\.json/i,
  ],
  ["limits", /limit|exceeds? the adapter|largest buffer|needs subgroup|shader-f16/i],
  ["crash", /unreachable|RuntimeError|panicked/i],
];

/** {kind, message} for an error thrown by the engine or the worker. */
export function classifyError(error) {
  const message = error instanceof Error ? error.message || String(error) : String(error);
  const match = KINDS.find(([, pattern]) => pattern.test(message));
  return { kind: match ? match[0] : "other", message };
}

/** The headline and the advice shown for each kind. */
export const EXPLANATIONS = {
  "no-webgpu": {
    title: "WebGPU is not available in this browser",
    hint: "Tern runs the model on your GPU through WebGPU. Use a recent Chrome or Edge (113+), Safari 26+, or Firefox 141+ on Windows; on Linux enable chrome://flags/#enable-unsafe-webgpu.",
  },
  "no-adapter": {
    title: "No GPU adapter",
    hint: "WebGPU is present but the browser offered no GPU (hardware acceleration off, or the driver is blocklisted). Turn on hardware acceleration in the browser settings, update the GPU driver, or try another browser.",
  },
  limits: {
    title: "This GPU's limits are too small for the model",
    hint: "The adapter cannot hold a buffer or binding as large as the model needs. Try a smaller model or another device.",
  },
  oom: {
    title: "Out of memory",
    hint: "The model does not fit in this device's GPU or browser memory. Close other tabs or apps using the GPU, or choose a smaller model.",
  },
  "device-lost": {
    title: "The GPU device was lost",
    hint: "The driver reset or the browser reclaimed the GPU (it can happen after sleep or under memory pressure). Load the model again.",
  },
  model: {
    title: "The model files could not be loaded",
    hint: "Check the model: a Hugging Face repo id (owner/name), a URL of a directory holding config.json, model.safetensors (or an index and shards), tokenizer.json and tokenizer_config.json, or a URL of a .gguf file.",
  },
  network: {
    title: "The model could not be downloaded: no answer from the server",
    hint: "The request got no response: check the network connection and the address. A model on another site must be served with cross-origin requests allowed (CORS). Downloads already made are kept in this browser.",
  },
  context: {
    title: "The conversation is longer than the model's context",
    hint: "Start a new chat, or ask for fewer tokens in the settings.",
  },
  crash: {
    title: "The engine stopped unexpectedly",
    hint: "This is usually the GPU running out of memory or being lost. Load the model again; if it keeps happening, try a smaller model.",
  },
  startup: {
    title: "The engine could not start",
    hint: "The worker or the wasm package failed to load: check that pkg/ was built (cargo xtask wasm) and is served next to www/.",
  },
  other: {
    title: "Something went wrong",
    hint: "The details below say what the engine reported.",
  },
};
