//! The config schema: one TOML file mapped onto typed structs, validated with the exact line
//! of whatever is wrong. Secrets are never in the file, only the names of the environment
//! variables that hold them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Per-model prices that override the shipped price list, keyed by upstream model name.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    #[serde(default)]
    pub agents: AgentsConfig,
    #[serde(default)]
    pub prompts: PromptsConfig,
    #[serde(default)]
    pub evals: EvalsConfig,
}

/// Evals that `keel serve` runs on live traffic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalsConfig {
    /// `[[evals.online]]`: scorers run on a sample of finished calls, off the request path;
    /// their scores are stored with the traces.
    #[serde(default)]
    pub online: Vec<OnlineEval>,
}

/// One online evaluator: an assertion (an eval file's `type`, `value`, `threshold`, ...)
/// applied to a sample of the calls that match its filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineEval {
    /// The score's name on the trace.
    pub name: String,
    /// Share of matching calls scored, 0 to 1.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f64,
    /// Only calls to this model alias.
    #[serde(default)]
    pub model: Option<String>,
    /// Only calls rendered from this registry prompt.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The judge alias for model-graded assertions.
    #[serde(default)]
    pub judge: Option<String>,
    /// The assertion, as in an eval file: `{ type = "llm-rubric", value = "..." }`.
    pub assert: serde_json::Value,
}

fn default_sample_rate() -> f64 {
    1.0
}

/// The prompt registry as `keel serve` reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsConfig {
    /// Seconds a label or split read from the store is used before it is read again: how
    /// long a label moved by another process (`keel prompts label`) can go unseen.
    #[serde(default = "default_prompt_cache_ttl")]
    pub cache_ttl_s: f64,
}

impl Default for PromptsConfig {
    fn default() -> Self {
        PromptsConfig { cache_ttl_s: default_prompt_cache_ttl() }
    }
}

fn default_prompt_cache_ttl() -> f64 {
    2.0
}

/// Where `keel serve` finds the agents it runs over HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// A folder of agent files (`*.toml`), relative to the config file.
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: Spanned<String>,
    /// Name of the environment variable holding the key clients must send as a Bearer token.
    pub master_key_env: Option<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// On SIGTERM, how long in-flight requests may take to finish before keel stops anyway.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_s: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            master_key_env: None,
            max_body_bytes: default_max_body_bytes(),
            drain_timeout_s: default_drain_timeout(),
        }
    }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_LISTEN.to_string())
}

fn default_drain_timeout() -> f64 {
    60.0
}

fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file; relative paths are relative to the config file. Default: keel's data folder.
    pub path: Option<PathBuf>,
    /// Keep request and response bodies in traces.
    #[serde(default = "yes")]
    pub log_bodies: bool,
    /// Traces waiting for the writer before requests wait for it (back-pressure).
    #[serde(default = "default_trace_buffer")]
    pub trace_buffer: usize,
    /// Replace PII and secrets (emails, phones, cards, IBANs, SSNs, IPs, URLs, API keys) in
    /// stored request and response bodies with `<ENTITY>` before they are written.
    #[serde(default)]
    pub redact_pii: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: None, log_bodies: true, trace_buffer: default_trace_buffer(), redact_pii: false }
    }
}

fn yes() -> bool {
    true
}

fn default_trace_buffer() -> usize {
    65_536
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    /// A model running inside keel (GGUF through llama.cpp); routes name a catalog model
    /// (`smollm2-135m`) or a file path.
    Local,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Local => "local",
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
            ProviderKind::Local => "",
        }
    }
}

/// One provider, tagged by `kind`: each kind has its own settings, so a setting another kind
/// has (`threads` on an `openai` provider) is an error that names the line.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind")]
pub enum ProviderConfig {
    #[serde(rename = "openai")]
    OpenAi(HttpProviderConfig),
    #[serde(rename = "anthropic")]
    Anthropic(HttpProviderConfig),
    #[serde(rename = "gemini")]
    Gemini(HttpProviderConfig),
    #[serde(rename = "local")]
    Local(LocalProviderConfig),
}

/// The settings of a provider keel reaches over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProviderConfig {
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Extra headers sent upstream on every request (not secrets: use `api_key_env`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: f64,
    /// Time allowed until the first byte of the answer (the whole answer when not streaming
    /// is bounded by `timeout_s`).
    #[serde(default = "default_first_token_timeout")]
    pub first_token_timeout_s: f64,
    #[serde(default = "default_total_timeout")]
    pub timeout_s: f64,
    /// Most calls in flight to this provider at once; more wait their turn inside keel.
    pub max_concurrency: Option<usize>,
}

