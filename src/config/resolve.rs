//! Raw mirror → [`Config`]: defaults filled in, durations parsed, URLs and
//! addresses checked, route globs compiled, plan references checked. Every
//! problem is collected with its TOML key path; resolution carries on past
//! each one (with the default in its place) so the operator sees them all.
//!
//! What the owning modules decide stays with them: the key prefix rules
//! ([`KeyPrefix::new`]), argon2 limits ([`HashParams::validate`]), scope and
//! duration syntax ([`validate_scope`], [`parse_duration`]), token signing
//! keys ([`SigningKeys::new`], [`Tokens::new`], whose errors are mapped back
//! to the key's TOML path).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use argon2::password_hash::PasswordHash;
use zeroize::Zeroizing;

use super::raw::{
    Field, Lenient, RawAdmin, RawAuth, RawCache, RawConfig, RawDatabase, RawErrorTemplate, RawHashParams,
    RawKeys, RawLog, RawPlan, RawRateLimit, RawRoute, RawServer, RawTokenKey, RawTokens, RawUpstream,
    RawUsage, Secret, Section, index_path, key_path,
};
use super::settings::{
    AdminSettings, AuthRules, CredentialHeader, CredentialScheme, ERROR_CODES, LogSettings, ServerSettings,
};
use super::{Config, ConfigError};
use crate::auth::AuthSettings;
use crate::auth::usage::UsageSettings;
use crate::keys::model::{parse_duration, validate_scope};
use crate::keys::usage::Retention;
use crate::keys::{HashParams, KeyFormat, KeyHash, KeyPrefix, KeySettings, SecretString};
use crate::policy::{LimitScope, PathGlob, PlanLimit, PlanSettings, RouteSettings};
use crate::problem::{ErrorTemplate, TEMPLATE_PLACEHOLDERS};
use crate::proxy::upstream::UpstreamSettings;
use crate::ratelimit::{Backend as RateLimitBackend, RateLimitHeaders, RateLimitSettings, RedisSettings};
use crate::store::{StoreSettings, redact_url};
use crate::telemetry::{LogFormat, trim_directives};
use crate::token::keys::{MAX_KID_LEN, MIN_HMAC_SECRET_BYTES};
use crate::token::{Algorithm, KeyError, KeySpec, SigningKeys, TokenConfigError, TokenSettings, Tokens};

/// `server.listen` default: loopback, so a fresh install exposes nothing.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// `server.admin_listen` default: loopback.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);
/// `server.max_connections` default: far above what one gateway serves
/// (it bounds memory under a connection flood, not normal traffic), and
/// below the usual container file limit (1,048,576).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `database.url` default: the embedded SQLite store, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keygate.db?mode=rwc";
/// `upstream.url` default.
pub const DEFAULT_UPSTREAM_URL: &str = "http://127.0.0.1:9000";
/// `rate_limit.redis_url` default.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// `keys.default_prefix` default.
pub const DEFAULT_KEY_PREFIX: &str = "kg_live_";
/// `auth.headers` default: `Authorization: Bearer` and `X-API-Key`.
pub const DEFAULT_AUTH_HEADERS: [&str; 2] = ["Authorization", "X-API-Key"];
/// `log.level` default.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Largest `tokens.keys[].private_key_file` read, in bytes: a PEM private
/// key is well under 1 KiB, so anything bigger is the wrong file.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;
/// The kid a key's material is checked under when its own kid is missing or
/// unusable, so that one mistake does not hide the other.
const STAND_IN_KID: &str = "stand-in";

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// Longest duration any setting accepts; keeps arithmetic on it far from
/// overflow.
const FOREVER: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Longest `usage.flush_interval`: counts wait in memory that long, and a
/// crash loses them.
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(600);
/// Shortest and longest rate-limit window (SPEC: "from 1s to 30d").
const WINDOWS: RangeInclusive<Duration> = SECOND..=Duration::from_secs(30 * 86_400);
/// Headers that cannot carry a credential: they mean something to HTTP or
/// to keygate itself.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "proxy-authorization",
    "cookie",
];

/// What resolution produced: the config when nothing was wrong, and every
/// problem.
#[derive(Debug)]
pub struct Outcome {
    /// The config, `None` when there are errors.
    pub config: Option<Config>,
    /// Every problem, in file order of sections.
    pub errors: Vec<ConfigError>,
}

/// Resolves the mirror. `admin_env_token` is `KEYGATE_ADMIN_TOKEN`.
pub fn resolve(raw: &RawConfig, admin_env_token: Option<String>) -> Outcome {
    let mut r = Resolver::default();
    let config = r.config(raw, admin_env_token);
    Outcome {
        config,
        errors: r.errors,
    }
}

/// The paths of the mirror's values with the wrong type (where the loader
/// reads an env override as a plain string instead), by the same reading
/// as [`resolve`] but without its side effects: no key file is read.
///
/// A type error never depends on a file's content: every value of a
/// `[[tokens.keys]]` entry is read before its `private_key_file`.
pub fn type_errors(raw: &RawConfig, admin_env_token: Option<String>) -> BTreeSet<String> {
    check_types(raw, admin_env_token).0
}

/// The reading behind [`type_errors`]: the paths of values with the wrong
/// type, and every problem the reading met (no file problem among them).
pub(super) fn check_types(
    raw: &RawConfig,
    admin_env_token: Option<String>,
) -> (BTreeSet<String>, Vec<ConfigError>) {
    let mut r = Resolver {
        types_only: true,
        ..Resolver::default()
    };
    r.config(raw, admin_env_token);
    (r.type_errors, r.errors)
}

impl Resolver {
    /// Reads and checks every section; the config when nothing was wrong.
    fn config(&mut self, raw: &RawConfig, admin_env_token: Option<String>) -> Option<Config> {
        let server = self.server(&raw.server);
        let database = self.database(&raw.database);
        let upstream = self.upstream(&raw.upstream);
        let keys = self.keys(&raw.keys);
        let (auth, authenticator) = self.auth(&raw.auth, &raw.cache);
        let rate_limit = self.rate_limit(&raw.rate_limit);
        let routes = self.routes(raw);
        let plans = self.plans(raw);
        let errors = self.errors(raw);
        let usage = self.usage(&raw.usage);
        let log = self.log(&raw.log);
        let tokens = self.tokens(&raw.tokens);
        let admin = self.admin(&raw.admin, admin_env_token);

        if let Some(default_plan) = keys.as_ref().and_then(|k| k.default_plan.as_ref()) {
            if !plans.contains_key(default_plan) {
                let defined: Vec<&str> = plans.keys().map(String::as_str).collect();
                let known = if defined.is_empty() {
                    "no plans are defined".to_owned()
                } else {
                    format!("defined: {}", defined.join(", "))
                };
                self.err(
                    "keys.default_plan",
                    format!(
                        "plan {:?} is not defined ({known}); add [plans.{}] or name a defined plan",
                        default_plan, default_plan
                    ),
                );
            }
        }

        match keys {
            Some(keys) if self.errors.is_empty() => Some(Config {
                server,
                database,
                upstream,
                keys,
                auth,
                authenticator,
                rate_limit,
                routes,
                plans,
                errors,
                usage,
                log,
                tokens,
                admin,
            }),
            _ => None,
        }
    }
}

