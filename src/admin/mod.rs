//! The admin listener (SPEC §7): `/healthz`, `/readyz` and `/metrics`
//! (always open), the key management API, token-exchange session
//! revocation and `/openapi.json` (behind an admin token). Thin
//! handlers over [`crate::manage`]; errors in the problem+json shape via
//! [`AdminError`].
//!
//! [`routes`] is the one list of what the listener serves: the router is
//! built from it, and a test checks that every row is in the OpenAPI
//! document ([`openapi::ApiDoc`]). A new endpoint is a row there plus its
//! handler in `ApiDoc`'s `paths(...)`.

use std::sync::Arc;
use std::time::Duration;

use self::metrics::MetricsSources;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http::HeaderValue;
use http::header::{AUTHORIZATION, CACHE_CONTROL};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use utoipa::OpenApi;

use crate::clock::SharedClock;
use crate::manage::KeyManager;
use crate::store::SharedStore;

pub mod auth;
pub mod console;
pub mod cursor;
pub mod dto;
mod error;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod sessions;
pub mod usage;

pub use auth::{AdminAuth, AdminPrincipal, AdminSettings};
pub use error::AdminError;

/// How long `/readyz` waits for the store before answering not ready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin handlers share: cheap handles.
#[derive(Debug, Clone)]
pub struct AdminState {
    store: SharedStore,
    manager: KeyManager,
    auth: Arc<AdminAuth>,
    cursors: cursor::CursorSigner,
    metrics: MetricsSources,
    /// The console's signed-in operators.
    console: console::session::ConsoleSessions,
    /// The scopes the console offers when creating a key (the route
    /// table's).
    console_scopes: Arc<Vec<String>>,
}

impl AdminState {
    /// Admin state over the gateway's key manager (and its store), accepting
    /// the admin tokens of `settings`; `clock` paces the wrong-token budget;
    /// `/metrics` reads `metrics`.
    pub fn new(
        manager: KeyManager,
        settings: &AdminSettings,
        clock: SharedClock,
        metrics: MetricsSources,
    ) -> Self {
        let store = manager.store().clone();
        Self {
            console: console::session::ConsoleSessions::new(store.clone(), clock.clone()),
            store,
            manager,
            auth: Arc::new(AdminAuth::new(settings, clock.clone())),
            cursors: cursor::CursorSigner::new(settings),
            metrics,
            console_scopes: Arc::new(Vec::new()),
        }
    }

    /// Offers `scopes` (the route table's) in the console's create form.
    pub fn with_console_scopes(mut self, scopes: Vec<String>) -> Self {
        self.console_scopes = Arc::new(scopes);
        self
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health probes, metrics).
    Open,
    /// Callers with an admin token.
    AdminToken,
}

/// One row of the admin listener.
#[derive(Debug)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, in the spelling axum and OpenAPI share (`/v1/keys/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    handler: MethodRouter<AdminState>,
}

/// A [`Route`] whose method filter and declared method come from one token,
/// so they cannot disagree.
macro_rules! route {
    ($method:ident $path:literal, $access:ident, $handler:path) => {
        Route {
            method: Method::$method,
            path: $path,
            access: Access::$access,
            handler: on(MethodFilter::$method, $handler),
        }
    };
}

/// Everything the admin listener serves.
pub fn routes() -> Vec<Route> {
    vec![
        route!(GET "/healthz", Open, healthz),
        route!(GET "/readyz", Open, readyz),
        route!(GET "/metrics", Open, metrics::metrics),
        route!(GET "/openapi.json", AdminToken, openapi_json),
        route!(POST "/v1/keys", AdminToken, keys::create_key),
        route!(GET "/v1/keys", AdminToken, keys::list_keys),
        route!(GET "/v1/keys/{id}", AdminToken, keys::get_key),
        route!(PATCH "/v1/keys/{id}", AdminToken, keys::update_key),
        route!(POST "/v1/keys/{id}/revoke", AdminToken, keys::revoke_key),
        route!(POST "/v1/keys/{id}/rotate", AdminToken, keys::rotate_key),
        route!(GET "/v1/keys/{id}/usage", AdminToken, usage::key_usage),
        route!(GET "/v1/owners/{owner}/usage", AdminToken, usage::owner_usage),
        route!(GET "/v1/usage/top", AdminToken, usage::top),
        route!(GET "/v1/audit", AdminToken, keys::audit),
        route!(DELETE "/v1/sessions/{id}", AdminToken, sessions::revoke_session),
    ]
}

