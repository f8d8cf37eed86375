//! keel's improvement loop: the prompt registry (versions, labels, A/B splits, rendering),
//! datasets read from files, eval files (keel's TOML, promptfoo's YAML), scorers and judges,
//! and eval runs that resume and cache.

pub mod compare;
pub mod dataset;
pub mod finetune;
pub mod judge;
pub mod model;
pub mod prompt;
pub mod registry;
pub mod run;
pub mod score;
pub mod spec;

pub use prompt::{Format, PromptConfig, PromptDef, PromptMessage};
pub use model::{Answer, CallMade, Model};
pub use registry::{Ask, PRODUCTION, Registry, Resolved};
pub use run::{Options, Outcome, Progress, Summary};
pub use spec::Spec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A prompt, version or label that does not exist; the text names it.
    #[error("{0}")]
    NotFound(String),
    /// A template reads a variable the caller did not give; the text names it.
    #[error("{0}")]
    MissingVariable(String),
    /// A definition, split or label keel cannot use; the text says why.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] keel_store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