/// The seed plans that apply when `[plans]` is absent.
pub fn seed_plans() -> BTreeMap<String, PlanSettings> {
    let limited = |limits: &[(u64, Duration)]| PlanSettings {
        api_access: true,
        unlimited: false,
        per: LimitScope::Key,
        limits: limits
            .iter()
            .map(|&(requests, per)| PlanLimit { requests, per })
            .collect(),
    };
    BTreeMap::from([
        ("free".to_owned(), limited(&[(1000, HOUR), (50, MINUTE)])),
        ("pro".to_owned(), limited(&[(10_000, HOUR), (500, MINUTE)])),
        (
            "enterprise".to_owned(),
            PlanSettings {
                api_access: true,
                unlimited: true,
                per: LimitScope::Key,
                limits: Vec::new(),
            },
        ),
    ])
}

/// A duration the way the file writes it: `30d`, `5m`, `500ms`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    let units: [(u128, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
    for (size, unit) in units {
        if ms >= size && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2): method names and header
/// names are tokens.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[derive(Default)]
struct Resolver {
    errors: Vec<ConfigError>,
    type_errors: BTreeSet<String>,
    /// Reading for [`type_errors`] only: no file is read.
    types_only: bool,
}

impl Resolver {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// A wrong-type problem (also remembered for the env retry).
    fn type_err(&mut self, path: &str, message: &str) {
        self.type_errors.insert(path.to_owned());
        self.err(path, message);
    }

    /// The value of a leaf, `None` when absent or of the wrong type (which
    /// is reported).
    fn get<T: Clone>(&mut self, path: &str, field: &Lenient<T>) -> Option<T> {
        match &field.0 {
            Field::Missing => None,
            Field::Valid(v) => Some(v.clone()),
            Field::Invalid(message) => {
                self.type_err(path, message);
                None
            }
        }
    }

    /// Like [`Self::get`] for secrets: the message never echoes the value.
    fn get_secret<T: Clone>(&mut self, path: &str, field: &Lenient<T>, expected: &str) -> Option<T> {
        match &field.0 {
            Field::Missing => None,
            Field::Valid(v) => Some(v.clone()),
            Field::Invalid(_) => {
                self.type_err(path, &format!("must be {expected} (value not shown)"));
                None
            }
        }
    }

    /// A table's mirror; its default (all keys absent) when absent or not a
    /// table (reported).
    fn section<T: Default + Clone>(&mut self, path: &str, section: &Section<T>) -> T {
        match &section.0 {
            Field::Missing => T::default(),
            Field::Valid(t) => t.clone(),
            Field::Invalid(message) => {
                self.type_err(path, message);
                T::default()
            }
        }
    }

    fn or<T: Clone>(&mut self, path: &str, field: &Lenient<T>, default: T) -> T {
        self.get(path, field).unwrap_or(default)
    }

    /// A whole number in `range`, converted to the target type.
    fn number<T: TryFrom<u64> + Copy>(
        &mut self,
        path: &str,
        field: &Lenient<u64>,
        default: T,
        range: RangeInclusive<u64>,
    ) -> T {
        let Some(v) = self.get(path, field) else {
            return default;
        };
        match T::try_from(v) {
            Ok(t) if range.contains(&v) => t,
            _ => {
                self.err(
                    path,
                    format!("{v} is out of range: use {} to {}", range.start(), range.end()),
                );
                default
            }
        }
    }

    /// A `u32` that must be at least `min`.
    fn at_least(&mut self, path: &str, field: &Lenient<u32>, default: u32, min: u32) -> u32 {
        match self.get(path, field) {
            Some(v) if v >= min => v,
            Some(v) => {
                self.err(path, format!("{v} is too small: use at least {min}"));
                default
            }
            None => default,
        }
    }

    /// A duration within `range`, parsed with the keys module's syntax.
    fn duration(
        &mut self,
        path: &str,
        field: &Lenient<String>,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let Some(text) = self.get(path, field) else {
            return default;
        };
        self.parse_duration_in(path, &text, range).unwrap_or(default)
    }

    fn parse_duration_in(
        &mut self,
        path: &str,
        text: &str,
        range: RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let parsed = match parse_duration(text) {
            Ok(d) => d.to_std().unwrap_or(Duration::ZERO),
            Err(e) => {
                self.err(path, e.to_string());
                return None;
            }
        };
        if range.contains(&parsed) {
            return Some(parsed);
        }
        let message = if *range.start() > Duration::ZERO && parsed < *range.start() {
            format!("{text:?} is too short: use at least {}", human(*range.start()))
        } else if parsed < *range.start() {
            format!("{text:?} is too short")
        } else {
            format!("{text:?} is too long: use at most {}", human(*range.end()))
        };
        self.err(path, message);
        None
    }

