//! The BM25 index: tantivy, English stemming, keyed by chunk id.

use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, INDEXED, STORED, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::tokenizer::{Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

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
        self.reader.reload()
    }

    /// The best `k` chunks for a query (its words OR-ed; query syntax is not interpreted).
    pub fn search(&self, query: &str, k: usize) -> tantivy::Result<Vec<(i64, f64)>> {
        let searcher = self.reader.searcher();
        let parser = QueryParser::for_index(&self.index, vec![self.text]);
        // Plain words only: punctuation would be read as query syntax.
        let words: String = query.chars().map(|c| if c.is_alphanumeric() { c } else { ' ' }).collect();
        if words.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (parsed, _) = parser.parse_query_lenient(&words);
        let top = searcher.search(&parsed, &TopDocs::with_limit(k.max(1)).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(id) = doc.get_first(self.id).and_then(|v| v.as_i64()) {
                out.push((id, f64::from(score)));
            }
        }
        Ok(out)
    }
}
