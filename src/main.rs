//! The `mtdgate` command.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

mod tools;

use mtdgate::config::{Config, ConfigError};
use mtdgate::runtime::{self, Status};

/// mimalloc: the decode path allocates and frees a few small strings per record, which costs
/// markedly fewer instructions than with the system allocator (benches/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status of a runtime failure: Kafka unreachable or refusing the client, a topic missing,
/// the HTTP port taken, a pipeline that cannot go on (README, "Running, logs and exit codes").
const EXIT_FAILURE: u8 = 1;
/// Exit status of a usage or configuration error: clap's own for bad arguments, and mtdgate's for
/// a bad configuration file, `MTDGATE_<SECTION>__<KEY>` override or partner catalogue.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "mtdgate",
    version,
    about = "Kafka-native Mobile Threat Defense compliance engine"
)]
struct Cli {
    /// Log format on stderr: `text` (colours only on a terminal, never with NO_COLOR) or `json`
    /// (one object per line). Which logs: RUST_LOG.
    #[arg(
        long,
        global = true,
        env = "MTDGATE_LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the input topics and publish verdicts, exactly once.
    Run {
        /// TOML configuration file; MTDGATE_<SECTION>__<KEY> variables override it (--help).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the contract's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
        /// TOML configuration file; MTDGATE_<SECTION>__<KEY> variables override it (--help).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration.
    Config {
        /// TOML configuration file; MTDGATE_<SECTION>__<KEY> variables override it (--help).
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

impl Command {
    /// The commands whose own output is for a person at a terminal.
    fn interactive(&self) -> bool {
        matches!(
            self,
            Command::Demo(_) | Command::Simulate(_) | Command::Explain(_) | Command::Bench(_)
        )
    }
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create every missing topic (tables and changelog compacted).
    Create,
    /// Check that every topic exists and the device topics are co-partitioned.
    Verify,
}

/// The long help of every `--config` option: what the file is and how the environment
/// overrides it, with the sections taken from [`Config`] itself.
fn config_help() -> String {
    format!(
        "TOML configuration file; a value it leaves out keeps its built-in default (the \
         defaults work against a local broker).\n\n\
         Environment variables MTDGATE_<SECTION>__<KEY> override it, one value each (two \
         underscores between section and key; any case), e.g. \
         MTDGATE_KAFKA__BOOTSTRAP_SERVERS=broker:9092 or MTDGATE_PROCESSING__MAX_BATCH=5000. \
         Sections: {}. A key the section lacks is an error; other MTDGATE_* variables \
         (MTDGATE_LOG_FORMAT, ...) are not configuration and are ignored.\n\n\
         Every key: README.md, \"Configuration\"; `mtdgate config` prints the effective \
         configuration.",
        mtdgate::config::sections().join(", ")
    )
}

/// The environment and exit statuses, under the help of the program and of each command that
/// takes `--config`.
fn env_help() -> String {
    format!(
        "Environment:\n  \
         MTDGATE_<SECTION>__<KEY>  a configuration value, e.g. \
         MTDGATE_KAFKA__BOOTSTRAP_SERVERS=broker:9092\n                            \
         (sections: {}; README.md, \"Configuration\")\n  \
         MTDGATE_LOG_FORMAT        text (default) or json, as --log-format\n  \
         RUST_LOG                  which logs, e.g. debug or info,mtdgate::runtime=debug \
         (default:\n                            \
         info,rdkafka=warn; demo, simulate, explain, bench: warn,rdkafka=error)\n  \
         NO_COLOR                  no colours in text logs (none either when stderr is not \
         a terminal)\n\n\
         Exit status:\n  \
         0    success\n  \
         1    runtime failure: Kafka unreachable or refusing the client, a topic missing, ...\n  \
         2    usage or configuration error: arguments, configuration file, MTDGATE_ override\n  \
         130  a second SIGINT or SIGTERM during shutdown\n\n\
         README.md, \"Running, logs and exit codes\".",
        mtdgate::config::sections().join(", ")
    )
}

/// Parses the command line (exiting with clap's status 2 on a usage error, 0 after `--help`),
/// with the shared help of `--config` on every command that takes it.
fn parse_cli() -> Cli {
    let (config_help, env_help) = (config_help(), env_help());
    let cmd = Cli::command()
        .after_help(env_help.clone())
        .mut_subcommands(|sub| {
            if sub.get_arguments().any(|a| a.get_id() == "config") {
                // `topics create` and `topics verify` inherit `topics`' global `--config`.
                sub.mut_arg("config", |a| a.long_help(config_help.clone()))
                    .after_long_help(env_help.clone())
                    .mut_subcommands(|s| s.after_long_help(env_help.clone()))
            } else {
                sub
            }
        });
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

/// Why the command failed, and its exit status.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

/// A failure at run time (status 1), or a configuration error (status 2) when the error is one.
impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let config = error.chain().any(|c| c.is::<ConfigError>());
        Failure {
            code: if config { EXIT_USAGE } else { EXIT_FAILURE },
            error,
        }
    }
}

/// A usage or configuration error (status 2).
fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: e.into(),
    }
}

