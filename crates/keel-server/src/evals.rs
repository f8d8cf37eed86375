//! Scores on production traffic: `POST /v1/feedback` (a person's or an application's verdict
//! on a trace) and the online evaluators of `[[evals.online]]`, which grade a sample of
//! finished calls off the request path. Both store scores with the traces. [`RouterModel`]
//! is keel-eval's model over the router, shared with `keel eval`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use keel_core::config::OnlineEval;
use keel_core::{EmbedInput, EmbedRequest};
use keel_eval::score::{self, Assertion, Case};
use keel_eval::{Answer, CallMade, Model};
use keel_llm::Router;
use keel_store::{Score, Trace};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{ApiError, App, Format};

/// keel-eval's [`Model`] over the router: the gateway's routes, fallbacks and prices.
pub struct RouterModel {
    pub router: Arc<Router>,
}

impl Model for RouterModel {
    fn chat<'a>(&'a self, body: &'a Value) -> BoxFuture<'a, Result<Answer, String>> {
        Box::pin(async move {
            let wire = serde_json::from_value(body.clone()).map_err(|e| format!("the request is not a chat request: {e}"))?;
            let request = keel_llm::openai::chat_request_from_wire(wire).map_err(|e| e.to_string())?;
            let started = std::time::Instant::now();
            let (result, info) = self.router.chat(&request).await;
            let response = result.map_err(|e| keel_llm::scrub_secrets(&e.to_string(), None))?;
            let tool_calls = response.message.tool_calls.iter().map(CallMade::from).collect();
            Ok(Answer {
                text: response.message.text_content(),
                tool_calls,
                model: info.model.clone(),
                finish_reason: keel_llm::openai::finish_reason_str(&response.finish_reason).to_string(),
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
                cost_usd: self.router.prices.cost(&info.model, &response.usage),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                context: None,
                cached: false,
            })
        })
    }

    fn embed<'a>(&'a self, alias: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move {
            let request = EmbedRequest { model: alias.to_string(), input: EmbedInput::Texts(texts.to_vec()), dimensions: None, user: None };
            let (result, _) = self.router.embed(&request).await;
            result.map(|r| r.vectors).map_err(|e| keel_llm::scrub_secrets(&e.to_string(), None))
        })
    }
}

/// The configured online evaluators, checked at startup.
#[derive(Default)]
pub struct Online {
    evaluators: Vec<(OnlineEval, Assertion)>,
}

impl std::fmt::Debug for Online {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Online").field("evaluators", &self.evaluators.len()).finish()
    }
}

impl Online {
    /// Reads each evaluator's assertion; an unknown type is an error naming the evaluator.
    pub fn new(config: &[OnlineEval]) -> Result<Online, keel_eval::Error> {
        let mut evaluators = Vec::new();
        for online in config {
            let invalid = |e: &dyn std::fmt::Display| keel_eval::Error::Invalid(format!("evals.online `{}`: {e}", online.name));
            let assertion: Assertion = serde_json::from_value(online.assert.clone()).map_err(|e| invalid(&format!("assert: {e}")))?;
            score::check(&assertion).map_err(|e| invalid(&e))?;
            evaluators.push((online.clone(), assertion));
        }
        Ok(Online { evaluators })
    }

    pub fn is_empty(&self) -> bool {
        self.evaluators.is_empty()
    }
}

