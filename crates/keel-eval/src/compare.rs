//! Comparing two eval runs, the CI gate: cases paired by what they ran (the same prompt slot,
//! target slot, variables and repeat), per-case regressions and improvements, each metric's
//! mean difference with a paired bootstrap 95% interval (a drop is significant only when the
//! whole interval is below zero), and a pairwise judge that reads both answers in both orders
//! and counts a win only when the two orders agree (MT-Bench's fix for position bias).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use keel_store::EvalResult;

use crate::model::Model;
use crate::score::Grade;

/// One side of a comparison: a run's results, optionally only one target's.
pub struct Side<'a> {
    pub results: &'a [EvalResult],
    pub target: Option<&'a str>,
}

/// A pair of cells that ran the same case.
#[derive(Debug, Clone)]
pub struct Pair<'a> {
    pub a: &'a EvalResult,
    pub b: &'a EvalResult,
}

/// The slot of a cell: (prompt index, target index, repeat) from its key.
fn slots(cell: &str) -> (String, String, String) {
    let mut parts = cell.split('|');
    let prompt = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let _row = parts.next();
    let repeat = parts.next().unwrap_or_default().to_string();
    (prompt, target, repeat)
}

/// Pairs the two sides' finished cells (errors left out) by prompt slot, target slot (unless
/// a side names its target), variables and repeat.
pub fn pair<'a>(a: &Side<'a>, b: &Side<'a>) -> Vec<Pair<'a>> {
    let by_target = a.target.is_none() && b.target.is_none();
    let key = |r: &EvalResult| {
        let (prompt, target, repeat) = slots(&r.cell);
        (prompt, if by_target { target } else { String::new() }, r.vars.clone(), repeat)
    };
    let keep = |side: &Side<'a>, r: &EvalResult| r.error.is_none() && side.target.is_none_or(|t| r.target == t);
    let mut index: BTreeMap<_, &EvalResult> = BTreeMap::new();
    for r in a.results.iter().filter(|r| keep(a, r)) {
        index.entry(key(r)).or_insert(r);
    }
    b.results.iter().filter(|r| keep(b, r)).filter_map(|rb| index.get(&key(rb)).map(|ra| Pair { a: ra, b: rb })).collect()
}

/// A metric's paired difference B − A.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub metric: String,
    pub pairs: usize,
    pub mean_a: f64,
    pub mean_b: f64,
    pub diff: f64,
    /// The paired bootstrap's 95% interval of `diff`.
    pub low: f64,
    pub high: f64,
}

impl Delta {
    /// A drop whose whole 95% interval is below zero.
    pub fn significant_drop(&self) -> bool {
        self.high < 0.0
    }

    pub fn significant_gain(&self) -> bool {
        self.low > 0.0
    }
}

/// A case that changed verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub prompt: String,
    pub target: String,
    pub vars: Value,
    pub score_a: f64,
    pub score_b: f64,
    pub output_a: Option<String>,
    pub output_b: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub pairs: usize,
    pub regressions: Vec<Change>,
    pub improvements: Vec<Change>,
    /// `pass` (the pass rate), `score`, then each named metric and assertion type.
    pub deltas: Vec<Delta>,
}

impl Comparison {
    pub fn significant_drops(&self) -> Vec<&Delta> {
        self.deltas.iter().filter(|d| d.significant_drop()).collect()
    }
}

