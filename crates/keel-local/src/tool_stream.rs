//! Streams a tool-mode answer as it is generated. The model writes one JSON document,
//! `{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}` or `{"response": "..."}`; this
//! scanner follows the document character by character and turns it into stream events as
//! soon as they are known: a call starts when its arguments begin, its arguments go out as
//! raw JSON fragments, and a response's string is decoded and sent as text while it grows.

use keel_core::{FinishReason, StreamEvent, Usage};

#[derive(Debug)]
enum Frame {
    Object { key: Option<String>, expecting_key: bool },
    Array,
}

#[derive(Debug, Default)]
struct Call {
    name: Option<String>,
    started: bool,
    pending: String,
}

#[derive(Debug)]
struct Str {
    raw: String,
    is_key: bool,
    escape: bool,
    /// Bytes of `raw` already decoded and sent (response text only).
    sent: usize,
}

/// Where a value sits in the document, as far as the scanner cares.
#[derive(Debug, PartialEq)]
enum Place {
    /// An element of `tool_calls`.
    Call,
    CallName,
    CallArguments,
    Response,
    Other,
}

#[derive(Debug)]
pub(crate) struct ToolDocument {
    call_id_prefix: String,
    stack: Vec<Frame>,
    string: Option<Str>,
    in_scalar: bool,
    calls: Vec<Call>,
    /// The call whose arguments are being copied out.
    capturing: Option<usize>,
    text: String,
    sent_anything: bool,
}

impl ToolDocument {
    pub(crate) fn new(call_id_prefix: String) -> ToolDocument {
        ToolDocument {
            call_id_prefix,
            stack: Vec::new(),
            string: None,
            in_scalar: false,
            calls: Vec::new(),
            capturing: None,
            text: String::new(),
            sent_anything: false,
        }
    }

    fn key(&self, depth: usize) -> Option<&str> {
        match self.stack.get(depth) {
            Some(Frame::Object { key, .. }) => key.as_deref(),
            _ => None,
        }
    }

    fn place(&self) -> Place {
        let object_at = |depth: usize| matches!(self.stack.get(depth), Some(Frame::Object { .. }));
        match self.stack.len() {
            1 if self.key(0) == Some("response") => Place::Response,
            2 if self.key(0) == Some("tool_calls") && matches!(self.stack[1], Frame::Array) => Place::Call,
            3 if self.key(0) == Some("tool_calls") && object_at(2) => match self.key(2) {
                Some("name") => Place::CallName,
                Some("arguments") => Place::CallArguments,
                _ => Place::Other,
            },
            _ => Place::Other,
        }
    }

    /// A value begins at the current place.
    fn value_starts(&mut self) {
        match self.place() {
            Place::Call => self.calls.push(Call::default()),
            Place::CallArguments if self.capturing.is_none() && !self.calls.is_empty() => {
                self.capturing = Some(self.calls.len() - 1);
            }
            _ => {}
        }
    }

