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
        (
            "NoPolicyState",
            syms(NoPolicyState::ALL, NoPolicyState::as_str),
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
    assert_eq!(set.entries().len(), 14);
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
        "GroupMembership",
        "TenantSettings",
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

    for (record, field) in [
        ("DeviceThreatReport", "threats"),
        ("AppInventory", "apps"),
        ("ThreatPolicy", "exclude_groups"),
        ("AppProtectionAction", "threats"),
        ("GroupMembership", "groups"),
        ("DeviceStateRecord", "graces"),
    ] {
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

    // Contract 1.1 part 2: the grace period is off by default, and so is its deadline.
    let field_of = |record: &str, field: &str| -> Value {
        let e = schema_set().by_name(record).unwrap();
        let json: Value = serde_json::from_str(e.source()).unwrap();
        json["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == field)
            .unwrap_or_else(|| panic!("{record}.{field}"))
            .clone()
    };
    let f = field_of("ThreatPolicy", "grace_period_hours");
    assert_eq!((&f["type"], &f["default"]), (&"int".into(), &0.into()));
    let f = field_of("ComplianceChange", "grace_ends_at");
    assert_eq!(f["default"], Value::Null);
    let p: ThreatPolicy = codec::decode(
        br#"{"tenant_id":"t","policy_id":"p","kind":"COMPLIANCE","platform":"IOS",
            "max_level":"LOW","updated_at":5}"#,
    )
    .unwrap();
    assert_eq!(p.grace_period_hours, 0);
}

/// The records of `schema` by full name, each with its fields and whether they have a default.
fn record_fields(schema: &Schema, out: &mut BTreeMap<String, BTreeMap<String, bool>>) {
    match schema {
        Schema::Record(r) => {
            out.insert(
                r.name.fullname(None),
                r.fields
                    .iter()
                    .map(|f| (f.name.clone(), f.default.is_some()))
                    .collect(),
            );
            r.fields.iter().for_each(|f| record_fields(&f.schema, out));
        }
        Schema::Array(a) => record_fields(&a.items, out),
        Schema::Map(m) => record_fields(&m.types, out),
        Schema::Union(u) => u.variants().iter().for_each(|v| record_fields(v, out)),
        _ => {}
    }
}

#[test]
fn fields_added_since_an_earlier_version_are_appended_with_defaults() {
    for h in schema_set().history() {
        let mut old = BTreeMap::new();
        record_fields(h.schema(), &mut old);
        let mut new = BTreeMap::new();
        record_fields(h.current().schema(), &mut new);
        for (record, old_fields) in &old {
            let new_fields = &new[record];
            for (field, has_default) in new_fields {
                if !old_fields.contains_key(field) {
                    assert!(
                        has_default,
                        "{record}.{field}: added since {} without a default",
                        h.version()
                    );
                }
            }
        }
        // Appended: the earlier fields keep their order, ahead of the new ones.
        let Schema::Record(old_r) = &**h.schema() else {
            unreachable!()
        };
        let Schema::Record(new_r) = h.current().schema() else {
            unreachable!()
        };
        let names = |r: &apache_avro::schema::RecordSchema| {
            r.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>()
        };
        let (o, n) = (names(old_r), names(new_r));
        assert_eq!(&n[..o.len()], &o[..], "{} {}", h.name(), h.version());
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

/// The ids of `ids.toml`, current and earlier versions, as the file lists them.
fn listed_ids() -> Vec<(String, String, u32)> {
    let doc: toml::Table = codec::schemas::IDS_TOML.parse().unwrap();
    let mut out = Vec::new();
    for (name, id) in doc["ids"].as_table().unwrap() {
        out.push((
            "current".into(),
            name.clone(),
            id.as_integer().unwrap() as u32,
        ));
    }
    for (version, table) in doc["history"].as_table().unwrap() {
        for (name, id) in table.as_table().unwrap() {
            out.push((
                version.clone(),
                name.clone(),
                id.as_integer().unwrap() as u32,
            ));
        }
    }
    out
}

#[test]
fn ids_are_never_reused_and_changed_records_got_new_ones() {
    let ids = listed_ids();
    let mut seen = BTreeMap::new();
    for (version, name, id) in &ids {
        if let Some(other) = seen.insert(*id, (version, name)) {
            panic!("id {id} used by {other:?} and {version} {name}");
        }
    }
    // The 1.0 records kept their ids where their schema did not change; the five that changed
    // in 1.1 got the next free ids, and their 1.0 ids moved to [history."1.0"].
    let id = |name: &str| schema_set().by_name(name).unwrap().confluent_id();
    for (name, current, old) in [
        ("ThreatPolicy", 1015, 1004),
        ("ComplianceChange", 1016, 1007),
        ("AppProtectionAction", 1017, 1008),
        ("RejectedEvent", 1018, 1011),
        ("DeviceStateRecord", 1020, 1012),
    ] {
        assert_eq!(id(name), current, "{name}");
        let h = schema_set().historic_by_id(old).unwrap();
        assert_eq!((h.name(), h.version()), (name, "1.0"));
        assert!(schema_set().by_id(old).is_none(), "{old} is no current id");
    }
    // DeviceStateRecord changed again after 1.1 (the replay window,
    // `partners[].earlier_event_fingerprints`): 1019 moved to [history."1.1"].
    let h = schema_set().historic_by_id(1019).unwrap();
    assert_eq!((h.name(), h.version()), ("DeviceStateRecord", "1.1"));
    assert!(schema_set().by_id(1019).is_none(), "1019 is no current id");
    for (name, kept) in [
        ("DeviceThreatReport", 1001),
        ("ConnectorHeartbeat", 1002),
        ("ConnectorConfig", 1003),
        ("DeviceEnrollment", 1005),
        ("AppInventory", 1006),
        ("ConnectorStatusChange", 1009),
        ("PartnerAppInventory", 1010),
        ("GroupMembership", 1013),
        ("TenantSettings", 1014),
    ] {
        assert_eq!(id(name), kept, "{name}");
    }
}

#[test]
fn history_files_are_the_ones_ids_toml_lists() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/history");
    let mut on_disk = BTreeSet::new();
    for version in std::fs::read_dir(&dir).unwrap() {
        let version = version.unwrap();
        for file in std::fs::read_dir(version.path()).unwrap() {
            let file = file.unwrap().file_name().into_string().unwrap();
            let name = file.strip_suffix(".avsc").expect("only .avsc files");
            on_disk.insert((version.file_name().into_string().unwrap(), name.to_owned()));
        }
    }
    let embedded: BTreeSet<(String, String)> = codec::schemas::HISTORY_SOURCES
        .iter()
        .map(|(v, n, _)| (v.to_string(), n.to_string()))
        .collect();
    let listed: BTreeSet<(String, String)> = listed_ids()
        .into_iter()
        .filter(|(v, _, _)| v != "current")
        .map(|(v, n, _)| (v, n))
        .collect();
    assert_eq!(on_disk, embedded, "files vs HISTORY_SOURCES");
    assert_eq!(listed, embedded, "ids.toml vs HISTORY_SOURCES");
    let set = schema_set();
    assert_eq!(set.history().len(), embedded.len());
    for h in set.history() {
        let text =
            std::fs::read_to_string(dir.join(h.version()).join(format!("{}.avsc", h.name())))
                .unwrap();
        assert_eq!(h.source(), text);
        // The fingerprints of an earlier version lead to it, not to a current record.
        assert_eq!(
            h.fingerprint(),
            codec::crc64_avro(h.canonical_form().as_bytes())
        );
        assert_ne!(h.canonical_form(), h.current().canonical_form());
        for fp in std::iter::once(h.fingerprint()).chain(h.alt_fingerprint()) {
            assert!(set.by_fingerprint(fp).is_none(), "{}", h.name());
            assert!(std::ptr::eq(set.historic_by_fingerprint(fp).unwrap(), h));
        }
        let theirs = h.schema().fingerprint::<Rabin>().bytes;
        assert_eq!(
            h.alt_fingerprint()
                .unwrap_or(h.fingerprint())
                .to_le_bytes()
                .to_vec(),
            theirs
        );
    }
}

/// The enum schemas of `schema` with their `default` symbol.
fn enum_defaults(schema: &Schema, out: &mut BTreeMap<String, Option<String>>) {
    match schema {
        Schema::Record(r) => r.fields.iter().for_each(|f| enum_defaults(&f.schema, out)),
        Schema::Array(a) => enum_defaults(&a.items, out),
        Schema::Map(m) => enum_defaults(&m.types, out),
        Schema::Union(u) => u.variants().iter().for_each(|v| enum_defaults(v, out)),
        Schema::Enum(e) => {
            // An enum defined in several files has one default.
            if let Some(other) = out.insert(e.name.name.clone(), e.default.clone()) {
                assert_eq!(other, e.default, "{}: two defaults", e.name.name);
            }
        }
        _ => {}
    }
}

#[test]
fn enums_that_gained_symbols_have_a_default_and_only_appended() {
    let mut defaults = BTreeMap::new();
    for e in schema_set().entries() {
        enum_defaults(e.schema(), &mut defaults);
    }
    assert_eq!(
        defaults["ReasonCode"].as_deref(),
        Some("MISSING_PARTNER_DATA")
    );
    assert_eq!(defaults["RejectReason"].as_deref(), Some("INVALID_FIELD"));
    assert_eq!(defaults["NoPolicyState"].as_deref(), Some("NOT_EVALUATED"));
    // IN_GRACE_PERIOD (1.1): a reader that does not know a state claims none.
    assert_eq!(defaults["ComplianceState"].as_deref(), Some("UNKNOWN"));
    assert_eq!(
        ComplianceState::ALL.last(),
        Some(&ComplianceState::InGracePeriod)
    );
    // Every default is a symbol of its enum.
    let mut symbols = BTreeMap::new();
    for e in schema_set().entries() {
        collect_enums(e.schema(), &mut symbols);
    }
    for (full, syms) in &symbols {
        let short = full.rsplit('.').next().unwrap();
        if let Some(d) = &defaults[short] {
            assert!(syms.contains(d), "{short}: default {d} is no symbol");
        }
    }
    for h in schema_set().history() {
        let mut old = BTreeMap::new();
        collect_enums(h.schema(), &mut old);
        let mut new = BTreeMap::new();
        collect_enums(h.current().schema(), &mut new);
        for (name, old_symbols) in old {
            let new_symbols = &new[&name];
            // Symbols are only ever appended: an index keeps its meaning.
            assert_eq!(
                &new_symbols[..old_symbols.len()],
                &old_symbols[..],
                "{} {}: {name}",
                h.name(),
                h.version()
            );
            if new_symbols.len() > old_symbols.len() {
                let short = name.rsplit('.').next().unwrap();
                assert!(
                    defaults[short].is_some(),
                    "{short} gained symbols since {} and has no default",
                    h.version()
                );
            }
        }
    }
}
