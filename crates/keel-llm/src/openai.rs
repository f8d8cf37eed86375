//! The OpenAI wire format, both ways: Chat Completions and Embeddings requests, responses,
//! stream chunks and errors. The server reads clients' requests with it; the `openai`
//! provider writes upstream requests with it. No IO here.

use keel_core::{
    ChatRequest, ChatResponse, ContentPart, EmbedInput, EmbedRequest, EmbedResponse, FinishReason, ImageSource,
    Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, ToolDef, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{Error, Result, validate_tool};

// ---------------------------------------------------------------------------------------
// Inbound: a client's request, as OpenAI's SDKs send it.

#[derive(Debug, Deserialize)]
pub struct WireChatRequest {
    pub model: String,
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<WireStreamOptions>,
    pub tools: Option<Vec<WireTool>>,
    pub tool_choice: Option<WireToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<WireResponseFormat>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub stop: Option<StringOrList>,
    pub seed: Option<i64>,
    pub user: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub n: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct WireStreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: WireRole,
    #[serde(default)]
    pub content: Option<WireContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Vec<WireToolCall>>,
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WireContent {
    Text(String),
    Parts(Vec<WirePart>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WirePart {
    Text { text: String },
    ImageUrl { image_url: WireImageUrl },
    InputAudio { input_audio: WireAudio },
    File { file: WireFile },
    Refusal { refusal: String },
}

#[derive(Debug, Deserialize)]
pub struct WireImageUrl {
    pub url: String,
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireAudio {
    pub data: String,
    pub format: String,
}

#[derive(Debug, Deserialize)]
pub struct WireFile {
    pub file_data: Option<String>,
    pub file_id: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireToolCall {
    #[serde(default)]
    pub id: String,
    pub function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct WireFunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
pub struct WireTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: WireFunction,
}

#[derive(Debug, Deserialize)]
pub struct WireFunction {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WireToolChoice {
    Mode(String),
    Named { function: WireNamedFunction },
}

#[derive(Debug, Deserialize)]
pub struct WireNamedFunction {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: WireJsonSchema },
}

#[derive(Debug, Deserialize)]
pub struct WireJsonSchema {
    pub name: String,
    pub schema: Option<Value>,
    pub strict: Option<bool>,
}

/// Reads a client's Chat Completions request into the canonical model.
pub fn chat_request_from_wire(wire: WireChatRequest) -> Result<ChatRequest> {
    if wire.n.is_some_and(|n| n != 1) {
        return Err(Error::InvalidRequest("n: only n = 1 is supported; send several requests instead".into()));
    }
    if wire.messages.is_empty() {
        return Err(Error::InvalidRequest("messages: must hold at least one message".into()));
    }
    let mut messages = Vec::with_capacity(wire.messages.len());
    for (idx, message) in wire.messages.into_iter().enumerate() {
        let role = match message.role {
            WireRole::System | WireRole::Developer => Role::System,
            WireRole::User => Role::User,
            WireRole::Assistant => Role::Assistant,
            WireRole::Tool | WireRole::Function => Role::Tool,
        };
        let content = match message.content {
            None => Vec::new(),
            Some(WireContent::Text(text)) => vec![ContentPart::Text { text }],
            Some(WireContent::Parts(parts)) => {
                let mut out = Vec::with_capacity(parts.len());
                for part in parts {
                    out.push(match part {
                        WirePart::Text { text } | WirePart::Refusal { refusal: text } => ContentPart::Text { text },
                        WirePart::ImageUrl { image_url } => {
                            ContentPart::Image { source: ImageSource::from_url(&image_url.url), detail: image_url.detail }
                        }
                        WirePart::InputAudio { input_audio } => {
                            ContentPart::Audio { data: input_audio.data, format: input_audio.format }
                        }
                        WirePart::File { file } => {
                            let Some(data) = file.file_data else {
                                return Err(Error::InvalidRequest(format!(
                                    "messages[{idx}]: file parts need `file_data`; uploaded file ids are not supported"
                                )));
                            };
                            let (media_type, data) = match ImageSource::from_url(&data) {
                                ImageSource::Base64 { media_type, data } => (media_type, data),
                                ImageSource::Url { url } => ("application/octet-stream".to_string(), url),
                            };
                            ContentPart::File { data, media_type, filename: file.filename }
                        }
                    });
                }
                out
            }
        };
        let mut msg = Message::new(role, content);
        msg.name = message.name;
        if role == Role::Tool {
            let Some(id) = message.tool_call_id else {
                return Err(Error::InvalidRequest(format!("messages[{idx}]: a tool message needs `tool_call_id`")));
            };
            msg.tool_call_id = Some(id);
        }
        for call in message.tool_calls.unwrap_or_default() {
            msg.tool_calls.push(ToolCall { id: call.id, name: call.function.name, arguments: call.function.arguments });
        }
        messages.push(msg);
    }
    let mut tools = Vec::new();
    for (idx, tool) in wire.tools.unwrap_or_default().into_iter().enumerate() {
        if tool.kind != "function" {
            return Err(Error::InvalidRequest(format!("tools[{idx}].type: only `function` tools are supported")));
        }
        let def = ToolDef {
            name: tool.function.name,
            description: tool.function.description,
            parameters: tool.function.parameters.unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: tool.function.strict,
        };
        validate_tool(&def).map_err(|msg| Error::InvalidRequest(format!("tools[{idx}]: {msg}")))?;
        tools.push(def);
    }
    let tool_choice = match wire.tool_choice {
        None => None,
        Some(WireToolChoice::Mode(mode)) => Some(match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(Error::InvalidRequest(format!(
                    "tool_choice: `{other}` is not one of auto, none, required or a named function"
                )));
            }
        }),
        Some(WireToolChoice::Named { function }) => {
            if !tools.iter().any(|tool| tool.name == function.name) {
                return Err(Error::InvalidRequest(format!(
                    "tool_choice: names function `{}`, which is not in `tools`",
                    function.name
                )));
            }
            Some(ToolChoice::Function(function.name))
        }
    };
    let response_format = match wire.response_format {
        None => None,
        Some(WireResponseFormat::Text) => Some(ResponseFormat::Text),
        Some(WireResponseFormat::JsonObject) => Some(ResponseFormat::JsonObject),
        Some(WireResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.unwrap_or_else(|| json!({"type": "object"}));
            if !schema.is_object() {
                return Err(Error::InvalidRequest("response_format.json_schema.schema: must be a JSON object".into()));
            }
            Some(ResponseFormat::JsonSchema { name: json_schema.name, schema, strict: json_schema.strict })
        }
    };
    let stop = match wire.stop {
        None => Vec::new(),
        Some(StringOrList::One(stop)) => vec![stop],
        Some(StringOrList::Many(stops)) => stops,
    };
    let stream = wire.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: wire.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: wire.parallel_tool_calls,
        response_format,
        temperature: wire.temperature,
        top_p: wire.top_p,
        top_k: wire.top_k,
        max_tokens: wire.max_completion_tokens.or(wire.max_tokens),
        stop,
        seed: wire.seed,
        user: wire.user,
        metadata: wire.metadata.map(Value::Object),
        stream,
        include_usage: stream && wire.stream_options.and_then(|options| options.include_usage).unwrap_or(false),
    })
}

pub fn finish_reason_str(reason: &FinishReason) -> &str {
    match reason {
        FinishReason::Stop | FinishReason::StopSequence(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Other(other) => other,
    }
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

fn usage_to_wire(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total(),
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    })
}

fn tool_calls_to_wire(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
            .collect(),
    )
}

/// Writes a canonical response as a Chat Completions response body with id `id`.
pub fn chat_response_to_wire(response: &ChatResponse, id: &str, model: &str, created: u64) -> Value {
    let text = response.message.text_content();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !response.message.tool_calls.is_empty() { Value::Null } else { Value::String(text) }, "refusal": null});
    if !response.message.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls_to_wire(&response.message.tool_calls);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason_str(&response.finish_reason), "logprobs": null}],
        "usage": usage_to_wire(&response.usage),
    })
}

