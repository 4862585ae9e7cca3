//! `mtdgate bench`: the end-to-end bars of DESIGN.md measured on a real Kafka broker.
//!
//! The machine the project is measured on is small and shared, so no figure is reported alone:
//! each comes with a baseline measured in the same run on the same broker, and the bars that
//! compare against Kafka itself are judged on the ratio.
//!
//! | part | figure | baseline |
//! |---|---|---|
//! | `throughput` | mtdgate records/s, exactly-once on and off | a plain consume-and-produce pipe ([`pipe`]) with the same client settings, batching and transactions |
//! | `latency` | produce -> visible (read_committed) p50/p99/max at half of mtdgate's max rate (bar p99 <= 150 ms), p50/p99 at a tenth (bar p50 <= 30 ms) | the transactional pipe at the same rates, with the same commit policy |
//!
//! Both pipe baselines are run twice: serving delivery reports before each commit (the plain
//! pipe, which judges the bars) and making exactly mtdgate's commit calls (rust-rdkafka's
//! `commit_transaction`/`flush`, which wait in 100 ms steps), to tell that cost from the rest.
//! | `restore` | device states/s restored from the changelog | reading the same partitions the same way without decoding or applying |
//! | `fanout` | a connector flipping to ignored over 1M devices: clock moved -> 1M changes read back | one transaction with the same records, written by a plain producer |
//! | `grace` | 1M graces ending in the same second: `Engine::advance` alone, and clock moved -> 1M NONCOMPLIANT read back | the fan-out of 1M devices, engine only and end to end, in the same part (bar: 1.2x) |
//! | `memory` | resident bytes per device in a fresh process (1M and 10M devices): restored, and filled live with the 1.0 and the 1.1 populations, each also with a report expiry deadline pending on every device, and with every enrolled device in a grace too | the size of one slab slot; for the 1.1 population, the live 1.0 population; for the expiry variants, the same population without |
//! | `startup` | a fresh start until tables loaded, 20,000 connectors with 100 heartbeats each retained | the same with 1 heartbeat each (bar: 1.2x) |
//! | `reload` | a membership table reload re-evaluating 100,000 users' devices in a 1M-device engine (engine only) | as many membership records that change no policy's scope |
//!
//! Every run uses fresh topic names and consumer groups and deletes its topics at the end.

#[cfg(feature = "experiments")]
mod experiments;
mod fanout;
mod grace;
mod kafka;
mod latency;
mod memory;
mod pipe;
mod population;
mod reload;
mod restore;
mod startup;
mod throughput;
/// The world builders the tests, `benches/core.rs` and `examples/memory.rs` share.
#[path = "../../../tests/support/world.rs"]
mod world;

use std::fmt::Write as _;
use std::time::Instant;

use crate::tools::simulate::group;
use mtdgate::codec::OutputEncoding;

/// The parts of the benchmark, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Records/s of the pipe and of mtdgate, exactly-once on and off.
    Throughput,
    /// Produce -> visible latency at half of mtdgate's measured maximum rate.
    Latency,
    /// Device states/s restored from the changelog.
    Restore,
    /// A connector flipping to ignored over many devices, through the real pipeline.
    Fanout,
    /// Many graces ending in the same second, in the engine and through the real pipeline.
    Grace,
    /// Resident bytes per tracked device.
    Memory,
    /// A membership table reload re-evaluating users' devices, in the engine alone.
    Reload,
    /// Table load of a fresh start, with 1 vs 100 heartbeats per connector retained.
    Startup,
}

impl Part {
    pub const ALL: [Part; 8] = [
        Part::Throughput,
        Part::Latency,
        Part::Restore,
        Part::Fanout,
        Part::Grace,
        Part::Memory,
        Part::Reload,
        Part::Startup,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Throughput => "throughput",
            Part::Latency => "latency",
            Part::Restore => "restore",
            Part::Fanout => "fanout",
            Part::Grace => "grace",
            Part::Memory => "memory",
            Part::Reload => "reload",
            Part::Startup => "startup",
        }
    }
}

/// How the memory part's child process fills its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryPopulation {
    /// The 1.0 population restored from changelog records.
    Restored,
    /// The 1.0 population through `Engine::apply`, as live traffic.
    Mixed,
    /// Contract 1.1's population (groups, group-assigned policies, threats) through `apply`.
    Directory,
    /// [`MemoryPopulation::Mixed`] with `report_validity_days` set for every tenant: every
    /// device with a usable report holds a pending expiry deadline.
    MixedExpiry,
    /// [`MemoryPopulation::MixedExpiry`] with every enrolled device in a grace too.
    MixedGraces,
    /// [`MemoryPopulation::Directory`] with `report_validity_days` set for every tenant.
    DirectoryExpiry,
    /// [`MemoryPopulation::DirectoryExpiry`] with every enrolled device in a grace too.
    DirectoryGraces,
}

