//! Property tests of the rule engine: random input histories over a small universe of tenants,
//! partners, devices, users and groups, checked for determinism, tenant isolation, idempotence,
//! "outputs only on real change", changelog restore, and (contract 1.1) that a membership or
//! policy change touches exactly the devices it should, as re-evaluating them would.

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
/// The same user names in every tenant: enrollments, reports and memberships name them.
const USERS: [&str; 3] = ["user-0", "user-1", "user-2"];
/// Groups of memberships and policies. Memberships put users in the first [`MEMBER_GROUPS`]
/// only, so a policy naming `g3` names a group nobody is in; [`EMPTY_GROUP`] is an empty
/// (invalid) group id.
const GROUPS: [&str; 4] = ["g0", "g1", "g2", "g3"];
const MEMBER_GROUPS: u8 = 3;
const EMPTY_GROUP: u8 = u8::MAX;
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
        /// `None` retires the device; a `None` user is an empty user id (no user).
        spec: Option<EnrollSpec>,
    },
    Inventory {
        tenant: u8,
        device: u8,
        ownership: Ownership,
        managed: Vec<bool>,
    },
    Membership {
        tenant: u8,
        user: u8,
        /// `None` is a tombstone (the user is in no group).
        groups: Option<Vec<u8>>,
        lag: i64,
        /// The payload names another tenant than the key.
        mismatch: bool,
    },
    Settings {
        tenant: u8,
        /// `None` is a tombstone (the defaults).
        spec: Option<SettingsSpec>,
    },
    /// Moves the clock forward and fires due timers.
    Advance(i64),
    /// Drains the changelog of every partition.
    Flush,
}

/// Platform, management, ownership, user and OS version of an enrollment.
type EnrollSpec = (Platform, Management, Ownership, Option<u8>, Option<u8>);

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
    /// `include_groups`: `None` = every user.
    include: Option<Vec<u8>>,
    exclude: Vec<u8>,
    defender_max_level: Option<PolicyLevel>,
    block_on_missing_data: bool,
    /// `grace_period_hours` (COMPLIANCE; now and then out of range or on APP_PROTECTION:
    /// refused).
    grace: i32,
}

#[derive(Debug, Clone)]
struct SettingsSpec {
    no_policy_state: NoPolicyState,
    /// `report_validity_days`: `None`, 1 or 2 days, or now and then out of range (refused).
    validity: Option<i32>,
    lag: i64,
    mismatch: bool,
}

fn group_name(g: u8) -> &'static str {
    GROUPS.get(g as usize).copied().unwrap_or("")
}

