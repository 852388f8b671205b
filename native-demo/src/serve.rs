//! `tern serve`: an OpenAI-compatible HTTP server (chat and text completions, streaming over SSE).
//!
//! One worker thread owns the GPU through a [`Batch`] of `--parallel` slots (continuous batching:
//! every step decodes one token for each running request in one pass over the weights, and
//! admits waiting requests between steps, prefilling long prompts a chunk per step). Requests wait
//! for a slot in a bounded queue, in arrival order; a full queue is refused at once (503 with
//! Retry-After). Each request streams its events back over its own channel. Request handlers
//! validate, render and tokenize the prompt before queueing, so the worker only ever sees token
//! ids that fit the context. A client that goes away drops the receiving end; the worker sees it
//! and cancels that generation. `/metrics` reports requests, tokens, queue depth, busy slots, time
//! to first token and per-request decode speed in the Prometheus text format.
//!
//! Browsers are kept out unless invited: only loopback (or explicitly allowed) `Host` names are
//! served, which defeats DNS rebinding; requests with an `Origin` need `--cors-origin`; and POST
//! bodies must be `application/json`, which a cross-site form or `text/plain` fetch cannot send
//! without a CORS preflight.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tern::generate::{CancelHandle, GenerateOptions, SamplingParams, StopReason};
use tern::model::weights::ProjectionKind;
use tern::text::chat_template::{ChatMessage, ChatTemplate};
use tern::text::tokenizer::Tokenizer;
use tern::{Batch, BatchEvent, BatchOptions, Penalties, RequestId, TokenLogprobs};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::load::{self, ModelArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Another name clients may give as a request's `model` besides the --model argument (e.g.
    /// the name a tool insists on); repeatable.
    #[arg(long = "alias", value_name = "NAME")]
    aliases: Vec<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the address is printed once the server listens).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every /v1 route (/health stays open). Default: the
    /// TERN_API_KEY environment variable, if set.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// More `Host` names to serve besides loopback ones and the bound address (comma-separated).
    /// `*` accepts any Host: dangerous, it lets web pages read replies through DNS rebinding.
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    allowed_hosts: Vec<String>,
    /// A web origin (e.g. http://localhost:3000) allowed to call the API from a browser (CORS);
    /// repeatable or comma-separated, `*` allows any. Requests from other origins get 403.
    #[arg(long = "cors-origin", value_delimiter = ',', value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Requests generated at once, each with its own KV cache of --context positions [default:
    /// as many caches as fit the memory budget of the adapter, 1 to 8; printed at start].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    parallel: Option<u16>,
    /// Tokens a chat reply may have when its request sets no max_tokens / max_completion_tokens
    /// (a reply also ends at the end of the context). Text completions default to 16, as OpenAI's.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_tokens_default: u32,
    /// Requests that may wait for a free slot; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    queue: u16,
    /// Open connections at most; more wait in the listen backlog.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a client has to send a request's headers; also how long an idle kept-alive
    /// connection stays open.
    #[arg(long, default_value = "30", value_parser = seconds, value_name = "SECONDS")]
    header_timeout: Duration,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value = "60", value_parser = seconds, value_name = "SECONDS")]
    body_timeout: Duration,
    /// On SIGTERM or Ctrl-C, seconds that running generations get to finish before they are
    /// cancelled.
    #[arg(long, default_value = "5", value_parser = seconds, value_name = "SECONDS")]
    shutdown_grace: Duration,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("`{text}` is not a number of seconds"))
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Bind before the slow model load, so that a busy port fails at once.
    let listener = bind(&args.host, args.port)?;
    let access = Arc::new(Access::new(args, listener.local_addr()?));
    let model = load::model(&args.model)?;
    let parallel = match args.parallel {
        Some(n) => n.into(),
        None => default_parallel(&model, args.model.context(), args.model.kv_cache.into()),
    };
    let batch = model.batch(BatchOptions {
        slots: parallel,
        max_context: args.model.context(),
        max_batch: args.model.batch,
        kv_cache: args.model.kv_cache.into(),
    })?;
    eprintln!(
        "{parallel} parallel slot(s) of {} tokens ({} MiB of KV cache each; --parallel N to \
         change), up to {} more requests queued",
        batch.max_context(),
        batch.slot_bytes() >> 20,
        args.queue
    );
    let batch_context = batch.max_context();
    let prompter = Arc::new(Prompter {
        tokenizer: model.tokenizer().clone(),
        template: model.template().clone(),
        context: batch.max_context(),
    });
    let metrics = Arc::new(Metrics::new(parallel));
    let (jobs, queue) = mpsc::sync_channel(args.queue.into());
    // Set when shutdown's grace period ends: the worker cancels what it is running and what waits.
    let stopping = CancelHandle::default();
    let worker = Worker {
        batch,
        queue,
        stopping: stopping.clone(),
        metrics: Arc::clone(&metrics),
        requests: HashMap::new(),
    };
    std::thread::Builder::new()
        .name("tern-gpu".into())
        .spawn(move || worker.run())?;
    let state = Arc::new(Server {
        model: args.model.name().to_string(),
        aliases: args.aliases.clone(),
        description: json!({
            "context_length": batch_context,
            "size_bytes": model.transformer().gpu_bytes(),
            "quantization": match model.transformer().projections() {
                ProjectionKind::Ternary => "ternary b1.58",
                ProjectionKind::Dense => "dense",
            },
        }),
        created: unix_seconds(),
        vocab: model.config().vocab_size,
        jobs,
        prompter,
        metrics,
        body_timeout: args.body_timeout,
        chat_max_tokens: args.max_tokens_default as usize,
        next_id: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(retrieve_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&access),
            require_api_key,
        ))
        // Inside the origin check, so that only allowed origins get preflight answers.
        .layer(access.cors())
        .layer(middleware::from_fn_with_state(
            access,
            check_host_and_origin,
        ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        eprintln!(
            "serving {} on http://{}/v1",
            args.model.name(),
            listener.local_addr()?
        );
        run(listener, app, args, &stopping).await
    })?;
    // Tokenizing tasks are short; do not wait on one stuck behind a vanished client.
    runtime.shutdown_timeout(Duration::from_secs(1));
    eprintln!("stopped");
    Ok(())
}

