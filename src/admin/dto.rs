//! What the admin API reads and writes: request bodies and query strings
//! (parsed here, every bad field named), the JSON extractor that turns
//! body errors into problems, and the response views. The key view itself
//! is [`KeyView`], shared with the CLI's `--json` output; a session's is
//! [`SessionView`].
//!
//! Parsing collects every problem it can see before answering, using the
//! same validation functions as [`crate::manage`] (which checks again), so a
//! client fixes all its fields in one round trip.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use chrono::{DateTime, Utc};
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use super::error::AdminError;
use crate::keys::model::{parse_duration, parse_expiry};
use crate::keys::{KeyId, KeyPatch, KeyStatus, SecretString};
use crate::keys::{RevokeReason, Session, SessionId};
pub use crate::manage::history::{PointView, SeriesView, UsageView};
use crate::manage::history::{Top, TopQuery, parse_rank, parse_top_limit, rank_name};
use crate::manage::series::SeriesQuery;
use crate::manage::{CreateKey, FieldError, Issued, KeyFields, KeyManager, KeyView};
use crate::store::{AuditEntry, KeyTotals, Usage};

/// Items per page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: u32 = 500;

/// A JSON request body, parsed with every failure as a problem: a body that
/// is not JSON (or not sent as JSON) is 400 `bad_request`; JSON of the wrong
/// shape (unknown field, wrong type, missing field) is held in the
/// [`Shaped`] value, so that the handler's rule checks of the other fields
/// are answered in the same 422 `validation_failed`.
#[derive(Debug)]
pub struct AdminJson<T>(pub Shaped<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AdminJson<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            AdminError::BadRequest(format!("Cannot read the request body: {}.", e.body_text()))
        })?;
        parse_json(&headers, &body).map(Self)
    }
}

/// Like [`AdminJson`], but an empty body is `T::default()` (for bodies
/// whose every field is optional, e.g. rotate's).
#[derive(Debug)]
pub struct OptionalJson<T>(pub Shaped<T>);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            AdminError::BadRequest(format!("Cannot read the request body: {}.", e.body_text()))
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Shaped::valid(T::default())));
        }
        parse_json(&headers, &body).map(Self)
    }
}

/// A request body deserialised as far as its JSON allows, with the fields
/// that did not fit. Fields of the wrong type hold a placeholder, so the
/// value is only reachable through [`Shaped::check`], which answers every
/// problem — the shape errors and the rule errors of the other fields —
/// and never hands out a value built from placeholders.
#[derive(Debug)]
pub struct Shaped<T> {
    value: Option<T>,
    errors: Errors,
}

impl<T> Shaped<T> {
    fn valid(value: T) -> Self {
        Self {
            value: Some(value),
            errors: Errors::default(),
        }
    }

    /// Runs `rules` on the value (they add rule errors; those about a field
    /// that already failed its shape are dropped), then answers the value
    /// if no field is bad, or every bad field as one
    /// [`AdminError::Validation`].
    pub fn check<R>(self, rules: impl FnOnce(T, &mut Errors) -> R) -> Result<R, AdminError> {
        let mut errors = self.errors;
        match self.value {
            Some(value) => {
                let checked = rules(value, &mut errors);
                errors.finish(checked)
            }
            None => Err(errors.into_error()),
        }
    }
}

/// JSON values tried, in order, in place of a field whose own value does not
/// fit, until the rest of the body deserialises: one of them fits every
/// field type of the admin API's bodies.
const PLACEHOLDERS: [fn() -> serde_json::Value; 6] = [
    || serde_json::Value::Null,
    || serde_json::Value::String(String::new()),
    || serde_json::Value::Array(Vec::new()),
    || serde_json::Value::Object(serde_json::Map::new()),
    || serde_json::Value::from(0),
    || serde_json::Value::Bool(false),
];

