//! What the hosted providers share: one HTTP client per provider, its key and headers, the
//! upstream's errors read into keel's (scrubbed of secrets), and a server-sent-event body
//! turned into a stream of canonical events by the kind's decoder.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use keel_core::chat::StreamCollector;
use keel_core::{ChatResponse, EmbedRequest, EmbedResponse, StreamEvent};
use keel_core::config::{HttpProviderConfig, ProviderConfig};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::EventStream;
use crate::forward::{Forwarded, Native, Relayed};
use crate::sse::{SseDecoder, SseEvent};
use crate::{Error, Result, scrub_secrets};

/// Largest upstream error body keel reads.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How a provider sends its key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// The key in a header of this name.
    Header(&'static str),
}

/// A stream decoder of one wire format: SSE `data` in, canonical events out.
pub(crate) trait Decode: Send {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String>;
    /// The format said the answer is over (OpenAI's `[DONE]`, Anthropic's `message_stop`).
    fn done(&self) -> bool {
        false
    }
}

/// Connection pools per provider: one per serving worker (see [`set_worker`]).
const POOLS: usize = 64;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as serving worker `index`: its upstream calls use that worker's
/// own connection pool, so a connection's IO stays on the thread that uses it.
pub fn set_worker(index: usize) {
    WORKER.with(|worker| worker.set(index % POOLS));
}

/// One provider's HTTP side.
pub(crate) struct Http {
    pub(crate) name: String,
    pub(crate) base_url: String,
    api_key: Option<SecretString>,
    api_key_env: Option<String>,
    headers: HeaderMap,
    connect_timeout: Duration,
    /// One client (connection pool) per serving worker, made on first use.
    clients: Box<[std::sync::OnceLock<reqwest::Client>]>,
    /// Parsed once: URLs by path, for the calls on the hot path.
    urls: std::sync::Mutex<std::collections::HashMap<&'static str, reqwest::Url>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("name", &self.name).field("base_url", &self.base_url).finish()
    }
}

