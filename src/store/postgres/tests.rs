//! Postgres-only tests: what the conformance suite (run here too) cannot
//! check on both backends: locking and waiting, the change notifications,
//! statement timeouts, the migration table, URL handling. Those that need a
//! server are `#[ignore = "needs Postgres: …"]` (see `store::conformance`).

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::keys::RevokeReason;
use crate::keys::{KeyId, KeyPatch, KeyStatus};
use crate::store::conformance::{PgSchema, hash, key, new_key, session, t};
use crate::store::sql::{Dialect, insert_error};
use crate::store::sqlite::SqliteStore;
use crate::store::{Actor, AuditEntry, KeyStore, PageRequest, SessionWrite};

mod conformance_suite {
    use crate::store::conformance::{self, postgres_fixture};

    conformance::conformance_tests!(
        postgres_fixture,
        #[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
    );
}

/// Upper bound for a test step that must not hang (a leaked lock would).
const NO_HANG: Duration = Duration::from_secs(30);

fn latest_known() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap()
}

fn settings(url: &str) -> StoreSettings {
    StoreSettings {
        url: url.to_owned(),
        auto_migrate: true,
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    }
}

/// Waits until a session of this schema's stores waits for a lock (row,
/// transaction or advisory), polling the server; fails after [`NO_HANG`].
async fn until_a_session_waits_for_a_lock(store: &PostgresStore, schema: &PgSchema) {
    let poll = async {
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock')",
            )
            .bind(schema.name())
            .fetch_one(&store.pool)
            .await
            .unwrap();
            if waiting {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(NO_HANG, poll)
        .await
        .expect("a writer should be waiting for a lock");
}

/// Waits (up to [`NO_HANG`]) until `rx` is marked changed and returns
/// its value.
async fn next_wake(rx: &mut watch::Receiver<i64>) -> i64 {
    tokio::time::timeout(NO_HANG, rx.changed())
        .await
        .expect("a wake-up within the bound")
        .expect("the listener is running");
    *rx.borrow_and_update()
}

#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_change_through_one_handle_wakes_the_listener_of_another() {
    let schema = PgSchema::create().await;
    let writer = schema.migrated().await;
    let follower = schema.open().await;
    let mut rx = follower.change_notifications().unwrap();
    // The first wake-up says "connected: catch up".
    next_wake(&mut rx).await;
    let created = writer
        .create_key(new_key(key("notif001", t(0))), &Actor::cli())
        .await
        .unwrap();
    let seq = next_wake(&mut rx).await;
    assert_eq!(seq, writer.change_seq().await.unwrap());
    // A second subscriber shares the one listener.
    let mut second = follower.change_notifications().unwrap();
    let patch = KeyPatch {
        status: Some(KeyStatus::Inactive),
        ..KeyPatch::default()
    };
    writer
        .update_key(&created.id, &patch, t(1), &Actor::cli())
        .await
        .unwrap();
    assert!(next_wake(&mut rx).await > seq);
    assert!(next_wake(&mut second).await > seq);
}

#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_listener_whose_connection_dies_reconnects_and_wakes_followers() {
    let schema = PgSchema::create().await;
    let writer = schema.migrated().await;
    let follower = schema.open().await;
    let mut rx = follower.change_notifications().unwrap();
    next_wake(&mut rx).await;
    // End every LISTENing session of this schema (the listener's).
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(schema.name())
    .fetch_all(&writer.pool)
    .await
    .unwrap();
    assert_eq!(ended, [true], "one listener session");
    // Reconnected: the catch-up wake-up, then notifications again.
    next_wake(&mut rx).await;
    writer
        .create_key(new_key(key("notif002", t(0))), &Actor::cli())
        .await
        .unwrap();
    assert_eq!(next_wake(&mut rx).await, writer.change_seq().await.unwrap());
}

async fn all_audit(store: &PostgresStore) -> Vec<AuditEntry> {
    store
        .audit(PageRequest {
            limit: 10_000,
            after: None,
        })
        .await
        .unwrap()
        .items
}

