//! Long-term memory: facts an agent keeps across runs, embedded through keel's gateway and
//! ranked by relevance to the request, recency of use and importance (after the Generative
//! Agents retrieval score). A fact is about a user (shared by every agent serving that user)
//! or the agent's own. Saving a fact close to one already kept updates it instead of adding
//! a near-duplicate.

use keel_core::now_ms;
use keel_store::{MemoryRecord, Store};
use serde::Serialize;
use serde_json::json;

use crate::definition::MemorySpec;
use crate::model::ChatModel;

/// The tools `[memory]` gives an agent.
pub const TOOLS: &[&str] = &["memory_save", "memory_search"];

/// Two facts this similar are one fact.
const SAME_FACT: f64 = 0.92;
const DAY_MS: f64 = 86_400_000.0;

/// A recalled fact with its scores.
#[derive(Debug, Clone, Serialize)]
pub struct Recalled {
    #[serde(flatten)]
    pub memory: MemoryRecord,
    pub relevance: f64,
    pub recency: f64,
    pub score: f64,
}

/// One agent's (and one user's) memory.
pub struct Memory<'a> {
    pub store: &'a Store,
    pub model: &'a dyn ChatModel,
    pub spec: &'a MemorySpec,
    pub agent: &'a str,
    pub user: Option<&'a str>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

impl Memory<'_> {
    async fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let mut vectors = self.model.embed(&self.spec.embedding_model, &[text.to_string()]).await.map_err(|e| {
            format!("memory: embedding with `{}` failed: {e}", self.spec.embedding_model)
        })?;
        vectors.pop().ok_or_else(|| "memory: the embedding model returned no vector".to_string())
    }

    /// Keeps a fact (about the user when `about_user` and a user is known); a fact close to
    /// one already kept replaces it. Returns the fact and whether it updated an old one.
    /// `label` is where the fact came from (what the saving run had seen).
    /// Keeps a fact (or updates the one it is close to); whether it was new.
    pub async fn save(&self, text: &str, importance: f64, about_user: bool, run_id: Option<&str>, label: keel_guard::Label) -> Result<(MemoryRecord, bool), crate::Error> {
        self.save_fact(text, importance, about_user, run_id, label).await.map_err(crate::Error::Memory)
    }

    async fn save_fact(&self, text: &str, importance: f64, about_user: bool, run_id: Option<&str>, label: keel_guard::Label) -> Result<(MemoryRecord, bool), String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("memory: the fact is empty".into());
        }
        let user = if about_user { self.user } else { None };
        if about_user && user.is_none() {
            return Err(format!("memory: no user is known for this run (pass the `{}` variable); save it `about` the agent instead", self.spec.user_var));
        }
        let embedding = self.embed(text).await?;
        let now = now_ms();
        let same = self
            .store
            .memories(Some(self.agent), user, false)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|m| m.user_id.as_deref() == user && m.model == self.spec.embedding_model)
            .map(|m| (cosine(&m.embedding, &embedding), m))
            .filter(|(similarity, _)| *similarity >= SAME_FACT)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let (record, updated) = match same {
            Some((_, old)) => (
                MemoryRecord {
                    text: text.into(),
                    importance: importance.max(old.importance),
                    embedding,
                    used_ms: now,
                    run_id: run_id.map(String::from),
                    label: Some(label),
                    ..old
                },
                true,
            ),
            None => (
                MemoryRecord {
                    id: format!("mem_{}", &keel_core::time_ordered_id(now as u64, u128::from(fastrand_u64())).replace('-', "")[..20]),
                    agent: self.agent.into(),
                    user_id: user.map(String::from),
                    text: text.into(),
                    importance: importance.clamp(0.0, 1.0),
                    embedding,
                    model: self.spec.embedding_model.clone(),
                    created_ms: now,
                    used_ms: now,
                    uses: 0,
                    run_id: run_id.map(String::from),
                    label: Some(label),
                },
                false,
            ),
        };
        self.store.put_memory(&record).map_err(|e| e.to_string())?;
        Ok((record, updated))
    }

    /// The `k` facts that best fit `query`, best first: relevance (cosine), recency of use
    /// (halving every `half_life_days`) and importance, weighted 3:1:1; facts below
    /// `min_relevance` are left out. Returned facts count as used.
    /// The facts that best fit a query, ranked as an agent recalls them.
    pub async fn search(&self, query: &str, k: usize) -> Result<Vec<Recalled>, crate::Error> {
        self.find_facts(query, k).await.map_err(crate::Error::Memory)
    }

    async fn find_facts(&self, query: &str, k: usize) -> Result<Vec<Recalled>, String> {
        let candidates = self.store.memories(Some(self.agent), self.user, false).map_err(|e| e.to_string())?;
        if candidates.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let query = self.embed(query).await?;
        let now = now_ms();
        let mut scored: Vec<Recalled> = candidates
            .into_iter()
            .filter(|m| m.model == self.spec.embedding_model)
            .map(|memory| {
                let relevance = cosine(&memory.embedding, &query).max(0.0);
                let age_days = (now - memory.used_ms).max(0) as f64 / DAY_MS;
                let recency = 0.5f64.powf(age_days / self.spec.half_life_days.max(0.01));
                let score = (3.0 * relevance + recency + memory.importance) / 5.0;
                Recalled { memory, relevance, recency, score }
            })
            .filter(|r| r.relevance >= self.spec.min_relevance)
            .collect();
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        scored.truncate(k);
        let ids: Vec<String> = scored.iter().map(|r| r.memory.id.clone()).collect();
        self.store.touch_memories(&ids, now).map_err(|e| e.to_string())?;
        Ok(scored)
    }

    /// Runs `memory_save` or `memory_search` for the model; `seen` is the label of what the
    /// model had read when it called (a saved fact carries it).
    pub(crate) async fn call(&self, tool: &str, arguments: &serde_json::Value, run_id: &str, seen: &keel_guard::Label) -> Result<String, String> {
        match tool {
            "memory_save" => {
                let fact = arguments["fact"].as_str().unwrap_or_default();
                let importance = arguments["importance"].as_f64().unwrap_or(5.0).clamp(1.0, 10.0) / 10.0;
                let about_user = arguments["about"].as_str().map_or(self.user.is_some(), |a| a == "user");
                let (record, updated) = self.save_fact(fact, importance, about_user, Some(run_id), seen.clone()).await?;
                Ok(format!("{} {} ({})", if updated { "updated" } else { "saved" }, record.id, if record.user_id.is_some() { "about the user" } else { "for this agent" }))
            }
            "memory_search" => {
                let query = arguments["query"].as_str().unwrap_or_default();
                let k = arguments["k"].as_u64().unwrap_or(5).clamp(1, 50) as usize;
                let found = self.find_facts(query, k).await?;
                if found.is_empty() {
                    return Ok("nothing relevant is remembered".into());
                }
                Ok(found.iter().map(|r| format!("- {} [{}, relevance {:.2}]", r.memory.text, r.memory.id, r.relevance)).collect::<Vec<_>>().join("\n"))
            }
            other => Err(format!("`{other}` is not a memory tool")),
        }
    }
}

