//! `keel bench pii`: span-level precision, recall and F2 per entity type against
//! presidio-analyzer on the same labelled sentences, and scan throughput.

use super::*;
use keel_guard::pii::SpanScore;

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
