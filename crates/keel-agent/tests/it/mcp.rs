//! MCP servers as tool sources, against real servers from npm (`tests/mcp`, installed by
//! `scripts/setup`): the reference filesystem server over stdio, the reference "everything"
//! server over Streamable HTTP, and a server built on the official SDK that crashes or
//! never answers when asked to.

use std::path::PathBuf;
use std::sync::Arc;

use keel_agent::{RunStatus, Scripted};
use serde_json::json;

use super::{Fixture, run_watched, vars};

/// The npm packages `scripts/setup` installs.
fn servers() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mcp");
    assert!(
        dir.join("node_modules/@modelcontextprotocol/server-filesystem").is_dir(),
        "the MCP test servers are not installed: run scripts/setup (npm ci --prefix tests/mcp)"
    );
    dir.canonicalize().unwrap()
}

fn toml_str(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Runs `agent` on a script: the outcome, and every tool result as (call id, output, error).
async fn run(fx: &Fixture, agent: &keel_agent::Agent, model: Arc<Scripted>) -> (keel_agent::Outcome, Vec<(String, String, bool)>) {
    let (outcome, ran) = run_watched(fx, agent, model, "go", &vars()).await;
    (outcome, ran.into_iter().map(|r| (r.call_id, r.output, r.is_error)).collect())
}

#[tokio::test]
async fn the_filesystem_server_over_stdio_gives_the_agent_its_tools() {
    let fx = Fixture::new("mcp-fs");
    let docs = fx.dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("notes.md"), "# Notes\nThe launch is on Tuesday.\n").unwrap();
    let bin = servers().join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
    let agent = fx.agent(&format!(
        "[mcp.files]\ncommand = [\"node\", {}, {}]\nallow_tools = [\"list_directory\", \"read_text_file\", \"write_file\"]\ntool.write_file.approval = \"required\"\ncapabilities = [\"private_data\"]\n",
        toml_str(&bin),
        toml_str(&docs.canonicalize().unwrap())
    ));
    let docs = docs.canonicalize().unwrap();
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "files__list_directory", json!({"path": docs}))]),
        Scripted::calls(&[("c2", "files__read_text_file", json!({"path": docs.join("notes.md")}))]),
        Scripted::text("The launch is on Tuesday."),
    ]));
    let (outcome, results) = run(&fx, &agent, model.clone()).await;
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.reason);
    assert_eq!(results[0].0, "c1");
    assert!(results[0].1.contains("[FILE] notes.md") && !results[0].2, "{:?}", results[0]);
    assert!(results[1].1.contains("The launch is on Tuesday.") && !results[1].2, "{:?}", results[1]);
    // The model was offered exactly the allowed tools, with the server's own schemas.
    {
        let requests = model.requests.lock().unwrap();
        let mut offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
        offered.sort();
        assert_eq!(offered, ["files__list_directory", "files__read_text_file", "files__write_file"]);
        let read = requests[0].tools.iter().find(|t| t.name == "files__read_text_file").unwrap();
        assert_eq!(read.parameters["required"], json!(["path"]));
    }

    // A per-tool approval setting pauses the run like any other tool.
    let model = Arc::new(Scripted::new([Scripted::calls(&[(
        "w1",
        "files__write_file",
        json!({"path": docs.join("out.md"), "content": "x"}),
    )])]));
    let (outcome, _) = run(&fx, &agent, model).await;
    assert_eq!(outcome.status, RunStatus::WaitingApproval);
    assert_eq!(outcome.waiting[0].name, "files__write_file");
    assert!(!docs.join("out.md").exists());
}

