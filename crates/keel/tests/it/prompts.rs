//! `keel prompts` as a user runs it: versions pushed from TOML, YAML and stdin, labels,
//! diffs, rendering with named missing variables, splits; and a label moved from the CLI
//! seen by a running `keel serve` once its cache's time to live has passed.

use std::io::Write;
use std::process::{Output, Stdio};

use crate::{Stopped, run, temp_dir};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {}", stdout(output)))
}

#[test]
fn prompts_are_pushed_labelled_diffed_rendered_and_split() {
    let dir = temp_dir("prompts");
    std::fs::write(dir.join("keel.toml"), "[store]\npath = \"keel.db\"\n").unwrap();
    std::fs::write(
        dir.join("v1.toml"),
        "messages = [\n  { role = \"system\", content = \"You help {{ company }}.\" },\n  { role = \"user\", content = \"{{ question }}\" },\n]\n[config]\nmodel = \"fast\"\ntemperature = 0.2\n",
    )
    .unwrap();
    std::fs::write(dir.join("v2.yaml"), "messages:\n  - role: system\n    content: You help {{ company }}. Be brief.\n  - role: user\n    content: '{{ question }}'\nconfig:\n  model: fast\n").unwrap();

    let pushed = json(&run(&["prompts", "push", "support", "v1.toml", "-m", "first", "--label", "production", "--json"], &dir));
    assert_eq!((pushed["version"].as_u64(), pushed["variables"].clone()), (Some(1), serde_json::json!(["company", "question"])));
    let pushed = json(&run(&["prompts", "push", "support", "v2.yaml", "-m", "brief", "--json"], &dir));
    assert_eq!(pushed["version"], 2);
    let mut child = crate::keel()
        .args(["prompts", "push", "support", "-", "-m", "from stdin", "--json"])
        .current_dir(&dir)
        .env("KEEL_HOME", dir.join("home"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(br#"{"text": "Hello {{ name }}"}"#).unwrap();
    assert_eq!(json(&child.wait_with_output().unwrap())["version"], 3);

    let list = json(&run(&["prompts", "list", "--json"], &dir));
    assert_eq!(list[0]["name"], "support");
    assert_eq!((list[0]["latest"].as_u64(), list[0]["labels"]["production"].as_u64()), (Some(3), Some(1)));
    let shown = json(&run(&["prompts", "show", "support", "--json"], &dir));
    assert_eq!((shown["version"].as_u64(), shown["message"].as_str()), (Some(1), Some("first")), "production by default");
    assert_eq!(json(&run(&["prompts", "show", "support@latest", "--json"], &dir))["version"], 3);
    assert_eq!(json(&run(&["prompts", "show", "support@2", "--json"], &dir))["definition"]["config"]["model"], "fast");

    let diff = stdout(&run(&["prompts", "diff", "support", "1", "2"], &dir));
    assert!(diff.contains("-You help {{ company }}.\n") && diff.contains("+You help {{ company }}. Be brief."), "{diff}");
    assert!(diff.contains("-temperature = 0.2"), "{diff}");

    let rendered = json(&run(&["prompts", "render", "support", "--var", "company=Acme", "--var", "question=hi?", "--json"], &dir));
    assert_eq!(rendered["messages"][0]["content"], "You help Acme.");
    assert_eq!(rendered["config"]["temperature"], 0.2);
    let missing = run(&["prompts", "render", "support@2", "--var", "company=Acme"], &dir);
    assert!(!missing.status.success() && stderr(&missing).contains("`question`"), "{}", stderr(&missing));

    let out = run(&["prompts", "label", "support", "9", "production"], &dir);
    assert!(!out.status.success() && stderr(&out).contains("no version 9"), "{}", stderr(&out));
    let out = run(&["prompts", "show", "support@staging"], &dir);
    assert!(!out.status.success() && stderr(&out).contains("no label `staging`"), "{}", stderr(&out));
    let out = run(&["prompts", "show", "nope"], &dir);
    assert!(!out.status.success() && stderr(&out).contains("no prompt `nope`"), "{}", stderr(&out));
    let out = run(&["prompts", "split", "support", "production=90", "candidate=10"], &dir);
    assert!(!out.status.success() && stderr(&out).contains("no label `candidate`"), "{}", stderr(&out));
    assert!(run(&["prompts", "label", "support", "2", "candidate"], &dir).status.success());
    let out = run(&["prompts", "split", "support", "production=90", "candidate=10"], &dir);
    assert!(out.status.success() && stdout(&out).contains("production 90%, candidate 10%"), "{}", stderr(&out));
    let history = json(&run(&["prompts", "history", "support", "--json"], &dir));
    assert_eq!(history.as_array().map(Vec::len), Some(3));
    assert_eq!(history[1]["labels"], serde_json::json!(["candidate"]));
    let out = run(&["prompts", "push", "support", "v1.toml.missing"], &dir);
    assert!(!out.status.success() && stderr(&out).contains("could not read"), "{}", stderr(&out));
    std::fs::write(dir.join("bad.toml"), "text = \"{% if x %}never closed\"\n").unwrap();
    let out = run(&["prompts", "push", "support", "bad.toml"], &dir);
    assert!(!out.status.success() && stderr(&out).contains("template 1"), "{}", stderr(&out));
    assert_eq!(json(&run(&["prompts", "list", "--json"], &dir))[0]["versions"], 3, "a bad file adds no version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_sees_a_label_moved_from_the_cli() {
    let dir = temp_dir("prompts-serve");
    let (upstream, fake) = keel_server::fake::spawn(Some("k-123".into())).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = crate::config(&upstream.to_string(), &format!("127.0.0.1:{port}"), &[("fast", "gpt-4o-mini")]);
    std::fs::write(dir.join("keel.toml"), format!("{config}\n[prompts]\ncache_ttl_s = 0.2\n")).unwrap();
    for (file, text) in [("a.json", r#"{"text": "version one", "config": {"model": "fast"}}"#), ("b.json", r#"{"text": "version two", "config": {"model": "fast"}}"#)] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let cli = |args: &'static [&'static str]| {
        let dir = dir.clone();
        async move { tokio::task::spawn_blocking(move || run(args, &dir)).await.unwrap() }
    };
    assert!(cli(&["prompts", "push", "greet", "a.json", "--label", "production"]).await.status.success());
    assert!(cli(&["prompts", "push", "greet", "b.json"]).await.status.success());
    let server = crate::keel()
        .args(["serve"])
        .current_dir(&dir)
        .env("KEEL_HOME", dir.join("home"))
        .env("FAKE_KEY", "k-123")
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Stopped(server);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..1200 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ask(&client, &base, &fake).await, "version one");
    assert!(cli(&["prompts", "label", "greet", "2", "production"]).await.status.success());
    // Within the cache's time to live the old label may still be served; after it, never.
    let mut seen = ask(&client, &base, &fake).await;
    for _ in 0..100 {
        if seen == "version two" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        seen = ask(&client, &base, &fake).await;
    }
    assert_eq!(seen, "version two");
    // SIGTERM: keel drains and writes every queued trace before it exits.
    let _ = std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status();
    let _ = server.0.wait();
    let traces = cli(&["traces", "--json"]).await;
    let traces = json(&traces);
    let versions: std::collections::BTreeSet<u64> = traces.as_array().unwrap().iter().filter_map(|t| t["prompt_version"].as_u64()).collect();
    assert_eq!(versions, [1, 2].into(), "{traces}");
}

/// One chat request naming the `greet` prompt; what the upstream was sent as its text.
async fn ask(client: &reqwest::Client, base: &str, fake: &keel_server::fake::FakeState) -> String {
    let reply = client.post(format!("{base}/v1/chat/completions")).json(&serde_json::json!({"prompt": "greet"})).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    fake.requests_seen().pop().unwrap().1["messages"][0]["content"].as_str().unwrap().to_string()
}