fn group_names(groups: &[u8]) -> Vec<String> {
    groups.iter().map(|&g| group_name(g).to_owned()).collect()
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
            | Op::Inventory { tenant, .. }
            | Op::Membership { tenant, .. }
            | Op::Settings { tenant, .. } => Some(tenant),
            Op::Advance(_) | Op::Flush => None,
        }
    }

    /// Inputs of the global tables (replayed on a restoring instance).
    fn is_table_input(&self) -> bool {
        matches!(
            self,
            Op::Heartbeat { .. }
                | Op::Connector { .. }
                | Op::Policy { .. }
                | Op::Membership { .. }
                | Op::Settings { .. }
                | Op::Advance(_)
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
                    user_id: user.map(|u| USERS[u as usize].into()),
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
                    include_groups: s.include.as_deref().map(group_names),
                    exclude_groups: group_names(&s.exclude),
                    defender_max_level: s.defender_max_level,
                    block_on_missing_data: s.block_on_missing_data,
                    grace_period_hours: s.grace,
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
                            user_id: user.map_or(String::new(), |u| USERS[u as usize].into()),
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
            Op::Membership {
                tenant,
                user,
                groups,
                lag,
                mismatch,
            } => {
                let t = TENANTS[*tenant as usize];
                let u = USERS[*user as usize];
                let body = groups.as_ref().map(|g| GroupMembership {
                    tenant_id: if *mismatch { "tx".into() } else { t.into() },
                    user_id: u.into(),
                    groups: group_names(g),
                    updated_at: now - lag,
                });
                (0, format!("{t}/{u}"), Body::Membership(body))
            }
            Op::Settings { tenant, spec } => {
                let t = TENANTS[*tenant as usize];
                let body = spec.as_ref().map(|s| TenantSettings {
                    tenant_id: if s.mismatch { "tx".into() } else { t.into() },
                    no_policy_state: s.no_policy_state,
                    report_validity_days: s.validity,
                    updated_at: now - s.lag,
                });
                (0, t.to_owned(), Body::Settings(body))
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
        (
            assignment(),
            proptest::option::weighted(0.3, select(PolicyLevel::ALL)),
            proptest::bool::weighted(0.3),
            prop_oneof![
                12 => grace_hours(),
                1 => Just(-1),
                1 => Just(8761),
            ],
        ),
    )
        .prop_map(
            |(
                kind,
                platform,
                max_level,
                action,
                priority,
                lag,
                ((include, exclude), dml, bomd, grace),
            )| {
                // Mostly valid policies: the app protection fields only on app protection ones.
                let (action, priority) = match kind {
                    PolicyKind::Compliance if lag == 0 => (None, None),
                    _ => (action, priority),
                };
                // Graces mostly on COMPLIANCE policies.
                let grace = match kind {
                    PolicyKind::AppProtection if lag == 0 => 0,
                    _ => grace,
                };
                PolicySpec {
                    kind,
                    platform,
                    max_level,
                    action,
                    priority,
                    lag,
                    include,
                    exclude,
                    defender_max_level: dml,
                    block_on_missing_data: bomd,
                    grace,
                }
            },
        );
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

/// A COMPLIANCE policy's valid `grace_period_hours`: mostly none, else an hour or two (which
/// the clock steps cross) or a day.
fn grace_hours() -> impl Strategy<Value = i32> {
    prop_oneof![3 => Just(0), 3 => Just(1), 2 => Just(2), 1 => Just(24)]
}

/// A policy's `include_groups` (half the time every user; else a few groups, now and then none
/// or only the group nobody is in) and `exclude_groups` (mostly none).
fn assignment() -> impl Strategy<Value = (Option<Vec<u8>>, Vec<u8>)> {
    let group = 0..GROUPS.len() as u8;
    (
        proptest::option::of(prop_oneof![
            6 => proptest::collection::vec(group.clone(), 1..3),
            1 => Just(Vec::new()),
        ]),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => proptest::collection::vec(group, 1..3),
        ],
    )
}

fn user() -> impl Strategy<Value = u8> {
    0..USERS.len() as u8
}

fn membership_op() -> impl Strategy<Value = Op> {
    membership(tenant())
}

/// A user's groups (mostly from the member groups, rarely an empty group id), a tombstone now
/// and then.
fn membership(tenant: impl Strategy<Value = u8>) -> impl Strategy<Value = Op> {
    let group = prop_oneof![30 => 0..MEMBER_GROUPS, 1 => Just(EMPTY_GROUP)];
    (
        tenant,
        user(),
        proptest::option::weighted(0.85, proptest::collection::vec(group, 0..3)),
        prop_oneof![8 => Just(0i64), 1 => Just(HOUR)],
        proptest::bool::weighted(0.03),
    )
        .prop_map(|(tenant, user, groups, lag, mismatch)| Op::Membership {
            tenant,
            user,
            groups,
            lag,
            mismatch,
        })
}

fn settings_op() -> impl Strategy<Value = Op> {
    settings(tenant())
}

/// `no_policy_state` of any value; `report_validity_days` null, 1 or 2 days (which the clock
/// steps cross), or now and then out of range (refused). Tombstones now and then.
fn settings(tenant: impl Strategy<Value = u8>) -> impl Strategy<Value = Op> {
    let spec = (
        select(NoPolicyState::ALL),
        prop_oneof![
            6 => Just(None),
            4 => Just(Some(1)),
            3 => Just(Some(2)),
            1 => Just(Some(0)),
            1 => Just(Some(121)),
        ],
        prop_oneof![8 => Just(0i64), 1 => Just(HOUR)],
        proptest::bool::weighted(0.03),
    )
        .prop_map(|(no_policy_state, validity, lag, mismatch)| SettingsSpec {
            no_policy_state,
            validity,
            lag,
            mismatch,
        });
    (tenant, proptest::option::weighted(0.8, spec))
        .prop_map(|(tenant, spec)| Op::Settings { tenant, spec })
}

fn enroll_op() -> impl Strategy<Value = Op> {
    enrollment(tenant(), true)
}

/// An enrollment (mostly on the platform the device reports, mostly with a user of the pool),
/// or when `retire` now and then a retirement.
fn enrollment(tenant: impl Strategy<Value = u8>, retire: bool) -> impl Strategy<Value = Op> {
    (tenant, device()).prop_flat_map(move |(tenant, device)| {
        let spec = (
            platform_of(device),
            management(),
            ownership(),
            proptest::option::weighted(0.85, user()),
            proptest::option::of(0..OS_VERSIONS.len() as u8),
        );
        let spec = match retire {
            true => proptest::option::weighted(0.8, spec).boxed(),
            false => spec.prop_map(Some).boxed(),
        };
        spec.prop_map(move |spec| Op::Enroll {
            tenant,
            device,
            spec,
        })
    })
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
    blocking_connector(tenant, partner, 0.3)
}

/// [`good_connector`] blocking on missing data with probability `blocking`.
fn blocking_connector(
    tenant: impl Strategy<Value = u8>,
    partner: impl Strategy<Value = u8>,
    blocking: f64,
) -> impl Strategy<Value = Op> {
    (
        tenant,
        partner,
        proptest::collection::vec(proptest::bool::weighted(0.7), 14),
        proptest::bool::weighted(blocking),
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
            3 => Just(Platform::Ios),
            3 => Just(Platform::Android),
            1 => Just(Platform::Windows)
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
        (
            assignment(),
            proptest::option::weighted(0.3, select(PolicyLevel::ALL)),
            proptest::bool::weighted(0.3),
            grace_hours(),
        ),
    )
        .prop_map(
            |(
                tenant,
                policy,
                platform,
                max_level,
                action,
                priority,
                ((include, exclude), dml, bomd, grace),
            )| {
                let app = action.is_some();
                Op::Policy {
                    tenant,
                    policy,
                    spec: Some(PolicySpec {
                        kind: if app {
                            PolicyKind::AppProtection
                        } else {
                            PolicyKind::Compliance
                        },
                        platform,
                        max_level,
                        action,
                        priority: action.and(priority),
                        lag: 0,
                        include,
                        exclude,
                        // Defender's own ceiling on COMPLIANCE policies, missing data blocking
                        // on APP_PROTECTION ones.
                        defender_max_level: dml.filter(|_| !app),
                        block_on_missing_data: bomd && app,
                        // Graces on COMPLIANCE policies only.
                        grace: if app { 0 } else { grace },
                    }),
                }
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
        2 => good_policy_op(),
        4 => enroll_op(),
        1 => inventory_op(),
        4 => membership_op(),
        1 => settings_op(),
        3 => advance_op(),
        1 => Just(Op::Flush),
    ]
}

/// The steps of [`op`] mixed for the assignment properties: more memberships, valid policies,
/// enrollments and valid connectors, fewer clock steps, so that more devices are held and
/// more table changes reach them.
fn assignment_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => threat_op(),
        2 => heartbeat_op(),
        1 => connector_op(),
        2 => good_connector_op(),
        1 => policy_op(),
        4 => good_policy_op(),
        5 => enroll_op(),
        6 => membership_op(),
        1 => settings_op(),
        1 => advance_op(),
        1 => Just(Op::Flush),
    ]
}

