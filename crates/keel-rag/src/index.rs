//! The BM25 index: tantivy, English stemming, keyed by chunk id.

use std::collections::HashMap;
use std::path::Path;

use tantivy::postings::Postings;
use tantivy::schema::{Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::tokenizer::{Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer};
use tantivy::{DocAddress, DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, TERMINATED, TantivyDocument, Term};

const ANALYZER: &str = "keel_en";

pub struct Bm25 {
    index: Index,
    reader: IndexReader,
    id: Field,
    text: Field,
}

impl Bm25 {
    pub fn open(dir: &Path) -> tantivy::Result<Bm25> {
        let mut schema = Schema::builder();
        let id = schema.add_i64_field("id", INDEXED | STORED);
        let indexing = TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(tantivy::schema::IndexRecordOption::WithFreqsAndPositions);
        let text = schema.add_text_field("text", TextOptions::default().set_indexing_options(indexing));
        let schema = schema.build();
        std::fs::create_dir_all(dir)?;
        let directory = tantivy::directory::MmapDirectory::open(dir)?;
        let index = Index::open_or_create(directory, schema)?;
        // English: lower case, stop words out, Snowball stems.
        let analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser)
            .filter(StopWordFilter::new(Language::English).expect("tantivy ships English stop words"))
            .filter(Stemmer::new(Language::English))
            .build();
        index.tokenizers().register(ANALYZER, analyzer);
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Bm25 { index, reader, id, text })
    }

    pub fn count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn writer(&self) -> tantivy::Result<IndexWriter> {
        self.index.writer(50_000_000)
    }

    /// Removes chunks and adds others, in one commit.
    pub fn update(&self, removed: &[i64], added: impl Iterator<Item = (i64, String)>) -> tantivy::Result<()> {
        let mut writer = self.writer()?;
        for id in removed {
            writer.delete_term(Term::from_field_i64(self.id, *id));
        }
        self.add(&mut writer, added)?;
        writer.commit()?;
        // Let the merges the commit started finish, so segments do not pile up batch by batch.
        writer.wait_merging_threads()?;
        self.reader.reload()
    }

    fn add(&self, writer: &mut IndexWriter, chunks: impl Iterator<Item = (i64, String)>) -> tantivy::Result<()> {
        for (id, text) in chunks {
            let mut doc = TantivyDocument::default();
            doc.add_i64(self.id, id);
            doc.add_text(self.text, &text);
            writer.add_document(doc)?;
        }
        Ok(())
    }

    pub fn replace_all(&self, chunks: impl Iterator<Item = (i64, String)>) -> tantivy::Result<()> {
        let mut writer = self.writer()?;
        writer.delete_all_documents()?;
        self.add(&mut writer, chunks)?;
        writer.commit()?;
        writer.wait_merging_threads()?;
        self.reader.reload()
    }

    /// The best `k` chunks for a query: BM25 over its words (OR-ed; query syntax is not
    /// interpreted), with k1 = 0.9 and b = 0.4 — the values Anserini and the BEIR baselines
    /// use, rather than tantivy's built-in 1.2 and 0.75.
    pub fn search(&self, query: &str, k: usize) -> tantivy::Result<Vec<(i64, f64)>> {
        const K1: f32 = 0.9;
        const B: f32 = 0.4;
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
        let docs = searcher.num_docs();
        if terms.is_empty() || docs == 0 {
            return Ok(Vec::new());
        }
        let mut tokens = 0u64;
        for segment in searcher.segment_readers() {
            tokens += segment.inverted_index(self.text)?.total_num_tokens();
        }
        let average = (tokens as f32 / docs as f32).max(1.0);
        // Each term's weight once, over every segment.
        let mut weighted: Vec<(&Term, f32)> = Vec::with_capacity(terms.len());
        for term in &terms {
            let df = searcher.doc_freq(term)? as f32;
            weighted.push((term, (1.0 + (docs as f32 - df + 0.5) / (df + 0.5)).ln()));
        }
        let mut scored: Vec<(f32, DocAddress)> = Vec::new();
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            let inverted = segment.inverted_index(self.text)?;
            let norms = segment.get_fieldnorms_reader(self.text)?;
            let alive = segment.alive_bitset();
            let mut scores: HashMap<DocId, f32> = HashMap::new();
            for (term, idf) in &weighted {
                let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::WithFreqs)? else { continue };
                let mut doc = postings.doc();
                while doc != TERMINATED {
                    if alive.is_none_or(|a| a.is_alive(doc)) {
                        let tf = postings.term_freq() as f32;
                        let length = norms.fieldnorm(doc) as f32;
                        *scores.entry(doc).or_insert(0.0) += *idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * length / average));
                    }
                    doc = postings.advance();
                }
            }
            scored.extend(scores.into_iter().map(|(doc, score)| (score, DocAddress::new(ord as u32, doc))));
        }
        let k = k.max(1).min(scored.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut out = Vec::with_capacity(scored.len());
        for (score, address) in scored {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(id) = doc.get_first(self.id).and_then(|v| v.as_i64()) {
                out.push((id, f64::from(score)));
            }
        }
        Ok(out)
    }
}