/// Parses a JSON body sent with a JSON content type: syntax problems are
/// 400 `bad_request`; every field of the wrong shape is collected.
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<Shaped<T>, AdminError> {
    let json_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_media_type);
    if !json_type {
        return Err(AdminError::BadRequest(
            "Send the request body as JSON, with Content-Type: application/json.".into(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::BadRequest(
            "The request body is empty: send a JSON object.".into(),
        ));
    }
    // Syntax first (400), then shape (422): a body that is JSON but not an
    // object, or an object with bad fields, is the client's data to fix.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("The request body is not valid JSON: {e}.")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(AdminError::field("body", "the body must be a JSON object"));
    };
    Ok(deserialize_collecting(object))
}

/// Most deserialising rounds one body gets: every body of the admin API
/// has at most seven fields, each needing at most one round per
/// placeholder, so this is never reached by a body a client means; a body
/// of thousands of unknown fields stops here, each round costing one pass
/// over it, instead of a pass per field.
const MAX_ROUNDS: usize = 64;

/// Deserialises `object` as `T`, collecting every field serde refuses:
/// serde stops at the first, so each refused field is named, then removed
/// (unknown fields) or replaced by the first [`PLACEHOLDERS`] entry that
/// fits, and deserialising starts again, at most [`MAX_ROUNDS`] times.
fn deserialize_collecting<T: DeserializeOwned>(
    mut object: serde_json::Map<String, serde_json::Value>,
) -> Shaped<T> {
    let mut errors = Errors::default();
    // Per bad field: the next placeholder to try.
    let mut tries: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for _ in 0..MAX_ROUNDS {
        let error = match serde_path_to_error::deserialize(serde_json::Value::Object(object.clone())) {
            Ok(value) => {
                return Shaped {
                    value: Some(value),
                    errors,
                };
            }
            Err(error) => error,
        };
        let path = error.path().to_string();
        let inner = error.into_inner();
        let unknown = inner.to_string().starts_with("unknown field");
        let field_error = json_field_error(&path, &inner);
        let top = top_level(&field_error.field).to_owned();
        if top == "body" {
            errors.push(field_error);
            break;
        }
        if !tries.contains_key(&top) {
            errors.push(field_error);
        }
        if unknown {
            object.remove(&top);
            tries.insert(top, PLACEHOLDERS.len());
            continue;
        }
        let next = tries.entry(top.clone()).or_insert(0);
        let Some(placeholder) = PLACEHOLDERS.get(*next) else {
            break;
        };
        *next += 1;
        object.insert(top, placeholder());
    }
    Shaped { value: None, errors }
}

/// The body member a field path starts with: `scopes` of `scopes[1]`,
/// `credits` of `credits.refill.amount`.
fn top_level(field: &str) -> &str {
    field.split(['.', '[']).next().unwrap_or(field)
}

/// `application/json` or `application/<anything>+json`, parameters allowed.
fn is_json_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A serde data error as a field error: the path serde reached (or, for a
/// missing or unknown field at that level, the field it names), and serde's
/// message.
fn json_field_error(path: &str, error: &serde_json::Error) -> FieldError {
    let message = error.to_string();
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|lead| message.strip_prefix(lead))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let field = match (path, named) {
        (".", Some(name)) => name,
        (".", None) => "body".to_owned(),
        (path, Some(name)) if message.starts_with("missing") => format!("{path}.{name}"),
        (path, _) => path.to_owned(),
    };
    FieldError::new(field, message)
}

/// Field errors so far; turns into one [`AdminError::Validation`]. A field
/// whose JSON did not fit its type is named once, by that shape error: the
/// rule errors a placeholder in its place would draw are dropped.
#[derive(Debug, Default)]
pub struct Errors {
    list: Vec<FieldError>,
    /// Body members that failed their shape.
    misshapen: BTreeSet<String>,
}

impl Errors {
    /// Adds a rule error, unless `field`'s member already failed its shape.
    pub fn add(&mut self, field: impl Into<String>, message: impl ToString) {
        let field = field.into();
        if !self.misshapen.contains(top_level(&field)) {
            self.list.push(FieldError::new(field, message.to_string()));
        }
    }

    /// Adds rule errors (from `manage`), each unless its member already
    /// failed its shape.
    pub fn extend(&mut self, errors: impl IntoIterator<Item = FieldError>) {
        for error in errors {
            self.add(error.field, error.message);
        }
    }

