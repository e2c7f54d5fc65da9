//! The conformance suite every [`KeyStore`] implementation passes, so SQLite
//! and Postgres cannot drift apart (STYLE.md §3.14).
//!
//! Each case is a `pub async fn` taking a freshly migrated, empty store and
//! panicking on a violation. A backend runs them all with
//! [`conformance_tests!`], given an async factory returning a [`Fixture`]
//! per test, and the attributes each case carries besides `#[tokio::test]`
//! (Postgres's are `#[ignore = "needs Postgres: …"]`):
//!
//! ```ignore
//! mod conformance {
//!     async fn fixture() -> crate::store::conformance::Fixture { … }
//!     crate::store::conformance::conformance_tests!(fixture);
//! }
//! ```
//!
//! What only one backend can check (opening files, its migration table,
//! locking) stays in that backend's own tests.
//!
//! The Postgres tests are ignored unless asked for (`cargo test --
//! --include-ignored`, as `.ci/run` does), so a run without a server says
//! they did not run; asked for, `KEYGATE_TEST_PG` must name a reachable
//! server (e.g. `postgres://postgres@127.0.0.1:5432/test`), or they fail
//! (STYLE.md §4). Each gets a fresh schema ([`PgSchema`]), dropped
//! afterwards.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use sqlx::{ConnectOptions, Connection, Executor};

use super::postgres::PostgresStore;
use super::rows::timestamp_text;
use super::{
    Actor, AuditEntry, BucketCount, Change, KeyFilter, KeyStore, NewKey, PageRequest, SessionWrite,
    SharedStore, StoreError, StoreSettings, UsageDelta, UsageRank, UsageSubject, redact_url,
};
use super::{DashboardKind, DashboardSession};
use crate::keys::usage::{Granularity, SeriesRange};
use crate::keys::{
    Key, KeyHash, KeyId, KeyPatch, KeySource, KeyStatus, ModelError, RevokeReason, Session, SessionId,
    TokenDigest,
};

/// A store for one test, and whatever must live as long as it (a temporary
/// directory, a Postgres schema to drop).
pub struct Fixture {
    /// The store, migrated and empty.
    pub store: SharedStore,
    /// Dropped after the test.
    pub guard: Box<dyn Any + Send>,
}

/// Instantiates every conformance case as a `#[tokio::test]` for a backend.
/// `$factory` is an `async fn() -> Fixture`; the attributes after it go on
/// every case.
macro_rules! conformance_tests {
    ($factory:path $(, #[$attr:meta])*) => {
        $crate::store::conformance::conformance_tests!(@cases $factory; [$(#[$attr])*];
            create_get_round_trip,
            a_key_without_a_plan,
            list_pagination_and_filters,
            short_prefix_collisions,
            update_writes_one_audit_row,
            revoked_is_final,
            rotate_with_grace,
            rotate_without_grace,
            import_is_atomic,
            audit_order_and_change_seq,
            usage_recording,
            usage_history_buckets,
            usage_history_ranking,
            usage_history_pruning,
            dashboard_sessions,
            migrate_is_idempotent,
            session_round_trip,
            session_uniqueness_per_key_and_client_session,
            session_updates_are_conditional_on_the_generation,
            session_insert_replaces_an_unusable_row,
            session_revocation,
            session_changes_on_the_change_feed,
            the_change_feed_is_typed,
            expired_session_cleanup
        );
    };
    // One case at a time: the attributes repeat once per case, which a
    // single nested repetition cannot express.
    (@cases $factory:path; [$($attrs:tt)*]; $case:ident $(, $rest:ident)*) => {
        #[tokio::test]
        $($attrs)*
        async fn $case() {
            let fixture = $factory().await;
            $crate::store::conformance::$case(&*fixture.store).await;
            drop(fixture.guard);
        }
        $crate::store::conformance::conformance_tests!(@cases $factory; [$($attrs)*]; $($rest),*);
    };
    (@cases $factory:path; [$($attrs:tt)*];) => {};
}
pub(crate) use conformance_tests;

/// The variable naming the Postgres server the Postgres tests use.
pub const PG_ENV: &str = "KEYGATE_TEST_PG";

/// How long test setup and cleanup wait for the test server.
const PG_TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A fresh, uniquely named, empty schema on the `KEYGATE_TEST_PG` server,
/// dropped (with everything in it) when this is dropped.
///
/// Stores opened with [`PgSchema::settings`] use it alone: their URL sets
/// `search_path` to it (so tables, `_sqlx_migrations` and the trigger
/// function are created there) and `application_name` to its name (so
/// cleanup can find and end their sessions).
pub struct PgSchema {
    base_url: String,
    name: String,
}

impl PgSchema {
    /// Creates the schema. Panics, saying what to set, when
    /// `KEYGATE_TEST_PG` is unset or its server is unusable.
    pub async fn create() -> Self {
        let base_url = match std::env::var(PG_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => panic!("{PG_ENV} is not set: set it to postgres://… to run the Postgres store tests"),
        };
        let name = format!("kgtest_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut admin = admin_connection(&base_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        admin
            .execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot create the test schema {name}: {e}"));
        admin.close().await.expect("close the admin connection");
        Self { base_url, name }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `KEYGATE_TEST_PG` with this schema as the only search path.
    pub fn url(&self) -> String {
        let separator = if self.base_url.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{name}&application_name={name}",
            self.base_url,
            name = self.name
        )
    }

    /// Store settings for this schema: a small pool, generous timeouts.
    pub fn settings(&self) -> StoreSettings {
        StoreSettings {
            url: self.url(),
            auto_migrate: true,
            max_connections: 4,
            connect_timeout: PG_TEST_TIMEOUT,
            statement_timeout: PG_TEST_TIMEOUT,
        }
    }

    /// A store on this schema, not migrated.
    pub async fn open(&self) -> PostgresStore {
        PostgresStore::open(&self.settings())
            .await
            .unwrap_or_else(|e| panic!("{PG_ENV} is set, but the Postgres store does not open: {e}"))
    }

    /// A store on this schema, migrated.
    pub async fn migrated(&self) -> PostgresStore {
        let store = self.open().await;
        store.migrate().await.expect("migrate a fresh schema");
        store
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which may not block on a
        // future: clean up on a thread with a runtime of its own.
        let (base_url, name) = (self.base_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(drop_schema(&base_url, &name))
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test schema {}: {e}", self.name),
            Err(_) => eprintln!("dropping the test schema {} panicked", self.name),
        }
    }
}

/// A connection to the `KEYGATE_TEST_PG` server itself, or a message saying
/// it is unreachable.
async fn admin_connection(base_url: &str) -> Result<sqlx::PgConnection, String> {
    let unusable = |e: &dyn std::fmt::Display| {
        format!(
            "{PG_ENV} is set to {}, but that Postgres is unusable: {e}",
            redact_url(base_url)
        )
    };
    let options: sqlx::postgres::PgConnectOptions = base_url.parse().map_err(|e| unusable(&e))?;
    match tokio::time::timeout(PG_TEST_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unusable(&e)),
        Err(_) => Err(unusable(&format!("no answer within {PG_TEST_TIMEOUT:?}"))),
    }
}

async fn drop_schema(base_url: &str, name: &str) -> Result<(), String> {
    let mut admin = admin_connection(base_url).await?;
    // The test's stores may still hold connections (a fixture's store is
    // dropped after its guard), one perhaps still rolling back: end them,
    // so DROP SCHEMA does not wait for their locks.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await
    .map_err(|e| e.to_string())?;
    admin
        .execute("SET lock_timeout = '10s'")
        .await
        .map_err(|e| e.to_string())?;
    admin
        .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
        .await
        .map_err(|e| e.to_string())?;
    admin.close().await.map_err(|e| e.to_string())
}

/// A migrated, empty Postgres store in a fresh schema ([`PgSchema::create`]):
/// the conformance factory for Postgres.
pub async fn postgres_fixture() -> Fixture {
    let schema = PgSchema::create().await;
    let store = schema.migrated().await;
    Fixture {
        store: Arc::new(store),
        guard: Box::new(schema),
    }
}

/// A fixed instant `secs` seconds (plus some microseconds, so precision is
/// exercised) after 2026-11-23T12:00:00Z.
pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("a valid instant")
        + Duration::seconds(secs)
        + Duration::microseconds(123_456)
}

/// A PHC-shaped hash, distinct per `tag` (the store never parses it).
pub fn hash(tag: &str) -> KeyHash {
    KeyHash::from_phc(format!("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ${tag}"))
}

/// A minimal active, generated key created at `at`.
pub fn key(short_prefix: &str, at: DateTime<Utc>) -> Key {
    Key {
        id: KeyId::generate(at),
        name: format!("key {short_prefix}"),
        owner: None,
        scopes: BTreeSet::new(),
        plan: Some("free".into()),
        status: KeyStatus::Active,
        expires_at: None,
        prefix: "kg_test_".into(),
        short_prefix: short_prefix.into(),
        source: KeySource::Generated,
        metadata: json!({}),
        created_at: at,
        updated_at: at,
        last_used_at: None,
        request_count: 0,
    }
}

/// `key` as a [`NewKey`] with a hash derived from its short prefix.
pub fn new_key(key: Key) -> NewKey {
    let hash = hash(&key.short_prefix);
    NewKey { key, hash }
}

async fn create(store: &dyn KeyStore, short_prefix: &str, at: DateTime<Utc>) -> Key {
    store
        .create_key(new_key(key(short_prefix, at)), &Actor::cli())
        .await
        .expect("create_key")
}

async fn all_audit(store: &dyn KeyStore) -> Vec<AuditEntry> {
    let mut entries = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .audit(PageRequest { limit: 100, after })
            .await
            .expect("audit");
        entries.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return entries,
        }
    }
}

