//! The simulated population: tenants with their connector settings and policies, devices with
//! a small threat state machine, and the records each produces.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use rand::rngs::SmallRng;
use rand::Rng;

use mtdgate::model::*;

pub const LOOKOUT: &str = "lookout";
pub const DEFENDER: &str = "microsoft-defender-for-endpoint";
pub const ZIMPERIUM: &str = "zimperium";
/// Provisioned but never set up in some tenants: its reports are rejected.
pub const SOPHOS: &str = "sophos";

/// Tenant id of tenant number `i` (0-based).
pub fn tenant_id(i: usize) -> String {
    format!("tenant-{:03}", i + 1)
}

/// Device id of device number `n` (0-based, unique across the fleet).
pub fn device_id(n: usize) -> String {
    format!("dev-{:06}", n + 1)
}

/// User id of device number `n`.
pub fn user_id(n: usize) -> String {
    format!("user-{:06}", n + 1)
}

/// Chance per report that a clean device gets infected.
const P_INFECT: f64 = 0.02;
/// Chance per report that an infected device has been remediated.
const P_REMEDIATE: f64 = 0.3;
/// Chance that a clean device reports LOW rather than SECURED.
const P_LOW: f64 = 0.1;
/// Share of a tenant's reports that come from a connector still being set up.
const P_PENDING_PARTNER: f64 = 0.005;

