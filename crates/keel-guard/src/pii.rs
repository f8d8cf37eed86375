//! PII and secrets in text: the kinds a rule can find, each checked the way its format allows
//! (Luhn for card numbers, ISO 7064 mod 97 for IBANs, octet ranges for IP addresses, known
//! prefixes and character entropy for API keys), scored, and raised by context words before
//! them ("phone", "SSN", "card") the way Presidio does. Used to redact text at rest and as a
//! policy input for outbound calls.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What a finding is; the names are Presidio's entity types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Entity {
    EmailAddress,
    PhoneNumber,
    CreditCard,
    IbanCode,
    UsSsn,
    IpAddress,
    DomainName,
    Secret,
    /// A person's name: after a title or words that introduce one, or where the name tagger
    /// ([`crate::names`]) scores a capitalised word as one.
    Person,
    /// A street address: a number with a street word, or an apartment or suite number.
    StreetAddress,
}

impl Entity {
    pub const ALL: [Entity; 10] = [
        Entity::EmailAddress,
        Entity::PhoneNumber,
        Entity::CreditCard,
        Entity::IbanCode,
        Entity::UsSsn,
        Entity::IpAddress,
        Entity::DomainName,
        Entity::Secret,
        Entity::Person,
        Entity::StreetAddress,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Entity::EmailAddress => "EMAIL_ADDRESS",
            Entity::PhoneNumber => "PHONE_NUMBER",
            Entity::CreditCard => "CREDIT_CARD",
            Entity::IbanCode => "IBAN_CODE",
            Entity::UsSsn => "US_SSN",
            Entity::IpAddress => "IP_ADDRESS",
            Entity::DomainName => "DOMAIN_NAME",
            Entity::Secret => "SECRET",
            Entity::Person => "PERSON",
            Entity::StreetAddress => "STREET_ADDRESS",
        }
    }

    /// Words that, shortly before a match, make it likelier to be this kind.
    fn context(self) -> &'static [&'static str] {
        match self {
            Entity::PhoneNumber => &[
                "phone", "call", "tel", "mobile", "cell", "fax", "number", "reach", "text me", "contact", "dial", "desk", "office", "messages to",
                "registered", "answering at", "whatsapp",
            ],
            Entity::CreditCard => &["card", "credit", "visa", "mastercard", "amex", "payment"],
            Entity::IbanCode => &["iban", "account", "bank", "transfer"],
            Entity::UsSsn => &["ssn", "social security", "social", "security number", "ss#"],
            Entity::IpAddress => &["ip", "address", "server", "host"],
            Entity::Secret => &["key", "token", "secret", "password", "api", "bearer"],
            Entity::StreetAddress => &["address", "live at", "lives at", "located at", "ship to", "deliver to", "send it to", "mail to", "resides"],
            Entity::EmailAddress | Entity::DomainName | Entity::Person => &[],
        }
    }
}

/// One span of PII: byte offsets into the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub entity: Entity,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// Findings below this score are not reported.
pub const THRESHOLD: f32 = 0.5;
/// The score of a name the tagger found, before its probability's share (at most 0.7).
const TAGGED_NAME: f32 = 0.5;
/// What a context word adds to a score.
const CONTEXT_BOOST: f32 = 0.35;
/// How far before a match a context word counts, in bytes.
const CONTEXT_WINDOW: usize = 48;
/// And how far after it.
const CONTEXT_AFTER: usize = 12;

struct Pattern {
    entity: Entity,
    regex: Regex,
    score: f32,
    /// A format check on the matched text: `None` rejects the match, `Some(s)` sets its score.
    check: fn(&str, f32) -> Option<f32>,
    /// Every match holds a digit, so only the text around digits is searched.
    digits: bool,
    /// The finding is the match's group `v`, not the whole match (the words that introduce a
    /// name are not part of it).
    group: bool,
}

