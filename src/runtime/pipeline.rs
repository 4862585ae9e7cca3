//! The processing loop: consume device topics as a consumer group, keep the tables current,
//! evaluate, and commit outputs + changelog + input offsets in one Kafka transaction.
//!
//! Any transaction or producer failure ends the pipeline with an error; the supervisor then
//! builds a new one, which restores state from the changelog and resumes from the committed
//! offsets. Crash-only recovery keeps a single, well-tested path for every failure.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::codec::{self, OutputEncoding};
use crate::config::Config;
use crate::engine::{Body, Engine, Event, Output};
use crate::model::*;

use super::clock::Clock;
use super::kafka::{consumer_config, producer_config};
use super::partitioner::partition_for;
use super::restore::restore_partitions;
use super::tables::TableReader;
use super::Status;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Most records taken from the consumer per loop iteration (one lock, one clock reading, one
/// table poll and one commit check per iteration).
const POLL_BATCH: usize = 256;

/// Counts delivery failures so a batch with a lost record is never committed.
#[derive(Default)]
pub struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}
impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            warn!(error = %e, "output delivery failed");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where an input came from: topic, partition, offset, key and raw value (for rejections).
type Source<'a> = (&'a str, i32, i64, Option<&'a [u8]>, &'a [u8]);

fn rejection_of(e: codec::DecodeError) -> crate::engine::Rejection {
    crate::engine::Rejection {
        reason: e.reason(),
        detail: e.to_string(),
    }
}

/// Which device topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceTopic {
    Threats,
    Enrollments,
    Inventory,
}

/// State shared between the loop and the rebalance callbacks (which run inside `poll`).
pub struct Processor {
    cfg: Arc<Config>,
    clock: Arc<dyn Clock>,
    pub engine: Engine,
    producer: BaseProducer<DeliveryCounter>,
    exactly_once: bool,
    /// Next offset to commit per topic and partition.
    offsets: HashMap<String, HashMap<i32, i64>>,
    /// Device partitions owned now.
    owned: HashSet<i32>,
    device_partitions: i32,
    encoding: OutputEncoding,
    out: Vec<Output>,
    buf: Vec<u8>,
    pending: usize,
    txn_open: bool,
    status: Arc<Status>,
    /// A failure seen inside a callback, surfaced by the loop.
    failure: Option<anyhow::Error>,
    /// Heartbeat topics and the partner each is bound to.
    heartbeat_topics: HashMap<String, Option<String>>,
    /// Last status published per connector, as read back from the status topic.
    last_status: HashMap<(String, String), (ConnectorStatus, bool)>,
    /// The last decoded report, reused as the next one's decoding buffer.
    spare_report: Option<DeviceThreatReport>,
    end_to_end: metrics::Histogram,
}

/// Where records of one device topic go, with that topic's consumed counter.
struct Route {
    kind: DeviceTopic,
    /// The partner a per-partner topic is bound to.
    bound: Option<String>,
    consumed: metrics::Counter,
}

/// The consumer context: commits before partitions are revoked, restores before new ones
/// are processed.
pub struct GroupContext {
    processor: Arc<Mutex<Processor>>,
    /// Counts rebalance callbacks, so the loop can tell records polled before a rebalance
    /// (to be dropped: the new assignment fetches them again from the committed offsets).
    rebalances: AtomicU64,
}

impl GroupContext {
    fn rebalances(&self) -> u64 {
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
                    metrics::gauge!("mtdgate_consumer_lag_records", "topic" => topic.clone(), "partition" => id.to_string())
                        .set((p.ls_offset - pos).max(0) as f64);
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
            info!(partitions = tpl.count(), "partitions revoked");
            metrics::counter!("mtdgate_rebalances_total", "kind" => "revoke").increment(1);
            if let Err(e) = p.commit(consumer) {
                p.failure.get_or_insert(e);
            }
            p.offsets.clear();
            p.status.set_restored(false);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
        if let Rebalance::Assign(tpl) = rebalance {
            let mut p = lock(&self.processor);
            metrics::counter!("mtdgate_rebalances_total", "kind" => "assign").increment(1);
            let assigned: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            if let Err(e) = p.reassign(assigned) {
                p.failure.get_or_insert(e);
            }
            let _ = consumer;
            p.status.set_restored(true);
        }
    }
}

