//! The authenticator against a real SQLite store, with keys made by the
//! lifecycle service, time from a manual clock, and a wrapper store that
//! counts lookups, can fail on demand, and can make session writes lose
//! races (shared with the token exchange's tests).

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::Rng;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::keys::format::{GeneratedKey, parse_generated};
use crate::keys::usage::{Granularity, SeriesRange};
use crate::keys::{
    HashParams, KeyFormat, KeyHash, KeyPatch, KeyPrefix, KeySettings, KeyStatus, RevokeReason, SecretStr,
    SecretString, Session, SessionId,
};
use crate::manage::{CreateKey, KeyGenerator, KeyManager};
use crate::store::DashboardSession;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Actor, AuditEntry, BucketCount, Candidate, KeyFilter, KeyStore, KeyTotals, MigrationReport, NewKey, Page,
    PageRequest, SessionWrite, SharedStore, StoreError, StoreSettings, Usage, UsageDelta, UsageRank,
    UsageSubject,
};

const TINY: HashParams = HashParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

/// Another writer's work, run inside a session write before it reaches the
/// store (so the write races it and loses).
pub(super) struct Rival(Pin<Box<dyn Future<Output = ()> + Send>>);

impl std::fmt::Debug for Rival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rival")
    }
}

/// The real store, counting `find_candidates` calls and failing the reads
/// and usage flushes the gateway makes while `fail` is set (writes by the
/// manager still work, as they would through another replica). Session
/// writes can be made to lose: `rivals` run first (one per write, in turn),
/// and `lose_saves` writes answer a conflict without writing. Shared with
/// the usage recorder's and the token exchange's tests.
#[derive(Debug)]
pub(super) struct TestStore {
    pub(super) inner: SqliteStore,
    pub(super) finds: AtomicUsize,
    pub(super) fail: AtomicBool,
    /// `save_session` calls so far.
    pub(super) saves: AtomicUsize,
    /// `save_session` calls that answered [`SessionWrite::Conflict`], faked
    /// or real.
    pub(super) conflicts: AtomicUsize,
    /// The next this many `save_session` calls answer a conflict without
    /// writing (a race lost to a writer that changed nothing).
    pub(super) lose_saves: AtomicUsize,
    /// Futures that the next `save_session` calls each await first.
    pub(super) rivals: Mutex<VecDeque<Rival>>,
}

impl TestStore {
    /// Wraps a store, failing nothing yet.
    pub(super) fn new(inner: SqliteStore) -> Self {
        Self {
            inner,
            finds: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            saves: AtomicUsize::new(0),
            conflicts: AtomicUsize::new(0),
            lose_saves: AtomicUsize::new(0),
            rivals: Mutex::new(VecDeque::new()),
        }
    }

