//! The fake's Gemini side: `generateContent`, `streamGenerateContent` and
//! `batchEmbedContents`.

use super::*;

pub(super) fn gemini_ask(model: &str, body: &Value) -> Result<Ask, String> {
    let mut ask = Ask { model: model.to_string(), ..Ask::default() };
    let contents = body["contents"].as_array().filter(|c| !c.is_empty()).ok_or("contents is not specified")?;
    let mut call_names = Vec::new();
    for content in contents {
        let role = content["role"].as_str().unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(format!("Please use a valid role: user, model. Got {role}"));
        }
        let mut texts = Vec::new();
        let mut n_images = 0;
        let mut results = Vec::new();
        for part in content["parts"].as_array().into_iter().flatten() {
            if let Some(text) = part["text"].as_str() {
                texts.push(text.to_string());
            } else if part.get("inlineData").is_some() || part.get("fileData").is_some() {
                n_images += 1;
            } else if let Some(call) = part.get("functionCall") {
                call_names.push(call["name"].as_str().unwrap_or_default().to_string());
            } else if let Some(response) = part.get("functionResponse") {
                let name = response["name"].as_str().unwrap_or_default();
                if !call_names.iter().any(|known| known == name) {
                    return Err(format!("functionResponse {name} answers no earlier functionCall"));
                }
                results.push(response["response"].to_string());
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
        for declaration in tool["functionDeclarations"].as_array().into_iter().flatten() {
            let name = declaration["name"].as_str().ok_or("functionDeclarations need a name")?;
            ask.tools.push((name.to_string(), lower_types(&declaration["parameters"])));
        }
    }
    ask.forced_tool = body
        .pointer("/toolConfig/functionCallingConfig/allowedFunctionNames/0")
        .and_then(Value::as_str)
        .map(str::to_string);
    ask.schema = body.pointer("/generationConfig/responseSchema").map(lower_types);
    ask.max_tokens = body.pointer("/generationConfig/maxOutputTokens").and_then(Value::as_u64);
    ask.stop = body
        .pointer("/generationConfig/stopSequences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    Ok(ask)
}

/// Gemini schemas spell types in upper case; `sample` reads JSON Schema's lower case.
pub(super) fn lower_types(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value) {
                        ("type", Value::String(kind)) => json!(kind.to_lowercase()),
                        _ => lower_types(value),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(lower_types).collect()),
        other => other.clone(),
    }
}

pub(super) fn gemini_finish(finish: &str) -> &'static str {
    if finish == "length" { "MAX_TOKENS" } else { "STOP" }
}

pub(super) async fn gemini(State(fake): State<Fake>, Path(rest): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let api = Api::Gemini;
    let _in_flight = InFlight::new(&fake);
    let Some((model, method)) = rest.split_once(':') else {
        return error(api, 404, "expected models/{model}:{method}");
    };
    let value = match parse(api, &body) {
        Ok(value) => value,
        Err(response) => return response,
    };
    if let Err(response) = prelude(&fake, api, &format!("/v1beta/models/{rest}"), &headers, &value, model).await {
        return response;
    }
    if method == "batchEmbedContents" {
        let embeddings: Vec<Value> = value["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                let text = item.pointer("/content/parts/0/text").and_then(Value::as_str).unwrap_or_default();
                let dims = item["outputDimensionality"].as_u64().unwrap_or(8) as usize;
                json!({"values": fake_vector(text, dims)})
            })
            .collect();
        return axum::Json(json!({"embeddings": embeddings})).into_response();
    }
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        other => return error(api, 404, &format!("unknown method {other}")),
    };
    let ask = match gemini_ask(model, &value) {
        Ok(ask) => ask,
        Err(message) => return error(api, 400, &message),
    };
    if model.contains("garbage") {
        return if stream { sse(vec!["data: {not json\n\n".into()], "") } else { garbage() };
    }
    let answer = answer(&ask);
    let usage = json!({
        "promptTokenCount": answer.input_tokens,
        "candidatesTokenCount": answer.output_tokens,
        "totalTokenCount": answer.input_tokens + answer.output_tokens + answer.reasoning,
        "cachedContentTokenCount": answer.cached,
        "thoughtsTokenCount": answer.reasoning,
    });
    let parts: Vec<Value> = match &answer.reply {
        Reply::Text(text) => vec![json!({"text": text})],
        Reply::Calls(calls) => calls
            .iter()
            .map(|(_, name, args)| json!({"functionCall": {"name": name, "args": serde_json::from_str::<Value>(args).unwrap_or(json!({}))}}))
            .collect(),
    };
    if !stream {
        return axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": gemini_finish(answer.finish), "index": 0}],
            "usageMetadata": usage, "modelVersion": model, "responseId": "fake-response",
        }))
        .into_response();
    }
    let frame = |value: Value| format!("data: {value}\r\n\r\n");
    let mut frames = Vec::new();
    match &answer.reply {
        Reply::Text(text) => {
            for piece in text_chunks(text) {
                frames.push(frame(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}], "modelVersion": model, "responseId": "fake-response"})));
            }
            frames.push(frame(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": gemini_finish(answer.finish), "index": 0}], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-response"})));
        }
        Reply::Calls(_) => {
            frames.push(frame(json!({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-response"})));
        }
    }
    sse(frames, model)
}
