//! Fixed-window arithmetic and the verdict a rate-limit check hands back.
//!
//! Pure functions on integer milliseconds: where a window starts and ends,
//! which of a plan's windows is the "tightest" one whose status goes into
//! the `RateLimit-*` headers, and how long a denied caller must wait. The
//! local and the Redis backend both count, then call [`verdict`] here, so
//! the two cannot disagree on what a count means. Counting itself lives in
//! `local.rs` and in the Lua script of `redis.rs`.

use std::time::Duration;

/// The status of one window, as the `RateLimit-*` headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStatus {
    /// Requests the window allows (`RateLimit-Limit`).
    pub limit: u64,
    /// Requests still allowed in the current window, after this request if
    /// it was allowed (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Time until the current window ends and its count starts again from
    /// zero (`RateLimit-Reset`, see [`WindowStatus::reset_secs`]).
    pub reset: Duration,
}

impl WindowStatus {
    /// [`WindowStatus::reset`] as whole seconds for a header, rounded up so a
    /// client that waits that long finds the window reset; at least 1 while
    /// any time remains.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }
}

/// The answer to one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request was counted against every window of the plan; the status
    /// is the tightest window's (fewest remaining, the longer on a tie).
    Allowed(WindowStatus),
    /// At least one window is exhausted; nothing was counted anywhere.
    Denied {
        /// The tightest window's status (its `remaining` is 0).
        window: WindowStatus,
        /// Time until every window that denied allows one more request (the
        /// longest such wait when several deny); see
        /// [`Verdict::retry_after_secs`].
        retry_after: Duration,
    },
    /// The plan has no windows (an empty `limits` list): nothing to count
    /// and no rate-limit headers to send.
    Unlimited,
}

impl Verdict {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Denied { .. })
    }

    /// The tightest window's status, for the `RateLimit-*` headers; `None`
    /// for [`Verdict::Unlimited`].
    pub fn window(&self) -> Option<&WindowStatus> {
        match self {
            Self::Allowed(window) | Self::Denied { window, .. } => Some(window),
            Self::Unlimited => None,
        }
    }

    /// The `Retry-After` value of a denial in whole seconds, rounded up and
    /// at least 1 (a client told 0 would retry at once and be denied again);
    /// `None` unless denied.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Denied { retry_after, .. } => Some(ceil_secs(*retry_after).max(1)),
            Self::Allowed(_) | Self::Unlimited => None,
        }
    }
}

/// One window after a check: its limit, its length and its count, where the
/// count includes this request if the request was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Observed {
    /// Requests the window allows.
    pub limit: u64,
    /// Window length in milliseconds (at least 1).
    pub per_ms: u64,
    /// Requests counted in the current window.
    pub used: u64,
}