    /// A socket address (`IP:port`).
    fn socket(&mut self, path: &str, field: &Lenient<String>, default: SocketAddr) -> SocketAddr {
        let Some(text) = self.get(path, field) else {
            return default;
        };
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "{text:?} is not a socket address: use IP:port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080 (host names are not resolved)"
                    ),
                );
                default
            }
        }
    }

    /// One of a fixed set of words.
    fn choice<T: Copy>(
        &mut self,
        path: &str,
        field: &Lenient<String>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(text) = self.get(path, field) else {
            return default;
        };
        if let Some(&(_, v)) = choices.iter().find(|(name, _)| *name == text) {
            return v;
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        self.err(
            path,
            format!("unknown value {text:?}: expected {}", names.join(" or ")),
        );
        default
    }

    fn server(&mut self, raw: &Section<RawServer>) -> ServerSettings {
        let s = self.section("server", raw);
        let listen = self.socket("server.listen", &s.listen, DEFAULT_LISTEN);
        let admin_listen = self.socket("server.admin_listen", &s.admin_listen, DEFAULT_ADMIN_LISTEN);
        if listen == admin_listen && listen.port() != 0 {
            self.err(
                "server.admin_listen",
                format!(
                    "is the same address as server.listen ({listen}): the admin API needs its own listener"
                ),
            );
        }
        let max_body_bytes = match self.get("server.max_body_bytes", &s.max_body_bytes) {
            Some(0) => {
                self.err(
                    "server.max_body_bytes",
                    "0 would refuse every body: use at least 1, or omit the key for no limit",
                );
                None
            }
            other => other,
        };
        ServerSettings {
            listen,
            admin_listen,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                &s.shutdown_grace,
                30 * SECOND,
                Duration::ZERO..=FOREVER,
            ),
            max_header_bytes: self.number(
                "server.max_header_bytes",
                &s.max_header_bytes,
                16 * 1024,
                1024..=1024 * 1024,
            ),
            max_body_bytes,
            max_connections: self.number(
                "server.max_connections",
                &s.max_connections,
                DEFAULT_MAX_CONNECTIONS,
                1..=10_000_000,
            ),
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                &s.header_read_timeout,
                10 * SECOND,
                Duration::from_millis(100)..=Duration::from_secs(3600),
            ),
        }
    }

    fn database(&mut self, raw: &Section<RawDatabase>) -> StoreSettings {
        let d = self.section("database", raw);
        let url = self
            .get("database.url", &d.url)
            .map_or_else(|| DEFAULT_DATABASE_URL.to_owned(), |u| u.0);
        let supported =
            url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !supported {
            self.err(
                "database.url",
                format!(
                    "unsupported database url {:?}: use sqlite://PATH?mode=rwc (embedded) or postgres://USER:PASSWORD@HOST/DB",
                    redact_url(&url)
                ),
            );
        }
        StoreSettings {
            url,
            auto_migrate: self.or("database.auto_migrate", &d.auto_migrate, true),
            max_connections: self.at_least("database.max_connections", &d.max_connections, 10, 1),
            connect_timeout: self.duration(
                "database.connect_timeout",
                &d.connect_timeout,
                5 * SECOND,
                Duration::from_millis(1)..=FOREVER,
            ),
            statement_timeout: self.duration(
                "database.statement_timeout",
                &d.statement_timeout,
                5 * SECOND,
                Duration::from_millis(1)..=FOREVER,
            ),
        }
    }

    fn upstream(&mut self, raw: &Section<RawUpstream>) -> UpstreamSettings {
        let u = self.section("upstream", raw);
        let text = self.or("upstream.url", &u.url, DEFAULT_UPSTREAM_URL.to_owned());
        let (url, authority, base_path) = match parse_upstream(&text) {
            Ok(parts) => parts,
            Err(message) => {
                self.err("upstream.url", message);
                (text, String::new(), String::new())
            }
        };
        UpstreamSettings {
            url,
            authority,
            base_path,
            timeout: self.duration(
                "upstream.timeout",
                &u.timeout,
                30 * SECOND,
                Duration::from_millis(1)..=FOREVER,
            ),
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                &u.connect_timeout,
                5 * SECOND,
                Duration::from_millis(1)..=FOREVER,
            ),
            pool_max_idle_per_host: self.number(
                "upstream.pool_max_idle_per_host",
                &u.pool_max_idle_per_host,
                256,
                0..=65_536,
            ),
            pool_idle_timeout: self.duration(
                "upstream.pool_idle_timeout",
                &u.pool_idle_timeout,
                90 * SECOND,
                Duration::from_millis(1)..=FOREVER,
            ),
        }
    }

    fn keys(&mut self, raw: &Section<RawKeys>) -> Option<KeySettings> {
        let k = self.section("keys", raw);
        let prefix_text = self.or(
            "keys.default_prefix",
            &k.default_prefix,
            DEFAULT_KEY_PREFIX.to_owned(),
        );
        let default_prefix = match KeyPrefix::new(&prefix_text) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err("keys.default_prefix", e.to_string());
                None
            }
        };
        let format = match self.get("keys.format", &k.format) {
            None => KeyFormat::default(),
            Some(text) => text.parse().unwrap_or_else(|e: String| {
                self.err("keys.format", e);
                KeyFormat::default()
            }),
        };
        let default_plan = self.get("keys.default_plan", &k.default_plan);
        let hash = self.section("keys.hash", &k.hash);
        let generated_hash = self.hash_params("keys.hash.generated", &hash.generated, HashParams::GENERATED);
        let imported_hash = self.hash_params("keys.hash.imported", &hash.imported, HashParams::IMPORTED);
        Some(KeySettings {
            default_prefix: default_prefix?,
            format,
            default_plan,
            generated_hash,
            imported_hash,
        })
    }

    fn hash_params(&mut self, path: &str, raw: &Section<RawHashParams>, default: HashParams) -> HashParams {
        let h = self.section(path, raw);
        let params = HashParams {
            memory_kib: self.or(&key_path(path, "memory_kib"), &h.memory_kib, default.memory_kib),
            iterations: self.or(&key_path(path, "iterations"), &h.iterations, default.iterations),
            parallelism: self.or(
                &key_path(path, "parallelism"),
                &h.parallelism,
                default.parallelism,
            ),
        };
        if let Err(message) = params.validate() {
            self.err(path, message);
        }
        params
    }

    /// `[auth]` and `[cache]`: the request-facing rules, and the
    /// authenticator's own settings.
    fn auth(&mut self, raw: &Section<RawAuth>, cache: &Section<RawCache>) -> (AuthRules, AuthSettings) {
        let a = self.section("auth", raw);
        let names = self
            .get("auth.headers", &a.headers)
            .unwrap_or_else(|| DEFAULT_AUTH_HEADERS.iter().map(|h| (*h).to_owned()).collect());
        if names.is_empty() {
            self.err("auth.headers", "lists no header, so no request could present a key: list at least one, e.g. [\"Authorization\", \"X-API-Key\"]");
        }
        let mut headers: Vec<CredentialHeader> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let path = index_path("auth.headers", i);
            let lower = name.trim().to_ascii_lowercase();
            if !is_token(&lower) {
                self.err(&path, format!("{name:?} is not a valid HTTP header name"));
            } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-keygate-") {
                self.err(
                    &path,
                    format!("{name:?} cannot carry a credential: HTTP or keygate itself uses it"),
                );
            } else if headers.iter().any(|h| h.name == lower) {
                self.err(&path, format!("{name:?} is listed twice"));
            } else {
                let scheme = if lower == "authorization" {
                    CredentialScheme::Bearer
                } else {
                    CredentialScheme::Raw
                };
                headers.push(CredentialHeader { name: lower, scheme });
            }
        }
        let default_scopes = self.scopes("auth.default_scopes", &a.default_scopes);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let rules = AuthRules {
            headers,
            default_scopes,
            method_scopes: self.or("auth.method_scopes", &a.method_scopes, false),
        };
        let c = self.section("cache", cache);
        let authenticator = AuthSettings {
            max_failures_per_prefix: self.at_least(
                "auth.max_failures_per_prefix",
                &a.max_failures_per_prefix,
                20,
                1,
            ),
            max_failures_per_second: self.at_least(
                "auth.max_failures_per_second",
                &a.max_failures_per_second,
                200,
                1,
            ),
            hash_concurrency: self.number("auth.hash_concurrency", &a.hash_concurrency, cpus, 1..=4096),
            cache_ttl: self.duration(
                "cache.ttl",
                &c.ttl,
                5 * MINUTE,
                Duration::from_millis(1)..=FOREVER,
            ),
            negative_ttl: self.duration(
                "cache.negative_ttl",
                &c.negative_ttl,
                30 * SECOND,
                Duration::ZERO..=FOREVER,
            ),
            max_entries: self.number(
                "cache.max_entries",
                &c.max_entries,
                100_000,
                1..=u64::from(u32::MAX),
            ),
            stale_if_error: self.duration(
                "cache.stale_if_error",
                &c.stale_if_error,
                5 * MINUTE,
                Duration::ZERO..=FOREVER,
            ),
            poll_interval: self.duration(
                "cache.poll_interval",
                &c.poll_interval,
                Duration::from_millis(500),
                Duration::from_millis(1)..=SECOND,
            ),
        };
        (rules, authenticator)
    }

    fn scopes(&mut self, path: &str, field: &Lenient<Vec<String>>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (i, scope) in self.get(path, field).unwrap_or_default().into_iter().enumerate() {
            match validate_scope(&scope) {
                Ok(()) => {
                    out.insert(scope);
                }
                Err(e) => self.err(&index_path(path, i), e.to_string()),
            }
        }
        out
    }

    fn rate_limit(&mut self, raw: &Section<RawRateLimit>) -> RateLimitSettings {
        let r = self.section("rate_limit", raw);
        let redis = self.choice(
            "rate_limit.backend",
            &r.backend,
            false,
            &[("local", false), ("redis", true)],
        );
        let redis_url = self
            .get("rate_limit.redis_url", &r.redis_url)
            .map_or_else(|| DEFAULT_REDIS_URL.to_owned(), |u| u.0);
        if redis_url.starts_with("rediss://") {
            self.err(
                "rate_limit.redis_url",
                "rediss:// (TLS) is not supported yet: use redis://HOST:PORT on a private network, \
                 or a local TLS tunnel (stunnel, a sidecar) to the Redis server",
            );
        } else if redis_url
            .strip_prefix("redis://")
            .is_none_or(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            self.err(
                "rate_limit.redis_url",
                format!(
                    "{:?} is not a Redis URL: use redis://[:PASSWORD@]HOST:PORT[/DB]",
                    redact_url(&redis_url)
                ),
            );
        }
        let redis_key_prefix = self
            .get("rate_limit.redis_key_prefix", &r.redis_key_prefix)
            .unwrap_or_else(|| RedisSettings::DEFAULT_KEY_PREFIX.to_owned());
        let redis_pool_size = self.number(
            "rate_limit.redis_pool_size",
            &r.redis_pool_size,
            RedisSettings::DEFAULT_POOL_SIZE,
            1..=64,
        );
        let redis_connect_timeout = self.duration(
            "rate_limit.redis_connect_timeout",
            &r.redis_connect_timeout,
            RedisSettings::DEFAULT_CONNECT_TIMEOUT,
            Duration::from_millis(1)..=60 * SECOND,
        );
        let redis_timeout = self.duration(
            "rate_limit.redis_timeout",
            &r.redis_timeout,
            RedisSettings::DEFAULT_TIMEOUT,
            Duration::from_millis(1)..=60 * SECOND,
        );
        let headers = match self.get("rate_limit.headers", &r.headers) {
            None | Some(toml::Value::Boolean(true)) => RateLimitHeaders::Ietf,
            Some(toml::Value::Boolean(false)) => RateLimitHeaders::Off,
            Some(toml::Value::String(s)) if s == "x-ratelimit" => RateLimitHeaders::XRateLimit,
            Some(other) => {
                self.err(
                    "rate_limit.headers",
                    format!("unknown value {other}: expected true (RateLimit-*), false (none) or \"x-ratelimit\" (X-RateLimit-*)"),
                );
                RateLimitHeaders::Ietf
            }
        };
        // The redis_* keys are checked whichever backend is chosen, so a
        // typo surfaces before the day someone switches to Redis.
        let backend = if redis {
            RateLimitBackend::Redis(RedisSettings {
                key_prefix: redis_key_prefix,
                pool_size: redis_pool_size,
                connect_timeout: redis_connect_timeout,
                timeout: redis_timeout,
                ..RedisSettings::new(redis_url)
            })
        } else {
            RateLimitBackend::Local
        };
        RateLimitSettings { backend, headers }
    }

    fn routes(&mut self, raw: &RawConfig) -> Vec<RouteSettings> {
        let entries = match &raw.routes.0 {
            Field::Missing => return Vec::new(),
            Field::Invalid(message) => {
                self.type_err("routes", message);
                return Vec::new();
            }
            Field::Valid(entries) => entries,
        };
        let mut routes = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let base = index_path("routes", i);
            if let Some(route) = self.route(&base, entry) {
                routes.push(route);
            }
        }
        routes
    }

    fn route(&mut self, base: &str, entry: &Section<RawRoute>) -> Option<RouteSettings> {
        let r: RawRoute = self.section(base, entry);
        let path_key = key_path(base, "path");
        let path = match self.get(&path_key, &r.path) {
            None if matches!(r.path.0, Field::Missing) => {
                self.err(
                    &path_key,
                    "is required: the glob this route matches, e.g. \"/v1/orders/**\"",
                );
                None
            }
            None => None,
            Some(text) => PathGlob::new(&text)
                .map_err(|message| self.err(&path_key, message))
                .ok(),
        };
        let methods_key = key_path(base, "methods");
        let mut methods: Vec<String> = Vec::new();
        if let Some(list) = self.get(&methods_key, &r.methods) {
            if list.is_empty() {
                self.err(
                    &methods_key,
                    "is empty, so the route would match nothing: omit it to match every method",
                );
            }
            for (i, method) in list.iter().enumerate() {
                let upper = method.trim().to_ascii_uppercase();
                if !is_token(&upper) {
                    self.err(
                        &index_path(&methods_key, i),
                        format!("{method:?} is not an HTTP method"),
                    );
                } else if !methods.contains(&upper) {
                    methods.push(upper);
                }
            }
        }
        let scopes_key = key_path(base, "scopes");
        let scopes = self.scopes(&scopes_key, &r.scopes);
        let auth = self.or(&key_path(base, "auth"), &r.auth, true);
        if !auth && !scopes.is_empty() {
            self.err(
                &scopes_key,
                "a route with auth = false takes no key, so it cannot require scopes: remove the scopes or the auth = false",
            );
        }
        Some(RouteSettings {
            path: path?,
            methods,
            scopes,
            auth,
        })
    }

    fn plans(&mut self, raw: &RawConfig) -> BTreeMap<String, PlanSettings> {
        let entries = match &raw.plans.0 {
            Field::Missing => return seed_plans(),
            Field::Invalid(message) => {
                self.type_err("plans", message);
                return seed_plans();
            }
            Field::Valid(entries) => entries,
        };
        let mut plans = BTreeMap::new();
        for (name, entry) in entries {
            let base = key_path("plans", name);
            let valid_name = !name.is_empty()
                && name.len() <= crate::keys::model::MAX_SCOPE_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !valid_name {
                self.err(
                    &base,
                    format!(
                        "invalid plan name {name:?}: use lowercase letters, digits, '_' and '-' (at most {} characters)",
                        crate::keys::model::MAX_SCOPE_LEN
                    ),
                );
            }
            let plan = self.plan(&base, entry);
            plans.insert(name.clone(), plan);
        }
        plans
    }

    fn plan(&mut self, base: &str, entry: &Section<RawPlan>) -> PlanSettings {
        let p: RawPlan = self.section(base, entry);
        let api_access = self.or(&key_path(base, "api_access"), &p.api_access, true);
        let unlimited = self.or(&key_path(base, "unlimited"), &p.unlimited, false);
        let per = self.choice(
            &key_path(base, "per"),
            &p.per,
            LimitScope::Key,
            &[("key", LimitScope::Key), ("owner", LimitScope::Owner)],
        );
        let limits_key = key_path(base, "limits");
        let mut limits: Vec<PlanLimit> = Vec::new();
        let entries = match &p.limits.0 {
            Field::Missing => Vec::new(),
            Field::Invalid(message) => {
                self.type_err(&limits_key, message);
                Vec::new()
            }
            Field::Valid(entries) => entries.clone(),
        };
        if unlimited && !entries.is_empty() {
            self.err(
                &limits_key,
                "an unlimited plan cannot have limits: remove the limits or unlimited = true",
            );
        }
        let mut seen: Vec<(Duration, usize)> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let at = index_path(&limits_key, i);
            let l = self.section(&at, entry);
            let requests_key = key_path(&at, "requests");
            let requests = match self.get(&requests_key, &l.requests) {
                Some(0) => {
                    self.err(
                        &requests_key,
                        "must be at least 1 (to refuse every request, set api_access = false)",
                    );
                    None
                }
                None if matches!(l.requests.0, Field::Missing) => {
                    self.err(
                        &requests_key,
                        "is required: requests allowed per window, e.g. 1000",
                    );
                    None
                }
                other => other,
            };
            let per_key = key_path(&at, "per");
            let window = match self.get(&per_key, &l.per) {
                Some(text) => self.parse_duration_in(&per_key, &text, WINDOWS),
                None if matches!(l.per.0, Field::Missing) => {
                    self.err(&per_key, "is required: the window length, e.g. \"1h\" or \"1m\"");
                    None
                }
                None => None,
            };
            if let Some(window) = window {
                if let Some((_, first)) = seen.iter().find(|(w, _)| *w == window) {
                    self.err(
                        &per_key,
                        format!(
                            "duplicate window {}: {} already has one; each window may appear once per plan",
                            human(window),
                            index_path(&limits_key, *first)
                        ),
                    );
                } else {
                    seen.push((window, i));
                }
            }
            if let (Some(requests), Some(per)) = (requests, window) {
                limits.push(PlanLimit { requests, per });
            }
        }
        PlanSettings {
            api_access,
            unlimited,
            per,
            limits,
        }
    }

    fn errors(&mut self, raw: &RawConfig) -> BTreeMap<String, ErrorTemplate> {
        let entries = match &raw.errors.0 {
            Field::Missing => return BTreeMap::new(),
            Field::Invalid(message) => {
                self.type_err("errors", message);
                return BTreeMap::new();
            }
            Field::Valid(entries) => entries,
        };
        let mut templates = BTreeMap::new();
        for (code, entry) in entries {
            let base = key_path("errors", code);
            if !ERROR_CODES.contains(&code.as_str()) {
                self.err(
                    &base,
                    format!(
                        "unknown error code {code:?}: the codes are {}",
                        ERROR_CODES.join(", ")
                    ),
                );
            }
            let t: RawErrorTemplate = self.section(&base, entry);
            let body_key = key_path(&base, "body");
            let body = self.get(&body_key, &t.body);
            if let Some(body) = &body {
                for name in unknown_placeholders(body) {
                    self.err(
                        &body_key,
                        format!(
                            "unknown placeholder {{{name}}}: the placeholders are {}",
                            TEMPLATE_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                        ),
                    );
                }
            }
            let content_key = key_path(&base, "content_type");
            let content_type = match self.get(&content_key, &t.content_type) {
                Some(ct) => {
                    // Visible ASCII (and blanks between parameters) only:
                    // it becomes a header value as is.
                    let valid = ct.split_once('/').is_some_and(|(ty, sub)| {
                        is_token(ty)
                            && !sub.is_empty()
                            && sub
                                .bytes()
                                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
                    });
                    if !valid {
                        self.err(
                            &content_key,
                            format!("{ct:?} is not a media type, e.g. \"application/json\""),
                        );
                    }
                    Some(ct)
                }
                None if body.is_some() => Some("application/json".to_owned()),
                None => None,
            };
            let status_key = key_path(&base, "status");
            let status = match self.get(&status_key, &t.status) {
                Some(s) if (100..=599).contains(&s) => Some(s),
                Some(s) => {
                    self.err(&status_key, format!("{s} is not an HTTP status: use 100 to 599"));
                    None
                }
                None => None,
            };
            templates.insert(
                code.clone(),
                ErrorTemplate {
                    body,
                    content_type,
                    status,
                },
            );
        }
        templates
    }

    fn usage(&mut self, raw: &Section<RawUsage>) -> UsageSettings {
        let u = self.section("usage", raw);
        let r = self.section("usage.retention", &u.retention);
        let default = Retention::DEFAULT;
        let mut tier = |path: &str, field: &Lenient<String>, default: chrono::Duration, min: Duration| {
            let default = default.to_std().unwrap_or(min);
            let kept = self.duration(path, field, default, min..=FOREVER);
            chrono::Duration::from_std(kept).unwrap_or(chrono::Duration::MAX)
        };
        let retention = Retention {
            minute: tier("usage.retention.minute", &r.minute, default.minute, HOUR),
            hour: tier("usage.retention.hour", &r.hour, default.hour, DAY),
            day: tier("usage.retention.day", &r.day, default.day, DAY),
        };
        // A coarser tier kept for less time than a finer one would only
        // make queries pick the finer one's rows further back.
        if retention.hour < retention.minute {
            self.err(
                "usage.retention.hour",
                "must be at least usage.retention.minute: hour buckets outlive minute buckets",
            );
        }
        if retention.day < retention.hour {
            self.err(
                "usage.retention.day",
                "must be at least usage.retention.hour: day buckets outlive hour buckets",
            );
        }
        UsageSettings {
            flush_interval: self.duration(
                "usage.flush_interval",
                &u.flush_interval,
                UsageSettings::DEFAULT.flush_interval,
                SECOND..=MAX_FLUSH_INTERVAL,
            ),
            retention,
        }
    }

    fn log(&mut self, raw: &Section<RawLog>) -> LogSettings {
        let l = self.section("log", raw);
        let format = self.choice(
            "log.format",
            &l.format,
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        let level = trim_directives(&self.or("log.level", &l.level, DEFAULT_LOG_LEVEL.to_owned()));
        if let Err(message) = check_filter(&level) {
            self.err("log.level", message);
        }
        LogSettings { format, level }
    }

    /// `[tokens]`: `None` when `tokens.enabled = false`. The keys are parsed
    /// with the token module whether or not the exchange is enabled, so
    /// turning it on cannot reveal new mistakes.
    fn tokens(&mut self, raw: &Section<RawTokens>) -> Option<TokenSettings> {
        let t = self.section("tokens", raw);
        let before = self.errors.len();
        let enabled = self.or("tokens.enabled", &t.enabled, false);
        let access_ttl = self.duration(
            "tokens.access_ttl",
            &t.access_ttl,
            TokenSettings::DEFAULT_ACCESS_TTL,
            SECOND..=TokenSettings::MAX_TTL,
        );
        let refresh_ttl = self.duration(
            "tokens.refresh_ttl",
            &t.refresh_ttl,
            TokenSettings::DEFAULT_REFRESH_TTL,
            SECOND..=TokenSettings::MAX_TTL,
        );
        let issuer = self.or(
            "tokens.issuer",
            &t.issuer,
            TokenSettings::DEFAULT_ISSUER.to_owned(),
        );
        if issuer.is_empty() {
            self.err(
                "tokens.issuer",
                format!(
                    "must not be empty: omit it for {:?}",
                    TokenSettings::DEFAULT_ISSUER
                ),
            );
        }
        let audience = self.get("tokens.audience", &t.audience);
        if audience.as_deref().is_some_and(str::is_empty) {
            self.err(
                "tokens.audience",
                "must not be empty: omit it for tokens without an audience",
            );
        }

        // [[tokens.keys]] in order, then tokens.signing_key. The first key
        // signs, so a bare signing_key signs only while the list is empty;
        // next to a list it keeps verifying the tokens it signed, which is
        // how an operator moves from one secret to a rotated list.
        let mut keys: Vec<KeySpec> = Vec::new();
        let mut sources: Vec<KeySource> = Vec::new();
        let mut listed = 0;
        match &t.keys.0 {
            Field::Missing => {}
            Field::Invalid(message) => self.type_err("tokens.keys", message),
            Field::Valid(entries) => {
                listed = entries.len();
                for (i, entry) in entries.iter().enumerate() {
                    if let Some((spec, source)) = self.token_key(&index_path("tokens.keys", i), entry) {
                        self.add_token_key(&mut keys, &mut sources, spec, source);
                    }
                }
            }
        }
        let signing_key = self
            .get_secret("tokens.signing_key", &t.signing_key, "a string")
            .map(|s: Secret| KeySpec::hs256(s.0));
        if let Some(spec) = signing_key {
            let source = KeySource {
                name: "tokens.signing_key".into(),
                kid_path: "tokens.signing_key".into(),
                algorithm_path: "tokens.signing_key".into(),
                material_path: "tokens.signing_key".into(),
                file: None,
            };
            if self.check_token_key(&spec, &source) {
                self.add_token_key(&mut keys, &mut sources, spec, source);
            }
        }
        if enabled && listed == 0 && is_missing(&t.signing_key.0) {
            self.err("tokens.signing_key", no_token_key());
        }

        let settings = TokenSettings {
            keys,
            access_ttl,
            refresh_ttl,
            audience,
            issuer,
        };
        if !enabled || self.errors.len() > before {
            return None;
        }
        // The checks above mirror the token module's; building the exchange
        // is the last word, so a config that resolves cannot fail to start.
        match Tokens::new(&settings) {
            Ok(_) => Some(settings),
            Err(TokenConfigError::Key(e)) => {
                let (path, message) = key_problem(&e, &settings.keys, &sources);
                self.err(&path, message);
                None
            }
            Err(TokenConfigError::InvalidSetting { field, problem }) => {
                self.err(&key_path("tokens", field), problem);
                None
            }
        }
    }

    /// One `[[tokens.keys]]` entry at `base`: its spec (the PEM read from
    /// `private_key_file` when it names one), once every part checks out.
    fn token_key(&mut self, base: &str, entry: &Section<RawTokenKey>) -> Option<(KeySpec, KeySource)> {
        let k: RawTokenKey = self.section(base, entry);
        let kid_path = key_path(base, "kid");
        let algorithm_path = key_path(base, "algorithm");
        let secret_path = key_path(base, "secret");
        let private_key_path = key_path(base, "private_key");
        let file_path = key_path(base, "private_key_file");

        let algorithm = match self.get(&algorithm_path, &k.algorithm) {
            Some(name) => match name.parse::<Algorithm>() {
                Ok(algorithm) => Some(algorithm),
                Err(e) => {
                    self.err(&algorithm_path, e.to_string());
                    None
                }
            },
            None if is_missing(&k.algorithm.0) => {
                self.err(
                    &algorithm_path,
                    "is required: \"HS256\" (with secret), or \"EdDSA\" or \"ES256\" (with private_key or private_key_file)",
                );
                None
            }
            None => None,
        };
        let kid = self.get(&kid_path, &k.kid);
        let secret = self.get_secret(&secret_path, &k.secret, "a string");
        let private_key = self.get_secret(&private_key_path, &k.private_key, "a string (PEM text)");
        let file = self.get(&file_path, &k.private_key_file);
        let algorithm = algorithm?;

        let (material, material_path, file) = if algorithm == Algorithm::Hs256 {
            for (missing, path) in [
                (is_missing(&k.private_key.0), &private_key_path),
                (is_missing(&k.private_key_file.0), &file_path),
            ] {
                if !missing {
                    self.err(
                        path,
                        "is for EdDSA and ES256 keys: an HS256 key takes its shared secret in secret",
                    );
                }
            }
            let Some(secret) = secret else {
                if is_missing(&k.secret.0) {
                    self.err(
                        &secret_path,
                        format!(
                            "is required for an HS256 key: at least {MIN_HMAC_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`), here or in KEYGATE_TOKENS__KEYS__<N>__SECRET"
                        ),
                    );
                }
                return None;
            };
            (secret.0, secret_path, None)
        } else {
            if !is_missing(&k.secret.0) {
                self.err(
                    &secret_path,
                    format!(
                        "is for HS256 keys: an {algorithm} key takes private_key (PEM text) or private_key_file (its path)"
                    ),
                );
            }
            match (private_key, file) {
                (Some(_), Some(_)) => {
                    self.err(
                        &file_path,
                        "and private_key are both set: set one, the PEM text in private_key or its path in private_key_file",
                    );
                    return None;
                }
                (Some(pem), None) => (pem.0, private_key_path, None),
                (None, Some(file)) => (self.read_key_file(&file_path, &file)?, file_path, Some(file)),
                (None, None) => {
                    if is_missing(&k.private_key.0) && is_missing(&k.private_key_file.0) {
                        self.err(
                            &private_key_path,
                            format!(
                                "is required for an {algorithm} key: set private_key to a PKCS#8 PEM private key, or private_key_file to the path of one (generate it with {})",
                                openssl_command(algorithm)
                            ),
                        );
                    }
                    return None;
                }
            }
        };

        let mut source = KeySource {
            name: base.to_owned(),
            kid_path,
            algorithm_path,
            material_path,
            file,
        };
        let kid = match kid {
            Some(kid) => kid,
            None if is_missing(&k.kid.0) && algorithm == Algorithm::Hs256 => {
                // Derived like tokens.signing_key's: every replica agrees,
                // and moving the bare secret into the list keeps its kid.
                source.kid_path = source.material_path.clone();
                KeySpec::hs256(material.clone()).kid
            }
            None => {
                if is_missing(&k.kid.0) {
                    self.err(
                        &source.kid_path,
                        format!(
                            "is required for an {algorithm} key: a name such as \"2026-11\" (1 to {MAX_KID_LEN} characters from A-Z a-z 0-9 . _ -)"
                        ),
                    );
                }
                // Still check the material, under a stand-in kid.
                let stand_in = KeySpec {
                    kid: STAND_IN_KID.to_owned(),
                    algorithm,
                    material,
                };
                self.check_token_key(&stand_in, &source);
                return None;
            }
        };
        let spec = KeySpec {
            kid,
            algorithm,
            material,
        };
        self.check_token_key(&spec, &source).then_some((spec, source))
    }

    /// Parses one key with the token module, reporting what is wrong with
    /// it at its path; a bad kid does not hide a bad key.
    fn check_token_key(&mut self, spec: &KeySpec, source: &KeySource) -> bool {
        match SigningKeys::new(std::slice::from_ref(spec)) {
            Ok(_) => true,
            Err(e @ KeyError::BadKid(_)) => {
                self.err(&source.kid_path, e.to_string());
                let stand_in = KeySpec {
                    kid: STAND_IN_KID.to_owned(),
                    algorithm: spec.algorithm,
                    material: spec.material.clone(),
                };
                self.check_token_key(&stand_in, source);
                false
            }
            Err(e) => {
                let (path, message) = key_message(&e, source);
                self.err(&path, message);
                false
            }
        }
    }

    /// Appends a checked key unless an earlier one has its kid.
    fn add_token_key(
        &mut self,
        keys: &mut Vec<KeySpec>,
        sources: &mut Vec<KeySource>,
        spec: KeySpec,
        source: KeySource,
    ) {
        let Some(earlier) = keys.iter().position(|k| k.kid == spec.kid) else {
            keys.push(spec);
            sources.push(source);
            return;
        };
        let earlier = &sources[earlier].name;
        let message = if source.kid_path == source.material_path {
            format!(
                "derives the key id {:?}, which {earlier} already uses: list each secret once",
                spec.kid
            )
        } else {
            format!(
                "duplicate key id {:?}: {earlier} already uses it; give every key its own kid",
                spec.kid
            )
        };
        self.err(&source.kid_path, message);
    }

    /// Reads a `private_key_file`, at most [`MAX_KEY_FILE_BYTES`]. Messages
    /// name the file, never its content.
    fn read_key_file(&mut self, path: &str, file: &str) -> Option<SecretString> {
        use std::io::Read as _;
        if self.types_only {
            return None;
        }
        let limit = u64::try_from(MAX_KEY_FILE_BYTES + 1).unwrap_or(u64::MAX);
        // Sized up front so the buffer never moves, leaving no stray copy
        // of the key behind when it is zeroised.
        let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_BYTES + 1));
        let read = std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut buf));
        match read {
            Err(e) => {
                self.err(path, format!("cannot read {file:?}: {e}"));
                None
            }
            Ok(n) if n > MAX_KEY_FILE_BYTES => {
                self.err(
                    path,
                    format!("{file:?} is over {MAX_KEY_FILE_BYTES} bytes, too large for a PEM private key"),
                );
                None
            }
            Ok(_) => match std::str::from_utf8(&buf) {
                Ok(text) => Some(SecretString::new(text.to_owned())),
                Err(_) => {
                    self.err(
                        path,
                        format!(
                            "{file:?} is not text: a PKCS#8 PEM file starts with -----BEGIN PRIVATE KEY-----"
                        ),
                    );
                    None
                }
            },
        }
    }

    fn admin(&mut self, raw: &Section<RawAdmin>, env_token: Option<String>) -> AdminSettings {
        let a = self.section("admin", raw);
        let mut tokens = Vec::new();
        let list: Vec<Secret> = self
            .get_secret("admin.tokens", &a.tokens, "an array of argon2id PHC strings")
            .unwrap_or_default();
        for (i, token) in list.into_iter().enumerate() {
            let phc = token.0.expose();
            let valid = phc.starts_with("$argon2id$")
                && PasswordHash::new(phc).is_ok_and(|h| h.hash.is_some() && h.salt.is_some());
            if valid {
                tokens.push(KeyHash::from_phc(phc.to_owned()));
            } else {
                self.err(
                    &index_path("admin.tokens", i),
                    "is not an argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$SALT$HASH; value not shown): store the hash of the token, e.g. from `echo -n \"$TOKEN\" | argon2 \"$(openssl rand -hex 16)\" -id -e`",
                );
            }
        }
        let env_token = match env_token {
            Some(t) if t.trim().is_empty() => {
                self.err(
                    "KEYGATE_ADMIN_TOKEN",
                    "is set but empty: unset it or set a long random token",
                );
                None
            }
            Some(t) => Some(SecretString::new(t)),
            None => None,
        };
        AdminSettings { tokens, env_token }
    }
}

