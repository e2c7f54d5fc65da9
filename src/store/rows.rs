//! Row <-> model conversions shared by the SQL stores, plus the few rules both
//! backends must apply the same way (audit action names and details, page
//! arithmetic, timestamp precision, error classes that are not backend codes,
//! migration refusals).
//!
//! The row structs derive `sqlx::FromRow` generically, so one struct decodes a
//! SQLite row and a Postgres row alike: timestamps decode into
//! `DateTime<Utc>` from SQLite's RFC 3339 text and from Postgres'
//! `timestamptz`; JSON columns decode through [`Json`] from SQLite text and
//! from Postgres `jsonb`. Writing stays in each backend, because SQLite binds
//! timestamps as text ([`timestamp_text`]) and Postgres binds them natively.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, SubsecRound, TimeZone, Utc};
use serde_json::{Value, json};
use sqlx::FromRow;
use sqlx::error::DatabaseError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::types::Json;

use super::{
    Actor, AuditEntry, BucketCount, Candidate, Change, ChangeEntry, DashboardKind, DashboardSession,
    KeyTotals, Page, StoreError, Usage, source_from_db,
};
use crate::keys::usage;
use crate::keys::{
    Key, KeyHash, KeyId, KeySource, KeyStatus, RevokeReason, SecretRecord, Session, SessionId, TokenDigest,
};

/// The `keys` columns in [`KeyRow`] order, for a `keys` table aliased `k`.
pub(crate) const KEY_COLUMNS: &str = "k.id, k.name, k.owner, k.scopes, k.plan, k.status, k.expires_at, \
     k.prefix, k.short_prefix, k.source, k.metadata, k.created_at, k.updated_at, k.last_used_at, \
     k.request_count";

/// The `key_secrets` columns of a [`CandidateRow`], for a table aliased `s`.
/// Aliased because the key's own `prefix` and `short_prefix` share the names.
pub(crate) const SECRET_COLUMNS: &str = "s.prefix AS secret_prefix, s.short_prefix AS secret_short_prefix, \
     s.hash AS secret_hash, s.valid_until AS secret_valid_until";

/// The `audit_log` columns of an [`AuditRow`].
pub(crate) const AUDIT_COLUMNS: &str = "seq, key_id, actor, action, details, at";

/// Audit action: a generated key was inserted.
pub(crate) const ACTION_CREATED: &str = "created";
/// Audit action: a key was imported.
pub(crate) const ACTION_IMPORTED: &str = "imported";
/// Audit action: a key's secret was replaced.
pub(crate) const ACTION_ROTATED: &str = "rotated";

/// Audit action: a token-exchange session was inserted (a login that
/// opened a new session). Details: `session_id`.
pub(crate) const ACTION_SESSION_CREATED: &str = "session_created";
/// Audit action: a revoked or expired session was deleted because a login
/// replaced it. Details: `session_id`, `replaced_by`.
pub(crate) const ACTION_SESSION_REPLACED: &str = "session_replaced";
/// Audit action: a session was revoked. Details: `session_id`, `reason`.
pub(crate) const ACTION_SESSION_REVOKED: &str = "session_revoked";

/// The `sessions` columns of a [`SessionRow`].
pub(crate) const SESSION_COLUMNS: &str = "id, key_id, client_session, scopes, created_at, expires_at, \
     revoked_at, revoked_reason, family_digest, refresh_digest, refresh_generation, access_jti, \
     access_issued_at, access_expires_at";

/// The source a rotated key ends up with: rotation always issues a
/// keygate-generated secret.
pub(crate) const ROTATED_SOURCE: KeySource = KeySource::Generated;

/// Both backends store timestamps with microsecond precision (Postgres'
/// `timestamptz` cannot hold more), so returned keys are truncated the same
/// way and a created key equals the key read back.
pub(crate) const TIMESTAMP_DIGITS: u16 = 6;

/// An instant as stored in SQLite text columns and in audit details:
/// RFC 3339, UTC, always six fractional digits, so text order is time order.
pub(crate) fn timestamp_text(at: DateTime<Utc>) -> String {
    at_stored_precision(at).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An instant as the store keeps it: at microsecond precision, and within
/// years 1 to 9999. RFC 3339 cannot write other years (chrono would print
/// `+33000-…`, which neither parses back nor sorts as text), and a 30 000
/// year expiry or grace period means "forever" anyway.
pub(crate) fn at_stored_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    let earliest = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).single();
    let latest = Utc
        .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
        .single()
        .and_then(|at| at.checked_add_signed(chrono::Duration::microseconds(999_999)));
    let at = match (earliest, latest) {
        (Some(earliest), _) if at < earliest => earliest,
        (_, Some(latest)) if at > latest => latest,
        _ => at,
    };
    at.trunc_subsecs(TIMESTAMP_DIGITS)
}

