//! The rule engine: applies decoded inputs to the tables and device state and says what to
//! publish. Pure: the caller passes the wall-clock `now`, and nothing here does I/O.

pub mod compact;
pub mod connector;
pub mod devices;
pub mod evaluate;
pub mod explain;
pub mod ids;
pub mod key;
pub mod record;
pub mod tables;

use std::collections::BTreeSet;
use std::sync::Arc;

use dashmap::DashMap;

use crate::catalogue::{Catalogue, PartnerIdx};
use crate::model::*;

use compact::{CompactStr, OsVersion};
use connector::{ConnectorState, Published};
use devices::{flags, Device, DeviceShard, Observation, Slot};
use evaluate::{evaluate_app_protection, evaluate_compliance, ReasonNote};
pub use record::RestoreError;
use tables::{TenantId, TenantTables, Tenants};

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

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

type Applied = Result<(), Rejection>;

/// The engine: global tables plus the device shards of the partitions this instance owns.
pub struct Engine {
    catalogue: Arc<Catalogue>,
    settings: EngineSettings,
    tenants: Tenants,
    shards: DashMap<i32, DeviceShard>,
    /// Connector deadlines: (instant, tenant, partner).
    timers: BTreeSet<(i64, TenantId, PartnerIdx)>,
    reasons: Vec<ReasonNote>,
}

