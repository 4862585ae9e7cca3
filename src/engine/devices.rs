//! Per-partition device state: a compact slab of [`Device`] records, a hash index from
//! (tenant, device id) to slab slot, an index from (tenant, platform) to slots for fan-out, an
//! index from (tenant, user) to slots for membership changes, and the threat lists of the
//! observations that carry threats (a side table: most observations carry none).
//!
//! The slab grows in fixed chunks and the hash index holds 4-byte slots only, so memory stays
//! close to `size_of::<Device>()` per device instead of doubling with every table resize.

use std::collections::HashMap;

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::catalogue::PartnerIdx;
use crate::model::{ComplianceState, HealthState, Management, Ownership, Platform};

use super::compact::{CompactStr, OsVersion};
use super::deadlines::Deadlines;
use super::evaluate::Grace;
use super::tables::TenantId;
use super::users::{ThreatSetId, UserId, NO_THREATS, NO_USER};

const CHUNK: usize = 4096;

const _: () = assert!(
    REPLAY_WINDOW >= 2,
    "the latest report and at least one before it"
);

/// How many applied reports of one (device, partner) have their event id remembered, so that a
/// replay of one of them is `DUPLICATE` whatever its `observed_at`: the latest and the one
/// before it. Two is what the 16-byte [`Observation`] holds (a third fingerprint would make it
/// 24 bytes: +8 B per slab slot and +16 B per two-partner allocation). A gateway that re-stamps
/// a retry sends it before the partner's next report for the device (seconds against minutes
/// or hours), so the report before the latest already covers a retry that crossed a new report.
pub const REPLAY_WINDOW: usize = 2;

/// What one partner last reported for a device, and the fingerprints (32-bit xxh3,
/// [`super::ids::event_fingerprint`]) of the event ids of its last [`REPLAY_WINDOW`] applied
/// reports.
///
/// 16 bytes: `observed_at` is kept in 48 bits (signed milliseconds, about 4,460 years either
/// side of 1970: [`Self::MIN_OBSERVED_AT`] to [`Self::MAX_OBSERVED_AT`]), which leaves room for
/// the earlier fingerprint in the bytes an `i64` field would pad.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    at_low: u32,
    at_high: i16,
    pub partner: PartnerIdx,
    pub health: HealthState,
    /// Fingerprint of the latest applied report's `event_id`.
    pub event_fingerprint: u32,
    /// Fingerprints of the reports applied before it, newest first; 0 is an empty place.
    earlier: [u32; REPLAY_WINDOW - 1],
}

impl Observation {
    /// The earliest `observed_at` an observation holds.
    pub const MIN_OBSERVED_AT: i64 = -(1 << 47);
    /// The latest `observed_at` an observation holds.
    pub const MAX_OBSERVED_AT: i64 = (1 << 47) - 1;

    /// An observation with nothing earlier in its replay window. `observed_at` is clamped to
    /// [`Self::MIN_OBSERVED_AT`]..=[`Self::MAX_OBSERVED_AT`] (reports outside are refused before).
    pub fn new(
        observed_at: i64,
        event_fingerprint: u32,
        partner: PartnerIdx,
        health: HealthState,
    ) -> Self {
        let at = observed_at.clamp(Self::MIN_OBSERVED_AT, Self::MAX_OBSERVED_AT);
        Observation {
            at_low: at as u32,
            at_high: (at >> 32) as i16,
            partner,
            health,
            event_fingerprint,
            earlier: [0; REPLAY_WINDOW - 1],
        }
    }

    /// Event time of the latest applied report, epoch milliseconds.
    pub fn observed_at(&self) -> i64 {
        ((self.at_high as i64) << 32) | self.at_low as i64
    }

