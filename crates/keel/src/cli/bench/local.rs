//! `keel bench local` and `keel bench embed`: the local chat model against llama.cpp itself
//! (llama-cpp-python on the same GGUF), and local embeddings against sentence-transformers.

use super::*;

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
        serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/minilm_reference.json"))).unwrap_or_default();
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
