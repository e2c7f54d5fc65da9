//! The authenticator's memory: verified secrets (positive entries), short
//! prefixes known to have no stored secret (negative entries), and per-prefix
//! failure windows (the throttle).
//!
//! Positive entries are keyed by a keyed BLAKE3 digest of the presented
//! secret, never by the secret itself: the key is drawn from the OS RNG per
//! process, so the map holds nothing an attacker could replay or brute-force
//! offline, and bucket placement cannot be steered (no hash flooding). A
//! non-cryptographic hash would not do: a hit skips argon2, so a collision
//! would be an authentication bypass.
//!
//! Invalidation from the store's change feed races with misses that read the
//! store just before a change and insert just after it. An epoch counter
//! closes that window: a resolver reads the epoch before its store read, the
//! invalidator bumps it before removing anything, and inserts re-check it
//! under the lock the invalidator also takes, so a pre-change read never
//! lands in the cache after the change was applied.
//!
//! What to cache and when is decided by `verify.rs`; this file only keeps
//! the entries bounded, indexed and consistent.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use rand::RngCore;

use crate::keys::{Key, KeyId, SecretRecord};

/// Number of positive-cache shards. Readers of different shards never touch
/// the same lock word, which is what limits read scaling of an `RwLock`
/// across cores; 16 is plenty for the core counts a gateway runs on.
const SHARDS: usize = 16;

/// Per-prefix failure windows tracked at once before windows of earlier
/// seconds are dropped (entries exist only for short prefixes that exist in
/// the store and failed, so this is a safety bound, not a working limit).
const MAX_FAILURE_WINDOWS: usize = 65_536;

/// Keyed BLAKE3 digest of a presented secret: the positive cache's key.
///
/// Equality is not constant-time, and need not be: without the per-process
/// key an attacker cannot compute any digest, so timing reveals nothing about
/// a secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest([u8; 32]);

impl Digest {
    fn shard(&self) -> usize {
        // The last byte picks the shard, the first eight feed the map's
        // hasher, so the two are independent.
        usize::from(self.0[31]) % SHARDS
    }
}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The digest is already uniformly random (and keyed), so its first
        // eight bytes are as good a hash as SipHash of all 32, for free.
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        state.write_u64(u64::from_le_bytes([a, b, c, d, e, f, g, h]));
    }
}

/// A hasher that passes a [`Digest`]'s pre-mixed `u64` through.
#[derive(Default)]
pub(super) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `Digest::hash` feeds this
        // hasher; fold the bytes so it still distributes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// A map keyed by digests, hashed with [`DigestHasher`].
pub(super) type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

/// The per-process key of the digest. No `Debug` output of its bytes.
pub(super) struct DigestKey([u8; 32]);

impl DigestKey {
    /// A fresh key from the OS CSPRNG.
    pub(super) fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// The digest of a presented secret.
    pub(super) fn digest(&self, presented: &str) -> Digest {
        Digest(*blake3::keyed_hash(&self.0, presented.as_bytes()).as_bytes())
    }
}

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey([redacted])")
    }
}

/// A secret that verified: the key (in its identity) and the matched stored
/// secret, shared.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    /// The stored secret the presented one matched (its short prefix and
    /// hash let a refresh recognise it without argon2).
    pub(super) secret: Arc<SecretRecord>,
    /// `secret.valid_until` (the end of a rotation grace), copied so that a
    /// cache hit reads only the entry and the identity.
    pub(super) secret_valid_until: Option<DateTime<Utc>>,
    /// The key's identity and hot record (log fields, upstream headers,
    /// state), built once; it holds the key's metadata.
    pub(super) identity: Arc<super::Identity>,
}

impl Verified {
    /// The verified pair of `key` and its matched `secret`.
    pub(super) fn new(key: Key, secret: SecretRecord) -> Self {
        Self {
            secret_valid_until: secret.valid_until,
            secret: Arc::new(secret),
            identity: Arc::new(super::Identity::of(Arc::new(key))),
        }
    }

