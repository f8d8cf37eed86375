//! Agent runs and their checkpoints: one row per run, one row per completed step, each step
//! committed before the runtime goes on, so a killed process loses at most the step it was in.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Error, Result, Store};

/// The checkpoint format this keel writes. Older formats are migrated when read
/// ([`Store::load_run`]); newer ones are refused, never dropped.
pub const CHECKPOINT_FORMAT: i64 = 1;
const OLDEST_FORMAT: i64 = 1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub agent: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// `running`, `waiting_approval`, `completed`, `failed` or `stopped`.
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub reason: Option<String>,
    /// The agent definition the run started with (JSON), so a resume runs the same agent.
    pub definition: String,
    pub format: i64,
}

/// One span of an agent trace, after the OpenTelemetry GenAI conventions: `invoke_agent`
/// for a run (each stretch of it a process ran), `chat` for a model call, `execute_tool` for
/// a tool call. A sub-agent's spans are in its caller's trace, under the tool call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    /// `{operation} {target}`, e.g. `chat gpt-4o`, `execute_tool refund`.
    pub name: String,
    pub operation: String,
    pub run_id: String,
    pub start_ms: i64,
    pub duration_ms: f64,
    /// `ok` or `error`.
    pub status: String,
    /// The span's attributes (`gen_ai.*`, `keel.*`) as a JSON object.
    pub attributes: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub seq: i64,
    /// `model`, `tool`, `approval` or `handoff`.
    pub kind: String,
    pub created_ms: i64,
    /// The step itself, as JSON (the runtime owns its shape).
    pub data: String,
}

impl Store {
    pub fn create_run(&self, run: &RunRecord) -> Result<()> {
        self.create_leased_run(run, None, None)
    }

    /// Creates a run with its lease already held by `owner` (no second write to take it).
    pub fn create_leased_run(&self, run: &RunRecord, owner: Option<&str>, until_ms: Option<i64>) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute(
            "INSERT INTO runs (id, agent, created_ms, updated_ms, status, input, output, reason, definition, format, lease_owner, lease_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                run.id, run.agent, run.created_ms, run.updated_ms, run.status, run.input, run.output, run.reason,
                run.definition, run.format, owner, until_ms
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ends a stretch of driving a run in one write: its span recorded, its lease given back.
    pub fn close_drive(&self, run_id: &str, owner: &str, span: &SpanRecord) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        insert_span(&tx, span).map_err(|e| self.err(e))?;
        tx.execute("UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE id = ?1 AND lease_owner = ?2", params![run_id, owner])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Appends a completed step and updates the run's status in one transaction.
    pub fn append_step(&self, run_id: &str, step: &StepRecord, status: &str, span: Option<&SpanRecord>) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO run_steps (run_id, seq, kind, created_ms, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![run_id, step.seq, step.kind, step.created_ms, step.data],
        )
        .map_err(|e| self.err(e))?;
        if let Some(span) = span {
            insert_span(&tx, span).map_err(|e| self.err(e))?;
        }
        tx.execute("UPDATE runs SET status = ?2, updated_ms = ?3 WHERE id = ?1", params![run_id, status, step.created_ms])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Records a span (again, if it was recorded before: the newer one wins).
    pub fn add_span(&self, span: &SpanRecord) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        insert_span(&conn, span).map(drop).map_err(|e| self.err(e))
    }

    /// Every span of a trace, in start order.
    pub fn spans(&self, trace_id: &str) -> Result<Vec<SpanRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT trace_id, span_id, parent_id, name, operation, run_id, start_ms, duration_ms, status, attributes
                 FROM spans WHERE trace_id = ?1 ORDER BY start_ms, rowid",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([trace_id], |row| {
            Ok(SpanRecord {
                trace_id: row.get(0)?,
                span_id: row.get(1)?,
                parent_id: row.get(2)?,
                name: row.get(3)?,
                operation: row.get(4)?,
                run_id: row.get(5)?,
                start_ms: row.get(6)?,
                duration_ms: row.get(7)?,
                status: row.get(8)?,
                attributes: row.get(9)?,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| self.err(e))
    }

