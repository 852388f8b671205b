//! The `Engine` class exported to JavaScript (wasm32 only).

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tern::format::checkpoint::Checkpoint;
use tern::generate::{
    CancelHandle, GenerateOptions, Model, SamplingParams, Session, SessionOptions, StopReason,
};
use tern::gpu::{Context, ContextOptions};
use tern::model::weights::{LmHead, ProjectionKind};
use tern::text::chat_template::ChatMessage;
use tern::KvCacheDtype;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::future_to_promise;

use crate::cache::{DownloadCache, CACHE_NAME};
use crate::fetch::HttpFetcher;
use crate::loader;
use crate::location::{ModelLocation, HUB_ENDPOINT};

/// Options of `Engine.load`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadOptions {
    /// `(loadedBytes, totalBytes)` during the download.
    #[serde(default, with = "serde_wasm_bindgen::preserve")]
    on_progress: JsValue,
    /// KV-cache length in tokens (capped at the model's maximum).
    max_context: Option<usize>,
    /// KV-cache storage: "f16" (default: half the memory) or "f32" (exact).
    kv_cache: Option<String>,
    /// Where hub repo ids are fetched from (default https://huggingface.co).
    hub_endpoint: Option<String>,
    /// Keep downloads in (and serve them from) Cache Storage "tern-models-v1" (default true).
    cache: Option<bool>,
}

/// Options of `generateIds` and `chat`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JsGenerateOptions {
    max_new_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    ignore_eos: Option<bool>,
    stop: Option<Vec<String>>,
    /// An `AbortSignal`: aborting ends the generation after the current token.
    #[serde(default, with = "serde_wasm_bindgen::preserve")]
    signal: JsValue,
}

impl JsGenerateOptions {
    fn parse(value: JsValue) -> Result<(GenerateOptions, Option<web_sys::AbortSignal>), JsError> {
        let o: Self = parse_options("generation options", value)?;
        let defaults = GenerateOptions::default();
        let sampling = SamplingParams::default();
        let signal = if o.signal.is_undefined() || o.signal.is_null() {
            None
        } else {
            Some(
                o.signal
                    .dyn_into::<web_sys::AbortSignal>()
                    .map_err(|_| JsError::new("options.signal is not an AbortSignal"))?,
            )
        };
        let options = GenerateOptions {
            max_new_tokens: o.max_new_tokens.unwrap_or(defaults.max_new_tokens),
            sampling: SamplingParams {
                temperature: o.temperature.unwrap_or(sampling.temperature),
                top_k: o.top_k.unwrap_or(sampling.top_k),
                top_p: o.top_p.unwrap_or(sampling.top_p),
                min_p: o.min_p.unwrap_or(sampling.min_p),
                repetition_penalty: o.repetition_penalty.unwrap_or(sampling.repetition_penalty),
                seed: o.seed,
            },
            stop: o.stop.unwrap_or_default(),
            ignore_eos: o.ignore_eos.unwrap_or(false),
            ..defaults
        };
        Ok((options, signal))
    }
}

fn parse_options<T: for<'de> Deserialize<'de> + Default>(
    what: &str,
    value: JsValue,
) -> Result<T, JsError> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(value).map_err(|e| JsError::new(&format!("{what}: {e}")))
}

fn js_error(e: tern::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// The session, or why there is none right now.
enum State {
    Ready(Box<Session>),
    /// A generation or logits call holds the session.
    Busy,
    Disposed,
}

/// A model loaded on the browser's WebGPU device.
#[wasm_bindgen]
pub struct Engine {
    state: Rc<RefCell<State>>,
    info: EngineInfo,
    last_chat: Rc<RefCell<Option<ChatStats>>>,
}

/// How the last `chat` reply went (the streamed pieces do not map one to one to tokens: the text
/// held back for an incomplete character comes as one extra piece at the end).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatStats {
    prompt_tokens: usize,
    /// Prompt tokens computed (the rest came from the cache of the previous turn).
    prefilled_tokens: usize,
    generated_tokens: usize,
    /// EndOfSequence, StopString, MaxTokens, ContextFull or Cancelled.
    stop_reason: &'static str,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct EngineInfo {
    adapter: String,
    backend: String,
    is_cpu: bool,
    shader_f16: bool,
    subgroups: bool,
    max_buffer_size: f64,
    max_storage_buffer_binding_size: f64,
    gpu_bytes: f64,
    max_context: usize,
    model: ModelInfo,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    hidden_size: usize,
    num_layers: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    tokenizer_vocab_size: usize,
}