fn keep(_: &str, score: f32) -> Option<f32> {
    Some(score)
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    let p = |entity, pattern: &str, score, check: fn(&str, f32) -> Option<f32>| Pattern {
        entity,
        regex: Regex::new(pattern).expect("a valid built-in pattern"),
        score,
        check,
        digits: matches!(entity, Entity::CreditCard | Entity::IbanCode | Entity::UsSsn | Entity::IpAddress | Entity::PhoneNumber | Entity::StreetAddress),
        group: pattern.contains("(?P<v>"),
    };
    // A capitalised word of a name: Anne, O'Neil, Jean-Luc, Željko.
    const NAME: &str = r"\p{Lu}[\p{Ll}'’]+(?:-\p{Lu}[\p{Ll}'’]+)?";
    let name = |lead: &str, score| p(Entity::Person, &format!(r"{lead}(?P<v>{NAME}(?:\s+(?:\p{{Lu}}\.\s*)?{NAME}){{0,2}})"), score, keep);
    const STREET: &str = "street|st|road|rd|avenue|ave|boulevard|blvd|lane|ln|drive|dr|way|court|ct|place|pl|terrace|crescent|close|square|sq|parkway|pkwy|highway|hwy|circle|cir|trail|row|walk|alley|plaza|grove|gardens|park|point|hill|view";
    const ROMANCE: &str = "rue|via|calle|avenida|avenue|rua|rúa|strada|piazza|chemin|allée|boulevard|travessa|praça|carrer|viale|corso";
    vec![
        p(Entity::EmailAddress, r"(?i)(?-u:\b)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?-u:\b)", 1.0, keep),
        p(Entity::DomainName, r"(?i)(?-u:\b)(?:https?://|www\.)[a-z0-9.-]+\.[a-z]{2,}(?:[/?#][^\s<>\x22']*)?", 0.6, keep),
        p(Entity::CreditCard, r"(?-u:\b)(?:[0-9][ -]?){12,18}[0-9](?-u:\b)", 0.3, luhn),
        p(Entity::IbanCode, r"(?i)(?-u:\b)[a-z]{2}[0-9]{2}(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,4})?(?-u:\b)", 0.3, iban),
        p(Entity::UsSsn, r"(?-u:\b)[0-9]{3}[- .][0-9]{2}[- .][0-9]{4}(?-u:\b)", 0.5, ssn),
        p(Entity::UsSsn, r"(?-u:\b)[0-9]{9}(?-u:\b)", 0.2, ssn),
        p(Entity::IpAddress, r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)", 0.6, ipv4),
        p(Entity::IpAddress, r"(?i)(?-u:\b)(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}(?-u:\b)", 0.6, keep),
        p(
            Entity::PhoneNumber,
            r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?(?-u:\b)[0-9]{1,5}(?:[ .-]?(?:\([0-9]{1,4}\))?[ .-]?[0-9]{1,5}){0,5}(?:[ ]?x[0-9]{1,5})?(?-u:\b)",
            0.4,
            phone,
        ),
        p(
            Entity::Secret,
            r"(?-u:\b)(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}|xox[abpors]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,})",
            1.0,
            keep,
        ),
        p(Entity::Secret, r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----", 1.0, keep),
        // Names after a title, or after the words that introduce one.
        name(r"(?-u:\b)(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Lady|Lord|Madam|Mme|Mlle|Herr|Frau|Sr|Sra)\.?\s+", 0.85),
        name(
            r"(?i:(?-u:\b)(?:my name is|my name's|i am|i'm|this is|(?:first |last |full |maiden )?name(?: is|:|\?)|named|called|call me|dear|hi|hello|regards,|sincerely,|thanks,|cheers,|from:|signed,?|said|asked|wrote|patient|customer|client|employee|beneficiary|contact|ask for|speak to|spoke to|attn:?|c/o|cc:?|met|meet|tell|told)\s+)",
            0.6,
        ),
        // Street addresses: number first (9858 Hounslow Rd, 36 rue de Pologne), street word
        // first (Avenida Otoniel Dutra 1277), a German compound (Hauptstraße 5), a unit alone.
        p(Entity::StreetAddress, &format!(r"(?i)(?-u:\b)(?:[0-9]{{1,5}}\s+)?[0-9]{{1,5}}[a-z]?,?\s+(?:(?-i:\p{{Lu}})[\p{{L}}'’.-]*\s+|[0-9]{{1,3}}(?:st|nd|rd|th)\s+){{1,4}}(?:{STREET})(?-u:\b)\.?(?:,?\s*(?:apt|apartment|suite|unit|flat|#)\.?\s*#?[0-9a-z]+)?"), 0.75, keep),
        p(Entity::StreetAddress, &format!(r"(?i)(?-u:\b)(?:[0-9]{{1,5}},?\s+){{0,2}}(?:{ROMANCE})\s+(?:[\p{{L}}'’.-]+\s+){{0,4}}[0-9]{{1,5}}(?-u:\b)"), 0.75, keep),
        p(Entity::StreetAddress, &format!(r"(?i)(?-u:\b)[0-9]{{1,5}},?\s+(?:{ROMANCE})\s+(?:[\p{{L}}'’-]+\s*){{1,4}}"), 0.7, keep),
        p(Entity::StreetAddress, r"(?i)(?:[0-9]{1,5}\s+)?[\p{L}-]+(?:straße|strasse|str\.|weg|gasse|platz|allee|laan|straat|gatan|vägen|vej|veien|katu|utca|tér|u\.)\s+[0-9]{1,4}[a-z]?(?-u:\b)\.?", 0.7, keep),
        // Military addresses (PSC 1234, Box 5678 APO AE 09012).
        p(Entity::StreetAddress, r"(?i)(?-u:\b)(?:psc|unit|uscgc|usns|usnv|usns)\s+[0-9a-z]+(?:,?\s*box\s+[0-9]{1,5})?\s+(?:apo|fpo|dpo)\s+(?:aa|ae|ap)\s+[0-9]{5}(?-u:\b)", 0.85, keep),
        p(Entity::StreetAddress, r"(?i)(?-u:\b)(?:apt|apartment|suite|unit)\.?\s*#?[0-9]{1,5}[a-z]?(?-u:\b)", 0.6, keep),
        p(Entity::Secret, r"(?-u:\b)[A-Za-z0-9+/_=-]{32,}(?-u:\b)", 0.0, entropy),
    ]
});

