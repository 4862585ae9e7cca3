//! The processing loop in four steps: set up (producer, tables, consumer), poll a batch,
//! process it (decode, apply, publish, changelog, tables, deadlines), commit when due. Device
//! topics are consumed as a consumer group; outputs, changelog and input offsets are committed
//! under one [`delivery::DeliveryGuarantee`].
//!
//! Any transaction or producer failure ends the pipeline with an error; the supervisor then
//! builds a new one, which restores state from the changelog and resumes from the committed
//! offsets. Crash-only recovery keeps a single, well-tested path for every failure.

pub mod delivery;
mod outputs;
mod processor;
mod rebalance;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::Config;
use crate::engine::ownership::PartitionOwnership;
use crate::engine::Engine;
use crate::telemetry;

use super::clock::Clock;
use super::commit_policy::CommitPolicy;
use super::kafka::consumer_config;
use super::tables::TableReader;
use super::Status;

use super::schemas::Schemas;
use super::snapshots::Snapshots;
use delivery::Sink;
use processor::{DeviceTopic, Handled, Processor, Route};
use rebalance::GroupContext;

/// Most records taken from the consumer per loop iteration (one lock, one clock reading, one
/// table poll and one commit check per iteration).
pub const POLL_BATCH: usize = 256;

/// A polled record with the rebalance count seen right after the poll that returned it.
type Polled<'c> = (BorrowedMessage<'c>, u64);

fn lock(m: &Mutex<Processor>) -> MutexGuard<'_, Processor> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one pipeline until shutdown (Ok) or a failure (Err).
pub fn run_pipeline(
    cfg: Arc<Config>,
    clock: Arc<dyn Clock>,
    engine: Engine,
    schemas: Arc<Schemas>,
    device_partitions: i32,
    shutdown: Arc<AtomicBool>,
    status: Arc<Status>,
) -> anyhow::Result<()> {
    let (mut pipeline, consumer) =
        Pipeline::set_up(cfg, clock, engine, schemas, device_partitions, status)?;
    let mut batch = Vec::with_capacity(POLL_BATCH);
    while !shutdown.load(Ordering::SeqCst) {
        let drained = poll(&consumer, &mut batch);
        pipeline.process(&consumer, &mut batch)?;
        pipeline.commit_when_due(&consumer, drained)?;
    }
    info!("shutting down: committing the open transaction");
    lock(&pipeline.processor).commit(&consumer)?;
    consumer.unsubscribe();
    Ok(())
}

/// Everything the loop keeps besides the consumer (whose records borrow it).
struct Pipeline {
    cfg: Arc<Config>,
    processor: Arc<Mutex<Processor>>,
    tables: TableReader,
    routes: HashMap<String, Route>,
    processing: metrics::Histogram,
    lag_seconds: metrics::Gauge,
    commits: CommitPolicy,
    last_gauges: Instant,
    schemas: Arc<Schemas>,
    /// Partitions paused at a record whose schema the registry must give first.
    waiting: Vec<(String, i32)>,
    /// When the waiting partitions are resumed (their records fetched and decoded again).
    resume_at: Instant,
}

