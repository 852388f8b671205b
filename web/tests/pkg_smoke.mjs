// Smoke test of the built npm package (web/pkg, after `cargo xtask wasm`, wasm-opt included) in
// headless Chromium: a page imports tern.js, loads the bitnet-2b4t fixture over HTTP from a local
// server with Engine.load, and checks the greedy continuation of golden prompt p0.
//   NODE_PATH=target/npm/playwright/node_modules node web/tests/pkg_smoke.mjs
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const root = fileURLToPath(new URL("../..", import.meta.url));
const types = { ".js": "text/javascript", ".wasm": "application/wasm", ".html": "text/html", ".json": "application/json" };

// p0 of tests/reference/goldens/bitnet-2b4t.safetensors: its ids and the reference greedy tokens.
const PROMPT = [1019, 39, 895, 821, 892, 0];
const GREEDY_PREFIX = [665, 863, 92, 902, 760, 966, 875, 147];

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html" });
    return res.end("<!doctype html><title>tern smoke</title>");
  }
  const file = path.startsWith("/pkg/") ? join(root, "web", path) : join(root, "tests", path);
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  await page.goto(base);
  const result = await page.evaluate(async ([prompt, n]) => {
    const { default: init, Engine } = await import("/pkg/tern.js");
    await init();
    const progress = [];
    const engine = await Engine.load("/fixtures/bitnet-2b4t", { onProgress: (l, t) => progress.push([l, t]) });
    const ids = await engine.generateIds(new Uint32Array(prompt), { maxNewTokens: n, ignoreEos: true });
    const info = engine.info();
    engine.dispose();
    return { ids: Array.from(ids), progress: progress.at(-1), adapter: info.adapter, gpuBytes: info.gpuBytes };
  }, [PROMPT, GREEDY_PREFIX.length]);
  console.log(JSON.stringify(result));
  if (JSON.stringify(result.ids) !== JSON.stringify(GREEDY_PREFIX)) {
    console.error(`greedy continuation ${result.ids} != reference ${GREEDY_PREFIX}`);
    failed = true;
  }
  if (!result.progress || result.progress[0] !== result.progress[1] || result.progress[0] === 0) {
    console.error(`download progress did not end at the total: ${result.progress}`);
    failed = true;
  }
} finally {
  await browser.close();
  server.close();
}
process.exit(failed ? 1 : 0);