/// Hands a finished call to the online evaluators whose filter and sample take it; each
/// grades it on a task of its own and stores its score. Calls that failed or kept no body
/// are not scored.
pub(crate) fn consider(app: &App, trace: &Trace) {
    if app.online.is_empty() || trace.error.is_some() || trace.status >= 400 {
        return;
    }
    let Some(text) = trace.response_body.as_deref().and_then(keel_eval::dataset::answer_text) else { return };
    for (idx, (online, _)) in app.online.evaluators.iter().enumerate() {
        if online.model.as_deref().is_some_and(|m| m != trace.alias)
            || online.prompt.as_deref().is_some_and(|p| trace.prompt_name.as_deref() != Some(p))
            || fastrand::f64() >= online.sample_rate
        {
            continue;
        }
        let app = app.clone();
        let answer = Answer { text: text.clone(), model: trace.model.clone(), latency_ms: trace.latency_ms, cost_usd: trace.cost_usd, ..Answer::default() };
        let trace_id = trace.id.clone();
        let vars = trace.request_body.as_deref().map(variables).unwrap_or_default();
        tokio::spawn(async move {
            let (online, assertion) = &app.online.evaluators[idx];
            let model = RouterModel { router: app.router.clone() };
            let case = Case { answer: &answer, vars: &vars, expected: None, judge: online.judge.as_deref(), model: &model };
            let grade = score::grade(assertion, &case).await;
            let score = Score {
                id: keel_core::time_ordered_id(keel_core::now_ms() as u64, fastrand::u128(..)),
                trace_id,
                name: online.name.clone(),
                value: Some(grade.score),
                label: Some(if grade.pass { "pass" } else { "fail" }.to_string()),
                comment: Some(grade.reason),
                source: format!("online:{}", online.name),
                created_ms: keel_core::now_ms(),
            };
            let store = app.store.clone();
            let written = tokio::task::spawn_blocking(move || store.add_score(&score)).await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::warn!("online eval `{}`: its score was not stored", online.name);
            }
        });
    }
}

/// A judge reads the request's question: the prompt's variables, else the last user text.
fn variables(body: &str) -> Map<String, Value> {
    let Ok(request) = serde_json::from_str::<Value>(body) else { return Map::new() };
    if let Some(Value::Object(vars)) = request.pointer("/prompt/variables") {
        return vars.clone();
    }
    let last_user = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(text) => text.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n"),
            _ => String::new(),
        });
    let mut vars = Map::new();
    if let Some(question) = last_user {
        vars.insert("question".into(), Value::String(question));
    }
    vars
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    trace_id: String,
    name: String,
    value: Value,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/feedback`: a score on a trace. `value` is a number, a boolean (stored as 1 or
/// 0) or a category (a string). The trace must exist: keel waits briefly for one still in
/// the trace writer's queue, then answers 404.
pub async fn feedback(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let (body, _) = match crate::handlers::parse_body::<FeedbackBody>(body, Format::OpenAi) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    match store_feedback(&app, body).await {
        Ok(score) => Json(json!({"id": score.id, "trace_id": score.trace_id, "name": score.name})).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn store_feedback(app: &App, body: FeedbackBody) -> Result<Score, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_request", message, Format::OpenAi);
    if body.trace_id.len() != 32 || !body.trace_id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("trace_id `{}` is not a keel trace id (32 hex digits, from the x-keel-trace-id header)", body.trace_id)));
    }
    if body.name.is_empty() || body.name.len() > 100 {
        return Err(bad("name: 1 to 100 characters".into()));
    }
    let (value, label) = match &body.value {
        Value::Number(n) => (n.as_f64(), None),
        Value::Bool(b) => (Some(f64::from(u8::from(*b))), Some(b.to_string())),
        Value::String(text) if !text.is_empty() && text.len() <= 200 => (None, Some(text.clone())),
        other => return Err(bad(format!("value must be a number, a boolean or a category (a short string), not {other}"))),
    };
    let mut found = false;
    for _ in 0..20 {
        let store = app.store.clone();
        let id = body.trace_id.clone();
        found = tokio::task::spawn_blocking(move || store.trace(&id)).await.ok().and_then(Result::ok).flatten().is_some();
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !found {
        return Err(ApiError::not_found(format!("no trace `{}`", body.trace_id)));
    }
    let score = Score {
        id: keel_core::time_ordered_id(keel_core::now_ms() as u64, fastrand::u128(..)),
        trace_id: body.trace_id,
        name: body.name,
        value,
        label,
        comment: body.comment,
        source: "feedback".into(),
        created_ms: keel_core::now_ms(),
    };
    let store = app.store.clone();
    let stored = score.clone();
    tokio::task::spawn_blocking(move || store.add_score(&stored))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(score)
}
