//! `keel bench gateway`: keel's proxy hop against nginx's, in one run. nginx serves a fixed
//! Chat Completions answer as the upstream; a second nginx is a plain reverse proxy in front
//! of it (keep-alive upstream pool), the reference hop; a real `keel serve` (traces and
//! metrics on) is the other. wrk drives all three with the same request: latency on one
//! connection, requests/s on many, in alternating rounds so drift hits every side alike.
//! LiteLLM joins when its `litellm` command is installed.

use super::*;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 4.0)]
    duration_s: f64,
    /// Alternating rounds; each figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent connections for the throughput figure.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Also measure a keel that checks a virtual key, RPM and TPM limits (on the key and its
    /// team) and a team budget on every request, against the plain keel in the same run.
    #[arg(long, alias = "limits")]
    keys: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"hello"}]}"#;

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for(url: &str, seconds: u64, key: Option<&str>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..seconds * 40 {
        let mut request = client.post(url).header("content-type", "application/json").body(BODY);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if request.send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("{url} did not answer")
}

/// An nginx master process, stopped with its workers when dropped (a killed master would
/// leave its workers running).
struct Nginx(Child);

impl Drop for Nginx {
    #[expect(unsafe_code, reason = "kill(2) on a child's pid")]
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: a plain signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
}

/// Starts nginx with `server` as its only server block.
fn nginx(nginx: &PathBuf, dir: &std::path::Path, name: &str, workers: &str, upstream: &str, server: &str) -> anyhow::Result<Nginx> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {pid};\nerror_log {err} warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n{upstream}\n{server}\n}}\n",
        pid = prefix.join("nginx.pid").display(),
        err = prefix.join("error.log").display(),
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("could not start {}", nginx.display()))?;
    Ok(Nginx(child))
}

/// Writes a keel config in `dir` with the upstream as its one alias; the URL keel will serve.
fn keel_config(dir: &std::path::Path, upstream: u16) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[store]\npath = \"bench.db\"\n\n[providers.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{upstream}/v1\"\n\n[[models]]\nname = \"bench\"\nroutes = [{{ provider = \"up\", model = \"bench\" }}]\n\n[prices.bench]\ninput = 0.15\noutput = 0.6\n"
    );
    let path = dir.join("keel.toml");
    std::fs::write(&path, config)?;
    Ok(format!("http://127.0.0.1:{port}/v1/chat/completions"))
}

/// `keel serve` on the config in `dir`.
fn start_keel(dir: &std::path::Path) -> anyhow::Result<Child> {
    let path = dir.join("keel.toml");
    Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .current_dir(dir)
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("could not start keel serve")
}

async fn spawn_keel(dir: &std::path::Path, upstream: u16) -> anyhow::Result<(Child, String)> {
    let url = keel_config(dir, upstream)?;
    Ok((start_keel(dir)?, url))
}

/// A team with RPM, TPM and a budget, and a key in it with its own limits, made in `dir`'s
/// store before keel starts (the limits are far above what the bench sends: every request is
/// checked against all of them and none is refused). The key's secret.
async fn make_key(dir: &std::path::Path) -> anyhow::Result<String> {
    let keel = |args: &[&str]| {
        let mut command = Command::new(std::env::current_exe().unwrap_or_else(|_| "keel".into()));
        command.arg("--config").arg(dir.join("keel.toml")).args(args).current_dir(dir).env("KEEL_LOG", "warn");
        command
    };
    let team = keel(&["teams", "create", "bench", "--rpm", "1000000000", "--tpm", "1000000000000", "--budget", "1000000000", "--period", "month"]).output().await?;
    if !team.status.success() {
        bail!("keel teams create failed: {}", String::from_utf8_lossy(&team.stderr));
    }
    let key = keel(&["keys", "create", "--team", "bench", "--model", "bench", "--rpm", "1000000000", "--tpm", "1000000000000", "--json"]).output().await?;
    let made: serde_json::Value = serde_json::from_slice(&key.stdout).with_context(|| format!("keel keys create failed: {}", String::from_utf8_lossy(&key.stderr)))?;
    made["key"].as_str().map(str::to_string).context("keel keys create printed no key")
}