/// Produces one record, waiting while the producer's queue is full.
fn produce(
    producer: &BaseProducer<DeliveryCounter>,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    payload: Option<&[u8]>,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::<[u8], [u8], ()>::to(topic).key(key);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(anyhow!(e).context(format!("produce to {topic}"))),
        }
    }
}

/// Appends the record key `tenant/id` to `key`.
fn push_key(key: &mut String, tenant: &str, id: &str) {
    key.reserve(tenant.len() + 1 + id.len());
    key.push_str(tenant);
    key.push('/');
    key.push_str(id);
}

fn lock(m: &Mutex<Processor>) -> std::sync::MutexGuard<'_, Processor> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Processor {
    /// The wall clock's now.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Keeps the state of partitions assigned again, drops the rest, restores new ones from
    /// the changelog and reconciles them against the current tables.
    fn reassign(&mut self, assigned: HashSet<i32>) -> anyhow::Result<()> {
        let held: Vec<i32> = self.engine.shards().iter().map(|s| *s.key()).collect();
        for p in held {
            if !assigned.contains(&p) {
                let n = self.engine.drop_partition(p);
                debug!(partition = p, devices = n, "dropped partition state");
            }
        }
        let mut new: Vec<i32> = assigned.difference(&self.owned).copied().collect();
        new.sort_unstable();
        for &p in &new {
            // A partition we did not own may hold stale state from an earlier ownership.
            self.engine.drop_partition(p);
        }
        if !new.is_empty() {
            let started = Instant::now();
            let counts = restore_partitions(&self.cfg, &mut self.engine, &new)?;
            let secs = started.elapsed().as_secs_f64();
            let total: usize = counts.values().sum();
            metrics::histogram!("mtdgate_restore_duration_seconds").record(secs);
            metrics::counter!("mtdgate_restore_records_total").increment(total as u64);
            info!(
                partitions = ?counts.keys().collect::<Vec<_>>(),
                records = total,
                seconds = secs,
                "restored partition state"
            );
        }
        self.owned = assigned;
        let now = self.clock.now_ms();
        for &p in &new {
            let mut out = std::mem::take(&mut self.out);
            self.engine.reconcile(p, now, &mut out);
            self.out = out;
        }
        // Connectors this instance now speaks for: publish what changed while nobody did.
        let new_set: HashSet<i32> = new.iter().copied().collect();
        for (tenant, partner, published, last_hb) in self.engine.connector_statuses() {
            let key = format!("{tenant}/{partner}");
            if !new_set.contains(&partition_for(key.as_bytes(), self.device_partitions)) {
                continue;
            }
            let (prev, prev_ignored) = self
                .last_status
                .get(&(tenant.clone(), partner.clone()))
                .copied()
                .unwrap_or((ConnectorStatus::Unavailable, false));
            if (prev, prev_ignored) != (published.status, published.compliance_ignored) {
                self.out
                    .push(Output::ConnectorStatus(ConnectorStatusChange {
                        tenant_id: tenant,
                        partner_id: partner,
                        previous: prev,
                        current: published.status,
                        compliance_ignored: published.compliance_ignored,
                        last_heartbeat_at: last_hb,
                        changed_at: now,
                        reason: "status changed while no instance published it".into(),
                    }));
            }
        }
        self.flush_outputs(now, None)?;
        Ok(())
    }

    /// Refreshes the state gauges (devices, connectors by status, readiness).
    fn publish_gauges(&self) {
        let (devices, noncompliant) = self.engine.device_counts();
        metrics::gauge!("mtdgate_devices_tracked").set(devices as f64);
        metrics::gauge!("mtdgate_devices_noncompliant").set(noncompliant as f64);
        let mut by_status = [0usize; 6];
        for (tenant, partner, published, _) in self.engine.connector_statuses() {
            if self.owns_connector(&tenant, &partner) {
                by_status[published.status.code() as usize] += 1;
            }
        }
        for s in ConnectorStatus::ALL {
            metrics::gauge!("mtdgate_connectors", "status" => s.as_str())
                .set(by_status[s.code() as usize] as f64);
        }
        metrics::gauge!("mtdgate_ready").set(if self.status.ready() { 1.0 } else { 0.0 });
    }

    /// Whether this instance publishes status changes of a connector.
    fn owns_connector(&self, tenant: &str, partner: &str) -> bool {
        let key = format!("{tenant}/{partner}");
        self.owned
            .contains(&partition_for(key.as_bytes(), self.device_partitions))
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        if self.exactly_once && !self.txn_open {
            self.producer
                .begin_transaction()
                .context("begin transaction")?;
            self.txn_open = true;
        }
        Ok(())
    }

    fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        self.begin()?;
        produce(&self.producer, topic, partition, key, payload)
    }

    /// Publishes the engine's outputs; `source` describes the input for rejections.
    fn flush_outputs(&mut self, now: i64, source: Option<Source<'_>>) -> anyhow::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let outputs = std::mem::take(&mut self.out);
        let cfg = Arc::clone(&self.cfg);
        let mut key = String::new();
        for o in &outputs {
            self.buf.clear();
            key.clear();
            let enc = self.encoding;
            let topic: std::borrow::Cow<'_, str> = match o {
                Output::Compliance(c) => {
                    codec::encode(c, enc, &mut self.buf)?;
                    metrics::counter!("mtdgate_compliance_changes_total", "state" => c.current.as_str()).increment(1);
                    push_key(&mut key, &c.tenant_id, &c.device_id);
                    (&cfg.topics.compliance_changes).into()
                }
                Output::AppAction(a) => {
                    codec::encode(a, enc, &mut self.buf)?;
                    metrics::counter!("mtdgate_app_protection_actions_total", "action" => a.action.as_str()).increment(1);
                    push_key(&mut key, &a.tenant_id, &a.device_id);
                    (&cfg.topics.app_protection_actions).into()
                }
                Output::ConnectorStatus(s) => {
                    if !self.owns_connector(&s.tenant_id, &s.partner_id) {
                        continue;
                    }
                    codec::encode(s, enc, &mut self.buf)?;
                    metrics::counter!("mtdgate_connector_status_changes_total", "status" => s.current.as_str()).increment(1);
                    push_key(&mut key, &s.tenant_id, &s.partner_id);
                    (&cfg.topics.connector_status).into()
                }
                Output::Inventory(i) => {
                    codec::encode(i, enc, &mut self.buf)?;
                    push_key(&mut key, &i.tenant_id, &i.device_id);
                    cfg.partner_topic(&i.partner_id).into()
                }
                Output::Rejected(r) => {
                    let Some((topic, partition, offset, key, raw)) = source else {
                        continue;
                    };
                    metrics::counter!("mtdgate_rejected_total", "reason" => r.reason.as_str())
                        .increment(1);
                    let ev = RejectedEvent {
                        source_topic: topic.to_owned(),
                        partition,
                        offset,
                        key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
                        reason: r.reason,
                        detail: r.detail.clone(),
                        raw: raw.to_vec(),
                        rejected_at: now,
                    };
                    codec::encode(&ev, enc, &mut self.buf)?;
                    let buf = std::mem::take(&mut self.buf);
                    self.send(
                        &cfg.topics.rejected,
                        None,
                        key.unwrap_or_default(),
                        Some(&buf),
                    )?;
                    self.buf = buf;
                    continue;
                }
            };
            let buf = std::mem::take(&mut self.buf);
            self.send(&topic, None, key.as_bytes(), Some(&buf))?;
            self.buf = buf;
        }
        let mut outputs = outputs;
        outputs.clear();
        self.out = outputs;
        Ok(())
    }

    /// Applies one device-topic record, as of `now`.
    fn handle(&mut self, route: &Route, msg: &BorrowedMessage<'_>, now: i64) -> anyhow::Result<()> {
        let key = msg.key();
        let payload = msg.payload();
        route.consumed.increment(1);
        let bound = route.bound.as_deref();
        let body = match (route.kind, payload) {
            (DeviceTopic::Enrollments, None) => Ok(Body::Enrollment(None)),
            (_, None) => Err((RejectReason::Undecodable, "record has no value".to_owned())),
            // Reports decode into one reused value: its strings keep their buffers.
            (DeviceTopic::Threats, Some(b)) => match self.spare_report.take() {
                Some(mut r) => codec::decode_into(b, &mut r).map(|()| Body::Threat(r)),
                None => codec::decode::<DeviceThreatReport>(b).map(Body::Threat),
            }
            .map_err(|e| (e.reason(), e.to_string())),
            (DeviceTopic::Enrollments, Some(b)) => codec::decode::<DeviceEnrollment>(b)
                .map(|e| Body::Enrollment(Some(e)))
                .map_err(|e| (e.reason(), e.to_string())),
            (DeviceTopic::Inventory, Some(b)) => codec::decode::<AppInventory>(b)
                .map(Body::Inventory)
                .map_err(|e| (e.reason(), e.to_string())),
        };
        let body = body.and_then(|b| match bound {
            Some(partner) => crate::engine::check_partner_binding(&b, partner)
                .map(|()| b)
                .map_err(|r| (r.reason, r.detail)),
            None => Ok(b),
        });
        match body {
            Ok(body) => {
                let mut out = std::mem::take(&mut self.out);
                let event = Event {
                    partition: msg.partition(),
                    key,
                    body,
                };
                self.engine.apply(&event, now, &mut out);
                self.out = out;
                if let Body::Threat(r) = event.body {
                    self.spare_report = Some(r);
                }
            }
            Err((reason, detail)) => self.out.push(Output::Rejected(crate::engine::Rejection {
                reason,
                detail,
            })),
        }
        if let Some(ts) = msg.timestamp().to_millis() {
            self.end_to_end.record((now - ts).max(0) as f64 / 1000.0);
        }
        self.flush_outputs(
            now,
            Some((
                msg.topic(),
                msg.partition(),
                msg.offset(),
                key,
                payload.unwrap_or_default(),
            )),
        )?;
        match self.offsets.get_mut(msg.topic()) {
            Some(by_partition) => {
                by_partition.insert(msg.partition(), msg.offset() + 1);
            }
            None => {
                let by_partition = HashMap::from([(msg.partition(), msg.offset() + 1)]);
                self.offsets.insert(msg.topic().to_owned(), by_partition);
            }
        }
        self.pending += 1;
        Ok(())
    }

    /// Applies one table record (all instances read every table record).
    fn handle_table(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        live: bool,
    ) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let t = &self.cfg.topics;
        if topic == t.connector_status {
            if let Some(Ok(s)) = payload.map(codec::decode::<ConnectorStatusChange>) {
                self.last_status.insert(
                    (s.tenant_id, s.partner_id),
                    (s.current, s.compliance_ignored),
                );
            }
            return Ok(());
        }
        let decoded = if topic == t.connectors {
            payload
                .map(codec::decode::<ConnectorConfig>)
                .transpose()
                .map(Body::Connector)
                .map_err(rejection_of)
        } else if topic == t.policies {
            payload
                .map(codec::decode::<ThreatPolicy>)
                .transpose()
                .map(Body::Policy)
                .map_err(rejection_of)
        } else if let Some(bound) = self.heartbeat_topics.get(topic) {
            match payload {
                Some(b) => codec::decode::<ConnectorHeartbeat>(b).map(Body::Heartbeat),
                None => return Ok(()),
            }
            .map_err(|e| crate::engine::Rejection {
                reason: e.reason(),
                detail: e.to_string(),
            })
            .and_then(|body| match bound {
                Some(partner) => {
                    crate::engine::check_partner_binding(&body, partner).map(|()| body)
                }
                None => Ok(body),
            })
        } else {
            return Ok(());
        };
        match decoded {
            Ok(body) => {
                let mut out = std::mem::take(&mut self.out);
                self.engine.apply(
                    &Event {
                        partition: 0,
                        key,
                        body,
                    },
                    now,
                    &mut out,
                );
                self.out = out;
            }
            Err(r) => self.out.push(Output::Rejected(r)),
        }
        if !live {
            // Replaying history at start: the previous run already published all of it.
            self.out.clear();
            return Ok(());
        }
        // One instance publishes a table record's rejection: the owner of its partition number.
        let owner = self
            .owned
            .contains(&(partition % self.device_partitions.max(1)));
        if !owner {
            self.out.retain(|o| !matches!(o, Output::Rejected(_)));
        }
        self.flush_outputs(
            now,
            Some((topic, partition, offset, key, payload.unwrap_or_default())),
        )?;
        self.pending += 1;
        Ok(())
    }

    /// Produces the changelog record of every device changed since the last call, into the
    /// open transaction. Called after every poll batch, so the records are acknowledged while
    /// the loop goes on instead of all at the commit; a device changed several times within
    /// one batch still writes one record.
    fn produce_changelog(&mut self) -> anyhow::Result<()> {
        // Changelog records are encoded into one reused buffer and produced while draining.
        let changed: Vec<i32> = self
            .engine
            .shards()
            .iter()
            .filter(|s| s.has_changes())
            .map(|s| *s.key())
            .collect();
        let cfg = Arc::clone(&self.cfg);
        let topic = cfg.topics.device_state.as_str();
        let mut buf = std::mem::take(&mut self.buf);
        let mut failed = None;
        for p in changed {
            self.begin()?;
            let producer = &self.producer;
            self.engine.drain_changelog(p, |key, rec| {
                if failed.is_some() {
                    return;
                }
                buf.clear();
                // The changelog is always Avro: compact and fast to restore.
                let value = match rec {
                    Some(r) => match codec::encode(&r, OutputEncoding::Avro, &mut buf) {
                        Ok(()) => Some(&buf[..]),
                        Err(e) => {
                            failed = Some(anyhow!(e).context("encode a changelog record"));
                            return;
                        }
                    },
                    None => None,
                };
                if let Err(e) = produce(producer, topic, Some(p), key.as_bytes(), value) {
                    failed = Some(e);
                }
            });
        }
        self.buf = buf;
        if let Some(e) = failed {
            // The drained changes are not in any committed transaction: the rebuilt pipeline
            // restores from the changelog and reprocesses from the committed offsets.
            return Err(e);
        }
        Ok(())
    }

    /// Writes the rest of the changelog, then commits outputs, changelog and offsets together.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> anyhow::Result<()> {
        self.produce_changelog()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, by_partition) in &self.offsets {
            for (partition, offset) in by_partition {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            }
        }
        // Serve delivery reports here: rdkafka's own flush (called inside
        // `commit_transaction`) polls in 100 ms steps and would stall the loop that long.
        super::kafka::await_deliveries(&self.producer, TXN_TIMEOUT)
            .context("outputs not delivered")?;
        if self.exactly_once {
            if !self.txn_open && tpl.count() == 0 {
                return Ok(());
            }
            self.begin()?;
            if tpl.count() > 0 {
                let meta = consumer
                    .group_metadata()
                    .ok_or_else(|| anyhow!("no consumer group metadata"))?;
                self.producer
                    .send_offsets_to_transaction(&tpl, &meta, TXN_TIMEOUT)
                    .context("send offsets to transaction")?;
            }
            let started = Instant::now();
            match self.producer.commit_transaction(TXN_TIMEOUT) {
                Ok(()) => {
                    metrics::counter!("mtdgate_transactions_total", "result" => "commit")
                        .increment(1);
                    metrics::histogram!("mtdgate_commit_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    metrics::counter!("mtdgate_transactions_total", "result" => "abort")
                        .increment(1);
                    let _ = self.producer.abort_transaction(TXN_TIMEOUT);
                    self.txn_open = false;
                    return Err(anyhow!(e).context("commit transaction"));
                }
            }
            self.txn_open = false;
        } else {
            self.producer.flush(TXN_TIMEOUT).context("flush outputs")?;
            if self.producer.context().failed.load(Ordering::Relaxed) > 0 {
                return Err(anyhow!(
                    "an output could not be delivered; resuming from the last committed offsets"
                ));
            }
            if tpl.count() > 0 {
                consumer
                    .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                    .context("commit offsets")?;
            }
        }
        self.pending = 0;
        Ok(())
    }
}

