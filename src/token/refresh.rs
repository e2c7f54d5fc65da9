//! Refresh tokens: their format, minting them from the OS CSPRNG, parsing a
//! presented one, and the digests the store keeps instead of the tokens.
//!
//! # Format
//!
//! `kgr_<session ulid>_<generation>_<64 hex>`, e.g.
//! `kgr_01jd3m5k7r9t2v4w6x8y0z1a2b_3_9f0c…` (about 100 bytes). The prefix
//! lets secret scanners match them (`kgr_[0-9a-z]{26}_[0-9]+_[0-9a-f]{64}`);
//! the session id lets the store find the one row to compare against by
//! primary key; the generation says which rotation minted it (for logs).
//! The 64 hex digits are two 128-bit secrets from the OS CSPRNG:
//!
//! - the **family secret** `F`, drawn at login and carried unchanged by every
//!   token the session rotates to. Only someone who holds or held a genuine
//!   token of the session knows it.
//! - the **rotation secret** `R`, drawn anew at every rotation.
//!
//! # What is stored
//!
//! Never a token: the session row keeps `family_hash = H_f(F)` and
//! `refresh_hash = H_r(session id, generation, F, R)` of the current token,
//! where `H_f` and `H_r` are BLAKE3 in key-derivation mode with distinct
//! context strings (domain separation: neither digest can stand in for the
//! other, nor for any other BLAKE3 use in keygate). A plain, unkeyed digest
//! suffices because the inputs carry 128 random bits each: there is nothing
//! to brute-force, so a server-side key (or argon2) would add nothing but a
//! secret to manage, and would tie refresh tokens to signing-key rotation.
//! A leaked session table therefore lets nobody mint a token.
//!
//! Why two secrets: reuse detection must recognise *any* spent token of a
//! session, not only the previous one (an attacker who rotates twice in a
//! row would push a stolen token out of a one-deep window), without storing
//! every spent digest. A presented token whose `F` matches but whose digest
//! is not the current one can only come from someone who held a genuine
//! token of this session — a spent one, or one they edited — which is
//! exactly the evidence of theft the OAuth 2.0 Security BCP (RFC 9700
//! §4.14.2) asks us to act on. Someone who knows only the session id (it is
//! the `sid` claim of every access token, which upstreams see) cannot
//! produce `F`, so they cannot revoke other people's sessions.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, RngCore};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::keys::SecretString;
use crate::keys::session::{SessionId, TokenDigest};

/// Prefix of every refresh token.
pub const REFRESH_TOKEN_PREFIX: &str = "kgr_";
/// Longest presented refresh token looked at, in bytes (real ones are about
/// 100: prefix, 26, up to 20 generation digits, 64, separators).
pub const MAX_REFRESH_TOKEN_LEN: usize = 128;
/// Bytes in each of the two secrets (128 bits).
const SECRET_BYTES: usize = 16;
/// BLAKE3 context of the family digest.
const FAMILY_CONTEXT: &str = "keygate 2026-11 refresh token family v1";
/// BLAKE3 context of the current-token digest.
const TOKEN_CONTEXT: &str = "keygate 2026-11 refresh token v1";

/// An issued refresh token. A bearer credential: `Debug` redacts it and
/// there is no `Display`; [`RefreshToken::expose`] is for the response body
/// only.
#[derive(Clone)]
pub struct RefreshToken(SecretString);

impl RefreshToken {
    /// The token text, to hand to the client once.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

/// Why a presented refresh token was refused. The `/auth/refresh` handler
/// answers 401 `invalid_key` for all of them and logs the variant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RefreshError {
    /// Not a refresh token of our format (or over the length cap).
    #[error("the refresh token is malformed")]
    Malformed,
    /// Well-formed, but no session has its id (never existed, or deleted).
    #[error("the refresh token's session does not exist")]
    UnknownSession,
    /// The session exists, but the token does not carry its family secret:
    /// forged, or from a family a later login replaced. Not reuse: proof of
    /// having held a genuine token is missing, so nothing is revoked.
    #[error("the refresh token does not belong to session {session_id}")]
    NotInFamily {
        /// The session it named.
        session_id: SessionId,
    },
    /// The session was revoked (by an admin, or after reuse was detected).
    #[error("session {session_id} is revoked")]
    Revoked {
        /// The session.
        session_id: SessionId,
    },
    /// The session's current refresh token has expired.
    #[error("session {session_id} expired")]
    Expired {
        /// The session.
        session_id: SessionId,
    },
}

/// A refresh token as presented, parsed and not yet checked against its
/// session (hence `Presented`). `Debug` shows the session and generation,
/// never the secrets.
pub struct PresentedRefreshToken {
    session_id: SessionId,
    generation: u64,
    family: Zeroizing<[u8; SECRET_BYTES]>,
    rotation: Zeroizing<[u8; SECRET_BYTES]>,
}

