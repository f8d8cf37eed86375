//! `keel rag …`: ingest documents into a collection, search it, and measure retrieval on a
//! BEIR data set.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use std::sync::Mutex;

use keel_agent::rag::ModelAlias;
use keel_rag::rerank::Judge;
use keel_rag::{Collection, Limits, Mode};

use crate::settings::{self, Settings};
use crate::table::{self, Cell};
use clap::Subcommand;

/// Where collections live: `$KEEL_HOME/rag` (the data folder's `rag/`).
pub fn root() -> PathBuf {
    settings::data_dir().join("rag")
}

pub struct Setup {
    pub router: Arc<keel_llm::Router>,
    pub model: String,
    /// Tokens of the embedding model (special tokens included).
    pub count: Box<dyn Fn(&str) -> usize + Send + Sync>,
}

/// The gateway, and the embedding model's tokenizer when it is a local model (else an
/// estimate of four characters a token, with room to spare).
pub async fn setup(config: Option<&Path>, model: &str, pull: bool) -> anyhow::Result<Setup> {
    let settings: Settings = settings::load(config)?;
    crate::local::ensure_models(&settings.config, pull).await?;
    let router = Arc::new(crate::local::router(&settings.config).context("could not set up the providers")?);
    let alias = router.alias(model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokenizer = alias
        .routes
        .iter()
        .map(|route| crate::local::models_dir().join(&route.model).join("tokenizer.json"))
        .find(|path| path.is_file())
        .and_then(|path| tokenizers::Tokenizer::from_file(path).ok())
        .map(|mut tokenizer| {
            // Count every token: a file's own truncation setting would hide long chunks.
            let _ = tokenizer.with_truncation(None);
            tokenizer.with_padding(None);
            tokenizer
        });
    let count: Box<dyn Fn(&str) -> usize + Send + Sync> = match tokenizer {
        Some(tokenizer) => Box::new(move |text: &str| tokenizer.encode(text, true).map_or(text.len() / 3 + 2, |e| e.len())),
        None => Box::new(|text: &str| text.len() / 3 + 2),
    };
    Ok(Setup { router, model: model.to_string(), count })
}

/// A progress bar on standard error, drawn only when it is a terminal.
pub(crate) fn progress(label: &'static str) -> impl Fn(usize, usize) + Sync {
    let show = std::io::stderr().is_terminal();
    move |done: usize, total: usize| {
        if show && total > 0 {
            let width = 30;
            let filled = done * width / total;
            eprint!("\r{label} [{}{}] {done}/{total}", "#".repeat(filled), ".".repeat(width - filled));
            if done == total {
                eprintln!();
            }
        }
    }
}

pub struct IngestArgs<'a> {
    pub paths: &'a [PathBuf],
    pub collection: &'a str,
    pub model: &'a str,
    pub limits: Limits,
    pub json: bool,
    pub pull: bool,
    pub trust: Option<&'a str>,
    pub meta: &'a BTreeMap<String, String>,
    pub engine: Option<keel_rag::Engine>,
}

/// `keel rag ingest PATH… -c NAME`.
pub async fn ingest(config: Option<&Path>, args: IngestArgs<'_>) -> anyhow::Result<()> {
    let setup = setup(config, args.model, args.pull).await?;
    let gathered = keel_rag::source::gather(args.paths, args.meta).await?;
    let mut collection = Collection::open_on(&root(), args.collection, args.model, true, args.engine)?;
    if let Some(trust) = args.trust {
        collection.set_trust(trust)?;
    }
    let embedder = ModelAlias::new(&*setup.router, &setup.model);
    // Each folder given is a scope: its files that are gone are removed.
    let scope = if gathered.scopes.len() == 1 { Some(gathered.scopes[0].as_str()) } else { None };
    let mut report = collection.ingest(gathered.docs, scope, &embedder, args.limits, &*setup.count, &progress("ingesting")).await?;
    report.skipped = gathered.skipped;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let docs_per_s = (report.added + report.updated) as f64 / report.seconds.max(1e-9);
    println!(
        "{} {}: {} added, {} updated, {} unchanged, {} deleted; {} chunks ({} embedded) in {:.1} s ({docs_per_s:.1} docs/s)",
        table::paint("✔", table::GREEN),
        args.collection,
        report.added,
        report.updated,
        report.unchanged,
        report.deleted,
        report.chunks,
        report.embedded,
        report.seconds
    );
    for (path, why) in &report.skipped {
        println!("  {} {path}: {why}", table::paint("skipped", table::YELLOW));
    }
    Ok(())
}

