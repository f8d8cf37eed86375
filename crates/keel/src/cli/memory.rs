//! `keel memory …`: look at, search, add, edit and forget what agents remember.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use keel_agent::{Memory, MemorySpec};
use keel_store::Store;

use crate::settings::{self, Settings};
use crate::table::{self, Cell};
use clap::Subcommand;

pub struct Scope {
    pub agent: Option<String>,
    pub user: Option<String>,
    pub embedding_model: String,
}

async fn open(config: Option<&Path>, pull: bool) -> anyhow::Result<(Arc<Store>, Arc<keel_llm::Router>)> {
    let settings: Settings = settings::load(config)?;
    crate::local::ensure_models(&settings.config, pull).await?;
    let router = Arc::new(crate::local::router(&settings.config).context("could not set up the providers")?);
    Ok((Arc::new(Store::open(&settings.store_path())?), router))
}

fn store_only(config: Option<&Path>) -> anyhow::Result<Store> {
    Ok(Store::open(&settings::load(config)?.store_path())?)
}

fn rows(memories: &[(keel_store::MemoryRecord, Option<f64>)]) -> String {
    let rows: Vec<Vec<Cell>> = memories
        .iter()
        .map(|(m, score)| {
            vec![
                Cell::new(&m.id).color(table::DIM),
                Cell::new(&m.agent),
                Cell::new(m.user_id.clone().unwrap_or_else(|| "-".into())),
                Cell::num(format!("{:.0}", m.importance * 10.0)),
                Cell::num(score.map_or(String::new(), |s| format!("{s:.2}"))),
                Cell::new(crate::cli::gateway::format_time(m.used_ms)),
                // Where the fact came from, for the guard: untrusted facts taint the runs that recall them.
                match &m.label {
                    Some(label) if label.trusted => Cell::new("trusted").color(table::GREEN),
                    Some(_) => Cell::new("untrusted").color(table::RED),
                    None => Cell::new("unknown").color(table::YELLOW),
                },
                Cell::new(&m.text),
            ]
        })
        .collect();
    table::render(&["ID", "AGENT", "USER", "IMP", "SCORE", "LAST USED", "TRUST", "FACT"], &rows)
}

/// `keel memory list`.
pub fn list(config: Option<&Path>, scope: &Scope, json: bool) -> anyhow::Result<()> {
    let store = store_only(config)?;
    let all_users = scope.user.is_none();
    let memories = store.memories(scope.agent.as_deref(), scope.user.as_deref(), all_users)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&memories)?);
    } else if memories.is_empty() {
        println!("nothing is remembered yet");
    } else {
        let with: Vec<_> = memories.into_iter().map(|m| (m, None)).collect();
        print!("{}", rows(&with));
    }
    Ok(())
}

fn spec(scope: &Scope) -> MemorySpec {
    MemorySpec { embedding_model: scope.embedding_model.clone(), min_relevance: 0.0, ..MemorySpec::default() }
}

/// `keel memory add TEXT --agent A [--user U]`.
pub async fn add(config: Option<&Path>, scope: &Scope, text: &str, importance: u8, pull: bool, json: bool) -> anyhow::Result<()> {
    let Some(agent) = scope.agent.as_deref() else { bail!("--agent is required: the agent that keeps the fact") };
    if !(1..=10).contains(&importance) {
        bail!("--importance is 1 (trivial) to 10 (essential), not {importance}");
    }
    let (store, router) = open(config, pull).await?;
    let spec = spec(scope);
    let memory = Memory { store: &store, model: &*router, spec: &spec, agent, user: scope.user.as_deref() };
    let (record, updated) = memory.save(text, f64::from(importance) / 10.0, scope.user.is_some(), None, keel_guard::Label::user()).await.map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::json!({"id": record.id, "updated": updated}));
    } else {
        println!("{} {}", if updated { "updated" } else { "saved" }, record.id);
    }
    Ok(())
}

