//! Property tests of the rule engine: random input histories over a small universe of tenants,
//! partners and devices, checked for determinism, tenant isolation, idempotence, "outputs only
//! on real change" and changelog restore.

mod support;

use std::collections::{BTreeMap, HashMap};

use mtdgate::engine::{Body, Engine, Output, Rejection};
use mtdgate::model::*;
use proptest::prelude::*;
use proptest::sample::select;
use support::engine::*;

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];
/// The focus tenant of the isolation property.
const FOCUS: u8 = 0;
const WSC: &str = "windows-security-center";
/// Not in the catalogue.
const UNKNOWN_VENDOR: &str = "acme-mtd";
const PARTNERS: [&str; 5] = [LOOKOUT, ZIMPERIUM, MDE, WSC, UNKNOWN_VENDOR];
/// The same device ids in every tenant, so tenants share ids and shards.
const DEVICES: [&str; 4] = ["d0", "d1", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "d3"];
const PARTITIONS: i32 = 2;
const POLICIES: [&str; 3] = ["p0", "p1", "p2"];
const OS_VERSIONS: [&str; 5] = ["15.8", "16.0", "17.4", "18", "beta"];
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn partition_of(device: u8) -> i32 {
    device as i32 % PARTITIONS
}

/// One step of a history. Timestamps are lags behind the harness clock, resolved when the step
/// runs, so the same history always produces the same events.
#[derive(Debug, Clone)]
enum Op {
    Threat {
        tenant: u8,
        partner: u8,
        device: u8,
        platform: Platform,
        management: Management,
        health: HealthState,
        /// Negative: ahead of the clock (beyond the skew limit when large).
        lag: i64,
        event: u8,
        user: Option<u8>,
        os: Option<u8>,
        ownership: Option<Ownership>,
        threats: u8,
        /// The payload names another tenant than the key.
        mismatch: bool,
    },
    Heartbeat {
        tenant: u8,
        partner: u8,
        lag: i64,
        error: Option<i32>,
        min_os: Option<Vec<(String, u8)>>,
    },
    Connector {
        tenant: u8,
        partner: u8,
        /// `None` is a tombstone.
        cfg: Option<ConnectorSpec>,
    },
    Policy {
        tenant: u8,
        policy: u8,
        /// `None` is a tombstone.
        spec: Option<PolicySpec>,
    },
    Enroll {
        tenant: u8,
        device: u8,
        /// `None` retires the device.
        spec: Option<(Platform, Management, Ownership, u8, Option<u8>)>,
    },
    Inventory {
        tenant: u8,
        device: u8,
        ownership: Ownership,
        managed: Vec<bool>,
    },
    /// Moves the clock forward and fires due timers.
    Advance(i64),
    /// Drains the changelog of every partition.
    Flush,
}

#[derive(Debug, Clone)]
struct ConnectorSpec {
    provisioned: bool,
    setup_complete: bool,
    toggles: u16,
    timeout_s: i64,
    unresponsive_days: i32,
    lag: i64,
}

#[derive(Debug, Clone)]
struct PolicySpec {
    kind: PolicyKind,
    platform: Platform,
    max_level: PolicyLevel,
    action: Option<PolicyAction>,
    priority: Option<PartnerPriority>,
    lag: i64,
}

impl Op {
    /// The tenant named by the step's key, if any.
    fn tenant(&self) -> Option<u8> {
        match *self {
            Op::Threat { tenant, .. }
            | Op::Heartbeat { tenant, .. }
            | Op::Connector { tenant, .. }
            | Op::Policy { tenant, .. }
            | Op::Enroll { tenant, .. }
            | Op::Inventory { tenant, .. } => Some(tenant),
            Op::Advance(_) | Op::Flush => None,
        }
    }

    /// Inputs of the global tables (replayed on a restoring instance).
    fn is_table_input(&self) -> bool {
        matches!(
            self,
            Op::Heartbeat { .. } | Op::Connector { .. } | Op::Policy { .. } | Op::Advance(_)
        )
    }

