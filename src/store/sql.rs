//! The SQL both key stores run: each query's shape (SQL text, bindings, row
//! decoding, error mapping) and each call's transaction written once, in
//! [`SqlStore`], generic over the [`Dialect`] that says what differs per
//! backend. `postgres.rs` and `sqlite.rs` each hold one dialect, their
//! connection setup, error codes, migrations and usage flushes; row
//! decoding and the audit rules live in `super::rows`.
//!
//! One SQL text serves both drivers:
//! - Placeholders are `$1`, `$2`, …: Postgres' own, and a numbered
//!   parameter for sqlx's SQLite driver too (it binds `$NNN` by its
//!   number), so a value used twice is bound once on both.
//! - Only syntax both accept: `IS NOT DISTINCT FROM`, `RETURNING` and
//!   `WHERE TRUE` need SQLite 3.39 or later, and sqlx bundles 3.46.
//! - Instants are bound as the dialect's [`Dialect::Stamp`]: `timestamptz`
//!   for Postgres, fixed-width RFC 3339 text for SQLite, so SQL compares
//!   them as instants on both.
//!
//! What the dialect decides instead of the SQL: how a write transaction
//! begins (SQLite's `BEGIN IMMEDIATE`), the row lock on a key about to
//! change (Postgres' `FOR NO KEY UPDATE`), the audit ordering lock and the
//! change announcement (Postgres only), and which unique index an error
//! names. Each backend's module docs say why it needs what it provides.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::error::DatabaseError;
use sqlx::types::Json;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};
use tokio::sync::watch;

use super::rows::{
    self, AUDIT_COLUMNS, AuditRow, BucketRow, CandidateRow, DashboardRow, KEY_COLUMNS, KeyRow,
    SECRET_COLUMNS, SESSION_COLUMNS, SessionRow, SessionSave, TotalsRow, UsageRow,
};
use super::{
    Actor, AuditEntry, BucketCount, Candidate, DashboardSession, KeyFilter, KeyStore, KeyTotals,
    MigrationReport, NewKey, Page, PageRequest, SessionWrite, StoreError, Usage, UsageDelta, UsageRank,
    UsageSubject,
};
use crate::keys::usage::{Granularity, SeriesRange};
use crate::keys::{Key, KeyHash, KeyId, KeyPatch, KeyStatus, ModelError, RevokeReason, Session, SessionId};

/// A connection of the dialect's driver.
type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// What one SQL backend does differently from the other. Implemented by
/// the backend's own state (`postgres::PgDialect`, `sqlite::SqliteDialect`),
/// which [`SqlStore`] carries beside its pool.
pub trait Dialect: Send + Sync + Sized + 'static {
    /// The sqlx driver.
    type Db: Database;
    /// An instant as this backend binds it.
    type Stamp: for<'q> Encode<'q, Self::Db> + Type<Self::Db> + Send + 'static;

    /// The statement that begins a write transaction; `None` for the
    /// driver's plain `BEGIN`.
    const BEGIN_WRITE: Option<&'static str>;

    /// Appended to the read of a key that the same transaction then
    /// changes: a lock that makes a concurrent change of that key wait, or
    /// nothing where the write transaction already excludes other writers.
    const LOCK_KEY: &'static str;

    /// An instant to bind, at stored precision.
    fn stamp(at: DateTime<Utc>) -> Self::Stamp;

    /// Maps a sqlx error by this backend's error codes.
    fn store_error(e: sqlx::Error) -> StoreError;

    /// Whether an insert into `key_secrets` failed on the unique index on
    /// generated short prefixes.
    fn is_short_prefix_conflict(db: &dyn DatabaseError) -> bool;

    /// Whether an insert into `sessions` failed on the unique index on a
    /// key and client session id.
    fn is_session_slot_conflict(db: &dyn DatabaseError) -> bool;

    /// How many rows a statement changed.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// Takes, in the caller's transaction, whatever lock keeps audit rows
    /// committing in `seq` order. Called once per transaction, after its
    /// other writes and right before its first audit row. None by default.
    fn lock_audit(_conn: &mut Conn<Self>) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Announces the transaction's last audit `seq` to other gateways
    /// (delivered on commit). Called once, right after the last audit row.
    /// Nothing by default: followers poll.
    fn announce(_conn: &mut Conn<Self>, _seq: i64) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// [`KeyStore::migrate`]: migrations are embedded and locked per backend.
    fn migrate(store: &SqlStore<Self>) -> impl Future<Output = Result<MigrationReport, StoreError>> + Send;

    /// [`KeyStore::record_usage`]: each backend passes a batch in the form
    /// its SQL reads fastest (arrays for Postgres, JSON for SQLite).
    fn record_usage(
        store: &SqlStore<Self>,
        batch: &[UsageDelta],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// [`KeyStore::change_notifications`]; `None` (poll only) by default.
    fn change_notifications(_store: &SqlStore<Self>) -> Option<watch::Receiver<i64>> {
        None
    }

    /// The store's `Debug`: what an operator needs, never a password.
    fn fmt_store(store: &SqlStore<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// A key store in a SQL database: a pool and the backend's [`Dialect`].
/// The backends name it `PostgresStore` and `SqliteStore`.
pub struct SqlStore<D: Dialect> {
    /// The connection pool.
    pub(super) pool: Pool<D::Db>,
    /// The backend's own state and rules.
    pub(super) dialect: D,
}

impl<D: Dialect> fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        D::fmt_store(self, f)
    }
}

