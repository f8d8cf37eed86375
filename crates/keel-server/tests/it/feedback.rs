//! Scores on production traffic over HTTP: `POST /v1/feedback` on a trace (numbers,
//! booleans, categories; bad ids, unknown traces and bad values refused with the reason),
//! and `[[evals.online]]` evaluators that score a sample of finished calls off the request
//! path, filtered by model.

use std::time::Duration;

use serde_json::json;

use crate::harness;

const ONLINE: &str = r#"
[[evals.online]]
name = "echoes"
assert = { type = "icontains", value = "ECHO" }

[[evals.online]]
name = "only-an"
model = "an"
assert = { type = "contains", value = "x" }
"#;

async fn scores(h: &harness::Harness, trace: &str, name: &str) -> Vec<keel_store::Score> {
    for _ in 0..100 {
        let found: Vec<_> = h.store.scores(&[trace]).unwrap().into_iter().filter(|s| s.name == name).collect();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn feedback_and_online_evals_score_traces() {
    let h = harness::start(ONLINE).await;
    let reply = h.post("/v1/chat/completions", &json!({"model": "oa", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let trace = reply.header("x-keel-trace-id").to_string();

    let online = scores(&h, &trace, "echoes").await;
    assert_eq!(online.len(), 1, "the online evaluator scored the call");
    assert_eq!((online[0].value, online[0].label.as_deref(), online[0].source.as_str()), (Some(1.0), Some("pass"), "online:echoes"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.store.scores(&[&trace]).unwrap().iter().all(|s| s.name != "only-an"), "an evaluator for another model skips it");

    for (value, stored) in [(json!(true), (Some(1.0), Some("true"))), (json!(0.25), (Some(0.25), None)), (json!("wrong-tone"), (None, Some("wrong-tone")))] {
        let reply = h.post("/v1/feedback", &json!({"trace_id": trace, "name": "user", "value": value, "comment": "from the app"})).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let last = h.store.scores(&[&trace]).unwrap().into_iter().rfind(|s| s.name == "user").unwrap();
        assert_eq!((last.value, last.label.as_deref(), last.source.as_str()), (stored.0, stored.1, "feedback"));
    }

    for (body, status, says) in [
        (json!({"trace_id": "nope", "name": "x", "value": 1}), 400, "not a keel trace id"),
        (json!({"trace_id": "0".repeat(32), "name": "x", "value": 1}), 404, "no trace"),
        (json!({"trace_id": trace, "name": "x", "value": {"a": 1}}), 400, "number, a boolean or a category"),
        (json!({"trace_id": trace, "name": "", "value": 1}), 400, "name"),
        (json!({"trace_id": trace, "name": "x", "value": 1, "scroe": 2}), 400, "scroe"),
    ] {
        let reply = h.post("/v1/feedback", &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        assert!(reply.text.contains(says), "{body}: {}", reply.text);
    }
}

#[tokio::test]
async fn a_bad_online_evaluator_is_refused_at_startup() {
    let config = keel_core::config::Config::from_toml_str(
        "[[evals.online]]\nname = \"typo\"\nassert = { type = \"contians\", value = \"x\" }\n",
    )
    .unwrap();
    let err = keel_server::evals::Online::new(&config.evals.online).unwrap_err().to_string();
    assert!(err.contains("`typo`") && err.contains("`contians`"), "{err}");
    let err = keel_core::config::Config::from_toml_str("[[evals.online]]\nname = \"n\"\nsample_rate = 2\nassert = { type = \"contains\" }\n").unwrap_err();
    assert!(err.to_string().contains("sample_rate"), "{err}");
}
