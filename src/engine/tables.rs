//! The global tables every instance holds in full: tenants, their connectors, policies,
//! settings and users with their groups, and per (tenant, platform, scope) a precomputed view
//! of what applies, so evaluating a device is a few array reads.
//!
//! A scope is the set of policies that apply to a user; users whose group sets give the same
//! applicable policies share one view, so a tenant with many group combinations still builds
//! only as many views as there are distinct assignments.

use std::collections::{BTreeMap, HashMap};

use smallvec::SmallVec;

use crate::catalogue::{Catalogue, PartnerIdx};
use crate::model::{
    ComplianceState, NoPolicyState, PartnerPriority, Platform, PolicyKind, Threat, ThreatLevel,
    ThreatPolicy,
};

use super::assignment::{ceiling, ResolvedScope};
use super::compact::OsVersion;
use super::connector::ConnectorState;
use super::policies::Enforcement;
use super::users::{
    GroupId, Interner, ListInterner, SetId, ThreatLists, ThreatSetId, UserId, Users,
};

/// Interned tenant id; stable for the life of the process, never written anywhere.
pub type TenantId = u32;

/// Interned policy id of one tenant.
pub type PolicyKey = u32;
/// A policy id not interned (never matches a grace).
pub const NO_POLICY_KEY: PolicyKey = u32::MAX;

const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// A partner whose data counts for compliance on one platform, for the devices of one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountingPartner {
    pub partner: PartnerIdx,
    pub defender: bool,
    pub blocked_on_missing_data: bool,
    /// Set when `unsupported_os_blocked` is on and the partner published a minimum.
    pub min_os: Option<OsVersion>,
    /// The strictest ceiling the applicable policies set for this partner's data, and the
    /// first policy (by id) that sets it.
    pub limit: ThreatLevel,
    pub policy_id: String,
}

/// An applicable COMPLIANCE policy: its grace and the ceiling it sets for each counting
/// partner whose data it judges. A device fails the policy when one of those partners exceeds
/// its ceiling or fails regardless of level (missing data, expired report, unsupported OS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgingPolicy {
    /// Interned policy id ([`TenantTables::policy_keys`]), what device graces are kept by.
    pub key: PolicyKey,
    pub policy_id: String,
    /// `grace_period_hours` in milliseconds.
    pub grace_ms: i64,
    pub ceilings: SmallVec<[(PartnerIdx, ThreatLevel); 2]>,
}

/// An app protection policy with the partner its priority selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPolicy {
    pub policy_id: String,
    pub limit: ThreatLevel,
    pub action: Enforcement,
    pub partner: Option<PartnerIdx>,
    /// No usable data from the partner counts as exceeding.
    pub block_on_missing_data: bool,
}

/// What applies to the devices of one tenant on one platform whose users share a scope (the
/// same applicable policies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformView {
    /// Some COMPLIANCE policy applies; without one the device takes `no_policy_state`.
    pub any_compliance_policy: bool,
    pub no_policy_state: ComplianceState,
    pub counting: SmallVec<[CountingPartner; 2]>,
    /// Partners judged by an applicable policy whose toggle is on but whose data is ignored
    /// (connector unresponsive too long).
    pub ignored: SmallVec<[PartnerIdx; 2]>,
    /// Two or more non-Defender partners count: each must have submitted a scan.
    pub multi_vendor: bool,
    /// Applicable COMPLIANCE policies, by id.
    pub compliance: SmallVec<[JudgingPolicy; 2]>,
    /// The tenant's `report_validity_days` in milliseconds: a partner's latest report older
    /// than this is no usable data.
    pub report_validity_ms: Option<i64>,
    /// Applicable app protection policies ordered by policy id.
    pub app_policies: Vec<AppPolicy>,
}

impl Default for PlatformView {
    fn default() -> Self {
        PlatformView {
            any_compliance_policy: false,
            no_policy_state: ComplianceState::NotEvaluated,
            counting: SmallVec::new(),
            ignored: SmallVec::new(),
            multi_vendor: false,
            compliance: SmallVec::new(),
            report_validity_ms: None,
            app_policies: Vec::new(),
        }
    }
}

