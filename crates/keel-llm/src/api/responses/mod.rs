//! OpenAI's Responses API as keel serves it: a request's `input` (a string or items:
//! messages, function calls and their outputs, reasoning items passed back) read into the
//! canonical model, together with the conversation a `previous_response_id` chain holds;
//! answers written back as output items, whole or as the typed stream events with their
//! sequence numbers. No IO here: the server stores and loads the chain.

use keel_core::{ChatRequest, ContentPart, ImageSource, Message, ResponseFormat, Role, ToolCall, ToolChoice, ToolDef};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{Error, Result, validate_tool};

mod output;
pub use output::{Event, EventEncoder, ResponseShape, Status, output_from_response};

#[derive(Debug, Deserialize)]
pub struct WireResponsesRequest {
    pub model: String,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<WireText>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub metadata: Option<Map<String, Value>>,
    pub user: Option<String>,
    pub safety_identifier: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub include: Option<Vec<String>>,
    pub stream: Option<bool>,
    pub reasoning: Option<Value>,
    pub truncation: Option<String>,
    pub service_tier: Option<String>,
    pub background: Option<bool>,
    pub conversation: Option<Value>,
    pub prompt: Option<Value>,
    pub top_logprobs: Option<u32>,
    pub max_tool_calls: Option<u32>,
    pub stream_options: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct WireText {
    pub format: Option<Value>,
    pub verbosity: Option<String>,
}

/// Where each canonical tool came from: a function tool as itself, a function inside a
/// `namespace` tool as `{namespace}__{name}`, a `custom` (free-form text) tool as a function
/// taking one string, `input`. Calls are written back the way their tool was declared.
#[derive(Debug, Clone, Default)]
pub struct ToolMap(std::collections::HashMap<String, Origin>);

#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) custom: bool,
}

fn canonical_name(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}__{name}"),
        None => name.to_string(),
    }
}

impl ToolMap {
    pub(super) fn origin(&self, canonical: &str) -> Option<&Origin> {
        self.0.get(canonical)
    }
}

/// A Responses request read into the canonical model.
#[derive(Debug)]
pub struct ResponsesRequest {
    pub chat: ChatRequest,
    /// This request's own input items, normalised (every item typed and given an id).
    pub input: Vec<Value>,
    /// Keep the response for `GET`, `input_items` and later `previous_response_id`s.
    pub store: bool,
    pub previous_response_id: Option<String>,
    /// The request's settings as the response object repeats them.
    pub echo: Map<String, Value>,
    pub tools: ToolMap,
}

fn invalid(message: String) -> Error {
    Error::InvalidRequest(message)
}

