//! Contract 1.1 part 1 end to end on the real broker: policy assignment to groups (memberships
//! produced by kcat, as an outside client would), tenant settings, a second third-party app
//! protection toggle, threats in verdicts, and App Sync for enrolled iOS devices only. The
//! service runs in-process; outputs are read back by read_committed readers.
//!
//! Device-keyed records (reports, enrollments, inventories) go through the gateway (murmur2, as
//! Kafka's Java clients partition); table records through kcat's own partitioner, which is fine
//! since every instance reads every partition of a table.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// How long to keep reading to be sure nothing more comes.
const QUIET: Duration = Duration::from_millis(1500);
const MDE: &str = "microsoft-defender-for-endpoint";

/// Produces `lines` (`key|value`, JSON values) to `topic` with kcat; `extra` adds options (`-Z`
/// turns an empty value into a tombstone). kcat exits once everything is delivered.
fn kcat_produce(topic: &str, lines: &[String], extra: &[&str]) {
    let mut child = Command::new("kcat")
        .args(["-b", broker(), "-P", "-t", topic, "-K", "|"])
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat installed (scripts/install-deps)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "kcat -P -t {topic} failed");
}

/// `key|json` lines for kcat.
fn line(key: &str, v: &Value) -> String {
    format!("{key}|{}", serde_json::to_string(v).unwrap())
}

/// The changes of device `acme/{device}`.
fn of<'a>(records: &'a [(String, Value)], device: &str) -> Vec<&'a Value> {
    let key = format!("acme/{device}");
    records
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

/// The `current` state of each change of `device`, in order.
fn currents(records: &[(String, Value)], device: &str) -> Vec<String> {
    of(records, device)
        .iter()
        .map(|v| v["current"].as_str().unwrap().to_owned())
        .collect()
}

/// The latest state of `device`, if it had a change.
fn latest(records: &[(String, Value)], device: &str) -> Option<String> {
    currents(records, device).pop()
}

/// A compliance policy of `acme` on iOS for the users of `include` (null = everybody).
fn assigned_policy(id: &str, max_level: &str, include: Option<&[&str]>, now: i64) -> Value {
    let mut p = policy_json(id, "IOS", max_level, None, now);
    p["include_groups"] = include.map_or(Value::Null, |g| json!(g));
    p
}

/// Enrolls `devices` (device, user) on iOS and waits until each has the state `expect`.
fn enroll_and_wait(
    gw: &Gateway,
    cfg: &mtdgate::config::Config,
    changes: &mut Reader,
    devices: &[(&str, &str)],
    expect: &str,
    now: i64,
) {
    for (d, u) in devices {
        let e = enrollment_for_json(d, u, "IOS", "CORPORATE", now);
        gw.send(
            &cfg.topics.device_enrollments,
            &format!("acme/{d}"),
            Some(&e),
        );
    }
    gw.flush();
    // Kafka orders records within a partition of one topic only: the enrollments must have been
    // applied before the reports (another topic) that follow.
    changes.wait_until("the enrollments' changes", WAIT, |r| {
        devices
            .iter()
            .all(|(d, _)| latest(r, d).as_deref() == Some(expect))
    });
}

