//! `tern serve`: an OpenAI-compatible HTTP server (chat and text completions, streaming over SSE).
//!
//! The GPU holds one model and one KV cache, so one worker thread owns the [`Session`] and takes
//! requests from a channel in arrival order: requests never interleave, and each streams its events
//! back over its own channel. A client that goes away drops the receiving end; the worker sees the
//! send fail and cancels that generation. Consecutive requests that share a prompt prefix (a growing
//! chat) reuse the cached keys and values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tern::generate::{CancelToken, GenerateOptions, SamplingParams, Session, StopReason};
use tern::text::chat_template::ChatMessage;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::load::{session, ModelArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the address is printed once the server listens).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let session = session(&args.model)?;
    let (jobs, queue) = mpsc::channel();
    std::thread::Builder::new()
        .name("tern-gpu".into())
        .spawn(move || work(session, queue))?;
    let state = Arc::new(Server {
        model: args.model.name().to_string(),
        created: unix_seconds(),
        jobs,
        next_id: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(retrieve_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .with_state(state);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
            eprintln!(
                "serving {} on http://{}/v1",
                args.model.name(),
                listener.local_addr()?
            );
            axum::serve(listener, app).await?;
            Ok(())
        })
}

struct Server {
    /// The id clients name the model by: the `--model` argument (or the default model's name).
    model: String,
    created: u64,
    jobs: mpsc::Sender<Job>,
    next_id: AtomicU64,
}

impl Server {
    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(name) if name != self.model => Err(unknown_model(name)),
            _ => Ok(()),
        }
    }

    /// Queues a generation; its events arrive on the returned channel.
    fn submit(
        &self,
        prompt: Prompt,
        options: GenerateOptions,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        let (events, receiver) = unbounded_channel();
        self.jobs
            .send(Job {
                prompt,
                options,
                events,
            })
            .map_err(|_| ApiError::server("the model worker has stopped"))?;
        Ok(receiver)
    }

    fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{}-{n}", self.created)
    }
}

enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Ids(Vec<u32>),
}

struct Job {
    prompt: Prompt,
    options: GenerateOptions,
    events: UnboundedSender<Event>,
}

enum Event {
    Text(String),
    Done(Summary),
    Failed(tern::Error),
}

struct Summary {
    prompt_tokens: usize,
    completion_tokens: usize,
    finish_reason: &'static str,
}

/// The GPU worker: runs queued jobs one at a time until the server goes away.
fn work(mut session: Session, queue: mpsc::Receiver<Job>) {
    for job in queue {
        if job.events.is_closed() {
            continue;
        }
        let started = std::time::Instant::now();
        let event = match generate(&mut session, &job) {
            Ok(summary) => {
                eprintln!(
                    "{} prompt + {} completion tokens in {:.2} s, finish: {}",
                    summary.prompt_tokens,
                    summary.completion_tokens,
                    started.elapsed().as_secs_f64(),
                    summary.finish_reason
                );
                Event::Done(summary)
            }
            Err(error) => Event::Failed(error),
        };
        let _ = job.events.send(event);
    }
}

fn generate(session: &mut Session, job: &Job) -> tern::Result<Summary> {
    let prompt = match &job.prompt {
        Prompt::Chat(messages) => session.chat_prompt(messages)?,
        Prompt::Text(text) => session.tokenizer.encode(text, true)?,
        Prompt::Ids(ids) => ids.clone(),
    };
    let cancel = CancelToken::default();
    let generation =
        pollster::block_on(session.generate(&prompt, &job.options, &cancel, |token| {
            let gone = if token.text.is_empty() {
                job.events.is_closed()
            } else {
                job.events.send(Event::Text(token.text.into())).is_err()
            };
            if gone {
                cancel.cancel();
            }
        }))?;
    Ok(Summary {
        prompt_tokens: generation.prompt_tokens,
        completion_tokens: generation.ids.len(),
        finish_reason: match generation.stop_reason {
            StopReason::EndOfSequence | StopReason::StopString(_) => "stop",
            StopReason::MaxTokens | StopReason::ContextFull => "length",
            StopReason::Cancelled => "cancelled",
        },
    })
}

