//! Kafka clients built from the configuration, and admin helpers: topic creation and the
//! start-up checks (broker reachable, topics present, device topics co-partitioned).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::catalogue::Catalogue;
use crate::config::Config;

/// What went wrong talking to Kafka, said so an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot reach Kafka at {servers}: {error} (is the broker running and kafka.bootstrap_servers right?)")]
    Unreachable { servers: String, error: KafkaError },
    #[error("Kafka at {servers} refused this client: {reason} (check the security settings in kafka.properties: security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.*)")]
    Refused { servers: String, reason: String },
    #[error("topic {0} is missing; create the topics with `mtdgate topics create` or set topics.create = true")]
    MissingTopic(String),
    #[error("topics keyed by device must have the same partition count: {0}")]
    NotCoPartitioned(String),
    #[error("topic {0} must be compacted (cleanup.policy=compact): it holds the latest heartbeat of every connector")]
    NotCompacted(String),
    #[error("creating topic {topic}: {reason}")]
    Create { topic: String, reason: String },
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
}

/// Base settings shared by every client.
pub fn base_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap_servers);
    c.set("client.id", format!("mtdgate-{}", cfg.kafka.instance_id));
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Settings for consumers (read_committed, manual commits).
pub fn consumer_config(cfg: &Config) -> ClientConfig {
    let mut c = base_config(cfg);
    // Bounded prefetch: a burst waits in Kafka, not in memory.
    c.set("isolation.level", "read_committed")
        .set("queued.max.messages.kbytes", "16384")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &cfg.kafka.consumer {
        c.set(k, v);
    }
    c
}

/// Settings for the output producer.
pub fn producer_config(cfg: &Config, transactional_id: Option<&str>) -> ClientConfig {
    let mut c = base_config(cfg);
    c.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "131072")
        .set("transaction.timeout.ms", "60000");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id);
    }
    for (k, v) in &cfg.kafka.producer {
        c.set(k, v);
    }
    c
}

/// Every topic mtdgate reads or writes, with whether it is compacted.
pub fn all_topics(cfg: &Config, catalogue: &Catalogue) -> Vec<(String, bool)> {
    let t = &cfg.topics;
    let partners: Vec<&str> = catalogue.partners().iter().map(|p| p.id.as_str()).collect();
    let mut v: Vec<(String, bool)> = Vec::new();
    for (topic, _) in cfg.threat_topics(&partners) {
        v.push((topic, false));
    }
    for (topic, _) in cfg.heartbeat_topics(&partners) {
        v.push((topic, false));
    }
    v.extend([
        (t.connectors.clone(), true),
        (t.policies.clone(), true),
        (t.group_memberships.clone(), true),
        (t.tenant_settings.clone(), true),
        (t.device_enrollments.clone(), true),
        (t.app_inventory.clone(), false),
        (t.compliance_changes.clone(), false),
        (t.app_protection_actions.clone(), false),
        (t.connector_status.clone(), false),
        (t.rejected.clone(), false),
        (t.device_state.clone(), true),
        (t.repartition.clone(), false),
        (t.heartbeats_latest.clone(), true),
    ]);
    if cfg.processing.snapshots {
        v.push((t.device_state_snapshots.clone(), true));
    }
    for p in &partners {
        v.push((cfg.partner_topic(p), false));
    }
    v
}

/// The topics whose partitions own devices; they must be co-partitioned.
pub fn device_topics(cfg: &Config, catalogue: &Catalogue) -> Vec<String> {
    let partners: Vec<&str> = catalogue.partners().iter().map(|p| p.id.as_str()).collect();
    let mut v: Vec<String> = cfg
        .threat_topics(&partners)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    v.extend([
        cfg.topics.device_enrollments.clone(),
        cfg.topics.app_inventory.clone(),
        cfg.topics.device_state.clone(),
        cfg.topics.repartition.clone(),
    ]);
    if cfg.processing.snapshots {
        v.push(cfg.topics.device_state_snapshots.clone());
    }
    v
}

/// Remembers the last authentication or TLS failure librdkafka reported, so a start-up check
/// that times out can say the broker refused the client rather than that it is unreachable.
#[derive(Default)]
pub struct SecurityFailure(Mutex<Option<String>>);

