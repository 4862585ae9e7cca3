//! Restores device state from the compacted changelog topic, through its latest snapshot
//! (`runtime::snapshots`) when there is a usable one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

use super::changelog_batches::is_batch_key;
use super::kafka::{consumer_config, EofAware};
use super::snapshots::{self, Chunk, Found};

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
#[derive(Debug, Default, Clone)]
pub struct RestoredStatuses {
    /// The status last published for each connector.
    pub published: PublishedStatuses,
    /// Their changelog records, by changelog partition and key: what a snapshot carries.
    pub records: HashMap<i32, HashMap<Vec<u8>, Vec<u8>>>,
    /// Changelog batch chunks with no tombstone after them, by changelog partition: chunk key
    /// -> the device keys it holds (`runtime::changelog_batches`), still to settle.
    pub batches: HashMap<i32, BTreeMap<String, Vec<String>>>,
}

impl RestoredStatuses {
    /// Adds what another restore found (other partitions).
    fn extend(&mut self, other: RestoredStatuses) {
        self.published.extend(other.published);
        for (p, records) in other.records {
            self.records.entry(p).or_default().extend(records);
        }
        for (p, chunks) in other.batches {
            self.batches.entry(p).or_default().extend(chunks);
        }
    }
}

/// Changelog records applied together: [`Engine::restore_batch`] takes its locks once per
/// batch, not once per record.
const BATCH: usize = 256;

/// Gathers a partition's changelog records into batches, decoded in place into values kept
/// from batch to batch (their strings keep their buffers), and applies them to the engine;
/// connector statuses go to a map at once.
#[derive(Default)]
struct Applier {
    keys: Vec<String>,
    records: Vec<DeviceStateRecord>,
    /// Per batch entry: a record (`true`) or a tombstone.
    present: Vec<bool>,
    /// Per batch entry: where it came from (a changelog offset or a snapshot chunk), for errors.
    origins: Vec<i64>,
    len: usize,
}

