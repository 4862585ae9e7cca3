//! Core benchmarks on one core: decoding device threat reports, decoding plus evaluating them
//! against a realistic population, and the fan-out when a connector's data becomes ignored.
//!
//! ```text
//! cargo bench --bench core -- --warm-up-time 1 --measurement-time 5
//! ```
//!
//! Bars (DESIGN.md): >= 1,000,000 Avro reports/s decode + evaluate on one core; a connector
//! flipping to ignored re-evaluates and publishes 1,000,000 affected devices in <= 2 s.
//!
//! Timed regions use the wall clock. With `MTDGATE_BENCH_CLOCK=thread-cpu` they use the
//! benchmark thread's CPU time instead, which keeps other processes on a shared machine from
//! inflating the per-core figures.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use mtdgate::codec::{self, OutputEncoding};
use mtdgate::engine::partitioner::partition_for;
use mtdgate::engine::{Body, Engine, Event, Output};
use mtdgate::model::*;

/// The world builders the tests and `mtdgate bench` share.
#[path = "../tests/support/world.rs"]
mod world;

use world::{apply, Member, Rng, DAY, LOOKOUT, MDE, T0};

/// The allocator the `mtdgate` binary uses, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 12;

const TENANTS: usize = 1_000;
const DEVICES: usize = 100_000;
/// Rounds over every device pre-encoded at once; re-encoded (untimed) with later timestamps
/// when the stream is used up, so no report is ever stale or a duplicate.
const ROUNDS: usize = 2;
/// Reports between changelog drains (one runtime transaction).
const BATCH: usize = 10_000;
const FANOUT_DEVICES: usize = 1_000_000;
/// Changelog records restored per sample of `restore_apply`.
const RESTORE_DEVICES: usize = 200_000;

/// Where timed regions read the time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Clock {
    Wall,
    ThreadCpu,
}

fn clock() -> Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    *CLOCK.get_or_init(|| {
        let clock = match std::env::var("MTDGATE_BENCH_CLOCK").as_deref() {
            Ok("thread-cpu") => Clock::ThreadCpu,
            Ok("wall") | Err(_) => Clock::Wall,
            Ok(other) => panic!("MTDGATE_BENCH_CLOCK={other}: expected wall or thread-cpu"),
        };
        println!("timed regions use the {clock:?} clock");
        clock
    })
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock_id: i32, tp: *mut Timespec) -> i32;
}

/// CPU time of the calling thread (Linux `CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A start mark of the configured clock.
#[derive(Clone, Copy)]
enum Mark {
    Wall(Instant),
    Cpu(Duration),
}

impl Mark {
    fn now() -> Mark {
        match clock() {
            Clock::Wall => Mark::Wall(Instant::now()),
            Clock::ThreadCpu => Mark::Cpu(thread_cpu_time()),
        }
    }

    fn elapsed(self) -> Duration {
        match self {
            Mark::Wall(at) => at.elapsed(),
            Mark::Cpu(at) => thread_cpu_time().saturating_sub(at),
        }
    }
}

/// One device of the population and its current health.
struct Device {
    member: Member,
    key: String,
    partition: i32,
    /// Moved by a small Markov chain: mostly SECURED/LOW, now and then an infection that is
    /// later remediated.
    health: HealthState,
}

/// The realistic population of the decode + evaluate benchmark.
struct World {
    engine: Engine,
    tenants: Vec<String>,
    devices: Vec<Device>,
    rng: Rng,
    /// Wall clock: never behind any report's `observed_at`.
    now: i64,
}