/// The note of Intune's MTD page: Defender judged for group `mde`, a third party for group `tp`;
/// memberships produced with kcat. Defender HIGH and Lookout SECURED fail the devices of the
/// `mde` user and of the user in both groups, and pass the `tp` user's device.
#[test]
fn separate_thresholds_by_group_with_memberships_from_kcat() {
    let (cfg, svc, gw, now) = scenario("asg-groups");
    let t = &cfg.topics;
    let mut defender_only = assigned_policy("defender-only", "NOT_SET", Some(&["mde"]), now);
    defender_only["defender_max_level"] = "LOW".into();
    let mut third_party = assigned_policy("third-party", "LOW", Some(&["tp"]), now);
    third_party["defender_max_level"] = "NOT_SET".into();
    let mut tables = acme_tables(&cfg, &["ios_enabled"], &[defender_only, third_party], now);
    let mde_on = ["provisioned", "setup_complete", "ios_enabled"];
    tables.push(connector_record(&cfg, "acme", MDE, &mde_on, now));
    tables.push(heartbeat_record(&cfg, MDE, now));
    gw.setup_tables(&tables);
    kcat_produce(
        &t.group_memberships,
        &[
            line("acme/alice", &membership_json("alice", &["mde"], now)),
            line("acme/bob", &membership_json("bob", &["tp"], now)),
            line("acme/carol", &membership_json("carol", &["mde", "tp"], now)),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(500));

    let devices = [("d-alice", "alice"), ("d-bob", "bob"), ("d-carol", "carol")];
    let mut changes = Reader::new(&t.compliance_changes);
    // No data yet from the one partner each policy judges: nothing fails.
    enroll_and_wait(&gw, &cfg, &mut changes, &devices, "COMPLIANT", now);
    let before = changes.records.len();
    for (d, _) in devices {
        let key = format!("acme/{d}");
        let mde = report_json(&format!("mde-{d}"), MDE, d, "MDM", "HIGH", svc.now());
        let lookout = report_json(
            &format!("lo-{d}"),
            "lookout",
            d,
            "MDM",
            "SECURED",
            svc.now(),
        );
        gw.send(&t.device_threats, &key, Some(&mde));
        gw.send(&t.device_threats, &key, Some(&lookout));
    }
    gw.flush();
    changes.wait_until("alice's and carol's devices failing", WAIT, |r| {
        latest(r, "d-alice").as_deref() == Some("NONCOMPLIANT")
            && latest(r, "d-carol").as_deref() == Some("NONCOMPLIANT")
    });
    let all = changes.drain(QUIET).to_vec();
    let after = &all[before..];

    for (d, u, expect) in [
        ("d-alice", "alice", "NONCOMPLIANT"),
        ("d-bob", "bob", "COMPLIANT"),
        ("d-carol", "carol", "NONCOMPLIANT"),
    ] {
        let states = currents(&all, d);
        assert_eq!(
            states.iter().filter(|s| *s == expect).count(),
            1,
            "{d}: exactly one change to {expect}, got {states:?}"
        );
        assert_eq!(states.last().map(String::as_str), Some(expect), "{d}");
        assert!(
            of(&all, d).iter().all(|v| v["user_id"] == u),
            "{d}: {all:#?}"
        );
    }
    // The reports changed alice's and carol's devices once each, bob's not at all (Lookout is
    // SECURED, and Defender's HIGH is not judged for him).
    let mut keys: Vec<&str> = after.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["acme/d-alice", "acme/d-carol"], "{after:#?}");
    for (_, v) in after {
        let d = v["device_id"].as_str().unwrap();
        assert_eq!(v["previous"], "COMPLIANT", "{v}");
        assert_eq!(v["cause_event_id"], format!("mde-{d}"), "{v}");
        let reasons = v["reasons"].as_array().unwrap();
        assert_eq!(reasons.len(), 1, "only Defender fails: {v}");
        assert_eq!(reasons[0]["partner_id"], MDE, "{v}");
        assert_eq!(reasons[0]["code"], "LEVEL_EXCEEDS_POLICY", "{v}");
    }
    svc.stop();
}