    /// The key's metadata.
    pub(super) fn key(&self) -> &Arc<Key> {
        &self.identity.key
    }
}

struct Entry {
    verified: Verified,
    /// Served without asking the store until then.
    fresh_until: DateTime<Utc>,
    /// Past `fresh_until` and while the store fails, served until then.
    stale_until: DateTime<Utc>,
}

/// Which digests belong to which key, for invalidation by key id, plus the
/// eviction cursor. Guarded by one mutex that every positive-cache writer
/// takes before any shard lock (lock order: index, then shard).
#[derive(Default)]
struct Index {
    by_key: HashMap<KeyId, Vec<Digest>>,
    evict_cursor: usize,
}

impl Index {
    fn add(&mut self, key_id: &KeyId, digest: Digest) {
        let digests = self.by_key.entry(key_id.clone()).or_default();
        if !digests.contains(&digest) {
            digests.push(digest);
        }
    }

    fn forget(&mut self, key_id: &KeyId, digest: &Digest) {
        if let Some(digests) = self.by_key.get_mut(key_id) {
            digests.retain(|d| d != digest);
            if digests.is_empty() {
                self.by_key.remove(key_id);
            }
        }
    }
}

/// Positive and negative entries.
pub(super) struct AuthCache {
    // std `RwLock`, not tokio's: every critical section is a few map
    // operations with no `.await` inside, and the hit path must not yield.
    shards: [RwLock<DigestMap<Entry>>; SHARDS],
    index: Mutex<Index>,
    /// Positive entries held; changed only under `index`.
    len: AtomicUsize,
    max_entries: usize,
    epoch: AtomicU64,
    unknown: RwLock<HashMap<String, DateTime<Utc>>>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache")
            .field("len", &self.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl AuthCache {
    /// An empty cache of at most `max_entries` positive entries (and as many
    /// negative ones); zero disables both.
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| RwLock::new(DigestMap::default())),
            index: Mutex::new(Index::default()),
            len: AtomicUsize::new(0),
            max_entries,
            epoch: AtomicU64::new(0),
            unknown: RwLock::new(HashMap::new()),
        }
    }

    /// Positive entries held.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The invalidation epoch; read it before a store read whose result may
    /// be inserted.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The hit path: runs `f` on a fresh entry under the shard's read lock
    /// (no clone, no allocation), or `None` when absent or past its TTL.
    pub(super) fn fresh<R>(
        &self,
        digest: &Digest,
        now: DateTime<Utc>,
        f: impl FnOnce(&Verified) -> R,
    ) -> Option<R> {
        let shard = self.shards[digest.shard()]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let entry = shard.get(digest)?;
        (now < entry.fresh_until).then(|| f(&entry.verified))
    }

    /// Any entry, fresh or not, with its `fresh_until` and `stale_until`.
    pub(super) fn get(&self, digest: &Digest) -> Option<(Verified, DateTime<Utc>, DateTime<Utc>)> {
        let shard = self.shards[digest.shard()]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        shard
            .get(digest)
            .map(|e| (e.verified.clone(), e.fresh_until, e.stale_until))
    }

    /// Inserts (or replaces) a verified entry, unless an invalidation ran
    /// since `seen_epoch` was read (the data may predate it) or the cache is
    /// disabled. Evicts to stay within `max_entries`. Returns whether the
    /// entry was stored.
    pub(super) fn insert(
        &self,
        digest: Digest,
        verified: Verified,
        fresh_until: DateTime<Utc>,
        stale_until: DateTime<Utc>,
        seen_epoch: u64,
        now: DateTime<Utc>,
    ) -> bool {
        if self.max_entries == 0 {
            return false;
        }
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::SeqCst) != seen_epoch {
            return false;
        }
        let key_id = verified.key().id.clone();
        let entry = Entry {
            verified,
            fresh_until,
            stale_until,
        };
        let replaced = self.shards[digest.shard()]
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, entry);
        match replaced {
            Some(old) if old.verified.key().id != key_id => index.forget(&old.verified.key().id, &digest),
            Some(_) => {}
            None => {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        index.add(&key_id, digest);
        if self.len() > self.max_entries {
            self.evict(&mut index, digest, now);
        }
        true
    }

    /// Keeps serving an entry past its TTL (the store failed): it becomes
    /// fresh until `fresh_until`, which the caller keeps within the entry's
    /// `stale_until`. A no-op if the entry is gone.
    pub(super) fn extend(&self, digest: &Digest, fresh_until: DateTime<Utc>) {
        let mut shard = self.shards[digest.shard()]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = shard.get_mut(digest) {
            entry.fresh_until = fresh_until.min(entry.stale_until);
        }
    }

    /// Drops one positive entry.
    pub(super) fn remove(&self, digest: &Digest) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let removed = self.shards[digest.shard()]
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        if let Some(entry) = removed {
            index.forget(&entry.verified.key().id, digest);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Applies changes from the store: every positive entry of `key_ids` and
    /// every negative entry of `short_prefixes` goes. The epoch moves first,
    /// so resolvers that read the store before this call cannot re-insert
    /// what it removes.
    pub(super) fn invalidate(&self, key_ids: &[KeyId], short_prefixes: &[String]) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            for key_id in key_ids {
                let Some(digests) = index.by_key.remove(key_id) else {
                    continue;
                };
                for digest in digests {
                    let mut shard = self.shards[digest.shard()]
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    if shard.get(&digest).is_some_and(|e| e.verified.key().id == *key_id) {
                        shard.remove(&digest);
                        self.len.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if !short_prefixes.is_empty() {
            let mut unknown = self.unknown.write().unwrap_or_else(|p| p.into_inner());
            for short in short_prefixes {
                unknown.remove(short.as_str());
            }
        }
    }

    /// Forgets everything (the store went back in time).
    pub(super) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        for shard in &self.shards {
            shard.write().unwrap_or_else(|p| p.into_inner()).clear();
        }
        index.by_key.clear();
        self.len.store(0, Ordering::Relaxed);
        drop(index);
        self.unknown.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Drops entries that can no longer be served even as stale, and expired
    /// negative entries, so memory follows the working set between
    /// evictions.
    pub(super) fn sweep(&self, now: DateTime<Utc>) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        for shard in &self.shards {
            let mut shard = shard.write().unwrap_or_else(|p| p.into_inner());
            shard.retain(|digest, entry| {
                let keep = now < entry.stale_until;
                if !keep {
                    index.forget(&entry.verified.key().id, digest);
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
        }
        drop(index);
        self.unknown
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| now < *until);
    }

    /// Makes room below `max_entries`, cheaply: shard by shard from a
    /// rotating cursor, entries past their TTL first, then arbitrary ones
    /// (hash order), freeing a batch at a time so eviction is rare. The entry
    /// just inserted (`keep`) stays.
    fn evict(&self, index: &mut Index, keep: Digest, now: DateTime<Utc>) {
        let batch = (self.max_entries / 64).max(1);
        let target = self.max_entries.saturating_sub(batch).max(1);
        for _ in 0..SHARDS {
            let cursor = index.evict_cursor;
            index.evict_cursor = (cursor + 1) % SHARDS;
            let mut shard = self.shards[cursor].write().unwrap_or_else(|p| p.into_inner());
            for expired_only in [true, false] {
                shard.retain(|digest, entry| {
                    let over = self.len() > target;
                    let evict = over && *digest != keep && (!expired_only || entry.fresh_until <= now);
                    if evict {
                        index.forget(&entry.verified.key().id, digest);
                        self.len.fetch_sub(1, Ordering::Relaxed);
                    }
                    !evict
                });
            }
            if self.len() <= target {
                return;
            }
        }
    }

    /// Whether `short_prefix` is remembered as having no stored secret.
    pub(super) fn is_unknown(&self, short_prefix: &str, now: DateTime<Utc>) -> bool {
        self.unknown
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(short_prefix)
            .is_some_and(|until| now < *until)
    }

    /// Remembers that `short_prefix` has no stored secret until `until`,
    /// unless an invalidation ran since `seen_epoch` (a key may have been
    /// created for it since the store was read).
    pub(super) fn insert_unknown(
        &self,
        short_prefix: &str,
        until: DateTime<Utc>,
        seen_epoch: u64,
        now: DateTime<Utc>,
    ) {
        if self.max_entries == 0 || until <= now {
            return;
        }
        let mut unknown = self.unknown.write().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::SeqCst) != seen_epoch {
            return;
        }
        if unknown.len() >= self.max_entries {
            unknown.retain(|_, until| now < *until);
            if unknown.len() >= self.max_entries {
                // Still full of live entries: a flood of distinct unknown
                // prefixes. Keeping the old ones protects nothing the flood
                // is not already costing, so start over.
                unknown.clear();
            }
        }
        unknown.insert(short_prefix.to_owned(), until);
    }
}

/// Failed verifications per short prefix, per wall-clock second (SPEC §2),
/// and a gateway-wide budget on top.
///
/// The per-prefix limit alone bounds hashing per *prefix*: a flood that
/// spreads forged secrets over many existing short prefixes (they are public:
/// listings and logs show them) would still cost up to `max_failures` hashes
/// a second for each. So failures are also counted gateway-wide, and once
/// `max_failures_per_second` of them land within one second the gateway is
/// under a forgery flood: for as long as that lasts plus [`FLOOD_MEMORY`],
/// any prefix that failed within the last [`FLOOD_MEMORY`] is refused
/// without hashing. A flood then costs at most the global budget plus one
/// hash per attacked prefix per [`FLOOD_MEMORY`], while prefixes that have
/// not failed (the keys of everyone not under attack) still verify and
/// cached secrets keep working.
#[derive(Debug)]
pub(super) struct FailureThrottle {
    max_failures: u32,
    max_failures_per_second: u32,
    // std `Mutex`: a lookup or an increment, never across an `.await`; only
    // misses take it.
    state: Mutex<ThrottleState>,
}

/// How long a failed prefix stays refused while a flood lasts, and how long
/// the flood is remembered after its last over-budget second (60 s: an
/// attacker cycling through N prefixes costs N/60 hashes a second).
pub(super) const FLOOD_MEMORY: i64 = 60;

#[derive(Debug, Default)]
struct ThrottleState {
    windows: HashMap<String, Window>,
    /// Gateway-wide failures in `global.second`.
    global: Window,
    /// The last second whose failures exceeded the gateway-wide budget.
    flood_second: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// Unix second the count belongs to.
    second: i64,
    failures: u32,
}

impl ThrottleState {
    fn flooded(&self, second: i64) -> bool {
        self.flood_second
            .is_some_and(|flood| second - flood < FLOOD_MEMORY)
    }
}

impl FailureThrottle {
    /// Refuses a prefix once it has `max_failures` failures (at least 1) in
    /// the current second, and every recently failed prefix while the whole
    /// gateway sees more than `max_failures_per_second` (at least 1).
    pub(super) fn new(max_failures: u32, max_failures_per_second: u32) -> Self {
        Self {
            max_failures: max_failures.max(1),
            max_failures_per_second: max_failures_per_second.max(1),
            state: Mutex::new(ThrottleState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether secrets for `short_prefix` must be refused without hashing
    /// now.
    pub(super) fn is_throttled(&self, short_prefix: &str, now: DateTime<Utc>) -> bool {
        let second = now.timestamp();
        let state = self.lock();
        let Some(window) = state.windows.get(short_prefix) else {
            return false;
        };
        (window.second == second && window.failures >= self.max_failures)
            || (state.flooded(second) && second - window.second < FLOOD_MEMORY)
    }

    /// Whether the gateway is in a forgery flood at `now`.
    pub(super) fn flooded(&self, now: DateTime<Utc>) -> bool {
        self.lock().flooded(now.timestamp())
    }

    /// Counts one failed verification for `short_prefix` at `now`.
    pub(super) fn record_failure(&self, short_prefix: &str, now: DateTime<Utc>) {
        let second = now.timestamp();
        let mut state = self.lock();
        if state.global.second == second {
            state.global.failures = state.global.failures.saturating_add(1);
        } else {
            state.global = Window { second, failures: 1 };
        }
        if state.global.failures > self.max_failures_per_second {
            state.flood_second = Some(second);
        }
        if let Some(window) = state.windows.get_mut(short_prefix) {
            if window.second == second {
                window.failures = window.failures.saturating_add(1);
            } else {
                *window = Window { second, failures: 1 };
            }
            return;
        }
        if state.windows.len() >= MAX_FAILURE_WINDOWS {
            // Keep what still refuses something: this second's counts, and
            // during a flood the recently failed prefixes.
            let keep_from = if state.flooded(second) {
                second - FLOOD_MEMORY + 1
            } else {
                second
            };
            state.windows.retain(|_, w| w.second >= keep_from);
        }
        state
            .windows
            .insert(short_prefix.to_owned(), Window { second, failures: 1 });
    }

    /// Drops windows that no longer refuse anything at `now`.
    pub(super) fn sweep(&self, now: DateTime<Utc>) {
        let second = now.timestamp();
        let mut state = self.lock();
        let keep_from = if state.flooded(second) {
            second - FLOOD_MEMORY + 1
        } else {
            second
        };
        state.windows.retain(|_, w| w.second >= keep_from);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::auth::IdentityHeader;
    use crate::keys::{KeyHash, KeySource, KeyStatus};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn verified(n: i64) -> Verified {
        let id = KeyId::generate(t(n));
        let key = Key {
            id: id.clone(),
            name: format!("k{n}"),
            owner: None,
            scopes: BTreeSet::new(),
            plan: Some("free".into()),
            status: KeyStatus::Active,
            expires_at: None,
            prefix: "kg_".into(),
            short_prefix: format!("{n:08}"),
            source: KeySource::Generated,
            metadata: serde_json::json!({}),
            created_at: t(0),
            updated_at: t(0),
            last_used_at: None,
            request_count: 0,
        };
        let secret = SecretRecord {
            key_id: id,
            prefix: "kg_".into(),
            short_prefix: format!("{n:08}"),
            hash: KeyHash::from_phc(format!("hash{n}")),
            valid_until: None,
        };
        Verified::new(key, secret)
    }

    #[test]
    fn identity_headers_carry_the_keys_values_and_skip_illegal_ones() {
        let mut key = Key::clone(verified(1).key());
        key.owner = Some("acme".into());
        key.scopes = ["orders:read", "orders:write"].map(String::from).into();
        let identity = crate::auth::Identity::of(Arc::new(key.clone()));
        let text = |which| {
            identity
                .header(which)
                .map(|v: http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        assert_eq!(text(IdentityHeader::KeyId).as_deref(), Some(key.id.as_str()));
        assert_eq!(text(IdentityHeader::Owner).as_deref(), Some("acme"));
        assert_eq!(
            text(IdentityHeader::Scopes).as_deref(),
            Some("orders:read,orders:write")
        );
        assert_eq!(text(IdentityHeader::Plan).as_deref(), Some("free"));

        key.owner = Some("bad\r\nx-evil: 1".into());
        key.scopes = BTreeSet::new();
        let identity = crate::auth::Identity::of(Arc::new(key.clone()));
        let text = |which| {
            identity
                .header(which)
                .map(|v: http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            text(IdentityHeader::Owner),
            None,
            "not a legal header value: left out"
        );
        assert_eq!(text(IdentityHeader::Scopes).as_deref(), Some(""));
        assert_eq!(
            text(IdentityHeader::Plan).as_deref(),
            Some("free"),
            "the rest unaffected"
        );
        key.owner = None;
        let identity = crate::auth::Identity::of(Arc::new(key.clone()));
        assert_eq!(
            identity.header(IdentityHeader::Owner),
            None,
            "no owner: no header"
        );

        // A long value shares the one buffer like the short ones.
        let owner = "o".repeat(300);
        key.owner = Some(owner.clone());
        let identity = crate::auth::Identity::of(Arc::new(key.clone()));
        let text = |which| {
            identity
                .header(which)
                .map(|v: http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        assert_eq!(text(IdentityHeader::Owner), Some(owner));
        assert_eq!(text(IdentityHeader::KeyId).as_deref(), Some(key.id.as_str()));
        assert_eq!(text(IdentityHeader::Plan).as_deref(), Some("free"));
    }

    #[test]
    fn the_identity_hot_fields_fit_in_two_cache_lines() {
        // An `Arc` puts its two counts first; the cold fields start at `key`.
        let hot_end = 2 * std::mem::size_of::<usize>() + std::mem::offset_of!(crate::auth::Identity, key);
        assert!(hot_end <= 128, "the hot fields end at byte {hot_end}");
    }

    #[test]
    fn the_hot_record_answers_as_the_key_does() {
        use crate::keys::{KeyState, KeyStatus};
        use crate::policy::scopes::first_missing;
        let base = Key::clone(verified(1).key());
        let sets: [&[&str]; 5] = [
            &["orders:read", "orders:write"],
            &[],
            // Not listable (a comma, an empty scope): the tree answers.
            &["a,b", "c"],
            &["", "x"],
            &["orders"],
        ];
        let asks: [&[&str]; 6] = [
            &["orders:read"],
            &["orders:write", "orders:read"],
            &["orders"],
            &["a", "b"],
            &["a,b", ""],
            &["orders:read", "x", "c"],
        ];
        for set in sets {
            let mut key = base.clone();
            key.scopes = set.iter().map(|s| (*s).to_owned()).collect();
            let identity = crate::auth::Identity::of(Arc::new(key.clone()));
            for ask in asks {
                assert_eq!(
                    identity.first_missing_scope(ask),
                    first_missing(ask, &key.scopes),
                    "granted {set:?}, required {ask:?}"
                );
            }
        }

        let now = t(100);
        for status in [KeyStatus::Active, KeyStatus::Inactive, KeyStatus::Revoked] {
            for expires_at in [None, Some(t(99)), Some(t(100)), Some(t(101))] {
                let mut key = base.clone();
                key.status = status;
                key.expires_at = expires_at;
                let identity = crate::auth::Identity::of(Arc::new(key.clone()));
                assert_eq!(identity.state_at(now), key.state_at(now));
            }
        }
        assert_eq!(
            crate::auth::Identity::of(Arc::new(base.clone())).state_at(now),
            KeyState::Active
        );

        for plan in ["free", "pro plan", "caf\u{e9}"] {
            let mut key = base.clone();
            key.plan = Some(plan.into());
            assert_eq!(crate::auth::Identity::of(Arc::new(key)).plan(), Some(plan));
        }
        let mut none = base.clone();
        none.plan = None;
        let identity = crate::auth::Identity::of(Arc::new(none));
        assert_eq!(identity.plan(), None);
        assert_eq!(identity.header(crate::auth::IdentityHeader::Plan), None);
    }

    fn digest(k: &DigestKey, n: i64) -> Digest {
        k.digest(&format!("secret-{n}"))
    }

    #[test]
    fn digests_are_keyed_per_process() {
        let (a, b) = (DigestKey::random(), DigestKey::random());
        assert_eq!(a.digest("kg_x").0, a.digest("kg_x").0);
        assert_ne!(a.digest("kg_x").0, a.digest("kg_y").0);
        assert_ne!(a.digest("kg_x").0, b.digest("kg_x").0);
        assert_eq!(format!("{a:?}"), "DigestKey([redacted])");
    }

    #[test]
    fn fresh_entries_hit_until_their_ttl() {
        let cache = AuthCache::new(10);
        let k = DigestKey::random();
        let d = digest(&k, 1);
        assert!(cache.insert(d, verified(1), t(60), t(120), cache.epoch(), t(0)));
        assert_eq!(
            cache.fresh(&d, t(59), |v| v.key().name.clone()),
            Some("k1".into())
        );
        assert_eq!(cache.fresh(&d, t(60), |_| ()), None);
        assert!(
            cache.get(&d).is_some(),
            "a stale entry is still there for a refresh"
        );
        cache.extend(&d, t(500));
        assert!(
            cache.fresh(&d, t(119), |_| ()).is_some(),
            "extended, but never past stale_until"
        );
        assert!(cache.fresh(&d, t(120), |_| ()).is_none());
        cache.sweep(t(120));
        assert!(cache.get(&d).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn invalidation_by_key_id_and_the_epoch_race() {
        let cache = AuthCache::new(10);
        let k = DigestKey::random();
        let v = verified(1);
        let id = v.key().id.clone();
        let (d1, d2) = (digest(&k, 1), digest(&k, 2));
        cache.insert(d1, v.clone(), t(60), t(60), cache.epoch(), t(0));
        cache.insert(d2, v.clone(), t(60), t(60), cache.epoch(), t(0));
        cache.insert(digest(&k, 3), verified(3), t(60), t(60), cache.epoch(), t(0));
        assert_eq!(cache.len(), 3);

        // A resolver read the store before the change...
        let seen = cache.epoch();
        cache.invalidate(std::slice::from_ref(&id), &[]);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&d1).is_none() && cache.get(&d2).is_none());
        // ...and must not put its pre-change result back.
        assert!(!cache.insert(d1, v.clone(), t(60), t(60), seen, t(0)));
        assert!(cache.insert(d1, v, t(60), t(60), cache.epoch(), t(0)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn negative_entries_expire_are_bounded_and_invalidated() {
        let cache = AuthCache::new(2);
        cache.insert_unknown("aaaaaaaa", t(5), cache.epoch(), t(0));
        assert!(cache.is_unknown("aaaaaaaa", t(4)));
        assert!(!cache.is_unknown("aaaaaaaa", t(5)));
        let seen = cache.epoch();
        cache.invalidate(&[], &["aaaaaaaa".into()]);
        assert!(!cache.is_unknown("aaaaaaaa", t(0)));
        cache.insert_unknown("bbbbbbbb", t(5), seen, t(0));
        assert!(!cache.is_unknown("bbbbbbbb", t(0)), "stale epoch");
        for short in ["c", "d", "e", "f"] {
            cache.insert_unknown(short, t(5), cache.epoch(), t(0));
        }
        assert!(cache.unknown.read().unwrap().len() <= 2);
        assert!(cache.is_unknown("f", t(0)));
        let disabled = AuthCache::new(0);
        disabled.insert_unknown("aaaaaaaa", t(5), disabled.epoch(), t(0));
        assert!(!disabled.is_unknown("aaaaaaaa", t(0)));
        assert!(!disabled.insert(digest(&DigestKey::random(), 1), verified(1), t(5), t(5), 0, t(0)));
    }

    #[test]
    fn eviction_keeps_the_cache_bounded_and_the_index_consistent() {
        let cache = AuthCache::new(100);
        let k = DigestKey::random();
        for n in 0..1_000 {
            // Every tenth entry is already past its TTL: those go first.
            let fresh_until = if n % 10 == 0 { t(0) } else { t(60) };
            let d = digest(&k, n);
            assert!(cache.insert(d, verified(n), fresh_until, t(60), cache.epoch(), t(1)));
            assert!(cache.len() <= 100, "{}", cache.len());
            assert!(cache.get(&d).is_some(), "the entry just inserted stays");
        }
        let indexed: usize = cache.index.lock().unwrap().by_key.values().map(Vec::len).sum();
        let stored: usize = cache.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert_eq!(indexed, stored);
        assert_eq!(stored, cache.len());
        cache.clear();
        assert_eq!(cache.len(), 0);
        assert!(cache.index.lock().unwrap().by_key.is_empty());
    }

    #[test]
    fn throttle_counts_per_prefix_per_second() {
        let throttle = FailureThrottle::new(3, 1000);
        let now = t(0);
        for _ in 0..2 {
            throttle.record_failure("aaaaaaaa", now);
        }
        assert!(!throttle.is_throttled("aaaaaaaa", now));
        throttle.record_failure("aaaaaaaa", now + Duration::milliseconds(900));
        assert!(throttle.is_throttled("aaaaaaaa", now + Duration::milliseconds(999)));
        assert!(!throttle.is_throttled("bbbbbbbb", now));
        assert!(!throttle.is_throttled("aaaaaaaa", now + Duration::seconds(1)));
        throttle.record_failure("aaaaaaaa", now + Duration::seconds(1));
        assert!(!throttle.is_throttled("aaaaaaaa", now + Duration::seconds(1)));
        throttle.sweep(now + Duration::seconds(2));
        assert!(throttle.state.lock().unwrap().windows.is_empty());
        let strict = FailureThrottle::new(0, 1000);
        strict.record_failure("aaaaaaaa", now);
        assert!(strict.is_throttled("aaaaaaaa", now), "0 acts as 1");
    }

    #[test]
    fn a_flood_over_many_prefixes_refuses_every_failed_prefix_for_a_minute() {
        let throttle = FailureThrottle::new(20, 5);
        let now = t(0);
        let prefix = |i: u32| format!("p{i:07}");
        // One failure each on five prefixes: within the global budget.
        for i in 0..5 {
            throttle.record_failure(&prefix(i), now);
        }
        assert!(!throttle.flooded(now));
        assert!(
            !throttle.is_throttled(&prefix(0), now),
            "one failure is below the per-prefix limit"
        );
        // The sixth failure in the second exceeds the budget: a flood.
        throttle.record_failure(&prefix(5), now);
        assert!(throttle.flooded(now));
        let later = now + Duration::seconds(FLOOD_MEMORY - 1);
        for i in 0..6 {
            assert!(
                throttle.is_throttled(&prefix(i), later),
                "prefix {i} failed during the flood"
            );
        }
        assert!(
            !throttle.is_throttled("untouched", later),
            "prefixes that never failed still verify"
        );
        // A prefix whose last failure is older than FLOOD_MEMORY is let through
        // again (once), even while the flood goes on.
        throttle.record_failure(&prefix(9), later);
        for i in 0..6 {
            throttle.record_failure(&prefix(100 + i), later);
        }
        let much_later = later + Duration::seconds(2);
        assert!(throttle.flooded(much_later), "the flood was renewed");
        assert!(!throttle.is_throttled(&prefix(0), much_later));
        assert!(throttle.is_throttled(&prefix(9), much_later));
        // The flood ends FLOOD_MEMORY after its last over-budget second.
        let after = later + Duration::seconds(FLOOD_MEMORY);
        assert!(!throttle.flooded(after));
        assert!(!throttle.is_throttled(&prefix(9), after));
        throttle.sweep(after);
        assert!(throttle.state.lock().unwrap().windows.is_empty());
    }
}
