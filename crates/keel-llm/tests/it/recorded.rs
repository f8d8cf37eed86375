//! The provider adapters on recorded bodies (`tests/fixtures`, written from each provider's
//! API reference): every response, stream and error body is read by keel's adapter and its
//! canonical form is compared with a snapshot beside the fixture (`*.canonical`); one
//! canonical request is written in each provider's format and compared the same way.

use std::path::{Path, PathBuf};

use expect_test::expect_file;
use keel_core::StreamEvent;
use keel_llm::providers::{anthropic, gemini, openai};
use keel_llm::sse::SseDecoder;

fn fixture(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path);
    std::fs::read(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

/// The snapshot of a fixture: `openai/chat.json` → `openai/chat.json.canonical`.
fn snapshot(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{path}.canonical"))
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("canonical types serialize") + "\n"
}

/// Feeds a recorded SSE body through a decoder's `on_data`, as the HTTP stream does: one
/// canonical event a line, then the error that ended the stream, if one did.
fn decode_stream(path: &str, mut on_data: impl FnMut(&str, &mut Vec<StreamEvent>) -> keel_llm::Result<()>) -> String {
    let mut sse = SseDecoder::default();
    let mut frames = Vec::new();
    sse.push(&fixture(path), &mut frames);
    sse.finish(&mut frames);
    let mut out = String::new();
    for frame in frames.iter().filter(|frame| !frame.data.is_empty()) {
        let mut events = Vec::new();
        let result = on_data(&frame.data, &mut events);
        for event in events {
            out.push_str(&serde_json::to_string(&event).expect("events serialize"));
            out.push('\n');
        }
        if let Err(err) = result {
            out.push_str(&format!("error: {}\n", reason(&err)));
            break;
        }
    }
    out
}

/// What a decoder said was wrong (the call path adds the provider's name).
fn reason(err: &keel_llm::Error) -> String {
    match err {
        keel_llm::Error::Unreadable(message) => message.clone(),
        other => other.to_string(),
    }
}

fn check_response(path: &str, parsed: keel_llm::Result<impl serde::Serialize>) {
    let text = match parsed {
        Ok(value) => pretty(&value),
        Err(err) => format!("error: {}\n", reason(&err)),
    };
    expect_file![snapshot(path)].assert_eq(&text);
}

fn check_error(path: &str, read: fn(&[u8]) -> String) {
    expect_file![snapshot(path)].assert_eq(&format!("{}\n", read(&fixture(path))));
}

fn canonical_request() -> keel_core::ChatRequest {
    let wire: keel_llm::openai::WireChatRequest = serde_json::from_slice(&fixture("request.json")).expect("the request fixture parses");
    keel_llm::openai::chat_request_from_wire(wire).expect("the request fixture is valid")
}

#[test]
fn openai_responses() {
    for path in ["openai/chat.json", "openai/chat_tool_calls.json"] {
        check_response(path, openai::chat_response_from_wire(&fixture(path)));
    }
    check_response("openai/embeddings.json", openai::embed_response_from_wire(&fixture("openai/embeddings.json")));
    check_error("openai/error.json", openai::error_message);
}

#[test]
fn openai_streams() {
    for path in ["openai/chat_stream.sse", "openai/chat_stream_tool_calls.sse"] {
        let mut decoder = openai::ChunkDecoder::default();
        let text = decode_stream(path, |data, out| decoder.on_data(data, out));
        assert!(decoder.done, "{path}: [DONE] ends the stream");
        expect_file![snapshot(path)].assert_eq(&text);
    }
}

#[test]
fn openai_request() {
    let body = openai::chat_request_to_wire(&canonical_request(), "gpt-4o-mini", true);
    expect_file![snapshot("openai/request")].assert_eq(&pretty(&body));
}

#[test]
fn anthropic_responses() {
    for path in ["anthropic/message.json", "anthropic/message_tool_use.json"] {
        check_response(path, anthropic::messages_response_from_wire(&fixture(path), None));
    }
    check_error("anthropic/error.json", anthropic::error_message);
}

#[test]
fn anthropic_streams() {
    for path in ["anthropic/stream.sse", "anthropic/stream_tool_use.sse", "anthropic/stream_error.sse"] {
        let mut decoder = anthropic::EventDecoder::new(None);
        let text = decode_stream(path, |data, out| decoder.on_data(data, out));
        expect_file![snapshot(path)].assert_eq(&text);
    }
}

#[test]
fn anthropic_request() {
    let (body, json_tool) = anthropic::messages_request_to_wire(&canonical_request(), "claude-sonnet-4-5", false).expect("the request translates");
    assert_eq!(json_tool, None);
    expect_file![snapshot("anthropic/request")].assert_eq(&pretty(&body));
}

#[test]
fn gemini_responses() {
    for path in ["gemini/generate.json", "gemini/generate_function_call.json"] {
        check_response(path, gemini::generate_response_from_wire(&fixture(path)));
    }
    check_response("gemini/embeddings.json", gemini::embed_response_from_wire(&fixture("gemini/embeddings.json"), "gemini-embedding-001"));
    check_error("gemini/error.json", gemini::error_message);
}

#[test]
fn gemini_streams() {
    let mut decoder = gemini::ChunkDecoder::default();
    let text = decode_stream("gemini/stream.sse", |data, out| decoder.on_data(data, out));
    expect_file![snapshot("gemini/stream.sse")].assert_eq(&text);
}

#[test]
fn gemini_request() {
    let body = gemini::generate_request_to_wire(&canonical_request()).expect("the request translates");
    expect_file![snapshot("gemini/request")].assert_eq(&pretty(&body));
}
