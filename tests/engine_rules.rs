//! Table-driven tests of the rule engine against the contract and the seed document.

mod support;

use mtdgate::engine::devices::{Observation, REPLAY_WINDOW};
use mtdgate::engine::{ids, Body};
use mtdgate::model::*;
use support::engine::*;

use HealthState as H;
use Management::{Mam, Mdm};
use Platform::{Android, Ios, Windows};

/// Sets up tenant `t` with `partner` configured by `f`, a MEDIUM compliance policy on iOS and a
/// BLOCK app protection policy at MEDIUM on iOS.
fn tenant_with(h: &mut Harness, partner: &str, f: impl FnOnce(&mut ConnectorConfig)) {
    let mut c = enabled("t", partner);
    f(&mut c);
    h.connector(c);
    h.policy(compliance_policy("t", "cp", Ios, PolicyLevel::Medium));
}

/// Every row of the seed's connector-status table: the status reached, and whether device
/// threat messages and App Sync messages are blocked.
#[test]
fn connector_status_table() {
    struct Row {
        name: &'static str,
        setup: fn(&mut Harness),
        status: ConnectorStatus,
        threats_blocked: Option<RejectReason>,
        app_sync_blocked: bool,
    }
    let rows = [
        Row {
            name: "Unavailable (never provisioned)",
            setup: |h| {
                let mut c = ConnectorConfig::new("t", LOOKOUT, T0);
                c.ios_app_sync = true;
                h.connector(c);
            },
            status: ConnectorStatus::Unavailable,
            threats_blocked: Some(RejectReason::ConnectorUnavailable),
            app_sync_blocked: true,
        },
        Row {
            name: "Unavailable (deprovisioned)",
            setup: |h| {
                let mut c = enabled("t", LOOKOUT);
                c.ios_app_sync = true;
                h.connector(c.clone());
                c.provisioned = false;
                c.updated_at += 1;
                h.connector(c);
            },
            status: ConnectorStatus::Unavailable,
            threats_blocked: Some(RejectReason::ConnectorUnavailable),
            app_sync_blocked: true,
        },
        Row {
            name: "Not Set Up",
            setup: |h| {
                let mut c = enabled("t", LOOKOUT);
                c.setup_complete = false;
                c.ios_app_sync = true;
                h.connector(c);
            },
            status: ConnectorStatus::NotSetUp,
            threats_blocked: Some(RejectReason::ConnectorNotSetUp),
            app_sync_blocked: true,
        },
        Row {
            name: "Available",
            setup: |h| {
                let mut c = ConnectorConfig::new("t", LOOKOUT, T0);
                c.provisioned = true;
                c.setup_complete = true;
                c.ios_app_sync = true;
                h.connector(c);
            },
            status: ConnectorStatus::Available,
            threats_blocked: None,
            app_sync_blocked: false,
        },
        Row {
            name: "Enabled",
            setup: |h| {
                let mut c = enabled("t", LOOKOUT);
                c.ios_app_sync = true;
                h.connector(c);
            },
            status: ConnectorStatus::Enabled,
            threats_blocked: None,
            app_sync_blocked: false,
        },
        Row {
            name: "Unresponsive",
            setup: |h| {
                let mut c = enabled("t", LOOKOUT);
                c.ios_app_sync = true;
                h.connector(c);
                h.heartbeat("t", LOOKOUT);
                h.advance_to(T0 + DAY + 1);
            },
            status: ConnectorStatus::Unresponsive,
            threats_blocked: None,
            app_sync_blocked: false,
        },
        Row {
            name: "Error",
            setup: |h| {
                let mut c = enabled("t", LOOKOUT);
                c.ios_app_sync = true;
                h.connector(c);
                let hb = ConnectorHeartbeat {
                    tenant_id: "t".into(),
                    partner_id: LOOKOUT.into(),
                    sent_at: h.now,
                    error_code: Some(503),
                    min_os_versions: None,
                };
                h.apply("t/lookout", Body::Heartbeat(hb));
            },
            status: ConnectorStatus::Error,
            threats_blocked: None,
            app_sync_blocked: false,
        },
    ];
    for row in rows {
        let mut h = Harness::new();
        (row.setup)(&mut h);
        let t = h.engine.tenants().get("t").unwrap();
        let idx = h.engine.catalogue().index(LOOKOUT).unwrap();
        let status = h.engine.tenants().tables(t).connectors[&idx]
            .published
            .status;
        assert_eq!(status, row.status, "{}", row.name);

        let r = h.threat("t", LOOKOUT, "d1", Ios, Mdm, H::High);
        let out = h.report(r);
        match row.threats_blocked {
            Some(reason) => assert_eq!(rejection(&out), reason, "{}", row.name),
            None => assert!(rejected(&out).is_empty(), "{}: {out:?}", row.name),
        }

        // App Sync shares inventories of enrolled iOS devices only (contract 1.1).
        h.enroll("t", "d2", Ios, Mdm);
        let inv = AppInventory {
            tenant_id: "t".into(),
            device_id: "d2".into(),
            ownership: Ownership::Corporate,
            collected_at: h.now,
            apps: vec![],
        };
        let out = h.apply("t/d2", Body::Inventory(inv));
        assert_eq!(
            !rejected(&out).is_empty(),
            row.app_sync_blocked,
            "{}: {out:?}",
            row.name
        );
    }
}

