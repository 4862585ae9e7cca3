//! Every input decoder on arbitrary bytes.
//!
//! The first byte picks what is decoded (`selector % 11`), the rest is the value as it would
//! arrive in a Kafka record:
//!
//! | selector | decoded as |
//! |---|---|
//! | 0 | `decode::<DeviceThreatReport>` |
//! | 1 | `decode::<ConnectorHeartbeat>` |
//! | 2 | `decode::<ConnectorConfig>` |
//! | 3 | `decode::<ThreatPolicy>` |
//! | 4 | `decode::<DeviceEnrollment>` |
//! | 5 | `decode::<AppInventory>` |
//! | 6 | `decode::<DeviceStateRecord>` (the changelog, as restore reads it) |
//! | 7 | `decode_avro_datum::<DeviceStateRecord>` (a bare datum, no framing) |
//! | 8 | `DeviceThreatReport` through a `Decoder` with a schema registry that knows an older
//! |   | writer schema (Confluent id 77 and its fingerprint) and the current one (id 78): Avro
//! |   | schema resolution |
//! | 9 | `decode::<GroupMembership>` |
//! | 10 | `decode::<TenantSettings>` |
//!
//! Properties checked besides "no panic, no hang, no huge allocation":
//! - an error has a non-empty detail;
//! - a value that decodes re-encodes in every output encoding (`json`, `avro`,
//!   `avro-confluent`) and decodes back to the same value.
//!
//! `fuzz/seeds.py` writes seeds (valid JSON, single-object and Confluent encodings of every
//! record, prefixed with their selector) into `fuzz/seeds/decode/`.
#![no_main]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use mtdgate::codec::{
    self, canonical, decode, encode, AvroRecord, DecodeError, Decoder, OutputEncoding,
    ResolveError, SchemaResolver,
};
use mtdgate::model::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An older DeviceThreatReport: no `os_version`, plus a field the current version lacks.
/// Must match `OLD_REPORT_SCHEMA` in `fuzz/seeds.py`.
pub const OLD_REPORT_SCHEMA: &str = include_str!("../old_report.avsc");

trait Rec: AvroRecord + DeserializeOwned + Serialize + PartialEq + Debug {}
impl<T: AvroRecord + DeserializeOwned + Serialize + PartialEq + Debug> Rec for T {}

fn check_error(e: &DecodeError) {
    assert!(!e.detail().is_empty(), "empty detail: {e:?}");
    let _ = e.reason();
}

/// What was accepted survives every output encoding unchanged.
fn round_trip<T: Rec>(v: &T) {
    for enc in [
        OutputEncoding::Json,
        OutputEncoding::Avro,
        OutputEncoding::AvroConfluent,
    ] {
        let mut buf = Vec::new();
        encode(v, enc, &mut buf)
            .unwrap_or_else(|e| panic!("accepted {v:?} cannot be encoded as {enc:?}: {e}"));
        match decode::<T>(&buf) {
            Ok(back) => assert_eq!(&back, v, "{enc:?} round trip changed the value"),
            Err(e) => panic!("{enc:?} encoding of accepted {v:?} does not decode: {e}"),
        }
    }
}

fn check<T: Rec>(r: Result<T, DecodeError>) {
    match r {
        Ok(v) => round_trip(&v),
        Err(e) => check_error(&e),
    }
}

struct Registry {
    by_id: BTreeMap<u32, Arc<Schema>>,
    by_fp: BTreeMap<u64, Arc<Schema>>,
}

impl SchemaResolver for Registry {
    fn resolve(&self, id: u32) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(self.by_id.get(&id).cloned())
    }
    fn resolve_fingerprint(&self, fp: u64) -> Result<Option<Arc<Schema>>, ResolveError> {
        Ok(self.by_fp.get(&fp).cloned())
    }
}

fn registry_decoder() -> &'static Decoder {
    static D: OnceLock<Decoder> = OnceLock::new();
    D.get_or_init(|| {
        let old = Arc::new(Schema::parse_str(OLD_REPORT_SCHEMA).expect("old report schema"));
        let fp = codec::crc64_avro(
            canonical::canonical_form_of_str(OLD_REPORT_SCHEMA)
                .expect("canonical form")
                .as_bytes(),
        );
        let current = Arc::new(DeviceThreatReport::schema_entry().schema().clone());
        Decoder::with_resolver(
            Arc::new(Registry {
                by_id: BTreeMap::from([(77, old.clone()), (78, current)]),
                by_fp: BTreeMap::from([(fp, old)]),
            }),
            100,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 11 {
        0 => check(decode::<DeviceThreatReport>(bytes)),
        1 => check(decode::<ConnectorHeartbeat>(bytes)),
        2 => check(decode::<ConnectorConfig>(bytes)),
        3 => check(decode::<ThreatPolicy>(bytes)),
        4 => check(decode::<DeviceEnrollment>(bytes)),
        5 => check(decode::<AppInventory>(bytes)),
        6 => check(decode::<DeviceStateRecord>(bytes)),
        7 => check(codec::decode_avro_datum::<DeviceStateRecord>(bytes)),
        8 => check(registry_decoder().decode::<DeviceThreatReport>(bytes)),
        9 => check(decode::<GroupMembership>(bytes)),
        _ => check(decode::<TenantSettings>(bytes)),
    }
});
