//! The MTD rules: plain functions from a device and its tenant's [`PlatformView`] to a verdict.
//! No I/O, no clock, no allocation unless reasons are asked for.

use crate::catalogue::PartnerIdx;
use crate::model::{AppAction, ComplianceState, ReasonCode, ThreatLevel};

use super::devices::{flags, Device};
use super::policies::Enforcement;
use super::tables::PlatformView;

/// One reason of a decision, with the partner as a catalogue index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonNote {
    pub partner: PartnerIdx,
    pub code: ReasonCode,
    pub detail: String,
}

/// Outcome of compliance evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComplianceVerdict {
    pub state: ComplianceState,
    pub worst_level: Option<ThreatLevel>,
}

/// Evaluates an enrolled (MDM) device. Pushes the reasons into `reasons` when given; the state
/// does not depend on whether reasons are collected.
pub fn evaluate_compliance(
    view: &PlatformView,
    device: &Device,
    mut reasons: Option<&mut Vec<ReasonNote>>,
) -> ComplianceVerdict {
    let mut note = |partner, code, detail: &dyn Fn() -> String| {
        if let Some(r) = reasons.as_deref_mut() {
            r.push(ReasonNote {
                partner,
                code,
                detail: detail(),
            });
        }
    };
    for &partner in &view.ignored {
        note(partner, ReasonCode::PartnerComplianceIgnored, &|| {
            "connector unresponsive beyond its threshold: its data is ignored for compliance"
                .to_owned()
        });
    }
    if !view.any_compliance_policy {
        // No COMPLIANCE policy applies: the tenant's `no_policy_state`.
        return ComplianceVerdict {
            state: view.no_policy_state,
            worst_level: None,
        };
    }
    if view.counting.is_empty() {
        return ComplianceVerdict {
            state: ComplianceState::NotEvaluated,
            worst_level: None,
        };
    }
    let mut pass = true;
    let mut worst: Option<ThreatLevel> = None;
    for cp in &view.counting {
        let obs = device.observation(cp.partner);
        match obs.and_then(|o| o.health.level()) {
            Some(level) => {
                worst = worst.max(Some(level));
                if level > cp.limit {
                    pass = false;
                    note(cp.partner, ReasonCode::LevelExceedsPolicy, &|| {
                        format!(
                            "reported level {level} exceeds {} allowed by policy {}",
                            cp.limit, cp.policy_id
                        )
                    });
                }
            }
            None => {
                let multi = view.multi_vendor && !cp.defender;
                if cp.blocked_on_missing_data || multi {
                    pass = false;
                    let why = if cp.blocked_on_missing_data {
                        "the connector blocks devices without data"
                    } else {
                        "two or more partners are configured for the platform, so each must submit a scan"
                    };
                    note(cp.partner, ReasonCode::MissingPartnerData, &|| match obs {
                        Some(o) => {
                            format!("latest report says {} (no usable level); {why}", o.health)
                        }
                        None => format!("no report received; {why}"),
                    });
                }
            }
        }
        if let Some(min) = cp.min_os {
            if device.os.compare(min) == Some(std::cmp::Ordering::Less) {
                pass = false;
                note(cp.partner, ReasonCode::UnsupportedOs, &|| {
                    format!(
                        "OS {} is older than the partner's minimum {}",
                        device.os.to_text().unwrap_or_default(),
                        min.to_text().unwrap_or_default()
                    )
                });
            }
        }
    }
    ComplianceVerdict {
        state: if pass {
            ComplianceState::Compliant
        } else {
            ComplianceState::Noncompliant
        },
        worst_level: worst,
    }
}

/// One app protection action to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MamAction {
    pub action: AppAction,
    pub partner: Option<PartnerIdx>,
    pub level: Option<ThreatLevel>,
    pub policy: Option<usize>,
}

/// The outcome of app protection evaluation: actions in issue order and the new flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MamDecision {
    pub actions: Vec<MamAction>,
    pub blocked: bool,
    pub wipe_incident: bool,
}

enum Outcome {
    /// No partner counts for this policy.
    NoPartner,
    /// The partner counts but has no usable level for the device.
    NoData,
    Within,
    /// Above the limit, or without usable data under `block_on_missing_data` (no level).
    Exceeds(Option<ThreatLevel>),
}

/// Evaluates an unenrolled (MAM) device: `BLOCK` until remediation then `UNBLOCK`; `WIPE` once
/// per incident (an incident ends when the level is back within every wipe policy). A policy
/// with `block_on_missing_data` treats the chosen partner's lack of usable data as exceeding.
pub fn evaluate_app_protection(view: &PlatformView, device: &Device) -> MamDecision {
    let blocked = device.has(flags::MAM_BLOCKED);
    let wipe_incident = device.has(flags::WIPE_INCIDENT);
    let mut decision = MamDecision {
        actions: Vec::new(),
        blocked,
        wipe_incident,
    };
    let outcome = |i: usize| {
        let p = &view.app_policies[i];
        let Some(partner) = p.partner else {
            return (None, Outcome::NoPartner);
        };
        match device.observation(partner).and_then(|o| o.health.level()) {
            None if p.block_on_missing_data => (Some(partner), Outcome::Exceeds(None)),
            None => (Some(partner), Outcome::NoData),
            Some(l) if l > p.limit => (Some(partner), Outcome::Exceeds(Some(l))),
            Some(_) => (Some(partner), Outcome::Within),
        }
    };
    let mut first_block_exceeded = None;
    let mut first_wipe_exceeded = None;
    let mut block_cleared = true;
    let mut wipe_cleared = true;
    let mut first_block_policy = None;
    for (i, p) in view.app_policies.iter().enumerate() {
        let (partner, out) = outcome(i);
        let (exceeded, cleared) = match out {
            Outcome::Exceeds(l) => (Some((i, partner, l)), false),
            Outcome::NoData => (None, false),
            Outcome::Within | Outcome::NoPartner => (None, true),
        };
        match p.action {
            Enforcement::Wipe => {
                wipe_cleared &= cleared;
                if first_wipe_exceeded.is_none() {
                    first_wipe_exceeded = exceeded;
                }
            }
            Enforcement::Block => {
                first_block_policy.get_or_insert((i, partner));
                block_cleared &= cleared;
                if first_block_exceeded.is_none() {
                    first_block_exceeded = exceeded;
                }
            }
        }
    }
    // The action for the first policy exceeded: (policy index, partner, level).
    let exceeded = |action, (i, partner, level): (usize, _, Option<ThreatLevel>)| MamAction {
        action,
        partner,
        level,
        policy: Some(i),
    };
    if let Some(first) = first_wipe_exceeded {
        if !wipe_incident {
            decision.actions.push(exceeded(AppAction::Wipe, first));
        }
        decision.wipe_incident = true;
    } else if wipe_cleared {
        decision.wipe_incident = false;
    }
    if let Some(first) = first_block_exceeded {
        if !blocked {
            decision.actions.push(exceeded(AppAction::Block, first));
        }
        decision.blocked = true;
    } else if blocked && block_cleared {
        let (policy, partner) = match first_block_policy {
            Some((i, partner)) => (Some(i), partner),
            None => (None, None),
        };
        let level = partner
            .and_then(|p| device.observation(p))
            .and_then(|o| o.health.level());
        decision.actions.push(MamAction {
            action: AppAction::Unblock,
            partner,
            level,
            policy,
        });
        decision.blocked = false;
    }
    decision
}