/// Every page of a listing: the ids in order and each page's size.
async fn all_pages(store: &dyn KeyStore, filter: &KeyFilter, limit: u32) -> (Vec<KeyId>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_keys(filter, PageRequest { limit, after })
            .await
            .expect("list_keys");
        sizes.push(page.items.len());
        ids.extend(page.items.into_iter().map(|k| k.id));
        match page.next {
            Some(next) => {
                assert_eq!(ids.last(), Some(&next), "next is the last id returned");
                after = Some(next);
            }
            None => return (ids, sizes),
        }
    }
}

fn patch() -> KeyPatch {
    KeyPatch::default()
}

/// Every field survives create and get; timestamps come back at microsecond
/// precision; the secret is findable by its short prefix.
pub async fn create_get_round_trip(store: &dyn KeyStore) {
    let full = Key {
        owner: Some("acme".into()),
        scopes: ["orders:read", "orders:write"]
            .into_iter()
            .map(String::from)
            .collect(),
        plan: Some("pro".into()),
        status: KeyStatus::Inactive,
        expires_at: Some(t(86_400)),
        prefix: "sk_live_".into(),
        metadata: json!({"team": "billing", "nested": {"n": 1, "list": [true, null, "x"]}}),
        updated_at: t(5),
        last_used_at: Some(t(3)),
        request_count: 7,
        name: "Billing — ünïcode".into(),
        ..key("full0001", t(0))
    };
    let actor = Actor::admin_token("tok1");
    let created = store
        .create_key(new_key(full.clone()), &actor)
        .await
        .expect("create");
    assert_eq!(created, full);
    assert_eq!(store.get_key(&full.id).await.expect("get"), full);

    // Sub-microsecond input is truncated, and the returned key says so.
    let mut fine = key("fine0001", t(1) + Duration::nanoseconds(789));
    fine.source = KeySource::Imported;
    let created = store
        .create_key(new_key(fine.clone()), &actor)
        .await
        .expect("create");
    assert_eq!(created.created_at, t(1));
    assert_eq!(created.updated_at, t(1));
    assert_eq!(store.get_key(&fine.id).await.expect("get"), created);
    assert_eq!(created.source, KeySource::Imported);

    let candidates = store.find_candidates("full0001").await.expect("candidates");
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].key, full);
    assert_eq!(candidates[0].secret.key_id, full.id);
    assert_eq!(candidates[0].secret.prefix, "sk_live_");
    assert_eq!(candidates[0].secret.short_prefix, "full0001");
    assert_eq!(candidates[0].secret.hash, hash("full0001"));
    assert_eq!(candidates[0].secret.valid_until, None);
    assert!(
        store
            .find_candidates("nothing0")
            .await
            .expect("candidates")
            .is_empty()
    );

    let missing = KeyId::generate(t(9));
    assert!(matches!(store.get_key(&missing).await, Err(StoreError::NotFound(id)) if id == missing));

    let audit = all_audit(store).await;
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].key_id, full.id);
    assert_eq!(audit[0].action, "created");
    assert_eq!(audit[0].actor, actor);
    assert_eq!(audit[0].at, t(0));
    assert_eq!(audit[0].details["short_prefix"], "full0001");
}

/// A key without a plan (`keys.default_plan` unset) reads back without
/// one, and a patch can give it one.
pub async fn a_key_without_a_plan(store: &dyn KeyStore) {
    let actor = Actor::cli();
    let planless = Key {
        plan: None,
        ..key("none0001", t(2))
    };
    let created = store
        .create_key(new_key(planless.clone()), &actor)
        .await
        .expect("create");
    assert_eq!(created, planless);
    assert_eq!(store.get_key(&planless.id).await.expect("get").plan, None);
    let patch = KeyPatch {
        plan: Some("pro".into()),
        ..KeyPatch::default()
    };
    let planned = store
        .update_key(&planless.id, &patch, t(3), &actor)
        .await
        .expect("update");
    assert_eq!(planned.plan.as_deref(), Some("pro"));
    assert_eq!(store.get_key(&planless.id).await.expect("get"), planned);
}

/// 25 keys listed 10 at a time are each seen once, in id order; owner and
/// status filters (alone and together) paginate the same way.
pub async fn list_pagination_and_filters(store: &dyn KeyStore) {
    let mut all = Vec::new();
    for i in 0..25 {
        let mut k = key(&format!("list{i:04}"), t(i));
        k.owner = match i % 3 {
            0 => Some("a".into()),
            1 => Some("b".into()),
            _ => None,
        };
        if i % 4 == 0 {
            k.status = KeyStatus::Inactive;
        }
        if i % 5 == 0 {
            k.plan = None;
            k.name = format!("Billing_100% {i}");
        }
        all.push(store.create_key(new_key(k), &Actor::cli()).await.expect("create"));
    }
    let mut sorted: Vec<KeyId> = all.iter().map(|k| k.id.clone()).collect();
    sorted.sort();

    let (ids, sizes) = all_pages(store, &KeyFilter::default(), 10).await;
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(ids, sorted);

    let (ids, sizes) = all_pages(store, &KeyFilter::default(), 25).await;
    assert_eq!((ids.len(), sizes), (25, vec![25]));

    let expect = |pred: &dyn Fn(&Key) -> bool| {
        let mut ids: Vec<KeyId> = all.iter().filter(|k| pred(k)).map(|k| k.id.clone()).collect();
        ids.sort();
        ids
    };
    let filters = [
        (
            KeyFilter {
                owner: Some("a".into()),
                ..KeyFilter::default()
            },
            expect(&|k| k.owner.as_deref() == Some("a")),
        ),
        (
            KeyFilter {
                status: Some(KeyStatus::Inactive),
                ..KeyFilter::default()
            },
            expect(&|k| k.status == KeyStatus::Inactive),
        ),
        (
            KeyFilter {
                owner: Some("b".into()),
                status: Some(KeyStatus::Active),
                ..KeyFilter::default()
            },
            expect(&|k| k.owner.as_deref() == Some("b") && k.status == KeyStatus::Active),
        ),
        (
            KeyFilter {
                owner: Some("nobody".into()),
                ..KeyFilter::default()
            },
            Vec::new(),
        ),
        (
            KeyFilter {
                plan: Some(String::new()),
                ..KeyFilter::default()
            },
            expect(&|k| k.plan.is_none()),
        ),
        (
            KeyFilter {
                plan: Some("free".into()),
                status: Some(KeyStatus::Active),
                ..KeyFilter::default()
            },
            expect(&|k| k.plan.as_deref() == Some("free") && k.status == KeyStatus::Active),
        ),
        // A search: a name containing it in any case (LIKE's wildcards in
        // it are plain characters), an owner or a short prefix equal to it.
        (
            KeyFilter {
                search: Some("BILLING_100%".into()),
                ..KeyFilter::default()
            },
            expect(&|k| k.name.starts_with("Billing_100%")),
        ),
        (
            KeyFilter {
                search: Some("_100".into()),
                ..KeyFilter::default()
            },
            expect(&|k| k.name.starts_with("Billing_100%")),
        ),
        (
            KeyFilter {
                search: Some("%".into()),
                owner: Some("a".into()),
                ..KeyFilter::default()
            },
            expect(&|k| k.name.contains('%') && k.owner.as_deref() == Some("a")),
        ),
        (
            KeyFilter {
                search: Some("b".into()),
                ..KeyFilter::default()
            },
            expect(&|k| k.owner.as_deref() == Some("b") || k.name.to_lowercase().contains('b')),
        ),
        (
            KeyFilter {
                search: Some("list0007".into()),
                ..KeyFilter::default()
            },
            expect(&|k| k.short_prefix == "list0007" || k.name.contains("list0007")),
        ),
    ];
    for (filter, want) in filters {
        let (ids, _) = all_pages(store, &filter, 3).await;
        assert_eq!(ids, want, "{filter:?}");
    }

    // `after` is exclusive, and a page ending exactly at the last key has no next.
    let page = store
        .list_keys(
            &KeyFilter::default(),
            PageRequest {
                limit: 10,
                after: Some(sorted[19].clone()),
            },
        )
        .await
        .expect("list");
    let ids: Vec<KeyId> = page.items.into_iter().map(|k| k.id).collect();
    assert_eq!(ids, sorted[20..].to_vec());
    assert_eq!(page.next, None);
}

/// A generated key's short prefix may not match any stored secret's, and a
/// refused create or rotate writes nothing.
pub async fn short_prefix_collisions(store: &dyn KeyStore) {
    let first = create(store, "collide1", t(0)).await;
    let seq = store.change_seq().await.expect("seq");

    let twin = key("collide1", t(1));
    let err = store.create_key(new_key(twin.clone()), &Actor::cli()).await;
    assert!(matches!(err, Err(StoreError::ShortPrefixTaken)), "{err:?}");
    assert!(matches!(
        store.get_key(&twin.id).await,
        Err(StoreError::NotFound(_))
    ));

    // Imported keys may share a short prefix among themselves, but a
    // generated key may not take one of theirs.
    let mut imported = key("shared01", t(2));
    imported.source = KeySource::Imported;
    store
        .import_keys(vec![new_key(imported)], &Actor::cli())
        .await
        .expect("import");
    let seq_after_import = store.change_seq().await.expect("seq");
    assert!(seq_after_import > seq);
    let err = store
        .create_key(new_key(key("shared01", t(3))), &Actor::cli())
        .await;
    assert!(matches!(err, Err(StoreError::ShortPrefixTaken)), "{err:?}");

    let err = store
        .rotate_key(
            &first.id,
            "kg_test_",
            "shared01",
            hash("r"),
            None,
            t(4),
            &Actor::cli(),
        )
        .await;
    assert!(matches!(err, Err(StoreError::ShortPrefixTaken)), "{err:?}");
    assert_eq!(store.get_key(&first.id).await.expect("get"), first);
    assert_eq!(store.find_candidates("collide1").await.expect("find").len(), 1);
    assert_eq!(store.change_seq().await.expect("seq"), seq_after_import);
}

