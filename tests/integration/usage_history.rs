//! Usage history (SPEC §13) from outside: traffic through two gateways
//! sharing one store (a SQLite file; a Postgres schema when asked for), on
//! injected clocks, read back through the admin API per minute, hour and
//! day, per key, per owner and ranked; every query's shape and error; and
//! pruning on schedule.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use http::{Method, StatusCode};
use keygate::clock::Clock as _;
use keygate::config::Config;
use keygate::keys::usage::{Granularity, SeriesRange};
use keygate::store::UsageSubject;
use serde_json::{Value, json};

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, Reply, TestGateway};
use crate::support::pg::Schema;

/// A gateway on the store `url`, with the admin token.
async fn replica(url: &str) -> TestGateway {
    let text = format!(
        "[keys]\ndefault_plan = \"pro\"\n{}\n{DEFAULT_ROUTES}",
        crate::support::FAST_HASH
    );
    let no_env = BTreeMap::<String, String>::new();
    let mut config: Config =
        keygate::config::load_str(&text, "test", &no_env).unwrap_or_else(|e| panic!("{e}"));
    config.database.url = url.to_owned();
    config.admin.env_token = Some(keygate::keys::SecretString::from(ADMIN_TOKEN));
    TestGateway::start_config_on_its_database(config).await
}

/// The gateways' common start: 2026-11-23T12:00:00Z.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
}

async fn admin(gw: &TestGateway, path: &str) -> Reply {
    gw.admin_send(Method::GET, path, Some(ADMIN_TOKEN), "").await
}