/// Runs one pipeline until shutdown (Ok) or a failure (Err).
pub fn run_pipeline(
    cfg: Arc<Config>,
    clock: Arc<dyn Clock>,
    engine: Engine,
    device_partitions: i32,
    shutdown: Arc<AtomicBool>,
    status: Arc<Status>,
) -> anyhow::Result<()> {
    let txn_id = format!(
        "{}-{}",
        cfg.kafka.transactional_id_prefix, cfg.kafka.instance_id
    );
    let producer: BaseProducer<DeliveryCounter> =
        producer_config(&cfg, cfg.processing.exactly_once.then_some(txn_id.as_str()))
            .create_with_context(DeliveryCounter::default())
            .context("create producer")?;
    if cfg.processing.exactly_once {
        producer
            .init_transactions(Duration::from_secs(60))
            .context(
                "init transactions (is the broker reachable and does it allow transactions?)",
            )?;
    }
    let partner_owned: Vec<String> = engine
        .catalogue()
        .partners()
        .iter()
        .map(|p| p.id.clone())
        .collect();
    let partner_ids: Vec<&str> = partner_owned.iter().map(String::as_str).collect();
    let heartbeat_topics: HashMap<String, Option<String>> =
        cfg.heartbeat_topics(&partner_ids).into_iter().collect();
    let processor = Arc::new(Mutex::new(Processor {
        heartbeat_topics,
        cfg: cfg.clone(),
        clock: clock.clone(),
        engine,
        producer,
        exactly_once: cfg.processing.exactly_once,
        offsets: HashMap::new(),
        owned: HashSet::new(),
        device_partitions,
        encoding: cfg.processing.output_encoding,
        out: Vec::new(),
        buf: Vec::with_capacity(1024),
        pending: 0,
        txn_open: false,
        status: status.clone(),
        failure: None,
        last_status: HashMap::new(),
        spare_report: None,
        end_to_end: metrics::histogram!("mtdgate_end_to_end_latency_seconds"),
    }));

    status.set_processor(Some(processor.clone()));
    // Tables first, in full, before any device traffic.
    let mut tables = TableReader::new(&cfg, &partner_ids)?;
    let started = Instant::now();
    {
        let mut p = lock(&processor);
        let n = tables.bootstrap(|topic, partition, offset, key, payload| {
            p.handle_table(topic, partition, offset, key, payload, false)
        })?;
        info!(
            records = n,
            seconds = started.elapsed().as_secs_f64(),
            "tables loaded"
        );
    }
    status.set_tables_loaded(true);

    let consumer: BaseConsumer<GroupContext> = {
        let mut c = consumer_config(&cfg);
        c.set("group.id", &cfg.kafka.group_id)
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "5000");
        c.create_with_context(GroupContext {
            processor: processor.clone(),
            rebalances: AtomicU64::new(0),
        })
        .context("create consumer")?
    };
    let t = &cfg.topics;
    let mut routes: HashMap<String, Route> = HashMap::new();
    let mut route = |topic: String, kind: DeviceTopic, bound: Option<String>| {
        let consumed = metrics::counter!("mtdgate_events_consumed_total", "topic" => topic.clone());
        routes.insert(
            topic,
            Route {
                kind,
                bound,
                consumed,
            },
        );
    };
    for (topic, bound) in cfg.threat_topics(&partner_ids) {
        route(topic, DeviceTopic::Threats, bound);
    }
    route(t.device_enrollments.clone(), DeviceTopic::Enrollments, None);
    route(t.app_inventory.clone(), DeviceTopic::Inventory, None);
    let subscribed: Vec<&str> = routes.keys().map(String::as_str).collect();
    consumer.subscribe(&subscribed).context("subscribe")?;

    let processing = metrics::histogram!("mtdgate_processing_seconds");
    let lag_seconds = metrics::gauge!("mtdgate_consumer_lag_seconds");
    let interval = Duration::from_millis(cfg.processing.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_gauges = Instant::now();
    let mut batch = Vec::with_capacity(POLL_BATCH);
    while !shutdown.load(Ordering::SeqCst) {
        // Poll a batch without holding the lock (rebalance callbacks take it): wait for the
        // first record, then take what is already fetched. Each record is tagged with the
        // rebalance count seen right after the poll that returned it.
        batch.clear();
        let mut polled = consumer.poll(Duration::from_millis(20));
        loop {
            match polled {
                Some(Ok(msg)) => batch.push((msg, consumer.context().rebalances())),
                Some(Err(e)) => {
                    warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
            if batch.len() == POLL_BATCH {
                break;
            }
            polled = consumer.poll(Duration::ZERO);
        }
        let mut p = lock(&processor);
        if let Some(e) = p.failure.take() {
            return Err(e);
        }
        // One clock reading per batch: a batch is what arrived within a few milliseconds.
        let now = p.clock.now_ms();
        let started = Instant::now();
        let current = consumer.context().rebalances();
        let mut handled = 0;
        let mut newest_ts = None;
        for (msg, seen) in batch.drain(..) {
            // Polled before a rebalance that ran inside a later poll of this batch: the
            // partition was revoked (and maybe assigned again, restored from the committed
            // offsets, from which the consumer fetches this record again).
            if seen != current {
                continue;
            }
            newest_ts = msg.timestamp().to_millis().or(newest_ts);
            match routes.get(msg.topic()) {
                Some(route) => p.handle(route, &msg, now)?,
                None => warn!(topic = msg.topic(), "record from an unexpected topic"),
            }
            handled += 1;
        }
        if handled > 0 {
            p.produce_changelog()?;
            processing.record_many(started.elapsed().as_secs_f64() / handled as f64, handled);
        }
        match newest_ts {
            Some(ts) => lag_seconds.set((now - ts).max(0) as f64 / 1000.0),
            None if handled == 0 => lag_seconds.set(0.0),
            None => {}
        }
        tables.poll_live(&mut |topic, partition, offset, key, payload| {
            p.handle_table(topic, partition, offset, key, payload, true)
        })?;
        let now = p.clock.now_ms();
        if p.engine.next_deadline().is_some_and(|d| d <= now) {
            let mut out = std::mem::take(&mut p.out);
            p.engine.advance(now, &mut out);
            p.out = out;
            p.flush_outputs(now, None)?;
        }
        if p.pending >= cfg.processing.max_batch
            || (last_commit.elapsed() >= interval
                && (p.pending > 0
                    || p.txn_open
                    || p.engine.shards().iter().any(|s| s.has_changes())))
        {
            p.commit(&consumer)?;
            last_commit = Instant::now();
        }
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            p.publish_gauges();
            last_gauges = Instant::now();
        }
        p.producer.poll(Duration::ZERO);
    }
    info!("shutting down: committing the open transaction");
    lock(&processor).commit(&consumer)?;
    consumer.unsubscribe();
    Ok(())
}
