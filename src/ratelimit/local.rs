//! The in-process counters: exact fixed-window counts per subject, used as
//! the `local` backend and as the fallback while Redis is unreachable.
//!
//! Subjects are spread over a fixed set of shards, each a `std::sync::Mutex`
//! around a map from subject to that subject's counters (one per window
//! length). A check reads the clock, locks one shard, rolls stale windows
//! over, decides, and increments every window or none, all under that one
//! lock: this is what makes the count exact under any concurrency, and what
//! makes all-or-nothing trivially atomic. Lookups borrow the caller's `&str`;
//! only a subject seen for the first time allocates its key.
//!
//! Memory: one entry per live subject, holding one 24-byte counter per
//! window length of its plan. An entry whose every window has ended carries
//! no information (all its counts would read as zero), so each shard drops
//! such entries in a sweep at most every [`SWEEP_EVERY_MS`], run by
//! whichever check locks the shard next. The cost is amortised over the
//! checks in between and no background task is needed; a shard that sees no
//! more checks keeps what it had, but then it is not growing either.
//! [`LocalLimiter::evict_expired`] sweeps every shard at once for callers
//! who want that.
//!
//! What the windows mean and which one the headers show is `window.rs`'s.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::window::{self, Observed, Verdict};
use crate::clock::SharedClock;
use crate::policy::plans::PlanLimit;

/// Number of shards. Two checks contend only when their subjects land in the
/// same shard; with a lock held for well under a microsecond, 16 keeps
/// contention negligible at the core counts a gateway runs on.
const SHARDS: usize = 16;

/// Minimum time between two sweeps of one shard, in milliseconds. A sweep
/// walks the whole shard, so it must be rare next to the checks that pay for
/// it; ten seconds bounds dead entries to those that died in that time.
pub const SWEEP_EVERY_MS: u64 = 10_000;

/// The count of one window length for one subject.
#[derive(Debug, Clone, Copy)]
struct Counter {
    /// Window length in milliseconds; identifies the counter.
    per_ms: u64,
    /// Start of the window `count` belongs to, in Unix milliseconds.
    start_ms: u64,
    /// Requests counted in that window.
    count: u64,
}

/// One subject's counters.
#[derive(Debug, Default)]
struct Entry {
    counters: Vec<Counter>,
    /// When the last of its windows ends; after that the entry can go.
    expires_ms: u64,
}

impl Entry {
    /// Checks `limits` at `now_ms` and counts the request in every window if
    /// every window has room. Windows are matched by length, so a plan's
    /// limits may be given in any order.
    fn check(&mut self, now_ms: u64, limits: &[PlanLimit]) -> Verdict {
        if self.counters.len() > limits.len() {
            // The plan lost a window (a config change): forget its counter
            // once its window is over.
            self.counters.retain(|c| {
                limits.iter().any(|l| window::per_ms(l.per) == c.per_ms)
                    || window::window_end(c.start_ms, c.per_ms) > now_ms
            });
        }
        let mut allowed = true;
        for limit in limits {
            let counter = self.counter(now_ms, window::per_ms(limit.per));
            allowed &= counter.count < limit.requests;
        }
        let mut expires_ms = 0;
        for c in &mut self.counters {
            if allowed && limits.iter().any(|l| window::per_ms(l.per) == c.per_ms) {
                c.count += 1;
            }
            expires_ms = expires_ms.max(window::window_end(c.start_ms, c.per_ms));
        }
        self.expires_ms = expires_ms;
        let counters = &self.counters;
        window::verdict(
            now_ms,
            allowed,
            limits.iter().map(|l| {
                let per_ms = window::per_ms(l.per);
                let used = counters
                    .iter()
                    .find(|c| c.per_ms == per_ms)
                    .map_or(0, |c| c.count);
                Observed {
                    limit: l.requests,
                    per_ms,
                    used,
                }
            }),
        )
    }

    /// The counter for windows of `per_ms`, rolled over to the window that
    /// contains `now_ms` (a new window starts from zero).
    fn counter(&mut self, now_ms: u64, per_ms: u64) -> &mut Counter {
        let start_ms = window::window_start(now_ms, per_ms);
        let index = match self.counters.iter().position(|c| c.per_ms == per_ms) {
            Some(i) => i,
            None => {
                self.counters.push(Counter {
                    per_ms,
                    start_ms,
                    count: 0,
                });
                self.counters.len() - 1
            }
        };
        let counter = &mut self.counters[index];
        if counter.start_ms != start_ms {
            *counter = Counter {
                per_ms,
                start_ms,
                count: 0,
            };
        }
        counter
    }
}

/// One shard: its subjects and when it is next swept.
#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Box<str>, Entry>,
    next_sweep_ms: u64,
}

impl Shard {
    fn sweep(&mut self, now_ms: u64) {
        self.entries.retain(|_, e| e.expires_ms > now_ms);
        // Give memory back after a burst of one-off subjects.
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to_fit();
        }
        self.next_sweep_ms = now_ms.saturating_add(SWEEP_EVERY_MS);
    }
}