/// A patch changes the fields it names and writes exactly one audit row; a
/// patch that changes nothing writes none; status changes get their own
/// action names.
pub async fn update_writes_one_audit_row(store: &dyn KeyStore) {
    let k = create(store, "upd00001", t(0)).await;
    let actor = Actor::admin_token("ops");
    let before = all_audit(store).await.len();

    let change = KeyPatch {
        name: Some("renamed".into()),
        scopes: Some(["read".to_owned()].into_iter().collect()),
        expires_at: Some(Some(t(1_000))),
        plan: Some("free".into()), // unchanged: not reported
        ..patch()
    };
    let updated = store
        .update_key(&k.id, &change, t(10), &actor)
        .await
        .expect("update");
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.scopes, ["read".to_owned()].into_iter().collect());
    assert_eq!(updated.expires_at, Some(t(1_000)));
    assert_eq!(updated.updated_at, t(10));
    assert_eq!(updated.created_at, k.created_at);
    assert_eq!(store.get_key(&k.id).await.expect("get"), updated);

    let audit = all_audit(store).await;
    assert_eq!(audit.len(), before + 1);
    let last = audit.last().expect("an audit row");
    assert_eq!(last.action, "updated");
    assert_eq!(last.details, json!({"changed": ["name", "scopes", "expires_at"]}));
    assert_eq!((&last.key_id, &last.actor, last.at), (&k.id, &actor, t(10)));
    assert_eq!(store.change_seq().await.expect("seq"), last.seq);
    // The key's own rows, newest first.
    let own = store.key_audit(&k.id, 10).await.expect("key_audit");
    let actions: Vec<&str> = own.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["updated", "created"]);
    assert_eq!(own[0], *last);
    assert_eq!(store.key_audit(&k.id, 1).await.expect("key_audit").len(), 1);

    // The same patch again, and an empty one, change nothing.
    for noop in [change, patch()] {
        let same = store
            .update_key(&k.id, &noop, t(20), &actor)
            .await
            .expect("update");
        assert_eq!(same, updated);
        assert_eq!(all_audit(store).await.len(), before + 1);
    }
    assert_eq!(store.get_key(&k.id).await.expect("get").updated_at, t(10));

    // Clearing an optional field is a change.
    let cleared = store
        .update_key(
            &k.id,
            &KeyPatch {
                expires_at: Some(None),
                owner: Some(Some("acme".into())),
                metadata: Some(json!({"a": 1})),
                ..patch()
            },
            t(25),
            &actor,
        )
        .await
        .expect("update");
    assert_eq!(cleared.expires_at, None);
    assert_eq!(cleared.owner.as_deref(), Some("acme"));
    assert_eq!(store.get_key(&k.id).await.expect("get"), cleared);

    let disable = KeyPatch {
        status: Some(KeyStatus::Inactive),
        name: Some("off".into()),
        ..patch()
    };
    let off = store
        .update_key(&k.id, &disable, t(30), &actor)
        .await
        .expect("disable");
    assert_eq!(off.status, KeyStatus::Inactive);
    let enable = KeyPatch {
        status: Some(KeyStatus::Active),
        ..patch()
    };
    store
        .update_key(&k.id, &enable, t(40), &actor)
        .await
        .expect("enable");
    let audit = all_audit(store).await;
    let tail: Vec<(&str, &serde_json::Value)> = audit[before + 1..]
        .iter()
        .map(|e| (e.action.as_str(), &e.details))
        .collect();
    assert_eq!(
        tail,
        vec![
            (
                "updated",
                &json!({"changed": ["owner", "expires_at", "metadata"]})
            ),
            ("disabled", &json!({"changed": ["status", "name"]})),
            ("enabled", &json!({"changed": ["status"]})),
        ]
    );

    let missing = KeyId::generate(t(50));
    let err = store.update_key(&missing, &enable, t(50), &actor).await;
    assert!(matches!(err, Err(StoreError::NotFound(_))), "{err:?}");
}

/// Revoking is final: re-activating or disabling a revoked key fails with
/// the model's error and changes nothing; so does rotating it.
pub async fn revoked_is_final(store: &dyn KeyStore) {
    let k = create(store, "rev00001", t(0)).await;
    let revoke = KeyPatch {
        status: Some(KeyStatus::Revoked),
        ..patch()
    };
    let revoked = store
        .update_key(&k.id, &revoke, t(1), &Actor::cli())
        .await
        .expect("revoke");
    assert_eq!(revoked.status, KeyStatus::Revoked);
    let audit = all_audit(store).await;
    let last = audit.last().expect("audit row");
    assert_eq!(
        (last.action.as_str(), &last.details),
        ("revoked", &json!({"changed": ["status"]}))
    );
    let seq = store.change_seq().await.expect("seq");

    for status in [KeyStatus::Active, KeyStatus::Inactive] {
        let back = KeyPatch {
            status: Some(status),
            name: Some("sneaky".into()),
            ..patch()
        };
        let err = store.update_key(&k.id, &back, t(2), &Actor::cli()).await;
        assert!(
            matches!(err, Err(StoreError::Model(ModelError::RevokedIsFinal))),
            "{status}: {err:?}"
        );
    }
    let err = store
        .rotate_key(
            &k.id,
            "kg_test_",
            "rev00002",
            hash("n"),
            None,
            t(3),
            &Actor::cli(),
        )
        .await;
    assert!(
        matches!(err, Err(StoreError::Model(ModelError::RevokedIsFinal))),
        "{err:?}"
    );

    assert_eq!(store.get_key(&k.id).await.expect("get"), revoked);
    assert_eq!(store.change_seq().await.expect("seq"), seq);
    assert!(store.find_candidates("rev00002").await.expect("find").is_empty());
    // Revoking again is a no-op, not an error.
    store
        .update_key(&k.id, &revoke, t(4), &Actor::cli())
        .await
        .expect("revoke again");
    assert_eq!(store.change_seq().await.expect("seq"), seq);
}

/// Rotation with grace keeps the old secret findable until `grace_until`;
/// a later rotation drops secrets whose grace ended.
pub async fn rotate_with_grace(store: &dyn KeyStore) {
    let k = create(store, "old00001", t(0)).await;
    let grace = t(3_700);
    let rotated = store
        .rotate_key(
            &k.id,
            "kg_new_",
            "new00001",
            hash("new1"),
            Some(grace),
            t(100),
            &Actor::cli(),
        )
        .await
        .expect("rotate");
    assert_eq!(rotated.prefix, "kg_new_");
    assert_eq!(rotated.short_prefix, "new00001");
    assert_eq!(rotated.updated_at, t(100));
    assert_eq!(
        (rotated.name.as_str(), rotated.created_at),
        (k.name.as_str(), k.created_at)
    );
    assert_eq!(store.get_key(&k.id).await.expect("get"), rotated);

    let old = store.find_candidates("old00001").await.expect("find");
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].secret.valid_until, Some(grace));
    assert_eq!(old[0].secret.hash, hash("old00001"));
    assert_eq!(old[0].key, rotated);
    assert!(old[0].secret.usable_at(t(3_699)) && !old[0].secret.usable_at(grace));
    let new = store.find_candidates("new00001").await.expect("find");
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].secret.valid_until, None);
    assert_eq!(
        (new[0].secret.prefix.as_str(), &new[0].secret.hash),
        ("kg_new_", &hash("new1"))
    );

    let audit = all_audit(store).await;
    let last = audit.last().expect("audit row");
    assert_eq!(last.action, "rotated");
    assert_eq!(last.at, t(100));
    assert_eq!(last.details["grace_until"], json!(timestamp_text(grace)));
    assert_eq!(last.details["short_prefix"], "new00001");

    // After the grace period, rotating again (without grace) removes both
    // the expired secret and the previous current one.
    store
        .rotate_key(
            &k.id,
            "kg_new_",
            "new00002",
            hash("new2"),
            None,
            t(4_000),
            &Actor::cli(),
        )
        .await
        .expect("rotate");
    assert!(store.find_candidates("old00001").await.expect("find").is_empty());
    assert!(store.find_candidates("new00001").await.expect("find").is_empty());
    assert_eq!(store.find_candidates("new00002").await.expect("find").len(), 1);
}

/// Rotation without grace (or with a grace already over) removes the old
/// secret at once; an imported key becomes a generated one.
pub async fn rotate_without_grace(store: &dyn KeyStore) {
    let mut imported = key("imp00009", t(0));
    imported.source = KeySource::Imported;
    imported.prefix = "tc_".into();
    store
        .import_keys(vec![new_key(imported.clone())], &Actor::cli())
        .await
        .expect("import");
    let rotated = store
        .rotate_key(
            &imported.id,
            "kg_test_",
            "gen00001",
            hash("g"),
            None,
            t(10),
            &Actor::cli(),
        )
        .await
        .expect("rotate");
    assert_eq!(rotated.source, KeySource::Generated);
    assert!(store.find_candidates("imp00009").await.expect("find").is_empty());
    assert_eq!(store.find_candidates("gen00001").await.expect("find").len(), 1);
    assert!(store.imported_prefixes().await.expect("prefixes").is_empty());
    let audit = all_audit(store).await;
    assert_eq!(audit.last().expect("audit").details["grace_until"], json!(null));

    store
        .rotate_key(
            &imported.id,
            "kg_test_",
            "gen00002",
            hash("g2"),
            Some(t(20)),
            t(20),
            &Actor::cli(),
        )
        .await
        .expect("rotate");
    assert!(store.find_candidates("gen00001").await.expect("find").is_empty());

    let missing = KeyId::generate(t(30));
    let err = store
        .rotate_key(
            &missing,
            "kg_test_",
            "gen00003",
            hash("g3"),
            None,
            t(30),
            &Actor::cli(),
        )
        .await;
    assert!(matches!(err, Err(StoreError::NotFound(_))), "{err:?}");
}

