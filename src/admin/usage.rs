//! The usage-history handlers of the admin API (SPEC §13): a key's and an
//! owner's series, and the busiest keys of a range. Each parses its query
//! ([`super::dto`]), calls one [`crate::manage::KeyManager`] operation (the
//! same the CLI and the console call) and maps the result.

use axum::Json;
use axum::extract::{Path, RawQuery, State};

use super::AdminState;
use super::dto::{OwnerUsageView, ProblemBody, SeriesView, TopView, UsageView, series_query, top_query};
use super::error::AdminError;

/// A key's request counts by outcome and its last use (all time), and its
/// requests per minute, hour or day over a range, from the batched usage
/// counters (up to `usage.flush_interval` behind the traffic).
#[utoipa::path(
    get,
    path = "/v1/keys/{id}/usage",
    tag = "usage",
    params(
        ("id" = String, Path, description = "The key id (`key_…`)."),
        ("from" = Option<String>, Query, description = "Start of the range, RFC 3339, rounded down to a bucket edge (default: `to` minus 24 hours)."),
        ("to" = Option<String>, Query, description = "End of the range (exclusive), RFC 3339, rounded up to a bucket edge (default: now; a future instant is allowed)."),
        ("granularity" = Option<String>, Query, description = "`minute`, `hour` or `day` (default: the finest whose retention covers `from` and gives at most 1,000 buckets)."),
    ),
    responses(
        (status = 200, description = "The key's usage.", body = UsageView),
        (status = 404, description = "No key has this id.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A bad range: not RFC 3339, `from` not before `to`, more than 10,000 buckets, or a granularity whose retention does not reach `from` (the field is named).", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn key_usage(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<UsageView>, AdminError> {
    let query = series_query(query.as_deref())?;
    let history = state.manager.key_history(&id, &query).await?;
    Ok(Json(UsageView::new(&id, history)))
}

/// An owner's usage: request counts by outcome and latest use of its keys
/// (all time), and its requests per bucket over a range, over every key it
/// owned when the requests were made.
#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/usage",
    tag = "usage",
    params(
        ("owner" = String, Path, description = "The owner, as set on its keys."),
        ("from" = Option<String>, Query, description = "As for a key's usage."),
        ("to" = Option<String>, Query, description = "As for a key's usage."),
        ("granularity" = Option<String>, Query, description = "As for a key's usage."),
    ),
    responses(
        (status = 200, description = "The owner's usage.", body = OwnerUsageView),
        (status = 404, description = "No key has this owner, and it has no usage history.", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "A bad range (the field is named).", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn owner_usage(
    State(state): State<AdminState>,
    Path(owner): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<OwnerUsageView>, AdminError> {
    let query = series_query(query.as_deref())?;
    let history = state.manager.owner_history(&owner, &query).await?;
    Ok(Json(OwnerUsageView {
        owner,
        usage: history.usage,
        series: SeriesView::new(&history.series),
    }))
}

/// The busiest keys of a range, by all requests or by refusals.
#[utoipa::path(
    get,
    path = "/v1/usage/top",
    tag = "usage",
    params(
        ("from" = Option<String>, Query, description = "Start of the range, RFC 3339 (default: `to` minus 24 hours); rounded down to a bucket edge as for a series."),
        ("to" = Option<String>, Query, description = "End of the range (exclusive), RFC 3339 (default: now)."),
        ("by" = Option<String>, Query, description = "`requests` ranks by all requests, allowed and refused (default); `refused` by refusals, leaving out keys without any."),
        ("limit" = Option<u32>, Query, description = "How many keys, 1 to 1,000 (default 10).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "The busiest keys, busiest first.", body = TopView),
        (status = 422, description = "A bad parameter (the field is named).", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn top(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<TopView>, AdminError> {
    let query = top_query(query.as_deref())?;
    let top = state.manager.top(&query).await?;
    Ok(Json(TopView::new(&top)))
}
