//! Connector deadlines: heartbeat timeouts and unresponsive thresholds are wall-clock instants
//! kept in one ordered set, fired by [`Engine::advance`]. Refreshing a connector re-derives
//! its status, publishes a change, moves its deadline and re-evaluates the devices whose view
//! changed.

use crate::catalogue::PartnerIdx;
use crate::model::ConnectorStatusChange;

use super::connector::status_reason;
use super::tables::TenantId;
use super::{Engine, Output};

impl Engine {
    /// Fires every connector deadline at or before `now`.
    pub(super) fn fire_connector_deadlines(&mut self, now: i64, out: &mut Vec<Output>) {
        while let Some(&(at, tenant, partner)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let cause = {
                let mut tenants = self.tenants.write();
                if let Some(c) = tenants.tables_mut(tenant).connectors.get_mut(&partner) {
                    if c.scheduled == Some(at) {
                        c.scheduled = None;
                    }
                }
                format!(
                    "timer:{}/{}@{at}",
                    tenants.name(tenant),
                    self.catalogue.partner(partner).id
                )
            };
            self.refresh_connector(tenant, partner, now, &cause, "deadline reached", out);
        }
    }

    /// Re-derives a connector's status, publishes a change, reschedules its deadline and
    /// re-evaluates the devices whose view changed.
    pub(super) fn refresh_connector(
        &mut self,
        tenant: TenantId,
        partner: PartnerIdx,
        now: i64,
        cause: &str,
        hint: &str,
        out: &mut Vec<Output>,
    ) {
        let mut tenants = self.tenants.write();
        let tenant_name = tenants.name(tenant).to_owned();
        let catalogue = &self.catalogue;
        let Some(conn) = tenants.tables_mut(tenant).connectors.get_mut(&partner) else {
            return;
        };
        let new = conn.derive(partner, catalogue, now);
        let old = conn.published;
        if new != old {
            conn.published = new;
            out.push(Output::ConnectorStatus(ConnectorStatusChange {
                tenant_id: tenant_name,
                partner_id: catalogue.partner(partner).id.clone(),
                previous: old.status,
                current: new.status,
                compliance_ignored: new.compliance_ignored,
                last_heartbeat_at: conn.last_heartbeat_at,
                changed_at: now,
                reason: status_reason(conn, old, new, hint, catalogue, partner),
            }));
        }
        let next = conn.next_deadline(now);
        let prev = conn.scheduled;
        if prev != next {
            conn.scheduled = next;
            if let Some(at) = prev {
                self.timers.remove(&(at, tenant, partner));
            }
            if let Some(at) = next {
                self.timers.insert((at, tenant, partner));
            }
        }
        drop(tenants);
        self.fan_out(tenant, now, cause, out);
    }
}
