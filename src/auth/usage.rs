//! Usage counting (request count and last use per key, outcome and minute:
//! the all-time counters and the usage history of SPEC §13), kept off the
//! request path: the proxy calls [`UsageRecorder::record`], which only
//! bumps an in-memory counter; a background flusher writes the counts to the
//! store every [`FLUSH_INTERVAL`]; the gateway calls [`UsageRecorder::flush`]
//! once more after draining on shutdown, so SIGTERM loses nothing.
//!
//! Design: counters live in 16 `std::sync::Mutex<HashMap>` shards keyed
//! by (key id, outcome, minute), picked by a hash of the key id; a flush
//! swaps each shard's map out wholesale. Chosen over a bounded channel
//! because a request then costs one short uncontended lock and a map update
//! instead of a message per request, memory is bounded by the distinct
//! (key, outcome, minute) triples seen per interval rather than by request
//! rate, and nothing is ever dropped on a traffic burst. A batch the store
//! refused is kept and merged into the next flush, bounded by a cap (the
//! oldest triples are dropped and counted past it).
//!
//! The most frequent triple, a key's forwarded (`ok`) requests, skips the map:
//! each cached key's [`Identity`] carries an [`OkCounter`], which a request
//! bumps with a few atomic operations on memory it has just read anyway; the
//! first bump after a flush queues the identity, and the flush drains the
//! queue into its batch. The counter holds one minute's count (minute and
//! count packed in one word, so a request changes both at once): the first
//! request of a new minute moves the previous minute's count to the shards.
//! With thousands of keys in rotation this is what keeps counting from
//! costing a cache miss per request.
//!
//! What counts as usage (identified keys only) is the caller's decision;
//! the store does the arithmetic.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Identity;
use crate::clock::SharedClock;
use crate::keys::KeyId;
use crate::keys::usage::Retention;
use crate::store::{SharedStore, StoreError, UsageDelta};

/// How often the background flusher writes counts to the store by default
/// (`usage.flush_interval`, 5 s: usage shown by the admin API lags by at
/// most about this). A flush writes a few rows per key, outcome and minute
/// seen since the last one, so on a busy gateway its cost grows with the
/// interval's distinct keys, not its requests: at 1 s (before the history),
/// 10,000 keys in rotation kept SQLite's writer at about 13% of the
/// gateway's CPU in `bench/proxy.sh`.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Usage counting settings (`[usage]`), filled by `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    /// How often counts are written to the store (`usage.flush_interval`).
    pub flush_interval: Duration,
    /// How long the history keeps each tier (`usage.retention.*`).
    pub retention: Retention,
}

impl UsageSettings {
    /// The defaults SPEC §13 gives.
    pub const DEFAULT: Self = Self {
        flush_interval: FLUSH_INTERVAL,
        retention: Retention::DEFAULT,
    };
}

/// Most (key, outcome, minute) triples kept for retry while the store
/// refuses batches (~100 bytes each, so about 50 MB at worst: 10,000 busy
/// keys' counts for 50 minutes of outage); past it the triples with the
/// oldest last use are dropped and counted.
pub const MAX_RETAINED: usize = 500_000;

/// Counter shards: enough that concurrent requests for different keys
/// rarely meet on one lock, few enough that a flush's sweep is trivial.
const SHARDS: usize = 16;

/// Minutes since the Unix epoch: the usage-history bucket a request is
/// counted in.
type Minute = i64;

/// Counts per (key id, outcome code, minute). FNV, not SipHash: the ids are the
/// gateway's own (only identified keys are counted), so no caller can pick
/// colliding ones, and the hash runs on every counted request that is not a
/// cached key's `ok` (those go to its [`OkCounter`]).
type Tally = HashMap<(Arc<str>, &'static str, Minute), Count, fnv::FnvBuildHasher>;

/// One triple's requests since the last flush and their latest instant.
#[derive(Debug, Clone, Copy)]
struct Count {
    count: u64,
    last: DateTime<Utc>,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.count += other.count;
        self.last = self.last.max(other.last);
    }
}

