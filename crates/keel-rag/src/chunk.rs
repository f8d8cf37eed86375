//! Structure-aware chunking: a document is cut into blocks (headings, paragraphs, code
//! blocks, list runs), blocks are packed into chunks of at most `max_tokens` tokens of the
//! embedding model, and a block too long on its own is split at sentence, then word
//! boundaries, so nothing is cut off by the model's window. Each chunk keeps its heading
//! path and its byte range in the source.

use std::ops::Range;

/// How a document's text is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Markdown,
    Text,
    Code,
    Html,
}

impl Kind {
    /// The kind a file's extension says, if keel reads it.
    pub fn of(path: &std::path::Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "md" | "markdown" | "mdx" => Kind::Markdown,
            "txt" | "text" | "rst" | "adoc" => Kind::Text,
            "html" | "htm" => Kind::Html,
            "rs" | "py" | "js" | "ts" | "tsx" | "jsx" | "go" | "java" | "c" | "h" | "cc" | "cpp" | "hpp" | "rb" | "sh" | "toml" | "yaml"
            | "yml" | "json" | "sql" | "kt" | "swift" | "cs" | "php" | "scala" | "lua" => Kind::Code,
            _ => return None,
        })
    }
}

/// A piece of a document to embed and index.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    /// Headings above it, outermost first.
    pub headings: Vec<String>,
    /// Where it is in the document's text (bytes).
    pub range: Range<usize>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At most this many tokens of the embedding model per chunk (special tokens included).
    pub max_tokens: usize,
    /// Tokens of the end of one chunk repeated at the start of the next, within a section.
    pub overlap_tokens: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        // all-MiniLM-L6-v2 reads at most 256 tokens but was trained on pairs cut at 128
        // (its model card); its vectors of longer texts are worse, so chunks stay within 128.
        Limits { max_tokens: 128, overlap_tokens: 16 }
    }
}

/// A block: a unit of structure that stays whole when it fits.
#[derive(Debug, Clone)]
struct Block {
    range: Range<usize>,
    headings: Vec<String>,
    heading: bool,
}

/// Cuts text into blocks with their heading paths.
fn blocks(text: &str, kind: Kind) -> Vec<Block> {
    let mut out = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut start: Option<usize> = None;
    let mut in_fence = false;
    let mut offset = 0;
    let path = |headings: &[(usize, String)]| headings.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>();
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let trimmed = line.trim();
        if kind == Kind::Markdown && (trimmed.starts_with("```") || trimmed.starts_with("~~~")) {
            if in_fence {
                in_fence = false;
                continue;
            }
            if let Some(s) = start.take() {
                out.push(Block { range: s..line_start, headings: path(&headings), heading: false });
            }
            in_fence = true;
            start = Some(line_start);
            continue;
        }
        if in_fence {
            continue;
        }
        let level = if kind == Kind::Markdown { trimmed.chars().take_while(|&c| c == '#').count() } else { 0 };
        if (1..=6).contains(&level) && trimmed[level..].starts_with(' ') {
            if let Some(s) = start.take() {
                out.push(Block { range: s..line_start, headings: path(&headings), heading: false });
            }
            headings.retain(|(l, _)| *l < level);
            headings.push((level, trimmed[level..].trim().to_string()));
            out.push(Block { range: line_start..offset, headings: path(&headings), heading: true });
            continue;
        }
        if trimmed.is_empty() {
            if let Some(s) = start.take() {
                out.push(Block { range: s..line_start, headings: path(&headings), heading: false });
            }
            continue;
        }
        if start.is_none() {
            start = Some(line_start);
        }
    }
    if let Some(s) = start {
        out.push(Block { range: s..text.len(), headings: path(&headings), heading: false });
    }
    out
}

/// Splits `range` of `text` into pieces that each fit `max`, at sentence ends where it
/// can, else at word boundaries, else between characters.
fn split_long(text: &str, range: Range<usize>, max: usize, count: &dyn Fn(&str) -> usize) -> Vec<Range<usize>> {
    let piece = &text[range.clone()];
    if count(piece) <= max {
        return vec![range];
    }
    // Candidate cut points: after sentence ends, then after whitespace.
    let mut cuts: Vec<usize> = piece.match_indices(['.', '!', '?', '\n']).map(|(i, m)| i + m.len()).filter(|&i| i < piece.len()).collect();
    if cuts.len() < 2 {
        cuts = piece.match_indices(char::is_whitespace).map(|(i, m)| i + m.len()).filter(|&i| i < piece.len()).collect();
    }
    if cuts.is_empty() {
        // No boundary at all: halve between characters.
        let mut mid = piece.len() / 2;
        while !piece.is_char_boundary(mid) {
            mid += 1;
        }
        if mid == 0 || mid >= piece.len() {
            return vec![range];
        }
        let mut out = split_long(text, range.start..range.start + mid, max, count);
        out.extend(split_long(text, range.start + mid..range.end, max, count));
        return out;
    }
    // Greedy: the longest prefix under the limit, by binary search over the cut points.
    let mut out = Vec::new();
    let mut from = 0;
    while from < piece.len() {
        if count(&piece[from..]) <= max {
            out.push(range.start + from..range.end);
            break;
        }
        let candidates: Vec<usize> = cuts.iter().copied().filter(|&c| c > from).collect();
        let (mut lo, mut hi) = (0usize, candidates.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if count(&piece[from..candidates[mid]]) <= max { lo = mid + 1 } else { hi = mid }
        }
        if lo == 0 {
            // Even the first boundary is too far: split that stretch further.
            let end = candidates.first().copied().unwrap_or(piece.len());
            let sub = split_long_words(text, range.start + from..range.start + end, max, count);
            out.extend(sub);
            from = end;
        } else {
            let end = candidates[lo - 1];
            out.push(range.start + from..range.start + end);
            from = end;
        }
    }
    out
}

