//! The `openai` provider: OpenAI and every OpenAI-compatible host (Chat Completions and
//! Embeddings), outbound. Writes the upstream request, reads its answers, stream chunks and
//! errors back into the canonical model.

use keel_core::{
    ChatRequest, ChatResponse, ContentPart, EmbedInput, EmbedRequest, EmbedResponse, FinishReason, Message, ResponseFormat,
    Role, StreamEvent, ToolCall, ToolChoice, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use futures_util::future::BoxFuture;

use super::http::{Auth, Decode, Http};
use super::{EventStream, Provider};
use crate::forward::{Forwarded, Native};
use crate::{Error, Result};
use crate::api::openai::{WireToolCall, tool_calls_to_wire};

/// OpenAI, or any host that speaks its Chat Completions and Embeddings APIs.
#[derive(Debug)]
pub struct OpenAi {
    http: Http,
}

impl OpenAi {
    pub(crate) fn new(http: Http) -> OpenAi {
        OpenAi { http }
    }
}

impl Provider for OpenAi {
    fn name(&self) -> &str {
        &self.http.name
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let body = chat_request_to_wire(request, model, false);
            let post = self.http.post(&format!("{}/chat/completions", self.http.base_url), &body, Auth::Bearer)?;
            let bytes = self.http.call(post, error_message).await?;
            chat_response(&bytes).map_err(|message| self.http.bad_response(message))
        })
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<EventStream>> {
        Box::pin(async move {
            let body = chat_request_to_wire(request, model, true);
            let post = self.http.post(&format!("{}/chat/completions", self.http.base_url), &body, Auth::Bearer)?;
            self.http.stream(post, error_message, Box::new(ChunkDecoder::default())).await
        })
    }

    fn native(&self) -> Option<Native> {
        Some(Native::OpenAiChat)
    }

    fn forward<'a>(
        &'a self,
        body: bytes::Bytes,
        stream: bool,
        client_usage: bool,
        _headers: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Forwarded>> {
        Box::pin(async move {
            let post = self.http.post_raw(self.http.url("/chat/completions")?, body, Auth::Bearer)?;
            let relay = stream.then(|| (Box::new(ChunkDecoder::default()) as Box<dyn Decode>, Native::OpenAiChat, client_usage));
            self.http.forward(post, error_message, relay, forwarded_summary).await
        })
    }

    fn embed<'a>(&'a self, request: &'a EmbedRequest, model: &'a str) -> BoxFuture<'a, Result<EmbedResponse>> {
        Box::pin(async move {
            let body = embed_request_to_wire(request, model);
            let post = self.http.post(&format!("{}/embeddings", self.http.base_url), &body, Auth::Bearer)?;
            let bytes = self.http.call(post, error_message).await?;
            self.http.embeddings(request, embed_response(&bytes))
        })
    }
}

impl Decode for ChunkDecoder {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        self.push(data, out)
    }

    fn done(&self) -> bool {
        self.done
    }
}

// ---------------------------------------------------------------------------------------
// Outbound: keel's request to an OpenAI-compatible upstream, and its answers.

fn uses_max_completion_tokens(model: &str) -> bool {
    ["o1", "o3", "o4", "gpt-5"].iter().any(|prefix| model.starts_with(prefix))
}

fn message_to_wire(message: &Message) -> Value {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let only_text = message.content.iter().all(|part| matches!(part, ContentPart::Text { .. }));
    let content = if message.role == Role::Assistant && message.content.is_empty() {
        Value::Null
    } else if only_text || message.role != Role::User {
        Value::String(message.text_content())
    } else {
        Value::Array(
            message
                .content
                .iter()
                .map(|part| match part {
                    ContentPart::Text { text } => json!({"type": "text", "text": text}),
                    ContentPart::Image { source, detail } => {
                        let mut image_url = json!({"url": source.to_url()});
                        if let Some(detail) = detail {
                            image_url["detail"] = json!(detail);
                        }
                        json!({"type": "image_url", "image_url": image_url})
                    }
                    ContentPart::Audio { data, format } => {
                        json!({"type": "input_audio", "input_audio": {"data": data, "format": format}})
                    }
                    ContentPart::File { data, media_type, filename } => json!({
                        "type": "file",
                        "file": {"file_data": format!("data:{media_type};base64,{data}"), "filename": filename},
                    }),
                })
                .collect(),
        )
    };
    let mut wire = json!({"role": role, "content": content});
    if !message.tool_calls.is_empty() {
        wire["tool_calls"] = tool_calls_to_wire(&message.tool_calls);
    }
    if let Some(id) = &message.tool_call_id {
        wire["tool_call_id"] = json!(id);
    }
    if let Some(name) = &message.name
        && message.role != Role::Tool {
            wire["name"] = json!(name);
        }
    wire
}

