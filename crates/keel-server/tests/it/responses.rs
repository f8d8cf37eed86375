//! The Responses API over real HTTP: every provider answers it, whole and streamed as typed
//! events; tool calls round-trip through `previous_response_id`; stored responses are
//! fetched, listed and deleted; bad requests get clear errors; every call leaves a trace.

use serde_json::{Value, json};

use crate::harness::{self, Reply};

const PROVIDERS: [&str; 3] = ["oa", "an", "ge"];

fn weather_tool() -> Value {
    json!([{"type": "function", "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
}

/// The output text of a response object.
fn text_of(response: &Value) -> String {
    let mut text = String::new();
    for item in response["output"].as_array().into_iter().flatten() {
        for part in item["content"].as_array().into_iter().flatten() {
            text.push_str(part["text"].as_str().unwrap_or_default());
        }
    }
    text
}

/// Checks a streamed reply's events (SSE names match `type`, sequence numbers count up from
/// 0, the deltas add up to the final text) and returns (names, final response).
fn check_stream(reply: &Reply) -> (Vec<String>, Value) {
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let mut names = Vec::new();
    let mut deltas = String::new();
    let mut last = Value::Null;
    for (n, (event, data)) in reply.events().into_iter().enumerate() {
        let data: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(event.as_deref(), data["type"].as_str(), "{data}");
        assert_eq!(data["sequence_number"], n as u64, "{data}");
        if data["type"] == "response.output_text.delta" {
            deltas.push_str(data["delta"].as_str().unwrap());
        }
        names.push(data["type"].as_str().unwrap().to_string());
        if let Some(response) = data.get("response") {
            last = response.clone();
        }
    }
    assert_eq!(deltas, text_of(&last), "the deltas add up to the final text");
    (names, last)
}

#[tokio::test]
async fn every_provider_answers_whole_and_streamed() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        let body = json!({"model": provider, "input": "hello there", "instructions": "be brief", "max_output_tokens": 50});
        let reply = h.post("/v1/responses", &body).await;
        assert_eq!(reply.status, 200, "{provider}: {}", reply.text);
        let response = &reply.json;
        assert_eq!(response["object"], "response");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["model"], provider);
        assert_eq!(response["instructions"], "be brief");
        assert_eq!(text_of(response), "echo: hello there", "{provider}");
        assert!(response["id"].as_str().unwrap().starts_with("resp_"));
        assert!(response["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            response["usage"]["total_tokens"].as_u64(),
            Some(response["usage"]["input_tokens"].as_u64().unwrap() + response["usage"]["output_tokens"].as_u64().unwrap())
        );
        assert_eq!(reply.header("x-keel-trace-id"), response["id"].as_str().unwrap().trim_start_matches("resp_"));

        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (names, last) = check_stream(&h.post("/v1/responses", &streamed).await);
        assert_eq!(names.first().map(String::as_str), Some("response.created"));
        assert_eq!(names.get(1).map(String::as_str), Some("response.in_progress"));
        assert_eq!(names.last().map(String::as_str), Some("response.completed"));
        for expected in ["response.output_item.added", "response.content_part.added", "response.output_text.done", "response.output_item.done"] {
            assert!(names.iter().any(|n| n == expected), "{provider}: {expected} in {names:?}");
        }
        assert_eq!(text_of(&last), "echo: hello there");
        assert!(last["usage"]["output_tokens"].as_u64().unwrap() > 0, "{provider}: usage on the completed event");
    }
    let (_, upstream) = h.last_upstream();
    assert!(upstream.to_string().contains("be brief"), "instructions reach the upstream: {upstream}");
}

#[tokio::test]
async fn tool_calls_continue_through_previous_response_id_on_every_provider() {
    let h = harness::start("").await;
    for provider in PROVIDERS {
        for stream in [false, true] {
            let first = json!({"model": provider, "input": "weather in Paris?", "tools": weather_tool(), "stream": stream});
            let reply = h.post("/v1/responses", &first).await;
            let response = if stream { check_stream(&reply).1 } else { reply.json.clone() };
            let call = response["output"].as_array().unwrap().iter().find(|item| item["type"] == "function_call").cloned();
            let call = call.unwrap_or_else(|| panic!("{provider} stream={stream}: a function call in {response}"));
            assert_eq!(call["name"], "get_weather");
            let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
            assert!(args["city"].is_string(), "{args}");

            let next = json!({
                "model": provider, "previous_response_id": response["id"], "tools": weather_tool(), "stream": stream,
                "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21C"}],
            });
            let reply = h.post("/v1/responses", &next).await;
            let answer = if stream { check_stream(&reply).1 } else { reply.json.clone() };
            // Gemini carries a function's output as an object, `{"result": ...}`.
            let text = text_of(&answer);
            assert!(text.starts_with("tool results: ") && text.contains("sunny, 21C"), "{provider} stream={stream}: {answer}");
            assert_eq!(answer["previous_response_id"], response["id"]);
            let (_, upstream) = h.last_upstream();
            let sent = upstream.to_string();
            assert!(sent.contains("weather in Paris?"), "the chain's first message went upstream: {sent}");
            assert!(sent.contains("sunny, 21C"), "{sent}");
        }
    }
}

