//! Table-driven tests of contract 1.1 part 1: policy assignment to groups, Defender's separate
//! ceiling, tenant settings, app protection toggles and `block_on_missing_data`, threats in
//! verdicts, and App Sync for enrolled iOS devices only.

mod support;

use mtdgate::engine::Body;
use mtdgate::model::*;
use support::engine::*;

use HealthState as H;
use Management::{Mam, Mdm};
use Platform::{Android, Ios};

fn membership(h: &mut Harness, user: &str, groups: &[&str]) -> Vec<mtdgate::engine::Output> {
    let m = GroupMembership {
        tenant_id: "t".into(),
        user_id: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        updated_at: h.now,
    };
    h.apply(&format!("t/{user}"), Body::Membership(Some(m)))
}

fn settings(h: &mut Harness, s: Option<TenantSettings>) -> Vec<mtdgate::engine::Output> {
    h.apply("t", Body::Settings(s))
}

fn no_policy(state: NoPolicyState) -> TenantSettings {
    TenantSettings {
        tenant_id: "t".into(),
        no_policy_state: state,
        report_validity_days: None,
        updated_at: T0,
    }
}

/// Enrolls `device` on iOS for `user`.
fn enroll_for(h: &mut Harness, device: &str, user: &str) -> Vec<mtdgate::engine::Output> {
    let e = DeviceEnrollment {
        tenant_id: "t".into(),
        device_id: device.into(),
        user_id: user.into(),
        platform: Ios,
        management: Mdm,
        ownership: Ownership::Corporate,
        os_version: Some("17.4".into()),
        enrolled_at: h.now,
    };
    h.apply(&format!("t/{device}"), Body::Enrollment(Some(e)))
}

fn report_for(
    h: &mut Harness,
    partner: &str,
    device: &str,
    state: H,
) -> Vec<mtdgate::engine::Output> {
    let r = h.threat("t", partner, device, Ios, Mdm, state);
    h.report(r)
}

/// The compliance state the outputs give `device`, if they give one.
fn state_of(out: &[mtdgate::engine::Output], device: &str) -> Option<ComplianceState> {
    compliance(out)
        .iter()
        .rev()
        .find(|c| c.device_id == device)
        .map(|c| c.current)
}

/// Current state of a device, as the engine holds it.
fn held(h: &Harness, device: &str) -> ComplianceState {
    h.engine
        .reader()
        .explain_device("t", device, h.now)
        .expect("device held")
        .compliance
}

fn assigned(id: &str, include: Option<&[&str]>, exclude: &[&str]) -> ThreatPolicy {
    let mut p = compliance_policy("t", id, Ios, PolicyLevel::Low);
    p.include_groups = include.map(|g| g.iter().map(|s| s.to_string()).collect());
    p.exclude_groups = exclude.iter().map(|s| s.to_string()).collect();
    p
}

/// Lookout and Defender both on for iOS compliance; a Defender-only policy for group `mde`
/// and a third-party-only policy for group `tp`.
fn separate_thresholds(h: &mut Harness) {
    h.connector(enabled("t", LOOKOUT));
    h.connector(enabled("t", MDE));
    let mut defender_only = assigned("defender-only", Some(&["mde"]), &[]);
    defender_only.max_level = PolicyLevel::NotSet;
    defender_only.defender_max_level = Some(PolicyLevel::Low);
    h.policy(defender_only);
    let mut third_party = assigned("third-party", Some(&["tp"]), &[]);
    third_party.defender_max_level = Some(PolicyLevel::NotSet);
    h.policy(third_party);
    membership(h, "alice", &["mde"]);
    membership(h, "bob", &["tp"]);
    membership(h, "carol", &["mde", "tp"]);
    for (d, u) in [("d-alice", "alice"), ("d-bob", "bob"), ("d-carol", "carol")] {
        enroll_for(h, d, u);
    }
}