/// Writes a canonical request as an upstream Chat Completions body for `model`.
pub fn chat_request_to_wire(request: &ChatRequest, model: &str, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(request.messages.iter().map(message_to_wire).collect()));
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = json!({"name": tool.name, "parameters": tool.parameters});
                if let Some(description) = &tool.description {
                    function["description"] = json!(description);
                }
                if let Some(strict) = tool.strict {
                    function["strict"] = json!(strict);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &request.tool_choice {
        body.insert(
            "tool_choice".into(),
            match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
            },
        );
    }
    if let Some(parallel) = request.parallel_tool_calls
        && !request.tools.is_empty() {
            body.insert("parallel_tool_calls".into(), json!(parallel));
        }
    match &request.response_format {
        None => {}
        Some(ResponseFormat::Text) => {
            body.insert("response_format".into(), json!({"type": "text"}));
        }
        Some(ResponseFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema { name, schema, strict }) => {
            let mut json_schema = json!({"name": name, "schema": schema});
            if let Some(strict) = strict {
                json_schema["strict"] = json!(strict);
            }
            body.insert("response_format".into(), json!({"type": "json_schema", "json_schema": json_schema}));
        }
    }
    let optional = [
        ("temperature", request.temperature.map(|v| json!(v))),
        ("top_p", request.top_p.map(|v| json!(v))),
        ("seed", request.seed.map(|v| json!(v))),
        ("user", request.user.as_ref().map(|v| json!(v))),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    }
    if let Some(max_tokens) = request.max_tokens {
        let key = if uses_max_completion_tokens(model) { "max_completion_tokens" } else { "max_tokens" };
        body.insert(key.into(), json!(max_tokens));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

#[derive(Debug, Deserialize)]
struct UpstreamResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    choices: Vec<UpstreamChoice>,
    usage: Option<UpstreamUsage>,
}

#[derive(Debug, Deserialize)]
struct UpstreamChoice {
    message: UpstreamMessage,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UpstreamMessage {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Debug, Default, Deserialize)]
struct UpstreamUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl UpstreamUsage {
    fn canonical(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cached_input_tokens: self.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: self.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).unwrap_or(0),
        }
    }
}

/// Reads an upstream Chat Completions response body.
pub fn chat_response_from_wire(body: &[u8]) -> Result<ChatResponse> {
    chat_response(body).map_err(Error::Unreadable)
}

fn chat_response(body: &[u8]) -> Result<ChatResponse, String> {
    let wire: UpstreamResponse = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err("the response has no choices".into());
    };
    let mut message = Message::new(Role::Assistant, Vec::new());
    if let Some(text) = choice.message.content.or(choice.message.refusal)
        && !text.is_empty() {
            message.content.push(ContentPart::Text { text });
        }
    message.tool_calls = choice
        .message
        .tool_calls
        .into_iter()
        .map(|call| ToolCall { id: call.id, name: call.function.name, arguments: call.function.arguments })
        .collect();
    let finish_reason = finish_reason_or_default(choice.finish_reason.as_deref(), !message.tool_calls.is_empty());
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        message,
        finish_reason,
        usage: wire.usage.unwrap_or_default().canonical(),
    })
}

/// The answer's finish reason; where the upstream gives none, tool calls mean it stopped to
/// call them, else it stopped.
fn finish_reason_or_default(reason: Option<&str>, called_tools: bool) -> FinishReason {
    match reason {
        Some(reason) => finish_reason_from_str(reason),
        None if called_tools => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    }
}

/// What the trace needs from a forwarded answer (id, model, finish reason, usage), read
/// without copying its text or tool calls: the client gets the bytes as they came, and the
/// trace keeps them whole. The JSON is still checked all through.
fn forwarded_summary(body: &[u8]) -> Result<ChatResponse, String> {
    #[derive(Deserialize)]
    struct Summary {
        #[serde(default)]
        id: String,
        #[serde(default)]
        model: String,
        choices: Vec<SummaryChoice>,
        usage: Option<UpstreamUsage>,
    }
    #[derive(Deserialize)]
    struct SummaryChoice {
        message: SummaryMessage,
        finish_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct SummaryMessage {
        #[serde(default)]
        tool_calls: Option<Vec<serde::de::IgnoredAny>>,
    }
    let wire: Summary = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err("the response has no choices".into());
    };
    let called = choice.message.tool_calls.is_some_and(|calls| !calls.is_empty());
    let finish_reason = finish_reason_or_default(choice.finish_reason.as_deref(), called);
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        message: Message::new(Role::Assistant, Vec::new()),
        finish_reason,
        usage: wire.usage.unwrap_or_default().canonical(),
    })
}

