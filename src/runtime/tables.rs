//! The global tables: connector settings, policies and heartbeats, read in full by every
//! instance (no consumer group) before device traffic, then followed live.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

use super::kafka::{consumer_config, EofAware};

/// Reads the table topics from the beginning.
pub struct TableReader {
    consumer: BaseConsumer<EofAware>,
    partitions: usize,
}

type Handler<'a> =
    dyn FnMut(&str, i32, i64, Option<&[u8]>, Option<&[u8]>) -> anyhow::Result<()> + 'a;

impl TableReader {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let mut c = consumer_config(cfg);
        c.set(
            "group.id",
            format!("{}-tables-{}", cfg.kafka.group_id, cfg.kafka.instance_id),
        )
        .set("enable.partition.eof", "true");
        let consumer: BaseConsumer<EofAware> = c
            .create_with_context(EofAware)
            .context("create table consumer")?;
        let topics = [
            &cfg.topics.connectors,
            &cfg.topics.policies,
            &cfg.topics.connector_heartbeats,
        ];
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("cannot reach Kafka at {}", cfg.kafka.bootstrap_servers))?;
        let mut tpl = TopicPartitionList::new();
        for t in topics {
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
            partitions: tpl.count(),
            consumer,
        })
    }

    /// Reads every table record up to the end of each partition; returns how many.
    pub fn bootstrap(
        &mut self,
        mut f: impl FnMut(&str, i32, i64, Option<&[u8]>, Option<&[u8]>) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let mut at_end: HashSet<(String, i32)> = HashSet::new();
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(300);
        while at_end.len() < self.partitions {
            if Instant::now() > deadline {
                anyhow::bail!("tables did not load within 300 s");
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    f(m.topic(), m.partition(), m.offset(), m.key(), m.payload())?;
                    n += 1;
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // The EOF event names the partition only; count distinct (topic, partition)
                    // via the assignment positions.
                    let _ = p;
                    at_end = self.positions_at_end()?;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "table consumer error"),
                None => {
                    at_end = self.positions_at_end()?;
                }
            }
        }
        Ok(n)
    }

    /// Partitions whose position has reached the high watermark.
    fn positions_at_end(&self) -> anyhow::Result<HashSet<(String, i32)>> {
        let pos = self.consumer.position()?;
        let mut done = HashSet::new();
        for e in pos.elements() {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            if high <= low || at >= high {
                done.insert((e.topic().to_owned(), e.partition()));
            }
        }
        Ok(done)
    }

    /// Applies whatever table records have arrived, without waiting.
    pub fn poll_live(&mut self, f: &mut Handler<'_>) -> anyhow::Result<()> {
        for _ in 0..1000 {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => f(m.topic(), m.partition(), m.offset(), m.key(), m.payload())?,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "table consumer error"),
                None => break,
            }
        }
        Ok(())
    }
}
