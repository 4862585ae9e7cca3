//! `mtdgate demo`: the whole system in one process with nothing installed.
//!
//! Starts librdkafka's in-process mock cluster (or uses a real cluster given with
//! `--bootstrap-servers`), creates the topics, runs the service (HTTP included) and the
//! simulator against it, prints a live summary line every second from the service's Prometheus
//! registry and connector tables, and a final summary.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use crate::tools::simulate::{self, group, InputEncoding, Summary};
use mtdgate::config::Config;
use mtdgate::runtime::{self, Status};
use mtdgate::service;
use mtdgate::telemetry;

/// `mtdgate demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds of simulated traffic (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Devices in total.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Tenants.
    #[arg(long, default_value_t = 10)]
    pub tenants: usize,
    /// Device threat reports per second (0 = as fast as possible).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Use this Kafka cluster instead of the in-process mock cluster (topics are created).
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// TOML configuration (topic names, kafka.properties) for a real cluster.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address of the HTTP listener (metrics, health, explain API); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: String,
    /// Encoding of the simulated inputs.
    #[arg(long, value_enum, default_value_t = InputEncoding::Json)]
    pub encoding: InputEncoding,
    /// Send no heartbeats for this partner (repeatable); with a short
    /// --heartbeat-timeout its connectors turn UNRESPONSIVE.
    #[arg(long, value_name = "PARTNER")]
    pub silence: Vec<String>,
    /// heartbeat_timeout_seconds of the simulated connectors.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_timeout: i64,
    /// Random seed of the simulation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// grace_period_hours of the simulated COMPLIANCE policies, 1 to 8760: infected enrolled
    /// devices turn IN_GRACE_PERIOD (NONCOMPLIANT only once the grace ends) [default: none].
    #[arg(long, value_name = "HOURS")]
    pub grace_hours: Option<i64>,
    /// Publish tenant settings with this report_validity_days (1 to 120) for every simulated
    /// tenant; the explain API then shows each report's expiry [default: none].
    #[arg(long, value_name = "DAYS")]
    pub report_validity_days: Option<i64>,
}

/// The in-process mock cluster, kept alive by the client that hosts it.
struct Mock {
    host: BaseProducer,
    bootstrap: String,
}

impl Mock {
    fn start(cfg: &Config) -> anyhow::Result<Mock> {
        let host: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("client.id", "mtdgate-demo-mock")
            .set("log_level", "3")
            .create()
            .context("start the in-process mock Kafka cluster")?;
        let ptr =
            unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(host.client().native_ptr()) };
        if ptr.is_null() {
            return Err(anyhow!("librdkafka did not start a mock cluster"));
        }
        // The mock coordinator waits 3 s before a group's first assignment by default.
        unsafe { rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(ptr, 0) };
        let mock = host
            .client()
            .mock_cluster()
            .ok_or_else(|| anyhow!("librdkafka did not start a mock cluster"))?;
        let catalogue = runtime::load_catalogue(cfg)?;
        for (topic, _compacted) in runtime::kafka::all_topics(cfg, &catalogue) {
            mock.create_topic(&topic, cfg.topics.partitions, 1)
                .with_context(|| format!("create topic {topic} on the mock cluster"))?;
        }
        let bootstrap = mock.bootstrap_servers();
        drop(mock);
        Ok(Mock { host, bootstrap })
    }
}

/// Counter values of the Prometheus text format, by metric name then label set.
#[derive(Debug, Default, Clone)]
pub struct Counters(BTreeMap<String, BTreeMap<String, f64>>);

impl Counters {
    /// Parses `mtdgate_*` sample lines: `name{label="value"} 12`.
    pub fn parse(text: &str) -> Counters {
        let mut m: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for line in text.lines() {
            if !line.starts_with(telemetry::PREFIX) {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            // Only the first label's value matters for the summaries.
            let label = labels
                .split_once('=')
                .map(|(_, v)| v.split(',').next().unwrap_or(v).trim_matches('"'))
                .unwrap_or("")
                .to_owned();
            *m.entry(name.to_owned())
                .or_default()
                .entry(label)
                .or_default() += value;
        }
        Counters(m)
    }

    /// Values of a counter by its (first) label.
    pub fn by_label(&self, name: &str) -> BTreeMap<String, u64> {
        self.0
            .get(name)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v as u64)).collect())
            .unwrap_or_default()
    }

    /// Sum of a counter over its labels.
    pub fn total(&self, name: &str) -> u64 {
        self.by_label(name).values().sum()
    }

    fn read() -> Counters {
        service::prometheus()
            .map(|h| Counters::parse(&h.render()))
            .unwrap_or_default()
    }
}

