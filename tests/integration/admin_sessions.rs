//! `DELETE /v1/sessions/{id}` through the real admin listener (SPEC §7,
//! §8): revoking a token-exchange session answers its view (never a digest
//! or a token id), sticks to the first revocation, is audited, and refuses
//! unknown and malformed ids and callers without the admin token.

use chrono::Duration;
use http::{Method, StatusCode};
use keygate::clock::Clock;
use keygate::keys::{Session, TokenDigest};
use keygate::store::{Actor, SessionWrite};
use keygate::token::SessionId;
use serde_json::Value;

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, Reply, TestGateway};

/// The admin actor of [`ADMIN_TOKEN`] (set as `KEYGATE_ADMIN_TOKEN`).
const ADMIN_ACTOR: &str = "admin:env";

async fn delete(gw: &TestGateway, id: &str, token: Option<&str>) -> Reply {
    gw.admin_send(Method::DELETE, &format!("/v1/sessions/{id}"), token, "")
        .await
}

/// The JSON body of a 200, after checking the status and headers.
fn ok(reply: &Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    reply.json()
}

/// Asserts a problem in the documented shape; returns its `detail`.
fn problem(reply: &Reply, status: StatusCode, code: &str) -> String {
    reply.problem(status, code)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Opens a session of a new key directly in the gateway's store, as a login
/// through the token exchange would: generation 0, a 30-day refresh token,
/// a 2-hour access token.
async fn open_session(gw: &TestGateway) -> Session {
    let issued = gw.key(&["can_read_order"], "pro").await;
    let now = gw.clock.now();
    let record = Session {
        id: SessionId::generate(now),
        key_id: issued.key.id.clone(),
        client_session: Some("checkout-tab".into()),
        scopes: ["can_read_order".to_owned()].into(),
        created_at: now,
        expires_at: now + Duration::days(30),
        revoked_at: None,
        revoked_reason: None,
        family_digest: TokenDigest::from_bytes([0x5a; 32]),
        refresh_digest: TokenDigest::from_bytes([0xa5; 32]),
        refresh_generation: 0,
        access_jti: "jti-not-for-admin-eyes".into(),
        access_issued_at: now,
        access_expires_at: now + Duration::hours(2),
    };
    let write = gw
        .gateway()
        .store()
        .save_session(&record, None, None, &Actor::key(&issued.key.id))
        .await
        .unwrap();
    assert_eq!(write, SessionWrite::Written);
    record
}

/// The `session_revoked` rows of the audit trail, read through the API.
async fn session_revocations(gw: &TestGateway) -> Vec<Value> {
    let reply = gw
        .admin_send(Method::GET, "/v1/audit?limit=500", Some(ADMIN_TOKEN), "")
        .await;
    let page = ok(&reply);
    assert!(page["next_cursor"].is_null());
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "session_revoked")
        .cloned()
        .collect()
}

#[tokio::test]
async fn revoking_a_session_answers_its_view_once_and_for_all() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let session = open_session(&gw).await;
    gw.clock.advance(Duration::minutes(10));
    let revoked_at = "2026-11-23T12:10:00Z";

    let first = ok(&delete(&gw, session.id.as_str(), Some(ADMIN_TOKEN)).await);
    let fields: Vec<&str> = {
        let mut names: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    };
    assert_eq!(
        fields,
        [
            "client_session",
            "created_at",
            "expires_at",
            "id",
            "key_id",
            "revoked_at",
            "revoked_reason",
            "scopes"
        ]
    );
    assert_eq!(first["id"], session.id.as_str());
    assert_eq!(first["key_id"], session.key_id.as_str());
    assert_eq!(first["client_session"], "checkout-tab");
    assert_eq!(first["scopes"], serde_json::json!(["can_read_order"]));
    assert_eq!(first["created_at"], "2026-11-23T12:00:00Z");
    assert_eq!(first["expires_at"], "2026-12-23T12:00:00Z");
    assert_eq!(first["revoked_at"], revoked_at);
    assert_eq!(first["revoked_reason"], "admin");
    assert!(!first.to_string().contains("jti-not-for-admin-eyes"));

    // The store holds the revocation, stamped by the gateway's clock.
    let stored = gw.gateway().store().session(&session.id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, Some(gw.clock.now()));

    // Again, later: same answer, the first instant and reason stand, and
    // nothing more is audited.
    gw.clock.advance(Duration::minutes(10));
    let second = ok(&delete(&gw, session.id.as_str(), Some(ADMIN_TOKEN)).await);
    assert_eq!(second, first);

    let rows = session_revocations(&gw).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];
    assert_eq!(row["key_id"], session.key_id.as_str());
    assert_eq!(row["actor"], ADMIN_ACTOR);
    assert_eq!(row["at"], revoked_at);
    assert_eq!(row["details"]["session_id"], session.id.as_str());
    assert_eq!(row["details"]["reason"], "admin");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_session_ids_are_not_found() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let session = open_session(&gw).await;

    let unknown = SessionId::generate(gw.clock.now() + Duration::seconds(1)).to_string();
    let detail = problem(
        &delete(&gw, &unknown, Some(ADMIN_TOKEN)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(detail, format!("No session has the id {unknown}."));

    let long = format!("ses_{}", "a".repeat(4_000));
    for malformed in [
        "not-a-session",
        "ses_",
        "ses_01jd3m5k7r9t2v4w6x8y0z1a2",
        "key_01jd3m5k7r9t2v4w6x8y0z1a2b",
        long.as_str(),
    ] {
        let detail = problem(
            &delete(&gw, malformed, Some(ADMIN_TOKEN)).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_eq!(
            detail, "No session has this id: session ids are 'ses_' followed by 26 letters and digits.",
            "{malformed:.40}"
        );
    }

    // None of these touched the session or the audit trail.
    let stored = gw.gateway().store().session(&session.id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, None);
    assert!(session_revocations(&gw).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn revoking_a_session_needs_the_admin_token() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let session = open_session(&gw).await;
    for token in [None, Some("not-the-admin-token")] {
        let reply = delete(&gw, session.id.as_str(), token).await;
        problem(&reply, StatusCode::UNAUTHORIZED, "admin_unauthorized");
    }
    let stored = gw.gateway().store().session(&session.id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, None, "a refused call revokes nothing");
    assert!(session_revocations(&gw).await.is_empty());
    gw.stop().await;
}
