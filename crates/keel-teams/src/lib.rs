//! Who may call keel and how much: virtual keys (`sk-keel-…`, stored as hashes) that belong
//! to teams, which may nest under an org; the [`Directory`] every replica holds in memory and
//! reloads within a second of any change; rate limits and budgets checked before a call.

pub mod admin;
mod directory;
mod key;
mod ledger;
mod period;

pub use directory::{Caller, Denied, Directory};
pub use ledger::{Ask, BudgetScope, Ledger, RateView, Refusal, Reservation, Window};
pub use key::{NewKey, SECRET_PREFIX, hash_secret, new_key};
pub use period::{Period, period_start_ms};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] keel_store::Error),
    /// A setting keel refuses; the text says which and why.
    #[error("{0}")]
    Invalid(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}
