//! The admin API's OpenAPI 3.1 document, derived by utoipa from the
//! handlers' `#[utoipa::path]` attributes and the DTOs' schemas, so it
//! cannot drift from the code. Served at `GET /openapi.json`.
//!
//! [`ApiDoc`]'s `paths(...)` lists every handler of [`super::routes`]; the
//! tests below fail when a served route is missing here, or documented but
//! not served.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::dto::{
    AuditPage, CreateKeyRequest, FieldErrorBody, IssuedKey, KeyPage, OwnerUsageView, PointView, ProblemBody,
    RotateKeyRequest, SeriesView, SessionView, TopKeyView, TopView, UpdateKeyRequest, UsageView,
};
use crate::manage::KeyView;
use crate::store::{AuditEntry, Usage};

/// The name of the bearer security scheme in the document.
const SECURITY_SCHEME: &str = "admin_token";

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate admin API",
        description = "Manage API keys, read their usage and audit trail, and revoke token-exchange \
                       sessions. Every endpoint but the health probes needs `Authorization: Bearer <admin \
                       token>`. Errors are RFC 9457 problem+json bodies with a keygate `code`.",
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics::metrics,
        super::openapi_json,
        super::keys::create_key,
        super::keys::list_keys,
        super::keys::get_key,
        super::keys::update_key,
        super::keys::revoke_key,
        super::keys::rotate_key,
        super::usage::key_usage,
        super::usage::owner_usage,
        super::usage::top,
        super::keys::audit,
        super::sessions::revoke_session,
    ),
    components(schemas(
        KeyView,
        IssuedKey,
        KeyPage,
        AuditPage,
        AuditEntry,
        Usage,
        UsageView,
        OwnerUsageView,
        SeriesView,
        PointView,
        TopView,
        TopKeyView,
        SessionView,
        CreateKeyRequest,
        UpdateKeyRequest,
        RotateKeyRequest,
        ProblemBody,
        FieldErrorBody,
    )),
    modifiers(&AdminSecurity),
    tags(
        (name = "keys", description = "Issue, inspect, change, rotate and revoke API keys."),
        (name = "usage", description = "Usage history: a key's or an owner's requests per minute, hour or day, and the busiest keys."),
        (name = "audit", description = "Who changed which key, when."),
        (name = "sessions", description = "Revoke token-exchange sessions (the `sid` of access tokens)."),
        (name = "operations", description = "Health probes and this document."),
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme, makes it the default requirement, and documents
/// the 401 answer of every operation that needs it.
struct AdminSecurity;

impl Modify for AdminSecurity {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin token: one whose argon2id hash is in `admin.tokens`, or `KEYGATE_ADMIN_TOKEN`.",
                    ))
                    .build(),
            ),
        );
        doc.security = Some(vec![SecurityRequirement::new::<_, _, &str>(SECURITY_SCHEME, [])]);
        let unauthorized = utoipa::openapi::ResponseBuilder::new()
            .description(
                "No admin token, a wrong one, or none configured (`admin_unauthorized`, with \
                 `WWW-Authenticate: Bearer realm=\"keygate-admin\"`).",
            )
            .content(
                crate::problem::PROBLEM_JSON,
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ProblemBody")))
                    .build(),
            )
            .build();
        for item in doc.paths.paths.values_mut() {
            for operation in operations(item) {
                // `security(())` marks the open operations.
                if operation.security.is_none() {
                    operation
                        .responses
                        .responses
                        .entry("401".into())
                        .or_insert_with(|| unauthorized.clone().into());
                }
            }
        }
    }
}

/// Every operation of a path item.
fn operations(
    item: &mut utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (method, path) pairs the document describes.
    fn documented(doc: &utoipa::openapi::OpenApi) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("OPTIONS", &item.options),
                ("HEAD", &item.head),
                ("PATCH", &item.patch),
                ("TRACE", &item.trace),
            ];
            for (method, op) in methods {
                if op.is_some() {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_served_route_is_documented_and_nothing_else() {
        let doc = ApiDoc::openapi();
        let served: BTreeSet<(String, String)> = super::super::routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_owned()))
            .collect();
        assert_eq!(documented(&doc), served);
    }

    #[test]
    fn open_routes_need_no_token_and_the_rest_do() {
        let doc = ApiDoc::openapi();
        for route in super::super::routes() {
            let item = &doc.paths.paths[route.path];
            let op = match route.method.as_str() {
                "GET" => item.get.as_ref(),
                "POST" => item.post.as_ref(),
                "PATCH" => item.patch.as_ref(),
                "PUT" => item.put.as_ref(),
                "DELETE" => item.delete.as_ref(),
                other => panic!("unexpected method {other}"),
            }
            .unwrap();
            let open = route.access == super::super::Access::Open;
            assert_eq!(op.security.is_some(), open, "{} {}", route.method, route.path);
            assert_eq!(
                op.responses.responses.contains_key("401"),
                !open,
                "{} {}",
                route.method,
                route.path
            );
        }
    }

    #[test]
    fn parses_as_openapi_3_1() {
        let json = ApiDoc::openapi().to_json().unwrap();
        let spec = oas3::from_json(&json).unwrap();
        assert!(spec.openapi.starts_with("3.1."), "{}", spec.openapi);
        let schemas = spec.components.unwrap().schemas;
        assert!(schemas.contains_key("Key"));
        assert!(schemas.contains_key("Session"));
    }
}
