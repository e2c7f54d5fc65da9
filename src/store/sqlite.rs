//! The SQLite key store, keygate's embedded default
//! (`database.url = "sqlite://keygate.db?mode=rwc"`).
//!
//! How it uses SQLite, and why:
//! - WAL journal: gateway lookups (readers) never wait for a writer, and a
//!   writer never waits for readers.
//! - Every write transaction starts with `BEGIN IMMEDIATE`, taking the write
//!   lock before its first read. A deferred transaction that reads and then
//!   writes can fail at once with `SQLITE_BUSY` when another connection wrote
//!   in between (SQLite cannot wait there without risking a deadlock);
//!   taking the lock up front lets `busy_timeout` queue writers instead.
//! - A lone write statement (a session rotation, the session cleanup) runs
//!   without an explicit transaction: SQLite takes the write lock when such
//!   a statement starts, waiting on `busy_timeout` like `BEGIN IMMEDIATE`.
//! - `busy_timeout` is `database.statement_timeout`: SQLite has no statement
//!   timeout, and waiting for the write lock is where a statement can stall.
//! - Timestamps are RFC 3339 UTC text with six fractional digits
//!   ([`rows::timestamp_text`]), so SQL compares them as text; scopes,
//!   metadata and audit details are JSON text.
//!
//! The queries both backends run are written once in `super::sql`, with
//! row decoding and the audit rules in `super::rows`; [`SqliteDialect`]
//! gives them SQLite's side (`BEGIN IMMEDIATE`, text timestamps, how a
//! unique violation names its index). This file holds the rest: opening
//! the file, SQLite's result codes, migrations and the usage flush.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Sqlite;
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
};

use super::rows::{self, timestamp_text};
use super::sql::{Dialect, SqlStore};
use super::{MigrationReport, StoreError, StoreSettings, UsageDelta, redact_url};

/// The SQLite migrations, embedded at compile time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

// SQLite primary result codes (the low byte of an extended code), see
// https://www.sqlite.org/rescode.html.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;

/// A key store in one SQLite file (or in memory, for tests and `demo`).
pub type SqliteStore = SqlStore<SqliteDialect>;

/// What the SQLite store needs besides its pool: where its file is.
pub struct SqliteDialect {
    /// The database file, or `:memory:`; for logs and `Debug`.
    location: String,
}

impl SqliteStore {
    /// Opens (and with `?mode=rwc` creates) the database named by
    /// `settings.url`: `sqlite://PATH[?mode=rwc]` or `sqlite::memory:`. Opens
    /// one connection at once, so an unusable file fails here with
    /// [`StoreError::Unavailable`] naming the file and what to fix.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let url = settings.url.as_str();
        let options = SqliteConnectOptions::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "database.url {} is not a usable SQLite url ({e}); expected sqlite://PATH?mode=rwc or sqlite::memory:",
                redact_url(url)
            ))
        })?;
        let in_memory = url.starts_with("sqlite::memory:") || url.contains("mode=memory");
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(settings.statement_timeout);
        let path = options.get_filename().to_path_buf();
        let pool_options = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.connect_timeout);
        // An in-memory database lives as long as one of its connections: keep
        // exactly one open forever, which also serialises its writers.
        let pool_options = if in_memory {
            pool_options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            pool_options
        };
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| open_error(&path, url.contains("mode=rwc"), &e))?;
        let location = if in_memory {
            ":memory:".to_owned()
        } else {
            path.display().to_string()
        };
        Ok(SqlStore {
            pool,
            dialect: SqliteDialect { location },
        })
    }
}

