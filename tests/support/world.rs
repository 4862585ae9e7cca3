//! World builders shared by the tests, the benchmarks (`benches/core.rs` and `mtdgate bench`)
//! and the examples: deterministic ids, tenants' table records and device populations.
//!
//! One file, included where it is needed (`#[path = ".../tests/support/world.rs"] mod world;`),
//! so it depends on nothing but the mtdgate library's public API.
#![allow(dead_code)]

use std::sync::Arc;

use mtdgate::catalogue::Catalogue;
use mtdgate::engine::{Body, Engine, EngineSettings, Event, Output};
use mtdgate::model::*;

pub const T0: i64 = 1_700_000_000_000;
pub const DAY: i64 = 86_400_000;
pub const LOOKOUT: &str = "lookout";
pub const ZIMPERIUM: &str = "zimperium";
pub const MDE: &str = "microsoft-defender-for-endpoint";

/// splitmix64 of `x`: deterministic ids without keeping them.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The splitmix64 generator: deterministic ids and mixes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let r = mix(self.0);
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        r
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random (version 4) UUID, canonical lower case.
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format_uuid(a, b)
    }
}

/// A version 4 UUID derived from `seed`, canonical lower case.
pub fn uuid(seed: u64) -> String {
    format_uuid(mix(seed), mix(seed ^ 0x5555_5555_5555_5555))
}

fn format_uuid(a: u64, b: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Tenant id of tenant number `t`.
pub fn tenant_name(t: usize) -> String {
    format!("tenant-{t:04}")
}

/// The OS version the generated devices of `platform` run.
pub fn os_version(platform: Platform) -> &'static str {
    if platform == Platform::Ios {
        "17.4.1"
    } else {
        "14"
    }
}

/// An engine with the public cloud's partner catalogue and default settings.
pub fn engine() -> Engine {
    Engine::new(
        Arc::new(Catalogue::builtin("public").expect("catalogue")),
        EngineSettings::default(),
    )
}

/// Applies one event with `key` to `engine`.
pub fn apply(
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

/// A provisioned, set-up connector with every toggle off.
pub fn set_up(tenant: &str, partner: &str, updated_at: i64) -> ConnectorConfig {
    let mut c = ConnectorConfig::new(tenant, partner, updated_at);
    c.provisioned = true;
    c.setup_complete = true;
    c
}

/// A set-up connector (updated at [`T0`]) with compliance and app protection on for every
/// platform it covers: Android and iOS, and Windows and macOS compliance for Defender.
pub fn enabled(tenant: &str, partner: &str) -> ConnectorConfig {
    let mut c = set_up(tenant, partner, T0);
    c.android_enabled = true;
    c.ios_enabled = true;
    c.android_mam_enabled = true;
    c.ios_mam_enabled = true;
    if partner == MDE {
        c.windows_enabled = true;
        c.macos_enabled = true;
    }
    c
}

/// A compliance policy (updated at [`T0`]): `platform` devices above `max_level` fail.
pub fn compliance_policy(
    tenant: &str,
    id: &str,
    platform: Platform,
    max_level: PolicyLevel,
) -> ThreatPolicy {
    ThreatPolicy {
        tenant_id: tenant.into(),
        policy_id: id.into(),
        kind: PolicyKind::Compliance,
        platform,
        max_level,
        action: None,
        partner_priority: None,
        updated_at: T0,
        include_groups: None,
        exclude_groups: Vec::new(),
        defender_max_level: None,
        block_on_missing_data: false,
        grace_period_hours: 0,
    }
}

/// An app protection policy (updated at [`T0`]): `action` for `platform` devices above
/// `max_level`.
pub fn app_policy(
    tenant: &str,
    id: &str,
    platform: Platform,
    max_level: PolicyLevel,
    action: PolicyAction,
) -> ThreatPolicy {
    ThreatPolicy {
        kind: PolicyKind::AppProtection,
        action: Some(action),
        ..compliance_policy(tenant, id, platform, max_level)
    }
}

/// A heartbeat without error code or minimum OS versions.
pub fn heartbeat(tenant: &str, partner: &str, sent_at: i64) -> ConnectorHeartbeat {
    ConnectorHeartbeat {
        tenant_id: tenant.into(),
        partner_id: partner.into(),
        sent_at,
        error_code: None,
        min_os_versions: None,
    }
}

/// One tenant's table records.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub connectors: Vec<ConnectorConfig>,
    pub policies: Vec<ThreatPolicy>,
    pub heartbeats: Vec<ConnectorHeartbeat>,
}

