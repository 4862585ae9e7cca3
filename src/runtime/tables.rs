//! The global tables: connector settings, policies, group memberships, tenant settings and
//! heartbeats, read in full by every instance (no consumer group) before device traffic, then followed live.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use std::sync::Arc;

use crate::config::Config;

use super::kafka::{consumer_config, EofAware};
use super::schemas::{RegistryWait, Schemas};

/// Reads the table topics from the beginning.
pub struct TableReader {
    consumer: BaseConsumer<EofAware>,
    schemas: Arc<Schemas>,
    /// Set when a record waits for the schema registry: the reader was rewound to it and
    /// reads no table record before this instant (table records are applied in order).
    waiting_until: Option<Instant>,
}

/// What a handler's result means for the reader.
enum Step {
    Next,
    /// Rewound to this record; try again at the instant.
    Wait(Instant),
}

type Handler<'a> =
    dyn FnMut(&str, i32, i64, Option<&[u8]>, Option<&[u8]>) -> anyhow::Result<()> + 'a;

impl TableReader {
    pub fn new(cfg: &Config, partners: &[&str], schemas: Arc<Schemas>) -> anyhow::Result<Self> {
        let mut c = consumer_config(cfg);
        c.set(
            "group.id",
            format!("{}-tables-{}", cfg.kafka.group_id, cfg.kafka.instance_id),
        )
        .set("enable.partition.eof", "true");
        let consumer: BaseConsumer<EofAware> = c
            .create_with_context(EofAware)
            .context("create table consumer")?;
        // The status topic is followed too, to know what was last published per connector.
        let mut topics: Vec<String> = vec![
            cfg.topics.connectors.clone(),
            cfg.topics.policies.clone(),
            cfg.topics.group_memberships.clone(),
            cfg.topics.tenant_settings.clone(),
            cfg.topics.connector_status.clone(),
        ];
        topics.extend(cfg.heartbeat_topics(partners).into_iter().map(|(t, _)| t));
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("cannot reach Kafka at {}", cfg.kafka.bootstrap_servers))?;
        let mut tpl = TopicPartitionList::new();
        for t in &topics {
            let topic = md
                .topics()
                .iter()
                .find(|m| m.name() == t.as_str() && m.error().is_none())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "topic {t} is missing; create the topics with `mtdgate topics create`"
                    )
                })?;
            for p in topic.partitions() {
                tpl.add_partition_offset(t, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl).context("assign table partitions")?;
        Ok(TableReader {
            consumer,
            schemas,
            waiting_until: None,
        })
    }

    /// Rewinds to a record whose decoding waits for the registry; other errors pass.
    fn step(
        &self,
        result: anyhow::Result<()>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<Step> {
        match result {
            Ok(()) => Ok(Step::Next),
            Err(e) if e.downcast_ref::<RegistryWait>().is_some() => {
                self.consumer
                    .seek(
                        topic,
                        partition,
                        Offset::Offset(offset),
                        Duration::from_secs(5),
                    )
                    .with_context(|| format!("rewind table {topic}/{partition} to {offset}"))?;
                Ok(Step::Wait(self.schemas.retry_at()))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads every table record up to the end each partition had when the call started;
    /// returns how many.
    pub fn bootstrap(
        &mut self,
        mut f: impl FnMut(&str, i32, i64, Option<&[u8]>, Option<&[u8]>) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        // Snapshot the end of every partition once; what arrives later is live traffic.
        let mut pending: HashMap<(String, i32), i64> = HashMap::new();
        // Two batched ListOffsets requests (earliest, latest) instead of one per partition.
        let ends = |at: Offset| -> anyhow::Result<HashMap<(String, i32), i64>> {
            let mut tpl = TopicPartitionList::new();
            for e in self.consumer.assignment()?.elements() {
                tpl.add_partition_offset(e.topic(), e.partition(), at)?;
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
                        tracing::debug!(error = %e, "listing table offsets, retrying");
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => return Err(e).context("list table offsets"),
                }
            };
            Ok(got
                .elements()
                .iter()
                .map(|e| {
                    let o = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    ((e.topic().to_owned(), e.partition()), o)
                })
                .collect())
        };
        let lows = ends(Offset::Beginning)?;
        for (tp, high) in ends(Offset::End)? {
            if high > lows.get(&tp).copied().unwrap_or(0) {
                pending.insert(tp, high);
            }
        }
        let mut n = 0;
        // Time spent waiting for the schema registry does not count against the limit.
        let mut deadline = Instant::now() + Duration::from_secs(300);
        while !pending.is_empty() {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "tables did not load within 300 s; still reading {:?}",
                    pending.keys().collect::<Vec<_>>()
                );
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let r = f(m.topic(), m.partition(), m.offset(), m.key(), m.payload());
                    if let Step::Wait(at) = self.step(r, m.topic(), m.partition(), m.offset())? {
                        let wait = at.saturating_duration_since(Instant::now());
                        std::thread::sleep(wait.max(Duration::from_millis(50)));
                        deadline += wait;
                        continue;
                    }
                    n += 1;
                    let key = (m.topic().to_owned(), m.partition());
                    if pending
                        .get(&key)
                        .is_some_and(|&high| m.offset() + 1 >= high)
                    {
                        pending.remove(&key);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // Transaction markers can end a partition: trust the fetch position too.
                    for e in self.consumer.position()?.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            let key = (e.topic().to_owned(), e.partition());
                            if pending.get(&key).is_some_and(|&high| o >= high) {
                                pending.remove(&key);
                            }
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "table consumer error"),
            }
        }
        Ok(n)
    }

    /// Applies whatever table records have arrived, without waiting (nor while a record
    /// waits for the schema registry).
    pub fn poll_live(&mut self, f: &mut Handler<'_>) -> anyhow::Result<()> {
        if let Some(at) = self.waiting_until {
            if Instant::now() < at {
                return Ok(());
            }
            self.waiting_until = None;
        }
        for _ in 0..1000 {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    let r = f(m.topic(), m.partition(), m.offset(), m.key(), m.payload());
                    if let Step::Wait(at) = self.step(r, m.topic(), m.partition(), m.offset())? {
                        self.waiting_until = Some(at);
                        return Ok(());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "table consumer error"),
                None => break,
            }
        }
        Ok(())
    }
}