/// A key's `ok` requests of one minute since the last flush, kept in its
/// cached [`Identity`] (see the module docs).
#[derive(Debug, Default)]
pub struct OkCounter {
    /// The minute (high 32 bits, minutes since the epoch) and its count
    /// (low 32 bits); 0 when empty.
    packed: AtomicU64,
    /// Latest use, in milliseconds since the epoch.
    last_ms: AtomicI64,
    /// Whether the identity is in the recorder's queue.
    queued: AtomicBool,
}

/// The outcome [`OkCounter`] counts.
const OK: &str = "ok";

/// An [`OkCounter`] word: `minute` and `count`.
fn pack(minute: u32, count: u32) -> u64 {
    (u64::from(minute) << 32) | u64::from(count)
}

/// The minute and count of an [`OkCounter`] word.
fn unpack(word: u64) -> (Minute, u64) {
    (
        Minute::from(u32::try_from(word >> 32).unwrap_or(u32::MAX)),
        word & u64::from(u32::MAX),
    )
}

/// The minute holding `at_ms` (Unix ms).
fn minute_of_ms(at_ms: i64) -> Minute {
    at_ms.div_euclid(60_000)
}

/// The start of `minute`, clamped to chrono's range.
fn minute_start(minute: Minute) -> DateTime<Utc> {
    crate::keys::usage::instant(minute.saturating_mul(60))
}

/// Batches usage counts in memory and writes them to the store off the
/// request path. Shared as an `Arc` between the proxy and the flusher.
#[derive(Debug)]
pub struct UsageRecorder {
    store: SharedStore,
    clock: SharedClock,
    interval: Duration,
    max_retained: usize,
    hasher: fnv::FnvBuildHasher,
    // std Mutex: each is held for one map update (or one `mem::take`), never
    // across an await, so a tokio lock would only add overhead.
    shards: Box<[Mutex<Tally>]>,
    // std Mutex: held only to take or merge back a refused batch, never while
    // the store is being called (concurrent flushes write disjoint counts,
    // which add up either way).
    retained: Mutex<Tally>,
    // std Mutex: pushed to once per key per flush interval, taken by flush.
    queued: Mutex<Vec<Arc<Identity>>>,
    dropped: AtomicU64,
    drop_warned: AtomicBool,
}

