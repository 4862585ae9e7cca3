//! Helpers for tests against the real Kafka broker started by `scripts/kafka`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use mtdgate::config::Config;
use mtdgate::runtime::clock::{Clock, ShiftedClock};
use mtdgate::runtime::{self, Status};

/// Starts the project's broker once per test binary (idempotent) and returns its address.
pub fn broker() -> &'static str {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let status = Command::new("bash")
            .arg(format!("{root}/scripts/kafka"))
            .arg("start")
            .status()
            .expect("run scripts/kafka start");
        assert!(status.success(), "scripts/kafka start failed");
        let out = Command::new("bash")
            .arg(format!("{root}/scripts/kafka"))
            .arg("bootstrap")
            .output()
            .expect("scripts/kafka bootstrap");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// A configuration with topic names unique to one test, so tests never see each other.
pub fn test_config(name: &str) -> Config {
    config_on(broker(), name)
}

/// A configuration for the broker at `bootstrap`, with group, instance and topic names unique
/// to one test (`name`, process id and time as suffix), 3 partitions, topics created at start
/// and a 50 ms commit interval.
pub fn config_on(bootstrap: &str, name: &str) -> Config {
    let suffix = format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
            % 1_000_000_000
    );
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap.to_owned();
    c.kafka.group_id = format!("mtdgate-{suffix}");
    c.kafka.instance_id = format!("i1-{suffix}");
    for topic in c.topics.names_mut() {
        *topic = format!("{topic}.{suffix}");
    }
    c.topics.partitions = 3;
    c.topics.create = true;
    c.processing.commit_interval_ms = 50;
    c
}

