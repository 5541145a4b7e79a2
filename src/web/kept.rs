//! A value read from the database with when it was read: what the web app shares between
//! requests for a few seconds (the queue's counts, the queue as it is now, the staff list)
//! rather than read again for each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A value and the instant it was read, or nothing yet.
pub struct Kept<T>(Mutex<Option<(Instant, T)>>);

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept(Mutex::new(None))
    }
}

impl<T: Clone> Kept<T> {
    /// The value and when it was read, however old.
    pub fn last(&self) -> Option<(Instant, T)> {
        self.slot().clone()
    }

    /// The value, if it was read less than `fresh_for` before `now`.
    pub fn fresh(&self, now: Instant, fresh_for: Duration) -> Option<T> {
        self.slot()
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < fresh_for)
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value`, read now.
    pub fn keep(&self, value: T) {
        *self.slot() = Some((Instant::now(), value));
    }

    /// Forgets the value: the next reader reads it again.
    pub fn forget(&self) {
        *self.slot() = None;
    }

    /// The slot; a panic while it was held left a whole value or none, so it is still good.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(Instant, T)>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_fresh_until_its_time_is_up_and_gone_once_forgotten() {
        let kept = Kept::default();
        assert_eq!(kept.fresh(Instant::now(), Duration::from_secs(10)), None, "nothing yet");
        kept.keep("read");
        let (at, value) = kept.last().unwrap();
        assert_eq!(value, "read");
        let fresh_for = Duration::from_secs(10);
        assert_eq!(
            kept.fresh(at + fresh_for - Duration::from_millis(1), fresh_for),
            Some("read")
        );
        assert_eq!(kept.fresh(at + fresh_for, fresh_for), None, "stale");
        assert!(kept.last().is_some(), "a stale value is still there to show");
        kept.forget();
        assert!(kept.last().is_none());
    }
}
