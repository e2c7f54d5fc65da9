//! The token-exchange session handlers of the admin API (SPEC §7, §8):
//! revoking a session. Thin over
//! [`crate::manage::KeyManager::revoke_session`], which checks the id's
//! shape, reads the clock and leaves the store to audit `session_revoked`.
//! Sessions are opened by the token exchange on the proxy listener, never
//! here. The `#[utoipa::path]` attribute is the OpenAPI description.

use axum::extract::{Path, State};
use axum::{Extension, Json};

use super::AdminState;
use super::auth::AdminPrincipal;
use super::dto::{ProblemBody, SessionView};
use super::error::AdminError;

/// Revokes a token-exchange session: its access and refresh tokens stop
/// working at once, on every gateway sharing the store. The key stays
/// usable (revoke the key to stop it too). Revoking a revoked session
/// changes nothing: the answer keeps its first `revoked_at` and reason.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session id (`ses_…`), the `sid` claim of its access tokens.")),
    responses(
        (status = 200, description = "The revoked session.", body = SessionView),
        (status = 404, description = "No session has this id.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The key store is unreachable (`auth_unavailable`): retry later.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_session(
    State(state): State<AdminState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, AdminError> {
    let session = state.manager.revoke_session(&id, &caller.actor()).await?;
    Ok(Json(SessionView::new(&session)))
}