impl Engine {
    pub fn new(catalogue: Arc<Catalogue>, settings: EngineSettings) -> Self {
        Engine {
            catalogue,
            settings,
            tenants: Tenants::default(),
            shards: DashMap::new(),
            timers: BTreeSet::new(),
            reasons: Vec::new(),
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// The device shards by partition.
    pub fn shards(&self) -> &DashMap<i32, DeviceShard> {
        &self.shards
    }

    /// Number of devices held.
    pub fn device_count(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Applies one input at wall-clock `now`, appending what to publish to `out`.
    pub fn apply(&mut self, event: &Event<'_>, now: i64, out: &mut Vec<Output>) {
        let result = match &event.body {
            Body::Threat(r) => self.apply_threat(event.partition, event.key, r, now, out),
            Body::Heartbeat(h) => self.apply_heartbeat(event.key, h, now, out),
            Body::Connector(c) => self.apply_connector(event.key, c.as_ref(), now, out),
            Body::Policy(p) => self.apply_policy(event.key, p.as_ref(), now, out),
            Body::Enrollment(e) => {
                self.apply_enrollment(event.partition, event.key, e.as_ref(), now, out)
            }
            Body::Inventory(i) => self.apply_inventory(event.partition, event.key, i, out),
        };
        if let Err(r) = result {
            out.push(Output::Rejected(r));
        }
    }

    /// Fires every connector deadline at or before `now`.
    pub fn advance(&mut self, now: i64, out: &mut Vec<Output>) {
        while let Some(&(at, tenant, partner)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(c) = self.tenants.tables_mut(tenant).connectors.get_mut(&partner) {
                if c.scheduled == Some(at) {
                    c.scheduled = None;
                }
            }
            let cause = format!(
                "timer:{}/{}@{at}",
                self.tenants.name(tenant),
                self.catalogue.partner(partner).id
            );
            self.refresh_connector(tenant, partner, now, &cause, "deadline reached", out);
        }
    }

    /// Re-evaluates every device of `partition` against the current tables, e.g. after its
    /// state was restored: tables may have changed while no instance owned the partition.
    pub fn reconcile(&mut self, partition: i32, now: i64, out: &mut Vec<Output>) {
        let Some(mut shard) = self.shards.get_mut(&partition) else {
            return;
        };
        let slots: Vec<(Slot, TenantId)> = shard.iter().map(|(s, d)| (s, d.tenant)).collect();
        let cause = format!("reconcile:{partition}@{now}");
        for (slot, tenant) in slots {
            reevaluate(
                &self.catalogue,
                self.tenants.tables(tenant),
                self.tenants.name(tenant),
                &mut shard,
                slot,
                &cause,
                now,
                &mut self.reasons,
                out,
            );
        }
    }

    /// Every connector's published status: (tenant, partner, status, compliance ignored,
    /// last heartbeat).
    pub fn connector_statuses(&self) -> Vec<(String, String, Published, Option<i64>)> {
        let mut v = Vec::new();
        for t in 0..self.tenants.len() as TenantId {
            for (&p, c) in &self.tenants.tables(t).connectors {
                v.push((
                    self.tenants.name(t).to_owned(),
                    self.catalogue.partner(p).id.clone(),
                    c.published,
                    c.last_heartbeat_at,
                ));
            }
        }
        v
    }

    /// The next connector deadline, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        self.timers.first().map(|t| t.0)
    }

    // ---- device inputs -------------------------------------------------------------------

    fn apply_threat(
        &mut self,
        partition: i32,
        key: Option<&[u8]>,
        r: &DeviceThreatReport,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Applied {
        let (kt, kd) = device_key(key)?;
        check_tenant(kt, &r.tenant_id)?;
        check_field("device_id", kd, &r.device_id)?;
        if r.event_id.is_empty() {
            return Err(reject(RejectReason::InvalidField, "event_id is empty"));
        }
        let partner = self.partner_for(&r.partner_id, r.platform)?;
        if r.management == Management::Mdm && !self.catalogue.partner(partner).compliance {
            return Err(reject(
                RejectReason::UnsupportedPlatform,
                format!(
                    "{} data is used for app protection only; management MDM is not supported",
                    r.partner_id
                ),
            ));
        }
        self.check_skew("observed_at", r.observed_at, now)?;
        let tenant = self.tenants.get(kt).ok_or_else(|| {
            reject(
                RejectReason::ConnectorUnavailable,
                format!("connector {kt}/{} is not configured", r.partner_id),
            )
        })?;
        let tables = self.tenants.tables(tenant);
        let status = tables
            .connectors
            .get(&partner)
            .map(|c| c.published.status)
            .unwrap_or(ConnectorStatus::Unavailable);
        blocked_connector(status, kt, &r.partner_id)?;
        let fingerprint = ids::event_fingerprint(&r.event_id);
        let mut shard = self.shards.entry(partition).or_default();
        let slot = match shard.find(tenant, kd) {
            Some(slot) => {
                let d = shard.get(slot);
                if d.has(flags::ENROLLED) && d.platform != r.platform {
                    return Err(reject(
                        RejectReason::InvalidField,
                        format!(
                            "platform {} differs from the enrolled platform {}",
                            r.platform, d.platform
                        ),
                    ));
                }
                if let Some(o) = d.observation(partner) {
                    not_older("observed_at", r.observed_at, o.observed_at, "the report")?;
                    if r.observed_at == o.observed_at && o.event_fingerprint == fingerprint {
                        return Err(reject(
                            RejectReason::Duplicate,
                            format!("event {} was already applied", r.event_id),
                        ));
                    }
                }
                slot
            }
            None => shard.insert(Device::new(tenant, kd, r.platform, r.management)),
        };
        {
            let d = shard.get_mut(slot);
            d.observe(Observation {
                observed_at: r.observed_at,
                event_fingerprint: fingerprint,
                partner,
                health: r.health_state,
            });
            if !d.has(flags::ENROLLED) {
                d.management = r.management;
                if let Some(u) = &r.user_id {
                    if !d.user.eq_str(u) {
                        d.user = CompactStr::new(u);
                    }
                }
                if let Some(os) = &r.os_version {
                    d.os = OsVersion::parse(os);
                }
                if r.ownership.is_some() {
                    d.ownership = r.ownership;
                }
            }
        }
        if !shard.get(slot).has(flags::ENROLLED) {
            shard.set_platform(slot, r.platform);
        }
        shard.mark_dirty(slot);
        let tables = self.tenants.tables(tenant);
        reevaluate(
            &self.catalogue,
            tables,
            kt,
            &mut shard,
            slot,
            &r.event_id,
            now,
            &mut self.reasons,
            out,
        );
        Ok(())
    }

    fn apply_enrollment(
        &mut self,
        partition: i32,
        key: Option<&[u8]>,
        e: Option<&DeviceEnrollment>,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Applied {
        let (kt, kd) = device_key(key)?;
        let Some(e) = e else {
            // Retired: the device's state goes, with a changelog tombstone.
            if let Some(tenant) = self.tenants.get(kt) {
                if let Some(mut shard) = self.shards.get_mut(&partition) {
                    if let Some(slot) = shard.find(tenant, kd) {
                        shard.remove(slot);
                    }
                }
            }
            return Ok(());
        };
        check_tenant(kt, &e.tenant_id)?;
        check_field("device_id", kd, &e.device_id)?;
        let tenant = self.tenants.intern(kt);
        let mut shard = self.shards.entry(partition).or_default();
        let slot = match shard.find(tenant, kd) {
            Some(s) => s,
            None => shard.insert(Device::new(tenant, kd, e.platform, e.management)),
        };
        shard.set_platform(slot, e.platform);
        {
            let d = shard.get_mut(slot);
            d.set(flags::ENROLLED, true);
            d.management = e.management;
            d.ownership = Some(e.ownership);
            if !d.user.eq_str(&e.user_id) {
                d.user = CompactStr::new(&e.user_id);
            }
            if let Some(os) = &e.os_version {
                d.os = OsVersion::parse(os);
            }
        }
        shard.mark_dirty(slot);
        let cause = format!("enrollment:{kt}/{kd}@{}", e.enrolled_at);
        let tables = self.tenants.tables(tenant);
        reevaluate(
            &self.catalogue,
            tables,
            kt,
            &mut shard,
            slot,
            &cause,
            now,
            &mut self.reasons,
            out,
        );
        Ok(())
    }

    fn apply_inventory(
        &mut self,
        partition: i32,
        key: Option<&[u8]>,
        inv: &AppInventory,
        out: &mut Vec<Output>,
    ) -> Applied {
        let (kt, kd) = device_key(key)?;
        check_tenant(kt, &inv.tenant_id)?;
        check_field("device_id", kd, &inv.device_id)?;
        if let Some(tenant) = self.tenants.get(kt) {
            if let Some(shard) = self.shards.get(&partition) {
                if let Some(slot) = shard.find(tenant, kd) {
                    let p = shard.get(slot).platform;
                    if p != Platform::Ios {
                        return Err(reject(
                            RejectReason::UnsupportedPlatform,
                            format!("App Sync covers iOS/iPadOS devices; device is {p}"),
                        ));
                    }
                }
            }
        }
        let Some(tenant) = self.tenants.get(kt) else {
            return Err(reject(
                RejectReason::AppSyncDisabled,
                format!("tenant {kt} has no connector with App Sync for iOS devices"),
            ));
        };
        let mut blocked: Option<Rejection> = None;
        let mut sent = 0;
        for (&idx, conn) in &self.tenants.tables(tenant).connectors {
            let partner = self.catalogue.partner(idx);
            let sync = conn.config.as_ref().is_some_and(|c| c.ios_app_sync)
                && partner.platforms.contains(Platform::Ios);
            if !sync {
                continue;
            }
            if let Err(r) = blocked_connector(conn.published.status, kt, &partner.id) {
                blocked.get_or_insert(r);
                continue;
            }
            let full = conn
                .config
                .as_ref()
                .is_some_and(|c| c.ios_app_sync_personal_full);
            let strip = inv.ownership == Ownership::Personal && !full;
            let apps: Vec<AppInfo> = inv
                .apps
                .iter()
                .filter(|a| !strip || a.managed)
                .cloned()
                .collect();
            out.push(Output::Inventory(PartnerAppInventory {
                tenant_id: inv.tenant_id.clone(),
                partner_id: partner.id.clone(),
                device_id: inv.device_id.clone(),
                ownership: inv.ownership,
                collected_at: inv.collected_at,
                unmanaged_apps_removed: (inv.apps.len() - apps.len()) as i32,
                apps,
            }));
            sent += 1;
        }
        if sent == 0 {
            return Err(blocked.unwrap_or_else(|| {
                reject(
                    RejectReason::AppSyncDisabled,
                    format!("tenant {kt} has no connector with App Sync for iOS devices"),
                )
            }));
        }
        Ok(())
    }

    // ---- table inputs --------------------------------------------------------------------

    fn apply_heartbeat(
        &mut self,
        key: Option<&[u8]>,
        h: &ConnectorHeartbeat,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Applied {
        let (kt, kp) = split(key)?;
        check_tenant(kt, &h.tenant_id)?;
        check_field("partner_id", kp, &h.partner_id)?;
        let partner = self.known_partner(kp)?;
        self.check_skew("sent_at", h.sent_at, now)?;
        let mut min_os = [OsVersion::UNKNOWN; 4];
        for (platform, version) in h.min_os_versions.iter().flatten() {
            let p = Platform::parse(platform).ok_or_else(|| {
                reject(
                    RejectReason::InvalidField,
                    format!("min_os_versions: unknown platform {platform:?}"),
                )
            })?;
            let v = OsVersion::parse(version);
            if !v.is_known() {
                return Err(reject(
                    RejectReason::InvalidField,
                    format!("min_os_versions.{platform}: {version:?} is not a version number"),
                ));
            }
            min_os[p.code() as usize] = v;
        }
        let tenant = self.tenants.intern(kt);
        let conn = self
            .tenants
            .tables_mut(tenant)
            .connectors
            .entry(partner)
            .or_default();
        if let Some(last) = conn.last_heartbeat_at {
            not_older("sent_at", h.sent_at, last, "the last heartbeat")?;
        }
        conn.last_heartbeat_at = Some(h.sent_at);
        conn.error_code = h.error_code.unwrap_or(0);
        if h.min_os_versions.is_some() {
            conn.min_os = min_os;
        }
        let hint = match conn.error_code {
            0 => "heartbeat received".to_owned(),
            code => format!("heartbeat reported error code {code}"),
        };
        let cause = format!("heartbeat:{kt}/{kp}@{}", h.sent_at);
        self.refresh_connector(tenant, partner, now, &cause, &hint, out);
        Ok(())
    }

    fn apply_connector(
        &mut self,
        key: Option<&[u8]>,
        cfg: Option<&ConnectorConfig>,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Applied {
        let (kt, kp) = split(key)?;
        let partner = self.known_partner(kp)?;
        let (cause, hint) = match cfg {
            Some(c) => {
                check_tenant(kt, &c.tenant_id)?;
                check_field("partner_id", kp, &c.partner_id)?;
                if c.heartbeat_timeout_seconds < 1 {
                    return Err(reject(
                        RejectReason::InvalidField,
                        format!(
                            "heartbeat_timeout_seconds must be at least 1, got {}",
                            c.heartbeat_timeout_seconds
                        ),
                    ));
                }
                if c.unresponsive_threshold_days < 1 {
                    return Err(reject(
                        RejectReason::InvalidField,
                        format!(
                            "unresponsive_threshold_days must be at least 1, got {}",
                            c.unresponsive_threshold_days
                        ),
                    ));
                }
                (
                    format!("connector:{kt}/{kp}@{}", c.updated_at),
                    "settings updated",
                )
            }
            None => (
                format!("connector:{kt}/{kp}@deprovisioned"),
                "connector deleted",
            ),
        };
        let tenant = self.tenants.intern(kt);
        let conn = self
            .tenants
            .tables_mut(tenant)
            .connectors
            .entry(partner)
            .or_default();
        match cfg {
            Some(c) => {
                if let Some(old) = &conn.config {
                    not_older("updated_at", c.updated_at, old.updated_at, "the settings")?;
                    if old == c {
                        return Ok(());
                    }
                }
                if c.provisioned && c.setup_complete {
                    conn.set_up_since.get_or_insert(c.updated_at);
                } else {
                    conn.set_up_since = None;
                }
                conn.config = Some(c.clone());
            }
            None => {
                if conn.config.is_none() {
                    return Ok(());
                }
                conn.config = None;
                conn.set_up_since = None;
            }
        }
        self.refresh_connector(tenant, partner, now, &cause, hint, out);
        Ok(())
    }

    fn apply_policy(
        &mut self,
        key: Option<&[u8]>,
        policy: Option<&ThreatPolicy>,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Applied {
        let (kt, kp) = split(key)?;
        if let Some(p) = policy {
            check_tenant(kt, &p.tenant_id)?;
            check_field("policy_id", kp, &p.policy_id)?;
            validate_policy(p)?;
        }
        let tenant = self.tenants.intern(kt);
        let tables = self.tenants.tables_mut(tenant);
        let cause = match policy {
            Some(p) => {
                if let Some(old) = tables.policies.get(kp) {
                    not_older("updated_at", p.updated_at, old.updated_at, "the policy")?;
                }
                tables.policies.insert(kp.to_owned(), p.clone());
                format!("policy:{kt}/{kp}@{}", p.updated_at)
            }
            None => {
                if tables.policies.remove(kp).is_none() {
                    return Ok(());
                }
                format!("policy:{kt}/{kp}@deleted")
            }
        };
        self.fan_out(tenant, now, &cause, out);
        Ok(())
    }

    // ---- shared steps --------------------------------------------------------------------

    /// Re-derives a connector's status, publishes a change, reschedules its deadline and
    /// re-evaluates the devices whose view changed.
    fn refresh_connector(
        &mut self,
        tenant: TenantId,
        partner: PartnerIdx,
        now: i64,
        cause: &str,
        hint: &str,
        out: &mut Vec<Output>,
    ) {
        let tenant_name = self.tenants.name(tenant).to_owned();
        let catalogue = self.catalogue.clone();
        let tables = self.tenants.tables_mut(tenant);
        let Some(conn) = tables.connectors.get_mut(&partner) else {
            return;
        };
        let new = conn.derive(partner, &catalogue, now);
        let old = conn.published;
        if new != old {
            conn.published = new;
            out.push(Output::ConnectorStatus(ConnectorStatusChange {
                tenant_id: tenant_name.clone(),
                partner_id: catalogue.partner(partner).id.clone(),
                previous: old.status,
                current: new.status,
                compliance_ignored: new.compliance_ignored,
                last_heartbeat_at: conn.last_heartbeat_at,
                changed_at: now,
                reason: status_reason(conn, old, new, hint, &catalogue, partner),
            }));
        }
        let next = conn.next_deadline(now);
        let prev = conn.scheduled;
        if prev != next {
            if let Some(at) = prev {
                self.timers.remove(&(at, tenant, partner));
            }
            if let Some(at) = next {
                self.timers.insert((at, tenant, partner));
            }
            let conn = self
                .tenants
                .tables_mut(tenant)
                .connectors
                .get_mut(&partner)
                .expect("connector exists");
            conn.scheduled = next;
        }
        self.fan_out(tenant, now, cause, out);
    }

    /// Rebuilds a tenant's views and re-evaluates its devices on every platform whose view
    /// changed, in every shard; other tenants are never touched.
    fn fan_out(&mut self, tenant: TenantId, now: i64, cause: &str, out: &mut Vec<Output>) {
        let changed = self
            .tenants
            .tables_mut(tenant)
            .rebuild_views(&self.catalogue);
        if changed.is_empty() {
            return;
        }
        let tables = self.tenants.tables(tenant);
        let tenant_name = self.tenants.name(tenant);
        let mut partitions: Vec<i32> = self.shards.iter().map(|s| *s.key()).collect();
        partitions.sort_unstable();
        for partition in partitions {
            let Some(mut shard) = self.shards.get_mut(&partition) else {
                continue;
            };
            for &platform in &changed {
                let slots: Vec<Slot> = shard.on_platform(tenant, platform).to_vec();
                for slot in slots {
                    reevaluate(
                        &self.catalogue,
                        tables,
                        tenant_name,
                        &mut shard,
                        slot,
                        cause,
                        now,
                        &mut self.reasons,
                        out,
                    );
                }
            }
        }
    }

    fn partner_for(&self, partner_id: &str, platform: Platform) -> Result<PartnerIdx, Rejection> {
        let idx = self.known_partner(partner_id)?;
        if !self.catalogue.partner(idx).platforms.contains(platform) {
            return Err(reject(
                RejectReason::UnsupportedPlatform,
                format!("partner {partner_id} does not cover {platform}"),
            ));
        }
        Ok(idx)
    }

    fn known_partner(&self, partner_id: &str) -> Result<PartnerIdx, Rejection> {
        self.catalogue.index(partner_id).ok_or_else(|| {
            reject(
                RejectReason::UnknownPartner,
                format!("partner {partner_id:?} is not in the catalogue"),
            )
        })
    }

    fn check_skew(&self, field: &str, at: i64, now: i64) -> Applied {
        let ahead = at.saturating_sub(now);
        if ahead > self.settings.max_clock_skew_ms {
            return Err(reject(
                RejectReason::InvalidField,
                format!(
                    "{field} {at} is {ahead} ms ahead of the clock; at most {} ms of skew is accepted",
                    self.settings.max_clock_skew_ms
                ),
            ));
        }
        Ok(())
    }
}

fn status_reason(
    conn: &ConnectorState,
    old: Published,
    new: Published,
    hint: &str,
    catalogue: &Catalogue,
    partner: PartnerIdx,
) -> String {
    let cfg = conn.config.as_ref();
    match new.status {
        ConnectorStatus::Unavailable if cfg.is_none() => "no connector settings".to_owned(),
        ConnectorStatus::Unavailable if !catalogue.offered(partner) => {
            format!("partner is not offered in the {} cloud", catalogue.cloud())
        }
        ConnectorStatus::Unavailable => "connector is deprovisioned".to_owned(),
        ConnectorStatus::NotSetUp => "connector setup is not complete".to_owned(),
        ConnectorStatus::Unresponsive if new.compliance_ignored && !old.compliance_ignored => {
            format!(
                "no heartbeat for {} days: compliance data ignored",
                cfg.map_or(7, |c| c.unresponsive_threshold_days)
            )
        }
        ConnectorStatus::Unresponsive => format!(
            "no heartbeat for {} s",
            cfg.map_or(86_400, |c| c.heartbeat_timeout_seconds)
        ),
        _ if old.compliance_ignored && !new.compliance_ignored => {
            format!("{hint}: compliance data used again")
        }
        _ => hint.to_owned(),
    }
}

/// Re-evaluates one device and publishes what really changed.
#[allow(clippy::too_many_arguments)]
fn reevaluate(
    catalogue: &Catalogue,
    tables: &TenantTables,
    tenant_name: &str,
    shard: &mut DeviceShard,
    slot: Slot,
    cause: &str,
    now: i64,
    reasons: &mut Vec<ReasonNote>,
    out: &mut Vec<Output>,
) {
    let device = shard.get(slot);
    let view = tables.view(device.platform);
    match device.management {
        Management::Mdm => {
            let verdict = evaluate_compliance(view, device, None);
            if verdict.state == device.compliance {
                return;
            }
            reasons.clear();
            evaluate_compliance(view, device, Some(reasons));
            let device_id = device.id.as_string();
            let change = ComplianceChange {
                change_id: ids::output_id(
                    "compliance",
                    tenant_name,
                    &device_id,
                    device.output_seq,
                    cause,
                ),
                tenant_id: tenant_name.to_owned(),
                device_id,
                user_id: (!device.user.is_empty()).then(|| device.user.as_string()),
                platform: device.platform,
                previous: device.compliance,
                current: verdict.state,
                reasons: reasons
                    .drain(..)
                    .map(|r| Reason {
                        partner_id: catalogue.partner(r.partner).id.clone(),
                        code: r.code,
                        detail: r.detail,
                    })
                    .collect(),
                worst_level: verdict.worst_level,
                evaluated_at: now,
                cause_event_id: cause.to_owned(),
            };
            shard.set_compliance(slot, verdict.state);
            let d = shard.get_mut(slot);
            d.output_seq = d.output_seq.wrapping_add(1);
            shard.mark_dirty(slot);
            out.push(Output::Compliance(change));
        }
        Management::Mam => {
            let decision = evaluate_app_protection(view, device);
            let before = (
                device.has(flags::MAM_BLOCKED),
                device.has(flags::WIPE_INCIDENT),
            );
            if decision.actions.is_empty() && before == (decision.blocked, decision.wipe_incident) {
                return;
            }
            let device_id = device.id.as_string();
            let user = (!device.user.is_empty()).then(|| device.user.as_string());
            let mut seq = device.output_seq;
            for a in &decision.actions {
                let policy = a.policy.map(|i| &view.app_policies[i]);
                out.push(Output::AppAction(AppProtectionAction {
                    action_id: ids::output_id("app-action", tenant_name, &device_id, seq, cause),
                    tenant_id: tenant_name.to_owned(),
                    device_id: device_id.clone(),
                    user_id: user.clone(),
                    platform: device.platform,
                    partner_id: a
                        .partner
                        .map(|p| catalogue.partner(p).id.clone())
                        .unwrap_or_default(),
                    action: a.action,
                    level: a.level,
                    max_allowed_level: policy.map(|p| p.limit),
                    policy_id: policy.map(|p| p.policy_id.clone()).unwrap_or_default(),
                    issued_at: now,
                    cause_event_id: cause.to_owned(),
                }));
                seq = seq.wrapping_add(1);
            }
            let d = shard.get_mut(slot);
            d.output_seq = seq;
            d.set(flags::MAM_BLOCKED, decision.blocked);
            d.set(flags::WIPE_INCIDENT, decision.wipe_incident);
            shard.mark_dirty(slot);
        }
    }
}

/// For inputs read from a partner-bound topic: refuses a record that names another partner
/// (`SPOOFED`), so a vendor can only speak for itself.
pub fn check_partner_binding(body: &Body, bound: &str) -> Result<(), Rejection> {
    let named = match body {
        Body::Threat(r) => &r.partner_id,
        Body::Heartbeat(h) => &h.partner_id,
        _ => return Ok(()),
    };
    if named != bound {
        return Err(reject(
            RejectReason::Spoofed,
            format!("record names partner {named:?} but arrived on the topic bound to {bound:?}"),
        ));
    }
    Ok(())
}

fn split(key: Option<&[u8]>) -> Result<(&str, &str), Rejection> {
    key::split_key(key).map_err(|d| reject(RejectReason::InvalidField, format!("key: {d}")))
}

fn device_key(key: Option<&[u8]>) -> Result<(&str, &str), Rejection> {
    split(key)
}

/// Refuses an input older than the one already held (`STALE`).
fn not_older(field: &str, at: i64, held: i64, what: &str) -> Applied {
    if at < held {
        return Err(reject(
            RejectReason::Stale,
            format!("{field} {at} is older than {what} already held ({held})"),
        ));
    }
    Ok(())
}

fn check_tenant(key_tenant: &str, payload_tenant: &str) -> Applied {
    if key_tenant != payload_tenant {
        return Err(reject(
            RejectReason::TenantMismatch,
            format!("key names tenant {key_tenant:?} but the payload names {payload_tenant:?}"),
        ));
    }
    Ok(())
}

fn check_field(field: &str, from_key: &str, payload: &str) -> Applied {
    if from_key != payload {
        return Err(reject(
            RejectReason::InvalidField,
            format!("{field} {payload:?} differs from the key's {from_key:?}"),
        ));
    }
    Ok(())
}

fn blocked_connector(status: ConnectorStatus, tenant: &str, partner: &str) -> Applied {
    match status {
        ConnectorStatus::Unavailable => Err(reject(
            RejectReason::ConnectorUnavailable,
            format!("connector {tenant}/{partner} is UNAVAILABLE (not provisioned)"),
        )),
        ConnectorStatus::NotSetUp => Err(reject(
            RejectReason::ConnectorNotSetUp,
            format!("connector {tenant}/{partner} is NOT_SET_UP (setup incomplete)"),
        )),
        _ => Ok(()),
    }
}

fn validate_policy(p: &ThreatPolicy) -> Applied {
    let refuse = |d: String| Err(reject(RejectReason::PolicyRefused, d));
    match p.kind {
        PolicyKind::Compliance => {
            if p.action.is_some() || p.partner_priority.is_some() {
                return refuse(format!(
                    "policy {}: action and partner_priority apply to APP_PROTECTION policies only",
                    p.policy_id
                ));
            }
        }
        PolicyKind::AppProtection => {
            match p.action {
                None => {
                    return refuse(format!(
                        "policy {}: APP_PROTECTION needs action BLOCK or WIPE",
                        p.policy_id
                    ))
                }
                Some(PolicyAction::Warn) => {
                    return refuse(format!(
                        "policy {}: action WARN is not supported for MTD; use BLOCK or WIPE",
                        p.policy_id
                    ))
                }
                _ => {}
            }
            if p.max_level == PolicyLevel::NotSet {
                return refuse(format!(
                    "policy {}: APP_PROTECTION needs a max_level (NOT_SET is for COMPLIANCE)",
                    p.policy_id
                ));
            }
            if p.platform == Platform::Macos {
                return refuse(format!(
                    "policy {}: app protection is not available for MACOS",
                    p.policy_id
                ));
            }
        }
    }
    Ok(())
}