fn bind(host: &str, port: u16) -> anyhow::Result<std::net::TcpListener> {
    let address = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    std::net::TcpListener::bind((host, port)).map_err(|error| match error.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "cannot listen on {address}: address already in use — pass --port to pick another \
             (0 picks a free one)"
        ),
        _ => anyhow::anyhow!("cannot listen on {address}: {error}"),
    })
}

/// Serves connections until SIGTERM or Ctrl-C, then stops accepting, lets requests in flight end
/// (cancelling generations that outlast `--shutdown-grace`) and returns.
async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    args: &ServeArgs,
    stopping: &CancelHandle,
) -> anyhow::Result<()> {
    let connections = Arc::new(Semaphore::new(args.max_connections as usize));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // hyper's header timer also runs while a kept-alive connection waits for its next request.
    http.timer(TokioTimer::new())
        .header_read_timeout(args.header_timeout);
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        let permit = tokio::select! {
            _ = &mut signal => break,
            permit = Arc::clone(&connections).acquire_owned() => permit?,
        };
        let stream = tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    eprintln!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    eprintln!(
        "shutting down: finishing requests in flight (generations are cancelled after {:.1} s)",
        args.shutdown_grace.as_secs_f64()
    );
    let stopping = stopping.clone();
    let grace = args.shutdown_grace;
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        stopping.cancel();
    });
    // A cancelled generation ends within a token; past that, give up on clients that stopped
    // reading.
    if tokio::time::timeout(grace + Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("closing the connections that did not finish");
    }
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

// ---- Access: Host, Origin, API key ----

/// Who may talk to the server: see the module docs.
struct Access {
    /// Lower-case Host names without port.
    hosts: Vec<String>,
    any_host: bool,
    /// Bound to every interface: any IP-literal Host is safe (DNS rebinding needs a name).
    any_ip_host: bool,
    origins: Vec<String>,
    any_origin: bool,
    api_key: Option<String>,
}

impl Access {
    fn new(args: &ServeArgs, bound: SocketAddr) -> Access {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .map(String::from)
            .to_vec();
        if !bound.ip().is_loopback() {
            hosts.push(match bound.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            });
            hosts.push(args.host.to_ascii_lowercase());
        }
        hosts.extend(
            args.allowed_hosts
                .iter()
                .map(|host| host.trim().to_ascii_lowercase()),
        );
        let origins: Vec<String> = args
            .cors_origins
            .iter()
            .map(|origin| origin.trim().trim_end_matches('/').to_string())
            .collect();
        Access {
            any_host: hosts.iter().any(|host| host == "*"),
            any_ip_host: bound.ip().is_unspecified(),
            hosts,
            any_origin: origins.iter().any(|origin| origin == "*"),
            origins,
            api_key: args
                .api_key
                .clone()
                .or_else(|| std::env::var("TERN_API_KEY").ok())
                .filter(|key| !key.is_empty()),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(rest) => format!("[{}]", rest.split(']').next().unwrap_or_default()),
            None => host.split(':').next().unwrap_or_default().to_string(),
        }
        .to_ascii_lowercase();
        self.any_host
            || self.hosts.contains(&name)
            || (self.any_ip_host
                && name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok())
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    fn cors(&self) -> CorsLayer {
        let origins = match self.any_origin {
            true => AllowOrigin::any(),
            false => AllowOrigin::list(
                self.origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            ),
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE])
    }
}

async fn check_host_and_origin(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|host| host.to_str().ok())
        .or(request.uri().host());
    match host {
        Some(host) if access.host_allowed(host) => {}
        _ => {
            return ApiError::forbidden(format!(
                "the Host `{}` is not served here: pass --allowed-hosts to allow it",
                host.unwrap_or_default()
            ))
            .into_response()
        }
    }
    if let Some(origin) = request.headers().get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !access.origin_allowed(origin) {
            return ApiError::forbidden(format!(
                "requests from the web origin `{origin}` are not allowed: pass --cors-origin to \
                 allow them"
            ))
            .into_response();
        }
    }
    next.run(request).await
}

