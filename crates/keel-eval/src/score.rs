//! Scorers: promptfoo's assertion vocabulary (`type`, `value`, `threshold`, `weight`,
//! `metric`, a `not-` prefix on any type, `assert-set` groups) over one answer. The
//! deterministic ones are computed here, `similar` through an embedding model; the
//! model-graded ones and `command` are in [`crate::judge`].

use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{Answer, CallMade, Model};

/// One check of an answer, as an eval file writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assertion {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// A named metric the grade counts toward (means per metric in the summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The judge (a model alias, or `{id: ...}`) for model-graded types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Value>,
    /// `assert-set`: the assertions of the group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assert: Vec<Assertion>,
}

impl Assertion {
    pub fn weight(&self) -> f64 {
        self.weight.unwrap_or(1.0)
    }

    /// The type without its `not-` prefix, and whether it had one.
    pub fn base(&self) -> (&str, bool) {
        match self.kind.strip_prefix("not-") {
            Some(base) => (base, true),
            None => (self.kind.as_str(), false),
        }
    }
}

/// The types keel grades, `not-` forms aside.
pub const TYPES: &[&str] = &[
    "equals",
    "contains",
    "icontains",
    "contains-any",
    "contains-all",
    "icontains-any",
    "icontains-all",
    "starts-with",
    "regex",
    "is-json",
    "contains-json",
    "json-schema",
    "levenshtein",
    "rouge-n",
    "bleu",
    "is-refusal",
    "latency",
    "cost",
    "tool-call",
    "tool-call-f1",
    "trajectory",
    "similar",
    "llm-rubric",
    "factuality",
    "model-graded-closedqa",
    "answer-relevance",
    "context-faithfulness",
    "command",
    "assert-set",
];

/// Checks a type name up front, so a typo fails the eval before any model is called.
pub fn check(assertion: &Assertion) -> Result<(), crate::Error> {
    let (base, _) = assertion.base();
    if !TYPES.contains(&base) {
        let hint = match base {
            "javascript" | "python" | "webhook" => " (keel runs no embedded code: use `command` with a script that reads JSON on stdin)",
            _ => "",
        };
        return Err(crate::Error::Invalid(format!("unknown assertion type `{}`{hint}; keel knows {}", assertion.kind, TYPES.join(", "))));
    }
    if base == "assert-set" {
        assertion.assert.iter().try_for_each(check)?;
    }
    Ok(())
}

/// What a grade is computed over.
pub struct Case<'a> {
    pub answer: &'a Answer,
    pub vars: &'a Map<String, Value>,
    pub expected: Option<&'a Value>,
    /// The judge used when an assertion names none.
    pub judge: Option<&'a str>,
    pub model: &'a dyn Model,
}

/// One assertion's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    #[serde(rename = "type")]
    pub kind: String,
    pub pass: bool,
    pub score: f64,
    pub reason: String,
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
}

/// A test's outcome over its grades: promptfoo's rule. The score is the weighted mean of the
/// grades (weight 0 reports without counting); without a threshold every grade of non-zero
/// weight must pass, with one the score must reach it.
pub fn verdict(grades: &[Grade], threshold: Option<f64>) -> (bool, f64) {
    let total: f64 = grades.iter().map(|g| g.weight).sum();
    let score = if total > 0.0 { grades.iter().map(|g| g.score * g.weight).sum::<f64>() / total } else { 1.0 };
    let pass = match threshold {
        Some(threshold) => score >= threshold,
        None => grades.iter().filter(|g| g.weight > 0.0).all(|g| g.pass),
    };
    (pass, score)
}

