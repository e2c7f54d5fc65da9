//! The one renderer of the responses keygate makes itself (SPEC §5): a
//! [`Code`] names what went wrong, a [`Problem`] carries it with its details,
//! and [`ProblemRenderer`] turns it into a response — RFC 9457
//! `application/problem+json` by default, or the operator's `[errors.<code>]`
//! template, which reproduces the error shape of the API keygate stands in
//! front of.
//!
//! Edges (proxy, admin) map their failures to a [`Code`] in one `match` and
//! call [`ProblemRenderer::render`]; nothing else builds error responses, so
//! every SPEC code has one status, one set of headers and one body shape.
//! `config` validates `[errors]` and fills [`ErrorTemplate`]; the renderer
//! compiles the templates once so rendering does no parsing.
//!
//! Messages go to clients: they never carry a secret or an internal cause
//! (the cause goes to the log), and 5xx problems always answer with their
//! generic default message.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use axum::body::Body;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};

pub use crate::manage::FieldError;

/// The placeholders an error body template may use (SPEC §5).
pub const TEMPLATE_PLACEHOLDERS: [&str; 5] = ["code", "message", "status", "scope", "retry_after"];

/// Content type of the default body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Content type of a template body that names none.
pub const TEMPLATE_DEFAULT_CONTENT_TYPE: &str = "application/json";
/// Prefix of the default body's `type` URI; the code follows it.
pub const TYPE_PREFIX: &str = "urn:keygate:problem:";

/// `WWW-Authenticate` of `missing_credentials` (RFC 6750 §3: no error code
/// when the request carried no credential).
const CHALLENGE: &str = r#"Bearer realm="keygate""#;
/// `WWW-Authenticate` of the 401s about a presented key (RFC 9110 §15.5.2:
/// every 401 carries a challenge; RFC 6750 §3.1 names the error).
const INVALID_TOKEN_CHALLENGE: &str = r#"Bearer realm="keygate", error="invalid_token""#;
/// `WWW-Authenticate` of `admin_unauthorized` (the admin API's own realm).
const ADMIN_CHALLENGE: &str = r#"Bearer realm="keygate-admin""#;
/// `WWW-Authenticate` of `insufficient_scope` when the scope cannot be named.
const SCOPE_CHALLENGE: &str = r#"Bearer error="insufficient_scope""#;

/// What went wrong: one code per situation of SPEC §5, plus `not_found` and
/// `internal_error` for the gateway's own use and the admin API's codes of
/// SPEC §7 (`admin_unauthorized`, `validation_failed`, `conflict`); none of
/// those five can be templated in `[errors]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// No credential: 401.
    MissingCredentials,
    /// Malformed, unknown, wrong secret or revoked key: 401.
    InvalidKey,
    /// Key disabled: 401.
    KeyInactive,
    /// Key past its expiry: 401.
    KeyExpired,
    /// The key lacks a scope the route requires: 403.
    InsufficientScope,
    /// The key's plan has no API access: 403.
    PlanForbidden,
    /// A rate limit of the key's plan is exhausted: 429.
    RateLimited,
    /// Two different credentials in one request: 400.
    AmbiguousCredentials,
    /// A malformed request (e.g. a path normalisation refuses): 400.
    BadRequest,
    /// The key store is unreachable and the key is not cached: 503.
    AuthUnavailable,
    /// The upstream refused or reset the connection: 502.
    UpstreamUnavailable,
    /// The upstream did not send its response head in time: 504.
    UpstreamTimeout,
    /// The request body exceeds `server.max_body_bytes`: 413.
    PayloadTooLarge,
    /// The request head exceeds `server.max_header_bytes`: 431.
    HeadersTooLarge,
    /// Nothing served at this path (the gateway's own listeners), or no
    /// key with that id (admin API): 404.
    NotFound,
    /// A bug or unexpected failure inside the gateway: 500.
    InternalError,
    /// A missing or wrong admin token, or none configured (admin API): 401.
    AdminUnauthorized,
    /// The request names bad fields (admin API; the problem lists them): 422.
    ValidationFailed,
    /// The key's state forbids the change, e.g. re-activating a revoked key
    /// (admin API): 409.
    Conflict,
}

impl Code {
    /// How many codes there are.
    pub const COUNT: usize = 19;

    /// Every code, in declaration order (so `ALL[c as usize] == c`).
    pub const ALL: [Self; Self::COUNT] = [
        Self::MissingCredentials,
        Self::InvalidKey,
        Self::KeyInactive,
        Self::KeyExpired,
        Self::InsufficientScope,
        Self::PlanForbidden,
        Self::RateLimited,
        Self::AmbiguousCredentials,
        Self::BadRequest,
        Self::AuthUnavailable,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::PayloadTooLarge,
        Self::HeadersTooLarge,
        Self::NotFound,
        Self::InternalError,
        Self::AdminUnauthorized,
        Self::ValidationFailed,
        Self::Conflict,
    ];

