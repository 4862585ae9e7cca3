//! The global tables every instance holds in full: tenants, their connectors and policies, and
//! per (tenant, platform) a precomputed view of what applies, so evaluating a device is a few
//! array reads.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::catalogue::{Catalogue, PartnerIdx};
use crate::model::{PartnerPriority, Platform, PolicyKind, ThreatLevel, ThreatPolicy};

use super::compact::OsVersion;
use super::connector::ConnectorState;
use super::policies::Enforcement;

/// Interned tenant id; stable for the life of the process, never written anywhere.
pub type TenantId = u32;

/// A partner whose data counts for compliance on one platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountingPartner {
    pub partner: PartnerIdx,
    pub defender: bool,
    pub blocked_on_missing_data: bool,
    /// Set when `unsupported_os_blocked` is on and the partner published a minimum.
    pub min_os: Option<OsVersion>,
}

/// An app protection policy with the partner its priority selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPolicy {
    pub policy_id: String,
    pub limit: ThreatLevel,
    pub action: Enforcement,
    pub partner: Option<PartnerIdx>,
}

/// What applies to devices of one tenant on one platform.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformView {
    /// Strictest compliance limit and the policy that sets it; `None` when no rule is on.
    pub compliance_limit: Option<(ThreatLevel, String)>,
    pub counting: SmallVec<[CountingPartner; 2]>,
    /// Partners whose toggle is on but whose data is ignored (connector unresponsive too long).
    pub ignored: SmallVec<[PartnerIdx; 2]>,
    /// Two or more non-Defender partners count: each must have submitted a scan.
    pub multi_vendor: bool,
    /// App protection policies ordered by policy id.
    pub app_policies: Vec<AppPolicy>,
}

/// One tenant's configuration.
#[derive(Debug, Default)]
pub struct TenantTables {
    pub connectors: BTreeMap<PartnerIdx, ConnectorState>,
    pub policies: BTreeMap<String, ThreatPolicy>,
    pub views: [PlatformView; 4],
}

impl TenantTables {
    /// Rebuilds the per-platform views; returns the platforms whose view changed.
    pub fn rebuild_views(&mut self, catalogue: &Catalogue) -> SmallVec<[Platform; 4]> {
        let mut changed = SmallVec::new();
        for &platform in Platform::ALL {
            let view = self.build_view(catalogue, platform);
            let slot = &mut self.views[platform.code() as usize];
            if *slot != view {
                *slot = view;
                changed.push(platform);
            }
        }
        changed
    }

    fn build_view(&self, catalogue: &Catalogue, platform: Platform) -> PlatformView {
        let mut view = PlatformView::default();
        for policy in self.policies.values() {
            if policy.platform != platform {
                continue;
            }
            match policy.kind {
                PolicyKind::Compliance => {
                    if let Some(limit) = policy.max_level.allowed() {
                        let stricter = view
                            .compliance_limit
                            .as_ref()
                            .is_none_or(|(l, _)| limit < *l);
                        if stricter {
                            view.compliance_limit = Some((limit, policy.policy_id.clone()));
                        }
                    }
                }
                PolicyKind::AppProtection => {
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
                    });
                }
            }
        }
        for (&idx, conn) in &self.connectors {
            let partner = catalogue.partner(idx);
            if !partner.compliance || !partner.platforms.contains(platform) {
                continue;
            }
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
                });
            } else if toggled && conn.published.compliance_ignored {
                view.ignored.push(idx);
            }
        }
        view.multi_vendor = view.counting.iter().filter(|c| !c.defender).count() >= 2;
        view
    }

    /// The single partner that counts for app protection under `priority`: Defender or the
    /// first third party in catalogue order.
    fn mam_partner(
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
                        && p.platforms.contains(platform)
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

    /// The view for `platform`.
    pub fn view(&self, platform: Platform) -> &PlatformView {
        &self.views[platform.code() as usize]
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
