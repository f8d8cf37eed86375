//! The Anthropic Messages wire format, both ways: requests (system, tools, `tool_use` and
//! `tool_result` blocks), responses, streaming events and errors. No IO here.

use std::collections::HashMap;

use keel_core::{
    ChatRequest, ChatResponse, ContentPart, FinishReason, ImageSource, Message, ResponseFormat, Role, StreamEvent,
    ToolCall, ToolChoice, ToolDef, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{Error, Result, validate_tool};

/// Anthropic requires `max_tokens`; keel fills this in when the client gave none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
pub const API_VERSION: &str = "2023-06-01";

// ---------------------------------------------------------------------------------------
// Inbound: a client's Messages request.

#[derive(Debug, Deserialize)]
pub struct WireMessagesRequest {
    pub model: String,
    pub max_tokens: Option<u32>,
    pub system: Option<WireSystem>,
    pub messages: Vec<WireMessage>,
    pub tools: Option<Vec<WireTool>>,
    pub tool_choice: Option<WireToolChoice>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stream: Option<bool>,
    pub metadata: Option<WireMetadata>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WireSystem {
    Text(String),
    Blocks(Vec<WireBlock>),
}

#[derive(Debug, Deserialize)]
pub struct WireMetadata {
    pub user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireRole {
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: WireRole,
    pub content: WireContent,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WireContent {
    Text(String),
    Blocks(Vec<WireBlock>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireBlock {
    Text { text: String },
    Image { source: WireSource },
    Document { source: WireSource },
    ToolUse { id: String, name: String, input: Value },
    ToolResult { tool_use_id: String, content: Option<WireContent>, is_error: Option<bool> },
    /// Thinking, redacted thinking, server tools: nothing a different provider could use.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
    Text { data: String },
}

#[derive(Debug, Deserialize)]
pub struct WireTool {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct WireToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub disable_parallel_tool_use: Option<bool>,
}

fn blocks_to_parts(blocks: Vec<WireBlock>, idx: usize) -> Result<(Vec<ContentPart>, Vec<ToolCall>, Vec<Message>)> {
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for block in blocks {
        match block {
            WireBlock::Text { text } => parts.push(ContentPart::Text { text }),
            WireBlock::Image { source } => parts.push(ContentPart::Image { source: source_to_image(source), detail: None }),
            WireBlock::Document { source } => parts.push(match source {
                WireSource::Base64 { media_type, data } => ContentPart::File { data, media_type, filename: None },
                WireSource::Text { data } => ContentPart::Text { text: data },
                WireSource::Url { .. } => {
                    return Err(Error::InvalidRequest(format!(
                        "messages[{idx}]: documents by URL are not supported; send them as base64"
                    )));
                }
            }),
            WireBlock::ToolUse { id, name, input } => calls.push(ToolCall { id, name, arguments: input.to_string() }),
            WireBlock::ToolResult { tool_use_id, content, is_error } => {
                let content = match content {
                    None => Vec::new(),
                    Some(WireContent::Text(text)) => vec![ContentPart::Text { text }],
                    Some(WireContent::Blocks(blocks)) => blocks_to_parts(blocks, idx)?.0,
                };
                let mut message = Message::new(Role::Tool, content);
                message.tool_call_id = Some(tool_use_id);
                message.is_error = is_error.unwrap_or(false);
                results.push(message);
            }
            WireBlock::Other => {}
        }
    }
    Ok((parts, calls, results))
}

fn source_to_image(source: WireSource) -> ImageSource {
    match source {
        WireSource::Base64 { media_type, data } => ImageSource::Base64 { media_type, data },
        WireSource::Url { url } => ImageSource::Url { url },
        WireSource::Text { data } => ImageSource::Url { url: data },
    }
}

/// Reads a client's Messages request into the canonical model.
pub fn messages_request_from_wire(wire: WireMessagesRequest) -> Result<ChatRequest> {
    if wire.messages.is_empty() {
        return Err(Error::InvalidRequest("messages: must hold at least one message".into()));
    }
    let mut messages = Vec::new();
    match wire.system {
        None => {}
        Some(WireSystem::Text(text)) => messages.push(Message::text(Role::System, text)),
        Some(WireSystem::Blocks(blocks)) => {
            let (parts, _, _) = blocks_to_parts(blocks, 0)?;
            messages.push(Message::new(Role::System, parts));
        }
    }
    for (idx, message) in wire.messages.into_iter().enumerate() {
        let role = match message.role {
            WireRole::User => Role::User,
            WireRole::Assistant => Role::Assistant,
        };
        match message.content {
            WireContent::Text(text) => messages.push(Message::text(role, text)),
            WireContent::Blocks(blocks) => {
                let (parts, calls, results) = blocks_to_parts(blocks, idx)?;
                if role == Role::Assistant && !results.is_empty() {
                    return Err(Error::InvalidRequest(format!(
                        "messages[{idx}]: tool_result blocks belong in user messages"
                    )));
                }
                if role == Role::User && !calls.is_empty() {
                    return Err(Error::InvalidRequest(format!("messages[{idx}]: tool_use blocks belong in assistant messages")));
                }
                messages.extend(results);
                if !parts.is_empty() || !calls.is_empty() {
                    let mut msg = Message::new(role, parts);
                    msg.tool_calls = calls;
                    messages.push(msg);
                }
            }
        }
    }
    let mut tools = Vec::new();
    for (idx, tool) in wire.tools.unwrap_or_default().into_iter().enumerate() {
        let Some(parameters) = tool.input_schema else {
            // Server tools (web search, code execution) carry a `type` and no schema.
            return Err(Error::InvalidRequest(format!(
                "tools[{idx}]: `{}` has no input_schema; Anthropic server tools are not supported through keel",
                tool.name
            )));
        };
        let def = ToolDef { name: tool.name, description: tool.description, parameters, strict: None };
        validate_tool(&def).map_err(|msg| Error::InvalidRequest(format!("tools[{idx}]: {msg}")))?;
        tools.push(def);
    }
    let mut parallel_tool_calls = None;
    let tool_choice = match wire.tool_choice {
        None => None,
        Some(choice) => {
            if choice.disable_parallel_tool_use == Some(true) {
                parallel_tool_calls = Some(false);
            }
            Some(match choice.kind.as_str() {
                "auto" => ToolChoice::Auto,
                "any" => ToolChoice::Required,
                "none" => ToolChoice::None,
                "tool" => {
                    let Some(name) = choice.name else {
                        return Err(Error::InvalidRequest("tool_choice: type `tool` needs a `name`".into()));
                    };
                    ToolChoice::Function(name)
                }
                other => {
                    return Err(Error::InvalidRequest(format!("tool_choice.type: `{other}` is not one of auto, any, tool, none")));
                }
            })
        }
    };
    let stream = wire.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: wire.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls,
        response_format: None,
        temperature: wire.temperature,
        top_p: wire.top_p,
        top_k: wire.top_k,
        max_tokens: wire.max_tokens,
        stop: wire.stop_sequences.unwrap_or_default(),
        seed: None,
        user: wire.metadata.and_then(|m| m.user_id),
        metadata: None,
        stream,
        include_usage: stream,
    })
}

fn stop_reason_str(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Other(_) => "end_turn",
        FinishReason::StopSequence(_) => "stop_sequence",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

fn stop_reason_from_str(reason: &str, stop_sequence: Option<String>) -> FinishReason {
    match reason {
        "end_turn" | "pause_turn" => FinishReason::Stop,
        "stop_sequence" => FinishReason::StopSequence(stop_sequence),
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

fn usage_to_wire(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens.saturating_sub(usage.cached_input_tokens + usage.cache_write_tokens),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    })
}

fn arguments_to_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({}),
    }
}

/// Writes a canonical response as a Messages response body with id `id`.
pub fn messages_response_to_wire(response: &ChatResponse, id: &str, model: &str) -> Value {
    let mut content = Vec::new();
    let text = response.message.text_content();
    if !text.is_empty() || response.message.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &response.message.tool_calls {
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments_to_input(&call.arguments)}));
    }
    let stop_sequence = match &response.finish_reason {
        FinishReason::StopSequence(seq) => json!(seq),
        _ => Value::Null,
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason_str(&response.finish_reason),
        "stop_sequence": stop_sequence,
        "usage": usage_to_wire(&response.usage),
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum OpenBlock {
    None,
    Text(usize),
    Tool(usize),
}

/// Turns canonical stream events into Messages streaming events (`event name`, `data`).
#[derive(Debug)]
pub struct EventEncoder {
    id: String,
    model: String,
    open: OpenBlock,
    n_blocks: usize,
    tool_blocks: HashMap<usize, usize>,
    finish: Option<FinishReason>,
    usage: Usage,
    started: bool,
}

impl EventEncoder {
    pub fn new(id: String, model: String) -> EventEncoder {
        EventEncoder {
            id,
            model,
            open: OpenBlock::None,
            n_blocks: 0,
            tool_blocks: HashMap::new(),
            finish: None,
            usage: Usage::default(),
            started: false,
        }
    }

    fn start(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push((
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage_to_wire(&self.usage),
            }}),
        ));
    }

    fn close_open(&mut self, out: &mut Vec<(&'static str, Value)>) {
        match self.open {
            OpenBlock::None => {}
            OpenBlock::Text(index) | OpenBlock::Tool(index) => {
                out.push(("content_block_stop", json!({"type": "content_block_stop", "index": index})));
            }
        }
        self.open = OpenBlock::None;
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut Vec<(&'static str, Value)>) {
        match event {
            StreamEvent::Start { .. } => self.start(out),
            StreamEvent::TextDelta(text) => {
                self.start(out);
                let index = match self.open {
                    OpenBlock::Text(index) => index,
                    _ => {
                        self.close_open(out);
                        let index = self.n_blocks;
                        self.n_blocks += 1;
                        self.open = OpenBlock::Text(index);
                        out.push((
                            "content_block_start",
                            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
                        ));
                        index
                    }
                };
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(out);
                self.close_open(out);
                let block = self.n_blocks;
                self.n_blocks += 1;
                self.tool_blocks.insert(*index, block);
                self.open = OpenBlock::Tool(block);
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": block, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                ));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(block) = self.tool_blocks.get(index) {
                    out.push((
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                    ));
                }
            }
            StreamEvent::Finish(reason) => self.finish = Some(reason.clone()),
            StreamEvent::Usage(usage) => self.usage.merge(*usage),
        }
    }

    /// The closing events: the last block's stop, the stop reason with usage, `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<(&'static str, Value)>) {
        self.start(out);
        self.close_open(out);
        let reason = self.finish.clone().unwrap_or(FinishReason::Stop);
        let stop_sequence = match &reason {
            FinishReason::StopSequence(seq) => json!(seq),
            _ => Value::Null,
        };
        out.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason_str(&reason), "stop_sequence": stop_sequence}, "usage": usage_to_wire(&self.usage)}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
    }
}

