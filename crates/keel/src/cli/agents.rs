//! `keel agent …` and `keel runs …`: agent files, runs printed step by step as they happen,
//! and the run history in the store (inspect, approve, deny, resume).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keel_agent::{Agent, Outcome, RunEvent, RunStatus, Runner, Step};
use keel_store::Store;

use crate::settings::{self, Settings};
use crate::table::{self, Cell};
use clap::Subcommand;

/// `keel agent new NAME`: a commented starter file.
pub fn new_agent(name: &str, dir: Option<&Path>) -> anyhow::Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("an agent name uses letters, digits, `-` and `_` (got `{name}`)");
    }
    let dir = dir.unwrap_or(Path::new("."));
    let path = dir.join(format!("{name}.toml"));
    if path.exists() {
        bail!("{} already exists; pick another name or edit it", path.display());
    }
    std::fs::create_dir_all(dir.join("workspace")).with_context(|| format!("could not create {}", dir.join("workspace").display()))?;
    std::fs::write(&path, keel_agent::definition::starter(name)).with_context(|| format!("could not write {}", path.display()))?;
    println!("wrote {}; run it with: keel agent run {} \"your request\"", path.display(), path.display());
    Ok(())
}

fn parse_vars(vars: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    vars.iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
            _ => bail!("--var takes NAME=VALUE (got `{pair}`)"),
        })
        .collect()
}

struct RunContext {
    runner: Runner,
    printer: tokio::task::JoinHandle<()>,
}

async fn context(config: Option<&Path>, json: bool, pull: bool) -> anyhow::Result<RunContext> {
    let settings: Settings = settings::load(config)?;
    crate::local::ensure_models(&settings.config, pull).await?;
    let router = Arc::new(crate::local::router(&settings.config)?);
    let store = Arc::new(Store::open(&settings.store_path())?);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut streaming = false;
        while let Some(event) = rx.recv().await {
            if json {
                if let Ok(line) = serde_json::to_string(&event) {
                    println!("{line}");
                }
            } else {
                streaming = print_event(&event, streaming);
            }
        }
    });
    Ok(RunContext { runner: Runner::new(store, router).with_rag_root(crate::cli::rag::root()).with_events(tx), printer })
}

fn short(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max { format!("{}…", flat.chars().take(max).collect::<String>()) } else { flat }
}

/// Prints one event; `streaming` says whether the model's text is being printed as it comes
/// (so the step's summary does not print it again). Returns the new `streaming`.
fn print_event(event: &RunEvent, streaming: bool) -> bool {
    use std::io::Write;
    if let RunEvent::Delta { text } = event {
        if !streaming {
            print!("    ");
        }
        print!("{}", text.replace('\n', "\n    "));
        let _ = std::io::stdout().flush();
        return true;
    }
    if streaming {
        println!();
    }
    match event {
        RunEvent::Delta { .. } => {}
        RunEvent::Started { run_id, agent, resumed } => {
            let verb = if *resumed { "resumed" } else { "started" };
            println!("{} {verb} run {run_id} (agent {agent})", table::paint("▶", table::BOLD));
        }
        RunEvent::ModelCall { step, text, tool_calls, usage, cost_usd, ms } => {
            let cost = cost_usd.map_or(String::new(), |c| format!(", ${c:.4}"));
            println!(
                "  {} step {step}: {} tokens{cost}, {:.0} ms",
                table::paint("model", table::DIM),
                usage.input_tokens + usage.output_tokens,
                ms
            );
            if !streaming && !text.trim().is_empty() {
                println!("    {}", short(text, 200));
            }
            for call in tool_calls {
                println!("    → {}({}) [{}]", call.name, short(&call.arguments, 120), call.id);
            }
        }
        RunEvent::ToolResult { name, output, is_error, ms, .. } => {
            let mark = if *is_error { table::paint("error", table::RED) } else { table::paint("ok", table::GREEN) };
            println!("  {} {name} {mark} {ms:.0} ms: {}", table::paint("tool", table::DIM), short(output, 160));
        }
        RunEvent::ToolReused { call_id, name } => {
            println!("  {} {name} [{call_id}] already ran; its recorded result is used", table::paint("tool", table::DIM));
        }
        // Allowed calls go by quietly; the guard speaks when it stops one.
        RunEvent::Guard { verdict: keel_guard::Verdict::Allow, .. } => {}
        RunEvent::Guard { call_id, name, verdict, policy, reason, .. } => {
            let color = if *verdict == keel_guard::Verdict::Deny { table::RED } else { table::YELLOW };
            println!("  {} {name} [{call_id}] {} by {policy}: {}", table::paint("guard", table::DIM), table::paint(verdict.name(), color), short(reason, 160));
        }
        RunEvent::WaitingApproval { call_id, name, arguments } => {
            println!("  {} {name}({}) needs approval [{call_id}]", table::paint("⏸", table::YELLOW), short(arguments, 160));
        }
        RunEvent::Finished { status, output, reason } => {
            let (mark, color) = match status {
                RunStatus::Completed => ("✔ completed", table::GREEN),
                RunStatus::Stopped => ("■ stopped", table::YELLOW),
                _ => ("✘ failed", table::RED),
            };
            println!("{}{}", table::paint(mark, color), reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default());
            if let Some(output) = output {
                println!("{output}");
            }
        }
    }
    false
}