impl Tables {
    /// The records as keyed events: connector settings, then policies, then heartbeats.
    pub fn events(&self) -> Vec<(String, Body)> {
        let connectors = self.connectors.iter().map(|c| {
            let key = format!("{}/{}", c.tenant_id, c.partner_id);
            (key, Body::Connector(Some(c.clone())))
        });
        let policies = self.policies.iter().map(|p| {
            let key = format!("{}/{}", p.tenant_id, p.policy_id);
            (key, Body::Policy(Some(p.clone())))
        });
        let heartbeats = self.heartbeats.iter().map(|h| {
            let key = format!("{}/{}", h.tenant_id, h.partner_id);
            (key, Body::Heartbeat(h.clone()))
        });
        connectors.chain(policies).chain(heartbeats).collect()
    }

    /// Applies every record to `engine` (partition 0) at `now`; returns the outputs.
    pub fn apply(&self, engine: &mut Engine, now: i64) -> Vec<Output> {
        let mut out = Vec::new();
        for (key, body) in self.events() {
            apply(engine, 0, &key, body, now, &mut out);
        }
        out
    }

    /// [`Tables::apply`], panicking if any record is rejected.
    pub fn apply_all(&self, engine: &mut Engine, now: i64) {
        let out = self.apply(engine, now);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Rejected(_))),
            "tables rejected: {out:?}"
        );
    }
}

/// The partners of tenant number `t` in the mixed population: Lookout, and Defender too for
/// every third tenant.
pub fn partners_of(t: usize) -> &'static [&'static str] {
    if t % 3 == 0 {
        &[LOOKOUT, MDE]
    } else {
        &[LOOKOUT]
    }
}

/// A tenant of the mixed population: `partners` heartbeating with compliance and app
/// protection on for Android and iOS, MEDIUM compliance policies on both, and app protection
/// BLOCK over MEDIUM on iOS and WIPE over HIGH on Android.
pub fn mixed_tables(tenant: &str, partners: &[&str], now: i64) -> Tables {
    use Platform::{Android, Ios};
    use PolicyLevel::{High, Medium};
    Tables {
        connectors: partners.iter().map(|p| enabled(tenant, p)).collect(),
        policies: vec![
            compliance_policy(tenant, "mtd-ios", Ios, Medium),
            compliance_policy(tenant, "mtd-android", Android, Medium),
            app_policy(tenant, "app-ios", Ios, Medium, PolicyAction::Block),
            app_policy(tenant, "app-android", Android, High, PolicyAction::Wipe),
        ],
        heartbeats: partners.iter().map(|p| heartbeat(tenant, p, now)).collect(),
    }
}

/// The fan-out tenant: Lookout for iOS and Android compliance, MEDIUM compliance policies and
/// one heartbeat at `now`; [`fanout_device`]s are COMPLIANT under it.
pub fn fanout_tables(tenant: &str, now: i64) -> Tables {
    let at = now - 60_000;
    let mut c = set_up(tenant, LOOKOUT, at);
    c.android_enabled = true;
    c.ios_enabled = true;
    let compliance = |platform: Platform| {
        let id = format!("compliance-{}", platform.as_str().to_ascii_lowercase());
        ThreatPolicy {
            updated_at: at,
            ..compliance_policy(tenant, &id, platform, PolicyLevel::Medium)
        }
    };
    Tables {
        connectors: vec![c],
        policies: vec![compliance(Platform::Ios), compliance(Platform::Android)],
        heartbeats: vec![heartbeat(tenant, LOOKOUT, now)],
    }
}

