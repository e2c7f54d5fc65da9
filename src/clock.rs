//! Injected time. Everything that decides by time (expiry, rotation grace,
//! cache TTLs, rate windows) reads a [`Clock`] from state, so tests use a
//! [`ManualClock`] instead of sleeping.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// A source of the current instant.
pub trait Clock: Send + Sync + Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Now in milliseconds since the Unix epoch (0 before it): what rate
    /// windows and usage timestamps count in.
    fn unix_ms(&self) -> u64 {
        u64::try_from(self.now().timestamp_millis()).unwrap_or(0)
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// Read without building a calendar date (`now()` and back costs a
    /// few hundred instructions, on every rate-limited request).
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock standing at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        // std Mutex: held for one addition, never across an await.
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }

    /// Sets the clock.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_counts_from_the_epoch() {
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        assert_eq!(ManualClock::new(at).unix_ms(), 1_700_000_000_123);
        let before_epoch = DateTime::from_timestamp_millis(-5).unwrap();
        assert_eq!(ManualClock::new(before_epoch).unix_ms(), 0);
        // The system clock's shortcut agrees with its calendar reading.
        let before = u64::try_from(Utc::now().timestamp_millis()).unwrap();
        let read = SystemClock.unix_ms();
        let after = u64::try_from(Utc::now().timestamp_millis()).unwrap();
        assert!((before..=after).contains(&read), "{before} <= {read} <= {after}");
    }
}
