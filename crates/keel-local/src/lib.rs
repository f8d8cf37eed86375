//! keel-local: models that run inside the keel process. `store` finds and fetches model
//! files; `engine` runs a GGUF chat model through llama.cpp with continuous batching; this
//! file plugs them into keel-llm's routing as the `local` provider kind.

#[cfg(target_arch = "x86_64")]
mod bf16;
pub mod embed;
pub mod engine;
pub mod store;
mod tool_stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use keel_core::config::LocalProviderConfig;
use keel_core::{
    ChatRequest, ContentPart, EmbedRequest, EmbedResponse, ResponseFormat, Role, StreamEvent, ToolChoice, Usage,
};
use keel_llm::{Error, EventStream, LocalBackend, Result};

pub use embed::{EmbedEngine, Precision};
pub use engine::{ChatEngine, EngineError, EngineOptions, GenEvent, Sampling};
pub use store::{CATALOG, ModelKind, ModelStore, Progress, Source, StoreError};

/// Texts embedded per forward pass.
const EMBED_BATCH: usize = 32;

/// A `kind = "local"` provider: loads each model its routes name on first use and keeps
/// it loaded.
pub struct LocalProvider {
    name: String,
    store: ModelStore,
    options: EngineOptions,
    engines: Mutex<HashMap<String, Arc<ChatEngine>>>,
    embedders: Mutex<HashMap<String, Arc<EmbedEngine>>>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider").field("name", &self.name).field("options", &self.options).finish()
    }
}

impl LocalProvider {
    pub fn new(name: &str, store: ModelStore, config: &LocalProviderConfig) -> LocalProvider {
        let mut options = EngineOptions::default();
        if let Some(threads) = config.threads {
            options.threads = threads.max(1) as i32;
        }
        if let Some(slots) = config.slots {
            options.slots = slots.max(1);
        }
        if let Some(context) = config.context_tokens {
            options.context_per_slot = context.max(64);
        }
        if let Some(max_queue) = config.max_queue {
            options.max_queue = max_queue;
        }
        LocalProvider {
            name: name.to_string(),
            store,
            options,
            engines: Mutex::new(HashMap::new()),
            embedders: Mutex::new(HashMap::new()),
        }
    }

    fn error(&self, err: EngineError) -> Error {
        match err {
            EngineError::BadRequest(message) => Error::InvalidRequest(message),
            EngineError::Overloaded(_) => Error::Overloaded { provider: self.name.clone(), message: err.to_string() },
            EngineError::Load(message) | EngineError::Failed(message) => {
                Error::LocalModel { provider: self.name.clone(), message }
            }
        }
    }

    /// The engine for `model`, loading it on first use.
    pub fn engine(&self, model: &str) -> Result<Arc<ChatEngine>> {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = engines.get(model) {
            return Ok(engine.clone());
        }
        let path = self
            .store
            .resolve(model)
            .map_err(|err| Error::LocalModel { provider: self.name.clone(), message: err.to_string() })?;
        let engine = ChatEngine::load(model, &path, self.options.clone()).map_err(|err| self.error(err))?;
        engines.insert(model.to_string(), engine.clone());
        Ok(engine)
    }

    /// The embedding engine for `model`, loading it on first use.
    pub fn embedder(&self, model: &str) -> Result<Arc<EmbedEngine>> {
        let mut embedders = self.embedders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(engine) = embedders.get(model) {
            return Ok(engine.clone());
        }
        let path = self
            .store
            .resolve(model)
            .map_err(|err| Error::LocalModel { provider: self.name.clone(), message: err.to_string() })?;
        let engine = Arc::new(EmbedEngine::load(model, &path).map_err(|err| self.error(err))?);
        embedders.insert(model.to_string(), engine.clone());
        Ok(engine)
    }