/// Anthropic's error body.
pub fn error_body(message: &str, kind: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

// ---------------------------------------------------------------------------------------
// Outbound: keel's request to the Messages API, and its answers.

/// The tool keel adds to make Anthropic models answer in a JSON schema.
pub const JSON_TOOL: &str = "json_response";

fn part_to_block(part: &ContentPart) -> Result<Value> {
    Ok(match part {
        ContentPart::Text { text } => json!({"type": "text", "text": text}),
        ContentPart::Image { source, .. } => match source {
            ImageSource::Base64 { media_type, data } => {
                json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
            }
            ImageSource::Url { url } => json!({"type": "image", "source": {"type": "url", "url": url}}),
        },
        ContentPart::File { data, media_type, .. } => {
            json!({"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        ContentPart::Audio { .. } => {
            return Err(Error::Unsupported { provider: "anthropic".into(), what: "audio input" });
        }
    })
}

/// Writes a canonical request as an upstream Messages body for `model`. Returns the body
/// and, when the request asked for a JSON schema, the name of the tool that carries the answer.
pub fn messages_request_to_wire(request: &ChatRequest, model: &str, stream: bool) -> Result<(Value, Option<String>)> {
    let mut system = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System => {
                system.push(message.text_content());
                continue;
            }
            Role::Tool => {
                let content: Vec<Value> = message.content.iter().map(part_to_block).collect::<Result<_>>()?;
                let mut block = json!({"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content});
                if message.is_error {
                    block["is_error"] = json!(true);
                }
                ("user", vec![block])
            }
            Role::User => ("user", message.content.iter().map(part_to_block).collect::<Result<_>>()?),
            Role::Assistant => {
                let mut blocks: Vec<Value> = message
                    .content
                    .iter()
                    .filter(|part| !matches!(part, ContentPart::Text { text } if text.is_empty()))
                    .map(part_to_block)
                    .collect::<Result<_>>()?;
                for call in &message.tool_calls {
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments_to_input(&call.arguments)}));
                }
                ("assistant", blocks)
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // The Messages API wants roles to alternate: tool results and the user's next words
        // travel in one user message.
        match messages.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)));
    body.insert(
        "messages".into(),
        Value::Array(messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect()),
    );
    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(|tool| {
            let mut wire = json!({"name": tool.name, "input_schema": tool.parameters});
            if let Some(description) = &tool.description {
                wire["description"] = json!(description);
            }
            wire
        })
        .collect();
    let mut tool_choice = request.tool_choice.as_ref().map(|choice| match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    });
    let mut json_tool = None;
    match &request.response_format {
        Some(ResponseFormat::JsonSchema { schema, .. }) if request.tools.is_empty() => {
            tools.push(json!({"name": JSON_TOOL, "description": "Answer with this tool; its input is the answer.", "input_schema": schema}));
            tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
            json_tool = Some(JSON_TOOL.to_string());
        }
        Some(ResponseFormat::JsonSchema { .. }) | Some(ResponseFormat::JsonObject) => {
            system.push("Answer with a single JSON object and nothing else.".to_string());
        }
        _ => {}
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(mut choice) = tool_choice {
        if request.parallel_tool_calls == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        body.insert("tool_choice".into(), choice);
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    for (key, value) in [
        ("temperature", request.temperature.map(|v| json!(v))),
        ("top_p", request.top_p.map(|v| json!(v))),
        ("top_k", request.top_k.map(|v| json!(v))),
    ] {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    }
    if let Some(user) = &request.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok((Value::Object(body), json_tool))
}

#[derive(Debug, Deserialize)]
struct UpstreamMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<UpstreamBlock>,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: UpstreamUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum UpstreamBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct UpstreamUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl UpstreamUsage {
    fn canonical(&self) -> Usage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens.map_or(0, |n| n + cached + written),
            output_tokens: self.output_tokens.unwrap_or(0),
            cached_input_tokens: cached,
            cache_write_tokens: written,
            reasoning_tokens: 0,
        }
    }
}

