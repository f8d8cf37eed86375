//! The lease on a run: only one process drives a run at a time.

use std::path::Path;
use std::sync::Arc;

use keel_core::now_ms;
use keel_store::{SpanRecord, Store};

use super::random;
use crate::Error;

/// How long a run's lease lasts without renewal, and how often it is renewed.
pub(crate) const LEASE_MS: i64 = 30_000;
const LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(10);

/// The right to drive one run: two processes resuming the same run at once would both run
/// its pending tool calls. Held in the store with an expiry, renewed while the run goes on;
/// a holder on this machine whose process is gone is passed over at once.
pub(crate) struct Lease {
    store: Arc<Store>,
    run_id: String,
    owner: String,
    renewer: tokio::task::JoinHandle<()>,
    /// Given back already (with the drive's span).
    closed: bool,
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into())
}

/// Whether a lease holder (`host:pid:token`) is a process of this machine that has ended.
fn holder_is_gone(holder: &str) -> bool {
    let mut parts = holder.splitn(3, ':');
    let (Some(holder_host), Some(pid)) = (parts.next(), parts.next()) else { return true };
    holder_host == host() && !Path::new("/proc").join(pid).exists() && Path::new("/proc/self").exists()
}

impl Lease {
    /// A new lease holder's name: this machine, this process, and this drive.
    pub(crate) fn owner() -> String {
        format!("{}:{}:{:x}", host(), std::process::id(), random() as u64)
    }

    pub(crate) fn take(store: &Arc<Store>, run_id: &str) -> Result<Lease, Error> {
        let owner = Lease::owner();
        let now = now_ms();
        if let Some(holder) = store.acquire_lease(run_id, &owner, now, now + LEASE_MS, &holder_is_gone)? {
            return Err(Error::Busy { id: run_id.into(), holder });
        }
        Ok(Lease::held(store, run_id, owner))
    }

    /// A lease taken when the run was created (`Store::create_leased_run`).
    pub(crate) fn held(store: &Arc<Store>, run_id: &str, owner: String) -> Lease {
        let renewer = {
            let (store, run_id, owner) = (store.clone(), run_id.to_string(), owner.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LEASE_RENEW);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(err) = store.renew_lease(&run_id, &owner, now_ms() + LEASE_MS) {
                        tracing::warn!(run = %run_id, error = %err, "could not renew the run's lease");
                    }
                }
            })
        };
        Lease { store: store.clone(), run_id: run_id.into(), owner, renewer, closed: false }
    }

    /// Gives the lease back and records the drive's span, in one write.
    pub(crate) fn close(mut self, span: &SpanRecord) {
        self.renewer.abort();
        self.closed = true;
        if let Err(err) = self.store.close_drive(&self.run_id, &self.owner, span) {
            tracing::warn!(run = %self.run_id, error = %err, "could not record the run's span and give its lease back");
        }
    }
}

/// Given back when the drive ends, however it ends (a task cancelled mid-run included).
impl Drop for Lease {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.renewer.abort();
        if let Err(err) = self.store.release_lease(&self.run_id, &self.owner) {
            tracing::warn!(run = %self.run_id, error = %err, "could not release the run's lease");
        }
    }
}