/// Where one signing key came from, for locating its problems.
struct KeySource {
    /// How messages name it: `tokens.keys[1]` or `tokens.signing_key`.
    name: String,
    /// Path of its kid (of the secret when the kid is derived from it).
    kid_path: String,
    /// Path of its algorithm.
    algorithm_path: String,
    /// Path of its secret, `private_key` or `private_key_file`.
    material_path: String,
    /// The `private_key_file` it was read from.
    file: Option<String>,
}

/// The problem `tokens.signing_key` reports when the exchange is enabled
/// without any key.
fn no_token_key() -> String {
    format!(
        "is required when tokens.enabled = true: set it, or KEYGATE_TOKENS__SIGNING_KEY, to at least {MIN_HMAC_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`), or list keys under [[tokens.keys]]"
    )
}

/// Whether a key is absent from the file.
fn is_missing<T>(field: &Field<T>) -> bool {
    matches!(field, Field::Missing)
}

/// The curve an asymmetric algorithm's PEM must hold.
fn curve(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Hs256 => "HMAC",
        Algorithm::EdDsa => "Ed25519",
        Algorithm::Es256 => "P-256",
    }
}

/// How to make a key for `algorithm`.
fn openssl_command(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Hs256 => "`openssl rand -base64 48`",
        Algorithm::EdDsa => "`openssl genpkey -algorithm ed25519`",
        Algorithm::Es256 => "`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`",
    }
}

