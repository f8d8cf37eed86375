//! Registry prompts through the HTTP API: a chat request that names a prompt instead of
//! sending messages is rendered (config applied where the request is silent), traced with
//! the version it used, and kept on one A/B arm per user; unknown prompts, versions and
//! labels are 404s that name them, a missing variable a 400 that names it.

use serde_json::{Value, json};

use crate::harness;

const SUPPORT: &str = r#"{
  "messages": [
    {"role": "system", "content": "You help {{ company }} customers.{% if vip %} Be extra kind.{% endif %}"},
    {"placeholder": "history"},
    {"role": "user", "content": "{{ question }}"}
  ],
  "config": {"model": "oa", "temperature": 0.25, "max_tokens": 64}
}"#;

fn push(h: &harness::Harness, name: &str, body: &str, labels: &[&str]) -> u32 {
    let def = keel_eval::PromptDef::parse(body, None).unwrap();
    let version = h.store.push_prompt(name, &def.to_json(), "test").unwrap();
    for label in labels {
        h.store.set_prompt_label(name, label, version).unwrap();
    }
    version
}

fn vars() -> Value {
    json!({"company": "Acme", "vip": true, "question": "where is my parcel?", "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
}

#[tokio::test]
async fn a_chat_request_can_name_a_prompt_instead_of_messages() {
    let mut h = harness::start("[prompts]\ncache_ttl_s = 0\n").await;
    push(&h, "support", SUPPORT, &["production"]);
    // The lane (an OpenAI alias) and the translated path (a Gemini alias) both render it.
    let reply = h.post("/v1/chat/completions", &json!({"prompt": {"name": "support", "variables": vars()}})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-keel-prompt"), "support@1");
    let (_, upstream) = h.last_upstream();
    assert_eq!(upstream["model"], "gpt-4o-mini", "the prompt's config names the alias");
    assert_eq!(upstream["temperature"], 0.25);
    assert_eq!(upstream["max_tokens"], 64);
    assert_eq!(
        upstream["messages"],
        json!([
            {"role": "system", "content": "You help Acme customers. Be extra kind."},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "where is my parcel?"},
        ])
    );
    let reply = h
        .post("/v1/chat/completions", &json!({"model": "ge", "temperature": 0.9, "prompt": {"name": "support", "version": 1, "variables": vars()}}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let (_, upstream) = h.last_upstream();
    assert_eq!(upstream["generationConfig"]["temperature"], 0.9, "the request's own fields win: {upstream}");

    // Anthropic's entry point: system messages become `system`.
    let reply = h.post("/v1/messages", &json!({"model": "an", "messages": [], "prompt": {"name": "support", "label": "production", "variables": vars()}})).await;
    assert_eq!(reply.status, 200, "an empty `messages` beside `prompt` is none: {}", reply.text);
    assert_eq!(reply.header("x-keel-prompt"), "support@1");
    let (path, upstream) = h.last_upstream();
    assert_eq!(path, "/v1/messages");
    assert_eq!(upstream["system"], "You help Acme customers. Be extra kind.");
    assert_eq!(upstream["messages"].as_array().map(Vec::len), Some(3));
    assert_eq!(upstream["max_tokens"], 64);

    let traces = h.traces().await;
    assert_eq!(traces.len(), 3);
    for trace in &traces {
        assert_eq!((trace.prompt_name.as_deref(), trace.prompt_version, trace.prompt_arm.as_deref()), (Some("support"), Some(1), None), "{trace:?}");
    }
}

#[tokio::test]
async fn unknown_prompts_versions_labels_and_missing_variables_are_named() {
    let h = harness::start("[prompts]\ncache_ttl_s = 0\n").await;
    push(&h, "support", SUPPORT, &[]);
    let seen_before = h.fake.requests_seen().len();
    for (body, status, says) in [
        (json!({"prompt": {"name": "nope", "variables": vars()}}), 404, "no prompt `nope`"),
        (json!({"prompt": {"name": "support", "version": 7, "variables": vars()}}), 404, "no version 7"),
        (json!({"prompt": {"name": "support", "variables": vars()}}), 404, "no label `production`"),
        (json!({"prompt": {"name": "support", "label": "staging"}}), 404, "no label `staging`"),
        (json!({"prompt": {"name": "support", "version": 1, "variables": {"company": "Acme"}}}), 400, "`history`, `question`, `vip`"),
        (json!({"prompt": {"name": "support", "version": 1}, "messages": [{"role": "user", "content": "x"}]}), 400, "not both"),
        (json!({"prompt": {"name": "support", "labl": "x"}}), 400, "labl"),
    ] {
        let reply = h.post("/v1/chat/completions", &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        let message = reply.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
    }
    let reply = h.post("/v1/messages", &json!({"model": "an", "max_tokens": 5, "prompt": {"name": "nope"}})).await;
    assert_eq!((reply.status, reply.json["type"].as_str()), (404, Some("error")), "Anthropic's error shape: {}", reply.text);
    assert_eq!(h.fake.requests_seen().len(), seen_before, "nothing reached the upstream");
}

#[tokio::test]
async fn a_split_keeps_each_user_on_one_arm_and_a_moved_label_is_seen() {
    let mut h = harness::start("[prompts]\ncache_ttl_s = 0\n").await;
    push(&h, "greet", r#"{"text": "Say hello (v1)", "config": {"model": "oa"}}"#, &["production"]);
    push(&h, "greet", r#"{"text": "Say hello (v2)", "config": {"model": "oa"}}"#, &["candidate"]);
    h.store.set_prompt_split("greet", &[("production".into(), 50), ("candidate".into(), 50)]).unwrap();
    let mut arms = std::collections::BTreeMap::new();
    for user in 0..20 {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let reply = h.post("/v1/chat/completions", &json!({"user": format!("u{user}"), "prompt": "greet"})).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            let (_, upstream) = h.last_upstream();
            seen.insert(upstream["messages"][0]["content"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "user {user} saw {seen:?}");
        *arms.entry(seen.into_iter().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(arms.len(), 2, "both arms are used: {arms:?}");

    // The split removed and the label moved: the next request sees version 2 at once (ttl 0).
    h.store.set_prompt_split("greet", &[]).unwrap();
    h.store.set_prompt_label("greet", "production", 2).unwrap();
    let reply = h.post("/v1/chat/completions", &json!({"prompt": "greet"})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(h.last_upstream().1["messages"][0]["content"], "Say hello (v2)");

    let reply = h.get("/v1/prompts/greet?version=1").await;
    assert_eq!((reply.json["version"].as_u64(), reply.json["prompt"].as_str()), (Some(1), Some("Say hello (v1)")), "{}", reply.text);
    let reply = h.get("/v1/prompts/greet").await;
    assert_eq!(reply.json["version"], 2, "production by default");
    assert_eq!(h.get("/v1/prompts/greet?label=gone").await.status, 404);
    let reply = h.get("/v1/prompts").await;
    assert_eq!(reply.json["data"][0]["labels"]["production"], 2, "{}", reply.text);
    let rendered = h.post("/v1/prompts/greet/render", &json!({"version": 1})).await;
    assert_eq!(rendered.json["messages"][0]["content"], "Say hello (v1)", "{}", rendered.text);

    let traces = h.traces().await;
    let with_arm = traces.iter().filter(|t| t.prompt_arm.is_some()).count();
    assert_eq!(with_arm, 60, "every split request names its arm");
    assert!(traces.iter().any(|t| t.prompt_arm.as_deref() == Some("candidate") && t.prompt_version == Some(2)));
}
