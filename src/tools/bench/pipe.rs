//! The baseline: a plain librdkafka consume-and-produce pipe.
//!
//! It is mtdgate's loop with the work taken out: the same consumer settings (a consumer group,
//! read_committed, the same prefetch bounds, the range assignor), the same producer settings
//! (`runtime::kafka::producer_config`: linger, batch size, lz4, idempotence), the same polls (the
//! first record waited for, then whatever is already fetched, up to
//! `runtime::pipeline::POLL_BATCH`), sends pipelined (delivery reports served without waiting,
//! awaited only before a commit), and the same commits (`runtime::commit_policy`): with
//! exactly-once a transaction holding the copies and the input offsets
//! (`send_offsets_to_transaction`) when the input drains, or every 100 ms or 10,000 records
//! under load; without, flush then a synchronous offset commit. Each input record is copied to
//! the output topic unchanged (same key, same payload).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use mtdgate::config::Config;
use mtdgate::runtime::commit_policy::CommitPolicy;
use mtdgate::runtime::kafka::{await_deliveries, consumer_config, producer_config};
use mtdgate::runtime::pipeline::POLL_BATCH;

use super::kafka::Worker;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the pipe reads and writes.
#[derive(Debug, Clone)]
pub struct PipeOptions {
    /// Client settings, group id, transactional id prefix, commit interval and batch size are
    /// taken from here, as mtdgate takes them.
    pub config: Config,
    pub input: String,
    pub output: String,
    /// Serve delivery reports until nothing is in flight before committing, instead of
    /// leaving it to `commit_transaction`/`flush`: rust-rdkafka 0.39's `BaseProducer::flush`
    /// (which `commit_transaction` calls first) polls in 100 ms steps and `poll` always waits
    /// its whole timeout, so every commit with a record in flight costs at least 100 ms.
    /// `false` makes the same calls mtdgate's loop makes today.
    pub drain: bool,
}

/// Records the moment partitions were first assigned.
struct PipeContext {
    assigned: Arc<OnceLock<Instant>>,
}

impl ClientContext for PipeContext {}
impl ConsumerContext for PipeContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            let _ = self.assigned.set(Instant::now());
        }
    }
}

/// Runs the pipe until `stop`; sets `assigned` when the group assigned its partitions and
/// counts copied records in `copied`.
pub fn run_pipe(
    opts: &PipeOptions,
    stop: Arc<AtomicBool>,
    assigned: Arc<OnceLock<Instant>>,
    copied: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let cfg = &opts.config;
    let eos = cfg.processing.exactly_once;
    let txn_id = format!(
        "{}-{}",
        cfg.kafka.transactional_id_prefix, cfg.kafka.instance_id
    );
    let producer: BaseProducer = producer_config(cfg, eos.then_some(txn_id.as_str()))
        .create()
        .context("create pipe producer")?;
    if eos {
        producer
            .init_transactions(Duration::from_secs(60))
            .context("init transactions")?;
    }
    let consumer: BaseConsumer<PipeContext> = {
        let mut c = consumer_config(cfg);
        c.set("group.id", &cfg.kafka.group_id)
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "10000");
        c.create_with_context(PipeContext { assigned })
            .context("create pipe consumer")?
    };
    consumer.subscribe(&[opts.input.as_str()])?;

    let mut policy = CommitPolicy::new(&cfg.processing, Instant::now());
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    let mut pending = 0usize;
    let mut txn_open = false;
    let output = opts.output.as_str();
    let commit = |offsets: &HashMap<i32, i64>, txn_open: &mut bool| -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&opts.input, *p, Offset::Offset(*o))?;
        }
        if eos {
            if !*txn_open {
                return Ok(());
            }
            let meta = consumer
                .group_metadata()
                .ok_or_else(|| anyhow!("no consumer group metadata"))?;
            if opts.drain {
                await_deliveries(&producer, TXN_TIMEOUT)?;
            }
            producer
                .send_offsets_to_transaction(&tpl, &meta, TXN_TIMEOUT)
                .context("send offsets to transaction")?;
            producer
                .commit_transaction(TXN_TIMEOUT)
                .context("commit transaction")?;
            *txn_open = false;
        } else {
            if opts.drain {
                await_deliveries(&producer, TXN_TIMEOUT)?;
            } else {
                producer.flush(TXN_TIMEOUT).context("flush")?;
            }
            if tpl.count() > 0 {
                consumer
                    .commit(&tpl, CommitMode::Sync)
                    .context("commit offsets")?;
            }
        }
        Ok(())
    };
    while !stop.load(Ordering::Relaxed) {
        let mut polled = consumer.poll(Duration::from_millis(20));
        let mut taken = 0;
        let drained = loop {
            match polled {
                Some(Ok(m)) => {
                    if eos && !txn_open {
                        producer.begin_transaction().context("begin transaction")?;
                        txn_open = true;
                    }
                    let mut r = BaseRecord::<[u8], [u8]>::to(output);
                    if let Some(k) = m.key() {
                        r = r.key(k);
                    }
                    if let Some(p) = m.payload() {
                        r = r.payload(p);
                    }
                    crate::tools::send(&producer, r)?;
                    offsets.insert(m.partition(), m.offset() + 1);
                    pending += 1;
                    taken += 1;
                    copied.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pipe consumer error");
                    break true;
                }
                None => break true,
            }
            if taken == POLL_BATCH {
                break false;
            }
            polled = consumer.poll(Duration::ZERO);
        };
        let uncommitted = pending > 0 || txn_open;
        if policy
            .due(Instant::now(), pending, uncommitted, drained)
            .is_some()
        {
            commit(&offsets, &mut txn_open)?;
            pending = 0;
            policy.committed(Instant::now());
        }
        producer.poll(Duration::ZERO);
    }
    commit(&offsets, &mut txn_open)?;
    consumer.unsubscribe();
    Ok(())
}

/// The pipe running in a background thread.
pub struct PipeThread {
    pub assigned: Arc<OnceLock<Instant>>,
    pub copied: Arc<AtomicU64>,
    worker: Worker,
}

impl PipeThread {
    pub fn start(opts: PipeOptions) -> PipeThread {
        let assigned = Arc::new(OnceLock::new());
        let copied = Arc::new(AtomicU64::new(0));
        let (a, c) = (assigned.clone(), copied.clone());
        let worker = Worker::spawn("pipe", "pipe", move |stop| run_pipe(&opts, stop, a, c));
        PipeThread {
            assigned,
            copied,
            worker,
        }
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.worker.check_alive()
    }

    /// Waits for the group's first assignment; returns when it happened.
    pub fn wait_assigned(&mut self, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.assigned.get() {
                return Ok(*t);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                anyhow::bail!("pipe not assigned within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn stop(self) -> anyhow::Result<()> {
        self.worker.stop()
    }
}
