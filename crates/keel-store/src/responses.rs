//! The Responses API's stored responses: each one's own input items, its output items and
//! the response object as it was returned, with the response it continued, so a
//! `previous_response_id` chain can be walked back to its start.

use rusqlite::{OptionalExtension, params};

use crate::{Result, Store};

/// One stored response. `input` and `output` are JSON arrays of items, `body` the response
/// object; all three are kept as the client saw them (never redacted: they are the
/// conversation a later request continues, not an observation of it).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    pub created_ms: i64,
    pub previous_id: Option<String>,
    pub input: String,
    pub output: String,
    pub body: String,
}

impl Store {
    /// Saves a response, or replaces the one with the same id.
    pub fn put_response(&self, response: &StoredResponse) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.prepare_cached(
            "INSERT OR REPLACE INTO responses (id, created_ms, previous_id, input, output, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                response.id,
                response.created_ms,
                response.previous_id,
                response.input,
                response.output,
                response.body
            ])
        })
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn response(&self, id: &str) -> Result<Option<StoredResponse>> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.prepare_cached("SELECT id, created_ms, previous_id, input, output, body FROM responses WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([id], |row| {
                    Ok(StoredResponse {
                        id: row.get(0)?,
                        created_ms: row.get(1)?,
                        previous_id: row.get(2)?,
                        input: row.get(3)?,
                        output: row.get(4)?,
                        body: row.get(5)?,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Deletes a response; false when there was none. Responses that continued it keep their
    /// own items, but their chain now ends here.
    pub fn delete_response(&self, id: &str) -> Result<bool> {
        let conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = conn.execute("DELETE FROM responses WHERE id = ?1", [id]).map_err(|e| self.err(e))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::StoredResponse;
    use crate::Store;

    #[test]
    fn stores_finds_and_deletes() {
        let dir = std::env::temp_dir().join(format!("keel-store-responses-{}", std::process::id()));
        let store = Store::open(&dir.join("t.db")).unwrap();
        let response = StoredResponse {
            id: "resp_1".into(),
            created_ms: 5,
            previous_id: Some("resp_0".into()),
            input: "[]".into(),
            output: r#"[{"type":"message"}]"#.into(),
            body: "{}".into(),
        };
        store.put_response(&response).unwrap();
        assert_eq!(store.response("resp_1").unwrap(), Some(response));
        assert_eq!(store.response("resp_2").unwrap(), None);
        assert!(store.delete_response("resp_1").unwrap());
        assert!(!store.delete_response("resp_1").unwrap());
        assert_eq!(store.response("resp_1").unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