    /// Feeds generated text; returns the events it completes.
    pub(crate) fn push(&mut self, piece: &str) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        for c in piece.chars() {
            self.step(c, &mut out);
        }
        self.flush_response(&mut out);
        self.flush_arguments(&mut out);
        out
    }

    fn step(&mut self, c: char, out: &mut Vec<StreamEvent>) {
        self.text.push(c);
        if let Some(s) = self.string.as_mut() {
            if let Some(idx) = self.capturing {
                self.calls[idx].pending.push(c);
            }
            if s.escape {
                s.escape = false;
                s.raw.push(c);
            } else if c == '\\' {
                s.escape = true;
                s.raw.push(c);
            } else if c == '"' {
                self.flush_response(out);
                let s = self.string.take().expect("inside a string");
                self.end_string(s);
            } else {
                s.raw.push(c);
            }
            return;
        }
        if self.capturing.is_some() && self.stack.len() == 3 && (c == ',' || c == '}') {
            self.capturing = None;
        }
        if self.in_scalar && !(c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.')) {
            self.in_scalar = false;
        }
        match c {
            '{' => {
                self.value_starts();
                self.stack.push(Frame::Object { key: None, expecting_key: true });
            }
            '[' => {
                self.value_starts();
                self.stack.push(Frame::Array);
            }
            '}' | ']' => {
                self.stack.pop();
            }
            '"' => {
                let is_key = matches!(self.stack.last(), Some(Frame::Object { expecting_key: true, .. }));
                if !is_key {
                    self.value_starts();
                }
                self.string = Some(Str { raw: String::new(), is_key, escape: false, sent: 0 });
            }
            ':' => {
                if let Some(Frame::Object { expecting_key, .. }) = self.stack.last_mut() {
                    *expecting_key = false;
                }
            }
            ',' => {
                if let Some(Frame::Object { expecting_key, key }) = self.stack.last_mut() {
                    *expecting_key = true;
                    *key = None;
                }
            }
            c if c.is_whitespace() => {}
            _ => {
                if !self.in_scalar {
                    self.in_scalar = true;
                    self.value_starts();
                }
            }
        }
        if let Some(idx) = self.capturing {
            self.calls[idx].pending.push(c);
        }
    }

    fn end_string(&mut self, s: Str) {
        let decoded = || serde_json::from_str::<String>(&format!("\"{}\"", s.raw)).unwrap_or_default();
        if s.is_key {
            if let Some(Frame::Object { key, .. }) = self.stack.last_mut() {
                *key = Some(decoded());
            }
        } else if self.place() == Place::CallName
            && let Some(call) = self.calls.last_mut()
        {
            call.name = Some(decoded());
        }
    }

    /// Sends the decoded part of a growing response string, up to the last complete escape.
    fn flush_response(&mut self, out: &mut Vec<StreamEvent>) {
        if self.place() != Place::Response {
            return;
        }
        let Some(s) = self.string.as_mut().filter(|s| !s.is_key) else { return };
        let end = complete_prefix(&s.raw, s.sent);
        if end > s.sent {
            if let Ok(text) = serde_json::from_str::<String>(&format!("\"{}\"", &s.raw[s.sent..end])) {
                out.push(StreamEvent::TextDelta(text));
                self.sent_anything = true;
            }
            s.sent = end;
        }
    }

    fn flush_arguments(&mut self, out: &mut Vec<StreamEvent>) {
        for (index, call) in self.calls.iter_mut().enumerate() {
            let Some(name) = &call.name else { continue };
            if !call.started && !call.pending.is_empty() {
                call.started = true;
                out.push(StreamEvent::ToolCallStart { index, id: format!("{}_{index}", self.call_id_prefix), name: name.clone() });
            }
            if call.started && !call.pending.is_empty() {
                out.push(StreamEvent::ToolCallDelta { index, arguments: std::mem::take(&mut call.pending) });
                self.sent_anything = true;
            }
        }
    }

    /// The generation ended: closes the answer with its finish reason and usage.
    pub(crate) fn finish(mut self, finish: FinishReason, usage: Usage) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        let complete = self.stack.is_empty() && self.string.is_none() && serde_json::from_str::<serde_json::Value>(&self.text).is_ok();
        let finish = match (complete, self.calls.iter().any(|call| call.started)) {
            (true, true) => FinishReason::ToolCalls,
            (true, false) => finish,
            (false, _) => {
                // Cut short by the token budget: whatever did not stream goes out as text.
                if !self.sent_anything {
                    out.push(StreamEvent::TextDelta(std::mem::take(&mut self.text)));
                }
                FinishReason::Length
            }
        };
        out.push(StreamEvent::Finish(finish));
        out.push(StreamEvent::Usage(usage));
        out
    }
}

