//! Resolved settings of the sections whose owning modules have not landed
//! yet. STYLE §2 wants each module to own the small settings struct that
//! `config` fills; until then they live here, and each moves to its owner
//! when that module lands: server and upstream settings to `proxy`, auth and
//! cache to `auth`, routes and plans to `policy`, rate limiting to
//! `ratelimit`, error templates to `problem`, tokens to `token`, admin to
//! `admin`, logging to `telemetry`. (`KeySettings` and `StoreSettings`
//! already live in `keys` and `store`.)
//!
//! Everything here is already checked: durations are parsed, globs compiled,
//! names validated. `Debug` never prints a secret.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::keys::{KeyHash, SecretString};
use crate::store::redact_url;
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

/// The placeholders an error body template may use (SPEC §5).
pub const TEMPLATE_PLACEHOLDERS: [&str; 5] = ["code", "message", "status", "scope", "retry_after"];

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
}

/// `[upstream]`: the API keygate stands in front of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// The URL as configured, without a trailing `/` (`upstream.url`).
    pub url: String,
    /// `host:port` to connect to (port 80 when the URL names none).
    pub authority: String,
    /// Path prefix to put before every forwarded path: empty, or `/base`
    /// without a trailing `/`.
    pub base_path: String,
    /// Time until the upstream's response head; then 504 `upstream_timeout`
    /// (`upstream.timeout`).
    pub timeout: Duration,
    /// Time allowed to connect; then 502 `upstream_unavailable`
    /// (`upstream.connect_timeout`).
    pub connect_timeout: Duration,
    /// Idle pooled connections kept per host (`upstream.pool_max_idle_per_host`).
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept (`upstream.pool_idle_timeout`).
    pub pool_idle_timeout: Duration,
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

/// `[auth]`: how keys are presented and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Headers that carry a credential, in configured order (`auth.headers`).
    pub headers: Vec<CredentialHeader>,
    /// Scopes a request no route matches needs; empty = any valid key
    /// (`auth.default_scopes`).
    pub default_scopes: BTreeSet<String>,
    /// Whether `read` (GET/HEAD), `write` (POST/PUT/PATCH) and `delete`
    /// (DELETE) are required by method (`auth.method_scopes`).
    pub method_scopes: bool,
    /// Failed verifications a second for one existing short prefix before
    /// further unknown secrets for it are refused without hashing
    /// (`auth.max_failures_per_prefix`).
    pub max_failures_per_prefix: u32,
    /// argon2 verifications running at once; sizes the semaphore in front of
    /// `spawn_blocking` (`auth.hash_concurrency`, default: CPU count).
    pub hash_concurrency: usize,
}

/// `[cache]`: verified-key cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Lifetime of a positive entry (`cache.ttl`).
    pub ttl: Duration,
    /// Lifetime of a negative (unknown key) entry; zero = none kept
    /// (`cache.negative_ttl`).
    pub negative_ttl: Duration,
    /// Most entries kept (`cache.max_entries`).
    pub max_entries: u64,
    /// How long past its TTL an entry may still serve while the store is
    /// unreachable; zero = never (`cache.stale_if_error`).
    pub stale_if_error: Duration,
    /// How often the store's change feed is polled, at most 1 s so changes
    /// reach every gateway within a second (SPEC §7) (`cache.poll_interval`).
    pub poll_interval: Duration,
}

/// Where rate-limit counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitBackend {
    /// In-process counters (the default).
    Local,
    /// Redis, shared by every replica; falls back to local when unreachable.
    Redis,
}

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// None.
    Off,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (the default).
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
}

/// `[rate_limit]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Counter backend (`rate_limit.backend`).
    pub backend: RateLimitBackend,
    /// `redis://` or `rediss://` URL, used by the `redis` backend
    /// (`rate_limit.redis_url`). May carry a password: print it with
    /// [`crate::store::redact_url`].
    pub redis_url: String,
    /// Header spelling (`rate_limit.headers`).
    pub headers: RateLimitHeaders,
}

impl fmt::Debug for RateLimitSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitSettings")
            .field("backend", &self.backend)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("headers", &self.headers)
            .finish()
    }
}