/// Takes the session out for the duration of `run` and puts it back, so calls never overlap and
/// `dispose()` during a call frees the model when the call ends.
async fn with_session<T>(
    state: &RefCell<State>,
    run: impl AsyncFnOnce(&mut Session) -> Result<T, JsError>,
) -> Result<T, JsError> {
    let previous = std::mem::replace(&mut *state.borrow_mut(), State::Busy);
    let mut session = match previous {
        State::Ready(s) => s,
        State::Busy => return Err(JsError::new("the engine is busy: await the previous call")),
        State::Disposed => {
            *state.borrow_mut() = State::Disposed;
            return Err(JsError::new("the engine was disposed"));
        }
    };
    let result = run(&mut session).await;
    let mut current = state.borrow_mut();
    if matches!(*current, State::Busy) {
        *current = State::Ready(session);
    }
    result
}

#[wasm_bindgen]
impl Engine {
    /// Downloads the model at `model_url` (a model directory URL, a .gguf URL or a Hugging Face repo
    /// id) and uploads it to the GPU, streaming weight files by HTTP Range requests through the
    /// download cache. Options: `onProgress(loadedBytes, totalBytes)`, `maxContext`, `kvCache`
    /// ("f16" or "f32"), `hubEndpoint`, `cache` (false: neither read nor write the download cache).
    pub async fn load(
        model_url: String,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions | undefined")] options: JsValue,
    ) -> Result<Engine, JsError> {
        let options: LoadOptions = parse_options("load options", options)?;
        let session = Engine::session_options(options.max_context, options.kv_cache.as_deref())?;
        let on_progress = match options.on_progress {
            f if f.is_undefined() || f.is_null() => None,
            f => Some(
                f.dyn_into::<js_sys::Function>()
                    .map_err(|_| JsError::new("options.onProgress is not a function"))?,
            ),
        };
        if !has_webgpu() {
            return Err(JsError::new(
                "WebGPU is not available in this browser (navigator.gpu is missing)",
            ));
        }
        let hub = options.hub_endpoint.as_deref().unwrap_or(HUB_ENDPOINT);
        let location = ModelLocation::resolve(&model_url, hub).map_err(js_error)?;
        let mut fetcher = HttpFetcher::new(on_progress);
        if options.cache != Some(false) {
            if let Some(cache) = DownloadCache::open(CACHE_NAME).await {
                fetcher = fetcher.cached(cache);
            }
        }
        let checkpoint = loader::load_checkpoint(&mut fetcher, &location)
            .await
            .map_err(js_error)?;
        let ctx = Context::new(&ContextOptions::default())
            .await
            .map_err(js_error)?;
        Engine::from_checkpoint(&ctx, &checkpoint, session).await
    }

    /// Deletes every cached download (Cache Storage "tern-models-v1"); resolves to whether there
    /// was a cache.
    #[wasm_bindgen(js_name = clearCache)]
    pub async fn clear_cache() -> Result<bool, JsError> {
        DownloadCache::delete(CACHE_NAME).await.map_err(js_error)
    }

    /// Bytes of cached downloads.
    #[wasm_bindgen(js_name = cacheBytes)]
    pub async fn cache_bytes() -> Result<f64, JsError> {
        DownloadCache::size(CACHE_NAME).await.map_err(js_error)
    }

