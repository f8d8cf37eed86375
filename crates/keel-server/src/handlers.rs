//! The model endpoints: Chat Completions, Messages, Embeddings and Models, and the call,
//! trace and stream machinery the Responses API (`responses.rs`) shares. Each parses its
//! wire format into the canonical model, calls the router, and writes the answer back in
//! the same wire format, streaming included, leaving a trace of the call.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use keel_core::chat::StreamCollector;
use keel_core::{ChatRequest, ChatResponse, StreamEvent, Usage};
use keel_llm::{EventStream, Native, RouteInfo, anthropic, openai};
use keel_store::Trace;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::metrics::CallMetrics;
use crate::prompts::PromptUse;
use crate::{ApiError, App, Format};

pub(crate) fn new_id() -> String {
    keel_core::time_ordered_id(keel_core::now_ms() as u64, fastrand::u128(..))
}

/// Reads a request body: every failure is a 400 (or 413) naming what is wrong.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>, format: Format) -> Result<Bytes, ApiError> {
    let bytes = body.map_err(|rejection| ApiError::unreadable_body(&rejection, format))?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("invalid_json", "the request body is empty; send a JSON object", format));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("invalid_json", "the request body must be a JSON object", format));
    }
    Ok(bytes)
}

/// Reads a body into a wire type; every failure is a 400 naming what is wrong.
pub(crate) fn parse_bytes<T: DeserializeOwned>(bytes: &Bytes, format: Format) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {inner}"), format)
        } else if path == "." {
            ApiError::bad_request("invalid_request", format!("invalid request: {inner}"), format)
        } else {
            ApiError::bad_request("invalid_request", format!("{path}: {inner}"), format)
        }
    })
}

/// Reads a body into a wire type; every failure is a 400 (or 413) naming what is wrong.
pub(crate) fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>, format: Format) -> Result<(T, Bytes), ApiError> {
    let bytes = body_bytes(body, format)?;
    let value = parse_bytes(&bytes, format)?;
    Ok((value, bytes))
}

/// One model call in progress, for its trace and metrics.
pub(crate) struct Call {
    pub(crate) app: App,
    pub(crate) id: String,
    endpoint: &'static str,
    pub(crate) alias: String,
    stream: bool,
    started: Instant,
    created_ms: i64,
    request_body: Option<String>,
    overhead: Duration,
    /// The registry prompt the request was rendered from.
    pub(crate) prompt: Option<PromptUse>,
    /// The virtual key the request came with, and its hold on the key's limits and budgets
    /// (settled to the real usage when the trace is made, released if the call is dropped).
    caller: Option<Arc<keel_teams::Caller>>,
    reservation: Option<keel_teams::Reservation>,
    end_user: Option<String>,
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.app.access.ledger.settle(reservation, 0, 0.0);
        }
    }
}

#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) info: RouteInfo,
    pub(crate) status: u16,
    pub(crate) usage: Usage,
    pub(crate) finish_reason: Option<String>,
    pub(crate) error: Option<(&'static str, String)>,
    pub(crate) response_body: Option<String>,
    pub(crate) ttft: Option<Duration>,
}

impl Call {
    pub(crate) fn new(app: &App, endpoint: &'static str, alias: &str, stream: bool, body: &Bytes) -> Call {
        Call {
            app: app.clone(),
            id: new_id(),
            endpoint,
            alias: alias.to_string(),
            stream,
            started: Instant::now(),
            created_ms: keel_core::now_ms(),
            request_body: app.log_bodies.then(|| String::from_utf8_lossy(body).into_owned()),
            overhead: Duration::ZERO,
            prompt: None,
            caller: crate::access::caller(),
            reservation: None,
            end_user: None,
        }
    }

