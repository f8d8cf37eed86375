//! Person names where no rule can tell: "They had 6: Efimiya, Mary, Ariana", "Hanne I.
//! Kreutzmann from Can Capital is the keynote speaker". Every capitalised word is scored by a
//! logistic regression over hashed features of the word and its neighbours (the word, its
//! first and last letters, its shape, the words and punctuation around it); a run of named
//! words with only spaces between them is one name. keel trains it itself on labelled
//! sentences (`keel guard names train`, deterministic) and ships the weights, one byte each,
//! as `data/names.model`.

use std::sync::LazyLock;

use crate::linear::{self, TrainOptions, hash_bytes};

const BITS: u32 = 18;
const MAGIC: &[u8; 8] = b"KEELNAM1";

/// A trained name tagger and the score it names a word at.
#[derive(Debug, Clone)]
pub struct Tagger {
    weights: Vec<f32>,
    bias: f32,
    pub threshold: f32,
}

/// The weights keel ships (see the module comment).
static BUILTIN: LazyLock<Tagger> = LazyLock::new(|| Tagger::from_bytes(include_bytes!("../data/names.model")).expect("the shipped name model is readable"));

/// The words of a text as byte ranges: letters and digits, joined by an apostrophe or a hyphen
/// between two of them (O'Neil, Jean-Luc); a single capital keeps its dot (an initial, "P.").
pub fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, first)) = chars.next() {
        if !first.is_alphanumeric() {
            continue;
        }
        let (mut end, mut count) = (start + first.len_utf8(), 1);
        while let Some(&(at, c)) = chars.peek() {
            let joins = matches!(c, '\'' | '’' | '-') && text[at + c.len_utf8()..].chars().next().is_some_and(char::is_alphanumeric);
            if !c.is_alphanumeric() && !joins {
                break;
            }
            (end, count) = (at + c.len_utf8(), count + 1);
            chars.next();
        }
        if count == 1 && first.is_uppercase() && text[end..].starts_with('.') {
            end += 1;
            chars.next();
        }
        out.push((start, end));
    }
    out
}

fn capitalised(word: &str) -> bool {
    word.chars().next().is_some_and(char::is_uppercase)
}

/// A word's kind for its neighbours' features: capitalised, lower case, a number.
fn kind(word: Option<&str>) -> &'static str {
    match word.and_then(|w| w.chars().next()) {
        None => "edge",
        Some(c) if c.is_uppercase() => "cap",
        Some(c) if c.is_numeric() => "num",
        Some(_) => "low",
    }
}

/// A word's shape with runs folded: "Xx", "X.", "Xx-Xx", "XX", "dd".
fn shape(word: &str) -> String {
    let mut out = String::new();
    for c in word.chars() {
        let s = if c.is_uppercase() {
            'X'
        } else if c.is_lowercase() {
            'x'
        } else if c.is_numeric() {
            'd'
        } else {
            c
        };
        if !out.ends_with(s) {
            out.push(s);
        }
    }
    out
}

/// The first character that is not a space in `gap` (the text between two words), as the
/// punctuation between them: "," in "Mary, Ariana", "" for a space alone.
fn punctuation(gap: &str) -> &str {
    let gap = gap.trim_matches(' ');
    match gap.chars().next() {
        Some(c) => &gap[..c.len_utf8()],
        None => "",
    }
}

