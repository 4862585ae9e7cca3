//! Read-only explanations of the engine's state for operators: why a device has the verdict
//! it has, and where each connector stands against its deadlines. They are served through an
//! [`EngineReader`], which reads the tables and shards under their own locks, never the
//! pipeline's processing lock. Its `try_` reads, which the explain API uses, probe the shards
//! without blocking and give up with [`Busy`] when a lock they need stays held (a restore, a
//! reconcile or a re-evaluation writing the shard, a table change holding the tables).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::try_result::TryResult;
use dashmap::DashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::catalogue::Catalogue;
use crate::model::*;

pub use super::assignment::Scope;
use super::assignment::{ceiling, scope_of};
use super::connector::{traffic_refusal, ConnectorState};
use super::devices::{flags, Device, DeviceShard, Slot};
use super::evaluate::evaluate_compliance;
use super::tables::{TenantTables, Tenants};
use super::Engine;

/// One partner's view of a device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartnerExplanation {
    pub partner_id: String,
    pub health_state: HealthState,
    pub level: Option<ThreatLevel>,
    pub observed_at: i64,
    pub age_ms: i64,
    pub counts: bool,
    pub why: String,
    /// The worst threats (at most 3) of the partner's latest report.
    #[serde(default)]
    pub threats: Vec<Threat>,
}

/// Whether one policy of the device's tenant and platform applies to it, and what it judges.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyExplanation {
    pub policy_id: String,
    pub kind: PolicyKind,
    pub applies: bool,
    /// Why it applies or not: all users, a group included or excluded, no user.
    pub scope: Scope,
    /// The partners whose data it judges on this platform, with the ceiling it sets for each
    /// (COMPLIANCE), or the partner its priority chooses (APP_PROTECTION).
    pub judges: Vec<PartnerCeiling>,
}

/// A partner and the highest level a policy allows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartnerCeiling {
    pub partner_id: String,
    pub max_level: ThreatLevel,
}

/// A device's state and its current decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceExplanation {
    pub tenant_id: String,
    pub device_id: String,
    pub partition: i32,
    pub platform: Platform,
    pub management: Management,
    pub enrolled: bool,
    pub os_version: Option<String>,
    /// The device's user, and the groups the user is in.
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub compliance: ComplianceState,
    pub mam_blocked: bool,
    pub mam_wipe_incident: bool,
    pub partners: Vec<PartnerExplanation>,
    /// Pending deadlines, earliest first.
    #[serde(default)]
    pub deadlines: Vec<DeadlineExplanation>,
    /// Every policy of the tenant for the device's platform and management.
    #[serde(default)]
    pub policies: Vec<PolicyExplanation>,
    pub decision: Decision,
}

/// The decision the rules give now, with its reasons.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decision {
    pub state: Option<ComplianceState>,
    pub worst_level: Option<ThreatLevel>,
    pub reasons: Vec<Reason>,
    pub app_protection_policies: Vec<String>,
    /// For `IN_GRACE_PERIOD`: when the first running grace ends.
    #[serde(default)]
    pub grace_ends_at: Option<i64>,
}

/// What a pending deadline of a device is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeadlineKind {
    /// A COMPLIANCE policy's grace ends.
    GraceEnd,
    /// A partner's latest report expires (`report_validity_days`).
    ReportExpiry,
}

/// A pending deadline of a device and what happens then.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadlineExplanation {
    pub kind: DeadlineKind,
    pub at: i64,
    /// The policy whose grace ends, or the partner whose report expires.
    pub policy_id: Option<String>,
    pub partner_id: Option<String>,
    pub then: String,
}

/// A connector's status and deadlines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectorExplanation {
    pub partner_id: String,
    pub status: ConnectorStatus,
    pub compliance_ignored: bool,
    pub last_heartbeat_at: Option<i64>,
    pub error_code: i32,
    pub unresponsive_at: Option<i64>,
    pub ignored_at: Option<i64>,
    pub settings: Option<ConnectorConfig>,
}

