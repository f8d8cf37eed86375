//! The BM25 index: tantivy, English stemming, keyed by chunk id.
//!
//! Chunks are cut to fit the embedding model's window, which is the vectors' limit, not
//! BM25's: a section split in two by that window would have its words split in two as
//! well. So every chunk also names its *unit* (a run of chunks of one document under one
//! heading path, at most [`UNIT_CHUNKS`] long; see [`units`]), and BM25 scores units: a
//! term's frequency and a unit's length are summed over its chunks, the unit's score goes to
//! its best-matching chunk. Where a section fits one chunk, unit and chunk are the same.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tantivy::postings::Postings;
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer};
use tantivy::{DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, TERMINATED, TantivyDocument, Term};

const ANALYZER: &str = "keel_en";

/// The most chunks one BM25 unit spans (about a thousand tokens at the default chunk size),
/// so a long section without headings is still scored in passages of comparable length.
pub const UNIT_CHUNKS: usize = 4;

/// k1 and b: the values Anserini and the BEIR baselines use, rather than tantivy's built-in
/// 1.2 and 0.75.
const K1: f32 = 0.9;
const B: f32 = 0.4;

/// A term's inverse document frequency among `n` items, `df` of which hold it (Lucene's).
fn idf(n: f32, df: f32) -> f32 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// A term's BM25 contribution to an item `length` long, given the items' average length.
fn bm25(idf: f32, tf: f32, length: f32, average: f32) -> f32 {
    idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * length / average))
}

/// A chunk as the BM25 index takes it: its id, its unit (the id of the unit's first chunk)
/// and the text to index.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: i64,
    pub unit: i64,
    pub text: String,
}

/// One document's chunks in order, as BM25 entries: the title is indexed once per unit (with
/// its first chunk), and the words a chunk repeats from the one before it (the overlap) are
/// left out, so a unit counts each word of its text once. `chunks` are
/// `(id, heading path, byte range, text)`.
pub fn units(title: Option<&str>, chunks: &[(i64, &str, std::ops::Range<usize>, &str)]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::with_capacity(chunks.len());
    let mut size = 0;
    for (i, (id, headings, range, text)) in chunks.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| &chunks[p]);
        let joins = previous.is_some_and(|(_, h, _, _)| h == headings) && size < UNIT_CHUNKS;
        if !joins {
            let text = match title {
                Some(title) => format!("{title}\n{text}"),
                None => text.to_string(),
            };
            out.push(Entry { id: *id, unit: *id, text });
            size = 1;
            continue;
        }
        let unit = out.last().map_or(*id, |e| e.unit);
        // The chunk's text starts at `range.start`; what the previous one already held ends
        // at its end.
        let seen = previous.map_or(0, |(_, _, r, _)| r.end.saturating_sub(range.start));
        let fresh = text.get(seen.min(text.len())..).unwrap_or(text);
        out.push(Entry { id: *id, unit, text: fresh.to_string() });
        size += 1;
    }
    out
}

/// Per-unit lengths for the reader's current segments.
struct UnitStats {
    length: HashMap<i64, f32>,
    average: f32,
}

pub struct Bm25 {
    index: Index,
    reader: IndexReader,
    id: Field,
    unit: Field,
    text: Field,
    /// Made on the first search after each reload.
    stats: Mutex<Option<Arc<UnitStats>>>,
}

fn schema() -> Schema {
    let mut schema = Schema::builder();
    schema.add_i64_field("id", INDEXED | STORED | FAST);
    schema.add_i64_field("unit", FAST);
    let indexing = TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqsAndPositions);
    schema.add_text_field("text", TextOptions::default().set_indexing_options(indexing));
    schema.build()
}