/// Appends `word` in lower case.
fn push_lower(out: &mut String, word: &str) {
    if word.is_ascii() {
        out.extend(word.bytes().map(|b| b.to_ascii_lowercase() as char));
    } else {
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
}

/// The hashed features of word `i` (its sign folded into the value, L2-normalised): the
/// word, its first and last three letters, its shape, length and script, the two words on
/// each side, their kinds, and the punctuation around it. Built in one reused buffer: this
/// runs on every capitalised word the PII scan sees.
fn features(text: &str, words: &[(usize, usize)], i: usize) -> Vec<(u32, f32)> {
    const PARTS: usize = 17;
    let mask = (1u64 << BITS) - 1;
    let word_at = |j: Option<usize>| j.and_then(|j| words.get(j)).map(|&(s, e)| &text[s..e]);
    let (start, end) = words[i];
    let word = &text[start..end];
    let (p1, p2, n1, n2) = (word_at(i.checked_sub(1)), word_at(i.checked_sub(2)), word_at(Some(i + 1)), word_at(Some(i + 2)));
    let before = punctuation(&text[words.get(i.wrapping_sub(1)).map_or(0, |w| w.1)..start]);
    let after = punctuation(&text[end..words.get(i + 1).map_or(text.len(), |w| w.0)]);
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(PARTS);
    let mut buf = String::with_capacity(64);
    let mut add = |seed: u64, buf: &mut String| {
        let h = hash_bytes(100 + seed, buf.as_bytes());
        out.push(((h & mask) as u32, if h >> 63 == 1 { -1.0 } else { 1.0 }));
        buf.clear();
    };
    let low = |buf: &mut String, w: Option<&str>| match w {
        Some(w) => push_lower(buf, w),
        None => buf.push_str("^$"),
    };
    push_lower(&mut buf, word);
    let lower = buf.clone();
    add(1, &mut buf);
    let letters = lower.chars().count();
    buf.extend(lower.chars().take(3));
    add(2, &mut buf);
    buf.extend(lower.chars().skip(letters.saturating_sub(3)));
    add(3, &mut buf);
    buf.push_str(&shape(word));
    add(4, &mut buf);
    for (seed, neighbour) in [(5, p1), (6, p2), (7, n1), (8, n2)] {
        low(&mut buf, neighbour);
        add(seed, &mut buf);
    }
    buf.push_str(kind(p1));
    add(9, &mut buf);
    buf.push_str(kind(n1));
    add(10, &mut buf);
    buf.push_str(kind(p1));
    buf.push_str(kind(n1));
    add(11, &mut buf);
    buf.push_str(before);
    add(12, &mut buf);
    buf.push_str(after);
    add(13, &mut buf);
    buf.push_str(before);
    buf.push('|');
    buf.push_str(after);
    add(14, &mut buf);
    buf.push_str(if word.is_ascii() { "false" } else { "true" });
    add(15, &mut buf);
    buf.push_str(&letters.min(12).to_string());
    add(16, &mut buf);
    low(&mut buf, p1);
    buf.push('|');
    buf.push_str(kind(n1));
    add(17, &mut buf);
    let norm = 1.0 / (out.len() as f32).sqrt();
    out.iter_mut().for_each(|(_, v)| *v *= norm);
    out
}

impl Tagger {
    /// The tagger keel ships.
    pub fn builtin() -> &'static Tagger {
        &BUILTIN
    }

    /// The names in a text: (start, end, score) in byte offsets, in text order.
    pub fn find(&self, text: &str) -> Vec<(usize, usize, f32)> {
        let words = words(text);
        let mut names: Vec<(usize, usize, f32)> = Vec::new();
        let mut last = usize::MAX;
        for (i, &(start, end)) in words.iter().enumerate() {
            if !capitalised(&text[start..end]) {
                continue;
            }
            let p = linear::probability(&self.weights, self.bias, &features(text, &words, i));
            if p < self.threshold {
                continue;
            }
            match names.last_mut() {
                Some(name) if last + 1 == i && text[name.1..start].bytes().all(|b| b == b' ') => {
                    name.1 = end;
                    name.2 = name.2.max(p);
                }
                _ => names.push((start, end, p)),
            }
            last = i;
        }
        names
    }

    /// Trains on sentences with their names as byte ranges; every capitalised word is an
    /// example, named when it lies in a name. The threshold is left at one half.
    pub fn train(sentences: &[(String, Vec<(usize, usize)>)], options: &TrainOptions) -> Tagger {
        let mut data = Vec::new();
        for (text, names) in sentences {
            let words = words(text);
            for (i, &(start, end)) in words.iter().enumerate() {
                if capitalised(&text[start..end]) {
                    let named = names.iter().any(|&(s, e)| start < e && s < end);
                    data.push((features(text, &words, i), if named { 1.0 } else { 0.0 }));
                }
            }
        }
        let (weights, bias) = linear::train(&data, BITS, options);
        Tagger { weights, bias, threshold: 0.5 }
    }

    /// Span-level (found, labelled, right) on labelled sentences: a found name is right when a
    /// labelled one overlaps it, each labelled one counting once.
    pub fn score(&self, sentences: &[(String, Vec<(usize, usize)>)]) -> (usize, usize, usize) {
        let (mut found, mut labelled, mut right) = (0, 0, 0);
        for (text, names) in sentences {
            let mut used = vec![false; names.len()];
            labelled += names.len();
            for (start, end, _) in self.find(text) {
                found += 1;
                if let Some(i) = names.iter().enumerate().position(|(i, &(s, e))| !used[i] && start < e && s < end) {
                    used[i] = true;
                    right += 1;
                }
            }
        }
        (found, labelled, right)
    }

    /// Sets the threshold that gives the best F2 on these sentences (held out of training).
    pub fn calibrate(&mut self, sentences: &[(String, Vec<(usize, usize)>)]) -> f64 {
        let mut best = (f64::MIN, 0.5);
        for step in 1..20 {
            self.threshold = step as f32 / 20.0;
            let f2 = f2(self.score(sentences));
            if f2 > best.0 {
                best = (f2, self.threshold);
            }
        }
        self.threshold = best.1;
        best.0
    }

    /// The weights as stored: magic, BITS, bias, threshold, scale, one signed byte per weight.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (scale, bytes) = linear::quantise(&self.weights);
        let mut out = Vec::with_capacity(bytes.len() + 24);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&BITS.to_le_bytes());
        for value in [self.bias, self.threshold, scale] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend(bytes);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Tagger, String> {
        let header = 8 + 4 + 12;
        if bytes.len() < header || &bytes[..8] != MAGIC {
            return Err("not a keel name model (bad magic)".into());
        }
        let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        let bits = u32::from_le_bytes(word(8));
        if bits != BITS || bytes.len() != header + (1 << bits) {
            return Err(format!("the name model has {} bytes of weights for {bits} bits; keel reads {BITS}", bytes.len().saturating_sub(header)));
        }
        let (bias, threshold, scale) = (f32::from_le_bytes(word(12)), f32::from_le_bytes(word(16)), f32::from_le_bytes(word(20)));
        Ok(Tagger { weights: linear::dequantise(&bytes[header..], scale), bias, threshold })
    }

    /// The same weights after a round trip through [`Tagger::to_bytes`] (what a shipped model scores).
    pub fn quantised(&self) -> Tagger {
        Tagger::from_bytes(&self.to_bytes()).expect("a model reads back what it wrote")
    }
}

