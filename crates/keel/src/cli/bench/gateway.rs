//! `keel bench gateway`: starts a fake upstream and a real `keel serve` (traces on) as child
//! processes, then measures the same workload sent straight to the upstream and through
//! keel: latency at one connection, throughput at many, and keel's resident memory.

use super::*;

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
