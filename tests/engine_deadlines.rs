//! Table-driven tests of the contract 1.1 deadlines, on the injected clock: grace periods before
//! noncompliance (`grace_period_hours`, `IN_GRACE_PERIOD`, `grace_ends_at`), report expiry
//! (`report_validity_days`, `REPORT_EXPIRED`), both fired by `Engine::advance` at the deadline
//! rounded up to the second, in time order with the connector deadlines, and surviving a
//! restore (a deadline that passed while nobody owned the device fires at reconcile, once).

mod support;

use mtdgate::engine::explain::{DeadlineKind, DeviceExplanation};
use mtdgate::engine::{Body, Output};
use mtdgate::model::*;
use support::engine::*;

use ComplianceState::{
    Compliant as C, InGracePeriod as G, Noncompliant as N, NotEvaluated as E, Unknown as U,
};
use HealthState as H;
use Management::Mdm;
use Platform::Ios;

const HOUR: i64 = 3_600_000;
const DEVICE: &str = "d1";

/// `t` rounded up to the whole second: when a device deadline at `t` fires.
fn second_up(t: i64) -> i64 {
    (t + 999).div_euclid(1000) * 1000
}

/// The cause of what a device deadline firing at `at` publishes.
fn deadline_cause(at: i64) -> String {
    format!("timer:device-deadline@{at}")
}

/// A connector for iOS compliance whose heartbeat deadlines are far beyond every
/// test's horizon, so that only device deadlines fire.
fn quiet(partner: &str, blocked: bool) -> ConnectorConfig {
    let mut c = enabled("t", partner);
    c.ios_blocked_on_missing_data = blocked;
    // One third-party app protection partner per tenant: none here.
    c.android_mam_enabled = false;
    c.ios_mam_enabled = false;
    c.heartbeat_timeout_seconds = 400 * 86_400;
    c.unresponsive_threshold_days = 400;
    c
}

/// An iOS COMPLIANCE policy with a grace.
fn graced(id: &str, max_level: PolicyLevel, hours: i32) -> ThreatPolicy {
    ThreatPolicy {
        grace_period_hours: hours,
        ..compliance_policy("t", id, Ios, max_level)
    }
}

fn validity(days: Option<i32>, updated_at: i64) -> TenantSettings {
    TenantSettings {
        tenant_id: "t".into(),
        no_policy_state: NoPolicyState::NotEvaluated,
        report_validity_days: days,
        updated_at,
    }
}

fn settings(h: &mut Harness, s: Option<TenantSettings>) -> Vec<Output> {
    h.apply("t", Body::Settings(s))
}

/// Lookout (quiet, not blocking on missing data) and `policies`, and [`DEVICE`] enrolled on iOS
/// and COMPLIANT (no report yet, which does not fail).
fn graced_world(policies: &[ThreatPolicy]) -> Harness {
    let mut h = Harness::new();
    h.connector(quiet(LOOKOUT, false));
    for p in policies {
        assert!(rejected(&h.policy(p.clone())).is_empty(), "{p:?}");
    }
    let out = h.enroll("t", DEVICE, Ios, Mdm);
    assert_eq!(only_change(&out).current, C);
    h
}

/// A report of `partner` about [`DEVICE`], observed now.
fn report(h: &mut Harness, partner: &str, state: H) -> (String, Vec<Output>) {
    let r = h.threat("t", partner, DEVICE, Ios, Mdm, state);
    let event = r.event_id.clone();
    let out = h.report(r);
    assert!(rejected(&out).is_empty(), "{out:#?}");
    (event, out)
}

/// The one compliance change of `out`, panicking with the outputs otherwise.
fn only_change(out: &[Output]) -> &ComplianceChange {
    let c = compliance(out);
    assert_eq!(c.len(), 1, "expected one compliance change, got {out:#?}");
    c[0]
}

fn no_change(out: &[Output], what: &str) {
    assert!(compliance(out).is_empty(), "{what}: {out:#?}");
}

fn explain(h: &Harness) -> DeviceExplanation {
    h.engine
        .reader()
        .explain_device("t", DEVICE, h.now)
        .expect("device held")
}

fn held(h: &Harness) -> ComplianceState {
    explain(h).compliance
}

fn codes(c: &ComplianceChange) -> Vec<(&str, ReasonCode)> {
    c.reasons
        .iter()
        .map(|r| (r.partner_id.as_str(), r.code))
        .collect()
}

