//! Wiring: builds the shared state from a validated [`Config`], binds the
//! proxy and admin listeners, serves until told to stop, then drains
//! in-flight requests within `server.shutdown_grace`.
//!
//! [`Gateway::start`] returns as soon as both listeners are bound (tests
//! bind `127.0.0.1:0` and read the addresses back); `serve` waits for
//! SIGTERM/SIGINT.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::admin;
use crate::admin::metrics::MetricsSources;
use crate::auth::Authenticator;
use crate::auth::extract::CredentialHeaders;
use crate::auth::usage::{self, UsageRecorder};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::manage::KeyManager;
use crate::policy::routes::RouteTable;
use crate::problem::ProblemRenderer;
use crate::proxy::exchange::Exchange;
use crate::proxy::forward::{ForwardSettings, Forwarder};
use crate::proxy::gate::Gate;
use crate::proxy::sniff::{AmbiguousFraming, Observed, Verdicts};
use crate::proxy::{Connection, ProxyState, RateLimitHeaderNames};
use crate::ratelimit::{RateLimitError, RateLimiter};
use crate::store::{self, SharedStore, StoreError, redact_url};
use crate::telemetry::metrics::{Metrics, MetricsError};
use crate::token::{TokenConfigError, Tokens};

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
struct LaneSettings {
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

/// Why the gateway could not start.
#[derive(Debug, Error)]
pub enum AppError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The upstream settings are unusable.
    #[error("invalid upstream settings: {0}")]
    Upstream(String),
    /// The metrics registry could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] MetricsError),
    /// The rate limiter's settings are unusable.
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    /// The token settings are unusable (config checks them first).
    #[error("invalid token settings: {0}")]
    Tokens(#[from] TokenConfigError),
    /// The proxy's serving threads could not be started.
    #[error("cannot start the proxy's serving threads: {0}")]
    Lanes(String),
}

/// A running gateway: both listeners bound and serving.
#[derive(Debug)]
pub struct Gateway {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    store: SharedStore,
    usage: Arc<UsageRecorder>,
    limiter: Arc<RateLimiter>,
}

impl Gateway {
    /// Opens the store (migrating it unless `database.auto_migrate = false`),
    /// builds the state and binds both listeners.
    pub async fn start(config: &Config, clock: SharedClock) -> Result<Self, AppError> {
        let store = store::open(&config.database).await?;
        if config.database.auto_migrate {
            let report = store.migrate().await?;
            if !report.applied.is_empty() {
                tracing::info!(applied = ?report.applied, version = report.current, "migrated the key store");
            }
        }
        let tokens = match config.token_settings() {
            Some(settings) => Some(Arc::new(Tokens::new(&settings)?)),
            None => None,
        };
        let authenticator = Authenticator::start_with_tokens(
            store.clone(),
            config.auth_settings(),
            clock.clone(),
            tokens.clone(),
        )
        .await?;
        let header_names: Vec<HeaderName> = config
            .auth
            .headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.name.as_bytes()).ok())
            .collect();
        let credentials = CredentialHeaders::new(&header_names);
        let routes = RouteTable::new(
            config.routes.clone(),
            config.auth.default_scopes.clone(),
            config.auth.method_scopes,
        );
        let metrics = Arc::new(Metrics::new()?);
        let limiter = RateLimiter::start(&config.rate_limiter_settings(), clock.clone()).await?;
        let gate = Gate::new(
            authenticator.clone(),
            routes,
            config.plans.clone(),
            credentials,
            limiter.clone(),
        );
        let forwarder = Forwarder::new(ForwardSettings {
            authority: config.upstream.authority.clone(),
            base_path: config.upstream.base_path.clone(),
            timeout: config.upstream.timeout,
            connect_timeout: config.upstream.connect_timeout,
            pool_max_idle_per_host: config.upstream.pool_max_idle_per_host,
            pool_idle_timeout: config.upstream.pool_idle_timeout,
            max_body_bytes: config.server.max_body_bytes,
            credential_headers: header_names,
        })
        .map_err(|e| AppError::Upstream(e.to_string()))?;
        let usage = Arc::new(UsageRecorder::new(
            store.clone(),
            clock.clone(),
            usage::FLUSH_INTERVAL,
            usage::MAX_RETAINED,
        ));
        let state = Arc::new(ProxyState {
            gate,
            forwarder,
            renderer: ProblemRenderer::new(&config.errors),
            max_header_bytes: config.server.max_header_bytes,
            max_body_bytes: config.server.max_body_bytes,
            usage: usage.clone(),
            rate_limit_headers: RateLimitHeaderNames::new(config.rate_limit.headers),
            metrics: metrics.clone(),
            exchange: tokens
                .as_ref()
                .map(|tokens| Exchange::new(Arc::clone(tokens), store.clone(), clock.clone())),
        });