/// Reads a request. `prior` is the conversation the `previous_response_id` chain holds
/// (each response's input items, then its output items, oldest first); `new_id` makes ids
/// for input items sent without one, given their prefix.
pub fn request_from_wire(
    wire: WireResponsesRequest,
    prior: &[Value],
    new_id: &mut dyn FnMut(&str) -> String,
) -> Result<ResponsesRequest> {
    if wire.background == Some(true) {
        return Err(invalid("background: background responses are not supported; stream instead".into()));
    }
    if wire.conversation.is_some() {
        return Err(invalid(
            "conversation: the Conversations API is not supported; chain responses with `previous_response_id`".into(),
        ));
    }
    if wire.prompt.is_some() {
        return Err(invalid("prompt: stored prompt templates are not supported; send `instructions` and `input`".into()));
    }
    let input = normalise_input(wire.input, new_id)?;
    if input.is_empty() && prior.is_empty() {
        return Err(invalid("input: must hold at least one item".into()));
    }
    let mut messages = Vec::new();
    if let Some(instructions) = wire.instructions.as_deref().filter(|text| !text.is_empty()) {
        messages.push(Message::text(Role::System, instructions));
    }
    items_to_messages(prior.iter().chain(&input), &mut messages)?;
    let (tools, tools_echo, tool_map) = tools_from_wire(wire.tools.unwrap_or_default())?;
    let tool_choice = tool_choice_from_wire(wire.tool_choice.as_ref(), &tools)?;
    let format = wire.text.as_ref().and_then(|text| text.format.clone());
    let response_format = format.as_ref().map(format_from_wire).transpose()?;
    let stream = wire.stream.unwrap_or(false);
    let user = wire.safety_identifier.clone().or_else(|| wire.user.clone());
    let chat = ChatRequest {
        model: wire.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: wire.parallel_tool_calls,
        response_format,
        temperature: wire.temperature,
        top_p: wire.top_p,
        max_tokens: wire.max_output_tokens,
        user,
        metadata: wire.metadata.clone().map(Value::Object),
        stream,
        include_usage: stream,
        ..ChatRequest::default()
    };
    let mut echo = Map::new();
    echo.insert("instructions".into(), wire.instructions.map_or(Value::Null, Value::String));
    echo.insert("tools".into(), Value::Array(tools_echo));
    echo.insert("tool_choice".into(), wire.tool_choice.unwrap_or_else(|| json!("auto")));
    echo.insert("parallel_tool_calls".into(), json!(wire.parallel_tool_calls.unwrap_or(true)));
    echo.insert("text".into(), json!({"format": format.unwrap_or_else(|| json!({"type": "text"}))}));
    echo.insert("max_output_tokens".into(), json!(wire.max_output_tokens));
    echo.insert("temperature".into(), json!(wire.temperature.unwrap_or(1.0)));
    echo.insert("top_p".into(), json!(wire.top_p.unwrap_or(1.0)));
    echo.insert("metadata".into(), Value::Object(wire.metadata.unwrap_or_default()));
    echo.insert("user".into(), json!(wire.user));
    echo.insert("safety_identifier".into(), json!(wire.safety_identifier));
    echo.insert("prompt_cache_key".into(), json!(wire.prompt_cache_key));
    echo.insert("reasoning".into(), wire.reasoning.unwrap_or_else(|| json!({"effort": null, "summary": null})));
    echo.insert("truncation".into(), json!(wire.truncation.unwrap_or_else(|| "disabled".into())));
    echo.insert("service_tier".into(), json!(wire.service_tier.unwrap_or_else(|| "default".into())));
    echo.insert("store".into(), json!(wire.store.unwrap_or(true)));
    echo.insert("previous_response_id".into(), json!(wire.previous_response_id));
    echo.insert("background".into(), json!(false));
    echo.insert("max_tool_calls".into(), json!(wire.max_tool_calls));
    echo.insert("top_logprobs".into(), json!(wire.top_logprobs.unwrap_or(0)));
    Ok(ResponsesRequest {
        chat,
        input,
        store: wire.store.unwrap_or(true),
        previous_response_id: wire.previous_response_id,
        echo,
        tools: tool_map,
    })
}

/// Turns `input` into typed items with ids: a string becomes one user message; a message
/// given as `{role, content}` gets `"type": "message"`; every item is checked.
fn normalise_input(input: Option<Value>, new_id: &mut dyn FnMut(&str) -> String) -> Result<Vec<Value>> {
    let items = match input {
        None => return Ok(Vec::new()),
        Some(Value::String(text)) => {
            return Ok(vec![json!({
                "type": "message", "id": new_id("msg"), "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": text}],
            })]);
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("input: must be a string or an array of items".into())),
    };
    let mut out = Vec::with_capacity(items.len());
    for (idx, item) in items.into_iter().enumerate() {
        let Value::Object(mut item) = item else {
            return Err(invalid(format!("input[{idx}]: must be an object")));
        };
        let kind = match item.get("type") {
            None if item.contains_key("role") => "message".to_string(),
            Some(Value::String(kind)) => kind.clone(),
            _ => return Err(invalid(format!("input[{idx}].type: missing; say which kind of item this is"))),
        };
        let prefix = match kind.as_str() {
            "message" => {
                normalise_message(&mut item, idx)?;
                "msg"
            }
            "function_call" => {
                for field in ["call_id", "name", "arguments"] {
                    if !item.get(field).is_some_and(Value::is_string) {
                        return Err(invalid(format!("input[{idx}].{field}: a function_call needs it as a string")));
                    }
                }
                "fc"
            }
            "custom_tool_call" => {
                for field in ["call_id", "name", "input"] {
                    if !item.get(field).is_some_and(Value::is_string) {
                        return Err(invalid(format!("input[{idx}].{field}: a custom_tool_call needs it as a string")));
                    }
                }
                "ctc"
            }
            "function_call_output" | "custom_tool_call_output" => {
                if !item.get("call_id").is_some_and(Value::is_string) {
                    return Err(invalid(format!("input[{idx}].call_id: a {kind} needs it as a string")));
                }
                match item.get("output") {
                    Some(Value::String(_)) => {}
                    Some(Value::Array(parts)) => {
                        for (p, part) in parts.iter().enumerate() {
                            content_part(part, &format!("input[{idx}].output[{p}]"))?;
                        }
                    }
                    _ => {
                        return Err(invalid(format!(
                            "input[{idx}].output: a {kind} needs a string or an array of content parts"
                        )));
                    }
                }
                "fco"
            }
            // Reasoning is the upstream model's own; keel keeps it in the chain and passes the
            // conversation on without it.
            "reasoning" => "rs",
            "item_reference" => {
                return Err(invalid(format!(
                    "input[{idx}]: item_reference is not supported; send the item itself, or continue with `previous_response_id`"
                )));
            }
            other => {
                return Err(invalid(format!(
                    "input[{idx}].type: `{other}` items are not supported (keel reads message, function_call, function_call_output, custom_tool_call, custom_tool_call_output and reasoning)"
                )));
            }
        };
        item.insert("type".into(), Value::String(kind));
        if !item.get("id").is_some_and(Value::is_string) {
            item.insert("id".into(), Value::String(new_id(prefix)));
        }
        out.push(Value::Object(item));
    }
    Ok(out)
}

