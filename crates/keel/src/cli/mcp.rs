//! `keel mcp …`: serve keel's agents as MCP tools (stdio or Streamable HTTP), and look at
//! the MCP servers an agent file names: their tools, resources and prompts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keel_agent::{AgentDef, McpServer};
use keel_server::mcp::AgentTools;
use keel_store::Store;
use rmcp::ServiceExt;

use crate::settings::{self, Settings};
use crate::table::{self, Cell};
use clap::Subcommand;

/// `keel mcp serve`: the agents of `--agents DIR` (else `agents.dir`) as MCP tools.
pub async fn serve(config: Option<&Path>, agents_dir: Option<PathBuf>, http: Option<SocketAddr>, pull: bool) -> anyhow::Result<()> {
    let settings: Settings = settings::load(config)?;
    let Some(dir) = agents_dir.or_else(|| settings.agents_dir()) else {
        bail!("no agents to serve: pass --agents DIR or set [agents] dir in keel.toml");
    };
    crate::local::ensure_models(&settings.config, pull).await?;
    let router = Arc::new(crate::local::router(&settings.config).context("could not set up the providers")?);
    let store = Arc::new(Store::open(&settings.store_path())?);
    let mut agents = keel_server::agents::Agents::load(&dir, store, router)?;
    agents.collections = Some(std::sync::Arc::new(keel_rag::Collections::new(crate::cli::rag::root())));
    if agents.agents.is_empty() {
        bail!("{} holds no agent files (*.toml)", dir.display());
    }
    let tools = AgentTools::new(Arc::new(agents));
    match http {
        None => {
            // Standard output is the protocol channel: logs go to standard error only.
            let service = tools.serve(rmcp::transport::stdio()).await.context("the MCP client did not complete its handshake")?;
            service.waiting().await.context("the MCP session ended with an error")?;
        }
        Some(addr) => {
            let app = axum::Router::new().nest_service("/mcp", tools.http_service());
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("could not listen on {addr}"))?;
            let local = listener.local_addr()?;
            eprintln!("keel MCP server on http://{local}/mcp");
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(crate::cli::serve::signalled(shutdown.clone()));
            axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
        }
    }
    Ok(())
}

fn servers_of(file: &Path) -> anyhow::Result<Vec<McpServer>> {
    let def = AgentDef::load(file)?;
    let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if def.mcp.is_empty() {
        bail!("{} names no MCP servers (add an [mcp.NAME] table)", file.display());
    }
    Ok(def.mcp.iter().map(|(name, spec)| McpServer::new(name, spec, base)).collect())
}

fn server_of(file: &Path, name: &str) -> anyhow::Result<McpServer> {
    let servers = servers_of(file)?;
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    servers
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| format!("{} has no MCP server `{name}`; it has: {}", file.display(), names.join(", ")))
}

/// `keel mcp list AGENT`: every server of an agent file, with what it offers.
pub async fn list(file: &Path, json: bool) -> anyhow::Result<()> {
    let servers = servers_of(file)?;
    let listings = futures_util::future::join_all(servers.iter().map(|s| s.listing())).await;
    if json {
        let out: Vec<serde_json::Value> = servers
            .iter()
            .zip(&listings)
            .map(|(server, listing)| match listing {
                Ok(listing) => serde_json::to_value(listing).unwrap_or_default(),
                Err(err) => serde_json::json!({"server": server.name, "error": err.to_string()}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut failed = 0;
    for (server, listing) in servers.iter().zip(listings) {
        match listing {
            Err(err) => {
                failed += 1;
                println!("{} {}: {err}\n", table::paint("✘", table::RED), server.name);
            }
            Ok(listing) => {
                println!(
                    "{} {} — {} (MCP {})",
                    table::paint("●", table::GREEN),
                    table::paint(&listing.server, table::BOLD),
                    listing.implementation.as_deref().unwrap_or("unnamed server"),
                    listing.protocol
                );
                let mut rows = Vec::new();
                for (kind, items) in [("tool", &listing.tools), ("resource", &listing.resources), ("prompt", &listing.prompts)] {
                    for (name, about) in items {
                        let shown = if kind == "tool" { format!("{}__{name}", listing.server) } else { name.clone() };
                        rows.push(vec![Cell::new(kind).color(table::DIM), Cell::new(shown), Cell::new(first_line(about, 90))]);
                    }
                }
                print!("{}", table::render(&["KIND", "NAME", "ABOUT"], &rows));
                println!();
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of the MCP servers could not be reached");
    }
    Ok(())
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max { format!("{}…", line.chars().take(max).collect::<String>()) } else { line.to_string() }
}

/// `keel mcp read AGENT SERVER URI`.
pub async fn read(file: &Path, server: &str, uri: &str) -> anyhow::Result<()> {
    let text = server_of(file, server)?.read_resource(uri).await.map_err(anyhow::Error::msg)?;
    println!("{text}");
    Ok(())
}

/// `keel mcp prompt AGENT SERVER NAME [--arg K=V]`.
pub async fn prompt(file: &Path, server: &str, name: &str, args: &[String]) -> anyhow::Result<()> {
    let mut arguments = serde_json::Map::new();
    for pair in args {
        let Some((key, value)) = pair.split_once('=') else { bail!("--arg takes NAME=VALUE (got `{pair}`)") };
        arguments.insert(key.to_string(), serde_json::Value::String(value.to_string()));
    }
    let text = server_of(file, server)?.get_prompt(name, arguments).await.map_err(anyhow::Error::msg)?;
    println!("{text}");
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve every agent file of a folder as an MCP tool (input: `request`, optional
    /// `vars`; output: the agent's answer). Over stdio by default, for MCP clients that
    /// start keel themselves; `--http ADDR` serves Streamable HTTP at http://ADDR/mcp.
    /// (`keel serve` also serves them at /mcp when `[agents] dir` is set.)
    Serve {
        /// The folder of agent files (default: agents.dir of the config).
        #[arg(long, value_name = "DIR")]
        agents: Option<PathBuf>,
        /// Serve Streamable HTTP on this address instead of stdio.
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        /// Pull the local models the config needs when they are not on disk yet.
        #[arg(long)]
        pull: bool,
    },
    /// Connect to every MCP server an agent file names and list its tools (as the agent
    /// sees them), resources and prompts, with the protocol version each one speaks.
    List {
        /// The agent file.
        agent: String,
        #[arg(long)]
        json: bool,
    },
    /// Read a resource of one of an agent's MCP servers.
    Read {
        agent: String,
        server: String,
        uri: String,
    },
    /// Get a prompt of one of an agent's MCP servers, filled with `--arg NAME=VALUE`.
    Prompt {
        agent: String,
        server: String,
        name: String,
        #[arg(long = "arg", value_name = "NAME=VALUE")]
        args: Vec<String>,
    },
}

/// `keel mcp …`.
pub async fn run(config: Option<&Path>, command: McpCommand) -> anyhow::Result<()> {
    use crate::cli::agents::find_agent;
    match command {
        McpCommand::Serve { agents, http, pull } => serve(config, agents, http, pull).await,
        McpCommand::List { agent, json } => list(&find_agent(&agent)?, json).await,
        McpCommand::Read { agent, server, uri } => read(&find_agent(&agent)?, &server, &uri).await,
        McpCommand::Prompt { agent, server, name, args } => prompt(&find_agent(&agent)?, &server, &name, &args).await,
    }
}
