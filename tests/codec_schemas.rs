//! The schema set of `schemas/`: it parses, lives in the contract's namespace, agrees with the
//! Rust model (enum symbols in declaration order, defaults) and has stable fingerprints and ids.

use std::collections::{BTreeMap, BTreeSet};

use apache_avro::{rabin::Rabin, Schema};
use mtdgate::codec::{self, schema_set, AvroRecord, NAMESPACE};
use mtdgate::model::*;
use serde_json::Value;

/// Rust enum name -> its symbols in `ALL` order.
fn rust_enums() -> BTreeMap<&'static str, Vec<&'static str>> {
    fn syms<T: Copy>(all: &[T], f: impl Fn(T) -> &'static str) -> Vec<&'static str> {
        all.iter().map(|&v| f(v)).collect()
    }
    BTreeMap::from([
        ("Platform", syms(Platform::ALL, Platform::as_str)),
        ("Management", syms(Management::ALL, Management::as_str)),
        ("Ownership", syms(Ownership::ALL, Ownership::as_str)),
        ("HealthState", syms(HealthState::ALL, HealthState::as_str)),
        (
            "ThreatSeverity",
            syms(ThreatSeverity::ALL, ThreatSeverity::as_str),
        ),
        ("ThreatLevel", syms(ThreatLevel::ALL, ThreatLevel::as_str)),
        ("PolicyKind", syms(PolicyKind::ALL, PolicyKind::as_str)),
        ("PolicyLevel", syms(PolicyLevel::ALL, PolicyLevel::as_str)),
        (
            "PolicyAction",
            syms(PolicyAction::ALL, PolicyAction::as_str),
        ),
        (
            "PartnerPriority",
            syms(PartnerPriority::ALL, PartnerPriority::as_str),
        ),
        (
            "ComplianceState",
            syms(ComplianceState::ALL, ComplianceState::as_str),
        ),
        ("ReasonCode", syms(ReasonCode::ALL, ReasonCode::as_str)),
        ("AppAction", syms(AppAction::ALL, AppAction::as_str)),
        (
            "ConnectorStatus",
            syms(ConnectorStatus::ALL, ConnectorStatus::as_str),
        ),
        (
            "RejectReason",
            syms(RejectReason::ALL, RejectReason::as_str),
        ),
    ])
}

/// Every enum schema inside `schema`, by full name.
fn collect_enums(schema: &Schema, out: &mut BTreeMap<String, Vec<String>>) {
    match schema {
        Schema::Record(r) => r.fields.iter().for_each(|f| collect_enums(&f.schema, out)),
        Schema::Array(a) => collect_enums(&a.items, out),
        Schema::Map(m) => collect_enums(&m.types, out),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_enums(v, out)),
        Schema::Enum(e) => {
            out.insert(e.name.fullname(None), e.symbols.clone());
        }
        _ => {}
    }
}

#[test]
fn every_schema_parses_in_the_contract_namespace() {
    let set = schema_set();
    assert_eq!(set.entries().len(), 12);
    let names: BTreeSet<&str> = set.entries().iter().map(|e| e.name()).collect();
    for expected in [
        "DeviceThreatReport",
        "ConnectorHeartbeat",
        "ConnectorConfig",
        "ThreatPolicy",
        "DeviceEnrollment",
        "AppInventory",
        "ComplianceChange",
        "AppProtectionAction",
        "ConnectorStatusChange",
        "PartnerAppInventory",
        "RejectedEvent",
        "DeviceStateRecord",
    ] {
        assert!(names.contains(expected), "{expected} missing");
    }
    for e in set.entries() {
        // Standalone: each file parses on its own.
        let schema = Schema::parse_str(e.source()).unwrap();
        let Schema::Record(r) = &schema else {
            panic!("{} is not a record", e.name())
        };
        assert_eq!(r.name.namespace.as_deref(), Some(NAMESPACE), "{}", e.name());
        assert_eq!(e.full_name(), format!("io.mtdgate.v1.{}", e.name()));
        assert!(r.doc.is_some(), "{} has no doc", e.name());
        for f in &r.fields {
            assert!(f.doc.is_some(), "{}.{} has no doc", e.name(), f.name);
        }
        assert!(set.by_name(e.name()).is_some());
        assert!(set.by_name(e.full_name()).is_some());
    }
}

#[test]
fn enum_symbols_match_the_rust_enums_in_order() {
    let rust = rust_enums();
    let mut seen = BTreeSet::new();
    for e in schema_set().entries() {
        let mut enums = BTreeMap::new();
        collect_enums(e.schema(), &mut enums);
        for (full, symbols) in enums {
            let short = full
                .strip_prefix("io.mtdgate.v1.")
                .unwrap_or_else(|| panic!("{}: enum {full} outside the namespace", e.name()));
            let expected = rust
                .get(short)
                .unwrap_or_else(|| panic!("{}: enum {short} has no Rust enum", e.name()));
            assert_eq!(&symbols, expected, "{}: enum {short}", e.name());
            seen.insert(short.to_owned());
        }
    }
    let missing: Vec<_> = rust.keys().filter(|k| !seen.contains(**k)).collect();
    assert!(missing.is_empty(), "Rust enums in no schema: {missing:?}");
}