    /// The same observation with `earlier` (newest first; zeros and any beyond the window are
    /// dropped) as the fingerprints of the reports applied before the latest (restore).
    pub fn with_earlier(mut self, earlier: impl IntoIterator<Item = u32>) -> Self {
        self.earlier = [0; REPLAY_WINDOW - 1];
        for (place, f) in self
            .earlier
            .iter_mut()
            .zip(earlier.into_iter().filter(|&f| f != 0))
        {
            *place = f;
        }
        self
    }

    /// Fingerprints of the reports applied before the latest, newest first.
    pub fn earlier_fingerprints(&self) -> impl Iterator<Item = u32> + '_ {
        self.earlier.iter().copied().filter(|&f| f != 0)
    }

    /// Whether a report with this event fingerprint is one of the last [`REPLAY_WINDOW`]
    /// applied (a replay, whatever its `observed_at`).
    pub fn applied(&self, event_fingerprint: u32) -> bool {
        self.event_fingerprint == event_fingerprint
            || self.earlier_fingerprints().any(|f| f == event_fingerprint)
    }

    /// `next`, the partner's newly applied report, with this one's event moved into its
    /// replay window (the oldest falls out).
    fn followed_by(&self, mut next: Observation) -> Observation {
        next.earlier = [0; REPLAY_WINDOW - 1];
        next.earlier[0] = self.event_fingerprint;
        next.earlier[1..].copy_from_slice(&self.earlier[..REPLAY_WINDOW - 2]);
        next
    }
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation")
            .field("observed_at", &self.observed_at())
            .field("event_fingerprint", &self.event_fingerprint)
            .field("earlier", &self.earlier)
            .field("partner", &self.partner)
            .field("health", &self.health)
            .finish()
    }
}

/// A device's observations, one per partner, sorted by partner: one inline in 16 bytes (the
/// enum's tag lives in the health state's spare values), two in one 32-byte allocation, more
/// in a vector. A `SmallVec` with one inline slot takes 24 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Observations {
    #[default]
    Empty,
    One(Observation),
    Two(Box<[Observation; 2]>),
    More(Box<Vec<Observation>>),
}

impl Observations {
    /// Observations already sorted by partner, one per partner.
    pub fn from_sorted(list: &[Observation]) -> Self {
        match list {
            [] => Observations::Empty,
            [o] => Observations::One(*o),
            [a, b] => Observations::Two(Box::new([*a, *b])),
            more => Observations::More(Box::new(more.to_vec())),
        }
    }

