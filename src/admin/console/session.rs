//! Console sessions (SPEC §14): a sign-in with an admin token becomes a
//! random session id in an `HttpOnly; SameSite=Strict` cookie, valid 12 h
//! from sign-in, ended on the server by signing out. The server keeps only
//! a BLAKE3 digest of the id, with the token's public id and the session's
//! CSRF token; forms carry that CSRF token and every POST checks it in
//! constant time.
//!
//! Sessions live in this gateway's memory: a replica behind a load
//! balancer without affinity asks to sign in again (noted in the README).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rand::rngs::OsRng;

use crate::clock::SharedClock;
use crate::keys::secret::constant_time_eq;

/// The session cookie.
pub const COOKIE: &str = "kg_console";
/// The sign-in form's own CSRF cookie (before there is a session).
pub const LOGIN_COOKIE: &str = "kg_console_login";
/// How long a session lasts from sign-in.
pub const LIFETIME: Duration = Duration::hours(12);
/// How long a sign-in form may be left open.
pub const LOGIN_LIFETIME: Duration = Duration::minutes(30);
/// Sessions kept at most (a flood of sign-ins cannot grow memory without
/// bound; the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// A signed-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The admin token's public id (`env` or 8 hex digits).
    pub token_id: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

impl ConsoleSession {
    /// Whether `presented` is this session's CSRF token.
    pub fn csrf_ok(&self, presented: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), presented.as_bytes())
    }
}

/// The sessions of this gateway's console.
#[derive(Debug)]
pub struct ConsoleSessions {
    clock: SharedClock,
    // std Mutex: held for a map operation, never across an await.
    sessions: Mutex<HashMap<[u8; 32], ConsoleSession>>,
}

impl ConsoleSessions {
    /// No sessions yet.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a session for `token_id`: the cookie value and the session.
    pub fn open(&self, token_id: &str) -> (String, ConsoleSession) {
        let id = random_hex();
        let session = ConsoleSession {
            token_id: token_id.to_owned(),
            csrf: random_hex(),
            expires_at: self.clock.now() + LIFETIME,
        };
        let now = self.clock.now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| *k) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The live session of a cookie value, if any.
    pub fn get(&self, presented_cookie: &str) -> Option<ConsoleSession> {
        let now = self.clock.now();
        let mut sessions = self.lock();
        let key = digest(presented_cookie);
        match sessions.get(&key) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session (signing out).
    pub fn close(&self, presented_cookie: &str) {
        self.lock().remove(&digest(presented_cookie));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], ConsoleSession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 32 random bytes from the OS, in hex.
pub fn random_hex() -> String {
    let mut bytes = [0_u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(cookie: &str) -> [u8; 32] {
    *blake3::hash(cookie.as_bytes()).as_bytes()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// A `Set-Cookie` value for the console (`Path=/console`, `HttpOnly`,
/// `SameSite=Strict`); `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict",
        max_age.num_seconds().max(0)
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn sessions_open_expire_and_close() {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap());
        let sessions = ConsoleSessions::new(Arc::new(clock.clone()));
        let (cookie, session) = sessions.open("env");
        assert_eq!(cookie.len(), 64);
        assert_eq!(sessions.get(&cookie), Some(session.clone()));
        assert!(session.csrf_ok(&session.csrf));
        assert!(!session.csrf_ok("forged"));
        assert_eq!(sessions.get("someone-else"), None);
        clock.advance(LIFETIME);
        assert_eq!(sessions.get(&cookie), None, "12 h after sign-in it is over");
        let (cookie, _) = sessions.open("env");
        sessions.close(&cookie);
        assert_eq!(sessions.get(&cookie), None, "signing out ends it on the server");
    }

    #[test]
    fn cookies_are_read_and_written() {
        assert_eq!(cookie("a=1; kg_console=abc; b=2", COOKIE), Some("abc"));
        assert_eq!(cookie("kg_console_login=x", COOKIE), None);
        assert_eq!(
            set_cookie(COOKIE, "v", LIFETIME),
            "kg_console=v; Path=/console; Max-Age=43200; HttpOnly; SameSite=Strict"
        );
    }
}
