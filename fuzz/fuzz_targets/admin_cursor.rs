//! `admin::cursor`: page cursors come back from admin API clients, and
//! nobody without the admin configuration may forge or alter one.
//!
//! Input byte 0 picks the mode:
//! - even: the rest is a presented cursor. If it verifies, it is byte for
//!   byte the cursor the signer makes for the position it carries (so only
//!   cursors we signed verify, in one spelling), and a signer with another
//!   configuration refuses it;
//! - odd: a position built from the input is signed; the cursor verifies to
//!   that position (and only under the same configuration), and every edit
//!   of it (the fuzzer picks positions and bytes) is refused.
#![no_main]

use keygate::admin::AdminSettings;
use keygate::admin::cursor::{CursorError, CursorSigner, Position};
use keygate::keys::{KeyHash, KeyStatus, SecretString};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{Mode, take, take_str, take_u8};

fn settings(env: &str) -> AdminSettings {
    AdminSettings {
        tokens: vec![KeyHash::from_phc(
            "$argon2id$v=19$m=16,t=2,p=1$c2FsdA$aGFzaA".into(),
        )],
        env_token: Some(SecretString::from(env)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mode) = common::mode(data) else {
        return;
    };
    let signer = CursorSigner::new(&settings("fuzz-admin-token"));
    let other = CursorSigner::new(&settings("another-admin-token"));
    let mut rest = match mode {
        Mode::Presented(presented) => {
            if let Ok(position) = signer.verify(&presented) {
                assert_eq!(
                    signer.sign(&position),
                    presented,
                    "a cursor we did not sign verifies"
                );
                assert_eq!(other.verify(&presented), Err(CursorError::Tampered));
            }
            return;
        }
        Mode::Generated { rest, .. } => rest,
    };

    let kind = take_u8(&mut rest);
    let position = if kind & 1 == 0 {
        let after = i64::from_le_bytes(take(&mut rest, 8).try_into().unwrap_or([0; 8]));
        Position::Audit { after }
    } else {
        let status = [
            None,
            Some(KeyStatus::Active),
            Some(KeyStatus::Inactive),
            Some(KeyStatus::Revoked),
        ][usize::from(kind >> 1) % 4];
        let after = take_str(&mut rest, 48);
        let owner = (kind & 8 != 0).then(|| take_str(&mut rest, 48));
        Position::Keys { after, owner, status }
    };
    let cursor = signer.sign(&position);
    assert_eq!(signer.verify(&cursor), Ok(position.clone()));
    assert_eq!(
        other.verify(&cursor),
        Err(CursorError::Tampered),
        "another configuration accepts it"
    );

    // Up to four edits: (position: 2 bytes, byte); byte 0 deletes.
    let mut changed = cursor.as_bytes().to_vec();
    for _ in 0..4 {
        let edit = take(&mut rest, 3);
        if edit.len() < 3 {
            break;
        }
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % (changed.len() + 1);
        match edit[2] {
            0 if at < changed.len() => {
                changed.remove(at);
            }
            b if at < changed.len() => changed[at] = b,
            b => changed.push(b),
        }
    }
    let changed = String::from_utf8_lossy(&changed);
    if changed != cursor {
        assert_eq!(
            signer.verify(&changed),
            Err(CursorError::Tampered),
            "an edited cursor verifies: {changed:?} (signed {cursor:?})"
        );
    }
});
