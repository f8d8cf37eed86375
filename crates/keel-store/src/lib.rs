//! keel's embedded store: one SQLite file in WAL mode holding traces, agent runs, memories
//! and the Responses API's stored responses, and the batching writer that keeps trace writes
//! off the request path.

mod access;
mod evals;
mod memory;
mod prompts;
mod responses;
mod runs;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, params};
use serde::Serialize;

pub use access::{BudgetRecord, KeyRecord, SpendLine, TeamRecord};
pub use evals::{Change, DatasetRow, DatasetVersion, EvalResult, EvalRunRecord, Score};
pub use memory::MemoryRecord;
pub use prompts::{LATEST, PromptSummary, PromptVersion, Selector};
pub use responses::StoredResponse;
pub use runs::{RunRecord, SpanRecord, StepRecord, CHECKPOINT_FORMAT};
pub use writer::{TraceSink, TraceWriter};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("store {path}: could not create its folder: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("store {path} was written by a newer keel (schema {found}, this keel knows up to {known}); upgrade keel")]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    #[error("the trace writer has stopped")]
    WriterStopped,
    #[error("run {id} was checkpointed in format {found}, which this keel cannot read (it reads {oldest} to {known}); {hint}")]
    CheckpointFormat { id: String, found: i64, oldest: i64, known: i64, hint: &'static str },
    #[error("no run {0}")]
    NoRun(String),
    #[error("no memory {0}")]
    NoMemory(String),
    /// A prompt, version or label that does not exist; the text names it.
    #[error("{0}")]
    NotFound(String),
    /// A value the store refuses (a reserved or malformed label); the text says why.
    #[error("{0}")]
    Invalid(String),
}

/// The schema version this keel writes; migrations run from any older one.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATIONS: &[&str] = &["
CREATE TABLE traces (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    alias TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    overhead_us INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_usd REAL,
    finish_reason TEXT,
    error TEXT,
    request_body TEXT,
    response_body TEXT
);
CREATE INDEX traces_created ON traces (created_ms);
", "
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    reason TEXT,
    definition TEXT NOT NULL,
    format INTEGER NOT NULL
);
CREATE INDEX runs_created ON runs (created_ms);
CREATE TABLE run_steps (
    run_id TEXT NOT NULL REFERENCES runs (id),
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
", "
CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    operation TEXT NOT NULL,
    run_id TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_run ON spans (run_id);
", "
CREATE TABLE memories (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    user_id TEXT,
    text TEXT NOT NULL,
    importance REAL NOT NULL,
    embedding BLOB NOT NULL,
    model TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    used_ms INTEGER NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    run_id TEXT
);
CREATE INDEX memories_agent ON memories (agent);
CREATE INDEX memories_user ON memories (user_id);
", "
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until INTEGER;
", "
ALTER TABLE memories ADD COLUMN label TEXT;
", "
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    previous_id TEXT,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    body TEXT NOT NULL
);
", "
CREATE TABLE prompts (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    message TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE prompt_labels (
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (name, label)
);
CREATE TABLE prompt_splits (
    name TEXT PRIMARY KEY,
    arms TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
ALTER TABLE traces ADD COLUMN prompt_name TEXT;
ALTER TABLE traces ADD COLUMN prompt_version INTEGER;
ALTER TABLE traces ADD COLUMN prompt_arm TEXT;
CREATE INDEX traces_prompt ON traces (prompt_name, prompt_version);
", "
CREATE TABLE datasets (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    message TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE dataset_rows (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    input TEXT NOT NULL,
    expected TEXT,
    metadata TEXT NOT NULL,
    trace_id TEXT,
    PRIMARY KEY (name, version, idx)
);
CREATE TABLE eval_runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    cells INTEGER NOT NULL,
    summary TEXT
);
CREATE INDEX eval_runs_key ON eval_runs (key);
CREATE TABLE eval_results (
    run_id TEXT NOT NULL,
    cell TEXT NOT NULL,
    prompt TEXT NOT NULL,
    target TEXT NOT NULL,
    row_idx INTEGER NOT NULL,
    repeat INTEGER NOT NULL,
    vars TEXT NOT NULL,
    output TEXT,
    error TEXT,
    pass INTEGER NOT NULL,
    score REAL NOT NULL,
    grades TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL,
    cached INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, cell)
);
CREATE TABLE eval_cache (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE scores (
    id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    label TEXT,
    comment TEXT,
    source TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX scores_trace ON scores (trace_id, name);
", "
-- An eval run's spec (megabytes for a large dataset) in a table of its own: a row that held
-- it was rewritten whole, overflow pages and all, each time the run's progress was stored.
CREATE TABLE eval_specs (
    run_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
INSERT INTO eval_specs (run_id, spec) SELECT id, spec FROM eval_runs;
ALTER TABLE eval_runs DROP COLUMN spec;
", access::MIGRATION];

/// One model call as keel saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Trace {
    pub id: String,
    pub created_ms: i64,
    /// `chat.completions`, `messages` or `embeddings`.
    pub endpoint: String,
    pub alias: String,
    pub provider: String,
    pub model: String,
    pub status: u16,
    pub stream: bool,
    pub attempts: u32,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub overhead_us: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_usd: Option<f64>,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    /// The registry prompt the request was rendered from, its version and A/B arm.
    pub prompt_name: Option<String>,
    pub prompt_version: Option<u32>,
    pub prompt_arm: Option<String>,
    /// The virtual key the call came with (its id, never the key), its team, and the
    /// request's end user (`user`).
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub end_user: Option<String>,
}

/// Which traces a listing or a copy into a dataset takes; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    /// The alias the client asked for, or the upstream model that answered.
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub prompt_version: Option<u32>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// `Some(true)`: successful calls only; `Some(false)`: failed ones only.
    pub ok: Option<bool>,
    /// Text that the request or the response body contains.
    pub search: Option<String>,
    /// Only traces with a score of this name at least this value (feedback or online evals).
    pub min_score: Option<(String, f64)>,
    /// Only traces that carry a score (of any name).
    pub scored: bool,
    pub limit: usize,
}

/// Rewrites a trace body before it is stored (PII redaction, which the binary plugs in from
/// keel-guard); it runs on the writer's thread, never on a request's.
pub type Redactor = fn(&str) -> String;

pub struct Store {
    path: PathBuf,
    pub(crate) conn: Mutex<Connection>,
    /// Trace bodies go through this before they are written.
    redactor: std::sync::RwLock<Option<Redactor>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let err = |source| Error::Sqlite { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| Error::Folder { path: path.to_path_buf(), source })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        // Fewer, larger checkpoints: the trace writer commits often, and each checkpoint ends
        // in fsyncs, which on a virtual disk stall the whole machine (requests in flight
        // included) for a while whatever their size. SQLite's default of 1000 pages tripled
        // the stalls' share of `keel bench gateway`'s latency on the development VM.
        conn.pragma_update(None, "wal_autocheckpoint", 8192).map_err(err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(Error::NewerSchema { path: path.to_path_buf(), found: version, known: SCHEMA_VERSION });
        }
        for (idx, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(err)?;
            tx.execute_batch(migration).map_err(err)?;
            tx.pragma_update(None, "user_version", idx as i64 + 1).map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(Store { path: path.to_path_buf(), conn: Mutex::new(conn), redactor: std::sync::RwLock::new(None) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite { path: self.path.clone(), source }
    }

    /// Passes the bodies of traces written from now on through `redactor` (`[store]
    /// redact_pii` sets keel-guard's PII redaction); `None` stores them as they are.
    pub fn set_redactor(&self, redactor: Option<Redactor>) {
        *self.redactor.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = redactor;
    }

    /// Writes traces in one transaction.
    pub fn insert_traces(&self, traces: &[Trace]) -> Result<()> {
        let redactor = *self.redactor.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        fn body(b: &Option<String>, redactor: Option<Redactor>) -> Option<std::borrow::Cow<'_, str>> {
            let b = b.as_deref()?;
            Some(match redactor {
                Some(redact) => std::borrow::Cow::Owned(redact(b)),
                None => std::borrow::Cow::Borrowed(b),
            })
        }
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO traces (id, created_ms, endpoint, alias, provider, model, status, stream, attempts,
                     latency_ms, ttft_ms, overhead_us, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd,
                     finish_reason, error, request_body, response_body, prompt_name, prompt_version, prompt_arm, key_id, team, end_user)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21,
                     ?22, ?23, ?24, ?25, ?26, ?27)",
                )
                .map_err(|e| self.err(e))?;
            for t in traces {
                stmt.execute(params![
                    t.id,
                    t.created_ms,
                    t.endpoint,
                    t.alias,
                    t.provider,
                    t.model,
                    t.status,
                    t.stream,
                    t.attempts,
                    t.latency_ms,
                    t.ttft_ms,
                    t.overhead_us as i64,
                    t.input_tokens as i64,
                    t.output_tokens as i64,
                    t.cached_tokens as i64,
                    t.reasoning_tokens as i64,
                    t.cost_usd,
                    t.finish_reason,
                    t.error,
                    body(&t.request_body, redactor),
                    body(&t.response_body, redactor),
                    t.prompt_name,
                    t.prompt_version,
                    t.prompt_arm,
                    t.key_id,
                    t.team,
                    t.end_user,
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The most recent traces, newest first.
    pub fn recent_traces(&self, limit: usize) -> Result<Vec<Trace>> {
        self.query_traces("ORDER BY created_ms DESC, rowid DESC LIMIT ?1", [limit.min(i64::MAX as usize) as i64])
    }

    pub fn trace(&self, id: &str) -> Result<Option<Trace>> {
        Ok(self.query_traces("WHERE id = ?1", [id])?.into_iter().next())
    }

    /// The traces `filter` selects, newest first.
    pub fn find_traces(&self, filter: &TraceFilter) -> Result<Vec<Trace>> {
        let mut clauses = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        use rusqlite::types::Value as V;
        // Each `?` of a clause is its one value's numbered parameter.
        fn add(clauses: &mut Vec<String>, values: &mut Vec<V>, clause: &str, value: V) {
            values.push(value);
            clauses.push(clause.replace('?', &format!("?{}", values.len())));
        }
        if let Some(model) = &filter.model {
            add(&mut clauses, &mut values, "(alias = ? OR model = ?)", V::Text(model.clone()));
        }
        if let Some(name) = &filter.prompt {
            add(&mut clauses, &mut values, "prompt_name = ?", V::Text(name.clone()));
        }
        if let Some(version) = filter.prompt_version {
            add(&mut clauses, &mut values, "prompt_version = ?", V::Integer(i64::from(version)));
        }
        if let Some(since) = filter.since_ms {
            add(&mut clauses, &mut values, "created_ms >= ?", V::Integer(since));
        }
        if let Some(until) = filter.until_ms {
            add(&mut clauses, &mut values, "created_ms < ?", V::Integer(until));
        }
        match filter.ok {
            Some(true) => clauses.push("status < 400 AND error IS NULL".into()),
            Some(false) => clauses.push("(status >= 400 OR error IS NOT NULL)".into()),
            None => {}
        }
        if let Some((name, min)) = &filter.min_score {
            values.push(V::Text(name.clone()));
            values.push(V::Real(*min));
            let (n, m) = (values.len() - 1, values.len());
            clauses.push(format!("id IN (SELECT trace_id FROM scores WHERE name = ?{n} AND value >= ?{m})"));
        }
        if filter.scored {
            clauses.push("id IN (SELECT trace_id FROM scores)".into());
        }
        if let Some(text) = &filter.search {
            let pattern = format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
            add(&mut clauses, &mut values, "(request_body LIKE ? ESCAPE '\\' OR response_body LIKE ? ESCAPE '\\')", V::Text(pattern));
        }
        let mut tail = String::new();
        if !clauses.is_empty() {
            tail = format!("WHERE {}", clauses.join(" AND "));
        }
        values.push(V::Integer(filter.limit.min(i64::MAX as usize) as i64));
        tail.push_str(&format!(" ORDER BY created_ms DESC, rowid DESC LIMIT ?{}", values.len()));
        self.query_traces(&tail, rusqlite::params_from_iter(values))
    }

    fn query_traces(&self, tail: &str, params: impl rusqlite::Params) -> Result<Vec<Trace>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sql = format!(
            "SELECT id, created_ms, endpoint, alias, provider, model, status, stream, attempts, latency_ms, ttft_ms,
             overhead_us, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_usd, finish_reason, error,
             request_body, response_body, prompt_name, prompt_version, prompt_arm, key_id, team, end_user FROM traces {tail}"
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, |row| {
                Ok(Trace {
                    id: row.get(0)?,
                    created_ms: row.get(1)?,
                    endpoint: row.get(2)?,
                    alias: row.get(3)?,
                    provider: row.get(4)?,
                    model: row.get(5)?,
                    status: row.get(6)?,
                    stream: row.get(7)?,
                    attempts: row.get(8)?,
                    latency_ms: row.get(9)?,
                    ttft_ms: row.get(10)?,
                    overhead_us: row.get::<_, i64>(11)? as u64,
                    input_tokens: row.get::<_, i64>(12)? as u64,
                    output_tokens: row.get::<_, i64>(13)? as u64,
                    cached_tokens: row.get::<_, i64>(14)? as u64,
                    reasoning_tokens: row.get::<_, i64>(15)? as u64,
                    cost_usd: row.get(16)?,
                    finish_reason: row.get(17)?,
                    error: row.get(18)?,
                    request_body: row.get(19)?,
                    response_body: row.get(20)?,
                    prompt_name: row.get(21)?,
                    prompt_version: row.get(22)?,
                    prompt_arm: row.get(23)?,
                    key_id: row.get(24)?,
                    team: row.get(25)?,
                    end_user: row.get(26)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub fn count_traces(&self) -> Result<u64> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let n: i64 = conn.query_row("SELECT count(*) FROM traces", [], |row| row.get(0)).map_err(|e| self.err(e))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::{Store, Trace};

    #[test]
    fn round_trips_and_refuses_newer_schema() {
        let dir = std::env::temp_dir().join(format!("keel-store-test-{}", std::process::id()));
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let store = Store::open(&path).unwrap();
        let trace = Trace { id: "a".into(), created_ms: 1, alias: "fast".into(), status: 200, cost_usd: Some(0.5), ..Trace::default() };
        store.insert_traces(std::slice::from_ref(&trace)).unwrap();
        assert_eq!(store.recent_traces(10).unwrap(), vec![trace.clone()]);
        assert_eq!(store.trace("a").unwrap(), Some(trace));
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("newer keel (schema 99"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
