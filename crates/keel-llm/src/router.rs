//! Routing: model aliases to routes, the order routes are tried in (fallback, weighted,
//! least-busy, latency), retries with backoff and jitter that honour `Retry-After`, and the
//! connect / first-token / total timeouts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keel_core::config::{Config, Strategy};
use keel_core::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse};

use crate::cost::PriceTable;
use crate::forward::{Forwarded, Native, RawRequest, Relayed};
use crate::providers::{EventStream, Upstream};
use crate::{Error, Result};

/// Longest single backoff, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Weight of the newest sample in the latency EWMA.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Debug)]
pub struct Route {
    pub provider: Arc<Upstream>,
    pub model: String,
    weight: f64,
    in_flight: AtomicUsize,
    /// Latency EWMA in microseconds; 0 until the first success.
    ewma_us: AtomicU64,
}

impl Route {
    fn observe(&self, latency: Duration) {
        let sample = latency.as_micros() as f64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * old as f64 };
        self.ewma_us.store(new.max(1.0) as u64, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ewma(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }
}

/// Counts a call in flight on a route for as long as it lives.
#[derive(Debug)]
struct InFlight(Arc<Route>);

impl InFlight {
    fn new(route: &Arc<Route>) -> InFlight {
        route.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(route.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an alias reserves for output when neither it nor the request names a cap.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

#[derive(Debug)]
pub struct Alias {
    pub name: String,
    pub strategy: Strategy,
    pub routes: Vec<Arc<Route>>,
    /// Output tokens reserved for a call that sets no `max_tokens`.
    pub max_output_tokens: u32,
    retries: u32,
    retry_base: Duration,
    max_retry_after: Duration,
}

/// A forwarded answer, holding its route busy (in flight, and its concurrency permit) until
/// it is dropped.
#[derive(Debug)]
pub struct Forward {
    pub answer: Forwarded,
    pub hold: Hold,
}

/// Keeps a streamed answer's route busy while it lives.
#[derive(Debug)]
pub struct Hold {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    _in_flight: Option<InFlight>,
}

/// Where a call went, for traces and metrics.
#[derive(Debug, Clone, Default)]
pub struct RouteInfo {
    pub provider: String,
    pub model: String,
    /// Tries across every route, the successful one included.
    pub attempts: u32,
}

#[derive(Debug)]
pub struct Router {
    aliases: BTreeMap<String, Arc<Alias>>,
    pub prices: PriceTable,
}

impl Router {
    /// Builds the router for a validated config; `env` looks up environment variables.
    pub fn from_config(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Router> {
        Router::with_local(config, env, None)
    }

    /// Like `from_config`, with a factory for `kind = "local"` providers.
    pub fn with_local(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
        local: Option<crate::LocalFactory<'_>>,
    ) -> Result<Router> {
        let mut providers = HashMap::new();
        for (name, provider) in &config.providers {
            providers.insert(name.clone(), Arc::new(Upstream::from_config(name, provider, env, local)?));
        }
        let mut aliases = BTreeMap::new();
        for model in &config.models {
            let routes = model
                .routes
                .get_ref()
                .iter()
                .map(|route| {
                    let provider = providers.get(route.provider.get_ref()).cloned().ok_or_else(|| {
                        Error::InvalidRequest(format!("unknown provider `{}`", route.provider.get_ref()))
                    })?;
                    Ok(Arc::new(Route {
                        provider,
                        model: route.model.clone(),
                        weight: *route.weight.get_ref(),
                        in_flight: AtomicUsize::new(0),
                        ewma_us: AtomicU64::new(0),
                    }))
                })
                .collect::<Result<Vec<_>>>()?;
            let name = model.name.get_ref().clone();
            aliases.insert(
                name.clone(),
                Arc::new(Alias {
                    name,
                    strategy: model.strategy,
                    routes,
                    max_output_tokens: model.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
                    retries: model.retries,
                    retry_base: Duration::from_millis(model.retry_base_ms),
                    max_retry_after: Duration::from_secs_f64(model.max_retry_after_s),
                }),
            );
        }
        Ok(Router { aliases, prices: PriceTable::new(&config.prices) })
    }

    pub fn aliases(&self) -> impl Iterator<Item = &Arc<Alias>> {
        self.aliases.values()
    }

    pub fn alias(&self, name: &str) -> Result<&Arc<Alias>> {
        self.aliases.get(name).ok_or_else(|| Error::UnknownModel {
            alias: name.to_string(),
            known: self.aliases.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
        })
    }

    /// Runs `call` over the routes of alias `name`, in the alias's order.
    async fn run<T, F, Fut>(&self, name: &str, call: F) -> (Result<T>, RouteInfo)
    where
        F: Fn(Arc<Route>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match self.alias(name) {
            Ok(alias) => alias.run(call).await,
            Err(err) => (Err(err), RouteInfo::default()),
        }
    }

    pub async fn chat(&self, request: &ChatRequest) -> (Result<ChatResponse>, RouteInfo) {
        self.run(&request.model, |route| async move {
            within_total_timeout(&route, "the whole answer", route.provider.chat(request, &route.model)).await
        })
        .await
    }

    /// Opens a stream on the first route that delivers a first event. Once that event is
    /// in hand the route is fixed: a stream falls over only before its first byte.
    pub async fn chat_stream(&self, request: &ChatRequest) -> (Result<EventStream>, RouteInfo) {
        self.run(&request.model, |route| async move {
            let provider = &route.provider;
            let started = Instant::now();
            let deadline = started + provider.total_timeout;
            let opened = tokio::time::timeout(provider.first_token_timeout, async {
                let mut stream = provider.chat_stream(request, &route.model).await?;
                match stream.next().await {
                    Some(Ok(first)) => Ok((first, stream)),
                    Some(Err(err)) => Err(err),
                    None => Err(Error::StreamCut {
                        provider: provider.name.clone(),
                        message: "the stream ended before its first event".into(),
                    }),
                }
            })
            .await;
            let (first, rest) = match opened {
                Ok(result) => result?,
                Err(_) => return Err(Error::Timeout { provider: provider.name.clone(), phase: "the first token" }),
            };
            let guard = InFlight::new(&route);
            let provider_name = provider.name.clone();
            let rest = futures_util::stream::unfold((rest, Some(guard), false), move |(mut rest, guard, done)| {
                let provider_name = provider_name.clone();
                async move {
                    if done {
                        return None;
                    }
                    match tokio::time::timeout_at(deadline.into(), rest.next()).await {
                        Ok(Some(item)) => {
                            let failed = item.is_err();
                            Some((item, (rest, guard, failed)))
                        }
                        Ok(None) => None,
                        Err(_) => Some((
                            Err(Error::Timeout { provider: provider_name, phase: "the rest of the stream" }),
                            (rest, None, true),
                        )),
                    }
                }
            });
            let stream: EventStream = Box::pin(futures_util::stream::once(async { Ok(first) }).chain(rest));
            Ok(stream)
        })
        .await
    }

    /// Whether every route of `alias` speaks `native`, so its requests go upstream as they
    /// came instead of through the canonical model.
    pub fn forwards(&self, alias: &str, native: Native) -> bool {
        self.aliases.get(alias).is_some_and(|alias| alias.routes.iter().all(|route| route.provider.native() == Some(native)))
    }

    /// Forwards a request in its providers' own format over the alias's routes, with the
    /// same order, retries, fallbacks and timeouts as a translated call; a stream falls over
    /// only until the upstream accepted it.
    pub async fn forward(&self, request: &RawRequest, native: Native, headers: &[(String, String)]) -> (Result<Forward>, RouteInfo) {
        self.run(&request.model, |route| async move {
            let provider = &route.provider;
            let body = request.body_for(&route.model, native);
            let call = provider.forward(body, request.stream, request.include_usage, headers);
            let (answer, permit) = if request.stream {
                let opened = tokio::time::timeout(provider.first_token_timeout, async {
                    let (mut answer, permit) = call.await?;
                    if let Relayed::Stream(relay) = &mut answer.body {
                        relay.prime().await?;
                    }
                    Ok::<_, Error>((answer, permit))
                });
                match opened.await {
                    Ok(result) => result?,
                    Err(_) => return Err(Error::Timeout { provider: provider.name.clone(), phase: "the first token" }),
                }
            } else {
                within_total_timeout(&route, "the whole answer", call).await?
            };
            let streaming = matches!(answer.body, Relayed::Stream(_));
            let hold = Hold { _permit: permit.filter(|_| streaming), _in_flight: streaming.then(|| InFlight::new(&route)) };
            Ok(Forward { answer, hold })
        })
        .await
    }

    /// Input tokens of a request on the alias's first route: `(count, exact)`. Exact where
    /// the provider counts (Anthropic); otherwise estimated at four characters a token.
    pub async fn count_tokens(&self, request: &ChatRequest) -> Result<(u64, bool)> {
        let alias = self.alias(&request.model)?;
        let route = &alias.routes[alias.order()[0]];
        match route.provider.count_tokens(request, &route.model).await? {
            Some(n) => Ok((n, true)),
            None => Ok((estimate_tokens(request), false)),
        }
    }

    pub async fn embed(&self, request: &EmbedRequest) -> (Result<EmbedResponse>, RouteInfo) {
        self.run(&request.model, |route| async move {
            within_total_timeout(&route, "the embeddings", route.provider.embed(request, &route.model)).await
        })
        .await
    }
}

/// Bounds a whole call by its provider's `timeout_s`.
async fn within_total_timeout<T>(
    route: &Route,
    phase: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(route.provider.total_timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout { provider: route.provider.name.clone(), phase }),
    }
}

impl Alias {
    /// The order routes are tried in for one request.
    pub fn order(&self) -> Vec<usize> {
        let n = self.routes.len();
        let mut order: Vec<usize> = (0..n).collect();
        match self.strategy {
            Strategy::Fallback => {}
            Strategy::Weighted => {
                // Weighted sampling without replacement: the first pick carries the load
                // split, the rest are fallbacks.
                let mut remaining: Vec<usize> = (0..n).collect();
                order.clear();
                while !remaining.is_empty() {
                    let total: f64 = remaining.iter().map(|&i| self.routes[i].weight).sum();
                    let mut pick = fastrand::f64() * total;
                    let mut chosen = remaining.len() - 1;
                    for (pos, &i) in remaining.iter().enumerate() {
                        if pick < self.routes[i].weight {
                            chosen = pos;
                            break;
                        }
                        pick -= self.routes[i].weight;
                    }
                    order.push(remaining.remove(chosen));
                }
            }
            Strategy::LeastBusy => order.sort_by_key(|&i| self.routes[i].in_flight()),
            // Untried routes (EWMA 0) come first so every route gets measured.
            Strategy::Latency => order.sort_by_key(|&i| self.routes[i].ewma_us.load(Ordering::Relaxed)),
        }
        order
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.retry_base.saturating_mul(1 << attempt.min(16)).min(MAX_BACKOFF);
        // Equal jitter: half fixed, half random, so retries spread out but still wait.
        ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0)
    }

    async fn run<T, F, Fut>(&self, call: F) -> (Result<T>, RouteInfo)
    where
        F: Fn(Arc<Route>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut info = RouteInfo::default();
        let mut last = None;
        for idx in self.order() {
            let route = &self.routes[idx];
            info.provider.clone_from(&route.provider.name);
            info.model.clone_from(&route.model);
            for attempt in 0..=self.retries {
                info.attempts += 1;
                let started = Instant::now();
                let result = {
                    let _in_flight = InFlight::new(route);
                    call(route.clone()).await
                };
                let err = match result {
                    Ok(value) => {
                        route.observe(started.elapsed());
                        return (Ok(value), info);
                    }
                    Err(err) => err,
                };
                tracing::debug!(alias = %self.name, provider = %route.provider.name, attempt, error = %err, "route attempt failed");
                if !err.falls_over() {
                    return (Err(err), info);
                }
                let transient = err.is_transient();
                let wait = match err.retry_after() {
                    Some(wait) if wait > self.max_retry_after => None,
                    Some(wait) => Some(wait),
                    None => Some(self.backoff(attempt)),
                };
                last = Some(err);
                match wait {
                    Some(wait) if transient && attempt < self.retries => crate::timing::waiting(tokio::time::sleep(wait)).await,
                    _ => break,
                }
            }
        }
        let last = last.expect("an alias has at least one route");
        if info.attempts == 1 {
            return (Err(last), info);
        }
        (Err(Error::AllRoutesFailed { alias: self.name.clone(), last: Box::new(last) }), info)
    }
}

/// A rough token count: about four characters a token for English text and JSON, plus a
/// few tokens of framing per message. Used only where the provider has no counter.
pub fn estimate_tokens(request: &ChatRequest) -> u64 {
    let mut chars = 0usize;
    let mut n_messages = 0u64;
    for message in &request.messages {
        n_messages += 1;
        for part in &message.content {
            chars += match part {
                keel_core::ContentPart::Text { text } => text.len(),
                // Providers bill images by size; a fixed allowance keeps estimates honest-ish.
                keel_core::ContentPart::Image { .. } => 1_600 * 4,
                _ => 256 * 4,
            };
        }
        for call in &message.tool_calls {
            chars += call.name.len() + call.arguments.len();
        }
    }
    for tool in &request.tools {
        chars += tool.name.len() + tool.description.as_deref().map_or(0, str::len) + tool.parameters.to_string().len();
    }
    (chars as u64).div_ceil(4) + 3 * n_messages
}
