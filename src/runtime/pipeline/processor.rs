//! The processing state shared by the loop and the rebalance callbacks: the engine, the sink,
//! the offsets to commit and the partitions owned. Each input record is decoded, applied and
//! its outputs published here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info};

use crate::codec::{self, OutputEncoding};
use crate::config::Config;
use crate::engine::ownership::{PartitionOwnership, PublishedStatuses};
use crate::engine::partitioner::partition_for;
use crate::engine::{check_partner_binding, Body, Engine, Event, Output, Rejection};
use crate::model::*;
use crate::runtime::changelog_batches::{Settle, Settles};
use crate::runtime::clock::Clock;
use crate::runtime::restore::{restore_partitions, RestoredStatuses};
use crate::runtime::schemas::{RegistryWait, Schemas};
use crate::runtime::snapshots::{Image, Snapshots};
use crate::runtime::Status;
use crate::telemetry;

use super::delivery::Sink;

/// Which device topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeviceTopic {
    Threats,
    Enrollments,
    Inventory,
}

/// Where records of one device topic go, with that topic's consumed counter.
pub(super) struct Route {
    pub(super) kind: DeviceTopic,
    /// The partner a per-partner topic is bound to.
    pub(super) bound: Option<String>,
    pub(super) consumed: metrics::Counter,
    pub(super) rerouted: metrics::Counter,
}

/// The header a forwarded record carries: `{partition}/{offset}/{topic}` of the input it was.
pub(super) const ORIGIN_HEADER: &str = "mtdgate-origin";

/// Where a record read from the repartition topic first arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

impl Origin {
    /// The origin in `msg`'s headers, if it has a well-formed one.
    pub(super) fn of(msg: &BorrowedMessage<'_>) -> Option<Origin> {
        let headers = msg.headers()?;
        let value = headers
            .iter()
            .find(|h| h.key == ORIGIN_HEADER)
            .and_then(|h| h.value)?;
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(3, '/');
        let partition = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let topic = parts.next()?.to_owned();
        Some(Origin {
            topic,
            partition,
            offset,
        })
    }
}

/// State shared between the loop and the rebalance callbacks (which run inside `poll`).
pub(super) struct Processor {
    pub(super) cfg: Arc<Config>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) engine: Engine,
    pub(super) sink: Sink,
    /// Next offset to commit per topic and partition.
    pub(super) offsets: HashMap<String, HashMap<i32, i64>>,
    pub(super) ownership: PartitionOwnership,
    pub(super) encoding: OutputEncoding,
    pub(super) out: Vec<Output>,
    pub(super) buf: Vec<u8>,
    /// Inputs handled since the last commit.
    pub(super) pending: usize,
    pub(super) status: Arc<Status>,
    /// A failure seen inside a callback, surfaced by the loop.
    pub(super) failure: Option<anyhow::Error>,
    /// Heartbeat topics and the partner each is bound to.
    pub(super) heartbeat_topics: HashMap<String, Option<String>>,
    /// Last status published per connector, as read back from the status topic.
    pub(super) last_status: PublishedStatuses,
    /// Connectors whose entry in `last_status` came from the changelog or from this instance's
    /// own publication: exact, so the (later, possibly older) read-back does not replace it.
    pub(super) exact_status: HashSet<(String, String)>,
    /// The last decoded report, reused as the next one's decoding buffer.
    pub(super) spare_report: Option<DeviceThreatReport>,
    pub(super) end_to_end: metrics::Histogram,
    /// The input decoder and the output schema ids.
    pub(super) schemas: Arc<Schemas>,
    /// Partitions of the device topics: a key's owner is its murmur2 partition among them.
    pub(super) device_partitions: i32,
    /// Partition snapshots, when on.
    pub(super) snapshots: Option<Snapshots>,
    /// The connector status records in each owned changelog partition (key -> value): the
    /// part of a partition's changelog image that is not device state.
    pub(super) status_records: HashMap<i32, HashMap<Vec<u8>, Vec<u8>>>,
    /// Changelog batches of owned partitions still to be settled.
    pub(super) settles: Settles,
}

/// What became of a device-topic record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handled {
    /// Applied or rejected: its offset is committed with the outputs.
    Applied,
    /// Its schema is in a registry that does not answer now: nothing was done; the record
    /// (and the rest of its partition) is read again later.
    Wait,
}

fn rejection_of(e: codec::DecodeError) -> Rejection {
    Rejection::new(e.reason(), e.to_string())
}

