//! Rate limiting: whether one more request of a subject fits every window of
//! its plan, and the values of the `RateLimit-*` and `Retry-After` headers
//! (SPEC §4, §5).
//!
//! This module owns the counting, the choice between the local and the
//! Redis backend, and the fallback from Redis to local counters. It leaves
//! to its callers what a subject is (a key id, or an owner for plans with
//! `per = "owner"`), skipping unlimited plans, and rendering headers and the
//! 429 response (`proxy`).
//!
//! # Semantics
//!
//! Every window of a plan applies at once and all-or-nothing: a request
//! counts against every window only if every window has room, and a denied
//! request counts nowhere, so a client hammering a full one-minute window
//! does not burn its hourly allowance.
//!
//! Windows are *fixed* and aligned to the Unix epoch: a window of length
//! `per` containing `now` starts at `now - now % per`. The count per window
//! is exact. The price of fixed windows is the boundary effect: a client may
//! spend a whole window's allowance at the end of one window and again at
//! the start of the next, so up to twice the limit can pass within one
//! window length spanning the boundary. A plan's shorter windows bound that
//! burst (`500/min` caps what `10000/h` lets through around the hour), and
//! in exchange a window costs one counter, not a log of timestamps.
//!
//! Why not `governor`: its GCRA keeps one "theoretical arrival time" per
//! limiter and offers no way to ask several limiters first and charge them
//! only if all agree, so a request denied by the minute window would already
//! have been charged to the hour window, with no way to take it back. GCRA
//! also smooths admissions (one per `per / requests` after a burst) rather
//! than counting requests per window, so neither "exactly N per window" nor
//! `RateLimit-Remaining` would mean what SPEC §5 says. Counting fixed
//! windows ourselves is a few lines and exact.
//!
//! # Backends
//!
//! - **Local** (`local.rs`, the default): per replica, exact under any
//!   concurrency (one short `std::sync::Mutex` section per check, over one
//!   of 16 shards). Memory: per subject, one small entry with one counter per
//!   window length; an entry goes once all its windows have ended (swept by
//!   later checks, amortised; no background task). A check costs a clock
//!   read, one hash, one uncontended lock and a map lookup, well under a
//!   microsecond.
//! - **Redis** (`redis.rs`): shared by every replica and exact across them:
//!   one Lua script per request checks and counts all of the subject's
//!   windows atomically (`EVALSHA`, falling back to `EVAL` on `NOSCRIPT`),
//!   with time from Redis `TIME` so replica clock skew does not matter.
//!   Memory: per subject and window length one small hash `{s, c}` that
//!   expires at its window's end. A check costs one round trip on a fixed
//!   pool of multiplexed connections.
//!
//! # Fallback
//!
//! No request fails because of Redis. A check that Redis does not answer
//! within the response timeout (or answers with an error) is answered from
//! the local counters, and the limiter switches to [`BackendState::RedisFallback`]
//! with one `warn!`: from then on checks go straight to the local counters
//! without waiting on Redis, while a background probe reconnects every
//! `probe_interval` and switches back with one `info!` once a script round
//! trip succeeds. An unreachable Redis at startup is not an error: the
//! limiter starts in fallback. While in fallback each replica enforces the
//! full limits on its own (up to N× across N replicas), and what it admitted
//! is not added to Redis afterwards.

mod local;
mod redis;
mod window;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

pub use self::local::LocalLimiter;
use self::redis::{RedisBackend, RedisFailure};
pub use self::window::{Verdict, WindowStatus};
use crate::clock::SharedClock;
use crate::policy::plans::PlanLimit;

/// Rate-limiting settings (`[rate_limit]`), built by `config` directly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimitSettings {
    /// Where the counters live (`rate_limit.backend`, and the `redis_*`
    /// keys for Redis).
    pub backend: Backend,
    /// Which headers responses carry (`rate_limit.headers`).
    pub headers: RateLimitHeaders,
}

/// Where rate-limit counters live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// In this process; each replica counts on its own.
    #[default]
    Local,
    /// In Redis, shared by every replica.
    Redis(RedisSettings),
}

/// How to reach the Redis backend.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`. May hold a password: it is
    /// never logged, and `Debug` redacts it.
    pub url: String,
    /// Prepended to every key, so several gateways (or tests) can share one
    /// Redis. Default `keygate:rl:`.
    pub key_prefix: String,
    /// Multiplexed connections kept open; each carries any number of
    /// concurrent requests. At least 1; default 4.
    pub pool_size: usize,
    /// Limit on opening one connection. Default 1 s.
    pub connect_timeout: Duration,
    /// Limit on one check's round trip, after which the check is answered
    /// locally and the limiter falls back. Default 100 ms.
    pub timeout: Duration,
    /// How often a limiter in fallback tries Redis again. Default 1 s.
    pub probe_interval: Duration,
}

