//! The keel binary: command-line parsing and dispatch to the commands.
#![expect(clippy::print_stdout, clippy::print_stderr, reason = "the CLI talks to the terminal")]

mod cli;
mod local;
mod settings;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc: measured about 10% of keel's CPU under load went to glibc malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// keel: the AI engineering stack in one binary.
///
/// Point any OpenAI or Anthropic SDK at `keel serve` and reach every configured model
/// through one endpoint, with routing, fallbacks, retries, cost and a trace of every call.
#[derive(Debug, Parser)]
#[command(name = "keel", version, propagate_version = true)]
struct Cli {
    /// Config file (TOML). Default: $KEEL_CONFIG, else ./keel.toml when present, else none.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI- and Anthropic-compatible API.
    Serve {
        /// Address to listen on (overrides server.listen; default 127.0.0.1:4000).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Pull the local models the config needs when they are not on disk yet.
        #[arg(long)]
        pull: bool,
    },
    /// Send one prompt to a model and stream the answer to the terminal.
    Chat {
        /// Model alias from the config (default: the first one).
        #[arg(long, short = 'm')]
        model: Option<String>,
        /// A system prompt.
        #[arg(long, short = 's')]
        system: Option<String>,
        /// Upper bound on the answer's tokens.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Pull the local model first when it is not on disk yet.
        #[arg(long)]
        pull: bool,
        /// The prompt; `-` reads it from standard input.
        prompt: String,
    },
    /// List the configured model aliases and their routes; pull and list local models.
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<cli::gateway::ModelsCommand>,
    },
    /// Show recent traces: tokens, cost, latency and errors of each call.
    Traces {
        /// Print JSON (one array) instead of a table; bodies included.
        #[arg(long)]
        json: bool,
        /// How many traces, newest first.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Show one trace in full (JSON, bodies included).
        #[arg(long, value_name = "TRACE_ID")]
        id: Option<String>,
    },
    /// Work with the config file.
    Config {
        #[command(subcommand)]
        command: cli::gateway::ConfigCommand,
    },
    /// Benchmarks that print figures and ratios against a peer measured in the same run.
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
    /// Agents: write a starter file, run one.
    Agent {
        #[command(subcommand)]
        command: cli::agents::AgentCommand,
    },
    /// Workflows: agents as nodes of a graph over a typed state.
    Workflow {
        #[command(subcommand)]
        command: cli::agents::WorkflowCommand,
    },
    /// Agent runs: list, inspect, approve or deny a paused call, resume after a crash.
    Runs {
        #[command(subcommand)]
        command: cli::agents::RunsCommand,
    },
    /// Long-term memory: list, search, add, edit and forget the facts agents keep.
    Memory {
        #[command(subcommand)]
        command: cli::memory::MemoryCommand,
    },
    /// The prompt registry: push versions, label them (`production` is the default), split
    /// traffic between labels for A/B tests, show, diff and render them.
    Prompts {
        #[command(subcommand)]
        command: cli::prompts::PromptsCommand,
    },
    /// Datasets for evals: versioned rows from JSONL/CSV files, by hand, or copied from
    /// production traces (PII redacted); every change makes a new immutable version.
    Datasets {
        #[command(subcommand)]
        command: cli::datasets::DatasetsCommand,
    },
    /// Evals: run an eval file (keel TOML or promptfoo YAML) over prompts × models × test
    /// cases with deterministic and LLM-judge scorers; cached, resumable, CI exit codes.
    Eval {
        #[command(subcommand)]
        command: cli::evals::EvalCommand,
    },
    /// Virtual keys (`sk-keel-…`): each belongs to a team and may carry allowed models, rate
    /// limits, a budget and an expiry. The secret is shown once; keel stores its hash.
    Keys {
        #[command(subcommand)]
        command: cli::keys::KeysCommand,
    },
    /// Teams, which may nest under an org: their budgets and rate limits apply to every key
    /// they hold (and to the keys of teams under them).
    Teams {
        #[command(subcommand)]
        command: cli::keys::TeamsCommand,
    },
    /// What calls cost, from the traces: summed by key, team, model alias or day.
    Spend {
        /// key, team, model or day.
        #[arg(long, default_value = "key")]
        by: String,
        /// The last this many days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long)]
        json: bool,
    },
    /// Export data: fine-tuning JSONL from scored traces and passing eval cells.
    Export {
        #[command(subcommand)]
        command: cli::datasets::ExportCommand,
    },
    /// Score a trace (as `POST /v1/feedback` does): VALUE is a number, true/false or a
    /// category. Scores show in `keel traces` and filter exports (`--min-score NAME=VALUE`).
    Feedback {
        trace: String,
        name: String,
        value: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// RAG: ingest documents into a collection, search it, measure retrieval quality.
    Rag {
        #[command(subcommand)]
        command: cli::rag::RagCommand,
    },
    /// Attack a model alias (through the gateway) or an agent file (through its runs) with
    /// keel's probe library: direct and indirect injection, encoding and Unicode smuggling,
    /// markdown-image exfiltration, system-prompt extraction, PII leakage, excessive agency.
    /// Each answer is judged by a rule; prints pass/fail per category and writes an HTML
    /// report with every failing transcript. An agent's tools really run: point it at a
    /// sandbox. Example: keel redteam local --html report.html
    Redteam(cli::redteam::RedteamArgs),
    /// The guard: check an agent's information-flow policies on a call without running it.
    Guard {
        #[command(subcommand)]
        command: cli::guard::GuardCommand,
    },
    /// MCP: serve keel's agents as MCP tools; list, read and prompt an agent's MCP servers.
    Mcp {
        #[command(subcommand)]
        command: cli::mcp::McpCommand,
    },
    /// Serve a deterministic fake upstream (OpenAI, Anthropic, Gemini wire formats) for tests.
    #[command(hide = true)]
    FakeUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Require this API key on every request.
        #[arg(long)]
        key: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Serve { .. }));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = std::env::var("KEEL_WORKERS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0) {
        builder.worker_threads(workers);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let config = cli.config.as_deref();
        match cli.command {
            Command::Serve { listen, pull } => cli::serve::run(config, listen, pull).await,
            Command::Chat { model, system, max_tokens, pull, prompt } => cli::gateway::chat(config, model, system, max_tokens, pull, prompt).await,
            Command::Models { json, command } => cli::gateway::models(config, json, command).await,
            Command::Traces { json, limit, id } => cli::gateway::traces(config, json, limit, id.as_deref()),
            Command::Config { command: cli::gateway::ConfigCommand::Check { file } } => cli::gateway::config_check(file.as_deref().or(config)),
            Command::Bench { command } => cli::bench::run(command).await,
            Command::Guard { command } => cli::guard::run(command),
            Command::Redteam(args) => cli::redteam::redteam(config, args).await,
            Command::Agent { command } => cli::agents::agent(config, command).await,
            Command::Workflow { command } => cli::agents::workflow(config, command).await,
            Command::Runs { command } => cli::agents::runs(config, command).await,
            Command::Memory { command } => cli::memory::run(config, command).await,
            Command::Prompts { command } => cli::prompts::run(config, command),
            Command::Datasets { command } => cli::datasets::datasets(config, command),
            Command::Eval { command } => cli::evals::eval(config, command).await,
            Command::Spend { by, days, json } => cli::keys::spend(config, &by, days, json),
            Command::Keys { command } => cli::keys::keys(config, command),
            Command::Teams { command } => cli::keys::teams(config, command),
            Command::Export { command } => cli::datasets::export(config, command),
            Command::Feedback { trace, name, value, comment } => cli::datasets::feedback(config, &trace, &name, &value, comment),
            Command::Rag { command } => cli::rag::run(config, command).await,
            Command::Mcp { command } => cli::mcp::run(config, command).await,
            Command::FakeUpstream { listen, key } => cli::gateway::fake_upstream(listen, key).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<cli::Exit>().is_some() => {
            std::process::ExitCode::from(err.downcast_ref::<cli::Exit>().map_or(1, |exit| exit.0))
        }
        Err(err) => {
            eprintln!("{} {err:#}", table::paint("error:", table::RED));
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // Clashing flags and other mistakes clap only finds when a command is used.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn each_command_describes_itself() {
        let cli = <super::Cli as clap::CommandFactory>::command();
        let about = |name: &str| cli.find_subcommand(name).and_then(|c| c.get_about()).map(|a| a.to_string()).unwrap_or_default();
        assert!(about("agent").starts_with("Agents: write a starter file"), "{}", about("agent"));
        assert!(!about("agent").contains("fake upstream"), "{}", about("agent"));
        assert!(about("fake-upstream").contains("fake upstream"), "{}", about("fake-upstream"));
    }
}
