//! Malformed inputs on the real broker: a corpus of bad records (truncated Avro, unknown schema
//! ids, foreign fingerprints, wrong JSON types, huge length prefixes, bad keys, tenant
//! mismatches, unknown enum symbols, clock-skewed timestamps, empty and missing values) produced
//! to every input topic between good records. Every bad record ends in `mtd.rejected.v1` with
//! its reason and its original bytes and key, the good ones are applied, the pipeline keeps
//! running, and neither a future-dated report nor a future-dated heartbeat changes what later
//! real inputs do.
//!
//! Also checks the fuzz seed corpus (`fuzz/seeds/decode`, written by `fuzz/seeds.py` with an
//! independent Avro encoder) against the decoders.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mtdgate::codec::{self, decode, OutputEncoding};
use mtdgate::config::Config;
use mtdgate::model::*;
use mtdgate::runtime::clock::{Clock, ShiftedClock};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use serde_json::{json, Value};
use support::wire::*;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const DAY_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------------------------------
// Building values

fn report(event: &str, device: &str, state: HealthState, at: i64) -> DeviceThreatReport {
    DeviceThreatReport {
        event_id: event.into(),
        tenant_id: "acme".into(),
        partner_id: "lookout".into(),
        device_id: device.into(),
        user_id: Some("alice".into()),
        platform: Platform::Ios,
        management: Management::Mam,
        ownership: Some(Ownership::Personal),
        os_version: Some("17.4".into()),
        health_state: state,
        threats: vec![Threat {
            category: "app".into(),
            name: "evil.ipa".into(),
            severity: ThreatSeverity::High,
        }],
        observed_at: at,
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Reading outputs with their raw keys

struct Out {
    key: Option<Vec<u8>>,
    value: Value,
}

/// A read_committed reader of one output topic that keeps the raw key bytes.
struct RawReader {
    consumer: BaseConsumer,
    records: Vec<Out>,
}

impl RawReader {
    fn new(topic: &str) -> RawReader {
        let group = format!("malformed-reader-{topic}");
        let consumer = committed_reader(client(broker()), &group, &[topic]);
        RawReader {
            consumer,
            records: Vec::new(),
        }
    }

    fn poll_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            if let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                self.records.push(Out {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m
                        .payload()
                        .map(|p| serde_json::from_slice(p).expect("JSON output"))
                        .unwrap_or(Value::Null),
                });
            }
        }
    }

    /// Reads until `done(records)` holds (panics after `timeout` with what arrived).
    fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&[Out]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.records) {
            assert!(
                Instant::now() < deadline,
                "{what}: not there within {timeout:?}; got {:#?}",
                self.records.iter().map(|r| &r.value).collect::<Vec<_>>()
            );
            self.poll_for(Duration::from_millis(200));
        }
    }
}

