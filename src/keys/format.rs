//! What a key looks like: `<prefix><body>`.
//!
//! Two body formats exist, both ending in a CRC32 checksum over the prefix and
//! the random part, so a mistyped or forged-format key is rejected here,
//! before any store lookup, and secret scanners can match keys by regex:
//!
//! | format   | body                                   | random bits | scanner regex (prefix `kg_live_`) |
//! |----------|----------------------------------------|-------------|-----------------------------------|
//! | `base62` | 24 random base62 + 6 base62 checksum   | 142         | `kg_live_[0-9A-Za-z]{30}`          |
//! | `hex64`  | 56 random hex + 8 hex checksum (64)    | 224         | `tc_[0-9a-f]{64}`                  |
//!
//! A generated key's prefix is letters and digits in `_`-separated groups and
//! ends in `_`; the body never contains `_`, so the body is whatever follows
//! the last `_`. The first [`SHORT_PREFIX_LEN`] characters of the body are the
//! key's public *short prefix*: shown in listings and logs, used to find the
//! key in the store.
//!
//! Imported keys (issued by the API keygate now stands in front of) keep their
//! own shape and carry no checksum; [`split_imported`] finds their prefix and
//! short prefix.

use std::fmt;

use rand::{CryptoRng, Rng, RngCore};
use thiserror::Error;

use super::secret::SecretString;

/// Length of the public short prefix, in characters.
pub const SHORT_PREFIX_LEN: usize = 8;
/// Longest presented credential we even look at, in bytes; anything longer is
/// malformed (real keys are well under 100 bytes).
pub const MAX_KEY_LEN: usize = 512;
/// Longest prefix a generated key may carry, in bytes.
pub const MAX_PREFIX_LEN: usize = 24;
/// How many characters from the start of an imported key may hold its prefix
/// when the import line does not name it (SPEC: "everything up to the last `_`
/// in the first 16 characters").
pub const IMPORTED_PREFIX_WINDOW: usize = 16;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const HEX: &[u8; 16] = b"0123456789abcdef";
const BASE62_RANDOM_LEN: usize = 24;
const BASE62_CHECK_LEN: usize = 6;
const HEX_RANDOM_LEN: usize = 56;
const HEX_CHECK_LEN: usize = 8;

/// The body format of generated keys (`keys.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// 30 base62 characters (the default).
    #[default]
    Base62,
    /// Exactly 64 lowercase hex characters (the TruCustom shape).
    Hex64,
}

impl KeyFormat {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Base62 => "base62",
            Self::Hex64 => "hex64",
        }
    }

    fn body_len(self) -> usize {
        match self {
            Self::Base62 => BASE62_RANDOM_LEN + BASE62_CHECK_LEN,
            Self::Hex64 => HEX_RANDOM_LEN + HEX_CHECK_LEN,
        }
    }
}

impl std::str::FromStr for KeyFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "base62" => Ok(Self::Base62),
            "hex64" => Ok(Self::Hex64),
            other => Err(format!(
                "unknown key format {other:?}: expected \"base62\" or \"hex64\""
            )),
        }
    }
}

/// Why a string is not a well-formed key or prefix. The variants exist for
/// logs and CLI messages; a client only ever hears `invalid_key`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyFormatError {
    /// Empty, too long, or not printable ASCII.
    #[error(
        "the key is empty, longer than {MAX_KEY_LEN} bytes, or contains characters other than printable ASCII"
    )]
    BadCharacters,
    /// No `_`-terminated prefix, or a body of the wrong length or alphabet.
    #[error("the key does not have the shape <prefix>_<body> of a keygate key")]
    BadShape,
    /// Shape right, checksum wrong: mistyped or forged.
    #[error("the key's checksum does not match (mistyped or forged key)")]
    BadChecksum,
    /// A prefix that generated keys cannot carry.
    #[error(
        "invalid prefix {0:?}: use letters and digits in groups separated by '_', ending with '_' (at most {MAX_PREFIX_LEN} characters), e.g. \"kg_live_\""
    )]
    BadPrefix(String),
    /// An imported key too short to carry a short prefix after its prefix.
    #[error("the key is too short: it needs at least {SHORT_PREFIX_LEN} characters after its prefix")]
    TooShort,
    /// An import line named a prefix the key does not start with.
    #[error("the key does not start with the prefix {0:?} named on its line")]
    PrefixMismatch(String),
}