/// Turns canonical stream events into Chat Completions chunks.
#[derive(Debug)]
pub struct ChunkEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Usage,
}

impl ChunkEncoder {
    pub fn new(id: String, model: String, created: u64, include_usage: bool) -> ChunkEncoder {
        ChunkEncoder { id, model, created, include_usage, usage: Usage::default() }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
        })
    }

    pub fn encode(&mut self, event: &StreamEvent) -> Option<Value> {
        match event {
            StreamEvent::Start { .. } => Some(self.chunk(json!({"role": "assistant", "content": ""}), None)),
            StreamEvent::TextDelta(text) => Some(self.chunk(json!({"content": text}), None)),
            StreamEvent::ToolCallStart { index, id, name } => Some(self.chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            )),
            StreamEvent::ToolCallDelta { index, arguments } => {
                Some(self.chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}), None))
            }
            StreamEvent::Finish(reason) => Some(self.chunk(json!({}), Some(finish_reason_str(reason)))),
            StreamEvent::Usage(usage) => {
                self.usage.merge(*usage);
                None
            }
        }
    }

    /// The closing usage chunk, when the client asked for one.
    pub fn finish(&self) -> Option<Value> {
        self.include_usage.then(|| {
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_to_wire(&self.usage),
            })
        })
    }
}

