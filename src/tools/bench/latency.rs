//! Produce -> visible latency at a fixed rate: every report flips a MAM device between HIGH and
//! SECURED under a BLOCK policy, so each one publishes exactly one app protection action; a
//! read_committed reader measures from the moment the report was handed to the producer (the
//! time is carried in its `event_id`, and mtdgate copies it into `cause_event_id`) to the
//! moment the action is delivered to the reader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;

use crate::tools::simulate::group;
use mtdgate::codec::{self, OutputEncoding};
use mtdgate::model::*;
use mtdgate::runtime::clock::{Clock, SystemClock};

use super::kafka::{flush, send, send_tables, warm, BenchEnv, Instance};
use super::pipe::{PipeOptions, PipeThread};
use super::world::{mam_tables, LOOKOUT};
use super::{Bar, Figure, Report, Sizes, Unit};

const TENANT: &str = "latency";

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What the reader finds in an output record.
#[derive(Clone, Copy)]
enum Output {
    /// The pipe's copy of the report.
    Report,
    /// mtdgate's app protection action.
    Action,
}

fn sent_at(kind: Output, payload: &[u8]) -> Option<i64> {
    let id = match kind {
        Output::Report => codec::decode::<DeviceThreatReport>(payload).ok()?.event_id,
        Output::Action => {
            codec::decode::<AppProtectionAction>(payload)
                .ok()?
                .cause_event_id
        }
    };
    id.rsplit_once('-')?.1.parse().ok()
}

/// Latencies in ms, sorted, and the rate achieved.
struct Measured {
    ms: Vec<f64>,
    rate: f64,
}

impl Measured {
    fn pct(&self, q: f64) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        let k = ((self.ms.len() as f64 * q).ceil() as usize).clamp(1, self.ms.len());
        self.ms[k - 1]
    }
}

fn measure(
    env: &BenchEnv,
    input: &str,
    reader: BaseConsumer,
    kind: Output,
    rate: f64,
    secs: f64,
    devices: usize,
) -> anyhow::Result<Measured> {
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (s, d) = (sent.clone(), done.clone());
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 90.0);
    let reading = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let mut ms = Vec::new();
        let mut got = 0u64;
        loop {
            if d.load(Ordering::SeqCst) && got >= s.load(Ordering::SeqCst) {
                return Ok(ms);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "read {got} of {} outputs before the deadline",
                    s.load(Ordering::SeqCst)
                );
            }
            match reader.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => {
                    let now = now_us();
                    got += 1;
                    if let Some(at) = m.payload().and_then(|p| sent_at(kind, p)) {
                        ms.push((now - at) as f64 / 1000.0);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "latency reader"),
                None => {}
            }
        }
    });
    let producer = env.producer()?;
    let total = (rate * secs).round().max(1.0) as u64;
    let devices = devices.max(1) as u64;
    let mut buf = Vec::with_capacity(256);
    let started = Instant::now();
    let mut i = 0u64;
    while i < total {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while i < due {
            let d = i % devices;
            let round = i / devices;
            let report = DeviceThreatReport {
                event_id: format!("lat-{i}-{}", now_us()),
                tenant_id: TENANT.into(),
                partner_id: LOOKOUT.into(),
                device_id: format!("m{d}"),
                user_id: None,
                platform: Platform::Ios,
                management: Management::Mam,
                ownership: Some(Ownership::Personal),
                os_version: None,
                health_state: if round % 2 == 0 {
                    HealthState::High
                } else {
                    HealthState::Secured
                },
                threats: Vec::new(),
                observed_at: SystemClock.now_ms(),
            };
            buf.clear();
            codec::encode(&report, OutputEncoding::Avro, &mut buf)?;
            let key = format!("{TENANT}/m{d}");
            send(
                &producer,
                BaseRecord::to(input).key(key.as_bytes()).payload(&buf[..]),
            )?;
            i += 1;
            sent.store(i, Ordering::SeqCst);
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    flush(&producer)?;
    done.store(true, Ordering::SeqCst);
    let mut ms = reading
        .join()
        .map_err(|_| anyhow::anyhow!("latency reader panicked"))??;
    if (ms.len() as u64) < total {
        anyhow::bail!("only {} of {total} outputs carried a send time", ms.len());
    }
    ms.sort_by(f64::total_cmp);
    Ok(Measured { ms, rate: achieved })
}

fn produce_tables(env: &BenchEnv, cfg: &mtdgate::config::Config) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    let producer = env.producer()?;
    send_tables(
        &producer,
        &cfg.topics,
        &mam_tables(TENANT, now - 60_000, now),
    )?;
    flush(&producer)
}