impl RedisSettings {
    /// Default key prefix.
    pub const DEFAULT_KEY_PREFIX: &'static str = "keygate:rl:";
    /// Default pool size: a few sockets keep one slow reply from delaying
    /// every other check queued behind it on the same connection.
    pub const DEFAULT_POOL_SIZE: usize = 4;
    /// Default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default response timeout: a healthy Redis answers in well under a
    /// millisecond, and every check in flight waits this long before an
    /// outage is noticed.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
    /// Default probe interval while in fallback.
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);

    /// Settings for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            timeout: Self::DEFAULT_TIMEOUT,
            probe_interval: Self::DEFAULT_PROBE_INTERVAL,
        }
    }

    fn validate(&self) -> Result<(), RateLimitError> {
        let checks = [
            ("pool_size", self.pool_size == 0, "must be at least 1"),
            (
                "connect_timeout",
                self.connect_timeout.is_zero(),
                "must be positive",
            ),
            ("timeout", self.timeout.is_zero(), "must be positive"),
            (
                "probe_interval",
                self.probe_interval.is_zero(),
                "must be positive",
            ),
        ];
        match checks.into_iter().find(|(_, bad, _)| *bad) {
            Some((field, _, problem)) => Err(RateLimitError::InvalidSetting { field, problem }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("probe_interval", &self.probe_interval)
            .finish()
    }
}

/// `url` with any userinfo (user and password) replaced by `***`. Written
/// here rather than borrowed from `store`: adapters do not import each other
/// (STYLE §2).
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Why a rate limiter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The Redis URL does not parse, or needs a feature this build lacks
    /// (TLS). The reason never repeats the URL.
    #[error("the rate-limit Redis URL is not usable: {reason}")]
    InvalidRedisUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// A Redis setting is out of range.
    #[error("the rate-limit Redis setting {field} {problem}")]
    InvalidSetting {
        /// The [`RedisSettings`] field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Which counters a limiter is using right now (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Configured local: in-process counters.
    Local,
    /// Configured Redis, and Redis answers.
    Redis,
    /// Configured Redis, but it is unreachable: local counters until the
    /// probe reaches it again.
    RedisFallback,
}

impl BackendState {
    /// A stable lowercase name, e.g. for a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Redis => "redis",
            Self::RedisFallback => "redis_fallback",
        }
    }
}

/// Which rate-limit headers responses carry (`rate_limit.headers`, SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitHeaders {
    /// None.
    Off,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (the default).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
}