/// One tenant's admin settings and which partners report for its devices.
pub struct Tenant {
    pub id: String,
    pub connectors: Vec<ConnectorConfig>,
    pub policies: Vec<ThreatPolicy>,
    /// Partners whose app is on MDM devices, per platform code (compliance toggles).
    pub mdm_reporters: [Vec<&'static str>; 4],
    /// Partners whose app is on MAM devices, per platform code (app protection toggles).
    pub mam_reporters: [Vec<&'static str>; 4],
    /// A provisioned connector that is not set up yet (its reports are refused).
    pub pending: Option<&'static str>,
    /// Some connector forwards iOS app inventories (App Sync).
    pub app_sync: bool,
}

impl Tenant {
    /// Tenant `i`: Lookout everywhere; Defender on every third tenant; Zimperium (iOS
    /// compliance, with App Sync on half of them) on every fourth, where Lookout then covers
    /// Android compliance only; Sophos provisioned but not set up on every fifth.
    pub fn new(i: usize, heartbeat_timeout_seconds: i64, now: i64) -> Tenant {
        let id = tenant_id(i);
        let zim = i % 4 == 1;
        let mut connectors = Vec::new();
        let conn = |partner: &str| {
            let mut c = ConnectorConfig::new(&id, partner, now);
            c.heartbeat_timeout_seconds = heartbeat_timeout_seconds;
            c.provisioned = true;
            c.setup_complete = true;
            c
        };
        let mut lookout = conn(LOOKOUT);
        lookout.android_enabled = true;
        lookout.ios_enabled = !zim;
        lookout.android_mam_enabled = true;
        lookout.ios_mam_enabled = true;
        connectors.push(lookout);
        if i % 3 == 0 {
            let mut d = conn(DEFENDER);
            d.android_enabled = true;
            d.ios_enabled = true;
            d.android_mam_enabled = true;
            d.ios_mam_enabled = true;
            connectors.push(d);
        }
        if zim {
            let mut z = conn(ZIMPERIUM);
            z.ios_enabled = true;
            z.ios_app_sync = i % 8 == 1;
            connectors.push(z);
        }
        let pending = (i % 5 == 2).then_some(SOPHOS);
        if let Some(p) = pending {
            let mut s = conn(p);
            s.setup_complete = false;
            connectors.push(s);
        }
        let mut policies = Vec::new();
        for platform in [Platform::Android, Platform::Ios] {
            let name = platform.as_str().to_ascii_lowercase();
            let policy = |policy_id: String, kind, max_level, action| ThreatPolicy {
                tenant_id: id.clone(),
                policy_id,
                kind,
                platform,
                max_level,
                action,
                partner_priority: None,
                updated_at: now,
                include_groups: None,
                exclude_groups: Vec::new(),
                defender_max_level: None,
                block_on_missing_data: false,
                grace_period_hours: 0,
            };
            policies.push(policy(
                format!("compliance-{name}"),
                PolicyKind::Compliance,
                PolicyLevel::Medium,
                None,
            ));
            policies.push(policy(
                format!("app-block-{name}"),
                PolicyKind::AppProtection,
                PolicyLevel::Medium,
                Some(PolicyAction::Block),
            ));
            policies.push(policy(
                format!("app-wipe-{name}"),
                PolicyKind::AppProtection,
                PolicyLevel::High,
                Some(PolicyAction::Wipe),
            ));
        }
        let reporters = |f: &dyn Fn(&ConnectorConfig, Platform) -> bool| {
            let mut r: [Vec<&'static str>; 4] = Default::default();
            for p in Platform::ALL {
                for c in &connectors {
                    if c.setup_complete && f(c, *p) {
                        r[p.code() as usize].push(static_partner(&c.partner_id));
                    }
                }
            }
            r
        };
        let mdm_reporters = reporters(&|c, p| c.compliance_enabled(p));
        let mam_reporters = reporters(&|c, p| c.mam_enabled(p));
        let app_sync = connectors.iter().any(|c| c.ios_app_sync);
        Tenant {
            id,
            connectors,
            policies,
            mdm_reporters,
            mam_reporters,
            pending,
            app_sync,
        }
    }

    /// The tenant's settings with `report_validity_days` (and the default `no_policy_state`).
    pub fn settings(&self, report_validity_days: i32, now: i64) -> TenantSettings {
        TenantSettings {
            tenant_id: self.id.clone(),
            no_policy_state: NoPolicyState::default(),
            report_validity_days: Some(report_validity_days),
            updated_at: now,
        }
    }

    /// Connectors that send heartbeats (set up ones).
    pub fn live_connectors(&self) -> impl Iterator<Item = &ConnectorConfig> {
        self.connectors.iter().filter(|c| c.setup_complete)
    }
}

fn static_partner(id: &str) -> &'static str {
    match id {
        LOOKOUT => LOOKOUT,
        DEFENDER => DEFENDER,
        ZIMPERIUM => ZIMPERIUM,
        _ => SOPHOS,
    }
}

/// Device health as the partners see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Secured,
    Low,
    Medium,
    High,
    Compromised,
}

impl Health {
    pub fn infected(self) -> bool {
        self >= Health::Medium
    }
    fn state(self) -> HealthState {
        match self {
            Health::Secured => HealthState::Secured,
            Health::Low => HealthState::Low,
            Health::Medium => HealthState::Medium,
            Health::High => HealthState::High,
            Health::Compromised => HealthState::Compromised,
        }
    }
}

impl PartialOrd for Health {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Health {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// One device; small so millions fit.
pub struct Device {
    pub tenant: u32,
    pub platform: Platform,
    pub management: Management,
    pub ownership: Ownership,
    pub os: u8,
    pub health: Health,
    /// Round robin over the device's partners.
    pub next_partner: u8,
    pub last_observed: i64,
}

const ANDROID_OS: [&str; 4] = ["12", "13", "14", "15"];
const IOS_OS: [&str; 4] = ["16.7.8", "17.4.1", "17.6", "18.1"];

impl Device {
    pub fn os_version(&self) -> &'static str {
        let list = match self.platform {
            Platform::Ios => &IOS_OS,
            _ => &ANDROID_OS,
        };
        list[self.os as usize % list.len()]
    }
}

/// What happened to a device with one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Infected,
    Remediated,
}

/// The whole population.
pub struct Fleet {
    pub tenants: Vec<Tenant>,
    pub devices: Vec<Device>,
    /// iOS MDM devices of tenants with App Sync.
    pub app_sync_devices: Vec<u32>,
}

impl Fleet {
    /// `devices` devices spread over `tenants` tenants; about 70% enrolled (MDM), Android and
    /// iOS about half each, a fifth of the enrolled ones personally owned.
    pub fn new(
        tenants: usize,
        devices: usize,
        heartbeat_timeout_seconds: i64,
        now: i64,
        rng: &mut SmallRng,
    ) -> Fleet {
        let tenants: Vec<Tenant> = (0..tenants.max(1))
            .map(|i| Tenant::new(i, heartbeat_timeout_seconds, now))
            .collect();
        let mut list = Vec::with_capacity(devices);
        let mut app_sync_devices = Vec::new();
        for n in 0..devices {
            let tenant = (n % tenants.len()) as u32;
            let platform = if rng.random_bool(0.55) {
                Platform::Android
            } else {
                Platform::Ios
            };
            let mdm = rng.random_bool(0.7);
            let (management, ownership) = if mdm {
                let own = if rng.random_bool(0.2) {
                    Ownership::Personal
                } else {
                    Ownership::Corporate
                };
                (Management::Mdm, own)
            } else {
                (Management::Mam, Ownership::Personal)
            };
            if mdm && platform == Platform::Ios && tenants[tenant as usize].app_sync {
                app_sync_devices.push(n as u32);
            }
            list.push(Device {
                tenant,
                platform,
                management,
                ownership,
                os: rng.random_range(0..4),
                health: Health::Secured,
                next_partner: rng.random_range(0..4),
                last_observed: 0,
            });
        }
        Fleet {
            tenants,
            devices: list,
            app_sync_devices,
        }
    }

