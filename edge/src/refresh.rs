//! When an isolate reads a store again: the one clock behind both
//! [`crate::LastGoodKeys`] and [`crate::AllowlistState`].
//!
//! Sans I/O: the shell passes the time in (milliseconds since the epoch),
//! so the rules run the same in native tests and in workerd.

use std::time::Duration;

#[derive(Debug)]
pub(crate) struct RefreshClock {
    /// When the store was last read, or a read claimed.
    checked_at_ms: Option<u64>,
    interval_ms: u64,
}

impl RefreshClock {
    /// `interval` is how long what was read is used before the store is
    /// asked again.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            checked_at_ms: None,
            interval_ms: millis(interval),
        }
    }

    pub(crate) fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Whether the store was ever read (or a read claimed).
    pub(crate) fn ever_checked(&self) -> bool {
        self.checked_at_ms.is_some()
    }

    /// Whether `wait_ms` has passed since the last read; true before the
    /// first one.
    pub(crate) fn waited(&self, now_ms: u64, wait_ms: u64) -> bool {
        self.checked_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= wait_ms)
    }

    /// Whether a whole interval has passed since the last read.
    pub(crate) fn is_due(&self, now_ms: u64) -> bool {
        self.waited(now_ms, self.interval_ms)
    }

    /// Records a read (or a claimed one) at `now_ms`.
    pub(crate) fn checked(&mut self, now_ms: u64) {
        self.checked_at_ms = Some(now_ms);
    }
}

/// A duration in whole milliseconds, saturating (a refresh interval of
/// `u64::MAX` seconds means "never").
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
