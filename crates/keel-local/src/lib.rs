//! keel-local: models that run inside the keel process. `store` finds and fetches model
//! files; `engine` runs a GGUF chat model through llama.cpp with continuous batching; this
//! file plugs them into keel-llm's routing as the `local` provider kind.

pub mod engine;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use keel_core::config::ProviderConfig;
use keel_core::{ChatRequest, ContentPart, EmbedRequest, EmbedResponse, ResponseFormat, Role, StreamEvent, Usage};
use keel_llm::{Error, EventStream, LocalBackend, Result};

pub use engine::{ChatEngine, EngineError, EngineOptions, GenEvent, Sampling};
pub use store::{CATALOG, ModelKind, ModelStore, Progress, Source, StoreError};

/// A `kind = "local"` provider: loads each model its routes name on first use and keeps
/// it loaded.
pub struct LocalProvider {
    name: String,
    store: ModelStore,
    options: EngineOptions,
    engines: Mutex<HashMap<String, Arc<ChatEngine>>>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider").field("name", &self.name).field("options", &self.options).finish()
    }
}

impl LocalProvider {
    pub fn new(name: &str, store: ModelStore, config: &ProviderConfig) -> LocalProvider {
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
        LocalProvider { name: name.to_string(), store, options, engines: Mutex::new(HashMap::new()) }
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

    fn prompt(&self, engine: &ChatEngine, request: &ChatRequest) -> Result<String> {
        if !request.tools.is_empty() {
            return Err(Error::Unsupported { provider: self.name.clone(), what: "tool calling on local models (not yet)" });
        }
        let mut messages = Vec::with_capacity(request.messages.len());
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
            for call in &message.tool_calls {
                content.push_str(&format!("\n{{\"name\": {:?}, \"arguments\": {}}}", call.name, call.arguments));
            }
            messages.push((role.to_string(), content));
        }
        engine.render(&messages).map_err(|err| self.error(err))
    }

    fn sampling(&self, request: &ChatRequest) -> Result<Sampling> {
        let grammar = match &request.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(schema_grammar(&serde_json::json!({"type": "object"}))?),
            Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema_grammar(schema)?),
        };
        Ok(Sampling {
            temperature: request.temperature.map(|t| t as f32),
            top_p: request.top_p.map(|p| p as f32),
            top_k: request.top_k.map(|k| k.min(i32::MAX as u32) as i32),
            seed: request.seed.map(|s| s as u32),
            grammar,
        })
    }
}

/// GBNF for a JSON Schema, through llama.cpp's own converter.
fn schema_grammar(schema: &serde_json::Value) -> Result<String> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|err| Error::InvalidRequest(format!("response_format: the JSON schema cannot be enforced: {err}")))
}

impl LocalBackend for LocalProvider {
    fn chat_stream(&self, model: &str, request: &ChatRequest) -> BoxFuture<'static, Result<EventStream>> {
        let opened = (|| {
            let engine = self.engine(model)?;
            let prompt = self.prompt(&engine, request)?;
            let sampling = self.sampling(request)?;
            let events = engine
                .generate(&prompt, sampling, request.max_tokens, request.stop.clone())
                .map_err(|err| self.error(err))?;
            Ok((events, model.to_string(), self.name.clone()))
        })();
        Box::pin(async move {
            let (events, model, provider) = opened?;
            let id = format!("local-{:016x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
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

    fn embed(&self, _model: &str, _request: &EmbedRequest) -> BoxFuture<'static, Result<EmbedResponse>> {
        let provider = self.name.clone();
        Box::pin(async move { Err(Error::Unsupported { provider, what: "local embeddings (not yet)" }) })
    }
}

use futures_util::StreamExt as _;