#[tokio::test]
async fn a_chain_of_three_sends_the_whole_conversation() {
    let h = harness::start("").await;
    let mut previous = Value::Null;
    for word in ["alpha", "bravo", "charlie"] {
        let reply = h.post("/v1/responses", &json!({"model": "oa", "input": word, "previous_response_id": previous})).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        previous = reply.json["id"].clone();
    }
    let (_, upstream) = h.last_upstream();
    let roles: Vec<&str> = upstream["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
    assert_eq!(upstream["messages"][3]["content"], "echo: bravo");
}

#[tokio::test]
async fn stored_responses_are_fetched_listed_and_deleted() {
    let h = harness::start("").await;
    let input = json!([
        {"role": "developer", "content": "be kind"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]);
    let created = h.post("/v1/responses", &json!({"model": "an", "input": input, "metadata": {"team": "a"}})).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    assert_eq!(created.json["metadata"]["team"], "a");

    let fetched = h.get(&format!("/v1/responses/{id}")).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json, created.json, "GET returns the response as it was created");

    let items = h.get(&format!("/v1/responses/{id}/input_items")).await;
    assert_eq!(items.status, 200, "{}", items.text);
    let data = items.json["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    assert_eq!(data[0]["content"][0]["text"], "three", "newest first by default");
    assert!(data.iter().all(|item| item["id"].is_string() && item["type"] == "message"));
    assert_eq!(items.json["has_more"], false);

    let page = h.get(&format!("/v1/responses/{id}/input_items?order=asc&limit=2")).await;
    let texts: Vec<&str> = page.json["data"].as_array().unwrap().iter().map(|i| i["content"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["be kind", "one"]);
    assert_eq!(page.json["has_more"], true);
    let after = page.json["last_id"].as_str().unwrap();
    let rest = h.get(&format!("/v1/responses/{id}/input_items?order=asc&limit=2&after={after}")).await;
    let texts: Vec<&str> = rest.json["data"].as_array().unwrap().iter().map(|i| i["content"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["two", "three"]);
    assert_eq!(rest.json["has_more"], false);
    assert_eq!(h.get(&format!("/v1/responses/{id}/input_items?limit=0")).await.status, 400);

    let deleted = h.client.delete(format!("{}/v1/responses/{id}", h.base)).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let body: Value = deleted.json().await.unwrap();
    assert_eq!(body, json!({"id": id, "object": "response.deleted", "deleted": true}));
    assert_eq!(h.get(&format!("/v1/responses/{id}")).await.status, 404);
    let again = h.client.delete(format!("{}/v1/responses/{id}", h.base)).send().await.unwrap();
    assert_eq!(again.status(), 404);

    let gone = h.post("/v1/responses", &json!({"model": "an", "input": "more", "previous_response_id": id})).await;
    assert_eq!(gone.status, 404, "{}", gone.text);
    assert!(gone.json["error"]["message"].as_str().unwrap().contains("previous_response_id"), "{}", gone.text);

    let unstored = h.post("/v1/responses", &json!({"model": "an", "input": "secret", "store": false})).await;
    assert_eq!(unstored.status, 200);
    assert_eq!(unstored.json["store"], false);
    let unstored_id = unstored.json["id"].as_str().unwrap();
    assert_eq!(h.get(&format!("/v1/responses/{unstored_id}")).await.status, 404, "store: false keeps nothing");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let h = harness::start("").await;
    let cases = [
        (json!({"model": "oa", "input": "x", "tools": [{"type": "web_search"}]}), 400, "`web_search` is not supported"),
        (json!({"model": "oa", "input": [{"type": "function_call", "name": "f"}]}), 400, "input[0].call_id"),
        (json!({"model": "oa", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}), 400, "input[0].content[0].image_url"),
        (json!({"model": "oa", "input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": "no"}}}), 400, "text.format.schema"),
        (json!({"model": "oa", "input": "x", "tool_choice": {"type": "function", "name": "nope"}}), 400, "`nope`"),
        (json!({"model": "oa"}), 400, "input: must hold at least one item"),
        (json!({"input": "x"}), 400, "model"),
        (json!({"model": "nope", "input": "x"}), 404, "nope"),
        (json!({"model": "oa", "input": "x", "previous_response_id": "resp_missing"}), 404, "resp_missing"),
    ];
    for (body, status, needle) in cases {
        let reply = h.post("/v1/responses", &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        let message = reply.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: `{needle}` in {message}");
    }
    let reply = h.post_raw("/v1/responses", b"{not json".to_vec(), &[]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["error"]["code"], "invalid_json");
    assert_eq!(h.get("/v1/responses/resp_nope").await.status, 404);
}

#[tokio::test]
async fn json_schema_output_and_upstream_failures() {
    let mut h = harness::start(
        "[[models]]\nname = \"cut\"\nroutes = [{ provider = \"oa\", model = \"cut\" }]\n[[models]]\nname = \"down\"\nroutes = [{ provider = \"oa\", model = \"fail-500\" }]\n",
    )
    .await;
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo"]}}, "required": ["city"]});
    let reply = h
        .post("/v1/responses", &json!({"model": "ge", "input": "x", "text": {"format": {"type": "json_schema", "name": "place", "schema": schema}}}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let parsed: Value = serde_json::from_str(&text_of(&reply.json)).unwrap();
    assert_eq!(parsed, json!({"city": "Oslo"}));
    assert_eq!(reply.json["text"]["format"]["type"], "json_schema");

    let reply = h.post("/v1/responses", &json!({"model": "cut", "input": "tell me a long story please", "stream": true})).await;
    let (names, last) = check_stream(&reply);
    assert_eq!(names.last().map(String::as_str), Some("response.failed"), "{names:?}");
    assert_eq!(last["status"], "failed");
    assert!(last["error"]["message"].is_string(), "{last}");
    assert_eq!(last["output"][0]["status"], "incomplete", "what was streamed stays in the output: {last}");
    let failed_id = last["id"].as_str().unwrap();
    let stored = h.get(&format!("/v1/responses/{failed_id}")).await;
    assert_eq!(stored.json["status"], "failed", "a failed response is stored too");

    let reply = h.post("/v1/responses", &json!({"model": "down", "input": "x"})).await;
    assert_eq!(reply.status, 502, "{}", reply.text);

    let traces = h.traces().await;
    let ours: Vec<_> = traces.iter().filter(|t| t.endpoint == "responses").collect();
    assert_eq!(ours.len(), 3, "every call leaves a trace");
    assert!(ours.iter().any(|t| t.status == 200 && t.provider == "ge" && t.input_tokens > 0));
    assert!(ours.iter().any(|t| t.status == 502 && t.error.is_some()));
}
