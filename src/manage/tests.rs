use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::TimeZone;

use super::*;
use crate::clock::ManualClock;
use crate::keys::format::{KeyParts, generate};
use crate::keys::{HashParams, KeyHash};
use crate::store::StoreSettings;
use crate::store::sqlite::SqliteStore;

const TINY: HashParams = HashParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

struct Fixture {
    manager: KeyManager,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        url: format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display()),
        auto_migrate: true,
        max_connections: 4,
        connect_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(5),
    };
    let store = SqliteStore::open(&settings).await.unwrap();
    store_migrate(&store).await;
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap());
    let keys = KeySettings {
        default_prefix: KeyPrefix::new("kg_test_").unwrap(),
        format: KeyFormat::Base62,
        default_plan: Some("free".into()),
        generated_hash: TINY,
        imported_hash: TINY,
    };
    let plans = ["free", "pro"].into_iter().map(String::from).collect();
    let manager = KeyManager::new(Arc::new(store), keys, plans, Arc::new(clock.clone()));
    Fixture {
        manager,
        clock,
        _dir: dir,
    }
}

async fn store_migrate(store: &SqliteStore) {
    use crate::store::KeyStore;
    store.migrate().await.unwrap();
}

fn named(name: &str) -> CreateKey {
    CreateKey {
        name: name.into(),
        ..CreateKey::default()
    }
}

/// Finds the key a presented secret authenticates, as the gateway will.
async fn authenticates(manager: &KeyManager, secret: &str) -> Option<KeyId> {
    let parts = crate::keys::format::parse_generated(secret).ok()?;
    let now = manager.now();
    manager
        .store()
        .find_candidates(&parts.short_prefix)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.secret.usable_at(now) && hash::verify_secret(secret, &c.secret.hash))
        .map(|c| c.key.id)
}

#[tokio::test]
async fn create_issues_a_checksummed_key_and_stores_only_its_hash() {
    let f = fixture().await;
    let issued = f.manager.create(named("first"), &Actor::cli()).await.unwrap();
    let plain = issued.secret.expose();
    let parts = crate::keys::format::parse_generated(plain).unwrap();
    assert_eq!(parts.prefix, "kg_test_");
    assert_eq!(issued.key.short_prefix, parts.short_prefix);
    assert_eq!(issued.key.plan.as_deref(), Some("free"));
    assert_eq!(
        authenticates(&f.manager, plain).await,
        Some(issued.key.id.clone())
    );
    let candidates = f
        .manager
        .store()
        .find_candidates(&parts.short_prefix)
        .await
        .unwrap();
    assert!(!candidates[0].secret.hash.as_phc().contains(plain));
}

#[tokio::test]
async fn a_short_prefix_collision_draws_again() {
    let f = fixture().await;
    let first = generate(&KeyPrefix::new("kg_test_").unwrap(), KeyFormat::Base62);
    let first_plain = first.secret.expose().to_owned();
    // The generator hands out the same key twice, then fresh ones.
    let draws = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&draws);
    let fixed = Mutex::new(first_plain.clone());
    let generator: KeyGenerator = Arc::new(move |prefix, format| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        if n < 2 {
            let plain = fixed.lock().unwrap().clone();
            let parts = crate::keys::format::parse_generated(&plain).unwrap();
            GeneratedKey {
                secret: SecretString::new(plain),
                parts: KeyParts { ..parts },
            }
        } else {
            generate(prefix, format)
        }
    });
    let manager = f.manager.clone().with_generator(generator);
    let a = manager.create(named("a"), &Actor::cli()).await.unwrap();
    assert_eq!(a.secret.expose(), first_plain);
    let b = manager.create(named("b"), &Actor::cli()).await.unwrap();
    assert_ne!(b.key.short_prefix, a.key.short_prefix);
    assert_eq!(
        draws.load(Ordering::SeqCst),
        3,
        "the colliding draw was retried once"
    );
}

#[tokio::test]
async fn unknown_plan_bad_scope_and_past_expiry_are_field_errors() {
    let f = fixture().await;
    let cases = [
        (
            CreateKey {
                plan: Some("gold".into()),
                ..named("x")
            },
            "plan",
        ),
        (
            CreateKey {
                scopes: ["bad scope".to_owned()].into(),
                ..named("x")
            },
            "scopes[0]",
        ),
        (
            CreateKey {
                expires_at: Some(f.manager.now() - Duration::seconds(1)),
                ..named("x")
            },
            "expires_at",
        ),
        (
            CreateKey {
                prefix: Some("bad-prefix".into()),
                ..named("x")
            },
            "prefix",
        ),
        (named(""), "name"),
        (
            CreateKey {
                metadata: Some(serde_json::json!([1])),
                ..named("x")
            },
            "metadata",
        ),
    ];
    for (req, field) in cases {
        match f.manager.create(req, &Actor::cli()).await {
            Err(ManageError::Invalid(errors)) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, [field]);
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // Every problem of a request at once, in field order.
    let all = CreateKey {
        name: String::new(),
        scopes: ["ok".to_owned(), "bad scope".to_owned()].into(),
        plan: Some("gold".into()),
        metadata: Some(serde_json::json!("x")),
        ..named("x")
    };
    match f.manager.create(all, &Actor::cli()).await {
        Err(ManageError::Invalid(errors)) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["name", "scopes[0]", "plan", "metadata"]);
        }
        other => panic!("{other:?}"),
    }
    let listed = f.manager.list_all(&KeyFilter::default()).await.unwrap();
    assert!(listed.is_empty(), "nothing was written");
}

