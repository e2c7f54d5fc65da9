//! The Postgres key store, for several gateway replicas sharing one database
//! (`database.url = "postgres://USER:PASSWORD@HOST/DB"`).
//!
//! How it uses Postgres, and why:
//! - One pool of `database.max_connections` connections; obtaining one
//!   (including opening it) waits at most `database.connect_timeout`.
//! - Every pooled connection runs `SET statement_timeout` once, right after
//!   it opens (`after_connect`), rather than passing the setting as a startup
//!   option: connection poolers such as PgBouncer refuse or drop startup
//!   options, which would silently remove the limit. It costs one round trip
//!   per new connection, not per query. A statement that runs longer,
//!   including one waiting for a row lock, fails with SQLSTATE 57014, which
//!   maps to [`StoreError::Unavailable`].
//! - Writes are READ COMMITTED transactions. `update_key` and `rotate_key`
//!   read the key with `SELECT … FOR NO KEY UPDATE`, so two replicas changing
//!   one key queue instead of one overwriting the other's change. (`NO KEY`:
//!   keygate never changes `keys.id`, and this lock, unlike `FOR UPDATE`,
//!   does not block the foreign-key checks of usage flushes for that key.)
//! - Session rotations (`save_session` with an expected generation) are one
//!   conditional `UPDATE`: a concurrent writer of the row makes it wait,
//!   then Postgres re-checks the `WHERE` against the committed row, so a
//!   lost race updates nothing and reports a conflict.
//! - Audit rows commit in `seq` order, so the change sequence is safe to
//!   follow; see `AUDIT_LOCK_SQL` for how and what it costs.
//! - Every transaction that writes audit rows announces its last `seq` with
//!   `pg_notify` on the schema's change channel (see [`CHANNEL_EXPR`]),
//!   under the audit lock; Postgres delivers it on commit. Gateways follow
//!   the channel through
//!   [`KeyStore::change_notifications`](super::KeyStore::change_notifications):
//!   one listener connection per store handle, outside the pool, opened on
//!   first use and reconnected with backoff. Notifications only wake followers, which
//!   then read the audit trail after their last seq, so none is lost
//!   across a reconnect. The listener needs a real session: behind a
//!   transaction-pooling PgBouncer LISTEN does not work, and gateways fall
//!   back to polling alone (`cache.poll_interval`).
//! - Migrations run on a connection of their own, under an advisory lock
//!   (`MIGRATE_LOCK`), with no statement timeout.
//! - Tables, `_sqlx_migrations` and the audit trigger function live in the
//!   first schema of the connection's `search_path`; to use another schema
//!   than `public`, add `options=-csearch_path%3DNAME` to the URL (the tests
//!   do, one schema per test).
//!
//! The queries both backends run are written once in `super::sql`, with
//! row decoding and the audit rules in `super::rows`; [`PgDialect`] gives
//! them Postgres' side (the row lock, the audit lock, announcements,
//! `timestamptz` binding, constraint names). This file holds the rest:
//! connecting, SQLSTATE classification, migrations, the usage flush and
//! the change listener.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions, PgQueryResult};
use sqlx::{ConnectOptions, Connection, Executor, Postgres};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::rows::{self, at_stored_precision};
use super::sql::{Dialect, SqlStore};
use super::{MigrationReport, StoreError, StoreSettings, UsageDelta, redact_url};

