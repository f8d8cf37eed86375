//! Person names where no rule can tell: "They had 6: Efimiya, Mary, Ariana", "Hanne I.
//! Kreutzmann from Can Capital is the keynote speaker". Every capitalised word is scored by a
//! logistic regression over hashed features of the word and its neighbours (the word, its
//! first and last letters, its shape, the words and punctuation around it); a run of named
//! words with only spaces between them is one name. keel trains it itself on labelled
//! sentences (`keel guard names train`, deterministic) and ships the weights, one byte each,
//! as `data/names.model`.

use std::sync::LazyLock;

use crate::linear::{self, TrainOptions, mix};
use crate::pii::SpanScore;

const BITS: u32 = 18;
const MAGIC: &[u8; 8] = b"KEELNAM1";

/// A sentence with the byte ranges of its names.
pub type Labelled = (String, Vec<(usize, usize)>);

/// A trained name tagger and the score it names a word at.
#[derive(Debug, Clone)]
pub struct Tagger {
    /// One signed byte per weight (weight = byte × scale): a quarter of the memory of floats,
    /// so the lookups of a scan stay in cache.
    weights: Vec<i8>,
    scale: f32,
    bias: f32,
    pub threshold: f32,
}

/// The weights keel ships (see the module comment).
static BUILTIN: LazyLock<Tagger> = LazyLock::new(|| Tagger::from_bytes(include_bytes!("../data/names.model")).expect("the shipped name model is readable"));

/// The words of a text as byte ranges: letters and digits, joined by an apostrophe or a hyphen
/// between two of them (O'Neil, Jean-Luc); a single capital keeps its dot (an initial, "P.").
pub fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    words_into(text, &mut out);
    out
}

/// [`words`] into a reused list.
fn words_into(text: &str, out: &mut Vec<(usize, usize)>) {
    out.clear();
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
}

fn capitalised(word: &str) -> bool {
    word.chars().next().is_some_and(char::is_uppercase)
}

/// A word's kind for its neighbours' features: none (an edge), capitalised, a number, lower case.
fn kind(word: Option<&str>) -> u64 {
    match word.and_then(|w| w.chars().next()) {
        None => 0,
        Some(c) if c.is_uppercase() => 1,
        Some(c) if c.is_numeric() => 2,
        Some(_) => 3,
    }
}

/// A word's shape with runs folded: "Xx", "X.", "Xx-Xx", "XX", "dd".
#[cfg(test)]
fn shape(word: &str) -> String {
    let mut out = String::new();
    push_shape(&mut out, word);
    out
}

/// Appends a word's shape (see [`shape`]).
fn push_shape(out: &mut String, word: &str) {
    let from = out.len();
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
        if out.len() == from || !out.ends_with(s) {
            out.push(s);
        }
    }
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

/// A hash of a short string: one multiply per eight bytes (the mixing is left to [`feature`]).
fn hash_str(text: &str) -> u64 {
    let mut h = text.len() as u64;
    for chunk in text.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h
}

