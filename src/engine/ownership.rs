//! Who publishes what. Every instance reads every table and derives every connector's status,
//! so exactly one must speak for each: the owner of the device partition a record key
//! `tenant/partner` hashes to publishes that connector's status changes, and the owner of the
//! device partition numbered like a table record's partition publishes its rejection. When an
//! instance takes over partitions it publishes what changed while nobody spoke.

use std::collections::{BTreeSet, HashMap};

use crate::model::{ConnectorStatus, ConnectorStatusChange};

use super::partitioner::partition_for;
use super::{Engine, Output};

/// The device partitions this instance owns, out of how many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOwnership {
    device_partitions: i32,
    owned: BTreeSet<i32>,
}

/// The last status published per connector (tenant, partner), as read back from the status
/// topic: (status, compliance ignored).
pub type PublishedStatuses = HashMap<(String, String), (ConnectorStatus, bool)>;

/// Key prefix of the connector status records kept in the device-state changelog: the status
/// last published for a connector, written to its owner partition in the same transaction as
/// the publication, so a new owner restores exactly what was committed (a status change is
/// then published exactly once across ownership moves). Device keys are `tenant/device` and
/// never start with this control character.
pub const STATUS_KEY_PREFIX: &str = "\u{1}connector-status/";

/// The changelog key of connector `tenant/partner`'s published status.
pub fn status_key(tenant: &str, partner: &str) -> String {
    format!("{STATUS_KEY_PREFIX}{tenant}/{partner}")
}

/// Whether a changelog key holds a connector status rather than a device.
pub fn is_status_key(key: &[u8]) -> bool {
    key.starts_with(STATUS_KEY_PREFIX.as_bytes())
}

impl PartitionOwnership {
    pub fn new(device_partitions: i32) -> Self {
        PartitionOwnership {
            device_partitions: device_partitions.max(1),
            owned: BTreeSet::new(),
        }
    }

    /// Replaces the owned partitions; returns the ones newly owned, in order.
    pub fn assign(&mut self, owned: impl IntoIterator<Item = i32>) -> Vec<i32> {
        let owned: BTreeSet<i32> = owned.into_iter().collect();
        let new = owned.difference(&self.owned).copied().collect();
        self.owned = owned;
        new
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.owned.contains(&partition)
    }

    pub fn owned(&self) -> impl Iterator<Item = i32> + '_ {
        self.owned.iter().copied()
    }

    /// The device partition whose owner publishes a connector's status changes.
    pub fn connector_partition(&self, tenant: &str, partner: &str) -> i32 {
        let mut key = String::with_capacity(tenant.len() + 1 + partner.len());
        key.push_str(tenant);
        key.push('/');
        key.push_str(partner);
        partition_for(key.as_bytes(), self.device_partitions)
    }

    /// Whether this instance publishes the status changes of a connector.
    pub fn publishes_status(&self, tenant: &str, partner: &str) -> bool {
        self.owns(self.connector_partition(tenant, partner))
    }

    /// Whether this instance publishes the rejection of a record of a table topic's
    /// `partition` (table topics need not have as many partitions as the device topics).
    pub fn publishes_table_rejection(&self, partition: i32) -> bool {
        self.owns(partition.rem_euclid(self.device_partitions))
    }
}

impl Engine {
    /// The status changes of connectors that this instance speaks for from `newly_owned` on and
    /// whose status differs from the last one published (read back from the status topic):
    /// they changed while no instance published them.
    pub fn unpublished_statuses(
        &self,
        ownership: &PartitionOwnership,
        newly_owned: &[i32],
        published: &PublishedStatuses,
        now: i64,
        out: &mut Vec<Output>,
    ) {
        let tenants = self.tenants.read();
        for t in 0..tenants.len() as u32 {
            let tenant = tenants.name(t);
            for (&p, c) in &tenants.tables(t).connectors {
                let partner = &self.catalogue.partner(p).id;
                if !newly_owned.contains(&ownership.connector_partition(tenant, partner)) {
                    continue;
                }
                let (previous, was_ignored) = published
                    .get(&(tenant.to_owned(), partner.clone()))
                    .copied()
                    .unwrap_or((ConnectorStatus::Unavailable, false));
                let now_published = c.published;
                if (previous, was_ignored)
                    == (now_published.status, now_published.compliance_ignored)
                {
                    continue;
                }
                out.push(Output::ConnectorStatus(ConnectorStatusChange {
                    tenant_id: tenant.to_owned(),
                    partner_id: partner.clone(),
                    previous,
                    current: now_published.status,
                    compliance_ignored: now_published.compliance_ignored,
                    last_heartbeat_at: c.last_heartbeat_at,
                    changed_at: now,
                    reason: "status changed while no instance published it".into(),
                }));
            }
        }
    }

    /// How many connectors this instance speaks for are in each status.
    pub fn owned_connector_counts(
        &self,
        ownership: &PartitionOwnership,
    ) -> Vec<(ConnectorStatus, usize)> {
        let tenants = self.tenants.read();
        let mut by_status: Vec<(ConnectorStatus, usize)> =
            ConnectorStatus::ALL.iter().map(|&s| (s, 0)).collect();
        for t in 0..tenants.len() as u32 {
            for (&p, c) in &tenants.tables(t).connectors {
                let partner = &self.catalogue.partner(p).id;
                if ownership.publishes_status(tenants.name(t), partner) {
                    by_status[c.published.status.code() as usize].1 += 1;
                }
            }
        }
        by_status
    }
}
