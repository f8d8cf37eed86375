//! Fine-tuning data from scored traces and passing eval cells: each becomes one conversation
//! in OpenAI's shape (system prompt, turns, tool calls and results, the answer), written as
//! OpenAI chat fine-tuning JSONL, Anthropic's `{system, messages}` or ShareGPT; exact
//! duplicates dropped, train and validation split by a stable hash of the conversation.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// One conversation to learn from, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    /// OpenAI Chat Completions messages, the answer last.
    pub messages: Vec<Value>,
    /// Function tools offered, in OpenAI's shape.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// `trace:ID` or `eval:RUN/CELL`.
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAiChat,
    Anthropic,
    ShareGpt,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "openai-chat" | "openai" => Some(Format::OpenAiChat),
            "anthropic" => Some(Format::Anthropic),
            "sharegpt" => Some(Format::ShareGpt),
            _ => None,
        }
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str).is_none_or(|t| t == "text" || t == "input_text" || t == "output_text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A message of any of the three wire formats as OpenAI chat messages (an Anthropic turn
/// with tool uses or results becomes an assistant message with `tool_calls`, or `tool`
/// messages).
pub(crate) fn to_openai(message: &Value) -> Vec<Value> {
    let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
    let content = message.get("content").cloned().unwrap_or(Value::Null);
    if let Value::Array(blocks) = &content {
        let uses: Vec<Value> = blocks
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| json!({"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": b["input"].to_string()}}))
            .collect();
        let results: Vec<Value> = blocks
            .iter()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text_of(&b["content"])}))
            .collect();
        if !results.is_empty() {
            return results;
        }
        if !uses.is_empty() {
            let text = text_of(&content);
            return vec![json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }, "tool_calls": uses})];
        }
    }
    let mut out = Map::new();
    out.insert("role".into(), Value::String(if role == "developer" { "system".into() } else { role.into() }));
    let has_calls = message.get("tool_calls").is_some_and(|c| c.as_array().is_some_and(|a| !a.is_empty()));
    let text = text_of(&content);
    out.insert("content".into(), if text.is_empty() && has_calls { Value::Null } else { Value::String(text) });
    for key in ["tool_calls", "tool_call_id", "name"] {
        if let Some(value) = message.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), value.clone());
        }
    }
    vec![Value::Object(out)]
}

