//! Kafka plumbing of the benchmark: unique topics, producers, an in-process mtdgate, the
//! committed-offset watcher and counting readers.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use mtdgate::codec::{self, AvroRecord, OutputEncoding};
use mtdgate::config::{Config, TopicsConfig};
use mtdgate::runtime::clock::Clock;
use mtdgate::runtime::{self, Status};

pub use crate::tools::send;

use super::world::Tables;

/// The broker, the run's unique prefix and the topics it created.
pub struct BenchEnv {
    pub bootstrap: String,
    pub partitions: i32,
    pub encoding: OutputEncoding,
    pub run_id: String,
    /// Extra librdkafka consumer settings for mtdgate's and the pipes' consumers.
    #[cfg(feature = "experiments")]
    pub consumer_properties: Vec<(String, String)>,
    /// Extra librdkafka producer settings for mtdgate's and the pipes' producers.
    #[cfg(feature = "experiments")]
    pub producer_properties: Vec<(String, String)>,
    topics: Mutex<BTreeSet<String>>,
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

impl BenchEnv {
    pub fn new(bootstrap: &str, partitions: i32, encoding: OutputEncoding) -> anyhow::Result<Self> {
        if partitions < 1 {
            bail!("--partitions must be at least 1");
        }
        let run_id = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
                % 0xff_ffff_ffff
        );
        let env = BenchEnv {
            bootstrap: bootstrap.to_owned(),
            partitions,
            encoding,
            run_id,
            #[cfg(feature = "experiments")]
            consumer_properties: Vec::new(),
            #[cfg(feature = "experiments")]
            producer_properties: Vec::new(),
            topics: Mutex::new(BTreeSet::new()),
        };
        // Fail early and clearly when the broker is not there.
        let c: BaseConsumer = env.client().create()?;
        c.fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("cannot reach Kafka at {bootstrap} (scripts/kafka start)"))?;
        Ok(env)
    }

    /// Base client settings.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// A unique name for one of this run's topics.
    pub fn topic(&self, label: &str) -> String {
        format!("bench-{}.{label}", self.run_id)
    }

    /// mtdgate's configuration for one run: every topic and the group unique to `label`.
    pub fn config(&self, label: &str, exactly_once: bool) -> Config {
        let mut c = Config::default();
        let prefix = format!("bench-{}-{label}", self.run_id);
        c.kafka.bootstrap_servers = self.bootstrap.clone();
        c.kafka.group_id = prefix.clone();
        c.kafka.instance_id = "i1".into();
        c.kafka.transactional_id_prefix = prefix.clone();
        for topic in c.topics.names_mut() {
            *topic = format!("{prefix}.{topic}");
        }
        c.topics.partitions = self.partitions;
        c.topics.create = true;
        c.processing.exactly_once = exactly_once;
        c.processing.output_encoding = self.encoding;
        #[cfg(feature = "experiments")]
        {
            c.kafka
                .consumer
                .extend(self.consumer_properties.iter().cloned());
            c.kafka
                .producer
                .extend(self.producer_properties.iter().cloned());
        }
        c
    }

    /// Creates every topic of `cfg` that is missing, remembering them for deletion.
    pub fn create_all(&self, cfg: &Config) -> anyhow::Result<()> {
        let catalogue = runtime::load_catalogue(cfg)?;
        for (t, _) in runtime::kafka::all_topics(cfg, &catalogue) {
            self.remember(&t);
        }
        block_on(runtime::kafka::create_topics(cfg, &catalogue))??;
        Ok(())
    }

    fn remember(&self, topic: &str) {
        if topic.starts_with(&format!("bench-{}", self.run_id)) {
            self.topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.to_owned());
        }
    }

    /// Creates one topic.
    pub fn create_topic(&self, name: &str, partitions: i32, compacted: bool) -> anyhow::Result<()> {
        self.remember(name);
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        if compacted {
            t = t.set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in block_on(admin.create_topics(&[t], &opts))?? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("creating topic {topic}: {code}"),
            }
        }
        // Wait until the metadata shows every partition with a leader.
        let c: BaseConsumer = self.client().create()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(md) = c.fetch_metadata(Some(name), Duration::from_secs(5)) {
                if md.topics().iter().any(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                }) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("topic {name} has no leader after 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes every topic this run created.
    pub fn delete_topics(&self) -> anyhow::Result<()> {
        let topics: Vec<String> = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if topics.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for chunk in names.chunks(50) {
            block_on(admin.delete_topics(chunk, &opts))??;
        }
        Ok(())
    }

    /// A producer like a vendor gateway's: murmur2 keys, batching, lz4, idempotent.
    pub fn producer(&self) -> anyhow::Result<BaseProducer> {
        Ok(self
            .client()
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "120000")
            .create()?)
    }

    /// End offsets of every partition of `topic`.
    pub fn end_offsets(&self, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
        let c: BaseConsumer = self.client().create()?;
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let t = md
            .topics()
            .first()
            .ok_or_else(|| anyhow!("no metadata for {topic}"))?;
        let mut v = Vec::new();
        for p in t.partitions() {
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            v.push((p.id(), high));
        }
        v.sort_unstable();
        Ok(v)
    }

    /// A read_committed consumer assigned every partition of `topic` from the beginning.
    pub fn reader(&self, topic: &str, partitions: i32) -> anyhow::Result<BaseConsumer> {
        let c: BaseConsumer = self
            .client()
            .set("group.id", format!("bench-{}-reader", self.run_id))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            // librdkafka postpones a partition's fetches by 1 s once its local queue holds
            // queued.min.messages (100,000): a reader that is briefly busy would then measure
            // its own pauses.
            .set("queued.min.messages", "10000000")
            .set("queued.max.messages.kbytes", "2097151")
            .set("fetch.queue.backoff.ms", "10")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        Ok(c)
    }
}

