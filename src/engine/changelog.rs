//! Changelog records: conversion between in-memory [`Device`] state and the changelog's
//! [`DeviceStateRecord`], and the engine's changelog and restore entry points. The changelog
//! is the source of truth a new owner restores a partition from.

use thiserror::Error;

use smallvec::SmallVec;

use crate::catalogue::{Catalogue, PartnerIdx};
use crate::model::{DeviceStateRecord, PartnerObservation, PolicyGrace};

use super::compact::OsVersion;
use super::devices::{flags, Device, DeviceShard, Observation, Observations, Slot};
use super::evaluate::Grace;
use super::tables::TenantTables;
use super::users::{self, worst_threats, ThreatSetId, NO_USER};
use super::Engine;

/// A changelog record that cannot be restored.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("state record for {tenant}/{device} names partner {partner:?}, not in the catalogue")]
    UnknownPartner {
        tenant: String,
        device: String,
        partner: String,
    },
    #[error("state record key {key:?} does not match its payload {tenant}/{device}")]
    KeyMismatch {
        key: String,
        tenant: String,
        device: String,
    },
}

/// The changelog record of a device in slot `slot` of `shard`.
pub fn to_record(
    tenant: &str,
    tables: &TenantTables,
    device_id: &str,
    shard: &DeviceShard,
    slot: Slot,
    catalogue: &Catalogue,
) -> DeviceStateRecord {
    let d = shard.get(slot);
    DeviceStateRecord {
        tenant_id: tenant.to_owned(),
        device_id: device_id.to_owned(),
        user_id: tables.users.name(d.user),
        platform: d.platform,
        management: d.management,
        ownership: d.ownership,
        os_version: d.os.to_text(),
        enrolled: d.has(flags::ENROLLED),
        compliance: d.compliance,
        mam_blocked: d.has(flags::MAM_BLOCKED),
        mam_wipe_incident: d.has(flags::WIPE_INCIDENT),
        output_seq: d.output_seq as i64,
        partners: d
            .observations
            .iter()
            .map(|o| PartnerObservation {
                partner_id: catalogue.partner(o.partner).id.clone(),
                health_state: o.health,
                observed_at: o.observed_at(),
                event_fingerprint: o.event_fingerprint as i32,
                threats: tables.threats(shard.threats(slot, o.partner)),
                earlier_event_fingerprints: o.earlier_fingerprints().map(|f| f as i32).collect(),
            })
            .collect(),
        graces: shard
            .graces(slot)
            .iter()
            .map(|&(key, since)| PolicyGrace {
                policy_id: tables.policy_keys.resolve(key).to_string(),
                failing_since: since,
            })
            .collect(),
    }
}

impl Engine {
    /// Hands the changelog record (or `None` for a tombstone) of every device of `partition`
    /// changed since the last call, keyed `tenant/device`.
    pub fn drain_changelog(
        &self,
        partition: i32,
        mut f: impl FnMut(String, Option<DeviceStateRecord>),
    ) {
        // Tables before shards, the one lock order (see [`Engine`]).
        let tenants = self.tenants.read();
        let Some(mut shard) = self.shards.get_mut(&partition) else {
            return;
        };
        let catalogue = &self.catalogue;
        shard.drain_changes(|shard, tenant, id, slot| {
            let name = tenants.name(tenant);
            // Built by hand: `format!` grows the key in steps, and this runs per record.
            let mut key = String::with_capacity(name.len() + 1 + id.len());
            key.push_str(name);
            key.push('/');
            key.push_str(id);
            let tables = tenants.tables(tenant);
            f(
                key,
                slot.map(|s| to_record(name, tables, id, shard, s, catalogue)),
            )
        });
    }

