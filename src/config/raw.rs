//! The serde mirror of `keygate.toml`: one struct per table, one field per
//! key, a doc comment on each. Nothing here checks meaning (durations, URLs,
//! plan references); [`super::resolve`] does that.
//!
//! The mirror never stops at the first problem. Instead of
//! `deny_unknown_fields` (which fails on the first unknown key) the file is
//! read through `serde_ignored`, which reports every unknown key with its
//! path, and every field is *lenient*: a wrong type is stored as a message in
//! the field ([`Field::Invalid`]) rather than failing the whole file, so one
//! mistake cannot hide the next.
//!
//! Four wrappers give each shape of TOML its leniency:
//! - [`Lenient<T>`]: a leaf (string, number, boolean, array of scalars), read
//!   through a `toml::Value` and then converted to `T`;
//! - [`Section<T>`]: a table mirrored by the struct `T`;
//! - [`Tables<T>`]: an array of tables (`[[routes]]`, plan `limits`);
//! - [`Named<T>`]: a table of tables keyed by a user-chosen name
//!   (`[plans.<name>]`, `[errors.<code>]`).
//!
//! The container wrappers hand the map or sequence they are given straight to
//! `T`, so `serde_ignored` keeps tracking paths inside them.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::keys::SecretString;
use crate::store::redact_url;

// ---------------------------------------------------------------------------
// Key paths
// ---------------------------------------------------------------------------

/// One step of a TOML key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Renders a path the way an operator writes it: `routes[2].path`,
/// `plans.pro.limits[0].per`; keys that are not bare TOML keys are quoted
/// (`plans."my plan"`).
pub fn dotted(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(key) => out = key_path(&out, key),
            Seg::Index(i) => out = index_path(&out, *i),
        }
    }
    out
}

/// `parent.key` (or `key` at the top level), quoting `key` when it is not a
/// bare TOML key.
pub fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare { key.to_owned() } else { format!("{key:?}") };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Converts a path reported by `serde_ignored` into segments (dropping the
/// `Option` / newtype steps, which have no TOML spelling).
pub fn from_ignored(path: &serde_ignored::Path<'_>) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut cursor = path;
    loop {
        match cursor {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                segs.push(Seg::Index(*index));
                cursor = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                segs.push(Seg::Key(key.clone()));
                cursor = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => cursor = parent,
        }
    }
    segs.reverse();
    segs
}

/// Whether `segs` names a value present in `tree`.
pub fn exists(tree: &toml::Table, segs: &[Seg]) -> bool {
    let Some((Seg::Key(first), rest)) = segs.split_first() else {
        return false;
    };
    let mut node = match tree.get(first) {
        Some(node) => node,
        None => return false,
    };
    for seg in rest {
        let next = match (seg, node) {
            (Seg::Key(key), toml::Value::Table(table)) => table.get(key),
            (Seg::Index(i), toml::Value::Array(items)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Lenient wrappers
// ---------------------------------------------------------------------------

/// What the file says about one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    /// The key is absent: the default applies.
    #[default]
    Missing,
    /// The key is present with the right type.
    Valid(T),
    /// The key is present with the wrong type; the message says what was
    /// expected and found.
    Invalid(String),
}

/// A leaf value (string, number, boolean, array of scalars).
#[derive(Debug, Clone, PartialEq)]
pub struct Lenient<T>(pub Field<T>);

/// A table mirrored by the struct `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section<T>(pub Field<T>);

/// An array of tables, each mirrored by `T` and lenient on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Tables<T>(pub Field<Vec<Section<T>>>);

/// A table of tables keyed by user-chosen names, each mirrored by `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T>(pub Field<Vec<(String, Section<T>)>>);

// Absent keys are `Missing` whatever `T` is (no `T: Default` bound, which
// a derive would add).
impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(Field::Missing)
    }
}

impl<T> Default for Section<T> {
    fn default() -> Self {
        Self(Field::Missing)
    }
}

impl<T> Default for Tables<T> {
    fn default() -> Self {
        Self(Field::Missing)
    }
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self(Field::Missing)
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        Ok(Self(match T::deserialize(value) {
            Ok(v) => Field::Valid(v),
            Err(e) => Field::Invalid(e.message().to_owned()),
        }))
    }
}

/// What a TOML value of each kind is called in messages.
fn found(kind: &str, expected: &str) -> String {
    format!("expected {expected}, found {kind}")
}

/// Implements the `visit_*` methods for the value kinds a container wrapper
/// does not accept, recording a message instead of failing.
macro_rules! reject_scalars {
    ($wrap:expr, $expected:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($wrap(Field::Invalid(found("a boolean", $expected))))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($wrap(Field::Invalid(found("an integer", $expected))))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($wrap(Field::Invalid(found("an integer", $expected))))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($wrap(Field::Invalid(found("a float", $expected))))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($wrap(Field::Invalid(found("a string", $expected))))
        }
    };
}