    /// The event this step feeds at clock `now`, with its partition and key.
    fn event(&self, now: i64) -> Option<(i32, String, Body)> {
        Some(match self {
            Op::Threat {
                tenant,
                partner,
                device,
                platform,
                management,
                health,
                lag,
                event,
                user,
                os,
                ownership,
                threats,
                mismatch,
            } => {
                let t = TENANTS[*tenant as usize];
                let d = DEVICES[*device as usize];
                let severities = ThreatSeverity::ALL;
                let r = DeviceThreatReport {
                    event_id: format!("e{event}"),
                    tenant_id: if *mismatch { "tx".into() } else { t.into() },
                    partner_id: PARTNERS[*partner as usize].into(),
                    device_id: d.into(),
                    user_id: user.map(|u| format!("user-{u}")),
                    platform: *platform,
                    management: *management,
                    ownership: *ownership,
                    os_version: os.map(|o| OS_VERSIONS[o as usize].into()),
                    health_state: *health,
                    threats: (0..*threats)
                        .map(|i| Threat {
                            category: "malware".into(),
                            name: format!("threat-{i}"),
                            severity: severities[i as usize % severities.len()],
                        })
                        .collect(),
                    observed_at: now - lag,
                };
                (partition_of(*device), format!("{t}/{d}"), Body::Threat(r))
            }
            Op::Heartbeat {
                tenant,
                partner,
                lag,
                error,
                min_os,
            } => {
                let t = TENANTS[*tenant as usize];
                let p = PARTNERS[*partner as usize];
                let hb = ConnectorHeartbeat {
                    tenant_id: t.into(),
                    partner_id: p.into(),
                    sent_at: now - lag,
                    error_code: *error,
                    min_os_versions: min_os.as_ref().map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), OS_VERSIONS[*v as usize].to_owned()))
                            .collect()
                    }),
                };
                (0, format!("{t}/{p}"), Body::Heartbeat(hb))
            }
            Op::Connector {
                tenant,
                partner,
                cfg,
            } => {
                let t = TENANTS[*tenant as usize];
                let p = PARTNERS[*partner as usize];
                let body = cfg.as_ref().map(|s| {
                    let bit = |i: u16| s.toggles & (1 << i) != 0;
                    let mut c = ConnectorConfig::new(t, p, now - s.lag);
                    c.provisioned = s.provisioned;
                    c.setup_complete = s.setup_complete;
                    c.android_enabled = bit(0);
                    c.ios_enabled = bit(1);
                    c.windows_enabled = bit(2);
                    c.macos_enabled = bit(3);
                    c.android_mam_enabled = bit(4);
                    c.ios_mam_enabled = bit(5);
                    c.windows_mam_enabled = bit(6);
                    c.android_blocked_on_missing_data = bit(7);
                    c.ios_blocked_on_missing_data = bit(8);
                    c.windows_blocked_on_missing_data = bit(9);
                    c.macos_blocked_on_missing_data = bit(10);
                    c.ios_app_sync = bit(11);
                    c.ios_app_sync_personal_full = bit(12);
                    c.unsupported_os_blocked = bit(13);
                    c.heartbeat_timeout_seconds = s.timeout_s;
                    c.unresponsive_threshold_days = s.unresponsive_days;
                    c
                });
                (0, format!("{t}/{p}"), Body::Connector(body))
            }
            Op::Policy {
                tenant,
                policy,
                spec,
            } => {
                let t = TENANTS[*tenant as usize];
                let id = POLICIES[*policy as usize];
                let body = spec.as_ref().map(|s| ThreatPolicy {
                    tenant_id: t.into(),
                    policy_id: id.into(),
                    kind: s.kind,
                    platform: s.platform,
                    max_level: s.max_level,
                    action: s.action,
                    partner_priority: s.priority,
                    updated_at: now - s.lag,
                });
                (0, format!("{t}/{id}"), Body::Policy(body))
            }
            Op::Enroll {
                tenant,
                device,
                spec,
            } => {
                let t = TENANTS[*tenant as usize];
                let d = DEVICES[*device as usize];
                let body =
                    spec.map(
                        |(platform, management, ownership, user, os)| DeviceEnrollment {
                            tenant_id: t.into(),
                            device_id: d.into(),
                            user_id: format!("user-{user}"),
                            platform,
                            management,
                            ownership,
                            os_version: os.map(|o| OS_VERSIONS[o as usize].into()),
                            enrolled_at: now,
                        },
                    );
                (
                    partition_of(*device),
                    format!("{t}/{d}"),
                    Body::Enrollment(body),
                )
            }
            Op::Inventory {
                tenant,
                device,
                ownership,
                managed,
            } => {
                let t = TENANTS[*tenant as usize];
                let d = DEVICES[*device as usize];
                let inv = AppInventory {
                    tenant_id: t.into(),
                    device_id: d.into(),
                    ownership: *ownership,
                    collected_at: now,
                    apps: managed
                        .iter()
                        .enumerate()
                        .map(|(i, &m)| AppInfo {
                            app_id: format!("com.example.app{i}"),
                            version: "1.0".into(),
                            short_version: "1".into(),
                            name: format!("App {i}"),
                            bundle_size: 1000,
                            dynamic_size: 10,
                            ad_hoc_signed: false,
                            from_app_store: true,
                            beta: false,
                            device_vpp: false,
                            validated: true,
                            managed: m,
                        })
                        .collect(),
                };
                (
                    partition_of(*device),
                    format!("{t}/{d}"),
                    Body::Inventory(inv),
                )
            }
            Op::Advance(_) | Op::Flush => return None,
        })
    }
}

