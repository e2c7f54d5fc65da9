//! Two gateways (replicas) on one Postgres schema behave as one gateway: a
//! change made through either reaches the other's cache through the change
//! feed's notifications, not its polling. Ignored unless asked for
//! (`--include-ignored`); then `KEYGATE_TEST_PG` must name a reachable
//! server (e.g. `postgres://postgres@127.0.0.1:5432/test`).

use std::time::{Duration, Instant};

use http::StatusCode;
use keygate::keys::KeyStatus;
use keygate::store::Actor;

use crate::support::gateway::{DEFAULT_ROUTES, TestGateway};
use crate::support::pg::Schema;

/// The longest a change may take to reach the other replica here (the
/// promise is 1 s; this leaves room for a loaded CI machine, and the
/// measured figure is printed).
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

/// A gateway on the shared schema. Its fallback polling is set far beyond
/// the bound, so a change that arrives in time arrived by notification.
async fn replica(schema: &Schema) -> TestGateway {
    let text = format!(
        "[keys]\ndefault_plan = \"pro\"\n{}\n{DEFAULT_ROUTES}",
        crate::support::FAST_HASH
    );
    let no_env = std::collections::BTreeMap::<String, String>::new();
    let mut config = keygate::config::load_str(&text, "test", &no_env).unwrap_or_else(|e| panic!("{e}"));
    config.database.url = schema.url();
    config.authenticator.poll_interval = Duration::from_secs(60);
    TestGateway::start_config_on_its_database(config).await
}

/// Sends the key to `gw` until the status is (`ok`) or is not (`!ok`) 200,
/// within [`PROPAGATION_BOUND`]; returns how long that took.
async fn until_status(gw: &TestGateway, key: &str, ok: bool, what: &str) -> Duration {
    let started = Instant::now();
    let header = format!("Bearer {key}");
    loop {
        let reply = gw.get("/v1/orders/1", &[("authorization", &header)]).await;
        if (reply.status == StatusCode::OK) == ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PROPAGATION_BOUND,
            "{what}: still {} after {PROPAGATION_BOUND:?}: {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_change_through_one_replica_reaches_the_others_cache_within_the_bound() {
    let schema = Schema::create("kgrepl").await;
    let a = replica(&schema).await;
    let b = replica(&schema).await;

    // Created through A, then used (and so cached) on both.
    let issued = a.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose().to_owned();
    let id = issued.key.id.as_str().to_owned();
    until_status(&a, &key, true, "a fresh key on A").await;
    until_status(&b, &key, true, "a fresh key on B").await;

    // Disabled through B: both refuse it.
    b.manager
        .set_status(&id, KeyStatus::Inactive, &Actor::cli())
        .await
        .unwrap();
    let on_a = until_status(&a, &key, false, "disabled through B, on A").await;
    let on_b = until_status(&b, &key, false, "disabled through B, on B").await;
    println!("disable through B: refused on A after {on_a:?}, on B after {on_b:?}");

    // Enabled through A: both serve it again.
    a.manager
        .set_status(&id, KeyStatus::Active, &Actor::cli())
        .await
        .unwrap();
    let on_b = until_status(&b, &key, true, "enabled through A, on B").await;
    let on_a = until_status(&a, &key, true, "enabled through A, on A").await;
    println!("enable through A: served on B after {on_b:?}, on A after {on_a:?}");

    // Revoked through B: both refuse it for good.
    b.manager
        .set_status(&id, KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    let on_a = until_status(&a, &key, false, "revoked through B, on A").await;
    let on_b = until_status(&b, &key, false, "revoked through B, on B").await;
    println!("revoke through B: refused on A after {on_a:?}, on B after {on_b:?}");
    let reply = a
        .get("/v1/orders/1", &[("authorization", &format!("Bearer {key}"))])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());

    a.stop().await;
    b.stop().await;
}
