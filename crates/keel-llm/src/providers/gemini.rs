//! The `gemini` provider: the Gemini API outbound, `generateContent`, `streamGenerateContent?alt=sse`,
//! function calling, `responseSchema` and `batchEmbedContents`. No IO here.

use std::collections::HashMap;

use keel_core::{
    ChatRequest, ChatResponse, ContentPart, EmbedInput, EmbedRequest, EmbedResponse, FinishReason, ImageSource,
    Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use futures_util::future::BoxFuture;

use super::http::{Auth, Decode, Http};
use super::{EventStream, Provider};
use crate::{Error, Result};

/// Google's Gemini API (`generateContent`) with an API key.
#[derive(Debug)]
pub struct Gemini {
    http: Http,
}

impl Gemini {
    pub(crate) fn new(http: Http) -> Gemini {
        Gemini { http }
    }
}

const KEY_HEADER: Auth = Auth::Header("x-goog-api-key");

impl Provider for Gemini {
    fn name(&self) -> &str {
        &self.http.name
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let url = format!("{}/v1beta/models/{model}:generateContent", self.http.base_url);
            let bytes = self.http.call(self.http.post(&url, &generate_request_to_wire(request)?, KEY_HEADER)?, error_message).await?;
            generate_response(&bytes).map_err(|message| self.http.bad_response(message))
        })
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<EventStream>> {
        Box::pin(async move {
            let url = format!("{}/v1beta/models/{model}:streamGenerateContent?alt=sse", self.http.base_url);
            let post = self.http.post(&url, &generate_request_to_wire(request)?, KEY_HEADER)?;
            self.http.stream(post, error_message, Box::new(ChunkDecoder::default())).await
        })
    }

    fn embed<'a>(&'a self, request: &'a EmbedRequest, model: &'a str) -> BoxFuture<'a, Result<EmbedResponse>> {
        Box::pin(async move {
            let url = format!("{}/v1beta/models/{model}:batchEmbedContents", self.http.base_url);
            let post = self.http.post(&url, &embed_request_to_wire(request, model)?, KEY_HEADER)?;
            let bytes = self.http.call(post, error_message).await?;
            self.http.embeddings(request, embed_response(&bytes, model))
        })
    }
}

impl Decode for ChunkDecoder {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        self.push(data, out)
    }
}

/// Keywords of JSON Schema that Gemini's `responseSchema` (an OpenAPI subset) understands.
const SCHEMA_KEYS: &[&str] = &[
    "type", "format", "description", "nullable", "enum", "properties", "required", "items", "minItems", "maxItems",
    "minimum", "maximum", "anyOf", "propertyOrdering", "minLength", "maxLength", "pattern", "title", "minProperties",
    "maxProperties",
];

/// Rewrites a JSON Schema into Gemini's schema dialect: upper-case types, `nullable` for
/// `["T", "null"]`, local `$ref`s inlined, keywords it does not know dropped.
pub fn to_gemini_schema(schema: &Value) -> Value {
    let defs = schema.get("$defs").or_else(|| schema.get("definitions")).cloned().unwrap_or(Value::Null);
    convert_schema(schema, &defs, 0)
}

fn convert_schema(schema: &Value, defs: &Value, depth: usize) -> Value {
    let Value::Object(map) = schema else { return schema.clone() };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        if let Some(target) = defs.get(name)
            && depth < 16 {
                return convert_schema(target, defs, depth + 1);
            }
        return json!({"type": "OBJECT"});
    }
    let mut out = Map::new();
    for (key, value) in map {
        if !SCHEMA_KEYS.contains(&key.as_str()) {
            continue;
        }
        let converted = match key.as_str() {
            "type" => match value {
                Value::String(kind) => json!(kind.to_uppercase()),
                Value::Array(kinds) => {
                    let non_null: Vec<&Value> = kinds.iter().filter(|kind| kind.as_str() != Some("null")).collect();
                    if non_null.len() < kinds.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                    match non_null.first().and_then(|kind| kind.as_str()) {
                        Some(kind) => json!(kind.to_uppercase()),
                        None => continue,
                    }
                }
                _ => continue,
            },
            "properties" => match value {
                Value::Object(props) => Value::Object(
                    props.iter().map(|(name, prop)| (name.clone(), convert_schema(prop, defs, depth + 1))).collect(),
                ),
                _ => continue,
            },
            "items" => convert_schema(value, defs, depth + 1),
            "anyOf" => match value {
                Value::Array(options) => {
                    let non_null: Vec<Value> = options
                        .iter()
                        .filter(|option| option.get("type").and_then(Value::as_str) != Some("null"))
                        .map(|option| convert_schema(option, defs, depth + 1))
                        .collect();
                    if non_null.len() < options.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                    Value::Array(non_null)
                }
                _ => continue,
            },
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    Value::Object(out)
}

fn part_to_wire(part: &ContentPart) -> Result<Value> {
    Ok(match part {
        ContentPart::Text { text } => json!({"text": text}),
        ContentPart::Image { source: ImageSource::Base64 { media_type, data }, .. }
        | ContentPart::File { data, media_type, .. } => json!({"inlineData": {"mimeType": media_type, "data": data}}),
        ContentPart::Image { source: ImageSource::Url { url }, .. } => {
            let mime = if url.ends_with(".png") {
                "image/png"
            } else if url.ends_with(".webp") {
                "image/webp"
            } else if url.ends_with(".gif") {
                "image/gif"
            } else {
                "image/jpeg"
            };
            json!({"fileData": {"mimeType": mime, "fileUri": url}})
        }
        ContentPart::Audio { data, format } => json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}),
    })
}

