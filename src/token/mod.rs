//! Token exchange (SPEC §8): access tokens (JWTs) issued for an API key,
//! the sessions behind them, and their single-use, rotated refresh tokens.
//!
//! This module owns the token formats, signing and verification, the JWKS
//! document, and the pure session decisions (login, refresh rotation, reuse
//! detection, whether a session admits a token). It holds no HTTP types and
//! does no I/O: `proxy` parses requests and renders responses, `auth` runs
//! the exchange over the store (reads, conditional writes, retries, reuse
//! revocation), looks up keys and caches session rows, `store` keeps the
//! rows and announces their changes, and `config` fills [`TokenSettings`].
//!
//! # Security choices
//!
//! - **The key decides the algorithm.** Each configured key has one
//!   algorithm (HS256, EdDSA or ES256). A token's `kid` selects the key and
//!   its `alg` header must equal that key's algorithm, so an HS256 tag made
//!   with an asymmetric key's public half (algorithm confusion) or an
//!   `alg: none` token is refused before any signature work. Keys are never
//!   taken from the token (`jku`, `jwk`, `x5u` are ignored).
//! - **`kid` is required and rotation is a list.** The first key signs;
//!   every listed key verifies the tokens naming it. Rotate by prepending
//!   the new key, and drop the old one after an access-token lifetime.
//!   Tokens without `kid` are refused: we always write one, and trying every
//!   key would multiply an attacker's tries.
//! - **Strict parsing, bounded work.** Tokens over 8 KiB are refused before
//!   decoding; base64url must be canonical and unpadded; duplicate JSON
//!   members, `crit` headers and a `typ` other than `JWT` are refused. The
//!   signature is checked over the bytes received before the payload is
//!   parsed. HMAC tags compare in constant time.
//! - **Time is injected.** Every decision takes `now` (from
//!   [`crate::clock`]); `exp` has no leeway, `iat`/`nbf` tolerate 30 s of
//!   clock skew between replicas.
//! - **Revocation without a round trip.** Every token names its session
//!   (`sid`); `auth` checks the signature, then the cached key and session
//!   rows, which the store's change feed keeps current.
//! - **Refresh tokens are single-use with reuse detection** (RFC 9700
//!   §4.14.2): each redemption rotates the token; presenting a spent one
//!   revokes the whole session. A family secret in every token makes spent
//!   tokens recognisable at any depth while outsiders who only know the
//!   session id cannot trigger a revocation. Only digests are stored (see
//!   `refresh.rs`).
//! - **Secrets are types.** Signing keys, refresh and access tokens and
//!   their digests have redacting `Debug` and no `Display`.

pub mod claims;
pub mod jwt;
pub mod keys;
pub mod refresh;
pub mod session;

#[cfg(test)]
mod tests;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use thiserror::Error;

pub use self::claims::{AccessClaims, ClaimsError, effective_scopes, narrow_scopes};
pub use self::jwt::{AccessToken, Expected, IssueError, SigningKeys, TokenError};
pub use self::keys::{Algorithm, KeyError, KeySpec};
pub use self::refresh::{PresentedRefreshToken, RefreshError, RefreshToken};
pub use self::session::{Login, LoginRequest, Redemption, Rotation, SessionPolicy};
// A session's data is domain (`keys::session`), where `store` can name it
// too; `token` adds the decisions about it.
pub use crate::keys::session::{RevokeReason, Session, SessionId, SessionState, TokenDigest};

/// Token-exchange settings (`[tokens]`), filled by `config`.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Signing keys, the signer first (see [`SigningKeys`]). A bare
    /// `tokens.signing_key` becomes one [`KeySpec::hs256`].
    pub keys: Vec<KeySpec>,
    /// Access-token lifetime (`tokens.access_ttl`, default 2 h).
    pub access_ttl: Duration,
    /// Refresh-token lifetime from each rotation (`tokens.refresh_ttl`,
    /// default 30 days).
    pub refresh_ttl: Duration,
    /// `aud` written into and required of every token; `None` writes none
    /// and refuses tokens that carry one.
    pub audience: Option<String>,
    /// `iss` written into and required of every token (default `keygate`).
    pub issuer: String,
}

