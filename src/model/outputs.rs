//! Output records, field for field as in `schemas/*.avsc`.

use serde::{Deserialize, Serialize};

use super::enums::*;
use super::inputs::{AppInfo, Threat};

/// One reason of a compliance decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub partner_id: String,
    pub code: ReasonCode,
    pub detail: String,
    /// For `LEVEL_EXCEEDS_POLICY`: the worst threats (at most 3) of the report that exceeded.
    #[serde(default)]
    pub threats: Vec<Threat>,
}

/// Topic `mtd.compliance-changes.v1`, key `tenant/device`: one per real change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceChange {
    pub change_id: String,
    pub tenant_id: String,
    pub device_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    pub platform: Platform,
    pub previous: ComplianceState,
    pub current: ComplianceState,
    pub reasons: Vec<Reason>,
    #[serde(default)]
    pub worst_level: Option<ThreatLevel>,
    pub evaluated_at: i64,
    pub cause_event_id: String,
    /// For `IN_GRACE_PERIOD`: when the first running grace ends.
    #[serde(default)]
    pub grace_ends_at: Option<i64>,
}

/// Topic `mtd.app-protection-actions.v1`, key `tenant/device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppProtectionAction {
    pub action_id: String,
    pub tenant_id: String,
    pub device_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    pub platform: Platform,
    pub partner_id: String,
    pub action: AppAction,
    #[serde(default)]
    pub level: Option<ThreatLevel>,
    /// The policy's limit; null for an UNBLOCK because no app protection policy applies any more.
    #[serde(default)]
    pub max_allowed_level: Option<ThreatLevel>,
    /// Empty for an UNBLOCK because no app protection policy applies any more.
    pub policy_id: String,
    pub issued_at: i64,
    pub cause_event_id: String,
    /// The worst threats (at most 3) of the partner's report behind the action.
    #[serde(default)]
    pub threats: Vec<Threat>,
}

/// Topic `mtd.connector-status.v1`, key `tenant/partner`: one per status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorStatusChange {
    pub tenant_id: String,
    pub partner_id: String,
    pub previous: ConnectorStatus,
    pub current: ConnectorStatus,
    pub compliance_ignored: bool,
    #[serde(default)]
    pub last_heartbeat_at: Option<i64>,
    pub changed_at: i64,
    pub reason: String,
}

/// Topic `mtd.partner-app-inventory.{partner}.v1`, key `tenant/device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerAppInventory {
    pub tenant_id: String,
    pub partner_id: String,
    pub device_id: String,
    pub ownership: Ownership,
    pub collected_at: i64,
    pub apps: Vec<AppInfo>,
    /// Unmanaged apps left out because the device is personal and full collection is off.
    pub unmanaged_apps_removed: i32,
}

/// Topic `mtd.rejected.v1`, key = the original key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedEvent {
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original key, decoded lossily when it is not UTF-8.
    #[serde(default)]
    pub key: Option<String>,
    pub reason: RejectReason,
    pub detail: String,
    /// The original value bytes (base64 in JSON, `bytes` in Avro).
    #[serde(with = "super::raw_bytes")]
    pub raw: Vec<u8>,
    pub rejected_at: i64,
}
