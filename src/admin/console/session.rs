//! Console sessions (SPEC §14): a sign-in with an admin token becomes a
//! random session id in an `HttpOnly; SameSite=Strict` cookie, valid 12 h
//! from sign-in, ended by signing out. The key store keeps the session
//! (every replica knows it; signing out ends it everywhere) under a BLAKE3
//! digest of the id, never the id, with the token's public id and the
//! session's CSRF token; forms carry that CSRF token and every POST checks
//! it in constant time.

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rand::rngs::OsRng;
use serde_json::json;

use crate::clock::SharedClock;
use crate::keys::secret::constant_time_eq;
use crate::store::{DashboardKind, DashboardSession, SharedStore, StoreError};

/// The session cookie.
pub const COOKIE: &str = "kg_console";
/// The sign-in form's own CSRF cookie (before there is a session).
pub const LOGIN_COOKIE: &str = "kg_console_login";
/// How long a session lasts from sign-in.
pub const LIFETIME: Duration = Duration::hours(12);
/// How long a sign-in form may be left open.
pub const LOGIN_LIFETIME: Duration = Duration::minutes(30);
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

/// The console's sessions, in the key store.
#[derive(Debug, Clone)]
pub struct ConsoleSessions {
    store: SharedStore,
    clock: SharedClock,
}

impl ConsoleSessions {
    /// Sessions kept in `store`.
    pub fn new(store: SharedStore, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Opens a session for `token_id`: the cookie value and the session.
    /// Expired sessions are cleaned up on the way.
    pub async fn open(&self, token_id: &str) -> Result<(String, ConsoleSession), StoreError> {
        let now = self.clock.now();
        self.store.delete_expired_dashboard_sessions(now).await?;
        let id = random_hex();
        let stored = DashboardSession {
            kind: DashboardKind::Console,
            subject: token_id.to_owned(),
            grant: json!({}),
            csrf: random_hex(),
            created_at: now,
            expires_at: now + LIFETIME,
        };
        self.store.open_dashboard_session(&digest(&id), &stored).await?;
        Ok((id, console_session(stored)))
    }

    /// The live console session of a cookie value, if any.
    pub async fn get(&self, presented_cookie: &str) -> Result<Option<ConsoleSession>, StoreError> {
        let found = self
            .store
            .dashboard_session(&digest(presented_cookie), self.clock.now())
            .await?;
        Ok(found
            .filter(|s| s.kind == DashboardKind::Console)
            .map(console_session))
    }

    /// Ends a session (signing out).
    pub async fn close(&self, presented_cookie: &str) -> Result<(), StoreError> {
        self.store
            .end_dashboard_session(&digest(presented_cookie))
            .await?;
        Ok(())
    }
}

fn console_session(stored: DashboardSession) -> ConsoleSession {
    ConsoleSession {
        token_id: stored.subject,
        csrf: stored.csrf,
        expires_at: stored.expires_at,
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

    #[tokio::test]
    async fn sessions_open_expire_and_close_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::store::StoreSettings {
            url: format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display()),
            auto_migrate: true,
            max_connections: 2,
            connect_timeout: std::time::Duration::from_secs(5),
            statement_timeout: std::time::Duration::from_secs(5),
        };
        let store = crate::store::open(&settings).await.unwrap();
        store.migrate().await.unwrap();
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap());
        let sessions = ConsoleSessions::new(store.clone(), Arc::new(clock.clone()));
        let (cookie, session) = sessions.open("env").await.unwrap();
        assert_eq!(cookie.len(), 64);
        // Another replica on the same store knows it.
        let other = ConsoleSessions::new(store, Arc::new(clock.clone()));
        assert_eq!(other.get(&cookie).await.unwrap(), Some(session.clone()));
        assert!(session.csrf_ok(&session.csrf));
        assert!(!session.csrf_ok("forged"));
        assert_eq!(sessions.get("someone-else").await.unwrap(), None);
        clock.advance(LIFETIME);
        assert_eq!(
            sessions.get(&cookie).await.unwrap(),
            None,
            "12 h after sign-in it is over"
        );
        let (cookie, _) = sessions.open("env").await.unwrap();
        other.close(&cookie).await.unwrap();
        assert_eq!(
            sessions.get(&cookie).await.unwrap(),
            None,
            "signing out ends it everywhere"
        );
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