    pub fn as_slice(&self) -> &[Observation] {
        match self {
            Observations::Empty => &[],
            Observations::One(o) => std::slice::from_ref(o),
            Observations::Two(b) => &b[..],
            Observations::More(v) => v,
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Observation> {
        self.as_slice().iter()
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Replaces the partner's observation, or adds it in partner order.
    pub fn upsert(&mut self, obs: Observation) {
        let slot = match self {
            Observations::Empty => None,
            Observations::One(o) => Some(std::slice::from_mut(o)),
            Observations::Two(b) => Some(&mut b[..]),
            Observations::More(v) => Some(&mut v[..]),
        }
        .and_then(|all| all.iter_mut().find(|o| o.partner == obs.partner));
        if let Some(slot) = slot {
            *slot = obs;
            return;
        }
        let mut all: SmallVec<[Observation; 4]> = self.iter().copied().collect();
        all.push(obs);
        all.sort_by_key(|o| o.partner);
        *self = Observations::from_sorted(&all);
    }
}

/// Flag bits of [`Device::flags`].
pub mod flags {
    pub const ENROLLED: u8 = 1;
    pub const MAM_BLOCKED: u8 = 2;
    pub const WIPE_INCIDENT: u8 = 4;
    pub const DIRTY: u8 = 8;
}

/// One device's state (about 100 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub tenant: TenantId,
    pub output_seq: u32,
    pub id: CompactStr,
    /// The device's user in its tenant's user table, or [`NO_USER`].
    pub user: UserId,
    pub os: OsVersion,
    pub observations: Observations,
    /// Position in the (tenant, platform) fan-out list.
    index_pos: u32,
    pub platform: Platform,
    pub management: Management,
    pub ownership: Option<Ownership>,
    pub compliance: ComplianceState,
    pub flags: u8,
}

impl Device {
    pub fn new(tenant: TenantId, id: &str, platform: Platform, management: Management) -> Self {
        Device {
            tenant,
            output_seq: 0,
            id: CompactStr::new(id),
            user: NO_USER,
            os: OsVersion::UNKNOWN,
            observations: Observations::Empty,
            index_pos: 0,
            platform,
            management,
            ownership: None,
            compliance: ComplianceState::Unknown,
            flags: 0,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag
        } else {
            self.flags &= !flag
        }
    }

    /// The latest observation of `partner`.
    pub fn observation(&self, partner: PartnerIdx) -> Option<&Observation> {
        self.observations.iter().find(|o| o.partner == partner)
    }

    /// Records a newly applied report's observation, replacing the partner's previous one,
    /// whose event moves into the new one's replay window.
    pub fn observe(&mut self, obs: Observation) {
        let obs = match self.observation(obs.partner) {
            Some(previous) => previous.followed_by(obs),
            None => obs,
        };
        self.observations.upsert(obs);
    }
}

/// Slot of a device in its shard.
pub type Slot = u32;

/// The devices of one partition.
#[derive(Default)]
pub struct DeviceShard {
    index: HashTable<Slot>,
    chunks: Vec<Vec<Option<Device>>>,
    free: Vec<Slot>,
    by_platform: HashMap<(TenantId, Platform), Vec<Slot>>,
    /// Slots of devices with a user, hashed by (tenant, user): several per user.
    by_user: HashTable<Slot>,
    /// Threat lists of observations that carry threats.
    threats: hashbrown::HashMap<(Slot, PartnerIdx), ThreatSetId>,
    /// Graces running, for the devices that have one.
    graces: hashbrown::HashMap<Slot, SmallVec<[Grace; 1]>>,
    /// Pending device deadlines by second (the instant rounded up). An entry may be stale
    /// (the device's deadline moved later, or it is gone): the engine re-derives the deadline
    /// from the device state when it fires.
    deadlines: Deadlines,
    dirty: Vec<Slot>,
    retired: Vec<(TenantId, String)>,
    len: usize,
    noncompliant: usize,
}

fn hash_key(tenant: TenantId, id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), tenant as u64)
}

