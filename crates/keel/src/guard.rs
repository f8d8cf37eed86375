//! `keel guard`: check an agent's information-flow policies on a call without running it, and
//! measure what a decision costs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use keel_agent::AgentDef;
use keel_guard::{Context, Decision, Guard, Label, Verdict};

use crate::table::{self, Cell};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The agent file whose tools and `[guard]` policies decide.
    agent: String,
    /// The tool the call is for, as the model names it.
    #[arg(long)]
    tool: String,
    /// The call's arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// What the user asked (part of the run's context).
    #[arg(long)]
    user: Option<String>,
    /// A tool's output already in the context, as TOOL=TEXT (repeatable); it is labelled by
    /// what the agent file says the tool does.
    #[arg(long = "output", value_name = "TOOL=TEXT")]
    outputs: Vec<String>,
    /// A JSON file with the context as a list of {"source": "user"|"system"|TOOL, "text": ...}.
    #[arg(long)]
    context: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// The run's context from the flags: the context file first, then the user, then outputs.
fn context_of(def: &AgentDef, args: &CheckArgs) -> anyhow::Result<Context> {
    let mut context = Context::default();
    let mut add = |source: &str, text: &str| match source {
        "user" => context.push("user", Label::user(), text),
        "system" => context.push("system", Label::system(), text),
        tool => context.push(&format!("tool:{tool}"), Label::tool(tool, def.capabilities(tool)), text),
    };
    if let Some(file) = &args.context {
        let text = std::fs::read_to_string(file).with_context(|| format!("could not read {}", file.display()))?;
        let items: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| format!("{} is not a JSON list", file.display()))?;
        for (i, item) in items.iter().enumerate() {
            let (Some(source), Some(text)) = (item["source"].as_str(), item["text"].as_str()) else {
                bail!("{} item {i}: give \"source\" (user, system or a tool name) and \"text\"", file.display());
            };
            add(source, text);
        }
    }
    if let Some(user) = &args.user {
        add("user", user);
    }
    for output in &args.outputs {
        let Some((tool, text)) = output.split_once('=') else { bail!("--output takes TOOL=TEXT, not `{output}`") };
        add(tool.trim(), text);
    }
    Ok(context)
}

/// `keel guard check AGENT --tool NAME --args JSON [--user ..] [--output TOOL=TEXT]..`
pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let file = crate::agents::find_agent(&args.agent)?;
    let def = AgentDef::load(&file)?;
    let known = def.tools.contains_key(&args.tool)
        || keel_agent::definition::BUILT_IN_TOOLS.contains(&args.tool.as_str())
        || args.tool.split_once("__").is_some_and(|(server, _)| def.mcp.contains_key(server));
    if !known {
        bail!("{} has no tool `{}`; its tools: {}", file.display(), args.tool, def.tools.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    let arguments: serde_json::Value = serde_json::from_str(&args.args).context("--args is not JSON")?;
    if !arguments.is_object() {
        bail!("--args is a JSON object of the call's arguments");
    }
    let context = context_of(&def, &args)?;
    let decision = Guard::new(def.guard.clone()).decide(&args.tool, def.capabilities(&args.tool), &arguments, &context);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
        return Ok(());
    }
    print_decision(&decision);
    Ok(())
}

fn verdict_cell(verdict: Verdict) -> String {
    let code = match verdict {
        Verdict::Allow => table::GREEN,
        Verdict::Ask => table::YELLOW,
        Verdict::Deny => table::RED,
    };
    table::paint(&verdict.name().to_uppercase(), code)
}

