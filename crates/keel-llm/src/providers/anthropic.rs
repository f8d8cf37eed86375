//! The `anthropic` provider: the Messages API outbound (system, tools, `tool_use` and
//! `tool_result` blocks, JSON answers through a forced tool), its responses, streaming events
//! and errors read back into the canonical model.

use std::collections::HashMap;

use keel_core::{ChatRequest, ChatResponse, ContentPart, FinishReason, ImageSource, Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, Usage};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use futures_util::future::BoxFuture;

use super::http::{Auth, Decode, Http};
use super::{EventStream, Provider};
use crate::api::anthropic::arguments_to_input;
use crate::forward::{Forwarded, Native};
use crate::{Error, Result};

/// Anthropic's Messages API.
#[derive(Debug)]
pub struct Anthropic {
    http: Http,
}

impl Anthropic {
    pub(crate) fn new(http: Http) -> Anthropic {
        Anthropic { http }
    }

    fn post(&self, path: &str, body: &Value) -> Result<reqwest::RequestBuilder> {
        let post = self.http.post(&format!("{}{path}", self.http.base_url), body, Auth::Header("x-api-key"))?;
        Ok(post.header("anthropic-version", API_VERSION))
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.http.name
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let (body, json_tool) = messages_request_to_wire(request, model, false)?;
            let bytes = self.http.call(self.post("/v1/messages", &body)?, error_message).await?;
            messages_response(&bytes, json_tool.as_deref()).map_err(|message| self.http.bad_response(message))
        })
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<EventStream>> {
        Box::pin(async move {
            let (body, json_tool) = messages_request_to_wire(request, model, true)?;
            self.http.stream(self.post("/v1/messages", &body)?, error_message, Box::new(EventDecoder::new(json_tool))).await
        })
    }

    fn native(&self) -> Option<Native> {
        Some(Native::AnthropicMessages)
    }

    fn forward<'a>(
        &'a self,
        body: bytes::Bytes,
        stream: bool,
        _client_usage: bool,
        headers: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Forwarded>> {
        Box::pin(async move {
            let url = self.http.url("/v1/messages")?;
            let mut post = self.http.post_raw(url, body, Auth::Header("x-api-key"))?.header("anthropic-version", API_VERSION);
            for (name, value) in headers {
                post = post.header(name.as_str(), value.as_str());
            }
            let relay = stream.then(|| (Box::new(EventDecoder::new(None)) as Box<dyn Decode>, Native::AnthropicMessages, true));
            self.http.forward(post, error_message, relay, |body| messages_response(body, None)).await
        })
    }

    fn count_tokens<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let (mut body, _) = messages_request_to_wire(request, model, false)?;
            if let Some(map) = body.as_object_mut() {
                map.remove("max_tokens");
            }
            let bytes = self.http.call(self.post("/v1/messages/count_tokens", &body)?, error_message).await?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|err| self.http.bad_response(err.to_string()))?;
            match value.get("input_tokens").and_then(Value::as_u64) {
                Some(n) => Ok(Some(n)),
                None => Err(self.http.bad_response("count_tokens answered without input_tokens".into())),
            }
        })
    }
}

impl Decode for EventDecoder {
    fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        self.push(data, out)
    }

    fn done(&self) -> bool {
        self.done
    }
}


/// Anthropic requires `max_tokens`; keel fills this in when the client gave none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
pub const API_VERSION: &str = "2023-06-01";
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
pub fn messages_response_from_wire(body: &[u8], json_tool: Option<&str>) -> Result<ChatResponse> {
    messages_response(body, json_tool).map_err(Error::Unreadable)
}

fn messages_response(body: &[u8], json_tool: Option<&str>) -> Result<ChatResponse, String> {
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

    /// Reads one SSE event's data into canonical events.
    pub fn on_data(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<()> {
        self.push(data, out).map_err(Error::Unreadable)
    }

    fn push(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
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
