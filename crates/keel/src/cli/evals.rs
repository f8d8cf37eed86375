//! `keel eval …`: run an eval file through the gateway's router (model aliases, agents, RAG
//! collections), list and show runs, compare two runs, measure a judge. The eval reaches
//! models through [`EvalModel`], keel-eval's [`Model`] over the in-process router.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;
use keel_eval::{Model, Outcome, Summary};
use keel_llm::Router;
use keel_store::Store;
use serde_json::{Value, json};

use super::datasets::{clip, open_store};
use crate::table::{self, Cell};

/// The exit code of an eval run that ran but missed a threshold (a failing case, a metric,
/// the overall pass rate), as promptfoo's; errors exit with 1.
pub const EXIT_THRESHOLD: u8 = 100;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Run an eval file (keel TOML, or promptfoo's YAML as is): every prompt × target × test
    /// × repeat, answers cached by the exact request, results stored. Running it again
    /// resumes an interrupted run. Exit codes: 0 all thresholds met, 100 a case, metric or
    /// the pass rate missed its threshold, 1 errors (a call or a cell failed).
    Run {
        file: String,
        /// Cells in flight at once (default: what the targets' providers allow, else 8).
        #[arg(long, short = 'j')]
        concurrency: Option<usize>,
        /// Neither read nor write the response cache.
        #[arg(long)]
        no_cache: bool,
        /// Start a new run even if an interrupted one exists.
        #[arg(long)]
        fresh: bool,
        /// Pass when at least this share of cases pass (0 to 1), instead of requiring all.
        #[arg(long, value_name = "RATE")]
        fail_under: Option<f64>,
        /// Repeat each cell N times.
        #[arg(long)]
        repeat: Option<u32>,
        /// Compare with a baseline afterwards: an earlier run's id, or a prompt label (the
        /// same eval with every registry prompt at that label, e.g. `production`, run too).
        #[arg(long, value_name = "RUN|LABEL")]
        baseline: Option<String>,
        /// With --baseline: exit 100 when a metric dropped significantly (its paired
        /// bootstrap 95% interval is wholly below zero).
        #[arg(long, requires = "baseline")]
        fail_on_regression: bool,
        /// Pull the local models the config needs first.
        #[arg(long)]
        pull: bool,
        #[arg(long)]
        json: bool,
    },
    /// Compare run B against baseline run A (`RUN` or `RUN:TARGET`): cases that regressed
    /// or improved, each metric's mean difference with a paired bootstrap 95% interval, and
    /// with --judge a pairwise judgement in both orders (a win only when both agree).
    Compare {
        a: String,
        b: String,
        /// Exit 100 when a metric dropped significantly.
        #[arg(long)]
        fail_on_regression: bool,
        /// Judge the answers pairwise with these aliases (several: a panel that votes).
        #[arg(long = "judge", value_name = "ALIAS")]
        judges: Vec<String>,
        /// What "better" means to the pairwise judge.
        #[arg(long, default_value = "")]
        rubric: String,
        #[arg(long)]
        json: bool,
    },
    /// Measure a pairwise judge against people: FILE holds JSONL rows {question, a, b, human:
    /// "a"|"b"|"tie"}; prints its agreement with the humans (on pairs where both took a
    /// side, and overall) and how often its verdict followed the position, not the answer.
    JudgeCheck {
        file: String,
        #[arg(long = "judge", value_name = "ALIAS", required = true)]
        judges: Vec<String>,
        #[arg(long, default_value = "")]
        rubric: String,
        #[arg(long)]
        pull: bool,
        #[arg(long)]
        json: bool,
    },
    /// Recent eval runs.
    List {
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One run's summary and its cells (`--failures` for the failing ones only).
    Show {
        run: String,
        #[arg(long)]
        failures: bool,
        #[arg(long)]
        json: bool,
    },
}

/// keel-eval's [`Model`] over the in-process router (the server's, for online evals too).
type Gateway = keel_server::evals::RouterModel;

fn gateway(router: Router) -> Gateway {
    Gateway { router: std::sync::Arc::new(router) }
}

/// An opened RAG collection and the models its queries use.
type OpenCollection = std::sync::Arc<(std::sync::Mutex<keel_rag::Collection>, crate::cli::rag::Setup)>;

/// The router for model calls, keel's agent runtime for agent targets, and RAG collections
/// (each opened once) for RAG targets.
struct EvalModel {
    gateway: Gateway,
    store: std::sync::Arc<Store>,
    config: Option<std::path::PathBuf>,
    collections: tokio::sync::Mutex<std::collections::HashMap<String, OpenCollection>>,
}

impl Model for EvalModel {
    fn chat<'a>(&'a self, body: &'a Value) -> futures_util::future::BoxFuture<'a, Result<keel_eval::Answer, String>> {
        self.gateway.chat(body)
    }

    fn embed<'a>(&'a self, alias: &'a str, texts: &'a [String]) -> futures_util::future::BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        self.gateway.embed(alias, texts)
    }

    fn agent<'a>(
        &'a self,
        file: &'a str,
        input: &'a str,
        vars: &'a serde_json::Map<String, Value>,
    ) -> futures_util::future::BoxFuture<'a, Result<keel_eval::Answer, String>> {
        Box::pin(async move {
            let agent = keel_agent::Agent::load(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
            let vars: std::collections::BTreeMap<String, String> =
                vars.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let runner = keel_agent::Runner::new(self.store.clone(), self.gateway.router.clone()).with_rag_root(crate::cli::rag::root()).with_events(tx);
            let started = Instant::now();
            let outcome = runner.start(&agent, input, &vars).await.map_err(|e| e.to_string())?;
            drop(runner);
            let mut tool_calls = Vec::new();
            // Every event of the run was sent before it returned.
            while let Ok(event) = rx.try_recv() {
                if let keel_agent::RunEvent::ModelCall { tool_calls: calls, .. } = event {
                    tool_calls.extend(calls.iter().map(keel_eval::CallMade::from));
                }
            }
            match outcome.status {
                keel_agent::RunStatus::Completed => Ok(keel_eval::Answer {
                    text: outcome.output.unwrap_or_default(),
                    tool_calls,
                    model: agent.def.model.clone(),
                    finish_reason: "stop".into(),
                    input_tokens: outcome.usage.input_tokens,
                    output_tokens: outcome.usage.output_tokens,
                    cost_usd: Some(outcome.cost_usd),
                    latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                    context: None,
                    cached: false,
                }),
                status => Err(format!("run {} ended {status:?}: {}", outcome.run_id, outcome.reason.unwrap_or_default())),
            }
        })
    }

    fn rag<'a>(&'a self, collection: &'a str, model: &'a str, question: &'a str) -> futures_util::future::BoxFuture<'a, Result<keel_eval::Answer, String>> {
        Box::pin(async move {
            let opened = {
                let mut open = self.collections.lock().await;
                match open.get(collection) {
                    Some(found) => found.clone(),
                    None => {
                        let (c, setup) = crate::cli::rag::open_for_query(self.config.as_deref(), collection, None, false).await.map_err(|e| format!("{e:#}"))?;
                        let found: OpenCollection = std::sync::Arc::new((c, setup));
                        open.insert(collection.to_string(), found.clone());
                        found
                    }
                }
            };
            let (collection, setup) = &*opened;
            let embedder = keel_agent::rag::ModelAlias::new(&*setup.router, &setup.model);
            let writer = keel_agent::rag::ModelAlias::new(&*self.gateway.router, model);
            let query = keel_rag::Query { min_similarity: Some(0.2), ..keel_rag::Query::new(question, keel_rag::Search::new(5, keel_rag::Mode::Hybrid)) };
            let started = Instant::now();
            let answered = keel_rag::answer::ask(collection, &query, &embedder, None, &writer).await.map_err(|e| e.to_string())?;
            let context = answered.sources.iter().enumerate().map(|(i, hit)| format!("[{}] {}", i + 1, hit.text)).collect::<Vec<_>>().join("\n\n");
            Ok(keel_eval::Answer {
                text: answered.answer,
                model: answered.model.unwrap_or_default(),
                finish_reason: if answered.known { "stop".into() } else { "unknown".into() },
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                context: Some(context),
                ..keel_eval::Answer::default()
            })
        })
    }
}

