//! Who is calling (the hot path): a presented credential becomes a
//! [`Principal`] or an [`AuthError`].
//!
//! - [`extract`] reads the credential from the configured headers.
//! - [`Authenticator`] (in `verify.rs`) checks a presented key: its format
//!   and checksum first (no store lookup for a forged shape), then a cache of
//!   verified secrets, and on a miss the store's candidates and argon2 off
//!   the runtime, throttled per short prefix and coalesced per secret.
//! - `cache.rs` holds the verified and unknown entries and the failure
//!   windows; `feed.rs` polls the store's typed change feed and drops what
//!   each change makes stale, so a change made anywhere reaches this
//!   gateway within a poll interval (at once on Postgres's notifications).
//! - [`exchange`] is the token exchange's use case: login, client
//!   credentials and refresh over the store, with conditional writes
//!   retried on lost races and refresh-token reuse revoking the session.
//!
//! This module decides *why* a key is refused; mapping that to a SPEC code,
//! status and body is the edges' job (via [`AuthFailure::code`]). It uses
//! `keys`, the `KeyStore` trait and the clock, never a web framework or a
//! database driver.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::HeaderValue;
use thiserror::Error;

use crate::keys::{Key, KeyId, KeyState, KeyStatus};
use crate::token::AccessClaims;

mod cache;
pub mod exchange;
pub mod extract;
mod feed;
pub mod token;
pub mod usage;
mod verify;

#[cfg(test)]
mod tests;

pub use verify::Authenticator;

/// What the authenticator needs from `[auth]` and `[cache]`; `config` fills
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Failed verifications a second for one existing short prefix after
    /// which further secrets not already cached are refused without hashing
    /// until the second ends (`auth.max_failures_per_prefix`; 0 acts as 1).
    pub max_failures_per_prefix: u32,
    /// Failed verifications a second across all prefixes past which the
    /// gateway is in a forgery flood: every prefix that failed in the last
    /// minute is then refused without hashing, for as long as the flood lasts
    /// and a minute more (`auth.max_failures_per_second`; 0 acts as 1).
    pub max_failures_per_second: u32,
    /// argon2 verifications running at once (`auth.hash_concurrency`; 0 acts
    /// as 1).
    pub hash_concurrency: usize,
    /// How long a verified secret is served from memory before the store is
    /// asked again (`cache.ttl`). Changes arrive sooner through the change
    /// feed; this bounds staleness if the feed is down.
    pub cache_ttl: Duration,
    /// How long a short prefix with no stored secret is remembered, so floods
    /// of well-formed unknown keys do not each cost a store lookup
    /// (`cache.negative_ttl`; zero = not remembered).
    pub negative_ttl: Duration,
    /// Most verified secrets kept (`cache.max_entries`; zero = no cache).
    /// Unknown short prefixes get a budget of the same size.
    pub max_entries: usize,
    /// How often the change feed is polled (`cache.poll_interval`; SPEC §7
    /// wants changes seen within a second).
    pub poll_interval: Duration,
    /// How long past its TTL a verified secret may still be served while the
    /// store is unreachable (`cache.stale_if_error`; zero = never).
    pub stale_if_error: Duration,
}

/// An authenticated caller: the key's identity, shared with the cache (cheap
/// to clone; nothing is copied per request).
#[derive(Debug, Clone)]
pub struct Principal {
    /// When the presented secret stops working: set while it is the previous
    /// secret of a rotation in its grace period, `None` for the current one
    /// (and for access tokens).
    pub secret_valid_until: Option<DateTime<Utc>>,
    /// Set when the caller presented an access token instead of the key.
    pub grant: Option<Grant>,
    /// The key's identity as logs and the upstream see it, built once per
    /// cached key (it holds the key's metadata too).
    pub identity: Arc<Identity>,
}