    /// Runs `rival` inside the next `save_session` call, before that call
    /// writes.
    pub(super) fn race_next_save(&self, rival: impl Future<Output = ()> + Send + 'static) {
        self.rivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Rival(Box::pin(rival)));
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test outage".into()))
        } else {
            Ok(())
        }
    }

    fn finds(&self) -> usize {
        self.finds.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeyStore for TestStore {
    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }

    async fn create_key(&self, new: NewKey, actor: &Actor) -> Result<Key, StoreError> {
        self.inner.create_key(new, actor).await
    }

    async fn import_keys(&self, keys: Vec<NewKey>, actor: &Actor) -> Result<Vec<Key>, StoreError> {
        self.inner.import_keys(keys, actor).await
    }

    async fn get_key(&self, id: &KeyId) -> Result<Key, StoreError> {
        self.inner.get_key(id).await
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: PageRequest<KeyId>,
    ) -> Result<Page<Key, KeyId>, StoreError> {
        self.inner.list_keys(filter, page).await
    }

    async fn update_key(
        &self,
        id: &KeyId,
        patch: &KeyPatch,
        now: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Key, StoreError> {
        self.inner.update_key(id, patch, now, actor).await
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
        self.inner
            .rotate_key(id, prefix, short_prefix, hash, grace_until, now, actor)
            .await
    }

    async fn find_candidates(&self, short_prefix: &str) -> Result<Vec<Candidate>, StoreError> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.find_candidates(short_prefix).await
    }

    async fn imported_prefixes(&self) -> Result<BTreeSet<String>, StoreError> {
        self.check()?;
        self.inner.imported_prefixes().await
    }

    async fn audit(&self, page: PageRequest<i64>) -> Result<Page<AuditEntry, i64>, StoreError> {
        self.check()?;
        self.inner.audit(page).await
    }

    async fn change_seq(&self) -> Result<i64, StoreError> {
        self.check()?;
        self.inner.change_seq().await
    }

    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.record_usage(batch).await
    }

    async fn usage(&self, id: &KeyId) -> Result<Usage, StoreError> {
        self.inner.usage(id).await
    }

    async fn key_audit(&self, id: &KeyId, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.key_audit(id, limit).await
    }

    async fn open_dashboard_session(
        &self,
        id_digest: &[u8; 32],
        session: &DashboardSession,
    ) -> Result<(), StoreError> {
        self.inner.open_dashboard_session(id_digest, session).await
    }

    async fn dashboard_session(
        &self,
        id_digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<DashboardSession>, StoreError> {
        self.inner.dashboard_session(id_digest, now).await
    }

    async fn end_dashboard_session(&self, id_digest: &[u8; 32]) -> Result<bool, StoreError> {
        self.inner.end_dashboard_session(id_digest).await
    }

    async fn delete_expired_dashboard_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.delete_expired_dashboard_sessions(before).await
    }

    async fn owner_usage(&self, owner: &str) -> Result<Option<Usage>, StoreError> {
        self.inner.owner_usage(owner).await
    }

    async fn usage_buckets(
        &self,
        subject: UsageSubject<'_>,
        span: SeriesRange,
    ) -> Result<Vec<BucketCount>, StoreError> {
        self.inner.usage_buckets(subject, span).await
    }

    async fn usage_top(
        &self,
        span: SeriesRange,
        rank: UsageRank,
        limit: u32,
    ) -> Result<Vec<KeyTotals>, StoreError> {
        self.inner.usage_top(span, rank, limit).await
    }

    async fn prune_usage(&self, cutoffs: &[(Granularity, DateTime<Utc>)]) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.prune_usage(cutoffs).await
    }

    async fn session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.inner.session(id).await
    }

    async fn session_for(
        &self,
        key_id: &KeyId,
        client_session: Option<&str>,
    ) -> Result<Option<Session>, StoreError> {
        self.inner.session_for(key_id, client_session).await
    }

    async fn save_session(
        &self,
        record: &Session,
        expected_generation: Option<u64>,
        replaces: Option<&SessionId>,
        actor: &Actor,
    ) -> Result<SessionWrite, StoreError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        // std Mutex: held to pop, never across the await.
        let rival = self.rivals.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        if let Some(Rival(rival)) = rival {
            rival.await;
        }
        let lose = self
            .lose_saves
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let written = if lose {
            SessionWrite::Conflict
        } else {
            self.inner
                .save_session(record, expected_generation, replaces, actor)
                .await?
        };
        if written == SessionWrite::Conflict {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        Ok(written)
    }

    async fn revoke_session(
        &self,
        id: &SessionId,
        reason: RevokeReason,
        at: DateTime<Utc>,
        actor: &Actor,
    ) -> Result<Option<Session>, StoreError> {
        self.inner.revoke_session(id, reason, at, actor).await
    }

    async fn delete_expired_sessions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.delete_expired_sessions(before).await
    }
}

/// A SQLite store in a temp dir behind a [`TestStore`], a key manager and
/// a manual clock.
pub(super) struct Fixture {
    pub(super) manager: KeyManager,
    pub(super) store: Arc<TestStore>,
    pub(super) clock: ManualClock,
    _dir: tempfile::TempDir,
}