    /// Adds a shape error.
    fn push(&mut self, error: FieldError) {
        self.misshapen.insert(top_level(&error.field).to_owned());
        self.list.push(error);
    }

    /// Whether no field is bad so far.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn into_error(self) -> AdminError {
        AdminError::Validation(self.list)
    }

    fn finish<T>(self, value: T) -> Result<T, AdminError> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.into_error())
        }
    }
}

/// `POST /v1/keys`: what `keygate keys create` takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Human name (1 to 200 characters).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub name: String,
    /// Granted scopes (letters, digits and `_ . : - / *`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Plan, one of the configured `[plans]`; default `keys.default_plan`
    /// (unset: the key has no plan, so API access and no rate limits).
    #[serde(default)]
    pub plan: Option<String>,
    /// Expiry: an RFC 3339 instant, a duration from now such as `30d`,
    /// `"never"`, or null (never, the default).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Owner (account / tenant; 1 to 200 characters).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub owner: Option<String>,
    /// Key prefix, e.g. `sk_live_`: letters and digits in groups, each
    /// group ending with `_`; default `keys.default_prefix`.
    #[serde(default)]
    #[schema(min_length = 2, max_length = 24, pattern = "^([A-Za-z0-9]+_)+$")]
    pub prefix: Option<String>,
    /// Free-form JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

impl CreateKeyRequest {
    /// The create request; every bad field goes to `errors`: the
    /// expiry's syntax here, every rule by `manage`.
    pub fn check(self, manager: &KeyManager, now: DateTime<Utc>, errors: &mut Errors) -> CreateKey {
        let expires_at = match self.expires_at.as_deref() {
            None => None,
            Some(when) => parse_expiry(when, now).unwrap_or_else(|e| {
                errors.add("expires_at", e);
                None
            }),
        };
        errors.extend(manager.problems(&KeyFields {
            name: Some(&self.name),
            owner: self.owner.as_deref(),
            scopes: Some(&self.scopes),
            plan: self.plan.as_deref(),
            expires_at,
            prefix: self.prefix.as_deref(),
            metadata: self.metadata.as_ref(),
        }));
        CreateKey {
            name: self.name,
            owner: self.owner,
            scopes: self.scopes.into_iter().collect(),
            plan: self.plan,
            expires_at,
            prefix: self.prefix,
            metadata: self.metadata,
        }
    }
}

/// `PATCH /v1/keys/{id}`: the fields to change; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// New name (1 to 200 characters).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub name: Option<String>,
    /// New scopes (replaces the set).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// New plan.
    #[serde(default)]
    pub plan: Option<String>,
    /// New expiry: RFC 3339, a duration from now such as `30d`, or null /
    /// `"never"` for never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Option<String>>,
    /// `active` or `inactive` (revoke with `POST /v1/keys/{id}/revoke`).
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(active|inactive)$")]
    pub status: Option<String>,
    /// New owner; null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// New metadata (a JSON object; replaces it).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

impl UpdateKeyRequest {
    /// The patch; every bad field goes to `errors`: the syntax of the
    /// expiry and status here, every rule by `manage`.
    pub fn check(self, manager: &KeyManager, now: DateTime<Utc>, errors: &mut Errors) -> KeyPatch {
        let expires_at = match &self.expires_at {
            None => None,
            Some(None) => Some(None),
            Some(Some(when)) => Some(parse_expiry(when, now).unwrap_or_else(|e| {
                errors.add("expires_at", e);
                None
            })),
        };
        let status = match self.status.as_deref() {
            None => None,
            Some("active") => Some(KeyStatus::Active),
            Some("inactive") => Some(KeyStatus::Inactive),
            Some("revoked") => {
                errors.add(
                    "status",
                    "revoke a key with POST /v1/keys/{id}/revoke (revocation is final); PATCH sets only active or inactive",
                );
                None
            }
            Some(other) => {
                errors.add(
                    "status",
                    format!("unknown status {other:?}: use active or inactive"),
                );
                None
            }
        };
        errors.extend(manager.problems(&KeyFields {
            name: self.name.as_deref(),
            owner: self.owner.as_ref().and_then(Option::as_deref),
            scopes: self.scopes.as_deref(),
            plan: self.plan.as_deref(),
            expires_at: expires_at.flatten(),
            prefix: None,
            metadata: self.metadata.as_ref(),
        }));
        let patch = KeyPatch {
            name: self.name,
            owner: self.owner,
            scopes: self.scopes.map(|s| s.into_iter().collect()),
            plan: self.plan,
            expires_at,
            status,
            metadata: self.metadata,
        };
        if errors.is_empty() && patch.is_empty() {
            errors.add(
                "body",
                "the patch changes nothing: set at least one of name, scopes, plan, expires_at, status, owner, metadata",
            );
        }
        patch
    }
}

