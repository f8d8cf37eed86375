//! The Responses API's answers: the response object, a whole answer's output items, and the
//! typed stream events (with their sequence numbers) that canonical stream events become.

use keel_core::{ChatResponse, FinishReason, StreamEvent, ToolCall, Usage};
use serde_json::{Map, Value, json};

use super::ToolMap;
fn usage_to_wire(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total(),
    })
}

/// What every rendering of one response shares: its id, when it began, the alias it was
/// asked of and the request's settings.
#[derive(Debug, Clone)]
pub struct ResponseShape {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub echo: Map<String, Value>,
    pub tools: ToolMap,
}

/// How a response ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    InProgress,
    Completed,
    /// Cut short: `max_output_tokens` or `content_filter`.
    Incomplete(&'static str),
    /// An upstream failure after the response began: (code, message).
    Failed(String, String),
}

impl ResponseShape {
    /// The response object.
    pub fn object(&self, status: &Status, output: &[Value], usage: Option<&Usage>) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("object".into(), json!("response"));
        object.insert("created_at".into(), json!(self.created_at));
        let (status, error, incomplete) = match status {
            Status::InProgress => ("in_progress", Value::Null, Value::Null),
            Status::Completed => ("completed", Value::Null, Value::Null),
            Status::Incomplete(reason) => ("incomplete", Value::Null, json!({"reason": reason})),
            Status::Failed(code, message) => ("failed", json!({"code": code, "message": message}), Value::Null),
        };
        object.insert("status".into(), json!(status));
        object.insert("error".into(), error);
        object.insert("incomplete_details".into(), incomplete);
        object.insert("model".into(), json!(self.model));
        object.insert("output".into(), Value::Array(output.to_vec()));
        object.insert("usage".into(), usage.map_or(Value::Null, usage_to_wire));
        for (key, value) in &self.echo {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object)
    }
}

