//! The proxy as clients see it: every SPEC §5 outcome, what the upstream
//! receives (SPEC §6), and snapshots of every error response.

use chrono::Duration;
use http::{Method, StatusCode};
use keygate::clock::Clock;
use keygate::keys::KeyStatus;
use keygate::store::Actor;

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, Reply, TestGateway};
use crate::support::with_valid_checksum;

/// Status, the headers users rely on, and the body, for snapshots.
fn seen(reply: &Reply) -> serde_json::Value {
    serde_json::json!({
        "status": reply.status.as_u16(),
        "content-type": reply.header("content-type"),
        "www-authenticate": reply.header("www-authenticate"),
        "retry-after": reply.header("retry-after"),
        "body": reply.text(),
    })
}

#[tokio::test]
async fn a_valid_key_is_forwarded_with_identity_and_without_credentials() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();
    for header in [
        ("authorization", format!("Bearer {key}")),
        ("x-api-key", key.to_owned()),
    ] {
        let reply = gw
            .get(
                "/v1/orders/42?expand=items",
                &[
                    (header.0, &header.1),
                    ("x-keygate-key-id", "forged"),
                    ("x-forwarded-for", "10.1.2.3"),
                    ("x-forwarded-proto", "https"),
                    ("connection", "x-hop"),
                    ("x-hop", "1"),
                    ("host", "api.example.com"),
                ],
            )
            .await;
        let echoed = reply.echoed();
        let headers = &echoed["headers"];
        assert_eq!(echoed["path"], "/v1/orders/42");
        assert_eq!(echoed["query"], "expand=items");
        assert!(headers.get("authorization").is_none(), "{headers}");
        assert!(headers.get("x-api-key").is_none(), "{headers}");
        assert!(headers.get("x-hop").is_none(), "{headers}");
        assert!(
            !echoed.to_string().contains(key),
            "the upstream never sees the key"
        );
        assert_eq!(headers["x-keygate-key-id"][0], issued.key.id.as_str());
        assert_eq!(headers["x-keygate-scopes"][0], "can_read_order");
        assert_eq!(headers["x-keygate-plan"][0], "pro");
        assert_eq!(headers["x-forwarded-for"][0], "10.1.2.3, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"][0], "http");
        assert_eq!(headers["x-forwarded-host"][0], "api.example.com");
        assert_eq!(headers["host"][0], gw.upstream().to_string());
    }
}