impl World {
    /// `tenants` tenants with Lookout (every third also with Defender), `devices` devices of
    /// the mixed population spread over them (four in five enrolled, the rest MAM), each with
    /// a first report from each of its partners applied.
    fn new(tenants: usize, devices: usize) -> World {
        let mut rng = Rng(7);
        let mut engine = world::engine();
        let now = T0;
        let tenant_ids: Vec<String> = (0..tenants).map(|_| rng.uuid()).collect();
        for (i, t) in tenant_ids.iter().enumerate() {
            world::mixed_tables(t, world::partners_of(i), now).apply_all(&mut engine, now);
        }
        let mut world = World {
            engine,
            tenants: tenant_ids,
            devices: Vec::with_capacity(devices),
            rng,
            now,
        };
        let mut out = Vec::new();
        for i in 0..devices {
            let member = world::member(i, tenants);
            let tenant = &world.tenants[member.tenant];
            let key = format!("{tenant}/{}", member.device_id);
            let partition = partition_for(key.as_bytes(), PARTITIONS);
            if let Some(e) = member.enrollment(tenant, T0) {
                let body = Body::Enrollment(Some(e));
                apply(&mut world.engine, partition, &key, body, now, &mut out);
            }
            world.devices.push(Device {
                member,
                key,
                partition,
                health: HealthState::Secured,
            });
        }
        // A first report from every partner of every device.
        for i in 0..devices {
            for &p in world.devices[i].member.partners {
                let r = world.report(i, p, T0 - DAY);
                let d = &world.devices[i];
                apply(
                    &mut world.engine,
                    d.partition,
                    &d.key,
                    Body::Threat(r),
                    now,
                    &mut out,
                );
            }
            out.clear();
        }
        assert_eq!(world.engine.device_count(), devices);
        world.drain();
        world
    }

    fn drain(&mut self) {
        for p in 0..PARTITIONS {
            self.engine.drain_changelog(p, |_, r| {
                black_box(r);
            });
        }
    }

    /// The next report of device `i` from `partner`, its health moved one Markov step.
    fn report(&mut self, i: usize, partner: &str, observed_at: i64) -> DeviceThreatReport {
        let roll = self.rng.below(1000);
        let d = &mut self.devices[i];
        let healthy = matches!(d.health, HealthState::Secured | HealthState::Low);
        d.health = if healthy {
            match roll {
                0..=14 => HealthState::Medium,
                15..=29 => HealthState::High,
                30..=34 => HealthState::Compromised,
                35..=44 => HealthState::Activated,
                45..=299 => HealthState::Low,
                _ => HealthState::Secured,
            }
        } else if roll < 400 {
            // Remediated.
            HealthState::Secured
        } else {
            d.health
        };
        let (health, event_id) = (d.health, self.rng.uuid());
        let d = &self.devices[i];
        let tenant = &self.tenants[d.member.tenant];
        d.member
            .report(tenant, partner, health, event_id, observed_at)
    }
}

/// Pre-encoded reports: `ROUNDS` rounds over every device in a shuffled order, each report
/// later than every earlier one. Key and value bytes of each record sit side by side in one
/// buffer, as in a fetched Kafka batch, so reading them touches memory in stream order.
struct Stream {
    bytes: Vec<u8>,
    index: Vec<Record>,
    pos: usize,
    enc: OutputEncoding,
    next_at: i64,
    order: Vec<u32>,
}

