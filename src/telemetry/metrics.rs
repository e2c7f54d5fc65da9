//! Prometheus metrics: one registry per gateway (no global recorder, so tests
//! can run many gateways in one process), rendered in the text exposition
//! format by the admin listener's `/metrics`.
//!
//! Two kinds of values live here:
//! - **pushed** by the proxy on every request ([`Metrics::observe_request`]):
//!   requests by outcome and route, and latency histograms: the whole
//!   request until the response head, the part the upstream took, and the
//!   part keygate added (the difference);
//! - **mirrored** at scrape time from counters the modules already keep
//!   (auth cache, argon2, store health, change feed, rate-limit backend,
//!   usage): the caller reads them into a [`Snapshot`], and
//!   [`Metrics::render`] copies it in, so the hot path pays nothing extra
//!   for them and this module depends on no other part of keygate.
//!
//! Metric names (the README's metrics reference and `deploy/` use them):
//! `keygate_requests_total{outcome,route}`, `keygate_request_duration_seconds`,
//! `keygate_gateway_duration_seconds`, `keygate_upstream_duration_seconds`,
//! `keygate_auth_cache_{hits,misses,invalidations}_total`,
//! `keygate_auth_cache_entries`, `keygate_argon2_verifications_total`,
//! `keygate_argon2_queue_depth`, `keygate_auth_throttled_total`,
//! `keygate_auth_flood`, `keygate_store_up`, `keygate_store_errors_total`,
//! `keygate_change_feed_lag_seconds`, `keygate_ratelimit_backend{state}`,
//! `keygate_ratelimit_redis_fallbacks_total`, `keygate_usage_dropped_total`,
//! `keygate_proxy_connections`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::{Collector, GenericCounter, GenericGauge};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Why the registry could not be built (a duplicate or malformed metric:
/// a bug, caught by this module's tests).
pub type MetricsError = prometheus::Error;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// States of the rate-limit backend, as `keygate_ratelimit_backend{state}`
/// labels (exactly one is 1 at a time).
pub const RATE_LIMIT_STATES: [&str; 3] = ["local", "redis", "redis_fallback"];

/// Latency buckets for time keygate adds (seconds): 50 µs to 1 s.
const GATEWAY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Latency buckets for whole requests and the upstream (seconds): 250 µs to 30 s.
const UPSTREAM_BUCKETS: [f64; 15] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Values read from the rest of the gateway at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Requests answered from a fresh cache entry (cumulative).
    pub cache_hits: u64,
    /// Requests that had to resolve their key (cumulative).
    pub cache_misses: u64,
    /// Changes from the store's change feed applied to the cache (cumulative).
    pub cache_invalidations: u64,
    /// Verified secrets cached now.
    pub cache_entries: u64,
    /// argon2 verifications run (cumulative).
    pub argon2_verifications: u64,
    /// Requests waiting for an argon2 permit now.
    pub argon2_queue_depth: u64,
    /// Requests refused as throttled without hashing (cumulative).
    pub throttled: u64,
    /// Whether the gateway is in forgery-flood mode.
    pub flood: bool,
    /// Whether the key store answered the last change-feed poll.
    pub store_up: bool,
    /// Store calls on the request path that failed (cumulative).
    pub store_errors: u64,
    /// Commit-to-applied time of the last applied change.
    pub change_feed_lag: Duration,
    /// The rate-limit backend's state, one of [`RATE_LIMIT_STATES`].
    pub rate_limit_state: &'static str,
    /// Falls back from Redis to local counters (cumulative).
    pub redis_fallbacks: u64,
    /// Usage counts dropped because the store kept refusing them (cumulative).
    pub usage_dropped: u64,
    /// Client connections open on the proxy listener now (at most
    /// `server.max_connections`).
    pub proxy_connections: u64,
}

/// One gateway's metrics. Share it as an `Arc`; every method takes `&self`.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: Histogram,
    gateway_seconds: Histogram,
    upstream_seconds: Histogram,
    mirrored: Mirrored,
    // std Mutex: serialises scrapes, so two at once cannot both add the same
    // delta to a mirrored counter; never held across an await.
    render: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The metrics mirrored from a [`Snapshot`].
