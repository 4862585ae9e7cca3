//! Threat policies from the admin side: a tombstone deletes the policy; one older than the one
//! held is `STALE`. A COMPLIANCE policy with an action or partner priority, an APP_PROTECTION
//! policy without `BLOCK` or `WIPE` (`WARN` is not an MTD action) or with a `NOT_SET` level,
//! and macOS app protection are refused (`POLICY_REFUSED`), as are the 1.1 fields on the other
//! kind (`block_on_missing_data` on COMPLIANCE, `defender_max_level` on APP_PROTECTION) and an
//! empty group id. A change re-evaluates the tenant's devices whose view it changes: on the
//! policy's platform, those whose users' groups put them in scope of the old or new version.

use crate::model::*;

use super::checks::not_older;
use super::{Applied, Engine, Input, Rejection};

/// Longest grace a COMPLIANCE policy may give (a year).
pub const MAX_GRACE_PERIOD_HOURS: i32 = 8760;

/// What an accepted APP_PROTECTION policy does when its limit is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    Block,
    Wipe,
}

impl Enforcement {
    /// The enforcement of a policy action; `WARN` has none in MTD.
    pub fn of(action: PolicyAction) -> Option<Enforcement> {
        match action {
            PolicyAction::Block => Some(Enforcement::Block),
            PolicyAction::Wipe => Some(Enforcement::Wipe),
            PolicyAction::Warn => None,
        }
    }

    /// The contract's symbol of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Block => PolicyAction::Block.as_str(),
            Enforcement::Wipe => PolicyAction::Wipe.as_str(),
        }
    }
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Engine {
    pub(super) fn apply_policy(&mut self, input: Input<'_>, p: Option<&ThreatPolicy>) -> Applied {
        let (kt, kp, policy) = (input.tenant, input.id, p);
        if let Some(p) = policy {
            input.check_ids(&p.tenant_id, "policy_id", &p.policy_id)?;
            validate(p)?;
        }
        let mut tenants = self.tenants.write();
        let tenant = tenants.intern(kt);
        let tables = tenants.tables_mut(tenant);
        let cause = match policy {
            Some(p) => {
                if let Some(old) = tables.policies.get(kp) {
                    not_older("updated_at", p.updated_at, old.updated_at, "the policy")?;
                }
                tables.policies.insert(kp.to_owned(), p.clone());
                tables.policy_keys.intern(kp.into());
                format!("policy:{kt}/{kp}@{}", p.updated_at)
            }
            None => {
                if tables.policies.remove(kp).is_none() {
                    return Ok(());
                }
                format!("policy:{kt}/{kp}@deleted")
            }
        };
        drop(tenants);
        self.fan_out(tenant, input.now, &cause, input.out);
        Ok(())
    }
}

/// Refuses what the contract does not allow in a policy (`POLICY_REFUSED`).
fn validate(p: &ThreatPolicy) -> Applied {
    let refuse = |d: String| Err(Rejection::new(RejectReason::PolicyRefused, d));
    let id = &p.policy_id;
    let groups = p.include_groups.iter().flatten().chain(&p.exclude_groups);
    if groups.into_iter().any(String::is_empty) {
        return refuse(format!(
            "policy {id}: a group id in include_groups or exclude_groups is empty"
        ));
    }
    if !(0..=MAX_GRACE_PERIOD_HOURS).contains(&p.grace_period_hours) {
        return refuse(format!(
            "policy {id}: grace_period_hours must be 0 to {MAX_GRACE_PERIOD_HOURS}, got {}",
            p.grace_period_hours
        ));
    }
    match p.kind {
        PolicyKind::Compliance => {
            if p.action.is_some() || p.partner_priority.is_some() || p.block_on_missing_data {
                return refuse(format!(
                    "policy {id}: action, partner_priority and block_on_missing_data apply to \
                     APP_PROTECTION policies only"
                ));
            }
        }
        PolicyKind::AppProtection => {
            match p.action {
                None => {
                    return refuse(format!(
                        "policy {id}: APP_PROTECTION needs action BLOCK or WIPE"
                    ))
                }
                Some(a) if Enforcement::of(a).is_none() => {
                    return refuse(format!(
                        "policy {id}: action {a} is not supported for MTD; use BLOCK or WIPE"
                    ))
                }
                Some(_) => {}
            }
            if p.max_level == PolicyLevel::NotSet {
                return refuse(format!(
                    "policy {id}: APP_PROTECTION needs a max_level (NOT_SET is for COMPLIANCE)"
                ));
            }
            if p.defender_max_level.is_some() || p.grace_period_hours != 0 {
                return refuse(format!(
                    "policy {id}: defender_max_level and grace_period_hours apply to COMPLIANCE \
                     policies only"
                ));
            }
            if p.platform == Platform::Macos {
                return refuse(format!(
                    "policy {id}: app protection is not available for MACOS"
                ));
            }
        }
    }
    Ok(())
}
