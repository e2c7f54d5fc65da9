//! Usage history (SPEC §13) for the admin API, the CLI and the console: a
//! key's or an owner's series over a range, the busiest keys of a range, and
//! the pruning of each tier past its retention, which every gateway runs.
//!
//! What a range means is `series`' (pure); this module asks the store and
//! shapes the answer.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use utoipa::ToSchema;

use super::series::{Granularity, SeriesPoint, SeriesQuery, SeriesRange};
use super::{FieldError, KeyManager, ManageError, parse_id};
use crate::store::{KeyTotals, Usage, UsageRank, UsageSubject};

/// How often each gateway prunes the usage history by default: often
/// enough that the minute tier never holds much more than its retention,
/// rarely enough to cost nothing (each prune is six indexed deletes).
pub const PRUNE_INTERVAL: StdDuration = StdDuration::from_secs(600);

/// Ranked keys by default, and at most (`limit`).
pub const TOP_DEFAULT_LIMIT: u32 = 10;
/// The most keys one ranking returns.
pub const TOP_MAX_LIMIT: u32 = 1_000;

/// A series as answered: the range as resolved and every bucket of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Bucket edges and width.
    pub range: SeriesRange,
    /// Every bucket of the range, ascending, zero-filled.
    pub points: Vec<SeriesPoint>,
}

/// A key's or an owner's usage: all-time counters and a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// All-time counts by outcome, total and last use.
    pub usage: Usage,
    /// The range asked for.
    pub series: Series,
}

/// A busiest-keys query as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopQuery {
    /// The range (granularity chosen as for a series).
    pub range: SeriesQuery,
    /// What ranks.
    pub rank: UsageRank,
    /// How many keys, 1 to [`TOP_MAX_LIMIT`].
    pub limit: u32,
}

impl Default for TopQuery {
    fn default() -> Self {
        Self {
            range: SeriesQuery::default(),
            rank: UsageRank::Requests,
            limit: TOP_DEFAULT_LIMIT,
        }
    }
}

/// The busiest keys of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Top {
    /// The range read, on bucket edges.
    pub range: SeriesRange,
    /// What ranked.
    pub rank: UsageRank,
    /// Busiest first.
    pub keys: Vec<KeyTotals>,
}

/// The query and JSON spelling of a ranking.
pub fn rank_name(rank: UsageRank) -> &'static str {
    match rank {
        UsageRank::Requests => "requests",
        UsageRank::Refused => "refused",
    }
}

/// A ranking by its query spelling (`by`).
pub fn parse_rank(text: &str) -> Result<UsageRank, FieldError> {
    match text {
        "requests" => Ok(UsageRank::Requests),
        "refused" => Ok(UsageRank::Refused),
        _ => Err(FieldError::new("by", "unknown ranking: use requests or refused")),
    }
}

/// A ranking's size (`limit`), 1 to [`TOP_MAX_LIMIT`].
pub fn parse_top_limit(text: &str) -> Result<u32, FieldError> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=TOP_MAX_LIMIT).contains(n))
        .ok_or_else(bad_limit)
}

fn bad_limit() -> FieldError {
    FieldError::new(
        "limit",
        format!("must be a whole number from 1 to {TOP_MAX_LIMIT}"),
    )
}

impl KeyManager {
    /// A key's all-time usage and its series over `query`'s range.
    pub async fn key_history(&self, id: &str, query: &SeriesQuery) -> Result<History, ManageError> {
        let id = parse_id(id)?;
        let range = self.resolve(query)?;
        let usage = self.store.usage(&id).await?;
        let series = self.read_series(UsageSubject::Key(&id), range).await?;
        Ok(History { usage, series })
    }

    /// An owner's all-time usage (over its keys) and its series over
    /// `query`'s range. An owner is known while it has a key or a history.
    pub async fn owner_history(&self, owner: &str, query: &SeriesQuery) -> Result<History, ManageError> {
        let range = self.resolve(query)?;
        let usage = self
            .store
            .owner_usage(owner)
            .await?
            .ok_or_else(|| ManageError::OwnerNotFound(owner.to_owned()))?;
        let series = self.read_series(UsageSubject::Owner(owner), range).await?;
        Ok(History { usage, series })
    }

