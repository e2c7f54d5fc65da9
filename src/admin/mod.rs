//! The admin listener: `/healthz` and `/readyz` now; the key management API,
//! `/openapi.json` and `/metrics` join it in later issues. Thin handlers over
//! shared state; errors in the problem+json shape.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::problem::{Code, Problem, ProblemRenderer};
use crate::store::SharedStore;

/// How long `/readyz` waits for the store before answering not ready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    store: SharedStore,
    renderer: Arc<ProblemRenderer>,
}

impl AdminState {
    /// Admin state over the gateway's store.
    pub fn new(store: SharedStore) -> Self {
        Self {
            store,
            // The admin API always answers in the default problem shape:
            // `[errors]` templates mimic the proxied API, not ours.
            renderer: Arc::new(ProblemRenderer::new(&Default::default())),
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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

/// Liveness: 200 while the process serves.
async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({ "status": "ok" }))).into_response()
}

/// Readiness: 200 when the key store answers, else 503.
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

async fn not_found(State(state): State<AdminState>) -> Response {
    state
        .renderer
        .render(&Problem::new(Code::NotFound).with_message("No such admin endpoint."))
}
