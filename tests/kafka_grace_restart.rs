//! Grace periods (contract 1.1) across a crash, on the real broker.
//!
//! Tenant `acme` judges iOS compliance on Lookout's reports with one COMPLIANCE policy, max LOW
//! and a grace of one hour. The first instance runs as a child process on a clock the test
//! moves ([`ClockedProcess`]); two enrolled devices report HIGH, `d-due` at the start and
//! `d-later` 40 minutes (of the service's clock) later, so each is `IN_GRACE_PERIOD` with its
//! own end. The instance is then killed with SIGKILL (no commit, no leaving the group) and a new
//! one, same group, same changelog, same transactional id, starts in-process with its clock 70
//! minutes ahead: after `d-due`'s grace end, before `d-later`'s. `d-due`'s deadline passed while
//! no instance owned it, so it becomes NONCOMPLIANT at once, on restore; `d-later` stays in its
//! grace until the clock passes its end while the new instance runs, and then becomes
//! NONCOMPLIANT once, by the timer. At the end the whole compliance topic, read
//! read_committed from the beginning, holds exactly the expected sequence for each device.

mod support;

use std::time::Duration;

use mtdgate::runtime::clock::{Clock, ShiftedClock};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// How long to keep reading to be sure nothing more comes.
const QUIET: Duration = Duration::from_secs(3);
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
/// The test whose body is the child instance (this binary run again with only that test).
const CHILD_ENTRY: &str = "child_instance_entry";

/// Not a test of its own: the body of the first instance when the crash test runs this binary
/// as a child process; otherwise it does nothing.
#[test]
fn child_instance_entry() {
    if clocked_child_main() {
        eprintln!("child instance stopped");
    }
}

/// The changes of device `acme/{device}`, in order.
fn of<'a>(records: &'a [(String, Value)], device: &str) -> Vec<&'a Value> {
    let key = format!("acme/{device}");
    records
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

