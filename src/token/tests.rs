//! Tests of the token module as `proxy` and `auth` will use it: issue and
//! verify for every algorithm, rotation, every kind of bad token, the JWKS
//! document, scope narrowing, refresh rotation and reuse detection, and
//! that no secret reaches a `Debug` string or an error message.
//!
//! Keys are generated here from fixed seeds (no key files in the tree).

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::jwt::{CLOCK_SKEW_SECS, MAX_TOKEN_LEN};
use super::*;
use crate::keys::{KeyId, SecretString};

const HS_SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const OTHER_HS_SECRET: &str = "another-test-hs256-secret-0123456789abcdef";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap()
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hs(kid: &str, secret: &str) -> KeySpec {
    KeySpec {
        kid: kid.to_owned(),
        algorithm: Algorithm::Hs256,
        material: SecretString::from(secret),
    }
}

fn ed_signing_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

fn ed(kid: &str, seed: u8) -> KeySpec {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let pem = ed_signing_key(seed)
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    KeySpec {
        kid: kid.to_owned(),
        algorithm: Algorithm::EdDsa,
        material: SecretString::new(pem.to_string()),
    }
}

fn es_signing_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
}

fn es(kid: &str, seed: u8) -> KeySpec {
    use p256::pkcs8::EncodePrivateKey as _;
    let pem = es_signing_key(seed)
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    KeySpec {
        kid: kid.to_owned(),
        algorithm: Algorithm::Es256,
        material: SecretString::new(pem.to_string()),
    }
}

fn key_set(specs: &[KeySpec]) -> SigningKeys {
    SigningKeys::new(specs).unwrap()
}

fn key_id() -> KeyId {
    "key_01jd3m5k7r9t2v4w6x8y0z1a2b".parse().unwrap()
}

fn scopes(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn claims() -> AccessClaims {
    AccessClaims {
        iss: Some("keygate".into()),
        sub: key_id(),
        aud: None,
        exp: now() + Duration::hours(2),
        nbf: None,
        iat: now(),
        jti: "jti-1".into(),
        sid: SessionId::generate(now()),
        scope: scopes(&["read", "write"]),
    }
}

const EXPECT: Expected<'static> = Expected {
    audience: None,
    issuer: Some("keygate"),
};

/// A compact JWS of `header` and `payload` (JSON values) with the signature
/// `sign` makes over the signing input.
fn forge(header: &Value, payload: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(payload.to_string()));
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(signature))
}

fn hmac(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let secret = secret.to_vec();
    move |input| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }
}

fn claims_json(claims: &AccessClaims) -> Value {
    serde_json::to_value(claims).unwrap()
}

fn header(token: &str) -> Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[test]
fn every_algorithm_round_trips() {
    for spec in [hs("hs", HS_SECRET), ed("ed", 1), es("es", 2)] {
        let keys = key_set(std::slice::from_ref(&spec));
        let claims = claims();
        let token = keys.issue(&claims).unwrap();
        assert_eq!(
            header(token.expose()),
            json!({"alg": spec.algorithm.as_str(), "typ": "JWT", "kid": spec.kid.as_str()}),
        );
        assert_eq!(
            keys.verify(token.expose(), now(), EXPECT),
            Ok(claims.clone()),
            "{}",
            spec.kid
        );
        // Re-signing the same claims gives the same token (ES256 nonces per
        // RFC 6979): what a repeated login relies on.
        assert_eq!(
            keys.issue(&claims).unwrap().expose(),
            token.expose(),
            "{}",
            spec.kid
        );
    }
}

#[test]
fn claims_serialise_as_registered_claims() {
    let mut claims = claims();
    claims.aud = Some("api".into());
    let value = claims_json(&claims);
    assert_eq!(value["scope"], "read write");
    assert_eq!(value["exp"], now().timestamp() + 7200);
    assert_eq!(value["iat"], now().timestamp());
    assert_eq!(value["sub"], key_id().as_str());
    assert_eq!(value["aud"], "api");
    assert!(value.get("nbf").is_none());

    claims.scope.clear();
    claims.aud = None;
    let value = claims_json(&claims);
    assert!(value.get("scope").is_none(), "{value}");
    assert!(value.get("aud").is_none(), "{value}");
    let back: AccessClaims = serde_json::from_value(value).unwrap();
    assert_eq!(back, claims);
}