    /// Restores one changelog record into `partition` (a later record for the same device
    /// replaces the earlier one; `None` removes the device).
    pub fn restore(
        &mut self,
        partition: i32,
        key: &str,
        record: Option<&DeviceStateRecord>,
    ) -> Result<(), RestoreError> {
        let Some(r) = record else {
            if let Some((t, d)) = key.split_once('/') {
                let tenants = self.tenants.read();
                if let (Some(tenant), Some(mut shard)) =
                    (tenants.get(t), self.shards.get_mut(&partition))
                {
                    if let Some(slot) = shard.find(tenant, d) {
                        let gone = shard.remove_restored(slot);
                        tenants.tables(tenant).users.release(gone.user);
                    }
                }
            }
            return Ok(());
        };
        if key.split_once('/') != Some((r.tenant_id.as_str(), r.device_id.as_str())) {
            return Err(RestoreError::KeyMismatch {
                key: key.to_owned(),
                tenant: r.tenant_id.clone(),
                device: r.device_id.clone(),
            });
        }
        let mut observations: SmallVec<[Observation; 4]> = SmallVec::new();
        for p in &r.partners {
            let partner = self.catalogue.index(&p.partner_id).ok_or_else(|| {
                RestoreError::UnknownPartner {
                    tenant: r.tenant_id.clone(),
                    device: r.device_id.clone(),
                    partner: p.partner_id.clone(),
                }
            })?;
            // The replay window comes back with the observation (an earlier record has none:
            // only the latest report's event is then known).
            observations.push(
                Observation::new(
                    p.observed_at,
                    p.event_fingerprint as u32,
                    partner,
                    p.health_state,
                )
                .with_earlier(p.earlier_event_fingerprints.iter().map(|&f| f as u32)),
            );
        }
        observations.sort_by_key(|o: &Observation| o.partner);
        let tenant = self.intern_tenant(&r.tenant_id);
        // The user and threat lists are interned under the write lock, the device then
        // written under the read lock, like live traffic.
        let mut threat_sets: SmallVec<[(PartnerIdx, ThreatSetId); 2]> = SmallVec::new();
        let mut graces: SmallVec<[Grace; 1]> = SmallVec::new();
        let user = {
            let mut tenants = self.tenants.write();
            let tables = tenants.tables_mut(tenant);
            for p in r.partners.iter().filter(|p| !p.threats.is_empty()) {
                let idx = self.catalogue.index(&p.partner_id).expect("checked above");
                let worst = worst_threats(&p.threats);
                threat_sets.push((idx, tables.threat_sets.intern(&worst)));
            }
            for g in &r.graces {
                graces.push((
                    tables.policy_keys.intern(g.policy_id.as_str().into()),
                    g.failing_since,
                ));
            }
            match r.user_id.as_deref().filter(|u| !u.is_empty()) {
                Some(u) => tables.users.intern(u),
                None => NO_USER,
            }
        };
        let tenants = self.tenants.read();
        let tables = tenants.tables(tenant);
        let mut shard = self.shards.entry(partition).or_default();
        let slot = match shard.find(tenant, &r.device_id) {
            Some(s) => s,
            None => shard.insert(Device::new(tenant, &r.device_id, r.platform, r.management)),
        };
        shard.set_platform(slot, r.platform);
        shard.set_compliance(slot, r.compliance);
        users::assign(&tables.users, &mut shard, slot, user);
        shard.set_observations(slot, Observations::from_sorted(&observations), &threat_sets);
        shard.set_graces(slot, graces);
        let d = shard.get_mut(slot);
        d.output_seq = r.output_seq as u32;
        d.os = r
            .os_version
            .as_deref()
            .map_or(OsVersion::UNKNOWN, OsVersion::parse);
        d.management = r.management;
        d.ownership = r.ownership;
        d.flags = 0;
        d.set(flags::ENROLLED, r.enrolled);
        d.set(flags::MAM_BLOCKED, r.mam_blocked);
        d.set(flags::WIPE_INCIDENT, r.mam_wipe_incident);
        Ok(())
    }

    /// Drops the state of a partition this instance no longer owns.
    pub fn drop_partition(&mut self, partition: i32) -> usize {
        let Some((_, shard)) = self.shards.remove(&partition) else {
            return 0;
        };
        let mut tenants = self.tenants.write();
        for (_, d) in shard.iter() {
            tenants.tables(d.tenant).users.release(d.user);
        }
        for t in 0..tenants.len() as u32 {
            tenants.tables_mut(t).users.sweep();
        }
        shard.len()
    }

    /// The changelog record of one device, if held.
    pub fn device_record(
        &self,
        partition: i32,
        tenant: &str,
        device: &str,
    ) -> Option<DeviceStateRecord> {
        let tenants = self.tenants.read();
        let t = tenants.get(tenant)?;
        let shard = self.shards.get(&partition)?;
        let slot = shard.find(t, device)?;
        Some(to_record(
            tenant,
            tenants.tables(t),
            device,
            &shard,
            slot,
            &self.catalogue,
        ))
    }
}

impl Engine {
    /// Hands the changelog record of every device of `partition`, keyed `tenant/device`, in
    /// slot order: the image a partition snapshot holds. Changes not yet drained are
    /// included, so call it when none are pending (right after a commit) for an image equal
    /// to the committed changelog.
    pub fn partition_records(&self, partition: i32, mut f: impl FnMut(&str, &DeviceStateRecord)) {
        // Tables before shards, the one lock order (see [`Engine`]).
        let tenants = self.tenants.read();
        let Some(shard) = self.shards.get(&partition) else {
            return;
        };
        let catalogue = &self.catalogue;
        let mut key = String::new();
        for (slot, d) in shard.iter() {
            let name = tenants.name(d.tenant);
            let tables = tenants.tables(d.tenant);
            d.id.with_str(|id| {
                key.clear();
                key.push_str(name);
                key.push('/');
                key.push_str(id);
                f(&key, &to_record(name, tables, id, &shard, slot, catalogue));
            });
        }
    }

    /// Devices held for `partition`.
    pub fn partition_len(&self, partition: i32) -> usize {
        self.shards.get(&partition).map_or(0, |s| s.len())
    }
}
