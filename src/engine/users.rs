//! Per-tenant users and their group memberships, with small interners for group ids, group sets
//! and threat sets.
//!
//! A device names its user by a 4-byte [`UserId`] instead of holding the user id text, and a
//! user's groups are one interned [`SetId`]: a fleet's users are in the same few group
//! combinations, and the devices of one user share one entry. An entry lives while a device
//! references it or a membership record names it; [`Users::sweep`] frees the rest.

use std::borrow::Borrow;
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

/// Values interned once and named by a dense `u32`, each stored once (the index holds ids).
#[derive(Debug)]
pub struct Interner<T> {
    items: Vec<T>,
    index: HashTable<u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            items: Vec::new(),
            index: HashTable::new(),
        }
    }
}

/// Hashes for the interners' indexes: one hasher state for the process (hashes are never
/// written anywhere).
fn hash_of<Q: Hash + ?Sized>(q: &Q) -> u64 {
    use std::hash::BuildHasher;
    static STATE: std::sync::OnceLock<hashbrown::DefaultHashBuilder> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default).hash_one(q)
}

impl<T: Hash + Eq> Interner<T> {
    /// The id of `value`, if interned.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, value: &Q) -> Option<u32>
    where
        T: Borrow<Q>,
    {
        let items = &self.items;
        self.index
            .find(hash_of(value), |&i| items[i as usize].borrow() == value)
            .copied()
    }

    /// The id of `value`, interning it on first sight.
    pub fn intern(&mut self, value: T) -> u32 {
        if let Some(id) = self.get(&value) {
            return id;
        }
        let id = self.items.len() as u32;
        let items = &self.items;
        self.index
            .insert_unique(hash_of(&value), id, |&i| hash_of(&items[i as usize]));
        self.items.push(value);
        id
    }

    pub fn resolve(&self, id: u32) -> &T {
        &self.items[id as usize]
    }