/// (previous, current) of each change of `device`, in order.
fn transitions(records: &[(String, Value)], device: &str) -> Vec<(String, String)> {
    of(records, device)
        .iter()
        .map(|v| {
            (
                v["previous"].as_str().unwrap_or_default().to_owned(),
                v["current"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The latest state of `device`, if it had a change.
fn latest(records: &[(String, Value)], device: &str) -> Option<String> {
    transitions(records, device).pop().map(|t| t.1)
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Sends a HIGH report of Lookout for `device` observed at `at`, waits until the device is
/// `IN_GRACE_PERIOD` and returns that change, checking it is the only one and that its grace
/// ends one hour after it was evaluated, which was between `at` and `seen` (the clock when it
/// was read).
fn report_high_and_expect_grace(
    gw: &Gateway,
    cfg: &mtdgate::config::Config,
    changes: &mut Reader,
    device: &str,
    at: i64,
    clock_now: impl Fn() -> i64,
) -> Value {
    let before = changes.records.len();
    let r = report_json(
        &format!("high-{device}"),
        "lookout",
        device,
        "MDM",
        "HIGH",
        at,
    );
    gw.send(
        &cfg.topics.device_threats,
        &format!("acme/{device}"),
        Some(&r),
    );
    gw.flush();
    changes.wait_until(&format!("{device} IN_GRACE_PERIOD"), WAIT, |r| {
        latest(r, device).as_deref() == Some("IN_GRACE_PERIOD")
    });
    let seen = clock_now();
    changes.drain(QUIET);
    let new: Vec<Value> = changes.records[before..]
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        new.len(),
        1,
        "one change after {device}'s HIGH report: {new:#?}"
    );
    let change = new[0].clone();
    assert_eq!(change["device_id"], device, "{change:#}");
    assert_eq!(change["previous"], "COMPLIANT", "{change:#}");
    assert_eq!(change["current"], "IN_GRACE_PERIOD", "{change:#}");
    assert_eq!(
        change["cause_event_id"],
        format!("high-{device}"),
        "{change:#}"
    );
    let evaluated = change["evaluated_at"].as_i64().unwrap();
    let ends = change["grace_ends_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("IN_GRACE_PERIOD without grace_ends_at: {change:#}"));
    assert!(
        (at..=seen).contains(&evaluated),
        "{device} evaluated at {evaluated}, not between the report ({at}) and reading its change \
         ({seen}): {change:#}"
    );
    assert_eq!(
        ends,
        evaluated + HOUR,
        "{device}'s grace must end one hour after the report was processed: {change:#}"
    );
    change
}

#[test]
fn grace_ends_while_no_instance_runs_and_after_restart() {
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:6.1} s  {what}", started.elapsed().as_secs_f64());
    let mut cfg = test_config("grace-restart");
    cfg.http.listen = "127.0.0.1:0".into();
    create_topics(&cfg);
    let t = cfg.topics.clone();
    let gw = Gateway::new();
    let now = now_ms();
    let mut cp = policy_json("cp", "IOS", "LOW", None, now);
    cp["grace_period_hours"] = 1.into();
    gw.send_all(&acme_tables(&cfg, &["ios_enabled"], &[cp], now));
    gw.flush();

    // The first instance, in a child process it is safe to SIGKILL, on a clock we move.
    let mut a = ClockedProcess::start(&cfg, "grace-restart-a", CHILD_ENTRY, 0);
    phase("instance A ready");
    let mut changes = Reader::new(&t.compliance_changes);
    for d in ["d-due", "d-later"] {
        gw.send(
            &t.device_enrollments,
            &format!("acme/{d}"),
            Some(&enrollment_json(d, a.now())),
        );
    }
    gw.flush();
    // No report yet: nothing fails. The enrollments must be applied before the reports (another
    // topic) that follow.
    changes.wait_until("both enrollments COMPLIANT", WAIT, |r| {
        ["d-due", "d-later"]
            .iter()
            .all(|d| latest(r, d).as_deref() == Some("COMPLIANT"))
    });
    phase("enrolled");

    let due = report_high_and_expect_grace(&gw, &cfg, &mut changes, "d-due", a.now(), || a.now());
    let due_ends = due["grace_ends_at"].as_i64().unwrap();
    phase("d-due in grace");
    // 40 minutes later (on the service's clock; d-due's grace runs on): d-later fails too.
    a.advance(40 * MINUTE);
    let later =
        report_high_and_expect_grace(&gw, &cfg, &mut changes, "d-later", a.now(), || a.now());
    let later_ends = later["grace_ends_at"].as_i64().unwrap();
    assert!(later_ends > due_ends + 39 * MINUTE, "{due:#}\n{later:#}");
    phase("d-later in grace; killing instance A");
    let killed_at = a.now();
    a.kill();

    // While nobody runs, the clock passes d-due's grace end (not d-later's).
    let clock = ShiftedClock::new();
    clock.advance(70 * MINUTE);
    let b_started = clock.now_ms();
    let b = Service::start_with_clock(&cfg, clock);
    phase("instance B ready");
    assert!(
        b_started > due_ends && b_started < later_ends,
        "instance B starts at {b_started}: after d-due's grace end ({due_ends}), before \
         d-later's ({later_ends})"
    );
    changes.wait_until("d-due NONCOMPLIANT after restore", WAIT, |r| {
        latest(r, "d-due").as_deref() == Some("NONCOMPLIANT")
    });
    changes.drain(QUIET);
    phase("d-due NONCOMPLIANT");
    let after_restore = of(&changes.records, "d-due");
    let noncompliant = (*after_restore.last().unwrap()).clone();
    let cause = noncompliant["cause_event_id"].as_str().unwrap().to_owned();
    let evaluated = noncompliant["evaluated_at"].as_i64().unwrap();
    eprintln!("d-due after restore: cause {cause}, evaluated at {evaluated}");
    assert_eq!(
        noncompliant["previous"], "IN_GRACE_PERIOD",
        "{noncompliant:#}"
    );
    assert!(
        noncompliant["grace_ends_at"].is_null(),
        "NONCOMPLIANT with a grace end: {noncompliant:#}"
    );
    // Instance A's clock never reached d-due's grace end: this is instance B's verdict, made on
    // restore (reconcile) or by the deadline it restored (timer), at or after the grace end.
    assert!(
        killed_at < due_ends,
        "A's clock ({killed_at}) passed d-due's grace end ({due_ends})"
    );
    assert!(
        cause.starts_with("reconcile:") || cause.starts_with("timer:"),
        "d-due's NONCOMPLIANT change is not the restore's reconcile or timer: {noncompliant:#}"
    );
    assert!(
        evaluated >= due_ends,
        "d-due NONCOMPLIANT before its grace ended ({due_ends}): {noncompliant:#}"
    );
    if cause.starts_with("reconcile:") {
        assert!(
            evaluated >= b_started,
            "d-due reconciled before instance B started ({b_started}): {noncompliant:#}"
        );
    }
    // d-later's grace still runs: no change for it after restore.
    assert_eq!(
        latest(&changes.records, "d-later").as_deref(),
        Some("IN_GRACE_PERIOD"),
        "{:#?}",
        of(&changes.records, "d-later")
    );
    assert_eq!(of(&changes.records, "d-later").len(), 2);

    // The clock passes d-later's grace end while instance B runs.
    b.clock.advance(40 * MINUTE);
    assert!(b.now() > later_ends);
    changes.wait_until("d-later NONCOMPLIANT on the timer", WAIT, |r| {
        latest(r, "d-later").as_deref() == Some("NONCOMPLIANT")
    });
    changes.drain(QUIET);
    phase("d-later NONCOMPLIANT");
    let timed = (*of(&changes.records, "d-later").last().unwrap()).clone();
    assert_eq!(timed["previous"], "IN_GRACE_PERIOD", "{timed:#}");
    assert!(
        timed["cause_event_id"]
            .as_str()
            .unwrap()
            .starts_with("timer:"),
        "d-later's NONCOMPLIANT change is not the timer's: {timed:#}"
    );
    assert!(timed["grace_ends_at"].is_null(), "{timed:#}");
    let timed_at = timed["evaluated_at"].as_i64().unwrap();
    assert!(
        timed_at >= later_ends && timed_at < later_ends + 1000,
        "d-later NONCOMPLIANT at {timed_at}, not at its grace end ({later_ends}, to the \
         second): {timed:#}"
    );
    b.stop();
    phase("instance B stopped");

    // The whole topic, read_committed from the beginning: each device's sequence exactly, with
    // nothing lost or duplicated across the crash.
    let mut all = Reader::independent(&t.compliance_changes, "final");
    all.wait_for(6, WAIT);
    let all = all.drain(QUIET).to_vec();
    let expected = pairs(&[
        ("UNKNOWN", "COMPLIANT"),
        ("COMPLIANT", "IN_GRACE_PERIOD"),
        ("IN_GRACE_PERIOD", "NONCOMPLIANT"),
    ]);
    for d in ["d-due", "d-later"] {
        assert_eq!(transitions(&all, d), expected, "{d}: {:#?}", of(&all, d));
    }
    assert_eq!(all.len(), 6, "changes of other devices: {all:#?}");
    let ids: std::collections::HashSet<&str> = all
        .iter()
        .map(|(_, v)| v["change_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 6, "a change id twice: {all:#?}");
    // The same records the live reader saw (partitions interleave differently in two reads).
    let by_id = |r: &[(String, Value)]| {
        let mut v: Vec<String> = r.iter().map(|(_, v)| v.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(by_id(&all), by_id(&changes.records), "the two reads differ");
    assert_eq!(of(&all, "d-due")[1], &due);
    assert_eq!(of(&all, "d-later")[1], &later);
    phase("done");
}
