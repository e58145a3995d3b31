//! Wall-clock time behind a trait, so that timer logic can run on tokio's paused clock.
//!
//! Recorded times (and so watchdog deadlines) are wall-clock UTC; the watchdog turns a
//! deadline into a tokio sleep via `deadline - clock.now()`. Under `TokioClock` both sides
//! advance with `tokio::time::advance`, which makes a 180 s watchdog testable in microseconds.

use chrono::{DateTime, Utc};
use std::sync::Arc;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub type SharedClock = Arc<dyn Clock>;

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that advances with tokio's clock: `start + (tokio now - tokio start)`.
/// With `tokio::time::pause()` it moves only when the test advances it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall_start: DateTime<Utc>,
    tokio_start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(wall_start: DateTime<Utc>) -> Self {
        TokioClock {
            wall_start,
            tokio_start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.tokio_start;
        self.wall_start + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_moves_only_with_tokio_time() {
        let start = Utc::now();
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(std::time::Duration::from_secs(180)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(180));
    }
}
