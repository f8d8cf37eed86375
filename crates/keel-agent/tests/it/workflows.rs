//! Declared workflows: fan-out, fan-in, conditional edges over a typed state, durable
//! supersteps, on scripted models (one per agent, since fanned-out nodes call at once).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use keel_agent::{ChatModel, Reply, RunStatus, Scripted, Workflow};
use keel_core::ChatRequest;
use serde_json::json;

use super::Fixture;

/// Answers each agent from its own script, told apart by its system prompt.
struct ByAgent(Vec<(&'static str, Arc<Scripted>)>);

impl ChatModel for ByAgent {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Reply, String>> {
        let system = request.messages[0].text_content();
        let script = self.0.iter().find(|(key, _)| system.contains(key)).map(|(_, s)| s.clone());
        Box::pin(async move {
            match script {
                Some(script) => script.chat(request).await,
                None => Err(format!("no script for the system prompt {system:?}")),
            }
        })
    }
}

const WORKFLOW: &str = r#"
name = "support"
start = "classify"
max_node_visits = 3

[state]
ticket = { type = "string" }
category = { type = "string", enum = ["refund", "question"] }
notes = { type = "array", items = { type = "string" } }
answer = { type = "string" }

[nodes.classify]
agent = "agent.toml"
input = "Classify: {{ticket}}"
output = "category"

[nodes.docs]
agent = "docs.toml"
input = "Search the docs for: {{ticket}}"
output = "notes"

[nodes.history]
agent = "history.toml"
input = "Search past tickets for: {{ticket}}"
output = "notes"

[nodes.writer]
agent = "writer.toml"
input = "Answer {{ticket}} using {{notes}} ({{category}})"
output = "answer"

[[edges]]
from = "classify"
to = ["docs", "history"]
when = "category == 'question'"

[[edges]]
from = "classify"
to = "writer"
when = "category == 'refund'"

[[edges]]
from = ["docs", "history"]
to = "writer"
"#;

fn setup(fx: &Fixture) -> Workflow {
    for (file, prompt) in [("agent.toml", "You classify tickets."), ("docs.toml", "You search docs."), ("history.toml", "You search history."), ("writer.toml", "You write answers.")] {
        let name = file.trim_end_matches(".toml");
        std::fs::write(fx.dir.join(file), format!("name = \"{name}\"\nmodel = \"scripted\"\ninstructions = \"{prompt}\"\nworkspace = \"ws\"\n")).unwrap();
    }
    std::fs::write(fx.dir.join("support.toml"), WORKFLOW).unwrap();
    Workflow::load(&fx.dir.join("support.toml")).unwrap()
}

fn ticket(text: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({"ticket": text}).as_object().unwrap().clone()
}

#[tokio::test]
async fn a_question_fans_out_and_back_in_and_a_refund_takes_the_other_edge() {
    let fx = Fixture::new("workflow");
    let workflow = setup(&fx);
    let classify = Arc::new(Scripted::new([Scripted::text("{\"value\": \"question\"}"), Scripted::text("{\"value\": \"refund\"}")]));
    let docs = Arc::new(Scripted::new([Scripted::text("The docs say: resets take an hour.")]));
    let history = Arc::new(Scripted::new([Scripted::text("Ticket 12 had the same issue.")]));
    let writer = Arc::new(Scripted::new([Scripted::text("Wait an hour, as in ticket 12."), Scripted::text("Refund issued.")]));
    let model = Arc::new(ByAgent(vec![
        ("classify", classify.clone()),
        ("search docs", docs.clone()),
        ("search history", history.clone()),
        ("write answers", writer.clone()),
    ]));
    let runner = fx.runner(model);

    let outcome = runner.run_workflow(&workflow, &ticket("my password reset is slow")).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed, "{:?}", outcome.reason);
    assert_eq!(outcome.supersteps, 3, "classify; docs and history together; writer");
    assert_eq!(outcome.state["category"], "question");
    assert_eq!(outcome.state["notes"], json!(["The docs say: resets take an hour.", "Ticket 12 had the same issue."]));
    assert_eq!(outcome.state["answer"], "Wait an hour, as in ticket 12.");
    assert_eq!(outcome.output.as_deref(), Some("Wait an hour, as in ticket 12."));
    assert_eq!(outcome.model_calls, 4);
    // The typed field was asked for as structured output; the writer saw what fan-in gathered.
    let asked = classify.requests.lock().unwrap()[0].clone();
    assert_eq!(asked.messages[1].text_content(), "Classify: my password reset is slow");
    let format = serde_json::to_value(asked.response_format.unwrap()).unwrap();
    assert!(format.to_string().contains("\"enum\":[\"refund\",\"question\"]"), "{format}");
    let wrote = writer.requests.lock().unwrap()[0].messages[1].text_content();
    assert!(wrote.contains("resets take an hour") && wrote.contains("Ticket 12") && wrote.ends_with("(question)"), "{wrote}");

    let outcome = runner.run_workflow(&workflow, &ticket("refund my order")).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Completed);
    assert_eq!(outcome.supersteps, 2, "straight to the writer");
    assert_eq!(outcome.state["answer"], "Refund issued.");
    assert_eq!(docs.requests.lock().unwrap().len(), 1, "the docs node did not run for a refund");

    // Each node's agent run is a run of its own, in the workflow's trace.
    let spans = fx.store.spans(&outcome.run_id).unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"invoke_workflow support") && names.contains(&"invoke_agent writer"), "{names:?}");
}