/// A collection of `root()` opened for queries with the model it was made with (or `model`),
/// and the gateway set up for that model.
pub(crate) async fn open_for_query(config: Option<&Path>, name: &str, model: Option<&str>, pull: bool) -> anyhow::Result<(Mutex<Collection>, Setup)> {
    let stored = keel_rag::stored_model(&root(), name).ok_or_else(|| keel_rag::Error::NoCollection(name.into()))?;
    let model = model.unwrap_or(&stored);
    let collection = Collection::open(&root(), name, model, false)?;
    let setup = setup(config, model, pull).await?;
    Ok((Mutex::new(collection), setup))
}

/// A reranking judge for `alias`, checked to be a model alias first.
fn judge<'a>(router: &'a keel_llm::Router, alias: Option<&str>) -> anyhow::Result<Option<ModelAlias<'a>>> {
    let Some(alias) = alias else { return Ok(None) };
    router.alias(alias).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(ModelAlias::new(router, alias)))
}

/// `keel rag query "…" -c NAME`.
pub async fn query(config: Option<&Path>, collection: &str, text: &str, search: &keel_rag::Search, model: Option<&str>, rerank: Option<&str>, json: bool) -> anyhow::Result<()> {
    let (collection, setup) = open_for_query(config, collection, model, false).await?;
    let embedder = ModelAlias::new(&*setup.router, &setup.model);
    let judge = judge(&setup.router, rerank)?;
    let query = keel_rag::Query { rerank: judge.is_some(), ..keel_rag::Query::new(text, search.clone()) };
    let hits = keel_rag::query(&collection, &query, &embedder, judge.as_ref().map(|j| j as &dyn Judge)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("nothing found");
    }
    for (n, hit) in hits.iter().enumerate() {
        let place = if hit.headings.is_empty() { String::new() } else { format!(" › {}", hit.headings.join(" › ")) };
        println!("{} {}{place} {}", table::paint(&format!("[{}]", n + 1), table::BOLD), hit.source, table::paint(&format!("bytes {}-{} · {:.4}", hit.start, hit.end, hit.score), table::DIM));
        let flat: String = hit.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let shown: String = flat.chars().take(240).collect();
        println!("    {shown}{}", if flat.chars().count() > 240 { "…" } else { "" });
    }
    Ok(())
}

pub struct AskArgs<'a> {
    pub question: &'a str,
    pub collection: &'a str,
    pub k: usize,
    pub model: &'a str,
    pub embedding_model: Option<&'a str>,
    pub min_similarity: f64,
    pub rerank: Option<&'a str>,
    pub json: bool,
    pub pull: bool,
}

/// `keel rag ask "…" -c NAME`: retrieves (hybrid), keeps the chunks close enough to the
/// question, and has a model behind the gateway answer from them with numbered citations;
/// with nothing relevant, it says it does not know without asking a model.
pub async fn ask(config: Option<&Path>, args: AskArgs<'_>) -> anyhow::Result<()> {
    let (collection, setup) = open_for_query(config, args.collection, args.embedding_model, args.pull).await?;
    setup.router.alias(args.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let embedder = ModelAlias::new(&*setup.router, &setup.model);
    let judge = judge(&setup.router, args.rerank)?;
    let writer = ModelAlias::new(&*setup.router, args.model);
    let question = keel_rag::Query {
        min_similarity: Some(args.min_similarity),
        rerank: judge.is_some(),
        ..keel_rag::Query::new(args.question, keel_rag::Search::new(args.k, Mode::Hybrid))
    };
    let answered = keel_rag::answer::ask(&collection, &question, &embedder, judge.as_ref().map(|j| j as &dyn Judge), &writer).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answered)?);
        return Ok(());
    }
    let keel_rag::answer::Answer { answer, citations, unknown_citations: unknown, sources: hits, .. } = answered;
    println!("{answer}");
    if !citations.is_empty() {
        println!();
        for c in &citations {
            let place = if c.headings.is_empty() { String::new() } else { format!(" › {}", c.headings.join(" › ")) };
            println!("{} {}{place} {}", table::paint(&format!("[{}]", c.n), table::BOLD), c.source, table::paint(&format!("bytes {}-{}", c.start, c.end), table::DIM));
        }
    }
    if !unknown.is_empty() {
        let list = unknown.iter().map(|n| format!("[{n}]")).collect::<Vec<_>>().join(" ");
        println!("{}", table::paint(&format!("the answer cites {list}, which is not one of the {} sources it was given", hits.len()), table::YELLOW));
    }
    Ok(())
}