/// A failure starts the grace: `IN_GRACE_PERIOD` with `grace_ends_at` = failure + hours; the
/// device becomes NONCOMPLIANT exactly when the deadline, rounded up to the second, fires (cause
/// `timer:`), whether the clock gets there in steps or in one jump, and only once.
#[test]
fn grace_starts_on_failure_and_expires_at_its_second() {
    // (grace hours, failure instant after T0 in ms)
    let rows: &[(i32, i64)] = &[
        (1, 0),
        (1, 1),
        (1, 999),
        (1, 1_000),
        (1, 1_001),
        (24, 123_456),
        (8760, 7),
    ];
    for &(hours, offset) in rows {
        let what = format!("grace {hours}h, failure at T0+{offset}ms");
        let mut steps = graced_world(&[graced("p", PolicyLevel::Medium, hours)]);
        let mut jump = graced_world(&[graced("p", PolicyLevel::Medium, hours)]);
        let failed_at = T0 + offset;
        let end = failed_at + hours as i64 * HOUR;
        let due = second_up(end);
        for h in [&mut steps, &mut jump] {
            no_change(&h.advance_to(failed_at), &what);
            let (event, out) = report(h, LOOKOUT, H::High);
            let c = only_change(&out);
            assert_eq!((c.previous, c.current), (C, G), "{what}");
            assert_eq!(c.grace_ends_at, Some(end), "{what}");
            assert_eq!(c.evaluated_at, failed_at, "{what}");
            assert_eq!(c.cause_event_id, event, "{what}");
            assert_eq!(c.worst_level, Some(ThreatLevel::High), "{what}");
            assert_eq!(
                codes(c),
                [(LOOKOUT, ReasonCode::LevelExceedsPolicy)],
                "{what}"
            );
            assert_eq!(h.engine.next_deadline(), Some(due), "{what}");
            let record = h.engine.device_record(0, "t", DEVICE).unwrap();
            assert_eq!(
                record.graces,
                [PolicyGrace {
                    policy_id: "p".into(),
                    failing_since: failed_at
                }],
                "{what}"
            );
        }
        // Steps: nothing until the deadline's second, NONCOMPLIANT then.
        for at in [failed_at + 1, end - 1, end, due - 1] {
            if at >= steps.now && at < due {
                no_change(&steps.advance_to(at), &format!("{what}: at {at}"));
                assert_eq!(held(&steps), G, "{what}: at {at}");
            }
        }
        let stepped = steps.advance_to(due);
        let c = only_change(&stepped);
        assert_eq!((c.previous, c.current), (G, N), "{what}");
        assert_eq!(c.evaluated_at, due, "{what}");
        assert_eq!(c.cause_event_id, deadline_cause(due), "{what}");
        assert!(c.cause_event_id.starts_with("timer:"), "{what}");
        assert_eq!(c.grace_ends_at, None, "{what}");
        assert_eq!(
            codes(c),
            [(LOOKOUT, ReasonCode::LevelExceedsPolicy)],
            "{what}"
        );
        no_change(&steps.advance_to(due + 30 * DAY), &what);
        assert_eq!(held(&steps), N, "{what}");
        assert_eq!(explain(&steps).deadlines, vec![], "{what}");
        // One jump far past the end: the same change (ids included), at the deadline's own
        // instant.
        let out = jump.advance_to(due + 30 * DAY);
        assert_eq!(compliance(&out), compliance(&stepped), "{what}");
        // A report that still fails changes nothing: the grace is over.
        let (_, out) = report(&mut jump, LOOKOUT, H::Compromised);
        no_change(&out, &what);
    }
}

/// How a failing device is remediated within its grace.
#[derive(Debug, Clone, Copy)]
enum Remedy {
    /// A report within the policy's ceiling.
    Report(H),
    /// The admin raises the policy's ceiling above the reported level.
    RaiseCeiling,
}

/// Remediation within the grace makes the device COMPLIANT, and the old grace end passing later
/// publishes nothing. Remediating after the grace's end but before its second fired also never
/// publishes NONCOMPLIANT: the device is judged when the report arrives.
#[test]
fn remediation_within_the_grace_is_compliant_and_nothing_fires_later() {
    let failed_at = T0 + 250;
    let end = failed_at + 2 * HOUR;
    // (remediation instant, remedy)
    let rows: &[(i64, Remedy)] = &[
        (failed_at, Remedy::Report(H::Secured)),
        (failed_at + 1, Remedy::Report(H::Low)),
        (failed_at + HOUR, Remedy::Report(H::Medium)),
        (end - 1, Remedy::Report(H::Secured)),
        (end + 500, Remedy::Report(H::Secured)),
        (failed_at + HOUR, Remedy::RaiseCeiling),
    ];
    for &(at, remedy) in rows {
        let what = format!("{remedy:?} at failure+{}ms", at - failed_at);
        let mut h = graced_world(&[graced("p", PolicyLevel::Medium, 2)]);
        h.advance_to(failed_at);
        let (_, out) = report(&mut h, LOOKOUT, H::High);
        assert_eq!(only_change(&out).current, G, "{what}");
        no_change(&h.advance_to(at), &what);
        let (cause, out) = match remedy {
            Remedy::Report(state) => report(&mut h, LOOKOUT, state),
            Remedy::RaiseCeiling => {
                let mut p = graced("p", PolicyLevel::High, 2);
                p.updated_at = at;
                let out = h.policy(p);
                (format!("policy:t/p@{at}"), out)
            }
        };
        let c = only_change(&out);
        assert_eq!((c.previous, c.current), (G, C), "{what}");
        assert_eq!((c.grace_ends_at, c.evaluated_at), (None, at), "{what}");
        assert_eq!(c.cause_event_id, cause, "{what}");
        assert!(c.reasons.is_empty(), "{what}: {c:?}");
        assert!(
            h.engine
                .device_record(0, "t", DEVICE)
                .unwrap()
                .graces
                .is_empty(),
            "{what}"
        );
        for later in [end, second_up(end), end + DAY] {
            if later >= h.now {
                no_change(&h.advance_to(later), &format!("{what}: at {later}"));
            }
        }
        assert_eq!(held(&h), C, "{what}");
    }
}

