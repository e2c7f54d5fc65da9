//! The key store: one async [`KeyStore`] trait, its SQLite implementation
//! (the embedded default) and its Postgres implementation (production). Only
//! this module touches sqlx.
//!
//! Both implementations are one [`sql::SqlStore`]: each query is written
//! once in `sql.rs`, and `sqlite.rs` / `postgres.rs` supply a
//! [`sql::Dialect`] with what differs (transactions and locking, timestamp
//! binding, error codes, notifications, migrations, usage flushes).
//! `rows.rs` decodes rows for both; `conformance.rs` is the suite both pass.
//!
//! Every change to a key is written in the same transaction as an append-only
//! audit row; the audit row's sequence number is the store's change sequence,
//! which running gateways watch to invalidate their caches.
//!
//! The store also keeps token-exchange sessions: it reads and writes the
//! domain's [`Session`] directly (`token` decides what happens to one).
//! Session writes that change which tokens a gateway admits are audited the
//! same way, so they ride the same change feed.
//!
//! Which fields of a session decide admission: `Session::admits` looks
//! only at `id`, `key_id` and `revoked_at`. `id`, `key_id`,
//! `client_session` and `created_at` never change once inserted;
//! `revoked_at` changes only through [`KeyStore::revoke_session`], which is
//! audited. The other fields move at every rotation, which is not audited,
//! so a cached copy may hold stale ones: fine for admitting access tokens,
//! never for deciding a login or a refresh (read those with
//! [`KeyStore::session`] / [`KeyStore::session_for`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use thiserror::Error;

use crate::keys::usage::{Granularity, SeriesRange};
use crate::keys::{
    Key, KeyHash, KeyId, KeyPatch, KeySource, KeyStatus, ModelError, RevokeReason, SecretRecord, Session,
    SessionId,
};

#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
pub(crate) mod rows;
pub mod sql;
pub mod sqlite;

/// Settings for the store (`[database]`).
#[derive(Clone, PartialEq)]
pub struct StoreSettings {
    /// `sqlite://…` or `postgres://…` (`database.url`).
    pub url: String,
    /// Migrate on `serve` start (`database.auto_migrate`).
    pub auto_migrate: bool,
    /// Connection pool size (`database.max_connections`).
    pub max_connections: u32,
    /// Time allowed to obtain a connection (`database.connect_timeout`).
    pub connect_timeout: Duration,
    /// Longest a single statement may run (`database.statement_timeout`).
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &redact_url(&self.url))
            .field("auto_migrate", &self.auto_migrate)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// A database URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Who made a change, as recorded in the audit trail: `cli`, an admin
/// token's id, or a client of the token exchange by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// The command line.
    pub fn cli() -> Self {
        Self("cli".into())
    }

    /// An admin token, by its id.
    pub fn admin_token(id: &str) -> Self {
        Self(format!("admin:{id}"))
    }

    /// The operator console, signed in with an admin token, by its id:
    /// `console:<token id>`.
    pub fn console(token_id: &str) -> Self {
        Self(format!("console:{token_id}"))
    }

    /// A client of the token exchange, by the key it authenticated with
    /// (logins, and revocations after refresh-token reuse): `key:<key id>`.
    pub fn key(id: &KeyId) -> Self {
        Self(format!("key:{id}"))
    }

    /// The recorded text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key to insert, with its first secret's hash.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The key's metadata (timestamps, status and counters included).
    pub key: Key,
    /// Hash of its secret (the prefix and short prefix are on `key`).
    pub hash: KeyHash,
}

/// A filter for listings.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Only keys of this owner.
    pub owner: Option<String>,
    /// Only keys with this stored status.
    pub status: Option<KeyStatus>,
    /// Only keys on this plan (`""`: keys without a plan).
    pub plan: Option<String>,
    /// Only keys whose name contains this text (any case), or whose owner
    /// or short prefix is exactly it.
    pub search: Option<String>,
}

/// One page request: at most `limit` items after the position `after`
/// (exclusive; `None` = from the start).
#[derive(Debug, Clone)]
pub struct PageRequest<C> {
    /// Maximum items.
    pub limit: u32,
    /// Resume after this position.
    pub after: Option<C>,
}

