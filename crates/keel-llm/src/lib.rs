//! keel-llm: everything that knows a provider's wire format. Format modules (`openai`,
//! `anthropic`, `gemini`) translate between the canonical model and each wire format, both
//! ways, streaming included; `provider` does the HTTP; `router` picks routes, retries and
//! falls over; `cost` prices usage.

pub mod anthropic;
pub mod cost;
mod error;
pub mod gemini;
pub mod openai;
pub mod provider;
pub mod router;
pub mod sse;
pub mod timing;

pub use error::{Error, Result, scrub_secrets};
pub use provider::{EventStream, LocalBackend, LocalFactory, Provider};
pub use router::{RouteInfo, Router};

use keel_core::ToolDef;
use serde_json::Value;

/// Checks a tool definition the way providers would, so a bad one fails with a clear 400
/// before any upstream sees it.
pub fn validate_tool(tool: &ToolDef) -> Result<(), String> {
    let name_ok = !tool.name.is_empty()
        && tool.name.len() <= 128
        && tool.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if !name_ok {
        return Err(format!(
            "tool name `{}` must be 1 to 128 characters of letters, digits, `_`, `-`, `.` or `:`",
            tool.name
        ));
    }
    let Value::Object(schema) = &tool.parameters else {
        return Err(format!("the parameters of `{}` must be a JSON Schema object", tool.name));
    };
    if let Some(kind) = schema.get("type")
        && kind != "object" {
            return Err(format!("the parameters of `{}` must have \"type\": \"object\", not {kind}", tool.name));
        }
    if let Some(properties) = schema.get("properties")
        && !properties.is_object() {
            return Err(format!("the `properties` of `{}` must be an object", tool.name));
        }
    if let Some(required) = schema.get("required") {
        let ok = required.as_array().is_some_and(|items| items.iter().all(Value::is_string));
        if !ok {
            return Err(format!("the `required` of `{}` must be an array of property names", tool.name));
        }
    }
    Ok(())
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { ALPHABET[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { ALPHABET[n as usize & 63] as char } else { '=' });
    }
    out
}