/// A COMPLIANCE policy for every user of the tenant on iOS or Android, mostly with a grace.
fn graced_policy(tenant: impl Strategy<Value = u8>) -> impl Strategy<Value = Op> {
    (
        tenant,
        0..POLICIES.len() as u8,
        prop_oneof![Just(Platform::Ios), Just(Platform::Android)],
        prop_oneof![
            Just(PolicyLevel::Secured),
            Just(PolicyLevel::Low),
            Just(PolicyLevel::Medium),
            Just(PolicyLevel::High)
        ],
        proptest::option::weighted(0.2, select(PolicyLevel::ALL)),
        prop_oneof![1 => Just(0), 3 => Just(1), 2 => Just(2), 1 => Just(24)],
    )
        .prop_map(
            |(tenant, policy, platform, max_level, dml, grace)| Op::Policy {
                tenant,
                policy,
                spec: Some(PolicySpec {
                    kind: PolicyKind::Compliance,
                    platform,
                    max_level,
                    action: None,
                    priority: None,
                    lag: 0,
                    include: None,
                    exclude: Vec::new(),
                    defender_max_level: dml,
                    block_on_missing_data: false,
                    grace,
                }),
            },
        )
}

/// Tenant settings with a report validity of 1 or 2 days.
fn validity_settings(tenant: impl Strategy<Value = u8>) -> impl Strategy<Value = Op> {
    (
        tenant,
        prop_oneof![Just(1), Just(2)],
        select(NoPolicyState::ALL),
    )
        .prop_map(|(tenant, days, no_policy_state)| Op::Settings {
            tenant,
            spec: Some(SettingsSpec {
                no_policy_state,
                validity: Some(days),
                lag: 0,
                mismatch: false,
            }),
        })
}

/// A tenant where deadlines matter: Lookout and one of Zimperium or Defender set up (now and
/// then blocking on missing data), policies for everyone with graces, mostly a report
/// validity, and a few enrolled devices.
fn deadline_setup(t: u8) -> impl Strategy<Value = Vec<Op>> {
    (
        blocking_connector(Just(t), Just(0u8), 0.6),
        blocking_connector(Just(t), prop_oneof![Just(1u8), Just(2u8)], 0.6),
        proptest::collection::vec(graced_policy(Just(t)), 1..3),
        proptest::option::weighted(0.7, validity_settings(Just(t))),
        proptest::collection::vec(enrollment(Just(t), false), 2..5),
    )
        .prop_map(|(a, b, policies, settings, devices)| {
            let mut ops = vec![a, b];
            ops.extend(policies);
            ops.extend(settings);
            ops.extend(devices);
            ops
        })
}

/// The steps after a [`deadline_setup`]: mostly reports and clock steps, with heartbeats (the
/// connectors stay responsive), policy and settings changes.
fn deadline_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => threat_op(),
        4 => heartbeat_op(),
        1 => good_connector_op(),
        3 => graced_policy(tenant()),
        1 => good_policy_op(),
        1 => validity_settings(tenant()),
        1 => settings_op(),
        2 => enroll_op(),
        3 => advance_op(),
        2 => near_deadline_advance(),
        1 => Just(Op::Flush),
    ]
}

/// A clock step of about a grace (1 or 2 hours) or a report validity (a day), give or take a
/// second and a half: after an input, it lands around the deadline that input started, now and
/// then between the deadline and its whole second (when it fires).
fn near_deadline_advance() -> impl Strategy<Value = Op> {
    prop_oneof![Just(HOUR), Just(2 * HOUR), Just(DAY)]
        .prop_flat_map(|d| d - 1_500..d + 1_500)
        .prop_map(Op::Advance)
}