    /// The code as clients, logs and metrics see it (`invalid_key`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::InvalidKey => "invalid_key",
            Self::KeyInactive => "key_inactive",
            Self::KeyExpired => "key_expired",
            Self::InsufficientScope => "insufficient_scope",
            Self::PlanForbidden => "plan_forbidden",
            Self::RateLimited => "rate_limited",
            Self::AmbiguousCredentials => "ambiguous_credentials",
            Self::BadRequest => "bad_request",
            Self::AuthUnavailable => "auth_unavailable",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::NotFound => "not_found",
            Self::InternalError => "internal_error",
            Self::AdminUnauthorized => "admin_unauthorized",
            Self::ValidationFailed => "validation_failed",
            Self::Conflict => "conflict",
        }
    }

    /// The code named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The status SPEC §5 gives the code (an `[errors]` template may
    /// override it).
    pub fn status(self) -> StatusCode {
        match self {
            Self::MissingCredentials
            | Self::InvalidKey
            | Self::KeyInactive
            | Self::KeyExpired
            | Self::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope | Self::PlanForbidden => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::AmbiguousCredentials | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ValidationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict => StatusCode::CONFLICT,
        }
    }

    /// A short human title: the default body's `title`.
    pub fn title(self) -> &'static str {
        match self {
            Self::MissingCredentials => "Missing credentials",
            Self::InvalidKey => "Invalid API key",
            Self::KeyInactive => "API key inactive",
            Self::KeyExpired => "API key expired",
            Self::InsufficientScope => "Insufficient scope",
            Self::PlanForbidden => "Plan without API access",
            Self::RateLimited => "Too many requests",
            Self::AmbiguousCredentials => "Ambiguous credentials",
            Self::BadRequest => "Bad request",
            Self::AuthUnavailable => "Authentication unavailable",
            Self::UpstreamUnavailable => "Upstream unavailable",
            Self::UpstreamTimeout => "Upstream timeout",
            Self::PayloadTooLarge => "Payload too large",
            Self::HeadersTooLarge => "Request headers too large",
            Self::NotFound => "Not found",
            Self::InternalError => "Internal error",
            Self::AdminUnauthorized => "Admin token required",
            Self::ValidationFailed => "Validation failed",
            Self::Conflict => "Conflict",
        }
    }

    /// The message used when a [`Problem`] carries none: one sentence that
    /// tells the client what to do. Generic for 5xx codes, and never naming
    /// which of several causes applied (unknown, wrong secret and revoked
    /// all read alike).
    pub fn default_message(self) -> &'static str {
        match self {
            Self::MissingCredentials => {
                "Send your API key in the Authorization header as 'Bearer <key>' or in X-API-Key."
            }
            Self::InvalidKey => {
                "The API key is not valid. Check that it was copied in full and has not been revoked or rotated."
            }
            Self::KeyInactive => {
                "This API key is disabled. Ask its owner to re-enable it, or use another key."
            }
            Self::KeyExpired => "This API key has expired. Use a current key or ask for a new one.",
            Self::InsufficientScope => "This API key lacks a scope this action requires.",
            Self::PlanForbidden => "This API key's plan does not include API access.",
            Self::RateLimited => {
                "This API key has exceeded its plan's rate limit. Retry after the number of seconds in Retry-After."
            }
            Self::AmbiguousCredentials => {
                "The request carries more than one credential. Send exactly one API key."
            }
            Self::BadRequest => "The request is malformed.",
            Self::AuthUnavailable => "The API key cannot be checked right now. Retry shortly.",
            Self::UpstreamUnavailable => "The service behind the gateway cannot be reached. Retry shortly.",
            Self::UpstreamTimeout => "The service behind the gateway did not answer in time. Retry shortly.",
            Self::PayloadTooLarge => "The request body is larger than this gateway accepts.",
            Self::HeadersTooLarge => "The request headers are larger than this gateway accepts.",
            Self::NotFound => "Nothing is served at this path.",
            Self::InternalError => "The gateway failed to handle this request. Retry shortly.",
            Self::AdminUnauthorized => {
                "Send a valid admin token in the Authorization header as 'Bearer <token>'."
            }
            Self::ValidationFailed => "Some fields of the request are invalid: see `errors` for each one.",
            Self::Conflict => "The key's current state does not allow this change.",
        }
    }

    /// Whether an `[errors.<code>]` table may name the code: all but
    /// `not_found` and `internal_error`, which answer the gateway's own
    /// mistakes rather than a client's, and the admin API's codes, which
    /// always answer in the default shape (`[errors]` mimics the proxied
    /// API, not ours).
    pub fn is_templatable(self) -> bool {
        !matches!(
            self,
            Self::NotFound
                | Self::InternalError
                | Self::AdminUnauthorized
                | Self::ValidationFailed
                | Self::Conflict
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One error answer: its code and the details the body and headers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What went wrong.
    pub code: Code,
    /// The client-facing message; `None` = the renderer's default for the
    /// code. Never a secret or an internal cause; ignored for 5xx codes.
    pub message: Option<Cow<'static, str>>,
    /// The missing scope (`insufficient_scope`): the `{scope}` placeholder
    /// and the `WWW-Authenticate` challenge.
    pub scope: Option<String>,
    /// Seconds until a retry can succeed: the `{retry_after}` placeholder
    /// and the `Retry-After` header.
    pub retry_after: Option<u64>,
    /// The bad fields of a `validation_failed` problem: the default body's
    /// `errors` extension member (`[{"field":…,"message":…}]`), left out
    /// when empty. Templates do not carry it.
    pub errors: Vec<FieldError>,
    /// An HTTP status other than the code's (or its template's), for the
    /// response and the body's `status` alike: a wrong method is answered
    /// 405 with the `bad_request` code and shape. `None` for nearly all.
    pub status: Option<StatusCode>,
}

impl Problem {
    /// A problem with the code's default message.
    pub fn new(code: Code) -> Self {
        Self {
            code,
            message: None,
            scope: None,
            retry_after: None,
            errors: Vec::new(),
            status: None,
        }
    }

    /// The same problem answered with `status` instead of its code's.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The same problem with this message (ignored for 5xx codes, which
    /// keep their generic message so no internal detail reaches a client).
    #[must_use]
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// `insufficient_scope` naming the missing scope:
    /// `This action requires the '<scope>' scope`.
    pub fn insufficient_scope(scope: impl Into<String>) -> Self {
        let scope = scope.into();
        Self {
            message: Some(Cow::Owned(format!("This action requires the '{scope}' scope"))),
            scope: Some(scope),
            ..Self::new(Code::InsufficientScope)
        }
    }

    /// `validation_failed` listing the bad fields.
    pub fn validation_failed(errors: Vec<FieldError>) -> Self {
        Self {
            errors,
            ..Self::new(Code::ValidationFailed)
        }
    }

    /// `rate_limited`, retry possible in `retry_after` seconds.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(Code::RateLimited)
        }
    }
}

