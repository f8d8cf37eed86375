//! Who may call keel: teams (which may nest under a parent, an org) and virtual keys, each
//! key stored as the SHA-256 of its secret with a short prefix for display. Every change
//! bumps one generation counter, which each replica polls to reload what it holds.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Error, Result, Store};

pub(crate) const MIGRATION: &str = "
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    parent TEXT,
    budget_usd REAL,
    budget_period TEXT,
    rpm INTEGER,
    tpm INTEGER,
    metadata TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    team TEXT NOT NULL,
    models TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    budget_usd REAL,
    budget_period TEXT,
    user_budget_usd REAL,
    user_budget_period TEXT,
    expires_ms INTEGER,
    metadata TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    rotated_to TEXT
);
CREATE TABLE access_generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO access_generation (id, value) VALUES (1, 0);
ALTER TABLE traces ADD COLUMN key_id TEXT;
ALTER TABLE traces ADD COLUMN team TEXT;
ALTER TABLE traces ADD COLUMN end_user TEXT;
CREATE INDEX traces_key ON traces (key_id, created_ms);
";

/// A spend limit over a period: `day`, `week` and `month` are calendar periods in UTC (a week
/// starts on Monday); `total` never resets.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRecord {
    pub usd: f64,
    pub period: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TeamRecord {
    pub id: String,
    /// The team (or org) this one belongs to; its budget and limits apply here too.
    pub parent: Option<String>,
    pub budget: Option<BudgetRecord>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// A JSON object.
    pub metadata: String,
    pub created_ms: i64,
}

/// A virtual key as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// The secret's first characters, for lists and logs (`sk-keel-AbC123`).
    pub prefix: String,
    /// The SHA-256 of the whole secret, in hex.
    pub hash: String,
    pub team: String,
    /// The model aliases the key may call; empty: every alias.
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget: Option<BudgetRecord>,
    /// What each end user (the request's `user`) may spend through this key.
    pub user_budget: Option<BudgetRecord>,
    pub expires_ms: Option<i64>,
    /// A JSON object.
    pub metadata: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    /// The key that replaced this one when it was rotated.
    pub rotated_to: Option<String>,
}

fn budget(usd: Option<f64>, period: Option<String>) -> Option<BudgetRecord> {
    usd.map(|usd| BudgetRecord { usd, period: period.unwrap_or_else(|| "total".into()) })
}

const TEAM_COLUMNS: &str = "id, parent, budget_usd, budget_period, rpm, tpm, metadata, created_ms";

fn team_row(row: &Row) -> rusqlite::Result<TeamRecord> {
    Ok(TeamRecord {
        id: row.get(0)?,
        parent: row.get(1)?,
        budget: budget(row.get(2)?, row.get(3)?),
        rpm: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        tpm: row.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        metadata: row.get(6)?,
        created_ms: row.get(7)?,
    })
}

const KEY_COLUMNS: &str = "id, name, prefix, hash, team, models, rpm, tpm, budget_usd, budget_period, user_budget_usd,
     user_budget_period, expires_ms, metadata, created_ms, revoked_ms, rotated_to";

fn key_row(row: &Row) -> rusqlite::Result<KeyRecord> {
    let models: String = row.get(5)?;
    Ok(KeyRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        prefix: row.get(2)?,
        hash: row.get(3)?,
        team: row.get(4)?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        rpm: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        tpm: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        budget: budget(row.get(8)?, row.get(9)?),
        user_budget: budget(row.get(10)?, row.get(11)?),
        expires_ms: row.get(12)?,
        metadata: row.get(13)?,
        created_ms: row.get(14)?,
        revoked_ms: row.get(15)?,
        rotated_to: row.get(16)?,
    })
}

fn bump(tx: &rusqlite::Transaction) -> rusqlite::Result<usize> {
    tx.execute("UPDATE access_generation SET value = value + 1 WHERE id = 1", [])
}

