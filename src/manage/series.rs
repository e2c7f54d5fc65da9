//! What a usage-history query means (SPEC §13), before any store is asked:
//! the bucket width, the half-open range rounded out to bucket edges, and
//! the zero-filled, ascending series the answer is built from.
//!
//! The rules, written once for the admin API, the CLI and the console:
//! - `from`/`to` default to the last 24 hours; `from` rounds down and `to`
//!   up to bucket edges (UTC-aligned), and the series reports those edges;
//! - without a granularity, the finest whose retention still covers `from`
//!   and that gives at most [`AUTO_MAX_BUCKETS`] buckets, else `day`;
//! - refused, naming the field: an unknown granularity, one whose retention
//!   does not cover `from`, `from >= to`, or more than [`MAX_BUCKETS`]
//!   buckets.
//!
//! Pure: `now` and the retention are arguments.

use chrono::{DateTime, Duration, Utc};

use super::FieldError;
use crate::keys::usage::buckets;
pub use crate::keys::usage::{Granularity, Retention, SeriesPoint, SeriesRange};

/// Most buckets an automatic granularity may give before a coarser one is
/// chosen (a chart's width in points, with room to spare).
pub const AUTO_MAX_BUCKETS: i64 = 1_000;

/// Most buckets any query may return (SPEC §13: more is refused).
pub const MAX_BUCKETS: i64 = 10_000;

/// The default range: the last day.
const DEFAULT_SPAN: Duration = Duration::hours(24);

/// A query's range as asked: `None` fields take their defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesQuery {
    /// Start (inclusive); default `to` minus 24 h.
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive); default now (a future `to` is allowed).
    pub to: Option<DateTime<Utc>>,
    /// Bucket width; default automatic.
    pub granularity: Option<Granularity>,
}

/// An instant of a query (`from`, `to`) in RFC 3339, or an error naming
/// `field`.
pub fn parse_instant(field: &str, text: &str) -> Result<DateTime<Utc>, FieldError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            FieldError::new(
                field,
                format!("{text:?} is not an RFC 3339 instant, e.g. 2026-12-07T00:00:00Z"),
            )
        })
}

impl SeriesQuery {
    /// A query from its text parameters (`from`, `to`, `granularity`), or
    /// every bad one.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        granularity: Option<&str>,
    ) -> Result<Self, Vec<FieldError>> {
        Self::parse_with(from, to, granularity, parse_instant)
    }

    /// [`parse`](Self::parse) with another reading of `from` and `to`
    /// (the CLI also takes a duration ago).
    pub fn parse_with(
        from: Option<&str>,
        to: Option<&str>,
        granularity: Option<&str>,
        parse_instant: impl Fn(&str, &str) -> Result<DateTime<Utc>, FieldError>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut instant = |field: &str, text: Option<&str>| {
            text.and_then(|t| parse_instant(field, t).map_err(|e| errors.push(e)).ok())
        };
        let from = instant("from", from);
        let to = instant("to", to);
        let granularity = granularity.and_then(|g| {
            g.parse::<Granularity>()
                .map_err(|e| errors.push(FieldError::new("granularity", e)))
                .ok()
        });
        if errors.is_empty() {
            Ok(Self {
                from,
                to,
                granularity,
            })
        } else {
            Err(errors)
        }
    }
}

impl SeriesQuery {
    /// The range this query means at `now`, or every problem with it (the
    /// fields named as in the query string).
    pub fn resolve(&self, retention: &Retention, now: DateTime<Utc>) -> Result<SeriesRange, Vec<FieldError>> {
        // Without a `to`, the range ends just after now, so the bucket
        // holding now (the current, partial one) is in it even when now
        // falls on its edge.
        let to = self
            .to
            .unwrap_or_else(|| now.checked_add_signed(Duration::nanoseconds(1)).unwrap_or(now));
        let from = self
            .from
            .unwrap_or_else(|| to.checked_sub_signed(DEFAULT_SPAN).unwrap_or(to));
        if from >= to {
            return Err(vec![FieldError::new(
                "from",
                "from must be before to (the range is [from, to))",
            )]);
        }
        let granularity = match self.granularity {
            Some(g) if !retention.covers(g, from, now) => {
                return Err(vec![FieldError::new(
                    "granularity",
                    format!(
                        "{g} buckets are kept for {} only, which does not reach back to from; use a coarser granularity or a later from",
                        days_or_hours(retention.of(g))
                    ),
                )]);
            }
            Some(g) => g,
            None => Granularity::ALL
                .into_iter()
                .find(|&g| retention.covers(g, from, now) && buckets(g, from, to) <= AUTO_MAX_BUCKETS)
                .unwrap_or(Granularity::Day),
        };
        let count = buckets(granularity, from, to);
        if count > MAX_BUCKETS {
            return Err(vec![FieldError::new(
                "from",
                format!(
                    "the range holds {count} {granularity} buckets; at most {MAX_BUCKETS} are returned: narrow it or use a coarser granularity"
                ),
            )]);
        }
        Ok(SeriesRange {
            from: granularity.floor(from),
            to: granularity.ceil(to),
            granularity,
        })
    }
}