/// Produces `value` Avro single-object encoded (in `buf`) to `topic` with `key`.
pub fn send_avro<T: AvroRecord + Serialize>(
    producer: &BaseProducer,
    topic: &str,
    key: &str,
    value: &T,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    buf.clear();
    codec::encode(value, OutputEncoding::Avro, buf)?;
    send(
        producer,
        BaseRecord::to(topic).key(key.as_bytes()).payload(&buf[..]),
    )
}

/// Produces a tenant's table records to the topics of `topics`, keyed as the contract says.
pub fn send_tables(
    producer: &BaseProducer,
    topics: &TopicsConfig,
    tables: &Tables,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(512);
    for c in &tables.connectors {
        let key = format!("{}/{}", c.tenant_id, c.partner_id);
        send_avro(producer, &topics.connectors, &key, c, &mut buf)?;
    }
    for p in &tables.policies {
        let key = format!("{}/{}", p.tenant_id, p.policy_id);
        send_avro(producer, &topics.policies, &key, p, &mut buf)?;
    }
    for h in &tables.heartbeats {
        let key = format!("{}/{}", h.tenant_id, h.partner_id);
        send_avro(producer, &topics.connector_heartbeats, &key, h, &mut buf)?;
    }
    Ok(())
}

/// Flushes and fails if anything is still queued.
pub fn flush(producer: &BaseProducer) -> anyhow::Result<()> {
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the benchmark's producer")?;
    if producer.in_flight_count() > 0 {
        bail!("{} records not delivered", producer.in_flight_count());
    }
    Ok(())
}

/// A thread that runs until it is told to stop.
pub struct Worker {
    what: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Worker {
    /// Runs `f` with the stop flag in a thread named `thread`; errors name it `what`.
    pub fn spawn(
        thread: &str,
        what: &'static str,
        f: impl FnOnce(Arc<AtomicBool>) -> anyhow::Result<()> + Send + 'static,
    ) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || f(s))
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Worker {
            what,
            stop,
            thread: Some(thread),
        }
    }

    /// Fails if the thread ended.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return match self.thread.take().map(|t| t.join()) {
                Some(Ok(Err(e))) => Err(e.context(format!("{} stopped", self.what))),
                Some(Err(_)) => Err(anyhow!("{} panicked", self.what)),
                _ => Err(anyhow!("{} stopped", self.what)),
            };
        }
        Ok(())
    }

    /// Sets the stop flag and waits for the thread's result.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("{} panicked", self.what)),
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// mtdgate running in this process, as `mtdgate run` does (minus the HTTP listener).
pub struct Instance {
    pub status: Arc<Status>,
    worker: Worker,
}

