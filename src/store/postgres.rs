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
//!   the channel through [`KeyStore::change_notifications`]: one listener
//!   connection per store handle, outside the pool, opened on first use and
//!   reconnected with backoff. Notifications only wake followers, which
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
//! Row decoding and the audit rules shared with SQLite live in
//! `super::rows`; this file holds the SQL and Postgres' error codes.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection, Executor, Postgres, QueryBuilder, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::rows::{
    self, AUDIT_COLUMNS, AuditRow, CandidateRow, KEY_COLUMNS, KeyRow, SECRET_COLUMNS, SESSION_COLUMNS,
    SessionRow, SessionSave, UsageRow, at_stored_precision,
};
use super::{
    Actor, AuditEntry, Candidate, KeyFilter, KeyStore, MigrationReport, NewKey, Page, PageRequest,
    SessionRecord, SessionRevokeReason, SessionWrite, StoreError, StoreSettings, Usage, UsageDelta,
    redact_url,
};
use crate::keys::{Key, KeyHash, KeyId, KeyPatch, KeyStatus, ModelError};

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
const FOREIGN_KEY_VIOLATION: &str = "23503";
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
pub struct PostgresStore {
    pool: PgPool,
    /// For connections outside the pool: the probe in `open` and migrations.
    options: PgConnectOptions,
    /// `database.connect_timeout`, for those connections.
    connect_timeout: Duration,
    /// `database.url` without its password, for messages and `Debug`.
    url: String,
    /// The change listener, started by the first `change_notifications`.
    feed: std::sync::Mutex<Option<ChangeFeed>>,
}

/// A running change listener and the channel it publishes on.
struct ChangeFeed {
    tx: watch::Sender<i64>,
    task: JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let feed = self.feed.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feed.take() {
            feed.task.abort();
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connect options: their Debug includes the password.
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("connections", &self.pool.size())
            .finish()
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
        Ok(Self {
            pool,
            options,
            connect_timeout: settings.connect_timeout,
            url,
            feed: std::sync::Mutex::new(None),
        })
    }

    /// One connection outside the pool, opened within `connect_timeout`.
    async fn connect_direct(&self) -> Result<PgConnection, StoreError> {
        match tokio::time::timeout(self.connect_timeout, self.options.connect()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(&self.url, &e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "cannot connect to the Postgres database {}: no answer within database.connect_timeout ({:?})",
                self.url, self.connect_timeout
            ))),
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(store_error)
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

/// Maps an error from inserting a secret: a violation of the unique index on
/// generated short prefixes means the short prefix is taken (a concurrent
/// create that got there first, past our check).
fn insert_error(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some(UNIQUE_VIOLATION)
            && db.constraint() == Some(GENERATED_SHORT_PREFIX_INDEX)
        {
            return StoreError::ShortPrefixTaken;
        }
    }
    store_error(e)
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

/// Whether any stored secret (generated or imported) has this short prefix.
async fn short_prefix_taken(conn: &mut PgConnection, short_prefix: &str) -> Result<bool, StoreError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM key_secrets WHERE short_prefix = $1 LIMIT 1")
        .bind(short_prefix)
        .fetch_optional(conn)
        .await
        .map_err(store_error)?;
    Ok(found.is_some())
}

/// One key row, read and locked for a change in the caller's transaction:
/// a concurrent change of the same key waits until this one commits, then
/// reads the result.
async fn fetch_key_for_update(conn: &mut PgConnection, id: &KeyId) -> Result<Key, StoreError> {
    let row: Option<KeyRow> = sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM keys k WHERE k.id = $1 FOR NO KEY UPDATE"
    ))
    .bind(id.as_str())
    .fetch_optional(conn)
    .await
    .map_err(store_error)?;
    row.ok_or_else(|| StoreError::NotFound(id.clone()))?.into_key()
}

