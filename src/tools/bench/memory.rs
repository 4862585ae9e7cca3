//! Resident bytes per tracked device: a fresh process (this binary, `bench --memory-child N`)
//! restores N device states into one engine, as an instance does after a restart or rebalance,
//! and reports the growth of its resident set (`VmRSS`) divided by N. The records are built in
//! memory one at a time (the Kafka read is the restore part's business), so the growth is the
//! engine's state alone.
//!
//! Baseline: the size of one slab slot (`Option<Device>`), the floor of the design; the ratio
//! is the overhead of the indexes and of partly filled chunks.

use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;

use crate::tools::simulate::group;
use mtdgate::engine::devices::Device;
use mtdgate::engine::partitioner::partition_for;

use super::world::{self, mixed_state};
use super::{Bar, Figure, Report, Sizes, Unit};

const PARTITIONS: i32 = 12;
const TENANTS: usize = 1_000;

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

/// The child: restores `n` devices and prints `MEMORY n before after seconds`.
pub fn child(n: usize) {
    let mut engine = world::engine();
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
    println!("MEMORY {n} {before} {after} {secs}");
}

pub fn run(sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the mtdgate binary")?;
    let slot = std::mem::size_of::<Option<Device>>() as f64;
    for &n in &sizes.memory_devices {
        let out = Command::new(&exe)
            .args(["bench", "--memory-child", &n.to_string()])
            .env("RUST_LOG", "error")
            .output()
            .context("running the memory child process")?;
        let text = String::from_utf8_lossy(&out.stdout);
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
        let per = (f[2] - f[1]).max(0.0) / f[0];
        println!(
            "  {} devices restored in {:.1} s: VmRSS {} -> {} MiB, {per:.1} B/device",
            group(n as u64),
            f[3],
            f[1] as u64 >> 20,
            f[2] as u64 >> 20
        );
        report.push(
            Figure::new(
                format!("memory @ {} devices", group(n as u64)),
                per,
                Unit::BytesPerDevice,
            )
            .baseline(slot)
            .bar(Bar::AtMost(200.0)),
        );
    }
    Ok(())
}
