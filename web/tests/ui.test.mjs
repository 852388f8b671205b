// UI test of the chat page (web/www) in headless Chromium on its WebGPU adapter (SwiftShader):
// `cargo xtask web --no-build` serves the page, the built package, the shipped model and the
// bitnet-2b4t fixture; the test checks the model list's order and labels, loads the fixture through
// the UI sampling the progress bar (one total from the start, only rising), checks the streamed
// greedy reply against `tern run` (native) and its Markdown rendering, the renderer on a hostile
// string and a code block (Copy), Regenerate, Edit, the system prompt, the conversations kept across
// a reload (IndexedDB), counts model requests at the server on the reload (none once cached), stops
// a generation midway, clamps out-of-range settings, keeps the loaded model when another fails to
// load, recovers from a failed turn, clears the download cache, checks a screenshot is not blank,
// and checks the error messages for a 404 model, a server that does not answer, a truncated file,
// a file that is not a model, a page without WebGPU (insecure origin) and a browser without a
// WebGPU adapter.
//   NODE_PATH=target/npm/playwright/node_modules node web/tests/ui.test.mjs
// Needs web/pkg (cargo xtask wasm), release/xtask (or TERN_XTASK) and debug/tern (or TERN_BIN) in
// cargo's target directory (CARGO_TARGET_DIR, else target/). Prints the page's decode tokens/s.
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const root = fileURLToPath(new URL("../..", import.meta.url));
const target = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, "target");
const xtask = process.env.TERN_XTASK ?? join(target, "release/xtask");
const tern = process.env.TERN_BIN ?? join(target, "debug/tern");
const fixture = join(root, "tests/fixtures/bitnet-2b4t");
const sharded = join(root, "tests/fixtures/bitnet-2b4t-sharded");
const work = join(root, "target/ui-test");
const screenshotPath = join(root, "target/ui-screenshot.png");
const CHROMIUM_FLAGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const PROMPT = "Hello there";
const REPLY_TOKENS = 24;
const STOP_MAX_TOKENS = 200;
const LOAD_TIMEOUT = 120_000;

