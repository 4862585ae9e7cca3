//! Changelog batches (`runtime::changelog_batches`) across a SIGKILL, on the real broker.
//!
//! Tenant `acme` judges iOS compliance on Lookout's reports. [`DEVICES`] devices are enrolled
//! (COMPLIANT) and report LOW under a policy whose maximum is SECURED (NONCOMPLIANT), through a
//! first instance that stops cleanly. A second instance, in a child process, restores them;
//! then the policy's maximum goes to LOW: a fan-out that turns every device COMPLIANT, written
//! to the changelog as one batch per partition (`changelog_batch_min` is below the devices of
//! a partition) instead of a record per device. The child is killed with SIGKILL:
//!
//! - **before the commit** (commits only every 30 s): the batch and the outputs are aborted
//!   together; the next instance restores the state before the flip and publishes the flip
//!   itself, on reconcile;
//! - **after the commit, before the batch is settled** (one device settled per commit): the
//!   next instance restores the flip from the batch, publishes nothing, and settles the batch.
//!
//! Either way each device's compliance history, read read_committed, is exactly COMPLIANT,
//! NONCOMPLIANT, COMPLIANT, and a restore of the whole changelog into a fresh engine gives
//! every device COMPLIANT, with every batch tombstoned once settled.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mtdgate::config::Config;
use mtdgate::engine::Engine;
use mtdgate::model::ComplianceState;
use mtdgate::runtime::changelog_batches::is_batch_key;
use mtdgate::runtime::restore::{restore_partitions, RestoredStatuses};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use support::*;

const DEVICES: usize = 300;
const WAIT: Duration = Duration::from_secs(60);

fn device(i: usize) -> String {
    format!("d{i:04}")
}

/// The compliance states of each device, in order.
fn histories(records: &[(String, Value)]) -> BTreeMap<String, Vec<String>> {
    let mut h: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in records {
        h.entry(k.clone())
            .or_default()
            .push(v["current"].as_str().unwrap_or_default().to_owned());
    }
    h
}

fn count_state(records: &[(String, Value)], state: &str) -> usize {
    histories(records)
        .values()
        .filter(|h| h.last().map(String::as_str) == Some(state))
        .count()
}

/// Changes after the first two of each device (enrolled, then the LOW report).
fn flips(records: &[(String, Value)]) -> usize {
    histories(records).values().filter(|h| h.len() >= 3).count()
}

/// The policy over `max_level`, at `at`.
fn policy(cfg: &Config, max_level: &str, at: i64) -> Record {
    let cp = policy_json("cp", "IOS", max_level, None, at);
    (cfg.topics.policies.clone(), "acme/cp".into(), cp)
}

/// The tables, the devices enrolled and reporting LOW through a first, in-process instance
/// that stops cleanly; returns the reader of the compliance topic.
fn prepare(cfg: &Config, gw: &Gateway) -> Reader {
    let now = now_ms();
    gw.send_all(&compliance_tables(cfg, "SECURED", now));
    gw.flush();
    let a = Service::start(cfg);
    let t = &cfg.topics;
    let mut changes = Reader::new(&t.compliance_changes);
    for i in 0..DEVICES {
        let d = device(i);
        gw.send(
            &t.device_enrollments,
            &format!("acme/{d}"),
            Some(&enrollment_json(&d, now)),
        );
    }
    gw.flush();
    changes.wait_until("every device enrolled", WAIT, |r| {
        count_state(r, "COMPLIANT") == DEVICES
    });
    for i in 0..DEVICES {
        let d = device(i);
        let report = report_json(&format!("e-{d}"), "lookout", &d, "MDM", "LOW", now + 1);
        gw.send(&t.device_threats, &format!("acme/{d}"), Some(&report));
    }
    gw.flush();
    changes.wait_until("every device NONCOMPLIANT", WAIT, |r| {
        count_state(r, "NONCOMPLIANT") == DEVICES
    });
    a.stop();
    changes
}

/// Starts the instance to be killed as a child process, with `tune` applied, and waits until
/// it is ready (its devices restored).
fn start_child(cfg: &Config, name: &str, tune: impl FnOnce(&mut Config)) -> Process {
    let mut c = cfg.clone();
    let port = free_port();
    c.http.listen = format!("127.0.0.1:{port}");
    tune(&mut c);
    let child = Process::start(&c, name);
    wait_http_ok(&format!("http://127.0.0.1:{port}/readyz"), WAIT);
    child
}