    /// The busiest keys over `query`'s range.
    pub async fn top(&self, query: &TopQuery) -> Result<Top, ManageError> {
        if !(1..=TOP_MAX_LIMIT).contains(&query.limit) {
            return Err(ManageError::Invalid(vec![bad_limit()]));
        }
        let range = self.resolve(&query.range)?;
        let keys = self.store.usage_top(range, query.rank, query.limit).await?;
        Ok(Top {
            range,
            rank: query.rank,
            keys,
        })
    }

    /// Deletes every tier's buckets past its retention at the clock's now;
    /// returns the rows deleted.
    pub async fn prune_history(&self) -> Result<u64, ManageError> {
        let now = self.clock.now();
        let cutoffs: Vec<(Granularity, DateTime<Utc>)> = Granularity::ALL
            .into_iter()
            .filter_map(|g| Some((g, self.retention.oldest_kept(g, now)?)))
            .collect();
        Ok(self.store.prune_usage(&cutoffs).await?)
    }

    /// Prunes the history every `interval` (the first time at once) until
    /// `shutdown` is set. Failures are logged and retried next time:
    /// pruning late only keeps rows longer.
    pub fn spawn_pruner(&self, interval: StdDuration, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    biased;
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            break;
                        }
                        continue;
                    }
                    _ = ticker.tick() => {}
                }
                match manager.prune_history().await {
                    Ok(rows) => {
                        failing = false;
                        if rows > 0 {
                            debug!(usage.pruned_rows = rows, "pruned the usage history");
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "cannot prune the usage history; trying again later");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// `subject`'s series over `query`'s range (the console's charts; the
    /// overview reads every key's).
    pub async fn series(
        &self,
        subject: UsageSubject<'_>,
        query: &SeriesQuery,
    ) -> Result<Series, ManageError> {
        let range = self.resolve(query)?;
        self.read_series(subject, range).await
    }

    fn resolve(&self, query: &SeriesQuery) -> Result<SeriesRange, ManageError> {
        query
            .resolve(&self.retention, self.clock.now())
            .map_err(ManageError::Invalid)
    }

    async fn read_series(
        &self,
        subject: UsageSubject<'_>,
        range: SeriesRange,
    ) -> Result<Series, ManageError> {
        let stored = self.store.usage_buckets(subject, range).await?;
        let points = range.fill(stored.into_iter().map(|b| (b.start, b.outcome, b.count)));
        Ok(Series { range, points })
    }
}

/// A key's usage: all-time counters and a series (SPEC §13).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// The key.
    pub key_id: String,
    /// Counts by outcome (`ok` or a SPEC error code), total and last use,
    /// all time.
    #[serde(flatten)]
    pub usage: Usage,
    /// Requests per bucket over the range asked for.
    pub series: SeriesView,
}

impl UsageView {
    /// The view of key `key_id`'s history.
    pub fn new(key_id: &str, history: History) -> Self {
        Self {
            key_id: key_id.to_ascii_lowercase(),
            usage: history.usage,
            series: SeriesView::new(&history.series),
        }
    }
}

/// A usage series: `[from, to)` on bucket edges, every bucket ascending and
/// zero-filled.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesView {
    /// The first bucket's start (`from` rounded down to a bucket edge).
    pub from: DateTime<Utc>,
    /// The last bucket's end (`to` rounded up to a bucket edge).
    pub to: DateTime<Utc>,
    /// `minute`, `hour` or `day`.
    #[schema(example = "hour")]
    pub granularity: &'static str,
    /// One entry per bucket.
    pub data: Vec<PointView>,
}

impl SeriesView {
    /// The view of a series.
    pub fn new(series: &Series) -> Self {
        Self {
            from: series.range.from,
            to: series.range.to,
            granularity: series.range.granularity.as_str(),
            data: series.points.iter().map(PointView::new).collect(),
        }
    }
}

/// One bucket: `[time, time + 1 granularity)`; `total`, `ok`, and one member
/// per SPEC code counted in it (absent codes are 0).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"time": "2026-12-07T10:00:00Z", "total": 42, "ok": 40, "rate_limited": 2}))]
pub struct PointView {
    /// The bucket's start.
    pub time: DateTime<Utc>,
    /// Requests, all outcomes.
    pub total: u64,
    /// Allowed requests.
    pub ok: u64,
    /// Refused requests per SPEC code.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub refused: BTreeMap<String, u64>,
}

impl PointView {
    fn new(point: &SeriesPoint) -> Self {
        let mut refused = point.by_outcome.clone();
        let ok = refused.remove("ok").unwrap_or(0);
        Self {
            time: point.time,
            total: point.total,
            ok,
            refused,
        }
    }
}
