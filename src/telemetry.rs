//! Every metric mtdgate exports, declared once.
//!
//! Each metric has one [`MetricDef`] here (name, kind, labels, help) and one or more emit
//! functions below; nothing else in the crate names a metric. The README table,
//! `deploy/metrics.txt`, the Grafana dashboard and the alert rules are checked against [`ALL`]
//! by `tests/deploy_artifacts.rs`, and a real `/metrics` scrape is compared with it by
//! `tests/kafka_metrics.rs`, so a rename or a new label cannot drift silently (the layout
//! follows Vector's `src/internal_events/`).
//!
//! Label values are typed (model enums, [`RebalanceKind`], [`TransactionResult`]) so a series
//! can only carry the values the declaration documents, and no label is per device.

use std::time::Duration;

use crate::model::{AppAction, ComplianceState, ConnectorStatus, RejectReason};

/// The prefix every name carries, so a scrape of `/metrics` can be filtered to mtdgate's own.
pub const PREFIX: &str = "mtdgate_";

/// The Prometheus metric type, as printed on its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// The `# TYPE` word.
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One exported metric: the single source of its name, type, label keys and help text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    /// Label keys, in the order the emit function passes them.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! metric_defs {
    ($($id:ident: $kind:ident, $name:literal, [$($label:literal),*], $help:literal;)+) => {
        $(
            #[doc = $help]
            pub const $id: MetricDef = MetricDef {
                name: $name,
                kind: MetricKind::$kind,
                labels: &[$($label),*],
                help: $help,
            };
        )+
        /// Every metric, in the order of the README table.
        pub const ALL: &[MetricDef] = &[$($id),+];
    };
}

metric_defs! {
    EVENTS_CONSUMED: Counter, "mtdgate_events_consumed_total", ["topic"],
        "Device-topic records consumed, by input topic.";
    REJECTED: Counter, "mtdgate_rejected_total", ["reason"],
        "Input records rejected to mtd.rejected, by reason.";
    COMPLIANCE_CHANGES: Counter, "mtdgate_compliance_changes_total", ["state"],
        "Compliance changes published, by new state.";
    APP_PROTECTION_ACTIONS: Counter, "mtdgate_app_protection_actions_total", ["action"],
        "App protection actions published, by action.";
    CONNECTOR_STATUS_CHANGES: Counter, "mtdgate_connector_status_changes_total", ["status"],
        "Connector status changes published by this instance, by new status.";
    CONNECTORS: Gauge, "mtdgate_connectors", ["status"],
        "Connectors this instance speaks for, by status.";
    DEVICES_TRACKED: Gauge, "mtdgate_devices_tracked", [],
        "Devices held in this instance's partition shards.";
    DEVICES_NONCOMPLIANT: Gauge, "mtdgate_devices_noncompliant", [],
        "Tracked devices whose current decision is noncompliant.";
    PROCESSING: Histogram, "mtdgate_processing_seconds", [],
        "Processing time per input record (each poll batch's time divided by its records).";
    END_TO_END_LATENCY: Histogram, "mtdgate_end_to_end_latency_seconds", [],
        "Time from an input record's timestamp to its processing.";
    TRANSACTIONS: Counter, "mtdgate_transactions_total", ["result"],
        "Kafka transactions ended, by result (commit or abort).";
    COMMIT_DURATION: Histogram, "mtdgate_commit_duration_seconds", [],
        "Duration of successful transaction commits.";
    REBALANCES: Counter, "mtdgate_rebalances_total", ["kind"],
        "Consumer group rebalance callbacks, by kind (assign or revoke).";
    RESTORE_DURATION: Histogram, "mtdgate_restore_duration_seconds", [],
        "Time to restore newly assigned partitions from the changelog, one per assignment.";
    RESTORE_RECORDS: Counter, "mtdgate_restore_records_total", [],
        "Changelog records read while restoring partitions (after the snapshot, when one was used).";
    RESTORE_SNAPSHOT_RECORDS: Counter, "mtdgate_restore_snapshot_records_total", [],
        "Snapshot entries applied while restoring partitions.";
    SNAPSHOTS: Counter, "mtdgate_snapshots_total", ["result"],
        "Partition snapshots handed to the writer, by result (written or failed).";
    SNAPSHOT_BYTES: Counter, "mtdgate_snapshot_bytes_total", [],
        "Compressed bytes of partition snapshots written.";
    SNAPSHOT_FALLBACKS: Counter, "mtdgate_snapshot_fallbacks_total", ["reason"],
        "Partition restores that read the whole changelog because no snapshot was usable, by reason.";
    CHANGELOG_BATCH_RECORDS: Counter, "mtdgate_changelog_batch_records_total", [],
        "Device states written inside changelog batch records rather than one record each.";
    CHANGELOG_UNSETTLED: Gauge, "mtdgate_changelog_unsettled_devices", [],
        "Devices of committed changelog batches not yet rewritten as their own records.";
    CONSUMER_LAG_RECORDS: Gauge, "mtdgate_consumer_lag_records", ["topic", "partition"],
        "Records between the application position and the log end, from librdkafka statistics.";
    CONSUMER_LAG_SECONDS: Gauge, "mtdgate_consumer_lag_seconds", [],
        "Now minus the newest record timestamp of the last poll batch; 0 when idle.";
    PIPELINE_RESTARTS: Counter, "mtdgate_pipeline_restarts_total", [],
        "Pipeline failures after which the supervisor restarted from committed state.";
    READY: Gauge, "mtdgate_ready", [],
        "1 when tables are loaded and assigned partitions restored, else 0.";
    BUILD_INFO: Gauge, "mtdgate_build_info", ["version"],
        "Always 1; the version label carries the build.";
    RECORDS_REROUTED: Counter, "mtdgate_records_rerouted_total", ["topic"],
        "Device-keyed records that arrived outside their key's murmur2 partition, forwarded to it.";
    SCHEMA_REGISTRY_REQUESTS: Counter, "mtdgate_schema_registry_requests_total", ["result"],
        "Schema registry requests, by result (ok, not_found, error); with a registry only.";
    SCHEMA_REGISTRY_UP: Gauge, "mtdgate_schema_registry_up", [],
        "1 when the last schema registry request was answered, 0 when it failed.";
    SCHEMA_REGISTRY_WAITING: Gauge, "mtdgate_schema_registry_waiting_partitions", [],
        "Input partitions paused until the schema registry answers again.";
}

