//! Collections end to end with a deterministic embedder (words hashed into buckets): ingest,
//! re-ingest, updates and deletions, the three search modes, and damaged or mismatched
//! collections.

use std::path::PathBuf;

mod common;

use common::{Words, doc, words};
use futures_util::future::BoxFuture;
use keel_rag::{Collection, Document, Embedder, Limits, Mode, Search};

/// [`Words`] until it has embedded `budget` batches; then it fails, as a killed process or a
/// broken upstream would.
struct Failing {
    budget: std::sync::atomic::AtomicUsize,
}

impl Embedder for Failing {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        if self.budget.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            return Box::pin(async { Err("the embedding upstream went away".to_string()) });
        }
        Words.embed(texts)
    }
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-rag-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn corpus() -> Vec<Document> {
    vec![
        doc("backups.md", "# Backups\n\nNightly backups are kept for thirty five days.\n\nRestores are tested every quarter."),
        doc("oncall.md", "# Oncall\n\nPages escalate after fifteen minutes to the team lead."),
        doc("long.md", &format!("# Gardening\n\n{}", "Tomatoes need sunshine and watering daily. ".repeat(30))),
    ]
}

async fn ingest(c: &mut Collection, docs: Vec<Document>) -> keel_rag::IngestReport {
    c.ingest(docs, Some("docs/"), &Words, Limits { max_tokens: 40, overlap_tokens: 8 }, &words, &|_, _| {}).await.unwrap()
}

#[tokio::test]
async fn ingest_search_update_and_delete_keep_both_indexes_in_step() {
    let root = dir("collection");
    let mut c = Collection::open(&root, "notes", "words", true).unwrap();
    let first = ingest(&mut c, corpus()).await;
    assert_eq!((first.added, first.updated, first.unchanged), (3, 0, 0));
    assert!(first.chunks > 5, "the long document is split: {first:?}");
    let again = ingest(&mut c, corpus()).await;
    assert_eq!((again.added, again.unchanged, again.embedded), (0, 3, 0), "nothing changed, nothing embedded");

    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let ranked = c.search("how long are nightly backups kept", &Search::new(3, mode), &Words).await.unwrap();
        let hits = c.hits(&ranked).unwrap();
        assert_eq!(hits[0].source, "docs/backups.md", "{mode:?}: {hits:#?}");
        assert_eq!(hits[0].headings, ["Backups"]);
        // Each document once, however many of its chunks match.
        let mut sources: Vec<&str> = hits.iter().map(|h| h.source.as_str()).collect();
        sources.dedup();
        assert_eq!(sources.len(), hits.len(), "{mode:?}: {sources:?}");
    }
    let tomato = c.hits(&c.search("tomatoes sunshine watering", &Search::new(5, Mode::Hybrid), &Words).await.unwrap()).unwrap();
    assert_eq!(tomato.iter().filter(|h| h.source == "docs/long.md").count(), 1, "a long document takes one slot: {tomato:#?}");

    // One document changed, one gone: only those are touched.
    let mut docs = corpus();
    docs[1] = doc("oncall.md", "# Oncall\n\nPages now escalate after ten minutes to the duty manager.");
    docs.remove(2);
    let changed = ingest(&mut c, docs).await;
    assert_eq!((changed.updated, changed.unchanged, changed.deleted), (1, 1, 1));
    let hits = c.hits(&c.search("duty manager escalation", &Search::new(2, Mode::Bm25), &Words).await.unwrap()).unwrap();
    assert!(hits[0].text.contains("duty manager"));
    assert!(c.search("tomatoes", &Search::new(5, Mode::Bm25), &Words).await.unwrap().is_empty(), "deleted from BM25");
    let everything = c.search("tomatoes sunshine watering", &Search::new(100, Mode::Vector), &Words).await.unwrap();
    assert!(everything.iter().all(|(id, _)| c.doc_of(*id).is_some_and(|d| d != "docs/long.md")), "deleted from the vector index");
    assert_eq!(everything.len(), 2, "one per remaining document");
    let count = c.chunk_count();
    drop(c);

    // Reopened: the same chunks; a lost BM25 index is rebuilt from them.
    std::fs::remove_dir_all(root.join("notes/bm25")).unwrap();
    let c = Collection::open(&root, "notes", "words", false).unwrap();
    assert_eq!(c.chunk_count(), count);
    assert!(!c.search("duty manager", &Search::new(1, Mode::Bm25), &Words).await.unwrap().is_empty());
    assert!(matches!(c.search("  ", &Search::new(1, Mode::Hybrid), &Words).await, Err(keel_rag::Error::EmptyQuery)));
    drop(c);

    // A damaged vector index is named at open, and `rebuild` makes it again from the chunks.
    std::fs::write(root.join("notes/vectors.hnsw"), b"garbage where the HNSW graph was").unwrap();
    let err = Collection::open(&root, "notes", "words", false).unwrap_err().to_string();
    assert!(err.contains("collection `notes` is damaged") && err.contains("vector index") && err.contains("keel rag rebuild"), "{err}");
    let c = Collection::rebuild(&root, "notes", "words").unwrap();
    assert_eq!(c.chunk_count(), count);
    let hits = c.hits(&c.search("duty manager escalation", &Search::new(1, Mode::Vector), &Words).await.unwrap()).unwrap();
    assert!(hits[0].text.contains("duty manager"), "{hits:#?}");
    drop(c);

    // Another embedding model, an unknown collection, a damaged file: clear errors.
    let err = Collection::open(&root, "notes", "other-model", false).unwrap_err().to_string();
    assert!(err.contains("was embedded with `words` (64 dimensions)"), "{err}");
    let err = Collection::open(&root, "nope", "words", false).unwrap_err().to_string();
    assert!(err.contains("collection `nope` does not exist"), "{err}");
    std::fs::write(root.join("notes/meta.db"), b"this is not a database, it was overwritten").unwrap();
    let err = Collection::open(&root, "notes", "words", false).unwrap_err().to_string();
    assert!(err.contains("collection `notes` is damaged") && err.contains("new collection"), "{err}");
}

