//! Re-evaluation and what it publishes: one device after an input changed it, every affected
//! device of a tenant after a table change (fan-out), every device of a partition after
//! restore (reconcile). Only a real change is published: a new compliance state, or an app
//! protection action; reasons alone never emit.

use crate::catalogue::Catalogue;
use crate::model::*;

use super::devices::{flags, DeviceShard, Slot};
use super::evaluate::{evaluate_app_protection, evaluate_compliance, next_deadline, ReasonNote};
use super::ids;
use super::tables::{TenantId, TenantTables};
use super::users::UserId;
use super::{Engine, Output};

/// Everything re-evaluating devices of one tenant needs, for one cause at one instant.
pub(super) struct Reevaluation<'a> {
    pub catalogue: &'a Catalogue,
    pub tables: &'a TenantTables,
    pub tenant_name: &'a str,
    /// The `cause_event_id` of what is published (an event id, or `policy:...`, `timer:...`).
    pub cause: &'a str,
    pub now: i64,
    /// Scratch space for a verdict's reasons.
    pub reasons: &'a mut Vec<ReasonNote>,
    pub out: &'a mut Vec<Output>,
    /// When to schedule the device's next deadline: `None` always; `Some(before)` only when it
    /// is earlier than `before`, the deadline before the input (a later one is found when the
    /// pending earlier entry fires).
    pub earlier_than: Option<Option<i64>>,
}

impl Reevaluation<'_> {
    /// Re-evaluates one device and publishes what really changed.
    pub fn device(&mut self, shard: &mut DeviceShard, slot: Slot) {
        match shard.get(slot).management {
            Management::Mdm => self.compliance(shard, slot),
            Management::Mam => self.app_protection(shard, slot),
        }
        self.reschedule(shard, slot);
    }

    /// Schedules the device's next deadline (grace end, report expiry), if it has one.
    fn reschedule(&mut self, shard: &mut DeviceShard, slot: Slot) {
        let device = shard.get(slot);
        let view = self.tables.view(device.platform, device.user);
        let Some(at) = next_deadline(view, device, shard.graces(slot), self.now) else {
            return;
        };
        let due = match self.earlier_than {
            None | Some(None) => true,
            Some(Some(before)) => at < before,
        };
        if due {
            shard.schedule(slot, at);
        }
    }

    /// Enrolled devices: a compliance change when the state differs from the one held.
    fn compliance(&mut self, shard: &mut DeviceShard, slot: Slot) {
        let device = shard.get(slot);
        let view = self.tables.view(device.platform, device.user);
        let held = shard.graces(slot);
        let verdict = evaluate_compliance(view, device, held, self.now, None);
        if verdict.graces.as_slice() != held {
            // Graces are device state: they go to the changelog with the device.
            shard.set_graces(slot, verdict.graces.clone());
            shard.mark_dirty(slot);
        }
        let device = shard.get(slot);
        if verdict.state == device.compliance {
            return;
        }
        // Reasons only for a verdict that is published: the common case costs no strings.
        self.reasons.clear();
        evaluate_compliance(view, device, &verdict.graces, self.now, Some(self.reasons));
        let device_id = device.id.as_string();
        let change = ComplianceChange {
            change_id: ids::output_id(
                "compliance",
                self.tenant_name,
                &device_id,
                device.output_seq,
                self.cause,
            ),
            tenant_id: self.tenant_name.to_owned(),
            device_id,
            user_id: self.tables.users.name(device.user),
            platform: device.platform,
            previous: device.compliance,
            current: verdict.state,
            reasons: self
                .reasons
                .drain(..)
                .map(|r| Reason {
                    partner_id: self.catalogue.partner(r.partner).id.clone(),
                    threats: match r.code {
                        ReasonCode::LevelExceedsPolicy => {
                            self.tables.threats(shard.threats(slot, r.partner))
                        }
                        _ => Vec::new(),
                    },
                    code: r.code,
                    detail: r.detail,
                })
                .collect(),
            worst_level: verdict.worst_level,
            evaluated_at: self.now,
            cause_event_id: self.cause.to_owned(),
            grace_ends_at: verdict.grace_ends_at,
        };
        shard.set_compliance(slot, verdict.state);
        let d = shard.get_mut(slot);
        d.output_seq = d.output_seq.wrapping_add(1);
        shard.mark_dirty(slot);
        self.out.push(Output::Compliance(change));
    }

    /// Unenrolled (MAM) devices: block, unblock and wipe actions as app protection decides.
    fn app_protection(&mut self, shard: &mut DeviceShard, slot: Slot) {
        if !shard.graces(slot).is_empty() {
            // Managed by app protection now: its compliance failures no longer run.
            shard.set_graces(slot, Default::default());
            shard.mark_dirty(slot);
        }
        let device = shard.get(slot);
        let view = self.tables.view(device.platform, device.user);
        let decision = evaluate_app_protection(view, device, self.now);
        let before = (
            device.has(flags::MAM_BLOCKED),
            device.has(flags::WIPE_INCIDENT),
        );
        if decision.actions.is_empty() && before == (decision.blocked, decision.wipe_incident) {
            return;
        }
        let device_id = device.id.as_string();
        let user = self.tables.users.name(device.user);
        let mut seq = device.output_seq;
        for a in &decision.actions {
            let policy = a.policy.map(|i| &view.app_policies[i]);
            self.out.push(Output::AppAction(AppProtectionAction {
                action_id: ids::output_id(
                    "app-action",
                    self.tenant_name,
                    &device_id,
                    seq,
                    self.cause,
                ),
                tenant_id: self.tenant_name.to_owned(),
                device_id: device_id.clone(),
                user_id: user.clone(),
                platform: device.platform,
                partner_id: a
                    .partner
                    .map(|p| self.catalogue.partner(p).id.clone())
                    .unwrap_or_default(),
                action: a.action,
                level: a.level,
                max_allowed_level: policy.map(|p| p.limit),
                policy_id: policy.map(|p| p.policy_id.clone()).unwrap_or_default(),
                issued_at: self.now,
                cause_event_id: self.cause.to_owned(),
                threats: a
                    .partner
                    .map(|p| self.tables.threats(shard.threats(slot, p)))
                    .unwrap_or_default(),
            }));
            seq = seq.wrapping_add(1);
        }
        let d = shard.get_mut(slot);
        d.output_seq = seq;
        d.set(flags::MAM_BLOCKED, decision.blocked);
        d.set(flags::WIPE_INCIDENT, decision.wipe_incident);
        shard.mark_dirty(slot);
    }
}