impl MetricDef {
    /// The declaration of `name`, if any.
    pub fn find(name: &str) -> Option<&'static MetricDef> {
        ALL.iter().find(|d| d.name == name)
    }
}

/// Label value of [`REBALANCES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebalanceKind {
    Assign,
    Revoke,
}

impl RebalanceKind {
    pub const ALL: [RebalanceKind; 2] = [RebalanceKind::Assign, RebalanceKind::Revoke];

    pub const fn as_str(self) -> &'static str {
        match self {
            RebalanceKind::Assign => "assign",
            RebalanceKind::Revoke => "revoke",
        }
    }
}

/// Label value of [`SNAPSHOT_FALLBACKS`]: why a restore could not use a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotFallback {
    /// None was written yet.
    Missing,
    /// The newest generation's chunks are not all there (a write cut short, or compaction
    /// between two generations).
    Incomplete,
    /// A chunk fails its checksum, does not decompress or holds an undecodable record.
    Corrupt,
    /// It covers more of the changelog than the changelog holds (the changelog was recreated).
    Ahead,
}

impl SnapshotFallback {
    pub const ALL: [SnapshotFallback; 4] = [
        SnapshotFallback::Missing,
        SnapshotFallback::Incomplete,
        SnapshotFallback::Corrupt,
        SnapshotFallback::Ahead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SnapshotFallback::Missing => "missing",
            SnapshotFallback::Incomplete => "incomplete",
            SnapshotFallback::Corrupt => "corrupt",
            SnapshotFallback::Ahead => "ahead",
        }
    }
}

/// Label value of [`TRANSACTIONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionResult {
    Commit,
    Abort,
}

impl TransactionResult {
    pub const ALL: [TransactionResult; 2] = [TransactionResult::Commit, TransactionResult::Abort];

    pub const fn as_str(self) -> &'static str {
        match self {
            TransactionResult::Commit => "commit",
            TransactionResult::Abort => "abort",
        }
    }
}

