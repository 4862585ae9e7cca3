//! `/metrics`, `/healthz` and `/readyz` while the service runs on the real broker: every
//! metric family is present with the values this test's own traffic implies.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;

use mtdgate::runtime::Status;

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

#[test]
fn metrics_and_readiness_reflect_the_traffic() {
    let mut cfg = test_config("metrics");
    cfg.http.listen = "127.0.0.1:0".into();
    mtdgate::service::prometheus().expect("recorder installs");
    // HTTP first: readiness must say "not ready" before tables and partitions are in.
    let status = Arc::new(Status::default());
    let addr = mtdgate::service::start_http(&cfg, status.clone()).unwrap();
    let base = format!("http://{addr}");
    assert_eq!(http_get(&format!("{base}/healthz"), None).unwrap().0, 200);
    let (code, body) = http_get(&format!("{base}/readyz"), None).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("loading"), "{body}");

    let svc = Service::start_with_status(&cfg, status);
    let (code, _) = http_get(&format!("{base}/readyz"), None).unwrap();
    assert_eq!(code, 200);

    let gw = Gateway::new();
    let t = &cfg.topics;
    let now = svc.now();
    gw.send(
        &t.connectors,
        "acme/lookout",
        Some(&connector_json(
            "acme",
            "lookout",
            &[
                "provisioned",
                "setup_complete",
                "ios_enabled",
                "ios_mam_enabled",
            ],
            now,
        )),
    );
    gw.send(
        &t.connectors,
        "acme/pradeo",
        Some(&connector_json("acme", "pradeo", &["provisioned"], now)),
    );
    gw.send(&t.policies, "acme/cp", Some(&json!({"tenant_id": "acme", "policy_id": "cp", "kind": "COMPLIANCE", "platform": "IOS", "max_level": "LOW", "updated_at": now})));
    gw.send(&t.policies, "acme/ap", Some(&json!({"tenant_id": "acme", "policy_id": "ap", "kind": "APP_PROTECTION", "platform": "IOS", "max_level": "LOW", "action": "BLOCK", "updated_at": now})));
    gw.send(
        &t.connector_heartbeats,
        "acme/lookout",
        Some(&json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now})),
    );
    gw.flush();
    std::thread::sleep(Duration::from_millis(500));
    // 10 MDM devices go noncompliant, 4 MAM devices get blocked, 3 reports are rejected.
    for d in 0..10 {
        gw.send(&t.device_threats, &format!("acme/d{d}"), Some(&json!({"event_id": format!("d{d}"), "tenant_id": "acme", "partner_id": "lookout", "device_id": format!("d{d}"), "platform": "IOS", "management": "MDM", "health_state": "HIGH", "observed_at": now})));
    }
    for d in 0..4 {
        gw.send(&t.device_threats, &format!("acme/m{d}"), Some(&json!({"event_id": format!("m{d}"), "tenant_id": "acme", "partner_id": "lookout", "device_id": format!("m{d}"), "platform": "IOS", "management": "MAM", "health_state": "HIGH", "observed_at": now})));
    }
    gw.send_raw(
        &t.device_threats,
        b"acme/x1",
        Some(b"\x00\x00\x00\x00\x07garbage"),
    );
    gw.send(&t.device_threats, "acme/x2", Some(&json!({"event_id": "x2", "tenant_id": "acme", "partner_id": "pradeo", "device_id": "x2", "platform": "IOS", "management": "MDM", "health_state": "HIGH", "observed_at": now})));
    gw.send(&t.device_threats, "acme/x3", Some(&json!({"event_id": "x3", "tenant_id": "acme", "partner_id": "lookout", "device_id": "x3", "platform": "WINDOWS", "management": "MDM", "health_state": "HIGH", "observed_at": now})));
    gw.flush();
    let mut actions = Reader::new(&t.app_protection_actions);
    actions.wait_for(4, Duration::from_secs(30));
    let mut changes = Reader::new(&t.compliance_changes);
    changes.wait_for(10, Duration::from_secs(30));
    // Gauges refresh every second.
    std::thread::sleep(Duration::from_millis(1500));

    // librdkafka statistics (consumer lag) arrive every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let (code, text) = http_get(&format!("{base}/metrics"), None).unwrap();
        assert_eq!(code, 200);
        if text.contains("mtdgate_consumer_lag_records{") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let threats = &t.device_threats;
    let check = |series: String, want: f64| {
        assert_eq!(metric(&text, &series), Some(want), "{series}\n{text}");
    };
    check(
        format!("mtdgate_events_consumed_total{{topic=\"{threats}\"}}"),
        17.0,
    );
    check(
        "mtdgate_compliance_changes_total{state=\"NONCOMPLIANT\"}".into(),
        10.0,
    );
    check(
        "mtdgate_app_protection_actions_total{action=\"BLOCK\"}".into(),
        4.0,
    );
    check(
        "mtdgate_rejected_total{reason=\"UNKNOWN_SCHEMA\"}".into(),
        1.0,
    );
    check(
        "mtdgate_rejected_total{reason=\"CONNECTOR_NOT_SET_UP\"}".into(),
        1.0,
    );
    check(
        "mtdgate_rejected_total{reason=\"UNSUPPORTED_PLATFORM\"}".into(),
        1.0,
    );
    check("mtdgate_devices_tracked".into(), 14.0);
    check("mtdgate_devices_noncompliant".into(), 10.0);
    check("mtdgate_connectors{status=\"ENABLED\"}".into(), 1.0);
    check("mtdgate_connectors{status=\"NOT_SET_UP\"}".into(), 1.0);
    check("mtdgate_ready".into(), 1.0);
    check(
        format!(
            "mtdgate_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    assert!(
        metric(
            &text,
            "mtdgate_connector_status_changes_total{status=\"ENABLED\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric(&text, "mtdgate_transactions_total{result=\"commit\"}").unwrap() >= 1.0);
    assert!(metric(&text, "mtdgate_rebalances_total{kind=\"assign\"}").unwrap() >= 1.0);
    assert!(metric(&text, "mtdgate_restore_records_total").is_some());
    assert!(metric(&text, "mtdgate_processing_seconds_count").unwrap() >= 17.0);
    for family in [
        "mtdgate_processing_seconds_bucket{le=\"0.001\"}",
        "mtdgate_end_to_end_latency_seconds_count",
        "mtdgate_commit_duration_seconds_count",
        "mtdgate_restore_duration_seconds_count",
        "mtdgate_consumer_lag_seconds",
    ] {
        assert!(metric(&text, family).is_some(), "{family} missing\n{text}");
    }
    assert!(
        text.contains("mtdgate_consumer_lag_records{"),
        "lag from librdkafka statistics\n{text}"
    );
    assert!(!text.contains("device=\""), "no per-device labels");
    svc.stop();
}