async fn require_api_key(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = access.api_key.as_deref() else {
        return next.run(request).await;
    };
    if request.uri().path().starts_with("/v1") {
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        // Constant time, so that response timing does not reveal how much of a guess was right.
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError {
                code: Some("invalid_api_key"),
                ..ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "a valid API key is required: send `Authorization: Bearer KEY`",
                )
            }
            .into_response();
        }
    }
    next.run(request).await
}

// ---- The queue and the GPU worker ----

struct Server {
    /// The id clients name the model by: the `--model` argument (or the default model's name).
    model: String,
    /// Other names accepted for it (`--alias`).
    aliases: Vec<String>,
    /// What /v1/models says of the model besides its names: context length, size, quantization.
    description: Value,
    created: u64,
    /// Token ids run from 0 to `vocab - 1`.
    vocab: usize,
    jobs: mpsc::SyncSender<Job>,
    prompter: Arc<Prompter>,
    metrics: Arc<Metrics>,
    body_timeout: Duration,
    /// `--max-tokens-default`.
    chat_max_tokens: usize,
    next_id: AtomicU64,
}

impl Server {
    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(name) if name != self.model && !self.aliases.iter().any(|a| a == name) => {
                Err(unknown_model(name))
            }
            _ => Ok(()),
        }
    }

    /// The prompt's ids, computed on a blocking thread (templates and tokenizers take a while on
    /// long prompts).
    async fn tokenize(&self, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
        let prompter = Arc::clone(&self.prompter);
        tokio::task::spawn_blocking(move || prompter.ids(prompt))
            .await
            .map_err(|_| ApiError::server("tokenizing the prompt failed"))?
    }

    /// Queues a generation; its events arrive on the returned channel.
    fn submit(
        &self,
        prompt: Vec<u32>,
        options: GenerateOptions,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        let (events, receiver) = unbounded_channel();
        let job = Job {
            prompt,
            options,
            events,
            queued: Instant::now(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                Ok(receiver)
            }
            Err(TrySendError::Full(_)) => Err(ApiError {
                retry_after_seconds: Some(1),
                ..ApiError::server("the server is busy: too many requests are waiting, retry later")
            }),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::server("the model worker has stopped"))
            }
        }
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

/// What turns prompts into ids, shared with the request handlers.
struct Prompter {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// The KV cache's length in tokens.
    context: usize,
}

impl Prompter {
    /// The ids of `prompt`, refused if they leave no room in the context for a reply.
    fn ids(&self, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
        let ids = match prompt {
            Prompt::Chat(messages) => self.template.prompt_ids(&self.tokenizer, &messages)?,
            Prompt::Text(text) => self.tokenizer.encode(&text, true)?,
            Prompt::Ids(ids) => ids,
        };
        if ids.is_empty() {
            return Err(ApiError::invalid("the prompt is empty", "prompt"));
        }
        if ids.len() >= self.context {
            return Err(tern::Error::ContextOverflow {
                needed: ids.len() + 1,
                limit: self.context,
            }
            .into());
        }
        Ok(ids)
    }
}

struct Job {
    prompt: Vec<u32>,
    options: GenerateOptions,
    events: UnboundedSender<Event>,
    queued: Instant,
}

enum Event {
    /// Text, and the token's id and log-probabilities when asked for (then every token is sent,
    /// even one that completes no text yet).
    Text(String, Option<(u32, TokenLogprobs)>),
    Done(Summary),
    Failed(tern::Error),
}

struct Summary {
    prompt_tokens: usize,
    completion_tokens: usize,
    finish_reason: &'static str,
}

/// A request the batch is running or holding.
struct InFlight {
    events: UnboundedSender<Event>,
    queued: Instant,
    first_token: Option<Instant>,
}