/// A history where graces run and reports expire: every tenant set up by [`deadline_setup`],
/// then [`deadline_op`]s.
fn deadline_history(max: usize) -> impl Strategy<Value = Vec<Op>> {
    (
        (deadline_setup(0), deadline_setup(1), deadline_setup(2)),
        proptest::collection::vec(deadline_op(), 0..max),
    )
        .prop_map(|((a, b, c), tail)| {
            let mut ops = a;
            ops.extend(b);
            ops.extend(c);
            ops.extend(tail);
            ops
        })
}

/// Either a [`history`] or a [`deadline_history`].
fn any_history(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop_oneof![history(max), deadline_history(max)]
}

/// What a tenant using MTD starts with: Lookout and Defender connectors set up, a few valid
/// policies (some with graces), half the time tenant settings (often with a report validity),
/// a few enrolled devices and a few users' memberships.
fn tenant_setup(t: u8) -> impl Strategy<Value = Vec<Op>> {
    (
        good_connector(Just(t), Just(0u8)),
        good_connector(Just(t), Just(2u8)),
        proptest::collection::vec(good_policy(Just(t)), 1..4),
        proptest::option::of(settings(Just(t))),
        proptest::collection::vec(enrollment(Just(t), false), 1..5),
        proptest::collection::vec(membership(Just(t)), 0..3),
    )
        .prop_map(|(a, b, mut ops, settings, devices, members)| {
            ops.insert(0, b);
            ops.insert(0, a);
            ops.extend(settings);
            ops.extend(devices);
            ops.extend(members);
            ops
        })
}

/// A history: every tenant set up, then random steps.
fn history(max: usize) -> impl Strategy<Value = Vec<Op>> {
    history_of(op(), max)
}

/// A history whose steps after the set-up are [`assignment_op`]s.
fn assignment_history(max: usize) -> impl Strategy<Value = Vec<Op>> {
    history_of(assignment_op(), max)
}

