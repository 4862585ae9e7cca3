//! Start-up with a long heartbeat history: the table load of a fresh service start with N
//! connectors (tenants `s00000`.. with Lookout set up) and 1 versus 100 heartbeats per
//! connector retained in the heartbeat topic (delete retention keeps days of them).
//!
//! Each case has its own topics: the connector settings and the heartbeat history are written
//! by a plain idempotent producer, then a first start reads the whole history (no heartbeat
//! view yet) and writes the view; the figure is a later fresh start (new `Engine`, new clients,
//! as after a restart or a deploy) until its tables are loaded, the median of interleaved
//! restarts of the two cases. Baseline: the same with 1 heartbeat per connector (bar: 1.2x).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::BaseRecord;

use crate::tools::simulate::group;
use mtdgate::config::Config;
use mtdgate::model::ConnectorHeartbeat;
use mtdgate::runtime::clock::{Clock, SystemClock};
use mtdgate::runtime::tables::{table_stats, TableStats};

use super::kafka::{flush, send, send_avro, BenchEnv, Instance};
use super::{Bar, Figure, Report, Sizes, Unit};

/// Heartbeats retained per connector in the two cases.
const SHALLOW: usize = 1;
const DEEP: usize = 100;
/// Fresh starts measured per case, interleaved.
const RESTARTS: usize = 5;
const MINUTE: i64 = 60_000;

/// One case: its configuration and what its starts measured.
struct Case {
    rounds: usize,
    cfg: Config,
    /// The first start (no view yet): until tables loaded, and the records it read.
    first: (f64, TableStats),
    /// Later starts: until tables loaded (whole start), and the table read alone.
    starts: Vec<(f64, TableStats)>,
}

/// Writes `n` connectors and `rounds` heartbeats each, oldest round first, the newest a minute
/// before `now`.
fn write_history(
    env: &BenchEnv,
    cfg: &Config,
    n: usize,
    rounds: usize,
    now: i64,
) -> anyhow::Result<()> {
    let producer = env.producer()?;
    let t = &cfg.topics;
    for i in 0..n {
        let tenant = format!("s{i:05}");
        let key = format!("{tenant}/lookout");
        let value = serde_json::json!({
            "tenant_id": tenant, "partner_id": "lookout", "provisioned": true,
            "setup_complete": true, "ios_enabled": true, "updated_at": now - 30 * 1440 * MINUTE,
        });
        let payload = serde_json::to_vec(&value)?;
        send(
            &producer,
            BaseRecord::to(&t.connectors)
                .key(key.as_bytes())
                .payload(&payload),
        )?;
    }
    let mut buf = Vec::with_capacity(128);
    for r in 0..rounds {
        let sent_at = now - (rounds - r) as i64 * MINUTE;
        for i in 0..n {
            let h = ConnectorHeartbeat {
                tenant_id: format!("s{i:05}"),
                partner_id: "lookout".into(),
                sent_at,
                error_code: None,
                min_os_versions: None,
            };
            let key = format!("{}/lookout", h.tenant_id);
            send_avro(&producer, &t.connector_heartbeats, &key, &h, &mut buf)?;
        }
    }
    flush(&producer)
}

/// A fresh start until its tables are loaded: seconds and what the table reader read. With
/// `view_written`, waits until the start wrote a heartbeat view snapshot.
fn start(cfg: &Config, view_written: bool) -> anyhow::Result<(f64, TableStats)> {
    let before = table_stats(cfg).unwrap_or_default();
    let t0 = Instant::now();
    let mut svc = Instance::start(cfg, Arc::new(SystemClock));
    let deadline = t0 + Duration::from_secs(600);
    let (secs, stats) = loop {
        if let Some(s) = table_stats(cfg).filter(|s| s.loads > before.loads) {
            break (t0.elapsed().as_secs_f64(), s);
        }
        svc.check_alive()?;
        anyhow::ensure!(Instant::now() < deadline, "tables not loaded within 600 s");
        std::thread::sleep(Duration::from_millis(1));
    };
    svc.wait_ready(Duration::from_secs(600))?;
    if view_written {
        while table_stats(cfg).is_none_or(|s| s.snapshots == before.snapshots) {
            svc.check_alive()?;
            anyhow::ensure!(Instant::now() < deadline, "no heartbeat view within 600 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    svc.stop()?;
    Ok((secs, stats))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(env: &BenchEnv, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let n = sizes.startup_connectors;
    let now = SystemClock.now_ms();
    let mut cases = Vec::new();
    for rounds in [SHALLOW, DEEP] {
        let cfg = env.config(&format!("startup-{rounds}"), true);
        env.create_all(&cfg)?;
        let t = Instant::now();
        write_history(env, &cfg, n, rounds, now)?;
        println!(
            "  {} connectors x {rounds} heartbeats ({} records) written in {:.1} s",
            group(n as u64),
            group((n * rounds) as u64),
            t.elapsed().as_secs_f64()
        );
        // One heartbeat per connector is no longer than the view: no snapshot is due.
        let first = start(&cfg, rounds == DEEP)?;
        println!(
            "  {rounds} heartbeat(s) each, first start (no view yet): tables loaded after \
             {:.2} s, {} records read ({} heartbeats) in {:.2} s{}",
            first.0,
            group(first.1.loaded_records as u64),
            group(first.1.heartbeat_records as u64),
            first.1.load_seconds,
            if rounds == DEEP { "; view written" } else { "" }
        );
        cases.push(Case {
            rounds,
            cfg,
            first,
            starts: Vec::new(),
        });
    }
    for _ in 0..RESTARTS {
        for c in &mut cases {
            let s = start(&c.cfg, false)?;
            println!(
                "  {} heartbeat(s) each, fresh start: tables loaded after {:.2} s; {} records \
                 read ({} view, {} heartbeats after it) in {:.2} s",
                c.rounds,
                s.0,
                group(s.1.loaded_records as u64),
                group(s.1.view_records as u64),
                group(s.1.heartbeat_records as u64),
                s.1.load_seconds
            );
            c.starts.push(s);
        }
    }
    let whole = |c: &Case| median(c.starts.iter().map(|s| s.0).collect());
    let read = |c: &Case| median(c.starts.iter().map(|s| s.1.load_seconds).collect());
    let (shallow, deep) = (&cases[0], &cases[1]);
    let name = group(n as u64);
    report.push(
        Figure::new(
            format!("start-up, {name} connectors x {DEEP} heartbeats retained: tables loaded"),
            whole(deep),
            Unit::Seconds,
        )
        .baseline(whole(shallow))
        .bar(Bar::RatioAtMost(1.2)),
    );
    report.push(
        Figure::new(
            format!("start-up, {name} connectors x {DEEP} heartbeats: table read alone"),
            read(deep),
            Unit::Seconds,
        )
        .baseline(read(shallow)),
    );
    report.push(
        Figure::new(
            format!("start-up, {name} connectors x {DEEP} heartbeats: first start, no view"),
            deep.first.0,
            Unit::Seconds,
        )
        .baseline(shallow.first.0),
    );
    Ok(())
}