    fn prompt(&self, engine: &ChatEngine, request: &ChatRequest, tools: Option<&ToolMode>) -> Result<String> {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if let Some(mode) = tools {
            messages.push(("system".to_string(), mode.instructions.clone()));
        }
        for message in &request.messages {
            if message.content.iter().any(|part| !matches!(part, ContentPart::Text { .. })) {
                return Err(Error::Unsupported { provider: self.name.clone(), what: "image, audio or file input on local models" });
            }
            let role = match message.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut content = message.text_content();
            if !message.tool_calls.is_empty() {
                // Past calls go back in the same JSON shape the model is asked to write.
                let calls: Vec<serde_json::Value> = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        let arguments = serde_json::from_str(&call.arguments).unwrap_or(serde_json::Value::Null);
                        serde_json::json!({"name": call.name, "arguments": arguments})
                    })
                    .collect();
                content = serde_json::json!({"tool_calls": calls}).to_string();
            }
            messages.push((role.to_string(), content));
        }
        engine.render(&messages).map_err(|err| self.error(err))
    }

    fn sampling(&self, request: &ChatRequest, tools: Option<&ToolMode>) -> Result<Sampling> {
        let grammar = match (tools, &request.response_format) {
            (Some(mode), _) => Some(schema_grammar(&mode.schema)?),
            (None, None | Some(ResponseFormat::Text)) => None,
            (None, Some(ResponseFormat::JsonObject)) => Some(schema_grammar(&serde_json::json!({"type": "object"}))?),
            (None, Some(ResponseFormat::JsonSchema { schema, .. })) => Some(schema_grammar(schema)?),
        };
        Ok(Sampling {
            temperature: request.temperature.map(|t| t as f32),
            top_p: request.top_p.map(|p| p as f32),
            top_k: request.top_k.map(|k| k.min(i32::MAX as u32) as i32),
            seed: request.seed.map(|s| s as u32),
            grammar,
            ignore_eos: false,
        })
    }
}

/// How a request with tools runs on a model that has no tool format of its own: the model
/// is told the tools and must answer with one JSON document, `{"tool_calls": [...]}` or
/// `{"response": "..."}`, which a grammar enforces, so every call parses and its arguments
/// match the tool's schema.
#[derive(Debug)]
struct ToolMode {
    schema: serde_json::Value,
    instructions: String,
}

