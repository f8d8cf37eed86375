//! Who a request comes from. The master key may do anything (the admin API included); a
//! virtual key (`sk-keel-…`) is looked up in the replica's [`keel_teams::Directory`] and, when
//! live, rides along with the request in a task-local that each model call reads for its
//! allow-list, its trace and its metrics. With neither a master key nor any virtual key, keel
//! is open (one engineer on one machine).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use keel_teams::{Ask, Caller, RateView, Reservation};

use crate::{ApiError, App, Format};

/// What one request carries from the front layer to its model call and back.
struct Scoped {
    caller: Option<Arc<Caller>>,
    /// The rate limits its call was checked against, for the response's headers.
    view: std::cell::Cell<Option<RateView>>,
}

tokio::task_local! {
    static REQUEST: Scoped;
}

/// Serves a request with its caller in reach of [`caller`], then stamps the response with
/// the `x-ratelimit-*` headers of the limits its call was checked against.
pub(crate) async fn scope(caller: Option<Arc<Caller>>, next: Next, request: Request) -> Response {
    REQUEST
        .scope(Scoped { caller, view: std::cell::Cell::new(None) }, async move {
            let mut response = next.run(request).await;
            if let Some(view) = REQUEST.with(|s| s.view.get()) {
                rate_headers(response.headers_mut(), &view);
            }
            response
        })
        .await
}

/// The virtual key of the request being served (none: the master key, or an open server).
pub(crate) fn caller() -> Option<Arc<Caller>> {
    REQUEST.try_with(|s| s.caller.clone()).ok().flatten()
}

fn note_view(view: RateView) {
    let _ = REQUEST.try_with(|s| s.view.set(Some(view)));
}

/// What a call may use, as the request states it.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    /// The request body's size: no tokenizer turns fewer bytes into more tokens than bytes,
    /// so it bounds the input tokens from above.
    pub(crate) input_bytes: usize,
    /// `max_tokens` (or `max_completion_tokens`, `max_output_tokens`) when the request sets it.
    pub(crate) max_output: Option<u64>,
    /// The request's end user (`user`).
    pub(crate) user: Option<String>,
    /// Embeddings produce no output tokens.
    pub(crate) no_output: bool,
}

impl Demand {
    /// A chat request's demand (Chat Completions, Messages and Responses alike).
    pub(crate) fn chat(request: &keel_core::ChatRequest, body: &[u8]) -> Demand {
        Demand { input_bytes: body.len(), max_output: request.max_tokens.map(u64::from), user: request.user.clone(), no_output: false }
    }
}

/// The request's worst case on `alias`: its tokens and the dearest route's price for them.
fn worst_case(app: &App, alias: &str, demand: &Demand) -> Ask {
    let Ok(alias) = app.router.alias(alias) else { return Ask::default() };
    let output = if demand.no_output { 0 } else { demand.max_output.unwrap_or(u64::from(alias.max_output_tokens)) };
    let usage = keel_core::Usage { input_tokens: demand.input_bytes as u64, output_tokens: output, ..keel_core::Usage::default() };
    let usd = alias.routes.iter().filter_map(|r| app.router.prices.cost(&r.model, &usage)).fold(0.0, f64::max);
    Ask { tokens: usage.input_tokens + output, usd }
}

/// Holds the request's worst case against its key's limits and budgets, or refuses it:
/// 429 with `Retry-After` for a rate limit, 429 `budget_exceeded` for a budget.
pub(crate) fn reserve(app: &App, caller: &Caller, alias: &str, demand: &Demand, format: Format) -> Result<Reservation, ApiError> {
    let ask = worst_case(app, alias, demand);
    match app.access.reserve(caller, demand.user.as_deref(), ask) {
        Ok(reservation) => {
            note_view(reservation.view);
            Ok(reservation)
        }
        Err(refusal) => {
            if let Some(view) = refusal.view() {
                note_view(view);
            }
            Err(ApiError::from_refusal(&refusal, format))
        }
    }
}

