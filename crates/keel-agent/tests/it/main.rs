//! The agent loop driven by a scripted model against a real SQLite store.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::BoxFuture;
use keel_agent::{Agent, AgentDef, Approval, ChatModel, FunctionTool, Reply, RunEvent, RunStatus, Runner, Scripted};
use keel_core::{ChatRequest, Role};
use keel_store::Store;
use serde_json::json;

struct Fixture {
    dir: PathBuf,
    store: Arc<Store>,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("keel-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("keel.db")).unwrap());
        Fixture { dir, store }
    }

    fn agent(&self, extra: &str) -> Agent {
        let text = format!("name = \"tester\"\nmodel = \"scripted\"\ninstructions = \"Help {{{{who}}}}.\"\n{extra}");
        let mut def = AgentDef::parse(&text).unwrap();
        def.workspace = Some(self.dir.join("ws"));
        Agent::new(def, &self.dir)
    }

    fn runner(&self, model: Arc<dyn ChatModel>) -> Runner {
        Runner::new(self.store.clone(), model)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A finished tool call as a run reported it.
#[derive(Debug, Clone, PartialEq)]
struct Ran {
    call_id: String,
    name: String,
    output: String,
    is_error: bool,
}

/// Starts a run while watching it; returns the outcome and every tool result, in order.
async fn run_watched(fx: &Fixture, agent: &Agent, model: Arc<dyn ChatModel>, input: &str, vars: &BTreeMap<String, String>) -> (keel_agent::Outcome, Vec<Ran>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = fx.runner(model).with_events(tx).start(agent, input, vars).await.unwrap();
    let mut results = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let RunEvent::ToolResult { call_id, name, output, is_error, .. } = event {
            results.push(Ran { call_id, name, output, is_error });
        }
    }
    (outcome, results)
}

fn vars() -> BTreeMap<String, String> {
    BTreeMap::from([("who".to_string(), "Ada".to_string())])
}

/// A tool that counts its calls, to prove what ran and what did not.
fn counter(count: Arc<AtomicUsize>) -> Arc<dyn keel_agent::Tool> {
    Arc::new(FunctionTool::new(
        "charge",
        "Charge a card (a side effect that must happen once).",
        json!({"type": "object", "properties": {"amount": {"type": "integer"}}, "required": ["amount"]}),
        move |args, ctx| {
            let count = count.clone();
            Box::pin(async move {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(format!("charged {} (key {})", args["amount"], ctx.idempotency_key))
            })
        },
    ))
}

#[tokio::test]
async fn tools_run_concurrently_and_results_follow_their_calls_in_order() {
    let fx = Fixture::new("loop");
    let agent = fx.agent("[tools.write_file]\n[tools.read_file]\n");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[
            ("c1", "write_file", json!({"path": "a.txt", "content": "alpha"})),
            ("c2", "write_file", json!({"path": "b/b.txt", "content": "beta"})),
        ]),
        Scripted::calls(&[("c3", "read_file", json!({"path": "b/b.txt"}))]),
        Scripted::text("Both files are written."),
    ]));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = fx.runner(model.clone()).with_events(tx).start(&agent, "write two files", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(outcome.output.as_deref(), Some("Both files are written."));
    assert_eq!(outcome.model_calls, 3);
    assert_eq!(std::fs::read_to_string(fx.dir.join("ws/b/b.txt")).unwrap(), "beta");

    let requests = model.requests.lock().unwrap().clone();
    assert_eq!(requests[0].messages[0].text_content(), "Help Ada.");
    assert_eq!(requests[0].tools.len(), 2);
    // The second request: system, user, assistant with two calls, then both results in call order.
    let second = &requests[1].messages;
    assert_eq!(second.len(), 5);
    assert_eq!(second[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(second[4].tool_call_id.as_deref(), Some("c2"));
    assert_eq!(requests[2].messages.last().unwrap().text_content(), "beta");

    let (record, steps) = fx.store.load_run(&outcome.run_id).unwrap();
    assert_eq!(record.status, "completed");
    let kinds: Vec<&str> = steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["model", "tool", "tool", "model", "tool", "model"]);
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    assert!(matches!(events.first(), Some(RunEvent::Started { resumed: false, .. })));
    assert!(matches!(events.last(), Some(RunEvent::Finished { status: RunStatus::Completed, .. })));
}

#[tokio::test]
async fn bad_calls_come_back_as_errors_the_model_sees_and_repeated_ones_stop_the_run() {
    let fx = Fixture::new("invalid");
    let agent = fx.agent("max_invalid_tool_calls = 2\n[tools.read_file]\n");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "read_file", json!({"file": "x"}))]),
        Scripted::calls(&[("c2", "delete_everything", json!({}))]),
        Scripted::text("never reached"),
    ]));
    let outcome = fx.runner(model.clone()).start(&agent, "go", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Stopped);
    assert_eq!(outcome.reason.as_deref(), Some("the model made invalid tool calls 2 times in a row"));
    let requests = model.requests.lock().unwrap().clone();
    let feedback = requests[1].messages.last().unwrap();
    assert_eq!(feedback.role, Role::Tool);
    assert!(feedback.is_error);
    assert!(feedback.text_content().contains("invalid arguments: the arguments is missing the required field `path`"), "{}", feedback.text_content());

    // A failing tool (missing file) is an error the model sees, not an invalid call.
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "read_file", json!({"path": "nope.txt"}))]),
        Scripted::text("The file does not exist."),
    ]));
    let outcome = fx.runner(model.clone()).start(&agent, "go", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    let requests = model.requests.lock().unwrap();
    assert!(requests[1].messages.last().unwrap().text_content().contains("could not read nope.txt"));
}

