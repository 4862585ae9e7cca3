//! The global tables: connector settings, policies, group memberships, tenant settings and
//! heartbeats, read by every instance (no consumer group) before device traffic, then followed
//! live; and the status topic, read back to know what was last published per connector.
//!
//! **The heartbeat view.** Heartbeat topics keep days of history (delete retention), and what an
//! engine keeps of it is small: per connector the latest accepted `sent_at`, its `error_code`
//! and the last published minimum OS versions. So heartbeats are not read in full at start.
//! Every instance keeps, per connector, the one heartbeat that gives a fresh engine exactly the
//! state the whole history gave its own ([`latest_heartbeat`]), and the offset up to which it
//! applied each heartbeat partition. Once the heartbeats applied past the last checkpoint (by
//! any instance: the view is followed live) reach the number of connectors, times 1 to 2 by
//! instance so that one instance writes and the others see its checkpoint first, it writes all
//! of them to the compacted view (`topics.heartbeats_latest`, key `tenant/partner`, headers:
//! source topic, partition and the offset `covered` up to which that partition was applied),
//! waits until every one is acknowledged, then writes a `checkpoint` record with those offsets:
//! at most one view record per heartbeat. At start the view is read in full and applied, and
//! each heartbeat partition is read from `min(checkpoint, covered of every view record of that
//! partition)`.
//!
//! Why that is exact, whoever wrote what: a view record is the state after a prefix of its
//! partition, and re-applying a tail of that same prefix changes nothing (older heartbeats are
//! `STALE`; equal `sent_at` ones are re-applied in their order and end on the same one). A
//! connector without a view record had no heartbeat below the checkpoint (its writer put every
//! connector it knew in the records acknowledged before it). So a crash mid-snapshot (no
//! checkpoint, or records newer than it), two writers at once or a writer lagging behind only
//! make the next start read a longer tail, never skip a heartbeat. Start-up then reads about
//! one record per connector plus at most twice that many heartbeats, however long the history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::codec::{self, OutputEncoding};
use crate::config::Config;
use crate::engine::key::split_key;
use crate::engine::Engine;
use crate::model::{ConnectorHeartbeat, Platform};

use super::kafka::{consumer_config, producer_config, send_waiting, EofAware};
use super::schemas::{RegistryWait, Schemas};

/// What a table handler returns: for a heartbeat record, the state its connector is in now as
/// one heartbeat ([`latest_heartbeat`]); `None` for other records.
pub type Applied = Option<ConnectorHeartbeat>;

type Handler<'a> =
    dyn FnMut(&str, i32, i64, Option<&[u8]>, Option<&[u8]>) -> anyhow::Result<Applied> + 'a;

/// Key of the view's checkpoint records (a connector's key has two parts).
const CHECKPOINT: &[u8] = b"checkpoint";
/// Headers of a view record: the heartbeat topic and partition it comes from, and the offset up
/// to which (exclusive) its writer had applied that partition.
const H_TOPIC: &str = "topic";
const H_PARTITION: &str = "partition";
const H_COVERED: &str = "covered";
/// A snapshot is written once the heartbeats applied past the last checkpoint reach the number
/// of connectors in the view (up to twice that, [`View::stagger`]), and at least this many.
const MIN_SNAPSHOT_TAIL: i64 = 1000;
/// Longest a start-up read may take, not counting time spent waiting for the schema registry.
const LOAD_LIMIT: Duration = Duration::from_secs(300);

/// The one heartbeat of `tenant/partner` (the record key) that gives a fresh engine the
/// heartbeat state `engine` holds for the connector: its latest `sent_at`, that heartbeat's
/// error code and the minimum OS versions last published (a heartbeat without them keeps the
/// earlier ones). `None` when no heartbeat of it was accepted.
pub fn latest_heartbeat(engine: &Engine, key: Option<&[u8]>) -> Option<ConnectorHeartbeat> {
    let (tenant, partner) = split_key(key).ok()?;
    let idx = engine.catalogue().index(partner)?;
    let tenants = engine.tenants();
    let c = tenants.tables(tenants.get(tenant)?).connectors.get(&idx)?;
    let sent_at = c.last_heartbeat_at?;
    let min_os: std::collections::BTreeMap<String, String> = Platform::ALL
        .iter()
        .filter_map(|p| {
            let v = c.min_os[p.code() as usize].to_text()?;
            Some((p.as_str().to_owned(), v))
        })
        .collect();
    Some(ConnectorHeartbeat {
        tenant_id: tenant.to_owned(),
        partner_id: partner.to_owned(),
        sent_at,
        error_code: Some(c.error_code).filter(|&e| e != 0),
        min_os_versions: (!min_os.is_empty()).then_some(min_os),
    })
}

