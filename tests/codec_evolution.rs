//! Schema evolution, contract 1.0 -> 1.1: values of the 1.0 schemas (`schemas/history/1.0/`),
//! in JSON, single-object with the 1.0 fingerprints and Confluent-framed with the 1.0 ids, decode
//! into the 1.1 model with the new fields at their defaults, with no registry configured; 1.1
//! values round-trip; 1.1 outputs stay readable by a 1.0 reader; a writer newer than 1.1 is read
//! through a resolver (new fields skipped, new enum symbols read as the enum's default); and the
//! model's serde defaults are the schemas' Avro defaults, record by record. Contract 1.1 part 2
//! (grace periods: `ThreatPolicy.grace_period_hours`, `ComplianceChange.grace_ends_at`,
//! `DeviceStateRecord.graces`, `ComplianceState` `IN_GRACE_PERIOD` with default `UNKNOWN`)
//! amended the unreleased 1.1 schemas in place, with the same ids.

#[path = "support/wire.rs"]
#[allow(dead_code)]
mod wire;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Once};

use apache_avro::types::Value;
use apache_avro::{rabin::Rabin, Schema};
use mtdgate::codec::{
    self, decode, AvroRecord, DecodeError, Decoder, OutputEncoding, ResolveError, SchemaResolver,
};
use mtdgate::model::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wire::*;

fn init() {
    static ONCE: Once = Once::new();
    // apache-avro's serde bridge is human readable by default, which would turn
    // `RejectedEvent.raw` into base64 text; the model's binary form is `bytes`.
    ONCE.call_once(|| apache_avro::set_serde_human_readable(false));
}

trait Record: AvroRecord + Serialize + DeserializeOwned + PartialEq + Debug + Clone {}
impl<T: AvroRecord + Serialize + DeserializeOwned + PartialEq + Debug + Clone> Record for T {}

/// The 1.0 schema text of `name`, as shipped.
fn v10_source(name: &str) -> &'static str {
    codec::schemas::HISTORY_SOURCES
        .iter()
        .find(|(v, n, _)| *v == "1.0" && *n == name)
        .unwrap_or_else(|| panic!("no 1.0 schema of {name}"))
        .2
}

fn v10_schema<T: AvroRecord>() -> Schema {
    Schema::parse_str(v10_source(T::SCHEMA_NAME)).unwrap()
}

/// The Confluent ids the 1.0 records were written under (contract 1.0's `schemas/ids.toml`).
fn v10_id<T: AvroRecord>() -> u32 {
    match T::SCHEMA_NAME {
        "ThreatPolicy" => 1004,
        "ComplianceChange" => 1007,
        "AppProtectionAction" => 1008,
        "RejectedEvent" => 1011,
        "DeviceStateRecord" => 1012,
        other => panic!("{other} did not change in 1.1"),
    }
}

/// The fingerprints a 1.0 producer put in single-object values, computed here from the 1.0
/// schema text: the specification's (Java's) and apache-avro (Rust)'s.
fn v10_fingerprints<T: AvroRecord>() -> [u64; 2] {
    let source = v10_source(T::SCHEMA_NAME);
    let spec = codec::crc64_avro(
        codec::canonical::canonical_form_of_str(source)
            .unwrap()
            .as_bytes(),
    );
    let rust = Schema::parse_str(source)
        .unwrap()
        .fingerprint::<Rabin>()
        .bytes;
    [spec, u64::from_le_bytes(rust.try_into().unwrap())]
}

fn so_with(fingerprint: u64, datum: &[u8]) -> Vec<u8> {
    let mut b = vec![0xC3, 0x01];
    b.extend_from_slice(&fingerprint.to_le_bytes());
    b.extend_from_slice(datum);
    b
}

/// `v` as a 1.0 producer wrote it: apache-avro, the 1.0 schema (the fields added in 1.1 are not
/// in it, so `v` must hold their defaults to be a 1.0 value).
fn v10_datum<T: Record>(v: &T) -> Vec<u8> {
    init();
    let old = v10_schema::<T>();
    let value = apache_avro::to_value(v).unwrap().resolve(&old).unwrap();
    apache_avro::to_avro_datum(&old, value).unwrap()
}