fn actions_of(records: &[Out], device: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.value["device_id"] == device)
        .map(|r| r.value["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The corpus

/// One bad record and what must become of it.
struct Bad {
    name: &'static str,
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: &'static str,
    /// A piece the rejection's detail must contain.
    detail: &'static str,
}

fn bad(
    name: &'static str,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<Vec<u8>>,
    reason: &'static str,
    detail: &'static str,
) -> Bad {
    Bad {
        name,
        topic: topic.to_owned(),
        key: key.map(<[u8]>::to_vec),
        value,
        reason,
        detail,
    }
}

fn setup_tables(gw: &Gateway, cfg: &Config, now: i64) {
    let lookout = ["ios_enabled", "ios_mam_enabled", "ios_app_sync"];
    let policies = [
        policy_json("block", "IOS", "LOW", Some("BLOCK"), now),
        policy_json("cp", "IOS", "MEDIUM", None, now),
    ];
    gw.send_all(&acme_tables(cfg, &lookout, &policies, now));
    gw.flush();
}

/// Bad records for the device-threats topic, built around a valid report.
fn bad_reports(cfg: &Config, now: i64) -> Vec<Bad> {
    let t = &cfg.topics.device_threats;
    let ok = |dev: &str| report(&format!("bad-{dev}"), dev, HealthState::High, now);
    let so = |r: &DeviceThreatReport| encoded(r, OutputEncoding::Avro);
    let k = |dev: &str| format!("acme/{dev}").into_bytes();
    let full = so(&ok("b-trunc"));
    let mut trailing = so(&ok("b-trail"));
    trailing.extend_from_slice(&[0, 0, 7]);
    // Head of a report datum up to `threats`, then a block count of 2^40 items.
    let huge = Datum::default()
        .str("bad-b-huge")
        .str("acme")
        .str("lookout")
        .str("b-huge")
        .long(0) // user_id null
        .long(1) // IOS
        .long(1) // MAM
        .long(0) // ownership null
        .long(0) // os_version null
        .long(6) // HIGH
        .long(1 << 40)
        .str("c");
    // The same head with health_state index 42 of 10 symbols.
    let enum_index = Datum::default()
        .str("bad-b-enum-avro")
        .str("acme")
        .str("lookout")
        .str("b-enum-avro")
        .long(0)
        .long(1)
        .long(1)
        .long(0)
        .long(0)
        .long(42)
        .long(0)
        .long(now);
    let wrong_types = json!({
        "event_id": "bad-b-types", "tenant_id": "acme", "partner_id": "lookout",
        "device_id": "b-types", "platform": "IOS", "management": "MAM",
        "health_state": "HIGH", "threats": [], "observed_at": "yesterday",
    });
    let mut threats_string = wrong_types.clone();
    threats_string["observed_at"] = now.into();
    threats_string["device_id"] = "b-threats".into();
    threats_string["threats"] = "none".into();
    let mut purple = threats_string.clone();
    purple["device_id"] = "b-purple".into();
    purple["threats"] = json!([]);
    purple["health_state"] = "PURPLE".into();
    let mut severity = purple.clone();
    severity["device_id"] = "b-severity".into();
    severity["health_state"] = "HIGH".into();
    severity["threats"] = json!([{"category": "c", "name": "n", "severity": "APOCALYPTIC"}]);
    let mut unknown_partner = ok("b-partner");
    unknown_partner.partner_id = "acme-antivirus".into();
    let mut unsupported = ok("b-windows");
    unsupported.platform = Platform::Windows;
    vec![
        bad(
            "truncated single-object",
            t,
            Some(&k("b-trunc")),
            Some(full[..full.len() - 5].to_vec()),
            "UNDECODABLE",
            "truncated",
        ),
        bad(
            "truncated single-object header",
            t,
            Some(&k("b-trunc-header")),
            Some(full[..6].to_vec()),
            "UNDECODABLE",
            "header",
        ),
        bad(
            "trailing bytes",
            t,
            Some(&k("b-trail")),
            Some(trailing),
            "UNDECODABLE",
            "",
        ),
        bad(
            "Confluent framing, unknown schema id",
            t,
            Some(&k("b-id")),
            Some(confluent(4242, &datum(&ok("b-id")))),
            "UNKNOWN_SCHEMA",
            "4242",
        ),
        bad(
            "Confluent id of another record type",
            t,
            Some(&k("b-id-hb")),
            Some(confluent(1002, &datum(&ok("b-id-hb")))),
            "UNKNOWN_SCHEMA",
            "ConnectorHeartbeat",
        ),
        bad(
            "fingerprint of another record type",
            t,
            Some(&k("b-fp")),
            Some(encoded(
                &ConnectorHeartbeat {
                    tenant_id: "acme".into(),
                    partner_id: "lookout".into(),
                    sent_at: now,
                    error_code: None,
                    min_os_versions: None,
                },
                OutputEncoding::Avro,
            )),
            "UNKNOWN_SCHEMA",
            "ConnectorHeartbeat",
        ),
        bad(
            "unknown fingerprint",
            t,
            Some(&k("b-fp-unknown")),
            Some({
                let mut b = vec![0xC3, 0x01];
                b.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
                b.extend_from_slice(&datum(&ok("b-fp-unknown")));
                b
            }),
            "UNKNOWN_SCHEMA",
            "0x0123456789abcdef",
        ),
        bad(
            "JSON with a string timestamp",
            t,
            Some(&k("b-types")),
            Some(json_bytes(&wrong_types)),
            "INVALID_FIELD",
            "observed_at",
        ),
        bad(
            "JSON with a string for the threats array",
            t,
            Some(&k("b-threats")),
            Some(json_bytes(&threats_string)),
            "INVALID_FIELD",
            "threats",
        ),
        bad(
            "JSON syntax error",
            t,
            Some(&k("b-syntax")),
            Some(br#"{"event_id": "bad-b-syntax", "tenant_id": "#.to_vec()),
            "UNDECODABLE",
            "",
        ),
        bad(
            "huge array length prefix",
            t,
            Some(&k("b-huge")),
            Some(single_object::<DeviceThreatReport>(&huge.0)),
            "UNDECODABLE",
            "threats",
        ),
        bad(
            "unknown enum symbol (JSON)",
            t,
            Some(&k("b-purple")),
            Some(json_bytes(&purple)),
            "INVALID_FIELD",
            "PURPLE",
        ),
        bad(
            "unknown enum symbol in a nested record (JSON)",
            t,
            Some(&k("b-severity")),
            Some(json_bytes(&severity)),
            "INVALID_FIELD",
            "APOCALYPTIC",
        ),
        bad(
            "enum index out of range (Avro)",
            t,
            Some(&k("b-enum-avro")),
            Some(single_object::<DeviceThreatReport>(&enum_index.0)),
            "INVALID_FIELD",
            "health_state",
        ),
        bad(
            "invalid UTF-8 key",
            t,
            Some(&[0xff, 0xfe, b'/', b'b', b'-', b'u', b't', b'f']),
            Some(so(&ok("b-utf"))),
            "INVALID_FIELD",
            "key",
        ),
        bad(
            "no key",
            t,
            None,
            Some(so(&ok("b-nokey"))),
            "INVALID_FIELD",
            "key",
        ),
        bad(
            "key of one part",
            t,
            Some(b"acme"),
            Some(so(&ok("b-onepart"))),
            "INVALID_FIELD",
            "key",
        ),
        bad(
            "key and payload tenants differ",
            t,
            Some(b"globex/b-tenant"),
            Some(so(&ok("b-tenant"))),
            "TENANT_MISMATCH",
            "globex",
        ),
        bad(
            "key and payload devices differ",
            t,
            Some(&k("b-other-device")),
            Some(so(&ok("b-device"))),
            "INVALID_FIELD",
            "device_id",
        ),
        bad(
            "partner not in the catalogue",
            t,
            Some(&k("b-partner")),
            Some(so(&unknown_partner)),
            "UNKNOWN_PARTNER",
            "acme-antivirus",
        ),
        bad(
            "platform the partner does not cover",
            t,
            Some(&k("b-windows")),
            Some(so(&unsupported)),
            "UNSUPPORTED_PLATFORM",
            "WINDOWS",
        ),
        bad(
            "empty value",
            t,
            Some(&k("b-empty")),
            Some(Vec::new()),
            "UNDECODABLE",
            "empty",
        ),
        bad(
            "blank value",
            t,
            Some(&k("b-blank")),
            Some(b" \n ".to_vec()),
            "UNDECODABLE",
            "blank",
        ),
        bad(
            "no value",
            t,
            Some(&k("b-null")),
            None,
            "UNDECODABLE",
            "no value",
        ),
    ]
}

/// Bad records for the other input topics.
fn bad_others(cfg: &Config, now: i64) -> Vec<Bad> {
    let t = &cfg.topics;
    let enrollment = DeviceEnrollment {
        tenant_id: "acme".into(),
        device_id: "e-trunc".into(),
        user_id: "bob".into(),
        platform: Platform::Ios,
        management: Management::Mdm,
        ownership: Ownership::Corporate,
        os_version: Some("17.1".into()),
        enrolled_at: now,
    };
    let cf = encoded(&enrollment, OutputEncoding::AvroConfluent);
    let inventory_huge = Datum::default()
        .str("acme")
        .str("i-huge")
        .long(0) // CORPORATE
        .long(now)
        .long(i64::MAX / 2)
        .str("x");
    vec![
        bad(
            "enrollment: truncated Confluent",
            &t.device_enrollments,
            Some(b"acme/e-trunc"),
            Some(cf[..cf.len() - 3].to_vec()),
            "UNDECODABLE",
            "truncated",
        ),
        bad(
            "enrollment: number for an enum",
            &t.device_enrollments,
            Some(b"acme/e-types"),
            Some(json_bytes(
                &json!({"tenant_id": "acme", "device_id": "e-types", "user_id": "bob", "platform": 1, "management": "MDM", "ownership": "CORPORATE", "enrolled_at": now}),
            )),
            "INVALID_FIELD",
            "platform",
        ),
        bad(
            "enrollment: tenant mismatch",
            &t.device_enrollments,
            Some(b"globex/e-tenant"),
            Some(json_bytes(
                &json!({"tenant_id": "acme", "device_id": "e-tenant", "user_id": "bob", "platform": "IOS", "management": "MDM", "ownership": "CORPORATE", "enrolled_at": now}),
            )),
            "TENANT_MISMATCH",
            "",
        ),
        bad(
            "inventory: unknown schema id",
            &t.app_inventory,
            Some(b"acme/i-id"),
            Some(confluent(7777, &[0, 1, 2, 3])),
            "UNKNOWN_SCHEMA",
            "7777",
        ),
        bad(
            "inventory: huge apps length",
            &t.app_inventory,
            Some(b"acme/i-huge"),
            Some(single_object::<AppInventory>(&inventory_huge.0)),
            "UNDECODABLE",
            "apps",
        ),
        bad(
            "heartbeat: missing fields",
            &t.connector_heartbeats,
            Some(b"acme/lookout"),
            Some(json_bytes(&json!({"tenant_id": "acme"}))),
            "INVALID_FIELD",
            "",
        ),
        bad(
            "heartbeat: tenant mismatch",
            &t.connector_heartbeats,
            Some(b"globex/lookout"),
            Some(json_bytes(
                &json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now + 1}),
            )),
            "TENANT_MISMATCH",
            "",
        ),
        bad(
            "heartbeat: empty value",
            &t.connector_heartbeats,
            Some(b"acme/lookout"),
            Some(Vec::new()),
            "UNDECODABLE",
            "empty",
        ),
        bad(
            "connector: string for a boolean",
            &t.connectors,
            Some(b"acme/zimperium"),
            Some(json_bytes(
                &json!({"tenant_id": "acme", "partner_id": "zimperium", "provisioned": "yes", "updated_at": now}),
            )),
            "INVALID_FIELD",
            "provisioned",
        ),
        bad(
            "connector: key names another partner",
            &t.connectors,
            Some(b"acme/zimperium"),
            Some(json_bytes(&connector_json(
                "acme",
                "lookout",
                &["provisioned"],
                now + 1,
            ))),
            "INVALID_FIELD",
            "",
        ),
        bad(
            "policy: unknown kind",
            &t.policies,
            Some(b"acme/p-kind"),
            Some(json_bytes(
                &json!({"tenant_id": "acme", "policy_id": "p-kind", "kind": "SOMETIMES", "platform": "IOS", "max_level": "LOW", "updated_at": now}),
            )),
            "INVALID_FIELD",
            "SOMETIMES",
        ),
        bad(
            "policy: WARN refused",
            &t.policies,
            Some(b"acme/p-warn"),
            Some(json_bytes(
                &json!({"tenant_id": "acme", "policy_id": "p-warn", "kind": "APP_PROTECTION", "platform": "IOS", "max_level": "LOW", "action": "WARN", "updated_at": now}),
            )),
            "POLICY_REFUSED",
            "WARN",
        ),
    ]
}

/// Produces a bad record; with no key, through a producer of its own (support's Gateway always
/// sets one).
fn send_bad(gw: &Gateway, b: &Bad) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    match &b.key {
        Some(k) => gw.send_raw(&b.topic, k, b.value.as_deref()),
        None => {
            let p: BaseProducer = client(broker()).create().unwrap();
            let mut r = BaseRecord::<[u8], [u8]>::to(&b.topic);
            if let Some(v) = &b.value {
                r = r.payload(v);
            }
            p.send(r).map_err(|(e, _)| e).unwrap();
            p.flush(Duration::from_secs(10)).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn malformed_records_are_rejected_with_reason_and_raw_bytes_and_the_pipeline_goes_on() {
    let started = Instant::now();
    let mut cfg = test_config("malformed");
    cfg.topics.partitions = 2;
    create_topics(&cfg);
    let clock = ShiftedClock::new();
    let now = clock.now_ms();
    let gw = Gateway::new();
    // Tables first: the service loads them before it reads device topics.
    setup_tables(&gw, &cfg, now);
    let svc = Service::start_with_clock(&cfg, clock);
    let t = cfg.topics.clone();

    let so = |r: &DeviceThreatReport| encoded(r, OutputEncoding::Avro);
    // Good records before the bad ones, in each encoding.
    gw.send_raw(
        &t.device_threats,
        b"acme/g1",
        Some(&json_bytes(
            &serde_json::to_value(report("g1-high", "g1", HealthState::High, now)).unwrap(),
        )),
    );
    gw.send_raw(
        &t.device_enrollments,
        b"acme/e1",
        Some(&encoded(
            &DeviceEnrollment {
                tenant_id: "acme".into(),
                device_id: "e1".into(),
                user_id: "bob".into(),
                platform: Platform::Ios,
                management: Management::Mdm,
                ownership: Ownership::Corporate,
                os_version: Some("17.1".into()),
                enrolled_at: now,
            },
            OutputEncoding::AvroConfluent,
        )),
    );
    gw.flush();

    let mut bads = bad_reports(&cfg, now);
    bads.extend(bad_others(&cfg, now));
    let half = bads.len() / 2;
    for b in &bads[..half] {
        send_bad(&gw, b);
    }
    // Good records in the middle.
    gw.send_raw(
        &t.device_threats,
        b"acme/g2",
        Some(&so(&report("g2-high", "g2", HealthState::High, now))),
    );
    gw.send_raw(
        &t.device_threats,
        b"acme/g3",
        Some(&encoded(
            &report("g3-high", "g3", HealthState::High, now),
            OutputEncoding::AvroConfluent,
        )),
    );
    gw.send_raw(
        &t.app_inventory,
        b"acme/e1",
        Some(&json_bytes(&json!({
            "tenant_id": "acme", "device_id": "e1", "ownership": "CORPORATE", "collected_at": now,
            "apps": [{"app_id": "com.example.mail", "version": "1.2.3", "short_version": "1.2",
                      "name": "Mail", "bundle_size": 1024, "dynamic_size": 0,
                      "ad_hoc_signed": false, "from_app_store": true, "beta": false,
                      "device_vpp": false, "validated": true, "managed": true}],
        }))),
    );
    gw.flush();
    for b in &bads[half..] {
        send_bad(&gw, b);
    }

    // A report from a wrong clock, far ahead, for f1/lookout: SECURED, so that applying it
    // would emit nothing but make the real report below stale.
    let future = report("f1-future", "f1", HealthState::Secured, now + 30 * DAY_MS);
    let future_bytes = so(&future);
    gw.send_raw(&t.device_threats, b"acme/f1", Some(&future_bytes));
    // A heartbeat from a wrong clock, far ahead: applying it would keep the connector alive
    // for 30 days.
    let future_hb = json_bytes(
        &json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now + 30 * DAY_MS}),
    );
    gw.send_raw(&t.connector_heartbeats, b"acme/lookout", Some(&future_hb));
    gw.flush();
    // The real report, after it: applied (BLOCK), not STALE.
    std::thread::sleep(Duration::from_millis(200));
    gw.send_raw(
        &t.device_threats,
        b"acme/f1",
        Some(&so(&report("f1-real", "f1", HealthState::High, now + 1))),
    );
    // A duplicate of g1's report.
    let dup =
        json_bytes(&serde_json::to_value(report("g1-high", "g1", HealthState::High, now)).unwrap());
    // The last good record, after every bad one.
    gw.send_raw(
        &t.device_threats,
        b"acme/g4",
        Some(&so(&report("g4-high", "g4", HealthState::High, now + 2))),
    );
    gw.flush();

    let mut expected: Vec<Bad> = bads;
    expected.push(bad(
        "report from the future",
        &t.device_threats,
        Some(b"acme/f1"),
        Some(future_bytes),
        "INVALID_FIELD",
        "observed_at",
    ));
    expected.push(bad(
        "heartbeat from the future",
        &t.connector_heartbeats,
        Some(b"acme/lookout"),
        Some(future_hb),
        "INVALID_FIELD",
        "sent_at",
    ));
    // The duplicate goes after everything else to the same partition as g1's first report.
    std::thread::sleep(Duration::from_millis(200));
    gw.send_raw(&t.device_threats, b"acme/g1", Some(&dup));
    gw.flush();
    expected.push(bad(
        "duplicate report",
        &t.device_threats,
        Some(b"acme/g1"),
        Some(dup),
        "DUPLICATE",
        "g1-high",
    ));

    // ---- outputs of the good records: the pipeline went on through the bad ones
    let mut actions = RawReader::new(&t.app_protection_actions);
    actions.wait_until("BLOCK for g1, g2, g3, f1 and g4", WAIT, |r| {
        ["g1", "g2", "g3", "f1", "g4"]
            .iter()
            .all(|d| !actions_of(r, d).is_empty())
    });
    let mut changes = RawReader::new(&t.compliance_changes);
    changes.wait_until("compliance change of e1", WAIT, |r| {
        r.iter().any(|c| c.value["device_id"] == "e1")
    });
    let mut inventory = RawReader::new(&cfg.partner_topic("lookout"));
    inventory.wait_until("lookout's inventory of e1", WAIT, |r| {
        r.iter().any(|c| c.value["device_id"] == "e1")
    });
    assert_eq!(
        inventory.records[0].value["apps"][0]["app_id"],
        "com.example.mail"
    );

    // ---- every bad record rejected, once, with its reason, key and original bytes
    let mut rejected = RawReader::new(&t.rejected);
    rejected.wait_until("every rejection", WAIT, |r| r.len() >= expected.len());
    rejected.poll_for(Duration::from_secs(2));
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut unmatched: Vec<&Out> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    let mut found: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rejected.records {
        let v = &r.value;
        let raw = b64
            .decode(v["raw"].as_str().expect("raw is base64 text"))
            .unwrap();
        let hit = expected.iter().find(|b| {
            v["source_topic"] == b.topic.as_str()
                && raw == b.value.clone().unwrap_or_default()
                && r.key.as_deref().unwrap_or_default() == b.key.as_deref().unwrap_or_default()
        });
        let Some(b) = hit else {
            unmatched.push(r);
            continue;
        };
        *found.entry(b.name).or_default() += 1;
        let detail = v["detail"].as_str().unwrap_or_default();
        if v["reason"] != b.reason || detail.is_empty() || !detail.contains(b.detail) {
            wrong.push(format!(
                "{}: expected {} with {:?} in the detail, got {} {detail:?}",
                b.name, b.reason, b.detail, v["reason"]
            ));
        }
        // The `key` field: the original key as text (lossy for invalid UTF-8).
        match &b.key {
            Some(k) => assert_eq!(v["key"], String::from_utf8_lossy(k).as_ref(), "{}", b.name),
            None => assert!(v["key"].is_null(), "{}: {v}", b.name),
        }
        assert!(v["offset"].as_i64().unwrap() >= 0);
        assert!(v["partition"].as_i64().unwrap() >= 0);
        assert!(v["rejected_at"].as_i64().unwrap() >= now);
    }
    assert!(
        unmatched.is_empty(),
        "rejections of no bad record (a good record refused?): {:#?}",
        unmatched.iter().map(|r| &r.value).collect::<Vec<_>>()
    );
    for b in &expected {
        let n = found.get(b.name).copied().unwrap_or(0);
        if n != 1 {
            wrong.push(format!("{} ({}): rejected {n} times", b.name, b.reason));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} bad records not rejected as expected:\n{}",
        wrong.len(),
        expected.len(),
        wrong.join("\n")
    );

    // ---- the future report did not mask the real one, and nothing was applied twice
    actions.poll_for(Duration::from_secs(1));
    for d in ["g1", "g2", "g3", "f1", "g4"] {
        assert_eq!(actions_of(&actions.records, d), ["BLOCK"], "device {d}");
    }
    assert_eq!(actions.records.len(), 5, "only the good records act");
    assert_eq!(changes.records.len(), 1);
    assert_eq!(changes.records[0].value["current"], "COMPLIANT");

    // ---- the future heartbeat did not keep the silent connector alive
    let mut status = RawReader::new(&t.connector_status);
    status.wait_until("lookout ENABLED", WAIT, |r| {
        r.iter().any(|s| s.value["current"] == "ENABLED")
    });
    // 1 day without heartbeat makes it UNRESPONSIVE; the future heartbeat said "alive" for 30.
    svc.clock.advance(DAY_MS + 60_000);
    status.wait_until("lookout UNRESPONSIVE", WAIT, |r| {
        r.iter().any(|s| s.value["current"] == "UNRESPONSIVE")
    });
    let last = &status.records.last().unwrap().value;
    assert_eq!(last["partner_id"], "lookout");
    assert_eq!(last["last_heartbeat_at"], now, "{last}");
    svc.stop();
    eprintln!(
        "malformed inputs: {} bad records rejected as expected in {:.1} s",
        expected.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// The fuzz seed corpus

/// `fuzz/seeds/decode/*` (selector byte + value) decode as the record their selector names;
/// they are written by `fuzz/seeds.py`, whose Avro encoder and fingerprints are independent of
/// the codec, so this also checks the codec against a second implementation.
#[test]
fn fuzz_seeds_decode_as_their_record() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let (sel, v) = bytes.split_first().unwrap();
        let r: Result<(), codec::DecodeError> = match sel {
            0 => decode::<DeviceThreatReport>(v).map(drop),
            1 => decode::<ConnectorHeartbeat>(v).map(drop),
            2 => decode::<ConnectorConfig>(v).map(drop),
            3 => decode::<ThreatPolicy>(v).map(drop),
            4 => decode::<DeviceEnrollment>(v).map(drop),
            5 => decode::<AppInventory>(v).map(drop),
            6 => decode::<DeviceStateRecord>(v).map(drop),
            7 => codec::decode_avro_datum::<DeviceStateRecord>(v).map(drop),
            // The registry decoder of the fuzz target: only its JSON seed decodes here.
            8 if name.ends_with("json") => decode::<DeviceThreatReport>(v).map(drop),
            8 => continue,
            9 => decode::<GroupMembership>(v).map(drop),
            10 => decode::<TenantSettings>(v).map(drop),
            s => panic!("{name}: selector {s}"),
        };
        if let Err(e) = r {
            panic!("seed {name} does not decode: {e} (rerun python3 fuzz/seeds.py?)");
        }
        n += 1;
    }
    assert!(n >= 40, "only {n} seeds in {}", dir.display());
}