/// Failing again after remediation starts a new grace, from the new failure: the old end passes
/// without effect and the new one decides. The same after a grace that ran out.
#[test]
fn a_new_failure_after_remediation_starts_a_new_grace() {
    let grace = 3 * HOUR;
    for expire_first in [false, true] {
        let what = format!("first grace ran out: {expire_first}");
        let mut h = graced_world(&[graced("p", PolicyLevel::Low, 3)]);
        let first = T0 + 10;
        h.advance_to(first);
        let (_, out) = report(&mut h, LOOKOUT, H::Medium);
        assert_eq!(
            only_change(&out).grace_ends_at,
            Some(first + grace),
            "{what}"
        );
        if expire_first {
            let out = h.advance_to(first + grace + HOUR);
            let c = only_change(&out);
            assert_eq!((c.previous, c.current), (G, N), "{what}");
            assert_eq!(c.evaluated_at, second_up(first + grace), "{what}");
        } else {
            h.advance_to(first + HOUR);
        }
        let previous = held(&h);
        let (_, out) = report(&mut h, LOOKOUT, H::Secured);
        let c = only_change(&out);
        assert_eq!((c.previous, c.current), (previous, C), "{what}");
        let second = h.now + 20 * 60_000 + 3;
        h.advance_to(second);
        let (_, out) = report(&mut h, LOOKOUT, H::High);
        let c = only_change(&out);
        assert_eq!((c.previous, c.current), (C, G), "{what}");
        assert_eq!(c.grace_ends_at, Some(second + grace), "{what}");
        // The first grace's end (if still ahead) passes without effect.
        if first + grace > h.now {
            no_change(&h.advance_to(second_up(first + grace)), &what);
            assert_eq!(held(&h), G, "{what}");
        }
        let due = second_up(second + grace);
        no_change(&h.advance_to(due - 1), &what);
        let out = h.advance_to(due);
        let c = only_change(&out);
        assert_eq!(
            (c.previous, c.current, c.evaluated_at),
            (G, N, due),
            "{what}"
        );
        assert_eq!(c.cause_event_id, deadline_cause(due), "{what}");
    }
}

/// Two policies with different graces: the first running grace to end decides `grace_ends_at`
/// and when the device becomes NONCOMPLIANT; a grace-0 policy failing is NONCOMPLIANT at once,
/// whatever graces run; remediating the short-grace policy leaves the long one running.
#[test]
fn several_policies_each_with_its_own_grace() {
    let t1 = T0 + 1_500;
    // Both fail at once: the earlier end decides.
    let mut h = graced_world(&[
        graced("long", PolicyLevel::Low, 5),
        graced("short", PolicyLevel::Low, 2),
    ]);
    h.advance_to(t1);
    let (_, out) = report(&mut h, LOOKOUT, H::High);
    let c = only_change(&out);
    assert_eq!((c.current, c.grace_ends_at), (G, Some(t1 + 2 * HOUR)));
    let mut graces = h.engine.device_record(0, "t", DEVICE).unwrap().graces;
    graces.sort_by(|a, b| a.policy_id.cmp(&b.policy_id));
    assert_eq!(
        graces,
        [
            PolicyGrace {
                policy_id: "long".into(),
                failing_since: t1
            },
            PolicyGrace {
                policy_id: "short".into(),
                failing_since: t1
            }
        ]
    );
    let out = h.advance_to(t1 + 10 * HOUR);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current), (G, N));
    assert_eq!(
        c.evaluated_at,
        second_up(t1 + 2 * HOUR),
        "the first end decides"
    );

    // The short-grace policy fails later than the long one: still the earlier end.
    let mut h = graced_world(&[
        graced("long", PolicyLevel::Low, 5),
        graced("short", PolicyLevel::Medium, 1),
    ]);
    h.advance_to(t1);
    let (_, out) = report(&mut h, LOOKOUT, H::Medium);
    assert_eq!(only_change(&out).grace_ends_at, Some(t1 + 5 * HOUR));
    let t2 = t1 + 30 * 60_000;
    h.advance_to(t2);
    report(&mut h, LOOKOUT, H::High);
    let x = explain(&h);
    assert_eq!(x.decision.state, Some(G));
    assert_eq!(x.decision.grace_ends_at, Some(t2 + HOUR));
    let out = h.advance_to(t1 + 10 * HOUR);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current), (G, N));
    assert_eq!(c.evaluated_at, second_up(t2 + HOUR));

    // Remediating the short-grace policy: the long grace goes on, from the first failure.
    let mut h = graced_world(&[
        graced("long", PolicyLevel::Low, 5),
        graced("short", PolicyLevel::Medium, 2),
    ]);
    h.advance_to(t1);
    let (_, out) = report(&mut h, LOOKOUT, H::High);
    assert_eq!(only_change(&out).grace_ends_at, Some(t1 + 2 * HOUR));
    h.advance_to(t1 + HOUR);
    let (_, out) = report(&mut h, LOOKOUT, H::Medium);
    no_change(&out, "still in grace");
    let x = explain(&h);
    assert_eq!(x.decision.grace_ends_at, Some(t1 + 5 * HOUR));
    no_change(
        &h.advance_to(second_up(t1 + 2 * HOUR) + 1),
        "short grace remediated",
    );
    assert_eq!(held(&h), G);
    let out = h.advance_to(t1 + 10 * HOUR);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current), (G, N));
    assert_eq!(c.evaluated_at, second_up(t1 + 5 * HOUR));

    // A grace-0 policy failing: NONCOMPLIANT at once, while the other's grace keeps running.
    let mut h = graced_world(&[
        graced("graced", PolicyLevel::Low, 5),
        graced("strict", PolicyLevel::High, 0),
    ]);
    h.advance_to(t1);
    let (_, out) = report(&mut h, LOOKOUT, H::Medium);
    assert_eq!(only_change(&out).grace_ends_at, Some(t1 + 5 * HOUR));
    h.advance_to(t1 + HOUR);
    let (event, out) = report(&mut h, LOOKOUT, H::Compromised);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current, c.grace_ends_at), (G, N, None));
    assert_eq!(c.cause_event_id, event);
    h.advance_to(t1 + 2 * HOUR);
    let (_, out) = report(&mut h, LOOKOUT, H::Medium);
    let c = only_change(&out);
    assert_eq!(
        (c.previous, c.current, c.grace_ends_at),
        (N, G, Some(t1 + 5 * HOUR)),
        "the graced policy has failed since t1"
    );
    let out = h.advance_to(t1 + 10 * HOUR);
    assert_eq!(only_change(&out).evaluated_at, second_up(t1 + 5 * HOUR));

    // A grace-0 policy alone: NONCOMPLIANT at once, no deadline.
    let mut h = graced_world(&[graced("strict", PolicyLevel::Medium, 0)]);
    h.advance_to(t1);
    let (_, out) = report(&mut h, LOOKOUT, H::High);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current, c.grace_ends_at), (C, N, None));
    assert_eq!(explain(&h).deadlines, vec![]);
    // The failure's start is kept all the same, so a grace given later runs from it.
    let held = h.engine.device_record(0, "t", DEVICE).unwrap().graces;
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].policy_id.as_str(), held[0].failing_since),
        ("strict", t1)
    );
}

