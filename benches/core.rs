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

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use mtdgate::catalogue::Catalogue;
use mtdgate::codec::{self, OutputEncoding};
use mtdgate::engine::{Body, Engine, EngineSettings, Event, Output};
use mtdgate::model::*;

/// The allocator the `mtdgate` binary uses, so the figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 86_400_000;
const LOOKOUT: &str = "lookout";
const MDE: &str = "microsoft-defender-for-endpoint";
const PARTITIONS: i32 = 12;

const TENANTS: usize = 1_000;
const DEVICES: usize = 100_000;
/// Rounds over every device pre-encoded at once; re-encoded (untimed) with later timestamps
/// when the stream is used up, so no report is ever stale or a duplicate.
const ROUNDS: usize = 2;
/// Reports between changelog drains (one runtime transaction).
const BATCH: usize = 10_000;
const FANOUT_DEVICES: usize = 1_000_000;

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

/// splitmix64: deterministic ids and mixes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random (version 4) UUID, canonical lower case.
    fn uuid(&mut self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let (a, b) = (self.next(), self.next());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_be_bytes());
        bytes[8..].copy_from_slice(&b.to_be_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let mut s = String::with_capacity(36);
        for (i, b) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }
}

fn apply(
    engine: &mut Engine,
    partition: i32,
    key: &str,
    body: Body,
    now: i64,
    out: &mut Vec<Output>,
) {
    engine.apply(
        &Event {
            partition,
            key: Some(key.as_bytes()),
            body,
        },
        now,
        out,
    );
}

fn connector(tenant: &str, partner: &str) -> ConnectorConfig {
    let mut c = ConnectorConfig::new(tenant, partner, T0);
    c.provisioned = true;
    c.setup_complete = true;
    c.android_enabled = true;
    c.ios_enabled = true;
    c.android_mam_enabled = true;
    c.ios_mam_enabled = true;
    c
}

fn policy(
    tenant: &str,
    id: &str,
    kind: PolicyKind,
    platform: Platform,
    max_level: PolicyLevel,
    action: Option<PolicyAction>,
) -> ThreatPolicy {
    ThreatPolicy {
        tenant_id: tenant.into(),
        policy_id: id.into(),
        kind,
        platform,
        max_level,
        action,
        partner_priority: None,
        updated_at: T0,
    }
}

/// Sets a tenant up with its connectors (heartbeating), MEDIUM compliance policies on iOS and
/// Android, and app protection: BLOCK over MEDIUM on iOS, WIPE over HIGH on Android.
fn setup_tenant(engine: &mut Engine, tenant: &str, partners: &[&str], now: i64) {
    let mut out = Vec::new();
    for &p in partners {
        let key = format!("{tenant}/{p}");
        apply(
            engine,
            0,
            &key,
            Body::Connector(Some(connector(tenant, p))),
            now,
            &mut out,
        );
        let hb = ConnectorHeartbeat {
            tenant_id: tenant.into(),
            partner_id: p.into(),
            sent_at: now,
            error_code: None,
            min_os_versions: None,
        };
        apply(engine, 0, &key, Body::Heartbeat(hb), now, &mut out);
    }
    use PolicyKind::*;
    for p in [
        policy(
            tenant,
            "mtd-ios",
            Compliance,
            Platform::Ios,
            PolicyLevel::Medium,
            None,
        ),
        policy(
            tenant,
            "mtd-android",
            Compliance,
            Platform::Android,
            PolicyLevel::Medium,
            None,
        ),
        policy(
            tenant,
            "app-ios",
            AppProtection,
            Platform::Ios,
            PolicyLevel::Medium,
            Some(PolicyAction::Block),
        ),
        policy(
            tenant,
            "app-android",
            AppProtection,
            Platform::Android,
            PolicyLevel::High,
            Some(PolicyAction::Wipe),
        ),
    ] {
        let key = format!("{tenant}/{}", p.policy_id);
        apply(engine, 0, &key, Body::Policy(Some(p)), now, &mut out);
    }
    assert!(
        !out.iter().any(|o| matches!(o, Output::Rejected(_))),
        "setup rejected: {out:?}"
    );
}