        let proxy_listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.server.admin_listen).await?;
        let proxy_addr = local_addr(&proxy_listener, config.server.listen)?;
        let admin_addr = local_addr(&admin_listener, config.server.admin_listen)?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let grace = config.server.shutdown_grace;
        // hyper refuses heads beyond its buffer on its own (a bare 431); keep
        // that buffer above our limit so the gateway answers first, in the
        // problem shape.
        let lane_settings = LaneSettings {
            grace,
            max_buf: (config.server.max_header_bytes * 2 + 8192).max(8192),
            max_header_bytes: config.server.max_header_bytes,
            header_read_timeout: config.server.header_read_timeout,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
            max_connections: config.server.max_connections,
            open: Arc::new(AtomicU64::new(0)),
        };
        let mut tasks = vec![
            authenticator.spawn_change_poller(shutdown_rx.clone()),
            usage.spawn_flusher(shutdown_rx.clone()),
            tokio::spawn(admin::serve(
                admin_listener,
                admin::AdminState::new(
                    KeyManager::new(
                        store.clone(),
                        config.keys.clone(),
                        config.plans.keys().cloned().collect(),
                        clock.clone(),
                    ),
                    &config.admin,
                    clock.clone(),
                    MetricsSources {
                        metrics: metrics.clone(),
                        authenticator: authenticator.clone(),
                        limiter: limiter.clone(),
                        usage: usage.clone(),
                        proxy_connections: Arc::clone(&lane_settings.open),
                    },
                ),
                shutdown_rx.clone(),
                grace,
            )),
        ];
        tasks.extend(start_lanes(proxy_listener, proxy_addr, &state, &shutdown_rx, &lane_settings).await?);
        if tokens.is_some() {
            tasks.push(tokio::spawn(sweep_sessions(
                store.clone(),
                clock.clone(),
                shutdown.subscribe(),
            )));
        }
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, upstream = %redact_url(&config.upstream.url), "keygate is serving");
        Ok(Self {
            proxy_addr,
            admin_addr,
            shutdown,
            tasks,
            store,
            usage,
            limiter,
        })
    }

    /// The bound proxy address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The rate limiter (its backend state: local, Redis, or falling back).
    pub fn rate_limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// The store this gateway uses.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Stops accepting, drains in-flight requests (bounded by
    /// `server.shutdown_grace`), waits for every task, then flushes the
    /// usage counts (after the drain, so the last requests are counted).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a gateway task failed during shutdown");
            }
        }
        self.limiter.shutdown();
        if let Err(e) = self.usage.flush().await {
            tracing::error!(error = %e, "cannot write the final usage counts; they are lost");
        }
        tracing::info!("keygate stopped");
    }
}

/// How often expired token-exchange sessions are deleted.
const SESSION_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Sessions are deleted this long after their last token expired, so a
/// replica whose clock runs behind never misses a row it still needs.
const SESSION_SWEEP_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// Deletes sessions whose tokens have all expired, now and then, until
/// shutdown. Every replica may run it: the delete is idempotent.
async fn sweep_sessions(store: SharedStore, clock: SharedClock, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(SESSION_SWEEP_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        match store
            .delete_expired_sessions(clock.now() - SESSION_SWEEP_MARGIN)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "deleted expired token-exchange sessions"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete expired token-exchange sessions; retrying later")
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, AppError> {
    listener
        .local_addr()
        .map_err(|source| AppError::Bind { addr, source })
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
fn lanes() -> Result<&'static [Handle], AppError> {
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
        .map_err(|e| AppError::Lanes(e.clone()))
}

/// Starts serving `listener` on every lane; returns the lanes' tasks (each
/// ends once shutdown has drained its connections).
async fn start_lanes(
    listener: TcpListener,
    addr: SocketAddr,
    state: &Arc<ProxyState>,
    shutdown: &watch::Receiver<bool>,
    settings: &LaneSettings,
) -> Result<Vec<JoinHandle<()>>, AppError> {
    let lanes = lanes()?;
    let listener = listener
        .into_std()
        .map_err(|source| AppError::Bind { addr, source })?;
    let mut tasks = Vec::with_capacity(lanes.len());
    for lane in lanes {
        let shared = listener
            .try_clone()
            .map_err(|source| AppError::Bind { addr, source })?;
        // Registered from the lane itself: a socket belongs to the runtime
        // that registers it.
        let registered = lane
            .spawn(async move { TcpListener::from_std(shared) })
            .await
            .map_err(|e| AppError::Lanes(e.to_string()))?
            .map_err(|source| AppError::Bind { addr, source })?;
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
    settings: LaneSettings,
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

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
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
