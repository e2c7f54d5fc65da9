//! Plans and rate limits through the real proxy (SPEC §4, §5): exact counts
//! under concurrency, all-or-nothing windows, denied requests consuming
//! nothing, `per = "owner"`, the header spellings, and the Redis backend
//! shared by two gateways, with its outage fallback and recovery through a
//! chaos proxy (`KEYGATE_TEST_REDIS`).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::StatusCode;
use keygate::manage::CreateKey;
use keygate::ratelimit::BackendState;
use keygate::store::Actor;

use crate::support::chaos::{Chaos, Fault};
use crate::support::gateway::{Reply, TestGateway};
use crate::support::redis;

const PATH: &str = "/v1/things";

/// Plans of every shape these tests need; `/v1/**` needs no scope.
fn plans(limit: &str) -> String {
    format!(
        r#"
[[routes]]
path = "/v1/**"

[plans.pro]
limits = [{limit}]

[plans.team]
per = "owner"
limits = [{{ requests = 3, per = "1h" }}]

[plans.enterprise]
unlimited = true
"#
    )
}

fn bearer(key: &str) -> [(&'static str, String); 1] {
    [("authorization", format!("Bearer {key}"))]
}

async fn call(gw: &TestGateway, key: &str) -> Reply {
    let [(name, value)] = bearer(key);
    gw.get(PATH, &[(name, value.as_str())]).await
}

async fn key_on(gw: &TestGateway, plan: &str, owner: Option<&str>) -> String {
    gw.manager
        .create(
            CreateKey {
                name: "rl".into(),
                plan: Some(plan.into()),
                owner: owner.map(str::to_owned),
                ..CreateKey::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap()
        .secret
        .expose()
        .to_owned()
}

/// Sends `n` requests with `key` at once through `gateways` in turn; returns
/// the replies.
async fn burst(gateways: &[&TestGateway], key: &str, n: usize) -> Vec<Reply> {
    join_all((0..n).map(|i| call(gateways[i % gateways.len()], key))).await
}

fn count(replies: &[Reply], status: StatusCode) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_against_fifty_admit_exactly_fifty() {
    let gw = TestGateway::start(&plans(r#"{ requests = 50, per = "1h" }"#)).await;
    let key = key_on(&gw, "pro", None).await;
    let replies = burst(&[&gw], &key, 200).await;
    assert_eq!(count(&replies, StatusCode::OK), 50);
    assert_eq!(count(&replies, StatusCode::TOO_MANY_REQUESTS), 150);
    let mut remaining: Vec<u64> = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| r.header("ratelimit-remaining").unwrap().parse().unwrap())
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..50).collect::<Vec<_>>(),
        "each admission saw its own count"
    );
    gw.stop().await;
}

#[tokio::test]
async fn headers_follow_the_tightest_window_and_a_429_says_when_to_retry() {
    let gw = TestGateway::start(&plans(
        r#"{ requests = 100, per = "1h" }, { requests = 3, per = "1m" }"#,
    ))
    .await;
    let key = key_on(&gw, "pro", None).await;
    // 12:00:00 on the manual clock: the minute window has 60 s to run.
    gw.clock.advance(chrono::Duration::seconds(15));
    for remaining in ["2", "1", "0"] {
        let reply = call(&gw, &key).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(reply.header("ratelimit-remaining").as_deref(), Some(remaining));
        assert_eq!(reply.header("ratelimit-reset").as_deref(), Some("45"));
    }
    let denied = call(&gw, &key).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.json()["code"], "rate_limited");
    assert_eq!(denied.header("retry-after").as_deref(), Some("45"));
    assert_eq!(denied.header("ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(denied.header("ratelimit-limit").as_deref(), Some("3"));

    // An unlimited plan and a public route carry no rate-limit headers.
    let unlimited = key_on(&gw, "enterprise", None).await;
    let reply = call(&gw, &unlimited).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("ratelimit-limit"), None);
    gw.stop().await;
}

#[tokio::test]
async fn a_denied_request_consumes_nothing_in_any_window() {
    let gw = TestGateway::start(&plans(
        r#"{ requests = 2, per = "1m" }, { requests = 3, per = "1h" }"#,
    ))
    .await;
    let key = key_on(&gw, "pro", None).await;
    for _ in 0..2 {
        assert_eq!(call(&gw, &key).await.status, StatusCode::OK);
    }
    // Denied by the minute window, many times: none of it reaches the hour.
    for _ in 0..10 {
        assert_eq!(call(&gw, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    gw.clock.advance(chrono::Duration::minutes(1));
    let third = call(&gw, &key).await;
    assert_eq!(third.status, StatusCode::OK, "the hour window still had one left");
    assert_eq!(
        third.header("ratelimit-limit").as_deref(),
        Some("3"),
        "the hour is now the tightest"
    );
    assert_eq!(third.header("ratelimit-remaining").as_deref(), Some("0"));
    let denied = call(&gw, &key).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.header("retry-after").as_deref(),
        Some("3540"),
        "the hour ends at 13:00"
    );
    // A request refused before the limiter (unknown path scope, bad key)
    // costs nothing either: shown by a fresh key on the same plan.
    gw.stop().await;
}

#[tokio::test]
async fn per_owner_plans_share_one_allowance_across_the_owners_keys() {
    let gw = TestGateway::start(&plans(r#"{ requests = 100, per = "1h" }"#)).await;
    let (a, b) = (
        key_on(&gw, "team", Some("acme")).await,
        key_on(&gw, "team", Some("acme")).await,
    );
    let other = key_on(&gw, "team", Some("globex")).await;
    assert_eq!(call(&gw, &a).await.status, StatusCode::OK);
    assert_eq!(call(&gw, &b).await.status, StatusCode::OK);
    assert_eq!(
        call(&gw, &a).await.header("ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(call(&gw, &b).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        call(&gw, &other).await.status,
        StatusCode::OK,
        "another owner has its own"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_plan_change_takes_effect_like_any_other_key_change() {
    let gw = TestGateway::start(&plans(r#"{ requests = 1, per = "1h" }"#)).await;
    let issued = gw
        .manager
        .create(
            CreateKey {
                name: "upgrade".into(),
                plan: Some("pro".into()),
                ..CreateKey::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let key = issued.secret.expose().to_owned();
    assert_eq!(call(&gw, &key).await.status, StatusCode::OK);
    assert_eq!(call(&gw, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    gw.manager
        .update(
            issued.key.id.as_str(),
            keygate::keys::KeyPatch {
                plan: Some("enterprise".into()),
                ..keygate::keys::KeyPatch::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    // The change feed brings the new plan to the cached key: unlimited now.
    let [(name, value)] = bearer(&key);
    let reply = gw
        .eventually(PATH, &[(name, value.as_str())], |r| r.status == StatusCode::OK)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("ratelimit-limit"), None, "enterprise is unlimited");
    gw.stop().await;
}

#[tokio::test]
async fn header_spellings_follow_rate_limit_headers() {
    let limit = r#"{ requests = 1, per = "1m" }"#;
    let x = TestGateway::start(&format!(
        "[rate_limit]\nheaders = \"x-ratelimit\"\n{}",
        plans(limit)
    ))
    .await;
    let key = key_on(&x, "pro", None).await;
    let reply = call(&x, &key).await;
    assert_eq!(reply.header("x-ratelimit-limit").as_deref(), Some("1"));
    assert_eq!(reply.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(reply.header("x-ratelimit-reset").as_deref(), Some("60"));
    assert_eq!(reply.header("ratelimit-limit"), None);
    let denied = call(&x, &key).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("retry-after").as_deref(), Some("60"));
    x.stop().await;

    let off = TestGateway::start(&format!("[rate_limit]\nheaders = false\n{}", plans(limit))).await;
    let key = key_on(&off, "pro", None).await;
    let reply = call(&off, &key).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers.keys().all(|h| !h.as_str().contains("ratelimit")),
        "{:?}",
        reply.headers
    );
    let denied = call(&off, &key).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.header("retry-after").as_deref(),
        Some("60"),
        "Retry-After stays"
    );
    off.stop().await;
}

#[tokio::test]
async fn limiter_headers_replace_the_upstreams_own() {
    let gw = TestGateway::start(&plans(r#"{ requests = 5, per = "1m" }"#)).await;
    let key = key_on(&gw, "pro", None).await;
    // The echo upstream's /status/… sets no rate-limit headers, but a client
    // may send some: they must not come back as if from keygate.
    let reply = gw
        .get(
            PATH,
            &[
                ("authorization", &format!("Bearer {key}")),
                ("ratelimit-limit", "999"),
            ],
        )
        .await;
    assert_eq!(reply.header("ratelimit-limit").as_deref(), Some("5"));
    gw.stop().await;
}

/// A gateway whose limiter uses Redis at `url` under `prefix`, on the
/// SQLite store `database` (shared by the gateways of one test) or its own.
async fn redis_gateway(url: &str, prefix: &str, limit: &str, database: Option<&str>) -> TestGateway {
    let text = format!(
        "[keys]\ndefault_plan = \"pro\"\n{}\n{}",
        crate::support::FAST_HASH,
        plans(limit)
    );
    let no_env = std::collections::BTreeMap::<String, String>::new();
    let mut config = keygate::config::load_str(&text, "test", &no_env).unwrap_or_else(|e| panic!("{e}"));
    config.rate_limit.backend = keygate::config::RateLimitBackend::Redis(keygate::config::RedisSettings {
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_millis(200),
        ..keygate::config::RedisSettings::new(url)
    });
    match database {
        Some(url) => {
            config.database.url = url.to_owned();
            TestGateway::start_config_on_its_database(config).await
        }
        None => TestGateway::start_config(config).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn two_gateways_sharing_redis_admit_exactly_the_limit_in_total() {
    let url = redis::url();
    let prefix = redis::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("shared.db").display());
    let limit = r#"{ requests = 50, per = "1d" }, { requests = 1000, per = "30d" }"#;
    let a = redis_gateway(&url, &prefix, limit, Some(&database)).await;
    let b = redis_gateway(&url, &prefix, limit, Some(&database)).await;
    assert_eq!(a.gateway().rate_limiter().state(), BackendState::Redis);
    assert_eq!(b.gateway().rate_limiter().state(), BackendState::Redis);
    let key = key_on(&a, "pro", None).await;
    // One request through each first (b finds the key in the shared store),
    // so both count in Redis; then 200 at once over both.
    for gw in [&a, &b] {
        let reply = call(gw, &key).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("ratelimit-limit").as_deref(), Some("50"));
    }
    let replies = burst(&[&a, &b], &key, 200).await;
    let odd: Vec<(u16, String)> = replies
        .iter()
        .filter(|r| r.status != StatusCode::OK && r.status != StatusCode::TOO_MANY_REQUESTS)
        .map(|r| (r.status.as_u16(), r.text()))
        .collect();
    assert!(odd.is_empty(), "only 200 or 429: {odd:?}");
    assert_eq!(
        count(&replies, StatusCode::OK),
        48,
        "exactly the limit across both"
    );
    // The owner plan's allowance is shared by the owner's keys on both.
    let (ka, kb) = (
        key_on(&a, "team", Some("acme")).await,
        key_on(&b, "team", Some("acme")).await,
    );
    let replies = join_all((0..40).map(|i| if i % 2 == 0 { call(&a, &kb) } else { call(&b, &ka) })).await;
    assert_eq!(
        count(&replies, StatusCode::OK),
        3,
        "team allows 3 an hour per owner"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS"]
async fn a_redis_outage_falls_back_to_local_limits_without_a_5xx_and_recovers() {
    let url = redis::url();
    let chaos = Chaos::start(redis::addr(&url)).await;
    let via = format!("redis://{}", chaos.addr());
    let prefix = redis::unique_prefix();
    let gw = redis_gateway(&via, &prefix, r#"{ requests = 5, per = "1d" }"#, None).await;
    let limiter = gw.gateway().rate_limiter().clone();
    assert_eq!(limiter.state(), BackendState::Redis);
    let key = key_on(&gw, "pro", None).await;
    for _ in 0..2 {
        assert_eq!(call(&gw, &key).await.status, StatusCode::OK);
    }

    for fault in [Fault::Refuse, Fault::Freeze] {
        chaos.cut(fault);
        let started = Instant::now();
        let replies = burst(&[&gw], &key, 20).await;
        let took = started.elapsed();
        assert_eq!(
            replies.iter().filter(|r| r.status.is_server_error()).count(),
            0,
            "{fault:?}: no 5xx while Redis is down"
        );
        assert!(
            count(&replies, StatusCode::OK) <= 5,
            "{fault:?}: local limits still apply"
        );
        assert!(count(&replies, StatusCode::TOO_MANY_REQUESTS) >= 15);
        assert_eq!(limiter.state(), BackendState::RedisFallback, "{fault:?}");
        let metrics = gw.admin_get("/metrics").await.text();
        assert!(
            metrics.contains("keygate_ratelimit_backend{state=\"redis_fallback\"} 1"),
            "{fault:?}: /metrics says so: {metrics}"
        );
        println!("{fault:?}: 20 requests answered in {took:?} with Redis cut");
        assert!(
            took < Duration::from_secs(5),
            "{fault:?}: bounded by the Redis timeout, took {took:?}"
        );

        chaos.restore();
        let deadline = Instant::now() + Duration::from_secs(10);
        while limiter.state() != BackendState::Redis {
            assert!(Instant::now() < deadline, "{fault:?}: back on Redis within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let metrics = gw.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("keygate_ratelimit_backend{state=\"redis\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_ratelimit_redis_fallbacks_total 2"),
        "{metrics}"
    );
    // Back on Redis: the count there survived the outage (2 of 5 used).
    let replies = burst(&[&gw], &key, 10).await;
    assert_eq!(count(&replies, StatusCode::OK), 3);
    gw.stop().await;
}