/// A compiled path glob. `*` matches any run of characters within one
/// segment; `**` (a whole segment) matches any number of whole segments,
/// none included, so `/v1/orders/**` matches `/v1/orders`, `/v1/orders/1`
/// and `/v1/orders/1/items` but not `/v1/ordersx`. Matching is on the
/// normalised path, byte for byte, case-sensitive.
#[derive(Clone, PartialEq, Eq)]
pub struct PathGlob {
    pattern: String,
    segments: Vec<GlobSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobSegment {
    /// Exactly this text.
    Literal(String),
    /// Text with `*` wildcards, within one segment.
    Wild(String),
    /// `**`: zero or more whole segments.
    Any,
}

impl GlobSegment {
    fn matches(&self, segment: &str) -> bool {
        match self {
            Self::Literal(text) => text == segment,
            Self::Wild(pattern) => wildcard_match(pattern.as_bytes(), segment.as_bytes()),
            Self::Any => true,
        }
    }
}

/// Classic single-star backtracking match of `*` wildcards: linear in
/// practice, O(pattern × text) at worst, never exponential.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Percent-escapes in a glob must be written the way the normalised path
/// writes them (`policy::path`: unreserved characters decoded, other escapes
/// in uppercase hex, `%2F`, `%5C` and `%00` refused), or the glob could never
/// match.
fn check_escapes(pattern: &str) -> Result<(), String> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let upper_hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
        let escape = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(upper_hex));
        let Some(hex) = escape else {
            return Err(format!(
                "path glob {pattern:?} has a '%' that is not followed by two uppercase hex digits; write escapes as a normalised path has them (e.g. %C3%A9)"
            ));
        };
        let value = hex.iter().fold(0u8, |acc, &h| {
            let digit = if h.is_ascii_digit() {
                h - b'0'
            } else {
                h - b'A' + 10
            };
            acc * 16 + digit
        });
        if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
            return Err(format!(
                "path glob {pattern:?} escapes the unreserved character {:?}, which a normalised path always has decoded: write it plainly",
                char::from(value)
            ));
        }
        if matches!(value, b'/' | b'\\' | 0) {
            return Err(format!(
                "path glob {pattern:?} has %{}, which normalisation refuses, so it never matches",
                String::from_utf8_lossy(hex)
            ));
        }
        i += 3;
    }
    Ok(())
}

impl PathGlob {
    /// Compiles a glob. It must start with `/`; `**` must be a whole segment;
    /// empty (`//`), `.` and `..` segments are refused because a normalised
    /// path never contains them (a trailing `/` is allowed).
    pub fn new(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("path glob {pattern:?} must start with '/'"));
        };
        if let Some(c) = pattern
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
        {
            return Err(format!(
                "path glob {pattern:?} contains {c:?}: globs match the path only (no query, fragment, spaces or backslashes)"
            ));
        }
        check_escapes(pattern)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            let segment = match part {
                "**" => GlobSegment::Any,
                "" if i == last => GlobSegment::Literal(String::new()),
                "" => {
                    return Err(format!(
                        "path glob {pattern:?} has an empty segment ('//'), which a normalised path never contains"
                    ));
                }
                "." | ".." => {
                    return Err(format!(
                        "path glob {pattern:?} has a {part:?} segment, which a normalised path never contains"
                    ));
                }
                p if p.contains("**") => {
                    return Err(format!(
                        "path glob {pattern:?}: '**' must be a whole segment (as in /v1/**), not part of {p:?}; use '*' within a segment"
                    ));
                }
                p if p.contains('*') => GlobSegment::Wild(p.to_owned()),
                p => GlobSegment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            segments,
        })
    }

    /// Whether the normalised `path` (starting with `/`, no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        // The same single-star backtracking as `wildcard_match`, one level
        // up: `**` is the star, each other segment matches exactly one part.
        let segs = &self.segments;
        let (mut s, mut p) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while p < parts.len() {
            if s < segs.len() && segs[s] == GlobSegment::Any {
                star = Some((s, p));
                s += 1;
            } else if s < segs.len() && segs[s].matches(parts[p]) {
                s += 1;
                p += 1;
            } else if let Some((ss, sp)) = star {
                s = ss + 1;
                p = sp + 1;
                star = Some((ss, sp + 1));
            } else {
                return false;
            }
        }
        segs[s..].iter().all(|seg| *seg == GlobSegment::Any)
    }

    /// The glob as configured.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathGlob({:?})", self.pattern)
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// One `[[routes]]` entry; the table is first-match-wins in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// Path glob (`routes[i].path`).
    pub path: PathGlob,
    /// Uppercase method tokens, deduplicated, in configured order; empty =
    /// every method (`routes[i].methods` absent).
    pub methods: Vec<String>,
    /// Scopes all required (`routes[i].scopes`).
    pub scopes: BTreeSet<String>,
    /// Whether a key is required; `false` forwards without one
    /// (`routes[i].auth`).
    pub auth: bool,
}

impl RouteSettings {
    /// Whether the route applies to `method` (compared case-sensitively, as
    /// HTTP methods are; the configured ones are uppercase).
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Whether the route matches a request: the glob matches the normalised
    /// path and the method is allowed.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.allows_method(method) && self.path.matches(path)
    }
}

/// Whose requests share a plan's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Each key has its own counters (the default).
    Key,
    /// All keys of one owner share counters.
    Owner,
}

/// One rate-limit window of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimit {
    /// Requests allowed per window, at least 1.
    pub requests: u64,
    /// Window length, from 1 s to 30 d.
    pub per: Duration,
}

