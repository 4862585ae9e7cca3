//! Device states/s restored by `runtime::restore::restore_partitions` from the whole changelog,
//! and from snapshots of every partition (`runtime::snapshots`, written the way the pipeline
//! writes them), each on one thread and on one thread per core, against reading the
//! changelog's partitions the same way (`read_to_end`, one partition after the other, same
//! fetch settings) without decoding or applying.

use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};

use crate::tools::simulate::group;
use mtdgate::codec::{self, OutputEncoding};
use mtdgate::engine::partitioner::partition_for;
use mtdgate::runtime::clock::{Clock, SystemClock};
use mtdgate::runtime::restore::{read_to_end, restore_partitions, RestoredStatuses};
use mtdgate::runtime::snapshots::{write_snapshot, Image};

use super::kafka::{flush, send, BenchEnv};
use super::world;
use super::{Bar, Figure, Report, Sizes, Unit};

/// Writes `n` state records made by `make` to `topic`, each to its key's partition, the way
/// mtdgate's changelog producer does (lz4, batches). Returns the mean record size.
pub fn write_changelog(
    env: &BenchEnv,
    topic: &str,
    n: usize,
    make: impl Fn(usize) -> mtdgate::model::DeviceStateRecord,
) -> anyhow::Result<usize> {
    let producer = env.producer()?;
    let mut buf = Vec::with_capacity(256);
    let mut bytes = 0usize;
    for i in 0..n {
        let r = make(i);
        buf.clear();
        codec::encode(&r, OutputEncoding::Avro, &mut buf)?;
        bytes += buf.len();
        let key = format!("{}/{}", r.tenant_id, r.device_id);
        let partition = partition_for(key.as_bytes(), env.partitions);
        send(
            &producer,
            BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(&buf[..])
                .partition(partition),
        )?;
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    flush(&producer)?;
    Ok(bytes / n.max(1))
}

pub fn run(env: &BenchEnv, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let n = sizes.restore_devices;
    let mut cfg = env.config("restore", true);
    cfg.topics.device_state = env.topic("restore.device-state");
    env.create_topic(&cfg.topics.device_state, env.partitions, true)?;
    let now = SystemClock.now_ms();
    let started = Instant::now();
    let size = write_changelog(env, &cfg.topics.device_state, n, |i| {
        world::mixed_state(i, 1_000, now)
    })?;
    println!(
        "  changelog: {} device states ({size} B Avro on average, 1,000 tenants) written in {:.1} s",
        group(n as u64),
        started.elapsed().as_secs_f64()
    );

    // Baseline first, so both read from the broker's page cache.
    let all: Vec<i32> = (0..env.partitions).collect();
    let t = Instant::now();
    let mut read = 0;
    for p in 0..env.partitions {
        read += read_to_end(&cfg, &cfg.topics.device_state, &[p], "raw", |m| {
            std::hint::black_box((m.key(), m.payload()));
            Ok(())
        })?
        .values()
        .sum::<usize>();
    }
    let raw_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(read == n, "raw read found {read} of {n} records");

    // The whole changelog, as without snapshots: on one thread, then one per core.
    cfg.processing.snapshots = false;
    let restore_all = |cfg: &mut mtdgate::config::Config, threads: usize| {
        cfg.processing.restore_threads = threads;
        let mut engine = world::engine();
        let t = Instant::now();
        let mut statuses = RestoredStatuses::default();
        let counts = restore_partitions(cfg, &mut engine, &all, &mut statuses)?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            engine.device_count() == n,
            "restored {} devices of {n}: {counts:?}",
            engine.device_count()
        );
        Ok((engine, counts, secs))
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let (_, _, secs_one) = restore_all(&mut cfg, 1)?;
    let (engine, counts, secs) = restore_all(&mut cfg, 0)?;
    let restored: usize = counts.values().map(|r| r.records()).sum();
    anyhow::ensure!(restored == n, "restored {restored} records of {n}");

    // A snapshot of every partition, taken from the restored engine as the pipeline takes
    // them, then a restore through them (the changelog tail after them is empty).
    cfg.processing.snapshots = true;
    cfg.topics.device_state_snapshots = env.topic("restore.device-state-snapshots");
    env.create_topic(&cfg.topics.device_state_snapshots, env.partitions, true)?;
    let producer = env.producer()?;
    let t = Instant::now();
    let mut snapshot_bytes = 0;
    for &p in &all {
        let (_, high) = producer.client().fetch_watermarks(
            &cfg.topics.device_state,
            p,
            Duration::from_secs(10),
        )?;
        let mut image = Image::default();
        let mut buf = Vec::new();
        engine.partition_records(p, |key, record| {
            buf.clear();
            if codec::encode(record, OutputEncoding::Avro, &mut buf).is_ok() {
                image.push(key.as_bytes(), &buf);
            }
        });
        snapshot_bytes += write_snapshot(
            &producer,
            &cfg.topics.device_state_snapshots,
            p,
            high,
            &image,
            0,
        )?;
    }
    let write_secs = t.elapsed().as_secs_f64();
    drop(engine);
    let (_, _, snap_one) = restore_all(&mut cfg, 1)?;
    let (_, counts, snap_secs) = restore_all(&mut cfg, 0)?;
    let from_snapshot: usize = counts.values().map(|r| r.snapshot).sum();
    anyhow::ensure!(
        from_snapshot == n,
        "restored {from_snapshot} snapshot entries of {n}: {counts:?}"
    );
    println!(
        "    raw read {:.2} s; from the changelog {:.2} s on 1 thread, {:.2} s on {cores}; \
         snapshots written in {:.2} s ({:.1} B/device compressed); from them {:.2} s on 1 \
         thread, {:.2} s on {cores}; {} partitions",
        raw_secs,
        secs_one,
        secs,
        write_secs,
        snapshot_bytes as f64 / n as f64,
        snap_one,
        snap_secs,
        env.partitions
    );
    let unit = Unit::PerSecond("states");
    let name = |what: &str| format!("restore, {} devices, {what}", group(n as u64));
    report.push(
        Figure::new(
            name("from the changelog, 1 thread"),
            n as f64 / secs_one,
            unit,
        )
        .baseline(n as f64 / raw_secs),
    );
    report.push(
        Figure::new(
            name(&format!("from the changelog, {cores} threads")),
            n as f64 / secs,
            unit,
        )
        .baseline(n as f64 / secs_one),
    );
    report.push(
        Figure::new(name("from snapshots, 1 thread"), n as f64 / snap_one, unit)
            .baseline(n as f64 / raw_secs),
    );
    report.push(
        Figure::new(
            name(&format!("from snapshots, {cores} threads")),
            n as f64 / snap_secs,
            unit,
        )
        .baseline(n as f64 / snap_one)
        .bar(Bar::AtLeast(1_000_000.0)),
    );
    Ok(())
}
