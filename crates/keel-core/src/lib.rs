//! keel's domain types: the canonical chat model every wire format translates to and from,
//! and the typed config schema. This crate does no IO (reading the clock aside).

pub mod chat;
pub mod config;
pub mod label;
pub mod schema;

pub use chat::{
    ChatRequest, ChatResponse, ContentPart, EmbedInput, EmbedRequest, EmbedResponse, FinishReason,
    ImageSource, Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, ToolDef, Usage,
};

/// Milliseconds since the Unix epoch, by the system clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A 128-bit id as 32 hex digits: 48 bits of Unix milliseconds, then 80 random bits.
/// Ids sort by time, so stores index them append-mostly (like UUIDv7).
pub fn time_ordered_id(unix_ms: u64, random: u128) -> String {
    format!("{:012x}{:020x}", unix_ms & 0xffff_ffff_ffff, random & ((1u128 << 80) - 1))
}