/// A key as the store holds it: its timestamps at stored precision.
pub(crate) fn as_stored(mut key: Key) -> Key {
    key.expires_at = key.expires_at.map(at_stored_precision);
    key.created_at = at_stored_precision(key.created_at);
    key.updated_at = at_stored_precision(key.updated_at);
    key.last_used_at = key.last_used_at.map(at_stored_precision);
    key
}

/// The `plan` column's value for a key's plan. The column predates keys
/// without a plan and is `NOT NULL` on both backends (SQLite cannot drop
/// the constraint without rebuilding the table its secrets and sessions
/// reference), so "no plan" is stored as the empty string, which no plan
/// name can be (config refuses it).
pub(crate) fn plan_to_db(plan: Option<&str>) -> &str {
    plan.unwrap_or("")
}

/// A key's plan from the `plan` column (see [`plan_to_db`]).
fn plan_from_db(plan: String) -> Option<String> {
    (!plan.is_empty()).then_some(plan)
}

/// A counter for a signed 64-bit column. Counters never approach 2^63, so
/// saturating is a formality that keeps the conversion infallible.
pub(crate) fn count_to_db(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn count_from_db(what: &str, count: i64) -> Result<u64, StoreError> {
    u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({count})")))
}

fn key_id_from_db(id: String) -> Result<KeyId, StoreError> {
    id.parse()
        .map_err(|e| StoreError::Corrupt(format!("stored key id: {e}")))
}

/// One `keys` row ([`KEY_COLUMNS`]).
#[derive(Debug, FromRow)]
pub(crate) struct KeyRow {
    id: String,
    name: String,
    owner: Option<String>,
    scopes: Json<BTreeSet<String>>,
    plan: String,
    status: String,
    expires_at: Option<DateTime<Utc>>,
    prefix: String,
    short_prefix: String,
    source: String,
    metadata: Json<Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    request_count: i64,
}

impl KeyRow {
    /// The model, or [`StoreError::Corrupt`] naming the key and the column.
    pub(crate) fn into_key(self) -> Result<Key, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("key {}: {what}: {e}", self.id))
        };
        let status: KeyStatus = self.status.parse().map_err(|e| corrupt("status", &e))?;
        let source = source_from_db(&self.source)?;
        let request_count =
            count_from_db("request_count", self.request_count).map_err(|e| corrupt("request_count", &e))?;
        Ok(Key {
            id: key_id_from_db(self.id)?,
            name: self.name,
            owner: self.owner,
            scopes: self.scopes.0,
            plan: plan_from_db(self.plan),
            status,
            expires_at: self.expires_at,
            prefix: self.prefix,
            short_prefix: self.short_prefix,
            source,
            metadata: self.metadata.0,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_used_at: self.last_used_at,
            request_count,
        })
    }
}

/// A secret joined with its key ([`KEY_COLUMNS`], [`SECRET_COLUMNS`]).
/// No `Debug`: it holds a PHC hash.
#[derive(FromRow)]
pub(crate) struct CandidateRow {
    #[sqlx(flatten)]
    key: KeyRow,
    secret_prefix: String,
    secret_short_prefix: String,
    secret_hash: String,
    secret_valid_until: Option<DateTime<Utc>>,
}

impl CandidateRow {
    /// The model.
    pub(crate) fn into_candidate(self) -> Result<Candidate, StoreError> {
        let key = self.key.into_key()?;
        let secret = SecretRecord {
            key_id: key.id.clone(),
            prefix: self.secret_prefix,
            short_prefix: self.secret_short_prefix,
            hash: KeyHash::from_phc(self.secret_hash),
            valid_until: self.secret_valid_until,
        };
        Ok(Candidate { key, secret })
    }
}

/// One `audit_log` row ([`AUDIT_COLUMNS`]).
#[derive(Debug, FromRow)]
pub(crate) struct AuditRow {
    seq: i64,
    key_id: String,
    actor: String,
    action: String,
    details: Json<Value>,
    at: DateTime<Utc>,
}

impl AuditRow {
    /// The model.
    pub(crate) fn into_entry(self) -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            seq: self.seq,
            key_id: key_id_from_db(self.key_id)?,
            actor: Actor(self.actor),
            action: self.action,
            details: self.details.0,
            at: self.at,
        })
    }
}

