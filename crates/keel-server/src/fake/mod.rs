//! A deterministic fake upstream speaking the OpenAI, Anthropic and Gemini wire formats as
//! their documentation describes them, streaming included. Tests, `keel bench gateway` and
//! the Python SDK suite point keel at it. It reads requests as plain JSON (not through
//! keel's own wire types) so it checks keel's translation rather than mirroring it.
//!
//! The upstream model name picks the behaviour: `fail-500`, `fail-429`, `flaky` (first call
//! 503, then fine), `garbage`, `cut` (stream cut half-way), `slow-<ms>`, `hold` (waits for
//! `POST /fake/release`), `pause-after-tools` (answers at once, except a request carrying tool
//! results, which waits for `POST /fake/release`), `bad-request`, `cache`/`reason` (report
//! cached/reasoning tokens), `shell` (a coding agent's turn: runs [`SHELL_PROOF`] through the
//! client's shell tool — `Bash`, `exec_command`, `shell` — then answers with what it printed);
//! anything else answers: a JSON document when a schema was asked for, tool calls when tools
//! were offered, an echo of the last user message otherwise.

mod anthropic;
mod gemini;
mod openai;

use anthropic::{anthropic_count_tokens, anthropic_messages};
use gemini::gemini;
use openai::{fake_vector, openai_chat, openai_embeddings};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::watch;

#[derive(Debug)]
pub struct FakeState {
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    counters: Mutex<HashMap<String, u32>>,
    release: watch::Sender<bool>,
    log: Mutex<Vec<(String, Value)>>,
    /// When set, requests must carry this key (Bearer, `x-api-key` or `x-goog-api-key`).
    key: Option<String>,
}

impl FakeState {
    pub fn new(key: Option<String>) -> Arc<FakeState> {
        Arc::new(FakeState {
            requests: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            counters: Mutex::new(HashMap::new()),
            release: watch::channel(false).0,
            log: Mutex::new(Vec::new()),
            key,
        })
    }

    /// The last requests received (path, JSON body), oldest first; at most 64 are kept.
    pub fn requests_seen(&self) -> Vec<(String, Value)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn release_held(&self) {
        self.release.send_replace(true);
    }
}

pub type Fake = Arc<FakeState>;

pub fn router(state: Fake) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/messages", post(anthropic_messages))
        .route("/v1/messages/count_tokens", post(anthropic_count_tokens))
        .route("/v1beta/models/{*rest}", post(gemini))
        .route("/fake/stats", get(stats))
        .route("/fake/release", post(release))
        .route("/fake/requests", get(requests))
        .with_state(state)
}

/// Serves the fake on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Fake) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// Starts the fake on a free loopback port; returns its address and state.
pub async fn spawn(key: Option<String>) -> std::io::Result<(SocketAddr, Fake)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = FakeState::new(key);
    tokio::spawn(serve(listener, state.clone()));
    Ok((addr, state))
}

async fn stats(State(fake): State<Fake>) -> impl IntoResponse {
    axum::Json(json!({
        "requests": fake.requests.load(Ordering::SeqCst),
        "in_flight": fake.in_flight.load(Ordering::SeqCst),
    }))
}

async fn release(State(fake): State<Fake>) -> impl IntoResponse {
    fake.release_held();
    axum::Json(json!({"released": true}))
}

async fn requests(State(fake): State<Fake>) -> impl IntoResponse {
    let log: Vec<Value> = fake.requests_seen().into_iter().map(|(path, body)| json!({"path": path, "body": body})).collect();
    axum::Json(Value::Array(log))
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    OpenAi,
    Anthropic,
    Gemini,
}

fn error(api: Api, status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match api {
        Api::OpenAi => json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}}),
        Api::Anthropic => json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
        Api::Gemini => json!({"error": {"code": status.as_u16(), "message": message, "status": "INVALID_ARGUMENT"}}),
    };
    (status, axum::Json(body)).into_response()
}

/// What a request asks for, read from any of the three formats.
#[derive(Default)]
struct Ask {
    model: String,
    stream: bool,
    include_usage: bool,
    last_user: String,
    n_images: usize,
    tool_results: Vec<String>,
    tools: Vec<(String, Value)>,
    forced_tool: Option<String>,
    schema: Option<Value>,
    max_tokens: Option<u64>,
    stop: Vec<String>,
    input_words: u64,
}