/// The note of the MTD page: Defender for one group, a third party for another, each judged by
/// its own partner only; a user in both groups is judged by both.
#[test]
fn defender_only_policy_for_one_group_third_party_for_another() {
    struct Row {
        mde: H,
        lookout: H,
        alice: ComplianceState,
        bob: ComplianceState,
        carol: ComplianceState,
    }
    use ComplianceState::{Compliant as C, Noncompliant as N};
    let rows = [
        Row {
            mde: H::Secured,
            lookout: H::Secured,
            alice: C,
            bob: C,
            carol: C,
        },
        Row {
            mde: H::High,
            lookout: H::Secured,
            alice: N,
            bob: C,
            carol: N,
        },
        Row {
            mde: H::Secured,
            lookout: H::High,
            alice: C,
            bob: N,
            carol: N,
        },
        Row {
            mde: H::High,
            lookout: H::High,
            alice: N,
            bob: N,
            carol: N,
        },
        // A Defender-only judged device needs no third-party scan, and the other way round:
        // the multi-vendor rule covers the partners that count for the device only.
        Row {
            mde: H::Activated,
            lookout: H::Secured,
            alice: C,
            bob: C,
            carol: C,
        },
    ];
    for (i, row) in rows.iter().enumerate() {
        let mut h = Harness::new();
        separate_thresholds(&mut h);
        for d in ["d-alice", "d-bob", "d-carol"] {
            report_for(&mut h, MDE, d, row.mde);
            report_for(&mut h, LOOKOUT, d, row.lookout);
        }
        assert_eq!(
            held(&h, "d-alice"),
            row.alice,
            "row {i}: alice (Defender only)"
        );
        assert_eq!(
            held(&h, "d-bob"),
            row.bob,
            "row {i}: bob (third party only)"
        );
        assert_eq!(
            held(&h, "d-carol"),
            row.carol,
            "row {i}: carol (both groups)"
        );
    }
    // The reasons name the partner that failed, and only that one.
    let mut h = Harness::new();
    separate_thresholds(&mut h);
    let out = report_for(&mut h, LOOKOUT, "d-bob", H::High);
    let change = compliance(&out)[0];
    assert_eq!(change.current, ComplianceState::Noncompliant);
    assert_eq!(change.reasons.len(), 1);
    assert_eq!(change.reasons[0].partner_id, LOOKOUT);
    assert!(
        change.reasons[0].detail.contains("third-party"),
        "{:?}",
        change.reasons
    );
    // Defender's report about bob is not judged: no output.
    assert!(compliance(&report_for(&mut h, MDE, "d-bob", H::High)).is_empty());
}

#[test]
fn exclusion_wins_over_inclusion() {
    let mut h = Harness::new();
    h.connector(enabled("t", LOOKOUT));
    h.policy(assigned("p", Some(&["staff"]), &["contractors"]));
    membership(&mut h, "ann", &["staff"]);
    membership(&mut h, "cid", &["staff", "contractors"]);
    membership(&mut h, "eve", &["contractors"]);
    for (d, u) in [("d-ann", "ann"), ("d-cid", "cid"), ("d-eve", "eve")] {
        enroll_for(&mut h, d, u);
        report_for(&mut h, LOOKOUT, d, H::High);
    }
    assert_eq!(held(&h, "d-ann"), ComplianceState::Noncompliant);
    assert_eq!(held(&h, "d-cid"), ComplianceState::NotEvaluated, "excluded");
    assert_eq!(
        held(&h, "d-eve"),
        ComplianceState::NotEvaluated,
        "not included"
    );
    let explained = h
        .engine
        .reader()
        .explain_device("t", "d-cid", h.now)
        .unwrap();
    let p = &explained.policies[0];
    assert!(!p.applies);
    assert_eq!(
        p.scope,
        mtdgate::engine::explain::Scope::Excluded {
            group: "contractors".into()
        }
    );
}