/// A membership change re-evaluates that user's devices and nobody else's: moved out of the
/// group with kcat, back in with the gateway, then a kcat tombstone (in no group). A stale
/// membership is rejected and changes nothing.
#[test]
fn membership_change_flips_exactly_that_users_devices() {
    let (cfg, svc, gw, now) = scenario("asg-move");
    let t = &cfg.topics;
    let strict = assigned_policy("strict", "LOW", Some(&["strict"]), now);
    gw.setup_tables(&acme_tables(&cfg, &["ios_enabled"], &[strict], now));
    kcat_produce(
        &t.group_memberships,
        &[
            line("acme/u1", &membership_json("u1", &["strict"], now)),
            line("acme/u2", &membership_json("u2", &["strict"], now)),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(500));
    let devices = [("a1", "u1"), ("a2", "u1"), ("b1", "u2")];
    let mut changes = Reader::new(&t.compliance_changes);
    enroll_and_wait(&gw, &cfg, &mut changes, &devices, "COMPLIANT", now);
    for (d, _) in devices {
        let r = report_json(&format!("high-{d}"), "lookout", d, "MDM", "HIGH", svc.now());
        gw.send(&t.device_threats, &format!("acme/{d}"), Some(&r));
    }
    gw.flush();
    changes.wait_until("every device failing", WAIT, |r| {
        devices
            .iter()
            .all(|(d, _)| latest(r, d).as_deref() == Some("NONCOMPLIANT"))
    });
    let mut seen = changes.drain(QUIET).len();

    // Each step: the membership record, then exactly one change for each of u1's devices.
    let mut step = |what: &str, send: &dyn Fn(), expect: &str, cause: &str| {
        send();
        changes.wait_until(what, WAIT, |r| r.len() >= seen + 2);
        let all = changes.drain(QUIET).to_vec();
        let new = &all[seen..];
        let mut keys: Vec<&str> = new.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["acme/a1", "acme/a2"], "{what}: {new:#?}");
        for (_, v) in new {
            assert_eq!(v["current"], expect, "{what}: {v}");
            assert_eq!(v["user_id"], "u1", "{what}: {v}");
            assert_eq!(v["cause_event_id"], cause, "{what}: {v}");
        }
        seen = all.len();
    };
    let out = membership_json("u1", &["other"], now + 1);
    step(
        "u1 moved out of `strict` (kcat)",
        &|| kcat_produce(&t.group_memberships, &[line("acme/u1", &out)], &[]),
        "NOT_EVALUATED",
        &format!("membership:acme/u1@{}", now + 1),
    );
    let back = membership_json("u1", &["strict", "other"], now + 2);
    step(
        "u1 back in `strict` (gateway)",
        &|| {
            gw.send(&t.group_memberships, "acme/u1", Some(&back));
            gw.flush();
        },
        "NONCOMPLIANT",
        &format!("membership:acme/u1@{}", now + 2),
    );
    step(
        "u1's membership deleted (kcat tombstone)",
        &|| kcat_produce(&t.group_memberships, &["acme/u1|".to_owned()], &["-Z"]),
        "NOT_EVALUATED",
        "membership:acme/u1@deleted",
    );

    // A membership older than the one held for u2 is stale: rejected, u2's device untouched.
    let stale = membership_json("u2", &[], now - 1);
    kcat_produce(&t.group_memberships, &[line("acme/u2", &stale)], &[]);
    let mut rejected = Reader::new(&t.rejected);
    let r = rejected.wait_for(1, WAIT).to_vec();
    assert_eq!(r[0].0, "acme/u2");
    assert_eq!(r[0].1["reason"], "STALE", "{}", r[0].1);
    assert_eq!(r[0].1["source_topic"], t.group_memberships.as_str());
    let all = changes.drain(QUIET).to_vec();
    assert_eq!(all.len(), seen, "nothing more: {:#?}", &all[seen..]);
    assert_eq!(currents(&all, "b1"), ["COMPLIANT", "NONCOMPLIANT"]);
    svc.stop();
}

