//! The Kafka shell around the pure engine: clients, tables, restore, the transactional
//! pipeline and its supervisor.

pub mod changelog_batches;
pub mod clock;
pub mod commit_policy;
pub mod kafka;

pub mod pipeline;
pub mod restore;
pub mod schemas;
pub mod snapshots;
pub mod tables;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tracing::{error, info};

use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::engine::{Engine, EngineReader, EngineSettings};

use clock::Clock;

/// Readiness as seen by `/readyz`, and a reader of the running pipeline's engine for the
/// explain API (which never takes the processing lock). Everything here is an atomic or a
/// lock held only to copy a value in or out, never across pipeline work, so the HTTP surface
/// never waits for the pipeline.
#[derive(Default)]
pub struct Status {
    tables_loaded: AtomicBool,
    /// Every partition of the current assignment restored (and reconciled).
    restored: AtomicBool,
    /// An assignment's partitions are being restored from the changelog.
    restoring: AtomicBool,
    /// The partitions of the current assignment: the shards an explain call looks in.
    assigned: parking_lot::Mutex<Arc<Vec<i32>>>,
    reader: parking_lot::Mutex<Option<(EngineReader, Arc<dyn Clock>)>>,
}

impl Status {
    /// Runs `f` on a reader of the running pipeline's engine, with the clock's now (`None`
    /// before a pipeline started).
    pub fn with_reader<R>(&self, f: impl FnOnce(&EngineReader, i64) -> R) -> Option<R> {
        let (reader, clock) = self.reader.lock().clone()?;
        Some(f(&reader, clock.now_ms()))
    }

    pub(crate) fn set_reader(&self, reader: Option<EngineReader>, clock: Arc<dyn Clock>) {
        *self.reader.lock() = reader.map(|r| (r, clock));
    }

    /// The partitions of the current assignment (empty before the first one).
    pub fn assigned(&self) -> Arc<Vec<i32>> {
        self.assigned.lock().clone()
    }

    pub(crate) fn set_assigned(&self, mut partitions: Vec<i32>) {
        partitions.sort_unstable();
        *self.assigned.lock() = Arc::new(partitions);
    }

    /// What readiness is waiting for.
    pub fn describe(&self) -> &'static str {
        match (
            self.tables_loaded.load(Ordering::SeqCst),
            self.restored.load(Ordering::SeqCst),
        ) {
            (false, _) => "loading connector and policy tables",
            (true, false) if self.restoring() => {
                "restoring the assigned partitions' device state from the changelog"
            }
            (true, false) => "waiting for partition assignment and state restore",
            (true, true) => "ready",
        }
    }

    pub fn set_tables_loaded(&self, v: bool) {
        self.tables_loaded.store(v, Ordering::SeqCst);
    }
    pub fn set_restored(&self, v: bool) {
        self.restored.store(v, Ordering::SeqCst);
    }
    pub fn set_restoring(&self, v: bool) {
        self.restoring.store(v, Ordering::SeqCst);
    }
    /// Whether an assignment's partitions are being restored now.
    pub fn restoring(&self) -> bool {
        self.restoring.load(Ordering::SeqCst)
    }
    /// Tables loaded and every assigned partition restored (false again from a revocation or
    /// a pipeline restart until the next assignment is restored in full).
    pub fn ready(&self) -> bool {
        self.tables_loaded.load(Ordering::SeqCst) && self.restored.load(Ordering::SeqCst)
    }
}

/// Loads the partner catalogue the configuration names.
pub fn load_catalogue(cfg: &Config) -> anyhow::Result<Catalogue> {
    match &cfg.processing.catalogue {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading partner catalogue {path}"))?;
            Ok(Catalogue::parse(&text, &cfg.processing.cloud)?)
        }
        None => Ok(Catalogue::builtin(&cfg.processing.cloud)?),
    }
}

/// Verifies the topics; right after creating them, waits for the metadata to catch up.
fn verify_with_retry(
    cfg: &Config,
    catalogue: &Catalogue,
    just_created: bool,
) -> anyhow::Result<i32> {
    let deadline =
        std::time::Instant::now() + Duration::from_secs(if just_created { 20 } else { 0 });
    loop {
        match kafka::verify_topics(cfg, catalogue) {
            Err(kafka::KafkaSetupError::MissingTopic(_))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            r => return Ok(r?),
        }
    }
}

/// Runs the service until `shutdown` is set: checks topics, then runs pipelines, rebuilding
/// one from committed state whenever it fails.
pub fn run(
    cfg: Config,
    clock: Arc<dyn Clock>,
    shutdown: Arc<AtomicBool>,
    status: Arc<Status>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let catalogue = Arc::new(load_catalogue(&cfg)?);
    if cfg.topics.create {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let created = rt.block_on(kafka::create_topics(&cfg, &catalogue))?;
        if !created.is_empty() {
            info!(topics = ?created, "created topics");
        }
    }
    let partitions = verify_with_retry(&cfg, &catalogue, cfg.topics.create)?;
    info!(partitions, instance = %cfg.kafka.instance_id, "topics verified");
    let schemas = Arc::new(schemas::Schemas::connect(&cfg, &catalogue, &shutdown)?);
    let mut backoff = Duration::from_millis(200);
    loop {
        status.set_tables_loaded(false);
        status.set_restored(false);
        let engine = Engine::new(
            catalogue.clone(),
            EngineSettings {
                max_clock_skew_ms: cfg.processing.max_clock_skew_ms,
            },
        );
        match pipeline::run_pipeline(
            cfg.clone(),
            clock.clone(),
            engine,
            schemas.clone(),
            partitions,
            shutdown.clone(),
            status.clone(),
        ) {
            Ok(()) => return Ok(()),
            // Failing while shutting down: the caller reports it, once.
            Err(e) if shutdown.load(Ordering::SeqCst) => return Err(e),
            Err(e) => {
                crate::telemetry::pipeline_restart();
                error!(
                    error = format!("{e:#}"),
                    "pipeline failed; restarting from committed state"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