/// Removes the fields added in 1.1 from the JSON of a value: what a 1.0 producer sends.
fn v10_json<T: Record>(v: &T) -> Vec<u8> {
    let mut json = serde_json::to_value(v).unwrap();
    let strip = |o: &mut serde_json::Value, fields: &[&str]| {
        for f in fields {
            assert!(o.as_object_mut().unwrap().remove(*f).is_some(), "{f}");
        }
    };
    match T::SCHEMA_NAME {
        "ThreatPolicy" => strip(
            &mut json,
            &[
                "include_groups",
                "exclude_groups",
                "defender_max_level",
                "block_on_missing_data",
                "grace_period_hours",
            ],
        ),
        "ComplianceChange" => {
            strip(&mut json, &["grace_ends_at"]);
            for r in json["reasons"].as_array_mut().unwrap() {
                strip(r, &["threats"]);
            }
        }
        "AppProtectionAction" => strip(&mut json, &["threats"]),
        "DeviceStateRecord" => {
            strip(&mut json, &["graces"]);
            for p in json["partners"].as_array_mut().unwrap() {
                strip(p, &["threats"]);
            }
        }
        _ => {}
    }
    serde_json::to_vec(&json).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fixtures: 1.0 content (the 1.1 fields at their defaults) and 1.1 content

fn threats() -> Vec<Threat> {
    vec![
        Threat {
            category: "device".into(),
            name: "jailbreak".into(),
            severity: ThreatSeverity::Critical,
        },
        Threat {
            category: "network".into(),
            name: "rogue wifi ✓".into(),
            severity: ThreatSeverity::Medium,
        },
    ]
}

fn v10_policy() -> ThreatPolicy {
    ThreatPolicy {
        action: Some(PolicyAction::Block),
        partner_priority: Some(PartnerPriority::ThirdPartyFirst),
        ..ThreatPolicy::new(
            "tenant-a",
            "p-1",
            PolicyKind::AppProtection,
            Platform::Ios,
            PolicyLevel::Medium,
            1_700_000_000_000,
        )
    }
}

/// Every 1.1 field off its default. (Some are COMPLIANCE-only and others APP_PROTECTION-only:
/// refusing or ignoring them is the engine's business; the codec carries every field.)
fn v11_policy() -> ThreatPolicy {
    ThreatPolicy {
        include_groups: Some(vec!["sales".into(), "emea".into()]),
        exclude_groups: vec!["contractors".into()],
        defender_max_level: Some(PolicyLevel::High),
        block_on_missing_data: true,
        grace_period_hours: 72,
        ..v10_policy()
    }
}

fn v10_change() -> ComplianceChange {
    ComplianceChange {
        change_id: "c-1".into(),
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        user_id: Some("alice".into()),
        platform: Platform::Android,
        previous: ComplianceState::Compliant,
        current: ComplianceState::Noncompliant,
        reasons: vec![
            Reason {
                partner_id: "lookout".into(),
                code: ReasonCode::LevelExceedsPolicy,
                detail: "HIGH > LOW".into(),
                threats: Vec::new(),
            },
            Reason {
                partner_id: "zimperium".into(),
                code: ReasonCode::MissingPartnerData,
                detail: String::new(),
                threats: Vec::new(),
            },
        ],
        worst_level: Some(ThreatLevel::High),
        evaluated_at: 1_700_000_000_500,
        cause_event_id: "evt-1".into(),
        grace_ends_at: None,
    }
}

fn v11_change() -> ComplianceChange {
    let mut c = v10_change();
    c.reasons[0].threats = threats();
    c
}

/// A 1.1 change into the grace period: the new symbol and `grace_ends_at`.
fn grace_change() -> ComplianceChange {
    ComplianceChange {
        current: ComplianceState::InGracePeriod,
        grace_ends_at: Some(1_700_000_000_500 + 24 * 3_600_000),
        ..v11_change()
    }
}

fn v10_action() -> AppProtectionAction {
    AppProtectionAction {
        action_id: "a-1".into(),
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        user_id: None,
        platform: Platform::Ios,
        partner_id: "lookout".into(),
        action: AppAction::Wipe,
        level: Some(ThreatLevel::Compromised),
        max_allowed_level: Some(ThreatLevel::Low),
        policy_id: "p-1".into(),
        issued_at: 1_700_000_000_600,
        cause_event_id: "evt-2".into(),
        threats: Vec::new(),
    }
}

fn v11_action() -> AppProtectionAction {
    AppProtectionAction {
        threats: threats(),
        ..v10_action()
    }
}

fn v10_rejected() -> RejectedEvent {
    RejectedEvent {
        source_topic: "mtd.policies.v1".into(),
        partition: 2,
        offset: 77,
        key: Some("tenant-a/p-1".into()),
        reason: RejectReason::PolicyRefused,
        detail: "WARN is not supported".into(),
        raw: vec![0x00, 0x00, 0x00, 0x03, 0xec, 0xff],
        rejected_at: 1_700_000_000_700,
    }
}

fn v11_rejected() -> RejectedEvent {
    RejectedEvent {
        reason: RejectReason::NotEnrolled,
        ..v10_rejected()
    }
}

fn v10_state() -> DeviceStateRecord {
    DeviceStateRecord {
        tenant_id: "tenant-a".into(),
        device_id: "device-42".into(),
        user_id: Some("alice".into()),
        platform: Platform::Ios,
        management: Management::Mdm,
        ownership: Some(Ownership::Personal),
        os_version: Some("17.4".into()),
        enrolled: true,
        compliance: ComplianceState::Noncompliant,
        mam_blocked: false,
        mam_wipe_incident: false,
        output_seq: 9,
        partners: vec![
            PartnerObservation {
                partner_id: "lookout".into(),
                health_state: HealthState::High,
                observed_at: 1_700_000_000_000,
                event_fingerprint: -17,
                threats: Vec::new(),
                earlier_event_fingerprints: Vec::new(),
            },
            PartnerObservation {
                partner_id: "microsoft-defender-for-endpoint".into(),
                health_state: HealthState::Secured,
                observed_at: 1_700_000_000_100,
                event_fingerprint: 5,
                threats: Vec::new(),
                earlier_event_fingerprints: Vec::new(),
            },
        ],
        graces: Vec::new(),
    }
}

/// NONCOMPLIANT through a policy without grace while another policy's grace runs: `graces`
/// set, and a state a 1.0 reader has a symbol for.
fn v11_state() -> DeviceStateRecord {
    let mut s = v10_state();
    s.partners[0].threats = threats();
    s.graces = vec![
        PolicyGrace {
            policy_id: "cp-grace".into(),
            failing_since: 1_700_000_000_000,
        },
        PolicyGrace {
            policy_id: "cp-other ✓".into(),
            failing_since: 1_699_999_000_000,
        },
    ];
    s
}

/// Calls `$f(v10, v11)` for each record that changed in 1.1.
macro_rules! for_every_changed_record {
    ($f:ident) => {{
        $f(&v10_policy(), &v11_policy());
        $f(&v10_change(), &v11_change());
        $f(&v10_action(), &v11_action());
        $f(&v10_rejected(), &v11_rejected());
        $f(&v10_state(), &v11_state());
    }};
}

// ---------------------------------------------------------------------------------------------
// 1.0 values decode into the 1.1 model

/// A 1.0 ThreatPolicy as a 1.0 producer's struct serializes it (no 1.1 field anywhere).
#[derive(Serialize)]
struct ThreatPolicy10 {
    tenant_id: String,
    policy_id: String,
    kind: PolicyKind,
    platform: Platform,
    max_level: PolicyLevel,
    action: Option<PolicyAction>,
    partner_priority: Option<PartnerPriority>,
    updated_at: i64,
}

#[test]
fn a_v10_producer_struct_decodes_with_the_v11_defaults() {
    let p = v10_policy();
    let old = ThreatPolicy10 {
        tenant_id: p.tenant_id.clone(),
        policy_id: p.policy_id.clone(),
        kind: p.kind,
        platform: p.platform,
        max_level: p.max_level,
        action: p.action,
        partner_priority: p.partner_priority,
        updated_at: p.updated_at,
    };
    let datum = apache_avro::to_avro_datum(
        &v10_schema::<ThreatPolicy>(),
        apache_avro::to_value(&old).unwrap(),
    )
    .unwrap();
    assert_eq!(datum, v10_datum(&p));
    let [fp, alt] = v10_fingerprints::<ThreatPolicy>();
    for bytes in [
        confluent(1004, &datum),
        so_with(fp, &datum),
        so_with(alt, &datum),
        serde_json::to_vec(&old).unwrap(),
    ] {
        let got: ThreatPolicy = decode(&bytes).unwrap();
        assert_eq!(got.include_groups, None);
        assert!(got.exclude_groups.is_empty());
        assert_eq!(got.defender_max_level, None);
        assert!(!got.block_on_missing_data);
        assert_eq!(got.grace_period_hours, 0);
        assert_eq!(got, p);
    }
}

fn check_v10_decodes<T: Record>(v10: &T, v11: &T) {
    let name = T::SCHEMA_NAME;
    let old_datum = v10_datum(v10);
    if name == "RejectedEvent" {
        // Only symbols were appended: a 1.0 datum is a 1.1 datum (the indexes kept their meaning).
        assert_eq!(old_datum, datum(v10));
    } else {
        // The 1.0 datum really lacks the 1.1 fields: the current schema cannot read it as its own.
        assert!(old_datum.len() < datum(v10).len(), "{name}");
        assert!(
            decode::<T>(&single_object::<T>(&old_datum)).is_err(),
            "{name}: a 1.0 datum read as 1.1"
        );
    }
    let datum = old_datum;

    let [fp, alt] = v10_fingerprints::<T>();
    assert_ne!(
        fp, alt,
        "{name}: timestamp-millis makes apache-avro's fingerprint differ"
    );
    let set = codec::schema_set();
    let h = set.historic_by_id(v10_id::<T>()).unwrap();
    assert_eq!((h.name(), h.version()), (name, "1.0"));
    assert_eq!((h.fingerprint(), h.alt_fingerprint()), (fp, Some(alt)));
    assert_ne!(T::schema_entry().confluent_id(), v10_id::<T>());

    let inputs = [
        ("Confluent 1.0 id", confluent(v10_id::<T>(), &datum)),
        ("1.0 fingerprint", so_with(fp, &datum)),
        ("1.0 apache-avro fingerprint", so_with(alt, &datum)),
        ("1.0 JSON", v10_json(v10)),
    ];
    // Built into the decoder: no registry, and a registry that knows none of them.
    let bare = Decoder::new();
    let with_empty_registry = Decoder::with_resolver(Arc::new(Registry::default()), 100);
    // A registry that serves the 1.0 schema under its id and fingerprint: the same answer.
    let old = Arc::new(v10_schema::<T>());
    let registry = Decoder::with_resolver(
        Arc::new(Registry {
            by_id: BTreeMap::from([(v10_id::<T>(), old.clone())]),
            by_fp: BTreeMap::from([(fp, old.clone()), (alt, old)]),
        }),
        100,
    );
    for (what, bytes) in &inputs {
        assert_eq!(&decode::<T>(bytes).unwrap(), v10, "{name} {what}");
        // With a registry its ids replace ids.toml's: an empty one knows no Confluent id.
        let decoders: &[&Decoder] = if what.starts_with("Confluent") {
            let e = with_empty_registry.decode::<T>(bytes).unwrap_err();
            assert_eq!(
                e.reason(),
                RejectReason::UnknownSchema,
                "{name} {what}: {e}"
            );
            &[&bare, &registry]
        } else {
            &[&bare, &with_empty_registry, &registry]
        };
        for d in decoders {
            assert_eq!(&d.decode::<T>(bytes).unwrap(), v10, "{name} {what}");
            // Into a value that held a 1.1 record: nothing of it is left.
            let mut place = v11.clone();
            d.decode_into(bytes, &mut place).unwrap();
            assert_eq!(&place, v10, "{name} {what} in place");
        }
    }
    // apache-avro's own schema resolution (1.0 writer, 1.1 reader) agrees.
    init();
    let resolved = apache_avro::from_avro_datum(
        &v10_schema::<T>(),
        &mut &datum[..],
        Some(T::schema_entry().schema()),
    )
    .unwrap();
    assert_eq!(
        &apache_avro::from_value::<T>(&resolved).unwrap(),
        v10,
        "{name}"
    );

    // A 1.0 id or fingerprint under another record's topic is an unknown schema, and a broken
    // 1.0 datum is rejected with the place.
    let e = decode::<GroupMembership>(&confluent(v10_id::<T>(), &datum)).unwrap_err();
    assert_eq!(e.reason(), RejectReason::UnknownSchema, "{e}");
    assert!(
        e.detail()
            .contains(&format!("{} (version 1.0)", T::schema_entry().full_name())),
        "{e}"
    );
    let e = decode::<T>(&so_with(fp, &datum[..datum.len() - 1])).unwrap_err();
    assert_eq!(e.reason(), RejectReason::Undecodable, "{e}");
    assert!(e.detail().contains("truncated"), "{e}");
}

#[test]
fn v10_values_decode_into_the_v11_model_with_the_defaults() {
    for_every_changed_record!(check_v10_decodes);
}

/// The 1.0 encodings of `v` (which holds the 1.1 defaults).
fn v10_inputs<T: Record>(v: &T) -> Vec<(&'static str, Vec<u8>)> {
    let datum = v10_datum(v);
    let [fp, alt] = v10_fingerprints::<T>();
    vec![
        ("Confluent 1.0 id", confluent(v10_id::<T>(), &datum)),
        ("1.0 fingerprint", so_with(fp, &datum)),
        ("1.0 apache-avro fingerprint", so_with(alt, &datum)),
        ("1.0 JSON", v10_json(v)),
    ]
}

#[test]
fn v10_values_decode_with_no_grace() {
    // ComplianceChange: no `grace_ends_at`, also decoded into a value that held one.
    for (what, bytes) in v10_inputs(&v10_change()) {
        let mut place = grace_change();
        codec::decode_into(&bytes, &mut place).unwrap();
        assert_eq!(place.grace_ends_at, None, "{what}");
        assert_eq!(place.current, ComplianceState::Noncompliant, "{what}");
        assert_eq!(place, v10_change(), "{what}");
    }
    // DeviceStateRecord: `graces` empty (a 1.0 changelog restores with no grace running).
    for (what, bytes) in v10_inputs(&v10_state()) {
        let mut place = DeviceStateRecord {
            compliance: ComplianceState::InGracePeriod,
            ..v11_state()
        };
        codec::decode_into(&bytes, &mut place).unwrap();
        assert!(place.graces.is_empty(), "{what}");
        assert_eq!(place, v10_state(), "{what}");
    }
    // ThreatPolicy: `grace_period_hours` 0, for an APP_PROTECTION and a COMPLIANCE policy.
    let compliance = ThreatPolicy::new(
        "tenant-a",
        "cp-1",
        PolicyKind::Compliance,
        Platform::Android,
        PolicyLevel::Low,
        1_700_000_000_000,
    );
    for v10 in [v10_policy(), compliance] {
        for (what, bytes) in v10_inputs(&v10) {
            let mut place = v11_policy();
            codec::decode_into(&bytes, &mut place).unwrap();
            assert_eq!(place.grace_period_hours, 0, "{what}");
            assert_eq!(place, v10, "{what}");
        }
    }
}

#[test]
fn v10_json_without_the_new_fields_decodes() {
    let p: ThreatPolicy = decode(
        br#"{"tenant_id":"t","policy_id":"p","kind":"COMPLIANCE","platform":"ANDROID",
            "max_level":"LOW","updated_at":5}"#,
    )
    .unwrap();
    assert_eq!(
        p,
        ThreatPolicy::new(
            "t",
            "p",
            PolicyKind::Compliance,
            Platform::Android,
            PolicyLevel::Low,
            5
        )
    );
    let a: AppProtectionAction = decode(
        br#"{"action_id":"a","tenant_id":"t","device_id":"d","platform":"IOS","partner_id":"p",
            "action":"BLOCK","policy_id":"x","issued_at":1,"cause_event_id":"e"}"#,
    )
    .unwrap();
    assert!(a.threats.is_empty());
    let c: ComplianceChange = decode(
        br#"{"change_id":"c","tenant_id":"t","device_id":"d","platform":"IOS","previous":"UNKNOWN",
            "current":"COMPLIANT","reasons":[{"partner_id":"p","code":"UNSUPPORTED_OS","detail":""}],
            "evaluated_at":1,"cause_event_id":"e"}"#,
    )
    .unwrap();
    assert!(c.reasons[0].threats.is_empty());
}

