//! Every way the admin API refuses a request (SPEC §7): without a token
//! configured, with a missing or wrong token, bad bodies, bad fields, bad
//! cursors, unknown keys and forbidden state changes — each a 4xx problem
//! with a message a person can act on, and nothing half-applied.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, Reply, TestGateway};

/// An id no key has.
const NO_SUCH_KEY: &str = "key_00000000000000000000000000";

fn problem(reply: &Reply, status: StatusCode, code: &str) -> Value {
    reply.problem(status, code)
}

/// The `(field, message)` pairs of a `validation_failed` problem.
fn fields(reply: &Reply) -> Vec<(String, String)> {
    let body = problem(reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn field_names(reply: &Reply) -> Vec<String> {
    fields(reply).into_iter().map(|(f, _)| f).collect()
}

async fn api(gw: &TestGateway, method: Method, path: &str, body: &str) -> Reply {
    gw.admin_send(method, path, Some(ADMIN_TOKEN), body).await
}

async fn new_key(gw: &TestGateway) -> String {
    let reply = api(gw, Method::POST, "/v1/keys", r#"{"name":"k","owner":"acme"}"#).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn without_a_token_configured_only_health_is_served() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    for (method, path) in [
        (Method::GET, "/v1/keys"),
        (Method::POST, "/v1/keys"),
        (Method::GET, "/v1/audit"),
        (Method::GET, "/openapi.json"),
    ] {
        for token in [None, Some("anything")] {
            let reply = gw.admin_send(method.clone(), path, token, "").await;
            let body = problem(&reply, StatusCode::UNAUTHORIZED, "admin_unauthorized");
            let detail = body["detail"].as_str().unwrap();
            assert!(
                detail.contains("KEYGATE_ADMIN_TOKEN") && detail.contains("admin.tokens"),
                "says how to configure one: {detail}"
            );
            assert_eq!(
                reply.header("www-authenticate").as_deref(),
                Some(r#"Bearer realm="keygate-admin""#)
            );
        }
    }
    let reply = gw.admin_send(Method::GET, "/v1/keys", None, "").await;
    insta::assert_json_snapshot!("admin_error_no_token_configured", reply.json());
    assert_eq!(gw.admin_get("/healthz").await.status, StatusCode::OK);
    assert_eq!(gw.admin_get("/readyz").await.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn missing_and_wrong_tokens_are_refused() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let bearer_wrong = format!("Bearer {ADMIN_TOKEN}x");
    let basic = format!("Basic {ADMIN_TOKEN}");
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("missing", &[]),
        ("wrong", &[("authorization", &bearer_wrong)]),
        ("basic", &[("authorization", &basic)]),
        ("x-api-key", &[("x-api-key", ADMIN_TOKEN)]),
    ];
    let mut seen = Vec::new();
    for (case, headers) in cases {
        let reply = gw.admin_send_with(Method::GET, "/v1/keys", headers, "").await;
        let body = problem(&reply, StatusCode::UNAUTHORIZED, "admin_unauthorized");
        assert_eq!(
            reply.header("www-authenticate").as_deref(),
            Some(r#"Bearer realm="keygate-admin""#),
            "{case}"
        );
        seen.push(json!({ "case": case, "body": body }));
    }
    insta::assert_json_snapshot!("admin_error_tokens", seen);
    // The scheme is case-insensitive; health needs no token.
    let lower = format!("bearer {ADMIN_TOKEN}");
    let reply = gw
        .admin_send_with(Method::GET, "/v1/keys", &[("authorization", &lower)], "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(gw.admin_get("/healthz").await.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn bodies_that_are_not_json_are_bad_requests() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("truncated", Some("application/json"), r#"{"name":"#),
        ("not json", Some("application/json"), "name=x"),
        ("empty", Some("application/json"), ""),
        ("no content type", None, r#"{"name":"x"}"#),
        (
            "form content type",
            Some("application/x-www-form-urlencoded"),
            "name=x",
        ),
    ];
    let mut seen = Vec::new();
    for (case, content_type, body) in cases {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        let reply = gw.admin_send_with(Method::POST, "/v1/keys", &headers, body).await;
        let problem = problem(&reply, StatusCode::BAD_REQUEST, "bad_request");
        seen.push(json!({ "case": case, "detail": problem["detail"] }));
    }
    insta::assert_json_snapshot!("admin_error_bad_bodies", seen);
    assert_eq!(list_len(&gw).await, 0, "nothing was created by a refused request");
    gw.stop().await;
}

async fn list_len(gw: &TestGateway) -> usize {
    let reply = api(gw, Method::GET, "/v1/keys", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.json()["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn bad_fields_are_named() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let cases: [(&str, Value, &[&str]); 11] = [
        (
            "unknown field",
            json!({"name": "k", "colour": "red"}),
            &["colour"],
        ),
        ("wrong type", json!({"name": 5}), &["name"]),
        (
            "wrong type in a list",
            json!({"name": "k", "scopes": ["a", 7]}),
            &["scopes[1]"],
        ),
        ("missing name", json!({"scopes": ["a"]}), &["name"]),
        (
            "unknown plan",
            json!({"name": "k", "plan": "platinum"}),
            &["plan"],
        ),
        (
            "bad scope syntax",
            json!({"name": "k", "scopes": ["ok", "not ok"]}),
            &["scopes[1]"],
        ),
        (
            "bad expiry",
            json!({"name": "k", "expires_at": "tomorrow"}),
            &["expires_at"],
        ),
        (
            "past expiry",
            json!({"name": "k", "expires_at": "2020-01-01T00:00:00Z"}),
            &["expires_at"],
        ),
        (
            "several at once",
            json!({"name": "", "scopes": ["a b", "ok", "c d"], "plan": "platinum", "metadata": [1]}),
            &["name", "scopes[0]", "scopes[2]", "plan", "metadata"],
        ),
        // Issue 18: type errors no longer hide the fields after them.
        (
            "type and rule errors together",
            json!({"name": 7, "owner": "o", "scopes": "x", "expires_at": "soon"}),
            &["name", "scopes", "expires_at"],
        ),
        (
            "type errors beside unknown and missing fields",
            json!({"owner": 1, "plan": "platinum", "colour": "red", "prefix": "no"}),
            &["colour", "owner", "name", "plan", "prefix"],
        ),
    ];
    let mut seen = Vec::new();
    for (case, body, want) in cases {
        let reply = api(&gw, Method::POST, "/v1/keys", &body.to_string()).await;
        assert_eq!(field_names(&reply), want, "{case}");
        seen.push(json!({ "case": case, "problem": reply.json() }));
    }
    insta::assert_json_snapshot!("admin_error_bad_fields", seen);
    let plan = api(&gw, Method::POST, "/v1/keys", r#"{"name":"k","plan":"platinum"}"#).await;
    let message = &fields(&plan)[0].1;
    assert!(
        message.contains("enterprise") && message.contains("pro"),
        "lists the configured plans: {message}"
    );
    assert_eq!(list_len(&gw).await, 0, "nothing was created");

    // PATCH: each bad field named, and nothing changes.
    let id = new_key(&gw).await;
    let before = api(&gw, Method::GET, &format!("/v1/keys/{id}"), "").await.json();
    let reply = api(
        &gw,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        r#"{"name":7,"status":"paused"}"#,
    )
    .await;
    problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(field_names(&reply), ["name", "status"]);
    let reply = api(
        &gw,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        r#"{"name":"renamed","scopes":"x","plan":"platinum","expires_at":[]}"#,
    )
    .await;
    assert_eq!(field_names(&reply), ["expires_at", "scopes", "plan"]);
    let after = api(&gw, Method::GET, &format!("/v1/keys/{id}"), "").await.json();
    assert_eq!(before, after, "a rejected patch changes nothing");
    gw.stop().await;
}

#[tokio::test]
async fn query_parameters_and_cursors_are_checked() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    for _ in 0..3 {
        new_key(&gw).await;
    }
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=many", "limit"),
        ("status=expired", "status"),
        ("colour=red", "colour"),
    ] {
        let reply = api(&gw, Method::GET, &format!("/v1/keys?{query}"), "").await;
        assert_eq!(field_names(&reply), [field], "{query}");
    }
    let audit = api(&gw, Method::GET, "/v1/audit?limit=1000", "").await;
    assert_eq!(field_names(&audit), ["limit"]);

    let first = api(&gw, Method::GET, "/v1/keys?limit=1&owner=acme", "")
        .await
        .json();
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (payload, mac) = cursor.split_once('.').unwrap();
    let mut flipped: Vec<char> = payload.chars().collect();
    flipped[3] = if flipped[3] == 'A' { 'B' } else { 'A' };
    let tampered_payload = format!("{}.{mac}", flipped.into_iter().collect::<String>());
    let mut seen = Vec::new();
    for (case, query) in [
        ("garbage", "limit=1&owner=acme&cursor=garbage".to_owned()),
        (
            "tampered payload",
            format!("limit=1&owner=acme&cursor={tampered_payload}"),
        ),
        ("other filter", format!("limit=1&owner=globex&cursor={cursor}")),
        ("dropped filter", format!("limit=1&cursor={cursor}")),
    ] {
        let reply = api(&gw, Method::GET, &format!("/v1/keys?{query}"), "").await;
        let body = problem(&reply, StatusCode::BAD_REQUEST, "bad_request");
        seen.push(json!({ "case": case, "detail": body["detail"] }));
    }
    let audit = api(&gw, Method::GET, &format!("/v1/audit?cursor={cursor}"), "").await;
    let body = problem(&audit, StatusCode::BAD_REQUEST, "bad_request");
    seen.push(json!({ "case": "key cursor on the audit trail", "detail": body["detail"] }));
    insta::assert_json_snapshot!("admin_error_cursors", seen);
    // The untampered cursor with its own filter still works.
    let next = api(
        &gw,
        Method::GET,
        &format!("/v1/keys?limit=1&owner=acme&cursor={cursor}"),
        "",
    )
    .await;
    assert_eq!(next.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn unknown_keys_are_not_found() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let mut seen = Vec::new();
    for (method, path, body) in [
        (Method::GET, format!("/v1/keys/{NO_SUCH_KEY}"), ""),
        (
            Method::PATCH,
            format!("/v1/keys/{NO_SUCH_KEY}"),
            r#"{"name":"x"}"#,
        ),
        (Method::POST, format!("/v1/keys/{NO_SUCH_KEY}/revoke"), ""),
        (Method::POST, format!("/v1/keys/{NO_SUCH_KEY}/rotate"), ""),
        (Method::GET, format!("/v1/keys/{NO_SUCH_KEY}/usage"), ""),
        (Method::GET, "/v1/keys/not-a-key-id".to_owned(), ""),
        (Method::GET, "/v1/nothing-here".to_owned(), ""),
    ] {
        let reply = api(&gw, method.clone(), &path, body).await;
        let body = problem(&reply, StatusCode::NOT_FOUND, "not_found");
        seen.push(json!({ "request": format!("{method} {path}"), "detail": body["detail"] }));
    }
    insta::assert_json_snapshot!("admin_error_not_found", seen);
    gw.stop().await;
}

#[tokio::test]
async fn state_changes_a_key_forbids_are_refused_whole() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let id = new_key(&gw).await;
    let path = format!("/v1/keys/{id}");

    // Status `revoked` through PATCH points at the revoke endpoint.
    let reply = api(&gw, Method::PATCH, &path, r#"{"status":"revoked"}"#).await;
    let errors = fields(&reply);
    assert_eq!(errors[0].0, "status");
    assert!(errors[0].1.contains("/revoke"), "{}", errors[0].1);
    let patch_revoked = reply.json();
    let reply = api(&gw, Method::PATCH, &path, r#"{"status":"paused"}"#).await;
    assert_eq!(field_names(&reply), ["status"]);
    let reply = api(&gw, Method::PATCH, &path, "{}").await;
    assert_eq!(field_names(&reply), ["body"]);
    let reply = api(&gw, Method::PATCH, &path, r#"{"expires_at": 5}"#).await;
    assert_eq!(field_names(&reply), ["expires_at"]);

    let revoked = api(&gw, Method::POST, &format!("{path}/revoke"), "").await;
    assert_eq!(revoked.status, StatusCode::OK);
    let before = api(&gw, Method::GET, &path, "").await.json();

    // Re-activating a revoked key conflicts, and nothing else in the patch
    // is applied.
    let reply = api(
        &gw,
        Method::PATCH,
        &path,
        r#"{"name":"renamed","status":"active"}"#,
    )
    .await;
    let reactivate = problem(&reply, StatusCode::CONFLICT, "conflict");
    assert!(
        reactivate["detail"].as_str().unwrap().contains("revoked"),
        "{reactivate}"
    );
    let reply = api(&gw, Method::PATCH, &path, r#"{"status":"inactive"}"#).await;
    problem(&reply, StatusCode::CONFLICT, "conflict");
    let reply = api(
        &gw,
        Method::POST,
        &format!("{path}/rotate"),
        r#"{"grace_period":"1h"}"#,
    )
    .await;
    let rotate = problem(&reply, StatusCode::CONFLICT, "conflict");
    assert_eq!(api(&gw, Method::GET, &path, "").await.json(), before);

    let reply = api(
        &gw,
        Method::POST,
        &format!("{path}/rotate"),
        r#"{"grace_period":"soon"}"#,
    )
    .await;
    assert_eq!(field_names(&reply), ["grace_period"]);
    let bad_grace = reply.json();

    insta::assert_json_snapshot!(
        "admin_error_state",
        json!({
            "patch status revoked": patch_revoked,
            "re-activate revoked": reactivate,
            "rotate revoked": rotate,
            "bad grace period": bad_grace,
        })
    );
    gw.stop().await;
}

/// Issue 18: a method an endpoint does not serve is a 405 in the problem
/// shape with `Allow`, on open and token-protected paths alike.
#[tokio::test]
async fn wrong_methods_are_405_problems_with_allow() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let id = new_key(&gw).await;
    let cases = [
        (Method::PUT, "/v1/keys".to_owned(), &["GET", "POST"][..]),
        (Method::DELETE, format!("/v1/keys/{id}"), &["GET", "PATCH"][..]),
        (Method::GET, format!("/v1/keys/{id}/revoke"), &["POST"][..]),
        (Method::POST, "/healthz".to_owned(), &["GET"][..]),
        (
            Method::GET,
            "/v1/sessions/ses_01jd3m5k7r9t2v4w6x8y0z1a2b".to_owned(),
            &["DELETE"][..],
        ),
    ];
    for (method, path, allowed) in cases {
        for token in [Some(ADMIN_TOKEN), None] {
            let reply = gw.admin_send(method.clone(), &path, token, "").await;
            let body = problem(&reply, StatusCode::METHOD_NOT_ALLOWED, "bad_request");
            assert_eq!(body["status"], 405, "{method} {path}");
            assert!(
                body["detail"].as_str().unwrap().contains(method.as_str()),
                "{method} {path}: {body}"
            );
            let allow = reply.header("allow").unwrap_or_default();
            for m in allowed {
                assert!(allow.contains(m), "{method} {path}: Allow: {allow}");
            }
        }
    }
    gw.stop().await;
}

/// Issue 18: a store that cannot complete an admin call (here a table
/// renamed behind the gateway's back) answers 503 `auth_unavailable`, never
/// 500 `internal_error`, and the API recovers once the store does.
#[tokio::test]
async fn a_store_failure_during_an_admin_call_is_a_503() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.db");
    let text = format!(
        "{DEFAULT_ROUTES}\n[database]\nurl = \"sqlite://{}?mode=rwc\"\n[keys]\ndefault_plan = \"pro\"\n",
        file.display()
    );
    let no_env = std::collections::BTreeMap::<String, String>::new();
    let mut config = keygate::config::load_str(&text, "test", &no_env).unwrap();
    config.admin.env_token = Some(keygate::keys::SecretString::from(ADMIN_TOKEN));
    let gw = TestGateway::start_config_on_its_database(config).await;
    new_key(&gw).await;

    let url = format!("sqlite://{}", file.display());
    let mut side = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away")
        .execute(&mut side)
        .await
        .unwrap();
    let reply = api(&gw, Method::POST, "/v1/keys", r#"{"name":"k"}"#).await;
    let body = problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable");
    assert!(!body.to_string().contains("audit_log"), "no internals: {body}");

    sqlx::query("ALTER TABLE audit_log_away RENAME TO audit_log")
        .execute(&mut side)
        .await
        .unwrap();
    let reply = api(&gw, Method::POST, "/v1/keys", r#"{"name":"k"}"#).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(list_len(&gw).await, 2, "the refused create wrote nothing");
    gw.stop().await;
}