/// What may follow a street: units, place names, a state code, ending with a unit or a postal
/// code (a tail that ends in words is not taken: "… Street in the rain").
static ADDRESS_TAIL: LazyLock<Regex> = LazyLock::new(|| {
    let piece = r"(?:(?:apt|apartment|suite|unit|flat)\.?\s*#?[0-9]{1,5}[a-z]?|\p{L}[\p{L}'’.()-]*(?:[ ]\p{L}[\p{L}'’.()-]*){0,3}|[0-9]{4,6})";
    let end = r"(?:(?:apt|apartment|suite|unit|flat)\.?\s*#?[0-9]{1,5}[a-z]?|[0-9]{4,6}(?:-[0-9]{4})?)";
    Regex::new(&format!(r"(?i)^(?:[\s,>?]{{1,6}}{piece}){{0,5}}[\s,>?]{{1,6}}{end}(?-u:\b)")).expect("the address tail compiles")
});

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// Card numbers: 13 to 19 digits whose Luhn sum is a multiple of ten.
fn luhn(text: &str, score: f32) -> Option<f32> {
    let d = digits(text);
    if !(13..=19).contains(&d.len()) || d.iter().all(|x| *x == d[0]) {
        return None;
    }
    let sum: u32 = d.iter().rev().enumerate().map(|(i, &x)| if i % 2 == 1 { if x * 2 > 9 { x * 2 - 9 } else { x * 2 } } else { x }).sum();
    sum.is_multiple_of(10).then_some(score.max(0.9))
}

/// IBANs: the country and check digits moved to the end, letters as 10..35, mod 97 is 1.
fn iban(text: &str, score: f32) -> Option<f32> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    if !(15..=34).contains(&compact.len()) {
        return None;
    }
    let rearranged = compact[4..].chars().chain(compact[..4].chars());
    let mut remainder = 0u32;
    for c in rearranged {
        let value = c.to_digit(36)?;
        for digit in if value >= 10 { vec![value / 10, value % 10] } else { vec![value] } {
            remainder = (remainder * 10 + digit) % 97;
        }
    }
    (remainder == 1).then_some(score.max(1.0))
}

/// US SSNs: no all-zero group, not 666, not every digit the same.
fn ssn(text: &str, score: f32) -> Option<f32> {
    let d = digits(text);
    if d.len() != 9 || d.iter().all(|x| *x == d[0]) {
        return None;
    }
    let (area, group, serial) = (&d[..3], &d[3..5], &d[5..]);
    if area.iter().all(|x| *x == 0) || area == [6, 6, 6] || group.iter().all(|x| *x == 0) || serial.iter().all(|x| *x == 0) {
        return None;
    }
    Some(score)
}

fn ipv4(text: &str, score: f32) -> Option<f32> {
    text.split('.').all(|octet| octet.parse::<u16>().is_ok_and(|n| n <= 255) && (octet == "0" || !octet.starts_with('0'))).then_some(score)
}

