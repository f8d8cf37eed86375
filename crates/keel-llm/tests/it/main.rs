//! keel-llm's integration tests: one binary, a module per subject.

mod recorded;