// ---- generators ---------------------------------------------------------------------------

fn tenant() -> impl Strategy<Value = u8> {
    0..TENANTS.len() as u8
}

/// Mostly the partners that cover phones; now and then Windows Security Center (Windows MAM
/// only) or a vendor not in the catalogue.
fn partner() -> impl Strategy<Value = u8> {
    prop_oneof![12 => 0u8..3, 1 => Just(3u8), 1 => Just(4u8)]
}

fn device() -> impl Strategy<Value = u8> {
    0..DEVICES.len() as u8
}

/// The platform a device usually reports, with now and then another one.
fn platform_of(device: u8) -> impl Strategy<Value = Platform> {
    let natural = [
        Platform::Ios,
        Platform::Android,
        Platform::Ios,
        Platform::Android,
    ][device as usize];
    prop_oneof![6 => Just(natural), 1 => platform()]
}

fn platform() -> impl Strategy<Value = Platform> {
    prop_oneof![
        4 => Just(Platform::Ios),
        3 => Just(Platform::Android),
        1 => Just(Platform::Windows),
        1 => Just(Platform::Macos),
    ]
}

fn management() -> impl Strategy<Value = Management> {
    select(Management::ALL)
}

fn ownership() -> impl Strategy<Value = Ownership> {
    select(Ownership::ALL)
}

/// Mostly behind the clock (sometimes far enough to be stale), now and then ahead of it beyond
/// the accepted skew.
fn lag() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(0i64),
        6 => 0i64..5 * MIN,
        2 => Just(HOUR),
        1 => Just(-HOUR),
    ]
}

fn threat_op() -> impl Strategy<Value = Op> {
    (
        (tenant(), partner(), device(), management())
            .prop_flat_map(|(t, p, d, m)| (Just(t), Just(p), Just(d), platform_of(d), Just(m))),
        (select(HealthState::ALL), lag(), 0u8..40),
        (
            proptest::option::weighted(0.8, 0u8..3),
            proptest::option::of(0..OS_VERSIONS.len() as u8),
            proptest::option::of(ownership()),
            0u8..3,
            proptest::bool::weighted(0.05),
        ),
    )
        .prop_map(
            |(
                (tenant, partner, device, platform, management),
                (health, lag, event),
                (user, os, ownership, threats, mismatch),
            )| Op::Threat {
                tenant,
                partner,
                device,
                platform,
                management,
                health,
                lag,
                event,
                user,
                os,
                ownership,
                threats,
                mismatch,
            },
        )
}