fn split_long_words(text: &str, range: Range<usize>, max: usize, count: &dyn Fn(&str) -> usize) -> Vec<Range<usize>> {
    let piece = &text[range.clone()];
    if count(piece) <= max || !piece.contains(char::is_whitespace) {
        let mut mid = piece.len() / 2;
        while mid < piece.len() && !piece.is_char_boundary(mid) {
            mid += 1;
        }
        if count(piece) <= max || mid == 0 || mid >= piece.len() {
            return vec![range];
        }
        let mut out = split_long_words(text, range.start..range.start + mid, max, count);
        out.extend(split_long_words(text, range.start + mid..range.end, max, count));
        return out;
    }
    split_long(text, range, max, count)
}

/// The document's chunks. `count` counts the embedding model's tokens of a text (special
/// tokens included), so every chunk fits the model's window.
pub fn chunk(text: &str, kind: Kind, limits: Limits, count: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let max = limits.max_tokens.max(8);
    let mut pieces: Vec<Block> = Vec::new();
    // Long blocks are cut to leave room for the overlap carried into the next piece.
    let piece_max = max - limits.overlap_tokens.min(max / 4);
    for block in blocks(text, kind) {
        for range in split_long(text, block.range.clone(), piece_max, count) {
            pieces.push(Block { range, headings: block.headings.clone(), heading: block.heading });
        }
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current: Option<Chunk> = None;
    for piece in pieces {
        let same_section = current.as_ref().is_some_and(|c| c.headings == piece.headings || piece.heading);
        if let Some(chunk) = current.as_mut()
            && same_section
            && !(piece.heading && !chunk.text.trim().is_empty() && !is_only_headings(chunk, text))
        {
            let candidate = &text[chunk.range.start..piece.range.end];
            if count(candidate) <= max {
                chunk.range.end = piece.range.end;
                chunk.text = candidate.trim().to_string();
                if piece.heading {
                    chunk.headings = piece.headings.clone();
                }
                continue;
            }
        }
        if let Some(done) = current.take() {
            let overlap_from = overlap_start(text, &done, &piece, limits.overlap_tokens, max, count);
            chunks.push(done);
            if let Some(from) = overlap_from {
                let candidate = &text[from..piece.range.end];
                current = Some(Chunk { text: candidate.trim().to_string(), headings: piece.headings.clone(), range: from..piece.range.end });
                continue;
            }
        }
        current = Some(Chunk { text: text[piece.range.clone()].trim().to_string(), headings: piece.headings.clone(), range: piece.range.clone() });
    }
    chunks.extend(current);
    chunks.retain(|c| !c.text.is_empty());
    chunks
}

fn is_only_headings(chunk: &Chunk, text: &str) -> bool {
    text[chunk.range.clone()].lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

/// Where the next chunk starts to repeat the end of `done` (same section only), if the
/// overlap still fits with the next piece.
fn overlap_start(text: &str, done: &Chunk, next: &Block, overlap: usize, max: usize, count: &dyn Fn(&str) -> usize) -> Option<usize> {
    if overlap == 0 || next.heading || done.headings != next.headings || next.range.start < done.range.end {
        return None;
    }
    let body = &text[done.range.clone()];
    // Back off word by word from the end until the overlap holds `overlap` tokens.
    let words: Vec<usize> = body.match_indices(char::is_whitespace).map(|(i, _)| i + 1).collect();
    let mut start = None;
    for &w in words.iter().rev() {
        if count(&body[w..]) > overlap {
            break;
        }
        start = Some(done.range.start + w);
    }
    let start = start?;
    (count(&text[start..next.range.end]) <= max).then_some(start)
}

/// Plain text of an HTML page: tags and scripts out, block tags as line breaks, headings as
/// Markdown headings (so chunks keep their heading paths), entities decoded.
pub fn html_to_text(html: &str) -> (String, Option<String>) {
    let lower = html.to_ascii_lowercase();
    let title = lower.find("<title").and_then(|s| {
        let open = lower[s..].find('>')? + s + 1;
        let close = lower[open..].find("</title")? + open;
        Some(decode(html[open..close].trim()))
    });
    let mut out = String::new();
    let mut i = 0;
    let bytes = html.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let Some(end) = html[i..].find('>').map(|e| e + i) else { break };
            let tag = lower[i + 1..end].trim_start_matches('/').split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("");
            let closing = lower[i + 1..end].starts_with('/');
            if !closing && matches!(tag, "script" | "style" | "noscript" | "head") {
                let close = format!("</{tag}");
                i = lower[end..].find(&close).map_or(bytes.len(), |c| c + end);
                i = lower[i..].find('>').map_or(bytes.len(), |c| c + i + 1);
                continue;
            }
            match tag {
                "h1" | "h2" | "h3" | "h4" | "h5" | "h6" if !closing => {
                    let level = tag[1..].parse::<usize>().unwrap_or(1);
                    out.push_str("\n\n");
                    out.push_str(&"#".repeat(level));
                    out.push(' ');
                }
                "p" | "div" | "section" | "article" | "li" | "tr" | "br" | "pre" | "blockquote" | "table" | "ul" | "ol"
                | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => out.push_str("\n\n"),
                _ => {}
            }
            i = end + 1;
        } else {
            let next = html[i..].find('<').map_or(html.len(), |n| n + i);
            out.push_str(&decode(&html[i..next]));
            i = next;
        }
    }
    // Collapse the blank lines the tags left.
    let mut text = String::new();
    let mut blank = 0;
    for line in out.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !text.is_empty() {
            text.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        text.push_str(&line);
    }
    (text, title)
}