/// The error and its causes on one line, each cause once: a cause whose text its parent already
/// shows (thiserror's `{0}` over a `#[from]` source, figment's errors, ...) is not repeated.
fn render(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The target of the one log line that reports why mtdgate exits; always enabled, whatever
/// RUST_LOG says.
const EXIT_TARGET: &str = "mtdgate::exit";

fn main() -> ExitCode {
    let cli = parse_cli();
    init_logging(cli.log_format, cli.command.interactive());
    match real_main(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            // The only place a fatal error is reported: once, in the log format chosen.
            tracing::error!(target: EXIT_TARGET, exit_code = code, "{}", render(&error));
            ExitCode::from(code)
        }
    }
}

/// Logs to stderr as text or JSON lines, filtered by `RUST_LOG`; without it the service logs at
/// info, and the interactive commands keep the service's info logs out of their own output.
/// Colours only when stderr is a terminal and NO_COLOR is unset or empty.
fn init_logging(format: LogFormat, interactive: bool) {
    use tracing_subscriber::EnvFilter;

    let default = if interactive {
        "warn,rdkafka=error"
    } else {
        "info,rdkafka=warn"
    };
    let (filter, bad_rust_log) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(default), Some(format!("{v:?}: {e}"))),
        },
        _ => (EnvFilter::new(default), None),
    };
    let filter = match format!("{EXIT_TARGET}=error").parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
    if let Some(why) = bad_rust_log {
        tracing::warn!("RUST_LOG ignored, using {default:?}: {why}");
    }
}

fn real_main(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config } => {
            let cfg = Config::load(config.as_deref()).map_err(usage)?;
            // A partner catalogue that cannot be used is a configuration error, found before
            // anything starts.
            runtime::load_catalogue(&cfg).map_err(usage)?;
            let shutdown = shutdown_on_signals()?;
            mtdgate::service::run(cfg, shutdown, Arc::new(Status::default()))?;
            Ok(())
        }
        Command::Topics { action, config } => {
            let cfg = Config::load(config.as_deref()).map_err(usage)?;
            let catalogue = runtime::load_catalogue(&cfg).map_err(usage)?;
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
            let opts = args.options().map_err(usage)?;
            let stop = shutdown_on_signals()?;
            let summary = tools::simulate::run(&opts, stop)?;
            println!("{summary}");
            if summary.delivery_errors > 0 || summary.undelivered > 0 {
                return Err(anyhow::anyhow!("some records were not delivered").into());
            }
            Ok(())
        }
        Command::Demo(args) => Ok(tools::demo::run(&args, shutdown_on_signals()?)?),
        Command::Explain(args) => {
            print!("{}", tools::explain_cli::run(&args)?);
            Ok(())
        }
        Command::Bench(args) => {
            let report = tools::bench::run(&args)?;
            if !report.failures.is_empty() {
                let n = report.failures.len();
                return Err(anyhow::anyhow!("{n} benchmark part(s) failed").into());
            }
            Ok(())
        }
        Command::Config { config } => {
            let cfg = Config::load(config.as_deref()).map_err(usage)?;
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