enum Reply {
    Text(String),
    Calls(Vec<(String, String, String)>),
}

struct Answer {
    reply: Reply,
    /// `stop`, `length` or `tool_calls`; each API spells these its own way.
    finish: &'static str,
    input_tokens: u64,
    output_tokens: u64,
    cached: u64,
    reasoning: u64,
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// A value that fits `schema`: the first enum value, the minimum of a bounded number, the
/// minimum count of array items, every property of an object.
pub fn sample(schema: &Value) -> Value {
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|v| v.first()) {
        return first.clone();
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        return options.first().map_or(Value::Null, sample);
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).find(|k| *k != "null").unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut out = serde_json::Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    out.insert(name.clone(), sample(prop));
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let item = schema.get("items").map_or(json!("x"), sample);
            Value::Array(vec![item; n as usize])
        }
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.5)),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!("Paris"),
    }
}

/// The command a `shell` model asks a coding agent to run: it leaves a file behind, so a
/// test can see the client really ran it, and prints a line the final answer repeats.
pub const SHELL_PROOF: &str = "echo keel-shell-ok > keel-proof.txt && cat keel-proof.txt";

/// A call to the client's shell tool, with only the required arguments: the command where
/// the schema wants one (a string, or an argv array), samples elsewhere.
fn shell_call(tools: &[(String, Value)]) -> Option<(String, String, String)> {
    let (name, schema) = tools.iter().find(|(name, _)| {
        matches!(name.as_str(), "Bash" | "exec_command" | "shell" | "shell_command" | "local_shell")
    })?;
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let mut args = serde_json::Map::new();
    for (prop, prop_schema) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        if !required.contains(&prop.as_str()) {
            continue;
        }
        let value = if matches!(prop.as_str(), "command" | "cmd") {
            if prop_schema.get("type").and_then(Value::as_str) == Some("array") {
                json!(["bash", "-lc", SHELL_PROOF])
            } else {
                json!(SHELL_PROOF)
            }
        } else {
            sample(prop_schema)
        };
        args.insert(prop.clone(), value);
    }
    Some(("call_fake_shell".to_string(), name.clone(), Value::Object(args).to_string()))
}

fn answer(ask: &Ask) -> Answer {
    let shell = if ask.model.contains("shell") && ask.tool_results.is_empty() { shell_call(&ask.tools) } else { None };
    let (reply, mut finish) = if let Some(call) = shell {
        (Reply::Calls(vec![call]), "tool_calls")
    } else if let Some(schema) = &ask.schema {
        (Reply::Text(sample(schema).to_string()), "stop")
    } else if !ask.tools.is_empty() && ask.tool_results.is_empty() {
        let chosen: Vec<&(String, Value)> = match &ask.forced_tool {
            Some(name) => ask.tools.iter().filter(|(tool, _)| tool == name).collect(),
            None => ask.tools.iter().take(2).collect(),
        };
        let calls = chosen
            .iter()
            .enumerate()
            .map(|(idx, (name, schema))| (format!("call_fake_{idx}"), name.clone(), sample(schema).to_string()))
            .collect();
        (Reply::Calls(calls), "tool_calls")
    } else if !ask.tool_results.is_empty() {
        (Reply::Text(format!("tool results: {}", ask.tool_results.join(" | "))), "stop")
    } else if ask.model.contains("cite") {
        // A grounded answer: the last line of source [1], cited, and a number no source has.
        let source = ask.last_user.split("\n[1] ").nth(1).unwrap_or_default();
        let source = source.split("\n[2] ").next().unwrap_or_default().split("\nQuestion:").next().unwrap_or_default();
        let first = source.lines().skip(1).filter(|l| !l.trim().is_empty()).last().unwrap_or("nothing");
        (Reply::Text(format!("{} [1]. Nothing else is known [9].", first.trim_end_matches('.'))), "stop")
    } else if ask.n_images > 0 {
        (Reply::Text(format!("echo: {} (+{} images)", ask.last_user, ask.n_images)), "stop")
    } else {
        (Reply::Text(format!("echo: {}", ask.last_user)), "stop")
    };
    let reply = match reply {
        Reply::Text(mut text) => {
            for stop in &ask.stop {
                if let Some(pos) = text.find(stop.as_str()) {
                    text.truncate(pos);
                    finish = "stop_sequence";
                }
            }
            if let Some(max) = ask.max_tokens
                && words(&text) > max {
                    text = text.split_whitespace().take(max as usize).collect::<Vec<_>>().join(" ");
                    finish = "length";
                }
            Reply::Text(text)
        }
        calls => calls,
    };
    let output_tokens = match &reply {
        Reply::Text(text) => words(text).max(1),
        Reply::Calls(calls) => 5 * calls.len() as u64,
    };
    Answer {
        reply,
        finish,
        input_tokens: ask.input_words + 3,
        output_tokens,
        cached: if ask.model.contains("cache") { 2 } else { 0 },
        reasoning: if ask.model.contains("reason") { 3 } else { 0 },
    }
}