/// One `sessions` row ([`SESSION_COLUMNS`]). No `Debug`: it holds the
/// refresh digests.
#[derive(FromRow)]
pub(crate) struct SessionRow {
    id: String,
    key_id: String,
    client_session: Option<String>,
    scopes: Json<BTreeSet<String>>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_reason: Option<String>,
    family_digest: Vec<u8>,
    refresh_digest: Vec<u8>,
    refresh_generation: i64,
    access_jti: String,
    access_issued_at: DateTime<Utc>,
    access_expires_at: DateTime<Utc>,
}

impl SessionRow {
    /// The session, or [`StoreError::Corrupt`] naming it and the column.
    pub(crate) fn into_session(self) -> Result<Session, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("session {}: {what}: {e}", self.id))
        };
        let digest = |what: &str, bytes: Vec<u8>| -> Result<TokenDigest, StoreError> {
            let len = bytes.len();
            <[u8; 32]>::try_from(bytes)
                .map(TokenDigest::from_bytes)
                .map_err(|_| corrupt(what, &format!("{len} bytes, not 32")))
        };
        let family_digest = digest("family_digest", self.family_digest)?;
        let refresh_digest = digest("refresh_digest", self.refresh_digest)?;
        let revoked_reason = self
            .revoked_reason
            .as_deref()
            .map(str::parse::<RevokeReason>)
            .transpose()
            .map_err(|e| corrupt("revoked_reason", &e))?;
        let refresh_generation = count_from_db("refresh_generation", self.refresh_generation)
            .map_err(|e| corrupt("refresh_generation", &e))?;
        let key_id = key_id_from_db(self.key_id).map_err(|e| corrupt("key_id", &e))?;
        let id: SessionId = self.id.parse().map_err(|e| corrupt("id", &e))?;
        Ok(Session {
            id,
            key_id,
            client_session: self.client_session,
            scopes: self.scopes.0,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            revoked_reason,
            family_digest,
            refresh_digest,
            refresh_generation,
            access_jti: self.access_jti,
            access_issued_at: self.access_issued_at,
            access_expires_at: self.access_expires_at,
        })
    }
}

/// A checked `save_session` call: what both backends do, decided the same
/// way before any SQL.
#[derive(Debug)]
pub(crate) enum SessionSave<'a> {
    /// Insert, first deleting `replaces` if it is unusable.
    Insert {
        /// The row to delete first.
        replaces: Option<&'a SessionId>,
    },
    /// Update the row while its stored generation is `expected`.
    Update {
        /// The generation the caller read.
        expected: i64,
    },
}

/// Checks a `save_session` call (see `KeyStore::save_session` for the
/// refusals) and returns what to do and the record's generation as stored.
pub(crate) fn check_session_save<'a>(
    record: &Session,
    expected_generation: Option<u64>,
    replaces: Option<&'a SessionId>,
) -> Result<(SessionSave<'a>, i64), StoreError> {
    let refused = |why: String| Err(StoreError::Refused(format!("save_session {}: {why}", record.id)));
    if record.revoked_at.is_some() || record.revoked_reason.is_some() {
        return refused("the record is revoked; revocations go through revoke_session".into());
    }
    let Ok(generation) = i64::try_from(record.refresh_generation) else {
        return refused(format!(
            "generation {} does not fit the store",
            record.refresh_generation
        ));
    };
    match expected_generation {
        None => Ok((SessionSave::Insert { replaces }, generation)),
        Some(_) if replaces.is_some() => refused("replaces is only for inserts".into()),
        Some(expected) if expected >= record.refresh_generation => refused(format!(
            "an update must raise the generation (from {expected}, got {})",
            record.refresh_generation
        )),
        // `expected` is below `generation`, which fits.
        Some(expected) => Ok((
            SessionSave::Update {
                expected: i64::try_from(expected).unwrap_or(i64::MAX),
            },
            generation,
        )),
    }
}

/// Details of a `session_created` audit row.
pub(crate) fn session_created_details(id: &str) -> Value {
    json!({ "session_id": id })
}

/// Details of a `session_replaced` audit row.
pub(crate) fn session_replaced_details(id: &str, replaced_by: &str) -> Value {
    json!({ "session_id": id, "replaced_by": replaced_by })
}

/// Details of a `session_revoked` audit row.
pub(crate) fn session_revoked_details(id: &SessionId, reason: RevokeReason) -> Value {
    json!({ "session_id": id, "reason": reason.as_str() })
}

