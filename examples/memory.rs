//! Resident memory per tracked device.
//!
//! Fills one engine with N devices the way live traffic does (through `Engine::apply`: MDM
//! enrollments and partner threat reports, MAM devices first seen in a report), draining the
//! changelog every batch as the runtime does, and reports the growth of the process's resident
//! set (`VmRSS`) divided by N. The bar is 200 bytes per device at 10 million devices.
//!
//! ```text
//! cargo run --release --example memory -- 1000000
//! cargo run --release --example memory -- 10000000
//! ```

use std::time::Instant;

use mtdgate::engine::devices::Device;
use mtdgate::engine::{Body, Engine};
use mtdgate::model::*;

/// The world builders the tests and the benchmarks share.
#[path = "../tests/support/world.rs"]
mod world;

use world::{apply, T0};

/// The allocator the `mtdgate` binary uses, so the figure matches it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TENANTS: usize = 1_000;
const PARTITIONS: i32 = 12;
/// Records per changelog drain, like one runtime transaction.
const BATCH: usize = 10_000;

/// Resident set size of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

fn health(r: u64) -> HealthState {
    match r % 100 {
        0..=59 => HealthState::Secured,
        60..=84 => HealthState::Low,
        85..=91 => HealthState::Medium,
        92..=96 => HealthState::High,
        _ => HealthState::Activated,
    }
}

fn drain(engine: &Engine) -> usize {
    let mut n = 0;
    for p in 0..PARTITIONS {
        engine.drain_changelog(p, |_, _| n += 1);
    }
    n
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.replace('_', "").parse().expect("device count"))
        .unwrap_or(1_000_000);
    println!("devices: {n}, tenants: {TENANTS}, partitions: {PARTITIONS}");
    println!(
        "size_of::<Device>() = {} bytes, size_of::<Option<Device>>() = {} bytes",
        std::mem::size_of::<Device>(),
        std::mem::size_of::<Option<Device>>()
    );

    let before = rss();
    let mut engine = world::engine();
    let now = T0 + 1_000;
    // The mixed population's tenants: Lookout, and Defender too for every third tenant.
    for t in 0..TENANTS {
        let tables = world::mixed_tables(&world::tenant_name(t), world::partners_of(t), now);
        tables.apply_all(&mut engine, now);
    }
    let mut out = Vec::new();

    let started = Instant::now();
    let mut events = 0usize;
    let mut two_partners = 0usize;
    for i in 0..n {
        // Four in five devices are enrolled (MDM); the rest are MAM, first seen in a report.
        let m = world::member(i, TENANTS);
        let tenant = world::tenant_name(m.tenant);
        let partition = (i % PARTITIONS as usize) as i32;
        let key = format!("{tenant}/{}", m.device_id);
        if let Some(e) = m.enrollment(&tenant, T0) {
            let body = Body::Enrollment(Some(e));
            apply(&mut engine, partition, &key, body, now, &mut out);
            events += 1;
        }
        if m.partners.len() > 1 {
            two_partners += 1;
        }
        for (k, &p) in m.partners.iter().enumerate() {
            let health = health(m.bits >> (16 + 8 * k));
            let observed_at = T0 + (i as i64 % 1_000);
            let rep = m.report(&tenant, p, health, format!("{p}-{i}"), observed_at);
            apply(
                &mut engine,
                partition,
                &key,
                Body::Threat(rep),
                now,
                &mut out,
            );
            events += 1;
        }
        out.clear();
        if i % BATCH == BATCH - 1 {
            drain(&engine);
        }
    }
    drain(&engine);
    drop(out);
    let elapsed = started.elapsed();
    let after = rss();

    assert_eq!(engine.device_count(), n);
    let approx: usize = engine.shards().iter().map(|s| s.approx_bytes()).sum();
    let grown = after.saturating_sub(before);
    println!(
        "applied {events} events in {:.1} s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "devices with two partner observations: {two_partners} ({:.0}%)",
        100.0 * two_partners as f64 / n as f64
    );
    println!(
        "VmRSS before: {} MiB, after: {} MiB",
        before >> 20,
        after >> 20
    );
    println!(
        "resident bytes per device: {:.1} (shard structures, approx: {:.1})",
        grown as f64 / n as f64,
        approx as f64 / n as f64
    );
}
