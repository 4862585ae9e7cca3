//! The consumer context: commits before partitions are revoked, restores before new ones are
//! processed (readiness holds only once every assigned partition is restored), and reports
//! consumer lag from librdkafka's statistics.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use tracing::info;

use crate::telemetry::{self, RebalanceKind};

use super::lock;
use super::processor::Processor;

pub(super) struct GroupContext {
    pub processor: Arc<Mutex<Processor>>,
    /// Counts rebalance callbacks, so the loop can tell records polled before a rebalance
    /// (to be dropped: the new assignment fetches them again from the committed offsets).
    pub rebalances: AtomicU64,
}

impl GroupContext {
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::SeqCst)
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id < 0 || !p.desired || p.ls_offset < 0 {
                    continue;
                }
                // Offsets are committed by the transactional producer, which librdkafka's own
                // `consumer_lag` does not see: measure from the application position instead.
                let position = [p.app_offset, p.committed_offset, p.next_offset]
                    .into_iter()
                    .find(|&o| o >= 0);
                if let Some(pos) = position {
                    telemetry::consumer_lag_records(topic, *id, (p.ls_offset - pos).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut p = lock(&self.processor);
            // Not ready from here until the next assignment is restored in full.
            p.status.set_restored(false);
            info!(partitions = tpl.count(), "partitions revoked");
            telemetry::rebalance(RebalanceKind::Revoke);
            if let Err(e) = p.commit(consumer) {
                p.failure.get_or_insert(e);
            }
            p.offsets.clear();
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Assign(tpl) = rebalance {
            let mut p = lock(&self.processor);
            telemetry::rebalance(RebalanceKind::Assign);
            let assigned: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            p.status.set_restored(false);
            p.status.set_assigned(assigned.iter().copied().collect());
            p.status.set_restoring(true);
            let result = p.reassign(assigned);
            p.status.set_restoring(false);
            match result {
                // Ready only when every assigned partition is restored and nothing failed
                // before (a failure ends the pipeline, and the next one restores again).
                Ok(()) if p.failure.is_none() => p.status.set_restored(true),
                Ok(()) => {}
                // Left not ready; the supervisor logs the failure and restarts the pipeline.
                Err(e) => {
                    p.failure.get_or_insert(e);
                }
            }
        }
    }
}