/// The path and message of a key problem from the token module, for the key
/// that `source` describes. Messages never quote key material.
fn key_message(error: &KeyError, source: &KeySource) -> (String, String) {
    match error {
        KeyError::NoKeys => ("tokens.signing_key".to_owned(), no_token_key()),
        KeyError::BadKid(_) | KeyError::DuplicateKid(_) => (source.kid_path.clone(), error.to_string()),
        KeyError::UnsupportedAlgorithm(_) => (source.algorithm_path.clone(), error.to_string()),
        KeyError::ShortSecret { .. } => (
            source.material_path.clone(),
            format!(
                "is too short: use at least {MIN_HMAC_SECRET_BYTES} random bytes (e.g. {})",
                openssl_command(Algorithm::Hs256)
            ),
        ),
        KeyError::BadPrivateKey {
            algorithm, reason, ..
        } => {
            let what = format!(
                "a PKCS#8 PEM {} private key (-----BEGIN PRIVATE KEY-----): {reason}; generate one with {}",
                curve(*algorithm),
                openssl_command(*algorithm)
            );
            let message = match &source.file {
                Some(file) => format!("{file:?} does not hold {what}"),
                None => format!("is not {what}"),
            };
            (source.material_path.clone(), message)
        }
    }
}

/// [`key_message`] for an error about a whole key set, finding the key by
/// the kid the error names.
fn key_problem(error: &KeyError, keys: &[KeySpec], sources: &[KeySource]) -> (String, String) {
    let kid = match error {
        KeyError::DuplicateKid(kid)
        | KeyError::ShortSecret { kid, .. }
        | KeyError::BadPrivateKey { kid, .. } => Some(kid),
        KeyError::BadKid(_) | KeyError::UnsupportedAlgorithm(_) | KeyError::NoKeys => None,
    };
    let index = kid.and_then(|kid| keys.iter().rposition(|k| &k.kid == kid));
    match index.and_then(|i| sources.get(i)) {
        Some(source) => key_message(error, source),
        None if *error == KeyError::NoKeys => ("tokens.signing_key".to_owned(), no_token_key()),
        None => ("tokens.keys".to_owned(), error.to_string()),
    }
}