    /// Gives every tenant's COMPLIANCE policies `grace_period_hours` (APP_PROTECTION policies
    /// have none).
    pub fn set_grace_period_hours(&mut self, hours: i32) {
        for t in &mut self.tenants {
            for p in &mut t.policies {
                if p.kind == PolicyKind::Compliance {
                    p.grace_period_hours = hours;
                }
            }
        }
    }

    /// The enrollment record of device `n`, if it is enrolled.
    pub fn enrollment(&self, n: usize, now: i64) -> Option<DeviceEnrollment> {
        let d = &self.devices[n];
        (d.management == Management::Mdm).then(|| DeviceEnrollment {
            tenant_id: self.tenants[d.tenant as usize].id.clone(),
            device_id: device_id(n),
            user_id: user_id(n),
            platform: d.platform,
            management: d.management,
            ownership: d.ownership,
            os_version: Some(d.os_version().to_owned()),
            enrolled_at: now,
        })
    }

    /// The next report of device `n`: moves its threat state and picks the reporting partner.
    pub fn report(
        &mut self,
        n: usize,
        event_id: String,
        now: i64,
        rng: &mut SmallRng,
    ) -> (DeviceThreatReport, Transition) {
        let d = &mut self.devices[n];
        let tenant = &self.tenants[d.tenant as usize];
        let mut transition = Transition::None;
        if d.health.infected() {
            if rng.random_bool(P_REMEDIATE) {
                d.health = Health::Secured;
                transition = Transition::Remediated;
            }
        } else if rng.random_bool(P_INFECT) {
            let x: f64 = rng.random();
            d.health = if x < 0.5 {
                Health::Medium
            } else if x < 0.85 {
                Health::High
            } else {
                Health::Compromised
            };
            transition = Transition::Infected;
        } else {
            d.health = if rng.random_bool(P_LOW) {
                Health::Low
            } else {
                Health::Secured
            };
        }
        let reporters = match d.management {
            Management::Mdm => &tenant.mdm_reporters[d.platform.code() as usize],
            Management::Mam => &tenant.mam_reporters[d.platform.code() as usize],
        };
        let partner = match tenant.pending {
            Some(p) if rng.random_bool(P_PENDING_PARTNER) => p,
            _ if reporters.is_empty() => LOOKOUT,
            _ => {
                d.next_partner = d.next_partner.wrapping_add(1);
                reporters[d.next_partner as usize % reporters.len()]
            }
        };
        let observed_at = now.max(d.last_observed + 1);
        d.last_observed = observed_at;
        let report = DeviceThreatReport {
            event_id,
            tenant_id: tenant.id.clone(),
            partner_id: partner.to_owned(),
            device_id: device_id(n),
            user_id: Some(user_id(n)),
            platform: d.platform,
            management: d.management,
            ownership: Some(d.ownership),
            os_version: Some(d.os_version().to_owned()),
            health_state: d.health.state(),
            threats: threats(d.health, d.platform),
            observed_at,
        };
        (report, transition)
    }

