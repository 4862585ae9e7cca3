//! Mixed partitioners: enrollments from a murmur2 producer (as Java clients partition), reports
//! from Python `confluent-kafka` on its default partitioner (librdkafka's CRC32-based
//! `consistent_random`), which places most keys in another partition. mtdgate forwards each
//! mis-partitioned record to its key's murmur2 partition through the repartition topic, inside
//! the transaction: one state per device, the same verdicts as when every producer uses murmur2.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use mtdgate::config::Config;
use mtdgate::engine::ownership::is_status_key;
use mtdgate::engine::partitioner::partition_for;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use support::broker::*;

const DEVICES: usize = 30;

fn state_for(i: usize) -> &'static str {
    if i % 2 == 0 {
        "HIGH"
    } else {
        "SECURED"
    }
}

/// Sends `records` with the Python producer on its default partitioner, as JSON values;
/// returns the partition each went to.
fn python_json(cfg: &Config, topic: &str, records: &[(String, Value)]) -> Vec<i32> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/avro_clients.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["produce", "--json", "--bootstrap"])
        .arg(&cfg.kafka.bootstrap_servers)
        .args(["--topic", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 tests/python/avro_clients.py");
    let input: String = records
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}).to_string() + "\n")
        .collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["partition"].as_i64().unwrap() as i32
        })
        .collect()
}

/// Keys of the changelog and the partitions each was written to.
fn changelog_partitions(cfg: &Config) -> BTreeMap<String, BTreeSet<i32>> {
    let mut c = client(&cfg.kafka.bootstrap_servers);
    c.set(
        "group.id",
        format!("changelog-reader-{}", std::process::id()),
    )
    .set("enable.partition.eof", "false")
    .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = c.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..cfg.topics.partitions {
        tpl.add_partition_offset(&cfg.topics.device_state, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut idle = 0;
    while idle < 20 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if is_status_key(m.key().unwrap_or_default()) => idle = 0,
            Some(Ok(m)) => {
                idle = 0;
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                seen.entry(key).or_default().insert(m.partition());
            }
            _ => idle += 1,
        }
    }
    seen
}

/// One run: tables and enrollments through a murmur2 gateway, reports through `python` (its
/// default partitioner) or the gateway; the final state per device, the changelog's
/// partitions per key, and how many reports went to another partition than murmur2's.
fn run(name: &str, python: bool) -> (BTreeMap<String, String>, Config, usize) {
    let (cfg, svc, gw, now) = scenario(name);
    gw.setup_tables(&compliance_tables(&cfg, "LOW", now));
    let t = &cfg.topics;
    let mut out = Reader::new(&t.compliance_changes);
    let enrollments: Vec<Record> = (0..DEVICES)
        .map(|i| {
            let d = format!("d{i}");
            (
                t.device_enrollments.clone(),
                format!("acme/{d}"),
                enrollment_json(&d, now),
            )
        })
        .collect();
    gw.send_all(&enrollments);
    gw.flush();
    let reports: Vec<(String, Value)> = (0..DEVICES)
        .map(|i| {
            let d = format!("d{i}");
            let r = report_json(
                &format!("e{i}"),
                "lookout",
                &d,
                "MDM",
                state_for(i),
                now + 1,
            );
            (format!("acme/{d}"), r)
        })
        .collect();
    let misplaced = if python {
        let parts = python_json(&cfg, &t.device_threats, &reports);
        reports
            .iter()
            .zip(parts)
            .filter(|((k, _), p)| *p != partition_for(k.as_bytes(), cfg.topics.partitions))
            .count()
    } else {
        for (k, v) in &reports {
            gw.send(&t.device_threats, k, Some(v));
        }
        gw.flush();
        0
    };
    let expected = |records: &[(String, Value)]| {
        let mut last: BTreeMap<&str, &str> = BTreeMap::new();
        for (_, v) in records {
            last.insert(
                v["device_id"].as_str().unwrap_or_default(),
                v["current"].as_str().unwrap_or_default(),
            );
        }
        last.len() == DEVICES
            && (0..DEVICES).all(|i| {
                let want = if state_for(i) == "HIGH" {
                    "NONCOMPLIANT"
                } else {
                    "COMPLIANT"
                };
                last.get(format!("d{i}").as_str()) == Some(&want)
            })
    };
    out.wait_until("every device judged", Duration::from_secs(60), expected);
    out.drain(Duration::from_secs(1));
    let states = out
        .records
        .iter()
        .map(|(_, v)| {
            (
                v["device_id"].as_str().unwrap().to_owned(),
                v["current"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    svc.stop();
    (states, cfg, misplaced)
}

#[test]
fn mixed_partitioners_give_one_state_per_device_and_the_murmur2_verdicts() {
    let (reference, _, _) = run("reroute-murmur2", false);
    let (mixed, cfg, misplaced) = run("reroute-mixed", true);
    assert!(
        misplaced > DEVICES / 3,
        "the default partitioner placed only {misplaced} of {DEVICES} reports elsewhere"
    );
    assert_eq!(
        mixed, reference,
        "the same verdicts as with murmur2 everywhere"
    );

    // One state per device: each key's changelog records are in its murmur2 partition only.
    let changelog = changelog_partitions(&cfg);
    assert_eq!(changelog.len(), DEVICES, "{changelog:?}");
    for (key, parts) in &changelog {
        let owner = partition_for(key.as_bytes(), cfg.topics.partitions);
        assert_eq!(parts, &BTreeSet::from([owner]), "{key}");
    }
    // Nothing was rejected on the way.
    let mut rejected = Reader::new(&cfg.topics.rejected);
    assert!(rejected.drain(Duration::from_secs(2)).is_empty());
}