/// F2 of span counts (found, labelled, right).
pub fn f2((found, labelled, right): (usize, usize, usize)) -> f64 {
    let p = if found == 0 { 0.0 } else { right as f64 / found as f64 };
    let r = if labelled == 0 { 0.0 } else { right as f64 / labelled as f64 };
    if p + r == 0.0 { 0.0 } else { 5.0 * p * r / (4.0 * p + r) }
}

/// Sentences with their spans of one entity type, from Presidio's synthetic data set format
/// (`full_text`, `spans[]` with `entity_type`, `start_position`, `end_position` in characters),
/// as byte ranges.
pub fn read_spans(path: &std::path::Path, entity: &str) -> Result<Vec<(String, Vec<(usize, usize)>)>, String> {
    let raw = std::fs::read_to_string(path).map_err(|e| format!("could not read {}: {e}", path.display()))?;
    let items: Vec<serde_json::Value> = serde_json::from_str(&raw).map_err(|e| format!("{} is not a JSON list: {e}", path.display()))?;
    items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let text = item["full_text"].as_str().ok_or_else(|| format!("{} item {n} has no full_text", path.display()))?.to_string();
            let byte_of = |chars: usize| text.char_indices().nth(chars).map_or(text.len(), |(b, _)| b);
            let spans = item["spans"].as_array().into_iter().flatten().filter(|s| s["entity_type"] == entity);
            let spans = spans.map(|s| (byte_of(s["start_position"].as_u64().unwrap_or(0) as usize), byte_of(s["end_position"].as_u64().unwrap_or(0) as usize))).collect();
            Ok((text, spans))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_initials_apostrophes_and_hyphens() {
        let text = "Jaroslava P. Sedláčková met O'Neil and Jean-Luc - twice.";
        let got: Vec<&str> = words(text).iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(got, ["Jaroslava", "P.", "Sedláčková", "met", "O'Neil", "and", "Jean-Luc", "twice"]);
        assert_eq!(shape("Jean-Luc"), "Xx-Xx");
    }

    #[test]
    fn training_learns_names_from_their_context_and_round_trips() {
        let lists = ["Anna", "Boris", "Chloé", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas"];
        let mut sentences = Vec::new();
        for (i, name) in lists.iter().enumerate() {
            let other = lists[(i + 3) % lists.len()];
            let text = format!("They had 2: {name} and {other}. The Meeting is on Monday in Paris.");
            let spans = [name, &other].iter().map(|n| { let s = text.find(*n).unwrap(); (s, s + n.len()) }).collect();
            sentences.push((text, spans));
        }
        let model = Tagger::train(&sentences, &TrainOptions::default()).quantised();
        let found = model.find("They had 2: Xavier and Yusuf. The Meeting is on Monday in Paris.");
        let text = "They had 2: Xavier and Yusuf. The Meeting is on Monday in Paris.";
        let names: Vec<&str> = found.iter().map(|&(s, e, _)| &text[s..e]).collect();
        assert_eq!(names, ["Xavier", "Yusuf"], "names it never saw, by where they stand");
        assert_eq!(Tagger::from_bytes(&model.to_bytes()).unwrap().find(text).len(), 2);
        assert!(Tagger::from_bytes(b"not a model").is_err());
    }
}