#[tokio::test]
async fn the_budget_stops_a_looping_run_and_keeps_what_it_has() {
    let fx = Fixture::new("budget");
    let agent = fx.agent("[budget]\nmax_steps = 2\n[tools.list_dir]\n");
    let model = Arc::new(Scripted::new((0..5).map(|i| {
        let mut reply = Scripted::calls(&[(&format!("c{i}"), "list_dir", json!({"path": "."}))]);
        reply.message.content = vec![keel_core::ContentPart::Text { text: format!("looking, round {i}") }];
        reply
    })));
    let outcome = fx.runner(model.clone()).start(&agent, "loop forever", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Stopped);
    assert_eq!(outcome.reason.as_deref(), Some("budget: max_steps = 2 reached (2 model calls)"));
    assert_eq!(outcome.output.as_deref(), Some("looking, round 1"));
    assert_eq!(model.remaining(), 3);
    let (record, _) = fx.store.load_run(&outcome.run_id).unwrap();
    assert_eq!((record.status.as_str(), record.output.as_deref()), ("stopped", Some("looking, round 1")));

    let agent = fx.agent("[budget]\nmax_tokens = 20\n[tools.list_dir]\n");
    let model = Arc::new(Scripted::new((0..5).map(|i| Scripted::calls(&[(&format!("c{i}"), "list_dir", json!({"path": "."}))]))));
    let outcome = fx.runner(model).start(&agent, "loop", &vars()).await.unwrap();
    assert_eq!(outcome.reason.as_deref(), Some("budget: max_tokens = 20 reached (30 tokens used)"));
}

#[tokio::test]
async fn approval_pauses_the_run_and_a_decision_resumes_it() {
    let fx = Fixture::new("approval");
    let count = Arc::new(AtomicUsize::new(0));
    let mut agent = fx.agent("[tools.list_dir]\n");
    agent.tools.insert(counter(count.clone()), Approval::Required, None);
    let script = || {
        Arc::new(Scripted::new([
            Scripted::calls(&[("c1", "charge", json!({"amount": 40})), ("c2", "list_dir", json!({"path": "."}))]),
            Scripted::text("Refunded."),
        ]))
    };
    let model = script();
    let runner = fx.runner(model.clone());
    let paused = runner.start(&agent, "refund order 7", &vars()).await.unwrap();
    assert_eq!(paused.status, RunStatus::WaitingApproval);
    assert_eq!(paused.waiting.len(), 1);
    assert_eq!(paused.waiting[0].id, "c1");
    assert_eq!(count.load(Ordering::SeqCst), 0, "the call waiting for a decision does not run");
    let (_, steps) = fx.store.load_run(&paused.run_id).unwrap();
    assert_eq!(steps.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(), ["model", "tool"], "the call that needs no decision ran");
    assert_eq!(fx.store.load_run(&paused.run_id).unwrap().0.status, "waiting_approval");

    // Resuming without a decision pauses again; a decision on another call is refused.
    assert_eq!(runner.resume(&paused.run_id, &agent).await.unwrap().status, RunStatus::WaitingApproval);
    let err = runner.decide(&paused.run_id, "c9", true, None).unwrap_err().to_string();
    assert!(err.contains("not waiting for call c9; it waits for: c1"), "{err}");

    runner.decide(&paused.run_id, "c1", true, Some("ok by Sam".into())).unwrap();
    let done = runner.resume(&paused.run_id, &agent).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(runner.decide(&paused.run_id, "c1", true, None).unwrap_err().to_string().contains("not waiting for approval"));

    // Denied: the model is told, the tool does not run.
    let model = script();
    let runner = fx.runner(model.clone());
    let paused = runner.start(&agent, "refund order 8", &vars()).await.unwrap();
    runner.decide(&paused.run_id, "c1", false, Some("over the limit".into())).unwrap();
    let done = runner.resume(&paused.run_id, &agent).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let requests = model.requests.lock().unwrap();
    let denied = requests[1].messages.iter().find(|m| m.tool_call_id.as_deref() == Some("c1")).unwrap();
    assert_eq!(denied.text_content(), "a human denied this call: over the limit");
}