/// Walks the raw JSON of every field (`record`, `field`, field JSON).
fn for_each_field(f: &mut impl FnMut(&str, &str, &Value)) {
    fn walk(v: &Value, f: &mut impl FnMut(&str, &str, &Value)) {
        match v {
            Value::Object(m) => {
                if m.get("type").and_then(Value::as_str) == Some("record") {
                    let name = m["name"].as_str().unwrap();
                    for field in m["fields"].as_array().unwrap() {
                        f(name, field["name"].as_str().unwrap(), field);
                        walk(&field["type"], f);
                    }
                } else {
                    m.values().for_each(|x| walk(x, f));
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    for e in schema_set().entries() {
        let json: Value = serde_json::from_str(e.source()).unwrap();
        walk(&json, f);
    }
}

#[test]
fn field_conventions() {
    let mut count = 0;
    for_each_field(&mut |record, name, field| {
        count += 1;
        let ty = &field["type"];
        // Timestamps are timestamp-millis longs (also when optional).
        if name.ends_with("_at") {
            let ts = serde_json::json!({"type": "long", "logicalType": "timestamp-millis"});
            assert!(
                ty == &ts || ty == &serde_json::json!(["null", ts]),
                "{record}.{name}: {ty}"
            );
        }
        // Optional fields: ["null", T] with default null.
        if let Value::Array(branches) = ty {
            assert_eq!(branches[0], "null", "{record}.{name}");
            assert_eq!(branches.len(), 2, "{record}.{name}");
            assert_eq!(field.get("default"), Some(&Value::Null), "{record}.{name}");
        }
    });
    assert!(count > 100, "{count} fields");
}

#[test]
fn schema_defaults_match_the_rust_defaults() {
    let cfg = schema_set().by_name("ConnectorConfig").unwrap();
    let json: Value = serde_json::from_str(cfg.source()).unwrap();
    for f in json["fields"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        match name {
            "tenant_id" | "partner_id" | "updated_at" => assert!(f.get("default").is_none()),
            "heartbeat_timeout_seconds" => assert_eq!(f["default"], 86400, "{name}"),
            "unresponsive_threshold_days" => assert_eq!(f["default"], 7, "{name}"),
            _ => {
                assert_eq!(f["type"], "boolean", "{name}");
                assert_eq!(f["default"], false, "{name}");
            }
        }
    }
    // Rust side: the JSON decoder fills the same defaults.
    let decoded: ConnectorConfig =
        codec::decode(br#"{"tenant_id":"t","partner_id":"lookout","updated_at":5}"#).unwrap();
    assert_eq!(decoded, ConnectorConfig::new("t", "lookout", 5));

    for (record, field) in [("DeviceThreatReport", "threats"), ("AppInventory", "apps")] {
        let e = schema_set().by_name(record).unwrap();
        let json: Value = serde_json::from_str(e.source()).unwrap();
        let f = json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == field)
            .unwrap();
        assert_eq!(f["default"], serde_json::json!([]), "{record}.{field}");
    }
}

#[test]
fn fingerprints_follow_the_avro_spec() {
    let set = schema_set();
    let mut fps = BTreeSet::new();
    for e in set.entries() {
        // Our canonical form and CRC-64-AVRO.
        assert_eq!(
            e.fingerprint(),
            codec::crc64_avro(e.canonical_form().as_bytes())
        );
        assert_eq!(e.fingerprint_bytes(), e.fingerprint().to_le_bytes());
        assert!(
            fps.insert(e.fingerprint()),
            "{}: duplicate fingerprint",
            e.name()
        );
        // No doc, default or logicalType survives; names are full names.
        let c = e.canonical_form();
        for stripped in [
            "\"doc\"",
            "\"default\"",
            "logicalType",
            "\"namespace\"",
            " ",
        ] {
            assert!(!c.contains(stripped), "{}: {stripped} in {c}", e.name());
        }
        assert!(c.starts_with(&format!(
            "{{\"name\":\"io.mtdgate.v1.{}\",\"type\":\"record\",\"fields\":[",
            e.name()
        )));
        // apache-avro agrees on the canonical form of the canonical form, and its Rabin digest
        // of it is our fingerprint.
        let reparsed = Schema::parse_str(c).unwrap();
        assert_eq!(reparsed.canonical_form(), c, "{}", e.name());
        let theirs = reparsed.fingerprint::<Rabin>();
        assert_eq!(theirs.bytes, e.fingerprint_bytes().to_vec(), "{}", e.name());
        // apache-avro 0.20 keeps `{"type":"long"}` where a primitive carried a logicalType;
        // the spec (and the Java implementation) reduce it to `"long"`. Otherwise identical.
        let apache = e
            .schema()
            .canonical_form()
            .replace(r#"{"type":"long"}"#, r#""long""#);
        assert_eq!(apache, c, "{}", e.name());
    }
}

#[test]
fn confluent_ids_come_from_ids_toml() {
    let set = schema_set();
    let mut ids = BTreeSet::new();
    for e in set.entries() {
        assert!(ids.insert(e.confluent_id()), "{}: duplicate id", e.name());
        assert_eq!(set.by_id(e.confluent_id()).unwrap().name(), e.name());
        assert_eq!(
            set.by_fingerprint(e.fingerprint()).unwrap().name(),
            e.name()
        );
        let line = format!("{} = {}", e.name(), e.confluent_id());
        assert!(codec::schemas::IDS_TOML.contains(&line), "{line}");
    }
    assert_eq!(DeviceThreatReport::schema_entry().confluent_id(), 1001);
    assert_eq!(DeviceThreatReport::SCHEMA_NAME, "DeviceThreatReport");
    assert_eq!(
        DeviceStateRecord::schema_entry().name(),
        "DeviceStateRecord"
    );
    assert!(set.by_id(1).is_none());
    assert!(set.by_fingerprint(0).is_none());
}