impl Store {
    /// The counter every change to teams or keys moves; a replica reloads when it differs.
    pub fn access_generation(&self) -> Result<i64> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.prepare_cached("SELECT value FROM access_generation WHERE id = 1")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(|e| self.err(e))
    }

    /// Creates a team, or replaces the settings of the one with this id.
    pub fn put_team(&self, team: &TeamRecord) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        if let Some(parent) = &team.parent {
            let mut at = Some(parent.clone());
            while let Some(id) = at {
                if id == team.id {
                    return Err(Error::Invalid(format!("team {} cannot sit under {parent}: {parent} is already under it", team.id)));
                }
                at = tx
                    .query_row("SELECT parent FROM teams WHERE id = ?1", [&id], |row| row.get::<_, Option<String>>(0))
                    .optional()
                    .map_err(|e| self.err(e))?
                    .ok_or_else(|| Error::NotFound(format!("no team {id}")))?;
            }
        }
        let b = team.budget.as_ref();
        tx.execute(
            "INSERT INTO teams (id, parent, budget_usd, budget_period, rpm, tpm, metadata, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET parent = ?2, budget_usd = ?3, budget_period = ?4, rpm = ?5, tpm = ?6, metadata = ?7",
            params![
                team.id,
                team.parent,
                b.map(|b| b.usd),
                b.map(|b| &b.period),
                team.rpm.map(|v| v as i64),
                team.tpm.map(|v| v as i64),
                team.metadata,
                team.created_ms
            ],
        )
        .map_err(|e| self.err(e))?;
        bump(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn teams(&self) -> Result<Vec<TeamRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn.prepare(&format!("SELECT {TEAM_COLUMNS} FROM teams ORDER BY id")).map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], team_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    pub fn team(&self, id: &str) -> Result<TeamRecord> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.query_row(&format!("SELECT {TEAM_COLUMNS} FROM teams WHERE id = ?1"), [id], team_row)
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| Error::NotFound(format!("no team {id}")))
    }

    /// Deletes a team that no key and no other team belongs to.
    pub fn delete_team(&self, id: &str) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let keys: i64 = tx
            .query_row("SELECT COUNT(*) FROM api_keys WHERE team = ?1 AND revoked_ms IS NULL", [id], |row| row.get(0))
            .map_err(|e| self.err(e))?;
        let teams: i64 = tx.query_row("SELECT COUNT(*) FROM teams WHERE parent = ?1", [id], |row| row.get(0)).map_err(|e| self.err(e))?;
        if keys > 0 || teams > 0 {
            return Err(Error::Invalid(format!("team {id} still has {keys} live keys and {teams} teams under it")));
        }
        if tx.execute("DELETE FROM teams WHERE id = ?1", [id]).map_err(|e| self.err(e))? == 0 {
            return Err(Error::NotFound(format!("no team {id}")));
        }
        bump(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Stores a new key; its team must exist.
    pub fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        self.team(&key.team)?;
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        insert_key(&tx, key).map_err(|e| self.err(e))?;
        bump(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Every key (of `team`, when given), newest first, revoked ones included.
    pub fn keys(&self, team: Option<&str>) -> Result<Vec<KeyRecord>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR team = ?1 ORDER BY created_ms DESC, id DESC"))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([team], key_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// The key with this id, or whose prefix this is.
    pub fn key(&self, id_or_prefix: &str) -> Result<KeyRecord> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.query_row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1 OR prefix = ?1"), [id_or_prefix], key_row)
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| Error::NotFound(format!("no key {id_or_prefix}")))
    }

    /// Revokes a key at once (every replica stops taking it at its next reload).
    pub fn revoke_key(&self, id: &str) -> Result<KeyRecord> {
        let key = self.key(id)?;
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute("UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1", params![key.id, keel_core::now_ms()])
            .map_err(|e| self.err(e))?;
        bump(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(conn);
        self.key(&key.id)
    }

    /// Stores `new` in place of `old`, which keeps working until `old_expires_ms` (the grace
    /// period) and then stops.
    pub fn rotate_key(&self, old: &str, new: &KeyRecord, old_expires_ms: i64) -> Result<()> {
        let old = self.key(old)?;
        if old.revoked_ms.is_some() {
            return Err(Error::Invalid(format!("key {} is revoked; create a new one", old.id)));
        }
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        insert_key(&tx, new).map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE api_keys SET rotated_to = ?2, expires_ms = MIN(COALESCE(expires_ms, ?3), ?3) WHERE id = ?1",
            params![old.id, new.id, old_expires_ms],
        )
        .map_err(|e| self.err(e))?;
        bump(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }
}

