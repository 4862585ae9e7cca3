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

use std::sync::Arc;
use std::time::Instant;

use mtdgate::catalogue::Catalogue;
use mtdgate::engine::devices::Device;
use mtdgate::engine::{Body, Engine, EngineSettings, Event, Output};
use mtdgate::model::*;

/// The allocator the `mtdgate` binary uses, so the figure matches it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_700_000_000_000;
const TENANTS: usize = 1_000;
const PARTITIONS: i32 = 12;
/// Records per changelog drain, like one runtime transaction.
const BATCH: usize = 10_000;
const LOOKOUT: &str = "lookout";
const MDE: &str = "microsoft-defender-for-endpoint";

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

/// splitmix64: a small deterministic generator for ids.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random (version 4) UUID in canonical lower-case form.
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_be_bytes());
        bytes[8..].copy_from_slice(&b.to_be_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

fn tenant_name(t: usize) -> String {
    format!("tenant-{t:04}")
}

/// Every third tenant also runs Defender, so its devices carry two partner observations.
fn has_defender(t: usize) -> bool {
    t % 3 == 0
}

fn apply(
    engine: &mut Engine,
    partition: i32,
    key: &str,
    body: Body,
    now: i64,
    out: &mut Vec<Output>,
) {
    engine.apply(
        &Event {
            partition,
            key: Some(key.as_bytes()),
            body,
        },
        now,
        out,
    );
}

fn setup_tenants(engine: &mut Engine, now: i64, out: &mut Vec<Output>) {
    for t in 0..TENANTS {
        let tenant = tenant_name(t);
        let partners: &[&str] = if has_defender(t) {
            &[LOOKOUT, MDE]
        } else {
            &[LOOKOUT]
        };
        for &p in partners {
            let mut c = ConnectorConfig::new(&tenant, p, T0);
            c.provisioned = true;
            c.setup_complete = true;
            c.android_enabled = true;
            c.ios_enabled = true;
            c.android_mam_enabled = true;
            c.ios_mam_enabled = true;
            apply(
                engine,
                0,
                &format!("{tenant}/{p}"),
                Body::Connector(Some(c)),
                now,
                out,
            );
        }
        for (id, kind, platform, action) in [
            ("cp-ios", PolicyKind::Compliance, Platform::Ios, None),
            (
                "cp-android",
                PolicyKind::Compliance,
                Platform::Android,
                None,
            ),
            (
                "ap-ios",
                PolicyKind::AppProtection,
                Platform::Ios,
                Some(PolicyAction::Block),
            ),
            (
                "ap-android",
                PolicyKind::AppProtection,
                Platform::Android,
                Some(PolicyAction::Wipe),
            ),
        ] {
            let p = ThreatPolicy {
                tenant_id: tenant.clone(),
                policy_id: id.into(),
                kind,
                platform,
                max_level: PolicyLevel::Medium,
                action,
                partner_priority: None,
                updated_at: T0,
            };
            apply(
                engine,
                0,
                &format!("{tenant}/{id}"),
                Body::Policy(Some(p)),
                now,
                out,
            );
        }
    }
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
    let mut engine = Engine::new(
        Arc::new(Catalogue::builtin("public").expect("catalogue")),
        EngineSettings::default(),
    );
    let now = T0 + 1_000;
    let mut out = Vec::new();
    setup_tenants(&mut engine, now, &mut out);
    out.clear();

    let mut rng = Rng(42);
    let started = Instant::now();
    let mut events = 0usize;
    let mut two_partners = 0usize;
    for i in 0..n {
        let t = i % TENANTS;
        let tenant = tenant_name(t);
        let device = rng.uuid();
        let user = rng.uuid();
        let partition = (i % PARTITIONS as usize) as i32;
        let key = format!("{tenant}/{device}");
        let r = rng.next();
        let platform = if r % 2 == 0 {
            Platform::Ios
        } else {
            Platform::Android
        };
        // Four in five devices are enrolled (MDM); the rest are MAM, first seen in a report.
        let management = if (r >> 8) % 5 == 0 {
            Management::Mam
        } else {
            Management::Mdm
        };
        if management == Management::Mdm {
            let e = DeviceEnrollment {
                tenant_id: tenant.clone(),
                device_id: device.clone(),
                user_id: user.clone(),
                platform,
                management,
                ownership: Ownership::Corporate,
                os_version: Some(
                    if platform == Platform::Ios {
                        "17.4.1"
                    } else {
                        "14"
                    }
                    .into(),
                ),
                enrolled_at: T0,
            };
            apply(
                &mut engine,
                partition,
                &key,
                Body::Enrollment(Some(e)),
                now,
                &mut out,
            );
            events += 1;
        }
        let partners: &[&str] = if has_defender(t) {
            two_partners += 1;
            &[LOOKOUT, MDE]
        } else {
            &[LOOKOUT]
        };
        for (k, &p) in partners.iter().enumerate() {
            let rep = DeviceThreatReport {
                event_id: format!("{p}-{i}"),
                tenant_id: tenant.clone(),
                partner_id: p.into(),
                device_id: device.clone(),
                user_id: Some(user.clone()),
                platform,
                management,
                ownership: Some(Ownership::Corporate),
                os_version: None,
                health_state: health(r >> (16 + 8 * k)),
                threats: Vec::new(),
                observed_at: T0 + (i as i64 % 1_000),
            };
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