/// A retention for messages: whole days, else hours.
fn days_or_hours(d: Duration) -> String {
    if d.num_hours() % 24 == 0 {
        format!("{} days", d.num_days())
    } else {
        format!("{} hours", d.num_hours())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;

    /// 2026-12-07T12:34:56Z plus `secs`.
    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 34, 56).unwrap() + Duration::seconds(secs)
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn resolve(query: SeriesQuery) -> Result<SeriesRange, Vec<String>> {
        query
            .resolve(&Retention::DEFAULT, t(0))
            .map_err(|errors| errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn edges_are_utc_aligned() {
        let x = at("2026-12-07T12:34:56Z");
        assert_eq!(Granularity::Minute.floor(x), at("2026-12-07T12:34:00Z"));
        assert_eq!(Granularity::Minute.ceil(x), at("2026-12-07T12:35:00Z"));
        assert_eq!(Granularity::Hour.floor(x), at("2026-12-07T12:00:00Z"));
        assert_eq!(Granularity::Day.ceil(x), at("2026-12-08T00:00:00Z"));
        let edge = at("2026-12-07T00:00:00Z");
        for g in Granularity::ALL {
            assert_eq!((g.floor(edge), g.ceil(edge)), (edge, edge), "{g}");
        }
        // At the ends of time, no overflow.
        assert_eq!(
            Granularity::Day.ceil(DateTime::<Utc>::MAX_UTC),
            DateTime::<Utc>::MAX_UTC
        );
        let _ = Granularity::Day.floor(DateTime::<Utc>::MIN_UTC);
        // Before the epoch too.
        assert_eq!(
            Granularity::Day.floor(at("1969-12-31T23:00:00Z")),
            at("1969-12-31T00:00:00Z")
        );
    }

    #[test]
    fn granularities_parse_by_name_only() {
        for g in Granularity::ALL {
            assert_eq!(g.as_str().parse::<Granularity>(), Ok(g));
        }
        for bad in ["", "Minute", "week", "minutes", "1m"] {
            assert!(bad.parse::<Granularity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_is_the_last_day_in_minutes_when_that_fits_else_hours() {
        // 24 h is 1,441 minute buckets once rounded out: over the automatic
        // cap, so hours (25 of them).
        let range = resolve(SeriesQuery::default()).unwrap();
        assert_eq!(range.granularity, Granularity::Hour);
        assert_eq!(
            (range.from, range.to),
            (at("2026-12-06T12:00:00Z"), at("2026-12-07T13:00:00Z"))
        );
        assert_eq!(range.len(), 25);
        // The last 6 hours fit in minutes.
        let range = resolve(SeriesQuery {
            from: Some(t(-6 * 3600)),
            ..SeriesQuery::default()
        })
        .unwrap();
        assert_eq!(range.granularity, Granularity::Minute);
        assert_eq!(range.from, at("2026-12-07T06:34:00Z"));
        assert_eq!(range.to, at("2026-12-07T12:35:00Z"));
        // Now on an hour's edge: the hour it starts is in the range (a
        // request made now shows), an explicit `to` there is not.
        let edge = at("2026-12-07T12:00:00Z");
        let range = SeriesQuery::default().resolve(&Retention::DEFAULT, edge).unwrap();
        assert_eq!(
            (range.from, range.to),
            (at("2026-12-06T12:00:00Z"), at("2026-12-07T13:00:00Z"))
        );
        let explicit = SeriesQuery {
            to: Some(edge),
            ..SeriesQuery::default()
        };
        let range = explicit.resolve(&Retention::DEFAULT, edge).unwrap();
        assert_eq!((range.from, range.to), (at("2026-12-06T12:00:00Z"), edge));
    }

    #[test]
    fn automatic_granularity_follows_retention_then_size() {
        let auto = |from_secs: i64, to_secs: i64| {
            resolve(SeriesQuery {
                from: Some(t(from_secs)),
                to: Some(t(to_secs)),
                granularity: None,
            })
            .unwrap()
            .granularity
        };
        const DAY: i64 = 86_400;
        // Ten minutes three days ago: minutes are no longer kept.
        assert_eq!(auto(-3 * DAY, -3 * DAY + 600), Granularity::Hour);
        // Thirty days: 721 hours.
        assert_eq!(auto(-30 * DAY, 0), Granularity::Hour);
        // Sixty days: 1,441 hours, over the cap.
        assert_eq!(auto(-60 * DAY, 0), Granularity::Day);
        // A year ago: only days are kept.
        assert_eq!(auto(-365 * DAY, -364 * DAY), Granularity::Day);
        // Older than every retention: still days (what is left of them).
        assert_eq!(auto(-1000 * DAY, -999 * DAY), Granularity::Day);
    }

    #[test]
    fn bad_ranges_name_their_field() {
        let cases = [
            (t(0), t(0), None, "from"),
            (t(10), t(0), None, "from"),
            (t(-3 * 86_400), t(0), Some(Granularity::Minute), "granularity"),
            (t(-100 * 86_400), t(0), Some(Granularity::Hour), "granularity"),
            (t(-9 * 86_400), t(0), Some(Granularity::Minute), "granularity"),
            // Retention bounds every tier's past, so only a far future `to`
            // or a range older than every retention reaches the cap.
            (t(-3600), t(20_000 * 60), Some(Granularity::Minute), "from"),
            (t(-400 * 86_400 * 100), t(0), None, "from"),
        ];
        for (from, to, granularity, field) in cases {
            let query = SeriesQuery {
                from: Some(from),
                to: Some(to),
                granularity,
            };
            assert_eq!(resolve(query), Err(vec![field.to_owned()]), "{query:?}");
        }
        // A future `to` is allowed, and so is exactly the retention's edge.
        assert!(
            resolve(SeriesQuery {
                from: Some(t(-3600)),
                to: Some(t(3600)),
                granularity: Some(Granularity::Minute),
            })
            .is_ok()
        );
        assert!(
            resolve(SeriesQuery {
                from: Some(Granularity::Minute.floor(t(-48 * 3600))),
                to: Some(t(-47 * 3600)),
                granularity: Some(Granularity::Minute),
            })
            .is_ok()
        );
    }

    #[test]
    fn series_are_zero_filled_ascending_and_summed_per_bucket() {
        let range = SeriesRange {
            from: at("2026-12-07T10:00:00Z"),
            to: at("2026-12-07T14:00:00Z"),
            granularity: Granularity::Hour,
        };
        let points = range.fill([
            (at("2026-12-07T13:00:00Z"), "ok".to_owned(), 5),
            (at("2026-12-07T11:00:00Z"), "invalid_key".to_owned(), 2),
            (at("2026-12-07T11:00:00Z"), "ok".to_owned(), 3),
            (at("2026-12-07T11:30:00Z"), "ok".to_owned(), 1),
            // Outside the range: ignored.
            (at("2026-12-07T09:00:00Z"), "ok".to_owned(), 100),
            (at("2026-12-07T14:00:00Z"), "ok".to_owned(), 100),
        ]);
        let times: Vec<DateTime<Utc>> = points.iter().map(|p| p.time).collect();
        assert_eq!(
            times,
            [
                at("2026-12-07T10:00:00Z"),
                at("2026-12-07T11:00:00Z"),
                at("2026-12-07T12:00:00Z"),
                at("2026-12-07T13:00:00Z")
            ]
        );
        let totals: Vec<u64> = points.iter().map(|p| p.total).collect();
        assert_eq!(totals, [0, 6, 0, 5]);
        assert_eq!(
            points[1].by_outcome,
            BTreeMap::from([("invalid_key".to_owned(), 2), ("ok".to_owned(), 4)])
        );
        assert!(points[0].by_outcome.is_empty());
    }
}
