//! Log lines for losses, at most one per stage per interval: while a disk
//! stays full every writer batch reports a loss, and the loss records and
//! `tiergate_events_lost_total` already count each record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one `events lost` line per stage this often.
pub const LOSS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Per stage: when a line was last logged, and the records lost since.
#[derive(Default)]
pub struct LossLog {
    stages: HashMap<String, (Option<Instant>, u64)>,
}

impl LossLog {
    /// Adds `count` lost records of `stage` at `now`; returns the count to
    /// log now (everything since the previous line), or `None` within the
    /// interval.
    pub fn note(&mut self, stage: &str, count: u64, now: Instant) -> Option<u64> {
        let (last, pending) = self.stages.entry(stage.to_string()).or_default();
        *pending += count;
        if last.is_some_and(|t| now.duration_since(t) < LOSS_LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_stage_per_interval_with_the_count_since_the_last() {
        let mut log = LossLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note("spool-full", 5, t0), Some(5));
        assert_eq!(log.note("spool-full", 1, t0 + Duration::from_secs(1)), None);
        assert_eq!(
            log.note("kernel-ringbuf", 2, t0 + Duration::from_secs(1)),
            Some(2)
        );
        assert_eq!(log.note("spool-full", 1, t0 + Duration::from_secs(2)), None);
        assert_eq!(log.note("spool-full", 3, t0 + LOSS_LOG_EVERY), Some(5));
        assert_eq!(log.note("spool-full", 1, t0 + LOSS_LOG_EVERY), None);
    }
}
