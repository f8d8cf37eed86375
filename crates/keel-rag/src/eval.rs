//! Retrieval quality on a BEIR-format data set: nDCG@10, recall@100 and MRR@10.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

/// A BEIR data set: corpus, queries, and graded judgements.
#[derive(Debug, Default)]
pub struct Beir {
    /// (id, title, text)
    pub corpus: Vec<(String, String, String)>,
    pub queries: BTreeMap<String, String>,
    /// query → document → grade
    pub qrels: BTreeMap<String, HashMap<String, f64>>,
}

fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", path.display(), n + 1)))
        .collect()
}

impl Beir {
    /// Reads `corpus.jsonl`, `queries.jsonl` and the judgements (`qrels/test.tsv`, else the
    /// only file in `qrels/`, or `qrels` given).
    pub fn load(dir: &Path, qrels: Option<&Path>) -> crate::Result<Beir> {
        Beir::read(dir, qrels).map_err(crate::Error::Io)
    }

    fn read(dir: &Path, qrels: Option<&Path>) -> Result<Beir, String> {
        let mut beir = Beir::default();
        for doc in read_jsonl(&dir.join("corpus.jsonl"))? {
            let id = doc["_id"].as_str().map(String::from).or_else(|| doc["_id"].as_i64().map(|n| n.to_string())).ok_or("a corpus line has no _id")?;
            beir.corpus.push((id, doc["title"].as_str().unwrap_or_default().to_string(), doc["text"].as_str().unwrap_or_default().to_string()));
        }
        for query in read_jsonl(&dir.join("queries.jsonl"))? {
            let id = query["_id"].as_str().map(String::from).or_else(|| query["_id"].as_i64().map(|n| n.to_string())).ok_or("a query line has no _id")?;
            beir.queries.insert(id, query["text"].as_str().unwrap_or_default().to_string());
        }
        let qrels_path = match qrels {
            Some(path) => path.to_path_buf(),
            None => {
                let folder = dir.join("qrels");
                let files: Vec<_> = std::fs::read_dir(&folder).map_err(|e| format!("{}: {e}", folder.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
                if folder.join("test.tsv").is_file() {
                    folder.join("test.tsv")
                } else if files.len() == 1 {
                    files[0].clone()
                } else {
                    return Err(format!("{} holds several judgement files; pick one with --qrels", folder.display()));
                }
            }
        };
        let text = std::fs::read_to_string(&qrels_path).map_err(|e| format!("could not read {}: {e}", qrels_path.display()))?;
        for line in text.lines().skip(1) {
            let parts: Vec<&str> = line.split('\t').collect();
            if parts.len() < 3 {
                continue;
            }
            let grade: f64 = parts[2].trim().parse().unwrap_or(0.0);
            beir.qrels.entry(parts[0].to_string()).or_default().insert(parts[1].to_string(), grade);
        }
        // Only queries with judgements are scored.
        beir.queries.retain(|id, _| beir.qrels.contains_key(id));
        Ok(beir)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub ndcg_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    pub queries: usize,
}

/// nDCG@10 (graded, log2 discount), recall@100 and MRR@10 of one ranking.
pub fn score(ranked: &[String], relevant: &HashMap<String, f64>) -> (f64, f64, f64) {
    let dcg: f64 = ranked.iter().take(10).enumerate().map(|(i, d)| relevant.get(d).copied().unwrap_or(0.0) / ((i + 2) as f64).log2()).sum();
    let mut ideal: Vec<f64> = relevant.values().copied().filter(|g| *g > 0.0).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, g)| g / ((i + 2) as f64).log2()).sum();
    let ndcg = if idcg > 0.0 { dcg / idcg } else { 0.0 };
    let positives = relevant.values().filter(|g| **g > 0.0).count();
    let found = ranked.iter().take(100).filter(|d| relevant.get(*d).is_some_and(|g| *g > 0.0)).count();
    let recall = if positives > 0 { found as f64 / positives as f64 } else { 0.0 };
    let mrr = ranked.iter().take(10).position(|d| relevant.get(d).is_some_and(|g| *g > 0.0)).map_or(0.0, |p| 1.0 / (p + 1) as f64);
    (ndcg, recall, mrr)
}

/// Averages per-query scores.
pub fn average(per_query: &[(f64, f64, f64)]) -> Scores {
    let n = per_query.len().max(1) as f64;
    Scores {
        ndcg_at_10: per_query.iter().map(|s| s.0).sum::<f64>() / n,
        recall_at_100: per_query.iter().map(|s| s.1).sum::<f64>() / n,
        mrr_at_10: per_query.iter().map(|s| s.2).sum::<f64>() / n,
        queries: per_query.len(),
    }
}

impl Beir {
    /// The corpus as documents: the id is the source, the title leads each chunk.
    pub fn documents(&self) -> Vec<crate::Document> {
        self.corpus
            .iter()
            .map(|(id, title, text)| crate::Document {
                id: id.clone(),
                source: id.clone(),
                title: (!title.is_empty()).then(|| title.clone()),
                text: text.clone(),
                kind: crate::Kind::Text,
                meta: Default::default(),
                pages: Vec::new(),
            })
            .collect()
    }
}

/// One search mode's quality on a data set, and its query latency.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub mode: crate::Mode,
    #[serde(flatten)]
    pub scores: Scores,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

/// Every judged query of `beir` against an ingested collection in each mode (BM25, vector,
/// hybrid fused as `fusion` says), top 100 documents each.
pub async fn run(collection: &crate::Collection, beir: &Beir, fusion: &crate::Search, embedder: &dyn crate::Embedder) -> crate::Result<Vec<ModeResult>> {
    let mut results = Vec::new();
    for mode in [crate::Mode::Bm25, crate::Mode::Vector, crate::Mode::Hybrid] {
        let mut per_query = Vec::new();
        let mut latencies = Vec::new();
        for (id, text) in &beir.queries {
            let started = std::time::Instant::now();
            let ranked = collection.search(text, &crate::Search { k: 100, mode, ..fusion.clone() }, embedder).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let docs: Vec<String> = ranked.iter().filter_map(|(chunk, _)| collection.doc_of(*chunk).map(String::from)).collect();
            per_query.push(score(&docs, &beir.qrels[id]));
        }
        latencies.sort_by(f64::total_cmp);
        let quantile = |q: f64| latencies.get(((latencies.len() as f64 - 1.0).max(0.0) * q).round() as usize).copied().unwrap_or(0.0);
        results.push(ModeResult { mode, scores: average(&per_query), latency_ms_p50: quantile(0.5), latency_ms_p99: quantile(0.99) });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let relevant: HashMap<String, f64> = [("a".to_string(), 1.0), ("b".to_string(), 1.0)].into();
        let ranked: Vec<String> = ["x", "a", "y", "b"].iter().map(|s| s.to_string()).collect();
        let (ndcg, recall, mrr) = score(&ranked, &relevant);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((ndcg - dcg / idcg).abs() < 1e-12);
        assert_eq!(recall, 1.0);
        assert_eq!(mrr, 0.5);
        assert_eq!(score(&[], &relevant), (0.0, 0.0, 0.0));
    }
}
