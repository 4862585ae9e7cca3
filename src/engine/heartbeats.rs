//! Connector heartbeats: each one restarts the connector's silence clock, carries its error
//! code (non-zero: `ERROR`) and may publish the minimum OS versions the partner supports.
//! Heartbeats older than the last one held are `STALE`.

use crate::model::*;

use super::checks::not_older;
use super::compact::OsVersion;
use super::{Applied, Engine, Input, Rejection};

impl Engine {
    pub(super) fn apply_heartbeat(&mut self, input: Input<'_>, h: &ConnectorHeartbeat) -> Applied {
        let (kt, kp, now) = (input.tenant, input.id, input.now);
        input.check_ids(&h.tenant_id, "partner_id", &h.partner_id)?;
        let partner = self.known_partner(kp)?;
        self.check_skew("sent_at", h.sent_at, now)?;
        let min_os = h
            .min_os_versions
            .as_ref()
            .map(min_os_versions)
            .transpose()?;
        let mut tenants = self.tenants.write();
        let (tenant, conn) = tenants.connector_entry(kt, partner);
        if let Some(last) = conn.last_heartbeat_at {
            not_older("sent_at", h.sent_at, last, "the last heartbeat")?;
        }
        conn.last_heartbeat_at = Some(h.sent_at);
        conn.error_code = h.error_code.unwrap_or(0);
        if let Some(min_os) = min_os {
            conn.min_os = min_os;
        }
        let hint = match conn.error_code {
            0 => "heartbeat received".to_owned(),
            code => format!("heartbeat reported error code {code}"),
        };
        drop(tenants);
        let cause = format!("heartbeat:{kt}/{kp}@{}", h.sent_at);
        self.refresh_connector(tenant, partner, now, &cause, &hint, input.out);
        Ok(())
    }
}

/// The published minimum OS versions by platform code; an unknown platform or a version that
/// is not a number is `INVALID_FIELD`.
fn min_os_versions(
    versions: &std::collections::BTreeMap<String, String>,
) -> Result<[OsVersion; 4], Rejection> {
    let mut min_os = [OsVersion::UNKNOWN; 4];
    for (platform, version) in versions {
        let p = Platform::parse(platform).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidField,
                format!("min_os_versions: unknown platform {platform:?}"),
            )
        })?;
        let v = OsVersion::parse(version);
        if !v.is_known() {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("min_os_versions.{platform}: {version:?} is not a version number"),
            ));
        }
        min_os[p.code() as usize] = v;
    }
    Ok(min_os)
}