    /// Ids generated after `prompt` (the prompt itself is not repeated). Options: `maxNewTokens`,
    /// `temperature` (0: greedy), `topK`, `topP`, `minP`, `repetitionPenalty`, `seed`, `ignoreEos`,
    /// `stop`, `signal`.
    #[wasm_bindgen(js_name = generateIds, unchecked_return_type = "Promise<Uint32Array>")]
    pub fn generate_ids(
        &self,
        prompt: Vec<u32>,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions | undefined")] options: JsValue,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let (options, signal) = JsGenerateOptions::parse(options)?;
            let ids = with_session(&state, async |session| {
                let cancel = session.cancel_handle();
                let generation = session
                    .generate(&prompt, &options, |_| cancel_on_abort(&signal, &cancel))
                    .await
                    .map_err(js_error)?;
                Ok(generation.ids)
            })
            .await?;
            Ok(js_sys::Uint32Array::from(ids.as_slice()).into())
        })
    }

    /// Teacher-forced logits of `ids` from an empty cache: a Float32Array of ids.length × vocab.
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn logits(&self, ids: Vec<u32>) -> js_sys::Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let logits = with_session(&state, async |session| {
                session.logits(&ids, false).await.map_err(js_error)
            })
            .await?;
            Ok(js_sys::Float32Array::from(logits.as_slice()).into())
        })
    }

    /// Replies to `messages` ([{role, content}], the whole conversation) with the chat template;
    /// `onToken(text, id)` sees every token as it comes. Resolves to the whole reply. A conversation
    /// that extends the previous one reuses its cached prefix.
    #[wasm_bindgen(unchecked_return_type = "Promise<string>")]
    pub fn chat(
        &self,
        #[wasm_bindgen(unchecked_param_type = "{role: string, content: string}[]")]
        messages: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions | undefined")] options: JsValue,
        #[wasm_bindgen(unchecked_param_type = "((text: string, id: number) => void) | undefined")]
        on_token: JsValue,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        let last_chat = self.last_chat.clone();
        future_to_promise(async move {
            let messages: Vec<ChatMessage> = serde_wasm_bindgen::from_value(messages)
                .map_err(|e| JsError::new(&format!("messages: {e}")))?;
            let (options, signal) = JsGenerateOptions::parse(options)?;
            let on_token = on_token.dyn_into::<js_sys::Function>().ok();
            let text = with_session(&state, async |session| {
                let cancel = session.cancel_handle();
                let generation = session
                    .chat_async(&messages, &options, |event| {
                        if let Some(f) = &on_token {
                            // A throwing callback must not leave the session half-way.
                            let _ = f.call2(
                                &JsValue::NULL,
                                &JsValue::from_str(event.text),
                                &JsValue::from(event.id),
                            );
                        }
                        cancel_on_abort(&signal, &cancel);
                    })
                    .await
                    .map_err(js_error)?;
                *last_chat.borrow_mut() = Some(ChatStats {
                    prompt_tokens: generation.prompt_tokens,
                    prefilled_tokens: generation.prefilled_tokens,
                    generated_tokens: generation.ids.len(),
                    stop_reason: match generation.stop_reason {
                        StopReason::EndOfSequence => "EndOfSequence",
                        StopReason::StopString(_) => "StopString",
                        StopReason::MaxTokens => "MaxTokens",
                        StopReason::ContextFull => "ContextFull",
                        StopReason::Cancelled => "Cancelled",
                    },
                });
                Ok(generation.text)
            })
            .await?;
            Ok(JsValue::from_str(&text))
        })
    }

    /// Token counts and stop reason of the last `chat` reply (null before the first).
    #[wasm_bindgen(js_name = lastChat, unchecked_return_type = "ChatStats | null")]
    pub fn last_chat(&self) -> Result<JsValue, JsError> {
        self.last_chat
            .borrow()
            .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
            .map_err(|e| JsError::new(&e.to_string()))
    }

    /// Forgets the conversation (the next call starts from an empty cache).
    pub fn reset(&self) -> Result<(), JsError> {
        match &mut *self.state.borrow_mut() {
            State::Ready(session) => {
                session.reset();
                Ok(())
            }
            State::Busy => Err(JsError::new("the engine is busy: await the previous call")),
            State::Disposed => Err(JsError::new("the engine was disposed")),
        }
    }

    /// The adapter, its limits, the model's configuration and the bytes it holds on the GPU.
    #[wasm_bindgen(unchecked_return_type = "EngineInfo")]
    pub fn info(&self) -> Result<JsValue, JsError> {
        self.info
            .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
            .map_err(|e| JsError::new(&e.to_string()))
    }

    /// Frees the model's GPU memory; a call in progress finishes first.
    pub fn dispose(&self) {
        *self.state.borrow_mut() = State::Disposed;
    }
}

