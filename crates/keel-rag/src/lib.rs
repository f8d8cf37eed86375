//! keel-rag: collections of documents, chunked by structure, embedded through keel's
//! gateway, indexed twice — BM25 (tantivy, English stemming) and vectors — under the same
//! chunk ids, searched alone or fused (reciprocal rank fusion, one vote per document).
//!
//! A collection is a folder: `meta.db` (SQLite: documents, chunks, vectors — the truth),
//! `bm25/` (tantivy) and `vectors.hnsw` (HNSW). Every change is committed to SQLite first
//! and bumps the collection's generation; the indexes are checked against it when the
//! collection opens and rebuilt if they disagree, so an interrupted ingest leaves a
//! consistent collection that the next ingest completes.

pub mod answer;
pub mod chunk;
pub mod eval;
pub mod pdf;
#[cfg(feature = "pgvector")]
pub mod pgvector;
#[cfg(feature = "qdrant")]
pub mod qdrant;
mod engine;
mod query;
mod search;
pub mod rerank;
mod shelf;
pub mod source;
#[cfg(any(feature = "pgvector", feature = "qdrant"))]
mod worker;
mod index;
pub mod vectors;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use chunk::{Chunk, Kind, Limits};
pub use index::Bm25;
pub use engine::Engine;
use engine::VectorIndex;
#[cfg(feature = "pgvector")]
use engine::postgres_url;
#[cfg(feature = "qdrant")]
use engine::qdrant_url;
pub use query::{Query, query};
pub use search::{Filter, Hit, Mode, Search};
pub use shelf::{Collections, Shared};
pub use vectors::Vectors;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("collection `{0}` does not exist; create it with: keel rag ingest PATH --collection {0}")]
    NoCollection(String),
    #[error("collection `{name}` was embedded with `{have}` ({dim} dimensions); it cannot be searched or extended with `{want}`. Use --embedding-model {have}, or a new collection")]
    ModelMismatch { name: String, have: String, dim: usize, want: String },
    #[error("collection `{name}` is damaged ({message}); {hint}")]
    Corrupt { name: String, message: String, hint: &'static str },
    #[error("the query is empty")]
    EmptyQuery,
    #[error("embedding failed: {0}")]
    Embed(String),
    #[error("reranking failed: {0}")]
    Rerank(String),
    #[error("the answer failed: {0}")]
    Answer(String),
    #[error("{0}")]
    BadQuery(String),
    /// A vector index (keel's HNSW file, pgvector, Qdrant) failed.
    #[error("{0}")]
    Index(String),
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(e.to_string())
}

/// Embeds texts: the caller's model (keel's gateway through keel-agent's `ModelAlias`;
/// anything in tests).
pub trait Embedder: Send + Sync {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, std::result::Result<Vec<Vec<f32>>, String>>;
}


/// What an ingest did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct IngestReport {
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
    pub chunks: usize,
    pub embedded: usize,
    /// Files skipped, with why.
    pub skipped: Vec<(String, String)>,
    pub seconds: f64,
}

/// A document to ingest: an id (a path, or a corpus id), its text and how it is laid out.
#[derive(Debug, Clone)]
pub struct Document {
    pub id: String,
    pub source: String,
    pub title: Option<String>,
    pub text: String,
    pub kind: Kind,
    /// Metadata to filter on (`key=value`).
    pub meta: BTreeMap<String, String>,
    /// Where each page starts in `text` (PDFs), for the page of each chunk.
    pub pages: Vec<usize>,
}

pub struct Collection {
    pub name: String,
    pub dir: PathBuf,
    pub model: String,
    pub dim: usize,
    db: rusqlite::Connection,
    bm25: Bm25,
    /// Where vectors are searched: the embedded HNSW index or PostgreSQL.
    engine: Engine,
    /// The vector index, once the collection has vectors (and so a dimension).
    vectors: Option<VectorIndex>,
    /// Chunk id → document id, for every chunk.
    docs_of: HashMap<i64, String>,
    /// Bumped by every committed change; the indexes are saved with the one they hold.
    generation: u64,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection").field("name", &self.name).field("chunks", &self.docs_of.len()).finish()
    }
}