/// A prefix that generated keys may carry (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Validates a prefix: `[A-Za-z0-9]+` groups joined and terminated by `_`.
    pub fn new(prefix: &str) -> Result<Self, KeyFormatError> {
        let bad = || KeyFormatError::BadPrefix(prefix.to_owned());
        if prefix.len() < 2 || prefix.len() > MAX_PREFIX_LEN || !prefix.ends_with('_') {
            return Err(bad());
        }
        let groups = &prefix[..prefix.len() - 1];
        if groups
            .split('_')
            .any(|g| g.is_empty() || !g.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(bad());
        }
        Ok(Self(prefix.to_owned()))
    }

    /// The prefix text, e.g. `kg_live_`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public parts of a key: safe to store, list and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts {
    /// Everything before the body, e.g. `kg_live_` (may be empty for imported keys).
    pub prefix: String,
    /// The first [`SHORT_PREFIX_LEN`] characters after the prefix.
    pub short_prefix: String,
}

/// A freshly generated key: the secret (shown once) and its public parts.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The full plain key.
    pub secret: SecretString,
    /// Prefix and short prefix.
    pub parts: KeyParts,
}

/// Generates a key from the OS CSPRNG.
pub fn generate(prefix: &KeyPrefix, format: KeyFormat) -> GeneratedKey {
    generate_with(&mut rand::rngs::OsRng, prefix, format)
}

/// Generates a key from the given CSPRNG (tests pass a seeded one).
pub fn generate_with<R: RngCore + CryptoRng>(
    rng: &mut R,
    prefix: &KeyPrefix,
    format: KeyFormat,
) -> GeneratedKey {
    let (alphabet, random_len): (&[u8], usize) = match format {
        KeyFormat::Base62 => (BASE62, BASE62_RANDOM_LEN),
        KeyFormat::Hex64 => (HEX, HEX_RANDOM_LEN),
    };
    let mut key = String::with_capacity(prefix.0.len() + format.body_len());
    key.push_str(&prefix.0);
    for _ in 0..random_len {
        // gen_range is unbiased (rejection sampling), so every character
        // carries the full log2(alphabet) bits.
        key.push(char::from(alphabet[rng.gen_range(0..alphabet.len())]));
    }
    let check = checksum(format, key.as_bytes());
    key.push_str(&check);
    let short_prefix = key[prefix.0.len()..prefix.0.len() + SHORT_PREFIX_LEN].to_owned();
    GeneratedKey {
        secret: SecretString::new(key),
        parts: KeyParts {
            prefix: prefix.0.clone(),
            short_prefix,
        },
    }
}

/// Parses a presented key as a keygate-generated key: shape and checksum are
/// checked, no store is touched. Returns its public parts.
pub fn parse_generated(presented: &str) -> Result<KeyParts, KeyFormatError> {
    check_characters(presented)?;
    let underscore = presented.rfind('_').ok_or(KeyFormatError::BadShape)?;
    let (prefix, body) = presented.split_at(underscore + 1);
    if KeyPrefix::new(prefix).is_err() {
        return Err(KeyFormatError::BadShape);
    }
    let format =
        if body.len() == KeyFormat::Base62.body_len() && body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            KeyFormat::Base62
        } else if body.len() == KeyFormat::Hex64.body_len()
            && body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            KeyFormat::Hex64
        } else {
            return Err(KeyFormatError::BadShape);
        };
    let check_len = match format {
        KeyFormat::Base62 => BASE62_CHECK_LEN,
        KeyFormat::Hex64 => HEX_CHECK_LEN,
    };
    let (signed, check) = presented.split_at(presented.len() - check_len);
    if checksum(format, signed.as_bytes()) != check {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(KeyParts {
        prefix: prefix.to_owned(),
        short_prefix: body[..SHORT_PREFIX_LEN].to_owned(),
    })
}

