//! A key's usage history as buckets (SPEC §13): the bucket widths
//! (minute, hour, day; UTC-aligned) and how long the store keeps each.
//! Pure: `now` is an argument.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};

/// A bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granularity {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Granularity {
    /// Finest first.
    pub const ALL: [Self; 3] = [Self::Minute, Self::Hour, Self::Day];

    /// The query and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// The bucket width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    /// The start of the bucket holding `at`.
    pub fn floor(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let step = self.seconds();
        instant(at.timestamp().div_euclid(step) * step)
    }

    /// The first bucket edge at or after `at`.
    pub fn ceil(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let floor = self.floor(at);
        if floor == at {
            floor
        } else {
            // Saturating: a `to` at the end of time must not panic.
            floor
                .checked_add_signed(Duration::seconds(self.seconds()))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| "unknown granularity: use minute, hour or day".to_owned())
    }
}

/// How long the store keeps each tier of buckets (`usage.retention.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Minute buckets (default 48 h).
    pub minute: Duration,
    /// Hour buckets (default 90 d).
    pub hour: Duration,
    /// Day buckets (default 730 d).
    pub day: Duration,
}

impl Retention {
    /// SPEC §13's defaults.
    pub const DEFAULT: Self = Self {
        minute: Duration::hours(48),
        hour: Duration::days(90),
        day: Duration::days(730),
    };

    /// How long buckets of `granularity` are kept.
    pub fn of(&self, granularity: Granularity) -> Duration {
        match granularity {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
        }
    }

    /// The start of the oldest bucket of `granularity` kept at `now`
    /// (`None`: all of them, the retention reaching past the start of
    /// time): older buckets are pruned.
    pub fn oldest_kept(&self, granularity: Granularity, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        now.checked_sub_signed(self.of(granularity))
            .map(|oldest| granularity.floor(oldest))
    }

    /// Whether buckets of `granularity` still cover `from` at `now`.
    pub fn covers(&self, granularity: Granularity, from: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.oldest_kept(granularity, now)
            .is_none_or(|oldest| oldest <= from)
    }
}

/// A resolved range: `[from, to)` on bucket edges of `granularity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRange {
    /// First bucket's start.
    pub from: DateTime<Utc>,
    /// End of the last bucket.
    pub to: DateTime<Utc>,
    /// Bucket width.
    pub granularity: Granularity,
}

impl SeriesRange {
    /// How many buckets the range holds.
    pub fn len(&self) -> i64 {
        buckets(self.granularity, self.from, self.to)
    }

    /// Whether the range holds no bucket (never, once resolved).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The series over this range from stored counts (bucket start,
    /// outcome, count; any order, buckets outside the range ignored):
    /// every bucket present, ascending, zero where nothing was counted.
    pub fn fill(&self, counts: impl IntoIterator<Item = (DateTime<Utc>, String, u64)>) -> Vec<SeriesPoint> {
        let step = self.granularity.seconds();
        let start = self.from.timestamp();
        let mut points: Vec<SeriesPoint> = (0..self.len())
            .map(|i| SeriesPoint {
                time: instant(start + i * step),
                total: 0,
                by_outcome: BTreeMap::new(),
            })
            .collect();
        for (at, outcome, count) in counts {
            let index = (self.granularity.floor(at).timestamp() - start).div_euclid(step);
            let Some(point) = usize::try_from(index).ok().and_then(|i| points.get_mut(i)) else {
                continue;
            };
            point.total = point.total.saturating_add(count);
            let slot = point.by_outcome.entry(outcome).or_insert(0);
            *slot = slot.saturating_add(count);
        }
        points
    }
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesPoint {
    /// The bucket's start.
    pub time: DateTime<Utc>,
    /// Requests in the bucket, all outcomes.
    pub total: u64,
    /// Requests per outcome (`ok` or a SPEC code); absent outcomes are 0.
    pub by_outcome: BTreeMap<String, u64>,
}

/// Buckets of `granularity` that `[from, to)` touches once rounded out.
pub fn buckets(granularity: Granularity, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (granularity.ceil(to).timestamp() - granularity.floor(from).timestamp()) / granularity.seconds()
}

/// The instant `secs` after the epoch, clamped to chrono's range.
pub fn instant(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or(if secs < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}