// ---- Requests ----

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<RequestMessage>,
    #[serde(flatten)]
    params: Params,
}

#[derive(Deserialize)]
struct RequestMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: PromptInput,
    #[serde(flatten)]
    params: Params,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

/// Sampling and streaming fields shared by both endpoints; unknown fields are ignored.
#[derive(Deserialize)]
struct Params {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopInput>,
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Params {
    /// OpenAI's defaults: temperature 1, no token limit for chat, 16 tokens for text completions.
    fn options(&self, default_max_tokens: usize) -> Result<GenerateOptions, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only n = 1 is supported", "n"));
        }
        let max_new_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(default_max_tokens);
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::invalid(
                "temperature must be in [0, 2]",
                "temperature",
            ));
        }
        if max_new_tokens == 0 {
            return Err(ApiError::invalid(
                "max_tokens must be at least 1",
                "max_tokens",
            ));
        }
        Ok(GenerateOptions {
            max_new_tokens,
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                seed: self.seed,
                ..SamplingParams::default()
            },
            stop: match &self.stop {
                None => Vec::new(),
                Some(StopInput::One(stop)) => vec![stop.clone()],
                Some(StopInput::Many(stops)) => stops.clone(),
            },
            ignore_eos: false,
        })
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

fn chat_messages(messages: Vec<RequestMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages is empty", "messages"));
    }
    messages
        .into_iter()
        .map(|message| {
            let content = match message.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .map(|part| match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => Ok(text),
                        (kind, _) => Err(ApiError::invalid(
                            format!("unsupported content part `{kind}`: only text is supported"),
                            "messages",
                        )),
                    })
                    .collect::<Result<String, _>>()?,
            };
            Ok(ChatMessage::new(message.role, content))
        })
        .collect()
}

// ---- Handlers ----

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn list_models(State(server): State<Arc<Server>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&server)] }))
}

async fn retrieve_model(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    server.check_model(Some(&id))?;
    Ok(Json(model_object(&server)))
}

fn model_object(server: &Server) -> Value {
    json!({ "id": server.model, "object": "model", "created": server.created, "owned_by": "tern" })
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint".into(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
}

async fn chat_completions(
    State(server): State<Arc<Server>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse(&body)?;
    server.check_model(request.model.as_deref())?;
    let options = request.params.options(usize::MAX)?;
    let prompt = Prompt::Chat(chat_messages(request.messages)?);
    let shape = Shape {
        id: server.response_id("chatcmpl"),
        model: server.model.clone(),
        created: unix_seconds(),
        chat: true,
        include_usage: request.params.include_usage(),
    };
    respond(&server, prompt, options, request.params.stream, shape).await
}

async fn completions(State(server): State<Arc<Server>>, body: Bytes) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse(&body)?;
    server.check_model(request.model.as_deref())?;
    let options = request.params.options(16)?;
    let prompt = match request.prompt {
        PromptInput::Text(text) => Prompt::Text(text),
        PromptInput::Texts(mut texts) if texts.len() == 1 => Prompt::Text(texts.remove(0)),
        PromptInput::Texts(_) => {
            return Err(ApiError::invalid(
                "only one prompt per request is supported",
                "prompt",
            ))
        }
        PromptInput::Ids(ids) => Prompt::Ids(ids),
    };
    let shape = Shape {
        id: server.response_id("cmpl"),
        model: server.model.clone(),
        created: unix_seconds(),
        chat: false,
        include_usage: request.params.include_usage(),
    };
    respond(&server, prompt, options, request.params.stream, shape).await
}

/// Queues the job and waits for its first event, so that a request the worker rejects (context
/// overflow, bad sampling parameters) gets an HTTP error instead of a stream.
async fn respond(
    server: &Server,
    prompt: Prompt,
    options: GenerateOptions,
    stream: bool,
    shape: Shape,
) -> Result<Response, ApiError> {
    let mut events = server.submit(prompt, options)?;
    let first = match events.recv().await {
        Some(Event::Failed(error)) => return Err(error.into()),
        Some(event) => event,
        None => return Err(ApiError::server("the model worker has stopped")),
    };
    if stream {
        Ok(Sse::new(sse_stream(first, events, shape)).into_response())
    } else {
        let mut text = String::new();
        let mut event = Some(first);
        while let Some(current) = event {
            match current {
                Event::Text(piece) => text.push_str(&piece),
                Event::Done(summary) => {
                    return Ok(Json(shape.whole(&text, &summary)).into_response())
                }
                Event::Failed(error) => return Err(error.into()),
            }
            event = events.recv().await;
        }
        Err(ApiError::server("the model worker has stopped"))
    }
}