#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn migrating_twice_applies_once_into_the_test_schema() {
    let schema = PgSchema::create().await;
    let store = schema.open().await;
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

    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY tablename")
            .bind(schema.name())
            .fetch_all(&store.pool)
            .await
            .unwrap();
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "audit_log",
            "dashboard_sessions",
            "key_secrets",
            "key_usage",
            "keys",
            "owner_usage_buckets",
            "sessions",
            "usage_buckets"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn replicas_migrating_at_once_both_succeed_and_apply_once() {
    let schema = PgSchema::create().await;
    let (a, b) = (schema.open().await, schema.open().await);
    let (ra, rb) = tokio::time::timeout(NO_HANG, async { tokio::join!(a.migrate(), b.migrate()) })
        .await
        .expect("concurrent migrations finish");
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut applied = vec![ra.applied.clone(), rb.applied.clone()];
    applied.sort();
    assert_eq!(
        applied,
        vec![
            vec![],
            vec![
                20261123000001,
                20261123000002,
                20261123000003,
                20261207000001,
                20261207000002
            ]
        ]
    );
    assert_eq!((ra.current, rb.current), (latest_known(), latest_known()));
    let k = a
        .create_key(new_key(key("mig00001", t(0))), &Actor::cli())
        .await
        .unwrap();
    assert_eq!(b.get_key(&k.id).await.unwrap(), k);
}

#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_newer_schema_is_refused_like_sqlite_and_leaves_no_lock() {
    let schema = PgSchema::create().await;
    let store = schema.migrated().await;
    let newer = 29991231000001_i64;
    let record = |version: i64| {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, 'from another keygate', TRUE, '\\x00', 0)",
        )
        .bind(version)
    };
    record(newer).execute(&store.pool).await.unwrap();
    let err = store.migrate().await.unwrap_err();
    let StoreError::Migration(message) = &err else {
        panic!("expected a migration error, got {err:?}");
    };
    assert!(message.contains("29991231000001"), "{message}");
    assert!(message.contains("newer than this keygate binary"), "{message}");
    assert!(message.contains("upgrade keygate"), "{message}");

    // Word for word what the SQLite store says.
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
    let sqlite = SqliteStore::open(&settings(&sqlite_url)).await.unwrap();
    sqlite.migrate().await.unwrap();
    let behind_its_back = sqlx::SqlitePool::connect(&sqlite_url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?, 'from a newer keygate', 1, X'00', 0)",
    )
    .bind(newer)
    .execute(&behind_its_back)
    .await
    .unwrap();
    behind_its_back.close().await;
    let sqlite_err = sqlite.migrate().await.unwrap_err();
    assert_eq!(sqlite_err.to_string(), err.to_string());

    // Another replica is refused the same way, without waiting for a
    // lock the refusal left behind; the store still serves.
    let other = schema.open().await;
    let again = tokio::time::timeout(NO_HANG, other.migrate())
        .await
        .expect("no leaked migration lock");
    assert!(matches!(again, Err(StoreError::Migration(_))), "{again:?}");
    other.ping().await.unwrap();

    // An unknown version older than the known ones: a different build.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newer)
        .execute(&store.pool)
        .await
        .unwrap();
    record(1).execute(&store.pool).await.unwrap();
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration(m) if m.contains("does not have")),
        "{err:?}"
    );
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 1")
        .execute(&store.pool)
        .await
        .unwrap();
    let report = tokio::time::timeout(NO_HANG, other.migrate())
        .await
        .expect("no leaked migration lock")
        .unwrap();
    assert!(report.applied.is_empty());
}

/// Usage flushes from two stores (two replicas) at once add up: every
/// count once, in every tier, without deadlocks between the key rows and
/// the owners' buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn concurrent_usage_flushes_add_up() {
    let schema = PgSchema::create().await;
    let first = Arc::new(schema.open().await);
    first.migrate().await.unwrap();
    let second = Arc::new(schema.open().await);
    crate::store::conformance::concurrent_usage_flushes_add_up(first, second).await;
}

