//! RAG search tools: a tool of the agent file with a `collection` searches that keel
//! collection (hybrid BM25 and vectors) and returns the chunks with their sources and the
//! collection's trust label, so the model — and the guard — know where the text came from.
//! Also the models behind keel as a collection's embedder, reranking judge and answer writer.

use futures_util::future::BoxFuture;
use keel_core::{ChatRequest, Message, ResponseFormat, Role, ToolDef};
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

/// A model alias behind keel (the gateway's [`keel_llm::Router`], or any [`ChatModel`]) in
/// the roles a collection needs: its embedder (chunks and queries), the reranker's judge (a
/// JSON answer in a schema) and the writer of cited answers, both at temperature 0.
pub struct ModelAlias<'a> {
    model: &'a dyn ChatModel,
    alias: String,
}

impl<'a> ModelAlias<'a> {
    pub fn new(model: &'a dyn ChatModel, alias: &str) -> ModelAlias<'a> {
        ModelAlias { model, alias: alias.to_string() }
    }
}

impl keel_rag::Embedder for ModelAlias<'_> {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        self.model.embed(&self.alias, texts)
    }
}

impl keel_rag::rerank::Judge for ModelAlias<'_> {
    fn json<'a>(&'a self, system: &'a str, user: &'a str, schema: &'a Value) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let format = ResponseFormat::JsonSchema { name: "ranking".into(), schema: schema.clone(), strict: Some(true) };
            let request = instruct(&self.alias, system, user, Some(format));
            let reply = self.model.chat(&request).await.map_err(|e| format!("{} failed: {e}", self.alias))?;
            Ok(reply.response.message.text_content())
        })
    }
}

impl keel_rag::answer::Writer for ModelAlias<'_> {
    fn write<'a>(&'a self, system: &'a str, user: &'a str) -> BoxFuture<'a, Result<(String, String), String>> {
        Box::pin(async move {
            let reply = self.model.chat(&instruct(&self.alias, system, user, None)).await.map_err(|e| format!("{}: {e}", self.alias))?;
            let model = if reply.response.model.is_empty() { self.alias.clone() } else { reply.response.model.clone() };
            Ok((reply.response.message.text_content(), format!("{}/{model}", reply.provider)))
        })
    }
}

/// A system and a user message to `alias` at temperature 0, in a format when one is given.
fn instruct(alias: &str, system: &str, user: &str, response_format: Option<ResponseFormat>) -> ChatRequest {
    ChatRequest {
        model: alias.to_string(),
        messages: vec![Message::text(Role::System, system), Message::text(Role::User, user)],
        response_format,
        temperature: Some(0.0),
        ..ChatRequest::default()
    }
}

/// Runs a search tool: the passages as JSON, each labelled with the collection's trust, and
/// whether the collection is trusted. The collection stays open in `collections`.
pub(crate) async fn search(collections: &keel_rag::Collections, collection: &str, arguments: &Value, model: &dyn ChatModel) -> Result<(String, bool), String> {
    let query = arguments["query"].as_str().unwrap_or_default();
    let k = arguments["k"].as_u64().unwrap_or(5).clamp(1, 20) as usize;
    let shared = collections.get(collection).await.map_err(|e| e.to_string())?;
    let (alias, trust) = {
        let opened = shared.lock().unwrap_or_else(|p| p.into_inner());
        (opened.model.clone(), opened.trust())
    };
    let embedder = ModelAlias::new(model, &alias);
    let search = keel_rag::Query::new(query, keel_rag::Search::new(k, keel_rag::Mode::Hybrid));
    let hits = keel_rag::query(&shared, &search, &embedder, None).await.map_err(|e| e.to_string())?;
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
