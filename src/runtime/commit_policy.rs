//! When to commit: as soon as the input is drained, bounded by the commit interval under
//! load.
//!
//! A fixed interval makes every output wait for the next tick: at 100 ms the median
//! produce-to-visible latency is about half of it whatever the load. Committing when a poll
//! finds the consumer's queue empty lets the commit's own duration set the batch instead: the
//! records that arrive while one transaction commits form the next one, so at low rates each
//! output waits about one commit, and as the rate rises the transactions grow by themselves.
//! Under load the queue never empties and the interval (or the batch size) decides, as before.
//! A small least gap between two commits keeps a trickle of records from costing the broker a
//! transaction each.

use std::time::{Duration, Instant};

use crate::config::ProcessingConfig;

/// Why a commit is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The input was drained.
    Drained,
    /// The commit interval passed.
    Interval,
    /// The batch is full.
    Batch,
}

/// The commit decision of a consume-process-produce loop.
#[derive(Debug, Clone)]
pub struct CommitPolicy {
    interval: Duration,
    /// Least time between two commits made because the input was drained; `None`: commit on
    /// the interval and the batch size only.
    on_drain: Option<Duration>,
    max_batch: usize,
    last: Instant,
}

impl CommitPolicy {
    /// The policy `processing` configures, counting from `now`.
    pub fn new(processing: &ProcessingConfig, now: Instant) -> CommitPolicy {
        CommitPolicy {
            interval: Duration::from_millis(processing.commit_interval_ms),
            on_drain: processing
                .adaptive_commit
                .then(|| Duration::from_millis(processing.commit_min_gap_ms)),
            max_batch: processing.max_batch,
            last: now,
        }
    }

    /// Whether to commit now: `pending` inputs were handled since the last commit,
    /// `uncommitted` says whether anything at all (inputs, outputs of deadlines or table
    /// changes) waits, and `drained` whether the last poll emptied the consumer's queue.
    pub fn due(
        &self,
        now: Instant,
        pending: usize,
        uncommitted: bool,
        drained: bool,
    ) -> Option<Trigger> {
        if !uncommitted {
            return None;
        }
        let since = now.saturating_duration_since(self.last);
        if pending >= self.max_batch {
            Some(Trigger::Batch)
        } else if since >= self.interval {
            Some(Trigger::Interval)
        } else if drained && self.on_drain.is_some_and(|gap| since >= gap) {
            Some(Trigger::Drained)
        } else {
            None
        }
    }

    /// Records a commit that ended at `now`.
    pub fn committed(&mut self, now: Instant) {
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(adaptive: bool, gap_ms: u64) -> (CommitPolicy, Instant) {
        let now = Instant::now();
        let cfg = ProcessingConfig {
            commit_interval_ms: 100,
            max_batch: 10,
            adaptive_commit: adaptive,
            commit_min_gap_ms: gap_ms,
            ..ProcessingConfig::default()
        };
        (CommitPolicy::new(&cfg, now), now)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_uncommitted_is_never_due() {
        let (p, t) = policy(true, 0);
        assert_eq!(p.due(t + 500 * MS, 0, false, true), None);
        assert_eq!(p.due(t + 500 * MS, 20, false, false), None);
    }

    #[test]
    fn drained_input_commits_after_the_least_gap() {
        let (mut p, t) = policy(true, 5);
        assert_eq!(p.due(t + 4 * MS, 1, true, true), None);
        assert_eq!(p.due(t + 5 * MS, 1, true, true), Some(Trigger::Drained));
        // Not drained: waits for the interval.
        assert_eq!(p.due(t + 50 * MS, 3, true, false), None);
        assert_eq!(p.due(t + 100 * MS, 3, true, false), Some(Trigger::Interval));
        p.committed(t + 100 * MS);
        assert_eq!(p.due(t + 102 * MS, 1, true, true), None);
        assert_eq!(p.due(t + 105 * MS, 1, true, true), Some(Trigger::Drained));
    }

    #[test]
    fn a_full_batch_commits_at_once() {
        let (p, t) = policy(true, 5);
        assert_eq!(p.due(t, 10, true, false), Some(Trigger::Batch));
    }

    #[test]
    fn without_adaptive_commits_only_interval_and_batch_count() {
        let (p, t) = policy(false, 0);
        assert_eq!(p.due(t + 99 * MS, 9, true, true), None);
        assert_eq!(p.due(t + 100 * MS, 9, true, true), Some(Trigger::Interval));
        assert_eq!(p.due(t + MS, 10, true, true), Some(Trigger::Batch));
    }

    #[test]
    fn outputs_without_inputs_commit_on_drain() {
        // A deadline or a table change published something: no input pending.
        let (p, t) = policy(true, 0);
        assert_eq!(p.due(t, 0, true, true), Some(Trigger::Drained));
    }
}
