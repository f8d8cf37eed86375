//! RAG search tools: a tool of the agent file with a `collection` searches that keel
//! collection (hybrid BM25 and vectors) and returns the chunks with their sources and the
//! collection's trust label, so the model — and the guard — know where the text came from.

use std::path::Path;

use futures_util::future::BoxFuture;
use keel_core::ToolDef;
use serde_json::{Value, json};

use crate::model::ChatModel;

/// The definition the model sees for a search tool over `collection`.
pub fn tool_def(name: &str, collection: &str, description: Option<&str>) -> ToolDef {
    let description = description.map_or_else(
        || format!("Search the `{collection}` documents; returns the most relevant passages with their source, headings and trust label."),
        str::to_string,
    );
    ToolDef {
        name: name.into(),
        description: Some(description),
        parameters: json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for, in words"},
                "k": {"type": "integer", "minimum": 1, "maximum": 20, "description": "How many passages (default 5)"}
            },
            "required": ["query"],
            "additionalProperties": false
        }),
        strict: None,
    }
}

/// The model's embeddings as a collection's embedder.
struct Embed<'a> {
    model: &'a dyn ChatModel,
    alias: String,
}

impl keel_rag::Embedder for Embed<'_> {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        self.model.embed(&self.alias, texts)
    }
}

/// Runs a search tool: the passages as JSON, each labelled with the collection's trust, and
/// whether the collection is trusted.
pub async fn search(root: &Path, collection: &str, arguments: &Value, model: &dyn ChatModel) -> Result<(String, bool), String> {
    let query = arguments["query"].as_str().unwrap_or_default();
    let k = arguments["k"].as_u64().unwrap_or(5).clamp(1, 20) as usize;
    let alias = keel_rag::stored_model(root, collection).ok_or_else(|| keel_rag::Error::NoCollection(collection.into()).to_string())?;
    let embedder = Embed { model, alias: alias.clone() };
    let vector = keel_rag::embed_query(&embedder, query).await.map_err(|e| e.to_string())?;
    let opened = keel_rag::Collection::open(root, collection, &alias, false).map_err(|e| e.to_string())?;
    let ranked = opened.search_with(query, Some(&vector), &keel_rag::Search::new(k, keel_rag::Mode::Hybrid)).map_err(|e| e.to_string())?;
    let hits = opened.hits(&ranked).map_err(|e| e.to_string())?;
    let trust = opened.trust();
    let results: Vec<Value> = hits
        .iter()
        .map(|hit| {
            json!({
                "source": hit.source, "title": hit.title, "headings": hit.headings,
                "bytes": [hit.start, hit.end], "text": hit.text, "trust": trust,
            })
        })
        .collect();
    Ok((json!({"collection": collection, "trust": trust, "results": results}).to_string(), trust == "trusted"))
}
