//! The delivery guarantee and the producer it drives. Exactly once: every commit is one Kafka
//! transaction holding the outputs, the changelog records and the input offsets with the
//! group metadata (KIP-447). At least once: outputs are flushed, then the consumer commits the
//! offsets, so a crash in between publishes some outputs again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::warn;

use crate::config::Config;
use crate::runtime::kafka::{await_deliveries, producer_config, send_waiting};
use crate::telemetry;

/// How long a transaction step or a flush may take before the pipeline gives up.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The delivery guarantee, as one type: what `send` and `commit` do follows from it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// Outputs, changelog and offsets in one transaction; `open` once one is begun.
    ExactlyOnce { open: bool },
    /// Outputs flushed before the consumer commits the offsets.
    AtLeastOnce,
}

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

/// The producer of every output and changelog record, under one delivery guarantee.
pub struct Sink {
    producer: BaseProducer<DeliveryCounter>,
    guarantee: DeliveryGuarantee,
    watchdog: Arc<Watchdog>,
}

/// Ends the process when a transaction step outlives every timeout given to it.
///
/// librdkafka 2.12's `send_offsets_to_transaction` can wait forever after the broker fenced
/// or lost the transaction coordinator, ignoring its timeout (librdkafka issues #5456 and
/// #5511; seen in `scripts/soak` under heavy load). The pipeline cannot be rebuilt from inside
/// that call, and an instance stuck in it holds its partitions until `max.poll.interval.ms`
/// and ignores SIGTERM. Exiting is safe (the open transaction is aborted by the broker, the
/// next run restores from committed state) and lets the orchestrator restart it.
struct Watchdog {
    /// When the running step began (ms since the Unix epoch), 0 when none runs.
    since_ms: AtomicU64,
}

/// How long a transaction step may take before the process exits: well past [`TXN_TIMEOUT`].
const STUCK_AFTER: Duration = Duration::from_secs(120);
/// Exit code of a process ended by the watchdog (EX_SOFTWARE).
const STUCK_EXIT_CODE: i32 = 70;

impl Watchdog {
    fn start() -> Arc<Watchdog> {
        let w = Arc::new(Watchdog {
            since_ms: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&w);
        std::thread::Builder::new()
            .name("txn-watchdog".into())
            .spawn(move || {
                while let Some(w) = weak.upgrade() {
                    let since = w.since_ms.load(Ordering::Relaxed);
                    if since != 0 && now_ms().saturating_sub(since) > STUCK_AFTER.as_millis() as u64
                    {
                        tracing::error!(
                            seconds = STUCK_AFTER.as_secs(),
                            "a Kafka transaction step has not returned (librdkafka ignored its \
                             timeout); exiting so the instance restarts from committed state"
                        );
                        std::process::exit(STUCK_EXIT_CODE);
                    }
                    drop(w);
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .ok();
        w
    }

    fn arm(&self) {
        self.since_ms.store(now_ms().max(1), Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.since_ms.store(0, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Sink {
    /// Creates the producer; exactly once, it is transactional as `{prefix}-{instance}` and
    /// fences any earlier producer of that id.
    pub fn create(cfg: &Config) -> anyhow::Result<Sink> {
        let exactly_once = cfg.processing.exactly_once;
        let txn_id = format!(
            "{}-{}",
            cfg.kafka.transactional_id_prefix, cfg.kafka.instance_id
        );
        let producer: BaseProducer<DeliveryCounter> =
            producer_config(cfg, exactly_once.then_some(txn_id.as_str()))
                .create_with_context(DeliveryCounter::default())
                .context("create producer")?;
        let guarantee = if exactly_once {
            producer
                .init_transactions(Duration::from_secs(60))
                .context(
                    "init transactions (is the broker reachable and does it allow transactions?)",
                )?;
            DeliveryGuarantee::ExactlyOnce { open: false }
        } else {
            DeliveryGuarantee::AtLeastOnce
        };
        Ok(Sink {
            producer,
            guarantee,
            watchdog: Watchdog::start(),
        })
    }

    /// Whether a commit now has anything to finish besides offsets.
    pub fn has_open_transaction(&self) -> bool {
        self.guarantee == DeliveryGuarantee::ExactlyOnce { open: true }
    }

    /// Produces one record (a tombstone without `payload`), waiting while the producer's
    /// queue is full; exactly once, into the open transaction, begun if there is none.
    pub fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        self.begin()?;
        let mut record = BaseRecord::<[u8], [u8], ()>::to(topic).key(key);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        send_waiting(&self.producer, record)
    }

    /// Produces a record forwarded to partition `partition` of `topic` with its headers and
    /// timestamp, into the open transaction (begun if there is none).
    pub fn forward(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        timestamp: Option<i64>,
    ) -> anyhow::Result<()> {
        self.begin()?;
        let mut record = BaseRecord::<[u8], [u8], ()>::to(topic)
            .key(key)
            .partition(partition)
            .headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        send_waiting(&self.producer, record)
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        if let DeliveryGuarantee::ExactlyOnce { open: open @ false } = &mut self.guarantee {
            self.producer
                .begin_transaction()
                .context("begin transaction")?;
            *open = true;
        }
        Ok(())
    }

    /// Serves delivery reports without waiting.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Makes everything sent so far durable together with the input `offsets`.
    pub fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
    ) -> anyhow::Result<()> {
        // Serve delivery reports here: rdkafka's own flush (called inside
        // `commit_transaction`) polls in 100 ms steps and would stall the loop that long.
        await_deliveries(&self.producer, TXN_TIMEOUT).context("outputs not delivered")?;
        match self.guarantee {
            DeliveryGuarantee::ExactlyOnce { open } => {
                if !open && offsets.count() == 0 {
                    return Ok(());
                }
                self.begin()?;
                if offsets.count() > 0 {
                    let meta = consumer
                        .group_metadata()
                        .ok_or_else(|| anyhow!("no consumer group metadata"))?;
                    self.watchdog.arm();
                    let sent =
                        self.producer
                            .send_offsets_to_transaction(offsets, &meta, TXN_TIMEOUT);
                    self.watchdog.disarm();
                    sent.context("send offsets to transaction")?;
                }
                let started = Instant::now();
                self.watchdog.arm();
                let committed = self.producer.commit_transaction(TXN_TIMEOUT);
                self.watchdog.disarm();
                self.guarantee = DeliveryGuarantee::ExactlyOnce { open: false };
                if let Err(e) = committed {
                    telemetry::transaction_aborted();
                    let _ = self.producer.abort_transaction(TXN_TIMEOUT);
                    return Err(anyhow!(e).context("commit transaction"));
                }
                telemetry::transaction_committed(started.elapsed());
            }
            DeliveryGuarantee::AtLeastOnce => {
                self.producer.flush(TXN_TIMEOUT).context("flush outputs")?;
                if self.producer.context().failed.load(Ordering::Relaxed) > 0 {
                    return Err(anyhow!(
                        "an output could not be delivered; resuming from the last committed offsets"
                    ));
                }
                if offsets.count() > 0 {
                    consumer
                        .commit(offsets, CommitMode::Sync)
                        .context("commit offsets")?;
                }
            }
        }
        Ok(())
    }
}
