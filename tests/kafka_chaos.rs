//! Chaos at scale on the real broker: two instances (child processes, as deployed) in one
//! group over a stream of MAM reports for thousands of devices, killed with SIGKILL at seeded
//! random moments and restarted, while the broker itself is killed with SIGKILL a few times and
//! started again by `scripts/kafka` on the same data dir.
//!
//! Checked as `kafka_cluster.rs`'s `chaos_random_sigkills_two_instances` checks: a
//! read_committed reader sees every expected app protection action exactly once (each device
//! BLOCK, UNBLOCK, BLOCK, ... one per round: a loss leaves a gap, a duplicate repeats an action,
//! lost state skips an UNBLOCK), and the final changelog state of every device equals a replay
//! of the same inputs through the pure engine.
//!
//! The broker is one of its own (port 29392, controller 29393, data dir
//! /tmp/mtdgate-kafka-chaos), wiped at the start and at the end, so the shared broker is never
//! touched. Parameters come from the environment (defaults: the CI size):
//!
//! | variable | default | |
//! |---|---|---|
//! | `MTDGATE_CHAOS_SEED` | `0xc4a05` | the kill schedule (targets, gaps, restart delays); printed |
//! | `MTDGATE_CHAOS_DEVICES` | 10,000 | MAM devices, one report each per round |
//! | `MTDGATE_CHAOS_ROUNDS` | 6 | reports per device (alternating HIGH / SECURED) |
//! | `MTDGATE_CHAOS_KILLS` | 30 | SIGKILLs of an instance (each restarted after 0-1 s) |
//! | `MTDGATE_CHAOS_BROKER_KILLS` | 2 | SIGKILLs of the broker (down 0-3 s, then `scripts/kafka start`) |
//! | `MTDGATE_CHAOS_GAP_MS` | 3,000 | mean time between two kills (uniform in 0 to twice that) |
//! | `MTDGATE_CHAOS_PARTITIONS` | 4 | partitions of the device topics |
//!
//! The reports are sent at a steady rate spread over the kill schedule, so the kills land
//! while records are being processed. The long variant is `scripts/chaos` (release build,
//! 100,000 devices, 100 instance kills, 5 broker kills by default).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtdgate::config::Config;
use mtdgate::engine::{Body, Engine};
use mtdgate::model::{DeviceStateRecord, DeviceThreatReport};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use support::world;
use support::*;

const PORT: u16 = 29392;
const DIR: &str = "/tmp/mtdgate-kafka-chaos";

/// The run's size and schedule, from the environment.
#[derive(Debug, Clone)]
struct Params {
    seed: u64,
    devices: usize,
    rounds: usize,
    kills: usize,
    broker_kills: usize,
    gap_ms: u64,
    partitions: i32,
}

/// A number from the environment (decimal, or hexadecimal with `0x`), else `default`.
fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => {
            let v = v.trim().replace('_', "");
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
        }
    }
}

impl Params {
    fn from_env() -> Params {
        let p = Params {
            seed: env_num("MTDGATE_CHAOS_SEED", 0xc4a05),
            devices: env_num("MTDGATE_CHAOS_DEVICES", 10_000) as usize,
            rounds: env_num("MTDGATE_CHAOS_ROUNDS", 6) as usize,
            kills: env_num("MTDGATE_CHAOS_KILLS", 30) as usize,
            broker_kills: env_num("MTDGATE_CHAOS_BROKER_KILLS", 2) as usize,
            gap_ms: env_num("MTDGATE_CHAOS_GAP_MS", 3_000),
            partitions: env_num("MTDGATE_CHAOS_PARTITIONS", 4) as i32,
        };
        assert!(p.devices > 0 && p.rounds > 0 && p.partitions > 0, "{p:?}");
        p
    }

    fn reports(&self) -> usize {
        self.devices * self.rounds
    }
}

/// One step of the schedule, taken `gap` after the previous one ended.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL of instance 0 (a) or 1 (b), restarted after `restart_after`.
    Instance {
        which: usize,
        restart_after: Duration,
    },
    /// SIGKILL of the broker, started again after `down_for`.
    Broker { down_for: Duration },
}

