//! Answers from retrieved chunks: the prompt that numbers the sources, the citations read
//! back out of the answer, and the refusal when nothing relevant was found.

use std::sync::Mutex;

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::rerank::Judge;
use crate::{Collection, Embedder, Error, Hit, Query};

/// A chat model that writes an answer (keel's gateway through keel-agent's `ModelAlias`;
/// anything in tests).
pub trait Writer: Send + Sync {
    /// The answer's text, and which model wrote it (`provider/model`).
    fn write<'a>(&'a self, system: &'a str, user: &'a str) -> BoxFuture<'a, Result<(String, String), String>>;
}

/// An answer with its sources and what it cites of them.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub answer: String,
    /// Whether it answers (false: nothing relevant was found, or the model said it does not know).
    pub known: bool,
    pub citations: Vec<Citation>,
    /// Numbers the answer cites that are not among its sources.
    pub unknown_citations: Vec<usize>,
    pub sources: Vec<Hit>,
    /// `provider/model` of the writer; none when no model was asked.
    pub model: Option<String>,
}

/// Answers a question from a collection: retrieves (the query says how, and how close a
/// source must be), and has `writer` answer from the sources with numbered citations; with
/// nothing relevant it says it does not know without asking a model.
pub async fn ask(
    collection: &Mutex<Collection>,
    question: &Query,
    embedder: &dyn Embedder,
    judge: Option<&dyn Judge>,
    writer: &dyn Writer,
) -> crate::Result<Answer> {
    let sources = crate::query(collection, question, embedder, judge).await?;
    let (answer, model) = if sources.is_empty() {
        (DONT_KNOW.to_string(), None)
    } else {
        let (system, user) = prompt(&question.text, &sources);
        let (text, model) = writer.write(&system, &user).await.map_err(Error::Answer)?;
        (text.trim().to_string(), Some(model))
    };
    let known = !sources.is_empty() && !is_dont_know(&answer);
    let (citations, unknown_citations) = citations(&answer, &sources);
    Ok(Answer { answer, known, citations, unknown_citations, sources, model })
}

/// What keel answers when the collection holds nothing relevant, and what the model is told
/// to answer when the sources do not hold the answer.
pub const DONT_KNOW: &str = "I don't know: the sources do not answer this.";

/// The least cosine similarity between the question and a chunk for the chunk to count as
/// relevant (all-MiniLM-L6-v2 puts unrelated text below 0.2 and answers above 0.35).
pub const MIN_SIMILARITY: f64 = 0.3;

/// The system and user messages for a question over numbered sources.
pub fn prompt(question: &str, hits: &[Hit]) -> (String, String) {
    let system = format!(
        "You answer questions using only the numbered sources the user gives you. After every \
         sentence that uses a source, cite it by its number in square brackets, like [1] or [2][3]. \
         Do not cite a number that is not listed. If the sources do not contain the answer, reply \
         exactly: {DONT_KNOW}"
    );
    let mut user = String::from("Sources:\n\n");
    for (n, hit) in hits.iter().enumerate() {
        let place = if hit.headings.is_empty() { String::new() } else { format!(" › {}", hit.headings.join(" › ")) };
        let title = hit.title.as_deref().map(|t| format!(" ({t})")).unwrap_or_default();
        user.push_str(&format!("[{}] {}{title}{place}\n{}\n\n", n + 1, hit.source, hit.text.trim()));
    }
    user.push_str(&format!("Question: {question}"));
    (system, user)
}

/// A source the answer cites, by its number.
#[derive(Debug, Clone, Serialize)]
pub struct Citation {
    pub n: usize,
    pub chunk_id: i64,
    pub source: String,
    pub headings: Vec<String>,
    pub start: usize,
    pub end: usize,
}

/// The numbers cited in `answer` (`[1]`, `[2, 3]`, `[2][3]`), in order of first use: those
/// that name one of `sources` sources, and those that do not.
pub fn cited_numbers(answer: &str, sources: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut valid, mut invalid) = (Vec::new(), Vec::new());
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inside = &rest[..close];
        let numbers: Option<Vec<usize>> = inside.split(',').map(|n| n.trim().parse().ok()).collect();
        if let Some(numbers) = numbers {
            for n in numbers {
                let list = if (1..=sources).contains(&n) { &mut valid } else { &mut invalid };
                if !list.contains(&n) {
                    list.push(n);
                }
            }
        }
        rest = &rest[close..];
    }
    (valid, invalid)
}

/// The citations of `answer` mapped to the chunks they name.
pub fn citations(answer: &str, hits: &[Hit]) -> (Vec<Citation>, Vec<usize>) {
    let (valid, invalid) = cited_numbers(answer, hits.len());
    let cited = valid
        .into_iter()
        .map(|n| {
            let hit = &hits[n - 1];
            Citation { n, chunk_id: hit.chunk_id, source: hit.source.clone(), headings: hit.headings.clone(), start: hit.start, end: hit.end }
        })
        .collect();
    (cited, invalid)
}

/// Whether the answer is the refusal (the model may word it a little differently).
pub fn is_dont_know(answer: &str) -> bool {
    let lower = answer.trim().to_lowercase();
    lower.starts_with("i don't know") || lower.starts_with("i do not know") || lower.starts_with("i don’t know")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_are_read_in_every_usual_form() {
        let (valid, invalid) = cited_numbers("Backups last 35 days [1]. Restores are tested [2][3], quarterly [2, 1]. See [7] and [note].", 3);
        assert_eq!(valid, [1, 2, 3]);
        assert_eq!(invalid, [7]);
        assert_eq!(cited_numbers("no citations at all", 3), (vec![], vec![]));
        assert_eq!(cited_numbers("an unclosed [1", 3), (vec![], vec![]));
    }

    #[test]
    fn refusals_are_recognised() {
        assert!(is_dont_know(DONT_KNOW));
        assert!(is_dont_know("  I do not know; nothing here says."));
        assert!(!is_dont_know("Backups last 35 days [1]."));
    }
}
