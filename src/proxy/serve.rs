//! Serving the proxy listener: the lanes (one single-threaded runtime per
//! CPU) accepting client connections, hyper's HTTP/1 and HTTP/2 settings
//! (the limits that make floods cost the attacker), the connection limit,
//! and the HTTP/1 framing observer (`sniff.rs`) under every connection.
//! `app` binds the listener and hands it here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::sniff::{AmbiguousFraming, Observed, Verdicts};
use super::{Connection, ProxyState};

/// Streams one HTTP/2 client connection may have open at once. A proxied
/// request holds an upstream connection, so this also bounds what one
/// client connection can make the gateway open upstream.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams a client may open and reset before the gateway accepted them
/// (the "rapid reset" attack, CVE-2023-44487): past it the connection gets
/// GOAWAY `ENHANCE_YOUR_CALM`, so a flood costs the attacker a connection
/// per 20 resets, not the gateway a request each.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the gateway may reset because of the client's protocol errors
/// before it closes the connection ("MadeYouReset", CVE-2025-8671).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// How often an idle HTTP/2 connection is pinged: a client that went away
/// does not hold a connection slot (`server.max_connections`) for ever.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the answer to that ping may take before the connection closes.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the lanes serve client connections, from `[server]`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// How long in-flight requests may finish after shutdown begins.
    grace: Duration,
    /// hyper's HTTP/1 read buffer (above `max_header_bytes`, see `start`).
    max_buf: usize,
    /// `server.max_header_bytes`, also HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`:
    /// a header block (CONTINUATION frames included) past it ends the
    /// stream before it is buffered whole.
    max_header_bytes: usize,
    /// `server.header_read_timeout`.
    header_read_timeout: Duration,
    /// One permit per open client connection, shared by every lane
    /// (`server.max_connections`). A lane takes its permit before it
    /// accepts, so idle lanes hold one each: the count of open connections
    /// is `open`, not the permits taken.
    connections: Arc<Semaphore>,
    /// `server.max_connections`, for the log line when it is reached.
    max_connections: usize,
    /// Client connections open now (`keygate_proxy_connections`).
    open: Arc<AtomicU64>,
}

impl ServeSettings {
    /// Settings from `[server]`: `grace` is `server.shutdown_grace`, the
    /// rest their namesakes.
    pub fn new(
        grace: Duration,
        max_header_bytes: usize,
        header_read_timeout: Duration,
        max_connections: usize,
    ) -> Self {
        Self {
            grace,
            // hyper refuses heads beyond its buffer on its own (a bare
            // 431); keep that buffer above our limit so the gateway answers
            // first, in the problem shape.
            max_buf: (max_header_bytes * 2 + 8192).max(8192),
            max_header_bytes,
            header_read_timeout,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            open: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The count of client connections open now, for metrics.
    pub fn open_connections(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.open)
    }
}

/// Why the proxy could not start serving.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The listener could not be shared with the lanes.
    #[error("cannot listen on {addr}: {source}")]
    Listener {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The serving threads could not be started.
    #[error("cannot start the proxy's serving threads: {0}")]
    Lanes(String),
}

/// The proxy's serving threads ("lanes"): one single-threaded Tokio runtime
/// per CPU the process may use (`available_parallelism`, which follows CPU
/// affinity and cgroup quotas), started on first use and shared by every
/// gateway the process runs.
///
/// Why not the multi-thread runtime the rest of the gateway runs on: a
/// proxied request is a chain of wake-ups between the client connection's
/// task and the upstream connection's task, and on one thread the same
/// request path costs less. Measured with `bench/proxy.sh` (proxy and
/// upstream sharing one CPU): 14.1 against 16.9 us of CPU a request, and
/// the proxy preempted by the upstream 0.58 against 0.90 times a request
/// (a bare hyper proxy shows the same difference). Each lane runs
/// whole connections and owns its upstream pool, so a request stays on its
/// thread; every lane accepts from the one listening socket, so a
/// connection goes to whichever lane is free to take it first.
///
/// Lanes live as long as the process: an I/O resource stays registered with
/// the runtime that opened it (a store connection a cache miss opened on a
/// lane, say), and a runtime that stopped would break it for whoever uses
/// it next.
fn lanes() -> Result<&'static [Handle], ServeError> {
    static LANES: OnceLock<Result<Vec<Handle>, String>> = OnceLock::new();
    LANES
        .get_or_init(|| {
            let count = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
            (0..count)
                .map(|i| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    let handle = runtime.handle().clone();
                    std::thread::Builder::new()
                        .name(format!("keygate-lane-{i}"))
                        .spawn(move || runtime.block_on(std::future::pending::<()>()))
                        .map_err(|e| e.to_string())?;
                    Ok(handle)
                })
                .collect()
        })
        .as_deref()
        .map_err(|e| ServeError::Lanes(e.clone()))
}