/// A report refused while the connector was blocked is never applied later.
#[test]
fn blocked_reports_are_never_applied_later() {
    let mut h = Harness::new();
    let mut c = enabled("t", LOOKOUT);
    c.setup_complete = false;
    h.connector(c.clone());
    h.policy(compliance_policy("t", "cp", Ios, PolicyLevel::Low));
    let r = h.threat("t", LOOKOUT, "d1", Ios, Mdm, H::High);
    assert_eq!(rejection(&h.report(r)), RejectReason::ConnectorNotSetUp);
    c.setup_complete = true;
    c.updated_at += 1;
    let out = h.connector(c);
    assert!(compliance(&out).is_empty(), "no device exists: {out:?}");
    assert_eq!(h.engine.device_count(), 0);
}

/// Seed scenario for enrolled devices: infected -> access blocked; remediated -> granted.
#[test]
fn enrolled_device_infected_then_remediated() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |_| {});
    // Enrolled with no report yet and no missing-data rule: compliant.
    let out = h.enroll("t", "d1", Ios, Mdm);
    let c = compliance(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].previous, c[0].current),
        (ComplianceState::Unknown, ComplianceState::Compliant)
    );
    let r = h.threat("t", LOOKOUT, "d1", Ios, Mdm, H::Secured);
    assert!(h.report(r).is_empty(), "no change, no output");

    let r = h.threat("t", LOOKOUT, "d1", Ios, Mdm, H::High);
    let out = h.report(r.clone());
    let c = compliance(&out);
    assert_eq!(c.len(), 1, "{out:?}");
    assert_eq!(c[0].current, ComplianceState::Noncompliant);
    assert_eq!(c[0].previous, ComplianceState::Compliant);
    assert_eq!(c[0].worst_level, Some(ThreatLevel::High));
    assert_eq!(c[0].cause_event_id, r.event_id);
    assert_eq!(c[0].user_id.as_deref(), Some("user-of-d1"));
    assert_eq!(c[0].reasons.len(), 1);
    assert_eq!(c[0].reasons[0].code, ReasonCode::LevelExceedsPolicy);
    assert_eq!(c[0].reasons[0].partner_id, LOOKOUT);
    assert!(c[0].reasons[0].detail.contains("HIGH") && c[0].reasons[0].detail.contains("cp"));

    // Still infected: no output.
    let r = h.threat("t", LOOKOUT, "d1", Ios, Mdm, H::Compromised);
    assert!(h.report(r).is_empty());

    let r = h.threat("t", LOOKOUT, "d1", Ios, Mdm, H::Low);
    let out = h.report(r);
    let c = compliance(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].previous, c[0].current),
        (ComplianceState::Noncompliant, ComplianceState::Compliant)
    );
    assert!(c[0].reasons.is_empty());
}

/// Seed scenario for unenrolled devices: infected -> BLOCK; remediated -> UNBLOCK.
#[test]
fn unenrolled_device_blocked_then_unblocked() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |_| {});
    h.policy(app_policy(
        "t",
        "ap",
        Ios,
        PolicyLevel::Medium,
        PolicyAction::Block,
    ));
    let r = h.threat("t", LOOKOUT, "m1", Ios, Mam, H::Low);
    let out = h.report(r);
    assert!(out.is_empty(), "within policy, never blocked: {out:?}");

    let r = h.threat("t", LOOKOUT, "m1", Ios, Mam, H::High);
    let out = h.report(r);
    let a = actions(&out);
    assert_eq!(a.len(), 1, "{out:?}");
    assert_eq!(a[0].action, AppAction::Block);
    assert_eq!(a[0].level, Some(ThreatLevel::High));
    assert_eq!(a[0].max_allowed_level, Some(ThreatLevel::Medium));
    assert_eq!(a[0].policy_id, "ap");
    assert_eq!(a[0].partner_id, LOOKOUT);
    assert!(
        compliance(&out).is_empty(),
        "MAM devices get no compliance changes"
    );

    let r = h.threat("t", LOOKOUT, "m1", Ios, Mam, H::High);
    assert!(h.report(r).is_empty(), "already blocked");
    let r = h.threat("t", LOOKOUT, "m1", Ios, Mam, H::Deactivated);
    assert!(h.report(r).is_empty(), "no usable data is not remediation");

    let r = h.threat("t", LOOKOUT, "m1", Ios, Mam, H::Secured);
    let out = h.report(r);
    let a = actions(&out);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].action, AppAction::Unblock);
    assert_eq!(a[0].level, Some(ThreatLevel::Secured));
}

