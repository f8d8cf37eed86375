//! The fake's Anthropic side: Messages (plain, streamed, tools) and `count_tokens`.

use super::*;

pub(super) fn anthropic_ask(body: &Value) -> Result<Ask, String> {
    let mut ask = Ask { model: body["model"].as_str().ok_or("model: Field required")?.to_string(), ..Ask::default() };
    ask.max_tokens = Some(body["max_tokens"].as_u64().ok_or("max_tokens: Field required")?);
    let messages = body["messages"].as_array().filter(|m| !m.is_empty()).ok_or("messages: at least one message is required")?;
    if let Some(system) = body["system"].as_str() {
        ask.input_words += words(system);
    }
    let mut tool_ids = Vec::new();
    for (idx, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(format!("messages.{idx}.role: Input should be 'user' or 'assistant'"));
        }
        if idx == 0 && role != "user" {
            return Err("messages: the first message must use the user role".into());
        }
        let blocks = match &message["content"] {
            Value::String(text) => vec![json!({"type": "text", "text": text})],
            Value::Array(blocks) => blocks.clone(),
            _ => return Err(format!("messages.{idx}.content: Input should be a valid list")),
        };
        let mut texts = Vec::new();
        let mut n_images = 0;
        let mut results = Vec::new();
        for block in &blocks {
            match block["type"].as_str() {
                Some("text") => texts.push(block["text"].as_str().unwrap_or_default().to_string()),
                Some("image") => n_images += 1,
                Some("tool_use") => tool_ids.push(block["id"].as_str().unwrap_or_default().to_string()),
                Some("tool_result") => {
                    let id = block["tool_use_id"].as_str().unwrap_or_default();
                    if !tool_ids.iter().any(|known| known == id) {
                        return Err(format!("messages.{idx}: unexpected `tool_use_id` found in `tool_result` blocks: {id}"));
                    }
                    let text = match &block["content"] {
                        Value::String(text) => text.clone(),
                        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" "),
                        _ => String::new(),
                    };
                    results.push(text);
                }
                Some("document") => {}
                other => return Err(format!("messages.{idx}: unknown content block type {other:?}")),
            }
        }
        let text = texts.join(" ");
        ask.input_words += words(&text);
        if role == "user" {
            if results.is_empty() {
                ask.tool_results.clear();
                ask.last_user = text;
                ask.n_images = n_images;
            } else {
                ask.tool_results = results;
            }
        }
    }
    for tool in body["tools"].as_array().into_iter().flatten() {
        let name = tool["name"].as_str().ok_or("tools: name is required")?;
        // Server tools (`web_search_20250305`, …) run at Anthropic and take no schema.
        if tool["type"].as_str().is_some_and(|kind| kind != "custom") {
            continue;
        }
        if !tool["input_schema"].is_object() {
            return Err(format!("tools: input_schema of {name} is required"));
        }
        ask.tools.push((name.to_string(), tool["input_schema"].clone()));
    }
    if body.pointer("/tool_choice/type").and_then(Value::as_str) == Some("tool") {
        ask.forced_tool = body.pointer("/tool_choice/name").and_then(Value::as_str).map(str::to_string);
    }
    ask.stream = body["stream"].as_bool().unwrap_or(false);
    ask.stop = body["stop_sequences"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
    Ok(ask)
}

pub(super) async fn anthropic_count_tokens(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::Anthropic;
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    record(&fake, "/v1/messages/count_tokens", &value);
    if let Err(response) = check_key(&fake, &headers, api) {
        return response;
    }
    let mut with_max = value.clone();
    with_max["max_tokens"] = json!(1);
    match anthropic_ask(&with_max) {
        Ok(ask) => axum::Json(json!({"input_tokens": ask.input_words + 3})).into_response(),
        Err(message) => error(api, 400, &message),
    }
}

pub(super) fn anthropic_stop(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        "stop_sequence" => "stop_sequence",
        _ => "end_turn",
    }
}

pub(super) async fn anthropic_messages(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::Anthropic;
    let _in_flight = InFlight::new(&fake);
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    if headers.get("anthropic-version").is_none() {
        return error(api, 400, "anthropic-version: header is required");
    }
    let model = value["model"].as_str().unwrap_or_default().to_string();
    if let Err(response) = prelude(&fake, api, "/v1/messages", &headers, &value, &model).await {
        return response;
    }
    let ask = match anthropic_ask(&value) {
        Ok(ask) => ask,
        Err(message) => return error(api, 400, &message),
    };
    if model.contains("garbage") {
        return if ask.stream { sse(vec!["event: message_start\ndata: {not json\n\n".into()], "") } else { garbage() };
    }
    let answer = answer(&ask);
    let stop_sequence = if answer.finish == "stop_sequence" { json!(ask.stop.first()) } else { Value::Null };
    let usage = json!({
        "input_tokens": answer.input_tokens - answer.cached,
        "output_tokens": answer.output_tokens,
        "cache_read_input_tokens": answer.cached,
        "cache_creation_input_tokens": 0,
    });
    if !ask.stream {
        let content: Vec<Value> = match &answer.reply {
            Reply::Text(text) => vec![json!({"type": "text", "text": text})],
            Reply::Calls(calls) => calls
                .iter()
                .map(|(id, name, args)| json!({"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": serde_json::from_str::<Value>(args).unwrap_or(json!({}))}))
                .collect(),
        };
        return axum::Json(json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": ask.model, "content": content,
            "stop_reason": anthropic_stop(answer.finish), "stop_sequence": stop_sequence, "usage": usage,
        }))
        .into_response();
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": ask.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": answer.input_tokens - answer.cached, "output_tokens": 1, "cache_read_input_tokens": answer.cached, "cache_creation_input_tokens": 0}}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    match &answer.reply {
        Reply::Text(text) => {
            frames.push(event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            for piece in text_chunks(text) {
                frames.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})));
            }
            frames.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        }
        Reply::Calls(calls) => {
            for (idx, (id, name, args)) in calls.iter().enumerate() {
                frames.push(event("content_block_start", json!({"type": "content_block_start", "index": idx, "content_block": {"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": {}}})));
                let (a, b) = split_half(args);
                for part in [a, b] {
                    frames.push(event("content_block_delta", json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": part}})));
                }
                frames.push(event("content_block_stop", json!({"type": "content_block_stop", "index": idx})));
            }
        }
    }
    frames.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": anthropic_stop(answer.finish), "stop_sequence": stop_sequence}, "usage": {"output_tokens": answer.output_tokens}}),
    ));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    sse(frames, &model)
}