/// `POST /v1/keys/{id}/rotate`; the body may be empty (no grace period).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the previous secret keeps working, e.g. `24h`; default `0`
    /// (it stops at once).
    #[serde(default)]
    pub grace_period: Option<String>,
}

impl RotateKeyRequest {
    /// The grace period; a bad one goes to `errors`.
    pub fn check(&self, errors: &mut Errors) -> chrono::Duration {
        match self.grace_period.as_deref() {
            None => chrono::Duration::zero(),
            Some(text) => parse_duration(text).unwrap_or_else(|e| {
                errors.add("grace_period", e);
                chrono::Duration::zero()
            }),
        }
    }
}

/// Deserializes a field that is present (maybe `null`) as `Some(…)`, so an
/// absent field (`None`, via `#[serde(default)]`) differs from `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `GET /v1/keys` query parameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ListKeysQuery {
    /// Only this owner's keys.
    pub owner: Option<String>,
    /// Only keys with this status.
    pub status: Option<KeyStatus>,
    /// Page size.
    pub limit: u32,
    /// Where to resume (unverified until the cursor signer checks it).
    pub presented_cursor: Option<String>,
}

impl ListKeysQuery {
    /// Parses `owner`, `status`, `limit` and `cursor`; empty values count as
    /// absent.
    pub fn parse(raw: Option<&str>) -> Result<Self, AdminError> {
        let mut errors = Errors::default();
        let mut params = Params::parse(raw, &["owner", "status", "limit", "cursor"], &mut errors)?;
        let status = params
            .take("status")
            .and_then(|s| s.parse::<KeyStatus>().map_err(|e| errors.add("status", e)).ok());
        let limit = limit(params.take("limit"), &mut errors);
        errors.finish(Self {
            owner: params.take("owner"),
            status,
            limit,
            presented_cursor: params.take("cursor"),
        })
    }
}

/// `GET /v1/audit` query parameters, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditQuery {
    /// Page size.
    pub limit: u32,
    /// Where to resume (unverified).
    pub presented_cursor: Option<String>,
}

impl AuditQuery {
    /// Parses `limit` and `cursor`.
    pub fn parse(raw: Option<&str>) -> Result<Self, AdminError> {
        let mut errors = Errors::default();
        let mut params = Params::parse(raw, &["limit", "cursor"], &mut errors)?;
        let limit = limit(params.take("limit"), &mut errors);
        errors.finish(Self {
            limit,
            presented_cursor: params.take("cursor"),
        })
    }
}

/// Query parameters by name, each known name at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<&str>, known: &[&str], errors: &mut Errors) -> Result<Self, AdminError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| AdminError::BadRequest(format!("The query string is malformed: {e}.")))?;
        let mut seen = BTreeSet::new();
        let mut kept = Vec::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                errors.add(name, format!("unknown query parameter: use {}", known.join(", ")));
            } else if !seen.insert(name.clone()) {
                errors.add(name, "given more than once");
            } else if !value.is_empty() {
                kept.push((name, value));
            }
        }
        Ok(Self(kept))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.swap_remove(i).1)
    }
}