/// `no_policy_state = NONCOMPLIANT` for devices no policy applies to (the only policy is for
/// another group): an enrolled device flips when the settings arrive, a device enrolled after
/// them starts NONCOMPLIANT, and a tombstone brings both back to NOT_EVALUATED.
#[test]
fn tenant_settings_no_policy_state_and_tombstone() {
    let (cfg, svc, gw, now) = scenario("asg-settings");
    let t = &cfg.topics;
    let other = assigned_policy("other-group", "LOW", Some(&["other"]), now);
    gw.setup_tables(&acme_tables(&cfg, &["ios_enabled"], &[other], now));
    let mut changes = Reader::new(&t.compliance_changes);
    enroll_and_wait(
        &gw,
        &cfg,
        &mut changes,
        &[("d1", "alice")],
        "NOT_EVALUATED",
        now,
    );

    kcat_produce(
        &t.tenant_settings,
        &[line("acme", &settings_json("NONCOMPLIANT", now))],
        &[],
    );
    let c = changes
        .wait_until("d1 NONCOMPLIANT by the settings", WAIT, |r| {
            latest(r, "d1").as_deref() == Some("NONCOMPLIANT")
        })
        .to_vec();
    let flipped = of(&c, "d1").pop().unwrap().clone();
    assert_eq!(flipped["previous"], "NOT_EVALUATED", "{flipped}");
    assert_eq!(
        flipped["cause_event_id"],
        format!("tenant-settings:acme@{now}"),
        "{flipped}"
    );
    enroll_and_wait(
        &gw,
        &cfg,
        &mut changes,
        &[("d2", "bob")],
        "NONCOMPLIANT",
        now,
    );
    // Reports change nothing for devices no policy applies to.
    let r = report_json("e-d1", "lookout", "d1", "MDM", "SECURED", svc.now());
    gw.send(&t.device_threats, "acme/d1", Some(&r));
    gw.flush();

    kcat_produce(&t.tenant_settings, &["acme|".to_owned()], &["-Z"]);
    changes.wait_until("d1 and d2 back to NOT_EVALUATED", WAIT, |r| {
        ["d1", "d2"]
            .iter()
            .all(|d| latest(r, d).as_deref() == Some("NOT_EVALUATED"))
    });
    let all = changes.drain(QUIET).to_vec();
    assert_eq!(
        currents(&all, "d1"),
        ["NOT_EVALUATED", "NONCOMPLIANT", "NOT_EVALUATED"]
    );
    assert_eq!(currents(&all, "d2"), ["NONCOMPLIANT", "NOT_EVALUATED"]);
    for d in ["d1", "d2"] {
        let last = of(&all, d).pop().unwrap().clone();
        assert_eq!(
            last["cause_event_id"], "tenant-settings:acme@deleted",
            "{last}"
        );
    }
    svc.stop();
}