/// One page of results and the position to resume after, if more follow.
#[derive(Debug, Clone)]
pub struct Page<T, C> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts (`None` on the last page).
    pub next: Option<C>,
}

/// One audit row: who changed which key, how, when.
// Also the admin API's JSON view of it, so the schema derive describes it
// for OpenAPI.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Monotonic sequence number (the store's change sequence).
    pub seq: i64,
    /// The key changed.
    #[schema(value_type = String)]
    pub key_id: KeyId,
    /// Who changed it: `cli`, `admin:<token id>`, or `key:<key id>` (a
    /// client of the token exchange).
    #[schema(value_type = String, example = "admin:env")]
    pub actor: Actor,
    /// `created`, `imported`, `updated`, `rotated`, `revoked`, …, and for
    /// sessions `session_created`, `session_replaced`, `session_revoked`
    /// (with `session_id` in `details`).
    pub action: String,
    /// What changed (field names, session ids, never secrets).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// When.
    pub at: DateTime<Utc>,
}

/// One change on the store's change feed, typed: what a follower caching
/// keys and sessions must drop. [`KeyStore::changes`] reads it from the
/// audit trail; the store both writes the audit details and reads them back
/// (`rows::change_entry`), so a change to what the trail records cannot
/// silently stop revocations from reaching the other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key's record or secrets changed.
    Key {
        /// The key.
        id: KeyId,
        /// The short prefix of a secret the key gained (created, imported,
        /// rotated): remembered misses for it are stale.
        added_short_prefix: Option<String>,
        /// Added by an import: the set of imported prefixes may have grown.
        imported: bool,
    },
    /// A token-exchange session of `key_id` was opened, replaced or
    /// revoked; the key's own record did not change.
    Session {
        /// The session's key.
        key_id: KeyId,
        /// The session.
        id: SessionId,
    },
}

/// A [`Change`] and its place on the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Its change sequence number (the audit row's).
    pub seq: i64,
    /// When it was committed.
    pub at: DateTime<Utc>,
    /// What changed.
    pub change: Change,
}

/// A candidate for a presented secret: the key and one of its secrets.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The key's metadata.
    pub key: Key,
    /// The secret whose short prefix matched.
    pub secret: SecretRecord,
}

/// Usage seen by a gateway since its last flush, for one key and outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key.
    pub key_id: KeyId,
    /// The SPEC outcome code, or `ok`.
    pub outcome: String,
    /// The minute the requests fell in (its start: the usage-history
    /// bucket they are added to).
    pub minute: DateTime<Utc>,
    /// Requests to add.
    pub count: u64,
    /// Latest use in this batch.
    pub last_used_at: DateTime<Utc>,
}

/// Whose usage history a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSubject<'a> {
    /// One key's.
    Key(&'a KeyId),
    /// One owner's: the requests of the keys it owned when they were
    /// counted.
    Owner(&'a str),
    /// Every key's, summed.
    All,
}

/// One stored bucket's count of one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketCount {
    /// The bucket's start.
    pub start: DateTime<Utc>,
    /// `ok` or a SPEC code.
    pub outcome: String,
    /// Requests.
    pub count: u64,
}

/// What the busiest-keys ranking orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageRank {
    /// All requests, allowed and refused.
    Requests,
    /// Refused requests (every outcome but `ok`); keys without any are
    /// left out.
    Refused,
}

/// One key of the busiest-keys ranking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotals {
    /// The key.
    pub key_id: KeyId,
    /// Its owner.
    pub owner: Option<String>,
    /// Its name.
    pub name: String,
    /// Requests in the span, all outcomes.
    pub total: u64,
    /// Of which allowed (`ok`).
    pub ok: u64,
}

/// A key's usage: request counts by outcome and last use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Count per outcome code.
    pub by_outcome: std::collections::BTreeMap<String, u64>,
    /// Sum of all outcomes.
    pub total: u64,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a dashboard session is for (SPEC §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashboardKind {
    /// An operator signed in to the console; the subject is the admin
    /// token's public id.
    Console,
    /// A customer in the portal; the subject is the owner.
    Portal,
}

impl DashboardKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Portal => "portal",
        }
    }
}

