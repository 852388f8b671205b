// The chat page: model chooser, download progress, streaming conversation. The engine runs in
// worker.js; this file only talks to it with messages and updates the DOM.
//
// Address parameters (all optional): model (auto-loads it), temperature, topP, maxTokens,
// maxContext, ignoreEos=1 — e.g. ?model=/models/bitnet-2b4t&temperature=0 for greedy replies.
import { classifyError, EXPLANATIONS } from "./errors.js";
import { copyCode, renderMarkdown } from "./render.js";
import { currentConversation, deleteConversation, listConversations, saveConversation, setCurrentConversation }
  from "./store.js";

const HUB_DEFAULT = "microsoft/bitnet-b1.58-2B-4T";
const STOP_REASONS = {
  EndOfSequence: "end of reply",
  StopString: "stop text reached",
  MaxTokens: "token limit reached (see Settings)",
  ContextFull: "context full: start a new chat",
  Cancelled: "stopped",
};
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ui = {
  status: $("status"),
  modelPanel: $("model-panel"),
  modelForm: $("model-form"),
  modelInput: $("model-input"),
  suggestions: $("model-suggestions"),
  modelAbout: $("model-about"),
  changeModel: $("change-model"),
  cache: $("cache"),
  cacheText: $("cache-text"),
  clearCache: $("clear-cache"),
  progressBox: $("progress-box"),
  progress: $("progress"),
  progressText: $("progress-text"),
  progressPercent: $("progress-percent"),
  error: $("error"),
  messages: $("messages"),
  empty: $("empty"),
  chatForm: $("chat-form"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  newChat: $("new-chat"),
  history: $("history"),
  deleteChat: $("delete-chat"),
  stats: $("stats"),
  conversation: $("conversation"),
  settings: {
    temperature: $("temperature"),
    topP: $("top-p"),
    maxTokens: $("max-tokens"),
    maxContext: $("max-context"),
  },
  settingsNote: $("settings-note"),
  systemPrompt: $("system-prompt"),
};
// The settings' names in their notes; whole numbers where the engine takes a count.
const SETTING_LABELS = { temperature: "Temperature", topP: "Top-p", maxTokens: "Max tokens", maxContext: "Context" };
const INTEGER_SETTINGS = new Set(["maxTokens", "maxContext"]);
const settingNotes = new Map(); // the settings clamped last, each with why
let requestedContext = 0; // the context asked for (field or address), a model's limit aside

let worker = null;
let messages = []; // the conversation sent to the engine: [{role, content}], one element each
let conversationId = ""; // its id in the browser's saved conversations ("" until it is saved)
let reply = null; // the assistant message being streamed: {element, text}
let modelName = ""; // the model in use (loaded), "" before one is
let loadingName = ""; // the model being loaded
// What each locally served model is (from the server's index), shown once it is loaded.
const descriptions = new Map();

// ---------------------------------------------------------------------------------------------
// State and small DOM helpers

function setState(state) {
  document.body.dataset.state = state;
  const ready = state === "ready";
  const generating = state === "generating";
  ui.prompt.disabled = !ready && !generating;
  ui.send.disabled = !ready;
  ui.send.hidden = generating;
  ui.stop.hidden = !generating;
  ui.stop.disabled = false;
  ui.newChat.disabled = generating || state === "loading";
  ui.modelInput.disabled = state === "loading";
  ui.modelForm.querySelector("button").disabled = state === "loading";
  ui.changeModel.hidden = !(ready || generating);
  ui.changeModel.disabled = generating;
  ui.history.disabled = generating;
  ui.deleteChat.hidden = !conversationId;
  ui.deleteChat.disabled = generating;
  ui.prompt.placeholder = ready || generating ? "Message Tern" : "Load a model to start";
}

function showError({ kind, message }) {
  const explanation = EXPLANATIONS[kind] ?? EXPLANATIONS.other;
  ui.error.dataset.kind = kind;
  $("error-title").textContent = explanation.title;
  $("error-hint").textContent = explanation.hint;
  $("error-detail").textContent = message;
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
  delete ui.error.dataset.kind;
}

function formatBytes(n) {
  if (n < 1e3) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

/**
 * The setting `name` within its input's min and max (the context's max is the loaded model's
 * max_position_embeddings). A value outside them, or not a number, is replaced in the field and a
 * note under the composer says so.
 */
function setting(name, why = "") {
  const input = ui.settings[name];
  const raw = input.value.trim();
  const [min, max] = [Number(input.min), Number(input.max)];
  const parsed = raw === "" ? NaN : Number(raw);
  let value = INTEGER_SETTINGS.has(name) ? Math.round(parsed) : parsed;
  let note = "";
  if (!Number.isFinite(value)) {
    value = Math.min(max, Math.max(min, Number(input.defaultValue)));
    note = `${SETTING_LABELS[name]}: “${raw}” is not a number; using ${value}.`;
  } else if (value < min || value > max) {
    value = Math.min(max, Math.max(min, value));
    note = `${SETTING_LABELS[name]}: ${raw} is outside ${min}–${max}${why}; using ${value}.`;
  }
  if (String(value) !== raw) input.value = String(value);
  if (note) settingNotes.set(name, note);
  else settingNotes.delete(name);
  ui.settingsNote.textContent = [...settingNotes.values()].join(" ");
  ui.settingsNote.hidden = settingNotes.size === 0;
  return value;
}

function scrollToEnd() {
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

// ---------------------------------------------------------------------------------------------
// Model loading

/** A URL for the worker (relative paths resolve against this page), or a hub repo id as is. */
function modelLocation(input) {
  const text = input.trim();
  return /^(\.{0,2}\/|https?:)/.test(text) ? new URL(text, location.href).href : text;
}

function startWorker() {
  worker?.terminate();
  worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  worker.onmessage = ({ data }) => handlers[data.type]?.(data);
  // A module that fails to import (pkg/ not built or not served) surfaces here, not as a message.
  worker.onerror = (event) => {
    event.preventDefault();
    showError({ kind: "startup", message: event.message || "the worker script failed to load" });
    worker = null;
    modelName = "";
    ui.status.textContent = "No model loaded";
    failTurn();
    setState("idle");
    ui.progressBox.hidden = true;
  };
}

// The model in use (if any) stays until the new one has loaded; the conversation goes on with it.
function loadModel(input) {
  if (document.body.dataset.state === "generating") return;
  hideError();
  loadingName = input.trim();
  if (!worker) startWorker();
  ui.progress.removeAttribute("value");
  ui.progressText.textContent = "Connecting…";
  ui.progressPercent.textContent = "";
  ui.progressBox.hidden = false;
  ui.status.textContent = `Loading ${loadingName}…`;
  setState("loading");
  worker.postMessage({
    type: "load",
    url: modelLocation(input),
    maxContext: requestedContext,
  });
}

const handlers = {
  // One bar over all the files: a fraction only when the total was known from the start (it never
  // goes back); otherwise the bytes so far, the bar indeterminate.
  progress({ loaded, total, known }) {
    if (known) {
      const fraction = Math.max(ui.progress.position, Math.min(1, loaded / total));
      ui.progress.value = fraction;
      ui.progressText.textContent = `${formatBytes(loaded)} of ${formatBytes(total)}`;
      ui.progressPercent.textContent = `${Math.floor(100 * fraction)} %`;
    } else {
      ui.progressText.textContent = loaded ? `${formatBytes(loaded)}` : "Connecting…";
    }
  },
  loaded({ info }) {
    modelName = loadingName;
    ui.stats.textContent = "";
    ui.progressBox.hidden = true;
    ui.modelPanel.hidden = true;
    const gpu = formatBytes(info.gpuBytes);
    ui.status.textContent = `${modelName} · ${gpu} on ${info.adapter || "WebGPU"}`;
    ui.status.dataset.loaded = ui.status.textContent;
    ui.status.title = `${info.model.numLayers} layers, hidden ${info.model.hiddenSize}, vocabulary ${info.model.vocabSize}, context ${info.maxContext} tokens; ${info.backend}${info.shaderF16 ? ", f16" : ""}${info.subgroups ? ", subgroups" : ""}`;
    document.body.dataset.model = modelName;
    // The context field now holds what this model has, and accepts at most its positions.
    const context = ui.settings.maxContext;
    context.max = String(info.model.maxPositionEmbeddings);
    context.min = String(Math.min(64, info.model.maxPositionEmbeddings));
    // The page's default is brought down quietly; a context asked for (field or address) with a note.
    const asked = requestedContext === Number(context.defaultValue) ? info.maxContext : requestedContext;
    context.value = String(asked);
    setting("maxContext", " (this model's positions)");
    const about = descriptions.get(modelName);
    ui.modelAbout.textContent = about ? `${modelName}: ${about}` : "";
    ui.modelAbout.hidden = !about;
    setState("ready");
    ui.prompt.focus();
  },
  cache({ bytes }) {
    ui.cache.hidden = bytes === 0;
    ui.cacheText.textContent = `Downloads kept in this browser: ${formatBytes(bytes)}.`;
  },
  token({ text, pieces }) {
    if (!reply) return;
    reply.text += text;
    showText(reply, reply.text);
    reply.element.dataset.pieces = pieces;
    ui.stats.textContent = `${pieces} tokens…`;
    scrollToEnd();
  },
  done({ text, stats, timing }) {
    if (!reply) return;
    reply.text = text;
    showText(reply, text);
    messages.push({ role: "assistant", content: text });
    const rate = timing.decodeTokensPerSecond;
    ui.stats.textContent =
      `${stats.generatedTokens} tokens · ${rate ? `${rate.toFixed(1)} tok/s` : "—"} · first token ` +
      `after ${timing.firstTokenSeconds.toFixed(2)} s · ${STOP_REASONS[stats.stopReason]}`;
    ui.stats.dataset.tokensPerSecond = rate.toFixed(2);
    reply.element.dataset.tokens = stats.generatedTokens;
    reply.element.dataset.stopReason = stats.stopReason;
    finishReply();
    setState("ready");
    persist();
  },
  error({ during, kind, message, kept }) {
    showError({ kind, message });
    if (during === "load") {
      ui.progressBox.hidden = true;
      ui.modelPanel.hidden = false;
      if (kept) {
        // The model in use is still loaded: its conversation goes on.
        ui.status.textContent = ui.status.dataset.loaded;
        setState("ready");
      } else {
        modelName = "";
        ui.status.textContent = "No model loaded";
        setState("idle");
      }
    } else if (during === "chat") {
      failTurn();
      const engineGone = kind === "crash" || kind === "device-lost";
      if (engineGone) {
        modelName = "";
        ui.status.textContent = "No model loaded";
        ui.modelPanel.hidden = false;
      }
      setState(engineGone ? "idle" : "ready");
    }
  },
};

// ---------------------------------------------------------------------------------------------
// The conversation

function toolButton(className, label, title) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `ghost ${className}`;
  button.textContent = label;
  button.title = title;
  return button;
}

/** A message's text in its bubble: a reply as sanitized Markdown (its source in data-text). */
function showText({ element, body }, text) {
  if (element.classList.contains("assistant")) {
    element.dataset.text = text;
    renderMarkdown(body, text);
  } else {
    body.textContent = text;
  }
}

/** A message element for messages[index]: its text and its tools (edit a message, regenerate a reply). */
function addMessage(role, text, index) {
  const element = document.createElement("li");
  element.className = `message ${role}`;
  element.dataset.index = index;
  const body = document.createElement("div");
  body.className = "body";
  const tools = document.createElement("div");
  tools.className = "tools";
  tools.append(role === "user" ? toolButton("edit", "Edit", "Edit this message and send it again (the replies after it go)")
    : toolButton("regenerate", "Regenerate", "Replace this reply with a new one"));
  element.append(body, tools);
  showText({ element, body }, text);
  ui.messages.append(element);
  ui.empty.hidden = true;
  scrollToEnd();
  return { element, body, text };
}

function finishReply() {
  if (!reply) return;
  reply.element.classList.remove("streaming");
  reply.element.dataset.done = "true";
  reply = null;
}

// A turn the engine failed: its bubbles go (the error is shown above the conversation), the
// message goes back into the composer to send again, and the conversation is as before it.
function failTurn() {
  if (!reply) return;
  const turn = [reply.element.previousElementSibling, reply.element];
  reply = null;
  const sent = messages.pop();
  for (const element of turn) element?.remove();
  ui.empty.hidden = ui.messages.childElementCount > 0;
  if (sent?.role === "user" && !ui.prompt.value) {
    ui.prompt.value = sent.content;
    autosize();
  }
  ui.stats.textContent = "";
  persist();
}

function generationOptions() {
  const options = {
    temperature: setting("temperature"),
    topP: setting("topP"),
    maxNewTokens: setting("maxTokens"),
  };
  if (params.get("ignoreEos") === "1") options.ignoreEos = true;
  return options;
}

function send() {
  const text = ui.prompt.value.trim();
  if (!text || document.body.dataset.state !== "ready") return;
  ui.prompt.value = "";
  autosize();
  messages.push({ role: "user", content: text });
  addMessage("user", text, messages.length - 1);
  requestReply();
}

/** Streams the reply to `messages` (the system prompt first, when there is one). */
function requestReply() {
  hideError();
  reply = addMessage("assistant", "", messages.length);
  reply.element.classList.add("streaming");
  ui.stats.textContent = "Thinking…";
  setState("generating");
  const system = ui.systemPrompt.value.trim();
  const conversation = system ? [{ role: "system", content: system }, ...messages] : messages;
  worker.postMessage({ type: "chat", messages: conversation, options: generationOptions() });
}

/** Drops messages[index] and everything after it, from the conversation and the page. */
function truncateConversation(index) {
  messages.length = index;
  for (const element of [...ui.messages.children]) {
    if (Number(element.dataset.index) >= index) element.remove();
  }
  ui.empty.hidden = messages.length > 0;
  ui.stats.textContent = "";
  persist();
}

// The tools under the messages: a reply made again, a message taken back into the composer.
function onMessageTool(event) {
  if (event.target.matches("pre > button.copy")) return copyCode(event.target);
  const button = event.target.closest(".tools button");
  if (!button || document.body.dataset.state !== "ready") return;
  const index = Number(button.closest(".message").dataset.index);
  if (button.classList.contains("regenerate")) {
    truncateConversation(index);
    requestReply();
  } else {
    const { content } = messages[index];
    truncateConversation(index);
    ui.prompt.value = content;
    autosize();
    ui.prompt.focus();
  }
}

function clearConversation() {
  messages = [];
  ui.messages.replaceChildren();
  ui.empty.hidden = false;
  ui.stats.textContent = "";
}

function newChat() {
  clearConversation();
  openedConversation("");
  hideError();
  if (modelName) worker?.postMessage({ type: "reset" });
  ui.prompt.focus();
}

// ---------------------------------------------------------------------------------------------
// Saved conversations (store.js): each is saved after every change and listed in the header;
// the one open comes back after a reload.

function openedConversation(id) {
  conversationId = id;
  setCurrentConversation(id);
  setState(document.body.dataset.state);
  refreshHistory();
}

async function refreshHistory() {
  const saved = await listConversations();
  const placeholder = new Option(saved.length ? `Saved chats (${saved.length})` : "Saved chats", "");
  ui.history.replaceChildren(placeholder, ...saved.map((c) => new Option(c.title, c.id)));
  ui.history.value = saved.some((c) => c.id === conversationId) ? conversationId : "";
  ui.history.hidden = saved.length === 0;
}

/** Saves the conversation as it is now (a conversation emptied by an edit is forgotten). */
async function persist() {
  if (messages.length === 0) {
    const gone = conversationId;
    openedConversation("");
    if (gone) await deleteConversation(gone);
  } else {
    // The id is taken at once, so a second change before the first is saved keeps it.
    if (!conversationId) openedConversation(crypto.randomUUID?.() ?? `${Date.now()}-${Math.random()}`);
    const title = (messages.find((m) => m.role === "user")?.content ?? "Chat").slice(0, 60);
    await saveConversation({ id: conversationId, title, system: ui.systemPrompt.value.trim(), messages: [...messages] });
  }
  refreshHistory();
}

async function openConversation(id) {
  const saved = (await listConversations()).find((c) => c.id === id);
  if (!saved) return openedConversation("");
  clearConversation();
  messages = saved.messages;
  messages.forEach((m, i) => (addMessage(m.role, m.content, i).element.dataset.done = "true"));
  ui.systemPrompt.value = saved.system ?? "";
  hideError();
  if (modelName) worker?.postMessage({ type: "reset" });
  openedConversation(id);
}

async function deleteChat() {
  if (conversationId) await deleteConversation(conversationId);
  newChat();
}

function autosize() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 200)}px`;
}

// ---------------------------------------------------------------------------------------------
// Start-up

async function servedModels() {
  try {
    const response = await fetch(new URL("../models/index.json", location.href));
    if (!response.ok) return [];
    return (await response.json()).models ?? [];
  } catch {
    return [];
  }
}

function applyParameters() {
  for (const [name, input] of Object.entries(ui.settings)) {
    if (params.has(name)) input.value = params.get(name);
  }
}

async function start() {
  applyParameters();
  requestedContext = setting("maxContext");
  setState("idle");
  ui.modelForm.addEventListener("submit", (event) => {
    event.preventDefault();
    loadModel(ui.modelInput.value);
  });
  ui.chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.prompt.addEventListener("input", autosize);
  for (const name of ["temperature", "topP", "maxTokens"]) {
    ui.settings[name].addEventListener("change", () => setting(name));
  }
  ui.settings.maxContext.addEventListener("change", () => {
    requestedContext = setting("maxContext", modelName ? " (this model's positions)" : "");
  });
  ui.stop.addEventListener("click", () => {
    ui.stop.disabled = true;
    worker?.postMessage({ type: "stop" });
  });
  ui.newChat.addEventListener("click", newChat);
  ui.messages.addEventListener("click", onMessageTool);
  ui.history.addEventListener("change", () => {
    if (ui.history.value) openConversation(ui.history.value);
    else newChat();
  });
  ui.deleteChat.addEventListener("click", deleteChat);
  ui.changeModel.addEventListener("click", () => {
    ui.modelPanel.hidden = !ui.modelPanel.hidden;
    if (!ui.modelPanel.hidden) ui.modelInput.focus();
  });
  $("error-close").addEventListener("click", hideError);
  ui.clearCache.addEventListener("click", () => {
    if (!worker) startWorker();
    worker.postMessage({ type: "clear-cache" });
  });

  // The trained model Tern ships first, random-weight test fixtures last (the server marks both).
  const rank = (model) => (model.shipped ? 0 : model.fixture ? 2 : 1);
  const local = (await servedModels()).toSorted((a, b) => rank(a) - rank(b));
  for (const model of local) descriptions.set(model.url, model.description);
  for (const model of local.toReversed()) {
    const option = document.createElement("option");
    option.value = model.url;
    option.textContent = model.description ? `${model.name} — ${model.description}` : `${model.name} (served locally)`;
    ui.suggestions.prepend(option);
  }
  await openConversation(currentConversation());
  const requested = params.get("model");
  ui.modelInput.value = requested ?? local[0]?.url ?? HUB_DEFAULT;
  if (!worker) startWorker();
  worker.postMessage({ type: "cache-size" });
  if (requested) {
    loadModel(requested);
  } else if (!("gpu" in navigator)) {
    // Said before any download is tried (a requested model reports it from the worker).
    showError({ kind: "no-webgpu", message: "navigator.gpu is missing on this page" });
  }
}

start().catch((error) => showError(classifyError(error)));