/// WIPE is issued once per incident: not again while still infected, again after remediation
/// and a new infection.
#[test]
fn wipe_once_per_incident() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |_| {});
    h.policy(app_policy(
        "t",
        "wipe",
        Ios,
        PolicyLevel::Low,
        PolicyAction::Wipe,
    ));
    let mut wipes = 0;
    for state in [
        H::High,
        H::Compromised,
        H::High,
        H::Secured,
        H::Medium,
        H::Medium,
    ] {
        let r = h.threat("t", LOOKOUT, "m1", Ios, Mam, state);
        let out = h.report(r);
        wipes += actions(&out)
            .iter()
            .filter(|a| a.action == AppAction::Wipe)
            .count();
        assert!(
            actions(&out).iter().all(|a| a.action == AppAction::Wipe),
            "{out:?}"
        );
    }
    assert_eq!(wipes, 2);
}

/// MAM counts one partner, chosen by priority.
#[test]
fn mam_partner_priority() {
    for (priority, expected) in [
        (None, MDE),
        (Some(PartnerPriority::DefenderFirst), MDE),
        (Some(PartnerPriority::ThirdPartyFirst), LOOKOUT),
    ] {
        let mut h = Harness::new();
        h.connector(enabled("t", LOOKOUT));
        h.connector(enabled("t", MDE));
        let mut p = app_policy("t", "ap", Android, PolicyLevel::Low, PolicyAction::Block);
        p.partner_priority = priority;
        h.policy(p);
        // Lookout says HIGH, Defender says SECURED.
        let r = h.threat("t", LOOKOUT, "m", Android, Mam, H::High);
        let out_l = h.report(r);
        let r = h.threat("t", MDE, "m", Android, Mam, H::Secured);
        let out_d = h.report(r);
        let blocked = !actions(&out_l).is_empty() || !actions(&out_d).is_empty();
        assert_eq!(blocked, expected == LOOKOUT, "{priority:?}");
    }
}

/// Two or more non-Defender partners: each must submit a scan. Defender does not count toward
/// that rule, and is not held to it.
#[test]
fn multi_vendor_rule() {
    let mut h = Harness::new();
    h.connector(enabled("t", LOOKOUT));
    h.policy(compliance_policy("t", "cp", Android, PolicyLevel::Medium));
    assert_eq!(
        compliance(&h.enroll("t", "d", Android, Mdm))[0].current,
        ComplianceState::Compliant
    );
    let r = h.threat("t", LOOKOUT, "d", Android, Mdm, H::Low);
    assert!(h.report(r).is_empty());

    // Defender joins: one third party + Defender, no missing-data rule.
    let out = h.connector(enabled("t", MDE));
    assert!(compliance(&out).is_empty(), "{out:?}");

    // A second third party joins and has not scanned: noncompliant.
    let out = h.connector(enabled("t", ZIMPERIUM));
    let c = compliance(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].current, ComplianceState::Noncompliant);
    assert_eq!(c[0].reasons.len(), 1);
    assert_eq!(c[0].reasons[0].code, ReasonCode::MissingPartnerData);
    assert_eq!(c[0].reasons[0].partner_id, ZIMPERIUM);
    assert!(c[0].cause_event_id.starts_with("connector:t/zimperium@"));

    // It scans: compliant again (Defender still silent and not required).
    let r = h.threat("t", ZIMPERIUM, "d", Android, Mdm, H::Secured);
    assert_eq!(
        compliance(&h.report(r))[0].current,
        ComplianceState::Compliant
    );

    // Every counting partner must pass.
    let r = h.threat("t", MDE, "d", Android, Mdm, H::High);
    let out = h.report(r);
    assert_eq!(compliance(&out)[0].current, ComplianceState::Noncompliant);
    assert_eq!(compliance(&out)[0].reasons[0].partner_id, MDE);
}