impl UsageRecorder {
    /// A recorder writing to `store` every `interval` once
    /// [`spawn_flusher`](Self::spawn_flusher) runs, keeping at most
    /// `max_retained` triples of a refused batch for retry.
    pub fn new(store: SharedStore, clock: SharedClock, interval: Duration, max_retained: usize) -> Self {
        Self {
            store,
            clock,
            interval,
            max_retained: max_retained.max(1),
            hasher: fnv::FnvBuildHasher::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Tally::default())).collect(),
            retained: Mutex::new(Tally::default()),
            queued: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            drop_warned: AtomicBool::new(false),
        }
    }

    /// Counts one request by an identified key with its outcome (`ok` or a
    /// SPEC code) at `at`. Never touches the store; never waits on I/O.
    pub fn record(&self, key_id: &Arc<str>, outcome: &'static str, at: DateTime<Utc>) {
        let minute = minute_of_ms(at.timestamp_millis());
        self.add(key_id, outcome, minute, Count { count: 1, last: at });
    }

    /// Adds `count` to the shards' tally of (`key_id`, `outcome`, `minute`).
    fn add(&self, key_id: &Arc<str>, outcome: &'static str, minute: Minute, count: Count) {
        let shard = self.hasher.hash_one(&**key_id) as usize % self.shards.len();
        let mut tally = lock(&self.shards[shard]);
        tally
            .entry((Arc::clone(key_id), outcome, minute))
            .and_modify(|c| c.add(count))
            .or_insert(count);
    }

    /// [`record`](Self::record) at the injected clock's now.
    pub fn record_now(&self, key_id: &Arc<str>, outcome: &'static str) {
        self.record(key_id, outcome, self.clock.now());
    }

    /// Counts one request by the key of `identity` with its outcome at
    /// `at`; an `ok` goes to the identity's own counter.
    pub fn record_identity(&self, identity: &Arc<Identity>, outcome: &'static str, at: DateTime<Utc>) {
        if outcome != OK {
            return self.record(&identity.key_id, outcome, at);
        }
        self.count_ok(identity, at.timestamp_millis());
    }

    /// [`record_identity`](Self::record_identity) at the injected clock's now.
    pub fn record_identity_now(&self, identity: &Arc<Identity>, outcome: &'static str) {
        if outcome != OK {
            return self.record_now(&identity.key_id, outcome);
        }
        // Milliseconds straight from the clock: no calendar date to build.
        self.count_ok(identity, i64::try_from(self.clock.unix_ms()).unwrap_or(i64::MAX));
    }

    /// Counts an `ok` request of `identity` used at `at_ms` (Unix ms).
    fn count_ok(&self, identity: &Arc<Identity>, at_ms: i64) {
        let counter = &identity.usage;
        let minute = minute_of_ms(at_ms);
        let Ok(packed_minute) = u32::try_from(minute) else {
            // Before 1970 or after the year 10,000: the shards take it.
            let at = DateTime::from_timestamp_millis(at_ms).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
            return self.record(&identity.key_id, OK, at);
        };
        counter.last_ms.fetch_max(at_ms, Ordering::Relaxed);
        // SeqCst on both sides (here and in `drain_queued`): a count added
        // after a flush took the counter always finds `queued` cleared and
        // queues the identity again.
        let mut word = counter.packed.load(Ordering::SeqCst);
        loop {
            let (held, count) = unpack(word);
            let next = if count == 0 || held < minute {
                pack(packed_minute, 1)
            } else if held == minute && count < u64::from(u32::MAX) {
                word + 1
            } else {
                // A request of an earlier minute finishing late (another
                // thread already counts the next one), or a full word.
                let at = DateTime::from_timestamp_millis(at_ms).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
                return self.record(&identity.key_id, OK, at);
            };
            match counter
                .packed
                .compare_exchange_weak(word, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    if count > 0 && held < minute {
                        // The first request of a new minute moves the
                        // previous minute's count to the shards.
                        self.add(&identity.key_id, OK, held, minute_count(held, count, counter));
                    }
                    break;
                }
                Err(actual) => word = actual,
            }
        }
        // The load spares a write to the flag while the identity is queued
        // (every request but the first of a flush period); a flush that
        // cleared the flag before taking the count is seen by it as well.
        if !counter.queued.load(Ordering::SeqCst) && !counter.queued.swap(true, Ordering::SeqCst) {
            lock(&self.queued).push(Arc::clone(identity));
        }
    }

    /// Moves the queued identities' `ok` counts into `batch`.
    fn drain_queued(&self, batch: &mut Tally) {
        let queued = std::mem::take(&mut *lock(&self.queued));
        for identity in queued {
            let counter = &identity.usage;
            // Cleared before the count is taken (see `record_identity`).
            counter.queued.store(false, Ordering::SeqCst);
            let (minute, count) = unpack(counter.packed.swap(0, Ordering::SeqCst));
            if count == 0 {
                continue;
            }
            let count = minute_count(minute, count, counter);
            batch
                .entry((Arc::clone(&identity.key_id), OK, minute))
                .and_modify(|c| c.add(count))
                .or_insert(count);
        }
    }

    /// Requests dropped so far because refused batches outgrew the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes everything counted so far (and any batch kept from a failed
    /// flush) in one store call; returns the requests written. On failure
    /// the batch is kept for the next flush.
    pub async fn flush(&self) -> Result<u64, StoreError> {
        let mut batch = std::mem::take(&mut *lock(&self.retained));
        for shard in &self.shards {
            let taken = std::mem::take(&mut *lock(shard));
            merge(&mut batch, taken);
        }
        self.drain_queued(&mut batch);
        if batch.is_empty() {
            return Ok(0);
        }
        let mut requests = 0;
        let deltas: Vec<UsageDelta> = batch
            .iter()
            .filter_map(|((id, outcome, minute), count)| {
                // Ids come from stored keys, so this only skips the impossible.
                let key_id = id.parse::<KeyId>().ok()?;
                requests += count.count;
                Some(UsageDelta {
                    key_id,
                    outcome: (*outcome).to_owned(),
                    minute: minute_start(*minute),
                    count: count.count,
                    last_used_at: count.last,
                })
            })
            .collect();
        match self.store.record_usage(&deltas).await {
            Ok(()) => {
                self.drop_warned.store(false, Ordering::Relaxed);
                Ok(requests)
            }
            Err(e) => {
                self.retain(batch);
                Err(e)
            }
        }
    }

    /// Merges a refused batch back for the next flush, dropping the triples
    /// with the oldest last use beyond the cap.
    fn retain(&self, batch: Tally) {
        let mut retained = lock(&self.retained);
        merge(&mut retained, batch);
        let excess = retained.len().saturating_sub(self.max_retained);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<_> = retained
            .iter()
            .map(|(pair, count)| (count.last, pair.clone()))
            .collect();
        by_age.select_nth_unstable_by_key(excess - 1, |(last, _)| *last);
        let mut lost = 0;
        for (_, pair) in by_age.into_iter().take(excess) {
            lost += retained.remove(&pair).map_or(0, |c| c.count);
        }
        drop(retained);
        self.dropped.fetch_add(lost, Ordering::Relaxed);
        if !self.drop_warned.swap(true, Ordering::Relaxed) {
            warn!(
                usage.dropped_requests = lost,
                usage.max_retained = self.max_retained,
                "the key store keeps refusing usage batches; dropping the oldest usage counts"
            );
        }
    }

    /// Flushes every interval until `shutdown` is set. A flush in progress
    /// is never cancelled (it could leave counts written but not cleared);
    /// the final flush after draining is the gateway's, via
    /// [`flush`](Self::flush).
    pub fn spawn_flusher(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run_flusher(shutdown).await })
    }

    async fn run_flusher(&self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => break,
                _ = ticker.tick() => {}
            }
            match self.flush().await {
                Ok(requests) => {
                    if failing {
                        info!("the key store accepts usage batches again");
                        failing = false;
                    }
                    if requests > 0 {
                        debug!(usage.requests = requests, "flushed usage counts");
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot write usage counts; keeping them for the next flush");
                        failing = true;
                    }
                }
            }
        }
    }
}

