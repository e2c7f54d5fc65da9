//! Tests of the limiter as the proxy uses it: backend choice, settings
//! errors, Redis exactness across instances, all-or-nothing in the script,
//! fallback and recovery.
//!
//! Redis tests are ignored unless asked for (`cargo test --
//! --include-ignored`, as `.ci/run` does); then `KEYGATE_TEST_REDIS` must
//! name a reachable server (e.g. `redis://127.0.0.1:6379`), and each test
//! runs under its own key prefix. Their windows
//! are a day or longer because Redis's clock cannot be moved: a test that
//! straddled a window boundary would see its counts reset.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::*;
use crate::clock::ManualClock;

const DAY: Duration = Duration::from_secs(86_400);

/// Bound on waiting for the probe to notice a change; generous, since it
/// only ends a wait that normally lasts one probe interval.
const STATE_WAIT: Duration = Duration::from_secs(10);

fn limit(requests: u64, per: Duration) -> PlanLimit {
    PlanLimit { requests, per }
}

fn manual_clock() -> SharedClock {
    let at = DateTime::from_timestamp(1_700_002_800, 0).unwrap();
    Arc::new(ManualClock::new(at))
}

/// The Redis URL under test. The tests calling it are `#[ignore]`d (so a
/// run without Redis says they did not run); run with `--include-ignored`,
/// they need `KEYGATE_TEST_REDIS`, and fail without it.
fn test_redis() -> String {
    match std::env::var("KEYGATE_TEST_REDIS") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "KEYGATE_TEST_REDIS is not set: set it to a Redis URL such as redis://127.0.0.1:6379 \
             to run the Redis tests"
        ),
    }
}

/// Settings for `url` under a key prefix no other test uses, with short
/// probe and response timeouts so fallback tests move quickly.
fn redis_settings(url: &str, prefix: &str) -> RateLimitSettings {
    let mut redis = RedisSettings::new(url);
    redis.key_prefix = prefix.to_owned();
    redis.probe_interval = Duration::from_millis(50);
    redis.timeout = Duration::from_millis(500);
    redis.connect_timeout = Duration::from_millis(500);
    RateLimitSettings {
        backend: Backend::Redis(redis),
        ..RateLimitSettings::default()
    }
}

fn unique_prefix() -> String {
    format!("keygate:test:{}:", ulid::Ulid::new())
}

/// A limiter on the Redis under test, which must be reachable.
async fn redis_limiter(url: &str, prefix: &str) -> Arc<RateLimiter> {
    let limiter = RateLimiter::start(&redis_settings(url, prefix), manual_clock())
        .await
        .unwrap();
    assert_eq!(
        limiter.state(),
        BackendState::Redis,
        "KEYGATE_TEST_REDIS is set but Redis is unreachable"
    );
    limiter
}

async fn cleanup(limiter: &RateLimiter) {
    let link = limiter.redis.as_ref().unwrap();
    link.backend.delete_prefixed_keys().await.unwrap();
}

/// A port with nothing listening on it (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `n` checks of `subject` concurrently, spread round robin over
/// `limiters`, and counts the admitted ones.
async fn admitted_concurrently(
    limiters: &[Arc<RateLimiter>],
    subject: &str,
    limits: &[PlanLimit],
    n: usize,
) -> usize {
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let limiter = Arc::clone(&limiters[i % limiters.len()]);
        let subject = subject.to_owned();
        let limits = limits.to_vec();
        tasks.spawn(async move { limiter.check(&subject, &limits).await.is_allowed() });
    }
    let mut admitted = 0;
    while let Some(allowed) = tasks.join_next().await {
        admitted += usize::from(allowed.unwrap());
    }
    admitted
}

async fn sequential(limiter: &RateLimiter, subject: &str, limits: &[PlanLimit], n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        admitted += usize::from(limiter.check(subject, limits).await.is_allowed());
    }
    admitted
}

/// Waits until `limiter` reports `want`, nudging it with `nudge` between
/// looks; panics after [`STATE_WAIT`].
async fn wait_for_state<F, Fut>(limiter: &RateLimiter, want: BackendState, mut nudge: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let deadline = tokio::time::Instant::now() + STATE_WAIT;
    while limiter.state() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?}, expected {want:?}",
            limiter.state()
        );
        nudge().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `url` with its `host:port` replaced by `127.0.0.1:<port>` (userinfo and
/// database kept).
fn with_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}://{userinfo}127.0.0.1:{port}{tail}")
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, hp)| hp)
        .to_owned()
}