impl MemoryPopulation {
    fn name(self) -> &'static str {
        match self {
            MemoryPopulation::Restored => "restored",
            MemoryPopulation::Mixed => "mixed",
            MemoryPopulation::Directory => "directory",
            MemoryPopulation::MixedExpiry => "mixed-expiry",
            MemoryPopulation::MixedGraces => "mixed-graces",
            MemoryPopulation::DirectoryExpiry => "directory-expiry",
            MemoryPopulation::DirectoryGraces => "directory-graces",
        }
    }

    /// Every population, in the order the memory part measures them: each expiry variant
    /// right after the population it adds deadlines to.
    pub const ALL: [MemoryPopulation; 7] = [
        MemoryPopulation::Restored,
        MemoryPopulation::Mixed,
        MemoryPopulation::MixedExpiry,
        MemoryPopulation::MixedGraces,
        MemoryPopulation::Directory,
        MemoryPopulation::DirectoryExpiry,
        MemoryPopulation::DirectoryGraces,
    ];

    /// How the devices got into the engine, for the log.
    fn how(self) -> &'static str {
        match self {
            MemoryPopulation::Restored => "restored (1.0 population)",
            MemoryPopulation::Mixed => "applied live (1.0 population)",
            MemoryPopulation::Directory => "applied live (1.1 population, memberships included)",
            MemoryPopulation::MixedExpiry => {
                "applied live (1.0 population, report expiry deadlines)"
            }
            MemoryPopulation::MixedGraces => {
                "applied live (1.0 population, report expiry deadlines, every enrolled device in \
                 a grace)"
            }
            MemoryPopulation::DirectoryExpiry => {
                "applied live (1.1 population, memberships included, report expiry deadlines)"
            }
            MemoryPopulation::DirectoryGraces => {
                "applied live (1.1 population, memberships included, report expiry deadlines, \
                 every enrolled device in a grace)"
            }
        }
    }
}

/// Encoding of mtdgate's outputs during the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchEncoding {
    Json,
    Avro,
}

/// `mtdgate bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap_servers: String,
    /// Device threat reports pre-loaded for the throughput runs.
    #[arg(long)]
    pub records: Option<u64>,
    /// Partitions of the device topics (mtdgate's default is 6).
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Parts to leave out, e.g. `--skip latency,memory`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<Part>,
    /// Small sizes everywhere: a smoke test of the benchmark itself, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Throughput runs per configuration, interleaved; the table shows the median pair. Also
    /// the grace part's end-to-end pairs (fan-out, grace expiry) and the latency part's runs
    /// (each judged on its own).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Device states written to the changelog for the restore part.
    #[arg(long)]
    pub restore_devices: Option<usize>,
    /// Devices of the tenant whose connector flips to ignored.
    #[arg(long)]
    pub fanout_devices: Option<usize>,
    /// Enrolled devices of the tenant whose graces all end in the same second.
    #[arg(long)]
    pub grace_devices: Option<usize>,
    /// Device counts of the memory part (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub memory_devices: Vec<usize>,
    /// Populations of the memory part (comma separated; default: all seven).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub memory_populations: Vec<MemoryPopulation>,
    /// Devices (one user each) of the engine the reload part changes memberships in.
    #[arg(long)]
    pub reload_devices: Option<usize>,
    /// Users whose membership records the reload part changes.
    #[arg(long)]
    pub reload_users: Option<usize>,
    /// Connectors of the startup part (each with 1, then 100 heartbeats retained).
    #[arg(long)]
    pub startup_connectors: Option<usize>,
    /// Seconds of traffic in the latency part.
    #[arg(long)]
    pub latency_seconds: Option<f64>,
    /// Reports/s of the latency part's first run (default: half of mtdgate's measured
    /// exactly-once rate); its second run is at a fifth of it (a tenth of the maximum).
    #[arg(long)]
    pub latency_rate: Option<f64>,
    /// Encoding of mtdgate's outputs.
    #[arg(long, value_enum, default_value_t = BenchEncoding::Avro)]
    pub output_encoding: BenchEncoding,
    /// Keep the benchmark's topics (they are deleted at the end otherwise).
    #[arg(long)]
    pub keep_topics: bool,
    #[cfg(feature = "experiments")]
    #[command(flatten)]
    pub experiments: experiments::ExperimentArgs,
    /// Internal: fill an engine with N devices in this fresh process and print its memory.
    #[arg(long, hide = true)]
    pub memory_child: Option<usize>,
    /// Internal: how the memory child fills its engine.
    #[arg(long, hide = true, value_enum, default_value_t = MemoryPopulation::Restored)]
    pub memory_population: MemoryPopulation,
}

