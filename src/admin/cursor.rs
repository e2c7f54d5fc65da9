//! Page cursors of the admin API: opaque, tamper-evident, and valid on every
//! replica that shares the configuration.
//!
//! A cursor is `base64url(payload) "." base64url(mac)`: the payload is the
//! keyset position (the last key id, or the last audit sequence number) and
//! the filter the page was listed with; the MAC is a keyed BLAKE3 hash whose
//! key is derived from the configured admin token material (the PHC strings
//! and `KEYGATE_ADMIN_TOKEN`), so replicas with the same config accept each
//! other's cursors and nobody without that config can forge one. A cursor
//! presented with a different filter than it was issued for is refused, so
//! a page never silently mixes two listings.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::AdminSettings;
use crate::keys::KeyStatus;

/// The `blake3::derive_key` context of the cursor MAC key (changing it
/// invalidates every cursor in circulation).
const KEY_CONTEXT: &str = "keygate 2026-11 admin API page cursor v1";

/// Where a listing resumes, and for which filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "list", rename_all = "snake_case", deny_unknown_fields)]
pub enum Position {
    /// `GET /v1/keys`: after this key id, with this filter.
    Keys {
        /// The last key id of the previous page.
        after: String,
        /// The `owner` filter the listing used.
        owner: Option<String>,
        /// The `status` filter the listing used.
        status: Option<KeyStatus>,
    },
    /// `GET /v1/audit`: after this sequence number.
    Audit {
        /// The last sequence number of the previous page.
        after: i64,
    },
}

/// Why a presented cursor is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor this gateway issued, or altered since.
    #[error(
        "the cursor is not valid: it was altered, or issued by a gateway with another admin configuration; pass next_cursor exactly as returned, or start again without a cursor"
    )]
    Tampered,
}

/// Signs and checks cursors.
#[derive(Clone)]
pub struct CursorSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorSigner(..)")
    }
}

impl CursorSigner {
    /// A signer keyed by the admin token material of `settings`: identical
    /// configuration gives an identical key.
    pub fn new(settings: &AdminSettings) -> Self {
        let mut material = Vec::new();
        for token in &settings.tokens {
            push_part(&mut material, token.as_phc().as_bytes());
        }
        if let Some(env) = &settings.env_token {
            material.push(b'E');
            push_part(&mut material, env.expose().as_bytes());
        }
        let key = blake3::derive_key(KEY_CONTEXT, &material);
        zeroize::Zeroize::zeroize(&mut material);
        Self { key }
    }

    /// The cursor for `position`.
    pub fn sign(&self, position: &Position) -> String {
        // A derived-Serialize enum of strings and numbers cannot fail.
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let mac = blake3::keyed_hash(&self.key, &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac.as_bytes())
        )
    }

    /// The position a cursor carries, if this signer issued it unaltered.
    pub fn verify(&self, presented_cursor: &str) -> Result<Position, CursorError> {
        let (payload, mac) = presented_cursor.split_once('.').ok_or(CursorError::Tampered)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| CursorError::Tampered)?;
        let mac: [u8; 32] = URL_SAFE_NO_PAD
            .decode(mac)
            .ok()
            .and_then(|m| m.try_into().ok())
            .ok_or(CursorError::Tampered)?;
        // `blake3::Hash` compares in constant time.
        if blake3::keyed_hash(&self.key, &payload) != blake3::Hash::from_bytes(mac) {
            return Err(CursorError::Tampered);
        }
        serde_json::from_slice(&payload).map_err(|_| CursorError::Tampered)
    }
}

/// Appends a length-prefixed part, so no two token lists share material.
fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u64).to_le_bytes());
    out.extend_from_slice(part);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyHash, SecretString};

    fn settings(env: &str) -> AdminSettings {
        AdminSettings {
            tokens: vec![KeyHash::from_phc(
                "$argon2id$v=19$m=16,t=2,p=1$c2FsdA$aGFzaA".into(),
            )],
            env_token: Some(SecretString::from(env)),
        }
    }

    fn keys_position() -> Position {
        Position::Keys {
            after: "key_01jd0000000000000000000000".into(),
            owner: Some("acme".into()),
            status: Some(KeyStatus::Active),
        }
    }

    #[test]
    fn round_trip_and_shared_config() {
        let a = CursorSigner::new(&settings("t"));
        let b = CursorSigner::new(&settings("t"));
        let cursor = a.sign(&keys_position());
        assert_eq!(
            b.verify(&cursor),
            Ok(keys_position()),
            "same config, other replica"
        );
        let audit = a.sign(&Position::Audit { after: 42 });
        assert_eq!(a.verify(&audit), Ok(Position::Audit { after: 42 }));
        assert!(
            cursor
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        );
    }

    #[test]
    fn tampering_and_other_configs_are_refused() {
        let signer = CursorSigner::new(&settings("t"));
        let other = CursorSigner::new(&settings("u"));
        let cursor = signer.sign(&keys_position());
        assert_eq!(other.verify(&cursor), Err(CursorError::Tampered));
        let (payload, mac) = cursor.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Position::Keys {
                after: "key_00000000000000000000000000".into(),
                owner: Some("acme".into()),
                status: Some(KeyStatus::Active),
            })
            .unwrap(),
        );
        let mut flipped = mac.as_bytes().to_vec();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        for bad in [
            String::new(),
            "nodot".into(),
            format!("{forged_payload}.{mac}"),
            format!("{payload}.{}", String::from_utf8(flipped).unwrap()),
            format!("{payload}."),
            format!("{payload}.{mac}x"),
            format!("!!.{mac}"),
        ] {
            assert_eq!(signer.verify(&bad), Err(CursorError::Tampered), "{bad}");
        }
    }
}
