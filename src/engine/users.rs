//! Per-tenant users and their group memberships, with small interners for group ids, group sets
//! and threat sets.
//!
//! A device names its user by a 4-byte [`UserId`] instead of holding the user id text, and a
//! user's groups are one interned [`SetId`]: a fleet's users are in the same few group
//! combinations, and the devices of one user share one entry. An entry lives while a device
//! references it or a membership record names it; [`Users::sweep`] frees the rest.

use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::{HashMap, HashTable};
use parking_lot::Mutex;

use crate::model::Threat;

use super::compact::CompactStr;
use super::devices::{DeviceShard, Slot};

/// Interned user of one tenant.
pub type UserId = u32;
/// A device without a user.
pub const NO_USER: UserId = u32::MAX;
/// Interned group id of one tenant.
pub type GroupId = u32;
/// Interned, sorted set of groups of one tenant; [`EMPTY_SET`] is the empty set.
pub type SetId = u32;
/// The empty group set: a user without a membership record, or a device without a user.
pub const EMPTY_SET: SetId = 0;
/// Interned list of threats (worst first, at most 3) of one tenant; [`NO_THREATS`] is empty.
pub type ThreatSetId = u32;
/// The empty threat list.
pub const NO_THREATS: ThreatSetId = 0;

/// Values interned once and named by a dense `u32`; id 0 is `T::default()` when `with_default`.
#[derive(Debug)]
pub struct Interner<T: Hash + Eq + ?Sized> {
    items: Vec<Box<T>>,
    ids: HashMap<Box<T>, u32>,
}

impl<T: Hash + Eq + ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            items: Vec::new(),
            ids: HashMap::new(),
        }
    }
}

impl<T: Hash + Eq + ?Sized> Interner<T>
where
    Box<T>: Clone,
{
    /// An interner whose id 0 is `first`.
    pub fn starting_with(first: Box<T>) -> Self {
        let mut i = Interner::default();
        i.intern_boxed(first);
        i
    }

    pub fn get(&self, value: &T) -> Option<u32> {
        self.ids.get(value).copied()
    }

    pub fn intern_boxed(&mut self, value: Box<T>) -> u32 {
        if let Some(&id) = self.ids.get(&*value) {
            return id;
        }
        let id = self.items.len() as u32;
        self.ids.insert(value.clone(), id);
        self.items.push(value);
        id
    }

    pub fn resolve(&self, id: u32) -> &T {
        &self.items[id as usize]
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One user of a tenant.
#[derive(Debug)]
pub struct UserEntry {
    pub name: CompactStr,
    /// The user's groups (the empty set without a membership record).
    pub groups: SetId,
    /// `updated_at` of the membership record held, or `None` without one.
    membership_at: i64,
    /// Devices of this instance that name the user (changed under the tables' read lock).
    refs: AtomicU32,
}

const NO_MEMBERSHIP: i64 = i64::MIN;

impl UserEntry {
    /// `updated_at` of the membership record held.
    pub fn membership_at(&self) -> Option<i64> {
        (self.membership_at != NO_MEMBERSHIP).then_some(self.membership_at)
    }

    /// Devices held that name this user.
    pub fn refs(&self) -> u32 {
        self.refs.load(Ordering::Relaxed)
    }
}

/// The users of one tenant.
#[derive(Debug, Default)]
pub struct Users {
    index: HashTable<UserId>,
    entries: Vec<Option<UserEntry>>,
    free: Vec<UserId>,
    /// Entries that may have become unused (no device, no membership), freed by [`Self::sweep`]
    /// under the write lock.
    unused: Mutex<Vec<UserId>>,
}

fn hash_name(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

impl Users {
    /// The id of user `name`, if known.
    pub fn find(&self, name: &str) -> Option<UserId> {
        let entries = &self.entries;
        self.index
            .find(hash_name(name), |&id| {
                entries[id as usize]
                    .as_ref()
                    .is_some_and(|e| e.name.eq_str(name))
            })
            .copied()
    }

    /// The id of user `name`, creating an entry without devices or membership on first sight
    /// (freed by the next sweep unless a device or membership takes it). Entries left unused
    /// since the last call are swept first, so a caller adopts what it interned before it
    /// interns again (the engine interns at most one user per input).
    pub fn intern(&mut self, name: &str) -> UserId {
        if let Some(id) = self.find(name) {
            return id;
        }
        self.sweep();
        let entry = UserEntry {
            name: CompactStr::new(name),
            groups: EMPTY_SET,
            membership_at: NO_MEMBERSHIP,
            refs: AtomicU32::new(0),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as UserId
            }
        };
        let entries = &self.entries;
        self.index.insert_unique(hash_name(name), id, |&i| {
            entries[i as usize]
                .as_ref()
                .map_or(0, |e| e.name.with_str(hash_name))
        });
        self.unused.get_mut().push(id);
        id
    }

    pub fn get(&self, id: UserId) -> Option<&UserEntry> {
        self.entries.get(id as usize).and_then(Option::as_ref)
    }

    /// The user's group set; the empty set for [`NO_USER`].
    pub fn groups(&self, id: UserId) -> SetId {
        self.get(id).map_or(EMPTY_SET, |e| e.groups)
    }

    /// The user's name, for outputs.
    pub fn name(&self, id: UserId) -> Option<String> {
        self.get(id).map(|e| e.name.as_string())
    }

    /// Sets or clears (`None`) the user's membership.
    pub fn set_membership(&mut self, id: UserId, groups: SetId, at: Option<i64>) {
        if let Some(Some(e)) = self.entries.get_mut(id as usize) {
            e.groups = groups;
            e.membership_at = at.unwrap_or(NO_MEMBERSHIP);
            if at.is_none() && e.refs() == 0 {
                self.unused.get_mut().push(id);
            }
        }
    }

    /// A device now names the user.
    pub fn adopt(&self, id: UserId) {
        if let Some(e) = self.get(id) {
            e.refs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A device no longer names the user.
    pub fn release(&self, id: UserId) {
        if let Some(e) = self.get(id) {
            if e.refs.fetch_sub(1, Ordering::Relaxed) == 1 && e.membership_at().is_none() {
                self.unused.lock().push(id);
            }
        }
    }

    /// Frees the entries no device and no membership names.
    pub fn sweep(&mut self) {
        let unused = std::mem::take(self.unused.get_mut());
        for id in unused {
            let Some(Some(e)) = self.entries.get(id as usize) else {
                continue;
            };
            if e.refs() != 0 || e.membership_at().is_some() {
                continue;
            }
            let hash = e.name.with_str(hash_name);
            if let Ok(found) = self.index.find_entry(hash, |&i| i == id) {
                found.remove();
            }
            self.entries[id as usize] = None;
            self.free.push(id);
        }
    }

    /// Users held.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every user with a membership record, for explanations and tests.
    pub fn iter(&self) -> impl Iterator<Item = (UserId, &UserEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i as UserId, e)))
    }

    /// Heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.index.capacity() * (std::mem::size_of::<UserId>() + 1)
            + self.entries.capacity() * std::mem::size_of::<Option<UserEntry>>()
            + self.free.capacity() * 4
    }
}