impl Engine {
    /// Rebuilds a tenant's views and re-evaluates, in every shard, the tenant's devices whose
    /// view changed: on a changed platform, those whose user's group set got another view.
    /// Other tenants and unaffected devices are never evaluated.
    pub(super) fn fan_out(
        &mut self,
        tenant: TenantId,
        now: i64,
        cause: &str,
        out: &mut Vec<Output>,
    ) {
        let mut tenants = self.tenants.write();
        tenants.tables_mut(tenant).users.sweep();
        let changed = tenants.tables_mut(tenant).rebuild_views(&self.catalogue);
        if changed.iter().all(Option::is_none) {
            return;
        }
        // Readers may look again while the devices are re-evaluated.
        let tenants = parking_lot::RwLockWriteGuard::downgrade(tenants);
        let tables = tenants.tables(tenant);
        let partitions = partitions(&self.shards);
        let mut run = Reevaluation {
            catalogue: &self.catalogue,
            tables,
            tenant_name: tenants.name(tenant),
            cause,
            now,
            reasons: &mut self.reasons,
            out,
            earlier_than: None,
        };
        for &partition in &partitions {
            let Some(mut shard) = self.shards.get_mut(&partition) else {
                continue;
            };
            for &platform in Platform::ALL {
                let Some(sets) = &changed[platform.code() as usize] else {
                    continue;
                };
                let slots: Vec<Slot> = shard
                    .on_platform(tenant, platform)
                    .iter()
                    .copied()
                    .filter(|&slot| {
                        let set = tables.users.groups(shard.get(slot).user);
                        sets.get(set as usize).copied().unwrap_or(true)
                    })
                    .collect();
                for slot in slots {
                    run.device(&mut shard, slot);
                }
            }
        }
    }

    /// Re-evaluates the devices of one user of `tenant` in every shard (after a membership
    /// change), through the shards' user index.
    pub(super) fn reevaluate_user(
        &mut self,
        tenant: TenantId,
        user: UserId,
        now: i64,
        cause: &str,
        out: &mut Vec<Output>,
    ) {
        let tenants = self.tenants.read();
        let partitions = partitions(&self.shards);
        let mut run = Reevaluation {
            catalogue: &self.catalogue,
            tables: tenants.tables(tenant),
            tenant_name: tenants.name(tenant),
            cause,
            now,
            reasons: &mut self.reasons,
            out,
            earlier_than: None,
        };
        for &partition in &partitions {
            let Some(mut shard) = self.shards.get_mut(&partition) else {
                continue;
            };
            for slot in shard.devices_of_user(tenant, user) {
                run.device(&mut shard, slot);
            }
        }
    }

    /// Re-evaluates every device of `partition` against the current tables, e.g. after its
    /// state was restored: tables may have changed while no instance owned the partition.
    pub fn reconcile(&mut self, partition: i32, now: i64, out: &mut Vec<Output>) {
        let tenants = self.tenants.read();
        let Some(mut shard) = self.shards.get_mut(&partition) else {
            return;
        };
        let slots: Vec<(Slot, TenantId)> = shard.iter().map(|(s, d)| (s, d.tenant)).collect();
        let cause = format!("reconcile:{partition}@{now}");
        for (slot, tenant) in slots {
            Reevaluation {
                catalogue: &self.catalogue,
                tables: tenants.tables(tenant),
                tenant_name: tenants.name(tenant),
                cause: &cause,
                now,
                reasons: &mut self.reasons,
                out,
                earlier_than: None,
            }
            .device(&mut shard, slot);
        }
    }
}

/// The partitions held, in order (outputs follow a fixed order).
fn partitions(shards: &dashmap::DashMap<i32, DeviceShard>) -> Vec<i32> {
    let mut partitions: Vec<i32> = shards.iter().map(|s| *s.key()).collect();
    partitions.sort_unstable();
    partitions
}