/// The HNSW index file in a collection's folder.
const VECTORS_FILE: &str = "vectors.hnsw";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, source TEXT NOT NULL, title TEXT, hash TEXT NOT NULL, meta TEXT, pages TEXT);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    doc TEXT NOT NULL REFERENCES docs (id),
    seq INTEGER NOT NULL,
    headings TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    hash TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc);
CREATE TABLE IF NOT EXISTS embed_cache (hash TEXT PRIMARY KEY, vector BLOB NOT NULL);
";

fn sha(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    keel_core::hex(&digest[..16])
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Bumps the generation inside a transaction that changes chunks.
fn bump(generation: &mut u64, tx: &rusqlite::Transaction) -> Result<()> {
    *generation += 1;
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?1)", [generation.to_string()]).map_err(io)?;
    Ok(())
}

/// The collections under `root`, by name.
pub fn list(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("meta.db").is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort();
    names
}

/// The embedding model a collection was made with, if it exists.
pub fn stored_model(root: &Path, name: &str) -> Option<String> {
    let path = root.join(name).join("meta.db");
    if !path.is_file() {
        return None;
    }
    let db = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    db.query_row("SELECT value FROM meta WHERE key = 'model'", [], |r| r.get(0)).ok()
}

impl Collection {
    /// Opens a collection; with `create`, makes it (for `model`) if it does not exist.
    pub fn open(root: &Path, name: &str, model: &str, create: bool) -> Result<Collection> {
        Collection::open_on(root, name, model, create, None)
    }