#[test]
fn the_v10_state_changelog_restores() {
    // The restore path decodes every changelog record into one scratch value.
    let [fp, _] = v10_fingerprints::<DeviceStateRecord>();
    let mut scratch = v11_state();
    for i in 0..3 {
        let mut v = v10_state();
        v.output_seq = i;
        codec::decode_into(&so_with(fp, &v10_datum(&v)), &mut scratch).unwrap();
        assert_eq!(scratch, v);
        // A 1.1 record after a 1.0 one takes the fast path again.
        codec::decode_into(&encoded(&v11_state(), OutputEncoding::Avro), &mut scratch).unwrap();
        assert_eq!(scratch, v11_state());
    }
}

// ---------------------------------------------------------------------------------------------
// 1.1 values

fn check_v11_round_trips<T: Record>(v10: &T, v11: &T) {
    let entry = T::schema_entry();
    for enc in [
        OutputEncoding::Json,
        OutputEncoding::Avro,
        OutputEncoding::AvroConfluent,
    ] {
        let bytes = encoded(v11, enc);
        assert_eq!(
            &decode::<T>(&bytes).unwrap(),
            v11,
            "{} {enc}",
            T::SCHEMA_NAME
        );
        let mut place = v10.clone();
        codec::decode_into(&bytes, &mut place).unwrap();
        assert_eq!(&place, v11, "{} {enc} in place", T::SCHEMA_NAME);
    }
    let cf = encoded(v11, OutputEncoding::AvroConfluent);
    assert_eq!(&cf[1..5], &entry.confluent_id().to_be_bytes());
    assert!(entry.confluent_id() >= 1015, "{}: a new id", T::SCHEMA_NAME);
    let so = encoded(v11, OutputEncoding::Avro);
    assert_eq!(&so[2..10], &entry.fingerprint_bytes());
    assert!(!v10_fingerprints::<T>().contains(&entry.fingerprint()));
    // apache-avro reads our bytes with the 1.1 schema.
    init();
    let value = apache_avro::from_avro_datum(entry.schema(), &mut &so[10..], None).unwrap();
    assert_eq!(&apache_avro::from_value::<T>(&value).unwrap(), v11);
}

