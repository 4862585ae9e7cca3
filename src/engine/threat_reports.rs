//! Device threat reports: the latest report of each partner decides its view of a device. A
//! report whose `event_id` is one of the partner's last [`REPLAY_WINDOW`] applied for the
//! device is `DUPLICATE` whatever its `observed_at` (a redelivery, a replay, a gateway that
//! re-stamps a retry); otherwise one older than the latest is `STALE`. The duplicate check
//! comes first: a replayed older report was applied, which `STALE` ("never applied, something
//! newer is held") would hide. MDM reports of an app-protection-only partner, reports for a
//! blocked connector and reports naming another platform than the enrollment are refused. The
//! report's worst threats (at most 3) are kept with the observation, interned per tenant.

use crate::model::*;

use super::checks::{connector_accepts, not_older};
use super::compact::OsVersion;
use super::devices::{flags, Device, Observation, REPLAY_WINDOW};
use super::evaluate::next_deadline;
use super::reevaluate::Reevaluation;
use super::users::{self, NO_THREATS, NO_USER};
use super::{ids, Applied, Engine, Input, Rejection};

impl Engine {
    pub(super) fn apply_threat(&mut self, input: Input<'_>, r: &DeviceThreatReport) -> Applied {
        input.check_ids(&r.tenant_id, "device_id", &r.device_id)?;
        let (kt, kd, now) = (input.tenant, input.id, input.now);
        if r.event_id.is_empty() {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "event_id is empty",
            ));
        }
        let partner = self.partner_for(&r.partner_id, r.platform)?;
        if r.management == Management::Mdm && !self.catalogue.partner(partner).compliance {
            return Err(Rejection::new(
                RejectReason::UnsupportedPlatform,
                format!(
                    "{} data is used for app protection only; management MDM is not supported",
                    r.partner_id
                ),
            ));
        }
        self.check_skew("observed_at", r.observed_at, now)?;
        // An observation keeps 48 bits of milliseconds (about 4,460 years either side of 1970).
        if !(Observation::MIN_OBSERVED_AT..=Observation::MAX_OBSERVED_AT).contains(&r.observed_at) {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!(
                    "observed_at {} is out of range ({} to {} ms)",
                    r.observed_at,
                    Observation::MIN_OBSERVED_AT,
                    Observation::MAX_OBSERVED_AT
                ),
            ));
        }
        let worst = users::worst_threats(&r.threats);
        let mut tenants = self.tenants.read();
        let tenant = tenants.get(kt).ok_or_else(|| {
            Rejection::new(
                RejectReason::ConnectorUnavailable,
                format!("connector {kt}/{} is not configured", r.partner_id),
            )
        })?;
        let status = tenants
            .tables(tenant)
            .connectors
            .get(&partner)
            .map(|c| c.published.status)
            .unwrap_or(ConnectorStatus::Unavailable);
        connector_accepts(status, kt, &r.partner_id)?;
        // A user or threat list the tenant has not seen is interned under the write lock; the
        // usual report finds both and never takes it. Only one writer (this engine) exists, so
        // nothing else changes between the two guards.
        let user = r.user_id.as_deref().filter(|u| !u.is_empty());
        let tables = tenants.tables(tenant);
        let need_user = user.is_some_and(|u| tables.users.find(u).is_none());
        let need_threats = !worst.is_empty() && tables.threat_sets.get(&worst[..]).is_none();
        if need_user || need_threats {
            drop(tenants);
            let mut writer = self.tenants.write();
            let tables = writer.tables_mut(tenant);
            if let (true, Some(u)) = (need_user, user) {
                tables.users.intern(u);
            }
            if need_threats {
                tables.threat_sets.intern(&worst);
            }
            drop(writer);
            tenants = self.tenants.read();
        }
        let tables = tenants.tables(tenant);
        let fingerprint = ids::event_fingerprint(&r.event_id);
        let threat_set = match worst.is_empty() {
            true => NO_THREATS,
            false => tables.threat_sets.get(&worst[..]).unwrap_or(NO_THREATS),
        };
        let mut shard = self.shards.entry(input.partition).or_default();
        let slot = match shard.find(tenant, kd) {
            Some(slot) => {
                let d = shard.get(slot);
                if d.has(flags::ENROLLED) && d.platform != r.platform {
                    return Err(Rejection::new(
                        RejectReason::InvalidField,
                        format!(
                            "platform {} differs from the enrolled platform {}",
                            r.platform, d.platform
                        ),
                    ));
                }
                if let Some(o) = d.observation(partner) {
                    if o.applied(fingerprint) {
                        return Err(Rejection::new(
                            RejectReason::Duplicate,
                            format!(
                                "event {} was already applied (one of the last {REPLAY_WINDOW} \
                                 reports of {} for the device)",
                                r.event_id, r.partner_id
                            ),
                        ));
                    }
                    not_older("observed_at", r.observed_at, o.observed_at(), "the report")?;
                }
                slot
            }
            None => shard.insert(Device::new(tenant, kd, r.platform, r.management)),
        };
        // The deadline before this report: a later one after it needs no new entry.
        let before = {
            let d = shard.get(slot);
            next_deadline(tables.view(d.platform, d.user), d, shard.graces(slot), now)
        };
        shard.observe(
            slot,
            Observation::new(r.observed_at, fingerprint, partner, r.health_state),
            threat_set,
        );
        // The enrollment is authoritative; until there is one the report describes the device.
        if !shard.get(slot).has(flags::ENROLLED) {
            if let Some(u) = user {
                let user = tables.users.find(u).unwrap_or(NO_USER);
                users::assign(&tables.users, &mut shard, slot, user);
            }
            let d = shard.get_mut(slot);
            d.management = r.management;
            if let Some(os) = &r.os_version {
                d.os = OsVersion::parse(os);
            }
            if r.ownership.is_some() {
                d.ownership = r.ownership;
            }
            shard.set_platform(slot, r.platform);
        }
        shard.mark_dirty(slot);
        Reevaluation {
            catalogue: &self.catalogue,
            tables,
            tenant_name: kt,
            cause: &r.event_id,
            now,
            reasons: &mut self.reasons,
            out: input.out,
            earlier_than: Some(before),
        }
        .device(&mut shard, slot);
        Ok(())
    }
}