/// A membership change re-evaluates that user's devices and nobody else's.
#[test]
fn membership_change_flips_exactly_that_users_devices() {
    let mut h = Harness::new();
    h.connector(enabled("t", LOOKOUT));
    h.policy(assigned("p", Some(&["strict"]), &[]));
    membership(&mut h, "u1", &["strict"]);
    membership(&mut h, "u2", &["strict"]);
    for (d, u) in [("a1", "u1"), ("a2", "u1"), ("b1", "u2")] {
        enroll_for(&mut h, d, u);
        report_for(&mut h, LOOKOUT, d, H::High);
        assert_eq!(held(&h, d), ComplianceState::Noncompliant);
    }
    // u1 leaves the group: both of u1's devices, and only those, change.
    h.now += 1;
    let out = membership(&mut h, "u1", &["other"]);
    let mut changed: Vec<_> = compliance(&out)
        .iter()
        .map(|c| c.device_id.clone())
        .collect();
    changed.sort();
    assert_eq!(changed, ["a1", "a2"]);
    assert!(compliance(&out)
        .iter()
        .all(|c| c.current == ComplianceState::NotEvaluated
            && c.cause_event_id.starts_with("membership:t/u1@")));
    // Back in: flipped again. A tombstone puts the user in no group.
    h.now += 1;
    let out = membership(&mut h, "u1", &["strict"]);
    assert_eq!(compliance(&out).len(), 2);
    h.now += 1;
    let out = h.apply("t/u1", Body::Membership(None));
    assert_eq!(compliance(&out).len(), 2);
    assert_eq!(
        held(&h, "b1"),
        ComplianceState::Noncompliant,
        "u2 untouched"
    );
    // An older membership record is stale and changes nothing.
    let old = GroupMembership {
        tenant_id: "t".into(),
        user_id: "u2".into(),
        groups: vec![],
        updated_at: T0 - 1,
    };
    let out = h.apply("t/u2", Body::Membership(Some(old)));
    assert_eq!(rejection(&out), RejectReason::Stale);
    // A membership naming another user than its key is refused.
    let wrong = GroupMembership {
        tenant_id: "t".into(),
        user_id: "u9".into(),
        groups: vec![],
        updated_at: h.now,
    };
    assert_eq!(
        rejection(&h.apply("t/u2", Body::Membership(Some(wrong)))),
        RejectReason::InvalidField
    );
}

/// A device without a user is in scope of policies without `include_groups` only.
#[test]
fn device_without_a_user() {
    for (include, expect) in [
        (None, ComplianceState::Noncompliant),
        (Some(&["staff"][..]), ComplianceState::NotEvaluated),
    ] {
        let mut h = Harness::new();
        h.connector(enabled("t", LOOKOUT));
        h.policy(assigned("p", include, &["contractors"]));
        let mut r = h.threat("t", LOOKOUT, "nouser", Ios, Mdm, H::High);
        r.user_id = None;
        h.report(r);
        assert_eq!(held(&h, "nouser"), expect, "include {include:?}");
        let e = h
            .engine
            .reader()
            .explain_device("t", "nouser", h.now)
            .unwrap();
        assert_eq!(e.user_id, None);
        let want = match include {
            None => mtdgate::engine::explain::Scope::AllUsers,
            Some(_) => mtdgate::engine::explain::Scope::NoUser,
        };
        assert_eq!(e.policies[0].scope, want);
    }
}

/// `defender_max_level`: null holds Defender to `max_level` (1.0), `NOT_SET` leaves Defender's
/// data unjudged, a level is Defender's own ceiling.
#[test]
fn defender_max_level_not_set_versus_null() {
    struct Row {
        defender_max: Option<PolicyLevel>,
        mde: H,
        expect: ComplianceState,
    }
    use ComplianceState::{Compliant as C, Noncompliant as N, NotEvaluated as E};
    let rows = [
        Row {
            defender_max: None,
            mde: H::Medium,
            expect: N,
        },
        Row {
            defender_max: None,
            mde: H::Low,
            expect: C,
        },
        Row {
            defender_max: Some(PolicyLevel::NotSet),
            mde: H::High,
            expect: E,
        },
        Row {
            defender_max: Some(PolicyLevel::High),
            mde: H::High,
            expect: C,
        },
        Row {
            defender_max: Some(PolicyLevel::Secured),
            mde: H::Low,
            expect: N,
        },
    ];
    for (i, row) in rows.iter().enumerate() {
        let mut h = Harness::new();
        h.connector(enabled("t", MDE));
        let mut p = compliance_policy("t", "p", Ios, PolicyLevel::Low);
        p.defender_max_level = row.defender_max;
        h.policy(p);
        enroll_for(&mut h, "d", "u");
        report_for(&mut h, MDE, "d", row.mde);
        assert_eq!(held(&h, "d"), row.expect, "row {i}");
    }
}