/// Phone numbers: 7 to 15 digits; a leading `+` or a bracketed area code makes one likelier.
fn phone(text: &str, score: f32) -> Option<f32> {
    let d = digits(text);
    if !(7..=15).contains(&d.len()) {
        return None;
    }
    let formatted = text.starts_with('+') || text.contains('(');
    Some(if formatted { score + 0.2 } else { score })
}

/// Long tokens of mixed letters and digits with high character entropy (keys, tokens).
fn entropy(text: &str, _: f32) -> Option<f32> {
    let has = |f: fn(&char) -> bool| text.chars().any(|c| f(&c));
    if !(has(char::is_ascii_digit) && has(char::is_ascii_lowercase) && has(char::is_ascii_uppercase)) {
        return None;
    }
    let mut counts = [0u32; 128];
    for b in text.bytes() {
        counts[(b & 127) as usize] += 1;
    }
    let n = text.len() as f64;
    let bits: f64 = counts.iter().filter(|c| **c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).log2()).sum();
    (bits >= 4.0).then_some(0.7)
}

/// Every finding at or above [`THRESHOLD`], in text order, overlaps resolved by score (then
/// length).
pub fn scan(text: &str) -> Vec<Finding> {
    scan_with(text, true)
}

/// [`scan`] without the name tagger: for policy decisions, where names do not count.
pub fn scan_except_names(text: &str) -> Vec<Finding> {
    scan_with(text, false)
}

fn scan_with(text: &str, names: bool) -> Vec<Finding> {
    let lower = text.to_ascii_lowercase();
    let regions = digit_regions(text.as_bytes());
    let mut found: Vec<Finding> = Vec::new();
    for pattern in PATTERNS.iter() {
        let whole = 0..text.len();
        let searched: &[std::ops::Range<usize>] = if pattern.digits { &regions } else { std::slice::from_ref(&whole) };
        let spans: Vec<(usize, usize)> = if pattern.group {
            searched
                .iter()
                .flat_map(|r| pattern.regex.captures_iter(&text[r.clone()]).filter_map(move |c| c.name("v").map(|m| (r.start + m.start(), r.start + m.end()))))
                .collect()
        } else {
            searched.iter().flat_map(|r| pattern.regex.find_iter(&text[r.clone()]).map(move |m| (r.start + m.start(), r.start + m.end()))).collect()
        };
        for (mut start, mut end) in spans {
            // A URL without the punctuation that ends the sentence around it.
            if pattern.entity == Entity::DomainName {
                while end > start && matches!(text.as_bytes()[end - 1], b'.' | b',' | b')' | b';' | b':' | b'!' | b'?') {
                    end -= 1;
                }
            }
            if pattern.entity == Entity::PhoneNumber {
                while start < end && text.as_bytes()[start] == b' ' {
                    start += 1;
                }
            }
            if pattern.entity == Entity::StreetAddress {
                // The rest of the address: a unit, the town and country, the postal code.
                if let Some(tail) = ADDRESS_TAIL.find(&text[end..]) {
                    end += tail.end();
                }
            }
            let Some(mut score) = (pattern.check)(&text[start..end], pattern.score) else { continue };
            // Bytes, not characters: the window may start inside a multi-byte character. A few
            // words after count too ("555 0142 office").
            let before = &lower.as_bytes()[start.saturating_sub(CONTEXT_WINDOW)..start];
            let after = &lower.as_bytes()[end..(end + CONTEXT_AFTER).min(lower.len())];
            let said = |window: &[u8]| pattern.entity.context().iter().any(|word| memchr::memmem::find(window, word.as_bytes()).is_some());
            if said(before) || said(after) {
                score += CONTEXT_BOOST;
            }
            if score >= THRESHOLD {
                found.push(Finding { entity: pattern.entity, start, end, score: score.min(1.0) });
            }
        }
    }
    // Names no rule can tell, by the tagger; below the rules' scores, so an address or a
    // titled name the rules found keeps its span.
    for (start, end, p) in if names { crate::names::Tagger::builtin().find(text) } else { Vec::new() } {
        found.push(Finding { entity: Entity::Person, start, end, score: TAGGED_NAME + 0.2 * p });
    }
    // The strongest of overlapping findings wins; a longer one breaks a tie. Overlaps are
    // local, so this runs cluster by cluster (findings chained by overlap) in text order.
    found.sort_by_key(|f| (f.start, f.end));
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    let mut cluster: Vec<Finding> = Vec::new();
    let mut cluster_end = 0;
    for f in found {
        if !cluster.is_empty() && f.start >= cluster_end {
            resolve(&mut cluster, &mut kept);
        }
        cluster_end = if cluster.is_empty() { f.end } else { cluster_end.max(f.end) };
        cluster.push(f);
    }
    resolve(&mut cluster, &mut kept);
    kept
}

