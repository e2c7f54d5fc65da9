//! Token exchange (SPEC §8) end to end on the real router: login, calls
//! with the access token, refresh rotation and reuse detection, the OAuth
//! client-credentials grant, revocation of keys and sessions, every bad
//! token, the JWKS, rate limits counted against the key, and (with
//! `KEYGATE_TEST_PG`) two replicas on one Postgres.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use keygate::keys::KeyStatus;
use keygate::store::Actor;
use serde_json::{Value, json};

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, Reply, TestGateway};
use crate::support::pg::Schema;

/// The HS256 signing key of these tests.
const SIGNING_KEY: &str = "integration-test-signing-key-0123456789abcdef";

fn tokens_config(extra: &str) -> String {
    format!("{DEFAULT_ROUTES}\n[tokens]\nenabled = true\nsigning_key = \"{SIGNING_KEY}\"\n{extra}")
}

async fn gateway(extra: &str) -> TestGateway {
    TestGateway::with_admin_token(&tokens_config(extra)).await
}

async fn post_json(gw: &TestGateway, path: &str, body: &Value) -> Reply {
    gw.send(
        Method::POST,
        path,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
}

async fn login(gw: &TestGateway, body: &Value) -> Reply {
    post_json(gw, "/auth/login", body).await
}

/// Logs in and returns the 200 body.
async fn login_ok(gw: &TestGateway, key: &str, session_id: Option<&str>) -> Value {
    let mut body = json!({ "api_key": key });
    if let Some(s) = session_id {
        body["session_id"] = json!(s);
    }
    let reply = login(gw, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// The access token of a token response.
fn access_token(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

/// `DELETE /v1/sessions/{sid}` on `gw`'s admin API.
async fn revoke_session(gw: &TestGateway, sid: &str) -> Reply {
    gw.admin_send(
        Method::DELETE,
        &format!("/v1/sessions/{sid}"),
        Some(ADMIN_TOKEN),
        "",
    )
    .await
}

async fn call(gw: &TestGateway, token: &str) -> Reply {
    gw.get("/v1/orders/1", &[("authorization", &format!("Bearer {token}"))])
        .await
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// An HS256 token over `header` and `payload`, signed with `secret`.
fn forge(header: &Value, payload: &Value, secret: &str) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(payload.to_string()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(mac.finalize().into_bytes()))
}

/// Sends `token` until the status is (`ok`) or is not (`!ok`) 200, within
/// 5 s; returns how long that took.
async fn until_status(gw: &TestGateway, token: &str, ok: bool, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let reply = call(gw, token).await;
        if (reply.status == StatusCode::OK) == ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: still {} after 5 s: {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_call_refresh_and_reuse_detection() {
    let gw = gateway("").await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();
    let id = issued.key.id.as_str();

    let reply = login(&gw, &json!({ "api_key": key })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        reply.header("ratelimit-limit").as_deref(),
        Some("10000"),
        "a login counts against the key's plan"
    );
    let first = reply.json();
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 7200);
    let access = access_token(&first);
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    assert!(!reply.text().contains(key), "the key is never echoed");

    // A JWT with the SPEC claims.
    let header = decode_part(&access, 0);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "JWT");
    let claims = decode_part(&access, 1);
    assert_eq!(claims["sub"], id);
    assert_eq!(claims["scope"], "can_read_order");
    assert_eq!(claims["iss"], "keygate");
    let now = gw.clock_now();
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["exp"], now + 7200);
    let sid = claims["sid"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("ses_"), "{sid}");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // The token is a credential with the key's identity; the upstream sees
    // neither the token nor the key.
    let reply = call(&gw, &access).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echoed = reply.echoed();
    assert_eq!(echoed["headers"]["x-keygate-key-id"][0], id);
    assert_eq!(echoed["headers"]["x-keygate-scopes"][0], "can_read_order");
    assert_eq!(echoed["headers"]["x-keygate-plan"][0], "pro");
    assert!(echoed["headers"].get("authorization").is_none());
    assert!(!echoed.to_string().contains(&access));
    // Scopes hold for tokens as for keys.
    let write = gw
        .send(
            Method::POST,
            "/v1/orders/1",
            &[("authorization", &format!("Bearer {access}"))],
            "{}",
        )
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(write.json()["code"], "insufficient_scope");
    // So does X-API-Key.
    let via_header = gw.get("/v1/orders/1", &[("x-api-key", &access)]).await;
    assert_eq!(via_header.status, StatusCode::OK);

    // Logging in again while the token is valid returns the same token (and
    // a new refresh token); a new session_id forces a new one.
    gw.clock.advance(chrono::Duration::seconds(30));
    let again = login_ok(&gw, key, None).await;
    assert_eq!(again["access_token"], access.as_str());
    assert_eq!(again["expires_in"], 7200 - 30);
    assert_ne!(again["refresh_token"], refresh.as_str());
    let refresh = again["refresh_token"].as_str().unwrap().to_owned();
    let other = login_ok(&gw, key, Some("phone")).await;
    assert_ne!(other["access_token"], access.as_str());
    assert_ne!(decode_part(access_token(&other).as_str(), 1)["sid"], sid.as_str());
    assert_eq!(
        login_ok(&gw, key, Some("phone")).await["access_token"],
        other["access_token"]
    );

    // Refresh: new tokens, same session; the spent token is single-use.
    let reply = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": refresh })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let rotated = reply.json();
    let access2 = access_token(&rotated);
    let refresh2 = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(access2, access);
    assert_ne!(refresh2, refresh);
    assert_eq!(decode_part(&access2, 1)["sid"], sid.as_str());
    assert_eq!(call(&gw, &access2).await.status, StatusCode::OK);
    assert_eq!(
        call(&gw, &access).await.status,
        StatusCode::OK,
        "earlier tokens live until exp"
    );

    // Presenting the spent token again is reuse: refused, and the whole
    // session is revoked, so every token of it stops working.
    let reused = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": refresh })).await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reused.json()["code"], "invalid_key");
    let gone = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": refresh2 })).await;
    assert_eq!(
        gone.status,
        StatusCode::UNAUTHORIZED,
        "the current one dies with its session"
    );
    until_status(&gw, &access2, false, "a token of the revoked session").await;
    until_status(&gw, &access, false, "an older token of the revoked session").await;
    let refused = call(&gw, &access2).await;
    assert_eq!(refused.json()["code"], "invalid_key");
    let audit = gw
        .admin_send(Method::GET, "/v1/audit?limit=100", Some(ADMIN_TOKEN), "")
        .await
        .json();
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "session_revoked"
                && e["details"]["session_id"] == sid.as_str()
                && e["details"]["reason"] == "refresh_reuse"),
        "{audit}"
    );
    // The other session is untouched; the key itself opens a new session.
    assert_eq!(
        call(&gw, access_token(&other).as_str()).await.status,
        StatusCode::OK
    );
    let fresh = login_ok(&gw, key, None).await;
    assert_ne!(decode_part(access_token(&fresh).as_str(), 1)["sid"], sid.as_str());
    assert_eq!(
        call(&gw, access_token(&fresh).as_str()).await.status,
        StatusCode::OK
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redemptions_of_one_refresh_token_are_reuse() {
    let gw = gateway("").await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let tokens = login_ok(&gw, issued.secret.expose(), None).await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let body = json!({ "refresh_token": refresh });
    let replies =
        futures_util::future::join_all((0..8).map(|_| post_json(&gw, "/auth/refresh", &body))).await;
    let ok = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    assert!(ok <= 1, "one token redeemed {ok} times");
    for r in &replies {
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
            "{} {}",
            r.status,
            r.text()
        );
    }
    if ok == 1 {
        // Everyone else presented a spent token: the session is revoked.
        let winner = replies
            .iter()
            .find(|r| r.status == StatusCode::OK)
            .unwrap()
            .json();
        if replies.len() > 1 {
            until_status(
                &gw,
                access_token(&winner).as_str(),
                false,
                "after a raced refresh",
            )
            .await;
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_revocation_disable_and_admin_session_revocation_cut_tokens_off() {
    let gw = gateway("").await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();
    let id = issued.key.id.as_str().to_owned();
    let a = login_ok(&gw, key, Some("a")).await;
    let b = login_ok(&gw, key, Some("b")).await;
    let (a, b) = (access_token(&a), access_token(&b));
    assert_eq!(call(&gw, &a).await.status, StatusCode::OK);
    assert_eq!(call(&gw, &b).await.status, StatusCode::OK);

    // DELETE /v1/sessions/{id}: that session's tokens only.
    let sid = decode_part(&a, 1)["sid"].as_str().unwrap().to_owned();
    let revoked = revoke_session(&gw, &sid).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    let took = until_status(&gw, &a, false, "a token of a revoked session").await;
    println!("admin session revocation seen after {took:?}");
    // SQLite is polled every 500 ms; the bound leaves room for a loaded
    // machine (Postgres pushes: see the replica test).
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(call(&gw, &a).await.json()["code"], "invalid_key");
    assert_eq!(call(&gw, &b).await.status, StatusCode::OK);
    // Logging in again with that session_id opens a new session.
    let a2 = login_ok(&gw, key, Some("a")).await;
    let a2 = access_token(&a2);
    assert_ne!(decode_part(&a2, 1)["sid"], sid.as_str());
    assert_eq!(call(&gw, &a2).await.status, StatusCode::OK);
    assert_eq!(
        call(&gw, &a).await.status,
        StatusCode::UNAUTHORIZED,
        "the old one stays dead"
    );

    // Disabling the key: key_inactive for its tokens; enabling: back.
    gw.manager
        .set_status(&id, KeyStatus::Inactive, &Actor::cli())
        .await
        .unwrap();
    until_status(&gw, &b, false, "a token of a disabled key").await;
    assert_eq!(call(&gw, &b).await.json()["code"], "key_inactive");
    let refused = login(&gw, &json!({ "api_key": key })).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["code"], "key_inactive");
    gw.manager
        .set_status(&id, KeyStatus::Active, &Actor::cli())
        .await
        .unwrap();
    until_status(&gw, &b, true, "a token of a re-enabled key").await;

    // Removing a scope from the key removes it from its tokens at once.
    let patch = json!({ "scopes": ["other"] }).to_string();
    let changed = gw
        .admin_send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(ADMIN_TOKEN),
            &patch,
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text());
    until_status(&gw, &b, false, "a token whose key lost the scope").await;
    assert_eq!(call(&gw, &b).await.json()["code"], "insufficient_scope");
    let patch = json!({ "scopes": ["can_read_order"] }).to_string();
    gw.admin_send(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(ADMIN_TOKEN),
        &patch,
    )
    .await;
    until_status(&gw, &b, true, "the scope is back").await;

    // Revoking the key: every token of it is invalid_key.
    gw.manager
        .set_status(&id, KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    let took = until_status(&gw, &b, false, "a token of a revoked key").await;
    println!("key revocation seen after {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(call(&gw, &b).await.json()["code"], "invalid_key");
    assert_eq!(call(&gw, &a2).await.json()["code"], "invalid_key");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_invalid_key() {
    let gw = gateway("audience = \"orders-api\"\naccess_ttl = \"10m\"").await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let good = login_ok(&gw, issued.secret.expose(), None).await;
    let good = access_token(&good);
    assert_eq!(decode_part(&good, 1)["aud"], "orders-api");
    assert_eq!(call(&gw, &good).await.status, StatusCode::OK);
    let header = decode_part(&good, 0);
    let claims = decode_part(&good, 1);
    let now = gw.clock_now();

    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = b64(with(json!({ "scope": "can_read_order can_write_order" })).to_string());
    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    let cases: Vec<(&str, String)> = vec![
        (
            "tampered payload",
            format!("{}.{tampered_payload}.{}", parts[0], parts[2]),
        ),
        ("tampered signature", {
            let (sig, last) = parts[2].split_at(parts[2].len() - 1);
            format!(
                "{}.{}.{sig}{}",
                parts[0],
                parts[1],
                if last == "A" { "Q" } else { "A" }
            )
        }),
        (
            "alg none",
            format!("{}.{}.", b64(none_header.to_string()), parts[1]),
        ),
        (
            "wrong key",
            forge(&header, &claims, "another-secret-that-is-long-enough-000000"),
        ),
        (
            "wrong audience",
            forge(&header, &with(json!({ "aud": "billing-api" })), SIGNING_KEY),
        ),
        ("no audience", {
            let mut c = claims.clone();
            c.as_object_mut().unwrap().remove("aud");
            forge(&header, &c, SIGNING_KEY)
        }),
        (
            "wrong issuer",
            forge(&header, &with(json!({ "iss": "someone-else" })), SIGNING_KEY),
        ),
        (
            "expired",
            forge(&header, &with(json!({ "exp": now - 1 })), SIGNING_KEY),
        ),
        (
            "not yet valid",
            forge(
                &header,
                &with(json!({ "iat": now + 3600, "exp": now + 7200 })),
                SIGNING_KEY,
            ),
        ),
        (
            "nbf in the future",
            forge(&header, &with(json!({ "nbf": now + 3600 })), SIGNING_KEY),
        ),
        (
            "unknown session",
            forge(
                &header,
                &with(json!({ "sid": "ses_01jd3m5k7r9t2v4w6x8y0z1a2b" })),
                SIGNING_KEY,
            ),
        ),
        (
            "other key's subject",
            forge(
                &header,
                &with(json!({ "sub": "key_01jd3m5k7r9t2v4w6x8y0z1a2b" })),
                SIGNING_KEY,
            ),
        ),
        ("unknown kid", {
            let mut h = header.clone();
            h["kid"] = json!("nope");
            forge(&h, &claims, SIGNING_KEY)
        }),
        ("malformed", "eyJhbGciOiJIUzI1NiJ9.not-json.sig".to_owned()),
        ("two dots only", "eyJ..".to_owned()),
        ("oversized", format!("eyJ{}.a.b", "A".repeat(10_000))),
    ];
    for (what, token) in &cases {
        let reply = call(&gw, token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {}", reply.text());
        assert_eq!(reply.json()["code"], "invalid_key", "{what}");
        assert!(!reply.text().contains(token.as_str()), "{what}: echoed");
    }
    // The good token still works, and expires at its instant even though
    // it is cached.
    assert_eq!(call(&gw, &good).await.status, StatusCode::OK);
    gw.clock.advance(chrono::Duration::minutes(10));
    let expired = call(&gw, &good).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.json()["code"], "invalid_key");
    gw.stop().await;
}

#[tokio::test]
async fn login_and_refresh_refuse_bad_input_in_the_configured_shape() {
    let gw = gateway(
        r#"
[errors.invalid_key]
body = '{"error":"Invalid API key"}'
status = 403
"#,
    )
    .await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();

    let bad = login(&gw, &json!({ "api_key": "kg_live_not_a_real_key" })).await;
    assert_eq!(bad.status, StatusCode::FORBIDDEN, "{}", bad.text());
    assert_eq!(bad.text(), r#"{"error":"Invalid API key"}"#);
    let wrong_type = login(&gw, &json!({ "api_key": 42 })).await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong_type.json()["code"], "bad_request");
    assert!(
        wrong_type.json()["detail"]
            .as_str()
            .unwrap()
            .contains("'api_key'")
    );
    for body in ["", "not json", "[]", "{}", r#"{"api_key":""}"#] {
        let reply = gw
            .send(
                Method::POST,
                "/auth/login",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body:?}: {}",
            reply.text()
        );
        assert_eq!(reply.json()["code"], "bad_request");
    }
    for session_id in [
        json!(""),
        json!("x".repeat(129)),
        json!("a\nb"),
        json!(7),
        json!("oauth:read"),
    ] {
        let reply = login(&gw, &json!({ "api_key": key, "session_id": session_id })).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{session_id}: {}",
            reply.text()
        );
        assert!(reply.json()["detail"].as_str().unwrap().contains("session_id"));
    }
    let huge = json!({ "api_key": key, "pad": "x".repeat(20_000) });
    let reply = login(&gw, &huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["code"], "payload_too_large");
    // A token is not an API key for the exchange.
    let tokens = login_ok(&gw, key, None).await;
    let token = &access_token(&tokens);
    let reply = login(&gw, &json!({ "api_key": token })).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "invalid_key in the configured shape"
    );
    // Wrong method: 405 with Allow.
    let reply = gw.get("/auth/login", &[]).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow").as_deref(), Some("POST"));

    // A plan without API access cannot log in.
    let free = gw.key(&["can_read_order"], "free").await;
    let reply = login(&gw, &json!({ "api_key": free.secret.expose() })).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["code"], "plan_forbidden");

    // Refresh tokens: malformed and missing ones change nothing.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    for body in [
        json!({ "refresh_token": "nonsense" }),
        json!({ "refresh_token": &refresh[..refresh.len() - 1] }),
        json!({ "refresh_token": 12 }),
    ] {
        let reply = post_json(&gw, "/auth/refresh", &body).await;
        assert!(reply.status.is_client_error(), "{body}: {}", reply.text());
    }
    for body in ["", "{}", "[1]"] {
        let reply = gw
            .send(
                Method::POST,
                "/auth/refresh",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body:?}");
    }
    let reply = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": "nonsense" })).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "invalid_key in the configured shape"
    );
    assert_eq!(reply.text(), r#"{"error":"Invalid API key"}"#);
    let reply = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": refresh })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // A holder's edit of the current token is reuse: the session goes.
    let refresh2 = reply.json()["refresh_token"].as_str().unwrap().to_owned();
    let mut edited = refresh2.clone();
    let last = edited.pop().unwrap();
    edited.push(if last == '0' { '1' } else { '0' });
    let reply = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": edited })).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": refresh2 })).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "the session was revoked");
    gw.stop().await;
}

