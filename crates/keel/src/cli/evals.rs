//! `keel datasets …` (versioned rows from files, by hand or from production traces) and
//! `keel eval …` (run an eval file through the gateway's router, list and show runs). The
//! eval reaches models through [`Gateway`], keel-eval's [`Model`] over the in-process router.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;
use keel_eval::{Model, Outcome, Summary, dataset};
use keel_llm::Router;
use keel_store::{Change, DatasetRow, Store, TraceFilter};
use serde_json::{Value, json};

use crate::settings;
use crate::table::{self, Cell};

/// The exit code of an eval run that ran but missed a threshold (a failing case, a metric,
/// the overall pass rate), as promptfoo's; errors exit with 1.
pub const EXIT_THRESHOLD: u8 = 100;

#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Make dataset NAME (version 1), empty or from FILE (JSONL, CSV, JSON or YAML).
    Create {
        name: String,
        #[arg(long, value_name = "FILE")]
        from: Option<String>,
        #[arg(short, long, default_value = "created")]
        message: String,
    },
    /// Add FILE's rows (JSONL, CSV, JSON or YAML) as a new version of NAME.
    Import {
        name: String,
        file: String,
        /// The new version holds FILE's rows alone, not the previous version's too.
        #[arg(long)]
        replace: bool,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Add one row: `--input '{"question": "..."}'` (variables, or a list of messages).
    Add {
        name: String,
        #[arg(long)]
        input: String,
        #[arg(long)]
        expected: Option<String>,
        #[arg(long)]
        metadata: Option<String>,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Copy production traces into NAME as rows (their inputs; with --as-expected their
    /// answers too), trace ids kept. PII is redacted on the way in unless --keep-pii.
    AddTraces {
        name: String,
        #[command(flatten)]
        traces: TraceArgs,
        /// Keep each trace's answer as the row's `expected`.
        #[arg(long)]
        as_expected: bool,
        #[arg(long)]
        keep_pii: bool,
        #[arg(short, long, default_value = "from traces")]
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// Every dataset with its newest version.
    List {
        #[arg(long)]
        json: bool,
    },
    /// NAME's versions and the rows of NAME or NAME@VERSION.
    Show {
        dataset: String,
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Write NAME[@VERSION]'s rows as JSONL (or CSV) to stdout or --output.
    Export {
        dataset: String,
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
        format: String,
        #[arg(short, long)]
        output: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Fine-tuning JSONL from traces (filtered: --model, --prompt, --since, --min-score
    /// helpful=1, ...) and from passing eval cells (--eval RUN): writes train.jsonl,
    /// validation.jsonl and manifest.json (the traces, eval cells, filters and scores used)
    /// into --output. PII is redacted unless --keep-pii; exact duplicates are dropped; the
    /// split follows a stable hash of each conversation.
    Finetune {
        #[arg(short, long, default_value = "finetune")]
        output: std::path::PathBuf,
        #[arg(long, default_value = "openai-chat", value_parser = ["openai-chat", "anthropic", "sharegpt"])]
        format: String,
        #[command(flatten)]
        traces: TraceArgs,
        /// The passing cells of this eval run (repeatable).
        #[arg(long = "eval", value_name = "RUN")]
        evals: Vec<String>,
        /// Take no traces, only --eval cells.
        #[arg(long)]
        no_traces: bool,
        /// Share of examples in validation.jsonl.
        #[arg(long, default_value_t = 0.1)]
        validation: f64,
        #[arg(long)]
        keep_pii: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Which traces a command takes.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The alias asked for or the upstream model that answered.
    #[arg(long)]
    pub model: Option<String>,
    /// Traces rendered from this registry prompt: NAME or NAME@VERSION.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Since when: a duration back from now (`30m`, `24h`, `7d`) or Unix milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// `ok` or `error`.
    #[arg(long)]
    pub status: Option<String>,
    /// Text the request or the answer contains.
    #[arg(long)]
    pub search: Option<String>,
    /// Only traces scored NAME ≥ VALUE (feedback, online evals), e.g. `helpful=1`.
    #[arg(long, value_name = "NAME=VALUE")]
    pub min_score: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

impl TraceArgs {
    pub fn filter(&self) -> anyhow::Result<TraceFilter> {
        let (prompt, prompt_version) = match &self.prompt {
            Some(p) => {
                let (name, version) = split_version(p)?;
                (Some(name.to_string()), version)
            }
            None => (None, None),
        };
        let ok = match self.status.as_deref() {
            None => None,
            Some("ok") => Some(true),
            Some("error") => Some(false),
            Some(other) => bail!("--status `{other}`: use ok or error"),
        };
        let min_score = match &self.min_score {
            Some(text) => {
                let (name, value) = text.split_once('=').with_context(|| format!("--min-score `{text}`: write NAME=VALUE"))?;
                let value = match value {
                    "true" => 1.0,
                    "false" => 0.0,
                    v => v.parse().with_context(|| format!("--min-score `{text}`: the value is a number"))?,
                };
                Some((name.to_string(), value))
            }
            None => None,
        };
        Ok(TraceFilter {
            model: self.model.clone(),
            prompt,
            prompt_version,
            since_ms: self.since.as_deref().map(time_arg).transpose()?,
            until_ms: self.until.as_deref().map(time_arg).transpose()?,
            ok,
            search: self.search.clone(),
            min_score,
            scored: false,
            limit: self.limit,
        })
    }
}

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

fn open_store(config: Option<&Path>) -> anyhow::Result<(settings::Settings, Store)> {
    let settings = settings::load(config)?;
    let store = Store::open(&settings.store_path())?;
    Ok((settings, store))
}

fn split_version(text: &str) -> anyhow::Result<(&str, Option<u32>)> {
    match text.split_once('@') {
        Some((name, v)) => Ok((name, Some(v.parse().with_context(|| format!("`{text}`: the version after @ is a number"))?))),
        None => Ok((text, None)),
    }
}

fn read_rows(file: &str) -> anyhow::Result<Vec<DatasetRow>> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("could not read stdin")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("could not read {file}"))?
    };
    dataset::parse_file(file, &text).with_context(|| file.to_string())
}

fn json_arg(text: &str, what: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).or_else(|_| Ok::<_, anyhow::Error>(Value::String(text.to_string()))).with_context(|| format!("--{what}"))
}

/// `30m`, `24h`, `7d`, `90s` back from now, or Unix milliseconds.
fn time_arg(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: f64 = number.parse().with_context(|| format!("`{text}`: a time is Unix milliseconds or a duration such as 30m, 24h, 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => bail!("`{text}`: a duration ends in s, m, h or d"),
    };
    Ok(keel_core::now_ms() - (seconds * 1000.0) as i64)
}

pub fn datasets(config: Option<&Path>, command: DatasetsCommand) -> anyhow::Result<()> {
    let (_, store) = open_store(config)?;
    match command {
        DatasetsCommand::Create { name, from, message } => {
            if !store.dataset_versions(&name)?.is_empty() {
                bail!("dataset `{name}` exists; add rows with `keel datasets import {name} FILE`");
            }
            let rows = match from {
                Some(file) => read_rows(&file)?,
                None => Vec::new(),
            };
            let version = store.push_dataset(&name, &rows, &message, Change::Replace)?;
            println!("{name}@{version}: {} rows", rows.len());
        }
        DatasetsCommand::Import { name, file, replace, message } => {
            let rows = read_rows(&file)?;
            let message = if message.is_empty() { format!("import {file}") } else { message };
            let version = store.push_dataset(&name, &rows, &message, if replace { Change::Replace } else { Change::Append })?;
            let total = store.dataset(&name, Some(version))?.0.rows;
            println!("{name}@{version}: +{} rows, {total} in all", rows.len());
        }
        DatasetsCommand::Add { name, input, expected, metadata, message } => {
            let input = serde_json::from_str::<Value>(&input).context("--input is JSON: variables, or a list of messages")?;
            let mut row = dataset::row_from_json(json!({"input": input}), "--input")?;
            row.expected = expected.map(|e| json_arg(&e, "expected")).transpose()?;
            if let Some(metadata) = metadata {
                row.metadata = serde_json::from_str(&metadata).context("--metadata is a JSON object")?;
            }
            let version = store.push_dataset(&name, &[row], if message.is_empty() { "add a row" } else { &message }, Change::Append)?;
            println!("{name}@{version}");
        }
        DatasetsCommand::AddTraces { name, traces, as_expected, keep_pii, message, json } => {
            let filter = traces.filter()?;
            let traces = store.find_traces(&filter)?;
            let redact = (!keep_pii).then_some(keel_guard::pii::redact as keel_store::Redactor);
            let mut rows = Vec::new();
            let mut skipped = 0;
            for trace in traces.iter().rev() {
                match dataset::row_from_trace(trace, as_expected) {
                    Some(mut row) => {
                        if let Some(redact) = redact {
                            row.input = redact_json(&row.input, redact);
                            row.expected = row.expected.map(|e| redact_json(&e, redact));
                        }
                        rows.push(row);
                    }
                    None => skipped += 1,
                }
            }
            if rows.is_empty() {
                bail!(
                    "no traces with bodies matched ({} matched the filter; keel keeps bodies when [store] log_bodies = true)",
                    traces.len()
                );
            }
            let version = store.push_dataset(&name, &rows, &message, Change::Append)?;
            if json {
                println!("{}", json!({"dataset": name, "version": version, "added": rows.len(), "skipped": skipped}));
            } else {
                println!("{name}@{version}: +{} rows from traces ({skipped} without a body skipped)", rows.len());
            }
        }
        DatasetsCommand::List { json } => {
            let all = store.list_datasets()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no datasets yet: keel datasets create NAME --from FILE");
            } else {
                let rows: Vec<Vec<Cell>> = all
                    .iter()
                    .map(|d| vec![Cell::new(&d.name), Cell::num(d.version.to_string()), Cell::num(d.rows.to_string()), Cell::new(&d.message)])
                    .collect();
                print!("{}", table::render(&["DATASET", "VERSION", "ROWS", "MESSAGE"], &rows));
            }
        }
        DatasetsCommand::Show { dataset, limit, json } => {
            let (name, version) = split_version(&dataset)?;
            let (pinned, rows) = store.dataset(name, version)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({"dataset": pinned, "versions": store.dataset_versions(name)?, "rows": rows}))?);
                return Ok(());
            }
            println!("{}@{}  {} rows  {}", table::paint(name, table::BOLD), pinned.version, pinned.rows, pinned.message);
            let cells: Vec<Vec<Cell>> = rows
                .iter()
                .take(limit)
                .enumerate()
                .map(|(idx, r)| {
                    vec![
                        Cell::num(idx.to_string()),
                        Cell::new(clip(&r.input.to_string(), 60)),
                        Cell::new(r.expected.as_ref().map_or(String::new(), |e| clip(&e.to_string(), 40))),
                        Cell::new(r.trace_id.clone().unwrap_or_default()).color(table::DIM),
                    ]
                })
                .collect();
            print!("{}", table::render(&["#", "INPUT", "EXPECTED", "TRACE"], &cells));
            if rows.len() > limit {
                println!("{}", table::paint(&format!("… {} more (-n to show more, --json for all)", rows.len() - limit), table::DIM));
            }
        }
        DatasetsCommand::Export { dataset, format, output } => {
            let (name, version) = split_version(&dataset)?;
            let (_, rows) = store.dataset(name, version)?;
            let text = if format == "csv" { to_csv(&rows) } else { rows.iter().map(|r| serde_json::to_string(r).unwrap_or_default() + "\n").collect() };
            match output {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("could not write {path}"))?,
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
        }
    }
    Ok(())
}

fn redact_json(value: &Value, redact: keel_store::Redactor) -> Value {
    match value {
        Value::String(text) => Value::String(redact(text)),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact_json(v, redact)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), redact_json(v, redact))).collect()),
        other => other.clone(),
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

