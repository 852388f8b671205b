//! `tern serve` end to end on the bitnet-2b4t fixture: an OpenAI-compatible client's view of the
//! responses, the error shapes, and concurrent streams with clients that disconnect midway.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/fixtures/bitnet-2b4t")
        .display()
        .to_string()
}

/// A `tern serve` process on a free port; killed when dropped.
struct Server {
    child: Child,
    base: String,
    /// Every line the server wrote to stderr.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "-m", &fixture(), "--port", "0", "--context", "256"])
            .env("XDG_RUNTIME_DIR", "/tmp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(" on http://").nth(1) {
                    let _ = address_tx.send(rest.trim_end_matches("/v1").to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let Ok(address) = address_rx.recv_timeout(Duration::from_secs(120)) else {
            panic!("tern serve did not start: {:?}", log.lock().unwrap());
        };
        let server = Server {
            child,
            base: format!("http://{address}"),
            log,
        };
        let (status, body) = server.get("/health");
        assert_eq!((status, &body["status"]), (200, &json!("ok")));
        server
    }

    fn get(&self, path: &str) -> (u16, Value) {
        reply(ureq::get(&format!("{}{path}", self.base)).call())
    }

    fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        reply(
            ureq::post(&format!("{}{path}", self.base))
                .set("content-type", "application/json")
                .send_string(body),
        )
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    /// Opens a streaming request; the caller reads its SSE lines.
    fn open_stream(&self, path: &str, body: &Value) -> impl BufRead {
        let response = ureq::post(&format!("{}{path}", self.base))
            .set("content-type", "application/json")
            .send_string(&body.to_string())
            .expect("streaming request accepted");
        assert_eq!(response.content_type(), "text/event-stream");
        BufReader::new(response.into_reader())
    }

    /// A whole SSE stream: every `data:` payload before `[DONE]`, checked for well-formedness.
    fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let mut chunks = Vec::new();
        for event in sse_events(self.open_stream(path, body)) {
            if event == "[DONE]" {
                return chunks;
            }
            chunks.push(serde_json::from_str(&event).expect("chunk is JSON"));
        }
        panic!("the stream ended without [DONE] after {chunks:?}");
    }

    fn cancelled_generations(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.ends_with("finish: cancelled"))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = response.status();
    (status, response.into_json().expect("JSON body"))
}

/// The `data:` payloads of an SSE body, checking that every event is one `data:` line.
fn sse_events(reader: impl BufRead) -> impl Iterator<Item = String> {
    let mut lines = reader.lines().map(|l| l.expect("readable stream"));
    std::iter::from_fn(move || loop {
        let line = lines.next()?;
        if line.is_empty() {
            continue;
        }
        let data = line
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data line: {line:?}"));
        return Some(data.to_string());
    })
}

fn chat_request(message: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": fixture(),
        "messages": [{ "role": "user", "content": message }],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// The text of a streamed chat, checking the chunks' shape along the way.
fn streamed_content(chunks: &[Value]) -> String {
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = &chunks[0]["id"];
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    chunks
        .iter()
        .map(|chunk| {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(&chunk["id"], id);
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn tern_run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", "-m", &fixture(), "--temperature", "0"])
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .expect("tern run runs");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.strip_suffix('\n').unwrap().to_string()
}

#[test]
fn chat_and_completions_match_tern_run() {
    let server = Server::start();
    let (status, body) = server.post("/v1/chat/completions", &chat_request("Hello", 24, false));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        content,
        tern_run(&["--chat", "--prompt", "Hello", "-n", "24"])
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 24);
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 1);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + 24)
    );

    let chunks = server.stream("/v1/chat/completions", &chat_request("Hello", 24, true));
    assert_eq!(streamed_content(&chunks), content);

    let completion = json!({ "prompt": "The", "max_tokens": 12, "temperature": 0 });
    let (status, body) = server.post("/v1/completions", &completion);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert_eq!(text, tern_run(&["--prompt", "The", "-n", "12"]));
    let mut streaming = completion.clone();
    streaming["stream"] = json!(true);
    let streamed: String = server
        .stream("/v1/completions", &streaming)
        .iter()
        .map(|chunk| chunk["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text);

    let (status, body) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["id"], fixture());
}

#[test]
fn errors_are_openai_shaped() {
    let server = Server::start();
    let cases = [
        (
            "/v1/chat/completions",
            "{not json".to_string(),
            400,
            Value::Null,
        ),
        (
            "/v1/chat/completions",
            json!({ "model": "no-such-model", "messages": [] }).to_string(),
            404,
            json!("model_not_found"),
        ),
        (
            "/v1/completions",
            json!({ "prompt": "word ".repeat(400) }).to_string(),
            400,
            json!("context_length_exceeded"),
        ),
        (
            "/v1/chat/completions",
            json!({ "messages": [{ "role": "user", "content": "Hi" }], "temperature": 7 })
                .to_string(),
            400,
            Value::Null,
        ),
    ];
    for (path, body, expected_status, expected_code) in cases {
        let (status, reply) = server.post_raw(path, &body);
        assert_eq!(status, expected_status, "{reply}");
        let error = &reply["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(error["type"], "invalid_request_error", "{reply}");
        assert!(error.get("param").is_some());
        assert_eq!(error["code"], expected_code, "{reply}");
    }
    assert_eq!(server.get("/v1/nothing-here").0, 404);
}

#[test]
fn concurrent_streams_are_independent_and_disconnects_cancel() {
    let server = Arc::new(Server::start());
    let messages = ["Hello", "Tell me a story", "What is 2+2?", "Bonjour"];
    let alone: Vec<String> = messages
        .iter()
        .map(|m| {
            let (status, body) = server.post("/v1/chat/completions", &chat_request(m, 20, false));
            assert_eq!(status, 200, "{body}");
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    let disconnecting = [3, 6];
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let server = Arc::clone(&server);
            let message = messages[i % messages.len()];
            std::thread::spawn(move || {
                if disconnecting.contains(&i) {
                    // Long enough to be cut short: read two chunks, then hang up.
                    let stream = server
                        .open_stream("/v1/chat/completions", &chat_request(message, 200, true));
                    let _ = sse_events(stream).take(2).count();
                    None
                } else {
                    let chunks =
                        server.stream("/v1/chat/completions", &chat_request(message, 20, true));
                    Some(streamed_content(&chunks))
                }
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        if let Some(content) = client.join().expect("client thread") {
            assert_eq!(content, alone[i % messages.len()], "client {i}");
        }
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while server.cancelled_generations() < disconnecting.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        server.cancelled_generations(),
        disconnecting.len(),
        "{:?}",
        server.log.lock().unwrap()
    );
    assert_eq!(server.get("/health").0, 200);
}
