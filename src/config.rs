//! Configuration: a TOML file, then environment overrides (`MTDGATE_SECTION__KEY=value`, e.g.
//! `MTDGATE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`), with defaults that work against a local broker.
//! Only `MTDGATE_<SECTION>__<KEY>` names are configuration: a variable whose name after
//! `MTDGATE_` contains `__` and begins with a section of [`Config`] (`kafka`, `topics`,
//! `processing`, `http`, `schema_registry`, in any case; see [`sections`]). Those are checked
//! strictly: a key the section lacks is an error naming the variable, so a mistyped override never
//! goes unnoticed. Any other `MTDGATE_*` variable (`MTDGATE_SRC` in a user's shell,
//! `MTDGATE_LOG_FORMAT`, which the logging set-up reads, `MTDGATE_BENCH_CLOCK`) is not
//! configuration and is ignored here.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::codec::OutputEncoding;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub processing: ProcessingConfig,
    pub http: HttpConfig,
    pub schema_registry: SchemaRegistryConfig,
}

/// How to reach Kafka. `properties` passes any librdkafka setting (TLS, SASL, ...) to every
/// client; `consumer` and `producer` add settings for one kind of client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    /// Unique per instance and stable across its restarts (fences a zombie predecessor).
    pub instance_id: String,
    pub transactional_id_prefix: String,
    pub properties: BTreeMap<String, String>,
    pub consumer: BTreeMap<String, String>,
    pub producer: BTreeMap<String, String>,
}

/// Topic names and creation settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub device_threats: String,
    pub connector_heartbeats: String,
    pub connectors: String,
    pub policies: String,
    /// Compacted, key `tenant/user`: the groups of each user (contract 1.1).
    pub group_memberships: String,
    /// Compacted, key `tenant`: per-tenant settings (contract 1.1).
    pub tenant_settings: String,
    pub device_enrollments: String,
    pub app_inventory: String,
    pub compliance_changes: String,
    pub app_protection_actions: String,
    pub connector_status: String,
    /// Must contain `{partner}`.
    pub partner_app_inventory: String,
    pub rejected: String,
    /// The compacted per-device state changelog.
    pub device_state: String,
    /// Internal, compacted, co-partitioned with the changelog: partition snapshots of it
    /// (`processing.snapshots`), so a restore reads the latest one and the changelog after it.
    pub device_state_snapshots: String,
    /// Internal, co-partitioned with the device topics: device-keyed records that arrived in
    /// another partition than their key's murmur2 partition, forwarded to their owner.
    pub repartition: String,
    /// Internal, compacted, key `tenant/partner`: the latest heartbeat state of every connector
    /// with the heartbeat offsets it covers, so a start reads it instead of days of heartbeats.
    pub heartbeats_latest: String,
    /// Bind each partner to its own input topics (so Kafka ACLs authenticate the vendor):
    /// device threats and heartbeats are then read from the two topics below, and a record
    /// naming another partner than its topic's is rejected as `SPOOFED`.
    pub bind_partners: bool,
    /// Per-partner device threat topic; must contain `{partner}`.
    pub partner_device_threats: String,
    /// Per-partner heartbeat topic; must contain `{partner}`.
    pub partner_heartbeats: String,
    /// Partitions for topics created by `mtdgate topics create`.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Create missing topics at start.
    pub create: bool,
}

/// Processing settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingConfig {
    pub exactly_once: bool,
    /// Longest time a transaction stays open (the commit cadence under load).
    pub commit_interval_ms: u64,
    /// Most input records per transaction.
    pub max_batch: usize,
    /// Commit as soon as a poll drains the input, not only on the interval: latency is then
    /// about one commit at low rates (`runtime::commit_policy`).
    pub adaptive_commit: bool,
    /// Least time between two commits made because the input was drained.
    pub commit_min_gap_ms: u64,
    /// Write partition snapshots of the changelog (`runtime::snapshots`) and restore from them.
    pub snapshots: bool,
    /// Changelog records a partition must have written since its last snapshot for another
    /// (and at least as many as it holds devices).
    pub snapshot_min_records: u64,
    /// Least time between two snapshots of one partition.
    pub snapshot_min_interval_ms: u64,
    /// Threads restoring newly assigned partitions side by side, one partition each at a
    /// time; 0: one per core.
    pub restore_threads: usize,
    /// Changelog records a partition must have waiting at once (a fan-out, a reconcile, many
    /// deadlines) to be written as a few batch records instead of one record per device
    /// (`runtime::changelog_batches`); 0: never.
    pub changelog_batch_min: usize,
    /// Devices of written batches rewritten as their own changelog records per transaction,
    /// after the batch committed, until the batch can be deleted.
    pub changelog_settle_per_commit: usize,
    pub output_encoding: OutputEncoding,
    /// Deployment cloud: which partners the catalogue offers.
    pub cloud: String,
    /// A partner catalogue file replacing the built-in one.
    pub catalogue: Option<String>,
    pub max_clock_skew_ms: i64,
}