/// A MAM tenant: Lookout for iOS app protection and a BLOCK policy over LOW (both updated at
/// `updated_at`) and a heartbeat at `now`, so every HIGH <-> SECURED flip of a MAM device
/// publishes one action.
pub fn mam_tables(tenant: &str, updated_at: i64, now: i64) -> Tables {
    let mut c = set_up(tenant, LOOKOUT, updated_at);
    c.ios_mam_enabled = true;
    let block = app_policy(
        tenant,
        "block",
        Platform::Ios,
        PolicyLevel::Low,
        PolicyAction::Block,
    );
    Tables {
        connectors: vec![c],
        policies: vec![ThreatPolicy {
            updated_at,
            ..block
        }],
        heartbeats: vec![heartbeat(tenant, LOOKOUT, now)],
    }
}

/// The threats a report of `health` carries: one for an infected device, none otherwise.
pub fn threats(health: HealthState) -> Vec<Threat> {
    match health {
        HealthState::Medium | HealthState::High | HealthState::Compromised => vec![Threat {
            category: "malware".into(),
            name: "Trojan.AndroidOS.Agent".into(),
            severity: ThreatSeverity::High,
        }],
        _ => Vec::new(),
    }
}

/// One device of the mixed population.
#[derive(Debug, Clone)]
pub struct Member {
    /// Tenant number.
    pub tenant: usize,
    pub device_id: String,
    pub user_id: String,
    pub platform: Platform,
    pub management: Management,
    pub ownership: Ownership,
    /// Its tenant's partners ([`partners_of`]).
    pub partners: &'static [&'static str],
    /// Random bits of the device, for callers that need more.
    pub bits: u64,
}

/// Device `i` of the mixed population of `tenants` tenants: UUID device and user ids, iOS or
/// Android, four in five enrolled (MDM, corporate), the rest MAM (personal), reported on by
/// its tenant's partners.
pub fn member(i: usize, tenants: usize) -> Member {
    let t = i % tenants.max(1);
    let bits = mix(i as u64 ^ 0xabcdef);
    let mdm = (bits >> 8) % 5 != 0;
    Member {
        tenant: t,
        device_id: uuid(2 * i as u64),
        user_id: uuid(2 * i as u64 + 1),
        platform: if bits % 2 == 0 {
            Platform::Ios
        } else {
            Platform::Android
        },
        management: if mdm {
            Management::Mdm
        } else {
            Management::Mam
        },
        ownership: if mdm {
            Ownership::Corporate
        } else {
            Ownership::Personal
        },
        partners: partners_of(t),
        bits,
    }
}

impl Member {
    /// The enrollment of an MDM device (`None` for MAM ones).
    pub fn enrollment(&self, tenant_id: &str, enrolled_at: i64) -> Option<DeviceEnrollment> {
        (self.management == Management::Mdm).then(|| DeviceEnrollment {
            tenant_id: tenant_id.to_owned(),
            device_id: self.device_id.clone(),
            user_id: self.user_id.clone(),
            platform: self.platform,
            management: self.management,
            ownership: self.ownership,
            os_version: Some(os_version(self.platform).into()),
            enrolled_at,
        })
    }

    /// A report of `partner` on this device.
    pub fn report(
        &self,
        tenant_id: &str,
        partner: &str,
        health_state: HealthState,
        event_id: String,
        observed_at: i64,
    ) -> DeviceThreatReport {
        DeviceThreatReport {
            event_id,
            tenant_id: tenant_id.to_owned(),
            partner_id: partner.into(),
            device_id: self.device_id.clone(),
            user_id: Some(self.user_id.clone()),
            platform: self.platform,
            management: self.management,
            ownership: Some(self.ownership),
            os_version: Some(os_version(self.platform).into()),
            health_state,
            threats: threats(health_state),
            observed_at,
        }
    }

