//! Start-up reads the heartbeat view (`topics.heartbeats_latest`), not days of heartbeats: on the
//! real broker, connectors whose last heartbeat lies far back in a long history keep their
//! exact state across restarts (sent_at, error code, minimum OS versions, the deadlines derived
//! from them), and a start reads about one record per connector plus the heartbeats that
//! arrived after the view's checkpoint; a view record written behind the checkpoint (a lagging
//! writer) only makes the start read more.

mod support;

use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};
use support::*;

use mtdgate::config::Config;
use mtdgate::engine::explain::ConnectorExplanation;
use mtdgate::engine::partitioner::partition_for;
use mtdgate::model::ConnectorStatus;
use mtdgate::runtime::tables::{table_stats, TableStats};

const WAIT: Duration = Duration::from_secs(30);
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
/// Connectors `t{i}/lookout` beating `ROUNDS` times each after acme's last heartbeats.
const CONNECTORS: usize = 200;
const ROUNDS: usize = 50;

fn connector(tenant: &str, partner: &str, on: &[&str], updated_at: i64) -> Value {
    let mut c = connector_json(tenant, partner, on, updated_at);
    c["provisioned"] = true.into();
    c["setup_complete"] = true.into();
    c
}

fn heartbeat(tenant: &str, partner: &str, sent_at: i64) -> Value {
    json!({"tenant_id": tenant, "partner_id": partner, "sent_at": sent_at})
}

fn acme_connectors(svc: &Service) -> Vec<ConnectorExplanation> {
    svc.status
        .with_reader(|r, _| r.explain_connectors("acme"))
        .expect("a running pipeline")
}

fn find<'a>(c: &'a [ConnectorExplanation], partner: &str) -> &'a ConnectorExplanation {
    c.iter()
        .find(|c| c.partner_id == partner)
        .unwrap_or_else(|| panic!("no connector acme/{partner}: {c:#?}"))
}

/// Deletes the topics of `cfgs` (each test's own), once the test passed.
fn delete_topics(cfgs: &[&Config]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client(broker()).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for cfg in cfgs {
        let catalogue = mtdgate::runtime::load_catalogue(cfg).unwrap();
        let topics: Vec<String> = mtdgate::runtime::kafka::all_topics(cfg, &catalogue)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ = rt.block_on(admin.delete_topics(&names, &AdminOptions::new()));
    }
}