#[tokio::test]
async fn an_interrupted_ingest_leaves_a_consistent_collection_that_the_next_ingest_completes() {
    let root = dir("interrupted");
    let docs: Vec<Document> = (0..600)
        .map(|i| doc(&format!("note-{i:03}.md"), &format!("# Note {i}\n\nThe parcel number {i} travels through depot{} with courier{}.", i % 7, i % 11)))
        .collect();
    let limits = Limits { max_tokens: 40, overlap_tokens: 8 };
    let mut c = Collection::open(&root, "parcels", "words", true).unwrap();
    let failing = Failing { budget: 5.into() };
    let err = c.ingest(docs.clone(), Some("docs/"), &failing, limits, &words, &|_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("went away"), "{err}");
    let committed = c.doc_count();
    assert!(committed > 0 && committed < docs.len(), "some batches were committed before the failure: {committed}");
    drop(c);

    // Reopened: what was committed is whole and searchable in both indexes.
    let c = Collection::open(&root, "parcels", "words", false).unwrap();
    assert_eq!(c.doc_count(), committed);
    assert_eq!(c.chunk_count(), committed, "one chunk per note");
    let first = c.hits(&c.search("parcel number 3 depot3", &Search::new(1, Mode::Bm25), &Words).await.unwrap()).unwrap();
    assert_eq!(first[0].source, "docs/note-003.md");
    assert_eq!(c.search("parcel travels", &Search::new(1000, Mode::Vector), &Words).await.unwrap().len(), committed);
    drop(c);

    // The next ingest embeds only what is missing.
    let mut c = Collection::open(&root, "parcels", "words", false).unwrap();
    let report = c.ingest(docs.clone(), Some("docs/"), &Words, limits, &words, &|_, _| {}).await.unwrap();
    assert_eq!(report.unchanged, committed);
    assert_eq!(report.added, docs.len() - committed);
    assert_eq!(c.doc_count(), docs.len());
    assert_eq!(c.search("parcel travels", &Search::new(1000, Mode::Vector), &Words).await.unwrap().len(), docs.len());
    assert_eq!(c.search("parcel travels", &Search::new(1000, Mode::Bm25), &Words).await.unwrap().len(), docs.len());
}