/// Registers every help text with the installed recorder and starts the event-only counters
/// at zero.
///
/// Call once, right after installing the recorder. The Prometheus exporter prints a family only
/// once it has a series, so without the zeros `mtdgate_pipeline_restarts_total` and the abort
/// series would be missing until the first failure, and `increase()` in the alert rules would
/// miss that first failure.
pub fn describe_all() {
    for d in ALL {
        let (name, help) = (d.name, d.help);
        match d.kind {
            MetricKind::Counter => metrics::describe_counter!(name, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, help),
            MetricKind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
    metrics::counter!(PIPELINE_RESTARTS.name).absolute(0);
    metrics::counter!(RESTORE_RECORDS.name).absolute(0);
    metrics::counter!(RESTORE_SNAPSHOT_RECORDS.name).absolute(0);
    metrics::counter!(SNAPSHOT_BYTES.name).absolute(0);
    metrics::counter!(CHANGELOG_BATCH_RECORDS.name).absolute(0);
    metrics::gauge!(CHANGELOG_UNSETTLED.name).set(0.0);
    for r in ["written", "failed"] {
        metrics::counter!(SNAPSHOTS.name, "result" => r).absolute(0);
    }
    for r in SnapshotFallback::ALL {
        metrics::counter!(SNAPSHOT_FALLBACKS.name, "reason" => r.as_str()).absolute(0);
    }
    for r in TransactionResult::ALL {
        metrics::counter!(TRANSACTIONS.name, "result" => r.as_str()).absolute(0);
    }
    for k in RebalanceKind::ALL {
        metrics::counter!(REBALANCES.name, "kind" => k.as_str()).absolute(0);
    }
}

// Handles for the hot loop: resolved once, so a record costs an atomic add, not a lookup.

/// [`EVENTS_CONSUMED`] for one input topic.
pub fn consumed_counter(topic: &str) -> metrics::Counter {
    metrics::counter!(EVENTS_CONSUMED.name, "topic" => topic.to_owned())
}

/// [`PROCESSING`].
/// The rerouted counter of one device topic (created at 0, so the first one is seen).
pub fn rerouted_counter(topic: &str) -> metrics::Counter {
    metrics::counter!(RECORDS_REROUTED.name, "topic" => topic.to_owned())
}

pub fn processing_histogram() -> metrics::Histogram {
    metrics::histogram!(PROCESSING.name)
}

/// [`END_TO_END_LATENCY`].
pub fn end_to_end_histogram() -> metrics::Histogram {
    metrics::histogram!(END_TO_END_LATENCY.name)
}

/// [`CONSUMER_LAG_SECONDS`].
pub fn lag_seconds_gauge() -> metrics::Gauge {
    metrics::gauge!(CONSUMER_LAG_SECONDS.name)
}

// Events.

/// An input record rejected to `mtd.rejected`.
pub fn rejected(reason: RejectReason) {
    metrics::counter!(REJECTED.name, "reason" => reason.as_str()).increment(1);
}

/// A compliance change published.
pub fn compliance_change(state: ComplianceState) {
    metrics::counter!(COMPLIANCE_CHANGES.name, "state" => state.as_str()).increment(1);
}

/// An app protection action published.
pub fn app_protection_action(action: AppAction) {
    metrics::counter!(APP_PROTECTION_ACTIONS.name, "action" => action.as_str()).increment(1);
}

/// A connector status change published by this instance.
pub fn connector_status_change(status: ConnectorStatus) {
    metrics::counter!(CONNECTOR_STATUS_CHANGES.name, "status" => status.as_str()).increment(1);
}

/// How many connectors this instance speaks for have `status`.
pub fn connectors(status: ConnectorStatus, count: usize) {
    metrics::gauge!(CONNECTORS.name, "status" => status.as_str()).set(count as f64);
}

/// Device counts of this instance's shards.
pub fn devices(tracked: usize, noncompliant: usize) {
    metrics::gauge!(DEVICES_TRACKED.name).set(tracked as f64);
    metrics::gauge!(DEVICES_NONCOMPLIANT.name).set(noncompliant as f64);
}

/// Readiness, as `/readyz` reports it.
pub fn ready(ready: bool) {
    metrics::gauge!(READY.name).set(if ready { 1.0 } else { 0.0 });
}

/// A transaction committed after `took`.
pub fn transaction_committed(took: Duration) {
    metrics::counter!(TRANSACTIONS.name, "result" => TransactionResult::Commit.as_str())
        .increment(1);
    metrics::histogram!(COMMIT_DURATION.name).record(took.as_secs_f64());
}

/// A transaction commit failed and the transaction was aborted.
pub fn transaction_aborted() {
    metrics::counter!(TRANSACTIONS.name, "result" => TransactionResult::Abort.as_str())
        .increment(1);
}

/// A rebalance callback ran.
pub fn rebalance(kind: RebalanceKind) {
    metrics::counter!(REBALANCES.name, "kind" => kind.as_str()).increment(1);
}

/// One assignment's restore: its new partitions took `seconds`, applied `snapshot` snapshot
/// entries and read `records` changelog records.
pub fn restore(seconds: f64, snapshot: u64, records: u64) {
    metrics::histogram!(RESTORE_DURATION.name).record(seconds);
    metrics::counter!(RESTORE_SNAPSHOT_RECORDS.name).increment(snapshot);
    metrics::counter!(RESTORE_RECORDS.name).increment(records);
}

/// Device states written in a changelog batch.
pub fn changelog_batch(records: u64) {
    metrics::counter!(CHANGELOG_BATCH_RECORDS.name).increment(records);
}

/// Devices of changelog batches still to be rewritten one by one.
pub fn changelog_unsettled(devices: usize) {
    metrics::gauge!(CHANGELOG_UNSETTLED.name).set(devices as f64);
}

/// Consumer lag of one partition, from librdkafka statistics.
pub fn consumer_lag_records(topic: &str, partition: i32, records: i64) {
    metrics::gauge!(
        CONSUMER_LAG_RECORDS.name,
        "topic" => topic.to_owned(),
        "partition" => partition.to_string()
    )
    .set(records as f64);
}

/// The pipeline failed and the supervisor restarts it.
pub fn pipeline_restart() {
    metrics::counter!(PIPELINE_RESTARTS.name).increment(1);
}

/// The build, as a constant 1 with the version label.
pub fn build_info() {
    metrics::gauge!(BUILD_INFO.name, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_suffixed_by_kind() {
        let mut seen = std::collections::HashSet::new();
        for d in ALL {
            assert!(seen.insert(d.name), "{} declared twice", d.name);
            assert!(d.name.starts_with("mtdgate_"), "{}", d.name);
            assert_eq!(
                d.name.ends_with("_total"),
                d.kind == MetricKind::Counter,
                "{}: counters and only counters end in _total",
                d.name
            );
            assert!(
                !d.labels.contains(&"device"),
                "{}: no per-device label",
                d.name
            );
            assert!(!d.help.is_empty());
        }
    }
}

/// How a schema registry request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryResult {
    /// Answered with the schema or id asked for.
    Ok,
    /// Answered that the id or schema is not registered.
    NotFound,
    /// Not answered: unreachable, timed out, refused or a server error.
    Error,
}

impl RegistryResult {
    /// The `result` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RegistryResult::Ok => "ok",
            RegistryResult::NotFound => "not_found",
            RegistryResult::Error => "error",
        }
    }
}

