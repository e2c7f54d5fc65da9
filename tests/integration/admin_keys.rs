//! The admin API's key management through the real admin listener (SPEC §7):
//! the whole lifecycle, its effect on the proxy, usage, the audit trail and
//! its actors, and cursor pagination (stable under concurrent creation,
//! valid across replicas that share the configuration).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use keygate::keys::SecretString;
use keygate::manage::CreateKey;
use keygate::store::Actor;
use serde_json::{Value, json};

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, Reply, TestGateway};

/// How long a revoke through the API may take to reach the proxy here (the
/// promise is 1 s; the measured figure is printed).
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

async fn api(gw: &TestGateway, method: Method, path: &str, body: &str) -> Reply {
    gw.admin_send(method, path, Some(ADMIN_TOKEN), body).await
}

/// `body` of a 2xx answer as JSON, after checking the status.
fn ok(reply: Reply, status: StatusCode) -> Value {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    reply.json()
}

async fn create(gw: &TestGateway, body: Value) -> Value {
    ok(
        api(gw, Method::POST, "/v1/keys", &body.to_string()).await,
        StatusCode::CREATED,
    )
}

/// The ids of one listing, walking every page with `limit`.
async fn list_ids(gw: &TestGateway, query: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/keys?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = ok(api(gw, Method::GET, &path, "").await, StatusCode::OK);
        ids.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
}

/// The audit entries of one key.
async fn audit_of(gw: &TestGateway, id: &str) -> Vec<Value> {
    let page = ok(
        api(gw, Method::GET, "/v1/audit?limit=500", "").await,
        StatusCode::OK,
    );
    assert!(page["next_cursor"].is_null());
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key_id"] == id)
        .cloned()
        .collect()
}

fn is_timestamp(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test]
async fn lifecycle_through_the_admin_api() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;

    // Create: 201 with the secret, shown this once.
    let created = create(
        &gw,
        json!({
            "name": "orders reader",
            "scopes": ["can_read_order"],
            "plan": "pro",
            "owner": "acme",
            "expires_at": "30d",
            "metadata": {"team": "billing"},
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(id.starts_with("key_") && id.len() == 30, "{id}");
    assert!(secret.starts_with("kg_live_"), "{secret}");
    assert_eq!(created["short_prefix"].as_str().unwrap(), &secret[8..16]);
    assert_eq!(
        created["expires_at"], "2026-12-23T12:00:00Z",
        "30 days from the clock"
    );
    assert!(is_timestamp(&created["created_at"]) && is_timestamp(&created["updated_at"]));
    insta::assert_json_snapshot!("admin_create_key", created, {
        ".id" => "[id]",
        ".key" => "[secret]",
        ".short_prefix" => "[short_prefix]",
        ".created_at" => "[timestamp]",
        ".updated_at" => "[timestamp]",
        ".expires_at" => "[timestamp]",
    });

    // The key works on the proxy.
    gw.get("/v1/orders/1", &[("x-api-key", &secret)]).await.echoed();

    // Get: the same view, never the secret.
    let got = ok(
        api(&gw, Method::GET, &format!("/v1/keys/{id}"), "").await,
        StatusCode::OK,
    );
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("key");
    assert_eq!(got, without_secret);
    assert!(!got.to_string().contains(&secret));

    // List with filters.
    let other = create(&gw, json!({"name": "globex key", "owner": "globex"})).await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    assert_eq!(list_ids(&gw, "&owner=acme", 100).await, [id.as_str()]);
    assert_eq!(list_ids(&gw, "&owner=globex", 100).await, [other_id.as_str()]);
    let mut both = vec![id.clone(), other_id.clone()];
    both.sort();
    assert_eq!(list_ids(&gw, "", 1).await, both, "one key per page, in id order");
    assert!(list_ids(&gw, "&status=inactive", 100).await.is_empty());

    // Patch: everything at once; `null` expiry = never.
    let patched = ok(
        api(
            &gw,
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            r#"{"name":"orders writer","scopes":["can_read_order","can_write_order"],"plan":"enterprise","expires_at":null}"#,
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(patched["name"], "orders writer");
    assert_eq!(patched["scopes"], json!(["can_read_order", "can_write_order"]));
    assert_eq!(patched["plan"], "enterprise");
    assert_eq!(patched["expires_at"], Value::Null);
    assert_eq!(patched["owner"], "acme", "untouched fields stay");
    // The cached key learns its new scope through the change feed.
    let deadline = Instant::now() + PROPAGATION_BOUND;
    let reply = loop {
        let reply = gw
            .send(Method::POST, "/v1/orders", &[("x-api-key", &secret)], "{}")
            .await;
        if reply.status == StatusCode::OK || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the new scope applies: {}",
        reply.text()
    );

    // Disable, then enable again.
    let patch = |status: &str| json!({ "status": status }).to_string();
    let disabled = ok(
        api(&gw, Method::PATCH, &format!("/v1/keys/{id}"), &patch("inactive")).await,
        StatusCode::OK,
    );
    assert_eq!(disabled["status"], "inactive");
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &secret)], |r| {
            r.status == StatusCode::UNAUTHORIZED
        })
        .await;
    assert_eq!(refused.json()["code"], "key_inactive");
    assert_eq!(list_ids(&gw, "&status=inactive", 100).await, [id.as_str()]);
    api(&gw, Method::PATCH, &format!("/v1/keys/{id}"), &patch("active")).await;
    gw.eventually("/v1/orders/1", &[("x-api-key", &secret)], |r| {
        r.status == StatusCode::OK
    })
    .await
    .echoed();

    // Rotate with a grace period: both secrets work until it ends.
    let rotated = ok(
        api(
            &gw,
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            r#"{"grace_period":"24h"}"#,
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(rotated["id"], id.as_str());
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    gw.get("/v1/orders/1", &[("x-api-key", &new_secret)])
        .await
        .echoed();
    gw.get("/v1/orders/1", &[("x-api-key", &secret)]).await.echoed();

    // Revoke: the proxy refuses the key within the bound.
    let revoked_at = Instant::now();
    let revoked = ok(
        api(&gw, Method::POST, &format!("/v1/keys/{id}/revoke"), "").await,
        StatusCode::OK,
    );
    assert_eq!(revoked["status"], "revoked");
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &new_secret)], |r| {
            r.status == StatusCode::UNAUTHORIZED
        })
        .await;
    let took = revoked_at.elapsed();
    println!("revoke through the admin API refused on the proxy after {took:?}");
    assert_eq!(refused.json()["code"], "invalid_key");
    assert!(took < PROPAGATION_BOUND, "{took:?}");

    // The audit trail: every change, by the admin token.
    let trail = audit_of(&gw, &id).await;
    let actions: Vec<&str> = trail.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["created", "updated", "disabled", "enabled", "rotated", "revoked"]
    );
    assert!(trail.iter().all(|e| e["actor"] == "admin:env"), "{trail:?}");
    assert!(trail.iter().all(|e| is_timestamp(&e["at"])));
    assert!(
        trail
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()),
        "oldest first"
    );
    insta::assert_json_snapshot!("admin_audit_trail", trail, {
        "[].seq" => "[seq]",
        "[].key_id" => "[id]",
        "[].at" => "[timestamp]",
        "[].details.short_prefix" => "[short_prefix]",
    });
    gw.stop().await;
}