/// Several compliance policies on one platform all apply; NOT_SET switches a rule off; no
/// policy or no partner means NOT_EVALUATED.
#[test]
fn several_policies_all_apply() {
    let mut h = Harness::new();
    h.connector(enabled("t", LOOKOUT));
    assert_eq!(
        compliance(&h.enroll("t", "d", Ios, Mdm))[0].current,
        ComplianceState::NotEvaluated
    );
    let r = h.threat("t", LOOKOUT, "d", Ios, Mdm, H::Medium);
    assert!(h.report(r).is_empty());

    let out = h.policy(compliance_policy("t", "off", Ios, PolicyLevel::NotSet));
    assert!(compliance(&out).is_empty(), "a NOT_SET rule is off");

    let out = h.policy(compliance_policy("t", "high", Ios, PolicyLevel::High));
    assert_eq!(compliance(&out)[0].current, ComplianceState::Compliant);

    let out = h.policy(compliance_policy("t", "low", Ios, PolicyLevel::Low));
    let c = compliance(&out);
    assert_eq!(c[0].current, ComplianceState::Noncompliant);
    assert!(
        c[0].reasons[0].detail.contains("policy low"),
        "{:?}",
        c[0].reasons
    );

    // Deleting the strict policy restores compliance.
    let out = h.apply("t/low", Body::Policy(None));
    assert_eq!(compliance(&out)[0].current, ComplianceState::Compliant);
    // A policy for another platform changes nothing here.
    assert!(
        compliance(&h.policy(compliance_policy("t", "a", Android, PolicyLevel::Secured)))
            .is_empty()
    );
}

#[test]
fn missing_data_when_blocked_on_missing() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |c| c.ios_blocked_on_missing_data = true);
    let out = h.enroll("t", "d", Ios, Mdm);
    let c = compliance(&out);
    assert_eq!(c[0].current, ComplianceState::Noncompliant);
    assert_eq!(c[0].reasons[0].code, ReasonCode::MissingPartnerData);
    assert!(c[0].reasons[0].detail.contains("no report"));
    // A report without a usable level is still missing data.
    let r = h.threat("t", LOOKOUT, "d", Ios, Mdm, H::Deactivated);
    assert!(compliance(&h.report(r)).is_empty());
    let r = h.threat("t", LOOKOUT, "d", Ios, Mdm, H::Secured);
    assert_eq!(
        compliance(&h.report(r))[0].current,
        ComplianceState::Compliant
    );
}

#[test]
fn unsupported_os() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |c| c.unsupported_os_blocked = true);
    // OS 17.4, no minimum published yet.
    assert_eq!(
        compliance(&h.enroll("t", "d", Ios, Mdm))[0].current,
        ComplianceState::Compliant
    );
    let hb = ConnectorHeartbeat {
        tenant_id: "t".into(),
        partner_id: LOOKOUT.into(),
        sent_at: h.now,
        error_code: None,
        min_os_versions: Some([("IOS".to_owned(), "17.10".to_owned())].into()),
    };
    let out = h.apply("t/lookout", Body::Heartbeat(hb));
    let c = compliance(&out);
    assert_eq!(c.len(), 1, "{out:?}");
    assert_eq!(c[0].current, ComplianceState::Noncompliant);
    assert_eq!(c[0].reasons[0].code, ReasonCode::UnsupportedOs);
    assert!(c[0].reasons[0].detail.contains("17.4") && c[0].reasons[0].detail.contains("17.10"));
}

/// A connector that goes silent becomes UNRESPONSIVE, then ignored (devices re-evaluated at
/// once, PARTNER_COMPLIANCE_IGNORED), then a heartbeat restores it.
#[test]
fn silent_connector_unresponsive_ignored_restored() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |c| c.unresponsive_threshold_days = 3);
    h.heartbeat("t", LOOKOUT);
    h.enroll("t", "d", Ios, Mdm);
    let r = h.threat("t", LOOKOUT, "d", Ios, Mdm, H::High);
    assert_eq!(
        compliance(&h.report(r))[0].current,
        ComplianceState::Noncompliant
    );
    assert_eq!(h.engine.next_deadline(), Some(T0 + DAY));

    assert!(h.advance_to(T0 + DAY - 1).is_empty());
    let out = h.advance_to(T0 + DAY);
    let s = statuses(&out);
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].previous, s[0].current),
        (ConnectorStatus::Enabled, ConnectorStatus::Unresponsive)
    );
    assert!(!s[0].compliance_ignored);
    assert_eq!(s[0].last_heartbeat_at, Some(T0));
    assert!(
        compliance(&out).is_empty(),
        "unresponsive data still counts"
    );

    let out = h.advance_to(T0 + 3 * DAY);
    let s = statuses(&out);
    assert_eq!(s.len(), 1);
    assert!(s[0].compliance_ignored);
    assert!(s[0].reason.contains("3 days"));
    let c = compliance(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].current, ComplianceState::NotEvaluated);
    assert_eq!(c[0].reasons[0].code, ReasonCode::PartnerComplianceIgnored);
    assert!(c[0].cause_event_id.starts_with("timer:t/lookout@"));

    h.now = T0 + 4 * DAY;
    let out = h.heartbeat("t", LOOKOUT);
    let s = statuses(&out);
    assert_eq!(s[0].current, ConnectorStatus::Enabled);
    assert!(!s[0].compliance_ignored);
    assert!(s[0].reason.contains("used again"));
    assert_eq!(compliance(&out)[0].current, ComplianceState::Noncompliant);
    assert_eq!(h.engine.next_deadline(), Some(T0 + 5 * DAY));
}

