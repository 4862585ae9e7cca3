//! Group memberships from the directory side (contract 1.1): which groups a user is in, so
//! which policies apply to the user's devices. A change re-evaluates that user's devices only,
//! found through the shards' user index; a tombstone puts the user in no group. A record older
//! than the one held is `STALE`, an empty group id `INVALID_FIELD`.

use crate::model::*;

use super::checks::not_older;
use super::users::{GroupId, EMPTY_SET};
use super::{Applied, Engine, Input, Rejection};

impl Engine {
    pub(super) fn apply_membership(
        &mut self,
        input: Input<'_>,
        m: Option<&GroupMembership>,
    ) -> Applied {
        let (kt, ku) = (input.tenant, input.id);
        if let Some(m) = m {
            input.check_ids(&m.tenant_id, "user_id", &m.user_id)?;
            if let Some(i) = m.groups.iter().position(String::is_empty) {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!("groups[{i}] is empty"),
                ));
            }
        }
        let mut tenants = self.tenants.write();
        let tenant = tenants.intern(kt);
        let tables = tenants.tables_mut(tenant);
        let user = match (m, tables.users.find(ku)) {
            (_, Some(u)) => u,
            (Some(_), None) => tables.users.intern(ku),
            // A tombstone for a user never seen: nothing changes.
            (None, None) => return Ok(()),
        };
        let (before, held_at) = (tables.users.groups(user), tables.users.membership_at(user));
        let cause = match m {
            Some(m) => {
                if let Some(old) = held_at {
                    not_older("updated_at", m.updated_at, old, "the membership")?;
                }
                let mut ids: Vec<GroupId> = m
                    .groups
                    .iter()
                    .map(|g| tables.groups.intern(g.as_str().into()))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                let known = tables.group_sets.len();
                let set = tables.group_sets.intern(&ids);
                if tables.group_sets.len() > known {
                    tables.scope_new_set(&self.catalogue, set);
                }
                tables.users.set_membership(user, set, Some(m.updated_at));
                format!("membership:{kt}/{ku}@{}", m.updated_at)
            }
            None => {
                if held_at.is_none() {
                    return Ok(());
                }
                tables.users.set_membership(user, EMPTY_SET, None);
                format!("membership:{kt}/{ku}@deleted")
            }
        };
        let after = tables.users.groups(user);
        let same_views = Platform::ALL.iter().all(|&p| {
            let scopes = tables.scopes(p);
            scopes.view(before) == scopes.view(after)
        });
        tables.users.sweep();
        drop(tenants);
        if !same_views {
            self.reevaluate_user(tenant, user, input.now, &cause, input.out);
        }
        Ok(())
    }
}