/// What the table reader of one instance did, for tests and the benchmark ([`table_stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableStats {
    /// Starts (table loads) completed since the process started.
    pub loads: usize,
    /// Records the last start read: every table record, view records included.
    pub loaded_records: usize,
    /// Of those, heartbeat view records applied.
    pub view_records: usize,
    /// Of those, heartbeat records read after the offsets the view covers.
    pub heartbeat_records: usize,
    /// How long the last start's read took.
    pub load_seconds: f64,
    /// Snapshots this instance completed (checkpoint written) since the process started.
    pub snapshots: usize,
    /// Connectors in the last completed snapshot.
    pub snapshot_records: usize,
}

static STATS: LazyLock<Mutex<HashMap<String, TableStats>>> = LazyLock::new(Default::default);

fn table_group(cfg: &Config) -> String {
    format!("{}-tables-{}", cfg.kafka.group_id, cfg.kafka.instance_id)
}

/// What the table reader of `cfg`'s instance did in this process, if it ran.
pub fn table_stats(cfg: &Config) -> Option<TableStats> {
    lock_stats().get(&table_group(cfg)).cloned()
}

fn lock_stats() -> std::sync::MutexGuard<'static, HashMap<String, TableStats>> {
    STATS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The heartbeat partitions, numbered: `index` is the position in `list`.
#[derive(Debug, Default)]
struct Sources {
    list: Vec<(String, i32)>,
    /// Topic -> index of its partition 0 (a topic's partitions are numbered from 0).
    first: HashMap<String, usize>,
}

impl Sources {
    fn index(&self, topic: &str, partition: i32) -> Option<usize> {
        let i = self.first.get(topic)? + usize::try_from(partition).ok()?;
        let (t, p) = self.list.get(i)?;
        (*p == partition && t == topic).then_some(i)
    }
}

/// One connector's state in the view: its heartbeat partition and the heartbeat to write.
struct Latest {
    source: usize,
    heartbeat: ConnectorHeartbeat,
}

/// A checkpoint record's value.
#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    instance: String,
    written_at: i64,
    offsets: Vec<CheckpointOffset>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointOffset {
    topic: String,
    partition: i32,
    offset: i64,
}

/// Counts the view producer's failed deliveries.
#[derive(Default)]
struct ViewDelivery {
    failed: AtomicU64,
}

impl ClientContext for ViewDelivery {}

impl ProducerContext for ViewDelivery {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            debug!(error = %e, "heartbeat view record not delivered");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A snapshot whose records are on their way; its checkpoint follows once all are acknowledged.
struct Pending {
    offsets: Vec<i64>,
    failed_before: u64,
    records: usize,
}

/// The heartbeat view: what this instance applied, and the writing of snapshots.
struct View {
    topic: String,
    partitions: Vec<i32>,
    sources: Sources,
    latest: HashMap<Box<[u8]>, Latest>,
    /// Per source, the offset after the last record applied.
    positions: Vec<i64>,
    /// Per source, the offset of the last checkpoint seen (written by any instance).
    checkpoint: Option<Vec<Option<i64>>>,
    producer: BaseProducer<ViewDelivery>,
    pending: Option<Pending>,
    instance: String,
    /// Every instance reads the same heartbeats at the same pace: each waits for a tail
    /// longer by this many thousandths of its own (from its instance id), so the first to
    /// write makes the others' tails short again before they reach theirs.
    stagger: i64,
    stats_key: String,
    buf: Vec<u8>,
}

impl View {
    /// Records that a heartbeat record was applied and what its connector's state is now.
    fn applied(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        a: Applied,
    ) {
        let Some(i) = self.sources.index(topic, partition) else {
            return;
        };
        self.positions[i] = self.positions[i].max(offset + 1);
        if let (Some(heartbeat), Some(key)) = (a, key) {
            match self.latest.get_mut(key) {
                Some(l) => {
                    *l = Latest {
                        source: i,
                        heartbeat,
                    }
                }
                None => {
                    self.latest.insert(
                        key.into(),
                        Latest {
                            source: i,
                            heartbeat,
                        },
                    );
                }
            }
        }
    }