#[expect(clippy::result_large_err, reason = "the error is the response to send; fakes favour plainness")]
fn check_key(fake: &FakeState, headers: &HeaderMap, api: Api) -> Result<(), Response> {
    let Some(key) = &fake.key else { return Ok(()) };
    let given = match api {
        Api::OpenAi => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string),
        Api::Anthropic => headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string),
        Api::Gemini => headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    if given.as_deref() == Some(key.as_str()) {
        return Ok(());
    }
    let shown = given.unwrap_or_default();
    Err(error(api, 401, &format!("Incorrect API key provided: {shown}")))
}

fn record(fake: &FakeState, path: &str, body: &Value) {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    let mut log = fake.log.lock().unwrap_or_else(|p| p.into_inner());
    if log.len() >= 64 {
        log.remove(0);
    }
    log.push((path.to_string(), body.clone()));
}

/// Everything before the answer: bookkeeping, key check, fault injection by model name.
async fn prelude(fake: &Fake, api: Api, path: &str, headers: &HeaderMap, body: &Value, model: &str) -> Result<(), Response> {
    record(fake, path, body);
    check_key(fake, headers, api)?;
    if model.contains("hold") {
        let mut release = fake.release.subscribe();
        let _ = release.wait_for(|released| *released).await;
    }
    if let Some(ms) = model.split("slow-").nth(1).and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        && let Ok(ms) = ms.parse::<u64>() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    if model.contains("fail-500") {
        return Err(error(api, 500, "the fake upstream failed on purpose"));
    }
    if model.contains("fail-429") {
        let mut response = error(api, 429, "rate limited on purpose");
        response.headers_mut().insert("retry-after-ms", "20".parse().expect("header value"));
        return Err(response);
    }
    if model.contains("bad-request") {
        return Err(error(api, 400, "the fake upstream rejects this request"));
    }
    if model.contains("flaky") {
        let mut counters = fake.counters.lock().unwrap_or_else(|p| p.into_inner());
        let n = counters.entry(model.to_string()).or_default();
        *n += 1;
        if *n == 1 {
            return Err(error(api, 503, "overloaded, try again"));
        }
    }
    Ok(())
}

/// Tracks a request in flight for as long as it lives.
struct InFlight(Fake);

impl InFlight {
    fn new(fake: &Fake) -> InFlight {
        fake.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(fake.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[expect(clippy::result_large_err, reason = "the error is the response to send; fakes favour plainness")]
fn parse(api: Api, body: &Bytes) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(error(api, 400, "the body is not a JSON object")),
    }
}

/// A stream body from SSE frames. `cut` sends two frames, lets them reach the client, then
/// ends the body with a transport error; `drip` spaces frames 50 ms apart.
fn sse(frames: Vec<String>, model: &str) -> Response {
    use futures_util::StreamExt;
    let cut = model.contains("cut");
    let gap = if model.contains("drip") { Duration::from_millis(50) } else { Duration::ZERO };
    let n = if cut { frames.len().min(2) } else { frames.len() };
    let items = futures_util::stream::iter(frames.into_iter().take(n)).then(move |frame| async move {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(frame))
    });
    let tail = futures_util::stream::iter(cut.then_some(())).then(|()| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err::<Bytes, _>(std::io::Error::other("cut on purpose"))
    });
    let mut response = Response::new(Body::from_stream(items.chain(tail)));
    response.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().expect("header value"));
    response
}

fn garbage() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], "<html>502 Bad Gateway</html>").into_response()
}

fn text_chunks(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        current.push(ch);
        if ch == ' ' {
            chunks.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn split_half(text: &str) -> (String, String) {
    let mid = text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(i, _)| i);
    (text[..mid].to_string(), text[mid..].to_string())
}