/// A feature's bucket and sign: its kind (`seed`) and its value's hash, mixed once.
fn feature(seed: u64, value: u64) -> (u32, f32) {
    let h = mix(value ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    ((h & ((1u64 << BITS) - 1)) as u32, if h >> 63 == 1 { -1.0 } else { 1.0 })
}

/// The hash of word `j` in lower case (a constant past either end), computed once per line.
fn word_hash(text: &str, words: &[(usize, usize)], j: Option<usize>, scratch: &mut Scratch) -> u64 {
    let Some(j) = j.filter(|&j| j < words.len()) else { return 0x005e_ed0f_ed6e };
    if let Some(h) = scratch.hashes[j] {
        return h;
    }
    scratch.lower.clear();
    push_lower(&mut scratch.lower, &text[words[j].0..words[j].1]);
    let h = hash_str(&scratch.lower);
    scratch.hashes[j] = Some(h);
    h
}

/// The hashed features of word `i` (its sign folded into the value, L2-normalised): the
/// word, its first and last three letters, its shape, length and script, the two words on
/// each side, their kinds, and the punctuation around it. This runs on every capitalised
/// word the PII scan sees, so words are hashed once per line and nothing is allocated.
fn features(text: &str, words: &[(usize, usize)], i: usize, scratch: &mut Scratch) {
    let word_at = |j: Option<usize>| j.and_then(|j| words.get(j)).map(|&(s, e)| &text[s..e]);
    let (start, end) = words[i];
    let word = &text[start..end];
    let (p1, n1) = (word_at(i.checked_sub(1)), word_at(Some(i + 1)));
    let before = punctuation(&text[words.get(i.wrapping_sub(1)).map_or(0, |w| w.1)..start]);
    let after = punctuation(&text[end..words.get(i + 1).map_or(text.len(), |w| w.0)]);
    let own = word_hash(text, words, Some(i), scratch);
    let near = [i.checked_sub(1), i.checked_sub(2), Some(i + 1), Some(i + 2)].map(|j| word_hash(text, words, j, scratch));
    let Scratch { buf, lower, features: out, .. } = scratch;
    lower.clear();
    push_lower(lower, word);
    let letters = lower.chars().count();
    buf.clear();
    buf.extend(lower.chars().take(3));
    let prefix = hash_str(buf);
    buf.clear();
    buf.extend(lower.chars().skip(letters.saturating_sub(3)));
    let suffix = hash_str(buf);
    buf.clear();
    push_shape(buf, word);
    let shape = hash_str(buf);
    let (kp, kn) = (kind(p1), kind(n1));
    let (before, after) = (hash_str(before), hash_str(after));
    out.clear();
    out.extend([
        feature(1, own),
        feature(2, prefix),
        feature(3, suffix),
        feature(4, shape),
        feature(5, near[0]),
        feature(6, near[1]),
        feature(7, near[2]),
        feature(8, near[3]),
        feature(9, kp),
        feature(10, kn),
        feature(11, kp * 8 + kn),
        feature(12, before),
        feature(13, after),
        feature(14, before.rotate_left(17) ^ after),
        feature(15, u64::from(word.is_ascii())),
        feature(16, letters.min(12) as u64),
        feature(17, near[0].rotate_left(9) ^ kn),
    ]);
    let norm = 1.0 / (out.len() as f32).sqrt();
    out.iter_mut().for_each(|(_, v)| *v *= norm);
}

/// What a scan reuses from word to word and line to line.
#[derive(Default)]
struct Scratch {
    words: Vec<(usize, usize)>,
    /// Each word's hash in lower case, once computed.
    hashes: Vec<Option<u64>>,
    buf: String,
    lower: String,
    features: Vec<(u32, f32)>,
}

/// Calls `each(n, start, end, features)` for every capitalised word of a text, line by line
/// (a name does not run over a line's end): `n` counts words over the whole text, offsets
/// are the text's.
fn capitalised_words(text: &str, mut each: impl FnMut(usize, usize, usize, &[(u32, f32)])) {
    let mut scratch = Scratch::default();
    let (mut offset, mut counted) = (0, 0);
    for line in text.split('\n') {
        let mut words = std::mem::take(&mut scratch.words);
        words_into(line, &mut words);
        scratch.hashes.clear();
        scratch.hashes.resize(words.len(), None);
        for (i, &(start, end)) in words.iter().enumerate() {
            if capitalised(&line[start..end]) {
                features(line, &words, i, &mut scratch);
                each(counted + i, offset + start, offset + end, &scratch.features);
            }
        }
        counted += words.len();
        offset += line.len() + 1;
        scratch.words = words;
    }
}

impl Tagger {
    /// The tagger keel ships.
    pub fn builtin() -> &'static Tagger {
        &BUILTIN
    }

    /// The names in a text: (start, end, score) in byte offsets, in text order.
    pub fn find(&self, text: &str) -> Vec<(usize, usize, f32)> {
        let mut names: Vec<(usize, usize, f32)> = Vec::new();
        let mut last = usize::MAX;
        capitalised_words(text, |n, start, end, features| {
            let p = self.probability(features);
            if p < self.threshold {
                return;
            }
            match names.last_mut() {
                Some(name) if last.wrapping_add(1) == n && text[name.1..start].bytes().all(|b| b == b' ') => {
                    name.1 = end;
                    name.2 = name.2.max(p);
                }
                _ => names.push((start, end, p)),
            }
            last = n;
        });
        names
    }

    /// Trains on sentences with their names as byte ranges; every capitalised word is an
    /// example, named when it lies in a name. The threshold is left at one half.
    pub fn train(sentences: &[Labelled], options: &TrainOptions) -> Tagger {
        let mut data = Vec::new();
        for (text, names) in sentences {
            capitalised_words(text, |_, start, end, features| {
                let named = names.iter().any(|&(s, e)| start < e && s < end);
                data.push((features.to_vec(), if named { 1.0 } else { 0.0 }));
            });
        }
        let (weights, bias) = linear::train(&data, BITS, options);
        let (scale, bytes) = linear::quantise(&weights);
        Tagger { weights: bytes.into_iter().map(|b| b as i8).collect(), scale, bias, threshold: 0.5 }
    }

    fn probability(&self, features: &[(u32, f32)]) -> f32 {
        let z = self.bias + self.scale * features.iter().map(|&(k, v)| f32::from(self.weights[k as usize]) * v).sum::<f32>();
        1.0 / (1.0 + (-z).exp())
    }

    /// Span-level scores on labelled sentences ([`SpanScore`]).
    pub fn score(&self, sentences: &[Labelled]) -> SpanScore {
        let mut score = SpanScore::default();
        for (text, names) in sentences {
            score.add(names, self.find(text).into_iter().map(|(start, end, _)| (start, end)));
        }
        score
    }

    /// Sets the threshold that gives the best F2 on these sentences (held out of training).
    pub fn calibrate(&mut self, sentences: &[Labelled]) -> f64 {
        let mut best = (f64::MIN, 0.5);
        for step in 1..20 {
            self.threshold = step as f32 / 20.0;
            let f2 = self.score(sentences).f2();
            if f2 > best.0 {
                best = (f2, self.threshold);
            }
        }
        self.threshold = best.1;
        best.0
    }

    /// The weights as stored: magic, BITS, bias, threshold, scale, one signed byte per weight.
    pub fn to_bytes(&self) -> Vec<u8> {
        linear::write_model(MAGIC, BITS, [self.bias, self.threshold, self.scale], self.weights.iter().map(|w| *w as u8))
    }

    pub fn from_bytes(bytes: &[u8]) -> crate::Result<Tagger> {
        let ([bias, threshold, scale], weights) = linear::read_model(bytes, MAGIC, BITS, "name").map_err(crate::Error::Model)?;
        Ok(Tagger { weights: weights.iter().map(|b| *b as i8).collect(), scale, bias, threshold })
    }
}