impl fmt::Debug for PresentedRefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedRefreshToken")
            .field("session_id", &self.session_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl FromStr for PresentedRefreshToken {
    type Err = RefreshError;
    /// Parses the format exactly: prefix, a 26-character ULID, a decimal
    /// generation without sign or leading zeros, 64 lowercase hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_REFRESH_TOKEN_LEN {
            return Err(RefreshError::Malformed);
        }
        let body = s
            .strip_prefix(REFRESH_TOKEN_PREFIX)
            .ok_or(RefreshError::Malformed)?;
        let mut parts = body.split('_');
        let (Some(ulid), Some(generation), Some(secrets), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RefreshError::Malformed);
        };
        if ulid.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(RefreshError::Malformed);
        }
        let session_id = SessionId::from_ulid_part(ulid).ok_or(RefreshError::Malformed)?;
        let canonical = !generation.is_empty()
            && generation.bytes().all(|b| b.is_ascii_digit())
            && (generation == "0" || !generation.starts_with('0'));
        if !canonical {
            return Err(RefreshError::Malformed);
        }
        let generation: u64 = generation.parse().map_err(|_| RefreshError::Malformed)?;
        let mut bytes = Zeroizing::new([0u8; 2 * SECRET_BYTES]);
        decode_lower_hex(secrets, &mut bytes[..]).ok_or(RefreshError::Malformed)?;
        let mut family = Zeroizing::new([0u8; SECRET_BYTES]);
        let mut rotation = Zeroizing::new([0u8; SECRET_BYTES]);
        family.copy_from_slice(&bytes[..SECRET_BYTES]);
        rotation.copy_from_slice(&bytes[SECRET_BYTES..]);
        Ok(Self {
            session_id,
            generation,
            family,
            rotation,
        })
    }
}

impl PresentedRefreshToken {
    /// The session the token names: what the store looks up.
    pub fn session_id(&self) -> &SessionId {
        &self.session_id
    }

    /// The generation the token claims (unauthenticated; for logs).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The digest of its family secret.
    pub(crate) fn family_digest(&self) -> TokenDigest {
        family_digest(&self.family)
    }

    /// The digest it would have if it were the session's current token.
    pub(crate) fn token_digest(&self) -> TokenDigest {
        token_digest(&self.session_id, self.generation, &self.family, &self.rotation)
    }

    /// Its family secret, carried over into the rotated token.
    pub(crate) fn family(&self) -> &[u8; SECRET_BYTES] {
        &self.family
    }
}

/// A freshly minted refresh token and the digests the session row keeps.
#[derive(Debug)]
pub(crate) struct Minted {
    /// The token for the client.
    pub(crate) token: RefreshToken,
    /// `H_f(F)`.
    pub(crate) family_digest: TokenDigest,
    /// `H_r(session, generation, F, R)`.
    pub(crate) token_digest: TokenDigest,
}

/// A new family secret (at login).
pub(crate) fn new_family<R: RngCore + CryptoRng>(rng: &mut R) -> Zeroizing<[u8; SECRET_BYTES]> {
    let mut family = Zeroizing::new([0u8; SECRET_BYTES]);
    rng.fill_bytes(&mut family[..]);
    family
}

/// Mints the token of `generation` for `session_id` in family `family`,
/// with a fresh rotation secret from `rng`.
pub(crate) fn mint<R: RngCore + CryptoRng>(
    session_id: &SessionId,
    generation: u64,
    family: &[u8; SECRET_BYTES],
    rng: &mut R,
) -> Minted {
    let mut rotation = Zeroizing::new([0u8; SECRET_BYTES]);
    rng.fill_bytes(&mut rotation[..]);
    let mut text = String::with_capacity(MAX_REFRESH_TOKEN_LEN);
    text.push_str(REFRESH_TOKEN_PREFIX);
    text.push_str(session_id.ulid_part());
    text.push('_');
    text.push_str(&generation.to_string());
    text.push('_');
    push_lower_hex(&mut text, family);
    push_lower_hex(&mut text, &rotation[..]);
    Minted {
        token: RefreshToken(SecretString::new(text)),
        family_digest: family_digest(family),
        token_digest: token_digest(session_id, generation, family, &rotation),
    }
}

fn family_digest(family: &[u8; SECRET_BYTES]) -> TokenDigest {
    let mut hasher = blake3::Hasher::new_derive_key(FAMILY_CONTEXT);
    hasher.update(family);
    TokenDigest::from_bytes(*hasher.finalize().as_bytes())
}

fn token_digest(
    session_id: &SessionId,
    generation: u64,
    family: &[u8; SECRET_BYTES],
    rotation: &[u8; SECRET_BYTES],
) -> TokenDigest {
    let mut hasher = blake3::Hasher::new_derive_key(TOKEN_CONTEXT);
    // The session id has a fixed length, so the concatenation is unambiguous.
    hasher.update(session_id.as_str().as_bytes());
    hasher.update(&generation.to_be_bytes());
    hasher.update(family);
    hasher.update(rotation);
    TokenDigest::from_bytes(*hasher.finalize().as_bytes())
}

fn push_lower_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// Decodes exactly `out.len() * 2` lowercase hex digits into `out`.
fn decode_lower_hex(text: &str, out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}