/// A key's identity as the request log, usage counts and the upstream's
/// identity headers (SPEC §6) name it, built once when the key is cached
/// so a request copies nothing. A header is `None` when the stored value
/// is not a legal header value (it is then left out).
///
/// It is also the key's hot record. With thousands of keys in rotation,
/// every key's data is cold when its next request comes, so each cache
/// line a request reads is a miss (about 0.1 us each on the bench host).
/// What every request of a cached key reads (its status and expiry, its
/// plan and scopes, the four header values, its usage counter) therefore
/// sits in the first fields here, which with the `Arc`'s counts fit in 128
/// bytes (two cache lines; a unit test keeps them there), and in one shared
/// buffer; the scattered allocations of [`Key`] (strings, a scope tree) are
/// read only off the hot path.
#[derive(Debug)]
#[repr(C)] // Field order is the layout: hot fields first.
pub struct Identity {
    /// The identity header values, back to back: key id, owner, scopes
    /// (comma-separated), plan.
    headers: Bytes,
    /// Where each value lies in `headers`, in [`IdentityHeader`] order.
    spans: [Span; 4],
    /// The key's forwarded requests not yet flushed to the store.
    pub usage: usage::OkCounter,
    /// `key.expires_at`, copied.
    expires_at: Option<DateTime<Utc>>,
    /// `key.status`, copied.
    status: KeyStatus,
    /// Whether the scopes value lists exactly the key's scopes, one per
    /// comma-separated item (no scope is empty or holds a comma), so that
    /// scope checks can read it instead of the scope tree.
    scopes_listed: bool,
    /// The key's metadata as of the last store read.
    pub key: Arc<Key>,
    /// The key id.
    pub key_id: Arc<str>,
    /// The key's public short prefix.
    pub short_prefix: Arc<str>,
}

/// The identity headers of SPEC §6, in [`Identity`]'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityHeader {
    /// `X-Keygate-Key-Id`.
    KeyId = 0,
    /// `X-Keygate-Owner` (absent for a key without an owner).
    Owner = 1,
    /// `X-Keygate-Scopes`: the key's scopes, comma-separated.
    Scopes = 2,
    /// `X-Keygate-Plan`.
    Plan = 3,
}

/// A header value's place in [`Identity::headers`]; [`Span::NONE`] (an
/// empty range that starts past its end) when the value is absent or not
/// a legal header value.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    const NONE: Self = Self { start: 1, end: 0 };

    fn range(self) -> Option<std::ops::Range<usize>> {
        let range = usize::try_from(self.start).ok()?..usize::try_from(self.end).ok()?;
        (range.start <= range.end).then_some(range)
    }
}

impl Identity {
    /// The identity of `key`.
    pub fn of(key: Arc<Key>) -> Self {
        // The header values share one buffer: a request clones all of them,
        // and one reference count and one run of bytes per key stay warmer
        // in cache than four separate allocations.
        let scopes = join_scopes(&key.scopes);
        let values = [
            Some(key.id.as_str()),
            key.owner.as_deref(),
            Some(scopes.as_str()),
            key.plan.as_deref(),
        ];
        let mut buffer = Vec::with_capacity(values.iter().flatten().map(|v| v.len()).sum());
        let spans = values.map(|value| {
            let Some(value) = value else {
                return Span::NONE;
            };
            let start = buffer.len();
            buffer.extend_from_slice(value.as_bytes());
            match (u32::try_from(start), u32::try_from(buffer.len())) {
                (Ok(start), Ok(end)) if HeaderValue::from_bytes(value.as_bytes()).is_ok() => {
                    Span { start, end }
                }
                _ => Span::NONE,
            }
        });
        let scopes_listed = spans[IdentityHeader::Scopes as usize].range().is_some()
            && !key.scopes.is_empty()
            && key.scopes.iter().all(|s| !s.is_empty() && !s.contains(','));
        Self {
            headers: Bytes::from(buffer),
            spans,
            usage: usage::OkCounter::default(),
            expires_at: key.expires_at,
            status: key.status,
            scopes_listed,
            key_id: Arc::from(key.id.as_str()),
            short_prefix: Arc::from(key.short_prefix.as_str()),
            key,
        }
    }

    /// The bytes of a legal header value, `None` for an absent or illegal
    /// one.
    fn value_bytes(&self, which: IdentityHeader) -> Option<&[u8]> {
        self.headers.get(self.spans[which as usize].range()?)
    }

    /// The value of an identity header, sharing the key's buffer; `None`
    /// when absent or not a legal header value.
    pub fn header(&self, which: IdentityHeader) -> Option<HeaderValue> {
        let range = self.spans[which as usize].range()?;
        if range.end > self.headers.len() {
            return None;
        }
        HeaderValue::from_maybe_shared(self.headers.slice(range)).ok()
    }

