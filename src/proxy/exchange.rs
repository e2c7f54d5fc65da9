//! The token exchange endpoints (SPEC §8), served on the proxy listener when
//! `[tokens] enabled = true`:
//!
//! - `POST /auth/login` `{"api_key", "session_id"?}` → an access token (the
//!   same one while it stays valid), a refresh token;
//! - `POST /auth/refresh` `{"refresh_token"}` → new tokens; the refresh
//!   token is single-use, and presenting a spent one revokes its session;
//! - `POST /oauth/token` `grant_type=client_credentials` (RFC 6749 §4.4),
//!   the key as client secret in the form or in HTTP Basic, `scope` only
//!   narrowing the key's scopes, errors in RFC 6749 §5.2's shape;
//! - `GET /.well-known/jwks.json` when an asymmetric signing key is
//!   configured, so upstreams can verify tokens themselves.
//!
//! `/auth/*` answer errors in the gateway's configured shape (`[errors]`),
//! since they stand in for the login endpoint of the API behind keygate.
//! Every exchange authenticates the key exactly as the proxy does (cache,
//! throttle, argon2 off the runtime), refuses plans without API access, and
//! counts against the key's rate limits like any request (the gate's
//! checks).
//!
//! This file owns the edge only: parsing bodies, forms and HTTP Basic,
//! calling the gate's checks and the use case in [`crate::auth::exchange`]
//! (sessions, conditional writes and their retries, reuse revocation), and
//! rendering its outcomes: tokens, the configured error shape, or RFC 6749
//! §5.2 errors, each failure with its SPEC code and log reason.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tracing::info;

use super::ProxyState;
use super::gate::refusal;
use super::record::{Caller, Refusal, RequestRecord};
use crate::auth::Principal;
use crate::auth::exchange::{ExchangeError, ExchangeFailure, Issued, OAUTH_SESSION_PREFIX, TokenExchange};
use crate::clock::SharedClock;
use crate::keys::{Key, SecretStr, SecretString};
use crate::policy::PlanSettings;
use crate::problem::{Code, Problem};
use crate::ratelimit::WindowStatus;
use crate::store::SharedStore;
use crate::token::claims::format_scope;
use crate::token::{PresentedRefreshToken, Tokens, narrow_scopes};

/// Largest request body an exchange endpoint reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest a client may take to send an exchange request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `session_id` a client may choose, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// One of the exchange endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /auth/login`.
    Login,
    /// `POST /auth/refresh`.
    Refresh,
    /// `POST /oauth/token`.
    OAuthToken,
    /// `GET /.well-known/jwks.json`.
    Jwks,
}

impl Endpoint {
    /// The route label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Login => "POST /auth/login",
            Self::Refresh => "POST /auth/refresh",
            Self::OAuthToken => "POST /oauth/token",
            Self::Jwks => "GET /.well-known/jwks.json",
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self {
            Self::Jwks => method == Method::GET || method == Method::HEAD,
            _ => method == Method::POST,
        }
    }

    fn allow_header(self) -> &'static str {
        match self {
            Self::Jwks => "GET, HEAD",
            _ => "POST",
        }
    }
}

/// The token exchange endpoints, built once in `app` when `[tokens]` is on.
#[derive(Debug)]
pub struct Exchange {
    /// The use case behind the endpoints.
    exchange: TokenExchange,
    /// The JWK Set document, when there are public keys to publish.
    jwks: Option<Bytes>,
}

/// Why an exchange failed: the answer, before it is rendered in the
/// endpoint's shape, and the reason the log records.
#[derive(Debug)]
struct Failure {
    answer: Answer,
    reason: &'static str,
}

/// A failed exchange's answer.
#[derive(Debug)]
enum Answer {
    /// A gateway problem (`/auth/*` render it as configured).
    Problem(Problem),
    /// An RFC 6749 §5.2 error (`/oauth/token`).
    OAuth(OAuthError),
}

impl Failure {
    fn problem(problem: impl Into<Problem>, reason: &'static str) -> Self {
        Self {
            answer: Answer::Problem(problem.into()),
            reason,
        }
    }