/// An import is all or nothing; imported keys may share a short prefix.
pub async fn import_is_atomic(store: &dyn KeyStore) {
    let imported = |short_prefix: &str, prefix: &str, secs: i64| {
        let mut k = key(short_prefix, t(secs));
        k.source = KeySource::Imported;
        k.prefix = prefix.into();
        k
    };
    let first = imported("imp00001", "tc_", 0);
    let second = imported("imp00002", "tc_", 1);
    // The third reuses the first's id: the primary key refuses it, after two
    // rows went in.
    let third = Key {
        id: first.id.clone(),
        ..imported("imp00003", "tc_", 2)
    };
    let batch = vec![new_key(first.clone()), new_key(second.clone()), new_key(third)];
    assert!(store.import_keys(batch, &Actor::cli()).await.is_err());
    let (ids, _) = all_pages(store, &KeyFilter::default(), 10).await;
    assert!(ids.is_empty(), "nothing written: {ids:?}");
    assert!(all_audit(store).await.is_empty());
    assert_eq!(store.change_seq().await.expect("seq"), 0);
    assert!(store.imported_prefixes().await.expect("prefixes").is_empty());
    assert!(store.find_candidates("imp00001").await.expect("find").is_empty());

    assert!(
        store
            .import_keys(Vec::new(), &Actor::cli())
            .await
            .expect("empty")
            .is_empty()
    );

    let a = imported("shared99", "tc_", 3);
    let b = imported("shared99", "sk_live_", 4);
    let c = imported("imp00004", "tc_", 5);
    let stored = store
        .import_keys(
            vec![new_key(a.clone()), new_key(b.clone()), new_key(c.clone())],
            &Actor::cli(),
        )
        .await
        .expect("import");
    assert_eq!(stored, vec![a.clone(), b.clone(), c.clone()]);
    for k in [&a, &b, &c] {
        assert_eq!(&store.get_key(&k.id).await.expect("get"), k);
    }
    let shared: BTreeSet<KeyId> = store
        .find_candidates("shared99")
        .await
        .expect("find")
        .into_iter()
        .map(|c| c.key.id)
        .collect();
    assert_eq!(shared, [a.id.clone(), b.id.clone()].into_iter().collect());
    assert_eq!(
        store.imported_prefixes().await.expect("prefixes"),
        ["sk_live_", "tc_"].into_iter().map(String::from).collect()
    );
    let audit = all_audit(store).await;
    let actions: Vec<(&str, &KeyId)> = audit.iter().map(|e| (e.action.as_str(), &e.key_id)).collect();
    assert_eq!(
        actions,
        vec![("imported", &a.id), ("imported", &b.id), ("imported", &c.id)]
    );
}

/// The audit trail pages in sequence order and `change_seq` grows with every
/// change.
pub async fn audit_order_and_change_seq(store: &dyn KeyStore) {
    assert_eq!(store.change_seq().await.expect("seq"), 0);
    let empty = store
        .audit(PageRequest {
            limit: 5,
            after: None,
        })
        .await
        .expect("audit");
    assert!(empty.items.is_empty() && empty.next.is_none());

    let cli = Actor::cli();
    let admin = Actor::admin_token("t1");
    let mut seqs = vec![0];
    let a = create(store, "aud00001", t(0)).await;
    seqs.push(store.change_seq().await.expect("seq"));
    let b = store
        .create_key(new_key(key("aud00002", t(1))), &admin)
        .await
        .expect("create");
    seqs.push(store.change_seq().await.expect("seq"));
    let rename = KeyPatch {
        name: Some("n".into()),
        ..patch()
    };
    store
        .update_key(&a.id, &rename, t(2), &admin)
        .await
        .expect("update");
    seqs.push(store.change_seq().await.expect("seq"));
    let disable = KeyPatch {
        status: Some(KeyStatus::Inactive),
        ..patch()
    };
    store
        .update_key(&b.id, &disable, t(3), &cli)
        .await
        .expect("disable");
    seqs.push(store.change_seq().await.expect("seq"));
    store
        .rotate_key(&a.id, "kg_test_", "aud00003", hash("r"), None, t(4), &cli)
        .await
        .expect("rotate");
    seqs.push(store.change_seq().await.expect("seq"));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "change_seq grows: {seqs:?}");

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit(PageRequest { limit: 2, after }).await.expect("audit");
        pages.push(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
    let entries: Vec<AuditEntry> = pages.into_iter().flatten().collect();
    let summary: Vec<(&str, &KeyId, &str)> = entries
        .iter()
        .map(|e| (e.action.as_str(), &e.key_id, e.actor.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("created", &a.id, "cli"),
            ("created", &b.id, "admin:t1"),
            ("updated", &a.id, "admin:t1"),
            ("disabled", &b.id, "cli"),
            ("rotated", &a.id, "cli"),
        ]
    );
    let entry_seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(entry_seqs, seqs[1..].to_vec());
    let ats: Vec<DateTime<Utc>> = entries.iter().map(|e| e.at).collect();
    assert_eq!(ats, (0..5).map(t).collect::<Vec<_>>());

    let rest = store
        .audit(PageRequest {
            limit: 10,
            after: Some(entries[2].seq),
        })
        .await
        .expect("audit");
    assert_eq!(rest.items, entries[3..].to_vec());
    assert_eq!(rest.next, None);
}

/// Usage batches add up per outcome, keep the latest use whatever the order,
/// bump the key's counters and skip unknown keys; they are not changes.
pub async fn usage_recording(store: &dyn KeyStore) {
    let a = create(store, "use00001", t(0)).await;
    let b = create(store, "use00002", t(0)).await;
    let seq = store.change_seq().await.expect("seq");
    let delta = |id: &KeyId, outcome: &str, count: u64, at: i64| UsageDelta {
        key_id: id.clone(),
        outcome: outcome.into(),
        minute: Granularity::Minute.floor(t(at)),
        count,
        last_used_at: t(at),
    };
    let gone = KeyId::generate(t(1));
    store
        .record_usage(&[
            delta(&a.id, "ok", 3, 10),
            delta(&a.id, "rate_limited", 1, 20),
            delta(&gone, "ok", 5, 30),
        ])
        .await
        .expect("record");
    store.record_usage(&[]).await.expect("empty batch");
    let usage = store.usage(&a.id).await.expect("usage");
    assert_eq!(usage.total, 4);
    assert_eq!(usage.last_used_at, Some(t(20)));
    assert_eq!(
        usage.by_outcome.into_iter().collect::<Vec<_>>(),
        vec![("ok".to_owned(), 3), ("rate_limited".to_owned(), 1)]
    );

    // An older batch arriving late adds its counts but not its timestamp.
    store
        .record_usage(&[delta(&a.id, "ok", 2, 15)])
        .await
        .expect("record");
    let usage = store.usage(&a.id).await.expect("usage");
    assert_eq!(
        (usage.total, usage.by_outcome["ok"], usage.last_used_at),
        (6, 5, Some(t(20)))
    );
    let stored = store.get_key(&a.id).await.expect("get");
    assert_eq!((stored.request_count, stored.last_used_at), (6, Some(t(20))));

    let none = store.usage(&b.id).await.expect("usage");
    assert_eq!(
        (none.total, none.by_outcome.len(), none.last_used_at),
        (0, 0, None)
    );
    assert!(matches!(store.usage(&gone).await, Err(StoreError::NotFound(_))));

    // One batch over several keys and outcomes lands per key; a pair
    // repeated in one batch adds up.
    store
        .record_usage(&[
            delta(&b.id, "ok", 7, 40),
            delta(&a.id, "invalid_key", 1, 41),
            delta(&b.id, "forbidden", 2, 39),
            delta(&b.id, "ok", 1, 38),
        ])
        .await
        .expect("record");
    let (ua, ub) = (
        store.usage(&a.id).await.expect("a"),
        store.usage(&b.id).await.expect("b"),
    );
    assert_eq!((ua.total, ua.last_used_at), (7, Some(t(41))));
    assert_eq!((ub.total, ub.last_used_at), (10, Some(t(40))));
    assert_eq!((ub.by_outcome["ok"], ub.by_outcome["forbidden"]), (8, 2));
    assert_eq!(store.change_seq().await.expect("seq"), seq);
}

/// 2026-11-23T00:00:00Z plus `secs`: usage cases count from midnight, so
/// minute, hour and day edges are easy to read.
fn day0(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
        .single()
        .expect("a valid instant")
        + Duration::seconds(secs)
}

/// `count` requests of `id` with `outcome` at `at`, as one flush carries
/// them.
fn counted(id: &KeyId, outcome: &str, count: u64, at: DateTime<Utc>) -> UsageDelta {
    UsageDelta {
        key_id: id.clone(),
        outcome: outcome.into(),
        minute: Granularity::Minute.floor(at),
        count,
        last_used_at: at,
    }
}

/// A key owned by `owner`, created at midnight.
async fn create_owned(store: &dyn KeyStore, short_prefix: &str, owner: Option<&str>) -> Key {
    let mut k = key(short_prefix, day0(0));
    k.owner = owner.map(str::to_owned);
    store
        .create_key(new_key(k), &Actor::cli())
        .await
        .expect("create_key")
}

/// `subject`'s stored buckets of `granularity` over `[from, to)`, as
/// (seconds after midnight, outcome, count).
async fn buckets(
    store: &dyn KeyStore,
    subject: UsageSubject<'_>,
    granularity: Granularity,
    from: i64,
    to: i64,
) -> Vec<(i64, String, u64)> {
    let span = SeriesRange {
        granularity,
        from: day0(from),
        to: day0(to),
    };
    let found = store.usage_buckets(subject, span).await.expect("usage_buckets");
    found
        .into_iter()
        .map(
            |BucketCount {
                 start,
                 outcome,
                 count,
             }| ((start - day0(0)).num_seconds(), outcome, count),
        )
        .collect()
}