#[test]
fn error_heartbeat_then_clean() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |_| {});
    let mut hb = ConnectorHeartbeat {
        tenant_id: "t".into(),
        partner_id: LOOKOUT.into(),
        sent_at: h.now,
        error_code: Some(7),
        min_os_versions: None,
    };
    let out = h.apply("t/lookout", Body::Heartbeat(hb.clone()));
    assert_eq!(statuses(&out)[0].current, ConnectorStatus::Error);
    assert!(statuses(&out)[0].reason.contains("error code 7"));
    hb.error_code = Some(0);
    hb.sent_at += 1;
    let out = h.apply("t/lookout", Body::Heartbeat(hb));
    assert_eq!(statuses(&out)[0].current, ConnectorStatus::Enabled);
}

#[test]
fn cloud_without_partner_keeps_connector_unavailable() {
    let mut h = Harness::new();
    h.engine = mtdgate::engine::Engine::new(
        std::sync::Arc::new(mtdgate::catalogue::Catalogue::builtin("21vianet").unwrap()),
        Default::default(),
    );
    let out = h.connector(enabled("t", "pradeo"));
    assert!(statuses(&out).is_empty(), "stays UNAVAILABLE: {out:?}");
    let r = h.threat("t", "pradeo", "d", Android, Mdm, H::Low);
    assert_eq!(rejection(&h.report(r)), RejectReason::ConnectorUnavailable);
}

/// Every rejection reason the engine produces, each with a specific detail.
/// A named mutation of a valid report (returning the key to send it under), the reason it must
/// be rejected with, and a word the detail must contain.
type Case = (
    &'static str,
    Box<dyn Fn(&mut DeviceThreatReport) -> String>,
    RejectReason,
    &'static str,
);

#[test]
fn rejection_reasons() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |_| {});
    let base = h.threat("t", LOOKOUT, "d", Ios, Mdm, H::Low);
    assert!(rejected(&h.report(base.clone())).is_empty());

    let cases: Vec<Case> = vec![
        (
            "duplicate",
            Box::new(|_r| "t/d".into()),
            RejectReason::Duplicate,
            "already applied",
        ),
        (
            "stale",
            Box::new(|r| {
                r.observed_at -= 1;
                r.event_id = "older".into();
                "t/d".into()
            }),
            RejectReason::Stale,
            "older",
        ),
        (
            "tenant mismatch",
            Box::new(|r| {
                r.tenant_id = "other".into();
                "t/d".into()
            }),
            RejectReason::TenantMismatch,
            "other",
        ),
        (
            "device mismatch",
            Box::new(|r| {
                r.device_id = "x".into();
                "t/d".into()
            }),
            RejectReason::InvalidField,
            "device_id",
        ),
        (
            "bad key",
            Box::new(|_| "t-d".into()),
            RejectReason::InvalidField,
            "key",
        ),
        (
            "empty key part",
            Box::new(|_| "t/".into()),
            RejectReason::InvalidField,
            "empty",
        ),
        (
            "unknown partner",
            Box::new(|r| {
                r.partner_id = "acme".into();
                "t/d".into()
            }),
            RejectReason::UnknownPartner,
            "acme",
        ),
        (
            "unsupported platform",
            Box::new(|r| {
                r.platform = Windows;
                "t/d".into()
            }),
            RejectReason::UnsupportedPlatform,
            "WINDOWS",
        ),
        (
            "future",
            Box::new(|r| {
                r.observed_at += DAY;
                r.event_id = "f".into();
                "t/d".into()
            }),
            RejectReason::InvalidField,
            "ahead of the clock",
        ),
        (
            "empty event id",
            Box::new(|r| {
                r.event_id.clear();
                "t/d".into()
            }),
            RejectReason::InvalidField,
            "event_id",
        ),
        (
            "platform change",
            Box::new(|r| {
                r.platform = Android;
                r.event_id = "p".into();
                r.observed_at += 1;
                "t/d".into()
            }),
            RejectReason::InvalidField,
            "enrolled",
        ),
        (
            "unknown tenant",
            Box::new(|r| {
                r.tenant_id = "nobody".into();
                "nobody/d".into()
            }),
            RejectReason::ConnectorUnavailable,
            "not configured",
        ),
    ];
    h.enroll("t", "d", Ios, Mdm);
    for (name, mutate, reason, detail) in cases {
        let mut r = base.clone();
        let key = mutate(&mut r);
        let out = h.apply(&key, Body::Threat(r));
        assert_eq!(rejection(&out), reason, "{name}");
        assert!(
            rejected(&out)[0].detail.contains(detail),
            "{name}: {:?}",
            rejected(&out)[0].detail
        );
    }

    // Policies.
    let mut warn = app_policy("t", "w", Ios, PolicyLevel::Low, PolicyAction::Warn);
    assert_eq!(
        rejection(&h.policy(warn.clone())),
        RejectReason::PolicyRefused
    );
    warn.action = None;
    assert_eq!(rejection(&h.policy(warn)), RejectReason::PolicyRefused);
    let mut stale = compliance_policy("t", "cp", Ios, PolicyLevel::High);
    stale.updated_at -= 1;
    assert_eq!(rejection(&h.policy(stale)), RejectReason::Stale);
    // Connector settings.
    let mut bad = enabled("t", LOOKOUT);
    bad.unresponsive_threshold_days = 0;
    bad.updated_at += 1;
    assert_eq!(rejection(&h.connector(bad)), RejectReason::InvalidField);
    assert_eq!(
        rejection(&h.apply("t/acme", Body::Connector(None))),
        RejectReason::UnknownPartner
    );
    // App sync off for every connector.
    h.enroll("t", "i", Ios, Mdm);
    let inv = AppInventory {
        tenant_id: "t".into(),
        device_id: "i".into(),
        ownership: Ownership::Personal,
        collected_at: h.now,
        apps: vec![],
    };
    assert_eq!(
        rejection(&h.apply("t/i", Body::Inventory(inv))),
        RejectReason::AppSyncDisabled
    );
    // Heartbeats.
    h.heartbeat("t", LOOKOUT);
    h.now -= 10;
    assert_eq!(rejection(&h.heartbeat("t", LOOKOUT)), RejectReason::Stale);
    // The refused inputs changed nothing: the device is still compliant at LOW.
    let t = h.engine.tenants().get("t").unwrap();
    let _ = t;
    let rec = h.engine.device_record(0, "t", "d").unwrap();
    assert_eq!(rec.compliance, ComplianceState::Compliant);
    assert_eq!(rec.partners.len(), 1);
    assert_eq!(rec.partners[0].health_state, H::Low);
}