/// The settings of a model inside keel (`kind = "local"`, llama.cpp).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalProviderConfig {
    #[serde(default = "default_first_token_timeout")]
    pub first_token_timeout_s: f64,
    #[serde(default = "default_total_timeout")]
    pub timeout_s: f64,
    /// Most calls in flight at once; more wait their turn inside keel.
    pub max_concurrency: Option<usize>,
    /// CPU threads for llama.cpp (default: all cores).
    pub threads: Option<usize>,
    /// Sequences decoded together (default 8).
    pub slots: Option<usize>,
    /// Context window per sequence, in tokens (default 2048).
    pub context_tokens: Option<u32>,
    /// Requests that may wait for a free sequence (default 64); more get a 503.
    pub max_queue: Option<usize>,
    /// The most tokens one answer may generate; a request that asks for more, or names no
    /// limit, gets this many (default: whatever room the context window has left). Agents
    /// such as Codex name no limit, and a small model can ramble until its context is full.
    pub max_output_tokens: Option<u32>,
}

impl Default for LocalProviderConfig {
    fn default() -> Self {
        LocalProviderConfig {
            first_token_timeout_s: default_first_token_timeout(),
            timeout_s: default_total_timeout(),
            max_concurrency: None,
            threads: None,
            slots: None,
            context_tokens: None,
            max_queue: None,
            max_output_tokens: None,
        }
    }
}

impl HttpProviderConfig {
    /// A provider at `base_url` with every other setting at its default.
    pub fn at(base_url: &str) -> HttpProviderConfig {
        HttpProviderConfig {
            base_url: Some(base_url.to_string()),
            api_key_env: None,
            headers: BTreeMap::new(),
            connect_timeout_s: default_connect_timeout(),
            first_token_timeout_s: default_first_token_timeout(),
            timeout_s: default_total_timeout(),
            max_concurrency: None,
        }
    }
}

impl ProviderConfig {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderConfig::OpenAi(_) => ProviderKind::OpenAi,
            ProviderConfig::Anthropic(_) => ProviderKind::Anthropic,
            ProviderConfig::Gemini(_) => ProviderKind::Gemini,
            ProviderConfig::Local(_) => ProviderKind::Local,
        }
    }

    /// The HTTP settings of a hosted provider; `None` for a local one.
    pub fn http(&self) -> Option<&HttpProviderConfig> {
        match self {
            ProviderConfig::OpenAi(http) | ProviderConfig::Anthropic(http) | ProviderConfig::Gemini(http) => Some(http),
            ProviderConfig::Local(_) => None,
        }
    }

    /// The upstream's URL without a trailing slash (the kind's default when none is set).
    pub fn base_url(&self) -> &str {
        let set = self.http().and_then(|http| http.base_url.as_deref());
        set.unwrap_or(self.kind().default_base_url()).trim_end_matches('/')
    }

    /// Seconds allowed until the first token, and for the whole answer.
    pub fn timeouts(&self) -> (f64, f64) {
        match self {
            ProviderConfig::OpenAi(http) | ProviderConfig::Anthropic(http) | ProviderConfig::Gemini(http) => (http.first_token_timeout_s, http.timeout_s),
            ProviderConfig::Local(local) => (local.first_token_timeout_s, local.timeout_s),
        }
    }

    pub fn max_concurrency(&self) -> Option<usize> {
        match self {
            ProviderConfig::OpenAi(http) | ProviderConfig::Anthropic(http) | ProviderConfig::Gemini(http) => http.max_concurrency,
            ProviderConfig::Local(local) => local.max_concurrency,
        }
    }
}

fn default_connect_timeout() -> f64 {
    10.0
}

fn default_first_token_timeout() -> f64 {
    60.0
}

fn default_total_timeout() -> f64 {
    600.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Fallback,
    Weighted,
    LeastBusy,
    Latency,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Weighted => "weighted",
            Strategy::LeastBusy => "least-busy",
            Strategy::Latency => "latency",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub strategy: Strategy,
    pub routes: Spanned<Vec<RouteConfig>>,
    /// Retries on the same route before falling over to the next one.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First backoff; each retry doubles it, with full jitter.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// A `Retry-After` longer than this falls over to the next route instead of waiting.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after_s: f64,
    /// The most output tokens a call through this alias is counted for when it sets no
    /// `max_tokens`: what budgets and token limits reserve before the call (default 4096).
    pub max_output_tokens: Option<u32>,
}