fn normalise_message(item: &mut Map<String, Value>, idx: usize) -> Result<()> {
    let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
    if !matches!(role, "user" | "assistant" | "system" | "developer") {
        return Err(invalid(format!(
            "input[{idx}].role: `{role}` is not one of user, assistant, system, developer"
        )));
    }
    let text_kind = if role == "assistant" { "output_text" } else { "input_text" };
    let content = match item.remove("content") {
        Some(Value::String(text)) => vec![json!({"type": text_kind, "text": text})],
        Some(Value::Array(parts)) => parts,
        _ => return Err(invalid(format!("input[{idx}].content: must be a string or an array of content parts"))),
    };
    for (p, part) in content.iter().enumerate() {
        content_part(part, &format!("input[{idx}].content[{p}]"))?;
    }
    item.insert("content".into(), Value::Array(content));
    item.entry("status").or_insert_with(|| json!("completed"));
    Ok(())
}

/// One content part in canonical form; `path` names it in errors.
fn content_part(part: &Value, path: &str) -> Result<ContentPart> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
    let text = |field: &str| {
        part.get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("{path}.{field}: a `{kind}` part needs it as a string")))
    };
    Ok(match kind {
        "input_text" | "output_text" | "text" => ContentPart::Text { text: text("text")? },
        "refusal" => ContentPart::Text { text: text("refusal")? },
        "input_image" => {
            let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                return Err(invalid(format!(
                    "{path}.image_url: an input_image needs an image URL or data URL; uploaded file ids are not supported"
                )));
            };
            let detail = part.get("detail").and_then(Value::as_str).map(str::to_string);
            ContentPart::Image { source: ImageSource::from_url(url), detail }
        }
        "input_file" => {
            let Some(data) = part.get("file_data").and_then(Value::as_str) else {
                return Err(invalid(format!(
                    "{path}.file_data: an input_file needs its data; uploaded file ids and file URLs are not supported"
                )));
            };
            let (media_type, data) = match ImageSource::from_url(data) {
                ImageSource::Base64 { media_type, data } => (media_type, data),
                ImageSource::Url { url } => ("application/pdf".to_string(), url),
            };
            let filename = part.get("filename").and_then(Value::as_str).map(str::to_string);
            ContentPart::File { data, media_type, filename }
        }
        "" => return Err(invalid(format!("{path}.type: missing"))),
        other => {
            return Err(invalid(format!(
                "{path}.type: `{other}` is not one of input_text, input_image, input_file, output_text, refusal"
            )));
        }
    })
}