    /// Takes note of a checkpoint record read from the view topic.
    fn observe(&mut self, m: &BorrowedMessage<'_>) {
        if m.key() != Some(CHECKPOINT) {
            return;
        }
        match m.payload().map(serde_json::from_slice::<Checkpoint>) {
            Some(Ok(c)) => self.checkpoint = Some(self.checkpoint_offsets(&c)),
            Some(Err(e)) => {
                warn!(error = %e, offset = m.offset(), "unreadable heartbeat view checkpoint; ignored")
            }
            None => {}
        }
    }

    fn checkpoint_offsets(&self, c: &Checkpoint) -> Vec<Option<i64>> {
        let mut v = vec![None; self.sources.list.len()];
        for o in &c.offsets {
            if let Some(i) = self.sources.index(&o.topic, o.partition) {
                v[i] = Some(o.offset);
            }
        }
        v
    }

    /// Heartbeat records applied past the last checkpoint.
    fn tail(&self) -> i64 {
        let cp = |i: usize| self.checkpoint.as_ref().and_then(|c| c[i]).unwrap_or(0);
        (0..self.positions.len())
            .map(|i| (self.positions[i] - cp(i)).max(0))
            .sum()
    }

    /// Writes the checkpoint of a snapshot whose records are all acknowledged, or starts a
    /// snapshot when the tail is as long as the view; never waits.
    fn drive(&mut self) {
        self.producer.poll(Duration::ZERO);
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if let Some(p) = &self.pending {
            if failed != p.failed_before {
                warn!(
                    topic = %self.topic,
                    "heartbeat view snapshot not fully written; a later one will be"
                );
                self.pending = None;
            } else if self.producer.in_flight_count() == 0 {
                if let Some(p) = self.pending.take() {
                    self.write_checkpoint(p);
                }
            }
            return;
        }
        let due = (self.latest.len() as i64).max(MIN_SNAPSHOT_TAIL) * (1000 + self.stagger) / 1000;
        if self.tail() < due {
            return;
        }
        match self.send_snapshot() {
            Ok(records) => {
                self.pending = Some(Pending {
                    offsets: self.positions.clone(),
                    failed_before: failed,
                    records,
                })
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                "heartbeat view snapshot not written"
            ),
        }
    }

    /// Sends the heartbeat of every connector, each with the offset its partition is applied to.
    fn send_snapshot(&mut self) -> anyhow::Result<usize> {
        for (key, l) in &self.latest {
            self.buf.clear();
            codec::encode(&l.heartbeat, OutputEncoding::Json, &mut self.buf)?;
            let (topic, partition) = &self.sources.list[l.source];
            let covered = self.positions[l.source].to_string();
            let partition = partition.to_string();
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header {
                    key: H_TOPIC,
                    value: Some(topic.as_str()),
                })
                .insert(Header {
                    key: H_PARTITION,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: H_COVERED,
                    value: Some(covered.as_str()),
                });
            send_waiting(
                &self.producer,
                BaseRecord::to(&self.topic)
                    .key(&key[..])
                    .payload(&self.buf[..])
                    .headers(headers),
            )?;
        }
        Ok(self.latest.len())
    }

    fn write_checkpoint(&mut self, p: Pending) {
        let c = Checkpoint {
            instance: self.instance.clone(),
            written_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            offsets: self
                .sources
                .list
                .iter()
                .zip(&p.offsets)
                .map(|((topic, partition), &offset)| CheckpointOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset,
                })
                .collect(),
        };
        let value = match serde_json::to_vec(&c) {
            Ok(v) => v,
            Err(e) => return warn!(error = %e, "heartbeat view checkpoint not written"),
        };
        let sent = send_waiting(
            &self.producer,
            BaseRecord::to(&self.topic).key(CHECKPOINT).payload(&value),
        );
        if let Err(e) = sent {
            return warn!(
                error = format!("{e:#}"),
                "heartbeat view checkpoint not written"
            );
        }
        self.checkpoint = Some(p.offsets.into_iter().map(Some).collect());
        let mut stats = lock_stats();
        let s = stats.entry(self.stats_key.clone()).or_default();
        s.snapshots += 1;
        s.snapshot_records = p.records;
        debug!(topic = %self.topic, connectors = p.records, "heartbeat view snapshot written");
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // An unfinished snapshot has no checkpoint yet: dropping it is safe, waiting is not
        // needed.
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }
}

/// Reads the table topics: the other tables from the beginning together with the heartbeat
/// view, then each heartbeat partition from the offset the view covers; and writes the view.
pub struct TableReader {
    consumer: BaseConsumer<EofAware>,
    schemas: Arc<Schemas>,
    /// Set when a record waits for the schema registry: the reader was rewound to it and
    /// reads no table record before this instant (table records are applied in order).
    waiting_until: Option<Instant>,
    /// Partitions read from the beginning: settings, policies, memberships, tenant settings
    /// and the status topic.
    tables: Vec<(String, i32)>,
    view: View,
}