fn default_retries() -> u32 {
    1
}

fn default_retry_base_ms() -> u64 {
    200
}

fn default_max_retry_after() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub provider: Spanned<String>,
    pub model: String,
    #[serde(default = "default_weight")]
    pub weight: Spanned<f64>,
}

fn default_weight() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
}

/// A config error, with the line and column it is about when it is about one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Where the unknown key an error names is written, from the table the error points at: a
/// tagged table (a provider) is read whole, so serde's span is the table's, not the key's.
fn unknown_key_at(src: &str, table_start: usize, message: &str) -> Option<usize> {
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    let mut offset = table_start;
    for (idx, line) in src[table_start..].split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if idx > 0 && trimmed.starts_with('[') {
            return None;
        }
        if trimmed.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}

/// Says which provider kind has a setting, when the error is one another kind lacks.
fn with_kind_hint(message: String) -> String {
    const LOCAL_ONLY: &[&str] = &["threads", "slots", "context_tokens", "max_queue", "max_output_tokens"];
    const HTTP_ONLY: &[&str] = &["base_url", "api_key_env", "headers", "connect_timeout_s"];
    let Some(key) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) else { return message };
    if LOCAL_ONLY.contains(&key) {
        format!("{message} (`{key}` is a setting of `kind = \"local\"` providers only)")
    } else if HTTP_ONLY.contains(&key) {
        format!("{message} (`{key}` is a setting of hosted providers, not of `kind = \"local\"`)")
    } else {
        message
    }
}

impl Config {
    /// Parses and validates a config file's text.
    pub fn from_toml_str(src: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(src).map_err(|err| {
            let message = err.message().trim().to_string();
            let (line, column) = match err.span() {
                Some(span) => {
                    let (line, column) = line_col(src, unknown_key_at(src, span.start, &message).unwrap_or(span.start));
                    (Some(line), Some(column))
                }
                None => (None, None),
            };
            ConfigError { message: with_kind_hint(message), line, column }
        })?;
        config.validate(src)?;
        Ok(config)
    }

