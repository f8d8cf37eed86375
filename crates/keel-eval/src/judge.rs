//! Model-graded scorers (`llm-rubric`, `factuality`, `model-graded-closedqa`,
//! `answer-relevance`, `context-faithfulness`): a judge alias answers the verdict schema
//! `{reason, score, pass}` through [`Model`] (grammar-constrained on the local model); and
//! `command`, which runs a program with the case as JSON on its standard input and reads
//! `{score, pass, reason}` from its standard output.

use serde_json::{Value, json};

use crate::score::{Assertion, Case, Outcome, clip, first_json};

/// The alias an assertion's `provider` names, if it names one.
pub(crate) fn named_provider(assertion: &Assertion) -> Result<Option<String>, String> {
    Ok(match &assertion.provider {
        Some(Value::String(alias)) => Some(crate::spec::alias_of(alias).map_err(|e| e.to_string())?),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(crate::spec::alias_of).transpose().map_err(|e| e.to_string())?,
        _ => None,
    })
}

fn judge_alias(assertion: &Assertion, case: &Case<'_>, kind: &str) -> Result<String, String> {
    named_provider(assertion)?.or_else(|| case.judge.map(str::to_string)).ok_or_else(|| {
        format!("`{kind}` needs a judge: set `provider` on the assertion or `judge = \"ALIAS\"` in the eval file")
    })
}

/// The schema every judge answers in; on the local model it is grammar-constrained.
pub fn verdict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "pass": {"type": "boolean"}
        },
        "required": ["reason", "score", "pass"],
        "additionalProperties": false
    })
}

/// What the judge is asked, by type: (what it is grading against, the instructions).
fn judge_prompt(kind: &str, value: Option<&str>, case: &Case<'_>) -> Result<(String, String), String> {
    let expected = || -> Result<String, String> {
        value
            .map(str::to_string)
            .or_else(|| case.expected.map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string)))
            .ok_or_else(|| format!("`{kind}` needs the reference answer as its `value` (or the row's `expected`)"))
    };
    let question = || {
        ["question", "query", "input", "prompt"]
            .iter()
            .find_map(|k| case.vars.get(*k).and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| Value::Object(case.vars.clone()).to_string())
    };
    Ok(match kind {
        "llm-rubric" => (
            format!("Rubric:\n{}", value.ok_or("`llm-rubric` needs the rubric as its `value`")?),
            "Grade the output against the rubric. pass is true only when the output meets the rubric; score is how well, from 0 to 1.".into(),
        ),
        "factuality" => (
            format!("Question:\n{}\n\nReference answer:\n{}", question(), expected()?),
            "Decide whether the output is factually consistent with the reference answer: it may add detail or phrase things differently, but must not contradict it or leave out what the question asks. pass is true when consistent.".into(),
        ),
        "model-graded-closedqa" => (
            format!("Question:\n{}\n\nCriterion:\n{}", question(), expected()?),
            "Decide whether the output answers the question and meets the criterion. pass is true when it does.".into(),
        ),
        "answer-relevance" => (
            format!("Question:\n{}", question()),
            "Decide whether the output answers this question directly, without going off topic. score is its relevance from 0 to 1.".into(),
        ),
        _ => (
            format!(
                "Context:\n{}",
                value
                    .map(str::to_string)
                    .or_else(|| case.vars.get("context").map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string)))
                    .or_else(|| case.answer.context.clone())
                    .ok_or("`context-faithfulness` needs the context: its `value`, a `context` variable, or a RAG target's passages")?
            ),
            "Decide whether every claim in the output is supported by the context. score is the share of supported claims; pass is true when all are.".into(),
        ),
    })
}

pub(crate) async fn judged(kind: &str, assertion: &Assertion, value: Option<Value>, case: &Case<'_>) -> Result<Outcome, String> {
    let alias = judge_alias(assertion, case, kind)?;
    let value = value.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    let (against, instructions) = judge_prompt(kind, value.as_deref(), case)?;
    let system = format!(
        "You are an impartial grader. {instructions} Answer only with JSON: {{\"reason\": one sentence, \"score\": a number from 0 to 1, \"pass\": true or false}}."
    );
    let user = format!("{against}\n\nOutput to grade:\n<output>\n{}\n</output>", case.answer.text);
    let body = json!({
        "model": alias,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": verdict_schema(), "strict": true}},
    });
    let answer = case.model.chat(&body).await.map_err(|e| format!("the judge `{alias}` failed: {e}"))?;
    let verdict: Value = first_json(&answer.text).ok_or_else(|| format!("the judge `{alias}` did not answer JSON: {}", clip(&answer.text)))?;
    let score = verdict.get("score").and_then(Value::as_f64).map(|s| s.clamp(0.0, 1.0));
    let pass = verdict.get("pass").and_then(Value::as_bool);
    let reason = verdict.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
    let (pass, score) = match (pass, score) {
        (Some(p), Some(s)) => (p, s),
        (Some(p), None) => (p, if p { 1.0 } else { 0.0 }),
        (None, Some(s)) => (s >= 0.5, s),
        (None, None) => return Err(format!("the judge `{alias}` answered neither pass nor score: {}", clip(&answer.text))),
    };
    let pass = match assertion.threshold {
        Some(threshold) => score >= threshold,
        None => pass,
    };
    Ok(Outcome { pass, score, reason: format!("{alias}: {reason}") })
}

