//! `mtdgate simulate`: plays the vendor gateways and the admin/MDM side against a Kafka cluster.
//!
//! Phase 1 bootstraps every tenant: connector settings, tenant settings (with
//! `--report-validity-days`), policies (COMPLIANCE ones with `--grace-hours` as their grace
//! period), a first heartbeat per connector and the MDM enrollments of about 70% of the devices
//! (the rest stay unenrolled, MAM). Phase 2 streams device threat reports at the requested rate (mostly SECURED/LOW, a few
//! percent MEDIUM/HIGH/COMPROMISED infections that are later remediated), heartbeats every few
//! seconds per connector (except silenced partners, and now and then one with an error code)
//! and occasional iOS App Sync inventories.
//!
//! Records are keyed as the contract says and produced with a plain [`BaseProducer`] (Kafka's
//! murmur2 partitioner, batching, no per-message waits); the rate is kept by sleeping between
//! small batches. [`run`] is the reusable core: the demo and benchmarks call it directly.

pub mod fleet;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Serialize;

use mtdgate::codec::{self, AvroRecord, OutputEncoding};
use mtdgate::config::Config;
use mtdgate::runtime::clock::{Clock, SystemClock};
use mtdgate::runtime::kafka::{partition_counts, producer_config};

pub use fleet::{device_id, tenant_id, Fleet};

/// The input topics the simulator writes, in [`Summary::topics`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Input {
    DeviceThreats,
    ConnectorHeartbeats,
    Connectors,
    Policies,
    DeviceEnrollments,
    AppInventory,
    TenantSettings,
}

/// Number of input topics the simulator writes.
const INPUTS: usize = Input::ALL.len();

impl Input {
    pub const ALL: [Input; 7] = [
        Input::DeviceThreats,
        Input::ConnectorHeartbeats,
        Input::Connectors,
        Input::Policies,
        Input::DeviceEnrollments,
        Input::AppInventory,
        Input::TenantSettings,
    ];

    /// Short label for summaries.
    pub fn label(self) -> &'static str {
        match self {
            Input::DeviceThreats => "device threat reports",
            Input::ConnectorHeartbeats => "connector heartbeats",
            Input::Connectors => "connector settings",
            Input::Policies => "policies",
            Input::DeviceEnrollments => "device enrollments",
            Input::AppInventory => "app inventories",
            Input::TenantSettings => "tenant settings",
        }
    }

    /// The configured topic name.
    pub fn topic(self, cfg: &Config) -> &str {
        let t = &cfg.topics;
        match self {
            Input::DeviceThreats => &t.device_threats,
            Input::ConnectorHeartbeats => &t.connector_heartbeats,
            Input::Connectors => &t.connectors,
            Input::Policies => &t.policies,
            Input::DeviceEnrollments => &t.device_enrollments,
            Input::AppInventory => &t.app_inventory,
            Input::TenantSettings => &t.tenant_settings,
        }
    }
}

/// Encoding of the simulated inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InputEncoding {
    /// JSON with the schema's field names.
    #[default]
    Json,
    /// Avro single-object encoding.
    Avro,
}