impl SecurityFailure {
    fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl ClientContext for SecurityFailure {
    // Connection failures of the probe are logged by librdkafka too; the caller's one message
    // says what failed, so they are detail here.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(?level, fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let security = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SSL
                    | RDKafkaErrorCode::SaslAuthenticationFailed
            )
        );
        if security {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        }
        // Only the start-up probe has this context, and its failure is reported once, with
        // the reason, by the caller: each connection attempt is detail.
        tracing::debug!("librdkafka: {error}: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for SecurityFailure {}

/// Partition counts of the named topics, or a clear error when the broker is unreachable or
/// refuses the client's credentials.
pub fn partition_counts(cfg: &Config) -> Result<HashMap<String, i32>, KafkaSetupError> {
    let consumer: BaseConsumer<SecurityFailure> =
        base_config(cfg).create_with_context(SecurityFailure::default())?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|error| {
            // librdkafka reports authentication and TLS failures as events, served by polls.
            for _ in 0..5 {
                let _ = consumer.poll(Duration::from_millis(20));
            }
            match consumer.context().take() {
                Some(reason) => KafkaSetupError::Refused {
                    servers: cfg.kafka.bootstrap_servers.clone(),
                    reason,
                },
                None => KafkaSetupError::Unreachable {
                    servers: cfg.kafka.bootstrap_servers.clone(),
                    error,
                },
            }
        })?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

/// Checks that every topic exists and the device topics are co-partitioned; returns the device
/// partition count.
pub fn verify_topics(cfg: &Config, catalogue: &Catalogue) -> Result<i32, KafkaSetupError> {
    let counts = partition_counts(cfg)?;
    for (topic, _) in all_topics(cfg, catalogue) {
        if !counts.contains_key(&topic) {
            return Err(KafkaSetupError::MissingTopic(topic));
        }
    }
    let dev: Vec<(String, i32)> = device_topics(cfg, catalogue)
        .into_iter()
        .map(|t| {
            let n = counts[&t];
            (t, n)
        })
        .collect();
    if dev.iter().any(|(_, n)| *n != dev[0].1) {
        let list = dev
            .iter()
            .map(|(t, n)| format!("{t}={n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(KafkaSetupError::NotCoPartitioned(list));
    }
    // With delete retention the heartbeat view could lose a silent connector's record while
    // keeping a later checkpoint. Checked when the broker answers DescribeConfigs.
    // Snapshots are overwritten chunk by chunk; with delete retention old chunks would expire.
    let mut compacted = vec![&cfg.topics.heartbeats_latest];
    if cfg.processing.snapshots {
        compacted.push(&cfg.topics.device_state_snapshots);
    }
    for view in compacted {
        if let Some(policy) = cleanup_policy(cfg, view) {
            if !policy.split(',').any(|p| p.trim() == "compact") {
                return Err(KafkaSetupError::NotCompacted(view.clone()));
            }
        }
    }
    Ok(dev[0].1)
}

/// A topic's `cleanup.policy`, or `None` when the broker does not say (no DescribeConfigs
/// permission, a mock cluster).
fn cleanup_policy(cfg: &Config, topic: &str) -> Option<String> {
    // Its own thread and runtime: callers may already be inside one.
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let admin: AdminClient<DefaultClientContext> = base_config(cfg).create().ok()?;
            let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
            let got = rt
                .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts))
                .map_err(|e| tracing::debug!(error = %e, topic, "describe topic config"))
                .ok()?;
            let resource = got.into_iter().next()?.ok()?;
            resource.get("cleanup.policy")?.value.clone()
        })
        .join()
        .ok()
        .flatten()
    })
}

/// `segment.ms` of the heartbeat view topic (10 minutes).
const VIEW_SEGMENT_MS: &str = "600000";

/// Creates every missing topic (device topics with `topics.partitions`, tables compacted).
pub async fn create_topics(
    cfg: &Config,
    catalogue: &Catalogue,
) -> Result<Vec<String>, KafkaSetupError> {
    let existing = partition_counts(cfg)?;
    let admin: AdminClient<DefaultClientContext> = base_config(cfg).create()?;
    let wanted: Vec<(String, bool)> = all_topics(cfg, catalogue)
        .into_iter()
        .filter(|(t, _)| !existing.contains_key(t))
        .collect();
    let new: Vec<NewTopic> = wanted
        .iter()
        .map(|(name, compacted)| {
            let t = NewTopic::new(
                name,
                cfg.topics.partitions,
                TopicReplication::Fixed(cfg.topics.replication_factor),
            );
            match *compacted {
                // The heartbeat view is rewritten in full every few minutes: short segments
                // let the cleaner keep it near one record per connector.
                // So are snapshots, chunk by chunk.
                true if *name == cfg.topics.heartbeats_latest
                    || *name == cfg.topics.device_state_snapshots =>
                {
                    t.set("cleanup.policy", "compact")
                        .set("segment.ms", VIEW_SEGMENT_MS)
                }
                true => t.set("cleanup.policy", "compact"),
                false => t,
            }
        })
        .collect();
    if new.is_empty() {
        return Ok(vec![]);
    }
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(t) => created.push(t),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::Create {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

/// Client context for readers that ask for end-of-partition events: those are expected, not
/// errors worth a log line.
#[derive(Default)]
pub struct EofAware;

impl rdkafka::ClientContext for EofAware {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || matches!(&error, KafkaError::Global(c) if *c == RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(error = %error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofAware {}

/// Serves delivery reports until nothing is in flight, sleeping 200 us between zero-timeout
/// polls; fails after `timeout`. Not `poll(Duration::from_millis(1))`: rust-rdkafka turns the
/// sub-millisecond rest of a deadline into a 0 ms librdkafka timeout and loops until the
/// deadline, so that call spins for its whole millisecond, taking a core from the broker.
pub fn await_deliveries<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // One zero-timeout poll serves one event: repeat at once while that helps.
        let before = producer.in_flight_count();
        producer.poll(Duration::ZERO);
        let left = producer.in_flight_count();
        if left == 0 {
            return Ok(());
        }
        if left < before {
            continue;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} records not delivered within {timeout:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Hands `record` to `producer`, serving delivery reports while its queue is full: a full
/// queue is back-pressure, not an error.
pub fn send_waiting<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> anyhow::Result<()>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let topic = record.topic;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => {
                return Err(anyhow::Error::new(e).context(format!("produce to {topic}")));
            }
        }
    }
}