/// Grades `assertion` on `case`. A scorer that cannot run (a bad regex, a judge that
/// failed) is a failed grade whose reason says why, not a crash of the eval.
pub async fn grade(assertion: &Assertion, case: &Case<'_>) -> Grade {
    let (base, negate) = assertion.base();
    let outcome = if base == "assert-set" {
        let mut grades = Vec::new();
        for inner in &assertion.assert {
            grades.push(Box::pin(grade(inner, case)).await);
        }
        let (pass, score) = verdict(&grades, assertion.threshold);
        let failed: Vec<&str> = grades.iter().filter(|g| !g.pass).map(|g| g.reason.as_str()).collect();
        Ok(Outcome { pass, score, reason: if failed.is_empty() { "all passed".into() } else { failed.join("; ") } })
    } else {
        score(base, assertion, case).await
    };
    let (pass, score, reason) = match outcome {
        Ok(o) if negate => (!o.pass, 1.0 - o.score, format!("not: {}", o.reason)),
        Ok(o) => (o.pass, o.score, o.reason),
        Err(reason) => (false, 0.0, reason),
    };
    Grade { kind: assertion.kind.clone(), pass, score, reason, weight: assertion.weight(), metric: assertion.metric.clone() }
}

pub(crate) struct Outcome {
    pub(crate) pass: bool,
    pub(crate) score: f64,
    pub(crate) reason: String,
}

impl Outcome {
    fn bool(pass: bool, yes: impl Into<String>, no: impl Into<String>) -> Result<Outcome, String> {
        Ok(Outcome { pass, score: if pass { 1.0 } else { 0.0 }, reason: if pass { yes.into() } else { no.into() } })
    }

    fn at_least(score: f64, threshold: f64, what: &str) -> Result<Outcome, String> {
        let pass = score >= threshold;
        let cmp = if pass { "≥" } else { "<" };
        Ok(Outcome { pass, score, reason: format!("{what} {score:.3} {cmp} {threshold}") })
    }
}

/// The assertion's value with `{{ var }}` rendered from the case's variables (and
/// `expected`), as promptfoo renders them.
fn rendered(assertion: &Assertion, case: &Case<'_>) -> Option<Value> {
    let value = assertion.value.clone()?;
    Some(render_value(value, case))
}

fn render_value(value: Value, case: &Case<'_>) -> Value {
    match value {
        Value::String(text) if text.contains("{{") || text.contains("{%") => {
            let mut context = case.vars.clone();
            if let Some(expected) = case.expected {
                context.entry("expected").or_insert(expected.clone());
            }
            let env = minijinja::Environment::new();
            Value::String(env.render_str(&text, Value::Object(context)).unwrap_or(text))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| render_value(v, case)).collect()),
        other => other,
    }
}

fn text_value(value: Option<Value>, kind: &str) -> Result<String, String> {
    match value {
        Some(Value::String(text)) => Ok(text),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(other) => Ok(other.to_string()),
        None => Err(format!("`{kind}` needs a `value`")),
    }
}

/// A list value: a YAML/JSON list, or a comma-separated text.
fn list_value(value: Option<Value>, kind: &str) -> Result<Vec<String>, String> {
    match value {
        Some(Value::Array(items)) => Ok(items.into_iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect()),
        Some(Value::String(text)) => Ok(text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()),
        _ => Err(format!("`{kind}` needs a list `value`")),
    }
}

