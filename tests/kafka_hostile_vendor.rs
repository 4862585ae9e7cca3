//! Partner-bound input topics: each vendor writes only to its own topics (Kafka ACLs
//! authenticate it there), and a record naming another partner is rejected as SPOOFED. One
//! vendor cannot change another vendor's or another tenant's outcome.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_vendor_cannot_speak_for_another_vendor_or_tenant() {
    let mut cfg = test_config("bound");
    cfg.topics.bind_partners = true;
    let svc = Service::start(&cfg);
    let gw = Gateway::new();
    let t = &cfg.topics;
    let threats = |p: &str| t.partner_device_threats.replace("{partner}", p);
    let heartbeats = |p: &str| t.partner_heartbeats.replace("{partner}", p);
    let now = svc.now();
    for (tenant, partner) in [
        ("acme", "lookout"),
        ("acme", "zimperium"),
        ("globex", "lookout"),
    ] {
        gw.send(
            &t.connectors,
            &format!("{tenant}/{partner}"),
            Some(&connector_json(
                tenant,
                partner,
                &["provisioned", "setup_complete", "ios_enabled"],
                now,
            )),
        );
        gw.send(
            &heartbeats(partner),
            &format!("{tenant}/{partner}"),
            Some(&json!({"tenant_id": tenant, "partner_id": partner, "sent_at": now})),
        );
    }
    for tenant in ["acme", "globex"] {
        gw.send(&t.policies, &format!("{tenant}/cp"), Some(&json!({"tenant_id": tenant, "policy_id": "cp", "kind": "COMPLIANCE", "platform": "IOS", "max_level": "MEDIUM", "updated_at": now})));
    }
    gw.flush();
    std::thread::sleep(Duration::from_millis(800));
    let report = |event: &str, tenant: &str, partner: &str, device: &str, state: &str| {
        json!({"event_id": event, "tenant_id": tenant, "partner_id": partner, "device_id": device,
               "platform": "IOS", "management": "MDM", "health_state": state, "observed_at": now})
    };
    // Legitimate: lookout says acme/d1 and globex/g1 are fine (acme/d1 still lacks the scan of
    // its second vendor, zimperium: noncompliant for missing data).
    gw.send(
        &threats("lookout"),
        "acme/d1",
        Some(&report("l1", "acme", "lookout", "d1", "SECURED")),
    );
    gw.send(
        &threats("lookout"),
        "globex/g1",
        Some(&report("l2", "globex", "lookout", "g1", "SECURED")),
    );
    gw.flush();
    let mut changes = Reader::new(&t.compliance_changes);
    changes.wait_for(2, WAIT);
    // Hostile: zimperium, on its own topics, pretends to be lookout.
    gw.send(
        &threats("zimperium"),
        "acme/d1",
        Some(&report("z1", "acme", "lookout", "d1", "COMPROMISED")),
    );
    gw.send(
        &threats("zimperium"),
        "globex/g1",
        Some(&report("z2", "globex", "lookout", "g1", "COMPROMISED")),
    );
    gw.send(
        &heartbeats("zimperium"),
        "acme/lookout",
        Some(
            &json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now, "error_code": 1}),
        ),
    );
    // Zimperium speaking for itself about a tenant where it has no connector: no effect.
    gw.send(
        &threats("zimperium"),
        "globex/g1",
        Some(&report("z3", "globex", "zimperium", "g1", "COMPROMISED")),
    );
    // Writing to the shared topic does nothing when partners are bound (it is not read).
    gw.flush();

    let mut rejected = Reader::new(&t.rejected);
    let mut r = rejected.wait_for(4, WAIT).to_vec();
    r.sort_by_key(|(_, v)| {
        (
            v["source_topic"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    });
    let mut reasons: Vec<(String, String)> = r
        .iter()
        .map(|(k, v)| (k.clone(), v["reason"].as_str().unwrap().to_owned()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("acme/d1".to_owned(), "SPOOFED".to_owned()),
            ("acme/lookout".to_owned(), "SPOOFED".to_owned()),
            ("globex/g1".to_owned(), "CONNECTOR_UNAVAILABLE".to_owned()),
            ("globex/g1".to_owned(), "SPOOFED".to_owned()),
        ],
        "{r:#?}"
    );
    assert!(r
        .iter()
        .all(|(_, v)| v["source_topic"].as_str().unwrap().contains("zimperium")));

    // Zimperium's own report for acme/d1 does count: it is a configured partner there.
    gw.send(
        &threats("zimperium"),
        "acme/d1",
        Some(&report("z4", "acme", "zimperium", "d1", "SECURED")),
    );
    gw.flush();
    let got = changes.wait_for(3, WAIT).to_vec();
    let summary: Vec<(String, String)> = got
        .iter()
        .map(|(k, v)| (k.clone(), v["current"].as_str().unwrap().to_owned()))
        .collect();
    let mut first_two = summary[..2].to_vec();
    first_two.sort();
    assert_eq!(
        first_two,
        vec![
            ("acme/d1".to_owned(), "NONCOMPLIANT".to_owned()),
            ("globex/g1".to_owned(), "COMPLIANT".to_owned()),
        ]
    );
    assert_eq!(summary[2], ("acme/d1".to_owned(), "COMPLIANT".to_owned()));
    assert_eq!(got[2].1["cause_event_id"], "z4");
    // globex never changed again, and no lookout status moved to ERROR.
    assert_eq!(changes.drain(Duration::from_secs(1)).len(), 3);
    let statuses = Reader::new(&t.connector_status)
        .drain(Duration::from_secs(1))
        .to_vec();
    assert!(
        statuses.iter().all(|(_, v)| v["current"] != "ERROR"),
        "{statuses:?}"
    );
    svc.stop();
}
