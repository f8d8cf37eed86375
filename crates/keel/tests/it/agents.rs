//! Agents through the CLI: a real keel process, a real store, a model behind keel's gateway
//! (the fake upstream speaking the OpenAI wire format), real command tools.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::{config, keel, run, temp_dir};

/// An agent with one command tool that appends to `ws/effects.log` (the eval tests run it too).
pub(crate) const AGENT: &str = r#"
name = "clerk"
model = "brain"
instructions = "You file entries with the record tool."
workspace = "ws"

[tools.record]
description = "Record an entry in the ledger"
command = ["sh", "-c", "cat >> \"$KEEL_WORKSPACE/effects.log\"; echo >> \"$KEEL_WORKSPACE/effects.log\"; echo recorded"]
parameters = { type = "object", properties = { entry = { type = "string" } }, required = ["entry"] }
"#;

/// A `keel serve` in `dir` on a free port, up and answering; killed when dropped.
async fn serve(dir: &std::path::Path, envs: &[(&str, std::ffi::OsString)]) -> (tokio::process::Child, String) {
    let listen = std::fs::read_to_string(dir.join("keel.toml")).unwrap();
    let listen = listen.split("listen = \"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    command.arg("serve").current_dir(dir).env("FAKE_KEY", "k").env("KEEL_LOG", "warn").stdout(Stdio::null()).kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.spawn().unwrap();
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    for _ in 0..1200 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (child, base)
}

fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_resumes_from_its_last_step_without_repeating_a_tool_call() {
    let dir = temp_dir("agent-kill");
    let (upstream, fake) = keel_server::fake::spawn(None).await.unwrap();
    std::fs::write(dir.join("keel.toml"), config(&upstream.to_string(), "127.0.0.1:0", &[("brain", "pause-after-tools")])).unwrap();
    std::fs::write(dir.join("clerk.toml"), AGENT).unwrap();

    let mut child = keel()
        .args(["agent", "run", "clerk", "record the sale", "--json"])
        .current_dir(&dir)
        .env("KEEL_HOME", dir.join("home"))
        .env("FAKE_KEY", "k")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read events until the tool's result is committed; the next model call then waits.
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (run_id, child) = tokio::task::spawn_blocking(move || {
        let mut run_id = None;
        for line in lines {
            let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            match event["event"].as_str() {
                Some("started") => run_id = event["run_id"].as_str().map(str::to_string),
                Some("tool_result") => {
                    assert_eq!(event["output"], "recorded");
                    break;
                }
                _ => {}
            }
        }
        (run_id.unwrap(), child)
    })
    .await
    .unwrap();
    let mut child = child;
    child.kill().unwrap(); // SIGKILL: no chance to clean up.
    child.wait().unwrap();
    let effects = || std::fs::read_to_string(dir.join("ws/effects.log")).unwrap();
    assert_eq!(effects().lines().count(), 1);
    let runs: serde_json::Value = serde_json::from_slice(&run(&["runs", "list", "--json"], &dir).stdout).unwrap();
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "running");

    fake.release_held();
    let resumed = keel()
        .args(["runs", "resume", &run_id])
        .current_dir(&dir)
        .env("KEEL_HOME", dir.join("home"))
        .env("FAKE_KEY", "k")
        .output()
        .unwrap();
    let text = stdout(&resumed);
    assert!(resumed.status.success(), "{text}{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(text.contains(&format!("resumed run {run_id}")), "{text}");
    assert!(text.contains("record [call_fake_0] already ran; its recorded result is used"), "{text}");
    assert!(text.contains("✔ completed") && text.contains("tool results: recorded"), "{text}");
    assert_eq!(effects().lines().count(), 1, "the tool call is not run again");

    let shown: serde_json::Value = serde_json::from_slice(&run(&["runs", "show", &run_id, "--json"], &dir).stdout).unwrap();
    assert_eq!(shown["status"], "completed");
    let kinds: Vec<&str> = shown["steps"].as_array().unwrap().iter().map(|s| s["step"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["model", "tool", "model"]);
    // The exact request the model got, tools and all.
    assert_eq!(shown["steps"][0]["step"]["request"]["tools"][0]["name"], "record");
    assert_eq!(shown["steps"][1]["step"]["idempotency_key"], format!("{run_id}:call_fake_0"));
    // The guard's decision rides with the call it let through, with the output's label.
    assert_eq!(shown["steps"][1]["step"]["guard"]["verdict"], "allow");
    assert_eq!(shown["steps"][1]["step"]["label"]["sources"][0], "tool:record");
    let table = stdout(&run(&["runs", "show", &run_id], &dir));
    assert!(table.contains("tool record") && table.contains("total:"), "{table}");
    // Each model call is labelled by what it had read: the first only the user and the system,
    // the second also the command's output (untrusted by default).
    assert!(table.contains("(trusted · public · from system, user)") && table.contains("(untrusted · public · from system, tool:record, user)"), "{table}");

    // The trace: the killed stretch's steps (its invoke_agent span never written, so they are
    // roots), then the resumed stretch with its model call under it.
    let trace = stdout(&run(&["runs", "trace", &run_id], &dir));
    assert!(trace.contains("chat brain") && trace.contains("execute_tool record") && trace.contains("invoke_agent clerk"), "{trace}");
    let spans: serde_json::Value = serde_json::from_slice(&run(&["runs", "trace", &run_id, "--json"], &dir).stdout).unwrap();
    let spans = spans.as_array().unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| **n == "chat brain").count(), 2, "{names:?}");
    let resumed_span = spans.iter().find(|s| s["name"] == "invoke_agent clerk").unwrap();
    assert_eq!(resumed_span["attributes"]["keel.run.resumed"], true);
    assert_eq!(resumed_span["attributes"]["keel.run.status"], "completed");

    let again = run(&["runs", "resume", &run_id], &dir);
    assert!(String::from_utf8_lossy(&again.stderr).contains("has already ended (completed)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_needs_approval_waits_for_a_human() {
    let dir = temp_dir("agent-approve");
    let (upstream, _fake) = keel_server::fake::spawn(None).await.unwrap();
    std::fs::write(dir.join("keel.toml"), config(&upstream.to_string(), "127.0.0.1:0", &[("brain", "gpt-4o-mini")])).unwrap();
    std::fs::write(dir.join("clerk.toml"), format!("{AGENT}approval = \"required\"\n")).unwrap();
    let env_run = |args: &[&str]| {
        keel().args(args).current_dir(&dir).env("KEEL_HOME", dir.join("home")).env("FAKE_KEY", "k").output().unwrap()
    };
    let paused = env_run(&["agent", "run", "clerk.toml", "record the refund"]);
    let text = stdout(&paused);
    assert!(paused.status.success(), "{text}");
    assert!(text.contains("needs approval [call_fake_0]"), "{text}");
    let run_id = text.split("keel runs approve ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    assert!(!dir.join("ws/effects.log").exists(), "nothing ran before the decision");

    let wrong = env_run(&["runs", "approve", &run_id, "call_nope"]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("it waits for: call_fake_0"));
    let approved = env_run(&["runs", "approve", &run_id, "call_fake_0", "--note", "checked"]);
    let text = stdout(&approved);
    assert!(approved.status.success() && text.contains("✔ completed"), "{text}");
    assert_eq!(std::fs::read_to_string(dir.join("ws/effects.log")).unwrap().lines().count(), 1);
    let table = stdout(&run(&["runs", "show", &run_id], &dir));
    assert!(table.contains("[call_fake_0] approved: checked"), "{table}");
}

#[test]
fn agent_new_writes_a_starter_that_runs_and_refuses_to_overwrite() {
    let dir = temp_dir("agent-new");
    let made = run(&["agent", "new", "helper"], &dir);
    assert!(made.status.success());
    assert!(dir.join("helper.toml").is_file() && dir.join("workspace").is_dir());
    let text = std::fs::read_to_string(dir.join("helper.toml")).unwrap();
    assert!(keel_agent::AgentDef::parse(&text).is_ok());
    let again = run(&["agent", "new", "helper"], &dir);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let missing = run(&["agent", "run", "nobody", "hi"], &dir);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("create one with: keel agent new nobody"));
    std::fs::write(dir.join("bad.toml"), "name = \"b\"\nmodel = \"local\"\ninstructions = \"x\"\n[tools.teleport]\n").unwrap();
    let bad = run(&["agent", "run", "bad", "hi"], &dir);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tool `teleport` is not built in"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn the_agent_bench_runs_many_runs_at_once_without_errors() {
    let dir = temp_dir("agent-bench");
    let output = run(&["bench", "agent", "--runs", "3", "--steps", "4", "--concurrent", "200", "--json"], &dir);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["concurrent_failed"], 0);
    assert_eq!(report["steps_per_run"], 9);
    assert!(report["checkpoint_write_us_p50"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_run_over_http_with_streamed_steps_and_approvals() {
    let dir = temp_dir("agent-http");
    let (upstream, _fake) = keel_server::fake::spawn(None).await.unwrap();
    let listen = free_listen();
    let mut cfg = config(&upstream.to_string(), &listen, &[("brain", "gpt-4o-mini")]);
    cfg.push_str("\n[agents]\ndir = \"agents\"\n");
    std::fs::write(dir.join("keel.toml"), cfg).unwrap();
    std::fs::create_dir_all(dir.join("agents")).unwrap();
    std::fs::write(dir.join("agents/clerk.toml"), format!("{AGENT}approval = \"required\"\n").replace("workspace = \"ws\"", "workspace = \"../ws\"")).unwrap();
    let (_child, base) = serve(&dir, &[]).await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| client.post(format!("{base}{path}")).json(&body).send();

    let missing = post("/v1/agents/nobody/runs", serde_json::json!({"input": "hi"})).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("the agents are: clerk"));
    let empty = post("/v1/agents/clerk/runs", serde_json::json!({"input": " "})).await.unwrap();
    assert_eq!(empty.status(), 400);
    let malformed = post("/v1/agents/clerk/runs", serde_json::json!({"inpt": "x"})).await.unwrap();
    assert_eq!(malformed.status(), 400);

    // Streamed: each step as a server-sent event, then the outcome.
    let streamed = post("/v1/agents/clerk/runs", serde_json::json!({"input": "record the refund", "stream": true})).await.unwrap();
    assert_eq!(streamed.headers()["content-type"], "text/event-stream");
    let body = streamed.text().await.unwrap();
    let events: Vec<serde_json::Value> =
        body.lines().filter_map(|l| l.strip_prefix("data: ")).map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    // The guard's decision on the call streams too (allowed: it needs approval for itself).
    assert_eq!(kinds, ["started", "model_call", "guard", "waiting_approval", "outcome"]);
    assert_eq!(events[2]["verdict"], "allow");
    let outcome = &events[4]["outcome"];
    assert_eq!(outcome["status"], "waiting_approval");
    let run_id = outcome["run_id"].as_str().unwrap().to_string();

    let shown: serde_json::Value = client.get(format!("{base}/v1/runs/{run_id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["status"], "waiting_approval");
    assert_eq!(shown["steps"][0]["step"]["kind"], "model");
    assert_eq!(client.get(format!("{base}/v1/runs/run_nope")).send().await.unwrap().status(), 404);

    let wrong = post(&format!("/v1/runs/{run_id}/approvals"), serde_json::json!({"call_id": "x", "approved": true})).await.unwrap();
    assert_eq!(wrong.status(), 409);
    let approved = post(&format!("/v1/runs/{run_id}/approvals"), serde_json::json!({"call_id": "call_fake_0", "approved": true})).await.unwrap();
    assert_eq!(approved.status(), 200);
    let outcome: serde_json::Value = approved.json().await.unwrap();
    assert_eq!(outcome["status"], "completed");
    assert_eq!(outcome["output"], "tool results: recorded");
    let again = post(&format!("/v1/runs/{run_id}/approvals"), serde_json::json!({"call_id": "call_fake_0", "approved": true})).await.unwrap();
    assert_eq!(again.status(), 409);
}

/// End to end on the embedded SmolLM2 model: a real `keel serve`, the agent loop, the local
/// model's grammar-constrained tool calls, a real tool. A 135M model may or may not choose the
/// tool; either way the run must end cleanly with every step recorded.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_runs_on_the_local_model_through_keel_serve() {
    let dir = temp_dir("agent-local");
    let listen = free_listen();
    std::fs::write(
        dir.join("keel.toml"),
        format!("[server]\nlisten = \"{listen}\"\n[store]\npath = \"keel.db\"\n[providers.local]\nkind = \"local\"\n[[models]]\nname = \"local\"\nroutes = [{{ provider = \"local\", model = \"smollm2-135m\" }}]\n[agents]\ndir = \"agents\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("agents/ws")).unwrap();
    std::fs::write(dir.join("agents/ws/notes.txt"), "buy milk").unwrap();
    std::fs::write(
        dir.join("agents/lister.toml"),
        "name = \"lister\"\nmodel = \"local\"\ninstructions = \"You answer questions about the files in the workspace. Use the list_dir tool with path \\\".\\\" to see them.\"\nworkspace = \"ws\"\ntemperature = 0.0\nmax_tokens = 96\n[budget]\nmax_steps = 3\n[tools.list_dir]\n",
    )
    .unwrap();
    let (_child, base) = serve(&dir, &[("KEEL_MODELS_DIR", crate::cli::real_models_dir().into_os_string())]).await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/v1/agents/lister/runs"))
        .json(&serde_json::json!({"input": "Which files are in the workspace?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let outcome: serde_json::Value = response.json().await.unwrap();
    let status = outcome["status"].as_str().unwrap();
    assert!(status == "completed" || status == "stopped", "{outcome}");
    let run_id = outcome["run_id"].as_str().unwrap();
    let shown: serde_json::Value = client.get(format!("{base}/v1/runs/{run_id}")).send().await.unwrap().json().await.unwrap();
    let steps = shown["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    assert_eq!(steps[0]["step"]["provider"], "local");
    assert!(steps[0]["step"]["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0);
    for step in steps.iter().filter(|s| s["step"]["kind"] == "tool" && s["step"]["is_error"] == false) {
        assert!(step["step"]["output"].as_str().unwrap().contains("notes.txt"), "{step}");
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// examples/agents/support, driven by the fake upstream in place of the local model: the
/// refund waits for approval, then runs once.
#[tokio::test(flavor = "multi_thread")]
async fn the_support_example_pauses_refunds_for_approval() {
    let dir = temp_dir("example-support");
    copy_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents/support"), &dir);
    let (upstream, _fake) = keel_server::fake::spawn(None).await.unwrap();
    std::fs::write(dir.join("keel.toml"), config(&upstream.to_string(), "127.0.0.1:0", &[("local", "gpt-4o-mini")])).unwrap();
    let keel_in = |args: &[&str]| {
        keel().args(args).current_dir(&dir).env("KEEL_HOME", dir.join("home")).env("FAKE_KEY", "k").output().unwrap()
    };
    // The fake model fills every string argument with "Paris"; the example's guard policy lets
    // a refund through only for an order the customer named, so the customer names that one.
    let paused = keel_in(&["agent", "run", "support.toml", "--var", "shop=Acme", "Order Paris arrived broken"]);
    let text = stdout(&paused);
    assert!(paused.status.success(), "{text}{}", String::from_utf8_lossy(&paused.stderr));
    assert!(text.contains("lookup_order error"), "the fake asks for an order that does not exist: {text}");
    assert!(text.contains("refund(") && text.contains("needs approval [call_fake_1]"), "{text}");
    let run_id = text.split("keel runs approve ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    // Another order is refused by the policy outright, with no human asked.
    let refused = keel_in(&["agent", "run", "support.toml", "--var", "shop=Acme", "Order A-1002 arrived broken"]);
    let text = stdout(&refused);
    assert!(text.contains("deny by refund.order_id") && text.contains("keel's guard blocked this call") && !text.contains("needs approval"), "{text}");
    let missing_var = keel_in(&["agent", "run", "support.toml", "hi"]);
    assert!(String::from_utf8_lossy(&missing_var.stderr).contains("--var shop="));

    let approved = keel_in(&["runs", "approve", &run_id, "call_fake_1"]);
    let text = stdout(&approved);
    assert!(approved.status.success() && text.contains("✔ completed"), "{text}");
    let log = std::fs::read_to_string(dir.join("workspace/refunds.log")).unwrap();
    assert_eq!(log.lines().count(), 1);
    assert!(log.starts_with(&format!("{run_id}:call_fake_1 ")), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_runs_from_the_cli_and_shows_its_supersteps() {
    let dir = temp_dir("workflow");
    let (upstream, _fake) = keel_server::fake::spawn(None).await.unwrap();
    std::fs::write(dir.join("keel.toml"), config(&upstream.to_string(), "127.0.0.1:0", &[("brain", "gpt-4o-mini")])).unwrap();
    for name in ["classify", "docs", "history", "writer"] {
        std::fs::write(dir.join(format!("{name}.toml")), format!("name = \"{name}\"\nmodel = \"brain\"\ninstructions = \"You are {name}.\"\nworkspace = \"ws\"\n")).unwrap();
    }
    std::fs::write(
        dir.join("triage.toml"),
        r#"
name = "triage"
start = "classify"
[state]
ticket = { type = "string" }
priority = { type = "integer" }
category = { type = "string", enum = ["question", "refund"] }
notes = { type = "array", items = { type = "string" } }
answer = { type = "string" }
[nodes.classify]
agent = "classify.toml"
input = "Classify: {{ticket}}"
output = "category"
[nodes.docs]
agent = "docs.toml"
input = "docs for {{ticket}}"
output = "notes"
[nodes.history]
agent = "history.toml"
input = "history for {{ticket}}"
output = "notes"
[nodes.writer]
agent = "writer.toml"
input = "answer with {{notes}}"
output = "answer"
[[edges]]
from = "classify"
to = ["docs", "history"]
when = "category == 'question' and priority > 1"
[[edges]]
from = ["docs", "history"]
to = "writer"
"#,
    )
    .unwrap();
    let keel_in = |args: &[&str]| keel().args(args).current_dir(&dir).env("KEEL_HOME", dir.join("home")).env("FAKE_KEY", "k").output().unwrap();
    let out = keel_in(&["workflow", "run", "triage.toml", "--set", "ticket=reset is slow", "--set", "priority=2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcome: serde_json::Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(outcome["status"], "completed");
    assert_eq!(outcome["supersteps"], 3);
    // Answers stream out as they are written, piece by piece.
    let deltas = stdout(&out).lines().filter(|l| l.starts_with("{\"event\":\"delta\"")).count();
    assert!(deltas > 3, "{}", stdout(&out));
    assert_eq!(outcome["state"]["category"], "question");
    assert_eq!(outcome["state"]["notes"], serde_json::json!(["echo: docs for reset is slow", "echo: history for reset is slow"]));
    assert_eq!(outcome["state"]["answer"], "echo: answer with [\"echo: docs for reset is slow\",\"echo: history for reset is slow\"]");
    let run_id = outcome["run_id"].as_str().unwrap();

    let shown = stdout(&keel_in(&["runs", "show", run_id]));
    assert!(shown.contains("workflow run") && shown.contains("history") && shown.contains("writer"), "{shown}");
    let trace = stdout(&keel_in(&["runs", "trace", run_id]));
    assert!(trace.contains("invoke_workflow triage") && trace.contains("  invoke_agent docs"), "{trace}");

    // Low priority: the condition is false, so the run ends after classifying.
    let out = keel_in(&["workflow", "run", "triage.toml", "--set", "ticket=x", "--set", "priority=1", "--json"]);
    let outcome: serde_json::Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(outcome["supersteps"], 1);
    // Bad input says what is wrong.
    let bad = keel_in(&["workflow", "run", "triage.toml", "--set", "priority=high"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--set priority: not JSON"), "{}", String::from_utf8_lossy(&bad.stderr));
    let bad = keel_in(&["workflow", "run", "triage.toml", "--set", "colour=red"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`colour` is not a state field of triage"));
}