fn limit(text: Option<String>, errors: &mut Errors) -> u32 {
    match text {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.add(
                    "limit",
                    format!("{text:?} is not a page size: use a whole number from 1 to {MAX_LIMIT}"),
                );
                DEFAULT_LIMIT
            }
        },
    }
}

/// A key with its secret: the answer of create and rotate, the only time
/// the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    /// The key.
    #[serde(flatten)]
    pub view: KeyView,
    /// The secret: store it now, it is never shown again.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String, example = "kg_live_3hT9kQ2mVx7bN4pR8sW1yZ6cF0dG5jL2uA9eHk")]
    pub key: SecretString,
}

impl IssuedKey {
    /// The view of what create or rotate issued, at `now`.
    pub fn new(issued: &Issued, now: DateTime<Utc>) -> Self {
        Self {
            view: KeyView::new(&issued.key, now),
            key: issued.secret.clone(),
        }
    }
}

fn expose<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

/// One page of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    /// The keys, in id (creation) order.
    pub data: Vec<KeyView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One page of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The entries, oldest first.
    pub data: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// An owner's usage: all-time counters over its keys and a series over
/// every key it owned (SPEC §13).
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerUsageView {
    /// The owner.
    pub owner: String,
    /// Counts by outcome, total and latest use of the owner's keys, all
    /// time.
    #[serde(flatten)]
    pub usage: Usage,
    /// Requests per bucket over the range asked for.
    pub series: SeriesView,
}

/// `GET /v1/keys/{id}/usage` and `GET /v1/owners/{owner}/usage` query
/// parameters.
pub fn series_query(raw: Option<&str>) -> Result<SeriesQuery, AdminError> {
    let mut errors = Errors::default();
    let mut params = Params::parse(raw, &["from", "to", "granularity"], &mut errors)?;
    let (from, to, granularity) = (params.take("from"), params.take("to"), params.take("granularity"));
    let query = SeriesQuery::parse(from.as_deref(), to.as_deref(), granularity.as_deref())
        .map_err(|e| errors.extend(e))
        .unwrap_or_default();
    errors.finish(query)
}

/// `GET /v1/usage/top` query parameters.
pub fn top_query(raw: Option<&str>) -> Result<TopQuery, AdminError> {
    let mut errors = Errors::default();
    let mut params = Params::parse(raw, &["from", "to", "by", "limit"], &mut errors)?;
    let (from, to) = (params.take("from"), params.take("to"));
    let mut query = TopQuery::default();
    match SeriesQuery::parse(from.as_deref(), to.as_deref(), None) {
        Ok(range) => query.range = range,
        Err(e) => errors.extend(e),
    }
    if let Some(by) = params.take("by") {
        parse_rank(&by).map_or_else(|e| errors.extend([e]), |rank| query.rank = rank);
    }
    if let Some(limit) = params.take("limit") {
        parse_top_limit(&limit).map_or_else(|e| errors.extend([e]), |limit| query.limit = limit);
    }
    errors.finish(query)
}

/// The busiest keys of a range (SPEC §13).
#[derive(Debug, Serialize, ToSchema)]
pub struct TopView {
    /// The range's start, on a bucket edge.
    pub from: DateTime<Utc>,
    /// The range's end, on a bucket edge.
    pub to: DateTime<Utc>,
    /// `requests` (all requests) or `refused` (refusals).
    #[schema(example = "requests")]
    pub by: &'static str,
    /// Busiest first.
    pub data: Vec<TopKeyView>,
}

impl TopView {
    /// The view of a ranking.
    pub fn new(top: &Top) -> Self {
        Self {
            from: top.range.from,
            to: top.range.to,
            by: rank_name(top.rank),
            data: top.keys.iter().map(TopKeyView::new).collect(),
        }
    }
}

/// One ranked key.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopKeyView {
    /// The key.
    #[schema(value_type = String)]
    pub key_id: KeyId,
    /// Its owner.
    pub owner: Option<String>,
    /// Its name.
    pub name: String,
    /// Requests in the range, all outcomes.
    pub total: u64,
    /// Allowed requests.
    pub ok: u64,
    /// Refused requests.
    pub refused: u64,
}

