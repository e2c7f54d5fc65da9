//! Signing keys: the configured key specs (kid, algorithm, secret material),
//! parsing them into usable private keys, and the three primitives a JWS
//! needs from a key — sign, verify, publish the public half as a JWK.
//!
//! Which key signs and which verify, and everything about the token format,
//! is `jwt.rs`'s job.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use serde_json::{Value, json};
use sha2::Sha256;
use thiserror::Error;

use super::claims::printable;
use crate::keys::SecretString;

/// Shortest HS256 secret accepted, in bytes: RFC 7518 §3.2 requires a key
/// at least as long as the hash output (256 bits). Same bound as
/// `tokens.signing_key` in the config.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Longest key id, in bytes (it travels in every token header).
pub const MAX_KID_LEN: usize = 64;

/// Context string of the BLAKE3 key derivation that names an HS256 key
/// configured without a kid (see [`KeySpec::hs256`]).
const KID_DERIVATION_CONTEXT: &str = "keygate 2026-11 token signing key id v1";

/// A JWS signature algorithm keygate signs and verifies with. The set is
/// closed: `none` and every other algorithm are refused by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256 over a shared secret (the default).
    Hs256,
    /// Ed25519 signatures (RFC 8037).
    EdDsa,
    /// ECDSA on P-256 with SHA-256 (RFC 7518 §3.4).
    Es256,
}

impl Algorithm {
    /// The JOSE name (`alg` header value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
        }
    }

    /// Whether the key has a public half that may be published (JWKS).
    pub fn is_asymmetric(self) -> bool {
        !matches!(self, Self::Hs256)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;
    /// Parses the exact JOSE name (config spelling); names are case-sensitive
    /// in JOSE, so `hs256` is refused rather than guessed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "HS256" => Ok(Self::Hs256),
            "EdDSA" => Ok(Self::EdDsa),
            "ES256" => Ok(Self::Es256),
            other => Err(KeyError::UnsupportedAlgorithm(printable(other, 32))),
        }
    }
}

/// One configured signing key, as `config` fills it. Nothing is checked
/// until [`super::SigningKeys::new`] parses it.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Key id: the `kid` header of tokens it signs, and of its JWK. 1 to
    /// [`MAX_KID_LEN`] characters from `A-Z a-z 0-9 . _ -`, unique in a set.
    pub kid: String,
    /// What the key is, which also fixes the only algorithm it verifies.
    pub algorithm: Algorithm,
    /// HS256: the shared secret itself (its UTF-8 bytes, at least
    /// [`MIN_HMAC_SECRET_BYTES`]). EdDSA / ES256: a PKCS#8 PEM private key
    /// (`-----BEGIN PRIVATE KEY-----`), Ed25519 or P-256 respectively.
    pub material: SecretString,
}

impl KeySpec {
    /// An HS256 key from a bare secret (`tokens.signing_key`), with a kid
    /// derived from the secret: `hs256-` + 12 hex digits of a BLAKE3 key
    /// derivation. Every replica derives the same kid from the same secret,
    /// so a single-secret config needs no kid; publishing 48 bits of a
    /// one-way function of the secret tells an attacker nothing the HMAC
    /// tags of every token do not already.
    pub fn hs256(secret: SecretString) -> Self {
        let derived = blake3::derive_key(KID_DERIVATION_CONTEXT, secret.expose().as_bytes());
        let kid = derived[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Self {
            kid: format!("hs256-{kid}"),
            algorithm: Algorithm::Hs256,
            material: secret,
        }
    }
}

/// Why a key spec (or a set of them) is unusable. Messages name the kid and
/// the problem, never the material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// An empty list: there is nothing to sign with.
    #[error("no token signing key is configured")]
    NoKeys,
    /// A kid that is empty, too long or has characters outside
    /// `A-Z a-z 0-9 . _ -` (truncated, printable copy).
    #[error("'{0}' is not a usable key id: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadKid(String),
    /// Two keys share a kid, so a token could not say which one signed it.
    #[error("the key id '{0}' is used by more than one signing key")]
    DuplicateKid(String),
    /// An algorithm name keygate does not implement (truncated, printable copy).
    #[error("'{0}' is not a supported signing algorithm: use HS256, EdDSA or ES256")]
    UnsupportedAlgorithm(String),
    /// An HS256 secret shorter than [`MIN_HMAC_SECRET_BYTES`].
    #[error("the HS256 secret of key '{kid}' is {len} bytes long: use at least 32 random bytes")]
    ShortSecret {
        /// The key id.
        kid: String,
        /// The secret's length in bytes.
        len: usize,
    },
    /// Material that is not a PKCS#8 PEM private key of the algorithm's
    /// curve. `reason` comes from the PKCS#8 parser and holds no key bytes.
    #[error("the {algorithm} key '{kid}' is not a PKCS#8 PEM private key for that algorithm: {reason}")]
    BadPrivateKey {
        /// The key id.
        kid: String,
        /// The algorithm it was configured for.
        algorithm: Algorithm,
        /// What the parser disliked.
        reason: String,
    },
}