/// Six fields of one key changed at once, round after round, through two
/// stores (two replicas): the row lock makes each read-modify-write see
/// the others' committed changes, so none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn concurrent_updates_of_one_key_lose_no_change() {
    let schema = PgSchema::create().await;
    let first = Arc::new(schema.open().await);
    first.migrate().await.unwrap();
    let stores = [Arc::clone(&first), Arc::new(schema.open().await)];
    let k = first
        .create_key(new_key(key("race0001", t(0))), &Actor::cli())
        .await
        .unwrap();
    const ROUNDS: i64 = 10;
    for round in 1..=ROUNDS {
        let patches = [
            KeyPatch {
                name: Some(format!("name {round}")),
                ..KeyPatch::default()
            },
            KeyPatch {
                plan: Some(format!("plan{round}")),
                ..KeyPatch::default()
            },
            KeyPatch {
                owner: Some(Some(format!("owner{round}"))),
                ..KeyPatch::default()
            },
            KeyPatch {
                scopes: Some([format!("scope:{round}")].into_iter().collect()),
                ..KeyPatch::default()
            },
            KeyPatch {
                metadata: Some(json!({ "round": round })),
                ..KeyPatch::default()
            },
            KeyPatch {
                expires_at: Some(Some(t(1_000 + round))),
                ..KeyPatch::default()
            },
        ];
        let tasks: Vec<_> = patches
            .into_iter()
            .enumerate()
            .map(|(i, patch)| {
                let store = Arc::clone(&stores[i % 2]);
                let id = k.id.clone();
                tokio::spawn(async move { store.update_key(&id, &patch, t(round), &Actor::cli()).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stored = stores[1].get_key(&k.id).await.unwrap();
        assert_eq!(stored.name, format!("name {round}"));
        assert_eq!(stored.plan, Some(format!("plan{round}")));
        assert_eq!(stored.owner, Some(format!("owner{round}")));
        assert_eq!(stored.scopes, [format!("scope:{round}")].into_iter().collect());
        assert_eq!(stored.metadata, json!({ "round": round }));
        assert_eq!(stored.expires_at, Some(t(1_000 + round)));
    }
    let audit = all_audit(&first).await;
    assert_eq!(audit.len(), 1 + 6 * usize::try_from(ROUNDS).unwrap());
    assert!(
        audit[1..]
            .iter()
            .all(|e| e.action == "updated" && e.details["changed"].as_array().map(Vec::len) == Some(1)),
        "{audit:?}"
    );
}

/// A writer that reaches its audit insert while another transaction's
/// audit row is uncommitted waits for it, so its row commits later with
/// a higher seq: no reader can see the later seq without the earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_writer_waits_for_an_uncommitted_audit_row() {
    let schema = PgSchema::create().await;
    let first = schema.migrated().await;
    let second = Arc::new(schema.open().await);
    let a = first
        .create_key(new_key(key("ordr0001", t(0))), &Actor::cli())
        .await
        .unwrap();
    let b = first
        .create_key(new_key(key("ordr0002", t(0))), &Actor::cli())
        .await
        .unwrap();
    let seen = first.change_seq().await.unwrap();

    // A transaction written as every mutating call writes, held open
    // after its audit insert.
    let mut held = first.begin_write().await.unwrap();
    lock_audit(&mut held).await.unwrap();
    PostgresStore::append_audit(&mut held, &a.id, &Actor::cli(), "updated", &json!({}), t(1))
        .await
        .unwrap();
    let held_seq: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log")
        .fetch_one(&mut *held)
        .await
        .unwrap();

    let writer = {
        let second = Arc::clone(&second);
        let id = b.id.clone();
        tokio::spawn(async move {
            let rename = KeyPatch {
                name: Some("later".into()),
                ..KeyPatch::default()
            };
            second.update_key(&id, &rename, t(2), &Actor::cli()).await
        })
    };
    until_a_session_waits_for_a_lock(&first, &schema).await;
    // Meanwhile a reader sees neither change.
    assert_eq!(first.change_seq().await.unwrap(), seen);

    held.commit().await.unwrap();
    writer.await.unwrap().unwrap();
    let tail = first
        .audit(PageRequest {
            limit: 10,
            after: Some(seen),
        })
        .await
        .unwrap()
        .items;
    let tail: Vec<(i64, &KeyId)> = tail.iter().map(|e| (e.seq, &e.key_id)).collect();
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert_eq!(tail[0], (held_seq, &a.id));
    assert_eq!(tail[1].1, &b.id);
    assert!(tail[1].0 > held_seq);
}

/// Writers on two stores change keys while a follower reads the audit
/// trail as the change feed will (`seq > last seen`): it sees every row,
/// in increasing seq order, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_follower_of_the_audit_trail_misses_nothing_under_concurrent_writers() {
    let schema = PgSchema::create().await;
    let first = Arc::new(schema.open().await);
    first.migrate().await.unwrap();
    let stores = [Arc::clone(&first), Arc::new(schema.open().await)];
    const WRITERS: usize = 6;
    const CHANGES: i64 = 20;
    let mut keys = Vec::new();
    for i in 0..WRITERS {
        let k = first
            .create_key(new_key(key(&format!("feed{i:04}"), t(0))), &Actor::cli())
            .await
            .unwrap();
        keys.push(k.id);
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let store = Arc::clone(&first);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen: Vec<i64> = Vec::new();
            let mut after = None;
            loop {
                // Read `done` before the poll: a poll that starts after
                // the writers finished sees everything they wrote.
                let last_round = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = store.audit(PageRequest { limit: 1_000, after }).await.unwrap();
                if let Some(last) = page.items.last() {
                    after = Some(last.seq);
                }
                seen.extend(page.items.iter().map(|e| e.seq));
                if last_round && page.next.is_none() {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let writers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let store = Arc::clone(&stores[i % 2]);
            let id = id.clone();
            tokio::spawn(async move {
                for n in 1..=CHANGES {
                    let patch = KeyPatch {
                        name: Some(format!("change {n}")),
                        ..KeyPatch::default()
                    };
                    store.update_key(&id, &patch, t(n), &Actor::cli()).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let followed = follower.await.unwrap();
    let all: Vec<i64> = all_audit(&first).await.into_iter().map(|e| e.seq).collect();
    assert_eq!(all.len(), WRITERS * (1 + usize::try_from(CHANGES).unwrap()));
    assert!(followed.windows(2).all(|w| w[0] < w[1]), "{followed:?}");
    assert_eq!(followed, all, "the follower skipped rows");
}

/// Two creates of one generated short prefix at once: the second's check
/// cannot see the first's uncommitted secret, so the unique index stops
/// it once the first commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_concurrent_create_of_a_taken_short_prefix_is_refused() {
    let schema = PgSchema::create().await;
    let first = schema.migrated().await;
    let second = Arc::new(schema.open().await);
    let mut held = first.begin_write().await.unwrap();
    PostgresStore::insert_key(&mut held, &new_key(key("dupe0001", t(0))))
        .await
        .unwrap();
    let twin = key("dupe0001", t(1));
    let creator = {
        let second = Arc::clone(&second);
        let twin = twin.clone();
        tokio::spawn(async move { second.create_key(new_key(twin), &Actor::cli()).await })
    };
    until_a_session_waits_for_a_lock(&first, &schema).await;
    held.commit().await.unwrap();
    let err = creator.await.unwrap();
    assert!(matches!(err, Err(StoreError::ShortPrefixTaken)), "{err:?}");
    assert!(matches!(
        first.get_key(&twin.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(first.change_seq().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_statement_past_the_statement_timeout_is_unavailable() {
    let schema = PgSchema::create().await;
    let store = schema.migrated().await;
    let mut short = schema.settings();
    short.statement_timeout = Duration::from_millis(200);
    let short = PostgresStore::open(&short).await.unwrap();
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&short.pool)
        .await
        .unwrap();
    assert_eq!(shown, "200ms");

    let k = store
        .create_key(new_key(key("slow0001", t(0))), &Actor::cli())
        .await
        .unwrap();
    let mut held = store.begin_write().await.unwrap();
    PostgresStore::fetch_key(&mut held, &k.id, PgDialect::LOCK_KEY)
        .await
        .unwrap();
    let rename = KeyPatch {
        name: Some("late".into()),
        ..KeyPatch::default()
    };
    let err = short.update_key(&k.id, &rename, t(1), &Actor::cli()).await;
    assert!(
        matches!(&err, Err(StoreError::Unavailable(m)) if m.contains("statement_timeout")),
        "{err:?}"
    );
    held.rollback().await.unwrap();
    short
        .update_key(&k.id, &rename, t(1), &Actor::cli())
        .await
        .unwrap();
    // Readers never wait for writers' row locks.
    assert_eq!(store.get_key(&k.id).await.unwrap().name, "late");
}

/// Postgres quotes a failing row in its error detail; keygate keeps only
/// the primary message, so a PHC hash never reaches an error.
#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn database_errors_never_carry_a_hash() {
    let schema = PgSchema::create().await;
    let store = schema.migrated().await;
    let k = store
        .create_key(new_key(key("hash0001", t(0))), &Actor::cli())
        .await
        .unwrap();
    let phc = hash("do-not-print-me");
    let err = sqlx::query(
        "INSERT INTO key_secrets (key_id, prefix, short_prefix, hash, source, valid_until, created_at) \
         VALUES ($1, 'kg_test_', 'hash0002', $2, 'bogus', NULL, now())",
    )
    .bind(k.id.as_str())
    .bind(phc.as_phc())
    .execute(&store.pool)
    .await
    .unwrap_err();
    let sqlx::Error::Database(db) = &err else {
        panic!("expected a database error, got {err:?}");
    };
    assert!(
        db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|e| e.detail())
            .is_some_and(|d| d.contains("do-not-print-me"))
    );
    let mapped = insert_error::<PgDialect>(err);
    let StoreError::Database(message) = &mapped else {
        panic!("expected Database, got {mapped:?}");
    };
    assert!(message.contains("SQLSTATE 23514"), "{message}");
    assert!(!mapped.to_string().contains("do-not-print-me"), "{mapped}");

    // The audit log refuses changes here too.
    for sql in [
        "UPDATE audit_log SET action = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&store.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn store_open_connects_postgres_urls_and_debug_hides_the_password() {
    let schema = PgSchema::create().await;
    let mut with_password = schema.settings();
    // Trust authentication ignores the password; it must not be printed.
    with_password.url = with_password
        .url
        .replacen("://postgres@", "://postgres:hunter2@", 1);
    let store = crate::store::open(&with_password).await.unwrap();
    store.ping().await.unwrap();
    let printed = format!("{store:?}");
    assert!(printed.starts_with("PostgresStore"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_naming_the_url_without_password() {
    let url = "postgres://app:hunter2@127.0.0.1:1/keys";
    let err = crate::store::open(&settings(url)).await.unwrap_err();
    let StoreError::Unavailable(message) = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        message.contains("postgres://app:***@127.0.0.1:1/keys"),
        "{message}"
    );
    assert!(message.contains("connection refused"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn a_bad_url_is_unavailable_and_debug_never_prints_the_password() {
    let err = PostgresStore::open(&settings("postgres://app:hunter2@db:notaport/keys"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("database.url") && !m.contains("hunter2")),
        "{err:?}"
    );
    let lazy = PostgresStore::new_lazy(&settings("postgres://app:hunter2@db:5432/keys")).unwrap();
    let printed = format!("{lazy:?}");
    assert!(printed.contains("postgres://app:***@db:5432/keys"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[test]
fn pool_and_timeout_errors_are_unavailable() {
    assert!(matches!(
        store_error(sqlx::Error::PoolTimedOut),
        StoreError::Unavailable(m) if m.contains("connect_timeout")
    ));
    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "gone");
    assert!(matches!(
        store_error(sqlx::Error::Io(reset)),
        StoreError::Unavailable(_)
    ));
}

/// Session inserts and revocations are announced like key changes.
#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn session_changes_wake_the_listener() {
    let schema = PgSchema::create().await;
    let writer = schema.migrated().await;
    let k = writer
        .create_key(new_key(key("sesnot01", t(0))), &Actor::cli())
        .await
        .unwrap();
    let follower = schema.open().await;
    let mut rx = follower.change_notifications().unwrap();
    next_wake(&mut rx).await;
    let s = session(&k.id, None, t(1));
    let written = writer
        .save_session(&s, None, None, &Actor::key(&k.id))
        .await
        .unwrap();
    assert_eq!(written, SessionWrite::Written);
    assert_eq!(next_wake(&mut rx).await, writer.change_seq().await.unwrap());
    writer
        .revoke_session(&s.id, RevokeReason::Admin, t(2), &Actor::cli())
        .await
        .unwrap();
    assert_eq!(next_wake(&mut rx).await, writer.change_seq().await.unwrap());
}

/// A login inserting while another login's insert of the same key and
/// client session is uncommitted waits for it, then conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn a_login_racing_an_uncommitted_login_conflicts() {
    let schema = PgSchema::create().await;
    let first = schema.migrated().await;
    let second = Arc::new(schema.open().await);
    let k = first
        .create_key(new_key(key("sesrac01", t(0))), &Actor::cli())
        .await
        .unwrap();
    let held_session = session(&k.id, Some("dev"), t(1));
    let mut held = first.begin_write().await.unwrap();
    assert!(
        PostgresStore::insert_session(&mut held, &held_session, 0)
            .await
            .unwrap()
    );
    let seen = first.change_seq().await.unwrap();
    let racer = session(&k.id, Some("dev"), t(1));
    let login = {
        let second = Arc::clone(&second);
        let racer = racer.clone();
        tokio::spawn(async move { second.save_session(&racer, None, None, &Actor::cli()).await })
    };
    until_a_session_waits_for_a_lock(&first, &schema).await;
    held.commit().await.unwrap();
    assert_eq!(login.await.unwrap().unwrap(), SessionWrite::Conflict);
    assert_eq!(first.session(&racer.id).await.unwrap(), None);
    assert_eq!(first.session(&held_session.id).await.unwrap(), Some(held_session));
    assert_eq!(first.change_seq().await.unwrap(), seen);
}

#[tokio::test]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn deleting_a_key_deletes_its_sessions_and_the_table_refuses_bad_rows() {
    let schema = PgSchema::create().await;
    let store = schema.migrated().await;
    let k = store
        .create_key(new_key(key("sesdel02", t(0))), &Actor::cli())
        .await
        .unwrap();
    let s = session(&k.id, None, t(1));
    let _ = store.save_session(&s, None, None, &Actor::cli()).await.unwrap();
    store
        .revoke_session(&s.id, RevokeReason::Admin, t(2), &Actor::cli())
        .await
        .unwrap();
    for (what, sql) in [
        (
            "a short digest",
            "UPDATE sessions SET refresh_digest = '\\x00'::bytea",
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
            "UPDATE sessions SET scopes = '{}'::jsonb",
        ),
    ] {
        assert!(
            sqlx::query(sql).execute(&store.pool).await.is_err(),
            "{what} was accepted"
        );
    }
    sqlx::query("DELETE FROM keys WHERE id = $1")
        .bind(k.id.as_str())
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(store.session(&s.id).await.unwrap(), None);
}
