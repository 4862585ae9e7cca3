//! Partition snapshots: a partition's changelog image (the latest record of every key) written
//! as a few large, compressed records to a compacted topic, so a restore reads the latest
//! snapshot and then only the changelog after the offset it covers.
//!
//! The changelog stays the source of truth. A snapshot is taken right after a successful
//! commit (or while the loop is idle), when the partition's in-memory state equals its
//! committed changelog, and stamped with the changelog's high watermark at that moment, read
//! uncommitted: the last stable offset can still sit below our own just-committed records
//! until their markers land. Only the owner writes a changelog partition, so everything below
//! that watermark is in the image or aborted, and the restore's tail starts there.
//! Anything that makes a snapshot unusable (missing, corrupt, incomplete, or ahead of the
//! changelog) makes the restore read the full changelog instead, with a log line and
//! `mtdgate_snapshot_fallbacks_total{reason}`.
//!
//! Layout: partition `p` of the snapshot topic holds the snapshots of changelog partition `p`
//! (the topics are co-partitioned), one record per chunk, key `{p}/{chunk}`, so compaction
//! keeps the latest generation and each new one overwrites the last. A chunk's value:
//!
//! ```text
//! "MTDS" | version u8 | covered offset i64 | chunk u32 | chunks u32 | raw length u32
//!        | xxh3-64 of the compressed body u64 | lz4 block of the raw body
//! raw body: (key length u32 | key | value length u32 | value)*
//! ```
//!
//! (little endian). A generation is the set of chunks with one covered offset; the restore
//! takes the newest complete one. The writer runs on its own thread with its own producer, so
//! compression and delivery never hold the processing loop; only the image is copied under
//! the processing lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::telemetry::{self, SnapshotFallback};

use super::kafka::{base_config, producer_config, send_waiting};

const MAGIC: &[u8; 4] = b"MTDS";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 8 + 4 + 4 + 4 + 8;
/// Raw bytes per chunk: compressed, a chunk stays under the broker's default 1 MB record limit
/// even when lz4 cannot shrink it.
pub const CHUNK_BYTES: usize = 768 * 1024;
/// Largest raw length a chunk may claim (a corrupt length must not allocate gigabytes).
const MAX_RAW: usize = 4 * CHUNK_BYTES;
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// The watermark query runs under the processing lock: a broker that does not answer soon
/// postpones the snapshot rather than stalling the loop.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a snapshot chunk cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot chunk is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("snapshot chunk does not start with MTDS")]
    BadMagic,
    #[error("snapshot chunk version {0} is not supported")]
    BadVersion(u8),
    #[error("snapshot chunk {index} of {count} is out of range")]
    BadIndex { index: u32, count: u32 },
    #[error("snapshot chunk claims {0} raw bytes")]
    BadLength(usize),
    #[error("snapshot chunk checksum does not match its body")]
    Checksum,
    #[error("snapshot chunk does not decompress: {0}")]
    Decompress(String),
    #[error("snapshot chunk entry {0} is cut short")]
    BadEntry(usize),
}

/// One decoded chunk header with its still-compressed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub covered: i64,
    pub index: u32,
    pub count: u32,
    raw_len: usize,
    body: Vec<u8>,
}

impl Chunk {
    /// Parses and checks a chunk record's value (the body is decompressed by [`Chunk::raw`]).
    pub fn parse(value: &[u8]) -> Result<Chunk, SnapshotError> {
        if value.len() < HEADER {
            return Err(SnapshotError::Truncated(value.len()));
        }
        if &value[..4] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        if value[4] != VERSION {
            return Err(SnapshotError::BadVersion(value[4]));
        }
        let u32_at = |i: usize| u32::from_le_bytes(value[i..i + 4].try_into().expect("4 bytes"));
        let covered = i64::from_le_bytes(value[5..13].try_into().expect("8 bytes"));
        let (index, count) = (u32_at(13), u32_at(17));
        if index >= count {
            return Err(SnapshotError::BadIndex { index, count });
        }
        let raw_len = u32_at(21) as usize;
        if raw_len > MAX_RAW {
            return Err(SnapshotError::BadLength(raw_len));
        }
        let sum = u64::from_le_bytes(value[25..33].try_into().expect("8 bytes"));
        let body = &value[HEADER..];
        if xxhash_rust::xxh3::xxh3_64(body) != sum {
            return Err(SnapshotError::Checksum);
        }
        Ok(Chunk {
            covered,
            index,
            count,
            raw_len,
            body: body.to_vec(),
        })
    }

