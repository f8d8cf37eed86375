//! OpenAI's Responses API: `POST /v1/responses` (whole or streamed as typed events),
//! `GET` and `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`. A
//! request is read into the canonical model (keel-llm's `api::responses`) and goes through
//! the same router, trace and metrics as Chat Completions, so any provider answers it.
//! Responses are stored (unless `store: false`) so a later `previous_response_id` continues
//! the conversation: keel walks the chain back and sends the whole of it upstream.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_llm::responses::{self, Event, EventEncoder, ResponseShape, ResponsesRequest, WireResponsesRequest};
use keel_store::{Store, StoredResponse};
use serde_json::{Value, json};

use crate::handlers::{self, Call, Encoder, Outcome};
use crate::{ApiError, App, Format};

/// How far back a `previous_response_id` chain is followed.
const MAX_CHAIN: usize = 10_000;

/// A streamed response in progress: its encoder and where it is stored when it ends.
pub(crate) struct Streamed {
    pub(crate) encoder: EventEncoder,
    keep: Option<Keep>,
    /// The final response object, for the trace.
    pub(crate) final_body: Option<String>,
}

/// What storing a response needs besides its output.
struct Keep {
    store: std::sync::Arc<Store>,
    id: String,
    created_ms: i64,
    previous_id: Option<String>,
    input: String,
}

impl Keep {
    fn save(&self, body: &Value, output: &[Value]) -> Result<(), keel_store::Error> {
        self.store.put_response(&StoredResponse {
            id: self.id.clone(),
            created_ms: self.created_ms,
            previous_id: self.previous_id.clone(),
            input: self.input.clone(),
            output: Value::Array(output.to_vec()).to_string(),
            body: body.to_string(),
        })
    }
}

impl Streamed {
    /// Closes the stream with `response.completed` (or `.incomplete`), storing it first so a
    /// client that reads the event can fetch or continue the response at once.
    pub(crate) fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let (body, output) = self.encoder.finish(&mut events);
        self.keep_or_report(&body, &output, &mut events);
        self.final_body = Some(body.to_string());
        events
    }

    pub(crate) fn fail(&mut self, error: &ApiError) -> Vec<Event> {
        let mut events = Vec::new();
        let body = self.encoder.fail(error.code, &error.message, &mut events);
        let output = body["output"].as_array().cloned().unwrap_or_default();
        self.keep_or_report(&body, &output, &mut events);
        self.final_body = Some(body.to_string());
        events
    }

    fn keep_or_report(&mut self, body: &Value, output: &[Value], events: &mut Vec<Event>) {
        let Some(keep) = &self.keep else { return };
        if let Err(err) = keep.save(body, output) {
            tracing::error!(error = %err, "could not store a response");
            let message = format!("the response was not stored, so it cannot be fetched or continued: {err}");
            // The last event stays the terminal one the client waits for.
            let last = events.pop();
            self.encoder.error("store_failed", &message, events);
            events.extend(last);
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, keel_store::Error> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|err| ApiError::internal(format!("the response store failed: {err}"))),
        Err(err) => Err(ApiError::internal(format!("the response store failed: {err}"))),
    }
}

/// The conversation a response chain holds, oldest first: each response's input items,
/// then its output items.
async fn conversation(store: &std::sync::Arc<Store>, id: &str) -> Result<Vec<Value>, ApiError> {
    let store = store.clone();
    let first = id.to_string();
    let chain = blocking(move || {
        let mut chain = Vec::new();
        let mut next = Some(first);
        while let Some(id) = next.take() {
            let Some(stored) = store.response(&id)? else { break };
            next = stored.previous_id.clone();
            chain.push(stored);
            if chain.len() >= MAX_CHAIN {
                break;
            }
        }
        Ok(chain)
    })
    .await?;
    if chain.is_empty() {
        return Err(ApiError::not_found(format!(
            "previous_response_id: no response `{id}` is stored (it was never created here, was deleted, or was created with store: false)"
        )));
    }
    let mut items = Vec::new();
    for stored in chain.iter().rev() {
        for json in [&stored.input, &stored.output] {
            match serde_json::from_str::<Vec<Value>>(json) {
                Ok(list) => items.extend(list),
                Err(err) => return Err(ApiError::internal(format!("stored response {} is unreadable: {err}", stored.id))),
            }
        }
    }
    Ok(items)
}

pub async fn create(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let format = Format::OpenAi;
    let (wire, bytes) = match handlers::parse_body::<WireResponsesRequest>(body, format) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    let prior = match &wire.previous_response_id {
        Some(id) => match conversation(&app.store, id).await {
            Ok(items) => items,
            Err(err) => return err.into_response(),
        },
        None => Vec::new(),
    };
    let base = handlers::new_id();
    let mut n = 0;
    let mut item_id = |prefix: &str| {
        n += 1;
        format!("{prefix}_{base}_{n}")
    };
    let request = match responses::request_from_wire(wire, &prior, &mut item_id) {
        Ok(request) => request,
        Err(err) => return ApiError::from_llm(&err, format).into_response(),
    };
    respond(app, request, base, bytes).await
}

