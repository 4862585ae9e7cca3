//! Connector deadlines: heartbeat timeouts and unresponsive thresholds are wall-clock instants
//! kept in one ordered set, fired by [`Engine::advance`]. Refreshing a connector re-derives
//! its status, publishes a change, moves its deadline and re-evaluates the devices whose view
//! changed.

use crate::catalogue::PartnerIdx;
use crate::model::ConnectorStatusChange;

use super::connector::status_reason;
use super::reevaluate::Reevaluation;
use super::tables::TenantId;
use super::{Engine, Output};

impl Engine {
    /// Fires every deadline at or before `now` in time order, each at its own instant, so the
    /// outputs do not depend on how the clock got to `now` (one jump or many steps).
    pub(super) fn fire_deadlines(&mut self, now: i64, out: &mut Vec<Output>) {
        loop {
            let connector = self.timers.first().map(|t| t.0).filter(|&t| t <= now);
            let device = self.first_device_deadline().filter(|&t| t <= now);
            match (connector, device) {
                (None, None) => break,
                (Some(c), Some(d)) if d < c => self.fire_device_deadlines(d, out),
                (Some(c), _) => self.fire_connector_deadlines(c, out),
                (None, Some(d)) => self.fire_device_deadlines(d, out),
            }
        }
    }

    /// The first pending device deadline of any shard.
    pub(super) fn first_device_deadline(&self) -> Option<i64> {
        self.shards.iter().filter_map(|s| s.first_deadline()).min()
    }

    /// Re-evaluates, at `at`, the devices scheduled for that second (grace ends, report
    /// expiries), in partition order; stale entries re-derive the deadline and publish nothing.
    fn fire_device_deadlines(&mut self, at: i64, out: &mut Vec<Output>) {
        let tenants = self.tenants.read();
        let cause = format!("timer:device-deadline@{at}");
        let mut partitions: Vec<i32> = self.shards.iter().map(|s| *s.key()).collect();
        partitions.sort_unstable();
        for partition in partitions {
            let Some(mut shard) = self.shards.get_mut(&partition) else {
                continue;
            };
            for slot in shard.take_due(at) {
                let Some(tenant) = shard.try_get(slot).map(|d| d.tenant) else {
                    continue;
                };
                Reevaluation {
                    catalogue: &self.catalogue,
                    tables: tenants.tables(tenant),
                    tenant_name: tenants.name(tenant),
                    cause: &cause,
                    now: at,
                    reasons: &mut self.reasons,
                    out: &mut *out,
                    earlier_than: None,
                }
                .device(&mut shard, slot);
            }
        }
    }

    /// Fires every connector deadline at or before `now`, each at its own instant.
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
            self.refresh_connector(tenant, partner, at, &cause, "deadline reached", out);
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
