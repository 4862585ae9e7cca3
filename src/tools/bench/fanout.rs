//! A connector flipping to ignored over a tenant's devices, through the real pipeline.
//!
//! mtdgate runs in this process with a `ShiftedClock`; its changelog is pre-written with N
//! enrolled devices of one tenant, COMPLIANT on Lookout's data, so the instance restores them on
//! assignment (and reconciles: nothing changes). Then the clock moves 8 days: Lookout's silence
//! passes `unresponsive_threshold_days` (7), its data is ignored and every device turns
//! NOT_EVALUATED. The figure is the time from moving the clock until a read_committed reader has
//! all N compliance changes: timer, re-evaluation, encoding, produce of the outputs and of the
//! N changelog records, transaction commit, and the read back.
//!
//! Baseline: a plain transactional producer writing the same number of records of the same
//! sizes (N outputs + N changelog records) in one transaction, read back by the same reader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::tools::simulate::group;
use mtdgate::codec::{self, OutputEncoding};
use mtdgate::engine::partitioner::partition_for;
use mtdgate::engine::{Engine, Output};
use mtdgate::model::DeviceStateRecord;
use mtdgate::runtime::clock::{Clock, ShiftedClock, SystemClock};
use mtdgate::runtime::kafka::{await_deliveries, producer_config};

use super::kafka::{flush, read_n, send, send_tables, warm, BenchEnv, Instance};
use super::restore::write_changelog;
use super::world::{self, fanout_device, fanout_device_id, fanout_tables, DAY};
use super::{Bar, Figure, Report, Sizes, Unit};

const TENANT: &str = "fanout";
const PARTITIONS_IN_MEMORY: usize = 12;

/// An engine holding the tenant's tables (connector, policies, heartbeat at `now`).
fn engine_with_tables(now: i64) -> anyhow::Result<Engine> {
    let mut engine = world::engine();
    let out = fanout_tables(TENANT, now).apply(&mut engine, now);
    anyhow::ensure!(
        !out.iter().any(|o| matches!(o, Output::Rejected(_))),
        "fan-out tables rejected: {out:?}"
    );
    Ok(engine)
}

fn key_of(r: &DeviceStateRecord) -> String {
    format!("{}/{}", r.tenant_id, r.device_id)
}

/// Checks the generated state is what the tables decide (a restore changes nothing) and that
/// the flip changes every device; returns one real output for the baseline's record size.
fn sanity(now: i64, encoding: OutputEncoding) -> anyhow::Result<Vec<u8>> {
    let mut engine = engine_with_tables(now)?;
    for i in 0..4 {
        let r = fanout_device(i, TENANT, now);
        engine.restore(0, &key_of(&r), Some(&r))?;
    }
    let mut out = Vec::new();
    engine.reconcile(0, now, &mut out);
    anyhow::ensure!(
        out.is_empty(),
        "generated state disagrees with its tables: {out:?}"
    );
    engine.advance(now + 8 * DAY, &mut out);
    let changes: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Compliance(c) => Some(c),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        changes.len() == 4,
        "the flip changed {} of 4",
        changes.len()
    );
    let mut buf = Vec::new();
    codec::encode(changes[0], encoding, &mut buf)?;
    Ok(buf)
}

/// The fan-out in the engine alone: evaluate + encode every output, no Kafka.
fn engine_only(n: usize, now: i64, encoding: OutputEncoding) -> anyhow::Result<(f64, f64)> {
    let mut engine = engine_with_tables(now)?;
    for i in 0..n {
        let r = fanout_device(i, TENANT, now);
        engine.restore((i % PARTITIONS_IN_MEMORY) as i32, &key_of(&r), Some(&r))?;
    }
    let mut out = Vec::with_capacity(n + 4);
    let mut buf = Vec::with_capacity(512);
    let t = Instant::now();
    engine.advance(now + 8 * DAY, &mut out);
    let evaluate = t.elapsed().as_secs_f64();
    for o in &out {
        buf.clear();
        if let Output::Compliance(c) = o {
            codec::encode(c, encoding, &mut buf)?;
        }
        std::hint::black_box(&buf);
    }
    let total = t.elapsed().as_secs_f64();
    let changes = out
        .iter()
        .filter(|o| matches!(o, Output::Compliance(_)))
        .count();
    anyhow::ensure!(changes == n, "engine-only flip changed {changes} of {n}");
    Ok((evaluate, total))
}

