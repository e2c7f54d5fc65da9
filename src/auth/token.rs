//! Access tokens (SPEC §8) as credentials: a presented JWT becomes a
//! [`Principal`] for the key it was exchanged for, with no store round trip
//! once its session and key are cached.
//!
//! Per request, cheapest first:
//! 1. A keyed digest of the token and a look in the verified-token cache
//!    (entries live until the token's `exp`, checked on every hit, so an
//!    expired token stops at its instant). On a miss the signature, times,
//!    audience and issuer are checked ([`Tokens::verify`]): forged,
//!    tampered, `alg: none` and wrong-key tokens stop here without touching
//!    the store, so a flood of them costs only hashing.
//! 2. The session named by `sid` from the session cache (a missing row is
//!    cached too: session ids are never reused), else the store; it must
//!    admit the token (same key, not revoked).
//! 3. The key named by `sub` from the key cache, else the store; its state
//!    (revoked, inactive, expired at `now`) is checked on every request, and
//!    the token's scopes are cut to what the key holds now.
//!
//! Both caches are dropped per entry by the store's change feed (key changes
//! by key id, session changes by the `session_id` of their audit row), as
//! the secret cache is, so a revocation anywhere reaches every replica
//! within the feed's latency; `cache.ttl` bounds staleness if the feed is
//! down, and `cache.stale_if_error` lets cached entries serve through a
//! store outage.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use tracing::{debug, warn};

use super::cache::{DigestKey, DigestMap};
use super::{AuthError, AuthFailure, Grant, Identity, InvalidReason, Principal, scopes_header};
use crate::keys::KeyId;
use crate::store::{SharedStore, StoreError};
use crate::token::{AccessClaims, Session, SessionId, TokenError, Tokens, effective_scopes};

/// Whether a presented credential has a JWT's shape (three dot-separated
/// parts, the first a base64url JSON object): such values go to the token
/// path when token exchange is on. No keygate key contains a dot, and an
/// imported key that starts like a JSON header is not plausible.
pub fn looks_like_jwt(presented: &str) -> bool {
    presented.starts_with("eyJ") && presented.bytes().filter(|&b| b == b'.').count() == 2
}

/// A token whose signature and claims verified, cached until its `exp`.
#[derive(Debug)]
struct VerifiedToken {
    claims: Arc<AccessClaims>,
    scopes: Arc<BTreeSet<String>>,
    scopes_header: Option<http::HeaderValue>,
}

/// A cached store read: fresh until `fresh_until`, servable while the store
/// fails until `stale_until`.
#[derive(Debug, Clone)]
struct Cached<T> {
    value: T,
    fresh_until: DateTime<Utc>,
    stale_until: DateTime<Utc>,
}

/// A bounded map of cached store reads, guarded by an invalidation epoch
/// (see [`TokenAuth::invalidate`]).
#[derive(Debug)]
struct ReadCache<K, V> {
    map: RwLock<HashMap<K, Cached<V>>>,
    max_entries: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> ReadCache<K, V> {
    fn new(max_entries: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            max_entries,
        }
    }

    fn get(&self, key: &K) -> Option<Cached<V>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Inserts unless an invalidation ran since `epoch` was read (the value
    /// may predate it); when full, drops expired entries, then any one.
    fn insert(&self, key: K, entry: Cached<V>, epoch: u64, current: &AtomicU64, now: DateTime<Utc>) {
        if self.max_entries == 0 {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if current.load(Ordering::Acquire) != epoch {
            return;
        }
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            map.retain(|_, e| now < e.stale_until);
            if map.len() >= self.max_entries {
                if let Some(victim) = map.keys().next().cloned() {
                    map.remove(&victim);
                }
            }
        }
        map.insert(key, entry);
    }

    fn remove_all<'a>(&self, keys: impl IntoIterator<Item = &'a K>)
    where
        K: 'a,
    {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            map.remove(key);
        }
    }

    fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn sweep(&self, now: DateTime<Utc>) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| now < e.stale_until);
    }

    fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The token side of the authenticator; present when `[tokens]` is on.