/// The Postgres migrations, embedded at compile time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Takes the lock that makes audit rows commit in `seq` order. Run in every
/// mutating transaction immediately before its first audit insert; held
/// until commit or rollback.
///
/// Why: `audit_log.seq` is an identity column, drawn when the row is
/// inserted, but transactions commit in any order. Without the lock a reader
/// could see seq 11 committed while seq 10 is still in flight, remember 11,
/// and never read 10 once it commits: the change feed follows
/// `seq > last seen`, so a replica would miss that change (a revocation,
/// say) for good.
///
/// How: while one transaction holds the lock it is the only one that can
/// draw an audit seq. Postgres releases a transaction's locks only after its
/// commit is visible to new snapshots, so the next writer draws a higher seq
/// after every lower one has committed or rolled back. Hence any snapshot
/// that sees seq N also sees every committed seq below N. Rolled-back
/// writers leave gaps, never late arrivals.
///
/// Cost: the audit inserts and the commit (one round trip and a WAL flush)
/// of key changes are serialised per audit table, about a millisecond each
/// on a local network. Key changes are administrative (a few per second at
/// most); logins that open a new session and session revocations take it
/// too (so at most about a thousand such logins a second per database);
/// lookups, listings, usage flushes, session rotations and session cleanup
/// never take the lock. It cannot
/// deadlock: it is the last lock a writer takes (after its row locks and
/// unique-index inserts), and its holder only inserts into `audit_log`,
/// which has no foreign keys, and commits.
///
/// Alternative not taken: writers stay parallel and readers only trust rows
/// below the oldest transaction still in flight (`pg_snapshot_xmin`). That
/// moves the subtlety into every reader and delays every change by the
/// longest concurrent write, for no gain at keygate's write rates.
///
/// The key: [`LOCK_SPACE`] in the high 32 bits, the audit table's OID in the
/// low ones. That is one lock per audit table, so keygate installations in
/// different schemas of one database (and the tests, one schema each) do
/// not queue on each other.
const AUDIT_LOCK_SQL: &str =
    "SELECT pg_advisory_xact_lock(($1::bigint << 32) | 'audit_log'::regclass::oid::bigint)";

/// The high 32 bits of keygate's advisory lock keys ("kgau").
const LOCK_SPACE: i64 = 0x6b67_6175;

/// Session advisory lock held for a whole `migrate` run: the schema versions
/// read before and after belong to this run alone, so two replicas starting
/// together report one applying and one finding nothing to do. sqlx's
/// migrator takes its own per-database lock inside the run as well
/// (checked in sqlx 0.8: `pg_advisory_lock` on a key derived from the
/// database name); keygate always takes this one first, so they cannot
/// deadlock.
const MIGRATE_LOCK: i64 = (LOCK_SPACE << 32) | 0x6d69_6772; // "migr"

/// The change channel of the schema the connection works in (the first of
/// its `search_path`, where keygate's tables are): `keygate_changes_SCHEMA`,
/// or `keygate_changes_` and the schema name's MD5 when that would exceed
/// Postgres' 63-byte identifier limit. Writers (`pg_notify`) and the
/// listener (`LISTEN`) both evaluate it on their own connection, so they
/// agree whatever the schema. Separate keygate installations on one
/// database must use separate schemas: installations sharing a schema share
/// its tables anyway, and a notification from another schema could at worst
/// cause a spurious re-read, never a missed change.
const CHANNEL_EXPR: &str = "CASE WHEN octet_length(current_schema()) <= 47 \
     THEN 'keygate_changes_' || current_schema() \
     ELSE 'keygate_changes_' || md5(current_schema()) END";

/// An idle listener checks its connection with a query this often, so a
/// silently dead connection (no FIN, no RST) is noticed and replaced.
const LISTENER_HEARTBEAT: Duration = Duration::from_secs(10);
/// First and longest wait between the listener's reconnection attempts.
const LISTENER_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTENER_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The longest `statement_timeout` Postgres accepts, in milliseconds.
const MAX_STATEMENT_TIMEOUT_MS: u128 = 2_147_483_647;

// SQLSTATE codes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
const UNIQUE_VIOLATION: &str = "23505";
const READ_ONLY_SQL_TRANSACTION: &str = "25006";
const INSUFFICIENT_RESOURCES_CLASS: &str = "53";
const LOCK_NOT_AVAILABLE: &str = "55P03";
const QUERY_CANCELED: &str = "57014";
/// Operator intervention: shutdown, crash, restart, database dropped.
const OPERATOR_INTERVENTION_PREFIX: &str = "57P";
const CONNECTION_EXCEPTION_CLASS: &str = "08";