/// The seeded schedule: `kills` instance kills with the broker kills spread evenly among them.
fn schedule(p: &Params) -> Vec<(Duration, Fault)> {
    let mut rng = world::Rng(p.seed);
    let total = p.kills + p.broker_kills;
    let broker_at: HashSet<usize> = (1..=p.broker_kills)
        .map(|j| j * total / (p.broker_kills + 1))
        .collect();
    (0..total)
        .map(|i| {
            let gap = Duration::from_millis(rng.below(2 * p.gap_ms.max(1) + 1));
            let fault = if broker_at.contains(&i) {
                Fault::Broker {
                    down_for: Duration::from_millis(rng.below(3_001)),
                }
            } else {
                Fault::Instance {
                    which: rng.below(2) as usize,
                    restart_after: Duration::from_millis(rng.below(1_001)),
                }
            };
            (gap, fault)
        })
        .collect()
}

/// One instance: a child process with a fixed instance id (so its transactional id, and a
/// restart fences its killed predecessor) and a fresh HTTP port at each start.
struct Instance {
    name: String,
    cfg: Config,
    process: Option<Process>,
    starts: usize,
    kills: usize,
}

impl Instance {
    fn new(cfg: &Config, tag: &str) -> Instance {
        let mut cfg = cfg.clone();
        cfg.kafka.instance_id = format!("{}-{tag}", cfg.kafka.instance_id);
        Instance {
            name: format!("chaos-scale-{tag}"),
            cfg,
            process: None,
            starts: 0,
            kills: 0,
        }
    }

    fn start(&mut self) {
        let mut cfg = self.cfg.clone();
        cfg.http.listen = format!("127.0.0.1:{}", free_port());
        self.process = Some(Process::start(&cfg, &self.name));
        self.starts += 1;
    }

    fn kill(&mut self) {
        self.process.take().expect("running").kill();
        self.kills += 1;
    }

    /// The current process's log (`Process::start` truncates it at each start).
    fn log(&self) -> PathBuf {
        std::env::temp_dir().join("mtdgate-tests").join(format!(
            "{}-{}.log",
            self.name,
            std::process::id()
        ))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Panics if the process exited by itself (an instance must ride out every fault).
    fn assert_running(&mut self) {
        let p = self.process.as_mut().expect("started");
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!(
                "{} exited by itself ({status}); log {}:\n{}",
                self.name,
                self.log().display(),
                self.log_tail()
            );
        }
    }