/// A window length in milliseconds, at least 1 so the modulo in
/// [`window_start`] is defined (config only admits 1 s to 30 d).
pub(super) fn per_ms(per: Duration) -> u64 {
    u64::try_from(per.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Start of the window of length `per_ms` that contains `now_ms`. Windows
/// are aligned to the Unix epoch, so every replica and Redis agree on them
/// without coordination.
pub(super) fn window_start(now_ms: u64, per_ms: u64) -> u64 {
    now_ms - now_ms % per_ms.max(1)
}

/// End (exclusive) of the window of length `per_ms` that contains `now_ms`.
pub(super) fn window_end(now_ms: u64, per_ms: u64) -> u64 {
    window_start(now_ms, per_ms).saturating_add(per_ms.max(1))
}

/// A duration as whole seconds, rounded up: a header that rounded down would
/// send clients back a moment before their window reset.
pub(super) fn ceil_secs(d: Duration) -> u64 {
    let whole = d.as_secs();
    if d.subsec_nanos() > 0 { whole + 1 } else { whole }
}

/// The verdict for windows observed at `now_ms`. `allowed` is the counter's
/// all-or-nothing decision (every window had room); when it is false, the
/// windows whose `used` reached their `limit` are the ones that denied.
///
/// The tightest window is the one with the fewest requests remaining, the
/// longer window on a tie (SPEC §5): of two exhausted windows, the longer
/// one is the more useful to show, since it stays exhausted longer.
pub(super) fn verdict(now_ms: u64, allowed: bool, windows: impl IntoIterator<Item = Observed>) -> Verdict {
    let mut tightest: Option<(u64, u64, WindowStatus)> = None;
    let mut longest_wait: Option<u64> = None;
    for w in windows {
        let remaining = w.limit.saturating_sub(w.used);
        let until_end = window_end(now_ms, w.per_ms) - now_ms;
        let status = WindowStatus {
            limit: w.limit,
            remaining,
            reset: Duration::from_millis(until_end),
        };
        let tighter = match tightest {
            None => true,
            Some((best_remaining, best_per, _)) => {
                remaining < best_remaining || (remaining == best_remaining && w.per_ms > best_per)
            }
        };
        if tighter {
            tightest = Some((remaining, w.per_ms, status));
        }
        if !allowed && w.used >= w.limit {
            // A fixed window's count drops to zero when it ends, so that is
            // when it allows one more request.
            longest_wait = Some(longest_wait.map_or(until_end, |l| l.max(until_end)));
        }
    }
    let Some((_, _, window)) = tightest else {
        return Verdict::Unlimited;
    };
    if allowed {
        return Verdict::Allowed(window);
    }
    // A denial with no exhausted window cannot come from either backend;
    // should it ever, the tightest window's reset is the honest guess.
    let wait = longest_wait.map_or(window.reset, Duration::from_millis);
    Verdict::Denied {
        window,
        retry_after: wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000;
    const MIN: u64 = 60 * SEC;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;

    fn obs(limit: u64, per_ms: u64, used: u64) -> Observed {
        Observed { limit, per_ms, used }
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        // (now, per, start, end)
        let cases = [
            (0, SEC, 0, SEC),
            (999, SEC, 0, SEC),
            (1_000, SEC, 1_000, 2_000),
            (61_500, MIN, MIN, 2 * MIN),
            (HOUR - 1, HOUR, 0, HOUR),
            (HOUR, HOUR, HOUR, 2 * HOUR),
            (30 * DAY + 5, 30 * DAY, 30 * DAY, 60 * DAY),
            (1_700_000_123_456, MIN, 1_700_000_100_000, 1_700_000_160_000),
            (7, 0, 7, 8), // a zero length is treated as 1 ms, not a division by zero
        ];
        for (now, per, start, end) in cases {
            assert_eq!(window_start(now, per), start, "start of {per} ms at {now}");
            assert_eq!(window_end(now, per), end, "end of {per} ms at {now}");
        }
    }

    #[test]
    fn conversions() {
        assert_eq!(per_ms(Duration::from_secs(60)), 60_000);
        assert_eq!(per_ms(Duration::ZERO), 1);
        assert_eq!(per_ms(Duration::from_secs(30 * 86_400)), 30 * DAY);
    }

    #[test]
    fn seconds_round_up() {
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_nanos(1), 1),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(999), 1),
            (Duration::from_millis(1_000), 1),
            (Duration::from_millis(1_001), 2),
            (Duration::from_secs(3_600), 3_600),
        ];
        for (d, secs) in cases {
            assert_eq!(ceil_secs(d), secs, "{d:?}");
        }
    }

    #[test]
    fn tightest_window_is_the_one_with_fewest_remaining() {
        // now = 30 s into a minute, 30 s into an hour.
        let now = 30 * SEC;
        // (windows, expected limit, remaining, reset ms)
        let cases: &[(&[Observed], u64, u64, u64)] = &[
            // One window.
            (&[obs(10, MIN, 3)], 10, 7, 30 * SEC),
            // The minute has fewer left than the hour.
            (&[obs(500, MIN, 499), obs(10_000, HOUR, 600)], 500, 1, 30 * SEC),
            // The hour has fewer left than the minute.
            (
                &[obs(500, MIN, 10), obs(10_000, HOUR, 9_999)],
                10_000,
                1,
                HOUR - 30 * SEC,
            ),
            // A tie goes to the longer window, whatever the order.
            (&[obs(10, MIN, 5), obs(105, HOUR, 100)], 105, 5, HOUR - 30 * SEC),
            (&[obs(105, HOUR, 100), obs(10, MIN, 5)], 105, 5, HOUR - 30 * SEC),
            (
                &[obs(10, SEC, 10), obs(20, MIN, 20), obs(5, DAY, 5)],
                5,
                0,
                DAY - 30 * SEC,
            ),
        ];
        for (windows, limit, remaining, reset_ms) in cases {
            let Verdict::Allowed(status) = verdict(now, true, windows.iter().copied()) else {
                panic!("allowed verdict expected for {windows:?}");
            };
            let expected = WindowStatus {
                limit: *limit,
                remaining: *remaining,
                reset: Duration::from_millis(*reset_ms),
            };
            assert_eq!(status, expected, "{windows:?}");
        }
    }

    #[test]
    fn retry_after_is_the_longest_wait_of_the_denying_windows() {
        // (now, windows, expected tightest limit, retry_after ms)
        let cases: &[(u64, &[Observed], u64, u64)] = &[
            // The minute denies: wait for the minute to end.
            (15 * SEC, &[obs(5, MIN, 5), obs(100, HOUR, 40)], 5, 45 * SEC),
            // The hour denies, the minute has room: wait for the hour.
            (
                15 * SEC,
                &[obs(5, MIN, 1), obs(100, HOUR, 100)],
                100,
                HOUR - 15 * SEC,
            ),
            // Both deny: the longer wait, and the tie on remaining (0)
            // shows the longer window.
            (
                15 * SEC,
                &[obs(5, MIN, 5), obs(100, HOUR, 100)],
                100,
                HOUR - 15 * SEC,
            ),
            // Epoch-aligned windows of unrelated lengths: the longer window
            // can end sooner (7 d vs 30 d), and the wait follows the ends.
            (29 * DAY, &[obs(3, 7 * DAY, 3), obs(9, 30 * DAY, 9)], 9, 6 * DAY),
            // Counts above the limit (a shrunk plan) still deny.
            (0, &[obs(2, SEC, 7)], 2, SEC),
        ];
        for (now, windows, limit, wait_ms) in cases {
            let v = verdict(*now, false, windows.iter().copied());
            let Verdict::Denied { window, retry_after } = v else {
                panic!("denied verdict expected for {windows:?}");
            };
            assert_eq!(window.limit, *limit, "{windows:?}");
            assert_eq!(window.remaining, 0, "{windows:?}");
            assert_eq!(retry_after, Duration::from_millis(*wait_ms), "{windows:?}");
        }
    }

    #[test]
    fn header_values() {
        let denied = Verdict::Denied {
            window: WindowStatus {
                limit: 1,
                remaining: 0,
                reset: Duration::from_millis(1),
            },
            retry_after: Duration::from_millis(1),
        };
        assert_eq!(denied.retry_after_secs(), Some(1));
        assert_eq!(denied.window().map(WindowStatus::reset_secs), Some(1));
        assert!(!denied.is_allowed());
        let zero_wait = Verdict::Denied {
            window: WindowStatus {
                limit: 1,
                remaining: 0,
                reset: Duration::ZERO,
            },
            retry_after: Duration::ZERO,
        };
        assert_eq!(zero_wait.retry_after_secs(), Some(1), "Retry-After is at least 1");
        let allowed = verdict(500, true, [obs(10, SEC, 1)]);
        assert!(allowed.is_allowed());
        assert_eq!(allowed.retry_after_secs(), None);
        assert_eq!(allowed.window().map(WindowStatus::reset_secs), Some(1));
        let slow = verdict(HOUR + 1, false, [obs(1, HOUR, 1)]);
        assert_eq!(slow.retry_after_secs(), Some(3_600), "{slow:?}");
    }

    #[test]
    fn no_windows_means_unlimited() {
        assert_eq!(verdict(0, true, []), Verdict::Unlimited);
        assert_eq!(verdict(0, false, []), Verdict::Unlimited);
        assert!(Verdict::Unlimited.is_allowed());
        assert_eq!(Verdict::Unlimited.window(), None);
    }
}