async fn admin_ok(gw: &TestGateway, path: &str) -> Value {
    let reply = admin(gw, path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    reply.json()
}

/// Creates a key through the admin API: (id, secret).
async fn create(gw: &TestGateway, name: &str, owner: &str) -> (String, String) {
    let body = json!({"name": name, "owner": owner, "scopes": ["can_read_order"]}).to_string();
    let reply = gw
        .admin_send(Method::POST, "/v1/keys", Some(ADMIN_TOKEN), &body)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let created = reply.json();
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

/// `n` requests with `key` through `gw`, each answered `status`.
async fn call(gw: &TestGateway, method: Method, key: &str, n: usize, status: StatusCode) {
    for _ in 0..n {
        let reply = gw
            .send(method.clone(), "/v1/orders/1", &[("x-api-key", key)], "")
            .await;
        assert_eq!(reply.status, status, "{}", reply.text());
    }
}

/// Advances both gateways' clocks to `at`.
fn set_clocks(gateways: [&TestGateway; 2], at: DateTime<Utc>) {
    for gw in gateways {
        let now = gw.clock.now();
        gw.clock.advance(at - now);
    }
}

/// The same key with another secret: its short prefix, a valid checksum.
fn wrong_secret_of(key: &str) -> String {
    crate::support::with_valid_checksum(&format!("{}{}", &key[..16], "Z".repeat(22))).unwrap()
}

/// A series' buckets as `{time: {total, ok, <code>…}}` without zeros, for
/// comparing exactly what was counted.
fn nonzero(series: &Value) -> BTreeMap<String, Value> {
    series["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|point| point["total"] != 0)
        .map(|point| {
            let mut point = point.clone();
            let time = point["time"].as_str().unwrap().to_owned();
            point.as_object_mut().unwrap().remove("time");
            (time, point)
        })
        .collect()
}

/// The stored rows (one per bucket and outcome) of key `id`'s first day in
/// the tier of `granularity`.
async fn stored_rows(gw: &TestGateway, id: &str, granularity: Granularity) -> usize {
    let id = id.parse().unwrap();
    let day_one = SeriesRange {
        granularity,
        from: t0() - Duration::hours(12),
        to: t0() + Duration::hours(12),
    };
    let stored = gw
        .gateway()
        .store()
        .usage_buckets(UsageSubject::Key(&id), day_one)
        .await;
    stored.unwrap().len()
}

/// Two gateways on one store: the history of a key and of its owner is
/// exact per minute, hour and day, whichever gateway counted and whichever
/// answers; refusals of a known key count on it; pruning removes each tier
/// on its own schedule.
async fn two_gateways_count_one_exact_history(url: &str) {
    let a = replica(url).await;
    let b = replica(url).await;
    let (k, k_secret) = create(&a, "k", "acme").await;
    let (l, l_secret) = create(&a, "l", "acme").await;
    let (m, m_secret) = create(&a, "m", "zeta").await;
    // Revoked before any gateway saw it: its requests still name it.
    let (n, n_secret) = create(&a, "n", "acme").await;
    let revoked = a
        .admin_send(
            Method::POST,
            &format!("/v1/keys/{n}/revoke"),
            Some(ADMIN_TOKEN),
            "",
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());

    // 12:00: both gateways count the same key in the same minute.
    call(&a, Method::GET, &k_secret, 3, StatusCode::OK).await;
    call(&b, Method::GET, &k_secret, 2, StatusCode::OK).await;
    call(&b, Method::POST, &k_secret, 1, StatusCode::FORBIDDEN).await;
    call(&a, Method::GET, &l_secret, 2, StatusCode::OK).await;
    // 12:01:01: its short prefix with a wrong secret counts on it.
    set_clocks([&a, &b], t0() + Duration::seconds(61));
    call(&a, Method::GET, &k_secret, 1, StatusCode::OK).await;
    call(
        &b,
        Method::GET,
        &wrong_secret_of(&k_secret),
        2,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // 13:00:30; the revoked key's requests count on it too.
    set_clocks([&a, &b], t0() + Duration::seconds(3_630));
    call(&b, Method::GET, &k_secret, 1, StatusCode::OK).await;
    call(&b, Method::GET, &m_secret, 4, StatusCode::OK).await;
    call(&a, Method::GET, &n_secret, 1, StatusCode::UNAUTHORIZED).await;
    // The next day.
    set_clocks([&a, &b], Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 10).unwrap());
    call(&a, Method::GET, &k_secret, 1, StatusCode::OK).await;
    for gw in [&a, &b] {
        gw.gateway().flush_usage().await.expect("flush");
    }

    let minutes = admin_ok(
        &b,
        &format!("/v1/keys/{k}/usage?from=2026-11-23T12:00:00Z&to=2026-11-23T12:02:00Z&granularity=minute"),
    )
    .await;
    assert_eq!(
        minutes["series"],
        json!({
            "from": "2026-11-23T12:00:00Z",
            "to": "2026-11-23T12:02:00Z",
            "granularity": "minute",
            "data": [
                {"time": "2026-11-23T12:00:00Z", "total": 6, "ok": 5, "insufficient_scope": 1},
                {"time": "2026-11-23T12:01:00Z", "total": 3, "ok": 1, "invalid_key": 2},
            ]
        })
    );
    // All time, as before the history.
    assert_eq!(minutes["key_id"], k);
    assert_eq!(minutes["total"], 11);
    assert_eq!(
        minutes["by_outcome"],
        json!({"ok": 8, "insufficient_scope": 1, "invalid_key": 2})
    );

    // Hours: rounded out to edges, zero-filled, ascending.
    let hours = admin_ok(
        &a,
        &format!("/v1/keys/{k}/usage?from=2026-11-23T11:30:00Z&to=2026-11-23T13:00:01Z&granularity=hour"),
    )
    .await;
    assert_eq!(
        hours["series"],
        json!({
            "from": "2026-11-23T11:00:00Z",
            "to": "2026-11-23T14:00:00Z",
            "granularity": "hour",
            "data": [
                {"time": "2026-11-23T11:00:00Z", "total": 0, "ok": 0},
                {"time": "2026-11-23T12:00:00Z", "total": 9, "ok": 6, "insufficient_scope": 1, "invalid_key": 2},
                {"time": "2026-11-23T13:00:00Z", "total": 1, "ok": 1},
            ]
        })
    );
    let days = admin_ok(
        &a,
        &format!("/v1/keys/{k}/usage?from=2026-11-23T00:00:00Z&to=2026-11-25T00:00:00Z&granularity=day"),
    )
    .await;
    assert_eq!(
        nonzero(&days["series"]),
        BTreeMap::from([
            (
                "2026-11-23T00:00:00Z".to_owned(),
                json!({"total": 10, "ok": 7, "insufficient_scope": 1, "invalid_key": 2})
            ),
            ("2026-11-24T00:00:00Z".to_owned(), json!({"total": 1, "ok": 1})),
        ])
    );

    // Without a range: the last 24 h, in hours (1,441 minutes is too many),
    // including the current, partial hour.
    let recent = admin_ok(&a, &format!("/v1/keys/{k}/usage")).await;
    assert_eq!(recent["series"]["granularity"], "hour");
    assert_eq!(recent["series"]["from"], "2026-11-23T00:00:00Z");
    assert_eq!(recent["series"]["to"], "2026-11-24T01:00:00Z");
    assert_eq!(recent["series"]["data"].as_array().unwrap().len(), 25);
    assert_eq!(
        nonzero(&recent["series"]).keys().collect::<Vec<_>>(),
        [
            "2026-11-23T12:00:00Z",
            "2026-11-23T13:00:00Z",
            "2026-11-24T00:00:00Z"
        ]
    );

    // The owner: every key it owns, whichever gateway counted.
    let acme = admin_ok(
        &b,
        "/v1/owners/acme/usage?from=2026-11-23T12:00:00Z&to=2026-11-23T14:00:00Z&granularity=hour",
    )
    .await;
    assert_eq!(acme["owner"], "acme");
    assert_eq!(acme["total"], 14);
    assert_eq!(
        acme["series"]["data"],
        json!([
            {"time": "2026-11-23T12:00:00Z", "total": 11, "ok": 8, "insufficient_scope": 1, "invalid_key": 2},
            {"time": "2026-11-23T13:00:00Z", "total": 2, "ok": 1, "invalid_key": 1},
        ])
    );
    let zeta = admin_ok(
        &a,
        "/v1/owners/zeta/usage?granularity=day&from=2026-11-23T00:00:00Z",
    )
    .await;
    assert_eq!(
        nonzero(&zeta["series"]),
        BTreeMap::from([("2026-11-23T00:00:00Z".to_owned(), json!({"total": 4, "ok": 4}))])
    );

    // The busiest keys of the first day.
    let top = admin_ok(
        &a,
        "/v1/usage/top?from=2026-11-23T00:00:00Z&to=2026-11-24T00:00:00Z",
    )
    .await;
    assert_eq!(top["by"], "requests");
    assert_eq!(top["from"], "2026-11-23T00:00:00Z");
    assert_eq!(top["to"], "2026-11-24T00:00:00Z");
    assert_eq!(
        top["data"],
        json!([
            {"key_id": k, "owner": "acme", "name": "k", "total": 10, "ok": 7, "refused": 3},
            {"key_id": m, "owner": "zeta", "name": "m", "total": 4, "ok": 4, "refused": 0},
            {"key_id": l, "owner": "acme", "name": "l", "total": 2, "ok": 2, "refused": 0},
            {"key_id": n, "owner": "acme", "name": "n", "total": 1, "ok": 0, "refused": 1},
        ])
    );
    let refused = admin_ok(
        &b,
        "/v1/usage/top?from=2026-11-23T00:00:00Z&to=2026-11-24T00:00:00Z&by=refused&limit=1",
    )
    .await;
    assert_eq!(refused["by"], "refused");
    let ranked: Vec<&str> = refused["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ranked, [k.as_str()]);

    // Three days on, each tier is pruned on its own schedule: the minutes
    // (48 h) are gone, the hours and days stay.
    set_clocks([&a, &b], t0() + Duration::days(3));
    a.manager.prune_history().await.expect("prune");
    assert_eq!(
        stored_rows(&a, &k, Granularity::Minute).await,
        0,
        "minutes past 48 h are pruned"
    );
    // (12:00: ok, insufficient_scope, invalid_key; 13:00: ok)
    assert_eq!(stored_rows(&a, &k, Granularity::Hour).await, 4);
    assert_eq!(stored_rows(&a, &k, Granularity::Day).await, 3);
    // The retention now refuses minutes that far back, naming the field.
    let refused = admin(
        &a,
        &format!("/v1/keys/{k}/usage?from=2026-11-23T12:00:00Z&granularity=minute"),
    )
    .await;
    let problem = refused.problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(problem["errors"][0]["field"], "granularity", "{problem}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_one_sqlite_file_count_one_exact_history() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("shared.db").display());
    two_gateways_count_one_exact_history(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Postgres: set KEYGATE_TEST_PG"]
async fn two_gateways_on_one_postgres_count_one_exact_history() {
    let schema = Schema::create("kghist").await;
    two_gateways_count_one_exact_history(&schema.url()).await;
}

#[tokio::test]
async fn bad_ranges_and_parameters_are_refused_naming_the_field() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let (k, _) = create(&gw, "k", "acme").await;
    let cases: [(String, &str); 10] = [
        (
            format!("/v1/keys/{k}/usage?from=2026-11-23T12:00:00Z&to=2026-11-23T12:00:00Z"),
            "from",
        ),
        (format!("/v1/keys/{k}/usage?from=yesterday"), "from"),
        (format!("/v1/keys/{k}/usage?to=2026-13-01T00:00:00Z"), "to"),
        (format!("/v1/keys/{k}/usage?granularity=week"), "granularity"),
        (
            format!("/v1/keys/{k}/usage?granularity=minute&from=2026-11-20T00:00:00Z"),
            "granularity",
        ),
        (
            format!("/v1/keys/{k}/usage?granularity=day&from=2026-11-23T00:00:00Z&to=2060-01-01T00:00:00Z"),
            "from",
        ),
        (format!("/v1/keys/{k}/usage?bucket=hour"), "bucket"),
        (
            "/v1/owners/acme/usage?from=2026-11-24T00:00:00Z".to_owned(),
            "from",
        ),
        ("/v1/usage/top?by=latency".to_owned(), "by"),
        ("/v1/usage/top?limit=0".to_owned(), "limit"),
    ];
    for (path, field) in cases {
        let reply = admin(&gw, &path).await;
        let problem = reply.problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [field], "{path}: {problem}");
    }
    // Unknown keys and owners are not found; a bad id is a bad field.
    let unknown = admin(&gw, "/v1/owners/nobody/usage").await;
    unknown.problem(StatusCode::NOT_FOUND, "not_found");
    let unknown = admin(&gw, "/v1/keys/key_01kaqz3m5v8x2c4n6b7d9f0g1h/usage").await;
    unknown.problem(StatusCode::NOT_FOUND, "not_found");
    // An owner with keys but no traffic: zeros, every bucket present.
    let quiet = admin_ok(&gw, "/v1/owners/acme/usage?granularity=hour").await;
    assert_eq!(quiet["total"], 0);
    assert_eq!(quiet["series"]["data"].as_array().unwrap().len(), 25);
    assert_eq!(
        quiet["series"]["data"][0],
        json!({"time": "2026-11-22T12:00:00Z", "total": 0, "ok": 0})
    );
    // Nothing counted yet: an empty ranking. By default the last 24 h and
    // the current hour (now is on its edge).
    let top = admin_ok(&gw, "/v1/usage/top").await;
    assert_eq!(
        top,
        json!({"from": "2026-11-22T12:00:00Z", "to": "2026-11-23T13:00:00Z", "by": "requests", "data": []})
    );
    // Without a token, nothing.
    let anonymous = gw.admin_send(Method::GET, "/v1/usage/top", None, "").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    gw.stop().await;
}
