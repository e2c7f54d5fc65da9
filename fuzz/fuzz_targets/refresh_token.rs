//! `token::refresh`: `/auth/refresh` parses attacker-chosen refresh tokens
//! and the session logic decides rotation versus reuse on them.
//!
//! Input byte 0 picks the mode:
//! - even: the rest is a presented token. It parses exactly when it has the
//!   documented shape `kgr_<26 [0-9a-z]>_<generation>_<64 [0-9a-f]>`
//!   (generation decimal, no sign, no leading zero, fits u64), checked
//!   against a matcher written here; a parsed token gives back its session
//!   id and generation, and it is at most 128 bytes.
//! - odd: a login (randomness from the input) mints a token that parses
//!   and rotates; then the input edits it. An edited token that still
//!   parses never rotates the session: a changed session id or family
//!   secret is `NotInFamily` (changes nothing), any other change (the
//!   generation or the rotation secret) is reuse, which revokes.
#![no_main]

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use keygate::token::{LoginRequest, PresentedRefreshToken, Redemption, RefreshError, SessionPolicy};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

mod common;
use common::Mode;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).expect("in range")
}

/// The documented shape, as (ulid, generation, hex) if `text` has it.
fn shape(text: &str) -> Option<(&str, u64, &str)> {
    if text.len() > 128 {
        return None;
    }
    let mut parts = text.strip_prefix("kgr_")?.split('_');
    let (ulid, generation, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let ulid_ok = ulid.len() == 26 && ulid.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    let generation_ok = !generation.is_empty()
        && generation.bytes().all(|b| b.is_ascii_digit())
        && (generation == "0" || !generation.starts_with('0'));
    let hex_ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !(ulid_ok && generation_ok && hex_ok) {
        return None;
    }
    Some((ulid, generation.parse().ok()?, hex))
}

fn check_presented(text: &str) -> Option<PresentedRefreshToken> {
    let parsed = text.parse::<PresentedRefreshToken>();
    match (&parsed, shape(text)) {
        (Ok(token), Some((ulid, generation, _))) => {
            assert_eq!(token.session_id().as_str(), format!("ses_{ulid}"), "{text:?}");
            assert_eq!(token.generation(), generation, "{text:?}");
        }
        (Err(e), None) => assert_eq!(*e, RefreshError::Malformed),
        (Ok(_), None) => panic!("{text:?} parses but is not of the documented shape"),
        (Err(e), Some(_)) => panic!("{text:?} has the documented shape but is refused: {e}"),
    }
    parsed.ok()
}

fuzz_target!(|data: &[u8]| {
    let rest = match common::mode(data) {
        None => return,
        Some(Mode::Presented(text)) => {
            check_presented(&text);
            return;
        }
        Some(Mode::Generated { rest, .. }) => rest,
    };
    if rest.len() < 32 {
        return;
    }
    let (seed, edits) = rest.split_at(32);
    let mut rng = StdRng::from_seed(seed.try_into().expect("32 bytes"));
    let policy = SessionPolicy {
        access_ttl: TimeDelta::hours(1),
        refresh_ttl: TimeDelta::days(1),
        issuer: "keygate".into(),
        audience: None,
    };
    let scopes: BTreeSet<String> = ["read".to_owned()].into();
    let login = policy.login(
        None,
        LoginRequest {
            key_id: "key_01jd3m5k7r9t2v4w6x8y0z1a2b".parse().expect("a key id"),
            client_session: None,
            scopes: scopes.clone(),
        },
        now(),
        &mut rng,
    );
    let genuine = login.refresh_token.expose();
    let presented = check_presented(genuine).expect("a minted token parses");
    match policy.redeem(&login.session, &presented, &scopes, now(), &mut rng) {
        Ok(Redemption::Rotated(_)) => {}
        other => panic!("the genuine token does not rotate: {other:?}"),
    }

    // Up to four edits: (position, byte); byte 0 deletes.
    let mut changed = genuine.as_bytes().to_vec();
    for edit in edits.chunks_exact(2).take(4) {
        let at = usize::from(edit[0]) % (changed.len() + 1);
        match edit[1] {
            0 if at < changed.len() => {
                changed.remove(at);
            }
            b if at < changed.len() => changed[at] = b,
            b => changed.push(b),
        }
    }
    let changed = String::from_utf8_lossy(&changed);
    if changed == genuine {
        return;
    }
    let Some(edited) = check_presented(&changed) else {
        return;
    };
    // The family secret is the first 32 of the 64 hex digits.
    let family = |t: &str| t[t.len() - 64..t.len() - 32].to_owned();
    let same_family = edited.session_id() == presented.session_id() && family(&changed) == family(genuine);
    match policy.redeem(&login.session, &edited, &scopes, now(), &mut rng) {
        Err(RefreshError::NotInFamily { .. }) if !same_family => {}
        Ok(Redemption::ReuseDetected { .. }) if same_family => {}
        other => panic!(
            "{changed:?} (edited from the genuine token; same family: {same_family}) redeems as {other:?}"
        ),
    }
});