/// Consumes the rest of a map without reporting its keys as ignored (they
/// belong to a value of the wrong type, which is reported once).
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_key::<String>()?.is_some() {
        map.next_value::<toml::Value>()?;
    }
    Ok(())
}

/// Consumes the rest of a sequence without reporting its items as ignored.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<toml::Value>()?.is_some() {}
    Ok(())
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Section<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Section<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            reject_scalars!(Section, "a table");
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq)?;
                Ok(Section(Field::Invalid(found("an array", "a table"))))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Section(Field::Valid(t)))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tables<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Tables<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of tables")
            }
            reject_scalars!(Tables, "an array of tables");
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Section<T>>()? {
                    items.push(item);
                }
                Ok(Tables(Field::Valid(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map)?;
                Ok(Tables(Field::Invalid(found(
                    "a table",
                    "an array of tables (write [[...]] or [ { ... } ])",
                ))))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of tables")
            }
            reject_scalars!(Named, "a table of tables");
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq)?;
                Ok(Named(Field::Invalid(found("an array", "a table of tables"))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value::<Section<T>>()?;
                    entries.push((name, value));
                }
                Ok(Named(Field::Valid(entries)))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

// ---------------------------------------------------------------------------
// Redacting leaf types
// ---------------------------------------------------------------------------

/// A secret string from the file (signing key, admin token hash): redacted
/// in `Debug`.
#[derive(Clone)]
pub struct Secret(pub SecretString);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose() == other.0.expose()
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Self(SecretString::new(s)))
    }
}

/// A URL that may carry a password (database, Redis): printed without it.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Url(pub String);

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

// ---------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------

/// The whole file. Every section is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    /// `[server]`: listeners and request limits.
    pub server: Section<RawServer>,
    /// `[database]`: the key store.
    pub database: Section<RawDatabase>,
    /// `[upstream]`: the API behind the gateway.
    pub upstream: Section<RawUpstream>,
    /// `[keys]`: issuing keys.
    pub keys: Section<RawKeys>,
    /// `[auth]`: how keys are presented and checked.
    pub auth: Section<RawAuth>,
    /// `[cache]`: verified-key cache.
    pub cache: Section<RawCache>,
    /// `[rate_limit]`: limiter backend and headers.
    pub rate_limit: Section<RawRateLimit>,
    /// `[[routes]]`: first-match route table.
    pub routes: Tables<RawRoute>,
    /// `[plans.<name>]`: plans; absent = the seed plans.
    pub plans: Named<RawPlan>,
    /// `[errors.<code>]`: response templates per SPEC code.
    pub errors: Named<RawErrorTemplate>,
    /// `[usage]`: usage counting.
    pub usage: Section<RawUsage>,
    /// `[log]`: logging.
    pub log: Section<RawLog>,
    /// `[tokens]`: JWT exchange.
    pub tokens: Section<RawTokens>,
    /// `[admin]`: admin API authentication.
    pub admin: Section<RawAdmin>,
}

/// `[server]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawServer {
    /// Proxy listener socket address.
    pub listen: Lenient<String>,
    /// Admin listener socket address.
    pub admin_listen: Lenient<String>,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Lenient<String>,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: Lenient<u64>,
    /// Largest request body accepted, in bytes (absent = unlimited).
    pub max_body_bytes: Lenient<u64>,
    /// Most client connections open at once on the proxy listener.
    pub max_connections: Lenient<u64>,
    /// Longest a client may take to send a request head (HTTP/1).
    pub header_read_timeout: Lenient<String>,
}

/// `[database]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawDatabase {
    /// `sqlite:…` or `postgres://…` URL.
    pub url: Lenient<Url>,
    /// Migrate when `serve` starts.
    pub auto_migrate: Lenient<bool>,
    /// Connection pool size.
    pub max_connections: Lenient<u32>,
    /// Time allowed to obtain a connection.
    pub connect_timeout: Lenient<String>,
    /// Longest a statement may run.
    pub statement_timeout: Lenient<String>,
}

/// `[upstream]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawUpstream {
    /// Base URL of the API (`http://host:port[/base]`).
    pub url: Lenient<String>,
    /// Time until the upstream's response head.
    pub timeout: Lenient<String>,
    /// Time allowed to connect.
    pub connect_timeout: Lenient<String>,
    /// Idle connections kept per upstream host.
    pub pool_max_idle_per_host: Lenient<u64>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Lenient<String>,
}