#[test]
fn rotation_old_keys_verify_and_the_first_signs() {
    let before = key_set(&[ed("ed-2025", 1)]);
    let old_token = before.issue(&claims()).unwrap();

    let after = key_set(&[es("es-2026", 2), ed("ed-2025", 1), hs("hs-legacy", HS_SECRET)]);
    assert_eq!(after.signing_kid(), "es-2026");
    assert_eq!(after.signing_algorithm(), Algorithm::Es256);
    assert!(after.verify(old_token.expose(), now(), EXPECT).is_ok());

    let new_token = after.issue(&claims()).unwrap();
    assert_eq!(header(new_token.expose())["kid"], "es-2026");
    assert!(after.verify(new_token.expose(), now(), EXPECT).is_ok());
    // Replicas still on the old set refuse what they cannot know.
    assert_eq!(
        before.verify(new_token.expose(), now(), EXPECT),
        Err(TokenError::UnknownKid("es-2026".into()))
    );
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let keys = key_set(&[hs("hs", HS_SECRET), ed("ed", 1), es("es", 2)]);
    let good = claims_json(&claims());
    let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": "hs"});
    let valid = forge(&hs_header, &good, hmac(HS_SECRET.as_bytes()));
    assert!(
        keys.verify(&valid, now(), EXPECT).is_ok(),
        "the baseline must verify"
    );
    let mut parts = valid.split('.');
    let (h, p, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );

    let with = |edit: fn(&mut Value, i64)| {
        let mut payload = good.clone();
        edit(&mut payload, now().timestamp());
        forge(&hs_header, &payload, hmac(HS_SECRET.as_bytes()))
    };
    let signed_header = |header: Value| forge(&header, &good, hmac(HS_SECRET.as_bytes()));
    let ed_public = ed_signing_key(1).verifying_key().to_bytes();
    let es_signature_of = |input: &[u8]| {
        use p256::ecdsa::signature::Signer as _;
        let signature: p256::ecdsa::Signature = es_signing_key(3).sign(input);
        signature.to_bytes().to_vec()
    };

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none, empty signature",
            format!(
                "{}.{p}.",
                b64(json!({"alg": "none", "typ": "JWT", "kid": "hs"}).to_string())
            ),
            "alg_none",
        ),
        (
            "alg NONE, no kid",
            format!("{}.{p}.", b64(json!({"alg": "NONE", "typ": "JWT"}).to_string())),
            "alg_none",
        ),
        (
            "HS256 tag keyed with the Ed25519 public key, for the EdDSA kid",
            forge(
                &json!({"alg": "HS256", "typ": "JWT", "kid": "ed"}),
                &good,
                hmac(&ed_public),
            ),
            "algorithm_mismatch",
        ),
        (
            "RS256 header on an HS256 kid",
            signed_header(json!({"alg": "RS256", "typ": "JWT", "kid": "hs"})),
            "algorithm_mismatch",
        ),
        (
            "EdDSA header on an ES256 kid",
            forge(&json!({"alg": "EdDSA", "typ": "JWT", "kid": "es"}), &good, |i| {
                use ed25519_dalek::Signer as _;
                ed_signing_key(1).sign(i).to_bytes().to_vec()
            }),
            "algorithm_mismatch",
        ),
        (
            "signed by another HS256 secret under our kid",
            forge(&hs_header, &good, hmac(OTHER_HS_SECRET.as_bytes())),
            "bad_signature",
        ),
        (
            "signed by another P-256 key under our kid",
            forge(
                &json!({"alg": "ES256", "typ": "JWT", "kid": "es"}),
                &good,
                es_signature_of,
            ),
            "bad_signature",
        ),
        (
            "signed by a key not in the set",
            forge(
                &json!({"alg": "HS256", "typ": "JWT", "kid": "stranger"}),
                &good,
                hmac(OTHER_HS_SECRET.as_bytes()),
            ),
            "unknown_kid",
        ),
        (
            "no kid",
            signed_header(json!({"alg": "HS256", "typ": "JWT"})),
            "missing_kid",
        ),
        (
            "tampered payload, original signature",
            {
                let mut widened = good.clone();
                widened["scope"] = json!("read write admin");
                format!("{h}.{}.{s}", b64(widened.to_string()))
            },
            "bad_signature",
        ),
        (
            "tampered signature",
            format!(
                "{h}.{p}.{}{}",
                if s.starts_with('A') { "B" } else { "A" },
                &s[1..]
            ),
            "bad_signature",
        ),
        ("empty signature", format!("{h}.{p}."), "bad_signature"),
        ("expired at now", with(|c, t| c["exp"] = json!(t)), "expired"),
        (
            "expired a second ago",
            with(|c, t| c["exp"] = json!(t - 1)),
            "expired",
        ),
        (
            "not before in an hour",
            with(|c, t| c["nbf"] = json!(t + 3600)),
            "not_yet_valid",
        ),
        (
            "issued in an hour",
            with(|c, t| c["iat"] = json!(t + 3600)),
            "not_yet_valid",
        ),
        (
            "audience where none is expected",
            with(|c, _| c["aud"] = json!("api")),
            "wrong_audience",
        ),
        (
            "another issuer",
            with(|c, _| c["iss"] = json!("someone-else")),
            "wrong_issuer",
        ),
        ("null issuer", with(|c, _| c["iss"] = Value::Null), "wrong_issuer"),
        (
            "crit header",
            signed_header(json!({"alg": "HS256", "typ": "JWT", "kid": "hs", "crit": ["exp"]})),
            "critical_header",
        ),
        (
            "typ at+jwt",
            signed_header(json!({"alg": "HS256", "typ": "at+jwt", "kid": "hs"})),
            "wrong_type",
        ),
        (
            "no typ",
            signed_header(json!({"alg": "HS256", "kid": "hs"})),
            "wrong_type",
        ),
        ("two parts", format!("{h}.{p}"), "malformed"),
        ("four parts", format!("{valid}.{s}"), "malformed"),
        ("empty", String::new(), "malformed"),
        ("header not base64url", format!("@@@.{p}.{s}"), "malformed"),
        ("padded base64", format!("{h}=.{p}.{s}"), "malformed"),
        (
            "header not JSON",
            format!("{}.{p}.{s}", b64("not json")),
            "malformed",
        ),
        (
            "duplicate alg member",
            format!(
                "{}.{p}.{s}",
                b64(r#"{"alg":"HS256","alg":"none","typ":"JWT","kid":"hs"}"#)
            ),
            "malformed",
        ),
        (
            "payload not JSON, correctly signed",
            {
                let input = format!("{h}.{}", b64("not json"));
                let sig = hmac(HS_SECRET.as_bytes())(input.as_bytes());
                format!("{input}.{}", b64(sig))
            },
            "malformed",
        ),
        (
            "payload with an array audience",
            with(|c, _| c["aud"] = json!(["api"])),
            "malformed",
        ),
        (
            "payload with a float exp",
            with(|c, _| c["exp"] = json!(1.5e9)),
            "malformed",
        ),
        ("huge", "a".repeat(MAX_TOKEN_LEN + 1), "too_long"),
    ];
    for (name, token, reason) in cases {
        let result = keys.verify(&token, now(), EXPECT);
        let err = result.expect_err(name);
        assert_eq!(err.reason(), reason, "{name}: {err}");
    }
}

