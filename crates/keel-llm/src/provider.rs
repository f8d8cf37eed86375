//! One provider behind keel: an HTTP client for one upstream and its wire format. The three
//! kinds share the IO here; what differs (URLs, auth headers, bodies) is dispatched on the
//! closed `ProviderKind` enum into the format modules.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use keel_core::config::{ProviderConfig, ProviderKind};
use keel_core::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, StreamEvent};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sse::{SseDecoder, SseEvent};
use crate::{Error, Result, anthropic, gemini, openai, scrub_secrets};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent>> + Send>>;

/// A model engine inside the keel process (`kind = "local"`). keel-llm knows only this
/// interface; the binary plugs in the implementation (keel-local, llama.cpp).
pub trait LocalBackend: Send + Sync + std::fmt::Debug {
    /// Streams a chat answer from `model` (a catalog name or a path).
    fn chat_stream(&self, model: &str, request: &ChatRequest) -> BoxFuture<'static, Result<EventStream>>;
    fn embed(&self, model: &str, request: &EmbedRequest) -> BoxFuture<'static, Result<EmbedResponse>>;
}

/// Builds the local backend of a `kind = "local"` provider from its name and config.
pub type LocalFactory<'a> = &'a dyn Fn(&str, &ProviderConfig) -> Result<Arc<dyn LocalBackend>>;

/// Largest upstream error body keel reads.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    base_url: String,
    api_key: Option<SecretString>,
    api_key_env: Option<String>,
    headers: HeaderMap,
    http: reqwest::Client,
    pub first_token_timeout: Duration,
    pub total_timeout: Duration,
    /// Caps calls in flight (`max_concurrency`); waiting for a permit counts as upstream time.
    limit: Option<Arc<Semaphore>>,
    local: Option<Arc<dyn LocalBackend>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("name", &self.name).field("kind", &self.kind).field("base_url", &self.base_url).finish()
    }
}