    /// The trace a run belongs to (a sub-agent's run is in its caller's trace).
    pub fn trace_of_run(&self, run_id: &str) -> Result<Option<String>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.query_row("SELECT trace_id FROM spans WHERE run_id = ?1 LIMIT 1", [run_id], |row| row.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Takes the lease on a run, so only one process drives it: granted when the run has
    /// no lease, its lease ran out, it is `owner`'s already, or `stale` says its holder is
    /// gone (a process that died). Returns the holder when the lease is someone else's.
    pub fn acquire_lease(&self, run_id: &str, owner: &str, now_ms: i64, until_ms: i64, stale: &dyn Fn(&str) -> bool) -> Result<Option<String>> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        let held: Option<(Option<String>, Option<i64>)> = tx
            .query_row("SELECT lease_owner, lease_until FROM runs WHERE id = ?1", [run_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((holder, until)) = held else { return Err(Error::NoRun(run_id.to_string())) };
        if let Some(holder) = holder
            && holder != owner
            && until.is_some_and(|until| until > now_ms)
            && !stale(&holder)
        {
            return Ok(Some(holder));
        }
        tx.execute("UPDATE runs SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1", params![run_id, owner, until_ms]).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(None)
    }

    /// Extends a lease `owner` holds.
    pub fn renew_lease(&self, run_id: &str, owner: &str, until_ms: i64) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute("UPDATE runs SET lease_until = ?3 WHERE id = ?1 AND lease_owner = ?2", params![run_id, owner, until_ms])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Gives a lease back.
    pub fn release_lease(&self, run_id: &str, owner: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute("UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE id = ?1 AND lease_owner = ?2", params![run_id, owner])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records how a run ended (or paused).
    pub fn set_run_status(&self, run_id: &str, status: &str, output: Option<&str>, reason: Option<&str>, now_ms: i64) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = conn
            .execute(
                "UPDATE runs SET status = ?2, output = COALESCE(?3, output), reason = ?4, updated_ms = ?5 WHERE id = ?1",
                params![run_id, status, output, reason, now_ms],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Err(Error::NoRun(run_id.to_string()));
        }
        Ok(())
    }

    /// A run and its steps in order, in the current checkpoint format.
    pub fn load_run(&self, run_id: &str) -> Result<(RunRecord, Vec<StepRecord>)> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let run = conn
            .query_row(
                "SELECT id, agent, created_ms, updated_ms, status, input, output, reason, definition, format FROM runs WHERE id = ?1",
                [run_id],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| Error::NoRun(run_id.to_string()))?;
        if run.format > CHECKPOINT_FORMAT {
            return Err(Error::CheckpointFormat {
                id: run.id,
                found: run.format,
                oldest: OLDEST_FORMAT,
                known: CHECKPOINT_FORMAT,
                hint: "it was written by a newer keel; resume it with that version",
            });
        }
        if run.format < OLDEST_FORMAT {
            return Err(Error::CheckpointFormat {
                id: run.id,
                found: run.format,
                oldest: OLDEST_FORMAT,
                known: CHECKPOINT_FORMAT,
                hint: "no migration exists from that format; the run is kept as it was and can still be listed",
            });
        }
        let mut stmt = conn
            .prepare("SELECT seq, kind, created_ms, data FROM run_steps WHERE run_id = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let steps = stmt
            .query_map([run_id], |row| Ok(StepRecord { seq: row.get(0)?, kind: row.get(1)?, created_ms: row.get(2)?, data: row.get(3)? }))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok((run, steps))
    }

    /// The most recent runs, newest first.
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT id, agent, created_ms, updated_ms, status, input, output, reason, definition, format
                 FROM runs ORDER BY created_ms DESC, id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([limit as i64], run_from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))
    }
}

fn insert_span(conn: &rusqlite::Connection, span: &SpanRecord) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT OR REPLACE INTO spans (trace_id, span_id, parent_id, name, operation, run_id, start_ms, duration_ms, status, attributes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            span.trace_id,
            span.span_id,
            span.parent_id,
            span.name,
            span.operation,
            span.run_id,
            span.start_ms,
            span.duration_ms,
            span.status,
            span.attributes
        ],
    )
}

fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: row.get(0)?,
        agent: row.get(1)?,
        created_ms: row.get(2)?,
        updated_ms: row.get(3)?,
        status: row.get(4)?,
        input: row.get(5)?,
        output: row.get(6)?,
        reason: row.get(7)?,
        definition: row.get(8)?,
        format: row.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("keel-runs-{}-{}", std::process::id(), fastrand_u64()));
        (Store::open(&dir.join("keel.db")).unwrap(), dir)
    }

    fn fastrand_u64() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }

    fn run(id: &str, format: i64) -> RunRecord {
        RunRecord {
            id: id.into(),
            agent: "a".into(),
            created_ms: 1,
            updated_ms: 1,
            status: "running".into(),
            input: "hi".into(),
            output: None,
            reason: None,
            definition: "{}".into(),
            format,
        }
    }

    #[test]
    fn steps_come_back_in_order_with_the_status() {
        let (store, dir) = store();
        store.create_run(&run("r1", CHECKPOINT_FORMAT)).unwrap();
        for seq in 0..3 {
            let step = StepRecord { seq, kind: "model".into(), created_ms: 10 + seq, data: format!("{{\"n\":{seq}}}") };
            store.append_step("r1", &step, "running", None).unwrap();
        }
        store.set_run_status("r1", "completed", Some("done"), None, 20).unwrap();
        let (record, steps) = store.load_run("r1").unwrap();
        assert_eq!(record.status, "completed");
        assert_eq!(record.output.as_deref(), Some("done"));
        assert_eq!(steps.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        // A step number is written once: a replayed step is refused, not duplicated.
        let again = StepRecord { seq: 1, kind: "tool".into(), created_ms: 30, data: "{}".into() };
        assert!(store.append_step("r1", &again, "running", None).is_err());
        assert_eq!(store.recent_runs(10).unwrap().len(), 1);
        assert!(matches!(store.load_run("nope"), Err(Error::NoRun(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn checkpoints_from_another_format_are_refused_with_a_reason() {
        let (store, dir) = store();
        store.create_run(&run("future", CHECKPOINT_FORMAT + 1)).unwrap();
        store.create_run(&run("ancient", 0)).unwrap();
        let newer = store.load_run("future").unwrap_err().to_string();
        assert!(newer.contains("format 2") && newer.contains("newer keel"), "{newer}");
        let older = store.load_run("ancient").unwrap_err().to_string();
        assert!(older.contains("format 0") && older.contains("kept as it was"), "{older}");
        // Refused, not dropped: both are still listed.
        assert_eq!(store.recent_runs(10).unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
