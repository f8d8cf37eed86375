//! Virtual keys and teams through the admin API and the model endpoints: who gets in, what
//! they may call, the error shapes, revocation and rotation, and the key id (never the key)
//! on traces and metrics.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::harness::{self, Harness, Options, Reply};

const MASTER: &str = "keel-master-key-for-tests";

async fn admin(h: &Harness, method: &str, path: &str, body: Option<Value>, key: &str) -> Reply {
    let url = format!("{}{path}", h.base);
    let mut request = match method {
        "GET" => h.client.get(url),
        "DELETE" => h.client.delete(url),
        _ => h.client.post(url),
    }
    .header("authorization", format!("Bearer {key}"));
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply { status, headers, json: serde_json::from_str(&text).unwrap_or(Value::Null), text }
}

fn chat(model: &str) -> Vec<u8> {
    json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes()
}

async fn with_key(h: &Harness, path: &str, model: &str, key: &str) -> Reply {
    let header = if path == "/v1/messages" { ("x-api-key", key.to_string()) } else { ("authorization", format!("Bearer {key}")) };
    h.post_raw(path, chat(model), &[(header.0, &header.1)]).await
}

#[tokio::test]
async fn virtual_keys_let_in_only_what_they_allow_and_name_themselves_on_traces() {
    let mut h = harness::start_with(Options { master_key: Some(MASTER), ..Options::default() }).await;
    let made = admin(&h, "POST", "/v1/admin/teams", Some(json!({"name": "acme"})), MASTER).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let made = admin(&h, "POST", "/v1/admin/teams", Some(json!({"name": "support", "parent": "acme", "rpm": 100})), MASTER).await;
    assert_eq!(made.json["parent"], "acme");
    let created = admin(&h, "POST", "/v1/admin/keys", Some(json!({"team": "support", "name": "bot", "models": ["oa", "an"]})), MASTER).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let secret = created.json["key"].as_str().unwrap().to_string();
    let id = created.json["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-keel-") && secret.len() == 48, "{secret}");

    // The key works on both APIs for the aliases it names.
    let ok = with_key(&h, "/v1/chat/completions", "oa", &secret).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let ok = with_key(&h, "/v1/messages", "an", &secret).await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    // Another alias is refused in each API's own shape, and the upstream never hears of it.
    let before = h.fake.requests.load(Ordering::SeqCst);
    let refused = with_key(&h, "/v1/chat/completions", "ge", &secret).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.json["error"]["type"], "permission_error");
    assert_eq!(refused.json["error"]["code"], "model_not_allowed");
    assert!(refused.json["error"]["message"].as_str().unwrap().contains("may not call model `ge`"), "{}", refused.text);
    let refused = with_key(&h, "/v1/messages", "ge", &secret).await;
    assert_eq!(refused.json["type"], "error");
    assert_eq!(refused.json["error"]["type"], "permission_error");
    let refused = h
        .post_raw("/v1/embeddings", json!({"model": "ge", "input": "x"}).to_string().into_bytes(), &[("authorization", &format!("Bearer {secret}"))])
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(h.fake.requests.load(Ordering::SeqCst), before, "nothing refused reached the upstream");

    // Unknown, missing and malformed keys get 401 in the API's shape.
    let unknown = with_key(&h, "/v1/chat/completions", "oa", "sk-keel-000000000000000000000000000000000000000000").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json["error"]["type"], "authentication_error");
    let unknown = with_key(&h, "/v1/messages", "an", "sk-keel-nope").await;
    assert_eq!((unknown.status, unknown.json["error"]["type"].as_str()), (401, Some("authentication_error")));
    assert_eq!(h.post_raw("/v1/chat/completions", chat("oa"), &[]).await.status, 401);

    // The admin API takes only the master key.
    let denied = admin(&h, "GET", "/v1/admin/keys", None, &secret).await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert_eq!(denied.json["error"]["code"], "admin_only");

    // Listings never hold a secret or its hash; they page.
    for n in 0..3 {
        admin(&h, "POST", "/v1/admin/keys", Some(json!({"team": "acme", "name": format!("k{n}")})), MASTER).await;
    }
    let first = admin(&h, "GET", "/v1/admin/keys?limit=2", None, MASTER).await;
    assert_eq!(first.json["data"].as_array().unwrap().len(), 2);
    assert_eq!((first.json["total"].as_u64(), first.json["has_more"].as_bool()), (Some(4), Some(true)));
    let rest = admin(&h, "GET", "/v1/admin/keys?limit=2&offset=2", None, MASTER).await;
    assert_eq!((rest.json["data"].as_array().unwrap().len(), rest.json["has_more"].as_bool()), (2, Some(false)));
    let team_keys = admin(&h, "GET", "/v1/admin/keys?team=support", None, MASTER).await;
    assert_eq!(team_keys.json["total"], 1);
    for listing in [&first, &rest, &team_keys] {
        assert!(!listing.text.contains(&secret[14..]) && !listing.text.contains("hash"), "{}", listing.text);
    }
    let shown = admin(&h, "GET", &format!("/v1/admin/keys/{id}"), None, MASTER).await;
    assert_eq!((shown.json["status"].as_str(), shown.json["team"].as_str()), (Some("active"), Some("support")));

    // Bad admin input: a clear 400 / 404 / 409, nothing stored.
    let bad = admin(&h, "POST", "/v1/admin/keys", Some(json!({"team": "support", "colour": "red"})), MASTER).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("colour"), "{}", bad.text);
    let bad = admin(&h, "POST", "/v1/admin/keys", Some(json!({"team": "nobody"})), MASTER).await;
    assert_eq!(bad.status, 404, "{}", bad.text);
    assert!(bad.text.contains("no team nobody"));
    let bad = admin(&h, "DELETE", "/v1/admin/teams/acme", None, MASTER).await;
    assert_eq!(bad.status, 409, "{}", bad.text);

    // Revoked: refused at once on this replica, with the reason.
    let revoked = admin(&h, "DELETE", &format!("/v1/admin/keys/{id}"), None, MASTER).await;
    assert_eq!(revoked.json["status"], "revoked");
    let refused = with_key(&h, "/v1/chat/completions", "oa", &secret).await;
    assert_eq!(refused.status, 401);
    assert!(refused.text.contains("has been revoked"), "{}", refused.text);

    // Traces and metrics name the key by id and team, never by secret.
    let metrics = admin(&h, "GET", "/metrics", None, MASTER).await.text;
    assert!(metrics.contains(&format!("keel_key_requests_total{{key_id=\"{id}\",team=\"support\",status=\"200\"}} 2")), "{metrics}");
    assert!(metrics.contains(&format!("keel_key_requests_total{{key_id=\"{id}\",team=\"support\",status=\"403\"}} 3")), "{metrics}");
    assert!(!metrics.contains(&secret[14..]));
    let traces = h.traces().await;
    let keyed: Vec<_> = traces.iter().filter(|t| t.key_id.as_deref() == Some(id.as_str())).collect();
    assert_eq!(keyed.len(), 5, "2 answered, 3 refused");
    assert!(keyed.iter().all(|t| t.team.as_deref() == Some("support")));
    assert!(keyed.iter().any(|t| t.status == 403 && t.alias == "ge" && t.provider.is_empty()));
    let dump = serde_json::to_string(&traces).unwrap();
    assert!(!dump.contains(&secret[14..]), "no trace holds the secret");
}