/// The admin router, built from [`routes`]: token-protected routes behind
/// [`require_admin`], open ones without; unknown paths answer `not_found`.
pub fn router(state: AdminState) -> Router {
    let mut open = Router::new();
    let mut protected = Router::new();
    for route in routes() {
        match route.access {
            Access::Open => open = open.route(route.path, route.handler),
            Access::AdminToken => protected = protected.route(route.path, route.handler),
        }
    }
    protected
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .merge(open)
        .merge(console::router())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// Serves the admin router until shutdown, then drains within `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let (drained_tx, mut drained_rx) = watch::channel(false);
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
        let _ = drained_tx.send(true);
    });
    let run = async {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "admin listener failed");
        }
    };
    tokio::pin!(run);
    tokio::select! {
        () = &mut run => {}
        _ = drained_rx.changed() => {
            // Shutdown began: give in-flight admin requests the grace period.
            if tokio::time::timeout(grace, &mut run).await.is_err() {
                tracing::warn!("admin listener did not drain within the grace period");
            }
        }
    }
}

/// Lets a request through only with a valid admin token, recording who
/// called in its extensions.
async fn require_admin(State(state): State<AdminState>, mut request: Request, next: Next) -> Response {
    let checked = state
        .auth
        .authenticate(request.headers().get(AUTHORIZATION).map(|v| v.as_bytes()))
        .await;
    match checked {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            let mut response = next.run(request).await;
            // Admin answers carry secrets (create, rotate) and key state that
            // changes: no cache may keep them.
            response
                .headers_mut()
                .entry(CACHE_CONTROL)
                .or_insert(HeaderValue::from_static("no-store"));
            response
        }
        Err(refusal) => {
            tracing::info!(
                method = %request.method(),
                path = request.uri().path(),
                reason = ?refusal,
                "admin request refused"
            );
            AdminError::Unauthorized(refusal).into_response()
        }
    }
}

/// Liveness: 200 while the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process serves.", body = Object, example = json!({"status": "ok"})))
)]
async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

/// Readiness: 200 when the key store answers, else 503.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The key store answers.", body = Object, example = json!({"status": "ready", "store": "ok"})),
        (status = 503, description = "The key store is unreachable.", body = Object, example = json!({"status": "not_ready", "store": "unreachable"})),
    )
)]
async fn readyz(State(state): State<AdminState>) -> Response {
    let ready = matches!(
        tokio::time::timeout(READY_PROBE_TIMEOUT, state.store.ping()).await,
        Ok(Ok(()))
    );
    if ready {
        (
            StatusCode::OK,
            axum::Json(json!({ "status": "ready", "store": "ok" })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_ready", "store": "unreachable" })),
        )
            .into_response()
    }
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of the admin API.", body = Object))
)]
async fn openapi_json() -> Response {
    axum::Json(openapi::ApiDoc::openapi()).into_response()
}

/// A known path with a method it does not serve: the problem shape, with
/// the `Allow` header axum adds from the path's routes. Answered before the
/// admin token is checked, as an unknown path is.
async fn method_not_allowed(method: Method) -> Response {
    AdminError::MethodNotAllowed(method).into_response()
}

async fn not_found() -> Response {
    AdminError::NotFound("No such admin endpoint.".into()).into_response()
}
