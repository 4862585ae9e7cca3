//! The rule engine: applies decoded inputs to the tables and device state and says what to
//! publish. Pure: the caller passes the wall-clock `now`, and nothing here does I/O.
//!
//! One file per rule, as the README's "Rules" section lists them: input checks (`checks`),
//! device inputs (`threat_reports`, `enrollment`, `app_sync`), table inputs
//! (`connector_settings`, `heartbeats`, `policies`), connector status (`connector`) and its
//! deadlines (`timers`), evaluation (`evaluate`), re-evaluation and what it publishes
//! (`reevaluate`), who publishes what (`ownership`), changelog records (`changelog`) and
//! explanations (`explain`). This file keeps the types and the `apply` / `advance` dispatch.

pub mod app_sync;
pub mod assignment;
pub mod changelog;
pub mod checks;
pub mod compact;
pub mod connector;
pub mod connector_settings;
pub mod deadlines;
pub mod devices;
pub mod enrollment;
pub mod evaluate;
pub mod explain;
pub mod heartbeats;
pub mod ids;
pub mod key;
pub mod memberships;
pub mod ownership;
pub mod partitioner;
pub mod policies;
pub mod reevaluate;
pub mod tables;
pub mod tenant_settings;
pub mod threat_reports;
pub mod timers;
pub mod users;

use std::collections::BTreeSet;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{RwLock, RwLockReadGuard};

use crate::catalogue::{Catalogue, PartnerIdx};
use crate::model::*;

pub use changelog::RestoreError;
pub use checks::check_partner_binding;
use devices::DeviceShard;
use evaluate::ReasonNote;
pub use explain::EngineReader;
use tables::{TenantId, Tenants};

/// Engine settings that are not per tenant.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How far an event timestamp may be ahead of the wall clock; later ones are refused so a
    /// wrong clock cannot mask newer reports or keep a silent connector alive.
    pub max_clock_skew_ms: i64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_clock_skew_ms: 300_000,
        }
    }
}

/// A decoded input. Table inputs carry `None` for a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Threat(DeviceThreatReport),
    Heartbeat(ConnectorHeartbeat),
    Connector(Option<ConnectorConfig>),
    Policy(Option<ThreatPolicy>),
    Enrollment(Option<DeviceEnrollment>),
    Inventory(AppInventory),
    Membership(Option<GroupMembership>),
    Settings(Option<TenantSettings>),
}

/// An input with its record key and the partition that owns its device.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub body: Body,
}

/// Why an input was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// What the engine decided to publish. Changelog records are drained separately
/// ([`Engine::drain_changelog`]) so several changes to one device in a batch write one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Compliance(ComplianceChange),
    AppAction(AppProtectionAction),
    ConnectorStatus(ConnectorStatusChange),
    Inventory(PartnerAppInventory),
    Rejected(Rejection),
}

/// The result of applying one input: applied, or refused with a rejected-event record.
type Applied = Result<(), Rejection>;

/// One input being applied: its key's two parts (`tenant/device`, `tenant/partner` or
/// `tenant/policy`), the partition of its device, the wall clock, and where outputs go.
struct Input<'a> {
    tenant: &'a str,
    id: &'a str,
    partition: i32,
    now: i64,
    out: &'a mut Vec<Output>,
}

impl Input<'_> {
    /// The payload must name the key's tenant (`TENANT_MISMATCH`) and id (`INVALID_FIELD`).
    fn check_ids(&self, tenant: &str, field: &str, id: &str) -> Applied {
        checks::check_tenant(self.tenant, tenant)?;
        checks::check_field(field, self.id, id)
    }
}

/// The engine: global tables plus the device shards of the partitions this instance owns.
///
/// Tables and shards sit behind their own locks (tables: one read-write lock, shards: the
/// `DashMap`'s) so that [`EngineReader`]s, the explain API, read them while the pipeline goes
/// on, without the pipeline's processing lock. The engine always takes the tables before a
/// shard, and so does the reader: the one order rules out a deadlock.
pub struct Engine {
    catalogue: Arc<Catalogue>,
    settings: EngineSettings,
    tenants: Arc<RwLock<Tenants>>,
    shards: Arc<DashMap<i32, DeviceShard>>,
    /// Connector deadlines: (instant, tenant, partner).
    timers: BTreeSet<(i64, TenantId, PartnerIdx)>,
    /// Scratch space for the reasons of one verdict, kept to reuse its allocation.
    reasons: Vec<ReasonNote>,
}

impl Engine {
    pub fn new(catalogue: Arc<Catalogue>, settings: EngineSettings) -> Self {
        Engine {
            catalogue,
            settings,
            tenants: Arc::default(),
            shards: Arc::default(),
            timers: BTreeSet::new(),
            reasons: Vec::new(),
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The tables, read-locked for as long as the guard lives.
    pub fn tenants(&self) -> RwLockReadGuard<'_, Tenants> {
        self.tenants.read()
    }

    /// The device shards by partition.
    pub fn shards(&self) -> &DashMap<i32, DeviceShard> {
        &self.shards
    }

    /// A read-only handle on the tables and shards for other threads.
    pub fn reader(&self) -> EngineReader {
        EngineReader::new(
            self.catalogue.clone(),
            self.tenants.clone(),
            self.shards.clone(),
        )
    }

    /// Number of devices held.
    pub fn device_count(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Applies one input at wall-clock `now`, appending what to publish to `out`.
    pub fn apply(&mut self, event: &Event<'_>, now: i64, out: &mut Vec<Output>) {
        if let Body::Settings(s) = &event.body {
            let result = checks::single(event.key)
                .and_then(|tenant| self.apply_settings(tenant, s.as_ref(), now, out));
            if let Err(r) = result {
                out.push(Output::Rejected(r));
            }
            return;
        }
        let result = checks::split(event.key).and_then(|(tenant, id)| {
            let input = Input {
                tenant,
                id,
                partition: event.partition,
                now,
                out: &mut *out,
            };
            match &event.body {
                Body::Threat(r) => self.apply_threat(input, r),
                Body::Heartbeat(h) => self.apply_heartbeat(input, h),
                Body::Connector(c) => self.apply_connector(input, c.as_ref()),
                Body::Policy(p) => self.apply_policy(input, p.as_ref()),
                Body::Enrollment(Some(e)) => self.apply_enrollment(input, e),
                Body::Enrollment(None) => self.retire(input),
                Body::Inventory(i) => self.apply_inventory(input, i),
                Body::Membership(m) => self.apply_membership(input, m.as_ref()),
                // Keyed by the tenant alone: applied above.
                Body::Settings(_) => Ok(()),
            }
        });
        if let Err(r) = result {
            out.push(Output::Rejected(r));
        }
    }

    /// Fires every deadline at or before `now` ([`timers`]): connector timeouts, grace ends and
    /// report expiries.
    pub fn advance(&mut self, now: i64, out: &mut Vec<Output>) {
        self.fire_deadlines(now, out);
    }

    /// The interned id of a tenant, interned on first sight: the usual case takes only the
    /// read lock.
    fn intern_tenant(&self, name: &str) -> TenantId {
        if let Some(t) = self.tenants.read().get(name) {
            return t;
        }
        self.tenants.write().intern(name)
    }

    /// The next deadline, if any: a few comparisons per held partition, so checking it every
    /// poll costs nothing while none is due.
    pub fn next_deadline(&self) -> Option<i64> {
        let connector = self.timers.first().map(|t| t.0);
        match (connector, self.first_device_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
