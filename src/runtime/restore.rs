//! Restores one partition's device state from the compacted changelog topic.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec;
use crate::config::Config;
use crate::engine::Engine;
use crate::model::DeviceStateRecord;

use super::kafka::{consumer_config, EofAware};

/// Reads changelog partition `partition` to its end into the engine; returns records read.
pub fn restore_partition(
    cfg: &Config,
    engine: &mut Engine,
    partition: i32,
) -> anyhow::Result<usize> {
    let topic = &cfg.topics.device_state;
    let mut c = consumer_config(cfg);
    c.set(
        "group.id",
        format!("{}-restore-{}", cfg.kafka.group_id, cfg.kafka.instance_id),
    )
    .set("enable.partition.eof", "true")
    .set("fetch.max.bytes", "104857600")
    .set("max.partition.fetch.bytes", "52428800");
    let consumer: BaseConsumer<EofAware> = c
        .create_with_context(EofAware)
        .context("create restore consumer")?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .with_context(|| format!("watermarks of {topic}[{partition}]"))?;
    if high <= low {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if Instant::now() > deadline {
            anyhow::bail!("restoring {topic}[{partition}] did not finish within 600 s");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                n += 1;
                let key = std::str::from_utf8(m.key().unwrap_or_default()).unwrap_or_default();
                let record = match m.payload() {
                    None => None,
                    Some(b) => Some(codec::decode::<DeviceStateRecord>(b).with_context(|| {
                        format!(
                            "changelog {topic}[{partition}]@{} is not a device state record",
                            m.offset()
                        )
                    })?),
                };
                engine.restore(partition, key, record.as_ref())?;
                if m.offset() + 1 >= high {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e).context("restore consumer"),
            None => {
                // Transaction markers may end the log: stop once the position reaches the end.
                if let Ok(pos) = consumer.position() {
                    if let Some(Offset::Offset(o)) = pos.elements().first().map(|e| e.offset()) {
                        if o >= high {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(n)
}
