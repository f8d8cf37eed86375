//! Agents over HTTP: start a run (streamed as server-sent events or answered when it ends),
//! read a run with every step, and approve or deny a call a run waits on. Runs go on in
//! their own task, so a client that hangs up does not cut a run off mid-step.
#![expect(clippy::result_large_err, reason = "helpers hand back the error response a handler returns as is")]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_agent::{Agent, ChatModel, Runner, Step};
use keel_store::Store;
use serde::Deserialize;
use serde_json::json;

use crate::{ApiError, App};

/// The agents `keel serve` runs, with the store their runs live in.
pub struct Agents {
    pub agents: BTreeMap<String, Arc<Agent>>,
    pub store: Arc<Store>,
    pub model: Arc<dyn ChatModel>,
    /// The RAG collections agents' search tools query (kept open; shared with `/v1/rag`).
    pub collections: Option<Arc<keel_rag::Collections>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.agents.keys()).finish()
    }
}

impl Agents {
    /// Loads every `*.toml` agent file in `dir`; the first bad file is an error naming it.
    pub fn load(dir: &std::path::Path, store: Arc<Store>, model: Arc<dyn ChatModel>) -> Result<Agents, keel_agent::Error> {
        let mut agents = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| keel_agent::Error::Definition(format!("agents.dir {}: {e}", dir.display())))?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
        paths.sort();
        for path in paths {
            let agent = Agent::load(&path)?;
            if let Some(previous) = agents.insert(agent.def.name.clone(), Arc::new(agent)) {
                return Err(keel_agent::Error::Definition(format!("two agent files in {} are named `{}`", dir.display(), previous.def.name)));
            }
        }
        Ok(Agents { agents, store, model, collections: None })
    }

    /// A runner for these agents.
    pub fn runner(&self) -> Runner {
        let runner = Runner::new(self.store.clone(), self.model.clone());
        match &self.collections {
            Some(collections) => runner.with_collections(collections.clone()),
            None => runner,
        }
    }
}

fn agents_of(app: &App) -> Result<&Agents, Response> {
    app.agents.as_deref().ok_or_else(|| {
        ApiError::not_found("no agents are configured; set [agents] dir in keel.toml").into_response()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    input: String,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    call_id: String,
    approved: bool,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    stream: bool,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("the request body: {e}")).into_response())
}

/// Runs `work` in its own task; answers with its outcome, or streams its events.
async fn answer<F>(agents: &Agents, stream: bool, work: F) -> Response
where
    F: for<'r> FnOnce(&'r Runner) -> futures_util::future::BoxFuture<'r, Result<keel_agent::Outcome, keel_agent::Error>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = agents.runner().with_events(tx);
    let task = tokio::spawn(async move { work(&runner).await });
    if !stream {
        return match task.await {
            Ok(Ok(outcome)) => Json(outcome).into_response(),
            Ok(Err(err)) => ApiError::from_agent(&err).into_response(),
            Err(err) => ApiError::internal(format!("the run stopped: {err}")).into_response(),
        };
    }
    let (frames, frames_rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    tokio::spawn(async move {
        let frame = |value: serde_json::Value| bytes::Bytes::from(format!("data: {value}\n\n"));
        while let Some(event) = rx.recv().await {
            let _ = frames.send(frame(json!(event)));
        }
        let last = match task.await {
            Ok(Ok(outcome)) => json!({"event": "outcome", "outcome": outcome}),
            Ok(Err(err)) => json!({"event": "error", "message": err.to_string()}),
            Err(err) => json!({"event": "error", "message": err.to_string()}),
        };
        let _ = frames.send(frame(last));
    });
    let body = futures_util::stream::unfold(frames_rx, |mut rx| async move {
        rx.recv().await.map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| ApiError::internal("could not start the stream").into_response())
}

/// `POST /v1/agents/{name}/runs`.
pub async fn start(State(app): State<App>, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let agents = match agents_of(&app) {
        Ok(agents) => agents,
        Err(response) => return response,
    };
    let Some(agent) = agents.agents.get(&name).cloned() else {
        let known: Vec<&str> = agents.agents.keys().map(String::as_str).collect();
        return ApiError::not_found(format!("no agent `{name}`; the agents are: {}", known.join(", "))).into_response();
    };
    let request: StartRun = match parse(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if request.input.trim().is_empty() {
        return ApiError::invalid("`input` is empty").into_response();
    }
    answer(agents, request.stream, move |runner| Box::pin(async move { runner.start(&agent, &request.input, &request.vars).await }))
        .await
}

/// `GET /v1/runs/{id}`: the run and every step.
pub async fn show(State(app): State<App>, Path(id): Path<String>) -> Response {
    let agents = match agents_of(&app) {
        Ok(agents) => agents,
        Err(response) => return response,
    };
    match agents.store.load_run(&id) {
        Ok((record, steps)) => {
            let steps: Vec<serde_json::Value> = steps
                .iter()
                .map(|s| json!({"seq": s.seq, "created_ms": s.created_ms, "step": serde_json::from_str::<Step>(&s.data).map(|step| json!(step)).unwrap_or(json!(null))}))
                .collect();
            Json(json!({
                "id": record.id, "agent": record.agent, "status": record.status, "input": record.input,
                "output": record.output, "reason": record.reason, "created_ms": record.created_ms,
                "updated_ms": record.updated_ms, "steps": steps,
            }))
            .into_response()
        }
        Err(err) => ApiError::from_agent(&keel_agent::Error::Checkpoint(err)).into_response(),
    }
}

/// `POST /v1/runs/{id}/approvals`: records the decision, then continues the run.
pub async fn decide(State(app): State<App>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let agents = match agents_of(&app) {
        Ok(agents) => agents,
        Err(response) => return response,
    };
    let decision: Decision = match parse(&body) {
        Ok(decision) => decision,
        Err(response) => return response,
    };
    let record = match agents.store.load_run(&id) {
        Ok((record, _)) => record,
        Err(err) => return ApiError::from_agent(&keel_agent::Error::Checkpoint(err)).into_response(),
    };
    // The agent as the server knows it (Rust tools included), else as the run stored it.
    let runner = agents.runner();
    let agent = match agents.agents.get(&record.agent) {
        Some(agent) => agent.clone(),
        None => match runner.stored_agent(&id) {
            Ok(agent) => Arc::new(agent),
            Err(err) => return ApiError::from_agent(&err).into_response(),
        },
    };
    if let Err(err) = runner.decide(&id, &decision.call_id, decision.approved, decision.note.clone()) {
        return ApiError::from_agent(&err).into_response();
    }
    answer(agents, decision.stream, move |runner| Box::pin(async move { runner.resume(&id, &agent).await })).await
}
