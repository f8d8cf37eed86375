//! Where a collection's vectors live: keel's embedded HNSW graph, or (behind cargo features)
//! pgvector in PostgreSQL or a Qdrant collection; one enum the collection matches on.

use serde::Serialize;

use crate::{Error, Vectors};
#[cfg(any(feature = "pgvector", feature = "qdrant"))]
use crate::{Result, vectors};
#[cfg(feature = "pgvector")]
use crate::pgvector;
#[cfg(feature = "qdrant")]
use crate::qdrant;

/// Where a collection's vectors are indexed and searched; chosen when it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// keel's HNSW graph in the collection's folder.
    Embedded,
    /// A table with an HNSW index in PostgreSQL (pgvector); the connection string comes from
    /// `KEEL_RAG_POSTGRES_URL`.
    Pgvector,
    /// A Qdrant collection; its gRPC URL comes from `KEEL_RAG_QDRANT_URL`.
    Qdrant,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Engine, String> {
        match s {
            "embedded" => Ok(Engine::Embedded),
            "pgvector" => Ok(Engine::Pgvector),
            "qdrant" => Ok(Engine::Qdrant),
            other => Err(format!("the vector engine is embedded, pgvector or qdrant, not `{other}`")),
        }
    }
}

impl Engine {
    /// Whether this build has the engine (its cargo feature is on).
    pub fn is_built(self) -> bool {
        match self {
            Engine::Embedded => true,
            Engine::Pgvector => cfg!(feature = "pgvector"),
            Engine::Qdrant => cfg!(feature = "qdrant"),
        }
    }

    /// The error for an engine this build left out.
    pub(crate) fn left_out(self) -> Error {
        Error::Io(format!("this keel was built without the `{}` engine (cargo feature `{}` of keel-rag)", self.name(), self.name()))
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Engine::Embedded => "embedded",
            Engine::Pgvector => "pgvector",
            Engine::Qdrant => "qdrant",
        }
    }
}

/// A collection's vector index, on whichever engine.
pub(crate) enum VectorIndex {
    Embedded(Vectors),
    #[cfg(feature = "pgvector")]
    Pgvector(pgvector::PgVectors),
    #[cfg(feature = "qdrant")]
    Qdrant(qdrant::QdrantVectors),
}

impl VectorIndex {
    pub(crate) fn add(&self, items: &[(i64, &[f32])]) -> crate::Result<()> {
        match self {
            VectorIndex::Embedded(v) => v.add(items),
            #[cfg(feature = "pgvector")]
            VectorIndex::Pgvector(v) => v.add(items),
            #[cfg(feature = "qdrant")]
            VectorIndex::Qdrant(v) => v.add(items),
        }
    }

    pub(crate) fn remove(&self, ids: &[i64]) -> crate::Result<()> {
        match self {
            VectorIndex::Embedded(v) => v.remove(ids),
            #[cfg(feature = "pgvector")]
            VectorIndex::Pgvector(v) => v.remove(ids),
            #[cfg(feature = "qdrant")]
            VectorIndex::Qdrant(v) => v.remove(ids),
        }
    }

    pub(crate) fn save(&self, generation: u64) -> crate::Result<()> {
        match self {
            VectorIndex::Embedded(v) => v.save(generation),
            #[cfg(feature = "pgvector")]
            VectorIndex::Pgvector(v) => v.save(generation),
            #[cfg(feature = "qdrant")]
            VectorIndex::Qdrant(v) => v.save(generation),
        }
    }

    /// The `k` nearest; `allowed` (chunk ids) keeps only those.
    pub(crate) fn search(&self, query: &[f32], k: usize, allowed: Option<&std::collections::HashSet<i64>>) -> crate::Result<Vec<(i64, f64)>> {
        match (self, allowed) {
            (VectorIndex::Embedded(v), None) => v.search(query, k, None),
            (VectorIndex::Embedded(v), Some(ids)) => v.search(query, k, Some(&|id| ids.contains(&id))),
            #[cfg(feature = "pgvector")]
            (VectorIndex::Pgvector(v), allowed) => v.search(query, k, vectors::EXPANSION_SEARCH.max(k), allowed.map(|ids| ids.iter().copied().collect())),
            #[cfg(feature = "qdrant")]
            (VectorIndex::Qdrant(v), allowed) => v.search(query, k, vectors::EXPANSION_SEARCH.max(k), allowed.map(|ids| ids.iter().copied().collect())),
        }
    }
}

#[cfg(feature = "qdrant")]
pub(crate) fn qdrant_url(name: &str) -> Result<String> {
    qdrant::url().ok_or_else(|| Error::Io(format!("collection `{name}` keeps its vectors in Qdrant: set {} to its gRPC URL", qdrant::URL_ENV)))
}

#[cfg(feature = "pgvector")]
pub(crate) fn postgres_url(name: &str) -> Result<String> {
    pgvector::url().ok_or_else(|| {
        Error::Io(format!("collection `{name}` keeps its vectors in PostgreSQL: set {} to its connection string", pgvector::URL_ENV))
    })
}
