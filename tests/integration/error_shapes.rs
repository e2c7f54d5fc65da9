//! The four example configs in `config/examples/` reproduce other APIs'
//! error bodies byte for byte (SPEC §5), checked with real requests.

use http::{Method, StatusCode};

use crate::support::gateway::TestGateway;

fn example(name: &str) -> String {
    format!("{}/config/examples/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

async fn check(
    gw: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    status: StatusCode,
    body: &str,
) {
    let reply = gw.send(method, path, headers, "").await;
    assert_eq!(reply.status, status, "{path}: {}", reply.text());
    assert_eq!(reply.text(), body, "{path}");
}

#[tokio::test]
async fn techrar() {
    let gw = TestGateway::from_file(&example("techrar")).await;
    check(
        &gw,
        Method::GET,
        "/v1/anything",
        &[("x-api-key", "nope")],
        StatusCode::UNAUTHORIZED,
        r#"{"error":{"code":"-101","messages":["Invalid token"]}}"#,
    )
    .await;
}

#[tokio::test]
async fn techdocs() {
    let gw = TestGateway::from_file(&example("techdocs")).await;
    let reply = gw
        .send(Method::GET, "/v1/anything", &[("x-api-key", "nope")], "")
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let body = reply.json();
    assert_eq!(body["error"]["code"], "INVALID_TOKEN");
    assert_eq!(body["error"]["status"], 401);
    assert!(body["error"]["message"].is_string());
    assert_eq!(
        reply.text(),
        format!(
            r#"{{"error":{{"code":"INVALID_TOKEN","message":{},"status":401}}}}"#,
            body["error"]["message"]
        )
    );
}

#[tokio::test]
async fn trucustom() {
    let gw = TestGateway::from_file(&example("trucustom")).await;
    let reader = gw.key(&["read"], &gw.manager_default_plan()).await;
    let key = reader.secret.expose();
    assert!(key.starts_with("tc_") && key.len() == 67, "{key}");
    check(
        &gw,
        Method::POST,
        "/anything",
        &[("authorization", &format!("Bearer {key}"))],
        StatusCode::FORBIDDEN,
        r#"{"error":"Forbidden","message":"This action requires the 'write' scope"}"#,
    )
    .await;
    let reply = gw.send(Method::GET, "/anything", &[], "").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "Unauthorized");
    gw.get("/anything", &[("authorization", &format!("Bearer {key}"))])
        .await
        .echoed();
}

#[tokio::test]
async fn trakkr() {
    let gw = TestGateway::from_file(&example("trakkr")).await;
    check(
        &gw,
        Method::GET,
        "/v1/anything",
        &[],
        StatusCode::UNAUTHORIZED,
        r#"{"error":"Missing API key"}"#,
    )
    .await;
    check(
        &gw,
        Method::GET,
        "/v1/anything",
        &[("x-api-key", "nope")],
        StatusCode::FORBIDDEN,
        r#"{"error":"Invalid API key"}"#,
    )
    .await;
}