#[test]
fn header_values_reach_errors_only_as_printable_copies() {
    let keys = key_set(&[hs("hs", HS_SECRET)]);
    let evil = json!({"alg": "HS256", "typ": "JWT", "kid": "evil\nlevel=error forged"});
    let token = forge(&evil, &claims_json(&claims()), hmac(HS_SECRET.as_bytes()));
    assert_eq!(
        keys.verify(&token, now(), EXPECT),
        Err(TokenError::UnknownKid("evil?level=error forged".into()))
    );
}

#[test]
fn small_clock_skew_is_tolerated_on_iat_and_nbf_only() {
    let keys = key_set(&[hs("hs", HS_SECRET)]);
    let mut ahead = claims();
    ahead.iat = now() + Duration::seconds(CLOCK_SKEW_SECS);
    ahead.nbf = Some(now() + Duration::seconds(CLOCK_SKEW_SECS));
    let token = keys.issue(&ahead).unwrap();
    assert!(keys.verify(token.expose(), now(), EXPECT).is_ok());

    let mut too_far = claims();
    too_far.nbf = Some(now() + Duration::seconds(CLOCK_SKEW_SECS + 1));
    let token = keys.issue(&too_far).unwrap();
    assert!(matches!(
        keys.verify(token.expose(), now(), EXPECT),
        Err(TokenError::NotYetValid { .. })
    ));

    // exp has no leeway: valid one second before, refused at the instant.
    let token = keys.issue(&claims()).unwrap();
    let exp = claims().exp;
    assert!(
        keys.verify(token.expose(), exp - Duration::seconds(1), EXPECT)
            .is_ok()
    );
    assert_eq!(
        keys.verify(token.expose(), exp, EXPECT),
        Err(TokenError::Expired { exp })
    );
}

#[test]
fn audience_must_match_exactly() {
    let keys = key_set(&[ed("ed", 1)]);
    let api = Expected {
        audience: Some("api"),
        issuer: None,
    };
    let cases = [
        (Some("api"), api, true),
        (Some("other"), api, false),
        (None, api, false),
        (Some("api"), EXPECT, false),
        (None, EXPECT, true),
    ];
    for (aud, expected, ok) in cases {
        let mut c = claims();
        c.aud = aud.map(str::to_owned);
        let token = keys.issue(&c).unwrap();
        let result = keys.verify(token.expose(), now(), expected);
        assert_eq!(result.is_ok(), ok, "aud {aud:?} against {expected:?}: {result:?}");
        if !ok {
            assert_eq!(result, Err(TokenError::WrongAudience));
        }
    }
}