fn tool_result_value(message: &Message) -> Value {
    let text = message.text_content();
    match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => value,
        Ok(value) => json!({"result": value}),
        Err(_) if message.is_error => json!({"error": text}),
        Err(_) => json!({"result": text}),
    }
}

/// Writes a canonical request as a `generateContent` body.
pub fn generate_request_to_wire(request: &ChatRequest) -> Result<Value> {
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for message in &request.messages {
        let (role, parts) = match message.role {
            Role::System => {
                system.push(json!({"text": message.text_content()}));
                continue;
            }
            Role::User => ("user", message.content.iter().map(part_to_wire).collect::<Result<Vec<_>>>()?),
            Role::Assistant => {
                let mut parts: Vec<Value> = message
                    .content
                    .iter()
                    .filter(|part| !matches!(part, ContentPart::Text { text } if text.is_empty()))
                    .map(part_to_wire)
                    .collect::<Result<_>>()?;
                for call in &message.tool_calls {
                    call_names.insert(&call.id, &call.name);
                    let args: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
                    parts.push(json!({"functionCall": {"name": call.name, "args": args}}));
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let name = message.name.as_deref().or_else(|| call_names.get(id).copied()).ok_or_else(|| {
                    Error::InvalidRequest(format!("tool result `{id}` answers no tool call earlier in the conversation"))
                })?;
                ("user", vec![json!({"functionResponse": {"name": name, "response": tool_result_value(message)}})])
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(contents.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect()),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration = json!({"name": tool.name, "parameters": to_gemini_schema(&tool.parameters)});
                if let Some(description) = &tool.description {
                    declaration["description"] = json!(description);
                }
                declaration
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    if let Some(choice) = &request.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert("toolConfig".into(), json!({"functionCallingConfig": config}));
    }
    let mut generation = Map::new();
    for (key, value) in [
        ("temperature", request.temperature.map(|v| json!(v))),
        ("topP", request.top_p.map(|v| json!(v))),
        ("topK", request.top_k.map(|v| json!(v))),
        ("maxOutputTokens", request.max_tokens.map(|v| json!(v))),
        ("seed", request.seed.map(|v| json!(v))),
    ] {
        if let Some(value) = value {
            generation.insert(key.into(), value);
        }
    }
    if !request.stop.is_empty() {
        generation.insert("stopSequences".into(), json!(request.stop));
    }
    match &request.response_format {
        Some(ResponseFormat::JsonObject) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            generation.insert("responseSchema".into(), to_gemini_schema(schema));
        }
        _ => {}
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: String,
    #[serde(default)]
    response_id: String,
    prompt_feedback: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    content: Option<WireContent>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    function_call: Option<WireFunctionCall>,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl WireUsage {
    fn canonical(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_token_count,
            // Gemini counts thinking apart from the candidates; canonical output includes it.
            output_tokens: self.candidates_token_count + self.thoughts_token_count,
            cached_input_tokens: self.cached_content_token_count,
            cache_write_tokens: 0,
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

fn finish_reason_from_str(reason: &str) -> FinishReason {
    match reason {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        "MALFORMED_FUNCTION_CALL" => FinishReason::Other("malformed_function_call".into()),
        other => FinishReason::Other(other.to_lowercase()),
    }
}

fn call_id(call: &WireFunctionCall, n: usize) -> String {
    call.id.clone().unwrap_or_else(|| format!("call_{n}"))
}

/// Reads a `generateContent` response body.
pub fn generate_response_from_wire(body: &[u8]) -> Result<ChatResponse> {
    generate_response(body).map_err(Error::Unreadable)
}

fn generate_response(body: &[u8]) -> Result<ChatResponse, String> {
    let wire: WireResponse = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    let Some(candidate) = wire.candidates.into_iter().next() else {
        if let Some(feedback) = wire.prompt_feedback {
            return Err(format!("the prompt was blocked: {feedback}"));
        }
        return Err("the response has no candidates".into());
    };
    let mut message = Message::new(Role::Assistant, Vec::new());
    let mut text = String::new();
    for part in candidate.content.unwrap_or_default().parts {
        if let Some(call) = part.function_call {
            let id = call_id(&call, message.tool_calls.len());
            message.tool_calls.push(ToolCall { id, name: call.name, arguments: call.args.to_string() });
        } else if let Some(part_text) = part.text
            && !part.thought {
                text.push_str(&part_text);
            }
    }
    if !text.is_empty() {
        message.content.push(ContentPart::Text { text });
    }
    let mut finish_reason = finish_reason_from_str(candidate.finish_reason.as_deref().unwrap_or("STOP"));
    if !message.tool_calls.is_empty() && finish_reason == FinishReason::Stop {
        finish_reason = FinishReason::ToolCalls;
    }
    Ok(ChatResponse {
        id: wire.response_id,
        model: wire.model_version,
        message,
        finish_reason,
        usage: wire.usage_metadata.unwrap_or_default().canonical(),
    })
}

/// Decodes a `streamGenerateContent?alt=sse` stream into canonical events. Gemini sends
/// each function call whole, so a call becomes a start and one argument delta.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    started: bool,
    n_calls: usize,
}

impl ChunkDecoder {
    /// Reads one SSE event's data into canonical events.
    pub fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<()> {
        self.push(data, out).map_err(Error::Unreadable)
    }

    fn push(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let value: Value = serde_json::from_str(data).map_err(|err| format!("bad chunk: {err}"))?;
        if let Some(error) = value.get("error") {
            return Err(error.get("message").and_then(Value::as_str).unwrap_or("stream error").to_string());
        }
        let wire: WireResponse = serde_json::from_value(value).map_err(|err| format!("bad chunk: {err}"))?;
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start { id: wire.response_id.clone(), model: wire.model_version.clone() });
        }
        for candidate in wire.candidates {
            for part in candidate.content.unwrap_or_default().parts {
                if let Some(call) = part.function_call {
                    let index = self.n_calls;
                    self.n_calls += 1;
                    out.push(StreamEvent::ToolCallStart { index, id: call_id(&call, index), name: call.name });
                    out.push(StreamEvent::ToolCallDelta { index, arguments: call.args.to_string() });
                } else if let Some(text) = part.text
                    && !part.thought && !text.is_empty() {
                        out.push(StreamEvent::TextDelta(text));
                    }
            }
            if let Some(reason) = candidate.finish_reason {
                let mut reason = finish_reason_from_str(&reason);
                if self.n_calls > 0 && reason == FinishReason::Stop {
                    reason = FinishReason::ToolCalls;
                }
                out.push(StreamEvent::Finish(reason));
            }
        }
        if let Some(usage) = wire.usage_metadata {
            out.push(StreamEvent::Usage(usage.canonical()));
        }
        Ok(())
    }
}

pub fn embed_request_to_wire(request: &EmbedRequest, model: &str) -> Result<Value> {
    let EmbedInput::Texts(texts) = &request.input else {
        return Err(Error::Unsupported { provider: "gemini".into(), what: "token-id embedding inputs" });
    };
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut item = json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
            if let Some(dimensions) = request.dimensions {
                item["outputDimensionality"] = json!(dimensions);
            }
            item
        })
        .collect();
    Ok(json!({"requests": requests}))
}

#[derive(Debug, Deserialize)]
struct WireEmbeddings {
    embeddings: Vec<WireEmbedding>,
}

#[derive(Debug, Deserialize)]
struct WireEmbedding {
    values: Vec<f32>,
}

pub fn embed_response_from_wire(body: &[u8], model: &str) -> Result<EmbedResponse> {
    embed_response(body, model).map_err(Error::Unreadable)
}

fn embed_response(body: &[u8], model: &str) -> Result<EmbedResponse, String> {
    let wire: WireEmbeddings = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    Ok(EmbedResponse {
        model: model.to_string(),
        vectors: wire.embeddings.into_iter().map(|e| e.values).collect(),
        usage: Usage::default(),
    })
}

/// Reads a Gemini-shaped error body's message, or the body itself.
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v.pointer("/error/message")).and_then(Value::as_str) {
        Some(message) => message.to_string(),
        None => String::from_utf8_lossy(body).chars().take(500).collect(),
    }
}
