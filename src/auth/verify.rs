//! Presented key → [`Principal`] or [`AuthError`], fast.
//!
//! The order of work, cheapest first:
//! 1. Size check, then a keyed digest of the presented value and a look in
//!    the positive cache. A fresh hit answers with no store call, no `.await`
//!    and no allocation; only the key's state (revoked, inactive, expired at
//!    `now`, rotation grace) is checked, on every request, so an expiry
//!    takes effect at its instant, not at the cache TTL.
//! 2. On a miss, requests for the same digest are coalesced (single flight):
//!    N simultaneous first requests with one key cost one verification.
//! 3. The format: a keygate key's checksum, else one of the store's imported
//!    prefixes; anything else is refused without a store lookup.
//! 4. Per short prefix: the negative cache, the failure throttle, then the
//!    store's candidates and argon2 on `spawn_blocking` behind a semaphore.
//!    A verified secret is cached; a failure counts against its prefix.
//!
//! An entry past its TTL is refreshed by re-reading the candidates: if the
//! same stored hash is still there the entry is renewed without argon2; if
//! the store fails, it keeps serving up to `stale_if_error` past its TTL.
//! Changes made elsewhere arrive through [`Authenticator::poll_changes`]
//! (`feed.rs`), which the change poller runs every `poll_interval` and,
//! when the store pushes change notifications (Postgres), as soon as one
//! arrives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::{OnceCell, Semaphore};
use tracing::{debug, error, warn};

use super::cache::{AuthCache, Digest, DigestKey, DigestMap, FailureThrottle, Verified};
use super::token::{TokenAuth, looks_like_jwt};
use super::{AuthError, AuthFailure, AuthSettings, AuthStats, InvalidReason, Principal};
use crate::clock::SharedClock;
use crate::keys::format::{self, KeyFormatError, MAX_KEY_LEN};
use crate::keys::hash::ScratchPool;
use crate::keys::{SecretRecord, SecretStr};
use crate::store::{Candidate, SharedStore, StoreError};
use crate::token::Tokens;

/// While the store fails, an entry served past its TTL asks the store again
/// at most this often (instead of on every request, each waiting for the
/// store's timeout).
const STALE_RETRY: Duration = Duration::seconds(1);

/// The outcome of one coalesced resolution, shared by its waiters.
type Resolution = Result<Verified, AuthError>;

#[derive(Debug, Default)]
pub(super) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    hashes: AtomicU64,
    throttled: AtomicU64,
    coalesced: AtomicU64,
    stale_served: AtomicU64,
    store_errors: AtomicU64,
    /// Changes applied from the store's change feed.
    pub(super) changes_applied: AtomicU64,
    /// Requests waiting for an argon2 permit right now.
    hash_waiting: AtomicU64,
    /// Milliseconds between the newest applied change's commit and its
    /// application here (the last batch's).
    pub(super) feed_lag_ms: AtomicU64,
    /// Whether the last change-feed poll failed.
    pub(super) feed_failing: AtomicBool,
}

/// Checks presented keys against the store, with a verified-key cache kept
/// current by the store's change feed. Share it as `Arc<Authenticator>`.
pub struct Authenticator {
    pub(super) store: SharedStore,
    pub(super) clock: SharedClock,
    pub(super) settings: AuthSettings,
    cache_ttl: Duration,
    negative_ttl: Duration,
    stale_if_error: Duration,
    digest_key: DigestKey,
    pub(super) cache: AuthCache,
    pub(super) throttle: FailureThrottle,
    // std `Mutex`: held only to join or leave a flight, never across an
    // `.await` (the flight itself is awaited outside it).
    flights: Flights,
    hash_permits: Arc<Semaphore>,
    /// argon2 working memory, one buffer per permit.
    scratch: Arc<ScratchPool>,
    // std `RwLock` around an `Arc`: misses clone the `Arc` and let go at
    // once; the poller swaps in a new list after an import.
    pub(super) imported_prefixes: RwLock<Arc<[String]>>,
    // tokio `Mutex`: held across the feed's store calls on purpose, so two
    // polls never interleave their cursor updates. Never on the request path.
    pub(super) last_seq: tokio::sync::Mutex<i64>,
    pub(super) counters: Counters,
    /// Access tokens as credentials, when `[tokens]` is on.
    pub(super) tokens: Option<TokenAuth>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("store", &self.store)
            .field("settings", &self.settings)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over `store`. Reads the store's change sequence
    /// (changes before it are already reflected in what a cold cache reads)
    /// and its imported prefixes; fails if the store cannot answer.
    pub async fn start(
        store: SharedStore,
        settings: AuthSettings,
        clock: SharedClock,
    ) -> Result<Arc<Self>, StoreError> {
        Self::start_with_tokens(store, settings, clock, None).await
    }