/// The typed change an audit row records: the one reader of the details
/// the functions above write. A row it cannot read fully counts as a change
/// of the key's record with no new prefix, so a follower drops too much
/// rather than too little.
pub(crate) fn change_entry(entry: &AuditEntry) -> ChangeEntry {
    let detail = |name: &str| entry.details.get(name).and_then(Value::as_str);
    let key_change = |added_short_prefix: Option<&str>, imported: bool| Change::Key {
        id: entry.key_id.clone(),
        added_short_prefix: added_short_prefix.map(str::to_owned),
        imported,
    };
    let change = match entry.action.as_str() {
        ACTION_SESSION_CREATED | ACTION_SESSION_REPLACED | ACTION_SESSION_REVOKED => {
            match detail("session_id").map(str::parse::<SessionId>) {
                Some(Ok(id)) => Change::Session {
                    key_id: entry.key_id.clone(),
                    id,
                },
                _ => key_change(None, false),
            }
        }
        action @ (ACTION_CREATED | ACTION_IMPORTED | ACTION_ROTATED) => {
            key_change(detail("short_prefix"), action == ACTION_IMPORTED)
        }
        _ => key_change(None, false),
    };
    ChangeEntry {
        seq: entry.seq,
        at: entry.at,
        change,
    }
}

/// One row of `keys LEFT JOIN key_usage` for one key: the key's last use and
/// one outcome counter (both `NULL` when the key has no usage yet).
#[derive(Debug, FromRow)]
pub(crate) struct UsageRow {
    last_used_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    count: Option<i64>,
}

/// Folds a key's usage rows; `None` when there are none (no such key).
pub(crate) fn usage_from_rows(rows: Vec<UsageRow>) -> Result<Option<Usage>, StoreError> {
    let Some(last_used_at) = rows.first().map(|r| r.last_used_at) else {
        return Ok(None);
    };
    let mut by_outcome = BTreeMap::new();
    let mut total: u64 = 0;
    for row in rows {
        if let (Some(outcome), Some(count)) = (row.outcome, row.count) {
            let count = count_from_db("usage count", count)?;
            total = total.saturating_add(count);
            by_outcome.insert(outcome, count);
        }
    }
    Ok(Some(Usage {
        by_outcome,
        total,
        last_used_at,
    }))
}

/// One `dashboard_sessions` row (without its key).
#[derive(Debug, FromRow)]
pub(crate) struct DashboardRow {
    kind: String,
    subject: String,
    grant_json: Json<Value>,
    csrf: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl TryFrom<DashboardRow> for DashboardSession {
    type Error = StoreError;
    fn try_from(row: DashboardRow) -> Result<Self, StoreError> {
        let kind = match row.kind.as_str() {
            "console" => DashboardKind::Console,
            "portal" => DashboardKind::Portal,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "dashboard_sessions.kind is {other:?}"
                )));
            }
        };
        Ok(Self {
            kind,
            subject: row.subject,
            grant: row.grant_json.0,
            csrf: row.csrf,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}

/// One stored usage-history bucket count: start (seconds since the
/// epoch), outcome, count.
#[derive(Debug, FromRow)]
pub(crate) struct BucketRow {
    bucket: i64,
    outcome: String,
    count: i64,
}

impl TryFrom<BucketRow> for BucketCount {
    type Error = StoreError;
    fn try_from(row: BucketRow) -> Result<Self, StoreError> {
        Ok(Self {
            start: usage::instant(row.bucket),
            outcome: row.outcome,
            count: count_from_db("usage bucket count", row.count)?,
        })
    }
}

/// One key's sums over a span of usage buckets, with its owner and name.
#[derive(Debug, FromRow)]
pub(crate) struct TotalsRow {
    id: String,
    owner: Option<String>,
    name: String,
    total: i64,
    ok: i64,
}

impl TryFrom<TotalsRow> for KeyTotals {
    type Error = StoreError;
    fn try_from(row: TotalsRow) -> Result<Self, StoreError> {
        Ok(Self {
            key_id: key_id_from_db(row.id)?,
            owner: row.owner,
            name: row.name,
            total: count_from_db("usage total", row.total)?,
            ok: count_from_db("usage ok count", row.ok)?,
        })
    }
}

/// The audit action for a patch that changed `changed` and left the key in
/// `status`: the most specific name for a status change, else `updated`.
pub(crate) fn update_action(changed: &[&str], status: KeyStatus) -> &'static str {
    if !changed.contains(&"status") {
        return "updated";
    }
    match status {
        KeyStatus::Active => "enabled",
        KeyStatus::Inactive => "disabled",
        KeyStatus::Revoked => "revoked",
    }
}