    /// The key's state at `now` ([`Key::state_at`] from the copied fields).
    pub fn state_at(&self, now: DateTime<Utc>) -> KeyState {
        KeyState::of(self.status, self.expires_at, now)
    }

    /// The key's plan name (`None`: no plan), read from the plan value's
    /// bytes when they are a legal header value and text (they are the
    /// name's bytes).
    pub fn plan(&self) -> Option<&str> {
        match self
            .value_bytes(IdentityHeader::Plan)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
        {
            Some(plan) => Some(plan),
            None => self.key.plan.as_deref(),
        }
    }

    /// The first of `required` the key's scopes lack (see
    /// [`crate::policy::scopes::first_missing`]), read from the scope list
    /// when it is exact.
    pub fn first_missing_scope<'r, S: AsRef<str>>(&self, required: &'r [S]) -> Option<&'r str> {
        match self.value_bytes(IdentityHeader::Scopes) {
            Some(listed) if self.scopes_listed => required.iter().map(AsRef::as_ref).find(|scope| {
                !listed
                    .split(|&b| b == b',')
                    .any(|granted| granted == scope.as_bytes())
            }),
            _ => crate::policy::scopes::first_missing(required, &self.key.scopes),
        }
    }
}

fn join_scopes(scopes: &BTreeSet<String>) -> String {
    scopes.iter().map(String::as_str).collect::<Vec<_>>().join(",")
}

/// `X-Keygate-Scopes` for `scopes`: comma-separated.
pub fn scopes_header(scopes: &BTreeSet<String>) -> Option<HeaderValue> {
    HeaderValue::from_bytes(join_scopes(scopes).as_bytes()).ok()
}

/// What an access token grants: its verified claims and the scopes it
/// carries now (those granted at login that the key still holds).
#[derive(Debug, Clone)]
pub struct Grant {
    /// The token's verified claims (`sid` names its session).
    pub claims: Arc<AccessClaims>,
    /// The scopes the request may use.
    pub scopes: Arc<BTreeSet<String>>,
    /// `X-Keygate-Scopes` for them.
    pub scopes_header: Option<HeaderValue>,
}

impl Principal {
    /// The scopes this request may use: the key's, or an access token's
    /// (possibly narrower).
    pub fn scopes(&self) -> &BTreeSet<String> {
        match &self.grant {
            Some(grant) => &grant.scopes,
            None => &self.identity.key.scopes,
        }
    }

    /// The first of `required` that [`Principal::scopes`] lacks.
    pub fn first_missing_scope<'r, S: AsRef<str>>(&self, required: &'r [S]) -> Option<&'r str> {
        match &self.grant {
            Some(grant) => crate::policy::scopes::first_missing(required, &grant.scopes),
            None => self.identity.first_missing_scope(required),
        }
    }

    /// The key's metadata.
    pub fn key(&self) -> &Arc<Key> {
        &self.identity.key
    }

    /// `X-Keygate-Scopes` for [`Principal::scopes`].
    pub fn scopes_header(&self) -> Option<HeaderValue> {
        match &self.grant {
            Some(grant) => grant.scopes_header.clone(),
            None => self.identity.header(IdentityHeader::Scopes),
        }
    }

    /// The key id (for identity headers, logs and usage counting).
    pub fn key_id(&self) -> &KeyId {
        &self.identity.key.id
    }

    /// The key's public short prefix (for logs).
    pub fn short_prefix(&self) -> &str {
        &self.identity.short_prefix
    }
}

/// Why a presented key is `invalid_key`. For logs only: a client never learns
/// which one it was (STYLE §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidReason {
    /// Not the shape of a keygate key nor of any imported key.
    Malformed,
    /// A keygate key's shape with a wrong checksum (mistyped or forged).
    BadChecksum,
    /// No stored secret has this short prefix.
    UnknownPrefix,
    /// Secrets exist for the short prefix, but none matches.
    WrongSecret,
    /// The key is revoked.
    Revoked,
    /// Too many failed verifications for this short prefix this second.
    Throttled,
    /// The previous secret of a rotation, past its grace period.
    GraceOver,
    /// An access token that does not verify, or whose session or key
    /// refuses it; the reason names which (`token_expired`, …).
    Token(&'static str),
}

