//! The vector index: HNSW (usearch) over unit vectors, inner product, keyed by chunk id.
//!
//! usearch was chosen over hnsw_rs by measurement (`benches/ann-choice`, GloVe-6B-50d,
//! M = 16, ef_construction = 200, one search thread): usearch built the index 5× faster and
//! answered 1.5–3× more queries per second at the same recall.
//!
//! The index is a cache of the vectors in `meta.db`: it is saved with the generation of the
//! chunks it holds, and rebuilt from SQLite when that generation is not the collection's.

use std::path::{Path, PathBuf};

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// Graph degree (hnswlib's M) and the candidate list while building.
pub const CONNECTIVITY: usize = 16;
pub const EXPANSION_ADD: usize = 200;
/// Up to this many vectors, searches compare every one (exact); above, they walk the graph.
pub const EXACT_BELOW: usize = 20_000;
/// Candidates kept while searching, at least (more when more results are asked for).
pub const EXPANSION_SEARCH: usize = 128;

pub struct Vectors {
    index: Index,
    path: PathBuf,
    dim: usize,
}

fn options(dim: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: ScalarKind::F32,
        connectivity: CONNECTIVITY,
        expansion_add: EXPANSION_ADD,
        expansion_search: EXPANSION_SEARCH,
        multi: false,
    }
}

fn generation_path(path: &Path) -> PathBuf {
    path.with_extension("generation")
}

impl Vectors {
    /// An empty index for `dim`-dimension vectors, saved at `path`.
    pub fn new(path: &Path, dim: usize) -> Result<Vectors, String> {
        let index = Index::new(&options(dim)).map_err(|e| e.to_string())?;
        Ok(Vectors { index, path: path.to_path_buf(), dim })
    }

    /// The saved index if it holds `generation`; `Ok(None)` when it is missing or older,
    /// `Err` when the file cannot be read as an index (damaged).
    pub fn load(path: &Path, dim: usize, generation: u64) -> Result<Option<Vectors>, String> {
        if !path.is_file() {
            return Ok(None);
        }
        let saved: Option<u64> = std::fs::read_to_string(generation_path(path)).ok().and_then(|g| g.trim().parse().ok());
        if saved != Some(generation) {
            return Ok(None);
        }
        let index = Index::new(&options(dim)).map_err(|e| e.to_string())?;
        let shown = path.to_str().ok_or("the index path is not UTF-8")?;
        index.load(shown).map_err(|e| format!("{}: {e}", path.display()))?;
        if index.dimensions() != dim {
            return Err(format!("{} holds {}-dimension vectors, not {dim}", path.display(), index.dimensions()));
        }
        Ok(Some(Vectors { index, path: path.to_path_buf(), dim }))
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds (or replaces) vectors, using every core.
    pub fn add(&self, items: &[(i64, &[f32])]) -> Result<(), String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wanted = self.index.size() + items.len();
        if wanted > self.index.capacity() {
            self.index.reserve_capacity_and_threads(wanted.max(self.index.capacity() * 2), cores).map_err(|e| e.to_string())?;
        }
        for (id, _) in items {
            if self.index.contains(*id as u64) {
                self.index.remove(*id as u64).map_err(|e| e.to_string())?;
            }
        }
        let threads = cores.min(items.len().div_ceil(64)).max(1);
        let failed = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for t in 0..threads {
                let failed = &failed;
                scope.spawn(move || {
                    for (id, vector) in items.iter().skip(t).step_by(threads) {
                        if vector.len() != self.dim {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("a {}-dimension vector in a {}-dimension index", vector.len(), self.dim));
                            return;
                        }
                        if let Err(e) = self.index.add(*id as u64, vector) {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                            return;
                        }
                    }
                });
            }
        });
        failed.into_inner().unwrap_or_else(|e| e.into_inner()).map_or(Ok(()), Err)
    }

    pub fn remove(&self, ids: &[i64]) -> Result<(), String> {
        for id in ids {
            self.index.remove(*id as u64).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The `k` nearest chunks, best first, with their inner products; `allow` keeps only the
    /// chunks it accepts (searched within the graph, not after it).
    pub fn search(&self, query: &[f32], k: usize, allow: Option<&(dyn Fn(i64) -> bool + Sync)>) -> Result<Vec<(i64, f64)>, String> {
        if self.len() <= EXACT_BELOW {
            return self.exact(query, k, allow);
        }
        self.search_ef(query, k, EXPANSION_SEARCH.max(k), allow)
    }

    /// Every vector compared (small indexes, where that costs a few milliseconds and a graph
    /// walk could miss near-duplicates).
    fn exact(&self, query: &[f32], k: usize, allow: Option<&(dyn Fn(i64) -> bool + Sync)>) -> Result<Vec<(i64, f64)>, String> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let count = if allow.is_some() { self.len() } else { k.min(self.len()) };
        let matches = self.index.exact_search(query, count).map_err(|e| e.to_string())?;
        Ok(matches
            .keys
            .iter()
            .zip(&matches.distances)
            .map(|(key, distance)| (*key as i64, f64::from(1.0 - distance)))
            .filter(|(id, _)| allow.is_none_or(|allow| allow(*id)))
            .take(k)
            .collect())
    }

    /// [`Vectors::search`] keeping `ef` candidates (the recall/speed dial; benchmarks).
    pub fn search_ef(&self, query: &[f32], k: usize, ef: usize, allow: Option<&(dyn Fn(i64) -> bool + Sync)>) -> Result<Vec<(i64, f64)>, String> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        if self.index.expansion_search() != ef {
            self.index.change_expansion_search(ef);
        }
        let matches = match allow {
            None => self.index.search(query, k),
            Some(allow) => self.index.filtered_search(query, k, |key: u64| allow(key as i64)),
        }
        .map_err(|e| e.to_string())?;
        Ok(matches.keys.iter().zip(&matches.distances).map(|(key, distance)| (*key as i64, f64::from(1.0 - distance))).collect())
    }

    /// Writes the index, then the generation it holds (so a crash between the two reads as
    /// an old index, rebuilt at the next open).
    pub fn save(&self, generation: u64) -> Result<(), String> {
        let _ = std::fs::remove_file(generation_path(&self.path));
        let shown = self.path.to_str().ok_or("the index path is not UTF-8")?;
        self.index.save(shown).map_err(|e| e.to_string())?;
        std::fs::write(generation_path(&self.path), generation.to_string()).map_err(|e| e.to_string())
    }
}