/// The unique index that makes generated short prefixes unique.
const GENERATED_SHORT_PREFIX_INDEX: &str = "key_secrets_generated_short_prefix";
/// The unique index on a session's key and client session id.
const SESSION_SLOT_INDEX: &str = "sessions_key_client";

/// A key store in a Postgres database, shared by any number of gateways.
pub type PostgresStore = SqlStore<PgDialect>;

/// What the Postgres store needs besides its pool: its connection details
/// (for connections outside the pool) and its change listener.
pub struct PgDialect {
    /// For connections outside the pool: the probe in `open`, migrations
    /// and the change listener.
    options: PgConnectOptions,
    /// `database.connect_timeout`, for those connections.
    connect_timeout: Duration,
    /// `database.url` without its password, for messages and `Debug`.
    url: String,
    /// The change listener, started by the first `change_notifications`.
    feed: std::sync::Mutex<Option<ChangeFeed>>,
}

/// A running change listener and the channel it publishes on. The listener
/// stops when the store (and so this) is dropped.
struct ChangeFeed {
    tx: watch::Sender<i64>,
    task: JoinHandle<()>,
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PostgresStore {
    /// Connects to the database named by `settings.url`
    /// (`postgres://…` or `postgresql://…`, libpq-style parameters allowed).
    /// Opens one connection at once, so an unreachable or refusing server
    /// fails here with [`StoreError::Unavailable`] naming the URL (without
    /// its password) and the cause; pooled connections open on demand.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let store = Self::new_lazy(settings)?;
        let probe = store.connect_direct().await?;
        close_quietly(probe).await;
        Ok(store)
    }

    /// The store with its pool configured but no connection opened.
    fn new_lazy(settings: &StoreSettings) -> Result<Self, StoreError> {
        let url = redact_url(&settings.url);
        // sqlx's URL errors name the part that is wrong, never the password.
        let options = PgConnectOptions::from_str(&settings.url).map_err(|e| {
            StoreError::Unavailable(format!(
                "database.url {url} is not a usable Postgres url ({e}); expected postgres://USER:PASSWORD@HOST:PORT/DB"
            ))
        })?;
        // Lets operators find keygate's sessions in pg_stat_activity.
        let options = if options.get_application_name().is_none() {
            options.application_name("keygate")
        } else {
            options
        };
        let set_timeout: Arc<str> = format!(
            "SET statement_timeout = {}",
            settings
                .statement_timeout
                .as_millis()
                .clamp(1, MAX_STATEMENT_TIMEOUT_MS)
        )
        .into();
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.connect_timeout)
            .after_connect(move |conn, _meta| {
                let set_timeout = Arc::clone(&set_timeout);
                Box::pin(async move { conn.execute(&*set_timeout).await.map(drop) })
            })
            .connect_lazy_with(options.clone());
        Ok(SqlStore {
            pool,
            dialect: PgDialect {
                options,
                connect_timeout: settings.connect_timeout,
                url,
                feed: std::sync::Mutex::new(None),
            },
        })
    }

    /// One connection outside the pool, opened within `connect_timeout`.
    async fn connect_direct(&self) -> Result<PgConnection, StoreError> {
        let PgDialect {
            options,
            connect_timeout,
            url,
            ..
        } = &self.dialect;
        match tokio::time::timeout(*connect_timeout, options.connect()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(url, &e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "cannot connect to the Postgres database {url}: no answer within database.connect_timeout ({connect_timeout:?})"
            ))),
        }
    }
}

/// Closes a connection, ignoring failures: the server ends the session (and
/// releases its locks) when the socket closes anyway.
async fn close_quietly(conn: PgConnection) {
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing a Postgres connection failed");
    }
}