impl Engine {
    /// The session `Engine.load`'s `maxContext` and `kvCache` ask for (engine defaults otherwise).
    pub fn session_options(
        max_context: Option<usize>,
        kv_cache: Option<&str>,
    ) -> Result<SessionOptions, JsError> {
        let mut options = SessionOptions::default();
        if let Some(n) = max_context {
            options.max_context = n;
        }
        options.kv_cache = match kv_cache {
            None => options.kv_cache,
            Some("f16") => KvCacheDtype::F16,
            Some("f32") => KvCacheDtype::F32,
            Some(other) => {
                return Err(JsError::new(&format!(
                    "options.kvCache: \"{other}\" is neither \"f16\" nor \"f32\""
                )))
            }
        };
        Ok(options)
    }

    /// An engine over an already resolved checkpoint (also the entry point of the browser tests).
    pub async fn from_checkpoint(
        ctx: &Context,
        checkpoint: &Checkpoint,
        options: SessionOptions,
    ) -> Result<Engine, JsError> {
        let model = Model::load(
            ctx,
            checkpoint,
            ProjectionKind::Ternary,
            LmHead::Stored,
            &mut |_, _| {},
        )
        .await
        .map_err(js_error)?;
        let session = model.open_session(options).await.map_err(js_error)?;
        let c = model.config();
        let info = EngineInfo {
            adapter: ctx.info.name.clone(),
            backend: format!("{:?}", ctx.info.backend),
            is_cpu: ctx.caps.is_cpu,
            shader_f16: ctx.caps.shader_f16,
            subgroups: ctx.caps.subgroups,
            max_buffer_size: ctx.caps.max_buffer_bytes as f64,
            max_storage_buffer_binding_size: ctx.caps.max_binding_bytes as f64,
            gpu_bytes: session.gpu_bytes() as f64,
            max_context: session.max_context(),
            model: ModelInfo {
                hidden_size: c.hidden_size,
                num_layers: c.num_layers,
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                intermediate_size: c.intermediate_size,
                vocab_size: c.vocab_size,
                max_position_embeddings: c.max_position_embeddings,
                tokenizer_vocab_size: model.tokenizer().vocab_size(),
            },
        };
        Ok(Engine {
            state: Rc::new(RefCell::new(State::Ready(Box::new(session)))),
            info,
            last_chat: Rc::default(),
        })
    }
}

fn cancel_on_abort(signal: &Option<web_sys::AbortSignal>, cancel: &CancelHandle) {
    if signal.as_ref().is_some_and(|s| s.aborted()) {
        cancel.cancel();
    }
}

/// Whether `navigator.gpu` exists in this global scope (page or worker).
fn has_webgpu() -> bool {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into());
    navigator
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()))
        .is_ok_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
}

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
export interface LoadOptions {
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  maxContext?: number;
  kvCache?: "f16" | "f32";
  hubEndpoint?: string;
  cache?: boolean;
}
export interface GenerateOptions {
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number;
  ignoreEos?: boolean;
  stop?: string[];
  signal?: AbortSignal;
}
export interface ChatStats {
  promptTokens: number;
  prefilledTokens: number;
  generatedTokens: number;
  stopReason: "EndOfSequence" | "StopString" | "MaxTokens" | "ContextFull" | "Cancelled";
}
export interface EngineInfo {
  adapter: string;
  backend: string;
  isCpu: boolean;
  shaderF16: boolean;
  subgroups: boolean;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  gpuBytes: number;
  maxContext: number;
  model: {
    hiddenSize: number; numLayers: number; numHeads: number; numKvHeads: number; headDim: number;
    intermediateSize: number; vocabSize: number; maxPositionEmbeddings: number; tokenizerVocabSize: number;
  };
}
"#;