/// A broker of its own for one test (`scripts/kafka` with another port and data dir), for
/// tests that stop it or secure it without disturbing the shared broker. Started on a fresh
/// data dir; stopped and wiped when dropped, also when the test fails.
pub struct ScriptBroker {
    pub port: u16,
    pub dir: &'static str,
    env: Vec<(&'static str, String)>,
}

impl ScriptBroker {
    /// Wipes `dir`, then runs `scripts/kafka start START_ARGS` on `port` with `env` added.
    pub fn start(
        port: u16,
        dir: &'static str,
        env: Vec<(&'static str, String)>,
        start_args: &[&str],
    ) -> ScriptBroker {
        let broker = ScriptBroker { port, dir, env };
        // A data dir left by an interrupted run holds nothing this run needs.
        broker.run(&["wipe"]);
        let mut args = vec!["start"];
        args.extend_from_slice(start_args);
        broker.run(&args);
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `scripts/kafka ARGS` for this broker.
    pub fn script(&self, args: &[&str]) -> std::process::Output {
        let root = env!("CARGO_MANIFEST_DIR");
        Command::new("bash")
            .arg(format!("{root}/scripts/kafka"))
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DATA_DIR", self.dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/kafka")
    }

    /// Runs `scripts/kafka ARGS` and asserts it succeeded.
    pub fn run(&self, args: &[&str]) {
        let t0 = Instant::now();
        let out = self.script(args);
        assert!(
            out.status.success(),
            "scripts/kafka {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!(
            "[{:.1} s] {}",
            t0.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for ScriptBroker {
    fn drop(&mut self) {
        let out = self.script(&["wipe"]);
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// Where most scenarios start: the service in-process on fresh topics named after `name`,
/// a gateway, and the service's clock reading.
pub fn scenario(name: &str) -> (Config, Service, Gateway, i64) {
    let cfg = test_config(name);
    let svc = Service::start(&cfg);
    let now = svc.now();
    (cfg, svc, Gateway::new(), now)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates the configuration's topics.
pub fn create_topics(cfg: &Config) {
    let catalogue = runtime::load_catalogue(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(runtime::kafka::create_topics(cfg, &catalogue))
        .unwrap();
    // A loaded broker can answer the creation before its metadata lists the topics; a client
    // started right after (the binary's topic check) would see them missing.
    let wanted = runtime::kafka::all_topics(cfg, &catalogue);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = runtime::kafka::partition_counts(cfg).unwrap_or_default();
        if wanted.iter().all(|(t, _)| counts.contains_key(t)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "created topics not in metadata within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An in-process service with a clock the test can move.
pub struct Service {
    pub clock: ShiftedClock,
    pub status: Arc<Status>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    pub fn start(cfg: &Config) -> Service {
        Self::start_with_clock(cfg, ShiftedClock::new())
    }

    /// Starts with a readiness handle the test already serves over HTTP.
    pub fn start_with_status(cfg: &Config, status: Arc<Status>) -> Service {
        Self::start_inner(cfg, ShiftedClock::new(), status)
    }

    pub fn start_with_clock(cfg: &Config, clock: ShiftedClock) -> Service {
        Self::start_inner(cfg, clock, Arc::new(Status::default()))
    }

    fn start_inner(cfg: &Config, clock: ShiftedClock, status: Arc<Status>) -> Service {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let shutdown = Arc::new(AtomicBool::new(false));
        let (c, s, st, cl) = (cfg.clone(), shutdown.clone(), status.clone(), clock.clone());
        let thread = std::thread::spawn(move || runtime::run(c, Arc::new(cl), s, st));
        let mut svc = Service {
            clock,
            status,
            shutdown,
            thread: Some(thread),
        };
        svc.wait_ready();
        svc
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.status.ready() {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let r = self.thread.take().unwrap().join().unwrap();
                panic!("service stopped before it was ready: {r:?}");
            }
            assert!(Instant::now() < deadline, "service not ready within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Stops cleanly (commits the open transaction, leaves the group).
    pub fn stop(mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Produces records as a vendor gateway would: keyed, Kafka's default (murmur2) partitioner.
pub struct Gateway {
    producer: BaseProducer,
}

impl Gateway {
    /// A gateway of the project's broker.
    pub fn new() -> Gateway {
        Gateway::on(client(broker()))
    }

    /// A gateway with the client settings `c` (cluster, security, ...); Kafka's default
    /// partitioner and a 2 ms linger unless `c` says otherwise.
    pub fn on(mut c: ClientConfig) -> Gateway {
        for (k, v) in [("partitioner", "murmur2_random"), ("linger.ms", "2")] {
            if c.get(k).is_none() {
                c.set(k, v);
            }
        }
        Gateway {
            producer: c.create().unwrap(),
        }
    }

    pub fn send(&self, topic: &str, key: &str, value: Option<&Value>) {
        let payload = value.map(|v| serde_json::to_vec(v).unwrap());
        self.send_raw(topic, key.as_bytes(), payload.as_deref());
    }

    pub fn send_raw(&self, topic: &str, key: &[u8], payload: Option<&[u8]>) {
        let mut r = BaseRecord::<[u8], [u8]>::to(topic).key(key);
        if let Some(p) = payload {
            r = r.payload(p);
        }
        self.producer.send(r).map_err(|(e, _)| e).unwrap();
        self.producer.poll(Duration::ZERO);
    }

    /// Waits up to 10 s until everything sent is delivered.
    pub fn flush(&self) {
        self.flush_within(Duration::from_secs(10));
    }

    pub fn flush_within(&self, timeout: Duration) {
        self.producer.flush(timeout).unwrap();
    }

    /// Sends `records` (topic, key, value).
    pub fn send_all(&self, records: &[Record]) {
        for (topic, key, value) in records {
            self.send(topic, key, Some(value));
        }
    }

    /// Sends tables (`records`) and flushes, then gives the service 500 ms to apply them before
    /// the device records that follow.
    pub fn setup_tables(&self, records: &[Record]) {
        self.send_all(records);
        self.flush();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Client settings for the broker at `bootstrap`.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// A read_committed consumer with the settings `c`, in `group`, subscribed to `topics` from
/// the beginning, committing nothing.
pub fn committed_reader(mut c: ClientConfig, group: &str, topics: &[&str]) -> BaseConsumer {
    let consumer: BaseConsumer = c
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    consumer
}

impl Default for Gateway {
    fn default() -> Self {
        Self::new()
    }
}

/// A read_committed reader of one output topic, from the beginning.
pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<(String, Value)>,
}

impl Reader {
    /// A reader of `topic` on the project's broker.
    pub fn new(topic: &str) -> Reader {
        Reader::on(client(broker()), topic)
    }

    /// A reader of `topic` with the client settings `c`.
    pub fn on(c: ClientConfig, topic: &str) -> Reader {
        let group = format!("reader-{topic}-{}", std::process::id());
        let consumer = committed_reader(c, &group, &[topic]);
        Reader {
            consumer,
            records: Vec::new(),
        }
    }

    /// Reads until at least `n` records arrived (panics after `timeout`), then returns them all.
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> &[(String, Value)] {
        let deadline = Instant::now() + timeout;
        while self.records.len() < n {
            assert!(
                Instant::now() < deadline,
                "expected {n} records, got {}: {:#?}",
                self.records.len(),
                self.records
            );
            self.poll_once(Duration::from_millis(100));
        }
        &self.records
    }

    /// Reads whatever arrives within `d` (to check that nothing more comes).
    pub fn drain(&mut self, d: Duration) -> &[(String, Value)] {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline {
            self.poll_once(Duration::from_millis(100));
        }
        &self.records
    }

    fn poll_once(&mut self, t: Duration) {
        if let Some(m) = self.consumer.poll(t) {
            let m = m.unwrap();
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let v = m
                .payload()
                .map(|p| serde_json::from_slice(p).expect("JSON output"))
                .unwrap_or(Value::Null);
            self.records.push((key, v));
        }
    }
}

impl Reader {
    /// Reads until `done` holds for the records read so far (panics after `timeout`, naming
    /// `what`), then returns them all.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[(String, Value)]) -> bool,
    ) -> &[(String, Value)] {
        let deadline = Instant::now() + timeout;
        while !done(&self.records) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; got {} records: {:#?}",
                self.records.len(),
                self.records
            );
            self.poll_once(Duration::from_millis(100));
        }
        &self.records
    }
}

/// Field `f` of every record as strings.
pub fn field(records: &[(String, Value)], f: &str) -> Vec<String> {
    records
        .iter()
        .map(|(_, v)| v[f].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Builds connector settings JSON with the given booleans on.
pub fn connector_json(tenant: &str, partner: &str, on: &[&str], updated_at: i64) -> Value {
    let mut m: BTreeMap<&str, Value> = BTreeMap::new();
    m.insert("tenant_id", tenant.into());
    m.insert("partner_id", partner.into());
    m.insert("updated_at", updated_at.into());
    for f in on {
        m.insert(f, true.into());
    }
    serde_json::to_value(m).unwrap()
}

/// One input record: topic, key and JSON value.
pub type Record = (String, String, Value);

/// Connector settings of `tenant/partner` with the given booleans on, for `cfg`'s topic.
pub fn connector_record(
    cfg: &Config,
    tenant: &str,
    partner: &str,
    on: &[&str],
    now: i64,
) -> Record {
    (
        cfg.topics.connectors.clone(),
        format!("{tenant}/{partner}"),
        connector_json(tenant, partner, on, now),
    )
}

/// A policy of tenant `acme` on `platform`: an app protection policy with `action`, or a
/// compliance policy without.
pub fn policy_json(
    id: &str,
    platform: &str,
    max_level: &str,
    action: Option<&str>,
    now: i64,
) -> Value {
    let mut p = serde_json::json!({
        "tenant_id": "acme", "policy_id": id, "platform": platform, "max_level": max_level,
        "kind": if action.is_some() { "APP_PROTECTION" } else { "COMPLIANCE" },
        "updated_at": now,
    });
    if let Some(a) = action {
        p["action"] = a.into();
    }
    p
}

/// Tenant `acme`'s tables: Lookout provisioned, set up and with the toggles `lookout` on, the
/// `policies` ([`policy_json`]) and a heartbeat of Lookout at `now`.
pub fn acme_tables(cfg: &Config, lookout: &[&str], policies: &[Value], now: i64) -> Vec<Record> {
    let t = &cfg.topics;
    let on: Vec<&str> = ["provisioned", "setup_complete"]
        .iter()
        .chain(lookout)
        .copied()
        .collect();
    let mut records = vec![connector_record(cfg, "acme", "lookout", &on, now)];
    for p in policies {
        let key = format!("acme/{}", p["policy_id"].as_str().unwrap());
        records.push((t.policies.clone(), key, p.clone()));
    }
    let hb = serde_json::json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now});
    records.push((t.connector_heartbeats.clone(), "acme/lookout".into(), hb));
    records
}

/// Tenant `acme` judging iOS compliance on Lookout's reports: [`acme_tables`] with Lookout's iOS
/// compliance toggle and compliance policy `cp` over `max_level`.
pub fn compliance_tables(cfg: &Config, max_level: &str, now: i64) -> Vec<Record> {
    let cp = policy_json("cp", "IOS", max_level, None, now);
    acme_tables(cfg, &["ios_enabled"], &[cp], now)
}

/// A report of `partner` on iOS device `acme/device` (`management` MDM or MAM) in `state`,
/// without threats.
pub fn report_json(
    event: &str,
    partner: &str,
    device: &str,
    management: &str,
    state: &str,
    observed_at: i64,
) -> Value {
    serde_json::json!({
        "event_id": event, "tenant_id": "acme", "partner_id": partner, "device_id": device,
        "platform": "IOS", "management": management, "health_state": state, "threats": [],
        "observed_at": observed_at,
    })
}

/// The enrollment of `acme/device`: iOS 17.4, MDM, corporate, user `alice`.
pub fn enrollment_json(device: &str, now: i64) -> Value {
    serde_json::json!({
        "tenant_id": "acme", "device_id": device, "user_id": "alice", "platform": "IOS",
        "management": "MDM", "ownership": "CORPORATE", "os_version": "17.4", "enrolled_at": now,
    })
}

/// The enrollment of `acme/device` for `user` on `platform` with `ownership`: MDM, OS 17.4.
pub fn enrollment_for_json(
    device: &str,
    user: &str,
    platform: &str,
    ownership: &str,
    now: i64,
) -> Value {
    serde_json::json!({
        "tenant_id": "acme", "device_id": device, "user_id": user, "platform": platform,
        "management": "MDM", "ownership": ownership, "os_version": "17.4", "enrolled_at": now,
    })
}

/// The groups of user `acme/user` (contract 1.1 `GroupMembership`).
pub fn membership_json(user: &str, groups: &[&str], updated_at: i64) -> Value {
    serde_json::json!({
        "tenant_id": "acme", "user_id": user, "groups": groups, "updated_at": updated_at,
    })
}

/// Tenant `acme`'s settings (contract 1.1 `TenantSettings`): `no_policy_state` (a
/// `NoPolicyState` symbol), reports that never expire.
pub fn settings_json(no_policy_state: &str, updated_at: i64) -> Value {
    serde_json::json!({
        "tenant_id": "acme", "no_policy_state": no_policy_state, "report_validity_days": null,
        "updated_at": updated_at,
    })
}

/// A heartbeat of `acme/partner` sent at `now`, for `cfg`'s topic.
pub fn heartbeat_record(cfg: &Config, partner: &str, now: i64) -> Record {
    (
        cfg.topics.connector_heartbeats.clone(),
        format!("acme/{partner}"),
        serde_json::json!({"tenant_id": "acme", "partner_id": partner, "sent_at": now}),
    )
}

/// One threat of a report: `{category, name, severity}` (severity a `ThreatSeverity` symbol).
pub fn threat_json(category: &str, name: &str, severity: &str) -> Value {
    serde_json::json!({"category": category, "name": name, "severity": severity})
}

/// The App Sync inventory of `acme/device` claiming `ownership`: one managed app
/// (`com.example.managed`) and one unmanaged (`com.example.personal`).
pub fn inventory_json(device: &str, ownership: &str, collected_at: i64) -> Value {
    let app = |id: &str, managed: bool| {
        serde_json::json!({
            "app_id": id, "version": "1.0.0", "short_version": "1.0", "name": id,
            "bundle_size": 1024, "dynamic_size": 0, "ad_hoc_signed": false,
            "from_app_store": true, "beta": false, "device_vpp": false, "validated": true,
            "managed": managed,
        })
    };
    serde_json::json!({
        "tenant_id": "acme", "device_id": device, "ownership": ownership,
        "collected_at": collected_at,
        "apps": [app("com.example.managed", true), app("com.example.personal", false)],
    })
}

/// Round `round` of the MAM stream: device `m{d}` reports HIGH in even rounds and SECURED in
/// odd ones, so under [`mam_tenant_records`] it sees BLOCK, UNBLOCK, BLOCK, ...
pub fn mam_round(cfg: &Config, round: usize, devices: usize) -> Vec<Record> {
    let state = if round % 2 == 0 { "HIGH" } else { "SECURED" };
    (0..devices)
        .map(|d| {
            let r = report_json(
                &format!("r{round}-m{d}"),
                "lookout",
                &format!("m{d}"),
                "MAM",
                state,
                now_ms(),
            );
            (cfg.topics.device_threats.clone(), format!("acme/m{d}"), r)
        })
        .collect()
}

/// The service as a child process (`mtdgate run --config FILE`).
pub struct Process {
    pub child: std::process::Child,
    pub config_path: std::path::PathBuf,
}

/// The directory of the tests' configuration files and logs.
fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("mtdgate-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `cfg` to a TOML file named after `name` (and the process) for the binary's `--config`.
pub fn config_file(cfg: &Config, name: &str) -> std::path::PathBuf {
    let path = scratch_dir().join(format!("{name}-{}.toml", std::process::id()));
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    path
}

impl Process {
    /// Writes `cfg` to a file and starts the binary with it.
    pub fn start(cfg: &Config, name: &str) -> Process {
        let dir = scratch_dir();
        let config_path = config_file(cfg, name);
        let log =
            std::fs::File::create(dir.join(format!("{name}-{}.log", std::process::id()))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mtdgate"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info,librdkafka=warn")
            .stderr(log)
            .spawn()
            .expect("start mtdgate");
        Process { child, config_path }
    }

    /// SIGKILL: no chance to commit or leave the group.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_sigterm(self.child.id());
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_sigterm(pid: u32) {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
}

/// Waits until an HTTP GET of `url` answers 200.
pub fn wait_http_ok(url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if http_get(url, None).map(|(s, _)| s == 200).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not OK within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(url: &str, bearer: Option<&str>) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Wall-clock milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Tenant `acme` with lookout enabled for iOS app protection, a BLOCK policy above LOW and a
/// fresh heartbeat: every HIGH report blocks a MAM device and every SECURED one unblocks it.
pub fn setup_mam_tenant(gw: &Gateway, cfg: &Config, now: i64) {
    gw.setup_tables(&mam_tenant_records(cfg, now));
}

/// The records of the MAM tenant set-up, for tests that send them with a gateway of their own:
/// Lookout with iOS MAM enabled, a BLOCK-over-LOW iOS app protection policy and a heartbeat.
pub fn mam_tenant_records(cfg: &Config, now: i64) -> Vec<Record> {
    let block = policy_json("block", "IOS", "LOW", Some("BLOCK"), now);
    acme_tables(cfg, &["ios_mam_enabled"], &[block], now)
}

/// Asserts that `records` (app protection actions as (key, value)) hold each action id once and
/// give each of exactly `devices` devices the sequence BLOCK, UNBLOCK, ... of `rounds` actions.
pub fn assert_exactly_once(records: &[(String, Value)], devices: usize, rounds: usize) {
    let mut per_device: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for (k, v) in records {
        assert!(
            ids.insert(v["action_id"].as_str().unwrap().to_owned()),
            "duplicate action id {v}"
        );
        per_device
            .entry(k.clone())
            .or_default()
            .push(v["action"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..rounds)
        .map(|r| if r % 2 == 0 { "BLOCK" } else { "UNBLOCK" }.to_owned())
        .collect();
    let wrong: Vec<String> = per_device
        .iter()
        .filter(|(_, a)| **a != expected)
        .map(|(k, a)| format!("{k}: {a:?}"))
        .collect();
    assert!(
        wrong.is_empty() && per_device.len() == devices,
        "{} devices with output (expected {devices}), {} with a wrong sequence (expected \
         {expected:?}):\n{}",
        per_device.len(),
        wrong.len(),
        wrong.join("\n")
    );
}

/// Environment of a [`ClockedProcess`] child: its configuration file and its clock's offset.
/// (Not `MTDGATE_*`: [`Config::load`] reads those as configuration.)
const CHILD_CONFIG_ENV: &str = "TESTKIT_CHILD_CONFIG";
const CHILD_OFFSET_ENV: &str = "TESTKIT_CHILD_CLOCK_OFFSET_MS";
/// What a [`ClockedProcess`] child prints once ready, and after each clock move.
const CHILD_READY: &str = "testkit-child: ready";
const CHILD_ADVANCED: &str = "testkit-child: advanced";

/// The service in a child process with a clock the test moves, for crash tests that also need
/// time to pass: this test binary run again with only the test `entry` (whose body is
/// `if clocked_child_main() { return; }`), on a [`ShiftedClock`] that starts `offset_ms` ahead
/// of the system clock and moves on [`ClockedProcess::advance`] (a line on the child's stdin).
/// [`ClockedProcess::kill`] is SIGKILL: no chance to commit or leave the group. Its output goes
/// to `mtdgate-tests/{name}-{pid}.log` in the temporary directory.
pub struct ClockedProcess {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    offset_ms: i64,
    pub log: std::path::PathBuf,
}

impl ClockedProcess {
    /// Starts the child and waits (up to 90 s) until its service is ready.
    pub fn start(cfg: &Config, name: &str, entry: &str, offset_ms: i64) -> ClockedProcess {
        use std::io::{BufRead, Write};
        use std::process::Stdio;
        let config_path = config_file(cfg, name);
        let log = scratch_dir().join(format!("{name}-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([entry, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_CONFIG_ENV, &config_path)
            .env(CHILD_OFFSET_ENV, offset_ms.to_string())
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file.try_clone().unwrap())
            .spawn()
            .expect("run this test binary as a child");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log_file = log_file;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if line.starts_with("testkit-child:") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = ClockedProcess {
            stdin: child.stdin.take(),
            child,
            lines,
            offset_ms,
            log,
        };
        p.expect_line(CHILD_READY, Duration::from_secs(90));
        p
    }

    /// The child's clock reading (the system clock plus its offset).
    pub fn now(&self) -> i64 {
        now_ms() + self.offset_ms
    }

    /// Moves the child's clock forward by `ms` and waits until it has.
    pub fn advance(&mut self, ms: i64) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "advance {ms}").unwrap();
        stdin.flush().unwrap();
        self.expect_line(&format!("{CHILD_ADVANCED} {ms}"), Duration::from_secs(10));
        self.offset_ms += ms;
    }

    /// SIGKILL: no chance to commit or leave the group.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn expect_line(&mut self, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return,
                Ok(_) => {}
                Err(e) => {
                    let status = self.child.try_wait().ok().flatten();
                    let text = std::fs::read_to_string(&self.log).unwrap_or_default();
                    panic!(
                        "child instance: no `{expected}` within {timeout:?} ({e}; exit status \
                         {status:?}); log {}:\n{text}",
                        self.log.display()
                    );
                }
            }
        }
    }
}

impl Drop for ClockedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a [`ClockedProcess`] child: false when this process is not one (the entry test
/// then does nothing). Otherwise runs the service on the configured clock, moves the clock on
/// each `advance MS` line of stdin, and stops cleanly when stdin closes (the parent is gone).
pub fn clocked_child_main() -> bool {
    use std::io::{BufRead, Write};
    let Ok(path) = std::env::var(CHILD_CONFIG_ENV) else {
        return false;
    };
    let cfg = Config::load(Some(std::path::Path::new(&path))).expect("child configuration");
    let clock = ShiftedClock::new();
    clock.advance(std::env::var(CHILD_OFFSET_ENV).map_or(0, |o| o.parse().unwrap()));
    let svc = Service::start_with_clock(&cfg, clock);
    println!("{CHILD_READY}");
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(ms) = line.strip_prefix("advance ") {
            let ms: i64 = ms.trim().parse().expect("advance MS");
            svc.clock.advance(ms);
            println!("{CHILD_ADVANCED} {ms}");
            std::io::stdout().flush().unwrap();
        }
    }
    svc.stop();
    true
}

impl Reader {
    /// A reader of `topic` on the project's broker in a group of its own (`tag` names it), for
    /// a second, independent read of a topic another [`Reader`] of this process follows.
    pub fn independent(topic: &str, tag: &str) -> Reader {
        let group = format!("reader-{topic}-{tag}-{}", std::process::id());
        Reader {
            consumer: committed_reader(client(broker()), &group, &[topic]),
            records: Vec::new(),
        }
    }
}

impl Gateway {
    /// [`Gateway::send_raw`] for streams that go on through a broker outage: when the
    /// producer's queue is full (the broker is down and records pile up), serves delivery
    /// reports and tries again instead of failing. Any other error panics.
    pub fn send_raw_waiting(&self, topic: &str, key: &[u8], payload: &[u8]) {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        loop {
            let r = BaseRecord::<[u8], [u8]>::to(topic)
                .key(key)
                .payload(payload);
            match self.producer.send(r) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
        self.producer.poll(Duration::ZERO);
    }
}