impl Stream {
    fn new(world: &mut World, enc: OutputEncoding) -> Stream {
        let mut order: Vec<u32> = (0..world.devices.len() as u32).collect();
        for i in (1..order.len()).rev() {
            let j = world.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut s = Stream {
            bytes: Vec::new(),
            index: Vec::new(),
            pos: 0,
            enc,
            next_at: world.now + 1,
            order,
        };
        s.refill(world);
        s
    }

    /// Encodes the next `ROUNDS` rounds (outside any timed region).
    fn refill(&mut self, world: &mut World) {
        self.bytes.clear();
        self.index.clear();
        self.pos = 0;
        for _ in 0..ROUNDS {
            for k in 0..self.order.len() {
                let i = self.order[k] as usize;
                // Defender tenants' devices get every other report from Defender.
                let defender =
                    world.devices[i].member.partners.contains(&MDE) && self.next_at % 2 == 0;
                let partner = if defender { MDE } else { LOOKOUT };
                let r = world.report(i, partner, self.next_at);
                self.next_at += 1;
                let key = self.bytes.len() as u32;
                self.bytes
                    .extend_from_slice(world.devices[i].key.as_bytes());
                let value = self.bytes.len() as u32;
                codec::encode(&r, self.enc, &mut self.bytes).expect("encode");
                self.index.push(Record {
                    partition: world.devices[i].partition,
                    key,
                    value,
                    end: self.bytes.len() as u32,
                });
            }
        }
        world.now = self.next_at;
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// Partition, key and value of report `k`.
    fn report(&self, k: usize) -> (i32, &[u8], &[u8]) {
        let r = &self.index[k];
        (
            r.partition,
            &self.bytes[r.key as usize..r.value as usize],
            &self.bytes[r.value as usize..r.end as usize],
        )
    }

    fn value_bytes(&self) -> usize {
        self.index.iter().map(|r| (r.end - r.value) as usize).sum()
    }
}

/// Where one record of a [`Stream`] lies.
struct Record {
    partition: i32,
    key: u32,
    value: u32,
    end: u32,
}

fn decode_only(c: &mut Criterion) {
    // Built on first use, so a filtered run does not pay for unselected set-ups.
    let mut world: Option<World> = None;
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, enc) in [
        ("avro", OutputEncoding::Avro),
        ("json", OutputEncoding::Json),
    ] {
        let mut stream: Option<Stream> = None;
        let mut k = 0;
        group.bench_function(name, |b| {
            let stream = stream.get_or_insert_with(|| {
                let world = world.get_or_insert_with(|| World::new(TENANTS, 20_000));
                let s = Stream::new(world, enc);
                println!(
                    "decode/{name}: mean report size {} bytes",
                    s.value_bytes() / s.len()
                );
                s
            });
            b.iter_custom(|iters| {
                let start = Mark::now();
                for _ in 0..iters {
                    let (_, _, bytes) = stream.report(k);
                    k = if k + 1 == stream.len() { 0 } else { k + 1 };
                    black_box(codec::decode::<DeviceThreatReport>(bytes).expect("decodes"));
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// What a stream benchmark times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Decode and apply each report; the changelog is drained untimed.
    DecodeEvaluate,
    /// The same, plus draining the changelog (building its records) every `BATCH` reports.
    WithChangelog,
}

/// Times `iters` reports of the stream in `mode`; refilling the stream happens untimed.
/// Never inlined, so a profiler can single it out (`callgrind --toggle-collect=core::run_stream`).
#[inline(never)]
fn run_stream(
    world: &mut World,
    stream: &mut Stream,
    out: &mut Vec<Output>,
    spare: &mut Option<DeviceThreatReport>,
    iters: u64,
    mode: Mode,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        if stream.pos == stream.len() {
            stream.refill(world);
        }
        let n = left
            .min(BATCH - stream.pos % BATCH)
            .min(stream.len() - stream.pos);
        let now = world.now;
        let start = Mark::now();
        for k in stream.pos..stream.pos + n {
            let (partition, key, bytes) = stream.report(k);
            // As the service does: one report value, decoded into again and again.
            let mut report = spare
                .take()
                .unwrap_or_else(|| codec::decode(bytes).expect("decodes"));
            codec::decode_into(bytes, &mut report).expect("decodes");
            let event = Event {
                partition,
                key: Some(key),
                body: Body::Threat(report),
            };
            world.engine.apply(&event, now, out);
            if let Body::Threat(r) = event.body {
                *spare = Some(r);
            }
            out.clear();
        }
        let batch_end = (stream.pos + n) % BATCH == 0;
        if batch_end && mode == Mode::WithChangelog {
            world.drain();
        }
        total += start.elapsed();
        if batch_end && mode != Mode::WithChangelog {
            world.drain();
        }
        stream.pos += n;
        left -= n;
    }
    total
}

/// The world and a stream of `enc` reports, the stream's first round applied untimed to report
/// the output mix and check that nothing is rejected.
fn prepare<'w>(
    world: &'w mut Option<World>,
    enc: OutputEncoding,
    name: &str,
) -> (&'w mut World, Stream) {
    let world = world.get_or_insert_with(|| World::new(TENANTS, DEVICES));
    let mut stream = Stream::new(world, enc);
    let mut out = Vec::new();
    let mut stats = Stats::default();
    for k in 0..stream.len().min(DEVICES) {
        let (partition, key, bytes) = stream.report(k);
        let report: DeviceThreatReport = codec::decode(bytes).expect("decodes");
        world.engine.apply(
            &Event {
                partition,
                key: Some(key),
                body: Body::Threat(report),
            },
            world.now,
            &mut out,
        );
        stats.count(&out);
        out.clear();
    }
    stream.pos = DEVICES.min(stream.len());
    world.drain();
    println!("decode_evaluate/{name}: per {DEVICES} reports: {stats:?}");
    assert_eq!(stats.rejected, 0, "a realistic stream is never rejected");
    (world, stream)
}

fn decode_evaluate(c: &mut Criterion) {
    let mut world: Option<World> = None;
    let mut out = Vec::new();
    let mut group = c.benchmark_group("decode_evaluate");
    group.throughput(Throughput::Elements(1));
    for (name, enc, mode) in [
        ("avro", OutputEncoding::Avro, Mode::DecodeEvaluate),
        ("avro+changelog", OutputEncoding::Avro, Mode::WithChangelog),
        ("json", OutputEncoding::Json, Mode::DecodeEvaluate),
    ] {
        let mut stream: Option<Stream> = None;
        let mut spare: Option<DeviceThreatReport> = None;
        group.bench_function(name, |b| {
            if stream.is_none() {
                stream = Some(prepare(&mut world, enc, name).1);
            }
            let (world, stream) = (
                world.as_mut().expect("world"),
                stream.as_mut().expect("stream"),
            );
            b.iter_custom(|iters| run_stream(world, stream, &mut out, &mut spare, iters, mode))
        });
    }
    group.finish();
}

#[derive(Debug, Default)]
struct Stats {
    compliance_changes: usize,
    app_actions: usize,
    rejected: usize,
}

impl Stats {
    fn count(&mut self, out: &[Output]) {
        for o in out {
            match o {
                Output::Compliance(_) => self.compliance_changes += 1,
                Output::AppAction(_) => self.app_actions += 1,
                Output::Rejected(_) => self.rejected += 1,
                _ => {}
            }
        }
    }
}

/// One tenant, Lookout only, `n` enrolled devices all COMPLIANT on Lookout's data, restored
/// as after a restart (the fan-out population of `mtdgate bench`).
fn fanout_world(n: usize) -> (Engine, String, i64) {
    let mut engine = world::engine();
    let tenant = Rng(11).uuid();
    let now = T0;
    world::fanout_tables(&tenant, now).apply_all(&mut engine, now);
    for i in 0..n {
        let r = world::fanout_device(i, &tenant, now);
        let key = format!("{tenant}/{}", r.device_id);
        let partition = partition_for(key.as_bytes(), PARTITIONS);
        engine.restore(partition, &key, Some(&r)).expect("restore");
    }
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        engine.reconcile(p, now, &mut out);
    }
    assert!(out.is_empty(), "the restored devices agree with the tables");
    (engine, tenant, now)
}

/// Encodes every output as the runtime would before producing it.
fn encode_outputs(out: &[Output], buf: &mut Vec<u8>) {
    for o in out {
        buf.clear();
        match o {
            Output::Compliance(c) => codec::encode(c, OutputEncoding::Avro, buf),
            Output::AppAction(a) => codec::encode(a, OutputEncoding::Avro, buf),
            Output::ConnectorStatus(s) => codec::encode(s, OutputEncoding::Avro, buf),
            Output::Inventory(i) => codec::encode(i, OutputEncoding::Avro, buf),
            Output::Rejected(_) => Ok(()),
        }
        .expect("encode");
        black_box(&buf);
    }
}

fn fanout(c: &mut Criterion) {
    let n = FANOUT_DEVICES;
    let mut world: Option<(Engine, String, i64)> = None;
    let mut out = Vec::with_capacity(n + 16);
    let mut buf = Vec::with_capacity(1024);
    let mut group = c.benchmark_group("fanout_1m");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    for encode in [false, true] {
        let name = if encode {
            "ignore_evaluate_encode"
        } else {
            "ignore_evaluate"
        };
        group.bench_function(name, |b| {
            let (engine, tenant, now) = world.get_or_insert_with(|| {
                let started = Instant::now();
                let w = fanout_world(n);
                println!(
                    "fanout: {n} devices set up in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                w
            });
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Silence past the unresponsive threshold: Lookout's data is ignored and
                    // every device turns COMPLIANT -> NOT_EVALUATED.
                    *now += 7 * DAY + 1;
                    let start = Mark::now();
                    engine.advance(*now, &mut out);
                    if encode {
                        encode_outputs(&out, &mut buf);
                    }
                    total += start.elapsed();
                    let changes = out
                        .iter()
                        .filter(|o| matches!(o, Output::Compliance(_)))
                        .count();
                    assert_eq!(changes, n, "every device re-evaluated and changed");
                    out.clear();
                    // Untimed: a heartbeat restores the data (another full fan-out).
                    let hb = world::heartbeat(tenant, LOOKOUT, *now);
                    let key = format!("{tenant}/{LOOKOUT}");
                    apply(engine, 0, &key, Body::Heartbeat(hb), *now, &mut out);
                    assert_eq!(out.len(), n + 1, "status change and every device back");
                    out.clear();
                    for p in 0..PARTITIONS {
                        engine.drain_changelog(p, |_, r| drop(r));
                    }
                }
                total
            })
        });
    }
    group.finish();
}

/// Applying changelog records as a restore does (`runtime::restore`): Avro decoding into one
/// reused record, then `Engine::restore` into an empty engine, for the mixed population of
/// `mtdgate bench`'s restore part (1,000 tenants). `decode` times the decoding alone,
/// `decode_restore` applies record by record, `decode_restore_batch` in batches of 256
/// records of one partition (`Engine::restore_batch`).
fn restore_apply(c: &mut Criterion) {
    let n = RESTORE_DEVICES;
    let mut records: Option<Vec<(String, i32, Vec<u8>)>> = None;
    let mut group = c.benchmark_group("restore_apply");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for name in ["decode", "decode_restore", "decode_restore_batch"] {
        group.bench_function(name, |b| {
            let records = records.get_or_insert_with(|| {
                (0..n)
                    .map(|i| {
                        let r = world::mixed_state(i, TENANTS, T0);
                        let key = format!("{}/{}", r.tenant_id, r.device_id);
                        let partition = partition_for(key.as_bytes(), PARTITIONS);
                        let mut buf = Vec::new();
                        codec::encode(&r, OutputEncoding::Avro, &mut buf).expect("encodes");
                        (key, partition, buf)
                    })
                    .collect()
            });
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let engine = world::engine();
                    let first = codec::decode::<DeviceStateRecord>(&records[0].2).unwrap();
                    // As `runtime::restore` does: batches of 256 records of one partition.
                    let mut batch = vec![first; 256];
                    let mut pending: Vec<Vec<usize>> = vec![Vec::new(); PARTITIONS as usize];
                    let start = Mark::now();
                    for (i, (key, partition, value)) in records.iter().enumerate() {
                        match name {
                            "decode" => {
                                codec::decode_into(value, &mut batch[0]).expect("decodes");
                                black_box(&batch[0]);
                            }
                            "decode_restore" => {
                                codec::decode_into(value, &mut batch[0]).expect("decodes");
                                engine
                                    .restore(*partition, key, Some(&batch[0]))
                                    .expect("restores");
                            }
                            _ => {
                                let p = &mut pending[*partition as usize];
                                p.push(i);
                                if p.len() == batch.len() || i + 1 == records.len() {
                                    for (k, &j) in p.iter().enumerate() {
                                        codec::decode_into(&records[j].2, &mut batch[k])
                                            .expect("decodes");
                                    }
                                    let items = p
                                        .iter()
                                        .zip(&batch)
                                        .map(|(&j, r)| (records[j].0.as_str(), Some(r)));
                                    engine.restore_batch(*partition, items).expect("restores");
                                    p.clear();
                                }
                            }
                        }
                    }
                    for (p, left) in pending.iter_mut().enumerate() {
                        for (k, &j) in left.iter().enumerate() {
                            codec::decode_into(&records[j].2, &mut batch[k]).expect("decodes");
                        }
                        let items = left
                            .iter()
                            .zip(&batch)
                            .map(|(&j, r)| (records[j].0.as_str(), Some(r)));
                        engine.restore_batch(p as i32, items).expect("restores");
                        left.clear();
                    }
                    total += start.elapsed();
                    assert!(name == "decode" || engine.device_count() == n);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_only, decode_evaluate, fanout, restore_apply);
criterion_main!(benches, codec_choice);

// Issue 9, item 8: the Avro codec decided by a measurement.

/// `serde_avro_fast` as a DeviceThreatReport decoder: its schema compiled once from the same
/// `.avsc` text mtdgate embeds, the single-object header checked against mtdgate's fingerprint
/// (as `serde_avro_fast::from_single_object_slice` does against its own), and bytes left over
/// refused, as `codec::decode` does.
struct SafDecoder {
    schema: serde_avro_fast::Schema,
    header: [u8; codec::SINGLE_OBJECT_HEADER_LEN],
}

impl SafDecoder {
    fn new() -> SafDecoder {
        use mtdgate::codec::AvroRecord;
        let entry = DeviceThreatReport::schema_entry();
        let schema: serde_avro_fast::Schema = entry
            .source()
            .parse()
            .expect("serde_avro_fast compiles the DeviceThreatReport schema");
        let mut header = [0; codec::SINGLE_OBJECT_HEADER_LEN];
        header[..2].copy_from_slice(&codec::SINGLE_OBJECT_MAGIC);
        header[2..].copy_from_slice(&entry.fingerprint_bytes());
        println!(
            "avro_codec: serde_avro_fast's fingerprint {} mtdgate's",
            if schema.rabin_fingerprint()[..] == header[2..] {
                "equals"
            } else {
                "differs from"
            }
        );
        SafDecoder { schema, header }
    }

    #[inline]
    fn datum<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], serde_avro_fast::de::DeError> {
        match bytes.split_first_chunk::<{ codec::SINGLE_OBJECT_HEADER_LEN }>() {
            Some((header, datum)) if *header == self.header => Ok(datum),
            _ => Err(serde::de::Error::custom(
                "not a DeviceThreatReport single object",
            )),
        }
    }

    #[inline]
    fn decode(&self, bytes: &[u8]) -> Result<DeviceThreatReport, serde_avro_fast::de::DeError> {
        let mut state =
            serde_avro_fast::de::DeserializerState::from_slice(self.datum(bytes)?, &self.schema);
        let report = serde::Deserialize::deserialize(state.deserializer())?;
        saf_finish(state)?;
        Ok(report)
    }

    #[inline]
    fn decode_into(
        &self,
        bytes: &[u8],
        place: &mut DeviceThreatReport,
    ) -> Result<(), serde_avro_fast::de::DeError> {
        let mut state =
            serde_avro_fast::de::DeserializerState::from_slice(self.datum(bytes)?, &self.schema);
        serde::Deserialize::deserialize_in_place(state.deserializer(), place)?;
        saf_finish(state)
    }
}

/// Refuses bytes left over after the datum.
#[inline]
fn saf_finish(
    state: serde_avro_fast::de::DeserializerState<'_, serde_avro_fast::de::read::SliceRead<'_>>,
) -> Result<(), serde_avro_fast::de::DeError> {
    let mut rest = state.into_reader();
    match std::io::BufRead::fill_buf(&mut rest) {
        Ok([]) => Ok(()),
        _ => Err(serde::de::Error::custom("bytes left over after the datum")),
    }
}

/// What one `avro_codec` variant decodes with: the stream and the value decoded into.
struct CodecRun<'a> {
    stream: &'a Stream,
    saf: &'a SafDecoder,
    place: DeviceThreatReport,
    k: usize,
}

impl<'a> CodecRun<'a> {
    /// The next report's value bytes, round and round the stream.
    #[inline(always)]
    fn next(&mut self) -> &'a [u8] {
        let (_, _, bytes) = self.stream.report(self.k);
        self.k = if self.k + 1 == self.stream.len() {
            0
        } else {
            self.k + 1
        };
        bytes
    }
}

// One never-inlined function per variant, so that callgrind tells them apart
// (`callgrind_annotate --inclusive=yes`: `core::avro_codec_*`).

#[inline(never)]
fn avro_codec_mtdgate_fresh(run: &mut CodecRun<'_>, iters: u64) {
    for _ in 0..iters {
        let bytes = run.next();
        black_box(codec::decode::<DeviceThreatReport>(bytes).expect("decodes"));
    }
}

#[inline(never)]
fn avro_codec_mtdgate_in_place(run: &mut CodecRun<'_>, iters: u64) {
    for _ in 0..iters {
        let bytes = run.next();
        codec::decode_into(bytes, &mut run.place).expect("decodes");
        black_box(&run.place);
    }
}

#[inline(never)]
fn avro_codec_saf_fresh(run: &mut CodecRun<'_>, iters: u64) {
    for _ in 0..iters {
        let bytes = run.next();
        black_box(run.saf.decode(bytes).expect("decodes"));
    }
}

#[inline(never)]
fn avro_codec_saf_in_place(run: &mut CodecRun<'_>, iters: u64) {
    for _ in 0..iters {
        let bytes = run.next();
        run.saf.decode_into(bytes, &mut run.place).expect("decodes");
        black_box(&run.place);
    }
}

type CodecVariant = fn(&mut CodecRun<'_>, u64);

const CODEC_VARIANTS: [(&str, CodecVariant); 4] = [
    ("mtdgate/fresh", avro_codec_mtdgate_fresh),
    ("mtdgate/in_place", avro_codec_mtdgate_in_place),
    ("serde_avro_fast/fresh", avro_codec_saf_fresh),
    ("serde_avro_fast/in_place", avro_codec_saf_in_place),
];

/// mtdgate's hand-written decoder against `serde_avro_fast` on the same DeviceThreatReport
/// single-object bytes (the stream of the `decode` benchmark), each into a fresh value per
/// report (dropped) and in place (one value decoded into again and again, as the service does).
///
/// ```text
/// MTDGATE_BENCH_CLOCK=thread-cpu cargo bench --bench core -- avro_codec --warm-up-time 1 --measurement-time 3
/// ```
///
/// With `MTDGATE_AVRO_CODEC_ITERS=N` every variant instead decodes N reports outside criterion
/// (a fixed amount of work, for `valgrind --tool=callgrind`) and prints its time per decode.
fn avro_codec(c: &mut Criterion) {
    let fixed: Option<u64> = std::env::var("MTDGATE_AVRO_CODEC_ITERS").ok().map(|n| {
        n.parse()
            .expect("MTDGATE_AVRO_CODEC_ITERS: a number of decodes")
    });
    // Built on first use, so a filtered run does not pay for it.
    let setup: std::cell::OnceCell<(Stream, SafDecoder)> = std::cell::OnceCell::new();
    let setup = || -> &(Stream, SafDecoder) {
        setup.get_or_init(|| {
            let mut world = World::new(TENANTS, 20_000);
            let stream = Stream::new(&mut world, OutputEncoding::Avro);
            let saf = SafDecoder::new();
            // Both decoders give the same value for every report, fresh and in place.
            let first: DeviceThreatReport = codec::decode(stream.report(0).2).expect("decodes");
            let (mut ours, mut theirs) = (first.clone(), first);
            for k in 0..stream.len() {
                let (_, _, bytes) = stream.report(k);
                let fresh: DeviceThreatReport = codec::decode(bytes).expect("decodes");
                assert_eq!(saf.decode(bytes).expect("serde_avro_fast decodes"), fresh);
                codec::decode_into(bytes, &mut ours).expect("decodes");
                saf.decode_into(bytes, &mut theirs)
                    .expect("serde_avro_fast decodes in place");
                assert_eq!(ours, fresh);
                assert_eq!(theirs, fresh);
            }
            println!(
                "avro_codec: {} reports, mean size {} bytes, identical in both decoders",
                stream.len(),
                stream.value_bytes() / stream.len()
            );
            (stream, saf)
        })
    };
    if let Some(iters) = fixed {
        let (stream, saf) = setup();
        for (name, variant) in CODEC_VARIANTS {
            let mut run = CodecRun {
                stream,
                saf,
                place: codec::decode(stream.report(0).2).expect("decodes"),
                k: 0,
            };
            let start = Mark::now();
            variant(&mut run, iters);
            let took = start.elapsed();
            println!(
                "avro_codec/{name}: {iters} decodes, {:.1} ns/decode, {:.0} decodes/s",
                took.as_nanos() as f64 / iters as f64,
                iters as f64 / took.as_secs_f64()
            );
        }
        return;
    }
    let mut group = c.benchmark_group("avro_codec");
    group.throughput(Throughput::Elements(1));
    for (name, variant) in CODEC_VARIANTS {
        let mut run: Option<CodecRun<'_>> = None;
        group.bench_function(name, |b| {
            let run = run.get_or_insert_with(|| {
                let (stream, saf) = setup();
                CodecRun {
                    stream,
                    saf,
                    place: codec::decode(stream.report(0).2).expect("decodes"),
                    k: 0,
                }
            });
            b.iter_custom(|iters| {
                let start = Mark::now();
                variant(run, iters);
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(codec_choice, avro_codec);
