//! The MTD rules: plain functions from a device and its tenant's [`PlatformView`] to a verdict.
//! No I/O; the caller passes the instant (`now`) grace periods and report expiry are judged at.
//! No allocation unless reasons are asked for.

use smallvec::SmallVec;

use crate::catalogue::PartnerIdx;
use crate::model::{AppAction, ComplianceState, ReasonCode, ThreatLevel};

use super::devices::{flags, Device, Observation};
use super::policies::Enforcement;
use super::tables::{PlatformView, PolicyKey};

/// One reason of a decision, with the partner as a catalogue index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonNote {
    pub partner: PartnerIdx,
    pub code: ReasonCode,
    pub detail: String,
}

/// A policy a device fails and since when: its grace (if it has one) runs from there.
pub type Grace = (PolicyKey, i64);

/// Outcome of compliance evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplianceVerdict {
    pub state: ComplianceState,
    pub worst_level: Option<ThreatLevel>,
    /// For `IN_GRACE_PERIOD`: when the first running grace ends.
    pub grace_ends_at: Option<i64>,
    /// The failures held after this evaluation: every failing policy, since when the device
    /// fails it (kept from `held`, or `now` for a new failure); its grace runs from there.
    pub graces: SmallVec<[Grace; 1]>,
}

impl ComplianceVerdict {
    fn plain(state: ComplianceState, worst_level: Option<ThreatLevel>) -> Self {
        ComplianceVerdict {
            state,
            worst_level,
            grace_ends_at: None,
            graces: SmallVec::new(),
        }
    }
}

/// The usable level of an observation at `now`: `None` for the "no usable data" states and
/// for a report older than the tenant's `report_validity_days`.
pub fn usable_level(view: &PlatformView, o: &Observation, now: i64) -> Option<ThreatLevel> {
    o.health.level().filter(|_| !expired(view, o, now))
}

/// Whether the observation's report is older than the tenant's `report_validity_days`.
pub fn expired(view: &PlatformView, o: &Observation, now: i64) -> bool {
    view.report_validity_ms
        .is_some_and(|v| now >= o.observed_at().saturating_add(v))
}

/// Evaluates an enrolled (MDM) device at `now`, with the graces it `held`. Pushes the reasons
/// into `reasons` when given; the verdict does not depend on whether reasons are collected.
///
/// A device fails a COMPLIANCE policy when a counting partner the policy judges reports a
/// level above the policy's ceiling for it, or fails regardless of level (no usable data where
/// that fails, an unsupported OS). Failing no policy is `COMPLIANT`; failing only policies
/// whose graces are all still running is `IN_GRACE_PERIOD`; anything else `NONCOMPLIANT`.
pub fn evaluate_compliance(
    view: &PlatformView,
    device: &Device,
    held: &[Grace],
    now: i64,
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
        return ComplianceVerdict::plain(view.no_policy_state, None);
    }
    if view.counting.is_empty() {
        return ComplianceVerdict::plain(ComplianceState::NotEvaluated, None);
    }
    let mut worst: Option<ThreatLevel> = None;
    // Per counting partner: its usable level, and whether it fails whatever the level.
    let mut judged: SmallVec<[(PartnerIdx, Option<ThreatLevel>, bool); 4]> = SmallVec::new();
    for cp in &view.counting {
        let obs = device.observation(cp.partner);
        let level = obs.and_then(|o| usable_level(view, o, now));
        let mut fails = false;
        match level {
            Some(level) => {
                worst = worst.max(Some(level));
                if level > cp.limit {
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
                    fails = true;
                    let why = if cp.blocked_on_missing_data {
                        "the connector blocks devices without data"
                    } else {
                        "two or more partners are configured for the platform, so each must submit a scan"
                    };
                    match obs {
                        Some(o) if o.health.level().is_some() => {
                            note(cp.partner, ReasonCode::ReportExpired, &|| {
                                format!(
                                    "latest report ({} at {}) is older than the tenant's report \
                                     validity; {why}",
                                    o.health,
                                    o.observed_at()
                                )
                            })
                        }
                        Some(o) => note(cp.partner, ReasonCode::MissingPartnerData, &|| {
                            format!("latest report says {} (no usable level); {why}", o.health)
                        }),
                        None => note(cp.partner, ReasonCode::MissingPartnerData, &|| {
                            format!("no report received; {why}")
                        }),
                    }
                }
            }
        }
        if let Some(min) = cp.min_os {
            if device.os.compare(min) == Some(std::cmp::Ordering::Less) {
                fails = true;
                note(cp.partner, ReasonCode::UnsupportedOs, &|| {
                    format!(
                        "OS {} is older than the partner's minimum {}",
                        device.os.to_text().unwrap_or_default(),
                        min.to_text().unwrap_or_default()
                    )
                });
            }
        }
        judged.push((cp.partner, level, fails));
    }
    let mut failing = false;
    let mut in_grace = true;
    let mut verdict = ComplianceVerdict::plain(ComplianceState::Compliant, worst);
    for p in &view.compliance {
        let fails = p.ceilings.iter().any(|&(partner, ceiling)| {
            judged
                .iter()
                .find(|j| j.0 == partner)
                .is_some_and(|&(_, level, hard)| hard || level.is_some_and(|l| l > ceiling))
        });
        if !fails {
            continue;
        }
        failing = true;
        // Every failing policy keeps since when it fails, grace or not: a grace given to a
        // policy the device already fails runs from the start of that failure. Without a grace
        // it ends at once (`since <= now`).
        let since = held.iter().find(|g| g.0 == p.key).map_or(now, |g| g.1);
        verdict.graces.push((p.key, since));
        let ends = since.saturating_add(p.grace_ms);
        if now >= ends {
            in_grace = false;
        } else {
            verdict.grace_ends_at = Some(verdict.grace_ends_at.map_or(ends, |e| e.min(ends)));
        }
    }
    if failing {
        if in_grace {
            verdict.state = ComplianceState::InGracePeriod;
        } else {
            verdict.state = ComplianceState::Noncompliant;
            verdict.grace_ends_at = None;
        }
    }
    verdict
}

/// The next instant after `now` at which the device's verdict can change without new input:
/// the end of a running grace, or the expiry of a partner's latest usable report.
pub fn next_deadline(
    view: &PlatformView,
    device: &Device,
    held: &[Grace],
    now: i64,
) -> Option<i64> {
    let graces = held.iter().filter_map(|&(key, since)| {
        let p = view.compliance.iter().find(|p| p.key == key)?;
        Some(since.saturating_add(p.grace_ms))
    });
    let expiries = view.report_validity_ms.into_iter().flat_map(|v| {
        device
            .observations
            .iter()
            .filter(|o| o.health.level().is_some())
            .map(move |o| o.observed_at().saturating_add(v))
    });
    graces.chain(expiries).filter(|&t| t > now).min()
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
pub fn evaluate_app_protection(view: &PlatformView, device: &Device, now: i64) -> MamDecision {
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
        match device
            .observation(partner)
            .and_then(|o| usable_level(view, o, now))
        {
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
            .and_then(|o| usable_level(view, o, now));
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
