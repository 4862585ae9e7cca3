//! Publishing: the engine's outputs to their topics (rejections with the input they refuse),
//! and the changelog record of every device changed since the last call.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};

use serde::Serialize;

use crate::codec::{self, AvroRecord, OutputEncoding};
use crate::engine::ownership::status_key;
use crate::engine::Output;
use crate::model::{ConnectorStatusChange, RejectedEvent};
use crate::telemetry;

use crate::runtime::changelog_batches::{self, Settle, Work};
use crate::runtime::snapshots::Image;

use super::processor::Processor;

/// Where an input came from: topic, partition, offset, key and raw value (for rejections).
pub(super) type Source<'a> = (&'a str, i32, i64, Option<&'a [u8]>, &'a [u8]);

/// Encodes a published output into `buf` and its record key into `key`: `tenant/device`, or
/// `tenant/partner` for a connector status (rejections are keyed by their input instead).
fn encode_keyed(
    o: &Output,
    enc: (OutputEncoding, Option<u32>),
    buf: &mut Vec<u8>,
    key: &mut String,
) -> Result<(), codec::EncodeError> {
    let (tenant, id) = match o {
        Output::Compliance(c) => encoded(c, enc, buf, &c.tenant_id, &c.device_id)?,
        Output::AppAction(a) => encoded(a, enc, buf, &a.tenant_id, &a.device_id)?,
        Output::ConnectorStatus(s) => encoded(s, enc, buf, &s.tenant_id, &s.partner_id)?,
        Output::Inventory(i) => encoded(i, enc, buf, &i.tenant_id, &i.device_id)?,
        Output::Rejected(_) => return Ok(()),
    };
    key.reserve(tenant.len() + 1 + id.len());
    key.push_str(tenant);
    key.push('/');
    key.push_str(id);
    Ok(())
}