    fn oauth(error: OAuthError, reason: &'static str) -> Self {
        Self {
            answer: Answer::OAuth(error),
            reason,
        }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Self::problem(refusal.problem, refusal.reason)
    }
}

/// What an exchange learned of its caller on the way, whatever the
/// outcome: who it was (for the log and usage) and the plan's window once
/// the limiter ran (for the `RateLimit-*` headers).
#[derive(Debug, Default)]
struct Seen {
    caller: Caller,
    rate: Option<WindowStatus>,
}

/// An RFC 6749 §5.2 error response, tagged with the SPEC code its outcome
/// is counted under.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    code: Code,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>, code: Code) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            code,
            retry_after: None,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            description,
            Code::BadRequest,
        )
    }

    fn invalid_client(description: impl Into<String>, code: Code) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description, code)
    }

    /// The OAuth shape of a gateway problem met on the way (store down,
    /// rate limited, a failure inside the gateway).
    fn from_problem(problem: &Problem) -> Self {
        let (status, error, description) = match problem.code {
            Code::AuthUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The key cannot be checked right now. Retry shortly.",
            ),
            Code::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "This key has exceeded its plan's rate limit. Retry after the number of seconds in Retry-After.",
            ),
            Code::PlanForbidden => (
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "This key's plan does not include API access.",
            ),
            Code::InvalidKey | Code::KeyInactive | Code::KeyExpired => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed: the client secret must be an active API key whose id is the client_id.",
            ),
            Code::BadRequest | Code::PayloadTooLarge => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The request is malformed.",
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The gateway failed to handle this request. Retry shortly.",
            ),
        };
        let description = match (&problem.message, problem.code) {
            (Some(message), Code::BadRequest | Code::PayloadTooLarge) => message.to_string(),
            _ => description.to_owned(),
        };
        Self {
            status,
            error,
            description,
            code: problem.code,
            retry_after: problem.retry_after,
        }
    }
}

impl Exchange {
    /// The exchange over `store`, signing with `tokens`.
    pub fn new(tokens: Arc<Tokens>, store: SharedStore, clock: SharedClock) -> Self {
        let jwks = tokens
            .keys()
            .has_public_keys()
            .then(|| Bytes::from(tokens.jwks().to_string()));
        Self {
            exchange: TokenExchange::new(tokens, store, clock),
            jwks,
        }
    }