/// What a handler's result means for the reader.
enum Step {
    Next(Applied),
    /// Rewound to this record; try again at the instant.
    Wait(Instant),
}

/// A view record read at start: where it comes from and the heartbeat to apply.
struct ViewRecord {
    key: Box<[u8]>,
    source: usize,
    covered: i64,
    offset: i64,
    payload: Vec<u8>,
}

/// The heartbeat view as read at start.
#[derive(Default)]
struct ViewLoad {
    records: Vec<ViewRecord>,
    by_key: HashMap<Box<[u8]>, usize>,
    checkpoint: Option<Checkpoint>,
    skipped: usize,
}

impl ViewLoad {
    fn collect(&mut self, view: &View, m: &BorrowedMessage<'_>) {
        if m.key() == Some(CHECKPOINT) {
            match m.payload().map(serde_json::from_slice::<Checkpoint>) {
                Some(Ok(c)) => self.checkpoint = Some(c),
                _ => self.skipped += 1,
            }
            return;
        }
        let source = header(m, H_TOPIC)
            .zip(header(m, H_PARTITION))
            .and_then(|(t, p)| view.sources.index(t, p.parse().ok()?));
        let covered = header(m, H_COVERED).and_then(|c| c.parse::<i64>().ok());
        // A heartbeat topic no longer read (bind_partners changed): its heartbeats are not
        // read either.
        let (Some(key), Some(payload), Some(source), Some(covered)) =
            (m.key(), m.payload(), source, covered)
        else {
            self.skipped += 1;
            return;
        };
        let r = ViewRecord {
            key: key.into(),
            source,
            covered,
            offset: m.offset(),
            payload: payload.to_vec(),
        };
        match self.by_key.get(key) {
            Some(&i) => self.records[i] = r,
            None => {
                self.by_key.insert(key.into(), self.records.len());
                self.records.push(r);
            }
        }
    }

    /// Applies the view through `f` and returns where each heartbeat partition is read from.
    fn apply(
        &self,
        view: &mut View,
        schemas: &Schemas,
        f: &mut impl FnMut(&str, i32, i64, Option<&[u8]>, Option<&[u8]>) -> anyhow::Result<Applied>,
        deadline: &mut Instant,
        lows: &[i64],
        highs: &[i64],
    ) -> anyhow::Result<Vec<i64>> {
        if self.skipped > 0 {
            debug!(records = self.skipped, "heartbeat view records skipped");
        }
        let cp = self.checkpoint.as_ref().map(|c| view.checkpoint_offsets(c));
        let starts = start_offsets(
            &view.sources.list,
            cp.as_deref(),
            &self.records,
            lows,
            highs,
        );
        view.checkpoint = cp;
        view.positions = starts.clone();
        for r in &self.records {
            let (topic, partition) = &view.sources.list[r.source];
            let a = loop {
                match f(topic, *partition, r.offset, Some(&r.key), Some(&r.payload)) {
                    Err(e) if e.downcast_ref::<RegistryWait>().is_some() => {
                        let wait = schemas.retry_at().saturating_duration_since(Instant::now());
                        std::thread::sleep(wait.max(Duration::from_millis(50)));
                        *deadline += wait;
                    }
                    r => break r?,
                }
            };
            if let Some(heartbeat) = a {
                let source = r.source;
                view.latest
                    .insert(r.key.clone(), Latest { source, heartbeat });
            }
        }
        Ok(starts)
    }
}

fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = m.headers()?;
    let h = headers.iter().find(|h| h.key == name)?;
    std::str::from_utf8(h.value?).ok()
}

