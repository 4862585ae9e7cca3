//! Connector settings from the admin side: a tombstone deprovisions the connector. Settings
//! older than the ones held are `STALE`, an unchanged copy is a no-op, and a heartbeat timeout
//! under 1 s or an unresponsive threshold under 1 day is `INVALID_FIELD`.

use crate::model::*;

use super::checks::not_older;
use super::{Applied, Engine, Input, Rejection};

impl Engine {
    pub(super) fn apply_connector(
        &mut self,
        input: Input<'_>,
        cfg: Option<&ConnectorConfig>,
    ) -> Applied {
        let (kt, kp) = (input.tenant, input.id);
        let partner = self.known_partner(kp)?;
        let (cause, hint) = match cfg {
            Some(c) => {
                input.check_ids(&c.tenant_id, "partner_id", &c.partner_id)?;
                at_least_one("heartbeat_timeout_seconds", c.heartbeat_timeout_seconds)?;
                at_least_one(
                    "unresponsive_threshold_days",
                    c.unresponsive_threshold_days.into(),
                )?;
                (
                    format!("connector:{kt}/{kp}@{}", c.updated_at),
                    "settings updated",
                )
            }
            None => (
                format!("connector:{kt}/{kp}@deprovisioned"),
                "connector deleted",
            ),
        };
        let mut tenants = self.tenants.write();
        let (tenant, conn) = tenants.connector_entry(kt, partner);
        match cfg {
            Some(c) => {
                if let Some(old) = &conn.config {
                    not_older("updated_at", c.updated_at, old.updated_at, "the settings")?;
                    if old == c {
                        return Ok(());
                    }
                }
                // The silence clock starts when the connector is first seen set up.
                if c.provisioned && c.setup_complete {
                    conn.set_up_since.get_or_insert(c.updated_at);
                } else {
                    conn.set_up_since = None;
                }
                conn.config = Some(c.clone());
            }
            None => {
                if conn.config.is_none() {
                    return Ok(());
                }
                conn.config = None;
                conn.set_up_since = None;
            }
        }
        drop(tenants);
        self.refresh_connector(tenant, partner, input.now, &cause, hint, input.out);
        Ok(())
    }
}

fn at_least_one(field: &str, value: i64) -> Applied {
    if value < 1 {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{field} must be at least 1, got {value}"),
        ));
    }
    Ok(())
}
