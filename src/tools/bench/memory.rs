//! Resident bytes per tracked device: a fresh process (this binary, `bench --memory-child N
//! --memory-population P`) fills one engine with N devices and reports the growth of its
//! resident set (`VmRSS`) divided by N. Seven fillings per N, each in its own process:
//!
//! - **restored**: the restore part's population (1.0: no groups, no threats) restored from
//!   changelog records built in memory one at a time, as an instance does after a restart or a
//!   rebalance (the Kafka read is the restore part's business). Baseline: the size of one slab
//!   slot (`Option<Device>`), the floor of the design.
//! - **live, 1.0 population**: the same devices through `Engine::apply` as live traffic
//!   ([`super::population`], `Population::Mixed`). Baseline: the slot.
//! - **live, 1.1 population**: contract 1.1's (`Population::Directory`): every user in 3 of its
//!   tenant's 50 groups, policies assigned to groups, one device in ten with 1 to 3 threats.
//!   The memberships are applied after the first RSS reading, so they are counted. Baseline: the
//!   live 1.0 population of the same run. This is the figure the bar (200 B/device at 10M)
//!   judges.
//! - **with a pending deadline on every device** (grace periods and report expiry): each live
//!   population again, with every tenant's `TenantSettings.report_validity_days` set before
//!   the devices arrive ([`population::load_settings`]), so that every device with a usable
//!   report holds an expiry deadline in its shard's index (counted and printed: entries and
//!   devices); and once more with every enrolled device also in a grace (the worst case:
//!   [`population::Pending::Graces`]). Baseline: the same population without, same run. The
//!   bar (200 B/device at 10M) judges these too.
//!
//! The children also print where the bytes go: the RSS after the memberships, and the engine's
//! own estimates of its structures (`DeviceShard::approx_bytes`, `Users::approx_bytes`).

use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;

use crate::tools::simulate::group;
use mtdgate::engine::devices::Device;
use mtdgate::engine::partitioner::partition_for;
use mtdgate::engine::users::USER_COLUMN_BYTES;
use mtdgate::engine::Engine;
use mtdgate::model::Platform;

use super::population::{self, Filled, Pending, Population, PARTITIONS, TENANTS};
use super::world::{self, mixed_state};
use super::{Bar, Figure, MemoryPopulation, Report, Sizes, Unit};

fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn mib(bytes: usize) -> usize {
    bytes >> 20
}

/// The child: fills an engine with `n` devices and prints `MEMORY n before after seconds`,
/// preceded by `INFO` lines on where the bytes went.
pub fn child(n: usize, population: MemoryPopulation) {
    match population {
        MemoryPopulation::Restored => restored_child(n),
        MemoryPopulation::Mixed => live_child(n, Population::Mixed, Pending::None),
        MemoryPopulation::MixedExpiry => live_child(n, Population::Mixed, Pending::Expiry),
        MemoryPopulation::MixedGraces => live_child(n, Population::Mixed, Pending::Graces),
        MemoryPopulation::Directory => live_child(n, Population::Directory, Pending::None),
        MemoryPopulation::DirectoryExpiry => live_child(n, Population::Directory, Pending::Expiry),
        MemoryPopulation::DirectoryGraces => live_child(n, Population::Directory, Pending::Graces),
    }
}

fn restored_child(n: usize) {
    let engine = world::engine();
    let now = world::T0;
    // Warm the allocator and the tenant table with one device, outside the measurement.
    let r = mixed_state(0, TENANTS, now);
    let key = format!("{}/{}", r.tenant_id, r.device_id);
    engine
        .restore(partition_for(key.as_bytes(), PARTITIONS), &key, Some(&r))
        .expect("restore");
    let before = rss();
    let t = Instant::now();
    for i in 1..=n {
        let r = mixed_state(i, TENANTS, now);
        let key = format!("{}/{}", r.tenant_id, r.device_id);
        engine
            .restore(partition_for(key.as_bytes(), PARTITIONS), &key, Some(&r))
            .expect("restore");
    }
    let secs = t.elapsed().as_secs_f64();
    let after = rss();
    assert_eq!(engine.device_count(), n + 1);
    breakdown(&engine, n);
    println!("MEMORY {n} {before} {after} {secs}");
}

