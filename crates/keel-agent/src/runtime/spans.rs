//! A run in progress in this process (`Live`), and the OpenTelemetry-style spans its steps
//! are recorded as (`invoke_agent`, `chat`, `execute_tool`, `guard`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use keel_core::now_ms;
use keel_store::SpanRecord;

use super::{Agent, Step};

/// One run in progress (this process's stretch of it).
pub(crate) struct Live<'a> {
    pub(crate) id: String,
    pub(crate) agent: &'a Agent,
    pub(crate) next_seq: AtomicI64,
    /// The trace its spans go in: its own id, or its caller's trace for a sub-agent.
    pub(crate) trace_id: String,
    /// This stretch's `invoke_agent` span, and the span it hangs under (a caller's tool call).
    pub(crate) span_id: String,
    pub(crate) parent_span: Option<String>,
    pub(crate) started: Instant,
    pub(crate) start_ms: i64,
    pub(crate) resumed: bool,
    /// The user the run serves, for long-term memory.
    pub(crate) user: Option<String>,
    /// Handoff targets' system prompts.
    pub(crate) systems: BTreeMap<String, String>,
}

/// Where a run's spans go: (trace id, parent span id).
pub(crate) type TraceParent = Option<(String, String)>;

impl<'a> Live<'a> {
    pub(crate) fn new(id: String, agent: &'a Agent, next_seq: i64, parent: TraceParent, resumed: bool, user: Option<String>, systems: BTreeMap<String, String>) -> Live<'a> {
        let (trace_id, parent_span) = match parent {
            Some((trace, span)) => (trace, Some(span)),
            None => (id.clone(), None),
        };
        Live {
            span_id: format!("{id}@{next_seq}"),
            id,
            agent,
            next_seq: AtomicI64::new(next_seq),
            trace_id,
            parent_span,
            started: Instant::now(),
            start_ms: now_ms(),
            resumed,
            user,
            systems,
        }
    }

    /// A span under this stretch's `invoke_agent` span; `at` is its start (Unix ms) and length (ms).
    pub(crate) fn span(&self, span_id: String, name: String, operation: &str, at: (i64, f64), ok: bool, attributes: serde_json::Value) -> SpanRecord {
        let (start_ms, duration_ms) = at;
        SpanRecord {
            trace_id: self.trace_id.clone(),
            span_id,
            parent_id: Some(self.span_id.clone()),
            name,
            operation: operation.into(),
            run_id: self.id.clone(),
            start_ms,
            duration_ms,
            status: if ok { "ok" } else { "error" }.into(),
            attributes: attributes.to_string(),
        }
    }

    /// The `chat` or `execute_tool` span of a step.
    pub(crate) fn span_of(&self, seq: i64, step: &Step) -> Option<SpanRecord> {
        let now = now_ms();
        match step {
            Step::Model { request, response, provider, cost_usd, ms, role } => Some(self.span(
                format!("{}:{seq}", self.id),
                format!("chat {}", request.model),
                "chat",
                (now - *ms as i64, *ms),
                true,
                serde_json::json!({
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": request.model,
                    "gen_ai.response.model": response.model,
                    "gen_ai.provider.name": provider,
                    "gen_ai.usage.input_tokens": response.usage.input_tokens,
                    "gen_ai.usage.output_tokens": response.usage.output_tokens,
                    "gen_ai.response.finish_reasons": [response.finish_reason],
                    "keel.cost_usd": cost_usd,
                    "keel.secure.role": role,
                    "keel.step": seq,
                }),
            )),
            Step::Tool { call_id, name, is_error, invalid, ms, guard, label, .. } => Some(self.span(
                format!("{}:{call_id}", self.id),
                format!("execute_tool {name}"),
                "execute_tool",
                (now - *ms as i64, *ms),
                !is_error,
                serde_json::json!({
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": name,
                    "gen_ai.tool.call.id": call_id,
                    "keel.tool.invalid_arguments": invalid,
                    "keel.guard.verdict": guard.as_ref().map(|d| d.verdict),
                    "keel.guard.policy": guard.as_ref().map(|d| &d.policy),
                    "keel.guard.arguments": guard.as_ref().map(|d| &d.arguments),
                    "keel.guard.output_label": label,
                    "keel.step": seq,
                }),
            )),
            Step::Guard { call_id, decision } => Some(self.span(
                format!("{}:{call_id}:guard", self.id),
                format!("guard {}", decision.tool),
                "guard",
                (now, 0.0),
                decision.verdict != keel_guard::Verdict::Deny,
                serde_json::json!({
                    "gen_ai.tool.name": decision.tool,
                    "gen_ai.tool.call.id": call_id,
                    "keel.guard.verdict": decision.verdict,
                    "keel.guard.policy": decision.policy,
                    "keel.guard.reason": decision.reason,
                    "keel.guard.capabilities": decision.capabilities,
                    "keel.guard.context": decision.context,
                    "keel.guard.arguments": decision.arguments,
                    "keel.step": seq,
                }),
            )),
            Step::Approval { .. } => None,
        }
    }
}
