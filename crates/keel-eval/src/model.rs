//! How an eval reaches models: the binary plugs keel's gateway in behind [`Model`] (keel-eval
//! links no provider code), and [`Cached`] wraps it with the response cache, keyed by the
//! exact request.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use keel_store::Store;

/// A tool call the model made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallMade {
    pub name: String,
    /// Its arguments, parsed (a text that is not JSON stays a JSON string).
    pub arguments: Value,
}

impl From<&keel_core::ToolCall> for CallMade {
    /// A call as the model made it, its arguments parsed where they are JSON.
    fn from(call: &keel_core::ToolCall) -> CallMade {
        CallMade {
            name: call.name.clone(),
            arguments: serde_json::from_str(&call.arguments).unwrap_or_else(|_| Value::String(call.arguments.clone())),
        }
    }
}

/// What a target answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<CallMade>,
    /// The upstream model that answered.
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub finish_reason: String,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    /// What the answer was written from (a RAG target's retrieved passages), for the
    /// `context-faithfulness` judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Served from the response cache (not stored in it).
    #[serde(default, skip_serializing)]
    pub cached: bool,
}

pub trait Model: Send + Sync {
    /// Sends an OpenAI Chat Completions body (its `model` is a keel alias) and returns the
    /// answer; the error is text for the eval's report.
    fn chat<'a>(&'a self, body: &'a Value) -> BoxFuture<'a, Result<Answer, String>>;
    /// Embeds `texts` through embedding alias `alias`.
    fn embed<'a>(&'a self, alias: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>>;
    /// Runs the agent defined in `file` on `input` with `vars` through keel's agent runtime;
    /// the answer carries the run's final output and every tool call it made, in order.
    fn agent<'a>(&'a self, file: &'a str, input: &'a str, vars: &'a serde_json::Map<String, Value>) -> BoxFuture<'a, Result<Answer, String>> {
        let _ = (input, vars);
        Box::pin(async move { Err(format!("agent target {file}: this caller runs no agents (`keel eval run` does)")) })
    }
    /// Answers `question` from RAG collection `collection` with writer alias `model` (keel's
    /// `rag ask`); the answer's `context` holds the passages it was given.
    fn rag<'a>(&'a self, collection: &'a str, model: &'a str, question: &'a str) -> BoxFuture<'a, Result<Answer, String>> {
        let _ = (model, question);
        Box::pin(async move { Err(format!("RAG target {collection}: this caller has no collections (`keel eval run` does)")) })
    }
}

/// The cache key of a request: a SHA-256 of its exact JSON.
pub fn request_key(body: &Value) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    keel_core::hex(&digest)
}

/// A [`Model`] whose successful chat answers are kept in the store's response cache; errors
/// are never cached. `enabled: false` (`--no-cache`) neither reads nor writes it. Answers
/// can be read ahead in bulk ([`Cached::preload`]); new ones are written in batches
/// ([`Cached::flush`], and when it is dropped).
pub struct Cached<'a> {
    inner: &'a dyn Model,
    store: &'a Store,
    enabled: bool,
    /// Answers read ahead, each taken out when its cell uses it.
    preloaded: std::sync::Mutex<std::collections::HashMap<String, String>>,
    pending: std::sync::Mutex<Vec<(String, String)>>,
}

