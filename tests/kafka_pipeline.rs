//! End-to-end scenarios on the real broker: the service in-process, inputs produced as a vendor
//! gateway would, outputs read back by a read_committed consumer.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const DAY_MS: i64 = 86_400_000;

fn report(
    svc: &Service,
    event: &str,
    partner: &str,
    device: &str,
    mgmt: &str,
    state: &str,
) -> serde_json::Value {
    report_json(event, partner, device, mgmt, state, svc.now())
}

/// Seed scenario, enrolled device: infected -> NONCOMPLIANT; remediated -> COMPLIANT. Reports of
/// a NOT_SET_UP connector are rejected with a reason and never applied.
#[test]
fn enrolled_device_scenario_and_blocked_connector() {
    let (cfg, svc, gw, now) = scenario("mdm");
    let t = &cfg.topics;
    let mut tables = compliance_tables(&cfg, "MEDIUM", now);
    let not_set_up = ["provisioned", "ios_enabled"];
    tables.push(connector_record(
        &cfg,
        "acme",
        "zimperium",
        &not_set_up,
        now,
    ));
    gw.setup_tables(&tables);
    gw.send(
        &t.device_enrollments,
        "acme/d1",
        Some(&enrollment_json("d1", now)),
    );
    gw.flush();
    // Kafka orders records within a partition of one topic only: let the enrollment land first.
    let mut changes = Reader::new(&t.compliance_changes);
    changes.wait_for(1, WAIT);
    gw.send(
        &t.device_threats,
        "acme/d1",
        Some(&report(&svc, "e1", "lookout", "d1", "MDM", "HIGH")),
    );
    gw.send(
        &t.device_threats,
        "acme/d1",
        Some(&report(&svc, "z1", "zimperium", "d1", "MDM", "COMPROMISED")),
    );
    gw.flush();
    std::thread::sleep(Duration::from_millis(20));
    gw.send(
        &t.device_threats,
        "acme/d1",
        Some(&report(&svc, "e2", "lookout", "d1", "MDM", "SECURED")),
    );
    gw.flush();

    let got = changes.wait_for(3, WAIT).to_vec();
    let states: Vec<_> = got
        .iter()
        .map(|(_, v)| {
            (
                v["previous"].as_str().unwrap().to_owned(),
                v["current"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("UNKNOWN".to_owned(), "COMPLIANT".to_owned()),
            ("COMPLIANT".to_owned(), "NONCOMPLIANT".to_owned()),
            ("NONCOMPLIANT".to_owned(), "COMPLIANT".to_owned()),
        ]
    );
    assert_eq!(got[1].0, "acme/d1");
    assert_eq!(got[1].1["cause_event_id"], "e1");
    assert_eq!(got[1].1["reasons"][0]["code"], "LEVEL_EXCEEDS_POLICY");
    assert_eq!(got[1].1["user_id"], "alice");

    let mut rejected = Reader::new(&t.rejected);
    let r = rejected.wait_for(1, WAIT).to_vec();
    assert_eq!(r[0].0, "acme/d1");
    assert_eq!(r[0].1["reason"], "CONNECTOR_NOT_SET_UP");
    assert_eq!(r[0].1["source_topic"], t.device_threats.as_str());
    assert!(r[0].1["raw"].as_str().is_some());
    // Nothing more: the COMPROMISED report of the blocked connector never counted.
    assert_eq!(changes.drain(Duration::from_secs(1)).len(), 3);
    svc.stop();
}

/// Seed scenario, unenrolled device: BLOCK -> UNBLOCK, and WIPE once per incident.
#[test]
fn unenrolled_device_block_unblock_and_wipe() {
    let (cfg, svc, gw, now) = scenario("mam");
    let t = &cfg.topics;
    let policies = [
        policy_json("block", "IOS", "MEDIUM", Some("BLOCK"), now),
        policy_json("wipe", "IOS", "HIGH", Some("WIPE"), now),
        policy_json("warn", "IOS", "HIGH", Some("WARN"), now),
    ];
    gw.setup_tables(&acme_tables(&cfg, &["ios_mam_enabled"], &policies, now));
    for (i, state) in ["HIGH", "COMPROMISED", "COMPROMISED", "LOW", "COMPROMISED"]
        .iter()
        .enumerate()
    {
        gw.send(
            &t.device_threats,
            "acme/m1",
            Some(&report(
                &svc,
                &format!("m{i}"),
                "lookout",
                "m1",
                "MAM",
                state,
            )),
        );
        gw.flush();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut actions = Reader::new(&t.app_protection_actions);
    let got = actions.wait_for(5, WAIT).to_vec();
    assert_eq!(
        field(&got, "action"),
        vec!["BLOCK", "WIPE", "UNBLOCK", "WIPE", "BLOCK"]
    );
    assert_eq!(
        field(&got, "policy_id"),
        vec!["block", "wipe", "block", "wipe", "block"]
    );
    assert_eq!(actions.drain(Duration::from_secs(1)).len(), 5);
    let mut rejected = Reader::new(&t.rejected);
    let r = rejected.wait_for(1, WAIT).to_vec();
    assert_eq!(r[0].1["reason"], "POLICY_REFUSED");
    assert!(r[0].1["detail"].as_str().unwrap().contains("WARN"));
    svc.stop();
}

/// A connector that goes silent becomes UNRESPONSIVE, then ignored (devices re-evaluated), then
/// a heartbeat restores it. The wall clock is moved, not waited for.
#[test]
fn silent_connector_becomes_unresponsive_then_ignored_then_restored() {
    let (cfg, svc, gw, now) = scenario("silent");
    let t = &cfg.topics;
    gw.setup_tables(&compliance_tables(&cfg, "LOW", now));
    gw.send(
        &t.device_threats,
        "acme/d1",
        Some(&report(&svc, "e1", "lookout", "d1", "MDM", "HIGH")),
    );
    gw.flush();
    let mut changes = Reader::new(&t.compliance_changes);
    assert_eq!(changes.wait_for(1, WAIT)[0].1["current"], "NONCOMPLIANT");

    let mut status = Reader::new(&t.connector_status);
    status.wait_for(1, WAIT);
    svc.clock.advance(DAY_MS + 1_000);
    let s = status.wait_for(2, WAIT).to_vec();
    assert_eq!(s[1].1["current"], "UNRESPONSIVE");
    assert_eq!(s[1].1["compliance_ignored"], false);

    svc.clock.advance(6 * DAY_MS);
    let s = status.wait_for(3, WAIT).to_vec();
    assert_eq!(s[2].1["compliance_ignored"], true);
    let c = changes.wait_for(2, WAIT).to_vec();
    assert_eq!(c[1].1["current"], "NOT_EVALUATED");
    assert_eq!(c[1].1["reasons"][0]["code"], "PARTNER_COMPLIANCE_IGNORED");

    gw.send(
        &t.connector_heartbeats,
        "acme/lookout",
        Some(&json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": svc.now()})),
    );
    gw.flush();
    let s = status.wait_for(4, WAIT).to_vec();
    assert_eq!(s[3].1["current"], "ENABLED");
    assert_eq!(s[3].1["compliance_ignored"], false);
    let c = changes.wait_for(3, WAIT).to_vec();
    assert_eq!(c[2].1["current"], "NONCOMPLIANT");
    svc.stop();
}

/// A restarted service restores device state from the changelog: a remediation after the
/// restart is judged against the state from before it, with no output lost or repeated.
#[test]
fn state_survives_restart() {
    let cfg = test_config("restart");
    let gw = Gateway::new();
    let t = &cfg.topics;
    let svc = Service::start(&cfg);
    let now = svc.now();
    setup_mam_tenant(&gw, &cfg, now);
    // Each of 20 MAM devices reports `state(d)`, event ids `{prefix}{d}`.
    let reports = |svc: &Service, prefix: &str, state: &dyn Fn(usize) -> &'static str| {
        for d in 0..20 {
            let (event, device) = (format!("{prefix}{d}"), format!("m{d}"));
            let r = report(svc, &event, "lookout", &device, "MAM", state(d));
            gw.send(&t.device_threats, &format!("acme/{device}"), Some(&r));
        }
        gw.flush();
    };
    reports(&svc, "a", &|_| "HIGH");
    let mut actions = Reader::new(&t.app_protection_actions);
    actions.wait_for(20, WAIT);
    svc.stop();

    let svc = Service::start(&cfg);
    reports(&svc, "b", &|d| if d % 2 == 0 { "SECURED" } else { "HIGH" });
    let got = actions.wait_for(30, WAIT).to_vec();
    assert_eq!(
        actions.drain(Duration::from_secs(1)).len(),
        30,
        "still-infected devices are not blocked twice"
    );
    let unblocked = got.iter().filter(|(_, v)| v["action"] == "UNBLOCK").count();
    assert_eq!(unblocked, 10);
    svc.stop();
}

/// Adaptive commits: with the interval far longer than the wait, outputs still become visible
/// to a read_committed reader, because the loop commits as soon as its input is drained.
#[test]
fn drained_input_commits_before_the_interval() {
    let mut cfg = test_config("drained");
    // Below the 60 s transaction timeout, far above the waits.
    cfg.processing.commit_interval_ms = 45_000;
    cfg.processing.adaptive_commit = true;
    let gw = Gateway::new();
    let t = &cfg.topics;
    let svc = Service::start(&cfg);
    let now = svc.now();
    gw.setup_tables(&compliance_tables(&cfg, "MEDIUM", now));
    gw.send(
        &t.device_enrollments,
        "acme/d1",
        Some(&enrollment_json("d1", now)),
    );
    gw.flush();
    let within = Duration::from_secs(15);
    let mut changes = Reader::new(&t.compliance_changes);
    assert_eq!(changes.wait_for(1, within).len(), 1, "enrollment verdict");
    for (n, (event, state)) in [("e1", "HIGH"), ("e2", "SECURED"), ("e3", "HIGH")]
        .into_iter()
        .enumerate()
    {
        gw.send(
            &t.device_threats,
            "acme/d1",
            Some(&report(&svc, event, "lookout", "d1", "MDM", state)),
        );
        gw.flush();
        let got = changes.wait_for(n + 2, within).to_vec();
        assert_eq!(got.len(), n + 2, "verdict of {event} committed on drain");
        let want = if state == "HIGH" {
            "NONCOMPLIANT"
        } else {
            "COMPLIANT"
        };
        assert_eq!(got[n + 1].1["current"], want);
    }
    svc.stop();
}