/// Why a read that may not wait long gave up: the lock it needed stayed held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// A table change (connector settings, policies, memberships, ...) held the tables.
    Tables,
    /// A device shard was being written throughout: restore, reconcile or processing.
    Shard,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Busy::Tables => "the tables are being changed",
            Busy::Shard => "the device's shard is being written (restore, reconcile or processing)",
        })
    }
}

/// How long a read that found a shard locked waits, holding no lock, before it looks again.
const RETRY: Duration = Duration::from_millis(1);

/// A read-only handle on an engine's tables and shards, for other threads (the explain API).
#[derive(Clone)]
pub struct EngineReader {
    catalogue: Arc<Catalogue>,
    tenants: Arc<RwLock<Tenants>>,
    shards: Arc<DashMap<i32, DeviceShard>>,
}

impl EngineReader {
    pub(super) fn new(
        catalogue: Arc<Catalogue>,
        tenants: Arc<RwLock<Tenants>>,
        shards: Arc<DashMap<i32, DeviceShard>>,
    ) -> Self {
        EngineReader {
            catalogue,
            tenants,
            shards,
        }
    }

    /// Explains one device, wherever its partition is; `None` if this instance does not hold it.
    /// Waits for the tables and for each shard being written (see [`Self::try_explain_device`]
    /// for a read that never waits long).
    pub fn explain_device(
        &self,
        tenant: &str,
        device: &str,
        now: i64,
    ) -> Option<DeviceExplanation> {
        // Tables before shards, as the engine takes them.
        let tenants = self.tenants.read();
        let t = tenants.get(tenant)?;
        for shard in self.shards.iter() {
            if let Some(slot) = shard.find(t, device) {
                let tables = tenants.tables(t);
                return Some(self.explain_slot(
                    tables,
                    tenant,
                    device,
                    *shard.key(),
                    &shard,
                    slot,
                    now,
                ));
            }
        }
        None
    }

    /// [`Self::explain_device`] looking only in `partitions` (the assigned ones) and never
    /// waiting more than about `patience` for a lock: the tables' lock (held by a table change)
    /// or a shard's (held by restore, reconcile or processing while the shard is written).
    /// Shards are probed one by one without blocking; while one the device may be in is being
    /// written, every guard is dropped before trying again, so a waiting explain call never
    /// holds up the pipeline. `Err(Busy)` when the locks were not all had in time.
    pub fn try_explain_device(
        &self,
        tenant: &str,
        device: &str,
        now: i64,
        partitions: &[i32],
        patience: Duration,
    ) -> Result<Option<DeviceExplanation>, Busy> {
        let deadline = Instant::now() + patience;
        loop {
            // Tables before shards, as the engine takes them.
            let tenants = self.tenants.try_read_until(deadline).ok_or(Busy::Tables)?;
            let Some(t) = tenants.get(tenant) else {
                return Ok(None);
            };
            let mut locked = false;
            for &p in partitions {
                match self.shards.try_get(&p) {
                    TryResult::Present(shard) => {
                        if let Some(slot) = shard.find(t, device) {
                            let tables = tenants.tables(t);
                            return Ok(Some(
                                self.explain_slot(tables, tenant, device, p, &shard, slot, now),
                            ));
                        }
                    }
                    TryResult::Absent => {}
                    TryResult::Locked => locked = true,
                }
            }
            if !locked {
                return Ok(None);
            }
            drop(tenants);
            if Instant::now() >= deadline {
                return Err(Busy::Shard);
            }
            std::thread::sleep(RETRY);
        }
    }

