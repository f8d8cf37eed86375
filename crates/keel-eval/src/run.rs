//! Running an eval: every cell (prompt × target × test × repeat) rendered, sent through the
//! cached model, graded and stored as it finishes, so a killed run resumes where it stopped
//! (running the same eval again finds the unfinished run by its key), then summarised per
//! prompt × target with the thresholds checked.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use keel_store::{EvalResult, EvalRunRecord, Store};

use crate::model::{Answer, Cached, Model};
use crate::score::{self, Case, Grade};
use crate::spec::Spec;
use crate::{Error, Result};

pub struct Options {
    pub concurrency: usize,
    pub cache: bool,
    /// Start a new run even when an unfinished one with the same key exists.
    pub fresh: bool,
    /// Called after each cell with (done, total, passed so far, cost so far).
    pub progress: Box<dyn Fn(Progress) + Send + Sync>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub passed: usize,
    pub cost_usd: f64,
    /// Cells already finished by an earlier, interrupted run.
    pub resumed: usize,
}

/// One prompt × target's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub prompt: String,
    pub target: String,
    pub cells: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub pass_rate: f64,
    pub mean_score: f64,
    pub latency_p50_ms: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub cached: usize,
}

/// A threshold a run missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    pub what: String,
    pub want: f64,
    pub got: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: String,
    pub name: String,
    pub cells: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub pass_rate: f64,
    pub cost_usd: f64,
    /// Cells done by an earlier, interrupted run and not redone.
    pub resumed: usize,
    pub groups: Vec<Group>,
    /// Mean score per named metric.
    pub metrics: BTreeMap<String, f64>,
    pub misses: Vec<Miss>,
    pub dataset: Option<(String, u32)>,
    pub prompts: Vec<String>,
}