async fn finish(ctx: RunContext, outcome: Result<Outcome, keel_agent::Error>, json: bool) -> anyhow::Result<()> {
    let RunContext { runner, printer, .. } = ctx;
    drop(runner);
    let _ = printer.await;
    let outcome = outcome?;
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else if outcome.status == RunStatus::WaitingApproval {
        for call in &outcome.waiting {
            println!(
                "waiting: keel runs approve {} {}   (or: keel runs deny {} {} --note \"why\")",
                outcome.run_id, call.id, outcome.run_id, call.id
            );
        }
    }
    match outcome.status {
        RunStatus::Failed => bail!("run {} failed: {}", outcome.run_id, outcome.reason.unwrap_or_default()),
        _ => Ok(()),
    }
}

/// `keel agent run FILE INPUT`.
pub async fn run(config: Option<&Path>, file: &Path, input: &str, vars: &[String], json: bool, pull: bool) -> anyhow::Result<()> {
    let agent = Agent::load(file)?;
    let vars = parse_vars(vars)?;
    let input = if input == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("could not read the input from standard input")?;
        text
    } else {
        input.to_string()
    };
    let ctx = context(config, json, pull).await?;
    let outcome = ctx.runner.start(&agent, &input, &vars).await;
    finish(ctx, outcome, json).await
}

/// `keel workflow run FILE --set FIELD=VALUE…`.
pub async fn run_workflow(config: Option<&Path>, file: &Path, sets: &[String], json: bool, pull: bool) -> anyhow::Result<()> {
    let workflow = keel_agent::Workflow::load(file)?;
    let mut inputs = serde_json::Map::new();
    for (field, value) in parse_vars(sets).map_err(|_| anyhow::anyhow!("--set takes FIELD=VALUE"))? {
        // A string field takes the text as is; other fields take JSON (numbers, lists, …).
        let is_text = workflow.def.state.get(&field).is_none_or(|schema| schema["type"] == "string");
        let value = if is_text { serde_json::Value::String(value) } else { serde_json::from_str(&value).with_context(|| format!("--set {field}: not JSON"))? };
        inputs.insert(field, value);
    }
    let ctx = context(config, json, pull).await?;
    let outcome = ctx.runner.run_workflow(&workflow, &inputs).await;
    finish_workflow(ctx, outcome, json).await
}

