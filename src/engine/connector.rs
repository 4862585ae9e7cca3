//! Connector status: derived from the admin's settings, the partner's heartbeats and the wall
//! clock, and the reason text a status change carries. Pure functions over
//! [`ConnectorState`]; the engine owns the timers (`timers`).

use crate::catalogue::{Catalogue, PartnerIdx};
use crate::model::{ConnectorConfig, ConnectorStatus, Platform, RejectReason};

use super::compact::OsVersion;

const MS_PER_DAY: i64 = 86_400_000;

/// Everything known about one (tenant, partner) connector.
#[derive(Debug, Clone, Default)]
pub struct ConnectorState {
    pub config: Option<ConnectorConfig>,
    /// `sent_at` of the latest accepted heartbeat.
    pub last_heartbeat_at: Option<i64>,
    /// `error_code` of the latest heartbeat (0 = clean).
    pub error_code: i32,
    /// Minimum OS versions published by the partner, by platform code.
    pub min_os: [OsVersion; 4],
    /// When the connector was first seen set up; the silence clock starts there until the first
    /// heartbeat arrives.
    pub set_up_since: Option<i64>,
    /// Status and ignore flag as last published.
    pub published: Published,
    /// The deadline currently in the engine's timer set.
    pub scheduled: Option<i64>,
}

/// The externally visible part of a connector's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub status: ConnectorStatus,
    pub compliance_ignored: bool,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            status: ConnectorStatus::Unavailable,
            compliance_ignored: false,
        }
    }
}

impl ConnectorState {
    /// Start of the current silence: the last heartbeat, else when setup completed.
    pub fn silent_since(&self) -> Option<i64> {
        self.last_heartbeat_at.or(self.set_up_since)
    }

    /// Derives status and the compliance-ignored flag at `now`.
    pub fn derive(&self, partner: PartnerIdx, catalogue: &Catalogue, now: i64) -> Published {
        let Some(cfg) = self.config.as_ref() else {
            return Published::default();
        };
        if !cfg.provisioned || !catalogue.offered(partner) {
            return Published::default();
        }
        if !cfg.setup_complete {
            return Published {
                status: ConnectorStatus::NotSetUp,
                compliance_ignored: false,
            };
        }
        let timed_out = self.unresponsive_at().is_some_and(|at| now >= at);
        let ignored = self.ignored_at().is_some_and(|at| now >= at);
        let status = if timed_out {
            ConnectorStatus::Unresponsive
        } else if self.error_code != 0 {
            ConnectorStatus::Error
        } else if cfg.any_toggle() {
            ConnectorStatus::Enabled
        } else {
            ConnectorStatus::Available
        };
        Published {
            status,
            compliance_ignored: ignored,
        }
    }

    /// The next instant after `now` at which [`Self::derive`] can change without new input.
    pub fn next_deadline(&self, now: i64) -> Option<i64> {
        let cfg = self.config.as_ref()?;
        if !cfg.provisioned || !cfg.setup_complete {
            return None;
        }
        [self.unresponsive_at(), self.ignored_at()]
            .into_iter()
            .flatten()
            .filter(|&t| t > now)
            .min()
    }

    /// When the current silence makes the connector `UNRESPONSIVE` (heartbeat timeout).
    pub fn unresponsive_at(&self) -> Option<i64> {
        let cfg = self.config.as_ref()?;
        let since = self.silent_since()?;
        Some(since.saturating_add(cfg.heartbeat_timeout_seconds.saturating_mul(1000)))
    }

    /// When the current silence makes its data ignored (`unresponsive_threshold_days`, at
    /// least one day).
    pub fn ignored_at(&self) -> Option<i64> {
        let cfg = self.config.as_ref()?;
        let since = self.silent_since()?;
        Some(since.saturating_add(
            (cfg.unresponsive_threshold_days.max(1) as i64).saturating_mul(MS_PER_DAY),
        ))
    }

    /// Whether the connector's data counts for compliance on `platform` now.
    pub fn counts_for_compliance(&self, platform: Platform) -> bool {
        self.counts_if(|c| c.compliance_enabled(platform))
    }

    /// Whether the connector's data counts for app protection on `platform` now.
    pub fn counts_for_mam(&self, platform: Platform) -> bool {
        self.counts_if(|c| c.mam_enabled(platform))
    }

    /// A connector's data counts when it takes traffic, is not ignored, and its settings have
    /// the toggle `enabled` looks at on.
    fn counts_if(&self, enabled: impl FnOnce(&ConnectorConfig) -> bool) -> bool {
        traffic_refusal(self.published.status).is_none()
            && !self.published.compliance_ignored
            && self.config.as_ref().is_some_and(enabled)
    }
}

/// Why device threat reports and App Sync traffic of a connector in `status` are refused, if
/// they are: an `UNAVAILABLE` or `NOT_SET_UP` connector takes no traffic.
pub fn traffic_refusal(status: ConnectorStatus) -> Option<RejectReason> {
    match status {
        ConnectorStatus::Unavailable => Some(RejectReason::ConnectorUnavailable),
        ConnectorStatus::NotSetUp => Some(RejectReason::ConnectorNotSetUp),
        _ => None,
    }
}

/// The `reason` text of a status change from `old` to `new`; `hint` says what triggered it.
pub fn status_reason(
    conn: &ConnectorState,
    old: Published,
    new: Published,
    hint: &str,
    catalogue: &Catalogue,
    partner: PartnerIdx,
) -> String {
    let cfg = conn.config.as_ref();
    match new.status {
        ConnectorStatus::Unavailable if cfg.is_none() => "no connector settings".to_owned(),
        ConnectorStatus::Unavailable if !catalogue.offered(partner) => {
            format!("partner is not offered in the {} cloud", catalogue.cloud())
        }
        ConnectorStatus::Unavailable => "connector is deprovisioned".to_owned(),
        ConnectorStatus::NotSetUp => "connector setup is not complete".to_owned(),
        ConnectorStatus::Unresponsive if new.compliance_ignored && !old.compliance_ignored => {
            format!(
                "no heartbeat for {} days: compliance data ignored",
                cfg.map_or(7, |c| c.unresponsive_threshold_days)
            )
        }
        ConnectorStatus::Unresponsive => format!(
            "no heartbeat for {} s",
            cfg.map_or(86_400, |c| c.heartbeat_timeout_seconds)
        ),
        _ if old.compliance_ignored && !new.compliance_ignored => {
            format!("{hint}: compliance data used again")
        }
        _ => hint.to_owned(),
    }
}
