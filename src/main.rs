//! The `mtdgate` command.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod tools;

use mtdgate::config::Config;
use mtdgate::runtime::{self, Status};

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
    init_logging();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr, filtered by `RUST_LOG`; without it the service logs at info, and the
/// interactive commands keep the service's info logs out of their own output.
fn init_logging() {
    let interactive = matches!(
        std::env::args().nth(1).as_deref(),
        Some("demo" | "simulate" | "explain" | "bench")
    );
    let default = if interactive {
        "warn,rdkafka=error"
    } else {
        "info,rdkafka=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = Config::load(config.as_deref())?;
            let shutdown = shutdown_on_signals()?;
            mtdgate::service::run(cfg, shutdown, Arc::new(Status::default()))
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
            let stop = shutdown_on_signals()?;
            let summary = tools::simulate::run(&opts, stop)?;
            println!("{summary}");
            if summary.delivery_errors > 0 || summary.undelivered > 0 {
                anyhow::bail!("some records were not delivered");
            }
            Ok(())
        }
        Command::Demo(args) => tools::demo::run(&args, shutdown_on_signals()?),
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

/// A flag set when SIGTERM or SIGINT arrives; a second arrival of the same signal exits at once
/// (status 130). Fails if a handler cannot be installed, rather than running without one.
fn shutdown_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, Signal, SignalKind};

    async fn watch(mut signal: Signal, name: &'static str, flag: Arc<AtomicBool>) {
        signal.recv().await;
        tracing::info!(signal = name, "shutdown requested");
        flag.store(true, Ordering::SeqCst);
        signal.recv().await;
        std::process::exit(130);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handlers' runtime")?;
    let (term, int) = {
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        )
    };
    let flag = Arc::new(AtomicBool::new(false));
    let (a, b) = (flag.clone(), flag.clone());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::join!(watch(term, "SIGTERM", a), watch(int, "SIGINT", b));
            })
        })
        .context("cannot start the signal handlers' thread")?;
    Ok(flag)
}
