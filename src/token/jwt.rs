//! Compact JWS access tokens: the key set that issues and verifies them
//! (first key signs, all verify), the checks a presented token must pass,
//! and the JWKS document publishing the public keys.
//!
//! What the claims mean (sessions, scopes) is left to `claims.rs` and
//! `session.rs`; whether the key behind a token is still active is left to
//! `auth`, which holds the key and session caches.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use super::claims::{AccessClaims, printable};
use super::keys::{Algorithm, KeyError, KeySpec, PrivateKey, valid_kid};
use crate::keys::SecretString;
use crate::keys::session::SessionId;

/// Longest presented token looked at, in bytes; anything longer is refused
/// before any decoding. Our tokens are a few hundred bytes (a key with many
/// long scopes stays under 4 KiB), so 8 KiB leaves room without letting a
/// client make us base64-decode and parse megabytes per request.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Clock skew tolerated on `iat` and `nbf`, in seconds: a token minted by a
/// replica whose clock runs slightly ahead must work at once on the others.
/// `exp` gets no leeway: a token is dead at its expiry on every replica
/// whose clock is right, and a skewed one is off by at most this much.
pub const CLOCK_SKEW_SECS: i64 = 30;

/// The `typ` header keygate writes and requires (RFC 7519 §5.1; RFC 8725
/// §3.11 explicit typing). Compared case-insensitively, as RFC 7515 advises.
const TYP: &str = "JWT";

/// An issued access token (a compact JWS). A bearer credential: `Debug`
/// redacts it and there is no `Display`; [`AccessToken::expose`] is for the
/// response body only.
#[derive(Clone)]
pub struct AccessToken(SecretString);

impl AccessToken {
    /// The compact serialisation, `header.payload.signature`.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// What a presented token must additionally match, from the settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected<'a> {
    /// `Some(aud)`: the token's `aud` must be exactly `aud`. `None`: the
    /// token must carry no `aud` (RFC 7519 §4.1.3: a recipient that does not
    /// identify with a present `aud` must reject), so turning an audience on
    /// or off invalidates the tokens minted under the other setting.
    pub audience: Option<&'a str>,
    /// `Some(iss)`: the token's `iss` must be exactly `iss`. `None`: any
    /// or no `iss` (only our keys can have signed it anyway).
    pub issuer: Option<&'a str>,
}

/// Why a presented token was refused. Every variant answers 401
/// `invalid_key`; the variant (its `Display`) goes to the log, so
/// operators can tell an expired token from a forged one. No variant holds
/// the token, and copied header values are truncated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`]; not decoded at all.
    #[error("the token is {len} bytes long, over the {MAX_TOKEN_LEN}-byte limit")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Not three base64url parts, or a header or payload that is not the
    /// JSON we expect. `what` names the part and problem.
    #[error("the token is malformed: {what}")]
    Malformed {
        /// Which part, and how.
        what: &'static str,
    },
    /// `alg: none` (any case): an unsigned token.
    #[error("the token is unsigned (alg none)")]
    AlgNone,
    /// No `kid` header. Every token keygate issues names its key, so a
    /// token without one was not minted by us (and guessing among several
    /// keys would multiply an attacker's tries).
    #[error("the token names no signing key (kid)")]
    MissingKid,
    /// A `kid` not in the key set: signed by a key we never had, or one
    /// rotated out of the set (truncated, printable copy).
    #[error("the token's signing key '{0}' is unknown")]
    UnknownKid(String),
    /// The header's `alg` is not the algorithm of the key its `kid` names:
    /// the algorithm-confusion attack (e.g. an HS256 tag made with a public
    /// key) or a token from another issuer.
    #[error("the token claims alg '{header}' but key '{kid}' is {key}")]
    AlgorithmMismatch {
        /// The header's `alg` (truncated, printable copy).
        header: String,
        /// The key id.
        kid: String,
        /// The key's algorithm.
        key: Algorithm,
    },
    /// A `crit` header: extensions we do not implement must be refused
    /// (RFC 7515 §4.1.11).
    #[error("the token has critical header extensions keygate does not implement")]
    CriticalHeader,
    /// A `typ` header other than `JWT`.
    #[error("the token's typ header is not JWT")]
    WrongType,
    /// The signature does not verify under the named key: tampered, or
    /// signed by another key.
    #[error("the token's signature does not verify under key '{kid}'")]
    BadSignature {
        /// The key id.
        kid: String,
    },
    /// `exp` is at or before now.
    #[error("the token expired at {exp}")]
    Expired {
        /// Its expiry.
        exp: DateTime<Utc>,
    },
    /// `nbf` or `iat` lies more than [`CLOCK_SKEW_SECS`] in the future.
    #[error("the token is not valid before {not_before}")]
    NotYetValid {
        /// The later of `nbf` and `iat`.
        not_before: DateTime<Utc>,
    },
    /// `aud` does not match the configured audience (or is present when
    /// none is configured, or missing when one is).
    #[error("the token's audience does not match")]
    WrongAudience,
    /// `iss` does not match the configured issuer.
    #[error("the token's issuer does not match")]
    WrongIssuer,
    /// No session has the token's `sid` (never existed, or replaced by a
    /// later login). Raised by the caller's session lookup.
    #[error("the token's session does not exist")]
    UnknownSession,
    /// The session row named by `sid` belongs to another key (only a bug
    /// or a forged-but-validly-signed token could cause this).
    #[error("the token's session belongs to another key")]
    SessionMismatch,
    /// The token's session was revoked.
    #[error("the token's session {session_id} is revoked")]
    SessionRevoked {
        /// The session.
        session_id: SessionId,
    },
}