impl TopKeyView {
    fn new(totals: &KeyTotals) -> Self {
        Self {
            key_id: totals.key_id.clone(),
            owner: totals.owner.clone(),
            name: totals.name.clone(),
            total: totals.total,
            ok: totals.ok,
            refused: totals.total.saturating_sub(totals.ok),
        }
    }
}

/// A token-exchange session as the admin API shows it: who opened it, what
/// it grants, until when, and whether it was revoked. Never the refresh
/// digests or the access token's `jti`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionView {
    /// The session id, the `sid` claim of its access tokens.
    #[schema(value_type = String, example = "ses_01kaqz3m5v8x2c4n6b7d9f0g1h")]
    pub id: SessionId,
    /// The key the session was opened with.
    #[schema(value_type = String, example = "key_01kaqz3m5v8x2c4n6b7d9f0g1h")]
    pub key_id: KeyId,
    /// The client's `session_id` at login; `null` for the key's default
    /// session.
    pub client_session: Option<String>,
    /// Scopes granted at login, sorted.
    pub scopes: BTreeSet<String>,
    /// When the session was opened.
    pub created_at: DateTime<Utc>,
    /// When its current refresh token expires.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked; `null` while it is not.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked; `null` while it is not.
    #[schema(schema_with = revoke_reason_schema)]
    pub revoked_reason: Option<RevokeReason>,
}

impl SessionView {
    /// The view of a stored session.
    pub fn new(record: &Session) -> Self {
        Self {
            id: record.id.clone(),
            key_id: record.key_id.clone(),
            client_session: record.client_session.clone(),
            scopes: record.scopes.clone(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            revoked_reason: record.revoked_reason,
        }
    }
}

/// The schema of an optional [`RevokeReason`]: its stored spellings,
/// or `null`.
fn revoke_reason_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type, schema::SchemaType};
    let reasons = [RevokeReason::Admin, RevokeReason::RefreshReuse];
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(
            reasons
                .iter()
                .map(|r| serde_json::Value::from(r.as_str()))
                .chain([serde_json::Value::Null]),
        ))
        .description(Some(
            "`admin` (revoked through the admin API or the CLI) or `refresh_reuse` (a spent refresh token \
             was presented again); `null` while the session is not revoked.",
        ))
        .build()
}

/// The problem+json body of every admin API error (RFC 9457); documents
/// what `crate::problem` renders.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProblemBody {
    /// `urn:keygate:problem:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short title of the code.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong and what to do.
    pub detail: String,
    /// The keygate error code, e.g. `validation_failed`.
    pub code: String,
    /// The bad fields (`validation_failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldErrorBody>>,
}

