//! Bad input gets a specific error in the API's own shape, never a panic; secrets never
//! leak; every call leaves a trace.

use expect_test::{Expect, expect};
use serde_json::{Value, json};

use crate::harness::{self, Options, UPSTREAM_KEY};

/// Posts `body` to `path` and checks "status code: message".
async fn check(h: &harness::Harness, path: &str, body: &str, expect: Expect) {
    let reply = h.post_raw(path, body.as_bytes().to_vec(), &[]).await;
    assert!(reply.header("x-keel-overhead-us").parse::<u64>().is_ok(), "overhead header on errors too");
    let (code, message) = if path == "/v1/messages" {
        assert_eq!(reply.json["type"], "error", "{}", reply.text);
        (reply.json["error"]["type"].as_str().unwrap().to_string(), reply.json["error"]["message"].as_str().unwrap().to_string())
    } else {
        let error = &reply.json["error"];
        assert!(error["type"].is_string(), "{}", reply.text);
        (error["code"].as_str().unwrap_or_default().to_string(), error["message"].as_str().unwrap().to_string())
    };
    expect.assert_eq(&format!("{} {code}: {message}", reply.status));
}

const GARBAGE: &str = r#"
[[models]]
name = "garbage"
routes = [{ provider = "oa", model = "garbage" }]
[[models]]
name = "an-garbage"
routes = [{ provider = "an", model = "garbage" }]
"#;