impl ToolMode {
    fn for_request(request: &ChatRequest) -> Result<Option<ToolMode>> {
        if request.tools.is_empty() || request.tool_choice == Some(ToolChoice::None) {
            return Ok(None);
        }
        let chosen: Vec<&keel_core::ToolDef> = match &request.tool_choice {
            Some(ToolChoice::Function(name)) => {
                let tool = request.tools.iter().find(|tool| &tool.name == name).ok_or_else(|| {
                    Error::InvalidRequest(format!("tool_choice names `{name}`, which is not in tools"))
                })?;
                vec![tool]
            }
            _ => request.tools.iter().collect(),
        };
        let call_schemas: Vec<serde_json::Value> = chosen
            .iter()
            .map(|tool| {
                serde_json::json!({
                    "type": "object",
                    "properties": {"name": {"type": "string", "enum": [tool.name]}, "arguments": tool.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let max_calls = if request.parallel_tool_calls == Some(false) { 1 } else { 4 };
        let calls = serde_json::json!({
            "type": "object",
            "properties": {"tool_calls": {"type": "array", "items": {"anyOf": call_schemas}, "minItems": 1, "maxItems": max_calls}},
            "required": ["tool_calls"],
            "additionalProperties": false,
        });
        let may_answer = matches!(request.tool_choice, None | Some(ToolChoice::Auto));
        let schema = if may_answer {
            let text = serde_json::json!({
                "type": "object",
                "properties": {"response": {"type": "string"}},
                "required": ["response"],
                "additionalProperties": false,
            });
            serde_json::json!({"anyOf": [calls, text]})
        } else {
            calls
        };
        let mut instructions = String::from("You can call these tools:\n");
        for tool in &chosen {
            instructions.push_str(&format!(
                "- {}: {} Arguments (JSON Schema): {}\n",
                tool.name,
                tool.description.as_deref().unwrap_or(""),
                tool.parameters
            ));
        }
        instructions.push_str("To call tools, answer with {\"tool_calls\": [{\"name\": ..., \"arguments\": {...}}]}.");
        if may_answer {
            instructions.push_str(" To answer the user directly, answer with {\"response\": \"...\"}.");
        }
        Ok(Some(ToolMode { schema, instructions }))
    }
}

/// Streams a tool-mode generation as tool calls (arguments piece by piece) or as the text of
/// a direct answer, while the model writes it.
fn tool_answer(events: tokio::sync::mpsc::UnboundedReceiver<GenEvent>, model: String, provider: String) -> EventStream {
    let id = response_id();
    let document = tool_stream::ToolDocument::new(format!("call_{}", &id[6..14]));
    let start = futures_util::stream::once(async move { Ok(StreamEvent::Start { id, model }) });
    let rest = futures_util::stream::unfold(Some((events, document)), move |state| {
        let provider = provider.clone();
        async move {
            let (mut events, mut document) = state?;
            match events.recv().await {
                Some(GenEvent::Text(text)) => {
                    let out = document.push(&text).into_iter().map(Ok).collect::<Vec<_>>();
                    Some((out, Some((events, document))))
                }
                Some(GenEvent::Done { finish, prompt_tokens, completion_tokens }) => {
                    let usage = Usage { input_tokens: prompt_tokens, output_tokens: completion_tokens, ..Usage::default() };
                    Some((document.finish(finish, usage).into_iter().map(Ok).collect(), None))
                }
                Some(GenEvent::Failed(message)) => Some((vec![Err(Error::LocalModel { provider, message })], None)),
                None => Some((vec![Err(Error::LocalModel { provider, message: "the decode thread stopped".into() })], None)),
            }
        }
    })
    .flat_map(futures_util::stream::iter);
    Box::pin(futures_util::StreamExt::chain(start, rest))
}

/// An id for a local answer, unique enough within one process.
fn response_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("local-{:016x}", nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// JSON Schema keywords llama.cpp's grammar converter cannot enforce. A schema using one
/// is refused with its name and place, rather than silently loosened.
const UNSUPPORTED_KEYWORDS: &[&str] = &[
    "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "patternProperties", "uniqueItems",
    "multipleOf", "contains", "minContains", "maxContains", "propertyNames", "unevaluatedProperties",
    "unevaluatedItems", "minProperties", "maxProperties",
];

/// The first unsupported keyword in `schema` and the JSON pointer of where it is.
pub fn unsupported_keyword(schema: &serde_json::Value, at: &str) -> Option<(String, String)> {
    match schema {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if UNSUPPORTED_KEYWORDS.contains(&key.as_str()) {
                    return Some((key.clone(), if at.is_empty() { "/".to_string() } else { at.to_string() }));
                }
                // Property names and enum values are data, not keywords.
                let inner = match key.as_str() {
                    "properties" | "$defs" | "definitions" => match value {
                        serde_json::Value::Object(props) => props
                            .iter()
                            .find_map(|(name, prop)| unsupported_keyword(prop, &format!("{at}/{key}/{name}"))),
                        _ => None,
                    },
                    "enum" | "const" | "default" | "examples" => None,
                    _ => unsupported_keyword(value, &format!("{at}/{key}")),
                };
                if inner.is_some() {
                    return inner;
                }
            }
            None
        }
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(idx, item)| unsupported_keyword(item, &format!("{at}/{idx}")))
        }
        _ => None,
    }
}

/// GBNF for a JSON Schema, through llama.cpp's own converter.
fn schema_grammar(schema: &serde_json::Value) -> Result<String> {
    if let Some((keyword, at)) = unsupported_keyword(schema, "") {
        return Err(Error::InvalidRequest(format!(
            "JSON schema keyword `{keyword}` (at {at}) cannot be enforced on local models; remove it or route to a hosted model"
        )));
    }
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|err| Error::InvalidRequest(format!("response_format: the JSON schema cannot be enforced: {err}")))
}

impl LocalBackend for LocalProvider {
    fn chat_stream(&self, model: &str, request: &ChatRequest) -> BoxFuture<'static, Result<EventStream>> {
        let opened = (|| {
            let engine = self.engine(model)?;
            let tools = ToolMode::for_request(request)?;
            let prompt = self.prompt(&engine, request, tools.as_ref())?;
            let sampling = self.sampling(request, tools.as_ref())?;
            // Tool answers are one JSON document: stop sequences would cut it, and a token
            // budget too small to finish it is raised to what the grammar needs.
            let (stop, max_tokens) = match &tools {
                Some(_) => (Vec::new(), request.max_tokens.map(|n| n.max(256))),
                None => (request.stop.clone(), request.max_tokens),
            };
            let events = engine.generate(&prompt, sampling, max_tokens, stop).map_err(|err| self.error(err))?;
            Ok((events, model.to_string(), self.name.clone(), tools))
        })();
        Box::pin(async move {
            let (events, model, provider, tools) = opened?;
            if tools.is_some() {
                return Ok(tool_answer(events, model, provider));
            }
            let id = response_id();
            let start = futures_util::stream::once(async move { Ok(StreamEvent::Start { id, model }) });
            let rest = futures_util::stream::unfold(Some(events), move |events| {
                let provider = provider.clone();
                async move {
                    let mut events = events?;
                    match events.recv().await {
                        Some(GenEvent::Text(text)) => Some((vec![Ok(StreamEvent::TextDelta(text))], Some(events))),
                        Some(GenEvent::Done { finish, prompt_tokens, completion_tokens }) => {
                            let usage = Usage { input_tokens: prompt_tokens, output_tokens: completion_tokens, ..Usage::default() };
                            Some((vec![Ok(StreamEvent::Finish(finish)), Ok(StreamEvent::Usage(usage))], None))
                        }
                        Some(GenEvent::Failed(message)) => Some((vec![Err(Error::LocalModel { provider, message })], None)),
                        None => Some((
                            vec![Err(Error::LocalModel { provider, message: "the decode thread stopped".into() })],
                            None,
                        )),
                    }
                }
            })
            .flat_map(futures_util::stream::iter);
            let stream: EventStream = Box::pin(futures_util::StreamExt::chain(start, rest));
            Ok(stream)
        })
    }