/// One bad field of a `validation_failed` problem.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldErrorBody {
    /// The field's path, e.g. `scopes[1]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TokenDigest;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        h
    }

    fn fields(e: AdminError) -> Vec<(String, String)> {
        match e {
            AdminError::Validation(errors) => errors.into_iter().map(|e| (e.field, e.message)).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn body_errors() {
        let h = json_headers();
        let bad_request = |body: &str, headers: &HeaderMap| {
            matches!(
                parse_json::<CreateKeyRequest>(headers, body.as_bytes()),
                Err(AdminError::BadRequest(_))
            )
        };
        assert!(bad_request("{", &h));
        assert!(bad_request("", &h));
        assert!(bad_request("name=x", &h));
        assert!(bad_request(r#"{"name":"x"} trailing"#, &h));
        assert!(bad_request(r#"{"name":"x"}"#, &HeaderMap::new()));
        let cases = [
            (r#"{"name":"x","nope":1}"#, "nope"),
            (r#"{"scopes":["a"]}"#, "name"),
            (r#"{"name":5}"#, "name"),
            (r#"{"name":"x","scopes":["a",7]}"#, "scopes[1]"),
            ("[1]", "body"),
        ];
        for (body, field) in cases {
            let e = parse_json::<CreateKeyRequest>(&h, body.as_bytes())
                .and_then(|shaped| shaped.check(|_, _| ()))
                .unwrap_err();
            let got = fields(e);
            assert_eq!(got.len(), 1, "{body}");
            assert_eq!(got[0].0, field, "{body}: {got:?}");
            assert!(!got[0].1.contains("line 1"), "{got:?}");
        }
        // Every field of the wrong shape is named, each once, and the rule
        // checks never see a placeholder's value.
        let e = parse_json::<UpdateKeyRequest>(
            &h,
            br#"{"name":7,"scopes":"x","expires_at":5,"status":[],"nope":1,"owner":{}}"#,
        )
        .and_then(|shaped| {
            shaped.check(|patch, errors| {
                assert_eq!(patch.name, None);
                errors.add("name", "a rule error about a placeholder is dropped");
                errors.add("plan", "a rule error of another field is kept");
            })
        })
        .unwrap_err();
        let named: Vec<String> = fields(e).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            named,
            ["expires_at", "name", "nope", "owner", "scopes", "status", "plan"]
        );
        // Thousands of unknown fields: named up to the round limit, then
        // refused, in bounded work.
        let flood: serde_json::Map<String, serde_json::Value> = (0..50_000)
            .map(|i| (format!("f{i}"), serde_json::Value::from(i)))
            .collect();
        let body = serde_json::to_vec(&flood).unwrap();
        let e = parse_json::<CreateKeyRequest>(&h, &body)
            .and_then(|shaped| shaped.check(|_, _| ()))
            .unwrap_err();
        assert_eq!(fields(e).len(), MAX_ROUNDS);
        assert!(is_json_media_type("application/merge-patch+json"));
        assert!(!is_json_media_type("text/json"));
    }

    #[test]
    fn queries() {
        let q = ListKeysQuery::parse(Some("owner=acme&status=inactive&limit=5&cursor=")).unwrap();
        assert_eq!(
            q,
            ListKeysQuery {
                owner: Some("acme".into()),
                status: Some(KeyStatus::Inactive),
                limit: 5,
                presented_cursor: None
            }
        );
        assert_eq!(ListKeysQuery::parse(None).unwrap().limit, DEFAULT_LIMIT);
        let e = ListKeysQuery::parse(Some("status=gone&limit=0&color=red&owner=a&owner=b")).unwrap_err();
        let named: Vec<String> = fields(e).into_iter().map(|(f, _)| f).collect();
        assert_eq!(named, ["color", "owner", "status", "limit"]);
        for bad in ["limit=501", "limit=-1", "limit=ten"] {
            assert!(AuditQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(AuditQuery::parse(Some("limit=500")).unwrap().limit, 500);
    }

    #[test]
    fn the_session_view_shows_no_digest_or_token_id() {
        let at = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let record = Session {
            id: "ses_01jd3m5k7r9t2v4w6x8y0z1a2b".parse().unwrap(),
            key_id: "key_01jd3m5k7r9t2v4w6x8y0z1a2b".parse().unwrap(),
            client_session: Some("tab-1".into()),
            scopes: ["orders:read".to_owned()].into(),
            created_at: at,
            expires_at: at + chrono::Duration::days(30),
            revoked_at: Some(at),
            revoked_reason: Some(RevokeReason::RefreshReuse),
            family_digest: TokenDigest::from_bytes([0xf0; 32]),
            refresh_digest: TokenDigest::from_bytes([0x0f; 32]),
            refresh_generation: 3,
            access_jti: "jti-must-not-show".into(),
            access_issued_at: at,
            access_expires_at: at + chrono::Duration::hours(2),
        };
        let json = serde_json::to_value(SessionView::new(&record)).unwrap();
        let fields: BTreeSet<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            BTreeSet::from([
                "client_session",
                "created_at",
                "expires_at",
                "id",
                "key_id",
                "revoked_at",
                "revoked_reason",
                "scopes"
            ])
        );
        assert_eq!(json["revoked_reason"], "refresh_reuse");
        assert!(!json.to_string().contains("jti-must-not-show"));
        // The schema's enum lists the spellings serde writes.
        for reason in [RevokeReason::Admin, RevokeReason::RefreshReuse] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}
