//! The same-format lane: a request whose alias routes only to providers of its own format
//! goes upstream as it came (only `model` replaced), fields keel does not know included, and
//! its answer comes back byte for byte; usage still reaches the trace; an alias that mixes
//! kinds is translated instead.

use serde_json::{Value, json};

use crate::harness;

const MIXED: &str = "[[models]]\nname = \"mixed\"\nstrategy = \"fallback\"\nroutes = [{ provider = \"oa\", model = \"gpt-4o-mini\" }, { provider = \"an\", model = \"claude-haiku-4-5\" }]\n";

/// A Messages request as Claude Code sends one: prompt caching, thinking, context
/// management, deferred tools, a server tool, and a field newer than keel.
fn claude_code_request(stream: bool) -> Value {
    json!({
        "model": "an", "max_tokens": 32000, "stream": stream,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "system": [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}}],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
            {"name": "Later", "description": "Loaded later", "input_schema": {"type": "object"}, "defer_loading": true},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there", "cache_control": {"type": "ephemeral"}}]}],
        "metadata": {"user_id": "u-1"},
        "a_field_from_next_year": {"x": [1, 2.5, "three"]},
    })
}

#[tokio::test]
async fn a_messages_request_reaches_anthropic_as_it_came() {
    let mut h = harness::start("").await;
    for stream in [false, true] {
        let sent = claude_code_request(stream);
        let reply = h.post_raw("/v1/messages", sent.to_string().into_bytes(), &[("anthropic-beta", "context-management-2025-06-27")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let (path, upstream) = h.last_upstream();
        assert_eq!(path, "/v1/messages");
        let mut expected = sent.clone();
        expected["model"] = json!("claude-haiku-4-5");
        assert_eq!(upstream, expected, "every field arrives as sent, only the model replaced");
        if stream {
            let names: Vec<String> = reply.events().into_iter().filter_map(|(name, _)| name).collect();
            assert_eq!(names.first().map(String::as_str), Some("message_start"));
            assert_eq!(names.last().map(String::as_str), Some("message_stop"));
        } else {
            assert_eq!(reply.json["type"], "message");
            assert_eq!(reply.json["model"], "claude-haiku-4-5", "the answer is the upstream's own");
        }
    }
    let traces = h.traces().await;
    assert_eq!(traces.len(), 2);
    for trace in &traces {
        assert_eq!((trace.status, trace.endpoint.as_str(), trace.provider.as_str()), (200, "messages", "an"));
        assert!(trace.input_tokens > 0 && trace.output_tokens > 0, "usage reaches the trace: {trace:?}");
        assert!(trace.cost_usd.is_some());
    }
}

#[tokio::test]
async fn an_openai_stream_gets_usage_only_when_it_asks() {
    let mut h = harness::start("").await;
    let body = json!({"model": "oa", "stream": true, "messages": [{"role": "user", "content": "count these words"}]});
    let reply = h.post("/v1/chat/completions", &body).await;
    assert_eq!(reply.status, 200);
    let (_, upstream) = h.last_upstream();
    assert_eq!(upstream["stream_options"]["include_usage"], true, "keel asks the upstream for usage");
    let chunks = reply.data();
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none_or(Value::is_null)), "the client did not ask for usage");
    let text: String = chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect();
    assert_eq!(text, "echo: count these words");
    assert_eq!(reply.events().last().map(|(_, data)| data.as_str()), Some("[DONE]"));

    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let reply = h.post("/v1/chat/completions", &asked).await;
    let usage = reply.data().into_iter().find_map(|chunk| chunk.get("usage").filter(|u| !u.is_null()).cloned());
    assert!(usage.is_some_and(|u| u["prompt_tokens"].as_u64() > Some(0)), "{}", reply.text);

    let traces = h.traces().await;
    assert_eq!(traces.len(), 2);
    assert!(traces.iter().all(|t| t.input_tokens > 0 && t.output_tokens > 0 && t.ttft_ms.is_some()), "{traces:?}");
}

#[tokio::test]
async fn upstream_errors_come_back_with_their_status_and_fall_over_as_before() {
    let h = harness::start(
        "[[models]]\nname = \"bad\"\nroutes = [{ provider = \"oa\", model = \"bad-request\" }]\n[[models]]\nname = \"flaky\"\nretry_base_ms = 1\nroutes = [{ provider = \"oa\", model = \"flaky\" }]\n",
    )
    .await;
    let reply = h.post("/v1/chat/completions", &json!({"model": "bad", "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(reply.json["error"]["message"].as_str().unwrap().contains("rejects this request"), "{}", reply.text);
    let reply = h.post("/v1/chat/completions", &json!({"model": "flaky", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(reply.status, 200, "a 503 before the first byte is retried: {}", reply.text);
    assert_eq!(reply.header("x-keel-attempts"), "2");
}

#[tokio::test]
async fn an_alias_that_mixes_kinds_is_translated() {
    let h = harness::start(MIXED).await;
    let reply = h.post("/v1/chat/completions", &json!({"model": "mixed", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["model"], "mixed", "a translated answer names the alias");
    let reply = h.post("/v1/chat/completions", &json!({"model": "oa", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(reply.json["model"], "gpt-4o-mini", "a forwarded answer is the upstream's own");
}

#[tokio::test]
async fn a_whole_forwarded_answer_leaves_its_usage_and_finish_reason_on_the_trace() {
    let mut h = harness::start("").await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]);
    let reply = h
        .post("/v1/chat/completions", &json!({"model": "oa", "tools": tools, "messages": [{"role": "user", "content": "look it up"}]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "lookup");
    let reply = h.post("/v1/chat/completions", &json!({"model": "oa", "messages": [{"role": "user", "content": "say it"}]})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let traces = h.traces().await;
    let mut reasons: Vec<&str> = traces.iter().filter_map(|t| t.finish_reason.as_deref()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["stop", "tool_calls"]);
    for trace in &traces {
        assert!(trace.input_tokens > 0 && trace.output_tokens > 0 && trace.cost_usd.is_some(), "{trace:?}");
        let stored: Value = serde_json::from_str(trace.response_body.as_deref().unwrap()).unwrap();
        assert_eq!(stored["model"], "gpt-4o-mini", "the trace keeps the upstream's answer as it came");
    }
}