impl<'a> Cached<'a> {
    pub fn new(inner: &'a dyn Model, store: &'a Store, enabled: bool) -> Cached<'a> {
        Cached { inner, store, enabled, preloaded: Default::default(), pending: Default::default() }
    }

    fn key(body: &Value, sample: u32) -> String {
        let mut key = request_key(body);
        if sample > 0 {
            key.push_str(&format!("#{sample}"));
        }
        key
    }

    /// Reads the cached answers of these requests (body, sample) in a few queries and returns
    /// each request's cache key (None with the cache off), for [`Cached::preloaded`] to answer
    /// without rendering the request again.
    pub(crate) fn preload(&mut self, requests: impl Iterator<Item = (Value, u32)>) -> Vec<Option<String>> {
        if !self.enabled {
            return requests.map(|_| None).collect();
        }
        let keys: Vec<String> = requests.map(|(body, sample)| Cached::key(&body, sample)).collect();
        match self.store.cached_responses(&keys) {
            Ok(found) => self.preloaded = std::sync::Mutex::new(found),
            Err(err) => tracing::warn!("could not read the eval cache: {err}"),
        }
        keys.into_iter().map(Some).collect()
    }

    /// The answer read ahead for cache key `key`, if there was one (taken: a second cell with
    /// the same key reads it from the store).
    pub(crate) fn preloaded(&self, key: &str) -> Option<Answer> {
        let text = self.preloaded.lock().unwrap_or_else(|p| p.into_inner()).remove(key)?;
        let found = serde_json::from_str::<Answer>(&text).ok()?;
        Some(Answer { cached: true, ..found })
    }

    /// Writes the answers cached since the last flush, in one transaction.
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(err) = self.store.cache_responses(&pending) {
            tracing::warn!("could not cache {} eval answers: {err}", pending.len());
        }
    }

    /// The answer to `body`; `sample` > 0 keys a separate answer for the same request (an
    /// eval's repeats are samples of their own, not copies of the first).
    pub(crate) async fn sample(&self, body: &Value, sample: u32) -> Result<Answer, String> {
        if !self.enabled {
            return self.inner.chat(body).await;
        }
        let key = Cached::key(body, sample);
        let taken = self.preloaded.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let text = taken.or_else(|| self.store.cached_response(&key).ok().flatten());
        if let Some(found) = text.and_then(|text| serde_json::from_str::<Answer>(&text).ok()) {
            return Ok(Answer { cached: true, ..found });
        }
        let answer = self.inner.chat(body).await?;
        if let Ok(text) = serde_json::to_string(&answer) {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).push((key, text));
        }
        Ok(answer)
    }
}

impl Drop for Cached<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Model for Cached<'_> {
    fn chat<'a>(&'a self, body: &'a Value) -> BoxFuture<'a, Result<Answer, String>> {
        Box::pin(self.sample(body, 0))
    }

    fn embed<'a>(&'a self, alias: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        self.inner.embed(alias, texts)
    }

    /// Agent runs are never cached: their tools act on the world.
    fn agent<'a>(&'a self, file: &'a str, input: &'a str, vars: &'a serde_json::Map<String, Value>) -> BoxFuture<'a, Result<Answer, String>> {
        self.inner.agent(file, input, vars)
    }

    fn rag<'a>(&'a self, collection: &'a str, model: &'a str, question: &'a str) -> BoxFuture<'a, Result<Answer, String>> {
        self.inner.rag(collection, model, question)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A model that answers every chat with one text (or echoes the last message) and
    /// records what it was sent.
    #[derive(Default)]
    pub struct Scripted {
        pub reply: Option<String>,
        pub sent: Mutex<Vec<Value>>,
    }

    impl Scripted {
        pub fn answering(reply: &str) -> Scripted {
            Scripted { reply: Some(reply.into()), sent: Mutex::new(Vec::new()) }
        }

        pub fn bodies(&self) -> Vec<Value> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl Model for Scripted {
        fn chat<'a>(&'a self, body: &'a Value) -> BoxFuture<'a, Result<Answer, String>> {
            self.sent.lock().unwrap().push(body.clone());
            let text = self.reply.clone().unwrap_or_else(|| {
                body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or("").to_string()
            });
            Box::pin(async move { Ok(Answer { text, latency_ms: 1.0, ..Answer::default() }) })
        }

        fn embed<'a>(&'a self, _: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
            let vectors = texts.iter().map(|t| vec![t.len() as f32, 1.0]).collect();
            Box::pin(async move { Ok(vectors) })
        }
    }
}