/// Appends the canonical messages for normalised items: consecutive assistant text and
/// function calls make one assistant message; each function output a tool message.
fn items_to_messages<'a>(items: impl Iterator<Item = &'a Value>, out: &mut Vec<Message>) -> Result<()> {
    for item in items {
        match item.get("type").and_then(Value::as_str).unwrap_or("message") {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("assistant") => Role::Assistant,
                    Some("system" | "developer") => Role::System,
                    _ => Role::User,
                };
                let parts = item.get("content").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
                let content = parts.iter().map(|part| content_part(part, "item")).collect::<Result<Vec<_>>>()?;
                out.push(Message::new(role, content));
            }
            kind @ ("function_call" | "custom_tool_call") => {
                let field = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
                let name = canonical_name(item.get("namespace").and_then(Value::as_str), &field("name"));
                let arguments =
                    if kind == "custom_tool_call" { json!({"input": field("input")}).to_string() } else { field("arguments") };
                let call = ToolCall { id: field("call_id"), name, arguments };
                match out.last_mut() {
                    Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                    _ => {
                        let mut message = Message::new(Role::Assistant, Vec::new());
                        message.tool_calls.push(call);
                        out.push(message);
                    }
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let content = match item.get("output") {
                    Some(Value::Array(parts)) => {
                        parts.iter().map(|part| content_part(part, "output")).collect::<Result<Vec<_>>>()?
                    }
                    Some(Value::String(text)) => vec![ContentPart::Text { text: text.clone() }],
                    _ => Vec::new(),
                };
                let mut message = Message::new(Role::Tool, content);
                message.tool_call_id = item.get("call_id").and_then(Value::as_str).map(str::to_string);
                out.push(message);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Function, namespace and custom tools into canonical definitions; the tools as the
/// response repeats them; where each came from.
fn tools_from_wire(tools: Vec<Value>) -> Result<(Vec<ToolDef>, Vec<Value>, ToolMap)> {
    let mut defs = Vec::with_capacity(tools.len());
    let mut echo = Vec::with_capacity(tools.len());
    let mut map = ToolMap::default();
    let mut unknown = Vec::new();
    for (idx, tool) in tools.into_iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "function" | "custom" => {
                let def = tool_def(&tool, None, &format!("tools[{idx}]"))?;
                map.0.insert(def.name.clone(), Origin { name: def.name.clone(), namespace: None, custom: kind == "custom" });
                defs.push(def);
            }
            "namespace" => {
                let namespace = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                let inner = tool.get("tools").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
                for (n, inner) in inner.iter().enumerate() {
                    let path = format!("tools[{idx}].tools[{n}]");
                    let inner_kind = inner.get("type").and_then(Value::as_str).unwrap_or_default();
                    if !matches!(inner_kind, "function" | "custom") {
                        return Err(invalid(format!("{path}.type: a namespace holds function and custom tools")));
                    }
                    let def = tool_def(inner, Some(namespace), &path)?;
                    let name = inner.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                    let origin = Origin { name, namespace: Some(namespace.to_string()), custom: inner_kind == "custom" };
                    map.0.insert(def.name.clone(), origin);
                    defs.push(def);
                }
            }
            "" => unknown.push(format!("tools[{idx}] (no type)")),
            other => unknown.push(format!("`{other}`")),
        }
        echo.push(tool);
    }
    if !unknown.is_empty() {
        return Err(invalid(format!(
            "tools: {} {} not supported; keel serves function, custom and namespace tools through any provider, and no hosted tools",
            unknown.join(", "),
            if unknown.len() == 1 { "is" } else { "are" }
        )));
    }
    Ok((defs, echo, map))
}

/// One function or custom tool as a canonical definition; a custom tool takes its free-form
/// text as the string `input`.
fn tool_def(tool: &Value, namespace: Option<&str>, path: &str) -> Result<ToolDef> {
    let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
    let description = tool.get("description").and_then(Value::as_str).map(str::to_string);
    let def = if tool.get("type").and_then(Value::as_str) == Some("custom") {
        let mut about = "The tool's whole input, as free-form text.".to_string();
        if let Some(format) = tool.get("format").filter(|f| f.get("type").and_then(Value::as_str) == Some("grammar")) {
            let syntax = format.get("syntax").and_then(Value::as_str).unwrap_or("grammar");
            let definition = format.get("definition").and_then(Value::as_str).unwrap_or_default();
            about = format!("The tool's whole input; it must match this {syntax} grammar:\n{definition}");
        }
        ToolDef {
            name: canonical_name(namespace, name),
            description,
            parameters: json!({
                "type": "object",
                "properties": {"input": {"type": "string", "description": about}},
                "required": ["input"],
                "additionalProperties": false,
            }),
            strict: None,
        }
    } else {
        ToolDef {
            name: canonical_name(namespace, name),
            description,
            parameters: tool
                .get("parameters")
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: tool.get("strict").and_then(Value::as_bool),
        }
    };
    validate_tool(&def).map_err(|msg| invalid(format!("{path}: {msg}")))?;
    Ok(def)
}

fn tool_choice_from_wire(choice: Option<&Value>, tools: &[ToolDef]) -> Result<Option<ToolChoice>> {
    let Some(choice) = choice else { return Ok(None) };
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "none" => Ok(Some(ToolChoice::None)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(invalid(format!("tool_choice: `{other}` is not one of auto, none, required or a function"))),
        },
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => {
            let name = object.get("name").and_then(Value::as_str).unwrap_or_default();
            if !tools.iter().any(|tool| tool.name == name) {
                return Err(invalid(format!("tool_choice: names function `{name}`, which is not in `tools`")));
            }
            Ok(Some(ToolChoice::Function(name.to_string())))
        }
        other => Err(invalid(format!(
            "tool_choice: {} is not supported; use auto, none, required or {{\"type\": \"function\", \"name\": ...}}",
            other.get("type").map_or_else(|| other.to_string(), |t| format!("type {t}"))
        ))),
    }
}