impl TokenError {
    /// A stable snake_case name of the reason, for a log field or a metrics
    /// label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "too_long",
            Self::Malformed { .. } => "malformed",
            Self::AlgNone => "alg_none",
            Self::MissingKid => "missing_kid",
            Self::UnknownKid(_) => "unknown_kid",
            Self::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Self::CriticalHeader => "critical_header",
            Self::WrongType => "wrong_type",
            Self::BadSignature { .. } => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::UnknownSession => "unknown_session",
            Self::SessionMismatch => "session_mismatch",
            Self::SessionRevoked { .. } => "session_revoked",
        }
    }
}

/// Why a token could not be issued.
#[derive(Debug, Error)]
pub enum IssueError {
    /// The claims did not serialise (not expected: every field is a string,
    /// a number or a set of strings).
    #[error("the token claims did not serialise: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The JOSE header we write.
#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// The JOSE header we read. Unknown members (`jku`, `jwk`, `x5u`, …) are
/// ignored: keys come from our set only, never from the token.
#[derive(Deserialize)]
struct HeaderIn {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// One key of the set.
#[derive(Debug, Clone)]
struct Entry {
    kid: String,
    key: PrivateKey,
}

/// The configured signing keys. The first signs; every key verifies the
/// tokens whose `kid` names it, with its own algorithm only. Rotation: put
/// the new key first and keep the old one listed until the tokens it signed
/// have expired (one access-token lifetime), then drop it.
///
/// Cheap to share behind an `Arc`; `Debug` shows kids and algorithms only.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    /// The key that signs (the first spec); it verifies too.
    signer: Entry,
    /// The other keys, in spec order: they only verify.
    others: Vec<Entry>,
}

impl SigningKeys {
    /// Parses every spec, in order. Refuses an empty list, bad or duplicate
    /// kids, short HMAC secrets and PEM that is not a private key of the
    /// spec's algorithm; the first problem found is returned.
    pub fn new(specs: &[KeySpec]) -> Result<Self, KeyError> {
        let mut keys: Vec<Entry> = Vec::with_capacity(specs.len());
        for spec in specs {
            if !valid_kid(&spec.kid) {
                return Err(KeyError::BadKid(printable(&spec.kid, 80)));
            }
            if keys.iter().any(|e| e.kid == spec.kid) {
                return Err(KeyError::DuplicateKid(spec.kid.clone()));
            }
            keys.push(Entry {
                kid: spec.kid.clone(),
                key: PrivateKey::parse(spec)?,
            });
        }
        let mut keys = keys.into_iter();
        let signer = keys.next().ok_or(KeyError::NoKeys)?;
        Ok(Self {
            signer,
            others: keys.collect(),
        })
    }

    /// Every key, the signer first.
    fn all(&self) -> impl Iterator<Item = &Entry> {
        std::iter::once(&self.signer).chain(&self.others)
    }

    /// The kid of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        self.signer.kid.as_str()
    }

    /// The algorithm of the key that signs new tokens.
    pub fn signing_algorithm(&self) -> Algorithm {
        self.signer.key.algorithm()
    }