/// The answer of a stored response body as an OpenAI assistant message.
fn answer_message(body: &Value) -> Option<Value> {
    if let Some(message) = body.pointer("/choices/0/message") {
        return to_openai(message).into_iter().next();
    }
    if body.get("content").is_some_and(Value::is_array) {
        let mut message = body.clone();
        message["role"] = json!("assistant");
        return to_openai(&message).into_iter().next();
    }
    if let Some(Value::Array(items)) = body.get("output") {
        let text: String = items.iter().filter_map(|i| i.get("content")).map(text_of).collect();
        let calls: Vec<Value> = items
            .iter()
            .filter(|i| i["type"] == "function_call")
            .map(|i| json!({"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}))
            .collect();
        let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        return Some(message);
    }
    body.get("message").map(|m| {
        let mut m = m.clone();
        m["role"] = json!("assistant");
        to_openai(&m).remove(0)
    })
}

/// A trace (request and response bodies) as an example; `None` when it kept no bodies or
/// its answer has neither text nor tool calls.
pub fn from_trace(trace: &keel_store::Trace) -> Option<Example> {
    let request: Value = serde_json::from_str(trace.request_body.as_deref()?).ok()?;
    let response: Value = serde_json::from_str(trace.response_body.as_deref()?).ok()?;
    let mut messages = Vec::new();
    for key in ["system", "instructions"] {
        let text = request.get(key).map(text_of).unwrap_or_default();
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    match request.get("messages").or_else(|| request.get("input")) {
        Some(Value::Array(items)) => messages.extend(items.iter().flat_map(to_openai)),
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        _ => return None,
    }
    let answer = answer_message(&response)?;
    if answer["content"].as_str().is_none_or(str::is_empty) && answer.get("tool_calls").is_none() {
        return None;
    }
    messages.push(answer);
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .map(|t| match t.get("input_schema") {
                    // Anthropic's tool shape, as OpenAI's.
                    Some(schema) => json!({"type": "function", "function": {"name": t["name"], "description": t.get("description"), "parameters": schema}}),
                    None => t.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Example { messages, tools, source: format!("trace:{}", trace.id) })
}

/// A passing eval cell as an example: its prompt rendered with the cell's variables (the
/// system prompt from the prompt version it ran), then its answer.
pub fn from_eval(spec: &crate::Spec, result: &keel_store::EvalResult) -> Option<Example> {
    let prompt_idx: usize = result.cell.split('|').next()?.parse().ok()?;
    let prompt = spec.prompts.get(prompt_idx)?;
    let vars: Map<String, Value> = serde_json::from_str(&result.vars).ok()?;
    let mut messages: Vec<Value> = prompt.def.render(&vars).ok()?.iter().flat_map(to_openai).collect();
    let output = result.output.clone()?;
    // A cell whose answer was tool calls stored them as a JSON list.
    let calls: Option<Vec<Value>> = serde_json::from_str::<Vec<crate::CallMade>>(&output).ok().filter(|c| !c.is_empty()).map(|calls| {
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": c.name, "arguments": c.arguments.to_string()}}))
            .collect()
    });
    messages.push(match calls {
        Some(calls) => json!({"role": "assistant", "content": null, "tool_calls": calls}),
        None => json!({"role": "assistant", "content": output}),
    });
    let tools = prompt.def.config.tools.clone().unwrap_or_default();
    Some(Example { messages, tools, source: format!("eval:{}/{}", result.run_id, result.cell) })
}

/// An example in `format`, one JSON line.
pub fn render(example: &Example, format: Format) -> Value {
    match format {
        Format::OpenAiChat => {
            let mut line = json!({"messages": example.messages});
            if !example.tools.is_empty() {
                line["tools"] = Value::Array(example.tools.clone());
            }
            line
        }
        Format::Anthropic => {
            let system: Vec<String> = example.messages.iter().filter(|m| m["role"] == "system").map(|m| text_of(&m["content"])).collect();
            let mut messages: Vec<Value> = Vec::new();
            for m in example.messages.iter().filter(|m| m["role"] != "system") {
                let (role, blocks) = match m["role"].as_str() {
                    Some("tool") => ("user", vec![json!({"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": text_of(&m["content"])})]),
                    Some("assistant") => {
                        let mut blocks = Vec::new();
                        let text = text_of(&m["content"]);
                        if !text.is_empty() {
                            blocks.push(json!({"type": "text", "text": text}));
                        }
                        for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                            let input: Value = call.pointer("/function/arguments").and_then(Value::as_str).and_then(|a| serde_json::from_str(a).ok()).unwrap_or(json!({}));
                            blocks.push(json!({"type": "tool_use", "id": call["id"], "name": call.pointer("/function/name"), "input": input}));
                        }
                        ("assistant", blocks)
                    }
                    _ => ("user", vec![json!({"type": "text", "text": text_of(&m["content"])})]),
                };
                // Anthropic alternates roles: consecutive turns of one role are merged.
                match messages.last_mut() {
                    Some(last) if last["role"] == role => {
                        if let Some(content) = last["content"].as_array_mut() {
                            content.extend(blocks);
                        }
                    }
                    _ => messages.push(json!({"role": role, "content": blocks})),
                }
            }
            let mut line = json!({"messages": messages});
            if !system.is_empty() {
                line["system"] = Value::String(system.join("\n\n"));
            }
            line
        }
        Format::ShareGpt => {
            let turns: Vec<Value> = example
                .messages
                .iter()
                .map(|m| {
                    let from = match m["role"].as_str() {
                        Some("system") => "system",
                        Some("assistant") if m.get("tool_calls").is_some() => "function_call",
                        Some("assistant") => "gpt",
                        Some("tool") => "observation",
                        _ => "human",
                    };
                    let value = match m.get("tool_calls") {
                        Some(calls) if from == "function_call" => calls.to_string(),
                        _ => text_of(&m["content"]),
                    };
                    json!({"from": from, "value": value})
                })
                .collect();
            json!({"conversations": turns})
        }
    }
}

/// Whether an example goes to the validation file: a stable hash of its conversation, so
/// the same example lands on the same side in every export.
pub fn is_validation(line: &str, share: f64) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in line.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((hash % 10_000) as f64) < share * 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(request: Value, response: Value) -> keel_store::Trace {
        keel_store::Trace { id: "t".into(), request_body: Some(request.to_string()), response_body: Some(response.to_string()), ..keel_store::Trace::default() }
    }

    #[test]
    fn anthropic_tool_turns_become_openai_messages_and_back() {
        let t = trace(
            json!({"system": "You file tickets.", "tools": [{"name": "file", "input_schema": {"type": "object"}}], "messages": [
                {"role": "user", "content": "file it"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "file", "input": {"title": "x"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "filed #7"}]}
            ]}),
            json!({"content": [{"type": "text", "text": "Filed as #7."}]}),
        );
        let example = from_trace(&t).unwrap();
        let roles: Vec<&str> = example.messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
        assert_eq!(example.messages[2]["tool_calls"][0]["function"]["arguments"], "{\"title\":\"x\"}");
        assert_eq!(example.tools[0]["function"]["name"], "file");
        let anthropic = render(&example, Format::Anthropic);
        assert_eq!(anthropic["system"], "You file tickets.");
        assert_eq!(anthropic["messages"].as_array().unwrap().len(), 4);
        assert_eq!(anthropic["messages"][1]["content"][0]["type"], "tool_use");
        let share = render(&example, Format::ShareGpt);
        let from: Vec<&str> = share["conversations"].as_array().unwrap().iter().map(|t| t["from"].as_str().unwrap()).collect();
        assert_eq!(from, ["system", "human", "function_call", "observation", "gpt"]);
        assert!(from_trace(&trace(json!({"messages": []}), json!({"choices": [{"message": {"role": "assistant", "content": ""}}]}))).is_none());
    }

    #[test]
    fn the_split_is_stable() {
        let lines: Vec<String> = (0..1000).map(|i| format!("{{\"messages\": [{i}]}}")).collect();
        let validation = lines.iter().filter(|l| is_validation(l, 0.1)).count();
        assert!((60..140).contains(&validation), "{validation}");
        assert_eq!(lines.iter().filter(|l| is_validation(l, 0.1)).count(), validation);
    }
}
