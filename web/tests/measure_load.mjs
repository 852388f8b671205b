// Measures the streaming loader on a real-size checkpoint in headless Chromium: the built package
// (web/pkg, `cargo xtask wasm`) loads a model directory served with HTTP Range support, and the page
// reports wasm memory (WebAssembly.Memory only grows, so its size after the load is the peak), the
// requests sent and the time; then loads again to show the cache serves everything.
//   cargo xtask fixtures --full     # target/fixtures-full: the 2B-4T shape, 1.18 GB model.safetensors
//   NODE_PATH=target/npm/playwright/node_modules node web/tests/measure_load.mjs [model dir]
import { createServer } from "node:http";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const root = fileURLToPath(new URL("../..", import.meta.url));
const modelDir = resolve(process.argv[2] ?? join(root, "target/fixtures-full"));
const types = { ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

let requests = 0;
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html" });
    return res.end("<!doctype html><title>tern load</title>");
  }
  const file = path.startsWith("/pkg/") ? join(root, "web", path) : join(modelDir, path.replace(/^\/model\//, ""));
  if (path.startsWith("/model/")) requests++;
  let size;
  try {
    size = (await stat(file)).size;
  } catch {
    return res.writeHead(404).end();
  }
  const headers = { "content-type": types[extname(file)] ?? "application/octet-stream", "accept-ranges": "bytes" };
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  if (range) {
    const first = Number(range[1]);
    const last = Math.min(range[2] ? Number(range[2]) : size - 1, size - 1);
    res.writeHead(206, { ...headers, "content-length": last - first + 1, "content-range": `bytes ${first}-${last}/${size}` });
    return createReadStream(file, { start: first, end: last }).pipe(res);
  }
  res.writeHead(200, { ...headers, "content-length": size });
  createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}`;
const modelBytes = (await stat(join(modelDir, "model.safetensors"))).size;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  await page.goto(base);
  await page.evaluate(async () => {
    const { default: init } = await import("/pkg/tern.js");
    window.wasm = await init();
  });
  for (const run of ["first load", "reload (cache)"]) {
    const before = requests;
    const r = await page.evaluate(async () => {
      const { Engine } = await import("/pkg/tern.js");
      const memory = () => window.wasm.memory.buffer.byteLength;
      const start = { memory: memory(), time: performance.now() };
      let last = [0, 0];
      const engine = await Engine.load("/model", { maxContext: 64, onProgress: (l, t) => (last = [l, t]) });
      const seconds = (performance.now() - start.time) / 1000;
      const ids = await engine.generateIds(new Uint32Array([1, 2, 3]), { maxNewTokens: 2, ignoreEos: true });
      const gpuBytes = engine.info().gpuBytes;
      engine.dispose();
      return { memoryBefore: start.memory, memoryAfter: memory(), seconds, progress: last, gpuBytes, ids: Array.from(ids) };
    });
    const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
    console.log(`${run}: ${r.seconds.toFixed(1)} s, ${requests - before} requests, wasm memory ` +
      `${mib(r.memoryBefore)} → ${mib(r.memoryAfter)} (model file ${mib(modelBytes)}, ` +
      `${mib(r.gpuBytes)} on the GPU), progress ${r.progress}, generated ${r.ids}`);
  }
  console.log(`cache: ${await page.evaluate(async () => (await import("/pkg/tern.js")).Engine.cacheBytes())} bytes`);
} finally {
  await browser.close();
  server.close();
}