/// Lookout (quiet, `ios_blocked_on_missing_data` as given), Defender too when `with_defender`
/// and Zimperium when `with_zimperium` (all quiet, not blocking), one iOS policy allowing MEDIUM
/// with a grace, tenant settings with `days` of report validity, and [`DEVICE`] enrolled.
fn expiry_world(blocked: bool, zimperium: bool, grace: i32, days: Option<i32>) -> Harness {
    let mut h = Harness::new();
    h.connector(quiet(LOOKOUT, blocked));
    if zimperium {
        h.connector(quiet(ZIMPERIUM, false));
    }
    h.policy(graced("p", PolicyLevel::Medium, grace));
    assert!(rejected(&settings(&mut h, Some(validity(days, T0)))).is_empty());
    h.enroll("t", DEVICE, Ios, Mdm);
    h
}

/// A report older than `report_validity_days` is no usable data: with
/// `ios_blocked_on_missing_data` that fails (`REPORT_EXPIRED`) at the expiry instant, rounded
/// up to the second; with a grace, the grace starts then. A new report revives the device and
/// its expiry moves with it.
#[test]
fn an_expired_report_fails_where_missing_data_fails() {
    struct Row {
        days: i32,
        /// When the report is observed, after T0 (ms).
        observed: i64,
        grace: i32,
    }
    let rows = [
        Row {
            days: 1,
            observed: 0,
            grace: 0,
        },
        Row {
            days: 1,
            observed: 1,
            grace: 0,
        },
        Row {
            days: 2,
            observed: 4_321,
            grace: 0,
        },
        Row {
            days: 120,
            observed: 999,
            grace: 0,
        },
        Row {
            days: 1,
            observed: 2_500,
            grace: 6,
        },
    ];
    for row in rows {
        let what = format!(
            "{} days, observed T0+{}ms, grace {}h",
            row.days, row.observed, row.grace
        );
        let mut h = expiry_world(true, false, row.grace, Some(row.days));
        h.advance_to(T0 + row.observed);
        let (_, out) = report(&mut h, LOOKOUT, H::Secured);
        assert_eq!(held(&h), C, "{what}: {out:#?}");
        let expires = T0 + row.observed + row.days as i64 * DAY;
        let due = second_up(expires);
        let pending: Vec<_> = explain(&h)
            .deadlines
            .iter()
            .map(|d| (d.kind, d.at))
            .collect();
        assert_eq!(pending, [(DeadlineKind::ReportExpiry, expires)], "{what}");
        no_change(&h.advance_to(expires - 1), &what);
        if due > expires {
            no_change(&h.advance_to(due - 1), &what);
        }
        let out = h.advance_to(due);
        let c = only_change(&out);
        let expected = if row.grace > 0 { G } else { N };
        assert_eq!((c.previous, c.current), (C, expected), "{what}");
        assert_eq!(c.evaluated_at, due, "{what}");
        assert_eq!(c.cause_event_id, deadline_cause(due), "{what}");
        assert_eq!(codes(c), [(LOOKOUT, ReasonCode::ReportExpired)], "{what}");
        assert_eq!(c.worst_level, None, "{what}");
        if row.grace > 0 {
            // The grace starts when the device starts failing: at the expiry's second.
            let end = due + row.grace as i64 * HOUR;
            assert_eq!(c.grace_ends_at, Some(end), "{what}");
            let out = h.advance_to(end + HOUR);
            let c = only_change(&out);
            assert_eq!(
                (c.previous, c.current, c.evaluated_at),
                (G, N, end),
                "{what}"
            );
            assert_eq!(codes(c), [(LOOKOUT, ReasonCode::ReportExpired)], "{what}");
        }
        // A new report revives the device; it expires in turn.
        h.advance_to(h.now + 60_000 + 7);
        let (event, out) = report(&mut h, LOOKOUT, H::Low);
        let c = only_change(&out);
        assert_eq!(
            (c.current, c.cause_event_id.as_str()),
            (C, event.as_str()),
            "{what}"
        );
        let expires = h.now + row.days as i64 * DAY;
        let out = h.advance_to(expires + 2 * row.grace as i64 * HOUR + DAY);
        let c = compliance(&out);
        assert_eq!(c[0].evaluated_at, second_up(expires), "{what}");
        assert_eq!(c.last().unwrap().current, N, "{what}");
    }
}