impl TokenSettings {
    /// Default access-token lifetime (SPEC §8: `expires_in: 7200`).
    pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(2 * 3600);
    /// Default refresh-token lifetime.
    pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(30 * 86_400);
    /// Default issuer.
    pub const DEFAULT_ISSUER: &'static str = "keygate";
    /// Longest lifetime accepted for either token: ten years, the config's
    /// "forever", which keeps every expiry far inside chrono's range.
    pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

    /// Settings for `keys` with every other field at its default.
    pub fn new(keys: Vec<KeySpec>) -> Self {
        Self {
            keys,
            access_ttl: Self::DEFAULT_ACCESS_TTL,
            refresh_ttl: Self::DEFAULT_REFRESH_TTL,
            audience: None,
            issuer: Self::DEFAULT_ISSUER.to_owned(),
        }
    }
}

/// Why [`Tokens`] could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenConfigError {
    /// A signing key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A lifetime, issuer or audience is out of range.
    #[error("the token setting {field} {problem}")]
    InvalidSetting {
        /// The [`TokenSettings`] field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// The token exchange, ready to use: the parsed keys and the session
/// policy. Built once at startup; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Tokens {
    keys: SigningKeys,
    policy: SessionPolicy,
}

impl Tokens {
    /// Parses the keys and checks the other settings.
    pub fn new(settings: &TokenSettings) -> Result<Self, TokenConfigError> {
        let ttl = |field: &'static str, value: Duration| {
            let bad = |problem| TokenConfigError::InvalidSetting { field, problem };
            if value < Duration::from_secs(1) {
                return Err(bad("must be at least one second"));
            }
            if value > TokenSettings::MAX_TTL {
                return Err(bad("must be at most ten years"));
            }
            chrono::Duration::from_std(value).map_err(|_| bad("is out of range"))
        };
        let access_ttl = ttl("access_ttl", settings.access_ttl)?;
        let refresh_ttl = ttl("refresh_ttl", settings.refresh_ttl)?;
        if settings.issuer.is_empty() {
            return Err(TokenConfigError::InvalidSetting {
                field: "issuer",
                problem: "must not be empty",
            });
        }
        if settings.audience.as_deref().is_some_and(str::is_empty) {
            return Err(TokenConfigError::InvalidSetting {
                field: "audience",
                problem: "must not be empty (leave it unset for none)",
            });
        }
        Ok(Self {
            keys: SigningKeys::new(&settings.keys)?,
            policy: SessionPolicy {
                access_ttl,
                refresh_ttl,
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
            },
        })
    }

    /// The signing keys.
    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// The session policy: [`SessionPolicy::login`] and
    /// [`SessionPolicy::redeem`].
    pub fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    /// Signs `claims` (from a [`Login`] or [`Rotation`]).
    pub fn sign(&self, claims: &AccessClaims) -> Result<AccessToken, IssueError> {
        self.keys.issue(claims)
    }

    /// Verifies a presented access token at `now` against the keys and the
    /// configured audience and issuer. The caller then checks the cached
    /// session ([`Session::admits`]) and key.
    pub fn verify(&self, presented: &str, now: DateTime<Utc>) -> Result<AccessClaims, TokenError> {
        self.keys.verify(
            presented,
            now,
            Expected {
                audience: self.policy.audience.as_deref(),
                issuer: Some(&self.policy.issuer),
            },
        )
    }

    /// The JWK Set of the public keys (served at `/.well-known/jwks.json`
    /// when [`SigningKeys::has_public_keys`]).
    pub fn jwks(&self) -> Value {
        self.keys.jwks()
    }

    /// Seconds until `claims` expire at `now` (the `expires_in` of a token
    /// response), zero if already past. Counted in the token's own whole
    /// seconds: `iat` and `exp` are whole seconds and `iat` is `now`
    /// without its fraction, so a fresh token reports exactly the lifetime
    /// it was issued with (`exp - iat`, 7200 by default), never a second
    /// less because `now` had a fraction; a reused one reports what is
    /// left, never more than it was issued with.
    pub fn expires_in(claims: &AccessClaims, now: DateTime<Utc>) -> u64 {
        let issued = claims.exp.timestamp().saturating_sub(claims.iat.timestamp());
        let left = claims.exp.timestamp().saturating_sub(now.timestamp());
        u64::try_from(left.min(issued)).unwrap_or(0)
    }
}
