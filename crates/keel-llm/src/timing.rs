//! Time spent waiting on upstreams, summed per request through a task-local, so the server
//! can report keel's own time (`x-keel-overhead-us`) as the total minus the waiting.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static UPSTREAM_NANOS: Cell<u64>;
}

/// Runs `future` with a fresh upstream-time counter; returns its output and the time it
/// spent waiting on upstreams.
pub async fn scope<F: Future>(future: F) -> (F::Output, Duration) {
    UPSTREAM_NANOS
        .scope(Cell::new(0), async move {
            let output = future.await;
            (output, upstream_so_far())
        })
        .await
}

/// Upstream time counted so far in the current scope (zero outside one).
pub fn upstream_so_far() -> Duration {
    Duration::from_nanos(UPSTREAM_NANOS.try_with(Cell::get).unwrap_or(0))
}

/// Awaits `future`, counting the wait as upstream time.
pub async fn waiting<F: Future>(future: F) -> F::Output {
    let started = Instant::now();
    let output = future.await;
    let nanos = started.elapsed().as_nanos() as u64;
    let _ = UPSTREAM_NANOS.try_with(|cell| cell.set(cell.get() + nanos));
    output
}
