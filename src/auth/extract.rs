//! Which credential did the client present? Reads the configured headers
//! (`auth.headers`): an `Authorization` entry takes the Bearer scheme
//! (case-insensitive), any other header carries the raw key. A key in the
//! query string is never a credential.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};

use crate::keys::SecretStr;

/// What the request carries.
#[derive(Debug)]
pub enum Presented<'a> {
    /// No credential header (or only an `Authorization` with another scheme).
    Missing,
    /// Two different credentials (`ambiguous_credentials`).
    Ambiguous,
    /// A credential header whose value is empty or not visible ASCII
    /// (`invalid_key`).
    Malformed,
    /// Exactly one credential (possibly repeated with the same value),
    /// borrowed from the header it came in.
    Credential(SecretStr<'a>),
}

/// The configured credential headers, compiled once.
#[derive(Debug, Clone)]
pub struct CredentialHeaders {
    headers: Vec<HeaderName>,
}

impl CredentialHeaders {
    /// From the configured names (already validated as header names).
    pub fn new(names: &[HeaderName]) -> Self {
        Self {
            headers: names.to_vec(),
        }
    }

    /// The header names, for stripping before forwarding.
    pub fn names(&self) -> &[HeaderName] {
        &self.headers
    }

    /// Reads the credential from `headers`.
    pub fn extract<'a>(&self, headers: &'a HeaderMap) -> Presented<'a> {
        let mut found: Option<&'a [u8]> = None;
        let mut malformed = false;
        for name in &self.headers {
            let bearer = *name == AUTHORIZATION;
            for value in headers.get_all(name) {
                let bytes = value.as_bytes();
                let candidate = if bearer {
                    match strip_bearer(bytes) {
                        Some(token) => token,
                        // Another scheme (Basic, Digest…) is not ours.
                        None => continue,
                    }
                } else {
                    trim(bytes)
                };
                if candidate.is_empty() || !candidate.iter().all(u8::is_ascii_graphic) {
                    malformed = true;
                    continue;
                }
                match found {
                    Some(previous) if previous != candidate => return Presented::Ambiguous,
                    _ => found = Some(candidate),
                }
            }
        }
        match (found, malformed) {
            (Some(_), true) => Presented::Ambiguous,
            // Visible ASCII was checked above, so this is always UTF-8.
            (Some(value), false) => match std::str::from_utf8(value) {
                Ok(text) => Presented::Credential(SecretStr::new(text)),
                Err(_) => Presented::Malformed,
            },
            (None, true) => Presented::Malformed,
            (None, false) => Presented::Missing,
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// `Bearer <token>` with a case-insensitive scheme; `None` for other schemes.
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let scheme_len = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
    if !value[..scheme_len].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(trim(&value[scheme_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn default_headers() -> CredentialHeaders {
        CredentialHeaders::new(&[AUTHORIZATION, HeaderName::from_static("x-api-key")])
    }

    fn outcome(pairs: &[(&str, &str)]) -> String {
        match default_headers().extract(&headers(pairs)) {
            Presented::Missing => "missing".into(),
            Presented::Ambiguous => "ambiguous".into(),
            Presented::Malformed => "malformed".into(),
            Presented::Credential(s) => format!("key:{}", s.expose()),
        }
    }

    #[test]
    fn extraction_table() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "missing"),
            (&[("authorization", "Bearer kg_1")], "key:kg_1"),
            (&[("authorization", "bearer kg_1")], "key:kg_1"),
            (&[("authorization", "BEARER   kg_1  ")], "key:kg_1"),
            (&[("x-api-key", "kg_1")], "key:kg_1"),
            (&[("X-Api-Key", " kg_1 ")], "key:kg_1"),
            (&[("authorization", "Basic dXNlcjpwdw==")], "missing"),
            (&[("authorization", "Bearer")], "malformed"),
            (&[("authorization", "Bearer ")], "malformed"),
            (&[("x-api-key", "")], "malformed"),
            (
                &[("authorization", "Bearer kg_1"), ("x-api-key", "kg_1")],
                "key:kg_1",
            ),
            (
                &[("authorization", "Bearer kg_1"), ("x-api-key", "kg_2")],
                "ambiguous",
            ),
            (&[("x-api-key", "kg_1"), ("x-api-key", "kg_2")], "ambiguous"),
            (&[("x-api-key", "kg_1"), ("x-api-key", "kg_1")], "key:kg_1"),
            (&[("authorization", "Bearer a b")], "malformed"),
            (
                &[("authorization", "Bearer kg_1"), ("x-api-key", "")],
                "ambiguous",
            ),
            (&[("x-other", "kg_1")], "missing"),
        ];
        for (pairs, want) in cases {
            assert_eq!(outcome(pairs), *want, "{pairs:?}");
        }
    }

    #[test]
    fn custom_header_names() {
        let custom = CredentialHeaders::new(&[HeaderName::from_static("x-techrar-token")]);
        assert!(matches!(
            custom.extract(&headers(&[("x-techrar-token", "abc")])),
            Presented::Credential(_)
        ));
        assert!(matches!(
            custom.extract(&headers(&[("authorization", "Bearer abc")])),
            Presented::Missing
        ));
    }
}