impl Pipeline {
    /// Set-up: the producer, the tables read in full before any device traffic, and the
    /// consumer subscribed to the device topics.
    fn set_up(
        cfg: Arc<Config>,
        clock: Arc<dyn Clock>,
        engine: Engine,
        schemas: Arc<Schemas>,
        device_partitions: i32,
        status: Arc<Status>,
    ) -> anyhow::Result<(Pipeline, BaseConsumer<GroupContext>)> {
        let sink = Sink::create(&cfg)?;
        let partner_ids: Vec<String> = engine
            .catalogue()
            .partners()
            .iter()
            .map(|p| p.id.clone())
            .collect();
        let partner_ids: Vec<&str> = partner_ids.iter().map(String::as_str).collect();
        status.set_reader(Some(engine.reader()), clock.clone());
        let processor = Arc::new(Mutex::new(Processor {
            heartbeat_topics: cfg.heartbeat_topics(&partner_ids).into_iter().collect(),
            cfg: cfg.clone(),
            clock,
            engine,
            sink,
            offsets: HashMap::new(),
            ownership: PartitionOwnership::new(device_partitions),
            encoding: cfg.processing.output_encoding,
            out: Vec::new(),
            buf: Vec::with_capacity(1024),
            pending: 0,
            status: status.clone(),
            failure: None,
            last_status: HashMap::new(),
            exact_status: Default::default(),
            spare_report: None,
            end_to_end: telemetry::end_to_end_histogram(),
            schemas: schemas.clone(),
            device_partitions,
            snapshots: Snapshots::new(&cfg)?,
            status_records: HashMap::new(),
            settles: Default::default(),
        }));

        let mut tables = TableReader::new(&cfg, &partner_ids, schemas.clone())?;
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

        let consumer: BaseConsumer<GroupContext> = consumer_config(&cfg)
            .set("group.id", &cfg.kafka.group_id)
            // Range keeps partition p of every co-partitioned topic on one member.
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "5000")
            .create_with_context(GroupContext {
                processor: processor.clone(),
                rebalances: AtomicU64::new(0),
            })
            .context("create consumer")?;
        let routes = device_routes(&cfg, &partner_ids);
        let mut subscribed: Vec<&str> = routes.keys().map(String::as_str).collect();
        subscribed.push(&cfg.topics.repartition);
        consumer.subscribe(&subscribed).context("subscribe")?;
        let commits = CommitPolicy::new(&cfg.processing, Instant::now());
        let pipeline = Pipeline {
            cfg,
            processor,
            tables,
            routes,
            processing: telemetry::processing_histogram(),
            lag_seconds: telemetry::lag_seconds_gauge(),
            commits,
            last_gauges: Instant::now(),
            schemas,
            waiting: Vec::new(),
            resume_at: Instant::now(),
        };
        Ok((pipeline, consumer))
    }

    /// Process: applies the batch under the processing lock, with one clock reading (a batch
    /// is what arrived within a few milliseconds), then writes its changelog records, follows
    /// the tables and fires due deadlines.
    fn process<'c>(
        &mut self,
        consumer: &'c BaseConsumer<GroupContext>,
        batch: &mut Vec<Polled<'c>>,
    ) -> anyhow::Result<()> {
        self.resume_waiting(consumer);
        // Schemas the registry must give are asked for before the processing lock is taken.
        if self.schemas.decoder.has_resolver() {
            for (msg, _) in batch.iter() {
                let _ = self
                    .schemas
                    .decoder
                    .prefetch(msg.payload().unwrap_or_default());
            }
        }
        let mut p = lock(&self.processor);
        if let Some(e) = p.failure.take() {
            return Err(e);
        }
        let now = p.clock.now_ms();
        let started = Instant::now();
        let current = consumer.context().rebalances();
        let mut handled = 0;
        let mut newest_ts = None;
        // Partitions stopped in this batch at a record that waits for the registry, with
        // that record's offset: their later records in the batch wait too (order per key).
        let mut stopped: Vec<(String, i32, i64)> = Vec::new();
        for (msg, seen) in batch.drain(..) {
            // Polled before a rebalance that ran inside a later poll of this batch: the
            // partition was revoked (and maybe assigned again, restored from the committed
            // offsets, from which the consumer fetches this record again).
            if seen != current {
                continue;
            }
            if stopped
                .iter()
                .any(|(t, part, _)| *part == msg.partition() && t == msg.topic())
            {
                continue;
            }
            // A forwarded record goes the way of the topic it first arrived on.
            let origin = if msg.topic() == self.cfg.topics.repartition {
                match processor::Origin::of(&msg) {
                    Some(o) => Some(o),
                    None => {
                        warn!(
                            partition = msg.partition(),
                            offset = msg.offset(),
                            "record without a valid origin header on the repartition topic; skipped"
                        );
                        continue;
                    }
                }
            } else {
                None
            };
            let topic = origin.as_ref().map_or(msg.topic(), |o| o.topic.as_str());
            let Some(route) = self.routes.get(topic) else {
                warn!(topic, "record from an unexpected topic");
                continue;
            };
            match p.handle(route, &msg, origin.as_ref(), now)? {
                Handled::Applied => {
                    newest_ts = msg.timestamp().to_millis().or(newest_ts);
                    handled += 1;
                }
                Handled::Wait => {
                    stopped.push((msg.topic().to_owned(), msg.partition(), msg.offset()))
                }
            }
        }
        drop(p);
        if !stopped.is_empty() {
            self.wait_for_registry(consumer, stopped)?;
        }
        let mut p = lock(&self.processor);
        if handled > 0 {
            p.produce_changelog()?;
            self.processing
                .record_many(started.elapsed().as_secs_f64() / handled as f64, handled);
        }
        match newest_ts {
            Some(ts) => self.lag_seconds.set((now - ts).max(0) as f64 / 1000.0),
            None if handled == 0 => self.lag_seconds.set(0.0),
            None => {}
        }
        self.tables
            .poll_live(&mut |topic, partition, offset, key, payload| {
                p.handle_table(topic, partition, offset, key, payload, true)
            })?;
        p.fire_deadlines()?;
        // What table changes and deadlines changed goes out now too, not only at the commit:
        // its records are acknowledged while the loop goes on.
        p.produce_changelog()
    }

    /// Rewinds each stopped partition to the record that waits for the registry and pauses
    /// it until the registry may be asked again; nothing of it after that record was applied.
    fn wait_for_registry(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        stopped: Vec<(String, i32, i64)>,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in stopped {
            consumer
                .seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                )
                .with_context(|| format!("rewind {topic}/{partition} to {offset}"))?;
            tpl.add_partition(&topic, partition);
            if !self
                .waiting
                .iter()
                .any(|(t, p)| *p == partition && *t == topic)
            {
                self.waiting.push((topic, partition));
            }
        }
        consumer
            .pause(&tpl)
            .context("pause partitions waiting for the registry")?;
        self.resume_at = self.schemas.retry_at();
        telemetry::schema_registry_waiting(self.waiting.len());
        Ok(())
    }

    /// Resumes the waiting partitions once the registry may be asked again. Partitions
    /// revoked meanwhile are resumed too (an error, ignored): nothing stays paused forever.
    fn resume_waiting(&mut self, consumer: &BaseConsumer<GroupContext>) {
        if self.waiting.is_empty() || Instant::now() < self.resume_at {
            return;
        }
        for (topic, partition) in self.waiting.drain(..) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            if let Err(e) = consumer.resume(&tpl) {
                tracing::debug!(topic, partition, error = %e, "resume");
            }
        }
        telemetry::schema_registry_waiting(0);
    }

    /// Commit when the [`CommitPolicy`] says so: the input drained (`drained`: the last poll
    /// emptied the consumer's queue), the interval passed or the batch is full, with anything
    /// uncommitted. Gauges are refreshed once a second.
    fn commit_when_due(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        drained: bool,
    ) -> anyhow::Result<()> {
        let mut p = lock(&self.processor);
        let now = Instant::now();
        if self
            .commits
            .due(now, p.pending, p.has_uncommitted(), drained)
            .is_some()
        {
            p.commit(consumer)?;
            self.commits.committed(Instant::now());
            p.settle_step()?;
        } else if drained && !p.has_uncommitted() {
            // Idle partitions are snapshotted too (their state equals the committed changelog).
            p.snapshot_if_due();
            // Batches found on restore are settled even when no input comes.
            p.settle_step()?;
        }
        if self.last_gauges.elapsed() >= Duration::from_secs(1) {
            p.publish_gauges();
            self.last_gauges = Instant::now();
        }
        p.sink.poll();
        Ok(())
    }
}