fn history_of(op: impl Strategy<Value = Op>, max: usize) -> impl Strategy<Value = Vec<Op>> {
    (
        (tenant_setup(0), tenant_setup(1), tenant_setup(2)),
        proptest::collection::vec(op, 0..max),
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

/// What the tables hold, as the accepted inputs say (an input is accepted when it publishes no
/// rejection: policies, memberships and settings are applied whole or not at all). Judges
/// assignments with the contract's rule, independently of the engine's precomputed views.
#[derive(Debug, Clone, Default)]
struct Model {
    /// Groups of each (tenant, user) with a membership held.
    groups: BTreeMap<(String, String), Vec<String>>,
    /// Policies held, by (tenant, policy id).
    policies: BTreeMap<(String, String), ThreatPolicy>,
    /// `no_policy_state` of each tenant with settings held.
    no_policy: BTreeMap<String, NoPolicyState>,
}

impl Model {
    fn accept(&mut self, key: &str, body: &Body) {
        let (t, id) = key.split_once('/').unwrap_or((key, ""));
        let k = (t.to_owned(), id.to_owned());
        match body {
            Body::Membership(Some(m)) => {
                self.groups.insert(k, m.groups.clone());
            }
            Body::Membership(None) => {
                self.groups.remove(&k);
            }
            Body::Policy(Some(p)) => {
                self.policies.insert(k, p.clone());
            }
            Body::Policy(None) => {
                self.policies.remove(&k);
            }
            Body::Settings(Some(s)) => {
                self.no_policy.insert(t.to_owned(), s.no_policy_state);
            }
            Body::Settings(None) => {
                self.no_policy.remove(t);
            }
            _ => {}
        }
    }

    /// The groups of a device's user (`None`: the device has no user; a user without a
    /// membership is in no group).
    fn groups_of(&self, tenant: &str, user: Option<&str>) -> Option<Vec<String>> {
        user.map(|u| {
            self.groups
                .get(&(tenant.to_owned(), u.to_owned()))
                .cloned()
                .unwrap_or_default()
        })
    }

    fn no_policy_state(&self, tenant: &str) -> ComplianceState {
        self.no_policy
            .get(tenant)
            .copied()
            .unwrap_or_default()
            .state()
    }

    /// Whether some COMPLIANCE policy of the tenant applies to an MDM device of `user` on
    /// `platform`.
    fn any_compliance_policy(&self, tenant: &str, user: Option<&str>, platform: Platform) -> bool {
        let groups = self.groups_of(tenant, user);
        self.policies
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .any(|(_, p)| applies(p, Management::Mdm, platform, groups.as_deref()))
    }

    /// Whether some COMPLIANCE policy with a grace applies to an MDM device of `user` on
    /// `platform`: the only way a device can be `IN_GRACE_PERIOD`.
    fn any_graced_policy(&self, tenant: &str, user: Option<&str>, platform: Platform) -> bool {
        let groups = self.groups_of(tenant, user);
        self.policies
            .iter()
            .filter(|((t, _), p)| t == tenant && p.grace_period_hours > 0)
            .any(|(_, p)| applies(p, Management::Mdm, platform, groups.as_deref()))
    }
}

/// The contract's assignment rule: kind and platform match (COMPLIANCE for enrolled devices,
/// APP_PROTECTION for unenrolled ones), and the user is in scope: `include_groups` null takes
/// everyone, devices without a user included; a list takes the users in one of its groups; a
/// user in an excluded group is out whatever the inclusion says.
fn applies(
    p: &ThreatPolicy,
    management: Management,
    platform: Platform,
    groups: Option<&[String]>,
) -> bool {
    let kind = match management {
        Management::Mdm => PolicyKind::Compliance,
        Management::Mam => PolicyKind::AppProtection,
    };
    if p.kind != kind || p.platform != platform {
        return false;
    }
    let Some(groups) = groups else {
        return p.include_groups.is_none();
    };
    if p.exclude_groups.iter().any(|g| groups.contains(g)) {
        return false;
    }
    p.include_groups
        .as_ref()
        .is_none_or(|include| include.iter().any(|g| groups.contains(g)))
}

struct Run {
    h: Harness,
    model: Model,
}

impl Run {
    fn new() -> Self {
        Run {
            h: Harness::new(),
            model: Model::default(),
        }
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
                let out = self.h.apply_at(partition, &key, body.clone());
                if rejections(&out).is_empty() {
                    self.model.accept(&key, &body);
                }
                Step::Outputs(out)
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

/// `t` rounded up to the whole second: when a device deadline at `t` fires.
fn second_up(t: i64) -> i64 {
    (t + 999).div_euclid(1000) * 1000
}

/// Whether the state held is settled at the clock: no device deadline (grace end, report
/// expiry) has passed without firing. A device deadline fires at its instant rounded up to the
/// second, so between the instant and that second the device keeps its earlier state while
/// evaluating it now would give the new one; a pending deadline within the current second
/// means such a window may be open. On a whole second, the state is always settled.
fn settled(run: &Run) -> bool {
    let now = run.h.now;
    run.engine()
        .next_deadline()
        .is_none_or(|d| d > second_up(now))
}

type Records = BTreeMap<String, DeviceStateRecord>;

/// Every (tenant, device) record held, by key.
fn records(engine: &Engine) -> Records {
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

/// The partition of the device of a `tenant/device` key.
fn partition_of_key(key: &str) -> i32 {
    let device = DEVICES
        .iter()
        .position(|d| key.split_once('/').is_some_and(|(_, k)| k == *d))
        .expect("known device") as u8;
    partition_of(device)
}

/// The `tenant/device` key of a device output (compliance change or app protection action).
fn device_key(o: &Output) -> Option<String> {
    match o {
        Output::Compliance(c) => Some(format!("{}/{}", c.tenant_id, c.device_id)),
        Output::AppAction(a) => Some(format!("{}/{}", a.tenant_id, a.device_id)),
        _ => None,
    }
}

/// The device outputs of a step in a canonical order, without what names the cause (output
/// ids and `cause_event_id`), so that outputs of different causes at one instant compare.
fn device_outputs(out: &[Output]) -> Vec<String> {
    let mut v: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::Compliance(c) => {
                let mut c = c.clone();
                c.change_id.clear();
                c.cause_event_id.clear();
                Some(format!("{c:?}"))
            }
            Output::AppAction(a) => {
                let mut a = a.clone();
                a.action_id.clear();
                a.cause_event_id.clear();
                Some(format!("{a:?}"))
            }
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Re-evaluates every device of every partition against the tables held, returning what that
/// publishes (nothing when the state held is what the tables give).
fn reconcile_all(run: &mut Run) -> Vec<Output> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        run.h.engine.reconcile(p, run.h.now, &mut out);
    }
    out
}

/// Every output is a device output for a device `allowed` accepts, or a rejection.
fn only_devices(
    out: &[Output],
    allowed: impl Fn(&str) -> bool,
    op: &Op,
) -> Result<(), TestCaseError> {
    for o in out {
        match device_key(o) {
            Some(key) => prop_assert!(allowed(&key), "{:?} published for {}: {:?}", op, key, o),
            None => prop_assert!(
                matches!(o, Output::Rejected(_)),
                "{:?} published {:?}",
                op,
                o
            ),
        }
    }
    Ok(())
}

/// The same devices are held, and every device `touched` rejects holds the same state.
fn untouched_unchanged(
    before: &Records,
    after: &Records,
    touched: impl Fn(&str) -> bool,
    op: &Op,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{:?}",
        op
    );
    for (key, r) in before {
        if !touched(key) {
            prop_assert_eq!(Some(r), after.get(key), "{:?} changed {}", op, key);
        }
    }
    Ok(())
}

/// The reference for a table change, the last step of `ops`: a fresh instance replays the
/// table inputs of `ops` (so holds the tables as they are after the change), restores `before`
/// (every device's state just before it) and re-evaluates every device. The change must have
/// published the same device outputs, up to what names the cause, and left the same state.
fn same_as_reevaluation(
    ops: &[Op],
    before: &Records,
    out: &[Output],
    after: &Records,
) -> Result<(), TestCaseError> {
    let mut fresh = Run::new();
    for op in ops.iter().filter(|op| op.is_table_input()) {
        fresh.step(op);
    }
    for (key, record) in before {
        fresh
            .h
            .engine
            .restore(partition_of_key(key), key, Some(record))
            .unwrap();
    }
    let again = reconcile_all(&mut fresh);
    let op = ops.last();
    prop_assert_eq!(device_outputs(out), device_outputs(&again), "{:?}", op);
    prop_assert_eq!(after, &records(fresh.engine()), "{:?}", op);
    Ok(())
}

/// 96 cases by default (a couple of seconds in debug); `PROPTEST_CASES` runs more.
fn config() -> ProptestConfig {
    config_times(1)
}

/// `times` the cases of [`config`]: for the assignment properties, whose interesting steps (a
/// membership or policy change that reaches a device) are a small part of a history.
fn config_times(times: u32) -> ProptestConfig {
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    ProptestConfig {
        cases: cases * times,
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
    /// publish the same for it, and its device state and changelog records are the same. The
    /// events include group memberships and tenant settings, with the same user and group
    /// names in every tenant.
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

    /// Applying any event twice in a row changes nothing the second time: at most rejections
    /// (DUPLICATE, STALE or the first application's own rejections), and every device record is
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
            // The first application's own rejections again (a connector's refused app
            // protection toggles are reported on every copy), or one DUPLICATE or STALE.
            let same = rejected == rejections(&first);
            let one_repeat = rejected.len() == 1
                && matches!(rejected[0].reason, RejectReason::Duplicate | RejectReason::Stale);
            prop_assert!(
                same || one_repeat,
                "{:?}: first {:?}, then {:?}", op, first, second
            );
        }
    }

    /// Outputs only on real change: every compliance change changes the state and chains from
    /// the device's previous one (a new or re-created device starts at UNKNOWN); BLOCK and
    /// UNBLOCK alternate per device starting with BLOCK; connector status changes chain and
    /// change the status or the ignore flag. A device some COMPLIANCE policy applies to is
    /// NONCOMPLIANT exactly when a failing reason is given; one no policy applies to (by the
    /// contract's assignment rule, judged on the accepted inputs) takes the tenant's
    /// `no_policy_state`, and so does every enrolled device held at the end.
    #[test]
    fn changes_are_real_and_chain(ops in any_history(60)) {
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
                        let model = &run.model;
                        // A grace's end is given exactly for IN_GRACE_PERIOD, and is ahead.
                        let in_grace = c.current == ComplianceState::InGracePeriod;
                        prop_assert_eq!(c.grace_ends_at.is_some(), in_grace, "{:?}", c);
                        prop_assert!(c.grace_ends_at.is_none_or(|e| e > c.evaluated_at), "{:?}", c);
                        if in_grace {
                            prop_assert!(
                                model.any_graced_policy(&c.tenant_id, c.user_id.as_deref(), c.platform),
                                "in grace without a policy with a grace: {:?}", c
                            );
                        }
                        // A device deadline fires at a whole second, its own.
                        if let Some(at) = c.cause_event_id.strip_prefix("timer:device-deadline@") {
                            prop_assert_eq!(at.parse::<i64>().ok(), Some(c.evaluated_at), "{:?}", c);
                            prop_assert_eq!(c.evaluated_at % 1000, 0, "{:?}", c);
                            prop_assert!(matches!(op, Op::Advance(_)), "{:?} from {:?}", c, op);
                        }
                        if model.any_compliance_policy(&c.tenant_id, c.user_id.as_deref(), c.platform) {
                            // NONCOMPLIANT or IN_GRACE_PERIOD exactly when a reason other than
                            // an ignored partner is given.
                            let failing = c.reasons.iter().any(|r| r.code != ReasonCode::PartnerComplianceIgnored);
                            let fails = matches!(
                                c.current,
                                ComplianceState::Noncompliant | ComplianceState::InGracePeriod
                            );
                            prop_assert_eq!(fails, failing, "{:?}", c);
                        } else {
                            // No COMPLIANCE policy applies: the tenant's no_policy_state, for
                            // no reason.
                            prop_assert_eq!(c.current, model.no_policy_state(&c.tenant_id), "{:?}", c);
                            prop_assert!(c.reasons.is_empty(), "{:?}", c);
                        }
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
        // The device records agree with the last published state; graces started in the past.
        for (key, r) in records(run.engine()) {
            prop_assert_eq!(r.compliance, compliance.get(&key).copied().unwrap_or(ComplianceState::Unknown), "{}", key);
            prop_assert!(r.graces.iter().all(|g| g.failing_since <= run.h.now), "{}: {:?}", key, r.graces);
            prop_assert_eq!(r.mam_blocked, blocked.get(&key).copied().unwrap_or(false), "{}", key);
            let model = &run.model;
            if r.management == Management::Mdm
                && !model.any_compliance_policy(&r.tenant_id, r.user_id.as_deref(), r.platform)
            {
                prop_assert_eq!(r.compliance, model.no_policy_state(&r.tenant_id), "{}", key);
            }
        }
    }

    /// Restoring the changelog of a history (drained at random points) into a fresh instance
    /// that replayed the same table inputs gives identical device records, and both instances
    /// then publish the same for the same further inputs.
    #[test]
    fn restore_gives_identical_state(ops in any_history(60), more in proptest::collection::vec(op(), 0..20)) {
        let (mut a, steps) = Run::play(&ops);
        // The old owner hands over on a whole second, so that no device deadline has passed
        // without firing (see [`settled`]).
        let handover = second_up(a.h.now);
        a.h.advance_to(handover);
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
        b.h.advance_to(handover);
        prop_assert_eq!(b.h.now, a.h.now);
        for (key, record) in &log {
            b.h.engine.restore(partition_of_key(key), key, record.as_ref()).unwrap();
        }
        prop_assert_eq!(records(a.engine()), records(b.engine()));
        prop_assert_eq!(a.engine().device_count(), b.engine().device_count());
        // The new owner reconciles what it restored (which schedules the devices' deadlines):
        // nothing to publish, nothing changed.
        prop_assert_eq!(reconcile_all(&mut b), vec![]);
        prop_assert_eq!(records(a.engine()), records(b.engine()));

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

/// How far the clock moves in [`one_jump_or_many_steps_give_the_same_outputs`]: a few minutes,
/// past the graces (hours), the report validities (days) or the unresponsive thresholds.
fn span() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => 1i64..10 * MIN,
        2 => HOUR..3 * HOUR,
        1 => 20 * HOUR..30 * HOUR,
        2 => DAY..3 * DAY,
        1 => 7 * DAY..9 * DAY,
    ]
}

/// Moves `run`'s clock to `to` by stopping just before, at and just after every pending
/// deadline (and its whole second), so that every deadline fires in a step of its own.
fn step_through_deadlines(run: &mut Run, to: i64) -> Vec<Output> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let Some(next) = run.engine().next_deadline().filter(|&d| d <= to) else {
            out.extend(run.h.advance_to(to));
            return out;
        };
        for at in [next - 1, next, next + 1, second_up(next + 1)] {
            if at > run.h.now && at <= to {
                out.extend(run.h.advance_to(at));
            }
        }
    }
    panic!(
        "deadlines do not progress: {:?}",
        run.engine().next_deadline()
    );
}