/// One `[plans.<name>]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    /// Whether keys on the plan may call the API; `false` answers 403
    /// `plan_forbidden` (`plans.<name>.api_access`).
    pub api_access: bool,
    /// No rate limits at all (`plans.<name>.unlimited`).
    pub unlimited: bool,
    /// Whose requests share the limits (`plans.<name>.per`).
    pub per: LimitScope,
    /// Every window applies at once; empty = no limits. Windows are distinct.
    pub limits: Vec<PlanLimit>,
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

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Output format (`log.format`).
    pub format: LogFormat,
    /// tracing filter directives, e.g. `info` or `keygate=debug,info`
    /// (`log.level`); already checked to parse.
    pub level: String,
}

/// `[tokens]`: the JWT exchange (SPEC §8).
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Whether `/auth/login`, `/auth/refresh` and `/oauth/token` are served
    /// (`tokens.enabled`).
    pub enabled: bool,
    /// HMAC signing key, at least 32 bytes; always set when enabled
    /// (`tokens.signing_key` or `KEYGATE_TOKENS__SIGNING_KEY`).
    pub signing_key: Option<SecretString>,
    /// Access-token lifetime (`tokens.access_ttl`).
    pub access_ttl: Duration,
    /// Refresh-token lifetime (`tokens.refresh_ttl`).
    pub refresh_ttl: Duration,
}

/// `[admin]`: who may call the admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// argon2id PHC hashes of accepted admin tokens (`admin.tokens`),
    /// checked to parse.
    pub tokens: Vec<KeyHash>,
    /// A plain admin token from `KEYGATE_ADMIN_TOKEN`, read once at load
    /// (compare it in constant time).
    pub env_token: Option<SecretString>,
}

impl AdminSettings {
    /// Whether any admin token is configured; without one the admin API
    /// refuses everything but health and metrics.
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty() || self.env_token.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("/v1/orders/**", "/v1/orders", true),
            ("/v1/orders/**", "/v1/orders/", true),
            ("/v1/orders/**", "/v1/orders/1", true),
            ("/v1/orders/**", "/v1/orders/1/items", true),
            ("/v1/orders/**", "/v1/ordersx", false),
            ("/v1/orders/**", "/v1/order", false),
            ("/v1/orders/**", "/v2/orders/1", false),
            ("/v1/*/items", "/v1/1/items", true),
            ("/v1/*/items", "/v1/abc/items", true),
            ("/v1/*/items", "/v1/1/2/items", false),
            ("/v1/*/items", "/v1/items", false),
            ("/v1/*/items", "/v1/1/items/x", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/", "/", true),
            ("/", "/x", false),
            ("/healthz", "/healthz", true),
            ("/healthz", "/healthz/", false),
            ("/healthz", "/healthzz", false),
            ("/files/*.json", "/files/a.json", true),
            ("/files/*.json", "/files/a.txt", false),
            ("/files/*.json", "/files/a/b.json", false),
            ("/a/**/z", "/a/z", true),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/b/c/y", false),
            ("/a/**/b/**/c", "/a/x/b/y/b/c", true),
            ("/a/**/b/**/c", "/a/x/c", false),
            ("/v1/orders/**", "v1/orders", false),
            ("/V1/**", "/v1/x", false),
            ("/caf%C3%A9/*", "/caf%C3%A9/menu", true),
        ];
        for &(glob, path, want) in cases {
            let compiled = PathGlob::new(glob).unwrap();
            assert_eq!(compiled.matches(path), want, "{glob} vs {path}");
        }
    }

    #[test]
    fn bad_globs_are_refused() {
        for bad in [
            "v1/orders",
            "",
            "/v1/**x",
            "/v1/x**",
            "/v1/***",
            "/v1//x",
            "/v1/../x",
            "/./x",
            "/v1?x=1",
            "/v1#f",
            "/v 1",
            "/caf%c3%a9",
            "/%41bc",
            "/a%2Fb",
            "/a%",
        ] {
            assert!(PathGlob::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_match_methods() {
        let route = RouteSettings {
            path: PathGlob::new("/v1/**").unwrap(),
            methods: vec!["GET".into(), "HEAD".into()],
            scopes: BTreeSet::new(),
            auth: true,
        };
        assert!(route.matches("GET", "/v1/x"));
        assert!(!route.matches("POST", "/v1/x"));
        assert!(!route.matches("GET", "/v2/x"));
        let any = RouteSettings {
            methods: vec![],
            ..route
        };
        assert!(any.matches("DELETE", "/v1"));
    }

    #[test]
    fn redis_url_prints_without_password() {
        let settings = RateLimitSettings {
            backend: RateLimitBackend::Redis,
            redis_url: "redis://:hunter2@cache:6379".into(),
            headers: RateLimitHeaders::Ietf,
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
