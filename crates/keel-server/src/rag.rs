//! RAG over HTTP: `POST /v1/rag/{collection}/query` searches a collection of
//! `$KEEL_HOME/rag` (made with `keel rag ingest`) and answers with the chunks and where each
//! comes from. Opened collections stay open; each is searched by one request at a time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use keel_rag::{Collection, GatewayEmbedder, Mode};
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, App};

/// The collections `keel serve` searches.
pub struct Rag {
    pub root: PathBuf,
    open: tokio::sync::Mutex<HashMap<String, Arc<std::sync::Mutex<Collection>>>>,
}

impl std::fmt::Debug for Rag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rag").field("root", &self.root).finish()
    }
}

impl Rag {
    pub fn new(root: PathBuf) -> Rag {
        Rag { root, open: tokio::sync::Mutex::default() }
    }

    async fn collection(&self, name: &str) -> Result<Arc<std::sync::Mutex<Collection>>, keel_rag::Error> {
        let mut open = self.open.lock().await;
        if let Some(collection) = open.get(name) {
            return Ok(collection.clone());
        }
        let model = keel_rag::stored_model(&self.root, name).ok_or_else(|| keel_rag::Error::NoCollection(name.into()))?;
        let root = self.root.clone();
        let owned = name.to_string();
        let collection = tokio::task::spawn_blocking(move || Collection::open(&root, &owned, &model, false))
            .await
            .map_err(|e| keel_rag::Error::Io(e.to_string()))??;
        let collection = Arc::new(std::sync::Mutex::new(collection));
        open.insert(name.into(), collection.clone());
        Ok(collection)
    }
}

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
    if body.k == 0 || body.k > 1000 {
        return ApiError::invalid("k is 1 to 1000").into_response();
    }
    let collection = match app.rag.collection(&name).await {
        Ok(collection) => collection,
        Err(err @ keel_rag::Error::NoCollection(_)) => return ApiError::not_found(err.to_string()).into_response(),
        Err(err) => return ApiError::internal(err.to_string()).into_response(),
    };
    // The query is embedded without holding the collection; the search itself is quick.
    let model = collection.lock().unwrap_or_else(|p| p.into_inner()).model.clone();
    let vector = match mode {
        Mode::Bm25 => None,
        _ => {
            let embedder = GatewayEmbedder { router: &app.router, model };
            match keel_rag::embed_query(&embedder, &body.query).await {
                Ok(vector) => Some(vector),
                Err(err @ keel_rag::Error::EmptyQuery) => return ApiError::invalid(err.to_string()).into_response(),
                Err(err) => return ApiError::upstream(err.to_string()).into_response(),
            }
        }
    };
    let hits = {
        let collection = collection.lock().unwrap_or_else(|p| p.into_inner());
        let defaults = keel_rag::Search::default();
        let search = keel_rag::Search {
            k: body.k,
            mode,
            rrf_k: body.rrf_k.unwrap_or(defaults.rrf_k),
            bm25_weight: body.bm25_weight.unwrap_or(defaults.bm25_weight),
            vector_weight: body.vector_weight.unwrap_or(defaults.vector_weight),
            filter: body.filter.iter().map(|(key, value)| keel_rag::Filter { key: key.clone(), value: value.clone() }).collect(),
        };
        if !(search.rrf_k > 0.0 && search.bm25_weight >= 0.0 && search.vector_weight >= 0.0) {
            return ApiError::invalid("rrf_k must be above 0 and the weights 0 or more").into_response();
        }
        if let Some(alias) = &body.rerank
            && let Err(err) = app.router.alias(alias)
        {
            return ApiError::invalid(err.to_string()).into_response();
        }
        let search = keel_rag::Search { k: if body.rerank.is_some() { body.k.max(keel_rag::rerank::DEPTH) } else { body.k }, ..search };
        let ranked = match collection.search_with(&body.query, vector.as_deref(), &search) {
            Ok(ranked) => ranked,
            Err(err @ (keel_rag::Error::EmptyQuery | keel_rag::Error::ModelMismatch { .. })) => {
                return ApiError::invalid(err.to_string()).into_response();
            }
            Err(err) => return ApiError::internal(err.to_string()).into_response(),
        };
        match collection.hits(&ranked) {
            Ok(hits) => hits,
            Err(err) => return ApiError::internal(err.to_string()).into_response(),
        }
    };
    let mut hits = match &body.rerank {
        None => hits,
        Some(alias) => {
            let judge = keel_rag::rerank::GatewayJudge { router: &app.router, model: alias.clone() };
            match keel_rag::rerank::rerank(&body.query, hits, &judge).await {
                Ok(hits) => hits,
                Err(err) => return ApiError::upstream(format!("reranking with {alias} failed: {err}")).into_response(),
            }
        }
    };
    hits.truncate(body.k);
    Json(json!({"collection": name, "mode": mode, "results": hits})).into_response()
}