struct Device {
    tenant: usize,
    id: String,
    user: String,
    key: String,
    partition: i32,
    platform: Platform,
    management: Management,
    defender: bool,
    /// Current health, moved by a small Markov chain: mostly SECURED/LOW, now and then an
    /// infection that is later remediated.
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
    /// `tenants` tenants with Lookout (every third also with Defender), `devices` devices spread
    /// over them (four in five enrolled, the rest MAM), each with a first report applied.
    fn new(tenants: usize, devices: usize) -> World {
        let mut rng = Rng(7);
        let mut engine = Engine::new(
            Arc::new(Catalogue::builtin("public").expect("catalogue")),
            EngineSettings::default(),
        );
        let now = T0;
        let tenant_ids: Vec<String> = (0..tenants).map(|_| rng.uuid()).collect();
        for (i, t) in tenant_ids.iter().enumerate() {
            let partners: &[&str] = if i % 3 == 0 {
                &[LOOKOUT, MDE]
            } else {
                &[LOOKOUT]
            };
            setup_tenant(&mut engine, t, partners, now);
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
            let tenant = i % tenants;
            let id = world.rng.uuid();
            let r = world.rng.next();
            let d = Device {
                tenant,
                key: format!("{}/{id}", world.tenants[tenant]),
                user: world.rng.uuid(),
                id,
                partition: (r % PARTITIONS as u64) as i32,
                platform: if (r >> 8) % 2 == 0 {
                    Platform::Ios
                } else {
                    Platform::Android
                },
                management: if (r >> 16) % 5 == 0 {
                    Management::Mam
                } else {
                    Management::Mdm
                },
                defender: tenant % 3 == 0,
                health: HealthState::Secured,
            };
            if d.management == Management::Mdm {
                let e = DeviceEnrollment {
                    tenant_id: world.tenants[tenant].clone(),
                    device_id: d.id.clone(),
                    user_id: d.user.clone(),
                    platform: d.platform,
                    management: d.management,
                    ownership: Ownership::Corporate,
                    os_version: Some(os_version(d.platform).into()),
                    enrolled_at: T0,
                };
                apply(
                    &mut world.engine,
                    d.partition,
                    &d.key,
                    Body::Enrollment(Some(e)),
                    now,
                    &mut out,
                );
            }
            world.devices.push(d);
        }
        // A first report from every partner of every device.
        for i in 0..devices {
            let partners: &[&str] = if world.devices[i].defender {
                &[LOOKOUT, MDE]
            } else {
                &[LOOKOUT]
            };
            for &p in partners {
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
        let threats = match d.health {
            HealthState::Medium | HealthState::High | HealthState::Compromised => vec![Threat {
                category: "malware".into(),
                name: "Trojan.AndroidOS.Agent".into(),
                severity: ThreatSeverity::High,
            }],
            _ => Vec::new(),
        };
        let (tenant_id, device_id, user_id, platform, management) = (
            self.tenants[d.tenant].clone(),
            d.id.clone(),
            Some(d.user.clone()),
            d.platform,
            d.management,
        );
        let health_state = d.health;
        DeviceThreatReport {
            event_id: self.rng.uuid(),
            tenant_id,
            partner_id: partner.into(),
            device_id,
            user_id,
            platform,
            management,
            ownership: Some(Ownership::Corporate),
            os_version: Some(os_version(platform).into()),
            health_state,
            threats,
            observed_at,
        }
    }
}

fn os_version(p: Platform) -> &'static str {
    match p {
        Platform::Ios => "17.4.1",
        _ => "14",
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
                let defender = world.devices[i].defender && self.next_at % 2 == 0;
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

/// One tenant, Lookout only, `n` enrolled devices all COMPLIANT on Lookout's data.
fn fanout_world(n: usize) -> (Engine, String, i64) {
    let mut rng = Rng(11);
    let mut engine = Engine::new(
        Arc::new(Catalogue::builtin("public").expect("catalogue")),
        EngineSettings::default(),
    );
    let tenant = rng.uuid();
    let now = T0;
    setup_tenant(&mut engine, &tenant, &[LOOKOUT], now);
    let mut out = Vec::new();
    for i in 0..n {
        let id = rng.uuid();
        let user = rng.uuid();
        let key = format!("{tenant}/{id}");
        let partition = (i % PARTITIONS as usize) as i32;
        let platform = if i % 2 == 0 {
            Platform::Ios
        } else {
            Platform::Android
        };
        let e = DeviceEnrollment {
            tenant_id: tenant.clone(),
            device_id: id.clone(),
            user_id: user.clone(),
            platform,
            management: Management::Mdm,
            ownership: Ownership::Corporate,
            os_version: Some(os_version(platform).into()),
            enrolled_at: T0,
        };
        apply(
            &mut engine,
            partition,
            &key,
            Body::Enrollment(Some(e)),
            now,
            &mut out,
        );
        let r = DeviceThreatReport {
            event_id: rng.uuid(),
            tenant_id: tenant.clone(),
            partner_id: LOOKOUT.into(),
            device_id: id,
            user_id: Some(user),
            platform,
            management: Management::Mdm,
            ownership: Some(Ownership::Corporate),
            os_version: None,
            health_state: HealthState::Secured,
            threats: Vec::new(),
            observed_at: now,
        };
        apply(&mut engine, partition, &key, Body::Threat(r), now, &mut out);
        out.clear();
        if i % BATCH == 0 {
            for p in 0..PARTITIONS {
                engine.drain_changelog(p, |_, r| drop(black_box(r)));
            }
        }
    }
    for p in 0..PARTITIONS {
        engine.drain_changelog(p, |_, r| drop(black_box(r)));
    }
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
                    let hb = ConnectorHeartbeat {
                        tenant_id: tenant.clone(),
                        partner_id: LOOKOUT.into(),
                        sent_at: *now,
                        error_code: None,
                        min_os_versions: None,
                    };
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

criterion_group!(benches, decode_only, decode_evaluate, fanout);
criterion_main!(benches);
