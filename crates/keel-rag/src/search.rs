//! How to search: the mode, how many, the fusion's settings and the document filter; and
//! what a search finds.

use serde::Serialize;

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Hybrid,
    Vector,
    Bm25,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s {
            "hybrid" => Ok(Mode::Hybrid),
            "vector" => Ok(Mode::Vector),
            "bm25" => Ok(Mode::Bm25),
            other => Err(format!("mode is hybrid, vector or bm25, not `{other}`")),
        }
    }
}

/// How to search: how many, which lists, their fusion, and which documents.
#[derive(Debug, Clone)]
pub struct Search {
    pub k: usize,
    pub mode: Mode,
    /// Reciprocal rank fusion's k: larger flattens the difference between ranks.
    pub rrf_k: f64,
    /// Each list's weight in hybrid fusion (0 leaves a list out).
    pub bm25_weight: f64,
    pub vector_weight: f64,
    /// Every condition must hold for a document to be searched.
    pub filter: Vec<Filter>,
}

impl Default for Search {
    fn default() -> Search {
        Search { k: 10, mode: Mode::Hybrid, rrf_k: 60.0, bm25_weight: 1.0, vector_weight: 1.0, filter: Vec::new() }
    }
}

impl Search {
    pub fn new(k: usize, mode: Mode) -> Search {
        Search { k, mode, ..Search::default() }
    }
}

/// A condition on a document: `key=value`, or `key=prefix*`. Keys are `source`, `doc`,
/// `title`, or metadata given at ingest (`--meta team=infra`).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub key: String,
    pub value: String,
}

impl Filter {
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self.value.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => value == self.value,
        }
    }
}

impl std::str::FromStr for Filter {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Filter, String> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Filter { key: key.trim().into(), value: value.trim().into() }),
            _ => Err(format!("a filter is KEY=VALUE or KEY=PREFIX*, not `{s}`")),
        }
    }
}

/// A chunk found by a search, with where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub chunk_id: i64,
    pub doc: String,
    pub source: String,
    pub title: Option<String>,
    pub headings: Vec<String>,
    pub start: usize,
    pub end: usize,
    /// The page the chunk starts on (PDFs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
    pub text: String,
    pub score: f64,
}