/// Parses `upstream.url` into (url without trailing `/`, `host:port`, base
/// path without trailing `/`).
fn parse_upstream(text: &str) -> Result<(String, String, String), String> {
    if text.starts_with("https://") {
        return Err(format!(
            "{text:?}: https upstreams are not supported yet; use http:// (for a TLS upstream, run a TLS-originating sidecar on loopback)"
        ));
    }
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(format!(
            "{text:?} is not an absolute http:// URL, e.g. http://127.0.0.1:9000"
        ));
    };
    if rest.contains(['?', '#']) {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.contains('@') {
        return Err("the upstream URL must not carry user info (user:password@)".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(format!("{text:?} has an unterminated IPv6 address"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{text:?} has an invalid IPv6 address"));
        }
        (&authority[..addr.len() + 2], after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    if !host_ok {
        return Err(format!("{text:?} has no valid host"));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("{text:?} has an invalid port")),
        },
    };
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{text:?} has '.' or '..' path segments"));
    }
    let base_path = path.trim_end_matches('/').to_owned();
    let url = text.trim_end_matches('/').to_owned();
    Ok((url, format!("{host}:{port}"), base_path))
}

/// Names between `{` and `}` that look like placeholders (lowercase letters
/// and `_`) but are not known ones. JSON braces (`{"a":1}`, `{}`) never
/// look like placeholders.
fn unknown_placeholders(body: &str) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let len = rest
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
            .count();
        if len > 0 && rest[len..].starts_with('}') {
            let name = &rest[..len];
            if !TEMPLATE_PLACEHOLDERS.contains(&name) && !unknown.iter().any(|u| u == name) {
                unknown.push(name.to_owned());
            }
        }
    }
    unknown
}