/// Sentences with their spans of one entity type, from Presidio's synthetic data set format
/// (`full_text`, `spans[]` with `entity_type`, `start_position`, `end_position` in characters),
/// as byte ranges.
pub fn read_spans(path: &std::path::Path, entity: &str) -> crate::Result<Vec<Labelled>> {
    spans_of(path, entity).map_err(crate::Error::Data)
}

fn spans_of(path: &std::path::Path, entity: &str) -> Result<Vec<Labelled>, String> {
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


/// A tagger trained on four fifths of labelled sentences (the detector's split), its
/// threshold set for the best F2 on the fifth held out, and measured there.
#[derive(Debug)]
pub struct Trained {
    pub model: Tagger,
    pub training: usize,
    pub validation: usize,
    pub precision: f64,
    pub recall: f64,
    pub f2: f64,
}

/// Trains the name tagger on sentences with their name spans.
pub fn train_split(sentences: Vec<(String, Vec<(usize, usize)>)>, epochs: usize) -> crate::Result<Trained> {
    let (validation, training): (Vec<_>, Vec<_>) = sentences.into_iter().partition(|(text, _)| crate::detect::is_validation(text));
    if training.iter().all(|(_, spans)| spans.is_empty()) {
        return Err(crate::Error::Training("no PERSON spans to learn names from".into()));
    }
    let mut model = Tagger::train(&training, &crate::detect::TrainOptions { epochs, ..crate::detect::TrainOptions::default() });
    model.calibrate(&validation);
    let score = model.score(&validation);
    Ok(Trained { precision: score.precision(), recall: score.recall(), f2: score.f2(), model, training: training.len(), validation: validation.len() })
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
        let model = Tagger::train(&sentences, &TrainOptions::default());
        let found = model.find("They had 2: Xavier and Yusuf. The Meeting is on Monday in Paris.");
        let text = "They had 2: Xavier and Yusuf. The Meeting is on Monday in Paris.";
        let names: Vec<&str> = found.iter().map(|&(s, e, _)| &text[s..e]).collect();
        assert_eq!(names, ["Xavier", "Yusuf"], "names it never saw, by where they stand");
        assert_eq!(Tagger::from_bytes(&model.to_bytes()).unwrap().find(text).len(), 2);
        assert!(Tagger::from_bytes(b"not a model").is_err());
    }
}
