//! What the hosted providers share: one HTTP client per provider, its key and headers, the
//! upstream's errors read into keel's (scrubbed of secrets), and a server-sent-event body
//! turned into a stream of canonical events by the kind's decoder.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use keel_core::{EmbedRequest, EmbedResponse, StreamEvent};
use keel_core::config::{HttpProviderConfig, ProviderConfig};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::EventStream;
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

/// One provider's HTTP side.
pub(crate) struct Http {
    pub(crate) name: String,
    pub(crate) base_url: String,
    api_key: Option<SecretString>,
    api_key_env: Option<String>,
    headers: HeaderMap,
    client: reqwest::Client,
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
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs_f64(http.connect_timeout_s))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| Error::Connect { provider: name.to_string(), message: err.to_string() })?;
        Ok(Http {
            name: name.to_string(),
            base_url: config.base_url().to_string(),
            api_key: http.api_key_env.as_deref().and_then(env).filter(|key| !key.is_empty()).map(SecretString::from),
            api_key_env: http.api_key_env.clone(),
            headers,
            client,
        })
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
        let mut builder = self.client.post(url).headers(self.headers.clone()).json(body);
        match (key, auth) {
            (Some(key), Auth::Bearer) => builder = builder.bearer_auth(key),
            (Some(key), Auth::Header(header)) => builder = builder.header(header, key),
            (None, _) => {}
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
