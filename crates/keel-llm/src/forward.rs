//! The same-format lane. A client's Chat Completions request bound for OpenAI-kind routes,
//! or its Messages request bound for Anthropic-kind routes, needs no translation: keel
//! forwards the body as it came with only `model` replaced, and the answer back byte for
//! byte, so every field either API has (prompt caching, thinking, betas, fields newer than
//! keel) reaches the provider. The body's top level is split into raw fields without
//! building a tree; streamed answers are read on the side for the trace's usage.

use bytes::Bytes;
use serde::de::IgnoredAny;

/// A provider's own wire format, where a client's request can be forwarded as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    /// OpenAI's Chat Completions.
    OpenAiChat,
    /// Anthropic's Messages.
    AnthropicMessages,
}

/// A forwarded answer.
#[derive(Debug)]
pub struct Forwarded {
    /// The upstream's `content-type`.
    pub content_type: String,
    pub body: Relayed,
}

#[derive(Debug)]
pub enum Relayed {
    /// A whole answer, byte for byte, and what it says (for the trace).
    Whole { bytes: Bytes, answer: keel_core::ChatResponse },
    /// A stream, relayed as it comes.
    Stream(crate::providers::Relay),
}

/// A request body split at its top level: each field's key and its raw JSON text.
#[derive(Debug)]
pub struct RawRequest {
    body: Bytes,
    /// (key, value) byte ranges into `body`, in order.
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    /// The `model` the client asked for: keel's alias.
    pub model: String,
    pub stream: bool,
    /// OpenAI only: the client asked for a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

fn skip_ws(body: &[u8], mut at: usize) -> usize {
    while at < body.len() && body[at].is_ascii_whitespace() {
        at += 1;
    }
    at
}

/// Where the JSON value starting at `at` ends; checks its syntax on the way.
fn value_end(body: &[u8], at: usize) -> Result<usize, String> {
    let mut values = serde_json::Deserializer::from_slice(&body[at..]).into_iter::<IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => Ok(at + values.byte_offset()),
        Some(Err(err)) => Err(format!("the request body is not valid JSON: {err}")),
        None => Err("the request body ends early".into()),
    }
}

impl RawRequest {
    /// Splits a JSON object's top level. Errors name what is wrong, as a client should see it.
    pub fn parse(body: Bytes) -> crate::Result<RawRequest> {
        RawRequest::split(body).map_err(crate::Error::InvalidRequest)
    }

    fn split(body: Bytes) -> Result<RawRequest, String> {
        let bytes = &body[..];
        let mut at = skip_ws(bytes, 0);
        if bytes.get(at) != Some(&b'{') {
            return Err("the request body must be a JSON object".into());
        }
        at = skip_ws(bytes, at + 1);
        let mut fields = Vec::new();
        let (mut model, mut stream, mut include_usage) = (None, false, false);
        if bytes.get(at) == Some(&b'}') {
            at += 1;
        } else {
            loop {
                if bytes.get(at) != Some(&b'"') {
                    return Err("the request body is not valid JSON: expected a key".into());
                }
                let key_start = at;
                let key_end = value_end(bytes, at)?;
                let key: String = serde_json::from_slice(&bytes[at..key_end]).map_err(|err| err.to_string())?;
                at = skip_ws(bytes, key_end);
                if bytes.get(at) != Some(&b':') {
                    return Err("the request body is not valid JSON: expected `:`".into());
                }
                let value_start = skip_ws(bytes, at + 1);
                let end = value_end(bytes, value_start)?;
                let raw = &bytes[value_start..end];
                match key.as_str() {
                    "model" => match serde_json::from_slice::<String>(raw) {
                        Ok(name) => model = Some(name),
                        Err(_) => return Err("model: must be a string".into()),
                    },
                    "stream" => stream = raw == b"true",
                    "stream_options" => {
                        include_usage = serde_json::from_slice::<serde_json::Value>(raw)
                            .is_ok_and(|options| options["include_usage"] == true);
                    }
                    _ => {}
                }
                fields.push((key_start..key_end, value_start..end));
                at = skip_ws(bytes, end);
                match bytes.get(at) {
                    Some(b',') => at = skip_ws(bytes, at + 1),
                    Some(b'}') => {
                        at += 1;
                        break;
                    }
                    _ => return Err("the request body is not valid JSON: expected `,` or `}`".into()),
                }
            }
        }
        if skip_ws(bytes, at) != bytes.len() {
            return Err("the request body is not valid JSON: trailing characters after the object".into());
        }
        let model = model.ok_or("model: missing; name one of keel's models")?;
        Ok(RawRequest { body, fields, model, stream, include_usage })
    }