    /// Waits until the process has checked its topics: from then on it survives the broker
    /// going away (its supervisor rebuilds the pipeline), while before it would exit.
    fn wait_verified(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            if text.contains("topics verified") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: topics not verified within {timeout:?}:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A vendor gateway that rides out a broker outage: idempotent (a retry neither duplicates nor
/// reorders) and patient (records wait in its queue while the broker is down).
fn gateway(bootstrap: &str) -> Gateway {
    let mut c = client(bootstrap);
    c.set("enable.idempotence", "true")
        .set("message.timeout.ms", "900000")
        .set("queue.buffering.max.messages", "1000000")
        .set("linger.ms", "5");
    Gateway::on(c)
}

/// Sends every round of reports at `rate` records/s, applying each to `engine` (the pure-engine
/// replay) in the order sent; counts what it sent in `sent`. Returns the engine.
fn stream(
    gw: Gateway,
    topic: String,
    p: Params,
    rate: f64,
    mut engine: Engine,
    sent: Arc<AtomicUsize>,
) -> Engine {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for round in 0..p.rounds {
        let state = if round % 2 == 0 { "HIGH" } else { "SECURED" };
        for d in 0..p.devices {
            let k = round * p.devices + d;
            let due = t0 + Duration::from_secs_f64(k as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                if wait > Duration::from_millis(2) {
                    std::thread::sleep(wait);
                }
            }
            let device = format!("m{d}");
            let key = format!("acme/{device}");
            let v = report_json(
                &format!("r{round}-{device}"),
                "lookout",
                &device,
                "MAM",
                state,
                now_ms(),
            );
            gw.send_raw_waiting(&topic, key.as_bytes(), &serde_json::to_vec(&v).unwrap());
            let r: DeviceThreatReport = serde_json::from_value(v).unwrap();
            world::apply(&mut engine, 0, &key, Body::Threat(r), now_ms(), &mut out);
            out.clear();
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    gw.flush_within(Duration::from_secs(900));
    engine
}

/// The app protection actions read so far (read_committed), kept small: per device the
/// sequence of actions, and every action id.
#[derive(Default)]
struct Tally {
    per_device: HashMap<String, Vec<bool>>,
    ids: HashSet<String>,
    duplicate_ids: Vec<String>,
    records: usize,
}

#[derive(serde::Deserialize)]
struct Action {
    action_id: String,
    action: String,
}

impl Tally {
    fn add(&mut self, key: &[u8], payload: &[u8]) {
        let a: Action = serde_json::from_slice(payload).expect("JSON app protection action");
        if !self.ids.insert(a.action_id.clone()) {
            self.duplicate_ids.push(a.action_id);
        }
        let key = String::from_utf8_lossy(key).into_owned();
        let block = match a.action.as_str() {
            "BLOCK" => true,
            "UNBLOCK" => false,
            other => panic!("unexpected action {other} for {key}"),
        };
        self.per_device.entry(key).or_default().push(block);
        self.records += 1;
    }

    /// Every one of `devices` devices saw exactly BLOCK, UNBLOCK, ... for `rounds` rounds,
    /// and no action id came twice.
    fn assert_exactly_once(&self, devices: usize, rounds: usize) {
        let expected: Vec<bool> = (0..rounds).map(|r| r % 2 == 0).collect();
        let mut wrong: Vec<String> = self
            .per_device
            .iter()
            .filter(|(_, a)| **a != expected)
            .map(|(k, a)| {
                let names: Vec<&str> = a
                    .iter()
                    .map(|b| if *b { "BLOCK" } else { "UNBLOCK" })
                    .collect();
                format!("{k}: {names:?}")
            })
            .collect();
        wrong.sort();
        let shown = wrong.len().min(30);
        assert!(
            self.duplicate_ids.is_empty() && wrong.is_empty() && self.per_device.len() == devices,
            "{} records; {} devices with output (expected {devices}); {} duplicate action ids \
             ({:?}); {} devices with a wrong sequence (expected {rounds} alternating from \
             BLOCK), the first {shown}:\n{}",
            self.records,
            self.per_device.len(),
            self.duplicate_ids.len(),
            &self.duplicate_ids[..self.duplicate_ids.len().min(10)],
            wrong.len(),
            wrong[..shown].join("\n")
        );
    }
}

/// A read_committed consumer of `topic` from the beginning, in a group of its own.
fn committed_consumer(bootstrap: &str, topic: &str, tag: &str) -> BaseConsumer {
    committed_reader(
        client(bootstrap),
        &format!("chaos-scale-{tag}-{}", std::process::id()),
        &[topic],
    )
}

/// Reads the app protection actions until `n` arrived (panics after `timeout`), then 3 s more
/// (a duplicate would come now).
fn read_actions(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Tally {
    let c = committed_consumer(bootstrap, topic, "actions");
    let mut tally = Tally::default();
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    let mut quiet_until: Option<Instant> = None;
    loop {
        if tally.records >= n {
            let until = *quiet_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
            if Instant::now() >= until {
                return tally;
            }
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} app protection actions within {timeout:?}, got {}",
            tally.records
        );
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("  {} of {n} actions read", tally.records);
            last_print = Instant::now();
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            tally.add(m.key().unwrap_or_default(), m.payload().unwrap_or_default());
        }
    }
}

/// The final changelog state of every device (read_committed; connector statuses, which share
/// the changelog, left out).
fn read_states(
    bootstrap: &str,
    topic: &str,
    devices: usize,
) -> BTreeMap<String, DeviceStateRecord> {
    let c = committed_consumer(bootstrap, topic, "state");
    let mut state = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120 + devices as u64 / 1_000);
    let mut idle = 0;
    while Instant::now() < deadline && (idle < 30 || state.len() < devices) {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle = 0;
                let key = m.key().unwrap();
                if mtdgate::engine::ownership::is_status_key(key) {
                    continue;
                }
                // A changelog batch holds device states as if written at its place.
                if mtdgate::runtime::changelog_batches::is_batch_key(key) {
                    if let Some(v) = m.payload() {
                        let entries = mtdgate::runtime::changelog_batches::chunk_entries(v);
                        for (k, v) in entries.unwrap() {
                            let rec = mtdgate::codec::decode::<DeviceStateRecord>(&v).unwrap();
                            state.insert(String::from_utf8_lossy(&k).into_owned(), rec);
                        }
                    }
                    continue;
                }
                let key = String::from_utf8_lossy(key).into_owned();
                match m.payload() {
                    Some(p) => {
                        let rec = mtdgate::codec::decode::<DeviceStateRecord>(p).unwrap();
                        state.insert(key, rec);
                    }
                    None => {
                        state.remove(&key);
                    }
                }
            }
            Some(Err(e)) => panic!("reading the changelog: {e}"),
            None => idle += 1,
        }
    }
    state
}

#[test]
fn chaos_at_scale_sigkills_instances_and_broker() {
    let p = Params::from_env();
    let started = Instant::now();
    let at = || format!("{:7.1} s", started.elapsed().as_secs_f64());
    println!(
        "chaos: seed {:#x} ({}), {} devices x {} rounds = {} reports, {} instance kills, {} \
         broker kills, mean gap {} ms, {} partitions (MTDGATE_CHAOS_SEED={} repeats this \
         schedule)",
        p.seed,
        p.seed,
        p.devices,
        p.rounds,
        p.reports(),
        p.kills,
        p.broker_kills,
        p.gap_ms,
        p.partitions,
        p.seed
    );

    let broker = ScriptBroker::start(PORT, DIR, Vec::new(), &[]);
    let bootstrap = broker.bootstrap();
    let mut cfg = config_on(&bootstrap, "chaos-scale");
    cfg.topics.partitions = p.partitions;
    cfg.processing.commit_interval_ms = 100;
    // Snapshots every few thousand changelog records: restarts restore through them and the
    // changelog after them, under the same kills.
    cfg.processing.snapshot_min_records = 2_000;
    cfg.processing.snapshot_min_interval_ms = 2_000;
    create_topics(&cfg);
    // Created above: a restart checks them and goes on.
    cfg.topics.create = false;
    let now = now_ms();
    let tables_gw = gateway(&bootstrap);
    tables_gw.send_all(&mam_tenant_records(&cfg, now));
    tables_gw.flush();
    drop(tables_gw);

    let mut instances = [Instance::new(&cfg, "a"), Instance::new(&cfg, "b")];
    for i in &mut instances {
        i.start();
    }
    eprintln!("{}  broker up, topics created, 2 instances started", at());

    // The pure-engine replay, fed by the sender as it sends: the MAM tenant's connector
    // settings and policy (the replay needs no heartbeat), then every report in order.
    let catalogue = Arc::new(mtdgate::runtime::load_catalogue(&cfg).unwrap());
    let mut engine = Engine::new(catalogue, Default::default());
    let tables = world::Tables {
        heartbeats: vec![],
        ..world::mam_tables("acme", now - 60_000, now)
    };
    tables.apply(&mut engine, now);

    let plan = schedule(&p);
    // Spread the stream over the schedule (a broker restart counted as 20 s).
    let window: Duration = plan.iter().map(|(gap, _)| *gap).sum::<Duration>()
        + Duration::from_secs(20) * p.broker_kills as u32;
    let rate = (p.reports() as f64 / window.as_secs_f64().max(1.0)).max(100.0);
    eprintln!(
        "{}  streaming {} reports at {rate:.0}/s over about {:.0} s of faults",
        at(),
        p.reports(),
        window.as_secs_f64()
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (gw, topic, p, sent) = (
            gateway(&bootstrap),
            cfg.topics.device_threats.clone(),
            p.clone(),
            sent.clone(),
        );
        std::thread::spawn(move || stream(gw, topic, p, rate, engine, sent))
    };

    let (mut instance_kills, mut broker_kills) = (0, 0);
    let mut broker_down = Duration::ZERO;
    for (n, (gap, fault)) in plan.iter().enumerate() {
        std::thread::sleep(*gap);
        for i in &mut instances {
            i.assert_running();
        }
        let progress = sent.load(Ordering::Relaxed);
        match *fault {
            Fault::Instance {
                which,
                restart_after,
            } => {
                let i = &mut instances[which];
                i.kill();
                std::thread::sleep(restart_after);
                i.start();
                instance_kills += 1;
                eprintln!(
                    "{}  fault {:3}: SIGKILL {} (start {}), restarted after {} ms; {progress} \
                     reports sent",
                    at(),
                    n + 1,
                    i.name,
                    i.starts - 1,
                    restart_after.as_millis()
                );
            }
            Fault::Broker { down_for } => {
                // An instance still starting would exit on a missing broker (as documented):
                // the broker goes when both are past their start-up checks.
                for i in &mut instances {
                    i.wait_verified(Duration::from_secs(180));
                }
                let t = Instant::now();
                broker.run(&["kill"]);
                std::thread::sleep(down_for);
                broker.run(&["start"]);
                broker_kills += 1;
                broker_down += t.elapsed();
                eprintln!(
                    "{}  fault {:3}: SIGKILL of the broker, started again after {:.1} s; \
                     {progress} reports sent",
                    at(),
                    n + 1,
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let faults_done = started.elapsed();
    let engine = sender.join().expect("sender");
    eprintln!(
        "{}  all {} reports delivered to the broker",
        at(),
        p.reports()
    );

    let outputs = p.reports();
    let timeout = Duration::from_secs(300 + outputs as u64 / 500);
    let tally = read_actions(
        &bootstrap,
        &cfg.topics.app_protection_actions,
        outputs,
        timeout,
    );
    let all_read = started.elapsed();
    eprintln!("{}  {} actions read; checking", at(), tally.records);
    tally.assert_exactly_once(p.devices, p.rounds);
    for i in &mut instances {
        i.assert_running();
        let status = i.process.take().unwrap().terminate();
        assert!(status.success(), "{}: clean exit on SIGTERM", i.name);
    }

    // The final changelog state per device equals the pure-engine replay.
    let state = read_states(&bootstrap, &cfg.topics.device_state, p.devices);
    assert_eq!(state.len(), p.devices, "devices in the changelog");
    let mut differ = Vec::new();
    for d in 0..p.devices {
        let replayed = engine.device_record(0, "acme", &format!("m{d}")).unwrap();
        let stored = &state[&format!("acme/m{d}")];
        if stored != &replayed {
            differ.push(format!(
                "m{d}:\n  stored   {stored:?}\n  replayed {replayed:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} devices differ from the replay; the first:\n{}",
        differ.len(),
        p.devices,
        differ[..differ.len().min(5)].join("\n")
    );
    let starts: usize = instances.iter().map(|i| i.starts).sum();
    println!(
        "chaos: passed: seed {:#x}; {} devices, {} reports; {instance_kills} instance SIGKILLs \
         ({} starts), {broker_kills} broker SIGKILLs ({:.0} s down and restarting); {} actions \
         read_committed, each once, in order; {} device states equal to the pure-engine replay",
        p.seed,
        p.devices,
        p.reports(),
        starts,
        broker_down.as_secs_f64(),
        tally.records,
        state.len()
    );
    println!(
        "chaos: timing: faults done at {:.0} s, all outputs read at {:.0} s, total {:.0} s",
        faults_done.as_secs_f64(),
        all_read.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
