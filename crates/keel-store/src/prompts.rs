//! The prompt registry's tables: immutable numbered versions per prompt name, labels that
//! point at a version (`latest` is not stored: it is always the highest version), and an
//! optional split of traffic over labels for A/B tests.

use rusqlite::{OptionalExtension, params};

use crate::{Error, Result, Store};

/// The label that moves by itself to every new version; it cannot be set by hand.
pub const LATEST: &str = "latest";

/// One version of a prompt, as pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptVersion {
    pub name: String,
    pub version: u32,
    /// The prompt's definition as JSON (template and config), as keel-eval reads it.
    pub body: String,
    pub message: String,
    pub created_ms: i64,
    /// The labels pointing at this version, `latest` included where it is the newest.
    pub labels: Vec<String>,
}

/// Which version of a prompt a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Version(u32),
    Label(String),
}

/// A prompt name with its newest version and its labels, for listings.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSummary {
    pub name: String,
    pub latest: u32,
    pub versions: u32,
    pub updated_ms: i64,
    /// (label, version), `latest` first, then by name.
    pub labels: Vec<(String, u32)>,
}

impl Store {
    /// Stores `body` as the next version of `name` and returns its number (1 for a new name).
    pub fn push_prompt(&self, name: &str, body: &str, message: &str) -> Result<u32> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let latest: Option<u32> =
            tx.query_row("SELECT MAX(version) FROM prompts WHERE name = ?1", [name], |row| row.get(0)).map_err(|e| self.err(e))?;
        let version = latest.unwrap_or(0) + 1;
        tx.execute(
            "INSERT INTO prompts (name, version, body, message, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, version, body, message, keel_core::now_ms()],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(version)
    }