fn stats_after<F: Fn(&TableStats) -> bool>(cfg: &Config, what: &str, done: F) -> TableStats {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = table_stats(cfg).filter(|s| done(s)) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", table_stats(cfg));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn restart_loads_the_heartbeat_view_not_the_history() {
    let cfg = test_config("startup-hb");
    let t = cfg.topics.clone();
    create_topics(&cfg);
    let gw = Gateway::new();
    let now = now_ms();
    let set_up_long_ago = now - 30 * DAY;
    // acme/lookout: iOS compliance, unsupported OS blocked; its last two heartbeats (error 7,
    // the first with iOS 17.0 as minimum) come first in the history.
    // acme/zimperium: silent for 3 days (heartbeat timeout 1 day, ignored after 7).
    let mut records: Vec<Record> = vec![
        (
            t.connectors.clone(),
            "acme/lookout".into(),
            connector(
                "acme",
                "lookout",
                &["ios_enabled", "unsupported_os_blocked"],
                set_up_long_ago,
            ),
        ),
        (
            t.connectors.clone(),
            "acme/zimperium".into(),
            connector("acme", "zimperium", &["android_enabled"], set_up_long_ago),
        ),
        (
            t.policies.clone(),
            "acme/cp".into(),
            policy_json("cp", "IOS", "MEDIUM", None, set_up_long_ago),
        ),
    ];
    for i in 0..CONNECTORS {
        let tenant = format!("t{i}");
        records.push((
            t.connectors.clone(),
            format!("{tenant}/lookout"),
            connector(&tenant, "lookout", &["ios_enabled"], set_up_long_ago),
        ));
    }
    let mut first = heartbeat("acme", "lookout", now - 3 * HOUR);
    first["error_code"] = 7.into();
    first["min_os_versions"] = json!({"IOS": "17.0"});
    let mut last = heartbeat("acme", "lookout", now - 2 * HOUR);
    last["error_code"] = 7.into();
    let zimperium_sent_at = now - 3 * DAY;
    for (key, hb) in [
        ("acme/lookout", first),
        (
            "acme/zimperium",
            heartbeat("acme", "zimperium", zimperium_sent_at),
        ),
        ("acme/lookout", last),
    ] {
        records.push((t.connector_heartbeats.clone(), key.into(), hb));
    }
    // The long history: every other connector beats ROUNDS times, the newest a minute ago.
    for r in 0..ROUNDS {
        let sent_at = now - 60_000 - (ROUNDS - r) as i64 * 60_000;
        for i in 0..CONNECTORS {
            let tenant = format!("t{i}");
            records.push((
                t.connector_heartbeats.clone(),
                format!("{tenant}/lookout"),
                heartbeat(&tenant, "lookout", sent_at),
            ));
        }
    }
    let history = 3 + ROUNDS * CONNECTORS;
    gw.send_all(&records);
    gw.flush_within(WAIT);

    // First start: no view yet, the whole history is read; the view is written after it.
    let svc = Service::start(&cfg);
    let s = stats_after(&cfg, "first snapshot of the view", |s| s.snapshots >= 1);
    assert!(s.heartbeat_records >= history, "{s:?}");
    assert_eq!(s.view_records, 0, "{s:?}");
    assert_eq!(s.snapshot_records, CONNECTORS + 2, "{s:?}");
    let mut status = Reader::new(&t.connector_status);
    status.wait_for(CONNECTORS + 2, WAIT);
    // Heartbeats after the snapshot: the tail the next start reads from the checkpoint.
    let tail_at = now - 30_000;
    for i in 0..CONNECTORS {
        let tenant = format!("t{i}");
        gw.send(
            &t.connector_heartbeats,
            &format!("{tenant}/lookout"),
            Some(&heartbeat(&tenant, "lookout", tail_at)),
        );
    }
    gw.flush();
    svc.stop();

    // Second start: the view and the tail only.
    let svc = Service::start(&cfg);
    let s = table_stats(&cfg).unwrap();
    eprintln!("second start: {s:?}");
    assert_eq!(s.view_records, CONNECTORS + 2, "{s:?}");
    assert_eq!(s.heartbeat_records, CONNECTORS, "{s:?}");
    assert!(
        s.loaded_records <= 5 * (CONNECTORS + 2),
        "a start reads about one record per connector per table: {s:?}"
    );
    let c = acme_connectors(&svc);
    let lookout = find(&c, "lookout");
    assert_eq!(lookout.status, ConnectorStatus::Error, "{lookout:#?}");
    assert_eq!(lookout.error_code, 7);
    assert_eq!(lookout.last_heartbeat_at, Some(now - 2 * HOUR));
    let zimperium = find(&c, "zimperium");
    assert_eq!(
        zimperium.status,
        ConnectorStatus::Unresponsive,
        "{zimperium:#?}"
    );
    assert!(!zimperium.compliance_ignored, "{zimperium:#?}");
    assert_eq!(zimperium.last_heartbeat_at, Some(zimperium_sent_at));
    assert_eq!(zimperium.ignored_at, Some(zimperium_sent_at + 7 * DAY));
    // The minimum iOS version came with an earlier heartbeat than the last: still enforced.
    let mut enrollment = enrollment_json("d2", svc.now());
    enrollment["os_version"] = "16.0".into();
    gw.send(&t.device_enrollments, "acme/d2", Some(&enrollment));
    gw.flush();
    std::thread::sleep(Duration::from_millis(300));
    let report = report_json("e1", "lookout", "d2", "MDM", "SECURED", svc.now());
    gw.send(&t.device_threats, "acme/d2", Some(&report));
    gw.flush();
    let mut changes = Reader::new(&t.compliance_changes);
    let got = changes.wait_until("d2 judged", WAIT, |r| {
        r.iter()
            .any(|(_, v)| v["current"] == "NONCOMPLIANT" || v["current"] == "COMPLIANT")
    });
    let judged = got
        .iter()
        .find(|(_, v)| v["current"] != "NOT_EVALUATED")
        .unwrap();
    assert_eq!(judged.1["current"], "NONCOMPLIANT", "{got:#?}");
    assert_eq!(judged.1["reasons"][0]["code"], "UNSUPPORTED_OS", "{got:#?}");
    svc.stop();

    // A view record behind the checkpoint (a writer lagging, with an older heartbeat) for
    // zimperium: its partition is read again from the record's offset, and the state stays
    // exact.
    let partitions = cfg.topics.partitions;
    let p = partition_for(b"acme/zimperium", partitions);
    let producer: BaseProducer = client(broker()).create().unwrap();
    let stale = serde_json::to_vec(&heartbeat("acme", "zimperium", now - 10 * DAY)).unwrap();
    let p_text = p.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "topic",
            value: Some(t.connector_heartbeats.as_str()),
        })
        .insert(Header {
            key: "partition",
            value: Some(p_text.as_str()),
        })
        .insert(Header {
            key: "covered",
            value: Some("0"),
        });
    producer
        .send(
            BaseRecord::to(&t.heartbeats_latest)
                .key("acme/zimperium")
                .payload(&stale)
                .headers(headers),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(WAIT).unwrap();
    let in_partition = records
        .iter()
        .filter(|(topic, key, _)| {
            *topic == t.connector_heartbeats && partition_for(key.as_bytes(), partitions) == p
        })
        .count();

    let svc = Service::start(&cfg);
    let s = table_stats(&cfg).unwrap();
    eprintln!("third start: {s:?}");
    assert!(
        s.heartbeat_records >= in_partition,
        "partition {p} ({in_partition} heartbeats) read again from 0: {s:?}"
    );
    let c = acme_connectors(&svc);
    let zimperium = find(&c, "zimperium");
    assert_eq!(
        zimperium.last_heartbeat_at,
        Some(zimperium_sent_at),
        "{zimperium:#?}"
    );
    assert_eq!(zimperium.status, ConnectorStatus::Unresponsive);
    assert!(!zimperium.compliance_ignored);
    let lookout = find(&c, "lookout");
    assert_eq!(
        (
            lookout.status,
            lookout.error_code,
            lookout.last_heartbeat_at
        ),
        (ConnectorStatus::Error, 7, Some(now - 2 * HOUR))
    );
    // The deadline the restored heartbeat gives: ignored 7 days after it, not after set-up.
    svc.clock
        .advance(zimperium_sent_at + 7 * DAY - svc.now() + 60_000);
    let got = status.wait_until("zimperium ignored", WAIT, |r| {
        r.iter()
            .any(|(k, v)| k == "acme/zimperium" && v["compliance_ignored"] == true)
    });
    let ignored = got
        .iter()
        .find(|(k, v)| k == "acme/zimperium" && v["compliance_ignored"] == true)
        .unwrap();
    assert_eq!(
        ignored.1["changed_at"],
        zimperium_sent_at + 7 * DAY,
        "{ignored:#?}"
    );
    assert_eq!(ignored.1["last_heartbeat_at"], zimperium_sent_at);
    svc.stop();
    delete_topics(&[&cfg]);
}

