//! keel-llm: everything that knows a wire format. `api` holds the APIs keel serves (OpenAI
//! and Anthropic requests read into the canonical model, answers and streams written back);
//! `providers` holds one file per upstream kind behind the `Provider` trait (the request keel
//! sends, the answers it reads); `router` picks routes, retries and falls over; `cost` prices
//! usage.

pub mod api;
pub mod cost;
mod error;
pub mod forward;
pub mod providers;
pub mod router;
pub mod sse;
pub mod timing;

pub use api::{anthropic, openai, responses};
pub use error::{Error, Result, scrub_secrets};
pub use forward::{Forwarded, Native, RawRequest, Relayed};
pub use providers::{EventStream, LocalBackend, LocalFactory, Provider, Relay, Upstream};
pub use router::{RouteInfo, Router};

use keel_core::ToolDef;
use serde_json::Value;

/// Checks a tool definition the way providers would, so a bad one fails with a clear 400
/// before any upstream sees it.
pub(crate) fn validate_tool(tool: &ToolDef) -> Result<(), String> {
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
