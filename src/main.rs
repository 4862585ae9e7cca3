//! The `mtdgate` command.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod tools;

use mtdgate::config::Config;
use mtdgate::runtime::{self, clock::SystemClock, Status};

/// mimalloc: the decode path allocates and frees a few small strings per record, which costs
/// markedly fewer instructions than with the system allocator (benches/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mtdgate",
    version,
    about = "Kafka-native Mobile Threat Defense compliance engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the input topics and publish verdicts, exactly once.
    Run {
        /// TOML configuration file (environment overrides: MTDGATE_SECTION__KEY).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the contract's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration.
    Config {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Play the vendor gateways and the admin/MDM side: settings, policies, enrollments,
    /// then a stream of device threat reports, heartbeats and app inventories.
    Simulate(tools::simulate::SimulateArgs),
    /// Run everything in one process with nothing installed: a mock Kafka cluster, the
    /// service and the simulator, with a live summary every second.
    Demo(tools::demo::DemoArgs),
    /// Ask a running instance why a device has its verdict, or how a tenant's connectors stand.
    Explain(tools::explain_cli::ExplainArgs),
    /// Measure the end-to-end bars on a real broker, each against a baseline of the same run.
    Bench(tools::bench::BenchArgs),
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create every missing topic (tables and changelog compacted).
    Create,
    /// Check that every topic exists and the device topics are co-partitioned.
    Verify,
}

fn main() {
    // The interactive commands keep the service's info logs out of their own output.
    if std::env::var_os("RUST_LOG").is_none()
        && matches!(
            std::env::args().nth(1).as_deref(),
            Some("demo" | "simulate" | "explain")
        )
    {
        std::env::set_var("RUST_LOG", "warn,rdkafka=error");
    }
    if std::env::var_os("RUST_LOG").is_none() && std::env::args().nth(1).as_deref() == Some("bench")
    {
        std::env::set_var("RUST_LOG", "warn,rdkafka=error");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = Config::load(config.as_deref())?;
            let shutdown = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook_consts::SIGTERM, signal_hook_consts::SIGINT] {
                let flag = shutdown.clone();
                ctrlc_like(sig, flag)?;
            }
            mtdgate::service::run(
                cfg,
                Arc::new(SystemClock),
                shutdown,
                Arc::new(Status::default()),
            )
        }
        Command::Topics { action, config } => {
            let cfg = Config::load(config.as_deref())?;
            let catalogue = runtime::load_catalogue(&cfg)?;
            match action {
                TopicsAction::Create => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let created = rt.block_on(runtime::kafka::create_topics(&cfg, &catalogue))?;
                    for t in &created {
                        println!("created {t}");
                    }
                    let n = runtime::kafka::verify_topics(&cfg, &catalogue)?;
                    println!(
                        "{} topics ok; device topics have {n} partitions",
                        runtime::kafka::all_topics(&cfg, &catalogue).len()
                    );
                }
                TopicsAction::Verify => {
                    let n = runtime::kafka::verify_topics(&cfg, &catalogue)?;
                    println!("topics ok; device topics have {n} partitions");
                }
            }
            Ok(())
        }
        Command::Simulate(args) => {
            let opts = args.options()?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook_consts::SIGTERM, signal_hook_consts::SIGINT] {
                ctrlc_like(sig, stop.clone())?;
            }
            let summary = tools::simulate::run(&opts, stop)?;
            println!("{summary}");
            if summary.delivery_errors > 0 || summary.undelivered > 0 {
                anyhow::bail!("some records were not delivered");
            }
            Ok(())
        }
        Command::Demo(args) => {
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook_consts::SIGTERM, signal_hook_consts::SIGINT] {
                ctrlc_like(sig, stop.clone())?;
            }
            tools::demo::run(&args, stop)
        }
        Command::Explain(args) => {
            print!("{}", tools::explain_cli::run(&args)?);
            Ok(())
        }
        Command::Bench(args) => {
            let report = tools::bench::run(&args)?;
            if !report.failures.is_empty() {
                anyhow::bail!("{} benchmark part(s) failed", report.failures.len());
            }
            Ok(())
        }
        Command::Config { config } => {
            let cfg = Config::load(config.as_deref())?;
            print!(
                "{}",
                toml::to_string_pretty(&cfg.redacted()).context("render configuration")?
            );
            Ok(())
        }
    }
}

mod signal_hook_consts {
    pub const SIGTERM: i32 = 15;
    pub const SIGINT: i32 = 2;
}

/// Sets `flag` when signal `sig` arrives (a second arrival exits at once).
fn ctrlc_like(sig: i32, flag: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let kind = tokio::signal::unix::SignalKind::from_raw(sig);
            let mut s = match tokio::signal::unix::signal(kind) {
                Ok(s) => s,
                Err(_) => return,
            };
            s.recv().await;
            tracing::info!(signal = sig, "shutdown requested");
            flag.store(true, Ordering::SeqCst);
            s.recv().await;
            std::process::exit(130);
        })
    });
    Ok(())
}