/// Report expiry and the rules for missing data: without `*_blocked_on_missing_data` a single
/// vendor's expired report does not fail (an expired HIGH report no longer fails either); with
/// two third-party partners each must have a usable scan; a report already older than the
/// validity when it arrives counts as expired at once.
#[test]
fn report_expiry_and_the_missing_data_rules() {
    // Single vendor, not blocking: an expired SECURED report changes nothing.
    let mut h = expiry_world(false, false, 0, Some(1));
    report(&mut h, LOOKOUT, H::Secured);
    assert_eq!(held(&h), C);
    no_change(&h.advance_to(T0 + 5 * DAY), "single vendor, not blocking");
    assert_eq!(held(&h), C);
    let x = explain(&h);
    assert_eq!(x.decision.reasons, vec![]);
    assert_eq!(x.deadlines, vec![]);

    // Single vendor, not blocking: an expired HIGH report is no usable data, which passes.
    let mut h = expiry_world(false, false, 0, Some(1));
    h.advance_to(T0 + 10);
    let (_, out) = report(&mut h, LOOKOUT, H::High);
    assert_eq!(only_change(&out).current, N);
    let out = h.advance_to(T0 + 5 * DAY);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current), (N, C));
    assert_eq!(c.evaluated_at, second_up(T0 + 10 + DAY));
    assert_eq!(c.worst_level, None);

    // Two third-party partners (the multi-vendor rule): one partner's report expiring fails.
    let mut h = expiry_world(false, true, 0, Some(2));
    report(&mut h, LOOKOUT, H::Secured);
    h.advance_to(T0 + DAY);
    report(&mut h, ZIMPERIUM, H::Secured);
    assert_eq!(held(&h), C);
    let out = h.advance_to(T0 + 2 * DAY + HOUR);
    let c = only_change(&out);
    assert_eq!(
        (c.previous, c.current, c.evaluated_at),
        (C, N, T0 + 2 * DAY)
    );
    assert_eq!(codes(c), [(LOOKOUT, ReasonCode::ReportExpired)]);
    // Lookout reports again; then Zimperium's report expires.
    let (_, out) = report(&mut h, LOOKOUT, H::Secured);
    assert_eq!(only_change(&out).current, C);
    let out = h.advance_to(T0 + 3 * DAY + HOUR);
    let c = only_change(&out);
    assert_eq!((c.current, c.evaluated_at), (N, T0 + 3 * DAY));
    assert_eq!(codes(c), [(ZIMPERIUM, ReasonCode::ReportExpired)]);

    // A report older than the validity when it arrives is expired at once: where missing data
    // fails, the reason is REPORT_EXPIRED; elsewhere a HIGH report that old does not fail.
    let mut h = expiry_world(true, false, 0, Some(1));
    h.advance_to(T0 + 3 * DAY);
    let mut r = h.threat("t", LOOKOUT, DEVICE, Ios, Mdm, H::Secured);
    r.observed_at = T0 + DAY;
    no_change(&h.report(r), "failing before (no data) and after (expired)");
    let x = explain(&h);
    assert_eq!(x.compliance, N);
    let why: Vec<_> = x.decision.reasons.iter().map(|r| r.code).collect();
    assert_eq!(why, [ReasonCode::ReportExpired]);
    let mut h = expiry_world(false, false, 0, Some(1));
    h.advance_to(T0 + 3 * DAY);
    let mut r = h.threat("t", LOOKOUT, DEVICE, Ios, Mdm, H::High);
    r.observed_at = T0 + DAY;
    no_change(&h.report(r), "an expired HIGH report");
    assert_eq!(held(&h), C);

    // A report without a usable level is MISSING_PARTNER_DATA, not REPORT_EXPIRED, and has no
    // expiry.
    let mut h = expiry_world(true, false, 0, Some(1));
    report(&mut h, LOOKOUT, H::Secured);
    h.advance_to(T0 + HOUR);
    let (_, out) = report(&mut h, LOOKOUT, H::Activated);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current), (C, N));
    assert_eq!(codes(c), [(LOOKOUT, ReasonCode::MissingPartnerData)]);
    let x = explain(&h);
    assert_eq!(x.deadlines, vec![]);
    no_change(&h.advance_to(T0 + 5 * DAY), "no expiry");
}

/// Tenant settings and report validity: a tombstone restores the defaults (reports never
/// expire), reviving a device failing on an expired report; a shorter validity expires the
/// reports it makes too old at once.
#[test]
fn tenant_settings_decide_report_validity() {
    // Tombstone before the expiry: the report no longer expires.
    let mut h = expiry_world(true, false, 0, Some(1));
    report(&mut h, LOOKOUT, H::Secured);
    h.advance_to(T0 + HOUR);
    no_change(&settings(&mut h, None), "tombstone");
    no_change(&h.advance_to(T0 + 30 * DAY), "reports never expire");
    assert_eq!(held(&h), C);
    let x = explain(&h);
    assert_eq!(x.deadlines, vec![]);

    // Tombstone after the expiry: the device fails no more.
    let mut h = expiry_world(true, false, 0, Some(1));
    report(&mut h, LOOKOUT, H::Secured);
    assert_eq!(only_change(&h.advance_to(T0 + 2 * DAY)).current, N);
    let out = settings(&mut h, None);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current), (N, C));
    assert_eq!(c.cause_event_id, "tenant-settings:t@deleted");

    // Validity shortened from 2 days to 1 when the report is 1.5 days old: expired at once.
    let mut h = expiry_world(true, false, 0, Some(2));
    report(&mut h, LOOKOUT, H::Secured);
    no_change(&h.advance_to(T0 + DAY + 12 * HOUR), "still valid");
    let now = h.now;
    let out = settings(&mut h, Some(validity(Some(1), now)));
    let c = only_change(&out);
    assert_eq!((c.previous, c.current, c.evaluated_at), (C, N, h.now));
    assert_eq!(codes(c), [(LOOKOUT, ReasonCode::ReportExpired)]);
    // Lengthened again to 2 days: usable again, and it expires at its new instant.
    h.advance_to(h.now + HOUR);
    let now = h.now;
    let out = settings(&mut h, Some(validity(Some(2), now)));
    assert_eq!(only_change(&out).current, C);
    let out = h.advance_to(T0 + 5 * DAY);
    assert_eq!(only_change(&out).evaluated_at, T0 + 2 * DAY);

    // Out of range: refused, nothing changes.
    for days in [0, -1, 121] {
        let mut h = expiry_world(true, false, 0, None);
        let out = settings(&mut h, Some(validity(Some(days), T0 + 1)));
        assert_eq!(rejection(&out), RejectReason::InvalidField, "{days} days");
    }
}

