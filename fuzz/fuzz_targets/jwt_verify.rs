//! `token::jwt`: access tokens are verified on every request that presents
//! one, so the verifier sees attacker-chosen text.
//!
//! Keys: one HS256, one EdDSA and one ES256 key, each also in a set of its
//! own where it is the signer (to re-issue what it verified).
//!
//! Input byte 0 picks the mode:
//! - even: the rest is a presented token, verified at a fixed `now` with
//!   and without an issuer and audience. It must be refused unless it is
//!   byte for byte what our signer issues for the claims it carries (the
//!   only tokens that verify are ones we signed; ES256 may differ in the
//!   signature's encoding only, as `PrivateKey::verify` documents);
//! - odd: claims built from the input are issued with one of the keys; the
//!   token verifies (when its times are valid at `now`), and every change
//!   of it (the fuzzer picks positions and bytes) is refused with HS256
//!   and EdDSA; with ES256 a changed token that still verifies has the
//!   same header and payload (a second encoding of the signature).
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use keygate::keys::SecretString;
use keygate::token::claims::parse_scope;
use keygate::token::{AccessClaims, Algorithm, Expected, KeySpec, SigningKeys};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{Mode, take, take_str, take_u8};

const HS_SECRET: &str = "fuzz-only-hs256-secret-0123456789abcdef";
const NOW: i64 = 1_795_000_000;

struct Keys {
    /// Every key: `hs` signs, `ed` and `es` verify.
    all: SigningKeys,
    /// Each key alone, as the signer: (kid, set).
    single: Vec<(&'static str, SigningKeys)>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let hs = KeySpec {
            kid: "hs".into(),
            algorithm: Algorithm::Hs256,
            material: SecretString::from(HS_SECRET),
        };
        let ed_pem = ed25519_dalek::SigningKey::from_bytes(&[1; 32])
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .expect("encodes");
        let ed = KeySpec {
            kid: "ed".into(),
            algorithm: Algorithm::EdDsa,
            material: SecretString::new(ed_pem.to_string()),
        };
        let es_pem = p256::ecdsa::SigningKey::from_slice(&[2; 32])
            .expect("a valid scalar")
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .expect("encodes");
        let es = KeySpec {
            kid: "es".into(),
            algorithm: Algorithm::Es256,
            material: SecretString::new(es_pem.to_string()),
        };
        let set = |specs: &[KeySpec]| SigningKeys::new(specs).expect("valid keys");
        Keys {
            all: set(&[hs.clone(), ed.clone(), es.clone()]),
            single: vec![("hs", set(&[hs])), ("ed", set(&[ed])), ("es", set(&[es]))],
        }
    })
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("in range")
}

const EXPECTATIONS: [Expected<'static>; 3] = [
    Expected {
        audience: None,
        issuer: None,
    },
    Expected {
        audience: None,
        issuer: Some("keygate"),
    },
    Expected {
        audience: Some("api"),
        issuer: Some("keygate"),
    },
];

fn kid_of(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some(value.get("kid")?.as_str()?.to_owned())
}

fn signing_input(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(input, _)| input)
}

/// A token that verified must be what our key issues for its claims.
fn check_verified(token: &str, claims: &AccessClaims) {
    let kid = kid_of(token).expect("a verified token names its kid");
    let (_, single) = keys()
        .single
        .iter()
        .find(|(k, _)| *k == kid)
        .expect("a verified token names one of our keys");
    let reissued = single.issue(claims).expect("claims serialise");
    let reissued = reissued.expose();
    if kid == "es" {
        assert_eq!(
            signing_input(reissued),
            signing_input(token),
            "an ES256 token verified"
        );
    } else {
        assert_eq!(
            reissued, token,
            "a token verified that our {kid} key did not issue"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mode) = common::mode(data) else {
        return;
    };
    let keys = keys();
    let mut rest = match mode {
        Mode::Presented(token) => {
            for expected in EXPECTATIONS {
                if let Ok(claims) = keys.all.verify(&token, now(), expected) {
                    check_verified(&token, &claims);
                }
            }
            return;
        }
        Mode::Generated { rest, .. } => rest,
    };

    // Claims from the input.
    let signer = &keys.single[usize::from(take_u8(&mut rest) % 3)];
    let flags = take_u8(&mut rest);
    let exp = i64::from(take_u8(&mut rest) as i8) * 60;
    let iat = i64::from(take_u8(&mut rest) as i8) * 2;
    let scope: BTreeSet<String> = parse_scope(&take_str(&mut rest, 32)).unwrap_or_default();
    let claims = AccessClaims {
        iss: (flags & 1 != 0).then(|| "keygate".to_owned()),
        sub: "key_01jd3m5k7r9t2v4w6x8y0z1a2b".parse().expect("a key id"),
        aud: (flags & 2 != 0).then(|| "api".to_owned()),
        exp: now() + Duration::seconds(exp),
        nbf: (flags & 4 != 0).then(|| now() + Duration::seconds(iat / 2)),
        iat: now() + Duration::seconds(iat),
        jti: take_str(&mut rest, 32),
        sid: "ses_01jd3m5k7r9t2v4w6x8y0z1a2c".parse().expect("a session id"),
        scope,
    };
    let token = signer.1.issue(&claims).expect("claims serialise");
    let token = token.expose();
    let expected = Expected {
        audience: claims.aud.as_deref(),
        issuer: claims.iss.as_deref(),
    };
    let valid_now = claims.exp > now()
        && claims.nbf.map_or(claims.iat, |nbf| nbf.max(claims.iat)) <= now() + Duration::seconds(30);
    let verified = keys.all.verify(token, now(), expected);
    assert_eq!(verified.is_ok(), valid_now, "{verified:?}");
    if let Ok(back) = verified {
        assert_eq!(back, claims, "verify gives back the claims issued");
    }

    // Change it: up to four (position, byte) edits.
    let mut changed = token.as_bytes().to_vec();
    for _ in 0..4 {
        let edit = take(&mut rest, 3);
        if edit.len() < 3 {
            break;
        }
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % (changed.len() + 1);
        match edit[2] {
            // Delete a byte, or insert one (the low bits of the position
            // byte pick it), or overwrite.
            0 if at < changed.len() => {
                changed.remove(at);
            }
            1 => changed.insert(at, edit[0]),
            b if at < changed.len() => changed[at] = b,
            _ => {}
        }
    }
    let changed = String::from_utf8_lossy(&changed);
    if changed == token {
        return;
    }
    if let Ok(claims) = keys.all.verify(&changed, now(), expected) {
        if signer.0 == "es" {
            assert_eq!(
                signing_input(&changed),
                signing_input(token),
                "a changed ES256 token verified"
            );
        } else {
            panic!(
                "a changed {} token verifies: {changed:?} (issued {token:?}): {claims:?}",
                signer.0
            );
        }
    }
});