impl Processor {
    /// Publishes the engine's outputs; `source` describes the input for rejections.
    pub(super) fn flush_outputs(
        &mut self,
        now: i64,
        source: Option<Source<'_>>,
    ) -> anyhow::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut outputs = std::mem::take(&mut self.out);
        let cfg = Arc::clone(&self.cfg);
        let enc = self.encoding;
        let mut key = String::new();
        let mut buf = std::mem::take(&mut self.buf);
        for o in &outputs {
            buf.clear();
            let topic: Cow<'_, str> = match o {
                Output::Compliance(c) => {
                    telemetry::compliance_change(c.current);
                    Cow::Borrowed(&cfg.topics.compliance_changes)
                }
                Output::AppAction(a) => {
                    telemetry::app_protection_action(a.action);
                    Cow::Borrowed(&cfg.topics.app_protection_actions)
                }
                Output::ConnectorStatus(s) => {
                    if !self.ownership.publishes_status(&s.tenant_id, &s.partner_id) {
                        continue;
                    }
                    telemetry::connector_status_change(s.current);
                    Cow::Borrowed(&cfg.topics.connector_status)
                }
                Output::Inventory(i) => Cow::Owned(cfg.partner_topic(&i.partner_id)),
                Output::Rejected(r) => {
                    let Some((topic, partition, offset, raw_key, raw)) = source else {
                        continue;
                    };
                    telemetry::rejected(r.reason);
                    let ev = RejectedEvent {
                        source_topic: topic.to_owned(),
                        partition,
                        offset,
                        key: raw_key.map(|k| String::from_utf8_lossy(k).into_owned()),
                        reason: r.reason,
                        detail: r.detail.clone(),
                        raw: raw.to_vec(),
                        rejected_at: now,
                    };
                    let id = self.schemas.output_id(&cfg.topics.rejected);
                    codec::encode_with_id(&ev, enc, id, &mut buf)?;
                    let key = raw_key.unwrap_or_default();
                    self.sink
                        .send(&cfg.topics.rejected, None, key, Some(&buf))?;
                    continue;
                }
            };
            key.clear();
            let id = self.schemas.output_id(&topic);
            encode_keyed(o, (enc, id), &mut buf, &mut key)?;
            self.sink.send(&topic, None, key.as_bytes(), Some(&buf))?;
            if let Output::ConnectorStatus(s) = o {
                self.record_published_status(s, &mut buf)?;
            }
        }
        self.buf = buf;
        outputs.clear();
        self.out = outputs;
        Ok(())
    }

    /// Writes the status just published for a connector to its owner partition of the
    /// changelog, in the same transaction, and remembers it as exact.
    fn record_published_status(
        &mut self,
        s: &ConnectorStatusChange,
        buf: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        buf.clear();
        codec::encode(s, OutputEncoding::Avro, buf)?;
        let partition = self
            .ownership
            .connector_partition(&s.tenant_id, &s.partner_id);
        let key = status_key(&s.tenant_id, &s.partner_id);
        self.sink.send(
            &self.cfg.topics.device_state,
            Some(partition),
            key.as_bytes(),
            Some(buf),
        )?;
        if let Some(snapshots) = self.snapshots.as_mut() {
            snapshots.wrote(partition, 1);
            self.status_records
                .entry(partition)
                .or_default()
                .insert(key.into_bytes(), buf.clone());
        }
        let id = (s.tenant_id.clone(), s.partner_id.clone());
        self.last_status
            .insert(id.clone(), (s.current, s.compliance_ignored));
        self.exact_status.insert(id);
        Ok(())
    }

    /// Produces the changelog record of every device changed since the last call, into the
    /// open transaction. Called after every poll batch, so the records are acknowledged while
    /// the loop goes on instead of all at the commit; a device changed several times within
    /// one batch still writes one record. A partition with at least
    /// `processing.changelog_batch_min` changes waiting writes them as a changelog batch
    /// (`runtime::changelog_batches`), settled after the commit.
    pub(super) fn produce_changelog(&mut self) -> anyhow::Result<()> {
        let changed: Vec<i32> = self
            .engine
            .shards()
            .iter()
            .filter(|s| s.has_changes())
            .map(|s| *s.key())
            .collect();
        let cfg = Arc::clone(&self.cfg);
        let topic = cfg.topics.device_state.as_str();
        let batch_min = cfg.processing.changelog_batch_min;
        // Encoded into one reused buffer and produced while draining.
        let mut buf = std::mem::take(&mut self.buf);
        let mut failed = None;
        for p in changed {
            let sink = &mut self.sink;
            let mut written = 0u64;
            let mut batch = (batch_min > 0 && self.engine.pending_changes(p) >= batch_min)
                .then(|| (Image::default(), Vec::new()));
            self.engine.drain_changelog(p, |key, rec| {
                if failed.is_some() {
                    return;
                }
                written += 1;
                buf.clear();
                // The changelog is always Avro: compact and fast to restore.
                let value = match rec {
                    Some(r) => match codec::encode(&r, OutputEncoding::Avro, &mut buf) {
                        Ok(()) => Some(&buf[..]),
                        Err(e) => {
                            failed = Some(anyhow!(e).context("encode a changelog record"));
                            return;
                        }
                    },
                    None => None,
                };
                match (&mut batch, value) {
                    // Tombstones come first in a drain: written before the batch, as drained.
                    (Some((image, devices)), Some(v)) => {
                        image.push(key.as_bytes(), v);
                        devices.push(key);
                    }
                    _ => {
                        if let Err(e) = sink.send(topic, Some(p), key.as_bytes(), value) {
                            failed = Some(e);
                        }
                    }
                }
            });
            if let (None, Some((image, devices))) = (&failed, batch) {
                let id = changelog_batches::new_batch_id();
                let mut chunk_keys = Vec::new();
                for (i, chunk) in changelog_batches::encode(&image).iter().enumerate() {
                    let key = changelog_batches::chunk_key(p, &id, i);
                    self.sink
                        .send(topic, Some(p), key.as_bytes(), Some(chunk))?;
                    chunk_keys.push(key);
                }
                if !devices.is_empty() {
                    telemetry::changelog_batch(devices.len() as u64);
                    self.settles.add(p, Settle::new(chunk_keys, devices));
                }
            }
            if let Some(s) = self.snapshots.as_mut() {
                s.wrote(p, written);
            }
        }
        self.buf = buf;
        match failed {
            // The drained changes are not in any committed transaction: the rebuilt pipeline
            // restores from the changelog and reprocesses from the committed offsets.
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Settles committed changelog batches a step further, into the open transaction: the
    /// current state (or a tombstone) of up to `processing.changelog_settle_per_commit` of
    /// their devices, and tombstones for the chunks whose devices are all written. Called right
    /// after a commit, not inside a revocation's: a partition being revoked is settled by its
    /// next owner.
    pub(super) fn settle_step(&mut self) -> anyhow::Result<()> {
        if self.settles.is_empty() {
            return Ok(());
        }
        let cfg = Arc::clone(&self.cfg);
        let topic = cfg.topics.device_state.as_str();
        let mut buf = std::mem::take(&mut self.buf);
        let (engine, sink) = (&self.engine, &mut self.sink);
        let mut written: Vec<(i32, u64)> = Vec::new();
        let result = self.settles.step(
            cfg.processing.changelog_settle_per_commit,
            |p, work| -> anyhow::Result<()> {
                let (key, value) = match work {
                    Work::Device(key) => {
                        let record = key
                            .split_once('/')
                            .and_then(|(tenant, device)| engine.device_record(p, tenant, device));
                        buf.clear();
                        match record {
                            Some(r) => {
                                codec::encode(&r, OutputEncoding::Avro, &mut buf)
                                    .context("encode a changelog record")?;
                                (key, Some(&buf[..]))
                            }
                            None => (key, None),
                        }
                    }
                    Work::Chunk(key) => (key, None),
                };
                match written.last_mut() {
                    Some((q, n)) if *q == p => *n += 1,
                    _ => written.push((p, 1)),
                }
                sink.send(topic, Some(p), key.as_bytes(), value)
            },
        );
        self.buf = buf;
        if let Some(s) = self.snapshots.as_mut() {
            for (p, n) in written {
                s.wrote(p, n);
            }
        }
        result
    }
}

/// Encodes `value` and hands back the two parts of its key.
fn encoded<'a, T: AvroRecord + Serialize>(
    value: &T,
    (enc, schema_id): (OutputEncoding, Option<u32>),
    buf: &mut Vec<u8>,
    tenant: &'a str,
    id: &'a str,
) -> Result<(&'a str, &'a str), codec::EncodeError> {
    codec::encode_with_id(value, enc, schema_id, buf)?;
    Ok((tenant, id))
}