const checks = [];
function check(ok, what, detail = "") {
  checks.push({ ok, what });
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? ` — ${detail}` : ""}`);
}

// Broken copies of the fixture for the error paths.
function writeBrokenModels() {
  rmSync(work, { recursive: true, force: true });
  const broken = {};
  for (const name of ["truncated", "not-a-model"]) {
    const dir = join(work, `bitnet-2b4t-${name}`);
    mkdirSync(dir, { recursive: true });
    for (const file of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]) {
      copyFileSync(join(fixture, file), join(dir, file));
    }
    broken[name] = dir;
  }
  const weights = readFileSync(join(fixture, "model.safetensors"));
  writeFileSync(join(broken.truncated, "model.safetensors"), weights.subarray(0, Math.floor(weights.length * 0.6)));
  writeFileSync(join(broken["not-a-model"], "model.safetensors"), "<html>This is a web page, not weights</html>\n".repeat(40));
  return broken;
}

// `cargo xtask web --no-build` on a free port; resolves to its base URL and the request log.
function startServer(models) {
  const args = ["web", "--no-build", "--port", "0", ...models.flatMap((m) => ["--model", m])];
  const server = spawn(xtask, args, { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  const log = [];
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.on("exit", (code) => reject(new Error(`xtask web exited (${code}) before serving`)));
    createInterface({ input: server.stdout }).on("line", (line) => {
      log.push(line);
      const url = line.match(/(http:\/\/127\.0\.0\.1:\d+)\/www\//);
      if (url) resolve({ server, base: url[1], log });
    });
  });
}

/** Requests that reached the server for files of the model at `prefix`. */
function modelRequests(log, prefix) {
  return log.filter((line) => / \/models\//.test(line) && line.includes(` ${prefix}/`));
}

function nativeReply() {
  const run = spawnSync(tern, ["run", "--model", fixture, "--chat", "--prompt", PROMPT, "-n", String(REPLY_TOKENS),
    "--temperature", "0", "--top-p", "1"], { cwd: root, encoding: "utf8" });
  if (run.status !== 0) throw new Error(`tern run failed: ${run.stderr}`);
  return run.stdout.replace(/\n$/, "");
}

async function waitReady(page) {
  await page.waitForFunction(() => ["ready", "idle"].includes(document.body.dataset.state) &&
    (document.body.dataset.state === "ready" || !document.getElementById("error").hidden), null, { timeout: LOAD_TIMEOUT });
  const state = await page.evaluate(() => document.body.dataset.state);
  if (state !== "ready") throw new Error(`the model did not load: ${await page.textContent("#error")}`);
}

async function sendAndWait(page, text) {
  await page.fill("#prompt", text);
  await page.press("#prompt", "Enter");
  const reply = page.locator(".message.assistant").last();
  await reply.and(page.locator("[data-done]")).waitFor({ timeout: LOAD_TIMEOUT });
  return reply;
}

// Decodes the PNG in a page and measures it: a blank or single-colour capture fails.
async function screenshotContent(browser, png) {
  const page = await browser.newPage();
  try {
    return await page.evaluate(async (b64) => {
      const bitmap = await createImageBitmap(await (await fetch(`data:image/png;base64,${b64}`)).blob());
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const context = canvas.getContext("2d");
      context.drawImage(bitmap, 0, 0);
      const pixels = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
      const counts = new Map();
      for (let i = 0; i < pixels.length; i += 4) {
        const key = (pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2];
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
      const total = pixels.length / 4;
      const dominant = Math.max(...counts.values());
      return { width: bitmap.width, height: bitmap.height, colors: counts.size, nonBackground: 1 - dominant / total };
    }, png.toString("base64"));
  } finally {
    await page.close();
  }
}

async function expectError(page, url, kind, mentions) {
  await page.goto(url);
  const error = page.locator("#error");
  await error.waitFor({ state: "visible", timeout: LOAD_TIMEOUT });
  const shown = await page.evaluate(() => ({
    kind: document.getElementById("error").dataset.kind,
    title: document.getElementById("error-title").textContent,
    detail: document.getElementById("error-detail").textContent,
    state: document.body.dataset.state,
    loadEnabled: !document.getElementById("load").disabled,
    newChatEnabled: !document.getElementById("new-chat").disabled,
    status: document.getElementById("status").textContent,
    progressHidden: document.getElementById("progress-box").hidden,
    emptyBubbles: [...document.querySelectorAll(".message .body")].filter((b) => !b.textContent).length,
  }));
  check(shown.kind === kind && mentions.test(shown.detail) && shown.state === "idle" && shown.loadEnabled,
    `${url.split("?")[1]}: "${shown.title}" (${shown.kind}) in the page, model chooser usable`, shown.detail);
  check(!/…/.test(shown.status) && shown.progressHidden && shown.newChatEnabled && shown.emptyBubbles === 0,
    `${url.split("?")[1]}: nothing left in progress (status, bar, New chat, bubbles)`, JSON.stringify(shown));
}

for (const [what, path] of [["xtask (cargo build --release -p xtask)", xtask], ["tern (cargo build -p tern-cli)", tern],
  ["web/pkg (cargo xtask wasm)", join(root, "web/pkg/tern_bg.wasm")]]) {
  if (!existsSync(path)) throw new Error(`${path} is missing: build ${what} first`);
}
// The page's reading of engine errors (web/www/errors.js), on the engine's own messages for the
// paths a test machine cannot provoke (device loss, GPU memory, adapter limits, a wasm trap).
const { classifyError } = await import(new URL("../www/errors.js", import.meta.url));
for (const [message, kind] of [
  ["GPU: device lost during readback", "device-lost"],
  ["GPU: device lost while waiting for work", "device-lost"],
  ["GPU: SwiftShader: Out of memory", "oom"],
  ["RangeError: WebAssembly.Memory.grow(): Maximum memory size exceeded (could not allocate)", "oom"],
  ["GPU: a table row of 2097152 bytes exceeds the binding limit", "limits"],
  ["GPU: model.embed_tokens.weight: 1310720000 bytes exceed the adapter's largest buffer (268435456 bytes)", "limits"],
  ["context overflow: 300 tokens needed, the context holds 256", "context"],
  ["download: https://huggingface.co/x/y/resolve/main/config.json: not found (HTTP 404)", "model"],
  ["https://h/model.safetensors: header: header length 7517702313401935932 exceeds the file (1800 bytes) or the 104857600-byte limit", "model"],
  ["https://h/config.json: field `hidden_size`: missing", "model"],
  ["RuntimeError: unreachable", "crash"],
  ["download: http://127.0.0.1:1/m/config.json: Failed to fetch", "network"],
  ["download: https://huggingface.co/x/y/resolve/main/config.json: NetworkError when attempting to fetch resource.", "network"],
]) {
  const got = classifyError(new Error(message)).kind;
  check(got === kind, `"${message.slice(0, 60)}…" reads as ${kind}`, got === kind ? "" : `got ${got}`);
}

const broken = writeBrokenModels();
const expected = nativeReply();
const shipped = join(root, "models/tern-pydoc-6m");
// The shipped model last on the command line: the page still offers it first.
const { server, base, log } = await startServer([fixture, broken.truncated, broken["not-a-model"], sharded, shipped]);
process.on("exit", () => server.kill());
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: [...CHROMIUM_FLAGS, "--enable-unsafe-webgpu"] });
let pageTokensPerSecond = null;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on("console", (m) => m.type() === "error" && console.log(`[page] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));

  // 1. Load the fixture through the model chooser, watching the progress bar.
  await page.goto(`${base}/www/?temperature=0&topP=1&maxTokens=${REPLY_TOKENS}`);
  await page.waitForFunction(() => document.getElementById("model-input").value.startsWith("/models/"));
  // The trained model Tern ships is offered first and described; a test fixture is labelled as one.
  const offered = await page.evaluate(() => ({
    input: document.getElementById("model-input").value,
    order: [...document.querySelectorAll("#model-suggestions option")].map((o) => o.value),
    labels: Object.fromEntries([...document.querySelectorAll("#model-suggestions option")].map((o) => [o.value, o.textContent])),
  }));
  check(offered.input === "/models/tern-pydoc-6m" && offered.order[0] === "/models/tern-pydoc-6m" &&
    offered.order.indexOf("/models/bitnet-2b4t") > offered.order.indexOf("/models/bitnet-2b4t-truncated"),
    "the shipped trained model is offered first, the test fixture after the others", offered.order.join(" "));
  check(/trained from scratch/.test(offered.labels["/models/tern-pydoc-6m"] ?? ""), "the shipped model says what it is",
    offered.labels["/models/tern-pydoc-6m"]);
  check(/test fixture/.test(offered.labels["/models/bitnet-2b4t"] ?? ""), "the random-weight fixture is labelled as a test fixture",
    offered.labels["/models/bitnet-2b4t"]);
  await page.fill("#model-input", "/models/bitnet-2b4t");
  await page.evaluate(() => {
    window.progressSeen = [];
    new MutationObserver(() => window.progressSeen.push({ text: document.getElementById("progress-text").textContent,
      position: document.getElementById("progress").position }))
      .observe(document.getElementById("progress-text"), { childList: true, characterData: true, subtree: true });
  });
  await page.click("#load");
  await waitReady(page);
  const about = await page.textContent("#model-about");
  check(/test fixture/.test(about), "the loaded fixture is described as a test fixture", about);
  const progressSeen = await page.evaluate(() => window.progressSeen);
  check(progressSeen.some((p) => / of /.test(p.text)), "download progress shown (bytes of total)", progressSeen.at(-1)?.text);
  const fractions = progressSeen.filter((p) => p.position >= 0).map((p) => p.position);
  const totals = new Set(progressSeen.map((p) => p.text.split(" of ")[1]).filter(Boolean));
  check(fractions.length >= 2 && fractions.every((f, i) => i === 0 || f >= fractions[i - 1]) &&
    fractions.slice(0, -1).every((f) => f < 1) && totals.size === 1,
    "one progress bar over all files: the total known from the first update, the bar only rises",
    `${fractions.map((f) => f.toFixed(3)).join(" ")} of ${[...totals].join(", ")}`);
  const firstDownloads = modelRequests(log, "/models/bitnet-2b4t");
  check(firstDownloads.some((l) => l.includes("model.safetensors")), "first load downloads the model",
    `${firstDownloads.length} requests`);
  // The package keeps downloads in Cache Storage once the caching loader is in (web/src/cache.rs).
  const cachesUsed = await page.evaluate(async () => (await caches.keys()).length > 0);

  // 2. A greedy reply, streamed, equal to the native engine's.
  await page.evaluate(() => {
    window.replyTexts = new Set();
    new MutationObserver(() => {
      const last = [...document.querySelectorAll(".message.assistant .body")].at(-1);
      if (last) window.replyTexts.add(last.textContent);
    }).observe(document.getElementById("messages"), { childList: true, characterData: true, subtree: true });
  });
  const reply = await sendAndWait(page, PROMPT);
  const replyText = await reply.getAttribute("data-text");
  const streamedSteps = await page.evaluate(() => window.replyTexts.size);
  check(replyText === expected, "greedy reply equals `tern run --chat` (native)", JSON.stringify(replyText));
  check(streamedSteps >= 5, "the reply streamed token by token", `${streamedSteps} distinct partial texts`);
  const rendered = await reply.evaluate((m) => ({ paragraphs: m.querySelectorAll(".body > p").length,
    text: m.querySelector(".body").textContent.trim() }));
  check(rendered.paragraphs >= 1 && rendered.text.length > 0, "the reply is rendered as Markdown in its bubble",
    JSON.stringify(rendered));
  // The page's renderer on a hostile reply and on Markdown with code (render.js: marked + DOMPurify).
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const hostile = await page.evaluate(async () => {
    const { renderMarkdown } = await import("./render.js");
    const bubble = document.createElement("div");
    document.body.append(bubble);
    renderMarkdown(bubble, "Hi <img src=x onerror=\"window.pwned = 'img'\"> <script>window.pwned = 'script'</script>\n\n" +
      "[link](javascript:window.pwned='link') <a href=\"javascript:window.pwned='a'\" onclick=\"window.pwned='click'\">a</a>" +
      " <iframe src=\"javascript:parent.pwned='iframe'\"></iframe><svg onload=\"window.pwned='svg'\"></svg>");
    for (const link of bubble.querySelectorAll("a")) link.click();
    await new Promise((resolve) => setTimeout(resolve, 300));
    const html = bubble.innerHTML;
    bubble.remove();
    return { html, pwned: window.pwned ?? null };
  });
  check(hostile.pwned === null && !/onerror|onclick|onload|<script|<img|<iframe|javascript:/i.test(hostile.html),
    "a hostile reply renders inert (no handler, script, image, frame or javascript: link)", hostile.html);
  const code = await page.evaluate(async () => {
    const { renderMarkdown } = await import("./render.js");
    const bubble = document.createElement("li");
    bubble.className = "message assistant";
    bubble.innerHTML = "<div class=body></div>";
    document.getElementById("messages").append(bubble);
    renderMarkdown(bubble.firstChild, "# Title\n\n**bold** and `x`\n\n```python\nprint(\"hi\")\n```");
    const result = { h1: bubble.querySelector("h1")?.textContent, strong: bubble.querySelector("strong")?.textContent,
      code: bubble.querySelector("pre code")?.textContent, copy: Boolean(bubble.querySelector("pre > button.copy")) };
    return result;
  });
  await page.click("#messages li:last-child pre > button.copy");
  await page.waitForFunction(() => document.querySelector("#messages li:last-child pre > button.copy").textContent !== "Copy");
  code.copied = await page.evaluate(() => navigator.clipboard.readText());
  await page.evaluate(() => document.querySelector("#messages li:last-child").remove());
  check(code.h1 === "Title" && code.strong === "bold" && code.code === 'print("hi")\n' && code.copy &&
    code.copied === 'print("hi")\n', "Markdown headings, emphasis and code blocks with a working Copy button",
    JSON.stringify(code));
  pageTokensPerSecond = Number(await page.getAttribute("#stats", "data-tokens-per-second"));
  check(pageTokensPerSecond > 0, "tokens/s shown", await page.textContent("#stats"));
  const png = await page.screenshot({ path: screenshotPath });
  const content = await screenshotContent(browser, png);
  check(content.colors >= 16 && content.nonBackground > 0.05, "screenshot is not blank",
    `${content.width}×${content.height}, ${content.colors} colours, ${(100 * content.nonBackground).toFixed(1)} % off the background`);

  // Regenerate the last reply (greedy: the same again), edit a message and send it again, and a
  // system prompt that changes the greedy reply.
  const lastDone = () => page.waitForFunction(() => document.body.dataset.state === "ready" &&
    document.querySelector(".message.assistant:last-child[data-done]"), null, { timeout: LOAD_TIMEOUT });
  await page.click(".message.assistant:last-child .regenerate");
  await lastDone();
  const regenerated = await page.evaluate(() => [...document.querySelectorAll(".message")]
    .map((m) => m.dataset.text ?? m.querySelector(".body").textContent));
  check(regenerated.length === 2 && regenerated[1] === expected, "Regenerate replaces the last reply (greedy: the same one)",
    JSON.stringify(regenerated));
  await page.click(".message.user .edit");
  const editing = { prompt: await page.inputValue("#prompt"), messages: await page.locator(".message").count() };
  check(editing.prompt === PROMPT && editing.messages === 0, "Edit takes the message back into the composer, dropping what follows",
    JSON.stringify(editing));
  await page.fill("#prompt", "Hello again");
  await page.press("#prompt", "Enter");
  await lastDone();
  const edited = await page.evaluate(() => [...document.querySelectorAll(".message")].map((m) => m.dataset.text ?? m.querySelector(".body").textContent));
  check(edited.length === 2 && edited[0] === "Hello again" && edited[1] && edited[1] !== expected,
    "the edited message is sent and answered", JSON.stringify(edited));
  await page.click("#new-chat");
  await page.click("#settings summary");
  await page.fill("#system-prompt", "You are a pirate. Answer every question in rhymes.");
  const withSystem = await (await sendAndWait(page, PROMPT)).locator(".body").textContent();
  check(withSystem !== expected && withSystem.length > 0, "the system prompt is sent (the greedy reply changes)",
    JSON.stringify(withSystem));
  const beforeReload = await page.evaluate(() => [...document.querySelectorAll(".message .body")].map((b) => b.textContent));

  // 3. A fresh page load (with ?model=) must not download the model again, and brings the
  // conversation back (IndexedDB), with the others in the list.
  const mark = log.length;
  await page.goto(`${base}/www/?model=/models/bitnet-2b4t&temperature=0&topP=1&maxTokens=${STOP_MAX_TOKENS}&ignoreEos=1`);
  await waitReady(page);
  const restored = await page.evaluate(() => ({
    messages: [...document.querySelectorAll(".message .body")].map((b) => b.textContent),
    system: document.getElementById("system-prompt").value,
    saved: [...document.getElementById("history").options].filter((o) => o.value).map((o) => o.textContent),
  }));
  check(JSON.stringify(restored.messages) === JSON.stringify(beforeReload) && /pirate/.test(restored.system) &&
    restored.saved.length === 2 && restored.saved.includes("Hello again"),
    "the open conversation and the saved list come back after a reload", JSON.stringify(restored));
  await page.selectOption("#history", { label: "Hello again" });
  await page.waitForFunction(() => document.querySelector(".message.user .body")?.textContent === "Hello again");
  check(await page.locator(".message").count() === 2, "a saved conversation opens from the list");
  const continued = await sendAndWait(page, "And then?");
  check(await page.locator(".message").count() === 4 && await continued.getAttribute("data-tokens") !== null,
    "a reopened conversation goes on after the reload");
  await page.click("#delete-chat");
  await page.waitForFunction(() => document.querySelectorAll(".message").length === 0);
  await page.waitForFunction(() => [...document.getElementById("history").options].filter((o) => o.value).length < 2);
  const afterDelete = await page.evaluate(() => ({ messages: document.querySelectorAll(".message").length,
    saved: [...document.getElementById("history").options].filter((o) => o.value).length }));
  check(afterDelete.messages === 0 && afterDelete.saved === 1, "Delete forgets the open conversation", JSON.stringify(afterDelete));
  await page.click("#settings summary");
  await page.fill("#system-prompt", "");
  const again = modelRequests(log.slice(mark), "/models/bitnet-2b4t");
  if (cachesUsed) {
    check(again.length === 0, "reload: no request for any model file", again.join("; ") || "0 requests");
  } else {
    console.log(`SKIP reload check: this web/pkg keeps no downloads in Cache Storage (${again.length} requests again)`);
  }

  // 4. Stop a long generation midway; the page is usable afterwards.
  await page.fill("#prompt", "Tell me a long story");
  await page.press("#prompt", "Enter");
  await page.waitForFunction(() => Number(document.querySelector(".message.assistant")?.dataset.pieces ?? 0) >= 5);
  await page.click("#stop");
  const stopped = page.locator(".message.assistant[data-done]");
  await stopped.waitFor({ timeout: LOAD_TIMEOUT });
  const stoppedTokens = Number(await stopped.getAttribute("data-tokens"));
  const usable = await page.evaluate(() => ({
    state: document.body.dataset.state,
    send: !document.getElementById("send").disabled && !document.getElementById("send").hidden,
    stopHidden: document.getElementById("stop").hidden,
    marked: document.querySelector(".message.assistant").dataset.stopReason === "Cancelled",
  }));
  check(stoppedTokens < STOP_MAX_TOKENS && usable.marked, "stop ends the generation midway",
    `${stoppedTokens} of ${STOP_MAX_TOKENS} tokens`);
  check(usable.state === "ready" && usable.send && usable.stopHidden, "the page is usable after stopping");
  await page.click("#new-chat");
  check(await page.locator(".message").count() === 0, "new chat clears the conversation");
  await page.fill("#max-tokens", "4");
  const after = await sendAndWait(page, "Hi");
  const afterTokens = await after.getAttribute("data-tokens");
  check(afterTokens === "4", "a new message after stop and new chat gets its reply",
    `${afterTokens} tokens: ${JSON.stringify(await after.locator(".body").textContent())}`);

  // Settings are clamped to their ranges and to the model, with a note saying so.
  const context = await page.evaluate(() => ({ value: document.getElementById("max-context").value,
    max: document.getElementById("max-context").max }));
  check(context.value === "256" && context.max === "256", "the context field holds the model's max_position_embeddings (256)",
    JSON.stringify(context));
  for (const [id, typed, expected, says] of [["max-context", "100000", "256", /Context: 100000 is outside 64–256/],
    ["temperature", "5", "2", /Temperature: 5 is outside 0–2/], ["temperature", "-1", "0", /Temperature: -1 is outside/],
    ["top-p", "0", "0.01", /Top-p: 0 is outside 0\.01–1/], ["max-tokens", "", "512", /Max tokens: .* is not a number/]]) {
    await page.fill(`#${id}`, typed);
    await page.dispatchEvent(`#${id}`, "change");
    const shown = { value: await page.inputValue(`#${id}`), note: await page.isVisible("#settings-note") &&
      await page.textContent("#settings-note") };
    check(shown.value === expected && says.test(shown.note), `${id} ${JSON.stringify(typed)} is clamped to ${expected} with a note`,
      JSON.stringify(shown));
  }
  await page.fill("#temperature", "2");
  await page.fill("#top-p", "0");
  await page.fill("#max-tokens", "4");
  await page.fill("#max-context", "256");
  await page.dispatchEvent("#max-context", "change");
  const sampled = await sendAndWait(page, "Hi");
  check(await sampled.getAttribute("data-tokens") === "4" && await page.isHidden("#error"),
    "a reply with top-p 0 (clamped) and temperature 2", await sampled.locator(".body").textContent());
  await page.fill("#temperature", "0");
  await page.fill("#top-p", "1");
  await page.dispatchEvent("#top-p", "change");
  await page.dispatchEvent("#max-tokens", "change");
  check(await page.isHidden("#settings-note"), "the note goes once the settings are in range");

  // 5. Failures keep the page working. A model that fails to load leaves the one in use loaded.
  await page.click("#change-model");
  await page.fill("#model-input", "/models/missing");
  await page.click("#load");
  await page.locator("#error").waitFor({ state: "visible", timeout: LOAD_TIMEOUT });
  const kept = await page.evaluate(() => ({ state: document.body.dataset.state, status: document.getElementById("status").textContent }));
  check(kept.state === "ready" && kept.status.startsWith("/models/bitnet-2b4t"),
    "a model that fails to load keeps the one in use", JSON.stringify(kept));
  const keptReply = await sendAndWait(page, "Hi");
  check(await keptReply.getAttribute("data-tokens") === "4", "the kept model still replies");
  // A turn the engine refuses (longer than the context): no empty bubble, no "Thinking…", the
  // message back in the composer, New chat usable.
  const bubbles = await page.locator(".message").count();
  const long = "Hello there ".repeat(200).trim();
  await page.fill("#prompt", long);
  await page.press("#prompt", "Enter");
  await page.locator("#error").waitFor({ state: "visible", timeout: LOAD_TIMEOUT });
  await page.waitForFunction(() => document.body.dataset.state === "ready");
  const failedTurn = await page.evaluate(() => ({
    kind: document.getElementById("error").dataset.kind,
    stats: document.getElementById("stats").textContent,
    emptyBubbles: [...document.querySelectorAll(".message .body")].filter((b) => !b.textContent).length,
    bubbles: document.querySelectorAll(".message").length,
    prompt: document.getElementById("prompt").value.length,
    newChat: !document.getElementById("new-chat").disabled,
  }));
  check(failedTurn.kind === "context" && !/Thinking/.test(failedTurn.stats) && failedTurn.emptyBubbles === 0 &&
    failedTurn.bubbles === bubbles && failedTurn.prompt === long.length && failedTurn.newChat,
    "a failed turn leaves no empty bubble, no \"Thinking…\", its message in the composer, New chat usable",
    JSON.stringify(failedTurn));
  await page.fill("#prompt", "");

  // 6. The model chooser shows the cached bytes and clears them.
  if (await page.isHidden("#model-panel")) await page.click("#change-model");
  const cacheText = await page.locator("#cache-text").textContent();
  check(/\d/.test(cacheText) && cachesUsed === await page.isVisible("#cache"), "the cached downloads are shown", cacheText);
  if (cachesUsed) {
    await page.click("#clear-cache");
    await page.locator("#cache").waitFor({ state: "hidden" });
    const left = await page.evaluate(async () => (await Promise.all((await caches.keys()).map(async (name) =>
      (await (await caches.open(name)).keys()).length))).reduce((a, b) => a + b, 0));
    check(left === 0, "Clear empties the download cache", `${left} entries left`);
  }

  // A sharded model: the total from its index and shards, downloaded and then from the cache (no
  // request but the engine's own probe for a model.safetensors, whose absence it does not cache).
  for (const when of ["downloaded", "from the cache"]) {
    const before = log.length;
    await page.goto(`${base}/www/`);
    // The page fills the chooser with its default once the served list arrives: typing before that
    // races it (the two texts end up joined).
    await page.waitForFunction(() => document.getElementById("model-input").value.startsWith("/models/"));
    await page.fill("#model-input", "/models/bitnet-2b4t-sharded");
    await page.evaluate(() => {
      window.progressSeen = [];
      new MutationObserver(() => window.progressSeen.push({ text: document.getElementById("progress-text").textContent,
        position: document.getElementById("progress").position, percent: document.getElementById("progress-percent").textContent }))
        .observe(document.getElementById("progress-text"), { childList: true, characterData: true, subtree: true });
    });
    await page.click("#load");
    await waitReady(page);
    const seen = await page.evaluate(() => window.progressSeen);
    const fractions = seen.filter((p) => p.position >= 0).map((p) => p.position);
    const totals = new Set(seen.map((p) => p.text.split(" of ")[1]).filter(Boolean));
    check(fractions.length >= 2 && fractions.every((f, i) => i === 0 || f >= fractions[i - 1]) && totals.size === 1 &&
      fractions.at(-1) > 0.99, `a sharded model ${when}: one total from the start, the bar only rises`,
      `${fractions.map((f) => f.toFixed(3)).join(" ")} of ${[...totals].join(", ")}`);
    if (when === "from the cache") {
      const requests = modelRequests(log.slice(before), "/models/bitnet-2b4t-sharded")
        .filter((line) => !/^GET \/models\/bitnet-2b4t-sharded\/model\.safetensors \(bytes=/.test(line));
      check(requests.length === 0, "a sharded model from the cache: no request from the page",
        requests.join("; ") || "0 requests");
    }
  }

  // 7. Error paths: the message names the problem and the chooser stays usable.
  await expectError(page, `${base}/www/?model=/models/missing`, "model", /404|not found/i);
  await expectError(page, `${base}/www/?model=http://127.0.0.1:1/models/nothing-listens`, "network", /fetch/i);
  await expectError(page, `${base}/www/?model=/models/bitnet-2b4t-truncated`, "model", /model\.safetensors/);
  await expectError(page, `${base}/www/?model=/models/bitnet-2b4t-not-a-model`, "model", /model\.safetensors/);
  await page.close();
} finally {
  await browser.close();
}