#[test]
fn v11_values_round_trip_in_every_encoding() {
    for_every_changed_record!(check_v11_round_trips);
    // The new symbols too.
    let mut c = v11_change();
    c.reasons[1].code = ReasonCode::ReportExpired;
    check_v11_round_trips(&v10_change(), &c);
    check_v11_round_trips(&v10_change(), &grace_change());
    // The grace ended with the device still failing: from IN_GRACE_PERIOD, no `grace_ends_at`.
    let ended = ComplianceChange {
        previous: ComplianceState::InGracePeriod,
        current: ComplianceState::Noncompliant,
        grace_ends_at: None,
        ..grace_change()
    };
    check_v11_round_trips(&grace_change(), &ended);
    let in_grace = DeviceStateRecord {
        compliance: ComplianceState::InGracePeriod,
        ..v11_state()
    };
    check_v11_round_trips(&v10_state(), &in_grace);
    for reason in [
        RejectReason::ConflictingConnector,
        RejectReason::NotEnrolled,
    ] {
        let r = RejectedEvent {
            reason,
            ..v10_rejected()
        };
        check_v11_round_trips(&v10_rejected(), &r);
    }
}

/// What a 1.0 reader (apache-avro, its 1.0 schema as reader) makes of our 1.1 output.
fn read_as_v10<T: Record>(v: &T) -> Result<Value, apache_avro::Error> {
    init();
    let bytes = encoded(v, OutputEncoding::Avro);
    apache_avro::from_avro_datum(
        T::schema_entry().schema(),
        &mut &bytes[10..],
        Some(&v10_schema::<T>()),
    )
}