    /// One device of `partition`, held at `slot` of `shard`.
    #[allow(clippy::too_many_arguments)]
    fn explain_slot(
        &self,
        tables: &TenantTables,
        tenant: &str,
        device: &str,
        partition: i32,
        shard: &DeviceShard,
        slot: Slot,
        now: i64,
    ) -> DeviceExplanation {
        let d = shard.get(slot);
        let view = tables.view(d.platform, d.user);
        let group_names = tables.group_names(d.user);
        let partners = d
            .observations
            .iter()
            .map(|o| {
                let id = self.catalogue.partner(o.partner).id.clone();
                let conn = tables.connectors.get(&o.partner);
                let (counts, why) = match d.management {
                    Management::Mdm => {
                        if view.counting.iter().any(|c| c.partner == o.partner) {
                            (
                                true,
                                "connector counts for compliance on this platform".to_owned(),
                            )
                        } else if view.ignored.contains(&o.partner) {
                            (
                                false,
                                "connector unresponsive beyond its threshold: data ignored"
                                    .to_owned(),
                            )
                        } else {
                            (false, not_counting(conn, "compliance"))
                        }
                    }
                    Management::Mam => {
                        if view
                            .app_policies
                            .iter()
                            .any(|p| p.partner == Some(o.partner))
                        {
                            (
                                true,
                                "the partner chosen by app protection priority".to_owned(),
                            )
                        } else {
                            (
                                false,
                                not_counting(
                                    conn,
                                    "app protection (or another partner has priority)",
                                ),
                            )
                        }
                    }
                };
                PartnerExplanation {
                    partner_id: id,
                    health_state: o.health,
                    level: o.health.level(),
                    observed_at: o.observed_at(),
                    age_ms: now - o.observed_at(),
                    counts,
                    why,
                    threats: tables.threats(shard.threats(slot, o.partner)),
                }
            })
            .collect();
        let decision = match d.management {
            Management::Mdm => {
                let mut notes = Vec::new();
                let v = evaluate_compliance(view, d, shard.graces(slot), now, Some(&mut notes));
                Decision {
                    state: Some(v.state),
                    worst_level: v.worst_level,
                    grace_ends_at: v.grace_ends_at,
                    reasons: notes
                        .into_iter()
                        .map(|n| Reason {
                            partner_id: self.catalogue.partner(n.partner).id.clone(),
                            threats: match n.code {
                                ReasonCode::LevelExceedsPolicy => {
                                    tables.threats(shard.threats(slot, n.partner))
                                }
                                _ => Vec::new(),
                            },
                            code: n.code,
                            detail: n.detail,
                        })
                        .collect(),
                    app_protection_policies: vec![],
                }
            }
            Management::Mam => Decision {
                state: None,
                worst_level: None,
                grace_ends_at: None,
                reasons: vec![],
                app_protection_policies: view
                    .app_policies
                    .iter()
                    .map(|p| format!("{} ({} above {})", p.policy_id, p.action, p.limit))
                    .collect(),
            },
        };
        DeviceExplanation {
            tenant_id: tenant.to_owned(),
            device_id: device.to_owned(),
            partition,
            platform: d.platform,
            management: d.management,
            enrolled: d.has(flags::ENROLLED),
            os_version: d.os.to_text(),
            user_id: tables.users.name(d.user),
            groups: group_names
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            compliance: d.compliance,
            mam_blocked: d.has(flags::MAM_BLOCKED),
            mam_wipe_incident: d.has(flags::WIPE_INCIDENT),
            partners,
            deadlines: self.explain_deadlines(tables, shard, slot, now),
            policies: self.explain_policies(tables, d, group_names.as_deref()),
            decision,
        }
    }

    /// The device's pending deadlines, earliest first: the end of each running grace and the
    /// expiry of each partner's latest usable report.
    fn explain_deadlines(
        &self,
        tables: &TenantTables,
        shard: &DeviceShard,
        slot: Slot,
        now: i64,
    ) -> Vec<DeadlineExplanation> {
        let d = shard.get(slot);
        let view = tables.view(d.platform, d.user);
        let mut out = Vec::new();
        for &(key, since) in shard.graces(slot) {
            let Some(p) = view.compliance.iter().find(|p| p.key == key) else {
                continue;
            };
            let at = since.saturating_add(p.grace_ms);
            if at > now {
                out.push(DeadlineExplanation {
                    kind: DeadlineKind::GraceEnd,
                    at,
                    policy_id: Some(p.policy_id.clone()),
                    partner_id: None,
                    then: format!(
                        "NONCOMPLIANT if the device still fails policy {}",
                        p.policy_id
                    ),
                });
            }
        }
        if let Some(v) = view.report_validity_ms {
            for o in d.observations.iter().filter(|o| o.health.level().is_some()) {
                let at = o.observed_at().saturating_add(v);
                if at > now {
                    out.push(DeadlineExplanation {
                        kind: DeadlineKind::ReportExpiry,
                        at,
                        policy_id: None,
                        partner_id: Some(self.catalogue.partner(o.partner).id.clone()),
                        then: "the partner's latest report expires: no usable data from it \
                               (REPORT_EXPIRED), unless a newer report arrives"
                            .to_owned(),
                    });
                }
            }
        }
        out.sort_by_key(|e| e.at);
        out
    }