impl Applier {
    /// Takes one changelog record (`value` `None`: a tombstone) of `partition`, read at
    /// `origin`; applies the batch when it is full. An error names the origin of the record
    /// at fault, which may be an earlier one of the batch.
    fn apply(
        &mut self,
        engine: &Engine,
        statuses: &mut RestoredStatuses,
        partition: i32,
        origin: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), (i64, anyhow::Error)> {
        if is_batch_key(key) {
            return self.apply_chunk(engine, statuses, partition, origin, key, value);
        }
        if is_status_key(key) {
            if let Some(v) = value {
                let s = codec::decode::<ConnectorStatusChange>(v)
                    .context("connector status")
                    .map_err(|e| (origin, e))?;
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
        let i = self.len;
        if let Some(b) = value {
            match self.records.get_mut(i) {
                Some(r) => codec::decode_into(b, r),
                None => codec::decode::<DeviceStateRecord>(b).map(|r| self.records.push(r)),
            }
            .context("not a device state record")
            .map_err(|e| (origin, e))?;
        }
        if i == self.keys.len() {
            self.keys.push(String::new());
            self.present.push(false);
            self.origins.push(0);
        }
        self.keys[i].clear();
        self.keys[i].push_str(std::str::from_utf8(key).unwrap_or_default());
        self.present[i] = value.is_some();
        self.origins[i] = origin;
        self.len += 1;
        if self.len == BATCH {
            self.flush(engine, partition)?;
        }
        Ok(())
    }

    /// A changelog batch chunk: its entries applied here, in its place in the log, as records
    /// of their own; the chunk noted as live until its tombstone comes.
    fn apply_chunk(
        &mut self,
        engine: &Engine,
        statuses: &mut RestoredStatuses,
        partition: i32,
        origin: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), (i64, anyhow::Error)> {
        let chunk_key = String::from_utf8_lossy(key).into_owned();
        let live = statuses.batches.entry(partition).or_default();
        let Some(v) = value else {
            live.remove(&chunk_key);
            return Ok(());
        };
        let raw = Chunk::parse(v)
            .and_then(|c| c.raw())
            .context("changelog batch chunk")
            .map_err(|e| (origin, e))?;
        let mut devices = Vec::new();
        for entry in snapshots::entries(&raw) {
            let (k, v) = entry
                .context("changelog batch chunk")
                .map_err(|e| (origin, e))?;
            if is_batch_key(k) || is_status_key(k) {
                return Err((
                    origin,
                    anyhow::anyhow!("changelog batch chunk holds a control key"),
                ));
            }
            self.apply(engine, statuses, partition, origin, k, Some(v))?;
            devices.push(String::from_utf8_lossy(k).into_owned());
        }
        statuses
            .batches
            .entry(partition)
            .or_default()
            .insert(chunk_key, devices);
        Ok(())
    }

    /// Applies the records gathered so far.
    fn flush(&mut self, engine: &Engine, partition: i32) -> Result<(), (i64, anyhow::Error)> {
        let n = std::mem::take(&mut self.len);
        // A record decoded in place is only valid where `present` says so: a tombstone's
        // slot keeps an earlier batch's record.
        let (keys, records, present) = (&self.keys, &self.records, &self.present);
        let batch = (0..n).map(|i| (keys[i].as_str(), present[i].then(|| &records[i])));
        engine
            .restore_batch(partition, batch)
            .map_err(|(i, e)| (self.origins[i], e.into()))
    }

    /// Forgets the records gathered and not applied.
    fn discard(&mut self) {
        self.len = 0;
    }
}

/// Threads a restore of `partitions` uses.
fn restore_threads(cfg: &Config, partitions: usize) -> usize {
    let configured = match cfg.processing.restore_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    configured.min(partitions).max(1)
}

/// Restores partitions `partitions` into the engine, on `processing.restore_threads` threads
/// that each take the next partition not yet started: with snapshots on, the newest complete
/// snapshot and then the changelog after the offset it covers; otherwise, or when no snapshot
/// is usable, the whole changelog (one consumer per partition: measured faster than one
/// consumer fetching all of them at once, 0.48 against 0.34 M records/s on the benchmark
/// machine). The connector statuses last published by the partitions' owners go into
/// `statuses`. The first failure stops the threads at their next partition and is returned.
pub fn restore_partitions(
    cfg: &Config,
    engine: &mut Engine,
    partitions: &[i32],
    statuses: &mut RestoredStatuses,
) -> anyhow::Result<BTreeMap<i32, PartitionRestore>> {
    let engine: &Engine = engine;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> anyhow::Result<(Vec<(i32, PartitionRestore)>, RestoredStatuses)> {
        let mut applier = Applier::default();
        let mut found = RestoredStatuses::default();
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let Some(&p) = partitions.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            match restore_partition(cfg, engine, &mut applier, &mut found, p) {
                Ok(r) => done.push((p, r)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok((done, found))
    };
    let threads = restore_threads(cfg, partitions.len());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("restore-{i}"))
                    .spawn_scoped(s, worker)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a restore thread panicked"))),
                Err(e) => Err(anyhow::Error::new(e).context("start a restore thread")),
            })
            .collect()
    });
    let mut out = BTreeMap::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok((done, found)) => {
                out.extend(done);
                statuses.extend(found);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    return_freed_memory();
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Restores one partition (see [`restore_partitions`]).
fn restore_partition(
    cfg: &Config,
    engine: &Engine,
    applier: &mut Applier,
    statuses: &mut RestoredStatuses,
    p: i32,
) -> anyhow::Result<PartitionRestore> {
    let topic = &cfg.topics.device_state;
    let mut restored = PartitionRestore::default();
    let mut from = 0;
    if cfg.processing.snapshots {
        match from_snapshot(cfg, engine, applier, p)? {
            Ok((covered, entries, chunks, found)) => {
                statuses.extend(found);
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
    let at_fault =
        |(offset, e): (i64, anyhow::Error)| e.context(format!("changelog {topic}[{p}]@{offset}"));
    let counts = read_from(cfg, topic, &[(p, from)], "restore", |m| {
        applier
            .apply(
                engine,
                statuses,
                p,
                m.offset(),
                m.key().unwrap_or_default(),
                m.payload(),
            )
            .map_err(at_fault)
    });
    let counts = match counts {
        Ok(c) => c,
        Err(e) => {
            applier.discard();
            return Err(e);
        }
    };
    applier.flush(engine, p).map_err(at_fault)?;
    restored.changelog = counts.values().sum();
    Ok(restored)
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
    engine: &Engine,
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
    let applied = chunks
        .iter()
        .try_for_each(|c| {
            let raw = c.raw().map_err(|e| format!("chunk {}: {e}", c.index))?;
            if c.index == 0 {
                // Chunks are filled to the same raw size but the last: the first one's
                // entries times the chunk count is about the partition's device count.
                let per_chunk = snapshots::entries(&raw).count();
                engine.reserve_devices(partition, per_chunk * chunks.len());
            }
            for e in snapshots::entries(&raw) {
                let (key, value) = e.map_err(|e| format!("chunk {}: {e}", c.index))?;
                applier
                    .apply(
                        engine,
                        &mut statuses,
                        partition,
                        c.index.into(),
                        key,
                        Some(value),
                    )
                    .map_err(|(chunk, e)| format!("chunk {chunk}: {e:#}"))?;
                entries += 1;
            }
            Ok::<(), String>(())
        })
        .and_then(|()| {
            applier
                .flush(engine, partition)
                .map_err(|(chunk, e)| format!("chunk {chunk}: {e:#}"))
        });
    if let Err(detail) = applied {
        applier.discard();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalogue::Catalogue;
    use crate::engine::EngineSettings;
    use crate::model::*;
    use crate::runtime::changelog_batches::{chunk_key, encode};
    use crate::runtime::snapshots::Image;

    fn record(device: &str, seq: i64) -> Vec<u8> {
        let r = DeviceStateRecord {
            tenant_id: "acme".into(),
            device_id: device.into(),
            user_id: Some("u".into()),
            platform: Platform::Android,
            management: Management::Mdm,
            ownership: None,
            os_version: None,
            enrolled: true,
            compliance: ComplianceState::Compliant,
            mam_blocked: false,
            mam_wipe_incident: false,
            output_seq: seq,
            partners: Vec::new(),
            graces: Vec::new(),
        };
        let mut buf = Vec::new();
        codec::encode(&r, codec::OutputEncoding::Avro, &mut buf).unwrap();
        buf
    }

    fn seq(engine: &Engine, device: &str) -> Option<i64> {
        engine
            .device_record(0, "acme", device)
            .map(|r| r.output_seq)
    }

    /// A batch chunk's entries land at the chunk's place in the log: after the records before
    /// it, before the records after it; a chunk is live until its tombstone.
    #[test]
    fn a_batch_chunk_applies_in_its_place_and_stays_live_until_its_tombstone() {
        let engine = Engine::new(
            Arc::new(Catalogue::builtin("public").unwrap()),
            EngineSettings::default(),
        );
        let mut applier = Applier::default();
        let mut statuses = RestoredStatuses::default();
        let mut image = Image::default();
        image.push(b"acme/d1", &record("d1", 2));
        image.push(b"acme/d2", &record("d2", 2));
        let chunk = encode(&image).remove(0);
        let (one, two) = (chunk_key(0, "b1", 0), chunk_key(0, "b2", 0));
        let log: Vec<(&[u8], Option<Vec<u8>>)> = vec![
            (b"acme/d1", Some(record("d1", 1))),
            (b"acme/d3", Some(record("d3", 1))),
            (one.as_bytes(), Some(chunk.clone())),
            (b"acme/d2", Some(record("d2", 5))),
            (two.as_bytes(), Some(chunk)),
            (b"acme/d2", None),
            (one.as_bytes(), None),
        ];
        for (i, (k, v)) in log.iter().enumerate() {
            applier
                .apply(&engine, &mut statuses, 0, i as i64, k, v.as_deref())
                .unwrap();
        }
        applier.flush(&engine, 0).unwrap();
        assert_eq!(seq(&engine, "d1"), Some(2));
        assert_eq!(seq(&engine, "d2"), None);
        assert_eq!(seq(&engine, "d3"), Some(1));
        let live = &statuses.batches[&0];
        assert_eq!(live.keys().collect::<Vec<_>>(), [&two]);
        assert_eq!(live[&two], ["acme/d1", "acme/d2"]);
    }

    #[test]
    fn a_corrupt_batch_chunk_is_an_error_at_its_offset() {
        let engine = Engine::new(
            Arc::new(Catalogue::builtin("public").unwrap()),
            EngineSettings::default(),
        );
        let mut applier = Applier::default();
        let mut statuses = RestoredStatuses::default();
        let mut image = Image::default();
        image.push(b"acme/d1", &record("d1", 2));
        let mut chunk = encode(&image).remove(0);
        *chunk.last_mut().unwrap() ^= 0xff;
        let key = chunk_key(0, "b", 0);
        let err = applier
            .apply(&engine, &mut statuses, 0, 42, key.as_bytes(), Some(&chunk))
            .unwrap_err();
        assert_eq!(err.0, 42);
        assert!(format!("{:#}", err.1).contains("checksum"), "{:#}", err.1);
    }
}
