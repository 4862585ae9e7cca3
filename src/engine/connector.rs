//! Connector status: derived from the admin's settings, the partner's heartbeats and the wall
//! clock. Pure functions over [`ConnectorState`]; the engine owns the timers.

use crate::catalogue::{Catalogue, PartnerIdx};
use crate::model::{ConnectorConfig, ConnectorStatus, Platform};

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
        let silent_for = self.silent_since().map(|since| now.saturating_sub(since));
        let timed_out =
            silent_for.is_some_and(|d| d >= cfg.heartbeat_timeout_seconds.saturating_mul(1000));
        let ignored = silent_for.is_some_and(|d| {
            d >= (cfg.unresponsive_threshold_days.max(1) as i64).saturating_mul(MS_PER_DAY)
        });
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
        let since = self.silent_since()?;
        let timeout = since.saturating_add(cfg.heartbeat_timeout_seconds.saturating_mul(1000));
        let ignore = since.saturating_add(
            (cfg.unresponsive_threshold_days.max(1) as i64).saturating_mul(MS_PER_DAY),
        );
        [timeout, ignore].into_iter().filter(|&t| t > now).min()
    }

    /// Whether device threat reports and app-sync traffic of this connector are refused.
    pub fn blocks_traffic(status: ConnectorStatus) -> bool {
        matches!(
            status,
            ConnectorStatus::Unavailable | ConnectorStatus::NotSetUp
        )
    }

    /// Whether the connector's data counts for compliance on `platform` now.
    pub fn counts_for_compliance(&self, platform: Platform) -> bool {
        !Self::blocks_traffic(self.published.status)
            && !self.published.compliance_ignored
            && self
                .config
                .as_ref()
                .is_some_and(|c| c.compliance_enabled(platform))
    }

    /// Whether the connector's data counts for app protection on `platform` now.
    pub fn counts_for_mam(&self, platform: Platform) -> bool {
        !Self::blocks_traffic(self.published.status)
            && !self.published.compliance_ignored
            && self
                .config
                .as_ref()
                .is_some_and(|c| c.mam_enabled(platform))
    }
}
