//! `keel datasets …` (versioned rows from files, by hand or from production traces),
//! `keel feedback` (a score on a trace) and `keel export finetune` (fine-tuning JSONL from
//! scored traces and passing eval cells): the improvement loop's data, in and out.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;
use keel_eval::dataset;
use keel_store::{Change, DatasetRow, Store, TraceFilter};
use serde_json::{Value, json};

use crate::settings;
use crate::table::{self, Cell};

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


pub(crate) fn open_store(config: Option<&Path>) -> anyhow::Result<(settings::Settings, Store)> {
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

pub(crate) fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width { text.to_string() } else { format!("{}…", text.chars().take(width - 1).collect::<String>()) }
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
        let spec: keel_eval::Spec = serde_json::from_str(&store.eval_run_spec(&record.id)?).with_context(|| format!("eval run {} has a spec this keel cannot read", record.id))?;
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
