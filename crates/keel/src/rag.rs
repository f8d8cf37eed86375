//! `keel rag …`: ingest documents into a collection, search it, and measure retrieval on a
//! BEIR data set.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keel_rag::{Collection, Document, GatewayEmbedder, Kind, Limits, Mode};

use crate::settings::{self, Settings};
use crate::table::{self, Cell};

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

/// What [`documents`] found: the documents, the files skipped (path, why), and the folders
/// read (each `folder/`, for the collection's scope).
type Found = (Vec<Document>, Vec<(String, String)>, Vec<String>);

/// The files under `paths` keel reads, and those it skips (with why).
fn documents(paths: &[PathBuf], meta: &BTreeMap<String, String>) -> anyhow::Result<Found> {
    let mut docs = Vec::new();
    let mut skipped = Vec::new();
    let mut scopes = Vec::new();
    let mut stack: Vec<PathBuf> = Vec::new();
    for path in paths {
        let real = path.canonicalize().with_context(|| format!("{} does not exist", path.display()))?;
        if real.is_dir() {
            scopes.push(format!("{}/", real.display()));
        }
        stack.push(real);
    }
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') || matches!(name, "node_modules" | "target" | "__pycache__") {
                continue;
            }
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            stack.extend(entries.into_iter().rev());
            continue;
        }
        let shown = path.display().to_string();
        let is_pdf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf"));
        let kind = match Kind::of(&path) {
            Some(kind) => Some(kind),
            None if is_pdf => None,
            None => {
                skipped.push((shown, "not a kind keel reads (markdown, text, HTML, code, PDF)".into()));
                continue;
            }
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                skipped.push((shown, format!("unreadable: {e}")));
                continue;
            }
        };
        let name = path.file_name().and_then(|n| n.to_str()).map(String::from);
        let (text, title, kind, pages) = match read(bytes, kind, name) {
            Ok(read) => read,
            Err(why) => {
                skipped.push((shown, why));
                continue;
            }
        };
        docs.push(Document { id: shown.clone(), source: shown, title, text, kind, meta: meta.clone(), pages });
    }
    Ok((docs, skipped, scopes))
}

/// A document's text, title, layout and page starts from its bytes; `kind` is `None` for a
/// PDF. `Err` says why it is skipped.
fn read(bytes: Vec<u8>, kind: Option<Kind>, name: Option<String>) -> Result<(String, Option<String>, Kind, Vec<usize>), String> {
    let Some(kind) = kind else {
        let (text, pages) = keel_rag::pdf::text(&bytes)?;
        return Ok((text, name, Kind::Text, pages));
    };
    if bytes.contains(&0) {
        return Err("binary".into());
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let (text, title, kind) = match kind {
        Kind::Html => {
            let (text, title) = keel_rag::chunk::html_to_text(&text);
            (text, title, Kind::Markdown)
        }
        Kind::Markdown => {
            let title = text.lines().find(|l| l.starts_with("# ")).map(|l| l[2..].trim().to_string());
            (text, title, kind)
        }
        _ => (text, name, kind),
    };
    if text.trim().is_empty() {
        return Err("empty".into());
    }
    Ok((text, title, kind, Vec::new()))
}

/// Fetches a page or file over HTTP(S): its kind from the content type (else the URL's
/// extension). `Err` says why it is skipped.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<Document, String> {
    let response = client.get(url).send().await.map_err(|e| format!("could not fetch: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("the server answered {}", response.status()));
    }
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase();
    let path_part = url.split(['?', '#']).next().unwrap_or(url);
    let by_extension = Kind::of(Path::new(path_part));
    let kind = if content_type.contains("pdf") || path_part.to_lowercase().ends_with(".pdf") {
        None
    } else if content_type.contains("html") {
        Some(Kind::Html)
    } else if content_type.contains("markdown") {
        Some(Kind::Markdown)
    } else {
        Some(by_extension.unwrap_or(Kind::Text))
    };
    let bytes = response.bytes().await.map_err(|e| format!("could not read the body: {e}"))?;
    let name = path_part.rsplit('/').find(|s| !s.is_empty()).map(String::from);
    let (text, title, kind, pages) = read(bytes.to_vec(), kind, name)?;
    Ok(Document { id: url.to_string(), source: url.to_string(), title, text, kind, meta: Default::default(), pages })
}

fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with("http://") || p.starts_with("https://"))
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
    let (urls, paths): (Vec<PathBuf>, Vec<PathBuf>) = args.paths.iter().cloned().partition(|p| is_url(p));
    let (mut docs, mut skipped, scopes) = documents(&paths, args.meta)?;
    if !urls.is_empty() {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        for url in &urls {
            let url = url.to_string_lossy();
            match fetch(&client, &url).await {
                Ok(doc) => docs.push(Document { meta: args.meta.clone(), ..doc }),
                Err(why) => skipped.push((url.into_owned(), why)),
            }
        }
    }
    let mut collection = Collection::open_on(&root(), args.collection, args.model, true, args.engine)?;
    if let Some(trust) = args.trust {
        collection.set_trust(trust)?;
    }
    let embedder = GatewayEmbedder { router: &setup.router, model: setup.model.clone() };
    let limits = args.limits;
    let mut report = keel_rag::IngestReport::default();
    // Each folder given is a scope: its files that are gone are removed.
    let scope = if scopes.len() == 1 { Some(scopes[0].as_str()) } else { None };
    let done = collection.ingest(docs, scope, &embedder, limits, &*setup.count, &progress("ingesting")).await?;
    report.added = done.added;
    report.updated = done.updated;
    report.unchanged = done.unchanged;
    report.deleted = done.deleted;
    report.chunks = done.chunks;
    report.embedded = done.embedded;
    report.seconds = done.seconds;
    report.skipped = skipped;
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

