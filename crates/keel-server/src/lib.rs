//! keel's HTTP surface: the axum router with the OpenAI- (Chat Completions, Responses) and
//! Anthropic-compatible endpoints,
//! auth, the body limit, `x-keel-overhead-us`, health and metrics. Handlers parse, call the
//! router in keel-llm, and map the result; traces go to the store's batching writer.

pub mod access;
mod admin;
pub mod agents;
pub mod mcp;
pub mod rag;
pub mod error;
pub mod evals;
mod forward;
#[cfg(feature = "fake-upstream")]
pub mod fake;
mod handlers;
pub mod metrics;
pub mod prompts;
mod responses;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_llm::Router;
use keel_store::TraceSink;
use secrecy::SecretString;

pub use error::{ApiError, Format};
use metrics::Metrics;

pub const OVERHEAD_HEADER: &str = "x-keel-overhead-us";

pub struct AppState {
    pub router: Arc<Router>,
    pub traces: TraceSink,
    /// The store: stored Responses API responses (traces go through `traces`).
    pub store: Arc<keel_store::Store>,
    pub metrics: Metrics,
    pub master_key: Option<SecretString>,
    /// The virtual keys and teams, reloaded from the store within a second of a change.
    pub access: Arc<keel_teams::Directory>,
    /// Keep request and response bodies in traces.
    pub log_bodies: bool,
    /// The agents served under `/v1/agents` (none when `[agents] dir` is unset).
    pub agents: Option<Arc<agents::Agents>>,
    /// The RAG collections served under `/v1/rag`.
    pub rag: Arc<keel_rag::Collections>,
    /// The prompt registry, read through its cache.
    pub prompts: Arc<keel_eval::Registry>,
    /// `[[evals.online]]`: evaluators that score a sample of finished calls.
    pub online: evals::Online,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("log_bodies", &self.log_bodies).finish_non_exhaustive()
    }
}

pub type App = Arc<AppState>;

/// The whole HTTP API.
pub fn router(app: App, max_body_bytes: usize) -> axum::Router {
    let mut router = axum::Router::new();
    // The agents as MCP tools, over Streamable HTTP.
    if let Some(agents) = &app.agents {
        router = router.nest_service("/mcp", mcp::AgentTools::new(agents.clone()).http_service());
    }
    router
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::get).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .route("/v1/messages", post(handlers::messages))
        .route("/v1/messages/count_tokens", post(handlers::count_tokens))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::models))
        .route("/v1/models/{id}", get(handlers::model))
        .route("/v1/agents/{name}/runs", post(agents::start))
        .route("/v1/runs/{id}", get(agents::show))
        .route("/v1/runs/{id}/approvals", post(agents::decide))
        .route("/v1/rag/{collection}/query", post(rag::query))
        .route("/v1/feedback", post(evals::feedback))
        .route("/v1/prompts", get(prompts::list))
        .route("/v1/prompts/{name}", get(prompts::get))
        .route("/v1/prompts/{name}/render", post(prompts::render))
        .route("/v1/admin/teams", get(admin::teams).post(admin::put_team))
        .route("/v1/admin/teams/{name}", get(admin::team).delete(admin::delete_team))
        .route("/v1/admin/keys", get(admin::keys).post(admin::create_key))
        .route("/v1/admin/keys/{id}", get(admin::key).delete(admin::revoke_key))
        .route("/v1/admin/keys/{id}/rotate", post(admin::rotate_key))
        .route("/v1/admin/spend", get(admin::spend))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), front))
        .with_state(app)
}

fn format_of(path: &str) -> Format {
    if path.starts_with("/v1/messages") { Format::Anthropic } else { Format::OpenAi }
}

/// In front of every route: who the caller is (the master key, a virtual key, or refused), then keel's own time stamped on the
/// response (`x-keel-overhead-us`: the whole request minus upstream waits). One layer, not
/// two: each layer costs a clone of the inner service per request.
async fn front(State(app): State<App>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (mut response, upstream) = match access::authorize(&app, &request, format_of(request.uri().path())) {
        Err(refusal) => (refusal.into_response(), std::time::Duration::ZERO),
        Ok(caller) => keel_llm::timing::scope(access::scope(caller, next, request)).await,
    };
    let own = started.elapsed().saturating_sub(upstream);
    response.headers_mut().insert(OVERHEAD_HEADER, HeaderValue::from(own.as_micros() as u64));
    response
}

/// `ok`, or `degraded` with the reason while the prompt registry serves cached copies.
async fn health(State(app): State<App>) -> impl IntoResponse {
    match app.prompts.health() {
        None => axum::Json(serde_json::json!({"status": "ok"})),
        Some(why) => axum::Json(serde_json::json!({"status": "degraded", "prompts": why})),
    }
}

async fn metrics_text(State(app): State<App>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render(&app.router))
}

async fn not_found(request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    ApiError::no_route(&path, format_of(&path))
}

async fn method_not_allowed(request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    let message = format!("{} is not allowed on {path}", request.method());
    ApiError::method_not_allowed(message, format_of(&path))
}