#[tokio::test]
async fn a_key_without_a_plan_has_api_access_and_no_limits() {
    // Issue 19: keys.default_plan is optional; without it a key created
    // without a plan has none, and no config is refused for lacking `free`.
    let gw = TestGateway::start_with(DEFAULT_ROUTES, |c| {
        c.keys.default_plan = None;
        c.admin.env_token = Some(keygate::keys::SecretString::from(ADMIN_TOKEN));
    })
    .await;
    let created = gw
        .admin_send(
            Method::POST,
            "/v1/keys",
            Some(ADMIN_TOKEN),
            r#"{"name": "planless", "scopes": ["can_read_order"]}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let body = created.json();
    assert!(body["plan"].is_null(), "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let reply = gw.get("/v1/orders/1", &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("ratelimit-limit"), None, "no plan, no limits");
        let echoed = reply.echoed();
        assert!(echoed["headers"].get("x-keygate-plan").is_none(), "{echoed}");
        assert_eq!(echoed["headers"]["x-keygate-scopes"][0], "can_read_order");
    }
    // Giving it a plan applies that plan from the next request.
    let id = body["id"].as_str().unwrap();
    let patched = gw
        .admin_send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(ADMIN_TOKEN),
            r#"{"plan": "free"}"#,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text());
    let refused = gw
        .eventually("/v1/orders/1", &[("x-api-key", &key)], |r| {
            r.status == StatusCode::FORBIDDEN
        })
        .await;
    refused.problem(StatusCode::FORBIDDEN, "plan_forbidden");
    gw.stop().await;
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive_and_query_keys_are_not_credentials() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();
    gw.get("/v1/orders/1", &[("authorization", &format!("bEaReR {key}"))])
        .await
        .echoed();
    let reply = gw.get(&format!("/v1/orders/1?api_key={key}"), &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["code"], "missing_credentials");
}

/// name, method, path, headers, expected status, expected code.
type Case = (
    &'static str,
    Method,
    &'static str,
    Vec<(&'static str, String)>,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn every_auth_error_has_its_status_code_and_header() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let reader = gw.key(&["can_read_order"], "pro").await;
    let key = reader.secret.expose().to_owned();
    let free = gw.key(&["can_read_order"], "free").await;
    let other = gw.key(&["can_read_order"], "pro").await;
    let forged_checksum = format!(
        "{}{}",
        &key[..key.len() - 1],
        if key.ends_with('A') { 'B' } else { 'A' }
    );
    // Same prefix and short prefix, a valid checksum, a different secret.
    let wrong_secret = with_valid_checksum(&format!("{}{}", &key[..16], "Z".repeat(22))).unwrap();
    assert_ne!(wrong_secret, key);
    let cases: Vec<Case> = vec![
        (
            "missing_credentials",
            Method::GET,
            "/v1/orders/1",
            vec![],
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
        ),
        (
            "invalid_key_checksum",
            Method::GET,
            "/v1/orders/1",
            vec![("x-api-key", forged_checksum)],
            StatusCode::UNAUTHORIZED,
            "invalid_key",
        ),
        (
            "invalid_key_garbage",
            Method::GET,
            "/v1/orders/1",
            vec![("x-api-key", "hello".into())],
            StatusCode::UNAUTHORIZED,
            "invalid_key",
        ),
        (
            "invalid_key_wrong_secret",
            Method::GET,
            "/v1/orders/1",
            vec![("x-api-key", wrong_secret)],
            StatusCode::UNAUTHORIZED,
            "invalid_key",
        ),
        (
            "ambiguous_credentials",
            Method::GET,
            "/v1/orders/1",
            vec![
                ("x-api-key", key.clone()),
                ("authorization", format!("Bearer {}", other.secret.expose())),
            ],
            StatusCode::BAD_REQUEST,
            "ambiguous_credentials",
        ),
        (
            "insufficient_scope",
            Method::POST,
            "/v1/orders",
            vec![("x-api-key", key.clone())],
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            "plan_forbidden",
            Method::GET,
            "/v1/orders/1",
            vec![("x-api-key", free.secret.expose().to_owned())],
            StatusCode::FORBIDDEN,
            "plan_forbidden",
        ),
        (
            "bad_request_path",
            Method::GET,
            "/v1/orders/%zz",
            vec![("x-api-key", key.clone())],
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (name, method, path, headers, status, code) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = gw.send(method, path, &headers, "{}").await;
        assert_eq!(reply.status, status, "{name}: {}", reply.text());
        assert_eq!(reply.json()["code"], code, "{name}");
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{name}"
        );
        assert!(!reply.text().contains(&key), "{name}: no secret in error bodies");
        insta::assert_json_snapshot!(format!("proxy_error_{name}"), seen(&reply));
    }
}

#[tokio::test]
async fn status_changes_reach_the_running_gateway() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose().to_owned();
    let id = issued.key.id.to_string();
    let headers = [("x-api-key", key.as_str())];
    gw.get("/v1/orders/1", &headers).await.echoed();

    gw.manager
        .set_status(&id, KeyStatus::Inactive, &Actor::cli())
        .await
        .unwrap();
    let reply = gw
        .eventually("/v1/orders/1", &headers, |r| r.status == StatusCode::UNAUTHORIZED)
        .await;
    assert_eq!(reply.json()["code"], "key_inactive");
    insta::assert_json_snapshot!("proxy_error_key_inactive", seen(&reply));

    gw.manager
        .set_status(&id, KeyStatus::Active, &Actor::cli())
        .await
        .unwrap();
    gw.eventually("/v1/orders/1", &headers, |r| r.status == StatusCode::OK)
        .await
        .echoed();

    gw.manager
        .set_status(&id, KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    let reply = gw
        .eventually("/v1/orders/1", &headers, |r| r.status == StatusCode::UNAUTHORIZED)
        .await;
    assert_eq!(reply.json()["code"], "invalid_key");
}

#[tokio::test]
async fn a_key_stops_at_its_expiry_instant() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw
        .manager
        .create(
            keygate::manage::CreateKey {
                name: "expiring".into(),
                scopes: ["can_read_order".to_owned()].into(),
                plan: Some("pro".into()),
                expires_at: Some(gw.clock.now() + Duration::hours(1)),
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let headers = [("x-api-key", issued.secret.expose())];
    gw.get("/v1/orders/1", &headers).await.echoed();
    gw.clock.advance(Duration::hours(1));
    let reply = gw.get("/v1/orders/1", &headers).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["code"], "key_expired");
    insta::assert_json_snapshot!("proxy_error_key_expired", seen(&reply));
}

#[tokio::test]
async fn rotation_grace_on_the_proxy() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let old = issued.secret.expose().to_owned();
    let rotated = gw
        .manager
        .rotate(issued.key.id.as_str(), Duration::hours(24), &Actor::cli())
        .await
        .unwrap();
    gw.get("/v1/orders/1", &[("x-api-key", rotated.secret.expose())])
        .await
        .echoed();
    gw.get("/v1/orders/1", &[("x-api-key", &old)]).await.echoed();
    gw.clock.advance(Duration::hours(24));
    let reply = gw
        .eventually("/v1/orders/1", &[("x-api-key", &old)], |r| {
            r.status != StatusCode::OK
        })
        .await;
    assert_eq!(reply.json()["code"], "invalid_key");
    gw.get("/v1/orders/1", &[("x-api-key", rotated.secret.expose())])
        .await
        .echoed();
}

#[tokio::test]
async fn public_routes_default_scopes_and_method_scopes() {
    let gw = TestGateway::start(&format!("[auth]\ndefault_scopes = [\"basic\"]\n{DEFAULT_ROUTES}")).await;
    gw.get("/public/status", &[]).await.echoed();
    let basic = gw.key(&["basic"], "pro").await;
    let none = gw.key(&[], "pro").await;
    gw.get("/elsewhere", &[("x-api-key", basic.secret.expose())])
        .await
        .echoed();
    let reply = gw.get("/elsewhere", &[("x-api-key", none.secret.expose())]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["detail"], "This action requires the 'basic' scope");
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some("Bearer error=\"insufficient_scope\", scope=\"basic\"")
    );

    let methods = TestGateway::start("[auth]\nmethod_scopes = true\n").await;
    let reader = methods.key(&["read"], "pro").await;
    let headers = [("x-api-key", reader.secret.expose())];
    methods.get("/anything", &headers).await.echoed();
    let denied = methods.send(Method::DELETE, "/anything", &headers, "").await;
    assert_eq!(denied.json()["detail"], "This action requires the 'delete' scope");
}