/// `topics verify` (and every start) refuses a heartbeat view that is not compacted.
#[test]
fn verify_refuses_a_view_with_delete_retention() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let cfg = test_config("startup-hb-verify");
    let admin: AdminClient<DefaultClientContext> = client(broker()).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let view = NewTopic::new(&cfg.topics.heartbeats_latest, 3, TopicReplication::Fixed(1));
    for r in rt
        .block_on(admin.create_topics(&[view], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    create_topics(&cfg);
    let catalogue = mtdgate::runtime::load_catalogue(&cfg).unwrap();
    let deadline = Instant::now() + WAIT;
    let e = loop {
        match mtdgate::runtime::kafka::verify_topics(&cfg, &catalogue) {
            Err(mtdgate::runtime::kafka::KafkaSetupError::MissingTopic(_))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200))
            }
            r => break r.unwrap_err(),
        }
    };
    assert!(
        matches!(e, mtdgate::runtime::kafka::KafkaSetupError::NotCompacted(ref t) if *t == cfg.topics.heartbeats_latest),
        "{e}"
    );
    // A compacted view passes.
    let ok = test_config("startup-hb-verify-ok");
    create_topics(&ok);
    let deadline = Instant::now() + WAIT;
    loop {
        match mtdgate::runtime::kafka::verify_topics(&ok, &catalogue) {
            Ok(_) => break,
            Err(mtdgate::runtime::kafka::KafkaSetupError::MissingTopic(_))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("{e}"),
        }
    }
    delete_topics(&[&cfg, &ok]);
}