/// Exact in-process fixed-window counters, keyed by an opaque subject.
#[derive(Debug)]
pub struct LocalLimiter {
    // std Mutex, not tokio's: a shard is locked for a few map and counter
    // operations and never across an await, so an async lock would only add
    // cost.
    shards: Box<[Mutex<Shard>]>,
    /// Picks the shard; randomly seeded so subjects cannot be chosen to pile
    /// into one shard.
    hasher: RandomState,
    clock: SharedClock,
}

impl LocalLimiter {
    /// An empty limiter reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self::with_shards(clock, SHARDS)
    }

    fn with_shards(clock: SharedClock, shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            clock,
        }
    }

    /// Checks `subject` against every window in `limits` and counts the
    /// request in all of them if all allow it; a denied request counts
    /// nowhere. `limits` must hold distinct window lengths (plans do). An
    /// empty `limits` answers [`Verdict::Unlimited`] and keeps no state.
    pub fn check(&self, subject: &str, limits: &[PlanLimit]) -> Verdict {
        if limits.is_empty() {
            return Verdict::Unlimited;
        }
        let now_ms = self.clock.unix_ms();
        let mut shard = self.shard(subject);
        if now_ms >= shard.next_sweep_ms {
            shard.sweep(now_ms);
        }
        match shard.entries.get_mut(subject) {
            Some(entry) => entry.check(now_ms, limits),
            None => {
                let mut entry = Entry::default();
                let verdict = entry.check(now_ms, limits);
                shard.entries.insert(subject.into(), entry);
                verdict
            }
        }
    }

    /// Drops every subject whose windows have all ended, in every shard.
    /// Checks do this shard by shard on their own; this is for callers that
    /// want it all at once (and for tests).
    pub fn evict_expired(&self) {
        let now_ms = self.clock.unix_ms();
        for shard in &self.shards {
            lock(shard).sweep(now_ms);
        }
    }

    /// Number of subjects with counters held, live or awaiting a sweep.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    /// Whether no subject has counters held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, subject: &str) -> MutexGuard<'_, Shard> {
        let hash = self.hasher.hash_one(subject);
        // The remainder is below the shard count, so the cast is lossless.
        let index = (hash % self.shards.len() as u64) as usize;
        lock(&self.shards[index])
    }
}