pub(super) struct TokenAuth {
    tokens: Arc<Tokens>,
    digest_key: DigestKey,
    max_entries: usize,
    cache_ttl: Duration,
    stale_if_error: Duration,
    verified: RwLock<DigestMap<Arc<VerifiedToken>>>,
    keys: ReadCache<KeyId, Arc<Identity>>,
    sessions: ReadCache<SessionId, Option<Arc<Session>>>,
    /// Bumped by every invalidation, before entries go (see
    /// [`ReadCache::insert`]).
    epoch: AtomicU64,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("signing_kid", &self.tokens.keys().signing_kid())
            .field("keys_cached", &self.keys.len())
            .field("sessions_cached", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Where a store failure left a lookup.
enum Lookup<T> {
    Found(T),
    Unavailable,
}

impl TokenAuth {
    pub(super) fn new(
        tokens: Arc<Tokens>,
        max_entries: usize,
        cache_ttl: Duration,
        stale_if_error: Duration,
    ) -> Self {
        Self {
            tokens,
            digest_key: DigestKey::random(),
            max_entries,
            cache_ttl,
            stale_if_error,
            verified: RwLock::new(DigestMap::default()),
            keys: ReadCache::new(max_entries),
            sessions: ReadCache::new(max_entries),
            epoch: AtomicU64::new(0),
        }
    }

    /// Authenticates a presented access token at `now`. Store failures
    /// count in `store_errors`.
    pub(super) async fn authenticate(
        &self,
        store: &SharedStore,
        presented: &str,
        now: DateTime<Utc>,
        store_errors: &AtomicU64,
    ) -> Result<Principal, AuthError> {
        let token = self.verified_token(presented, now)?;
        let claims = &token.claims;
        let session = match self.session(store, &claims.sid, now).await {
            Lookup::Found(Some(session)) => session,
            Lookup::Found(None) => return Err(refused(&TokenError::UnknownSession, claims)),
            Lookup::Unavailable => {
                store_errors.fetch_add(1, Ordering::Relaxed);
                return Err(AuthError::new(AuthFailure::Unavailable, None));
            }
        };
        session.admits(claims).map_err(|e| refused(&e, claims))?;
        let identity = match self.key(store, &claims.sub, now).await {
            Lookup::Found(Some(cached)) => cached,
            Lookup::Found(None) => {
                return Err(AuthError::invalid(
                    InvalidReason::Token("token_unknown_key"),
                    None,
                ));
            }
            Lookup::Unavailable => {
                store_errors.fetch_add(1, Ordering::Relaxed);
                return Err(AuthError::new(AuthFailure::Unavailable, None));
            }
        };
        let key = &identity.key;
        let short = Some(key.short_prefix.as_str());
        if let Some(failure) = AuthFailure::of_state(identity.state_at(now)) {
            return Err(AuthError::new(failure, short).of_key(&Arc::from(key.id.as_str())));
        }
        // The token carries what was granted at login; the key may have lost
        // scopes since (a scope change is on the feed like a revocation).
        let (scopes, scopes_header) = if token.scopes.is_subset(&key.scopes) {
            (Arc::clone(&token.scopes), token.scopes_header.clone())
        } else {
            let cut = effective_scopes(&token.scopes, &key.scopes);
            let header = scopes_header(&cut);
            (Arc::new(cut), header)
        };
        Ok(Principal {
            secret_valid_until: None,
            grant: Some(Grant {
                claims: Arc::clone(&token.claims),
                scopes,
                scopes_header,
            }),
            identity,
        })
    }

    /// The cached verification of `presented`, or a fresh one.
    fn verified_token(&self, presented: &str, now: DateTime<Utc>) -> Result<Arc<VerifiedToken>, AuthError> {
        let digest = self.digest_key.digest(presented);
        let hit = self
            .verified
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        if let Some(token) = hit {
            if now < token.claims.exp {
                return Ok(token);
            }
            let e = TokenError::Expired {
                exp: token.claims.exp,
            };
            return Err(refused(&e, &token.claims));
        }
        let claims = self.tokens.verify(presented, now).map_err(|e| {
            debug!(error = %e, "access token refused");
            AuthError::invalid(InvalidReason::Token(log_reason(&e)), None)
        })?;
        let token = Arc::new(VerifiedToken {
            scopes: Arc::new(claims.scope.clone()),
            scopes_header: scopes_header(&claims.scope),
            claims: Arc::new(claims),
        });
        if self.max_entries > 0 {
            let mut verified = self.verified.write().unwrap_or_else(|p| p.into_inner());
            if verified.len() >= self.max_entries {
                verified.retain(|_, t| now < t.claims.exp);
                if verified.len() >= self.max_entries {
                    verified.clear();
                }
            }
            verified.insert(digest, Arc::clone(&token));
        }
        Ok(token)
    }

    async fn session(
        &self,
        store: &SharedStore,
        id: &SessionId,
        now: DateTime<Utc>,
    ) -> Lookup<Option<Arc<Session>>> {
        // The epoch before the cached copy: a change applied after this
        // point bumps it, and the copy may then no longer be served.
        let epoch = self.epoch.load(Ordering::Acquire);
        let cached = self.sessions.get(id);
        if let Some(entry) = &cached {
            if now < entry.fresh_until {
                return Lookup::Found(entry.value.clone());
            }
        }
        let read = store.session(id).await;
        match read {
            Ok(session) => {
                let session = session.map(Arc::new);
                self.sessions.insert(
                    id.clone(),
                    self.entry(session.clone(), now),
                    epoch,
                    &self.epoch,
                    now,
                );
                Lookup::Found(session)
            }
            Err(e) => self.stale(cached, epoch, &e, now),
        }
    }

    async fn key(
        &self,
        store: &SharedStore,
        id: &KeyId,
        now: DateTime<Utc>,
    ) -> Lookup<Option<Arc<Identity>>> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let cached = self.keys.get(id);
        if let Some(entry) = &cached {
            if now < entry.fresh_until {
                return Lookup::Found(Some(entry.value.clone()));
            }
        }
        match store.get_key(id).await {
            Ok(key) => {
                let cached = Arc::new(Identity::of(Arc::new(key)));
                self.keys.insert(
                    id.clone(),
                    self.entry(cached.clone(), now),
                    epoch,
                    &self.epoch,
                    now,
                );
                Lookup::Found(Some(cached))
            }
            Err(StoreError::NotFound(_)) => Lookup::Found(None),
            Err(e) => match self.stale(cached, epoch, &e, now) {
                Lookup::Found(key) => Lookup::Found(Some(key)),
                Lookup::Unavailable => Lookup::Unavailable,
            },
        }
    }

    fn entry<T>(&self, value: T, now: DateTime<Utc>) -> Cached<T> {
        let fresh_until = later(now, self.cache_ttl);
        Cached {
            value,
            fresh_until,
            stale_until: later(fresh_until, self.stale_if_error),
        }
    }

    /// A store read failed: serve the entry past its TTL while allowed, and
    /// only if no change was applied since `epoch` was read before taking
    /// it (the copy may predate a revocation the feed has since delivered).
    fn stale<T>(
        &self,
        cached: Option<Cached<T>>,
        epoch: u64,
        e: &StoreError,
        now: DateTime<Utc>,
    ) -> Lookup<T> {
        match e {
            StoreError::Unavailable(_) => debug!(error = %e, "key store lookup for an access token failed"),
            _ => warn!(error = %e, "key store lookup for an access token failed"),
        }
        match cached {
            Some(entry) if now < entry.stale_until && self.epoch.load(Ordering::Acquire) == epoch => {
                Lookup::Found(entry.value)
            }
            _ => Lookup::Unavailable,
        }
    }

    /// Drops the cached state of changed keys and sessions.
    pub(super) fn invalidate(&self, key_ids: &[KeyId], session_ids: &[SessionId]) {
        if key_ids.is_empty() && session_ids.is_empty() {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.keys.remove_all(key_ids);
        self.sessions.remove_all(session_ids);
    }

    /// Drops everything cached from the store.
    pub(super) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.keys.clear();
        self.sessions.clear();
    }

    /// Drops entries that can no longer be served.
    pub(super) fn sweep(&self, now: DateTime<Utc>) {
        self.keys.sweep(now);
        self.sessions.sweep(now);
        self.verified
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, t| now < t.claims.exp);
    }
}

