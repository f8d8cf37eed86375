//! PDFs: the text layer, page by page (lopdf). A PDF without one — a scan — is reported, not
//! ingested as nothing.

/// Whether this build reads PDFs (the `pdf` cargo feature).
pub const BUILT: bool = cfg!(feature = "pdf");

/// The text of every page, joined by blank lines, and the byte offset where each page starts.
#[cfg(not(feature = "pdf"))]
pub fn text(_bytes: &[u8]) -> crate::Result<(String, Vec<usize>)> {
    Err(crate::Error::Io("this keel was built without PDF support (cargo feature `pdf` of keel-rag)".into()))
}

/// The text of every page, joined by blank lines, and the byte offset where each page starts.
#[cfg(feature = "pdf")]
pub fn text(bytes: &[u8]) -> crate::Result<(String, Vec<usize>)> {
    text_layers(bytes).map_err(crate::Error::Io)
}

#[cfg(feature = "pdf")]
fn text_layers(bytes: &[u8]) -> Result<(String, Vec<usize>), String> {
    let doc = lopdf::Document::load_mem(bytes).map_err(|e| format!("not a readable PDF: {e}"))?;
    let mut text = String::new();
    let mut starts = Vec::new();
    for number in doc.get_pages().keys() {
        let page = doc.extract_text(&[*number]).unwrap_or_default();
        let page = page.trim();
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        starts.push(text.len());
        text.push_str(page);
    }
    if text.trim().is_empty() {
        return Err(if starts.is_empty() { "a PDF with no pages".into() } else { "a PDF without a text layer (a scan?): run OCR on it first".into() });
    }
    Ok((text, starts))
}

/// The 1-based page a byte offset falls on, given where pages start.
pub fn page_of(starts: &[usize], offset: usize) -> Option<usize> {
    if starts.is_empty() {
        return None;
    }
    Some(starts.partition_point(|start| *start <= offset).max(1))
}

/// A PDF with one page per string, each a text layer in Courier (tests and examples).
#[cfg(feature = "pdf")]
pub fn make(pages: &[&str]) -> Vec<u8> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {"Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier"});
    let resources_id = doc.add_object(dictionary! {"Font" => dictionary! {"F1" => font_id}});
    let mut kids = Vec::new();
    for text in pages {
        let mut operations = vec![Operation::new("BT", vec![]), Operation::new("Tf", vec!["F1".into(), 11.into()]), Operation::new("Td", vec![50.into(), 780.into()])];
        for line in text.lines() {
            operations.push(Operation::new("Tj", vec![Object::string_literal(line)]));
            operations.push(Operation::new("Td", vec![0.into(), (-14).into()]));
        }
        operations.push(Operation::new("ET", vec![]));
        let content = Content { operations };
        let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap_or_default()));
        kids.push(doc.add_object(dictionary! {"Type" => "Page", "Parent" => pages_id, "Contents" => content_id}).into());
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {"Type" => "Pages", "Kids" => kids, "Count" => count, "Resources" => resources_id, "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()]}),
    );
    let catalog_id = doc.add_object(dictionary! {"Type" => "Catalog", "Pages" => pages_id});
    doc.trailer.set("Root", catalog_id);
    let mut out = Vec::new();
    let _ = doc.save_to(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "pdf")]
    #[test]
    fn text_layers_are_read_page_by_page_and_scans_are_reported() {
        let pdf = make(&["Backups are kept for 35 days.", "Pages escalate after fifteen minutes."]);
        let (text, starts) = text(&pdf).unwrap();
        assert!(text.contains("Backups are kept for 35 days.") && text.contains("Pages escalate"), "{text:?}");
        assert_eq!(starts.len(), 2);
        let second = text.find("Pages escalate").unwrap();
        assert_eq!(page_of(&starts, 0), Some(1));
        assert_eq!(page_of(&starts, second), Some(2));
        assert_eq!(page_of(&[], 5), None);
        let scan = make(&[""]);
        assert!(super::text(&scan).unwrap_err().to_string().contains("without a text layer"));
        assert!(super::text(b"%PDF-1.4 truncated").unwrap_err().to_string().contains("not a readable PDF"));
    }

    #[cfg(not(feature = "pdf"))]
    #[test]
    #[expect(clippy::print_stderr, reason = "the test says what it skips")]
    fn pdfs_are_refused_with_a_reason_in_a_build_without_them() {
        eprintln!("skipped: reading PDF text layers (this build leaves the `pdf` feature out)");
        assert!(super::text(b"%PDF-1.4").unwrap_err().to_string().contains("without PDF support"));
        assert_eq!(page_of(&[0, 10], 12), Some(2));
    }
}
