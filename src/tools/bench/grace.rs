//! Grace periods ending in bulk: N enrolled devices of one tenant (the fan-out part's world,
//! `world::fanout_tables` / `world::fanout_device`, with Lookout reporting LOW) under COMPLIANCE
//! policies with `grace_period_hours` = 1. One table change, both policies lowering `max_level`
//! from MEDIUM to SECURED, makes every device fail at the same instant: N `IN_GRACE_PERIOD`
//! changes, N graces ending in the same second. Moving the clock past that second makes all N
//! `NONCOMPLIANT` in one `Engine::advance`.
//!
//! - **Engine only** (no Kafka): the time of that `advance` (deadlines taken from the shards'
//!   index, re-evaluation, the N outputs), then with the outputs encoded, against the
//!   fan-out part's engine-only flip (`fanout::engine_only`: a connector going unresponsive
//!   over as many devices, evaluate + encode) measured in the same part. Bar: 1.2x. The entry
//!   into grace (the policy change) is printed too.
//! - **End to end**, through the real exactly-once pipeline, as `fanout.rs` does it: the
//!   changelog is pre-written with the N devices already `IN_GRACE_PERIOD` (their graces
//!   started at the same millisecond, part of the device state), mtdgate restores them with a
//!   `ShiftedClock` and reconciles (nothing may come out: checked; the reconcile schedules the
//!   deadlines), then the clock moves one hour and a second. Figure: time from moving the clock
//!   until a read_committed reader has all N `NONCOMPLIANT` changes. Against the fan-out flip
//!   measured the same way right before it (`fanout::measure`). Bar: 1.2x. Each side's Kafka
//!   floor (the same number of records of its sizes, one plain transaction) is printed too:
//!   the grace expiry's records are larger (reasons, graces in the changelog).
//!
//! With `--repeat R`, R interleaved pairs (odd ones fan-out first, even ones grace first); the
//! table shows the median pair of each kind (use an odd R).

use std::time::Instant;

use crate::tools::simulate::group;
use mtdgate::codec::{self, OutputEncoding};
use mtdgate::engine::{Body, Engine, Output};
use mtdgate::model::{
    ComplianceChange, ComplianceState, DeviceStateRecord, HealthState, Platform, PolicyGrace,
    PolicyLevel,
};
use mtdgate::runtime::clock::{Clock, SystemClock};

use super::fanout::{self, key_of, Flip, Flipped, PARTITIONS_IN_MEMORY, TENANT};
use super::kafka::BenchEnv;
use super::population;
use super::world::{self, fanout_device, fanout_tables, Tables};
use super::{Bar, Figure, Report, Sizes, Unit};

const GRACE_HOURS: i32 = 1;
const GRACE_MS: i64 = GRACE_HOURS as i64 * 3_600_000;

/// The policy id `world::fanout_tables` gives the COMPLIANCE policy of `platform`.
fn policy_id(platform: Platform) -> String {
    format!("compliance-{}", platform.as_str().to_ascii_lowercase())
}

/// The fan-out tenant's tables with a grace on both COMPLIANCE policies, at `max_level`,
/// updated at `updated_at`.
fn grace_tables(now: i64, max_level: PolicyLevel, updated_at: i64) -> Tables {
    let mut t = fanout_tables(TENANT, now);
    for p in &mut t.policies {
        p.max_level = max_level;
        p.grace_period_hours = GRACE_HOURS;
        p.updated_at = updated_at;
    }
    t
}

/// Fan-out device `i` with Lookout reporting LOW: COMPLIANT under MEDIUM, failing SECURED.
fn low_device(i: usize, now: i64) -> DeviceStateRecord {
    let mut r = fanout_device(i, TENANT, now);
    r.partners[0].health_state = HealthState::Low;
    r
}

/// [`low_device`] `i` in grace since `since` under the SECURED policies.
fn in_grace_device(i: usize, now: i64, since: i64) -> DeviceStateRecord {
    let mut r = low_device(i, now);
    r.compliance = ComplianceState::InGracePeriod;
    r.output_seq = 2;
    r.graces = vec![PolicyGrace {
        policy_id: policy_id(r.platform),
        failing_since: since,
    }];
    r
}

