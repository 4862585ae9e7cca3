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
use super::tables::{TenantId, TenantTables, Tenants};
use super::users::{self, worst_threats, ThreatSetId, UserId, NO_USER};
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

/// A checked changelog record with what it names interned ([`Engine::restore_batch`]).
struct Prepared {
    tenant: TenantId,
    /// Adopted once for the restore itself; released when the device takes it.
    user: UserId,
    observations: SmallVec<[Observation; 4]>,
    threat_sets: SmallVec<[(PartnerIdx, ThreatSetId); 2]>,
    graces: SmallVec<[Grace; 1]>,
}

/// Writes a prepared record's device into `shard` (a device held already is overwritten).
fn install(tenants: &Tenants, shard: &mut DeviceShard, r: &DeviceStateRecord, p: Prepared) {
    let tables = tenants.tables(p.tenant);
    let slot = match shard.find(p.tenant, &r.device_id) {
        Some(s) => s,
        None => shard.insert(Device::new(
            p.tenant,
            &r.device_id,
            r.platform,
            r.management,
        )),
    };
    shard.set_platform(slot, r.platform);
    shard.set_compliance(slot, r.compliance);
    users::assign(&tables.users, shard, slot, p.user);
    // The restore's own hold on the user (see [`Prepared::user`]).
    tables.users.release(p.user);
    shard.set_observations(
        slot,
        Observations::from_sorted(&p.observations),
        &p.threat_sets,
    );
    shard.set_graces(slot, p.graces);
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
        &self,
        partition: i32,
        key: &str,
        record: Option<&DeviceStateRecord>,
    ) -> Result<(), RestoreError> {
        self.restore_batch(partition, std::iter::once((key, record)))
            .map_err(|(_, e)| e)
    }

    /// Restores changelog records of `partition` in their order, with one write lock for all
    /// their interning and then one read lock and one shard lock for all their devices: per
    /// record, the locks cost more than the rest of the restore, and partitions restored on
    /// several threads at once would fight over the write lock. Takes `&self` so those threads
    /// can share the engine; nothing else may change it meanwhile. On a bad record, returns
    /// its position with the error; the records before it are applied.
    pub fn restore_batch<'r>(
        &self,
        partition: i32,
        records: impl IntoIterator<Item = (&'r str, Option<&'r DeviceStateRecord>)> + Clone,
    ) -> Result<(), (usize, RestoreError)> {
        let mut prepared: SmallVec<[Option<Prepared>; 16]> = SmallVec::new();
        let mut failed = None;
        {
            let mut tenants = self.tenants.write();
            for (i, (key, record)) in records.clone().into_iter().enumerate() {
                match record
                    .map(|r| self.prepare(&mut tenants, key, r))
                    .transpose()
                {
                    Ok(p) => prepared.push(p),
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
        }
        // Tables before shards, the one lock order (see [`Engine`]).
        let tenants = self.tenants.read();
        let mut shard = match prepared.iter().any(Option::is_some) {
            true => self.shards.entry(partition).or_default(),
            false => match self.shards.get_mut(&partition) {
                Some(shard) => shard,
                None => return failed.map_or(Ok(()), Err),
            },
        };
        for ((key, record), p) in records.into_iter().zip(prepared) {
            match (record, p) {
                (Some(r), Some(p)) => install(&tenants, &mut shard, r, p),
                _ => {
                    let Some((t, d)) = key.split_once('/') else {
                        continue;
                    };
                    if let Some(tenant) = tenants.get(t) {
                        if let Some(slot) = shard.find(tenant, d) {
                            let gone = shard.remove_restored(slot);
                            tenants.tables(tenant).users.release(gone.user);
                        }
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Checks a record and interns what it names (its tenant, user, threat lists and grace
    /// policies) under the write lock. The user is adopted at once, so interning the next
    /// record's user cannot sweep it before its device is written.
    fn prepare(
        &self,
        tenants: &mut Tenants,
        key: &str,
        r: &DeviceStateRecord,
    ) -> Result<Prepared, RestoreError> {
        if key.split_once('/') != Some((r.tenant_id.as_str(), r.device_id.as_str())) {
            return Err(RestoreError::KeyMismatch {
                key: key.to_owned(),
                tenant: r.tenant_id.clone(),
                device: r.device_id.clone(),
            });
        }
        let mut observations: SmallVec<[Observation; 4]> = SmallVec::new();
        let mut threat_sets: SmallVec<[(PartnerIdx, ThreatSetId); 2]> = SmallVec::new();
        let tenant = tenants.intern(&r.tenant_id);
        let tables = tenants.tables_mut(tenant);
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
            if !p.threats.is_empty() {
                let worst = worst_threats(&p.threats);
                threat_sets.push((partner, tables.threat_sets.intern(&worst)));
            }
        }
        observations.sort_by_key(|o: &Observation| o.partner);
        let graces = r
            .graces
            .iter()
            .map(|g| {
                (
                    tables.policy_keys.intern(g.policy_id.as_str().into()),
                    g.failing_since,
                )
            })
            .collect();
        let user = match r.user_id.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => {
                let id = tables.users.intern(u);
                tables.users.adopt(id);
                id
            }
            None => NO_USER,
        };
        Ok(Prepared {
            tenant,
            user,
            observations,
            threat_sets,
            graces,
        })
    }

    /// Drops the state of a partition this instance no longer owns.
    pub fn drop_partition(&self, partition: i32) -> usize {
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

    /// Makes room for about `devices` more devices in `partition` before a restore of that
    /// many (a snapshot: its size is known before its devices are applied).
    pub fn reserve_devices(&self, partition: i32, devices: usize) {
        self.shards.entry(partition).or_default().reserve(devices);
    }

    /// Changelog records `partition` has waiting (see [`Engine::drain_changelog`]).
    pub fn pending_changes(&self, partition: i32) -> usize {
        self.shards.get(&partition).map_or(0, |s| s.changes())
    }

    /// Devices held for `partition`.
    pub fn partition_len(&self, partition: i32) -> usize {
        self.shards.get(&partition).map_or(0, |s| s.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::EngineSettings;
    use crate::model::{ComplianceState, Management, Ownership, Platform};

    fn record(device: &str, user: &str, partner: &str) -> DeviceStateRecord {
        DeviceStateRecord {
            tenant_id: "acme".into(),
            device_id: device.into(),
            user_id: Some(user.into()),
            platform: Platform::Android,
            management: Management::Mdm,
            ownership: Some(Ownership::Personal),
            os_version: Some("14.0".into()),
            enrolled: true,
            compliance: ComplianceState::Compliant,
            mam_blocked: false,
            mam_wipe_incident: false,
            output_seq: 3,
            partners: vec![PartnerObservation {
                partner_id: partner.into(),
                health_state: crate::model::HealthState::Secured,
                observed_at: 1_000,
                event_fingerprint: 7,
                threats: Vec::new(),
                earlier_event_fingerprints: Vec::new(),
            }],
            graces: Vec::new(),
        }
    }

    fn engine() -> Engine {
        let catalogue = Arc::new(Catalogue::builtin("public").expect("catalogue"));
        Engine::new(catalogue, EngineSettings::default())
    }

    #[test]
    fn a_batch_applies_in_order_and_stops_at_a_bad_record() {
        let e = engine();
        let (a, b, b2) = (
            record("a", "u1", "lookout"),
            record("b", "u1", "lookout"),
            record("b", "u2", "lookout"),
        );
        let bad = record("c", "u3", "no-such-partner");
        let late = record("d", "u4", "lookout");
        let batch = [
            ("acme/a", Some(&a)),
            ("acme/b", Some(&b)),
            ("acme/a", None),
            ("acme/b", Some(&b2)),
            ("acme/c", Some(&bad)),
            ("acme/d", Some(&late)),
        ];
        let err = e.restore_batch(0, batch).unwrap_err();
        assert_eq!(err.0, 4, "{err:?}");
        assert!(matches!(err.1, RestoreError::UnknownPartner { .. }));
        // Before the bad record: a removed again, b replaced by its later record.
        assert_eq!(e.device_record(0, "acme", "a"), None);
        assert_eq!(e.device_record(0, "acme", "b"), Some(b2.clone()));
        assert_eq!(
            e.device_record(0, "acme", "d"),
            None,
            "after the bad record"
        );
        // Users: u1 lost both devices and is swept by the next interning, u2 is held once,
        // and the restore's own holds are all given back.
        let tenants = e.tenants();
        let users = &tenants.tables(tenants.get("acme").unwrap()).users;
        let u2 = users.find("u2").expect("u2 held");
        assert_eq!(users.refs(u2), 1);
        assert_eq!(users.find("u1").map(|u| users.refs(u)).unwrap_or(0), 0);
        assert!(
            users.find("u3").is_none(),
            "a refused record interns no user"
        );
    }

    #[test]
    fn a_user_interned_early_in_a_batch_survives_the_later_interning() {
        let e = engine();
        let (x, y) = (record("x", "u5", "lookout"), record("y", "u6", "lookout"));
        e.restore_batch(1, [("acme/x", Some(&x)), ("acme/y", Some(&y))])
            .unwrap();
        assert_eq!(e.device_record(1, "acme", "x"), Some(x));
        assert_eq!(e.device_record(1, "acme", "y"), Some(y));
    }

    #[test]
    fn a_tombstone_only_batch_creates_no_shard() {
        let e = engine();
        e.restore_batch(5, [("acme/x", None)]).unwrap();
        assert!(e.shards().get(&5).is_none());
    }
}
