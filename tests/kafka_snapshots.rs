//! Partition snapshots on the real broker: a restore through the newest snapshot and the
//! changelog after it gives the same state as a restore of the whole changelog, and an
//! unusable snapshot (undecodable, or ahead of the changelog) falls back to the whole changelog.

mod support;

use std::time::{Duration, Instant};

use mtdgate::config::Config;
use mtdgate::engine::partitioner::partition_for;
use mtdgate::engine::Engine;
use mtdgate::runtime::restore::{restore_partitions, PartitionRestore, RestoredStatuses};
use mtdgate::runtime::snapshots::{write_snapshot, Image};
use mtdgate::telemetry::SnapshotFallback;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseProducer;
use std::collections::BTreeMap;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const DEVICES: usize = 300;

/// Runs the service over `DEVICES` enrolled devices, two rounds of reports with the snapshots
/// of every partition written between them, and stops it. Returns its configuration.
fn run_with_snapshots(name: &str) -> Config {
    let mut cfg = test_config(name);
    cfg.processing.snapshots = true;
    cfg.processing.snapshot_min_records = 50;
    cfg.processing.snapshot_min_interval_ms = 0;
    let gw = Gateway::new();
    let t = cfg.topics.clone();
    let svc = Service::start(&cfg);
    let now = svc.now();
    gw.setup_tables(&compliance_tables(&cfg, "MEDIUM", now));
    for d in 0..DEVICES {
        let id = format!("d{d}");
        gw.send(
            &t.device_enrollments,
            &format!("acme/{id}"),
            Some(&enrollment_json(&id, now)),
        );
    }
    gw.flush();
    let mut changes = Reader::new(&t.compliance_changes);
    changes.wait_for(DEVICES, WAIT);
    let round = |prefix: &str, state: &dyn Fn(usize) -> &'static str| {
        for d in 0..DEVICES {
            let id = format!("d{d}");
            let r = report_json(
                &format!("{prefix}{d}"),
                "lookout",
                &id,
                "MDM",
                state(d),
                svc.now(),
            );
            gw.send(&t.device_threats, &format!("acme/{id}"), Some(&r));
        }
        gw.flush();
    };
    round("a", &|_| "HIGH");
    changes.wait_for(2 * DEVICES, WAIT);
    wait_for_snapshots(&cfg);
    // After the snapshots: a tail of changes for half the devices.
    round("b", &|d| if d % 2 == 0 { "SECURED" } else { "HIGH" });
    changes.wait_for(2 * DEVICES + DEVICES / 2, WAIT);
    svc.stop();
    cfg
}