fn heartbeat_op() -> impl Strategy<Value = Op> {
    let min_os_entry = (
        prop_oneof![
            6 => select(Platform::ALL).prop_map(|p| p.as_str().to_owned()),
            1 => Just("BLACKBERRY".to_owned()),
        ],
        0..OS_VERSIONS.len() as u8,
    );
    (
        tenant(),
        partner(),
        prop_oneof![8 => 0i64..MIN, 1 => Just(HOUR), 1 => Just(-HOUR)],
        proptest::option::weighted(0.2, prop_oneof![Just(0), Just(503), Just(-1)]),
        proptest::option::weighted(0.3, proptest::collection::vec(min_os_entry, 0..3)),
    )
        .prop_map(|(tenant, partner, lag, error, min_os)| Op::Heartbeat {
            tenant,
            partner,
            lag,
            error,
            min_os,
        })
}

fn connector_op() -> impl Strategy<Value = Op> {
    let spec = (
        proptest::bool::weighted(0.85),
        proptest::bool::weighted(0.85),
        any::<u16>(),
        prop_oneof![1 => Just(0i64), 4 => Just(3_600i64), 8 => Just(86_400i64)],
        prop_oneof![1 => Just(0i32), 4 => Just(1i32), 2 => Just(2i32), 8 => Just(7i32)],
        prop_oneof![8 => Just(0i64), 1 => Just(HOUR), 1 => Just(-HOUR)],
    )
        .prop_map(
            |(provisioned, setup_complete, toggles, timeout_s, unresponsive_days, lag)| {
                ConnectorSpec {
                    provisioned,
                    setup_complete,
                    toggles,
                    timeout_s,
                    unresponsive_days,
                    lag,
                }
            },
        );
    (tenant(), partner(), proptest::option::weighted(0.9, spec)).prop_map(
        |(tenant, partner, cfg)| Op::Connector {
            tenant,
            partner,
            cfg,
        },
    )
}

fn policy_op() -> impl Strategy<Value = Op> {
    let spec = (
        select(PolicyKind::ALL),
        platform(),
        select(PolicyLevel::ALL),
        proptest::option::weighted(0.7, select(PolicyAction::ALL)),
        proptest::option::weighted(0.4, select(PartnerPriority::ALL)),
        prop_oneof![8 => Just(0i64), 1 => Just(HOUR)],
    )
        .prop_map(|(kind, platform, max_level, action, priority, lag)| {
            // Mostly valid policies: the app protection fields only on app protection ones.
            let (action, priority) = match kind {
                PolicyKind::Compliance if lag == 0 => (None, None),
                _ => (action, priority),
            };
            PolicySpec {
                kind,
                platform,
                max_level,
                action,
                priority,
                lag,
            }
        });
    (
        tenant(),
        0..POLICIES.len() as u8,
        proptest::option::weighted(0.85, spec),
    )
        .prop_map(|(tenant, policy, spec)| Op::Policy {
            tenant,
            policy,
            spec,
        })
}

fn enroll_op() -> impl Strategy<Value = Op> {
    let spec = (
        platform(),
        management(),
        ownership(),
        0u8..3,
        proptest::option::of(0..OS_VERSIONS.len() as u8),
    );
    (tenant(), device(), proptest::option::weighted(0.8, spec)).prop_map(
        |(tenant, device, spec)| Op::Enroll {
            tenant,
            device,
            spec,
        },
    )
}

fn inventory_op() -> impl Strategy<Value = Op> {
    (
        tenant(),
        device(),
        ownership(),
        proptest::collection::vec(any::<bool>(), 0..4),
    )
        .prop_map(|(tenant, device, ownership, managed)| Op::Inventory {
            tenant,
            device,
            ownership,
            managed,
        })
}

/// A connector set up with most toggles on: what a tenant that uses MTD looks like.
fn good_connector_op() -> impl Strategy<Value = Op> {
    good_connector(
        tenant(),
        prop_oneof![Just(0u8), Just(1u8), Just(2u8), Just(3u8)],
    )
}