#[tokio::test]
async fn path_tricks_never_reach_a_route_the_scopes_do_not_allow() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let reader = gw.key(&["can_read_order"], "pro").await;
    let headers = [("x-api-key", reader.secret.expose())];
    // Each of these names /v1/admin/... once normalised: scope `admin` needed.
    for path in [
        "/v1/orders/../admin/users",
        "/v1/orders/%2e%2e/admin/users",
        "/v1/orders/.%2E/admin/users",
        "//v1//admin/users",
        "/v1/./admin/users",
        "/v1/%61dmin/users",
    ] {
        let reply = gw.get(path, &headers).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}: {}", reply.text());
    }
    for path in [
        "/v1/orders%2F..%2Fadmin/users",
        "/v1/orders/..%5Cadmin",
        "/v1/%C0%AE%C0%AE/admin",
        "/v1/%zz",
    ] {
        let reply = gw.get(path, &headers).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {}", reply.text());
        assert_eq!(reply.json()["code"], "bad_request");
    }
    // The upstream receives exactly the normalised path.
    let echoed = gw.get("/v1/orders//7/./items/../lines", &headers).await.echoed();
    assert_eq!(echoed["path"], "/v1/orders/7/lines");
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let reader = gw.key(&["can_read_order"], "pro").await;
    let headers = [("x-api-key", reader.secret.expose())];
    let slow = gw.get("/v1/orders/delay/5000", &headers).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(slow.json()["code"], "upstream_timeout");
    insta::assert_json_snapshot!("proxy_error_upstream_timeout", seen(&slow));

    // An upstream that refuses connections: bind a port, then close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = TestGateway::start_with(DEFAULT_ROUTES, |config| {
        config.upstream.authority = closed.to_string();
    })
    .await;
    let reader = down.key(&["can_read_order"], "pro").await;
    let refused = down
        .get("/v1/orders/1", &[("x-api-key", reader.secret.expose())])
        .await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(refused.json()["code"], "upstream_unavailable");
    insta::assert_json_snapshot!("proxy_error_upstream_unavailable", seen(&refused));
}