/// Points a device at `user`, keeping the user table's device counts and the shard's user
/// index.
pub fn assign(users: &Users, shard: &mut DeviceShard, slot: Slot, user: UserId) {
    let old = shard.get(slot).user;
    if old == user {
        return;
    }
    users.adopt(user);
    users.release(old);
    shard.set_user(slot, user);
}

/// The worst threats of a report, at most 3, worst severity first (report order among equals).
pub fn worst_threats(threats: &[Threat]) -> Vec<Threat> {
    let mut v: Vec<&Threat> = threats.iter().collect();
    v.sort_by_key(|t| std::cmp::Reverse(t.severity.rank()));
    v.into_iter().take(3).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ThreatSeverity;

    #[test]
    fn users_are_freed_when_unused() {
        let mut u = Users::default();
        let a = u.intern("alice");
        u.adopt(a);
        let b = u.intern("bob");
        u.set_membership(b, 3, Some(10));
        u.sweep();
        assert_eq!(u.len(), 2, "referenced or with a membership: kept");
        u.release(a);
        u.set_membership(b, EMPTY_SET, None);
        u.sweep();
        assert_eq!(u.len(), 0);
        assert_eq!(u.find("alice"), None);
        let c = u.intern("carol");
        assert!(c == a || c == b, "ids are reused");
        assert_eq!(u.find("carol"), Some(c));
    }

    #[test]
    fn worst_three_first() {
        let t = |name: &str, severity| Threat {
            category: "c".into(),
            name: name.into(),
            severity,
        };
        let got = worst_threats(&[
            t("a", ThreatSeverity::Low),
            t("b", ThreatSeverity::Critical),
            t("c", ThreatSeverity::Medium),
            t("d", ThreatSeverity::Critical),
        ]);
        let names: Vec<_> = got.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "d", "c"]);
    }
}