impl RateLimitHeaders {
    /// The limit, remaining and reset header names (lowercase), or `None`
    /// when headers are off.
    pub fn names(self) -> Option<[&'static str; 3]> {
        match self {
            Self::Off => None,
            Self::Ietf => Some(["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]),
            Self::XRateLimit => Some(["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]),
        }
    }
}

/// Low bit of [`RedisLink::state`]: Redis answers.
const MODE_REDIS: u64 = 0;
/// Low bit of [`RedisLink::state`]: falling back to local counters.
const MODE_FALLBACK: u64 = 1;

/// A generation (bumped on every recovery) and a mode in one word, so a
/// check that started before a recovery cannot knock the fresh pool back
/// into fallback with its stale failure: its compare-and-swap expects the
/// old generation.
fn pack(generation: u64, mode: u64) -> u64 {
    (generation << 1) | mode
}

/// The Redis side of a limiter, shared with its probe task.
#[derive(Debug)]
struct RedisLink {
    backend: RedisBackend,
    /// [`pack`]ed generation and mode.
    state: AtomicU64,
    /// Wakes the probe when the limiter falls back.
    wake: Notify,
    /// Switches to fallback so far (a start without Redis counts).
    fallbacks: AtomicU64,
    probe_interval: Duration,
}

impl RedisLink {
    /// Switches to fallback if the state is still `seen` (Redis, in the same
    /// generation), logging the switch once.
    fn fall_back(&self, seen: u64, cause: &RedisFailure) {
        let fallback = seen | MODE_FALLBACK;
        if self
            .state
            .compare_exchange(seen, fallback, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            warn!(
                redis.addr = self.backend.target(),
                error = %cause,
                "Redis is unreachable; rate limits fall back to this replica's local counters \
                 until it answers"
            );
            self.wake.notify_one();
        } else {
            debug!(error = %cause, "a Redis rate-limit check failed; answered from local counters");
        }
    }

    /// While in fallback, tries Redis every `probe_interval` and switches
    /// back once it answers. Only this task leaves fallback, so a plain
    /// store suffices there.
    async fn probe(self: Arc<Self>) {
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state & MODE_FALLBACK == 0 {
                // `notify_one` leaves a permit if we are not waiting yet, so
                // a fallback between the load and here is not missed.
                self.wake.notified().await;
                continue;
            }
            tokio::time::sleep(self.probe_interval).await;
            match self.backend.connect().await {
                Ok(()) => {
                    self.state
                        .store(pack((state >> 1) + 1, MODE_REDIS), Ordering::Release);
                    info!(
                        redis.addr = self.backend.target(),
                        "Redis answers again; rate limits are shared through it"
                    );
                }
                Err(e) => debug!(error = %e, "Redis probe failed; staying on local rate-limit counters"),
            }
        }
    }
}

/// The rate limiter: cheap to share behind an `Arc`; every method takes
/// `&self`.
#[derive(Debug)]
pub struct RateLimiter {
    /// The counters of the local backend, and the fallback of the Redis one.
    local: LocalLimiter,
    redis: Option<Arc<RedisLink>>,
    probe: Option<AbortHandle>,
}

impl RateLimiter {
    /// Builds the limiter for `settings`, reading local time from `clock`.
    /// For Redis, connects the pool first; an unreachable Redis is not an
    /// error (the limiter starts in fallback, says so once, and keeps
    /// probing), but an unusable URL or setting is. Must run inside a tokio
    /// runtime (the Redis probe is a task).
    pub async fn start(
        settings: &RateLimitSettings,
        clock: SharedClock,
    ) -> Result<Arc<Self>, RateLimitError> {
        let local = LocalLimiter::new(clock);
        let Backend::Redis(redis_settings) = &settings.backend else {
            return Ok(Arc::new(Self {
                local,
                redis: None,
                probe: None,
            }));
        };
        redis_settings.validate()?;
        let backend = RedisBackend::new(redis_settings)?;
        let mode = match backend.connect().await {
            Ok(()) => {
                info!(
                    redis.addr = backend.target(),
                    "rate limits are shared through Redis"
                );
                MODE_REDIS
            }
            Err(e) => {
                warn!(
                    redis.addr = backend.target(),
                    error = %e,
                    "Redis is unreachable at startup; rate limits use this replica's local counters \
                     until it answers"
                );
                MODE_FALLBACK
            }
        };
        let link = Arc::new(RedisLink {
            backend,
            state: AtomicU64::new(pack(0, mode)),
            wake: Notify::new(),
            fallbacks: AtomicU64::new(u64::from(mode == MODE_FALLBACK)),
            probe_interval: redis_settings.probe_interval,
        });
        let probe = tokio::spawn(Arc::clone(&link).probe()).abort_handle();
        Ok(Arc::new(Self {
            local,
            redis: Some(link),
            probe: Some(probe),
        }))
    }

    /// Checks `subject` against every window in `limits` and, if all allow
    /// it, counts the request in all of them. Never fails: Redis trouble is
    /// answered from local counters. `limits` must hold distinct window
    /// lengths (plans do); an empty `limits` answers [`Verdict::Unlimited`].
    pub async fn check(&self, subject: &str, limits: &[PlanLimit]) -> Verdict {
        if limits.is_empty() {
            return Verdict::Unlimited;
        }
        if let Some(link) = &self.redis {
            let seen = link.state.load(Ordering::Acquire);
            if seen & MODE_FALLBACK == 0 {
                match link.backend.check(subject, limits).await {
                    Ok(verdict) => return verdict,
                    Err(cause) => link.fall_back(seen, &cause),
                }
            }
        }
        self.local.check(subject, limits)
    }

    /// Which counters checks use right now.
    pub fn state(&self) -> BackendState {
        match &self.redis {
            None => BackendState::Local,
            Some(link) if link.state.load(Ordering::Acquire) & MODE_FALLBACK == 0 => BackendState::Redis,
            Some(_) => BackendState::RedisFallback,
        }
    }

    /// How often the limiter has fallen back from Redis to local counters
    /// (starting without Redis counts once); 0 for the local backend.
    pub fn fallbacks(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |link| link.fallbacks.load(Ordering::Relaxed))
    }

    /// The local counters (the backend, or the Redis fallback), e.g. for
    /// their size in `/metrics` or an explicit [`LocalLimiter::evict_expired`].
    pub fn local(&self) -> &LocalLimiter {
        &self.local
    }

    /// Stops the Redis probe; a limiter in fallback then stays there. Also
    /// done on drop.
    pub fn shutdown(&self) {
        if let Some(probe) = &self.probe {
            probe.abort();
        }
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        self.shutdown();
    }
}