fn engine_with(tables: &Tables, now: i64) -> Engine {
    let mut engine = world::engine();
    tables.apply_all(&mut engine, now);
    engine
}

fn compliance_changes(out: &[Output]) -> Vec<&ComplianceChange> {
    out.iter()
        .filter_map(|o| match o {
            Output::Compliance(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Encodes every compliance change (into one reused buffer); returns the mean size.
fn encode_all(out: &[Output], encoding: OutputEncoding) -> anyhow::Result<usize> {
    let mut buf = Vec::with_capacity(512);
    let mut bytes = 0;
    for o in out {
        if let Output::Compliance(c) = o {
            buf.clear();
            codec::encode(c, encoding, &mut buf)?;
            bytes += buf.len();
        }
        std::hint::black_box(&buf);
    }
    Ok(bytes / out.len().max(1))
}

/// The end-to-end world checked on 4 devices: restored in grace, reconciled (nothing comes
/// out, 4 deadlines scheduled), then the grace ends (4 NONCOMPLIANT). Returns one encoded
/// output, for the baseline's size.
fn sanity(now: i64, encoding: OutputEncoding) -> anyhow::Result<Vec<u8>> {
    let mut engine = engine_with(&grace_tables(now, PolicyLevel::Secured, now - 60_000), now);
    for i in 0..4 {
        let r = in_grace_device(i, now, now);
        engine.restore(0, &key_of(&r), Some(&r))?;
    }
    let mut out = Vec::new();
    engine.reconcile(0, now + 5_000, &mut out);
    anyhow::ensure!(
        out.is_empty(),
        "devices restored in grace disagree with their tables: {out:?}"
    );
    let rewritten = population::drain(&engine);
    anyhow::ensure!(
        rewritten == 0,
        "reconciling 4 devices restored in grace rewrote {rewritten} changelog records"
    );
    let d = population::deadlines(&engine);
    anyhow::ensure!(
        d.scheduled == 4 && d.in_grace == 4,
        "reconcile scheduled {} deadlines for 4 devices in grace ({} in grace)",
        d.scheduled,
        d.in_grace
    );
    engine.advance(now + GRACE_MS + 1_000, &mut out);
    let changes = compliance_changes(&out);
    anyhow::ensure!(
        changes.len() == 4
            && changes
                .iter()
                .all(|c| c.current == ComplianceState::Noncompliant),
        "the grace expiry published {out:?}"
    );
    let mut buf = Vec::new();
    codec::encode(changes[0], encoding, &mut buf)?;
    Ok(buf)
}

/// What the engine-only run measured (seconds).
#[derive(Debug, Clone, Default)]
struct EngineOnly {
    /// The policy change: N devices into grace (apply), then encoded.
    entry: f64,
    entry_total: f64,
    entry_drain: f64,
    /// `advance` past the grace end: N devices NONCOMPLIANT, then encoded.
    expiry: f64,
    expiry_total: f64,
    expiry_drain: f64,
    /// Mean encoded size of an expiry's compliance change.
    expiry_size: usize,
    /// Growth of the shards' own estimate (`approx_bytes`) when the graces started, per device.
    grace_bytes: f64,
}

fn engine_only(
    n: usize,
    now: i64,
    encoding: OutputEncoding,
    label: &str,
) -> anyhow::Result<EngineOnly> {
    let mut engine = engine_with(&grace_tables(now, PolicyLevel::Medium, now - 60_000), now);
    for i in 0..n {
        let r = low_device(i, now);
        engine.restore((i % PARTITIONS_IN_MEMORY) as i32, &key_of(&r), Some(&r))?;
    }
    let approx = |e: &Engine| -> usize { e.shards().iter().map(|s| s.approx_bytes()).sum() };
    let bytes_before = approx(&engine);
    let mut m = EngineOnly::default();
    let mut out = Vec::with_capacity(n + 4);

    // One table change: both policies lowered to SECURED, every device fails at `now`.
    let strict = grace_tables(now, PolicyLevel::Secured, now);
    let t = Instant::now();
    for (key, body) in strict.events() {
        if matches!(body, Body::Policy(_)) {
            world::apply(&mut engine, 0, &key, body, now, &mut out);
        }
    }
    m.entry = t.elapsed().as_secs_f64();
    encode_all(&out, encoding)?;
    m.entry_total = t.elapsed().as_secs_f64();
    let changes = compliance_changes(&out);
    anyhow::ensure!(
        changes.len() == n
            && changes.iter().all(|c| {
                c.current == ComplianceState::InGracePeriod
                    && c.grace_ends_at == Some(now + GRACE_MS)
            }),
        "the policy change put {} of {n} devices in grace ({} outputs)",
        changes
            .iter()
            .filter(|c| c.current == ComplianceState::InGracePeriod)
            .count(),
        out.len()
    );
    let t = Instant::now();
    let drained = population::drain(&engine);
    m.entry_drain = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        drained == n,
        "{drained} changelog records after {n} graces started"
    );
    let d = population::deadlines(&engine);
    anyhow::ensure!(
        d.scheduled == n && d.in_grace == n,
        "{} deadlines scheduled, {} devices in grace, for {n} graces",
        d.scheduled,
        d.in_grace
    );
    // Deadlines fire at their instant rounded up to the second.
    let due = (now + GRACE_MS + 999) / 1000 * 1000;
    anyhow::ensure!(
        engine.next_deadline() == Some(due),
        "next deadline {:?}, expected the grace end's second {due}",
        engine.next_deadline()
    );
    m.grace_bytes = approx(&engine).saturating_sub(bytes_before) as f64 / n as f64;
    println!(
        "  {label}: engine only: policy change -> {} devices IN_GRACE_PERIOD in {:.3} s, {:.3} s with \
         encoding; {} changelog records drained in {:.3} s; {} deadlines scheduled, all due in \
         the same second; shards' estimate +{:.1} B/device (graces map + deadline index)",
        group(n as u64),
        m.entry,
        m.entry_total,
        group(drained as u64),
        m.entry_drain,
        group(d.scheduled as u64),
        m.grace_bytes
    );
    drop(changes);
    out.clear();

    // The graces end: one advance past that second.
    let t = Instant::now();
    engine.advance(now + GRACE_MS + 1_000, &mut out);
    m.expiry = t.elapsed().as_secs_f64();
    m.expiry_size = encode_all(&out, encoding)?;
    m.expiry_total = t.elapsed().as_secs_f64();
    let changes = compliance_changes(&out);
    anyhow::ensure!(
        out.len() == n
            && changes
                .iter()
                .all(|c| c.current == ComplianceState::Noncompliant),
        "the grace expiry published {} outputs, {} NONCOMPLIANT, for {n} devices",
        out.len(),
        changes
            .iter()
            .filter(|c| c.current == ComplianceState::Noncompliant)
            .count()
    );
    let (drained, drain_secs, state_size) = fanout::drain_encoded(&engine)?;
    m.expiry_drain = drain_secs;
    let left = population::deadlines(&engine);
    println!(
        "  {label}: engine only: advance past the grace end -> {} devices NONCOMPLIANT in {:.3} s, {:.3} s \
         with encoding ({} B per change); {} deadlines left\n    (then its changelog: {} records \
         drained and Avro-encoded in {:.3} s, {state_size} B on average; not in the figure)",
        group(n as u64),
        m.expiry,
        m.expiry_total,
        m.expiry_size,
        group(left.scheduled as u64),
        group(drained as u64),
        m.expiry_drain
    );
    Ok(m)
}

/// The grace expiry end to end: devices restored in grace, the clock moved past its end.
fn end_to_end(env: &BenchEnv, n: usize, label: &str) -> anyhow::Result<Flipped> {
    let now = SystemClock.now_ms();
    let sample = sanity(now, env.encoding)?;
    let tables = grace_tables(now, PolicyLevel::Secured, now - 60_000);
    let flip = Flip {
        label,
        tables: &tables,
        device: &|i| in_grace_device(i, now, now),
        shift_ms: GRACE_MS + 1_000,
        output: &sample,
        watch: true,
    };
    let f = fanout::end_to_end(env, n, &flip)?;
    for (which, bytes) in [("first", &f.first_output), ("last", &f.last_output)] {
        let c: ComplianceChange = codec::decode(bytes)
            .map_err(|e| anyhow::anyhow!("the {which} output read back: {e}"))?;
        anyhow::ensure!(
            c.current == ComplianceState::Noncompliant && c.cause_event_id.starts_with("timer:"),
            "the {which} output read back is {:?} ({})",
            c.current,
            c.cause_event_id
        );
    }
    Ok(f)
}

/// One interleaved pair: the fan-out flip, then the grace expiry, each engine only and end to
/// end.
struct Pair {
    fanout_engine: f64,
    fanout: Flipped,
    grace: EngineOnly,
    grace_e2e: Flipped,
}

/// The median of `pairs` by `key` (the lower middle for an even count).
fn median_by(pairs: &[Pair], key: impl Fn(&Pair) -> f64) -> &Pair {
    let mut sorted: Vec<&Pair> = pairs.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[(sorted.len() - 1) / 2]
}

pub fn run(
    env: &BenchEnv,
    sizes: &Sizes,
    repeat: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = sizes.grace_devices;
    let mut pairs = Vec::new();
    for r in 1..=repeat {
        // Odd pairs start with the fan-out, even ones with the grace expiry, so that a load
        // rising or falling through the run does not favour either.
        let grace_first = r % 2 == 0;
        println!(
            "  -- pair {r} of {repeat}: {} --",
            if grace_first {
                "the grace expiry, then the fan-out flip"
            } else {
                "the fan-out flip, then the grace expiry"
            }
        );
        let grace_pair = || -> anyhow::Result<(EngineOnly, Flipped)> {
            let now = SystemClock.now_ms();
            let grace = engine_only(n, now, env.encoding, &format!("grace-{r}"))?;
            Ok((grace, end_to_end(env, n, &format!("grace-{r}"))?))
        };
        let fanout_pair = || fanout::measure(env, n, &format!("grace-fanout-{r}"), true);
        let ((grace, grace_e2e), (_, fanout_engine, fanout)) = if grace_first {
            let g = grace_pair()?;
            (g, fanout_pair()?)
        } else {
            let f = fanout_pair()?;
            (grace_pair()?, f)
        };
        println!(
            "  pair {r}: engine only {:.3} / {:.3} s = {:.2}; end to end {:.2} / {:.2} s = {:.2} \
             (Kafka floors {:.2} / {:.2} s = {:.2})",
            grace.expiry_total,
            fanout_engine,
            grace.expiry_total / fanout_engine,
            grace_e2e.all,
            fanout.all,
            grace_e2e.all / fanout.all,
            grace_e2e.base_all,
            fanout.base_all,
            grace_e2e.base_all / fanout.base_all
        );
        pairs.push(Pair {
            fanout_engine,
            fanout,
            grace,
            grace_e2e,
        });
    }
    let name = group(n as u64);
    let e = median_by(&pairs, |p| p.grace.expiry_total / p.fanout_engine);
    let k = median_by(&pairs, |p| p.grace_e2e.all / p.fanout.all);
    if repeat > 1 {
        let index = |p: &Pair| pairs.iter().position(|q| std::ptr::eq(q, p)).unwrap_or(0) + 1;
        println!(
            "  median pairs: engine only pair {}, end to end pair {}",
            index(e),
            index(k)
        );
    }
    report.push(
        Figure::new(
            format!("grace expiry, {name} devices in one second, engine only"),
            e.grace.expiry_total,
            Unit::Seconds,
        )
        .baseline(e.fanout_engine)
        .bar(Bar::RatioAtMost(1.2)),
    );
    report.push(
        Figure::new(
            format!("grace entry (policy change), {name} devices, engine only"),
            e.grace.entry_total,
            Unit::Seconds,
        )
        .baseline(e.fanout_engine),
    );
    report.push(
        Figure::new(
            format!("grace expiry, {name} devices, end to end"),
            k.grace_e2e.all,
            Unit::Seconds,
        )
        .baseline(k.fanout.all)
        .bar(Bar::RatioAtMost(1.2)),
    );
    report.push(
        Figure::new(
            format!("grace expiry, {name} devices, first visible"),
            k.grace_e2e.visible,
            Unit::Seconds,
        )
        .baseline(k.fanout.visible),
    );
    report.push(
        Figure::new(
            format!("grace expiry, {name} devices, end to end vs its Kafka floor"),
            k.grace_e2e.all,
            Unit::Seconds,
        )
        .baseline(k.grace_e2e.base_all),
    );
    Ok(())
}
