//! `keys::format`: presented keys are parsed on every request before any
//! store lookup, so the parser sees attacker-chosen text.
//!
//! Properties:
//! - parsing never panics, for generated and imported keys alike;
//! - a key that parses is exactly `<prefix><random><checksum>` with the
//!   documented alphabets and lengths, and re-serialising its parts with an
//!   independent CRC32 gives back the input (no second spelling of a key);
//! - a generated key parses to the parts it was generated with;
//! - every single-character change of a generated key is refused. CRC32
//!   catches every error burst of up to 32 bits in the signed part, the
//!   fixed-width checksum encoding is injective, and the prefix cap (24
//!   bytes) leaves no room for a changed `_` to move the prefix/body split
//!   onto another valid shape, so the format guarantees this outright.
#![no_main]

use keygate::keys::format::{
    IMPORTED_PREFIX_WINDOW, KeyFormat, KeyPrefix, MAX_KEY_LEN, MAX_PREFIX_LEN, SHORT_PREFIX_LEN,
    default_imported_prefix, generate_with, imported_parts_for, parse_generated, split_imported,
};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

mod common;
use common::Mode;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The documented checksum, written independently of the crate's.
fn checksum(hex: bool, signed: &[u8]) -> String {
    let crc = crc32fast::hash(signed);
    if hex {
        return format!("{crc:08x}");
    }
    let mut n = u64::from(crc);
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("ASCII")
}

fn check_presented(text: &str) {
    if let Ok(parts) = parse_generated(text) {
        assert!(
            KeyPrefix::new(&parts.prefix).is_ok(),
            "{text:?}: prefix {:?}",
            parts.prefix
        );
        assert!(parts.prefix.len() <= MAX_PREFIX_LEN);
        let body = text
            .strip_prefix(parts.prefix.as_str())
            .expect("the key starts with its prefix");
        assert!(!body.contains('_'), "{text:?}: the body follows the last '_'");
        assert_eq!(&body[..SHORT_PREFIX_LEN], parts.short_prefix, "{text:?}");
        let hex = match body.len() {
            30 => {
                assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()), "{text:?}");
                false
            }
            64 => {
                assert!(
                    body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "{text:?}"
                );
                true
            }
            n => panic!("{text:?}: a body of {n} characters parsed"),
        };
        let check_len = if hex { 8 } else { 6 };
        let signed = &text[..text.len() - check_len];
        let rebuilt = format!("{signed}{}", checksum(hex, signed.as_bytes()));
        assert_eq!(rebuilt, text, "re-serialising the parsed key");
    }
    // Imported keys: never panic; parts always come from the text itself.
    let default_prefix = default_imported_prefix(text);
    assert!(text.starts_with(default_prefix));
    assert!(default_prefix.is_empty() || default_prefix.ends_with('_'));
    assert!(default_prefix.len() <= IMPORTED_PREFIX_WINDOW);
    for named in [None, Some(default_prefix), Some(text.get(..3).unwrap_or(""))] {
        if let Ok(parts) = split_imported(text, named) {
            assert!(text.len() <= MAX_KEY_LEN);
            assert!(text.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(parts.short_prefix.len(), SHORT_PREFIX_LEN);
            assert!(text.starts_with(&format!("{}{}", parts.prefix, parts.short_prefix)));
            if let Some(named) = named {
                assert_eq!(parts.prefix, named);
            }
        }
    }
    if let Some(parts) = imported_parts_for(text, default_prefix) {
        assert!(text.starts_with(&format!("{}{}", parts.prefix, parts.short_prefix)));
    }
}

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = match common::mode(data) {
        None => return,
        Some(Mode::Presented(text)) => return check_presented(&text),
        Some(Mode::Generated { flags, rest }) => (flags, rest),
    };
    // Generate from fuzz-chosen randomness and prefix, then change one
    // character: [seed: 32][position: 2][replacement: 1][prefix...].
    if rest.len() < 35 {
        return;
    }
    let (seed, rest) = rest.split_at(32);
    let position = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let replacement = rest[2];
    let prefix_text = String::from_utf8_lossy(&rest[3..]);
    let prefix = KeyPrefix::new(&prefix_text).unwrap_or_else(|_| KeyPrefix::new("kg_live_").expect("valid"));
    let format = if mode & 2 == 0 {
        KeyFormat::Base62
    } else {
        KeyFormat::Hex64
    };
    let mut rng = StdRng::from_seed(seed.try_into().expect("32 bytes"));
    let generated = generate_with(&mut rng, &prefix, format);
    let plain = generated.secret.expose();
    assert_eq!(parse_generated(plain), Ok(generated.parts.clone()), "{plain}");
    check_presented(plain);

    let position = position % plain.len();
    let mut mutated = plain.as_bytes().to_vec();
    mutated[position] = replacement;
    let mutated = String::from_utf8_lossy(&mutated);
    if mutated != plain {
        assert!(
            parse_generated(&mutated).is_err(),
            "{plain:?} changed at {position} to {mutated:?} still parses"
        );
    }
});