/// A TCP forwarder to Redis on a fixed port: the outages Redis tests need.
/// It can be cut (listener and every connection closed) and restored, or
/// frozen (connections stay open, nothing is forwarded) and thawed.
struct Forwarder {
    port: u16,
    upstream: String,
    frozen: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Forwarder {
    fn new(port: u16, upstream: String) -> Self {
        Self {
            port,
            upstream,
            frozen: watch::Sender::new(false),
            tasks: JoinSet::new(),
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let upstream = self.upstream.clone();
        let frozen = self.frozen.subscribe();
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut frozen = frozen.clone();
                conns.spawn(async move {
                    if !*frozen.borrow() {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            // Biased: a freeze wins over bytes that arrived
                            // with it, so nothing sent after it is forwarded.
                            tokio::select! {
                                biased;
                                _ = frozen.wait_for(|f| *f) => {}
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                            }
                        }
                    }
                    // Frozen: hold the client's socket open and answer nothing.
                    std::future::pending::<()>().await;
                });
            }
        });
    }

    /// Aborting the accept task drops the listener and its connection set,
    /// which aborts (and so closes) every forwarded connection.
    async fn cut(&mut self) {
        self.tasks.shutdown().await;
    }

    /// Open connections go silent; new ones are accepted and stay silent.
    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// New connections are forwarded again (frozen ones stay silent).
    fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

