//! The `local` provider: a model engine inside the keel process. keel-llm knows only the
//! [`LocalBackend`] interface; the binary plugs in the implementation (keel-local,
//! llama.cpp), so this crate never links llama.cpp.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use keel_core::config::LocalProviderConfig;
use keel_core::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};

use super::{EventStream, Provider};
use crate::Result;

/// A model engine inside the keel process (`kind = "local"`).
pub trait LocalBackend: Send + Sync + std::fmt::Debug {
    /// Streams a chat answer from `model` (a catalog name or a path).
    fn chat_stream(&self, model: &str, request: &ChatRequest) -> BoxFuture<'static, Result<EventStream>>;
    fn embed(&self, model: &str, request: &EmbedRequest) -> BoxFuture<'static, Result<EmbedResponse>>;
}

/// Builds the local backend of a `kind = "local"` provider from its name and config.
pub type LocalFactory<'a> = &'a dyn Fn(&str, &LocalProviderConfig) -> Result<Arc<dyn LocalBackend>>;

/// A local engine as a provider.
#[derive(Debug)]
pub struct Local {
    name: String,
    backend: Arc<dyn LocalBackend>,
    /// `max_output_tokens`: a cap on every answer.
    max_output_tokens: Option<u32>,
}

impl Local {
    pub(crate) fn new(name: &str, backend: Arc<dyn LocalBackend>, max_output_tokens: Option<u32>) -> Local {
        Local { name: name.to_string(), backend, max_output_tokens }
    }

    /// The request with its `max_tokens` held to the provider's cap, when it needs holding.
    fn capped<'a>(&self, request: &'a ChatRequest) -> std::borrow::Cow<'a, ChatRequest> {
        match self.max_output_tokens {
            Some(cap) if request.max_tokens.is_none_or(|asked| asked > cap) => {
                std::borrow::Cow::Owned(ChatRequest { max_tokens: Some(cap), ..request.clone() })
            }
            _ => std::borrow::Cow::Borrowed(request),
        }
    }
}

impl Provider for Local {
    fn name(&self) -> &str {
        &self.name
    }

    /// The engine always streams; a whole answer is its stream collected.
    fn chat<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let mut stream = self.backend.chat_stream(model, &self.capped(request)).await?;
            let mut collector = keel_core::chat::StreamCollector::default();
            while let Some(event) = stream.next().await {
                collector.push(&event?);
            }
            Ok(collector.into_response())
        })
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<EventStream>> {
        self.backend.chat_stream(model, &self.capped(request))
    }

    fn embed<'a>(&'a self, request: &'a EmbedRequest, model: &'a str) -> BoxFuture<'a, Result<EmbedResponse>> {
        self.backend.embed(model, request)
    }
}
