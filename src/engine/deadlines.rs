//! A shard's pending device deadlines: a calendar of one bucket per second, each a plain vector
//! of 4-byte device slots, the buckets ordered by second.
//!
//! Why not a `BTreeSet<u64>` of packed `second << 32 | slot` (what it was): with a deadline on
//! every device the B-tree cost about 21 B per device at 10M devices (8-byte keys in two-thirds
//! full nodes, plus the inner nodes), which put the contract 1.1 population over the 200 B/device
//! bar (BENCHMARKS.md, "Grace periods and report expiry"). A device's deadline is second-grained
//! (rounded up) and many devices share a second, so a vector per second costs 4 B per entry
//! plus growth, and the per-second overhead is shared by every device due in it.
//!
//! Entries may be stale or repeated: the engine re-derives a device's deadline from its state
//! when the entry fires, so a later or a gone deadline fires nothing. Re-evaluations that
//! schedule the same second again (a table change re-evaluating every device) would grow a
//! bucket without bound, so a bucket is sorted and deduplicated whenever it has doubled since
//! its last deduplication: repeats cost at most twice the distinct entries, amortised
//! O(log n) per schedule.

use std::collections::BTreeMap;

/// One second's slots.
#[derive(Debug, Default)]
struct Bucket {
    slots: Vec<u32>,
    /// Length right after the last deduplication.
    distinct: usize,
}

/// Smallest bucket worth deduplicating (small ones are cheap as they are).
const DEDUP_MIN: usize = 32;

/// The calendar.
#[derive(Debug, Default)]
pub struct Deadlines {
    by_second: BTreeMap<u32, Bucket>,
    entries: usize,
}

impl Deadlines {
    /// Schedules `slot` at `second`.
    pub fn schedule(&mut self, second: u32, slot: u32) {
        let bucket = self.by_second.entry(second).or_default();
        bucket.slots.push(slot);
        self.entries += 1;
        if bucket.slots.len() >= DEDUP_MIN && bucket.slots.len() >= 2 * bucket.distinct.max(1) {
            let before = bucket.slots.len();
            bucket.slots.sort_unstable();
            bucket.slots.dedup();
            if bucket.slots.capacity() > bucket.slots.len() * 3 / 2 + DEDUP_MIN {
                bucket.slots.shrink_to_fit();
            }
            bucket.distinct = bucket.slots.len();
            self.entries -= before - bucket.slots.len();
        }
    }

    /// The first second with an entry.
    pub fn first_second(&self) -> Option<u32> {
        self.by_second.keys().next().copied()
    }

    /// Removes and returns the slots of `second` if it is the first (each once, ascending).
    pub fn take(&mut self, second: u32) -> Vec<u32> {
        match self.by_second.first_key_value() {
            Some((&s, _)) if s == second => {}
            _ => return Vec::new(),
        }
        let (_, mut bucket) = self.by_second.pop_first().expect("checked above");
        self.entries -= bucket.slots.len();
        bucket.slots.sort_unstable();
        bucket.slots.dedup();
        bucket.slots
    }

    /// Entries held (stale and repeated ones included).
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes held, for the shard's memory estimate: the vectors' capacity and, per second,
    /// a B-tree entry (key, vector, length) in a node about two-thirds full.
    pub fn heap_bytes(&self) -> usize {
        self.by_second
            .values()
            .map(|b| b.slots.capacity() * 4 + 48)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_each_second_in_order_each_slot_once() {
        let mut d = Deadlines::default();
        for (second, slot) in [(20, 1), (10, 2), (20, 3), (10, 2), (30, 4), (20, 1)] {
            d.schedule(second, slot);
        }
        assert_eq!(d.len(), 6);
        assert_eq!(d.first_second(), Some(10));
        // Not the first second: nothing.
        assert!(d.take(20).is_empty());
        assert_eq!(d.take(10), vec![2]);
        assert_eq!(d.take(20), vec![1, 3]);
        assert_eq!(d.first_second(), Some(30));
        assert_eq!(d.take(30), vec![4]);
        assert!(d.is_empty() && d.first_second().is_none());
    }

    #[test]
    fn repeated_scheduling_stays_bounded() {
        let mut d = Deadlines::default();
        // A thousand devices due in one second, re-evaluated (rescheduled) a hundred times.
        for _ in 0..100 {
            for slot in 0..1000 {
                d.schedule(7, slot);
            }
        }
        assert!(d.len() <= 2 * 1000, "{} entries", d.len());
        assert!(
            d.heap_bytes() <= 2 * 1000 * 4 * 2 + 48,
            "{} bytes",
            d.heap_bytes()
        );
        assert_eq!(d.take(7), (0..1000).collect::<Vec<_>>());
        assert_eq!(d.len(), 0);
    }
}
