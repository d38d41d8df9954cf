//! Throttling of the progress reports a check sends to its [`super::CheckUi`]: a pass calls
//! [`Throttle::tick`] for every record or entry it handles, and only about every
//! [`INTERVAL`] does that turn into a report. The clock is read once every [`CHECK_EVERY`]
//! ticks, so the per-item cost is one counter increment and a compare; the check itself knows
//! nothing of terminals or file descriptors. Backup verify and restore (`crate::backup`) throttle
//! their reports with it too.

use std::time::{Duration, Instant};

/// Shortest time between two progress reports of a pass.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// Items handled between two looks at the clock.
pub(crate) const CHECK_EVERY: u32 = 1024;

/// Decides when a pass reports its progress.
#[derive(Debug)]
pub(crate) struct Throttle {
    last: Instant,
    calls: u32,
}

impl Throttle {
    pub(crate) fn new() -> Throttle {
        Throttle {
            last: Instant::now(),
            calls: 0,
        }
    }

    /// Restarts the interval (at the start of a pass, whose first report then comes after
    /// [`INTERVAL`]).
    pub(crate) fn restart(&mut self) {
        self.last = Instant::now();
        self.calls = 0;
    }

    /// Counts one item; whether a report is due now.
    pub(crate) fn tick(&mut self) -> bool {
        self.calls += 1;
        if self.calls < CHECK_EVERY {
            return false;
        }
        self.calls = 0;
        self.due_at(Instant::now())
    }

    /// Whether a report is due now (for callers whose items are large, such as chunks of a
    /// copy: one clock read each).
    pub(crate) fn due(&mut self) -> bool {
        self.due_at(Instant::now())
    }

    /// Whether a report is due at `now` (at least [`INTERVAL`] after the last one); if so,
    /// `now` becomes the time of the last report.
    pub(crate) fn due_at(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.last) >= INTERVAL {
            self.last = now;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_at_most_once_per_interval() {
        let mut t = Throttle::new();
        let t0 = t.last;
        assert!(!t.due_at(t0), "nothing is due at once");
        assert!(!t.due_at(t0 + INTERVAL / 2), "nor before the interval");
        assert!(t.due_at(t0 + INTERVAL), "due after the interval");
        assert!(
            !t.due_at(t0 + INTERVAL + INTERVAL / 2),
            "the interval restarts"
        );
        assert!(t.due_at(t0 + INTERVAL * 2));
        // A clock that went backwards (another thread's instant) never makes one due.
        assert!(!t.due_at(t0));
    }

    #[test]
    fn looks_at_the_clock_only_every_check_every_ticks() {
        let mut t = Throttle::new();
        // Pretend the last report was long ago: the clock would say "due" at every look.
        t.last = Instant::now()
            .checked_sub(INTERVAL * 10)
            .expect("an instant in the past");
        for i in 1..CHECK_EVERY {
            assert!(!t.tick(), "tick {i} must not look at the clock");
        }
        assert!(t.tick(), "tick {CHECK_EVERY} looks and finds a report due");
        // The count restarts after a look.
        t.last = Instant::now()
            .checked_sub(INTERVAL * 10)
            .expect("an instant in the past");
        for _ in 1..CHECK_EVERY {
            assert!(!t.tick());
        }
        assert!(t.tick());
    }
}