struct Mirrored {
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_invalidations: IntCounter,
    cache_entries: IntGauge,
    argon2_verifications: IntCounter,
    argon2_queue_depth: IntGauge,
    throttled: IntCounter,
    flood: IntGauge,
    store_up: IntGauge,
    store_errors: IntCounter,
    change_feed_lag: Gauge,
    rate_limit_backend: IntGaugeVec,
    redis_fallbacks: IntCounter,
    usage_dropped: IntCounter,
    proxy_connections: IntGauge,
}

impl Metrics {
    /// A registry with every keygate metric registered.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "keygate_requests_total",
                "Proxied requests by outcome (ok or the SPEC error code) and route",
            ),
            &["outcome", "route"],
        )?;
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        };
        let request_seconds = histogram(
            "keygate_request_duration_seconds",
            "Time from a request's arrival to its response head, upstream included",
            &UPSTREAM_BUCKETS,
        )?;
        let gateway_seconds = histogram(
            "keygate_gateway_duration_seconds",
            "Time keygate added to a request (whole request minus the upstream's part)",
            &GATEWAY_BUCKETS,
        )?;
        let upstream_seconds = histogram(
            "keygate_upstream_duration_seconds",
            "Time from forwarding a request to the upstream's response head",
            &UPSTREAM_BUCKETS,
        )?;
        let counter = |name: &str, help: &str| IntCounter::new(name, help);
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let mirrored = Mirrored {
            cache_hits: counter(
                "keygate_auth_cache_hits_total",
                "Requests answered from a fresh auth cache entry",
            )?,
            cache_misses: counter(
                "keygate_auth_cache_misses_total",
                "Requests whose key was not freshly cached",
            )?,
            cache_invalidations: counter(
                "keygate_auth_cache_invalidations_total",
                "Key changes from the store's change feed applied to the cache",
            )?,
            cache_entries: gauge("keygate_auth_cache_entries", "Verified keys cached")?,
            argon2_verifications: counter("keygate_argon2_verifications_total", "argon2 verifications run")?,
            argon2_queue_depth: gauge(
                "keygate_argon2_queue_depth",
                "Requests waiting for an argon2 verification permit",
            )?,
            throttled: counter(
                "keygate_auth_throttled_total",
                "Requests refused without hashing by the failed-verification throttle",
            )?,
            flood: gauge(
                "keygate_auth_flood",
                "1 while failed verifications exceed auth.max_failures_per_second",
            )?,
            store_up: gauge(
                "keygate_store_up",
                "1 while the key store answers the change-feed poll",
            )?,
            store_errors: counter(
                "keygate_store_errors_total",
                "Key store calls on the request path that failed",
            )?,
            change_feed_lag: Gauge::new(
                "keygate_change_feed_lag_seconds",
                "Seconds from the last applied key change's commit to its application here",
            )?,
            rate_limit_backend: IntGaugeVec::new(
                Opts::new(
                    "keygate_ratelimit_backend",
                    "1 for the rate-limit backend state in use: local, redis or redis_fallback",
                ),
                &["state"],
            )?,
            redis_fallbacks: counter(
                "keygate_ratelimit_redis_fallbacks_total",
                "Times the rate limiter fell back from Redis to local counters",
            )?,
            usage_dropped: counter(
                "keygate_usage_dropped_total",
                "Usage counts dropped because the store kept refusing them",
            )?,
            proxy_connections: gauge(
                "keygate_proxy_connections",
                "Client connections open on the proxy listener (at most server.max_connections)",
            )?,
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(request_seconds.clone()),
            Box::new(gateway_seconds.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(mirrored.cache_hits.clone()),
            Box::new(mirrored.cache_misses.clone()),
            Box::new(mirrored.cache_invalidations.clone()),
            Box::new(mirrored.cache_entries.clone()),
            Box::new(mirrored.argon2_verifications.clone()),
            Box::new(mirrored.argon2_queue_depth.clone()),
            Box::new(mirrored.throttled.clone()),
            Box::new(mirrored.flood.clone()),
            Box::new(mirrored.store_up.clone()),
            Box::new(mirrored.store_errors.clone()),
            Box::new(mirrored.change_feed_lag.clone()),
            Box::new(mirrored.rate_limit_backend.clone()),
            Box::new(mirrored.redis_fallbacks.clone()),
            Box::new(mirrored.usage_dropped.clone()),
            Box::new(mirrored.proxy_connections.clone()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            requests,
            request_seconds,
            gateway_seconds,
            upstream_seconds,
            mirrored,
            render: Mutex::new(()),
        })
    }

    /// Counts one proxied request: its outcome (`ok` or a SPEC code), its
    /// route label, the time to its response head, and the upstream's part
    /// of it (`None` when it was not forwarded).
    pub fn observe_request(&self, outcome: &str, route: &str, total: Duration, upstream: Option<Duration>) {
        self.requests.with_label_values(&[outcome, route]).inc();
        self.request_seconds.observe(total.as_secs_f64());
        let upstream = upstream.unwrap_or_default();
        if !upstream.is_zero() {
            self.upstream_seconds.observe(upstream.as_secs_f64());
        }
        self.gateway_seconds
            .observe(total.saturating_sub(upstream).as_secs_f64());
    }

    /// The Prometheus text exposition of every metric, after copying in
    /// `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _scrape = self.render.lock().unwrap_or_else(|p| p.into_inner());
        let m = &self.mirrored;
        mirror(&m.cache_hits, snapshot.cache_hits);
        mirror(&m.cache_misses, snapshot.cache_misses);
        mirror(&m.cache_invalidations, snapshot.cache_invalidations);
        set(&m.cache_entries, snapshot.cache_entries);
        mirror(&m.argon2_verifications, snapshot.argon2_verifications);
        set(&m.argon2_queue_depth, snapshot.argon2_queue_depth);
        mirror(&m.throttled, snapshot.throttled);
        set(&m.flood, u64::from(snapshot.flood));
        set(&m.store_up, u64::from(snapshot.store_up));
        mirror(&m.store_errors, snapshot.store_errors);
        m.change_feed_lag.set(snapshot.change_feed_lag.as_secs_f64());
        for state in RATE_LIMIT_STATES {
            m.rate_limit_backend
                .with_label_values(&[state])
                .set(i64::from(state == snapshot.rate_limit_state));
        }
        mirror(&m.redis_fallbacks, snapshot.redis_fallbacks);
        mirror(&m.usage_dropped, snapshot.usage_dropped);
        set(&m.proxy_connections, snapshot.proxy_connections);

        let mut out = Vec::new();
        // Encoding into a Vec fails only for metric families the registry
        // itself would not produce; an empty answer then beats a panic.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Raises a mirrored counter to `value` (counters never go down; a source