/// A dashboard session as stored: found by a digest of the id in its
/// cookie, which the store never sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// Console or portal.
    pub kind: DashboardKind,
    /// The admin token's id (console) or the owner (portal).
    pub subject: String,
    /// What the session may do beyond its kind (the portal's scopes and
    /// plans); `{}` for the console.
    pub grant: serde_json::Value,
    /// The token its forms carry.
    pub csrf: String,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<i64>,
    /// The schema version after the run.
    pub current: i64,
}

/// A store failure. Edges map these to SPEC codes; the messages are for
/// operators (CLI output, logs), never for proxy clients.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No key with that id.
    #[error("no key with id {0}")]
    NotFound(KeyId),
    /// The short prefix of a new generated secret is taken (the caller draws
    /// a new key and tries again).
    #[error("short prefix already in use")]
    ShortPrefixTaken,
    /// An imported key's secret is already in the store (or twice in one import).
    #[error("duplicate key: {0}")]
    Duplicate(String),
    /// A state rule forbids the change (e.g. re-activating a revoked key).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The store is unreachable or timed out.
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// The schema is newer than this binary, or migrations failed.
    #[error("migration problem: {0}")]
    Migration(String),
    /// A stored row is not what this binary expects.
    #[error("corrupt row in the key store: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("key store error: {0}")]
    Database(String),
    /// The call itself is wrong, a bug in the caller: e.g. a revoked
    /// session passed to `save_session` (revocations go through
    /// `revoke_session`, which audits them), or a session call on a store
    /// that keeps no sessions (a test double that does not forward it).
    #[error("refused store call: {0}")]
    Refused(String),
}

/// What [`KeyStore::save_session`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a conflict means nothing was written: read the session again and redo"]
pub enum SessionWrite {
    /// The row was inserted or updated (and the replaced one deleted).
    Written,
    /// Nothing was written: another writer got there first (the row's
    /// generation moved, it was revoked or deleted, or a concurrent login
    /// inserted the same key and client session). Not an error: read the
    /// row again and redo the decision.
    Conflict,
}

