//! The vector index: keel's own HNSW graph over unit vectors (inner product), keyed by chunk id.
//!
//! Of the two crates measured first (`benches/ann-choice`: GloVe-6B-50d, M 16,
//! ef_construction 200, one search thread), usearch beat hnsw_rs, yet answered at half of
//! hnswlib's rate at the same recall (`keel bench ann`). This graph is hnswlib's algorithm
//! (Malkov & Yashunin: layered small worlds, the neighbour-selection heuristic, M links per
//! upper layer and 2·M on the bottom one) laid out for the search path:
//!
//! - the walk compares **8-bit codes** of the vectors (one cache line for 50 dimensions, a
//!   quarter of the `f32` bytes), then the candidates it ends with are re-scored exactly in
//!   `f32`, so results carry exact inner products;
//! - the candidate list is one sorted array of `ef` entries (no heaps), and visited nodes are
//!   marked with an epoch counter instead of being cleared;
//! - links are `AtomicU32`s (plain loads on x86), so building runs on every core with
//!   per-node locks on the writers and no `unsafe`.
//!
//! The index is a cache of the vectors in `meta.db`: it is saved with the generation of the
//! chunks it holds, and rebuilt from SQLite when that generation is not the collection's.
//! The file ends with a CRC-32 of its contents, so a damaged file is reported at open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};

/// Graph degree (hnswlib's M; the bottom layer keeps twice as many) and the candidate list
/// while building.
pub const CONNECTIVITY: usize = 16;
pub const EXPANSION_ADD: usize = 200;
/// Up to this many vectors, searches compare every one (exact); above, they walk the graph.
pub const EXACT_BELOW: usize = 20_000;
/// Candidates kept while searching, at least (more when more results are asked for).
pub const EXPANSION_SEARCH: usize = 128;

const MAGIC: &[u8; 8] = b"KEELHNS1";
const NO_ENTRY: u64 = u64::MAX;
const LOCK_STRIPES: usize = 4096;
const MAX_LEVEL: usize = 16;
/// The largest M a graph may have (a walk keeps a node's 2·M bottom links on the stack).
const MAX_M: usize = 32;

/// Thread-safe handle: searches share the graph, adds and removals take it alone.
#[derive(Debug)]
pub struct Vectors {
    graph: RwLock<Box<Graph>>,
    path: PathBuf,
    /// [`EXACT_BELOW`], lowered by tests.
    exact_below: usize,
}

impl Vectors {
    /// An empty index for `dim`-dimension vectors, saved at `path`.
    pub fn new(path: &Path, dim: usize) -> crate::Result<Vectors> {
        if dim == 0 {
            return Err(crate::Error::Index("a vector index needs at least one dimension".into()));
        }
        Ok(Vectors { graph: RwLock::new(Box::new(Graph::new(dim, CONNECTIVITY, EXPANSION_ADD))), path: path.to_path_buf(), exact_below: EXACT_BELOW })
    }