/// App Sync: personal devices lose unmanaged apps unless full collection is allowed; one output
/// per partner with App Sync on.
#[test]
fn app_sync_filters_personal_inventories() {
    let app = |id: &str, managed| AppInfo {
        app_id: id.into(),
        version: "1".into(),
        short_version: "1".into(),
        name: id.into(),
        bundle_size: 1,
        dynamic_size: 2,
        ad_hoc_signed: false,
        from_app_store: true,
        beta: false,
        device_vpp: false,
        validated: true,
        managed,
    };
    let mut h = Harness::new();
    let mut l = enabled("t", LOOKOUT);
    l.ios_app_sync = true;
    h.connector(l);
    let mut z = enabled("t", ZIMPERIUM);
    z.ios_app_sync = true;
    z.ios_app_sync_personal_full = true;
    h.connector(z);
    h.connector(enabled("t", "jamf")); // App Sync off
    h.enroll_owned("t", "i", Ios, Ownership::Personal);
    let inv = AppInventory {
        tenant_id: "t".into(),
        device_id: "i".into(),
        ownership: Ownership::Personal,
        collected_at: h.now,
        apps: vec![app("a", true), app("b", false)],
    };
    let out = h.apply("t/i", Body::Inventory(inv));
    let invs: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            mtdgate::engine::Output::Inventory(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(invs.len(), 2, "{out:?}");
    let lo = invs.iter().find(|i| i.partner_id == LOOKOUT).unwrap();
    assert_eq!(lo.apps.len(), 1);
    assert_eq!(lo.unmanaged_apps_removed, 1);
    let zi = invs.iter().find(|i| i.partner_id == ZIMPERIUM).unwrap();
    assert_eq!(zi.apps.len(), 2);
}

/// Retiring a device drops its state and writes a tombstone; outputs only on real change.
#[test]
fn retire_and_changelog() {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |_| {});
    h.enroll("t", "d", Ios, Mdm);
    let mut records = Vec::new();
    h.engine
        .drain_changelog(0, |k, r| records.push((k, r.is_some())));
    assert_eq!(records, vec![("t/d".to_owned(), true)]);
    h.engine
        .drain_changelog(0, |k, _| panic!("nothing changed, got {k}"));
    let out = h.apply("t/d", Body::Enrollment(None));
    assert!(out.is_empty());
    let mut records = Vec::new();
    h.engine
        .drain_changelog(0, |k, r| records.push((k, r.is_some())));
    assert_eq!(records, vec![("t/d".to_owned(), false)]);
    assert_eq!(h.engine.device_count(), 0);
}