fn key_settings() -> KeySettings {
    KeySettings {
        default_prefix: KeyPrefix::new("kg_test_").unwrap(),
        format: KeyFormat::Base62,
        default_plan: Some("free".into()),
        generated_hash: TINY,
        imported_hash: TINY,
    }
}

fn plans() -> BTreeSet<String> {
    ["free", "pro"].into_iter().map(String::from).collect()
}

pub(super) async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        url: format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display()),
        auto_migrate: true,
        max_connections: 4,
        connect_timeout: StdDuration::from_secs(5),
        statement_timeout: StdDuration::from_secs(5),
    };
    let inner = SqliteStore::open(&settings).await.unwrap();
    inner.migrate().await.unwrap();
    let store = Arc::new(TestStore::new(inner));
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap());
    let shared: SharedStore = store.clone();
    let manager = KeyManager::new(shared, key_settings(), plans(), Arc::new(clock.clone()));
    Fixture {
        manager,
        store,
        clock,
        _dir: dir,
    }
}

fn settings() -> AuthSettings {
    AuthSettings {
        max_failures_per_prefix: 3,
        max_failures_per_second: 1_000,
        hash_concurrency: 4,
        cache_ttl: StdDuration::from_secs(60),
        negative_ttl: StdDuration::from_secs(30),
        max_entries: 1_000,
        poll_interval: StdDuration::from_millis(20),
        stale_if_error: StdDuration::from_secs(300),
    }
}

async fn authenticator(f: &Fixture, settings: AuthSettings) -> Arc<Authenticator> {
    let store: SharedStore = f.store.clone();
    Authenticator::start(store, settings, Arc::new(f.clock.clone()))
        .await
        .unwrap()
}

pub(super) fn named(name: &str) -> CreateKey {
    CreateKey {
        name: name.into(),
        ..CreateKey::default()
    }
}

async fn auth(a: &Authenticator, secret: &str) -> Result<Principal, AuthError> {
    a.authenticate(SecretStr::new(secret)).await
}

async fn failure(a: &Authenticator, secret: &str) -> AuthFailure {
    auth(a, secret).await.unwrap_err().failure
}