/// The one-line message for a connection that could not be opened.
fn connect_error(url: &str, e: &sqlx::Error) -> StoreError {
    let reason = match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused; check that Postgres is running and listening on that host and port"
                .to_owned()
        }
        // Only the primary message: it names the user or database, never
        // the password.
        sqlx::Error::Database(db) => {
            format!("{} (SQLSTATE {})", db.message(), db.code().unwrap_or_default())
        }
        other => other.to_string(),
    };
    StoreError::Unavailable(format!("cannot connect to the Postgres database {url}: {reason}"))
}

/// Maps a sqlx error for this backend.
fn store_error(e: sqlx::Error) -> StoreError {
    rows::map_sqlx_error(e, pg_error)
}

/// Classifies a Postgres error by its SQLSTATE. Only the primary message is
/// kept, never the detail: Postgres quotes row values there ("Failing row
/// contains (…)"), which for `key_secrets` would include a PHC hash.
fn pg_error(db: &dyn DatabaseError) -> StoreError {
    let message = db.message();
    let code = db.code().unwrap_or_default();
    let code = code.as_ref();
    if code == QUERY_CANCELED {
        StoreError::Unavailable(format!(
            "a Postgres statement ran longer than database.statement_timeout and was cancelled ({message})"
        ))
    } else if code.starts_with(CONNECTION_EXCEPTION_CLASS) {
        StoreError::Unavailable(format!("the connection to Postgres failed ({message})"))
    } else if code.starts_with(OPERATOR_INTERVENTION_PREFIX) {
        StoreError::Unavailable(format!("Postgres is shutting down or restarting ({message})"))
    } else if code.starts_with(INSUFFICIENT_RESOURCES_CLASS) {
        StoreError::Unavailable(format!(
            "Postgres is out of a resource (connections, disk or memory) ({message})"
        ))
    } else if code == LOCK_NOT_AVAILABLE {
        StoreError::Unavailable(format!("timed out waiting for a lock in Postgres ({message})"))
    } else if code == READ_ONLY_SQL_TRANSACTION {
        StoreError::Unavailable(format!(
            "the Postgres server is read-only (a standby?); point database.url at the primary ({message})"
        ))
    } else {
        StoreError::Database(format!("{message} (SQLSTATE {code})"))
    }
}

/// The migration versions recorded as applied (none before the first run),
/// in the `_sqlx_migrations` table of the connection's search path.
async fn applied_versions(conn: &mut PgConnection) -> Result<Vec<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)
}

/// One `migrate` run on its own connection (see [`MIGRATE_LOCK`]).
async fn migrate_on(conn: &mut PgConnection) -> Result<MigrationReport, StoreError> {
    // No statement timeout here: waiting for another replica's migration,
    // or DDL on a large table, may rightly take longer than a request.
    conn.execute("SET statement_timeout = 0")
        .await
        .map_err(store_error)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    let before = applied_versions(conn).await?;
    // Before the migrator runs: it would only say "missing version".
    rows::check_known_migrations(&MIGRATOR, &before)?;
    MIGRATOR
        .run_direct(&mut *conn)
        .await
        .map_err(|e| rows::migration_error(e, store_error))?;
    let after = applied_versions(conn).await?;
    let applied = after.iter().copied().filter(|v| !before.contains(v)).collect();
    Ok(MigrationReport {
        applied,
        current: after.last().copied().unwrap_or(0),
    })
}

/// Takes the audit ordering lock ([`AUDIT_LOCK_SQL`]) in the caller's
/// transaction. Call it once, after every other write of the transaction
/// and right before its audit rows.
async fn lock_audit(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query(AUDIT_LOCK_SQL)
        .bind(LOCK_SPACE)
        .execute(conn)
        .await
        .map(drop)
        .map_err(store_error)
}