/// Rows as CSV: one column per variable (the union, in first-seen order), then `__expected`.
fn to_csv(rows: &[DatasetRow]) -> String {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        for key in row.input.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let mut out = columns.iter().map(|c| csv_field(c)).chain(["__expected".to_string()]).collect::<Vec<_>>().join(",") + "\n";
    for row in rows {
        let mut fields: Vec<String> = columns.iter().map(|c| csv_field(&row.input.get(c).map(text).unwrap_or_default())).collect();
        fields.push(csv_field(&row.expected.as_ref().map(text).unwrap_or_default()));
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width { text.to_string() } else { format!("{}…", text.chars().take(width - 1).collect::<String>()) }
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
                    tool_calls.extend(calls.into_iter().map(|call| keel_eval::CallMade {
                        name: call.name,
                        arguments: serde_json::from_str(&call.arguments).unwrap_or(Value::String(call.arguments)),
                    }));
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

async fn run(config: Option<&Path>, args: RunArgs) -> anyhow::Result<()> {
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

/// `keel export finetune`.
pub fn export(config: Option<&Path>, command: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Finetune { output, format, traces, evals, no_traces, validation, keep_pii, json } = command;
    use keel_eval::finetune::{self, Format};
    let (_, store) = open_store(config)?;
    if !(0.0..1.0).contains(&validation) {
        bail!("--validation is a share from 0 to below 1, not {validation}");
    }
    let format = Format::parse(&format).context("--format")?;
    let mut examples = Vec::new();
    let mut skipped = 0;
    let mut trace_ids = Vec::new();
    let filter = traces.filter()?;
    if !no_traces {
        let mut filter = filter.clone();
        filter.ok = Some(filter.ok.unwrap_or(true));
        for trace in store.find_traces(&filter)?.iter().rev() {
            match finetune::from_trace(trace) {
                Some(example) => {
                    trace_ids.push(trace.id.clone());
                    examples.push(example);
                }
                None => skipped += 1,
            }
        }
    }
    let mut eval_runs = Vec::new();
    for run in &evals {
        let record = store.eval_run(run)?;
        let spec: keel_eval::Spec = serde_json::from_str(&record.spec).with_context(|| format!("eval run {} has a spec this keel cannot read", record.id))?;
        let mut taken = 0;
        for result in store.eval_results(&record.id)?.iter().filter(|r| r.pass && r.error.is_none()) {
            match finetune::from_eval(&spec, result) {
                Some(example) => {
                    examples.push(example);
                    taken += 1;
                }
                None => skipped += 1,
            }
        }
        eval_runs.push(json!({"run": record.id, "name": record.name, "dataset": spec.dataset, "prompts": spec.prompts.iter().map(|p| &p.id).collect::<Vec<_>>(), "cells": taken}));
    }
    if examples.is_empty() {
        bail!("nothing to export: no trace with bodies matched the filter{}", if evals.is_empty() { "" } else { " and the eval runs have no passing cells" });
    }
    let mut seen = std::collections::HashSet::new();
    let (mut train, mut valid, mut duplicates) = (String::new(), String::new(), 0);
    let mut sources = Vec::new();
    for mut example in examples {
        if !keep_pii {
            for message in &mut example.messages {
                redact_message(message);
            }
        }
        let line = finetune::render(&example, format).to_string();
        if !seen.insert(line.clone()) {
            duplicates += 1;
            continue;
        }
        let side = if finetune::is_validation(&line, validation) { &mut valid } else { &mut train };
        side.push_str(&line);
        side.push('\n');
        sources.push(example.source);
    }
    std::fs::create_dir_all(&output).with_context(|| format!("could not create {}", output.display()))?;
    let ids: Vec<&str> = trace_ids.iter().map(String::as_str).collect();
    let scores = store.scores(&ids)?;
    let manifest = json!({
        "format": match format { Format::OpenAiChat => "openai-chat", Format::Anthropic => "anthropic", Format::ShareGpt => "sharegpt" },
        "created_ms": keel_core::now_ms(),
        "filter": {
            "model": filter.model, "prompt": filter.prompt, "prompt_version": filter.prompt_version,
            "since_ms": filter.since_ms, "until_ms": filter.until_ms, "search": filter.search,
            "min_score": filter.min_score, "limit": filter.limit, "traces": !no_traces,
        },
        "eval_runs": eval_runs,
        "sources": sources,
        "scores": scores,
        "pii_redacted": !keep_pii,
        "train": train.lines().count(),
        "validation": valid.lines().count(),
        "duplicates_dropped": duplicates,
        "skipped": skipped,
        "files": ["train.jsonl", "validation.jsonl"],
    });
    std::fs::write(output.join("train.jsonl"), &train)?;
    std::fs::write(output.join("validation.jsonl"), &valid)?;
    std::fs::write(output.join("manifest.json"), serde_json::to_string_pretty(&manifest)?)?;
    if json {
        println!("{}", json!({"output": output, "train": manifest["train"], "validation": manifest["validation"], "duplicates_dropped": duplicates, "skipped": skipped}));
    } else {
        println!(
            "{}: {} train, {} validation ({} duplicates dropped, {} without a usable body skipped){}",
            output.display(),
            manifest["train"],
            manifest["validation"],
            duplicates,
            skipped,
            if keep_pii { "" } else { "; PII redacted" }
        );
    }
    Ok(())
}

/// Redacts a message's text and its tool calls' arguments.
fn redact_message(message: &mut Value) {
    let redact = keel_guard::pii::redact;
    match &mut message["content"] {
        Value::String(text) => *text = redact(text),
        Value::Array(parts) => {
            for part in parts {
                if let Some(Value::String(text)) = part.get_mut("text") {
                    *text = redact(text);
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        for call in calls {
            if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                *args = redact(args);
            }
        }
    }
}

/// `keel feedback TRACE NAME VALUE`: a score on a trace from the command line.
pub fn feedback(config: Option<&Path>, trace: &str, name: &str, value: &str, comment: Option<String>) -> anyhow::Result<()> {
    let (_, store) = open_store(config)?;
    if store.trace(trace)?.is_none() {
        bail!("no trace `{trace}` (`keel traces` lists them)");
    }
    let (number, label) = match value {
        "true" => (Some(1.0), Some("true".to_string())),
        "false" => (Some(0.0), Some("false".to_string())),
        v => match v.parse::<f64>() {
            Ok(n) => (Some(n), None),
            Err(_) => (None, Some(v.to_string())),
        },
    };
    let score = keel_store::Score {
        id: keel_core::time_ordered_id(keel_core::now_ms() as u64, fastrand::u128(..)),
        trace_id: trace.to_string(),
        name: name.to_string(),
        value: number,
        label,
        comment,
        source: "feedback".into(),
        created_ms: keel_core::now_ms(),
    };
    store.add_score(&score)?;
    println!("{trace}: {name} = {value}");
    Ok(())
}