#[test]
fn no_policy_state_each_value() {
    for (state, expect) in [
        (NoPolicyState::NotEvaluated, ComplianceState::NotEvaluated),
        (NoPolicyState::Compliant, ComplianceState::Compliant),
        (NoPolicyState::Noncompliant, ComplianceState::Noncompliant),
    ] {
        let mut h = Harness::new();
        h.connector(enabled("t", LOOKOUT));
        // A policy for another group only: no COMPLIANCE policy applies to the device.
        h.policy(assigned("p", Some(&["other"]), &[]));
        settings(&mut h, Some(no_policy(state)));
        enroll_for(&mut h, "d", "u");
        report_for(&mut h, LOOKOUT, "d", H::High);
        assert_eq!(held(&h, "d"), expect, "{state:?}");
        // A tombstone restores the default (NOT_EVALUATED) and re-evaluates at once.
        let out = settings(&mut h, None);
        assert_eq!(held(&h, "d"), ComplianceState::NotEvaluated);
        assert_eq!(
            state_of(&out, "d").is_some(),
            expect != ComplianceState::NotEvaluated
        );
    }
    // Settings are keyed by the tenant alone and checked.
    let mut h = Harness::new();
    let out = h.apply(
        "t/x",
        Body::Settings(Some(no_policy(NoPolicyState::Compliant))),
    );
    assert_eq!(rejection(&out), RejectReason::InvalidField);
    let mut bad = no_policy(NoPolicyState::Compliant);
    bad.report_validity_days = Some(121);
    assert_eq!(
        rejection(&settings(&mut h, Some(bad))),
        RejectReason::InvalidField
    );
    let mut other = no_policy(NoPolicyState::Compliant);
    other.tenant_id = "u".into();
    assert_eq!(
        rejection(&settings(&mut h, Some(other))),
        RejectReason::TenantMismatch
    );
}

/// Intune allows Defender plus one third-party app protection partner per platform: a second
/// third-party toggle has no effect and is reported; the first keeps working.
#[test]
fn second_third_party_mam_toggle_is_conflicting() {
    let mut h = Harness::new();
    let mut first = enabled("t", LOOKOUT);
    first.android_mam_enabled = false;
    assert!(rejected(&h.connector(first)).is_empty());
    let mut second = enabled("t", ZIMPERIUM);
    second.android_mam_enabled = false;
    let out = h.connector(second.clone());
    let refused = rejected(&out);
    assert_eq!(refused.len(), 1, "{out:?}");
    assert_eq!(refused[0].reason, RejectReason::ConflictingConnector);
    assert!(
        refused[0].detail.contains("ios_mam_enabled"),
        "{}",
        refused[0].detail
    );
    assert!(refused[0].detail.contains(LOOKOUT), "{}", refused[0].detail);
    // The rest of Zimperium's settings apply: its connector is ENABLED (compliance toggles).
    let zim = h
        .engine
        .reader()
        .explain_connectors("t")
        .into_iter()
        .find(|c| c.partner_id == ZIMPERIUM)
        .unwrap();
    assert_eq!(zim.status, ConnectorStatus::Enabled);
    assert!(
        !zim.settings.unwrap().ios_mam_enabled,
        "the toggle took no effect"
    );
    // Defender beside them is allowed.
    assert!(rejected(&h.connector(enabled("t", MDE))).is_empty());
    // Lookout still judges app protection: a BLOCK on its report, none on Zimperium's.
    let mut p = app_policy("t", "ap", Ios, PolicyLevel::Low, PolicyAction::Block);
    p.partner_priority = Some(PartnerPriority::ThirdPartyFirst);
    h.policy(p);
    let r = h.threat("t", ZIMPERIUM, "m", Ios, Mam, H::High);
    assert!(actions(&h.report(r)).is_empty());
    let r = h.threat("t", LOOKOUT, "m", Ios, Mam, H::High);
    let out = h.report(r);
    assert_eq!(actions(&out)[0].action, AppAction::Block);
    assert_eq!(actions(&out)[0].partner_id, LOOKOUT);
}

