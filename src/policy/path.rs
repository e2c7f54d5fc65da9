//! Path normalisation: runs once per request, before routing, and the
//! upstream receives exactly the path it produces, so route matching and the
//! upstream always agree on which resource is asked for.
//!
//! Steps (RFC 3986 §6.2.2 plus refusals for the ambiguous cases):
//! 1. Percent-escapes must be well formed (`%` + two hex digits) and decode
//!    to valid UTF-8 as a whole (overlong and truncated sequences such as
//!    `%C0%AE` are refused).
//! 2. Escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded;
//!    every other escape is kept, with uppercase hex.
//! 3. Escapes that would change the path's structure or mean different things
//!    to different servers are refused: `%2F` (`/`), `%5C` (`\`) and `%00`,
//!    as are raw backslashes and control characters.
//! 4. Duplicate slashes are folded; `.` and `..` segments are resolved (`..`
//!    never climbs above the root).

use std::fmt;

use thiserror::Error;

/// Why a path was refused (answered as 400 `bad_request`).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PathError {
    /// Not an absolute path (`*`, empty, authority-form).
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    /// Escapes that decode to invalid UTF-8 (overlong, truncated).
    #[error("the path's percent-encoding is not valid UTF-8")]
    BadUtf8,
    /// `%2F`, `%5C`, `%00`, a raw backslash or a control character.
    #[error("the path contains an encoded slash, backslash, NUL or control character")]
    Forbidden,
}

/// A normalised request path: route on it, forward it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(String);

impl NormalizedPath {
    /// The normalised path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises `presented_path` (the path of the request target, without the
/// query).
pub fn normalize(presented_path: &str) -> Result<NormalizedPath, PathError> {
    let raw = presented_path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_already_normal(raw) {
        return Ok(NormalizedPath(presented_path.to_owned()));
    }
    // Pass 1: check escapes, decode unreserved ones, and collect the fully
    // decoded bytes to validate UTF-8 as a whole.
    let mut partly = String::with_capacity(raw.len());
    let mut fully = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(&h), Some(&l)) = (raw.get(i + 1), raw.get(i + 2)) else {
                return Err(PathError::BadEscape);
            };
            let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                return Err(PathError::BadEscape);
            };
            let decoded = (h << 4) | l;
            if matches!(decoded, b'/' | b'\\' | 0) || decoded.is_ascii_control() {
                return Err(PathError::Forbidden);
            }
            fully.push(decoded);
            if is_unreserved(decoded) {
                partly.push(char::from(decoded));
            } else {
                partly.push('%');
                partly.push(char::from(b"0123456789ABCDEF"[usize::from(decoded >> 4)]));
                partly.push(char::from(b"0123456789ABCDEF"[usize::from(decoded & 0xF)]));
            }
            i += 3;
        } else {
            if b == b'\\' || b.is_ascii_control() || !b.is_ascii() {
                return Err(PathError::Forbidden);
            }
            fully.push(b);
            partly.push(char::from(b));
            i += 1;
        }
    }
    if std::str::from_utf8(&fully).is_err() {
        return Err(PathError::BadUtf8);
    }
    // Pass 2: fold slashes and resolve dot segments.
    let trailing_slash = partly.len() > 1 && partly.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let mut last_was_dot = false;
    for segment in partly.split('/') {
        last_was_dot = false;
        match segment {
            "" => {}
            "." => last_was_dot = true,
            ".." => {
                segments.pop();
                last_was_dot = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(partly.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // A path ending in a slash or a dot segment names a directory: keep the
    // trailing slash (`/a/b/..` → `/a/`), as RFC 3986 §5.2.4 does.
    if (trailing_slash || last_was_dot) && !segments.is_empty() || out.is_empty() {
        out.push('/');
    }
    Ok(NormalizedPath(out))
}

/// Whether the two passes below would return `raw` unchanged: printable
/// ASCII without escapes or backslashes, no empty segment but the leading
/// one (and a trailing slash), no `.` or `..` segment. Most requests'
/// paths are, and then normalising costs one scan and one copy.
fn is_already_normal(raw: &[u8]) -> bool {
    raw.iter()
        .all(|&b| b.is_ascii_graphic() && b != b'%' && b != b'\\')
        && !raw.windows(2).any(|w| w == b"//")
        && raw
            .split(|&b| b == b'/')
            .all(|segment| segment != b"." && segment != b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let cases = [
            ("/", "/"),
            ("/v1/orders", "/v1/orders"),
            ("/v1/orders/", "/v1/orders/"),
            ("//v1///orders", "/v1/orders"),
            ("/v1/./orders", "/v1/orders"),
            ("/v1/admin/../orders/1", "/v1/orders/1"),
            ("/../../v1", "/v1"),
            ("/v1/orders/..", "/v1/"),
            ("/v1/orders/.", "/v1/orders/"),
            ("/..", "/"),
            ("/%76%31/%6Frders", "/v1/orders"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/orders/%2E%2E/%2e%2E/admin", "/admin"),
            ("/v1/.%2e/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/v1/orders/~user_1-x.y", "/v1/orders/~user_1-x.y"),
            ("/v1/..orders", "/v1/..orders"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).map(|p| p.0), Ok(want.to_owned()), "{input}");
        }
        // The fast path only takes paths the full passes leave unchanged.
        for (input, want) in cases {
            if is_already_normal(input.as_bytes()) {
                assert_eq!(input, want, "fast path took {input}");
            }
        }
        for normal in ["/", "/v1/orders/42", "/v1/orders/", "/a.b/..c/~d"] {
            assert!(is_already_normal(normal.as_bytes()), "{normal}");
        }
        for not in [
            "//a",
            "/a//b",
            "/a/./b",
            "/a/..",
            "/a%2Fb",
            "/a b",
            "/a\\b",
            "/caf\u{e9}",
        ] {
            assert!(!is_already_normal(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn refusals_table() {
        let cases = [
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("v1/orders", PathError::NotAbsolute),
            ("/v1/%", PathError::BadEscape),
            ("/v1/%4", PathError::BadEscape),
            ("/v1/%zz", PathError::BadEscape),
            ("/v1/orders%2F..%2Fadmin", PathError::Forbidden),
            ("/v1/orders%2f..%2fadmin", PathError::Forbidden),
            ("/v1/orders/..%5Cadmin", PathError::Forbidden),
            ("/v1/orders\\..\\admin", PathError::Forbidden),
            ("/v1/%00", PathError::Forbidden),
            ("/v1/%0A", PathError::Forbidden),
            ("/v1/a\tb", PathError::Forbidden),
            // Overlong encodings of '.' and '/'.
            ("/v1/%C0%AE%C0%AE/admin", PathError::BadUtf8),
            ("/v1/%C0%AF", PathError::BadUtf8),
            ("/v1/%E0%80%AE", PathError::BadUtf8),
            // Truncated sequence.
            ("/v1/%C3", PathError::BadUtf8),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for input in ["/a/./b/../c//d/", "/%7Euser/x", "/a%20b/..", "/"] {
            let once = normalize(input).unwrap();
            assert_eq!(normalize(once.as_str()).unwrap(), once, "{input}");
        }
    }
}