/// Starts the "everything" reference server on Streamable HTTP; it is killed when dropped.
struct Everything {
    child: std::process::Child,
    url: String,
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[expect(clippy::zombie_processes, reason = "Everything's Drop kills the server and waits for it")]
fn everything() -> Everything {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("node")
        .arg(servers().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Everything { child, url: format!("http://127.0.0.1:{port}/mcp") };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the everything server did not start listening on port {port}");
}

#[tokio::test]
async fn the_everything_server_over_streamable_http_serves_tools_and_resources() {
    let server = everything();
    let fx = Fixture::new("mcp-http");
    let agent = fx.agent(&format!("[mcp.every]\nurl = \"{}\"\n", server.url));
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[
            ("c1", "every__echo", json!({"message": "hello over MCP"})),
            ("c2", "every__get-sum", json!({"a": 19, "b": 23})),
            ("c3", "every__read_resource", json!({"uri": "demo://resource/static/document/architecture.md"})),
        ]),
        Scripted::text("done"),
    ]));
    let (outcome, results) = run(&fx, &agent, model.clone()).await;
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.reason);
    let by_id = |id: &str| results.iter().find(|r| r.0 == id).unwrap().clone();
    assert!(by_id("c1").1.contains("hello over MCP"), "{:?}", by_id("c1"));
    assert!(by_id("c2").1.contains("42"), "{:?}", by_id("c2"));
    let (_, resource, is_error) = by_id("c3");
    assert!(!is_error && resource.len() > 100, "{resource}");
    // The resource tool names what the server offers.
    {
        let requests = model.requests.lock().unwrap();
        let read = requests[0].tools.iter().find(|t| t.name == "every__read_resource").unwrap();
        assert!(read.description.as_deref().unwrap().contains("demo://resource/static/document/"), "{:?}", read.description);
    }

    // Resources and prompts are readable outside a run too (as `keel mcp` does).
    let every = keel_agent::McpServer::new("every", &agent.def.mcp["every"], &fx.dir);
    let listing = every.listing().await.unwrap();
    assert_eq!(listing.protocol, "2025-11-25");
    assert!(listing.tools.iter().any(|(name, _)| name == "echo"));
    assert!(listing.prompts.iter().any(|(name, _)| name == "simple-prompt"), "{:?}", listing.prompts);
    let prompt = every.get_prompt("simple-prompt", serde_json::Map::new()).await.unwrap();
    assert!(prompt.starts_with("user: "), "{prompt}");
}

fn flaky(fx: &Fixture, extra: &str) -> keel_agent::Agent {
    let script = servers().join("flaky-server.mjs");
    fx.agent(&format!("[mcp.flaky]\ncommand = [\"node\", {}]\ncapabilities = []\n{extra}", toml_str(&script)))
}

#[tokio::test]
async fn a_server_that_crashes_mid_call_is_an_error_the_model_sees_and_is_started_again() {
    let fx = Fixture::new("mcp-crash");
    let agent = flaky(&fx, "");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "flaky__count", json!({}))]),
        Scripted::calls(&[("c2", "flaky__crash", json!({"why": "test"}))]),
        Scripted::calls(&[("c3", "flaky__count", json!({}))]),
        Scripted::text("recovered"),
    ]));
    let (outcome, results) = run(&fx, &agent, model).await;
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.reason);
    let first_pid = results[0].1.split_whitespace().last().unwrap().to_string();
    assert!(results[0].1.starts_with("call 1 of process"), "{:?}", results[0]);
    let (_, crash, is_error) = &results[1];
    assert!(*is_error, "{crash}");
    assert!(crash.contains("the MCP server `flaky` stopped during the call to `crash`"), "{crash}");
    assert!(crash.contains("crashing on purpose: test"), "the server's last words: {crash}");
    // The next call reaches a new process.
    assert!(results[2].1.starts_with("call 1 of process") && !results[2].2, "{:?}", results[2]);
    assert_ne!(results[2].1.split_whitespace().last().unwrap(), first_pid);
}

#[tokio::test]
async fn a_call_that_never_answers_times_out_and_the_server_goes_on() {
    let fx = Fixture::new("mcp-hang");
    let agent = flaky(&fx, "tool.hang.timeout_s = 1\n");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "flaky__hang", json!({}))]),
        Scripted::calls(&[("c2", "flaky__count", json!({}))]),
        Scripted::text("ok"),
    ]));
    let (outcome, results) = run(&fx, &agent, model).await;
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.reason);
    assert!(results[0].2 && results[0].1.contains("timed out after 1.0 s"), "{:?}", results[0]);
    // Same process, still answering.
    assert!(results[1].1.starts_with("call 1 of process") && !results[1].2, "{:?}", results[1]);
}

#[tokio::test]
async fn a_server_that_never_answers_its_handshake_fails_the_run_with_a_clear_reason() {
    let fx = Fixture::new("mcp-silent");
    let agent = flaky(&fx, "env = { KEEL_MCP_SILENT = \"1\" }\nstartup_timeout_s = 1.5\n");
    let model = Arc::new(Scripted::new([Scripted::text("never asked")]));
    let (outcome, _) = run(&fx, &agent, model.clone()).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(reason.contains("the MCP server `flaky` did not answer its handshake within 2 s"), "{reason}");
    assert_eq!(model.remaining(), 1, "the model is not called without the tools");

    // A command that does not exist is named.
    let agent = fx.agent("[mcp.ghost]\ncommand = [\"keel-no-such-mcp-server\"]\n");
    let (outcome, _) = run(&fx, &agent, Arc::new(Scripted::new([]))).await;
    let reason = outcome.reason.unwrap();
    assert!(reason.contains("could not start `keel-no-such-mcp-server`"), "{reason}");
}