/// A model that answers once from a script, then never answers (the process "dies" there).
struct HangsAfter(Scripted);

impl ChatModel for HangsAfter {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Reply, String>> {
        if self.0.remaining() == 0 {
            return Box::pin(futures_util::future::pending());
        }
        self.0.chat(request)
    }
}

#[tokio::test]
async fn a_run_cut_off_mid_way_resumes_without_repeating_tool_calls() {
    let fx = Fixture::new("resume");
    let count = Arc::new(AtomicUsize::new(0));
    let mut agent = fx.agent("");
    agent.tools.insert(counter(count.clone()), Approval::Never, None);
    let agent = Arc::new(agent);
    let model = Arc::new(HangsAfter(Scripted::new([Scripted::calls(&[
        ("c1", "charge", json!({"amount": 5})),
        ("c2", "charge", json!({"amount": 6})),
    ])])));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = Arc::new(fx.runner(model).with_events(tx));
    let task = {
        let (runner, agent) = (runner.clone(), agent.clone());
        tokio::spawn(async move { runner.start(&agent, "charge twice", &vars()).await })
    };
    // Wait until both calls are committed, then cut the run off while it waits on the model.
    let mut run_id = None;
    let mut results = 0;
    while results < 2 {
        match rx.recv().await.unwrap() {
            RunEvent::Started { run_id: id, .. } => run_id = Some(id),
            RunEvent::ToolResult { .. } => results += 1,
            _ => {}
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    task.abort();
    let _ = task.await; // cancelled: the drive and its lease are gone
    let run_id = run_id.unwrap();
    assert_eq!(fx.store.load_run(&run_id).unwrap().0.status, "running");
    assert_eq!(count.load(Ordering::SeqCst), 2);

    let model = Arc::new(Scripted::new([Scripted::text("Charged 5 and 6.")]));
    let outcome = fx.runner(model.clone()).resume(&run_id, &agent).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(count.load(Ordering::SeqCst), 2, "recorded calls are not run again");
    let request = model.requests.lock().unwrap()[0].clone();
    let outputs: Vec<String> = request.messages.iter().filter(|m| m.role == Role::Tool).map(|m| m.text_content()).collect();
    assert_eq!(outputs, [format!("charged 5 (key {run_id}:c1)"), format!("charged 6 (key {run_id}:c2)")]);
    let err = fx.runner(model).resume(&run_id, &agent).await.unwrap_err().to_string();
    assert!(err.contains("has already ended (completed)"), "{err}");
}

#[tokio::test]
async fn a_run_that_failed_on_its_model_resumes_once_the_model_is_back() {
    let fx = Fixture::new("failed");
    let agent = fx.agent("[tools.list_dir]\n");
    let broken = Arc::new(Scripted::new([Scripted::calls(&[("c1", "list_dir", json!({"path": "."}))])]));
    let outcome = fx.runner(broken).start(&agent, "look", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.reason.as_deref(), Some("the model call failed: the scripted model has no answers left"));
    let back = Arc::new(Scripted::new([Scripted::text("Nothing there.")]));
    let resumed = fx.runner(back.clone()).resume(&outcome.run_id, &agent).await.unwrap();
    assert_eq!(resumed.status, RunStatus::Completed);
    assert_eq!(resumed.model_calls, 2);
    // The retry carries the first call's tool result; the tool did not run twice.
    let (_, steps) = fx.store.load_run(&outcome.run_id).unwrap();
    assert_eq!(steps.iter().filter(|s| s.kind == "tool").count(), 1);
}

fn with_researcher(fx: &Fixture, parent_extra: &str, child_extra: &str) -> Agent {
    let mut parent = fx.agent(&format!("{parent_extra}[tools.researcher]\nagent = \"researcher.toml\"\ndescription = \"Finds facts\"\n"));
    let mut child_def = AgentDef::parse(&format!("name = \"researcher\"\nmodel = \"scripted\"\ninstructions = \"Find facts.\"\n{child_extra}")).unwrap();
    child_def.workspace = Some(fx.dir.join("ws"));
    parent.sub_agents.insert("researcher".into(), Arc::new(Agent::new(child_def, &fx.dir)));
    parent
}

#[tokio::test]
async fn an_agent_calls_another_as_a_tool_on_one_budget() {
    let fx = Fixture::new("subagent");
    let parent = with_researcher(&fx, "", "");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "researcher", json!({"request": "What is the answer?"}))]),
        Scripted::text("The answer is 42."),
        Scripted::text("My researcher says 42."),
    ]));
    let outcome = fx.runner(model.clone()).start(&parent, "ask around", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(outcome.output.as_deref(), Some("My researcher says 42."));
    assert_eq!(outcome.model_calls, 3, "the sub-agent's calls count against the run");
    let requests = model.requests.lock().unwrap().clone();
    assert_eq!(requests[1].messages[0].text_content(), "Find facts.");
    assert_eq!(requests[1].messages[1].text_content(), "What is the answer?");
    assert_eq!(requests[2].messages.last().unwrap().text_content(), "The answer is 42.");
    let child_id = format!("{}.c1", outcome.run_id);
    let (child, _) = fx.store.load_run(&child_id).unwrap();
    assert_eq!((child.agent.as_str(), child.status.as_str()), ("researcher", "completed"));

    // One trace: the run, its model calls and tool call, and the sub-agent's run under the
    // tool call that ran it.
    let spans = fx.store.spans(&outcome.run_id).unwrap();
    let tree: Vec<(String, Option<String>, String)> =
        spans.iter().map(|s| (s.span_id.clone(), s.parent_id.clone(), s.name.clone())).collect();
    let root = format!("{}@0", outcome.run_id);
    let call = format!("{}:c1", outcome.run_id);
    let find = |name: &str| tree.iter().find(|(_, _, n)| n == name).unwrap_or_else(|| panic!("no span {name}: {tree:?}")).clone();
    assert_eq!(find("invoke_agent tester"), (root.clone(), None, "invoke_agent tester".into()));
    assert_eq!(find("execute_tool researcher"), (call.clone(), Some(root.clone()), "execute_tool researcher".into()));
    assert_eq!(find("invoke_agent researcher").1, Some(call));
    let chats: Vec<_> = spans.iter().filter(|s| s.operation == "chat").collect();
    assert_eq!(chats.len(), 3);
    assert_eq!(chats.iter().filter(|s| s.run_id == child_id).count(), 1);
    let attributes: serde_json::Value = serde_json::from_str(&chats[0].attributes).unwrap();
    assert_eq!(attributes["gen_ai.request.model"], "scripted");
    assert_eq!(attributes["gen_ai.usage.input_tokens"], 10);
    assert_eq!(attributes["gen_ai.provider.name"], "scripted");
    assert_eq!(fx.store.trace_of_run(&child_id).unwrap().as_deref(), Some(outcome.run_id.as_str()));
}