/// `[keys]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawKeys {
    /// Prefix of keys created without `--prefix`.
    pub default_prefix: Lenient<String>,
    /// Body format: `base62` or `hex64`.
    pub format: Lenient<String>,
    /// Plan of keys created without `--plan`; absent: such keys have no
    /// plan.
    pub default_plan: Lenient<String>,
    /// `[keys.hash]`: argon2id parameter sets.
    pub hash: Section<RawHash>,
}

/// `[keys.hash]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawHash {
    /// Parameters for keys keygate generates.
    pub generated: Section<RawHashParams>,
    /// Parameters for imported keys.
    pub imported: Section<RawHashParams>,
}

/// `[keys.hash.generated]` / `[keys.hash.imported]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawHashParams {
    /// Memory cost in KiB.
    pub memory_kib: Lenient<u32>,
    /// Number of passes.
    pub iterations: Lenient<u32>,
    /// Lanes.
    pub parallelism: Lenient<u32>,
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawAuth {
    /// Header names that carry a credential.
    pub headers: Lenient<Vec<String>>,
    /// Scopes required on paths no route matches.
    pub default_scopes: Lenient<Vec<String>>,
    /// Whether the method-based scopes `read`/`write`/`delete` apply.
    pub method_scopes: Lenient<bool>,
    /// Failed verifications a second per short prefix before refusing
    /// without hashing.
    pub max_failures_per_prefix: Lenient<u32>,
    /// Failed verifications a second, gateway-wide, before every recently
    /// failed prefix is refused without hashing.
    pub max_failures_per_second: Lenient<u32>,
    /// argon2 verifications allowed at once.
    pub hash_concurrency: Lenient<u64>,
}

/// `[cache]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawCache {
    /// Lifetime of a verified-key entry.
    pub ttl: Lenient<String>,
    /// Lifetime of an unknown-key entry.
    pub negative_ttl: Lenient<String>,
    /// Most entries kept.
    pub max_entries: Lenient<u64>,
    /// How long expired entries may serve while the store is unreachable.
    pub stale_if_error: Lenient<String>,
    /// How often the store's change feed is polled.
    pub poll_interval: Lenient<String>,
}

/// `[rate_limit]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawRateLimit {
    /// `local` or `redis`.
    pub backend: Lenient<String>,
    /// Redis URL for the `redis` backend.
    pub redis_url: Lenient<Url>,
    /// `true`, `false` or `"x-ratelimit"`.
    pub headers: Lenient<toml::Value>,
    /// Prefix of every Redis key the limiter writes.
    pub redis_key_prefix: Lenient<String>,
    /// Connections to Redis kept open (each multiplexed).
    pub redis_pool_size: Lenient<u64>,
    /// Limit on opening a Redis connection.
    pub redis_connect_timeout: Lenient<String>,
    /// Limit on one Redis round trip before the request falls back to local limits.
    pub redis_timeout: Lenient<String>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawRoute {
    /// Path glob (required).
    pub path: Lenient<String>,
    /// Methods the route applies to (absent = all).
    pub methods: Lenient<Vec<String>>,
    /// Scopes all required.
    pub scopes: Lenient<Vec<String>>,
    /// Whether a key is required.
    pub auth: Lenient<bool>,
}

/// One `[plans.<name>]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawPlan {
    /// Whether keys on the plan may call the API.
    pub api_access: Lenient<bool>,
    /// No rate limits at all.
    pub unlimited: Lenient<bool>,
    /// `key` or `owner`: who shares the limits.
    pub per: Lenient<String>,
    /// The plan's windows.
    pub limits: Tables<RawLimit>,
}

/// One entry of a plan's `limits`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawLimit {
    /// Requests allowed per window (required).
    pub requests: Lenient<u64>,
    /// Window length (required).
    pub per: Lenient<String>,
}

/// One `[errors.<code>]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawErrorTemplate {
    /// Body template.
    pub body: Lenient<String>,
    /// Content type of the body.
    pub content_type: Lenient<String>,
    /// Status override.
    pub status: Lenient<u16>,
}

/// `[usage]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawUsage {
    /// How often usage counts are written to the store.
    pub flush_interval: Lenient<String>,
    /// How long the usage history keeps each tier.
    pub retention: Section<RawRetention>,
}

/// `[usage.retention]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawRetention {
    /// Minute buckets.
    pub minute: Lenient<String>,
    /// Hour buckets.
    pub hour: Lenient<String>,
    /// Day buckets.
    pub day: Lenient<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: Lenient<String>,
    /// tracing filter directives.
    pub level: Lenient<String>,
}