/// The tables of [`graced_world`] with one 1-hour policy, on a fresh engine at T0.
fn fresh_instance() -> Harness {
    let mut h = Harness::new();
    h.connector(quiet(LOOKOUT, false));
    h.policy(graced("p", PolicyLevel::Medium, 1));
    h
}

/// The changelog record of [`DEVICE`] drained from partition 0.
fn drained(h: &Harness) -> DeviceStateRecord {
    let mut log = Vec::new();
    h.engine.drain_changelog(0, |k, r| log.push((k, r)));
    let (key, record) = log.pop().expect("a changelog record");
    assert_eq!(key, format!("t/{DEVICE}"));
    record.expect("not a tombstone")
}

/// Graces are device state: they go to the changelog, and a new owner restoring it (then
/// reconciling, as the pipeline does) keeps the grace's start. A grace that ended while nobody
/// owned the device makes it NONCOMPLIANT at reconcile, exactly once; one still running fires
/// at its own end.
#[test]
fn graces_survive_a_restore() {
    let failed_at = T0 + 250;
    let end = failed_at + HOUR;
    let mut old = graced_world(&[graced("p", PolicyLevel::Medium, 1)]);
    old.advance_to(failed_at);
    report(&mut old, LOOKOUT, H::High);
    let record = drained(&old);
    assert_eq!(record.compliance, G);
    assert_eq!(
        record.graces,
        [PolicyGrace {
            policy_id: "p".into(),
            failing_since: failed_at
        }]
    );
    assert_eq!(
        Some(&record),
        old.engine.device_record(0, "t", DEVICE).as_ref()
    );

    // (reconcile instant, what reconcile publishes)
    let rows: &[(i64, Option<ComplianceState>)] = &[
        (failed_at + HOUR / 2, None),
        (end - 1, None),
        (end, Some(N)),
        (end + 1, Some(N)),
        (end + 3 * DAY + 17, Some(N)),
    ];
    for &(at, publishes) in rows {
        let what = format!("reconcile at end{:+}ms", at - end);
        let mut new = fresh_instance();
        new.engine
            .restore(0, &format!("t/{DEVICE}"), Some(&record))
            .unwrap();
        assert_eq!(
            new.engine.device_record(0, "t", DEVICE),
            Some(record.clone())
        );
        new.now = at;
        let mut out = Vec::new();
        new.engine.reconcile(0, at, &mut out);
        match publishes {
            Some(state) => {
                let c = only_change(&out);
                assert_eq!(
                    (c.previous, c.current, c.evaluated_at),
                    (G, state, at),
                    "{what}"
                );
                assert_eq!(c.cause_event_id, format!("reconcile:0@{at}"), "{what}");
                // Exactly once: neither the clock nor another reconcile publishes it again.
                no_change(&new.advance_to(at + DAY), &what);
                let mut again = Vec::new();
                new.engine.reconcile(0, new.now, &mut again);
                no_change(&again, &what);
            }
            None => {
                no_change(&out, &what);
                assert_eq!(new.engine.next_deadline(), Some(second_up(end)), "{what}");
                let out = new.advance_to(end + DAY);
                let c = only_change(&out);
                assert_eq!((c.previous, c.current), (G, N), "{what}");
                assert_eq!(c.evaluated_at, second_up(end), "{what}");
                assert_eq!(c.cause_event_id, deadline_cause(second_up(end)), "{what}");
                // The same change, id included, as the old owner publishes.
                let mut same = graced_world(&[graced("p", PolicyLevel::Medium, 1)]);
                same.advance_to(failed_at);
                report(&mut same, LOOKOUT, H::High);
                assert_eq!(compliance(&same.advance_to(end + DAY)), vec![c], "{what}");
            }
        }
        assert_eq!(held(&new), N, "{what}");
    }

    // A report that expired while nobody owned the device: NONCOMPLIANT at reconcile.
    let mut old = expiry_world(true, false, 0, Some(1));
    report(&mut old, LOOKOUT, H::Secured);
    let record = old.engine.device_record(0, "t", DEVICE).unwrap();
    let mut new = Harness::new();
    new.connector(quiet(LOOKOUT, true));
    new.policy(graced("p", PolicyLevel::Medium, 0));
    settings(&mut new, Some(validity(Some(1), T0)));
    new.engine
        .restore(0, &format!("t/{DEVICE}"), Some(&record))
        .unwrap();
    let at = T0 + 2 * DAY;
    new.now = at;
    let mut out = Vec::new();
    new.engine.reconcile(0, at, &mut out);
    let c = only_change(&out);
    assert_eq!((c.previous, c.current, c.evaluated_at), (C, N, at));
    assert_eq!(codes(c), [(LOOKOUT, ReasonCode::ReportExpired)]);
    no_change(&new.advance_to(at + 5 * DAY), "once");
}