#[derive(Debug, Deserialize)]
struct UpstreamChunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<UpstreamChunkChoice>,
    usage: Option<UpstreamUsage>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct UpstreamChunkChoice {
    #[serde(default)]
    delta: Option<UpstreamDelta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct UpstreamDelta {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<UpstreamToolCallDelta>,
}

#[derive(Debug, Deserialize)]
struct UpstreamToolCallDelta {
    #[serde(default)]
    index: usize,
    id: Option<String>,
    function: Option<UpstreamFunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct UpstreamFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

/// Decodes an upstream Chat Completions SSE stream into canonical events.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    started: bool,
    started_calls: Vec<bool>,
    pub done: bool,
}

impl ChunkDecoder {
    /// Reads one SSE event's data into canonical events.
    pub fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<()> {
        self.push(data, out).map_err(Error::Unreadable)
    }

    fn push(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: UpstreamChunk = serde_json::from_str(data).map_err(|err| format!("bad chunk: {err}"))?;
        if let Some(error) = chunk.error {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("stream error").to_string();
            return Err(message);
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start { id: chunk.id, model: chunk.model });
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.or(delta.refusal)
                    && !text.is_empty() {
                        out.push(StreamEvent::TextDelta(text));
                    }
                for call in delta.tool_calls {
                    let index = call.index;
                    while self.started_calls.len() <= index {
                        self.started_calls.push(false);
                    }
                    let function = call.function.unwrap_or(UpstreamFunctionDelta { name: None, arguments: None });
                    if !self.started_calls[index] {
                        self.started_calls[index] = true;
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: call.id.unwrap_or_else(|| format!("call_{index}")),
                            name: function.name.unwrap_or_default(),
                        });
                    }
                    if let Some(arguments) = function.arguments
                        && !arguments.is_empty() {
                            out.push(StreamEvent::ToolCallDelta { index, arguments });
                        }
                }
            }
            if let Some(reason) = choice.finish_reason {
                out.push(StreamEvent::Finish(finish_reason_from_str(&reason)));
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(StreamEvent::Usage(usage.canonical()));
        }
        Ok(())
    }
}

/// Reads an OpenAI-shaped error body's message, or the body itself.
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if let Some(message) = parsed.as_ref().and_then(|v| v.pointer("/error/message")).and_then(Value::as_str) {
        return message.to_string();
    }
    if let Some(message) = parsed.as_ref().and_then(|v| v.get("error")).and_then(Value::as_str) {
        return message.to_string();
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(500).collect()
}

pub fn embed_request_to_wire(request: &EmbedRequest, model: &str) -> Value {
    let mut body = json!({"model": model, "encoding_format": "float"});
    body["input"] = match &request.input {
        EmbedInput::Texts(texts) => json!(texts),
        EmbedInput::Tokens(tokens) => json!(tokens),
    };
    if let Some(dimensions) = request.dimensions {
        body["dimensions"] = json!(dimensions);
    }
    if let Some(user) = &request.user {
        body["user"] = json!(user);
    }
    body
}

#[derive(Debug, Deserialize)]
struct UpstreamEmbeddings {
    data: Vec<UpstreamEmbedding>,
    #[serde(default)]
    model: String,
    usage: Option<UpstreamUsage>,
}

#[derive(Debug, Deserialize)]
struct UpstreamEmbedding {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

pub fn embed_response_from_wire(body: &[u8]) -> Result<EmbedResponse> {
    embed_response(body).map_err(Error::Unreadable)
}

fn embed_response(body: &[u8]) -> Result<EmbedResponse, String> {
    let mut wire: UpstreamEmbeddings = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    wire.data.sort_by_key(|item| item.index);
    Ok(EmbedResponse {
        model: wire.model,
        vectors: wire.data.into_iter().map(|item| item.embedding).collect(),
        usage: wire.usage.unwrap_or_default().canonical(),
    })
}

fn finish_reason_from_str(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}
