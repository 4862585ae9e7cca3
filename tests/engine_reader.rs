//! The explain API's reader: it reads the tables and shards under their own locks, never the
//! pipeline's processing lock, and stays consistent while the engine keeps applying inputs on
//! another thread.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mtdgate::model::*;
use support::engine::*;

use HealthState as H;

/// A tenant with Lookout on iOS, a compliance policy (at most MEDIUM) and one enrolled device.
fn tenant_with_device() -> Harness {
    let mut h = Harness::new();
    h.connector(enabled("t", LOOKOUT));
    h.policy(compliance_policy(
        "t",
        "cp",
        Platform::Ios,
        PolicyLevel::Medium,
    ));
    h.heartbeat("t", LOOKOUT);
    h.enroll("t", "d1", Platform::Ios, Management::Mdm);
    let r = h.threat(
        "t",
        LOOKOUT,
        "d1",
        Platform::Ios,
        Management::Mdm,
        H::Secured,
    );
    h.report(r);
    h
}

#[test]
fn explains_while_the_processing_lock_is_held() {
    let h = tenant_with_device();
    let now = h.now;
    let reader = h.engine.reader();
    // The pipeline holds this lock through every batch, commit and restore.
    let processing = Arc::new(Mutex::new(h));
    let _held = processing.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let device = reader.explain_device("t", "d1", now);
        let connectors = reader.explain_connectors("t");
        tx.send((device, connectors)).unwrap();
    });
    let (device, connectors) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the reader answers while the processing lock is held");
    let device = device.expect("device held");
    assert_eq!(device.compliance, ComplianceState::Compliant);
    assert_eq!(device.partners.len(), 1);
    assert!(device.partners[0].counts, "{:?}", device.partners[0]);
    assert_eq!(connectors.len(), 1);
    assert_eq!(connectors[0].partner_id, LOOKOUT);
    assert_eq!(connectors[0].status, ConnectorStatus::Enabled);
}

#[test]
fn reads_stay_consistent_while_inputs_are_applied() {
    let mut h = tenant_with_device();
    let reader = h.engine.reader();
    let now = h.now;
    let reads = thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2_000 {
            let d = reader
                .explain_device("t", "d1", now)
                .expect("the device is held throughout");
            // The state held and the decision of the rules are read under one lock order:
            // the partner's latest health always belongs to one of the two reports sent.
            assert!(matches!(d.partners[0].health_state, H::Secured | H::High));
            seen.push(d.compliance);
        }
        seen
    });
    for i in 0..2_000 {
        h.now += 1;
        let state = if i % 2 == 0 { H::High } else { H::Secured };
        let r = h.threat("t", LOOKOUT, "d1", Platform::Ios, Management::Mdm, state);
        let out = h.report(r);
        assert_eq!(compliance(&out).len(), 1, "every flip is published once");
    }
    let seen = reads.join().expect("reader thread");
    assert!(seen.iter().all(|s| matches!(
        s,
        ComplianceState::Compliant | ComplianceState::Noncompliant
    )));
    // The last report (i = 1999) was SECURED.
    let last = h.engine.reader().explain_device("t", "d1", h.now).unwrap();
    assert_eq!(last.compliance, ComplianceState::Compliant);
}
