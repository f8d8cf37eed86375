//! Reranking through a model behind the gateway: the retrieved passages are numbered and a
//! chat model orders them by relevance to the query (listwise, as RankGPT does), answering
//! in a JSON schema so the order can be read back; passages it leaves out keep their place
//! after the ones it ordered.

use futures_util::future::BoxFuture;
use serde_json::json;

use crate::Hit;

/// A chat model asked for a JSON answer that fits a schema (keel's gateway through
/// keel-agent's `ModelAlias`; anything in tests).
pub trait Judge: Send + Sync {
    fn json<'a>(&'a self, system: &'a str, user: &'a str, schema: &'a serde_json::Value) -> BoxFuture<'a, Result<String, String>>;
}

/// How many passages are retrieved for the reranker to order (when fewer are asked for).
pub const DEPTH: usize = 20;

/// Longest passage text shown to the reranker, in characters.
const PASSAGE_CHARS: usize = 1200;

/// `hits` reordered by the judge's view of their relevance to `query`.
pub async fn rerank(query: &str, hits: Vec<Hit>, judge: &dyn Judge) -> crate::Result<Vec<Hit>> {
    if hits.len() < 2 {
        return Ok(hits);
    }
    let system = "You rank passages by how well they answer a search query. Answer with the passage \
                  numbers, most relevant first, as JSON: {\"order\": [3, 1, 2]}. Leave out passages that \
                  do not help at all.";
    let mut user = format!("Query: {query}\n\nPassages:\n");
    for (n, hit) in hits.iter().enumerate() {
        let text: String = hit.text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(PASSAGE_CHARS).collect();
        user.push_str(&format!("\n[{}] {text}\n", n + 1));
    }
    let schema = json!({
        "type": "object",
        "properties": {"order": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": hits.len()}}},
        "required": ["order"],
        "additionalProperties": false
    });
    let answer = judge.json(system, &user, &schema).await.map_err(crate::Error::Rerank)?;
    let order = parse_order(&answer, hits.len())
        .ok_or_else(|| crate::Error::Rerank(format!("the reranker's answer is not a ranking: {}", answer.chars().take(200).collect::<String>())))?;
    let mut slots: Vec<Option<Hit>> = hits.into_iter().map(Some).collect();
    let mut out: Vec<Hit> = order.into_iter().filter_map(|n| slots[n - 1].take()).collect();
    out.extend(slots.into_iter().flatten());
    let total = out.len() as f64;
    for (rank, hit) in out.iter_mut().enumerate() {
        hit.score = 1.0 - rank as f64 / total;
    }
    Ok(out)
}

/// The passage numbers of `{"order": [...]}` (or a bare array), each once and in range.
fn parse_order(answer: &str, passages: usize) -> Option<Vec<usize>> {
    let start = answer.find(['{', '['])?;
    let value: serde_json::Value = serde_json::Deserializer::from_str(&answer[start..]).into_iter().next()?.ok()?;
    let list = value.get("order").unwrap_or(&value).as_array()?;
    let mut seen = Vec::new();
    for n in list.iter().filter_map(serde_json::Value::as_u64) {
        let n = n as usize;
        if (1..=passages).contains(&n) && !seen.contains(&n) {
            seen.push(n);
        }
    }
    Some(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str);

    impl Judge for Fixed {
        fn json<'a>(&'a self, _: &'a str, user: &'a str, schema: &'a serde_json::Value) -> BoxFuture<'a, Result<String, String>> {
            assert!(user.contains("[3] gamma") && schema["properties"]["order"]["items"]["maximum"] == 3);
            Box::pin(async move { Ok(self.0.to_string()) })
        }
    }

    fn hit(id: i64, text: &str) -> Hit {
        Hit { chunk_id: id, doc: text.into(), source: text.into(), title: None, headings: vec![], start: 0, end: 1, page: None, text: text.into(), score: 0.0 }
    }

    #[tokio::test]
    async fn the_judges_order_wins_and_passages_it_left_out_keep_their_place_after() {
        let hits = || vec![hit(1, "alpha"), hit(2, "beta"), hit(3, "gamma")];
        let ids = |hits: Vec<Hit>| hits.iter().map(|h| h.chunk_id).collect::<Vec<_>>();
        assert_eq!(ids(rerank("q", hits(), &Fixed(r#"{"order": [3, 1, 2]}"#)).await.unwrap()), [3, 1, 2]);
        assert_eq!(ids(rerank("q", hits(), &Fixed(r#"{"order": [2, 2, 9]}"#)).await.unwrap()), [2, 1, 3], "repeats and unknown numbers are ignored");
        assert_eq!(ids(rerank("q", hits(), &Fixed("Sure! [3, 2]")).await.unwrap()), [3, 2, 1], "a bare array in prose is read");
        let ranked = rerank("q", hits(), &Fixed(r#"{"order": [2]}"#)).await.unwrap();
        assert!(ranked[0].score > ranked[1].score && ranked[1].score > ranked[2].score);
        assert!(rerank("q", hits(), &Fixed("no idea")).await.unwrap_err().to_string().contains("not a ranking"));
    }
}