impl From<Code> for Problem {
    fn from(code: Code) -> Self {
        Self::new(code)
    }
}

/// One `[errors.<code>]` entry: how to answer with that code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorTemplate {
    /// Body template with `{code}`, `{message}`, `{status}`, `{scope}`,
    /// `{retry_after}` placeholders (JSON-escaped when substituted); `None`
    /// = the default problem+json body.
    pub body: Option<String>,
    /// Content type; `application/json` when a body is set and none is
    /// given; `None` = the default `application/problem+json`.
    pub content_type: Option<String>,
    /// Status override (100..=599).
    pub status: Option<u16>,
}

/// The sentence of `missing_credentials` for the configured credential
/// headers (`auth.headers`, in order), so the hint names headers the
/// gateway actually reads. `authorization` reads as the Bearer scheme.
pub fn credential_hint<'a>(headers: impl IntoIterator<Item = &'a str>) -> String {
    let places: Vec<String> = headers
        .into_iter()
        .map(|name| {
            if name.eq_ignore_ascii_case("authorization") {
                "in the Authorization header as 'Bearer <key>'".to_owned()
            } else if name.eq_ignore_ascii_case("x-api-key") {
                // `config` keeps header names lowercase; print the default
                // one the way its documentation spells it.
                "in X-API-Key".to_owned()
            } else {
                format!("in {name}")
            }
        })
        .collect();
    match places.as_slice() {
        [] => Code::MissingCredentials.default_message().to_owned(),
        [one] => format!("Send your API key {one}."),
        [init @ .., last] => format!("Send your API key {} or {last}.", init.join(", ")),
    }
}

/// One piece of a compiled template body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Code,
    Message,
    Status,
    Scope,
    RetryAfter,
}

/// Splits a template into literal text and placeholders. Only the known
/// `{name}`s are placeholders; every other brace is literal (JSON bodies
/// are full of them), and `config` has already refused unknown
/// placeholder-like names.
fn compile(template: &str) -> Vec<Part> {
    const NAMES: [(&str, Part); 5] = [
        ("code", Part::Code),
        ("message", Part::Message),
        ("status", Part::Status),
        ("scope", Part::Scope),
        ("retry_after", Part::RetryAfter),
    ];
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let found = NAMES
            .iter()
            .find(|(name, _)| after.strip_prefix(name).is_some_and(|tail| tail.starts_with('}')));
        match found {
            Some((name, part)) => {
                literal.push_str(&rest[..open]);
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part.clone());
                rest = &after[name.len() + 1..];
            }
            None => {
                literal.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    parts
}

/// Appends `text` escaped as the inside of a JSON string (no quotes added):
/// `"` and `\` backslashed, control characters as `\n`-style or `\u00XX`
/// escapes, everything else as is — the same as `serde_json` writes.
fn push_json_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xF]));
            }
            c => out.push(c),
        }
    }
}

/// The default body: RFC 9457 problem details, compact, in this key order:
/// `{"type":"urn:keygate:problem:<code>","title":…,"status":…,"detail":…,"code":…}`.
/// Public so the admin API can answer its own codes in the same shape.
pub fn problem_json(code: &str, title: &str, status: u16, detail: &str) -> String {
    let mut out = String::with_capacity(96 + 2 * code.len() + title.len() + detail.len());
    out.push_str("{\"type\":\"");
    out.push_str(TYPE_PREFIX);
    push_json_escaped(&mut out, code);
    out.push_str("\",\"title\":\"");
    push_json_escaped(&mut out, title);
    out.push_str("\",\"status\":");
    out.push_str(&status.to_string());
    out.push_str(",\"detail\":\"");
    push_json_escaped(&mut out, detail);
    out.push_str("\",\"code\":\"");
    push_json_escaped(&mut out, code);
    out.push_str("\"}");
    out
}

/// Adds the `errors` extension member to a body from [`problem_json`]:
/// `…,"errors":[{"field":…,"message":…},…]}`.
fn push_field_errors(out: &mut String, errors: &[FieldError]) {
    // `problem_json` ends with the object's closing brace.
    out.pop();
    out.push_str(",\"errors\":[");
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"field\":\"");
        push_json_escaped(out, &e.field);
        out.push_str("\",\"message\":\"");
        push_json_escaped(out, &e.message);
        out.push_str("\"}");
    }
    out.push_str("]}");
}

