//! Policy assignment (contract 1.1): a policy applies to a device when kind and platform match
//! and the device's user is in scope: `include_groups` null takes every user (and devices
//! without a user), a list takes the users in one of its groups, and a user in any of the
//! `exclude_groups` is out whatever the inclusion says.

use serde::{Deserialize, Serialize};

use crate::model::{PolicyLevel, ThreatLevel, ThreatPolicy};

use super::users::{GroupId, Interner};

/// Why a policy applies to a device or not, for explanations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    /// No `include_groups`: the policy applies to every user, and to devices without one.
    AllUsers,
    /// The user is in `group`, one of the included groups.
    Included { group: String },
    /// The user is in `group`, one of the excluded groups: exclusion wins.
    Excluded { group: String },
    /// The user is in none of the included groups.
    NotIncluded,
    /// The device has no user, and the policy applies to included groups only.
    NoUser,
}

impl Scope {
    pub fn applies(&self) -> bool {
        matches!(self, Scope::AllUsers | Scope::Included { .. })
    }
}

/// The scope of `policy` for a user in `groups` (`None`: the device has no user).
pub fn scope_of(policy: &ThreatPolicy, groups: Option<&[&str]>) -> Scope {
    let Some(groups) = groups else {
        return match policy.include_groups {
            None => Scope::AllUsers,
            Some(_) => Scope::NoUser,
        };
    };
    if let Some(g) = policy
        .exclude_groups
        .iter()
        .find(|g| groups.contains(&g.as_str()))
    {
        return Scope::Excluded { group: g.clone() };
    }
    match &policy.include_groups {
        None => Scope::AllUsers,
        Some(include) => match include.iter().find(|g| groups.contains(&g.as_str())) {
            Some(g) => Scope::Included { group: g.clone() },
            None => Scope::NotIncluded,
        },
    }
}

/// A policy's groups as interned ids; a group no membership names yet matches nobody.
#[derive(Debug, Clone)]
pub struct ResolvedScope {
    include: Option<Vec<GroupId>>,
    exclude: Vec<GroupId>,
}

impl ResolvedScope {
    pub fn new(policy: &ThreatPolicy, groups: &Interner<Box<str>>) -> Self {
        let ids = |names: &[String]| {
            names
                .iter()
                .filter_map(|n| groups.get(n.as_str()))
                .collect()
        };
        ResolvedScope {
            include: policy.include_groups.as_deref().map(ids),
            exclude: ids(&policy.exclude_groups),
        }
    }

    /// Whether the policy applies to a user in the sorted group set `set` (empty for a device
    /// without a user, which is in scope of policies without `include_groups` only).
    pub fn applies(&self, set: &[GroupId]) -> bool {
        if self.exclude.iter().any(|g| set.binary_search(g).is_ok()) {
            return false;
        }
        match &self.include {
            None => true,
            Some(include) => include.iter().any(|g| set.binary_search(g).is_ok()),
        }
    }
}

/// The ceiling a COMPLIANCE policy sets for one partner's data, or `None` when it does not
/// judge that partner: Defender is held to `defender_max_level` when set (`NOT_SET`: not
/// judged) and to `max_level` otherwise; third parties to `max_level` (`NOT_SET`: not judged).
pub fn ceiling(policy: &ThreatPolicy, defender: bool) -> Option<ThreatLevel> {
    let level: PolicyLevel = if defender {
        policy.defender_max_level.unwrap_or(policy.max_level)
    } else {
        policy.max_level
    };
    level.allowed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Platform, PolicyKind};

    fn policy(include: Option<&[&str]>, exclude: &[&str]) -> ThreatPolicy {
        let mut p = ThreatPolicy::new(
            "t",
            "p",
            PolicyKind::Compliance,
            Platform::Ios,
            PolicyLevel::Low,
            0,
        );
        p.include_groups = include.map(|g| g.iter().map(|s| s.to_string()).collect());
        p.exclude_groups = exclude.iter().map(|s| s.to_string()).collect();
        p
    }

    #[test]
    fn exclusion_wins_and_no_user_needs_all_users() {
        let p = policy(Some(&["sales"]), &["contractors"]);
        assert!(scope_of(&p, Some(&["sales"])).applies());
        assert_eq!(
            scope_of(&p, Some(&["sales", "contractors"])),
            Scope::Excluded {
                group: "contractors".into()
            }
        );
        assert_eq!(scope_of(&p, Some(&["hr"])), Scope::NotIncluded);
        assert_eq!(scope_of(&p, None), Scope::NoUser);
        let all = policy(None, &["contractors"]);
        assert_eq!(scope_of(&all, None), Scope::AllUsers);
        assert!(!scope_of(&all, Some(&["contractors"])).applies());
    }

    #[test]
    fn resolved_scope_agrees_with_names() {
        let mut groups: Interner<Box<str>> = Interner::default();
        let sales = groups.intern("sales".into());
        let contractors = groups.intern("contractors".into());
        let p = policy(Some(&["sales", "unknown"]), &["contractors"]);
        let r = ResolvedScope::new(&p, &groups);
        let mut both = vec![sales, contractors];
        both.sort_unstable();
        assert!(r.applies(&[sales]));
        assert!(!r.applies(&both));
        assert!(!r.applies(&[]));
    }

    #[test]
    fn defender_ceiling() {
        let mut p = policy(None, &[]);
        assert_eq!(ceiling(&p, true), Some(ThreatLevel::Low), "null: max_level");
        p.defender_max_level = Some(PolicyLevel::NotSet);
        assert_eq!(ceiling(&p, true), None);
        assert_eq!(ceiling(&p, false), Some(ThreatLevel::Low));
        p.defender_max_level = Some(PolicyLevel::High);
        p.max_level = PolicyLevel::NotSet;
        assert_eq!(ceiling(&p, true), Some(ThreatLevel::High));
        assert_eq!(ceiling(&p, false), None);
    }
}
