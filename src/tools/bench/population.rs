//! The device populations the memory and reload parts (and `examples/memory.rs`, which includes
//! this file) fill an engine with, through [`Engine::apply`] as live traffic does: each tenant's
//! tables first, then (1.1 population) every user's group membership, as the table reader
//! loads them before device traffic, then per device its enrollment (MDM devices) and each of its
//! tenant's partners' reports, draining the changelog every [`BATCH`] devices as the runtime does
//! at every commit.
//!
//! - [`Population::Mixed`], the 1.0 population: `world::member`'s devices (1,000 tenants, UUID
//!   device and user ids, one user per device, iOS or Android, 4 in 5 enrolled, Lookout and for
//!   every third tenant Defender too) under `world::mixed_tables` (policies for every user), the
//!   reports' health SECURED 60%, LOW 25%, MEDIUM 7%, HIGH 5%, ACTIVATED 3%, MEDIUM and HIGH
//!   reports with one threat (one name).
//! - [`Population::Directory`], contract 1.1's: the same devices and users, each user in 3 of its
//!   tenant's 50 groups (one department, location and role, drawn with a skew, so users share
//!   combinations), policies assigned to groups (`world::directory_tables`), one device in ten
//!   reported with 1 to 3 threats from 277 names (`world::directory_threats`).
//!
//! Either can be filled with deadlines pending ([`Pending`], [`load_tables_pending`]):
//!
//! - [`Pending::Expiry`]: [`load_settings`] gives every tenant a `TenantSettings` with
//!   `report_validity_days` ([`REPORT_VALIDITY_DAYS`]) before any device arrives, so each
//!   device's first usable report schedules its expiry (one entry of the shard's deadline index
//!   per device: a later partner's report of the same instant expires no earlier). Devices
//!   whose every report is ACTIVATED (no usable level) have none.
//! - [`Pending::Graces`]: the same, and every enrolled device in a grace: the tenant's
//!   COMPLIANCE policies get `grace_period_hours` ([`GRACE_PERIOD_HOURS`]), its connectors
//!   `unsupported_os_blocked`, and its heartbeats a minimum OS above every device's, so every
//!   enrolled device fails at its first report and holds a grace (and its end as its deadline,
//!   which comes before the expiry). The worst case: the grace entries come on top.
//!
//! [`deadlines`] counts the entries and the devices in grace.

use mtdgate::engine::partitioner::partition_for;
use mtdgate::engine::{Body, Engine, Output};
use mtdgate::model::{HealthState, NoPolicyState, Platform, PolicyKind, TenantSettings};

use super::world;

/// Tenants of both populations.
pub const TENANTS: usize = 1_000;
/// Partitions the devices are spread over (by the key's murmur2 hash, as the producers do).
pub const PARTITIONS: i32 = 12;
/// Devices between changelog drains (one runtime transaction).
pub const BATCH: usize = 10_000;
/// `report_validity_days` of [`load_settings`]: the fillings' reports (observed within a
/// second of `world::T0`) expire 30 days later, long after the measurement.
pub const REPORT_VALIDITY_DAYS: i32 = 30;
/// `grace_period_hours` of the COMPLIANCE policies with [`Pending::Graces`]: a week, so the
/// graces end long after the measurement (and before the reports expire).
pub const GRACE_PERIOD_HOURS: i32 = 168;

/// Which deadlines a filling leaves pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pending {
    /// None (the tables of 1.0 and 1.1 as they are).
    #[default]
    None,
    /// A report expiry on every device with a usable report.
    Expiry,
    /// The expiries, and a grace running on every enrolled device.
    Graces,
}

/// Which population.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Population {
    /// Contract 1.0's: no groups, one threat name.
    Mixed,
    /// Contract 1.1's: 3 groups per user, group-assigned policies, 10% of devices with threats.
    Directory,
}

/// What filling applied and published.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filled {
    pub events: usize,
    pub memberships: usize,
    pub devices: usize,
    pub two_partners: usize,
    /// Devices whose report carries threats.
    pub threatened: usize,
    pub compliance_changes: usize,
    pub app_actions: usize,
    pub rejected: usize,
    pub changelog_records: usize,
}

