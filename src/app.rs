//! Wiring: builds the shared state from a validated [`Config`], binds the
//! proxy and admin listeners, serves until told to stop, then drains
//! in-flight requests within `server.shutdown_grace`.
//!
//! [`Gateway::start`] returns as soon as both listeners are bound (tests
//! bind `127.0.0.1:0` and read the addresses back); `serve` waits for
//! SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::admin::metrics::MetricsSources;
use crate::auth::Authenticator;
use crate::auth::extract::CredentialHeaders;
use crate::auth::usage::{self, UsageRecorder};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::manage::{KeyManager, history};
use crate::policy::routes::RouteTable;
use crate::problem::ProblemRenderer;
use crate::proxy::exchange::Exchange;
use crate::proxy::forward::{ForwardSettings, Forwarder};
use crate::proxy::gate::Gate;
use crate::proxy::serve::{self, ServeError, ServeSettings};
use crate::proxy::{ProxyState, RateLimitHeaderNames};
use crate::ratelimit::{RateLimitError, RateLimiter};
use crate::store::{self, SharedStore, StoreError, redact_url};
use crate::telemetry::metrics::{Metrics, MetricsError};
use crate::token::{TokenConfigError, Tokens};

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

impl From<ServeError> for AppError {
    fn from(error: ServeError) -> Self {
        match error {
            ServeError::Listener { addr, source } => Self::Bind { addr, source },
            ServeError::Lanes(why) => Self::Lanes(why),
        }
    }
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
            config.authenticator.clone(),
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
        let limiter = RateLimiter::start(&config.rate_limit, clock.clone()).await?;
        let gate = Gate::new(
            authenticator.clone(),
            routes,
            config.plans.clone(),
            credentials,
            limiter.clone(),
        );
        let forwarder = Forwarder::new(ForwardSettings {
            upstream: config.upstream.clone(),
            max_body_bytes: config.server.max_body_bytes,
            credential_headers: header_names,
        })
        .map_err(|e| AppError::Upstream(e.to_string()))?;
        let usage = Arc::new(UsageRecorder::new(
            store.clone(),
            clock.clone(),
            config.usage.flush_interval,
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
        let serve_settings = ServeSettings::new(
            grace,
            config.server.max_header_bytes,
            config.server.header_read_timeout,
            config.server.max_connections,
        );
        let manager = KeyManager::new(
            store.clone(),
            config.keys.clone(),
            config.plans.keys().cloned().collect(),
            clock.clone(),
        )
        .with_retention(config.usage.retention);
        let mut tasks = vec![
            authenticator.spawn_change_poller(shutdown_rx.clone()),
            usage.spawn_flusher(shutdown_rx.clone()),
            // Every replica prunes: the deletes are idempotent.
            manager.spawn_pruner(history::PRUNE_INTERVAL, shutdown_rx.clone()),
            tokio::spawn(admin::serve(
                admin_listener,
                admin::AdminState::new(
                    manager,
                    &config.admin,
                    clock.clone(),
                    MetricsSources {
                        metrics: metrics.clone(),
                        authenticator: authenticator.clone(),
                        limiter: limiter.clone(),
                        usage: usage.clone(),
                        proxy_connections: serve_settings.open_connections(),
                    },
                )
                .with_console_scopes(route_scopes(config)),
                shutdown_rx.clone(),
                grace,
            )),
        ];
        tasks.extend(serve::start(proxy_listener, proxy_addr, &state, &shutdown_rx, &serve_settings).await?);
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

    /// Writes the usage counted so far to the store now, as the flusher
    /// does every `usage.flush_interval`; returns the requests written.
    pub async fn flush_usage(&self) -> Result<u64, StoreError> {
        self.usage.flush().await
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

/// Every scope the route table requires, sorted: what the console offers
/// when creating a key.
fn route_scopes(config: &Config) -> Vec<String> {
    let scopes: std::collections::BTreeSet<&String> = config.routes.iter().flat_map(|r| &r.scopes).collect();
    scopes.into_iter().cloned().collect()
}