impl Summary {
    /// What the run means for CI.
    pub fn outcome(&self) -> Outcome {
        if self.errors > 0 {
            Outcome::Errors
        } else if !self.misses.is_empty() {
            Outcome::Missed
        } else {
            Outcome::Passed
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// A case, metric or the overall pass rate missed its threshold.
    Missed,
    /// A cell could not be run (an upstream error, a template that does not render).
    Errors,
}

/// One cell's place in the matrix.
#[derive(Debug, Clone, Copy)]
struct Cell {
    prompt: usize,
    target: usize,
    test: usize,
    repeat: u32,
}

impl Cell {
    fn key(&self) -> String {
        format!("{}|{}|{}|{}", self.prompt, self.target, self.test, self.repeat)
    }
}

/// The run key: a hash of the compiled spec (pinned versions included).
pub fn run_key(spec: &Spec) -> String {
    key_of(&serde_json::to_string(spec).unwrap_or_default())
}

fn key_of(spec_json: &str) -> String {
    use sha2::Digest;
    keel_core::hex(&sha2::Sha256::digest(spec_json.as_bytes()))
}

/// Runs (or resumes) `spec` and returns its summary.
pub async fn run(store: &Store, spec: &Spec, model: &dyn Model, options: &Options) -> Result<Summary> {
    // One serialisation (not a JSON tree: 20,000 cases make a large one) for the key and the record.
    let spec_json = serde_json::to_string(spec).map_err(|e| Error::Invalid(e.to_string()))?;
    let key = key_of(&spec_json);
    let cells: Vec<Cell> = (0..spec.prompts.len())
        .flat_map(|prompt| {
            (0..spec.targets.len()).flat_map(move |target| {
                (0..spec.tests.len()).flat_map(move |test| (0..spec.repeat).map(move |repeat| Cell { prompt, target, test, repeat }))
            })
        })
        .collect();
    let existing = if options.fresh { None } else { store.unfinished_eval_run(&key)? };
    let run = match existing {
        Some(run) => run,
        None => {
            let now = keel_core::now_ms();
            let run = EvalRunRecord {
                id: keel_core::time_ordered_id(now as u64, fastrand::u128(..)),
                name: spec.name.clone(),
                key: key.clone(),
                created_ms: now,
                updated_ms: now,
                status: "running".into(),
                cells: cells.len() as u64,
                summary: None,
            };
            store.create_eval_run(&run, &spec_json)?;
            run
        }
    };
    drop(spec_json);
    let mut done: HashSet<String> = HashSet::new();
    store.each_eval_result(&run.id, |r| {
        if r.error.is_none() {
            done.insert(r.cell);
        }
    })?;
    let todo: Vec<Cell> = cells.iter().copied().filter(|c| !done.contains(&c.key())).collect();
    let resumed = cells.len() - todo.len();
    let mut cached = Cached::new(model, store, options.cache);
    let prompts = spec.prompts.iter().map(|p| p.def.compile()).collect::<Result<Vec<_>>>()?;
    // The cached answers of the cells' requests, read ahead (requests are rendered again
    // when sent: compiled templates are cheap, 20,000 request trees held at once are not).
    let model_cell = |cell: &Cell| spec.targets[cell.target].agent.is_none() && spec.targets[cell.target].rag.is_none();
    // Each model cell's cache key, computed once: a cell answered from the cache is not rendered again.
    let mut keyed: Vec<Option<String>> = vec![None; todo.len()];
    let model_cells: Vec<usize> = (0..todo.len()).filter(|&i| model_cell(&todo[i])).collect();
    let mut renderable = Vec::with_capacity(model_cells.len());
    let bodies = model_cells.iter().filter_map(|&i| match request(spec, &prompts, todo[i]) {
        Ok(body) => {
            renderable.push(i);
            Some((body, todo[i].repeat))
        }
        Err(_) => None,
    });
    let keys = cached.preload(bodies);
    for (i, key) in renderable.into_iter().zip(keys) {
        keyed[i] = key;
    }
    let mut tally = Progress { done: resumed, total: cells.len(), resumed, ..Progress::default() };
    (options.progress)(tally);
    let concurrency = options.concurrency.max(1);
    let cached = &cached;
    let prompts = &prompts;
    let mut results = futures_util::stream::iter(todo.into_iter().zip(keyed).map(|(cell, key)| {
        let hit = key.as_deref().and_then(|key| cached.preloaded(key));
        let body = if hit.is_some() { Ok(Value::Null) } else { request(spec, prompts, cell) };
        run_cell(spec, cell, body, hit, cached, &run.id)
    }))
    .buffer_unordered(concurrency);
    let mut failure = None;
    // Finished cells are written in batches (a kill loses at most the last batch, which a
    // resume redoes), with the answers cached meanwhile.
    let mut batch: Vec<EvalResult> = Vec::new();
    let mut flushed = Instant::now();
    let write = |batch: &mut Vec<EvalResult>, cached: &Cached<'_>| -> Result<()> {
        cached.flush();
        store.insert_eval_results(batch)?;
        batch.clear();
        Ok(())
    };
    loop {
        let next = results.next().await;
        let done = next.is_none();
        if let Some(result) = next {
            tally.done += 1;
            tally.passed += usize::from(result.pass);
            if !result.cached {
                tally.cost_usd += result.cost_usd.unwrap_or(0.0);
            }
            batch.push(result);
        }
        if done || batch.len() >= 256 || flushed.elapsed() >= std::time::Duration::from_millis(200) {
            if let Err(err) = write(&mut batch, cached) {
                failure = Some(err);
                break;
            }
            flushed = Instant::now();
            (options.progress)(tally);
        }
        if done {
            break;
        }
    }
    drop(results);
    if let Some(err) = failure {
        return Err(err);
    }
    let mut totals = Tally::new(spec);
    store.each_eval_result(&run.id, |r| totals.add(&r))?;
    let mut summary = totals.finish(spec);
    summary.run_id = run.id.clone();
    summary.resumed = resumed;
    summary.cost_usd = tally.cost_usd;
    let status = if summary.errors > 0 { "failed" } else { "finished" };
    store.finish_eval_run(&run.id, status, &serde_json::to_string(&summary).unwrap_or_default())?;
    Ok(summary)
}

/// The request body a cell sends: the prompt (compiled: `prompts[cell.prompt]`) rendered
/// with the test's variables, the prompt's config, then the target's (the target wins).
fn request(spec: &Spec, prompts: &[crate::prompt::Compiled<'_>], cell: Cell) -> Result<Value> {
    let prompt = &spec.prompts[cell.prompt];
    let target = &spec.targets[cell.target];
    let test = &spec.tests[cell.test];
    let messages = prompts[cell.prompt].render(&test.vars)?;
    let mut body = Map::new();
    body.insert("model".into(), Value::String(target.alias.clone()));
    body.insert("messages".into(), Value::Array(messages));
    for (key, value) in prompt.def.config.fields() {
        if key != "model" {
            body.insert(key.to_string(), value);
        }
    }
    for (key, value) in &target.config {
        body.insert(key.clone(), value.clone());
    }
    Ok(Value::Object(body))
}

/// Runs one cell: `hit` is its answer found in the cache (then `body` is not used), else
/// `body` is the request to send.
async fn run_cell(spec: &Spec, cell: Cell, body: Result<Value>, hit: Option<Answer>, model: &Cached<'_>, run_id: &str) -> EvalResult {
    let test = &spec.tests[cell.test];
    let mut result = EvalResult {
        run_id: run_id.to_string(),
        cell: cell.key(),
        prompt: spec.prompts[cell.prompt].id.clone(),
        target: spec.targets[cell.target].id.clone(),
        row: cell.test as u32,
        repeat: cell.repeat,
        vars: Value::Object(test.vars.clone()).to_string(),
        grades: "[]".into(),
        created_ms: keel_core::now_ms(),
        ..EvalResult::default()
    };
    let body = match body {
        Ok(body) => body,
        Err(err) => {
            result.error = Some(err.to_string());
            return result;
        }
    };
    let started = Instant::now();
    // An agent's input and a RAG question: the rendered prompt's last user message.
    let last_user = || {
        body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .map(|m| m["content"].as_str().map_or_else(|| m["content"].to_string(), str::to_string))
            .unwrap_or_default()
    };
    let target = &spec.targets[cell.target];
    let reply = match (hit, &target.agent, &target.rag) {
        (Some(answer), _, _) => Ok(answer),
        (None, Some(file), _) => model.agent(file, &last_user(), &test.vars).await,
        (None, None, Some(collection)) => model.rag(collection, &target.alias, &last_user()).await,
        (None, None, None) => model.sample(&body, cell.repeat).await,
    };
    let answer: Answer = match reply {
        Ok(answer) => answer,
        Err(err) => {
            result.error = Some(err);
            result.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            return result;
        }
    };
    let case = Case { answer: &answer, vars: &test.vars, expected: test.expected.as_ref(), judge: spec.judge.as_deref(), model };
    let mut grades: Vec<Grade> = Vec::new();
    for assertion in spec.assertions(test) {
        grades.push(score::grade(assertion, &case).await);
    }
    let (pass, score) = score::verdict(&grades, test.threshold);
    result.output = Some(if answer.text.is_empty() && !answer.tool_calls.is_empty() {
        serde_json::to_string(&answer.tool_calls).unwrap_or_default()
    } else {
        answer.text.clone()
    });
    result.pass = pass;
    result.score = score;
    result.grades = serde_json::to_string(&grades).unwrap_or_else(|_| "[]".into());
    result.latency_ms = answer.latency_ms;
    result.input_tokens = answer.input_tokens;
    result.output_tokens = answer.output_tokens;
    result.cost_usd = answer.cost_usd;
    result.cached = answer.cached;
    result
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A summary built one result at a time (a run's results are read back one by one, never
/// all held): per group its counts and latencies, per metric its sum.
struct Tally {
    groups: Vec<Group>,
    latencies: Vec<Vec<f64>>,
    /// Group index by (prompt id, target id).
    index: std::collections::HashMap<(String, String), usize>,
    metric_sums: BTreeMap<String, (f64, usize)>,
}

impl Tally {
    fn new(spec: &Spec) -> Tally {
        let mut tally = Tally { groups: Vec::new(), latencies: Vec::new(), index: Default::default(), metric_sums: BTreeMap::new() };
        for prompt in &spec.prompts {
            for target in &spec.targets {
                tally.index.insert((prompt.id.clone(), target.id.clone()), tally.groups.len());
                tally.groups.push(Group { prompt: prompt.id.clone(), target: target.id.clone(), ..Group::default() });
                tally.latencies.push(Vec::new());
            }
        }
        tally
    }

    fn add(&mut self, r: &EvalResult) {
        let Some(&at) = self.index.get(&(r.prompt.clone(), r.target.clone())) else { return };
        let group = &mut self.groups[at];
        group.cells += 1;
        if r.error.is_some() {
            group.errors += 1;
        } else {
            if r.pass {
                group.passed += 1;
            } else {
                group.failed += 1;
            }
            self.latencies[at].push(r.latency_ms);
        }
        group.input_tokens += r.input_tokens;
        group.output_tokens += r.output_tokens;
        group.cost_usd += r.cost_usd.unwrap_or(0.0);
        group.cached += usize::from(r.cached);
        group.mean_score += r.score;
        // Only grades that count toward a named metric are read again.
        if r.grades.contains("\"metric\"") {
            for grade in serde_json::from_str::<Vec<Grade>>(&r.grades).unwrap_or_default() {
                if let Some(metric) = grade.metric {
                    let entry = self.metric_sums.entry(metric).or_default();
                    entry.0 += grade.score;
                    entry.1 += 1;
                }
            }
        }
    }

    fn finish(self, spec: &Spec) -> Summary {
        let mut summary = Summary {
            name: spec.name.clone(),
            dataset: spec.dataset.clone(),
            prompts: spec.prompts.iter().map(|p| p.id.clone()).collect(),
            ..Summary::default()
        };
        for (mut group, latencies) in self.groups.into_iter().zip(self.latencies) {
            if group.cells > 0 {
                group.mean_score /= group.cells as f64;
                group.pass_rate = group.passed as f64 / group.cells as f64;
            }
            group.latency_p50_ms = median(latencies);
            summary.cells += group.cells;
            summary.passed += group.passed;
            summary.failed += group.failed;
            summary.errors += group.errors;
            summary.groups.push(group);
        }
        summary.metrics = self.metric_sums.into_iter().map(|(name, (sum, n))| (name, sum / n as f64)).collect();
        checked(spec, summary)
    }
}

/// `summary` with the spec's thresholds checked.
fn checked(spec: &Spec, mut summary: Summary) -> Summary {
    summary.pass_rate = if summary.cells > 0 { summary.passed as f64 / summary.cells as f64 } else { 0.0 };
    match spec.fail_under {
        // With an overall bar, single failures are allowed as long as the rate holds.
        Some(want) if summary.pass_rate < want => summary.misses.push(Miss { what: "pass rate".into(), want, got: summary.pass_rate }),
        Some(_) => {}
        None if summary.failed > 0 => {
            summary.misses.push(Miss { what: format!("{} failing case{}", summary.failed, if summary.failed == 1 { "" } else { "s" }), want: 1.0, got: summary.pass_rate })
        }
        None => {}
    }
    for (metric, want) in &spec.metrics {
        let got = summary.metrics.get(metric).copied().unwrap_or(0.0);
        if got < *want {
            summary.misses.push(Miss { what: format!("metric `{metric}`"), want: *want, got });
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::Scripted;
    use std::path::PathBuf;

    fn setup(name: &str, toml: &str) -> (Store, Spec, PathBuf) {
        let dir = std::env::temp_dir().join(format!("keel-run-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("s.db")).unwrap();
        std::fs::write(dir.join("e.toml"), toml).unwrap();
        let spec = crate::spec::load(&dir.join("e.toml"), &store).unwrap().spec;
        (store, spec, dir)
    }

    fn options(cache: bool) -> Options {
        Options { concurrency: 4, cache, fresh: false, progress: Box::new(|_| {}) }
    }

    const ECHO: &str = r#"
[[prompts]]
text = "say {{ word }}"
[[prompts]]
text = "SAY {{ word | upper }}"
[[targets]]
model = "fast"
[[tests]]
vars = { word = "tea" }
assert = [{ type = "icontains", value = "tea", metric = "mentions" }]
[[tests]]
vars = { word = "milk" }
assert = [{ type = "contains", value = "milk" }]
"#;

    #[tokio::test]
    async fn a_matrix_runs_every_cell_and_the_cache_answers_a_rerun() {
        let (store, spec, dir) = setup("matrix", ECHO);
        let model = Scripted::default();
        let first = run(&store, &spec, &model, &options(true)).await.unwrap();
        assert_eq!((first.cells, first.passed, first.failed, first.errors), (4, 3, 1, 0), "{first:?}");
        assert_eq!(first.outcome(), Outcome::Missed);
        assert_eq!(first.metrics["mentions"], 1.0);
        assert_eq!(model.bodies().len(), 4);
        let second = run(&store, &spec, &model, &Options { fresh: true, ..options(true) }).await.unwrap();
        assert_eq!(model.bodies().len(), 4, "the unchanged rerun is answered from the cache");
        assert_eq!(second.groups.iter().map(|g| g.cached).sum::<usize>(), 4);
        assert_ne!(first.run_id, second.run_id);
        let third = run(&store, &spec, &model, &Options { fresh: true, ..options(false) }).await.unwrap();
        assert_eq!(model.bodies().len(), 8, "--no-cache calls again");
        assert_eq!(third.passed, 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_interrupted_run_resumes_without_redoing_cells() {
        let (store, spec, dir) = setup("resume", ECHO);
        let model = Scripted::default();
        // A run killed after two cells: its record and two results are stored.
        let key = run_key(&spec);
        let record = EvalRunRecord {
            id: "killed".into(),
            name: spec.name.clone(),
            key,
            created_ms: 1,
            updated_ms: 1,
            status: "running".into(),
            cells: 4,
            summary: None,
        };
        store.create_eval_run(&record, "{}").unwrap();
        for cell in [Cell { prompt: 0, target: 0, test: 0, repeat: 0 }, Cell { prompt: 0, target: 0, test: 1, repeat: 0 }] {
            let cached = Cached::new(&model, &store, false);
            let prompts: Vec<_> = spec.prompts.iter().map(|p| p.def.compile().unwrap()).collect();
            let body = request(&spec, &prompts, cell);
            store.insert_eval_result(&run_cell(&spec, cell, body, None, &cached, "killed").await).unwrap();
        }
        assert_eq!(model.bodies().len(), 2);
        let summary = run(&store, &spec, &model, &options(false)).await.unwrap();
        assert_eq!(summary.run_id, "killed");
        assert_eq!((summary.resumed, summary.cells), (2, 4));
        assert_eq!(model.bodies().len(), 4, "only the two unfinished cells ran");
        assert_eq!(store.eval_run("killed").unwrap().status, "finished");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn fail_under_and_metric_thresholds_decide_the_outcome() {
        let toml = format!("fail_under = 0.7\nmetrics = {{ mentions = 0.5 }}\n{ECHO}");
        let (store, spec, dir) = setup("gate", &toml);
        let summary = run(&store, &spec, &Scripted::default(), &options(false)).await.unwrap();
        assert_eq!(summary.pass_rate, 0.75);
        assert_eq!(summary.outcome(), Outcome::Passed, "{:?}", summary.misses);
        let strict = Spec { fail_under: Some(0.8), ..spec.clone() };
        let summary = run(&store, &strict, &Scripted::default(), &options(false)).await.unwrap();
        assert_eq!(summary.outcome(), Outcome::Missed);
        assert_eq!(summary.misses[0].what, "pass rate");
        let _ = std::fs::remove_dir_all(dir);
    }
}