#[tokio::test]
async fn a_sub_agent_gets_only_what_is_left_of_the_budget() {
    let fx = Fixture::new("subbudget");
    let parent = with_researcher(&fx, "[budget]\nmax_steps = 2\n", "[tools.list_dir]\n");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "researcher", json!({"request": "dig"}))]),
        Scripted::calls(&[("d1", "list_dir", json!({"path": "."}))]),
        Scripted::calls(&[("d2", "list_dir", json!({"path": "."}))]),
        Scripted::text("never reached"),
    ]));
    let outcome = fx.runner(model.clone()).start(&parent, "dig deep", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Stopped);
    assert_eq!(outcome.reason.as_deref(), Some("budget: max_steps = 2 reached (2 model calls)"));
    let (child, _) = fx.store.load_run(&format!("{}.c1", outcome.run_id)).unwrap();
    assert_eq!(child.status, "stopped");
    assert_eq!(child.reason.as_deref(), Some("budget: max_steps = 1 reached (1 model calls)"));
    assert_eq!(model.remaining(), 2);
}

#[test]
fn agent_files_load_their_sub_agents_and_refuse_a_cycle() {
    let fx = Fixture::new("subfiles");
    let write = |name: &str, other: &str| {
        std::fs::write(
            fx.dir.join(format!("{name}.toml")),
            format!("name = \"{name}\"\nmodel = \"m\"\ninstructions = \"x\"\n[tools.{other}]\nagent = \"{other}.toml\"\n"),
        )
        .unwrap();
    };
    std::fs::write(fx.dir.join("leaf.toml"), "name = \"leaf\"\nmodel = \"m\"\ninstructions = \"x\"\n").unwrap();
    write("boss", "leaf");
    let boss = Agent::load(&fx.dir.join("boss.toml")).unwrap();
    assert_eq!(boss.sub_agents["leaf"].def.name, "leaf");
    write("ping", "pong");
    write("pong", "ping");
    let err = Agent::load(&fx.dir.join("ping.toml")).unwrap_err().to_string();
    assert!(err.contains("more than 4 deep (is there a cycle?)"), "{err}");
    write("lost", "nowhere");
    let err = Agent::load(&fx.dir.join("lost.toml")).unwrap_err().to_string();
    assert!(err.contains("tool `nowhere`") && err.contains("could not read"), "{err}");
}