impl Bm25 {
    /// Opens the index in `dir`, or makes an empty one. An index written before units existed
    /// is replaced by an empty one (the caller rebuilds it from the chunks).
    pub fn open(dir: &Path) -> tantivy::Result<Bm25> {
        let schema = schema();
        std::fs::create_dir_all(dir)?;
        let mut index = Index::open_or_create(tantivy::directory::MmapDirectory::open(dir)?, schema.clone());
        if index.as_ref().is_ok_and(|i| i.schema() != schema) || matches!(index, Err(tantivy::TantivyError::SchemaError(_))) {
            tracing::info!(dir = %dir.display(), "the BM25 index predates units; it is made again from the chunks");
            std::fs::remove_dir_all(dir)?;
            std::fs::create_dir_all(dir)?;
            index = Index::open_or_create(tantivy::directory::MmapDirectory::open(dir)?, schema.clone());
        }
        let index = index?;
        // English: lower case, stop words out, Snowball stems.
        let analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser)
            .filter(StopWordFilter::new(Language::English).expect("tantivy ships English stop words"))
            .filter(Stemmer::new(Language::English))
            .build();
        index.tokenizers().register(ANALYZER, analyzer);
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let field = |name: &str| schema.get_field(name).expect("in the schema above");
        Ok(Bm25 { index, reader, id: field("id"), unit: field("unit"), text: field("text"), stats: Mutex::new(None) })
    }

    pub fn count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn writer(&self) -> tantivy::Result<IndexWriter> {
        self.index.writer(50_000_000)
    }

    fn reload(&self) -> tantivy::Result<()> {
        self.reader.reload()?;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Removes chunks and adds others, in one commit.
    pub fn update(&self, removed: &[i64], added: impl Iterator<Item = Entry>) -> tantivy::Result<()> {
        let mut writer = self.writer()?;
        for id in removed {
            writer.delete_term(Term::from_field_i64(self.id, *id));
        }
        self.add(&mut writer, added)?;
        writer.commit()?;
        // Let the merges the commit started finish, so segments do not pile up batch by batch.
        writer.wait_merging_threads()?;
        self.reload()
    }

    fn add(&self, writer: &mut IndexWriter, entries: impl Iterator<Item = Entry>) -> tantivy::Result<()> {
        for entry in entries {
            let mut doc = TantivyDocument::default();
            doc.add_i64(self.id, entry.id);
            doc.add_i64(self.unit, entry.unit);
            doc.add_text(self.text, &entry.text);
            writer.add_document(doc)?;
        }
        Ok(())
    }

    pub fn replace_all(&self, entries: impl Iterator<Item = Entry>) -> tantivy::Result<()> {
        let mut writer = self.writer()?;
        writer.delete_all_documents()?;
        self.add(&mut writer, entries)?;
        writer.commit()?;
        writer.wait_merging_threads()?;
        self.reload()
    }

    /// Every unit's length in tokens (its chunks' summed), and their average.
    fn stats(&self) -> tantivy::Result<Arc<UnitStats>> {
        let mut cached = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stats) = cached.as_ref() {
            return Ok(stats.clone());
        }
        let mut length: HashMap<i64, f32> = HashMap::new();
        for segment in self.reader.searcher().segment_readers() {
            let units = segment.fast_fields().i64("unit")?;
            let norms = segment.get_fieldnorms_reader(self.text)?;
            for doc in segment.doc_ids_alive() {
                if let Some(unit) = units.first(doc) {
                    *length.entry(unit).or_insert(0.0) += norms.fieldnorm(doc) as f32;
                }
            }
        }
        let average = (length.values().sum::<f32>() / length.len().max(1) as f32).max(1.0);
        let stats = Arc::new(UnitStats { length, average });
        *cached = Some(stats.clone());
        Ok(stats)
    }

    /// The best `k` units for a query, each as its best-matching chunk: BM25 over the query's
    /// words (OR-ed; query syntax is not interpreted) with a unit's term frequencies and
    /// length summed over its chunks.
    pub fn search(&self, query: &str, k: usize) -> tantivy::Result<Vec<(i64, f64)>> {
        let searcher = self.reader.searcher();
        let mut analyzer = self.index.tokenizer_for_field(self.text)?;
        let mut terms: Vec<Term> = Vec::new();
        let mut stream = analyzer.token_stream(query);
        while stream.advance() {
            let term = Term::from_field_text(self.text, &stream.token().text);
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
        if terms.is_empty() || searcher.num_docs() == 0 {
            return Ok(Vec::new());
        }
        let stats = self.stats()?;
        // Chunk-level BM25 picks the chunk that shows each unit.
        let chunk_count = searcher.num_docs() as f32;
        let mut tokens = 0u64;
        for segment in searcher.segment_readers() {
            tokens += segment.inverted_index(self.text)?.total_num_tokens();
        }
        let chunk_average = (tokens as f32 / chunk_count).max(1.0);
        // Each unit's frequency of each term; each matching chunk's unit and own score.
        let mut chunk_idf = Vec::with_capacity(terms.len());
        for term in &terms {
            chunk_idf.push(idf(chunk_count, searcher.doc_freq(term)? as f32));
        }
        let mut frequencies: HashMap<i64, Vec<f32>> = HashMap::new();
        let mut chunks: HashMap<i64, (i64, f32)> = HashMap::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.text)?;
            let (ids, units) = (segment.fast_fields().i64("id")?, segment.fast_fields().i64("unit")?);
            let norms = segment.get_fieldnorms_reader(self.text)?;
            let alive = segment.alive_bitset();
            for (t, term) in terms.iter().enumerate() {
                let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::WithFreqs)? else { continue };
                let mut doc: DocId = postings.doc();
                while doc != TERMINATED {
                    if alive.is_none_or(|a| a.is_alive(doc))
                        && let (Some(id), Some(unit)) = (ids.first(doc), units.first(doc))
                    {
                        let tf = postings.term_freq() as f32;
                        frequencies.entry(unit).or_insert_with(|| vec![0.0; terms.len()])[t] += tf;
                        chunks.entry(id).or_insert((unit, 0.0)).1 += bm25(chunk_idf[t], tf, norms.fieldnorm(doc) as f32, chunk_average);
                    }
                    doc = postings.advance();
                }
            }
        }
        let units = stats.length.len().max(1) as f32;
        let unit_idf: Vec<f32> = (0..terms.len()).map(|t| idf(units, frequencies.values().filter(|f| f[t] > 0.0).count() as f32)).collect();
        let mut scored: Vec<(i64, f32)> = frequencies
            .iter()
            .map(|(unit, tfs)| {
                let length = stats.length.get(unit).copied().unwrap_or(stats.average);
                let score = tfs.iter().zip(&unit_idf).filter(|(tf, _)| **tf > 0.0).map(|(tf, idf)| bm25(*idf, *tf, length, stats.average)).sum();
                (*unit, score)
            })
            .collect();
        let k = k.max(1).min(scored.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        scored.truncate(k);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Each unit is shown by its chunk with the best score of its own.
        let mut face: HashMap<i64, (i64, f32)> = HashMap::new();
        for (id, (unit, weight)) in chunks {
            let best = face.entry(unit).or_insert((id, weight));
            if weight > best.1 || (weight == best.1 && id < best.0) {
                *best = (id, weight);
            }
        }
        Ok(scored.into_iter().filter_map(|(unit, score)| face.get(&unit).map(|(id, _)| (*id, f64::from(score)))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{Entry, UNIT_CHUNKS, units};

    #[test]
    fn units_follow_sections_and_drop_the_overlap() {
        let text = "alpha beta gamma delta epsilon";
        // Two chunks of one section overlapping on "gamma", then one under another heading.
        let chunks = [(1, "[]", 0..16, "alpha beta gamma"), (2, "[]", 11..30, "gamma delta epsilon"), (3, "[\"B\"]", 0..5, "zeta")];
        assert_eq!(&text[11..16], "gamma");
        let entries = units(Some("T"), &chunks);
        assert_eq!(
            entries,
            vec![
                Entry { id: 1, unit: 1, text: "T\nalpha beta gamma".into() },
                Entry { id: 2, unit: 1, text: " delta epsilon".into() },
                Entry { id: 3, unit: 3, text: "T\nzeta".into() },
            ]
        );
    }

    #[test]
    fn a_long_section_is_cut_into_units_of_bounded_size() {
        let chunks: Vec<(i64, &str, std::ops::Range<usize>, &str)> = (0..10).map(|i| (i, "[]", i as usize * 10..i as usize * 10 + 10, "word")).collect();
        let entries = units(None, &chunks);
        let firsts: Vec<i64> = entries.iter().map(|e| e.unit).collect();
        assert_eq!(firsts, [0, 0, 0, 0, 4, 4, 4, 4, 8, 8]);
        assert_eq!(UNIT_CHUNKS, 4);
    }
}