impl InputEncoding {
    fn output(self) -> OutputEncoding {
        match self {
            InputEncoding::Json => OutputEncoding::Json,
            InputEncoding::Avro => OutputEncoding::Avro,
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster, client properties (`kafka.properties`, `kafka.producer`) and topic names.
    pub config: Config,
    /// Tenants (at least one).
    pub tenants: usize,
    /// Devices in total.
    pub devices: usize,
    /// Device threat reports per second; 0 = as fast as possible.
    pub rate: f64,
    /// Stop after this long (phase 2).
    pub duration: Option<Duration>,
    /// Stop after this many device threat reports.
    pub reports: Option<u64>,
    /// Encoding of the records.
    pub encoding: InputEncoding,
    /// Partners whose connectors send no heartbeats.
    pub silence: Vec<String>,
    /// Seed of the random choices: the same seed gives the same fleet and mix of reports.
    pub seed: u64,
    /// Heartbeat period of each connector.
    pub heartbeat_interval: Duration,
    /// `heartbeat_timeout_seconds` of the simulated connectors.
    pub heartbeat_timeout_seconds: i64,
    /// Chance that a heartbeat carries a non-zero error code.
    pub heartbeat_error_rate: f64,
    /// Chance per report that an iOS App Sync inventory is sent as well.
    pub inventory_rate: f64,
    /// `grace_period_hours` of the COMPLIANCE policies (0 = none, as in contract 1.0).
    pub grace_period_hours: i32,
    /// Publish a `TenantSettings` record per tenant with this `report_validity_days`
    /// (`None` = publish none: reports never expire).
    pub report_validity_days: Option<i32>,
    /// Run phase 1 (settings, policies, enrollments).
    pub bootstrap: bool,
    /// Pause after phase 1 so consumers apply the tables before the device traffic.
    pub settle: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Options {
    /// Defaults for `config`: 10 tenants, 10,000 devices, 1,000 reports/s, until stopped.
    pub fn new(config: Config) -> Options {
        Options {
            config,
            tenants: 10,
            devices: 10_000,
            rate: 1_000.0,
            duration: None,
            reports: None,
            encoding: InputEncoding::Json,
            silence: Vec::new(),
            seed: default_seed(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout_seconds: 60,
            heartbeat_error_rate: 0.005,
            inventory_rate: 0.005,
            grace_period_hours: 0,
            report_validity_days: None,
            bootstrap: true,
            settle: Duration::from_millis(500),
            progress: false,
        }
    }
}

fn default_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
}

/// Records of one input topic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicCount {
    pub topic: String,
    pub label: &'static str,
    /// Handed to the producer.
    pub produced: u64,
    /// Acknowledged by the cluster.
    pub delivered: u64,
    /// Failed delivery.
    pub failed: u64,
}

/// What a run sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub tenants: usize,
    pub devices: usize,
    pub enrolled: usize,
    pub seed: u64,
    pub encoding: &'static str,
    /// `grace_period_hours` of the COMPLIANCE policies sent (0 = none).
    pub grace_period_hours: i32,
    /// `report_validity_days` of the tenant settings sent (`None` = none sent).
    pub report_validity_days: Option<i32>,
    /// Per input topic, in [`Input::ALL`] order.
    pub topics: Vec<TopicCount>,
    /// Device threat reports produced in phase 2.
    pub reports: u64,
    pub infections: u64,
    pub remediations: u64,
    /// Length of phase 2.
    pub elapsed: Duration,
    /// Target rate (0 = unlimited).
    pub target_rate: f64,
    pub delivery_errors: u64,
    /// Records neither delivered nor failed when the final flush gave up.
    pub undelivered: u64,
    pub first_error: Option<String>,
}

impl Summary {
    /// Records delivered to `input`'s topic.
    pub fn sent(&self, input: Input) -> u64 {
        self.topics
            .get(input as usize)
            .map(|t| t.delivered)
            .unwrap_or(0)
    }

    /// Device threat reports per second achieved in phase 2.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.reports as f64 / s
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulated {} tenants, {} devices ({} enrolled MDM, {} MAM), {} inputs, seed {}",
            self.tenants,
            group(self.devices as u64),
            group(self.enrolled as u64),
            group((self.devices - self.enrolled) as u64),
            self.encoding,
            self.seed
        )?;
        if let Some(s) = settings_text(self.grace_period_hours, self.report_validity_days) {
            writeln!(f, "settings: {s}")?;
        }
        writeln!(f, "{:>12}  {:<24} topic", "sent", "records")?;
        for t in &self.topics {
            writeln!(f, "{:>12}  {:<24} {}", group(t.delivered), t.label, t.topic)?;
        }
        let target = if self.target_rate > 0.0 {
            format!("target {}/s", group(self.target_rate as u64))
        } else {
            "unlimited".to_owned()
        };
        writeln!(
            f,
            "reports: {} in {:.1} s = {}/s ({target}); {} infections, {} remediations",
            group(self.reports),
            self.elapsed.as_secs_f64(),
            group(self.rate().round() as u64),
            group(self.infections),
            group(self.remediations),
        )?;
        write!(f, "delivery errors: {}", group(self.delivery_errors))?;
        if self.undelivered > 0 {
            write!(f, ", {} not confirmed", group(self.undelivered))?;
        }
        if let Some(e) = &self.first_error {
            write!(f, " (first: {e})")?;
        }
        Ok(())
    }
}