    /// The version `selector` names; `None` when the prompt, the version or the label does
    /// not exist (the caller says which, see [`Store::prompt_summary`]).
    pub fn prompt(&self, name: &str, selector: &Selector) -> Result<Option<PromptVersion>> {
        let version = match selector {
            Selector::Version(version) => Some(*version),
            Selector::Label(label) => self.label_version(name, label)?,
        };
        let Some(version) = version else { return Ok(None) };
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = conn
            .prepare_cached("SELECT body, message, created_ms FROM prompts WHERE name = ?1 AND version = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![name, version], |row| {
                    Ok(PromptVersion {
                        name: name.to_string(),
                        version,
                        body: row.get(0)?,
                        message: row.get(1)?,
                        created_ms: row.get(2)?,
                        labels: Vec::new(),
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        drop(conn);
        let Some(mut found) = found else { return Ok(None) };
        found.labels = self.prompt_labels(name)?.into_iter().filter(|(_, v)| *v == version).map(|(label, _)| label).collect();
        Ok(Some(found))
    }

    fn label_version(&self, name: &str, label: &str) -> Result<Option<u32>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let query = if label == LATEST {
            conn.query_row("SELECT MAX(version) FROM prompts WHERE name = ?1", [name], |row| row.get::<_, Option<u32>>(0))
        } else {
            conn.query_row("SELECT version FROM prompt_labels WHERE name = ?1 AND label = ?2", [name, label], |row| row.get(0))
                .optional()
                .map(Option::flatten)
        };
        query.map_err(|e| self.err(e))
    }

    /// Every label of `name` with its version: `latest` first, then the others by name.
    pub fn prompt_labels(&self, name: &str) -> Result<Vec<(String, u32)>> {
        let latest = self.label_version(name, LATEST)?;
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut labels: Vec<(String, u32)> = latest.map(|v| (LATEST.to_string(), v)).into_iter().collect();
        let rows = conn
            .prepare_cached("SELECT label, version FROM prompt_labels WHERE name = ?1 ORDER BY label")
            .and_then(|mut stmt| stmt.query_map([name], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        labels.extend(rows);
        Ok(labels)
    }

    /// Points `label` of `name` at `version`, which must exist.
    pub fn set_prompt_label(&self, name: &str, label: &str, version: u32) -> Result<()> {
        if label == LATEST {
            return Err(Error::Invalid(format!("`{LATEST}` moves by itself to the newest version; it cannot be set")));
        }
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(Error::Invalid(format!("`{label}` is not a label: use letters, digits, `-`, `_` and `.`")));
        }
        if self.prompt(name, &Selector::Version(version))?.is_none() {
            return Err(Error::NotFound(format!("prompt `{name}` has no version {version}")));
        }
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute(
            "INSERT INTO prompt_labels (name, label, version, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name, label) DO UPDATE SET version = excluded.version, updated_ms = excluded.updated_ms",
            params![name, label, version, keel_core::now_ms()],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every version of `name`, newest first.
    pub fn prompt_versions(&self, name: &str) -> Result<Vec<PromptVersion>> {
        let labels = self.prompt_labels(name)?;
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.prepare_cached("SELECT version, body, message, created_ms FROM prompts WHERE name = ?1 ORDER BY version DESC")
            .and_then(|mut stmt| {
                stmt.query_map([name], |row| {
                    let version: u32 = row.get(0)?;
                    Ok(PromptVersion {
                        name: name.to_string(),
                        version,
                        body: row.get(1)?,
                        message: row.get(2)?,
                        created_ms: row.get(3)?,
                        labels: labels.iter().filter(|(_, v)| *v == version).map(|(l, _)| l.clone()).collect(),
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Every prompt name, by name.
    pub fn list_prompts(&self) -> Result<Vec<PromptSummary>> {
        let names: Vec<(String, u32, u32, i64)> = {
            let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            conn.prepare_cached("SELECT name, MAX(version), COUNT(*), MAX(created_ms) FROM prompts GROUP BY name ORDER BY name")
                .and_then(|mut stmt| stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?.collect())
                .map_err(|e| self.err(e))?
        };
        names
            .into_iter()
            .map(|(name, latest, versions, updated_ms)| {
                let labels = self.prompt_labels(&name)?;
                Ok(PromptSummary { name, latest, versions, updated_ms, labels })
            })
            .collect()
    }

    /// Sets the traffic split of `name` over labels (weights, not necessarily summing to
    /// 100); an empty split removes it.
    pub fn set_prompt_split(&self, name: &str, arms: &[(String, u32)]) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if arms.is_empty() {
            conn.execute("DELETE FROM prompt_splits WHERE name = ?1", [name]).map_err(|e| self.err(e))?;
            return Ok(());
        }
        let text = arms.iter().map(|(label, weight)| format!("{label}={weight}")).collect::<Vec<_>>().join(",");
        conn.execute(
            "INSERT INTO prompt_splits (name, arms, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET arms = excluded.arms, updated_ms = excluded.updated_ms",
            params![name, text, keel_core::now_ms()],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The traffic split of `name`, if one is set: (label, weight) in the order given.
    pub fn prompt_split(&self, name: &str) -> Result<Option<Vec<(String, u32)>>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let text: Option<String> = conn
            .query_row("SELECT arms FROM prompt_splits WHERE name = ?1", [name], |row| row.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(text.map(|text| {
            text.split(',')
                .filter_map(|arm| {
                    let (label, weight) = arm.split_once('=')?;
                    Some((label.to_string(), weight.parse().ok()?))
                })
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let dir = std::env::temp_dir().join(format!("keel-prompts-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        Store::open(&dir.join("t.db")).unwrap()
    }

    #[test]
    fn versions_are_numbered_and_labels_point_at_them() {
        let store = store();
        assert_eq!(store.push_prompt("support", "{\"v\":1}", "first").unwrap(), 1);
        assert_eq!(store.push_prompt("support", "{\"v\":2}", "second").unwrap(), 2);
        assert_eq!(store.push_prompt("other", "{}", "").unwrap(), 1);
        let latest = store.prompt("support", &Selector::Label(LATEST.into())).unwrap().unwrap();
        assert_eq!((latest.version, latest.body.as_str(), latest.labels.clone()), (2, "{\"v\":2}", vec![LATEST.to_string()]));
        assert!(store.prompt("support", &Selector::Label("production".into())).unwrap().is_none());
        store.set_prompt_label("support", "production", 1).unwrap();
        let production = store.prompt("support", &Selector::Label("production".into())).unwrap().unwrap();
        assert_eq!((production.version, production.message.as_str()), (1, "first"));
        assert!(matches!(store.set_prompt_label("support", "production", 9), Err(Error::NotFound(_))));
        assert!(matches!(store.set_prompt_label("support", LATEST, 1), Err(Error::Invalid(_))));
        assert_eq!(store.push_prompt("support", "{\"v\":3}", "third").unwrap(), 3);
        assert_eq!(store.prompt_labels("support").unwrap(), [(LATEST.to_string(), 3), ("production".to_string(), 1)]);
        let list = store.list_prompts().unwrap();
        assert_eq!(list.iter().map(|p| (p.name.as_str(), p.latest, p.versions)).collect::<Vec<_>>(), [("other", 1, 1), ("support", 3, 3)]);
        assert_eq!(store.prompt_versions("support").unwrap().iter().map(|v| v.version).collect::<Vec<_>>(), [3, 2, 1]);
        store.set_prompt_split("support", &[("production".into(), 90), ("candidate".into(), 10)]).unwrap();
        assert_eq!(store.prompt_split("support").unwrap().unwrap(), [("production".to_string(), 90), ("candidate".to_string(), 10)]);
        store.set_prompt_split("support", &[]).unwrap();
        assert!(store.prompt_split("support").unwrap().is_none());
    }
}
