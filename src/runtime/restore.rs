//! Restores device state from the compacted changelog topic, through its latest snapshot
//! (`runtime::snapshots`) when there is a usable one.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::codec;
use crate::config::Config;
use crate::engine::ownership::{is_status_key, PublishedStatuses};
use crate::engine::Engine;
use crate::model::{ConnectorStatusChange, DeviceStateRecord};
use crate::telemetry::{self, SnapshotFallback};

use super::kafka::{consumer_config, EofAware};
use super::snapshots::{self, Found};

/// Longest a restore may take before it is given up as stuck.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

/// How one partition was restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionRestore {
    /// Entries applied from a snapshot (0 when none was used).
    pub snapshot: usize,
    /// Changelog records read: the tail after the snapshot, or the whole changelog.
    pub changelog: usize,
    /// Chunks of the newest snapshot generation seen, used or not.
    pub chunks: u32,
    /// Why no snapshot was used, when snapshots are on.
    pub fallback: Option<SnapshotFallback>,
}

impl PartitionRestore {
    /// Records applied in all.
    pub fn records(&self) -> usize {
        self.snapshot + self.changelog
    }
}

/// Connector statuses found while restoring.
#[derive(Debug, Default)]
pub struct RestoredStatuses {
    /// The status last published for each connector.
    pub published: PublishedStatuses,
    /// Their changelog records, by changelog partition and key: what a snapshot carries.
    pub records: HashMap<i32, HashMap<Vec<u8>, Vec<u8>>>,
}

/// Decodes changelog records in place into one reused value (its strings keep their
/// buffers) and applies them to the engine; connector statuses go to a map.
#[derive(Default)]
struct Applier {
    spare: Option<DeviceStateRecord>,
}

impl Applier {
    /// Applies one changelog record (`value` `None`: a tombstone) of `partition`.
    fn apply(
        &mut self,
        engine: &mut Engine,
        statuses: &mut RestoredStatuses,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        if is_status_key(key) {
            if let Some(v) = value {
                let s = codec::decode::<ConnectorStatusChange>(v).context("connector status")?;
                statuses.published.insert(
                    (s.tenant_id, s.partner_id),
                    (s.current, s.compliance_ignored),
                );
                statuses
                    .records
                    .entry(partition)
                    .or_default()
                    .insert(key.to_vec(), v.to_vec());
            }
            return Ok(());
        }
        let key = std::str::from_utf8(key).unwrap_or_default();
        let record = match value {
            None => None,
            Some(b) => {
                match self.spare.as_mut() {
                    Some(r) => codec::decode_into(b, r),
                    None => codec::decode::<DeviceStateRecord>(b).map(|r| {
                        self.spare = Some(r);
                    }),
                }
                .context("not a device state record")?;
                self.spare.as_ref()
            }
        };
        engine.restore(partition, key, record)?;
        Ok(())
    }
}

/// Restores partitions `partitions` into the engine, one after the other: with snapshots on,
/// the newest complete snapshot and then the changelog after the offset it covers; otherwise,
/// or when no snapshot is usable, the whole changelog (one consumer per partition: measured
/// faster than one consumer fetching all of them at once, 0.48 against 0.34 M records/s on
/// the benchmark machine). The connector statuses last published by the partitions' owners
/// go into `statuses`.
pub fn restore_partitions(
    cfg: &Config,
    engine: &mut Engine,
    partitions: &[i32],
    statuses: &mut RestoredStatuses,
) -> anyhow::Result<BTreeMap<i32, PartitionRestore>> {
    let topic = &cfg.topics.device_state;
    let mut applier = Applier::default();
    let mut out = BTreeMap::new();
    for &p in partitions {
        let mut restored = PartitionRestore::default();
        let mut from = 0;
        if cfg.processing.snapshots {
            match from_snapshot(cfg, engine, &mut applier, p)? {
                Ok((covered, entries, chunks, found)) => {
                    statuses.published.extend(found.published);
                    for (p, records) in found.records {
                        statuses.records.entry(p).or_default().extend(records);
                    }
                    restored.snapshot = entries;
                    restored.chunks = chunks;
                    from = covered;
                }
                Err((reason, chunks)) => {
                    restored.fallback = Some(reason);
                    restored.chunks = chunks;
                }
            }
        }
        let counts = read_from(cfg, topic, &[(p, from)], "restore", |m| {
            applier
                .apply(
                    engine,
                    statuses,
                    p,
                    m.key().unwrap_or_default(),
                    m.payload(),
                )
                .with_context(|| format!("changelog {topic}[{p}]@{}", m.offset()))
        })?;
        restored.changelog = counts.values().sum();
        out.insert(p, restored);
    }
    return_freed_memory();
    Ok(out)
}