/// The GPU worker: feeds queued jobs to the batch as slots free up and steps it until the server
/// goes away. Once `stopping` is set it cancels what runs and answers what waits without
/// generating.
struct Worker {
    batch: Batch,
    queue: mpsc::Receiver<Job>,
    stopping: CancelHandle,
    metrics: Arc<Metrics>,
    requests: HashMap<RequestId, InFlight>,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            for (id, request) in &self.requests {
                if request.events.is_closed() || self.stopping.is_cancelled() {
                    self.batch.cancel(*id);
                }
            }
            match pollster::block_on(self.batch.step()) {
                Ok(events) => events.into_iter().for_each(|event| self.deliver(event)),
                Err(error) => {
                    eprintln!("the GPU failed, no more requests can run: {error}");
                    for (_, request) in self.requests.drain() {
                        let error = tern::Error::Gpu(error.to_string());
                        let _ = request.events.send(Event::Failed(error));
                    }
                    return;
                }
            }
            self.metrics.slots_busy.set(self.batch.running() as i64);
        }
    }

    /// Moves queued jobs into the batch while it has free slots, waiting for one when nothing
    /// runs. False once the server has gone away and nothing is left to run.
    fn admit(&mut self) -> bool {
        while self.batch.running() + self.batch.waiting() < self.batch.slots() {
            let job = if self.batch.is_idle() {
                match self.queue.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match self.queue.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            self.metrics.queue_depth.dec();
            if job.events.is_closed() {
                continue;
            }
            if self.stopping.is_cancelled() {
                let _ = job.events.send(Event::Done(Summary {
                    prompt_tokens: job.prompt.len(),
                    completion_tokens: 0,
                    finish_reason: "cancelled",
                }));
                continue;
            }
            match self.batch.submit(job.prompt, job.options) {
                Ok(id) => {
                    let request = InFlight {
                        events: job.events,
                        queued: job.queued,
                        first_token: None,
                    };
                    self.requests.insert(id, request);
                }
                Err(error) => {
                    let _ = job.events.send(Event::Failed(error));
                }
            }
        }
        true
    }

    /// Sends a batch event to its client; a client that has gone away gets its request cancelled.
    fn deliver(&mut self, event: BatchEvent) {
        let id = event.request();
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        match event {
            BatchEvent::Token {
                id: token,
                text,
                logprobs,
                ..
            } => {
                if request.first_token.is_none() {
                    let waited = request.queued.elapsed();
                    self.metrics
                        .time_to_first_token
                        .observe(waited.as_secs_f64());
                    request.first_token = Some(Instant::now());
                }
                let logprobs = logprobs.map(|logprobs| (token, logprobs));
                let send = !text.is_empty() || logprobs.is_some();
                if send && request.events.send(Event::Text(text, logprobs)).is_err() {
                    self.batch.cancel(id);
                }
            }
            BatchEvent::Finished {
                text, generation, ..
            } => {
                let request = self.requests.remove(&id).expect("a known request");
                if !text.is_empty() {
                    let _ = request.events.send(Event::Text(text, None));
                }
                let summary = Summary {
                    prompt_tokens: generation.prompt_tokens,
                    completion_tokens: generation.ids.len(),
                    finish_reason: match generation.stop_reason {
                        StopReason::EndOfSequence | StopReason::StopString(_) => "stop",
                        StopReason::MaxTokens | StopReason::ContextFull => "length",
                        StopReason::Cancelled => "cancelled",
                    },
                };
                let seconds = request.queued.elapsed().as_secs_f64();
                eprintln!(
                    "{} prompt + {} completion tokens in {seconds:.2} s, finish: {}",
                    summary.prompt_tokens, summary.completion_tokens, summary.finish_reason
                );
                self.metrics.finished(&summary, &generation);
                let _ = request.events.send(Event::Done(summary));
            }
            BatchEvent::Failed { error, .. } => {
                let request = self.requests.remove(&id).expect("a known request");
                self.metrics.failed();
                let _ = request.events.send(Event::Failed(error));
            }
        }
    }
}

/// What `/metrics` reports, in the Prometheus text format.
struct Metrics {
    registry: Registry,
    requests: Family<Vec<(String, String)>, Counter>,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    queue_depth: Gauge,
    slots_busy: Gauge,
    time_to_first_token: Histogram,
    decode_tokens_per_second: Histogram,
}

impl Metrics {
    fn new(slots: usize) -> Metrics {
        let mut registry = Registry::with_prefix("tern");
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        let (prompt_tokens, completion_tokens) = (Counter::default(), Counter::default());
        let (queue_depth, slots_busy): (Gauge, Gauge) = Default::default();
        let slot_count: Gauge = Gauge::default();
        slot_count.set(slots as i64);
        // 10 ms to ~80 s, and 0.5 to ~1000 tokens/s, doubling.
        let time_to_first_token = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let decode_tokens_per_second = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        registry.register(
            "requests",
            "Requests ended, by finish reason (stop, length, cancelled, error)",
            requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of ended requests",
            prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens generated",
            completion_tokens.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a slot",
            queue_depth.clone(),
        );
        registry.register("slots_busy", "Slots generating now", slots_busy.clone());
        registry.register("slots", "Slots in all (--parallel)", slot_count);
        registry.register(
            "time_to_first_token_seconds",
            "From a request's arrival in the queue to its first token",
            time_to_first_token.clone(),
        );
        registry.register(
            "decode_tokens_per_second",
            "Each request's generation speed after its first token",
            decode_tokens_per_second.clone(),
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            queue_depth,
            slots_busy,
            time_to_first_token,
            decode_tokens_per_second,
        }
    }

    fn count(&self, finish_reason: &str) {
        let labels = vec![("finish_reason".to_string(), finish_reason.to_string())];
        self.requests.get_or_create(&labels).inc();
    }

    fn finished(&self, summary: &Summary, generation: &tern::Generation) {
        self.count(summary.finish_reason);
        self.prompt_tokens.inc_by(summary.prompt_tokens as u64);
        self.completion_tokens
            .inc_by(summary.completion_tokens as u64);
        if summary.completion_tokens > 1 && generation.decode_seconds > 0.0 {
            let rate = (summary.completion_tokens - 1) as f64 / generation.decode_seconds;
            self.decode_tokens_per_second.observe(rate);
        }
    }