/// Intune allows Defender plus one third-party app protection partner per platform: a second
/// third-party `ios_mam_enabled` is refused with CONFLICTING_CONNECTOR naming the toggle, the
/// rest of its settings apply, and the first partner's MAM traffic still blocks.
#[test]
fn second_third_party_mam_toggle_is_conflicting() {
    let (cfg, svc, gw, now) = scenario("asg-conflict");
    let t = &cfg.topics;
    gw.setup_tables(&mam_tenant_records(&cfg, now));
    let zim_on = [
        "provisioned",
        "setup_complete",
        "ios_enabled",
        "ios_mam_enabled",
    ];
    gw.setup_tables(&[
        connector_record(&cfg, "acme", "zimperium", &zim_on, now),
        heartbeat_record(&cfg, "zimperium", now),
    ]);

    let mut rejected = Reader::new(&t.rejected);
    let r = rejected.wait_for(1, WAIT).to_vec();
    let v = &r[0].1;
    assert_eq!(r[0].0, "acme/zimperium", "{v}");
    assert_eq!(v["reason"], "CONFLICTING_CONNECTOR", "{v}");
    assert_eq!(v["source_topic"], t.connectors.as_str(), "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("ios_mam_enabled"), "{detail}");
    assert!(
        detail.contains("lookout"),
        "names the partner that keeps it: {detail}"
    );
    // The rest of Zimperium's settings apply: its iOS compliance toggle makes it ENABLED.
    let mut status = Reader::new(&t.connector_status);
    status.wait_until("zimperium ENABLED", WAIT, |r| {
        r.iter()
            .any(|(k, v)| k == "acme/zimperium" && v["current"] == "ENABLED")
    });

    // Zimperium's HIGH report on a MAM device acts on nothing; Lookout's blocks.
    let z = report_json("z1", "zimperium", "m1", "MAM", "HIGH", svc.now());
    gw.send(&t.device_threats, "acme/m1", Some(&z));
    let l = report_json("l1", "lookout", "m1", "MAM", "HIGH", svc.now());
    gw.send(&t.device_threats, "acme/m1", Some(&l));
    let z2 = report_json("z2", "zimperium", "m2", "MAM", "HIGH", svc.now());
    gw.send(&t.device_threats, "acme/m2", Some(&z2));
    gw.flush();
    let mut actions = Reader::new(&t.app_protection_actions);
    actions.wait_for(1, WAIT);
    let got = actions.drain(QUIET).to_vec();
    assert_eq!(got.len(), 1, "{got:#?}");
    let (k, a) = &got[0];
    assert_eq!(k, "acme/m1");
    assert_eq!(a["action"], "BLOCK", "{a}");
    assert_eq!(a["partner_id"], "lookout", "{a}");
    assert_eq!(a["cause_event_id"], "l1", "{a}");
    assert_eq!(
        rejected.drain(Duration::from_millis(500)).len(),
        1,
        "only the toggle was refused"
    );
    svc.stop();
}

/// The threats behind a verdict as they appear on the output topics: the worst three, worst
/// first, in the NONCOMPLIANT reason and in the WIPE action.
#[test]
fn threats_in_a_noncompliant_reason_and_a_wipe() {
    let (cfg, svc, gw, now) = scenario("asg-threats");
    let t = &cfg.topics;
    let cp = policy_json("cp", "IOS", "LOW", None, now);
    let wipe = policy_json("wipe", "IOS", "LOW", Some("WIPE"), now);
    let toggles = ["ios_enabled", "ios_mam_enabled"];
    gw.setup_tables(&acme_tables(&cfg, &toggles, &[cp, wipe], now));
    let mut changes = Reader::new(&t.compliance_changes);
    enroll_and_wait(
        &gw,
        &cfg,
        &mut changes,
        &[("d1", "alice")],
        "COMPLIANT",
        now,
    );

    let reported = json!([
        threat_json("adware", "AdPush", "LOW"),
        threat_json("malware", "RootKitX", "CRITICAL"),
        threat_json("spyware", "Pegasus-like", "HIGH"),
        threat_json("phishing", "FakeBank", "MEDIUM"),
    ]);
    let worst = json!([
        threat_json("malware", "RootKitX", "CRITICAL"),
        threat_json("spyware", "Pegasus-like", "HIGH"),
        threat_json("phishing", "FakeBank", "MEDIUM"),
    ]);
    let mut r = report_json("e-d1", "lookout", "d1", "MDM", "HIGH", svc.now());
    r["threats"] = reported.clone();
    gw.send(&t.device_threats, "acme/d1", Some(&r));
    let mut m = report_json("e-m1", "lookout", "m1", "MAM", "HIGH", svc.now());
    m["threats"] = reported;
    gw.send(&t.device_threats, "acme/m1", Some(&m));
    gw.flush();

    let c = changes
        .wait_until("d1 NONCOMPLIANT", WAIT, |r| {
            latest(r, "d1").as_deref() == Some("NONCOMPLIANT")
        })
        .to_vec();
    let change = of(&c, "d1").pop().unwrap().clone();
    assert_eq!(change["cause_event_id"], "e-d1", "{change}");
    let reason = &change["reasons"][0];
    assert_eq!(reason["code"], "LEVEL_EXCEEDS_POLICY", "{change}");
    assert_eq!(reason["partner_id"], "lookout", "{change}");
    assert_eq!(reason["threats"], worst, "{change}");

    let mut actions = Reader::new(&t.app_protection_actions);
    let a = actions.wait_for(1, WAIT)[0].clone();
    assert_eq!(a.0, "acme/m1");
    assert_eq!(a.1["action"], "WIPE", "{}", a.1);
    assert_eq!(a.1["policy_id"], "wipe", "{}", a.1);
    assert_eq!(a.1["threats"], worst, "{}", a.1);
    assert_eq!(actions.drain(QUIET).len(), 1);
    svc.stop();
}

/// App Sync shares inventories of enrolled iOS devices only, with the enrollment's ownership
/// (UNKNOWN treated as PERSONAL); any other inventory is rejected NOT_ENROLLED.
#[test]
fn app_sync_for_enrolled_ios_devices_only() {
    let (cfg, svc, gw, now) = scenario("asg-appsync");
    let t = &cfg.topics;
    let policies = [
        policy_json("cp-ios", "IOS", "LOW", None, now),
        policy_json("cp-android", "ANDROID", "LOW", None, now),
    ];
    let toggles = ["ios_enabled", "android_enabled", "ios_app_sync"];
    gw.setup_tables(&acme_tables(&cfg, &toggles, &policies, now));
    let mut changes = Reader::new(&t.compliance_changes);
    enroll_and_wait(
        &gw,
        &cfg,
        &mut changes,
        &[("iphone", "alice")],
        "COMPLIANT",
        now,
    );
    let personal = enrollment_for_json("unknown-owner", "bob", "IOS", "UNKNOWN", now);
    gw.send(&t.device_enrollments, "acme/unknown-owner", Some(&personal));
    let droid = enrollment_for_json("droid", "carol", "ANDROID", "CORPORATE", now);
    gw.send(&t.device_enrollments, "acme/droid", Some(&droid));
    // Known from a report only: not enrolled.
    let seen = report_json("seen-1", "lookout", "seen", "MDM", "SECURED", svc.now());
    gw.send(&t.device_threats, "acme/seen", Some(&seen));
    gw.flush();
    changes.wait_until("every device known", WAIT, |r| {
        ["unknown-owner", "droid", "seen"]
            .iter()
            .all(|d| latest(r, d).is_some())
    });

    for d in ["iphone", "unknown-owner", "droid", "seen", "never"] {
        let inv = inventory_json(d, "CORPORATE", svc.now());
        gw.send(&t.app_inventory, &format!("acme/{d}"), Some(&inv));
    }
    gw.flush();

    let mut rejected = Reader::new(&t.rejected);
    rejected.wait_for(3, WAIT);
    let mut r = rejected.drain(QUIET).to_vec();
    r.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<&str> = r.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["acme/droid", "acme/never", "acme/seen"], "{r:#?}");
    for (k, v) in &r {
        assert_eq!(v["reason"], "NOT_ENROLLED", "{k}: {v}");
        assert_eq!(v["source_topic"], t.app_inventory.as_str(), "{k}: {v}");
    }

    let mut shared = Reader::new(&cfg.partner_topic("lookout"));
    shared.wait_for(2, WAIT);
    let mut s = shared.drain(QUIET).to_vec();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<&str> = s.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["acme/iphone", "acme/unknown-owner"], "{s:#?}");
    let apps = |v: &Value| -> Vec<String> {
        v["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["app_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let corporate = &s[0].1;
    assert_eq!(corporate["partner_id"], "lookout", "{corporate}");
    assert_eq!(corporate["ownership"], "CORPORATE", "{corporate}");
    assert_eq!(
        apps(corporate),
        ["com.example.managed", "com.example.personal"]
    );
    assert_eq!(corporate["unmanaged_apps_removed"], 0, "{corporate}");
    // UNKNOWN ownership in the enrollment: PERSONAL, although the inventory claims CORPORATE.
    let unknown = &s[1].1;
    assert_eq!(unknown["ownership"], "PERSONAL", "{unknown}");
    assert_eq!(apps(unknown), ["com.example.managed"]);
    assert_eq!(unknown["unmanaged_apps_removed"], 1, "{unknown}");
    svc.stop();
}