// 8. Browsers that cannot run the engine: the page on a plain-http origin that is not localhost
// (no secure context: navigator.gpu is missing), and WebGPU without an adapter (Chromium offers
// none here without --enable-unsafe-webgpu; a machine with a real GPU may offer one, and then that
// case is skipped).
const insecureBase = base.replace("127.0.0.1", "tern-ui.test");
for (const [flags, origin, kind, mentions] of [
  [["--enable-unsafe-webgpu", "--host-resolver-rules=MAP tern-ui.test 127.0.0.1"], insecureBase, "no-webgpu",
    /navigator\.gpu is missing/],
  [[], base, "no-adapter", /requestAdapter/],
]) {
  const plain = await chromium.launch({ executablePath: "/usr/bin/chromium", args: [...CHROMIUM_FLAGS, ...flags] });
  try {
    const page = await plain.newPage();
    await page.goto(`${origin}/www/`);
    const adapter = await page.evaluate(async () => Boolean(await navigator.gpu?.requestAdapter()));
    if (adapter) console.log(`SKIP ${kind}: this browser has a WebGPU adapter`);
    else await expectError(page, `${origin}/www/?model=/models/bitnet-2b4t`, kind, mentions);
  } finally {
    await plain.close();
  }
}

if (pageTokensPerSecond) console.log(`page decode: ${pageTokensPerSecond.toFixed(1)} tok/s (bitnet-2b4t fixture, ${REPLY_TOKENS} tokens)`);
const failed = checks.filter((c) => !c.ok);
console.log(`${checks.length - failed.length}/${checks.length} checks passed`);
process.exit(failed.length ? 1 : 0);