/// Sizes after `--quick` and the explicit options.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub records: u64,
    pub devices: usize,
    pub tenants: usize,
    pub restore_devices: usize,
    pub fanout_devices: usize,
    pub grace_devices: usize,
    pub memory_devices: Vec<usize>,
    pub memory_populations: Vec<MemoryPopulation>,
    pub reload_devices: usize,
    pub reload_users: usize,
    pub startup_connectors: usize,
    pub latency_seconds: f64,
    pub latency_devices: usize,
}

impl BenchArgs {
    fn sizes(&self) -> Sizes {
        let q = self.quick;
        let records = self.records.unwrap_or(if q { 20_000 } else { 500_000 });
        Sizes {
            records,
            devices: if q { 5_000 } else { 100_000 },
            tenants: if q { 10 } else { 100 },
            restore_devices: self
                .restore_devices
                .unwrap_or(if q { 50_000 } else { 1_000_000 }),
            fanout_devices: self
                .fanout_devices
                .unwrap_or(if q { 20_000 } else { 1_000_000 }),
            grace_devices: self
                .grace_devices
                .unwrap_or(if q { 20_000 } else { 1_000_000 }),
            memory_populations: if self.memory_populations.is_empty() {
                MemoryPopulation::ALL.to_vec()
            } else {
                self.memory_populations.clone()
            },
            memory_devices: if !self.memory_devices.is_empty() {
                self.memory_devices.clone()
            } else if q {
                vec![100_000]
            } else {
                vec![1_000_000, 10_000_000]
            },
            reload_devices: self
                .reload_devices
                .unwrap_or(if q { 50_000 } else { 1_000_000 }),
            reload_users: self.reload_users.unwrap_or(if q { 5_000 } else { 100_000 }),
            startup_connectors: self
                .startup_connectors
                .unwrap_or(if q { 2_000 } else { 20_000 }),
            latency_seconds: self.latency_seconds.unwrap_or(if q { 3.0 } else { 20.0 }),
            latency_devices: if q { 500 } else { 10_000 },
        }
    }

    fn encoding(&self) -> OutputEncoding {
        match self.output_encoding {
            BenchEncoding::Json => OutputEncoding::Json,
            BenchEncoding::Avro => OutputEncoding::Avro,
        }
    }
}

/// Units of a figure, for printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    PerSecond(&'static str),
    Millis,
    Seconds,
    BytesPerDevice,
}

/// What a figure must reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bar {
    /// value >= x
    AtLeast(f64),
    /// value <= x
    AtMost(f64),
    /// value / baseline >= x
    RatioAtLeast(f64),
    /// value / baseline <= x
    RatioAtMost(f64),
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: Unit,
    pub baseline: Option<f64>,
    pub bar: Option<Bar>,
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, unit: Unit) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit,
            baseline: None,
            bar: None,
        }
    }

    fn baseline(mut self, b: f64) -> Figure {
        self.baseline = Some(b);
        self
    }

    fn bar(mut self, bar: Bar) -> Figure {
        self.bar = Some(bar);
        self
    }

    /// value / baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.value / b)
    }

    /// Whether the bar is met (`None`: no bar).
    pub fn met(&self) -> Option<bool> {
        Some(match self.bar? {
            Bar::AtLeast(x) => self.value >= x,
            Bar::AtMost(x) => self.value <= x,
            Bar::RatioAtLeast(x) => self.ratio()? >= x,
            Bar::RatioAtMost(x) => self.ratio()? <= x,
        })
    }

    fn fmt_value(&self, v: f64) -> String {
        match self.unit {
            Unit::PerSecond(what) => format!("{} {what}/s", group(v.round() as u64)),
            Unit::Millis => format!("{v:.1} ms"),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::BytesPerDevice => format!("{v:.1} B/device"),
        }
    }

    fn fmt_bar(&self) -> String {
        match self.bar {
            None => "-".into(),
            Some(Bar::AtLeast(x)) => format!(">= {}", self.fmt_value(x)),
            Some(Bar::AtMost(x)) => format!("<= {}", self.fmt_value(x)),
            Some(Bar::RatioAtLeast(x)) => format!("ratio >= {x:.2}"),
            Some(Bar::RatioAtMost(x)) => format!("ratio <= {x:.2}"),
        }
    }

    /// One line for the log as the figure is measured.
    pub fn line(&self) -> String {
        let mut s = format!("  {}: {}", self.name, self.fmt_value(self.value));
        if let Some(b) = self.baseline {
            let _ = write!(s, " (baseline {}", self.fmt_value(b));
            if let Some(r) = self.ratio() {
                let _ = write!(s, ", ratio {r:.2}");
            }
            s.push(')');
        }
        s
    }
}