    /// The endpoint served at `path` (the normalised request path), if any.
    /// Only exact paths match; the JWKS path only when keys are published.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        match path {
            "/auth/login" => Some(Endpoint::Login),
            "/auth/refresh" => Some(Endpoint::Refresh),
            "/oauth/token" => Some(Endpoint::OAuthToken),
            "/.well-known/jwks.json" if self.jwks.is_some() => Some(Endpoint::Jwks),
            _ => None,
        }
    }

    /// Answers a request for `endpoint`, with the request's record.
    pub async fn handle<'a>(
        &'a self,
        state: &'a ProxyState,
        endpoint: Endpoint,
        parts: Parts,
        body: Incoming,
    ) -> (Response<Body>, RequestRecord<'a>) {
        let route = endpoint.label();
        if !endpoint.allows(&parts.method) {
            let problem = Problem::new(Code::BadRequest)
                .with_message(format!(
                    "{} accepts only {}.",
                    route.split_once(' ').map_or("", |(_, path)| path),
                    endpoint.allow_header()
                ))
                .with_status(StatusCode::METHOD_NOT_ALLOWED);
            let mut response = match endpoint {
                Endpoint::OAuthToken => {
                    let mut response = oauth_error(&OAuthError::invalid_request(
                        problem.message.clone().unwrap_or_default(),
                    ));
                    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                    response
                }
                // The body's `status` (or a template's `{status}`) says 405 too.
                _ => state.render(&problem),
            };
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(endpoint.allow_header()));
            let record = RequestRecord::new(route, Caller::default(), None, Some("method not allowed"));
            return (response, record);
        }
        let mut seen = Seen::default();
        let outcome = match endpoint {
            Endpoint::Jwks => {
                return (
                    self.jwks(),
                    RequestRecord::new(route, Caller::default(), None, None),
                );
            }
            Endpoint::Login => self.login(state, body, &mut seen).await,
            Endpoint::Refresh => self.refresh(state, body, &mut seen).await,
            Endpoint::OAuthToken => self.client_credentials(state, &parts, body, &mut seen).await,
        };
        let (response, reason) = match outcome {
            Ok(issued) => (token_response(&issued, endpoint == Endpoint::OAuthToken), None),
            Err(Failure { answer, reason }) => {
                let response = match answer {
                    Answer::Problem(problem) if endpoint == Endpoint::OAuthToken => {
                        oauth_error(&OAuthError::from_problem(&problem))
                    }
                    Answer::Problem(problem) => state.render(&problem),
                    Answer::OAuth(e) => oauth_error(&e),
                };
                (response, Some(reason))
            }
        };
        (
            response,
            RequestRecord::new(route, seen.caller, seen.rate, reason),
        )
    }

    fn jwks(&self) -> Response<Body> {
        let body = self.jwks.clone().unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        response
    }

    /// `POST /auth/login`.
    async fn login(&self, state: &ProxyState, body: Incoming, seen: &mut Seen) -> Result<Issued, Failure> {
        let mut body = read_json(body).await?;
        let api_key = required_string(&mut body, "api_key")?;
        let session_id = match body.get("session_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(check_session_id(s)?),
            Some(_) => return Err(bad_field("session_id must be a string.")),
        };
        let principal = self.key_principal(state, api_key, seen).await?;
        let key = principal.key();
        let plan = state.gate.check_plan(key.plan.as_deref())?;
        charge(state, key, plan, seen).await?;
        let issued = self.exchange.login(key, session_id).await;
        issued_or_failure(issued, seen)
    }

    /// `POST /oauth/token` with `grant_type=client_credentials`.
    async fn client_credentials(
        &self,
        state: &ProxyState,
        parts: &Parts,
        body: Incoming,
        seen: &mut Seen,
    ) -> Result<Issued, Failure> {
        let form_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if form_type.as_deref() != Some("application/x-www-form-urlencoded") {
            return Err(Failure::oauth(
                OAuthError::invalid_request(
                    "Send the token request as application/x-www-form-urlencoded (RFC 6749 §4.4.2).",
                ),
                "token request not form-encoded",
            ));
        }
        let bytes = read_body(body).await?;
        let form = parse_form(&bytes).map_err(|e| Failure::oauth(e, "bad token request form"))?;
        let grant_type = form.get("grant_type").ok_or_else(|| {
            Failure::oauth(
                OAuthError::invalid_request(
                    "The grant_type parameter is required: use grant_type=client_credentials.",
                ),
                "no grant_type",
            )
        })?;
        if grant_type != "client_credentials" {
            return Err(Failure::oauth(
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "Only grant_type=client_credentials is supported.",
                    Code::BadRequest,
                ),
                "unsupported grant_type",
            ));
        }
        let (client_id, secret) = client_credentials_of(parts, &form)
            .map_err(|e| Failure::oauth(e, "bad client authentication"))?;
        let principal = self.key_principal(state, secret, seen).await?;
        let key = principal.key();
        if key.id.as_str() != client_id {
            return Err(Failure::oauth(
                OAuthError::invalid_client(
                    "Client authentication failed: the client_id must be the id of the key sent as client secret.",
                    Code::InvalidKey,
                ),
                "client_id is not the key's id",
            ));
        }
        let plan = state.gate.check_plan(key.plan.as_deref())?;
        let scopes = narrow_scopes(&key.scopes, form.get("scope")).map_err(|e| {
            Failure::oauth(
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("{e}. The scope parameter may only name scopes the key holds."),
                    Code::InsufficientScope,
                ),
                "scope not granted",
            )
        })?;
        charge(state, key, plan, seen).await?;
        let issued = self.exchange.client_credentials(key, scopes).await;
        issued_or_failure(issued, seen)
    }

    /// `POST /auth/refresh`.
    async fn refresh(&self, state: &ProxyState, body: Incoming, seen: &mut Seen) -> Result<Issued, Failure> {
        let mut body = read_json(body).await?;
        let presented = required_string(&mut body, "refresh_token")?;
        let presented: PresentedRefreshToken = presented.expose().parse().map_err(|e| {
            info!(error = %e, "refresh refused");
            bad_refresh("refresh token malformed")
        })?;
        seen.caller.session_id = Some(presented.session_id().as_str().into());
        let redeemed = self
            .exchange
            .redeem(&presented)
            .await
            .map_err(|e| exchange_failed(e, seen))?;
        let key = Arc::clone(redeemed.key());
        record_key(seen, &key);
        let plan = state.gate.check_plan(key.plan.as_deref())?;
        charge(state, &key, plan, seen).await?;
        let issued = self.exchange.rotate(redeemed).await;
        issued_or_failure(issued, seen)
    }

    /// Authenticates the API key of a login or client-credentials grant
    /// (never an access token) and notes who it is. On `/oauth/token` a
    /// refusal becomes RFC 6749 `invalid_client` in `handle`.
    async fn key_principal(
        &self,
        state: &ProxyState,
        presented: SecretString,
        seen: &mut Seen,
    ) -> Result<Principal, Failure> {
        let authenticated = state
            .gate
            .authenticator()
            .authenticate_key(SecretStr::from(&presented))
            .await;
        match authenticated {
            Ok(principal) => {
                seen.caller = Caller::of(&principal);
                Ok(principal)
            }
            Err(error) => {
                seen.caller = Caller::refused(&error);
                Err(refusal(&error).into())
            }
        }
    }
}

