//! Starts the fake upstream and a keel server in front of it, with a trace store in a temp
//! folder, and offers helpers to call it.

use std::net::SocketAddr;
use std::sync::Arc;

use keel_core::config::Config;
use keel_llm::Router;
use keel_llm::sse::SseDecoder;
use keel_server::fake::{self, FakeState};
use keel_server::{AppState, metrics::Metrics};
use keel_store::{Store, Trace, TraceWriter};
use secrecy::SecretString;
use serde_json::Value;

pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789abcdef";

pub struct Harness {
    pub fake: Arc<FakeState>,
    pub base: String,
    pub store: Arc<Store>,
    writer: Option<TraceWriter>,
    pub client: reqwest::Client,
}

pub struct Options {
    pub extra: String,
    pub master_key: Option<&'static str>,
    pub log_bodies: bool,
    pub max_body_bytes: usize,
    pub key_given_to_keel: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options { extra: String::new(), master_key: None, log_bodies: true, max_body_bytes: 1 << 20, key_given_to_keel: UPSTREAM_KEY }
    }
}

pub async fn start(extra: &str) -> Harness {
    start_with(Options { extra: extra.to_string(), ..Options::default() }).await
}

pub async fn start_with(options: Options) -> Harness {
    let (fake_addr, fake) = fake::spawn(Some(UPSTREAM_KEY.to_string())).await.unwrap();
    let config_src = config_for(fake_addr, &options.extra.replace("FAKE_ADDR", &fake_addr.to_string()));
    let config = Config::from_toml_str(&config_src).unwrap_or_else(|err| panic!("{err}\n{config_src}"));
    let key = options.key_given_to_keel.to_string();
    let router = Router::from_config(&config, &|name| (name == "FAKE_KEY").then(|| key.clone())).unwrap();
    let dir = std::env::temp_dir().join(format!("keel-it-{}-{}", std::process::id(), fastrand::u64(..)));
    let store = Arc::new(Store::open(&dir.join("keel.db")).unwrap());
    let writer = TraceWriter::spawn(store.clone(), 1024);
    let access = Arc::new(keel_teams::Directory::open(store.clone()).unwrap());
    keel_server::access::keep_fresh(access.clone());
    let app = Arc::new(AppState {
        router: Arc::new(router),
        traces: writer.sink(),
        store: store.clone(),
        metrics: Metrics::default(),
        master_key: options.master_key.map(SecretString::from),
        access,
        log_bodies: options.log_bodies,
        agents: None,
        rag: Arc::new(keel_rag::Collections::new(dir.join("rag"))),
        prompts: Arc::new(keel_eval::Registry::new(store.clone(), std::time::Duration::from_secs_f64(config.prompts.cache_ttl_s))),
        online: keel_server::evals::Online::new(&config.evals.online).unwrap(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, keel_server::router(app, options.max_body_bytes)).await });
    Harness { fake, base: format!("http://{addr}"), store, writer: Some(writer), client: reqwest::Client::new() }
}

fn config_for(fake: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[providers.oa]
kind = "openai"
base_url = "http://{fake}/v1"
api_key_env = "FAKE_KEY"

[providers.an]
kind = "anthropic"
base_url = "http://{fake}"
api_key_env = "FAKE_KEY"

[providers.ge]
kind = "gemini"
base_url = "http://{fake}"
api_key_env = "FAKE_KEY"

[[models]]
name = "oa"
routes = [{{ provider = "oa", model = "gpt-4o-mini" }}]

[[models]]
name = "an"
routes = [{{ provider = "an", model = "claude-haiku-4-5" }}]

[[models]]
name = "ge"
routes = [{{ provider = "ge", model = "gemini-2.5-flash" }}]
{extra}
"#
    )
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The SSE events of a streamed reply: (event name, data).
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        let mut decoder = SseDecoder::default();
        let mut out = Vec::new();
        decoder.push(self.text.as_bytes(), &mut out);
        decoder.finish(&mut out);
        out.into_iter().map(|e| (e.event, e.data)).collect()
    }

    pub fn data(&self) -> Vec<Value> {
        self.events().into_iter().filter(|(_, d)| d != "[DONE]").map(|(_, d)| serde_json::from_str(&d).unwrap()).collect()
    }
}

impl Harness {
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, body.to_string().into_bytes(), &[]).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.client.post(format!("{}{path}", self.base)).header("content-type", "application/json").body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        Self::reply(response).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        Self::reply(response).await
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, json, text }
    }

    /// The last request body the fake upstream received.
    pub fn last_upstream(&self) -> (String, Value) {
        self.fake.requests_seen().pop().expect("the upstream saw a request")
    }

    /// Flushes the trace writer and returns every trace, newest first.
    pub async fn traces(&mut self) -> Vec<Trace> {
        if let Some(writer) = self.writer.take() {
            writer.shutdown().await;
        }
        self.store.recent_traces(10_000).unwrap()
    }
}