/// Checks a tracing filter: it must parse, and a bare word must be a level
/// (a bare word is valid syntax for "this target at every level", which in a
/// config file is almost always a misspelt level).
fn check_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if filter.trim().is_empty() {
        return Err(
            "is empty: use a level such as \"info\", or directives such as \"keygate=debug,info\"".into(),
        );
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level (trace, debug, info, warn, error, off); to enable a target at every level write {directive}=trace"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?} is not a valid tracing filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Issue 18: tracing-subscriber's directive parser misreads directives
    /// with leading spaces and panics when they hold non-ASCII text; the
    /// resolved `log.level` hands it trimmed directives.
    #[test]
    fn log_filters_are_trimmed_before_tracing_reads_them() {
        let cases = [
            ("info, keygate=debug", "info,keygate=debug"),
            (" info", "info"),
            ("warn ,, keygate::proxy=trace ", "warn,keygate::proxy=trace"),
            (" \u{e9}=info", "\u{e9}=info"),
            // The fuzz target's input, as its lossy UTF-8 reading.
            (
                " erZKEYGATE\u{fffd}= \u{789}\u{fffd}\u{fffd}Z)bose",
                "erZKEYGATE\u{fffd}= \u{789}\u{fffd}\u{fffd}Z)bose",
            ),
        ];
        for (raw, want) in cases {
            let trimmed = trim_directives(raw);
            assert_eq!(trimmed, want, "{raw:?}");
            // Checking never panics; these parse, but the last.
            let checked = check_filter(&trimmed);
            assert_eq!(checked.is_ok(), !want.starts_with("erZ"), "{raw:?}: {checked:?}");
        }
        assert_eq!(trim_directives(" , "), "");
        assert!(check_filter(&trim_directives(" , ")).is_err());
    }

    #[test]
    fn upstream_urls() {
        let ok = [
            ("http://127.0.0.1:9000", "127.0.0.1:9000", ""),
            ("http://api.internal", "api.internal:80", ""),
            ("http://api:8080/base/", "api:8080", "/base"),
            ("http://[::1]:9000/v2", "[::1]:9000", "/v2"),
        ];
        for (url, authority, base) in ok {
            let (_, a, b) = parse_upstream(url).unwrap();
            assert_eq!((a.as_str(), b.as_str()), (authority, base), "{url}");
        }
        let https = parse_upstream("https://api").unwrap_err();
        assert!(https.contains("not supported yet"), "{https}");
        for bad in [
            "api:9000",
            "ftp://x",
            "http://",
            "http://a:b",
            "http://u:p@h",
            "http://h/?q",
            "http://h:0",
            "http://[zz]:1",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placeholders() {
        assert!(unknown_placeholders(r#"{"error":{"code":"{code}","messages":["{message}"]}}"#).is_empty());
        assert!(unknown_placeholders("{}").is_empty());
        assert_eq!(
            unknown_placeholders("{mesage} {mesage} {retry_after}"),
            ["mesage"]
        );
    }

    #[test]
    fn filters() {
        for ok in [
            "info",
            "warn",
            "keygate=debug,info",
            "keygate::proxy=trace",
            "OFF",
        ] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "verbose", "keygate=loud"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_print_as_written() {
        assert_eq!(human(30 * DAY), "30d");
        assert_eq!(human(90 * MINUTE), "90m");
        assert_eq!(human(SECOND), "1s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
