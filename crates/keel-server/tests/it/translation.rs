//! Any entry format reaches any provider: OpenAI and Anthropic requests, streamed or not,
//! with text, tools, tool results, JSON schemas and images, against all three upstreams.

use serde_json::{Value, json};

use crate::harness::{self, Reply};

const PROVIDERS: [&str; 3] = ["oa", "an", "ge"];

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}}}])
}

fn weather_tool_anthropic() -> Value {
    json!([{"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

/// Text of an OpenAI response, streamed or not.
fn openai_text(reply: &Reply, stream: bool) -> String {
    if !stream {
        return reply.json["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    }
    reply.data().iter().filter_map(|chunk| chunk.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect()
}

/// (id, name, arguments) of an OpenAI response's tool calls, streamed or not.
fn openai_calls(reply: &Reply, stream: bool) -> Vec<(String, String, String)> {
    if !stream {
        return reply.json["choices"][0]["message"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["function"]["name"].as_str().unwrap().to_string(),
                    c["function"]["arguments"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    }
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for chunk in reply.data() {
        for delta in chunk.pointer("/choices/0/delta/tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = delta["index"].as_u64().unwrap() as usize;
            if calls.len() <= index {
                calls.resize(index + 1, Default::default());
            }
            if let Some(id) = delta["id"].as_str() {
                calls[index].0 = id.to_string();
            }
            if let Some(name) = delta.pointer("/function/name").and_then(Value::as_str) {
                calls[index].1 = name.to_string();
            }
            if let Some(args) = delta.pointer("/function/arguments").and_then(Value::as_str) {
                calls[index].2.push_str(args);
            }
        }
    }
    calls
}

fn openai_finish(reply: &Reply, stream: bool) -> String {
    if !stream {
        return reply.json["choices"][0]["finish_reason"].as_str().unwrap().to_string();
    }
    reply.data().iter().filter_map(|c| c.pointer("/choices/0/finish_reason").and_then(Value::as_str)).next_back().unwrap().to_string()
}

/// Rebuilds an Anthropic message from a response or its stream of events.
fn anthropic_message(reply: &Reply, stream: bool) -> Value {
    if !stream {
        return reply.json.clone();
    }
    let mut message = Value::Null;
    let mut partial: Vec<String> = Vec::new();
    let mut order = Vec::new();
    for (event, data) in reply.events() {
        let data: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(event.as_deref(), data["type"].as_str(), "event name matches its data type");
        match data["type"].as_str().unwrap() {
            "message_start" => message = data["message"].clone(),
            "content_block_start" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(index, message["content"].as_array().unwrap().len(), "blocks start in order");
                message["content"].as_array_mut().unwrap().push(data["content_block"].clone());
                partial.push(String::new());
                order.push(format!("start{index}"));
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().unwrap() as usize;
                match data["delta"]["type"].as_str().unwrap() {
                    "text_delta" => {
                        let text = format!("{}{}", message["content"][index]["text"].as_str().unwrap(), data["delta"]["text"].as_str().unwrap());
                        message["content"][index]["text"] = json!(text);
                    }
                    "input_json_delta" => partial[index].push_str(data["delta"]["partial_json"].as_str().unwrap()),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().unwrap() as usize;
                order.push(format!("stop{index}"));
                if message["content"][index]["type"] == "tool_use" {
                    message["content"][index]["input"] = serde_json::from_str(&partial[index]).unwrap();
                }
            }
            "message_delta" => {
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["usage"]["output_tokens"] = data["usage"]["output_tokens"].clone();
            }
            "message_stop" | "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    for pair in order.chunks(2) {
        assert_eq!(pair[0].replace("start", ""), pair[1].replace("stop", ""), "a block stops before the next starts: {order:?}");
    }
    message
}

#[tokio::test]
async fn openai_entry_text_reaches_every_provider() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        for stream in [false, true] {
            let reply = h
                .post(
                    "/v1/chat/completions",
                    &json!({"model": provider, "stream": stream, "stream_options": {"include_usage": true},
                        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]}),
                )
                .await;
            assert_eq!(reply.status, 200, "{provider} stream={stream}: {}", reply.text);
            assert_eq!(openai_text(&reply, stream), "echo: hello there", "{provider} stream={stream}");
            assert_eq!(openai_finish(&reply, stream), "stop");
            let usage = if stream { reply.data().last().unwrap()["usage"].clone() } else { reply.json["usage"].clone() };
            assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{provider} stream={stream}: usage {usage}");
            assert_eq!(usage["completion_tokens"], 3, "{provider} stream={stream}");
            if stream {
                assert!(reply.text.ends_with("data: [DONE]\n\n"));
                assert_eq!(reply.header("content-type"), "text/event-stream");
            }
            assert!(reply.header("x-keel-overhead-us").parse::<u64>().is_ok());
        }
    }
}

#[tokio::test]
async fn openai_stream_without_include_usage_has_no_usage_chunk() {
    let h = harness::start("").await;
    let reply = h
        .post("/v1/chat/completions", &json!({"model": "an", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert!(reply.data().iter().all(|chunk| chunk.get("usage").is_none()), "{}", reply.text);
}

#[tokio::test]
async fn openai_tools_reach_every_provider_with_parallel_calls() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        for stream in [false, true] {
            let reply = h
                .post(
                    "/v1/chat/completions",
                    &json!({"model": provider, "stream": stream, "tools": weather_tool_openai(), "tool_choice": "auto",
                        "messages": [{"role": "user", "content": "weather and time?"}]}),
                )
                .await;
            assert_eq!(reply.status, 200, "{provider} stream={stream}: {}", reply.text);
            let calls = openai_calls(&reply, stream);
            let names: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
            assert_eq!(names, ["get_weather", "get_time"], "{provider} stream={stream}");
            let args: Value = serde_json::from_str(&calls[0].2).unwrap();
            assert_eq!(args, json!({"city": "Paris", "days": 1}), "{provider} stream={stream}");
            let args: Value = serde_json::from_str(&calls[1].2).unwrap();
            assert_eq!(args, json!({"zone": "UTC"}));
            assert!(calls.iter().all(|c| !c.0.is_empty()), "every call has an id");
            assert_eq!(openai_finish(&reply, stream), "tool_calls");
        }
    }
}

#[tokio::test]
async fn openai_named_tool_choice_and_tool_results_round_trip() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        let first = h
            .post(
                "/v1/chat/completions",
                &json!({"model": provider, "tools": weather_tool_openai(),
                    "tool_choice": {"type": "function", "function": {"name": "get_time"}},
                    "messages": [{"role": "user", "content": "time?"}]}),
            )
            .await;
        let calls = openai_calls(&first, false);
        assert_eq!(calls.len(), 1, "{provider}: {}", first.text);
        assert_eq!(calls[0].1, "get_time");
        let assistant = first.json["choices"][0]["message"].clone();
        let second = h
            .post(
                "/v1/chat/completions",
                &json!({"model": provider, "tools": weather_tool_openai(),
                    "messages": [{"role": "user", "content": "time?"}, assistant,
                        {"role": "tool", "tool_call_id": calls[0].0, "content": "{\"time\":\"12:00\"}"}]}),
            )
            .await;
        assert_eq!(second.status, 200, "{provider}: {}", second.text);
        let text = openai_text(&second, false);
        assert!(text.starts_with("tool results: "), "{provider}: {text}");
        assert!(text.contains("12:00"), "{provider}: {text}");
    }
}

#[tokio::test]
async fn anthropic_entry_reaches_every_provider() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        for stream in [false, true] {
            let reply = h
                .post(
                    "/v1/messages",
                    &json!({"model": provider, "max_tokens": 100, "stream": stream, "system": "be brief",
                        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}),
                )
                .await;
            assert_eq!(reply.status, 200, "{provider} stream={stream}: {}", reply.text);
            let message = anthropic_message(&reply, stream);
            assert_eq!(message["type"], "message");
            assert_eq!(message["role"], "assistant");
            assert_eq!(message["content"][0], json!({"type": "text", "text": "echo: hello there"}), "{provider} stream={stream}");
            assert_eq!(message["stop_reason"], "end_turn");
            assert_eq!(message["usage"]["output_tokens"], 3);
            assert!(message["id"].as_str().unwrap().starts_with("msg_"));
        }
        // The system prompt reached the upstream in that provider's own place for it.
        let (_, body) = h.last_upstream();
        match provider {
            "oa" => assert_eq!(body["messages"][0], json!({"role": "system", "content": "be brief"})),
            "an" => assert_eq!(body["system"], "be brief"),
            _ => assert_eq!(body["systemInstruction"], json!({"parts": [{"text": "be brief"}]})),
        }
    }
}

#[tokio::test]
async fn anthropic_entry_tools_and_results_reach_every_provider() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        for stream in [false, true] {
            let reply = h
                .post(
                    "/v1/messages",
                    &json!({"model": provider, "max_tokens": 200, "stream": stream, "tools": weather_tool_anthropic(),
                        "messages": [{"role": "user", "content": "weather in Paris?"}]}),
                )
                .await;
            assert_eq!(reply.status, 200, "{provider} stream={stream}: {}", reply.text);
            let message = anthropic_message(&reply, stream);
            let block = message["content"].as_array().unwrap().iter().find(|b| b["type"] == "tool_use").cloned().unwrap();
            assert_eq!(block["name"], "get_weather", "{provider} stream={stream}");
            assert_eq!(block["input"], json!({"city": "Paris"}));
            assert_eq!(message["stop_reason"], "tool_use");
            let follow = h
                .post(
                    "/v1/messages",
                    &json!({"model": provider, "max_tokens": 200, "tools": weather_tool_anthropic(),
                        "messages": [
                            {"role": "user", "content": "weather in Paris?"},
                            {"role": "assistant", "content": [block.clone()]},
                            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": "sunny, 21C"}]},
                        ]}),
                )
                .await;
            assert_eq!(follow.status, 200, "{provider}: {}", follow.text);
            assert_eq!(follow.json["content"][0]["text"], "tool results: sunny, 21C".replace("sunny, 21C", if provider == "ge" { "{\"result\":\"sunny, 21C\"}" } else { "sunny, 21C" }));
        }
    }
}

#[tokio::test]
async fn anthropic_upstream_gets_max_tokens_filled_in() {
    let h = harness::start("").await;
    let reply = h.post("/v1/chat/completions", &json!({"model": "an", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let (path, body) = h.last_upstream();
    assert_eq!(path, "/v1/messages");
    assert_eq!(body["max_tokens"], 4096);
    let reply = h
        .post("/v1/chat/completions", &json!({"model": "an", "max_completion_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(h.last_upstream().1["max_tokens"], 1);
    assert_eq!(reply.json["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn json_schema_is_honoured_by_every_provider() {
    let h = harness::start("").await;
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 3},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "kind": {"type": ["string", "null"], "enum": ["a", "b"]}},
        "required": ["name", "age", "tags", "kind"], "additionalProperties": false});
    for provider in PROVIDERS {
        for stream in [false, true] {
            let reply = h
                .post(
                    "/v1/chat/completions",
                    &json!({"model": provider, "stream": stream,
                        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}},
                        "messages": [{"role": "user", "content": "a person"}]}),
                )
                .await;
            assert_eq!(reply.status, 200, "{provider} stream={stream}: {}", reply.text);
            let text = openai_text(&reply, stream);
            let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{provider} stream={stream}: {e}: {text}"));
            assert_eq!(value, json!({"name": "Paris", "age": 3, "tags": ["Paris", "Paris"], "kind": "a"}), "{provider} stream={stream}");
            assert_eq!(openai_finish(&reply, stream), "stop", "{provider} stream={stream}");
        }
        let (_, body) = h.last_upstream();
        match provider {
            "oa" => assert_eq!(body["response_format"]["json_schema"]["schema"], schema),
            "an" => assert_eq!(body["tool_choice"], json!({"type": "tool", "name": "json_response"})),
            _ => {
                assert_eq!(body["generationConfig"]["responseMimeType"], "application/json");
                let gemini_schema = &body["generationConfig"]["responseSchema"];
                assert_eq!(gemini_schema["properties"]["kind"]["type"], "STRING");
                assert_eq!(gemini_schema["properties"]["kind"]["nullable"], true);
                assert!(gemini_schema.get("additionalProperties").is_none());
            }
        }
    }
}

#[tokio::test]
async fn image_parts_by_url_and_base64_reach_every_provider() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        let reply = h
            .post(
                "/v1/chat/completions",
                &json!({"model": provider, "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                ]}]}),
            )
            .await;
        assert_eq!(reply.status, 200, "{provider}: {}", reply.text);
        assert_eq!(openai_text(&reply, false), "echo: what is this (+2 images)", "{provider}");
        let (_, body) = h.last_upstream();
        match provider {
            "oa" => assert_eq!(body["messages"][0]["content"][2]["image_url"]["url"], "data:image/png;base64,iVBORw0KGgo="),
            "an" => {
                assert_eq!(body["messages"][0]["content"][1]["source"], json!({"type": "url", "url": "https://example.com/cat.png"}));
                assert_eq!(body["messages"][0]["content"][2]["source"], json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}));
            }
            _ => assert_eq!(body["contents"][0]["parts"][2], json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})),
        }
    }
}