    /// [`Collection::open`]; a new collection keeps its vectors on `engine` (embedded when
    /// `None`), and an existing one refuses another engine.
    pub fn open_on(root: &Path, name: &str, model: &str, create: bool, engine: Option<Engine>) -> Result<Collection> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::Io(format!("a collection name uses letters, digits, `-` and `_` (got `{name}`)")));
        }
        let dir = root.join(name);
        if !dir.join("meta.db").is_file() && !create {
            return Err(Error::NoCollection(name.into()));
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        let corrupt = |e: rusqlite::Error| Error::Corrupt { name: name.into(), message: format!("meta.db: {e}"), hint: "its chunks cannot be read: ingest the documents into a new collection" };
        let db = rusqlite::Connection::open(dir.join("meta.db")).map_err(corrupt)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(corrupt)?;
        db.execute_batch(SCHEMA).map_err(corrupt)?;
        // Collections made before documents had metadata.
        for column in ["meta", "pages"] {
            if db.prepare(&format!("SELECT {column} FROM docs LIMIT 0")).is_err() {
                db.execute_batch(&format!("ALTER TABLE docs ADD COLUMN {column} TEXT")).map_err(corrupt)?;
            }
        }
        let stored_model: Option<String> = db.query_row("SELECT value FROM meta WHERE key = 'model'", [], |r| r.get(0)).optional().map_err(corrupt)?;
        let stored_dim: Option<String> = db.query_row("SELECT value FROM meta WHERE key = 'dim'", [], |r| r.get(0)).optional().map_err(corrupt)?;
        let dim = stored_dim.and_then(|d| d.parse().ok()).unwrap_or(0);
        match stored_model {
            Some(have) if have != model => return Err(Error::ModelMismatch { name: name.into(), have, dim, want: model.into() }),
            Some(_) => {}
            None => {
                db.execute("INSERT INTO meta (key, value) VALUES ('model', ?1)", [model]).map_err(io)?;
            }
        }
        let stored_engine: Option<String> = db.query_row("SELECT value FROM meta WHERE key = 'engine'", [], |r| r.get(0)).optional().map_err(corrupt)?;
        let engine = match (stored_engine.as_deref().map(str::parse::<Engine>), engine) {
            (Some(Err(e)), _) => return Err(Error::Corrupt { name: name.into(), message: e, hint: "ingest the documents into a new collection" }),
            (Some(Ok(have)), Some(want)) if have != want => {
                return Err(Error::Io(format!("collection `{name}` keeps its vectors on {}, not {}", have.name(), want.name())));
            }
            (Some(Ok(have)), _) => have,
            (None, want) => {
                // Collections made before engines existed have chunks and are embedded.
                let engine = want.unwrap_or(Engine::Embedded);
                db.execute("INSERT INTO meta (key, value) VALUES ('engine', ?1)", [engine.name()]).map_err(io)?;
                engine
            }
        };
        let generation: u64 = db
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| r.get::<_, String>(0))
            .optional()
            .map_err(corrupt)?
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let docs_of: HashMap<i64, String> = {
            let mut stmt = db.prepare("SELECT id, doc FROM chunks").map_err(corrupt)?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(corrupt)?
        };
        let bm25 = Bm25::open(&dir.join("bm25")).map_err(|e| Error::Corrupt {
            name: name.into(),
            message: format!("the BM25 index: {e}"),
            hint: "run keel rag rebuild NAME and it is rebuilt from the chunks",
        })?;
        let (vectors, stale) = match (dim, engine) {
            (0, _) => (None, false),
            (dim, Engine::Embedded) => {
                let loaded = Vectors::load(&dir.join(VECTORS_FILE), dim, generation).map_err(|e| Error::Corrupt {
                    name: name.into(),
                    message: format!("the vector index: {e}"),
                    hint: "run keel rag rebuild NAME and it is rebuilt from the chunks",
                })?;
                let stale = loaded.is_none();
                (loaded.map(VectorIndex::Embedded), stale)
            }
            #[cfg(feature = "pgvector")]
            (dim, Engine::Pgvector) => {
                let pg = pgvector::PgVectors::connect(&postgres_url(name)?, name, dim)?;
                let stale = pg.generation()? != Some(generation);
                (Some(VectorIndex::Pgvector(pg)), stale)
            }
            #[cfg(feature = "qdrant")]
            (dim, Engine::Qdrant) => {
                let qdrant = qdrant::QdrantVectors::connect(&qdrant_url(name)?, name, dim)?;
                let stale = qdrant.generation()? != Some(generation);
                (Some(VectorIndex::Qdrant(qdrant)), stale)
            }
            #[allow(unreachable_patterns, reason = "reached only in builds without an engine's feature")]
            (_, engine) => return Err(engine.left_out()),
        };
        let mut collection = Collection { name: name.into(), dir, model: model.into(), dim, db, bm25, engine, vectors, docs_of, generation };
        // The indexes follow SQLite; after an interrupted write they are rebuilt from it.
        if collection.bm25.count() != collection.docs_of.len() as u64 {
            tracing::warn!(collection = name, "the BM25 index disagrees with the chunks; rebuilding it");
            collection.rebuild_bm25()?;
        }
        if stale {
            tracing::info!(collection = name, "the vector index is missing or older than the chunks; rebuilding it");
            collection.rebuild_vectors()?;
        }
        Ok(collection)
    }

    /// Rebuilds a collection's indexes from its chunks, whatever state their files are in.
    pub fn rebuild(root: &Path, name: &str, model: &str) -> Result<Collection> {
        let dir = root.join(name);
        if !dir.join("meta.db").is_file() {
            return Err(Error::NoCollection(name.into()));
        }
        let _ = std::fs::remove_dir_all(dir.join("bm25"));
        let _ = std::fs::remove_file(dir.join(VECTORS_FILE));
        // Opening rebuilds what is missing: the BM25 index and the embedded vector index.
        let mut collection = Collection::open(root, name, model, false)?;
        if collection.engine != Engine::Embedded && collection.dim != 0 {
            collection.rebuild_vectors()?;
        }
        Ok(collection)
    }

    /// Rebuilds the vector index from the vectors in SQLite, and saves it.
    fn rebuild_vectors(&mut self) -> Result<()> {
        let mut stmt = self.db.prepare("SELECT id, vector FROM chunks").map_err(io)?;
        let rows: Vec<(i64, Vec<f32>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, from_blob(&r.get::<_, Vec<u8>>(1)?))))
            .and_then(|rows| rows.collect())
            .map_err(io)?;
        drop(stmt);
        if let Some((id, vector)) = rows.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(Error::Corrupt { name: self.name.clone(), message: format!("chunk {id} has a {}-dimension vector, not {}", vector.len(), self.dim), hint: "ingest the documents into a new collection" });
        }
        let index = match self.vectors.take() {
            #[cfg(feature = "pgvector")]
            Some(VectorIndex::Pgvector(pg)) => {
                pg.clear()?;
                VectorIndex::Pgvector(pg)
            }
            #[cfg(feature = "qdrant")]
            Some(VectorIndex::Qdrant(qdrant)) => {
                qdrant.clear()?;
                VectorIndex::Qdrant(qdrant)
            }
            _ => self.new_index()?,
        };
        let items: Vec<(i64, &[f32])> = rows.iter().map(|(id, v)| (*id, v.as_slice())).collect();
        index.add(&items)?;
        index.save(self.generation)?;
        self.vectors = Some(index);
        Ok(())
    }

    /// An empty vector index on the collection's engine.
    fn new_index(&self) -> Result<VectorIndex> {
        Ok(match self.engine {
            Engine::Embedded => VectorIndex::Embedded(Vectors::new(&self.dir.join(VECTORS_FILE), self.dim)?),
            #[cfg(feature = "pgvector")]
            Engine::Pgvector => VectorIndex::Pgvector(pgvector::PgVectors::connect(&postgres_url(&self.name)?, &self.name, self.dim)?),
            #[cfg(feature = "qdrant")]
            Engine::Qdrant => VectorIndex::Qdrant(qdrant::QdrantVectors::connect(&qdrant_url(&self.name)?, &self.name, self.dim)?),
            #[allow(unreachable_patterns, reason = "reached only in builds without an engine's feature")]
            engine => return Err(engine.left_out()),
        })
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Saves the vector index if it is behind the chunks (after an ingest).
    pub fn save(&self) -> Result<()> {
        match &self.vectors {
            Some(vectors) => vectors.save(self.generation),
            None => Ok(()),
        }
    }



    /// Rebuilds the BM25 index from the chunks.
    pub fn rebuild_bm25(&mut self) -> Result<()> {
        let mut stmt = self
            .db
            .prepare("SELECT c.id, c.doc, c.headings, c.start, c.end, c.text, d.title FROM chunks c JOIN docs d ON d.id = c.doc ORDER BY c.doc, c.seq")
            .map_err(io)?;
        type Row = (i64, String, String, i64, i64, String, Option<String>);
        let rows: Vec<Row> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .and_then(|rows| rows.collect())
            .map_err(io)?;
        let mut entries = Vec::with_capacity(rows.len());
        for doc in rows.chunk_by(|a, b| a.1 == b.1) {
            let chunks: Vec<_> = doc.iter().map(|(id, _, headings, start, end, text, _)| (*id, headings.as_str(), *start as usize..*end as usize, text.as_str())).collect();
            entries.extend(index::units(doc[0].6.as_deref(), &chunks));
        }
        self.bm25.replace_all(entries.into_iter()).map_err(io)
    }

    pub fn chunk_count(&self) -> usize {
        self.docs_of.len()
    }

    pub fn doc_count(&self) -> usize {
        self.db.query_row("SELECT COUNT(*) FROM docs", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize
    }

    /// Adds or updates documents; those of `replace_scope` (ids starting with it) that are
    /// not in `docs` are deleted. Unchanged documents (same content hash) are not touched;
    /// chunks whose text was embedded before reuse the vector.
    pub async fn ingest(
        &mut self,
        docs: Vec<Document>,
        replace_scope: Option<&str>,
        embedder: &dyn Embedder,
        limits: Limits,
        count: &(dyn Fn(&str) -> usize + Sync),
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<IngestReport> {
        let started = std::time::Instant::now();
        let mut report = IngestReport::default();
        let known: BTreeMap<String, String> = {
            let mut stmt = self.db.prepare("SELECT id, hash FROM docs").map_err(io)?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(io)?
        };
        let given: std::collections::HashSet<String> = docs.iter().map(|d| d.id.clone()).collect();
        let total = docs.len();
        // Documents in batches: each batch is embedded, then committed with its chunks.
        let mut batch: Vec<(Document, String, Vec<Chunk>)> = Vec::new();
        let mut done = 0;
        for doc in docs {
            let meta = if doc.meta.is_empty() { String::new() } else { format!("\u{0}{:?}", doc.meta) };
            let hash = sha(&format!("{}\u{0}{}{meta}", doc.title.as_deref().unwrap_or(""), doc.text));
            match known.get(&doc.id) {
                Some(old) if *old == hash => {
                    report.unchanged += 1;
                    done += 1;
                    continue;
                }
                Some(_) => report.updated += 1,
                None => report.added += 1,
            }
            // Room for the title, which is embedded with every chunk.
            let title_tokens = doc.title.as_deref().map_or(0, |t| count(t).saturating_sub(1));
            let room = Limits { max_tokens: limits.max_tokens.saturating_sub(title_tokens).max(limits.max_tokens / 2), ..limits };
            let chunks = chunk::chunk(&doc.text, doc.kind, room, count);
            batch.push((doc, hash, chunks));
            if batch.iter().map(|(_, _, c)| c.len()).sum::<usize>() >= 256 {
                done += batch.len();
                self.commit_batch(std::mem::take(&mut batch), embedder, &mut report).await?;
                progress(done, total);
            }
        }
        done += batch.len();
        self.commit_batch(batch, embedder, &mut report).await?;
        progress(done, total);
        if let Some(scope) = replace_scope {
            let gone: Vec<&String> = known.keys().filter(|id| id.starts_with(scope) && !given.contains(*id)).collect();
            for id in gone {
                self.delete_doc(id)?;
                report.deleted += 1;
            }
        }
        self.save()?;
        report.chunks = self.docs_of.len();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn commit_batch(&mut self, batch: Vec<(Document, String, Vec<Chunk>)>, embedder: &dyn Embedder, report: &mut IngestReport) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Vectors: from the cache by the chunk text's hash, else embedded now (batched).
        let mut wanted: Vec<(String, String)> = Vec::new();
        let mut cached: HashMap<String, Vec<f32>> = HashMap::new();
        for (doc, _, chunks) in &batch {
            for c in chunks {
                let text = embed_text(doc.title.as_deref(), c);
                let hash = sha(&text);
                if cached.contains_key(&hash) || wanted.iter().any(|(h, _)| *h == hash) {
                    continue;
                }
                let hit: Option<Vec<u8>> = self.db.query_row("SELECT vector FROM embed_cache WHERE hash = ?1", [&hash], |r| r.get(0)).optional().map_err(io)?;
                match hit {
                    Some(blob) => {
                        cached.insert(hash, from_blob(&blob));
                    }
                    None => wanted.push((hash, text)),
                }
            }
        }
        for group in wanted.chunks(64) {
            let texts: Vec<String> = group.iter().map(|(_, t)| t.clone()).collect();
            let vectors = embedder.embed(&texts).await.map_err(Error::Embed)?;
            if vectors.len() != texts.len() {
                return Err(Error::Embed(format!("asked for {} vectors, got {}", texts.len(), vectors.len())));
            }
            for ((hash, _), vector) in group.iter().zip(vectors) {
                let vector = normalize(vector);
                if self.dim == 0 {
                    self.dim = vector.len();
                    self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dim', ?1)", [self.dim.to_string()]).map_err(io)?;
                } else if vector.len() != self.dim {
                    return Err(Error::ModelMismatch { name: self.name.clone(), have: self.model.clone(), dim: self.dim, want: format!("a model giving {} dimensions", vector.len()) });
                }
                cached.insert(hash.clone(), vector);
                report.embedded += 1;
            }
        }
        // One transaction for the batch; then the BM25 index and the in-memory vectors.
        let tx = self.db.transaction().map_err(io)?;
        let mut removed: Vec<i64> = Vec::new();
        let mut added: Vec<(i64, String, Vec<f32>)> = Vec::new();
        let mut entries: Vec<index::Entry> = Vec::new();
        for (doc, hash, chunks) in &batch {
            let mut stmt = tx.prepare("SELECT id FROM chunks WHERE doc = ?1").map_err(io)?;
            let old: Vec<i64> = stmt.query_map([&doc.id], |r| r.get(0)).and_then(|rows| rows.collect()).map_err(io)?;
            removed.extend(old);
            tx.execute("DELETE FROM chunks WHERE doc = ?1", [&doc.id]).map_err(io)?;
            let meta = (!doc.meta.is_empty()).then(|| serde_json::to_string(&doc.meta).unwrap_or_default());
            let pages = (!doc.pages.is_empty()).then(|| serde_json::to_string(&doc.pages).unwrap_or_default());
            tx.execute("INSERT OR REPLACE INTO docs (id, source, title, hash, meta, pages) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", params![doc.id, doc.source, doc.title, hash, meta, pages])
                .map_err(io)?;
            let mut stored: Vec<(i64, String)> = Vec::with_capacity(chunks.len());
            for (seq, c) in chunks.iter().enumerate() {
                let text = embed_text(doc.title.as_deref(), c);
                let text_hash = sha(&text);
                let vector = cached[&text_hash].clone();
                let headings = serde_json::to_string(&c.headings).unwrap_or_default();
                tx.execute("INSERT OR IGNORE INTO embed_cache (hash, vector) VALUES (?1, ?2)", params![text_hash, to_blob(&vector)]).map_err(io)?;
                tx.execute(
                    "INSERT INTO chunks (doc, seq, headings, start, end, text, hash, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![doc.id, seq as i64, headings, c.range.start as i64, c.range.end as i64, c.text, text_hash, to_blob(&vector)],
                )
                .map_err(io)?;
                stored.push((tx.last_insert_rowid(), headings));
                added.push((tx.last_insert_rowid(), doc.id.clone(), vector));
            }
            let for_bm25: Vec<_> = stored.iter().zip(chunks).map(|((id, headings), c)| (*id, headings.as_str(), c.range.clone(), c.text.as_str())).collect();
            entries.extend(index::units(doc.title.as_deref(), &for_bm25));
        }
        bump(&mut self.generation, &tx)?;
        tx.commit().map_err(io)?;
        self.bm25.update(&removed, entries.into_iter()).map_err(io)?;
        if self.vectors.is_none() {
            self.vectors = Some(self.new_index()?);
        }
        let vectors = self.vectors.as_ref().expect("made above");
        vectors.remove(&removed)?;
        vectors.add(&added.iter().map(|(id, _, v)| (*id, v.as_slice())).collect::<Vec<_>>())?;
        for id in removed {
            self.docs_of.remove(&id);
        }
        for (id, doc, _) in added {
            self.docs_of.insert(id, doc);
        }
        Ok(())
    }

    fn delete_doc(&mut self, id: &str) -> Result<()> {
        let tx = self.db.transaction().map_err(io)?;
        let old: Vec<i64> = {
            let mut stmt = tx.prepare("SELECT id FROM chunks WHERE doc = ?1").map_err(io)?;
            stmt.query_map([id], |r| r.get(0)).and_then(|rows| rows.collect()).map_err(io)?
        };
        tx.execute("DELETE FROM chunks WHERE doc = ?1", [id]).map_err(io)?;
        tx.execute("DELETE FROM docs WHERE id = ?1", [id]).map_err(io)?;
        bump(&mut self.generation, &tx)?;
        tx.commit().map_err(io)?;
        self.bm25.update(&old, std::iter::empty()).map_err(io)?;
        if let Some(vectors) = &self.vectors {
            vectors.remove(&old)?;
        }
        for id in old {
            self.docs_of.remove(&id);
        }
        Ok(())
    }

    /// The `k` nearest chunks to a unit vector, best first (among `allowed` only, when
    /// given). A failing engine is an error, never an empty list.
    fn vector_search(&self, query: &[f32], k: usize, allowed: Option<&std::collections::HashSet<i64>>) -> Result<Vec<(i64, f64)>> {
        match &self.vectors {
            // Only chunks the collection holds (an engine may lag a moment behind a delete).
            Some(vectors) => Ok(vectors
                .search(query, k, allowed)
                .map_err(|e| Error::Io(format!("vector search in `{}`: {e}", self.name)))?
                .into_iter()
                .filter(|(id, _)| self.docs_of.contains_key(id))
                .collect()),
            None => Ok(Vec::new()),
        }
    }

    pub fn bm25_search(&self, query: &str, k: usize) -> Vec<(i64, f64)> {
        self.bm25.search(query, k).unwrap_or_default()
    }

    /// The collection's trust label: `untrusted` (anyone may have written its documents; the
    /// default) or `trusted`. Search results carry it, for the guard.
    pub fn trust(&self) -> String {
        self.db.query_row("SELECT value FROM meta WHERE key = 'trust'", [], |r| r.get(0)).unwrap_or_else(|_| "untrusted".into())
    }

    pub fn set_trust(&self, trust: &str) -> Result<()> {
        if !matches!(trust, "trusted" | "untrusted") {
            return Err(Error::Io(format!("trust is `trusted` or `untrusted`, not `{trust}`")));
        }
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('trust', ?1)", [trust]).map_err(io)?;
        Ok(())
    }

    /// The cosine similarity of a chunk to a unit query vector (0 for an unknown chunk).
    pub fn similarity(&self, chunk: i64, query: &[f32]) -> f64 {
        let blob: Option<Vec<u8>> = self.db.query_row("SELECT vector FROM chunks WHERE id = ?1", [chunk], |r| r.get(0)).optional().ok().flatten();
        blob.map_or(0.0, |blob| f64::from(from_blob(&blob).iter().zip(query).map(|(a, b)| a * b).sum::<f32>()))
    }

    pub fn doc_of(&self, chunk: i64) -> Option<&str> {
        self.docs_of.get(&chunk).map(String::as_str)
    }

    /// Ranked chunks for a query; with several chunks of one document, only its best counts
    /// (fusion gives each document one vote per list), so a long document cannot crowd out
    /// the others.
    pub async fn search(&self, query: &str, search: &Search, embedder: &dyn Embedder) -> Result<Vec<(i64, f64)>> {
        let vector = match search.mode {
            Mode::Bm25 => None,
            _ => Some(embed_query(embedder, query).await?),
        };
        self.search_with(query, vector.as_deref(), search)
    }

    /// The ids of the documents a filter keeps (`None`: every document).
    fn allowed_docs(&self, filter: &[Filter]) -> Result<Option<std::collections::HashSet<String>>> {
        if filter.is_empty() {
            return Ok(None);
        }
        let mut stmt = self.db.prepare("SELECT id, source, title, meta FROM docs").map_err(io)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?)))
            .map_err(io)?;
        let mut allowed = std::collections::HashSet::new();
        for row in rows {
            let (id, source, title, meta) = row.map_err(io)?;
            let meta: BTreeMap<String, String> = meta.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default();
            let value_of = |key: &str| match key {
                "source" => Some(source.as_str()),
                "doc" => Some(id.as_str()),
                "title" => title.as_deref(),
                other => meta.get(other).map(String::as_str),
            };
            if filter.iter().all(|f| value_of(&f.key).is_some_and(|v| f.matches(v))) {
                allowed.insert(id);
            }
        }
        Ok(Some(allowed))
    }

    /// [`Collection::search`] with the query's vector already made (by [`embed_query`]), so
    /// a caller can embed without holding the collection.
    pub fn search_with(&self, query: &str, vector: Option<&[f32]>, search: &Search) -> Result<Vec<(i64, f64)>> {
        if query.trim().is_empty() {
            return Err(Error::EmptyQuery);
        }
        let allowed = self.allowed_docs(&search.filter)?;
        let docs_of = &self.docs_of;
        let keep = |id: i64| allowed.as_ref().is_none_or(|docs| docs_of.get(&id).is_some_and(|d| docs.contains(d)));
        let depth = (search.k * 4).max(100);
        let vector = || {
            let v = vector.ok_or_else(|| Error::Embed("the query has no vector".into()))?;
            if self.dim != 0 && v.len() != self.dim {
                return Err(Error::ModelMismatch { name: self.name.clone(), have: self.model.clone(), dim: self.dim, want: format!("a model giving {} dimensions", v.len()) });
            }
            let chunks: Option<std::collections::HashSet<i64>> =
                allowed.as_ref().map(|_| docs_of.keys().copied().filter(|id| keep(*id)).collect());
            self.vector_search(v, depth, chunks.as_ref())
        };
        // BM25 with a filter looks at every match, so a filter never starves the list.
        let bm25 = || match &allowed {
            None => self.bm25_search(query, depth),
            Some(_) => self.bm25_search(query, self.docs_of.len().max(1)).into_iter().filter(|(id, _)| keep(*id)).take(depth).collect(),
        };
        let ranked = match search.mode {
            Mode::Bm25 => self.best_per_doc(bm25()),
            Mode::Vector => self.best_per_doc(vector()?),
            Mode::Hybrid => {
                // Weighted reciprocal rank fusion over documents: each list gives a document
                // one vote (its best chunk's rank), times the list's weight, and the document
                // is shown by the chunk that ranked best in either list.
                let lists = [(search.bm25_weight, self.best_per_doc(bm25())), (search.vector_weight, self.best_per_doc(vector()?))];
                let mut fused: HashMap<&str, (f64, i64, usize)> = HashMap::new();
                for (weight, list) in &lists {
                    for (rank, (id, _)) in list.iter().enumerate() {
                        let doc = self.doc_of(*id).unwrap_or_default();
                        let entry = fused.entry(doc).or_insert((0.0, *id, rank));
                        entry.0 += weight / (search.rrf_k + rank as f64 + 1.0);
                        if rank < entry.2 {
                            (entry.1, entry.2) = (*id, rank);
                        }
                    }
                }
                let mut out: Vec<(i64, f64)> = fused.into_values().filter(|(score, _, _)| *score > 0.0).map(|(score, id, _)| (id, score)).collect();
                out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                out
            }
        };
        Ok(ranked.into_iter().take(search.k).collect())
    }

    /// Keeps the first (best) chunk of each document.
    fn best_per_doc(&self, ranked: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
        let mut seen = std::collections::HashSet::new();
        ranked.into_iter().filter(|(id, _)| seen.insert(self.doc_of(*id).unwrap_or_default().to_string())).collect()
    }

    /// The chunks as hits, with their sources.
    pub fn hits(&self, ranked: &[(i64, f64)]) -> Result<Vec<Hit>> {
        let mut out = Vec::new();
        for (id, score) in ranked {
            let row = self
                .db
                .query_row(
                    "SELECT c.doc, d.source, d.title, c.headings, c.start, c.end, c.text, d.pages FROM chunks c JOIN docs d ON d.id = c.doc WHERE c.id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, String>(6)?,
                            r.get::<_, Option<String>>(7)?,
                        ))
                    },
                )
                .optional()
                .map_err(io)?;
            if let Some((doc, source, title, headings, start, end, text, pages)) = row {
                let pages: Vec<usize> = pages.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default();
                out.push(Hit {
                    chunk_id: *id,
                    doc,
                    source,
                    title,
                    headings: serde_json::from_str(&headings).unwrap_or_default(),
                    start: start as usize,
                    end: end as usize,
                    page: pdf::page_of(&pages, start as usize),
                    text,
                    score: *score,
                });
            }
        }
        Ok(out)
    }
}

/// A query's unit vector.
pub async fn embed_query(embedder: &dyn Embedder, query: &str) -> Result<Vec<f32>> {
    if query.trim().is_empty() {
        return Err(Error::EmptyQuery);
    }
    let mut vectors = embedder.embed(&[query.to_string()]).await.map_err(Error::Embed)?;
    Ok(normalize(vectors.pop().ok_or_else(|| Error::Embed("no vector came back".into()))?))
}

/// What is embedded for a chunk: its text after the document's title, which gives every
/// chunk of the document its context (the chunk budget leaves room for it).
fn embed_text(title: Option<&str>, chunk: &Chunk) -> String {
    match title {
        Some(title) if !chunk.text.starts_with(title) => format!("{title}\n{}", chunk.text),
        _ => chunk.text.clone(),
    }
}