/// `command`: the value is a program and its arguments (a list, or a text split on
/// whitespace); it gets `{output, vars, expected, tool_calls}` on stdin and answers
/// `{score, pass, reason}` (or a bare number: the score, pass when ≥ 0.5).
pub(crate) async fn command(value: Option<Value>, case: &Case<'_>) -> Result<Outcome, String> {
    let argv: Vec<String> = match value {
        Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect(),
        Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
        _ => return Err("`command` needs the program to run as its `value`".into()),
    };
    let (program, args) = argv.split_first().ok_or("`command` needs the program to run as its `value`")?;
    let input = json!({
        "output": case.answer.text,
        "vars": case.vars,
        "expected": case.expected,
        "tool_calls": case.answer.tool_calls,
    });
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("`command` could not run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(input.to_string().as_bytes()).await;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("`command` {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("`command` {program} exited with {}: {}", out.status, clip(String::from_utf8_lossy(&out.stderr).trim())));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(text.trim()).map_err(|_| format!("`command` {program} printed {:?}, not JSON", clip(text.trim())))?;
    if let Some(score) = answer.as_f64() {
        return Ok(Outcome { pass: score >= 0.5, score, reason: format!("{program} scored {score}") });
    }
    let score = answer.get("score").and_then(Value::as_f64);
    let pass = answer.get("pass").and_then(Value::as_bool);
    let reason = answer.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
    match (pass, score) {
        (None, None) => Err(format!("`command` {program} answered neither `pass` nor `score`")),
        (p, s) => {
            let score = s.unwrap_or(if p == Some(true) { 1.0 } else { 0.0 });
            Ok(Outcome { pass: p.unwrap_or(score >= 0.5), score, reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Answer;
    use crate::model::tests::Scripted;
    use crate::score::grade;
    use serde_json::Map;

    fn answer(text: &str) -> Answer {
        Answer { text: text.into(), latency_ms: 120.0, cost_usd: Some(0.002), ..Answer::default() }
    }

    #[tokio::test]
    async fn the_judge_answers_through_the_model_and_a_command_through_stdin() {
        let model = Scripted::answering(r#"{"reason": "polite", "score": 0.9, "pass": true}"#);
        let a = answer("Thank you for asking!");
        let vars = Map::new();
        let case = Case { answer: &a, vars: &vars, expected: None, judge: Some("judge"), model: &model };
        let rubric: Assertion = serde_json::from_value(json!({"type": "llm-rubric", "value": "is polite"})).unwrap();
        let graded_rubric = grade(&rubric, &case).await;
        assert!(graded_rubric.pass && graded_rubric.score == 0.9 && graded_rubric.reason.contains("polite"), "{graded_rubric:?}");
        let sent = model.bodies();
        assert_eq!(sent[0]["model"], "judge");
        assert_eq!(sent[0]["response_format"]["json_schema"]["schema"], verdict_schema());
        let script: Assertion = serde_json::from_value(json!({
            "type": "command",
            "value": ["sh", "-c", "grep -q Thank && echo '{\"pass\": true, \"score\": 1, \"reason\": \"thanked\"}'"]
        }))
        .unwrap();
        let graded = grade(&script, &case).await;
        assert!(graded.pass && graded.reason == "thanked", "{graded:?}");
    }

    #[tokio::test]
    async fn each_judged_type_shows_the_judge_what_it_grades_against() {
        let model = Scripted::answering(r#"{"reason": "ok", "score": 0.4, "pass": false}"#);
        let mut a = answer("Paris, the capital.");
        a.context = Some("[1] Paris is the capital of France.".into());
        let vars = json!({"question": "What is the capital of France?"}).as_object().unwrap().clone();
        let expected = json!("Paris");
        let case = Case { answer: &a, vars: &vars, expected: Some(&expected), judge: Some("judge"), model: &model };
        for (kind, shows) in [
            ("factuality", "Reference answer:\nParis"),
            ("model-graded-closedqa", "Criterion:\nParis"),
            ("answer-relevance", "Question:\nWhat is the capital of France?"),
            ("context-faithfulness", "Context:\n[1] Paris is the capital of France."),
        ] {
            let assertion: Assertion = serde_json::from_value(json!({"type": kind, "threshold": 0.3})).unwrap();
            let graded = grade(&assertion, &case).await;
            assert!(graded.pass && graded.score == 0.4, "{kind}: a threshold decides over the judge's pass: {graded:?}");
            let sent = model.bodies().pop().unwrap();
            let user = sent["messages"][1]["content"].as_str().unwrap().to_string();
            assert!(user.contains(shows) && user.contains("<output>\nParis, the capital.\n</output>"), "{kind}: {user}");
        }
        let none = Case { answer: &answer("x"), vars: &Map::new(), expected: None, judge: Some("judge"), model: &model };
        let missing = grade(&serde_json::from_value(json!({"type": "factuality"})).unwrap(), &none).await;
        assert!(!missing.pass && missing.reason.contains("reference answer"), "{missing:?}");
        let no_judge = Case { judge: None, ..none };
        let graded = grade(&serde_json::from_value(json!({"type": "llm-rubric", "value": "x"})).unwrap(), &no_judge).await;
        assert!(graded.reason.contains("needs a judge"), "{graded:?}");
    }
}