#[tokio::test]
async fn sampling_options_reach_the_upstream() {
    let h = harness::start("").await;
    let request = json!({"model": "oa", "messages": [{"role": "user", "content": "one two three"}],
        "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["three"], "user": "u-1", "metadata": {"k": "v"}, "max_tokens": 50});
    let reply = h.post("/v1/chat/completions", &request).await;
    assert_eq!(openai_text(&reply, false), "echo: one two ");
    let (_, body) = h.last_upstream();
    for key in ["temperature", "top_p", "seed", "stop", "user", "max_tokens"] {
        assert_eq!(body[key], request[key], "{key}");
    }
    // An OpenAI-format request to OpenAI routes goes as it came, `metadata` included.
    assert_eq!(body["metadata"], request["metadata"]);
    let mut to_gemini = request.clone();
    to_gemini["model"] = json!("ge");
    h.post("/v1/chat/completions", &to_gemini).await;
    let (_, body) = h.last_upstream();
    assert_eq!(body["generationConfig"], json!({"temperature": 0.2, "topP": 0.9, "seed": 7, "stopSequences": ["three"], "maxOutputTokens": 50}));
    let mut to_anthropic = request;
    to_anthropic["model"] = json!("an");
    let reply = h.post("/v1/chat/completions", &to_anthropic).await;
    let (_, body) = h.last_upstream();
    assert_eq!(body["stop_sequences"], json!(["three"]));
    assert_eq!(body["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(reply.json["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn cached_and_reasoning_tokens_are_reported() {
    let h = harness::start(
        r#"
[[models]]
name = "oa-cache"
routes = [{ provider = "oa", model = "gpt-4o-cache-reason" }]
[[models]]
name = "an-cache"
routes = [{ provider = "an", model = "claude-cache" }]
[[models]]
name = "ge-cache"
routes = [{ provider = "ge", model = "gemini-cache-reason" }]
"#,
    )
    .await;
    for (alias, cached, reasoning) in [("oa-cache", 2, 3), ("an-cache", 2, 0), ("ge-cache", 2, 3)] {
        let reply = h.post("/v1/chat/completions", &json!({"model": alias, "messages": [{"role": "user", "content": "hi"}]})).await;
        let usage = &reply.json["usage"];
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], cached, "{alias}: {usage}");
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], reasoning, "{alias}: {usage}");
        let reply = h
            .post("/v1/messages", &json!({"model": alias, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
            .await;
        assert_eq!(reply.json["usage"]["cache_read_input_tokens"], cached, "{alias}: {}", reply.text);
    }
}

#[tokio::test]
async fn embeddings_through_openai_and_gemini() {
    let h = harness::start(
        r#"
[[models]]
name = "embed"
routes = [{ provider = "oa", model = "text-embedding-3-small" }]
[[models]]
name = "gembed"
routes = [{ provider = "ge", model = "text-embedding-004" }]
"#,
    )
    .await;
    for alias in ["embed", "gembed"] {
        let reply = h.post("/v1/embeddings", &json!({"model": alias, "input": ["a", "b", "c"], "dimensions": 16})).await;
        assert_eq!(reply.status, 200, "{alias}: {}", reply.text);
        let data = reply.json["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data[2]["index"], 2);
        assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 16);
        assert_eq!(reply.json["model"], alias);
    }
    let reply = h.post("/v1/embeddings", &json!({"model": "embed", "input": "one", "encoding_format": "base64"})).await;
    assert_eq!(reply.json["data"][0]["embedding"].as_str().unwrap().len(), 44, "8 floats, base64");
    let reply = h.post("/v1/embeddings", &json!({"model": "an", "input": "x"})).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.json["error"]["message"].as_str().unwrap().contains("does not support embeddings"));
}

#[tokio::test]
async fn models_lists_aliases_in_both_shapes() {
    let h = harness::start("").await;
    let reply = h.get("/v1/models").await;
    let ids: Vec<&str> = reply.json["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["an", "ge", "oa"]);
    assert_eq!(reply.json["object"], "list");
    let response = h.client.get(format!("{}/v1/models", h.base)).header("anthropic-version", "2023-06-01").send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"][0]["type"], "model");
    assert_eq!(body["has_more"], false);
    assert_eq!(h.get("/v1/models/oa").await.json["id"], "oa");
    assert_eq!(h.get("/v1/models/nope").await.status, 404);
}

#[tokio::test]
async fn count_tokens_is_exact_on_anthropic_and_estimated_elsewhere() {
    let h = harness::start("").await;
    let body = json!({"model": "an", "system": "short", "messages": [{"role": "user", "content": "one two three four"}]});
    let reply = h.post("/v1/messages/count_tokens", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json, json!({"input_tokens": 8}), "the upstream's own count: 5 words + 3");
    assert_eq!(reply.header("x-keel-token-count"), "exact");
    assert_eq!(h.last_upstream().1.get("max_tokens"), None);
    let mut body = body;
    body["model"] = json!("oa");
    let reply = h.post("/v1/messages/count_tokens", &body).await;
    assert_eq!(reply.header("x-keel-token-count"), "estimated");
    // "short" (5) + "one two three four" (18) = 23 characters → 6 tokens, + 3 per message.
    assert_eq!(reply.json, json!({"input_tokens": 12}));
}