#[tokio::test]
async fn filters_keep_to_matching_documents_in_every_mode_and_weights_shape_fusion() {
    let root = dir("filters");
    let mut c = Collection::open(&root, "ops", "words", true).unwrap();
    let tagged = |id: &str, team: &str, text: &str| Document { meta: [("team".to_string(), team.to_string())].into(), ..doc(id, text) };
    let docs = vec![
        tagged("infra/backups.md", "infra", "# Backups\n\nNightly backups are kept for thirty five days."),
        tagged("infra/restores.md", "infra", "# Restores\n\nRestores of nightly backups are tested every quarter."),
        tagged("sales/backups.md", "sales", "# Backups\n\nSales keeps nightly backups of the pipeline for a week."),
    ];
    ingest(&mut c, docs).await;
    let query = "how long are nightly backups kept";
    let filtered = |filter: &[&str], mode: Mode| Search { filter: filter.iter().map(|f| f.parse().unwrap()).collect(), ..Search::new(10, mode) };
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid] {
        let all = c.hits(&c.search(query, &Search::new(10, mode), &Words).await.unwrap()).unwrap();
        assert_eq!(all.len(), 3, "{mode:?}");
        let sales = c.hits(&c.search(query, &filtered(&["team=sales"], mode), &Words).await.unwrap()).unwrap();
        assert_eq!(sales.iter().map(|h| h.source.as_str()).collect::<Vec<_>>(), ["docs/sales/backups.md"], "{mode:?}");
        let infra = c.hits(&c.search(query, &filtered(&["source=docs/infra/*"], mode), &Words).await.unwrap()).unwrap();
        assert!(infra.len() == 2 && infra.iter().all(|h| h.source.starts_with("docs/infra/")), "{mode:?}: {infra:#?}");
        let none = c.search(query, &filtered(&["team=infra", "source=docs/sales/*"], mode), &Words).await.unwrap();
        assert!(none.is_empty(), "{mode:?}: every condition must hold");
        let unknown = c.search(query, &filtered(&["colour=blue"], mode), &Words).await.unwrap();
        assert!(unknown.is_empty(), "{mode:?}: a key no document has matches nothing");
    }
    assert!("no-equals-sign".parse::<keel_rag::Filter>().is_err());

    // With the BM25 list weighted out, hybrid ranks as the vector list does.
    let vector = c.search(query, &Search::new(3, Mode::Vector), &Words).await.unwrap();
    let hybrid = c.search(query, &Search { bm25_weight: 0.0, ..Search::new(3, Mode::Hybrid) }, &Words).await.unwrap();
    assert_eq!(vector.iter().map(|(id, _)| *id).collect::<Vec<_>>(), hybrid.iter().map(|(id, _)| *id).collect::<Vec<_>>());
    // Metadata counts in a document's identity: re-tagging it is an update.
    let report = ingest(&mut c, vec![tagged("infra/backups.md", "platform", "# Backups\n\nNightly backups are kept for thirty five days.")]).await;
    assert_eq!(report.updated, 1);
    assert_eq!(c.search(query, &filtered(&["team=platform"], Mode::Hybrid), &Words).await.unwrap().len(), 1);
}

/// A section longer than one chunk is one BM25 unit: a query whose words fall in different
/// chunks of it finds it above a document that holds only one of them, shown by its
/// best-matching chunk. An index written before units existed is made again at open.
#[tokio::test]
async fn bm25_scores_a_section_split_by_the_embedding_window_as_one_unit() {
    let root = dir("units");
    let filler = "the quarterly report lists every vendor invoice and payment term ";
    let split = doc("split.md", &format!("# Plant\n\nThe glacier feeds the reservoir. {}The turbine hall holds four generators.", filler.repeat(4)));
    // One chunk that says "glacier" twice (more than any one chunk of the split section
    // holds of the query), and one that says "turbine", so both words are as rare.
    let twice = doc("twice.md", "# Trip\n\nThe glacier walk starts at dawn and the glacier is quiet.");
    let other = doc("other.md", "# Wind\n\nA wind turbine needs a steady breeze.");
    let mut c = Collection::open(&root, "plant", "words", true).unwrap();
    let report = ingest(&mut c, vec![split, twice, other]).await;
    assert!(report.chunks >= 4, "the section is longer than one chunk: {report:?}");
    let glacier = c.hits(&c.search("glacier", &Search::new(1, Mode::Bm25), &Words).await.unwrap()).unwrap();
    assert!(glacier[0].text.contains("glacier"), "a unit is shown by a chunk holding the words: {glacier:#?}");
    let both = c.hits(&c.search("glacier turbine", &Search::new(2, Mode::Bm25), &Words).await.unwrap()).unwrap();
    assert_eq!(both[0].source, "docs/split.md", "{both:#?}");
    assert!(both[0].text.contains("glacier") || both[0].text.contains("turbine"), "{both:#?}");
    assert_eq!(both[1].source, "docs/twice.md", "{both:#?}");
    drop(c);

    // A BM25 index of the old layout (chunk ids only) is replaced and rebuilt from SQLite.
    std::fs::remove_dir_all(root.join("plant/bm25")).unwrap();
    std::fs::create_dir_all(root.join("plant/bm25")).unwrap();
    let mut old = tantivy::schema::Schema::builder();
    old.add_i64_field("id", tantivy::schema::INDEXED | tantivy::schema::STORED);
    old.add_text_field("text", tantivy::schema::TEXT);
    tantivy::Index::create_in_dir(root.join("plant/bm25"), old.build()).unwrap();
    let c = Collection::open(&root, "plant", "words", false).unwrap();
    let again = c.hits(&c.search("glacier turbine", &Search::new(2, Mode::Bm25), &Words).await.unwrap()).unwrap();
    assert_eq!(again[0].source, "docs/split.md", "{again:#?}");
}