async fn score(kind: &str, assertion: &Assertion, case: &Case<'_>) -> Result<Outcome, String> {
    let output = case.answer.text.as_str();
    let value = rendered(assertion, case);
    match kind {
        "equals" => match value {
            Some(expected @ (Value::Object(_) | Value::Array(_))) => {
                let parsed: Option<Value> = serde_json::from_str(output.trim()).ok();
                Outcome::bool(parsed.as_ref() == Some(&expected), "the JSON is equal", format!("expected JSON {expected}"))
            }
            value => {
                let expected = text_value(value, kind)?;
                Outcome::bool(output == expected, "equal", format!("expected {expected:?}, got {:?}", clip(output)))
            }
        },
        "contains" | "icontains" | "starts-with" => {
            let needle = text_value(value, kind)?;
            let found = match kind {
                "contains" => output.contains(&needle),
                "icontains" => output.to_lowercase().contains(&needle.to_lowercase()),
                _ => output.starts_with(&needle),
            };
            let verb = if kind == "starts-with" { "starts with" } else { "contains" };
            Outcome::bool(found, format!("{verb} {needle:?}"), format!("does not {} {needle:?}", verb.replace("starts", "start").replace("contains", "contain")))
        }
        "contains-any" | "contains-all" | "icontains-any" | "icontains-all" => {
            let items = list_value(value, kind)?;
            let insensitive = kind.starts_with('i');
            let haystack = if insensitive { output.to_lowercase() } else { output.to_string() };
            let has = |item: &String| haystack.contains(&if insensitive { item.to_lowercase() } else { item.clone() });
            let missing: Vec<&String> = items.iter().filter(|i| !has(i)).collect();
            if kind.ends_with("-any") {
                Outcome::bool(missing.len() < items.len(), "contains one of them", format!("contains none of {items:?}"))
            } else {
                Outcome::bool(missing.is_empty(), "contains them all", format!("lacks {missing:?}"))
            }
        }
        "regex" => {
            let pattern = text_value(value, kind)?;
            let re = Regex::new(&pattern).map_err(|e| format!("`regex`: {e}"))?;
            Outcome::bool(re.is_match(output), format!("matches /{pattern}/"), format!("does not match /{pattern}/"))
        }
        "is-json" | "json-schema" => {
            let parsed: Value = match serde_json::from_str(output.trim()) {
                Ok(parsed) => parsed,
                Err(e) => return Outcome::bool(false, "", format!("not JSON: {e}")),
            };
            json_against(&parsed, schema_value(value, kind == "json-schema")?)
        }
        "contains-json" => match first_json(output) {
            Some(found) => json_against(&found, schema_value(value, false)?),
            None => Outcome::bool(false, "", "holds no JSON object or array"),
        },
        "levenshtein" => {
            let expected = text_value(value, kind)?;
            let distance = levenshtein(output, &expected);
            let max = assertion.threshold.unwrap_or(5.0);
            let longest = output.chars().count().max(expected.chars().count()).max(1) as f64;
            Ok(Outcome {
                pass: distance as f64 <= max,
                score: 1.0 - distance as f64 / longest,
                reason: format!("edit distance {distance} {} {max}", if distance as f64 <= max { "≤" } else { ">" }),
            })
        }
        "rouge-n" => Outcome::at_least(rouge1(output, &text_value(value, kind)?), assertion.threshold.unwrap_or(0.75), "ROUGE-1 F1"),
        "bleu" => {
            let references = match value {
                Some(Value::Array(_)) => list_value(value, kind)?,
                other => vec![text_value(other, kind)?],
            };
            Outcome::at_least(bleu(output, &references), assertion.threshold.unwrap_or(0.5), "BLEU-4")
        }
        "is-refusal" => {
            let refused = is_refusal(output);
            Outcome::bool(refused, "the answer refuses", "the answer does not refuse")
        }
        "latency" => {
            let max = assertion.threshold.ok_or("`latency` needs a `threshold` in milliseconds")?;
            let ms = case.answer.latency_ms;
            Outcome::bool(ms <= max, format!("{ms:.0} ms ≤ {max} ms"), format!("{ms:.0} ms > {max} ms"))
        }
        "cost" => {
            let max = assertion.threshold.ok_or("`cost` needs a `threshold` in dollars")?;
            let Some(cost) = case.answer.cost_usd else { return Outcome::bool(false, "", "the model has no price, so its cost is unknown") };
            Outcome::bool(cost <= max, format!("${cost:.6} ≤ ${max}"), format!("${cost:.6} > ${max}"))
        }
        "tool-call" | "tool-call-f1" => tool_calls(value, &case.answer.tool_calls, assertion.threshold.unwrap_or(1.0)),
        "trajectory" => trajectory(value, &case.answer.tool_calls),
        "similar" => {
            let expected = text_value(value, kind)?;
            // The embedding model: the assertion's `provider`, else keel's local one (the
            // eval's judge is a chat model, not an embedder).
            let alias = crate::judge::named_provider(assertion)?.unwrap_or_else(|| "local-embed".into());
            let texts = [output.to_string(), expected];
            let vectors = case.model.embed(&alias, &texts).await.map_err(|e| format!("`similar` through `{alias}`: {e}"))?;
            let [a, b] = vectors.as_slice() else { return Err(format!("`similar`: `{alias}` returned {} vectors for 2 texts", vectors.len())) };
            Outcome::at_least(cosine(a, b), assertion.threshold.unwrap_or(0.75), "cosine similarity")
        }
        "llm-rubric" | "factuality" | "model-graded-closedqa" | "answer-relevance" | "context-faithfulness" => {
            crate::judge::judged(kind, assertion, value, case).await
        }
        "command" => crate::judge::command(value, case).await,
        _ => Err(format!("unknown assertion type `{kind}`")),
    }
}