impl Instance {
    pub fn start(cfg: &Config, clock: Arc<dyn Clock>) -> Instance {
        let status = Arc::new(Status::default());
        let (c, st) = (cfg.clone(), status.clone());
        let worker = Worker::spawn("mtdgate-svc", "mtdgate", move |stop| {
            runtime::run(c, clock, stop, st)
        });
        Instance { status, worker }
    }

    /// Fails if the service stopped.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.worker.check_alive()
    }

    /// Waits until tables are loaded and the assigned partitions restored; returns when.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        while !self.status.ready() {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("mtdgate not ready within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Instant::now())
    }

    /// Stops cleanly (commits the open transaction, leaves the group).
    pub fn stop(self) -> anyhow::Result<()> {
        self.worker.stop()
    }
}

/// Watches the committed offsets of a consumer group without joining it.
pub struct CommitWatcher {
    consumer: BaseConsumer,
    tpl: TopicPartitionList,
    ends: Vec<(i32, i64)>,
}

impl CommitWatcher {
    pub fn new(env: &BenchEnv, group: &str, topic: &str) -> anyhow::Result<Self> {
        let ends = env.end_offsets(topic)?;
        // read_uncommitted: the offset fetch then returns at once, pending transactional
        // offsets not included (they count once their transaction committed).
        let consumer: BaseConsumer = env
            .client()
            .set("group.id", group)
            .set("isolation.level", "read_uncommitted")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, _) in &ends {
            tpl.add_partition(topic, *p);
        }
        Ok(CommitWatcher {
            consumer,
            tpl,
            ends,
        })
    }

    /// Records the group has committed so far.
    pub fn committed(&self) -> anyhow::Result<i64> {
        let got = self
            .consumer
            .committed_offsets(self.tpl.clone(), Duration::from_secs(10))?;
        let mut n = 0;
        for e in got.elements() {
            if let Offset::Offset(o) = e.offset() {
                n += o;
            }
        }
        Ok(n)
    }

    /// Total records to commit.
    pub fn total(&self) -> i64 {
        self.ends.iter().map(|(_, h)| *h).sum()
    }

    /// Waits until every input record is committed; `alive` is checked between polls.
    pub fn wait_all(
        &self,
        timeout: Duration,
        mut alive: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let total = self.total();
        loop {
            if self.committed()? >= total {
                return Ok(Instant::now());
            }
            alive()?;
            if Instant::now() > deadline {
                bail!(
                    "only {} of {total} input records committed within {timeout:?}",
                    self.committed()?
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Reads from `consumer` until `n` records arrived, calling `f` on each; returns the instants
/// of the first and the last.
pub fn read_n(
    consumer: &BaseConsumer,
    n: usize,
    timeout: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<(Instant, Instant)> {
    let deadline = Instant::now() + timeout;
    let mut got = 0usize;
    let mut first = None;
    while got < n {
        if Instant::now() > deadline {
            bail!("read {got} of {n} records within {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                got += 1;
                f(&m);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "benchmark reader"),
            None => {}
        }
    }
    let last = Instant::now();
    Ok((first.unwrap_or(last), last))
}

/// Polls `consumer` for `d` before a measurement, so its fetch positions are resolved and its
/// fetch loop is running when the first measured record arrives; returns records received.
pub fn warm(consumer: &BaseConsumer, d: Duration) -> usize {
    let deadline = Instant::now() + d;
    let mut n = 0;
    while Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(20)) {
            n += 1;
        }
    }
    n
}
