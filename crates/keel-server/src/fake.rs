//! A deterministic fake upstream speaking the OpenAI, Anthropic and Gemini wire formats as
//! their documentation describes them, streaming included. Tests, `keel bench gateway` and
//! the Python SDK suite point keel at it. It reads requests as plain JSON (not through
//! keel's own wire types) so it checks keel's translation rather than mirroring it.
//!
//! The upstream model name picks the behaviour: `fail-500`, `fail-429`, `flaky` (first call
//! 503, then fine), `garbage`, `cut` (stream cut half-way), `slow-<ms>`, `hold` (waits for
//! `POST /fake/release`), `pause-after-tools` (answers at once, except a request carrying tool
//! results, which waits for `POST /fake/release`), `bad-request`, `cache`/`reason` (report
//! cached/reasoning tokens);
//! anything else answers: a JSON document when a schema was asked for, tool calls when tools
//! were offered, an echo of the last user message otherwise.

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

fn answer(ask: &Ask) -> Answer {
    let (reply, mut finish) = if let Some(schema) = &ask.schema {
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

// ---------------------------------------------------------------------------------------
// OpenAI

fn openai_content_text(content: &Value, n_images: &mut usize) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(part["text"].as_str().unwrap_or_default().to_string()),
                    Some("image_url") => *n_images += 1,
                    _ => {}
                }
            }
            out.join(" ")
        }
        _ => String::new(),
    }
}

fn openai_ask(body: &Value) -> Result<Ask, String> {
    let mut ask = Ask { model: body["model"].as_str().ok_or("model is required")?.to_string(), ..Ask::default() };
    let messages = body["messages"].as_array().filter(|m| !m.is_empty()).ok_or("messages must be a non-empty array")?;
    let mut call_ids = Vec::new();
    for message in messages {
        let role = message["role"].as_str().ok_or("every message needs a role")?;
        let mut n_images = 0;
        let text = openai_content_text(&message["content"], &mut n_images);
        ask.input_words += words(&text);
        match role {
            "system" | "developer" => {}
            "user" => {
                ask.last_user = text;
                ask.n_images = n_images;
                ask.tool_results.clear();
            }
            "assistant" => {
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    call_ids.push(call["id"].as_str().unwrap_or_default().to_string());
                }
            }
            "tool" => {
                let id = message["tool_call_id"].as_str().ok_or("tool messages need tool_call_id")?;
                if !call_ids.iter().any(|known| known == id) {
                    return Err(format!("tool_call_id {id} answers no earlier tool call"));
                }
                ask.tool_results.push(text);
            }
            other => return Err(format!("unknown role {other}")),
        }
    }
    for tool in body["tools"].as_array().into_iter().flatten() {
        let function = &tool["function"];
        let name = function["name"].as_str().ok_or("tools need a function name")?;
        ask.tools.push((name.to_string(), function["parameters"].clone()));
    }
    ask.forced_tool = body.pointer("/tool_choice/function/name").and_then(Value::as_str).map(str::to_string);
    if body.pointer("/response_format/type").and_then(Value::as_str) == Some("json_schema") {
        ask.schema = body.pointer("/response_format/json_schema/schema").cloned();
    } else if body.pointer("/response_format/type").and_then(Value::as_str) == Some("json_object") {
        ask.schema = Some(json!({"type": "object", "properties": {"answer": {"type": "string"}}}));
    }
    ask.stream = body["stream"].as_bool().unwrap_or(false);
    ask.include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    ask.max_tokens = body["max_completion_tokens"].as_u64().or(body["max_tokens"].as_u64());
    ask.stop = match &body["stop"] {
        Value::String(stop) => vec![stop.clone()],
        Value::Array(stops) => stops.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    Ok(ask)
}

fn openai_usage(answer: &Answer) -> Value {
    json!({
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": answer.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": answer.reasoning, "audio_tokens": 0},
    })
}

fn openai_finish(finish: &str) -> &'static str {
    match finish {
        "length" => "length",
        "tool_calls" => "tool_calls",
        _ => "stop",
    }
}

const BENCH_RESPONSE: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok","refusal":null},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