impl Provider {
    /// Builds a provider from its config; `env` looks up environment variables.
    pub fn from_config(
        name: &str,
        config: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
        local: Option<LocalFactory<'_>>,
    ) -> Result<Provider> {
        let local = match (config.kind, local) {
            (ProviderKind::Local, Some(factory)) => Some(factory(name, config)?),
            (ProviderKind::Local, None) => {
                return Err(Error::Unsupported { provider: name.to_string(), what: "local models in this build" });
            }
            _ => None,
        };
        let mut headers = HeaderMap::new();
        for (key, value) in &config.headers {
            let key = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| Error::InvalidRequest(format!("providers.{name}.headers: `{key}` is not a header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| Error::InvalidRequest(format!("providers.{name}.headers: the value of `{key}` is not valid")))?;
            headers.insert(key, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs_f64(config.connect_timeout_s))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| Error::Connect { provider: name.to_string(), message: err.to_string() })?;
        Ok(Provider {
            name: name.to_string(),
            kind: config.kind,
            base_url: config.base_url().to_string(),
            api_key: config.api_key_env.as_deref().and_then(env).filter(|key| !key.is_empty()).map(SecretString::from),
            api_key_env: config.api_key_env.clone(),
            headers,
            http,
            first_token_timeout: Duration::from_secs_f64(config.first_token_timeout_s),
            total_timeout: Duration::from_secs_f64(config.timeout_s),
            limit: config.max_concurrency.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            local,
        })
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let limit = self.limit.clone()?;
        crate::timing::waiting(limit.acquire_owned()).await.ok()
    }

    fn key(&self) -> Result<Option<&str>> {
        match (&self.api_key, &self.api_key_env) {
            (Some(key), _) => Ok(Some(key.expose_secret())),
            (None, Some(env)) => Err(Error::MissingKey { provider: self.name.clone(), env: env.clone() }),
            (None, None) => Ok(None),
        }
    }

    fn post(&self, url: &str, body: &Value) -> Result<reqwest::RequestBuilder> {
        let key = self.key()?;
        let mut builder = self.http.post(url).headers(self.headers.clone()).json(body);
        match self.kind {
            ProviderKind::OpenAi => {
                if let Some(key) = key {
                    builder = builder.bearer_auth(key);
                }
            }
            ProviderKind::Anthropic => {
                if let Some(key) = key {
                    builder = builder.header("x-api-key", key);
                }
                builder = builder.header("anthropic-version", anthropic::API_VERSION);
            }
            ProviderKind::Gemini => {
                if let Some(key) = key {
                    builder = builder.header("x-goog-api-key", key);
                }
            }
            ProviderKind::Local => {}
        }
        Ok(builder)
    }

    fn transport_error(&self, err: &reqwest::Error, phase: &'static str) -> Error {
        if err.is_timeout() {
            Error::Timeout { provider: self.name.clone(), phase }
        } else if err.is_connect() || err.is_request() {
            Error::Connect { provider: self.name.clone(), message: scrub_secrets(&error_chain(err), None) }
        } else {
            Error::StreamCut { provider: self.name.clone(), message: scrub_secrets(&error_chain(err), None) }
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = crate::timing::waiting(builder.send()).await.map_err(|err| self.transport_error(&err, "the response headers"))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ERROR_BODY {
                break;
            }
        }
        let message = match self.kind {
            ProviderKind::OpenAi => openai::error_message(&body),
            ProviderKind::Anthropic => anthropic::error_message(&body),
            ProviderKind::Gemini | ProviderKind::Local => gemini::error_message(&body),
        };
        let key = self.api_key.as_ref().map(|key| key.expose_secret());
        Err(Error::Upstream { provider: self.name.clone(), status, message: scrub_secrets(&message, key), retry_after })
    }

    fn bad_response(&self, message: String) -> Error {
        let key = self.api_key.as_ref().map(|key| key.expose_secret());
        Error::BadResponse { provider: self.name.clone(), message: scrub_secrets(&message, key) }
    }

    /// One non-streaming chat call to the upstream `model` (the request's own `model` is the
    /// client's alias and is not sent).
    pub async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatResponse> {
        if let Some(local) = &self.local {
            let _permit = self.permit().await;
            let mut stream = local.chat_stream(model, request).await?;
            let mut collector = keel_core::chat::StreamCollector::default();
            while let Some(event) = stream.next().await {
                collector.push(&event?);
            }
            return Ok(collector.into_response());
        }
        let (url, body, json_tool) = self.chat_call(request, model, false)?;
        let _permit = self.permit().await;
        let response = self.send(self.post(&url, &body)?).await?;
        let bytes = crate::timing::waiting(response.bytes()).await.map_err(|err| self.transport_error(&err, "the response body"))?;
        let parsed = match self.kind {
            ProviderKind::OpenAi => openai::chat_response_from_wire(&bytes),
            ProviderKind::Anthropic => anthropic::messages_response_from_wire(&bytes, json_tool.as_deref()),
            ProviderKind::Gemini | ProviderKind::Local => gemini::generate_response_from_wire(&bytes),
        };
        parsed.map_err(|message| self.bad_response(message))
    }

    fn chat_call(&self, request: &ChatRequest, model: &str, stream: bool) -> Result<(String, Value, Option<String>)> {
        Ok(match self.kind {
            ProviderKind::OpenAi => {
                (format!("{}/chat/completions", self.base_url), openai::chat_request_to_wire(request, model, stream), None)
            }
            ProviderKind::Anthropic => {
                let (body, json_tool) = anthropic::messages_request_to_wire(request, model, stream)?;
                (format!("{}/v1/messages", self.base_url), body, json_tool)
            }
            ProviderKind::Local => return Err(Error::Unsupported { provider: self.name.clone(), what: "HTTP calls" }),
            ProviderKind::Gemini => {
                let url = if stream {
                    format!("{}/v1beta/models/{}:streamGenerateContent?alt=sse", self.base_url, model)
                } else {
                    format!("{}/v1beta/models/{}:generateContent", self.base_url, model)
                };
                (url, gemini::generate_request_to_wire(request)?, None)
            }
        })
    }

    /// Opens a streaming chat call. The future resolves once the upstream accepted the
    /// request (status and headers); events follow on the stream.
    pub async fn chat_stream(&self, request: &ChatRequest, model: &str) -> Result<EventStream> {
        if let Some(local) = &self.local {
            return local.chat_stream(model, request).await;
        }
        let (url, body, json_tool) = self.chat_call(request, model, true)?;
        let permit = self.permit().await;
        let response = self.send(self.post(&url, &body)?).await?;
        let decoder = match self.kind {
            ProviderKind::OpenAi => Decoder::OpenAi(openai::ChunkDecoder::default()),
            ProviderKind::Anthropic => Decoder::Anthropic(anthropic::EventDecoder::new(json_tool)),
            ProviderKind::Gemini | ProviderKind::Local => Decoder::Gemini(gemini::ChunkDecoder::default()),
        };
        let state = StreamState {
            bytes: Box::pin(response.bytes_stream()),
            sse: SseDecoder::default(),
            decoder,
            pending: VecDeque::new(),
            eof: false,
            closed: false,
            saw_finish: false,
            provider: self.name.clone(),
            _permit: permit,
        };
        Ok(Box::pin(futures_util::stream::unfold(state, StreamState::next)))
    }

    /// Counts a request's input tokens with the provider's own counter, where it has one
    /// (Anthropic's `count_tokens`); `None` where it has none.
    pub async fn count_tokens(&self, request: &ChatRequest, model: &str) -> Result<Option<u64>> {
        if self.kind != ProviderKind::Anthropic {
            return Ok(None);
        }
        let (mut body, _) = anthropic::messages_request_to_wire(request, model, false)?;
        if let Some(map) = body.as_object_mut() {
            map.remove("max_tokens");
        }
        let url = format!("{}/v1/messages/count_tokens", self.base_url);
        let response = self.send(self.post(&url, &body)?).await?;
        let bytes = crate::timing::waiting(response.bytes()).await.map_err(|err| self.transport_error(&err, "the response body"))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|err| self.bad_response(err.to_string()))?;
        match value.get("input_tokens").and_then(Value::as_u64) {
            Some(n) => Ok(Some(n)),
            None => Err(self.bad_response("count_tokens answered without input_tokens".into())),
        }
    }

    pub async fn embed(&self, request: &EmbedRequest, model: &str) -> Result<EmbedResponse> {
        if let Some(local) = &self.local {
            return local.embed(model, request).await;
        }
        let (url, body) = match self.kind {
            ProviderKind::OpenAi => (format!("{}/embeddings", self.base_url), openai::embed_request_to_wire(request, model)),
            ProviderKind::Gemini => (
                format!("{}/v1beta/models/{}:batchEmbedContents", self.base_url, model),
                gemini::embed_request_to_wire(request, model)?,
            ),
            ProviderKind::Anthropic | ProviderKind::Local => {
                return Err(Error::Unsupported { provider: self.name.clone(), what: "embeddings" });
            }
        };
        let _permit = self.permit().await;
        let response = self.send(self.post(&url, &body)?).await?;
        let bytes = crate::timing::waiting(response.bytes()).await.map_err(|err| self.transport_error(&err, "the response body"))?;
        let parsed = match self.kind {
            ProviderKind::Gemini => gemini::embed_response_from_wire(&bytes, model),
            _ => openai::embed_response_from_wire(&bytes),
        };
        let response = parsed.map_err(|message| self.bad_response(message))?;
        if response.vectors.len() != request.input.len() {
            return Err(self.bad_response(format!(
                "asked for {} embeddings, got {}",
                request.input.len(),
                response.vectors.len()
            )));
        }
        Ok(response)
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads `retry-after-ms` or `retry-after` (seconds; an HTTP date counts as one second).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    match value.parse::<f64>() {
        Ok(secs) => Some(Duration::from_secs_f64(secs.max(0.0))),
        Err(_) => Some(Duration::from_secs(1)),
    }
}

enum Decoder {
    OpenAi(openai::ChunkDecoder),
    Anthropic(anthropic::EventDecoder),
    Gemini(gemini::ChunkDecoder),
}

impl Decoder {
    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if event.data.is_empty() {
            return Ok(());
        }
        match self {
            Decoder::OpenAi(decoder) => decoder.on_data(&event.data, out),
            Decoder::Anthropic(decoder) => decoder.on_data(&event.data, out),
            Decoder::Gemini(decoder) => decoder.on_data(&event.data, out),
        }
    }

    fn done(&self) -> bool {
        match self {
            Decoder::OpenAi(decoder) => decoder.done,
            Decoder::Anthropic(decoder) => decoder.done,
            Decoder::Gemini(_) => false,
        }
    }
}

struct StreamState {
    bytes: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    sse: SseDecoder,
    decoder: Decoder,
    pending: VecDeque<Result<StreamEvent>>,
    /// The upstream closed the connection.
    eof: bool,
    /// Nothing more is read: after an error, or after the end was checked.
    closed: bool,
    saw_finish: bool,
    provider: String,
    _permit: Option<OwnedSemaphorePermit>,
}

impl StreamState {
    fn cut(&self, message: &str) -> Error {
        Error::StreamCut { provider: self.provider.clone(), message: scrub_secrets(message, None) }
    }