/// Reads an upstream Messages response body; `json_tool` names the tool that carries a
/// JSON-schema answer, which becomes the text of the reply.
pub fn messages_response_from_wire(body: &[u8], json_tool: Option<&str>) -> Result<ChatResponse, String> {
    let wire: UpstreamMessage = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    let mut message = Message::new(Role::Assistant, Vec::new());
    let mut finish_reason = stop_reason_from_str(wire.stop_reason.as_deref().unwrap_or("end_turn"), wire.stop_sequence);
    for block in wire.content {
        match block {
            UpstreamBlock::Text { text } => message.content.push(ContentPart::Text { text }),
            UpstreamBlock::ToolUse { name, input, .. } if Some(name.as_str()) == json_tool => {
                message.content.push(ContentPart::Text { text: input.to_string() });
                finish_reason = FinishReason::Stop;
            }
            UpstreamBlock::ToolUse { id, name, input } => {
                message.tool_calls.push(ToolCall { id, name, arguments: input.to_string() });
            }
            UpstreamBlock::Other => {}
        }
    }
    Ok(ChatResponse { id: wire.id, model: wire.model, message, finish_reason, usage: wire.usage.canonical() })
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum UpstreamEvent {
    MessageStart { message: UpstreamMessage },
    ContentBlockStart { index: usize, content_block: UpstreamBlock },
    ContentBlockDelta { index: usize, delta: UpstreamDelta },
    ContentBlockStop {},
    MessageDelta { delta: UpstreamMessageDelta, #[serde(default)] usage: UpstreamUsage },
    MessageStop {},
    Ping {},
    Error { error: Value },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum UpstreamDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct UpstreamMessageDelta {
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
}

/// Decodes an upstream Messages event stream into canonical events.
#[derive(Debug, Default)]
pub struct EventDecoder {
    json_tool: Option<String>,
    /// Content block index → tool call index; the JSON tool's block maps to `usize::MAX`.
    tool_index: HashMap<usize, usize>,
    n_tools: usize,
    pub done: bool,
}

impl EventDecoder {
    pub fn new(json_tool: Option<String>) -> EventDecoder {
        EventDecoder { json_tool, ..EventDecoder::default() }
    }

    pub fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let event: UpstreamEvent = serde_json::from_str(data).map_err(|err| format!("bad event: {err}"))?;
        match event {
            UpstreamEvent::MessageStart { message } => {
                out.push(StreamEvent::Start { id: message.id, model: message.model });
                out.push(StreamEvent::Usage(message.usage.canonical()));
            }
            UpstreamEvent::ContentBlockStart { index, content_block } => match content_block {
                UpstreamBlock::Text { text } if !text.is_empty() => out.push(StreamEvent::TextDelta(text)),
                UpstreamBlock::ToolUse { name, .. } if Some(name.as_str()) == self.json_tool.as_deref() => {
                    self.tool_index.insert(index, usize::MAX);
                }
                UpstreamBlock::ToolUse { id, name, .. } => {
                    let tool = self.n_tools;
                    self.n_tools += 1;
                    self.tool_index.insert(index, tool);
                    out.push(StreamEvent::ToolCallStart { index: tool, id, name });
                }
                _ => {}
            },
            UpstreamEvent::ContentBlockDelta { index, delta } => match delta {
                UpstreamDelta::TextDelta { text } => out.push(StreamEvent::TextDelta(text)),
                UpstreamDelta::InputJsonDelta { partial_json } => match self.tool_index.get(&index) {
                    Some(&usize::MAX) => out.push(StreamEvent::TextDelta(partial_json)),
                    Some(&tool) => out.push(StreamEvent::ToolCallDelta { index: tool, arguments: partial_json }),
                    None => return Err(format!("input_json_delta for block {index}, which is not a tool_use block")),
                },
                UpstreamDelta::Other => {}
            },
            UpstreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    let reason = if reason == "tool_use" && self.n_tools == 0 && self.json_tool.is_some() {
                        FinishReason::Stop
                    } else {
                        stop_reason_from_str(&reason, delta.stop_sequence)
                    };
                    out.push(StreamEvent::Finish(reason));
                }
                let mut usage = usage.canonical();
                if usage.input_tokens == 0 {
                    usage.cached_input_tokens = 0;
                    usage.cache_write_tokens = 0;
                }
                out.push(StreamEvent::Usage(usage));
            }
            UpstreamEvent::MessageStop {} => self.done = true,
            UpstreamEvent::ContentBlockStop {} | UpstreamEvent::Ping {} => {}
            UpstreamEvent::Error { error } => {
                return Err(error.get("message").and_then(Value::as_str).unwrap_or("stream error").to_string());
            }
        }
        Ok(())
    }
}

/// Reads an Anthropic-shaped error body's message, or the body itself.
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v.pointer("/error/message")).and_then(Value::as_str) {
        Some(message) => message.to_string(),
        None => String::from_utf8_lossy(body).chars().take(500).collect(),
    }
}