fn invalid(reason: InvalidReason) -> AuthFailure {
    AuthFailure::Invalid(reason)
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A well-formed key with a valid checksum for `short`, and a random rest:
/// what anyone who knows the public format can produce. (The checksum is
/// computed as `keys::format` does; the parse below proves it.)
fn forge(prefix: &str, short: &str) -> String {
    let mut rng = rand::thread_rng();
    let mut key = format!("{prefix}{short}");
    for _ in 0..16 {
        key.push(char::from(BASE62[rng.gen_range(0..BASE62.len())]));
    }
    let mut n = u64::from(crc32fast::hash(key.as_bytes()));
    let mut check = [b'0'; 6];
    for slot in check.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    key.push_str(std::str::from_utf8(&check).unwrap());
    let parts = parse_generated(&key).expect("forged keys are well-formed");
    assert_eq!(parts.short_prefix, short);
    key
}

#[tokio::test]
async fn a_generated_key_authenticates_then_hits_the_cache() {
    let f = fixture().await;
    let a = authenticator(&f, settings()).await;
    let mut req = named("orders");
    req.scopes = ["can_read_order".to_owned()].into_iter().collect();
    let issued = f.manager.create(req, &Actor::cli()).await.unwrap();
    let secret = issued.secret.expose();

    let principal = auth(&a, secret).await.unwrap();
    assert_eq!(principal.key_id(), &issued.key.id);
    assert_eq!(principal.short_prefix(), issued.key.short_prefix);
    assert!(principal.key().scopes.contains("can_read_order"));
    assert_eq!(principal.secret_valid_until, None);
    assert_eq!((a.stats().hashes, f.store.finds()), (1, 1));
    assert_eq!(a.cached_entries(), 1);

    let again = auth(&a, secret).await.unwrap();
    assert!(
        Arc::ptr_eq(principal.key(), again.key()),
        "a hit shares the cached key"
    );
    let stats = a.stats();
    assert_eq!((stats.hashes, stats.hits, stats.misses), (1, 1, 1));
    assert_eq!(f.store.finds(), 1);

    // Past the TTL the entry is refreshed from the store without argon2.
    f.clock.advance(Duration::seconds(61));
    auth(&a, secret).await.unwrap();
    assert_eq!((a.stats().hashes, f.store.finds()), (1, 2));
    auth(&a, secret).await.unwrap();
    assert_eq!((a.stats().hashes, f.store.finds()), (1, 2));

    // A forged key for the same short prefix: looked up, hashed, refused.
    let short = issued.key.short_prefix.clone();
    let err = auth(&a, &forge("kg_test_", &short)).await.unwrap_err();
    assert_eq!(err.failure, invalid(InvalidReason::WrongSecret));
    assert_eq!(err.failure.code(), "invalid_key");
    assert_eq!(err.short_prefix.as_deref(), Some(short.as_str()));
    assert_eq!((a.stats().hashes, f.store.finds()), (2, 3));

    // Mistyped and malformed values never reach the store.
    let mut mistyped = secret.to_owned();
    let last = mistyped.pop().unwrap();
    mistyped.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(failure(&a, &mistyped).await, invalid(InvalidReason::BadChecksum));
    for malformed in ["hello", "kg_test_short", "", "kg_test_ space", &"x".repeat(600)] {
        let err = auth(&a, malformed).await.unwrap_err();
        assert_eq!(err.failure, invalid(InvalidReason::Malformed), "{malformed:?}");
        assert_eq!(err.short_prefix, None);
    }
    assert_eq!((a.stats().hashes, f.store.finds()), (2, 3));
}

#[tokio::test]
async fn unknown_short_prefixes_are_remembered_until_a_key_claims_them() {
    let f = fixture().await;
    let a = authenticator(&f, settings()).await;
    assert_eq!(
        failure(&a, &forge("kg_test_", "zzzzzzzz")).await,
        invalid(InvalidReason::UnknownPrefix)
    );
    assert_eq!(f.store.finds(), 1);
    assert_eq!(
        failure(&a, &forge("kg_test_", "zzzzzzzz")).await,
        invalid(InvalidReason::UnknownPrefix)
    );
    assert_eq!(f.store.finds(), 1, "the second forgery is answered from memory");
    f.clock.advance(Duration::seconds(31));
    failure(&a, &forge("kg_test_", "zzzzzzzz")).await;
    assert_eq!(f.store.finds(), 2, "negative entries expire");

    // A key created (by another process) for a remembered short prefix works
    // once the change feed says so.
    let drawn = crate::keys::format::generate(&KeyPrefix::new("kg_test_").unwrap(), KeyFormat::Base62);
    let plain = drawn.secret.expose().to_owned();
    assert_eq!(failure(&a, &plain).await, invalid(InvalidReason::UnknownPrefix));
    let fixed = plain.clone();
    let generator: KeyGenerator = Arc::new(move |_, _| GeneratedKey {
        secret: SecretString::new(fixed.clone()),
        parts: parse_generated(&fixed).unwrap(),
    });
    let manager = f.manager.clone().with_generator(generator);
    manager.create(named("late"), &Actor::cli()).await.unwrap();
    assert_eq!(failure(&a, &plain).await, invalid(InvalidReason::UnknownPrefix));
    assert_eq!(a.poll_changes().await.unwrap(), 1);
    auth(&a, &plain).await.unwrap();
}

#[tokio::test]
async fn failures_past_the_limit_are_throttled_for_the_rest_of_the_second() {
    let f = fixture().await;
    let a = authenticator(&f, settings()).await;
    let issued = f.manager.create(named("victim"), &Actor::cli()).await.unwrap();
    let good = issued.secret.expose();
    let short = issued.key.short_prefix.clone();
    auth(&a, good).await.unwrap();

    for _ in 0..3 {
        assert_eq!(
            failure(&a, &forge("kg_test_", &short)).await,
            invalid(InvalidReason::WrongSecret)
        );
    }
    let (hashes, finds) = (a.stats().hashes, f.store.finds());
    assert_eq!(hashes, 4);
    for _ in 0..5 {
        assert_eq!(
            failure(&a, &forge("kg_test_", &short)).await,
            invalid(InvalidReason::Throttled)
        );
    }
    assert_eq!(
        (a.stats().hashes, f.store.finds()),
        (hashes, finds),
        "no hashing, no lookup"
    );
    assert_eq!(a.stats().throttled, 5);
    auth(&a, good).await.expect("a cached secret keeps working");

    f.clock.advance(Duration::seconds(1));
    assert_eq!(
        failure(&a, &forge("kg_test_", &short)).await,
        invalid(InvalidReason::WrongSecret)
    );
    assert_eq!(a.stats().hashes, hashes + 1);
}

#[tokio::test]
async fn a_flood_spread_over_many_prefixes_stops_hashing_at_the_global_budget() {
    let f = fixture().await;
    let a = authenticator(
        &f,
        AuthSettings {
            max_failures_per_second: 4,
            ..settings()
        },
    )
    .await;
    let mut shorts = Vec::new();
    for i in 0..8 {
        let issued = f
            .manager
            .create(named(&format!("k{i}")), &Actor::cli())
            .await
            .unwrap();
        shorts.push(issued.key.short_prefix.clone());
    }
    let bystander = f.manager.create(named("bystander"), &Actor::cli()).await.unwrap();

    // One forgery per prefix: each is below the per-prefix limit, but the
    // fifth failure in the second exceeds the gateway-wide budget.
    for short in &shorts[..5] {
        assert_eq!(
            failure(&a, &forge("kg_test_", short)).await,
            invalid(InvalidReason::WrongSecret)
        );
    }
    let hashes = a.stats().hashes;
    assert_eq!(hashes, 5);
    // In the flood, the failed prefixes are refused without hashing, even
    // in later seconds; prefixes that have not failed still hash once.
    f.clock.advance(Duration::seconds(10));
    for short in &shorts[..5] {
        assert_eq!(
            failure(&a, &forge("kg_test_", short)).await,
            invalid(InvalidReason::Throttled)
        );
    }
    assert_eq!(
        a.stats().hashes,
        hashes,
        "no hashing for failed prefixes in a flood"
    );
    assert!(a.stats().flooded);
    assert_eq!(
        failure(&a, &forge("kg_test_", &shorts[5])).await,
        invalid(InvalidReason::WrongSecret)
    );
    auth(&a, bystander.secret.expose())
        .await
        .expect("a key whose prefix never failed still verifies in a flood");

    // A minute after the flood's last over-budget second, hashing resumes.
    f.clock.advance(Duration::seconds(60));
    assert_eq!(
        failure(&a, &forge("kg_test_", &shorts[0])).await,
        invalid(InvalidReason::WrongSecret)
    );
}

#[tokio::test]
async fn session_changes_do_not_drop_the_keys_cached_entries() {
    let f = fixture().await;
    let issued = f.manager.create(named("k"), &Actor::cli()).await.unwrap();
    let a = authenticator(&f, settings()).await;
    let secret = issued.secret.expose();
    auth(&a, secret).await.unwrap();
    let hashes = a.stats().hashes;

    let now = f.clock.now();
    let record = crate::store::conformance::session(&issued.key.id, None, now);
    let written = f
        .store
        .save_session(&record, None, None, &Actor::cli())
        .await
        .unwrap();
    assert_eq!(written, SessionWrite::Written);
    f.store
        .revoke_session(&record.id, RevokeReason::Admin, now, &Actor::cli())
        .await
        .unwrap();
    assert_eq!(
        a.poll_changes().await.unwrap(),
        2,
        "both session changes are on the feed"
    );
    assert_eq!(a.cached_entries(), 1, "the key's entry stays");
    auth(&a, secret).await.unwrap();
    assert_eq!(
        a.stats().hashes,
        hashes,
        "no argon2 re-check after a session change"
    );
}

#[tokio::test]
async fn status_changes_reach_a_cached_key_through_the_change_feed() {
    let f = fixture().await;
    let issued = f.manager.create(named("k"), &Actor::cli()).await.unwrap();
    let a = authenticator(&f, settings()).await;
    let id = issued.key.id.as_str();
    let secret = issued.secret.expose();
    auth(&a, secret).await.unwrap();

    f.manager
        .set_status(id, KeyStatus::Inactive, &Actor::cli())
        .await
        .unwrap();
    auth(&a, secret).await.expect("cached until the feed is polled");
    assert_eq!(a.poll_changes().await.unwrap(), 1);
    assert_eq!(a.cached_entries(), 0);
    let err = auth(&a, secret).await.unwrap_err();
    assert_eq!(err.failure, AuthFailure::Inactive);
    assert_eq!(err.failure.code(), "key_inactive");

    f.manager
        .set_status(id, KeyStatus::Active, &Actor::cli())
        .await
        .unwrap();
    assert_eq!(a.poll_changes().await.unwrap(), 1);
    auth(&a, secret).await.unwrap();

    f.manager
        .set_status(id, KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    assert_eq!(a.poll_changes().await.unwrap(), 1);
    assert_eq!(failure(&a, secret).await, invalid(InvalidReason::Revoked));
    let hashes = a.stats().hashes;
    assert_eq!(failure(&a, secret).await, invalid(InvalidReason::Revoked));
    assert_eq!(a.stats().hashes, hashes, "a revoked key's retries cost no argon2");
    assert_eq!(a.poll_changes().await.unwrap(), 0, "nothing new");
}

#[tokio::test]
async fn a_key_expires_at_its_instant_not_at_the_cache_ttl() {
    let f = fixture().await;
    let long_ttl = AuthSettings {
        cache_ttl: StdDuration::from_secs(3600),
        ..settings()
    };
    let a = authenticator(&f, long_ttl).await;
    let mut req = named("short-lived");
    req.expires_at = Some(f.clock.now() + Duration::minutes(10));
    let issued = f.manager.create(req, &Actor::cli()).await.unwrap();
    let secret = issued.secret.expose();
    auth(&a, secret).await.unwrap();
    let finds = f.store.finds();
    f.clock.advance(Duration::minutes(10) - Duration::milliseconds(1));
    auth(&a, secret).await.unwrap();
    f.clock.advance(Duration::milliseconds(1));
    let err = auth(&a, secret).await.unwrap_err();
    assert_eq!(err.failure, AuthFailure::Expired);
    assert_eq!(err.failure.code(), "key_expired");
    assert_eq!(f.store.finds(), finds, "no store call, no poll");

    // An expiry set later arrives through the feed.
    let other = f.manager.create(named("other"), &Actor::cli()).await.unwrap();
    auth(&a, other.secret.expose()).await.unwrap();
    let patch = KeyPatch {
        expires_at: Some(Some(f.clock.now() + Duration::minutes(5))),
        ..KeyPatch::default()
    };
    f.manager
        .update(other.key.id.as_str(), patch, &Actor::cli())
        .await
        .unwrap();
    a.poll_changes().await.unwrap();
    auth(&a, other.secret.expose()).await.unwrap();
    f.clock.advance(Duration::minutes(5));
    assert_eq!(failure(&a, other.secret.expose()).await, AuthFailure::Expired);
}

#[tokio::test]
async fn rotation_with_grace_keeps_the_old_secret_until_the_grace_ends() {
    let f = fixture().await;
    let issued = f.manager.create(named("rotating"), &Actor::cli()).await.unwrap();
    let a = authenticator(&f, settings()).await;
    let old = issued.secret.expose().to_owned();
    auth(&a, &old).await.unwrap();

    let rotated = f
        .manager
        .rotate(issued.key.id.as_str(), Duration::minutes(10), &Actor::cli())
        .await
        .unwrap();
    let new = rotated.secret.expose().to_owned();
    assert_eq!(a.poll_changes().await.unwrap(), 1);
    let grace_end = f.clock.now() + Duration::minutes(10);
    let via_old = auth(&a, &old).await.unwrap();
    assert_eq!(via_old.key_id(), &issued.key.id);
    assert_eq!(via_old.secret_valid_until, Some(grace_end));
    let via_new = auth(&a, &new).await.unwrap();
    assert_eq!(via_new.secret_valid_until, None);

    f.clock.advance(Duration::minutes(10));
    assert_eq!(failure(&a, &old).await, invalid(InvalidReason::GraceOver));
    let hashes = a.stats().hashes;
    auth(&a, &new).await.unwrap();
    assert_eq!(
        a.stats().hashes,
        hashes,
        "the new secret's entry is refreshed, not re-hashed"
    );

    // A gateway that never cached the old secret refuses it too.
    let cold = authenticator(&f, settings()).await;
    assert_eq!(failure(&cold, &old).await, invalid(InvalidReason::GraceOver));
    auth(&cold, &new).await.unwrap();
}

#[tokio::test]
async fn rotation_without_grace_refuses_the_old_cached_secret_after_a_poll() {
    let f = fixture().await;
    let a = authenticator(&f, settings()).await;
    let issued = f.manager.create(named("rotating"), &Actor::cli()).await.unwrap();
    let old = issued.secret.expose().to_owned();
    auth(&a, &old).await.unwrap();
    let rotated = f
        .manager
        .rotate(issued.key.id.as_str(), Duration::zero(), &Actor::cli())
        .await
        .unwrap();
    a.poll_changes().await.unwrap();
    // The old secret's short prefix no longer has any secret in the store.
    assert_eq!(failure(&a, &old).await, invalid(InvalidReason::UnknownPrefix));
    let principal = auth(&a, rotated.secret.expose()).await.unwrap();
    assert_eq!(principal.key_id(), &issued.key.id);
}

#[tokio::test]
async fn imported_keys_sharing_a_short_prefix_are_each_verified() {
    let f = fixture().await;
    let file = [
        r#"{"key": "sk_live_abcdefgh0001", "name": "one"}"#,
        r#"{"key": "sk_live_abcdefgh0002", "name": "two"}"#,
    ]
    .join("\n");
    let keys = f.manager.import(&file, &Actor::cli(), &|_, _| {}).await.unwrap();
    let a = authenticator(&f, settings()).await;
    assert_eq!(
        auth(&a, "sk_live_abcdefgh0001").await.unwrap().key_id(),
        &keys[0].id
    );
    assert_eq!(
        auth(&a, "sk_live_abcdefgh0002").await.unwrap().key_id(),
        &keys[1].id
    );
    assert_eq!(
        failure(&a, "sk_live_abcdefgh0003").await,
        invalid(InvalidReason::WrongSecret)
    );
    let finds = f.store.finds();
    // Too short for a short prefix after the prefix, or another prefix: no lookup.
    assert_eq!(
        failure(&a, "sk_live_abc").await,
        invalid(InvalidReason::Malformed)
    );
    assert_eq!(
        failure(&a, "pk-123456789").await,
        invalid(InvalidReason::Malformed)
    );
    assert_eq!(f.store.finds(), finds);

    // A prefix imported after start is learnt from the change feed.
    f.manager
        .import(
            r#"{"key": "pk-123456789", "prefix": "pk-"}"#,
            &Actor::cli(),
            &|_, _| {},
        )
        .await
        .unwrap();
    assert_eq!(
        failure(&a, "pk-123456789").await,
        invalid(InvalidReason::Malformed)
    );
    assert_eq!(a.poll_changes().await.unwrap(), 1);
    auth(&a, "pk-123456789").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_first_requests_with_one_key_hash_once() {
    let f = fixture().await;
    let a = authenticator(&f, settings()).await;
    let issued = f.manager.create(named("popular"), &Actor::cli()).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (a, barrier) = (Arc::clone(&a), Arc::clone(&barrier));
        let secret = issued.secret.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            a.authenticate(SecretStr::from(&secret))
                .await
                .map(|p| p.key().id.clone())
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap(), issued.key.id);
    }
    let stats = a.stats();
    assert_eq!(stats.hashes, 1, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, 20);
    assert_eq!(a.flights_in_progress(), 0, "finished flights leave no trace");
}

#[tokio::test]
async fn an_unreachable_store_fails_uncached_keys_and_serves_cached_ones() {
    let f = fixture().await;
    let a = authenticator(&f, settings()).await;
    let cached = f.manager.create(named("cached"), &Actor::cli()).await.unwrap();
    let cold = f.manager.create(named("cold"), &Actor::cli()).await.unwrap();
    auth(&a, cached.secret.expose()).await.unwrap();
    assert!(a.store_ready().await);

    f.store.fail.store(true, Ordering::SeqCst);
    assert!(!a.store_ready().await);
    assert!(a.poll_changes().await.is_err());
    auth(&a, cached.secret.expose()).await.unwrap();
    let err = auth(&a, cold.secret.expose()).await.unwrap_err();
    assert_eq!(err.failure, AuthFailure::Unavailable);
    assert_eq!(err.failure.code(), "auth_unavailable");

    // Past the TTL: served stale within stale_if_error, then refused.
    f.clock.advance(Duration::seconds(61));
    auth(&a, cached.secret.expose()).await.unwrap();
    assert_eq!(a.stats().stale_served, 1);
    let finds = f.store.finds();
    auth(&a, cached.secret.expose()).await.unwrap();
    assert_eq!(
        f.store.finds(),
        finds,
        "a failing store is retried at most once a second"
    );
    f.clock.advance(Duration::seconds(300));
    assert_eq!(
        failure(&a, cached.secret.expose()).await,
        AuthFailure::Unavailable
    );

    f.store.fail.store(false, Ordering::SeqCst);
    let hashes = a.stats().hashes;
    auth(&a, cached.secret.expose()).await.unwrap();
    assert_eq!(a.stats().hashes, hashes, "recovered by a refresh, not a re-hash");
    auth(&a, cold.secret.expose()).await.unwrap();
    assert!(a.stats().store_errors >= 3);
}

#[tokio::test]
async fn the_poller_applies_changes_and_stops_on_shutdown() {
    let f = fixture().await;
    let a = authenticator(&f, settings()).await;
    let issued = f.manager.create(named("watched"), &Actor::cli()).await.unwrap();
    let secret = issued.secret.expose();
    auth(&a, secret).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let poller = a.spawn_change_poller(shutdown);
    f.manager
        .set_status(issued.key.id.as_str(), KeyStatus::Inactive, &Actor::cli())
        .await
        .unwrap();
    // Wait for the background task (real time, bounded), not for a clock.
    let mut seen = false;
    for _ in 0..250 {
        if failure_or_ok(&a, secret).await == Some(AuthFailure::Inactive) {
            seen = true;
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    assert!(seen, "the poller never applied the change");
    stop.send(true).unwrap();
    tokio::time::timeout(StdDuration::from_secs(5), poller)
        .await
        .expect("the poller stops on shutdown")
        .unwrap();
}

async fn failure_or_ok(a: &Authenticator, secret: &str) -> Option<AuthFailure> {
    auth(a, secret).await.err().map(|e| e.failure)
}

#[test]
fn a_key_state_maps_to_one_spec_code() {
    let code = |state| AuthFailure::of_state(state).map(AuthFailure::code);
    assert_eq!(code(KeyState::Active), None);
    assert_eq!(code(KeyState::Revoked), Some("invalid_key"));
    assert_eq!(code(KeyState::Inactive), Some("key_inactive"));
    assert_eq!(code(KeyState::Expired), Some("key_expired"));
    assert_eq!(
        AuthFailure::of_state(KeyState::Revoked).map(AuthFailure::cause),
        Some("revoked")
    );
}