pub(crate) fn clip(text: &str) -> String {
    if text.chars().count() <= 80 { text.to_string() } else { format!("{}…", text.chars().take(80).collect::<String>()) }
}

/// A schema from the value: inline JSON/YAML, or a JSON text. `required` for `json-schema`.
fn schema_value(value: Option<Value>, required: bool) -> Result<Option<Value>, String> {
    match value {
        None if required => Err("`json-schema` needs the schema as its `value`".into()),
        None => Ok(None),
        Some(Value::String(text)) => serde_json::from_str(&text).map(Some).map_err(|e| format!("the schema is not JSON: {e}")),
        Some(schema) => Ok(Some(schema)),
    }
}

fn json_against(value: &Value, schema: Option<Value>) -> Result<Outcome, String> {
    match schema {
        None => Outcome::bool(true, "valid JSON", ""),
        Some(schema) => match keel_core::schema::validate(&schema, value) {
            Ok(()) => Outcome::bool(true, "valid JSON that matches the schema", ""),
            Err(e) => Outcome::bool(false, "", format!("the JSON does not match the schema: {e}")),
        },
    }
}

/// The first JSON object or array inside a text (a fenced block or prose around it).
pub(crate) fn first_json(text: &str) -> Option<Value> {
    for (start, c) in text.char_indices() {
        if c != '{' && c != '[' {
            continue;
        }
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(value)) = stream.next() {
            return Some(value);
        }
    }
    None
}

pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// ROUGE-1 F1 over lower-cased words.
pub fn rouge1(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (words(candidate), words(reference));
    let (cc, rc) = (ngram_counts(&c, 1), ngram_counts(&r, 1));
    let overlap: usize = cc.iter().map(|(g, n)| (*n).min(rc.get(g).copied().unwrap_or(0))).sum();
    if overlap == 0 {
        return 0.0;
    }
    let (p, rec) = (overlap as f64 / c.len() as f64, overlap as f64 / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

/// Sentence BLEU-4 (uniform weights, brevity penalty, add-one smoothing of the higher
/// orders) against one or more references.
pub fn bleu(candidate: &str, references: &[String]) -> f64 {
    let c = words(candidate);
    let refs: Vec<Vec<String>> = references.iter().map(|r| words(r)).collect();
    if c.is_empty() || refs.is_empty() {
        return 0.0;
    }
    let mut log_sum = 0.0;
    for n in 1..=4 {
        let counts = ngram_counts(&c, n);
        let total: usize = counts.values().sum();
        let mut clipped = 0;
        for (gram, count) in &counts {
            let most = refs.iter().map(|r| ngram_counts(r, n).get(gram).copied().unwrap_or(0)).max().unwrap_or(0);
            clipped += (*count).min(most);
        }
        let precision = if n == 1 {
            if clipped == 0 {
                return 0.0;
            }
            clipped as f64 / total as f64
        } else {
            (clipped as f64 + 1.0) / (total as f64 + 1.0)
        };
        log_sum += precision.ln() / 4.0;
    }
    let closest = refs.iter().map(Vec::len).min_by_key(|len| (len.abs_diff(c.len()), *len)).unwrap_or(0);
    let brevity = if c.len() >= closest { 1.0 } else { (1.0 - closest as f64 / c.len() as f64).exp() };
    brevity * log_sum.exp()
}

/// Whether an answer declines (the phrases models use to refuse), or is empty.
pub fn is_refusal(text: &str) -> bool {
    const PHRASES: &[&str] = &[
        "i can't help",
        "i cannot help",
        "i can't assist",
        "i cannot assist",
        "i can't provide",
        "i cannot provide",
        "i'm unable to",
        "i am unable to",
        "i won't",
        "i will not",
        "i'm not able to",
        "i am not able to",
        "i must decline",
        "i can't do that",
        "i cannot do that",
        "as an ai",
        "i'm sorry, but",
        "i apologize, but",
        "against my guidelines",
        "i'm not comfortable",
    ];
    let lower = text.trim().to_lowercase().replace('’', "'");
    lower.is_empty() || PHRASES.iter().any(|p| lower.contains(p))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 { 0.0 } else { dot / denominator }
}

/// Expected calls as the value gives them: a name, a list of names, `{name, arguments}` or
/// a list of those. Arguments given must match (as JSON, a subset: every key given equal).
fn expected_calls(value: Option<Value>) -> Result<Vec<(String, Option<Value>)>, String> {
    let one = |v: Value| -> Result<(String, Option<Value>), String> {
        match v {
            Value::String(name) => Ok((name, None)),
            Value::Object(mut o) => {
                let name = o.remove("name").and_then(|n| n.as_str().map(str::to_string)).ok_or("a tool call needs a `name`")?;
                let args = match o.remove("arguments") {
                    Some(Value::String(text)) => Some(serde_json::from_str(&text).map_err(|e| format!("arguments of `{name}`: {e}"))?),
                    other => other,
                };
                Ok((name, args))
            }
            other => Err(format!("a tool call is a name or {{name, arguments}}, not {other}")),
        }
    };
    match value {
        Some(Value::Array(items)) => items.into_iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
        None => Err("`tool-call` needs the expected calls as its `value`".into()),
    }
}

fn args_match(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| args_match(v, av))),
        _ => expected == actual,
    }
}