/// The mean of paired differences and its percentile bootstrap 95% interval over `rounds`
/// resamples of the pairs (seeded: the same data gives the same interval).
pub fn paired_bootstrap(diffs: &[f64], rounds: usize, seed: u64) -> (f64, f64, f64) {
    if diffs.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let n = diffs.len();
    let mean = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut means: Vec<f64> = (0..rounds).map(|_| (0..n).map(|_| diffs[rng.usize(..n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (rounds - 1) as f64).round() as usize).min(rounds - 1)];
    (mean, at(0.025), at(0.975))
}

fn grades(r: &EvalResult) -> Vec<Grade> {
    serde_json::from_str(&r.grades).unwrap_or_default()
}

/// Compares run B against baseline A over their paired cases.
pub fn compare(pairs: &[Pair<'_>]) -> Comparison {
    let mut out = Comparison { pairs: pairs.len(), ..Comparison::default() };
    let change = |p: &Pair<'_>| Change {
        prompt: p.b.prompt.clone(),
        target: p.b.target.clone(),
        vars: serde_json::from_str(&p.b.vars).unwrap_or(Value::Null),
        score_a: p.a.score,
        score_b: p.b.score,
        output_a: p.a.output.clone(),
        output_b: p.b.output.clone(),
    };
    for p in pairs {
        match (p.a.pass, p.b.pass) {
            (true, false) => out.regressions.push(change(p)),
            (false, true) => out.improvements.push(change(p)),
            _ => {}
        }
    }
    // Per metric: (a, b) values of the pairs that have it on both sides.
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    series.insert("pass".into(), pairs.iter().map(|p| (f64::from(u8::from(p.a.pass)), f64::from(u8::from(p.b.pass)))).collect());
    series.insert("score".into(), pairs.iter().map(|p| (p.a.score, p.b.score)).collect());
    for p in pairs {
        let mean_by = |r: &EvalResult| {
            let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            for g in grades(r) {
                let name = g.metric.clone().unwrap_or_else(|| g.kind.clone());
                let entry = sums.entry(name).or_default();
                entry.0 += g.score;
                entry.1 += 1;
            }
            sums.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect::<BTreeMap<_, _>>()
        };
        let (ga, gb) = (mean_by(p.a), mean_by(p.b));
        for (name, a) in &ga {
            if let Some(b) = gb.get(name) {
                series.entry(name.clone()).or_default().push((*a, *b));
            }
        }
    }
    for (idx, (metric, values)) in series.into_iter().enumerate() {
        if values.is_empty() {
            continue;
        }
        let n = values.len() as f64;
        let diffs: Vec<f64> = values.iter().map(|(a, b)| b - a).collect();
        let (diff, low, high) = paired_bootstrap(&diffs, 2000, 0x6b65_656c + idx as u64);
        out.deltas.push(Delta {
            metric,
            pairs: values.len(),
            mean_a: values.iter().map(|v| v.0).sum::<f64>() / n,
            mean_b: values.iter().map(|v| v.1).sum::<f64>() / n,
            diff,
            low,
            high,
        });
    }
    out
}

/// Who a pairwise judge preferred for one case, over both orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    A,
    B,
    Tie,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pairwise {
    pub judges: Vec<String>,
    pub pairs: usize,
    pub wins_a: usize,
    pub wins_b: usize,
    pub ties: usize,
    /// Cases where a judge's choice followed the position, not the answer (it picked the
    /// first answer in both orders, or the second in both).
    pub position_flips: usize,
    /// Judge calls that failed or answered out of schema (counted as ties).
    pub errors: usize,
    pub cases: Vec<PairVerdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairVerdict {
    pub vars: Value,
    pub preference: Preference,
    /// Each judge's verdict for (A first, B first): `first`, `second` or `tie`.
    pub votes: Vec<(String, String, String)>,
}

/// The schema a pairwise judge answers in.
pub fn pairwise_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "winner": {"type": "string", "enum": ["first", "second", "tie"]},
            "reason": {"type": "string"}
        },
        "required": ["winner", "reason"],
        "additionalProperties": false
    })
}