/// Details of an `updated` / status-change audit row: the field names.
pub(crate) fn update_details(changed: &[&str]) -> Value {
    json!({ "changed": changed })
}

/// Details of a `created` / `imported` audit row. The short prefix is public
/// (shown in listings and logs), so it may be recorded.
pub(crate) fn insert_details(key: &Key) -> Value {
    json!({ "short_prefix": key.short_prefix, "source": key.source.as_str() })
}

/// Details of a `rotated` audit row.
pub(crate) fn rotate_details(grace_until: Option<DateTime<Utc>>, short_prefix: &str) -> Value {
    json!({
        "grace_until": grace_until.map(timestamp_text),
        "short_prefix": short_prefix,
    })
}

/// The row count to fetch for a page: one more than the limit, to learn
/// whether another page follows. A limit of 0 is treated as 1, so a caller
/// that loops on `next` always makes progress.
pub(crate) fn fetch_limit(limit: u32) -> i64 {
    i64::from(limit.max(1)) + 1
}

/// Cuts rows fetched with [`fetch_limit`] into a page; `next` is the position
/// of the last item returned when more rows exist.
pub(crate) fn into_page<T, C>(mut items: Vec<T>, limit: u32, position: impl Fn(&T) -> C) -> Page<T, C> {
    let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(position)
    } else {
        None
    };
    Page { items, next }
}