/// The Kafka floor: N outputs + N changelog records in one transaction, read back.
fn baseline(env: &BenchEnv, n: usize, output: &[u8], state: &[u8]) -> anyhow::Result<(f64, f64)> {
    let cfg = env.config("fanout-base", true);
    let out_topic = env.topic("fanout-base.out");
    let state_topic = env.topic("fanout-base.state");
    env.create_topic(&out_topic, env.partitions, false)?;
    env.create_topic(&state_topic, env.partitions, true)?;
    let producer: BaseProducer = producer_config(&cfg, Some("bench-fanout-base")).create()?;
    producer.init_transactions(Duration::from_secs(60))?;
    let reader = env.reader(&out_topic, env.partitions)?;
    warm(&reader, Duration::from_secs(1));
    let t0 = Instant::now();
    // The reader polls from the start, in its own thread, as it does for mtdgate.
    let reading = std::thread::spawn(move || read_n(&reader, n, Duration::from_secs(600), |_| {}));
    producer.begin_transaction()?;
    for i in 0..n {
        let key = format!("{TENANT}/{}", fanout_device_id(i));
        send(
            &producer,
            BaseRecord::to(&out_topic)
                .key(key.as_bytes())
                .payload(output),
        )?;
        send(
            &producer,
            BaseRecord::to(&state_topic)
                .key(key.as_bytes())
                .payload(state)
                .partition(partition_for(key.as_bytes(), env.partitions)),
        )?;
    }
    await_deliveries(&producer, Duration::from_secs(120))?;
    producer.commit_transaction(Duration::from_secs(120))?;
    let (first, last) = reading
        .join()
        .map_err(|_| anyhow::anyhow!("baseline reader panicked"))??;
    Ok(((first - t0).as_secs_f64(), (last - t0).as_secs_f64()))
}

pub fn run(env: &BenchEnv, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let n = sizes.fanout_devices;
    let now = SystemClock.now_ms();
    let sample = sanity(now, env.encoding)?;

    let (evaluate, total) = engine_only(n, now, env.encoding)?;
    println!(
        "  engine only: {} devices re-evaluated in {:.3} s, {:.3} s with encoding ({} B per change)",
        group(n as u64),
        evaluate,
        total,
        sample.len()
    );

    let cfg = env.config("fanout", true);
    env.create_all(&cfg)?;
    let producer = env.producer()?;
    send_tables(&producer, &cfg.topics, &fanout_tables(TENANT, now))?;
    flush(&producer)?;
    let t = Instant::now();
    let state_size = write_changelog(env, &cfg.topics.device_state, n, |i| {
        fanout_device(i, TENANT, now)
    })?;
    println!(
        "  changelog: {} devices of tenant {TENANT:?} written in {:.1} s",
        group(n as u64),
        t.elapsed().as_secs_f64()
    );
    let clock = ShiftedClock::new();
    let started = Instant::now();
    let mut svc = Instance::start(&cfg, Arc::new(clock.clone()));
    svc.wait_ready(Duration::from_secs(600))?;
    println!(
        "  mtdgate ready (tables, group join, restore of {} devices) after {:.1} s",
        group(n as u64),
        started.elapsed().as_secs_f64()
    );
    let reader = env.reader(&cfg.topics.compliance_changes, env.partitions)?;
    // Nothing may come out of the restore itself.
    let early = warm(&reader, Duration::from_secs(1));
    anyhow::ensure!(
        early == 0,
        "{early} compliance changes appeared before the clock moved"
    );
    let t0 = Instant::now();
    clock.advance(8 * DAY);
    let read = read_n(&reader, n, Duration::from_secs(600), |_| {});
    svc.check_alive()?;
    svc.stop()?;
    let (first, last) = read?;
    let (visible, all) = ((first - t0).as_secs_f64(), (last - t0).as_secs_f64());
    println!(
        "  mtdgate: first change visible after {visible:.2} s (the whole flip is one transaction), \
         all {} read back after {all:.2} s",
        group(n as u64)
    );

    let mut state = Vec::new();
    let mut r = fanout_device(0, TENANT, now);
    r.compliance = mtdgate::model::ComplianceState::NotEvaluated;
    codec::encode(&r, OutputEncoding::Avro, &mut state)?;
    let (b_visible, b_all) = baseline(env, n, &sample, &state)?;
    println!(
        "  baseline: {} outputs ({} B) + {} changelog records ({} B, {state_size} B as written) in \
         one transaction: visible after {b_visible:.2} s, all read back after {b_all:.2} s",
        group(n as u64),
        sample.len(),
        group(n as u64),
        state.len()
    );
    let name = group(n as u64);
    report.push(
        Figure::new(
            format!("fan-out {name} devices, end to end"),
            all,
            Unit::Seconds,
        )
        .baseline(b_all)
        .bar(Bar::AtMost(2.0)),
    );
    report.push(
        Figure::new(
            format!("fan-out {name} devices, first visible"),
            visible,
            Unit::Seconds,
        )
        .baseline(b_visible),
    );
    report.push(Figure::new(
        format!("fan-out {name} devices, engine only"),
        total,
        Unit::Seconds,
    ));
    Ok(())
}
