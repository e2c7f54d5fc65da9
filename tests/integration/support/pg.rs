//! A per-test Postgres schema on the `KEYGATE_TEST_PG` server (as in
//! `replicas.rs`). The tests using it are `#[ignore = "needs Postgres: …"]`;
//! run (`--include-ignored`) without the variable or the server, they fail.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::{Connection, Executor};

pub const PG_ENV: &str = "KEYGATE_TEST_PG";
/// How long test setup and cleanup wait for the test server.
const PG_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh schema, dropped (with its sessions ended) on drop.
pub struct Schema {
    base_url: String,
    name: String,
}

impl Schema {
    /// Creates `<prefix>_<ulid>`; panics, saying what to set, when
    /// `KEYGATE_TEST_PG` is unset or its server is unusable.
    pub async fn create(prefix: &str) -> Self {
        let base_url = match std::env::var(PG_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => panic!("{PG_ENV} is not set: set it to postgres://… to run the Postgres tests"),
        };
        let name = format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut admin = admin_connection(&base_url).await;
        admin
            .execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create the test schema {name}: {e}"));
        admin.close().await.unwrap();
        Self { base_url, name }
    }

    /// The server URL with this schema as the only search path; sessions
    /// carry its name as `application_name`, so cleanup can end them.
    pub fn url(&self) -> String {
        with_schema(&self.base_url, &self.name)
    }

    /// Like `url`, but connecting to `addr` (e.g. a chaos proxy) instead of
    /// the server's host and port.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        with_schema(&with_authority(&self.base_url, addr), &self.name)
    }

    /// The server's address, from the URL (`localhost` means 127.0.0.1).
    pub fn server_addr(&self) -> SocketAddr {
        let options: sqlx::postgres::PgConnectOptions = self.base_url.parse().unwrap();
        let host = match options.get_host() {
            "localhost" => "127.0.0.1",
            host => host,
        };
        format!("{host}:{}", options.get_port())
            .parse()
            .unwrap_or_else(|e| panic!("{PG_ENV}: need a numeric host for the chaos proxy ({e})"))
    }
}

fn with_schema(base_url: &str, name: &str) -> String {
    let separator = if base_url.contains('?') { '&' } else { '?' };
    format!("{base_url}{separator}options=-csearch_path%3D{name}&application_name={name}")
}

/// `url` with its `host[:port]` replaced by `addr` (user info, database and
/// parameters kept).
fn with_authority(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority.rsplit_once('@').map(|(user, _)| format!("{user}@"));
    format!("{scheme}://{}{addr}{tail}", user.unwrap_or_default())
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
