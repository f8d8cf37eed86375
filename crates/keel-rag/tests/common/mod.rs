//! What the collection tests share: a deterministic embedder (words hashed into 64 buckets),
//! a token count of words, and a Markdown document under `docs/`.

#![allow(dead_code)]

use futures_util::future::BoxFuture;
use keel_rag::{Document, Embedder, Kind};

pub struct Words;

impl Embedder for Words {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move {
            Ok(texts
                .iter()
                .map(|t| {
                    let mut v = vec![0.0f32; 64];
                    for w in t.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 3) {
                        let h = w.to_lowercase().bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
                        v[(h % 64) as usize] += 1.0;
                    }
                    v
                })
                .collect())
        })
    }
}

pub fn words(text: &str) -> usize {
    text.split_whitespace().count() + 2
}

pub fn doc(id: &str, text: &str) -> Document {
    Document { id: format!("docs/{id}"), source: format!("docs/{id}"), title: None, text: text.into(), kind: Kind::Markdown, meta: Default::default(), pages: Vec::new() }
}
