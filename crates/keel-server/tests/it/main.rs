//! keel-server's integration tests: a real keel router on loopback in front of the fake
//! upstream, driven over real HTTP.

mod errors;
mod feedback;
mod forward;
mod harness;
mod keys;
mod prompts;
mod routing;
mod responses;
mod translation;