/// `keel rag query "…" -c NAME`.
pub async fn query(config: Option<&Path>, collection: &str, text: &str, search: &keel_rag::Search, model: Option<&str>, rerank: Option<&str>, json: bool) -> anyhow::Result<()> {
    let stored = keel_rag::stored_model(&root(), collection).ok_or_else(|| keel_rag::Error::NoCollection(collection.into()))?;
    let model = model.unwrap_or(&stored);
    let collection = Collection::open(&root(), collection, model, false)?;
    let setup = setup(config, model, false).await?;
    let embedder = GatewayEmbedder { router: &setup.router, model: setup.model.clone() };
    let hits = match rerank {
        None => collection.hits(&collection.search(text, search, &embedder).await?)?,
        Some(judge) => {
            // The reranker sees a deeper list than is shown, and picks the best of it.
            let deeper = keel_rag::Search { k: search.k.max(keel_rag::rerank::DEPTH), ..search.clone() };
            let hits = collection.hits(&collection.search(text, &deeper, &embedder).await?)?;
            let mut hits = reranked(&setup.router, judge, text, hits).await?;
            hits.truncate(search.k);
            hits
        }
    };
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

async fn reranked(router: &keel_llm::Router, alias: &str, query: &str, hits: Vec<keel_rag::Hit>) -> anyhow::Result<Vec<keel_rag::Hit>> {
    router.alias(alias).map_err(|e| anyhow::anyhow!("{e}"))?;
    let judge = keel_rag::rerank::GatewayJudge { router, model: alias.to_string() };
    keel_rag::rerank::rerank(query, hits, &judge).await.map_err(|e| anyhow::anyhow!("reranking with {alias} failed: {e}"))
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
    let stored = keel_rag::stored_model(&root(), args.collection).ok_or_else(|| keel_rag::Error::NoCollection(args.collection.into()))?;
    let embedding_model = args.embedding_model.unwrap_or(&stored);
    let collection = Collection::open(&root(), args.collection, embedding_model, false)?;
    let setup = setup(config, embedding_model, args.pull).await?;
    setup.router.alias(args.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let embedder = GatewayEmbedder { router: &setup.router, model: setup.model.clone() };
    let vector = keel_rag::embed_query(&embedder, args.question).await?;
    let depth = if args.rerank.is_some() { args.k.max(keel_rag::rerank::DEPTH) } else { args.k };
    let ranked = collection.search_with(args.question, Some(&vector), &keel_rag::Search::new(depth, Mode::Hybrid))?;
    let mut hits: Vec<keel_rag::Hit> =
        collection.hits(&ranked)?.into_iter().filter(|hit| collection.similarity(hit.chunk_id, &vector) >= args.min_similarity).collect();
    if let Some(judge) = args.rerank {
        hits = reranked(&setup.router, judge, args.question, hits).await?;
    }
    hits.truncate(args.k);
    let (answer, model) = if hits.is_empty() {
        (keel_rag::answer::DONT_KNOW.to_string(), None)
    } else {
        let (system, user) = keel_rag::answer::prompt(args.question, &hits);
        let request = keel_core::ChatRequest {
            model: args.model.to_string(),
            messages: vec![keel_core::Message::text(keel_core::Role::System, system), keel_core::Message::text(keel_core::Role::User, user)],
            temperature: Some(0.0),
            ..keel_core::ChatRequest::default()
        };
        let (response, info) = setup.router.chat(&request).await;
        let response = response.map_err(|e| anyhow::anyhow!("the answer failed ({}): {e}", args.model))?;
        (response.message.text_content().trim().to_string(), Some(format!("{}/{}", info.provider, info.model)))
    };
    let known = !hits.is_empty() && !keel_rag::answer::is_dont_know(&answer);
    let (citations, unknown) = keel_rag::answer::citations(&answer, &hits);
    if args.json {
        let report = serde_json::json!({
            "answer": answer, "known": known, "citations": citations, "unknown_citations": unknown,
            "sources": hits, "model": model,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
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
    let beir = keel_rag::eval::Beir::load(dir, qrels).map_err(anyhow::Error::msg)?;
    if beir.queries.is_empty() {
        bail!("{} has no queries with judgements", dir.display());
    }
    let setup = setup(config, model, pull).await?;
    let name = match collection {
        Some(name) => name.to_string(),
        None => format!("beir-{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("data").replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")),
    };
    let mut collection = Collection::open(&root(), &name, model, true)?;
    let docs: Vec<Document> = beir
        .corpus
        .iter()
        .map(|(id, title, text)| Document {
            id: id.clone(),
            source: id.clone(),
            title: (!title.is_empty()).then(|| title.clone()),
            text: text.clone(),
            kind: Kind::Text,
            meta: Default::default(),
            pages: Vec::new(),
        })
        .collect();
    let embedder = GatewayEmbedder { router: &setup.router, model: setup.model.clone() };
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
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let mut per_query = Vec::new();
        let mut latencies = Vec::new();
        for (id, text) in &beir.queries {
            let started = std::time::Instant::now();
            let ranked = collection.search(text, &keel_rag::Search { k: 100, mode, ..fusion.clone() }, &embedder).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let docs: Vec<String> = ranked.iter().filter_map(|(chunk, _)| collection.doc_of(*chunk).map(String::from)).collect();
            per_query.push(keel_rag::eval::score(&docs, &beir.qrels[id]));
        }
        latencies.sort_by(f64::total_cmp);
        let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
        let scores = keel_rag::eval::average(&per_query);
        let mode_name = serde_json::to_value(mode)?.as_str().unwrap_or_default().to_string();
        rows.push(vec![
            Cell::new(&mode_name),
            Cell::num(format!("{:.4}", scores.ndcg_at_10)),
            Cell::num(format!("{:.4}", scores.recall_at_100)),
            Cell::num(format!("{:.4}", scores.mrr_at_10)),
            Cell::num(format!("{:.1} / {:.1}", p(0.5), p(0.99))),
        ]);
        let mut value = serde_json::to_value(&scores)?;
        value["latency_ms_p50"] = serde_json::json!(p(0.5));
        value["latency_ms_p99"] = serde_json::json!(p(0.99));
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