#[test]
fn mam_toggle_for_an_unsupported_platform_is_refused() {
    let mut h = Harness::new();
    // BlackBerry supports no app protection; Defender none on Windows.
    let mut c = enabled("t", "blackberry");
    c.android_mam_enabled = false;
    let out = h.connector(c);
    let r = rejected(&out);
    assert_eq!(r.len(), 1, "{out:?}");
    assert_eq!(r[0].reason, RejectReason::InvalidField);
    assert!(r[0].detail.contains("ios_mam_enabled"), "{}", r[0].detail);
    let mut d = enabled("t", MDE);
    d.windows_mam_enabled = true;
    d.android_mam_enabled = false;
    d.ios_mam_enabled = false;
    let out = h.connector(d);
    assert!(rejected(&out)[0].detail.contains("windows_mam_enabled"));
    // The rest applies: BlackBerry's data counts for compliance.
    h.policy(compliance_policy("t", "cp", Ios, PolicyLevel::Low));
    enroll_for(&mut h, "d", "u");
    report_for(&mut h, "blackberry", "d", H::High);
    assert_eq!(held(&h, "d"), ComplianceState::Noncompliant);
}

/// `block_on_missing_data`: the chosen partner having no usable data counts as exceeding.
#[test]
fn block_on_missing_data_blocks_a_deactivated_report() {
    for (on, expect) in [(true, Some(AppAction::Block)), (false, None)] {
        let mut h = Harness::new();
        h.connector(enabled("t", LOOKOUT));
        let mut p = app_policy("t", "ap", Ios, PolicyLevel::Medium, PolicyAction::Block);
        p.block_on_missing_data = on;
        h.policy(p);
        let r = h.threat("t", LOOKOUT, "m", Ios, Mam, H::Deactivated);
        let out = h.report(r);
        let got = actions(&out).first().map(|a| a.action);
        assert_eq!(got, expect, "block_on_missing_data {on}");
        if on {
            assert_eq!(actions(&out)[0].level, None);
            // The MTD app activated and clean: unblocked.
            let r = h.threat("t", LOOKOUT, "m", Ios, Mam, H::Secured);
            assert_eq!(actions(&h.report(r))[0].action, AppAction::Unblock);
        }
    }
}

fn threat(name: &str, severity: ThreatSeverity) -> Threat {
    Threat {
        category: "malware".into(),
        name: name.into(),
        severity,
    }
}

