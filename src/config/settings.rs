//! Resolved settings of the sections whose owning modules do not hold
//! them yet. STYLE §2 wants each module to own the small settings struct
//! that `config` fills; each of these moves to its owner when it is next
//! touched: server settings to `proxy`, logging to `telemetry`, the
//! credential headers and default scopes of `[auth]` (`AuthRules`) to
//! `auth`/`policy`. Those that have moved: `KeySettings` (`keys`),
//! `StoreSettings` (`store`), routes, path globs and plans (`policy`), error
//! templates (`problem`), `AdminSettings` (`admin`), `TokenSettings`
//! (`token`), `UpstreamSettings` (`proxy::upstream`), the authenticator's
//! `AuthSettings` (`auth`), `RateLimitSettings` (`ratelimit`).
//!
//! Everything here is already checked: durations are parsed, names
//! validated. `Debug` never prints a secret.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::admin::AdminSettings;
use crate::telemetry::LogFormat;

/// The error codes an `[errors.<code>]` table may name: SPEC §5's codes, plus
/// the 413 and 431 answers keygate also makes itself.
pub const ERROR_CODES: [&str; 14] = [
    "missing_credentials",
    "invalid_key",
    "key_inactive",
    "key_expired",
    "insufficient_scope",
    "plan_forbidden",
    "rate_limited",
    "ambiguous_credentials",
    "bad_request",
    "auth_unavailable",
    "upstream_unavailable",
    "upstream_timeout",
    "payload_too_large",
    "headers_too_large",
];

/// `[server]`: the two listeners and request limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Proxy listener (`server.listen`).
    pub listen: SocketAddr,
    /// Admin listener: admin API, `/metrics`, `/healthz`, `/readyz`
    /// (`server.admin_listen`).
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may finish after a shutdown signal
    /// (`server.shutdown_grace`).
    pub shutdown_grace: Duration,
    /// Largest request head accepted, in bytes; more answers 431
    /// (`server.max_header_bytes`).
    pub max_header_bytes: usize,
    /// Largest request body accepted, in bytes; more answers 413. `None` =
    /// unlimited, streamed (`server.max_body_bytes`).
    pub max_body_bytes: Option<u64>,
    /// Most client connections the proxy listener keeps open at once; past
    /// it, new connections wait in the listen backlog until one closes
    /// (`server.max_connections`).
    pub max_connections: usize,
    /// Longest a client may take to send a request head on HTTP/1 (from
    /// the connection's start or the end of its previous response), then
    /// the connection is closed: the slowloris guard
    /// (`server.header_read_timeout`).
    pub header_read_timeout: Duration,
}

/// How a credential header carries the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialScheme {
    /// `Authorization: Bearer <key>` (scheme case-insensitive).
    Bearer,
    /// The header value is the key itself (`X-API-Key: <key>`).
    Raw,
}

/// One header that may carry a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialHeader {
    /// Lowercase header name.
    pub name: String,
    /// `Bearer` for `authorization`, `Raw` for every other header.
    pub scheme: CredentialScheme,
}

/// The request-facing part of `[auth]`: where a credential is read from and
/// what a request no route matches needs. The authenticator's part (failure
/// throttles, argon2 concurrency, and `[cache]`) is its own
/// [`crate::auth::AuthSettings`], in [`super::Config::authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRules {
    /// Headers that carry a credential, in configured order (`auth.headers`).
    pub headers: Vec<CredentialHeader>,
    /// Scopes a request no route matches needs; empty = any valid key
    /// (`auth.default_scopes`).
    pub default_scopes: BTreeSet<String>,
    /// Whether `read` (GET/HEAD), `write` (POST/PUT/PATCH) and `delete`
    /// (DELETE) are required by method (`auth.method_scopes`).
    pub method_scopes: bool,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Output format (`log.format`).
    pub format: LogFormat,
    /// tracing filter directives, e.g. `info` or `keygate=debug,info`
    /// (`log.level`); already checked to parse.
    pub level: String,
}