/// The key store. Implementations must make each mutating call atomic (the
/// change and its audit row in one transaction), store timestamps with
/// microsecond precision (returned keys are truncated to match), and pass
/// the shared conformance suite (`store::conformance`).
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Applies pending migrations; idempotent.
    async fn migrate(&self) -> Result<MigrationReport, StoreError>;

    /// Cheap liveness probe.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts a generated key and records `created`. Fails with
    /// [`StoreError::ShortPrefixTaken`] if any stored secret has the same
    /// short prefix.
    async fn create_key(&self, new: NewKey, actor: &Actor) -> Result<Key, StoreError>;

    /// Inserts imported keys in one transaction: all or nothing. (Callers
    /// check for secrets already stored before hashing; the store only
    /// guarantees atomicity.)
    async fn import_keys(&self, keys: Vec<NewKey>, actor: &Actor) -> Result<Vec<Key>, StoreError>;

    /// One key by id.
    async fn get_key(&self, id: &KeyId) -> Result<Key, StoreError>;

    /// Keys in id order (ids sort by creation time), filtered, one page. A
    /// limit of 0 is treated as 1, so paging on `next` always progresses.
    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: PageRequest<KeyId>,
    ) -> Result<Page<Key, KeyId>, StoreError>;

    /// Applies a patch atomically (status rules enforced by the model) and
    /// records `updated`, or `disabled` / `enabled` / `revoked` when the
    /// status changed, with the changed field names. A patch that changes
    /// nothing writes nothing.
    async fn update_key(
        &self,
        id: &KeyId,
        patch: &KeyPatch,
        now: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Key, StoreError>;

    /// Replaces the key's current secret with a keygate-generated one (the
    /// key's source becomes `generated`) and records `rotated`. The previous
    /// secret stays valid until `grace_until` (or is removed when `None` or
    /// not after `now`); older secrets whose grace has ended are removed.
    /// Fails with [`StoreError::ShortPrefixTaken`] like `create_key`, and
    /// with [`ModelError::RevokedIsFinal`] for a revoked key.
    #[expect(
        clippy::too_many_arguments,
        reason = "one atomic store call; the new secret's parts and the instants are all distinct inputs"
    )]
    async fn rotate_key(
        &self,
        id: &KeyId,
        prefix: &str,
        short_prefix: &str,
        hash: KeyHash,
        grace_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Key, StoreError>;

    /// Every stored secret with this short prefix and its key (imported keys
    /// may share one, so callers verify against each).
    async fn find_candidates(&self, short_prefix: &str) -> Result<Vec<Candidate>, StoreError>;

    /// The distinct prefixes of imported keys (for lookups of presented keys
    /// that carry no keygate checksum).
    async fn imported_prefixes(&self) -> Result<BTreeSet<String>, StoreError>;

    /// The audit trail in sequence order, one page.
    async fn audit(&self, page: PageRequest<i64>) -> Result<Page<AuditEntry, i64>, StoreError>;

    /// A key's latest `limit` audit entries, newest first.
    async fn key_audit(&self, id: &KeyId, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// The change feed after sequence number `after`, typed, one page in
    /// sequence order (what caches evict by; the audit trail's view of
    /// the same rows is [`KeyStore::audit`]).
    async fn changes(&self, after: i64, limit: u32) -> Result<Page<ChangeEntry, i64>, StoreError> {
        let page = self
            .audit(PageRequest {
                limit,
                after: Some(after),
            })
            .await?;
        Ok(Page {
            items: page.items.iter().map(rows::change_entry).collect(),
            next: page.next,
        })
    }

    /// The latest change sequence (0 for an empty store).
    async fn change_seq(&self) -> Result<i64, StoreError>;

    /// Adds a batch of usage counts (per outcome, and to the key's request
    /// count and latest use). Deltas for keys that no longer exist are
    /// dropped. Not a change: writes no audit row.
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError>;

    /// A key's usage.
    async fn usage(&self, id: &KeyId) -> Result<Usage, StoreError>;

    /// The all-time usage of an owner's keys (`None`: the owner has no key
    /// and no usage history).
    async fn owner_usage(&self, owner: &str) -> Result<Option<Usage>, StoreError>;

    /// The stored buckets of `subject`'s history in `span`, ascending
    /// (buckets nothing was counted in are absent).
    async fn usage_buckets(
        &self,
        subject: UsageSubject<'_>,
        span: SeriesRange,
    ) -> Result<Vec<BucketCount>, StoreError>;

    /// The `limit` busiest keys in `span` by `rank`, busiest first (ties by
    /// key id).
    async fn usage_top(
        &self,
        span: SeriesRange,
        rank: UsageRank,
        limit: u32,
    ) -> Result<Vec<KeyTotals>, StoreError>;

    /// Deletes the buckets of each tier that start before its cutoff;
    /// returns how many rows went. Idempotent: replicas may all run it.
    async fn prune_usage(&self, cutoffs: &[(Granularity, DateTime<Utc>)]) -> Result<u64, StoreError>;

    /// Stores a new dashboard session under `id_digest` (a BLAKE3 digest
    /// of the id in its cookie).
    async fn open_dashboard_session(
        &self,
        id_digest: &[u8; 32],
        session: &DashboardSession,
    ) -> Result<(), StoreError>;

    /// The dashboard session stored under `id_digest`, if it is still live
    /// at `now`.
    async fn dashboard_session(
        &self,
        id_digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError>;

    /// Ends a dashboard session (signing out); whether there was one.
    async fn end_dashboard_session(&self, id_digest: &[u8; 32]) -> Result<bool, StoreError>;

    /// Deletes the dashboard sessions that ended at or before `before`.
    async fn delete_expired_dashboard_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// One session by id (`None`: no such session).
    async fn session(&self, id: &SessionId) -> Result<Option<Session>, StoreError>;

    /// The session of a key and client session id (`None` matches only the
    /// key's default session, never `Some("")`).
    async fn session_for(
        &self,
        key_id: &KeyId,
        client_session: Option<&str>,
    ) -> Result<Option<Session>, StoreError>;

    /// Writes a session decided by `token` (a login or a rotation).
    ///
    /// - `expected_generation: None` inserts `record`. With `replaces`, it
    ///   first deletes that row in the same transaction, but only if it is
    ///   the same key and client session and is revoked or expired at
    ///   `record.created_at` (an active row is never replaced: the insert
    ///   then conflicts). Audited: `session_replaced` for a deleted row,
    ///   then `session_created`. A concurrent insert of the same key and
    ///   client session makes this a [`SessionWrite::Conflict`].
    /// - `expected_generation: Some(g)` updates the row `record.id` only
    ///   while its generation is still `g` and it is not revoked, else
    ///   [`SessionWrite::Conflict`] and nothing is written. It writes the
    ///   fields a login or rotation moves (scopes, expiry, digests,
    ///   generation, access token); `key_id`, `client_session` and
    ///   `created_at` are never changed. Not audited: no field that decides
    ///   admission changes (see the module docs), and an audit row per
    ///   refresh would grow the append-only trail without bound.
    ///
    /// Refused ([`StoreError::Refused`]): a revoked `record` (use
    /// `revoke_session`), `replaces` with an update, or an update that does
    /// not raise the generation.
    async fn save_session(
        &self,
        record: &Session,
        expected_generation: Option<u64>,
        replaces: Option<&SessionId>,
        actor: &Actor,
    ) -> Result<SessionWrite, StoreError>;

    /// Revokes a session at `at` and records `session_revoked` (details:
    /// `session_id`, `reason`). Unconditional (a reuse verdict must stick
    /// whatever rotated meanwhile). A session already revoked keeps its
    /// first instant and reason and nothing is written. Returns the stored
    /// row, or `None` for an unknown id.
    async fn revoke_session(
        &self,
        id: &SessionId,
        reason: RevokeReason,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<Session>, StoreError>;

    /// Deletes sessions whose refresh token and last access token both
    /// expired before `before`; returns how many. Not audited: such a row
    /// admits nothing (its access token's `exp` has passed, and JWT `exp`
    /// has no leeway), so caches need not hear of it, and a row per deleted
    /// session would flood the trail. Pass an instant safely in the past
    /// (`now` minus a few minutes): a replica whose clock runs behind would
    /// otherwise refuse, for its missing row, an access token it still
    /// considers unexpired.
    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Push notification of changes, for stores shared by several gateways:
    /// a receiver that is marked changed soon after any change commits
    /// (through any store handle, any process), and after the store's
    /// notification channel (re)connects, when changes may have gone
    /// unannounced. Its value is the highest change sequence announced so
    /// far (0 before any). A wake-up only says "read the change feed now":
    /// followers still read it from their own last sequence, so a lost or
    /// spurious notification costs latency, never correctness, and followers
    /// keep polling as well. `None` (the default, and SQLite's) when the
    /// store has no push channel: poll only.
    fn change_notifications(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        None
    }
}

/// A shared store handle.
pub type SharedStore = Arc<dyn KeyStore>;

/// Opens the store named by `settings.url`.
pub async fn open(settings: &StoreSettings) -> Result<SharedStore, StoreError> {
    if settings.url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(settings).await?))
    } else if settings.url.starts_with("postgres://") || settings.url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(settings).await?))
    } else {
        Err(StoreError::Unavailable(format!(
            "unsupported database url {}: expected sqlite://… or postgres://…",
            redact_url(&settings.url)
        )))
    }
}

/// Helper for implementations: whether a source string is a known source.
pub(crate) fn source_from_db(s: &str) -> Result<KeySource, StoreError> {
    s.parse()
        .map_err(|e: ModelError| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_passwords() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/keys?sslmode=require"),
            "postgres://app:***@db:5432/keys?sslmode=require"
        );
        assert_eq!(redact_url("postgres://app@db/keys"), "postgres://app@db/keys");
        assert_eq!(
            redact_url("sqlite://keygate.db?mode=rwc"),
            "sqlite://keygate.db?mode=rwc"
        );
    }
}
