//! The whole service: metrics recorder, HTTP listener and the Kafka runtime.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Config;
use crate::http::{router, HttpState};
use crate::runtime::{self, clock::SystemClock, Status};

/// How often the Prometheus recorder's histograms are drained.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .ok()?
                .install_recorder()
                .ok()?;
            crate::telemetry::describe_all();
            crate::telemetry::build_info();
            // Histogram samples pile up until drained: drained here every few seconds, a
            // render never has more than that to do (and memory stays flat unscraped).
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("mtdgate-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}

/// Serves HTTP on `cfg.http.listen` in a background thread; returns the bound address.
pub fn start_http(cfg: &Config, status: Arc<Status>) -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(&cfg.http.listen)
        .with_context(|| format!("http.listen {}: cannot bind", cfg.http.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state = HttpState::new(prometheus(), status, cfg.http.explain_token.clone());
    std::thread::Builder::new()
        .name("mtdgate-http".into())
        .spawn(move || {
            // One thread serves every request and never runs anything that waits for the
            // pipeline; explain reads and metric renders go to the blocking pool.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(crate::http::EXPLAIN_CONCURRENCY + 4)
                .thread_name("mtdgate-http-blocking")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "http runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "http listener");
                        return;
                    }
                };
                if let Err(e) = axum::serve(listener, router(state)).await {
                    tracing::error!(error = %e, "http server stopped");
                }
            })
        })?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /v1/ (explain)");
    Ok(addr)
}

/// Runs the product until `shutdown` is set: the metrics recorder, the HTTP server and the
/// runtime ([`runtime::run`]) on the system clock.
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>, status: Arc<Status>) -> anyhow::Result<()> {
    prometheus();
    start_http(&cfg, status.clone())?;
    runtime::run(cfg, Arc::new(SystemClock), shutdown, status)
}