fn good_connector(
    tenant: impl Strategy<Value = u8>,
    partner: impl Strategy<Value = u8>,
) -> impl Strategy<Value = Op> {
    (
        tenant,
        partner,
        proptest::collection::vec(proptest::bool::weighted(0.7), 14),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(tenant, partner, bits, blocked)| {
            let mut toggles = bits
                .iter()
                .enumerate()
                .fold(0u16, |acc, (i, &b)| acc | ((b as u16) << i));
            // Blocking on missing data is the exception.
            if !blocked {
                toggles &= !(0b1111 << 7);
            }
            Op::Connector {
                tenant,
                partner,
                cfg: Some(ConnectorSpec {
                    provisioned: true,
                    setup_complete: true,
                    toggles,
                    timeout_s: 86_400,
                    unresponsive_days: 7,
                    lag: 0,
                }),
            }
        })
}

/// A valid policy of either kind.
fn good_policy_op() -> impl Strategy<Value = Op> {
    good_policy(tenant())
}

fn good_policy(tenant: impl Strategy<Value = u8>) -> impl Strategy<Value = Op> {
    (
        tenant,
        0..POLICIES.len() as u8,
        prop_oneof![
            Just(Platform::Ios),
            Just(Platform::Android),
            Just(Platform::Windows)
        ],
        prop_oneof![
            Just(PolicyLevel::Secured),
            Just(PolicyLevel::Low),
            Just(PolicyLevel::Medium),
            Just(PolicyLevel::High)
        ],
        proptest::option::of(prop_oneof![
            Just(PolicyAction::Block),
            Just(PolicyAction::Wipe)
        ]),
        proptest::option::weighted(0.3, select(PartnerPriority::ALL)),
    )
        .prop_map(
            |(tenant, policy, platform, max_level, action, priority)| Op::Policy {
                tenant,
                policy,
                spec: Some(PolicySpec {
                    kind: if action.is_some() {
                        PolicyKind::AppProtection
                    } else {
                        PolicyKind::Compliance
                    },
                    platform,
                    max_level,
                    action,
                    priority: action.and(priority),
                    lag: 0,
                }),
            },
        )
}

/// Small steps, the heartbeat timeout and past the unresponsive thresholds.
fn advance_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => 1i64..10 * MIN,
        2 => HOUR..2 * HOUR,
        2 => DAY..DAY + HOUR,
        1 => 3 * DAY..4 * DAY,
        1 => 7 * DAY..8 * DAY,
    ]
    .prop_map(Op::Advance)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => threat_op(),
        4 => heartbeat_op(),
        2 => connector_op(),
        1 => good_connector_op(),
        2 => policy_op(),
        1 => good_policy_op(),
        4 => enroll_op(),
        1 => inventory_op(),
        3 => advance_op(),
        1 => Just(Op::Flush),
    ]
}

/// What a tenant using MTD starts with: Lookout and Defender connectors set up and a few valid
/// policies.
fn tenant_setup(t: u8) -> impl Strategy<Value = Vec<Op>> {
    (
        good_connector(Just(t), Just(0u8)),
        good_connector(Just(t), Just(2u8)),
        proptest::collection::vec(good_policy(Just(t)), 1..4),
    )
        .prop_map(|(a, b, mut ops)| {
            ops.insert(0, b);
            ops.insert(0, a);
            ops
        })
}

/// A history: every tenant set up, then random steps.
fn history(max: usize) -> impl Strategy<Value = Vec<Op>> {
    (
        (tenant_setup(0), tenant_setup(1), tenant_setup(2)),
        proptest::collection::vec(op(), 0..max),
    )
        .prop_map(|((a, b, c), tail)| {
            let mut ops = a;
            ops.extend(b);
            ops.extend(c);
            ops.extend(tail);
            ops
        })
}

// ---- running histories --------------------------------------------------------------------

type Changelog = Vec<(String, Option<DeviceStateRecord>)>;

/// What one step published.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Outputs(Vec<Output>),
    Changelog(Changelog),
}