/// Inserts a key and its first (current) secret.
async fn insert_key(conn: &mut PgConnection, new: &NewKey) -> Result<(), StoreError> {
    let key = &new.key;
    sqlx::query(
        "INSERT INTO keys (id, name, owner, scopes, plan, status, expires_at, prefix, short_prefix, source, \
         metadata, created_at, updated_at, last_used_at, request_count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(key.id.as_str())
    .bind(&key.name)
    .bind(&key.owner)
    .bind(Json(&key.scopes))
    .bind(&key.plan)
    .bind(key.status.as_str())
    .bind(key.expires_at.map(at_stored_precision))
    .bind(&key.prefix)
    .bind(&key.short_prefix)
    .bind(key.source.as_str())
    .bind(Json(&key.metadata))
    .bind(at_stored_precision(key.created_at))
    .bind(at_stored_precision(key.updated_at))
    .bind(key.last_used_at.map(at_stored_precision))
    .bind(rows::count_to_db(key.request_count))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    insert_secret(
        conn,
        &key.id,
        &key.prefix,
        &key.short_prefix,
        &new.hash,
        key.source.as_str(),
        key.created_at,
    )
    .await
}

/// Inserts a current secret (`valid_until` NULL).
async fn insert_secret(
    conn: &mut PgConnection,
    key_id: &KeyId,
    prefix: &str,
    short_prefix: &str,
    hash: &KeyHash,
    source: &str,
    created_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO key_secrets (key_id, prefix, short_prefix, hash, source, valid_until, created_at) \
         VALUES ($1, $2, $3, $4, $5, NULL, $6)",
    )
    .bind(key_id.as_str())
    .bind(prefix)
    .bind(short_prefix)
    .bind(hash.as_phc())
    .bind(source)
    .bind(at_stored_precision(created_at))
    .execute(conn)
    .await
    .map(drop)
    .map_err(insert_error)
}

/// Inserts a session row. `Ok(false)` when the key already has a session
/// with this client session id (a concurrent login won: the insert waited
/// for it to commit, then hit the unique index); [`StoreError::NotFound`]
/// when the key does not exist. Either error aborts the transaction, which
/// the caller then drops.
async fn insert_session(
    conn: &mut PgConnection,
    record: &SessionRecord,
    generation: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(&record.id)
    .bind(record.key_id.as_str())
    .bind(record.client_session.as_deref())
    .bind(Json(&record.scopes))
    .bind(at_stored_precision(record.created_at))
    .bind(at_stored_precision(record.expires_at))
    .bind(&record.family_digest[..])
    .bind(&record.refresh_digest[..])
    .bind(generation)
    .bind(&record.access_jti)
    .bind(at_stored_precision(record.access_issued_at))
    .bind(at_stored_precision(record.access_expires_at))
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(db))
            if db.code().as_deref() == Some(UNIQUE_VIOLATION)
                && db.constraint() == Some(SESSION_SLOT_INDEX) =>
        {
            Ok(false)
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(FOREIGN_KEY_VIOLATION) => {
            Err(StoreError::NotFound(record.key_id.clone()))
        }
        Err(e) => Err(store_error(e)),
    }
}