#[test]
fn threats_in_the_noncompliant_reason_and_in_a_wipe() {
    let reported = vec![
        threat("adware", ThreatSeverity::Low),
        threat("rootkit", ThreatSeverity::Critical),
        threat("spyware", ThreatSeverity::High),
        threat("phishing", ThreatSeverity::Medium),
    ];
    let worst: Vec<_> = ["rootkit", "spyware", "phishing"].map(String::from).into();
    let names = |t: &[Threat]| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let mut h = Harness::new();
    h.connector(enabled("t", LOOKOUT));
    h.policy(compliance_policy("t", "cp", Ios, PolicyLevel::Low));
    enroll_for(&mut h, "d", "u");
    let mut r = h.threat("t", LOOKOUT, "d", Ios, Mdm, H::High);
    r.threats = reported.clone();
    let out = h.report(r);
    let c = compliance(&out)[0];
    assert_eq!(c.current, ComplianceState::Noncompliant);
    assert_eq!(c.reasons[0].code, ReasonCode::LevelExceedsPolicy);
    assert_eq!(
        names(&c.reasons[0].threats),
        worst,
        "worst three, worst first"
    );
    let e = h.engine.reader().explain_device("t", "d", h.now).unwrap();
    assert_eq!(names(&e.partners[0].threats), worst);
    assert_eq!(names(&e.decision.reasons[0].threats), worst);
    // The changelog keeps them: a restored device explains the same threats.
    let rec = h.engine.device_record(0, "t", "d").unwrap();
    assert_eq!(names(&rec.partners[0].threats), worst);

    let mut h = Harness::new();
    h.connector(enabled("t", LOOKOUT));
    h.policy(app_policy(
        "t",
        "wipe",
        Ios,
        PolicyLevel::Low,
        PolicyAction::Wipe,
    ));
    let mut r = h.threat("t", LOOKOUT, "m", Ios, Mam, H::High);
    r.threats = reported;
    let out = h.report(r);
    let a = actions(&out)[0];
    assert_eq!(a.action, AppAction::Wipe);
    assert_eq!(names(&a.threats), worst);
}

fn inventory(device: &str, ownership: Ownership) -> AppInventory {
    let app = |managed: bool| AppInfo {
        app_id: format!("com.example.{managed}"),
        version: "1".into(),
        short_version: "1".into(),
        name: "app".into(),
        bundle_size: 1,
        dynamic_size: 1,
        ad_hoc_signed: false,
        from_app_store: true,
        beta: false,
        device_vpp: false,
        validated: true,
        managed,
    };
    AppInventory {
        tenant_id: "t".into(),
        device_id: device.into(),
        ownership,
        collected_at: T0,
        apps: vec![app(true), app(false)],
    }
}

/// App Sync shares inventories of enrolled iOS devices only, with the enrollment's ownership.
#[test]
fn app_sync_for_enrolled_ios_devices_only() {
    let mut h = Harness::new();
    let mut c = enabled("t", LOOKOUT);
    c.ios_app_sync = true;
    h.connector(c);
    // Unenrolled: known from a report only, or not known at all.
    let r = h.threat("t", LOOKOUT, "seen", Ios, Mdm, H::Secured);
    h.report(r);
    for d in ["seen", "never"] {
        let out = h.apply(
            &format!("t/{d}"),
            Body::Inventory(inventory(d, Ownership::Corporate)),
        );
        assert_eq!(rejection(&out), RejectReason::NotEnrolled, "{d}");
    }
    // Enrolled on Android.
    h.enroll("t", "droid", Android, Mdm);
    let out = h.apply(
        "t/droid",
        Body::Inventory(inventory("droid", Ownership::Corporate)),
    );
    assert_eq!(rejection(&out), RejectReason::NotEnrolled);
    // Enrolled iOS with UNKNOWN ownership: treated as PERSONAL (unmanaged apps removed), even
    // though the inventory claims CORPORATE.
    let e = DeviceEnrollment {
        tenant_id: "t".into(),
        device_id: "iphone".into(),
        user_id: "u".into(),
        platform: Ios,
        management: Mdm,
        ownership: Ownership::Unknown,
        os_version: None,
        enrolled_at: T0,
    };
    h.apply("t/iphone", Body::Enrollment(Some(e)));
    let out = h.apply(
        "t/iphone",
        Body::Inventory(inventory("iphone", Ownership::Corporate)),
    );
    let shared: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            mtdgate::engine::Output::Inventory(i) => Some(i),
            _ => None,
        })
        .collect();
    assert_eq!(shared.len(), 1, "{out:?}");
    assert_eq!(shared[0].ownership, Ownership::Personal);
    assert_eq!(shared[0].apps.len(), 1);
    assert_eq!(shared[0].unmanaged_apps_removed, 1);
}