fn check_v10_reader<T: Record>(v10: &T, v11: &T) {
    // The 1.0 reader gets the 1.0 content (the threats, groups, ... are dropped)...
    let expected = apache_avro::to_value(v10)
        .unwrap()
        .resolve(&v10_schema::<T>())
        .unwrap();
    assert_eq!(read_as_v10(v11).unwrap(), expected, "{}", T::SCHEMA_NAME);
    // ... which is the 1.0 datum of the value.
    assert_eq!(
        apache_avro::to_avro_datum(&v10_schema::<T>(), read_as_v10(v11).unwrap()).unwrap(),
        v10_datum(v10)
    );
}

#[test]
fn v11_outputs_are_readable_by_a_v10_reader() {
    check_v10_reader(&v10_policy(), &v11_policy());
    check_v10_reader(&v10_change(), &v11_change());
    check_v10_reader(&v10_action(), &v11_action());
    check_v10_reader(&v10_rejected(), &v10_rejected());
    check_v10_reader(&v10_state(), &v11_state());
    // `grace_ends_at` is dropped like the other new fields (the engine sets it only with
    // IN_GRACE_PERIOD; the schema does not tie the two).
    let with_deadline = ComplianceChange {
        grace_ends_at: Some(1_700_000_000_500 + 3_600_000),
        ..v11_change()
    };
    check_v10_reader(&v10_change(), &with_deadline);
    // A symbol 1.0 does not know fails there (the 1.0 schemas have no enum default); 1.1
    // readers will resolve symbols added after 1.1 through the defaults 1.1 added.
    let mut c = v11_change();
    c.reasons[1].code = ReasonCode::ReportExpired;
    assert!(read_as_v10(&c).is_err());
    assert!(read_as_v10(&v11_rejected()).is_err());

    // IN_GRACE_PERIOD is such a symbol. The 1.1 schemas give ComplianceState the default
    // UNKNOWN, but Avro resolution applies the *reader's* enum default, and a 1.0 reader's
    // ComplianceState has none: resolving fails (apache-avro `Details::GetEnumDefault`, whose
    // message reads "Enum default \"IN_GRACE_PERIOD\" is not among allowed symbols [...]";
    // Java throws an AvroTypeException). The 1.1 default only helps 1.1 and later readers with
    // symbols added after 1.1. So a 1.0 consumer fails on every change into or out of the grace
    // period, and a 1.0 instance on every changelog record of a device in it.
    let e = read_as_v10(&grace_change()).unwrap_err();
    assert!(e.to_string().contains("IN_GRACE_PERIOD"), "{e}");
    let ended = ComplianceChange {
        previous: ComplianceState::InGracePeriod,
        current: ComplianceState::Noncompliant,
        grace_ends_at: None,
        ..v11_change()
    };
    let e = read_as_v10(&ended).unwrap_err();
    assert!(e.to_string().contains("IN_GRACE_PERIOD"), "{e}");
    let in_grace = DeviceStateRecord {
        compliance: ComplianceState::InGracePeriod,
        ..v11_state()
    };
    let e = read_as_v10(&in_grace).unwrap_err();
    assert!(e.to_string().contains("IN_GRACE_PERIOD"), "{e}");
    // The same datums with a reader that has the 1.1 schema read fine (see the round trips);
    // and with the 1.1 reader, a symbol unknown to it would read as UNKNOWN (next section).
}

// ---------------------------------------------------------------------------------------------
// Writers newer than 1.1, through a resolver

#[derive(Default)]
struct Registry {
    by_id: BTreeMap<u32, Arc<Schema>>,
    by_fp: BTreeMap<u64, Arc<Schema>>,
}

impl SchemaResolver for Registry {
    fn resolve(&self, id: u32) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(self.by_id.get(&id).cloned())
    }
    fn resolve_fingerprint(&self, fingerprint: u64) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(self.by_fp.get(&fingerprint).cloned())
    }
}

/// The current schema of `T` with `edit` applied to its JSON: a later version.
fn newer_schema<T: AvroRecord>(edit: impl FnOnce(&mut serde_json::Value)) -> Schema {
    let mut json: serde_json::Value = serde_json::from_str(T::schema_entry().source()).unwrap();
    edit(&mut json);
    Schema::parse_str(&json.to_string()).unwrap()
}

/// The JSON of field `name` of a record schema.
fn field<'a>(record: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    record["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name}"))
}

/// Adds an optional string field `future` (default null) at the end.
fn add_future_field(record: &mut serde_json::Value) {
    record["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"name": "future", "type": ["null", "string"], "default": null}
        ));
}

