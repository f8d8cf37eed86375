//! Routing: fallbacks, retries, Retry-After, timeouts, streams that fall over only before
//! their first byte, and the weighted, least-busy and latency strategies.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::harness;

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

fn chat_stream(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

const ROUTES: &str = r#"
[providers.tight]
kind = "openai"
base_url = "http://FAKE_ADDR/v1"
api_key_env = "FAKE_KEY"
timeout_s = 0.3
first_token_timeout_s = 0.3

[providers.closed]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
connect_timeout_s = 0.5

[[models]]
name = "fallback"
retry_base_ms = 5
routes = [{ provider = "oa", model = "fail-500" }, { provider = "an", model = "claude-haiku-4-5" }]

[[models]]
name = "no-fallback-on-400"
routes = [{ provider = "oa", model = "bad-request" }, { provider = "an", model = "claude-haiku-4-5" }]

[[models]]
name = "flaky"
retry_base_ms = 5
routes = [{ provider = "ge", model = "gemini-flaky" }, { provider = "an", model = "claude-haiku-4-5" }]

[[models]]
name = "rate-limited"
retries = 2
retry_base_ms = 5000
routes = [{ provider = "an", model = "fail-429" }, { provider = "oa", model = "gpt-4o-mini" }]

[[models]]
name = "all-fail"
retries = 0
routes = [{ provider = "oa", model = "fail-500" }, { provider = "ge", model = "fail-500" }]

[[models]]
name = "timeout"
retries = 0
routes = [{ provider = "tight", model = "slow-2000" }, { provider = "oa", model = "gpt-4o-mini" }]

[[models]]
name = "unreachable"
retries = 0
routes = [{ provider = "closed", model = "x" }, { provider = "oa", model = "gpt-4o-mini" }]

[[models]]
name = "cut"
routes = [{ provider = "oa", model = "cut" }, { provider = "an", model = "claude-haiku-4-5" }]

[[models]]
name = "an-cut"
routes = [{ provider = "an", model = "cut" }]

[[models]]
name = "weighted"
strategy = "weighted"
routes = [{ provider = "oa", model = "heavy", weight = 3 }, { provider = "oa", model = "light", weight = 1 }]

[[models]]
name = "least-busy"
strategy = "least-busy"
routes = [{ provider = "oa", model = "hold" }, { provider = "oa", model = "free" }]

[[models]]
name = "latency"
strategy = "latency"
routes = [{ provider = "oa", model = "slow-60" }, { provider = "oa", model = "quick" }]
"#;

#[tokio::test]
async fn falls_over_on_5xx_but_not_on_a_400_the_request_caused() {
    let h = harness::start(ROUTES).await;
    let reply = h.post("/v1/chat/completions", &chat("fallback")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-keel-provider"), "an");
    assert_eq!(reply.header("x-keel-attempts"), "3", "two tries on the failing route, one on the next");

    let reply = h.post("/v1/chat/completions", &chat("no-fallback-on-400")).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.header("x-keel-attempts"), "1");
    assert!(reply.json["error"]["message"].as_str().unwrap().contains("the fake upstream rejects this request"));
}

#[tokio::test]
async fn retries_a_transient_failure_on_the_same_route() {
    let h = harness::start(ROUTES).await;
    let reply = h.post("/v1/chat/completions", &chat("flaky")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-keel-provider"), "ge");
    assert_eq!(reply.header("x-keel-attempts"), "2");
}

#[tokio::test]
async fn honours_retry_after_instead_of_its_own_backoff() {
    let h = harness::start(ROUTES).await;
    let started = std::time::Instant::now();
    let reply = h.post("/v1/chat/completions", &chat("rate-limited")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-keel-provider"), "oa");
    assert_eq!(reply.header("x-keel-attempts"), "4");
    // Two waits of the upstream's 20 ms Retry-After, not two of the 5 s backoff.
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn every_route_failing_reports_the_last_error() {
    let h = harness::start(ROUTES).await;
    let reply = h.post("/v1/chat/completions", &chat("all-fail")).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    let message = reply.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("every route of `all-fail` failed"), "{message}");
    assert!(message.contains("upstream ge answered 500"), "{message}");
    let reply = h.post("/v1/messages", &json!({"model": "all-fail", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(reply.json["type"], "error");
    assert_eq!(reply.json["error"]["type"], "api_error");
}

#[tokio::test]
async fn timeouts_and_connection_errors_fall_over() {
    let h = harness::start(ROUTES).await;
    for body in [chat("timeout"), chat_stream("timeout"), chat("unreachable"), chat_stream("unreachable")] {
        let reply = h.post("/v1/chat/completions", &body).await;
        assert_eq!(reply.status, 200, "{body}: {}", reply.text);
        assert_eq!(reply.header("x-keel-provider"), "oa", "{body}");
        assert_eq!(reply.header("x-keel-attempts"), "2", "{body}");
    }
}

#[tokio::test]
async fn a_stream_falls_over_before_its_first_byte_only() {
    let h = harness::start(ROUTES).await;
    let reply = h.post("/v1/chat/completions", &chat_stream("fallback")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-keel-provider"), "an");
    assert!(reply.text.ends_with("data: [DONE]\n\n"));

    // The cut upstream delivered a first chunk, so the client already has bytes: no
    // fallback, and the stream ends with an error in OpenAI's shape and no [DONE].
    let reply = h.post("/v1/chat/completions", &chat_stream("cut")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-keel-provider"), "oa");
    let data = reply.data();
    assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
    let last = data.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_cut", "{}", reply.text);
    assert!(!reply.text.contains("[DONE]"));

    let reply = h.post("/v1/messages", &json!({"model": "an-cut", "max_tokens": 9, "stream": true, "messages": [{"role": "user", "content": "a b c d"}]})).await;
    let events = reply.events();
    assert_eq!(events.last().unwrap().0.as_deref(), Some("error"), "{}", reply.text);
    assert!(!reply.text.contains("message_stop"));
}

#[tokio::test]
async fn weighted_routes_split_the_load() {
    let h = harness::start(ROUTES).await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        let reply = h.post("/v1/chat/completions", &chat("weighted")).await;
        *counts.entry(reply.header("x-keel-model").to_string()).or_default() += 1;
    }
    let heavy = counts["heavy"];
    // 3:1 weights: 300 expected; 5 standard deviations is ±43.
    assert!((257..=343).contains(&heavy), "{counts:?}");
}

#[tokio::test]
async fn least_busy_avoids_the_route_with_calls_in_flight() {
    let h = harness::start(ROUTES).await;
    let mut held = Vec::new();
    // Pin calls on the `hold` route: with both idle, least-busy keeps config order.
    for _ in 0..3 {
        let client = h.client.clone();
        let url = format!("{}/v1/chat/completions", h.base);
        held.push(tokio::spawn(async move { client.post(url).json(&chat("least-busy")).send().await.unwrap().headers().clone() }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let reply = h.post("/v1/chat/completions", &chat("least-busy")).await;
    assert_eq!(reply.header("x-keel-model"), "free");
    h.fake.release_held();
    let first = held.remove(0).await.unwrap();
    assert_eq!(first.get("x-keel-model").unwrap(), "hold");
}

#[tokio::test]
async fn latency_strategy_prefers_the_faster_route() {
    let h = harness::start(ROUTES).await;
    // Both routes get measured first (untried routes go first), then the fast one wins.
    let mut models = Vec::new();
    for _ in 0..6 {
        models.push(h.post("/v1/chat/completions", &chat("latency")).await.header("x-keel-model").to_string());
    }
    assert!(models[..2].contains(&"slow-60".to_string()), "{models:?}");
    assert!(models[2..].iter().all(|m| m == "quick"), "{models:?}");
    let metrics = h.get("/metrics").await.text;
    assert!(metrics.contains("keel_route_latency_ewma_seconds{alias=\"latency\",provider=\"oa\",model=\"slow-60\"} 0.0"), "{metrics}");
}
