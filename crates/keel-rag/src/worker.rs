//! A client of a remote engine on its own thread with its own runtime, called synchronously:
//! the collection's methods stay synchronous (as they are over SQLite) whether or not their
//! caller is async.

use std::sync::mpsc;

type Job<C> = Box<dyn FnOnce(&tokio::runtime::Runtime, &C) + Send>;

pub struct Worker<C> {
    jobs: mpsc::Sender<Job<C>>,
}

impl<C: 'static> Worker<C> {
    /// Starts the thread and makes the client on it with `connect`.
    pub(crate) fn spawn<F>(name: String, connect: F) -> Result<Worker<C>, String>
    where
        F: FnOnce(&tokio::runtime::Runtime) -> Result<C, String> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job<C>>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let client = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|runtime| connect(&runtime).map(|client| (runtime, client)));
                match client {
                    Ok((runtime, client)) => {
                        let _ = ready_tx.send(Ok(()));
                        while let Ok(job) = queue.recv() {
                            job(&runtime, &client);
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        ready.recv().map_err(|_| "the engine's thread stopped".to_string())??;
        Ok(Worker { jobs })
    }

    /// Runs `f` on the client's thread and waits for it.
    pub(crate) fn call<T: Send + 'static>(&self, f: impl FnOnce(&tokio::runtime::Runtime, &C) -> Result<T, String> + Send + 'static) -> Result<T, String> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .send(Box::new(move |rt, client| {
                let _ = reply.send(f(rt, client));
            }))
            .map_err(|_| "the engine's connection is gone".to_string())?;
        answer.recv().map_err(|_| "the engine's connection is gone".to_string())?
    }
}

/// Where a remote engine is: set for the process, else read from an environment variable
/// (so no secret is written in a file).
pub struct Address {
    env: &'static str,
    set: std::sync::RwLock<Option<String>>,
}

impl Address {
    pub const fn new(env: &'static str) -> Address {
        Address { env, set: std::sync::RwLock::new(None) }
    }

    pub fn set(&self, value: Option<&str>) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = value.map(str::to_string);
    }

    /// The address set, else the variable's; blank counts as none.
    pub fn get(&self) -> Option<String> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner()).clone();
        set.or_else(|| std::env::var(self.env).ok()).filter(|v| !v.trim().is_empty())
    }
}