    /// The changelog record of this device as the engine keeps it after its partners'
    /// reports: Lookout SECURED, Defender (if its tenant has it) LOW, enrolled devices
    /// COMPLIANT.
    pub fn state(&self, tenant_id: &str, now: i64) -> DeviceStateRecord {
        let mdm = self.management == Management::Mdm;
        let partners = self
            .partners
            .iter()
            .enumerate()
            .map(|(k, p)| PartnerObservation {
                partner_id: (*p).into(),
                health_state: if k == 0 {
                    HealthState::Secured
                } else {
                    HealthState::Low
                },
                observed_at: now - 1_000 * (k as i64 + 1),
                event_fingerprint: (self.bits >> (16 + 8 * k)) as i32,
                threats: Vec::new(),
                earlier_event_fingerprints: Vec::new(),
            })
            .collect();
        DeviceStateRecord {
            tenant_id: tenant_id.to_owned(),
            device_id: self.device_id.clone(),
            user_id: Some(self.user_id.clone()),
            platform: self.platform,
            management: self.management,
            ownership: Some(self.ownership),
            os_version: mdm.then(|| os_version(self.platform).to_owned()),
            enrolled: mdm,
            compliance: if mdm {
                ComplianceState::Compliant
            } else {
                ComplianceState::Unknown
            },
            mam_blocked: false,
            mam_wipe_incident: false,
            output_seq: 1,
            partners,
            graces: Vec::new(),
        }
    }
}

/// The changelog record of device `i` of the mixed population ([`member`], [`Member::state`])
/// in tenant [`tenant_name`]`(i % tenants)`.
pub fn mixed_state(i: usize, tenants: usize, now: i64) -> DeviceStateRecord {
    let m = member(i, tenants);
    m.state(&tenant_name(m.tenant), now)
}

/// Device `i` of the fan-out tenant: enrolled, Lookout reporting SECURED, COMPLIANT under
/// [`fanout_tables`].
pub fn fanout_device(i: usize, tenant: &str, now: i64) -> DeviceStateRecord {
    let platform = if i % 2 == 0 {
        Platform::Ios
    } else {
        Platform::Android
    };
    DeviceStateRecord {
        tenant_id: tenant.to_owned(),
        device_id: fanout_device_id(i),
        user_id: Some(uuid(7 * i as u64 + 4)),
        platform,
        management: Management::Mdm,
        ownership: Some(Ownership::Corporate),
        os_version: Some(os_version(platform).to_owned()),
        enrolled: true,
        compliance: ComplianceState::Compliant,
        mam_blocked: false,
        mam_wipe_incident: false,
        output_seq: 1,
        partners: vec![PartnerObservation {
            partner_id: LOOKOUT.into(),
            health_state: HealthState::Secured,
            observed_at: now - 1_000,
            event_fingerprint: mix(i as u64) as i32,
            threats: Vec::new(),
            earlier_event_fingerprints: Vec::new(),
        }],
        graces: Vec::new(),
    }
}

/// The device id of [`fanout_device`] `i`.
pub fn fanout_device_id(i: usize) -> String {
    uuid(7 * i as u64 + 3)
}

// The contract 1.1 population: the mixed population's devices, each device's user in 3 groups of
// its tenant's directory, policies assigned to groups, and one device in ten carrying threats.

/// Departments of each tenant's directory in the 1.1 population (groups `0..20`).
pub const DEPARTMENTS: usize = 20;
/// Locations (groups `20..40`).
pub const LOCATIONS: usize = 20;
/// Roles (groups `40..50`).
pub const ROLES: usize = 10;
/// The size of each tenant's group pool: every user is in one department, one location and one
/// role, so in 3 of these groups.
pub const DIRECTORY_GROUPS: usize = DEPARTMENTS + LOCATIONS + ROLES;
/// The departments the strict policies of [`directory_tables`] include.
pub const FINANCE: usize = 0;
pub const EXECUTIVES: usize = 1;
/// The roles [`directory_tables`] names: front-line staff get a stricter app protection policy,
/// contractors are excluded from the tenant-wide policies and held to their own.
pub const FRONTLINE: usize = DIRECTORY_GROUPS - 2;
pub const CONTRACTORS: usize = DIRECTORY_GROUPS - 1;