/// The one-line message for a database that cannot be opened: the file, the
/// likely cause and what to change.
fn open_error(path: &Path, create: bool, e: &sqlx::Error) -> StoreError {
    let (reason, code) = match e {
        sqlx::Error::Database(db) => (db.message().to_owned(), sqlite_code(db.as_ref())),
        other => (other.to_string(), 0),
    };
    let file = path.display();
    // Checking the filesystem here is blocking, but it runs once, on a
    // failure path, before the store exists.
    let hint = match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        _ if matches!(code, SQLITE_NOTADB | SQLITE_CORRUPT) => {
            "the file is not a SQLite database or is damaged; point database.url at keygate's database \
             or move the file away"
                .to_owned()
        }
        Some(dir) if !dir.is_dir() => format!(
            "the directory {} does not exist or is not a directory; create it or point database.url elsewhere",
            dir.display()
        ),
        _ if !create && !path.exists() => {
            "the file does not exist; add ?mode=rwc to database.url to create it, or fix the path".to_owned()
        }
        _ => "check that the user running keygate may read and write the file and write to its directory"
            .to_owned(),
    };
    StoreError::Unavailable(format!(
        "cannot open the SQLite database {file}: {hint} ({reason})"
    ))
}

/// Maps a sqlx error for this backend.
fn store_error(e: sqlx::Error) -> StoreError {
    rows::map_sqlx_error(e, sqlite_error)
}

/// Classifies a SQLite error by its result code. Only the message is kept:
/// SQLite's messages name tables and columns, never bound values.
fn sqlite_error(db: &dyn DatabaseError) -> StoreError {
    let message = db.message();
    match sqlite_code(db) {
        SQLITE_BUSY | SQLITE_LOCKED => StoreError::Unavailable(format!(
            "the SQLite database stayed locked by another writer for longer than database.statement_timeout ({message})"
        )),
        SQLITE_READONLY => StoreError::Unavailable(format!(
            "the SQLite database is read-only; check the permissions of the file and its directory ({message})"
        )),
        SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN => {
            StoreError::Unavailable(format!("SQLite cannot read or write its file ({message})"))
        }
        SQLITE_CORRUPT | SQLITE_NOTADB => StoreError::Corrupt(format!(
            "the SQLite file is damaged or not a database ({message})"
        )),
        _ => StoreError::Database(message.to_owned()),
    }
}

/// The primary result code of a SQLite error (0 when there is none).
fn sqlite_code(db: &dyn DatabaseError) -> i32 {
    db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff
}

/// The unique index on a session's key and client session id.
const SESSION_SLOT_INDEX: &str = "sessions_key_client";

/// The migration versions recorded as applied (none before the first run).
async fn applied_versions(conn: &mut SqliteConnection) -> Result<Vec<i64>, StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(store_error)?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)
}