fn hash_user(tenant: TenantId, user: UserId) -> u64 {
    (((tenant as u64) << 32) | user as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl DeviceShard {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device in `slot`, if the slot is in use.
    pub fn try_get(&self, slot: Slot) -> Option<&Device> {
        self.chunks
            .get(slot as usize / CHUNK)?
            .get(slot as usize % CHUNK)?
            .as_ref()
    }

    pub fn get(&self, slot: Slot) -> &Device {
        self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
            .as_ref()
            .expect("slot in use")
    }

    pub fn get_mut(&mut self, slot: Slot) -> &mut Device {
        self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
            .as_mut()
            .expect("slot in use")
    }

    /// Finds a device.
    pub fn find(&self, tenant: TenantId, id: &str) -> Option<Slot> {
        let chunks = &self.chunks;
        self.index
            .find(hash_key(tenant, id), |&slot| {
                let d = chunks[slot as usize / CHUNK][slot as usize % CHUNK]
                    .as_ref()
                    .expect("indexed slot in use");
                d.tenant == tenant && d.id.eq_str(id)
            })
            .copied()
    }

    /// Makes room in the device index for `additional` more devices at once: growing it
    /// step by step rehashes every device id held at each step, which a restore of a large
    /// snapshot showed as a tenth of its time.
    pub fn reserve(&mut self, additional: usize) {
        let chunks = &self.chunks;
        self.index.reserve(additional, |&s| {
            let d = chunks[s as usize / CHUNK][s as usize % CHUNK]
                .as_ref()
                .expect("indexed slot in use");
            d.id.with_str(|id| hash_key(d.tenant, id))
        });
    }

    /// Inserts a new device (the caller checked it is absent) and returns its slot.
    pub fn insert(&mut self, mut device: Device) -> Slot {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self
                    .chunks
                    .last()
                    .map_or(0, |c| (self.chunks.len() - 1) * CHUNK + c.len());
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                self.chunks.last_mut().expect("chunk").push(None);
                s as Slot
            }
        };
        let list = self
            .by_platform
            .entry((device.tenant, device.platform))
            .or_default();
        device.index_pos = list.len() as u32;
        list.push(slot);
        let hash = device.id.with_str(|id| hash_key(device.tenant, id));
        self.chunks[slot as usize / CHUNK][slot as usize % CHUNK] = Some(device);
        let chunks = &self.chunks;
        self.index.insert_unique(hash, slot, |&s| {
            let d = chunks[s as usize / CHUNK][s as usize % CHUNK]
                .as_ref()
                .expect("indexed slot in use");
            d.id.with_str(|id| hash_key(d.tenant, id))
        });
        self.len += 1;
        slot
    }

    /// Sets a device's user, keeping the user index (the caller keeps the user table's counts).
    pub fn set_user(&mut self, slot: Slot, user: UserId) {
        let (tenant, old) = {
            let d = self.get(slot);
            (d.tenant, d.user)
        };
        if old == user {
            return;
        }
        if old != NO_USER {
            if let Ok(e) = self
                .by_user
                .find_entry(hash_user(tenant, old), |&s| s == slot)
            {
                e.remove();
            }
        }
        self.get_mut(slot).user = user;
        if user != NO_USER {
            let chunks = &self.chunks;
            self.by_user
                .insert_unique(hash_user(tenant, user), slot, |&s| {
                    let d = chunks[s as usize / CHUNK][s as usize % CHUNK]
                        .as_ref()
                        .expect("indexed slot in use");
                    hash_user(d.tenant, d.user)
                });
        }
    }

    /// Slots of the devices of `user` in `tenant`.
    pub fn devices_of_user(&self, tenant: TenantId, user: UserId) -> Vec<Slot> {
        let chunks = &self.chunks;
        self.by_user
            .iter_hash(hash_user(tenant, user))
            .copied()
            .filter(|&s| {
                chunks[s as usize / CHUNK][s as usize % CHUNK]
                    .as_ref()
                    .is_some_and(|d| d.tenant == tenant && d.user == user)
            })
            .collect()
    }

    /// The threat list of `partner`'s latest observation of the device.
    pub fn threats(&self, slot: Slot, partner: PartnerIdx) -> ThreatSetId {
        self.threats
            .get(&(slot, partner))
            .copied()
            .unwrap_or(NO_THREATS)
    }

    /// Records a newly applied report's observation and its threat list, replacing the
    /// partner's previous one (see [`Device::observe`]).
    pub fn observe(&mut self, slot: Slot, obs: Observation, threats: ThreatSetId) {
        if threats == NO_THREATS {
            self.threats.remove(&(slot, obs.partner));
        } else {
            self.threats.insert((slot, obs.partner), threats);
        }
        self.get_mut(slot).observe(obs);
    }

    /// The graces running for a device.
    pub fn graces(&self, slot: Slot) -> &[Grace] {
        self.graces.get(&slot).map_or(&[], |g| g.as_slice())
    }

    /// Replaces the graces running for a device.
    pub fn set_graces(&mut self, slot: Slot, graces: SmallVec<[Grace; 1]>) {
        if graces.is_empty() {
            self.graces.remove(&slot);
        } else {
            self.graces.insert(slot, graces);
        }
    }

    /// Devices with a grace running.
    pub fn in_grace(&self) -> usize {
        self.graces.len()
    }

    /// Schedules a re-evaluation of the device at `at` (rounded up to the second).
    pub fn schedule(&mut self, slot: Slot, at: i64) {
        let second = (at.max(0) as u64).div_ceil(1000).min(u32::MAX as u64);
        self.deadlines.schedule(second as u32, slot);
    }

    /// The first pending deadline, in milliseconds.
    pub fn first_deadline(&self) -> Option<i64> {
        self.deadlines.first_second().map(|s| s as i64 * 1000)
    }

    /// Removes and returns the slots scheduled for the second of `at` (a value from
    /// [`Self::first_deadline`]).
    pub fn take_due(&mut self, at: i64) -> Vec<Slot> {
        self.deadlines
            .take((at / 1000).clamp(0, u32::MAX as i64) as u32)
    }

    /// Pending deadline entries (some may be stale).
    pub fn scheduled(&self) -> usize {
        self.deadlines.len()
    }

    /// Replaces a device's observations and their threat lists (restore).
    pub fn set_observations(
        &mut self,
        slot: Slot,
        observations: Observations,
        threats: &[(PartnerIdx, ThreatSetId)],
    ) {
        let old: SmallVec<[PartnerIdx; 4]> = self
            .get(slot)
            .observations
            .iter()
            .map(|o| o.partner)
            .collect();
        for p in old {
            self.threats.remove(&(slot, p));
        }
        for &(p, set) in threats {
            if set != NO_THREATS && observations.iter().any(|o| o.partner == p) {
                self.threats.insert((slot, p), set);
            }
        }
        self.get_mut(slot).observations = observations;
    }

    /// Sets a device's compliance state, keeping the noncompliant count.
    pub fn set_compliance(&mut self, slot: Slot, state: ComplianceState) {
        let d = self.get_mut(slot);
        let was = d.compliance == ComplianceState::Noncompliant;
        d.compliance = state;
        let is = state == ComplianceState::Noncompliant;
        match (was, is) {
            (false, true) => self.noncompliant += 1,
            (true, false) => self.noncompliant -= 1,
            _ => {}
        }
    }

    /// Devices currently noncompliant.
    pub fn noncompliant(&self) -> usize {
        self.noncompliant
    }

    /// Moves a device to another platform's fan-out list.
    pub fn set_platform(&mut self, slot: Slot, platform: Platform) {
        let (tenant, old) = {
            let d = self.get(slot);
            (d.tenant, d.platform)
        };
        if old == platform {
            return;
        }
        self.unlink(slot);
        let list = self.by_platform.entry((tenant, platform)).or_default();
        let pos = list.len() as u32;
        list.push(slot);
        let d = self.get_mut(slot);
        d.platform = platform;
        d.index_pos = pos;
    }

    fn unlink(&mut self, slot: Slot) {
        let (tenant, platform, pos) = {
            let d = self.get(slot);
            (d.tenant, d.platform, d.index_pos as usize)
        };
        let key = (tenant, platform);
        let list = self.by_platform.get_mut(&key).expect("device is listed");
        list.swap_remove(pos);
        let moved = list.get(pos).copied();
        if list.is_empty() {
            self.by_platform.remove(&key);
        }
        if let Some(moved) = moved {
            self.get_mut(moved).index_pos = pos as u32;
        }
    }

    /// Removes a device because the changelog says it is gone: nothing to write back.
    pub fn remove_restored(&mut self, slot: Slot) -> Device {
        let d = self.remove(slot);
        self.retired.pop();
        d
    }

    /// Removes a device, remembering a changelog tombstone for it. The caller releases its
    /// user in the user table.
    pub fn remove(&mut self, slot: Slot) -> Device {
        self.unlink(slot);
        let user = self.get(slot).user;
        self.set_user(slot, NO_USER);
        let partners: SmallVec<[PartnerIdx; 4]> = self
            .get(slot)
            .observations
            .iter()
            .map(|o| o.partner)
            .collect();
        self.graces.remove(&slot);
        for p in partners {
            self.threats.remove(&(slot, p));
        }
        let hash = {
            let d = self.get(slot);
            d.id.with_str(|id| hash_key(d.tenant, id))
        };
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        self.set_compliance(slot, ComplianceState::Unknown);
        let mut device = self.chunks[slot as usize / CHUNK][slot as usize % CHUNK]
            .take()
            .expect("slot in use");
        device.user = user;
        self.free.push(slot);
        self.dirty.retain(|&s| s != slot);
        self.retired.push((device.tenant, device.id.as_string()));
        self.len -= 1;
        device
    }

    /// Slots of a tenant's devices on a platform.
    pub fn on_platform(&self, tenant: TenantId, platform: Platform) -> &[Slot] {
        self.by_platform
            .get(&(tenant, platform))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Marks a device as changed since the last changelog flush.
    pub fn mark_dirty(&mut self, slot: Slot) {
        let d = self.get_mut(slot);
        if !d.has(flags::DIRTY) {
            d.set(flags::DIRTY, true);
            self.dirty.push(slot);
        }
    }

    /// Hands every device retired since the last call to `f` as `None`, then every changed one.
    /// Tombstones go first: a device retired and then re-created in the same batch is live, and
    /// its record must be the last one written for its key.
    pub fn drain_changes(&mut self, mut f: impl FnMut(&DeviceShard, TenantId, &str, Option<Slot>)) {
        for (tenant, id) in std::mem::take(&mut self.retired) {
            f(self, tenant, &id, None);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for slot in dirty {
            let d = self.get_mut(slot);
            d.set(flags::DIRTY, false);
            let d = self.get(slot);
            d.id.with_str(|id| f(self, d.tenant, id, Some(slot)));
        }
    }

    /// Changes waiting for the changelog: changed devices and retired ones.
    pub fn changes(&self) -> usize {
        self.dirty.len() + self.retired.len()
    }

    /// Whether changes are waiting for the changelog.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || !self.retired.is_empty()
    }

    /// Every device, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &Device)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, d)| d.as_ref().map(|d| (i as Slot, d)))
    }

    /// Heap and inline bytes held, excluding heap strings of long non-UUID ids.
    pub fn approx_bytes(&self) -> usize {
        self.index.capacity() * (std::mem::size_of::<Slot>() + 1)
            + self.chunks.len() * CHUNK * std::mem::size_of::<Option<Device>>()
            + self
                .by_platform
                .values()
                .map(|v| v.capacity() * 4)
                .sum::<usize>()
            + self.by_user.capacity() * (std::mem::size_of::<Slot>() + 1)
            + self.threats.capacity()
                * (std::mem::size_of::<((Slot, PartnerIdx), ThreatSetId)>() + 1)
            + self.graces.capacity() * (std::mem::size_of::<(Slot, SmallVec<[Grace; 1]>)>() + 1)
            + self.deadlines.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_is_small() {
        assert_eq!(std::mem::size_of::<Observation>(), 16);
        assert_eq!(std::mem::size_of::<Observations>(), 16);
        assert!(
            std::mem::size_of::<Option<Device>>() <= 72,
            "{}",
            std::mem::size_of::<Option<Device>>()
        );
    }

    #[test]
    fn observations_stay_sorted_and_unique() {
        let o = |partner, at| Observation::new(at, 0, partner, HealthState::Secured);
        let mut list = Observations::default();
        for (p, at) in [(5, 1), (2, 2), (5, 3), (9, 4), (1, 5), (2, 6)] {
            list.upsert(o(p, at));
        }
        let got: Vec<_> = list.iter().map(|o| (o.partner, o.observed_at())).collect();
        assert_eq!(got, [(1, 5), (2, 6), (5, 3), (9, 4)]);
        assert!(matches!(list, Observations::More(_)));
        let two = Observations::from_sorted(&[o(1, 1), o(2, 2)]);
        assert!(matches!(two, Observations::Two(_)));
    }

    #[test]
    fn observed_at_keeps_48_bits() {
        for at in [
            0,
            1,
            -1,
            1_733_000_000_000,
            -86_400_000,
            u32::MAX as i64 + 1,
            Observation::MIN_OBSERVED_AT,
            Observation::MAX_OBSERVED_AT,
        ] {
            assert_eq!(
                Observation::new(at, 7, 1, HealthState::Low).observed_at(),
                at
            );
        }
        let clamped = |at| Observation::new(at, 7, 1, HealthState::Low).observed_at();
        assert_eq!(clamped(i64::MAX), Observation::MAX_OBSERVED_AT);
        assert_eq!(clamped(i64::MIN), Observation::MIN_OBSERVED_AT);
    }

    #[test]
    fn replay_window_keeps_the_last_reports() {
        let mut d = Device::new(0, "d", Platform::Ios, Management::Mdm);
        let report = |at, fp| Observation::new(at, fp, 3, HealthState::Secured);
        d.observe(report(1, 11));
        let o = d.observation(3).unwrap();
        assert!(o.applied(11) && !o.applied(0) && !o.applied(22));
        d.observe(report(2, 22));
        let o = *d.observation(3).unwrap();
        assert!(o.applied(22) && o.applied(11));
        assert_eq!(o.earlier_fingerprints().collect::<Vec<_>>(), [11]);
        d.observe(report(3, 33));
        let o = *d.observation(3).unwrap();
        assert!(o.applied(33) && o.applied(22));
        assert!(!o.applied(11), "fell out of a window of {REPLAY_WINDOW}");
        // Another partner has its own window.
        d.observe(Observation::new(4, 44, 5, HealthState::Low));
        assert!(!d.observation(5).unwrap().applied(33));
        assert!(!d.observation(3).unwrap().applied(44));
        // Restore: zeros are empty places, extra fingerprints beyond the window dropped.
        let r = report(5, 55).with_earlier([0, 66, 77, 88]);
        assert_eq!(r.earlier_fingerprints().collect::<Vec<_>>(), [66]);
        assert!(r.applied(55) && r.applied(66) && !r.applied(0));
    }

    #[test]
    fn insert_find_move_remove() {
        let mut s = DeviceShard::new();
        let mut slots = Vec::new();
        for i in 0..10_000u32 {
            let id = format!("dev-{i}");
            let slot = s.insert(Device::new(i % 3, &id, Platform::Ios, Management::Mdm));
            slots.push(slot);
        }
        assert_eq!(s.len(), 10_000);
        assert_eq!(s.find(1, "dev-1"), Some(slots[1]));
        assert_eq!(s.find(0, "dev-1"), None, "tenants are separate");
        let t0_ios = s.on_platform(0, Platform::Ios).len();
        s.set_platform(slots[0], Platform::Android);
        assert_eq!(s.on_platform(0, Platform::Ios).len(), t0_ios - 1);
        assert_eq!(s.on_platform(0, Platform::Android), &[slots[0]]);
        s.mark_dirty(slots[3]);
        s.remove(slots[3]);
        assert_eq!(s.find(0, "dev-3"), None);
        assert_eq!(s.len(), 9_999);
        let mut seen = Vec::new();
        s.drain_changes(|_, t, id, d| seen.push((t, id.to_owned(), d.is_some())));
        assert_eq!(seen, vec![(0, "dev-3".to_owned(), false)]);
        // Every listed slot still points at a device of that tenant and platform.
        for t in 0..3 {
            for p in Platform::ALL {
                for &slot in s.on_platform(t, *p) {
                    let d = s.get(slot);
                    assert_eq!((d.tenant, d.platform), (t, *p));
                }
            }
        }
        let reused = s.insert(Device::new(0, "dev-new", Platform::Ios, Management::Mam));
        assert_eq!(reused, slots[3]);
        assert_eq!(s.find(0, "dev-new"), Some(reused));
    }
}
