//! Long-term memory: facts an agent keeps across runs, about a user (shared by every agent
//! that serves that user) or of its own, each with its embedding, importance and when it was
//! last used. Ranking is the caller's; the store keeps and finds the candidates.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::{Error, Result, Store};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryRecord {
    pub id: String,
    pub agent: String,
    /// Set for a fact about a user; `None` for the agent's own.
    pub user_id: Option<String>,
    pub text: String,
    /// 0 to 1.
    pub importance: f64,
    #[serde(skip)]
    pub embedding: Vec<f32>,
    /// The embedding model, so a changed model is noticed instead of compared across.
    pub model: String,
    pub created_ms: i64,
    pub used_ms: i64,
    pub uses: i64,
    pub run_id: Option<String>,
    /// Where the fact came from and who may read it (the guard's label): what the run that
    /// saved it had seen. `None` for facts kept before labels, which count as untrusted.
    pub label: Option<keel_core::label::Label>,
}

fn to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

const COLUMNS: &str = "id, agent, user_id, text, importance, embedding, model, created_ms, used_ms, uses, run_id, label";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MemoryRecord> {
    let blob: Vec<u8> = row.get(5)?;
    Ok(MemoryRecord {
        id: row.get(0)?,
        agent: row.get(1)?,
        user_id: row.get(2)?,
        text: row.get(3)?,
        importance: row.get(4)?,
        embedding: from_blob(&blob),
        model: row.get(6)?,
        created_ms: row.get(7)?,
        used_ms: row.get(8)?,
        uses: row.get(9)?,
        run_id: row.get(10)?,
        label: row.get::<_, Option<String>>(11)?.and_then(|text| serde_json::from_str(&text).ok()),
    })
}

impl Store {
    /// Saves a fact, or replaces the one with the same id.
    pub fn put_memory(&self, memory: &MemoryRecord) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute(
            &format!("INSERT OR REPLACE INTO memories ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
            params![
                memory.id,
                memory.agent,
                memory.user_id,
                memory.text,
                memory.importance,
                to_blob(&memory.embedding),
                memory.model,
                memory.created_ms,
                memory.used_ms,
                memory.uses,
                memory.run_id,
                memory.label.as_ref().map(|l| serde_json::to_string(l).unwrap_or_default())
            ],
        )
        .map(drop)
        .map_err(|e| self.err(e))
    }

    pub fn memory(&self, id: &str) -> Result<Option<MemoryRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.query_row(&format!("SELECT {COLUMNS} FROM memories WHERE id = ?1"), [id], from_row).optional().map_err(|e| self.err(e))
    }

    /// What an agent may recall for a user: its own facts and the user's, newest first.
    /// With no agent, every agent's; with no user, no user's facts but for `all_users`.
    pub fn memories(&self, agent: Option<&str>, user: Option<&str>, all_users: bool) -> Result<Vec<MemoryRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM memories
                 WHERE (user_id IS NULL AND (?1 IS NULL OR agent = ?1)) OR (user_id IS NOT NULL AND (?3 OR user_id = ?2))
                 ORDER BY created_ms DESC, id DESC"
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![agent, user, all_users], from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))
    }

    /// Marks facts as used now (recency counts from the last use).
    pub fn touch_memories(&self, ids: &[String], now_ms: i64) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for id in ids {
            tx.execute("UPDATE memories SET used_ms = ?2, uses = uses + 1 WHERE id = ?1", params![id, now_ms]).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn delete_memory(&self, id: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match conn.execute("DELETE FROM memories WHERE id = ?1", [id]).map_err(|e| self.err(e))? {
            0 => Err(Error::NoMemory(id.to_string())),
            _ => Ok(()),
        }
    }
}
