//! Connector settings from the admin side: a tombstone deprovisions the connector. Settings
//! older than the ones held are `STALE`, an unchanged copy is a no-op, and a heartbeat timeout
//! under 1 s or an unresponsive threshold under 1 day is `INVALID_FIELD`.
//!
//! App protection toggles (contract 1.1): a `*_mam_enabled` toggle for a platform the partner
//! does not support app protection on, or one that would give a platform a second third-party
//! app protection partner in the tenant (Defender plus one is allowed), has no effect. The
//! rest of the settings apply, and a rejected-event record (`INVALID_FIELD` or
//! `CONFLICTING_CONNECTOR`) names the toggle. The partner that enabled it first keeps it.

use crate::catalogue::PartnerIdx;
use crate::model::*;

use super::checks::not_older;
use super::tables::TenantTables;
use super::{Applied, Engine, Input, Output, Rejection};

impl Engine {
    pub(super) fn apply_connector(
        &mut self,
        input: Input<'_>,
        cfg: Option<&ConnectorConfig>,
    ) -> Applied {
        let (kt, kp) = (input.tenant, input.id);
        let partner = self.known_partner(kp)?;
        let (cause, hint) = match cfg {
            Some(c) => {
                input.check_ids(&c.tenant_id, "partner_id", &c.partner_id)?;
                at_least_one("heartbeat_timeout_seconds", c.heartbeat_timeout_seconds)?;
                at_least_one(
                    "unresponsive_threshold_days",
                    c.unresponsive_threshold_days.into(),
                )?;
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
        let mut tenants = self.tenants.write();
        let tenant = tenants.intern(kt);
        // The settings as they take effect: refused app protection toggles off.
        let mut refusals = Vec::new();
        let effective = cfg.map(|c| {
            let mut c = c.clone();
            refusals = self.refuse_mam_toggles(tenants.tables(tenant), partner, &mut c);
            c
        });
        // Refused toggles are reported only when the rest of the settings is applied.
        let refused = |out: &mut Vec<Output>, refusals: Vec<Rejection>| {
            out.extend(refusals.into_iter().map(Output::Rejected));
        };
        let cfg = effective.as_ref();
        let (_, conn) = tenants.connector_entry(kt, partner);
        match cfg {
            Some(c) => {
                if let Some(old) = &conn.config {
                    not_older("updated_at", c.updated_at, old.updated_at, "the settings")?;
                    if old == c {
                        refused(input.out, refusals);
                        return Ok(());
                    }
                }
                // The silence clock starts when the connector is first seen set up.
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
        drop(tenants);
        refused(input.out, refusals);
        self.refresh_connector(tenant, partner, input.now, &cause, hint, input.out);
        Ok(())
    }
}

impl Engine {
    /// Turns off the app protection toggles of `c` that cannot take effect, with a refusal for
    /// each: a platform the partner does not support, or a second third-party partner on a
    /// platform (another connector of the tenant already has it on).
    fn refuse_mam_toggles(
        &self,
        tables: &TenantTables,
        partner: PartnerIdx,
        c: &mut ConnectorConfig,
    ) -> Vec<Rejection> {
        let info = self.catalogue.partner(partner);
        let mut refusals = Vec::new();
        for &platform in MAM_PLATFORMS {
            if !c.mam_enabled(platform) {
                continue;
            }
            let toggle = format!("{}_mam_enabled", platform.as_str().to_ascii_lowercase());
            if !info.mam_platforms.contains(platform) {
                set_mam(c, platform, false);
                refusals.push(Rejection::new(
                    RejectReason::InvalidField,
                    format!(
                        "{toggle}: {} does not support app protection on {platform}; the toggle \
                         has no effect, the rest of the settings apply",
                        info.id
                    ),
                ));
                continue;
            }
            if info.defender {
                continue;
            }
            let holder = tables.connectors.iter().find(|(&idx, other)| {
                idx != partner
                    && !self.catalogue.partner(idx).defender
                    && other
                        .config
                        .as_ref()
                        .is_some_and(|o| o.mam_enabled(platform))
            });
            if let Some((&idx, _)) = holder {
                set_mam(c, platform, false);
                refusals.push(Rejection::new(
                    RejectReason::ConflictingConnector,
                    format!(
                        "{toggle}: {} already provides app protection on {platform} for this \
                         tenant (Defender plus one third-party partner is allowed); the toggle \
                         has no effect, the rest of the settings apply",
                        self.catalogue.partner(idx).id
                    ),
                ));
            }
        }
        refusals
    }
}

/// Platforms with an app protection toggle.
const MAM_PLATFORMS: &[Platform] = &[Platform::Android, Platform::Ios, Platform::Windows];

fn set_mam(c: &mut ConnectorConfig, platform: Platform, on: bool) {
    match platform {
        Platform::Android => c.android_mam_enabled = on,
        Platform::Ios => c.ios_mam_enabled = on,
        Platform::Windows => c.windows_mam_enabled = on,
        Platform::Macos => {}
    }
}

fn at_least_one(field: &str, value: i64) -> Applied {
    if value < 1 {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{field} must be at least 1, got {value}"),
        ));
    }
    Ok(())
}