/// The id of group `g` of tenant number `t`: a UUID, as Entra ID's group object ids are.
pub fn group_id(t: usize, g: usize) -> String {
    uuid((1 << 62) | ((t as u64) << 8) | g as u64)
}

/// An index below `n` from the random `r`, small ones more likely (`n * u^2` for a uniform `u`:
/// the first of 20 draws 22%, the last 2.5%), as a directory has a few large departments and a
/// head office.
fn skewed(r: u64, n: usize) -> usize {
    let u = (r >> 11) as f64 / (1u64 << 53) as f64;
    ((u * u * n as f64) as usize).min(n - 1)
}

/// The groups (department, location, role: pool indexes, see [`DIRECTORY_GROUPS`]) of the user
/// of device `i` of the 1.1 population, each drawn [`skewed`]: of the 4,000 combinations, a
/// tenant's users share a few hundred common ones.
pub fn directory_groups(i: usize) -> [usize; 3] {
    let mut r = Rng(i as u64 ^ 0x6469_7265_6374);
    [
        skewed(r.next(), DEPARTMENTS),
        DEPARTMENTS + skewed(r.next(), LOCATIONS),
        DEPARTMENTS + LOCATIONS + skewed(r.next(), ROLES),
    ]
}

/// The membership record of user `user_id` of tenant number `t` in `groups` (pool indexes).
pub fn membership(t: usize, user_id: &str, groups: &[usize], updated_at: i64) -> GroupMembership {
    GroupMembership {
        tenant_id: tenant_name(t),
        user_id: user_id.to_owned(),
        groups: groups.iter().map(|&g| group_id(t, g)).collect(),
        updated_at,
    }
}

/// A tenant of the 1.1 population: [`mixed_tables`]' connectors and heartbeats, with policies
/// assigned to groups. iOS: MEDIUM for everyone but contractors, SECURED for finance and the
/// executives, LOW for contractors; app protection BLOCK over MEDIUM for everyone and over LOW
/// for finance, executives and front-line staff. Android: MEDIUM for everyone (Defender held to
/// HIGH), SECURED for finance and executives but not contractors; WIPE over HIGH for everyone
/// but contractors. Locations are named by no policy.
pub fn directory_tables(t: usize, now: i64) -> Tables {
    use Platform::{Android, Ios};
    use PolicyAction::{Block, Wipe};
    use PolicyLevel::{High, Low, Medium, Secured};
    let tenant = tenant_name(t);
    let g = |groups: &[usize]| -> Vec<String> { groups.iter().map(|&k| group_id(t, k)).collect() };
    let strict = Some(g(&[FINANCE, EXECUTIVES]));
    let mut tables = mixed_tables(&tenant, partners_of(t), now);
    tables.policies = vec![
        ThreatPolicy {
            exclude_groups: g(&[CONTRACTORS]),
            ..compliance_policy(&tenant, "mtd-ios", Ios, Medium)
        },
        ThreatPolicy {
            include_groups: strict.clone(),
            ..compliance_policy(&tenant, "mtd-ios-strict", Ios, Secured)
        },
        ThreatPolicy {
            include_groups: Some(g(&[CONTRACTORS])),
            ..compliance_policy(&tenant, "mtd-ios-contractors", Ios, Low)
        },
        ThreatPolicy {
            defender_max_level: Some(High),
            ..compliance_policy(&tenant, "mtd-android", Android, Medium)
        },
        ThreatPolicy {
            include_groups: strict,
            exclude_groups: g(&[CONTRACTORS]),
            ..compliance_policy(&tenant, "mtd-android-strict", Android, Secured)
        },
        app_policy(&tenant, "app-ios", Ios, Medium, Block),
        ThreatPolicy {
            include_groups: Some(g(&[FINANCE, EXECUTIVES, FRONTLINE])),
            ..app_policy(&tenant, "app-ios-strict", Ios, Low, Block)
        },
        ThreatPolicy {
            exclude_groups: g(&[CONTRACTORS]),
            ..app_policy(&tenant, "app-android", Android, High, Wipe)
        },
    ];
    tables
}

