//! One file per command group: each parses its arguments (clap), calls the library that owns
//! the work, and prints (tables, `--json`, progress). `main.rs` dispatches to them.

pub mod agents;
pub mod bench;
pub mod datasets;
pub mod detector;
pub mod evals;
pub mod gateway;
pub mod guard;
pub mod keys;
pub mod mcp;
pub mod memory;
pub mod prompts;
pub mod rag;
pub mod redteam;
pub mod serve;

/// An error that ends the process with this exit code, its message already printed (an eval
/// that missed a threshold exits with 100).
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}