impl Processor {
    /// Applies one device-topic record, as of `now`; `origin` is where a record read from the
    /// repartition topic first arrived. A keyed record outside its key's murmur2 partition is
    /// forwarded there instead (librdkafka's default partitioner, used by Python, Go, .NET
    /// and kcat clients, places keys elsewhere than Java's): every device has one owner.
    pub fn handle(
        &mut self,
        route: &Route,
        msg: &BorrowedMessage<'_>,
        origin: Option<&Origin>,
        now: i64,
    ) -> anyhow::Result<Handled> {
        let key = msg.key();
        let payload = msg.payload();
        if let (None, Some(k)) = (origin, key) {
            let owner = partition_for(k, self.device_partitions);
            if owner != msg.partition() {
                self.forward(msg, owner)?;
                route.consumed.increment(1);
                route.rerouted.increment(1);
                self.advance(msg);
                return Ok(Handled::Applied);
            }
        }
        let decoder = &self.schemas.decoder;
        // `Err(None)`: a record without a value where one is needed.
        let body: Result<Body, Option<codec::DecodeError>> = match (route.kind, payload) {
            (DeviceTopic::Enrollments, None) => Ok(Body::Enrollment(None)),
            (_, None) => Err(None),
            // Reports decode into one reused value: its strings keep their buffers.
            (DeviceTopic::Threats, Some(b)) => match self.spare_report.take() {
                Some(mut r) => match decoder.decode_into(b, &mut r) {
                    Ok(()) => Ok(Body::Threat(r)),
                    Err(e) => {
                        self.spare_report = Some(r);
                        Err(Some(e))
                    }
                },
                None => decoder
                    .decode::<DeviceThreatReport>(b)
                    .map(Body::Threat)
                    .map_err(Some),
            },
            (DeviceTopic::Enrollments, Some(b)) => decoder
                .decode::<DeviceEnrollment>(b)
                .map(|e| Body::Enrollment(Some(e)))
                .map_err(Some),
            (DeviceTopic::Inventory, Some(b)) => decoder
                .decode::<AppInventory>(b)
                .map(Body::Inventory)
                .map_err(Some),
        };
        let body = match body {
            // Not applied, not rejected, offset not advanced: read again later.
            Err(Some(e)) if e.is_unavailable() => return Ok(Handled::Wait),
            Err(Some(e)) => Err(rejection_of(e)),
            Err(None) => Err(Rejection::new(
                RejectReason::Undecodable,
                "record has no value",
            )),
            Ok(b) => Ok(b),
        };
        route.consumed.increment(1);
        let body = body.and_then(|b| match route.bound.as_deref() {
            Some(partner) => check_partner_binding(&b, partner).map(|()| b),
            None => Ok(b),
        });
        match body {
            Ok(body) => {
                let event = Event {
                    partition: msg.partition(),
                    key,
                    body,
                };
                self.engine.apply(&event, now, &mut self.out);
                if let Body::Threat(r) = event.body {
                    self.spare_report = Some(r);
                }
            }
            Err(r) => self.out.push(Output::Rejected(r)),
        }
        if let Some(ts) = msg.timestamp().to_millis() {
            self.end_to_end.record((now - ts).max(0) as f64 / 1000.0);
        }
        // Rejections name the input as it first arrived.
        let source = match origin {
            Some(o) => (
                o.topic.as_str(),
                o.partition,
                o.offset,
                key,
                payload.unwrap_or_default(),
            ),
            None => (
                msg.topic(),
                msg.partition(),
                msg.offset(),
                key,
                payload.unwrap_or_default(),
            ),
        };
        self.flush_outputs(now, Some(source))?;
        self.advance(msg);
        Ok(Handled::Applied)
    }

    /// Forwards `msg` to partition `owner` of the repartition topic, in the open transaction,
    /// with its headers, its timestamp and an [`ORIGIN_HEADER`].
    fn forward(&mut self, msg: &BorrowedMessage<'_>, owner: i32) -> anyhow::Result<()> {
        let origin = format!("{}/{}/{}", msg.partition(), msg.offset(), msg.topic());
        let mut headers = OwnedHeaders::new();
        if let Some(hs) = msg.headers() {
            for h in hs.iter().filter(|h| h.key != ORIGIN_HEADER) {
                headers = headers.insert(h);
            }
        }
        let headers = headers.insert(Header {
            key: ORIGIN_HEADER,
            value: Some(origin.as_bytes()),
        });
        self.sink.forward(
            &self.cfg.topics.repartition,
            owner,
            msg.key().unwrap_or_default(),
            msg.payload(),
            headers,
            msg.timestamp().to_millis(),
        )
    }