async fn finish_workflow(ctx: RunContext, outcome: Result<keel_agent::WorkflowOutcome, keel_agent::Error>, json: bool) -> anyhow::Result<()> {
    let RunContext { runner, printer, .. } = ctx;
    drop(runner);
    let _ = printer.await;
    let outcome = outcome?;
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        let (mark, color) = match outcome.status {
            RunStatus::Completed => ("✔ workflow completed", table::GREEN),
            RunStatus::WaitingApproval => ("⏸ workflow waiting", table::YELLOW),
            RunStatus::Stopped => ("■ workflow stopped", table::YELLOW),
            _ => ("✘ workflow failed", table::RED),
        };
        println!(
            "{} (run {}, {} supersteps, {} model calls, ${:.4}){}",
            table::paint(mark, color),
            outcome.run_id,
            outcome.supersteps,
            outcome.model_calls,
            outcome.cost_usd,
            outcome.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        );
        println!("state: {}", serde_json::to_string_pretty(&outcome.state)?);
    }
    match outcome.status {
        RunStatus::Failed => bail!("workflow run {} failed: {}", outcome.run_id, outcome.reason.unwrap_or_default()),
        _ => Ok(()),
    }
}

/// `keel runs resume ID`.
pub async fn resume(config: Option<&Path>, id: &str, json: bool) -> anyhow::Result<()> {
    let ctx = context(config, json, false).await?;
    let (record, _) = ctx.runner.store().load_run(id)?;
    if keel_agent::workflow::is_workflow_run(&record) {
        let workflow = ctx.runner.stored_workflow(id)?;
        let outcome = ctx.runner.resume_workflow(id, &workflow).await;
        return finish_workflow(ctx, outcome, json).await;
    }
    let agent = ctx.runner.stored_agent(id)?;
    let outcome = ctx.runner.resume(id, &agent).await;
    finish(ctx, outcome, json).await
}

/// `keel runs approve|deny ID CALL`: records the decision and continues the run.
pub async fn decide(config: Option<&Path>, id: &str, call: &str, approved: bool, note: Option<String>, json: bool) -> anyhow::Result<()> {
    let ctx = context(config, json, false).await?;
    ctx.runner.decide(id, call, approved, note)?;
    if !json {
        println!("{} call {call} of run {id}", if approved { "approved" } else { "denied" });
    }
    let agent = ctx.runner.stored_agent(id)?;
    let outcome = ctx.runner.resume(id, &agent).await;
    finish(ctx, outcome, json).await
}

fn open_store(config: Option<&Path>) -> anyhow::Result<Store> {
    let settings = settings::load(config)?;
    Ok(Store::open(&settings.store_path())?)
}

fn status_cell(status: &str) -> Cell {
    let color = match status {
        "completed" => table::GREEN,
        "waiting_approval" | "stopped" | "running" => table::YELLOW,
        _ => table::RED,
    };
    Cell::new(status).color(color)
}

/// `keel runs list`.
pub fn list(config: Option<&Path>, json: bool, limit: usize) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let runs = store.recent_runs(limit)?;
    if json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| serde_json::json!({"id": r.id, "agent": r.agent, "status": r.status, "created_ms": r.created_ms, "updated_ms": r.updated_ms, "input": r.input, "output": r.output, "reason": r.reason}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs yet; start one with: keel agent run AGENT.toml \"your request\"");
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = runs
        .iter()
        .map(|r| {
            vec![
                Cell::new(&r.id),
                Cell::new(&r.agent),
                status_cell(&r.status),
                Cell::new(crate::cli::gateway::format_time(r.created_ms)),
                Cell::new(short(&r.input, 50)),
            ]
        })
        .collect();
    print!("{}", table::render(&["RUN", "AGENT", "STATUS", "STARTED (UTC)", "INPUT"], &rows));
    Ok(())
}