/// The concurrency the targets' providers allow: the smallest sum of `max_concurrency` over
/// a target's routes (8 for a provider that sets none), at most 64.
fn default_concurrency(config: &keel_core::config::Config, aliases: &[&str]) -> usize {
    let per_alias = |alias: &str| -> usize {
        let Some(model) = config.models.iter().find(|m| m.name.get_ref() == alias) else { return 8 };
        model
            .routes
            .get_ref()
            .iter()
            .map(|route| config.providers.get(route.provider.get_ref()).and_then(|p| p.max_concurrency()).unwrap_or(8))
            .sum()
    };
    aliases.iter().map(|a| per_alias(a)).min().unwrap_or(8).clamp(1, 64)
}

pub struct RunArgs {
    pub file: String,
    pub concurrency: Option<usize>,
    pub no_cache: bool,
    pub fresh: bool,
    pub fail_under: Option<f64>,
    pub repeat: Option<u32>,
    pub baseline: Option<String>,
    pub fail_on_regression: bool,
    pub pull: bool,
    pub json: bool,
}

pub async fn eval(config: Option<&Path>, command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Run { file, concurrency, no_cache, fresh, fail_under, repeat, baseline, fail_on_regression, pull, json } => {
            run(config, RunArgs { file, concurrency, no_cache, fresh, fail_under, repeat, baseline, fail_on_regression, pull, json }).await
        }
        EvalCommand::Compare { a, b, fail_on_regression, judges, rubric, json } => {
            let (settings, store) = open_store(config)?;
            let (a_run, a_target) = side(&a);
            let (b_run, b_target) = side(&b);
            let a_results = store.eval_results(&store.eval_run(a_run)?.id)?;
            let b_results = store.eval_results(&store.eval_run(b_run)?.id)?;
            let gateway = if judges.is_empty() {
                None
            } else {
                crate::local::ensure_models(&settings.config, false).await?;
                Some(gateway(crate::local::router(&settings.config)?))
            };
            let report = comparison(
                &keel_eval::compare::Side { results: &a_results, target: a_target },
                &keel_eval::compare::Side { results: &b_results, target: b_target },
                gateway.as_ref().map(|g| (g as &dyn Model, judges.as_slice(), rubric.as_str())),
                &store,
            )
            .await?;
            finish_comparison(&report, json, fail_on_regression)
        }
        EvalCommand::JudgeCheck { file, judges, rubric, pull, json } => {
            let (settings, store) = open_store(config)?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("could not read {file}"))?;
            let mut cases = Vec::new();
            for (idx, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let case: keel_eval::compare::LabelledPair = serde_json::from_str(line)
                    .with_context(|| format!("{file} line {}: a case is {{question, a, b, human: \"a\"|\"b\"|\"tie\"}}", idx + 1))?;
                cases.push(case);
            }
            if cases.is_empty() {
                bail!("{file} holds no labelled cases");
            }
            crate::local::ensure_models(&settings.config, pull).await?;
            let gateway = gateway(crate::local::router(&settings.config)?);
            for judge in &judges {
                gateway.router.alias(judge)?;
            }
            let cached = keel_eval::model::Cached::new(&gateway, &store, true);
            let check = keel_eval::compare::judge_check(&cached, &judges, &rubric, &cases).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&check)?);
            } else {
                println!(
                    "judge {}: agrees with the humans on {:.1}% of {} pairs where both took a side ({:.1}% of all {}, ties included)",
                    judges.join(" + "),
                    check.agreement_non_tie * 100.0,
                    check.non_tie_cases,
                    check.agreement * 100.0,
                    check.cases
                );
                println!(
                    "position flips: {:.1}% of judgements followed the order, not the answer{}",
                    check.position_flip_rate * 100.0,
                    if check.errors > 0 { format!("; {} judge calls failed", check.errors) } else { String::new() }
                );
                println!("{}", table::paint("for scale: MT-Bench reports GPT-4 agreeing with experts on 85% of non-tie pairs, experts with each other on 81%", table::DIM));
            }
            Ok(())
        }
        EvalCommand::List { limit, json } => {
            let (_, store) = open_store(config)?;
            let runs = store.eval_runs(limit)?;
            if json {
                let out: Vec<Value> = runs
                    .iter()
                    .map(|r| json!({"id": r.id, "name": r.name, "status": r.status, "created_ms": r.created_ms, "cells": r.cells, "summary": r.summary.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok())}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            let rows: Vec<Vec<Cell>> = runs
                .iter()
                .map(|r| {
                    let summary: Option<Summary> = r.summary.as_deref().and_then(|s| serde_json::from_str(s).ok());
                    let rate = summary.as_ref().map_or(String::new(), |s| format!("{:.1}%", s.pass_rate * 100.0));
                    let color = match r.status.as_str() {
                        "finished" => table::GREEN,
                        "failed" => table::RED,
                        _ => table::YELLOW,
                    };
                    vec![Cell::new(&r.id), Cell::new(&r.name), Cell::new(&r.status).color(color), Cell::num(r.cells.to_string()), Cell::num(rate)]
                })
                .collect();
            print!("{}", table::render(&["RUN", "EVAL", "STATUS", "CELLS", "PASS"], &rows));
            Ok(())
        }
        EvalCommand::Show { run, failures, json } => {
            let (_, store) = open_store(config)?;
            let record = store.eval_run(&run)?;
            let results = store.eval_results(&record.id)?;
            let results: Vec<_> = results.into_iter().filter(|r| !failures || !r.pass).collect();
            if json {
                let cells: Vec<Value> = results
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r).unwrap_or_default();
                        v["vars"] = serde_json::from_str(&r.vars).unwrap_or(Value::Null);
                        v["grades"] = serde_json::from_str(&r.grades).unwrap_or(Value::Null);
                        v
                    })
                    .collect();
                let summary = record.summary.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok());
                println!("{}", serde_json::to_string_pretty(&json!({"run": record.id, "name": record.name, "status": record.status, "summary": summary, "cells": cells}))?);
                return Ok(());
            }
            if let Some(summary) = record.summary.as_deref().and_then(|s| serde_json::from_str::<Summary>(s).ok()) {
                print_summary(&summary);
            }
            let rows: Vec<Vec<Cell>> = results
                .iter()
                .map(|r| {
                    let (status, color) = if r.error.is_some() {
                        ("ERROR", table::RED)
                    } else if r.pass {
                        ("PASS", table::GREEN)
                    } else {
                        ("FAIL", table::RED)
                    };
                    let why: Vec<String> = serde_json::from_str::<Vec<keel_eval::score::Grade>>(&r.grades)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|g| !g.pass)
                        .map(|g| format!("{}: {}", g.kind, g.reason))
                        .collect();
                    vec![
                        Cell::new(status).color(color),
                        Cell::new(&r.prompt),
                        Cell::new(&r.target),
                        Cell::num(r.row.to_string()),
                        Cell::new(clip(r.output.as_deref().or(r.error.as_deref()).unwrap_or(""), 50)),
                        Cell::new(clip(&why.join("; "), 60)),
                    ]
                })
                .collect();
            print!("{}", table::render(&["", "PROMPT", "TARGET", "TEST", "OUTPUT", "WHY"], &rows));
            Ok(())
        }
    }
}