impl Filled {
    fn count(&mut self, out: &mut Vec<Output>) {
        for o in out.drain(..) {
            match o {
                Output::Compliance(_) => self.compliance_changes += 1,
                Output::AppAction(_) => self.app_actions += 1,
                Output::Rejected(_) => self.rejected += 1,
                _ => {}
            }
        }
    }
}

/// The 1.0 population's health of a report (from random bits).
fn mixed_health(r: u64) -> HealthState {
    match r % 100 {
        0..=59 => HealthState::Secured,
        60..=84 => HealthState::Low,
        85..=91 => HealthState::Medium,
        92..=96 => HealthState::High,
        _ => HealthState::Activated,
    }
}

/// Drains every partition's changelog (the records are dropped); returns how many.
pub fn drain(engine: &Engine) -> usize {
    let mut n = 0;
    for p in 0..PARTITIONS {
        engine.drain_changelog(p, |_, r| {
            std::hint::black_box(&r);
            n += 1;
        });
    }
    n
}

/// Applies every tenant's tables (connectors, policies, heartbeats) at `now`.
pub fn load_tables(engine: &mut Engine, population: Population, now: i64) {
    load_tables_pending(engine, population, Pending::None, now);
}

/// [`load_tables`] with the tables and settings that leave `pending` deadlines.
pub fn load_tables_pending(
    engine: &mut Engine,
    population: Population,
    pending: Pending,
    now: i64,
) {
    for t in 0..TENANTS {
        let mut tables = match population {
            Population::Mixed => {
                world::mixed_tables(&world::tenant_name(t), world::partners_of(t), now)
            }
            Population::Directory => world::directory_tables(t, now),
        };
        if pending == Pending::Graces {
            fail_with_grace(&mut tables);
        }
        tables.apply_all(engine, now);
    }
    if pending != Pending::None {
        load_settings(engine, REPORT_VALIDITY_DAYS, now);
    }
}

/// Gives a tenant's COMPLIANCE policies a grace of [`GRACE_PERIOD_HOURS`] and makes every
/// enrolled device fail them: its connectors block unsupported OS versions and its partners
/// publish a minimum above every generated device's (17.4.1 on iOS, 14 on Android).
fn fail_with_grace(tables: &mut world::Tables) {
    for c in &mut tables.connectors {
        c.unsupported_os_blocked = true;
    }
    for p in &mut tables.policies {
        if p.kind == PolicyKind::Compliance {
            p.grace_period_hours = GRACE_PERIOD_HOURS;
        }
    }
    for h in &mut tables.heartbeats {
        h.min_os_versions = Some(
            [("IOS", "99"), ("ANDROID", "99")]
                .into_iter()
                .map(|(p, v)| (p.to_owned(), v.to_owned()))
                .collect(),
        );
    }
}

/// Applies every tenant's `TenantSettings` (key = tenant) with `report_validity_days`
/// (default `no_policy_state`), updated at `world::T0`, at `now`. Applied before any device,
/// it re-evaluates nothing; each device then schedules its expiry with its first usable report.
pub fn load_settings(engine: &mut Engine, report_validity_days: i32, now: i64) {
    let mut out = Vec::new();
    for t in 0..TENANTS {
        let tenant = world::tenant_name(t);
        let settings = TenantSettings {
            tenant_id: tenant.clone(),
            no_policy_state: NoPolicyState::default(),
            report_validity_days: Some(report_validity_days),
            updated_at: world::T0,
        };
        world::apply(
            engine,
            0,
            &tenant,
            Body::Settings(Some(settings)),
            now,
            &mut out,
        );
    }
    assert!(
        !out.iter().any(|o| matches!(o, Output::Rejected(_))),
        "tenant settings rejected: {out:?}"
    );
}

/// The shards' pending deadline entries (`DeviceShard::scheduled`, stale ones included) and
/// the devices holding the start of a failure (`DeviceShard::in_grace`: every failing policy's
/// start is kept, with or without a grace).
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadlines {
    pub scheduled: usize,
    /// Devices with an entry in the shards' graces map.
    pub in_grace: usize,
    /// The first pending deadline, in milliseconds.
    pub first: Option<i64>,
}