/// The views of one platform: one per distinct scope, and the scope of every group set.
#[derive(Debug, Default)]
pub struct PlatformScopes {
    /// The scope of each group set, two bytes per set: a tenant has far fewer distinct
    /// assignments per platform than 65,535; scopes past that are found in `overflow`.
    scope_of_set: Vec<u16>,
    overflow: HashMap<SetId, u32>,
    views: Vec<PlatformView>,
    by_key: HashMap<Vec<u16>, u32>,
}

const OVERFLOW: u16 = u16::MAX;

impl PlatformScopes {
    /// The view for users in group set `set`.
    pub fn view(&self, set: SetId) -> &PlatformView {
        static EMPTY: std::sync::OnceLock<PlatformView> = std::sync::OnceLock::new();
        let scope = match self.scope_of_set.get(set as usize) {
            Some(&OVERFLOW) => self.overflow.get(&set).copied(),
            Some(&scope) => Some(scope as u32),
            None => None,
        };
        match scope {
            Some(scope) => &self.views[scope as usize],
            None => EMPTY.get_or_init(PlatformView::default),
        }
    }

    /// Records the scope of the next group set.
    fn push(&mut self, scope: u32) {
        let set = self.scope_of_set.len() as SetId;
        match u16::try_from(scope) {
            Ok(s) if s != OVERFLOW => self.scope_of_set.push(s),
            _ => {
                self.overflow.insert(set, scope);
                self.scope_of_set.push(OVERFLOW);
            }
        }
    }

    /// Distinct scopes.
    pub fn scopes(&self) -> usize {
        self.views.len()
    }
}

/// Tenant settings in effect (the defaults until a record arrives).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsState {
    pub no_policy_state: NoPolicyState,
    pub report_validity_days: Option<i32>,
    /// `updated_at` of the record held.
    pub updated_at: Option<i64>,
}

/// One tenant's configuration.
#[derive(Debug)]
pub struct TenantTables {
    pub connectors: BTreeMap<PartnerIdx, ConnectorState>,
    pub policies: BTreeMap<String, ThreatPolicy>,
    pub settings: SettingsState,
    pub users: Users,
    pub groups: Interner<Box<str>>,
    /// Sorted group sets; id 0 is the empty set.
    pub group_sets: ListInterner<GroupId>,
    /// Threat lists (worst first, at most 3); id 0 is the empty list.
    pub threat_sets: ThreatLists,
    /// Policy ids, interned so device graces name a policy in four bytes.
    pub policy_keys: Interner<Box<str>>,
    platforms: [PlatformScopes; 4],
}

impl Default for TenantTables {
    fn default() -> Self {
        let mut t = TenantTables {
            connectors: BTreeMap::new(),
            policies: BTreeMap::new(),
            settings: SettingsState::default(),
            users: Users::default(),
            groups: Interner::default(),
            group_sets: ListInterner::default(),
            threat_sets: ThreatLists::default(),
            policy_keys: Interner::default(),
            platforms: Default::default(),
        };
        for p in &mut t.platforms {
            p.scope_of_set.push(0);
            p.views.push(PlatformView::default());
            p.by_key.insert(Vec::new(), 0);
        }
        t
    }
}

/// Per platform, which group sets got another view (`None`: no set did).
pub type ChangedSets = [Option<Vec<bool>>; 4];

impl TenantTables {
    /// Rebuilds every platform's views; returns, per platform, the group sets whose view
    /// changed.
    pub fn rebuild_views(&mut self, catalogue: &Catalogue) -> ChangedSets {
        let mut changed: ChangedSets = Default::default();
        for &platform in Platform::ALL {
            let mut fresh = PlatformScopes::default();
            let policies = self.platform_policies(platform);
            for set in 0..self.group_sets.len() as SetId {
                let scope = self.scope_for(catalogue, platform, &policies, &mut fresh, set);
                fresh.push(scope);
            }
            let old = &self.platforms[platform.code() as usize];
            let diff: Vec<bool> = (0..self.group_sets.len() as SetId)
                .map(|s| old.view(s) != fresh.view(s))
                .collect();
            if diff.iter().any(|&d| d) {
                changed[platform.code() as usize] = Some(diff);
            }
            self.platforms[platform.code() as usize] = fresh;
        }
        changed
    }