/// The usage flush ([`KeyStore::record_usage`](super::KeyStore::record_usage)) for a non-empty batch.
async fn record_usage(store: &SqliteStore, batch: &[UsageDelta]) -> Result<(), StoreError> {
    // The batch travels as JSON objects keyed by key id and is applied
    // by set-based statements: per outcome present (usually only `ok`)
    // one upsert of the all-time counters, per outcome and minute (one or
    // two minutes a flush) two upserts of the history, and one update of
    // the keys, however many keys it carries (a statement per key made
    // flushing the busiest thing a loaded gateway did). `json_each` over
    // an object yields each key and value without parsing it again, where
    // `->>` on the elements of an array of arrays re-parsed every element
    // per field: with 10,000 keys this form takes half the time.
    let usage = UsageObjects::of(batch);
    let mut tx = store.begin_write().await?;
    for (outcome, counts) in &usage.by_outcome {
        // The EXISTS guard drops deltas for keys deleted since the
        // gateway counted them (the foreign key would refuse the row).
        sqlx::query(
            "INSERT INTO key_usage (key_id, outcome, count) \
             SELECT key, ?1, value FROM json_each(?2) \
             WHERE EXISTS (SELECT 1 FROM keys WHERE id = key) \
             ON CONFLICT (key_id, outcome) DO UPDATE SET count = count + excluded.count",
        )
        .bind(*outcome)
        .bind(counts)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    // The history: each minute's counts added to its minute, hour and day
    // bucket, per key and per the key's owner (see the migration).
    for ((outcome, minute), counts) in &usage.by_minute {
        sqlx::query(
            "INSERT INTO usage_buckets (key_id, width, bucket, outcome, count) \
             SELECT key, w.width, ?2 / w.width * w.width, ?1, value \
             FROM json_each(?3) CROSS JOIN (SELECT 60 AS width UNION ALL SELECT 3600 UNION ALL SELECT 86400) AS w \
             WHERE EXISTS (SELECT 1 FROM keys WHERE id = key) \
             ON CONFLICT (key_id, width, bucket, outcome) DO UPDATE SET count = count + excluded.count",
        )
        .bind(*outcome)
        .bind(*minute)
        .bind(counts)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query(
            "INSERT INTO owner_usage_buckets (owner, width, bucket, outcome, count) \
             SELECT k.owner, w.width, ?2 / w.width * w.width, ?1, SUM(j.value) \
             FROM json_each(?3) AS j JOIN keys AS k ON k.id = j.key \
             CROSS JOIN (SELECT 60 AS width UNION ALL SELECT 3600 UNION ALL SELECT 86400) AS w \
             WHERE k.owner IS NOT NULL GROUP BY k.owner, w.width \
             ON CONFLICT (owner, width, bucket, outcome) DO UPDATE SET count = count + excluded.count",
        )
        .bind(*outcome)
        .bind(*minute)
        .bind(counts)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    // Batches from several gateways arrive in any order: keep the latest
    // use, not the last written. Timestamps are fixed-width RFC 3339
    // text, so < compares them as instants.
    sqlx::query(
        "UPDATE keys SET request_count = request_count + d.total, \
         last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < d.last \
         THEN d.last ELSE last_used_at END \
         FROM (SELECT key AS id, value ->> 0 AS total, value ->> 1 AS last \
               FROM json_each(?1)) AS d \
         WHERE keys.id = d.id",
    )
    .bind(&usage.by_key)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    tx.commit().await.map_err(store_error)
}

/// SQLite's side of the shared SQL (see the module docs for why).
impl Dialect for SqliteDialect {
    type Db = Sqlite;
    type Stamp = String;

    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");

    /// Nothing: `BEGIN IMMEDIATE` already holds the database's write lock.
    const LOCK_KEY: &'static str = "";

    fn stamp(at: DateTime<Utc>) -> String {
        timestamp_text(at)
    }

    fn store_error(e: sqlx::Error) -> StoreError {
        store_error(e)
    }

    /// SQLite names the index's columns (`key_secrets.short_prefix`); the
    /// unique index on short prefixes is the only one on that column.
    fn is_short_prefix_conflict(db: &dyn DatabaseError) -> bool {
        db.is_unique_violation() && db.message().contains("key_secrets.short_prefix")
    }

    /// SQLite names an index on expressions by its name.
    fn is_session_slot_conflict(db: &dyn DatabaseError) -> bool {
        db.is_unique_violation() && db.message().contains(SESSION_SLOT_INDEX)
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    async fn migrate(store: &SqliteStore) -> Result<MigrationReport, StoreError> {
        // One IMMEDIATE transaction around the whole run: two gateways
        // starting together on one file migrate one after the other, and the
        // second sees the first one's work instead of re-running it. sqlx
        // runs each migration in a savepoint inside it.
        let mut tx = store.begin_write().await?;
        let before = applied_versions(&mut tx).await?;
        rows::check_known_migrations(&MIGRATOR, &before)?;
        MIGRATOR
            .run_direct(&mut *tx)
            .await
            .map_err(|e| rows::migration_error(e, store_error))?;
        let after = applied_versions(&mut tx).await?;
        tx.commit().await.map_err(store_error)?;
        let applied = after.iter().copied().filter(|v| !before.contains(v)).collect();
        Ok(MigrationReport {
            applied,
            current: after.last().copied().unwrap_or(0),
        })
    }

    async fn record_usage(store: &SqliteStore, batch: &[UsageDelta]) -> Result<(), StoreError> {
        record_usage(store, batch).await
    }

    fn fmt_store(store: &SqliteStore, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The location and pool size are what an operator needs; SQLite
        // urls carry no password, but nothing else is printed regardless.
        f.debug_struct("SqliteStore")
            .field("location", &store.dialect.location)
            .field("connections", &store.pool.size())
            .finish()
    }
}

/// A usage batch as the flush statements read it: per outcome, a JSON
/// object of key id -> count; the same per outcome and minute (seconds
/// since the epoch); and one object of key id -> `[total, last use]` over
/// all outcomes. Repeated pairs are summed and counts saturate at the
/// largest stored integer.
struct UsageObjects<'a> {
    by_outcome: BTreeMap<&'a str, String>,
    by_minute: BTreeMap<(&'a str, i64), String>,
    by_key: String,
}

impl<'a> UsageObjects<'a> {
    fn of(batch: &'a [UsageDelta]) -> Self {
        let mut counts: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        let mut minutes: BTreeMap<(&str, i64), BTreeMap<&str, u64>> = BTreeMap::new();
        let mut keys: BTreeMap<&str, (u64, DateTime<Utc>)> = BTreeMap::new();
        for delta in batch {
            let id = delta.key_id.as_str();
            let outcome = delta.outcome.as_str();
            for per_key in [
                counts.entry(outcome).or_default(),
                minutes.entry((outcome, delta.minute.timestamp())).or_default(),
            ] {
                let count = per_key.entry(id).or_default();
                *count = count.saturating_add(delta.count);
            }
            let (total, last) = keys.entry(id).or_insert((0, delta.last_used_at));
            *total = total.saturating_add(delta.count);
            *last = (*last).max(delta.last_used_at);
        }
        let object = |per_key: BTreeMap<&str, u64>| {
            let entries: serde_json::Map<String, Value> = per_key
                .into_iter()
                .map(|(id, count)| (id.to_owned(), Value::from(rows::count_to_db(count))))
                .collect();
            Value::Object(entries).to_string()
        };
        let by_key = keys
            .into_iter()
            .map(|(id, (total, last))| {
                let value = serde_json::json!([rows::count_to_db(total), timestamp_text(last)]);
                (id.to_owned(), value)
            })
            .collect();
        Self {
            by_outcome: counts
                .into_iter()
                .map(|(o, per_key)| (o, object(per_key)))
                .collect(),
            by_minute: minutes
                .into_iter()
                .map(|(m, per_key)| (m, object(per_key)))
                .collect(),
            by_key: Value::Object(by_key).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::keys::KeyPatch;
    use crate::keys::usage::Granularity;
    use crate::keys::{RevokeReason, Session, TokenDigest};
    use crate::store::conformance::{self, Fixture, key, new_key, session, t};
    use crate::store::{Actor, KeyStore, SessionWrite};

    fn settings(url: String) -> StoreSettings {
        StoreSettings {
            url,
            auto_migrate: true,
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }

    fn file_url(path: &Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    async fn open_file(path: &Path) -> SqliteStore {
        SqliteStore::open(&settings(file_url(path))).await.unwrap()
    }

    /// A migrated store in its own temporary directory.
    async fn migrated() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_file(&dir.path().join("keys.db")).await;
        store.migrate().await.unwrap();
        (store, dir)
    }

    mod conformance_suite {
        use super::*;

        async fn fixture() -> Fixture {
            let (store, dir) = migrated().await;
            Fixture {
                store: Arc::new(store),
                guard: Box::new(dir),
            }
        }

        conformance::conformance_tests!(fixture);
    }

    fn latest_known() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap()
    }

    #[tokio::test]
    async fn first_migration_applies_every_version_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_file(&dir.path().join("keys.db")).await;
        let first = store.migrate().await.unwrap();
        assert_eq!(
            first.applied,
            vec![
                20261123000001,
                20261123000002,
                20261123000003,
                20261207000001,
                20261207000002
            ]
        );
        assert_eq!(first.current, latest_known());
        let second = store.migrate().await.unwrap();
        assert_eq!((second.applied.len(), second.current), (0, first.current));
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let (store, dir) = migrated().await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?, 'from a newer keygate', 1, X'00', 0)",
        )
        .bind(29991231000001_i64)
        .execute(&store.pool)
        .await
        .unwrap();
        let err = store.migrate().await.unwrap_err();
        let StoreError::Migration(message) = &err else {
            panic!("expected a migration error, got {err:?}");
        };
        assert!(message.contains("29991231000001"), "{message}");
        assert!(message.contains("newer than this keygate binary"), "{message}");
        assert!(message.contains("upgrade keygate"), "{message}");

        // A second gateway opening the same file is refused the same way,
        // and nothing was applied or broken by the refusal.
        let other = open_file(&dir.path().join("keys.db")).await;
        assert!(matches!(other.migrate().await, Err(StoreError::Migration(_))));
        other.ping().await.unwrap();
    }

    /// Root ignores directory permissions, so a read-only directory would
    /// not fail in this sandbox. SQLite never creates directories, so a file
    /// under a missing directory, or under a regular file, fails for every
    /// user and is the reliable way to test an unopenable database.
    #[tokio::test]
    async fn an_unopenable_file_is_unavailable_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = dir.path().join("missing");
        let not_a_dir = dir.path().join("plain-file");
        std::fs::write(&not_a_dir, b"not a directory").unwrap();
        for parent in [missing_dir, not_a_dir] {
            let path = parent.join("keys.db");
            let err = SqliteStore::open(&settings(file_url(&path))).await.unwrap_err();
            let StoreError::Unavailable(message) = &err else {
                panic!("expected Unavailable, got {err:?}");
            };
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(
                message.contains("does not exist or is not a directory"),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[tokio::test]
    async fn a_missing_file_without_mode_rwc_says_how_to_create_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let url = format!("sqlite://{}", path.display());
        let err = SqliteStore::open(&settings(url)).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("mode=rwc") && m.contains("keys.db")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let result = SqliteStore::open(&settings(file_url(&path))).await;
        let err = match result {
            Ok(store) => store.migrate().await.unwrap_err(),
            Err(e) => e,
        };
        assert!(
            matches!(&err, StoreError::Unavailable(m) | StoreError::Corrupt(m) if m.contains("not a SQLite database")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn connections_use_wal_foreign_keys_and_the_statement_timeout() {
        let (store, _dir) = migrated().await;
        let mut conn = store.pool.acquire().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let fks: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!((mode.as_str(), fks, busy), ("wal", 1, 5_000));
        assert!(format!("{store:?}").contains("keys.db"));
    }

    #[tokio::test]
    async fn timestamps_and_json_are_stored_as_sortable_text() {
        let (store, _dir) = migrated().await;
        let k = key("text0001", t(0));
        store.create_key(new_key(k.clone()), &Actor::cli()).await.unwrap();
        let (created, scopes, metadata): (String, String, String) =
            sqlx::query_as("SELECT created_at, scopes, metadata FROM keys WHERE id = ?")
                .bind(k.id.as_str())
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(created, "2026-11-23T12:00:00.123456Z");
        assert_eq!((scopes.as_str(), metadata.as_str()), ("[]", "{}"));
    }

    #[tokio::test]
    async fn the_audit_log_is_append_only() {
        let (store, _dir) = migrated().await;
        let k = key("appd0001", t(0));
        store.create_key(new_key(k), &Actor::cli()).await.unwrap();
        for sql in ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"] {
            let err = sqlx::query(sql).execute(&store.pool).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{err}");
        }
    }

    /// Usage flushes from two stores (two gateways) on one file add up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_usage_flushes_add_up() {
        let (first, dir) = migrated().await;
        let second = open_file(&dir.path().join("keys.db")).await;
        conformance::concurrent_usage_flushes_add_up(Arc::new(first), Arc::new(second)).await;
    }

    /// Many read-then-write transactions from two stores (two gateways) on
    /// one file: with BEGIN IMMEDIATE they queue on busy_timeout instead of
    /// failing with SQLITE_BUSY.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_queue_instead_of_failing() {
        let (first, dir) = migrated().await;
        let second = open_file(&dir.path().join("keys.db")).await;
        let k = key("conc0001", t(0));
        first.create_key(new_key(k.clone()), &Actor::cli()).await.unwrap();
        let stores = [Arc::new(first), Arc::new(second)];
        let mut tasks = Vec::new();
        for i in 0..24_i64 {
            let store = Arc::clone(&stores[usize::try_from(i % 2).unwrap()]);
            let id = k.id.clone();
            tasks.push(tokio::spawn(async move {
                let patch = KeyPatch {
                    name: Some(format!("name {i}")),
                    ..KeyPatch::default()
                };
                store.update_key(&id, &patch, t(i + 1), &Actor::cli()).await?;
                let delta = UsageDelta {
                    key_id: id.clone(),
                    outcome: "ok".into(),
                    minute: Granularity::Minute.floor(t(i)),
                    count: 1,
                    last_used_at: t(i),
                };
                store.record_usage(&[delta]).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let store = &stores[0];
        assert_eq!(store.change_seq().await.unwrap(), 25);
        assert_eq!(store.usage(&k.id).await.unwrap().total, 24);
        assert_eq!(store.get_key(&k.id).await.unwrap().request_count, 24);
    }

    /// Session rotations and the expired-session cleanup are lone write
    /// statements, run without `BEGIN IMMEDIATE`: from two stores on one
    /// file, between transactions, they queue on busy_timeout as well.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_write_statements_queue_instead_of_failing() {
        let (first, dir) = migrated().await;
        let second = open_file(&dir.path().join("keys.db")).await;
        let k = key("lone0001", t(0));
        first.create_key(new_key(k.clone()), &Actor::cli()).await.unwrap();
        let mut sessions = Vec::new();
        for i in 0..12_i64 {
            let s = session(&k.id, Some(&format!("client {i}")), t(i + 1));
            let written = first.save_session(&s, None, None, &Actor::cli()).await.unwrap();
            assert_eq!(written, SessionWrite::Written);
            sessions.push((i, s));
        }
        let stores = [Arc::new(first), Arc::new(second)];
        let mut tasks = Vec::new();
        for (i, s) in sessions {
            let store = Arc::clone(&stores[usize::try_from(i % 2).unwrap()]);
            let id = k.id.clone();
            tasks.push(tokio::spawn(async move {
                let next = Session {
                    refresh_generation: 1,
                    refresh_digest: TokenDigest::from_bytes([1; 32]),
                    ..s
                };
                let written = store.save_session(&next, Some(0), None, &Actor::cli()).await?;
                let patch = KeyPatch {
                    name: Some(format!("name {i}")),
                    ..KeyPatch::default()
                };
                store.update_key(&id, &patch, t(100 + i), &Actor::cli()).await?;
                store.delete_expired_sessions(t(0)).await?;
                Ok::<_, StoreError>((written, next))
            }));
        }
        for task in tasks {
            let (written, next) = task.await.unwrap().unwrap();
            assert_eq!(written, SessionWrite::Written);
            assert_eq!(stores[0].session(&next.id).await.unwrap(), Some(next));
        }
    }

    #[tokio::test]
    async fn in_memory_stores_work_for_tests_and_demos() {
        let store = SqliteStore::open(&settings("sqlite::memory:".into()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let k = key("memo0001", t(0));
        store.create_key(new_key(k.clone()), &Actor::cli()).await.unwrap();
        assert_eq!(store.get_key(&k.id).await.unwrap(), k);
        assert!(format!("{store:?}").contains(":memory:"));
    }

    #[tokio::test]
    async fn a_bad_url_is_unavailable() {
        let err = SqliteStore::open(&settings("sqlite://keys.db?mode=bogus".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("database.url")),
            "{err:?}"
        );
    }

    #[test]
    fn error_mapping_classifies_sqlite_codes() {
        assert!(matches!(
            store_error(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(m) if m.contains("connect_timeout")
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "gone");
        assert!(matches!(
            store_error(sqlx::Error::Io(io)),
            StoreError::Unavailable(_)
        ));
    }

    #[tokio::test]
    async fn a_writer_held_past_the_statement_timeout_is_unavailable() {
        let (first, dir) = migrated().await;
        let mut short = settings(file_url(&dir.path().join("keys.db")));
        short.statement_timeout = Duration::from_millis(100);
        let second = SqliteStore::open(&short).await.unwrap();
        let held = first.begin_write().await.unwrap();
        let err = second
            .create_key(new_key(key("busy0001", t(0))), &Actor::cli())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("locked")),
            "{err:?}"
        );
        drop(held);
        // Readers are not blocked by a writer (WAL), and writes resume.
        second.change_seq().await.unwrap();
        second
            .create_key(new_key(key("busy0001", t(0))), &Actor::cli())
            .await
            .unwrap();
    }

    /// Keys are not deleted through the store, but if one is (by hand),
    /// its sessions go with it, like its secrets and usage.
    #[tokio::test]
    async fn deleting_a_key_deletes_its_sessions() {
        let (store, _dir) = migrated().await;
        let k = key("sesdel01", t(0));
        store.create_key(new_key(k.clone()), &Actor::cli()).await.unwrap();
        let s = session(&k.id, None, t(1));
        let written = store.save_session(&s, None, None, &Actor::cli()).await.unwrap();
        assert_eq!(written, SessionWrite::Written);
        sqlx::query("DELETE FROM keys WHERE id = ?")
            .bind(k.id.as_str())
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.session(&s.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn sessions_store_digests_as_blobs_and_times_as_sortable_text() {
        let (store, _dir) = migrated().await;
        let k = key("sescol01", t(0));
        store.create_key(new_key(k.clone()), &Actor::cli()).await.unwrap();
        let s = session(&k.id, Some("dev"), t(1));
        let _ = store.save_session(&s, None, None, &Actor::cli()).await.unwrap();
        store
            .revoke_session(&s.id, RevokeReason::RefreshReuse, t(2), &Actor::cli())
            .await
            .unwrap();
        let (digest_type, digest_len, created, revoked, reason, scopes): (
            String,
            i64,
            String,
            String,
            String,
            String,
        ) = sqlx::query_as(
            "SELECT typeof(refresh_digest), length(refresh_digest), created_at, revoked_at, revoked_reason, \
                 scopes FROM sessions WHERE id = ?",
        )
        .bind(s.id.as_str())
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!((digest_type.as_str(), digest_len), ("blob", 32));
        assert_eq!(created, "2026-11-23T12:00:01.123456Z");
        assert_eq!(revoked, "2026-11-23T12:00:02.123456Z");
        assert_eq!(
            (reason.as_str(), scopes.as_str()),
            ("refresh_reuse", r#"["orders:read"]"#)
        );

        // The table refuses what the store never writes.
        for (what, sql) in [
            (
                "a short digest",
                "UPDATE sessions SET refresh_digest = zeroblob(31)",
            ),
            (
                "a digest as text",
                "UPDATE sessions SET family_digest = hex(family_digest)",
            ),
            (
                "an unknown reason",
                "UPDATE sessions SET revoked_reason = 'bored'",
            ),
            (
                "a reason without an instant",
                "UPDATE sessions SET revoked_at = NULL",
            ),
            (
                "a negative generation",
                "UPDATE sessions SET refresh_generation = -1",
            ),
            (
                "scopes that are not an array",
                "UPDATE sessions SET scopes = '{}'",
            ),
        ] {
            assert!(
                sqlx::query(sql).execute(&store.pool).await.is_err(),
                "{what} was accepted"
            );
        }
    }
}