#[tokio::test]
async fn local_backend_by_default() {
    let limiter = RateLimiter::start(&RateLimitSettings::default(), manual_clock())
        .await
        .unwrap();
    assert_eq!(limiter.state(), BackendState::Local);
    assert_eq!(limiter.state().as_str(), "local");
    let limits = [limit(3, Duration::from_secs(60))];
    assert_eq!(sequential(&limiter, "k", &limits, 5).await, 3);
    assert_eq!(limiter.check("k", &[]).await, Verdict::Unlimited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_backend_is_exact_under_concurrency() {
    let limiter = RateLimiter::start(&RateLimitSettings::default(), manual_clock())
        .await
        .unwrap();
    let limits = [
        limit(50, Duration::from_secs(60)),
        limit(500, Duration::from_secs(3_600)),
    ];
    assert_eq!(admitted_concurrently(&[limiter], "k", &limits, 200).await, 50);
}

#[tokio::test]
async fn unusable_settings_are_errors() {
    let bad_url = RateLimitSettings {
        backend: Backend::Redis(RedisSettings::new("not a url")),
        ..RateLimitSettings::default()
    };
    let err = RateLimiter::start(&bad_url, manual_clock()).await.unwrap_err();
    assert!(matches!(err, RateLimitError::InvalidRedisUrl { .. }), "{err:?}");
    let mut zero_pool = RedisSettings::new("redis://127.0.0.1:6379");
    zero_pool.pool_size = 0;
    let settings = RateLimitSettings {
        backend: Backend::Redis(zero_pool),
        ..RateLimitSettings::default()
    };
    let err = RateLimiter::start(&settings, manual_clock()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the rate-limit Redis setting pool_size must be at least 1"
    );
}

#[test]
fn redis_passwords_are_redacted() {
    let cases = [
        ("redis://:hunter2@cache:6379/0", "redis://***@cache:6379/0"),
        ("redis://user:hunter2@cache:6379", "redis://***@cache:6379"),
        ("redis://cache:6379", "redis://cache:6379"),
        ("redis://cache:6379/0?x=a@b", "redis://cache:6379/0?x=a@b"),
        ("no scheme:hunter2@x", "***"),
    ];
    for (url, shown) in cases {
        assert_eq!(redacted_url(url), shown, "{url}");
    }
    let debug = format!("{:?}", RedisSettings::new("redis://:hunter2@cache:6379"));
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[tokio::test]
async fn unreachable_redis_at_startup_falls_back_to_local_limits() {
    let url = format!("redis://127.0.0.1:{}", closed_port().await);
    let limiter = RateLimiter::start(&redis_settings(&url, &unique_prefix()), manual_clock())
        .await
        .unwrap();
    assert_eq!(limiter.state(), BackendState::RedisFallback);
    assert_eq!(limiter.state().as_str(), "redis_fallback");
    let limits = [
        limit(5, Duration::from_secs(60)),
        limit(7, Duration::from_secs(3_600)),
    ];
    assert_eq!(
        sequential(&limiter, "k", &limits, 20).await,
        5,
        "local limits apply"
    );
    let denied = limiter.check("k", &limits).await;
    assert_eq!(denied.retry_after_secs(), Some(60));
    assert_eq!(limiter.state(), BackendState::RedisFallback);
}

#[tokio::test]
async fn dropping_the_limiter_stops_its_probe() {
    let url = format!("redis://127.0.0.1:{}", closed_port().await);
    let limiter = RateLimiter::start(&redis_settings(&url, &unique_prefix()), manual_clock())
        .await
        .unwrap();
    let link = Arc::downgrade(limiter.redis.as_ref().unwrap());
    drop(limiter);
    let deadline = tokio::time::Instant::now() + STATE_WAIT;
    while link.upgrade().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe task still holds the link"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn redis_is_exact_across_instances() {
    let url = test_redis();
    let prefix = unique_prefix();
    let a = redis_limiter(&url, &prefix).await;
    let b = redis_limiter(&url, &prefix).await;
    let limits = [limit(50, DAY)];
    let admitted = admitted_concurrently(&[Arc::clone(&a), Arc::clone(&b)], "k", &limits, 200).await;
    assert_eq!(admitted, 50);
    // Both instances see the exhausted window.
    for limiter in [&a, &b] {
        let v = limiter.check("k", &limits).await;
        assert_eq!(v.window().map(|w| (w.limit, w.remaining)), Some((50, 0)), "{v:?}");
        assert!(
            v.retry_after_secs().is_some_and(|s| (1..=86_400).contains(&s)),
            "{v:?}"
        );
    }
    assert_eq!(a.state(), BackendState::Redis);
    cleanup(&a).await;
}

#[tokio::test]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn redis_counts_all_windows_or_none() {
    let url = test_redis();
    let limiter = redis_limiter(&url, &unique_prefix()).await;
    let short = limit(2, DAY);
    let long = limit(5, 2 * DAY);
    // 2 admitted, 3 denied by the short window.
    assert_eq!(sequential(&limiter, "k", &[short, long], 5).await, 2);
    // The long window was charged for the 2 admitted requests only.
    let v = limiter.check("k", &[long]).await;
    assert_eq!(v.window().map(|w| (w.limit, w.remaining)), Some((5, 2)), "{v:?}");
    // Statuses: the tightest window, fewest remaining (the long has 2
    // left, the exhausted short 0).
    let denied = limiter.check("k", &[short, long]).await;
    let Verdict::Denied { window, .. } = denied else {
        panic!("expected a denial, got {denied:?}");
    };
    assert_eq!((window.limit, window.remaining), (2, 0));
    // Another subject is untouched.
    let fresh = limiter.check("other", &[short, long]).await;
    assert_eq!(
        fresh.window().map(|w| (w.limit, w.remaining)),
        Some((2, 1)),
        "{fresh:?}"
    );
    cleanup(&limiter).await;
}

#[tokio::test]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn redis_reloads_a_flushed_script() {
    let url = test_redis();
    let limiter = redis_limiter(&url, &unique_prefix()).await;
    let limits = [limit(3, DAY)];
    assert!(limiter.check("k", &limits).await.is_allowed());
    limiter
        .redis
        .as_ref()
        .unwrap()
        .backend
        .flush_scripts()
        .await
        .unwrap();
    // EVALSHA now meets NOSCRIPT; EVAL answers and the count goes on.
    let v = limiter.check("k", &limits).await;
    assert_eq!(v.window().map(|w| w.remaining), Some(1), "{v:?}");
    assert_eq!(limiter.state(), BackendState::Redis);
    cleanup(&limiter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn redis_checks_on_a_current_thread_runtime_use_that_threads_own_connection() {
    let url = test_redis();
    let limiter = redis_limiter(&url, &unique_prefix()).await;
    let link = limiter.redis.as_ref().unwrap();
    let limits = [limit(100, DAY)];
    // A multi-thread runtime's checks share the pool.
    assert!(limiter.check("k", &limits).await.is_allowed());
    assert_eq!(link.backend.local_connections(), (0, 0));

    // Two threads each running a current-thread runtime (as the proxy's
    // serving threads do): one connection each, kept across checks.
    let lanes: Vec<_> = (0..2)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    for _ in 0..3 {
                        assert!(limiter.check("k", &limits).await.is_allowed());
                    }
                });
                // Keep the runtime (and the connection's driver) alive
                // until the test has looked.
                runtime
            })
        })
        .collect();
    let runtimes: Vec<_> = lanes.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(link.backend.local_connections(), (2, 2));
    let v = limiter.check("k", &limits).await;
    assert_eq!(
        v.window().map(|w| w.remaining),
        Some(100 - 8),
        "every check counted once: {v:?}"
    );

    // A reconnect (the probe's, after a failure) retires them: the next
    // check on such a thread opens a fresh one.
    link.backend.connect().await.unwrap();
    assert_eq!(link.backend.local_connections(), (0, 0));
    let limiter_on_lane = Arc::clone(&limiter);
    let reopened = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let allowed = runtime.block_on(async { limiter_on_lane.check("k", &limits).await.is_allowed() });
        (allowed, runtime)
    })
    .join()
    .unwrap();
    assert!(reopened.0);
    assert_eq!(link.backend.local_connections(), (1, 1));
    for runtime in runtimes.into_iter().chain([reopened.1]) {
        // (A runtime may not be dropped, blocking, inside another.)
        runtime.shutdown_background();
    }
    cleanup(&limiter).await;
}

