//! Tenant settings (contract 1.1): `no_policy_state`, the state of an enrolled device no
//! COMPLIANCE policy applies to, and `report_validity_days` (1 to 120, else `INVALID_FIELD`).
//! The key is the tenant alone. A tombstone restores the defaults; settings older than the
//! ones held are `STALE`. A change re-evaluates the tenant's devices whose view it changes.

use crate::model::*;

use super::checks::{check_tenant, not_older};
use super::tables::SettingsState;
use super::{Applied, Engine, Rejection};

/// Longest report validity the contract allows, in days.
pub const MAX_REPORT_VALIDITY_DAYS: i32 = 120;

impl Engine {
    pub(super) fn apply_settings(
        &mut self,
        tenant_key: &str,
        s: Option<&TenantSettings>,
        now: i64,
        out: &mut Vec<Output>,
    ) -> Applied {
        if let Some(s) = s {
            check_tenant(tenant_key, &s.tenant_id)?;
            if let Some(days) = s.report_validity_days {
                if !(1..=MAX_REPORT_VALIDITY_DAYS).contains(&days) {
                    return Err(Rejection::new(
                        RejectReason::InvalidField,
                        format!(
                            "report_validity_days must be 1 to {MAX_REPORT_VALIDITY_DAYS} \
                             (or null for never), got {days}"
                        ),
                    ));
                }
            }
        }
        let mut tenants = self.tenants.write();
        let tenant = tenants.intern(tenant_key);
        let tables = tenants.tables_mut(tenant);
        let next = match s {
            Some(s) => {
                if let Some(old) = tables.settings.updated_at {
                    not_older("updated_at", s.updated_at, old, "the settings")?;
                }
                SettingsState {
                    no_policy_state: s.no_policy_state,
                    report_validity_days: s.report_validity_days,
                    updated_at: Some(s.updated_at),
                }
            }
            None => SettingsState::default(),
        };
        if tables.settings == next {
            return Ok(());
        }
        let cause = match next.updated_at {
            Some(at) => format!("tenant-settings:{tenant_key}@{at}"),
            None => format!("tenant-settings:{tenant_key}@deleted"),
        };
        tables.settings = next;
        drop(tenants);
        self.fan_out(tenant, now, &cause, out);
        Ok(())
    }
}

use super::Output;