/// A duration the way OpenAI's rate-limit headers write one: `20ms`, `1.5s`, `6m0s`.
fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, rest) = (ms / 60_000, ms % 60_000);
    let seconds = format!("{}", rest as f64 / 1000.0);
    if minutes > 0 { format!("{minutes}m{seconds}s") } else { format!("{seconds}s") }
}

fn rate_headers(headers: &mut axum::http::HeaderMap, view: &RateView) {
    const NAMES: [[HeaderName; 3]; 2] = [
        [
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
        ],
        [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ],
    ];
    for (names, window) in NAMES.iter().zip([view.requests, view.tokens]) {
        let Some(w) = window else { continue };
        headers.insert(names[0].clone(), HeaderValue::from(w.limit));
        headers.insert(names[1].clone(), HeaderValue::from(w.remaining));
        if let Ok(value) = HeaderValue::from_str(&duration_text(w.reset_ms)) {
            headers.insert(names[2].clone(), value);
        }
    }
}

/// The key a request presents: `Authorization: Bearer KEY` (OpenAI SDKs) or `x-api-key`
/// (Anthropic SDKs).
fn presented(request: &Request) -> Option<&str> {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim)
}

/// Who may make this request, or the refusal in the API's own error shape.
pub(crate) fn authorize(app: &App, request: &Request, format: Format) -> Result<Option<Arc<Caller>>, ApiError> {
    let path = request.uri().path();
    if path == "/health" {
        return Ok(None);
    }
    let given = presented(request);
    let master = app.master_key.as_ref();
    let is_master = matches!((given, master), (Some(given), Some(key)) if constant_time_eq(given.as_bytes(), secrecy::ExposeSecret::expose_secret(key).as_bytes()));
    if path.starts_with("/v1/admin") {
        return match (is_master, master) {
            (true, _) => Ok(None),
            (false, None) => Err(ApiError::forbidden(
                "admin_disabled",
                "the admin API needs a master key: set [server] master_key_env and send that key",
                format,
            )),
            (false, Some(_)) if given.is_some() => Err(ApiError::forbidden("admin_only", "the admin API takes only the master key", format)),
            (false, Some(_)) => Err(ApiError::unauthorized("the admin API needs the master key as `Authorization: Bearer KEY`", format)),
        };
    }
    if is_master {
        return Ok(None);
    }
    if let Some(given) = given.filter(|g| g.starts_with(keel_teams::SECRET_PREFIX)) {
        return app.access.authenticate(given, keel_core::now_ms()).map(Some).map_err(|denied| ApiError::unauthorized(denied.to_string(), format));
    }
    if master.is_none() && !app.access.has_keys() {
        return Ok(None);
    }
    Err(match given {
        Some(_) => ApiError::unauthorized(keel_teams::Denied::Unknown.to_string(), format),
        None => ApiError::unauthorized("this keel server needs an API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`", format),
    })
}

/// The refusal when the request's key may not call `alias` (nothing reaches an upstream).
pub(crate) fn check_model(caller: &Caller, alias: &str, format: Format) -> Result<(), ApiError> {
    if caller.may_use(alias) {
        return Ok(());
    }
    Err(ApiError::forbidden(
        "model_not_allowed",
        format!("the API key {}… may not call model `{alias}`; it may call: {}", caller.key.prefix, caller.key.models.join(", ")),
        format,
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How often a replica looks for changed keys and teams: a revocation is seen within this.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Reloads `directory` whenever the store's keys or teams change, until the runtime stops; a
/// store that cannot be read keeps the last good copy (and says so in the log).
pub fn keep_fresh(directory: Arc<keel_teams::Directory>) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let directory = directory.clone();
            match tokio::task::spawn_blocking(move || directory.refresh()).await {
                Ok(Ok(_)) if failing => {
                    failing = false;
                    tracing::info!("keys and teams reload again");
                }
                Ok(Err(err)) if !failing => {
                    failing = true;
                    tracing::warn!("could not reload keys and teams, serving the last copy: {err}");
                }
                _ => {}
            }
        }
    });
}