/// The HTTP listener for metrics, health and the explain API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// When set, the explain API requires `Authorization: Bearer <token>`.
    pub explain_token: Option<String>,
}

/// A Confluent-compatible schema registry (contract 1.1, "Schema registry"). With `url` set,
/// Confluent-framed inputs resolve their schema ids there (not from `schemas/ids.toml`), and
/// `avro-confluent` outputs carry the ids it gives under `<topic>-value`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent API, e.g. `http://registry:8080/apis/ccompat/v7` for
    /// Apicurio or `https://psrc-xxxx.confluent.cloud`; empty: no registry.
    pub url: String,
    /// HTTP basic auth (Confluent's `basic.auth.user.info`, split in two).
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA(s) that sign the registry's certificate (default: the system's).
    pub ca_location: Option<String>,
    /// PEM client certificate and key for mutual TLS.
    pub certificate_location: Option<String>,
    pub key_location: Option<String>,
    /// Writer schemas kept in memory, by id.
    pub cache_capacity: usize,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Longest wait between attempts while the registry cannot be reached.
    pub max_backoff_ms: u64,
    /// Register the output schemas at start (Confluent's `auto.register.schemas`); when off,
    /// they must already be registered and are only looked up.
    pub auto_register: bool,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: String::new(),
            username: None,
            password: None,
            ca_location: None,
            certificate_location: None,
            key_location: None,
            cache_capacity: 1000,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            max_backoff_ms: 10_000,
            auto_register: true,
        }
    }
}

impl SchemaRegistryConfig {
    /// Whether a registry is configured.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "mtdgate".into(),
            instance_id: gethostname::gethostname().to_string_lossy().into_owned(),
            transactional_id_prefix: "mtdgate".into(),
            properties: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

impl TopicsConfig {
    /// Every topic name (templates with `{partner}` included), to rename them all at once: tests
    /// and benchmarks give each run topics of its own, and a topic added here is renamed too.
    pub fn names_mut(&mut self) -> [&mut String; 19] {
        [
            &mut self.device_threats,
            &mut self.connector_heartbeats,
            &mut self.connectors,
            &mut self.policies,
            &mut self.group_memberships,
            &mut self.tenant_settings,
            &mut self.device_enrollments,
            &mut self.app_inventory,
            &mut self.compliance_changes,
            &mut self.app_protection_actions,
            &mut self.connector_status,
            &mut self.partner_app_inventory,
            &mut self.rejected,
            &mut self.device_state,
            &mut self.device_state_snapshots,
            &mut self.repartition,
            &mut self.heartbeats_latest,
            &mut self.partner_device_threats,
            &mut self.partner_heartbeats,
        ]
    }

