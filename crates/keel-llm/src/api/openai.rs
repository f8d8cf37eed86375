//! The OpenAI API as keel serves it: Chat Completions and Embeddings requests as OpenAI's
//! SDKs send them, read into the canonical model; responses, stream chunks and error bodies
//! written back in OpenAI's shape. No IO here.

use keel_core::{
    ChatRequest, ChatResponse, ContentPart, EmbedInput, EmbedRequest, EmbedResponse, FinishReason, ImageSource,
    Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, ToolDef, Usage,
};
use base64::Engine;
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

fn usage_to_wire(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total(),
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    })
}

pub(crate) fn tool_calls_to_wire(calls: &[ToolCall]) -> Value {
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
                json!(base64::engine::general_purpose::STANDARD.encode(&bytes))
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