    /// The saved index if it holds `generation`; `Ok(None)` when it is missing or older,
    /// `Err` when the file cannot be read as an index (damaged).
    pub fn load(path: &Path, dim: usize, generation: u64) -> crate::Result<Option<Vectors>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::Error::Index(format!("{}: {e}", path.display()))),
        };
        let (saved, graph) = Graph::decode(&bytes).map_err(|e| crate::Error::Index(format!("{}: {e}", path.display())))?;
        if saved != generation {
            return Ok(None);
        }
        if graph.dim != dim {
            return Err(crate::Error::Index(format!("{} holds {}-dimension vectors, not {dim}", path.display(), graph.dim)));
        }
        Ok(Some(Vectors { graph: RwLock::new(Box::new(graph)), path: path.to_path_buf(), exact_below: EXACT_BELOW }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Box<Graph>> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Box<Graph>> {
        self.graph.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Vectors searchable (removed ones excluded).
    pub fn len(&self) -> usize {
        self.read().live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds (or replaces) vectors, linking them on every core.
    pub fn add(&self, items: &[(i64, &[f32])]) -> crate::Result<()> {
        let mut graph = self.write();
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != graph.dim) {
            return Err(crate::Error::Index(format!("a {}-dimension vector in a {}-dimension index", v.len(), graph.dim)));
        }
        graph.add(items);
        Ok(())
    }

    pub fn remove(&self, ids: &[i64]) -> crate::Result<()> {
        let mut graph = self.write();
        for id in ids {
            graph.remove(*id);
        }
        Ok(())
    }

    /// The `k` nearest chunks, best first, with their inner products; `allow` keeps only the
    /// chunks it accepts (searched within the graph, then over every vector when the graph
    /// walk found fewer than `k`). The walk keeps twice `k` candidates (at least
    /// [`EXPANSION_SEARCH`]), so the tail of a deep list is as good as its head.
    pub fn search(&self, query: &[f32], k: usize, allow: Option<&(dyn Fn(i64) -> bool + Sync)>) -> crate::Result<Vec<(i64, f64)>> {
        self.search_ef(query, k, EXPANSION_SEARCH.max(2 * k), allow)
    }

    /// [`Vectors::search`] keeping `ef` candidates (the recall/speed dial; benchmarks).
    pub fn search_ef(&self, query: &[f32], k: usize, ef: usize, allow: Option<&(dyn Fn(i64) -> bool + Sync)>) -> crate::Result<Vec<(i64, f64)>> {
        let graph = self.read();
        if query.len() != graph.dim {
            return Err(crate::Error::Index(format!("a {}-dimension query for a {}-dimension index", query.len(), graph.dim)));
        }
        if graph.live == 0 || k == 0 {
            return Ok(Vec::new());
        }
        let found = if graph.live <= self.exact_below {
            graph.exact(query, k, allow)
        } else {
            let found = graph.search(query, k, ef.max(k), allow);
            if found.len() < k.min(graph.live) && allow.is_some() { graph.exact(query, k, allow) } else { found }
        };
        Ok(found.into_iter().map(|(id, score)| (id, f64::from(score))).collect())
    }

    /// Writes the index and the generation it holds (to a temporary file renamed into place,
    /// so a crash leaves the old file, which reads as behind and is rebuilt).
    pub fn save(&self, generation: u64) -> crate::Result<()> {
        let bytes = self.read().encode(generation);
        let partial = self.path.with_extension("partial");
        std::fs::write(&partial, bytes).map_err(|e| crate::Error::Index(format!("{}: {e}", partial.display())))?;
        std::fs::rename(&partial, &self.path).map_err(|e| crate::Error::Index(format!("{}: {e}", self.path.display())))
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("dim", &self.dim).field("slots", &self.slots()).field("live", &self.live).finish()
    }
}

/// The graph and its vectors. Slots are internal `u32` numbers in insertion order; keys are
/// the caller's ids.
struct Graph {
    dim: usize,
    /// `f32` stride: `dim` rounded up to 16 lanes (zero padded).
    stride: usize,
    /// Code stride: `dim` rounded up to 64 bytes.
    code_stride: usize,
    m: usize,
    m0: usize,
    ef_construction: usize,
    /// Codes are `round(x · scale)`, clamped to ±127; fixed by the first vectors added.
    scale: f32,
    vectors: Vec<f32>,
    codes: Vec<i8>,
    keys: Vec<i64>,
    levels: Vec<u8>,
    removed: Vec<bool>,
    /// Bottom layer: per slot `[count, m0 links]`.
    links0: Vec<AtomicU32>,
    /// Upper layers: per slot, `level` blocks of `[count, m links]`.
    upper: Vec<Box<[AtomicU32]>>,
    /// `(level << 32) | slot` of the entry point, or `NO_ENTRY`.
    entry: AtomicU64,
    slot_of: HashMap<i64, u32>,
    live: usize,
    visited: Mutex<Vec<Visited>>,
}

impl Graph {
    fn new(dim: usize, m: usize, ef_construction: usize) -> Graph {
        Graph {
            dim,
            stride: dim.next_multiple_of(16),
            code_stride: dim.next_multiple_of(64),
            m,
            m0: 2 * m,
            ef_construction,
            scale: 0.0,
            vectors: Vec::new(),
            codes: Vec::new(),
            keys: Vec::new(),
            levels: Vec::new(),
            removed: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            entry: AtomicU64::new(NO_ENTRY),
            slot_of: HashMap::new(),
            live: 0,
            visited: Mutex::new(Vec::new()),
        }
    }

    fn slots(&self) -> usize {
        self.keys.len()
    }

    fn vector(&self, slot: u32) -> &[f32] {
        let at = slot as usize * self.stride;
        &self.vectors[at..at + self.stride]
    }

    fn code(&self, slot: u32) -> &[i8] {
        let at = slot as usize * self.code_stride;
        &self.codes[at..at + self.code_stride]
    }

    /// A node's links on `level`: the count cell and the link cells.
    fn links(&self, slot: u32, level: usize) -> (&AtomicU32, &[AtomicU32]) {
        let block = if level == 0 {
            let at = slot as usize * (1 + self.m0);
            &self.links0[at..at + 1 + self.m0]
        } else {
            let at = (level - 1) * (1 + self.m);
            &self.upper[slot as usize][at..at + 1 + self.m]
        };
        (&block[0], &block[1..])
    }

    fn neighbours(&self, slot: u32, level: usize) -> impl Iterator<Item = u32> + '_ {
        let (count, cells) = self.links(slot, level);
        let n = (count.load(Relaxed) as usize).min(cells.len());
        cells[..n].iter().map(|c| c.load(Relaxed))
    }

    fn quantize(&self, v: &[f32], out: &mut [i8]) {
        for (o, x) in out.iter_mut().zip(v) {
            *o = (x * self.scale).round().clamp(-127.0, 127.0) as i8;
        }
    }

    fn remove(&mut self, key: i64) {
        if let Some(slot) = self.slot_of.remove(&key) {
            self.removed[slot as usize] = true;
            self.live -= 1;
        }
    }

    /// Appends the vectors as new slots (replacing keys already present), then links them.
    fn add(&mut self, items: &[(i64, &[f32])]) {
        if items.is_empty() {
            return;
        }
        if self.scale == 0.0 {
            let max = items.iter().flat_map(|(_, v)| v.iter()).fold(0.0f32, |m, x| m.max(x.abs()));
            self.scale = if max > 0.0 { 127.0 / max } else { 127.0 };
        }
        let first = self.slots();
        let level_mult = 1.0 / (self.m as f64).ln();
        let mut rng = fastrand::Rng::with_seed(0x6b65656c ^ first as u64);
        let mut code = vec![0i8; self.code_stride];
        for (key, v) in items {
            self.remove(*key);
            let slot = self.slots() as u32;
            self.slot_of.insert(*key, slot);
            self.keys.push(*key);
            self.removed.push(false);
            self.live += 1;
            self.vectors.extend_from_slice(v);
            self.vectors.resize(self.vectors.len() + self.stride - self.dim, 0.0);
            self.quantize(v, &mut code);
            self.codes.extend_from_slice(&code);
            let level = ((-(1.0 - rng.f64()).ln() * level_mult) as usize).min(MAX_LEVEL);
            self.levels.push(level as u8);
            self.links0.extend((0..1 + self.m0).map(|_| AtomicU32::new(0)));
            self.upper.push((0..level * (1 + self.m)).map(|_| AtomicU32::new(0)).collect());
        }
        self.visited.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        let graph = &*self;
        let locks: Vec<Mutex<()>> = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        let entry_lock = Mutex::new(());
        let mut start = first;
        if graph.entry.load(Relaxed) == NO_ENTRY {
            graph.entry.store(((graph.levels[first] as u64) << 32) | first as u64, Relaxed);
            start += 1;
        }
        let next = AtomicUsize::new(start);
        let end = graph.slots();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cores.min((end - start).div_ceil(256)).max(1);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut visited = Visited::new(end);
                    loop {
                        let slot = next.fetch_add(1, Relaxed);
                        if slot >= end {
                            break;
                        }
                        graph.insert(slot as u32, &mut visited, &locks, &entry_lock);
                    }
                });
            }
        });
    }

    /// Links one slot into the graph (hnswlib's insertion, exact `f32` distances).
    fn insert(&self, slot: u32, visited: &mut Visited, locks: &[Mutex<()>], entry_lock: &Mutex<()>) {
        let lock = |s: u32| locks[s as usize % locks.len()].lock().unwrap_or_else(|e| e.into_inner());
        let level = self.levels[slot as usize] as usize;
        let mut entry = self.entry.load(Relaxed);
        // A node above the current top holds the entry lock while it links, as hnswlib does.
        let _raising = if level > (entry >> 32) as usize {
            let guard = entry_lock.lock().unwrap_or_else(|e| e.into_inner());
            entry = self.entry.load(Relaxed);
            Some(guard)
        } else {
            None
        };
        let top = (entry >> 32) as usize;
        let q = self.vector(slot);
        let distance = |s: u32| -dot(q, self.vector(s));
        let mut current = entry as u32;
        let mut current_d = distance(current);
        for l in (level + 1..=top).rev() {
            (current, current_d) = self.greedy(current, current_d, l, &distance);
        }
        let mut pool = Pool::new(self.ef_construction);
        for l in (0..=level.min(top)).rev() {
            pool.reset(self.ef_construction);
            visited.next_epoch();
            visited.visit(current);
            pool.insert(current_d, current);
            self.walk(&mut pool, l, visited, &distance, &|s| prefetch(self.vector(s)));
            let selected = self.select(pool.entries.iter().map(|e| (e.distance, e.slot)).filter(|&(_, s)| s != slot), self.m);
            {
                let _own = lock(slot);
                let (count, cells) = self.links(slot, l);
                for (cell, &(_, s)) in cells.iter().zip(&selected) {
                    cell.store(s, Relaxed);
                }
                count.store(selected.len().min(cells.len()) as u32, Relaxed);
            }
            for &(d, s) in &selected {
                let _theirs = lock(s);
                let (count, cells) = self.links(s, l);
                let n = (count.load(Relaxed) as usize).min(cells.len());
                if n < cells.len() {
                    cells[n].store(slot, Relaxed);
                    count.store(n as u32 + 1, Relaxed);
                    continue;
                }
                let base = self.vector(s);
                let mut candidates: Vec<(f32, u32)> = cells.iter().map(|c| c.load(Relaxed)).map(|o| (-dot(base, self.vector(o)), o)).collect();
                candidates.push((d, slot));
                candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
                let kept = self.select(candidates.into_iter(), cells.len());
                for (cell, &(_, o)) in cells.iter().zip(&kept) {
                    cell.store(o, Relaxed);
                }
                count.store(kept.len() as u32, Relaxed);
            }
            if let Some(best) = pool.entries.first() {
                (current, current_d) = (best.slot, best.distance);
            }
        }
        if level > top {
            self.entry.store(((level as u64) << 32) | slot as u64, Relaxed);
        }
    }

    /// hnswlib's neighbour heuristic over candidates sorted nearest first: a candidate is
    /// kept when it is nearer to the base than to every one kept before it.
    fn select(&self, candidates: impl Iterator<Item = (f32, u32)>, keep: usize) -> Vec<(f32, u32)> {
        let mut kept: Vec<(f32, u32)> = Vec::with_capacity(keep);
        for (d, c) in candidates {
            if kept.len() >= keep {
                break;
            }
            let v = self.vector(c);
            if kept.iter().all(|&(_, k)| -dot(v, self.vector(k)) > d) {
                kept.push((d, c));
            }
        }
        kept
    }

    /// Greedy descent on an upper layer: move to the nearest neighbour until none is nearer.
    fn greedy<D: PartialOrd + Copy>(&self, mut current: u32, mut current_d: D, level: usize, distance: &impl Fn(u32) -> D) -> (u32, D) {
        loop {
            let mut moved = false;
            for n in self.neighbours(current, level) {
                let d = distance(n);
                if d < current_d {
                    (current, current_d, moved) = (n, d, true);
                }
            }
            if !moved {
                return (current, current_d);
            }
        }
    }

    /// Best-first search on one layer from the pool's entries, keeping the pool's size.
    /// `touch` is called on each new neighbour before any is compared (to prefetch it).
    fn walk<D: PartialOrd + Copy>(&self, pool: &mut Pool<D>, level: usize, visited: &mut Visited, distance: &impl Fn(u32) -> D, touch: &impl Fn(u32)) {
        let mut at = 0;
        while at < pool.entries.len() {
            pool.entries[at].expanded = true;
            let node = pool.entries[at].slot;
            let mut lowest = pool.entries.len();
            let (count, cells) = self.links(node, level);
            let mut fresh = [0u32; 2 * MAX_M];
            let mut n_fresh = 0;
            for cell in &cells[..(count.load(Relaxed) as usize).min(cells.len())] {
                let n = cell.load(Relaxed);
                if visited.visit(n) {
                    touch(n);
                    fresh[n_fresh] = n;
                    n_fresh += 1;
                }
            }
            for &n in &fresh[..n_fresh] {
                let d = distance(n);
                if let Some(pos) = pool.insert(d, n) {
                    lowest = lowest.min(pos);
                }
            }
            at = if lowest <= at { lowest } else { at + 1 };
            while at < pool.entries.len() && pool.entries[at].expanded {
                at += 1;
            }
        }
    }

    /// The graph walk on 8-bit codes, then the exact re-score of the candidates it kept.
    fn search(&self, query: &[f32], k: usize, ef: usize, allow: Option<&(dyn Fn(i64) -> bool + Sync)>) -> Vec<(i64, f32)> {
        let entry = self.entry.load(Relaxed);
        if entry == NO_ENTRY {
            return Vec::new();
        }
        let mut code = vec![0i8; self.code_stride];
        self.quantize(query, &mut code);
        let distance = |s: u32| -dot_i8(&code, self.code(s));
        let mut current = entry as u32;
        let mut current_d = distance(current);
        for l in (1..=(entry >> 32) as usize).rev() {
            (current, current_d) = self.greedy(current, current_d, l, &distance);
        }
        let mut visited = self.visited.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(|| Visited::new(self.slots()));
        visited.next_epoch();
        visited.visit(current);
        let mut pool = Pool::new(ef);
        pool.insert(current_d, current);
        self.walk(&mut pool, 0, &mut visited, &distance, &|s| prefetch(self.code(s)));
        self.visited.lock().unwrap_or_else(|e| e.into_inner()).push(visited);
        let mut query_padded = query.to_vec();
        query_padded.resize(self.stride, 0.0);
        let mut found: Vec<(i64, f32)> = pool
            .entries
            .iter()
            .filter(|e| !self.removed[e.slot as usize])
            .map(|e| (self.keys[e.slot as usize], e.slot))
            .filter(|(key, _)| allow.is_none_or(|allow| allow(*key)))
            .map(|(key, slot)| (key, dot(&query_padded, self.vector(slot))))
            .collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(k);
        found
    }

    /// Every live vector compared.
    fn exact(&self, query: &[f32], k: usize, allow: Option<&(dyn Fn(i64) -> bool + Sync)>) -> Vec<(i64, f32)> {
        let mut query_padded = query.to_vec();
        query_padded.resize(self.stride, 0.0);
        let mut found: Vec<(i64, f32)> = (0..self.slots())
            .filter(|&s| !self.removed[s])
            .filter(|&s| allow.is_none_or(|allow| allow(self.keys[s])))
            .map(|s| (self.keys[s], dot(&query_padded, self.vector(s as u32))))
            .collect();
        if found.len() > k {
            found.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            found.truncate(k);
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found
    }

    /// The file: magic, generation, shape, per-slot keys/levels/flags, vectors, codes, links,
    /// then a CRC-32 of everything before it.
    fn encode(&self, generation: u64) -> Vec<u8> {
        let n = self.slots();
        let mut out = Vec::with_capacity(64 + n * (self.stride * 4 + self.code_stride + (1 + self.m0) * 4 + 10));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&generation.to_le_bytes());
        for v in [self.dim, self.m, self.ef_construction, n] {
            out.extend_from_slice(&(v as u64).to_le_bytes());
        }
        out.extend_from_slice(&self.scale.to_le_bytes());
        out.extend_from_slice(&self.entry.load(Relaxed).to_le_bytes());
        for s in 0..n {
            out.extend_from_slice(&self.keys[s].to_le_bytes());
            out.push(self.levels[s]);
            out.push(u8::from(self.removed[s]));
        }
        for x in &self.vectors {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.extend(self.codes.iter().map(|c| *c as u8));
        for cell in self.links0.iter().chain(self.upper.iter().flat_map(|b| b.iter())) {
            out.extend_from_slice(&cell.load(Relaxed).to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads [`Graph::encode`]'s bytes back, checking the checksum and every link.
    fn decode(bytes: &[u8]) -> Result<(u64, Graph), String> {
        let damaged = |what: &str| format!("the index file is damaged ({what})");
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(damaged("not a keel vector index"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(damaged("checksum mismatch"));
        }
        let mut r = Reader { bytes: &body[MAGIC.len()..] };
        let generation = r.u64()?;
        let dim = r.u64()? as usize;
        let m = r.u64()? as usize;
        let ef_construction = r.u64()? as usize;
        let n = r.u64()? as usize;
        if dim == 0 || m == 0 || m > MAX_M || n > u32::MAX as usize {
            return Err(damaged("bad shape"));
        }
        let mut graph = Graph::new(dim, m, ef_construction);
        graph.scale = f32::from_bits(r.u32()?);
        let entry = r.u64()?;
        for s in 0..n {
            let key = r.i64()?;
            let level = r.u8()?;
            let removed = r.u8()? != 0;
            if level as usize > MAX_LEVEL {
                return Err(damaged("bad level"));
            }
            graph.keys.push(key);
            graph.levels.push(level);
            graph.removed.push(removed);
            if !removed {
                graph.slot_of.insert(key, s as u32);
                graph.live += 1;
            }
        }
        graph.vectors = r.take(n * graph.stride * 4)?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        graph.codes = r.take(n * graph.code_stride)?.iter().map(|b| *b as i8).collect();
        let mut cells = |count: usize| -> Result<Box<[AtomicU32]>, String> {
            r.take(count * 4).map(|b| b.chunks_exact(4).map(|c| AtomicU32::new(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
        };
        graph.links0 = cells(n * (1 + graph.m0))?.into_vec();
        for s in 0..n {
            let level = graph.levels[s] as usize;
            graph.upper.push(cells(level * (1 + graph.m))?);
        }
        if !r.bytes.is_empty() {
            return Err(damaged("trailing bytes"));
        }
        let bad_link = (0..n as u32).any(|s| {
            (0..=graph.levels[s as usize] as usize).any(|l| {
                let (count, cells) = graph.links(s, l);
                count.load(Relaxed) as usize > cells.len() || graph.neighbours(s, l).any(|o| o as usize >= n)
            })
        });
        let bad_entry = entry != NO_ENTRY && ((entry as u32) as usize >= n || (entry >> 32) as usize != graph.levels[entry as u32 as usize] as usize);
        if bad_link || bad_entry || (entry == NO_ENTRY && n > 0) {
            return Err(damaged("a link points outside the graph"));
        }
        graph.entry = AtomicU64::new(entry);
        Ok((generation, graph))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("the index file is damaged (cut short)".into());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "cut short")?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "cut short")?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
}

/// Visited marks: a slot is visited in this search when its mark equals the epoch.
struct Visited {
    marks: Vec<u16>,
    epoch: u16,
}

impl Visited {
    fn new(slots: usize) -> Visited {
        Visited { marks: vec![0; slots], epoch: 0 }
    }

    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
    }

    /// Marks a slot; false when it was already marked in this epoch.
    #[inline]
    fn visit(&mut self, slot: u32) -> bool {
        let mark = &mut self.marks[slot as usize];
        if *mark == self.epoch {
            return false;
        }
        *mark = self.epoch;
        true
    }
}

#[derive(Clone, Copy)]
struct Entry<D> {
    distance: D,
    slot: u32,
    expanded: bool,
}

/// The candidate list of a layer search: at most `capacity` entries, nearest first.
struct Pool<D> {
    entries: Vec<Entry<D>>,
    capacity: usize,
}

impl<D: PartialOrd + Copy> Pool<D> {
    fn new(capacity: usize) -> Pool<D> {
        Pool { entries: Vec::with_capacity(capacity + 1), capacity: capacity.max(1) }
    }

    fn reset(&mut self, capacity: usize) {
        self.entries.clear();
        self.capacity = capacity.max(1);
    }

    /// Inserts in order; the position, or `None` when the pool is full of nearer entries.
    #[inline]
    fn insert(&mut self, distance: D, slot: u32) -> Option<usize> {
        if self.entries.len() == self.capacity && self.entries.last().is_some_and(|last| distance >= last.distance) {
            return None;
        }
        let pos = self.entries.partition_point(|e| e.distance <= distance);
        self.entries.insert(pos, Entry { distance, slot, expanded: false });
        self.entries.truncate(self.capacity);
        Some(pos)
    }
}

/// Asks the CPU to start loading the first cache line of `data` (a hint: it reads nothing).
#[inline]
#[allow(unsafe_code)]
fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and reads nothing into the program; the
    // pointer comes from a live slice. SSE is part of every x86-64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(data.as_ptr().cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Inner product of two equal-length, 16-lane-padded vectors (16 accumulators, so it
/// vectorises).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum()
}

#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    #[test]
    fn the_graph_walk_finds_what_an_exact_scan_finds() {
        let mut rng = fastrand::Rng::with_seed(7);
        let data: Vec<Vec<f32>> = (0..5_000).map(|_| random_unit(&mut rng, 24)).collect();
        let dir = std::env::temp_dir().join(format!("keel-hnsw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = Vectors::new(&dir.join("v"), 24).unwrap();
        let items: Vec<(i64, &[f32])> = data.iter().enumerate().map(|(i, v)| (i as i64 * 3, v.as_slice())).collect();
        index.add(&items).unwrap();
        let graph = index.read();
        let mut hits = 0;
        for _ in 0..50 {
            let q = random_unit(&mut rng, 24);
            let exact: Vec<i64> = graph.exact(&q, 10, None).into_iter().map(|(id, _)| id).collect();
            let found = graph.search(&q, 10, 128, None);
            hits += found.iter().filter(|(id, _)| exact.contains(id)).count();
        }
        assert!(hits >= 450, "recall@10 {}", hits as f64 / 500.0);
        drop(graph);
        // Saved and loaded, the same answers; a flipped byte is reported.
        index.save(4).unwrap();
        let loaded = Vectors::load(&dir.join("v"), 24, 4).unwrap().unwrap();
        let q = random_unit(&mut rng, 24);
        assert_eq!(index.search_ef(&q, 10, 64, None).unwrap(), loaded.search_ef(&q, 10, 64, None).unwrap());
        assert!(Vectors::load(&dir.join("v"), 24, 5).unwrap().is_none(), "an older generation is not loaded");
        let mut bytes = std::fs::read(dir.join("v")).unwrap();
        bytes[100] ^= 1;
        std::fs::write(dir.join("v"), bytes).unwrap();
        assert!(Vectors::load(&dir.join("v"), 24, 4).unwrap_err().to_string().contains("damaged"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removed_and_replaced_vectors_are_not_returned() {
        let mut rng = fastrand::Rng::with_seed(3);
        let dir = std::env::temp_dir();
        let mut index = Vectors::new(&dir.join("unused"), 8).unwrap();
        index.exact_below = 1_000;
        let data: Vec<Vec<f32>> = (0..2_000).map(|_| random_unit(&mut rng, 8)).collect();
        index.add(&data.iter().enumerate().map(|(i, v)| (i as i64, v.as_slice())).collect::<Vec<_>>()).unwrap();
        let target = data[17].clone();
        assert_eq!(index.search(&target, 1, None).unwrap()[0].0, 17);
        index.remove(&[17]).unwrap();
        assert_ne!(index.search(&target, 1, None).unwrap()[0].0, 17);
        // Key 5 now holds the vector 17 had.
        index.add(&[(5, target.as_slice())]).unwrap();
        assert_eq!(index.len(), 1_999);
        let top = index.search(&target, 1, None).unwrap();
        assert_eq!(top[0].0, 5);
        assert!((top[0].1 - 1.0).abs() < 1e-5);
        // A filter that accepts only a few keys still finds them (the exact fallback).
        let only: &(dyn Fn(i64) -> bool + Sync) = &|id| id % 100 == 1;
        let filtered = index.search(&target, 10, Some(only)).unwrap();
        assert_eq!(filtered.len(), 10);
        assert!(filtered.iter().all(|(id, _)| id % 100 == 1));
    }
}
