//! Reading dataset rows from files: JSONL (keel's `{input, expected, metadata}` shape,
//! promptfoo's `{vars, ...}` test shape, or a flat object of variables) and CSV (a header of
//! variable names; promptfoo's `__expected` and `__metadata:KEY` columns understood).

use keel_store::DatasetRow;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Columns and keys that are not variables.
const EXPECTED_KEYS: [&str; 2] = ["expected", "__expected"];

/// One row from a JSON object in any of the shapes the module describes.
pub fn row_from_json(value: Value, at: &str) -> Result<DatasetRow> {
    let Value::Object(mut object) = value else {
        return Err(Error::Invalid(format!("{at}: a row is a JSON object, e.g. {{\"input\": {{...}}, \"expected\": ...}}")));
    };
    let expected = EXPECTED_KEYS.iter().find_map(|key| object.remove(*key));
    let metadata = match object.remove("metadata") {
        None => Value::Object(Map::new()),
        Some(meta @ Value::Object(_)) => meta,
        Some(_) => return Err(Error::Invalid(format!("{at}: `metadata` must be an object"))),
    };
    let trace_id = object.remove("trace_id").and_then(|t| t.as_str().map(str::to_string));
    let input = match (object.remove("input"), object.remove("vars")) {
        (Some(input), None) => input_value(input),
        (None, Some(vars @ Value::Object(_))) => vars,
        (None, Some(_)) => return Err(Error::Invalid(format!("{at}: `vars` must be an object"))),
        (Some(_), Some(_)) => return Err(Error::Invalid(format!("{at}: give `input` or `vars`, not both"))),
        (None, None) if !object.is_empty() => Value::Object(object),
        (None, None) => return Err(Error::Invalid(format!("{at}: the row has no input"))),
    };
    Ok(DatasetRow { input, expected, metadata, trace_id })
}

/// An input as the eval reads it: an object of variables; a list of messages becomes
/// `{"messages": [...]}` and a bare text `{"input": "..."}`.
fn input_value(input: Value) -> Value {
    match input {
        Value::Object(_) => input,
        Value::Array(messages) => serde_json::json!({ "messages": messages }),
        other => serde_json::json!({ "input": other }),
    }
}

/// Rows from JSON Lines (blank lines skipped); an error names the line.
pub fn parse_jsonl(text: &str) -> Result<Vec<DatasetRow>> {
    let mut rows = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", idx + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| Error::Invalid(format!("{at}: {e}")))?;
        rows.push(row_from_json(value, &at)?);
    }
    Ok(rows)
}

/// Rows from CSV with a header; `__expected` (or `expected`) fills `expected`,
/// `__metadata:KEY` a metadata field, `__description` the metadata's `description`, and
/// every other column is a variable.
pub fn parse_csv(text: &str) -> Result<Vec<DatasetRow>> {
    let records = csv_records(text)?;
    let Some((header, body)) = records.split_first() else { return Ok(Vec::new()) };
    let mut rows = Vec::new();
    for (idx, record) in body.iter().enumerate() {
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        if record.len() != header.len() {
            return Err(Error::Invalid(format!("CSV row {}: {} fields, the header has {}", idx + 2, record.len(), header.len())));
        }
        let mut vars = Map::new();
        let mut metadata = Map::new();
        let mut expected = None;
        for (name, field) in header.iter().zip(record) {
            let name = name.trim();
            if EXPECTED_KEYS.contains(&name) {
                expected = Some(Value::String(field.clone()));
            } else if let Some(key) = name.strip_prefix("__metadata:") {
                metadata.insert(key.to_string(), Value::String(field.clone()));
            } else if name == "__description" {
                metadata.insert("description".into(), Value::String(field.clone()));
            } else {
                vars.insert(name.to_string(), Value::String(field.clone()));
            }
        }
        rows.push(DatasetRow { input: Value::Object(vars), expected, metadata: Value::Object(metadata), trace_id: None });
    }
    Ok(rows)
}

/// RFC 4180 records: fields split by commas, quoted with `"` (a doubled quote inside is one
/// quote), records split by newlines outside quotes.
fn csv_records(text: &str) -> Result<Vec<Vec<String>>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                line += 1;
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(Error::Invalid(format!("CSV: a quoted field is not closed by line {line}")));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// Rows from a file's text, by its extension (`.jsonl`/`.ndjson`, `.csv`, `.json` holding
/// a list, `.yaml`/`.yml` holding a list).
pub fn parse_file(path: &str, text: &str) -> Result<Vec<DatasetRow>> {
    let lower = path.to_ascii_lowercase();
    let list = |values: Vec<Value>| -> Result<Vec<DatasetRow>> {
        values.into_iter().enumerate().map(|(idx, v)| row_from_json(v, &format!("item {}", idx + 1))).collect()
    };
    if lower.ends_with(".csv") {
        parse_csv(text)
    } else if lower.ends_with(".json") {
        list(serde_json::from_str(text).map_err(|e| Error::Invalid(format!("{path}: {e} (a JSON file holds a list of rows)")))?)
    } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        list(serde_yaml_ng::from_str(text).map_err(|e| Error::Invalid(format!("{path}: {e} (a YAML file holds a list of rows)")))?)
    } else {
        parse_jsonl(text)
    }
}

