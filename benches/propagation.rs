//! Change propagation between two replicas on one Postgres (issue 5): how
//! long after a key change commits through replica A does replica B, which
//! has the key cached, answer differently. 200 changes (disable / enable
//! toggles), p50 / p99 / max. Both replicas run with the default
//! `cache.poll_interval`; the change feed's notifications are what make it
//! fast, the polling only bounds it.
//!
//! Run with `KEYGATE_TEST_PG=postgres://postgres@127.0.0.1:5432/test cargo
//! bench --bench propagation`. Without `KEYGATE_TEST_PG` it says so and
//! exits 0. It works in a fresh schema, dropped afterwards.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::app::Gateway;
use keygate::clock::SystemClock;
use keygate::config::Config;
use keygate::echo::EchoServer;
use keygate::keys::{HashParams, KeyStatus};
use keygate::manage::{CreateKey, KeyManager};
use keygate::store::Actor;
use sqlx::{ConnectOptions, Connection, Executor};

const PG_ENV: &str = "KEYGATE_TEST_PG";
const CHANGES: usize = 200;
/// A change not seen by the other replica within this is a failure.
const GIVE_UP: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() -> Result<()> {
    let base_url = match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            println!("propagation bench skipped: set {PG_ENV}=postgres://… to run it");
            return Ok(());
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let schema = format!("kgbench_{}", ulid::Ulid::new().to_string().to_lowercase());
        let options: sqlx::postgres::PgConnectOptions = base_url.parse()?;
        let mut admin = options
            .connect()
            .await
            .with_context(|| format!("{PG_ENV} is set, but that Postgres is unusable"))?;
        admin.execute(format!("CREATE SCHEMA {schema}").as_str()).await?;
        let result = measure(&base_url, &schema).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&schema)
        .execute(&mut admin)
        .await?;
        admin
            .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await?;
        admin.close().await?;
        result
    })
}

async fn measure(base_url: &str, schema: &str) -> Result<()> {
    let separator = if base_url.contains('?') { '&' } else { '?' };
    let url = format!("{base_url}{separator}options=-csearch_path%3D{schema}&application_name={schema}");
    let echo = EchoServer::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let config = config(&url, echo.addr())?;
    let a = Gateway::start(&config, Arc::new(SystemClock)).await?;
    let b = Gateway::start(&config, Arc::new(SystemClock)).await?;
    println!(
        "two replicas on one Postgres schema, cache.poll_interval = {:?}",
        config.authenticator.poll_interval
    );
    let manager = KeyManager::new(
        a.store().clone(),
        config.keys.clone(),
        config.plans.keys().cloned().collect(),
        Arc::new(SystemClock),
    );
    let issued = manager
        .create(
            CreateKey {
                name: "propagation".into(),
                scopes: BTreeSet::from(["read".to_owned()]),
                ..CreateKey::default()
            },
            &Actor::cli(),
        )
        .await?;
    let id = issued.key.id.as_str().to_owned();
    let key = issued.secret.expose().to_owned();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Cached on B before the first change.
    wait_for(&client, b.proxy_addr(), &key, true).await?;

    let mut after_commit = Vec::with_capacity(CHANGES);
    let mut end_to_end = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let enable = i % 2 == 1;
        let status = if enable {
            KeyStatus::Active
        } else {
            KeyStatus::Inactive
        };
        let started = Instant::now();
        manager.set_status(&id, status, &Actor::cli()).await?;
        let committed = Instant::now();
        wait_for(&client, b.proxy_addr(), &key, enable).await?;
        after_commit.push(committed.elapsed());
        end_to_end.push(started.elapsed());
    }
    report("from commit to B answering differently", &mut after_commit);
    report("from A's change call to B answering differently", &mut end_to_end);

    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

fn config(url: &str, upstream: SocketAddr) -> Result<Config> {
    let text = "[keys]\ndefault_plan = \"pro\"\n\n[[routes]]\npath = \"/**\"\nscopes = [\"read\"]\n\n\
                [plans.pro]\nunlimited = true\n";
    let no_env = std::collections::BTreeMap::<String, String>::new();
    let mut config = keygate::config::load_str(text, "bench", &no_env).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.database.url = url.to_owned();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream.authority = upstream.to_string();
    config.upstream.url = format!("http://{upstream}");
    // Verification cost is not what is measured here.
    let fast = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    config.keys.generated_hash = fast;
    config.keys.imported_hash = fast;
    Ok(config)
}

/// Sends the key to `proxy` until it is (`ok`) or is not accepted.
async fn wait_for(client: &HttpClient, proxy: SocketAddr, key: &str, ok: bool) -> Result<()> {
    let started = Instant::now();
    loop {
        let request = Request::get(format!("http://{proxy}/v1/x"))
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::new()))?;
        let response = client.request(request).await?;
        let accepted = response.status() == StatusCode::OK;
        response.into_body().collect().await?;
        if accepted == ok {
            return Ok(());
        }
        if started.elapsed() > GIVE_UP {
            bail!("the other replica did not see the change within {GIVE_UP:?}");
        }
    }
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "{label} ({} changes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}