    /// An App Sync check-in inventory of device `n`.
    pub fn inventory(&self, n: usize, now: i64, rng: &mut SmallRng) -> AppInventory {
        let d = &self.devices[n];
        let count = rng.random_range(4..APPS.len());
        let start = rng.random_range(0..APPS.len());
        let apps = (0..count)
            .map(|k| {
                let (app_id, name, managed) = APPS[(start + k) % APPS.len()];
                AppInfo {
                    app_id: app_id.to_owned(),
                    version: format!("{}.{}", 1 + k % 7, k % 10),
                    short_version: format!("{}", 1 + k % 7),
                    name: name.to_owned(),
                    bundle_size: 20_000_000 + (k as i64) * 3_500_000,
                    dynamic_size: 1_000_000 + (k as i64) * 250_000,
                    ad_hoc_signed: false,
                    from_app_store: true,
                    beta: false,
                    device_vpp: managed,
                    validated: true,
                    managed,
                }
            })
            .collect();
        AppInventory {
            tenant_id: self.tenants[d.tenant as usize].id.clone(),
            device_id: device_id(n),
            ownership: d.ownership,
            collected_at: now,
            apps,
        }
    }

    /// A heartbeat of a connector.
    pub fn heartbeat(tenant: &str, partner: &str, now: i64, error: bool) -> ConnectorHeartbeat {
        let mut min_os = BTreeMap::new();
        min_os.insert("ANDROID".to_owned(), "12".to_owned());
        min_os.insert("IOS".to_owned(), "16.0".to_owned());
        ConnectorHeartbeat {
            tenant_id: tenant.to_owned(),
            partner_id: partner.to_owned(),
            sent_at: now,
            error_code: error.then_some(503),
            min_os_versions: Some(min_os),
        }
    }
}

/// The apps of the inventories as (app id, name, managed), from `apps.txt`.
static APPS: LazyLock<Vec<(&'static str, &'static str, bool)>> = LazyLock::new(|| {
    include_str!("apps.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let (kind, id, name) = (f.next(), f.next(), f.next());
            match (kind, id, name) {
                (Some(kind @ ("managed" | "own")), Some(id), Some(name)) => {
                    (id, name, kind == "managed")
                }
                _ => panic!("apps.txt: unreadable line {l:?}"),
            }
        })
        .collect()
});

