//! keel's domain types: the canonical chat model every wire format translates to and from,
//! and the typed config schema. This crate does no IO.

pub mod chat;
pub mod config;

pub use chat::{
    ChatRequest, ChatResponse, ContentPart, EmbedInput, EmbedRequest, EmbedResponse, FinishReason,
    ImageSource, Message, ResponseFormat, Role, StreamEvent, ToolCall, ToolChoice, ToolDef, Usage,
};

/// A random 128-bit id rendered as 32 hex digits, for traces and response ids.
pub fn random_id(rng: impl FnOnce() -> u128) -> String {
    format!("{:032x}", rng())
}