/// Turns transparent huge pages off for the rest of this process. An eval run is a short batch
/// job, and huge pages only inflate its resident memory: every first touch of a 2 MiB region
/// zeroes and keeps all of it (`keel bench eval`'s peak: 95–98 MB with them, 82–85 MB without).
/// Best effort: a kernel that refuses it leaves the run as it was.
#[expect(unsafe_code, reason = "prctl(PR_SET_THP_DISABLE) takes plain integers")]
fn small_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE reads no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

async fn run(config: Option<&Path>, args: RunArgs) -> anyhow::Result<()> {
    small_pages();
    let (settings, store) = open_store(config)?;
    let mut loaded = keel_eval::spec::load(Path::new(&args.file), &store).with_context(|| format!("{} is not an eval keel can run", args.file))?;
    for key in &loaded.ignored {
        eprintln!("{} {}: keel does not read `{key}`; it is ignored", table::paint("warning:", table::YELLOW), args.file);
    }
    if let Some(rate) = args.fail_under {
        if !(0.0..=1.0).contains(&rate) {
            bail!("--fail-under is a share of cases from 0 to 1, not {rate}");
        }
        loaded.spec.fail_under = Some(rate);
    }
    if let Some(repeat) = args.repeat {
        loaded.spec.repeat = repeat.max(1);
    }
    let spec = loaded.spec;
    crate::local::ensure_models(&settings.config, args.pull).await?;
    let router = crate::local::router(&settings.config)?;
    for target in &spec.targets {
        match (&target.agent, &target.rag) {
            (Some(file), _) => {
                keel_agent::Agent::load(Path::new(file)).with_context(|| format!("agent target `{}`", target.id))?;
            }
            (None, rag) => {
                router.alias(&target.alias).map_err(|e| anyhow::anyhow!("target `{}`: {e}", target.id))?;
                if let Some(collection) = rag {
                    keel_rag::stored_model(&crate::cli::rag::root(), collection)
                        .with_context(|| format!("target `{}`: collection `{collection}` does not exist (keel rag collections lists them)", target.id))?;
                }
            }
        }
    }
    let aliases: Vec<&str> = spec.targets.iter().filter(|t| t.agent.is_none() && t.rag.is_none()).map(|t| t.alias.as_str()).collect();
    let concurrency = args.concurrency.or(spec.concurrency).unwrap_or_else(|| default_concurrency(&settings.config, &aliases));
    let gateway = EvalModel {
        gateway: gateway(router),
        store: std::sync::Arc::new(Store::open(store.path())?),
        config: config.map(Path::to_path_buf),
        collections: Default::default(),
    };
    let bar = std::io::stderr().is_terminal() && !args.json;
    let started = Instant::now();
    let progress = move |p: keel_eval::Progress| {
        if !bar || p.total == 0 {
            return;
        }
        let width = 28;
        let filled = p.done * width / p.total;
        let fresh = p.done - p.resumed;
        let elapsed = started.elapsed().as_secs_f64();
        let eta = if fresh > 0 { elapsed / fresh as f64 * (p.total - p.done) as f64 } else { 0.0 };
        let rate = if p.done > 0 { p.passed as f64 / (p.done - p.resumed).max(1) as f64 * 100.0 } else { 0.0 };
        eprint!(
            "\r\x1b[2K[{}{}] {}/{}  pass {rate:.0}%  ${:.4}  ETA {eta:.0}s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            p.done,
            p.total,
            p.cost_usd
        );
        if p.done == p.total {
            eprintln!();
        }
    };
    let options = keel_eval::Options { concurrency, cache: !args.no_cache, fresh: args.fresh, progress: Box::new(progress) };
    let summary = keel_eval::run::run(&store, &spec, &gateway, &options).await?;
    let Some(baseline) = &args.baseline else {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print_summary(&summary);
        }
        return verdict(&summary);
    };
    // The baseline: an earlier run, else the same eval with its prompts at that label.
    let baseline_results = match store.eval_run(baseline) {
        Ok(run) => store.eval_results(&run.id)?,
        Err(_) => {
            let at = keel_eval::spec::load_at(Path::new(&args.file), &store, Some(baseline))
                .with_context(|| format!("--baseline {baseline} is neither an eval run nor a label of the eval's registry prompts"))?;
            if at.spec.prompts.iter().all(|p| p.registry.is_none()) {
                bail!("--baseline {baseline}: no eval run has that id, and the eval has no registry prompt to read at a label");
            }
            let mut base_spec = at.spec;
            base_spec.fail_under = spec.fail_under;
            base_spec.repeat = spec.repeat;
            let quiet = keel_eval::Options { concurrency, cache: !args.no_cache, fresh: args.fresh, progress: Box::new(|_| {}) };
            let base = keel_eval::run::run(&store, &base_spec, &gateway, &quiet).await?;
            store.eval_results(&base.run_id)?
        }
    };
    let candidate = store.eval_results(&summary.run_id)?;
    let report = comparison(
        &keel_eval::compare::Side { results: &baseline_results, target: None },
        &keel_eval::compare::Side { results: &candidate, target: None },
        None,
        &store,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({"summary": summary, "comparison": report}))?);
    } else {
        print_summary(&summary);
        println!("against {baseline}:");
        print_comparison(&report);
    }
    gate(&report, args.fail_on_regression, !args.json)?;
    verdict(&summary)
}