fn insert_key(tx: &rusqlite::Transaction, key: &KeyRecord) -> rusqlite::Result<()> {
    let b = key.budget.as_ref();
    let u = key.user_budget.as_ref();
    tx.execute(
        &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
        params![
            key.id,
            key.name,
            key.prefix,
            key.hash,
            key.team,
            serde_json::to_string(&key.models).unwrap_or_else(|_| "[]".into()),
            key.rpm.map(|v| v as i64),
            key.tpm.map(|v| v as i64),
            b.map(|b| b.usd),
            b.map(|b| &b.period),
            u.map(|b| b.usd),
            u.map(|b| &b.period),
            key.expires_ms,
            key.metadata,
            key.created_ms,
            key.revoked_ms,
            key.rotated_to
        ],
    )?;
    Ok(())
}

impl Store {
    /// What a budget's scope spent (USD, from traces) since `since_ms`: one key; a team with
    /// every team under it; or one end user of a key.
    pub fn spend_since(&self, key: Option<&str>, team: Option<&str>, user: Option<&str>, since_ms: i64) -> Result<f64> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sql = if team.is_some() {
            "WITH RECURSIVE sub(id) AS (SELECT ?2 UNION SELECT t.id FROM teams t JOIN sub ON t.parent = sub.id)
             SELECT COALESCE(SUM(cost_usd), 0) FROM traces WHERE team IN (SELECT id FROM sub) AND created_ms >= ?4"
        } else {
            "SELECT COALESCE(SUM(cost_usd), 0) FROM traces WHERE key_id = ?1 AND (?3 IS NULL OR end_user = ?3) AND created_ms >= ?4"
        };
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.query_row(params![key, team, user, since_ms], |row| row.get(0)))
            .map_err(|e| self.err(e))
    }
}

/// One line of a spend report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpendLine {
    /// The key id, team, model alias or day (`YYYY-MM-DD`, UTC) it sums.
    pub group: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub usd: f64,
}

impl Store {
    /// What calls since `since_ms` spent, summed by `key`, `team`, `model` (alias) or `day`,
    /// dearest first (days: newest first).
    pub fn spend(&self, by: &str, since_ms: i64) -> Result<Vec<SpendLine>> {
        let group = match by {
            "key" => "COALESCE(key_id, '(no key)')",
            "team" => "COALESCE(team, '(no team)')",
            "model" => "alias",
            "day" => "strftime('%Y-%m-%d', created_ms / 1000, 'unixepoch')",
            other => return Err(Error::Invalid(format!("cannot sum spend by `{other}`: use key, team, model or day"))),
        };
        let order = if by == "day" { "g DESC" } else { "usd DESC, g" };
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {group} AS g, COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
                 COALESCE(SUM(cost_usd), 0) AS usd FROM traces WHERE created_ms >= ?1 GROUP BY g ORDER BY {order}"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([since_ms], |row| {
                Ok(SpendLine {
                    group: row.get(0)?,
                    requests: row.get::<_, i64>(1)? as u64,
                    input_tokens: row.get::<_, i64>(2)? as u64,
                    output_tokens: row.get::<_, i64>(3)? as u64,
                    usd: row.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}