/// The threat names of the 1.1 population, most common first: 13 malware, adware and riskware
/// families in 20 variants each and 17 device, OS, network and phishing findings (277 names).
pub fn threat_pool() -> &'static [Threat] {
    &threat_table().0
}

/// [`threat_pool`] and its cumulative Zipf weights (the k-th name 1/k as likely as the first).
fn threat_table() -> &'static (Vec<Threat>, Vec<f64>) {
    use ThreatSeverity::{Critical, High, Low, Medium};
    static TABLE: std::sync::OnceLock<(Vec<Threat>, Vec<f64>)> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let families = [
            ("malware", "Trojan.AndroidOS.Joker", High),
            ("malware", "Trojan.AndroidOS.Hiddad", Medium),
            ("malware", "Trojan-Banker.AndroidOS.Anubis", Critical),
            ("malware", "Trojan-Spy.AndroidOS.SpyNote", Critical),
            ("malware", "Backdoor.AndroidOS.Triada", Critical),
            ("malware", "Trojan-Dropper.AndroidOS.SharkBot", Critical),
            ("malware", "Spyware.iOS.Pegasus", Critical),
            ("malware", "Spyware.iOS.Predator", Critical),
            ("adware", "Adware.AndroidOS.HiddenAds", Low),
            ("adware", "Adware.AndroidOS.Ewind", Low),
            ("riskware", "Riskware.AndroidOS.SMSreg", Medium),
            ("riskware", "Riskware.iOS.EnterpriseSigned", Medium),
            ("riskware", "PUA.AndroidOS.Hypeads", Low),
        ];
        let findings = [
            ("app", "SideloadedApp", Medium),
            ("app", "UntrustedEnterpriseProfile", Medium),
            ("app", "AppWithExcessivePermissions", Low),
            ("device", "RootDetected", High),
            ("device", "JailbreakDetected", High),
            ("device", "DeveloperOptionsEnabled", Low),
            ("device", "UsbDebuggingEnabled", Low),
            ("device", "NoScreenLock", Medium),
            ("device", "StorageEncryptionDisabled", Medium),
            ("os", "OutdatedOsVersion", Medium),
            ("os", "VulnerableKernel", High),
            ("network", "ManInTheMiddle", High),
            ("network", "RogueAccessPoint", Medium),
            ("network", "SslStrip", High),
            ("network", "UnsecuredWifi", Low),
            ("phishing", "PhishingSite", High),
            ("phishing", "SmishingLink", Medium),
        ];
        let threat = |category: &str, name: String, severity| Threat {
            category: category.into(),
            name,
            severity,
        };
        let mut pool: Vec<Threat> = findings
            .iter()
            .map(|&(c, n, s)| threat(c, n.into(), s))
            .collect();
        for v in 0..20u8 {
            for &(c, n, s) in &families {
                pool.push(threat(c, format!("{n}.{}", (b'a' + v) as char), s));
            }
        }
        // Ranks in a fixed shuffled order, so that no one kind of threat is all the head.
        let mut ranked: Vec<(u64, Threat)> = pool
            .into_iter()
            .enumerate()
            .map(|(k, t)| (mix(k as u64 ^ 0x7468), t))
            .collect();
        ranked.sort_by_key(|(r, _)| *r);
        let pool: Vec<Threat> = ranked.into_iter().map(|(_, t)| t).collect();
        let mut total = 0.0;
        let cumulative = (1..=pool.len())
            .map(|k| {
                total += 1.0 / k as f64;
                total
            })
            .collect();
        (pool, cumulative)
    })
}