struct Run {
    h: Harness,
}

impl Run {
    fn new() -> Self {
        Run { h: Harness::new() }
    }

    fn engine(&self) -> &Engine {
        &self.h.engine
    }

    fn step(&mut self, op: &Op) -> Step {
        match op {
            Op::Advance(d) => Step::Outputs(self.h.advance_to(self.h.now + d)),
            Op::Flush => Step::Changelog(self.flush()),
            _ => {
                // Only clock steps move the clock, so leaving other tenants' events out of a
                // history does not shift the time of the rest.
                let (partition, key, body) = op.event(self.h.now).expect("device or table input");
                Step::Outputs(self.h.apply_at(partition, &key, body))
            }
        }
    }

    /// Applies the same step again without moving the clock.
    fn repeat(&mut self, op: &Op) -> Vec<Output> {
        let (partition, key, body) = op.event(self.h.now).expect("device or table input");
        self.h.apply_at(partition, &key, body)
    }

    fn flush(&mut self) -> Changelog {
        let mut log = Vec::new();
        for p in 0..PARTITIONS {
            self.h.engine.drain_changelog(p, |k, r| log.push((k, r)));
        }
        log
    }

    fn play(ops: &[Op]) -> (Run, Vec<Step>) {
        let mut run = Run::new();
        let steps = ops.iter().map(|op| run.step(op)).collect();
        (run, steps)
    }
}

/// Every (tenant, device) record held, by key.
fn records(engine: &Engine) -> BTreeMap<String, DeviceStateRecord> {
    let mut all = BTreeMap::new();
    for t in TENANTS {
        for (i, d) in DEVICES.iter().enumerate() {
            if let Some(r) = engine.device_record(partition_of(i as u8), t, d) {
                all.insert(format!("{t}/{d}"), r);
            }
        }
    }
    all
}

fn tenant_of(o: &Output) -> Option<&str> {
    match o {
        Output::Compliance(c) => Some(&c.tenant_id),
        Output::AppAction(a) => Some(&a.tenant_id),
        Output::ConnectorStatus(s) => Some(&s.tenant_id),
        Output::Inventory(i) => Some(&i.tenant_id),
        Output::Rejected(_) => None,
    }
}

fn only_tenant(out: &[Output], tenant: &str) -> Vec<Output> {
    out.iter()
        .filter(|o| tenant_of(o) == Some(tenant))
        .cloned()
        .collect()
}

