//! Who may call the admin API: bearer admin tokens, checked without timing
//! leaks and without an argon2 hash per request.
//!
//! Tokens come from `admin.tokens` (argon2id PHC hashes; `config` checks
//! they parse) and `KEYGATE_ADMIN_TOKEN` (a plain token, compared in
//! constant time). A PHC token is verified with argon2 off the async
//! runtime, behind a small semaphore; a successful verification is cached
//! under a keyed BLAKE3 digest of the presented token (never the token), so
//! a busy operator tool costs one hash per process. Failed verifications
//! are never cached and are budgeted per second: past the budget, further
//! unknown tokens are refused without hashing until the second ends.
//!
//! This module decides; [`super::AdminError`] turns a [`Refusal`] into the
//! `admin_unauthorized` problem. Nothing here logs a token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::clock::SharedClock;
use crate::keys::hash::verify_secret;
use crate::keys::secret::constant_time_eq;
use crate::keys::{KeyHash, SecretString};
use crate::store::Actor;

/// Unknown admin tokens hashed per second before further ones are refused
/// without hashing (a guessing flood must not turn into an argon2 flood).
const MAX_FAILURES_PER_SECOND: u32 = 10;
/// argon2 verifications of admin tokens running at once (each may take
/// tens of MiB with OWASP parameters).
const MAX_CONCURRENT_HASHES: usize = 2;
/// The audit id of `KEYGATE_ADMIN_TOKEN`.
pub const ENV_TOKEN_ID: &str = "env";

/// `[admin]`: who may call the admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// argon2id PHC hashes of accepted admin tokens (`admin.tokens`),
    /// checked to parse.
    pub tokens: Vec<KeyHash>,
    /// A plain admin token from `KEYGATE_ADMIN_TOKEN`, read once at load
    /// (compare it in constant time).
    pub env_token: Option<SecretString>,
}

impl AdminSettings {
    /// Whether any admin token is configured; without one the admin API
    /// refuses everything but health and metrics.
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty() || self.env_token.is_some()
    }
}

/// The caller of an admin request, once its token checked out: put in the
/// request's extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    token_id: String,
}

impl AdminPrincipal {
    /// The token's public id: `env`, or 8 hex digits derived from its PHC
    /// string.
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// The audit actor for changes this caller makes (`admin:<id>`).
    pub fn actor(&self) -> Actor {
        Actor::admin_token(&self.token_id)
    }
}

/// Why a request was refused (all answer 401 `admin_unauthorized`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No admin token is configured at all.
    NotConfigured,
    /// No `Authorization: Bearer …` header.
    Missing,
    /// The token matches none configured.
    Wrong,
    /// Too many wrong tokens this second; refused without checking.
    Throttled,
}

/// One `admin.tokens` entry and its public id.
#[derive(Debug)]
struct ConfiguredToken {
    hash: KeyHash,
    id: String,
}

/// Failed verifications in the current second.
#[derive(Debug, Default)]
struct FailureWindow {
    second: i64,
    count: u32,
}

/// The admin token checker: built once from [`AdminSettings`], shared by
/// every admin request.
pub struct AdminAuth {
    tokens: Arc<[ConfiguredToken]>,
    /// Keyed digest of `KEYGATE_ADMIN_TOKEN`, compared in constant time.
    env_digest: Option<[u8; 32]>,
    /// Random per process: digests of presented tokens are useless outside
    /// it.
    digest_key: [u8; 32],
    /// Digest of a verified token → index into `tokens`. Only successes go
    /// in, so it holds at most one entry per configured token. A std mutex:
    /// held for one map operation, never across `.await`.
    verified: Mutex<HashMap<[u8; 32], usize>>,
    /// A std mutex for the same reason.
    failures: Mutex<FailureWindow>,
    hashing: Arc<Semaphore>,
    clock: SharedClock,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.tokens.len())
            .field("env_token", &self.env_digest.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// A checker for the configured tokens; `clock` paces the failure budget.
    pub fn new(settings: &AdminSettings, clock: SharedClock) -> Self {
        let digest_key: [u8; 32] = rand::random();
        let tokens: Vec<ConfiguredToken> = settings
            .tokens
            .iter()
            .map(|hash| ConfiguredToken {
                id: token_id(hash),
                hash: hash.clone(),
            })
            .collect();
        Self {
            tokens: tokens.into(),
            env_digest: settings
                .env_token
                .as_ref()
                .map(|t| digest(&digest_key, t.expose())),
            digest_key,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureWindow::default()),
            hashing: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
            clock,
        }
    }

    /// Whether any token is configured.
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty() || self.env_digest.is_some()
    }

    /// Checks the `Authorization` header value of a request.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<AdminPrincipal, Refusal> {
        if !self.has_tokens() {
            return Err(Refusal::NotConfigured);
        }
        let presented = authorization.and_then(bearer).ok_or(Refusal::Missing)?;
        self.authenticate_token(presented).await
    }

    /// Checks a presented admin token (the console's sign-in form), with
    /// the same budget of wrong tokens as the header.
    pub async fn authenticate_token(&self, presented: &str) -> Result<AdminPrincipal, Refusal> {
        if !self.has_tokens() {
            return Err(Refusal::NotConfigured);
        }
        if presented.is_empty() {
            return Err(Refusal::Missing);
        }
        let presented_digest = digest(&self.digest_key, presented);
        if let Some(env) = &self.env_digest {
            if constant_time_eq(env, &presented_digest) {
                return Ok(principal(ENV_TOKEN_ID));
            }
        }
        if let Some(&i) = lock(&self.verified).get(&presented_digest) {
            return Ok(principal(&self.tokens[i].id));
        }
        if self.tokens.is_empty() {
            return Err(Refusal::Wrong);
        }
        if self.over_budget() {
            return Err(Refusal::Throttled);
        }
        let matched = self.verify(SecretString::from(presented)).await;
        match matched {
            Some(i) => {
                lock(&self.verified).insert(presented_digest, i);
                Ok(principal(&self.tokens[i].id))
            }
            None => {
                self.count_failure();
                Err(Refusal::Wrong)
            }
        }
    }

    /// Verifies against every PHC token on the blocking pool; the index of
    /// the one that matched.
    async fn verify(&self, presented: SecretString) -> Option<usize> {
        // The semaphore is never closed, so acquiring only fails if it were.
        let _permit = self.hashing.clone().acquire_owned().await.ok()?;
        let tokens = Arc::clone(&self.tokens);
        let checked = tokio::task::spawn_blocking(move || {
            tokens
                .iter()
                .position(|t| verify_secret(presented.expose(), &t.hash))
        })
        .await;
        match checked {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "admin token verification panicked");
                None
            }
        }
    }

    fn over_budget(&self) -> bool {
        let second = self.clock.now().timestamp();
        let window = lock(&self.failures);
        window.second == second && window.count >= MAX_FAILURES_PER_SECOND
    }

    fn count_failure(&self) {
        let second = self.clock.now().timestamp();
        let mut window = lock(&self.failures);
        if window.second != second {
            *window = FailureWindow { second, count: 0 };
        }
        window.count = window.count.saturating_add(1);
    }
}