    fn failed(&self) {
        self.count("error");
    }
}

async fn metrics_text(State(server): State<Arc<Server>>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &server.metrics.registry) {
        Ok(()) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => ApiError::server("the metrics could not be written").into_response(),
    }
}

/// Slots when `--parallel` is not given: as many KV caches of `context` positions stored as
/// `kv_cache` as fit a budget, 1 to 8. wgpu reports no memory size, so the budget is a quarter of the available system memory
/// on a CPU adapter (llvmpipe, SwiftShader: the caches live in RAM) and 2 GiB on a GPU — what any
/// GPU that holds the model beside its caches can spare.
fn default_parallel(model: &tern::Model, context: usize, kv_cache: tern::KvCacheDtype) -> usize {
    let slot_bytes = tern::model::slot_bytes(model.config(), context, kv_cache).max(1);
    let gpu_budget = 2u64 << 30;
    let budget = match model.transformer().context().info.device_type {
        wgpu::DeviceType::Cpu => available_memory().map_or(gpu_budget, |bytes| bytes / 4),
        _ => gpu_budget,
    };
    (budget / slot_bytes).clamp(1, 8) as usize
}

/// `MemAvailable` of /proc/meminfo, in bytes (Linux).
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// ---- Requests ----

/// The most a request body may weigh: far more than any prompt that fits a context.
const MAX_BODY_BYTES: usize = 2 << 20;

/// A request's JSON fields. A field set to null counts as absent, as in OpenAI's API.
struct Fields(serde_json::Map<String, Value>);

impl Fields {
    /// Reads the body of a POST: JSON only (a cross-site page cannot send that without CORS), at
    /// most [`MAX_BODY_BYTES`], within `timeout`.
    async fn read(headers: &HeaderMap, body: Body, timeout: Duration) -> Result<Fields, ApiError> {
        let is_json = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "the request body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        };
        let declared_length = headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        if declared_length.is_some_and(|length| length > MAX_BODY_BYTES) {
            return Err(too_large());
        }
        let read = async {
            let mut bytes = Vec::new();
            let mut chunks = body.into_data_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk
                    .map_err(|_| ApiError::invalid("the request body could not be read", None))?;
                if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        };
        let bytes = tokio::time::timeout(timeout, read).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            )
        })??;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(fields)) => Ok(Fields(fields)),
            Ok(_) => Err(ApiError::invalid(
                "the request body must be a JSON object",
                None,
            )),
            // Syntax errors only (parsing into `Value` has no types to mismatch): safe to show.
            Err(error) => Err(ApiError::invalid(
                format!("the request body is not valid JSON: {error}"),
                None,
            )),
        }
    }

    /// The field `name` as a `T`, or an error saying what it `must_be` in plain words (serde's
    /// own messages name Rust types).
    fn get<T: DeserializeOwned>(
        &self,
        name: &'static str,
        must_be: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|_| ApiError::invalid(format!("`{name}` must be {must_be}"), name)),
        }
    }

    fn model(&self) -> Result<Option<String>, ApiError> {
        self.get("model", "a string")
    }
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
#[serde(untagged)]
enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The sampling and streaming fields shared by both endpoints; unknown fields are ignored.
struct Params {
    options: GenerateOptions,
    stream: bool,
    include_usage: bool,
}