fn rejections(out: &[Output]) -> Vec<&Rejection> {
    out.iter()
        .filter_map(|o| match o {
            Output::Rejected(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Outputs of one step in a canonical order: which device of a tenant is re-evaluated first in
/// a fan-out depends on slot order, which a restored shard need not share.
fn sorted(out: &[Output]) -> Vec<String> {
    let mut v: Vec<String> = out.iter().map(|o| format!("{o:?}")).collect();
    v.sort();
    v
}

/// 96 cases by default (a couple of seconds in debug); `PROPTEST_CASES` runs more.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(96),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The same history on a fresh engine gives the same outputs, ids included, and the same
    /// changelog records.
    #[test]
    fn replay_is_deterministic(ops in history(60)) {
        let (mut a, steps_a) = Run::play(&ops);
        let (mut b, steps_b) = Run::play(&ops);
        prop_assert_eq!(steps_a, steps_b);
        prop_assert_eq!(records(a.engine()), records(b.engine()));
        prop_assert_eq!(a.flush(), b.flush());
    }

    /// Another tenant's events, interleaved anywhere, never change what a tenant sees: its
    /// events publish exactly the same, other tenants' events publish nothing of it, timers
    /// publish the same for it, and its device state and changelog records are the same.
    #[test]
    fn other_tenants_never_change_a_tenant_outputs(ops in history(60)) {
        let focus = TENANTS[FOCUS as usize];
        let alone: Vec<Op> = ops
            .iter()
            .filter(|op| op.tenant().is_none_or(|t| t == FOCUS))
            .cloned()
            .collect();
        let (mut mixed_run, mixed) = Run::play(&ops);
        let (mut alone_run, alone_steps) = Run::play(&alone);
        let mut alone_steps = alone_steps.into_iter();
        for (op, step) in ops.iter().zip(mixed) {
            match op.tenant() {
                Some(t) if t != FOCUS => {
                    let Step::Outputs(out) = step else { unreachable!() };
                    prop_assert_eq!(only_tenant(&out, focus), vec![], "{:?}", op);
                }
                Some(_) => {
                    let expected = alone_steps.next().expect("same focus steps");
                    prop_assert_eq!(step, expected, "{:?}", op);
                }
                None => {
                    let expected = alone_steps.next().expect("same clock steps");
                    match (step, expected) {
                        (Step::Outputs(m), Step::Outputs(a)) => {
                            prop_assert_eq!(only_tenant(&m, focus), a, "{:?}", op);
                        }
                        (Step::Changelog(m), Step::Changelog(a)) => {
                            let prefix = format!("{focus}/");
                            let m: Changelog =
                                m.into_iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
                            prop_assert_eq!(m, a);
                        }
                        (m, a) => prop_assert!(false, "step kinds differ: {:?} vs {:?}", m, a),
                    }
                }
            }
        }
        let mixed_records: BTreeMap<_, _> = records(mixed_run.engine())
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{focus}/")))
            .collect();
        prop_assert_eq!(mixed_records, records(alone_run.engine()));
        let prefix = format!("{focus}/");
        let m: Changelog = mixed_run.flush().into_iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
        prop_assert_eq!(m, alone_run.flush());
    }

    /// Applying any event twice in a row changes nothing the second time: at most a rejection
    /// (DUPLICATE, STALE or the first application's own rejection), and every device record is
    /// unchanged. An app inventory is forwarded, not state: a repeat forwards the same again.
    /// Firing timers twice at the same instant publishes nothing the second time.
    #[test]
    fn applying_twice_changes_nothing(ops in history(60)) {
        let mut run = Run::new();
        for op in &ops {
            let first = run.step(op);
            let before = records(run.engine());
            let second = match op {
                Op::Flush => continue,
                Op::Advance(_) => {
                    let now = run.h.now;
                    run.h.advance_to(now)
                }
                _ => run.repeat(op),
            };
            let Step::Outputs(first) = first else { unreachable!() };
            prop_assert_eq!(&records(run.engine()), &before, "{:?}", op);
            if matches!(op, Op::Inventory { .. }) {
                prop_assert_eq!(&second, &first, "{:?}", op);
                continue;
            }
            let rejected = rejections(&second);
            prop_assert_eq!(rejected.len(), second.len(), "{:?} repeated published {:?}", op, second);
            prop_assert!(rejected.len() <= 1, "{:?}", second);
            if let Some(r) = rejected.first() {
                let same = rejections(&first).first() == Some(r);
                prop_assert!(
                    same || matches!(r.reason, RejectReason::Duplicate | RejectReason::Stale),
                    "{:?}: first {:?}, then {:?}", op, first, r
                );
            }
        }
    }

    /// Outputs only on real change: every compliance change changes the state and chains from
    /// the device's previous one (a new or re-created device starts at UNKNOWN); BLOCK and
    /// UNBLOCK alternate per device starting with BLOCK; connector status changes chain and
    /// change the status or the ignore flag.
    #[test]
    fn changes_are_real_and_chain(ops in history(60)) {
        let mut run = Run::new();
        let mut compliance: HashMap<String, ComplianceState> = HashMap::new();
        let mut blocked: HashMap<String, bool> = HashMap::new();
        let mut connectors: HashMap<String, (ConnectorStatus, bool)> = HashMap::new();
        for op in &ops {
            let Step::Outputs(out) = run.step(op) else { continue };
            if let Op::Enroll { tenant, device, spec: None } = op {
                let key = format!("{}/{}", TENANTS[*tenant as usize], DEVICES[*device as usize]);
                compliance.remove(&key);
                blocked.remove(&key);
            }
            for o in &out {
                match o {
                    Output::Compliance(c) => {
                        let key = format!("{}/{}", c.tenant_id, c.device_id);
                        prop_assert_ne!(c.previous, c.current, "{:?}", c);
                        let last = compliance.insert(key, c.current).unwrap_or(ComplianceState::Unknown);
                        prop_assert_eq!(c.previous, last, "{:?}", c);
                        // NONCOMPLIANT exactly when a reason other than an ignored partner is given.
                        let failing = c.reasons.iter().any(|r| r.code != ReasonCode::PartnerComplianceIgnored);
                        prop_assert_eq!(c.current == ComplianceState::Noncompliant, failing, "{:?}", c);
                    }
                    Output::AppAction(a) => {
                        let key = format!("{}/{}", a.tenant_id, a.device_id);
                        let was = blocked.get(&key).copied().unwrap_or(false);
                        match a.action {
                            AppAction::Block => {
                                prop_assert!(!was, "BLOCK of a blocked device: {:?}", a);
                                blocked.insert(key, true);
                            }
                            AppAction::Unblock => {
                                prop_assert!(was, "UNBLOCK of a device not blocked: {:?}", a);
                                blocked.insert(key, false);
                            }
                            AppAction::Wipe => {}
                        }
                    }
                    Output::ConnectorStatus(s) => {
                        let key = format!("{}/{}", s.tenant_id, s.partner_id);
                        let last = connectors
                            .insert(key, (s.current, s.compliance_ignored))
                            .unwrap_or((ConnectorStatus::Unavailable, false));
                        prop_assert_eq!(s.previous, last.0, "{:?}", s);
                        prop_assert_ne!((s.current, s.compliance_ignored), last, "{:?}", s);
                    }
                    Output::Inventory(_) | Output::Rejected(_) => {}
                }
            }
        }
        // The device records agree with the last published state.
        for (key, r) in records(run.engine()) {
            prop_assert_eq!(r.compliance, compliance.get(&key).copied().unwrap_or(ComplianceState::Unknown), "{}", key);
            prop_assert_eq!(r.mam_blocked, blocked.get(&key).copied().unwrap_or(false), "{}", key);
        }
    }

    /// Restoring the changelog of a history (drained at random points) into a fresh instance
    /// that replayed the same table inputs gives identical device records, and both instances
    /// then publish the same for the same further inputs.
    #[test]
    fn restore_gives_identical_state(ops in history(60), more in proptest::collection::vec(op(), 0..20)) {
        let (mut a, steps) = Run::play(&ops);
        let mut log: Changelog = Vec::new();
        for step in steps {
            if let Step::Changelog(part) = step {
                log.extend(part);
            }
        }
        log.extend(a.flush());

        let mut b = Run::new();
        for op in &ops {
            if op.is_table_input() {
                b.step(op);
            }
        }
        prop_assert_eq!(b.h.now, a.h.now);
        for (key, record) in &log {
            let device = DEVICES
                .iter()
                .position(|d| key.split_once('/').is_some_and(|(_, k)| k == *d))
                .expect("known device") as u8;
            b.h.engine.restore(partition_of(device), key, record.as_ref()).unwrap();
        }
        prop_assert_eq!(records(a.engine()), records(b.engine()));
        prop_assert_eq!(a.engine().device_count(), b.engine().device_count());

        for op in &more {
            let (sa, sb) = (a.step(op), b.step(op));
            match (sa, sb) {
                (Step::Outputs(x), Step::Outputs(y)) => prop_assert_eq!(sorted(&x), sorted(&y), "{:?}", op),
                (Step::Changelog(mut x), Step::Changelog(mut y)) => {
                    x.sort_by(|p, q| p.0.cmp(&q.0));
                    y.sort_by(|p, q| p.0.cmp(&q.0));
                    prop_assert_eq!(x, y);
                }
                (x, y) => prop_assert!(false, "{:?} vs {:?}", x, y),
            }
        }
        prop_assert_eq!(records(a.engine()), records(b.engine()));
    }
}