    /// Heap bytes held, with `heap` giving what one value owns besides itself.
    pub fn approx_bytes(&self, heap: impl Fn(&T) -> usize) -> usize {
        self.items.capacity() * std::mem::size_of::<T>()
            + self.index.capacity() * 5
            + self.items.iter().map(heap).sum::<usize>()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Short lists (group sets, threat lists) interned in one flat arena: a list costs its
/// elements, one end offset and an index slot, with no allocation of its own.
#[derive(Debug)]
pub struct ListInterner<T> {
    data: Vec<T>,
    /// End of list `i` in `data`; list 0 is the empty list.
    ends: Vec<u32>,
    index: HashTable<u32>,
}

impl<T: Copy + Hash + Eq> Default for ListInterner<T> {
    fn default() -> Self {
        let mut l = ListInterner {
            data: Vec::new(),
            ends: Vec::new(),
            index: HashTable::new(),
        };
        l.intern(&[]);
        l
    }
}

impl<T: Copy + Hash + Eq> ListInterner<T> {
    pub fn get(&self, list: &[T]) -> Option<u32> {
        self.index
            .find(hash_of(list), |&i| self.resolve(i) == list)
            .copied()
    }

    /// The id of `list`, interning it on first sight.
    pub fn intern(&mut self, list: &[T]) -> u32 {
        if let Some(id) = self.get(list) {
            return id;
        }
        let id = self.ends.len() as u32;
        grow(&mut self.data, list.len());
        self.data.extend_from_slice(list);
        grow(&mut self.ends, 1);
        self.ends.push(self.data.len() as u32);
        let (data, ends) = (&self.data, &self.ends);
        self.index.insert_unique(hash_of(list), id, |&i| {
            let start = if i == 0 { 0 } else { ends[i as usize - 1] };
            hash_of(&data[start as usize..ends[i as usize] as usize])
        });
        id
    }

    pub fn resolve(&self, id: u32) -> &[T] {
        let Some(&end) = self.ends.get(id as usize) else {
            return &[];
        };
        let start = if id == 0 {
            0
        } else {
            self.ends[id as usize - 1]
        };
        &self.data[start as usize..end as usize]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn approx_bytes(&self) -> usize {
        self.data.capacity() * std::mem::size_of::<T>()
            + self.ends.capacity() * 4
            + self.index.capacity() * 5
    }
}

/// Reserves room for `more` elements in steps of a quarter of the length, not by doubling:
/// per-tenant tables of millions of rows then waste at most a fifth instead of half.
fn grow<T>(v: &mut Vec<T>, more: usize) {
    if v.capacity() - v.len() < more {
        v.reserve_exact(more.max(v.len() / 4).max(16));
    }
}

/// The threat lists of one tenant: each distinct threat once, lists of up to 3 threat ids.
#[derive(Debug, Default)]
pub struct ThreatLists {
    threats: Interner<Threat>,
    lists: ListInterner<u32>,
}

impl ThreatLists {
    /// The id of the list `threats`, if interned.
    pub fn get(&self, threats: &[Threat]) -> Option<ThreatSetId> {
        let mut ids = smallvec::SmallVec::<[u32; 3]>::new();
        for t in threats {
            ids.push(self.threats.get(t)?);
        }
        self.lists.get(&ids)
    }

    /// The id of the list `threats`, interning it (and its threats) on first sight.
    pub fn intern(&mut self, threats: &[Threat]) -> ThreatSetId {
        let ids: smallvec::SmallVec<[u32; 3]> = threats
            .iter()
            .map(|t| self.threats.intern(t.clone()))
            .collect();
        self.lists.intern(&ids)
    }

    /// The threats of list `id` (empty for an unknown id).
    pub fn resolve(&self, id: ThreatSetId) -> Vec<Threat> {
        self.lists
            .resolve(id)
            .iter()
            .map(|&t| self.threats.resolve(t).clone())
            .collect()
    }

    /// Lists interned.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Distinct threats interned.
    pub fn threats(&self) -> usize {
        self.threats.len()
    }

    /// Heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.lists.approx_bytes()
            + self
                .threats
                .approx_bytes(|t| t.category.capacity() + t.name.capacity())
    }
}

/// How a user id is stored: a UUID as 16 bytes, a short id inline, a long one on the heap.
const FREE: u8 = 0;
const UUID_LOWER: u8 = 1;
const UUID_UPPER: u8 = 2;
const LONG: u8 = 3;
/// `SHORT + len`: up to 16 bytes inline.
const SHORT: u8 = 4;

const NO_MEMBERSHIP: i64 = i64::MIN;

/// Bytes per user in the [`Users`] columns (kind, name, groups, membership time, devices).
pub const USER_COLUMN_BYTES: usize = 1 + 16 + 4 + 8 + 4;

/// The users of one tenant, one column per field (33 bytes per user plus the index): a fleet
/// has about as many users as devices, and each one is held here once.
#[derive(Debug, Default)]
pub struct Users {
    index: HashTable<UserId>,
    kinds: Vec<u8>,
    names: Vec<[u8; 16]>,
    long: HashMap<UserId, Box<str>>,
    /// Each user's group set (the empty set without a membership record).
    groups: Vec<SetId>,
    /// `updated_at` of the membership record held, or [`NO_MEMBERSHIP`].
    membership_at: Vec<i64>,
    /// Devices of this instance that name the user (changed under the tables' read lock).
    refs: Vec<AtomicU32>,
    free: Vec<UserId>,
    /// Users that may have become unused (no device, no membership), freed by [`Self::sweep`]
    /// under the write lock.
    unused: Mutex<Vec<UserId>>,
}

fn hash_name(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

impl Users {
    fn live(&self, id: UserId) -> bool {
        self.kinds.get(id as usize).is_some_and(|&k| k != FREE)
    }

    /// Calls `f` with the user's name, formatted on the stack for UUIDs.
    fn with_name<R>(&self, id: UserId, f: impl FnOnce(&str) -> R) -> R {
        let i = id as usize;
        match self.kinds[i] {
            UUID_LOWER | UUID_UPPER => {
                let c = CompactStr::Uuid {
                    upper: self.kinds[i] == UUID_UPPER,
                    bytes: self.names[i],
                };
                c.with_str(f)
            }
            LONG => f(self.long.get(&id).map_or("", |s| s)),
            k => {
                let len = (k - SHORT) as usize;
                f(std::str::from_utf8(&self.names[i][..len]).unwrap_or_default())
            }
        }
    }

    fn name_is(&self, id: UserId, name: &str) -> bool {
        let i = id as usize;
        match self.kinds[i] {
            FREE => false,
            UUID_LOWER | UUID_UPPER => CompactStr::Uuid {
                upper: self.kinds[i] == UUID_UPPER,
                bytes: self.names[i],
            }
            .eq_str(name),
            LONG => self.long.get(&id).is_some_and(|s| &**s == name),
            k => &self.names[i][..(k - SHORT) as usize] == name.as_bytes(),
        }
    }

    /// The id of user `name`, if known.
    pub fn find(&self, name: &str) -> Option<UserId> {
        self.index
            .find(hash_name(name), |&id| self.name_is(id, name))
            .copied()
    }

    /// The id of user `name`, creating a user without devices or membership on first sight
    /// (freed by the next sweep unless a device or membership takes it). Users left unused
    /// since the last call are swept first, so a caller adopts what it interned before it
    /// interns again (the engine interns at most one user per input).
    pub fn intern(&mut self, name: &str) -> UserId {
        if let Some(id) = self.find(name) {
            return id;
        }
        self.sweep();
        let (kind, bytes) = match CompactStr::new(name) {
            CompactStr::Uuid { upper, bytes } => {
                (if upper { UUID_UPPER } else { UUID_LOWER }, bytes)
            }
            _ if name.len() <= 16 => {
                let mut b = [0u8; 16];
                b[..name.len()].copy_from_slice(name.as_bytes());
                (SHORT + name.len() as u8, b)
            }
            _ => (LONG, [0u8; 16]),
        };
        let id = match self.free.pop() {
            Some(id) => {
                let i = id as usize;
                self.kinds[i] = kind;
                self.names[i] = bytes;
                self.groups[i] = EMPTY_SET;
                self.membership_at[i] = NO_MEMBERSHIP;
                self.refs[i] = AtomicU32::new(0);
                id
            }
            None => {
                grow(&mut self.kinds, 1);
                grow(&mut self.names, 1);
                grow(&mut self.groups, 1);
                grow(&mut self.membership_at, 1);
                grow(&mut self.refs, 1);
                self.kinds.push(kind);
                self.names.push(bytes);
                self.groups.push(EMPTY_SET);
                self.membership_at.push(NO_MEMBERSHIP);
                self.refs.push(AtomicU32::new(0));
                (self.kinds.len() - 1) as UserId
            }
        };
        if kind == LONG {
            self.long.insert(id, name.into());
        }
        let mut index = std::mem::take(&mut self.index);
        index.insert_unique(hash_name(name), id, |&i| self.with_name(i, hash_name));
        self.index = index;
        self.unused.get_mut().push(id);
        id
    }

    /// The user's group set; the empty set for [`NO_USER`] or an unknown id.
    pub fn groups(&self, id: UserId) -> SetId {
        match self.live(id) {
            true => self.groups[id as usize],
            false => EMPTY_SET,
        }
    }

    /// `updated_at` of the user's membership record, if one is held.
    pub fn membership_at(&self, id: UserId) -> Option<i64> {
        let at = *self.membership_at.get(id as usize)?;
        (self.live(id) && at != NO_MEMBERSHIP).then_some(at)
    }

    /// Whether `id` names a user.
    pub fn contains(&self, id: UserId) -> bool {
        self.live(id)
    }

    /// The user's name, for outputs.
    pub fn name(&self, id: UserId) -> Option<String> {
        self.live(id).then(|| self.with_name(id, str::to_owned))
    }

    /// Devices held that name the user.
    pub fn refs(&self, id: UserId) -> u32 {
        match self.live(id) {
            true => self.refs[id as usize].load(Ordering::Relaxed),
            false => 0,
        }
    }

    /// Sets or clears (`None`) the user's membership.
    pub fn set_membership(&mut self, id: UserId, groups: SetId, at: Option<i64>) {
        if !self.live(id) {
            return;
        }
        self.groups[id as usize] = groups;
        self.membership_at[id as usize] = at.unwrap_or(NO_MEMBERSHIP);
        if at.is_none() && self.refs(id) == 0 {
            self.unused.get_mut().push(id);
        }
    }

    /// A device now names the user.
    pub fn adopt(&self, id: UserId) {
        if self.live(id) {
            self.refs[id as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A device no longer names the user.
    pub fn release(&self, id: UserId) {
        if self.live(id)
            && self.refs[id as usize].fetch_sub(1, Ordering::Relaxed) == 1
            && self.membership_at(id).is_none()
        {
            self.unused.lock().push(id);
        }
    }

    /// Frees the users no device and no membership names.
    pub fn sweep(&mut self) {
        let unused = std::mem::take(self.unused.get_mut());
        for id in unused {
            if !self.live(id) || self.refs(id) != 0 || self.membership_at(id).is_some() {
                continue;
            }
            let hash = self.with_name(id, hash_name);
            if let Ok(found) = self.index.find_entry(hash, |&i| i == id) {
                found.remove();
            }
            self.kinds[id as usize] = FREE;
            self.long.remove(&id);
            self.free.push(id);
        }
    }

    /// Users held.
    pub fn len(&self) -> usize {
        self.kinds.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.index.capacity() * (std::mem::size_of::<UserId>() + 1)
            + self.kinds.capacity() * USER_COLUMN_BYTES
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
        assert_eq!(u.name(c).as_deref(), Some("carol"));
        u.adopt(c);
        // UUIDs (either case), short and long names all round-trip.
        for name in [
            "6f1c2b9e-3d4a-4b5c-8d7e-9f0a1b2c3d4e",
            "6F1C2B9E-3D4A-4B5C-8D7E-9F0A1B2C3D4E",
            "exactly16bytes!!",
            "a-user-name-longer-than-sixteen-bytes@example.com",
        ] {
            let id = u.intern(name);
            u.adopt(id);
            assert_eq!(u.find(name), Some(id), "{name}");
            assert_eq!(u.name(id).as_deref(), Some(name));
        }
    }

    #[test]
    fn lists_are_interned_once() {
        let mut l: ListInterner<u32> = ListInterner::default();
        assert_eq!(l.get(&[]), Some(0));
        let a = l.intern(&[1, 2, 3]);
        let b = l.intern(&[4]);
        assert_eq!(l.intern(&[1, 2, 3]), a);
        assert_eq!(l.resolve(a), &[1, 2, 3]);
        assert_eq!(l.resolve(b), &[4]);
        assert_eq!(l.len(), 3);
        let mut t = ThreatLists::default();
        let threat = |n: &str| Threat {
            category: "c".into(),
            name: n.into(),
            severity: ThreatSeverity::High,
        };
        let x = t.intern(&[threat("a"), threat("b")]);
        assert_eq!(t.get(&[threat("a"), threat("b")]), Some(x));
        assert_eq!(t.get(&[threat("b"), threat("a")]), None);
        assert_eq!(t.resolve(x), vec![threat("a"), threat("b")]);
        assert_eq!(t.threats(), 2);
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
