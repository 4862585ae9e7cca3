//! Changelog batches: when a partition has many device states waiting at once (a fan-out over
//! a tenant, a reconcile, a second in which many deadlines fire), they go into the open
//! transaction as a few large records instead of one record per device, so the outputs of a
//! million-device flip are committed without a million changelog records beside them.
//!
//! A batch is one or more chunk records in the changelog partition itself, keyed
//! `\u{1}changelog-batch/{partition}/{batch}/{chunk}` (device keys never start with that
//! control character), each in the snapshot chunk format (`runtime::snapshots`: header,
//! checksum, lz4 block of framed key/value entries). A restore applies a chunk's entries at
//! the chunk's place in the log, exactly as if they were records of their own there, so the
//! changelog stays the source of truth and exactly once holds: the batch commits or aborts with
//! the outputs it goes with. Tombstones are never batched; they go first, one record each.
//!
//! A chunk cannot stay in a compacted log for ever: compaction keeps it while it keeps newer
//! records of the same devices, so a device removed after the batch could come back once its
//! own tombstone is compacted away, and chunks would pile up. So after the batch commits, the
//! owner *settles* it: `processing.changelog_settle_per_commit` devices per transaction, it
//! writes each device's current state (or a tombstone) as its own record, and in the
//! transaction of the last ones a tombstone for each chunk. A new owner that restores a chunk
//! with no tombstone after it settles it again. A partition holding an unsettled batch is not
//! snapshotted, so a snapshot never covers a chunk that is still live: a restore finds every
//! live chunk in the changelog tail it reads.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};

use super::snapshots::{entries, Chunk, Image, SnapshotError};

/// The prefix of every batch chunk key.
pub const BATCH_KEY_PREFIX: &str = "\u{1}changelog-batch/";

/// Whether a changelog key holds a batch chunk.
pub fn is_batch_key(key: &[u8]) -> bool {
    key.starts_with(BATCH_KEY_PREFIX.as_bytes())
}

/// The key of chunk `index` of batch `batch` in `partition`.
pub fn chunk_key(partition: i32, batch: &str, index: usize) -> String {
    format!("{BATCH_KEY_PREFIX}{partition}/{batch}/{index}")
}

/// A batch id no other batch of any instance has: the wall clock in nanoseconds and a counter
/// (two batches in one nanosecond of one process differ by the counter).
pub fn new_batch_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{n:x}-{:x}", std::process::id())
}

/// The chunk records of a batch holding `image` (nothing for an empty image).
pub fn encode(image: &Image) -> Vec<Vec<u8>> {
    if image.entries() == 0 {
        return Vec::new();
    }
    image.encode(0)
}

/// One changelog entry: key and value bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The device entries (key, Avro state) of one chunk record's value, in order: what a
/// reader of the changelog applies where it meets the chunk.
pub fn chunk_entries(value: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
    let raw = Chunk::parse(value)?.raw()?;
    entries(&raw)
        .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect()
}

/// One batch (or, after a restore, one chunk of it) still to settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    /// Its chunk records, tombstoned once every device is written.
    pub chunk_keys: Vec<String>,
    /// The device keys (`tenant/device`) it holds.
    pub devices: Vec<String>,
    next: usize,
}

impl Settle {
    pub fn new(chunk_keys: Vec<String>, devices: Vec<String>) -> Settle {
        Settle {
            chunk_keys,
            devices,
            next: 0,
        }
    }

    fn left(&self) -> usize {
        self.devices.len() - self.next
    }
}

