//! What a run has seen, labelled: each item (the user's message, the system prompt, a tool's
//! output, per field where the tool says which fields outsiders write), with a Bloom filter
//! of its 4-byte pieces so that looking an argument's value up verbatim rules most items out
//! without a scan. An argument's label is the join of the labels of the items that said it.

use crate::{Label, detect, flatten};

/// One thing the run saw: the user's message, the system prompt, a tool's output.
#[derive(Debug, Clone)]
pub struct Item {
    /// `user`, `system` or `tool:NAME`.
    pub source: String,
    pub label: Label,
    pub text: String,
    /// The text with ASCII letters in lower case, searched for argument values.
    pub(crate) folded: Vec<u8>,
    /// Which 4-byte pieces the folded text has, so most items are ruled out without a scan.
    pub(crate) grams: Grams,
    /// The item is a tool output's fields, one scalar per line (see [`Context::push_fields`]).
    pub(crate) fields: bool,
    /// The output is one thing (an object, or a list of one): taking a value from it picks
    /// nothing, where taking one from a list of many is a choice made by reading.
    pub(crate) single: bool,
}

impl Item {
    pub(crate) fn says(&self, needle: &[u8], finder: &memchr::memmem::Finder<'_>) -> bool {
        self.grams.may_contain(needle) && finder.find(&self.folded).is_some()
    }
}

/// A Bloom filter of a text's 4-byte pieces: a needle with a piece the text lacks is not in it.
#[derive(Debug, Clone)]
pub(crate) struct Grams {
    pub(crate) bits: Vec<u64>,
    pub(crate) mask: u32,
}

impl Grams {
    pub(crate) fn of(text: &[u8]) -> Grams {
        // About 16 bits per piece keeps false positives rare; past 1 MiB of bits the filter
        // fills and the scan that follows decides.
        let bits = (text.len() * 16).next_power_of_two().clamp(1 << 12, 1 << 23);
        let mut grams = Grams { bits: vec![0; bits / 64], mask: bits as u32 - 1 };
        for piece in text.windows(4) {
            let at = grams.slot(piece);
            grams.bits[at / 64] |= 1 << (at % 64);
        }
        grams
    }

    pub(crate) fn slot(&self, piece: &[u8]) -> usize {
        let word = u32::from_le_bytes([piece[0], piece[1], piece[2], piece[3]]);
        (word.wrapping_mul(0x9e37_79b1).rotate_right(13) & self.mask) as usize
    }

    pub(crate) fn may_contain(&self, needle: &[u8]) -> bool {
        if needle.len() < 4 {
            return true;
        }
        // Up to eight pieces spread over the needle, the first and the last among them.
        let last = needle.len() - 4;
        (0..8usize).map(|i| i * last / 7).all(|start| {
            let at = self.slot(&needle[start..start + 4]);
            self.bits[at / 64] & (1 << (at % 64)) != 0
        })
    }
}

/// What a run has seen so far, and the label of all of it together.
#[derive(Debug, Clone)]
pub struct Context {
    pub items: Vec<Item>,
    /// Everything joined: the label of whatever the model writes next.
    pub label: Label,
    /// Secure mode: the model that chooses the calls (the planner) sees only the user and the
    /// system prompt; tool output reaches the calls only as values, with their own labels.
    pub secure: bool,
    /// The label of what chose the calls: everything in the default mode, only the user and
    /// the system prompt in secure mode.
    pub control: Label,
    /// Untrusted content the injection detector flagged: (source, score, rule).
    pub flagged: Vec<(String, f32, Option<String>)>,
}

impl Default for Context {
    fn default() -> Context {
        Context { items: Vec::new(), label: Label::empty(), secure: false, control: Label::empty(), flagged: Vec::new() }
    }
}

impl Context {
    /// An empty context for a secure-mode run.
    pub fn secure() -> Context {
        Context { secure: true, ..Context::default() }
    }

    /// Records that the injection detector flagged a source's text (its score, the rule).
    pub fn flag(&mut self, source: &str, score: f32, rule: Option<&str>) {
        self.flagged.push((source.into(), score, rule.map(str::to_string)));
    }