    pub fn bytes(&self) -> &Bytes {
        &self.body
    }

    /// The raw JSON of a top-level field.
    pub fn field(&self, key: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| &self.body[k.start + 1..k.end - 1] == key.as_bytes()).map(|(_, v)| &self.body[v.clone()])
    }

    /// Whether a top-level field is an array with at least one element (`messages` must be:
    /// a request without any is the translated path's to explain, with no upstream call).
    pub fn has_items(&self, key: &str) -> bool {
        match self.field(key) {
            Some([b'[', rest @ ..]) => rest.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b != b']'),
            _ => false,
        }
    }

    /// The body to send upstream: `model` replaced; for an OpenAI stream, usage asked for
    /// (the relay drops the usage chunk again where the client did not ask for it).
    pub fn body_for(&self, model: &str, native: Native) -> Bytes {
        let add_usage = native == Native::OpenAiChat && self.stream && !self.include_usage;
        let mut out = Vec::with_capacity(self.body.len() + model.len() + 48);
        out.push(b'{');
        let mut first = true;
        for (key, value) in &self.fields {
            let name = &self.body[key.start + 1..key.end - 1];
            if add_usage && name == b"stream_options" {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&self.body[key.clone()]);
            out.push(b':');
            if name == b"model" {
                out.extend_from_slice(serde_json::to_string(model).unwrap_or_default().as_bytes());
            } else {
                out.extend_from_slice(&self.body[value.clone()]);
            }
        }
        if add_usage {
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RawRequest {
        RawRequest::parse(Bytes::from(text.to_string())).unwrap()
    }

    #[test]
    fn replaces_only_the_model() {
        let request = parse(r#" { "model" : "fast", "messages":[{"role":"user","content":"a \"quoted\" }{ word"}], "x\"y": {"a":[1,2]} } "#);
        assert_eq!(request.model, "fast");
        assert!(!request.stream);
        let body = request.body_for("gpt-4o-mini", Native::AnthropicMessages);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["model"], "gpt-4o-mini");
        assert_eq!(value["messages"][0]["content"], "a \"quoted\" }{ word");
        assert_eq!(value["x\"y"]["a"][1], 2);
        assert_eq!(request.field("messages").map(|raw| raw[0]), Some(b'['));
        assert!(request.has_items("messages"));
        assert!(!parse(r#"{"model":"m","messages":[ ]}"#).has_items("messages"));
        assert!(!parse(r#"{"model":"m","messages":"hi"}"#).has_items("messages"));
        assert!(!parse(r#"{"model":"m"}"#).has_items("messages"));
    }

    #[test]
    fn an_openai_stream_asks_for_usage() {
        let request = parse(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[]}"#);
        assert!(request.stream && !request.include_usage);
        let value: serde_json::Value = serde_json::from_slice(&request.body_for("u", Native::OpenAiChat)).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        let asked = parse(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
        assert!(asked.include_usage);
    }

    #[test]
    fn bad_bodies_are_named() {
        let err = |text: &str| RawRequest::parse(Bytes::from(text.to_string())).unwrap_err().to_string();
        assert!(err("[1]").contains("JSON object"));
        assert!(err(r#"{"model": 5}"#).contains("model: must be a string"));
        assert!(err(r#"{"messages": []}"#).contains("model: missing"));
        assert!(err(r#"{"model": "m",}"#).contains("not valid JSON"));
        assert!(err(r#"{"model": "m"} x"#).contains("trailing"));
        assert!(err(r#"{"model": "m", "a": [1,}"#).contains("not valid JSON"));
    }
}