/// `[tokens]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawTokens {
    /// Whether the token exchange endpoints are served.
    pub enabled: Lenient<bool>,
    /// A bare HS256 secret: one more signing key, after `keys`.
    pub signing_key: Lenient<Secret>,
    /// Access-token lifetime.
    pub access_ttl: Lenient<String>,
    /// Refresh-token lifetime.
    pub refresh_ttl: Lenient<String>,
    /// `aud` of every token (absent = none).
    pub audience: Lenient<String>,
    /// `iss` of every token.
    pub issuer: Lenient<String>,
    /// `[[tokens.keys]]`: signing keys, the first signs, all verify.
    pub keys: Tables<RawTokenKey>,
}

/// One `[[tokens.keys]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawTokenKey {
    /// Key id (optional for HS256, derived from the secret when absent).
    pub kid: Lenient<String>,
    /// `HS256`, `EdDSA` or `ES256` (required).
    pub algorithm: Lenient<String>,
    /// HS256: the shared secret.
    pub secret: Lenient<Secret>,
    /// EdDSA / ES256: the PKCS#8 PEM private key itself.
    pub private_key: Lenient<Secret>,
    /// EdDSA / ES256: a path to a PKCS#8 PEM private key file.
    pub private_key_file: Lenient<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RawAdmin {
    /// argon2id PHC hashes of admin tokens.
    pub tokens: Lenient<Vec<Secret>>,
}

/// Reads a (possibly env-overlaid) tree into the mirror, collecting the path
/// of every unknown key. The error is only for a tree the lenient wrappers
/// cannot absorb, which the TOML parser never produces.
pub fn from_tree(tree: toml::Table) -> Result<(RawConfig, Vec<Vec<Seg>>), String> {
    let mut unknown = Vec::new();
    let raw = serde_ignored::deserialize(toml::Value::Table(tree), |path| {
        unknown.push(from_ignored(&path));
    })
    .map_err(|e| e.message().to_owned())?;
    Ok((raw, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (RawConfig, Vec<String>) {
        let tree: toml::Table = toml::from_str(text).unwrap();
        let (raw, unknown) = from_tree(tree).unwrap();
        (raw, unknown.iter().map(|p| dotted(p)).collect())
    }

    #[test]
    fn unknown_keys_are_collected_with_their_paths() {
        let (_, unknown) = read(
            r#"
            top = 1
            [server]
            lisen = "x"
            [[routes]]
            path = "/a"
            [[routes]]
            path = "/b"
            [[routes]]
            path = "/c"
            scope = ["x"]
            [plans.pro]
            limits = [ { requests = 1, per = "1s" }, { requests = 2, per = "1m" } ]
            [plans.team]
            limits = [ { requests = 1, requests_per = "1s" } ]
            [plans."my plan"]
            nope = true
            [keys.hash.generated]
            memory = 5
            "#,
        );
        assert_eq!(
            unknown,
            [
                "keys.hash.generated.memory",
                "plans.\"my plan\".nope",
                "plans.team.limits[0].requests_per",
                "routes[2].scope",
                "server.lisen",
                "top",
            ]
        );
    }

    #[test]
    fn wrong_types_are_kept_as_messages() {
        let (raw, unknown) = read(
            r#"
            server = { listen = 5, max_header_bytes = "big", typo = 1 }
            database = "sqlite:x"
            routes = { path = "/" }
            [plans]
            pro = 3
            "#,
        );
        assert_eq!(unknown, ["server.typo"]);
        let Field::Valid(server) = &raw.server.0 else {
            panic!("{:?}", raw.server)
        };
        assert!(matches!(&server.listen.0, Field::Invalid(m) if m.contains("integer")));
        assert!(matches!(&server.max_header_bytes.0, Field::Invalid(m) if m.contains("string")));
        assert!(matches!(&raw.database.0, Field::Invalid(m) if m == "expected a table, found a string"));
        assert!(matches!(&raw.routes.0, Field::Invalid(_)));
        let Field::Valid(plans) = &raw.plans.0 else {
            panic!()
        };
        assert_eq!(plans[0].0, "pro");
        assert!(matches!(&plans[0].1.0, Field::Invalid(_)));
        assert_eq!(raw.log, Section(Field::Missing));
    }

    #[test]
    fn secrets_and_urls_do_not_print() {
        let (raw, _) = read(
            r#"
            database.url = "postgres://app:hunter2@db/keys"
            tokens.signing_key = "supersecretsigningkey"
            admin.tokens = ["$argon2id$secretish"]
            "#,
        );
        let printed = format!("{raw:?}");
        for secret in ["hunter2", "supersecretsigningkey", "secretish"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn paths_quote_non_bare_keys() {
        let segs = [
            Seg::Key("plans".into()),
            Seg::Key("a.b".into()),
            Seg::Key("limits".into()),
            Seg::Index(3),
        ];
        assert_eq!(dotted(&segs), "plans.\"a.b\".limits[3]");
    }
}