#[tokio::test]
async fn request_limits_answer_in_the_problem_shape() {
    let gw = TestGateway::start_with(DEFAULT_ROUTES, |config| {
        config.server.max_body_bytes = Some(1024);
        config.server.max_header_bytes = 2048;
    })
    .await;
    let reader = gw.key(&["can_write_order"], "pro").await;
    let key = reader.secret.expose();
    let big_header = "x".repeat(4096);
    let reply = gw
        .get("/v1/orders/1", &[("x-api-key", key), ("x-big", &big_header)])
        .await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(reply.json()["code"], "headers_too_large");
    insta::assert_json_snapshot!("proxy_error_headers_too_large", seen(&reply));

    let reply = gw
        .send(
            Method::POST,
            "/v1/orders",
            &[("x-api-key", key)],
            &"y".repeat(2048),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["code"], "payload_too_large");
    insta::assert_json_snapshot!("proxy_error_payload_too_large", seen(&reply));

    let echoed = gw
        .send(
            Method::POST,
            "/v1/orders",
            &[("x-api-key", key)],
            &"y".repeat(1000),
        )
        .await
        .echoed();
    assert_eq!(echoed["body_bytes"], 1000);
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let health = gw.admin_get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
    let missing = gw.admin_get("/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_in_flight_then_refuses_connections() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose().to_owned();
    let proxy = gw.proxy();
    // Concurrent slow requests, each on its own connection, so every
    // serving thread holds some when the shutdown starts.
    let in_flight: Vec<_> = (0..6)
        .map(|_| {
            let key = key.clone();
            tokio::spawn(async move {
                let client =
                    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                        .build_http();
                crate::support::gateway::send(
                    &client,
                    proxy,
                    Method::GET,
                    "/v1/orders/delay/400",
                    &[("x-api-key", &key)],
                    "",
                )
                .await
            })
        })
        .collect();
    // Let every request reach the upstream.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let stopped_at = std::time::Instant::now();
    gw.stop().await;
    let stopped_after = stopped_at.elapsed();
    for request in in_flight {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert!(
        stopped_after < std::time::Duration::from_secs(2),
        "the drain waited for the requests, not for the grace period: {stopped_after:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "a stopped gateway still accepts connections"
    );
}

#[tokio::test]
async fn usage_is_counted_by_outcome_and_flushed_on_shutdown() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let issued = gw.key(&["can_read_order"], "pro").await;
    let key = issued.secret.expose();
    for _ in 0..3 {
        let reply = gw.get("/v1/orders/1", &[("x-api-key", key)]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let reply = gw
            .send(Method::POST, "/v1/orders", &[("x-api-key", key)], "{}")
            .await;
        assert_eq!(reply.json()["code"], "insufficient_scope");
    }
    // No key identified: not counted against anyone.
    let reply = gw.get("/v1/orders/1", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // The flusher runs every second; stopping right away leaves the counts
    // to the final flush after the drain.
    let store = gw.manager.store().clone();
    let now = gw.clock.now();
    let _files = gw.stop_keeping_files().await;
    let usage = store.usage(&issued.key.id).await.unwrap();
    assert_eq!(
        usage.by_outcome.into_iter().collect::<Vec<_>>(),
        [("insufficient_scope".to_owned(), 2), ("ok".to_owned(), 3)]
    );
    assert_eq!(usage.total, 5);
    let stored = store.get_key(&issued.key.id).await.unwrap();
    assert_eq!(stored.request_count, 5);
    assert_eq!(stored.last_used_at, Some(now), "the gateway's injected clock");
}