/// The parts of a text around its digits, each widened to the whitespace (or the text's
/// edge) some way off on both sides, so word boundaries inside them are the text's own.
fn digit_regions(text: &[u8]) -> Vec<std::ops::Range<usize>> {
    const MARGIN: usize = 40;
    let mut regions: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    while let Some(offset) = text[at..].iter().position(u8::is_ascii_digit) {
        let digit = at + offset;
        let mut start = digit.saturating_sub(MARGIN);
        while start > 0 && !text[start - 1].is_ascii_whitespace() {
            start -= 1;
        }
        // The run of digits and the characters numbers are written with.
        let mut end = digit;
        while end < text.len() && (text[end].is_ascii_digit() || b" .-()+/x".contains(&text[end])) {
            end += 1;
        }
        end = (end + MARGIN).min(text.len());
        while end < text.len() && !text[end].is_ascii_whitespace() {
            end += 1;
        }
        match regions.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => regions.push(start..end),
        }
        at = end.max(digit + 1);
    }
    regions
}

/// Keeps the strongest non-overlapping findings of one cluster, in text order.
fn resolve(cluster: &mut Vec<Finding>, kept: &mut Vec<Finding>) {
    cluster.sort_by(|a, b| b.score.total_cmp(&a.score).then((b.end - b.start).cmp(&(a.end - a.start))));
    let first = kept.len();
    for f in cluster.drain(..) {
        if kept[first..].iter().all(|k| f.end <= k.start || f.start >= k.end) {
            kept.push(f);
        }
    }
    kept[first..].sort_by_key(|f| f.start);
}

/// Span-level scores of one kind of finding: a found span is right when a labelled span
/// overlaps it, each labelled span counting once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct SpanScore {
    pub labelled: usize,
    pub found: usize,
    pub right: usize,
}

impl SpanScore {
    /// Adds one sentence: its labelled spans and the spans found, as byte ranges.
    pub fn add(&mut self, labelled: &[(usize, usize)], found: impl IntoIterator<Item = (usize, usize)>) {
        let mut used = vec![false; labelled.len()];
        self.labelled += labelled.len();
        for (start, end) in found {
            self.found += 1;
            if let Some(i) = labelled.iter().enumerate().position(|(i, &(s, e))| !used[i] && start < e && s < end) {
                used[i] = true;
                self.right += 1;
            }
        }
    }

    pub fn precision(&self) -> f64 {
        if self.found == 0 { 0.0 } else { self.right as f64 / self.found as f64 }
    }

    pub fn recall(&self) -> f64 {
        if self.labelled == 0 { 0.0 } else { self.right as f64 / self.labelled as f64 }
    }

    pub fn f2(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 5.0 * p * r / (4.0 * p + r) }
    }
}