/// `keel memory search QUERY --agent A [--user U]`.
pub async fn search(config: Option<&Path>, scope: &Scope, query: &str, k: usize, pull: bool, json: bool) -> anyhow::Result<()> {
    let Some(agent) = scope.agent.as_deref() else { bail!("--agent is required: whose memory to search") };
    if query.trim().is_empty() {
        bail!("the query is empty");
    }
    let (store, router) = open(config, pull).await?;
    let spec = spec(scope);
    let memory = Memory { store: &store, model: &*router, spec: &spec, agent, user: scope.user.as_deref() };
    let found = memory.search(query, k).await.map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else if found.is_empty() {
        println!("nothing relevant is remembered");
    } else {
        let with: Vec<_> = found.into_iter().map(|r| (r.memory, Some(r.score))).collect();
        print!("{}", rows(&with));
    }
    Ok(())
}

/// `keel memory edit ID TEXT`: new words, new embedding, same fact.
pub async fn edit(config: Option<&Path>, id: &str, text: &str, importance: Option<u8>, pull: bool) -> anyhow::Result<()> {
    if text.trim().is_empty() {
        bail!("the new text is empty; to remove the fact use: keel memory forget {id}");
    }
    let (store, router) = open(config, pull).await?;
    let Some(mut record) = store.memory(id)? else { bail!("no memory {id}; see keel memory list") };
    let mut vectors = keel_agent::ChatModel::embed(&*router, &record.model, &[text.to_string()]).await.map_err(anyhow::Error::msg)?;
    record.embedding = vectors.pop().context("the embedding model returned no vector")?;
    record.text = text.trim().to_string();
    if let Some(importance) = importance {
        record.importance = f64::from(importance.clamp(1, 10)) / 10.0;
    }
    store.put_memory(&record)?;
    println!("updated {id}");
    Ok(())
}

/// `keel memory forget ID`.
pub fn forget(config: Option<&Path>, id: &str) -> anyhow::Result<()> {
    store_only(config)?.delete_memory(id).map_err(|_| anyhow::anyhow!("no memory {id}; see keel memory list"))?;
    println!("forgot {id}");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct MemoryScope {
    /// The agent whose memory (its own facts, and those about the user).
    #[arg(long)]
    pub agent: Option<String>,
    /// The user the facts are about.
    #[arg(long)]
    pub user: Option<String>,
    /// The embedding model alias facts are embedded with.
    #[arg(long, default_value = "local-embed")]
    pub embedding_model: String,
}

#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Every fact kept (for one agent and user with --agent/--user), newest first.
    List {
        #[command(flatten)]
        scope: MemoryScope,
        #[arg(long)]
        json: bool,
    },
    /// The facts that best fit a query, ranked as an agent recalls them (relevance,
    /// recency of use, importance).
    Search {
        query: String,
        #[command(flatten)]
        scope: MemoryScope,
        #[arg(short = 'k', default_value_t = 5)]
        k: usize,
        #[arg(long)]
        pull: bool,
        #[arg(long)]
        json: bool,
    },
    /// Keep a fact for an agent (about --user when given); a fact close to one already kept
    /// updates it.
    Add {
        text: String,
        #[command(flatten)]
        scope: MemoryScope,
        /// 1 (trivial) to 10 (essential).
        #[arg(long, default_value_t = 5)]
        importance: u8,
        #[arg(long)]
        pull: bool,
        #[arg(long)]
        json: bool,
    },
    /// Change a fact's words (it is embedded again) or importance.
    Edit {
        id: String,
        text: String,
        #[arg(long)]
        importance: Option<u8>,
        #[arg(long)]
        pull: bool,
    },
    /// Remove a fact.
    Forget { id: String },
}

/// `keel memory …`.
pub async fn run(config: Option<&Path>, command: MemoryCommand) -> anyhow::Result<()> {
    let scope = |s: MemoryScope| Scope { agent: s.agent, user: s.user, embedding_model: s.embedding_model };
    match command {
        MemoryCommand::List { scope: s, json } => list(config, &scope(s), json),
        MemoryCommand::Search { query, scope: s, k, pull, json } => search(config, &scope(s), &query, k, pull, json).await,
        MemoryCommand::Add { text, scope: s, importance, pull, json } => add(config, &scope(s), &text, importance, pull, json).await,
        MemoryCommand::Edit { id, text, importance, pull } => edit(config, &id, &text, importance, pull).await,
        MemoryCommand::Forget { id } => forget(config, &id),
    }
}