impl TableReader {
    pub fn new(cfg: &Config, partners: &[&str], schemas: Arc<Schemas>) -> anyhow::Result<Self> {
        let mut c = consumer_config(cfg);
        c.set("group.id", table_group(cfg))
            .set("enable.partition.eof", "true")
            // A partition added to the assignment waits for the fetch in flight, which the
            // broker holds up to this long at the end of the others: at start, reading the
            // tables would wait for it (500 ms by default); live, it is an idle fetch every
            // 100 ms.
            .set("fetch.wait.max.ms", "100");
        let consumer: BaseConsumer<EofAware> = c
            .create_with_context(EofAware)
            .context("create table consumer")?;
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("cannot reach Kafka at {}", cfg.kafka.bootstrap_servers))?;
        let partitions = |t: &str| -> anyhow::Result<Vec<i32>> {
            let topic = md
                .topics()
                .iter()
                .find(|m| m.name() == t && m.error().is_none())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "topic {t} is missing; create the topics with `mtdgate topics create`"
                    )
                })?;
            let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
            ids.sort_unstable();
            Ok(ids)
        };
        // The status topic is followed too, to know what was last published per connector.
        let mut tables = Vec::new();
        for t in [
            &cfg.topics.connectors,
            &cfg.topics.policies,
            &cfg.topics.group_memberships,
            &cfg.topics.tenant_settings,
            &cfg.topics.connector_status,
        ] {
            tables.extend(partitions(t)?.into_iter().map(|p| (t.clone(), p)));
        }
        let mut sources = Sources::default();
        for (t, _) in cfg.heartbeat_topics(partners) {
            let ids = partitions(&t)?;
            anyhow::ensure!(
                ids.iter().enumerate().all(|(i, &p)| p == i as i32),
                "topic {t}: partitions are not numbered from 0"
            );
            sources.first.insert(t.clone(), sources.list.len());
            sources.list.extend(ids.into_iter().map(|p| (t.clone(), p)));
        }
        let view_topic = cfg.topics.heartbeats_latest.clone();
        let view_partitions = partitions(&view_topic)?;
        let producer: BaseProducer<ViewDelivery> = producer_config(cfg, None)
            .create_with_context(ViewDelivery::default())
            .context("create heartbeat view producer")?;
        let n = sources.list.len();
        Ok(TableReader {
            consumer,
            schemas,
            waiting_until: None,
            tables,
            view: View {
                topic: view_topic,
                partitions: view_partitions,
                sources,
                latest: HashMap::new(),
                positions: vec![0; n],
                checkpoint: None,
                producer,
                pending: None,
                instance: cfg.kafka.instance_id.clone(),
                stagger: i64::from(crate::engine::partitioner::partition_for(
                    cfg.kafka.instance_id.as_bytes(),
                    1000,
                )),
                stats_key: table_group(cfg),
                buf: Vec::with_capacity(256),
            },
        })
    }

    /// Rewinds to a record whose decoding waits for the registry; other errors pass.
    fn step(
        consumer: &BaseConsumer<EofAware>,
        schemas: &Schemas,
        result: anyhow::Result<Applied>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<Step> {
        match result {
            Ok(a) => Ok(Step::Next(a)),
            Err(e) if e.downcast_ref::<RegistryWait>().is_some() => {
                consumer
                    .seek(
                        topic,
                        partition,
                        Offset::Offset(offset),
                        Duration::from_secs(5),
                    )
                    .with_context(|| format!("rewind table {topic}/{partition} to {offset}"))?;
                Ok(Step::Wait(schemas.retry_at()))
            }
            Err(e) => Err(e),
        }
    }

    /// The earliest or latest offset of each of `parts`, in order, in one batched ListOffsets
    /// request.
    fn offsets(&self, parts: &[(String, i32)], at: Offset) -> anyhow::Result<Vec<i64>> {
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in parts {
            tpl.add_partition_offset(t, *p, at)?;
        }
        // Right after topic creation leadership may still be settling: retry briefly.
        let mut tries = 0;
        let got = loop {
            match self
                .consumer
                .offsets_for_times(tpl.clone(), Duration::from_secs(10))
            {
                Ok(got) => break got,
                Err(e) if tries < 20 => {
                    tries += 1;
                    debug!(error = %e, "listing table offsets, retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e).context("list table offsets"),
            }
        };
        let elements = got.elements();
        let found: HashMap<(&str, i32), i64> = elements
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                ((e.topic(), e.partition()), o)
            })
            .collect();
        Ok(parts
            .iter()
            .map(|(t, p)| found.get(&(t.as_str(), *p)).copied().unwrap_or(0))
            .collect())
    }

    /// Reads every table record up to the end each partition had when the call started;
    /// returns how many (heartbeat view records included). The view and the other tables are
    /// read together; each heartbeat partition is added once the view is in, from the offset
    /// it covers.
    pub fn bootstrap(
        &mut self,
        mut f: impl FnMut(&str, i32, i64, Option<&[u8]>, Option<&[u8]>) -> anyhow::Result<Applied>,
    ) -> anyhow::Result<usize> {
        let started = Instant::now();
        let mut deadline = Instant::now() + LOAD_LIMIT;
        let view_parts: Vec<(String, i32)> = self
            .view
            .partitions
            .iter()
            .map(|&p| (self.view.topic.clone(), p))
            .collect();
        // Every end offset at once, before anything is assigned: a fetch waiting at the end
        // of a partition would hold a ListOffsets request behind it.
        let all: Vec<(String, i32)> = view_parts
            .iter()
            .chain(&self.tables)
            .chain(&self.view.sources.list)
            .cloned()
            .collect();
        let (lows, highs) = (
            self.offsets(&all, Offset::Beginning)?,
            self.offsets(&all, Offset::End)?,
        );
        let (v, t) = (view_parts.len(), view_parts.len() + self.tables.len());
        let (view_lows, table_lows, lows) = (&lows[..v], &lows[v..t], &lows[t..]);
        let (view_ends, table_highs, highs) = (&highs[..v], &highs[v..t], &highs[t..]);
        // Explicit offsets: a partition assigned at `Beginning` is looked up first, then waits
        // for the fetch already sent for the others.
        let mut tpl = TopicPartitionList::new();
        for ((t, p), &low) in view_parts
            .iter()
            .chain(&self.tables)
            .zip(view_lows.iter().chain(table_lows))
        {
            tpl.add_partition_offset(t, *p, Offset::Offset(low))?;
        }
        self.consumer
            .assign(&tpl)
            .context("assign table partitions")?;
        let mut pending = pending_ends(&self.tables, table_lows, table_highs);
        let mut view_pending = pending_ends(&view_parts, view_lows, view_ends);
        // The view as it was when the call started: the last record of each key counts, as
        // after compaction; later records are live (another instance's snapshot).
        let ends: HashMap<i32, i64> = self
            .view
            .partitions
            .iter()
            .copied()
            .zip(view_ends.iter().copied())
            .collect();
        let mut load = ViewLoad::default();
        let mut view_done = false;
        let (mut n, mut heartbeats, mut view_records) = (0, 0, 0);
        let TableReader {
            consumer,
            schemas,
            view,
            ..
        } = self;
        let consumer = &*consumer;
        loop {
            if !view_done && view_pending.is_empty() {
                view_done = true;
                view_records = load.records.len();
                let starts = load.apply(view, schemas, &mut f, &mut deadline, lows, highs)?;
                let mut tpl = TopicPartitionList::new();
                for ((t, p), &start) in view.sources.list.iter().zip(&starts) {
                    tpl.add_partition_offset(t, *p, Offset::Offset(start))?;
                }
                if tpl.count() > 0 {
                    consumer
                        .incremental_assign(&tpl)
                        .context("assign heartbeat partitions")?;
                }
                for (k, v) in pending_ends(&view.sources.list, &starts, highs) {
                    pending.entry(k).or_default().extend(v);
                }
                load = ViewLoad::default();
            }
            if view_done && pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "tables did not load within {} s; still reading {:?}",
                    LOAD_LIMIT.as_secs(),
                    if view_done { &pending } else { &view_pending }
                );
            }
            // Short polls: a partition ending with a transaction marker is seen done by its
            // position after a poll that returns nothing.
            match consumer.poll(Duration::from_millis(10)) {
                Some(Ok(m)) => {
                    if m.topic() == view.topic {
                        let in_load =
                            !view_done && ends.get(&m.partition()).is_some_and(|&e| m.offset() < e);
                        match in_load {
                            true => load.collect(view, &m),
                            false => view.observe(&m),
                        }
                        mark_done(&mut view_pending, m.topic(), m.partition(), m.offset() + 1);
                        continue;
                    }
                    let r = f(m.topic(), m.partition(), m.offset(), m.key(), m.payload());
                    match Self::step(consumer, schemas, r, m.topic(), m.partition(), m.offset())? {
                        Step::Wait(at) => {
                            let wait = at.saturating_duration_since(Instant::now());
                            std::thread::sleep(wait.max(Duration::from_millis(50)));
                            deadline += wait;
                            continue;
                        }
                        Step::Next(a) => {
                            n += 1;
                            if view.sources.index(m.topic(), m.partition()).is_some() {
                                heartbeats += 1;
                            }
                            view.applied(m.topic(), m.partition(), m.offset(), m.key(), a);
                        }
                    }
                    mark_done(&mut pending, m.topic(), m.partition(), m.offset() + 1);
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // Transaction markers can end a partition: trust the fetch position too.
                    for e in consumer.position()?.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            mark_done(&mut pending, e.topic(), e.partition(), o);
                            mark_done(&mut view_pending, e.topic(), e.partition(), o);
                        }
                    }
                }
                Some(Err(e)) => warn!(error = %e, "table consumer error"),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        info!(
            view = %view.topic,
            connectors = view_records,
            heartbeats,
            checkpoint = view.checkpoint.is_some(),
            "heartbeat view loaded; heartbeats read from the offsets it covers"
        );
        let mut stats = lock_stats();
        let s = stats.entry(view.stats_key.clone()).or_default();
        s.loads += 1;
        s.loaded_records = n + view_records;
        s.view_records = view_records;
        s.heartbeat_records = heartbeats;
        s.load_seconds = seconds;
        Ok(n + view_records)
    }

    /// Applies whatever table records have arrived, without waiting (nor while a record
    /// waits for the schema registry), and moves the heartbeat view's snapshot on.
    pub fn poll_live(&mut self, f: &mut Handler<'_>) -> anyhow::Result<()> {
        if let Some(at) = self.waiting_until {
            if Instant::now() < at {
                self.view.drive();
                return Ok(());
            }
            self.waiting_until = None;
        }
        for _ in 0..1000 {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    if m.topic() == self.view.topic {
                        self.view.observe(&m);
                        continue;
                    }
                    let r = f(m.topic(), m.partition(), m.offset(), m.key(), m.payload());
                    match Self::step(
                        &self.consumer,
                        &self.schemas,
                        r,
                        m.topic(),
                        m.partition(),
                        m.offset(),
                    )? {
                        Step::Wait(at) => {
                            self.waiting_until = Some(at);
                            break;
                        }
                        Step::Next(a) => {
                            self.view
                                .applied(m.topic(), m.partition(), m.offset(), m.key(), a)
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => warn!(error = %e, "table consumer error"),
                None => break,
            }
        }
        self.view.drive();
        Ok(())
    }
}