/// `invalid_key` for a refresh token that cannot be redeemed (every cause
/// reads alike to the client; the log has the cause, `reason`).
fn bad_refresh(reason: &'static str) -> Failure {
    let problem = Problem::new(Code::InvalidKey).with_message(
        "The refresh token is not valid: it may have expired or been used already. Log in again with your API key.",
    );
    Failure::problem(problem, reason)
}

/// Charges the request to the key's plan limits (the gate's check, last),
/// noting the window for the `RateLimit-*` headers.
async fn charge(state: &ProxyState, key: &Key, plan: &PlanSettings, seen: &mut Seen) -> Result<(), Failure> {
    let charge = state.gate.check_limits(key, plan).await;
    seen.rate = charge.rate;
    charge.verdict.map_err(Failure::from)
}

/// Notes the key a refresh read.
fn record_key(seen: &mut Seen, key: &Key) {
    seen.caller.key_id = Some(key.id.as_str().into());
    seen.caller.short_prefix = Some(key.short_prefix.as_str().into());
}

/// The use case's outcome; the issued session is noted, and a failure is
/// mapped by [`exchange_failed`].
fn issued_or_failure(issued: Result<Issued, ExchangeError>, seen: &mut Seen) -> Result<Issued, Failure> {
    let issued = issued.map_err(|e| exchange_failed(e, seen))?;
    seen.caller.session_id = Some(issued.session_id.as_str().into());
    Ok(issued)
}

/// The one map from an exchange failure to the problem a client sees and
/// the reason the log records (a refused key goes through the gate's
/// [`refusal`], like any credential).
fn exchange_failed(e: ExchangeError, seen: &mut Seen) -> Failure {
    if let Some(key) = &e.key {
        record_key(seen, key);
    }
    match e.failure {
        ExchangeFailure::UnknownSession => bad_refresh("refresh token's session unknown"),
        ExchangeFailure::UnknownKey => bad_refresh("refresh token's key unknown"),
        ExchangeFailure::RefreshRefused(_) => bad_refresh("refresh token refused"),
        ExchangeFailure::RefreshReused => bad_refresh("refresh token reused: session revoked"),
        ExchangeFailure::KeyRefused(error) => {
            seen.caller.short_prefix = error.short_prefix.as_deref().map(Arc::from);
            refusal(&error).into()
        }
        ExchangeFailure::Store(_) => Failure::problem(Code::AuthUnavailable, "key store unavailable"),
        ExchangeFailure::Contended => Failure::problem(Code::AuthUnavailable, "session contended"),
        ExchangeFailure::Signing { session_id, .. } => {
            seen.caller.session_id = Some(session_id.as_str().into());
            Failure::problem(Code::InternalError, "signing failed")
        }
    }
}