/// Hands the memory freed by the restore consumers back to the system. librdkafka allocates
/// its fetch buffers (up to `max.partition.fetch.bytes`, 50 MB here) with glibc's malloc, in
/// per-thread arenas of 64 MB that glibc keeps once freed: in a soak run an instance's RSS
/// went from 88 MB to 384 MB after its first restart and 832 MB after its second, almost all
/// of it in such arenas (`/proc/PID/smaps`), while the engine's own heap (mimalloc) held 34 MB.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Applies the newest usable snapshot of `partition`: `Ok` with the offset it covers, the
/// entries applied, its chunk count and the connector statuses it held; or why none was
/// usable (after removing whatever part of it was applied) with the newest chunk count seen.
#[allow(clippy::type_complexity)]
fn from_snapshot(
    cfg: &Config,
    engine: &mut Engine,
    applier: &mut Applier,
    partition: i32,
) -> anyhow::Result<Result<(i64, usize, u32, RestoredStatuses), (SnapshotFallback, u32)>> {
    let topic = &cfg.topics.device_state_snapshots;
    let mut found = Found::default();
    read_from(cfg, topic, &[(partition, 0)], "snapshot", |m| {
        found.add(m.offset(), m.payload());
        Ok(())
    })?;
    let newest = found.newest_count();
    for (offset, e) in &found.corrupt {
        warn!(topic = %topic, partition, offset, error = %e, "unusable snapshot chunk");
    }
    let fallback = |reason: SnapshotFallback, detail: &str| {
        telemetry::snapshot_fallback(reason);
        match reason {
            SnapshotFallback::Missing => {
                info!(
                    partition,
                    "no snapshot yet: restoring from the whole changelog"
                )
            }
            _ => warn!(
                partition,
                reason = reason.as_str(),
                detail,
                "snapshot not usable: restoring from the whole changelog"
            ),
        }
        Ok(Err((reason, newest)))
    };
    let (covered, chunks) = match found.newest_complete() {
        Ok(g) => g,
        Err(reason) => return fallback(reason, ""),
    };
    let high = high_watermark(cfg, &cfg.topics.device_state, partition)?;
    if covered > high {
        let detail = format!("covers offset {covered}, the changelog ends at {high}");
        return fallback(SnapshotFallback::Ahead, &detail);
    }
    let mut statuses = RestoredStatuses::default();
    let mut entries = 0;
    let count = chunks.len() as u32;
    let applied = chunks.iter().try_for_each(|c| {
        let raw = c.raw().map_err(|e| format!("chunk {}: {e}", c.index))?;
        for e in snapshots::entries(&raw) {
            let (key, value) = e.map_err(|e| format!("chunk {}: {e}", c.index))?;
            applier
                .apply(engine, &mut statuses, partition, key, Some(value))
                .map_err(|e| format!("chunk {}: {e:#}", c.index))?;
            entries += 1;
        }
        Ok::<(), String>(())
    });
    if let Err(detail) = applied {
        engine.drop_partition(partition);
        return fallback(SnapshotFallback::Corrupt, &detail);
    }
    Ok(Ok((covered, entries, count, statuses)))
}

/// The high watermark (read_uncommitted) of one partition.
fn high_watermark(cfg: &Config, topic: &str, partition: i32) -> anyhow::Result<i64> {
    let mut c = consumer_config(cfg);
    c.set("isolation.level", "read_uncommitted");
    let consumer: BaseConsumer = c.create().context("create watermark reader")?;
    let (_, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .with_context(|| format!("watermarks of {topic}[{partition}]"))?;
    Ok(high)
}

/// Reads `partitions` of `topic` from the beginning to the end they had when the read began
/// (their high watermarks), with one consumer (group id suffixed `-{purpose}`, never
/// committed), handing each record to `f`; returns the records read per partition.
pub fn read_to_end(
    cfg: &Config,
    topic: &str,
    partitions: &[i32],
    purpose: &str,
    f: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<BTreeMap<i32, usize>> {
    let from: Vec<(i32, i64)> = partitions.iter().map(|&p| (p, 0)).collect();
    read_from(cfg, topic, &from, purpose, f)
}

/// [`read_to_end`] from offset `from` of each `(partition, from)` (0: the beginning).
pub fn read_from(
    cfg: &Config,
    topic: &str,
    partitions: &[(i32, i64)],
    purpose: &str,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<BTreeMap<i32, usize>> {
    let mut counts: BTreeMap<i32, usize> = partitions.iter().map(|&(p, _)| (p, 0)).collect();
    if partitions.is_empty() {
        return Ok(counts);
    }
    let mut c = consumer_config(cfg);
    c.set(
        "group.id",
        format!("{}-{purpose}-{}", cfg.kafka.group_id, cfg.kafka.instance_id),
    )
    .set("enable.partition.eof", "true")
    .set("fetch.max.bytes", "104857600")
    .set("max.partition.fetch.bytes", "52428800");
    let consumer: BaseConsumer<EofAware> = c
        .create_with_context(EofAware)
        .with_context(|| format!("create {purpose} consumer"))?;
    // Partition -> its end when the read began.
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &(p, from) in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}[{p}]"))?;
        if high > low.max(from) {
            open.insert(p, high);
            let start = if from > low {
                Offset::Offset(from)
            } else {
                Offset::Beginning
            };
            tpl.add_partition_offset(topic, p, start)?;
        }
    }
    if open.is_empty() {
        return Ok(counts);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let mut polls = 0u32;
    while !open.is_empty() {
        // The clock is read every 1,024 polls: a read per record showed in the profile.
        polls = polls.wrapping_add(1);
        if polls % 1024 == 0 && Instant::now() > deadline {
            anyhow::bail!(
                "reading {topic} partitions {:?} did not finish within {RESTORE_TIMEOUT:?}",
                open.keys().collect::<Vec<_>>()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(&high) = open.get(&p) else {
                    continue;
                };
                *counts.entry(p).or_default() += 1;
                f(&m)?;
                if m.offset() + 1 >= high {
                    open.remove(&p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("{purpose} consumer")),
            None => {
                // Transaction markers may end a log: a partition whose position reached its
                // end is done.
                let positions = consumer.position().context("consumer position")?;
                for e in positions.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        if open.get(&e.partition()).is_some_and(|&high| o >= high) {
                            open.remove(&e.partition());
                        }
                    }
                }
            }
        }
    }
    Ok(counts)
}