fn live_child(n: usize, pop: Population, pending: Pending) {
    let mut engine = world::engine();
    let now = world::T0 + 1_000;
    let mut filled = Filled::default();
    population::load_tables_pending(&mut engine, pop, pending, now);
    // Warm the allocator and the tables with one device (and its user), outside the measurement.
    if pop == Population::Directory {
        population::apply_memberships(&mut engine, 0..1, now, &mut filled);
    }
    population::apply_devices(&mut engine, pop, 0..1, now, &mut filled);
    let before = rss();
    let t = Instant::now();
    if pop == Population::Directory {
        population::apply_memberships(&mut engine, 1..n + 1, now, &mut filled);
        let at = rss();
        println!(
            "INFO after {} memberships: VmRSS {} -> {} MiB, {:.1} B/user",
            group(n as u64),
            mib(before),
            mib(at),
            at.saturating_sub(before) as f64 / n as f64
        );
    }
    population::apply_devices(&mut engine, pop, 1..n + 1, now, &mut filled);
    let secs = t.elapsed().as_secs_f64();
    let after = rss();
    assert_eq!(engine.device_count(), n + 1);
    assert_eq!(filled.rejected, 0, "the population's inputs were rejected");
    println!(
        "INFO applied {} events in {secs:.1} s: {} devices with two partners, {} with threats, \
         {} compliance changes, {} app actions, {} changelog records",
        group(filled.events as u64),
        group(filled.two_partners as u64),
        group(filled.threatened as u64),
        group(filled.compliance_changes as u64),
        group(filled.app_actions as u64),
        group(filled.changelog_records as u64),
    );
    let d = population::deadlines(&engine);
    println!(
        "INFO deadlines: {} scheduled entries (`DeviceShard::scheduled`) for {} devices \
         ({:.1}%), {} devices holding failure starts (`DeviceShard::in_grace`){}",
        group(d.scheduled as u64),
        group(engine.device_count() as u64),
        100.0 * d.scheduled as f64 / engine.device_count() as f64,
        group(d.in_grace as u64),
        match d.first {
            Some(first) => format!(
                ", first due {:.1} days after the reports",
                (first - world::T0) as f64 / world::DAY as f64
            ),
            None => String::new(),
        }
    );
    breakdown(&engine, n);
    println!("MEMORY {n} {before} {after} {secs}");
}

/// Prints the engine's own estimates of its structures, per device.
fn breakdown(engine: &Engine, n: usize) {
    let per = |b: usize| b as f64 / n as f64;
    let shards: usize = engine.shards().iter().map(|s| s.approx_bytes()).sum();
    let tenants = engine.tenants();
    let (mut users, mut user_bytes, mut groups, mut sets, mut threat_sets) = (0, 0, 0, 0, 0);
    let mut scopes = 0;
    for t in 0..TENANTS {
        let Some(id) = tenants.get(&world::tenant_name(t)) else {
            continue;
        };
        let tables = tenants.tables(id);
        users += tables.users.len();
        user_bytes += tables.users.approx_bytes();
        groups += tables.groups.len();
        sets += tables.group_sets.len();
        threat_sets += tables.threat_sets.len();
        scopes += Platform::ALL
            .iter()
            .map(|&p| tables.scopes(p).scopes())
            .sum::<usize>();
    }
    println!(
        "INFO size_of::<Option<Device>>() = {} B, user columns {} B/user",
        std::mem::size_of::<Option<Device>>(),
        USER_COLUMN_BYTES
    );
    println!(
        "INFO approx: device shards (slab, indexes, threat side table) {:.1} B/device, \
         users {:.1} B/device ({} users)",
        per(shards),
        per(user_bytes),
        group(users as u64)
    );
    println!(
        "INFO interned over {} tenants: {} groups, {} group sets, {} threat lists, {} views \
         (tenant x platform x scope)",
        tenants_seen(engine),
        group(groups as u64),
        group(sets as u64),
        group(threat_sets as u64),
        group(scopes as u64)
    );
    drop(tenants);
    let i = population::interned(engine);
    println!(
        "INFO interned values, requested bytes (est., without spare capacity): group sets {:.1} \
         B/device, threat lists {:.1} B/device, group names {:.1} B/device",
        per(i.group_set_bytes),
        per(i.threat_list_bytes),
        per(i.group_bytes)
    );
}