    /// With `bind_partners`, `per_partner` for each partner (`{partner}` replaced), bound to it;
    /// otherwise the one `shared` topic, for any partner.
    fn bound(
        &self,
        partners: &[&str],
        per_partner: &str,
        shared: &str,
    ) -> Vec<(String, Option<String>)> {
        if self.bind_partners {
            partners
                .iter()
                .map(|p| (per_partner.replace("{partner}", p), Some((*p).to_owned())))
                .collect()
        } else {
            vec![(shared.to_owned(), None)]
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            device_threats: "mtd.device-threats.v1".into(),
            connector_heartbeats: "mtd.connector-heartbeats.v1".into(),
            connectors: "mtd.connectors.v1".into(),
            policies: "mtd.policies.v1".into(),
            group_memberships: "mtd.group-memberships.v1".into(),
            tenant_settings: "mtd.tenant-settings.v1".into(),
            device_enrollments: "mtd.device-enrollments.v1".into(),
            app_inventory: "mtd.app-inventory.v1".into(),
            compliance_changes: "mtd.compliance-changes.v1".into(),
            app_protection_actions: "mtd.app-protection-actions.v1".into(),
            connector_status: "mtd.connector-status.v1".into(),
            partner_app_inventory: "mtd.partner-app-inventory.{partner}.v1".into(),
            rejected: "mtd.rejected.v1".into(),
            device_state: "mtd.device-state.v1".into(),
            device_state_snapshots: "mtd.device-state-snapshots.v1".into(),
            repartition: "mtd.device-repartition.v1".into(),
            heartbeats_latest: "mtd.connector-heartbeats-latest.v1".into(),
            bind_partners: false,
            partner_device_threats: "mtd.device-threats.{partner}.v1".into(),
            partner_heartbeats: "mtd.connector-heartbeats.{partner}.v1".into(),
            partitions: 6,
            replication_factor: 1,
            create: false,
        }
    }
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            exactly_once: true,
            commit_interval_ms: 100,
            max_batch: 10_000,
            adaptive_commit: true,
            commit_min_gap_ms: 5,
            snapshots: true,
            snapshot_min_records: 10_000,
            snapshot_min_interval_ms: 10_000,
            restore_threads: 0,
            changelog_batch_min: 4096,
            changelog_settle_per_commit: 2048,
            output_encoding: OutputEncoding::Json,
            cloud: "public".into(),
            catalogue: None,
            max_clock_skew_ms: 300_000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
            explain_token: None,
        }
    }
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `path` (if given), then the `MTDGATE_<SECTION>__<KEY>` environment
    /// overrides (other `MTDGATE_*` variables are ignored: see the module doc).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Read {
                    path: p.display().to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
                });
            }
            fig = fig.merge(Toml::file(p));
        }
        let sections = sections();
        let env = Env::prefixed(ENV_PREFIX)
            .filter(move |name| is_override(name.as_str(), &sections))
            .split("__");
        Self::finish(fig.merge(EnvOverrides(env)))
    }

    /// Parses TOML text over the defaults (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::finish(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn finish(fig: Figment) -> Result<Config, ConfigError> {
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values a Kafka client would only reject later or obscurely.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return bad("kafka.bootstrap_servers is empty".into());
        }
        if self.kafka.group_id.is_empty() || self.kafka.instance_id.is_empty() {
            return bad("kafka.group_id and kafka.instance_id must be non-empty".into());
        }
        for (name, t) in [
            (
                "partner_device_threats",
                &self.topics.partner_device_threats,
            ),
            ("partner_heartbeats", &self.topics.partner_heartbeats),
        ] {
            if !t.contains("{partner}") {
                return bad(format!("topics.{name} {t:?} must contain {{partner}}"));
            }
        }
        if !self.topics.partner_app_inventory.contains("{partner}") {
            return bad(format!(
                "topics.partner_app_inventory {:?} must contain {{partner}}",
                self.topics.partner_app_inventory
            ));
        }
        if self.topics.partitions < 1 || self.topics.replication_factor < 1 {
            return bad(
                "topics.partitions and topics.replication_factor must be at least 1".into(),
            );
        }
        if self.processing.commit_interval_ms == 0 || self.processing.max_batch == 0 {
            return bad(
                "processing.commit_interval_ms and processing.max_batch must be at least 1".into(),
            );
        }
        if self.processing.commit_min_gap_ms > self.processing.commit_interval_ms {
            return bad(format!(
                "processing.commit_min_gap_ms ({}) must not exceed processing.commit_interval_ms ({})",
                self.processing.commit_min_gap_ms, self.processing.commit_interval_ms
            ));
        }
        if self.processing.changelog_batch_min > 0
            && self.processing.changelog_settle_per_commit == 0
        {
            return bad(
                "processing.changelog_settle_per_commit must be at least 1 when changelog batches are on"
                    .into(),
            );
        }
        if self.processing.snapshot_min_records == 0 {
            return bad("processing.snapshot_min_records must be at least 1".into());
        }
        if self.processing.max_clock_skew_ms < 0 {
            return bad("processing.max_clock_skew_ms must not be negative".into());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(format!(
                "http.listen {:?} is not an address like 127.0.0.1:9464",
                self.http.listen
            ));
        }
        let r = &self.schema_registry;
        if r.enabled() {
            let u = r.url.trim();
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad(format!(
                    "schema_registry.url {u:?} must start with http:// or https://"
                ));
            }
            if r.certificate_location.is_some() != r.key_location.is_some() {
                return bad(
                    "schema_registry.certificate_location and key_location go together".into(),
                );
            }
            if r.password.is_some() && r.username.is_none() {
                return bad(
                    "schema_registry.password is set without schema_registry.username".into(),
                );
            }
        }
        if r.cache_capacity == 0 || r.request_timeout_ms == 0 || r.connect_timeout_ms == 0 {
            return bad("schema_registry.cache_capacity, connect_timeout_ms and request_timeout_ms must be at least 1".into());
        }
        for key in self
            .kafka
            .properties
            .keys()
            .chain(self.kafka.consumer.keys())
            .chain(self.kafka.producer.keys())
        {
            if matches!(
                key.as_str(),
                "transactional.id" | "group.id" | "isolation.level" | "enable.auto.commit"
            ) {
                return bad(format!(
                    "kafka property {key:?} is managed by mtdgate; use the dedicated setting"
                ));
            }
        }
        Ok(())
    }

    /// Device threat topics with the partner each is bound to (`None`: any partner).
    pub fn threat_topics(&self, partners: &[&str]) -> Vec<(String, Option<String>)> {
        let t = &self.topics;
        t.bound(partners, &t.partner_device_threats, &t.device_threats)
    }

    /// Heartbeat topics with the partner each is bound to (`None`: any partner).
    pub fn heartbeat_topics(&self, partners: &[&str]) -> Vec<(String, Option<String>)> {
        let t = &self.topics;
        t.bound(partners, &t.partner_heartbeats, &t.connector_heartbeats)
    }

    /// A copy safe to print or log: passwords, secrets and tokens replaced by `<redacted>`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for map in [
            &mut c.kafka.properties,
            &mut c.kafka.consumer,
            &mut c.kafka.producer,
        ] {
            for (k, v) in map.iter_mut() {
                if is_secret(k) {
                    *v = "<redacted>".into();
                }
            }
        }
        if c.http.explain_token.is_some() {
            c.http.explain_token = Some("<redacted>".into());
        }
        if c.schema_registry.password.is_some() {
            c.schema_registry.password = Some("<redacted>".into());
        }
        // A URL may carry credentials (`https://user:pass@host`).
        if let Some((scheme, rest)) = c.schema_registry.url.split_once("://") {
            if let Some((_, host)) = rest.split_once('@') {
                c.schema_registry.url = format!("{scheme}://<redacted>@{host}");
            }
        }
        c
    }

    /// The partner inventory topic of one partner.
    pub fn partner_topic(&self, partner: &str) -> String {
        self.topics
            .partner_app_inventory
            .replace("{partner}", partner)
    }
}