fn verdict(summary: &Summary) -> anyhow::Result<()> {
    match summary.outcome() {
        Outcome::Passed => Ok(()),
        Outcome::Missed => Err(crate::cli::Exit(EXIT_THRESHOLD).into()),
        Outcome::Errors => bail!("{} of {} cells failed to run; `keel eval show {} --failures` lists them", summary.errors, summary.cells, summary.run_id),
    }
}

/// `RUN` or `RUN:TARGET`.
fn side(text: &str) -> (&str, Option<&str>) {
    match text.split_once(':') {
        Some((run, target)) => (run, Some(target)),
        None => (text, None),
    }
}

/// What `compare` found, and the pairwise verdict when judges were asked.
#[derive(serde::Serialize)]
struct Report {
    #[serde(flatten)]
    comparison: keel_eval::compare::Comparison,
    #[serde(skip_serializing_if = "Option::is_none")]
    pairwise: Option<keel_eval::compare::Pairwise>,
}

async fn comparison(
    a: &keel_eval::compare::Side<'_>,
    b: &keel_eval::compare::Side<'_>,
    judge: Option<(&dyn Model, &[String], &str)>,
    store: &Store,
) -> anyhow::Result<Report> {
    let pairs = keel_eval::compare::pair(a, b);
    if pairs.is_empty() {
        bail!("the two runs share no case (cases pair by prompt and target slot, variables and repeat; name a target with RUN:TARGET to compare two targets)");
    }
    let comparison = keel_eval::compare::compare(&pairs);
    let pairwise = match judge {
        Some((model, judges, rubric)) => {
            let cached = keel_eval::model::Cached::new(model, store, true);
            Some(keel_eval::compare::pairwise(&cached, judges, rubric, &pairs).await)
        }
        None => None,
    };
    Ok(Report { comparison, pairwise })
}

