//! `GET /metrics` on the admin listener (SPEC §7, §9): open like the health
//! probes, Prometheus text, and the counters move with traffic: requests by
//! outcome and route, latency histograms, the auth cache and argon2, the
//! change feed, the rate-limit backend state.

use http::StatusCode;
use keygate::keys::KeyStatus;
use keygate::store::Actor;

use crate::support::gateway::{DEFAULT_ROUTES, Reply, TestGateway};

/// The value of the sample `series` (name and labels exactly as rendered),
/// or 0 when it is not there yet.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(gw: &TestGateway) -> String {
    let reply: Reply = gw.admin_get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    reply.text()
}

#[tokio::test]
async fn metrics_are_open_and_move_with_traffic() {
    let gw = TestGateway::start(DEFAULT_ROUTES).await;
    let before = scrape(&gw).await;
    let ok = "keygate_requests_total{outcome=\"ok\",route=\"GET /v1/orders/**\"}";
    let invalid = "keygate_requests_total{outcome=\"invalid_key\",route=\"GET /v1/orders/**\"}";
    let missing = "keygate_requests_total{outcome=\"missing_credentials\",route=\"GET /v1/orders/**\"}";
    assert_eq!(sample(&before, ok), 0.0);
    assert_eq!(sample(&before, "keygate_store_up"), 1.0);
    assert_eq!(sample(&before, "keygate_ratelimit_backend{state=\"local\"}"), 1.0);
    assert_eq!(sample(&before, "keygate_ratelimit_backend{state=\"redis\"}"), 0.0);

    let issued = gw.key(&["can_read_order"], "pro").await;
    let bearer = format!("Bearer {}", issued.secret.expose());
    for _ in 0..3 {
        let reply = gw.get("/v1/orders/1", &[("authorization", &bearer)]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let forged = format!("{}x", issued.secret.expose());
    assert_eq!(
        gw.get("/v1/orders/1", &[("authorization", &format!("Bearer {forged}"))])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(gw.get("/v1/orders/1", &[]).await.status, StatusCode::UNAUTHORIZED);

    let after = scrape(&gw).await;
    assert_eq!(sample(&after, ok), 3.0, "{after}");
    assert_eq!(sample(&after, invalid), 1.0);
    assert_eq!(sample(&after, missing), 1.0);
    assert_eq!(sample(&after, "keygate_request_duration_seconds_count"), 5.0);
    assert_eq!(
        sample(&after, "keygate_upstream_duration_seconds_count"),
        3.0,
        "three forwarded"
    );
    assert_eq!(sample(&after, "keygate_gateway_duration_seconds_count"), 5.0);
    assert_eq!(
        sample(&after, "keygate_argon2_verifications_total"),
        1.0,
        "hashed once, then cached"
    );
    assert!(sample(&after, "keygate_auth_cache_hits_total") >= 2.0, "{after}");
    assert!(sample(&after, "keygate_auth_cache_misses_total") >= 1.0);
    assert_eq!(sample(&after, "keygate_auth_cache_entries"), 1.0);

    // A revoke travels through the change feed and counts as an invalidation.
    let invalidations = sample(&after, "keygate_auth_cache_invalidations_total");
    gw.manager
        .set_status(issued.key.id.as_str(), KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    let refused = gw
        .eventually("/v1/orders/1", &[("authorization", &bearer)], |r| {
            r.status == StatusCode::UNAUTHORIZED
        })
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let later = scrape(&gw).await;
    assert!(
        sample(&later, "keygate_auth_cache_invalidations_total") > invalidations,
        "{later}"
    );
    assert!(later.contains("# TYPE keygate_change_feed_lag_seconds gauge"));
    gw.stop().await;
}