fn row(at: i64, outcome: &str, count: u64) -> (i64, String, u64) {
    (at, outcome.to_owned(), count)
}

/// Every flush adds its minutes to the minute, hour and day buckets of the
/// key and of its owner; buckets are half-open, read ascending, and hold
/// nothing for deleted keys or ownerless owners.
pub async fn usage_history_buckets(store: &dyn KeyStore) {
    let a = create_owned(store, "hist0001", Some("acme")).await;
    let b = create_owned(store, "hist0002", Some("acme")).await;
    let c = create_owned(store, "hist0003", None).await;
    let gone = KeyId::generate(day0(0));
    // 00:00:10 and 00:00:50 share a minute; 00:59:59 is the hour's last;
    // 01:00:00 starts the next hour; 1 day later is the next day.
    store
        .record_usage(&[
            counted(&a.id, "ok", 2, day0(10)),
            counted(&a.id, "ok", 3, day0(50)),
            counted(&a.id, "rate_limited", 1, day0(50)),
            counted(&a.id, "ok", 4, day0(3_599)),
            counted(&b.id, "ok", 5, day0(3_600)),
            counted(&c.id, "ok", 6, day0(30)),
            counted(&gone, "ok", 7, day0(30)),
        ])
        .await
        .expect("record");
    // A later flush adds to buckets already there.
    store
        .record_usage(&[
            counted(&a.id, "ok", 1, day0(20)),
            counted(&a.id, "ok", 8, day0(86_400 + 5)),
        ])
        .await
        .expect("record");

    let key_a = UsageSubject::Key(&a.id);
    assert_eq!(
        buckets(store, key_a, Granularity::Minute, 0, 3_600).await,
        vec![row(0, "ok", 6), row(0, "rate_limited", 1), row(3_540, "ok", 4)]
    );
    // [from, to): the bucket starting at `to` is not read.
    assert_eq!(
        buckets(store, key_a, Granularity::Minute, 60, 3_540).await,
        vec![]
    );
    assert_eq!(
        buckets(store, key_a, Granularity::Hour, 0, 7_200).await,
        vec![row(0, "ok", 10), row(0, "rate_limited", 1)]
    );
    assert_eq!(
        buckets(store, key_a, Granularity::Day, 0, 2 * 86_400).await,
        vec![row(0, "ok", 10), row(0, "rate_limited", 1), row(86_400, "ok", 8)]
    );
    assert_eq!(
        buckets(store, UsageSubject::Key(&b.id), Granularity::Hour, 0, 7_200).await,
        vec![row(3_600, "ok", 5)]
    );
    assert_eq!(
        buckets(store, UsageSubject::Key(&gone), Granularity::Day, 0, 86_400).await,
        vec![]
    );

    // The owner's buckets are its keys' sums; a key without an owner
    // counts for no owner.
    let acme = UsageSubject::Owner("acme");
    assert_eq!(
        buckets(store, acme, Granularity::Hour, 0, 7_200).await,
        vec![row(0, "ok", 10), row(0, "rate_limited", 1), row(3_600, "ok", 5)]
    );
    assert_eq!(
        buckets(store, acme, Granularity::Day, 0, 2 * 86_400).await,
        vec![row(0, "ok", 15), row(0, "rate_limited", 1), row(86_400, "ok", 8)]
    );
    assert_eq!(
        buckets(store, UsageSubject::Owner(""), Granularity::Day, 0, 86_400).await,
        vec![]
    );

    // All-time usage per owner, over its keys.
    let owned = store
        .owner_usage("acme")
        .await
        .expect("owner_usage")
        .expect("known owner");
    assert_eq!(owned.total, 24);
    assert_eq!(owned.by_outcome["ok"], 23);
    assert_eq!(owned.last_used_at, Some(day0(86_405)));
    assert_eq!(store.owner_usage("nobody").await.expect("owner_usage"), None);
    // Keys that change hands keep their history; the owner they left keeps
    // its own (counted while it owned them) and stays known by it.
    for id in [&a.id, &b.id] {
        let patch = KeyPatch {
            owner: Some(Some("globex".into())),
            ..KeyPatch::default()
        };
        store
            .update_key(id, &patch, day0(90_000), &Actor::cli())
            .await
            .expect("update");
    }
    let former = store
        .owner_usage("acme")
        .await
        .expect("owner_usage")
        .expect("known by its history");
    assert_eq!((former.total, former.last_used_at), (0, None));
    assert_eq!(buckets(store, acme, Granularity::Day, 0, 86_400).await.len(), 2);
    assert_eq!(
        buckets(store, UsageSubject::Owner("globex"), Granularity::Day, 0, 86_400).await,
        vec![]
    );
    assert_eq!(buckets(store, key_a, Granularity::Day, 0, 86_400).await.len(), 2);
    assert_eq!(
        store
            .owner_usage("globex")
            .await
            .expect("owner_usage")
            .expect("owner")
            .total,
        24
    );
}

/// The busiest keys of a span: by all requests or by refusals, ties by id,
/// at most `limit`.
pub async fn usage_history_ranking(store: &dyn KeyStore) {
    let a = create_owned(store, "rank0001", Some("acme")).await;
    let b = create_owned(store, "rank0002", None).await;
    let c = create_owned(store, "rank0003", Some("zeta")).await;
    store
        .record_usage(&[
            counted(&a.id, "ok", 10, day0(60)),
            counted(&b.id, "ok", 2, day0(60)),
            counted(&b.id, "invalid_key", 5, day0(120)),
            counted(&c.id, "ok", 3, day0(4_000)),
            counted(&c.id, "forbidden", 1, day0(4_000)),
            // Outside the span below.
            counted(&c.id, "ok", 100, day0(86_400)),
        ])
        .await
        .expect("record");
    let span = SeriesRange {
        granularity: Granularity::Hour,
        from: day0(0),
        to: day0(86_400),
    };
    let top = store.usage_top(span, UsageRank::Requests, 10).await.expect("top");
    let summary: Vec<(&KeyId, u64, u64)> = top.iter().map(|t| (&t.key_id, t.total, t.ok)).collect();
    assert_eq!(summary, vec![(&a.id, 10, 10), (&b.id, 7, 2), (&c.id, 4, 3)]);
    assert_eq!(
        (top[0].owner.as_deref(), top[0].name.as_str()),
        (Some("acme"), "key rank0001")
    );
    assert_eq!(top[1].owner, None);

    let refused = store.usage_top(span, UsageRank::Refused, 10).await.expect("top");
    let summary: Vec<&KeyId> = refused.iter().map(|t| &t.key_id).collect();
    assert_eq!(
        summary,
        vec![&b.id, &c.id],
        "a key refused nothing is not ranked by refusals"
    );

    let first = store.usage_top(span, UsageRank::Requests, 1).await.expect("top");
    assert_eq!(first.len(), 1);
    // Every key's buckets summed.
    assert_eq!(
        buckets(store, UsageSubject::All, Granularity::Hour, 0, 86_400).await,
        vec![
            row(0, "invalid_key", 5),
            row(0, "ok", 12),
            row(3_600, "forbidden", 1),
            row(3_600, "ok", 3)
        ]
    );
    let minutes = SeriesRange {
        granularity: Granularity::Minute,
        from: day0(60),
        to: day0(120),
    };
    let top = store
        .usage_top(minutes, UsageRank::Requests, 10)
        .await
        .expect("top");
    let summary: Vec<(&KeyId, u64)> = top.iter().map(|t| (&t.key_id, t.total)).collect();
    assert_eq!(summary, vec![(&a.id, 10), (&b.id, 2)]);
}

/// Each tier is pruned up to its own cutoff, for keys and owners alike;
/// pruning again deletes nothing (replicas may all prune).
pub async fn usage_history_pruning(store: &dyn KeyStore) {
    let a = create_owned(store, "prun0001", Some("acme")).await;
    store
        .record_usage(&[
            counted(&a.id, "ok", 1, day0(0)),
            counted(&a.id, "ok", 2, day0(7_200)),
            counted(&a.id, "ok", 4, day0(2 * 86_400)),
        ])
        .await
        .expect("record");
    let cutoffs = [
        (Granularity::Minute, day0(7_200)),
        (Granularity::Hour, day0(86_400)),
        (Granularity::Day, day0(0)),
    ];
    // Deleted: minutes 00:00 (key and owner); hours 00:00 and 02:00 (key
    // and owner); no day.
    assert_eq!(store.prune_usage(&cutoffs).await.expect("prune"), 6);
    assert_eq!(store.prune_usage(&cutoffs).await.expect("prune again"), 0);
    for subject in [UsageSubject::Key(&a.id), UsageSubject::Owner("acme")] {
        assert_eq!(
            buckets(store, subject, Granularity::Minute, 0, 3 * 86_400).await,
            vec![row(7_200, "ok", 2), row(2 * 86_400, "ok", 4)]
        );
        assert_eq!(
            buckets(store, subject, Granularity::Hour, 0, 3 * 86_400).await,
            vec![row(2 * 86_400, "ok", 4)]
        );
        assert_eq!(
            buckets(store, subject, Granularity::Day, 0, 3 * 86_400).await,
            vec![row(0, "ok", 3), row(2 * 86_400, "ok", 4)]
        );
    }
}