    /// Signs `claims` with the first key: header `{"alg","typ":"JWT","kid"}`.
    /// The same claims and key always give the same token.
    pub fn issue(&self, claims: &AccessClaims) -> Result<AccessToken, IssueError> {
        let signer = &self.signer;
        let header = serde_json::to_vec(&HeaderOut {
            alg: signer.key.algorithm().as_str(),
            typ: TYP,
            kid: &signer.kid,
        })?;
        let payload = serde_json::to_vec(claims)?;
        let mut token = String::with_capacity(64 + (header.len() + payload.len()) * 4 / 3);
        URL_SAFE_NO_PAD.encode_string(header, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = signer.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(AccessToken(SecretString::new(token)))
    }

    /// Verifies a presented token at `now` and returns its claims.
    ///
    /// Order matters: length first (no work for huge input); then the
    /// header, which only selects the key — its `alg` must equal that key's
    /// algorithm, so the key, never the header, decides how to verify; then
    /// the signature over the exact bytes received; only then is the payload
    /// parsed and its times, audience and issuer checked.
    pub fn verify(
        &self,
        presented: &str,
        now: DateTime<Utc>,
        expected: Expected<'_>,
    ) -> Result<AccessClaims, TokenError> {
        if presented.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: presented.len() });
        }
        let mut parts = presented.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };

        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| malformed("header is not base64url"))?;
        let header: HeaderIn =
            serde_json::from_slice(&header_json).map_err(|_| malformed("header is not a JOSE header"))?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgNone);
        }
        let kid = header.kid.ok_or(TokenError::MissingKid)?;
        let entry = self
            .all()
            .find(|e| e.kid == kid)
            .ok_or_else(|| TokenError::UnknownKid(printable(&kid, 64)))?;
        if header.alg != entry.key.algorithm().as_str() {
            return Err(TokenError::AlgorithmMismatch {
                header: printable(&header.alg, 32),
                kid,
                key: entry.key.algorithm(),
            });
        }
        if header.crit.is_some() {
            return Err(TokenError::CriticalHeader);
        }
        if !header.typ.is_some_and(|t| t.eq_ignore_ascii_case(TYP)) {
            return Err(TokenError::WrongType);
        }

        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| malformed("signature is not base64url"))?;
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        if !entry
            .key
            .verify(&presented.as_bytes()[..signing_input_len], &signature)
        {
            return Err(TokenError::BadSignature { kid });
        }

        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| malformed("payload is not base64url"))?;
        let claims: AccessClaims =
            serde_json::from_slice(&payload).map_err(|_| malformed("payload is not keygate claims"))?;
        check_claims(&claims, now, expected)?;
        Ok(claims)
    }

    /// The JWK Set of the public keys (RFC 7517 §5), in key order:
    /// `{"keys": [...]}` with one member per EdDSA (`OKP`, `x`) or ES256
    /// (`EC`, `x`, `y`) key, each with `kid`, `alg` and `use: "sig"`. HS256
    /// secrets are never published, so a set of only HS256 keys yields
    /// `{"keys": []}`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self.all().filter_map(|e| e.key.public_jwk(&e.kid)).collect();
        json!({ "keys": keys })
    }

    /// Whether any key is asymmetric, i.e. whether a JWKS is worth serving.
    pub fn has_public_keys(&self) -> bool {
        self.all().any(|e| e.key.algorithm().is_asymmetric())
    }
}

fn malformed(what: &'static str) -> TokenError {
    TokenError::Malformed { what }
}

/// The time, audience and issuer checks, after the signature held.
fn check_claims(claims: &AccessClaims, now: DateTime<Utc>, expected: Expected<'_>) -> Result<(), TokenError> {
    if claims.exp <= now {
        return Err(TokenError::Expired { exp: claims.exp });
    }
    let not_before = claims.nbf.map_or(claims.iat, |nbf| nbf.max(claims.iat));
    if not_before > now + Duration::seconds(CLOCK_SKEW_SECS) {
        return Err(TokenError::NotYetValid { not_before });
    }
    if claims.aud.as_deref() != expected.audience {
        return Err(TokenError::WrongAudience);
    }
    if let Some(issuer) = expected.issuer {
        if claims.iss.as_deref() != Some(issuer) {
            return Err(TokenError::WrongIssuer);
        }
    }
    Ok(())
}