/// F1 over calls: a made call counts once against the first unmatched expected call with its
/// name and matching arguments.
fn tool_calls(value: Option<Value>, made: &[CallMade], threshold: f64) -> Result<Outcome, String> {
    let expected = expected_calls(value)?;
    let mut used = vec![false; made.len()];
    let mut hits = 0;
    for (name, args) in &expected {
        let found = made.iter().enumerate().position(|(idx, call)| {
            !used[idx] && call.name == *name && args.as_ref().is_none_or(|want| args_match(want, &call.arguments))
        });
        if let Some(idx) = found {
            used[idx] = true;
            hits += 1;
        }
    }
    let precision = if made.is_empty() { 0.0 } else { hits as f64 / made.len() as f64 };
    let recall = if expected.is_empty() { 1.0 } else { hits as f64 / expected.len() as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    let names: Vec<&str> = made.iter().map(|c| c.name.as_str()).collect();
    Ok(Outcome { pass: f1 >= threshold, score: f1, reason: format!("tool-call F1 {f1:.2} (made {names:?}, {hits} of {} expected)", expected.len()) })
}

/// An agent's path: `{tools: [...]}` used (any order), `sequence: [...]` (in this order,
/// others allowed between), `max_steps`, `min_steps`.
fn trajectory(value: Option<Value>, made: &[CallMade]) -> Result<Outcome, String> {
    let Some(Value::Object(spec)) = value else { return Err("`trajectory` needs {tools, sequence, max_steps, min_steps}".into()) };
    let names: Vec<&str> = made.iter().map(|c| c.name.as_str()).collect();
    let mut problems = Vec::new();
    let strings = |key: &str| -> Vec<String> {
        spec.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let used: HashSet<&str> = names.iter().copied().collect();
    for tool in strings("tools") {
        if !used.contains(tool.as_str()) {
            problems.push(format!("`{tool}` was not used"));
        }
    }
    let sequence = strings("sequence");
    let mut at = 0;
    for name in &names {
        if at < sequence.len() && *name == sequence[at] {
            at += 1;
        }
    }
    if at < sequence.len() {
        problems.push(format!("the calls {names:?} do not follow {sequence:?}"));
    }
    if let Some(max) = spec.get("max_steps").and_then(Value::as_u64).filter(|max| names.len() as u64 > *max) {
        problems.push(format!("{} steps > {max}", names.len()));
    }
    if let Some(min) = spec.get("min_steps").and_then(Value::as_u64).filter(|min| (names.len() as u64) < *min) {
        problems.push(format!("{} steps < {min}", names.len()));
    }
    Outcome::bool(problems.is_empty(), format!("the path {names:?} fits"), problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use crate::model::tests::Scripted;

    fn answer(text: &str) -> Answer {
        Answer { text: text.into(), latency_ms: 120.0, cost_usd: Some(0.002), ..Answer::default() }
    }

    async fn run(kind: &str, value: Value, text: &str) -> Grade {
        let assertion: Assertion = serde_json::from_value(json!({"type": kind, "value": value})).unwrap();
        check(&assertion).unwrap();
        let answer = answer(text);
        let vars = json!({"name": "Ada"}).as_object().unwrap().clone();
        let model = Scripted::default();
        grade(&assertion, &Case { answer: &answer, vars: &vars, expected: None, judge: None, model: &model }).await
    }

    #[tokio::test]
    async fn deterministic_scorers_pass_and_fail_as_their_names_say() {
        let cases: Vec<(&str, Value, &str, bool)> = vec![
            ("equals", json!("hi"), "hi", true),
            ("equals", json!("hi"), "hi!", false),
            ("equals", json!({"a": 1}), " {\"a\": 1} ", true),
            ("contains", json!("{{ name }}"), "Hello Ada", true),
            ("icontains", json!("ADA"), "hello ada", true),
            ("not-contains", json!("Bob"), "Hello Ada", true),
            ("not-contains", json!("Ada"), "Hello Ada", false),
            ("contains-any", json!(["x", "Ada"]), "Hello Ada", true),
            ("contains-all", "Hello, Bob".into(), "Hello Ada", false),
            ("icontains-all", json!(["hello", "ada"]), "HELLO ADA", true),
            ("starts-with", json!("Hel"), "Hello", true),
            ("regex", json!("^\\d{3}-\\d{4}$"), "555-1234", true),
            ("regex", json!("^\\d+$"), "12a", false),
            ("is-json", Value::Null, "{\"a\": [1, 2]}", true),
            ("is-json", Value::Null, "{\"a\": ", false),
            ("is-json", json!({"type": "object", "required": ["b"]}), "{\"a\": 1}", false),
            ("contains-json", Value::Null, "Sure: ```json\n{\"ok\": true}\n``` done", true),
            ("contains-json", Value::Null, "no json here", false),
            ("json-schema", json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}), "{\"n\": 2}", true),
            ("json-schema", json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}), "{\"n\": 9}", false),
            ("levenshtein", json!("kitten"), "sitting", true),
            ("rouge-n", json!("the cat sat on the mat"), "the cat sat on a mat", true),
            ("rouge-n", json!("the cat sat on the mat"), "dogs run fast", false),
            ("bleu", json!("the quick brown fox jumps over the lazy dog"), "the quick brown fox jumps over the lazy dog", true),
            ("bleu", json!("the quick brown fox jumps over the lazy dog"), "a slow green turtle", false),
            ("is-refusal", Value::Null, "I'm sorry, but I can't help with that.", true),
            ("is-refusal", Value::Null, "Paris is the capital of France.", false),
            ("not-is-refusal", Value::Null, "Paris.", true),
        ];
        for (kind, value, text, pass) in cases {
            let value = if value.is_null() { None } else { Some(value) };
            let assertion = Assertion { kind: kind.into(), value, threshold: None, weight: None, metric: None, provider: None, assert: vec![] };
            let answer = answer(text);
            let vars = json!({"name": "Ada"}).as_object().unwrap().clone();
            let model = Scripted::default();
            let grade = grade(&assertion, &Case { answer: &answer, vars: &vars, expected: None, judge: None, model: &model }).await;
            assert_eq!(grade.pass, pass, "{kind} on {text:?}: {grade:?}");
        }
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        let bad = run("regex", json!("("), "x").await;
        assert!(!bad.pass && bad.reason.contains("regex"), "{bad:?}");
    }

    #[tokio::test]
    async fn latency_cost_and_tool_calls_are_graded() {
        let mut a = answer("");
        a.tool_calls = vec![
            CallMade { name: "search".into(), arguments: json!({"q": "tea", "limit": 3}) },
            CallMade { name: "open".into(), arguments: json!({"id": 7}) },
        ];
        let vars = Map::new();
        let model = Scripted::default();
        let case = Case { answer: &a, vars: &vars, expected: None, judge: None, model: &model };
        let g = |v: Value| serde_json::from_value::<Assertion>(v).unwrap();
        assert!(grade(&g(json!({"type": "latency", "threshold": 200})), &case).await.pass);
        assert!(!grade(&g(json!({"type": "cost", "threshold": 0.001})), &case).await.pass);
        let exact = grade(&g(json!({"type": "tool-call", "value": [{"name": "search", "arguments": {"q": "tea"}}, "open"]})), &case).await;
        assert!(exact.pass && exact.score == 1.0, "{exact:?}");
        let half = grade(&g(json!({"type": "tool-call-f1", "value": ["search"], "threshold": 0.5})), &case).await;
        assert!(half.pass && (half.score - 2.0 / 3.0).abs() < 1e-9, "{half:?}");
        let wrong = grade(&g(json!({"type": "tool-call", "value": {"name": "search", "arguments": {"q": "coffee"}}})), &case).await;
        assert!(!wrong.pass, "{wrong:?}");
        assert!(grade(&g(json!({"type": "trajectory", "value": {"sequence": ["search", "open"], "max_steps": 2}})), &case).await.pass);
        assert!(!grade(&g(json!({"type": "trajectory", "value": {"sequence": ["open", "search"]}})), &case).await.pass);
        // assert-set: a group graded as one, with its own threshold.
        let set = json!({"type": "assert-set", "threshold": 0.5, "assert": [
            {"type": "tool-call", "value": ["search", "open"]}, {"type": "tool-call", "value": ["delete"]}
        ]});
        let graded = grade(&g(set.clone()), &case).await;
        assert!(graded.pass && (graded.score - 0.5).abs() < 1e-9, "{graded:?}");
        let mut strict = set;
        strict["threshold"] = json!(0.9);
        assert!(!grade(&g(strict), &case).await.pass);
    }

    #[test]
    fn verdicts_follow_promptfoo_weights_and_thresholds() {
        let g = |pass: bool, weight: f64| Grade { kind: "x".into(), pass, score: if pass { 1.0 } else { 0.0 }, reason: String::new(), weight, metric: None };
        assert_eq!(verdict(&[g(true, 1.0), g(false, 1.0)], None), (false, 0.5));
        assert_eq!(verdict(&[g(true, 3.0), g(false, 1.0)], Some(0.7)), (true, 0.75));
        assert_eq!(verdict(&[g(true, 1.0), g(false, 0.0)], None), (true, 1.0));
        let unknown = Assertion { kind: "javascript".into(), value: None, threshold: None, weight: None, metric: None, provider: None, assert: vec![] };
        assert!(check(&unknown).unwrap_err().to_string().contains("command"));
    }
}