/// Reads the body, up to [`MAX_BODY_BYTES`] and within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, Failure> {
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await;
    match collected {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            let problem = Problem::new(Code::PayloadTooLarge).with_message(format!(
                "The body of a token request may be at most {MAX_BODY_BYTES} bytes."
            ));
            Err(Failure::problem(problem, "exchange body too large"))
        }
        Ok(Err(_)) => {
            let problem = Problem::new(Code::BadRequest).with_message("The request body could not be read.");
            Err(Failure::problem(problem, "exchange body unreadable"))
        }
        Err(_) => {
            let problem =
                Problem::new(Code::BadRequest).with_message("The request body did not arrive in time.");
            Err(Failure::problem(problem, "exchange body too slow"))
        }
    }
}

/// The body as a JSON object.
async fn read_json(body: Incoming) -> Result<serde_json::Map<String, Value>, Failure> {
    let bytes = read_body(body).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_field("The body must be a JSON object.")),
    }
}

fn bad_field(message: &'static str) -> Failure {
    Failure::problem(
        Problem::new(Code::BadRequest).with_message(message),
        "bad token request body",
    )
}

/// A required string member, moved out of the body into a secret (so no
/// copy outlives the request unzeroed; API keys and refresh tokens never
/// reach a log or an error body).
fn required_string(
    body: &mut serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<SecretString, Failure> {
    match body.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(SecretString::new(s)),
        _ => {
            let problem = Problem::new(Code::BadRequest).with_message(format!(
                "The body must be a JSON object with a non-empty string '{name}'."
            ));
            Err(Failure::problem(problem, "bad token request body"))
        }
    }
}

/// A client's `session_id`: 1–128 bytes, no control characters, not in
/// `/oauth/token`'s reserved space.
fn check_session_id(s: &str) -> Result<String, Failure> {
    if s.is_empty() || s.len() > MAX_SESSION_ID_BYTES || s.chars().any(char::is_control) {
        return Err(bad_field(
            "session_id must be 1 to 128 bytes of text without control characters.",
        ));
    }
    if s.starts_with(OAUTH_SESSION_PREFIX) {
        return Err(bad_field(
            "session_id values starting with 'oauth:' are reserved for /oauth/token.",
        ));
    }
    Ok(s.to_owned())
}

/// A token request's form parameters; each may appear once (RFC 6749 §3.2).
#[derive(Debug, Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn parse_form(bytes: &[u8]) -> Result<Form, OAuthError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).map_err(|_| {
        OAuthError::invalid_request("The body is not a valid form (application/x-www-form-urlencoded).")
    })?;
    let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
    for (name, _) in &pairs {
        if seen.contains(&name.as_str()) {
            // The name is the client's; keep it short and printable.
            let shown: String = name.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(OAuthError::invalid_request(format!(
                "The parameter '{shown}' appears more than once."
            )));
        }
        seen.push(name);
    }
    Ok(Form(pairs))
}

/// The client id and secret, from HTTP Basic or the form (exactly one).
fn client_credentials_of(parts: &Parts, form: &Form) -> Result<(String, SecretString), OAuthError> {
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|value| parse_basic(value.as_bytes()))
        .transpose()?
        .flatten();
    let in_form = form.get("client_secret").is_some();
    match (basic, in_form) {
        (Some(_), true) => Err(OAuthError::invalid_request(
            "Send the client credentials once: in the Authorization header or in the form, not both.",
        )),
        (Some(credentials), false) => {
            if form.get("client_id").is_some_and(|id| id != credentials.0) {
                return Err(OAuthError::invalid_request(
                    "The client_id parameter differs from the client id in the Authorization header.",
                ));
            }
            Ok(credentials)
        }
        (None, true) => {
            let Some(id) = form.get("client_id") else {
                return Err(OAuthError::invalid_request(
                    "The client_id parameter is required with client_secret: it is the key's id.",
                ));
            };
            let secret = form.get("client_secret").unwrap_or_default();
            if secret.is_empty() {
                return Err(OAuthError::invalid_client(
                    "Client authentication failed: client_secret is empty.",
                    Code::MissingCredentials,
                ));
            }
            Ok((id.to_owned(), SecretString::new(secret.to_owned())))
        }
        (None, false) => Err(OAuthError::invalid_client(
            "Client authentication is required: HTTP Basic with the key id and the API key, or client_id and client_secret in the form.",
            Code::MissingCredentials,
        )),
    }
}