/// OpenAI's error body.
pub fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
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
pub fn chat_response_from_wire(body: &[u8]) -> Result<ChatResponse, String> {
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
    let finish_reason = match choice.finish_reason.as_deref() {
        Some(reason) => finish_reason_from_str(reason),
        None if !message.tool_calls.is_empty() => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    };
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        message,
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
    pub fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
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

// ---------------------------------------------------------------------------------------
// Embeddings.

#[derive(Debug, Deserialize)]
pub struct WireEmbedRequest {
    pub model: String,
    pub input: WireEmbedInput,
    pub dimensions: Option<u32>,
    pub encoding_format: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WireEmbedInput {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

pub fn embed_request_from_wire(wire: WireEmbedRequest) -> Result<(EmbedRequest, bool)> {
    let input = match wire.input {
        WireEmbedInput::One(text) => EmbedInput::Texts(vec![text]),
        WireEmbedInput::Many(texts) => EmbedInput::Texts(texts),
        WireEmbedInput::Tokens(tokens) => EmbedInput::Tokens(vec![tokens]),
        WireEmbedInput::ManyTokens(tokens) => EmbedInput::Tokens(tokens),
    };
    if input.is_empty() {
        return Err(Error::InvalidRequest("input: must hold at least one item".into()));
    }
    let base64 = match wire.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::InvalidRequest(format!("encoding_format: `{other}` is not one of float, base64")));
        }
    };
    Ok((EmbedRequest { model: wire.model, input, dimensions: wire.dimensions, user: wire.user }, base64))
}

pub fn embed_response_to_wire(response: &EmbedResponse, model: &str, base64: bool) -> Value {
    let data: Vec<Value> = response
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let mut bytes = Vec::with_capacity(vector.len() * 4);
                for value in vector {
                    bytes.extend_from_slice(&value.to_le_bytes());
                }
                json!(crate::base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": response.usage.input_tokens, "total_tokens": response.usage.input_tokens},
    })
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

pub fn embed_response_from_wire(body: &[u8]) -> Result<EmbedResponse, String> {
    let mut wire: UpstreamEmbeddings = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    wire.data.sort_by_key(|item| item.index);
    Ok(EmbedResponse {
        model: wire.model,
        vectors: wire.data.into_iter().map(|item| item.embedding).collect(),
        usage: wire.usage.unwrap_or_default().canonical(),
    })
}