fn tenants_seen(engine: &Engine) -> usize {
    let tenants = engine.tenants();
    (0..TENANTS)
        .filter(|&t| tenants.get(&world::tenant_name(t)).is_some())
        .count()
}

/// One child's result: devices, VmRSS before and after, seconds.
struct Measured {
    per_device: f64,
    before: f64,
    after: f64,
    secs: f64,
}

fn measure(n: usize, population: MemoryPopulation) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe().context("locating the mtdgate binary")?;
    let out = Command::new(&exe)
        .args([
            "bench",
            "--memory-child",
            &n.to_string(),
            "--memory-population",
            population.name(),
        ])
        .env("RUST_LOG", "error")
        .output()
        .context("running the memory child process")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for info in text.lines().filter_map(|l| l.strip_prefix("INFO ")) {
        println!("    {info}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("MEMORY "))
        .with_context(|| {
            format!(
                "memory child ({}) printed no result: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    anyhow::ensure!(f.len() == 4, "unreadable memory result {line:?}");
    Ok(Measured {
        per_device: (f[2] - f[1]).max(0.0) / f[0],
        before: f[1],
        after: f[2],
        secs: f[3],
    })
}

pub fn run(sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let slot = std::mem::size_of::<Option<Device>>() as f64;
    for &n in &sizes.memory_devices {
        let devices = group(n as u64);
        // Per-device figures of this N, as baselines of the variants measured after them.
        let (mut live_10, mut live_11) = (None, None);
        for &population in &sizes.memory_populations {
            let m = measure(n, population)?;
            println!(
                "  {devices} devices {} in {:.1} s: VmRSS {} -> {} MiB, {:.1} B/device",
                population.how(),
                m.secs,
                m.before as u64 >> 20,
                m.after as u64 >> 20,
                m.per_device
            );
            let named = |what: &str| {
                Figure::new(
                    format!("memory @ {devices} devices{what}"),
                    m.per_device,
                    Unit::BytesPerDevice,
                )
            };
            let with_baseline = |f: Figure, b: Option<f64>| match b {
                Some(b) => f.baseline(b),
                None => f,
            };
            let figure = match population {
                MemoryPopulation::Restored => named("").baseline(slot).bar(Bar::AtMost(200.0)),
                MemoryPopulation::Mixed => {
                    live_10 = Some(m.per_device);
                    named(", live, 1.0 population").baseline(slot)
                }
                MemoryPopulation::Directory => {
                    live_11 = Some(m.per_device);
                    with_baseline(
                        named(", live, 1.1 population").bar(Bar::AtMost(200.0)),
                        live_10,
                    )
                }
                MemoryPopulation::MixedExpiry => with_baseline(
                    named(", live, 1.0 population + expiry deadlines").bar(Bar::AtMost(200.0)),
                    live_10,
                ),
                MemoryPopulation::MixedGraces => with_baseline(
                    named(", live, 1.0 population + expiries + graces").bar(Bar::AtMost(200.0)),
                    live_10,
                ),
                MemoryPopulation::DirectoryExpiry => with_baseline(
                    named(", live, 1.1 population + expiry deadlines").bar(Bar::AtMost(200.0)),
                    live_11,
                ),
                MemoryPopulation::DirectoryGraces => with_baseline(
                    named(", live, 1.1 population + expiries + graces").bar(Bar::AtMost(200.0)),
                    live_11,
                ),
            };
            report.push(figure);
        }
    }
    Ok(())
}