/// Flushes from two gateways (`a` and `b`: two stores on one database) at
/// once: every count lands once, in every tier, for keys and owners.
pub async fn concurrent_usage_flushes_add_up(a: SharedStore, b: SharedStore) {
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push(create_owned(&*a, &format!("conc{i:04}"), Some("acme")).await.id);
    }
    let keys = Arc::new(keys);
    let mut tasks = Vec::new();
    for flush in 0..20_i64 {
        let store = if flush % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let keys = Arc::clone(&keys);
        tasks.push(tokio::spawn(async move {
            // Each flush carries every key, in a different order, over two
            // minutes (one at an hour's edge).
            let mut batch: Vec<UsageDelta> = Vec::new();
            for (i, id) in keys.iter().enumerate() {
                batch.push(counted(id, "ok", 1, day0(3_599)));
                batch.push(counted(
                    id,
                    "invalid_key",
                    2,
                    day0(3_600 + i64::try_from(i).expect("small")),
                ));
            }
            if flush % 3 == 0 {
                batch.reverse();
            }
            store.record_usage(&batch).await
        }));
    }
    for task in tasks {
        task.await.expect("flush task").expect("flush");
    }
    for id in keys.iter() {
        assert_eq!(
            buckets(&*a, UsageSubject::Key(id), Granularity::Hour, 0, 7_200).await,
            vec![row(0, "ok", 20), row(3_600, "invalid_key", 40)]
        );
        assert_eq!(
            buckets(&*b, UsageSubject::Key(id), Granularity::Day, 0, 86_400).await,
            vec![row(0, "invalid_key", 40), row(0, "ok", 20)]
        );
        assert_eq!(a.usage(id).await.expect("usage").total, 60);
    }
    assert_eq!(
        buckets(&*b, UsageSubject::Owner("acme"), Granularity::Minute, 0, 7_200).await,
        vec![row(3_540, "ok", 80), row(3_600, "invalid_key", 160)]
    );
}

/// Dashboard sessions: found by their digest while live, never after
/// their expiry or their end; expired ones cleaned up.
pub async fn dashboard_sessions(store: &dyn KeyStore) {
    let console = DashboardSession {
        kind: DashboardKind::Console,
        subject: "env".into(),
        grant: json!({}),
        csrf: "c".repeat(64),
        created_at: t(0),
        expires_at: t(3_600),
    };
    let portal = DashboardSession {
        kind: DashboardKind::Portal,
        subject: "acme".into(),
        grant: json!({"scopes": ["orders:read"], "plans": ["pro"]}),
        csrf: "p".repeat(64),
        created_at: t(0),
        expires_at: t(60),
    };
    let (a, b, unknown) = ([1_u8; 32], [2_u8; 32], [3_u8; 32]);
    store.open_dashboard_session(&a, &console).await.expect("open");
    store.open_dashboard_session(&b, &portal).await.expect("open");
    assert!(
        store.open_dashboard_session(&a, &portal).await.is_err(),
        "a digest is taken once"
    );
    assert_eq!(
        store.dashboard_session(&a, t(10)).await.expect("get"),
        Some(console.clone())
    );
    assert_eq!(
        store.dashboard_session(&b, t(59)).await.expect("get"),
        Some(portal)
    );
    assert_eq!(
        store.dashboard_session(&b, t(60)).await.expect("get"),
        None,
        "expired"
    );
    assert_eq!(store.dashboard_session(&unknown, t(10)).await.expect("get"), None);
    assert_eq!(
        store
            .delete_expired_dashboard_sessions(t(60))
            .await
            .expect("cleanup"),
        1
    );
    assert!(store.end_dashboard_session(&a).await.expect("end"));
    assert!(!store.end_dashboard_session(&a).await.expect("end again"));
    assert_eq!(
        store.dashboard_session(&a, t(10)).await.expect("get"),
        None,
        "ended"
    );
}

/// Migrating a migrated store applies nothing and reports the same version.
pub async fn migrate_is_idempotent(store: &dyn KeyStore) {
    let first = store.migrate().await.expect("migrate");
    assert!(first.applied.is_empty(), "{first:?}");
    assert!(first.current > 0);
    let second = store.migrate().await.expect("migrate");
    assert_eq!(second, first);
    store.ping().await.expect("ping");
}

/// A fresh session id (`ses_<ulid>`) for `at`.
fn session_id(at: DateTime<Utc>) -> SessionId {
    SessionId::generate(at)
}

/// A new, active session of `key_id` opened at `at` (generation 0, a 30-day
/// refresh token, a 2-hour access token).
pub fn session(key_id: &KeyId, client_session: Option<&str>, at: DateTime<Utc>) -> Session {
    Session {
        id: session_id(at),
        key_id: key_id.clone(),
        client_session: client_session.map(String::from),
        scopes: ["orders:read"].into_iter().map(String::from).collect(),
        created_at: at,
        expires_at: at + Duration::days(30),
        revoked_at: None,
        revoked_reason: None,
        family_digest: TokenDigest::from_bytes([0xf0; 32]),
        refresh_digest: TokenDigest::from_bytes([0x00; 32]),
        refresh_generation: 0,
        access_jti: format!("jti-{}", at.timestamp()),
        access_issued_at: at,
        access_expires_at: at + Duration::hours(2),
    }
}

/// `current` after a rotation at `at`: the next generation, a new refresh
/// digest (distinct per `tag`), a new access token, a later expiry.
fn rotated(current: &Session, at: DateTime<Utc>, tag: u8) -> Session {
    Session {
        expires_at: at + Duration::days(30),
        refresh_digest: TokenDigest::from_bytes([tag; 32]),
        refresh_generation: current.refresh_generation + 1,
        access_jti: format!("jti-{}-{tag}", at.timestamp()),
        access_issued_at: at,
        access_expires_at: at + Duration::hours(2),
        ..current.clone()
    }
}

async fn save(
    store: &dyn KeyStore,
    record: &Session,
    expected_generation: Option<u64>,
    replaces: Option<&SessionId>,
) -> SessionWrite {
    store
        .save_session(record, expected_generation, replaces, &Actor::key(&record.key_id))
        .await
        .expect("save_session")
}

async fn change_seq(store: &dyn KeyStore) -> i64 {
    store.change_seq().await.expect("change_seq")
}

async fn stored_session(store: &dyn KeyStore, id: &SessionId) -> Option<Session> {
    store.session(id).await.expect("session")
}

/// The audit rows after `seq`, as (action, key, actor, details).
async fn audit_after(store: &dyn KeyStore, seq: i64) -> Vec<(String, KeyId, String, serde_json::Value)> {
    all_audit(store)
        .await
        .into_iter()
        .filter(|e| e.seq > seq)
        .map(|e| (e.action, e.key_id, e.actor.as_str().to_owned(), e.details))
        .collect()
}

/// Every session field survives save and read, at microsecond precision;
/// lookups by id and by key and client session; `Debug` hides digests.
pub async fn session_round_trip(store: &dyn KeyStore) {
    let k = create(store, "ses00001", t(0)).await;
    let mut full = session(&k.id, Some("device-1"), t(1));
    full.scopes = ["a", "orders:write"].into_iter().map(String::from).collect();
    full.family_digest = TokenDigest::from_bytes(std::array::from_fn(|i| u8::try_from(i).expect("small")));
    full.refresh_digest =
        TokenDigest::from_bytes(std::array::from_fn(|i| 255 - u8::try_from(i).expect("small")));
    full.refresh_generation = 7;
    assert_eq!(save(store, &full, None, None).await, SessionWrite::Written);
    assert_eq!(stored_session(store, &full.id).await, Some(full.clone()));
    let by_slot = store
        .session_for(&k.id, Some("device-1"))
        .await
        .expect("session_for");
    assert_eq!(by_slot, Some(full.clone()));
    assert_eq!(store.session_for(&k.id, None).await.expect("session_for"), None);
    assert_eq!(
        store
            .session_for(&k.id, Some("device-2"))
            .await
            .expect("session_for"),
        None
    );
    assert_eq!(stored_session(store, &session_id(t(1))).await, None);

    // The key's default session (no client session id), no scopes.
    let mut default = session(&k.id, None, t(2));
    default.scopes = BTreeSet::new();
    assert_eq!(save(store, &default, None, None).await, SessionWrite::Written);
    assert_eq!(
        store.session_for(&k.id, None).await.expect("session_for"),
        Some(default.clone())
    );
    let other = KeyId::generate(t(3));
    assert_eq!(store.session_for(&other, None).await.expect("session_for"), None);

    // A session needs its key.
    let orphan = session(&other, None, t(3));
    let err = store
        .save_session(&orphan, None, None, &Actor::cli())
        .await
        .expect_err("no such key");
    assert!(
        matches!(&err, StoreError::NotFound(id) if *id == other),
        "{err:?}"
    );

    let printed = format!("{full:?}");
    assert!(
        printed.contains("family_digest: TokenDigest([redacted])"),
        "{printed}"
    );
    assert!(
        printed.contains("refresh_digest: TokenDigest([redacted])"),
        "{printed}"
    );
    assert!(!printed.contains("[0, 1, 2"), "{printed}");
    assert!(!printed.contains("[255, 254"), "{printed}");
}

