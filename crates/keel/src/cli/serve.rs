//! `keel serve`: builds the app from the config, serves it, and on SIGTERM or Ctrl-C stops
//! accepting, drains in-flight requests, and flushes every trace before exiting.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use keel_server::{AppState, metrics::Metrics};
use keel_store::{Store, TraceWriter};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::settings::{self, Settings};

pub async fn run(config: Option<&Path>, listen: Option<SocketAddr>, pull: bool) -> anyhow::Result<()> {
    let settings = settings::load(config)?;
    let config = &settings.config;
    crate::local::ensure_models(config, pull).await?;
    let router = crate::local::router(config).context("could not set up the providers")?;
    let master_key = match &config.server.master_key_env {
        None => None,
        Some(env) => match Settings::env(env).filter(|key| !key.is_empty()) {
            Some(key) => Some(SecretString::from(key)),
            None => bail!("server.master_key_env names {env}, which is not set; export it or remove the setting"),
        },
    };
    let store_path = settings.store_path();
    let store = Arc::new(Store::open(&store_path)?);
    store.set_redactor(crate::settings::redactor(config));
    let router = Arc::new(router);
    let collections = Arc::new(keel_rag::Collections::new(crate::cli::rag::root()));
    let agents = match settings.agents_dir() {
        None => None,
        Some(dir) => {
            let mut agents = keel_server::agents::Agents::load(&dir, store.clone(), router.clone())?;
            agents.collections = Some(collections.clone());
            tracing::info!(agents = ?agents, "serving agents from {}", dir.display());
            Some(Arc::new(agents))
        }
    };
    let writer = TraceWriter::spawn(store.clone(), config.store.trace_buffer);
    let online = keel_server::evals::Online::new(&config.evals.online)?;
    let access = Arc::new(keel_teams::Directory::open(store.clone()).context("could not read the keys and teams")?);
    keel_server::access::keep_fresh(access.clone());
    let app = Arc::new(AppState {
        router,
        traces: writer.sink(),
        store: store.clone(),
        metrics: Metrics::default(),
        master_key,
        access,
        log_bodies: config.store.log_bodies,
        agents,
        rag: collections,
        prompts: Arc::new(keel_eval::Registry::new(
            store.clone(),
            Duration::try_from_secs_f64(config.prompts.cache_ttl_s.max(0.0)).unwrap_or(Duration::from_secs(86_400)),
        )),
        online,
    });
    let addr: SocketAddr = match listen {
        Some(addr) => addr,
        None => config.server.listen.get_ref().parse().context("server.listen is not a socket address")?,
    };
    raise_fd_limit();
    let workers = worker_count();
    let listeners = listen_on(addr, workers).await?;
    let local = listeners[0].local_addr()?;
    tracing::info!(
        listen = %local,
        workers,
        store = %store_path.display(),
        models = app.router.aliases().count(),
        "keel listening on http://{local}"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signalled(shutdown.clone()));
    let router = keel_server::router(app, config.server.max_body_bytes);
    let mut threads = Vec::with_capacity(workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        threads.push(serve_worker(index, listener.into_std()?, router.clone(), shutdown.clone())?);
    }
    let all_done = tokio::task::spawn_blocking(move || {
        threads.into_iter().map(|thread| thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked")))).collect::<Vec<_>>()
    });
    let drain = Duration::from_secs_f64(config.server.drain_timeout_s);
    let drained = tokio::select! {
        results = all_done => {
            for result in results.context("the workers failed")? {
                result.context("the server failed")?;
            }
            true
        }
        () = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => false,
    };
    if !drained {
        tracing::warn!(timeout_s = drain.as_secs_f64(), "in-flight requests did not finish in time; stopping anyway");
    }
    let written = writer.shutdown().await;
    tracing::info!(traces_written = written, "keel stopped; every queued trace is on disk");
    Ok(())
}

/// Serving threads: `KEEL_WORKERS`, else one per core.
fn worker_count() -> usize {
    std::env::var("KEEL_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// One listening socket per worker on the same address (SO_REUSEPORT), so the kernel spreads
/// connections across workers; a port of 0 is chosen by the first and shared by the rest.
async fn listen_on(addr: SocketAddr, workers: usize) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(workers);
    let mut bound = addr;
    for _ in 0..workers {
        let socket = if bound.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(bound).with_context(|| format!("could not listen on {addr}"))?;
        let listener = socket.listen(1024).with_context(|| format!("could not listen on {addr}"))?;
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// A serving thread with its own single-threaded runtime: a connection, its handler and the
/// upstream call it makes (through this worker's own connection pool) stay on one thread,
/// as in nginx's workers, instead of being handed between threads at every wake-up.
fn serve_worker(
    index: usize,
    listener: std::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let thread = std::thread::Builder::new().name(format!("keel-worker-{index}")).spawn(move || {
        keel_llm::providers::set_worker(index);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // Small JSON answers go out at once rather than waiting on Nagle's algorithm.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
            Ok(())
        })
    })?;
    Ok(thread)
}

pub(crate) async fn signalled(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::error!(error = %err, "could not listen for SIGTERM");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    shutdown.cancel();
}

/// Raises the open-file limit to its hard maximum: every proxied request holds two sockets.
#[expect(unsafe_code, reason = "getrlimit/setrlimit are plain libc calls on a stack struct")]
fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: `limit` is a valid, initialised rlimit for both calls.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            // Root may raise the hard limit too; anyone may raise the soft one to the hard.
            let wanted = libc::rlimit { rlim_cur: 262_144, rlim_max: limit.rlim_max.max(262_144) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 && limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}