    /// Every policy of the device's platform and kind (COMPLIANCE for enrolled devices,
    /// APP_PROTECTION for the others): whether it applies and what it judges.
    fn explain_policies(
        &self,
        tables: &TenantTables,
        d: &Device,
        groups: Option<&[&str]>,
    ) -> Vec<PolicyExplanation> {
        let kind = match d.management {
            Management::Mdm => PolicyKind::Compliance,
            Management::Mam => PolicyKind::AppProtection,
        };
        tables
            .policies
            .values()
            .filter(|p| p.platform == d.platform && p.kind == kind)
            .map(|p| {
                let scope = scope_of(p, groups);
                let judges = match kind {
                    PolicyKind::Compliance => tables
                        .connectors
                        .iter()
                        .filter(|(_, c)| {
                            c.config
                                .as_ref()
                                .is_some_and(|c| c.compliance_enabled(d.platform))
                        })
                        .filter_map(|(&idx, _)| {
                            let partner = self.catalogue.partner(idx);
                            let covers =
                                partner.compliance && partner.platforms.contains(d.platform);
                            let max_level = ceiling(p, partner.defender).filter(|_| covers)?;
                            Some(PartnerCeiling {
                                partner_id: partner.id.clone(),
                                max_level,
                            })
                        })
                        .collect(),
                    PolicyKind::AppProtection => {
                        let priority = p.partner_priority.unwrap_or(PartnerPriority::DefenderFirst);
                        tables
                            .mam_partner(&self.catalogue, d.platform, priority)
                            .zip(p.max_level.allowed())
                            .map(|(idx, max_level)| PartnerCeiling {
                                partner_id: self.catalogue.partner(idx).id.clone(),
                                max_level,
                            })
                            .into_iter()
                            .collect()
                    }
                };
                PolicyExplanation {
                    policy_id: p.policy_id.clone(),
                    kind,
                    applies: scope.applies(),
                    scope,
                    judges,
                }
            })
            .collect()
    }

    /// Explains every connector of a tenant.
    pub fn explain_connectors(&self, tenant: &str) -> Vec<ConnectorExplanation> {
        connectors_of(&self.catalogue, &self.tenants.read(), tenant)
    }

    /// [`Self::explain_connectors`] waiting at most `patience` for the tables' lock (held by a
    /// table change).
    pub fn try_explain_connectors(
        &self,
        tenant: &str,
        patience: Duration,
    ) -> Result<Vec<ConnectorExplanation>, Busy> {
        let tenants = self.tenants.try_read_for(patience).ok_or(Busy::Tables)?;
        Ok(connectors_of(&self.catalogue, &tenants, tenant))
    }
}

/// Every connector of `tenant`.
fn connectors_of(
    catalogue: &Catalogue,
    tenants: &Tenants,
    tenant: &str,
) -> Vec<ConnectorExplanation> {
    let Some(t) = tenants.get(tenant) else {
        return vec![];
    };
    tenants
        .tables(t)
        .connectors
        .iter()
        .map(|(&p, c)| ConnectorExplanation {
            partner_id: catalogue.partner(p).id.clone(),
            status: c.published.status,
            compliance_ignored: c.published.compliance_ignored,
            last_heartbeat_at: c.last_heartbeat_at,
            error_code: c.error_code,
            unresponsive_at: c.unresponsive_at(),
            ignored_at: c.ignored_at(),
            settings: c.config.clone(),
        })
        .collect()
}

