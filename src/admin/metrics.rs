//! `GET /metrics`: the gateway's Prometheus metrics. The handler reads the
//! counters the authenticator, the rate limiter and the usage recorder keep
//! into a [`Snapshot`] and lets [`Metrics`] render it with what the proxy
//! recorded per request. Open, like the health probes: scrapers carry no
//! admin token, and nothing here names a key or a secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;
use crate::auth::Authenticator;
use crate::auth::usage::UsageRecorder;
use crate::ratelimit::RateLimiter;
use crate::telemetry::metrics::{CONTENT_TYPE, Metrics, Snapshot};

/// What `/metrics` reads: the registry and the live sources it mirrors.
#[derive(Debug, Clone)]
pub struct MetricsSources {
    /// The registry the proxy records into.
    pub metrics: Arc<Metrics>,
    /// Auth cache, argon2 and change-feed counters.
    pub authenticator: Arc<Authenticator>,
    /// The rate-limit backend's state.
    pub limiter: Arc<RateLimiter>,
    /// Usage counts dropped.
    pub usage: Arc<UsageRecorder>,
    /// Client connections open on the proxy listener now.
    pub proxy_connections: Arc<AtomicU64>,
}

impl MetricsSources {
    /// The mirrored values as of now.
    pub fn snapshot(&self) -> Snapshot {
        let auth = self.authenticator.stats();
        Snapshot {
            cache_hits: auth.hits,
            cache_misses: auth.misses,
            cache_invalidations: auth.changes_applied,
            cache_entries: u64::try_from(auth.cached_entries).unwrap_or(u64::MAX),
            argon2_verifications: auth.hashes,
            argon2_queue_depth: auth.hash_queue_depth,
            throttled: auth.throttled,
            flood: auth.flooded,
            store_up: auth.store_up,
            store_errors: auth.store_errors,
            change_feed_lag: auth.change_feed_lag,
            rate_limit_state: self.limiter.state().as_str(),
            redis_fallbacks: self.limiter.fallbacks(),
            usage_dropped: self.usage.dropped(),
            proxy_connections: self.proxy_connections.load(Ordering::Relaxed),
        }
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses((
        status = 200,
        description = "Prometheus text exposition format (version 0.0.4): request counts by outcome \
                       and route, latency histograms, auth cache, argon2, store, change-feed and \
                       rate-limit backend state.",
        content_type = "text/plain",
        body = String
    ))
)]
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    let sources = &state.metrics;
    let text = sources.metrics.render(&sources.snapshot());
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}