    /// [`Authenticator::start`], also accepting the access tokens of
    /// `tokens` (SPEC §8) as credentials.
    pub async fn start_with_tokens(
        store: SharedStore,
        settings: AuthSettings,
        clock: SharedClock,
        tokens: Option<Arc<Tokens>>,
    ) -> Result<Arc<Self>, StoreError> {
        // The sequence first: an import landing between the two reads is
        // then replayed by the first poll.
        let seq = store.change_seq().await?;
        let prefixes = store.imported_prefixes().await?;
        let to_chrono = |d: StdDuration| Duration::from_std(d).unwrap_or(Duration::MAX);
        let tokens = tokens.map(|tokens| {
            TokenAuth::new(
                tokens,
                settings.max_entries,
                to_chrono(settings.cache_ttl),
                to_chrono(settings.stale_if_error),
            )
        });
        Ok(Arc::new(Self {
            tokens,
            cache_ttl: to_chrono(settings.cache_ttl),
            negative_ttl: to_chrono(settings.negative_ttl),
            stale_if_error: to_chrono(settings.stale_if_error),
            digest_key: DigestKey::random(),
            cache: AuthCache::new(settings.max_entries),
            throttle: FailureThrottle::new(
                settings.max_failures_per_prefix,
                settings.max_failures_per_second,
            ),
            flights: Mutex::new(DigestMap::default()),
            hash_permits: Arc::new(Semaphore::new(settings.hash_concurrency.max(1))),
            scratch: Arc::new(ScratchPool::new(settings.hash_concurrency)),
            imported_prefixes: RwLock::new(prefixes.into_iter().collect()),
            last_seq: tokio::sync::Mutex::new(seq),
            counters: Counters::default(),
            store,
            clock,
            settings,
        }))
    }

    /// Authenticates a presented credential: an access token when token
    /// exchange is on and it has a JWT's shape, else an API key.
    pub async fn authenticate(&self, presented: SecretStr<'_>) -> Result<Principal, AuthError> {
        if let Some(tokens) = &self.tokens {
            if looks_like_jwt(presented.expose()) {
                let now = self.clock.now();
                return tokens
                    .authenticate(&self.store, presented.expose(), now, &self.counters.store_errors)
                    .await;
            }
        }
        self.authenticate_key(presented).await
    }

