//! The prompt registry over HTTP, and chat requests that name a registry prompt instead of
//! sending messages: `"prompt": {"name": "support", "label": "production", "variables": {...}}`
//! on `/v1/chat/completions` or `/v1/messages`. keel renders the prompt, fills in its config
//! where the request leaves a field out, and the trace names the prompt's version (and the
//! A/B arm when a split chose it).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use keel_eval::{Ask, PromptDef, PromptMessage, Resolved};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{ApiError, App, Format};

/// The header that keeps one session on one arm of a split when the request has no `user`.
pub const SESSION_HEADER: &str = "x-keel-session-id";

/// The response header that names the prompt version a request was rendered from.
pub const PROMPT_HEADER: &str = "x-keel-prompt";

/// The registry prompt a request was rendered from, for its trace.
#[derive(Debug, Clone, Default)]
pub(crate) struct PromptUse {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) arm: Option<String>,
}

impl PromptUse {
    /// Names the version (`support@3`) on the response.
    pub(crate) fn mark(&self, response: &mut Response) {
        if let Ok(value) = axum::http::HeaderValue::from_str(&format!("{}@{}", self.name, self.version)) {
            response.headers_mut().insert(PROMPT_HEADER, value);
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptRef {
    name: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    variables: Map<String, Value>,
}

/// Where a chat request names a registry prompt, the request with the prompt rendered into
/// its messages; `None` for a request that does not (left exactly as it came).
pub(crate) fn apply(app: &App, bytes: &Bytes, headers: &HeaderMap, format: Format) -> Result<Option<(Bytes, PromptUse)>, ApiError> {
    // The common case costs one scan of the body, not a parse; a body that only mentions
    // "prompt" inside (a tool's parameter, as Claude Code's are) is split at its top level
    // without building a tree.
    if !bytes.windows(8).any(|window| window == b"\"prompt\"") {
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct TopLevel {
        prompt: Option<serde::de::IgnoredAny>,
    }
    if !serde_json::from_slice::<TopLevel>(bytes).is_ok_and(|top| top.prompt.is_some()) {
        return Ok(None);
    }
    let Ok(mut body) = serde_json::from_slice::<Map<String, Value>>(bytes) else { return Ok(None) };
    let Some(reference) = body.remove("prompt") else { return Ok(None) };
    // The SDKs require `messages`: an empty list beside `prompt` counts as none.
    match body.remove("messages") {
        None => {}
        Some(Value::Array(messages)) if messages.is_empty() => {}
        Some(_) => return Err(ApiError::bad_request("invalid_request", "send `prompt` or `messages`, not both", format)),
    }
    let reference: PromptRef = match reference {
        Value::String(name) => PromptRef { name, label: None, version: None, variables: Map::new() },
        other => serde_json::from_value(other).map_err(|err| {
            ApiError::bad_request("invalid_request", format!("prompt: {err} (expected {{\"name\", \"label\" or \"version\", \"variables\"}})"), format)
        })?,
    };
    let user = match format {
        Format::OpenAi => body.get("user").or_else(|| body.get("safety_identifier")),
        Format::Anthropic => body.get("metadata").and_then(|m| m.get("user_id")),
    }
    .and_then(Value::as_str)
    .map(str::to_string);
    let session = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let random = format!("{:016x}", fastrand::u64(..));
    let sticky = user.or(session).unwrap_or(random);
    let ask = Ask { name: &reference.name, version: reference.version, label: reference.label.as_deref(), sticky: Some(&sticky) };
    let resolved = app.prompts.resolve(&ask).map_err(|err| ApiError::from_prompt(&err, format))?;
    let messages = resolved.def.render(&reference.variables).map_err(|err| ApiError::from_prompt(&err, format))?;
    match format {
        Format::OpenAi => {
            body.insert("messages".into(), Value::Array(messages));
            for (key, value) in resolved.def.config.fields() {
                body.entry(key).or_insert(value);
            }
        }
        Format::Anthropic => into_messages_request(&mut body, messages, &resolved.def),
    }
    let used = PromptUse { name: resolved.name.clone(), version: resolved.version, arm: resolved.arm.clone() };
    Ok(Some((Bytes::from(Value::Object(body).to_string()), used)))
}

/// A rendered prompt as a Messages request: system and developer messages become `system`,
/// the config's fields take Anthropic's names, function tools Anthropic's shape.
fn into_messages_request(body: &mut Map<String, Value>, messages: Vec<Value>, def: &PromptDef) {
    let (system, rest): (Vec<Value>, Vec<Value>) =
        messages.into_iter().partition(|m| matches!(m["role"].as_str(), Some("system" | "developer")));
    let system: Vec<&str> = system.iter().filter_map(|m| m["content"].as_str()).collect();
    if !system.is_empty() && !body.contains_key("system") {
        body.insert("system".into(), Value::String(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(rest));
    for (key, value) in def.config.fields() {
        let (key, value) = match key {
            "stop" => ("stop_sequences", value),
            "tools" => ("tools", anthropic_tools(&value)),
            // Output formats and tool choice are spelled differently enough that they stay
            // OpenAI-only; a Messages request sets its own.
            "response_format" | "tool_choice" => continue,
            other => (other, value),
        };
        body.entry(key).or_insert(value);
    }
}

fn anthropic_tools(tools: &Value) -> Value {
    let tools = tools.as_array().into_iter().flatten().map(|tool| {
        let function = tool.get("function").unwrap_or(tool);
        json!({
            "name": function["name"],
            "description": function.get("description").cloned().unwrap_or(Value::String(String::new())),
            "input_schema": function.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
        })
    });
    Value::Array(tools.collect())
}

#[derive(Debug, Deserialize)]
pub struct Which {
    label: Option<String>,
    version: Option<u32>,
}

/// `GET /v1/prompts`: every prompt with its latest version and labels.
pub async fn list(State(app): State<App>) -> Response {
    match app.store.list_prompts() {
        Ok(prompts) => {
            let data: Vec<Value> = prompts
                .into_iter()
                .map(|p| {
                    json!({
                        "name": p.name, "latest": p.latest, "versions": p.versions, "updated_ms": p.updated_ms,
                        "labels": p.labels.into_iter().map(|(label, version)| (label, json!(version))).collect::<Map<_, _>>(),
                    })
                })
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(err) => ApiError::internal(err.to_string()).into_response(),
    }
}

/// `GET /v1/prompts/{name}?label=&version=`: the version asked for (`production` when
/// neither is given), its template, the variables it reads and its config.
pub async fn get(State(app): State<App>, Path(name): Path<String>, Query(which): Query<Which>) -> Response {
    let ask = Ask { name: &name, version: which.version, label: Some(which.label.as_deref().unwrap_or(keel_eval::PRODUCTION)), sticky: None };
    match app.prompts.resolve(&ask) {
        Ok(resolved) => Json(describe(&resolved)).into_response(),
        Err(err) => ApiError::from_prompt(&err, Format::OpenAi).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderBody {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    version: Option<u32>,
    #[serde(default)]
    variables: Map<String, Value>,
}

/// `POST /v1/prompts/{name}/render`: the messages the prompt renders to with `variables`,
/// and its config (a missing variable is a 400 naming it).
pub async fn render(State(app): State<App>, Path(name): Path<String>, body: Result<Bytes, BytesRejection>) -> Response {
    let (request, _) = match crate::handlers::parse_body::<RenderBody>(body, Format::OpenAi) {
        Ok(parsed) => parsed,
        Err(err) => return err.into_response(),
    };
    let ask = Ask { name: &name, version: request.version, label: Some(request.label.as_deref().unwrap_or(keel_eval::PRODUCTION)), sticky: None };
    let rendered = app.prompts.resolve(&ask).and_then(|resolved| Ok((resolved.def.render(&request.variables)?, resolved)));
    match rendered {
        Ok((messages, resolved)) => Json(json!({
            "name": resolved.name, "version": resolved.version, "messages": messages,
            "config": serde_json::to_value(&resolved.def.config).unwrap_or_default(),
        }))
        .into_response(),
        Err(err) => ApiError::from_prompt(&err, Format::OpenAi).into_response(),
    }
}

fn describe(resolved: &Resolved) -> Value {
    let def = &resolved.def;
    let (kind, prompt) = match &def.text {
        Some(text) => ("text", Value::String(text.clone())),
        None => (
            "chat",
            Value::Array(
                def.messages
                    .iter()
                    .map(|m| match m {
                        PromptMessage::Message { role, content } => json!({"role": role, "content": content}),
                        PromptMessage::Placeholder { placeholder } => json!({"placeholder": placeholder}),
                    })
                    .collect(),
            ),
        ),
    };
    json!({
        "name": resolved.name, "version": resolved.version, "labels": resolved.labels,
        "message": resolved.message, "created_ms": resolved.created_ms,
        "type": kind, "prompt": prompt, "variables": def.variables(),
        "config": serde_json::to_value(&def.config).unwrap_or_default(),
    })
}
