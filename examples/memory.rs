//! Resident memory per tracked device, as `mtdgate bench`'s memory part measures it, with the
//! allocator's live bytes beside it.
//!
//! Fills one engine with N devices the way `mtdgate bench --memory-child` does (the same
//! populations: `src/tools/bench/population.rs`, included here) and reports the growth of the
//! process's resident set (`VmRSS`) divided by N, and the growth of the bytes live in the
//! allocator (a counting wrapper around mimalloc, the binary's allocator), so that allocator
//! overhead and memory freed but kept by the allocator can be told from the engine's own data.
//! The bar is 200 bytes per device at 10 million devices.
//!
//! ```text
//! cargo run --release --example memory -- 1000000 directory   # contract 1.1's population
//! cargo run --release --example memory -- 10000000 mixed      # 1.0's, through Engine::apply
//! cargo run --release --example memory -- 1000000 restored    # 1.0's, restored from the changelog
//! cargo run --release --example memory -- 10000000 mixed-expiry      # + a report expiry pending
//! cargo run --release --example memory -- 10000000 directory-graces  # + expiries and a grace on
//!                                                                     #   every enrolled device
//! ```
//!
//! The `-expiry` and `-graces` variants are `mtdgate bench`'s (`population::Pending`): every
//! tenant's `report_validity_days` set, and with `-graces` every enrolled device failing a
//! COMPLIANCE policy with a grace.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mtdgate::engine::devices::Device;
use mtdgate::engine::partitioner::partition_for;
use mtdgate::engine::users::USER_COLUMN_BYTES;
use mtdgate::engine::Engine;
use mtdgate::model::Platform;

/// The world builders the tests and the benchmarks share.
#[path = "../tests/support/world.rs"]
mod world;

/// The populations of `mtdgate bench`'s memory and reload parts.
#[path = "../src/tools/bench/population.rs"]
#[allow(dead_code)]
mod population;

use population::{Filled, Pending, Population, PARTITIONS, TENANTS};

/// mimalloc (the `mtdgate` binary's allocator, so the figure matches it), counting the bytes
/// live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

/// VmRSS and live allocator bytes at one moment.
#[derive(Clone, Copy)]
struct Mark {
    rss: usize,
    live: usize,
}

fn mark() -> Mark {
    Mark {
        rss: rss(),
        live: LIVE.load(Ordering::Relaxed),
    }
}

fn report(what: &str, from: Mark, to: Mark, n: usize) {
    println!(
        "{what}: VmRSS {} -> {} MiB, {:.1} B/device; live heap {:.1} B/device",
        from.rss >> 20,
        to.rss >> 20,
        to.rss.saturating_sub(from.rss) as f64 / n as f64,
        to.live.saturating_sub(from.live) as f64 / n as f64,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.replace('_', "").parse().expect("device count"))
        .unwrap_or(1_000_000);
    let which = args.next().unwrap_or_else(|| "directory".into());
    println!("devices: {n}, tenants: {TENANTS}, partitions: {PARTITIONS}, population: {which}");
    println!(
        "size_of::<Device>() = {} B, size_of::<Option<Device>>() = {} B, \
         user columns {} B/user",
        std::mem::size_of::<Device>(),
        std::mem::size_of::<Option<Device>>(),
        USER_COLUMN_BYTES
    );

    let mut engine = world::engine();
    let started = Instant::now();
    let (before, after) = match which.as_str() {
        "restored" => {
            let now = world::T0;
            let restore = |engine: &mut Engine, i: usize| {
                let r = world::mixed_state(i, TENANTS, now);
                let key = format!("{}/{}", r.tenant_id, r.device_id);
                let p = partition_for(key.as_bytes(), PARTITIONS);
                engine.restore(p, &key, Some(&r)).expect("restore");
            };
            restore(&mut engine, 0);
            let before = mark();
            for i in 1..=n {
                restore(&mut engine, i);
            }
            (before, mark())
        }
        live => {
            let (name, pending) = match live.split_once('-') {
                Some((name, "expiry")) => (name, Pending::Expiry),
                Some((name, "graces")) => (name, Pending::Graces),
                None => (live, Pending::None),
                Some(_) => panic!("population {live:?}: unknown suffix"),
            };
            let pop = match name {
                "mixed" => Population::Mixed,
                "directory" => Population::Directory,
                other => panic!(
                    "population {other:?}: expected restored, mixed or directory (optionally \
                     with -expiry or -graces)"
                ),
            };
            let now = world::T0 + 1_000;
            let mut filled = Filled::default();
            population::load_tables_pending(&mut engine, pop, pending, now);
            if pop == Population::Directory {
                population::apply_memberships(&mut engine, 0..1, now, &mut filled);
            }
            population::apply_devices(&mut engine, pop, 0..1, now, &mut filled);
            let before = mark();
            if pop == Population::Directory {
                population::apply_memberships(&mut engine, 1..n + 1, now, &mut filled);
                report("memberships", before, mark(), n);
            }
            population::apply_devices(&mut engine, pop, 1..n + 1, now, &mut filled);
            assert_eq!(filled.rejected, 0, "the population's inputs were rejected");
            println!(
                "applied {} events: {} devices with two partners, {} with threats, {} \
                 compliance changes, {} app actions, {} changelog records",
                filled.events,
                filled.two_partners,
                filled.threatened,
                filled.compliance_changes,
                filled.app_actions,
                filled.changelog_records
            );
            let d = population::deadlines(&engine);
            println!(
                "deadlines: {} scheduled entries, {} devices holding failure starts (in_grace)",
                d.scheduled, d.in_grace
            );
            (before, mark())
        }
    };
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(engine.device_count(), n + 1);
    report("in all", before, after, n);

    let per = |b: usize| b as f64 / n as f64;
    let shards: usize = engine.shards().iter().map(|s| s.approx_bytes()).sum();
    let tenants = engine.tenants();
    let (mut users, mut user_bytes, mut groups, mut sets, mut threat_sets, mut views) =
        (0, 0, 0, 0, 0, 0);
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
        views += Platform::ALL
            .iter()
            .map(|&p| tables.scopes(p).scopes())
            .sum::<usize>();
    }
    println!(
        "approx: device shards {:.1} B/device, users {:.1} B/device ({users} users)",
        per(shards),
        per(user_bytes)
    );
    println!(
        "interned: {groups} groups, {sets} group sets, {threat_sets} threat lists, {views} views"
    );
    drop(tenants);
    let i = population::interned(&engine);
    println!(
        "interned values, requested bytes (est., without spare capacity): group sets {:.1} \
         B/device, threat lists {:.1} B/device, group names {:.1} B/device",
        per(i.group_set_bytes),
        per(i.threat_list_bytes),
        per(i.group_bytes)
    );
}