#[tokio::test]
async fn a_workflow_cut_off_at_a_node_resumes_without_rerunning_finished_nodes() {
    let fx = Fixture::new("workflow-resume");
    let workflow = setup(&fx);
    let scripts = |writer: Vec<keel_core::ChatResponse>| {
        Arc::new(ByAgent(vec![
            ("classify", Arc::new(Scripted::new([Scripted::text("{\"value\": \"question\"}")]))),
            ("search docs", Arc::new(Scripted::new([Scripted::text("docs note")]))),
            ("search history", Arc::new(Scripted::new([Scripted::text("history note")]))),
            ("write answers", Arc::new(Scripted::new(writer))),
        ]))
    };
    // The writer's model is down: the workflow fails at that node, with the reason.
    let outcome = fx.runner(scripts(vec![])).run_workflow(&workflow, &ticket("slow reset")).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    let reason = outcome.reason.unwrap();
    assert!(reason.starts_with("node `writer` failed"), "{reason}");

    // Resumed with fresh scripts: only the writer is asked (the others have answers left
    // over, so a rerun would show).
    let model = scripts(vec![Scripted::text("done")]);
    let runner = fx.runner(model.clone());
    let stored = runner.stored_workflow(&outcome.run_id).unwrap();
    let resumed = runner.resume_workflow(&outcome.run_id, &stored).await.unwrap();
    assert_eq!(resumed.status, RunStatus::Completed, "{:?}", resumed.reason);
    assert_eq!(resumed.state["answer"], "done");
    assert_eq!(resumed.state["notes"], json!(["docs note", "history note"]));
    for (name, script) in &model.0[..3] {
        assert_eq!(script.remaining(), 1, "{name} ran again");
    }
}

#[test]
fn bad_workflows_are_refused_with_the_reason() {
    let fx = Fixture::new("workflow-bad");
    setup(&fx);
    let load = |text: &str| {
        std::fs::write(fx.dir.join("bad.toml"), text).unwrap();
        Workflow::load(&fx.dir.join("bad.toml")).unwrap_err().to_string()
    };
    let err = load(&WORKFLOW.replace("when = \"category == 'refund'\"", "when = \"categry == 'refund'\""));
    assert!(err.contains("`categry` is not a state field"), "{err}");
    let err = load(&WORKFLOW.replace("to = \"writer\"\nwhen", "to = \"writr\"\nwhen"));
    assert!(err.contains("`writr` is not a node"), "{err}");
    let err = load(&WORKFLOW.replace("{{ticket}} using", "{{tickt}} using"));
    assert!(err.contains("{{tickt}}, which is not a state field"), "{err}");
    let err = load(&WORKFLOW.replace("when = \"category == 'question'\"", "when = \"category == 'question\""));
    assert!(err.contains("not closed"), "{err}");
}