fn threats(health: Health, platform: Platform) -> Vec<Threat> {
    let t = |category: &str, name: &str, severity| Threat {
        category: category.to_owned(),
        name: name.to_owned(),
        severity,
    };
    let android = platform == Platform::Android;
    match health {
        Health::Secured => vec![],
        Health::Low => vec![t("APP", "Risky app permissions", ThreatSeverity::Low)],
        Health::Medium => vec![t(
            "PHISHING",
            "Phishing link opened",
            ThreatSeverity::Medium,
        )],
        Health::High => vec![
            if android {
                t("MALWARE", "Trojan.AndroidOS.Joker", ThreatSeverity::High)
            } else {
                t("APP", "Sideloaded enterprise app", ThreatSeverity::High)
            },
            t(
                "NETWORK",
                "Man-in-the-middle on Wi-Fi",
                ThreatSeverity::High,
            ),
        ],
        Health::Compromised => vec![if android {
            t("OS", "Rooted device", ThreatSeverity::Critical)
        } else {
            t("OS", "Jailbroken device", ThreatSeverity::Critical)
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::SeedableRng;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn fleet(tenants: usize, devices: usize) -> (Fleet, SmallRng) {
        let mut rng = SmallRng::seed_from_u64(7);
        (Fleet::new(tenants, devices, 60, NOW, &mut rng), rng)
    }

    #[test]
    fn tenants_have_their_policies_and_set_up_connectors() {
        let (fleet, _) = fleet(6, 10);
        assert_eq!(fleet.tenants.len(), 6);
        for (i, t) in fleet.tenants.iter().enumerate() {
            assert_eq!(t.id, tenant_id(i));
            assert_eq!(
                t.policies.len(),
                6,
                "compliance, block and wipe per platform"
            );
            assert!(t.connectors.iter().any(|c| c.partner_id == LOOKOUT));
            assert!(t
                .live_connectors()
                .all(|c| c.provisioned && c.setup_complete));
            assert_eq!(t.pending.is_some(), i % 5 == 2);
        }
        assert!(fleet.tenants.iter().any(|t| t.app_sync));
    }

    #[test]
    fn grace_periods_go_to_compliance_policies_and_settings_name_their_tenant() {
        let (mut fleet, _) = fleet(3, 10);
        assert!(fleet
            .tenants
            .iter()
            .flat_map(|t| &t.policies)
            .all(|p| p.grace_period_hours == 0));
        fleet.set_grace_period_hours(24);
        for t in &fleet.tenants {
            for p in &t.policies {
                let want = if p.kind == PolicyKind::Compliance {
                    24
                } else {
                    0
                };
                assert_eq!(p.grace_period_hours, want, "{}", p.policy_id);
            }
            let s = t.settings(7, NOW);
            assert_eq!(
                (s.tenant_id.as_str(), s.report_validity_days, s.updated_at),
                (t.id.as_str(), Some(7), NOW)
            );
            assert_eq!(s.no_policy_state, NoPolicyState::NotEvaluated);
        }
    }

    #[test]
    fn reports_name_their_device_and_mix_every_level() {
        let (mut fleet, mut rng) = fleet(6, 1_500);
        let mut levels = HashSet::new();
        let (mut infections, mut remediations) = (0, 0);
        for i in 0..4_000 {
            let n = rng.random_range(0..1_500);
            let (r, transition) = fleet.report(n, format!("e{i}"), NOW, &mut rng);
            assert_eq!(r.device_id, device_id(n));
            assert_eq!(r.tenant_id, tenant_id(n % 6));
            assert_eq!(r.event_id, format!("e{i}"));
            assert!(r.observed_at >= NOW);
            match transition {
                Transition::Infected => infections += 1,
                Transition::Remediated => remediations += 1,
                Transition::None => {}
            }
            levels.insert(r.health_state);
        }
        for l in [
            HealthState::Secured,
            HealthState::Medium,
            HealthState::High,
            HealthState::Compromised,
        ] {
            assert!(levels.contains(&l), "no {l} report in the mix: {levels:?}");
        }
        assert!(infections > 0 && remediations > 0);
    }

    #[test]
    fn a_device_never_reports_twice_at_the_same_time() {
        let (mut fleet, mut rng) = fleet(1, 1);
        let (a, _) = fleet.report(0, "a".into(), NOW, &mut rng);
        let (b, _) = fleet.report(0, "b".into(), NOW, &mut rng);
        assert!(b.observed_at > a.observed_at);
    }

    #[test]
    fn most_devices_are_enrolled_and_app_sync_goes_to_enrolled_ios_devices() {
        let (fleet, _) = fleet(8, 2_000);
        let enrolled = (0..2_000)
            .filter_map(|n| fleet.enrollment(n, NOW))
            .inspect(|e| {
                assert_eq!(
                    e.user_id,
                    user_id(e.device_id[4..].parse::<usize>().unwrap() - 1)
                )
            })
            .count();
        assert!(
            (1_200..1_600).contains(&enrolled),
            "{enrolled} of 2,000 enrolled"
        );
        assert!(!fleet.app_sync_devices.is_empty());
        for &n in &fleet.app_sync_devices {
            let d = &fleet.devices[n as usize];
            assert_eq!((d.management, d.platform), (Management::Mdm, Platform::Ios));
            assert!(fleet.tenants[d.tenant as usize].app_sync);
        }
    }

    #[test]
    fn inventories_list_apps_of_the_table() {
        assert_eq!(APPS.len(), 12);
        assert_eq!(APPS.iter().filter(|a| a.2).count(), 5, "managed apps");
        let (fleet, mut rng) = fleet(2, 100);
        let n = fleet.app_sync_devices[0] as usize;
        let inv = fleet.inventory(n, NOW, &mut rng);
        assert_eq!(inv.device_id, device_id(n));
        assert!((4..APPS.len()).contains(&inv.apps.len()));
        for app in &inv.apps {
            let known = APPS
                .iter()
                .find(|a| a.0 == app.app_id)
                .expect("an app of the table");
            assert_eq!((known.1, known.2), (app.name.as_str(), app.managed));
        }
    }

    #[test]
    fn heartbeats_carry_an_error_code_only_when_asked() {
        let ok = Fleet::heartbeat("t", LOOKOUT, NOW, false);
        let failing = Fleet::heartbeat("t", LOOKOUT, NOW, true);
        assert_eq!((ok.error_code, failing.error_code), (None, Some(503)));
        assert_eq!(ok.min_os_versions.unwrap().len(), 2);
    }
}