#[tokio::test]
async fn usage_counts_requests_by_outcome() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let created = create(
        &gw,
        json!({"name": "usage", "scopes": ["can_read_order"], "plan": "pro"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let secret = created["key"].as_str().unwrap();
    let fresh = ok(
        api(&gw, Method::GET, &format!("/v1/keys/{id}/usage"), "").await,
        StatusCode::OK,
    );
    let mut all_time = fresh.clone();
    let series = all_time.as_object_mut().unwrap().remove("series").unwrap();
    assert_eq!(
        all_time,
        json!({"key_id": id, "by_outcome": {}, "total": 0, "last_used_at": null})
    );
    assert_eq!(series["granularity"], "hour", "the last 24 h by default");
    for _ in 0..3 {
        gw.get("/v1/orders/1", &[("x-api-key", secret)]).await.echoed();
    }
    for _ in 0..2 {
        let denied = gw
            .send(Method::POST, "/v1/orders", &[("x-api-key", secret)], "{}")
            .await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
    }
    // Usage is batched: wait for a flush.
    let deadline = Instant::now() + Duration::from_secs(15);
    let usage = loop {
        let usage = ok(
            api(
                &gw,
                Method::GET,
                &format!("/v1/keys/{id}/usage?from=2026-11-23T11:00:00Z&granularity=hour"),
                "",
            )
            .await,
            StatusCode::OK,
        );
        if usage["total"] == 5 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(usage["by_outcome"], json!({"ok": 3, "insufficient_scope": 2}));
    assert!(is_timestamp(&usage["last_used_at"]));
    insta::assert_json_snapshot!("admin_key_usage", usage, {
        ".key_id" => "[id]",
        ".last_used_at" => "[timestamp]",
    });
    gw.stop().await;
}

#[tokio::test]
async fn cli_and_api_write_the_same_audit_rows() {
    let hash = keygate::keys::hash::hash_secret(
        &SecretString::from("phc-admin-token"),
        &keygate::keys::HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        },
    )
    .unwrap();
    let token_id = keygate::admin::auth::token_id(&hash);
    let gw = TestGateway::start_with(DEFAULT_ROUTES, |c| c.admin.tokens = vec![hash]).await;

    let by_api = ok(
        gw.admin_send(
            Method::POST,
            "/v1/keys",
            Some("phc-admin-token"),
            r#"{"name":"same","scopes":["a"]}"#,
        )
        .await,
        StatusCode::CREATED,
    );
    let by_cli = gw
        .manager
        .create(
            CreateKey {
                name: "same".into(),
                scopes: ["a".to_owned()].into(),
                ..CreateKey::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    for (id, actor) in [
        (by_api["id"].as_str().unwrap(), format!("admin:{token_id}")),
        (by_cli.key.id.as_str(), "cli".to_owned()),
    ] {
        let revoked = gw
            .admin_send(
                Method::POST,
                &format!("/v1/keys/{id}/revoke"),
                Some("phc-admin-token"),
                "",
            )
            .await;
        assert_eq!(revoked.status, StatusCode::OK);
        let page = gw
            .admin_send(Method::GET, "/v1/audit", Some("phc-admin-token"), "")
            .await
            .json();
        let rows: Vec<&Value> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["key_id"] == id)
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["action"], "created");
        assert_eq!(rows[0]["actor"], actor.as_str());
        assert_eq!(rows[1]["action"], "revoked");
        assert_eq!(rows[1]["actor"], format!("admin:{token_id}"));
    }
    // The same operation through either edge records the same details
    // (the same fields; the short prefixes differ).
    let page = gw
        .admin_send(Method::GET, "/v1/audit", Some("phc-admin-token"), "")
        .await
        .json();
    let details: Vec<&Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "created")
        .map(|e| &e["details"])
        .collect();
    assert_eq!(details.len(), 2);
    let fields = |d: &Value| d.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(fields(details[0]), fields(details[1]));
    assert_eq!(details[0]["source"], details[1]["source"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_is_stable_while_keys_are_created() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let mut existing = BTreeSet::new();
    for i in 0..40 {
        let key = gw
            .manager
            .create(
                CreateKey {
                    name: format!("before {i}"),
                    ..CreateKey::default()
                },
                &Actor::cli(),
            )
            .await
            .unwrap();
        existing.insert(key.key.id.as_str().to_owned());
    }
    let creating = async {
        let mut created = 0;
        for i in 0..40 {
            create(&gw, json!({ "name": format!("during {i}") })).await;
            created += 1;
        }
        created
    };
    let paging = async {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/keys?limit=3&cursor={c}"),
                None => "/v1/keys?limit=3".to_owned(),
            };
            let page = ok(api(&gw, Method::GET, &path, "").await, StatusCode::OK);
            for key in page["data"].as_array().unwrap() {
                seen.push(key["id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return seen,
            }
        }
    };
    let (created, seen) = tokio::join!(creating, paging);
    assert_eq!(created, 40);
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no key seen twice");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages follow id order");
    let missing: Vec<&String> = existing.iter().filter(|id| !distinct.contains(id)).collect();
    assert!(missing.is_empty(), "skipped: {missing:?}");
    println!(
        "paged {} keys while 40 were created ({} of them seen)",
        seen.len(),
        seen.len() - existing.len()
    );
    gw.stop().await;
}

/// A gateway on `database` whose admin token is `token`.
async fn replica(database: &str, token: &str) -> TestGateway {
    let text = format!(
        "[keys]\ndefault_plan = \"pro\"\n{}\n{DEFAULT_ROUTES}",
        crate::support::FAST_HASH
    );
    let no_env = std::collections::BTreeMap::<String, String>::new();
    let mut config = keygate::config::load_str(&text, "test", &no_env).unwrap_or_else(|e| panic!("{e}"));
    config.database.url = database.to_owned();
    config.admin.env_token = Some(SecretString::from(token));
    TestGateway::start_config_on_its_database(config).await
}

#[tokio::test]
async fn a_cursor_from_one_replica_works_on_another_with_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("shared.db").display());
    let a = replica(&database, ADMIN_TOKEN).await;
    let b = replica(&database, ADMIN_TOKEN).await;
    let elsewhere = replica(&database, "another-admin-token-entirely").await;
    for i in 0..5 {
        create(&a, json!({ "name": format!("k{i}"), "owner": "acme" })).await;
    }
    let first = ok(
        api(&a, Method::GET, "/v1/keys?owner=acme&limit=2", "").await,
        StatusCode::OK,
    );
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = ok(
        api(
            &b,
            Method::GET,
            &format!("/v1/keys?owner=acme&limit=2&cursor={cursor}"),
            "",
        )
        .await,
        StatusCode::OK,
    );
    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut walked = ids(&first);
    walked.extend(ids(&second));
    let all = list_ids(&a, "&owner=acme", 100).await;
    assert_eq!(walked, all[..4], "B resumes exactly where A stopped");

    let refused = elsewhere
        .admin_send(
            Method::GET,
            &format!("/v1/keys?owner=acme&limit=2&cursor={cursor}"),
            Some("another-admin-token-entirely"),
            "",
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text());
    assert_eq!(refused.json()["code"], "bad_request");
    for gw in [a, b, elsewhere] {
        gw.stop().await;
    }
}
