//! Two gateways (replicas) on one Postgres schema behave as one gateway: a
//! change made through either reaches the other's cache through the change
//! feed's notifications, not its polling. Runs only when `KEYGATE_TEST_PG`
//! names a server (e.g. `postgres://postgres@127.0.0.1:5432/test`); unset,
//! it prints why and passes; set but unreachable, it fails.

use std::time::{Duration, Instant};

use http::StatusCode;
use keygate::keys::KeyStatus;
use keygate::store::Actor;
use sqlx::{Connection, Executor};

use crate::support::gateway::{DEFAULT_ROUTES, TestGateway};

const PG_ENV: &str = "KEYGATE_TEST_PG";
/// How long test setup and cleanup wait for the test server.
const PG_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a change may take to reach the other replica here (the
/// promise is 1 s; this leaves room for a loaded CI machine, and the
/// measured figure is printed).
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

/// A fresh schema on the `KEYGATE_TEST_PG` server, dropped (with its
/// sessions ended) on drop.
struct Schema {
    base_url: String,
    name: String,
}

impl Schema {
    /// `None`, after printing why, when `KEYGATE_TEST_PG` is unset.
    async fn create() -> Option<Self> {
        let base_url = match std::env::var(PG_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                println!("skipped: set {PG_ENV}=postgres://… to run the replica tests");
                return None;
            }
        };
        let name = format!("kgrepl_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut admin = admin_connection(&base_url).await;
        admin
            .execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create the test schema {name}: {e}"));
        admin.close().await.unwrap();
        Some(Self { base_url, name })
    }

    /// The server URL with this schema as the only search path; sessions
    /// carry its name as `application_name`, so cleanup can end them.
    fn url(&self) -> String {
        let separator = if self.base_url.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{name}&application_name={name}",
            self.base_url,
            name = self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (base_url, name) = (self.base_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = admin_connection(&base_url).await;
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .execute(&mut admin)
                .await?;
                admin.execute("SET lock_timeout = '10s'").await?;
                admin
                    .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                    .await?;
                admin.close().await
            })
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test schema {}: {e}", self.name),
            Err(_) => eprintln!("dropping the test schema {} panicked", self.name),
        }
    }
}

/// A connection to the `KEYGATE_TEST_PG` server; panics when it is unusable.
async fn admin_connection(base_url: &str) -> sqlx::PgConnection {
    let options: sqlx::postgres::PgConnectOptions = base_url
        .parse()
        .unwrap_or_else(|e| panic!("{PG_ENV} is not a Postgres url: {e}"));
    match tokio::time::timeout(PG_TIMEOUT, sqlx::ConnectOptions::connect(&options)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("{PG_ENV} is set, but that Postgres is unusable: {e}"),
        Err(_) => panic!("{PG_ENV} is set, but that Postgres gives no answer within {PG_TIMEOUT:?}"),
    }
}

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
    config.cache.poll_interval = Duration::from_secs(60);
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
async fn a_change_through_one_replica_reaches_the_others_cache_within_the_bound() {
    let Some(schema) = Schema::create().await else {
        return;
    };
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