/// The text with each finding replaced by `<ENTITY>`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in scan(text) {
        out.push_str(&text[at..f.start]);
        out.push('<');
        out.push_str(f.entity.name());
        out.push('>');
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(Entity, &str)> {
        scan(text).into_iter().map(|f| (f.entity, &text[f.start..f.end])).collect()
    }

    #[test]
    fn checksums_separate_real_numbers_from_look_alikes() {
        assert_eq!(kinds("card 4111 1111 1111 1111 please"), [(Entity::CreditCard, "4111 1111 1111 1111")]);
        assert!(kinds("order 4111 1111 1111 1112").iter().all(|(e, _)| *e != Entity::CreditCard), "fails Luhn");
        assert_eq!(kinds("pay to GB82 WEST 1234 5698 7654 32 today"), [(Entity::IbanCode, "GB82 WEST 1234 5698 7654 32")]);
        assert!(kinds("ref GB82WEST12345698765433").is_empty(), "fails mod 97");
        assert_eq!(kinds("server 192.168.1.20 is up"), [(Entity::IpAddress, "192.168.1.20")]);
        assert!(kinds("version 1.2.300.4").is_empty(), "300 is no octet");
    }

    #[test]
    fn context_words_raise_weak_patterns() {
        assert_eq!(kinds("My SSN is 123-45-6789."), [(Entity::UsSsn, "123-45-6789")]);
        assert_eq!(kinds("social security: 123456789"), [(Entity::UsSsn, "123456789")]);
        assert!(kinds("invoice 123456789").is_empty(), "nine digits alone are not an SSN");
        assert_eq!(kinds("call me on 555 014 2231"), [(Entity::PhoneNumber, "555 014 2231")]);
        assert_eq!(kinds("(602)272-9781"), [(Entity::PhoneNumber, "(602)272-9781")]);
    }

    /// `cargo test --release -p keel-guard throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    #[allow(clippy::print_stdout)]
    fn throughput() {
        // KEEL_PII_TEXT names a file to scan instead.
        let text = match std::env::var_os("KEEL_PII_TEXT") {
            Some(path) => std::fs::read_to_string(path).unwrap(),
            None => "Mobile: 0490 39 07 81, Desk: +447700 921 916, mail ada@example.org, see https://example.org/x. The quick brown fox jumps over the lazy dog 42 times in 2024. ".repeat(100_000),
        };
        let started = std::time::Instant::now();
        let n = scan(&text).len();
        println!("{n} findings, {:.1} MB/s", text.len() as f64 / 1e6 / started.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        let n = crate::names::Tagger::builtin().find(&text).len();
        println!("the name tagger alone: {n} names, {:.1} MB/s", text.len() as f64 / 1e6 / started.elapsed().as_secs_f64());
        for pattern in PATTERNS.iter() {
            let started = std::time::Instant::now();
            let n = pattern.regex.find_iter(&text).count();
            println!("{:?} {n} {:.1} MB/s", pattern.entity, text.len() as f64 / 1e6 / started.elapsed().as_secs_f64());
        }
    }

    #[test]
    fn text_in_any_script_is_scanned() {
        assert_eq!(kinds("Ζωή Λαμπράκη, τηλέφωνο: +30 210 123 4567"), [(Entity::Person, "Ζωή Λαμπράκη"), (Entity::PhoneNumber, "+30 210 123 4567")]);
    }

    #[test]
    fn emails_urls_and_secrets_are_found_and_redacted() {
        let text = "Write to ada@example.org, see https://example.org/docs. Key: sk-ant-REDACTEDxxxxxxxxxxxxxxxxxxxxxxxx";
        let redacted = redact(text);
        assert!(redacted.ends_with(" to <EMAIL_ADDRESS>, see <DOMAIN_NAME>. Key: <SECRET>") || redacted.ends_with(" to <EMAIL_ADDRESS>, see <DOMAIN_NAME>. <PERSON>: <SECRET>"), "{redacted}");
        assert_eq!(kinds("token=ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7d"), [(Entity::Secret, "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7d")]);
        assert_eq!(kinds("x Zk8QpL2vR9sT4wX7yB1nM6cF3hJ5gD0aE2 y").len(), 1, "a high-entropy token");
        assert!(kinds("the_quick_brown_fox_jumps_over_the_lazy_dog_again").is_empty());
    }

    #[test]
    fn names_after_titles_and_introductions_and_street_addresses() {
        assert_eq!(kinds("Please ask Dr. Amélie Durand-Roux about it."), [(Entity::Person, "Amélie Durand-Roux")]);
        assert_eq!(kinds("Hello, my name is Joaquín Ortega."), [(Entity::Person, "Joaquín Ortega")]);
        assert!(kinds("Please review the Quarterly Report before Monday.").is_empty(), "capitals that are no name");
        // Where no rule can tell, the tagger: names in a list, a name before its verb.
        assert_eq!(kinds("They had 3: Efimiya, Mariusz and Jodi."), [(Entity::Person, "Efimiya"), (Entity::Person, "Mariusz"), (Entity::Person, "Jodi")]);
        assert_eq!(kinds("Hanne I. Kreutzmann from Can Capital is the keynote speaker"), [(Entity::Person, "Hanne I. Kreutzmann")]);
        assert_eq!(kinds("Ship it to 221B Baker Street, London NW1 6XE please"), [(Entity::StreetAddress, "221B Baker Street")]);
        assert_eq!(kinds("She lives at 36 rue de Pologne, Apt. 4, Lyon 69003"), [(Entity::StreetAddress, "36 rue de Pologne, Apt. 4, Lyon 69003")]);
        assert_eq!(kinds("The office is at Hauptstraße 5, Berlin"), [(Entity::StreetAddress, "Hauptstraße 5")]);
        assert_eq!(kinds("It costs 25 dollars a street vendor would say"), []);
        assert_eq!(redact("Mr. Ito lives at 12 Elm Road"), "Mr. <PERSON> lives at <STREET_ADDRESS>");
    }
}