/// The explain API lists a device's pending deadlines, earliest first: each running grace's
/// end (with its policy) and each usable report's expiry (with its partner).
#[test]
fn explain_lists_the_pending_deadlines() {
    let mut h = Harness::new();
    h.connector(quiet(LOOKOUT, false));
    h.connector(quiet(MDE, false));
    h.policy(graced("long", PolicyLevel::Low, 5));
    h.policy(graced("short", PolicyLevel::Low, 2));
    settings(&mut h, Some(validity(Some(2), T0)));
    h.enroll("t", DEVICE, Ios, Mdm);
    h.advance_to(T0 + 100);
    report(&mut h, LOOKOUT, H::High);
    h.advance_to(T0 + 200);
    report(&mut h, MDE, H::Secured);
    h.advance_to(T0 + HOUR);
    let x = explain(&h);
    assert_eq!(x.compliance, G);
    assert_eq!(x.decision.state, Some(G));
    assert_eq!(x.decision.grace_ends_at, Some(T0 + 100 + 2 * HOUR));
    let deadlines: Vec<_> = x
        .deadlines
        .iter()
        .map(|d| {
            (
                d.kind,
                d.at,
                d.policy_id.as_deref(),
                d.partner_id.as_deref(),
            )
        })
        .collect();
    use DeadlineKind::{GraceEnd, ReportExpiry};
    assert_eq!(
        deadlines,
        [
            (GraceEnd, T0 + 100 + 2 * HOUR, Some("short"), None),
            (GraceEnd, T0 + 100 + 5 * HOUR, Some("long"), None),
            (ReportExpiry, T0 + 100 + 2 * DAY, None, Some(LOOKOUT)),
            (ReportExpiry, T0 + 200 + 2 * DAY, None, Some(MDE)),
        ]
    );
    assert!(x.deadlines.iter().all(|d| !d.then.is_empty()));
    // Past the short grace: NONCOMPLIANT, and that deadline is gone.
    h.advance_to(T0 + 3 * HOUR);
    let x = explain(&h);
    assert_eq!((x.compliance, x.decision.grace_ends_at), (N, None));
    assert!(
        x.deadlines.iter().all(|d| d.at > h.now),
        "{:?}",
        x.deadlines
    );
    assert!(!x
        .deadlines
        .iter()
        .any(|d| d.policy_id.as_deref() == Some("short")));
    // Remediated, and without report validity: nothing pending.
    report(&mut h, LOOKOUT, H::Secured);
    let now = h.now;
    settings(&mut h, Some(validity(None, now)));
    let x = explain(&h);
    assert_eq!(x.compliance, C);
    assert_eq!(x.deadlines, vec![]);
}

/// `grace_period_hours` is COMPLIANCE only, 0 to 8760: anything else is POLICY_REFUSED and not
/// applied.
#[test]
fn grace_period_hours_out_of_range_or_on_app_protection_is_refused() {
    let app = |hours| ThreatPolicy {
        grace_period_hours: hours,
        ..app_policy("t", "p", Ios, PolicyLevel::Medium, PolicyAction::Block)
    };
    let rows = [
        (graced("p", PolicyLevel::Medium, -1), true),
        (graced("p", PolicyLevel::Medium, i32::MIN), true),
        (graced("p", PolicyLevel::Medium, 8761), true),
        (graced("p", PolicyLevel::Medium, i32::MAX), true),
        (graced("p", PolicyLevel::Medium, 8760), false),
        (graced("p", PolicyLevel::Medium, 1), false),
        (graced("p", PolicyLevel::Medium, 0), false),
        (app(1), true),
        (app(8760), true),
        (app(-1), true),
        (app(0), false),
    ];
    for (p, refused) in rows {
        let what = format!("{:?} grace {}h", p.kind, p.grace_period_hours);
        let mut h = Harness::new();
        h.connector(quiet(LOOKOUT, false));
        h.enroll("t", DEVICE, Ios, Mdm);
        let out = h.policy(p);
        if refused {
            assert_eq!(rejection(&out), RejectReason::PolicyRefused, "{what}");
            assert!(
                rejected(&out)[0].detail.contains("grace_period_hours"),
                "{what}"
            );
            // Not applied: no policy applies to the device.
            assert_eq!(held(&h), E, "{what}");
            assert!(h.engine.tenants().tables(0).policies.is_empty(), "{what}");
        } else {
            assert!(rejected(&out).is_empty(), "{what}: {out:#?}");
        }
    }
}

