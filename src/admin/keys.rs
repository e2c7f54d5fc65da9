//! The key management handlers of the admin API (SPEC §7): each parses its
//! input ([`super::dto`]), calls one [`crate::manage::KeyManager`] operation
//! — the same the CLI calls, so both write the same audit rows — and maps
//! the result. The `#[utoipa::path]` attributes are their OpenAPI
//! description.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::AdminState;
use super::auth::AdminPrincipal;
use super::cursor::{CursorError, Position};
use super::dto::{
    AdminJson, AuditPage, AuditQuery, CreateKeyRequest, IssuedKey, KeyPage, ListKeysQuery, OptionalJson,
    ProblemBody, RotateKeyRequest, UpdateKeyRequest,
};
use super::error::AdminError;
use crate::keys::{KeyId, KeyStatus};
use crate::manage::KeyView;
use crate::store::{KeyFilter, PageRequest};

/// Issues a key. The response carries the secret in `key`: the only time it
/// is shown.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, with its secret in `key` (shown only now).", body = IssuedKey),
        (status = 400, description = "The body is not JSON.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad fields: unknown plan, bad scope, past expiry, unknown field…", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_key(
    State(state): State<AdminState>,
    Extension(caller): Extension<AdminPrincipal>,
    AdminJson(body): AdminJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<IssuedKey>), AdminError> {
    let now = state.manager.now();
    let request = body.check(|body, errors| body.check(&state.manager, now, errors))?;
    let issued = state.manager.create(request, &caller.actor()).await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedKey::new(&issued, state.manager.now())),
    ))
}

/// Lists keys in id (creation) order, one page at a time. Paging is by
/// keyset, so keys created meanwhile never make a key appear twice or be
/// skipped; pass `next_cursor` back unchanged, with the same filters.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    params(
        ("owner" = Option<String>, Query, description = "Only this owner's keys."),
        ("status" = Option<String>, Query, description = "Only keys with this status: active, inactive or revoked."),
        ("limit" = Option<u32>, Query, description = "Keys per page, 1 to 500 (default 100).", minimum = 1, maximum = 500),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "One page of keys.", body = KeyPage),
        (status = 400, description = "The cursor was altered, or issued for other filters.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A bad query parameter.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_keys(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<KeyPage>, AdminError> {
    let query = ListKeysQuery::parse(query.as_deref())?;
    let after = match &query.presented_cursor {
        None => None,
        Some(cursor) => match state.cursors.verify(cursor).map_err(bad_cursor)? {
            Position::Keys { after, owner, status } if owner == query.owner && status == query.status => {
                Some(
                    after
                        .parse::<KeyId>()
                        .map_err(|_| bad_cursor(CursorError::Tampered))?,
                )
            }
            _ => {
                return Err(AdminError::BadRequest(
                    "The cursor belongs to another listing: repeat the owner and status filters it was issued with, or start again without a cursor.".into(),
                ));
            }
        },
    };
    let filter = KeyFilter {
        owner: query.owner.clone(),
        status: query.status,
        ..KeyFilter::default()
    };
    let page = state
        .manager
        .list(
            &filter,
            PageRequest {
                limit: query.limit,
                after,
            },
        )
        .await?;
    let now = state.manager.now();
    Ok(Json(KeyPage {
        data: page.items.iter().map(|k| KeyView::new(k, now)).collect(),
        next_cursor: page.next.map(|after| {
            state.cursors.sign(&Position::Keys {
                after: after.to_string(),
                owner: query.owner,
                status: query.status,
            })
        }),
    }))
}

/// One key.
#[utoipa::path(
    get,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key id (`key_…`).")),
    responses(
        (status = 200, description = "The key.", body = KeyView),
        (status = 404, description = "No key has this id.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_key(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    let key = state.manager.get(&id).await?;
    Ok(Json(KeyView::new(&key, state.manager.now())))
}

/// Changes a key's name, scopes, plan, expiry (`null` = never), owner,
/// metadata or status (`active` / `inactive`). All or nothing.
#[utoipa::path(
    patch,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "The key id (`key_…`).")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The key after the change.", body = KeyView),
        (status = 400, description = "The body is not JSON.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No key has this id.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked: its status cannot change.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Bad fields (status `revoked` included: use the revoke endpoint).", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn update_key(
    State(state): State<AdminState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    AdminJson(body): AdminJson<UpdateKeyRequest>,
) -> Result<Json<KeyView>, AdminError> {
    let now = state.manager.now();
    let patch = body.check(|body, errors| body.check(&state.manager, now, errors))?;
    let key = state.manager.update(&id, patch, &caller.actor()).await?;
    Ok(Json(KeyView::new(&key, state.manager.now())))
}

/// Revokes a key, permanently. Revoking a revoked key changes nothing.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/revoke",
    tag = "keys",
    params(("id" = String, Path, description = "The key id (`key_…`).")),
    responses(
        (status = 200, description = "The revoked key.", body = KeyView),
        (status = 404, description = "No key has this id.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_key(
    State(state): State<AdminState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    let key = state
        .manager
        .set_status(&id, KeyStatus::Revoked, &caller.actor())
        .await?;
    Ok(Json(KeyView::new(&key, state.manager.now())))
}

/// Issues a new secret for the key. The previous secret keeps working for
/// `grace_period` (default 0: it stops at once).
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/rotate",
    tag = "keys",
    params(("id" = String, Path, description = "The key id (`key_…`).")),
    request_body(content = Option<RotateKeyRequest>, description = "Optional; an empty body means no grace period."),
    responses(
        (status = 200, description = "The key, with its new secret in `key` (shown only now).", body = IssuedKey),
        (status = 400, description = "The body is not JSON.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No key has this id.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The key is revoked.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A bad grace period.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_key(
    State(state): State<AdminState>,
    Extension(caller): Extension<AdminPrincipal>,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RotateKeyRequest>,
) -> Result<Json<IssuedKey>, AdminError> {
    let grace = body.check(|body, errors| body.check(errors))?;
    let issued = state.manager.rotate(&id, grace, &caller.actor()).await?;
    Ok(Json(IssuedKey::new(&issued, state.manager.now())))
}

/// The audit trail, oldest first: who changed which key, how, when.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(
        ("limit" = Option<u32>, Query, description = "Entries per page, 1 to 500 (default 100).", minimum = 1, maximum = 500),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "One page of audit entries.", body = AuditPage),
        (status = 400, description = "The cursor was altered.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A bad query parameter.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn audit(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, AdminError> {
    let query = AuditQuery::parse(query.as_deref())?;
    let after = match &query.presented_cursor {
        None => None,
        Some(cursor) => match state.cursors.verify(cursor).map_err(bad_cursor)? {
            Position::Audit { after } => Some(after),
            Position::Keys { .. } => {
                return Err(AdminError::BadRequest(
                    "The cursor belongs to the key listing, not the audit trail: start again without a cursor."
                        .into(),
                ));
            }
        },
    };
    let page = state
        .manager
        .audit(PageRequest {
            limit: query.limit,
            after,
        })
        .await?;
    Ok(Json(AuditPage {
        data: page.items,
        next_cursor: page
            .next
            .map(|after| state.cursors.sign(&Position::Audit { after })),
    }))
}

fn bad_cursor(e: CursorError) -> AdminError {
    AdminError::BadRequest(e.to_string())
}