/// A name from [`threat_pool`] by its Zipf weight, from the random `r`.
fn zipf_threat(r: u64) -> &'static Threat {
    let (pool, cumulative) = threat_table();
    let u = (r >> 11) as f64 / (1u64 << 53) as f64 * cumulative[cumulative.len() - 1];
    let k = cumulative.partition_point(|&c| c <= u).min(pool.len() - 1);
    &pool[k]
}

/// The threats of device `i`'s report in the 1.1 population: one device in ten carries 1 to 3
/// (one in 60% of those, two in 30%, three in 10%), distinct names drawn from [`threat_pool`]
/// by Zipf weight (a few families make most of the detections); the others none.
pub fn directory_threats(i: usize) -> Vec<Threat> {
    let mut r = Rng(i as u64 ^ 0x7468_7265_6174);
    if r.below(10) != 0 {
        return Vec::new();
    }
    let n = match r.below(10) {
        0..=5 => 1,
        6..=8 => 2,
        _ => 3,
    };
    let mut threats: Vec<Threat> = Vec::with_capacity(n);
    while threats.len() < n {
        let t = zipf_threat(r.next());
        if !threats.contains(t) {
            threats.push(t.clone());
        }
    }
    threats
}

/// The health a partner reports with `threats`: from the worst severity (LOW -> LOW, MEDIUM ->
/// MEDIUM, HIGH and CRITICAL -> HIGH); without threats, from `r`: SECURED 70%, LOW 25%,
/// ACTIVATED 5%.
pub fn health_with(threats: &[Threat], r: u64) -> HealthState {
    match threats.iter().map(|t| t.severity.rank()).max() {
        Some(worst) if worst >= ThreatSeverity::High.rank() => HealthState::High,
        Some(worst) if worst >= ThreatSeverity::Medium.rank() => HealthState::Medium,
        Some(_) => HealthState::Low,
        None => match r % 100 {
            0..=69 => HealthState::Secured,
            70..=94 => HealthState::Low,
            _ => HealthState::Activated,
        },
    }
}

/// One device of the 1.1 population: a [`Member`] of the mixed population (so one user per
/// device), its user's groups, and the threats its first partner reports.
#[derive(Debug, Clone)]
pub struct DirectoryDevice {
    pub member: Member,
    /// Department, location and role (pool indexes).
    pub groups: [usize; 3],
    /// What its tenant's first partner reports ([`directory_threats`]); later partners report
    /// none.
    pub threats: Vec<Threat>,
}

/// Device `i` of the 1.1 population of `tenants` tenants.
pub fn directory_device(i: usize, tenants: usize) -> DirectoryDevice {
    DirectoryDevice {
        member: member(i, tenants),
        groups: directory_groups(i),
        threats: directory_threats(i),
    }
}

impl DirectoryDevice {
    /// The membership record of the device's user.
    pub fn membership(&self, updated_at: i64) -> GroupMembership {
        membership(
            self.member.tenant,
            &self.member.user_id,
            &self.groups,
            updated_at,
        )
    }

    /// The report of its tenant's `k`-th partner: the first carries [`Self::threats`] with a
    /// health to match ([`health_with`]), the others no threats.
    pub fn report(&self, k: usize, event_id: String, observed_at: i64) -> DeviceThreatReport {
        let m = &self.member;
        let threats = if k == 0 {
            self.threats.clone()
        } else {
            Vec::new()
        };
        let health = health_with(&threats, m.bits >> (16 + 8 * k));
        let mut r = m.report(
            &tenant_name(m.tenant),
            m.partners[k],
            health,
            event_id,
            observed_at,
        );
        r.threats = threats;
        r
    }
}