/// Splits an imported key into its public parts. `named_prefix` is the prefix
/// the import line names; without it the prefix is everything up to the last
/// `_` within the first [`IMPORTED_PREFIX_WINDOW`] characters (or empty).
pub fn split_imported(key: &str, named_prefix: Option<&str>) -> Result<KeyParts, KeyFormatError> {
    check_characters(key)?;
    let prefix = match named_prefix {
        Some(p) => {
            if !key.starts_with(p) {
                return Err(KeyFormatError::PrefixMismatch(p.to_owned()));
            }
            p
        }
        None => default_imported_prefix(key),
    };
    imported_parts_for(key, prefix).ok_or(KeyFormatError::TooShort)
}

/// The prefix an imported key gets when its line names none.
pub fn default_imported_prefix(key: &str) -> &str {
    // The window is cut as bytes: a `str` cut through a multi-byte
    // character would panic (found by the `key_format` fuzz target; the
    // callers check for printable ASCII first, but this is public). `_` is
    // ASCII, so the cut just after it is always a character boundary.
    let window = &key.as_bytes()[..key.len().min(IMPORTED_PREFIX_WINDOW)];
    match window.iter().rposition(|&b| b == b'_') {
        Some(i) => &key[..=i],
        None => "",
    }
}

/// The public parts of `presented` read as an imported key with `prefix`, or
/// `None` if it does not start with that prefix or is too short. Used by
/// lookups that try every known imported prefix.
pub fn imported_parts_for(presented: &str, prefix: &str) -> Option<KeyParts> {
    let rest = presented.strip_prefix(prefix)?;
    let short = rest.get(..SHORT_PREFIX_LEN)?;
    Some(KeyParts {
        prefix: prefix.to_owned(),
        short_prefix: short.to_owned(),
    })
}

fn check_characters(key: &str) -> Result<(), KeyFormatError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyFormatError::BadCharacters);
    }
    Ok(())
}