fn format_from_wire(format: &Value) -> Result<ResponseFormat> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let schema = format.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"}));
            if !schema.is_object() {
                return Err(invalid("text.format.schema: must be a JSON object".into()));
            }
            Ok(ResponseFormat::JsonSchema {
                name: format.get("name").and_then(Value::as_str).unwrap_or("response").to_string(),
                schema,
                strict: format.get("strict").and_then(Value::as_bool),
            })
        }
        other => Err(invalid(format!(
            "text.format.type: {} is not one of text, json_object, json_schema",
            other.map_or_else(|| "missing".to_string(), |t| format!("`{t}`"))
        ))),
    }
}

#[cfg(test)]
mod tests {
    use keel_core::{ChatResponse, FinishReason, StreamEvent, Usage};

    use super::*;

    fn ids() -> impl FnMut(&str) -> String {
        let mut n = 0;
        move |prefix: &str| {
            n += 1;
            format!("{prefix}_{n}")
        }
    }

    fn wire(body: Value) -> WireResponsesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_string_input_is_one_user_message_after_the_instructions() {
        let request = request_from_wire(wire(json!({"model": "m", "input": "hi", "instructions": "be brief"})), &[], &mut ids()).unwrap();
        assert_eq!(request.chat.messages, vec![Message::text(Role::System, "be brief"), Message::text(Role::User, "hi")]);
        assert_eq!(request.input[0]["id"], "msg_1");
        assert!(request.store);
    }