fn status_of(finish: &FinishReason) -> Status {
    match finish {
        FinishReason::Length => Status::Incomplete("max_output_tokens"),
        FinishReason::ContentFilter => Status::Incomplete("content_filter"),
        _ => Status::Completed,
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

/// A tool call as an output item, written the way its tool was declared.
fn call_item(id: &str, call: &ToolCall, status: &str, tools: &ToolMap) -> Value {
    let origin = tools.origin(&call.name);
    let name = origin.map_or(call.name.as_str(), |origin| origin.name.as_str());
    let mut item = if origin.is_some_and(|origin| origin.custom) {
        let input = serde_json::from_str::<Value>(&call.arguments)
            .ok()
            .and_then(|args| args.get("input").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| call.arguments.clone());
        json!({"type": "custom_tool_call", "id": id, "call_id": call.id, "name": name, "input": input, "status": status})
    } else {
        json!({
            "type": "function_call", "id": id, "call_id": call.id, "name": name,
            "arguments": call.arguments, "status": status,
        })
    };
    if let Some(namespace) = origin.and_then(|origin| origin.namespace.as_deref()) {
        item["namespace"] = json!(namespace);
    }
    item
}

/// The output items and status of a whole answer; item ids start with the response's.
pub fn output_from_response(response: &ChatResponse, shape: &ResponseShape) -> (Vec<Value>, Status) {
    let base = shape.id.trim_start_matches("resp_");
    let mut output = Vec::new();
    let text = response.message.text_content();
    if !text.is_empty() || response.message.tool_calls.is_empty() {
        output.push(message_item(&format!("msg_{base}"), &text, "completed"));
    }
    for (idx, call) in response.message.tool_calls.iter().enumerate() {
        output.push(call_item(&format!("fc_{base}_{idx}"), call, "completed", &shape.tools));
    }
    (output, status_of(&response.finish_reason))
}

enum Open {
    Message { id: String, text: String },
    Call { id: String, call: ToolCall, index: usize },
}

/// Turns canonical stream events into the Responses API's typed events, each with the next
/// `sequence_number`.
pub struct EventEncoder {
    shape: ResponseShape,
    sequence: u64,
    output: Vec<Value>,
    open: Option<Open>,
    usage: Usage,
    finish: Option<FinishReason>,
}

pub type Event = (&'static str, Value);

impl EventEncoder {
    pub fn new(shape: ResponseShape) -> EventEncoder {
        EventEncoder { shape, sequence: 0, output: Vec::new(), open: None, usage: Usage::default(), finish: None }
    }

    fn emit(&mut self, out: &mut Vec<Event>, name: &'static str, mut data: Value) {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push((name, data));
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self, out: &mut Vec<Event>) {
        let response = self.shape.object(&Status::InProgress, &[], None);
        self.emit(out, "response.created", json!({"response": response}));
        let response = self.shape.object(&Status::InProgress, &[], None);
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    fn base(&self) -> &str {
        self.shape.id.trim_start_matches("resp_")
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        let output_index = self.output.len();
        match self.open.take() {
            None => {}
            Some(Open::Message { id, text }) => {
                let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit(out, "response.output_text.done", json!({"item_id": id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}));
                let item = message_item(&id, &text, "completed");
                self.emit(out, "response.output_item.done", json!({"output_index": output_index, "item": item.clone()}));
                self.output.push(item);
            }
            Some(Open::Call { id, call, .. }) => {
                let item = call_item(&id, &call, "completed", &self.shape.tools);
                if item["type"] == "custom_tool_call" {
                    // The input arrives wrapped as `{"input": ...}`; it goes out whole once known.
                    let input = item["input"].clone();
                    self.emit(out, "response.custom_tool_call_input.delta", json!({"item_id": id, "output_index": output_index, "delta": input}));
                    self.emit(out, "response.custom_tool_call_input.done", json!({"item_id": id, "output_index": output_index, "input": input}));
                } else {
                    self.emit(out, "response.function_call_arguments.done", json!({"item_id": id, "output_index": output_index, "name": item["name"], "arguments": call.arguments}));
                }
                self.emit(out, "response.output_item.done", json!({"output_index": output_index, "item": item.clone()}));
                self.output.push(item);
            }
        }
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut Vec<Event>) {
        let output_index = self.output.len();
        match event {
            StreamEvent::Start { .. } => {}
            StreamEvent::TextDelta(delta) => {
                if !matches!(self.open, Some(Open::Message { .. })) {
                    self.close(out);
                    let output_index = self.output.len();
                    let id = format!("msg_{}_{output_index}", self.base());
                    let mut item = message_item(&id, "", "in_progress");
                    item["content"] = json!([]);
                    self.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
                    let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                    self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": part}));
                    self.open = Some(Open::Message { id, text: String::new() });
                }
                let output_index = self.output.len();
                if let Some(Open::Message { id, text }) = &mut self.open {
                    text.push_str(delta);
                    let id = id.clone();
                    self.emit(out, "response.output_text.delta", json!({"item_id": id, "output_index": output_index, "content_index": 0, "delta": delta, "logprobs": []}));
                }
            }
            StreamEvent::ToolCallStart { index, id: call_id, name } => {
                self.close(out);
                let output_index = self.output.len();
                let id = format!("fc_{}_{output_index}", self.base());
                let call = ToolCall { id: call_id.clone(), name: name.clone(), arguments: String::new() };
                let item = call_item(&id, &call, "in_progress", &self.shape.tools);
                self.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
                self.open = Some(Open::Call { id, call, index: *index });
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(Open::Call { id, call, index: open }) = &mut self.open
                    && open == index
                {
                    call.arguments.push_str(arguments);
                    let custom = self.shape.tools.origin(&call.name).is_some_and(|origin| origin.custom);
                    let id = id.clone();
                    if !custom {
                        self.emit(out, "response.function_call_arguments.delta", json!({"item_id": id, "output_index": output_index, "delta": arguments}));
                    }
                }
            }
            StreamEvent::Finish(reason) => self.finish = Some(reason.clone()),
            StreamEvent::Usage(usage) => self.usage.merge(*usage),
        }
    }

    /// Closes what is open and emits `response.completed` (or `response.incomplete`);
    /// returns the final response object and its output items.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> (Value, Vec<Value>) {
        self.close(out);
        let status = self.finish.as_ref().map_or(Status::Completed, status_of);
        let response = self.shape.object(&status, &self.output, Some(&self.usage));
        let name = if status == Status::Completed { "response.completed" } else { "response.incomplete" };
        self.emit(out, name, json!({"response": response.clone()}));
        (response, self.output.clone())
    }

    /// An upstream failure after the stream began: `response.failed`.
    pub fn fail(&mut self, code: &str, message: &str, out: &mut Vec<Event>) -> Value {
        // What was streamed so far stays in the output, marked incomplete.
        match self.open.take() {
            None => {}
            Some(Open::Message { id, text }) => self.output.push(message_item(&id, &text, "incomplete")),
            Some(Open::Call { id, call, .. }) => self.output.push(call_item(&id, &call, "incomplete", &self.shape.tools)),
        }
        let status = Status::Failed(code.to_string(), message.to_string());
        let response = self.shape.object(&status, &self.output, Some(&self.usage));
        self.emit(out, "response.failed", json!({"response": response.clone()}));
        response
    }

    /// An `error` event: something keel itself could not finish after the stream began.
    pub fn error(&mut self, code: &str, message: &str, out: &mut Vec<Event>) {
        self.emit(out, "error", json!({"code": code, "message": message, "param": null}));
    }
}