/// The partitions of `parts` with records between `from` and `to`: topic -> partition -> end.
fn pending_ends(
    parts: &[(String, i32)],
    from: &[i64],
    to: &[i64],
) -> HashMap<String, HashMap<i32, i64>> {
    let mut pending: HashMap<String, HashMap<i32, i64>> = HashMap::new();
    for (((t, p), &low), &high) in parts.iter().zip(from).zip(to) {
        if high > low {
            pending.entry(t.clone()).or_default().insert(*p, high);
        }
    }
    pending
}

/// Where each heartbeat partition is read from: the checkpoint's offset, or earlier where a
/// view record covers less (written by a writer behind the checkpoint's, or by an unfinished
/// snapshot); the beginning without a checkpoint. An offset beyond the partition's end (the
/// topic was recreated) reads it from the beginning.
fn start_offsets(
    sources: &[(String, i32)],
    checkpoint: Option<&[Option<i64>]>,
    records: &[ViewRecord],
    lows: &[i64],
    highs: &[i64],
) -> Vec<i64> {
    let mut starts: Vec<i64> = (0..sources.len())
        .map(|i| checkpoint.and_then(|c| c[i]).unwrap_or(lows[i]))
        .collect();
    for r in records {
        starts[r.source] = starts[r.source].min(r.covered);
    }
    for (i, s) in starts.iter_mut().enumerate() {
        if *s > highs[i] {
            warn!(
                topic = %sources[i].0,
                partition = sources[i].1,
                covered = *s,
                end = highs[i],
                "heartbeat view covers offsets this partition does not have; reading it in full"
            );
            *s = lows[i];
        }
        *s = (*s).max(lows[i]);
    }
    starts
}