#[tokio::test]
async fn a_key_changed_in_the_store_is_seen_within_a_second_and_rotation_keeps_a_grace_period() {
    // No master key: keys alone close the server, and admin needs a master key.
    let h = harness::start_with(Options::default()).await;
    assert_eq!(h.post_raw("/v1/chat/completions", chat("oa"), &[]).await.status, 200, "open while no key exists");
    let denied = admin(&h, "GET", "/v1/admin/teams", None, "anything").await;
    assert_eq!((denied.status, denied.json["error"]["code"].as_str()), (403, Some("admin_disabled")));

    // What `keel keys create` does, on the store another process shares.
    keel_teams::admin::put_team(&h.store, keel_teams::admin::TeamSpec { name: "ml".into(), ..Default::default() }).unwrap();
    let (secret, record) =
        keel_teams::admin::create_key(&h.store, keel_teams::admin::KeySpec { team: "ml".into(), ..Default::default() }).unwrap();
    let seen = async |secret: &str, want: u16| {
        let started = std::time::Instant::now();
        loop {
            let status = with_key(&h, "/v1/chat/completions", "oa", secret).await.status;
            if status == want {
                return;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "still {status}, not {want}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    seen(&secret, 200).await;
    assert_eq!(h.post_raw("/v1/chat/completions", chat("oa"), &[]).await.status, 401, "a key exists now: anonymous calls stop");

    // Rotation: the new key works, the old one until its grace ends.
    let (next, _) = keel_teams::admin::rotate_key(&h.store, &record.id, 1).unwrap();
    seen(&next, 200).await;
    assert_eq!(with_key(&h, "/v1/chat/completions", "oa", &secret).await.status, 200, "inside the grace period");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let expired = with_key(&h, "/v1/chat/completions", "oa", &secret).await;
    assert_eq!(expired.status, 401);
    assert!(expired.text.contains("has expired"), "{}", expired.text);

    // Revoked elsewhere: refused here within a second (the reload runs every 250 ms).
    h.store.revoke_key(&h.store.key(&next[..14]).unwrap().id).unwrap();
    seen(&next, 401).await;
}

/// An alias whose every call costs exactly its worst case: $1 an output token, none for
/// input, and the fake's answer to "hi" (`echo: hi`) is exactly `max_tokens = 2` tokens. The
/// upstream takes 50 ms, so concurrent calls overlap in flight.
const METERED: &str = r#"
[[models]]
name = "metered"
routes = [{ provider = "oa", model = "metered-slow-50" }]

[prices.metered-slow-50]
input = 0.0
output = 1000000.0
"#;

fn metered(user: &str) -> Vec<u8> {
    json!({"model": "metered", "max_tokens": 2, "user": user, "messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes()
}

async fn new_key(h: &Harness, spec: Value) -> String {
    let created = admin(h, "POST", "/v1/admin/keys", Some(spec), MASTER).await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.json["key"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn concurrent_calls_never_overspend_a_team_budget_and_are_refused_only_when_one_no_longer_fits() {
    let mut h = harness::start_with(Options { master_key: Some(MASTER), extra: METERED.into(), ..Options::default() }).await;
    // $100 a day affords exactly 50 calls of $2; 200 arrive at once, over two keys.
    admin(&h, "POST", "/v1/admin/teams", Some(json!({"name": "org"})), MASTER).await;
    admin(&h, "POST", "/v1/admin/teams", Some(json!({"name": "apps", "parent": "org", "budget_usd": 100, "budget_period": "day"})), MASTER).await;
    let keys = [new_key(&h, json!({"team": "apps"})).await, new_key(&h, json!({"team": "apps"})).await];
    let calls = (0..200).map(|i| {
        let auth = format!("Bearer {}", keys[i % 2]);
        let h = &h;
        async move { h.post_raw("/v1/chat/completions", metered("u"), &[("authorization", &auth)]).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status != 200).collect();
    assert_eq!(ok, 50, "every call that fit was admitted, and no more");
    for r in &refused {
        assert_eq!((r.status, r.json["error"]["code"].as_str()), (429, Some("budget_exceeded")), "{}", r.text);
        assert!(r.text.contains("team apps"), "{}", r.text);
    }
    // Traces are written off the request path; once they are on disk, spend sums them.
    let traces = h.traces().await;
    let spend = admin(&h, "GET", "/v1/admin/spend?by=team", None, MASTER).await;
    assert_eq!(spend.json["data"][0]["group"], "apps", "{}", spend.text);
    assert_eq!(spend.json["data"][0]["usd"].as_f64(), Some(100.0), "{}", spend.text);
    assert_eq!(spend.json["data"][0]["requests"].as_u64(), Some(200), "refusals are traced too");
    let spent: f64 = traces.iter().filter_map(|t| t.cost_usd).sum();
    assert_eq!(spent, 100.0, "0 overspend");
    assert_eq!(h.fake.requests.load(Ordering::SeqCst), 50, "only admitted calls reached the upstream");
}

#[tokio::test]
async fn a_budget_restarts_from_the_traces_and_end_users_have_their_own() {
    let mut h = harness::start_with(Options { master_key: Some(MASTER), extra: METERED.into(), ..Options::default() }).await;
    admin(&h, "POST", "/v1/admin/teams", Some(json!({"name": "t"})), MASTER).await;
    let key = new_key(&h, json!({"team": "t", "budget_usd": 10, "user_budget_usd": 4, "user_budget_period": "day"})).await;
    let auth = format!("Bearer {key}");
    let call = async |user: &str| h.post_raw("/v1/chat/completions", metered(user), &[("authorization", &auth)]).await;
    assert_eq!(call("alice").await.status, 200);
    assert_eq!(call("alice").await.status, 200);
    let third = call("alice").await;
    assert_eq!(third.status, 429, "{}", third.text);
    assert!(third.text.contains("user alice of key"), "{}", third.text);
    assert_eq!(call("bob").await.status, 200);
    assert_eq!(call("bob").await.status, 200);
    assert_eq!(call("carol").await.status, 200);
    let fifth = call("carol").await;
    assert_eq!(fifth.status, 429, "the key's own $10 is spent");
    assert!(fifth.text.contains("budget exceeded for key"), "{}", fifth.text);

    // A replica started now reads what was spent from the traces, so nothing resets.
    h.traces().await;
    let fresh = keel_teams::Directory::open(h.store.clone()).unwrap();
    let caller = fresh.authenticate(&key, keel_core::now_ms()).unwrap();
    let refused = fresh.reserve(&caller, Some("dave"), keel_teams::Ask { tokens: 2, usd: 2.0 }).unwrap_err();
    assert!(refused.to_string().contains("$10.000000 spent"), "{refused}");
}

#[tokio::test]
async fn rate_limits_answer_with_openai_headers_and_retry_after() {
    let h = harness::start_with(Options { master_key: Some(MASTER), ..Options::default() }).await;
    admin(&h, "POST", "/v1/admin/teams", Some(json!({"name": "t", "tpm": 100000})), MASTER).await;
    let key = new_key(&h, json!({"team": "t", "rpm": 3})).await;
    let auth = format!("Bearer {key}");
    for remaining in ["2", "1", "0"] {
        let ok = h.post_raw("/v1/chat/completions", chat("oa"), &[("authorization", &auth)]).await;
        assert_eq!(ok.status, 200, "{}", ok.text);
        assert_eq!(ok.header("x-ratelimit-limit-requests"), "3");
        assert_eq!(ok.header("x-ratelimit-remaining-requests"), remaining);
        assert!(ok.header("x-ratelimit-reset-requests").ends_with('s'), "{:?}", ok.headers);
        assert_eq!(ok.header("x-ratelimit-limit-tokens"), "100000", "the team's token limit");
    }
    let limited = h.post_raw("/v1/messages", chat("an"), &[("x-api-key", &key)]).await;
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert_eq!(limited.json["error"]["type"], "rate_limit_error");
    assert!(limited.text.contains("3 requests per minute"), "{}", limited.text);
    let wait: u64 = limited.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(limited.header("x-ratelimit-remaining-requests"), "0");
}
