//! The APIs keel serves, inbound: clients' requests in each API's wire format read into the
//! canonical model, and canonical answers and streams written back in that format. The
//! server parses with these and never builds a wire body itself.

pub mod anthropic;
pub mod openai;
pub mod responses;
