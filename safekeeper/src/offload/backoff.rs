//! Retry delays of a failing offloader: none while uploads succeed; after a failure 5 s,
//! doubling with each further failure up to 5 min; each success halves the delay again
//! (below 5 s it is gone), so a flapping store is not hammered and a recovered one is
//! caught up with quickly.
//!
//! Owns: that arithmetic (pure, unit-tested). Must never: wait longer than the maximum.

use std::time::Duration;

/// The first delay after a failure.
pub const MIN_DELAY: Duration = Duration::from_secs(5);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The current retry delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// How long to wait before the next attempt.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// An attempt failed: wait longer.
    pub fn failed(&mut self) {
        self.delay = if self.delay.is_zero() {
            MIN_DELAY
        } else {
            (self.delay * 2).min(MAX_DELAY)
        };
    }

    /// An attempt succeeded: wait half as long (not at all below the minimum).
    pub fn succeeded(&mut self) {
        self.delay /= 2;
        if self.delay < MIN_DELAY {
            self.delay = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_five_seconds_to_five_minutes_and_halves_on_success() {
        let mut b = Backoff::default();
        assert_eq!(b.delay(), Duration::ZERO);
        let mut seen = vec![];
        for _ in 0..9 {
            b.failed();
            seen.push(b.delay().as_secs());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        b.succeeded();
        assert_eq!(b.delay().as_secs(), 150);
        for _ in 0..5 {
            b.succeeded();
        }
        assert_eq!(b.delay(), Duration::ZERO);
        b.failed();
        assert_eq!(b.delay(), MIN_DELAY);
    }
}