/// State restored from changelog records behaves exactly like the original.
#[test]
fn restore_from_changelog() {
    let mut a = Harness::new();
    tenant_with(&mut a, LOOKOUT, |_| {});
    a.policy(app_policy(
        "t",
        "ap",
        Ios,
        PolicyLevel::Medium,
        PolicyAction::Block,
    ));
    a.enroll("t", "d", Ios, Mdm);
    let r = a.threat("t", LOOKOUT, "d", Ios, Mdm, H::High);
    a.report(r);
    let r = a.threat("t", LOOKOUT, "m", Ios, Mam, H::High);
    a.report(r);
    let mut log = Vec::new();
    a.engine.drain_changelog(0, |k, r| log.push((k, r)));

    let mut b = Harness::new();
    tenant_with(&mut b, LOOKOUT, |_| {});
    b.policy(app_policy(
        "t",
        "ap",
        Ios,
        PolicyLevel::Medium,
        PolicyAction::Block,
    ));
    for (k, r) in &log {
        b.engine.restore(0, k, r.as_ref()).unwrap();
    }
    for dev in ["d", "m"] {
        assert_eq!(
            a.engine.device_record(0, "t", dev),
            b.engine.device_record(0, "t", dev)
        );
    }
    // Same next input, same outputs and ids.
    for h in [&mut a, &mut b] {
        h.now += 5;
    }
    let ra = support::engine::report("t", LOOKOUT, "m", Ios, Mam, H::Low, a.now, "fix");
    let oa = a.report(ra.clone());
    let ob = b.report(ra);
    assert_eq!(oa, ob);
    assert_eq!(actions(&oa)[0].action, AppAction::Unblock);
}

/// What one report of a replay scenario should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    Applied,
    Duplicate,
    Stale,
}