#[tokio::test]
async fn a_model_repeating_the_same_call_is_stopped_as_a_loop() {
    let fx = Fixture::new("loop-detect");
    let agent = fx.agent("[tools.list_dir]\n");
    let same = || Scripted::calls(&[("c", "list_dir", json!({"path": "nowhere"}))]);
    let model = Arc::new(Scripted::new([same(), same(), same(), same(), Scripted::text("never")]));
    let outcome = fx.runner(model.clone()).start(&agent, "look", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Stopped);
    assert_eq!(outcome.reason.as_deref(), Some("loop: the model made the same call (list_dir) 3 turns in a row"));
    assert_eq!(model.remaining(), 2);
}

mod mcp;
mod workflows;
mod examples;
mod guard;

#[tokio::test]
async fn memories_are_saved_recalled_for_the_same_user_and_kept_apart_for_others() {
    let fx = Fixture::new("memory");
    let memory = "[memory]\nmin_relevance = 0.1\n";
    let clerk = fx.agent(memory);
    let with_user = |user: &str| BTreeMap::from([("who".to_string(), "x".to_string()), ("user".to_string(), user.to_string())]);
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[
            ("m1", "memory_save", json!({"fact": "Ada wants invoices in euros", "importance": 8})),
            ("m2", "memory_save", json!({"fact": "The billing office closes at five", "about": "agent"})),
        ]),
        Scripted::calls(&[("m3", "memory_save", json!({"fact": "Ada wants invoices in euros!"}))]),
        Scripted::text("noted"),
    ]));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = fx.runner(model.clone()).with_events(tx).start(&clerk, "remember my currency", &with_user("ada")).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    let mut outputs = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let RunEvent::ToolResult { output, is_error, .. } = event {
            assert!(!is_error, "{output}");
            outputs.push(output);
        }
    }
    assert!(outputs[0].starts_with("saved mem_") && outputs[0].ends_with("(about the user)"), "{outputs:?}");
    assert!(outputs[1].ends_with("(for this agent)"), "{outputs:?}");
    // The same fact again updates the one kept, instead of adding a near-duplicate.
    assert!(outputs[2].starts_with("updated mem_"), "{outputs:?}");
    assert_eq!(fx.store.memories(None, None, true).unwrap().len(), 2);
    assert!(model.requests.lock().unwrap()[0].tools.iter().any(|t| t.name == "memory_search"));

    // Another agent serving Ada recalls the fact about her into its context, not the first
    // agent's own fact; the same agent for Bob recalls nothing about Ada.
    let other = {
        let mut def = AgentDef::parse(&format!("name = \"other\"\nmodel = \"scripted\"\ninstructions = \"Help.\"\n{memory}")).unwrap();
        def.workspace = Some(fx.dir.join("ws"));
        Agent::new(def, &fx.dir)
    };
    let model = Arc::new(Scripted::new([Scripted::text("euros"), Scripted::text("no idea")]));
    fx.runner(model.clone()).start(&other, "which currency for invoices and when does billing close", &with_user("ada")).await.unwrap();
    fx.runner(model.clone()).start(&other, "which currency for invoices", &with_user("bob")).await.unwrap();
    let requests = model.requests.lock().unwrap().clone();
    let system = requests[0].messages[0].text_content();
    assert!(system.contains("What you remember") && system.contains("Ada wants invoices in euros!"), "{system}");
    assert!(!system.contains("billing office"), "another agent's own facts stay its own: {system}");
    assert!(!requests[1].messages[0].text_content().contains("euros"), "Bob does not see Ada's facts");

    // memory_search finds it; a user fact without a user is refused with a reason.
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("s1", "memory_search", json!({"query": "when does the billing office close, and invoices?"})), ("s2", "memory_save", json!({"fact": "x y z", "about": "user"}))]),
        Scripted::text("done"),
    ]));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    fx.runner(model).with_events(tx).start(&clerk, "look it up", &vars()).await.unwrap();
    let mut results = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let RunEvent::ToolResult { output, is_error, .. } = event {
            results.push((output, is_error));
        }
    }
    // Without a user, only the agent's own facts are searched.
    assert!(results[0].0.contains("billing office") && !results[0].0.contains("euros"), "{results:?}");
    assert!(results[1].1 && results[1].0.contains("no user is known for this run"), "{results:?}");
}