/// Device and connector deadlines fire in one time order, each at its own instant: a grace
/// ending before a silent connector's data is ignored makes the device NONCOMPLIANT first; one
/// ending after never does, since the device is NOT_EVALUATED by then. A grace ending within the
/// second before the connector's deadline fires at that second (rounded up), together with it:
/// the connector's goes first, and the device is NOT_EVALUATED without a NONCOMPLIANT between.
/// In steps or in one jump, the outputs are the same.
#[test]
fn device_and_connector_deadlines_fire_in_time_order() {
    // Heartbeat at T0; data ignored (and UNRESPONSIVE) at T0 + 1 day.
    let ignored = T0 + DAY;
    // (grace hours, failure after T0, NONCOMPLIANT before NOT_EVALUATED)
    let rows: &[(i32, i64, bool)] = &[
        (23, 0, true),
        (23, HOUR - 1_000, true),
        (23, HOUR - 1, false),
        (23, HOUR, false),
        (23, HOUR + 1, false),
        (25, 0, false),
    ];
    for &(hours, offset, noncompliant_first) in rows {
        let what = format!("grace {hours}h from T0+{offset}ms");
        let run = |steps: bool| {
            let mut h = Harness::new();
            let mut c = enabled("t", LOOKOUT);
            c.ios_mam_enabled = false;
            c.android_mam_enabled = false;
            c.heartbeat_timeout_seconds = 86_400;
            c.unresponsive_threshold_days = 1;
            h.connector(c);
            h.heartbeat("t", LOOKOUT);
            h.policy(graced("p", PolicyLevel::Medium, hours));
            h.enroll("t", DEVICE, Ios, Mdm);
            h.advance_to(T0 + offset);
            let (_, out) = report(&mut h, LOOKOUT, H::High);
            assert_eq!(only_change(&out).current, G);
            let mut out = Vec::new();
            if steps {
                let mut at = h.now;
                while at < T0 + 3 * DAY {
                    at += 17 * 60_000 + 1;
                    out.extend(h.advance_to(at));
                }
            }
            out.extend(h.advance_to(T0 + 3 * DAY));
            out
        };
        let jump = run(false);
        assert_eq!(run(true), jump, "{what}: steps and jump differ");
        let changes: Vec<_> = compliance(&jump)
            .iter()
            .map(|c| (c.previous, c.current, c.evaluated_at))
            .collect();
        let grace_due = second_up(T0 + offset + hours as i64 * HOUR);
        if noncompliant_first {
            assert_eq!(
                changes,
                [(G, N, grace_due), (N, E, ignored)],
                "{what}: {jump:#?}"
            );
        } else {
            assert_eq!(changes, [(G, E, ignored)], "{what}: {jump:#?}");
        }
        let last = compliance(&jump).last().copied().unwrap();
        assert_eq!(last.cause_event_id, format!("timer:t/{LOOKOUT}@{ignored}"));
        // The connector's own changes sit between, at their instant.
        let status = statuses(&jump);
        assert!(
            status.iter().all(|s| s.changed_at == ignored),
            "{what}: {status:#?}"
        );
    }
}

/// Changing a running grace's length keeps its start: a longer grace moves the end later, a
/// shorter one past the time already failed, or grace 0, is NONCOMPLIANT at once.
#[test]
fn changing_a_grace_keeps_its_start() {
    let failed_at = T0 + 10;
    // (new grace hours, state at the change 2 hours in, NONCOMPLIANT at)
    let rows: &[(i32, ComplianceState, Option<i64>)] = &[
        (5, G, Some(second_up(failed_at + 5 * HOUR))),
        (3, G, Some(second_up(failed_at + 3 * HOUR))),
        (1, N, None),
        (0, N, None),
    ];
    for &(hours, at_change, later) in rows {
        let what = format!("grace 4h changed to {hours}h");
        let mut h = graced_world(&[graced("p", PolicyLevel::Medium, 4)]);
        h.advance_to(failed_at);
        report(&mut h, LOOKOUT, H::High);
        h.advance_to(T0 + 2 * HOUR);
        let mut p = graced("p", PolicyLevel::Medium, hours);
        p.updated_at = h.now;
        let out = h.policy(p);
        assert_eq!(held(&h), at_change, "{what}: {out:#?}");
        if at_change == G {
            no_change(&out, &what);
            let x = explain(&h);
            assert_eq!(
                x.decision.grace_ends_at,
                Some(failed_at + hours as i64 * HOUR),
                "{what}"
            );
        } else {
            let c = only_change(&out);
            assert_eq!(c.cause_event_id, format!("policy:t/p@{}", T0 + 2 * HOUR));
        }
        let out = h.advance_to(T0 + DAY);
        let at: Vec<_> = compliance(&out).iter().map(|c| c.evaluated_at).collect();
        assert_eq!(at, later.into_iter().collect::<Vec<_>>(), "{what}");
        assert_eq!(held(&h), N, "{what}");
    }
}

/// Giving a grace to a policy the device has failed for longer than that grace does not put
/// the device back into a grace: the contract starts a grace "when the device starts failing
/// that policy", not when the policy gains a grace.
#[test]
fn adding_a_grace_to_a_policy_already_failed() {
    let mut h = graced_world(&[graced("p", PolicyLevel::Medium, 0)]);
    h.advance_to(T0 + 10);
    let (_, out) = report(&mut h, LOOKOUT, H::High);
    assert_eq!(only_change(&out).current, N);
    h.advance_to(T0 + 2 * HOUR);
    let mut p = graced("p", PolicyLevel::Medium, 1);
    p.updated_at = h.now;
    let out = h.policy(p);
    assert_eq!(
        held(&h),
        N,
        "failing for 2 hours, past a 1-hour grace: {out:#?}"
    );
}

/// A retired device's graces go with it: its slot's pending deadline fires for nobody (or for
/// the device that took the slot) and publishes nothing; the device enrolled again starts
/// afresh.
#[test]
fn retiring_a_device_drops_its_deadlines() {
    let mut h = graced_world(&[graced("p", PolicyLevel::Medium, 1)]);
    h.advance_to(T0 + 10);
    report(&mut h, LOOKOUT, H::High);
    h.advance_to(T0 + HOUR / 2);
    no_change(
        &h.apply(&format!("t/{DEVICE}"), Body::Enrollment(None)),
        "retired",
    );
    // Another device takes the free slot; the old deadline passes.
    assert_eq!(only_change(&h.enroll("t", "other", Ios, Mdm)).current, C);
    no_change(
        &h.advance_to(T0 + 2 * HOUR),
        "the retired device's grace end",
    );
    // Enrolled again: a new device, a new grace.
    let out = h.enroll("t", DEVICE, Ios, Mdm);
    assert_eq!(
        (only_change(&out).previous, only_change(&out).current),
        (U, C)
    );
    let (_, out) = report(&mut h, LOOKOUT, H::High);
    assert_eq!(only_change(&out).grace_ends_at, Some(h.now + HOUR));
}