/// The label of recalled facts together: a fact kept before labels counts as untrusted.
pub fn recalled_label(facts: &[Recalled]) -> keel_guard::Label {
    let legacy = keel_guard::Label { sources: ["memory".to_string()].into(), trusted: false, readers: keel_guard::Readers::Public };
    facts.iter().fold(keel_guard::Label::empty(), |label, fact| label.join(fact.memory.label.as_ref().unwrap_or(&legacy)))
}

/// The memory tools' definitions for the model.
pub fn tool_defs() -> Vec<keel_core::ToolDef> {
    vec![
        keel_core::ToolDef {
            name: "memory_save".into(),
            description: Some("Remember a fact for later conversations: a preference, a decision, something learned about the user or the task. One fact per call, stated on its own.".into()),
            parameters: json!({
                "type": "object",
                "properties": {
                    "fact": {"type": "string", "description": "The fact, in one self-contained sentence"},
                    "importance": {"type": "integer", "minimum": 1, "maximum": 10, "description": "1 trivial … 10 essential"},
                    "about": {"type": "string", "enum": ["user", "agent"], "description": "A fact about the user, or knowledge of your own"}
                },
                "required": ["fact"],
                "additionalProperties": false
            }),
            strict: None,
        },
        keel_core::ToolDef {
            name: "memory_search".into(),
            description: Some("Search what you remember from earlier conversations.".into()),
            parameters: json!({
                "type": "object",
                "properties": {"query": {"type": "string"}, "k": {"type": "integer", "minimum": 1, "maximum": 50}},
                "required": ["query"],
                "additionalProperties": false
            }),
            strict: None,
        },
    ]
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i64(now_ms());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::cosine;

    #[test]
    fn cosine_is_one_for_the_same_direction_and_zero_for_mismatched_lengths() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-9);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
    }
}
