//! The per-device state record written to the compacted changelog topic.

use serde::{Deserialize, Serialize};

use super::enums::*;
use super::inputs::Threat;

/// A COMPLIANCE policy with a grace period that the device fails, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyGrace {
    pub policy_id: String,
    pub failing_since: i64,
}

/// What one partner last said about a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerObservation {
    pub partner_id: String,
    pub health_state: HealthState,
    pub observed_at: i64,
    /// Fingerprint of the report's `event_id`, to recognise a redelivered report.
    pub event_fingerprint: i32,
    /// The worst threats (at most 3) of the last applied report.
    #[serde(default)]
    pub threats: Vec<Threat>,
    /// Fingerprints of the event ids of the reports applied before the last one, newest first
    /// (with `event_fingerprint`, the replay window: a report naming one is `DUPLICATE`).
    #[serde(default)]
    pub earlier_event_fingerprints: Vec<i32>,
}

/// Changelog topic `mtd.device-state.v1` (compacted), key `tenant/device`; a tombstone
/// when the device is retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateRecord {
    pub tenant_id: String,
    pub device_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    pub platform: Platform,
    pub management: Management,
    #[serde(default)]
    pub ownership: Option<Ownership>,
    #[serde(default)]
    pub os_version: Option<String>,
    pub enrolled: bool,
    pub compliance: ComplianceState,
    pub mam_blocked: bool,
    pub mam_wipe_incident: bool,
    /// Number of outputs issued for the device; part of every deterministic output id.
    pub output_seq: i64,
    pub partners: Vec<PartnerObservation>,
    /// The graces running for the device.
    #[serde(default)]
    pub graces: Vec<PolicyGrace>,
}