#[tokio::test]
async fn a_handoff_passes_the_conversation_to_another_agent_that_finishes_the_run() {
    let fx = Fixture::new("handoff");
    std::fs::write(
        fx.dir.join("triage.toml"),
        "name = \"triage\"\nmodel = \"scripted\"\ninstructions = \"Route {{who}}.\"\nworkspace = \"ws\"\n[budget]\nmax_steps = 3\n[handoffs.billing]\nagent = \"billing.toml\"\ndescription = \"Invoices and refunds\"\n",
    )
    .unwrap();
    std::fs::write(
        fx.dir.join("billing.toml"),
        "name = \"billing\"\nmodel = \"scripted\"\ninstructions = \"You do billing for {{who}}.\"\nworkspace = \"ws\"\n[tools.list_dir]\n[handoffs.triage]\nagent = \"triage.toml\"\n",
    )
    .unwrap();
    let triage = Agent::load(&fx.dir.join("triage.toml")).unwrap();
    assert_eq!(triage.team.keys().collect::<Vec<_>>(), ["billing"], "the cycle back to triage loads once");

    // The model behind billing is down right after the handoff: the run fails, and resumes
    // with billing still holding the conversation.
    let model = Arc::new(Scripted::new([Scripted::calls(&[("h1", "transfer_to_billing", json!({"reason": "an invoice"}))])]));
    let outcome = fx.runner(model.clone()).start(&triage, "Why is my invoice in dollars?", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    let offered: Vec<String> = model.requests.lock().unwrap()[0].tools.iter().map(|t| t.name.clone()).collect();
    assert_eq!(offered, ["transfer_to_billing"]);

    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("l1", "list_dir", json!({"path": "."}))]),
        Scripted::text("Billing here: it will be in euros from now on."),
        Scripted::text("never reached"),
    ]));
    let outcome = fx.runner(model.clone()).resume(&outcome.run_id, &triage).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(outcome.output.as_deref(), Some("Billing here: it will be in euros from now on."));
    let requests = model.requests.lock().unwrap().clone();
    // Billing's own instructions and tools, and the whole conversation so far.
    assert_eq!(requests[0].messages[0].text_content(), "You do billing for Ada.");
    assert_eq!(requests[0].messages[1].text_content(), "Why is my invoice in dollars?");
    assert_eq!(requests[0].messages[2].tool_calls[0].name, "transfer_to_billing");
    assert!(requests[0].messages[3].text_content().contains("handed over to billing"));
    let mut tools: Vec<String> = requests[0].tools.iter().map(|t| t.name.clone()).collect();
    tools.sort();
    assert_eq!(tools, ["list_dir", "transfer_to_triage"]);
    // One budget for the run: triage's max_steps = 3 counted every model call.
    assert_eq!(outcome.model_calls, 3);
    assert_eq!(model.remaining(), 1);
    let (_, steps) = fx.store.load_run(&outcome.run_id).unwrap();
    assert!(steps.iter().any(|s| s.data.contains("\"handoff\":\"billing\"")));
}

#[tokio::test]
async fn a_sub_agent_waiting_for_approval_pauses_its_caller_and_is_decided_through_it() {
    let fx = Fixture::new("subapproval");
    let parent = with_researcher(&fx, "", "[tools.write_file]\napproval = \"required\"\n");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "researcher", json!({"request": "write the report"}))]),
        Scripted::calls(&[("w1", "write_file", json!({"path": "report.md", "content": "# Report"}))]),
        Scripted::text("The report is written."),
        Scripted::text("Done: the researcher wrote it."),
    ]));
    let runner = fx.runner(model.clone());
    let outcome = runner.start(&parent, "get me a report", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::WaitingApproval);
    assert_eq!(outcome.waiting.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["w1"]);
    let reason = outcome.reason.unwrap();
    assert!(reason.contains(&format!("write_file in the researcher agent's run {}.c1", outcome.run_id)), "{reason}");
    assert!(!fx.dir.join("ws/report.md").exists());

    // Decided through the caller's run id, then the caller resumes and the sub-agent with it.
    let err = runner.decide(&outcome.run_id, "nope", true, None).unwrap_err().to_string();
    assert!(err.contains("it waits for: w1"), "{err}");
    runner.decide(&outcome.run_id, "w1", true, Some("fine".into())).unwrap();
    let done = runner.resume(&outcome.run_id, &parent).await.unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.reason);
    assert_eq!(done.output.as_deref(), Some("Done: the researcher wrote it."));
    assert_eq!(std::fs::read_to_string(fx.dir.join("ws/report.md")).unwrap(), "# Report");
    assert_eq!(done.model_calls, 4);
    assert_eq!(model.remaining(), 0);
}