proptest! {
    #![proptest_config(config())]

    /// Deadlines fire in time order, each at its own instant, so the outputs do not depend on
    /// how the clock gets to an instant: after the same history, moving the clock to T in one
    /// jump, through random intermediate instants, or stopping at every pending deadline gives
    /// the same outputs in the same order (ids included), the same device records and changelog,
    /// and the same pending deadline.
    #[test]
    fn one_jump_or_many_steps_give_the_same_outputs(
        ops in prop_oneof![1 => history(60), 2 => deadline_history(60)],
        span in span(),
        cuts in proptest::collection::vec(0u32..=1_000_000, 0..12),
    ) {
        let (mut jump, _) = Run::play(&ops);
        let (mut steps, _) = Run::play(&ops);
        let (mut stops, _) = Run::play(&ops);
        let from = jump.h.now;
        let to = from + span;
        let jumped = jump.h.advance_to(to);

        let mut instants: Vec<i64> =
            cuts.iter().map(|&c| from + span * c as i64 / 1_000_000).collect();
        instants.sort_unstable();
        let mut stepped = Vec::new();
        for at in instants.into_iter().chain([to]) {
            stepped.extend(steps.h.advance_to(at));
        }
        prop_assert_eq!(&stepped, &jumped, "random steps");

        let stopped = step_through_deadlines(&mut stops, to);
        prop_assert_eq!(&stopped, &jumped, "a stop at every deadline");

        let records_jump = records(jump.engine());
        prop_assert_eq!(&records(steps.engine()), &records_jump);
        prop_assert_eq!(&records(stops.engine()), &records_jump);
        let deadline = jump.engine().next_deadline();
        prop_assert_eq!(steps.engine().next_deadline(), deadline);
        prop_assert_eq!(stops.engine().next_deadline(), deadline);
        let log = jump.flush();
        prop_assert_eq!(&steps.flush(), &log);
        prop_assert_eq!(&stops.flush(), &log);
    }
}

