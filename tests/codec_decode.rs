//! Decoding and encoding of every record in every encoding: wire compatibility with the
//! apache-avro implementation, JSON leniency, each rejection class with its reason and field
//! path, schema resolution of older writer schemas, and property tests.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Once};
use std::time::Instant;

use apache_avro::Schema;
use mtdgate::codec::{
    self, decode, encode, AvroRecord, DecodeError, Decoder, Encoding, OutputEncoding, ResolveError,
    SchemaResolver,
};
use mtdgate::model::*;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use support::wire::*;

fn init() {
    static ONCE: Once = Once::new();
    // apache-avro's serde bridge is human readable by default, which would turn
    // `RejectedEvent.raw` into base64 text; the model's binary form is `bytes`.
    ONCE.call_once(|| apache_avro::set_serde_human_readable(false));
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn report() -> DeviceThreatReport {
    DeviceThreatReport {
        event_id: "evt-0001".into(),
        tenant_id: "tenant-a".into(),
        partner_id: "lookout".into(),
        device_id: "device-42".into(),
        user_id: Some("alice@example.com".into()),
        platform: Platform::Ios,
        management: Management::Mdm,
        ownership: Some(Ownership::Corporate),
        os_version: Some("17.4.1".into()),
        health_state: HealthState::High,
        threats: vec![
            Threat {
                category: "network".into(),
                name: "rogue wifi".into(),
                severity: ThreatSeverity::High,
            },
            Threat {
                category: "app".into(),
                name: "sideloaded ✓ app".into(),
                severity: ThreatSeverity::Critical,
            },
        ],
        observed_at: 1_700_000_000_123,
    }
}

fn heartbeat() -> ConnectorHeartbeat {
    ConnectorHeartbeat {
        tenant_id: "tenant-a".into(),
        partner_id: "zimperium".into(),
        sent_at: 1_700_000_000_000,
        error_code: Some(-3),
        min_os_versions: Some(BTreeMap::from([
            ("ANDROID".into(), "12".into()),
            ("IOS".into(), "16.0".into()),
        ])),
    }
}

fn connector() -> ConnectorConfig {
    let mut c = support::world::set_up("tenant-a", support::world::MDE, 1_699_999_999_999);
    c.ios_enabled = true;
    c.windows_mam_enabled = true;
    c.macos_blocked_on_missing_data = true;
    c.ios_app_sync_personal_full = true;
    c.heartbeat_timeout_seconds = 3600;
    c.unresponsive_threshold_days = 30;
    c
}

fn policy() -> ThreatPolicy {
    ThreatPolicy {
        tenant_id: "tenant-a".into(),
        policy_id: "p-1".into(),
        kind: PolicyKind::AppProtection,
        platform: Platform::Android,
        max_level: PolicyLevel::Low,
        action: Some(PolicyAction::Wipe),
        partner_priority: Some(PartnerPriority::ThirdPartyFirst),
        updated_at: 12,
        include_groups: Some(vec!["sales".into(), "grüppe ✓".into()]),
        exclude_groups: vec!["contractors".into()],
        defender_max_level: Some(PolicyLevel::NotSet),
        block_on_missing_data: true,
        grace_period_hours: 0,
    }
}

/// A COMPLIANCE policy with the longest grace period (contract 1.1).
fn grace_policy() -> ThreatPolicy {
    ThreatPolicy {
        grace_period_hours: 8760,
        exclude_groups: vec!["contractors".into()],
        ..ThreatPolicy::new(
            "tenant-a",
            "cp-grace",
            PolicyKind::Compliance,
            Platform::Ios,
            PolicyLevel::Medium,
            13,
        )
    }
}

fn membership() -> GroupMembership {
    GroupMembership {
        tenant_id: "tenant-a".into(),
        user_id: "alice".into(),
        groups: vec!["sales".into(), "emea".into()],
        updated_at: 1_700_000_000_000,
    }
}

fn settings() -> TenantSettings {
    TenantSettings {
        tenant_id: "tenant-a".into(),
        no_policy_state: NoPolicyState::Noncompliant,
        report_validity_days: Some(30),
        updated_at: 1_700_000_000_001,
    }
}

fn enrollment() -> DeviceEnrollment {
    DeviceEnrollment {
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        user_id: "alice".into(),
        platform: Platform::Macos,
        management: Management::Mam,
        ownership: Ownership::Personal,
        os_version: None,
        enrolled_at: -5,
    }
}

fn app(n: i64) -> AppInfo {
    AppInfo {
        app_id: format!("com.example.app{n}"),
        version: "100".into(),
        short_version: "1.0.0".into(),
        name: format!("App {n}"),
        bundle_size: 1 << 40,
        dynamic_size: n,
        ad_hoc_signed: n % 2 == 0,
        from_app_store: true,
        beta: false,
        device_vpp: n % 3 == 0,
        validated: true,
        managed: n % 2 == 1,
    }
}

fn inventory() -> AppInventory {
    AppInventory {
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        ownership: Ownership::Unknown,
        collected_at: 77,
        apps: vec![app(1), app(2), app(3)],
    }
}

fn compliance_change() -> ComplianceChange {
    ComplianceChange {
        change_id: "c-1".into(),
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        user_id: None,
        platform: Platform::Windows,
        previous: ComplianceState::Compliant,
        current: ComplianceState::Noncompliant,
        reasons: vec![
            Reason {
                partner_id: "lookout".into(),
                code: ReasonCode::LevelExceedsPolicy,
                detail: "HIGH > LOW".into(),
                threats: report().threats,
            },
            Reason {
                partner_id: "zimperium".into(),
                code: ReasonCode::PartnerComplianceIgnored,
                detail: String::new(),
                threats: Vec::new(),
            },
            Reason {
                partner_id: "jamf".into(),
                code: ReasonCode::ReportExpired,
                detail: "older than 30 days".into(),
                threats: Vec::new(),
            },
        ],
        worst_level: Some(ThreatLevel::Compromised),
        evaluated_at: i64::MAX,
        cause_event_id: "evt-0001".into(),
        grace_ends_at: None,
    }
}

/// A device entering its grace period (contract 1.1): failing, not yet noncompliant.
fn grace_change() -> ComplianceChange {
    ComplianceChange {
        change_id: "c-2".into(),
        previous: ComplianceState::Compliant,
        current: ComplianceState::InGracePeriod,
        reasons: vec![Reason {
            partner_id: "lookout".into(),
            code: ReasonCode::LevelExceedsPolicy,
            detail: "HIGH > MEDIUM".into(),
            threats: report().threats,
        }],
        worst_level: Some(ThreatLevel::High),
        evaluated_at: 1_700_000_000_000,
        grace_ends_at: Some(1_700_000_000_000 + 72 * 3_600_000),
        ..compliance_change()
    }
}

fn action() -> AppProtectionAction {
    AppProtectionAction {
        action_id: "a-1".into(),
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        user_id: Some("bob".into()),
        platform: Platform::Android,
        partner_id: "lookout".into(),
        action: AppAction::Unblock,
        level: Some(ThreatLevel::Secured),
        max_allowed_level: None,
        policy_id: String::new(),
        issued_at: i64::MIN,
        cause_event_id: "evt-2".into(),
        threats: vec![Threat {
            category: "device".into(),
            name: "jailbreak".into(),
            severity: ThreatSeverity::Critical,
        }],
    }
}

fn status_change() -> ConnectorStatusChange {
    ConnectorStatusChange {
        tenant_id: "tenant-a".into(),
        partner_id: "lookout".into(),
        previous: ConnectorStatus::Enabled,
        current: ConnectorStatus::Unresponsive,
        compliance_ignored: true,
        last_heartbeat_at: Some(1_000),
        changed_at: 2_000,
        reason: "no heartbeat for 86400 s".into(),
    }
}

fn partner_inventory() -> PartnerAppInventory {
    PartnerAppInventory {
        tenant_id: "tenant-a".into(),
        partner_id: "lookout".into(),
        device_id: "device-42".into(),
        ownership: Ownership::Personal,
        collected_at: 77,
        apps: vec![app(7)],
        unmanaged_apps_removed: 2,
    }
}

fn rejected() -> RejectedEvent {
    RejectedEvent {
        source_topic: "mtd.device-threats.v1".into(),
        partition: 3,
        offset: 123_456_789,
        key: Some("tenant-a/device-42".into()),
        reason: RejectReason::ConflictingConnector,
        detail: "threats[2].severity: enum index 9 out of range (4 symbols)".into(),
        raw: vec![0xC3, 0x01, 0, 0xff, 0x7f],
        rejected_at: 99,
    }
}

fn device_state() -> DeviceStateRecord {
    DeviceStateRecord {
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        user_id: Some("alice".into()),
        platform: Platform::Ios,
        management: Management::Mdm,
        ownership: None,
        os_version: Some("17.0".into()),
        enrolled: true,
        compliance: ComplianceState::InGracePeriod,
        mam_blocked: false,
        mam_wipe_incident: true,
        output_seq: 17,
        partners: vec![
            PartnerObservation {
                partner_id: "lookout".into(),
                health_state: HealthState::Misconfigured,
                observed_at: 5,
                event_fingerprint: -1,
                threats: Vec::new(),
                earlier_event_fingerprints: Vec::new(),
            },
            PartnerObservation {
                partner_id: "jamf".into(),
                health_state: HealthState::Secured,
                observed_at: 6,
                event_fingerprint: i32::MAX,
                threats: report().threats,
                earlier_event_fingerprints: vec![i32::MIN],
            },
        ],
        graces: vec![
            PolicyGrace {
                policy_id: "cp-grace".into(),
                failing_since: 1_700_000_000_000,
            },
            PolicyGrace {
                policy_id: "cp-ios ✓".into(),
                failing_since: -1,
            },
        ],
    }
}

trait Record: AvroRecord + Serialize + DeserializeOwned + PartialEq + Debug + Clone {}
impl<T: AvroRecord + Serialize + DeserializeOwned + PartialEq + Debug + Clone> Record for T {}

/// Calls `$f::<T>(fixture)` for every record type.
macro_rules! for_every_record {
    ($f:ident) => {{
        $f(&report());
        $f(&heartbeat());
        $f(&connector());
        $f(&policy());
        $f(&grace_policy());
        $f(&enrollment());
        $f(&inventory());
        $f(&compliance_change());
        $f(&grace_change());
        $f(&action());
        $f(&status_change());
        $f(&partner_inventory());
        $f(&rejected());
        $f(&device_state());
        $f(&membership());
        $f(&settings());
    }};
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// Our serializer -> apache-avro reader, apache-avro writer -> our deserializer.
fn check_apache_interop<T: Record>(v: &T) {
    init();
    let entry = T::schema_entry();
    let ours = datum(v);
    let value = apache_avro::from_avro_datum(entry.schema(), &mut &ours[..], None)
        .unwrap_or_else(|e| panic!("{}: apache-avro cannot read our bytes: {e}", T::SCHEMA_NAME));
    let back: T = apache_avro::from_value(&value).unwrap();
    assert_eq!(&back, v, "{}", T::SCHEMA_NAME);

    let theirs = apache_avro::to_avro_datum(entry.schema(), apache_avro::to_value(v).unwrap())
        .unwrap_or_else(|e| panic!("{}: apache-avro cannot write: {e}", T::SCHEMA_NAME));
    let back: T = codec::decode_avro_datum(&theirs).unwrap();
    assert_eq!(&back, v, "{}", T::SCHEMA_NAME);
    if T::SCHEMA_NAME != "ConnectorHeartbeat" {
        // (apache-avro writes map entries in hash order)
        assert_eq!(theirs, ours, "{}: bytes differ", T::SCHEMA_NAME);
    }
}

#[test]
fn every_record_is_wire_compatible_with_apache_avro() {
    for_every_record!(check_apache_interop);
}

fn check_framings<T: Record>(v: &T) {
    let entry = T::schema_entry();
    let so = encoded(v, OutputEncoding::Avro);
    assert_eq!(&so[..2], &[0xC3, 0x01]);
    assert_eq!(&so[2..10], &entry.fingerprint_bytes());
    assert_eq!(&so[10..], &datum(v)[..]);
    assert_eq!(
        Encoding::detect(&so).unwrap(),
        Encoding::SingleObject {
            fingerprint: entry.fingerprint()
        }
    );
    assert_eq!(&decode::<T>(&so).unwrap(), v, "{}", T::SCHEMA_NAME);

    let cf = encoded(v, OutputEncoding::AvroConfluent);
    assert_eq!(cf[0], 0);
    assert_eq!(&cf[1..5], &entry.confluent_id().to_be_bytes());
    assert_eq!(&cf[5..], &datum(v)[..]);
    assert_eq!(
        Encoding::detect(&cf).unwrap(),
        Encoding::Confluent {
            schema_id: entry.confluent_id()
        }
    );
    assert_eq!(&decode::<T>(&cf).unwrap(), v, "{}", T::SCHEMA_NAME);

    let js = encoded(v, OutputEncoding::Json);
    assert_eq!(Encoding::detect(&js).unwrap(), Encoding::Json);
    assert_eq!(&decode::<T>(&js).unwrap(), v, "{}", T::SCHEMA_NAME);

    // The buffer is appended to, not replaced.
    let mut buf = b"prefix".to_vec();
    encode(v, OutputEncoding::Avro, &mut buf).unwrap();
    assert_eq!(&buf[6..], &so[..]);

    // With a registry, its ids replace those of ids.toml (contract 1.1): one that knows
    // nothing has no schema for the ids.toml id; fingerprints still need no registry.
    let d = Decoder::with_resolver(Arc::new(NoSchemas), 10);
    let e = d.decode::<T>(&cf).unwrap_err();
    assert_eq!(e.reason(), RejectReason::UnknownSchema, "{e}");
    assert!(e.detail().contains("not in the schema registry"), "{e}");
    assert_eq!(&d.decode::<T>(&so).unwrap(), v);
}

#[test]
fn every_record_round_trips_in_every_encoding() {
    for_every_record!(check_framings);
}

#[test]
fn json_uses_symbols_millis_and_base64() {
    let js = String::from_utf8(encoded(&report(), OutputEncoding::Json)).unwrap();
    assert!(js.contains(r#""platform":"IOS""#), "{js}");
    assert!(js.contains(r#""severity":"CRITICAL""#), "{js}");
    assert!(js.contains(r#""observed_at":1700000000123"#), "{js}");
    let js = String::from_utf8(encoded(&rejected(), OutputEncoding::Json)).unwrap();
    assert!(js.contains(r#""raw":"wwEA/38=""#), "{js}");
    assert!(js.contains(r#""reason":"CONFLICTING_CONNECTOR""#), "{js}");
}

#[test]
fn json_optional_fields_may_be_omitted_or_null() {
    let minimal = br#"  {"event_id":"e","tenant_id":"t","partner_id":"lookout","device_id":"d",
        "platform":"ANDROID","management":"MAM","health_state":"SECURED","observed_at":1}"#;
    let r: DeviceThreatReport = decode(minimal).unwrap();
    assert_eq!(r.user_id, None);
    assert_eq!(r.ownership, None);
    assert_eq!(r.os_version, None);
    assert!(r.threats.is_empty());
    let nulls = br#"{"event_id":"e","tenant_id":"t","partner_id":"lookout","device_id":"d",
        "user_id":null,"platform":"ANDROID","management":"MAM","ownership":null,"os_version":null,
        "health_state":"SECURED","threats":[],"observed_at":1,"some_future_field":{"x":[1]}}"#;
    assert_eq!(decode::<DeviceThreatReport>(nulls).unwrap(), r);

    let hb: ConnectorHeartbeat =
        decode(br#"{"tenant_id":"t","partner_id":"p","sent_at":3,"min_os_versions":{"IOS":"17"}}"#)
            .unwrap();
    assert_eq!(hb.error_code, None);
    assert_eq!(hb.min_os_versions.unwrap()["IOS"], "17");
}

#[test]
fn json_grace_fields_take_their_defaults_and_are_checked() {
    // The fields contract 1.1 part 2 added, left out: their defaults.
    let without = |v: serde_json::Value, field: &str| {
        let mut v = v;
        assert!(
            v.as_object_mut().unwrap().remove(field).is_some(),
            "{field}"
        );
        serde_json::to_vec(&v).unwrap()
    };
    let p: ThreatPolicy = decode(&without(
        serde_json::to_value(grace_policy()).unwrap(),
        "grace_period_hours",
    ))
    .unwrap();
    assert_eq!(p.grace_period_hours, 0);
    let c: ComplianceChange = decode(&without(
        serde_json::to_value(grace_change()).unwrap(),
        "grace_ends_at",
    ))
    .unwrap();
    assert_eq!(c.grace_ends_at, None);
    assert_eq!(c.current, ComplianceState::InGracePeriod);
    let s: DeviceStateRecord = decode(&without(
        serde_json::to_value(device_state()).unwrap(),
        "graces",
    ))
    .unwrap();
    assert!(s.graces.is_empty());

    // The symbol and the fields in JSON.
    let js = String::from_utf8(encoded(&grace_change(), OutputEncoding::Json)).unwrap();
    assert!(js.contains(r#""current":"IN_GRACE_PERIOD""#), "{js}");
    assert!(js.contains(r#""grace_ends_at":1700259200000"#), "{js}");
    let js = String::from_utf8(encoded(&device_state(), OutputEncoding::Json)).unwrap();
    assert!(
        js.contains(r#""graces":[{"policy_id":"cp-grace","failing_since":1700000000000}"#),
        "{js}"
    );

    // Wrong types and symbols name the field.
    let mut v = serde_json::to_value(grace_change()).unwrap();
    v["current"] = "in_grace_period".into();
    assert_rejected(
        &reject::<ComplianceChange>(&serde_json::to_vec(&v).unwrap()),
        RejectReason::InvalidField,
        &["current", "unknown variant `in_grace_period`"],
    );
    let mut v = serde_json::to_value(grace_policy()).unwrap();
    v["grace_period_hours"] = "72".into();
    assert_rejected(
        &reject::<ThreatPolicy>(&serde_json::to_vec(&v).unwrap()),
        RejectReason::InvalidField,
        &["grace_period_hours", "invalid type"],
    );
    let mut v = serde_json::to_value(device_state()).unwrap();
    v["graces"][1]
        .as_object_mut()
        .unwrap()
        .remove("failing_since");
    assert_rejected(
        &reject::<DeviceStateRecord>(&serde_json::to_vec(&v).unwrap()),
        RejectReason::InvalidField,
        &["graces[1]", "missing field `failing_since`"],
    );
}

// ---------------------------------------------------------------------------------------------
// Hand-built Avro datums, for inputs no encoder would write

/// A DeviceThreatReport datum up to (excluding) `threats`, with `device_id` given raw.
fn report_head(device_id: &[u8]) -> Datum {
    Datum::default()
        .str("e")
        .str("t")
        .str("lookout")
        .bytes(device_id)
        .long(0) // user_id: null
        .long(1) // platform IOS
        .long(0) // management MDM
        .long(1) // ownership: branch 1
        .long(2) // UNKNOWN
        .long(0) // os_version: null
        .long(6) // health_state HIGH
}

fn so_report(d: Datum) -> Vec<u8> {
    single_object::<DeviceThreatReport>(&d.0)
}

fn reject<T: Record>(bytes: &[u8]) -> DecodeError {
    match decode::<T>(bytes) {
        Ok(v) => panic!("decoded {v:?} from {bytes:02x?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_rejected(e: &DecodeError, reason: RejectReason, needles: &[&str]) {
    assert_eq!(e.reason(), reason, "{e}");
    for n in needles {
        assert!(e.detail().contains(n), "`{n}` not in `{}`", e.detail());
    }
}

#[test]
fn hand_built_datum_decodes() {
    let d = report_head(b"dev")
        .long(2)
        .str("c")
        .str("n")
        .long(3)
        .str("c2")
        .str("n2")
        .long(0)
        .long(0)
        .long(42);
    let r: DeviceThreatReport = decode(&so_report(d)).unwrap();
    assert_eq!(r.device_id, "dev");
    assert_eq!(r.ownership, Some(Ownership::Unknown));
    assert_eq!(r.health_state, HealthState::High);
    assert_eq!(r.threats[0].severity, ThreatSeverity::Critical);
    assert_eq!(r.threats[1].severity, ThreatSeverity::Low);
    assert_eq!(r.observed_at, 42);

    // Negative block counts carry a byte size; several blocks concatenate.
    let d = report_head(b"dev")
        .long(-1)
        .long(5)
        .str("c")
        .str("n")
        .long(3)
        .long(1)
        .str("c2")
        .str("n2")
        .long(0)
        .long(0)
        .long(42);
    let r2: DeviceThreatReport = decode(&so_report(d)).unwrap();
    assert_eq!(r2, r);
}

#[test]
fn rejects_truncated_avro() {
    let full = encoded(&report(), OutputEncoding::Avro);
    let e = reject::<DeviceThreatReport>(&full[..full.len() - 1]);
    assert_rejected(&e, RejectReason::Undecodable, &["observed_at", "truncated"]);
    // Cut inside the second threat's name.
    let cut = full.len() - 20;
    let e = reject::<DeviceThreatReport>(&full[..cut]);
    assert_rejected(&e, RejectReason::Undecodable, &["threats[1]", "truncated"]);
    // Every prefix is rejected (never decodes, never panics).
    for n in 0..full.len() {
        let e = reject::<DeviceThreatReport>(&full[..n]);
        assert_eq!(e.reason(), RejectReason::Undecodable, "prefix {n}: {e}");
    }
    let cf = encoded(&report(), OutputEncoding::AvroConfluent);
    for n in 0..cf.len() {
        assert_eq!(
            reject::<DeviceThreatReport>(&cf[..n]).reason(),
            RejectReason::Undecodable
        );
    }
}

#[test]
fn rejects_unknown_and_foreign_schemas() {
    let d = datum(&report());
    let e = reject::<DeviceThreatReport>(&confluent(4242, &d));
    assert_rejected(&e, RejectReason::UnknownSchema, &["4242"]);
    let e = reject::<DeviceThreatReport>(&confluent(1002, &d));
    assert_rejected(
        &e,
        RejectReason::UnknownSchema,
        &[
            "1002",
            "io.mtdgate.v1.ConnectorHeartbeat",
            "expected io.mtdgate.v1.DeviceThreatReport",
        ],
    );

    let mut so = vec![0xC3, 0x01];
    so.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    so.extend_from_slice(&d);
    let e = reject::<DeviceThreatReport>(&so);
    assert_rejected(
        &e,
        RejectReason::UnknownSchema,
        &["fingerprint 0x0123456789abcdef"],
    );

    let hb = encoded(&heartbeat(), OutputEncoding::Avro);
    let e = reject::<DeviceThreatReport>(&hb);
    assert_rejected(
        &e,
        RejectReason::UnknownSchema,
        &[
            "ConnectorHeartbeat",
            "expected io.mtdgate.v1.DeviceThreatReport",
        ],
    );
}

#[test]
fn accepts_the_apache_avro_rust_fingerprint_too() {
    let entry = DeviceThreatReport::schema_entry();
    let alt = entry
        .alt_fingerprint()
        .expect("timestamp-millis makes apache-avro's fingerprint differ");
    let theirs = entry
        .schema()
        .fingerprint::<apache_avro::rabin::Rabin>()
        .bytes;
    assert_eq!(alt.to_le_bytes().to_vec(), theirs);
    let mut so = vec![0xC3, 0x01];
    so.extend_from_slice(&theirs);
    so.extend_from_slice(&datum(&report()));
    assert_eq!(decode::<DeviceThreatReport>(&so).unwrap(), report());
}

#[test]
fn rejects_undecodable_framing() {
    assert_rejected(
        &reject::<DeviceThreatReport>(b""),
        RejectReason::Undecodable,
        &["empty"],
    );
    assert_rejected(
        &reject::<DeviceThreatReport>(b"hello"),
        RejectReason::Undecodable,
        &["unknown encoding", "0x68"],
    );
    assert_rejected(
        &reject::<DeviceThreatReport>(b"  \n"),
        RejectReason::Undecodable,
        &["blank"],
    );
    assert_rejected(
        &reject::<DeviceThreatReport>(&[0, 0, 0]),
        RejectReason::Undecodable,
        &["Confluent header"],
    );
    assert_rejected(
        &reject::<DeviceThreatReport>(&[0xC3, 0x01, 1, 2]),
        RejectReason::Undecodable,
        &["single-object header"],
    );
    assert_rejected(
        &reject::<DeviceThreatReport>(&[0xC3, 0x02]),
        RejectReason::Undecodable,
        &["0xc3"],
    );
}

#[test]
fn rejects_trailing_bytes() {
    let mut so = encoded(&report(), OutputEncoding::Avro);
    so.push(0);
    assert_rejected(
        &reject::<DeviceThreatReport>(&so),
        RejectReason::Undecodable,
        &["1 trailing byte"],
    );
    let mut js = encoded(&report(), OutputEncoding::Json);
    js.extend_from_slice(b" {}");
    assert_rejected(
        &reject::<DeviceThreatReport>(&js),
        RejectReason::Undecodable,
        &["JSON", "trailing"],
    );
    // Trailing whitespace is fine in JSON.
    let mut js = encoded(&report(), OutputEncoding::Json);
    js.extend_from_slice(b" \n");
    assert!(decode::<DeviceThreatReport>(&js).is_ok());
}

#[test]
fn rejects_unknown_enum_symbols_with_the_field_path() {
    let d = report_head(b"dev")
        .long(3)
        .str("c")
        .str("n")
        .long(0)
        .str("c")
        .str("n")
        .long(1)
        .str("c")
        .str("n")
        .long(9)
        .long(0)
        .long(42);
    let e = reject::<DeviceThreatReport>(&so_report(d));
    assert_rejected(
        &e,
        RejectReason::InvalidField,
        &["threats[2].severity: enum index 9 out of range (4 symbols)"],
    );
    let d = Datum::default()
        .str("t")
        .str("p")
        .long(0)
        .long(-1) // platform index -1
        .long(0)
        .long(0)
        .long(0)
        .long(0)
        .long(0);
    let e = reject::<ThreatPolicy>(&single_object::<ThreatPolicy>(&d.0));
    assert_rejected(
        &e,
        RejectReason::InvalidField,
        &["platform: enum index -1 out of range"],
    );

    let js =
        br#"{"event_id":"e","tenant_id":"t","partner_id":"p","device_id":"d","platform":"PALM",
        "management":"MDM","health_state":"HIGH","observed_at":1}"#;
    let e = reject::<DeviceThreatReport>(js);
    assert_rejected(
        &e,
        RejectReason::InvalidField,
        &["platform", "unknown variant `PALM`"],
    );
    let js = br#"{"event_id":"e","tenant_id":"t","partner_id":"p","device_id":"d","platform":"IOS",
        "management":"MDM","health_state":"HIGH","observed_at":1,
        "threats":[{"category":"c","name":"n","severity":"LOW"},{"category":"c","name":"n","severity":"low"}]}"#;
    let e = reject::<DeviceThreatReport>(js);
    assert_rejected(
        &e,
        RejectReason::InvalidField,
        &["threats[1].severity", "unknown variant `low`"],
    );
}

#[test]
fn rejects_wrong_json_types_and_missing_fields() {
    let js = br#"{"event_id":5,"tenant_id":"t","partner_id":"p","device_id":"d","platform":"IOS",
        "management":"MDM","health_state":"HIGH","observed_at":1}"#;
    assert_rejected(
        &reject::<DeviceThreatReport>(js),
        RejectReason::InvalidField,
        &["event_id", "invalid type"],
    );
    let js = br#"{"event_id":"e","tenant_id":"t","partner_id":"p","device_id":"d","platform":"IOS",
        "management":"MDM","health_state":"HIGH","observed_at":"yesterday"}"#;
    assert_rejected(
        &reject::<DeviceThreatReport>(js),
        RejectReason::InvalidField,
        &["observed_at"],
    );
    let js = br#"{"event_id":"e","tenant_id":"t","partner_id":"p","device_id":"d","platform":"IOS",
        "management":"MDM","health_state":"HIGH"}"#;
    assert_rejected(
        &reject::<DeviceThreatReport>(js),
        RejectReason::InvalidField,
        &["missing field `observed_at`"],
    );
    let js = br#"{"tenant_id":"t","partner_id":"p","updated_at":1,"unresponsive_threshold_days":3000000000}"#;
    assert_rejected(
        &reject::<ConnectorConfig>(js),
        RejectReason::InvalidField,
        &["unresponsive_threshold_days"],
    );
    let js = br#"{"tenant_id":"t","partner_id":"p","sent_at":1,"min_os_versions":{"IOS":17}}"#;
    assert_rejected(
        &reject::<ConnectorHeartbeat>(js),
        RejectReason::InvalidField,
        &["min_os_versions.IOS"],
    );
    // Syntax errors are undecodable.
    assert_rejected(
        &reject::<DeviceThreatReport>(b"{\"event_id\":"),
        RejectReason::Undecodable,
        &["JSON"],
    );
    assert_rejected(
        &reject::<DeviceThreatReport>(b"{\"event_id\" 1}"),
        RejectReason::Undecodable,
        &["JSON"],
    );
    assert_rejected(
        &reject::<DeviceThreatReport>(b"{\"event_id\":\"\xff\xfe\"}"),
        RejectReason::Undecodable,
        &["JSON"],
    );
}

#[test]
fn rejects_huge_lengths_fast_without_allocating() {
    let started = Instant::now();
    for count in [i64::MAX, i64::MAX / 2, 1 << 40, 1_000_000] {
        let d = report_head(b"dev").long(count).str("c");
        let e = reject::<DeviceThreatReport>(&so_report(d));
        assert_rejected(&e, RejectReason::Undecodable, &["threats", "cannot fit"]);
    }
    // Negative block count (with a byte size) of i64::MIN.
    let d = report_head(b"dev").long(i64::MIN).long(1).raw(&[0]);
    assert_eq!(
        reject::<DeviceThreatReport>(&so_report(d)).reason(),
        RejectReason::Undecodable
    );
    // A string length far beyond the input.
    let d = Datum::default().long(i64::MAX);
    let e = reject::<DeviceThreatReport>(&so_report(d));
    assert_rejected(&e, RejectReason::Undecodable, &["event_id", "truncated"]);
    let d = Datum::default().long(-7);
    let e = reject::<DeviceThreatReport>(&so_report(d));
    assert_rejected(&e, RejectReason::Undecodable, &["event_id", "negative"]);
    // A map with a huge count.
    let d = Datum::default()
        .str("t")
        .str("p")
        .long(1)
        .long(0)
        .long(1)
        .long(1 << 50)
        .str("IOS");
    let e = reject::<ConnectorHeartbeat>(&single_object::<ConnectorHeartbeat>(&d.0));
    assert_rejected(
        &e,
        RejectReason::Undecodable,
        &["min_os_versions", "cannot fit"],
    );
    // Long varint overflow.
    let d = report_head(b"dev").long(0).raw(&[0xff; 11]);
    let e = reject::<DeviceThreatReport>(&so_report(d));
    assert_rejected(&e, RejectReason::Undecodable, &["observed_at", "overflow"]);
    assert!(started.elapsed().as_secs() < 5);
}

#[test]
fn rejects_invalid_utf8_bad_booleans_and_union_indexes() {
    let d = report_head(&[b'd', 0xff, 0xfe]).long(0).long(1);
    let e = reject::<DeviceThreatReport>(&so_report(d));
    assert_rejected(&e, RejectReason::Undecodable, &["device_id: invalid UTF-8"]);

    let mut d = Datum::default().str("t").str("p").raw(&[1, 2]);
    for _ in 0..14 {
        d = d.raw(&[0]);
    }
    let d = d.long(1).long(1).long(1);
    let e = reject::<ConnectorConfig>(&single_object::<ConnectorConfig>(&d.0));
    assert_rejected(
        &e,
        RejectReason::Undecodable,
        &["setup_complete: invalid boolean byte 0x02"],
    );

    let d = Datum::default().str("e").str("t").str("p").str("d").long(2); // user_id: union index 2 of 2
    let e = reject::<DeviceThreatReport>(&so_report(d));
    assert_rejected(
        &e,
        RejectReason::Undecodable,
        &["user_id: union branch index 2"],
    );

    // error_code is an int: a long beyond i32 is malformed.
    let d = Datum::default()
        .str("t")
        .str("p")
        .long(1)
        .long(1)
        .long(1 << 40)
        .long(0);
    let e = reject::<ConnectorHeartbeat>(&single_object::<ConnectorHeartbeat>(&d.0));
    assert_rejected(
        &e,
        RejectReason::Undecodable,
        &["error_code", "out of range"],
    );
}

// ---------------------------------------------------------------------------------------------
// Schema resolution of other writer schemas

/// A report as an older producer wrote it: no `os_version`, and an `extra` field since dropped.
#[derive(Serialize)]
struct OldReport {
    event_id: String,
    tenant_id: String,
    partner_id: String,
    device_id: String,
    user_id: Option<String>,
    platform: Platform,
    management: Management,
    ownership: Option<Ownership>,
    health_state: HealthState,
    threats: Vec<Threat>,
    observed_at: i64,
    extra: String,
}

const OLD_REPORT_SCHEMA: &str = r#"{"type":"record","name":"DeviceThreatReport","namespace":"io.mtdgate.v1","fields":[
  {"name":"event_id","type":"string"},
  {"name":"tenant_id","type":"string"},
  {"name":"partner_id","type":"string"},
  {"name":"device_id","type":"string"},
  {"name":"user_id","type":["null","string"],"default":null},
  {"name":"platform","type":{"type":"enum","name":"Platform","symbols":["ANDROID","IOS","WINDOWS","MACOS"]}},
  {"name":"management","type":{"type":"enum","name":"Management","symbols":["MDM","MAM"]}},
  {"name":"ownership","type":["null",{"type":"enum","name":"Ownership","symbols":["CORPORATE","PERSONAL","UNKNOWN"]}],"default":null},
  {"name":"health_state","type":{"type":"enum","name":"HealthState","symbols":["UNKNOWN","ACTIVATED","DEACTIVATED","SECURED","LOW","MEDIUM","HIGH","UNRESPONSIVE","COMPROMISED","MISCONFIGURED"]}},
  {"name":"threats","type":{"type":"array","items":{"type":"record","name":"Threat","fields":[
     {"name":"category","type":"string"},{"name":"name","type":"string"},
     {"name":"severity","type":{"type":"enum","name":"ThreatSeverity","symbols":["LOW","MEDIUM","HIGH","CRITICAL"]}}]}},"default":[]},
  {"name":"observed_at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"extra","type":"string","default":""}]}"#;

struct Registry(BTreeMap<u32, Arc<Schema>>, BTreeMap<u64, Arc<Schema>>);

impl SchemaResolver for Registry {
    fn resolve(&self, id: u32) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(self.0.get(&id).cloned())
    }
    fn resolve_fingerprint(&self, fingerprint: u64) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(self.1.get(&fingerprint).cloned())
    }
}

struct NoSchemas;

impl SchemaResolver for NoSchemas {
    fn resolve(&self, _id: u32) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(None)
    }
}

fn old_report() -> OldReport {
    let r = report();
    OldReport {
        event_id: r.event_id,
        tenant_id: r.tenant_id,
        partner_id: r.partner_id,
        device_id: r.device_id,
        user_id: r.user_id,
        platform: r.platform,
        management: r.management,
        ownership: r.ownership,
        health_state: r.health_state,
        threats: r.threats,
        observed_at: r.observed_at,
        extra: "dropped".into(),
    }
}

fn registry() -> (Decoder, u64) {
    let old = Arc::new(Schema::parse_str(OLD_REPORT_SCHEMA).unwrap());
    let old_fp = codec::crc64_avro(
        codec::canonical::canonical_form_of_str(OLD_REPORT_SCHEMA)
            .unwrap()
            .as_bytes(),
    );
    let current = Arc::new(DeviceThreatReport::schema_entry().schema().clone());
    let heartbeat = Arc::new(ConnectorHeartbeat::schema_entry().schema().clone());
    let incompatible = Arc::new(
        Schema::parse_str(
            r#"{"type":"record","name":"DeviceThreatReport","namespace":"io.mtdgate.v1",
               "fields":[{"name":"event_id","type":"int"}]}"#,
        )
        .unwrap(),
    );
    let by_id = BTreeMap::from([
        (77, old.clone()),
        (78, current),
        (79, heartbeat),
        (80, incompatible),
        (1001, old.clone()),
    ]);
    let by_fp = BTreeMap::from([(old_fp, old)]);
    (
        Decoder::with_resolver(Arc::new(Registry(by_id, by_fp)), 100),
        old_fp,
    )
}

fn old_datum() -> Vec<u8> {
    init();
    let old = Schema::parse_str(OLD_REPORT_SCHEMA).unwrap();
    apache_avro::to_avro_datum(&old, apache_avro::to_value(old_report()).unwrap()).unwrap()
}

#[test]
fn resolves_an_older_writer_schema() {
    let (decoder, old_fp) = registry();
    let bytes = old_datum();
    let expected = DeviceThreatReport {
        os_version: None,
        ..report()
    };
    // Confluent id of the registry.
    let got: DeviceThreatReport = decoder.decode(&confluent(77, &bytes)).unwrap();
    assert_eq!(got, expected);
    // The registry's ids replace those of ids.toml.
    let got: DeviceThreatReport = decoder.decode(&confluent(1001, &bytes)).unwrap();
    assert_eq!(got, expected);
    // Single-object with the older schema's fingerprint.
    let mut so = vec![0xC3, 0x01];
    so.extend_from_slice(&old_fp.to_le_bytes());
    so.extend_from_slice(&bytes);
    assert_eq!(decoder.decode::<DeviceThreatReport>(&so).unwrap(), expected);
    // Without the registry, neither is known (1001 then is the current schema, and the old
    // bytes do not fit it).
    assert_eq!(
        decode::<DeviceThreatReport>(&so).unwrap_err().reason(),
        RejectReason::UnknownSchema
    );
    assert_eq!(
        decode::<DeviceThreatReport>(&confluent(77, &bytes))
            .unwrap_err()
            .reason(),
        RejectReason::UnknownSchema
    );
    assert!(decode::<DeviceThreatReport>(&confluent(1001, &bytes)).is_err());
    // Repeated use hits the cache.
    for _ in 0..3 {
        assert_eq!(
            decoder
                .decode::<DeviceThreatReport>(&confluent(77, &bytes))
                .unwrap(),
            expected
        );
    }
    // Broken data under the older schema is rejected with a path, before resolution.
    let e = decoder
        .decode::<DeviceThreatReport>(&confluent(77, &bytes[..bytes.len() - 3]))
        .unwrap_err();
    assert_eq!(e.reason(), RejectReason::Undecodable, "{e}");
    let mut long = confluent(77, &bytes);
    long.push(1);
    assert_eq!(
        decoder
            .decode::<DeviceThreatReport>(&long)
            .unwrap_err()
            .reason(),
        RejectReason::Undecodable
    );
}

#[test]
fn registry_schemas_of_the_current_version_other_records_and_incompatible_versions() {
    let (decoder, _) = registry();
    let d = datum(&report());
    assert_eq!(
        decoder
            .decode::<DeviceThreatReport>(&confluent(78, &d))
            .unwrap(),
        report()
    );
    let e = decoder
        .decode::<DeviceThreatReport>(&confluent(79, &d))
        .unwrap_err();
    assert_rejected(
        &e,
        RejectReason::UnknownSchema,
        &[
            "schema id 79",
            "ConnectorHeartbeat",
            "expected io.mtdgate.v1.DeviceThreatReport",
        ],
    );
    let e = decoder
        .decode::<DeviceThreatReport>(&confluent(80, &[2]))
        .unwrap_err();
    assert_rejected(
        &e,
        RejectReason::UnknownSchema,
        &["schema id 80", "cannot be read"],
    );
    let e = decoder
        .decode::<DeviceThreatReport>(&confluent(81, &d))
        .unwrap_err();
    assert_rejected(&e, RejectReason::UnknownSchema, &["81"]);
    // With a registry, ids.toml no longer answers (its ids could be any schema there).
    let hb = encoded(&heartbeat(), OutputEncoding::AvroConfluent);
    let e = decoder.decode::<ConnectorHeartbeat>(&hb).unwrap_err();
    assert_rejected(
        &e,
        RejectReason::UnknownSchema,
        &["not in the schema registry"],
    );
    // An id primed with the registry's answer for an embedded schema takes the fast path.
    let id = u32::from_be_bytes(hb[1..5].try_into().unwrap());
    decoder.prime(id, ConnectorHeartbeat::schema_entry());
    assert_eq!(
        decoder.decode::<ConnectorHeartbeat>(&hb).unwrap(),
        heartbeat()
    );
}

/// A registry that cannot be reached: decoding says wait, never a rejection reason of the
/// record's own, and asks again next time.
#[test]
fn an_unreachable_registry_means_wait() {
    struct Down(std::sync::atomic::AtomicUsize);
    impl SchemaResolver for Down {
        fn resolve(&self, _id: u32) -> Result<Option<Arc<Schema>>, ResolveError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(ResolveError::Unavailable("connection refused".into()))
        }
    }
    let down = Arc::new(Down(Default::default()));
    let d = Decoder::with_resolver(down.clone(), 10);
    let cf = encoded(&report(), OutputEncoding::AvroConfluent);
    for _ in 0..2 {
        let e = d.decode::<DeviceThreatReport>(&cf).unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(d.prefetch(&cf).unwrap_err().is_unavailable());
        let mut place = report();
        assert!(d.decode_into(&cf, &mut place).unwrap_err().is_unavailable());
    }
    assert_eq!(down.0.load(std::sync::atomic::Ordering::SeqCst), 6);
    // Values that need no registry decode as before.
    let so = encoded(&report(), OutputEncoding::Avro);
    assert_eq!(d.decode::<DeviceThreatReport>(&so).unwrap(), report());
    d.prefetch(&so).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Output encoding

#[test]
fn output_encoding_names() {
    for enc in [
        OutputEncoding::Json,
        OutputEncoding::Avro,
        OutputEncoding::AvroConfluent,
    ] {
        assert_eq!(enc.as_str().parse::<OutputEncoding>().unwrap(), enc);
        assert_eq!(enc.to_string(), enc.as_str());
    }
    assert!("xml".parse::<OutputEncoding>().is_err());
    #[derive(Deserialize)]
    struct Cfg {
        enc: OutputEncoding,
    }
    let c: Cfg = serde_json::from_str(r#"{"enc":"avro-confluent"}"#).unwrap();
    assert_eq!(c.enc, OutputEncoding::AvroConfluent);
}

/// A struct claiming the DeviceThreatReport schema, with its fields out of order.
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Misordered {
    tenant_id: String,
    event_id: String,
}

impl AvroRecord for Misordered {
    const SCHEMA_NAME: &'static str = "DeviceThreatReport";
    const SCHEMA_INDEX: usize = DeviceThreatReport::SCHEMA_INDEX;
}

/// A reader interested in a few fields of DeviceThreatReport only.
#[derive(Deserialize, Debug, PartialEq)]
struct Partial {
    device_id: String,
    health_state: HealthState,
    observed_at: i64,
}

impl AvroRecord for Partial {
    const SCHEMA_NAME: &'static str = "DeviceThreatReport";
    const SCHEMA_INDEX: usize = DeviceThreatReport::SCHEMA_INDEX;
}

#[test]
fn encoding_checks_field_names_and_order() {
    let v = Misordered {
        tenant_id: "t".into(),
        event_id: "e".into(),
    };
    let mut buf = b"keep".to_vec();
    let e = encode(&v, OutputEncoding::Avro, &mut buf).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("field `tenant_id` written where record io.mtdgate.v1.DeviceThreatReport expects `event_id`"),
        "{msg}"
    );
    assert_eq!(buf, b"keep", "nothing appended on error");
    assert!(codec::encode_avro_datum(&v, &mut buf).is_err());
    assert_eq!(buf, b"keep");
    // JSON has no schema to check against.
    encode(&v, OutputEncoding::Json, &mut buf).unwrap();
}

#[test]
fn readers_skip_fields_they_do_not_know() {
    let r = report();
    for enc in [
        OutputEncoding::Avro,
        OutputEncoding::AvroConfluent,
        OutputEncoding::Json,
    ] {
        let p: Partial = decode(&encoded(&r, enc)).unwrap();
        assert_eq!(
            p,
            Partial {
                device_id: r.device_id.clone(),
                health_state: r.health_state,
                observed_at: r.observed_at,
            }
        );
    }
}

#[test]
fn decode_speed_report() {
    // Not an assertion: prints the per-record cost (meaningful with --release), best of 5 rounds,
    // next to the cost of cloning the record (the same allocations, no decoding).
    let so = encoded(&report(), OutputEncoding::Avro);
    let js = encoded(&report(), OutputEncoding::Json);
    let n = if cfg!(debug_assertions) {
        1_000
    } else {
        100_000
    };
    let time = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    f();
                }
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let r = report();
    let clone = time(&mut || {
        std::hint::black_box(std::hint::black_box(&r).clone());
    });
    let avro = time(&mut || {
        std::hint::black_box(decode::<DeviceThreatReport>(std::hint::black_box(&so)).unwrap());
    });
    let json = time(&mut || {
        std::hint::black_box(decode::<DeviceThreatReport>(std::hint::black_box(&js)).unwrap());
    });
    let mut buf = Vec::with_capacity(256);
    let enc = time(&mut || {
        buf.clear();
        encode(std::hint::black_box(&r), OutputEncoding::Avro, &mut buf).unwrap();
        std::hint::black_box(&buf);
    });
    println!(
        "DeviceThreatReport ({} B single-object Avro): decode Avro {avro:.0} ns/record, \
         decode JSON {json:.0} ns, encode Avro {enc:.0} ns (clone: {clone:.0} ns)",
        so.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9._/-]{0,12}",
        1 => "\\PC{0,8}",
    ]
}

fn sym<T: Copy + Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(all)
}

prop_compose! {
    fn threat()(category in text(), name in text(), severity in sym(ThreatSeverity::ALL)) -> Threat {
        Threat { category, name, severity }
    }
}

prop_compose! {
    fn any_report()(
        ids in (text(), text(), text(), text()),
        user_id in prop::option::of(text()),
        platform in sym(Platform::ALL),
        management in sym(Management::ALL),
        ownership in prop::option::of(sym(Ownership::ALL)),
        os_version in prop::option::of(text()),
        health_state in sym(HealthState::ALL),
        threats in prop::collection::vec(threat(), 0..4),
        observed_at in any::<i64>(),
    ) -> DeviceThreatReport {
        DeviceThreatReport {
            event_id: ids.0, tenant_id: ids.1, partner_id: ids.2, device_id: ids.3, user_id,
            platform, management, ownership, os_version, health_state, threats, observed_at,
        }
    }
}

prop_compose! {
    fn any_heartbeat()(
        tenant_id in text(), partner_id in text(), sent_at in any::<i64>(),
        error_code in prop::option::of(any::<i32>()),
        min_os_versions in prop::option::of(prop::collection::btree_map(text(), text(), 0..4)),
    ) -> ConnectorHeartbeat {
        ConnectorHeartbeat { tenant_id, partner_id, sent_at, error_code, min_os_versions }
    }
}

prop_compose! {
    fn any_connector()(
        tenant_id in text(), partner_id in text(),
        flags in prop::array::uniform16(any::<bool>()),
        heartbeat_timeout_seconds in any::<i64>(),
        unresponsive_threshold_days in any::<i32>(),
        updated_at in any::<i64>(),
    ) -> ConnectorConfig {
        ConnectorConfig {
            tenant_id, partner_id,
            provisioned: flags[0], setup_complete: flags[1], android_enabled: flags[2],
            ios_enabled: flags[3], windows_enabled: flags[4], macos_enabled: flags[5],
            android_mam_enabled: flags[6], ios_mam_enabled: flags[7], windows_mam_enabled: flags[8],
            android_blocked_on_missing_data: flags[9], ios_blocked_on_missing_data: flags[10],
            windows_blocked_on_missing_data: flags[11], macos_blocked_on_missing_data: flags[12],
            ios_app_sync: flags[13], ios_app_sync_personal_full: flags[14],
            unsupported_os_blocked: flags[15],
            heartbeat_timeout_seconds, unresponsive_threshold_days, updated_at,
        }
    }
}

prop_compose! {
    fn any_policy()(
        ids in (text(), text()), kind in sym(PolicyKind::ALL),
        platform in sym(Platform::ALL), max_level in sym(PolicyLevel::ALL),
        action in prop::option::of(sym(PolicyAction::ALL)),
        partner_priority in prop::option::of(sym(PartnerPriority::ALL)),
        updated_at in any::<i64>(),
        include_groups in prop::option::of(prop::collection::vec(text(), 0..3)),
        exclude_groups in prop::collection::vec(text(), 0..3),
        defender_max_level in prop::option::of(sym(PolicyLevel::ALL)),
        block_on_missing_data in any::<bool>(),
        grace_period_hours in prop_oneof![0..=8760, any::<i32>()],
    ) -> ThreatPolicy {
        ThreatPolicy {
            tenant_id: ids.0, policy_id: ids.1, kind, platform, max_level, action,
            partner_priority, updated_at, include_groups, exclude_groups, defender_max_level,
            block_on_missing_data, grace_period_hours,
        }
    }
}

prop_compose! {
    fn any_membership()(
        tenant_id in text(), user_id in text(), groups in prop::collection::vec(text(), 0..4),
        updated_at in any::<i64>(),
    ) -> GroupMembership {
        GroupMembership { tenant_id, user_id, groups, updated_at }
    }
}

prop_compose! {
    fn any_settings()(
        tenant_id in text(), no_policy_state in sym(NoPolicyState::ALL),
        report_validity_days in prop::option::of(any::<i32>()), updated_at in any::<i64>(),
    ) -> TenantSettings {
        TenantSettings { tenant_id, no_policy_state, report_validity_days, updated_at }
    }
}

prop_compose! {
    fn any_enrollment()(
        ids in (text(), text(), text()), platform in sym(Platform::ALL),
        management in sym(Management::ALL), ownership in sym(Ownership::ALL),
        os_version in prop::option::of(text()), enrolled_at in any::<i64>(),
    ) -> DeviceEnrollment {
        DeviceEnrollment {
            tenant_id: ids.0, device_id: ids.1, user_id: ids.2, platform, management, ownership,
            os_version, enrolled_at,
        }
    }
}

prop_compose! {
    fn any_app()(
        s in (text(), text(), text(), text()), sizes in (any::<i64>(), any::<i64>()),
        f in prop::array::uniform6(any::<bool>()),
    ) -> AppInfo {
        AppInfo {
            app_id: s.0, version: s.1, short_version: s.2, name: s.3,
            bundle_size: sizes.0, dynamic_size: sizes.1,
            ad_hoc_signed: f[0], from_app_store: f[1], beta: f[2], device_vpp: f[3],
            validated: f[4], managed: f[5],
        }
    }
}

prop_compose! {
    fn any_inventory()(
        tenant_id in text(), device_id in text(), ownership in sym(Ownership::ALL),
        collected_at in any::<i64>(), apps in prop::collection::vec(any_app(), 0..3),
    ) -> AppInventory {
        AppInventory { tenant_id, device_id, ownership, collected_at, apps }
    }
}

prop_compose! {
    fn any_reason()(
        partner_id in text(), code in sym(ReasonCode::ALL), detail in text(),
        threats in prop::collection::vec(threat(), 0..4),
    ) -> Reason {
        Reason { partner_id, code, detail, threats }
    }
}

prop_compose! {
    fn any_change()(
        ids in (text(), text(), text(), text()), user_id in prop::option::of(text()),
        platform in sym(Platform::ALL), previous in sym(ComplianceState::ALL),
        current in sym(ComplianceState::ALL), reasons in prop::collection::vec(any_reason(), 0..3),
        worst_level in prop::option::of(sym(ThreatLevel::ALL)), evaluated_at in any::<i64>(),
        grace_ends_at in prop::option::of(any::<i64>()),
    ) -> ComplianceChange {
        ComplianceChange {
            change_id: ids.0, tenant_id: ids.1, device_id: ids.2, user_id, platform, previous,
            current, reasons, worst_level, evaluated_at, cause_event_id: ids.3, grace_ends_at,
        }
    }
}

prop_compose! {
    fn any_action()(
        ids in (text(), text(), text(), text(), text(), text()), user_id in prop::option::of(text()),
        platform in sym(Platform::ALL), action in sym(AppAction::ALL),
        level in prop::option::of(sym(ThreatLevel::ALL)),
        max_allowed_level in prop::option::of(sym(ThreatLevel::ALL)), issued_at in any::<i64>(),
        threats in prop::collection::vec(threat(), 0..4),
    ) -> AppProtectionAction {
        AppProtectionAction {
            action_id: ids.0, tenant_id: ids.1, device_id: ids.2, user_id, platform,
            partner_id: ids.3, action, level, max_allowed_level, policy_id: ids.4, issued_at,
            cause_event_id: ids.5, threats,
        }
    }
}

prop_compose! {
    fn any_status()(
        tenant_id in text(), partner_id in text(), previous in sym(ConnectorStatus::ALL),
        current in sym(ConnectorStatus::ALL), compliance_ignored in any::<bool>(),
        last_heartbeat_at in prop::option::of(any::<i64>()), changed_at in any::<i64>(),
        reason in text(),
    ) -> ConnectorStatusChange {
        ConnectorStatusChange {
            tenant_id, partner_id, previous, current, compliance_ignored, last_heartbeat_at,
            changed_at, reason,
        }
    }
}

prop_compose! {
    fn any_partner_inventory()(
        ids in (text(), text(), text()), ownership in sym(Ownership::ALL),
        collected_at in any::<i64>(), apps in prop::collection::vec(any_app(), 0..3),
        unmanaged_apps_removed in any::<i32>(),
    ) -> PartnerAppInventory {
        PartnerAppInventory {
            tenant_id: ids.0, partner_id: ids.1, device_id: ids.2, ownership, collected_at, apps,
            unmanaged_apps_removed,
        }
    }
}

prop_compose! {
    fn any_rejected()(
        source_topic in text(), partition in any::<i32>(), offset in any::<i64>(),
        key in prop::option::of(text()), reason in sym(RejectReason::ALL), detail in text(),
        raw in prop::collection::vec(any::<u8>(), 0..40), rejected_at in any::<i64>(),
    ) -> RejectedEvent {
        RejectedEvent { source_topic, partition, offset, key, reason, detail, raw, rejected_at }
    }
}

prop_compose! {
    fn any_observation()(
        partner_id in text(), health_state in sym(HealthState::ALL), observed_at in any::<i64>(),
        event_fingerprint in any::<i32>(), threats in prop::collection::vec(threat(), 0..4),
        earlier_event_fingerprints in prop::collection::vec(any::<i32>(), 0..3),
    ) -> PartnerObservation {
        PartnerObservation {
            partner_id, health_state, observed_at, event_fingerprint, threats,
            earlier_event_fingerprints,
        }
    }
}

prop_compose! {
    fn any_grace()(policy_id in text(), failing_since in any::<i64>()) -> PolicyGrace {
        PolicyGrace { policy_id, failing_since }
    }
}

prop_compose! {
    fn any_state()(
        ids in (text(), text()), user_id in prop::option::of(text()),
        platform in sym(Platform::ALL), management in sym(Management::ALL),
        ownership in prop::option::of(sym(Ownership::ALL)), os_version in prop::option::of(text()),
        flags in prop::array::uniform3(any::<bool>()), compliance in sym(ComplianceState::ALL),
        output_seq in any::<i64>(), partners in prop::collection::vec(any_observation(), 0..3),
        graces in prop::collection::vec(any_grace(), 0..3),
    ) -> DeviceStateRecord {
        DeviceStateRecord {
            tenant_id: ids.0, device_id: ids.1, user_id, platform, management, ownership,
            os_version, enrolled: flags[0], compliance, mam_blocked: flags[1],
            mam_wipe_incident: flags[2], output_seq, partners, graces,
        }
    }
}

/// Round trip through every encoding, and through apache-avro's reader.
fn round_trip<T: Record>(v: &T) -> Result<(), TestCaseError> {
    init();
    for enc in [
        OutputEncoding::Avro,
        OutputEncoding::AvroConfluent,
        OutputEncoding::Json,
    ] {
        let bytes = encoded(v, enc);
        prop_assert_eq!(&decode::<T>(&bytes).unwrap(), v);
    }
    let d = datum(v);
    let value =
        apache_avro::from_avro_datum(T::schema_entry().schema(), &mut &d[..], None).unwrap();
    prop_assert_eq!(&apache_avro::from_value::<T>(&value).unwrap(), v);
    Ok(())
}

/// Decoding into a value that holds an earlier record (the hot path reuses one) gives exactly
/// what a fresh decode gives, in every encoding, with nothing of the earlier record left over.
fn in_place_matches_fresh<T: Record>(earlier: &T, v: &T) -> Result<(), TestCaseError> {
    init();
    for enc in [
        OutputEncoding::Avro,
        OutputEncoding::AvroConfluent,
        OutputEncoding::Json,
    ] {
        let mut place = earlier.clone();
        codec::decode_into(&encoded(v, enc), &mut place).unwrap();
        prop_assert_eq!(&place, v);
    }
    Ok(())
}

/// Feeding `bytes` to the decoder of every record type never panics.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<DeviceThreatReport>(bytes);
    let _ = decode::<ConnectorHeartbeat>(bytes);
    let _ = decode::<ConnectorConfig>(bytes);
    let _ = decode::<ThreatPolicy>(bytes);
    let _ = decode::<DeviceEnrollment>(bytes);
    let _ = decode::<AppInventory>(bytes);
    let _ = decode::<ComplianceChange>(bytes);
    let _ = decode::<AppProtectionAction>(bytes);
    let _ = decode::<ConnectorStatusChange>(bytes);
    let _ = decode::<PartnerAppInventory>(bytes);
    let _ = decode::<RejectedEvent>(bytes);
    let _ = decode::<DeviceStateRecord>(bytes);
    let _ = decode::<GroupMembership>(bytes);
    let _ = decode::<TenantSettings>(bytes);
}

/// Every framing prefix a valid record could carry.
fn prefixes() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in codec::schema_set().entries() {
        let mut so = vec![0xC3, 0x01];
        so.extend_from_slice(&e.fingerprint_bytes());
        out.push(so);
        let mut cf = vec![0x00];
        cf.extend_from_slice(&e.confluent_id().to_be_bytes());
        out.push(cf);
    }
    out.push(b"{".to_vec());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_prefix_never_panic(
        which in any::<prop::sample::Index>(),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let prefixes = prefixes();
        let mut bytes = which.get(&prefixes).clone();
        bytes.extend_from_slice(&body);
        decode_all(&bytes);
    }

    #[test]
    fn mutated_valid_records_never_panic(
        v in any_report(),
        enc in sym(&[OutputEncoding::Avro, OutputEncoding::AvroConfluent, OutputEncoding::Json]),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(&v, enc);
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        decode_all(&bytes);
        let n = cut.index(bytes.len() + 1);
        decode_all(&bytes[..n]);
    }

    #[test]
    fn reports_round_trip(v in any_report()) { round_trip(&v)?; }

    #[test]
    fn reports_decode_in_place(earlier in any_report(), v in any_report()) {
        in_place_matches_fresh(&earlier, &v)?;
    }

    #[test]
    fn state_records_decode_in_place(earlier in any_state(), v in any_state()) {
        in_place_matches_fresh(&earlier, &v)?;
    }

    #[test]
    fn heartbeats_round_trip(v in any_heartbeat()) { round_trip(&v)?; }

    #[test]
    fn connectors_round_trip(v in any_connector()) { round_trip(&v)?; }

    #[test]
    fn policies_round_trip(v in any_policy()) { round_trip(&v)?; }

    #[test]
    fn enrollments_round_trip(v in any_enrollment()) { round_trip(&v)?; }

    #[test]
    fn inventories_round_trip(v in any_inventory()) { round_trip(&v)?; }

    #[test]
    fn compliance_changes_round_trip(v in any_change()) { round_trip(&v)?; }

    #[test]
    fn actions_round_trip(v in any_action()) { round_trip(&v)?; }

    #[test]
    fn status_changes_round_trip(v in any_status()) { round_trip(&v)?; }

    #[test]
    fn partner_inventories_round_trip(v in any_partner_inventory()) { round_trip(&v)?; }

    #[test]
    fn rejections_round_trip(v in any_rejected()) { round_trip(&v)?; }

    #[test]
    fn device_states_round_trip(v in any_state()) { round_trip(&v)?; }

    #[test]
    fn memberships_round_trip(v in any_membership()) { round_trip(&v)?; }

    #[test]
    fn tenant_settings_round_trip(v in any_settings()) { round_trip(&v)?; }

    #[test]
    fn policies_decode_in_place(earlier in any_policy(), v in any_policy()) {
        in_place_matches_fresh(&earlier, &v)?;
    }
}