/// Record field `name` of an apache-avro record value.
fn value_field<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    match v {
        Value::Record(fields) => &mut fields.iter_mut().find(|(n, _)| n == name).unwrap().1,
        other => panic!("not a record: {other:?}"),
    }
}

/// A decoder whose registry serves `schema` under id 5001 and its fingerprint; the fingerprint.
fn decoder_for(schema: &Schema) -> (Decoder, u64) {
    let fp = codec::crc64_avro(schema.canonical_form().as_bytes());
    let schema = Arc::new(schema.clone());
    let d = Decoder::with_resolver(
        Arc::new(Registry {
            by_id: BTreeMap::from([(5001, schema.clone())]),
            by_fp: BTreeMap::from([(fp, schema)]),
        }),
        100,
    );
    (d, fp)
}

fn decode_both<T: Record>(d: &Decoder, fp: u64, datum: &[u8]) -> Result<T, DecodeError> {
    let a = d.decode::<T>(&confluent(5001, datum));
    let b = d.decode::<T>(&so_with(fp, datum));
    assert_eq!(a, b);
    a
}

#[test]
fn a_newer_writer_with_an_added_optional_field_decodes() {
    init();
    let newer = newer_schema::<ThreatPolicy>(add_future_field);
    let (d, fp) = decoder_for(&newer);
    let mut value = apache_avro::to_value(v11_policy())
        .unwrap()
        .resolve(&newer)
        .unwrap();
    *value_field(&mut value, "future") = Value::Union(1, Box::new(Value::String("x".into())));
    let datum = apache_avro::to_avro_datum(&newer, value).unwrap();
    assert_eq!(
        decode_both::<ThreatPolicy>(&d, fp, &datum).unwrap(),
        v11_policy()
    );
    // Without the registry the newer schema is unknown.
    let e = decode::<ThreatPolicy>(&so_with(fp, &datum)).unwrap_err();
    assert_eq!(e.reason(), RejectReason::UnknownSchema);
}