/// One session per key and client session id; `None` is one value of its
/// own (distinct from `Some("")`); a lost race is a conflict that writes
/// nothing, not an error.
pub async fn session_uniqueness_per_key_and_client_session(store: &dyn KeyStore) {
    let k = create(store, "ses00002", t(0)).await;
    let other = create(store, "ses00003", t(0)).await;
    let a = session(&k.id, None, t(1));
    assert_eq!(save(store, &a, None, None).await, SessionWrite::Written);
    let seq = store.change_seq().await.expect("seq");

    let twin = session(&k.id, None, t(2));
    assert_eq!(save(store, &twin, None, None).await, SessionWrite::Conflict);
    assert_eq!(stored_session(store, &twin.id).await, None);
    assert_eq!(
        store.change_seq().await.expect("seq"),
        seq,
        "a conflict writes nothing"
    );

    let empty = session(&k.id, Some(""), t(3));
    assert_eq!(
        save(store, &empty, None, None).await,
        SessionWrite::Written,
        "'' is not None"
    );
    let empty_twin = session(&k.id, Some(""), t(4));
    assert_eq!(save(store, &empty_twin, None, None).await, SessionWrite::Conflict);
    let named = session(&k.id, Some("x"), t(5));
    assert_eq!(save(store, &named, None, None).await, SessionWrite::Written);
    let theirs = session(&other.id, None, t(6));
    assert_eq!(
        save(store, &theirs, None, None).await,
        SessionWrite::Written,
        "per key"
    );

    assert_eq!(store.session_for(&k.id, None).await.expect("get"), Some(a));
    assert_eq!(
        store.session_for(&k.id, Some("")).await.expect("get"),
        Some(empty)
    );
    assert_eq!(
        store.session_for(&k.id, Some("x")).await.expect("get"),
        Some(named)
    );
    assert_eq!(
        store.session_for(&other.id, None).await.expect("get"),
        Some(theirs)
    );

    // Two logins for one slot at once: exactly one row, the other a conflict.
    let (first, second) = (
        session(&k.id, Some("race"), t(7)),
        session(&k.id, Some("race"), t(7)),
    );
    let (r1, r2) = tokio::join!(save(store, &first, None, None), save(store, &second, None, None));
    let mut outcomes = [r1, r2];
    outcomes.sort_by_key(|w| *w == SessionWrite::Conflict);
    assert_eq!(outcomes, [SessionWrite::Written, SessionWrite::Conflict]);
    let winner = store
        .session_for(&k.id, Some("race"))
        .await
        .expect("get")
        .expect("one row");
    let expected = if r1 == SessionWrite::Written {
        &first
    } else {
        &second
    };
    assert_eq!(&winner, expected);
}

/// An update applies only while the stored generation is the one read and
/// the row is not revoked; otherwise nothing is written. Updates leave the
/// immutable fields alone and are not audited; nonsensical calls are
/// refused.
pub async fn session_updates_are_conditional_on_the_generation(store: &dyn KeyStore) {
    let k = create(store, "ses00004", t(0)).await;
    let s0 = session(&k.id, Some("dev"), t(1));
    assert_eq!(save(store, &s0, None, None).await, SessionWrite::Written);
    let seq = store.change_seq().await.expect("seq");

    let s1 = rotated(&s0, t(10), 1);
    assert_eq!(save(store, &s1, Some(0), None).await, SessionWrite::Written);
    assert_eq!(stored_session(store, &s0.id).await, Some(s1.clone()));

    // A second redemption of generation 0 (another replica, or a replay).
    let stale = rotated(&s0, t(11), 2);
    assert_eq!(save(store, &stale, Some(0), None).await, SessionWrite::Conflict);
    assert_eq!(stored_session(store, &s0.id).await, Some(s1.clone()));

    // A login continuing the session: new family, scopes and access token;
    // id, key, client session and creation never change.
    let mut s2 = rotated(&s1, t(20), 3);
    s2.family_digest = TokenDigest::from_bytes([0xf2; 32]);
    s2.scopes = ["orders:write"].into_iter().map(String::from).collect();
    let mut sent = s2.clone();
    sent.created_at = t(19);
    sent.client_session = Some("elsewhere".into());
    assert_eq!(save(store, &sent, Some(1), None).await, SessionWrite::Written);
    assert_eq!(stored_session(store, &s0.id).await, Some(s2.clone()));
    assert_eq!(
        store.change_seq().await.expect("seq"),
        seq,
        "rotations are not audited"
    );

    // No such row: a conflict (the caller re-reads and finds none).
    let ghost = rotated(&session(&k.id, Some("ghost"), t(1)), t(2), 4);
    assert_eq!(save(store, &ghost, Some(0), None).await, SessionWrite::Conflict);
    assert_eq!(stored_session(store, &ghost.id).await, None);

    // Two redemptions of one generation at once: exactly one wins.
    let (x, y) = (rotated(&s2, t(30), 5), rotated(&s2, t(30), 6));
    let (rx, ry) = tokio::join!(save(store, &x, Some(2), None), save(store, &y, Some(2), None));
    let mut outcomes = [rx, ry];
    outcomes.sort_by_key(|w| *w == SessionWrite::Conflict);
    assert_eq!(outcomes, [SessionWrite::Written, SessionWrite::Conflict]);
    let current = stored_session(store, &s0.id).await.expect("row");
    assert_eq!(&current, if rx == SessionWrite::Written { &x } else { &y });

    // Refused: a revoked record, replaces on an update, a generation that
    // does not rise.
    let refused = |r: Result<SessionWrite, StoreError>| matches!(r, Err(StoreError::Refused(_)));
    let actor = Actor::key(&k.id);
    let mut revoked = rotated(&current, t(40), 7);
    revoked.revoked_at = Some(t(40));
    revoked.revoked_reason = Some(RevokeReason::Admin);
    assert!(refused(store.save_session(&revoked, Some(3), None, &actor).await));
    let next = rotated(&current, t(40), 8);
    assert!(refused(
        store.save_session(&next, Some(3), Some(&s0.id), &actor).await
    ));
    assert!(refused(store.save_session(&next, Some(4), None, &actor).await));
    assert!(refused(store.save_session(&current, Some(3), None, &actor).await));
    assert_eq!(stored_session(store, &s0.id).await, Some(current.clone()));

    // A revoked row is never updated.
    store
        .revoke_session(&s0.id, RevokeReason::Admin, t(41), &Actor::cli())
        .await
        .expect("revoke");
    assert_eq!(save(store, &next, Some(3), None).await, SessionWrite::Conflict);
    let after = stored_session(store, &s0.id).await.expect("row");
    assert_eq!((after.refresh_generation, after.revoked_at), (3, Some(t(41))));
}

/// An insert may replace the revoked or expired row of the same key and
/// client session, deleting it in the same transaction (audited); an active
/// row, or another slot's row, is never deleted.
pub async fn session_insert_replaces_an_unusable_row(store: &dyn KeyStore) {
    let k = create(store, "ses00005", t(0)).await;
    let old = session(&k.id, Some("dev"), t(1));
    assert_eq!(save(store, &old, None, None).await, SessionWrite::Written);

    // Still active: not replaced, and the insert conflicts.
    let seq = store.change_seq().await.expect("seq");
    let early = session(&k.id, Some("dev"), t(2));
    assert_eq!(
        save(store, &early, None, Some(&old.id)).await,
        SessionWrite::Conflict
    );
    assert_eq!(stored_session(store, &old.id).await, Some(old.clone()));
    assert_eq!(stored_session(store, &early.id).await, None);
    assert_eq!(store.change_seq().await.expect("seq"), seq);

    // Revoked: deleted with the insert; both audited, in that order.
    store
        .revoke_session(&old.id, RevokeReason::Admin, t(3), &Actor::cli())
        .await
        .expect("revoke");
    let seq = store.change_seq().await.expect("seq");
    let new = session(&k.id, Some("dev"), t(4));
    assert_eq!(
        save(store, &new, None, Some(&old.id)).await,
        SessionWrite::Written
    );
    assert_eq!(stored_session(store, &old.id).await, None);
    assert_eq!(
        store.session_for(&k.id, Some("dev")).await.expect("get"),
        Some(new.clone())
    );
    let actor = format!("key:{}", k.id);
    assert_eq!(
        audit_after(store, seq).await,
        vec![
            (
                "session_replaced".to_owned(),
                k.id.clone(),
                actor.clone(),
                json!({"session_id": old.id, "replaced_by": new.id})
            ),
            (
                "session_created".to_owned(),
                k.id.clone(),
                actor.clone(),
                json!({"session_id": new.id})
            ),
        ]
    );

    // Expired as of the new row's creation (the boundary counts).
    let mut short = session(&k.id, Some("exp"), t(5));
    short.expires_at = t(100);
    short.access_expires_at = t(50);
    assert_eq!(save(store, &short, None, None).await, SessionWrite::Written);
    let too_early = session(&k.id, Some("exp"), t(99));
    assert_eq!(
        save(store, &too_early, None, Some(&short.id)).await,
        SessionWrite::Conflict
    );
    assert_eq!(stored_session(store, &short.id).await, Some(short.clone()));
    let mut at_expiry = session(&k.id, Some("exp"), t(100));
    at_expiry.created_at = short.expires_at;
    assert_eq!(
        save(store, &at_expiry, None, Some(&short.id)).await,
        SessionWrite::Written
    );
    assert_eq!(stored_session(store, &short.id).await, None);

    // Only a row of the same key and client session is deleted: a revoked
    // row of another slot stays, and nothing is recorded as replaced.
    let elsewhere = session(&k.id, Some("other"), t(6));
    assert_eq!(save(store, &elsewhere, None, None).await, SessionWrite::Written);
    store
        .revoke_session(&elsewhere.id, RevokeReason::Admin, t(7), &Actor::cli())
        .await
        .expect("revoke");
    let seq = store.change_seq().await.expect("seq");
    let fresh = session(&k.id, Some("dev2"), t(8));
    assert_eq!(
        save(store, &fresh, None, Some(&elsewhere.id)).await,
        SessionWrite::Written
    );
    assert!(stored_session(store, &elsewhere.id).await.is_some());
    let actions: Vec<String> = audit_after(store, seq).await.into_iter().map(|e| e.0).collect();
    assert_eq!(actions, ["session_created"]);
}

