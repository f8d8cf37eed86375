//! The eval loop's tables: datasets as immutable numbered versions of their rows, eval runs
//! with one result per finished cell (so a killed run resumes where it stopped), and the
//! response cache that makes re-running an unchanged eval free.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use crate::{Error, Result, Store};

/// One dataset row: the input (template variables, or `{"messages": [...]}`), what a good
/// answer is (optional), free-form metadata, and the trace it was copied from, if any.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DatasetRow {
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    pub metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// One version of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetVersion {
    pub name: String,
    pub version: u32,
    pub message: String,
    pub created_ms: i64,
    pub rows: u64,
}

/// How a change builds the next version from the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The previous version's rows, then the new ones.
    Append,
    /// The new rows alone.
    Replace,
}

/// An eval run: what it ran (its spec, as JSON) and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRunRecord {
    pub id: String,
    pub name: String,
    /// A hash of everything that decides the run's cells (spec, dataset and prompt versions):
    /// running the same eval again finds an unfinished run with the same key and resumes it.
    pub key: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// `running`, `finished` or `failed`.
    pub status: String,
    pub cells: u64,
    pub summary: Option<String>,
}

/// One finished cell of an eval run: a prompt × target × row × repeat, what came back and
/// how it scored.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvalResult {
    pub run_id: String,
    /// The cell's key within the run (`prompt|target|row|repeat`).
    pub cell: String,
    pub prompt: String,
    pub target: String,
    pub row: u32,
    pub repeat: u32,
    /// The row's variables, as JSON.
    pub vars: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub pass: bool,
    pub score: f64,
    /// Each assertion's grade, as JSON.
    pub grades: String,
    pub latency_ms: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Option<f64>,
    /// The answer came from the response cache.
    pub cached: bool,
    pub created_ms: i64,
}

/// A score on a trace: a person's feedback, an API client's, or an online evaluator's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    pub id: String,
    pub trace_id: String,
    pub name: String,
    /// Numeric scores, and booleans as 1 or 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Categorical scores (and booleans as `true`/`false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `feedback` (an API client or `keel feedback`) or `online:NAME` (an evaluator).
    pub source: String,
    pub created_ms: i64,
}

fn json_text(value: &Value) -> String {
    value.to_string()
}