/// Maps the sqlx errors that mean the same on every backend; a database's
/// own error goes to `database`, which classifies it by backend error code.
/// Messages carry sqlx's text, which never includes bound values (so no
/// secrets or hashes).
pub(crate) fn map_sqlx_error(
    e: sqlx::Error,
    database: impl FnOnce(&dyn DatabaseError) -> StoreError,
) -> StoreError {
    match e {
        sqlx::Error::Database(db) => database(db.as_ref()),
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(
            "timed out waiting for a database connection (database.connect_timeout); \
             the pool is exhausted or the database is unreachable"
                .into(),
        ),
        sqlx::Error::PoolClosed => StoreError::Unavailable("the database connection pool is closed".into()),
        sqlx::Error::Io(e) => StoreError::Unavailable(format!("database I/O error: {e}")),
        sqlx::Error::Tls(e) => StoreError::Unavailable(format!("database TLS error: {e}")),
        sqlx::Error::WorkerCrashed => {
            StoreError::Unavailable("the database connection worker crashed".into())
        }
        e @ (sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_)) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// The refusal for a database migrated by a newer keygate: the same words on
/// every backend, so operators meet one message.
pub(crate) fn newer_schema(version: i64) -> StoreError {
    StoreError::Migration(format!(
        "the database schema (migration {version}) is newer than this keygate binary knows; \
         a newer keygate migrated it: upgrade keygate"
    ))
}

/// Refuses a database that records an applied migration `migrator` does not
/// have: [`newer_schema`] when it is newer than every known one, else a
/// different build migrated it. Checked before running the migrator, which
/// would otherwise fail with a bare "missing version".
pub(crate) fn check_known_migrations(migrator: &Migrator, applied: &[i64]) -> Result<(), StoreError> {
    let known: BTreeSet<i64> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    let latest_known = known.last().copied().unwrap_or(0);
    match applied.iter().copied().filter(|v| !known.contains(v)).max() {
        Some(version) if version > latest_known => Err(newer_schema(version)),
        Some(version) => Err(StoreError::Migration(format!(
            "the database records migration {version}, which this keygate binary does not have; \
             it was migrated by a different build of keygate"
        ))),
        None => Ok(()),
    }
}

/// Maps a migrator failure to an operator-facing message; `store_error` is
/// the backend's mapping for plain sqlx errors (an unreachable database
/// stays [`StoreError::Unavailable`]).
pub(crate) fn migration_error(
    e: MigrateError,
    store_error: impl Fn(sqlx::Error) -> StoreError,
) -> StoreError {
    match e {
        MigrateError::VersionMissing(version) => newer_schema(version),
        MigrateError::VersionMismatch(version) => StoreError::Migration(format!(
            "migration {version} was changed after it was applied to this database; \
             this keygate build does not match the one that migrated it"
        )),
        MigrateError::Dirty(version) => StoreError::Migration(format!(
            "migration {version} failed part-way and left the schema in an unknown state; \
             restore the database from a backup"
        )),
        MigrateError::Execute(e) => match store_error(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Migration(other.to_string()),
        },
        MigrateError::ExecuteMigration(e, version) => {
            StoreError::Migration(format!("migration {version} failed: {}", store_error(e)))
        }
        other => StoreError::Migration(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_fixed_precision_and_sort_as_text() {
        let a = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let b = a + chrono::Duration::microseconds(1);
        let c = a + chrono::Duration::nanoseconds(1_500);
        assert_eq!(timestamp_text(a), "2026-11-23T12:00:00.000000Z");
        assert_eq!(timestamp_text(b), "2026-11-23T12:00:00.000001Z");
        assert!(timestamp_text(a) < timestamp_text(b));
        assert_eq!(at_stored_precision(c), b);
        let far = a + chrono::Duration::days(365 * 30_000);
        assert_eq!(timestamp_text(far), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            DateTime::parse_from_rfc3339(&timestamp_text(far)).unwrap(),
            at_stored_precision(far)
        );
    }

    #[test]
    fn status_changes_get_the_most_specific_action() {
        assert_eq!(update_action(&["name"], KeyStatus::Active), "updated");
        assert_eq!(update_action(&["status", "name"], KeyStatus::Revoked), "revoked");
        assert_eq!(update_action(&["status"], KeyStatus::Inactive), "disabled");
        assert_eq!(update_action(&["status"], KeyStatus::Active), "enabled");
        assert_eq!(
            update_details(&["status", "name"]),
            json!({"changed": ["status", "name"]})
        );
    }

    #[test]
    fn pages_cut_at_the_limit() {
        let page = into_page(vec![1, 2, 3], 2, |n| *n);
        assert_eq!((page.items, page.next), (vec![1, 2], Some(2)));
        let page = into_page(vec![1, 2], 2, |n| *n);
        assert_eq!((page.items, page.next), (vec![1, 2], None));
        assert_eq!(fetch_limit(0), 2);
        assert_eq!(fetch_limit(10), 11);
    }

    #[test]
    fn a_session_row_with_a_bad_column_is_corrupt_naming_it() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        const ID: &str = "ses_01jd3m5k7r9t2v4w6x8y0z1a2b";
        let row = |id: &str, digest_len: usize, reason: Option<&str>, generation: i64| SessionRow {
            id: id.into(),
            key_id: KeyId::generate(at).to_string(),
            client_session: None,
            scopes: Json(BTreeSet::new()),
            created_at: at,
            expires_at: at,
            revoked_at: reason.map(|_| at),
            revoked_reason: reason.map(String::from),
            family_digest: vec![7; 32],
            refresh_digest: vec![9; digest_len],
            refresh_generation: generation,
            access_jti: "j".into(),
            access_issued_at: at,
            access_expires_at: at,
        };
        let session = row(ID, 32, Some("refresh_reuse"), 3).into_session().unwrap();
        assert_eq!(session.id.as_str(), ID);
        assert_eq!(session.revoked_reason, Some(RevokeReason::RefreshReuse));
        assert_eq!(
            (session.refresh_digest, session.refresh_generation),
            (TokenDigest::from_bytes([9; 32]), 3)
        );
        for (bad, id, column) in [
            (row(ID, 31, None, 0), ID, "refresh_digest"),
            (row(ID, 32, Some("bored"), 0), ID, "revoked_reason"),
            (row(ID, 32, None, -1), ID, "refresh_generation"),
            (row("ses_short", 32, None, 0), "ses_short", "id"),
        ] {
            let err = bad.into_session().expect_err("corrupt");
            let message = err.to_string();
            assert!(matches!(err, StoreError::Corrupt(_)), "{message}");
            assert!(message.contains(id) && message.contains(column), "{message}");
            assert!(!message.contains("[9, 9"), "{message}");
        }
    }

    /// The row structs decode Postgres rows too (checked at compile time), so
    /// the Postgres store can reuse them.
    #[test]
    fn rows_decode_from_both_backends() {
        fn decodes<T>()
        where
            T: for<'r> FromRow<'r, sqlx::sqlite::SqliteRow> + for<'r> FromRow<'r, sqlx::postgres::PgRow>,
        {
        }
        decodes::<KeyRow>();
        decodes::<CandidateRow>();
        decodes::<AuditRow>();
        decodes::<UsageRow>();
        decodes::<BucketRow>();
        decodes::<DashboardRow>();
        decodes::<TotalsRow>();
        decodes::<SessionRow>();
    }
}