/// How one code answers, compiled from its template (or the defaults).
#[derive(Debug, Clone)]
struct Entry {
    status: StatusCode,
    content_type: HeaderValue,
    /// `None` = the default problem+json body.
    body: Option<Vec<Part>>,
    default_message: Cow<'static, str>,
}

impl Entry {
    fn new(code: Code, template: Option<&ErrorTemplate>) -> Self {
        let template = template.filter(|_| code.is_templatable());
        let status = template
            .and_then(|t| t.status)
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or_else(|| code.status());
        let content_type = template
            .and_then(|t| match (&t.content_type, &t.body) {
                (Some(ct), _) => Some(ct.as_str()),
                (None, Some(_)) => Some(TEMPLATE_DEFAULT_CONTENT_TYPE),
                (None, None) => None,
            })
            .unwrap_or(PROBLEM_JSON);
        // `config` only accepts visible-ASCII media types, so the fallback
        // is for templates built by hand.
        let content_type = HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static(TEMPLATE_DEFAULT_CONTENT_TYPE));
        Self {
            status,
            content_type,
            body: template.and_then(|t| t.body.as_deref()).map(compile),
            default_message: Cow::Borrowed(code.default_message()),
        }
    }
}

/// A rendered problem before it becomes a response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rendered {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// Turns [`Problem`]s into responses: the defaults, overridden per code by
/// `[errors.<code>]` templates. Built once at startup; cheap to share
/// behind an `Arc`.
///
/// Whatever the template, every answer carries `Cache-Control: no-store`;
/// `missing_credentials` carries `WWW-Authenticate: Bearer realm="keygate"`,
/// `invalid_key`, `key_inactive` and `key_expired` answering 401 (their
/// default) carry
/// `WWW-Authenticate: Bearer realm="keygate", error="invalid_token"`,
/// `insufficient_scope` carries
/// `WWW-Authenticate: Bearer error="insufficient_scope", scope="<scope>"`,
/// and a problem with `retry_after` (every `rate_limited` one) carries
/// `Retry-After`.
#[derive(Debug, Clone)]
pub struct ProblemRenderer {
    /// Indexed by `Code as usize`.
    entries: Vec<Entry>,
}

impl Default for ProblemRenderer {
    /// The defaults only: problem+json for every code.
    fn default() -> Self {
        Self::new(&BTreeMap::new())
    }
}

impl ProblemRenderer {
    /// Compiles `[errors]` (by code name, as `config` resolves it). Names
    /// that are not templatable codes are ignored (`config` refuses them).
    pub fn new(templates: &BTreeMap<String, ErrorTemplate>) -> Self {
        Self {
            entries: Code::ALL
                .iter()
                .map(|code| Entry::new(*code, templates.get(code.as_str())))
                .collect(),
        }
    }

    /// Replaces the default message of `code`, e.g. `missing_credentials`
    /// with [`credential_hint`] of the configured headers.
    #[must_use]
    pub fn with_default_message(mut self, code: Code, message: impl Into<Cow<'static, str>>) -> Self {
        if let Some(entry) = self.entries.get_mut(code as usize) {
            entry.default_message = message.into();
        }
        self
    }

    fn entry(&self, code: Code) -> &Entry {
        // `entries` has one entry per code, built from `Code::ALL`.
        &self.entries[code as usize]
    }

    /// The status `code` answers with (a template's override included), for
    /// logs and metrics.
    pub fn status(&self, code: Code) -> StatusCode {
        self.entry(code).status
    }

    /// The response for `problem`.
    pub fn render(&self, problem: &Problem) -> Response<Body> {
        let Rendered {
            status,
            headers,
            body,
        } = self.build(problem);
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    fn build(&self, problem: &Problem) -> Rendered {
        let code = problem.code;
        let entry = self.entry(code);
        let status = problem.status.unwrap_or(entry.status);
        let message: &str = match &problem.message {
            Some(message) if !code.status().is_server_error() => message,
            _ => &entry.default_message,
        };
        let body = match &entry.body {
            None if !problem.errors.is_empty() => {
                let mut out = problem_json(code.as_str(), code.title(), status.as_u16(), message);
                push_field_errors(&mut out, &problem.errors);
                out
            }
            None => problem_json(code.as_str(), code.title(), status.as_u16(), message),
            Some(parts) => {
                let mut out = String::with_capacity(256 + message.len());
                for part in parts {
                    match part {
                        Part::Literal(text) => out.push_str(text),
                        Part::Code => push_json_escaped(&mut out, code.as_str()),
                        Part::Message => push_json_escaped(&mut out, message),
                        Part::Status => out.push_str(status.as_str()),
                        Part::Scope => push_json_escaped(&mut out, problem.scope.as_deref().unwrap_or("")),
                        Part::RetryAfter => {
                            if let Some(seconds) = problem.retry_after {
                                out.push_str(&seconds.to_string());
                            }
                        }
                    }
                }
                out
            }
        };

        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(CONTENT_TYPE, entry.content_type.clone());
        // An error is about this request only; a cache must not replay it
        // (a 401 served to the next caller with a valid key, say).
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match code {
            Code::MissingCredentials => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
            }
            // Only as a 401: a template that moves these codes to another
            // status mimics an API that sends no challenge.
            Code::InvalidKey | Code::KeyInactive | Code::KeyExpired if status == StatusCode::UNAUTHORIZED => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(INVALID_TOKEN_CHALLENGE),
                );
            }
            Code::InsufficientScope => {
                headers.insert(WWW_AUTHENTICATE, scope_challenge(problem.scope.as_deref()));
            }
            Code::AdminUnauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(ADMIN_CHALLENGE));
            }
            _ => {}
        }
        if let Some(seconds) = problem.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        Rendered {
            status,
            headers,
            body,
        }
    }
}