fn finish_comparison(report: &Report, json: bool, fail_on_regression: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print_comparison(report);
    }
    gate(report, fail_on_regression, !json)
}

fn print_comparison(report: &Report) {
    let comparison = &report.comparison;
    let rows: Vec<Vec<Cell>> = comparison
        .deltas
        .iter()
        .map(|d| {
            let (verdict, color) = if d.significant_drop() {
                ("worse", table::RED)
            } else if d.significant_gain() {
                ("better", table::GREEN)
            } else {
                ("same", table::DIM)
            };
            vec![
                Cell::new(&d.metric),
                Cell::num(d.pairs.to_string()),
                Cell::num(format!("{:.3}", d.mean_a)),
                Cell::num(format!("{:.3}", d.mean_b)),
                Cell::num(format!("{:+.3}", d.diff)).color(color),
                Cell::num(format!("[{:+.3}, {:+.3}]", d.low, d.high)),
                Cell::new(verdict).color(color),
            ]
        })
        .collect();
    print!("{}", table::render(&["METRIC", "PAIRS", "A", "B", "B−A", "95% CI", ""], &rows));
    println!(
        "{} pairs: {} regressed (passed in A, fail in B), {} improved",
        comparison.pairs,
        table::paint(&comparison.regressions.len().to_string(), if comparison.regressions.is_empty() { table::GREEN } else { table::RED }),
        comparison.improvements.len()
    );
    for change in comparison.regressions.iter().take(10) {
        println!(
            "  {} {} {}: {:?} → {:?}",
            table::paint("regressed", table::RED),
            change.target,
            clip(&change.vars.to_string(), 50),
            clip(change.output_a.as_deref().unwrap_or(""), 40),
            clip(change.output_b.as_deref().unwrap_or(""), 40)
        );
    }
    if let Some(p) = &report.pairwise {
        println!(
            "pairwise ({}, both orders): B wins {}, A wins {}, ties {}; position flips {}{}",
            p.judges.join(" + "),
            p.wins_b,
            p.wins_a,
            p.ties,
            p.position_flips,
            if p.errors > 0 { format!(", {} judge calls failed", p.errors) } else { String::new() }
        );
    }
}