    /// The call if its key may make it (the model allowed, its worst case held against the
    /// key's rate limits and budgets); else the refusal, traced, before any upstream sees it.
    pub(crate) async fn admit(mut self, format: Format, demand: crate::access::Demand) -> Result<Call, Response> {
        let admitted = match &self.caller {
            None => Ok(None),
            Some(caller) => crate::access::check_model(caller, &self.alias, format)
                .and_then(|()| crate::access::reserve(&self.app, caller, &self.alias, &demand, format).map(Some)),
        };
        self.end_user = demand.user;
        match admitted {
            Ok(reservation) => {
                self.reservation = reservation;
                Ok(self)
            }
            Err(error) => {
                let id = self.id.clone();
                self.finish(Call::failed(RouteInfo::default(), &error)).await;
                let mut response = error.into_response();
                if let Ok(value) = HeaderValue::from_str(&id) {
                    response.headers_mut().insert("x-keel-trace-id", value);
                }
                Err(response)
            }
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Leaves the trace without waiting (from a `Drop`).
    pub(crate) fn send_now(&mut self, outcome: Outcome) {
        let trace = self.trace(outcome);
        self.app.traces.send_now(trace);
    }

    pub(crate) fn mark_overhead(&mut self) {
        self.overhead = self.started.elapsed().saturating_sub(keel_llm::timing::upstream_so_far());
    }

    fn trace(&mut self, outcome: Outcome) -> Trace {
        let trace = self.build_trace(outcome);
        crate::evals::consider(&self.app, &trace);
        trace
    }

    fn build_trace(&mut self, outcome: Outcome) -> Trace {
        let cost = if outcome.info.model.is_empty() {
            None
        } else {
            self.app.router.prices.cost(&outcome.info.model, &outcome.usage)
        };
        if let Some(reservation) = self.reservation.take() {
            let used = outcome.usage.input_tokens + outcome.usage.output_tokens;
            self.app.access.ledger.settle(reservation, used, cost.unwrap_or(0.0));
        }
        let latency = self.started.elapsed();
        self.app.metrics.record(&CallMetrics {
            endpoint: self.endpoint,
            alias: &self.alias,
            provider: &outcome.info.provider,
            model: &outcome.info.model,
            status: outcome.status,
            error_code: outcome.error.as_ref().map(|(code, _)| *code),
            latency,
            ttft: outcome.ttft,
            overhead: self.overhead,
            input_tokens: outcome.usage.input_tokens,
            output_tokens: outcome.usage.output_tokens,
            cached_tokens: outcome.usage.cached_input_tokens,
            cost_usd: cost,
            key: self.caller.as_ref().map(|c| (c.key.id.as_str(), c.key.team.as_str())),
        });
        Trace {
            id: std::mem::take(&mut self.id),
            created_ms: self.created_ms,
            endpoint: self.endpoint.to_string(),
            alias: std::mem::take(&mut self.alias),
            provider: outcome.info.provider,
            model: outcome.info.model,
            status: outcome.status,
            stream: self.stream,
            attempts: outcome.info.attempts,
            latency_ms: latency.as_secs_f64() * 1000.0,
            ttft_ms: outcome.ttft.map(|d| d.as_secs_f64() * 1000.0),
            overhead_us: self.overhead.as_micros() as u64,
            input_tokens: outcome.usage.input_tokens,
            output_tokens: outcome.usage.output_tokens,
            cached_tokens: outcome.usage.cached_input_tokens,
            reasoning_tokens: outcome.usage.reasoning_tokens,
            cost_usd: cost,
            finish_reason: outcome.finish_reason,
            error: outcome.error.map(|(_, message)| message),
            request_body: self.request_body.take(),
            response_body: outcome.response_body,
            prompt_name: self.prompt.as_ref().map(|p| p.name.clone()),
            prompt_version: self.prompt.as_ref().map(|p| p.version),
            prompt_arm: self.prompt.as_ref().and_then(|p| p.arm.clone()),
            key_id: self.caller.as_ref().map(|c| c.key.id.clone()),
            team: self.caller.as_ref().map(|c| c.key.team.clone()),
            end_user: self.end_user.take(),
        }
    }

    pub(crate) async fn finish(mut self, outcome: Outcome) {
        let trace = self.trace(outcome);
        if self.app.traces.send(trace).await.is_err() {
            tracing::error!("the trace writer has stopped; a trace was not written");
        }
    }

    pub(crate) fn failed(info: RouteInfo, error: &ApiError) -> Outcome {
        Outcome {
            info,
            status: error.status.as_u16(),
            error: Some((error.code, error.message.clone())),
            response_body: Some(error.body().to_string()),
            ..Outcome::default()
        }
    }
}

pub(crate) fn finish_label(response: &ChatResponse) -> String {
    openai::finish_reason_str(&response.finish_reason).to_string()
}

pub(crate) fn route_headers(response: &mut Response, id: &str, info: &RouteInfo) {
    let headers = response.headers_mut();
    for (name, value) in [("x-keel-trace-id", id), ("x-keel-provider", &info.provider), ("x-keel-model", &info.model)] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers.insert("x-keel-attempts", HeaderValue::from(info.attempts));
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub async fn chat_completions(State(app): State<App>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    chat_entry(app, &headers, body, Format::OpenAi, Native::OpenAiChat, "chat.completions", |bytes, format| {
        parse_bytes::<openai::WireChatRequest>(bytes, format)
            .and_then(|wire| openai::chat_request_from_wire(wire).map_err(|err| ApiError::from_llm(&err, format)))
    })
    .await
}

pub async fn messages(State(app): State<App>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    chat_entry(app, &headers, body, Format::Anthropic, Native::AnthropicMessages, "messages", |bytes, format| {
        parse_bytes::<anthropic::WireMessagesRequest>(bytes, format)
            .and_then(|wire| anthropic::messages_request_from_wire(wire).map_err(|err| ApiError::from_llm(&err, format)))
    })
    .await
}

/// Both chat entry points: a registry prompt rendered in, then the same-format lane where
/// it applies, else the translated path (`parse` reads the API's request); the prompt's
/// version is named on whatever answer comes back.
async fn chat_entry(
    app: App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    format: Format,
    native: Native,
    endpoint: &'static str,
    parse: fn(&Bytes, Format) -> Result<ChatRequest, ApiError>,
) -> Response {
    let bytes = match body_bytes(body, format) {
        Ok(bytes) => bytes,
        Err(err) => return err.into_response(),
    };
    let (bytes, prompt) = match crate::prompts::apply(&app, &bytes, headers, format) {
        Ok(Some((rendered, prompt))) => (rendered, Some(prompt)),
        Ok(None) => (bytes, None),
        Err(err) => return err.into_response(),
    };
    let mut response = match crate::forward::forward(&app, &bytes, headers, native, format, endpoint, prompt.as_ref()).await {
        Some(response) => response,
        None => match parse(&bytes, format) {
            Ok(request) => chat(app, request, bytes, format, endpoint, prompt.clone()).await,
            Err(err) => err.into_response(),
        },
    };
    if let Some(prompt) = &prompt {
        prompt.mark(&mut response);
    }
    response
}

/// Anthropic's `count_tokens`: exact when the alias's first route is an Anthropic model,
/// estimated otherwise (`x-keel-token-count` says which).
pub async fn count_tokens(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let format = Format::Anthropic;
    let (mut wire, _) = match parse_body::<anthropic::WireMessagesRequest>(body, format) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    wire.stream = None;
    let request = match anthropic::messages_request_from_wire(wire) {
        Ok(request) => request,
        Err(err) => return ApiError::from_llm(&err, format).into_response(),
    };
    match app.router.count_tokens(&request).await {
        Ok((input_tokens, exact)) => {
            let mut response = axum::Json(json!({"input_tokens": input_tokens})).into_response();
            let how = if exact { "exact" } else { "estimated" };
            response.headers_mut().insert("x-keel-token-count", HeaderValue::from_static(how));
            response
        }
        Err(err) => ApiError::from_llm(&err, format).into_response(),
    }
}

pub(crate) fn response_to_wire(response: &ChatResponse, call_id: &str, alias: &str, format: Format) -> Value {
    match format {
        Format::OpenAi => openai::chat_response_to_wire(response, &format!("chatcmpl-{call_id}"), alias, unix_secs()),
        Format::Anthropic => anthropic::messages_response_to_wire(response, &format!("msg_{call_id}"), alias),
    }
}

async fn chat(app: App, request: ChatRequest, bytes: Bytes, format: Format, endpoint: &'static str, prompt: Option<PromptUse>) -> Response {
    let demand = crate::access::Demand::chat(&request, &bytes);
    let mut call = match Call::new(&app, endpoint, &request.model, request.stream, &bytes).admit(format, demand).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    call.prompt = prompt;
    if request.stream {
        let (opened, info) = app.router.chat_stream(&request).await;
        call.mark_overhead();
        return match opened {
            Ok(stream) => {
                let encoder = Encoder::for_chat(format, &call, request.include_usage);
                stream_response(call, info, stream, encoder, format)
            }
            Err(err) => {
                let error = ApiError::from_llm(&err, format);
                let outcome = Call::failed(info.clone(), &error);
                let id = call.id.clone();
                call.finish(outcome).await;
                let mut response = error.into_response();
                route_headers(&mut response, &id, &info);
                response
            }
        };
    }
    let (result, info) = app.router.chat(&request).await;
    call.mark_overhead();
    let id = call.id.clone();
    match result {
        Ok(response) => {
            let body = response_to_wire(&response, &call.id, &call.alias, format);
            let text = body.to_string();
            let outcome = Outcome {
                info: info.clone(),
                status: 200,
                usage: response.usage,
                finish_reason: Some(finish_label(&response)),
                error: None,
                response_body: app.log_bodies.then(|| text.clone()),
                ttft: None,
            };
            call.finish(outcome).await;
            let mut response = ([(header::CONTENT_TYPE, "application/json")], text).into_response();
            route_headers(&mut response, &id, &info);
            response
        }
        Err(err) => {
            let error = ApiError::from_llm(&err, format);
            call.finish(Call::failed(info.clone(), &error)).await;
            let mut response = error.into_response();
            route_headers(&mut response, &id, &info);
            response
        }
    }
}

pub(crate) enum Encoder {
    OpenAi(openai::ChunkEncoder),
    Anthropic(anthropic::EventEncoder),
    Responses(Box<crate::responses::Streamed>),
}

impl Encoder {
    fn for_chat(format: Format, call: &Call, include_usage: bool) -> Encoder {
        match format {
            Format::OpenAi => Encoder::OpenAi(openai::ChunkEncoder::new(
                format!("chatcmpl-{}", call.id),
                call.alias.clone(),
                unix_secs(),
                include_usage,
            )),
            Format::Anthropic => Encoder::Anthropic(anthropic::EventEncoder::new(format!("msg_{}", call.id), call.alias.clone())),
        }
    }

    /// What goes out before the first upstream event.
    fn start(&mut self, out: &mut String) {
        if let Encoder::Responses(streamed) = self {
            let mut events = Vec::new();
            streamed.encoder.start(&mut events);
            push_events(out, events);
        }
    }

    fn encode(&mut self, event: &StreamEvent, out: &mut String) {
        match self {
            Encoder::OpenAi(encoder) => {
                if let Some(chunk) = encoder.encode(event) {
                    push_data(out, &chunk);
                }
            }
            Encoder::Anthropic(encoder) => {
                let mut events = Vec::new();
                encoder.encode(event, &mut events);
                push_events(out, events);
            }
            Encoder::Responses(streamed) => {
                let mut events = Vec::new();
                streamed.encoder.encode(event, &mut events);
                push_events(out, events);
            }
        }
    }

    fn finish(&mut self, out: &mut String) {
        match self {
            Encoder::OpenAi(encoder) => {
                if let Some(chunk) = encoder.finish() {
                    push_data(out, &chunk);
                }
                out.push_str("data: [DONE]\n\n");
            }
            Encoder::Anthropic(encoder) => {
                let mut events = Vec::new();
                encoder.finish(&mut events);
                push_events(out, events);
            }
            Encoder::Responses(streamed) => push_events(out, streamed.finish()),
        }
    }

    /// An error after the stream started: the API's own in-stream error shape.
    fn error(&mut self, error: &ApiError, out: &mut String) {
        match self {
            Encoder::OpenAi(_) => push_data(out, &error.body()),
            Encoder::Anthropic(_) => push_events(out, vec![("error", error.body())]),
            Encoder::Responses(streamed) => push_events(out, streamed.fail(error)),
        }
    }

    /// The body a trace keeps for this stream, where the encoder has it.
    fn final_body(&self) -> Option<String> {
        match self {
            Encoder::Responses(streamed) => streamed.final_body.clone(),
            _ => None,
        }
    }
}

pub(crate) fn push_data(out: &mut String, value: &Value) {
    out.push_str("data: ");
    out.push_str(&value.to_string());
    out.push_str("\n\n");
}

pub(crate) fn push_events(out: &mut String, events: Vec<(&'static str, Value)>) {
    for (name, data) in events {
        out.push_str("event: ");
        out.push_str(name);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }
}

/// Drives one upstream stream to the client; leaves the trace when the stream ends, fails,
/// or is dropped because the client went away.
struct StreamDriver {
    upstream: EventStream,
    encoder: Encoder,
    collector: StreamCollector,
    call: Option<Call>,
    info: RouteInfo,
    ttft: Duration,
    format: Format,
    started: bool,
    done: bool,
}

impl StreamDriver {
    fn outcome(&mut self, status: u16, error: Option<&ApiError>) -> Outcome {
        let collector = std::mem::take(&mut self.collector);
        let usage = collector.usage;
        let response = collector.into_response();
        let log_bodies = self.call.as_ref().is_some_and(|call| call.app.log_bodies);
        let response_body = log_bodies.then(|| {
            self.encoder.final_body().unwrap_or_else(|| {
                let (id, alias) = self.call.as_ref().map(|c| (c.id.clone(), c.alias.clone())).unwrap_or_default();
                response_to_wire(&response, &id, &alias, self.format).to_string()
            })
        });
        Outcome {
            info: self.info.clone(),
            status,
            usage,
            finish_reason: Some(finish_label(&response)),
            error: error.map(|e| (e.code, e.message.clone())),
            response_body,
            ttft: Some(self.ttft),
        }
    }

    async fn next_frame(&mut self) -> Option<String> {
        let mut out = String::new();
        if !self.started {
            self.started = true;
            self.encoder.start(&mut out);
        }
        while out.is_empty() {
            if self.done {
                return None;
            }
            match self.upstream.next().await {
                Some(Ok(event)) => {
                    self.collector.push(&event);
                    self.encoder.encode(&event, &mut out);
                }
                Some(Err(err)) => {
                    let error = ApiError::from_llm(&err, self.format);
                    self.encoder.error(&error, &mut out);
                    self.done = true;
                    let outcome = self.outcome(error.status.as_u16(), Some(&error));
                    if let Some(call) = self.call.take() {
                        call.finish(outcome).await;
                    }
                }
                None => {
                    self.encoder.finish(&mut out);
                    self.done = true;
                    let outcome = self.outcome(200, None);
                    if let Some(call) = self.call.take() {
                        call.finish(outcome).await;
                    }
                }
            }
        }
        Some(out)
    }
}

impl Drop for StreamDriver {
    fn drop(&mut self) {
        if self.call.is_some() {
            let error = ApiError::client_closed(self.format);
            let outcome = self.outcome(499, Some(&error));
            if let Some(mut call) = self.call.take() {
                let trace = call.trace(outcome);
                call.app.traces.send_now(trace);
            }
        }
    }
}

pub(crate) fn stream_response(call: Call, info: RouteInfo, upstream: EventStream, encoder: Encoder, format: Format) -> Response {
    let id = call.id.clone();
    let driver = StreamDriver {
        upstream,
        encoder,
        collector: StreamCollector::default(),
        ttft: call.started.elapsed(),
        call: Some(call),
        info: info.clone(),
        format,
        started: false,
        done: false,
    };
    let frames = futures_util::stream::unfold(driver, |mut driver| async move {
        let frame = driver.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), driver))
    });
    let mut response = Response::new(Body::from_stream(frames));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    route_headers(&mut response, &id, &info);
    response
}

pub async fn embeddings(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let format = Format::OpenAi;
    let (wire, bytes) = match parse_body::<openai::WireEmbedRequest>(body, format) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    let (request, base64) = match openai::embed_request_from_wire(wire) {
        Ok(parsed) => parsed,
        Err(err) => return ApiError::from_llm(&err, format).into_response(),
    };
    let demand = crate::access::Demand { input_bytes: bytes.len(), no_output: true, ..Default::default() };
    let mut call = match Call::new(&app, "embeddings", &request.model, false, &bytes).admit(format, demand).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let (result, info) = app.router.embed(&request).await;
    call.mark_overhead();
    let id = call.id.clone();
    let mut response = match result {
        Ok(response) => {
            let body = openai::embed_response_to_wire(&response, &request.model, base64);
            let text = body.to_string();
            let outcome = Outcome {
                info: info.clone(),
                status: 200,
                usage: response.usage,
                // Vectors are large and say little; the trace keeps their count and size.
                response_body: app.log_bodies.then(|| {
                    json!({"n_vectors": response.vectors.len(), "dimensions": response.vectors.first().map_or(0, Vec::len)}).to_string()
                }),
                ..Outcome::default()
            };
            call.finish(outcome).await;
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(err) => {
            let error = ApiError::from_llm(&err, format);
            call.finish(Call::failed(info.clone(), &error)).await;
            error.into_response()
        }
    };
    route_headers(&mut response, &id, &info);
    response
}

/// Lists the configured aliases, in OpenAI's shape, or Anthropic's when the client sent
/// `anthropic-version`.
pub async fn models(State(app): State<App>, headers: HeaderMap) -> Response {
    let names: Vec<&str> = app.router.aliases().map(|alias| alias.name.as_str()).collect();
    if headers.contains_key("anthropic-version") {
        let data: Vec<Value> = names
            .iter()
            .map(|name| json!({"id": name, "type": "model", "display_name": name, "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        return axum::Json(json!({
            "data": data, "has_more": false, "first_id": names.first(), "last_id": names.last(),
        }))
        .into_response();
    }
    let data: Vec<Value> = names.iter().map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "keel"})).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn model(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.router.alias(&id) {
        Ok(alias) => axum::Json(json!({"id": alias.name, "object": "model", "created": 0, "owned_by": "keel"})).into_response(),
        Err(err) => ApiError::from_llm(&err, Format::OpenAi).into_response(),
    }
}
