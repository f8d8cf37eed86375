//! keel-server's integration tests: a real keel router on loopback in front of the fake
//! upstream, driven over real HTTP.

mod errors;
mod harness;
mod routing;
mod translation;