/// `keel runs show ID`: every step, with the exact request and response under `--json`.
pub fn show(config: Option<&Path>, id: &str, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let (record, steps) = store.load_run(id)?;
    if keel_agent::workflow::is_workflow_run(&record) {
        return show_workflow(&record, &steps, json);
    }
    let parsed: Vec<(i64, Step)> = steps
        .iter()
        .map(|s| serde_json::from_str::<Step>(&s.data).map(|step| (s.seq, step)).with_context(|| format!("step {} is unreadable", s.seq)))
        .collect::<anyhow::Result<_>>()?;
    if json {
        let steps: Vec<serde_json::Value> = parsed.iter().map(|(seq, step)| serde_json::json!({"seq": seq, "step": step})).collect();
        let value = serde_json::json!({
            "id": record.id, "agent": record.agent, "status": record.status, "input": record.input,
            "output": record.output, "reason": record.reason, "created_ms": record.created_ms, "steps": steps,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("run {} · agent {} · {}", record.id, record.agent, status_cell(&record.status).text);
    println!("input: {}", short(&record.input, 200));
    let mut rows = Vec::new();
    let (mut tokens, mut cost) = (0u64, 0.0f64);
    // What the model had read by each call: its answer carries that label.
    let mut seen = keel_guard::Label::user().join(&keel_guard::Label::system());
    for (seq, step) in &parsed {
        let (kind, detail, tok, usd, ms) = match step {
            Step::Model { response, cost_usd, ms, provider, role, .. } => {
                let calls: Vec<String> = response.message.tool_calls.iter().map(|c| format!("{}({})", c.name, short(&c.arguments, 40))).collect();
                let text = response.message.text_content();
                let detail = if calls.is_empty() { short(&text, 70) } else { format!("→ {}", calls.join(", ")) };
                // A quarantined read sees only what its plan step hands it; the rest see all.
                let detail = if role.as_deref().is_some_and(|r| r.starts_with("quarantine:")) {
                    detail
                } else {
                    format!("{detail}{}", table::paint(&format!(" ({})", seen.summary()), table::DIM))
                };
                tokens += response.usage.total();
                cost += cost_usd.unwrap_or(0.0);
                // Secure mode: the planner, or a quarantined read of a plan step.
                let kind = match role.as_deref() {
                    Some(role) => format!("{} {provider}", role.replace("quarantine:", "quarantined read ")),
                    None => format!("model {provider}"),
                };
                (kind, detail, response.usage.total().to_string(), cost_usd.map_or("-".into(), |c| format!("{c:.4}")), format!("{ms:.0}"))
            }
            Step::Tool { name, output, is_error, ms, call_id, label, injection, .. } => {
                if let Some(label) = label {
                    seen = seen.join(label);
                }
                let mark = if *is_error { "error: " } else { "" };
                // The output's label: where it came from and who may read it.
                let mut label = label.as_ref().map(|l| table::paint(&format!(" ({})", l.summary()), table::DIM)).unwrap_or_default();
                if let Some(flag) = injection {
                    let by = flag.rule.clone().unwrap_or_else(|| format!("score {:.2}", flag.score));
                    label.push_str(&table::paint(&format!(" injection flagged ({by})"), table::RED));
                }
                (format!("tool {name}"), format!("[{call_id}] {mark}{}{label}", short(output, 60)), "".into(), "".into(), format!("{ms:.0}"))
            }
            Step::Guard { call_id, decision } => {
                let code = match decision.verdict {
                    keel_guard::Verdict::Allow => table::GREEN,
                    keel_guard::Verdict::Ask => table::YELLOW,
                    keel_guard::Verdict::Deny => table::RED,
                };
                let verdict = table::paint(decision.verdict.name(), code);
                let detail = match decision.verdict {
                    keel_guard::Verdict::Allow => format!("[{call_id}] {verdict} {}", decision.tool),
                    _ => format!("[{call_id}] {verdict} {} by {}: {}", decision.tool, decision.policy, short(&decision.reason, 90)),
                };
                ("guard".into(), detail, "".into(), "".into(), "".into())
            }
            Step::Approval { call_id, approved, note } => {
                let verdict = if *approved { "approved" } else { "denied" };
                ("approval".into(), format!("[{call_id}] {verdict}{}", note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()), "".into(), "".into(), "".into())
            }
        };
        rows.push(vec![Cell::num(seq.to_string()), Cell::new(kind), Cell::new(detail), Cell::num(tok), Cell::num(usd), Cell::num(ms)]);
    }
    print!("{}", table::render(&["STEP", "KIND", "DETAIL", "TOKENS", "COST $", "MS"], &rows));
    println!("total: {tokens} tokens, ${cost:.4}");
    if let Some(reason) = &record.reason {
        println!("reason: {reason}");
    }
    if let Some(output) = &record.output {
        println!("output: {output}");
    }
    println!("{}", table::paint(&format!("the exact requests and responses: keel runs show {} --json", record.id), table::DIM));
    Ok(())
}

fn show_workflow(record: &keel_store::RunRecord, steps: &[keel_store::StepRecord], json: bool) -> anyhow::Result<()> {
    let parsed: Vec<serde_json::Value> = steps.iter().map(|s| serde_json::from_str(&s.data)).collect::<Result<_, _>>()?;
    if json {
        let value = serde_json::json!({
            "id": record.id, "workflow": record.agent, "status": record.status, "input": record.input,
            "output": record.output, "reason": record.reason, "created_ms": record.created_ms, "supersteps": parsed,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("workflow run {} · {} · {}", record.id, record.agent, status_cell(&record.status).text);
    let mut rows = Vec::new();
    for step in &parsed {
        for ran in step["ran"].as_array().into_iter().flatten() {
            rows.push(vec![
                Cell::num(step["number"].to_string()),
                Cell::new(ran["node"].as_str().unwrap_or_default()),
                Cell::new(ran["run_id"].as_str().unwrap_or_default()).color(table::DIM),
                Cell::new(short(ran["output"].as_str().unwrap_or_default(), 70)),
            ]);
        }
    }
    print!("{}", table::render(&["STEP", "NODE", "RUN", "ANSWER"], &rows));
    if let Some(last) = parsed.last() {
        println!("state: {}", last["state"]);
    }
    if let Some(reason) = &record.reason {
        println!("reason: {reason}");
    }
    Ok(())
}

/// `keel runs trace ID`: the spans of the run's trace as an indented tree.
pub fn trace(config: Option<&Path>, id: &str, json: bool) -> anyhow::Result<()> {
    let store = open_store(config)?;
    store.load_run(id)?;
    let trace_id = store.trace_of_run(id)?.with_context(|| format!("run {id} has no spans yet"))?;
    let spans = store.spans(&trace_id)?;
    if json {
        let out: Vec<serde_json::Value> = spans
            .iter()
            .map(|s| {
                let attributes: serde_json::Value = serde_json::from_str(&s.attributes).unwrap_or_default();
                serde_json::json!({
                    "trace_id": s.trace_id, "span_id": s.span_id, "parent_id": s.parent_id, "name": s.name,
                    "run_id": s.run_id, "start_ms": s.start_ms, "duration_ms": s.duration_ms, "status": s.status,
                    "attributes": attributes,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let t0 = spans.iter().map(|s| s.start_ms).min().unwrap_or(0);
    let known: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut rows = Vec::new();
    fn walk(
        spans: &[keel_store::SpanRecord],
        parent: Option<&str>,
        known: &std::collections::HashSet<&str>,
        depth: usize,
        t0: i64,
        rows: &mut Vec<Vec<Cell>>,
    ) {
        for span in spans.iter().filter(|s| match (s.parent_id.as_deref(), parent) {
            (Some(p), Some(want)) => p == want,
            // Roots: no parent, or a parent this trace does not hold (a stretch cut off by a crash).
            (p, None) => p.is_none_or(|p| !known.contains(p)),
            _ => false,
        }) {
            let attrs: serde_json::Value = serde_json::from_str(&span.attributes).unwrap_or_default();
            let tokens = match (attrs["gen_ai.usage.input_tokens"].as_u64(), attrs["gen_ai.usage.output_tokens"].as_u64()) {
                (Some(i), Some(o)) => format!("{i}+{o}"),
                _ => String::new(),
            };
            let cost = attrs["keel.cost_usd"].as_f64().map_or(String::new(), |c| format!("{c:.4}"));
            let mark = if span.status == "ok" { Cell::new("ok").color(table::GREEN) } else { Cell::new("error").color(table::RED) };
            rows.push(vec![
                Cell::new(format!("{}{}", "  ".repeat(depth), span.name)),
                mark,
                Cell::num(format!("{}", span.start_ms - t0)),
                Cell::num(format!("{:.1}", span.duration_ms)),
                Cell::num(tokens),
                Cell::num(cost),
            ]);
            walk(spans, Some(&span.span_id), known, depth + 1, t0, rows);
        }
    }
    walk(&spans, None, &known, 0, t0, &mut rows);
    println!("trace {trace_id}");
    print!("{}", table::render(&["SPAN", "STATUS", "AT MS", "MS", "TOKENS", "COST $"], &rows));
    Ok(())
}

/// The agent file for `keel agent run NAME`: a path, or `NAME.toml` here or in `agents/`.
pub fn find_agent(name: &str) -> anyhow::Result<PathBuf> {
    let given = PathBuf::from(name);
    if given.is_file() {
        return Ok(given);
    }
    for candidate in [PathBuf::from(format!("{name}.toml")), PathBuf::from("agents").join(format!("{name}.toml"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no agent file `{name}` (looked for {name}, {name}.toml and agents/{name}.toml); create one with: keel agent new {name}")
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Write NAME.toml, a commented starter agent, and its workspace folder.
    New {
        name: String,
        /// Folder to write it in (default: here).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run an agent on a request, printing each step as it happens.
    Run {
        /// The agent file (or NAME for NAME.toml / agents/NAME.toml).
        agent: String,
        /// The request (`-` reads standard input).
        input: String,
        /// A value for an {{placeholder}} in the instructions: NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// Events as JSON lines, then the outcome.
        #[arg(long)]
        json: bool,
        /// Fetch missing local model files first.
        #[arg(long)]
        pull: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Run a workflow file: nodes run agents, edges (with `when` conditions) say what runs
    /// next; several ready nodes run at once. Prints each node's steps, then the state.
    Run {
        /// The workflow file.
        workflow: PathBuf,
        /// Set a state field at the start (text for string fields, JSON for the others).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        sets: Vec<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        pull: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The latest runs.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },
    /// Every step of a run; `--json` includes the exact requests and responses.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// A run's trace: its spans (invoke_agent, chat, execute_tool; sub-agents nested under
    /// the call that ran them) as a tree with times, tokens and cost.
    Trace {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Continue a run from its last completed step (after a crash or a pause); tool calls
    /// that already ran are not run again.
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a call the run is waiting on, and continue the run.
    Approve {
        id: String,
        call: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Deny a call the run is waiting on (the model is told), and continue the run.
    Deny {
        id: String,
        call: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `keel agent …`.
pub async fn agent(config: Option<&Path>, command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::New { name, dir } => new_agent(&name, dir.as_deref()),
        AgentCommand::Run { agent, input, vars, json, pull } => run(config, &find_agent(&agent)?, &input, &vars, json, pull).await,
    }
}

/// `keel workflow …`.
pub async fn workflow(config: Option<&Path>, command: WorkflowCommand) -> anyhow::Result<()> {
    match command {
        WorkflowCommand::Run { workflow, sets, json, pull } => run_workflow(config, &workflow, &sets, json, pull).await,
    }
}

/// `keel runs …`.
pub async fn runs(config: Option<&Path>, command: RunsCommand) -> anyhow::Result<()> {
    match command {
        RunsCommand::List { json, limit } => list(config, json, limit),
        RunsCommand::Show { id, json } => show(config, &id, json),
        RunsCommand::Trace { id, json } => trace(config, &id, json),
        RunsCommand::Resume { id, json } => resume(config, &id, json).await,
        RunsCommand::Approve { id, call, note, json } => decide(config, &id, &call, true, note, json).await,
        RunsCommand::Deny { id, call, note, json } => decide(config, &id, &call, false, note, json).await,
    }
}