impl InvalidReason {
    /// A stable name for log fields and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadChecksum => "bad_checksum",
            Self::UnknownPrefix => "unknown_prefix",
            Self::WrongSecret => "wrong_secret",
            Self::Revoked => "revoked",
            Self::Throttled => "throttled",
            Self::GraceOver => "grace_over",
            Self::Token(reason) => reason,
        }
    }
}

/// Why authentication failed, grouped by what the client may be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// `invalid_key` (the reason is for logs).
    Invalid(InvalidReason),
    /// `key_inactive`: the key is disabled.
    Inactive,
    /// `key_expired`: past the key's `expires_at`.
    Expired,
    /// `auth_unavailable`: the store could not be asked and the key is not
    /// cached.
    Unavailable,
}

impl AuthFailure {
    /// What a key in `state` is refused with (`None`: it is active): the one
    /// map from a key's state to its SPEC code, for API keys, access tokens
    /// and the token exchange alike.
    pub fn of_state(state: KeyState) -> Option<Self> {
        match state {
            KeyState::Active => None,
            KeyState::Revoked => Some(Self::Invalid(InvalidReason::Revoked)),
            KeyState::Inactive => Some(Self::Inactive),
            KeyState::Expired => Some(Self::Expired),
        }
    }

    /// The SPEC §5 code a client sees.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_key",
            Self::Inactive => "key_inactive",
            Self::Expired => "key_expired",
            Self::Unavailable => "auth_unavailable",
        }
    }

    /// The cause for logs: the invalid reason, or the code.
    pub fn cause(self) -> &'static str {
        match self {
            Self::Invalid(reason) => reason.as_str(),
            other => other.code(),
        }
    }
}

/// A refused key: what failed, and the short prefix involved when there is
/// one (public, safe to log; `None` for values that are not a key's shape).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("authentication failed: {}", failure.cause())]
pub struct AuthError {
    /// What failed.
    pub failure: AuthFailure,
    /// The presented key's short prefix, if it had a recognisable one.
    pub short_prefix: Option<String>,
    /// The key the credential was found to be (a wrong secret for its
    /// short prefix, a revoked, disabled or expired key), for its usage
    /// history: SPEC §13 counts such requests on that key, so a leaked or
    /// guessed key shows up. Never in a response.
    pub key_id: Option<Arc<str>>,
}

impl AuthError {
    pub(crate) fn new(failure: AuthFailure, short_prefix: Option<&str>) -> Self {
        Self {
            failure,
            short_prefix: short_prefix.map(str::to_owned),
            key_id: None,
        }
    }

    /// The same failure, attributed to the key `key_id`.
    pub(crate) fn of_key(self, key_id: &Arc<str>) -> Self {
        Self {
            key_id: Some(Arc::clone(key_id)),
            ..self
        }
    }

    pub(crate) fn invalid(reason: InvalidReason, short_prefix: Option<&str>) -> Self {
        Self::new(AuthFailure::Invalid(reason), short_prefix)
    }
}

/// Counters for metrics, read with [`Authenticator::stats`]. Monotonic since
/// start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Requests answered from a fresh cache entry.
    pub hits: u64,
    /// Requests not answered from a fresh entry (absent or past its TTL)
    /// that went on to the single-flight resolver.
    pub misses: u64,
    /// argon2 verifications run.
    pub hashes: u64,
    /// Requests refused as throttled.
    pub throttled: u64,
    /// Requests that waited for another request's verification of the same
    /// secret instead of running their own.
    pub coalesced: u64,
    /// Requests served from an entry past its TTL because the store failed.
    pub stale_served: u64,
    /// Store calls on the request path that failed.
    pub store_errors: u64,
    /// Whether failed verifications are over `auth.max_failures_per_second`
    /// (flood mode: recently failed prefixes are refused without hashing).
    pub flooded: bool,
    /// Changes applied from the store's change feed (each invalidates).
    pub changes_applied: u64,
    /// Requests waiting for an argon2 permit right now.
    pub hash_queue_depth: u64,
    /// How long after its commit the newest change of the last applied
    /// batch was applied here.
    pub change_feed_lag: std::time::Duration,
    /// Whether the last poll of the store's change feed succeeded.
    pub store_up: bool,
    /// Verified secrets cached.
    pub cached_entries: usize,
}