/// A trace as a dataset row: its input (the prompt's variables when the request named a
/// registry prompt, else the conversation as `{"messages": [...]}`) and, with
/// `with_expected`, its answer as `expected`. The trace id, model and prompt version go into
/// the metadata. `None` when the trace kept no request body.
pub fn row_from_trace(trace: &keel_store::Trace, with_expected: bool) -> Option<DatasetRow> {
    let request: Value = serde_json::from_str(trace.request_body.as_deref()?).ok()?;
    let input = match request.get("prompt").and_then(|p| p.get("variables")) {
        Some(vars @ Value::Object(_)) => vars.clone(),
        _ => serde_json::json!({ "messages": conversation(&request) }),
    };
    let expected = with_expected.then(|| trace.response_body.as_deref().and_then(answer_text).map(Value::String)).flatten();
    let mut metadata = Map::new();
    metadata.insert("model".into(), Value::String(trace.alias.clone()));
    if let Some(name) = &trace.prompt_name {
        metadata.insert("prompt".into(), Value::String(format!("{name}@{}", trace.prompt_version.unwrap_or(0))));
    }
    Some(DatasetRow { input, expected, metadata: Value::Object(metadata), trace_id: Some(trace.id.clone()) })
}

/// The messages of a Chat Completions, Messages or Responses request, OpenAI's shape.
fn conversation(request: &Value) -> Vec<Value> {
    let mut messages = Vec::new();
    for key in ["system", "instructions"] {
        match request.get(key) {
            Some(Value::String(text)) => messages.push(serde_json::json!({"role": "system", "content": text})),
            Some(Value::Array(blocks)) => {
                let text: Vec<&str> = blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect();
                messages.push(serde_json::json!({"role": "system", "content": text.join("\n")}));
            }
            _ => {}
        }
    }
    match request.get("messages").or_else(|| request.get("input")) {
        Some(Value::Array(items)) => messages.extend(items.iter().flat_map(crate::finetune::to_openai)),
        Some(Value::String(text)) => messages.push(serde_json::json!({"role": "user", "content": text})),
        _ => {}
    }
    messages
}

/// The text of a whole answer in any of the wire formats keel stores (Chat Completions,
/// Messages, Responses, or keel's own `{"message": ...}`).
pub fn answer_text(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let join = |parts: &[Value], kind: &str| -> String {
        parts.iter().filter(|p| p.get("type").and_then(Value::as_str).is_none_or(|t| t == kind)).filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
    };
    if let Some(message) = value.pointer("/choices/0/message") {
        return message.get("content").and_then(Value::as_str).map(str::to_string);
    }
    if let Some(Value::Array(parts)) = value.get("content") {
        return Some(join(parts, "text"));
    }
    if let Some(Value::Array(items)) = value.get("output") {
        let parts: Vec<Value> = items.iter().filter_map(|i| i.get("content").and_then(Value::as_array)).flatten().cloned().collect();
        return Some(join(&parts, "output_text"));
    }
    match value.pointer("/message/content") {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Array(parts)) => Some(join(parts, "text")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonl_reads_keel_promptfoo_and_flat_shapes() {
        let rows = parse_jsonl(
            r#"{"input": {"q": "a"}, "expected": "A", "metadata": {"k": 1}}

{"vars": {"q": "b"}, "__expected": "B"}
{"q": "c"}
{"input": [{"role": "user", "content": "hi"}]}
{"input": "plain"}"#,
        )
        .unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!((rows[0].input.clone(), rows[0].expected.clone(), rows[0].metadata.clone()), (json!({"q": "a"}), Some(json!("A")), json!({"k": 1})));
        assert_eq!((rows[1].input.clone(), rows[1].expected.clone()), (json!({"q": "b"}), Some(json!("B"))));
        assert_eq!((rows[2].input.clone(), rows[2].expected.clone()), (json!({"q": "c"}), None));
        assert_eq!(rows[3].input, json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(rows[4].input, json!({"input": "plain"}));
        let err = parse_jsonl("{\"q\": 1}\n[1]").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_jsonl("{\"q\": ").unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn traces_become_rows_in_every_wire_format() {
        let trace = |request: Value, response: Value| keel_store::Trace {
            id: "t1".into(),
            alias: "fast".into(),
            request_body: Some(request.to_string()),
            response_body: Some(response.to_string()),
            ..keel_store::Trace::default()
        };
        let openai = trace(
            json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"choices": [{"message": {"role": "assistant", "content": "hello"}}]}),
        );
        let row = row_from_trace(&openai, true).unwrap();
        assert_eq!(row.input, json!({"messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!((row.expected, row.trace_id.as_deref()), (Some(json!("hello")), Some("t1")));
        let anthropic = trace(
            json!({"system": "be brief", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}),
        );
        let row = row_from_trace(&anthropic, true).unwrap();
        assert_eq!(row.input["messages"][0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(row.expected, Some(json!("hello")));
        let responses = trace(json!({"input": "hi"}), json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "yo"}]}]}));
        assert_eq!(row_from_trace(&responses, true).unwrap().expected, Some(json!("yo")));
        let prompted = trace(json!({"prompt": {"name": "support", "variables": {"q": "tea"}}}), json!({}));
        let row = row_from_trace(&prompted, false).unwrap();
        assert_eq!((row.input, row.expected), (json!({"q": "tea"}), None));
    }

    #[test]
    fn csv_handles_quotes_newlines_and_promptfoo_columns() {
        let text = "question,__expected,__metadata:topic\r\n\"Say \"\"hi\"\", then\nstop\",contains: hi,greeting\nplain,equals: x,misc\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].input, json!({"question": "Say \"hi\", then\nstop"}));
        assert_eq!(rows[0].expected, Some(json!("contains: hi")));
        assert_eq!(rows[0].metadata, json!({"topic": "greeting"}));
        assert!(parse_csv("a,b\n1\n").unwrap_err().to_string().contains("row 2"));
        assert!(parse_csv("a\n\"open\n").unwrap_err().to_string().contains("not closed"));
    }
}