    /// Marks `msg` handled: its offset is committed with the next transaction.
    fn advance(&mut self, msg: &BorrowedMessage<'_>) {
        match self.offsets.get_mut(msg.topic()) {
            Some(by_partition) => {
                by_partition.insert(msg.partition(), msg.offset() + 1);
            }
            None => {
                let by_partition = HashMap::from([(msg.partition(), msg.offset() + 1)]);
                self.offsets.insert(msg.topic().to_owned(), by_partition);
            }
        }
        self.pending += 1;
    }

    /// Applies one table record ([`Self::apply_table`]); for a heartbeat, returns the state
    /// its connector is in now, for the table reader's heartbeat view.
    pub fn handle_table(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        live: bool,
    ) -> anyhow::Result<crate::runtime::tables::Applied> {
        self.apply_table(topic, partition, offset, key, payload, live)?;
        Ok(match self.heartbeat_topics.contains_key(topic) {
            true => crate::runtime::tables::latest_heartbeat(&self.engine, key),
            false => None,
        })
    }

    /// Applies one table record (all instances read every table record); `live` is false
    /// while the history is replayed at start, whose outputs the previous run published.
    fn apply_table(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        live: bool,
    ) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let t = &self.cfg.topics;
        let decoder = &self.schemas.decoder;
        // A decode that must wait for the registry stops the table reader at this record.
        let wait = |e: &codec::DecodeError| -> anyhow::Result<()> {
            if e.is_unavailable() {
                return Err(RegistryWait(e.detail().to_owned()).into());
            }
            Ok(())
        };
        if topic == t.connector_status {
            match payload.map(|b| decoder.decode::<ConnectorStatusChange>(b)) {
                Some(Ok(s)) => {
                    let key = (s.tenant_id, s.partner_id);
                    if !self.exact_status.contains(&key) {
                        self.last_status
                            .insert(key, (s.current, s.compliance_ignored));
                    }
                }
                Some(Err(e)) => wait(&e)?,
                None => {}
            }
            return Ok(());
        }
        fn table<T: codec::AvroRecord + serde::de::DeserializeOwned>(
            decoder: &codec::Decoder,
            payload: Option<&[u8]>,
        ) -> Result<Option<T>, codec::DecodeError> {
            payload.map(|b| decoder.decode::<T>(b)).transpose()
        }
        let decoded = if topic == t.connectors {
            table::<ConnectorConfig>(decoder, payload).map(Body::Connector)
        } else if topic == t.policies {
            table::<ThreatPolicy>(decoder, payload).map(Body::Policy)
        } else if topic == t.group_memberships {
            table::<GroupMembership>(decoder, payload).map(Body::Membership)
        } else if topic == t.tenant_settings {
            table::<TenantSettings>(decoder, payload).map(Body::Settings)
        } else if self.heartbeat_topics.contains_key(topic) {
            let Some(b) = payload else {
                return Ok(());
            };
            decoder.decode::<ConnectorHeartbeat>(b).map(Body::Heartbeat)
        } else {
            return Ok(());
        };
        if let Err(e) = &decoded {
            wait(e)?;
        }
        let decoded = decoded.map_err(rejection_of).and_then(|body| {
            match self.heartbeat_topics.get(topic).and_then(|b| b.as_deref()) {
                Some(partner) => check_partner_binding(&body, partner).map(|()| body),
                None => Ok(body),
            }
        });
        match decoded {
            Ok(body) => {
                let event = Event {
                    partition: 0,
                    key,
                    body,
                };
                self.engine.apply(&event, now, &mut self.out);
            }
            Err(r) => self.out.push(Output::Rejected(r)),
        }
        if !live {
            self.out.clear();
            return Ok(());
        }
        if !self.ownership.publishes_table_rejection(partition) {
            self.out.retain(|o| !matches!(o, Output::Rejected(_)));
        }
        let source = (topic, partition, offset, key, payload.unwrap_or_default());
        self.flush_outputs(now, Some(source))?;
        self.pending += 1;
        Ok(())
    }

    /// Fires the engine's due deadlines and publishes what they decide.
    pub fn fire_deadlines(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        if self.engine.next_deadline().is_some_and(|d| d <= now) {
            self.engine.advance(now, &mut self.out);
            self.flush_outputs(now, None)?;
        }
        Ok(())
    }

    /// Keeps the state of partitions assigned again, drops the rest, restores new ones from
    /// the changelog and reconciles them against the current tables.
    pub fn reassign(&mut self, assigned: HashSet<i32>) -> anyhow::Result<()> {
        let held: Vec<i32> = self.engine.shards().iter().map(|s| *s.key()).collect();
        for p in held {
            if !assigned.contains(&p) {
                let n = self.engine.drop_partition(p);
                debug!(partition = p, devices = n, "dropped partition state");
            }
        }
        self.status_records.retain(|p, _| assigned.contains(p));
        self.settles.retain(&assigned);
        if let Some(s) = self.snapshots.as_mut() {
            s.retain(&assigned);
        }
        let new = self.ownership.assign(assigned);
        for &p in &new {
            // A partition we did not own may hold stale state from an earlier ownership.
            self.engine.drop_partition(p);
            self.settles.forget(p);
        }
        if !new.is_empty() {
            let started = Instant::now();
            let mut restored = RestoredStatuses::default();
            let counts = restore_partitions(&self.cfg, &mut self.engine, &new, &mut restored)?;
            for (key, status) in restored.published {
                self.exact_status.insert(key.clone());
                self.last_status.insert(key, status);
            }
            for p in &new {
                self.status_records.remove(p);
            }
            self.status_records.extend(restored.records);
            // Batches a previous owner committed and did not settle: settled from here.
            for (p, chunks) in restored.batches {
                for (chunk, devices) in chunks {
                    self.settles.add(p, Settle::new(vec![chunk], devices));
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let snapshot: usize = counts.values().map(|c| c.snapshot).sum();
            let changelog: usize = counts.values().map(|c| c.changelog).sum();
            if let Some(s) = self.snapshots.as_mut() {
                for (&p, c) in &counts {
                    s.restored(p, c.chunks, c.changelog as u64);
                }
            }
            telemetry::restore(secs, snapshot as u64, changelog as u64);
            info!(
                partitions = ?counts.keys().collect::<Vec<_>>(),
                snapshot_entries = snapshot,
                changelog_records = changelog,
                seconds = secs,
                "restored partition state"
            );
        }
        let now = self.clock.now_ms();
        for &p in &new {
            self.engine.reconcile(p, now, &mut self.out);
        }
        // Connectors this instance now speaks for: publish what changed while nobody did.
        self.engine.unpublished_statuses(
            &self.ownership,
            &new,
            &self.last_status,
            now,
            &mut self.out,
        );
        self.flush_outputs(now, None)
    }

    /// Refreshes the state gauges (devices, connectors by status, readiness).
    pub fn publish_gauges(&self) {
        let (devices, noncompliant) = self.engine.device_counts();
        telemetry::devices(devices, noncompliant);
        for (status, count) in self.engine.owned_connector_counts(&self.ownership) {
            telemetry::connectors(status, count);
        }
        telemetry::ready(self.status.ready());
        telemetry::changelog_unsettled(self.settles.devices_left());
    }

    /// Whether a commit is due besides the input count: handled inputs, an open transaction
    /// or changelog records still to write.
    pub fn has_uncommitted(&self) -> bool {
        self.pending > 0
            || self.sink.has_open_transaction()
            || self.engine.shards().iter().any(|s| s.has_changes())
    }

    /// Writes the rest of the changelog, then commits outputs, changelog and offsets together.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> anyhow::Result<()> {
        self.produce_changelog()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, by_partition) in &self.offsets {
            for (partition, offset) in by_partition {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .context("offsets to commit")?;
            }
        }
        self.sink.commit(consumer, &tpl)?;
        self.pending = 0;
        self.snapshot_if_due();
        Ok(())
    }

    /// Copies the image of the partition most in need of a snapshot, if one is due, and hands
    /// it to the snapshot writer. Only called with nothing uncommitted, when the state of every
    /// partition equals its committed changelog. A snapshot that cannot be taken is skipped
    /// with a log line: the changelog alone still restores everything.
    pub fn snapshot_if_due(&mut self) {
        let Some(s) = self.snapshots.as_mut() else {
            return;
        };
        let (engine, settles) = (&self.engine, &self.settles);
        // A partition with a live batch waits: a snapshot must not cover a chunk that is
        // still to settle (`runtime::changelog_batches`).
        let Some(p) = s.due(|p| engine.partition_len(p), |p| settles.holds(p)) else {
            return;
        };
        let covered = match s.covered(p) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(partition = p, error = %format!("{e:#}"), "snapshot skipped");
                s.postpone(p);
                return;
            }
        };
        let mut image = Image::default();
        let mut buf = std::mem::take(&mut self.buf);
        let mut failed = None;
        self.engine.partition_records(p, |key, record| {
            buf.clear();
            match codec::encode(record, OutputEncoding::Avro, &mut buf) {
                Ok(()) => image.push(key.as_bytes(), &buf),
                Err(e) => failed = Some(e),
            }
        });
        self.buf = buf;
        if let Some(e) = failed {
            tracing::warn!(partition = p, error = %e, "snapshot skipped");
            s.postpone(p);
            return;
        }
        for (key, value) in self.status_records.get(&p).into_iter().flatten() {
            image.push(key, value);
        }
        s.submit(p, covered, image);
    }
}