/// The SSE body: the chunks of `first` and every later event, then `[DONE]`. It owns the event
/// receiver, so a client that disconnects drops it and cancels the generation.
fn sse_stream(
    first: Event,
    events: UnboundedReceiver<Event>,
    shape: Shape,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let opening = shape
        .chat
        .then(|| shape.chunk(json!({ "role": "assistant", "content": "" }), None));
    let rest = stream::unfold((Some(first), events), |(pending, mut events)| async move {
        let event = match pending {
            Some(event) => event,
            None => events.recv().await?,
        };
        Some((event, (None, events)))
    });
    stream::iter(opening)
        .chain(rest.flat_map(move |event| stream::iter(shape.chunks(event))))
        .chain(stream::once(async { "[DONE]".to_string() }))
        .map(|data| Ok(SseEvent::default().data(data)))
}

/// What the responses of one request look like: chat or text completion, and their ids.
struct Shape {
    id: String,
    model: String,
    created: u64,
    chat: bool,
    include_usage: bool,
}

impl Shape {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    fn whole(&self, text: &str, summary: &Summary) -> Value {
        let choice = if self.chat {
            json!({ "index": 0, "message": { "role": "assistant", "content": text },
                    "finish_reason": summary.finish_reason, "logprobs": null })
        } else {
            json!({ "index": 0, "text": text, "finish_reason": summary.finish_reason,
                    "logprobs": null })
        };
        json!({ "id": self.id, "object": self.object(false), "created": self.created,
                "model": self.model, "choices": [choice], "usage": usage(summary) })
    }

    /// One streamed chunk as JSON text: a delta (chat) or text piece, or the finish reason.
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        let choice = if self.chat {
            json!({ "index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null })
        } else {
            let text = delta.get("content").cloned().unwrap_or_else(|| json!(""));
            json!({ "index": 0, "text": text, "finish_reason": finish_reason, "logprobs": null })
        };
        json!({ "id": self.id, "object": self.object(true), "created": self.created,
                "model": self.model, "choices": [choice] })
        .to_string()
    }

    fn chunks(&self, event: Event) -> Vec<String> {
        match event {
            Event::Text(text) => vec![self.chunk(json!({ "content": text }), None)],
            Event::Done(summary) => {
                let mut chunks = vec![self.chunk(json!({}), Some(summary.finish_reason))];
                if self.include_usage {
                    chunks.push(
                        json!({ "id": self.id, "object": self.object(true),
                                "created": self.created, "model": self.model, "choices": [],
                                "usage": usage(&summary) })
                        .to_string(),
                    );
                }
                chunks
            }
            Event::Failed(error) => {
                vec![json!({ "error": ApiError::from(error).body() }).to_string()]
            }
        }
    }
}

fn usage(summary: &Summary) -> Value {
    json!({ "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
            "total_tokens": summary.prompt_tokens + summary.completion_tokens })
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---- Errors ----

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: impl Into<Option<&'static str>>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into(),
            code: None,
        }
    }

    fn server(message: &str) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    fn body(&self) -> Value {
        json!({ "message": self.message, "type": self.kind, "param": self.param, "code": self.code })
    }
}

fn unknown_model(name: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("the model `{name}` does not exist"),
        kind: "invalid_request_error",
        param: Some("model"),
        code: Some("model_not_found"),
    }
}

impl From<tern::Error> for ApiError {
    fn from(error: tern::Error) -> Self {
        let message = error.to_string();
        match error {
            tern::Error::ContextOverflow { .. } => ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(message, None)
            },
            tern::Error::Invalid(_) | tern::Error::Template(_) | tern::Error::Tokenizer(_) => {
                ApiError::invalid(message, None)
            }
            _ => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message,
                kind: "server_error",
                param: None,
                code: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.body() }))).into_response()
    }
}