impl<D: Dialect> SqlStore<D> {
    /// A write transaction, begun the dialect's way.
    pub(super) async fn begin_write(&self) -> Result<Transaction<'static, D::Db>, StoreError> {
        match D::BEGIN_WRITE {
            Some(statement) => self.pool.begin_with(statement).await,
            None => self.pool.begin().await,
        }
        .map_err(D::store_error)
    }
}

/// Maps an error from inserting a secret: a violation of the unique index on
/// generated short prefixes (a concurrent create that got there first, past
/// the check) means the short prefix is taken.
pub(super) fn insert_error<D: Dialect>(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if D::is_short_prefix_conflict(db.as_ref()) => StoreError::ShortPrefixTaken,
        e => D::store_error(e),
    }
}

/// The statements below, one per query shape. Each takes the caller's
/// connection (a transaction's, or one from the pool).
#[expect(
    private_bounds,
    reason = "the row types stay private to the store; these helpers are pub(super), for the backends' tests"
)]
impl<D: Dialect> SqlStore<D>
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<&'q str>: Encode<'q, D::Db>,
    for<'q> Option<D::Stamp>: Encode<'q, D::Db>,
    for<'q> &'q [u8]: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Json<&'q BTreeSet<String>>: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Json<&'q Value>: Encode<'q, D::Db> + Type<D::Db>,
    KeyRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    SessionRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    (i32,): for<'r> FromRow<'r, <D::Db as Database>::Row>,
    (i64,): for<'r> FromRow<'r, <D::Db as Database>::Row>,
{
    /// One key; `lock` is [`Dialect::LOCK_KEY`] in a transaction that then
    /// changes it, else empty.
    pub(super) async fn fetch_key(conn: &mut Conn<D>, id: &KeyId, lock: &str) -> Result<Key, StoreError> {
        let row: Option<KeyRow> =
            sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.id = $1{lock}"))
                .bind(id.as_str())
                .fetch_optional(conn)
                .await
                .map_err(D::store_error)?;
        row.ok_or_else(|| StoreError::NotFound(id.clone()))?.into_key()
    }

    /// Whether any stored secret (generated or imported) has this short
    /// prefix. It sees committed secrets only: a concurrent insert of the
    /// same generated one is caught by the unique index instead.
    async fn short_prefix_taken(conn: &mut Conn<D>, short_prefix: &str) -> Result<bool, StoreError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM key_secrets WHERE short_prefix = $1 LIMIT 1")
                .bind(short_prefix)
                .fetch_optional(conn)
                .await
                .map_err(D::store_error)?;
        Ok(found.is_some())
    }

    /// Inserts a key and its first (current) secret.
    pub(super) async fn insert_key(conn: &mut Conn<D>, new: &NewKey) -> Result<(), StoreError> {
        let key = &new.key;
        sqlx::query(
            "INSERT INTO keys (id, name, owner, scopes, plan, status, expires_at, prefix, short_prefix, source, \
             metadata, created_at, updated_at, last_used_at, request_count) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(key.id.as_str())
        .bind(key.name.as_str())
        .bind(key.owner.as_deref())
        .bind(Json(&key.scopes))
        .bind(rows::plan_to_db(key.plan.as_deref()))
        .bind(key.status.as_str())
        .bind(key.expires_at.map(D::stamp))
        .bind(key.prefix.as_str())
        .bind(key.short_prefix.as_str())
        .bind(key.source.as_str())
        .bind(Json(&key.metadata))
        .bind(D::stamp(key.created_at))
        .bind(D::stamp(key.updated_at))
        .bind(key.last_used_at.map(D::stamp))
        .bind(rows::count_to_db(key.request_count))
        .execute(&mut *conn)
        .await
        .map_err(D::store_error)?;
        let source = key.source.as_str();
        Self::insert_secret(
            conn,
            &key.id,
            &key.prefix,
            &key.short_prefix,
            &new.hash,
            source,
            key.created_at,
        )
        .await
    }

    /// Inserts a current secret (`valid_until` NULL).
    async fn insert_secret(
        conn: &mut Conn<D>,
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
        .bind(D::stamp(created_at))
        .execute(conn)
        .await
        .map(drop)
        .map_err(insert_error::<D>)
    }

    /// Appends one audit row (in the caller's transaction, after
    /// [`Dialect::lock_audit`]) and returns its seq.
    pub(super) async fn append_audit(
        conn: &mut Conn<D>,
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
        .bind(D::stamp(at))
        .fetch_one(conn)
        .await
        .map_err(D::store_error)
    }

    /// Takes the audit lock, appends one audit row and announces it: the
    /// end of every transaction that records one change.
    async fn audit_one(
        conn: &mut Conn<D>,
        key_id: &KeyId,
        actor: &Actor,
        action: &str,
        details: &Value,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        D::lock_audit(&mut *conn).await?;
        let seq = Self::append_audit(&mut *conn, key_id, actor, action, details, at).await?;
        D::announce(conn, seq).await
    }

    /// Inserts a session row. `Ok(false)` when the key already has a
    /// session with this client session id (a concurrent login won);
    /// [`StoreError::NotFound`] when the key does not exist. On Postgres
    /// either error aborts the transaction, which the caller then drops.
    pub(super) async fn insert_session(
        conn: &mut Conn<D>,
        record: &Session,
        generation: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(record.id.as_str())
        .bind(record.key_id.as_str())
        .bind(record.client_session.as_deref())
        .bind(Json(&record.scopes))
        .bind(D::stamp(record.created_at))
        .bind(D::stamp(record.expires_at))
        .bind(&record.family_digest.as_bytes()[..])
        .bind(&record.refresh_digest.as_bytes()[..])
        .bind(generation)
        .bind(record.access_jti.as_str())
        .bind(D::stamp(record.access_issued_at))
        .bind(D::stamp(record.access_expires_at))
        .execute(conn)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(db)) if D::is_session_slot_conflict(db.as_ref()) => Ok(false),
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(StoreError::NotFound(record.key_id.clone()))
            }
            Err(e) => Err(D::store_error(e)),
        }
    }

    /// One session row.
    async fn fetch_session(conn: &mut Conn<D>, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let row: Option<SessionRow> =
            sqlx::query_as(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(conn)
                .await
                .map_err(D::store_error)?;
        row.map(SessionRow::into_session).transpose()
    }
}