/// What settling writes next, handed out by [`Settles::step`].
#[derive(Debug, PartialEq, Eq)]
pub enum Work<'a> {
    /// The device's current state, or a tombstone when it is no longer held.
    Device(&'a str),
    /// A tombstone for a chunk all of whose devices were written before it.
    Chunk(&'a str),
}

/// The unsettled batches of each owned partition, in the order they were written.
#[derive(Debug, Default)]
pub struct Settles {
    by_partition: BTreeMap<i32, VecDeque<Settle>>,
}

impl Settles {
    pub fn add(&mut self, partition: i32, settle: Settle) {
        self.by_partition
            .entry(partition)
            .or_default()
            .push_back(settle);
    }

    /// Forgets `partition`'s batches (it was lost, or is restored again).
    pub fn forget(&mut self, partition: i32) {
        self.by_partition.remove(&partition);
    }

    /// Forgets the partitions not in `owned`: their new owner settles what is left.
    pub fn retain(&mut self, owned: &HashSet<i32>) {
        self.by_partition.retain(|p, _| owned.contains(p));
    }

    /// Whether `partition` holds a batch not settled yet (it must not be snapshotted).
    pub fn holds(&self, partition: i32) -> bool {
        self.by_partition
            .get(&partition)
            .is_some_and(|q| !q.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.by_partition.values().all(VecDeque::is_empty)
    }

    /// Devices still to write, over all partitions.
    pub fn devices_left(&self) -> usize {
        self.by_partition
            .values()
            .flat_map(|q| q.iter().map(Settle::left))
            .sum()
    }

    /// Hands out up to `budget` devices to write, oldest batch first, and after the last device
    /// of a batch its chunks to tombstone; a batch handed out whole is forgotten. `f` writes
    /// into the open transaction; its first error stops the step.
    pub fn step<E>(
        &mut self,
        mut budget: usize,
        mut f: impl FnMut(i32, Work<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for (&partition, queue) in self.by_partition.iter_mut() {
            while budget > 0 {
                let Some(settle) = queue.front_mut() else {
                    break;
                };
                let end = settle.devices.len().min(settle.next + budget);
                for key in &settle.devices[settle.next..end] {
                    f(partition, Work::Device(key))?;
                }
                budget -= end - settle.next;
                settle.next = end;
                if settle.left() > 0 {
                    break;
                }
                for key in &settle.chunk_keys {
                    f(partition, Work::Chunk(key))?;
                }
                queue.pop_front();
            }
        }
        self.by_partition.retain(|_, q| !q.is_empty());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    fn run(s: &mut Settles, budget: usize) -> Vec<String> {
        let mut seen = Vec::new();
        s.step::<()>(budget, |p, w| {
            seen.push(match w {
                Work::Device(k) => format!("{p}:d:{k}"),
                Work::Chunk(k) => format!("{p}:c:{k}"),
            });
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn devices_go_out_in_budgets_and_chunks_after_their_last_device() {
        let mut s = Settles::default();
        s.add(3, Settle::new(keys("c", 2), keys("a/", 3)));
        s.add(3, Settle::new(keys("k", 1), keys("b/", 1)));
        s.add(5, Settle::new(keys("x", 1), keys("e/", 2)));
        assert!(s.holds(3) && s.holds(5) && !s.holds(4));
        assert_eq!(s.devices_left(), 6);
        assert_eq!(run(&mut s, 2), ["3:d:a/0", "3:d:a/1"]);
        assert_eq!(
            run(&mut s, 3),
            ["3:d:a/2", "3:c:c0", "3:c:c1", "3:d:b/0", "3:c:k0", "5:d:e/0"]
        );
        assert!(!s.holds(3));
        assert_eq!(run(&mut s, 10), ["5:d:e/1", "5:c:x0"]);
        assert!(s.is_empty());
        assert!(run(&mut s, 10).is_empty());
    }

    #[test]
    fn a_failed_write_stops_the_step_and_is_written_again() {
        let mut s = Settles::default();
        s.add(0, Settle::new(keys("c", 1), keys("a/", 2)));
        let r = s.step(5, |_, w| match w {
            Work::Device("a/1") => Err("down"),
            _ => Ok(()),
        });
        assert_eq!(r, Err("down"));
        // Nothing is marked done on a failure: the pipeline is rebuilt from the changelog.
        assert_eq!(s.devices_left(), 2);
    }

    #[test]
    fn lost_partitions_are_forgotten() {
        let mut s = Settles::default();
        s.add(1, Settle::new(keys("c", 1), keys("a/", 1)));
        s.add(2, Settle::new(keys("c", 1), keys("a/", 1)));
        s.retain(&HashSet::from([2]));
        assert!(!s.holds(1) && s.holds(2));
        s.forget(2);
        assert!(s.is_empty());
    }

    #[test]
    fn chunks_round_trip_their_entries() {
        let mut image = Image::default();
        assert!(encode(&image).is_empty());
        image.push(b"t/d1", b"one");
        image.push(b"t/d2", b"two");
        let chunks = encode(&image);
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            chunk_entries(&chunks[0]).unwrap(),
            vec![
                (b"t/d1".to_vec(), b"one".to_vec()),
                (b"t/d2".to_vec(), b"two".to_vec())
            ]
        );
        let mut bad = chunks[0].clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(chunk_entries(&bad), Err(SnapshotError::Checksum));
        let key = chunk_key(7, &new_batch_id(), 0);
        assert!(is_batch_key(key.as_bytes()) && !is_batch_key(b"t/d1"));
        assert_ne!(new_batch_id(), new_batch_id());
    }
}
