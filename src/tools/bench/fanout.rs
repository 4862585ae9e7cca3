//! A connector flipping to ignored over a tenant's devices, through the real pipeline.
//!
//! mtdgate runs in this process with a `ShiftedClock`; its changelog is pre-written with N
//! enrolled devices of one tenant, COMPLIANT on Lookout's data, so the instance restores them on
//! assignment (and reconciles: nothing changes). Then the clock moves 8 days: Lookout's silence
//! passes `unresponsive_threshold_days` (7), its data is ignored and every device turns
//! NOT_EVALUATED. The figure is the time from moving the clock until a read_committed reader has
//! all N compliance changes: timer, re-evaluation, encoding, produce of the outputs and of the
//! N changelog records (or, with changelog batches on, a few batch records per partition:
//! `runtime::changelog_batches`), transaction commit, and the read back.
//!
//! Baseline (bar: 1.2x): a plain transactional producer writing the N outputs alone, of the
//! same size, in one transaction, read back by the same reader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::tools::simulate::group;
use mtdgate::codec::{self, OutputEncoding};
use mtdgate::engine::{Engine, Output};
use mtdgate::model::DeviceStateRecord;
use mtdgate::runtime::clock::{Clock, ShiftedClock, SystemClock};
use mtdgate::runtime::kafka::{await_deliveries, producer_config};

use super::kafka::{flush, read_n, send, send_tables, warm, BenchEnv, Instance};
use super::restore::write_changelog;
use super::world::{self, fanout_device, fanout_device_id, fanout_tables, Tables, DAY};
use super::{Bar, Figure, Report, Sizes, Unit};

pub(super) const TENANT: &str = "fanout";
pub(super) const PARTITIONS_IN_MEMORY: usize = 12;

/// An engine holding the tenant's tables (connector, policies, heartbeat at `now`).
pub(super) fn engine_with_tables(now: i64) -> anyhow::Result<Engine> {
    let mut engine = world::engine();
    let out = fanout_tables(TENANT, now).apply(&mut engine, now);
    anyhow::ensure!(
        !out.iter().any(|o| matches!(o, Output::Rejected(_))),
        "fan-out tables rejected: {out:?}"
    );
    Ok(engine)
}

pub(super) fn key_of(r: &DeviceStateRecord) -> String {
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
/// `(evaluate, evaluate + encode, the changelog then drained and encoded: [`drain_encoded`])`.
#[allow(clippy::type_complexity)]
fn engine_only(
    n: usize,
    now: i64,
    encoding: OutputEncoding,
) -> anyhow::Result<(f64, f64, (usize, f64, usize))> {
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
    let drained = drain_encoded(&engine)?;
    Ok((evaluate, total, drained))
}

/// Drains every in-memory partition's changelog and encodes each record as the runtime
/// writes it (Avro): `(records, seconds, mean size)`.
pub(super) fn drain_encoded(engine: &Engine) -> anyhow::Result<(usize, f64, usize)> {
    let t = Instant::now();
    let (mut records, mut bytes) = (0usize, 0usize);
    let mut buf = Vec::with_capacity(256);
    let mut failed = None;
    for p in 0..PARTITIONS_IN_MEMORY as i32 {
        engine.drain_changelog(p, |_, r| {
            buf.clear();
            if let Err(e) = r
                .as_ref()
                .map_or(Ok(()), |r| codec::encode(r, OutputEncoding::Avro, &mut buf))
            {
                failed.get_or_insert(e);
            }
            records += 1;
            bytes += buf.len();
        });
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok((records, t.elapsed().as_secs_f64(), bytes / records.max(1)))
}

/// The Kafka floor: the N outputs alone in one transaction, read back. `label`
/// names its topics (unique per call in a run).
fn baseline(env: &BenchEnv, label: &str, n: usize, output: &[u8]) -> anyhow::Result<(f64, f64)> {
    let cfg = env.config(label, true);
    let out_topic = env.topic(&format!("{label}.out"));
    env.create_topic(&out_topic, env.partitions, false)?;
    let producer: BaseProducer = producer_config(&cfg, Some(&format!("bench-{label}"))).create()?;
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
    }
    await_deliveries(&producer, Duration::from_secs(120))?;
    producer.commit_transaction(Duration::from_secs(120))?;
    let (first, last) = reading
        .join()
        .map_err(|_| anyhow::anyhow!("baseline reader panicked"))??;
    Ok(((first - t0).as_secs_f64(), (last - t0).as_secs_f64()))
}

/// A flip of N devices of tenant [`TENANT`] through the real pipeline, driven by the clock.
pub(super) struct Flip<'a> {
    /// Names the run's topics and consumer group (unique per flip in a run), and the lines
    /// printed (`""` for the fan-out part's own).
    pub label: &'a str,
    /// The tenant's table records.
    pub tables: &'a Tables,
    /// The changelog record of device `i` before the flip.
    pub device: &'a dyn Fn(usize) -> DeviceStateRecord,
    /// How far the clock moves to start the flip.
    pub shift_ms: i64,
    /// One real output of the flip: the size of the baseline's records.
    pub output: &'a [u8],
    /// Also sample the high watermarks of the output and changelog topics during the flip
    /// ([`Watermarks`]), for a breakdown of where the time goes.
    pub watch: bool,
}