#[tokio::test]
async fn malformed_requests_get_specific_openai_errors() {
    let h = harness::start(GARBAGE).await;
    let chat = "/v1/chat/completions";
    check(&h, chat, "{\"model\": ", expect![[r#"400 invalid_json: the request body is not valid JSON: EOF while parsing a value at line 1 column 10"#]]).await;
    check(&h, chat, "", expect![[r#"400 invalid_json: the request body is empty; send a JSON object"#]]).await;
    check(&h, chat, "  \"text\"", expect![[r#"400 invalid_json: the request body must be a JSON object"#]]).await;
    check(&h, chat, r#"{"model": "ge"}"#, expect![[r#"400 invalid_request: invalid request: missing field `messages` at line 1 column 15"#]]).await;
    check(
        &h,
        chat,
        r#"{"model": "ge", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
        expect![[r#"400 invalid_request: temperature: invalid type: string "hot", expected f64 at line 1 column 84"#]],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "ge", "messages": []}"#,
        expect![[r#"400 invalid_request: messages: must hold at least one message"#]],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}"#,
        expect!["404 model_not_found: unknown model `gpt-9`; configured models: [an, an-garbage, garbage, ge, oa]"],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "ge", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}"#,
        expect![[r#"400 invalid_request: tools[0]: the parameters of `f` must have "type": "object", not "string""#]],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "ge", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "bad name!", "parameters": {}}}]}"#,
        expect![[r#"400 invalid_request: tools[0]: tool name `bad name!` must be 1 to 128 characters of letters, digits, `_`, `-`, `.` or `:`"#]],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "ge", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function", "function": {"name": "nope"}}}"#,
        expect![[r#"400 invalid_request: tool_choice: names function `nope`, which is not in `tools`"#]],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "ge", "messages": [{"role": "tool", "content": "x"}]}"#,
        expect![[r#"400 invalid_request: messages[0]: a tool message needs `tool_call_id`"#]],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "ge", "n": 2, "messages": [{"role": "user", "content": "x"}]}"#,
        expect![[r#"400 invalid_request: n: only n = 1 is supported; send several requests instead"#]],
    )
    .await;
    check(
        &h,
        chat,
        r#"{"model": "garbage", "messages": [{"role": "user", "content": "x"}]}"#,
        expect![[r#"502 upstream_bad_response: upstream oa sent an answer keel could not read: expected value at line 1 column 1"#]],
    )
    .await;
    check(&h, "/v1/nothing", "{}", expect![[r#"404 not_found: no route for /v1/nothing"#]]).await;
    check(&h, "/v1/embeddings", r#"{"model": "ge", "input": []}"#, expect![[r#"400 invalid_request: input: must hold at least one item"#]]).await;
}

#[tokio::test]
async fn malformed_requests_get_specific_anthropic_errors() {
    let h = harness::start(GARBAGE).await;
    let messages = "/v1/messages";
    check(&h, messages, "[1, 2", expect![[r#"400 invalid_request_error: the request body must be a JSON object"#]]).await;
    check(
        &h,
        messages,
        r#"{"model": "ge", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}"#,
        expect![[r#"400 invalid_request_error: messages[0].role: unknown variant `system`, expected `user` or `assistant` at line 1 column 63"#]],
    )
    .await;
    check(
        &h,
        messages,
        r#"{"model": "claude-9", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}"#,
        expect!["404 not_found_error: unknown model `claude-9`; configured models: [an, an-garbage, garbage, ge, oa]"],
    )
    .await;
    check(
        &h,
        messages,
        r#"{"model": "ge", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "web_search", "type": "web_search_20250305"}]}"#,
        expect![[r#"400 invalid_request_error: tools[0]: `web_search` has no input_schema; Anthropic server tools are not supported through keel"#]],
    )
    .await;
    check(
        &h,
        messages,
        r#"{"model": "an-garbage", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}"#,
        expect![[r#"502 api_error: upstream an sent an answer keel could not read: expected value at line 1 column 1"#]],
    )
    .await;
}

#[tokio::test]
async fn garbage_streams_end_with_an_error_event() {
    let h = harness::start(GARBAGE).await;
    let reply = h
        .post("/v1/chat/completions", &json!({"model": "garbage", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(reply.status, 502, "nothing reached the client yet, so the error is a plain response: {}", reply.text);
    assert_eq!(reply.json["error"]["code"], "upstream_stream_cut");
}

#[tokio::test]
async fn oversize_bodies_are_refused_with_413() {
    let h = harness::start_with(Options { max_body_bytes: 1024, ..Options::default() }).await;
    let big = json!({"model": "oa", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let reply = h.post("/v1/chat/completions", &big).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json["error"]["code"], "request_too_large");
    let reply = h.post("/v1/messages", &big).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json["error"]["type"], "request_too_large");
}

#[tokio::test]
async fn master_key_guards_every_endpoint_but_health() {
    let h = harness::start_with(Options { master_key: Some("keel-master-key"), ..Options::default() }).await;
    let body = json!({"model": "oa", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).to_string().into_bytes();
    let reply = h.post_raw("/v1/chat/completions", body.clone(), &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json["error"]["type"], "authentication_error");
    let reply = h.post_raw("/v1/messages", body.clone(), &[("x-api-key", "wrong")]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json["error"]["type"], "authentication_error");
    let reply = h.post_raw("/v1/chat/completions", body.clone(), &[("authorization", "Bearer keel-master-key")]).await;
    assert_eq!(reply.status, 200);
    let reply = h.post_raw("/v1/messages", body, &[("x-api-key", "keel-master-key")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(h.get("/health").await.status, 200);
    assert_eq!(h.get("/metrics").await.status, 401);
}

#[tokio::test]
async fn secrets_never_reach_errors_traces_or_metrics() {
    let wrong = "sk-wrong-key-abcdefghijklmnopqrstuvwxyz";
    let mut h = harness::start_with(Options { key_given_to_keel: wrong, ..Options::default() }).await;
    for model in ["oa", "an", "ge"] {
        let reply = h.post("/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "x"}]})).await;
        assert_eq!(reply.status, 502, "{}", reply.text);
        assert!(reply.text.contains("[redacted]"), "the upstream's echo of the key is scrubbed: {}", reply.text);
        assert!(!reply.text.contains(wrong) && !reply.text.contains(UPSTREAM_KEY), "{}", reply.text);
    }
    let metrics = h.get("/metrics").await.text;
    assert!(!metrics.contains("wrong-key"));
    let traces = h.traces().await;
    assert_eq!(traces.len(), 3);
    let dump = serde_json::to_string(&traces).unwrap();
    assert!(dump.contains("Incorrect API key provided"));
    assert!(!dump.contains("wrong-key"), "{dump}");
}

#[tokio::test]
async fn every_call_leaves_a_trace_with_tokens_cost_and_bodies() {
    let mut h = harness::start(GARBAGE).await;
    h.post("/v1/chat/completions", &json!({"model": "oa", "messages": [{"role": "user", "content": "one two"}]})).await;
    h.post("/v1/messages", &json!({"model": "an", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "hey"}]})).await;
    h.post("/v1/chat/completions", &json!({"model": "garbage", "messages": [{"role": "user", "content": "x"}]})).await;
    h.post("/v1/chat/completions", &json!({"model": "missing", "messages": [{"role": "user", "content": "x"}]})).await;
    let traces = h.traces().await;
    assert_eq!(traces.len(), 4);
    let by_alias = |alias: &str| traces.iter().find(|t| t.alias == alias).unwrap().clone();
    let oa = by_alias("oa");
    assert_eq!((oa.status, oa.provider.as_str(), oa.model.as_str(), oa.endpoint.as_str()), (200, "oa", "gpt-4o-mini", "chat.completions"));
    assert_eq!((oa.input_tokens, oa.output_tokens), (5, 3));
    let expected_cost = (5.0 * 0.15 + 3.0 * 0.60) / 1e6;
    assert!((oa.cost_usd.unwrap() - expected_cost).abs() < 1e-12, "{:?}", oa.cost_usd);
    assert!(oa.request_body.as_deref().unwrap().contains("one two"));
    let response: Value = serde_json::from_str(oa.response_body.as_deref().unwrap()).unwrap();
    assert_eq!(response["choices"][0]["message"]["content"], "echo: one two");
    let an = by_alias("an");
    assert!(an.stream && an.ttft_ms.is_some());
    assert_eq!((an.input_tokens, an.output_tokens, an.endpoint.as_str()), (4, 2, "messages"));
    let streamed: Value = serde_json::from_str(an.response_body.as_deref().unwrap()).unwrap();
    assert_eq!(streamed["content"][0]["text"], "echo: hey");
    let garbage = by_alias("garbage");
    assert_eq!(garbage.status, 502);
    assert!(garbage.error.unwrap().contains("could not read"));
    assert_eq!(by_alias("missing").status, 404);
}

#[tokio::test]
async fn bodies_stay_out_of_traces_when_switched_off() {
    let mut h = harness::start_with(Options { log_bodies: false, ..Options::default() }).await;
    h.post("/v1/chat/completions", &json!({"model": "oa", "messages": [{"role": "user", "content": "private"}]})).await;
    let traces = h.traces().await;
    assert_eq!(traces.len(), 1);
    assert!(traces[0].request_body.is_none() && traces[0].response_body.is_none());
    assert_eq!(traces[0].output_tokens, 2);
}

#[tokio::test]
async fn metrics_count_requests_tokens_cost_and_latency() {
    let h = harness::start("").await;
    h.post("/v1/chat/completions", &json!({"model": "oa", "messages": [{"role": "user", "content": "a b"}]})).await;
    h.post("/v1/chat/completions", &json!({"model": "nope", "messages": [{"role": "user", "content": "a"}]})).await;
    let metrics = h.get("/metrics").await.text;
    for line in [
        r#"keel_requests_total{endpoint="chat.completions",alias="oa",provider="oa",status="200"} 1"#,
        r#"keel_requests_total{endpoint="chat.completions",alias="nope",provider="",status="404"} 1"#,
        r#"keel_errors_total{endpoint="chat.completions",alias="nope",provider="",code="model_not_found"} 1"#,
        r#"keel_tokens_total{alias="oa",provider="oa",model="gpt-4o-mini",kind="input"} 5"#,
        r#"keel_tokens_total{alias="oa",provider="oa",model="gpt-4o-mini",kind="output"} 3"#,
        r#"keel_request_duration_seconds_count{endpoint="chat.completions",alias="oa",provider="oa"} 1"#,
        r#"keel_overhead_seconds_count{endpoint="chat.completions"} 2"#,
        "# TYPE keel_cost_usd_total counter",
        r#"keel_route_in_flight{alias="oa",provider="oa",model="gpt-4o-mini"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}\n{metrics}");
    }
    assert!(metrics.contains(r#"keel_cost_usd_total{alias="oa",provider="oa",model="gpt-4o-mini"} 0.0000025"#), "{metrics}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_leaves_a_trace() {
    let mut h = harness::start("[[models]]\nname = \"drip\"\nroutes = [{ provider = \"oa\", model = \"drip\" }]\n").await;
    let body = json!({"model": "drip", "stream": true, "messages": [{"role": "user", "content": "a b c d e f g h"}]});
    let mut response = h.client.post(format!("{}/v1/chat/completions", h.base)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(response);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let traces = h.traces().await;
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].status, 499);
    assert_eq!(traces[0].error.as_deref(), Some("the client closed the stream before it ended"));
}