    /// Gives a newly interned group set its scope on every platform.
    pub fn scope_new_set(&mut self, catalogue: &Catalogue, set: SetId) {
        for &platform in Platform::ALL {
            if self.platforms[platform.code() as usize].scope_of_set.len() > set as usize {
                continue;
            }
            let mut scopes = std::mem::take(&mut self.platforms[platform.code() as usize]);
            let policies = self.platform_policies(platform);
            let scope = self.scope_for(catalogue, platform, &policies, &mut scopes, set);
            drop(policies);
            scopes.push(scope);
            self.platforms[platform.code() as usize] = scopes;
        }
    }

    /// The policies of `platform` (both kinds, by id) with their groups resolved.
    fn platform_policies(&self, platform: Platform) -> Vec<(&ThreatPolicy, ResolvedScope)> {
        self.policies
            .values()
            .filter(|p| p.platform == platform)
            .map(|p| (p, ResolvedScope::new(p, &self.groups)))
            .collect()
    }

    /// The scope of group set `set`: found by the applicable policies, built on first sight.
    fn scope_for(
        &self,
        catalogue: &Catalogue,
        platform: Platform,
        policies: &[(&ThreatPolicy, ResolvedScope)],
        scopes: &mut PlatformScopes,
        set: SetId,
    ) -> u32 {
        let groups = self.group_sets.resolve(set);
        let key: Vec<u16> = policies
            .iter()
            .enumerate()
            .filter(|(_, (_, scope))| scope.applies(groups))
            .map(|(i, _)| i as u16)
            .collect();
        if let Some(&scope) = scopes.by_key.get(&key) {
            return scope;
        }
        let applicable: Vec<&ThreatPolicy> = key.iter().map(|&i| policies[i as usize].0).collect();
        let view = self.build_view(catalogue, platform, &applicable);
        let scope = scopes.views.len() as u32;
        scopes.views.push(view);
        scopes.by_key.insert(key, scope);
        scope
    }

    fn build_view(
        &self,
        catalogue: &Catalogue,
        platform: Platform,
        applicable: &[&ThreatPolicy],
    ) -> PlatformView {
        let compliance: Vec<&ThreatPolicy> = applicable
            .iter()
            .copied()
            .filter(|p| p.kind == PolicyKind::Compliance)
            .collect();
        let mut view = PlatformView {
            any_compliance_policy: !compliance.is_empty(),
            no_policy_state: self.settings.no_policy_state.state(),
            report_validity_ms: self
                .settings
                .report_validity_days
                .map(|d| d as i64 * MS_PER_DAY),
            ..PlatformView::default()
        };
        for policy in applicable {
            if policy.kind != PolicyKind::AppProtection {
                continue;
            }
            let action = policy.action.and_then(Enforcement::of);
            let (Some(limit), Some(action)) = (policy.max_level.allowed(), action) else {
                continue;
            };
            let partner = self.mam_partner(
                catalogue,
                platform,
                policy
                    .partner_priority
                    .unwrap_or(PartnerPriority::DefenderFirst),
            );
            view.app_policies.push(AppPolicy {
                policy_id: policy.policy_id.clone(),
                limit,
                action,
                partner,
                block_on_missing_data: policy.block_on_missing_data,
            });
        }
        for (&idx, conn) in &self.connectors {
            let partner = catalogue.partner(idx);
            if !partner.compliance || !partner.platforms.contains(platform) {
                continue;
            }
            // The strictest ceiling of the applicable policies that judge this partner.
            let mut judged: Option<(ThreatLevel, &str)> = None;
            for p in &compliance {
                if let Some(c) = ceiling(p, partner.defender) {
                    if judged.is_none_or(|(l, _)| c < l) {
                        judged = Some((c, &p.policy_id));
                    }
                }
            }
            let Some((limit, policy_id)) = judged else {
                continue;
            };
            let toggled = conn
                .config
                .as_ref()
                .is_some_and(|c| c.compliance_enabled(platform));
            if conn.counts_for_compliance(platform) {
                let cfg = conn.config.as_ref().expect("counting connector has config");
                let min = conn.min_os[platform.code() as usize];
                view.counting.push(CountingPartner {
                    partner: idx,
                    defender: partner.defender,
                    blocked_on_missing_data: cfg.blocked_on_missing_data(platform),
                    min_os: (cfg.unsupported_os_blocked && min.is_known()).then_some(min),
                    limit,
                    policy_id: policy_id.to_owned(),
                });
            } else if toggled && conn.published.compliance_ignored {
                view.ignored.push(idx);
            }
        }
        view.multi_vendor = view.counting.iter().filter(|c| !c.defender).count() >= 2;
        for p in &compliance {
            let ceilings = view
                .counting
                .iter()
                .filter_map(|cp| {
                    let defender = catalogue.partner(cp.partner).defender;
                    ceiling(p, defender).map(|c| (cp.partner, c))
                })
                .collect();
            view.compliance.push(JudgingPolicy {
                key: self
                    .policy_keys
                    .get(p.policy_id.as_str())
                    .unwrap_or(NO_POLICY_KEY),
                policy_id: p.policy_id.clone(),
                grace_ms: p.grace_period_hours.max(0) as i64 * MS_PER_HOUR,
                ceilings,
            });
        }
        view
    }