#[test]
fn symbols_added_after_v11_read_as_the_enum_default() {
    init();
    // ComplianceChange 1.2: a reason code FUTURE_CODE, and a field `future`.
    let newer = newer_schema::<ComplianceChange>(|json| {
        add_future_field(json);
        let reason = &mut field(json, "reasons")["type"]["items"];
        let code = &mut field(reason, "code")["type"];
        code["symbols"]
            .as_array_mut()
            .unwrap()
            .push("FUTURE_CODE".into());
    });
    // apache-avro's compatibility check does not honour enum defaults; the resolution does.
    assert!(
        apache_avro::schema_compatibility::SchemaCompatibility::can_read(
            &newer,
            ComplianceChange::schema_entry().schema()
        )
        .is_err()
    );
    let (d, fp) = decoder_for(&newer);
    let mut value = apache_avro::to_value(v11_change())
        .unwrap()
        .resolve(&newer)
        .unwrap();
    match value_field(&mut value, "reasons") {
        Value::Array(reasons) => {
            *value_field(&mut reasons[1], "code") = Value::Enum(5, "FUTURE_CODE".into())
        }
        other => panic!("{other:?}"),
    }
    let datum = apache_avro::to_avro_datum(&newer, value).unwrap();
    let got = decode_both::<ComplianceChange>(&d, fp, &datum).unwrap();
    let mut expected = v11_change();
    expected.reasons[1].code = ReasonCode::MissingPartnerData;
    assert_eq!(got, expected);
    // apache-avro's resolution gives the same.
    let resolved = apache_avro::from_avro_datum(
        &newer,
        &mut &datum[..],
        Some(ComplianceChange::schema_entry().schema()),
    )
    .unwrap();
    assert_eq!(
        apache_avro::from_value::<ComplianceChange>(&resolved).unwrap(),
        expected
    );

    // RejectedEvent 1.2: a reason FUTURE_REASON reads as INVALID_FIELD.
    let newer = newer_schema::<RejectedEvent>(|json| {
        field(json, "reason")["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .push("FUTURE_REASON".into());
    });
    let (d, fp) = decoder_for(&newer);
    let mut value = apache_avro::to_value(v11_rejected()).unwrap();
    *value_field(&mut value, "reason") = Value::Enum(15, "FUTURE_REASON".into());
    let datum = apache_avro::to_avro_datum(&newer, value).unwrap();
    let got = decode_both::<RejectedEvent>(&d, fp, &datum).unwrap();
    assert_eq!(got.reason, RejectReason::InvalidField);
    assert_eq!(
        got,
        RejectedEvent {
            reason: RejectReason::InvalidField,
            ..v11_rejected()
        }
    );
}

#[test]
fn a_compliance_state_added_after_v11_reads_as_unknown() {
    init();
    let future = ComplianceState::ALL.len() as u32;
    // ComplianceChange 1.2 with a state FUTURE_STATE (the enum is defined at `previous` and
    // referenced by name at `current`).
    let newer = newer_schema::<ComplianceChange>(|json| {
        field(json, "previous")["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .push("FUTURE_STATE".into());
    });
    let (d, fp) = decoder_for(&newer);
    let mut value = apache_avro::to_value(grace_change())
        .unwrap()
        .resolve(&newer)
        .unwrap();
    *value_field(&mut value, "current") = Value::Enum(future, "FUTURE_STATE".into());
    let datum = apache_avro::to_avro_datum(&newer, value).unwrap();
    // The unknown symbol reads as UNKNOWN; the rest (IN_GRACE_PERIOD's deadline too) is kept.
    let expected = ComplianceChange {
        current: ComplianceState::Unknown,
        ..grace_change()
    };
    assert_eq!(
        decode_both::<ComplianceChange>(&d, fp, &datum).unwrap(),
        expected
    );
    let resolved = apache_avro::from_avro_datum(
        &newer,
        &mut &datum[..],
        Some(ComplianceChange::schema_entry().schema()),
    )
    .unwrap();
    assert_eq!(
        apache_avro::from_value::<ComplianceChange>(&resolved).unwrap(),
        expected
    );
    // IN_GRACE_PERIOD written by 1.2 is still IN_GRACE_PERIOD.
    let datum = apache_avro::to_avro_datum(
        &newer,
        apache_avro::to_value(grace_change())
            .unwrap()
            .resolve(&newer)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decode_both::<ComplianceChange>(&d, fp, &datum).unwrap(),
        grace_change()
    );

    // DeviceStateRecord 1.2: a changelog record in FUTURE_STATE restores as UNKNOWN, with its
    // graces.
    let newer = newer_schema::<DeviceStateRecord>(|json| {
        field(json, "compliance")["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .push("FUTURE_STATE".into());
    });
    let (d, fp) = decoder_for(&newer);
    let mut value = apache_avro::to_value(v11_state())
        .unwrap()
        .resolve(&newer)
        .unwrap();
    *value_field(&mut value, "compliance") = Value::Enum(future, "FUTURE_STATE".into());
    let datum = apache_avro::to_avro_datum(&newer, value).unwrap();
    let expected = DeviceStateRecord {
        compliance: ComplianceState::Unknown,
        ..v11_state()
    };
    assert_eq!(
        decode_both::<DeviceStateRecord>(&d, fp, &datum).unwrap(),
        expected
    );
    let mut place = v10_state();
    d.decode_into(&so_with(fp, &datum), &mut place).unwrap();
    assert_eq!(place, expected);
}

#[test]
fn a_new_symbol_of_an_enum_without_default_fails_only_the_datums_using_it() {
    init();
    let newer = newer_schema::<ThreatPolicy>(|json| {
        field(json, "platform")["type"]["symbols"]
            .as_array_mut()
            .unwrap()
            .push("LINUX".into());
    });
    let (d, fp) = decoder_for(&newer);
    let ok =
        apache_avro::to_avro_datum(&newer, apache_avro::to_value(v11_policy()).unwrap()).unwrap();
    assert_eq!(
        decode_both::<ThreatPolicy>(&d, fp, &ok).unwrap(),
        v11_policy()
    );
    let mut value = apache_avro::to_value(v11_policy()).unwrap();
    *value_field(&mut value, "platform") = Value::Enum(4, "LINUX".into());
    let linux = apache_avro::to_avro_datum(&newer, value).unwrap();
    let e = decode_both::<ThreatPolicy>(&d, fp, &linux).unwrap_err();
    assert_eq!(e.reason(), RejectReason::InvalidField, "{e}");
    assert!(e.detail().contains("platform"), "{e}");
    assert!(e.detail().contains("LINUX"), "{e}");
}

#[test]
fn a_writer_the_current_record_cannot_read_is_refused_as_a_whole() {
    // A later version that dropped a field the reader needs (no default).
    let newer = newer_schema::<ThreatPolicy>(|json| {
        json["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["name"] != "policy_id");
    });
    let (d, _) = decoder_for(&newer);
    let e = d
        .decode::<ThreatPolicy>(&confluent(5001, &[0]))
        .unwrap_err();
    assert_eq!(e.reason(), RejectReason::UnknownSchema, "{e}");
    assert!(e.detail().contains("policy_id"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The new inputs

#[test]
fn group_memberships_and_tenant_settings_round_trip_and_take_json_defaults() {
    let m = GroupMembership {
        tenant_id: "tenant-a".into(),
        user_id: "alice".into(),
        groups: vec!["sales".into(), "emea".into()],
        updated_at: 1_700_000_000_000,
    };
    let s = TenantSettings {
        tenant_id: "tenant-a".into(),
        no_policy_state: NoPolicyState::Compliant,
        report_validity_days: Some(120),
        updated_at: 1_700_000_000_001,
    };
    fn all<T: Record>(v: &T) {
        init();
        for enc in [
            OutputEncoding::Json,
            OutputEncoding::Avro,
            OutputEncoding::AvroConfluent,
        ] {
            assert_eq!(&decode::<T>(&encoded(v, enc)).unwrap(), v, "{enc}");
        }
        let so = encoded(v, OutputEncoding::Avro);
        let value =
            apache_avro::from_avro_datum(T::schema_entry().schema(), &mut &so[10..], None).unwrap();
        assert_eq!(&apache_avro::from_value::<T>(&value).unwrap(), v);
    }
    all(&m);
    all(&s);
    assert_eq!(GroupMembership::schema_entry().confluent_id(), 1013);
    assert_eq!(TenantSettings::schema_entry().confluent_id(), 1014);

    let m: GroupMembership = decode(br#"{"tenant_id":"t","user_id":"u","updated_at":3}"#).unwrap();
    assert!(m.groups.is_empty());
    let s: TenantSettings = decode(br#"{"tenant_id":"t","updated_at":3}"#).unwrap();
    assert_eq!(s.no_policy_state, NoPolicyState::NotEvaluated);
    assert_eq!(s.report_validity_days, None);
    let s: TenantSettings =
        decode(br#"{"tenant_id":"t","report_validity_days":null,"updated_at":3}"#).unwrap();
    assert_eq!(s.report_validity_days, None);
    let s: TenantSettings = decode(
        br#"{"tenant_id":"t","no_policy_state":"NONCOMPLIANT","report_validity_days":7,"updated_at":3}"#,
    )
    .unwrap();
    assert_eq!(
        (s.no_policy_state, s.report_validity_days),
        (NoPolicyState::Noncompliant, Some(7))
    );
    let e =
        decode::<TenantSettings>(br#"{"tenant_id":"t","no_policy_state":"MAYBE","updated_at":3}"#)
            .unwrap_err();
    assert_eq!(e.reason(), RejectReason::InvalidField);
    assert!(e.detail().contains("no_policy_state"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Serde defaults are the Avro defaults, for every record

/// `schema` (JSON) with every field that has a default removed, in every record it defines:
/// the oldest writer the current reader still reads.
fn required_only(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(m) => {
            if m.get("type").and_then(|t| t.as_str()) == Some("record") {
                let fields = m["fields"].as_array_mut().unwrap();
                fields.retain(|f| f.get("default").is_none());
            }
            m.values_mut().for_each(required_only);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(required_only),
        _ => {}
    }
}

/// A value of `schema` with no field left at a default-like value: the last enum symbol, the
/// last union branch, one item per array.
fn sample(schema: &Schema, named: &mut BTreeMap<String, Schema>) -> Value {
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(true),
        Schema::Int => Value::Int(7),
        Schema::Long | Schema::TimestampMillis => Value::Long(1_700_000_000_042),
        Schema::String => Value::String("s ✓".into()),
        Schema::Bytes => Value::Bytes(vec![0, 0xff]),
        Schema::Array(a) => Value::Array(vec![sample(&a.items, named)]),
        Schema::Map(m) => Value::Map([("IOS".to_owned(), sample(&m.types, named))].into()),
        Schema::Union(u) => {
            let last = u.variants().len() - 1;
            Value::Union(last as u32, Box::new(sample(&u.variants()[last], named)))
        }
        Schema::Enum(e) => {
            named.insert(e.name.name.clone(), schema.clone());
            let last = e.symbols.len() - 1;
            Value::Enum(last as u32, e.symbols[last].clone())
        }
        Schema::Record(r) => {
            named.insert(r.name.name.clone(), schema.clone());
            Value::Record(
                r.fields
                    .iter()
                    .map(|f| (f.name.clone(), sample(&f.schema, named)))
                    .collect(),
            )
        }
        Schema::Ref { name } => {
            let s = named[&name.name].clone();
            sample(&s, named)
        }
        other => panic!("no sample for {other:?}"),
    }
}

fn check_defaults<T: Record>() {
    init();
    let name = T::SCHEMA_NAME;
    let mut json: serde_json::Value = serde_json::from_str(T::schema_entry().source()).unwrap();
    required_only(&mut json);
    let minimal = Schema::parse_str(&json.to_string())
        .unwrap_or_else(|e| panic!("{name} without its defaulted fields: {e}"));
    let value = sample(&minimal, &mut BTreeMap::new());
    let datum = apache_avro::to_avro_datum(&minimal, value).unwrap();
    // Ours: the datum decoded with the minimal writer schema, by field name into `T`.
    let (d, fp) = decoder_for(&minimal);
    let ours = decode_both::<T>(&d, fp, &datum).unwrap_or_else(|e| panic!("{name}: {e}"));
    // apache-avro: schema resolution into the current schema, its defaults filled in.
    let resolved =
        apache_avro::from_avro_datum(&minimal, &mut &datum[..], Some(T::schema_entry().schema()))
            .unwrap();
    let theirs: T = apache_avro::from_value(&resolved).unwrap();
    assert_eq!(
        ours, theirs,
        "{name}: serde defaults differ from the schema's"
    );
    // And the JSON decoder, given only the required fields, fills in the same.
    let mut js = serde_json::to_value(&ours).unwrap();
    strip_to(&mut js, &json);
    assert_eq!(
        decode::<T>(&serde_json::to_vec(&js).unwrap()).unwrap(),
        ours,
        "{name}: JSON defaults"
    );
}

/// Keeps only the fields of type `ty` (schema JSON) in the JSON value `v`.
fn strip_to(v: &mut serde_json::Value, ty: &serde_json::Value) {
    match ty["type"].as_str() {
        Some("record") => {
            let fields = ty["fields"].as_array().unwrap();
            let obj = v.as_object_mut().unwrap();
            obj.retain(|k, _| fields.iter().any(|f| f["name"] == *k));
            for f in fields {
                if let Some(x) = obj.get_mut(f["name"].as_str().unwrap()) {
                    strip_to(x, &f["type"]);
                }
            }
        }
        Some("array") => v
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .for_each(|x| strip_to(x, &ty["items"])),
        Some("map") => v
            .as_object_mut()
            .unwrap()
            .values_mut()
            .for_each(|x| strip_to(x, &ty["values"])),
        _ => {}
    }
}

#[test]
fn serde_defaults_are_the_schema_defaults_for_every_record() {
    check_defaults::<DeviceThreatReport>();
    check_defaults::<ConnectorHeartbeat>();
    check_defaults::<ConnectorConfig>();
    check_defaults::<ThreatPolicy>();
    check_defaults::<DeviceEnrollment>();
    check_defaults::<AppInventory>();
    check_defaults::<ComplianceChange>();
    check_defaults::<AppProtectionAction>();
    check_defaults::<ConnectorStatusChange>();
    check_defaults::<PartnerAppInventory>();
    check_defaults::<RejectedEvent>();
    check_defaults::<DeviceStateRecord>();
    check_defaults::<GroupMembership>();
    check_defaults::<TenantSettings>();
}

#[test]
fn decode_speed_of_v10_state_records() {
    // Not an assertion: prints what restoring a 1.0 changelog record costs next to a 1.1 one
    // (meaningful with --release), best of 5 rounds, decoding into one scratch value.
    let [fp, _] = v10_fingerprints::<DeviceStateRecord>();
    let old = so_with(fp, &v10_datum(&v10_state()));
    let new = encoded(&v10_state(), OutputEncoding::Avro);
    let n = if cfg!(debug_assertions) {
        1_000
    } else {
        200_000
    };
    let time = |bytes: &[u8]| {
        let mut place = v11_state();
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..n {
                    codec::decode_into(std::hint::black_box(bytes), &mut place).unwrap();
                    std::hint::black_box(&place);
                }
                t.elapsed().as_nanos() as f64 / n as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (t_new, t_old) = (time(&new), time(&old));
    println!(
        "DeviceStateRecord into a scratch value: 1.1 {t_new:.0} ns/record, 1.0 (resolved) \
         {t_old:.0} ns/record"
    );
}