#[tokio::test]
async fn oauth_client_credentials() {
    let gw = gateway("").await;
    let issued = gw.key(&["can_read_order", "can_write_order"], "pro").await;
    let key = issued.secret.expose();
    let id = issued.key.id.as_str();
    let form = |body: &str| {
        let gw = &gw;
        let body = body.to_owned();
        async move {
            gw.send(
                Method::POST,
                "/oauth/token",
                &[("content-type", "application/x-www-form-urlencoded")],
                &body,
            )
            .await
        }
    };
    let enc = |s: &str| -> String { serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_owned() };

    // Form credentials.
    let reply = form(&format!(
        "grant_type=client_credentials&client_id={id}&client_secret={}",
        enc(key)
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(reply.header("pragma").as_deref(), Some("no-cache"));
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 7200);
    assert_eq!(body["scope"], "can_read_order can_write_order");
    assert!(body.get("refresh_token").is_none(), "RFC 6749 §4.4.3");
    let full = access_token(&body);
    assert_eq!(call(&gw, &full).await.status, StatusCode::OK);

    // HTTP Basic, narrowed scope: the token cannot write.
    let basic = format!("Basic {}", STANDARD.encode(format!("{id}:{}", enc(key))));
    let reply = gw
        .send(
            Method::POST,
            "/oauth/token",
            &[
                ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
                ("authorization", &basic),
            ],
            "grant_type=client_credentials&scope=can_read_order",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["scope"], "can_read_order");
    let narrow = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(decode_part(&narrow, 1)["scope"], "can_read_order");
    assert_eq!(call(&gw, &narrow).await.status, StatusCode::OK);
    let write = gw
        .send(
            Method::POST,
            "/v1/orders/1",
            &[("authorization", &format!("Bearer {narrow}"))],
            "{}",
        )
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(write.json()["code"], "insufficient_scope");
    let write = gw
        .send(
            Method::POST,
            "/v1/orders/1",
            &[("authorization", &format!("Bearer {full}"))],
            "{}",
        )
        .await;
    assert_eq!(write.status, StatusCode::OK);

    // RFC 6749 errors.
    let creds = format!("client_id={id}&client_secret={}", enc(key));
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (creds.clone(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            format!("grant_type=password&{creds}"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            format!("grant_type=client_credentials&{creds}&scope=admin"),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            format!("grant_type=client_credentials&{creds}&scope=a&scope=b"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "grant_type=client_credentials".to_owned(),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            format!("grant_type=client_credentials&client_secret={}", enc(key)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=client_credentials&client_id={id}&client_secret=kg_live_wrong"),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            format!(
                "grant_type=client_credentials&client_id=key_01jd3m5k7r9t2v4w6x8y0z1a2b&client_secret={}",
                enc(key)
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            format!("grant_type=client_credentials&grant_type=client_credentials&{creds}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, status, error) in &cases {
        let reply = form(body).await;
        assert_eq!(reply.status, *status, "{body}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["error"], *error, "{body}: {json}");
        assert!(json["error_description"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
        assert!(!reply.text().contains(key), "the key is never echoed");
        if *status == StatusCode::UNAUTHORIZED {
            assert!(
                reply
                    .header("www-authenticate")
                    .unwrap()
                    .starts_with("Basic realm=")
            );
        }
    }
    // Both Basic and form credentials; JSON instead of a form; wrong method.
    let reply = gw
        .send(
            Method::POST,
            "/oauth/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &basic),
            ],
            &format!("grant_type=client_credentials&{creds}"),
        )
        .await;
    assert_eq!(reply.json()["error"], "invalid_request", "{}", reply.text());
    let reply = gw
        .send(
            Method::POST,
            "/oauth/token",
            &[("content-type", "application/json")],
            r#"{"grant_type":"client_credentials"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_request");
    let reply = gw.get("/oauth/token", &[]).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.json()["error"], "invalid_request");
    // Without an asymmetric key there is no JWKS: the path is the API's.
    let reply = gw.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["code"], "missing_credentials");
    gw.stop().await;
}

#[tokio::test]
async fn tokens_count_against_the_keys_rate_limits() {
    let gw = gateway(
        r#"
[plans.tight]
limits = [{ requests = 4, per = "1m" }]
"#,
    )
    .await;
    let issued = gw.key(&["can_read_order"], "tight").await;
    let key = issued.secret.expose();
    gw.clock.advance(chrono::Duration::seconds(10));
    let tokens = login_ok(&gw, key, None).await; // 1
    let token = &access_token(&tokens);
    // Refresh tokens forged on the real session id (no secret: it is every
    // access token's `sid`) are refused before the key is charged.
    let real = tokens["refresh_token"].as_str().unwrap();
    let (head, secret) = real.rsplit_once('_').unwrap();
    let forged = format!("{head}_{}", "0".repeat(secret.len()));
    for _ in 0..6 {
        let reply = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": forged })).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
        assert_eq!(reply.json()["code"], "invalid_key");
    }
    let by_key = gw.get("/v1/orders/1", &[("x-api-key", key)]).await; // 2
    assert_eq!(by_key.header("ratelimit-remaining").as_deref(), Some("2"));
    let by_token = call(&gw, token).await; // 3
    assert_eq!(by_token.status, StatusCode::OK);
    assert_eq!(by_token.header("ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(call(&gw, token).await.status, StatusCode::OK); // 4
    let denied = call(&gw, token).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("retry-after").as_deref(), Some("50"));
    let denied = gw.get("/v1/orders/1", &[("x-api-key", key)]).await;
    assert_eq!(
        denied.status,
        StatusCode::TOO_MANY_REQUESTS,
        "one allowance for key and tokens"
    );
    let denied = login(&gw, &json!({ "api_key": key })).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    let reply = gw
        .send(
            Method::POST,
            "/oauth/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!(
                "grant_type=client_credentials&client_id={}&client_secret={key}",
                issued.key.id
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["error"], "rate_limited");
    assert_eq!(reply.header("retry-after").as_deref(), Some("50"));
    // Usage is counted against the key.
    let usage = gw
        .admin_send(
            Method::GET,
            &format!("/v1/keys/{}/usage", issued.key.id),
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
    assert_eq!(usage.status, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn asymmetric_keys_publish_a_jwks_upstreams_can_verify_with() {
    use ed25519_dalek::Verifier as _;
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let ed_pem = ed.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
    let es = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let es_pem = {
        use p256::pkcs8::EncodePrivateKey as _;
        es.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let es_path = dir.path().join("es256.pem");
    std::fs::write(&es_path, es_pem.as_bytes()).unwrap();
    let text = format!(
        "{DEFAULT_ROUTES}\n[tokens]\nenabled = true\n\
         [[tokens.keys]]\nkid = \"ed-1\"\nalgorithm = \"EdDSA\"\nprivate_key = '''\n{}'''\n\
         [[tokens.keys]]\nkid = \"es-1\"\nalgorithm = \"ES256\"\nprivate_key_file = \"{}\"\n",
        ed_pem.as_str(),
        es_path.display()
    );
    let gw = TestGateway::start(&text).await;
    let reply = gw.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.header("cache-control").unwrap().contains("max-age"));
    let jwks = reply.json();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    assert!(!reply.text().contains("\"d\""), "no private part: {jwks}");
    let ed_jwk = keys.iter().find(|k| k["kid"] == "ed-1").unwrap();
    assert_eq!(ed_jwk["kty"], "OKP");
    assert_eq!(ed_jwk["crv"], "Ed25519");
    let es_jwk = keys.iter().find(|k| k["kid"] == "es-1").unwrap();
    assert_eq!(es_jwk["kty"], "EC");
    assert_eq!(es_jwk["crv"], "P-256");
    let reply = gw.send(Method::POST, "/.well-known/jwks.json", &[], "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow").as_deref(), Some("GET, HEAD"));
    // The problem body agrees with the status line.
    let body = reply.json();
    assert_eq!(
        (body["code"].as_str(), body["status"].as_u64()),
        (Some("bad_request"), Some(405))
    );

    // The first key signs; an upstream verifies with the published key.
    let issued = gw.key(&["can_read_order"], "pro").await;
    let tokens = login_ok(&gw, issued.secret.expose(), None).await;
    let token = &access_token(&tokens);
    let header = decode_part(token, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], "ed-1");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(ed_jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature: [u8; 64] = URL_SAFE_NO_PAD.decode(signature).unwrap().try_into().unwrap();
    public
        .verify(
            input.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("the JWKS key verifies the token");
    assert_eq!(call(&gw, token).await.status, StatusCode::OK);

    // An HS256 token made with the public key (algorithm confusion) fails.
    let confused = forge(
        &json!({ "alg": "HS256", "typ": "JWT", "kid": "ed-1" }),
        &decode_part(token, 1),
        ed_jwk["x"].as_str().unwrap(),
    );
    let reply = call(&gw, &confused).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["code"], "invalid_key");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn two_replicas_on_postgres_share_sessions_and_revocations() {
    let schema = Schema::create("kgtok").await;
    let replica = || async {
        let text = format!(
            "[keys]\ndefault_plan = \"pro\"\n{}\n{}",
            crate::support::FAST_HASH,
            tokens_config("")
        );
        let no_env = std::collections::BTreeMap::<String, String>::new();
        let mut config = keygate::config::load_str(&text, "test", &no_env).unwrap_or_else(|e| panic!("{e}"));
        config.database.url = schema.url();
        config.admin.env_token = Some(keygate::keys::SecretString::from(ADMIN_TOKEN));
        // Far beyond the bound: what arrives in time arrived by notification.
        config.authenticator.poll_interval = Duration::from_secs(60);
        TestGateway::start_config_on_its_database(config).await
    };
    let a = replica().await;
    let b = replica().await;
    let issued = a.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();

    // Logged in on A, the token works on B; B refreshes A's refresh token.
    let tokens = login_ok(&a, key, None).await;
    let access = access_token(&tokens);
    assert_eq!(call(&a, &access).await.status, StatusCode::OK);
    assert_eq!(call(&b, &access).await.status, StatusCode::OK);
    let reply = post_json(
        &b,
        "/auth/refresh",
        &json!({ "refresh_token": tokens["refresh_token"] }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let rotated = reply.json();
    let access2 = access_token(&rotated);
    // The same login on B returns the session's current token.
    assert_eq!(login_ok(&b, key, None).await["access_token"], access2.as_str());
    assert_eq!(call(&a, &access2).await.status, StatusCode::OK);

    // Revoked through B's admin API: refused on A within a second.
    let sid = decode_part(&access2, 1)["sid"].as_str().unwrap().to_owned();
    let revoked = revoke_session(&b, &sid).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    let on_a = until_status(&a, &access2, false, "session revoked through B, on A").await;
    let on_b = until_status(&b, &access2, false, "session revoked through B, on B").await;
    println!("session revocation through B: refused on A after {on_a:?}, on B after {on_b:?}");
    assert!(on_a < Duration::from_secs(1), "{on_a:?}");

    // A key revoked through A: its new session's token dies on B.
    let fresh = login_ok(&a, key, Some("second")).await;
    let fresh = access_token(&fresh);
    assert_eq!(call(&b, &fresh).await.status, StatusCode::OK);
    a.manager
        .set_status(issued.key.id.as_str(), KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    let on_b = until_status(&b, &fresh, false, "key revoked through A, on B").await;
    println!("key revocation through A: token refused on B after {on_b:?}");
    assert!(on_b < Duration::from_secs(1), "{on_b:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_binary_logs_why_a_token_failed_and_never_a_token() {
    use crate::support::{Served, serve_sandbox};

    let (sb, _echo, proxy) = serve_sandbox("debug", &tokens_config("")).await;
    let created = sb
        .run(&[
            "keys",
            "create",
            "--name",
            "tokens",
            "--scopes",
            "can_read_order",
            "--json",
        ])
        .expect(0)
        .json();
    let key = created["key"].as_str().unwrap().to_owned();
    let served = Served::start(&sb, proxy).await;
    let http = crate::support::gateway::JsonClient::new(proxy);
    let json_type = || vec![("content-type", "application/json".to_owned())];
    let (status, tokens) = http
        .send(
            Method::POST,
            "/auth/login",
            json_type(),
            json!({ "api_key": key }).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = access_token(&tokens);
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let (status, _) = http
        .send(Method::GET, "/v1/orders/1", bearer(&access), String::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    let forged = forge(
        &decode_part(&access, 0),
        &decode_part(&access, 1),
        "not-the-signing-key-but-long-enough-0000",
    );
    let (status, _) = http
        .send(Method::GET, "/v1/orders/1", bearer(&forged), String::new())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut claims = decode_part(&access, 1);
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() - 1);
    let expired = forge(&decode_part(&access, 0), &claims, SIGNING_KEY);
    let (status, _) = http
        .send(Method::GET, "/v1/orders/1", bearer(&expired), String::new())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, rotated) = http
        .send(
            Method::POST,
            "/auth/refresh",
            json_type(),
            json!({ "refresh_token": refresh }).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (code, logs) = served.stop().await;
    assert_eq!(code, Some(0), "{logs}");
    let new_access = &access_token(&rotated);
    let new_refresh = rotated["refresh_token"].as_str().unwrap();
    for (what, secret) in [
        ("the API key", key.as_str()),
        ("an access token", access.as_str()),
        ("an access token's signature", access.rsplit('.').next().unwrap()),
        ("a forged token's signature", forged.rsplit('.').next().unwrap()),
        ("a refresh token", refresh.as_str()),
        ("a refresh token's secret", refresh.rsplit('_').next().unwrap()),
        ("a rotated access token", new_access),
        ("a rotated refresh token", new_refresh),
        ("the signing key", SIGNING_KEY),
    ] {
        assert!(!logs.contains(secret), "{what} reached the logs:\n{logs}");
    }
    let requests: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "request")
        .collect();
    let reasons: Vec<(&str, &str, &str)> = requests
        .iter()
        .map(|r| {
            (
                r["route"].as_str().unwrap_or("?"),
                r["decision"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("POST /auth/login", "ok", "-"),
            ("GET /v1/orders/**", "ok", "-"),
            ("GET /v1/orders/**", "invalid_key", "token_bad_signature"),
            ("GET /v1/orders/**", "invalid_key", "token_expired"),
            ("POST /auth/refresh", "ok", "-"),
        ],
        "{logs}"
    );
    let sid = decode_part(&access, 1)["sid"].as_str().unwrap().to_owned();
    assert_eq!(requests[1]["session_id"], sid.as_str());
    assert_eq!(requests[1]["key_id"], created["id"]);
    assert_eq!(requests[4]["session_id"], sid.as_str());
}

/// Issue 18: with the clock inside a second (as a real clock nearly always
/// is), every token response reported one second less than the lifetime
/// it issued (`"expires_in": 7199`). Login, refresh and `/oauth/token` now
/// report `exp - iat` of the token they return.
#[tokio::test]
async fn every_token_response_reports_the_lifetime_it_issued() {
    let gw = gateway("").await;
    gw.clock.advance(chrono::Duration::milliseconds(731));
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();
    let id = issued.key.id.as_str();
    let lifetime = |body: &Value| {
        let claims = decode_part(&access_token(body), 1);
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()
    };

    let first = login_ok(&gw, key, Some("fraction")).await;
    assert_eq!(first["expires_in"], 7200, "{first}");
    assert_eq!(lifetime(&first), 7200);

    gw.clock.advance(chrono::Duration::milliseconds(1_500));
    let refresh = first["refresh_token"].as_str().unwrap();
    let reply = post_json(&gw, "/auth/refresh", &json!({ "refresh_token": refresh })).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let refreshed = reply.json();
    assert_eq!(refreshed["expires_in"], 7200, "{refreshed}");
    assert_eq!(lifetime(&refreshed), 7200);

    let reply = gw
        .send(
            Method::POST,
            "/oauth/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            &serde_urlencoded::to_string([
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", key),
            ])
            .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let oauth = reply.json();
    assert_eq!(oauth["expires_in"], 7200, "{oauth}");
    assert_eq!(lifetime(&oauth), 7200);
    gw.stop().await;
}