/// Poll: waits for the first record, then takes what is already fetched, up to
/// [`POLL_BATCH`], without the processing lock (rebalance callbacks inside `poll` take it).
/// Returns whether the consumer's queue was drained (the batch is not full).
fn poll<'c>(consumer: &'c BaseConsumer<GroupContext>, batch: &mut Vec<Polled<'c>>) -> bool {
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
            return false;
        }
        polled = consumer.poll(Duration::ZERO);
    }
    true
}

/// The device topics and where their records go.
fn device_routes(cfg: &Config, partner_ids: &[&str]) -> HashMap<String, Route> {
    let mut routes = HashMap::new();
    let mut route = |topic: String, kind: DeviceTopic, bound: Option<String>| {
        let consumed = telemetry::consumed_counter(&topic);
        let rerouted = telemetry::rerouted_counter(&topic);
        routes.insert(
            topic,
            Route {
                kind,
                bound,
                consumed,
                rerouted,
            },
        );
    };
    for (topic, bound) in cfg.threat_topics(partner_ids) {
        route(topic, DeviceTopic::Threats, bound);
    }
    route(
        cfg.topics.device_enrollments.clone(),
        DeviceTopic::Enrollments,
        None,
    );
    route(
        cfg.topics.app_inventory.clone(),
        DeviceTopic::Inventory,
        None,
    );
    routes
}
