//! `keel redteam TARGET`: keel-guard's probe library (`keel_guard::redteam`) run through the
//! gateway against a model alias, or through the agent runtime against an agent file; each
//! answer judged by the probe's rule, with a terminal summary and an HTML report of every
//! failing transcript.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use keel_core::{ChatRequest, ToolCall};
use keel_guard::redteam::{Category, Judge, Outcome, Probe, as_agent_input, judge, judged, probes, report_html};

use crate::settings;
use crate::table::{self, Cell};

#[derive(Debug, clap::Args)]
pub struct RedteamArgs {
    /// A model alias from the config, or an agent file (`*.toml`) to attack through its runs.
    target: String,
    /// Only these categories (repeatable): direct_injection, indirect_injection, encoding,
    /// unicode_smuggling, markdown_exfiltration, system_prompt_extraction, pii_leakage,
    /// excessive_agency.
    #[arg(long = "category")]
    categories: Vec<String>,
    /// Where to write the HTML report.
    #[arg(long, default_value = "keel-redteam.html")]
    html: PathBuf,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Pull the local model first when it is not on disk yet.
    #[arg(long)]
    pull: bool,
    /// Print the results as JSON (the HTML report is still written).
    #[arg(long)]
    json: bool,
}

/// Runs one probe against a model alias through the router, and records the call's trace.
async fn probe_model(router: &keel_llm::Router, alias: &str, probe: &Probe, log_bodies: bool) -> (Outcome, keel_store::Trace) {
    let request = ChatRequest { model: alias.to_string(), messages: probe.messages.clone(), tools: probe.tools.clone(), max_tokens: Some(400), temperature: Some(0.0), ..ChatRequest::default() };
    let started = Instant::now();
    let created_ms = keel_core::now_ms();
    let (reply, info) = router.chat(&request).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut trace = keel_store::Trace {
        id: keel_core::time_ordered_id(created_ms as u64, fastrand::u128(..)),
        created_ms,
        endpoint: "cli.redteam".into(),
        alias: alias.to_string(),
        provider: info.provider.clone(),
        model: info.model.clone(),
        attempts: info.attempts,
        latency_ms: ms,
        request_body: log_bodies.then(|| serde_json::json!({"probe": probe.id, "messages": request.messages}).to_string()),
        ..keel_store::Trace::default()
    };
    let outcome = match reply {
        Ok(response) => {
            trace.status = 200;
            trace.input_tokens = response.usage.input_tokens;
            trace.output_tokens = response.usage.output_tokens;
            trace.cost_usd = router.prices.cost(&info.model, &response.usage);
            if log_bodies {
                trace.response_body = Some(serde_json::json!({"message": response.message}).to_string());
            }
            judged(probe, &response, ms)
        }
        Err(err) => {
            trace.status = err.status();
            trace.error = Some(err.to_string());
            Outcome::failed(probe, "the call failed", err.to_string(), ms)
        }
    };
    (outcome, trace)
}

/// Runs one probe against an agent: a run of its own, judged on its answer and on the calls
/// that actually ran (one the guard stopped did not).
async fn probe_agent(runner: &keel_agent::Runner, agent: &keel_agent::Agent, probe: &Probe) -> Outcome {
    let started = Instant::now();
    let vars = std::collections::BTreeMap::new();
    let result = runner.start(agent, &as_agent_input(probe), &vars).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(err) => {
            return Outcome::failed(probe, "the run failed", err.to_string(), ms);
        }
    };
    let mut ran = Vec::new();
    if let Ok((_, steps)) = runner.store().load_run(&outcome.run_id) {
        for step in steps {
            if let Ok(keel_agent::Step::Tool { call_id, name, arguments, is_error: false, .. }) = serde_json::from_str(&step.data) {
                ran.push(ToolCall { id: call_id, name, arguments });
            }
        }
    }
    let answer = outcome.output.clone().unwrap_or_default();
    // An agent has none of the probe's tools: a call of one of its own sinks that ran counts.
    let why = match &probe.judge {
        Judge::Calls { .. } => ran
            .iter()
            .find(|c| agent.def.capabilities(&c.name).is_sink())
            .map(|c| format!("the run called {} ({}), which nobody asked for", c.name, c.arguments)),
        _ => judge(probe, &answer, &ran),
    };
    let why = why.map(|w| format!("{w} (run {})", outcome.run_id));
    Outcome::judged(probe, why, answer, ran, ms)
}

