//! Device enrollments: the enrollment is authoritative for platform, management, user,
//! ownership and OS. A retirement (tombstone) drops the device's state, with a changelog
//! tombstone and no other output.

use crate::model::*;

use super::compact::OsVersion;
use super::devices::{flags, Device};
use super::reevaluate::Reevaluation;
use super::users::{self, NO_USER};
use super::{Applied, Engine, Input};

impl Engine {
    pub(super) fn apply_enrollment(&mut self, input: Input<'_>, e: &DeviceEnrollment) -> Applied {
        input.check_ids(&e.tenant_id, "device_id", &e.device_id)?;
        let (kt, kd, partition) = (input.tenant, input.id, input.partition);
        let tenant = self.intern_tenant(kt);
        let known = self.tenants.read().tables(tenant).users.find(&e.user_id);
        if known.is_none() && !e.user_id.is_empty() {
            self.tenants
                .write()
                .tables_mut(tenant)
                .users
                .intern(&e.user_id);
        }
        let tenants = self.tenants.read();
        let tables = tenants.tables(tenant);
        // An empty user id is no user.
        let user = tables.users.find(&e.user_id).unwrap_or(NO_USER);
        let mut shard = self.shards.entry(partition).or_default();
        let slot = match shard.find(tenant, kd) {
            Some(s) => s,
            None => shard.insert(Device::new(tenant, kd, e.platform, e.management)),
        };
        shard.set_platform(slot, e.platform);
        users::assign(&tables.users, &mut shard, slot, user);
        let d = shard.get_mut(slot);
        d.set(flags::ENROLLED, true);
        d.management = e.management;
        d.ownership = Some(e.ownership);
        if let Some(os) = &e.os_version {
            d.os = OsVersion::parse(os);
        }
        shard.mark_dirty(slot);
        let cause = format!("enrollment:{kt}/{kd}@{}", e.enrolled_at);
        Reevaluation {
            catalogue: &self.catalogue,
            tables,
            tenant_name: kt,
            cause: &cause,
            now: input.now,
            reasons: &mut self.reasons,
            out: input.out,
            earlier_than: None,
        }
        .device(&mut shard, slot);
        Ok(())
    }

    /// A retired device's state goes; its changelog record becomes a tombstone.
    pub(super) fn retire(&mut self, input: Input<'_>) -> Applied {
        let tenants = self.tenants.read();
        let Some(tenant) = tenants.get(input.tenant) else {
            return Ok(());
        };
        if let Some(mut shard) = self.shards.get_mut(&input.partition) {
            if let Some(slot) = shard.find(tenant, input.id) {
                let d = shard.remove(slot);
                tenants.tables(tenant).users.release(d.user);
            }
        }
        Ok(())
    }
}