#[test]
fn jwks_publishes_public_keys_only() {
    let keys = key_set(&[hs("hs", HS_SECRET), ed("ed", 1), es("es", 2)]);
    assert!(keys.has_public_keys());
    let jwks = keys.jwks();
    let text = jwks.to_string();
    assert!(
        !text.contains(HS_SECRET) && !text.contains(&b64(HS_SECRET)),
        "{text}"
    );
    let members = jwks["keys"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{jwks}");
    for member in members {
        assert!(
            member.get("d").is_none() && member.get("k").is_none(),
            "private part: {member}"
        );
        assert_eq!(member["use"], "sig");
    }

    let okp = &members[0];
    assert_eq!(
        (okp["kty"].as_str(), okp["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(
        (okp["kid"].as_str(), okp["alg"].as_str()),
        (Some("ed"), Some("EdDSA"))
    );
    let x = URL_SAFE_NO_PAD.decode(okp["x"].as_str().unwrap()).unwrap();
    assert_eq!(x.len(), 32);
    assert_eq!(x, ed_signing_key(1).verifying_key().to_bytes());

    let ec = &members[1];
    assert_eq!(
        (ec["kty"].as_str(), ec["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(
        (ec["kid"].as_str(), ec["alg"].as_str()),
        (Some("es"), Some("ES256"))
    );
    let x = URL_SAFE_NO_PAD.decode(ec["x"].as_str().unwrap()).unwrap();
    let y = URL_SAFE_NO_PAD.decode(ec["y"].as_str().unwrap()).unwrap();
    assert_eq!((x.len(), y.len()), (32, 32));

    // An upstream holding only the JWKS verifies tokens itself.
    let es_only = key_set(&[es("es", 2)]);
    let token = es_only.issue(&claims()).unwrap();
    let (input, signature) = token.expose().rsplit_once('.').unwrap();
    let point = p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
    let public = p256::ecdsa::VerifyingKey::from_encoded_point(&point).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    use p256::ecdsa::signature::Verifier as _;
    assert!(public.verify(input.as_bytes(), &signature).is_ok());

    let hs_only = key_set(&[hs("hs", HS_SECRET)]);
    assert!(!hs_only.has_public_keys());
    assert_eq!(hs_only.jwks(), json!({"keys": []}));
}

#[test]
fn unusable_key_specs_are_refused_without_echoing_material() {
    let mut wrong_curve = ed("ed-as-es", 1);
    wrong_curve.algorithm = Algorithm::Es256;
    let mut p256_as_ed = es("es-as-ed", 2);
    p256_as_ed.algorithm = Algorithm::EdDsa;
    let not_pem = KeySpec {
        kid: "garbage".into(),
        algorithm: Algorithm::EdDsa,
        material: SecretString::from(
            "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n",
        ),
    };
    type Check = fn(&KeyError) -> bool;
    let cases: Vec<(&str, Vec<KeySpec>, Check)> = vec![
        ("empty list", vec![], |e| *e == KeyError::NoKeys),
        ("short secret", vec![hs("hs", "too-short-secret")], |e| {
            matches!(e, KeyError::ShortSecret { len: 16, .. })
        }),
        ("Ed25519 PEM for ES256", vec![wrong_curve], |e| {
            matches!(e, KeyError::BadPrivateKey { .. })
        }),
        ("P-256 PEM for EdDSA", vec![p256_as_ed], |e| {
            matches!(e, KeyError::BadPrivateKey { .. })
        }),
        ("not PEM", vec![not_pem], |e| {
            matches!(e, KeyError::BadPrivateKey { .. })
        }),
        (
            "HMAC secret given as EdDSA",
            vec![{
                let mut s = hs("x", HS_SECRET);
                s.algorithm = Algorithm::EdDsa;
                s
            }],
            |e| matches!(e, KeyError::BadPrivateKey { .. }),
        ),
        ("duplicate kid", vec![hs("same", HS_SECRET), ed("same", 1)], |e| {
            *e == KeyError::DuplicateKid("same".into())
        }),
        ("empty kid", vec![hs("", HS_SECRET)], |e| {
            matches!(e, KeyError::BadKid(_))
        }),
        ("kid with a space", vec![hs("a b", HS_SECRET)], |e| {
            matches!(e, KeyError::BadKid(_))
        }),
        ("kid too long", vec![hs(&"k".repeat(65), HS_SECRET)], |e| {
            matches!(e, KeyError::BadKid(_))
        }),
    ];
    for (name, specs, check) in cases {
        let err = SigningKeys::new(&specs).expect_err(name);
        assert!(check(&err), "{name}: {err:?}");
        let message = err.to_string();
        assert!(
            !message.contains("BEGIN") && !message.contains(HS_SECRET),
            "{name}: {message}"
        );
    }
    assert_eq!("HS256".parse::<Algorithm>(), Ok(Algorithm::Hs256));
    assert!("hs256".parse::<Algorithm>().is_err());
    assert!("none".parse::<Algorithm>().is_err());
}

#[test]
fn a_bare_secret_gets_a_stable_derived_kid() {
    let a = KeySpec::hs256(SecretString::from(HS_SECRET));
    let b = KeySpec::hs256(SecretString::from(HS_SECRET));
    let c = KeySpec::hs256(SecretString::from(OTHER_HS_SECRET));
    assert_eq!(a.kid, b.kid);
    assert_ne!(a.kid, c.kid);
    assert!(a.kid.starts_with("hs256-") && a.kid.len() == 18, "{}", a.kid);
    assert!(SigningKeys::new(&[a, c]).is_ok());
}

#[test]
fn debug_never_prints_secrets() {
    let specs = [hs("hs", HS_SECRET), ed("ed", 1), es("es", 2)];
    let keys = key_set(&specs);
    let token = keys.issue(&claims()).unwrap();
    let mut rng = rng();
    let login = session_policy().login(None, login_request(), now(), &mut rng);
    let refresh = login.refresh_token.expose().to_owned();
    let presented: PresentedRefreshToken = refresh.parse().unwrap();

    let printed = format!(
        "{specs:?} {keys:?} {token:?} {login:?} {presented:?} {:?}",
        login.session.refresh_digest
    );
    let secret_hex = &refresh[refresh.len() - 64..];
    for needle in [HS_SECRET, "PRIVATE KEY", token.expose(), secret_hex, &refresh] {
        assert!(!printed.contains(needle), "Debug leaked {needle:.20}…: {printed}");
    }
    assert!(printed.contains("redacted"));
}

#[test]
fn scope_narrowing_only_narrows() {
    let granted = scopes(&["orders:read", "orders:write", "read"]);
    let cases = [
        (None, Ok(granted.clone())),
        (Some(""), Ok(granted.clone())),
        (Some("   "), Ok(granted.clone())),
        (Some("read"), Ok(scopes(&["read"]))),
        (Some("orders:write  read"), Ok(scopes(&["orders:write", "read"]))),
        (Some("read read"), Ok(scopes(&["read"]))),
        (Some("admin"), Err(ClaimsError::ScopeNotGranted("admin".into()))),
        (
            Some("read orders:*"),
            Err(ClaimsError::ScopeNotGranted("orders:*".into())),
        ),
        (Some("re\"ad"), Err(ClaimsError::BadScope("re\"ad".into()))),
        (
            Some("read\twrite"),
            Err(ClaimsError::BadScope("read?write".into())),
        ),
    ];
    for (requested, expected) in cases {
        assert_eq!(narrow_scopes(&granted, requested), expected, "{requested:?}");
    }
    assert_eq!(
        effective_scopes(&scopes(&["read", "write"]), &scopes(&["read", "delete"])),
        scopes(&["read"])
    );
}

fn session_policy() -> SessionPolicy {
    SessionPolicy {
        access_ttl: Duration::hours(2),
        refresh_ttl: Duration::days(30),
        issuer: "keygate".into(),
        audience: None,
    }
}

fn login_request() -> LoginRequest {
    LoginRequest {
        key_id: key_id(),
        client_session: Some("laptop".into()),
        scopes: scopes(&["read", "write"]),
    }
}

fn redeem(session: &Session, token: &RefreshToken, at: DateTime<Utc>) -> Result<Redemption, RefreshError> {
    let presented: PresentedRefreshToken = token.expose().parse().unwrap();
    session_policy().redeem(session, &presented, &scopes(&["read", "write"]), at, &mut rng())
}

fn rotated(redemption: Result<Redemption, RefreshError>) -> Rotation {
    match redemption {
        Ok(Redemption::Rotated(rotation)) => *rotation,
        other => panic!("expected a rotation, got {other:?}"),
    }
}

#[test]
fn refresh_tokens_have_the_documented_format() {
    let login = session_policy().login(None, login_request(), now(), &mut rng());
    let token = login.refresh_token.expose();
    let body = token.strip_prefix("kgr_").unwrap();
    let parts: Vec<&str> = body.split('_').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert_eq!(format!("ses_{}", parts[0]), login.session.id.as_str());
    assert_eq!(parts[1], "0");
    assert_eq!(parts[2].len(), 64);
    assert!(
        parts[2]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert!(token.len() <= super::refresh::MAX_REFRESH_TOKEN_LEN);

    let presented: PresentedRefreshToken = token.parse().unwrap();
    assert_eq!(presented.session_id(), &login.session.id);
    assert_eq!(presented.generation(), 0);

    // Two logins never share secrets.
    let other = session_policy().login(None, login_request(), now(), &mut StdRng::seed_from_u64(8));
    assert_ne!(
        &other.refresh_token.expose()[token.len() - 64..],
        &token[token.len() - 64..]
    );

    let ulid = parts[0];
    let hex = parts[2];
    let malformed = [
        String::new(),
        format!("kgx_{ulid}_0_{hex}"),
        format!("{ulid}_0_{hex}"),
        format!("kgr_{}_0_{hex}", ulid.to_uppercase()),
        format!("kgr_{}_0_{hex}", &ulid[1..]),
        format!("kgr_{ulid}_00_{hex}"),
        format!("kgr_{ulid}_01_{hex}"),
        format!("kgr_{ulid}_+1_{hex}"),
        format!("kgr_{ulid}__{hex}"),
        format!("kgr_{ulid}_99999999999999999999_{hex}"),
        format!("kgr_{ulid}_0_{}", hex.to_uppercase()),
        format!("kgr_{ulid}_0_{}", &hex[2..]),
        format!("kgr_{ulid}_0_{hex}00"),
        format!("kgr_{ulid}_0_{hex}_x"),
        format!("kgr_{ulid}_0_{}", "g".repeat(64)),
        format!("kgr_{ulid}_0_{hex}{}", "0".repeat(100)),
    ];
    for text in malformed {
        assert_eq!(
            text.parse::<PresentedRefreshToken>().err(),
            Some(RefreshError::Malformed),
            "{text}"
        );
    }
}

#[test]
fn login_opens_a_session_and_mints_matching_tokens() {
    let login = session_policy().login(None, login_request(), now(), &mut rng());
    let session = &login.session;
    assert_eq!(login.previous_generation, None);
    assert_eq!(login.replaces, None);
    assert!(!login.reused_access);
    assert_eq!(session.refresh_generation, 0);
    assert_eq!(session.expires_at, now() + Duration::days(30));
    assert_eq!(session.state_at(now()), SessionState::Active);
    assert_eq!(login.access.sid, session.id);
    assert_eq!(login.access.sub, key_id());
    assert_eq!(login.access.exp, now() + Duration::hours(2));
    assert_eq!(login.access.jti, session.access_jti);
    assert_eq!(login.access.scope, scopes(&["read", "write"]));
    assert_eq!(session.admits(&login.access), Ok(()));
}

#[test]
fn refresh_rotates_and_spent_tokens_revoke_the_session() {
    let login = session_policy().login(None, login_request(), now(), &mut rng());
    let later = now() + Duration::hours(3);

    let first = rotated(redeem(&login.session, &login.refresh_token, later));
    assert_eq!(first.previous_generation, 0);
    assert_eq!(first.session.refresh_generation, 1);
    assert_eq!(first.session.family_digest, login.session.family_digest);
    assert_ne!(first.session.refresh_digest, login.session.refresh_digest);
    assert_eq!(first.session.expires_at, later + Duration::days(30));
    assert_eq!(first.access.iat, later);
    assert_ne!(first.access.jti, login.access.jti);
    assert_ne!(first.refresh_token.expose(), login.refresh_token.expose());

    // Presenting the spent token again is reuse: the session is revoked.
    match redeem(&first.session, &login.refresh_token, later) {
        Ok(Redemption::ReuseDetected {
            revoked,
            presented_generation,
        }) => {
            assert_eq!(presented_generation, 0);
            assert_eq!(revoked.revoked_at, Some(later));
            assert_eq!(revoked.revoked_reason, Some(RevokeReason::RefreshReuse));
            assert_eq!(revoked.state_at(later), SessionState::Revoked);
            // Now even the current token is refused, and so are access tokens.
            assert_eq!(
                redeem(&revoked, &first.refresh_token, later).err(),
                Some(RefreshError::Revoked {
                    session_id: revoked.id.clone()
                })
            );
            assert!(matches!(
                revoked.admits(&first.access),
                Err(TokenError::SessionRevoked { .. })
            ));
        }
        other => panic!("expected reuse, got {other:?}"),
    }
}

#[test]
fn reuse_is_detected_at_any_depth() {
    let login = session_policy().login(None, login_request(), now(), &mut rng());
    let mut session = login.session.clone();
    let mut token = login.refresh_token.clone();
    for _ in 0..3 {
        let rotation = rotated(redeem(&session, &token, now()));
        session = rotation.session;
        token = rotation.refresh_token;
    }
    assert_eq!(session.refresh_generation, 3);
    assert!(matches!(
        redeem(&session, &login.refresh_token, now()),
        Ok(Redemption::ReuseDetected {
            presented_generation: 0,
            ..
        })
    ));
    // A family member who edits the generation of a spent token is caught too.
    let edited = login.refresh_token.expose().replacen("_0_", "_3_", 1);
    let presented: PresentedRefreshToken = edited.parse().unwrap();
    let outcome = session_policy().redeem(&session, &presented, &scopes(&["read"]), now(), &mut rng());
    assert!(
        matches!(outcome, Ok(Redemption::ReuseDetected { .. })),
        "{outcome:?}"
    );
}

#[test]
fn refresh_refusals_change_nothing() {
    let login = session_policy().login(None, login_request(), now(), &mut rng());
    let session = &login.session;
    let ulid = &session.id.as_str()[4..];

    // Someone who knows only the session id (the sid claim) cannot revoke it.
    let forged: PresentedRefreshToken = format!("kgr_{ulid}_0_{}", "ab".repeat(32)).parse().unwrap();
    let outcome = session_policy().redeem(session, &forged, &scopes(&["read"]), now(), &mut rng());
    assert_eq!(
        outcome.err(),
        Some(RefreshError::NotInFamily {
            session_id: session.id.clone()
        })
    );

    // A token of another session presented against this row.
    let other = session_policy().login(None, login_request(), now(), &mut StdRng::seed_from_u64(9));
    assert!(matches!(
        redeem(session, &other.refresh_token, now()),
        Err(RefreshError::NotInFamily { .. })
    ));

    // Expired: the refresh lifetime has passed.
    let expiry = session.expires_at;
    assert_eq!(
        redeem(session, &login.refresh_token, expiry).err(),
        Some(RefreshError::Expired {
            session_id: session.id.clone()
        })
    );

    // Revoked by an admin.
    let mut revoked = session.clone();
    revoked.revoke(now(), RevokeReason::Admin);
    revoked.revoke(now() + Duration::hours(1), RevokeReason::RefreshReuse);
    assert_eq!(
        (revoked.revoked_at, revoked.revoked_reason),
        (Some(now()), Some(RevokeReason::Admin))
    );
    assert!(matches!(
        redeem(&revoked, &login.refresh_token, now()),
        Err(RefreshError::Revoked { .. })
    ));
}

#[test]
fn a_repeated_login_returns_the_same_access_token() {
    let tokens = Tokens::new(&TokenSettings::new(vec![es("es", 2)])).unwrap();
    let policy = tokens.policy();
    let first = policy.login(None, login_request(), now(), &mut rng());
    let soon = now() + Duration::minutes(30);
    let again = policy.login(
        Some(&first.session),
        login_request(),
        soon,
        &mut StdRng::seed_from_u64(8),
    );

    assert!(again.reused_access);
    assert_eq!(again.session.id, first.session.id);
    assert_eq!(again.previous_generation, Some(0));
    assert_eq!(again.session.refresh_generation, 1);
    assert_eq!(
        tokens.sign(&again.access).unwrap().expose(),
        tokens.sign(&first.access).unwrap().expose()
    );
    assert_eq!(Tokens::expires_in(&again.access, soon), 90 * 60);

    // The login started a new refresh family: the old refresh token is
    // refused, but not as reuse (presenting the API key is no theft).
    assert!(matches!(
        redeem(&again.session, &first.refresh_token, soon),
        Err(RefreshError::NotInFamily { .. })
    ));
    assert!(matches!(
        redeem(&again.session, &again.refresh_token, soon),
        Ok(Redemption::Rotated(_))
    ));

    // Close to expiry, or with other scopes, a new access token.
    let late = first.access.exp - Duration::seconds(30);
    let near_expiry = policy.login(
        Some(&first.session),
        login_request(),
        late,
        &mut StdRng::seed_from_u64(10),
    );
    assert!(!near_expiry.reused_access);
    assert_ne!(near_expiry.access.jti, first.access.jti);
    assert_eq!(near_expiry.session.id, first.session.id);

    let mut narrower = login_request();
    narrower.scopes = scopes(&["read"]);
    let narrowed = policy.login(Some(&first.session), narrower, soon, &mut rng());
    assert!(!narrowed.reused_access);
    assert_eq!(narrowed.access.scope, scopes(&["read"]));
}

#[test]
fn login_replaces_a_revoked_or_expired_session() {
    let policy = session_policy();
    let first = policy.login(None, login_request(), now(), &mut rng());
    let mut revoked = first.session.clone();
    revoked.revoke(now(), RevokeReason::Admin);
    let expired_at = first.session.expires_at + Duration::seconds(1);
    for (existing, at) in [(&revoked, now()), (&first.session, expired_at)] {
        let login = policy.login(Some(existing), login_request(), at, &mut rng());
        assert_ne!(login.session.id, first.session.id);
        assert_eq!(login.replaces, Some(first.session.id.clone()));
        assert_eq!(login.previous_generation, None);
        assert_eq!(login.session.state_at(at), SessionState::Active);
    }
}

#[test]
fn access_tokens_never_outlive_their_refresh_token() {
    let mut policy = session_policy();
    policy.refresh_ttl = Duration::minutes(10);
    let login = policy.login(None, login_request(), now(), &mut rng());
    assert_eq!(login.access.exp, now() + Duration::minutes(10));
}

#[test]
fn sessions_admit_only_their_own_tokens() {
    let login = session_policy().login(None, login_request(), now(), &mut rng());
    let mut other_key = login.access.clone();
    other_key.sub = "key_01jd3m5k7r9t2v4w6x8y0z1a2c".parse().unwrap();
    assert_eq!(login.session.admits(&other_key), Err(TokenError::SessionMismatch));
    let mut other_session = login.access.clone();
    other_session.sid = SessionId::generate(now());
    assert_eq!(
        login.session.admits(&other_session),
        Err(TokenError::SessionMismatch)
    );
}

#[test]
fn tokens_checks_settings_and_verifies_with_them() {
    let mut settings = TokenSettings::new(vec![hs("hs", HS_SECRET)]);
    settings.audience = Some("orders-api".into());
    let tokens = Tokens::new(&settings).unwrap();
    let login = tokens.policy().login(None, login_request(), now(), &mut rng());
    assert_eq!(login.access.aud.as_deref(), Some("orders-api"));
    assert_eq!(login.access.iss.as_deref(), Some("keygate"));
    let token = tokens.sign(&login.access).unwrap();
    assert_eq!(tokens.verify(token.expose(), now()), Ok(login.access.clone()));

    // A gateway with another audience or issuer refuses it.
    let mut elsewhere = settings.clone();
    elsewhere.audience = Some("billing-api".into());
    let err = Tokens::new(&elsewhere).unwrap().verify(token.expose(), now());
    assert_eq!(err, Err(TokenError::WrongAudience));
    let mut other_issuer = settings.clone();
    other_issuer.issuer = "gateway-2".into();
    let err = Tokens::new(&other_issuer).unwrap().verify(token.expose(), now());
    assert_eq!(err, Err(TokenError::WrongIssuer));

    type Edit = fn(&mut TokenSettings);
    let bad: [(&str, Edit); 4] = [
        ("access_ttl", |s: &mut TokenSettings| {
            s.access_ttl = std::time::Duration::ZERO
        }),
        ("refresh_ttl", |s: &mut TokenSettings| {
            s.refresh_ttl = TokenSettings::MAX_TTL * 2
        }),
        ("issuer", |s: &mut TokenSettings| s.issuer.clear()),
        ("audience", |s: &mut TokenSettings| {
            s.audience = Some(String::new())
        }),
    ];
    for (field, edit) in bad {
        let mut s = settings.clone();
        edit(&mut s);
        assert!(
            matches!(Tokens::new(&s), Err(TokenConfigError::InvalidSetting { field: f, .. }) if f == field),
            "{field}"
        );
    }
    assert!(matches!(
        Tokens::new(&TokenSettings::new(vec![])),
        Err(TokenConfigError::Key(KeyError::NoKeys))
    ));
}

/// Issue 18: `now` with a fraction of a second made a fresh token report
/// one second less than it was issued for (7199 for the default 2 h, 1 for
/// `access_ttl = "2s"`), while the JWT's `exp - iat` was right.
#[test]
fn expires_in_reports_the_lifetime_issued() {
    let mut settings = TokenSettings::new(vec![hs("hs", HS_SECRET)]);
    for (ttl, want) in [
        (std::time::Duration::from_secs(7200), 7200),
        (std::time::Duration::from_secs(2), 2),
    ] {
        settings.access_ttl = ttl;
        let tokens = Tokens::new(&settings).unwrap();
        for fraction_ms in [0, 1, 500, 999] {
            let at = now() + Duration::milliseconds(fraction_ms);
            let login = tokens.policy().login(None, login_request(), at, &mut rng());
            let claims = &login.access;
            assert_eq!((claims.exp - claims.iat).num_seconds(), want);
            assert_eq!(
                Tokens::expires_in(claims, at),
                u64::try_from(want).unwrap(),
                "{fraction_ms} ms"
            );
            // Later in the token's life: what is left, counted the same way.
            let later = at + Duration::seconds(1);
            assert_eq!(
                Tokens::expires_in(claims, later),
                u64::try_from(want - 1).unwrap()
            );
            assert_eq!(Tokens::expires_in(claims, at + Duration::days(1)), 0);
        }
    }
}