    async fn next(mut self) -> Option<(Result<StreamEvent>, StreamState)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if let Ok(StreamEvent::Finish(_)) = &item {
                    self.saw_finish = true;
                }
                return Some((item, self));
            }
            if self.closed || self.decoder.done() {
                return None;
            }
            if self.eof {
                self.closed = true;
                if self.saw_finish {
                    return None;
                }
                let err = self.cut("the stream ended before the answer was complete");
                return Some((Err(err), self));
            }
            let mut sse_events = Vec::new();
            match crate::timing::waiting(self.bytes.next()).await {
                Some(Ok(chunk)) => self.sse.push(&chunk, &mut sse_events),
                Some(Err(err)) => {
                    let err = self.cut(&error_chain(&err));
                    self.pending.push_back(Err(err));
                    self.closed = true;
                    continue;
                }
                None => {
                    self.sse.finish(&mut sse_events);
                    self.eof = true;
                }
            }
            let mut events = Vec::new();
            for sse_event in &sse_events {
                if let Err(message) = self.decoder.on_event(sse_event, &mut events) {
                    let err = self.cut(&message);
                    self.pending.extend(events.drain(..).map(Ok));
                    self.pending.push_back(Err(err));
                    self.closed = true;
                    break;
                }
            }
            self.pending.extend(events.into_iter().map(Ok));
        }
    }
}
