//! The fake's OpenAI side: Chat Completions (plain, streamed, tools, JSON schema) and
//! Embeddings.

use super::*;

pub(super) fn openai_content_text(content: &Value, n_images: &mut usize) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(part["text"].as_str().unwrap_or_default().to_string()),
                    Some("image_url") => *n_images += 1,
                    _ => {}
                }
            }
            out.join(" ")
        }
        _ => String::new(),
    }
}

pub(super) fn openai_ask(body: &Value) -> Result<Ask, String> {
    let mut ask = Ask { model: body["model"].as_str().ok_or("model is required")?.to_string(), ..Ask::default() };
    let messages = body["messages"].as_array().filter(|m| !m.is_empty()).ok_or("messages must be a non-empty array")?;
    let mut call_ids = Vec::new();
    for message in messages {
        let role = message["role"].as_str().ok_or("every message needs a role")?;
        let mut n_images = 0;
        let text = openai_content_text(&message["content"], &mut n_images);
        ask.input_words += words(&text);
        match role {
            "system" | "developer" => {}
            "user" => {
                ask.last_user = text;
                ask.n_images = n_images;
                ask.tool_results.clear();
            }
            "assistant" => {
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    call_ids.push(call["id"].as_str().unwrap_or_default().to_string());
                }
            }
            "tool" => {
                let id = message["tool_call_id"].as_str().ok_or("tool messages need tool_call_id")?;
                if !call_ids.iter().any(|known| known == id) {
                    return Err(format!("tool_call_id {id} answers no earlier tool call"));
                }
                ask.tool_results.push(text);
            }
            other => return Err(format!("unknown role {other}")),
        }
    }
    for tool in body["tools"].as_array().into_iter().flatten() {
        let function = &tool["function"];
        let name = function["name"].as_str().ok_or("tools need a function name")?;
        ask.tools.push((name.to_string(), function["parameters"].clone()));
    }
    ask.forced_tool = body.pointer("/tool_choice/function/name").and_then(Value::as_str).map(str::to_string);
    if body.pointer("/response_format/type").and_then(Value::as_str) == Some("json_schema") {
        ask.schema = body.pointer("/response_format/json_schema/schema").cloned();
    } else if body.pointer("/response_format/type").and_then(Value::as_str) == Some("json_object") {
        ask.schema = Some(json!({"type": "object", "properties": {"answer": {"type": "string"}}}));
    }
    ask.stream = body["stream"].as_bool().unwrap_or(false);
    ask.include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    ask.max_tokens = body["max_completion_tokens"].as_u64().or(body["max_tokens"].as_u64());
    ask.stop = match &body["stop"] {
        Value::String(stop) => vec![stop.clone()],
        Value::Array(stops) => stops.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    Ok(ask)
}

pub(super) fn openai_usage(answer: &Answer) -> Value {
    json!({
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": answer.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": answer.reasoning, "audio_tokens": 0},
    })
}

pub(super) fn openai_finish(finish: &str) -> &'static str {
    match finish {
        "length" => "length",
        "tool_calls" => "tool_calls",
        _ => "stop",
    }
}

pub(super) const BENCH_RESPONSE: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok","refusal":null},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

pub(super) async fn openai_chat(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::OpenAi;
    let _in_flight = InFlight::new(&fake);
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    let model = value["model"].as_str().unwrap_or_default().to_string();
    if model == "bench" {
        fake.requests.fetch_add(1, Ordering::Relaxed);
        return ([(header::CONTENT_TYPE, "application/json")], BENCH_RESPONSE).into_response();
    }
    if let Err(response) = prelude(&fake, api, "/v1/chat/completions", &headers, &value, &model).await {
        return response;
    }
    let ask = match openai_ask(&value) {
        Ok(ask) => ask,
        Err(message) => return error(api, 400, &message),
    };
    if model.contains("garbage") {
        return if ask.stream { sse(vec!["data: {not json\n\n".into()], "") } else { garbage() };
    }
    if model.contains("pause-after-tools") && !ask.tool_results.is_empty() {
        let mut release = fake.release.subscribe();
        let _ = release.wait_for(|released| *released).await;
    }
    let answer = answer(&ask);
    let id = "chatcmpl-fake";
    if !ask.stream {
        let message = match &answer.reply {
            Reply::Text(text) => json!({"role": "assistant", "content": text, "refusal": null}),
            Reply::Calls(calls) => json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": calls.iter().map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})).collect::<Vec<_>>()}),
        };
        let body = json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": ask.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "finish_reason": openai_finish(answer.finish), "logprobs": null}],
            "usage": openai_usage(&answer),
        });
        if model.contains("cut") {
            let text = body.to_string();
            return ([(header::CONTENT_TYPE, "application/json")], text[..text.len() / 2].to_string()).into_response();
        }
        return axum::Json(body).into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": ask.model, "system_fingerprint": "fp_fake", "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
        )
    };
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    match &answer.reply {
        Reply::Text(text) => {
            for piece in text_chunks(text) {
                frames.push(chunk(json!({"content": piece}), None));
            }
        }
        Reply::Calls(calls) => {
            for (idx, (call_id, name, args)) in calls.iter().enumerate() {
                frames.push(chunk(json!({"tool_calls": [{"index": idx, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
                let (a, b) = split_half(args);
                for part in [a, b] {
                    frames.push(chunk(json!({"tool_calls": [{"index": idx, "function": {"arguments": part}}]}), None));
                }
            }
        }
    }
    frames.push(chunk(json!({}), Some(openai_finish(answer.finish))));
    if ask.include_usage {
        frames.push(format!(
            "data: {}\n\n",
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": ask.model, "choices": [], "usage": openai_usage(&answer)})
        ));
    }
    frames.push("data: [DONE]\n\n".into());
    sse(frames, &model)
}

pub(super) fn fake_vector(text: &str, dims: usize) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        state = (state ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
    }
    let mut vector: Vec<f32> = (0..dims)
        .map(|i| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407 + i as u64);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-9);
    for value in &mut vector {
        *value /= norm;
    }
    vector
}

pub(super) async fn openai_embeddings(State(fake): State<Fake>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::OpenAi;
    let _in_flight = InFlight::new(&fake);
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    let model = value["model"].as_str().unwrap_or_default().to_string();
    if let Err(response) = prelude(&fake, api, "/v1/embeddings", &headers, &value, &model).await {
        return response;
    }
    let inputs: Vec<String> = match &value["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_string)).collect(),
        _ => return error(api, 400, "input must be a string or an array"),
    };
    let dims = value["dimensions"].as_u64().unwrap_or(8) as usize;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": fake_vector(text, dims)}))
        .collect();
    let tokens: u64 = inputs.iter().map(|text| words(text)).sum();
    axum::Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response()
}