    /// Authenticates a presented API key (never an access token: the token
    /// exchange takes keys only).
    pub async fn authenticate_key(&self, presented: SecretStr<'_>) -> Result<Principal, AuthError> {
        let presented_key = presented.expose();
        if presented_key.is_empty() || presented_key.len() > MAX_KEY_LEN {
            return Err(AuthError::invalid(InvalidReason::Malformed, None));
        }
        let now = self.clock.now();
        let digest = self.digest_key.digest(presented_key);
        // Only a secret that verified has an entry, so a hit needs no format
        // check: the parse (and its allocations) is left to misses.
        if let Some(answer) = self.cache.fresh(&digest, now, |v| admit(v, now)) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return answer;
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        // Boxed: the miss path (store reads, argon2 on a blocking thread)
        // is a large state machine that a cache hit never enters; unboxed it
        // would size every request's future.
        match Box::pin(self.resolve_once(digest, presented)).await {
            Ok(verified) => admit(&verified, now),
            Err(e) => {
                if e.failure == AuthFailure::Invalid(InvalidReason::Throttled) {
                    self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// Positive cache entries held.
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Counters since start, for metrics.
    pub fn stats(&self) -> AuthStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuthStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            hashes: get(&c.hashes),
            throttled: get(&c.throttled),
            coalesced: get(&c.coalesced),
            stale_served: get(&c.stale_served),
            store_errors: get(&c.store_errors),
            flooded: self.throttle.flooded(self.clock.now()),
            changes_applied: get(&c.changes_applied),
            hash_queue_depth: get(&c.hash_waiting),
            change_feed_lag: StdDuration::from_millis(get(&c.feed_lag_ms)),
            store_up: !c.feed_failing.load(Ordering::Relaxed),
            cached_entries: self.cache.len(),
        }
    }

    /// Flights in progress (tests check that finished ones leave no trace).
    #[cfg(test)]
    pub(super) fn flights_in_progress(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn store_ready(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// Joins the flight for `digest`, or starts it. Whoever is awaiting when
    /// the flight's future runs drives it; if that request is cancelled, the
    /// next waiter takes over (`OnceCell` semantics), so cancellation never
    /// strands the others.
    async fn resolve_once(&self, digest: Digest, presented: SecretStr<'_>) -> Resolution {
        let flight = Flight::join(&self.flights, digest);
        let ran = AtomicBool::new(false);
        let resolution = flight
            .cell
            .get_or_init(|| {
                ran.store(true, Ordering::Relaxed);
                self.resolve(digest, presented)
            })
            .await
            .clone();
        if !ran.load(Ordering::Relaxed) {
            self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        resolution
    }

    /// The miss path for one digest.
    async fn resolve(&self, digest: Digest, presented: SecretStr<'_>) -> Resolution {
        // Read before any store read whose result may be cached (see
        // cache.rs on the invalidation race).
        let epoch = self.cache.epoch();
        let now = self.clock.now();
        if let Some((verified, fresh_until, stale_until)) = self.cache.get(&digest) {
            if now < fresh_until {
                // A flight for this digest finished between our cache look
                // and joining: its result is already here.
                return Ok(verified);
            }
            if let Some(resolution) = self.refresh(digest, verified, stale_until, epoch, now).await {
                return resolution;
            }
        }
        self.verify(digest, presented, epoch).await
    }

    /// Renews an entry past its TTL without argon2 when its stored hash is
    /// still there; `None` when it is gone (verify from scratch).
    async fn refresh(
        &self,
        digest: Digest,
        verified: Verified,
        stale_until: DateTime<Utc>,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> Option<Resolution> {
        let short = verified.secret.short_prefix.as_str();
        match self.store.find_candidates(short).await {
            Err(e) => {
                self.store_failed(&e, short);
                // Not if a change was applied meanwhile: the copy may
                // predate a revocation the feed has since delivered.
                if now < stale_until && self.cache.epoch() == epoch {
                    self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    self.cache.extend(&digest, later(now, STALE_RETRY));
                    Some(Ok(verified))
                } else {
                    Some(Err(AuthError::new(AuthFailure::Unavailable, Some(short))))
                }
            }
            Ok(candidates) => {
                let same = candidates
                    .into_iter()
                    .find(|c| c.key.id == verified.key().id && c.secret.hash == verified.secret.hash);
                match same {
                    Some(candidate) => {
                        let renewed = verified_from(candidate);
                        self.remember(digest, &renewed, epoch);
                        Some(Ok(renewed))
                    }
                    None => {
                        self.cache.remove(&digest);
                        None
                    }
                }
            }
        }
    }

    /// Format, negative cache, throttle, store, argon2.
    async fn verify(&self, digest: Digest, presented: SecretStr<'_>, epoch: u64) -> Resolution {
        let presented_key = presented.expose();
        let short_prefixes = match format::parse_generated(presented_key) {
            Ok(parts) => vec![parts.short_prefix],
            Err(e) => {
                let reason = match e {
                    KeyFormatError::BadChecksum => InvalidReason::BadChecksum,
                    _ => InvalidReason::Malformed,
                };
                // Not printable ASCII (or too long): no stored key, imported
                // ones included, can look like that.
                if e == KeyFormatError::BadCharacters {
                    return Err(AuthError::invalid(reason, None));
                }
                let shorts = self.imported_short_prefixes(presented_key);
                if shorts.is_empty() {
                    return Err(AuthError::invalid(reason, None));
                }
                shorts
            }
        };
        let first_short = short_prefixes.first().map(String::as_str);

        let now = self.clock.now();
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut throttled = false;
        for short in &short_prefixes {
            if self.cache.is_unknown(short, now) {
                continue;
            }
            if self.throttle.is_throttled(short, now) {
                throttled = true;
                continue;
            }
            let found = match self.store.find_candidates(short).await {
                Ok(found) => found,
                Err(e) => {
                    self.store_failed(&e, short);
                    return Err(AuthError::new(AuthFailure::Unavailable, Some(short)));
                }
            };
            if found.is_empty() {
                self.cache
                    .insert_unknown(short, later(now, self.negative_ttl), epoch, self.clock.now());
            }
            candidates.extend(found);
        }
        if candidates.is_empty() {
            let reason = if throttled {
                InvalidReason::Throttled
            } else {
                InvalidReason::UnknownPrefix
            };
            return Err(AuthError::invalid(reason, first_short));
        }

        self.counters.hash_waiting.fetch_add(1, Ordering::Relaxed);
        let acquired = Arc::clone(&self.hash_permits).acquire_owned().await;
        self.counters.hash_waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(permit) = acquired else {
            // The semaphore is never closed; answer as an internal failure
            // rather than panic if that ever changes.
            return Err(AuthError::new(AuthFailure::Unavailable, first_short));
        };
        // Failures may have piled up while this request queued for a permit:
        // check again, so a flood never hashes past the limit by more than
        // the permits in flight.
        let now = self.clock.now();
        candidates.retain(|c| !self.throttle.is_throttled(&c.secret.short_prefix, now));
        if candidates.is_empty() {
            return Err(AuthError::invalid(InvalidReason::Throttled, first_short));
        }
        let secret = presented.to_secret_string();
        let scratch = Arc::clone(&self.scratch);
        // The permit moves into the blocking task, so it is released when
        // hashing ends even if this request is cancelled meanwhile.
        let hashed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut ran = 0u64;
            let matched = candidates.iter().position(|c| {
                ran += 1;
                scratch.verify(secret.expose(), &c.secret.hash)
            });
            (matched, ran, candidates)
        })
        .await;
        let (matched, ran, mut candidates) = match hashed {
            Ok(done) => done,
            Err(e) => {
                error!(error = %e, short_prefix = first_short, "an argon2 verification task failed");
                return Err(AuthError::new(AuthFailure::Unavailable, first_short));
            }
        };
        self.counters.hashes.fetch_add(ran, Ordering::Relaxed);
        match matched {
            Some(i) => {
                // Cached even when the key is revoked, inactive or past its
                // grace: the per-request check answers those, and a client
                // retrying with such a key then costs no argon2.
                let verified = verified_from(candidates.swap_remove(i));
                self.remember(digest, &verified, epoch);
                Ok(verified)
            }
            None => {
                let now = self.clock.now();
                let mut counted: Vec<&str> = Vec::with_capacity(1);
                for c in &candidates {
                    let short = c.secret.short_prefix.as_str();
                    if !counted.contains(&short) {
                        self.throttle.record_failure(short, now);
                        counted.push(short);
                    }
                }
                let refused = AuthError::invalid(InvalidReason::WrongSecret, first_short);
                // Counted on the key whose short prefix this is (SPEC §13),
                // when that is one key (imported prefixes may share one).
                match candidates.split_first() {
                    Some((first, rest)) if rest.iter().all(|c| c.key.id == first.key.id) => {
                        Err(refused.of_key(&Arc::from(first.key.id.as_str())))
                    }
                    _ => Err(refused),
                }
            }
        }
    }

    /// Caches a verified secret for `cache_ttl`.
    fn remember(&self, digest: Digest, verified: &Verified, epoch: u64) {
        let now = self.clock.now();
        let fresh_until = later(now, self.cache_ttl);
        let stale_until = later(fresh_until, self.stale_if_error);
        self.cache
            .insert(digest, verified.clone(), fresh_until, stale_until, epoch, now);
    }

    /// The short prefixes `presented` has under each known imported prefix.
    fn imported_short_prefixes(&self, presented: &str) -> Vec<String> {
        let prefixes = Arc::clone(&self.imported_prefixes.read().unwrap_or_else(|p| p.into_inner()));
        let mut shorts: Vec<String> = Vec::new();
        for prefix in prefixes.iter() {
            if let Some(parts) = format::imported_parts_for(presented, prefix) {
                if !shorts.contains(&parts.short_prefix) {
                    shorts.push(parts.short_prefix);
                }
            }
        }
        shorts
    }

    fn store_failed(&self, e: &StoreError, short_prefix: &str) {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        match e {
            // An outage: the poller warns once and `/readyz` reports it; a
            // line per request would flood the log.
            StoreError::Unavailable(_) => {
                debug!(error = %e, short_prefix, "key store lookup failed");
            }
            // Anything else (a corrupt row, a database error) is a problem
            // to fix, not a degraded mode.
            _ => warn!(error = %e, short_prefix, "key store lookup failed"),
        }
    }
}

/// One in-progress resolution and how many requests are in it.
struct FlightSlot {
    cell: Arc<OnceCell<Resolution>>,
    members: usize,
}

/// The single-flight table.
type Flights = Mutex<DigestMap<FlightSlot>>;

/// A flight membership: leaving (on completion or cancellation) removes the
/// flight from the table when no one else is in it, so cancelled requests
/// never leave entries behind.
struct Flight<'a> {
    flights: &'a Flights,
    digest: Digest,
    cell: Arc<OnceCell<Resolution>>,
}

impl<'a> Flight<'a> {
    fn join(flights: &'a Flights, digest: Digest) -> Self {
        let mut table = flights.lock().unwrap_or_else(|p| p.into_inner());
        let slot = table.entry(digest).or_insert_with(|| FlightSlot {
            cell: Arc::new(OnceCell::new()),
            members: 0,
        });
        slot.members += 1;
        Self {
            flights,
            digest,
            cell: Arc::clone(&slot.cell),
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut table = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = table.get_mut(&self.digest) {
            if Arc::ptr_eq(&slot.cell, &self.cell) {
                slot.members = slot.members.saturating_sub(1);
                if slot.members == 0 {
                    table.remove(&self.digest);
                }
            }
        }
    }
}

fn verified_from(candidate: Candidate) -> Verified {
    Verified::new(candidate.key, candidate.secret)
}

/// The per-request decision on a verified secret, in SPEC §4's order. The
/// secret comes first: a previous secret past its grace is no longer the
/// key's, so its holder learns nothing about the key's state.
fn admit(verified: &Verified, now: DateTime<Utc>) -> Result<Principal, AuthError> {
    let short = Some(verified.secret.short_prefix.as_str());
    // The entry and the identity only: the key's other data is cold.
    let key_id = &verified.identity.key_id;
    if !SecretRecord::usable_until(verified.secret_valid_until, now) {
        return Err(AuthError::invalid(InvalidReason::GraceOver, short).of_key(key_id));
    }
    if let Some(failure) = AuthFailure::of_state(verified.identity.state_at(now)) {
        return Err(AuthError::new(failure, short).of_key(key_id));
    }
    Ok(Principal {
        secret_valid_until: verified.secret_valid_until,
        grant: None,
        identity: Arc::clone(&verified.identity),
    })
}

/// `at + d`, saturating at the end of time instead of overflowing.
fn later(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
