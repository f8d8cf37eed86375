//! keel as an MCP server: `keel mcp serve` over stdio and `keel serve` at /mcp, driven by
//! an rmcp client (keel's own MCP client), with the agents' model behind keel's gateway.

use std::sync::Arc;

use keel_agent::{McpServer, McpServerSpec};

use crate::{config, temp_dir};

const CLERK: &str = r#"
name = "clerk"
model = "brain"
description = "Files entries in the ledger"
instructions = "You file entries with the record tool for {{team}}."
workspace = "../ws"

[tools.record]
description = "Record an entry in the ledger"
command = ["sh", "-c", "cat >> \"$KEEL_WORKSPACE/effects.log\"; echo >> \"$KEEL_WORKSPACE/effects.log\"; echo recorded"]
parameters = { type = "object", properties = { entry = { type = "string" } }, required = ["entry"] }
"#;

async fn setup(name: &str, listen: &str) -> (std::path::PathBuf, keel_server::fake::Fake) {
    let dir = temp_dir(name);
    let (upstream, fake) = keel_server::fake::spawn(None).await.unwrap();
    let mut cfg = config(&upstream.to_string(), listen, &[("brain", "gpt-4o-mini")]);
    cfg.push_str("\n[agents]\ndir = \"agents\"\n");
    std::fs::write(dir.join("keel.toml"), cfg).unwrap();
    std::fs::create_dir_all(dir.join("agents")).unwrap();
    std::fs::write(dir.join("agents/clerk.toml"), CLERK).unwrap();
    std::fs::write(dir.join("agents/approver.toml"), format!("{CLERK}approval = \"required\"\n").replace("\"clerk\"", "\"approver\"")).unwrap();
    (dir, fake)
}

#[tokio::test(flavor = "multi_thread")]
async fn keel_mcp_serve_offers_agents_as_tools_over_stdio() {
    let (dir, _fake) = setup("mcp-stdio", "127.0.0.1:0").await;
    let spec = McpServerSpec {
        command: Some(vec![env!("CARGO_BIN_EXE_keel").into(), "--config".into(), dir.join("keel.toml").display().to_string(), "mcp".into(), "serve".into()]),
        env: [("FAKE_KEY".to_string(), "k".to_string()), ("KEEL_LOG".to_string(), "warn".to_string())].into(),
        ..McpServerSpec::default()
    };
    let keel = Arc::new(McpServer::new("keel", &spec, &dir));
    let listing = keel.listing().await.unwrap();
    // keel and rmcp both speak the current revision, so no legacy handshake is needed.
    assert_eq!(listing.protocol, "2026-07-28");
    assert_eq!(listing.implementation.as_deref(), Some(concat!("keel ", env!("CARGO_PKG_VERSION"))));
    let names: Vec<&str> = listing.tools.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["approver", "clerk"]);
    assert_eq!(listing.tools[1].1, "Files entries in the ledger");

    let answer = keel.call_tool("clerk", serde_json::json!({"request": "record the refund", "vars": {"team": "billing"}})).await.unwrap();
    assert_eq!(answer, "tool results: recorded");
    assert_eq!(std::fs::read_to_string(dir.join("ws/effects.log")).unwrap().lines().count(), 1);

    // A call that needs a human says which run waits, and nothing ran.
    let waiting = keel.call_tool("approver", serde_json::json!({"request": "record it", "vars": {"team": "x"}})).await.unwrap();
    assert!(waiting.contains("is waiting for a human to approve record") && waiting.contains("keel runs approve run_"), "{waiting}");
    assert_eq!(std::fs::read_to_string(dir.join("ws/effects.log")).unwrap().lines().count(), 1);

    // Bad calls are protocol errors that say what is wrong.
    let err = keel.call_tool("nobody", serde_json::json!({"request": "x"})).await.unwrap_err().to_string();
    assert!(err.contains("no agent is named `nobody`; the agents are: approver, clerk"), "{err}");
    let err = keel.call_tool("clerk", serde_json::json!({"request": "x"})).await.unwrap_err().to_string();
    assert!(err.contains("{{team}}"), "a missing placeholder is named: {err}");
    let err = keel.call_tool("clerk", serde_json::json!({})).await.unwrap_err().to_string();
    assert!(err.contains("`request`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keel_serve_offers_the_same_tools_over_streamable_http() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let (dir, _fake) = setup("mcp-http", &listen).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .current_dir(&dir)
        .env("FAKE_KEY", "k")
        .env("KEEL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(&listen).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let spec = McpServerSpec { url: Some(format!("http://{listen}/mcp")), ..McpServerSpec::default() };
    let keel = Arc::new(McpServer::new("keel", &spec, &dir));
    let listing = keel.listing().await.unwrap();
    assert_eq!(listing.protocol, "2026-07-28");
    assert_eq!(listing.tools.len(), 2);
    let answer = keel.call_tool("clerk", serde_json::json!({"request": "record the refund", "vars": {"team": "ops"}})).await.unwrap();
    assert_eq!(answer, "tool results: recorded");
    // The run is in the store like any other.
    let runs = std::process::Command::new(env!("CARGO_BIN_EXE_keel")).args(["runs", "list", "--json"]).current_dir(&dir).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert!(runs.as_array().unwrap().iter().any(|r| r["agent"] == "clerk" && r["status"] == "completed"), "{runs}");
    let _ = child.kill().await;
}