impl Params {
    /// OpenAI's defaults (temperature 1, 16 tokens for text completions); chats get
    /// `default_max_tokens` (`--max-tokens-default`).
    fn of(fields: &Fields, default_max_tokens: usize, vocab: usize) -> Result<Params, ApiError> {
        const COUNT: &str = "a non-negative integer";
        if fields.get::<u64>("n", COUNT)?.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only n = 1 is supported", "n"));
        }
        let max_new_tokens = fields
            .get("max_completion_tokens", COUNT)?
            .or(fields.get("max_tokens", COUNT)?)
            .unwrap_or(default_max_tokens);
        if max_new_tokens == 0 {
            return Err(ApiError::invalid(
                "max_tokens must be at least 1",
                "max_tokens",
            ));
        }
        let temperature: Option<f32> = fields.get("temperature", "a number")?;
        if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::invalid(
                "temperature must be in [0, 2]",
                "temperature",
            ));
        }
        let stop = match fields.get("stop", "a string or an array of strings")? {
            None => Vec::new(),
            Some(StopInput::One(stop)) => vec![stop],
            Some(StopInput::Many(stops)) => stops,
        };
        let top_p: f32 = fields.get("top_p", "a number")?.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p must be in (0, 1]", "top_p"));
        }
        let top_k: Option<u64> = fields.get("top_k", COUNT)?;
        let min_p: f32 = fields.get("min_p", "a number")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid("min_p must be in [0, 1]", "min_p"));
        }
        // llama.cpp's name and Hugging Face's; both mean the same penalty.
        let repeat_penalty: Option<f32> = fields.get("repeat_penalty", "a number")?;
        let repetition_penalty: Option<f32> = fields.get("repetition_penalty", "a number")?;
        let (penalty_field, penalty) = match (repeat_penalty, repetition_penalty) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "send either repeat_penalty or repetition_penalty, not both",
                    "repetition_penalty",
                ))
            }
            (Some(p), None) => ("repeat_penalty", p),
            (None, p) => ("repetition_penalty", p.unwrap_or(1.0)),
        };
        if !(penalty > 0.0 && penalty.is_finite()) {
            return Err(ApiError::invalid(
                format!("{penalty_field} must be a positive number"),
                penalty_field,
            ));
        }
        let openai_penalty = |name: &'static str| -> Result<f32, ApiError> {
            let value: f32 = fields.get(name, "a number")?.unwrap_or(0.0);
            match (-2.0..=2.0).contains(&value) {
                true => Ok(value),
                false => Err(ApiError::invalid(
                    format!("{name} must be in [-2, 2]"),
                    name,
                )),
            }
        };
        let presence = openai_penalty("presence_penalty")?;
        let frequency = openai_penalty("frequency_penalty")?;
        let biases: HashMap<String, f32> = fields
            .get(
                "logit_bias",
                "an object mapping token ids (as strings) to numbers",
            )?
            .unwrap_or_default();
        let mut logit_bias = Vec::with_capacity(biases.len());
        for (id, bias) in biases {
            let token = id.parse::<u32>().ok().filter(|&t| (t as usize) < vocab);
            let Some(token) = token else {
                return Err(ApiError::invalid(
                    format!(
                        "logit_bias: `{id}` is not a token id of this model (0 to {})",
                        vocab - 1
                    ),
                    "logit_bias",
                ));
            };
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid(
                    format!("logit_bias: the bias of token {id} must be in [-100, 100]"),
                    "logit_bias",
                ));
            }
            logit_bias.push((token, bias));
        }
        logit_bias.sort_unstable_by_key(|&(token, _)| token);
        let stream_options: Option<StreamOptions> = fields.get(
            "stream_options",
            "an object such as {\"include_usage\": true}",
        )?;
        Ok(Params {
            options: GenerateOptions {
                max_new_tokens,
                sampling: SamplingParams {
                    temperature: temperature.unwrap_or(1.0),
                    top_k: top_k.map_or(0, |k| usize::try_from(k).unwrap_or(usize::MAX)),
                    top_p,
                    min_p,
                    repetition_penalty: penalty,
                    seed: fields.get("seed", COUNT)?,
                },
                stop,
                ignore_eos: false,
                penalties: Penalties {
                    presence,
                    frequency,
                    logit_bias,
                },
                logprobs: None,
            },
            stream: fields.get("stream", "true or false")?.unwrap_or(false),
            include_usage: stream_options.and_then(|o| o.include_usage) == Some(true),
        })
    }
}

/// Refuses what would change the reply's form if it were honoured: structured output and tool
/// calls are not implemented, and ignoring them would hand back text the client cannot use.
fn refuse_unsupported(fields: &Fields) -> Result<(), ApiError> {
    let format: Option<Value> = fields.get("response_format", "an object with a `type`")?;
    if let Some(format) = format {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some(kind @ ("json_object" | "json_schema")) => {
                return Err(ApiError::invalid(
                    format!("response_format `{kind}` is not supported yet: only `text` is"),
                    "response_format",
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    "response_format must be {\"type\": \"text\"} (json_object and json_schema \
                     are not supported yet)",
                    "response_format",
                ))
            }
        }
    }
    for name in ["tools", "functions"] {
        let list: Option<Value> = fields.get(name, "an array")?;
        if list.is_some_and(|list| list.as_array().is_none_or(|list| !list.is_empty())) {
            return Err(ApiError::invalid(
                format!(
                    "`{name}` is not supported yet: tool and function calls are not implemented"
                ),
                name,
            ));
        }
    }
    for name in ["tool_choice", "function_call"] {
        let choice: Option<Value> = fields.get(name, "a string or an object")?;
        if choice.is_some_and(|choice| choice != "none" && choice != "auto") {
            return Err(ApiError::invalid(
                format!(
                    "`{name}` is not supported yet: tool and function calls are not implemented"
                ),
                name,
            ));
        }
    }
    Ok(())
}

/// Most alternatives a request may ask log-probabilities of.
const MAX_TOP_LOGPROBS: u64 = 20;

/// How many alternatives to give log-probabilities of, if they were asked for: chat's `logprobs:
/// true` with `top_logprobs`, or text completions' `logprobs: N`.
fn logprobs_asked(fields: &Fields, chat: bool) -> Result<Option<usize>, ApiError> {
    let range = format!("an integer from 0 to {MAX_TOP_LOGPROBS}");
    let count = |name: &'static str| -> Result<Option<usize>, ApiError> {
        match fields.get::<u64>(name, &range)? {
            Some(n) if n > MAX_TOP_LOGPROBS => {
                Err(ApiError::invalid(format!("`{name}` must be {range}"), name))
            }
            n => Ok(n.map(|n| n as usize)),
        }
    };
    if !chat {
        return count("logprobs");
    }
    let top = count("top_logprobs")?;
    match fields.get::<bool>("logprobs", "true or false")? {
        Some(true) => Ok(Some(top.unwrap_or(0))),
        _ if top.is_some() => Err(ApiError::invalid(
            "`top_logprobs` needs `logprobs: true`",
            "top_logprobs",
        )),
        _ => Ok(None),
    }
}