/// A reader of the changelog at `isolation`, from the offsets `from` (by partition).
fn changelog_reader(cfg: &Config, isolation: &str, from: &[(i32, i64)]) -> BaseConsumer {
    let c: BaseConsumer = client(broker())
        .set("group.id", format!("batches-{}", std::process::id()))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in from {
        tpl.add_partition_offset(&cfg.topics.device_state, p, Offset::Offset(o))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

/// The changelog's high watermarks (read_uncommitted).
fn ends(cfg: &Config) -> Vec<(i32, i64)> {
    let c = changelog_reader(cfg, "read_uncommitted", &[]);
    (0..cfg.topics.partitions)
        .map(|p| {
            let (_, high) = c
                .fetch_watermarks(&cfg.topics.device_state, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}

/// Waits until the changelog, from `from`, shows a batch chunk in every partition (read at
/// `isolation`).
fn wait_for_batches(cfg: &Config, isolation: &str, from: &[(i32, i64)]) {
    let c = changelog_reader(cfg, isolation, from);
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < cfg.topics.partitions as usize {
        assert!(
            Instant::now() < deadline,
            "batch chunks ({isolation}) only in partitions {seen:?}"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            if m.payload().is_some() && is_batch_key(m.key().unwrap_or_default()) {
                seen.insert(m.partition());
            }
        }
    }
}

/// A restore of the whole committed changelog into a fresh engine: each device's compliance,
/// and the batch chunks found with no tombstone after them.
fn restore_all(cfg: &Config) -> (BTreeMap<String, ComplianceState>, usize) {
    let catalogue = std::sync::Arc::new(mtdgate::runtime::load_catalogue(cfg).unwrap());
    let mut engine = Engine::new(catalogue, Default::default());
    let mut c = cfg.clone();
    c.processing.snapshots = false;
    let partitions: Vec<i32> = (0..cfg.topics.partitions).collect();
    let mut found = RestoredStatuses::default();
    restore_partitions(&c, &mut engine, &partitions, &mut found).unwrap();
    let mut states = BTreeMap::new();
    for p in partitions {
        engine.partition_records(p, |key, r| {
            states.insert(key.to_owned(), r.compliance);
        });
    }
    let live = found.batches.values().map(BTreeMap::len).sum();
    (states, live)
}

/// Waits until a restore of the changelog shows every device COMPLIANT and no live batch.
fn wait_settled(cfg: &Config) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (states, live) = restore_all(cfg);
        let compliant = states
            .values()
            .filter(|s| **s == ComplianceState::Compliant)
            .count();
        if live == 0 && compliant == DEVICES && states.len() == DEVICES {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {live} live batch chunks, {compliant} of {} devices COMPLIANT",
            states.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn assert_exactly_one_flip(records: &[(String, Value)]) {
    let h = histories(records);
    assert_eq!(h.len(), DEVICES);
    for (device, states) in &h {
        assert_eq!(
            states,
            &["COMPLIANT", "NONCOMPLIANT", "COMPLIANT"],
            "history of {device}"
        );
    }
}

fn batch_config(name: &str) -> Config {
    let mut cfg = test_config(name);
    cfg.http.listen = "127.0.0.1:0".into();
    // About 100 devices a partition: a fan-out over them is a batch in each.
    cfg.processing.changelog_batch_min = 50;
    create_topics(&cfg);
    cfg
}

#[test]
fn a_batch_killed_before_its_commit_is_aborted_with_its_outputs() {
    let cfg = batch_config("batch-before");
    let gw = Gateway::new();
    let mut changes = prepare(&cfg, &gw);
    let child = start_child(&cfg, "batch-before", |c| {
        c.processing.adaptive_commit = false;
        c.processing.commit_interval_ms = 30_000;
    });
    let from = ends(&cfg);
    gw.send_all(&[policy(&cfg, "LOW", now_ms())]);
    gw.flush();
    // The flip is in the open transaction: its batches are in the log, not committed.
    wait_for_batches(&cfg, "read_uncommitted", &from);
    child.kill();
    assert_eq!(
        flips(changes.drain(Duration::from_secs(1))),
        0,
        "no flip may be visible before the commit"
    );

    let c = Service::start(&cfg);
    changes.wait_until("the flip, published on reconcile", WAIT, |r| {
        flips(r) == DEVICES
    });
    let records = changes.drain(Duration::from_secs(3)).to_vec();
    assert_exactly_one_flip(&records);
    for (_, v) in records
        .iter()
        .filter(|(_, v)| v["previous"] == "NONCOMPLIANT")
    {
        let cause = v["cause_event_id"].as_str().unwrap_or_default();
        assert!(cause.starts_with("reconcile:"), "{v:#}");
    }
    wait_settled(&cfg);
    c.stop();
}

#[test]
fn a_batch_killed_after_its_commit_is_restored_and_settled() {
    let cfg = batch_config("batch-after");
    let gw = Gateway::new();
    let mut changes = prepare(&cfg, &gw);
    let child = start_child(&cfg, "batch-after", |c| {
        // One device settled per commit, commits at most every 50 ms: settling the flip's
        // batches takes the child about 15 s.
        c.processing.changelog_settle_per_commit = 1;
        c.processing.commit_min_gap_ms = 50;
    });
    let from = ends(&cfg);
    gw.send_all(&[policy(&cfg, "LOW", now_ms())]);
    gw.flush();
    changes.wait_until("the flip, committed", WAIT, |r| flips(r) == DEVICES);
    wait_for_batches(&cfg, "read_committed", &from);
    child.kill();
    let (states, live) = restore_all(&cfg);
    assert!(
        live > 0,
        "the child settled every batch before it was killed"
    );
    assert_eq!(states.len(), DEVICES);
    assert!(
        states.values().all(|s| *s == ComplianceState::Compliant),
        "a restore through the unsettled batches gives the flip's state"
    );

    let c = Service::start(&cfg);
    let records = changes.drain(Duration::from_secs(3)).to_vec();
    assert_exactly_one_flip(&records);
    wait_settled(&cfg);
    c.stop();
}
