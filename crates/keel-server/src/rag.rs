//! RAG over HTTP: `POST /v1/rag/{collection}/query` searches a collection of
//! `$KEEL_HOME/rag` (made with `keel rag ingest`) and answers with the chunks and where each
//! comes from. Opened collections stay open; each is searched by one request at a time.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use keel_agent::rag::ModelAlias;
use keel_rag::Mode;
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, App};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    query: String,
    #[serde(default = "ten")]
    k: usize,
    #[serde(default)]
    mode: Option<String>,
    /// Document conditions, all of which must hold: `{"source": "docs/ops/*", "team": "infra"}`.
    #[serde(default)]
    filter: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    rrf_k: Option<f64>,
    #[serde(default)]
    bm25_weight: Option<f64>,
    #[serde(default)]
    vector_weight: Option<f64>,
    /// A chat model alias that reranks the top 20 (listwise) before the top `k` are returned.
    #[serde(default)]
    rerank: Option<String>,
}

fn ten() -> usize {
    10
}

pub async fn query(State(app): State<App>, Path(name): Path<String>, body: Result<Json<QueryBody>, axum::extract::rejection::JsonRejection>) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(err) => return ApiError::invalid(err.body_text()).into_response(),
    };
    let mode = match body.mode.as_deref().unwrap_or("hybrid").parse::<Mode>() {
        Ok(mode) => mode,
        Err(err) => return ApiError::invalid(err).into_response(),
    };
    let defaults = keel_rag::Search::default();
    let search = keel_rag::Search {
        k: body.k,
        mode,
        rrf_k: body.rrf_k.unwrap_or(defaults.rrf_k),
        bm25_weight: body.bm25_weight.unwrap_or(defaults.bm25_weight),
        vector_weight: body.vector_weight.unwrap_or(defaults.vector_weight),
        filter: body.filter.iter().map(|(key, value)| keel_rag::Filter { key: key.clone(), value: value.clone() }).collect(),
    };
    let query = keel_rag::Query { rerank: body.rerank.is_some(), ..keel_rag::Query::new(&body.query, search) };
    if let Err(err) = query.check() {
        return ApiError::from_rag(&err).into_response();
    }
    if let Some(alias) = &body.rerank
        && let Err(err) = app.router.alias(alias)
    {
        return ApiError::invalid(err.to_string()).into_response();
    }
    let collection = match app.rag.get(&name).await {
        Ok(collection) => collection,
        Err(err) => return ApiError::from_rag(&err).into_response(),
    };
    let model = collection.lock().unwrap_or_else(|p| p.into_inner()).model.clone();
    let embedder = ModelAlias::new(&*app.router, &model);
    let judge = body.rerank.as_deref().map(|alias| ModelAlias::new(&*app.router, alias));
    match keel_rag::query(&collection, &query, &embedder, judge.as_ref().map(|j| j as &dyn keel_rag::rerank::Judge)).await {
        Ok(hits) => Json(json!({"collection": name, "mode": mode, "results": hits})).into_response(),
        Err(err) => ApiError::from_rag(&err).into_response(),
    }
}
