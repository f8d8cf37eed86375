//! The admin API under `/v1/admin/`, behind the master key: teams and virtual keys as JSON,
//! lists paginated with `limit` and `offset`. A key's secret is in the answer that creates or
//! rotates it, and nowhere else; every change is seen by this replica at once and by the
//! others at their next reload (within a second).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use keel_teams::admin::{self, KeySpec, TeamSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::handlers::parse_body;
use crate::{ApiError, App, Format};

#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    offset: usize,
    /// Keys only: those of this team.
    team: Option<String>,
}

fn default_limit() -> usize {
    100
}

/// One page of `items` in OpenAI's list shape, with where the next page starts.
fn page(items: Vec<Value>, page: &Page) -> Response {
    let limit = page.limit.clamp(1, 1000);
    let total = items.len();
    let data: Vec<Value> = items.into_iter().skip(page.offset).take(limit).collect();
    let next = page.offset + data.len();
    let more = next < total;
    Json(json!({"object": "list", "data": data, "total": total, "has_more": more, "next_offset": more.then_some(next)})).into_response()
}

fn reloaded(app: &App) {
    if let Err(err) = app.access.refresh() {
        tracing::warn!("reloading keys after an admin change failed: {err}");
    }
}

fn failed(err: keel_teams::Error) -> Response {
    ApiError::from_teams(&err).into_response()
}

pub async fn teams(State(app): State<App>, Query(q): Query<Page>) -> Response {
    match app.store.teams() {
        Ok(teams) => page(teams.iter().map(admin::team_json).collect(), &q),
        Err(err) => failed(err.into()),
    }
}

pub async fn put_team(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let spec: TeamSpec = match parse_body(body, Format::OpenAi) {
        Ok((spec, _)) => spec,
        Err(err) => return err.into_response(),
    };
    match admin::put_team(&app.store, spec) {
        Ok(team) => {
            reloaded(&app);
            crate::error::created(admin::team_json(&team))
        }
        Err(err) => failed(err),
    }
}

pub async fn team(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.store.team(&name) {
        Ok(team) => Json(admin::team_json(&team)).into_response(),
        Err(err) => failed(err.into()),
    }
}

pub async fn delete_team(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.store.delete_team(&name) {
        Ok(()) => {
            reloaded(&app);
            Json(json!({"name": name, "deleted": true})).into_response()
        }
        Err(err) => failed(err.into()),
    }
}

pub async fn keys(State(app): State<App>, Query(q): Query<Page>) -> Response {
    let now = keel_core::now_ms();
    match app.store.keys(q.team.as_deref()) {
        Ok(keys) => page(keys.iter().map(|k| admin::key_json(k, now)).collect(), &q),
        Err(err) => failed(err.into()),
    }
}

fn created(secret: &str, record: &keel_store::KeyRecord) -> Response {
    crate::error::created(admin::created_json(secret, record))
}

pub async fn create_key(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let spec: KeySpec = match parse_body(body, Format::OpenAi) {
        Ok((spec, _)) => spec,
        Err(err) => return err.into_response(),
    };
    match admin::create_key(&app.store, spec) {
        Ok((secret, record)) => {
            reloaded(&app);
            created(&secret, &record)
        }
        Err(err) => failed(err),
    }
}

pub async fn key(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.store.key(&id) {
        Ok(key) => Json(admin::key_json(&key, keel_core::now_ms())).into_response(),
        Err(err) => failed(err.into()),
    }
}

pub async fn revoke_key(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.store.revoke_key(&id) {
        Ok(key) => {
            reloaded(&app);
            Json(admin::key_json(&key, keel_core::now_ms())).into_response()
        }
        Err(err) => failed(err.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old key keeps working, in seconds (default one day).
    grace_s: Option<u64>,
}

pub async fn rotate_key(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    let rotate: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        match crate::handlers::parse_bytes(&body, Format::OpenAi) {
            Ok(rotate) => rotate,
            Err(err) => return err.into_response(),
        }
    };
    match admin::rotate_key(&app.store, &id, rotate.grace_s.unwrap_or(86_400)) {
        Ok((secret, record)) => {
            reloaded(&app);
            created(&secret, &record)
        }
        Err(err) => failed(err),
    }
}

#[derive(Debug, Deserialize)]
pub struct SpendQuery {
    /// key, team, model or day.
    #[serde(default = "default_by")]
    by: String,
    /// Only calls from the last this many days (default 30).
    #[serde(default = "default_days")]
    days: u32,
}

fn default_by() -> String {
    "key".into()
}

fn default_days() -> u32 {
    30
}

/// `GET /v1/admin/spend?by=key|team|model|day&days=N`.
pub async fn spend(State(app): State<App>, Query(q): Query<SpendQuery>) -> Response {
    let since = keel_core::now_ms() - i64::from(q.days) * 86_400_000;
    match app.store.spend(&q.by, since) {
        Ok(lines) => Json(json!({"object": "list", "by": q.by, "days": q.days, "data": lines})).into_response(),
        Err(err @ keel_store::Error::Invalid(_)) => ApiError::invalid(err.to_string()).into_response(),
        Err(err) => failed(err.into()),
    }
}