/// Starts serving `listener` on every lane; returns the lanes' tasks (each
/// ends once shutdown has drained its connections).
pub async fn start(
    listener: TcpListener,
    addr: SocketAddr,
    state: &Arc<ProxyState>,
    shutdown: &watch::Receiver<bool>,
    settings: &ServeSettings,
) -> Result<Vec<JoinHandle<()>>, ServeError> {
    let lanes = lanes()?;
    let listener = listener
        .into_std()
        .map_err(|source| ServeError::Listener { addr, source })?;
    let mut tasks = Vec::with_capacity(lanes.len());
    for lane in lanes {
        let shared = listener
            .try_clone()
            .map_err(|source| ServeError::Listener { addr, source })?;
        // Registered from the lane itself: a socket belongs to the runtime
        // that registers it.
        let registered = lane
            .spawn(async move { TcpListener::from_std(shared) })
            .await
            .map_err(|e| ServeError::Lanes(e.to_string()))?
            .map_err(|source| ServeError::Listener { addr, source })?;
        tasks.push(lane.spawn(serve_lane(
            registered,
            Arc::clone(state),
            lanes.len(),
            shutdown.clone(),
            settings.clone(),
        )));
    }
    Ok(tasks)
}

/// One lane: accepts proxy connections until shutdown, serving them with
/// its own upstream pool, then drains them.
async fn serve_lane(
    listener: TcpListener,
    state: Arc<ProxyState>,
    lanes: usize,
    mut shutdown: watch::Receiver<bool>,
    settings: ServeSettings,
) {
    let upstream = state.forwarder.pool(lanes);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_buf);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let mut warned_full_at: Option<std::time::Instant> = None;
    loop {
        // A connection slot first: at `server.max_connections`, further
        // clients wait in the kernel's listen backlog (not in memory here)
        // until a connection closes.
        let permit = match Arc::clone(&settings.connections).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Another lane idle in accept also holds a permit: only
                // open connections at the limit are worth a warning.
                let full = settings.open.load(Ordering::Relaxed) >= settings.max_connections as u64;
                if full && warned_full_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        "server.max_connections client connections are open; new ones wait until one closes"
                    );
                    warned_full_at = Some(std::time::Instant::now());
                }
                tokio::select! {
                    permit = Arc::clone(&settings.connections).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = shutdown.changed() => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client) = match accepted {
                    // (A connection another lane took first is no error:
                    // the accept future keeps waiting.)
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = Arc::new(Connection::new(Arc::clone(&state), client, upstream.clone()));
                let verdicts = Verdicts::new();
                let io = TokioIo::new(Observed::new(stream, Arc::clone(&verdicts)));
                let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    // HTTP/1 calls the service in request order, which is
                    // the order the observer numbered the heads in.
                    if verdicts.next_is_ambiguous() {
                        req.extensions_mut().insert(AmbiguousFraming);
                    }
                    let connection = Arc::clone(&connection);
                    async move { Ok::<_, Infallible>(connection.handle(req).await) }
                });
                let connection = builder.serve_connection(io, service).into_owned();
                let connection = graceful.watch(connection);
                let open = Arc::clone(&settings.open);
                open.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("proxy lane drained"),
        () = tokio::time::sleep(settings.grace) => tracing::warn!(grace_ms = settings.grace.as_millis() as u64, "shutdown grace elapsed; closing the remaining connections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lanes_start_once_one_thread_per_cpu_and_run_what_they_are_given() {
        let first = lanes().unwrap();
        let expected = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(first.len(), expected);
        assert!(std::ptr::eq(first, lanes().unwrap()), "started once, shared");
        for (i, lane) in first.iter().enumerate() {
            let name = lane
                .spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .unwrap();
            assert_eq!(name.as_deref(), Some(format!("keygate-lane-{i}").as_str()));
        }
    }
}