/// `invalid_key` for a verified token its session or key refuses; the log
/// line names the reason and the session.
fn refused(e: &TokenError, claims: &AccessClaims) -> AuthError {
    debug!(error = %e, session_id = %claims.sid, key_id = %claims.sub, "access token refused");
    AuthError::invalid(InvalidReason::Token(log_reason(e)), None)
}

/// The request log's `reason` for a refused token: the token error's reason,
/// marked as a token's so it does not read like the key's own state.
fn log_reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::TooLong { .. } => "token_too_long",
        TokenError::Malformed { .. } => "token_malformed",
        TokenError::AlgNone => "token_alg_none",
        TokenError::MissingKid => "token_missing_kid",
        TokenError::UnknownKid(_) => "token_unknown_kid",
        TokenError::AlgorithmMismatch { .. } => "token_algorithm_mismatch",
        TokenError::CriticalHeader => "token_critical_header",
        TokenError::WrongType => "token_wrong_type",
        TokenError::BadSignature { .. } => "token_bad_signature",
        TokenError::Expired { .. } => "token_expired",
        TokenError::NotYetValid { .. } => "token_not_yet_valid",
        TokenError::WrongAudience => "token_wrong_audience",
        TokenError::WrongIssuer => "token_wrong_issuer",
        TokenError::UnknownSession => "token_unknown_session",
        TokenError::SessionMismatch => "token_session_mismatch",
        TokenError::SessionRevoked { .. } => "token_session_revoked",
    }
}