async fn openai_chat(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::OpenAi;
    let _in_flight = InFlight::new(&fake);
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    let model = value["model"].as_str().unwrap_or_default().to_string();
    if model == "bench" {
        fake.requests.fetch_add(1, Ordering::Relaxed);
        return ([(header::CONTENT_TYPE, "application/json")], BENCH_RESPONSE).into_response();
    }
    if let Err(response) = prelude(&fake, api, "/v1/chat/completions", &headers, &value, &model).await {
        return response;
    }
    let ask = match openai_ask(&value) {
        Ok(ask) => ask,
        Err(message) => return error(api, 400, &message),
    };
    if model.contains("garbage") {
        return if ask.stream { sse(vec!["data: {not json\n\n".into()], "") } else { garbage() };
    }
    if model.contains("pause-after-tools") && !ask.tool_results.is_empty() {
        let mut release = fake.release.subscribe();
        let _ = release.wait_for(|released| *released).await;
    }
    let answer = answer(&ask);
    let id = "chatcmpl-fake";
    if !ask.stream {
        let message = match &answer.reply {
            Reply::Text(text) => json!({"role": "assistant", "content": text, "refusal": null}),
            Reply::Calls(calls) => json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": calls.iter().map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})).collect::<Vec<_>>()}),
        };
        let body = json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": ask.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "finish_reason": openai_finish(answer.finish), "logprobs": null}],
            "usage": openai_usage(&answer),
        });
        if model.contains("cut") {
            let text = body.to_string();
            return ([(header::CONTENT_TYPE, "application/json")], text[..text.len() / 2].to_string()).into_response();
        }
        return axum::Json(body).into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": ask.model, "system_fingerprint": "fp_fake", "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
        )
    };
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    match &answer.reply {
        Reply::Text(text) => {
            for piece in text_chunks(text) {
                frames.push(chunk(json!({"content": piece}), None));
            }
        }
        Reply::Calls(calls) => {
            for (idx, (call_id, name, args)) in calls.iter().enumerate() {
                frames.push(chunk(json!({"tool_calls": [{"index": idx, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
                let (a, b) = split_half(args);
                for part in [a, b] {
                    frames.push(chunk(json!({"tool_calls": [{"index": idx, "function": {"arguments": part}}]}), None));
                }
            }
        }
    }
    frames.push(chunk(json!({}), Some(openai_finish(answer.finish))));
    if ask.include_usage {
        frames.push(format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": ask.model, "choices": [], "usage": openai_usage(&answer)})
        ));
    }
    frames.push("data: [DONE]\n\n".into());
    sse(frames, &model)
}

fn fake_vector(text: &str, dims: usize) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        state = (state ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    let mut vector: Vec<f32> = (0..dims)
        .map(|i| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407 + i as u64);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-9);
    for value in &mut vector {
        *value /= norm;
    }
    vector
}

async fn openai_embeddings(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::OpenAi;
    let _in_flight = InFlight::new(&fake);
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    let model = value["model"].as_str().unwrap_or_default().to_string();
    if let Err(response) = prelude(&fake, api, "/v1/embeddings", &headers, &value, &model).await {
        return response;
    }
    let inputs: Vec<String> = match &value["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_string)).collect(),
        _ => return error(api, 400, "input must be a string or an array"),
    };
    let dims = value["dimensions"].as_u64().unwrap_or(8) as usize;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": fake_vector(text, dims)}))
        .collect();
    let tokens: u64 = inputs.iter().map(|text| words(text)).sum();
    axum::Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Anthropic

fn anthropic_ask(body: &Value) -> Result<Ask, String> {
    let mut ask = Ask { model: body["model"].as_str().ok_or("model: Field required")?.to_string(), ..Ask::default() };
    ask.max_tokens = Some(body["max_tokens"].as_u64().ok_or("max_tokens: Field required")?);
    let messages = body["messages"].as_array().filter(|m| !m.is_empty()).ok_or("messages: at least one message is required")?;
    if let Some(system) = body["system"].as_str() {
        ask.input_words += words(system);
    }
    let mut tool_ids = Vec::new();
    for (idx, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(format!("messages.{idx}.role: Input should be 'user' or 'assistant'"));
        }
        if idx == 0 && role != "user" {
            return Err("messages: the first message must use the user role".into());
        }
        let blocks = match &message["content"] {
            Value::String(text) => vec![json!({"type": "text", "text": text})],
            Value::Array(blocks) => blocks.clone(),
            _ => return Err(format!("messages.{idx}.content: Input should be a valid list")),
        };
        let mut texts = Vec::new();
        let mut n_images = 0;
        let mut results = Vec::new();
        for block in &blocks {
            match block["type"].as_str() {
                Some("text") => texts.push(block["text"].as_str().unwrap_or_default().to_string()),
                Some("image") => n_images += 1,
                Some("tool_use") => tool_ids.push(block["id"].as_str().unwrap_or_default().to_string()),
                Some("tool_result") => {
                    let id = block["tool_use_id"].as_str().unwrap_or_default();
                    if !tool_ids.iter().any(|known| known == id) {
                        return Err(format!("messages.{idx}: unexpected `tool_use_id` found in `tool_result` blocks: {id}"));
                    }
                    let text = match &block["content"] {
                        Value::String(text) => text.clone(),
                        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" "),
                        _ => String::new(),
                    };
                    results.push(text);
                }
                Some("document") => {}
                other => return Err(format!("messages.{idx}: unknown content block type {other:?}")),
            }
        }
        let text = texts.join(" ");
        ask.input_words += words(&text);
        if role == "user" {
            if results.is_empty() {
                ask.tool_results.clear();
                ask.last_user = text;
                ask.n_images = n_images;
            } else {
                ask.tool_results = results;
            }
        }
    }
    for tool in body["tools"].as_array().into_iter().flatten() {
        let name = tool["name"].as_str().ok_or("tools: name is required")?;
        if !tool["input_schema"].is_object() {
            return Err(format!("tools: input_schema of {name} is required"));
        }
        ask.tools.push((name.to_string(), tool["input_schema"].clone()));
    }
    if body.pointer("/tool_choice/type").and_then(Value::as_str) == Some("tool") {
        ask.forced_tool = body.pointer("/tool_choice/name").and_then(Value::as_str).map(str::to_string);
    }
    ask.stream = body["stream"].as_bool().unwrap_or(false);
    ask.stop = body["stop_sequences"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
    Ok(ask)
}

async fn anthropic_count_tokens(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::Anthropic;
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    record(&fake, "/v1/messages/count_tokens", &value);
    if let Err(response) = check_key(&fake, &headers, api) {
        return response;
    }
    let mut with_max = value.clone();
    with_max["max_tokens"] = json!(1);
    match anthropic_ask(&with_max) {
        Ok(ask) => axum::Json(json!({"input_tokens": ask.input_words + 3})).into_response(),
        Err(message) => error(api, 400, &message),
    }
}

fn anthropic_stop(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        "stop_sequence" => "stop_sequence",
        _ => "end_turn",
    }
}

async fn anthropic_messages(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::Anthropic;
    let _in_flight = InFlight::new(&fake);
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    if headers.get("anthropic-version").is_none() {
        return error(api, 400, "anthropic-version: header is required");
    }
    let model = value["model"].as_str().unwrap_or_default().to_string();
    if let Err(response) = prelude(&fake, api, "/v1/messages", &headers, &value, &model).await {
        return response;
    }
    let ask = match anthropic_ask(&value) {
        Ok(ask) => ask,
        Err(message) => return error(api, 400, &message),
    };
    if model.contains("garbage") {
        return if ask.stream { sse(vec!["event: message_start\ndata: {not json\n\n".into()], "") } else { garbage() };
    }
    let answer = answer(&ask);
    let stop_sequence = if answer.finish == "stop_sequence" { json!(ask.stop.first()) } else { Value::Null };
    let usage = json!({
        "input_tokens": answer.input_tokens - answer.cached,
        "output_tokens": answer.output_tokens,
        "cache_read_input_tokens": answer.cached,
        "cache_creation_input_tokens": 0,
    });
    if !ask.stream {
        let content: Vec<Value> = match &answer.reply {
            Reply::Text(text) => vec![json!({"type": "text", "text": text})],
            Reply::Calls(calls) => calls
                .iter()
                .map(|(id, name, args)| json!({"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": serde_json::from_str::<Value>(args).unwrap_or(json!({}))}))
                .collect(),
        };
        return axum::Json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": ask.model, "content": content,
            "stop_reason": anthropic_stop(answer.finish), "stop_sequence": stop_sequence, "usage": usage,
        }))
        .into_response();
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": ask.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": answer.input_tokens - answer.cached, "output_tokens": 1, "cache_read_input_tokens": answer.cached, "cache_creation_input_tokens": 0}}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    match &answer.reply {
        Reply::Text(text) => {
            frames.push(event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            for piece in text_chunks(text) {
                frames.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})));
            }
            frames.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        }
        Reply::Calls(calls) => {
            for (idx, (id, name, args)) in calls.iter().enumerate() {
                frames.push(event("content_block_start", json!({"type": "content_block_start", "index": idx, "content_block": {"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": {}}})));
                let (a, b) = split_half(args);
                for part in [a, b] {
                    frames.push(event("content_block_delta", json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": part}})));
                }
                frames.push(event("content_block_stop", json!({"type": "content_block_stop", "index": idx})));
            }
        }
    }
    frames.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": anthropic_stop(answer.finish), "stop_sequence": stop_sequence}, "usage": {"output_tokens": answer.output_tokens}}),
    ));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    sse(frames, &model)
}