/// Waits until every partition of the snapshot topic holds a record.
fn wait_for_snapshots(cfg: &Config) {
    let consumer: BaseConsumer = client(&cfg.kafka.bootstrap_servers).create().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let written = (0..cfg.topics.partitions)
            .filter(|&p| {
                consumer
                    .fetch_watermarks(
                        &cfg.topics.device_state_snapshots,
                        p,
                        Duration::from_secs(5),
                    )
                    .is_ok_and(|(_, high)| high > 0)
            })
            .count();
        if written == cfg.topics.partitions as usize {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots of {written} of {} partitions",
            cfg.topics.partitions
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Restores every partition into a fresh engine, on `threads` threads.
fn restore(
    cfg: &Config,
    snapshots: bool,
    threads: usize,
) -> (Engine, RestoredStatuses, BTreeMap<i32, PartitionRestore>) {
    let mut cfg = cfg.clone();
    cfg.processing.snapshots = snapshots;
    cfg.processing.restore_threads = threads;
    let mut engine = world::engine();
    let mut statuses = RestoredStatuses::default();
    let all: Vec<i32> = (0..cfg.topics.partitions).collect();
    let counts = restore_partitions(&cfg, &mut engine, &all, &mut statuses).unwrap();
    (engine, statuses, counts)
}

/// Every device's state record and every connector status agree.
fn assert_same_state(
    cfg: &Config,
    a: (&Engine, &RestoredStatuses),
    b: (&Engine, &RestoredStatuses),
) {
    assert_eq!(a.0.device_count(), DEVICES);
    assert_eq!(b.0.device_count(), DEVICES);
    for d in 0..DEVICES {
        let id = format!("d{d}");
        let p = partition_for(format!("acme/{id}").as_bytes(), cfg.topics.partitions);
        let (ra, rb) = (
            a.0.device_record(p, "acme", &id),
            b.0.device_record(p, "acme", &id),
        );
        assert!(ra.is_some(), "{id} restored");
        assert_eq!(ra, rb, "state of {id}");
    }
    assert_eq!(a.1.published, b.1.published);
    assert!(!a.1.published.is_empty(), "a connector status was restored");
    assert_eq!(a.1.records, b.1.records);
}

#[test]
fn snapshot_and_tail_restore_equals_the_full_changelog() {
    let cfg = run_with_snapshots("snap-tail");
    let (full, full_statuses, full_counts) = restore(&cfg, false, 1);
    // Partitions restored side by side (one tenant: every thread interns its users) give the
    // state one thread gives.
    let (side, side_statuses, side_counts) = restore(&cfg, false, 3);
    assert_eq!(side_counts, full_counts);
    assert_same_state(&cfg, (&side, &side_statuses), (&full, &full_statuses));
    let (snap, snap_statuses, counts) = restore(&cfg, true, 3);
    for (p, c) in &counts {
        assert_eq!(c.fallback, None, "partition {p}: {c:?}");
        assert!(
            c.snapshot > 0,
            "partition {p} restored from a snapshot: {c:?}"
        );
        assert!(
            c.changelog < full_counts[p].changelog,
            "partition {p} read only a tail: {c:?} vs {:?}",
            full_counts[p]
        );
    }
    assert!(
        counts.values().any(|c| c.changelog > 0),
        "some changes came after the snapshots: {counts:?}"
    );
    assert_same_state(&cfg, (&snap, &snap_statuses), (&full, &full_statuses));
}

#[test]
fn an_unusable_snapshot_falls_back_to_the_full_changelog() {
    let cfg = run_with_snapshots("snap-corrupt");
    let producer: BaseProducer = client(&cfg.kafka.bootstrap_servers).create().unwrap();
    let consumer: BaseConsumer = client(&cfg.kafka.bootstrap_servers).create().unwrap();
    let high = |p: i32| {
        consumer
            .fetch_watermarks(&cfg.topics.device_state, p, Duration::from_secs(5))
            .unwrap()
            .1
    };
    // Partition 0: a newer, well-formed snapshot whose record does not decode.
    let mut bad = Image::default();
    bad.push(b"acme/d0", b"not a device state record");
    let topic = &cfg.topics.device_state_snapshots;
    write_snapshot(&producer, topic, 0, high(0), &bad, 0).unwrap();
    // Partition 1: a snapshot covering more than the changelog holds.
    write_snapshot(
        &producer,
        topic,
        1,
        high(1) + 1_000_000,
        &Image::default(),
        0,
    )
    .unwrap();

    let (full, full_statuses, _) = restore(&cfg, false, 1);
    let (snap, snap_statuses, counts) = restore(&cfg, true, 2);
    assert_eq!(
        counts[&0].fallback,
        Some(SnapshotFallback::Corrupt),
        "{counts:?}"
    );
    assert_eq!(counts[&0].snapshot, 0);
    assert_eq!(
        counts[&1].fallback,
        Some(SnapshotFallback::Ahead),
        "{counts:?}"
    );
    assert_eq!(counts[&2].fallback, None, "{counts:?}");
    assert!(counts[&2].snapshot > 0);
    assert_same_state(&cfg, (&snap, &snap_statuses), (&full, &full_statuses));
}