async fn ask_pairwise(model: &dyn Model, judge: &str, question: &str, rubric: &str, first: &str, second: &str) -> Option<String> {
    let system = format!(
        "You compare two answers to the same request and say which is better{}. Judge the content, not the order they are shown in or their length. Answer only with JSON: {{\"winner\": \"first\", \"second\" or \"tie\", \"reason\": one sentence}}.",
        if rubric.is_empty() { String::new() } else { format!(" by this rubric: {rubric}") }
    );
    let user = format!("Request:\n{question}\n\n<first>\n{first}\n</first>\n\n<second>\n{second}\n</second>");
    let body = json!({
        "model": judge,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "preference", "schema": pairwise_schema(), "strict": true}},
    });
    let answer = model.chat(&body).await.ok()?;
    let value: Value = serde_json::from_str(answer.text.trim()).ok()?;
    value.get("winner").and_then(Value::as_str).filter(|w| ["first", "second", "tie"].contains(w)).map(str::to_string)
}

/// One case judged by a panel in both orders.
pub struct Judged {
    pub preference: Preference,
    pub votes: Vec<(String, String, String)>,
    pub flips: usize,
    pub errors: usize,
}

/// Asks each judge about (a, b) and (b, a); a judge votes for A or B only when its two
/// verdicts agree on the answer, and the panel's majority decides (a tie otherwise).
pub async fn judge_pair(model: &dyn Model, judges: &[String], rubric: &str, question: &str, a: &str, b: &str) -> Judged {
    let (mut for_a, mut for_b) = (0, 0);
    let mut judged = Judged { preference: Preference::Tie, votes: Vec::new(), flips: 0, errors: 0 };
    for judge in judges {
        let ab = ask_pairwise(model, judge, question, rubric, a, b).await;
        let ba = ask_pairwise(model, judge, question, rubric, b, a).await;
        let (Some(ab), Some(ba)) = (ab, ba) else {
            judged.errors += 1;
            judged.votes.push((judge.clone(), "error".into(), "error".into()));
            continue;
        };
        match (ab.as_str(), ba.as_str()) {
            ("first", "second") => for_a += 1,
            ("second", "first") => for_b += 1,
            ("first", "first") | ("second", "second") => judged.flips += 1,
            _ => {}
        }
        judged.votes.push((judge.clone(), ab, ba));
    }
    judged.preference = if for_a > for_b && for_a * 2 > judges.len() {
        Preference::A
    } else if for_b > for_a && for_b * 2 > judges.len() {
        Preference::B
    } else {
        Preference::Tie
    };
    judged
}

/// The question a case asked, from its variables.
fn question_of(vars: &Value) -> String {
    match vars {
        Value::Object(map) => ["question", "query", "input", "prompt"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| vars.to_string()),
        other => other.to_string(),
    }
}

/// Judges every pair of two runs' answers (A the baseline, B the candidate).
pub async fn pairwise(model: &dyn Model, judges: &[String], rubric: &str, pairs: &[Pair<'_>]) -> Pairwise {
    let mut out = Pairwise { judges: judges.to_vec(), pairs: pairs.len(), ..Pairwise::default() };
    for p in pairs {
        let vars: Value = serde_json::from_str(&p.a.vars).unwrap_or(Value::Null);
        let (a, b) = (p.a.output.as_deref().unwrap_or(""), p.b.output.as_deref().unwrap_or(""));
        let judged = judge_pair(model, judges, rubric, &question_of(&vars), a, b).await;
        out.position_flips += judged.flips;
        out.errors += judged.errors;
        match judged.preference {
            Preference::A => out.wins_a += 1,
            Preference::B => out.wins_b += 1,
            Preference::Tie => out.ties += 1,
        }
        out.cases.push(PairVerdict { vars, preference: judged.preference, votes: judged.votes });
    }
    out
}

/// A human-labelled pair for `judge-check`: which answer a person preferred.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelledPair {
    #[serde(default)]
    pub question: String,
    #[serde(alias = "first")]
    pub a: String,
    #[serde(alias = "second")]
    pub b: String,
    pub human: Preference,
}