// ---------------------------------------------------------------------------------------
// Gemini

fn gemini_ask(model: &str, body: &Value) -> Result<Ask, String> {
    let mut ask = Ask { model: model.to_string(), ..Ask::default() };
    let contents = body["contents"].as_array().filter(|c| !c.is_empty()).ok_or("contents is not specified")?;
    let mut call_names = Vec::new();
    for content in contents {
        let role = content["role"].as_str().unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(format!("Please use a valid role: user, model. Got {role}"));
        }
        let mut texts = Vec::new();
        let mut n_images = 0;
        let mut results = Vec::new();
        for part in content["parts"].as_array().into_iter().flatten() {
            if let Some(text) = part["text"].as_str() {
                texts.push(text.to_string());
            } else if part.get("inlineData").is_some() || part.get("fileData").is_some() {
                n_images += 1;
            } else if let Some(call) = part.get("functionCall") {
                call_names.push(call["name"].as_str().unwrap_or_default().to_string());
            } else if let Some(response) = part.get("functionResponse") {
                let name = response["name"].as_str().unwrap_or_default();
                if !call_names.iter().any(|known| known == name) {
                    return Err(format!("functionResponse {name} answers no earlier functionCall"));
                }
                results.push(response["response"].to_string());
            }
        }
        let text = texts.join(" ");
        ask.input_words += words(&text);
        if role == "user" {
            if results.is_empty() {
                ask.tool_results.clear();
                ask.last_user = text;
                ask.n_images = n_images;
            } else {
                ask.tool_results = results;
            }
        }
    }
    for tool in body["tools"].as_array().into_iter().flatten() {
        for declaration in tool["functionDeclarations"].as_array().into_iter().flatten() {
            let name = declaration["name"].as_str().ok_or("functionDeclarations need a name")?;
            ask.tools.push((name.to_string(), lower_types(&declaration["parameters"])));
        }
    }
    ask.forced_tool = body
        .pointer("/toolConfig/functionCallingConfig/allowedFunctionNames/0")
        .and_then(Value::as_str)
        .map(str::to_string);
    ask.schema = body.pointer("/generationConfig/responseSchema").map(lower_types);
    ask.max_tokens = body.pointer("/generationConfig/maxOutputTokens").and_then(Value::as_u64);
    ask.stop = body
        .pointer("/generationConfig/stopSequences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    Ok(ask)
}