    /// Runs the built-in injection detector over a source's text and records a flag when it
    /// finds one; returns what it found.
    pub fn scan(&mut self, source: &str, text: &str) -> detect::Detection {
        let found = detect::Detector::builtin().scan(text);
        if found.flagged {
            self.flag(source, found.score, found.rule);
        }
        found
    }

    pub fn push(&mut self, source: &str, label: Label, text: &str) {
        self.read(source, &label);
        self.add_item(source, label, text, false);
    }

    /// A tool's JSON output where only some fields can hold what outsiders wrote (an email's
    /// `subject` and `body`, not its `id` or `date`): the run has read all of it, but a value
    /// found in the other fields carries the tool's label as trusted. Output that is not
    /// JSON, or a tool with no such fields, is pushed whole.
    ///
    /// In secure mode a plan names the field a value comes from, so a trusted tool's JSON
    /// output is kept field by field too: a short value (an id) that is a whole field of it is
    /// that output's.
    pub fn push_fields(&mut self, source: &str, label: Label, text: &str, untrusted_fields: &[String]) {
        let split = if label.trusted { self.secure } else { !untrusted_fields.is_empty() };
        let parsed = if split { serde_json::from_str::<serde_json::Value>(text).ok().filter(|v| v.is_object() || v.is_array()) } else { None };
        let Some(value) = parsed else { return self.push(source, label, text) };
        self.read(source, &label);
        let (mut inside, mut outside) = (String::new(), String::new());
        split_fields(&value, false, untrusted_fields, &mut inside, &mut outside);
        self.add_item(source, Label { trusted: true, ..label.clone() }, &inside, true);
        if let Some(item) = self.items.last_mut() {
            item.single = value.as_array().is_none_or(|items| items.len() == 1);
        }
        self.add_item(source, label, &outside, true);
    }

    /// A tool's JSON output that untrusted content chose (the tool was asked for what it
    /// named): kept field by field, every field with the output's label.
    pub fn push_chosen(&mut self, source: &str, label: Label, text: &str) {
        let Some(value) = serde_json::from_str::<serde_json::Value>(text).ok().filter(|v| v.is_object() || v.is_array()) else { return self.push(source, label, text) };
        self.read(source, &label);
        let (mut inside, mut outside) = (String::new(), String::new());
        split_fields(&value, true, &[], &mut inside, &mut outside);
        self.add_item(source, label, &outside, true);
    }

    /// The run has read something with this label.
    pub(crate) fn read(&mut self, source: &str, label: &Label) {
        self.label = self.label.join(label);
        // Recalled memory is part of the system prompt the planner reads.
        if !self.secure || matches!(source, "user" | "system" | "memory") {
            self.control = self.control.join(label);
        }
    }

    pub(crate) fn add_item(&mut self, source: &str, label: Label, text: &str, fields: bool) {
        let folded = text.as_bytes().to_ascii_lowercase();
        let grams = Grams::of(&folded);
        self.items.push(Item { source: source.into(), label, text: text.into(), folded, grams, fields, single: false });
    }

    /// The label of a value the model put in a call, from the sources that said it verbatim.
    /// A value the user or the system prompt said is theirs. Otherwise, where one model reads
    /// everything and chooses the calls (the default mode), it is the join of every output
    /// that said it: a value an injected page repeats could have been chosen by the page. In
    /// secure mode the plan says which output a value comes from, so a trusted output's word
    /// counts over an untrusted one's. A value nobody said was written by the model and
    /// carries everything the model saw. Very short values ("1", "ok") prove nothing inside a
    /// text; one that is a whole field of a tool's JSON output is that field's.
    pub fn label_of(&self, value: &str) -> Label {
        let matches = self.sayers(value);
        let join = |items: &mut dyn Iterator<Item = &&Item>| items.fold(None, |acc: Option<Label>, i| Some(acc.map_or_else(|| i.label.clone(), |l| l.join(&i.label))));
        if let Some(label) = join(&mut matches.iter().filter(|i| matches!(i.source.as_str(), "user" | "system"))) {
            return label;
        }
        // An identifier among many (a file id in a listing) is picked by reading, so whatever
        // else names it counts, in either mode; one from a trusted output of one thing (the
        // file just created, the one file a name found) was picked by nobody.
        let short = value.trim().chars().count() < MIN_MATCH_CHARS;
        let found = if self.secure {
            join(&mut matches.iter().filter(|i| i.label.trusted && (!short || i.single))).or_else(|| join(&mut matches.iter()))
        } else {
            join(&mut matches.iter())
        };
        found.unwrap_or_else(|| self.label.clone())
    }