/// `keel rag collections`.
pub fn collections(json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for name in keel_rag::list(&root()) {
        let model = keel_rag::stored_model(&root(), &name).unwrap_or_default();
        match Collection::open(&root(), &name, &model, false) {
            Ok(c) => {
                out.push(serde_json::json!({"name": name, "model": c.model, "dim": c.dim, "documents": c.doc_count(), "chunks": c.chunk_count(), "trust": c.trust(), "engine": c.engine()}));
                let trust = Cell::new(c.trust());
                let trust = if trust.text == "trusted" { trust.color(table::GREEN) } else { trust.color(table::YELLOW) };
                rows.push(vec![Cell::new(&name), Cell::new(&c.model), Cell::num(c.dim.to_string()), Cell::num(c.doc_count().to_string()), Cell::num(c.chunk_count().to_string()), trust, Cell::new(format!("{:?}", c.engine()).to_lowercase())]);
            }
            Err(err) => rows.push(vec![Cell::new(&name), Cell::new(err.to_string()).color(table::RED), Cell::new(""), Cell::new(""), Cell::new(""), Cell::new(""), Cell::new("")]),
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if rows.is_empty() {
        println!("no collections yet; make one with: keel rag ingest PATH --collection NAME");
    } else {
        print!("{}", table::render(&["COLLECTION", "MODEL", "DIM", "DOCS", "CHUNKS", "TRUST", "ENGINE"], &rows));
    }
    Ok(())
}

/// `keel rag rebuild NAME`: the BM25 and vector indexes again from the collection's chunks.
pub fn rebuild(name: &str) -> anyhow::Result<()> {
    let model = keel_rag::stored_model(&root(), name).ok_or_else(|| keel_rag::Error::NoCollection(name.into()))?;
    let collection = Collection::rebuild(&root(), name, &model)?;
    println!("rebuilt the BM25 and vector indexes of {name} ({} chunks)", collection.chunk_count());
    Ok(())
}

/// `keel rag eval --beir DIR`: nDCG@10, recall@100 and MRR@10 of bm25, vector and hybrid
/// (fused as `fusion` says: RRF k and list weights).
#[allow(clippy::too_many_arguments)]
pub async fn eval(
    config: Option<&Path>,
    dir: &Path,
    qrels: Option<&Path>,
    collection: Option<&str>,
    model: &str,
    limits: Limits,
    fusion: &keel_rag::Search,
    json: bool,
    pull: bool,
) -> anyhow::Result<()> {
    let beir = keel_rag::eval::Beir::load(dir, qrels)?;
    if beir.queries.is_empty() {
        bail!("{} has no queries with judgements", dir.display());
    }
    let setup = setup(config, model, pull).await?;
    let name = match collection {
        Some(name) => name.to_string(),
        None => format!("beir-{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("data").replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")),
    };
    let mut collection = Collection::open(&root(), &name, model, true)?;
    let docs = beir.documents();
    let embedder = ModelAlias::new(&*setup.router, &setup.model);
    let report = collection.ingest(docs, Some(""), &embedder, limits, &*setup.count, &progress("ingesting")).await?;
    if !json {
        eprintln!(
            "{name}: {} documents, {} chunks ({} embedded now, {:.1} s, {:.0} docs/s)",
            collection.doc_count(),
            report.chunks,
            report.embedded,
            report.seconds,
            (report.added + report.updated) as f64 / report.seconds.max(1e-9)
        );
    }
    let mut results = serde_json::Map::new();
    let mut rows = Vec::new();
    for result in keel_rag::eval::run(&collection, &beir, fusion, &embedder).await? {
        let (scores, p50, p99) = (&result.scores, result.latency_ms_p50, result.latency_ms_p99);
        let mode_name = serde_json::to_value(result.mode)?.as_str().unwrap_or_default().to_string();
        rows.push(vec![
            Cell::new(&mode_name),
            Cell::num(format!("{:.4}", scores.ndcg_at_10)),
            Cell::num(format!("{:.4}", scores.recall_at_100)),
            Cell::num(format!("{:.4}", scores.mrr_at_10)),
            Cell::num(format!("{p50:.1} / {p99:.1}")),
        ]);
        let mut value = serde_json::to_value(scores)?;
        value["latency_ms_p50"] = serde_json::json!(p50);
        value["latency_ms_p99"] = serde_json::json!(p99);
        results.insert(mode_name, value);
    }
    if json {
        println!("{}", serde_json::json!({"collection": name, "queries": beir.queries.len(), "documents": collection.doc_count(), "fusion": {"rrf_k": fusion.rrf_k, "bm25_weight": fusion.bm25_weight, "vector_weight": fusion.vector_weight}, "results": results}));
    } else {
        println!("{} queries over {} documents ({})", beir.queries.len(), collection.doc_count(), name);
        print!("{}", table::render(&["MODE", "NDCG@10", "RECALL@100", "MRR@10", "MS P50 / P99"], &rows));
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum RagCommand {
    /// Read files, folders and URLs (Markdown, text, HTML, PDF text layers, source code) into a collection: chunked
    /// by structure within the embedding model's window, embedded through the gateway,
    /// indexed for BM25 and vectors. Again later, only changed files are read again and
    /// files gone from a folder are removed.
    Ingest {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, short = 'c')]
        collection: String,
        /// The embedding model alias (a collection keeps the one it was made with).
        #[arg(long, default_value = "local-embed")]
        embedding_model: String,
        #[command(flatten)]
        chunking: ChunkArgs,
        /// The collection's trust label, carried by every search result for the guard:
        /// `untrusted` (the default: anyone may have written these documents) or `trusted`.
        #[arg(long, value_parser = ["trusted", "untrusted"])]
        trust: Option<String>,
        /// Metadata on every document of this ingest, to filter on later (repeatable):
        /// --meta team=infra.
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<keel_rag::Filter>,
        /// Where a new collection keeps its vectors: embedded (HNSW in keel's data folder) or
        /// pgvector (PostgreSQL at $KEEL_RAG_POSTGRES_URL) or qdrant (at $KEEL_RAG_QDRANT_URL).
        #[arg(long)]
        engine: Option<keel_rag::Engine>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        pull: bool,
    },
    /// Search a collection: the best chunks, with their source, headings and byte range.
    Query {
        query: String,
        #[arg(long, short = 'c')]
        collection: String,
        #[arg(short = 'k', default_value_t = 10)]
        k: usize,
        /// hybrid (BM25 and vectors fused), vector or bm25.
        #[arg(long, default_value = "hybrid")]
        mode: keel_rag::Mode,
        /// Only documents where KEY is VALUE (or starts with PREFIX for PREFIX*); keys are
        /// source, doc, title and ingest metadata. Repeatable: all must hold.
        #[arg(long, value_name = "KEY=VALUE")]
        filter: Vec<keel_rag::Filter>,
        #[command(flatten)]
        fusion: FusionArgs,
        /// Rerank the top 20 with this chat model alias (listwise, through the gateway).
        #[arg(long, value_name = "ALIAS")]
        rerank: Option<String>,
        #[arg(long)]
        embedding_model: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Answer a question from a collection through a model behind the gateway, citing the
    /// chunks it used as [1], [2]… (source, headings, byte range); when nothing retrieved is
    /// close enough to the question, says it does not know instead.
    Ask {
        question: String,
        #[arg(long, short = 'c')]
        collection: String,
        /// Chunks retrieved (hybrid) and offered as sources.
        #[arg(short = 'k', default_value_t = 5)]
        k: usize,
        /// The chat model alias that answers.
        #[arg(long, short = 'm', default_value = "local")]
        model: String,
        #[arg(long)]
        embedding_model: Option<String>,
        /// Least cosine similarity between question and chunk for the chunk to be a source.
        #[arg(long, default_value_t = keel_rag::answer::MIN_SIMILARITY)]
        min_similarity: f64,
        /// Rerank the retrieved chunks with this chat model alias before answering.
        #[arg(long, value_name = "ALIAS")]
        rerank: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        pull: bool,
    },
    /// The collections, with their model and size.
    Collections {
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a collection's BM25 and vector indexes from its chunks (after a damaged index
    /// file is reported).
    Rebuild { collection: String },
    /// Retrieval quality on a BEIR data set (corpus.jsonl, queries.jsonl, qrels/): nDCG@10,
    /// recall@100 and MRR@10 of bm25, vector and hybrid search, with query latency.
    Eval {
        #[arg(long, value_name = "DIR")]
        beir: PathBuf,
        #[arg(long, value_name = "FILE")]
        qrels: Option<PathBuf>,
        /// The collection to build (default: beir-DIRNAME).
        #[arg(long, short = 'c')]
        collection: Option<String>,
        #[arg(long, default_value = "local-embed")]
        embedding_model: String,
        /// How the corpus is cut into chunks (as `keel rag ingest`).
        #[command(flatten)]
        chunking: ChunkArgs,
        /// How the hybrid row fuses BM25 and vectors.
        #[command(flatten)]
        fusion: FusionArgs,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        pull: bool,
    },
}

/// How documents are cut into chunks.
#[derive(Debug, clap::Args)]
pub struct ChunkArgs {
    /// Most tokens of the embedding model per chunk (title included). The default is the
    /// length all-MiniLM-L6-v2 was trained on; it reads up to 256.
    #[arg(long, default_value_t = keel_rag::Limits::default().max_tokens)]
    pub max_tokens: usize,
    /// Tokens repeated from one chunk at the start of the next.
    #[arg(long, default_value_t = keel_rag::Limits::default().overlap_tokens)]
    pub overlap: usize,
}

impl ChunkArgs {
    pub fn limits(&self) -> keel_rag::Limits {
        keel_rag::Limits { max_tokens: self.max_tokens, overlap_tokens: self.overlap }
    }
}

/// How hybrid search fuses the BM25 and vector rankings.
#[derive(Debug, clap::Args)]
pub struct FusionArgs {
    /// Reciprocal rank fusion's k.
    #[arg(long, default_value_t = 60.0)]
    pub rrf_k: f64,
    /// Weight of the BM25 list in hybrid fusion.
    #[arg(long, default_value_t = 1.0)]
    bm25_weight: f64,
    /// Weight of the vector list in hybrid fusion.
    #[arg(long, default_value_t = 1.0)]
    pub vector_weight: f64,
}

impl FusionArgs {
    pub fn search(&self, k: usize, mode: keel_rag::Mode, filter: Vec<keel_rag::Filter>) -> keel_rag::Search {
        keel_rag::Search { k, mode, rrf_k: self.rrf_k, bm25_weight: self.bm25_weight, vector_weight: self.vector_weight, filter }
    }
}

/// `keel rag …`.
pub async fn run(config: Option<&Path>, command: RagCommand) -> anyhow::Result<()> {
    match command {
        RagCommand::Ingest { paths, collection, embedding_model, chunking, json, pull, trust, meta, engine } => {
            let meta: BTreeMap<String, String> = meta.into_iter().map(|f| (f.key, f.value)).collect();
            let args = IngestArgs { paths: &paths, collection: &collection, model: &embedding_model, limits: chunking.limits(), json, pull, trust: trust.as_deref(), meta: &meta, engine };
            ingest(config, args).await
        }
        RagCommand::Query { query: text, collection, k, mode, embedding_model, json, filter, fusion, rerank } => {
            let search = fusion.search(k, mode, filter);
            query(config, &collection, &text, &search, embedding_model.as_deref(), rerank.as_deref(), json).await
        }
        RagCommand::Ask { question, collection, k, model, embedding_model, min_similarity, json, pull, rerank } => {
            let args = AskArgs {
                question: &question,
                collection: &collection,
                k,
                model: &model,
                embedding_model: embedding_model.as_deref(),
                min_similarity,
                rerank: rerank.as_deref(),
                json,
                pull,
            };
            ask(config, args).await
        }
        RagCommand::Collections { json } => collections(json),
        RagCommand::Rebuild { collection } => rebuild(&collection),
        RagCommand::Eval { beir, qrels, collection, embedding_model, chunking, json, pull, fusion } => {
            let fusion = fusion.search(100, Mode::Hybrid, Vec::new());
            eval(config, &beir, qrels.as_deref(), collection.as_deref(), &embedding_model, chunking.limits(), &fusion, json, pull).await
        }
    }
}