    #[test]
    fn calls_and_outputs_become_one_assistant_turn_and_tool_messages() {
        let input = json!([
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{\"x\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
        ]);
        let request = request_from_wire(wire(json!({"model": "m", "input": input})), &[], &mut ids()).unwrap();
        let messages = &request.chat.messages;
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert_eq!(messages[1].tool_calls.len(), 2);
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(messages[3].text_content(), "rain");
        assert_eq!(request.input.len(), 6, "reasoning is kept in the stored items");
    }

    #[test]
    fn prior_items_come_before_the_new_input() {
        let prior = vec![
            json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]}),
            json!({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "two"}]}),
        ];
        let request =
            request_from_wire(wire(json!({"model": "m", "input": "three", "previous_response_id": "resp_x"})), &prior, &mut ids())
                .unwrap();
        let texts: Vec<String> = request.chat.messages.iter().map(Message::text_content).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(request.input.len(), 1);
    }

    #[test]
    fn namespace_and_custom_tools_go_out_as_functions_and_come_back_as_declared() {
        let tools = json!([
            {"type": "namespace", "name": "crm", "description": "d", "tools": [{"type": "function", "name": "find", "parameters": {"type": "object"}}]},
            {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        ]);
        let input = json!([
            {"type": "function_call", "call_id": "c1", "namespace": "crm", "name": "find", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "found"},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
        ]);
        let request = request_from_wire(wire(json!({"model": "m", "input": input, "tools": tools})), &[], &mut ids()).unwrap();
        let names: Vec<&str> = request.chat.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["crm__find", "apply_patch"]);
        assert!(request.chat.tools[1].parameters.to_string().contains("lark grammar"));
        assert_eq!(request.chat.messages[0].tool_calls[0].name, "crm__find");
        assert_eq!(request.chat.messages[2].tool_calls[0].arguments, r#"{"input":"*** Begin Patch"}"#);
        let shape = ResponseShape { id: "resp_b".into(), created_at: 1, model: "m".into(), echo: Map::new(), tools: request.tools };
        let mut message = Message::new(Role::Assistant, Vec::new());
        message.tool_calls = vec![
            ToolCall { id: "c3".into(), name: "crm__find".into(), arguments: "{}".into() },
            ToolCall { id: "c4".into(), name: "apply_patch".into(), arguments: r#"{"input":"patch"}"#.into() },
        ];
        let answer = ChatResponse { id: "x".into(), model: "m".into(), message, finish_reason: FinishReason::ToolCalls, usage: Usage::default() };
        let (output, _) = output_from_response(&answer, &shape);
        assert_eq!((output[0]["name"].as_str(), output[0]["namespace"].as_str()), (Some("find"), Some("crm")));
        assert_eq!((output[1]["type"].as_str(), output[1]["input"].as_str()), (Some("custom_tool_call"), Some("patch")));
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let err = |body: Value| request_from_wire(wire(body), &[], &mut ids()).unwrap_err().to_string();
        let e = err(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}, {"type": "file_search"}]}));
        assert!(e.contains("`web_search`, `file_search` are not supported"), "{e}");
        let e = err(json!({"model": "m", "input": "x", "tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "web_search"}]}]}));
        assert!(e.contains("tools[0].tools[0].type"), "{e}");
        let e = err(json!({"model": "m", "input": [{"type": "function_call", "call_id": "c"}]}));
        assert!(e.contains("input[0].name"), "{e}");
        let e = err(json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}));
        assert!(e.contains("input[0].role: `robot`"), "{e}");
        let e = err(json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_video"}]}]}));
        assert!(e.contains("input[0].content[0].type: `input_video`"), "{e}");
        let e = err(json!({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}));
        assert!(e.contains("text.format.type: `yaml`"), "{e}");
        let e = err(json!({"model": "m", "input": []}));
        assert!(e.contains("at least one item"), "{e}");
        let e = err(json!({"model": "m", "input": "x", "background": true}));
        assert!(e.contains("background"), "{e}");
    }

    #[test]
    fn a_stream_is_typed_events_in_sequence() {
        let shape = ResponseShape { id: "resp_a".into(), created_at: 1, model: "m".into(), echo: Map::new(), tools: ToolMap::default() };
        let mut encoder = EventEncoder::new(shape);
        let mut out = Vec::new();
        encoder.start(&mut out);
        for event in [
            StreamEvent::Start { id: "u".into(), model: "m".into() },
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::ToolCallStart { index: 0, id: "call_1".into(), name: "f".into() },
            StreamEvent::ToolCallDelta { index: 0, arguments: "{}".into() },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage { input_tokens: 3, output_tokens: 2, ..Usage::default() }),
        ] {
            encoder.encode(&event, &mut out);
        }
        let (response, output) = encoder.finish(&mut out);
        let names: Vec<&str> = out.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, (name, data)) in out.iter().enumerate() {
            assert_eq!(data["sequence_number"], n as u64);
            assert_eq!(data["type"], *name);
        }
        assert_eq!(output[0]["content"][0]["text"], "Hello");
        assert_eq!(output[1]["call_id"], "call_1");
        assert_eq!(response["usage"]["total_tokens"], 5);
        assert_eq!(response["status"], "completed");
    }
}