/// `keel redteam TARGET`.
pub async fn redteam(config: Option<&Path>, args: RedteamArgs) -> anyhow::Result<()> {
    let mut selected = Vec::new();
    for name in &args.categories {
        match Category::ALL.iter().find(|c| c.name() == name) {
            Some(c) => selected.push(*c),
            None => bail!("unknown category `{name}`; the categories are: {}", Category::ALL.map(Category::name).join(", ")),
        }
    }
    let nonce = format!("{:06X}", fastrand::u32(..0x100_0000));
    let library: Vec<Probe> = probes(&nonce).into_iter().filter(|p| selected.is_empty() || selected.contains(&p.category)).collect();
    let settings = settings::load(config)?;
    crate::local::ensure_models(&settings.config, args.pull).await?;
    let router = Arc::new(crate::local::router(&settings.config)?);
    let is_agent = args.target.ends_with(".toml") || Path::new(&args.target).is_file();
    let total = library.len();
    let bar = crate::cli::rag::progress("probing");
    let progress = |done: usize| {
        if !args.json {
            bar(done, total);
        }
    };
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(total);
    if is_agent {
        let agent = keel_agent::Agent::load(Path::new(&args.target)).with_context(|| format!("could not load the agent {}", args.target))?;
        let store = Arc::new(keel_store::Store::open(&settings.store_path())?);
        let runner = keel_agent::Runner::new(store, router.clone()).with_rag_root(crate::cli::rag::root());
        let runs = futures_util::stream::iter(library.iter().map(|p| probe_agent(&runner, &agent, p))).buffer_unordered(args.concurrency.max(1));
        futures_util::pin_mut!(runs);
        while let Some(outcome) = runs.next().await {
            outcomes.push(outcome);
            progress(outcomes.len());
        }
    } else {
        router.alias(&args.target).map_err(|e| anyhow::anyhow!("{e}; give a model alias from the config or an agent file"))?;
        let log_bodies = settings.config.store.log_bodies;
        let runs = futures_util::stream::iter(library.iter().map(|p| probe_model(&router, &args.target, p, log_bodies))).buffer_unordered(args.concurrency.max(1));
        futures_util::pin_mut!(runs);
        let mut traces = Vec::new();
        while let Some((outcome, trace)) = runs.next().await {
            outcomes.push(outcome);
            traces.push(trace);
            progress(outcomes.len());
        }
        let stored = keel_store::Store::open(&settings.store_path()).and_then(|store| {
            store.set_redactor(crate::settings::redactor(&settings.config));
            store.insert_traces(&traces)
        });
        if let Err(err) = stored {
            eprintln!("{} could not save the traces: {err}", table::paint("warning:", table::YELLOW));
        }
    }
    let order = |id: &str| library.iter().position(|p| p.id == id).unwrap_or(usize::MAX);
    outcomes.sort_by_key(|o| order(&o.id));
    let html = report_html(&args.target, &library, &outcomes, started.elapsed().as_secs_f64());
    std::fs::write(&args.html, html).with_context(|| format!("could not write {}", args.html.display()))?;
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"target": args.target, "probes": outcomes.len(), "failed": failed, "report": args.html, "results": outcomes}))?);
        return Ok(());
    }
    let mut rows = Vec::new();
    for category in Category::ALL {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.category == category).collect();
        if of.is_empty() {
            continue;
        }
        let bad = of.iter().filter(|o| !o.passed).count();
        let verdict = if bad == 0 { Cell::new("pass").color(table::GREEN) } else { Cell::new("FAIL").color(table::RED) };
        rows.push(vec![Cell::new(category.name()), Cell::num(of.len().to_string()), Cell::num((of.len() - bad).to_string()), Cell::num(bad.to_string()), verdict]);
    }
    println!("keel redteam {} · {} probes · {:.1} s", args.target, outcomes.len(), started.elapsed().as_secs_f64());
    print!("{}", table::render(&["CATEGORY", "PROBES", "PASSED", "FAILED", ""], &rows));
    for outcome in outcomes.iter().filter(|o| !o.passed) {
        let why = outcome.error.as_ref().map_or_else(|| outcome.why.clone().unwrap_or_default(), |e| format!("error: {e}"));
        println!("  {} {}: {why}", table::paint("✘", table::RED), outcome.id);
    }
    println!("report: {}", args.html.display());
    Ok(())
}
