//! Agents through the CLI: a real keel process, a real store, a model behind keel's gateway
//! (the fake upstream speaking the OpenAI wire format), real command tools.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::{config, keel, run, temp_dir};

const AGENT: &str = r#"
name = "clerk"
model = "brain"
instructions = "You file entries with the record tool."
workspace = "ws"

[tools.record]
description = "Record an entry in the ledger"
command = ["sh", "-c", "cat >> \"$KEEL_WORKSPACE/effects.log\"; echo >> \"$KEEL_WORKSPACE/effects.log\"; echo recorded"]
parameters = { type = "object", properties = { entry = { type = "string" } }, required = ["entry"] }
"#;

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
    let table = stdout(&run(&["runs", "show", &run_id], &dir));
    assert!(table.contains("tool record") && table.contains("total:"), "{table}");

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