async fn respond(app: App, request: ResponsesRequest, base: String, bytes: Bytes) -> Response {
    let format = Format::OpenAi;
    let demand = crate::access::Demand::chat(&request.chat, &bytes);
    let mut call = match Call::new(&app, "responses", &request.chat.model, request.chat.stream, &bytes).admit(format, demand).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    call.id = base;
    let shape = ResponseShape {
        id: format!("resp_{}", call.id),
        created_at: handlers::unix_secs(),
        model: request.chat.model.clone(),
        echo: request.echo,
        tools: request.tools,
    };
    let keep = request.store.then(|| Keep {
        store: app.store.clone(),
        id: shape.id.clone(),
        created_ms: keel_core::now_ms(),
        previous_id: request.previous_response_id.clone(),
        input: Value::Array(request.input).to_string(),
    });
    let id = call.id.clone();
    if request.chat.stream {
        let (opened, info) = app.router.chat_stream(&request.chat).await;
        call.mark_overhead();
        return match opened {
            Ok(stream) => {
                let encoder = Encoder::Responses(Box::new(Streamed { encoder: EventEncoder::new(shape), keep, final_body: None }));
                handlers::stream_response(call, info, stream, encoder, format)
            }
            Err(err) => {
                let error = ApiError::from_llm(&err, format);
                call.finish(Call::failed(info.clone(), &error)).await;
                let mut response = error.into_response();
                handlers::route_headers(&mut response, &id, &info);
                response
            }
        };
    }
    let (result, info) = app.router.chat(&request.chat).await;
    call.mark_overhead();
    let mut response = match result {
        Ok(answer) => {
            let (output, status) = responses::output_from_response(&answer, &shape);
            let body = shape.object(&status, &output, Some(&answer.usage));
            let stored = match keep {
                Some(keep) => blocking(move || keep.save(&body, &output).map(|()| body)).await,
                None => Ok(body),
            };
            match stored {
                Ok(body) => {
                    let text = body.to_string();
                    call.finish(Outcome {
                        info: info.clone(),
                        status: 200,
                        usage: answer.usage,
                        finish_reason: Some(handlers::finish_label(&answer)),
                        response_body: app.log_bodies.then(|| text.clone()),
                        ..Outcome::default()
                    })
                    .await;
                    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
                }
                Err(error) => {
                    call.finish(Call::failed(info.clone(), &error)).await;
                    error.into_response()
                }
            }
        }
        Err(err) => {
            let error = ApiError::from_llm(&err, format);
            call.finish(Call::failed(info.clone(), &error)).await;
            error.into_response()
        }
    };
    handlers::route_headers(&mut response, &id, &info);
    response
}

async fn stored(app: &App, id: &str) -> Result<StoredResponse, ApiError> {
    let store = app.store.clone();
    let key = id.to_string();
    match blocking(move || store.response(&key)).await? {
        Some(stored) => Ok(stored),
        None => Err(ApiError::not_found(format!("no response `{id}` is stored"))),
    }
}

pub async fn get(State(app): State<App>, Path(id): Path<String>) -> Response {
    match stored(&app, &id).await {
        Ok(stored) => ([(header::CONTENT_TYPE, "application/json")], stored.body).into_response(),
        Err(err) => err.into_response(),
    }
}

pub async fn delete(State(app): State<App>, Path(id): Path<String>) -> Response {
    let store = app.store.clone();
    let key = id.clone();
    match blocking(move || store.delete_response(&key)).await {
        Ok(true) => axum::Json(json!({"id": id, "object": "response.deleted", "deleted": true})).into_response(),
        Ok(false) => ApiError::not_found(format!("no response `{id}` is stored")).into_response(),
        Err(err) => err.into_response(),
    }
}

/// A response's own input items, a page at a time: `limit` (1 to 100, default 20), `order`
/// (`desc`, the default, or `asc`), and `after` / `before` an item id.
pub async fn input_items(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
        Some(_) => return ApiError::invalid("limit: must be a whole number from 1 to 100").into_response(),
    };
    let descending = match query.get("order").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => return ApiError::invalid(format!("order: `{other}` is not one of asc, desc")).into_response(),
    };
    let stored = match stored(&app, &id).await {
        Ok(stored) => stored,
        Err(err) => return err.into_response(),
    };
    let mut items: Vec<Value> = serde_json::from_str(&stored.input).unwrap_or_default();
    if descending {
        items.reverse();
    }
    let position = |key: &str| query.get(key).map(|wanted| items.iter().position(|item| item["id"] == wanted.as_str()));
    let start = match position("after") {
        Some(Some(pos)) => pos + 1,
        Some(None) => return ApiError::invalid("after: no such item in this response").into_response(),
        None => 0,
    };
    let end = match position("before") {
        Some(Some(pos)) => pos,
        Some(None) => return ApiError::invalid("before: no such item in this response").into_response(),
        None => items.len(),
    };
    let window = items.get(start..end.max(start)).unwrap_or_default();
    let data: Vec<Value> = window.iter().take(limit).cloned().collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|item| item["id"].clone()),
        "last_id": data.last().map(|item| item["id"].clone()),
        "has_more": window.len() > limit,
    }))
    .into_response()
}