/// Log output captured for one test. The subscriber is installed per
/// thread, so tests that read it run on a current-thread runtime.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl LogBuffer {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Lines logged at `level` (e.g. `WARN`) that contain `text`.
    fn count(&self, level: &str, text: &str) -> usize {
        let bytes = self.0.lock().unwrap();
        let logs = String::from_utf8_lossy(&bytes);
        logs.lines()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    }
}

#[tokio::test]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn redis_outage_falls_back_and_recovers() {
    let url = test_redis();
    let logs = LogBuffer::default();
    let _logging = logs.install();
    let prefix = unique_prefix();
    let port = closed_port().await;
    let mut forwarder = Forwarder::new(port, host_port(&url));
    let limiter = RateLimiter::start(&redis_settings(&with_port(&url, port), &prefix), manual_clock())
        .await
        .unwrap();
    assert_eq!(limiter.state(), BackendState::RedisFallback);
    let limits = [limit(3, DAY)];
    // Local counting while Redis is away.
    assert_eq!(sequential(&limiter, "local-only", &limits, 5).await, 3);

    // Redis appears: the probe switches over.
    forwarder.restore().await;
    wait_for_state(&limiter, BackendState::Redis, || async {}).await;
    assert_eq!(sequential(&limiter, "k", &limits, 2).await, 2);

    // Cut: the next check notices, answers locally, and falls back.
    forwarder.cut().await;
    let checker: &RateLimiter = &limiter;
    wait_for_state(&limiter, BackendState::RedisFallback, move || async move {
        checker.check("nudge", &limits).await;
    })
    .await;
    assert!(
        limiter.check("k", &limits).await.is_allowed(),
        "local counters answer"
    );
    assert_eq!(
        sequential(&limiter, "more", &limits, 20).await,
        3,
        "without a warning each"
    );

    // Restore: back to Redis, whose count (2) survived the outage.
    forwarder.restore().await;
    wait_for_state(&limiter, BackendState::Redis, || async {}).await;
    let v = limiter.check("k", &limits).await;
    assert_eq!(v.window().map(|w| w.remaining), Some(0), "{v:?}");
    assert!(!limiter.check("k", &limits).await.is_allowed());
    cleanup(&limiter).await;

    // One warning per outage (at startup, at the cut), one info line per
    // recovery, however many checks ran in between.
    assert_eq!(logs.count("WARN", "Redis is unreachable"), 2);
    assert_eq!(logs.count("INFO", "Redis answers again"), 2);
}

#[tokio::test]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn redis_that_stops_answering_is_left_after_the_response_timeout() {
    let url = test_redis();
    let port = closed_port().await;
    let mut forwarder = Forwarder::new(port, host_port(&url));
    forwarder.restore().await;
    let limiter = redis_limiter(&with_port(&url, port), &unique_prefix()).await;
    let limits = [limit(3, DAY)];
    assert!(limiter.check("k", &limits).await.is_allowed());

    // Redis goes silent: the next check waits out the response timeout,
    // then is answered locally, and the limiter falls back.
    forwarder.freeze();
    assert!(limiter.check("k", &limits).await.is_allowed());
    assert_eq!(limiter.state(), BackendState::RedisFallback);
    // Later checks do not wait on Redis: they go straight to local counters
    // (which saw one of the two checks above).
    assert_eq!(sequential(&limiter, "k", &limits, 10).await, 2);

    // Redis answers again: the probe's fresh connections get through.
    forwarder.thaw();
    wait_for_state(&limiter, BackendState::Redis, || async {}).await;
    let v = limiter.check("k", &limits).await;
    assert_eq!(v.window().map(|w| w.remaining), Some(1), "{v:?}");
    cleanup(&limiter).await;
}