/// LiteLLM's proxy with one worker in front of the same upstream, where `litellm` is installed.
async fn spawn_litellm(dir: &std::path::Path, upstream: u16) -> Option<(Child, String)> {
    let litellm = find("litellm")?;
    let port = free_port().ok()?;
    let config = format!(
        "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: none\n"
    );
    let path = dir.join("litellm.yaml");
    std::fs::write(&path, config).ok()?;
    let child = Command::new(litellm)
        .arg("--config")
        .arg(&path)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--num_workers", "1"])
        .env("LITELLM_LOG", "ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    wait_for(&url, 60, None).await.ok()?;
    Some((child, url))
}

/// One wrk run: (p50 µs, p99 µs, requests/s).
async fn wrk(wrk: &PathBuf, script: &std::path::Path, url: &str, connections: usize, duration_s: f64) -> anyhow::Result<(f64, f64, f64)> {
    let threads = connections.clamp(1, 2).to_string();
    let output = Command::new(wrk)
        .args(["-t", &threads, "-c", &connections.to_string(), "-d", &format!("{duration_s}s"), "-s"])
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("could not run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find_map(|line| line.strip_prefix("KEEL-BENCH "));
    let Some(line) = line else { bail!("wrk gave no figures for {url}:\n{text}{}", String::from_utf8_lossy(&output.stderr)) };
    let figures: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [p50, p99, requests, errors, secs] = figures[..] else { bail!("unreadable wrk figures: {line}") };
    if errors > 0.0 {
        bail!("{errors} requests to {url} failed or were not 200");
    }
    Ok((p50, p99, requests / secs))
}

const WRK_SCRIPT: &str = r#"wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("KEEL-BENCH %d %d %d %d %f\n", latency:percentile(50), latency:percentile(99), summary.requests, errors, summary.duration / 1e6))
end
"#;

/// The self-reported `x-keel-overhead-us` over a short sequential run: (p50, p99).
async fn self_reported(url: &str, key: Option<&str>) -> anyhow::Result<(u64, u64)> {
    let client = reqwest::Client::new();
    let mut overheads = Vec::new();
    for _ in 0..1000 {
        let mut request = client.post(url).header("content-type", "application/json").body(BODY);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        if let Some(value) = response.headers().get("x-keel-overhead-us").and_then(|v| v.to_str().ok()?.parse().ok()) {
            overheads.push(value);
        }
        response.bytes().await?;
    }
    overheads.sort_unstable();
    let at = |p: f64| overheads.get(((overheads.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(0);
    Ok((at(0.5), at(0.99)))
}

#[derive(Default)]
struct Side {
    p50: Vec<f64>,
    p99: Vec<f64>,
    rps: Vec<f64>,
}

pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "{} this is a debug build; build with --release for figures worth quoting",
            table::paint("warning:", table::YELLOW)
        );
    }
    let install = "install them with: apt-get install nginx-light wrk";
    let nginx_bin = find("nginx").with_context(|| format!("nginx is the reference proxy and the upstream; {install}"))?;
    let wrk_bin = find("wrk").with_context(|| format!("wrk drives the load; {install}"))?;
    let dir = std::env::temp_dir().join(format!("keel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let (up_port, proxy_port) = (free_port()?, free_port()?);
    let up_server = format!(
        "  server {{\n    listen 127.0.0.1:{up_port};\n    location / {{\n      default_type application/json;\n      return 200 '{ANSWER}';\n    }}\n  }}"
    );
    let _upstream = nginx(&nginx_bin, &dir, "upstream", "1", "", &up_server)?;
    let pool = format!("  upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}");
    let proxy_server = format!(
        "  server {{\n    listen 127.0.0.1:{proxy_port};\n    location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}"
    );
    let _proxy = nginx(&nginx_bin, &dir, "proxy", "auto", &pool, &proxy_server)?;
    let direct_url = format!("http://127.0.0.1:{up_port}/v1/chat/completions");
    let nginx_url = format!("http://127.0.0.1:{proxy_port}/v1/chat/completions");
    let (mut keel, keel_url) = spawn_keel(&dir, up_port).await?;
    for url in [&direct_url, &nginx_url, &keel_url] {
        wait_for(url, 5, None).await?;
    }
    let keel_pid = keel.id().context("keel exited")?;
    let idle_rss = rss_kib(keel_pid);
    let litellm = spawn_litellm(&dir, up_port).await;

    let mut targets: Vec<(&str, String, PathBuf)> = vec![
        ("upstream alone", direct_url, script.clone()),
        ("nginx proxy", nginx_url, script.clone()),
        ("keel", keel_url.clone(), script.clone()),
    ];
    let mut keyed = None;
    let mut keyed_secret = None;
    if args.keys {
        let keyed_dir = dir.join("keyed");
        let url = keel_config(&keyed_dir, up_port)?;
        let secret = make_key(&keyed_dir).await?;
        let child = start_keel(&keyed_dir)?;
        let keyed_script = dir.join("keyed.lua");
        std::fs::write(&keyed_script, WRK_SCRIPT.replace("wrk.headers[\"Content-Type\"]", &format!("wrk.headers[\"Authorization\"] = \"Bearer {secret}\"\nwrk.headers[\"Content-Type\"]")))?;
        wait_for(&url, 10, Some(&secret)).await?;
        targets.push(("keel + key, limits, budget", url, keyed_script));
        keyed = Some(child);
        keyed_secret = Some(secret);
    }
    if let Some((_, url)) = &litellm {
        targets.push(("LiteLLM", url.clone(), script.clone()));
    }
    let mut sides: Vec<Side> = targets.iter().map(|_| Side::default()).collect();
    eprintln!("warming up…");
    for (_, url, script) in &targets {
        wrk(&wrk_bin, script, url, args.connections, 1.0).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Latency first, every side in turn, then throughput: a throughput run leaves keel's trace
    // writer a backlog that would otherwise be written during the next side's latency run.
    for round in 1..=args.rounds {
        eprintln!("latency, round {round}/{}: {:.0} s per side on one connection…", args.rounds, args.duration_s);
        for ((_, url, script), side) in targets.iter().zip(&mut sides) {
            let (p50, p99, _) = wrk(&wrk_bin, script, url, 1, args.duration_s).await?;
            side.p50.push(p50);
            side.p99.push(p99);
        }
    }
    for round in 1..=args.rounds {
        eprintln!("throughput, round {round}/{}: {:.0} s per side on {} connections…", args.rounds, args.duration_s, args.connections);
        for ((_, url, script), side) in targets.iter().zip(&mut sides) {
            let (_, _, rps) = wrk(&wrk_bin, script, url, args.connections, args.duration_s).await?;
            side.rps.push(rps);
            // Let a backlog of traces reach the disk before the next side runs.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let (self50, self99) = self_reported(&keel_url, None).await?;
    // keel's own time with a key, limits and a budget, as it reports it (no wrk or network).
    let keyed_self = match (&keyed_secret, targets.get(3)) {
        (Some(secret), Some((_, url, _))) => Some(self_reported(url, Some(secret)).await?),
        _ => None,
    };
    let loaded_rss = rss_kib(keel_pid);
    let _ = keel.start_kill();
    let _ = keel.wait().await;
    drop(keyed);
    drop(litellm);
    let _ = std::fs::remove_dir_all(&dir);

    let figures: Vec<(f64, f64, f64)> =
        sides.into_iter().map(|side| (median(side.p50), median(side.p99), median(side.rps))).collect();
    let (d50, d99, _) = figures[0];
    let added = |i: usize| (figures[i].0 - d50, figures[i].1 - d99);
    let (n50, n99) = added(1);
    let (k50, k99) = added(2);
    let (nrps, krps) = (figures[1].2, figures[2].2);
    let ratio50 = k50 / n50.max(1.0);
    let ratio99 = k99 / n99.max(1.0);
    let rps_ratio = krps / nrps;
    // The keyed keel against the plain one: µs added at p50, and the share of its throughput.
    let with_keys = args.keys.then(|| (figures[3].0 - figures[2].0, figures[3].2 / krps));
    if args.json {
        let sides: serde_json::Map<String, serde_json::Value> = targets
            .iter()
            .zip(&figures)
            .enumerate()
            .map(|(i, ((name, _, _), (p50, p99, rps)))| {
                let (a50, a99) = added(i);
                (name.to_string(), json!({"p50_us": p50, "p99_us": p99, "rps": rps, "added_p50_us": a50, "added_p99_us": a99}))
            })
            .collect();
        let report = json!({
            "connections": args.connections, "rounds": args.rounds, "duration_s": args.duration_s,
            "sides": sides,
            "keel_vs_nginx": {"added_p50_ratio": ratio50, "added_p99_ratio": ratio99, "rps_ratio": rps_ratio},
            "keel_self_reported_overhead_us": {"p50": self50, "p99": self99},
            "keys_vs_keel": with_keys.map(|(p50, share)| json!({
                "added_p50_us": p50,
                "rps_share": share,
                "self_reported_overhead_us": keyed_self.map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
            })),
            "keel_rss_mb": {"idle": idle_rss.map(|k| k as f64 / 1024.0), "after_load": loaded_rss.map(|k| k as f64 / 1024.0)},
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    for (i, ((name, _, _), (p50, p99, rps))) in targets.iter().zip(&figures).enumerate() {
        let (a50, a99) = added(i);
        let added_cell = |a: f64| if i == 0 { Cell::num("-") } else { Cell::num(format!("+{a:.0}")) };
        rows.push(vec![
            Cell::new(*name),
            Cell::num(format!("{p50:.0}")),
            added_cell(a50),
            Cell::num(format!("{p99:.0}")),
            added_cell(a99),
            Cell::num(format!("{rps:.0}")),
        ]);
    }
    print!("{}", table::render(&["SIDE", "P50 µs", "ADDED", "P99 µs", "ADDED", &format!("REQ/S @{}", args.connections)], &rows));
    let verdict = |ok: bool| if ok { Cell::new("yes").color(table::GREEN) } else { Cell::new("no").color(table::RED) };
    let mut targets_rows = vec![
        vec![Cell::new("added p50, keel / nginx"), Cell::num(format!("{ratio50:.2}x")), Cell::new("≤ 2x"), verdict(ratio50 <= 2.0)],
        vec![Cell::new("added p99, keel / nginx"), Cell::num(format!("{ratio99:.2}x")), Cell::new("≤ 3x"), verdict(ratio99 <= 3.0)],
        vec![Cell::new(format!("requests/s @{}, keel / nginx", args.connections)), Cell::num(format!("{rps_ratio:.2}x")), Cell::new("≥ 0.6x"), verdict(rps_ratio >= 0.6)],
        vec![Cell::new("keel's own time, x-keel-overhead-us"), Cell::num(format!("p50 {self50} / p99 {self99} µs")), Cell::new(""), Cell::new("")],
        vec![
            Cell::new("keel resident memory"),
            Cell::num(format!("idle {:.1} / loaded {:.1} MB", idle_rss.unwrap_or(0) as f64 / 1024.0, loaded_rss.unwrap_or(0) as f64 / 1024.0)),
            Cell::new("idle ≤ 40 MB"),
            verdict(idle_rss.is_some_and(|kib| kib as f64 / 1024.0 <= 40.0)),
        ],
    ];
    if let Some((p50, share)) = with_keys {
        targets_rows.push(vec![Cell::new("key + limits + budget, p50 over keel"), Cell::num(format!("+{p50:.0} µs")), Cell::new("≤ 10 µs"), verdict(p50 <= 10.0)]);
        if let Some((k50, k99)) = keyed_self {
            targets_rows.push(vec![
                Cell::new("key + limits + budget, keel's own time"),
                Cell::num(format!("p50 {k50} / p99 {k99} µs (+{} µs)", k50 as i64 - self50 as i64)),
                Cell::new("≤ 10 µs"),
                verdict(k50 <= self50 + 10),
            ]);
        }
        targets_rows.push(vec![
            Cell::new(format!("key + limits + budget, requests/s @{}", args.connections)),
            Cell::num(format!("{:.0}% of keel's", share * 100.0)),
            Cell::new("≥ 80%"),
            verdict(share >= 0.8),
        ]);
    }
    print!("{}", table::render(&["TARGET", "MEASURED", "GOAL", "MET"], &targets_rows));
    println!(
        "{}",
        table::paint(
            &format!("medians of {} alternating rounds of {:.0} s; wrk, nginx and keel share this machine's cores; traces on", args.rounds, args.duration_s),
            table::DIM
        )
    );
    Ok(())
}