/// Exit 100 on a significant drop when asked to.
fn gate(report: &Report, fail_on_regression: bool, announce: bool) -> anyhow::Result<()> {
    let drops = report.comparison.significant_drops();
    if fail_on_regression && !drops.is_empty() {
        if announce {
            let names: Vec<&str> = drops.iter().map(|d| d.metric.as_str()).collect();
            eprintln!("{} significant drop in {}", table::paint("regression:", table::RED), names.join(", "));
        }
        return Err(crate::cli::Exit(EXIT_THRESHOLD).into());
    }
    Ok(())
}

fn print_summary(summary: &Summary) {
    let rows: Vec<Vec<Cell>> = summary
        .groups
        .iter()
        .map(|g| {
            let color = if g.errors > 0 || g.failed > 0 { table::RED } else { table::GREEN };
            vec![
                Cell::new(&g.prompt),
                Cell::new(&g.target),
                Cell::num(format!("{:.1}%", g.pass_rate * 100.0)).color(color),
                Cell::num(g.passed.to_string()),
                Cell::num(g.failed.to_string()),
                Cell::num(g.errors.to_string()),
                Cell::num(format!("{:.3}", g.mean_score)),
                Cell::num(format!("{:.0}", g.latency_p50_ms)),
                Cell::num((g.input_tokens + g.output_tokens).to_string()),
                Cell::num(format!("{:.4}", g.cost_usd)),
                Cell::num(g.cached.to_string()),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["PROMPT", "TARGET", "PASS", "OK", "FAIL", "ERR", "SCORE", "P50 MS", "TOKENS", "COST $", "CACHED"], &rows)
    );
    for (metric, mean) in &summary.metrics {
        println!("metric {metric}: {mean:.3}");
    }
    let verdict = match summary.outcome() {
        Outcome::Passed => table::paint("PASS", table::GREEN),
        Outcome::Missed => table::paint("FAIL", table::RED),
        Outcome::Errors => table::paint("ERROR", table::RED),
    };
    let dataset = summary.dataset.as_ref().map_or(String::new(), |(n, v)| format!("  dataset {n}@{v}"));
    println!(
        "{verdict}  run {}  {}/{} passed ({:.1}%){}{dataset}",
        summary.run_id,
        summary.passed,
        summary.cells,
        summary.pass_rate * 100.0,
        if summary.resumed > 0 { format!("  {} resumed", summary.resumed) } else { String::new() }
    );
    for miss in &summary.misses {
        println!("  {} {}: {:.3} < {:.3}", table::paint("missed", table::RED), miss.what, miss.got, miss.want);
    }
}