/// One report of a replay scenario: partner, event id, `observed_at` (ms after `T0`), outcome.
type ReplayStep = (&'static str, String, i64, Replay);

/// The tenant of the replay scenarios: Lookout and Zimperium enabled, a compliance policy.
fn replay_tenant() -> Harness {
    let mut h = Harness::new();
    tenant_with(&mut h, LOOKOUT, |_| {});
    h.connector(enabled("t", ZIMPERIUM));
    h
}

/// Applies one replay step to device `d`, checking its outcome (and that a duplicate's detail
/// names the event and says it was applied).
fn replay_step(h: &mut Harness, (partner, id, at, expect): &ReplayStep, name: &str) {
    let r = support::engine::report("t", partner, "d", Ios, Mdm, H::Low, T0 + at, id);
    let before = h.engine.device_record(0, "t", "d");
    let out = h.report(r);
    let got = match rejected(&out).first() {
        None => Replay::Applied,
        Some(r) if r.reason == RejectReason::Duplicate => {
            assert!(
                r.detail.contains(id.as_str()) && r.detail.contains("already applied"),
                "{name}: {}",
                r.detail
            );
            Replay::Duplicate
        }
        Some(r) if r.reason == RejectReason::Stale => Replay::Stale,
        Some(r) => panic!("{name}: {partner} {id} @{at}: {r:?}"),
    };
    assert_eq!(got, *expect, "{name}: {partner} {id} @{at}: {out:?}");
    if got != Replay::Applied {
        assert_eq!(
            out.len(),
            1,
            "{name}: a refused report publishes nothing else"
        );
        let after = h.engine.device_record(0, "t", "d");
        assert_eq!(before, after, "{name}: a refused report changes nothing");
    }
}

/// The replay scenarios: the contract ignores a report whose `event_id` was already applied,
/// and mtdgate remembers the last `REPLAY_WINDOW` applied per (device, partner).
fn replay_rows() -> Vec<(&'static str, Vec<ReplayStep>)> {
    use Replay::*;
    let n = REPLAY_WINDOW as i64;
    let s = |p, id: &str, at, e| (p, id.to_owned(), at, e);
    // `a`, then `k` other reports of the same partner, then `a` again at `at`.
    let after_others = |k: i64, at: i64, last: Replay| {
        let mut steps = vec![s(LOOKOUT, "a", 0, Applied)];
        steps.extend((1..=k).map(|i| (LOOKOUT, format!("other-{i}"), 10 * i, Applied)));
        steps.push(s(LOOKOUT, "a", at, last));
        steps
    };
    vec![
        (
            "redelivery (same observed_at)",
            vec![s(LOOKOUT, "a", 0, Applied), s(LOOKOUT, "a", 0, Duplicate)],
        ),
        (
            "same id, newer observed_at (re-stamped retry)",
            vec![s(LOOKOUT, "a", 0, Applied), s(LOOKOUT, "a", 50, Duplicate)],
        ),
        (
            "same id, older observed_at: DUPLICATE, not STALE",
            vec![s(LOOKOUT, "a", 20, Applied), s(LOOKOUT, "a", 10, Duplicate)],
        ),
        (
            "replay after other reports within the window, re-stamped",
            after_others(n - 1, 1_000, Duplicate),
        ),
        (
            "replay after other reports within the window, old timestamp",
            after_others(n - 1, 0, Duplicate),
        ),
        (
            "fell out of the window, re-stamped: applied as new",
            after_others(n, 1_000, Applied),
        ),
        (
            "fell out of the window, old timestamp: STALE",
            after_others(n, 0, Stale),
        ),
        (
            "different id, same observed_at as the held report",
            vec![s(LOOKOUT, "a", 10, Applied), s(LOOKOUT, "b", 10, Applied)],
        ),
        (
            "different id, older observed_at",
            vec![s(LOOKOUT, "a", 10, Applied), s(LOOKOUT, "b", 5, Stale)],
        ),
        (
            "a refused replay does not take a place in the window",
            vec![
                s(LOOKOUT, "a", 0, Applied),
                s(LOOKOUT, "b", 10, Applied),
                s(LOOKOUT, "a", 20, Duplicate),
            ]
            .into_iter()
            .chain((1..n).map(|i| (LOOKOUT, format!("c-{i}"), 20 + i, Applied)))
            .chain([s(LOOKOUT, "a", 100, Applied)])
            .collect(),
        ),
        (
            "other partners do not share a window",
            vec![
                s(LOOKOUT, "a", 0, Applied),
                s(ZIMPERIUM, "a", 10, Applied),
                s(LOOKOUT, "a", 20, Duplicate),
                s(ZIMPERIUM, "a", 30, Duplicate),
                s(ZIMPERIUM, "z", 40, Applied),
                s(LOOKOUT, "z", 50, Applied),
            ],
        ),
    ]
}

/// A replayed `event_id` is `DUPLICATE` whatever its `observed_at` while it is one of the
/// partner's last `REPLAY_WINDOW` applied reports for the device; past the window a newer one
/// is applied as new and an older one is `STALE`.
#[test]
fn replays_within_the_window_are_duplicates() {
    for (name, steps) in replay_rows() {
        let mut h = replay_tenant();
        for step in &steps {
            replay_step(&mut h, step, name);
        }
    }
}

/// The window is device state in the changelog: after every step of every scenario, a fresh
/// instance restored from the changelog holds the same record and gives the next step the
/// same outcome.
#[test]
fn replay_window_survives_restore() {
    for (name, steps) in replay_rows() {
        for cut in 1..steps.len() {
            let mut a = replay_tenant();
            for step in &steps[..cut] {
                replay_step(&mut a, step, name);
            }
            let mut log = Vec::new();
            a.engine.drain_changelog(0, |k, r| log.push((k, r)));
            let mut b = replay_tenant();
            for (k, r) in &log {
                b.engine.restore(0, k, r.as_ref()).unwrap();
            }
            assert_eq!(
                a.engine.device_record(0, "t", "d"),
                b.engine.device_record(0, "t", "d"),
                "{name} after {cut} steps"
            );
            for step in &steps[cut..] {
                replay_step(&mut b, step, &format!("{name}, restored after {cut} steps"));
            }
        }
    }
}

/// The changelog record carries the window (`earlier_event_fingerprints`, newest first); a
/// record written before it existed (schema id 1019 and earlier) restores with the latest
/// report's event only, so a replay of an earlier one is then applied if newer.
#[test]
fn replay_window_in_the_changelog_record() {
    let mut a = replay_tenant();
    for (id, at) in [("a", 0), ("b", 10)] {
        let r = support::engine::report("t", LOOKOUT, "d", Ios, Mdm, H::Low, T0 + at, id);
        assert!(rejected(&a.report(r)).is_empty());
    }
    let mut record = a.engine.device_record(0, "t", "d").unwrap();
    let p = &record.partners[0];
    assert_eq!(p.event_fingerprint, ids::event_fingerprint("b") as i32);
    assert_eq!(
        p.earlier_event_fingerprints,
        [ids::event_fingerprint("a") as i32]
    );
    record.partners[0].earlier_event_fingerprints.clear();
    let mut b = replay_tenant();
    b.engine.restore(0, "t/d", Some(&record)).unwrap();
    let replay = |id| support::engine::report("t", LOOKOUT, "d", Ios, Mdm, H::Low, T0 + 20, id);
    assert_eq!(rejection(&b.report(replay("b"))), RejectReason::Duplicate);
    assert!(rejected(&b.report(replay("a"))).is_empty());
}

/// An `observed_at` before what an observation holds (48 bits of milliseconds, about 4,460
/// years before 1970) is refused, not clamped into another report's time.
#[test]
fn observed_at_out_of_range_is_refused() {
    let mut h = replay_tenant();
    let mut r = h.threat("t", LOOKOUT, "d", Ios, Mdm, H::Low);
    r.observed_at = Observation::MIN_OBSERVED_AT - 1;
    assert_eq!(rejection(&h.report(r.clone())), RejectReason::InvalidField);
    r.observed_at = Observation::MIN_OBSERVED_AT;
    r.event_id = "oldest".into();
    assert!(rejected(&h.report(r)).is_empty());
}