/// Revocation is audited once, keeps the first instant and reason, and
/// answers `None` for an unknown id. A key's own revocation leaves its
/// sessions in place (gateways check the key as well).
pub async fn session_revocation(store: &dyn KeyStore) {
    let k = create(store, "ses00006", t(0)).await;
    let seq = store.change_seq().await.expect("seq");
    let unknown = store
        .revoke_session(&session_id(t(1)), RevokeReason::Admin, t(1), &Actor::cli())
        .await
        .expect("revoke");
    assert_eq!(unknown, None);
    assert_eq!(store.change_seq().await.expect("seq"), seq);

    let s = session(&k.id, Some("dev"), t(1));
    assert_eq!(save(store, &s, None, None).await, SessionWrite::Written);
    let seq = store.change_seq().await.expect("seq");
    let admin = Actor::admin_token("t1");
    let revoked = store
        .revoke_session(&s.id, RevokeReason::Admin, t(5), &admin)
        .await
        .expect("revoke")
        .expect("known");
    let expected = Session {
        revoked_at: Some(t(5)),
        revoked_reason: Some(RevokeReason::Admin),
        ..s.clone()
    };
    assert_eq!(revoked, expected);
    assert_eq!(stored_session(store, &s.id).await, Some(expected.clone()));
    let entries: Vec<AuditEntry> = all_audit(store)
        .await
        .into_iter()
        .filter(|e| e.seq > seq)
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (
            entries[0].action.as_str(),
            &entries[0].key_id,
            entries[0].actor.as_str()
        ),
        ("session_revoked", &k.id, "admin:t1")
    );
    assert_eq!(entries[0].details, json!({"session_id": s.id, "reason": "admin"}));
    assert_eq!(entries[0].at, t(5));

    // Again, for another reason: the first revocation stands, nothing written.
    let seq = store.change_seq().await.expect("seq");
    let again = store
        .revoke_session(&s.id, RevokeReason::RefreshReuse, t(6), &Actor::key(&k.id))
        .await
        .expect("revoke");
    assert_eq!(again, Some(expected.clone()));
    assert_eq!(store.change_seq().await.expect("seq"), seq);

    // A reuse revocation is recorded with its reason.
    let other = session(&k.id, Some("phone"), t(7));
    assert_eq!(save(store, &other, None, None).await, SessionWrite::Written);
    let reuse = store
        .revoke_session(&other.id, RevokeReason::RefreshReuse, t(8), &Actor::key(&k.id))
        .await
        .expect("revoke")
        .expect("known");
    assert_eq!(reuse.revoked_reason, Some(RevokeReason::RefreshReuse));
    let last = all_audit(store).await.pop().expect("a row");
    assert_eq!(
        last.details,
        json!({"session_id": other.id, "reason": "refresh_reuse"})
    );

    // Revoking the key does not touch its sessions' rows.
    let revoke_key = KeyPatch {
        status: Some(KeyStatus::Revoked),
        ..patch()
    };
    store
        .update_key(&k.id, &revoke_key, t(9), &Actor::cli())
        .await
        .expect("revoke key");
    assert_eq!(stored_session(store, &s.id).await, Some(expected));
    assert_eq!(stored_session(store, &other.id).await, Some(reuse));
}

/// Session inserts, replacements and revocations advance the change
/// sequence like key changes, with the session's key and id and never a
/// digest; rotations, conflicts, repeated revocations and cleanup do not.
pub async fn session_changes_on_the_change_feed(store: &dyn KeyStore) {
    let k = create(store, "ses00007", t(0)).await;
    let start = change_seq(store).await;

    let s0 = session(&k.id, None, t(1));
    assert_eq!(save(store, &s0, None, None).await, SessionWrite::Written);
    let after_insert = change_seq(store).await;
    assert!(after_insert > start);

    let s1 = rotated(&s0, t(2), 1);
    assert_eq!(save(store, &s1, Some(0), None).await, SessionWrite::Written);
    assert_eq!(save(store, &s1, Some(0), None).await, SessionWrite::Conflict);
    assert_eq!(
        change_seq(store).await,
        after_insert,
        "rotations and conflicts are not changes"
    );

    store
        .revoke_session(&s0.id, RevokeReason::RefreshReuse, t(3), &Actor::key(&k.id))
        .await
        .expect("revoke");
    let after_revoke = change_seq(store).await;
    assert!(after_revoke > after_insert);
    store
        .revoke_session(&s0.id, RevokeReason::Admin, t(4), &Actor::cli())
        .await
        .expect("revoke");
    assert_eq!(change_seq(store).await, after_revoke);

    let s2 = session(&k.id, None, t(5));
    assert_eq!(save(store, &s2, None, Some(&s0.id)).await, SessionWrite::Written);
    let after_replace = change_seq(store).await;
    assert!(after_replace > after_revoke);

    let mut gone = session(&k.id, Some("old"), t(6));
    gone.expires_at = t(7);
    gone.access_expires_at = t(7);
    assert_eq!(save(store, &gone, None, None).await, SessionWrite::Written);
    let before_cleanup = change_seq(store).await;
    assert_eq!(store.delete_expired_sessions(t(8)).await.expect("cleanup"), 1);
    assert_eq!(change_seq(store).await, before_cleanup, "cleanup is not a change");

    // What a follower of the feed reads: the session's key, the session id,
    // in commit order, and no digest.
    let entries = audit_after(store, start).await;
    let summary: Vec<(&str, &KeyId, Option<&str>)> = entries
        .iter()
        .map(|(action, key_id, _, details)| (action.as_str(), key_id, details["session_id"].as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("session_created", &k.id, Some(s0.id.as_str())),
            ("session_revoked", &k.id, Some(s0.id.as_str())),
            ("session_replaced", &k.id, Some(s0.id.as_str())),
            ("session_created", &k.id, Some(s2.id.as_str())),
            ("session_created", &k.id, Some(gone.id.as_str())),
        ]
    );
    for (_, _, _, details) in &entries {
        let fields: BTreeSet<&str> = details
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            fields.is_subset(&["session_id", "replaced_by", "reason"].into_iter().collect()),
            "{details}"
        );
    }
}

/// The typed change feed, what caches evict by, names the changed key, the
/// short prefix it gained and whether by an import; a session change names
/// the session and its key, not a key change. Pages follow the sequence.
pub async fn the_change_feed_is_typed(store: &dyn KeyStore) {
    let cli = Actor::cli();
    let made = create(store, "chg00001", t(0)).await;
    let mut outside = key("chg00002", t(1));
    outside.source = KeySource::Imported;
    outside.prefix = "tc_".into();
    let imported = store
        .import_keys(vec![new_key(outside)], &cli)
        .await
        .expect("import")
        .remove(0);
    let rename = KeyPatch {
        name: Some("renamed".into()),
        ..patch()
    };
    store
        .update_key(&made.id, &rename, t(2), &cli)
        .await
        .expect("update");
    store
        .rotate_key(&made.id, "kg_test_", "chg00003", hash("r"), None, t(3), &cli)
        .await
        .expect("rotate");
    let revoke = KeyPatch {
        status: Some(KeyStatus::Revoked),
        ..patch()
    };
    store
        .update_key(&imported.id, &revoke, t(4), &cli)
        .await
        .expect("revoke");
    let s = session(&made.id, None, t(5));
    assert_eq!(save(store, &s, None, None).await, SessionWrite::Written);
    store
        .revoke_session(&s.id, RevokeReason::Admin, t(6), &cli)
        .await
        .expect("revoke the session");

    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = store.changes(after, 2).await.expect("changes");
        assert!(page.items.len() <= 2);
        entries.extend(page.items);
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    let audit_seqs: Vec<i64> = all_audit(store).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, audit_seqs, "one change per audit row, in order");
    assert_eq!(seqs.last().copied(), Some(change_seq(store).await));
    let key_change = |id: &KeyId, added: Option<&str>, imported: bool| Change::Key {
        id: id.clone(),
        added_short_prefix: added.map(str::to_owned),
        imported,
    };
    let session_change = Change::Session {
        key_id: made.id.clone(),
        id: s.id.clone(),
    };
    let changes: Vec<Change> = entries.into_iter().map(|e| e.change).collect();
    assert_eq!(
        changes,
        vec![
            key_change(&made.id, Some("chg00001"), false),
            key_change(&imported.id, Some("chg00002"), true),
            key_change(&made.id, None, false),
            key_change(&made.id, Some("chg00003"), false),
            key_change(&imported.id, None, false),
            session_change.clone(),
            session_change,
        ]
    );
}

/// Cleanup deletes the sessions whose refresh token and access token both
/// expired strictly before the instant, revoked or not, and nothing else.
pub async fn expired_session_cleanup(store: &dyn KeyStore) {
    let k = create(store, "ses00008", t(0)).await;
    let with = |slot: &str, expires: i64, access_expires: i64| {
        let mut s = session(&k.id, Some(slot), t(1));
        s.expires_at = t(expires);
        s.access_expires_at = t(access_expires);
        s
    };
    let done = with("done", 100, 50);
    let access_left = with("access-left", 100, 150);
    let refresh_left = with("refresh-left", 200, 50);
    let revoked = with("revoked", 100, 50);
    for s in [&done, &access_left, &refresh_left, &revoked] {
        assert_eq!(save(store, s, None, None).await, SessionWrite::Written);
    }
    store
        .revoke_session(&revoked.id, RevokeReason::Admin, t(2), &Actor::cli())
        .await
        .expect("revoke");

    assert_eq!(store.delete_expired_sessions(t(50)).await.expect("cleanup"), 0);
    assert_eq!(
        store.delete_expired_sessions(t(100)).await.expect("cleanup"),
        0,
        "strictly before"
    );
    assert_eq!(store.delete_expired_sessions(t(101)).await.expect("cleanup"), 2);
    assert_eq!(stored_session(store, &done.id).await, None);
    assert_eq!(stored_session(store, &revoked.id).await, None);
    assert!(stored_session(store, &access_left.id).await.is_some());
    assert_eq!(store.delete_expired_sessions(t(151)).await.expect("cleanup"), 1);
    assert_eq!(stored_session(store, &access_left.id).await, None);
    assert_eq!(
        stored_session(store, &refresh_left.id).await,
        Some(refresh_left.clone())
    );
    assert_eq!(store.delete_expired_sessions(t(151)).await.expect("cleanup"), 0);
}