/// The pipe's and then mtdgate's latency at one rate.
fn at_rate(
    env: &BenchEnv,
    sizes: &Sizes,
    rate: f64,
    label: &str,
) -> anyhow::Result<(Measured, Measured)> {
    let secs = sizes.latency_seconds;
    let p = env.partitions;
    // Baseline: the transactional pipe, same commit interval, same reader.
    let pipe_in = env.topic(&format!("{label}-pipe.in"));
    let pipe_out = env.topic(&format!("{label}-pipe.out"));
    env.create_topic(&pipe_in, p, false)?;
    env.create_topic(&pipe_out, p, false)?;
    let mut pipe = PipeThread::start(PipeOptions {
        config: env.config(&format!("{label}-pipe"), true),
        input: pipe_in.clone(),
        output: pipe_out.clone(),
        drain: true,
    });
    pipe.wait_assigned(Duration::from_secs(60))?;
    let reader = env.reader(&pipe_out, p)?;
    warm(&reader, Duration::from_secs(1));
    let base = measure(
        env,
        &pipe_in,
        reader,
        Output::Report,
        rate,
        secs,
        sizes.latency_devices,
    );
    pipe.stop()?;
    let base = base?;

    let cfg = env.config(&format!("{label}-mtd"), true);
    env.create_all(&cfg)?;
    produce_tables(env, &cfg)?;
    let mut svc = Instance::start(&cfg, Arc::new(SystemClock));
    svc.wait_ready(Duration::from_secs(120))?;
    let reader = env.reader(&cfg.topics.app_protection_actions, p)?;
    warm(&reader, Duration::from_secs(1));
    let got = measure(
        env,
        &cfg.topics.device_threats,
        reader,
        Output::Action,
        rate,
        secs,
        sizes.latency_devices,
    );
    svc.stop()?;
    let got = got?;
    for (who, m) in [("pipe", &base), ("mtdgate", &got)] {
        println!(
            "    {who} @ {} /s: {} outputs at {} /s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            group(rate as u64),
            group(m.ms.len() as u64),
            group(m.rate as u64),
            m.pct(0.5),
            m.pct(0.99),
            m.pct(1.0)
        );
    }
    Ok((base, got))
}

/// Measures the transactional pipe and then mtdgate (exactly-once) at `rate` reports/s (half
/// of the maximum: the p99 bar), then both again at a fifth of that rate (a tenth of the
/// maximum: the p50 bar, where the commit policy, not the machine, sets the latency); the
/// pair `repeat` times, each run judged on its own (the bars hold "in each run").
pub fn run(
    env: &BenchEnv,
    sizes: &Sizes,
    rate: f64,
    from_max: bool,
    repeat: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    println!(
        "  rate {} reports/s{} for {:.0} s over {} MAM devices; every report publishes one \
         action (the throughput mix publishes about one output per seven reports)",
        group(rate as u64),
        if from_max {
            " (half of mtdgate's exactly-once maximum above)"
        } else {
            ""
        },
        sizes.latency_seconds,
        group(sizes.latency_devices as u64)
    );
    // (label, rate, quantiles with the bar of each)
    let runs = [
        (
            "lat",
            rate,
            &[
                ("p50", 0.5, None),
                ("p99", 0.99, Some(Bar::AtMost(150.0))),
                ("max", 1.0, None),
            ][..],
        ),
        (
            "lat-tenth",
            rate / 5.0,
            &[("p50", 0.5, Some(Bar::AtMost(30.0))), ("p99", 0.99, None)][..],
        ),
    ];
    for run in 1..=repeat {
        for (label, rate, quantiles) in runs {
            let label = format!("{label}{run}");
            let (base, got) = at_rate(env, sizes, rate, &label)?;
            let r = group(rate as u64);
            let of = if repeat > 1 {
                format!(", run {run}")
            } else {
                String::new()
            };
            for &(name, q, bar) in quantiles {
                let title = format!("latency {name} @ {r}/s{of}");
                let mut f = Figure::new(title, got.pct(q), Unit::Millis).baseline(base.pct(q));
                if let Some(bar) = bar {
                    f = f.bar(bar);
                }
                report.push(f);
            }
        }
    }
    Ok(())
}