fn parse_json(text: String) -> Value {
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

impl Store {
    /// Makes the next version of dataset `name` (1 for a new one) from `rows` and returns it.
    pub fn push_dataset(&self, name: &str, rows: &[DatasetRow], message: &str, change: Change) -> Result<u32> {
        if name.is_empty() || name.contains(['@', '/', ' ']) {
            return Err(Error::Invalid(format!("dataset name `{name}`: use letters, digits, `-`, `_` or `.`")));
        }
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let latest: Option<u32> =
            tx.query_row("SELECT MAX(version) FROM datasets WHERE name = ?1", [name], |row| row.get(0)).map_err(|e| self.err(e))?;
        let version = latest.unwrap_or(0) + 1;
        let mut next = 0u64;
        if let (Some(previous), Change::Append) = (latest, change) {
            next = tx
                .execute(
                    "INSERT INTO dataset_rows (name, version, idx, input, expected, metadata, trace_id)
                     SELECT name, ?2, idx, input, expected, metadata, trace_id FROM dataset_rows WHERE name = ?1 AND version = ?3",
                    params![name, version, previous],
                )
                .map_err(|e| self.err(e))? as u64;
        }
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO dataset_rows (name, version, idx, input, expected, metadata, trace_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|e| self.err(e))?;
            for row in rows {
                stmt.execute(params![
                    name,
                    version,
                    next as i64,
                    json_text(&row.input),
                    row.expected.as_ref().map(json_text),
                    json_text(&row.metadata),
                    row.trace_id
                ])
                .map_err(|e| self.err(e))?;
                next += 1;
            }
        }
        tx.execute(
            "INSERT INTO datasets (name, version, message, created_ms, rows) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, version, message, keel_core::now_ms(), next as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(version)
    }

    /// Every version of dataset `name`, oldest first (empty when there is no such dataset).
    pub fn dataset_versions(&self, name: &str) -> Result<Vec<DatasetVersion>> {
        self.query_datasets("WHERE name = ?1 ORDER BY version", [name])
    }

    /// The newest version of each dataset, by name.
    pub fn list_datasets(&self) -> Result<Vec<DatasetVersion>> {
        self.query_datasets("WHERE version = (SELECT MAX(version) FROM datasets d WHERE d.name = datasets.name) ORDER BY name", [])
    }

    fn query_datasets(&self, tail: &str, params: impl rusqlite::Params) -> Result<Vec<DatasetVersion>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare(&format!("SELECT name, version, message, created_ms, rows FROM datasets {tail}"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, |row| {
                Ok(DatasetVersion {
                    name: row.get(0)?,
                    version: row.get(1)?,
                    message: row.get(2)?,
                    created_ms: row.get(3)?,
                    rows: row.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// A version of dataset `name` (the newest when `version` is `None`) and its rows in
    /// order. An unknown dataset or version is [`Error::NotFound`] naming it.
    pub fn dataset(&self, name: &str, version: Option<u32>) -> Result<(DatasetVersion, Vec<DatasetRow>)> {
        let versions = self.dataset_versions(name)?;
        let Some(newest) = versions.last() else {
            return Err(Error::NotFound(format!("no dataset `{name}`")));
        };
        let chosen = match version {
            None => newest.clone(),
            Some(v) => versions.iter().find(|d| d.version == v).cloned().ok_or_else(|| {
                Error::NotFound(format!("dataset `{name}` has no version {v} (it has 1 to {})", newest.version))
            })?,
        };
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare_cached("SELECT input, expected, metadata, trace_id FROM dataset_rows WHERE name = ?1 AND version = ?2 ORDER BY idx")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![name, chosen.version], |row| {
                Ok(DatasetRow {
                    input: parse_json(row.get(0)?),
                    expected: row.get::<_, Option<String>>(1)?.map(parse_json),
                    metadata: parse_json(row.get(2)?),
                    trace_id: row.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok((chosen, rows))
    }

    /// Stores a new run and `spec`, the JSON of what it runs ([`Store::eval_run_spec`]).
    pub fn create_eval_run(&self, run: &EvalRunRecord, spec: &str) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO eval_runs (id, name, key, created_ms, updated_ms, status, cells, summary) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![run.id, run.name, run.key, run.created_ms, run.updated_ms, run.status, run.cells as i64, run.summary],
        )
        .map_err(|e| self.err(e))?;
        tx.execute("INSERT OR REPLACE INTO eval_specs (run_id, spec) VALUES (?1, ?2)", params![run.id, spec]).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// The spec JSON run `id` was created with.
    pub fn eval_run_spec(&self, id: &str) -> Result<String> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.prepare_cached("SELECT spec FROM eval_specs WHERE run_id = ?1")
            .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)).optional())
            .map_err(|e| self.err(e))?
            .ok_or_else(|| Error::NotFound(format!("no spec for eval run `{id}`")))
    }

    /// The newest run with `key` that did not finish, to resume.
    pub fn unfinished_eval_run(&self, key: &str) -> Result<Option<EvalRunRecord>> {
        Ok(self.query_eval_runs("WHERE key = ?1 AND status != 'finished' ORDER BY created_ms DESC LIMIT 1", key)?.into_iter().next())
    }

    /// The run whose id is `id` or starts with it (ids are long; a unique prefix will do).
    pub fn eval_run(&self, id: &str) -> Result<EvalRunRecord> {
        let found = self.query_eval_runs("WHERE id LIKE ?1 || '%' ORDER BY created_ms DESC LIMIT 2", id)?;
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::NotFound(format!("no eval run `{id}`"))),
            _ => Err(Error::Invalid(format!("`{id}` names more than one eval run; give more of its id"))),
        }
    }

    /// The newest eval runs, newest first.
    pub fn eval_runs(&self, limit: usize) -> Result<Vec<EvalRunRecord>> {
        self.query_eval_runs("ORDER BY created_ms DESC, rowid DESC LIMIT ?1", limit.min(i64::MAX as usize) as i64)
    }

    fn query_eval_runs(&self, tail: &str, param: impl rusqlite::ToSql) -> Result<Vec<EvalRunRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare(&format!("SELECT id, name, key, created_ms, updated_ms, status, cells, summary FROM eval_runs {tail}"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([param], |row| {
                Ok(EvalRunRecord {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    key: row.get(2)?,
                    created_ms: row.get(3)?,
                    updated_ms: row.get(4)?,
                    status: row.get(5)?,
                    cells: row.get::<_, i64>(6)? as u64,
                    summary: row.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Marks run `id` `status` (`finished`, `failed`) with its summary.
    pub fn finish_eval_run(&self, id: &str, status: &str, summary: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = conn
            .execute(
                "UPDATE eval_runs SET status = ?2, summary = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, status, summary, keel_core::now_ms()],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(Error::NotFound(format!("no eval run `{id}`")));
        }
        Ok(())
    }

    /// Stores a finished cell; storing a cell again replaces it.
    pub fn insert_eval_result(&self, r: &EvalResult) -> Result<()> {
        self.insert_eval_results(std::slice::from_ref(r))
    }

    /// Stores finished cells in one transaction (a cell stored again replaces itself).
    pub fn insert_eval_results(&self, results: &[EvalResult]) -> Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO eval_results (run_id, cell, prompt, target, row_idx, repeat, vars, output, error, pass,
                     score, grades, latency_ms, input_tokens, output_tokens, cost_usd, cached, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )
                .map_err(|e| self.err(e))?;
            for r in results {
                stmt.execute(params![
                    r.run_id,
                    r.cell,
                    r.prompt,
                    r.target,
                    r.row,
                    r.repeat,
                    r.vars,
                    r.output,
                    r.error,
                    r.pass,
                    r.score,
                    r.grades,
                    r.latency_ms,
                    r.input_tokens as i64,
                    r.output_tokens as i64,
                    r.cost_usd,
                    r.cached,
                    r.created_ms
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        let runs: std::collections::BTreeSet<&str> = results.iter().map(|r| r.run_id.as_str()).collect();
        for run in runs {
            tx.execute("UPDATE eval_runs SET updated_ms = ?2 WHERE id = ?1", params![run, keel_core::now_ms()]).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Run `run_id`'s finished cells, in the order they were stored.
    pub fn eval_results(&self, run_id: &str) -> Result<Vec<EvalResult>> {
        let mut results = Vec::new();
        self.each_eval_result(run_id, |r| results.push(r))?;
        Ok(results)
    }

    /// Calls `f` with each of run `run_id`'s finished cells in the order they were stored,
    /// one at a time (a large run's results are never all in memory).
    pub fn each_eval_result(&self, run_id: &str, mut f: impl FnMut(EvalResult)) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare_cached(
                "SELECT run_id, cell, prompt, target, row_idx, repeat, vars, output, error, pass, score, grades, latency_ms,
                 input_tokens, output_tokens, cost_usd, cached, created_ms FROM eval_results WHERE run_id = ?1 ORDER BY rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run_id], |row| {
                Ok(EvalResult {
                    run_id: row.get(0)?,
                    cell: row.get(1)?,
                    prompt: row.get(2)?,
                    target: row.get(3)?,
                    row: row.get(4)?,
                    repeat: row.get(5)?,
                    vars: row.get(6)?,
                    output: row.get(7)?,
                    error: row.get(8)?,
                    pass: row.get(9)?,
                    score: row.get(10)?,
                    grades: row.get(11)?,
                    latency_ms: row.get(12)?,
                    input_tokens: row.get::<_, i64>(13)? as u64,
                    output_tokens: row.get::<_, i64>(14)? as u64,
                    cost_usd: row.get(15)?,
                    cached: row.get(16)?,
                    created_ms: row.get(17)?,
                })
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            f(row.map_err(|e| self.err(e))?);
        }
        Ok(())
    }

    pub fn add_score(&self, score: &Score) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.prepare_cached(
            "INSERT INTO scores (id, trace_id, name, value, label, comment, source, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![score.id, score.trace_id, score.name, score.value, score.label, score.comment, score.source, score.created_ms])
        })
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The scores of these traces, oldest first.
    pub fn scores(&self, trace_ids: &[&str]) -> Result<Vec<Score>> {
        if trace_ids.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let marks = (1..=trace_ids.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, trace_id, name, value, label, comment, source, created_ms FROM scores WHERE trace_id IN ({marks}) ORDER BY created_ms, rowid"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(trace_ids), |row| {
                Ok(Score {
                    id: row.get(0)?,
                    trace_id: row.get(1)?,
                    name: row.get(2)?,
                    value: row.get(3)?,
                    label: row.get(4)?,
                    comment: row.get(5)?,
                    source: row.get(6)?,
                    created_ms: row.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// A cached answer for the request hashed to `key`.
    pub fn cached_response(&self, key: &str) -> Result<Option<String>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.prepare_cached("SELECT response FROM eval_cache WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// The cached answers of these keys (those that have one), read in a few queries.
    pub fn cached_responses(&self, keys: &[String]) -> Result<std::collections::HashMap<String, String>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut found = std::collections::HashMap::new();
        for chunk in keys.chunks(500) {
            let marks = (1..=chunk.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
            let mut stmt = conn.prepare(&format!("SELECT key, response FROM eval_cache WHERE key IN ({marks})")).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(chunk), |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (key, response) = row.map_err(|e| self.err(e))?;
                found.insert(key, response);
            }
        }
        Ok(found)
    }

    /// Caches a successful answer (errors are never cached: the caller does not call this).
    pub fn cache_response(&self, key: &str, response: &str) -> Result<()> {
        self.cache_responses(&[(key.to_string(), response.to_string())])
    }

    /// Caches answers in one transaction.
    pub fn cache_responses(&self, entries: &[(String, String)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO eval_cache (key, response, created_ms) VALUES (?1, ?2, ?3)")
                .map_err(|e| self.err(e))?;
            let now = keel_core::now_ms();
            for (key, response) in entries {
                stmt.execute(params![key, response, now]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("keel-evals-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir.join("s.db")).unwrap(), dir)
    }

    fn row(q: &str) -> DatasetRow {
        DatasetRow { input: json!({"q": q}), expected: Some(json!("a")), metadata: json!({}), trace_id: None }
    }

    #[test]
    fn dataset_versions_are_immutable_and_pinned() {
        let (store, dir) = store("datasets");
        assert_eq!(store.push_dataset("qa", &[row("one"), row("two")], "first", Change::Append).unwrap(), 1);
        assert_eq!(store.push_dataset("qa", &[row("three")], "more", Change::Append).unwrap(), 2);
        assert_eq!(store.push_dataset("qa", &[row("only")], "reset", Change::Replace).unwrap(), 3);
        let (v1, rows1) = store.dataset("qa", Some(1)).unwrap();
        assert_eq!((v1.rows, rows1.len()), (2, 2));
        let (_, rows2) = store.dataset("qa", Some(2)).unwrap();
        assert_eq!(rows2.iter().map(|r| r.input["q"].as_str().unwrap()).collect::<Vec<_>>(), ["one", "two", "three"]);
        let (latest, rows3) = store.dataset("qa", None).unwrap();
        assert_eq!((latest.version, rows3.len()), (3, 1));
        assert!(matches!(store.dataset("qa", Some(9)), Err(Error::NotFound(text)) if text.contains("1 to 3")));
        assert!(matches!(store.dataset("nope", None), Err(Error::NotFound(text)) if text.contains("`nope`")));
        assert!(store.push_dataset("a b", &[], "", Change::Append).is_err());
        assert_eq!(store.list_datasets().unwrap().iter().map(|d| (d.name.as_str(), d.version)).collect::<Vec<_>>(), [("qa", 3)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn eval_results_survive_and_runs_resume_by_key() {
        let (store, dir) = store("runs");
        let run = EvalRunRecord {
            id: "r1".into(),
            name: "e".into(),
            key: "k".into(),
            created_ms: 1,
            updated_ms: 1,
            status: "running".into(),
            cells: 2,
            summary: None,
        };
        store.create_eval_run(&run, "{}").unwrap();
        assert_eq!(store.eval_run_spec(&run.id).unwrap(), "{}");
        store.insert_eval_result(&EvalResult { run_id: "r1".into(), cell: "a".into(), pass: true, score: 1.0, ..EvalResult::default() }).unwrap();
        assert_eq!(store.unfinished_eval_run("k").unwrap().map(|r| r.id), Some("r1".into()));
        assert_eq!(store.eval_results("r1").unwrap().len(), 1);
        store.finish_eval_run("r1", "finished", "{}").unwrap();
        assert_eq!(store.unfinished_eval_run("k").unwrap(), None);
        assert_eq!(store.eval_run("r").unwrap().status, "finished");
        assert!(store.cached_response("x").unwrap().is_none());
        store.cache_response("x", "answer").unwrap();
        assert_eq!(store.cached_response("x").unwrap().as_deref(), Some("answer"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