/// CRC32 (IEEE) of `signed`, rendered in the body's alphabet at fixed width.
fn checksum(format: KeyFormat, signed: &[u8]) -> String {
    let crc = crc32fast::hash(signed);
    match format {
        KeyFormat::Hex64 => format!("{crc:08x}"),
        KeyFormat::Base62 => {
            let mut out = [b'0'; BASE62_CHECK_LEN];
            let mut n = u64::from(crc);
            for slot in out.iter_mut().rev() {
                *slot = BASE62[(n % 62) as usize];
                n /= 62;
            }
            out.iter().map(|&b| char::from(b)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn prefix(p: &str) -> KeyPrefix {
        KeyPrefix::new(p).unwrap()
    }

    #[test]
    fn prefixes_table() {
        for ok in ["kg_live_", "tc_", "sk_live_", "a_", "ABC9_x1_"] {
            assert!(KeyPrefix::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "_",
            "kg",
            "kg__",
            "_kg_",
            "kg-live_",
            "kg live_",
            "averyveryverylongprefix_x_",
        ] {
            assert!(KeyPrefix::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_keys_round_trip_in_both_formats() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (p, format, body_len) in [("kg_live_", KeyFormat::Base62, 30), ("tc_", KeyFormat::Hex64, 64)] {
            let key = generate_with(&mut rng, &prefix(p), format);
            let plain = key.secret.expose();
            assert!(plain.starts_with(p));
            assert_eq!(plain.len(), p.len() + body_len);
            let parts = parse_generated(plain).unwrap();
            assert_eq!(parts, key.parts);
            assert_eq!(parts.short_prefix.len(), SHORT_PREFIX_LEN);
            assert_eq!(&plain[p.len()..p.len() + 8], parts.short_prefix);
        }
    }

    #[test]
    fn hex64_is_exactly_64_lowercase_hex() {
        let key = generate(&prefix("tc_"), KeyFormat::Hex64);
        let body = &key.secret.expose()[3..];
        assert_eq!(body.len(), 64);
        assert!(body.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let key = generate(&prefix("kg_live_"), KeyFormat::Base62);
        let plain = key.secret.expose().to_owned();
        for i in 0..plain.len() {
            let mut bytes = plain.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let mutated = String::from_utf8(bytes).unwrap();
            if mutated == plain {
                continue;
            }
            assert!(parse_generated(&mutated).is_err(), "position {i}: {mutated}");
        }
    }

    #[test]
    fn malformed_keys_table() {
        let good = generate(&prefix("kg_live_"), KeyFormat::Base62);
        let plain = good.secret.expose();
        let cases: Vec<(String, KeyFormatError)> = vec![
            (String::new(), KeyFormatError::BadCharacters),
            ("kg_live_ abc".into(), KeyFormatError::BadCharacters),
            ("x".repeat(MAX_KEY_LEN + 1), KeyFormatError::BadCharacters),
            ("kg_live_é".into(), KeyFormatError::BadCharacters),
            ("nounderscore".into(), KeyFormatError::BadShape),
            ("kg_live_short".into(), KeyFormatError::BadShape),
            (format!("{plain}0"), KeyFormatError::BadShape),
            (
                plain.replacen("kg_live_", "kg-live_", 1),
                KeyFormatError::BadShape,
            ),
            (format!("kg_live_{}", "A".repeat(30)), KeyFormatError::BadChecksum),
            (format!("tc_{}", "0".repeat(64)), KeyFormatError::BadChecksum),
            (format!("tc_{}", "A".repeat(64)), KeyFormatError::BadShape),
        ];
        for (input, want) in cases {
            assert_eq!(parse_generated(&input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn changing_the_prefix_breaks_the_checksum() {
        let key = generate(&prefix("kg_live_"), KeyFormat::Base62);
        let moved = key.secret.expose().replacen("kg_live_", "kg_test_", 1);
        assert_eq!(parse_generated(&moved), Err(KeyFormatError::BadChecksum));
    }

    #[test]
    fn imported_prefix_rules() {
        let cases = [
            ("sk_live_abcdefgh12345", None, "sk_live_", "abcdefgh"),
            ("abcdefghijkl", None, "", "abcdefgh"),
            // An underscore past the first 16 characters is body, not prefix.
            ("abcdefghijklmnopq_rstuv", None, "", "abcdefgh"),
            ("pk-12345678901", Some("pk-"), "pk-", "12345678"),
        ];
        for (key, named, want_prefix, want_short) in cases {
            let parts = split_imported(key, named).unwrap();
            assert_eq!(parts.prefix, want_prefix, "{key}");
            assert_eq!(parts.short_prefix, want_short, "{key}");
        }
        assert_eq!(split_imported("sk_live_abc", None), Err(KeyFormatError::TooShort));
        // Not ASCII across the end of the window: no panic (issue 18, found
        // by the key_format fuzz target), and the characters check refuses it.
        assert_eq!(default_imported_prefix("abcdefghijklmno\u{e9}_xyz"), "");
        assert_eq!(default_imported_prefix("ab_defghijklmno\u{e9}_xyz"), "ab_");
        assert_eq!(
            split_imported("abcdefghijklmno\u{e9}_xyz", None),
            Err(KeyFormatError::BadCharacters)
        );
        assert_eq!(
            split_imported("sk_live_abcdefghij", Some("pk_")),
            Err(KeyFormatError::PrefixMismatch("pk_".into()))
        );
    }
}