/// `at + d`, saturating at the end of time.
fn later(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn entry(value: u32, until: i64) -> Cached<u32> {
        Cached {
            value,
            fresh_until: t(until),
            stale_until: t(until),
        }
    }

    #[test]
    fn jwt_shapes_go_to_the_token_path_and_keys_do_not() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("kg_live_AbCdEfGh0123456789abcdefABCDEF"));
        assert!(!looks_like_jwt("eyJ.only-one-dot"));
        assert!(!looks_like_jwt("eyJ.a.b.c"));
        assert!(!looks_like_jwt("abc.def.ghi"));
    }

    #[test]
    fn an_invalidation_during_a_read_keeps_the_stale_value_out() {
        let epoch = AtomicU64::new(0);
        let cache: ReadCache<&str, u32> = ReadCache::new(10);
        // A read starts (epoch 0), a change is applied meanwhile (epoch 1):
        // what the read found predates the change and must not be cached.
        let read_at = epoch.load(Ordering::Acquire);
        epoch.fetch_add(1, Ordering::AcqRel);
        cache.remove_all([&"k"]);
        cache.insert("k", entry(1, 60), read_at, &epoch, t(0));
        assert!(cache.get(&"k").is_none());
        // A read that started after the change is cached.
        let read_at = epoch.load(Ordering::Acquire);
        cache.insert("k", entry(2, 60), read_at, &epoch, t(0));
        assert_eq!(cache.get(&"k").map(|e| e.value), Some(2));
    }

    #[test]
    fn the_read_cache_is_bounded_and_drops_dead_entries_first() {
        let epoch = AtomicU64::new(0);
        let cache: ReadCache<u32, u32> = ReadCache::new(3);
        cache.insert(1, entry(1, 5), 0, &epoch, t(0));
        cache.insert(2, entry(2, 60), 0, &epoch, t(0));
        cache.insert(3, entry(3, 60), 0, &epoch, t(0));
        // Full at t=10: the entry dead since t=5 goes, the live ones stay.
        cache.insert(4, entry(4, 60), 0, &epoch, t(10));
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&1).is_none());
        assert!(cache.get(&2).is_some() && cache.get(&3).is_some() && cache.get(&4).is_some());
        // Full of live entries: one goes, never more than the bound.
        cache.insert(5, entry(5, 60), 0, &epoch, t(10));
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&5).is_some());
        cache.sweep(t(61));
        assert_eq!(cache.len(), 0);
        // A zero bound caches nothing.
        let none: ReadCache<u32, u32> = ReadCache::new(0);
        none.insert(1, entry(1, 60), 0, &epoch, t(0));
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn every_token_error_has_a_marked_log_reason() {
        let errors = [
            TokenError::TooLong { len: 9000 },
            TokenError::Malformed { what: "header" },
            TokenError::AlgNone,
            TokenError::MissingKid,
            TokenError::UnknownKid("k".into()),
            TokenError::CriticalHeader,
            TokenError::WrongType,
            TokenError::BadSignature { kid: "k".into() },
            TokenError::Expired { exp: t(0) },
            TokenError::NotYetValid { not_before: t(0) },
            TokenError::WrongAudience,
            TokenError::WrongIssuer,
            TokenError::UnknownSession,
            TokenError::SessionMismatch,
        ];
        for e in &errors {
            assert_eq!(log_reason(e), format!("token_{}", e.reason()), "{e:?}");
        }
    }
}
