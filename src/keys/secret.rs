//! Secret wrappers: the plain key a client presents or that we just generated,
//! and anything else that must never reach a log line, an error body or a panic
//! message.
//!
//! The wrappers have a redacting `Debug`, no `Display`, and zeroise their
//! buffer on drop. Reading the value is an explicit `expose()` call, so every
//! place that handles the plain secret is easy to find in review.

use std::fmt;

use zeroize::Zeroizing;

/// A plain secret string (an API key, an admin token, a signing key).
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a value. The caller hands over ownership so no copy survives.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plain value. Call this only where the secret is really needed:
    /// hashing, verifying, or printing it once to the user who created it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

/// A borrowed plain secret: a credential read in place from a request
/// header, so the hot path neither copies nor allocates it. Same rules as
/// [`SecretString`]: a redacting `Debug`, no `Display`, an explicit
/// [`SecretStr::expose`]. It zeroises nothing (it owns nothing); take an
/// owned copy with [`SecretStr::to_secret_string`] only where one must
/// outlive the request (an argon2 verification on a blocking thread).
#[derive(Clone, Copy)]
pub struct SecretStr<'a>(&'a str);

impl<'a> SecretStr<'a> {
    /// Wraps a borrowed value.
    pub fn new(value: &'a str) -> Self {
        Self(value)
    }

    /// The plain value (see [`SecretString::expose`]).
    pub fn expose(&self) -> &'a str {
        self.0
    }

    /// An owned copy that is zeroised on drop.
    pub fn to_secret_string(&self) -> SecretString {
        SecretString::new(self.0.to_owned())
    }
}

impl fmt::Debug for SecretStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretStr([redacted])")
    }
}

impl<'a> From<&'a SecretString> for SecretStr<'a> {
    fn from(value: &'a SecretString) -> Self {
        Self(value.expose())
    }
}

/// Constant-time equality of two byte strings (length may leak, content does
/// not). Used wherever a presented secret is compared with a stored one
/// outside argon2 (which compares its outputs in constant time itself).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretString::from("kg_live_supersecret");
        let borrowed = SecretStr::from(&s);
        let printed = format!("{s:?} {:?} {borrowed:?}", Some(&s));
        assert!(!printed.contains("supersecret"), "{printed}");
        assert_eq!(borrowed.to_secret_string().expose(), "kg_live_supersecret");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn constant_time_eq_compares_content() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