/// Marks `topic/partition` done in `pending` once `next` (the offset after the last record
/// read, or the fetch position) reaches its end.
fn mark_done(pending: &mut HashMap<String, HashMap<i32, i64>>, topic: &str, p: i32, next: i64) {
    if let Some(parts) = pending.get_mut(topic) {
        if parts.get(&p).is_some_and(|&high| next >= high) {
            parts.remove(&p);
            if parts.is_empty() {
                pending.remove(topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: usize, covered: i64) -> ViewRecord {
        ViewRecord {
            key: Box::from(&b"t/p"[..]),
            source,
            covered,
            offset: 0,
            payload: Vec::new(),
        }
    }

    fn sources(n: usize) -> Vec<(String, i32)> {
        (0..n).map(|p| ("hb".to_owned(), p as i32)).collect()
    }

    #[test]
    fn start_offsets_take_the_least_covered() {
        let s = sources(3);
        let (lows, highs) = (vec![0, 5, 0], vec![100, 100, 100]);
        // No checkpoint: from the beginning, whatever the records say.
        assert_eq!(
            start_offsets(&s, None, &[record(0, 90)], &lows, &highs),
            vec![0, 5, 0]
        );
        // A checkpoint, one record behind it (a lagging writer), one ahead (an unfinished
        // snapshot), and a partition the checkpoint does not know.
        let cp = [Some(80), Some(80), None];
        let recs = [record(0, 60), record(1, 95), record(0, 85)];
        assert_eq!(
            start_offsets(&s, Some(&cp), &recs, &lows, &highs),
            vec![60, 80, 0]
        );
        // Below the log start (retention) or beyond the end (recreated topic).
        let cp = [Some(2), Some(3), Some(150)];
        assert_eq!(
            start_offsets(&s, Some(&cp), &[], &lows, &highs),
            vec![2, 5, 0]
        );
    }

    /// The state a heartbeat history left, as the engine keeps it.
    fn heartbeat_state(e: &Engine) -> Option<(Option<i64>, i32, String)> {
        let tenants = e.tenants();
        let c = tenants
            .tables(tenants.get("t")?)
            .connectors
            .get(&e.catalogue().index("lookout")?)?;
        Some((c.last_heartbeat_at, c.error_code, format!("{:?}", c.min_os)))
    }

    /// One heartbeat from [`latest_heartbeat`] gives a fresh engine the state of the whole
    /// history, and re-applying any tail of that history on top changes nothing: what makes
    /// reading from a checkpoint at or before a view record's `covered` exact.
    #[test]
    fn latest_heartbeat_replays_the_history_and_tails_change_nothing() {
        use crate::engine::{Body, EngineSettings, Event};
        let catalogue = Arc::new(crate::catalogue::Catalogue::builtin("public").unwrap());
        let engine = || Engine::new(catalogue.clone(), EngineSettings::default());
        let key: &[u8] = b"t/lookout";
        let now = 1_800_000_000_000i64;
        let apply = |e: &mut Engine, h: &ConnectorHeartbeat| {
            let event = Event {
                partition: 0,
                key: Some(key),
                body: Body::Heartbeat(h.clone()),
            };
            e.apply(&event, now, &mut Vec::new());
        };
        // A small LCG: equal sent_at, older ones, error codes, min OS maps or none, bad ones.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        for _round in 0..200 {
            let history: Vec<ConnectorHeartbeat> = (0..12)
                .map(|_| ConnectorHeartbeat {
                    tenant_id: "t".into(),
                    partner_id: "lookout".into(),
                    sent_at: now - 10_000 + 1_000 * next(6) as i64,
                    error_code: [None, Some(0), Some(7), Some(9)][next(4) as usize],
                    min_os_versions: match next(5) {
                        0 => Some(Default::default()),
                        1 => Some([("IOS".into(), "17.1".into())].into()),
                        2 => Some([("ANDROID".into(), "13".into())].into()),
                        3 => Some([("IOS".into(), "beta".into())].into()),
                        _ => None,
                    },
                })
                .collect();
            let mut full = engine();
            for h in &history {
                apply(&mut full, h);
            }
            let want = heartbeat_state(&full);
            let Some(latest) = latest_heartbeat(&full, Some(key)) else {
                assert!(want.is_none_or(|w| w.0.is_none()), "{history:#?}");
                continue;
            };
            // As the view stores it.
            let mut buf = Vec::new();
            codec::encode(&latest, OutputEncoding::Json, &mut buf).unwrap();
            let latest: ConnectorHeartbeat = codec::decode(&buf).unwrap();
            let mut replayed = engine();
            apply(&mut replayed, &latest);
            assert_eq!(heartbeat_state(&replayed), want, "{history:#?}");
            for from in 0..history.len() {
                let mut tail = engine();
                apply(&mut tail, &latest);
                for h in &history[from..] {
                    apply(&mut tail, h);
                }
                assert_eq!(
                    heartbeat_state(&tail),
                    want,
                    "tail from {from}: {history:#?}"
                );
            }
        }
    }

    #[test]
    fn sources_are_indexed_by_topic_and_partition() {
        let mut s = Sources::default();
        for t in ["a", "b"] {
            s.first.insert(t.to_owned(), s.list.len());
            s.list.extend((0..3).map(|p| (t.to_owned(), p)));
        }
        assert_eq!(s.index("a", 2), Some(2));
        assert_eq!(s.index("b", 0), Some(3));
        assert_eq!(s.index("b", 3), None);
        assert_eq!(s.index("b", -1), None);
        assert_eq!(s.index("c", 0), None);
    }
}