/// Everything a run measured, and the parts that failed.
#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub failures: Vec<(Part, String)>,
    pub notes: Vec<String>,
}

impl Report {
    fn push(&mut self, f: Figure) {
        println!("{}", f.line());
        self.figures.push(f);
    }

    /// The final table.
    pub fn table(&self) -> String {
        let head = ["figure", "value", "baseline", "ratio", "bar", "met?"];
        let mut rows: Vec<[String; 6]> = vec![head.map(String::from)];
        for f in &self.figures {
            rows.push([
                f.name.clone(),
                f.fmt_value(f.value),
                f.baseline
                    .map(|b| f.fmt_value(b))
                    .unwrap_or_else(|| "-".into()),
                f.ratio()
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
                f.fmt_bar(),
                match f.met() {
                    None => "-".into(),
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                },
            ]);
        }
        let mut width = [0usize; 6];
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for (k, r) in rows.iter().enumerate() {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = width[i]))
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if k == 0 {
                let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
            }
        }
        for (part, e) in &self.failures {
            let _ = writeln!(out, "FAILED {}: {e}", part.name());
        }
        out
    }
}

/// Runs `mtdgate bench`; prints figures as they are measured and the final table.
pub fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    if let Some(n) = args.memory_child {
        memory::child(n, args.memory_population);
        return Ok(Report::default());
    }
    let sizes = args.sizes();
    // The service's metrics recorder, as in production: its cost is part of the hot path.
    mtdgate::service::prometheus();
    let env = kafka::BenchEnv::new(&args.bootstrap_servers, args.partitions, args.encoding())?;
    #[cfg(feature = "experiments")]
    let env = args.experiments.configure(env)?;
    println!(
        "mtdgate bench: run {} on {}, {} partitions, outputs {}{}",
        env.run_id,
        args.bootstrap_servers,
        args.partitions,
        args.encoding().as_str(),
        if args.quick {
            " (--quick: smoke-test sizes, not a measurement)"
        } else {
            ""
        }
    );
    println!("load: {}", load_average());
    #[cfg(feature = "experiments")]
    if args.experiments.diag {
        experiments::diag(&env, if args.quick { 20 } else { 100 })?;
        env.delete_topics()?;
        return Ok(Report::default());
    }
    let started = Instant::now();
    let mut report = Report::default();
    let mut max_rate: Option<f64> = None;
    for part in Part::ALL {
        if args.skip.contains(&part) {
            continue;
        }
        println!("== {} ==", part.name());
        let t = Instant::now();
        let result = match part {
            Part::Throughput => {
                throughput::run(&env, &sizes, args.repeat.max(1), &mut report).map(|r| {
                    max_rate = Some(r);
                })
            }
            Part::Latency => {
                let rate = args
                    .latency_rate
                    .or(max_rate.map(|r| r / 2.0))
                    .unwrap_or(if args.quick { 500.0 } else { 5_000.0 });
                latency::run(
                    &env,
                    &sizes,
                    rate,
                    max_rate.is_some(),
                    args.repeat.max(1),
                    &mut report,
                )
            }
            Part::Restore => restore::run(&env, &sizes, &mut report),
            Part::Fanout => fanout::run(&env, &sizes, &mut report),
            Part::Grace => grace::run(&env, &sizes, args.repeat.max(1), &mut report),
            Part::Memory => memory::run(&sizes, &mut report),
            Part::Reload => reload::run(&sizes, &mut report),
            Part::Startup => startup::run(&env, &sizes, &mut report),
        };
        match result {
            Ok(()) => println!(
                "   ({} done in {:.1} s)",
                part.name(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!("   {} FAILED: {e:#}", part.name());
                report.failures.push((part, format!("{e:#}")));
            }
        }
    }
    if !args.keep_topics {
        if let Err(e) = env.delete_topics() {
            println!("note: could not delete the benchmark's topics: {e:#}");
        }
    }
    println!(
        "\nmtdgate bench: {:.0} s in all; load: {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    for n in &report.notes {
        println!("note: {n}");
    }
    println!("ratio = value / baseline (same run, same broker)\n");
    print!("{}", report.table());
    Ok(report)
}

/// `/proc/loadavg`'s first three fields, to show how busy the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