/// The public id of a PHC token: the first 8 hex digits of the BLAKE3 hash
/// of its PHC string (stable across restarts and replicas; reveals nothing
/// about the token).
pub fn token_id(hash: &KeyHash) -> String {
    blake3::hash(hash.as_phc().as_bytes()).to_hex()[..8].to_owned()
}

/// The token of `Bearer <token>` (scheme case-insensitive), if that is what
/// the header holds.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn digest(key: &[u8; 32], token: &str) -> [u8; 32] {
    *blake3::keyed_hash(key, token.as_bytes()).as_bytes()
}

fn principal(id: &str) -> AdminPrincipal {
    AdminPrincipal {
        token_id: id.to_owned(),
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (each critical section is a single map or counter operation).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::HashParams;
    use chrono::TimeZone;

    fn clock() -> ManualClock {
        ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
    }

    fn phc(token: &str) -> KeyHash {
        let params = HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        crate::keys::hash::hash_secret(&SecretString::from(token), &params).unwrap()
    }

    #[tokio::test]
    async fn nothing_configured_refuses_everything() {
        let auth = AdminAuth::new(&AdminSettings::default(), Arc::new(clock()));
        assert_eq!(
            auth.authenticate(Some(b"Bearer anything")).await,
            Err(Refusal::NotConfigured)
        );
        assert_eq!(auth.authenticate(None).await, Err(Refusal::NotConfigured));
    }

    #[tokio::test]
    async fn env_and_phc_tokens() {
        let hash = phc("phc-token");
        let settings = AdminSettings {
            tokens: vec![hash.clone()],
            env_token: Some(SecretString::from("env-token")),
        };
        let auth = AdminAuth::new(&settings, Arc::new(clock()));
        let env = auth.authenticate(Some(b"bearer env-token")).await.unwrap();
        assert_eq!(env.actor().as_str(), "admin:env");
        let by_phc = auth.authenticate(Some(b"Bearer phc-token")).await.unwrap();
        assert_eq!(by_phc.token_id(), token_id(&hash));
        assert_eq!(by_phc.token_id().len(), 8);
        // Cached: the second call finds it without hashing.
        assert_eq!(lock(&auth.verified).len(), 1);
        assert_eq!(
            auth.authenticate(Some(b"Bearer phc-token")).await.unwrap(),
            by_phc
        );
        for bad in [&b"Bearer nope"[..], b"Basic phc-token", b"Bearer ", b"phc-token"] {
            let got = auth.authenticate(Some(bad)).await;
            assert!(
                matches!(got, Err(Refusal::Wrong | Refusal::Missing)),
                "{bad:?}: {got:?}"
            );
        }
        assert_eq!(auth.authenticate(None).await, Err(Refusal::Missing));
        assert_eq!(lock(&auth.verified).len(), 1, "failures are not cached");
    }

    #[tokio::test]
    async fn wrong_tokens_are_budgeted_per_second() {
        let clock = clock();
        let settings = AdminSettings {
            tokens: vec![phc("right")],
            env_token: None,
        };
        let auth = AdminAuth::new(&settings, Arc::new(clock.clone()));
        for _ in 0..MAX_FAILURES_PER_SECOND {
            assert_eq!(
                auth.authenticate(Some(b"Bearer wrong")).await,
                Err(Refusal::Wrong)
            );
        }
        assert_eq!(
            auth.authenticate(Some(b"Bearer wrong")).await,
            Err(Refusal::Throttled)
        );
        clock.advance(chrono::Duration::seconds(1));
        assert!(auth.authenticate(Some(b"Bearer right")).await.is_ok());
    }

    #[test]
    fn debug_shows_no_token() {
        let settings = AdminSettings {
            tokens: vec![],
            env_token: Some(SecretString::from("very-secret-admin-token")),
        };
        let auth = AdminAuth::new(&settings, Arc::new(clock()));
        assert!(!format!("{auth:?}{settings:?}").contains("very-secret"));
    }
}