/// One schema registry request ended; also sets the registry's up gauge.
pub fn schema_registry_request(result: RegistryResult) {
    metrics::counter!(SCHEMA_REGISTRY_REQUESTS.name, "result" => result.as_str()).increment(1);
    let up = if result == RegistryResult::Error {
        0.0
    } else {
        1.0
    };
    metrics::gauge!(SCHEMA_REGISTRY_UP.name).set(up);
}

/// Input partitions paused waiting for the registry.
pub fn schema_registry_waiting(partitions: usize) {
    metrics::gauge!(SCHEMA_REGISTRY_WAITING.name).set(partitions as f64);
}

/// A partition snapshot of `bytes` compressed bytes was written.
pub fn snapshot_written(bytes: u64) {
    metrics::counter!(SNAPSHOTS.name, "result" => "written").increment(1);
    metrics::counter!(SNAPSHOT_BYTES.name).increment(bytes);
}

/// A partition snapshot could not be written.
pub fn snapshot_failed() {
    metrics::counter!(SNAPSHOTS.name, "result" => "failed").increment(1);
}

/// A partition restore read the whole changelog for `reason`.
pub fn snapshot_fallback(reason: SnapshotFallback) {
    metrics::counter!(SNAPSHOT_FALLBACKS.name, "reason" => reason.as_str()).increment(1);
}