proptest! {
    #![proptest_config(config_times(3))]

    /// A membership change for user U of tenant T publishes device outputs for U's devices
    /// only (no connector status, nothing for a device of another user, of no user or of
    /// another tenant), leaves every other device's state as it was, and publishes exactly what
    /// re-evaluating every device against the tables after the change gives, ending in the
    /// same state. A refused membership publishes its rejection only.
    #[test]
    fn membership_change_reevaluates_that_users_devices_only(ops in assignment_history(80)) {
        let mut run = Run::new();
        for (i, op) in ops.iter().enumerate() {
            let before = records(run.engine());
            let was_settled = settled(&run);
            let step = run.step(op);
            let Op::Membership { tenant, user, .. } = op else { continue };
            let Step::Outputs(out) = step else { unreachable!() };
            let (t, u) = (TENANTS[*tenant as usize], USERS[*user as usize]);
            let of_user = |key: &str| {
                before
                    .get(key)
                    .is_some_and(|r| r.tenant_id == t && r.user_id.as_deref() == Some(u))
            };
            only_devices(&out, of_user, op)?;
            let after = records(run.engine());
            untouched_unchanged(&before, &after, of_user, op)?;
            if !rejections(&out).is_empty() {
                prop_assert_eq!(rejections(&out).len(), out.len(), "{:?}: {:?}", op, out);
                prop_assert_eq!(&before, &after, "{:?}", op);
            }
            if was_settled {
                same_as_reevaluation(&ops[..=i], &before, &out, &after)?;
            }
        }
    }

    /// A policy change (upsert or tombstone) of tenant T touches only the devices of T that
    /// the old or the new version applies to (kind and platform match and the user is in
    /// scope, by the contract's rule): devices on other platforms, of other tenants, and of T
    /// on the platform but out of both versions' scope publish nothing and keep their state.
    /// What it publishes is what re-evaluating every device after it gives.
    #[test]
    fn policy_change_touches_only_devices_it_applies_to(ops in assignment_history(80)) {
        let mut run = Run::new();
        for (i, op) in ops.iter().enumerate() {
            let Op::Policy { tenant, policy, .. } = op else {
                run.step(op);
                continue;
            };
            let key = (
                TENANTS[*tenant as usize].to_owned(),
                POLICIES[*policy as usize].to_owned(),
            );
            let before = records(run.engine());
            let was_settled = settled(&run);
            let old = run.model.policies.get(&key).cloned();
            let Step::Outputs(out) = run.step(op) else { unreachable!() };
            let new = run.model.policies.get(&key).cloned();
            let model = &run.model;
            let in_scope = |key: &str| {
                before.get(key).is_some_and(|r| {
                    let groups = model.groups_of(&r.tenant_id, r.user_id.as_deref());
                    r.tenant_id == TENANTS[*tenant as usize]
                        && [&old, &new].into_iter().flatten().any(|p| {
                            applies(p, r.management, r.platform, groups.as_deref())
                        })
                })
            };
            only_devices(&out, in_scope, op)?;
            let after = records(run.engine());
            untouched_unchanged(&before, &after, in_scope, op)?;
            if was_settled {
                same_as_reevaluation(&ops[..=i], &before, &out, &after)?;
            }
        }
    }

    /// The state held is always what evaluating the current tables gives: after any step
    /// (once no device deadline has passed without firing, see [`settled`]), re-evaluating
    /// every device publishes nothing. A connector, heartbeat or tenant settings change
    /// publishes for devices exactly what re-evaluating every device after it gives.
    #[test]
    fn held_state_is_what_reevaluation_gives(ops in any_history(60)) {
        let mut run = Run::new();
        for (i, op) in ops.iter().enumerate() {
            let before = records(run.engine());
            let was_settled = settled(&run);
            let step = run.step(op);
            if settled(&run) {
                prop_assert_eq!(reconcile_all(&mut run), vec![], "after {:?}", op);
            }
            if let (Op::Connector { .. } | Op::Heartbeat { .. } | Op::Settings { .. }, Step::Outputs(out)) = (op, step) {
                if was_settled {
                    same_as_reevaluation(&ops[..=i], &before, &out, &records(run.engine()))?;
                }
            }
        }
    }
    /// The engine assigns policies by the contract's rule, judged on the accepted inputs:
    /// after every step, every device held explains the user and groups the inputs gave it,
    /// lists its platform's policies of its kind with `applies` as the rule says, applies
    /// (for app protection) exactly the policies the rule says, and an enrolled device no
    /// COMPLIANCE policy applies to is judged the tenant's `no_policy_state`.
    #[test]
    fn assignment_follows_the_contract_rule(ops in assignment_history(80)) {
        let mut run = Run::new();
        for op in &ops {
            run.step(op);
            let model = &run.model;
            let reader = run.engine().reader();
            for (key, r) in records(run.engine()) {
                let x = reader.explain_device(&r.tenant_id, &r.device_id, run.h.now).expect("held");
                prop_assert_eq!(&x.user_id, &r.user_id, "{}", key);
                let groups = model.groups_of(&r.tenant_id, r.user_id.as_deref());
                let mut want: Vec<String> = groups.clone().unwrap_or_default();
                want.sort();
                want.dedup();
                let mut got = x.groups.clone();
                got.sort();
                prop_assert_eq!(got, want, "{} after {:?}", key, op);
                let kind = match r.management {
                    Management::Mdm => PolicyKind::Compliance,
                    Management::Mam => PolicyKind::AppProtection,
                };
                let mine: Vec<(&String, &ThreatPolicy)> = model
                    .policies
                    .iter()
                    .filter(|((t, _), p)| *t == r.tenant_id && p.platform == r.platform && p.kind == kind)
                    .map(|((_, id), p)| (id, p))
                    .collect();
                let explained: Vec<(&str, bool)> =
                    x.policies.iter().map(|p| (p.policy_id.as_str(), p.applies)).collect();
                let expected: Vec<(&str, bool)> = mine
                    .iter()
                    .map(|(id, p)| (id.as_str(), applies(p, r.management, r.platform, groups.as_deref())))
                    .collect();
                prop_assert_eq!(&explained, &expected, "{} after {:?}", key, op);
                let applicable: Vec<&str> =
                    expected.iter().filter(|(_, a)| *a).map(|(id, _)| *id).collect();
                match r.management {
                    Management::Mam => {
                        let used: Vec<&str> = x
                            .decision
                            .app_protection_policies
                            .iter()
                            .map(|p| p.split(' ').next().unwrap_or_default())
                            .collect();
                        prop_assert_eq!(used, applicable, "{} after {:?}", key, op);
                    }
                    Management::Mdm => {
                        if settled(&run) {
                            prop_assert_eq!(x.decision.state, Some(r.compliance), "{} after {:?}", key, op);
                        }
                        if applicable.is_empty() {
                            prop_assert_eq!(r.compliance, model.no_policy_state(&r.tenant_id), "{} after {:?}", key, op);
                        }
                    }
                }
            }
        }
    }
}