/// Gemini schemas spell types in upper case; `sample` reads JSON Schema's lower case.
fn lower_types(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value) {
                        ("type", Value::String(kind)) => json!(kind.to_lowercase()),
                        _ => lower_types(value),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(lower_types).collect()),
        other => other.clone(),
    }
}

fn gemini_finish(finish: &str) -> &'static str {
    if finish == "length" { "MAX_TOKENS" } else { "STOP" }
}

async fn gemini(State(fake): State<Fake>, Path(rest): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::Gemini;
    let _in_flight = InFlight::new(&fake);
    let Some((model, method)) = rest.split_once(':') else {
        return error(api, 404, "expected models/{model}:{method}");
    };
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    if let Err(response) = prelude(&fake, api, &format!("/v1beta/models/{rest}"), &headers, &value, model).await {
        return response;
    }
    if method == "batchEmbedContents" {
        let embeddings: Vec<Value> = value["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                let text = item.pointer("/content/parts/0/text").and_then(Value::as_str).unwrap_or_default();
                let dims = item["outputDimensionality"].as_u64().unwrap_or(8) as usize;
                json!({"values": fake_vector(text, dims)})
            })
            .collect();
        return axum::Json(json!({"embeddings": embeddings})).into_response();
    }
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        other => return error(api, 404, &format!("unknown method {other}")),
    };
    let ask = match gemini_ask(model, &value) {
        Ok(ask) => ask,
        Err(message) => return error(api, 400, &message),
    };
    if model.contains("garbage") {
        return if stream { sse(vec!["data: {not json\n\n".into()], "") } else { garbage() };
    }
    let answer = answer(&ask);
    let usage = json!({
        "promptTokenCount": answer.input_tokens,
        "candidatesTokenCount": answer.output_tokens,
        "totalTokenCount": answer.input_tokens + answer.output_tokens + answer.reasoning,
        "cachedContentTokenCount": answer.cached,
        "thoughtsTokenCount": answer.reasoning,
    });
    let parts: Vec<Value> = match &answer.reply {
        Reply::Text(text) => vec![json!({"text": text})],
        Reply::Calls(calls) => calls
            .iter()
            .map(|(_, name, args)| json!({"functionCall": {"name": name, "args": serde_json::from_str::<Value>(args).unwrap_or(json!({}))}}))
            .collect(),
    };
    if !stream {
        return axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": gemini_finish(answer.finish), "index": 0}],
            "usageMetadata": usage, "modelVersion": model, "responseId": "fake-response",
        }))
        .into_response();
    }
    let frame = |value: Value| format!("data: {value}\r\n\r\n");
    let mut frames = Vec::new();
    match &answer.reply {
        Reply::Text(text) => {
            for piece in text_chunks(text) {
                frames.push(frame(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}], "modelVersion": model, "responseId": "fake-response"})));
            }
            frames.push(frame(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": gemini_finish(answer.finish), "index": 0}], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-response"})));
        }
        Reply::Calls(_) => {
            frames.push(frame(json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-response"})));
        }
    }
    sse(frames, model)
}