    /// A call's arguments flattened (path, value), and each one's [`Context::label_of`].
    pub fn label_arguments(&self, arguments: &serde_json::Value) -> (Vec<(String, String)>, Vec<Label>) {
        let mut leaves = Vec::new();
        flatten(arguments, String::new(), &mut leaves);
        let labels = leaves.iter().map(|(_, value)| self.label_of(value)).collect();
        (leaves, labels)
    }

    /// Whether a trusted source (the user, the system prompt, a trusted output or field) said
    /// `value`; `None` where nobody did (the model wrote it).
    pub fn said_by_trusted(&self, value: &str) -> Option<bool> {
        let matches = self.sayers(value);
        (!matches.is_empty()).then(|| matches.iter().any(|i| i.label.trusted))
    }

    /// The items that said `value`, by the rules [`Context::label_of`] gives.
    pub(crate) fn sayers(&self, value: &str) -> Vec<&Item> {
        let value = value.trim();
        if value.is_empty() {
            return Vec::new();
        }
        let short = value.chars().count() < MIN_MATCH_CHARS;
        let needle = value.as_bytes().to_ascii_lowercase();
        let finder = memchr::memmem::Finder::new(&needle);
        // A short value counts where it is a whole field of a tool's output, or a word of
        // outsiders' text in one (an injection naming the id it wants).
        let said = |item: &&Item| match (short, item.fields) {
            (false, _) => item.says(&needle, &finder),
            (true, true) if item.label.trusted => item.text.lines().any(|line| line.trim().eq_ignore_ascii_case(value)),
            (true, true) => item.text.split(|c: char| !c.is_alphanumeric()).any(|word| word.eq_ignore_ascii_case(value)),
            (true, false) => false,
        };
        self.items.iter().filter(said).collect()
    }

    /// Whether one of `sources` (`user`, `system`, tool names) said `value` verbatim.
    pub(crate) fn said_by(&self, value: &str, sources: &[String]) -> bool {
        let needle = value.trim().as_bytes().to_ascii_lowercase();
        let finder = memchr::memmem::Finder::new(&needle);
        self.items.iter().any(|item| {
            let named = sources.iter().any(|s| item.source == *s || item.source.strip_prefix("tool:") == Some(s.as_str()));
            named && item.says(&needle, &finder)
        })
    }
}

/// Every scalar of a JSON value, one per line, into `outside` when it sits under one of the
/// `untrusted` keys (at any depth), else into `inside`. Keys count as values of the object
/// that holds them (a map of addresses to permissions names its addresses in its keys).
pub(crate) fn split_fields(value: &serde_json::Value, under: bool, untrusted: &[String], inside: &mut String, outside: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let out = if under { &mut *outside } else { &mut *inside };
                out.push_str(key);
                out.push('\n');
                split_fields(v, under || untrusted.iter().any(|u| u == key), untrusted, inside, outside);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| split_fields(v, under, untrusted, inside, outside)),
        serde_json::Value::Null => {}
        scalar => {
            let out = if under { outside } else { inside };
            match scalar {
                serde_json::Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
            out.push('\n');
        }
    }
}

/// Whether a JSON value holds one of the `untrusted` keys anywhere.
pub fn has_field(value: &serde_json::Value, untrusted: &[String]) -> bool {
    match value {
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| untrusted.iter().any(|u| u == k) || has_field(v, untrusted)),
        serde_json::Value::Array(items) => items.iter().any(|v| has_field(v, untrusted)),
        _ => false,
    }
}

/// Values are matched case-insensitively for ASCII letters (an address typed in capitals is
/// the same address), and only from this length on.
pub(crate) const MIN_MATCH_CHARS: usize = 3;