/// One session row.
async fn fetch_session(conn: &mut PgConnection, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    let row: Option<SessionRow> =
        sqlx::query_as(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .await
            .map_err(store_error)?;
    row.map(SessionRow::into_record).transpose()
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

/// Appends one audit row (in the caller's transaction, after [`lock_audit`])
/// and returns its seq.
async fn append_audit(
    conn: &mut PgConnection,
    key_id: &KeyId,
    actor: &Actor,
    action: &str,
    details: &Value,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "INSERT INTO audit_log (key_id, actor, action, details, at) VALUES ($1, $2, $3, $4, $5) \
         RETURNING seq",
    )
    .bind(key_id.as_str())
    .bind(actor.as_str())
    .bind(action)
    .bind(Json(details))
    .bind(at_stored_precision(at))
    .fetch_one(conn)
    .await
    .map_err(store_error)
}

/// Announces the transaction's last audit seq on the change channel
/// ([`CHANNEL_EXPR`]); call it right after the last [`append_audit`], still
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

#[async_trait]
impl KeyStore for PostgresStore {
    /// Applies pending migrations on a connection of its own, holding an
    /// advisory lock for the whole run, so replicas starting together
    /// migrate one after the other. Refuses, before changing anything, a
    /// database that records a migration this binary does not know.
    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut conn = self.connect_direct().await?;
        let report = migrate_on(&mut conn).await;
        // Ending the session releases its advisory locks whatever happened:
        // ours, and sqlx's own, which sqlx leaves held when it returns an
        // error. A pooled connection would keep them and block every later
        // `migrate` in this database.
        close_quietly(conn).await;
        report
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn create_key(&self, new: NewKey, actor: &Actor) -> Result<Key, StoreError> {
        let mut tx = self.begin().await?;
        // The check sees committed secrets; a concurrent create of the same
        // generated short prefix is caught by the unique index instead
        // (the insert waits for the other transaction, then fails).
        if short_prefix_taken(&mut tx, &new.key.short_prefix).await? {
            return Err(StoreError::ShortPrefixTaken);
        }
        insert_key(&mut tx, &new).await?;
        lock_audit(&mut tx).await?;
        let details = rows::insert_details(&new.key);
        let seq = append_audit(
            &mut tx,
            &new.key.id,
            actor,
            rows::ACTION_CREATED,
            &details,
            new.key.created_at,
        )
        .await?;
        announce(&mut tx, seq).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(rows::as_stored(new.key))
    }

    async fn import_keys(&self, keys: Vec<NewKey>, actor: &Actor) -> Result<Vec<Key>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        for new in &keys {
            insert_key(&mut tx, new).await?;
        }
        // The audit rows go last, in key order, so the audit lock is held
        // only for them and the commit, not for the whole import.
        lock_audit(&mut tx).await?;
        let mut last_seq = 0;
        for new in &keys {
            let details = rows::insert_details(&new.key);
            last_seq = append_audit(
                &mut tx,
                &new.key.id,
                actor,
                rows::ACTION_IMPORTED,
                &details,
                new.key.created_at,
            )
            .await?;
        }
        // One announcement for the whole import: followers read every row.
        announce(&mut tx, last_seq).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(keys.into_iter().map(|new| rows::as_stored(new.key)).collect())
    }

    async fn get_key(&self, id: &KeyId) -> Result<Key, StoreError> {
        let row: Option<KeyRow> =
            sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.id = $1"))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(store_error)?;
        row.ok_or_else(|| StoreError::NotFound(id.clone()))?.into_key()
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: PageRequest<KeyId>,
    ) -> Result<Page<Key, KeyId>, StoreError> {
        // Only the conditions in use are added, so the planner can pick the
        // (owner, id) or (status, id) index.
        let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {KEY_COLUMNS} FROM keys k WHERE TRUE"));
        if let Some(owner) = &filter.owner {
            query.push(" AND k.owner = ").push_bind(owner.clone());
        }
        if let Some(status) = filter.status {
            query.push(" AND k.status = ").push_bind(status.as_str());
        }
        if let Some(after) = &page.after {
            query.push(" AND k.id > ").push_bind(after.as_str().to_owned());
        }
        query
            .push(" ORDER BY k.id LIMIT ")
            .push_bind(rows::fetch_limit(page.limit));
        let fetched: Vec<KeyRow> = query
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let keys = fetched
            .into_iter()
            .map(KeyRow::into_key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows::into_page(keys, page.limit, |key| key.id.clone()))
    }

    async fn update_key(
        &self,
        id: &KeyId,
        patch: &KeyPatch,
        now: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Key, StoreError> {
        let mut tx = self.begin().await?;
        let mut key = fetch_key_for_update(&mut tx, id).await?;
        // On a refused change the transaction is dropped, which rolls it back.
        let changed = key.apply(patch, now)?;
        if changed.is_empty() {
            tx.rollback().await.map_err(store_error)?;
            return Ok(key);
        }
        sqlx::query(
            "UPDATE keys SET name = $1, owner = $2, scopes = $3, plan = $4, status = $5, expires_at = $6, \
             metadata = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(&key.name)
        .bind(&key.owner)
        .bind(Json(&key.scopes))
        .bind(&key.plan)
        .bind(key.status.as_str())
        .bind(key.expires_at.map(at_stored_precision))
        .bind(Json(&key.metadata))
        .bind(at_stored_precision(key.updated_at))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        lock_audit(&mut tx).await?;
        let action = rows::update_action(&changed, key.status);
        let seq = append_audit(&mut tx, id, actor, action, &rows::update_details(&changed), now).await?;
        announce(&mut tx, seq).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(rows::as_stored(key))
    }

    async fn rotate_key(
        &self,
        id: &KeyId,
        prefix: &str,
        short_prefix: &str,
        hash: KeyHash,
        grace_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Key, StoreError> {
        let mut tx = self.begin().await?;
        let mut key = fetch_key_for_update(&mut tx, id).await?;
        if key.status == KeyStatus::Revoked {
            return Err(ModelError::RevokedIsFinal.into());
        }
        if short_prefix_taken(&mut tx, short_prefix).await? {
            return Err(StoreError::ShortPrefixTaken);
        }
        // A grace period that has already ended is no grace period.
        let grace_until = grace_until.filter(|until| *until > now);
        let stored_now = at_stored_precision(now);
        sqlx::query(
            "DELETE FROM key_secrets WHERE key_id = $1 AND valid_until IS NOT NULL AND valid_until <= $2",
        )
        .bind(id.as_str())
        .bind(stored_now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let demote = match grace_until {
            Some(until) => sqlx::query(
                "UPDATE key_secrets SET valid_until = $1 WHERE key_id = $2 AND valid_until IS NULL",
            )
            .bind(at_stored_precision(until))
            .bind(id.as_str()),
            None => sqlx::query("DELETE FROM key_secrets WHERE key_id = $1 AND valid_until IS NULL")
                .bind(id.as_str()),
        };
        demote.execute(&mut *tx).await.map_err(store_error)?;
        let source = rows::ROTATED_SOURCE.as_str();
        insert_secret(&mut tx, id, prefix, short_prefix, &hash, source, now).await?;
        sqlx::query(
            "UPDATE keys SET prefix = $1, short_prefix = $2, source = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(prefix)
        .bind(short_prefix)
        .bind(source)
        .bind(stored_now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        lock_audit(&mut tx).await?;
        let details = rows::rotate_details(grace_until, short_prefix);
        let seq = append_audit(&mut tx, id, actor, rows::ACTION_ROTATED, &details, now).await?;
        announce(&mut tx, seq).await?;
        tx.commit().await.map_err(store_error)?;
        key.prefix = prefix.to_owned();
        key.short_prefix = short_prefix.to_owned();
        key.source = rows::ROTATED_SOURCE;
        key.updated_at = now;
        Ok(rows::as_stored(key))
    }

    async fn find_candidates(&self, short_prefix: &str) -> Result<Vec<Candidate>, StoreError> {
        let found: Vec<CandidateRow> = sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS}, {SECRET_COLUMNS} FROM key_secrets s JOIN keys k ON k.id = s.key_id \
             WHERE s.short_prefix = $1 ORDER BY s.id"
        ))
        .bind(short_prefix)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        found.into_iter().map(CandidateRow::into_candidate).collect()
    }

    async fn imported_prefixes(&self) -> Result<BTreeSet<String>, StoreError> {
        let prefixes: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT prefix FROM key_secrets WHERE source = 'imported'")
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
        Ok(prefixes.into_iter().collect())
    }

    async fn audit(&self, page: PageRequest<i64>) -> Result<Page<AuditEntry, i64>, StoreError> {
        // One statement, one snapshot: with the audit lock, the rows it
        // returns have no later-committing gaps below the highest seq.
        let fetched: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(page.after.unwrap_or(0))
        .bind(rows::fetch_limit(page.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let entries = fetched
            .into_iter()
            .map(AuditRow::into_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows::into_page(entries, page.limit, |entry| entry.seq))
    }

    async fn change_seq(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::bigint FROM audit_log")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // The whole batch travels as parallel arrays and is applied by three
        // set-based statements, so a flush costs the same whether it carries
        // one key or ten thousand (a statement per key made flushing the
        // busiest thing a loaded gateway did).
        let mut ordered: Vec<&UsageDelta> = batch.iter().collect();
        ordered.sort_by(|a, b| (&a.key_id, &a.outcome).cmp(&(&b.key_id, &b.outcome)));
        let ids: Vec<&str> = ordered.iter().map(|d| d.key_id.as_str()).collect();
        let outcomes: Vec<&str> = ordered.iter().map(|d| d.outcome.as_str()).collect();
        let counts: Vec<i64> = ordered.iter().map(|d| rows::count_to_db(d.count)).collect();
        let lasts: Vec<DateTime<Utc>> = ordered
            .iter()
            .map(|d| at_stored_precision(d.last_used_at))
            .collect();
        let mut tx = self.begin().await?;
        // Two gateways flushing overlapping batches at once must queue, not
        // deadlock: the key rows are locked first, in id order, and every
        // later row lock of this transaction is on a row of those keys.
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

    async fn usage(&self, id: &KeyId) -> Result<Usage, StoreError> {
        let fetched: Vec<UsageRow> = sqlx::query_as(
            "SELECT k.last_used_at, u.outcome, u.count FROM keys k \
             LEFT JOIN key_usage u ON u.key_id = k.id WHERE k.id = $1 ORDER BY u.outcome",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows::usage_from_rows(fetched)?.ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        fetch_session(&mut conn, id).await
    }

    async fn session_for(
        &self,
        key_id: &KeyId,
        client_session: Option<&str>,
    ) -> Result<Option<SessionRecord>, StoreError> {
        // A key has few sessions: the unique index's leading key_id finds
        // them, and IS NOT DISTINCT FROM matches a bound NULL too.
        let row: Option<SessionRow> = sqlx::query_as(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE key_id = $1 AND client_session IS NOT DISTINCT FROM $2"
        ))
        .bind(key_id.as_str())
        .bind(client_session)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.map(SessionRow::into_record).transpose()
    }

    async fn save_session(
        &self,
        record: &SessionRecord,
        expected_generation: Option<u64>,
        replaces: Option<&str>,
        actor: &Actor,
    ) -> Result<SessionWrite, StoreError> {
        let (save, generation) = rows::check_session_save(record, expected_generation, replaces)?;
        match save {
            SessionSave::Insert { replaces } => {
                let mut tx = self.begin().await?;
                // Only an unusable row of the same key and client session:
                // an active one stays, and the insert below then conflicts.
                // Two logins replacing one row queue on its row lock; the
                // second deletes nothing and its insert conflicts.
                let mut replaced = None;
                if let Some(old) = replaces {
                    let deleted = sqlx::query(
                        "DELETE FROM sessions WHERE id = $1 AND key_id = $2 \
                         AND client_session IS NOT DISTINCT FROM $3 \
                         AND (revoked_at IS NOT NULL OR expires_at <= $4)",
                    )
                    .bind(old)
                    .bind(record.key_id.as_str())
                    .bind(record.client_session.as_deref())
                    .bind(at_stored_precision(record.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    replaced = (deleted.rows_affected() > 0).then_some(old);
                }
                // On a conflict the transaction is dropped, which rolls back
                // the delete as well.
                if !insert_session(&mut tx, record, generation).await? {
                    return Ok(SessionWrite::Conflict);
                }
                lock_audit(&mut tx).await?;
                if let Some(old) = replaced {
                    let details = rows::session_replaced_details(old, &record.id);
                    let action = rows::ACTION_SESSION_REPLACED;
                    append_audit(
                        &mut tx,
                        &record.key_id,
                        actor,
                        action,
                        &details,
                        record.created_at,
                    )
                    .await?;
                }
                let details = rows::session_created_details(&record.id);
                let action = rows::ACTION_SESSION_CREATED;
                let seq = append_audit(
                    &mut tx,
                    &record.key_id,
                    actor,
                    action,
                    &details,
                    record.created_at,
                )
                .await?;
                announce(&mut tx, seq).await?;
                tx.commit().await.map_err(store_error)?;
            }
            SessionSave::Update { expected } => {
                // One statement, no audit row: no lock beyond the row's. A
                // concurrent writer of the row makes this wait, then
                // re-check the WHERE against the committed row.
                let updated = sqlx::query(
                    "UPDATE sessions SET scopes = $1, expires_at = $2, family_digest = $3, refresh_digest = $4, \
                     refresh_generation = $5, access_jti = $6, access_issued_at = $7, access_expires_at = $8 \
                     WHERE id = $9 AND refresh_generation = $10 AND revoked_at IS NULL",
                )
                .bind(Json(&record.scopes))
                .bind(at_stored_precision(record.expires_at))
                .bind(&record.family_digest[..])
                .bind(&record.refresh_digest[..])
                .bind(generation)
                .bind(&record.access_jti)
                .bind(at_stored_precision(record.access_issued_at))
                .bind(at_stored_precision(record.access_expires_at))
                .bind(&record.id)
                .bind(expected)
                .execute(&self.pool)
                .await
                .map_err(store_error)?;
                if updated.rows_affected() == 0 {
                    return Ok(SessionWrite::Conflict);
                }
            }
        }
        Ok(SessionWrite::Written)
    }

    async fn revoke_session(
        &self,
        id: &str,
        reason: SessionRevokeReason,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut tx = self.begin().await?;
        let revoked: Option<SessionRow> = sqlx::query_as(&format!(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL \
             RETURNING {SESSION_COLUMNS}"
        ))
        .bind(at_stored_precision(at))
        .bind(reason.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(revoked) = revoked else {
            // Unknown, or revoked before (perhaps by a concurrent call this
            // one waited for): the first revocation stands.
            let existing = fetch_session(&mut tx, id).await?;
            tx.rollback().await.map_err(store_error)?;
            return Ok(existing);
        };
        let revoked = revoked.into_record()?;
        lock_audit(&mut tx).await?;
        let details = rows::session_revoked_details(id, reason);
        let action = rows::ACTION_SESSION_REVOKED;
        let seq = append_audit(&mut tx, &revoked.key_id, actor, action, &details, at).await?;
        announce(&mut tx, seq).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(revoked))
    }

    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let deleted = sqlx::query("DELETE FROM sessions WHERE expires_at < $1 AND access_expires_at < $1")
            .bind(at_stored_precision(before))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(deleted.rows_affected())
    }

    /// Starts this handle's change listener on first use (so CLI commands,
    /// which never ask, open no listener) and subscribes to it. `None`
    /// outside a Tokio runtime.
    fn change_notifications(&self) -> Option<watch::Receiver<i64>> {
        let mut feed = self.feed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feed.as_ref() {
            return Some(feed.tx.subscribe());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = watch::channel(0);
        let task = runtime.spawn(follow_changes(
            self.options.clone(),
            self.connect_timeout,
            self.url.clone(),
            tx.clone(),
        ));
        *feed = Some(ChangeFeed { tx, task });
        Some(rx)
    }
}

#[cfg(test)]
mod tests;