    fn validate(&self, src: &str) -> Result<(), ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            if span.is_empty() && span.start == 0 {
                return ConfigError { message, line: None, column: None };
            }
            let (line, column) = line_col(src, span.start);
            ConfigError { message, line: Some(line), column: Some(column) }
        };
        let listen = &self.server.listen;
        if listen.get_ref().parse::<std::net::SocketAddr>().is_err() {
            return Err(at(
                listen.span(),
                format!("server.listen: `{}` is not a socket address; write it like \"127.0.0.1:4000\"", listen.get_ref()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for model in &self.models {
            let name = model.name.get_ref();
            if name.is_empty() {
                return Err(at(model.name.span(), "models.name: a model alias cannot be empty".to_string()));
            }
            if !seen.insert(name.as_str()) {
                return Err(at(model.name.span(), format!("models.name: alias `{name}` is defined twice")));
            }
            if model.routes.get_ref().is_empty() {
                return Err(at(model.routes.span(), format!("models.routes: alias `{name}` has no routes; add at least one")));
            }
            for route in model.routes.get_ref() {
                let provider = route.provider.get_ref();
                if !self.providers.contains_key(provider) {
                    let known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
                    return Err(at(
                        route.provider.span(),
                        format!(
                            "models.routes.provider: alias `{name}` routes to unknown provider `{provider}`; known providers: [{}]",
                            known.join(", ")
                        ),
                    ));
                }
                let weight = *route.weight.get_ref();
                if !(weight > 0.0 && weight.is_finite()) {
                    return Err(at(route.weight.span(), format!("models.routes.weight: must be a positive number, got {weight}")));
                }
            }
        }
        for (name, provider) in &self.providers {
            let (first_token_timeout_s, timeout_s) = provider.timeouts();
            let connect = provider.http().map(|http| ("connect_timeout_s", http.connect_timeout_s));
            for (what, value) in connect.into_iter().chain([("first_token_timeout_s", first_token_timeout_s), ("timeout_s", timeout_s)]) {
                if !(value > 0.0 && value.is_finite()) {
                    return Err(ConfigError {
                        message: format!("providers.{name}.{what}: must be a positive number of seconds, got {value}"),
                        line: None,
                        column: None,
                    });
                }
            }
            if let Some(url) = provider.http().and_then(|http| http.base_url.as_ref())
                && !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError {
                        message: format!("providers.{name}.base_url: `{url}` must start with http:// or https://"),
                        line: None,
                        column: None,
                    });
                }
        }
        let aliases: std::collections::BTreeSet<&str> = self.models.iter().map(|m| m.name.get_ref().as_str()).collect();
        for online in &self.evals.online {
            let fail = |message: String| Err(ConfigError { message: format!("evals.online `{}`: {message}", online.name), line: None, column: None });
            if !(0.0..=1.0).contains(&online.sample_rate) {
                return fail(format!("sample_rate is a share from 0 to 1, not {}", online.sample_rate));
            }
            if !online.assert.get("type").is_some_and(serde_json::Value::is_string) {
                return fail("assert needs a `type`, e.g. assert = { type = \"llm-rubric\", value = \"is polite\" }".into());
            }
            for (what, alias) in [("model", &online.model), ("judge", &online.judge)] {
                if let Some(alias) = alias.as_deref().filter(|a| !aliases.contains(a)) {
                    return fail(format!("{what} `{alias}` is not a configured model alias"));
                }
            }
        }
        Ok(())
    }

    pub fn model(&self, alias: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|model| model.name.get_ref() == alias)
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::Config;

    fn check_err(src: &str, expect: Expect) {
        let err = Config::from_toml_str(src).unwrap_err();
        expect.assert_eq(&err.to_string());
    }

    #[test]
    fn issue_example_parses() {
        let src = include_str!("../../../examples/keel.toml");
        let config = Config::from_toml_str(src).unwrap();
        assert_eq!(config.models.len(), 2);
        assert_eq!(config.providers["anthropic"].base_url(), "https://api.anthropic.com");
        assert_eq!(config.providers["openai"].base_url(), "https://api.openai.com/v1");
    }

    #[test]
    fn errors_point_at_the_line() {
        check_err(
            "[server]\nlisten = \"nope\"\n",
            expect![[r#"line 2, column 10: server.listen: `nope` is not a socket address; write it like "127.0.0.1:4000""#]],
        );
        check_err(
            "[providers.a]\nkind = \"openai\"\n\n[[models]]\nname = \"x\"\nroutes = [{ provider = \"b\", model = \"m\" }]\n",
            expect![[r#"line 6, column 24: models.routes.provider: alias `x` routes to unknown provider `b`; known providers: [a]"#]],
        );
        check_err(
            "[providers.a]\nkind = \"openia\"\n",
            expect![[r#"line 2, column 8: unknown variant `openia`, expected one of `openai`, `anthropic`, `gemini`, `local`"#]],
        );
        check_err(
            "[providers.a]\nkind = \"openai\"\napi_kye_env = \"X\"\n",
            expect![[r#"line 3, column 1: unknown field `api_kye_env`, expected one of `base_url`, `api_key_env`, `headers`, `connect_timeout_s`, `first_token_timeout_s`, `timeout_s`, `max_concurrency`"#]],
        );
        check_err(
            "[providers.a]\nkind = \"openai\"\nbase_url = \"http://x\"\n  threads = 4\n",
            expect![[r#"line 4, column 3: unknown field `threads`, expected one of `base_url`, `api_key_env`, `headers`, `connect_timeout_s`, `first_token_timeout_s`, `timeout_s`, `max_concurrency` (`threads` is a setting of `kind = "local"` providers only)"#]],
        );
        check_err(
            "[providers.a]\nkind = \"openai\"\n[[models]]\nname = \"x\"\nroutes = []\n",
            expect![[r#"line 5, column 10: models.routes: alias `x` has no routes; add at least one"#]],
        );
        check_err(
            "[[models]]\nname = \"x\"\nroutes = [{ provider = \"a\", model = \"m\" }]\n[[models]]\nname = \"x\"\nroutes = [{ provider = \"a\", model = \"m\" }]\n[providers.a]\nkind = \"gemini\"\n",
            expect![[r#"line 5, column 8: models.name: alias `x` is defined twice"#]],
        );
    }
}