/// [`Deadlines`] of every shard of `engine`.
pub fn deadlines(engine: &Engine) -> Deadlines {
    let mut d = Deadlines::default();
    for s in engine.shards().iter() {
        d.scheduled += s.scheduled();
        d.in_grace += s.in_grace();
        d.first = match (d.first, s.first_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    d
}

/// Applies the group memberships of the users of devices `range` (1.1 population; updated at
/// `world::T0`), as the table reader does before device traffic.
pub fn apply_memberships(
    engine: &mut Engine,
    range: std::ops::Range<usize>,
    now: i64,
    filled: &mut Filled,
) {
    let mut out = Vec::new();
    for i in range {
        let d = world::directory_device(i, TENANTS);
        let m = d.membership(world::T0);
        let key = format!("{}/{}", m.tenant_id, m.user_id);
        world::apply(engine, 0, &key, Body::Membership(Some(m)), now, &mut out);
        filled.memberships += 1;
        filled.events += 1;
        filled.count(&mut out);
    }
}

/// Applies devices `range` of `population`: enrollment, then each partner's report.
pub fn apply_devices(
    engine: &mut Engine,
    population: Population,
    range: std::ops::Range<usize>,
    now: i64,
    filled: &mut Filled,
) {
    let mut out = Vec::new();
    for i in range {
        let d = world::directory_device(i, TENANTS);
        let m = &d.member;
        let tenant = world::tenant_name(m.tenant);
        let key = format!("{tenant}/{}", m.device_id);
        let partition = partition_for(key.as_bytes(), PARTITIONS);
        if let Some(e) = m.enrollment(&tenant, world::T0) {
            world::apply(
                engine,
                partition,
                &key,
                Body::Enrollment(Some(e)),
                now,
                &mut out,
            );
            filled.events += 1;
        }
        if m.partners.len() > 1 {
            filled.two_partners += 1;
        }
        let mut threatened = false;
        for k in 0..m.partners.len() {
            let observed_at = world::T0 + (i as i64 % 1_000);
            let event_id = format!("{}-{i}", m.partners[k]);
            let report = match population {
                Population::Mixed => {
                    let health = mixed_health(m.bits >> (16 + 8 * k));
                    m.report(&tenant, m.partners[k], health, event_id, observed_at)
                }
                Population::Directory => d.report(k, event_id, observed_at),
            };
            threatened |= !report.threats.is_empty();
            world::apply(engine, partition, &key, Body::Threat(report), now, &mut out);
            filled.events += 1;
        }
        filled.devices += 1;
        filled.threatened += threatened as usize;
        filled.count(&mut out);
        if i % BATCH == BATCH - 1 {
            filled.changelog_records += drain(engine);
        }
    }
    filled.changelog_records += drain(engine);
}

/// A fresh engine holding devices `0..n` of `population`, filled at `now`.
pub fn fill(population: Population, n: usize, now: i64) -> (Engine, Filled) {
    let mut engine = world::engine();
    let mut filled = Filled::default();
    load_tables(&mut engine, population, now);
    if population == Population::Directory {
        apply_memberships(&mut engine, 0..n, now, &mut filled);
    }
    apply_devices(&mut engine, population, 0..n, now, &mut filled);
    (engine, filled)
}

/// Requested heap bytes of the interned values of every tenant's tables, estimated from their
/// contents (the allocator rounds each allocation up to its size class on top of this).
#[derive(Debug, Clone, Copy, Default)]
pub struct Interned {
    pub groups: usize,
    pub group_sets: usize,
    pub threat_lists: usize,
    pub group_set_bytes: usize,
    pub threat_list_bytes: usize,
    pub group_bytes: usize,
}

/// [`Interned`] of the tenants of both populations, from the interners' own estimates; a
/// group set also has a scope per platform (`u32`).
pub fn interned(engine: &Engine) -> Interned {
    use std::mem::size_of;
    let tenants = engine.tenants();
    let mut n = Interned::default();
    for t in 0..TENANTS {
        let Some(id) = tenants.get(&world::tenant_name(t)) else {
            continue;
        };
        let tables = tenants.tables(id);
        n.groups += tables.groups.len();
        n.group_bytes += tables.groups.approx_bytes(|g| g.len());
        n.group_sets += tables.group_sets.len();
        n.group_set_bytes += tables.group_sets.approx_bytes()
            + tables.group_sets.len() * Platform::ALL.len() * size_of::<u32>();
        n.threat_lists += tables.threat_sets.len();
        n.threat_list_bytes += tables.threat_sets.approx_bytes();
    }
    n
}
