//! Input records, field for field as in `schemas/*.avsc`.
//!
//! Optional fields default to `None` so JSON may omit them; booleans default to `false` and the
//! connector timers to the contract defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::enums::*;

/// One threat inside a report.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Threat {
    pub category: String,
    pub name: String,
    pub severity: ThreatSeverity,
}

/// Topic `mtd.device-threats.v1`, key `tenant/device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceThreatReport {
    pub event_id: String,
    pub tenant_id: String,
    pub partner_id: String,
    pub device_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    pub platform: Platform,
    pub management: Management,
    #[serde(default)]
    pub ownership: Option<Ownership>,
    #[serde(default)]
    pub os_version: Option<String>,
    pub health_state: HealthState,
    #[serde(default)]
    pub threats: Vec<Threat>,
    /// Event time, epoch milliseconds.
    pub observed_at: i64,
}

/// Topic `mtd.connector-heartbeats.v1`, key `tenant/partner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorHeartbeat {
    pub tenant_id: String,
    pub partner_id: String,
    pub sent_at: i64,
    #[serde(default)]
    pub error_code: Option<i32>,
    /// Platform symbol -> minimum supported OS version published by the partner.
    #[serde(default)]
    pub min_os_versions: Option<BTreeMap<String, String>>,
}

fn default_heartbeat_timeout() -> i64 {
    86_400
}
fn default_unresponsive_days() -> i32 {
    7
}

/// Topic `mtd.connectors.v1` (compacted), key `tenant/partner`; mirrors Graph
/// `mobileThreatDefenseConnector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorConfig {
    pub tenant_id: String,
    pub partner_id: String,
    #[serde(default)]
    pub provisioned: bool,
    #[serde(default)]
    pub setup_complete: bool,
    #[serde(default)]
    pub android_enabled: bool,
    #[serde(default)]
    pub ios_enabled: bool,
    #[serde(default)]
    pub windows_enabled: bool,
    #[serde(default)]
    pub macos_enabled: bool,
    #[serde(default)]
    pub android_mam_enabled: bool,
    #[serde(default)]
    pub ios_mam_enabled: bool,
    #[serde(default)]
    pub windows_mam_enabled: bool,
    #[serde(default)]
    pub android_blocked_on_missing_data: bool,
    #[serde(default)]
    pub ios_blocked_on_missing_data: bool,
    #[serde(default)]
    pub windows_blocked_on_missing_data: bool,
    #[serde(default)]
    pub macos_blocked_on_missing_data: bool,
    #[serde(default)]
    pub ios_app_sync: bool,
    #[serde(default)]
    pub ios_app_sync_personal_full: bool,
    #[serde(default)]
    pub unsupported_os_blocked: bool,
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout_seconds: i64,
    #[serde(default = "default_unresponsive_days")]
    pub unresponsive_threshold_days: i32,
    pub updated_at: i64,
}

impl ConnectorConfig {
    /// A connector with every flag off and default timers.
    pub fn new(tenant_id: &str, partner_id: &str, updated_at: i64) -> Self {
        ConnectorConfig {
            tenant_id: tenant_id.to_owned(),
            partner_id: partner_id.to_owned(),
            provisioned: false,
            setup_complete: false,
            android_enabled: false,
            ios_enabled: false,
            windows_enabled: false,
            macos_enabled: false,
            android_mam_enabled: false,
            ios_mam_enabled: false,
            windows_mam_enabled: false,
            android_blocked_on_missing_data: false,
            ios_blocked_on_missing_data: false,
            windows_blocked_on_missing_data: false,
            macos_blocked_on_missing_data: false,
            ios_app_sync: false,
            ios_app_sync_personal_full: false,
            unsupported_os_blocked: false,
            heartbeat_timeout_seconds: default_heartbeat_timeout(),
            unresponsive_threshold_days: default_unresponsive_days(),
            updated_at,
        }
    }

    /// Partner data used for compliance on `platform`.
    pub fn compliance_enabled(&self, platform: Platform) -> bool {
        match platform {
            Platform::Android => self.android_enabled,
            Platform::Ios => self.ios_enabled,
            Platform::Windows => self.windows_enabled,
            Platform::Macos => self.macos_enabled,
        }
    }

    /// Partner data used for app protection on `platform` (no macOS MAM toggle exists).
    pub fn mam_enabled(&self, platform: Platform) -> bool {
        match platform {
            Platform::Android => self.android_mam_enabled,
            Platform::Ios => self.ios_mam_enabled,
            Platform::Windows => self.windows_mam_enabled,
            Platform::Macos => false,
        }
    }