fn decode(text: &str) -> String {
    text.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words as tokens, plus two for [CLS] and [SEP].
    fn words(text: &str) -> usize {
        text.split_whitespace().count() + 2
    }

    #[test]
    fn markdown_chunks_follow_headings_and_keep_code_blocks_whole() {
        let text = "# Guide\n\nIntro words here.\n\n## Install\n\nRun the installer.\n\n```sh\ncargo install keel\nkeel serve\n```\n\n## Use\n\nAsk it things.\n";
        let chunks = chunk(text, Kind::Markdown, Limits { max_tokens: 12, overlap_tokens: 0 }, &words);
        let shown: Vec<(Vec<String>, &str)> = chunks.iter().map(|c| (c.headings.clone(), c.text.as_str())).collect();
        assert_eq!(shown[0], (vec!["Guide".to_string()], "# Guide\n\nIntro words here."));
        assert!(shown.iter().any(|(h, t)| h == &["Guide", "Install"] && t.contains("```sh\ncargo install keel\nkeel serve\n```")), "{shown:#?}");
        assert_eq!(shown.last().unwrap(), &(vec!["Guide".to_string(), "Use".to_string()], "## Use\n\nAsk it things."));
        for c in &chunks {
            assert_eq!(text[c.range.clone()].trim(), c.text, "ranges point at the text");
        }
    }

    #[test]
    fn nothing_is_longer_than_the_limit_and_nothing_is_lost() {
        let sentence = "The quick brown fox jumps over the lazy dog. ";
        let text = format!("# T\n\n{}\n\n{}", sentence.repeat(40), "x".repeat(50));
        let count = |t: &str| t.len() / 10 + 2;
        let chunks = chunk(&text, Kind::Markdown, Limits { max_tokens: 40, overlap_tokens: 8 }, &count);
        assert!(chunks.len() > 5);
        for c in &chunks {
            assert!(count(&c.text) <= 40, "{} tokens: {:?}", count(&c.text), c.text);
        }
        // Every word of the document is in some chunk.
        let all: String = chunks.iter().map(|c| c.text.clone()).collect::<Vec<_>>().join(" ");
        assert!(all.matches("fox").count() >= 40);
        assert!(all.contains(&"x".repeat(20)));
        // Overlap: consecutive chunks in one section share words.
        let (a, b) = (&chunks[1], &chunks[2]);
        assert!(b.range.start < a.range.end, "the next chunk repeats the end of the last");
    }

    #[test]
    fn html_keeps_its_title_and_headings_and_drops_scripts() {
        let (text, title) = html_to_text(
            "<html><head><title>Docs &amp; more</title><script>evil()</script></head><body><h1>Top</h1><p>One &lt;two&gt;</p><script>x()</script><h2>Sub</h2><p>Three</p></body></html>",
        );
        assert_eq!(title.as_deref(), Some("Docs & more"));
        assert_eq!(text, "# Top\n\nOne <two>\n\n## Sub\n\nThree");
        assert!(!text.contains("evil"));
    }
}