impl Engine {
    /// Devices held and how many are noncompliant.
    pub fn device_counts(&self) -> (usize, usize) {
        let mut total = 0;
        let mut noncompliant = 0;
        for s in self.shards.iter() {
            total += s.len();
            noncompliant += s.noncompliant();
        }
        (total, noncompliant)
    }
}

fn not_counting(conn: Option<&ConnectorState>, what: &str) -> String {
    match conn {
        None => "no connector settings".to_owned(),
        Some(c) if traffic_refusal(c.published.status).is_some() => {
            format!("connector is {}", c.published.status)
        }
        Some(_) => format!("connector toggle for {what} is off"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::EngineSettings;

    /// An engine holding device `acme/d1` in partition 0.
    pub(crate) fn engine_with_device() -> Engine {
        let catalogue = Arc::new(Catalogue::builtin("public").expect("catalogue"));
        let engine = Engine::new(catalogue, EngineSettings::default());
        let record = DeviceStateRecord {
            tenant_id: "acme".into(),
            device_id: "d1".into(),
            user_id: None,
            platform: Platform::Ios,
            management: Management::Mdm,
            ownership: Some(Ownership::Corporate),
            os_version: Some("17.4".into()),
            enrolled: true,
            compliance: ComplianceState::Compliant,
            mam_blocked: false,
            mam_wipe_incident: false,
            output_seq: 1,
            partners: Vec::new(),
            graces: Vec::new(),
        };
        engine
            .restore(0, "acme/d1", Some(&record))
            .expect("restore");
        engine
    }

    const PATIENCE: Duration = Duration::from_millis(50);

    #[test]
    fn try_reads_give_up_on_a_held_lock_and_hold_none_meanwhile() {
        let engine = engine_with_device();
        let reader = engine.reader();
        let found = reader.try_explain_device("acme", "d1", 0, &[0, 1], PATIENCE);
        assert_eq!(found.expect("no lock held").expect("held").partition, 0);
        assert_eq!(
            reader.try_explain_device("acme", "nope", 0, &[0, 1], PATIENCE),
            Ok(None)
        );
        assert_eq!(
            reader.try_explain_device("other", "d1", 0, &[0], PATIENCE),
            Ok(None)
        );

        // A shard being written (restore, reconcile, re-evaluation): busy, not blocked.
        {
            let _writing = engine.shards.get_mut(&0).expect("shard");
            let t = Instant::now();
            let r = reader.try_explain_device("acme", "d1", 0, &[0], PATIENCE);
            assert_eq!(r.map(|x| x.is_some()), Err(Busy::Shard));
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
            // While it waits, the reader holds no lock: the tables stay writable.
            std::thread::scope(|s| {
                let waiting = s.spawn(|| {
                    reader.try_explain_device("acme", "d1", 0, &[0], Duration::from_millis(300))
                });
                std::thread::sleep(Duration::from_millis(50));
                let t = Instant::now();
                drop(engine.tenants.write());
                assert!(
                    t.elapsed() < Duration::from_millis(100),
                    "{:?}",
                    t.elapsed()
                );
                assert_eq!(
                    waiting.join().unwrap().map(|x| x.is_some()),
                    Err(Busy::Shard)
                );
            });
        }
        // A table change holding the tables.
        {
            let _changing = engine.tenants.write();
            let r = reader.try_explain_device("acme", "d1", 0, &[0], PATIENCE);
            assert_eq!(r.map(|x| x.is_some()), Err(Busy::Tables));
            assert_eq!(
                reader
                    .try_explain_connectors("acme", PATIENCE)
                    .map(|c| c.len()),
                Err(Busy::Tables)
            );
        }
        assert!(reader
            .try_explain_device("acme", "d1", 0, &[0], PATIENCE)
            .expect("locks free again")
            .is_some());
    }
}