/// Arguments of a typed tool: the schema the model sees comes from this type.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Forecast {
    /// The city, e.g. "Lisbon".
    city: String,
    /// How many days ahead (1 to 7).
    #[schemars(range(min = 1, max = 7))]
    days: Option<u8>,
    units: Units,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Units {
    Metric,
    Imperial,
}

#[tokio::test]
async fn a_typed_rust_tool_gets_its_schema_from_its_type_and_its_arguments_parsed() {
    let fx = Fixture::new("typed");
    let mut agent = fx.agent("");
    agent.tools.insert(
        keel_agent::tools::typed("forecast", "The weather ahead", |args: Forecast, _ctx| {
            Box::pin(async move {
                let unit = match args.units {
                    Units::Metric => "°C",
                    Units::Imperial => "°F",
                };
                Ok(format!("{}: 21{unit} for {} days", args.city, args.days.unwrap_or(1)))
            })
        }),
        Approval::Never,
        None,
    );
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[
            ("f1", "forecast", json!({"city": "Lisbon", "days": 3, "units": "metric"})),
            ("f2", "forecast", json!({"city": "Lisbon", "units": "kelvin"})),
            ("f3", "forecast", json!({"city": "Lisbon", "days": 30, "units": "metric"})),
        ]),
        Scripted::text("Sunny."),
    ]));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    fx.runner(model.clone()).with_events(tx).start(&agent, "weather?", &vars()).await.unwrap();
    let schema = model.requests.lock().unwrap()[0].tools.iter().find(|t| t.name == "forecast").unwrap().parameters.clone();
    assert_eq!(schema["required"], json!(["city", "units"]));
    assert_eq!(schema["properties"]["city"]["description"], "The city, e.g. \"Lisbon\".");
    assert_eq!(schema["properties"]["units"]["enum"], json!(["metric", "imperial"]), "inlined, no $ref: {schema}");
    let mut results = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let RunEvent::ToolResult { output, is_error, .. } = event {
            results.push((output, is_error));
        }
    }
    assert_eq!(results[0], ("Lisbon: 21°C for 3 days".to_string(), false));
    assert!(results[1].1 && results[1].0.contains("/units"), "an enum outside the type: {:?}", results[1]);
    assert!(results[2].1 && results[2].0.contains("/days"), "a range from the type: {:?}", results[2]);
}

#[tokio::test]
async fn a_run_driven_by_a_live_process_is_not_resumed_by_another() {
    let fx = Fixture::new("lease");
    let agent = fx.agent("");
    let down = Arc::new(Scripted::new([]));
    let outcome = fx.runner(down).start(&agent, "hi", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let never_gone = |_: &str| false;

    // Another live process (this test's, under another token) holds it: refused, with who.
    let holder = format!("{host}:{}:elsewhere", std::process::id());
    assert_eq!(fx.store.acquire_lease(&outcome.run_id, &holder, now, now + 60_000, &never_gone).unwrap(), None);
    let err = fx.runner(Arc::new(Scripted::new([Scripted::text("x")]))).resume(&outcome.run_id, &agent).await.unwrap_err();
    assert!(matches!(err, keel_agent::Error::Busy { .. }), "{err}");
    assert!(err.to_string().contains(&holder), "{err}");

    // A holder whose process has ended is passed over at once.
    fx.store.release_lease(&outcome.run_id, &holder).unwrap();
    let dead = format!("{host}:4000000000:gone");
    fx.store.acquire_lease(&outcome.run_id, &dead, now, now + 60_000, &never_gone).unwrap();
    let resumed = fx.runner(Arc::new(Scripted::new([Scripted::text("back")]))).resume(&outcome.run_id, &agent).await.unwrap();
    assert_eq!(resumed.status, RunStatus::Completed);
    // And the lease is given back when the run ends.
    assert_eq!(fx.store.acquire_lease(&outcome.run_id, &holder, now, now + 1, &never_gone).unwrap(), None);
}

#[tokio::test]
async fn agents_built_in_rust_run_like_agent_files() {
    let fx = Fixture::new("builder");
    let count = Arc::new(AtomicUsize::new(0));
    let helper = Agent::builder("helper", "scripted").instructions("You help.").build().unwrap();
    let agent = Agent::builder("boss", "scripted")
        .instructions("You are the boss of {{who}}.")
        .workspace(fx.dir.join("ws"))
        .builtin("list_dir")
        .tool(counter(count.clone()))
        .agent_tool("helper", "Ask the helper", helper)
        .max_steps(5)
        .build()
        .unwrap();
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("c1", "charge", json!({"amount": 3})), ("c2", "helper", json!({"request": "hi"}))]),
        Scripted::text("helped"),
        Scripted::text("all done"),
    ]));
    let outcome = fx.runner(model.clone()).start(&agent, "go", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.reason);
    assert_eq!(outcome.output.as_deref(), Some("all done"));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let requests = model.requests.lock().unwrap();
    assert_eq!(requests[0].messages[0].text_content(), "You are the boss of Ada.");
    let mut tools: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    tools.sort();
    assert_eq!(tools, ["charge", "helper", "list_dir"]);
    // The builder checks what an agent file would be checked for.
    let err = Agent::builder("x", "m").builtin("http_get").build().unwrap_err().to_string();
    assert!(err.contains("allow_hosts"), "{err}");
}

