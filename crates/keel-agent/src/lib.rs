//! keel-agent: agents defined in TOML (or in Rust), run by a loop that calls the model
//! through keel's gateway, runs tools concurrently, pauses for human approval, keeps one
//! budget per run, and checkpoints every step so a run survives its process.

pub mod definition;
pub mod mcp;
pub mod memory;
pub mod model;
pub mod rag;
pub mod runtime;
pub mod tools;
pub mod workflow;

pub use definition::{AgentDef, Approval, Budget, HandoffSpec, Instructions, McpServerSpec, McpToolSpec, MemorySpec, Mode, ToolSpec};
pub use mcp::McpServer;
pub use memory::Memory;
pub use model::{ChatModel, Reply, Scripted};
pub use runtime::{Agent, AgentBuilder, Outcome, RunEvent, RunStatus, Runner, Step};
pub use tools::{FunctionTool, Tool, ToolBox, ToolContext};
pub use workflow::{Workflow, WorkflowDef, WorkflowOutcome};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent definition: {0}")]
    Definition(String),
    #[error(transparent)]
    Checkpoint(#[from] keel_store::Error),
    #[error("store: {0}")]
    Store(String),
    #[error("{0}")]
    Mcp(String),
    #[error("memory: {0}")]
    Memory(String),
    #[error("run {id} has already ended ({status}{}); start a new run", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Finished { id: String, status: String, reason: String },
    #[error("run {id} is being driven by another process ({holder}); wait for it, or try again once that process has ended")]
    Busy { id: String, holder: String },
    #[error("run {id} is not waiting for approval (it is {status})")]
    NotWaiting { id: String, status: String },
    #[error("run {id} is not waiting for call {call}; it waits for: {waiting}")]
    NoSuchCall { id: String, call: String, waiting: String },
}
