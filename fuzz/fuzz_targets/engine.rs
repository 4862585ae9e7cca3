//! Decoded inputs applied to the rule engine, as the pipeline does, in arbitrary order with
//! the clock moving: the decoders' output is the engine's input, so whatever decodes must be
//! applied or rejected without a panic.
//!
//! The input is a sequence of operations `[op][len: u16 LE][len bytes]` (a short tail is
//! padded with zeros). `op % 11` picks:
//!
//! | op | does |
//! |---|---|
//! | 0..=5 | a record of the threats, heartbeats, connectors, policies, enrollments or inventory topic: the bytes are `[key_len][key][value]`; an empty value is a tombstone |
//! | 6 | moves the clock forward by `u32 LE` seconds (the first 4 bytes), then fires timers |
//! | 7 | restores a changelog record: `[key_len][key][value]`, empty value = tombstone |
//! | 8 | reconciles every partition (what an assignment does) |
//! | 9, 10 | a record of the group memberships or tenant settings topic (contract 1.1), as for 0..=5 |
//!
//! Properties: no panic; every output encodes in every output encoding; every changelog record
//! the engine writes can be restored into a fresh engine (the state a restart would read back).
//!
//! Seeds (`fuzz/seeds/engine/`) are small scenarios with JSON values, written by
//! `fuzz/seeds.py`.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mtdgate::catalogue::Catalogue;
use mtdgate::codec::{decode, encode, OutputEncoding};
use mtdgate::engine::ownership::PartitionOwnership;
use mtdgate::engine::{Body, Engine, EngineSettings, Event, Output};
use mtdgate::model::*;

const PARTITIONS: i32 = 3;
const T0: i64 = 1_700_000_000_000;

fn catalogue() -> Arc<Catalogue> {
    static C: OnceLock<Arc<Catalogue>> = OnceLock::new();
    C.get_or_init(|| Arc::new(Catalogue::builtin("public").unwrap()))
        .clone()
}

fn new_engine() -> Engine {
    Engine::new(
        catalogue(),
        EngineSettings {
            max_clock_skew_ms: 300_000,
        },
    )
}

/// Kafka's default partitioner would put a key somewhere; any stable choice will do here.
fn partition_of(key: &[u8]) -> i32 {
    (key.iter()
        .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(b as u32))
        % PARTITIONS as u32) as i32
}

fn check_outputs(out: &mut Vec<Output>) {
    let mut buf = Vec::new();
    for o in out.drain(..) {
        for enc in [OutputEncoding::Json, OutputEncoding::Avro] {
            buf.clear();
            let r = match &o {
                Output::Compliance(v) => encode(v, enc, &mut buf),
                Output::AppAction(v) => encode(v, enc, &mut buf),
                Output::ConnectorStatus(v) => encode(v, enc, &mut buf),
                Output::Inventory(v) => encode(v, enc, &mut buf),
                Output::Rejected(r) => {
                    assert!(!r.detail.is_empty(), "rejection without detail: {r:?}");
                    Ok(())
                }
            };
            r.unwrap_or_else(|e| panic!("output {o:?} cannot be encoded: {e}"));
        }
    }
}

/// Every changelog record restores into a fresh engine.
fn check_changelog(engine: &Engine, replica: &mut Engine) {
    for p in 0..PARTITIONS {
        let mut records = Vec::new();
        engine.drain_changelog(p, |key, rec| records.push((key, rec)));
        for (key, rec) in records {
            if let Some(r) = &rec {
                let mut buf = Vec::new();
                encode(r, OutputEncoding::Avro, &mut buf).expect("changelog record encodes");
                let back: DeviceStateRecord = decode(&buf).expect("changelog record decodes");
                assert_eq!(&back, r);
            }
            replica.restore(p, &key, rec.as_ref()).unwrap_or_else(|e| {
                panic!("changelog record {key} {rec:?} cannot be restored: {e}")
            });
        }
    }
}

fn split_key(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.split_first() {
        Some((&n, rest)) => rest.split_at((n as usize).min(rest.len())),
        None => (&[], &[]),
    }
}

fn body(topic: u8, value: &[u8]) -> Option<Body> {
    let v = (!value.is_empty()).then_some(value);
    Some(match topic {
        0 => Body::Threat(decode(v?).ok()?),
        1 => Body::Heartbeat(decode(v?).ok()?),
        2 => Body::Connector(v.map(decode).transpose().ok()?),
        3 => Body::Policy(v.map(decode).transpose().ok()?),
        4 => Body::Enrollment(v.map(decode).transpose().ok()?),
        9 => Body::Membership(v.map(decode).transpose().ok()?),
        10 => Body::Settings(v.map(decode).transpose().ok()?),
        _ => Body::Inventory(decode(v?).ok()?),
    })
}

fuzz_target!(|data: &[u8]| {
    let mut engine = new_engine();
    let mut replica = new_engine();
    let mut now = T0;
    let mut out = Vec::new();
    let mut rest = data;
    let mut ops = 0;
    while rest.len() >= 3 && ops < 64 {
        ops += 1;
        let op = rest[0] % 11;
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let len = len.min(rest.len() - 3);
        let arg = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match op {
            0..=5 | 9 | 10 => {
                let (key, value) = split_key(arg);
                let Some(body) = body(op, value) else {
                    continue;
                };
                // Tables are read by every instance (partition 0 here); device topics land in
                // their key's partition.
                let partition = if matches!(op, 0 | 4 | 5) {
                    partition_of(key)
                } else {
                    0
                };
                engine.apply(
                    &Event {
                        partition,
                        key: (!key.is_empty()).then_some(key),
                        body,
                    },
                    now,
                    &mut out,
                );
            }
            6 => {
                let mut secs = [0u8; 4];
                for (d, s) in secs.iter_mut().zip(arg) {
                    *d = *s;
                }
                now += u32::from_le_bytes(secs) as i64 * 1000;
                engine.advance(now, &mut out);
            }
            7 => {
                let (key, value) = split_key(arg);
                let Ok(key) = std::str::from_utf8(key) else {
                    continue;
                };
                let record = if value.is_empty() {
                    None
                } else {
                    match decode::<DeviceStateRecord>(value) {
                        Ok(r) => Some(r),
                        Err(_) => continue,
                    }
                };
                let p = partition_of(key.as_bytes());
                if engine.restore(p, key, record.as_ref()).is_ok() {
                    let _ = replica.restore(p, key, record.as_ref());
                }
            }
            _ => {
                for p in 0..PARTITIONS {
                    engine.reconcile(p, now, &mut out);
                }
            }
        }
        check_outputs(&mut out);
        check_changelog(&engine, &mut replica);
        let _ = engine.next_deadline();
        // Who publishes what, for an instance owning every partition.
        let mut ownership = PartitionOwnership::new(PARTITIONS);
        let newly = ownership.assign(0..PARTITIONS);
        let mut statuses = Vec::new();
        engine.unpublished_statuses(&ownership, &newly, &Default::default(), now, &mut statuses);
        let _ = engine.owned_connector_counts(&ownership);
    }
});