/// The scripted model's embeddings as a collection's embedder, so the collection and the
/// search tool agree.
struct ScriptedEmbed(Arc<Scripted>);

impl keel_rag::Embedder for ScriptedEmbed {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        self.0.embed("scripted-embed", texts)
    }
}

#[tokio::test]
async fn a_collection_tool_searches_rag_and_labels_results_with_the_collections_trust() {
    let fx = Fixture::new("ragtool");
    let root = fx.dir.join("rag");
    let model = Arc::new(Scripted::new([
        Scripted::calls(&[("r1", "handbook", json!({"query": "how long are nightly backups kept", "k": 2})), ("r2", "wiki", json!({"query": "anything"}))]),
        Scripted::text("35 days"),
    ]));
    let mut handbook = keel_rag::Collection::open(&root, "handbook", "scripted-embed", true).unwrap();
    let docs = [("backups.md", "# Backups\n\nNightly backups are kept for 35 days."), ("oncall.md", "# Oncall\n\nPages escalate after fifteen minutes.")]
        .map(|(id, text)| keel_rag::Document { id: id.into(), source: id.into(), title: None, text: text.into(), kind: keel_rag::Kind::Markdown, meta: Default::default(), pages: Vec::new() });
    let limits = keel_rag::Limits { max_tokens: 64, overlap_tokens: 0 };
    let count = |t: &str| t.split_whitespace().count() + 2;
    handbook.ingest(docs.to_vec(), None, &ScriptedEmbed(model.clone()), limits, &count, &|_, _| {}).await.unwrap();
    assert_eq!(handbook.trust(), "untrusted", "untrusted unless said otherwise");
    drop(handbook);

    let agent = fx.agent("[tools.handbook]\ncollection = \"handbook\"\n[tools.wiki]\ncollection = \"wiki\"\n");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = fx.runner(model.clone()).with_rag_root(root.clone()).with_events(tx).start(&agent, "backups?", &vars()).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    let mut results = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let RunEvent::ToolResult { output, is_error, .. } = event {
            results.push((output, is_error));
        }
    }
    let (found, is_error) = &results[0];
    assert!(!is_error, "{found}");
    let found: serde_json::Value = serde_json::from_str(found).unwrap();
    assert_eq!(found["trust"], "untrusted");
    assert_eq!(found["results"][0]["source"], "backups.md", "{found}");
    assert_eq!(found["results"][0]["trust"], "untrusted");
    assert_eq!(found["results"][0]["headings"], json!(["Backups"]));
    // A collection that does not exist is an error the model sees, naming it.
    assert!(results[1].1 && results[1].0.contains("collection `wiki` does not exist"), "{:?}", results[1]);
    let tools = model.requests.lock().unwrap()[0].tools.clone();
    let def = tools.iter().find(|t| t.name == "handbook").unwrap();
    assert!(def.description.as_deref().unwrap().contains("`handbook` documents"));

    // A trusted collection says so.
    keel_rag::Collection::open(&root, "handbook", "scripted-embed", false).unwrap().set_trust("trusted").unwrap();
    let model = Arc::new(Scripted::new([Scripted::calls(&[("r3", "handbook", json!({"query": "escalate pages"}))]), Scripted::text("ok")]));
    let (outcome, ran) = {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outcome = fx.runner(model).with_rag_root(root).with_events(tx).start(&agent, "pages?", &vars()).await.unwrap();
        let mut ran = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let RunEvent::ToolResult { output, .. } = event {
                ran.push(output);
            }
        }
        (outcome, ran)
    };
    assert_eq!(outcome.status, RunStatus::Completed);
    let found: serde_json::Value = serde_json::from_str(&ran[0]).unwrap();
    assert_eq!(found["trust"], "trusted");
    assert_eq!(found["results"][0]["source"], "oncall.md");
}