/// A parsed private key, ready to sign and verify. Its `Debug` names only
/// the algorithm: the HMAC state and the private scalars never print.
#[derive(Clone)]
pub(crate) enum PrivateKey {
    /// The keyed HMAC state, cloned per use so the key schedule runs once.
    Hs256(Hmac<Sha256>),
    /// Boxed: the dalek key with its precomputed public half is large.
    EdDsa(Box<ed25519_dalek::SigningKey>),
    /// Boxed for the same reason.
    Es256(Box<p256::ecdsa::SigningKey>),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, [redacted])", self.algorithm())
    }
}

impl PrivateKey {
    /// Parses `spec`'s material for its algorithm (the kid is checked by the
    /// caller).
    pub(crate) fn parse(spec: &KeySpec) -> Result<Self, KeyError> {
        let material = spec.material.expose();
        let bad = |reason: String| KeyError::BadPrivateKey {
            kid: spec.kid.clone(),
            algorithm: spec.algorithm,
            reason,
        };
        match spec.algorithm {
            Algorithm::Hs256 => {
                if material.len() < MIN_HMAC_SECRET_BYTES {
                    return Err(KeyError::ShortSecret {
                        kid: spec.kid.clone(),
                        len: material.len(),
                    });
                }
                // HMAC accepts keys of any length; this cannot fail.
                Hmac::<Sha256>::new_from_slice(material.as_bytes())
                    .map(Self::Hs256)
                    .map_err(|e| bad(e.to_string()))
            }
            Algorithm::EdDsa => ed25519_dalek::SigningKey::from_pkcs8_pem(material)
                .map(|k| Self::EdDsa(Box::new(k)))
                .map_err(|e| bad(e.to_string())),
            Algorithm::Es256 => p256::ecdsa::SigningKey::from_pkcs8_pem(material)
                .map(|k| Self::Es256(Box::new(k)))
                .map_err(|e| bad(e.to_string())),
        }
    }

    /// The one algorithm this key signs and verifies with.
    pub(crate) fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hs256(_) => Algorithm::Hs256,
            Self::EdDsa(_) => Algorithm::EdDsa,
            Self::Es256(_) => Algorithm::Es256,
        }
    }

    /// The JWS signature of `message` (HMAC tag, Ed25519 signature, or the
    /// 64-byte `r || s` of RFC 7518 §3.4). Deterministic for all three
    /// (ECDSA nonces per RFC 6979), which re-issuing a session's current
    /// token relies on.
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            Self::EdDsa(key) => key.sign(message).to_bytes().to_vec(),
            Self::Es256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(message);
                signature.to_bytes().to_vec()
            }
        }
    }

    /// Whether `signature` is this key's signature of `message`. The HMAC
    /// tag compares in constant time (`verify_slice`); Ed25519 uses the
    /// strict check (no small-order keys, canonical `S`). ECDSA accepts
    /// either `s` (high or low): a second valid encoding of the same token
    /// grants nothing, since tokens are identified by `jti`, not bytes.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Hs256(mac) => {
                let mut mac = mac.clone();
                mac.update(message);
                mac.verify_slice(signature).is_ok()
            }
            Self::EdDsa(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verifying_key().verify_strict(message, &sig).is_ok()),
            Self::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verifying_key().verify(message, &sig).is_ok()),
        }
    }

    /// The public JWK of an asymmetric key (RFC 7517, RFC 8037 for OKP),
    /// or `None` for an HMAC secret, which has no public half.
    pub(crate) fn public_jwk(&self, kid: &str) -> Option<Value> {
        match self {
            Self::Hs256(_) => None,
            Self::EdDsa(key) => Some(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
                "kid": kid,
                "alg": Algorithm::EdDsa.as_str(),
                "use": "sig",
            })),
            Self::Es256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                // An uncompressed point of a valid key always has both
                // coordinates; `None` would mean the identity, which no
                // private key produces.
                let (x, y) = (point.x()?, point.y()?);
                Some(json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                    "kid": kid,
                    "alg": Algorithm::Es256.as_str(),
                    "use": "sig",
                }))
            }
        }
    }
}

/// Whether `kid` is a usable key id.
pub(crate) fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
