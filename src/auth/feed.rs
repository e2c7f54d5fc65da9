//! The change feed, applied: the poller that keeps an [`Authenticator`]'s
//! caches current with changes made through other handles (another
//! replica, the CLI, the admin API of another process).
//!
//! The store hands over typed changes ([`Change`]): a key changed (with the
//! short prefix it gained, and whether by an import), or a session changed.
//! Each drops the cached entries it makes stale; nothing here reads the
//! audit trail's details.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration as StdDuration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::verify::Authenticator;
use crate::store::{Change, StoreError};
use crate::token::SessionId;

/// Changes read per page while applying the feed.
const CHANGE_PAGE: u32 = 500;
/// How often the poller drops entries that can no longer be served.
const SWEEP_EVERY: StdDuration = StdDuration::from_secs(30);
/// Floor for `poll_interval`, so a zero in settings cannot spin.
const MIN_POLL_INTERVAL: StdDuration = StdDuration::from_millis(10);

impl Authenticator {
    /// One step of the change feed: if the store's change sequence moved,
    /// reads the new changes ([`crate::store::KeyStore::changes`]) and drops
    /// every cached entry of each changed key, the negative entries of short
    /// prefixes that gained a secret, and reloads the imported prefixes
    /// after an import. Returns the number of
    /// changes applied. On an error nothing is skipped: the next call
    /// resumes after the last change applied.
    pub async fn poll_changes(&self) -> Result<u64, StoreError> {
        let mut last = self.last_seq.lock().await;
        let seq = self.store.change_seq().await?;
        if seq == *last {
            return Ok(0);
        }
        if seq < *last {
            // The store went back in time (restored from a backup, or
            // replaced): nothing cached from it can be trusted.
            warn!(
                seen = *last,
                now = seq,
                "the key store's change sequence went backwards; dropping the whole auth cache"
            );
            self.reload_imported_prefixes().await?;
            self.cache.clear();
            if let Some(tokens) = &self.tokens {
                tokens.clear();
            }
            *last = seq;
            return Ok(0);
        }
        let mut applied = 0u64;
        loop {
            let page = self.store.changes(*last, CHANGE_PAGE).await?;
            let Some(newest) = page.items.iter().map(|e| e.seq).max() else {
                break;
            };
            let mut key_ids = Vec::with_capacity(page.items.len());
            let mut session_ids: Vec<SessionId> = Vec::new();
            let mut short_prefixes = Vec::new();
            let mut imported = false;
            for entry in &page.items {
                match &entry.change {
                    // A session change (token exchange) says nothing about
                    // the key's own record: dropping the key's cached entries
                    // for it would cost an argon2 re-check per login on every
                    // replica.
                    Change::Session { id, .. } => session_ids.push(id.clone()),
                    Change::Key {
                        id,
                        added_short_prefix,
                        imported: by_import,
                    } => {
                        key_ids.push(id.clone());
                        short_prefixes.extend(added_short_prefix.iter().cloned());
                        imported |= by_import;
                    }
                }
            }
            if imported {
                // Before the negative entries go, so the new prefix is known
                // when the next request for it arrives.
                self.reload_imported_prefixes().await?;
            }
            self.cache.invalidate(&key_ids, &short_prefixes);
            if let Some(tokens) = &self.tokens {
                tokens.invalidate(&key_ids, &session_ids);
            }
            applied += page.items.len() as u64;
            if let Some(newest_at) = page.items.iter().map(|e| e.at).max() {
                let lag = (self.clock.now() - newest_at).num_milliseconds().max(0);
                self.counters
                    .feed_lag_ms
                    .store(u64::try_from(lag).unwrap_or(0), Ordering::Relaxed);
            }
            *last = newest;
            if page.next.is_none() {
                break;
            }
        }
        self.counters
            .changes_applied
            .fetch_add(applied, Ordering::Relaxed);
        Ok(applied)
    }

    /// Polls the change feed every `poll_interval`, and at once whenever the
    /// store announces a change (`KeyStore::change_notifications`), until
    /// `shutdown` turns true or its sender is dropped. Without
    /// notifications (SQLite, or a Postgres listener that is reconnecting)
    /// the interval alone bounds staleness. Logs one warning when polling
    /// starts failing and one info line when it recovers; also sweeps dead
    /// cache entries now and then.
    pub fn spawn_change_poller(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.run_poller(shutdown).await })
    }

    async fn run_poller(&self, mut shutdown: watch::Receiver<bool>) {
        let period = self.settings.poll_interval.max(MIN_POLL_INTERVAL);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = tokio::time::Instant::now();
        let mut failing = false;
        let mut notifications = self.store.change_notifications();
        loop {
            tokio::select! {
                biased;
                () = stop_requested(&mut shutdown) => break,
                () = next_notification(&mut notifications) => {
                    // The next fallback poll is a full period after this one.
                    ticker.reset();
                }
                _ = ticker.tick() => {}
            }
            let polled = tokio::select! {
                biased;
                () = stop_requested(&mut shutdown) => break,
                polled = self.poll_changes() => polled,
            };
            self.counters
                .feed_failing
                .store(polled.is_err(), Ordering::Relaxed);
            match polled {
                Ok(applied) => {
                    if failing {
                        info!("the key store's change feed is reachable again; cache invalidation resumed");
                        failing = false;
                    }
                    if applied > 0 {
                        debug!(changes = applied, "applied key store changes to the auth cache");
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(
                            error = %e,
                            "polling the key store's change feed failed; cached keys are served without \
                             invalidation (up to cache.ttl, plus cache.stale_if_error) until it recovers"
                        );
                        failing = true;
                    }
                }
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                let now = self.clock.now();
                self.cache.sweep(now);
                self.throttle.sweep(now);
                if let Some(tokens) = &self.tokens {
                    tokens.sweep(now);
                }
                last_sweep = tokio::time::Instant::now();
            }
        }
    }

    async fn reload_imported_prefixes(&self) -> Result<(), StoreError> {
        let prefixes: Arc<[String]> = self.store.imported_prefixes().await?.into_iter().collect();
        *self.imported_prefixes.write().unwrap_or_else(|p| p.into_inner()) = prefixes;
        Ok(())
    }
}

/// Resolves when the store announces a change; never when it has no
/// notifications (or stopped sending them: then polling carries on alone).
async fn next_notification(notifications: &mut Option<watch::Receiver<i64>>) {
    if let Some(rx) = notifications {
        if rx.changed().await.is_ok() {
            return;
        }
        *notifications = None;
    }
    std::future::pending::<()>().await;
}

/// Completes when shutdown is requested (`true`) or its sender is gone.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
