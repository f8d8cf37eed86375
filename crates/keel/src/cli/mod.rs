//! One file per command group: each parses its arguments (clap), calls the library that owns
//! the work, and prints (tables, `--json`, progress). `main.rs` dispatches to them.

pub mod agents;
pub mod bench;
pub mod detector;
pub mod gateway;
pub mod guard;
pub mod mcp;
pub mod memory;
pub mod prompts;
pub mod rag;
pub mod redteam;
pub mod serve;
