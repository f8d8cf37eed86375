//! The Anthropic Messages API as keel serves it: requests (system, tools, `tool_use` and
//! `tool_result` blocks) read into the canonical model; responses, streaming events and error
//! bodies written back in Anthropic's shape. No IO here.

use std::collections::HashMap;

use keel_core::{ChatRequest, ChatResponse, ContentPart, FinishReason, ImageSource, Message, Role, StreamEvent, ToolCall, ToolChoice, ToolDef, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Error, Result, validate_tool};

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

fn usage_to_wire(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens.saturating_sub(usage.cached_input_tokens + usage.cache_write_tokens),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    })
}

pub(crate) fn arguments_to_input(arguments: &str) -> Value {
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