    /// The single partner that counts for app protection under `priority`: Defender or the
    /// first third party in catalogue order.
    pub fn mam_partner(
        &self,
        catalogue: &Catalogue,
        platform: Platform,
        priority: PartnerPriority,
    ) -> Option<PartnerIdx> {
        let eligible = |defender: bool| {
            self.connectors
                .iter()
                .filter(|(&idx, c)| {
                    let p = catalogue.partner(idx);
                    p.defender == defender
                        && p.mam_platforms.contains(platform)
                        && c.counts_for_mam(platform)
                })
                .map(|(&idx, _)| idx)
                .next()
        };
        match priority {
            PartnerPriority::DefenderFirst => eligible(true).or_else(|| eligible(false)),
            PartnerPriority::ThirdPartyFirst => eligible(false).or_else(|| eligible(true)),
        }
    }

    /// The view for a device of `user` on `platform`.
    pub fn view(&self, platform: Platform, user: UserId) -> &PlatformView {
        self.platforms[platform.code() as usize].view(self.users.groups(user))
    }

    /// The scopes of `platform`.
    pub fn scopes(&self, platform: Platform) -> &PlatformScopes {
        &self.platforms[platform.code() as usize]
    }

    /// The threats of threat list `id`.
    pub fn threats(&self, id: ThreatSetId) -> Vec<Threat> {
        self.threat_sets.resolve(id)
    }

    /// The names of the groups of user `user` (`None` for [`super::users::NO_USER`]).
    pub fn group_names(&self, user: UserId) -> Option<Vec<&str>> {
        if !self.users.contains(user) {
            return None;
        }
        Some(
            self.group_sets
                .resolve(self.users.groups(user))
                .iter()
                .map(|&g| self.groups.resolve(g).as_ref())
                .collect(),
        )
    }
}

/// All tenants, interned.
#[derive(Debug, Default)]
pub struct Tenants {
    /// Looked up for every input: hashbrown's default hasher (foldhash) costs a fraction of
    /// SipHash on 36-character tenant GUIDs.
    ids: hashbrown::HashMap<Box<str>, TenantId>,
    names: Vec<Box<str>>,
    tables: Vec<TenantTables>,
}

impl Tenants {
    /// The id of `name`, if the tenant has been seen.
    pub fn get(&self, name: &str) -> Option<TenantId> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, interning it on first sight.
    pub fn intern(&mut self, name: &str) -> TenantId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as TenantId;
        self.ids.insert(name.into(), id);
        self.names.push(name.into());
        self.tables.push(TenantTables::default());
        id
    }

    pub fn name(&self, id: TenantId) -> &str {
        &self.names[id as usize]
    }

    pub fn tables(&self, id: TenantId) -> &TenantTables {
        &self.tables[id as usize]
    }

    pub fn tables_mut(&mut self, id: TenantId) -> &mut TenantTables {
        &mut self.tables[id as usize]
    }

    /// A tenant's connector state for `partner`, both created on first sight.
    pub fn connector_entry(
        &mut self,
        tenant: &str,
        partner: PartnerIdx,
    ) -> (TenantId, &mut ConnectorState) {
        let id = self.intern(tenant);
        let conn = self.tables_mut(id).connectors.entry(partner).or_default();
        (id, conn)
    }

    /// Number of tenants seen.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
