//! The batching trace writer: a bounded queue in front of one thread that writes traces in
//! transactions. A full queue makes senders wait (back-pressure); nothing is dropped, and
//! `shutdown` returns only after every queued trace is on disk.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result, Store, Trace};

/// Most traces written in one transaction.
const MAX_BATCH: usize = 2048;
/// After a small batch the writer rests this long before looking again, so that under load
/// it wakes once per batch rather than once per trace (each wake is a context switch taken
/// from the request path's CPU).
const REST: std::time::Duration = std::time::Duration::from_millis(20);

enum Message {
    Trace(Box<Trace>),
    Shutdown(oneshot::Sender<()>),
}

/// The sending side, cloned into every request handler.
#[derive(Clone)]
pub struct TraceSink {
    tx: mpsc::Sender<Message>,
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSink").field("capacity", &self.tx.capacity()).finish()
    }
}

impl TraceSink {
    /// Queues a trace, waiting while the queue is full.
    pub async fn send(&self, trace: Trace) -> Result<()> {
        self.tx.send(Message::Trace(Box::new(trace))).await.map_err(|_| Error::WriterStopped)
    }

    /// Queues a trace from synchronous code (a dropped stream): never waits, and when the
    /// queue is full hands the trace to a task that waits for room.
    pub fn send_now(&self, trace: Trace) {
        match self.tx.try_send(Message::Trace(Box::new(trace))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let tx = self.tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        handle.spawn(async move {
                            if tx.send(message).await.is_err() {
                                tracing::error!("trace writer stopped; a trace was not written");
                            }
                        });
                    }
                    Err(_) => tracing::error!("trace queue full outside the runtime; a trace was not written"),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::error!("trace writer stopped; a trace was not written"),
        }
    }
}

#[derive(Debug)]
pub struct TraceWriter {
    sink: TraceSink,
    thread: Option<JoinHandle<u64>>,
}

impl TraceWriter {
    pub fn spawn(store: Arc<Store>, capacity: usize) -> TraceWriter {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let thread = std::thread::Builder::new()
            .name("keel-trace-writer".into())
            .spawn(move || write_loop(&store, rx, capacity))
            .expect("spawn the trace writer thread");
        TraceWriter { sink: TraceSink { tx }, thread: Some(thread) }
    }

    pub fn sink(&self) -> TraceSink {
        self.sink.clone()
    }

    /// Writes every trace queued so far, stops the thread, and returns how many it wrote.
    pub async fn shutdown(mut self) -> u64 {
        let (done_tx, done_rx) = oneshot::channel();
        if self.sink.tx.send(Message::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        let thread = self.thread.take().expect("shutdown runs once");
        tokio::task::spawn_blocking(move || thread.join().unwrap_or(0)).await.unwrap_or(0)
    }
}

/// Puts the calling thread in the idle scheduling class: trace writing is background work,
/// and a request's thread that wakes up takes the CPU from it at once, where a merely niced
/// thread can keep its time slice. Where the class is refused, the thread is niced instead.
#[expect(unsafe_code, reason = "sched_setscheduler and setpriority are plain libc calls on the calling thread")]
fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `param` is a valid sched_param for the call; `pid = 0` / `who = 0` is the
    // calling thread on Linux.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        }
    }
}

fn write_loop(store: &Store, mut rx: mpsc::Receiver<Message>, capacity: usize) -> u64 {
    background_priority();
    let mut written = 0u64;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut done: Option<oneshot::Sender<()>> = None;
    while done.is_none() {
        let Some(first) = rx.blocking_recv() else { break };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Trace(trace) => batch.push(*trace),
                Message::Shutdown(ack) => {
                    // Stop taking new traces, then take what is already queued.
                    rx.close();
                    done = Some(ack);
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Rest only when the queue is far from full; under pressure, keep draining.
        let light = batch.len() < (capacity / 2).min(MAX_BATCH);
        flush(store, &mut batch, &mut written);
        if light && done.is_none() {
            std::thread::sleep(REST);
        }
    }
    while let Ok(message) = rx.try_recv() {
        if let Message::Trace(trace) = message {
            batch.push(*trace);
            if batch.len() >= MAX_BATCH {
                flush(store, &mut batch, &mut written);
            }
        }
    }
    flush(store, &mut batch, &mut written);
    if let Some(ack) = done {
        let _ = ack.send(());
    }
    written
}

fn flush(store: &Store, batch: &mut Vec<Trace>, written: &mut u64) {
    if batch.is_empty() {
        return;
    }
    // A failed write is retried a few times (the file may be busy) before it is reported.
    for attempt in 0..5 {
        match store.insert_traces(batch) {
            Ok(()) => {
                *written += batch.len() as u64;
                batch.clear();
                return;
            }
            Err(err) if attempt < 4 => {
                tracing::warn!(error = %err, "trace write failed; retrying");
                std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
            }
            Err(err) => tracing::error!(error = %err, n_traces = batch.len(), "trace write failed; traces lost"),
        }
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::TraceWriter;
    use crate::{Store, Trace};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_senders_wait_and_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("keel-writer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Store::open(&dir.join("t.db")).unwrap());
        // A queue of 4 for 5,000 traces from 50 concurrent senders.
        let writer = TraceWriter::spawn(store.clone(), 4);
        let mut tasks = Vec::new();
        for sender in 0..50 {
            let sink = writer.sink();
            tasks.push(tokio::spawn(async move {
                for idx in 0..100 {
                    let trace = Trace { id: format!("{sender}-{idx}"), created_ms: idx, ..Trace::default() };
                    sink.send(trace).await.unwrap();
                }
            }));
        }
        // Traces sent from synchronous code (dropped streams) take the non-waiting path.
        for idx in 0..100 {
            writer.sink().send_now(Trace { id: format!("now-{idx}"), ..Trace::default() });
        }
        for task in tasks {
            task.await.unwrap();
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let written = writer.shutdown().await;
        assert_eq!(written, 5_100);
        assert_eq!(store.count_traces().unwrap(), 5_100);
        let _ = std::fs::remove_dir_all(dir);
    }
}