impl Http {
    pub(crate) fn new(
        name: &str,
        config: &ProviderConfig,
        http: &HttpProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Http> {
        let mut headers = HeaderMap::new();
        for (key, value) in &http.headers {
            let key = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| Error::InvalidRequest(format!("providers.{name}.headers: `{key}` is not a header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| Error::InvalidRequest(format!("providers.{name}.headers: the value of `{key}` is not valid")))?;
            headers.insert(key, value);
        }
        let connect_timeout = Duration::from_secs_f64(http.connect_timeout_s);
        let http = Http {
            name: name.to_string(),
            base_url: config.base_url().to_string(),
            api_key: http.api_key_env.as_deref().and_then(env).filter(|key| !key.is_empty()).map(SecretString::from),
            api_key_env: http.api_key_env.clone(),
            headers,
            connect_timeout,
            clients: (0..POOLS).map(|_| std::sync::OnceLock::new()).collect(),
            urls: std::sync::Mutex::default(),
        };
        // Build one client now, so a bad setting fails at start-up rather than on a request.
        http.build_client()?;
        Ok(http)
    }

    fn build_client(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| Error::Connect { provider: self.name.clone(), message: err.to_string() })
    }

    /// This worker's client.
    fn client(&self) -> Result<&reqwest::Client> {
        let slot = &self.clients[WORKER.with(std::cell::Cell::get)];
        if let Some(client) = slot.get() {
            return Ok(client);
        }
        let client = self.build_client()?;
        Ok(slot.get_or_init(|| client))
    }

    /// The URL of `path` under the base URL, parsed once.
    pub(crate) fn url(&self, path: &'static str) -> Result<reqwest::Url> {
        let mut urls = self.urls.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(url) = urls.get(path) {
            return Ok(url.clone());
        }
        let url = reqwest::Url::parse(&format!("{}{path}", self.base_url))
            .map_err(|err| Error::Connect { provider: self.name.clone(), message: format!("bad URL: {err}") })?;
        urls.insert(path, url.clone());
        Ok(url)
    }

    fn key(&self) -> Result<Option<&str>> {
        match (&self.api_key, &self.api_key_env) {
            (Some(key), _) => Ok(Some(key.expose_secret())),
            (None, Some(env)) => Err(Error::MissingKey { provider: self.name.clone(), env: env.clone() }),
            (None, None) => Ok(None),
        }
    }

    /// A POST of `body` as JSON with the provider's headers and its key sent as `auth` says.
    pub(crate) fn post(&self, url: &str, body: &Value, auth: Auth) -> Result<reqwest::RequestBuilder> {
        let key = self.key()?;
        let mut builder = self.client()?.post(url).headers(self.headers.clone()).json(body);
        match (key, auth) {
            (Some(key), Auth::Bearer) => builder = builder.bearer_auth(key),
            (Some(key), Auth::Header(header)) => builder = builder.header(header, key),
            (None, _) => {}
        }
        Ok(builder)
    }

    /// A POST of a body that is JSON text already (the same-format lane).
    pub(crate) fn post_raw(&self, url: reqwest::Url, body: Bytes, auth: Auth) -> Result<reqwest::RequestBuilder> {
        let key = self.key()?;
        let mut builder = self
            .client()?
            .post(url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        match (key, auth) {
            (Some(key), Auth::Bearer) => builder = builder.bearer_auth(key),
            (Some(key), Auth::Header(header)) => builder = builder.header(header, key),
            (None, _) => {}
        }
        Ok(builder)
    }

    /// Sends a forwarded request and relays the answer: a whole one read once for the
    /// trace (`whole` decodes it; an unreadable answer is a bad response, as on the
    /// translating path), a stream relayed event by event with `decoder` reading it on the side.
    pub(crate) async fn forward(
        &self,
        builder: reqwest::RequestBuilder,
        error_message: fn(&[u8]) -> String,
        stream: Option<(Box<dyn Decode>, Native, bool)>,
        whole: fn(&[u8]) -> Result<ChatResponse, String>,
    ) -> Result<Forwarded> {
        let response = self.send(builder, error_message).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        match stream {
            None => {
                let bytes = crate::timing::waiting(response.bytes())
                    .await
                    .map_err(|err| self.transport_error(&err, "the response body"))?;
                let answer = whole(&bytes).map_err(|message| self.bad_response(message))?;
                Ok(Forwarded { content_type, body: Relayed::Whole { bytes, answer } })
            }
            Some((decoder, native, client_usage)) => Ok(Forwarded {
                content_type,
                body: Relayed::Stream(Relay {
                    bytes: Box::pin(response.bytes_stream()),
                    sse: SseDecoder::default(),
                    decoder,
                    native,
                    client_usage,
                    collector: StreamCollector::default(),
                    ahead: None,
                    eof: false,
                    closed: false,
                    saw_finish: false,
                    provider: self.name.clone(),
                }),
            }),
        }
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

    /// Sends a request; an error status becomes `Error::Upstream` with the message that
    /// `error_message` reads from the body (the kind's error shape).
    pub(crate) async fn send(&self, builder: reqwest::RequestBuilder, error_message: fn(&[u8]) -> String) -> Result<reqwest::Response> {
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
        let message = error_message(&body);
        let key = self.api_key.as_ref().map(|key| key.expose_secret());
        Err(Error::Upstream { provider: self.name.clone(), status, message: scrub_secrets(&message, key), retry_after })
    }

    /// Sends a request and reads the whole answer.
    pub(crate) async fn call(&self, builder: reqwest::RequestBuilder, error_message: fn(&[u8]) -> String) -> Result<Bytes> {
        let response = self.send(builder, error_message).await?;
        crate::timing::waiting(response.bytes()).await.map_err(|err| self.transport_error(&err, "the response body"))
    }

    /// An answer keel could not read, with the key scrubbed from the message.
    pub(crate) fn bad_response(&self, message: String) -> Error {
        let key = self.api_key.as_ref().map(|key| key.expose_secret());
        Error::BadResponse { provider: self.name.clone(), message: scrub_secrets(&message, key) }
    }

    /// An embeddings answer as read, with one vector per input, else a bad response.
    pub(crate) fn embeddings(&self, request: &EmbedRequest, parsed: Result<EmbedResponse, String>) -> Result<EmbedResponse> {
        let response = parsed.map_err(|message| self.bad_response(message))?;
        if response.vectors.len() != request.input.len() {
            return Err(self.bad_response(format!("asked for {} embeddings, got {}", request.input.len(), response.vectors.len())));
        }
        Ok(response)
    }

    /// Sends a streaming request: once the upstream accepted it, its SSE body decoded.
    pub(crate) async fn stream(
        &self,
        builder: reqwest::RequestBuilder,
        error_message: fn(&[u8]) -> String,
        decoder: Box<dyn Decode>,
    ) -> Result<EventStream> {
        let response = self.send(builder, error_message).await?;
        let state = StreamState {
            bytes: Box::pin(response.bytes_stream()),
            sse: SseDecoder::default(),
            decoder,
            pending: VecDeque::new(),
            eof: false,
            closed: false,
            saw_finish: false,
            provider: self.name.clone(),
        };
        Ok(Box::pin(futures_util::stream::unfold(state, StreamState::next)))
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

struct StreamState {
    bytes: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    sse: SseDecoder,
    decoder: Box<dyn Decode>,
    pending: VecDeque<Result<StreamEvent>>,
    /// The upstream closed the connection.
    eof: bool,
    /// Nothing more is read: after an error, or after the end was checked.
    closed: bool,
    saw_finish: bool,
    provider: String,
}

impl StreamState {
    fn cut(&self, message: &str) -> Error {
        Error::StreamCut { provider: self.provider.clone(), message: scrub_secrets(message, None) }
    }

    fn on_event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if event.data.is_empty() {
            return Ok(());
        }
        self.decoder.on_data(&event.data, out)
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
                if let Err(message) = self.on_event(sse_event, &mut events) {
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

/// A forwarded stream on its way to the client: the upstream's events relayed as they come
/// (OpenAI's usage chunk dropped where keel asked for it and the client did not), each read
/// on the side into `collector` for the trace.
pub struct Relay {
    bytes: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    sse: SseDecoder,
    decoder: Box<dyn Decode>,
    native: Native,
    client_usage: bool,
    /// What the stream amounted to so far.
    pub collector: StreamCollector,
    /// A frame read ahead (the first, read before the route is committed to).
    ahead: Option<Bytes>,
    eof: bool,
    closed: bool,
    saw_finish: bool,
    provider: String,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("provider", &self.provider).finish_non_exhaustive()
    }
}

impl Relay {
    fn cut(&mut self, message: &str) -> Error {
        self.closed = true;
        Error::StreamCut { provider: self.provider.clone(), message: scrub_secrets(message, None) }
    }

    /// Reads the first frame ahead: a stream that fails before it can still fall over to
    /// another route, as a translated stream does before its first event.
    pub async fn prime(&mut self) -> Result<()> {
        match self.next_frame().await {
            Some(Ok(first)) => {
                self.ahead = Some(first);
                Ok(())
            }
            Some(Err(err)) => Err(err),
            None => Err(Error::StreamCut { provider: self.provider.clone(), message: "the stream ended before its first event".into() }),
        }
    }

    /// The next bytes for the client; an error ends the stream (the caller writes it in
    /// the API's own in-stream shape).
    pub async fn next_frame(&mut self) -> Option<Result<Bytes>> {
        if let Some(first) = self.ahead.take() {
            return Some(Ok(first));
        }
        loop {
            if self.closed {
                return None;
            }
            if self.eof {
                self.closed = true;
                if self.saw_finish || self.decoder.done() {
                    return None;
                }
                return Some(Err(self.cut("the stream ended before the answer was complete")));
            }
            let mut events = Vec::new();
            match crate::timing::waiting(self.bytes.next()).await {
                Some(Ok(chunk)) => self.sse.push(&chunk, &mut events),
                Some(Err(err)) => return Some(Err(self.cut(&error_chain(&err)))),
                None => {
                    self.sse.finish(&mut events);
                    self.eof = true;
                }
            }
            let mut out = Vec::new();
            let mut decoded = Vec::new();
            for event in &events {
                if event.data.is_empty() {
                    continue;
                }
                decoded.clear();
                if let Err(message) = self.decoder.on_data(&event.data, &mut decoded) {
                    return Some(Err(self.cut(&message)));
                }
                for item in &decoded {
                    self.saw_finish |= matches!(item, StreamEvent::Finish(_));
                    self.collector.push(item);
                }
                let usage_only = !decoded.is_empty() && decoded.iter().all(|item| matches!(item, StreamEvent::Usage(_)));
                if self.native == Native::OpenAiChat && !self.client_usage && usage_only && event.data.contains("\"choices\":[]") {
                    continue;
                }
                if let Some(name) = &event.event {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(event.data.as_bytes());
                out.extend_from_slice(b"\n\n");
            }
            if !out.is_empty() {
                return Some(Ok(Bytes::from(out)));
            }
        }
    }
}