/// Resolves once `shutdown` is set (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// `count` requests of an [`OkCounter`] in `minute`: their latest use is
/// the counter's, or the minute's last millisecond if that is earlier (the
/// counter's latest use may already be of a later minute).
fn minute_count(minute: Minute, count: u64, counter: &OkCounter) -> Count {
    let last_ms = counter
        .last_ms
        .load(Ordering::Relaxed)
        .min(minute.saturating_add(1).saturating_mul(60_000) - 1);
    Count {
        count,
        last: DateTime::from_timestamp_millis(last_ms).unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    }
}

fn merge(into: &mut Tally, from: Tally) {
    if into.is_empty() {
        *into = from;
        return;
    }
    for (pair, count) in from {
        into.entry(pair).and_modify(|c| c.add(count)).or_insert(count);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a counter lock cannot leave the map invalid.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::usage::{Granularity, SeriesRange};
    use crate::keys::{HashParams, KeyFormat, KeyPrefix, KeySettings};
    use crate::manage::{CreateKey, KeyManager};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Actor, KeyStore, StoreSettings, UsageSubject};

    const TINY: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    use super::super::tests::TestStore as FlakyStore;

    struct Fixture {
        store: Arc<FlakyStore>,
        clock: ManualClock,
        a: KeyId,
        b: KeyId,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn recorder(&self, max_retained: usize) -> Arc<UsageRecorder> {
            let store: SharedStore = self.store.clone();
            Arc::new(UsageRecorder::new(
                store,
                Arc::new(self.clock.clone()),
                StdDuration::from_millis(10),
                max_retained,
            ))
        }

        /// The key's minute buckets over `[t(from), t(to))` as (seconds
        /// after t(0), requests of every outcome).
        async fn minutes(&self, id: &KeyId, from: i64, to: i64) -> Vec<(i64, u64)> {
            let range = SeriesRange {
                granularity: Granularity::Minute,
                from: t(from),
                to: t(to),
            };
            let stored = self
                .store
                .usage_buckets(UsageSubject::Key(id), range)
                .await
                .unwrap();
            let mut minutes: Vec<(i64, u64)> = Vec::new();
            for bucket in stored {
                let at = (bucket.start - t(0)).num_seconds();
                match minutes.last_mut() {
                    Some((last, count)) if *last == at => *count += bucket.count,
                    _ => minutes.push((at, bucket.count)),
                }
            }
            minutes
        }

        async fn usage(&self, id: &KeyId) -> Vec<(String, u64)> {
            let usage = self.store.usage(id).await.unwrap();
            assert_eq!(usage.total, usage.by_outcome.values().sum::<u64>());
            usage.by_outcome.into_iter().collect()
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap() + Duration::seconds(secs)
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            url: format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display()),
            auto_migrate: true,
            max_connections: 4,
            connect_timeout: StdDuration::from_secs(5),
            statement_timeout: StdDuration::from_secs(5),
        };
        let inner = SqliteStore::open(&settings).await.unwrap();
        inner.migrate().await.unwrap();
        let store = Arc::new(FlakyStore::new(inner));
        let clock = ManualClock::new(t(0));
        let keys = KeySettings {
            default_prefix: KeyPrefix::new("kg_test_").unwrap(),
            format: KeyFormat::Base62,
            default_plan: Some("free".into()),
            generated_hash: TINY,
            imported_hash: TINY,
        };
        let plans = ["free".to_owned()].into_iter().collect();
        let shared: SharedStore = store.clone();
        let manager = KeyManager::new(shared, keys, plans, Arc::new(clock.clone()));
        let mut ids = Vec::new();
        for name in ["a", "b"] {
            let req = CreateKey {
                name: name.into(),
                ..CreateKey::default()
            };
            ids.push(manager.create(req, &Actor::cli()).await.unwrap().key.id);
        }
        let b = ids.pop().unwrap();
        let a = ids.pop().unwrap();
        Fixture {
            store,
            clock,
            a,
            b,
            _dir: dir,
        }
    }

    fn arc(id: &KeyId) -> Arc<str> {
        Arc::from(id.as_str())
    }

    fn pairs(items: &[(&str, u64)]) -> Vec<(String, u64)> {
        items.iter().map(|(o, n)| ((*o).to_owned(), *n)).collect()
    }

    #[tokio::test]
    async fn counts_by_outcome_add_up_across_flushes_and_last_use_is_the_latest() {
        let f = fixture().await;
        let r = f.recorder(MAX_RETAINED);
        let (a, b) = (arc(&f.a), arc(&f.b));
        r.record(&a, "ok", t(5));
        r.record(&a, "ok", t(3));
        r.record(&a, "insufficient_scope", t(4));
        r.record(&b, "ok", t(1));
        assert_eq!(r.flush().await.unwrap(), 4);
        assert_eq!(r.flush().await.unwrap(), 0, "nothing counted twice");
        r.record(&a, "ok", t(2));
        f.clock.advance(Duration::seconds(9));
        r.record_now(&a, "key_expired");
        assert_eq!(r.flush().await.unwrap(), 2);

        assert_eq!(
            f.usage(&f.a).await,
            pairs(&[("insufficient_scope", 1), ("key_expired", 1), ("ok", 3)])
        );
        assert_eq!(f.usage(&f.b).await, pairs(&[("ok", 1)]));
        let key = f.store.get_key(&f.a).await.unwrap();
        assert_eq!(key.request_count, 5);
        assert_eq!(
            key.last_used_at,
            Some(t(9)),
            "the latest use, not the last recorded"
        );
        assert_eq!(f.store.get_key(&f.b).await.unwrap().last_used_at, Some(t(1)));
    }

    #[tokio::test]
    async fn counts_kept_with_identities_flush_like_the_rest() {
        let f = fixture().await;
        let r = f.recorder(MAX_RETAINED);
        let key = f.store.get_key(&f.a).await.unwrap();
        let old = Arc::new(Identity::of(Arc::new(key.clone())));
        // The same key cached twice over time (a refreshed entry builds a
        // new identity): both identities' counts reach the store.
        let new = Arc::new(Identity::of(Arc::new(key)));
        r.record_identity(&old, "ok", t(2));
        r.record_identity(&old, "ok", t(7));
        r.record_identity(&new, "ok", t(3));
        r.record_identity(&new, "rate_limited", t(4));
        r.record(&arc(&f.a), "ok", t(1));
        assert_eq!(lock(&r.queued).len(), 2, "each identity queued once");
        assert_eq!(r.flush().await.unwrap(), 5);
        assert_eq!(r.flush().await.unwrap(), 0, "nothing counted twice");
        assert!(lock(&r.queued).is_empty());
        // Counting again after a flush queues the identity again.
        r.record_identity(&old, "ok", t(8));
        assert_eq!(r.flush().await.unwrap(), 1);
        assert_eq!(f.usage(&f.a).await, pairs(&[("ok", 5), ("rate_limited", 1)]));
        let stored = f.store.get_key(&f.a).await.unwrap();
        assert_eq!(stored.request_count, 6);
        assert_eq!(stored.last_used_at, Some(t(8)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn identity_counts_racing_flushes_are_never_lost() {
        let f = fixture().await;
        let r = f.recorder(MAX_RETAINED);
        let identity = Arc::new(Identity::of(Arc::new(f.store.get_key(&f.a).await.unwrap())));
        let counters: Vec<_> = (0..4)
            .map(|_| {
                let (r, identity) = (Arc::clone(&r), Arc::clone(&identity));
                tokio::task::spawn_blocking(move || {
                    // Over five minutes, back and forth: minutes change
                    // under the other threads' feet.
                    for i in 0..5_000 {
                        r.record_identity(&identity, "ok", t(i * 7 % 300));
                    }
                })
            })
            .collect();
        let mut flushed = 0;
        while counters.iter().any(|c| !c.is_finished()) {
            flushed += r.flush().await.unwrap();
        }
        for c in counters {
            c.await.unwrap();
        }
        flushed += r.flush().await.unwrap();
        assert_eq!(flushed, 20_000);
        assert_eq!(f.usage(&f.a).await, pairs(&[("ok", 20_000)]));
        let expected: Vec<(i64, u64)> = (0..5)
            .map(|m| {
                (
                    m * 60,
                    4 * (0..5_000_i64).filter(|i| i * 7 % 300 / 60 == m).count() as u64,
                )
            })
            .collect();
        assert_eq!(
            f.minutes(&f.a, 0, 300).await,
            expected,
            "every count in its own minute"
        );
    }

    #[tokio::test]
    async fn counts_land_in_the_minute_they_were_made() {
        let f = fixture().await;
        let r = f.recorder(MAX_RETAINED);
        let identity = Arc::new(Identity::of(Arc::new(f.store.get_key(&f.a).await.unwrap())));
        for at in [1, 59, 30] {
            r.record_identity(&identity, "ok", t(at));
        }
        // The first request of the next minute moves the previous one's
        // count aside; a late request of that minute still counts there.
        r.record_identity(&identity, "ok", t(60));
        r.record_identity(&identity, "ok", t(61));
        r.record_identity(&identity, "ok", t(50));
        r.record(&arc(&f.a), "invalid_key", t(62));
        r.record_identity(&identity, "ok", t(185));
        assert_eq!(r.flush().await.unwrap(), 8);
        assert_eq!(
            f.minutes(&f.a, 0, 240).await,
            vec![(0, 4), (60, 3), (180, 1)],
            "per minute, all outcomes"
        );
        let hour = SeriesRange {
            granularity: Granularity::Hour,
            from: t(0),
            to: t(3_600),
        };
        let stored = f
            .store
            .usage_buckets(UsageSubject::Key(&f.a), hour)
            .await
            .unwrap();
        let counts: Vec<(&str, u64)> = stored.iter().map(|b| (b.outcome.as_str(), b.count)).collect();
        assert_eq!(counts, vec![("invalid_key", 1), ("ok", 7)]);
        assert_eq!(f.store.get_key(&f.a).await.unwrap().last_used_at, Some(t(185)));
    }

    #[tokio::test]
    async fn a_refused_batch_is_kept_for_the_next_flush() {
        let f = fixture().await;
        let r = f.recorder(MAX_RETAINED);
        let a = arc(&f.a);
        r.record(&a, "ok", t(1));
        r.record(&a, "invalid_key", t(2));
        f.store.fail.store(true, Ordering::SeqCst);
        assert!(matches!(r.flush().await, Err(StoreError::Unavailable(_))));
        r.record(&a, "ok", t(3));
        assert!(r.flush().await.is_err());
        assert_eq!(f.usage(&f.a).await, pairs(&[]));

        f.store.fail.store(false, Ordering::SeqCst);
        r.record(&a, "ok", t(4));
        assert_eq!(r.flush().await.unwrap(), 4);
        assert_eq!(f.usage(&f.a).await, pairs(&[("invalid_key", 1), ("ok", 3)]));
        assert_eq!(f.store.get_key(&f.a).await.unwrap().last_used_at, Some(t(4)));
        assert_eq!(r.dropped(), 0);
    }

    #[tokio::test]
    async fn kept_batches_are_capped_by_dropping_the_oldest() {
        let f = fixture().await;
        let r = f.recorder(2);
        let (a, b) = (arc(&f.a), arc(&f.b));
        f.store.fail.store(true, Ordering::SeqCst);
        r.record(&a, "ok", t(1));
        r.record(&a, "ok", t(2));
        r.record(&b, "ok", t(5));
        assert!(r.flush().await.is_err());
        r.record(&a, "invalid_key", t(6));
        assert!(r.flush().await.is_err());
        assert_eq!(r.dropped(), 2, "a's two oldest `ok` requests");

        f.store.fail.store(false, Ordering::SeqCst);
        assert_eq!(r.flush().await.unwrap(), 2);
        assert_eq!(f.usage(&f.a).await, pairs(&[("invalid_key", 1)]));
        assert_eq!(f.usage(&f.b).await, pairs(&[("ok", 1)]));
    }

    #[tokio::test]
    async fn the_flusher_writes_in_the_background_and_the_final_flush_writes_the_rest() {
        let f = fixture().await;
        let r = f.recorder(MAX_RETAINED);
        let a = arc(&f.a);
        let (stop, stop_rx) = watch::channel(false);
        let flusher = r.spawn_flusher(stop_rx);
        r.record(&a, "ok", t(1));
        let deadline = tokio::time::Instant::now() + StdDuration::from_secs(5);
        while f.store.usage(&f.a).await.unwrap().total == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the flusher never wrote");
            tokio::time::sleep(StdDuration::from_millis(5)).await;
        }

        // Shutdown: the flusher stops, then the gateway's final flush writes
        // whatever was counted after its last tick.
        stop.send(true).unwrap();
        tokio::time::timeout(StdDuration::from_secs(5), flusher)
            .await
            .unwrap()
            .unwrap();
        r.record(&a, "ok", t(2));
        r.record(&a, "rate_limited", t(3));
        r.flush().await.unwrap();
        assert_eq!(f.usage(&f.a).await, pairs(&[("ok", 2), ("rate_limited", 1)]));
        assert_eq!(f.store.get_key(&f.a).await.unwrap().request_count, 3);
    }
}
