//! One retrieval, as every caller asks for it (`keel rag query` and `ask`, `POST
//! /v1/rag/{name}/query`, an agent's search tool): the query embedded without holding the
//! collection, searched while holding it, kept only where close enough, reranked by a judge
//! when asked, cut to `k`.

use std::sync::Mutex;

use crate::rerank::{self, Judge};
use crate::{Collection, Embedder, Error, Hit, Mode, Result, Search, embed_query};

/// A query and how to run it.
#[derive(Debug, Clone)]
pub struct Query {
    pub text: String,
    pub search: Search,
    /// The least cosine similarity between the query and a chunk for the chunk to be kept.
    pub min_similarity: Option<f64>,
    /// Whether a judge reorders a deeper list before it is cut to `k`.
    pub rerank: bool,
}

impl Query {
    pub fn new(text: &str, search: Search) -> Query {
        Query { text: text.to_string(), search, min_similarity: None, rerank: false }
    }

    /// How many hits the search finds: `k`, or the reranker's depth when that is more.
    fn depth(&self) -> usize {
        if self.rerank { self.search.k.max(rerank::DEPTH) } else { self.search.k }
    }

    /// Checks what a caller may get wrong before anything runs.
    pub fn check(&self) -> Result<()> {
        if self.text.trim().is_empty() {
            return Err(Error::EmptyQuery);
        }
        let search = &self.search;
        if search.k == 0 || search.k > 1000 {
            return Err(Error::BadQuery("k is 1 to 1000".into()));
        }
        if !(search.rrf_k > 0.0 && search.bm25_weight >= 0.0 && search.vector_weight >= 0.0) {
            return Err(Error::BadQuery("rrf_k must be above 0 and the weights 0 or more".into()));
        }
        Ok(())
    }

    /// The query's unit vector, when its mode or similarity floor needs one.
    pub async fn embed(&self, embedder: &dyn Embedder) -> Result<Option<Vec<f32>>> {
        if self.search.mode == Mode::Bm25 && self.min_similarity.is_none() {
            return Ok(None);
        }
        Ok(Some(embed_query(embedder, &self.text).await?))
    }
}

impl Collection {
    /// The hits of a query whose vector is made ([`Query::embed`]): searched deep enough for a
    /// reranker, and only those close enough to the query.
    pub fn retrieve(&self, query: &Query, vector: Option<&[f32]>) -> Result<Vec<Hit>> {
        let search = Search { k: query.depth(), ..query.search.clone() };
        let hits = self.hits(&self.search_with(&query.text, vector, &search)?)?;
        Ok(match (query.min_similarity, vector) {
            (Some(floor), Some(vector)) => hits.into_iter().filter(|hit| self.similarity(hit.chunk_id, vector) >= floor).collect(),
            _ => hits,
        })
    }
}

/// Runs a query against a collection shared between tasks: embedded and reranked without
/// holding it, searched while holding it.
pub async fn query(collection: &Mutex<Collection>, query: &Query, embedder: &dyn Embedder, judge: Option<&dyn Judge>) -> Result<Vec<Hit>> {
    query.check()?;
    let vector = query.embed(embedder).await?;
    let hits = collection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).retrieve(query, vector.as_deref())?;
    let mut hits = match judge {
        Some(judge) if query.rerank => rerank::rerank(&query.text, hits, judge).await?,
        _ => hits,
    };
    hits.truncate(query.search.k);
    Ok(hits)
}
