//! The same-format lane on the server: a Chat Completions request to an alias whose routes
//! are all OpenAI-kind, or a Messages request to one whose routes are all Anthropic-kind,
//! goes upstream as it came (only `model` replaced, see keel-llm's `forward`) and its answer
//! comes back byte for byte, streams included. Routing, retries, fallbacks, timeouts, the
//! trace, cost and metrics are the translated path's own.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use keel_llm::router::Hold;
use keel_llm::{Native, RawRequest, Relay, Relayed, RouteInfo};
use std::time::Duration;

use crate::handlers::{self, Call, Outcome};
use crate::prompts::PromptUse;
use crate::{ApiError, App, Format};

/// Client headers passed on to Anthropic: the betas a client opted into.
const PASSED_HEADERS: &[&str] = &["anthropic-beta"];

/// Forwards the request when the lane applies; `None` sends it down the translated path
/// (another provider kind in the alias, or a body the translated path should explain).
pub(crate) async fn forward(
    app: &App,
    bytes: &Bytes,
    headers: &HeaderMap,
    native: Native,
    format: Format,
    endpoint: &'static str,
    prompt: Option<&PromptUse>,
) -> Option<Response> {
    let request = RawRequest::parse(bytes.clone()).ok()?;
    if !request.has_items("messages") || !app.router.forwards(&request.model, native) {
        return None;
    }
    let passed: Vec<(String, String)> = PASSED_HEADERS
        .iter()
        .filter_map(|name| Some((name.to_string(), headers.get(*name)?.to_str().ok()?.to_string())))
        .collect();
    let number = |key: &str| request.field(key).and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    let demand = crate::access::Demand {
        input_bytes: bytes.len(),
        max_output: number("max_tokens").or_else(|| number("max_completion_tokens")),
        user: request.field("user").and_then(|v| serde_json::from_slice::<String>(v).ok()),
        no_output: false,
    };
    let mut call = match Call::new(app, endpoint, &request.model, request.stream, bytes).admit(format, demand).await {
        Ok(call) => call,
        Err(refused) => return Some(refused),
    };
    call.prompt = prompt.cloned();
    let (result, info) = app.router.forward(&request, native, &passed).await;
    call.mark_overhead();
    let id = call.id.clone();
    let mut response = match result {
        Ok(forward) => match forward.answer.body {
            Relayed::Whole { bytes, answer } => {
                call.finish(Outcome {
                    info: info.clone(),
                    status: 200,
                    usage: answer.usage,
                    finish_reason: Some(handlers::finish_label(&answer)),
                    response_body: app.log_bodies.then(|| String::from_utf8_lossy(&bytes).into_owned()),
                    ..Outcome::default()
                })
                .await;
                let content_type = HeaderValue::from_str(&forward.answer.content_type)
                    .unwrap_or(HeaderValue::from_static("application/json"));
                ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
            }
            Relayed::Stream(relay) => relay_response(call, info.clone(), relay, forward.hold, format),
        },
        Err(err) => {
            let error = ApiError::from_llm(&err, format);
            call.finish(Call::failed(info.clone(), &error)).await;
            error.into_response()
        }
    };
    handlers::route_headers(&mut response, &id, &info);
    Some(response)
}

/// Relays one forwarded stream to the client; leaves the trace when it ends, fails, or is
/// dropped because the client went away.
struct RelayDriver {
    relay: Relay,
    call: Option<Call>,
    info: RouteInfo,
    ttft: Duration,
    format: Format,
    _hold: Hold,
}

impl RelayDriver {
    fn outcome(&mut self, status: u16, error: Option<&ApiError>) -> Outcome {
        let collector = std::mem::take(&mut self.relay.collector);
        let usage = collector.usage;
        let response = collector.into_response();
        Outcome {
            info: self.info.clone(),
            status,
            usage,
            finish_reason: Some(handlers::finish_label(&response)),
            error: error.map(|e| (e.code, e.message.clone())),
            // The trace keeps what the stream amounted to, as the API's whole answer.
            response_body: self
                .call
                .as_ref()
                .filter(|call| call.app.log_bodies)
                .map(|call| handlers::response_to_wire(&response, &call.id, &call.alias, self.format).to_string()),
            ttft: Some(self.ttft),
        }
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        match self.relay.next_frame().await {
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(err)) => {
                let error = ApiError::from_llm(&err, self.format);
                let mut out = String::new();
                match self.format {
                    Format::OpenAi => handlers::push_data(&mut out, &error.body()),
                    Format::Anthropic => handlers::push_events(&mut out, vec![("error", error.body())]),
                }
                let outcome = self.outcome(error.status.as_u16(), Some(&error));
                if let Some(call) = self.call.take() {
                    call.finish(outcome).await;
                }
                Some(Bytes::from(out))
            }
            None => {
                let outcome = self.outcome(200, None);
                if let Some(call) = self.call.take() {
                    call.finish(outcome).await;
                }
                None
            }
        }
    }
}

impl Drop for RelayDriver {
    fn drop(&mut self) {
        if self.call.is_some() {
            let error = ApiError::client_closed(self.format);
            let outcome = self.outcome(499, Some(&error));
            if let Some(mut call) = self.call.take() {
                call.send_now(outcome);
            }
        }
    }
}

fn relay_response(call: Call, info: RouteInfo, relay: Relay, hold: Hold, format: Format) -> Response {
    let driver = RelayDriver { relay, ttft: call.elapsed(), call: Some(call), info, format, _hold: hold };
    let frames = futures_util::stream::unfold(driver, |mut driver| async move {
        let frame = driver.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), driver))
    });
    let mut response = Response::new(Body::from_stream(frames));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