    /// The raw body: framed entries, read with [`entries`].
    pub fn raw(&self) -> Result<Vec<u8>, SnapshotError> {
        lz4_flex::block::decompress(&self.body, self.raw_len)
            .map_err(|e| SnapshotError::Decompress(e.to_string()))
            .and_then(|raw| {
                if raw.len() == self.raw_len {
                    Ok(raw)
                } else {
                    Err(SnapshotError::Decompress(format!(
                        "{} bytes, header says {}",
                        raw.len(),
                        self.raw_len
                    )))
                }
            })
    }
}

/// Encodes one compressed chunk.
pub fn encode_chunk(covered: i64, index: u32, count: u32, raw: &[u8]) -> Vec<u8> {
    let body = lz4_flex::block::compress(raw);
    let mut v = Vec::with_capacity(HEADER + body.len());
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.extend_from_slice(&covered.to_le_bytes());
    v.extend_from_slice(&index.to_le_bytes());
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    v.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

/// The framed entries of a raw body, in order.
pub fn entries(raw: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), SnapshotError>> {
    let mut at = 0usize;
    let mut n = 0usize;
    std::iter::from_fn(move || {
        if at >= raw.len() {
            return None;
        }
        n += 1;
        let mut take = || -> Option<&[u8]> {
            let len = u32::from_le_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize;
            let s = raw.get(at + 4..at + 4 + len)?;
            at += 4 + len;
            Some(s)
        };
        let entry = take().zip(take());
        match entry {
            Some(kv) => Some(Ok(kv)),
            None => {
                at = raw.len();
                Some(Err(SnapshotError::BadEntry(n)))
            }
        }
    })
}

/// A partition's image being copied: raw chunks of framed entries.
#[derive(Debug, Default)]
pub struct Image {
    chunks: Vec<Vec<u8>>,
    entries: usize,
}

impl Image {
    /// Adds one changelog entry (key and value as the changelog carries them).
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        let need = 8 + key.len() + value.len();
        match self.chunks.last() {
            Some(c) if c.len() + need <= CHUNK_BYTES || c.is_empty() => {}
            _ => self
                .chunks
                .push(Vec::with_capacity(CHUNK_BYTES.min(need.max(64 * 1024)))),
        }
        let c = self.chunks.last_mut().expect("a chunk");
        c.extend_from_slice(&(key.len() as u32).to_le_bytes());
        c.extend_from_slice(key);
        c.extend_from_slice(&(value.len() as u32).to_le_bytes());
        c.extend_from_slice(value);
        self.entries += 1;
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The chunk records of this image stamped with `covered` (at least one, maybe empty).
    pub fn encode(&self, covered: i64) -> Vec<Vec<u8>> {
        let count = self.chunks.len().max(1) as u32;
        if self.chunks.is_empty() {
            return vec![encode_chunk(covered, 0, 1, &[])];
        }
        self.chunks
            .iter()
            .enumerate()
            .map(|(i, raw)| encode_chunk(covered, i as u32, count, raw))
            .collect()
    }
}

/// The record key of chunk `index` of partition `partition`.
pub fn chunk_key(partition: i32, index: u32) -> String {
    format!("{partition}/{index}")
}

/// What a snapshot read found for one partition.
#[derive(Debug, Default)]
pub struct Found {
    /// Generations by covered offset: chunk index -> chunk (the latest record of each).
    generations: BTreeMap<i64, BTreeMap<u32, Chunk>>,
    /// Chunk records that could not be parsed, with why.
    pub corrupt: Vec<(i64, SnapshotError)>,
    pub records: usize,
}

impl Found {
    /// Adds the chunk record at `offset` (`None`: a tombstone, ignored).
    pub fn add(&mut self, offset: i64, value: Option<&[u8]>) {
        let Some(v) = value else { return };
        self.records += 1;
        match Chunk::parse(v) {
            Ok(c) => {
                self.generations
                    .entry(c.covered)
                    .or_default()
                    .insert(c.index, c);
            }
            Err(e) => self.corrupt.push((offset, e)),
        }
    }

    /// The newest generation whose every chunk is present and agrees on the count, with its
    /// covered offset; or why there is none.
    pub fn newest_complete(self) -> Result<(i64, Vec<Chunk>), SnapshotFallback> {
        if self.records == 0 {
            return Err(SnapshotFallback::Missing);
        }
        let corrupt = !self.corrupt.is_empty();
        for (covered, chunks) in self.generations.into_iter().rev() {
            let count = chunks.values().next().map_or(0, |c| c.count);
            let complete = chunks.len() == count as usize
                && chunks.values().all(|c| c.count == count)
                && chunks.keys().copied().eq(0..count);
            if complete {
                return Ok((covered, chunks.into_values().collect()));
            }
        }
        Err(if corrupt {
            SnapshotFallback::Corrupt
        } else {
            SnapshotFallback::Incomplete
        })
    }

    /// Chunk count of the newest generation seen (complete or not): keys above it may need a
    /// tombstone after the next, smaller snapshot.
    pub fn newest_count(&self) -> u32 {
        self.generations
            .values()
            .flat_map(|g| g.values().map(|c| c.count))
            .max()
            .unwrap_or(0)
    }
}

/// When snapshots are taken and how they are written.
pub struct Snapshots {
    topic: String,
    changelog: String,
    min_records: u64,
    min_interval: Duration,
    /// Changelog records written per partition since its last snapshot (or restore).
    since: HashMap<i32, u64>,
    last: HashMap<i32, Instant>,
    /// Chunk count of each partition's latest snapshot, to tombstone what a smaller one leaves.
    chunks: HashMap<i32, u32>,
    watermarks: BaseConsumer,
    jobs: Option<SyncSender<Job>>,
    /// A snapshot is being written: one at a time, so at most one image waits in memory.
    busy: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

/// One snapshot to write.
struct Job {
    partition: i32,
    covered: i64,
    image: Image,
    /// Chunk count of the partition's previous snapshot.
    previous: u32,
}

impl Snapshots {
    /// The snapshot policy `cfg` configures, or `None` when snapshots are off.
    pub fn new(cfg: &Config) -> anyhow::Result<Option<Snapshots>> {
        let p = &cfg.processing;
        if !p.snapshots {
            return Ok(None);
        }
        let mut c = base_config(cfg);
        // The changelog's high watermark, not its last stable offset (see the module docs).
        c.set("isolation.level", "read_uncommitted");
        for (k, v) in &cfg.kafka.consumer {
            c.set(k, v);
        }
        let watermarks: BaseConsumer = c.create().context("create snapshot watermark reader")?;
        let mut pc = producer_config(cfg, None);
        pc.set(
            "client.id",
            format!("mtdgate-{}-snapshots", cfg.kafka.instance_id),
        )
        // A chunk is one large record: no linger, one request each.
        .set("linger.ms", "0")
        .set("compression.type", "none");
        let producer: BaseProducer = pc.create().context("create snapshot producer")?;
        let (tx, rx) = sync_channel::<Job>(1);
        let topic = cfg.topics.device_state_snapshots.clone();
        let busy = Arc::new(AtomicBool::new(false));
        let writer = {
            let (topic, busy) = (topic.clone(), busy.clone());
            std::thread::Builder::new()
                .name("snapshots".into())
                .spawn(move || write_jobs(&producer, &topic, rx, &busy))
                .context("start the snapshot writer")?
        };
        Ok(Some(Snapshots {
            topic,
            changelog: cfg.topics.device_state.clone(),
            min_records: p.snapshot_min_records,
            min_interval: Duration::from_millis(p.snapshot_min_interval_ms),
            since: HashMap::new(),
            last: HashMap::new(),
            chunks: HashMap::new(),
            watermarks,
            jobs: Some(tx),
            busy,
            writer: Some(writer),
        }))
    }

    /// Counts `n` changelog records written to `partition`.
    pub fn wrote(&mut self, partition: i32, n: u64) {
        *self.since.entry(partition).or_default() += n;
    }

    /// A partition restored (from a snapshot whose newest generation had `chunks` chunks, or
    /// from the changelog with `tail` records): counts from here.
    pub fn restored(&mut self, partition: i32, chunks: u32, tail: u64) {
        self.since.insert(partition, tail);
        self.last.insert(partition, Instant::now());
        self.chunks.insert(partition, chunks);
    }

    /// Forgets the partitions not in `owned`.
    pub fn retain(&mut self, owned: &std::collections::HashSet<i32>) {
        self.since.retain(|p, _| owned.contains(p));
        self.last.retain(|p, _| owned.contains(p));
    }

    /// A snapshot of `partition` could not be taken now: tried again after the interval.
    pub fn postpone(&mut self, partition: i32) {
        self.last.insert(partition, Instant::now());
    }

    /// The partition most in need of a snapshot, if any is due: since its last one, at least
    /// as many changelog records written as it holds devices (`devices(p)`), and at least
    /// `min_records`, and not sooner than `min_interval` after it. A restore then reads at
    /// most about twice the partition's devices, and each device written to a snapshot is paid
    /// for by a changelog record at least. Partitions `held` are skipped.
    pub fn due(&self, devices: impl Fn(i32) -> usize, held: impl Fn(i32) -> bool) -> Option<i32> {
        if self.jobs.is_none() || self.busy.load(Ordering::Acquire) {
            return None;
        }
        self.since
            .iter()
            .filter(|(p, &n)| {
                !held(**p)
                    && n >= self.min_records
                    && n >= devices(**p) as u64
                    && self
                        .last
                        .get(p)
                        .is_none_or(|t| t.elapsed() >= self.min_interval)
            })
            .max_by_key(|(_, &n)| n)
            .map(|(&p, _)| p)
    }

    /// The changelog's high watermark for `partition`: what an image taken now covers.
    pub fn covered(&self, partition: i32) -> anyhow::Result<i64> {
        let (_, high) = self
            .watermarks
            .fetch_watermarks(&self.changelog, partition, WATERMARK_TIMEOUT)
            .with_context(|| format!("watermarks of {}[{partition}]", self.changelog))?;
        Ok(high)
    }

    /// Hands `image` of `partition`, covering the changelog below `covered`, to the writer.
    /// Returns false (and keeps the partition due) while the writer is still busy.
    pub fn submit(&mut self, partition: i32, covered: i64, image: Image) -> bool {
        let Some(tx) = &self.jobs else { return false };
        let previous = self.chunks.get(&partition).copied().unwrap_or(0);
        let count = image.chunks.len().max(1) as u32;
        self.busy.store(true, Ordering::Release);
        match tx.try_send(Job {
            partition,
            covered,
            image,
            previous,
        }) {
            Ok(()) => {
                self.since.insert(partition, 0);
                self.last.insert(partition, Instant::now());
                self.chunks.insert(partition, count);
                true
            }
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                self.busy.store(false, Ordering::Release);
                warn!(topic = %self.topic, "the snapshot writer stopped; no more snapshots");
                self.jobs = None;
                false
            }
        }
    }
}

impl Drop for Snapshots {
    /// Gives the writer up to 10 s to finish the snapshot it holds (one taken at shutdown
    /// makes the next start short), then leaves it: an unfinished snapshot is only incomplete.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.writer.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

/// The writer thread: compresses and produces each job's chunks, then tombstones the chunks
/// of the previous snapshot that this one did not overwrite.
fn write_jobs(producer: &BaseProducer, topic: &str, jobs: Receiver<Job>, busy: &AtomicBool) {
    for job in jobs {
        let started = Instant::now();
        match write_snapshot(
            producer,
            topic,
            job.partition,
            job.covered,
            &job.image,
            job.previous,
        ) {
            Ok(bytes) => {
                telemetry::snapshot_written(bytes as u64);
                info!(
                    partition = job.partition,
                    covered = job.covered,
                    devices = job.image.entries,
                    bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "snapshot written"
                );
            }
            Err(e) => {
                telemetry::snapshot_failed();
                warn!(partition = job.partition, error = %format!("{e:#}"), "snapshot not written");
            }
        }
        drop(job);
        busy.store(false, Ordering::Release);
    }
    debug!("snapshot writer stopped");
}

/// Writes `image` of `partition`, covering the changelog below `covered`, to partition
/// `partition` of `topic`, tombstones the chunks of a previous snapshot of `previous` chunks
/// it did not overwrite, and waits for delivery; returns the bytes written.
pub fn write_snapshot(
    producer: &BaseProducer,
    topic: &str,
    partition: i32,
    covered: i64,
    image: &Image,
    previous: u32,
) -> anyhow::Result<usize> {
    let chunks = image.encode(covered);
    let mut bytes = 0;
    let count = chunks.len() as u32;
    for (i, value) in chunks.iter().enumerate() {
        let key = chunk_key(partition, i as u32);
        bytes += value.len();
        send(producer, topic, partition, &key, Some(value))?;
    }
    for i in count..previous {
        send(producer, topic, partition, &chunk_key(partition, i), None)?;
    }
    producer
        .flush(SEND_TIMEOUT)
        .context("deliver the snapshot")?;
    Ok(bytes)
}

fn send(
    producer: &BaseProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: Option<&[u8]>,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::<str, [u8]>::to(topic)
        .key(key)
        .partition(partition);
    if let Some(v) = value {
        record = record.payload(v);
    }
    send_waiting(producer, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize) -> Image {
        let mut img = Image::default();
        for i in 0..n {
            let key = format!("t/d{i}");
            let value = vec![(i % 251) as u8; 100 + i % 300];
            img.push(key.as_bytes(), &value);
        }
        img
    }

    fn read_back(chunks: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for c in chunks {
            let raw = Chunk::parse(c).unwrap().raw().unwrap();
            for e in entries(&raw) {
                let (k, v) = e.unwrap();
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        out
    }

    #[test]
    fn an_image_round_trips_over_several_chunks() {
        let img = image(20_000);
        let chunks = img.encode(42);
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() < 1_000_000));
        let got = read_back(&chunks);
        assert_eq!(got.len(), 20_000);
        assert_eq!(got[7].0, b"t/d7");
        assert_eq!(got[7].1, vec![7u8; 107]);
        let mut found = Found::default();
        for (i, c) in chunks.iter().enumerate() {
            found.add(i as i64, Some(c));
        }
        let (covered, got) = found.newest_complete().unwrap();
        assert_eq!(covered, 42);
        assert_eq!(got.len(), chunks.len());
    }

    #[test]
    fn an_empty_image_is_one_empty_chunk() {
        let chunks = Image::default().encode(7);
        assert_eq!(chunks.len(), 1);
        assert!(read_back(&chunks).is_empty());
    }

    #[test]
    fn corruption_is_detected() {
        let chunks = image(50).encode(1);
        let mut bad = chunks[0].clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(Chunk::parse(&bad), Err(SnapshotError::Checksum));
        assert_eq!(Chunk::parse(&bad[..10]), Err(SnapshotError::Truncated(10)));
        let mut magic = chunks[0].clone();
        magic[0] = b'X';
        assert_eq!(Chunk::parse(&magic), Err(SnapshotError::BadMagic));
        let mut version = chunks[0].clone();
        version[4] = 9;
        assert_eq!(Chunk::parse(&version), Err(SnapshotError::BadVersion(9)));
        let mut length = chunks[0].clone();
        length[21..25].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Chunk::parse(&length),
            Err(SnapshotError::BadLength(_))
        ));
        // A raw body cut inside an entry.
        let raw = Chunk::parse(&chunks[0]).unwrap().raw().unwrap();
        let cut = &raw[..raw.len() - 3];
        assert!(entries(cut).any(|e| e.is_err()));
    }

    #[test]
    fn the_newest_complete_generation_wins() {
        let old = image(20_000).encode(10);
        let new = image(20_000).encode(20);
        let mut found = Found::default();
        for c in &old {
            found.add(0, Some(c));
        }
        // The newer generation only partly written: the older one is used.
        for c in &new[..new.len() - 1] {
            found.add(0, Some(c));
        }
        found.add(0, None);
        assert_eq!(found.newest_count(), old.len() as u32);
        let (covered, _) = found.newest_complete().unwrap();
        assert_eq!(covered, 10);
    }

    #[test]
    fn nothing_usable_says_why() {
        assert_eq!(
            Found::default().newest_complete().unwrap_err(),
            SnapshotFallback::Missing
        );
        let chunks = image(20_000).encode(5);
        let mut found = Found::default();
        found.add(0, Some(&chunks[0]));
        assert_eq!(
            found.newest_complete().unwrap_err(),
            SnapshotFallback::Incomplete
        );
        let mut found = Found::default();
        found.add(0, Some(b"garbage"));
        assert_eq!(
            found.newest_complete().unwrap_err(),
            SnapshotFallback::Corrupt
        );
    }
}