#[tokio::test]
async fn revoke_is_final_and_unknown_ids_are_not_found() {
    let f = fixture().await;
    let issued = f.manager.create(named("k"), &Actor::cli()).await.unwrap();
    let id = issued.key.id.to_string();
    let disabled = f
        .manager
        .set_status(&id, KeyStatus::Inactive, &Actor::cli())
        .await
        .unwrap();
    assert_eq!(disabled.status, KeyStatus::Inactive);
    f.manager
        .set_status(&id, KeyStatus::Active, &Actor::cli())
        .await
        .unwrap();
    f.manager
        .set_status(&id, KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    assert!(matches!(
        f.manager.set_status(&id, KeyStatus::Active, &Actor::cli()).await,
        Err(ManageError::Conflict(_))
    ));
    assert!(matches!(
        f.manager.rotate(&id, Duration::zero(), &Actor::cli()).await,
        Err(ManageError::Conflict(_))
    ));
    assert_eq!(f.manager.get(&id).await.unwrap().status, KeyStatus::Revoked);
    let missing = KeyId::generate(f.manager.now()).to_string();
    assert!(matches!(
        f.manager.get(&missing).await,
        Err(ManageError::NotFound(_))
    ));
    assert!(matches!(
        f.manager.get("nope").await,
        Err(ManageError::Invalid(_))
    ));
}

#[tokio::test]
async fn rotation_grace_keeps_the_old_secret_until_it_ends() {
    let f = fixture().await;
    let issued = f.manager.create(named("k"), &Actor::cli()).await.unwrap();
    let id = issued.key.id.to_string();
    let old = issued.secret.expose().to_owned();
    let rotated = f
        .manager
        .rotate(&id, Duration::hours(24), &Actor::cli())
        .await
        .unwrap();
    let new = rotated.secret.expose().to_owned();
    assert_ne!(old, new);
    assert_eq!(authenticates(&f.manager, &new).await, Some(issued.key.id.clone()));
    assert_eq!(authenticates(&f.manager, &old).await, Some(issued.key.id.clone()));
    f.clock.advance(Duration::hours(24));
    assert_eq!(authenticates(&f.manager, &old).await, None, "grace over");
    assert_eq!(authenticates(&f.manager, &new).await, Some(issued.key.id.clone()));

    let again = f
        .manager
        .rotate(&id, Duration::zero(), &Actor::cli())
        .await
        .unwrap();
    assert_eq!(
        authenticates(&f.manager, &new).await,
        None,
        "no grace: old secret stops at once"
    );
    assert_eq!(
        authenticates(&f.manager, again.secret.expose()).await,
        Some(issued.key.id)
    );
}

fn no_progress(_: usize, _: usize) {}

#[tokio::test]
async fn import_is_all_or_nothing_and_names_every_bad_line() {
    let f = fixture().await;
    let file = [
        r#"{"key": "sk_live_abcdefgh0001", "name": "one", "scopes": ["read"], "plan": "pro", "owner": "acme"}"#,
        r#"{"key": "sk_live_abcdefgh0002", "plan": "gold"}"#,
        "not json",
        "",
        r#"{"key": "sk_live_abcdefgh0001"}"#,
        r#"{"key": "short"}"#,
        r#"{"key": "pk-123456789", "prefix": "pk-", "expires_at": "yesterday"}"#,
        r#"{"key": "sk_live_abcdefgh0009", "colour": "red"}"#,
    ]
    .join("\n");
    let err = f
        .manager
        .import(&file, &Actor::cli(), &no_progress)
        .await
        .unwrap_err();
    let ManageError::Import(ImportError { problems }) = err else {
        panic!("{err:?}");
    };
    let lines: Vec<usize> = problems.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![2, 3, 5, 6, 7, 8], "{problems:?}");
    assert!(problems[2].1.contains("line 1"), "{problems:?}");
    assert!(
        f.manager
            .list_all(&KeyFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn imported_keys_keep_their_shape_and_share_short_prefixes() {
    let f = fixture().await;
    let file = [
        r#"{"key": "sk_live_abcdefgh0001", "name": "one", "scopes": ["read"], "plan": "pro", "owner": "acme"}"#,
        r#"{"key": "sk_live_abcdefgh0002", "name": "two"}"#,
        r#"{"key": "pk-123456789", "prefix": "pk-", "expires_at": "2030-01-01T00:00:00Z"}"#,
    ]
    .join("\n");
    let calls = AtomicUsize::new(0);
    let progress = |done: usize, total: usize| {
        assert!(done <= total);
        calls.fetch_add(1, Ordering::Relaxed);
    };
    let keys = f.manager.import(&file, &Actor::cli(), &progress).await.unwrap();
    assert_eq!(keys.len(), 3);
    assert!(calls.load(Ordering::Relaxed) >= 1);
    assert_eq!(keys[0].prefix, "sk_live_");
    assert_eq!(keys[0].short_prefix, "abcdefgh");
    assert_eq!(keys[0].source, KeySource::Imported);
    assert_eq!(keys[2].prefix, "pk-");
    let candidates = f.manager.store().find_candidates("abcdefgh").await.unwrap();
    assert_eq!(
        candidates.len(),
        2,
        "both keys sharing the short prefix are candidates"
    );
    let matching: Vec<_> = candidates
        .iter()
        .filter(|c| hash::verify_secret("sk_live_abcdefgh0002", &c.secret.hash))
        .collect();
    assert_eq!(matching.len(), 1);
    assert_eq!(matching[0].key.name, "two");
    let hash: &KeyHash = &matching[0].secret.hash;
    assert_eq!(hash::params_of(hash), Some(TINY));
    let prefixes = f.manager.store().imported_prefixes().await.unwrap();
    assert_eq!(
        prefixes,
        ["pk-", "sk_live_"].into_iter().map(String::from).collect()
    );

    // Importing one of them again is a duplicate against the store.
    let again = r#"{"key": "sk_live_abcdefgh0002"}"#;
    let err = f
        .manager
        .import(again, &Actor::cli(), &no_progress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already in the store"), "{err}");
}

#[test]
fn status_names_are_the_statuses() {
    for name in STATUS_NAMES {
        let status: KeyStatus = name.parse().unwrap();
        assert_eq!(status.as_str(), name);
    }
    for status in [KeyStatus::Active, KeyStatus::Inactive, KeyStatus::Revoked] {
        assert!(STATUS_NAMES.contains(&status.as_str()));
    }
}

#[tokio::test]
async fn revoking_a_session_is_audited_once_and_unknown_ids_are_not_found() {
    let f = fixture().await;
    let issued = f.manager.create(named("k"), &Actor::cli()).await.unwrap();
    let opened = crate::store::conformance::session(&issued.key.id, Some("tab-1"), f.manager.now());
    let write = f
        .manager
        .store()
        .save_session(&opened, None, None, &Actor::key(&issued.key.id))
        .await
        .unwrap();
    assert_eq!(write, crate::store::SessionWrite::Written);
    let admin = Actor::admin_token("env");

    f.clock.advance(Duration::minutes(5));
    let revoked_at = f.manager.now();
    let revoked = f
        .manager
        .revoke_session(opened.id.as_str(), &admin)
        .await
        .unwrap();
    assert_eq!(revoked.id, opened.id);
    assert_eq!(revoked.revoked_at, Some(revoked_at));
    assert_eq!(revoked.revoked_reason, Some(RevokeReason::Admin));

    // Again, later and spelled in upper case: the first revocation stands.
    f.clock.advance(Duration::minutes(5));
    let shouted = format!("ses_{}", opened.id.as_str()["ses_".len()..].to_ascii_uppercase());
    let again = f.manager.revoke_session(&shouted, &admin).await.unwrap();
    assert_eq!(again.revoked_at, Some(revoked_at));
    assert_eq!(again.revoked_reason, Some(RevokeReason::Admin));

    let audit = f
        .manager
        .audit(PageRequest {
            limit: 500,
            after: None,
        })
        .await
        .unwrap();
    let rows: Vec<_> = audit
        .items
        .iter()
        .filter(|e| e.action == "session_revoked")
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].key_id, issued.key.id);
    assert_eq!(rows[0].actor, admin);
    assert_eq!(rows[0].at, revoked_at);
    assert_eq!(rows[0].details["session_id"], opened.id.as_str());
    assert_eq!(rows[0].details["reason"], "admin");

    let unknown = crate::token::SessionId::generate(f.manager.now()).to_string();
    assert!(matches!(
        f.manager.revoke_session(&unknown, &admin).await,
        Err(ManageError::SessionNotFound(id)) if id == unknown
    ));
    let huge = format!("ses_{}", "a".repeat(100_000));
    for malformed in [
        "nope",
        "",
        "ses_",
        "key_01jd3m5k7r9t2v4w6x8y0z1a2b",
        huge.as_str(),
    ] {
        match f.manager.revoke_session(malformed, &admin).await {
            Err(ManageError::Invalid(errors)) => {
                let [only] = errors.as_slice() else {
                    panic!("one problem: {errors:?}")
                };
                assert_eq!(only.field, "session_id");
                assert!(
                    only.message.len() < 100,
                    "the id is not repeated: {}",
                    only.message
                );
            }
            other => panic!("{malformed:.20}: {other:?}"),
        }
    }
}