/// `Bearer error="insufficient_scope", scope="<scope>"`. Scopes are plain
/// ASCII (`keys::model::validate_scope`), but the quoted string is escaped
/// anyway, and a scope no header can carry is left out rather than failing.
fn scope_challenge(scope: Option<&str>) -> HeaderValue {
    let Some(scope) = scope else {
        return HeaderValue::from_static(SCOPE_CHALLENGE);
    };
    let mut value = String::with_capacity(SCOPE_CHALLENGE.len() + scope.len() + 12);
    value.push_str(SCOPE_CHALLENGE);
    value.push_str(", scope=\"");
    for c in scope.chars() {
        if matches!(c, '"' | '\\') {
            value.push('\\');
        }
        value.push(c);
    }
    value.push('"');
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(SCOPE_CHALLENGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(body: Option<&str>, content_type: Option<&str>, status: Option<u16>) -> ErrorTemplate {
        ErrorTemplate {
            body: body.map(str::to_owned),
            content_type: content_type.map(str::to_owned),
            status,
        }
    }

    fn renderer(entries: &[(&str, ErrorTemplate)]) -> ProblemRenderer {
        let map = entries
            .iter()
            .map(|(code, t)| ((*code).to_owned(), t.clone()))
            .collect();
        ProblemRenderer::new(&map)
    }

    fn header(r: &Rendered, name: http::header::HeaderName) -> Option<&str> {
        r.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json_string(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    #[test]
    fn codes_are_complete_and_named_once() {
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i);
            assert_eq!(Code::from_name(code.as_str()), Some(*code));
            assert_eq!(code.to_string(), code.as_str());
            assert!(!code.title().is_empty() && code.default_message().ends_with('.'));
        }
        assert_eq!(Code::from_name("nope"), None);
        // config's list of templatable codes is exactly ours.
        let templatable: Vec<&str> = Code::ALL
            .iter()
            .filter(|c| c.is_templatable())
            .map(|c| c.as_str())
            .collect();
        assert_eq!(templatable, crate::config::ERROR_CODES);
    }

    #[test]
    fn statuses_follow_the_spec() {
        let cases = [
            (Code::MissingCredentials, 401),
            (Code::InvalidKey, 401),
            (Code::KeyInactive, 401),
            (Code::KeyExpired, 401),
            (Code::InsufficientScope, 403),
            (Code::PlanForbidden, 403),
            (Code::RateLimited, 429),
            (Code::AmbiguousCredentials, 400),
            (Code::BadRequest, 400),
            (Code::AuthUnavailable, 503),
            (Code::UpstreamUnavailable, 502),
            (Code::UpstreamTimeout, 504),
            (Code::PayloadTooLarge, 413),
            (Code::HeadersTooLarge, 431),
            (Code::NotFound, 404),
            (Code::InternalError, 500),
            (Code::AdminUnauthorized, 401),
            (Code::ValidationFailed, 422),
            (Code::Conflict, 409),
        ];
        assert_eq!(cases.len(), Code::COUNT);
        for (code, status) in cases {
            assert_eq!(code.status().as_u16(), status, "{code}");
        }
    }

    #[test]
    fn default_shape_of_every_code() {
        let r = ProblemRenderer::default();
        for code in Code::ALL {
            let out = r.build(&Problem::new(code));
            assert_eq!(out.status, code.status(), "{code}");
            assert_eq!(r.status(code), code.status());
            let want = format!(
                r#"{{"type":"urn:keygate:problem:{code}","title":{},"status":{},"detail":{},"code":"{code}"}}"#,
                json_string(code.title()),
                code.status().as_u16(),
                json_string(code.default_message()),
            );
            assert_eq!(out.body, want, "{code}");
            let parsed: serde_json::Value = serde_json::from_str(&out.body).unwrap();
            assert_eq!(parsed["status"], code.status().as_u16(), "{code}");
            assert_eq!(header(&out, CONTENT_TYPE), Some("application/problem+json"));
            assert_eq!(header(&out, CACHE_CONTROL), Some("no-store"));
            assert_eq!(header(&out, RETRY_AFTER), None, "{code}");
            let challenge = match code {
                Code::MissingCredentials => Some(r#"Bearer realm="keygate""#),
                Code::InvalidKey | Code::KeyInactive | Code::KeyExpired => {
                    Some(r#"Bearer realm="keygate", error="invalid_token""#)
                }
                Code::InsufficientScope => Some(r#"Bearer error="insufficient_scope""#),
                Code::AdminUnauthorized => Some(r#"Bearer realm="keygate-admin""#),
                _ => None,
            };
            assert_eq!(header(&out, WWW_AUTHENTICATE), challenge, "{code}");
            assert_eq!(out.headers.len(), 2 + usize::from(challenge.is_some()), "{code}");
        }
    }

    #[test]
    fn default_bodies_exactly() {
        let r = ProblemRenderer::default();
        let cases = [
            (
                Problem::new(Code::MissingCredentials),
                r#"{"type":"urn:keygate:problem:missing_credentials","title":"Missing credentials","status":401,"detail":"Send your API key in the Authorization header as 'Bearer <key>' or in X-API-Key.","code":"missing_credentials"}"#,
            ),
            (
                Problem::insufficient_scope("write"),
                r#"{"type":"urn:keygate:problem:insufficient_scope","title":"Insufficient scope","status":403,"detail":"This action requires the 'write' scope","code":"insufficient_scope"}"#,
            ),
            (
                Problem::rate_limited(17),
                r#"{"type":"urn:keygate:problem:rate_limited","title":"Too many requests","status":429,"detail":"This API key has exceeded its plan's rate limit. Retry after the number of seconds in Retry-After.","code":"rate_limited"}"#,
            ),
            (
                Problem::new(Code::BadRequest).with_message("the path contains an encoded slash"),
                r#"{"type":"urn:keygate:problem:bad_request","title":"Bad request","status":400,"detail":"the path contains an encoded slash","code":"bad_request"}"#,
            ),
        ];
        for (problem, want) in cases {
            assert_eq!(r.build(&problem).body, want);
        }
    }

    #[test]
    fn scope_and_retry_headers() {
        let r = ProblemRenderer::default();
        let scope = r.build(&Problem::insufficient_scope("can_write_order"));
        assert_eq!(
            header(&scope, WWW_AUTHENTICATE),
            Some(r#"Bearer error="insufficient_scope", scope="can_write_order""#)
        );
        let odd = r.build(&Problem::insufficient_scope(r#"a"b\c"#));
        assert_eq!(
            header(&odd, WWW_AUTHENTICATE),
            Some(r#"Bearer error="insufficient_scope", scope="a\"b\\c""#)
        );
        let unprintable = r.build(&Problem::insufficient_scope("a\nb"));
        assert_eq!(
            header(&unprintable, WWW_AUTHENTICATE),
            Some(r#"Bearer error="insufficient_scope""#)
        );
        let limited = r.build(&Problem::rate_limited(42));
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&limited, RETRY_AFTER), Some("42"));
    }

    #[test]
    fn server_errors_keep_their_generic_message() {
        let r = ProblemRenderer::default();
        for code in [
            Code::AuthUnavailable,
            Code::UpstreamUnavailable,
            Code::InternalError,
        ] {
            let out = r.build(&Problem::new(code).with_message("pool timed out at db.internal:5432"));
            assert!(!out.body.contains("db.internal"), "{}", out.body);
            assert!(out.body.contains(&json_string(code.default_message())));
        }
    }

    #[test]
    fn escaping_matches_serde_json() {
        for text in [
            "",
            "plain",
            r#"quote " and backslash \ "#,
            "new\nline\r\ttab\u{08}\u{0C}",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "naïve café ✓ 🙂",
            "</script>",
        ] {
            let mut out = String::new();
            push_json_escaped(&mut out, text);
            let quoted = json_string(text);
            assert_eq!(out, quoted[1..quoted.len() - 1], "{text:?}");
        }
    }

    #[test]
    fn template_substitution_and_escaping() {
        let r = renderer(&[
            (
                "bad_request",
                template(
                    Some(
                        r#"{"c":"{code}","m":"{message}","s":{status},"scope":"{scope}","r":"{retry_after}"}"#,
                    ),
                    None,
                    None,
                ),
            ),
            (
                "rate_limited",
                template(Some(r#"{"retry":{retry_after},"at":"{status}"}"#), None, None),
            ),
            (
                "insufficient_scope",
                template(Some(r#"{"missing":"{scope}","msg":"{message}"}"#), None, None),
            ),
        ]);
        let out = r.build(&Problem::new(Code::BadRequest).with_message("he said \"no\"\\\nthen left"));
        assert_eq!(
            out.body,
            r#"{"c":"bad_request","m":"he said \"no\"\\\nthen left","s":400,"scope":"","r":""}"#
        );
        assert_eq!(header(&out, CONTENT_TYPE), Some("application/json"));
        assert_eq!(header(&out, CACHE_CONTROL), Some("no-store"));
        let parsed: serde_json::Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(parsed["m"], "he said \"no\"\\\nthen left");

        let limited = r.build(&Problem::rate_limited(9));
        assert_eq!(limited.body, r#"{"retry":9,"at":"429"}"#);
        assert_eq!(header(&limited, RETRY_AFTER), Some("9"));

        let scope = r.build(&Problem::insufficient_scope("write"));
        assert_eq!(
            scope.body,
            r#"{"missing":"write","msg":"This action requires the 'write' scope"}"#
        );
        assert_eq!(
            header(&scope, WWW_AUTHENTICATE),
            Some(r#"Bearer error="insufficient_scope", scope="write""#),
            "headers are kept whatever the template"
        );
    }

    #[test]
    fn template_parts() {
        let cases: &[(&str, &[Part])] = &[
            ("", &[]),
            ("{}", &[Part::Literal("{}".into())]),
            ("{code}{status}", &[Part::Code, Part::Status]),
            (
                r#"{"a":"{message}"}"#,
                &[
                    Part::Literal(r#"{"a":""#.into()),
                    Part::Message,
                    Part::Literal(r#""}"#.into()),
                ],
            ),
            (
                "{{scope}}",
                &[Part::Literal("{".into()), Part::Scope, Part::Literal("}".into())],
            ),
            ("{codes} {code", &[Part::Literal("{codes} {code".into())]),
            ("{retry_after}", &[Part::RetryAfter]),
        ];
        for (text, want) in cases {
            assert_eq!(compile(text), *want, "{text}");
        }
    }

    #[test]
    fn status_override_and_content_types() {
        let r = renderer(&[
            ("invalid_key", template(None, None, Some(403))),
            (
                "key_expired",
                template(Some("expired"), Some("text/plain; charset=utf-8"), None),
            ),
            (
                "plan_forbidden",
                template(None, Some("application/json"), Some(402)),
            ),
            ("key_inactive", template(Some("{status}"), None, Some(410))),
        ]);
        let invalid = r.build(&Problem::new(Code::InvalidKey));
        assert_eq!(invalid.status, StatusCode::FORBIDDEN);
        assert_eq!(r.status(Code::InvalidKey), StatusCode::FORBIDDEN);
        assert_eq!(
            invalid.body,
            format!(
                r#"{{"type":"urn:keygate:problem:invalid_key","title":"Invalid API key","status":403,"detail":{},"code":"invalid_key"}}"#,
                json_string(Code::InvalidKey.default_message())
            )
        );
        assert_eq!(header(&invalid, CONTENT_TYPE), Some("application/problem+json"));
        assert_eq!(
            header(&invalid, WWW_AUTHENTICATE),
            None,
            "no challenge once not a 401"
        );

        let expired = r.build(&Problem::new(Code::KeyExpired));
        assert_eq!((expired.status.as_u16(), expired.body.as_str()), (401, "expired"));
        assert_eq!(header(&expired, CONTENT_TYPE), Some("text/plain; charset=utf-8"));
        assert!(header(&expired, WWW_AUTHENTICATE).is_some());

        let plan = r.build(&Problem::new(Code::PlanForbidden));
        assert_eq!(plan.status.as_u16(), 402);
        assert_eq!(header(&plan, CONTENT_TYPE), Some("application/json"));
        assert!(plan.body.contains(r#""status":402"#));

        let inactive = r.build(&Problem::new(Code::KeyInactive));
        assert_eq!((inactive.status.as_u16(), inactive.body.as_str()), (410, "410"));
    }

    #[test]
    fn gateway_codes_cannot_be_templated() {
        let r = renderer(&[("not_found", template(Some("nope"), None, Some(200)))]);
        let out = r.build(&Problem::new(Code::NotFound));
        assert_eq!(out.status, StatusCode::NOT_FOUND);
        assert!(out.body.starts_with(r#"{"type":"urn:keygate:problem:not_found""#));
    }

    #[test]
    fn validation_problems_list_their_fields() {
        let r = ProblemRenderer::default();
        let out = r.build(&Problem::validation_failed(vec![
            FieldError::new("scopes[1]", "invalid scope \"a b\""),
            FieldError::new("plan", "unknown plan"),
        ]));
        assert_eq!(out.status, StatusCode::UNPROCESSABLE_ENTITY);
        let parsed: serde_json::Value = serde_json::from_str(&out.body).unwrap();
        assert_eq!(parsed["code"], "validation_failed");
        assert_eq!(
            parsed["errors"],
            serde_json::json!([
                {"field": "scopes[1]", "message": "invalid scope \"a b\""},
                {"field": "plan", "message": "unknown plan"},
            ])
        );
        let admin = r.build(&Problem::new(Code::AdminUnauthorized));
        assert_eq!(admin.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            header(&admin, WWW_AUTHENTICATE),
            Some(r#"Bearer realm="keygate-admin""#)
        );
    }

    #[test]
    fn credential_hints() {
        assert_eq!(
            credential_hint(["authorization", "x-api-key"]),
            Code::MissingCredentials.default_message()
        );
        assert_eq!(credential_hint(["x-token"]), "Send your API key in x-token.");
        assert_eq!(
            credential_hint(["Authorization", "x-a", "x-b"]),
            "Send your API key in the Authorization header as 'Bearer <key>', in x-a or in x-b."
        );
        assert_eq!(credential_hint([]), Code::MissingCredentials.default_message());

        let r = ProblemRenderer::default()
            .with_default_message(Code::MissingCredentials, credential_hint(["x-token"]));
        let out = r.build(&Problem::new(Code::MissingCredentials));
        assert!(
            out.body.contains(r#""detail":"Send your API key in x-token.""#),
            "{}",
            out.body
        );
    }

    #[tokio::test]
    async fn render_builds_the_response() {
        let r = renderer(&[(
            "invalid_key",
            template(Some(r#"{"e":"{message}"}"#), None, Some(403)),
        )]);
        let response = r.render(&Problem::new(Code::InvalidKey).with_message("nope"));
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        assert_eq!(&body[..], br#"{"e":"nope"}"#);
    }

    /// The shipped example configs reproduce their APIs' error bodies byte
    /// for byte.
    #[test]
    fn example_configs_reproduce_their_apis() {
        let load = |name: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config/examples")
                .join(name);
            let env: BTreeMap<String, String> = BTreeMap::new();
            let config = crate::config::load(&path, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
            (ProblemRenderer::new(&config.errors), config)
        };
        let check = |r: &ProblemRenderer, problem: Problem, status: u16, content_type: &str, body: &str| {
            let out = r.build(&problem);
            assert_eq!(
                (out.status.as_u16(), header(&out, CONTENT_TYPE), out.body.as_str()),
                (status, Some(content_type), body),
                "{}",
                problem.code
            );
            assert_eq!(header(&out, CACHE_CONTROL), Some("no-store"));
        };
        let json = "application/json";

        let (techrar, _) = load("techrar.toml");
        let invalid_token = r#"{"error":{"code":"-101","messages":["Invalid token"]}}"#;
        for code in [
            Code::MissingCredentials,
            Code::InvalidKey,
            Code::KeyInactive,
            Code::KeyExpired,
        ] {
            check(&techrar, Problem::new(code), 401, json, invalid_token);
        }
        check(
            &techrar,
            Problem::insufficient_scope("can_write_order"),
            403,
            json,
            r#"{"error":{"code":"-401","messages":["This action requires the 'can_write_order' scope"]}}"#,
        );
        check(
            &techrar,
            Problem::new(Code::PlanForbidden),
            403,
            json,
            r#"{"error":{"code":"-401","messages":["This API key's plan does not include API access."]}}"#,
        );
        let techrar_limited = techrar.build(&Problem::rate_limited(3));
        assert_eq!(header(&techrar_limited, CONTENT_TYPE), Some(PROBLEM_JSON));

        let (techdocs, config) = load("techdocs.toml");
        check(
            &techdocs,
            Problem::new(Code::InvalidKey).with_message("Invalid token"),
            401,
            json,
            r#"{"error":{"code":"INVALID_TOKEN","message":"Invalid token","status":401}}"#,
        );
        check(
            &techdocs,
            Problem::new(Code::InvalidKey),
            401,
            json,
            r#"{"error":{"code":"INVALID_TOKEN","message":"The API key is not valid. Check that it was copied in full and has not been revoked or rotated.","status":401}}"#,
        );
        check(
            &techdocs,
            Problem::rate_limited(12),
            429,
            json,
            r#"{"error":{"code":"RATE_LIMITED","message":"This API key has exceeded its plan's rate limit. Retry after the number of seconds in Retry-After.","status":429}}"#,
        );
        check(
            &techdocs,
            Problem::insufficient_scope("docs:write"),
            403,
            json,
            r#"{"error":{"code":"INSUFFICIENT_SCOPE","message":"This action requires the 'docs:write' scope","status":403}}"#,
        );
        for code in Code::ALL.into_iter().filter(|c| c.is_templatable()) {
            let body = techdocs.build(&Problem::new(code)).body;
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(parsed["error"]["status"], code.status().as_u16(), "{code}");
        }
        let minutes = |plan: &str| -> Vec<(u64, u64)> {
            config.plans[plan]
                .limits
                .iter()
                .map(|l| (l.requests, l.per.as_secs()))
                .collect()
        };
        assert_eq!(minutes("free"), [(1000, 3600), (50, 60)]);
        assert_eq!(minutes("pro"), [(10_000, 3600), (500, 60)]);
        assert!(config.plans["enterprise"].unlimited);

        let (trucustom, config) = load("trucustom.toml");
        check(
            &trucustom,
            Problem::insufficient_scope("write"),
            403,
            json,
            r#"{"error":"Forbidden","message":"This action requires the 'write' scope"}"#,
        );
        check(
            &trucustom,
            Problem::new(Code::KeyExpired),
            401,
            json,
            r#"{"error":"Unauthorized","message":"This API key has expired. Use a current key or ask for a new one."}"#,
        );
        check(
            &trucustom,
            Problem::new(Code::MissingCredentials),
            401,
            json,
            r#"{"error":"Unauthorized","message":"Send your API key in the Authorization header as 'Bearer <key>' or in X-API-Key."}"#,
        );
        assert!(config.auth.method_scopes);
        assert_eq!(config.keys.format, crate::keys::KeyFormat::Hex64);
        assert_eq!(config.keys.default_prefix.as_str(), "tc_");
        let table = crate::policy::RouteTable::new(config.routes, config.auth.default_scopes, true);
        let post = table.decide(
            &http::Method::POST,
            &crate::policy::normalize("/v1/things").unwrap(),
        );
        assert_eq!(
            post,
            crate::policy::Access::Protected {
                route: "default",
                required: &["write".to_owned()]
            }
        );

        let (trakkr, _) = load("trakkr.toml");
        check(
            &trakkr,
            Problem::new(Code::MissingCredentials),
            401,
            json,
            r#"{"error":"Missing API key"}"#,
        );
        for code in [Code::InvalidKey, Code::KeyInactive, Code::KeyExpired] {
            check(
                &trakkr,
                Problem::new(code),
                403,
                json,
                r#"{"error":"Invalid API key"}"#,
            );
        }
        let missing = trakkr.build(&Problem::new(Code::MissingCredentials));
        assert_eq!(
            header(&missing, WWW_AUTHENTICATE),
            Some(r#"Bearer realm="keygate""#)
        );
    }
}