/// What one [`Flip`] measured, in seconds from moving the clock (the baseline's: from its
/// first send).
#[derive(Debug, Clone)]
pub(super) struct Flipped {
    pub visible: f64,
    pub all: f64,
    pub base_visible: f64,
    pub base_all: f64,
    /// The first and the last output read back (to check what was published).
    pub first_output: Vec<u8>,
    pub last_output: Vec<u8>,
}

/// Pre-writes the changelog, starts mtdgate with a `ShiftedClock` (it restores and reconciles
/// the devices: nothing may come out, which is checked), moves the clock and reads the N
/// outputs back; then the baseline with the same number of records of the same sizes.
pub(super) fn end_to_end(env: &BenchEnv, n: usize, flip: &Flip<'_>) -> anyhow::Result<Flipped> {
    let label = if flip.label.is_empty() {
        "fanout"
    } else {
        flip.label
    };
    let say = if flip.label.is_empty() {
        String::new()
    } else {
        format!("{}: ", flip.label)
    };
    let cfg = env.config(label, true);
    env.create_all(&cfg)?;
    let producer = env.producer()?;
    send_tables(&producer, &cfg.topics, flip.tables)?;
    flush(&producer)?;
    let t = Instant::now();
    let state_size = write_changelog(env, &cfg.topics.device_state, n, flip.device)?;
    println!(
        "  {say}changelog: {} devices of tenant {TENANT:?} ({state_size} B each) written in {:.1} s",
        group(n as u64),
        t.elapsed().as_secs_f64()
    );
    let clock = ShiftedClock::new();
    let started = Instant::now();
    let mut svc = Instance::start(&cfg, Arc::new(clock.clone()));
    svc.wait_ready(Duration::from_secs(600))?;
    println!(
        "  {say}mtdgate ready (tables, group join, restore of {} devices) after {:.1} s",
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
    let (mut first_output, mut last_output) = (Vec::new(), Vec::new());
    let mut got = 0usize;
    let watcher = if flip.watch {
        Some(Watermarks::start(
            env,
            [
                cfg.topics.compliance_changes.clone(),
                cfg.topics.device_state.clone(),
            ],
            n as i64,
        )?)
    } else {
        None
    };
    let t0 = Instant::now();
    clock.advance(flip.shift_ms);
    let read = read_n(&reader, n, Duration::from_secs(600), |m| {
        got += 1;
        if got == 1 || got == n {
            let payload = m.payload().unwrap_or_default().to_vec();
            if got == 1 {
                first_output = payload.clone();
            }
            last_output = payload;
        }
    });
    svc.check_alive()?;
    svc.stop()?;
    let (first, last) = read?;
    let (visible, all) = ((first - t0).as_secs_f64(), (last - t0).as_secs_f64());
    println!(
        "  {say}mtdgate: first change visible after {visible:.2} s (the whole flip is one \
         transaction), all {} read back after {all:.2} s",
        group(n as u64)
    );
    if let Some(w) = watcher {
        let [outputs, changelog] = w.stop();
        let at = |i: Option<Instant>| {
            i.map_or_else(
                || "-".to_owned(),
                |i| format!("{:.2} s", (i - t0).as_secs_f64()),
            )
        };
        println!(
            "  {say}high watermarks (sampled every 50 ms): outputs first appended {}, all {}; \
             changelog first {}, all {}",
            at(outputs.0),
            at(outputs.1),
            at(changelog.0),
            at(changelog.1)
        );
    }

    let (base_visible, base_all) = baseline(env, &format!("{label}-base"), n, flip.output)?;
    println!(
        "  {say}baseline: the {} outputs alone ({} B each) in one transaction: visible after \
         {base_visible:.2} s, all read back after {base_all:.2} s",
        group(n as u64),
        flip.output.len(),
    );
    Ok(Flipped {
        visible,
        all,
        base_visible,
        base_all,
        first_output,
        last_output,
    })
}

/// Samples the summed high watermarks of two topics every 50 ms from a thread (read_uncommitted
/// offsets: records appended, committed or not, transaction markers included): for each, the
/// first sample above its starting sum and the first at `n` above it.
pub(super) struct Watermarks {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<[(Option<Instant>, Option<Instant>); 2]>,
}

impl Watermarks {
    fn start(env: &BenchEnv, topics: [String; 2], n: i64) -> anyhow::Result<Watermarks> {
        // read_uncommitted: the high watermark, not the last stable offset.
        let consumer: BaseConsumer = env
            .client()
            .set("isolation.level", "read_uncommitted")
            .create()?;
        let partitions = env.partitions;
        let sum = move |c: &BaseConsumer, topic: &str| -> i64 {
            (0..partitions)
                .filter_map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).ok())
                .map(|(_, high)| high)
                .sum()
        };
        let from = [sum(&consumer, &topics[0]), sum(&consumer, &topics[1])];
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = [(None, None); 2];
            while !stopping.load(Ordering::SeqCst) {
                for (k, topic) in topics.iter().enumerate() {
                    let grown = sum(&consumer, topic) - from[k];
                    let now = Instant::now();
                    if grown > 0 && seen[k].0.is_none() {
                        seen[k].0 = Some(now);
                    }
                    if grown >= n && seen[k].1.is_none() {
                        seen[k].1 = Some(now);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        Ok(Watermarks { stop, thread })
    }

    fn stop(self) -> [(Option<Instant>, Option<Instant>); 2] {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or([(None, None); 2])
    }
}

/// The fan-out part's flip (a connector going unresponsive), engine only and end to end:
/// `(evaluate, evaluate + encode, end to end)`.
pub(super) fn measure(
    env: &BenchEnv,
    n: usize,
    label: &str,
    watch: bool,
) -> anyhow::Result<(f64, f64, Flipped)> {
    let now = SystemClock.now_ms();
    let sample = sanity(now, env.encoding)?;
    let say = if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    };
    let (evaluate, total, (records, secs, size)) = engine_only(n, now, env.encoding)?;
    println!(
        "  {say}engine only: {} devices re-evaluated in {:.3} s, {:.3} s with encoding ({} B per \
         change)",
        group(n as u64),
        evaluate,
        total,
        sample.len()
    );
    println!(
        "    (then its changelog: {} records drained and Avro-encoded in {secs:.3} s, {size} B on \
         average; not in the figure)",
        group(records as u64)
    );
    let tables = fanout_tables(TENANT, now);
    let flip = Flip {
        label,
        tables: &tables,
        device: &|i| fanout_device(i, TENANT, now),
        shift_ms: 8 * DAY,
        output: &sample,
        watch,
    };
    let flipped = end_to_end(env, n, &flip)?;
    Ok((evaluate, total, flipped))
}

pub fn run(env: &BenchEnv, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let n = sizes.fanout_devices;
    let (_, total, f) = measure(env, n, "", false)?;
    let name = group(n as u64);
    report.push(
        Figure::new(
            format!("fan-out {name} devices, end to end"),
            f.all,
            Unit::Seconds,
        )
        .baseline(f.base_all)
        .bar(Bar::RatioAtMost(1.2)),
    );
    report.push(
        Figure::new(
            format!("fan-out {name} devices, first visible"),
            f.visible,
            Unit::Seconds,
        )
        .baseline(f.base_visible),
    );
    report.push(
        Figure::new(
            format!("fan-out {name} devices, engine only"),
            total,
            Unit::Seconds,
        )
        .bar(Bar::AtMost(0.5)),
    );
    Ok(())
}
