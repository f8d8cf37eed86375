//! `keel bench agent`: the agent runtime's cost per step, the checkpoint write, and many
//! runs at once.

use super::*;

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