/// The end of the longest prefix of a JSON string body (from `from`) that holds only whole
/// escapes, a surrogate pair counting as one.
fn complete_prefix(raw: &str, from: usize) -> usize {
    let bytes = raw.as_bytes();
    let mut i = from;
    let mut safe = from;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            if raw.is_char_boundary(i) {
                safe = i;
            }
            continue;
        }
        let Some(&kind) = bytes.get(i + 1) else { break };
        let need = if kind == b'u' {
            let high = raw.get(i + 2..i + 6).and_then(|hex| u16::from_str_radix(hex, 16).ok());
            match high {
                None => break,
                Some(unit) if (0xD800..0xDC00).contains(&unit) => 12,
                Some(_) => 6,
            }
        } else {
            2
        };
        if i + need > bytes.len() {
            break;
        }
        i += need;
        safe = i;
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::{ToolDocument, complete_prefix};
    use keel_core::{FinishReason, StreamEvent, Usage};

    fn run(doc: &str) -> Vec<StreamEvent> {
        let mut scanner = ToolDocument::new("call_x".into());
        let mut events = Vec::new();
        for c in doc.chars() {
            events.extend(scanner.push(&c.to_string()));
        }
        events.extend(scanner.finish(FinishReason::Stop, Usage::default()));
        events
    }

    #[test]
    fn streams_calls_as_their_arguments_grow() {
        let doc = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par\"is", "n": [1, {"a": 2}]}}, {"name":"b","arguments":{}}]}"#;
        let events = run(doc);
        let starts: Vec<_> = events.iter().filter_map(|e| match e {
            StreamEvent::ToolCallStart { index, name, id } => Some((*index, name.clone(), id.clone())),
            _ => None,
        }).collect();
        assert_eq!(starts, vec![(0, "get_weather".into(), "call_x_0".into()), (1, "b".into(), "call_x_1".into())]);
        let args = |which: usize| -> (String, usize) {
            let parts: Vec<&String> = events.iter().filter_map(|e| match e {
                StreamEvent::ToolCallDelta { index, arguments } if *index == which => Some(arguments),
                _ => None,
            }).collect();
            (parts.iter().map(|s| s.as_str()).collect(), parts.len())
        };
        let (first, pieces) = args(0);
        assert_eq!(first, r#"{"city": "Par\"is", "n": [1, {"a": 2}]}"#);
        assert!(pieces > 10, "arguments arrive piece by piece, not at the end");
        assert_eq!(args(1).0, "{}");
        assert!(matches!(events[events.len() - 2], StreamEvent::Finish(FinishReason::ToolCalls)));
    }

    #[test]
    fn streams_a_response_decoded() {
        let doc = r#"{"response": "Line one\nsays \"hi\" \u00e9 \ud83d\ude00 done"}"#;
        let events = run(doc);
        let text: String = events.iter().filter_map(|e| match e {
            StreamEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        }).collect();
        assert_eq!(text, "Line one\nsays \"hi\" é 😀 done");
        assert!(events.iter().filter(|e| matches!(e, StreamEvent::TextDelta(_))).count() > 10);
        assert!(matches!(events[events.len() - 2], StreamEvent::Finish(FinishReason::Stop)));
    }

    #[test]
    fn a_document_cut_short_ends_with_length() {
        let events = run(r#"{"tool_calls": [{"name": "get_weather", "argu"#);
        assert!(matches!(events[events.len() - 2], StreamEvent::Finish(FinishReason::Length)));
        assert!(matches!(&events[0], StreamEvent::TextDelta(t) if t.starts_with("{\"tool_calls")));
    }

    #[test]
    fn escapes_are_sent_whole() {
        assert_eq!(complete_prefix(r"ab\", 0), 2);
        assert_eq!(complete_prefix(r"ab\u00", 0), 2);
        assert_eq!(complete_prefix(r"ab\u00e9", 0), 8);
        assert_eq!(complete_prefix(r"\ud83d", 0), 0);
        assert_eq!(complete_prefix(r"\ud83d\ude00", 0), 12);
        assert_eq!(complete_prefix("é", 0), 2);
    }
}