/// that restarted from zero is not possible within one process).
fn mirror(counter: &GenericCounter<prometheus::core::AtomicU64>, value: u64) {
    counter.inc_by(value.saturating_sub(counter.get()));
}

fn set(gauge: &GenericGauge<prometheus::core::AtomicI64>, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_snapshots_render_in_the_text_format() {
        let metrics = Metrics::new().unwrap();
        metrics.observe_request(
            "ok",
            "/v1/**",
            Duration::from_millis(3),
            Some(Duration::from_millis(2)),
        );
        metrics.observe_request("invalid_key", "default", Duration::from_micros(80), None);
        let mut snapshot = Snapshot {
            cache_hits: 5,
            store_up: true,
            rate_limit_state: "redis_fallback",
            change_feed_lag: Duration::from_millis(1500),
            ..Snapshot::default()
        };
        let text = metrics.render(&snapshot);
        for line in [
            "keygate_requests_total{outcome=\"ok\",route=\"/v1/**\"} 1",
            "keygate_requests_total{outcome=\"invalid_key\",route=\"default\"} 1",
            "keygate_request_duration_seconds_count 2",
            "keygate_upstream_duration_seconds_count 1",
            "keygate_gateway_duration_seconds_count 2",
            "keygate_auth_cache_hits_total 5",
            "keygate_store_up 1",
            "keygate_change_feed_lag_seconds 1.5",
            "keygate_ratelimit_backend{state=\"redis_fallback\"} 1",
            "keygate_ratelimit_backend{state=\"redis\"} 0",
            "# TYPE keygate_auth_cache_hits_total counter",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // The gateway part of the forwarded request is total - upstream = 1 ms.
        assert!(
            text.contains("keygate_gateway_duration_seconds_bucket{le=\"0.001\"} 2"),
            "{text}"
        );

        // Mirrored counters follow their source without double counting.
        snapshot.cache_hits = 7;
        let text = metrics.render(&snapshot);
        assert!(text.contains("keygate_auth_cache_hits_total 7"), "{text}");
        let text = metrics.render(&snapshot);
        assert!(text.contains("keygate_auth_cache_hits_total 7"), "{text}");
    }
}