fn chat_messages(fields: &Fields) -> Result<Vec<ChatMessage>, ApiError> {
    let messages: Vec<RequestMessage> = fields
        .get(
            "messages",
            "an array of messages, each an object with a string `role` and a `content` that is a \
             string or an array of text parts",
        )?
        .ok_or_else(|| ApiError::invalid("`messages` is required", "messages"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid("messages is empty", "messages"));
    }
    messages
        .into_iter()
        .map(|message| {
            // OpenAI's `developer` messages are what chat templates call `system`.
            let role = match message.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        format!(
                            "unsupported role `{other}`: use system, developer, user or assistant"
                        ),
                        "messages",
                    ))
                }
            };
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
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn completion_prompt(fields: &Fields) -> Result<Prompt, ApiError> {
    let prompt = fields
        .get(
            "prompt",
            "a string, an array holding one string, or an array of token ids",
        )?
        .ok_or_else(|| ApiError::invalid("`prompt` is required", "prompt"))?;
    match prompt {
        PromptInput::Text(text) => Ok(Prompt::Text(text)),
        PromptInput::Texts(mut texts) if texts.len() == 1 => Ok(Prompt::Text(texts.remove(0))),
        PromptInput::Texts(_) => Err(ApiError::invalid(
            "only one prompt per request is supported",
            "prompt",
        )),
        PromptInput::Ids(ids) => Ok(Prompt::Ids(ids)),
    }
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
    let mut object = json!({ "id": server.model, "object": "model", "created": server.created,
                             "owned_by": "tern", "aliases": server.aliases });
    if let (Value::Object(object), Value::Object(description)) = (&mut object, &server.description)
    {
        object.extend(description.clone());
    }
    object
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint",
    )
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("this endpoint does not accept {method} requests"),
    )
}

async fn chat_completions(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    answer(&server, &headers, body, true).await
}

async fn completions(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    answer(&server, &headers, body, false).await
}

/// Reads, validates and tokenizes a chat (`chat`) or text completion request, then answers it.
/// Text completions default to 16 tokens, as OpenAI's do; chats to `--max-tokens-default`.
async fn answer(
    server: &Server,
    headers: &HeaderMap,
    body: Body,
    chat: bool,
) -> Result<Response, ApiError> {
    let fields = Fields::read(headers, body, server.body_timeout).await?;
    server.check_model(fields.model()?.as_deref())?;
    let mut params = Params::of(
        &fields,
        if chat { server.chat_max_tokens } else { 16 },
        server.vocab,
    )?;
    params.options.logprobs = logprobs_asked(&fields, chat)?;
    refuse_unsupported(&fields)?;
    let prompt = match chat {
        true => Prompt::Chat(chat_messages(&fields)?),
        false => completion_prompt(&fields)?,
    };
    let prompt = server.tokenize(prompt).await?;
    let shape = Shape {
        id: server.response_id(if chat { "chatcmpl" } else { "cmpl" }),
        model: server.model.clone(),
        created: unix_seconds(),
        chat,
        include_usage: params.include_usage,
        logprobs: params
            .options
            .logprobs
            .map(|_| Arc::clone(&server.prompter)),
        text_offset: 0,
    };
    respond(server, prompt, params, shape).await
}