#[async_trait]
impl<D: Dialect> KeyStore for SqlStore<D>
where
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    for<'q> <D::Db as Database>::Arguments<'q>: IntoArguments<'q, D::Db>,
    for<'q> &'q str: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Option<&'q str>: Encode<'q, D::Db>,
    for<'q> Option<D::Stamp>: Encode<'q, D::Db>,
    for<'q> &'q [u8]: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> i64: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Json<&'q BTreeSet<String>>: Encode<'q, D::Db> + Type<D::Db>,
    for<'q> Json<&'q Value>: Encode<'q, D::Db> + Type<D::Db>,
    KeyRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    SessionRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    CandidateRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    AuditRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    UsageRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    BucketRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    DashboardRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    TotalsRow: for<'r> FromRow<'r, <D::Db as Database>::Row>,
    (i32,): for<'r> FromRow<'r, <D::Db as Database>::Row>,
    (i64,): for<'r> FromRow<'r, <D::Db as Database>::Row>,
    (String,): for<'r> FromRow<'r, <D::Db as Database>::Row>,
{
    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        D::migrate(self).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(D::store_error)
    }

    async fn create_key(&self, new: NewKey, actor: &Actor) -> Result<Key, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::short_prefix_taken(&mut tx, &new.key.short_prefix).await? {
            return Err(StoreError::ShortPrefixTaken);
        }
        Self::insert_key(&mut tx, &new).await?;
        let details = rows::insert_details(&new.key);
        let (id, at) = (&new.key.id, new.key.created_at);
        Self::audit_one(&mut tx, id, actor, rows::ACTION_CREATED, &details, at).await?;
        tx.commit().await.map_err(D::store_error)?;
        Ok(rows::as_stored(new.key))
    }

    async fn import_keys(&self, keys: Vec<NewKey>, actor: &Actor) -> Result<Vec<Key>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        for new in &keys {
            Self::insert_key(&mut tx, new).await?;
        }
        // The audit rows go last, in key order, so the audit lock is held
        // only for them and the commit, not for the whole import.
        D::lock_audit(&mut tx).await?;
        let mut last_seq = 0;
        for new in &keys {
            let details = rows::insert_details(&new.key);
            let (id, at) = (&new.key.id, new.key.created_at);
            last_seq = Self::append_audit(&mut tx, id, actor, rows::ACTION_IMPORTED, &details, at).await?;
        }
        // One announcement for the whole import: followers read every row.
        D::announce(&mut tx, last_seq).await?;
        tx.commit().await.map_err(D::store_error)?;
        Ok(keys.into_iter().map(|new| rows::as_stored(new.key)).collect())
    }

    async fn get_key(&self, id: &KeyId) -> Result<Key, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(D::store_error)?;
        Self::fetch_key(&mut conn, id, "").await
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: PageRequest<KeyId>,
    ) -> Result<Page<Key, KeyId>, StoreError> {
        // Only the conditions in use are added, so the planner can pick the
        // (owner, id) or (status, id) index. (The SQL is numbered by hand:
        // sqlx's QueryBuilder cannot be used generically over the driver,
        // since its arguments would have to outlive the builder.)
        // A search matches a name containing it (LIKE's wildcards in it
        // escaped), an owner or a short prefix equal to it.
        let pattern = filter.search.as_deref().map(|text| {
            let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{}%", escaped.to_lowercase())
        });
        let conditions = [
            ("k.owner = $", filter.owner.as_deref()),
            ("k.status = $", filter.status.map(|status| status.as_str())),
            ("k.plan = $", filter.plan.as_deref()),
            ("k.id > $", page.after.as_ref().map(KeyId::as_str)),
        ];
        let mut sql = format!("SELECT {KEY_COLUMNS} FROM keys k WHERE TRUE");
        let mut values = Vec::new();
        for (condition, value) in conditions {
            if let Some(value) = value {
                values.push(value);
                sql.push_str(&format!(" AND {condition}{}", values.len()));
            }
        }
        if let (Some(search), Some(pattern)) = (filter.search.as_deref(), pattern.as_deref()) {
            values.push(pattern);
            let like = values.len();
            values.push(search);
            let exact = values.len();
            sql.push_str(&format!(
                " AND (LOWER(k.name) LIKE ${like} ESCAPE '\\' OR k.owner = ${exact} OR k.short_prefix = ${exact})"
            ));
        }
        sql.push_str(&format!(" ORDER BY k.id LIMIT ${}", values.len() + 1));
        let query = values
            .into_iter()
            .fold(sqlx::query_as(&sql), |query, value| query.bind(value));
        let fetched: Vec<KeyRow> = query
            .bind(rows::fetch_limit(page.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(D::store_error)?;
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
        let mut tx = self.begin_write().await?;
        let mut key = Self::fetch_key(&mut tx, id, D::LOCK_KEY).await?;
        // On a refused change the transaction is dropped, which rolls it back.
        let changed = key.apply(patch, now)?;
        if changed.is_empty() {
            tx.rollback().await.map_err(D::store_error)?;
            return Ok(key);
        }
        sqlx::query(
            "UPDATE keys SET name = $1, owner = $2, scopes = $3, plan = $4, status = $5, expires_at = $6, \
             metadata = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(key.name.as_str())
        .bind(key.owner.as_deref())
        .bind(Json(&key.scopes))
        .bind(rows::plan_to_db(key.plan.as_deref()))
        .bind(key.status.as_str())
        .bind(key.expires_at.map(D::stamp))
        .bind(Json(&key.metadata))
        .bind(D::stamp(key.updated_at))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(D::store_error)?;
        let action = rows::update_action(&changed, key.status);
        Self::audit_one(&mut tx, id, actor, action, &rows::update_details(&changed), now).await?;
        tx.commit().await.map_err(D::store_error)?;
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
        let mut tx = self.begin_write().await?;
        let mut key = Self::fetch_key(&mut tx, id, D::LOCK_KEY).await?;
        if key.status == KeyStatus::Revoked {
            return Err(ModelError::RevokedIsFinal.into());
        }
        if Self::short_prefix_taken(&mut tx, short_prefix).await? {
            return Err(StoreError::ShortPrefixTaken);
        }
        // A grace period that has already ended is no grace period.
        let grace_until = grace_until.filter(|until| *until > now);
        sqlx::query(
            "DELETE FROM key_secrets WHERE key_id = $1 AND valid_until IS NOT NULL AND valid_until <= $2",
        )
        .bind(id.as_str())
        .bind(D::stamp(now))
        .execute(&mut *tx)
        .await
        .map_err(D::store_error)?;
        let demote = match grace_until {
            Some(until) => sqlx::query(
                "UPDATE key_secrets SET valid_until = $1 WHERE key_id = $2 AND valid_until IS NULL",
            )
            .bind(D::stamp(until))
            .bind(id.as_str()),
            None => sqlx::query("DELETE FROM key_secrets WHERE key_id = $1 AND valid_until IS NULL")
                .bind(id.as_str()),
        };
        demote.execute(&mut *tx).await.map_err(D::store_error)?;
        let source = rows::ROTATED_SOURCE.as_str();
        Self::insert_secret(&mut tx, id, prefix, short_prefix, &hash, source, now).await?;
        sqlx::query(
            "UPDATE keys SET prefix = $1, short_prefix = $2, source = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(prefix)
        .bind(short_prefix)
        .bind(source)
        .bind(D::stamp(now))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(D::store_error)?;
        let details = rows::rotate_details(grace_until, short_prefix);
        Self::audit_one(&mut tx, id, actor, rows::ACTION_ROTATED, &details, now).await?;
        tx.commit().await.map_err(D::store_error)?;
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
        .map_err(D::store_error)?;
        found.into_iter().map(CandidateRow::into_candidate).collect()
    }

    async fn imported_prefixes(&self) -> Result<BTreeSet<String>, StoreError> {
        let prefixes: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT prefix FROM key_secrets WHERE source = 'imported'")
                .fetch_all(&self.pool)
                .await
                .map_err(D::store_error)?;
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
        .map_err(D::store_error)?;
        let entries = fetched
            .into_iter()
            .map(AuditRow::into_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows::into_page(entries, page.limit, |entry| entry.seq))
    }

    async fn key_audit(&self, id: &KeyId, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        // The (key_id, seq) index, backwards.
        let fetched: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE key_id = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(id.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(D::store_error)?;
        fetched.into_iter().map(AuditRow::into_entry).collect()
    }

    async fn change_seq(&self) -> Result<i64, StoreError> {
        // `seq` is a 64-bit integer on both, and so is its COALESCE with 0.
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
            .fetch_one(&self.pool)
            .await
            .map_err(D::store_error)
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        D::record_usage(self, batch).await
    }

    async fn usage(&self, id: &KeyId) -> Result<Usage, StoreError> {
        let fetched: Vec<UsageRow> = sqlx::query_as(
            "SELECT k.last_used_at, u.outcome, u.count FROM keys k \
             LEFT JOIN key_usage u ON u.key_id = k.id WHERE k.id = $1 ORDER BY u.outcome",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(D::store_error)?;
        rows::usage_from_rows(fetched)?.ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    async fn owner_usage(&self, owner: &str) -> Result<Option<Usage>, StoreError> {
        // The owner is known while it has a key or a history.
        let known: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM keys WHERE owner = $1) \
             + (SELECT COUNT(*) FROM (SELECT 1 FROM owner_usage_buckets WHERE owner = $1 LIMIT 1) AS h)",
        )
        .bind(owner)
        .fetch_one(&self.pool)
        .await
        .map_err(D::store_error)?;
        if known == 0 {
            return Ok(None);
        }
        // One row at least (the latest use, NULL without keys), then one per
        // outcome its current keys have counted.
        let fetched: Vec<UsageRow> = sqlx::query_as(
            "SELECT m.last_used_at, u.outcome, u.count \
             FROM (SELECT MAX(last_used_at) AS last_used_at FROM keys WHERE owner = $1) AS m \
             LEFT JOIN (SELECT ku.outcome, CAST(SUM(ku.count) AS BIGINT) AS count \
                        FROM key_usage ku JOIN keys k ON k.id = ku.key_id \
                        WHERE k.owner = $1 GROUP BY ku.outcome) AS u ON TRUE \
             ORDER BY u.outcome",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(D::store_error)?;
        Ok(Some(rows::usage_from_rows(fetched)?.unwrap_or_default()))
    }

    async fn usage_buckets(
        &self,
        subject: UsageSubject<'_>,
        span: SeriesRange,
    ) -> Result<Vec<BucketCount>, StoreError> {
        // A bucket is one row per outcome in either table (its primary key),
        // so this is a range scan of that key with nothing to add up.
        let (sql, who) = match subject {
            UsageSubject::Key(id) => (
                "SELECT bucket, outcome, count FROM usage_buckets \
                 WHERE key_id = $1 AND width = $2 AND bucket >= $3 AND bucket < $4 ORDER BY bucket, outcome",
                id.as_str(),
            ),
            UsageSubject::Owner(owner) => (
                "SELECT bucket, outcome, count FROM owner_usage_buckets \
                 WHERE owner = $1 AND width = $2 AND bucket >= $3 AND bucket < $4 ORDER BY bucket, outcome",
                owner,
            ),
            // Summed over every key: the tier's (width, bucket) index. ($1
            // is bound but unused, so the numbering stays the same.)
            UsageSubject::All => (
                "SELECT bucket, outcome, CAST(SUM(count) AS BIGINT) AS count FROM usage_buckets \
                 WHERE $1 = $1 AND width = $2 AND bucket >= $3 AND bucket < $4 \
                 GROUP BY bucket, outcome ORDER BY bucket, outcome",
                "",
            ),
        };
        let fetched: Vec<BucketRow> = sqlx::query_as(sql)
            .bind(who)
            .bind(span.granularity.seconds())
            .bind(span.from.timestamp())
            .bind(span.to.timestamp())
            .fetch_all(&self.pool)
            .await
            .map_err(D::store_error)?;
        fetched.into_iter().map(BucketCount::try_from).collect()
    }

    async fn usage_top(
        &self,
        span: SeriesRange,
        rank: UsageRank,
        limit: u32,
    ) -> Result<Vec<KeyTotals>, StoreError> {
        // Sums per key first (the tier's (width, bucket) index), then the
        // keys' names for the few that rank.
        let (keep, order) = match rank {
            UsageRank::Requests => ("TRUE", "t.total DESC"),
            UsageRank::Refused => ("t.total > t.ok", "t.total - t.ok DESC, t.total DESC"),
        };
        let sql = format!(
            "SELECT k.id, k.owner, k.name, t.total, t.ok FROM \
             (SELECT key_id, CAST(SUM(count) AS BIGINT) AS total, \
                     CAST(SUM(CASE WHEN outcome = 'ok' THEN count ELSE 0 END) AS BIGINT) AS ok \
              FROM usage_buckets WHERE width = $1 AND bucket >= $2 AND bucket < $3 GROUP BY key_id) AS t \
             JOIN keys k ON k.id = t.key_id WHERE {keep} ORDER BY {order}, k.id LIMIT $4"
        );
        let fetched: Vec<TotalsRow> = sqlx::query_as(&sql)
            .bind(span.granularity.seconds())
            .bind(span.from.timestamp())
            .bind(span.to.timestamp())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(D::store_error)?;
        fetched.into_iter().map(KeyTotals::try_from).collect()
    }

    async fn prune_usage(&self, cutoffs: &[(Granularity, DateTime<Utc>)]) -> Result<u64, StoreError> {
        let mut pruned = 0;
        for (granularity, cutoff) in cutoffs {
            for table in ["usage_buckets", "owner_usage_buckets"] {
                // A transaction per statement: pruning never holds the
                // writer (SQLite) longer than one tier of one table.
                let mut tx = self.begin_write().await?;
                let deleted = sqlx::query(&format!("DELETE FROM {table} WHERE width = $1 AND bucket < $2"))
                    .bind(granularity.seconds())
                    .bind(cutoff.timestamp())
                    .execute(&mut *tx)
                    .await
                    .map_err(D::store_error)?;
                tx.commit().await.map_err(D::store_error)?;
                pruned += D::rows_affected(&deleted);
            }
        }
        Ok(pruned)
    }

    async fn open_dashboard_session(
        &self,
        id_digest: &[u8; 32],
        session: &DashboardSession,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (id_digest, kind, subject, grant_json, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id_digest[..])
        .bind(session.kind.as_str())
        .bind(session.subject.as_str())
        .bind(Json(&session.grant))
        .bind(session.csrf.as_str())
        .bind(D::stamp(session.created_at))
        .bind(D::stamp(session.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(D::store_error)?;
        tx.commit().await.map_err(D::store_error)
    }

    async fn dashboard_session(
        &self,
        id_digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError> {
        let found: Option<DashboardRow> = sqlx::query_as(
            "SELECT kind, subject, grant_json, csrf, created_at, expires_at FROM dashboard_sessions \
             WHERE id_digest = $1 AND expires_at > $2",
        )
        .bind(&id_digest[..])
        .bind(D::stamp(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(D::store_error)?;
        found.map(DashboardSession::try_from).transpose()
    }

    async fn end_dashboard_session(&self, id_digest: &[u8; 32]) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM dashboard_sessions WHERE id_digest = $1")
            .bind(&id_digest[..])
            .execute(&mut *tx)
            .await
            .map_err(D::store_error)?;
        tx.commit().await.map_err(D::store_error)?;
        Ok(D::rows_affected(&deleted) > 0)
    }

    async fn delete_expired_dashboard_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
            .bind(D::stamp(before))
            .execute(&mut *tx)
            .await
            .map_err(D::store_error)?;
        tx.commit().await.map_err(D::store_error)?;
        Ok(D::rows_affected(&deleted))
    }

    async fn session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(D::store_error)?;
        Self::fetch_session(&mut conn, id).await
    }

    async fn session_for(
        &self,
        key_id: &KeyId,
        client_session: Option<&str>,
    ) -> Result<Option<Session>, StoreError> {
        // A key has few sessions: the unique index's leading key_id finds
        // them, and IS NOT DISTINCT FROM matches a bound NULL too (and ''
        // only to '').
        let row: Option<SessionRow> = sqlx::query_as(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE key_id = $1 AND client_session IS NOT DISTINCT FROM $2"
        ))
        .bind(key_id.as_str())
        .bind(client_session)
        .fetch_optional(&self.pool)
        .await
        .map_err(D::store_error)?;
        row.map(SessionRow::into_session).transpose()
    }

    async fn save_session(
        &self,
        record: &Session,
        expected_generation: Option<u64>,
        replaces: Option<&SessionId>,
        actor: &Actor,
    ) -> Result<SessionWrite, StoreError> {
        let (save, generation) = rows::check_session_save(record, expected_generation, replaces)?;
        match save {
            SessionSave::Insert { replaces } => {
                let mut tx = self.begin_write().await?;
                // Only an unusable row of the same key and client session:
                // an active one stays, and the insert below then conflicts.
                // Two logins replacing one row queue (on its row lock, or on
                // SQLite's write lock); the second deletes nothing and its
                // insert conflicts.
                let mut replaced = None;
                if let Some(old) = replaces {
                    let deleted = sqlx::query(
                        "DELETE FROM sessions WHERE id = $1 AND key_id = $2 \
                         AND client_session IS NOT DISTINCT FROM $3 \
                         AND (revoked_at IS NOT NULL OR expires_at <= $4)",
                    )
                    .bind(old.as_str())
                    .bind(record.key_id.as_str())
                    .bind(record.client_session.as_deref())
                    .bind(D::stamp(record.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(D::store_error)?;
                    replaced = (D::rows_affected(&deleted) > 0).then_some(old);
                }
                // On a conflict the transaction is dropped, which rolls back
                // the delete as well.
                if !Self::insert_session(&mut tx, record, generation).await? {
                    return Ok(SessionWrite::Conflict);
                }
                D::lock_audit(&mut tx).await?;
                let (key_id, at) = (&record.key_id, record.created_at);
                if let Some(old) = replaced {
                    let details = rows::session_replaced_details(old.as_str(), record.id.as_str());
                    let action = rows::ACTION_SESSION_REPLACED;
                    Self::append_audit(&mut tx, key_id, actor, action, &details, at).await?;
                }
                let details = rows::session_created_details(record.id.as_str());
                let action = rows::ACTION_SESSION_CREATED;
                let seq = Self::append_audit(&mut tx, key_id, actor, action, &details, at).await?;
                D::announce(&mut tx, seq).await?;
                tx.commit().await.map_err(D::store_error)?;
            }
            SessionSave::Update { expected } => {
                // One statement, no audit row, so no transaction: the
                // statement is atomic and waits for a concurrent writer of
                // the row, then checks the WHERE against what it committed.
                let updated = sqlx::query(
                    "UPDATE sessions SET scopes = $1, expires_at = $2, family_digest = $3, refresh_digest = $4, \
                     refresh_generation = $5, access_jti = $6, access_issued_at = $7, access_expires_at = $8 \
                     WHERE id = $9 AND refresh_generation = $10 AND revoked_at IS NULL",
                )
                .bind(Json(&record.scopes))
                .bind(D::stamp(record.expires_at))
                .bind(&record.family_digest.as_bytes()[..])
                .bind(&record.refresh_digest.as_bytes()[..])
                .bind(generation)
                .bind(record.access_jti.as_str())
                .bind(D::stamp(record.access_issued_at))
                .bind(D::stamp(record.access_expires_at))
                .bind(record.id.as_str())
                .bind(expected)
                .execute(&self.pool)
                .await
                .map_err(D::store_error)?;
                if D::rows_affected(&updated) == 0 {
                    return Ok(SessionWrite::Conflict);
                }
            }
        }
        Ok(SessionWrite::Written)
    }

    async fn revoke_session(
        &self,
        id: &SessionId,
        reason: RevokeReason,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<Session>, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked: Option<SessionRow> = sqlx::query_as(&format!(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL \
             RETURNING {SESSION_COLUMNS}"
        ))
        .bind(D::stamp(at))
        .bind(reason.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(D::store_error)?;
        let Some(revoked) = revoked else {
            // Unknown, or revoked before (perhaps by a concurrent call this
            // one waited for): the first revocation stands.
            let existing = Self::fetch_session(&mut tx, id).await?;
            tx.rollback().await.map_err(D::store_error)?;
            return Ok(existing);
        };
        let revoked = revoked.into_session()?;
        let details = rows::session_revoked_details(id, reason);
        let action = rows::ACTION_SESSION_REVOKED;
        Self::audit_one(&mut tx, &revoked.key_id, actor, action, &details, at).await?;
        tx.commit().await.map_err(D::store_error)?;
        Ok(Some(revoked))
    }

    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // One statement, no audit row: atomic without a transaction.
        let deleted = sqlx::query("DELETE FROM sessions WHERE expires_at < $1 AND access_expires_at < $1")
            .bind(D::stamp(before))
            .execute(&self.pool)
            .await
            .map_err(D::store_error)?;
        Ok(D::rows_affected(&deleted))
    }

    fn change_notifications(&self) -> Option<watch::Receiver<i64>> {
        D::change_notifications(self)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, SqliteConnection};

    /// The shared SQL relies on this: sqlx's SQLite driver binds `$N` to
    /// the N-th value, whatever the order and however often `$N` appears,
    /// as Postgres does. (The conformance suite runs every query on both;
    /// this names the assumption should a sqlx upgrade break it.)
    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let row: (i64, String, i64) = sqlx::query_as("SELECT $2, $1, $2 * 10")
            .bind("first")
            .bind(2_i64)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row, (2, "first".to_owned(), 20));
    }
}