/// How far a judge can be trusted, measured on human-labelled pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeCheck {
    pub judges: Vec<String>,
    pub cases: usize,
    /// Agreement with the humans on the pairs where both the humans and the judge chose a
    /// side (MT-Bench's "without tie" agreement).
    pub agreement_non_tie: f64,
    pub non_tie_cases: usize,
    /// Agreement over every case, ties included.
    pub agreement: f64,
    /// Share of judge calls pairs whose verdict followed the position, not the answer.
    pub position_flip_rate: f64,
    pub errors: usize,
}

/// Runs the judge panel over `cases` in both orders and measures it against the humans.
pub async fn judge_check(model: &dyn Model, judges: &[String], rubric: &str, cases: &[LabelledPair]) -> JudgeCheck {
    let mut out = JudgeCheck { judges: judges.to_vec(), cases: cases.len(), ..JudgeCheck::default() };
    let (mut agree, mut agree_non_tie, mut flips) = (0, 0, 0);
    for case in cases {
        let judged = judge_pair(model, judges, rubric, &case.question, &case.a, &case.b).await;
        flips += judged.flips;
        out.errors += judged.errors;
        agree += usize::from(judged.preference == case.human);
        if judged.preference != Preference::Tie && case.human != Preference::Tie {
            out.non_tie_cases += 1;
            agree_non_tie += usize::from(judged.preference == case.human);
        }
    }
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    out.agreement = share(agree, cases.len());
    out.agreement_non_tie = share(agree_non_tie, out.non_tie_cases);
    out.position_flip_rate = share(flips, cases.len() * judges.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::Scripted;

    fn result(cell: &str, vars: &str, pass: bool, score: f64, output: &str) -> EvalResult {
        EvalResult {
            cell: cell.into(),
            prompt: "p".into(),
            target: "t".into(),
            vars: vars.into(),
            pass,
            score,
            output: Some(output.into()),
            grades: serde_json::to_string(&[Grade { kind: "contains".into(), pass, score, reason: String::new(), weight: 1.0, metric: None }]).unwrap(),
            ..EvalResult::default()
        }
    }

    #[test]
    fn a_known_regression_is_significant_and_noise_is_not() {
        // 40 cases; B fails 12 that A passed and fixes none.
        let a: Vec<EvalResult> = (0..40).map(|i| result(&format!("0|0|{i}|0"), &format!("{{\"i\":{i}}}"), true, 1.0, "x")).collect();
        let b: Vec<EvalResult> = (0..40).map(|i| result(&format!("0|0|{}|0", 39 - i), &format!("{{\"i\":{i}}}"), i >= 12, if i >= 12 { 1.0 } else { 0.0 }, "y")).collect();
        let pairs = pair(&Side { results: &a, target: None }, &Side { results: &b, target: None });
        assert_eq!(pairs.len(), 40, "paired by variables, not by row position");
        let cmp = compare(&pairs);
        assert_eq!((cmp.regressions.len(), cmp.improvements.len()), (12, 0));
        let pass = cmp.deltas.iter().find(|d| d.metric == "pass").unwrap();
        assert!((pass.diff + 0.3).abs() < 1e-9 && pass.significant_drop(), "{pass:?}");
        assert!(cmp.deltas.iter().any(|d| d.metric == "contains" && d.significant_drop()));
        // One flip each way out of 40: a difference of zero, not significant.
        let c: Vec<EvalResult> = (0..40).map(|i| result(&format!("0|0|{i}|0"), &format!("{{\"i\":{i}}}"), i != 3, 1.0, "z")).collect();
        let mut d = c.clone();
        d[3].pass = true;
        d[5].pass = false;
        let cmp = compare(&pair(&Side { results: &c, target: None }, &Side { results: &d, target: None }));
        assert!(cmp.significant_drops().is_empty(), "{:?}", cmp.deltas);
        assert_eq!((cmp.regressions.len(), cmp.improvements.len()), (1, 1));
    }

    #[test]
    fn the_bootstrap_interval_is_seeded_and_brackets_the_mean() {
        let diffs: Vec<f64> = (0..50).map(|i| if i % 5 == 0 { -1.0 } else { 0.0 }).collect();
        let (mean, low, high) = paired_bootstrap(&diffs, 2000, 7);
        assert!((mean + 0.2).abs() < 1e-9 && low < mean && mean < high && high < 0.0, "{low} {mean} {high}");
        assert_eq!(paired_bootstrap(&diffs, 2000, 7), (mean, low, high));
    }

    #[tokio::test]
    async fn a_judge_that_always_prefers_the_first_answer_gives_ties() {
        let a = vec![result("0|0|0|0", "{\"question\":\"q\"}", true, 1.0, "answer one")];
        let b = vec![result("0|0|0|0", "{\"question\":\"q\"}", true, 1.0, "answer two")];
        let pairs = pair(&Side { results: &a, target: None }, &Side { results: &b, target: None });
        let biased = Scripted::answering(r#"{"winner": "first", "reason": "it came first"}"#);
        let verdict = pairwise(&biased, &["judge".to_string()], "", &pairs).await;
        assert_eq!((verdict.wins_a, verdict.wins_b, verdict.ties, verdict.position_flips), (0, 0, 1, 1));
        let sent = biased.bodies();
        assert_eq!(sent.len(), 2, "both orders are asked");
        let user = |i: usize| sent[i]["messages"][1]["content"].as_str().unwrap().to_string();
        assert!(user(0).find("answer one") < user(0).find("answer two"));
        assert!(user(1).find("answer two") < user(1).find("answer one"));

        // A judge that reads the answers prefers `answer two` in either position: a win for B.
        struct Reads;
        impl Model for Reads {
            fn chat<'a>(&'a self, body: &'a Value) -> futures_util::future::BoxFuture<'a, Result<crate::Answer, String>> {
                let user = body["messages"][1]["content"].as_str().unwrap_or_default().to_string();
                let first = user.split("<first>").nth(1).unwrap_or_default().split("</first>").next().unwrap_or_default().to_string();
                let winner = if first.contains("two") { "first" } else { "second" };
                Box::pin(async move { Ok(crate::Answer { text: json!({"winner": winner, "reason": "two is better"}).to_string(), ..crate::Answer::default() }) })
            }
            fn embed<'a>(&'a self, _: &'a str, _: &'a [String]) -> futures_util::future::BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
                Box::pin(async { Ok(Vec::new()) })
            }
        }
        let panel = ["j1".to_string(), "j2".to_string(), "j3".to_string()];
        let verdict = pairwise(&Reads, &panel, "", &pairs).await;
        assert_eq!((verdict.wins_a, verdict.wins_b, verdict.ties, verdict.position_flips), (0, 1, 0, 0));

        // judge-check: the reading judge agrees with people who prefer `two`; the biased one
        // flips on every case and never takes a side.
        let cases: Vec<LabelledPair> = serde_json::from_value(json!([
            {"question": "q", "a": "answer two", "b": "answer one", "human": "a"},
            {"question": "q", "first": "answer one", "second": "answer two", "human": "b"},
            {"question": "q", "a": "two, again", "b": "one", "human": "b"},
            {"question": "q", "a": "x", "b": "y", "human": "tie"},
        ]))
        .unwrap();
        let check = judge_check(&Reads, &["j".to_string()], "", &cases).await;
        assert_eq!((check.non_tie_cases, check.agreement_non_tie), (3, 2.0 / 3.0), "{check:?}");
        let check = judge_check(&biased, &["j".to_string()], "", &cases).await;
        assert_eq!((check.non_tie_cases, check.position_flip_rate, check.agreement), (0, 1.0, 0.25), "{check:?}");
        assert_eq!(biased.bodies().len(), 2 + 8, "two calls per case");
    }
}