fn breakdown(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {}", group(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Current connector statuses over the simulated tenants.
fn connector_statuses(status: &Status, tenants: usize) -> BTreeMap<String, u64> {
    status
        .with_reader(|e, _| {
            let mut m: BTreeMap<String, u64> = BTreeMap::new();
            for i in 0..tenants {
                for c in e.explain_connectors(&simulate::tenant_id(i)) {
                    *m.entry(c.status.as_str().to_owned()).or_default() += 1;
                }
            }
            m
        })
        .unwrap_or_default()
}

/// Picks a free port when `listen` asks for port 0 (the service binds by address).
fn resolve_listen(listen: &str) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| anyhow!("--listen {listen:?} is not an address like 127.0.0.1:9464"))?;
    if addr.port() != 0 {
        return Ok(listen.to_owned());
    }
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("bind {listen}"))?;
    Ok(l.local_addr()?.to_string())
}

fn device_inputs(s: &Summary) -> u64 {
    use simulate::Input;
    s.sent(Input::DeviceThreats) + s.sent(Input::DeviceEnrollments) + s.sent(Input::AppInventory)
}

/// Runs the demo until `--duration` passes or `stop` is set.
pub fn run(args: &DemoArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if args.config.is_none() {
        cfg.kafka.group_id = "mtdgate-demo".into();
        cfg.kafka.instance_id = "demo".into();
        cfg.kafka.transactional_id_prefix = "mtdgate-demo".into();
    }
    simulate::check_partners(&cfg, &args.silence)?;
    let (grace_period_hours, report_validity_days) =
        simulate::check_settings(args.grace_hours, args.report_validity_days)?;
    cfg.http.listen = resolve_listen(&args.listen)?;
    cfg.topics.create = false;
    let mut out = std::io::stdout();

    let mock = match &args.bootstrap_servers {
        Some(servers) => {
            cfg.kafka.bootstrap_servers = servers.clone();
            let catalogue = runtime::load_catalogue(&cfg)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let created = rt.block_on(runtime::kafka::create_topics(&cfg, &catalogue))?;
            writeln!(
                out,
                "kafka: {servers} ({} topics created, {} in all)",
                created.len(),
                runtime::kafka::all_topics(&cfg, &catalogue).len()
            )?;
            None
        }
        None => {
            let mock = Mock::start(&cfg)?;
            cfg.kafka.bootstrap_servers = mock.bootstrap.clone();
            writeln!(
                out,
                "kafka: in-process mock cluster at {} (demo only: no durability)",
                mock.bootstrap
            )?;
            Some(mock)
        }
    };

    // The service.
    let shutdown = Arc::new(AtomicBool::new(false));
    let status = Arc::new(Status::default());
    let mut service: Option<JoinHandle<anyhow::Result<()>>> = Some({
        let (c, s, st) = (cfg.clone(), shutdown.clone(), status.clone());
        std::thread::Builder::new()
            .name("mtdgate-service".into())
            .spawn(move || service::run(c, s, st))?
    });
    let failed = |service: &mut Option<JoinHandle<anyhow::Result<()>>>| -> Option<anyhow::Error> {
        if service.as_ref().is_some_and(|t| t.is_finished()) {
            let r = service.take().map(|t| t.join());
            return Some(match r {
                Some(Ok(Err(e))) => e,
                Some(Ok(Ok(()))) => anyhow!("the service stopped unexpectedly"),
                _ => anyhow!("the service panicked"),
            });
        }
        None
    };
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !status.ready() {
        if let Some(e) = failed(&mut service) {
            forget_mock(mock);
            let hint = if format!("{e:#}").contains("cannot bind") {
                " (another process has that port: pass --listen 127.0.0.1:0 for a free one)"
            } else {
                ""
            };
            return Err(e.context(format!("the service failed to start{hint}")));
        }
        if stop.load(Ordering::SeqCst) {
            writeln!(out, "stopped before the service was ready")?;
            return shutdown_service(&shutdown, &mut service, mock);
        }
        if Instant::now() > ready_by {
            shutdown.store(true, Ordering::SeqCst);
            forget_mock(mock);
            anyhow::bail!(
                "the service was not ready within 60 s ({})",
                status.describe()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    writeln!(
        out,
        "mtdgate: ready; metrics at http://{0}/metrics, explain API at http://{0}/v1/\n  \
         try: mtdgate explain {1} {2} --url http://{0}\n       mtdgate explain {1} --connectors --url http://{0}",
        cfg.http.listen,
        simulate::tenant_id(0),
        simulate::device_id(0),
    )?;

    // The simulator.
    let mut opts = simulate::Options::new(cfg.clone());
    opts.tenants = args.tenants.max(1);
    opts.devices = args.devices;
    opts.rate = args.rate;
    opts.duration = args.duration.map(Duration::from_secs_f64);
    opts.encoding = args.encoding;
    opts.silence = args.silence.clone();
    opts.heartbeat_timeout_seconds = args.heartbeat_timeout.max(1);
    opts.grace_period_hours = grace_period_hours;
    opts.report_validity_days = report_validity_days;
    if let Some(s) = args.seed {
        opts.seed = s;
    }
    let sim_stop = Arc::new(AtomicBool::new(false));
    let mut simulator = Some({
        let (o, s) = (opts.clone(), sim_stop.clone());
        std::thread::Builder::new()
            .name("mtdgate-simulate".into())
            .spawn(move || simulate::run(&o, s))?
    });
    writeln!(
        out,
        "simulator: {} tenants, {} devices, {} reports/s{}{}",
        opts.tenants,
        group(opts.devices as u64),
        if opts.rate > 0.0 {
            group(opts.rate as u64)
        } else {
            "unlimited".into()
        },
        match opts.duration {
            Some(d) => format!(" for {} s", d.as_secs_f64()),
            None => ", Ctrl-C to stop".into(),
        },
        simulate::settings_text(opts.grace_period_hours, opts.report_validity_days)
            .map(|s| format!("; {s}"))
            .unwrap_or_default()
    )?;

    // Live lines.
    let started = Instant::now();
    let mut last = Counters::read();
    let mut last_at = Instant::now();
    let mut summary: Option<Summary> = None;
    let mut error: Option<anyhow::Error> = None;
    let mut next = Instant::now() + Duration::from_secs(1);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(e) = failed(&mut service) {
            error = Some(e.context("the service failed"));
            break;
        }
        if simulator.as_ref().is_some_and(|t| t.is_finished()) {
            match simulator.take().map(|t| t.join()) {
                Some(Ok(Ok(s))) => summary = Some(s),
                Some(Ok(Err(e))) => {
                    error = Some(e.context("the simulator failed"));
                    break;
                }
                _ => {
                    error = Some(anyhow!("the simulator panicked"));
                    break;
                }
            }
        }
        if stop.load(Ordering::SeqCst) || summary.is_some() {
            break;
        }
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            let now = Counters::read();
            let secs = last_at.elapsed().as_secs_f64().max(1e-3);
            let consumed = now.total(telemetry::EVENTS_CONSUMED.name);
            let rate = (consumed.saturating_sub(last.total(telemetry::EVENTS_CONSUMED.name)))
                as f64
                / secs;
            last = now.clone();
            last_at = Instant::now();
            writeln!(
                out,
                "{:>4}s  in {:>7}/s ({:>9})  compliance [{}]  app protection [{}]  connectors [{}]  rejected [{}]",
                started.elapsed().as_secs(),
                group(rate.round() as u64),
                group(consumed),
                breakdown(&now.by_label(telemetry::COMPLIANCE_CHANGES.name)),
                breakdown(&now.by_label(telemetry::APP_PROTECTION_ACTIONS.name)),
                breakdown(&connector_statuses(&status, opts.tenants)),
                breakdown(&now.by_label(telemetry::REJECTED.name)),
            )?;
            out.flush()?;
        }
    }

    // Stop the simulator, let the service catch up, stop the service.
    sim_stop.store(true, Ordering::SeqCst);
    if let Some(t) = simulator.take() {
        match t.join() {
            Ok(Ok(s)) => summary = Some(s),
            Ok(Err(e)) => {
                error.get_or_insert(e.context("the simulator failed"));
            }
            Err(_) => {
                error.get_or_insert(anyhow!("the simulator panicked"));
            }
        }
    }
    if let Some(e) = error {
        shutdown.store(true, Ordering::SeqCst);
        if let Some(s) = &summary {
            writeln!(out, "{s}")?;
        }
        forget_mock(mock);
        return Err(e);
    }
    if let Some(s) = &summary {
        let want = device_inputs(s);
        let by = Instant::now() + Duration::from_secs(15);
        while Counters::read().total(telemetry::EVENTS_CONSUMED.name) < want
            && Instant::now() < by
            && !stop.load(Ordering::SeqCst)
        {
            if let Some(e) = failed(&mut service) {
                forget_mock(mock);
                return Err(e.context("the service failed"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // One more commit interval so the last outputs are published.
        std::thread::sleep(Duration::from_millis(
            cfg.processing.commit_interval_ms * 2 + 100,
        ));
    }
    let end = Counters::read();
    let connectors = connector_statuses(&status, opts.tenants);
    let stopped = shutdown_service(&shutdown, &mut service, mock);

    let line = |name: &str, key: &str| {
        let m = end.by_label(key);
        format!(
            "{name:<26}{:>10}  ({})",
            group(m.values().sum()),
            breakdown(&m)
        )
    };
    writeln!(
        out,
        "\nsummary after {:.1} s",
        started.elapsed().as_secs_f64()
    )?;
    if let Some(s) = &summary {
        writeln!(out, "{s}")?;
    }
    writeln!(
        out,
        "{:<26}{:>10}",
        "records consumed",
        group(end.total(telemetry::EVENTS_CONSUMED.name))
    )?;
    writeln!(
        out,
        "{}",
        line("compliance changes", telemetry::COMPLIANCE_CHANGES.name)
    )?;
    writeln!(
        out,
        "{}",
        line(
            "app protection actions",
            telemetry::APP_PROTECTION_ACTIONS.name
        )
    )?;
    writeln!(
        out,
        "{}",
        line(
            "connector status changes",
            telemetry::CONNECTOR_STATUS_CHANGES.name
        )
    )?;
    writeln!(
        out,
        "{:<26}{:>10}  ({})",
        "connectors now",
        connectors.values().sum::<u64>(),
        breakdown(&connectors)
    )?;
    writeln!(out, "{}", line("rejected", telemetry::REJECTED.name))?;
    writeln!(
        out,
        "{:<26}{:>10}",
        "transactions committed",
        group(
            end.by_label(telemetry::TRANSACTIONS.name)
                .get("commit")
                .copied()
                .unwrap_or(0)
        )
    )?;
    out.flush()?;
    stopped
}

/// Stops the service (up to 30 s) and then the mock cluster.
fn shutdown_service(
    shutdown: &AtomicBool,
    service: &mut Option<JoinHandle<anyhow::Result<()>>>,
    mock: Option<Mock>,
) -> anyhow::Result<()> {
    shutdown.store(true, Ordering::SeqCst);
    let by = Instant::now() + Duration::from_secs(30);
    while service.as_ref().is_some_and(|t| !t.is_finished()) {
        if Instant::now() > by {
            forget_mock(mock);
            anyhow::bail!("the service did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = match service.take().map(|t| t.join()) {
        Some(Ok(r)) => r.context("the service failed while stopping"),
        Some(Err(_)) => Err(anyhow!("the service panicked")),
        None => Ok(()),
    };
    drop(mock);
    result
}

/// Leaves the mock cluster running for the rest of the process: clients that may still use
/// it would otherwise wait on a destroyed cluster.
fn forget_mock(mock: Option<Mock>) {
    if let Some(m) = mock {
        std::mem::forget(m.host);
    }
}