/// Announces the transaction's last audit seq on the change channel
/// ([`CHANNEL_EXPR`]); call it right after the transaction's last audit row, still
/// under the audit lock. Postgres delivers the notification when (and only
/// if) the transaction commits, in commit order.
async fn announce(conn: &mut PgConnection, seq: i64) -> Result<(), StoreError> {
    sqlx::query(&format!("SELECT pg_notify({CHANNEL_EXPR}, $1)"))
        .bind(seq.to_string())
        .execute(conn)
        .await
        .map(drop)
        .map_err(store_error)
}

/// Opens a listener connection (outside the store's pool: a one-connection
/// pool of its own, which `PgListener` needs) and LISTENs on the change
/// channel of its schema. Errors are one-line messages without the password.
async fn open_listener(
    options: &PgConnectOptions,
    timeout: Duration,
    url: &str,
) -> Result<(PgListener, String), String> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(timeout)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool)
        .await
        .map_err(|e| connect_error(url, &e).to_string())?;
    listener.ignore_pool_close_event(true);
    // Reconnection is ours (with backoff, logging, and a catch-up wake-up).
    listener.eager_reconnect(false);
    let setup = async {
        let channel: String = sqlx::query_scalar(&format!("SELECT {CHANNEL_EXPR}"))
            .fetch_one(&mut listener)
            .await?;
        listener.listen(&channel).await?;
        Ok::<_, sqlx::Error>(channel)
    };
    match tokio::time::timeout(timeout, setup).await {
        Ok(Ok(channel)) => Ok((listener, channel)),
        Ok(Err(e)) => Err(store_error(e).to_string()),
        Err(_) => Err(format!(
            "LISTEN got no answer within database.connect_timeout ({timeout:?})"
        )),
    }
}

/// Publishes the notifications of a connected listener until its
/// connection fails; returns why it stopped.
async fn pump_notifications(listener: &mut PgListener, tx: &watch::Sender<i64>, timeout: Duration) -> String {
    loop {
        // `try_recv` is cancel-safe (sqlx reads whole messages from its buffer).
        match tokio::time::timeout(LISTENER_HEARTBEAT, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => {
                let seq = notification.payload().parse::<i64>().unwrap_or(0);
                // Always marks the value changed, even for an old seq.
                tx.send_modify(|latest| *latest = (*latest).max(seq));
            }
            Ok(Ok(None)) => return "the connection was closed".to_owned(),
            Ok(Err(e)) => return store_error(e).to_string(),
            Err(_) => {
                let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                match tokio::time::timeout(timeout, ping).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return store_error(e).to_string(),
                    Err(_) => return format!("no answer to a heartbeat within {timeout:?}"),
                }
            }
        }
    }
}

/// The change listener: connects, LISTENs, publishes; on any failure waits
/// (backing off) and starts over. Logs one warning when it loses (or cannot
/// open) its connection and one info line when it is back. Every (re)connect
/// wakes the followers, since changes committed while no listener was
/// connected were announced to nobody. Runs until aborted.
async fn follow_changes(options: PgConnectOptions, timeout: Duration, url: String, tx: watch::Sender<i64>) {
    let mut backoff = LISTENER_BACKOFF_MIN;
    let mut down = false;
    loop {
        let reason = match open_listener(&options, timeout, &url).await {
            Ok((mut listener, channel)) => {
                if down {
                    tracing::info!(
                        channel,
                        "the key store's change notifications are back; caught up"
                    );
                    down = false;
                } else {
                    tracing::debug!(channel, "listening for key store changes");
                }
                backoff = LISTENER_BACKOFF_MIN;
                tx.send_modify(|_| {});
                pump_notifications(&mut listener, &tx, timeout).await
            }
            Err(reason) => reason,
        };
        if !down {
            tracing::warn!(
                error = %reason,
                "lost the key store's change notifications; falling back to polling \
                 (cache.poll_interval) while reconnecting"
            );
            down = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTENER_BACKOFF_MAX);
    }
}