/// `COMPLIANCE grace period 24 h, reports valid 7 days`, or `None` when neither is set.
pub fn settings_text(grace_period_hours: i32, report_validity_days: Option<i32>) -> Option<String> {
    let mut parts = Vec::new();
    if grace_period_hours > 0 {
        parts.push(format!("COMPLIANCE grace period {grace_period_hours} h"));
    }
    if let Some(d) = report_validity_days {
        parts.push(format!("reports valid {d} days"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `1234567` -> `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Counts deliveries per input topic.
#[derive(Default)]
struct Deliveries {
    delivered: [AtomicU64; INPUTS],
    failed: [AtomicU64; INPUTS],
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, topic: usize) {
        match result {
            Ok(_) => {
                self.delivered[topic].fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed[topic].fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// The producer and what it has handed over.
struct Sender {
    producer: BaseProducer<Deliveries>,
    topics: Vec<String>,
    produced: [u64; INPUTS],
    encoding: OutputEncoding,
    buf: Vec<u8>,
}

impl Sender {
    fn new(cfg: &Config, encoding: OutputEncoding) -> anyhow::Result<Sender> {
        // mtdgate's own producer settings (murmur2 keys, idempotence, batching, lz4 and
        // `kafka.producer`), under the simulator's name.
        let mut c = producer_config(cfg, None);
        for (k, v) in [
            ("client.id", "mtdgate-simulate"),
            ("message.timeout.ms", "60000"),
        ] {
            if !cfg.kafka.producer.contains_key(k) {
                c.set(k, v);
            }
        }
        let producer = c
            .create_with_context(Deliveries::default())
            .context("create the simulator's producer")?;
        Ok(Sender {
            producer,
            topics: Input::ALL.iter().map(|i| i.topic(cfg).to_owned()).collect(),
            produced: [0; INPUTS],
            encoding,
            buf: Vec::with_capacity(2048),
        })
    }

    fn send<T: AvroRecord + Serialize>(
        &mut self,
        input: Input,
        key: &str,
        value: &T,
    ) -> anyhow::Result<()> {
        self.buf.clear();
        codec::encode(value, self.encoding, &mut self.buf)?;
        let idx = input as usize;
        let record = BaseRecord::with_opaque_to(&self.topics[idx], idx)
            .key(key.as_bytes())
            .payload(&self.buf[..]);
        crate::tools::send(&self.producer, record)?;
        self.produced[idx] += 1;
        Ok(())
    }

    fn errors(&self) -> u64 {
        let c = self.producer.context();
        c.failed.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

/// One connector's heartbeat schedule.
struct Beat {
    tenant: usize,
    partner: String,
    due: Instant,
}

/// Runs the simulation until its stop condition or `stop` is set; returns what was sent.
pub fn run(opts: &Options, stop: Arc<AtomicBool>) -> anyhow::Result<Summary> {
    let cfg = &opts.config;
    let counts = partition_counts(cfg)?;
    for input in Input::ALL {
        if input == Input::TenantSettings
            && !(opts.bootstrap && opts.report_validity_days.is_some())
        {
            continue; // not written by this run
        }
        let t = input.topic(cfg);
        if !counts.contains_key(t) {
            anyhow::bail!(
                "topic {t} is missing on {}; create the topics with `mtdgate topics create`",
                cfg.kafka.bootstrap_servers
            );
        }
    }
    let clock = SystemClock;
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let run_id: u32 = rand::rng().random();
    let mut sender = Sender::new(cfg, opts.encoding.output())?;
    let mut fleet = Fleet::new(
        opts.tenants,
        opts.devices,
        opts.heartbeat_timeout_seconds,
        clock.now_ms(),
        &mut rng,
    );
    fleet.set_grace_period_hours(opts.grace_period_hours);
    let enrolled = fleet
        .devices
        .iter()
        .filter(|d| d.management == mtdgate::model::Management::Mdm)
        .count();
    let silenced = |partner: &str| opts.silence.iter().any(|s| s == partner);

    // Phase 1: what the admin and the MDM side set up before any device reports.
    let now = clock.now_ms();
    let mut beats = Vec::new();
    if opts.bootstrap {
        for t in &fleet.tenants {
            for c in &t.connectors {
                sender.send(Input::Connectors, &format!("{}/{}", t.id, c.partner_id), c)?;
            }
            if let Some(days) = opts.report_validity_days {
                sender.send(Input::TenantSettings, &t.id, &t.settings(days, now))?;
            }
            for p in &t.policies {
                sender.send(Input::Policies, &format!("{}/{}", t.id, p.policy_id), p)?;
            }
        }
    }
    let period = opts.heartbeat_interval.max(Duration::from_millis(10));
    let start = Instant::now();
    for (ti, t) in fleet.tenants.iter().enumerate() {
        for c in t.live_connectors() {
            if silenced(&c.partner_id) {
                continue;
            }
            sender.send(
                Input::ConnectorHeartbeats,
                &format!("{}/{}", t.id, c.partner_id),
                &Fleet::heartbeat(&t.id, &c.partner_id, now, false),
            )?;
            let offset = period.mul_f64(rng.random::<f64>());
            beats.push(Beat {
                tenant: ti,
                partner: c.partner_id.clone(),
                due: start + offset,
            });
        }
    }
    // Settings, policies and first heartbeats are applied before any device record arrives.
    sender
        .producer
        .flush(Duration::from_secs(30))
        .context("flushing connector settings, policies and heartbeats")?;
    if opts.bootstrap && !opts.settle.is_zero() && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(opts.settle);
    }
    if opts.bootstrap {
        for n in 0..fleet.devices.len() {
            if let Some(e) = fleet.enrollment(n, now) {
                let key = format!("{}/{}", e.tenant_id, e.device_id);
                sender.send(Input::DeviceEnrollments, &key, &e)?;
            }
            if n % 1024 == 0 {
                sender.producer.poll(Duration::ZERO);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        sender
            .producer
            .flush(Duration::from_secs(30))
            .context("flushing the enrollments")?;
    }

    // Phase 2: the stream.
    let bar = progress_bar(opts);
    let started = Instant::now();
    let mut reports: u64 = 0;
    let mut infections = 0;
    let mut remediations = 0;
    let mut last_tick = started;
    let devices = fleet.devices.len();
    loop {
        let mut elapsed = started.elapsed();
        if let Some(d) = opts.duration {
            // At the end, the reports the rate allows for the whole duration are all sent.
            let due = (opts.rate * d.as_secs_f64()) as u64;
            if elapsed >= d && (opts.rate <= 0.0 || reports >= due || devices == 0) {
                break;
            }
            elapsed = elapsed.min(d);
        }
        if stop.load(Ordering::Relaxed)
            || opts.reports.is_some_and(|n| reports >= n || devices == 0)
        {
            break;
        }
        let mut batch: u64 = 1_000;
        if opts.rate > 0.0 {
            let allowed = (opts.rate * elapsed.as_secs_f64()) as u64;
            if allowed <= reports {
                sender.producer.poll(Duration::ZERO);
                let wait = (reports + 1) as f64 / opts.rate - elapsed.as_secs_f64();
                std::thread::sleep(Duration::from_secs_f64(wait.clamp(0.0005, 0.005)));
                heartbeats(&mut sender, &fleet, &mut beats, period, opts, &mut rng)?;
                continue;
            }
            batch = batch.min(allowed - reports);
        }
        if let Some(n) = opts.reports {
            batch = batch.min(n - reports);
        }
        let now = clock.now_ms();
        for _ in 0..batch {
            if devices == 0 {
                break;
            }
            let n = rng.random_range(0..devices);
            let event_id = format!("sim-{run_id:08x}-{reports}");
            let (report, transition) = fleet.report(n, event_id, now, &mut rng);
            match transition {
                fleet::Transition::Infected => infections += 1,
                fleet::Transition::Remediated => remediations += 1,
                fleet::Transition::None => {}
            }
            let key = format!("{}/{}", report.tenant_id, report.device_id);
            sender.send(Input::DeviceThreats, &key, &report)?;
            reports += 1;
            if !fleet.app_sync_devices.is_empty() && rng.random_bool(opts.inventory_rate) {
                let d = fleet.app_sync_devices[rng.random_range(0..fleet.app_sync_devices.len())]
                    as usize;
                let inv = fleet.inventory(d, now, &mut rng);
                let key = format!("{}/{}", inv.tenant_id, inv.device_id);
                sender.send(Input::AppInventory, &key, &inv)?;
            }
        }
        sender.producer.poll(Duration::ZERO);
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            heartbeats(&mut sender, &fleet, &mut beats, period, opts, &mut rng)?;
            if let Some(b) = &bar {
                update_bar(b, opts, reports, started.elapsed(), sender.errors());
            }
        }
        if devices == 0 {
            std::thread::sleep(Duration::from_millis(10));
            heartbeats(&mut sender, &fleet, &mut beats, period, opts, &mut rng)?;
        }
    }
    let elapsed = started.elapsed();
    if let Some(b) = &bar {
        update_bar(b, opts, reports, elapsed, sender.errors());
        b.finish_and_clear();
    }
    let flushed = sender.producer.flush(Duration::from_secs(30));
    let ctx = sender.producer.context();
    let mut summary = Summary {
        tenants: fleet.tenants.len(),
        devices,
        enrolled,
        seed: opts.seed,
        encoding: opts.encoding.output().as_str(),
        grace_period_hours: opts.grace_period_hours,
        report_validity_days: opts.report_validity_days.filter(|_| opts.bootstrap),
        topics: Vec::new(),
        reports,
        infections,
        remediations,
        elapsed,
        target_rate: opts.rate,
        delivery_errors: 0,
        undelivered: 0,
        first_error: ctx.first_error.lock().ok().and_then(|e| e.clone()),
    };
    for input in Input::ALL {
        let i = input as usize;
        let t = TopicCount {
            topic: sender.topics[i].clone(),
            label: input.label(),
            produced: sender.produced[i],
            delivered: ctx.delivered[i].load(Ordering::Relaxed),
            failed: ctx.failed[i].load(Ordering::Relaxed),
        };
        summary.delivery_errors += t.failed;
        summary.undelivered += t.produced.saturating_sub(t.delivered + t.failed);
        summary.topics.push(t);
    }
    if let Err(e) = flushed {
        summary
            .first_error
            .get_or_insert_with(|| format!("final flush: {e}"));
    }
    Ok(summary)
}

/// Sends the heartbeats that are due.
fn heartbeats(
    sender: &mut Sender,
    fleet: &Fleet,
    beats: &mut [Beat],
    period: Duration,
    opts: &Options,
    rng: &mut SmallRng,
) -> anyhow::Result<()> {
    let now = Instant::now();
    let mut wall = None;
    for b in beats.iter_mut() {
        if b.due > now {
            continue;
        }
        let ms = *wall.get_or_insert_with(|| SystemClock.now_ms());
        let tenant = &fleet.tenants[b.tenant].id;
        let error = rng.random_bool(opts.heartbeat_error_rate.clamp(0.0, 1.0));
        sender.send(
            Input::ConnectorHeartbeats,
            &format!("{tenant}/{}", b.partner),
            &Fleet::heartbeat(tenant, &b.partner, ms, error),
        )?;
        b.due += period;
        if b.due < now {
            b.due = now + period;
        }
    }
    Ok(())
}

fn progress_bar(opts: &Options) -> Option<ProgressBar> {
    if !opts.progress {
        return None;
    }
    let (bar, template) = if let Some(n) = opts.reports {
        (
            ProgressBar::new(n),
            "{spinner} {elapsed_precise} [{bar:32}] {percent:>3}% {msg}",
        )
    } else if let Some(d) = opts.duration {
        (
            ProgressBar::new(d.as_secs().max(1)),
            "{spinner} {elapsed_precise} [{bar:32}] {pos}/{len} s {msg}",
        )
    } else {
        (
            ProgressBar::new_spinner(),
            "{spinner} {elapsed_precise} {msg}",
        )
    };
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

fn update_bar(bar: &ProgressBar, opts: &Options, reports: u64, elapsed: Duration, errors: u64) {
    if opts.reports.is_some() {
        bar.set_position(reports);
    } else if opts.duration.is_some() {
        bar.set_position(elapsed.as_secs());
    } else {
        bar.tick();
    }
    let secs = elapsed.as_secs_f64().max(1e-3);
    bar.set_message(format!(
        "{} reports, {}/s, {} delivery errors",
        group(reports),
        group((reports as f64 / secs) as u64),
        group(errors)
    ));
}

/// `mtdgate simulate` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Kafka bootstrap servers [default: 127.0.0.1:9092, or the configuration's].
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// TOML configuration: topic names and kafka.properties (TLS, SASL, ...).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Tenants.
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Devices in total.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Device threat reports per second (0 = as fast as possible).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Stop after this many seconds.
    #[arg(long, conflicts_with = "reports")]
    pub duration: Option<f64>,
    /// Stop after this many device threat reports.
    #[arg(long)]
    pub reports: Option<u64>,
    /// Encoding of the records.
    #[arg(long, value_enum, default_value_t = InputEncoding::Json)]
    pub encoding: InputEncoding,
    /// Send no heartbeats for this partner (repeatable), e.g. `--silence lookout`.
    #[arg(long, value_name = "PARTNER")]
    pub silence: Vec<String>,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds between heartbeats of one connector.
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// heartbeat_timeout_seconds of the simulated connectors.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_timeout: i64,
    /// Chance per device threat report that an iOS App Sync inventory is sent as well.
    #[arg(long, default_value_t = 0.005)]
    pub inventory_rate: f64,
    /// grace_period_hours of the COMPLIANCE policies, 1 to 8760: a failing device is
    /// IN_GRACE_PERIOD that long before it turns NONCOMPLIANT [default: no grace period].
    #[arg(long, value_name = "HOURS", conflicts_with = "no_bootstrap")]
    pub grace_hours: Option<i64>,
    /// Publish tenant settings (one record per tenant) with this report_validity_days, 1 to
    /// 120: older reports count as no usable data [default: none published, reports never
    /// expire].
    #[arg(long, value_name = "DAYS", conflicts_with = "no_bootstrap")]
    pub report_validity_days: Option<i64>,
    /// Skip phase 1 (connector settings, tenant settings, policies, enrollments): stream only.
    #[arg(long)]
    pub no_bootstrap: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl SimulateArgs {
    /// The options these arguments describe.
    pub fn options(&self) -> anyhow::Result<Options> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(b) = &self.bootstrap_servers {
            cfg.kafka.bootstrap_servers = b.clone();
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            anyhow::bail!("--rate must be a number of reports per second, 0 for unlimited");
        }
        if !(self.heartbeat_interval > 0.0 && self.heartbeat_interval.is_finite()) {
            anyhow::bail!("--heartbeat-interval must be a positive number of seconds");
        }
        if !(0.0..=1.0).contains(&self.inventory_rate) {
            anyhow::bail!("--inventory-rate must be a chance between 0 and 1");
        }
        if self.heartbeat_timeout < 1 {
            anyhow::bail!("--heartbeat-timeout must be at least 1 second");
        }
        check_partners(&cfg, &self.silence)?;
        let (grace, validity) = check_settings(self.grace_hours, self.report_validity_days)?;
        let mut o = Options::new(cfg);
        o.grace_period_hours = grace;
        o.report_validity_days = validity;
        o.tenants = self.tenants.max(1);
        o.devices = self.devices;
        o.rate = self.rate;
        o.duration = match self.duration {
            Some(d) if d.is_finite() && d >= 0.0 => Some(Duration::from_secs_f64(d)),
            Some(_) => anyhow::bail!("--duration must be a number of seconds"),
            None => None,
        };
        o.reports = self.reports;
        o.encoding = self.encoding;
        o.silence = self.silence.clone();
        if let Some(s) = self.seed {
            o.seed = s;
        }
        o.heartbeat_interval = Duration::from_secs_f64(self.heartbeat_interval);
        o.heartbeat_timeout_seconds = self.heartbeat_timeout;
        o.inventory_rate = self.inventory_rate;
        o.bootstrap = !self.no_bootstrap;
        o.progress = !self.quiet;
        Ok(o)
    }
}

/// Checks `--grace-hours` (1 to 8760) and `--report-validity-days` (1 to 120), the contract's
/// ranges; returns the `grace_period_hours` (0 when not given) and `report_validity_days` to
/// publish.
pub fn check_settings(
    grace_hours: Option<i64>,
    report_validity_days: Option<i64>,
) -> anyhow::Result<(i32, Option<i32>)> {
    let grace = match grace_hours {
        None => 0,
        Some(h @ 1..=8760) => h as i32,
        Some(h) => anyhow::bail!(
            "--grace-hours {h}: the grace period must be 1 to 8760 hours (a year at most); \
             omit the option for no grace period"
        ),
    };
    let validity = match report_validity_days {
        None => None,
        Some(d @ 1..=120) => Some(d as i32),
        Some(d) => anyhow::bail!(
            "--report-validity-days {d}: reports must stay valid 1 to 120 days; \
             omit the option for reports that never expire"
        ),
    };
    Ok((grace, validity))
}

/// Refuses partner ids the catalogue does not know (e.g. a mistyped `--silence`).
pub fn check_partners(cfg: &Config, partners: &[String]) -> anyhow::Result<()> {
    let catalogue = mtdgate::runtime::load_catalogue(cfg)?;
    for p in partners {
        if catalogue.index(p).is_none() {
            anyhow::bail!(
                "--silence {p}: not a partner id of the catalogue (the simulator uses {}, {}, {} and {})",
                fleet::LOOKOUT,
                fleet::DEFENDER,
                fleet::ZIMPERIUM,
                fleet::SOPHOS
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn options(args: &[&str]) -> anyhow::Result<Options> {
        let cli = Cli::try_parse_from(std::iter::once("simulate").chain(args.iter().copied()))?;
        cli.args.options()
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(4_000), "4,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn the_summary_has_a_row_per_input_topic() {
        let cfg = Config::default();
        let mut s = Summary {
            tenants: 2,
            devices: 100,
            enrolled: 70,
            seed: 3,
            encoding: "json",
            reports: 4_000,
            elapsed: Duration::from_secs(2),
            ..Summary::default()
        };
        for input in Input::ALL {
            s.topics.push(TopicCount {
                topic: input.topic(&cfg).to_owned(),
                label: input.label(),
                produced: 4_000,
                delivered: 4_000,
                failed: 0,
            });
        }
        let text = s.to_string();
        assert!(text.starts_with("simulated 2 tenants, 100 devices (70 enrolled MDM, 30 MAM)"));
        for input in Input::ALL {
            let row = format!("       4,000  {:<24} {}", input.label(), input.topic(&cfg));
            assert!(text.lines().any(|l| l == row), "no row {row:?}:\n{text}");
        }
        assert!(
            text.contains("reports: 4,000 in 2.0 s = 2,000/s (unlimited)"),
            "{text}"
        );
        assert!(text.ends_with("delivery errors: 0"), "{text}");
        assert!(!text.contains("settings:"), "{text}");
        assert_eq!(s.sent(Input::Policies), 4_000);
        s.undelivered = 5;
        assert!(s
            .to_string()
            .ends_with("delivery errors: 0, 5 not confirmed"));
        s.grace_period_hours = 24;
        s.report_validity_days = Some(7);
        let line = s.to_string().lines().nth(1).unwrap().to_owned();
        assert_eq!(
            line,
            "settings: COMPLIANCE grace period 24 h, reports valid 7 days"
        );
        assert_eq!(
            settings_text(0, Some(3)).as_deref(),
            Some("reports valid 3 days")
        );
    }

    #[test]
    fn arguments_become_options() {
        let o = options(&[
            "--tenants",
            "0",
            "--rate",
            "0",
            "--reports",
            "10",
            "--encoding",
            "avro",
            "--seed",
            "7",
            "--inventory-rate",
            "0.05",
            "--silence",
            "lookout",
            "--bootstrap-servers",
            "broker:9092",
        ])
        .unwrap();
        assert_eq!(o.tenants, 1, "at least one tenant");
        assert_eq!((o.rate, o.reports, o.seed), (0.0, Some(10), 7));
        assert_eq!(o.encoding, InputEncoding::Avro);
        assert_eq!(o.inventory_rate, 0.05);
        assert_eq!(o.silence, vec!["lookout".to_owned()]);
        assert_eq!(o.config.kafka.bootstrap_servers, "broker:9092");
        assert!(
            o.bootstrap && o.progress,
            "phase 1 and a progress bar by default"
        );
        assert_eq!(
            (o.grace_period_hours, o.report_validity_days),
            (0, None),
            "no grace period and no tenant settings by default"
        );
        let o = options(&["--grace-hours", "8760", "--report-validity-days", "120"]).unwrap();
        assert_eq!(
            (o.grace_period_hours, o.report_validity_days),
            (8760, Some(120))
        );
        let o = options(&["--grace-hours=1", "--report-validity-days=1"]).unwrap();
        assert_eq!((o.grace_period_hours, o.report_validity_days), (1, Some(1)));
    }

    #[test]
    fn bad_arguments_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["--rate=-1"][..], "--rate"),
            (&["--heartbeat-interval", "0"], "--heartbeat-interval"),
            (&["--heartbeat-timeout", "0"], "--heartbeat-timeout"),
            (&["--inventory-rate", "2"], "--inventory-rate"),
            (&["--duration=-3"], "--duration"),
            (&["--silence", "nosuch"], "--silence nosuch"),
            (
                &["--grace-hours", "0"],
                "--grace-hours 0: the grace period must be 1 to 8760",
            ),
            (&["--grace-hours", "8761"], "--grace-hours 8761"),
            (&["--grace-hours=-2"], "--grace-hours -2"),
            (&["--grace-hours", "24h"], "--grace-hours"),
            (
                &["--report-validity-days", "0"],
                "--report-validity-days 0: reports must stay valid 1 to 120 days",
            ),
            (
                &["--report-validity-days", "121"],
                "--report-validity-days 121",
            ),
            (&["--grace-hours", "4", "--no-bootstrap"], "--no-bootstrap"),
            (
                &["--report-validity-days", "7", "--no-bootstrap"],
                "--no-bootstrap",
            ),
        ] {
            let e = options(args).expect_err("refused").to_string();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}