    fn embed(&self, model: &str, request: &EmbedRequest) -> BoxFuture<'static, Result<EmbedResponse>> {
        let provider = self.name.clone();
        let prepared = (|| {
            let keel_core::EmbedInput::Texts(texts) = &request.input else {
                return Err(Error::Unsupported { provider: provider.clone(), what: "token-id embedding inputs" });
            };
            let engine = self.embedder(model)?;
            if let Some(dimensions) = request.dimensions
                && dimensions as usize != engine.dimensions {
                    return Err(Error::InvalidRequest(format!(
                        "dimensions: {model} makes {}-dimensional vectors; it cannot make {dimensions}",
                        engine.dimensions
                    )));
                }
            Ok((engine, texts.clone()))
        })();
        let model = model.to_string();
        Box::pin(async move {
            let (engine, texts) = prepared?;
            let (vectors, n_tokens) = tokio::task::spawn_blocking(move || engine.embed_many(&texts, EMBED_BATCH))
            .await
            .map_err(|e| Error::LocalModel { provider: provider.clone(), message: e.to_string() })?
            .map_err(|e| match e {
                EngineError::BadRequest(message) => Error::InvalidRequest(message),
                other => Error::LocalModel { provider: provider.clone(), message: other.to_string() },
            })?;
            Ok(EmbedResponse { model, vectors, usage: Usage { input_tokens: n_tokens, ..Usage::default() } })
        })
    }
}

use futures_util::StreamExt as _;
