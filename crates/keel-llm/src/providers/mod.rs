//! The providers behind keel: one trait, [`Provider`], and one file per kind (`openai`,
//! `anthropic`, `gemini`, `local`), each writing its upstream's wire format and reading the
//! answers back into the canonical model. [`Upstream`] is a configured provider as the router
//! holds it: its name, timeouts and concurrency cap around the kind's adapter. The config
//! enum is matched once, in [`Upstream::from_config`].

pub mod anthropic;
pub mod gemini;
mod http;
pub mod local;
pub mod openai;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use keel_core::config::{ProviderConfig, ProviderKind};
use keel_core::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, StreamEvent};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::forward::{Forwarded, Native};
use crate::{Error, Result};
pub use http::{Relay, set_worker};
pub use local::{LocalBackend, LocalFactory};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent>> + Send>>;

/// One kind of upstream: what differs between OpenAI, Anthropic, Gemini and a local model.
/// `model` is the upstream's model name (the request's own `model` is the client's alias and
/// is not sent).
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// One non-streaming chat call.
    fn chat<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<ChatResponse>>;

    /// Opens a streaming chat call. The future resolves once the upstream accepted the
    /// request (status and headers); events follow on the stream.
    fn chat_stream<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<EventStream>>;

    fn embed<'a>(&'a self, request: &'a EmbedRequest, model: &'a str) -> BoxFuture<'a, Result<EmbedResponse>> {
        let _ = (request, model);
        Box::pin(async { Err(Error::Unsupported { provider: self.name().to_string(), what: "embeddings" }) })
    }

    /// Counts a request's input tokens with the provider's own counter, where it has one
    /// (Anthropic's `count_tokens`); `None` where it has none.
    fn count_tokens<'a>(&'a self, request: &'a ChatRequest, model: &'a str) -> BoxFuture<'a, Result<Option<u64>>> {
        let _ = (request, model);
        Box::pin(async { Ok(None) })
    }

    /// The wire format this provider speaks, where a client's request in it can be
    /// forwarded as it is; `None` where keel always translates (Gemini, local models).
    fn native(&self) -> Option<Native> {
        None
    }

    /// Sends a client's body, already naming the upstream model, in the provider's own
    /// format; `stream` says whether the client asked for a stream and `client_usage`
    /// whether it asked for OpenAI's usage chunk; `headers` are the client's headers worth
    /// passing on (Anthropic's `anthropic-beta`).
    fn forward<'a>(
        &'a self,
        body: bytes::Bytes,
        stream: bool,
        client_usage: bool,
        headers: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Forwarded>> {
        let _ = (body, stream, client_usage, headers);
        Box::pin(async { Err(Error::Unsupported { provider: self.name().to_string(), what: "forwarding" }) })
    }

    /// The provider's name in the config.
    fn name(&self) -> &str;
}

/// A configured provider: the adapter of its kind, its timeouts and its concurrency cap.
pub struct Upstream {
    pub name: String,
    pub kind: ProviderKind,
    pub first_token_timeout: Duration,
    pub total_timeout: Duration,
    /// Caps calls in flight (`max_concurrency`); waiting for a permit counts as upstream time.
    limit: Option<Arc<Semaphore>>,
    provider: Box<dyn Provider>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("kind", &self.kind).field("provider", &self.provider).finish()
    }
}

impl Upstream {
    /// Builds a provider from its config; `env` looks up environment variables, `local`
    /// builds the engine of a `kind = "local"` provider.
    pub fn from_config(
        name: &str,
        config: &ProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
        local: Option<LocalFactory<'_>>,
    ) -> Result<Upstream> {
        let provider: Box<dyn Provider> = match config {
            ProviderConfig::OpenAi(http) => Box::new(openai::OpenAi::new(http::Http::new(name, config, http, env)?)),
            ProviderConfig::Anthropic(http) => Box::new(anthropic::Anthropic::new(http::Http::new(name, config, http, env)?)),
            ProviderConfig::Gemini(http) => Box::new(gemini::Gemini::new(http::Http::new(name, config, http, env)?)),
            ProviderConfig::Local(settings) => match local {
                Some(factory) => Box::new(local::Local::new(name, factory(name, settings)?, settings.max_output_tokens)),
                None => return Err(Error::Unsupported { provider: name.to_string(), what: "local models in this build" }),
            },
        };
        let (first_token_s, total_s) = config.timeouts();
        Ok(Upstream {
            name: name.to_string(),
            kind: config.kind(),
            first_token_timeout: Duration::from_secs_f64(first_token_s),
            total_timeout: Duration::from_secs_f64(total_s),
            limit: config.max_concurrency().map(|n| Arc::new(Semaphore::new(n.max(1)))),
            provider,
        })
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        let limit = self.limit.clone()?;
        crate::timing::waiting(limit.acquire_owned()).await.ok()
    }

    pub async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatResponse> {
        let _permit = self.permit().await;
        self.provider.chat(request, model).await
    }

    /// A streaming call; its permit is held until the stream is dropped.
    pub async fn chat_stream(&self, request: &ChatRequest, model: &str) -> Result<EventStream> {
        let permit = self.permit().await;
        let stream = self.provider.chat_stream(request, model).await?;
        Ok(match permit {
            Some(permit) => Box::pin(stream.map(move |event| {
                let _held = &permit;
                event
            })),
            None => stream,
        })
    }

    pub fn native(&self) -> Option<Native> {
        self.provider.native()
    }

    /// A forwarded call; a stream's permit is held until the relay is dropped.
    pub async fn forward(
        &self,
        body: bytes::Bytes,
        stream: bool,
        client_usage: bool,
        headers: &[(String, String)],
    ) -> Result<(Forwarded, Option<OwnedSemaphorePermit>)> {
        let permit = self.permit().await;
        let forwarded = self.provider.forward(body, stream, client_usage, headers).await?;
        Ok((forwarded, permit))
    }

    pub async fn count_tokens(&self, request: &ChatRequest, model: &str) -> Result<Option<u64>> {
        self.provider.count_tokens(request, model).await
    }

    pub async fn embed(&self, request: &EmbedRequest, model: &str) -> Result<EmbedResponse> {
        let _permit = self.permit().await;
        self.provider.embed(request, model).await
    }
}