/// Queues the job and waits for its first event, so that a request the worker rejects (bad
/// sampling parameters) gets an HTTP error instead of a stream.
async fn respond(
    server: &Server,
    prompt: Vec<u32>,
    params: Params,
    shape: Shape,
) -> Result<Response, ApiError> {
    let stream = params.stream;
    let mut events = server.submit(prompt, params.options)?;
    let first = match events.recv().await {
        Some(Event::Failed(error)) => return Err(error.into()),
        Some(event) => event,
        None => return Err(ApiError::server("the model worker has stopped")),
    };
    if stream {
        Ok(Sse::new(sse_stream(first, events, shape)).into_response())
    } else {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let mut event = Some(first);
        while let Some(current) = event {
            match current {
                Event::Text(piece, token) => {
                    if let Some(entry) = shape.logprob_entry(token, text.chars().count()) {
                        logprobs.push(entry);
                    }
                    text.push_str(&piece);
                }
                Event::Done(summary) => {
                    let logprobs = shape.logprobs.is_some().then(|| shape.logprobs(logprobs));
                    return Ok(Json(shape.whole(&text, logprobs, &summary)).into_response());
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
    mut shape: Shape,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let opening = shape
        .chat
        .then(|| shape.chunk(json!({ "role": "assistant", "content": "" }), None, None));
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
    /// Set when log-probabilities were asked for: what spells their tokens.
    logprobs: Option<Arc<Prompter>>,
    /// Characters streamed so far (text completions' `text_offset`).
    text_offset: usize,
}

/// One token's log-probabilities, shaped for the response, and where its text starts.
struct LogprobEntry {
    token: String,
    logprob: f32,
    top: Vec<(String, f32)>,
    text_offset: usize,
}

impl Shape {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, false) => "chat.completion",
            (true, true) => "chat.completion.chunk",
            (false, _) => "text_completion",
        }
    }

    /// The entry of a token with log-probabilities; none for a control token (an end of turn, say:
    /// it is no part of the text, and OpenAI lists none for it).
    fn logprob_entry(
        &self,
        token: Option<(u32, TokenLogprobs)>,
        text_offset: usize,
    ) -> Option<LogprobEntry> {
        let prompter = self.logprobs.as_ref()?;
        let (id, logprobs) = token?;
        if prompter.tokenizer.is_special(id) {
            return None;
        }
        let spell = |id: u32| prompter.tokenizer.decode(&[id], false).unwrap_or_default();
        Some(LogprobEntry {
            token: spell(id),
            logprob: logprobs.logprob,
            top: logprobs
                .top
                .into_iter()
                .map(|(id, logprob)| (spell(id), logprob))
                .collect(),
            text_offset,
        })
    }

    /// The `logprobs` of a choice: OpenAI's chat shape (`content`: one object per token) or its
    /// text completion shape (parallel arrays).
    fn logprobs(&self, entries: Vec<LogprobEntry>) -> Value {
        if self.chat {
            let content: Vec<Value> = entries
                .into_iter()
                .map(|e| {
                    let top: Vec<Value> = e
                        .top
                        .iter()
                        .map(|(token, logprob)| {
                            json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() })
                        })
                        .collect();
                    json!({ "token": e.token, "logprob": e.logprob, "bytes": e.token.as_bytes(),
                            "top_logprobs": top })
                })
                .collect();
            json!({ "content": content, "refusal": null })
        } else {
            let top: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let map: serde_json::Map<String, Value> = e
                        .top
                        .iter()
                        .map(|(token, logprob)| (token.clone(), json!(logprob)))
                        .collect();
                    Value::Object(map)
                })
                .collect();
            json!({ "tokens": entries.iter().map(|e| &e.token).collect::<Vec<_>>(),
                    "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": entries.iter().map(|e| e.text_offset).collect::<Vec<_>>() })
        }
    }

    fn whole(&self, text: &str, logprobs: Option<Value>, summary: &Summary) -> Value {
        let choice = if self.chat {
            json!({ "index": 0, "message": { "role": "assistant", "content": text },
                    "finish_reason": summary.finish_reason, "logprobs": logprobs })
        } else {
            json!({ "index": 0, "text": text, "finish_reason": summary.finish_reason,
                    "logprobs": logprobs })
        };
        json!({ "id": self.id, "object": self.object(false), "created": self.created,
                "model": self.model, "choices": [choice], "usage": usage(summary) })
    }

    /// One streamed chunk as JSON text: a delta (chat) or text piece, or the finish reason.
    fn chunk(&self, delta: Value, logprobs: Option<Value>, finish_reason: Option<&str>) -> String {
        let choice = if self.chat {
            json!({ "index": 0, "delta": delta, "finish_reason": finish_reason,
                    "logprobs": logprobs })
        } else {
            let text = delta.get("content").cloned().unwrap_or_else(|| json!(""));
            json!({ "index": 0, "text": text, "finish_reason": finish_reason,
                    "logprobs": logprobs })
        };
        json!({ "id": self.id, "object": self.object(true), "created": self.created,
                "model": self.model, "choices": [choice] })
        .to_string()
    }

    fn chunks(&mut self, event: Event) -> Vec<String> {
        match event {
            Event::Text(text, token) => {
                let entry = self.logprob_entry(token, self.text_offset);
                if text.is_empty() && entry.is_none() {
                    return Vec::new();
                }
                let logprobs = entry.map(|entry| self.logprobs(vec![entry]));
                self.text_offset += text.chars().count();
                vec![self.chunk(json!({ "content": text }), logprobs, None)]
            }
            Event::Done(summary) => {
                let mut chunks = vec![self.chunk(json!({}), None, Some(summary.finish_reason))];
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
    /// Sent as `Retry-After` when the server is too busy.
    retry_after_seconds: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_seconds: None,
        }
    }

    fn invalid(message: impl Into<String>, param: impl Into<Option<&'static str>>) -> Self {
        ApiError {
            param: param.into(),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    fn forbidden(message: String) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "invalid_request_error", message)
    }

    fn server(message: &str) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    fn body(&self) -> Value {
        json!({ "message": self.message, "type": self.kind, "param": self.param, "code": self.code })
    }
}

fn unknown_model(name: &str) -> ApiError {
    ApiError {
        param: Some("model"),
        code: Some("model_not_found"),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("the model `{name}` does not exist"),
        )
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
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.body() }))).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response.headers_mut().insert(RETRY_AFTER, seconds.into());
        }
        response
    }
}
