//! A membership table reload in the engine alone (no Kafka): an engine holding the 1.1
//! population (1M devices, one user each, [`super::population`]) takes U membership records
//! (100,000) that move U users into or out of the finance department, which the strict
//! compliance and app protection policies include, so every one of their devices' views
//! changes and each is re-evaluated, through `Engine::apply` as the table reader applies them.
//! The figure is records/s (and the seconds for all U), with the compliance changes and app
//! actions they produced and the changelog records they left.
//!
//! Baseline, same run, same engine: U records for U other users that move them to another
//! location, a group no policy names. They intern the new group sets and find the views
//! unchanged, so they must evaluate nothing (checked: no output, no changelog record). Also
//! printed (no figure): U records for U more users that repeat their groups with a newer
//! `updated_at`, what most of a real reload is.

use std::time::Instant;

use mtdgate::engine::{Body, Engine, Output};
use mtdgate::model::GroupMembership;

use crate::tools::simulate::group;

use super::population::{self, Population, TENANTS};
use super::world::{self, DEPARTMENTS, EXECUTIVES, FINANCE, LOCATIONS};
use super::{Figure, Report, Sizes, Unit};

/// The reloaded records' `updated_at`: an hour after the memberships held.
const RELOADED_AT: i64 = world::T0 + 3_600_000;

/// What applying one batch of membership records did.
#[derive(Debug, Default)]
struct Applied {
    secs: f64,
    compliance: usize,
    app_actions: usize,
    rejected: usize,
    changelog: usize,
    drain_secs: f64,
}

/// How a reloaded membership record differs from the one held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Into finance, or out of finance and the executives to a department no policy names.
    Department,
    /// To another location (no policy names one).
    Location,
    /// The same groups, a newer `updated_at`.
    None,
}

/// User `i`'s membership record after the reload.
fn reloaded(i: usize, change: Change) -> (String, GroupMembership) {
    let d = world::directory_device(i, TENANTS);
    let [dept, loc, role] = d.groups;
    let groups = match change {
        Change::Department => {
            let dept = if dept == FINANCE || dept == EXECUTIVES {
                2 + i % (DEPARTMENTS - 2)
            } else {
                FINANCE
            };
            [dept, loc, role]
        }
        Change::Location => {
            let l = loc - DEPARTMENTS;
            let moved = (l + 1 + i % (LOCATIONS - 1)) % LOCATIONS;
            [dept, DEPARTMENTS + moved, role]
        }
        Change::None => d.groups,
    };
    let m = world::membership(d.member.tenant, &d.member.user_id, &groups, RELOADED_AT);
    (format!("{}/{}", m.tenant_id, m.user_id), m)
}

fn apply_all(engine: &mut Engine, records: Vec<(String, GroupMembership)>, now: i64) -> Applied {
    let mut out = Vec::with_capacity(records.len() * 2);
    let mut applied = Applied::default();
    let t = Instant::now();
    for (key, m) in records {
        world::apply(engine, 0, &key, Body::Membership(Some(m)), now, &mut out);
    }
    applied.secs = t.elapsed().as_secs_f64();
    for o in &out {
        match o {
            Output::Compliance(_) => applied.compliance += 1,
            Output::AppAction(_) => applied.app_actions += 1,
            Output::Rejected(_) => applied.rejected += 1,
            _ => {}
        }
    }
    let t = Instant::now();
    applied.changelog = population::drain(engine);
    applied.drain_secs = t.elapsed().as_secs_f64();
    applied
}

pub fn run(sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let (n, users) = (sizes.reload_devices, sizes.reload_users);
    anyhow::ensure!(
        users * 3 <= n,
        "--reload-users {users} needs at least {} devices",
        users * 3
    );
    let now = RELOADED_AT + 1_000;
    let t = Instant::now();
    let (mut engine, filled) = population::fill(Population::Directory, n, world::T0 + 1_000);
    anyhow::ensure!(
        filled.rejected == 0,
        "the population's inputs were rejected"
    );
    println!(
        "  engine: {} devices of the 1.1 population ({} memberships, {} with threats) filled in {:.1} s",
        group(n as u64),
        group(filled.memberships as u64),
        group(filled.threatened as u64),
        t.elapsed().as_secs_f64()
    );
    // Disjoint sets of users spread over the population (and so over every tenant).
    let stride = n / users;
    let pick = |offset: usize, change: Change| -> Vec<(String, GroupMembership)> {
        (0..users)
            .map(|k| reloaded(k * stride + offset, change))
            .collect()
    };
    let unchanged = pick(stride / 3, Change::None);
    let irrelevant = pick(2 * stride / 3, Change::Location);
    let relevant = pick(0, Change::Department);

    let same = apply_all(&mut engine, unchanged, now);
    anyhow::ensure!(
        same.rejected + same.compliance + same.app_actions + same.changelog == 0,
        "unchanged memberships were rejected or evaluated devices: {same:?}"
    );
    println!(
        "  unchanged: {} records repeating users' groups with a newer updated_at: {:.3} s, \
         {} records/s, nothing evaluated",
        group(users as u64),
        same.secs,
        group((users as f64 / same.secs) as u64)
    );

    let base = apply_all(&mut engine, irrelevant, now);
    anyhow::ensure!(
        base.rejected == 0,
        "baseline memberships rejected ({})",
        base.rejected
    );
    anyhow::ensure!(
        base.compliance + base.app_actions + base.changelog == 0,
        "policy-irrelevant memberships evaluated devices: {} compliance changes, {} app actions, \
         {} changelog records",
        base.compliance,
        base.app_actions,
        base.changelog
    );
    println!(
        "  baseline: {} records moving users to another location (no policy names one): {:.3} s, \
         {} records/s, nothing evaluated",
        group(users as u64),
        base.secs,
        group((users as f64 / base.secs) as u64)
    );

    let run = apply_all(&mut engine, relevant, now);
    anyhow::ensure!(
        run.rejected == 0,
        "reloaded memberships rejected ({})",
        run.rejected
    );
    println!(
        "  reload: {} records moving users into or out of finance (every device of theirs \
         re-evaluated, one each): {:.3} s, {} records/s; {} compliance changes, {} app actions; \
         then {} changelog records drained in {:.3} s",
        group(users as u64),
        run.secs,
        group((users as f64 / run.secs) as u64),
        group(run.compliance as u64),
        group(run.app_actions as u64),
        group(run.changelog as u64),
        run.drain_secs
    );
    let users_label = group(users as u64);
    report.push(
        Figure::new(
            format!("membership reload, {users_label} users' devices re-evaluated"),
            users as f64 / run.secs,
            Unit::PerSecond("records"),
        )
        .baseline(users as f64 / base.secs),
    );
    report.push(
        Figure::new(
            format!("membership reload, {users_label} users, engine only"),
            run.secs,
            Unit::Seconds,
        )
        .baseline(base.secs),
    );
    Ok(())
}
