//! What an access token says: the JWT claims keygate issues and accepts, the
//! session id they name, and the scope arithmetic of the exchange (narrowing
//! a key's scopes at issue, intersecting with the key's current scopes at use).
//!
//! Signing and verifying the claims is `jwt.rs`'s job; deciding when a
//! session may mint them is `session.rs`'s.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::keys::KeyId;
pub(crate) use crate::keys::model::printable;
use crate::keys::session::SessionId;

/// Random bytes in a `jti` (128 bits: unique without coordination).
const JTI_BYTES: usize = 16;

/// The claims of a keygate access token (RFC 7519 registered claims plus
/// `sid` and `scope`). Times are whole seconds (NumericDate).
///
/// Field order is the serialisation order, and `scope` is a sorted set, so
/// the same claims always serialise to the same bytes: re-signing a
/// session's current claims yields the identical token (what `/auth/login`
/// returns while that token is valid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer (`tokens.issuer`); checked on verification when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Subject: the id of the key the token was exchanged for. Rate limits,
    /// key status and scopes are looked up by it.
    pub sub: KeyId,
    /// Audience (`tokens.audience`): a single string. RFC 7519 also allows an
    /// array; keygate never issues one, and a token with an array fails to
    /// parse (only our own signed tokens reach this type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Expiry: the token is rejected from this instant on.
    #[serde(with = "chrono::serde::ts_seconds")]
    pub exp: DateTime<Utc>,
    /// Not before: keygate does not issue it (`iat` serves), but honours it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_seconds_option"
    )]
    pub nbf: Option<DateTime<Utc>>,
    /// Issued at.
    #[serde(with = "chrono::serde::ts_seconds")]
    pub iat: DateTime<Utc>,
    /// Unique token id (128 random bits, base64url).
    pub jti: String,
    /// The session the token belongs to; revoking it rejects the token.
    pub sid: SessionId,
    /// Granted scopes; on the wire one space-separated string (RFC 8693
    /// §4.2, RFC 6749 §3.3), omitted when empty.
    #[serde(
        default,
        skip_serializing_if = "BTreeSet::is_empty",
        serialize_with = "serialize_scope",
        deserialize_with = "deserialize_scope"
    )]
    pub scope: BTreeSet<String>,
}

/// A fresh `jti`: 128 random bits from `rng` (the OS CSPRNG in production),
/// base64url without padding.
pub fn new_jti<R: RngCore + CryptoRng>(rng: &mut R) -> String {
    let mut bytes = [0u8; JTI_BYTES];
    rng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn serialize_scope<S: Serializer>(scope: &BTreeSet<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_scope(scope))
}

fn deserialize_scope<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<String>, D::Error> {
    let s = String::deserialize(deserializer)?;
    parse_scope(&s).map_err(serde::de::Error::custom)
}

/// Why a claim or a `scope` parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimsError {
    /// A scope token with a character RFC 6749 §3.3 does not allow
    /// (truncated, printable copy).
    #[error("'{0}' is not a valid scope")]
    BadScope(String),
    /// A requested scope the key does not hold. The `/oauth/token` handler
    /// answers RFC 6749 `invalid_scope`.
    #[error("the scope '{0}' is not granted to this key")]
    ScopeNotGranted(String),
}

/// Renders a scope set as one space-separated string (sorted).
pub fn format_scope(scope: &BTreeSet<String>) -> String {
    scope.iter().map(String::as_str).collect::<Vec<_>>().join(" ")
}

/// Parses a space-separated scope string (RFC 6749 §3.3). Runs of spaces
/// are tolerated (clients build these strings by hand); each token must be
/// printable ASCII without `"` or `\`. A blank string is the empty set.
pub fn parse_scope(scope: &str) -> Result<BTreeSet<String>, ClaimsError> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let valid = s
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if valid {
                Ok(s.to_owned())
            } else {
                Err(ClaimsError::BadScope(printable(s, 80)))
            }
        })
        .collect()
}

/// The scopes to issue when a client asks for `requested` (the OAuth
/// `scope` parameter) with a key holding `granted`: everything the key holds
/// when the parameter is absent or blank, else exactly the requested set,
/// which must be a subset (a token may only narrow, never widen). Scopes
/// compare exactly, as in `policy::scopes`: `orders:*` does not grant
/// `orders:read`. A refusal names the first (sorted) offending scope.
pub fn narrow_scopes(
    granted: &BTreeSet<String>,
    requested: Option<&str>,
) -> Result<BTreeSet<String>, ClaimsError> {
    let requested = match requested {
        Some(text) => parse_scope(text)?,
        None => BTreeSet::new(),
    };
    if requested.is_empty() {
        return Ok(granted.clone());
    }
    match requested.iter().find(|s| !granted.contains(*s)) {
        Some(missing) => Err(ClaimsError::ScopeNotGranted(printable(missing, 80))),
        None => Ok(requested),
    }
}

/// The scopes a token grants right now: those it was issued with that the
/// key still holds. Removing a scope from a key therefore takes effect on
/// its tokens at once; adding one reaches them at their next refresh.
pub fn effective_scopes(token: &BTreeSet<String>, key_now: &BTreeSet<String>) -> BTreeSet<String> {
    token.intersection(key_now).cloned().collect()
}