/// Locks a shard. A panic while it was held (none is expected: the critical
/// section only does arithmetic and map operations) leaves counters that are
/// at worst one request off, which beats failing every later request.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::{DateTime, TimeDelta, Utc};

    use super::*;
    use crate::clock::ManualClock;

    fn limit(requests: u64, per_secs: u64) -> PlanLimit {
        PlanLimit {
            requests,
            per: Duration::from_secs(per_secs),
        }
    }

    /// A clock at an hour boundary (so minute and hour windows start
    /// together) and a limiter reading it.
    fn limiter(shards: usize) -> (ManualClock, LocalLimiter) {
        let at = DateTime::<Utc>::from_timestamp(1_700_002_800, 0).unwrap();
        assert_eq!(at.timestamp() % 3_600, 0);
        let clock = ManualClock::new(at);
        let limiter = LocalLimiter::with_shards(Arc::new(clock.clone()), shards);
        (clock, limiter)
    }

    fn allowed(limiter: &LocalLimiter, subject: &str, limits: &[PlanLimit], n: usize) -> usize {
        (0..n)
            .filter(|_| limiter.check(subject, limits).is_allowed())
            .count()
    }

    #[test]
    fn counts_exactly_per_window_and_resets_at_the_boundary() {
        let (clock, limiter) = limiter(SHARDS);
        let limits = [limit(3, 60)];
        assert_eq!(allowed(&limiter, "k", &limits, 5), 3);
        clock.advance(TimeDelta::seconds(59));
        assert_eq!(allowed(&limiter, "k", &limits, 5), 0, "same window");
        clock.advance(TimeDelta::seconds(1));
        assert_eq!(allowed(&limiter, "k", &limits, 5), 3, "next window");
        assert_eq!(
            allowed(&limiter, "other", &limits, 5),
            3,
            "subjects are independent"
        );
    }

    #[test]
    fn a_request_denied_by_one_window_consumes_no_other() {
        let (clock, limiter) = limiter(SHARDS);
        let limits = [limit(2, 60), limit(5, 3_600)];
        // Minute 1: 2 allowed, 3 denied by the minute window.
        assert_eq!(allowed(&limiter, "k", &limits, 5), 2);
        // Minute 2: had the denials counted in the hour, it would be full.
        clock.advance(TimeDelta::seconds(60));
        assert_eq!(allowed(&limiter, "k", &limits, 5), 2);
        // Minute 3: one left in the hour (2 + 2 used).
        clock.advance(TimeDelta::seconds(60));
        let v = limiter.check("k", &limits);
        assert_eq!(
            v,
            Verdict::Allowed(window::WindowStatus {
                limit: 5,
                remaining: 0,
                reset: Duration::from_secs(3_600 - 120),
            }),
            "the hour is the tightest window now"
        );
        // Now the hour denies; the minute still has room but is not charged.
        let v = limiter.check("k", &limits);
        assert_eq!(v.retry_after_secs(), Some(3_600 - 120));
        assert_eq!(v.window().map(|w| (w.limit, w.remaining)), Some((5, 0)));
        // The next hour: the minute window admits its full 2 again.
        clock.advance(TimeDelta::seconds(3_600));
        assert_eq!(allowed(&limiter, "k", &limits, 5), 2);
    }

    #[test]
    fn denied_requests_consume_nothing() {
        let (clock, limiter) = limiter(SHARDS);
        let limits = [limit(10, 1), limit(15, 60)];
        assert_eq!(allowed(&limiter, "k", &limits, 100), 10, "second 1");
        clock.advance(TimeDelta::seconds(1));
        // 90 denials in second 1 charged nothing: the minute has 5 left.
        assert_eq!(allowed(&limiter, "k", &limits, 100), 5, "second 2");
    }

    #[test]
    fn verdict_fields() {
        let (clock, limiter) = limiter(SHARDS);
        let limits = [limit(2, 1), limit(100, 60)];
        clock.advance(TimeDelta::milliseconds(250));
        let first = limiter.check("k", &limits);
        // The second has 1 left, the minute 99: the second is tightest.
        assert_eq!(
            first,
            Verdict::Allowed(window::WindowStatus {
                limit: 2,
                remaining: 1,
                reset: Duration::from_millis(750),
            })
        );
        assert_eq!(first.window().map(window::WindowStatus::reset_secs), Some(1));
        limiter.check("k", &limits);
        let denied = limiter.check("k", &limits);
        assert_eq!(
            denied,
            Verdict::Denied {
                window: window::WindowStatus {
                    limit: 2,
                    remaining: 0,
                    reset: Duration::from_millis(750),
                },
                retry_after: Duration::from_millis(750),
            }
        );
        assert_eq!(denied.retry_after_secs(), Some(1));
    }

    #[test]
    fn limits_in_any_order_and_empty_limits() {
        let (_clock, limiter) = limiter(SHARDS);
        assert_eq!(limiter.check("k", &[]), Verdict::Unlimited);
        assert!(limiter.is_empty(), "an unlimited check keeps no state");
        let a = [limit(3, 60), limit(1_000, 3_600)];
        let b = [limit(1_000, 3_600), limit(3, 60)];
        assert_eq!(allowed(&limiter, "k", &a, 2), 2);
        assert_eq!(
            allowed(&limiter, "k", &b, 2),
            1,
            "the same counters, by window length"
        );
    }

    #[test]
    fn a_window_dropped_from_the_plan_is_forgotten_once_over() {
        let (clock, limiter) = limiter(1);
        assert_eq!(allowed(&limiter, "k", &[limit(1, 60), limit(10, 3_600)], 2), 1);
        // The plan now has only the hour: the old minute counter no longer
        // limits, and goes once its window is over.
        assert_eq!(allowed(&limiter, "k", &[limit(10, 3_600)], 2), 2);
        clock.advance(TimeDelta::seconds(60));
        limiter.check("k", &[limit(10, 3_600)]);
        let shard = lock(&limiter.shards[0]);
        let counters = &shard.entries["k"].counters;
        assert_eq!(counters.len(), 1);
        assert_eq!(counters[0].per_ms, 3_600_000);
        assert_eq!(counters[0].count, 4);
    }

    #[test]
    fn entries_whose_windows_all_ended_are_evicted() {
        let (clock, limiter) = limiter(1);
        let short = [limit(5, 1)];
        let long = [limit(5, 1), limit(50, 3_600)];
        for i in 0..100 {
            limiter.check(&format!("short-{i}"), &short);
        }
        limiter.check("long", &long);
        assert_eq!(limiter.len(), 101);
        // Before the next sweep is due, nothing goes even though the short
        // windows ended.
        clock.advance(TimeDelta::seconds(2));
        limiter.check("long", &long);
        assert_eq!(limiter.len(), 101);
        // The first check after the sweep interval sweeps its shard: only
        // the subject with a live (hour) window stays.
        clock.advance(TimeDelta::milliseconds(i64::try_from(SWEEP_EVERY_MS).unwrap()));
        limiter.check("long", &long);
        assert_eq!(limiter.len(), 1);
        // Once the hour ends, an explicit sweep empties the limiter.
        clock.advance(TimeDelta::seconds(3_600));
        limiter.evict_expired();
        assert!(limiter.is_empty());
        // An evicted subject starts afresh, as if its windows had reset.
        assert_eq!(allowed(&limiter, "long", &long, 10), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exact_under_concurrency() {
        let (_clock, limiter) = limiter(SHARDS);
        let limiter = Arc::new(limiter);
        let limits = [limit(50, 60), limit(1_000, 3_600)];
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move { limiter.check("k", &limits).is_allowed() })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap());
        }
        assert_eq!(admitted, 50);
        // And the hour was charged exactly 50 times.
        let shard = limiter.shard("k");
        let hour = shard.entries["k"]
            .counters
            .iter()
            .find(|c| c.per_ms == 3_600_000)
            .unwrap();
        assert_eq!(hour.count, 50);
    }
}