/// HTTP Basic credentials (RFC 7617), each part form-decoded as RFC 6749
/// §2.3.1 asks. `None` for another scheme (that header is then not client
/// authentication).
fn parse_basic(value: &[u8]) -> Result<Option<(String, SecretString)>, OAuthError> {
    let value = std::str::from_utf8(value).map_err(|_| malformed_basic())?.trim();
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed_basic())?;
    let decoded = zeroize::Zeroizing::new(decoded);
    let text = std::str::from_utf8(&decoded).map_err(|_| malformed_basic())?;
    let (id, secret) = text.split_once(':').ok_or_else(malformed_basic)?;
    let id = form_decode(id)?;
    let secret = SecretString::new(form_decode(secret)?);
    if id.is_empty() || secret.expose().is_empty() {
        return Err(OAuthError::invalid_client(
            "Client authentication failed: the client id and secret must not be empty.",
            Code::MissingCredentials,
        ));
    }
    Ok(Some((id, secret)))
}

fn form_decode(part: &str) -> Result<String, OAuthError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&format!("v={}", part.replace('&', "%26").replace('=', "%3D")))
            .map_err(|_| malformed_basic())?;
    Ok(pairs.into_iter().next().map(|(_, v)| v).unwrap_or_default())
}

fn malformed_basic() -> OAuthError {
    OAuthError::invalid_client(
        "Client authentication failed: the Authorization header is not valid HTTP Basic (base64 of client_id:client_secret).",
        Code::InvalidKey,
    )
}

/// A successful token response (RFC 6749 §5.1): JSON, never cached.
fn token_response(issued: &Issued, oauth: bool) -> Response<Body> {
    let mut body = json!({
        "access_token": issued.access.expose(),
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    });
    if let Some(refresh) = &issued.refresh {
        body["refresh_token"] = Value::String(refresh.expose().to_owned());
    }
    // SPEC §8's login and refresh answers have exactly the four members;
    // RFC 6749 §5.1 wants `scope` when it may differ from the request.
    if oauth {
        body["scope"] = Value::String(format_scope(&issued.scope));
    }
    json_response(StatusCode::OK, &body)
}

/// An RFC 6749 §5.2 error response, tagged with its SPEC code.
fn oauth_error(e: &OAuthError) -> Response<Body> {
    let mut response = json_response(
        e.status,
        &json!({ "error": e.error, "error_description": e.description }),
    );
    let headers = response.headers_mut();
    if e.status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"keygate\", charset=\"UTF-8\""),
        );
    }
    if let Some(retry_after) = e.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    response.extensions_mut().insert(e.code);
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shaped_values_and_form_parsing() {
        let form = parse_form(b"grant_type=client_credentials&scope=read+write").unwrap();
        assert_eq!(form.get("grant_type"), Some("client_credentials"));
        assert_eq!(form.get("scope"), Some("read write"));
        let dup = parse_form(b"scope=a&scope=b").unwrap_err();
        assert_eq!(dup.error, "invalid_request");
        assert!(dup.description.contains("'scope'"), "{}", dup.description);
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("key_01%3Ax:s%2Bcret+x");
        let (id, secret) = parse_basic(format!("Basic {encoded}").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(id, "key_01:x");
        assert_eq!(secret.expose(), "s+cret x");
        assert!(
            parse_basic(b"Bearer abc").unwrap().is_none(),
            "another scheme is not Basic"
        );
        assert_eq!(parse_basic(b"Basic !!!").unwrap_err().error, "invalid_client");
        let no_colon = base64::engine::general_purpose::STANDARD.encode("justanid");
        assert!(parse_basic(format!("basic {no_colon}").as_bytes()).is_err());
    }

    #[test]
    fn session_ids_are_bounded_and_oauth_ones_reserved() {
        assert_eq!(check_session_id("phone-1").unwrap(), "phone-1");
        assert!(check_session_id("").is_err());
        assert!(check_session_id(&"x".repeat(129)).is_err());
        assert!(check_session_id("a\nb").is_err());
        assert!(check_session_id("oauth:read").is_err());
    }
}