/// The usage flush ([`KeyStore::record_usage`](super::KeyStore::record_usage)) for a non-empty batch.
async fn record_usage(store: &PostgresStore, batch: &[UsageDelta]) -> Result<(), StoreError> {
    // The whole batch travels as parallel arrays and is applied by
    // set-based statements, so a flush costs the same number of round
    // trips whether it carries one key or ten thousand (a statement per
    // key made flushing the busiest thing a loaded gateway did).
    let mut ordered: Vec<&UsageDelta> = batch.iter().collect();
    ordered.sort_by(|a, b| (&a.key_id, &a.outcome, a.minute).cmp(&(&b.key_id, &b.outcome, b.minute)));
    let ids: Vec<&str> = ordered.iter().map(|d| d.key_id.as_str()).collect();
    let outcomes: Vec<&str> = ordered.iter().map(|d| d.outcome.as_str()).collect();
    let minutes: Vec<i64> = ordered.iter().map(|d| d.minute.timestamp()).collect();
    let counts: Vec<i64> = ordered.iter().map(|d| rows::count_to_db(d.count)).collect();
    let lasts: Vec<DateTime<Utc>> = ordered
        .iter()
        .map(|d| at_stored_precision(d.last_used_at))
        .collect();
    let mut tx = store.begin_write().await?;
    // Two gateways flushing overlapping batches at once must queue, not
    // deadlock: the key rows are locked first, in id order, and every
    // later row lock of this transaction is on a row of those keys, or on
    // an owner's bucket taken in (owner, width, bucket, outcome) order.
    sqlx::query("SELECT 1 FROM keys WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    // The EXISTS guard drops deltas for keys deleted since the gateway
    // counted them (the foreign key would refuse the row); the GROUP BY
    // folds a pair repeated in one batch (an upsert may not touch a row
    // twice).
    sqlx::query(
        "INSERT INTO key_usage (key_id, outcome, count) \
         SELECT d.id, d.outcome, SUM(d.count)::bigint \
         FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(id, outcome, count) \
         WHERE EXISTS (SELECT 1 FROM keys WHERE keys.id = d.id) \
         GROUP BY d.id, d.outcome \
         ON CONFLICT (key_id, outcome) DO UPDATE SET count = key_usage.count + excluded.count",
    )
    .bind(&ids)
    .bind(&outcomes)
    .bind(&counts)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    // The history: each minute's counts added to its minute, hour and day
    // bucket, per key and per the key's owner (see the migration).
    sqlx::query(
        "INSERT INTO usage_buckets (key_id, width, bucket, outcome, count) \
         SELECT d.id, w.width, d.minute / w.width * w.width, d.outcome, SUM(d.count)::bigint \
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS d(id, outcome, minute, count) \
         CROSS JOIN (VALUES (60), (3600), (86400)) AS w(width) \
         WHERE EXISTS (SELECT 1 FROM keys WHERE keys.id = d.id) \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 \
         ON CONFLICT (key_id, width, bucket, outcome) DO UPDATE SET count = usage_buckets.count + excluded.count",
    )
    .bind(&ids)
    .bind(&outcomes)
    .bind(&minutes)
    .bind(&counts)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    sqlx::query(
        "INSERT INTO owner_usage_buckets (owner, width, bucket, outcome, count) \
         SELECT k.owner, w.width, d.minute / w.width * w.width, d.outcome, SUM(d.count)::bigint \
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS d(id, outcome, minute, count) \
         JOIN keys k ON k.id = d.id \
         CROSS JOIN (VALUES (60), (3600), (86400)) AS w(width) \
         WHERE k.owner IS NOT NULL \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 \
         ON CONFLICT (owner, width, bucket, outcome) \
         DO UPDATE SET count = owner_usage_buckets.count + excluded.count",
    )
    .bind(&ids)
    .bind(&outcomes)
    .bind(&minutes)
    .bind(&counts)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    // Batches from several gateways arrive in any order: keep the latest
    // use, not the last written (GREATEST skips NULL).
    sqlx::query(
        "UPDATE keys SET request_count = keys.request_count + d.total, \
         last_used_at = GREATEST(keys.last_used_at, d.last) \
         FROM (SELECT id, SUM(count)::bigint AS total, MAX(last) AS last \
               FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(id, count, last) \
               GROUP BY id) AS d \
         WHERE keys.id = d.id",
    )
    .bind(&ids)
    .bind(&counts)
    .bind(&lasts)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    tx.commit().await.map_err(store_error)
}

/// Postgres' side of the shared SQL (see the module docs for why).
impl Dialect for PgDialect {
    type Db = Postgres;
    type Stamp = DateTime<Utc>;

    const BEGIN_WRITE: Option<&'static str> = None;

    /// `update_key` and `rotate_key` lock the key's row: a concurrent change
    /// of the same key waits until this one commits, then reads the result.
    const LOCK_KEY: &'static str = " FOR NO KEY UPDATE";

    fn stamp(at: DateTime<Utc>) -> DateTime<Utc> {
        at_stored_precision(at)
    }

    fn store_error(e: sqlx::Error) -> StoreError {
        store_error(e)
    }

    fn is_short_prefix_conflict(db: &dyn DatabaseError) -> bool {
        db.code().as_deref() == Some(UNIQUE_VIOLATION)
            && db.constraint() == Some(GENERATED_SHORT_PREFIX_INDEX)
    }

    /// A concurrent login of the same key and client session won: the
    /// insert waited for it to commit, then hit the unique index.
    fn is_session_slot_conflict(db: &dyn DatabaseError) -> bool {
        db.code().as_deref() == Some(UNIQUE_VIOLATION) && db.constraint() == Some(SESSION_SLOT_INDEX)
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn lock_audit(conn: &mut PgConnection) -> Result<(), StoreError> {
        lock_audit(conn).await
    }

    async fn announce(conn: &mut PgConnection, seq: i64) -> Result<(), StoreError> {
        announce(conn, seq).await
    }

    /// Applies pending migrations on a connection of its own, holding an
    /// advisory lock for the whole run, so replicas starting together
    /// migrate one after the other. Refuses, before changing anything, a
    /// database that records a migration this binary does not know.
    async fn migrate(store: &PostgresStore) -> Result<MigrationReport, StoreError> {
        let mut conn = store.connect_direct().await?;
        let report = migrate_on(&mut conn).await;
        // Ending the session releases its advisory locks whatever happened:
        // ours, and sqlx's own, which sqlx leaves held when it returns an
        // error. A pooled connection would keep them and block every later
        // `migrate` in this database.
        close_quietly(conn).await;
        report
    }

    async fn record_usage(store: &PostgresStore, batch: &[UsageDelta]) -> Result<(), StoreError> {
        record_usage(store, batch).await
    }

    /// Starts this handle's change listener on first use (so CLI commands,
    /// which never ask, open no listener) and subscribes to it. `None`
    /// outside a Tokio runtime.
    fn change_notifications(store: &PostgresStore) -> Option<watch::Receiver<i64>> {
        let mut feed = store.dialect.feed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feed.as_ref() {
            return Some(feed.tx.subscribe());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = watch::channel(0);
        let task = runtime.spawn(follow_changes(
            store.dialect.options.clone(),
            store.dialect.connect_timeout,
            store.dialect.url.clone(),
            tx.clone(),
        ));
        *feed = Some(ChangeFeed { tx, task });
        Some(rx)
    }

    fn fmt_store(store: &PostgresStore, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connect options: their Debug includes the password.
        f.debug_struct("PostgresStore")
            .field("url", &store.dialect.url)
            .field("connections", &store.pool.size())
            .finish()
    }
}

#[cfg(test)]
mod tests;