fn print_decision(decision: &Decision) {
    let capabilities: Vec<&str> = decision.capabilities.list().iter().map(|c| c.name()).collect();
    println!("{} {} (policy {})", verdict_cell(decision.verdict), decision.tool, decision.policy);
    println!("{}", decision.reason);
    println!("tool does: {}", if capabilities.is_empty() { "nothing the guard watches".into() } else { capabilities.join(", ") });
    println!("context: {}", decision.context.summary());
    let rows: Vec<Vec<Cell>> = decision.arguments.iter().map(|a| vec![Cell::new(&a.path), Cell::new(a.label.summary())]).collect();
    if !rows.is_empty() {
        print!("{}", table::render(&["ARGUMENT", "LABEL"], &rows));
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Tool outputs of about 2 KB each in the context.
    #[arg(long, default_value_t = 20)]
    outputs: usize,
    /// Decisions timed.
    #[arg(long, default_value_t = 20_000)]
    decisions: usize,
    #[arg(long)]
    json: bool,
}

/// `keel bench guard`: the cost of one policy decision (labels of every argument found in a
/// context of tool outputs, declared policies, the Rule of Two), p50 and p99.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use keel_guard::{Capabilities, Capability};
    let spec: keel_guard::GuardSpec = toml::from_str(
        "[[policy]]\ntool = \"send_email\"\nargument = \"to\"\nfrom = [\"user\", \"contacts\"]\n\n[[policy]]\ntool = \"delete_file\"\ndecision = \"deny\"\n",
    )?;
    let guard = Guard::new(spec);
    let mut context = Context::default();
    context.push("system", Label::system(), &"You are a helpful assistant for Ada's inbox and calendar. ".repeat(8));
    context.push("user", Label::user(), "Read my latest mails, then send a summary to bob@example.com and book the room for Thursday.");
    let words = ["meeting", "invoice", "lunch", "project", "deadline", "travel", "report", "budget", "review", "launch"];
    for i in 0..args.outputs {
        let (name, caps) = match i % 3 {
            0 => ("read_inbox", Capabilities::of(&[Capability::PrivateData, Capability::UntrustedOutput])),
            1 => ("contacts", Capabilities::of(&[Capability::PrivateData])),
            _ => ("http_get", Capabilities::of(&[Capability::UntrustedOutput, Capability::External])),
        };
        let mut text = String::with_capacity(2048);
        let mut n = i;
        while text.len() < 2000 {
            text.push_str(words[n % words.len()]);
            text.push_str(if n % 7 == 0 { ". " } else { " " });
            n = n.wrapping_mul(31).wrapping_add(7);
        }
        text.push_str(&format!(" contact{i}@example.com"));
        context.push(&format!("tool:{name}"), Label::tool(name, caps), &text);
    }
    let calls = [
        ("send_email", Capabilities::of(&[Capability::External]), serde_json::json!({"to": ["bob@example.com", "contact1@example.com"], "subject": "Summary", "body": "You have three mails about the launch and one invoice."})),
        ("book_room", Capabilities::of(&[Capability::ChangesState]), serde_json::json!({"room": "Thursday", "hours": 2})),
        ("read_inbox", Capabilities::of(&[Capability::PrivateData]), serde_json::json!({"limit": 10})),
    ];
    let mut micros = Vec::with_capacity(args.decisions);
    let mut verdicts = [0usize; 3];
    for i in 0..args.decisions.max(1) {
        let (tool, caps, arguments) = &calls[i % calls.len()];
        let started = Instant::now();
        let decision = guard.decide(tool, *caps, arguments, &context);
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        verdicts[decision.verdict as usize] += 1;
    }
    micros.sort_by(f64::total_cmp);
    let p = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize];
    let context_kb = context.items.iter().map(|i| i.text.len()).sum::<usize>() as f64 / 1024.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"decisions": micros.len(), "context_items": context.items.len(), "context_kb": context_kb,
                "p50_us": p(0.5), "p99_us": p(0.99), "target_us": 20.0,
                "verdicts": {"allow": verdicts[0], "ask": verdicts[1], "deny": verdicts[2]}})
        );
        return Ok(());
    }
    println!("{} decisions over a context of {} items ({context_kb:.0} KB): send_email, book_room, read_inbox in turn", micros.len(), context.items.len());
    let rows = vec![vec![Cell::num(format!("{:.1}", p(0.5))), Cell::num(format!("{:.1}", p(0.99))), Cell::num(format!("{:.1}", micros[micros.len() - 1]))]];
    print!("{}", table::render(&["P50 µs", "P99 µs", "MAX µs"], &rows));
    let verdict = format!("p99 {:.1} µs per decision (target ≤ 20 µs)", p(0.99));
    println!("{}", table::paint(&verdict, if p(0.99) <= 20.0 { table::GREEN } else { table::RED }));
    Ok(())
}