/// Whether a client property holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, ...).
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "ssl.key.pem",
        "private",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The prefix of environment overrides.
const ENV_PREFIX: &str = "MTDGATE_";

/// The configuration's sections (`http`, `kafka`, ...): the top-level keys of the serialized
/// default, so a section added to [`Config`] takes environment overrides with no change here.
pub fn sections() -> Vec<String> {
    match figment::value::Value::serialize(Config::default()) {
        Ok(figment::value::Value::Dict(_, dict)) => dict.into_keys().collect(),
        _ => Vec::new(),
    }
}

/// Whether an environment variable, named without its `MTDGATE_` prefix, is a configuration
/// override: `<SECTION>__<KEY>` with `SECTION` one of `sections`, in any case.
fn is_override(name: &str, sections: &[String]) -> bool {
    name.split_once("__")
        .is_some_and(|(section, _)| sections.iter().any(|s| s.eq_ignore_ascii_case(section)))
}

/// The environment overrides, as a provider whose errors name the variable
/// (`MTDGATE_KAFKA__BOGUS`) rather than figment's `KAFKA.BOGUS`.
struct EnvOverrides(Env);

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("the environment").interpolater(
            |_: &figment::Profile, keys: &[&str]| {
                format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
            },
        )
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn toml_sets_values_and_passes_properties_through() {
        let c = Config::from_toml(
            "[kafka]\nbootstrap_servers = \"b:9093\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n[processing]\noutput_encoding = \"avro\"\n",
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "b:9093");
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.processing.output_encoding, OutputEncoding::Avro);
    }

    #[test]
    fn secrets_are_redacted_for_display() {
        let c = Config::from_toml(
            "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"mtdgate\"\n\"ssl.key.password\" = \"k\"\n[http]\nexplain_token = \"t0ken\"\n",
        )
        .unwrap();
        let shown = toml::to_string(&c.redacted()).unwrap();
        assert!(
            !shown.contains("hunter2") && !shown.contains("t0ken") && !shown.contains("= \"k\""),
            "{shown}"
        );
        assert!(shown.contains("mtdgate"));
        assert_eq!(
            c.kafka.properties["sasl.password"], "hunter2",
            "the original is untouched"
        );
    }

    #[test]
    fn contract_1_1_tables_are_named_and_renamed() {
        let d = TopicsConfig::default();
        assert_eq!(d.group_memberships, "mtd.group-memberships.v1");
        assert_eq!(d.tenant_settings, "mtd.tenant-settings.v1");
        let c =
            Config::from_toml("[topics]\ngroup_memberships = \"gm\"\ntenant_settings = \"ts\"\n")
                .unwrap();
        assert_eq!(
            (
                c.topics.group_memberships.as_str(),
                c.topics.tenant_settings.as_str()
            ),
            ("gm", "ts")
        );
        let mut t = TopicsConfig::default();
        for name in t.names_mut() {
            name.insert_str(0, "x.");
        }
        assert_eq!(t.group_memberships, "x.mtd.group-memberships.v1");
        assert_eq!(t.tenant_settings, "x.mtd.tenant-settings.v1");
    }

    #[test]
    fn bad_values_are_explained() {
        let e = Config::from_toml("[processing]\ncommit_interval_ms = \"soon\"\n").unwrap_err();
        assert!(e.to_string().contains("commit_interval_ms"), "{e}");
        let e =
            Config::from_toml("[processing]\ncommit_interval_ms = 10\ncommit_min_gap_ms = 20\n")
                .unwrap_err();
        assert!(e.to_string().contains("commit_min_gap_ms (20)"), "{e}");
        let e = Config::from_toml("[topics]\npartner_app_inventory = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("{partner}"), "{e}");
        let e = Config::from_toml("[kafka]\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e =
            Config::from_toml("[kafka.properties]\n\"transactional.id\" = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("managed"), "{e}");
        let e = Config::from_toml("[http]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("http.listen"), "{e}");
    }

    #[test]
    fn sections_come_from_the_config_struct() {
        let mut s = sections();
        s.sort();
        assert_eq!(
            s,
            ["http", "kafka", "processing", "schema_registry", "topics"]
        );
    }

    #[test]
    fn only_section_key_variables_are_configuration() {
        let s = sections();
        // Names as the loader sees them: after `MTDGATE_`, in any case.
        for name in [
            "KAFKA__BOOTSTRAP_SERVERS",
            "kafka__bootstrap_servers",
            "SCHEMA_REGISTRY__URL",
            "HTTP__EXPLAIN_TOKEN",
            "TOPICS__CREATE",
            "PROCESSING__MAX_BATCH",
            "KAFKA__PROPERTIES",
            // A mistyped key in a known section is still configuration, and refused.
            "KAFKA__BOOTSTRAP_SERVRES",
            "KAFKA__",
        ] {
            assert!(is_override(name, &s), "{name} is configuration");
        }
        for name in [
            "SRC",
            "LOG_FORMAT",
            "BENCH_CLOCK",
            "BENCH_DIAG_DEBUG",
            "KAFKA",
            "KAFKA_BOOTSTRAP_SERVERS",
            "SRC__DIR",
            "KAFKAX__BOOTSTRAP_SERVERS",
            "__KAFKA__X",
            "",
        ] {
            assert!(!is_override(name, &s), "{name} is not configuration");
        }
    }

    #[test]
    fn override_errors_name_the_variable() {
        use figment::Provider as _;
        let md = EnvOverrides(Env::prefixed(ENV_PREFIX)).metadata();
        assert_eq!(
            md.interpolate(&figment::Profile::Default, &["kafka", "bootstrap_servres"]),
            "MTDGATE_KAFKA__BOOTSTRAP_SERVRES"
        );
    }
}
