//! Token-exchange sessions as data: the one stored row behind a family of
//! access and refresh tokens, its id, the digests it keeps in place of
//! tokens, and why it was revoked. `store` reads and writes [`Session`]
//! directly; `token` decides what a login, a refresh or an access token
//! does to it (its `impl Session` block adds those decisions), and the
//! admin API shows it through a view that hides the digests.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::model::{KeyId, ModelError, printable};
use super::secret::constant_time_eq;

/// A session's public, stable identifier: `ses_` + a ULID (26 Crockford
/// base32 characters, lowercase), like [`KeyId`]. It is the `sid` claim,
/// the id in `DELETE /v1/sessions/{id}`, and part of every refresh token.
/// Not a secret: knowing it grants nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// Prefix of every session id.
    pub const PREFIX: &'static str = "ses_";
    /// Length of the ULID after the prefix.
    pub const ULID_LEN: usize = 26;

    /// A new id for `now` (ULIDs sort by creation time).
    pub fn generate(now: DateTime<Utc>) -> Self {
        let ulid = ulid::Ulid::from_datetime(now.into());
        Self(format!("{}{}", Self::PREFIX, ulid.to_string().to_lowercase()))
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ULID part (what a refresh token carries).
    pub(crate) fn ulid_part(&self) -> &str {
        &self.0[Self::PREFIX.len()..]
    }

    /// The id whose ULID part is `ulid`, if `ulid` has that shape.
    pub(crate) fn from_ulid_part(ulid: &str) -> Option<Self> {
        let valid = ulid.len() == Self::ULID_LEN && ulid.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then(|| Self(format!("{}{}", Self::PREFIX, ulid.to_ascii_lowercase())))
    }
}

impl FromStr for SessionId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix(Self::PREFIX)
            .and_then(Self::from_ulid_part)
            .ok_or_else(|| ModelError::BadSessionId(printable(s, 64)))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    // Validated, not transparent: a session id read back from a token or a
    // request must have the shape we issue before it reaches a store query.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A 32-byte digest the store keeps in place of a refresh token or its
/// family secret (a `BLOB`/`BYTEA`, or 64 hex digits). Compared in constant
/// time; `Debug` redacts it, like every other credential digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Wraps bytes read back from the store.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality (the derived `PartialEq` is for tests and
    /// the store's round trips; decisions go through this).
    pub(crate) fn matches(&self, other: &Self) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest([redacted])")
    }
}

/// Why a session was revoked: stored (`sessions.revoked_reason`), shown
/// by the admin API and written to the audit row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// `DELETE /v1/sessions/{id}` or the CLI.
    Admin,
    /// A spent refresh token of the session was presented again.
    RefreshReuse,
}

impl RevokeReason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::RefreshReuse => "refresh_reuse",
        }
    }
}

impl fmt::Display for RevokeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevokeReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "refresh_reuse" => Ok(Self::RefreshReuse),
            other => Err(format!("'{other}' is not a session revocation reason")),
        }
    }
}

/// A session: the row the store keeps, and all it must keep, for one
/// family of tokens (one per key and client session id). No token is
/// stored, only digests; no other table is needed.
///
/// Store notes: `id` is the primary key; `(key_id, client_session)` is
/// unique (a login finds the row by it, treating `None` as one more value);
/// every change that alters what `Session::admits` (in `token`) answers (insert,
/// revocation, replacement) goes on the change feed so each replica's
/// session cache sees it within a second, while rotations, which do not,
/// stay off it; logins and refreshes therefore read the row from the store,
/// never from a cache. Rotations are conditional updates on the generation
/// read (see
/// `token::session::Rotation::previous_generation`). Rows whose `expires_at` and
/// `access_expires_at` have both passed may be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Primary key; the `sid` claim.
    pub id: SessionId,
    /// The key the session was opened with; the `sub` claim.
    pub key_id: KeyId,
    /// The client's `session_id` at login (`None`: the key's default
    /// session). Opaque to keygate; not a secret.
    pub client_session: Option<String>,
    /// Scopes granted at login (possibly narrowed). Tokens carry these
    /// minus any the key has lost since.
    pub scopes: BTreeSet<String>,
    /// When the session was opened.
    pub created_at: DateTime<Utc>,
    /// When its current refresh token expires (moves forward at each
    /// rotation and login).
    pub expires_at: DateTime<Utc>,
    /// When it was revoked; a revoked session admits no token and never
    /// comes back.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was revoked.
    pub revoked_reason: Option<RevokeReason>,
    /// Digest of the refresh family secret (see `token/refresh.rs`).
    pub family_digest: TokenDigest,
    /// Digest of the current refresh token.
    pub refresh_digest: TokenDigest,
    /// Rotations so far; only ever increases, also across logins.
    pub refresh_generation: u64,
    /// `jti` of the current access token. With the two instants below and
    /// the scopes it rebuilds that token's exact claims, so a repeated
    /// login re-signs the identical token instead of storing it.
    pub access_jti: String,
    /// `iat` of the current access token.
    pub access_issued_at: DateTime<Utc>,
    /// `exp` of the current access token.
    pub access_expires_at: DateTime<Utc>,
}

/// A session's state at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Its refresh token may be redeemed.
    Active,
    /// Its refresh token expired; its last access token may still be valid
    /// until its own `exp`.
    Expired,
    /// Revoked: nothing of it is accepted any more.
    Revoked,
}

impl Session {
    /// The state at `now`.
    pub fn state_at(&self, now: DateTime<Utc>) -> SessionState {
        if self.revoked_at.is_some() {
            SessionState::Revoked
        } else if self.expires_at <= now {
            SessionState::Expired
        } else {
            SessionState::Active
        }
    }

    /// Revokes the session at `now`; a second revocation keeps the first
    /// instant and reason.
    pub fn revoke(&mut self, now: DateTime<Utc>, reason: RevokeReason) {
        if self.revoked_at.is_none() {
            self.revoked_at = Some(now);
            self.revoked_reason = Some(reason);
        }
    }
}