    /// `<platform>_blocked_on_missing_data`.
    pub fn blocked_on_missing_data(&self, platform: Platform) -> bool {
        match platform {
            Platform::Android => self.android_blocked_on_missing_data,
            Platform::Ios => self.ios_blocked_on_missing_data,
            Platform::Windows => self.windows_blocked_on_missing_data,
            Platform::Macos => self.macos_blocked_on_missing_data,
        }
    }

    /// Whether any compliance or app protection toggle is on (`ENABLED` vs `AVAILABLE`).
    pub fn any_toggle(&self) -> bool {
        Platform::ALL
            .iter()
            .any(|&p| self.compliance_enabled(p) || self.mam_enabled(p))
    }
}

/// Topic `mtd.policies.v1` (compacted), key `tenant/policy_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreatPolicy {
    pub tenant_id: String,
    pub policy_id: String,
    pub kind: PolicyKind,
    pub platform: Platform,
    pub max_level: PolicyLevel,
    #[serde(default)]
    pub action: Option<PolicyAction>,
    #[serde(default)]
    pub partner_priority: Option<PartnerPriority>,
    pub updated_at: i64,
    /// Groups whose users the policy applies to; `None` = every user of the tenant.
    #[serde(default)]
    pub include_groups: Option<Vec<String>>,
    /// Groups whose users it never applies to; exclusion wins over inclusion.
    #[serde(default)]
    pub exclude_groups: Vec<String>,
    /// COMPLIANCE only: Defender's own ceiling. `None` = Defender is held to `max_level`;
    /// `NOT_SET` = Defender's data is not judged; a level = Defender's ceiling, and `max_level`
    /// then judges third-party partners only.
    #[serde(default)]
    pub defender_max_level: Option<PolicyLevel>,
    /// APP_PROTECTION only: no usable data from the chosen partner counts as exceeding.
    #[serde(default)]
    pub block_on_missing_data: bool,
    /// COMPLIANCE only: hours a failing device stays `IN_GRACE_PERIOD` (0 to 8760).
    #[serde(default)]
    pub grace_period_hours: i32,
}

impl ThreatPolicy {
    /// A policy with the 1.0 fields given and every 1.1 field at its default.
    pub fn new(
        tenant_id: &str,
        policy_id: &str,
        kind: PolicyKind,
        platform: Platform,
        max_level: PolicyLevel,
        updated_at: i64,
    ) -> Self {
        ThreatPolicy {
            tenant_id: tenant_id.to_owned(),
            policy_id: policy_id.to_owned(),
            kind,
            platform,
            max_level,
            action: None,
            partner_priority: None,
            updated_at,
            include_groups: None,
            exclude_groups: Vec::new(),
            defender_max_level: None,
            block_on_missing_data: false,
            grace_period_hours: 0,
        }
    }
}

/// Topic `mtd.group-memberships.v1` (compacted), key `tenant/user`; a tombstone = the user is
/// in no group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    pub tenant_id: String,
    pub user_id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub updated_at: i64,
}

/// Topic `mtd.tenant-settings.v1` (compacted), key `tenant`; a tombstone = the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettings {
    pub tenant_id: String,
    #[serde(default)]
    pub no_policy_state: NoPolicyState,
    /// Days after which a partner's latest report counts as no usable data; `None` = never.
    #[serde(default)]
    pub report_validity_days: Option<i32>,
    pub updated_at: i64,
}

/// Topic `mtd.device-enrollments.v1` (compacted), key `tenant/device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEnrollment {
    pub tenant_id: String,
    pub device_id: String,
    pub user_id: String,
    pub platform: Platform,
    pub management: Management,
    pub ownership: Ownership,
    #[serde(default)]
    pub os_version: Option<String>,
    pub enrolled_at: i64,
}

/// One app of an iOS/iPadOS inventory (the App Sync fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    pub app_id: String,
    pub version: String,
    pub short_version: String,
    pub name: String,
    pub bundle_size: i64,
    pub dynamic_size: i64,
    pub ad_hoc_signed: bool,
    pub from_app_store: bool,
    pub beta: bool,
    pub device_vpp: bool,
    pub validated: bool,
    pub managed: bool,
}

/// Topic `mtd.app-inventory.v1`, key `tenant/device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInventory {
    pub tenant_id: String,
    pub device_id: String,
    pub ownership: Ownership,
    pub collected_at: i64,
    #[serde(default)]
    pub apps: Vec<AppInfo>,
}
