//! The operator tools, through the `mtdgate` binary: `simulate` against the real broker (what
//! it says it sent is what a read_committed reader finds), `demo` end to end on the mock
//! cluster, and `explain` against a running instance. (The simulator's pure parts are unit
//! tests in `src/tools/simulate`.)

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message;

use mtdgate::config::Config;
use mtdgate::model::{DeviceThreatReport, PolicyKind, TenantSettings, ThreatPolicy};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mtdgate");

/// Reads every record of `topics` with a read_committed consumer until `want` per topic is
/// reached (or 60 s pass), then a little longer to catch any extra record.
fn read_all(
    topics: &[String],
    want: &HashMap<String, u64>,
) -> HashMap<String, Vec<(String, Vec<u8>)>> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let group = format!("sim-count-{}", std::process::id());
    let consumer = committed_reader(client(broker()), &group, &names);
    let mut got: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
    let done = |got: &HashMap<String, Vec<(String, Vec<u8>)>>| {
        want.iter()
            .all(|(t, n)| got.get(t).map_or(0, |v| v.len() as u64) >= *n)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut extra_until: Option<Instant> = None;
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            got.entry(m.topic().to_owned()).or_default().push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
        if extra_until.is_none() && done(&got) {
            extra_until = Some(Instant::now() + Duration::from_secs(2));
        }
        if extra_until.is_some_and(|t| Instant::now() > t) || Instant::now() > deadline {
            return got;
        }
    }
}

/// `mtdgate simulate --quiet ARGS --config FILE` (`args` separated by spaces) with a
/// configuration of fresh topics named after `name` in FILE; asserts it exits 0 and returns
/// the configuration and the summary (stdout).
fn simulate(name: &str, args: &str) -> (Config, String) {
    let cfg = test_config(name);
    create_topics(&cfg);
    let path = config_file(&cfg, &format!("simulate-{}", cfg.kafka.group_id));
    let out = Command::new(BIN)
        .args(["simulate", "--quiet"])
        .args(args.split_whitespace())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cfg, stdout)
}

/// `1,234` -> 1234.
fn number(s: &str) -> u64 {
    s.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// The summary's table of records sent (delivered), by topic: the rows between the `sent`
/// header and the `reports:` line, `COUNT  LABEL  TOPIC` each.
fn sent_by_topic(summary: &str) -> HashMap<String, u64> {
    let rows: Vec<&str> = summary
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("sent "))
        .skip(1)
        .take_while(|l| !l.starts_with("reports:"))
        .collect();
    assert_eq!(rows.len(), 7, "one row per input topic:\n{summary}");
    rows.iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[f.len() - 1].to_owned(), number(f[0]))
        })
        .collect()
}

/// (a) The simulator against the real broker: every count in its summary is what a
/// read_committed consumer finds on the input topics; the reports decode, are keyed
/// `tenant/device` and have unique event ids; the COMPLIANCE policies carry `--grace-hours`
/// and every tenant gets settings with `--report-validity-days`.
#[test]
fn simulate_sends_what_it_reports_to_the_real_broker() {
    let (cfg, summary) = simulate(
        "simulate",
        "--tenants 6 --devices 1500 --rate 0 --reports 4000 --encoding avro --seed 7 \
         --inventory-rate 0.05 --grace-hours 36 --report-validity-days 9",
    );
    assert!(
        summary
            .lines()
            .any(|l| l == "settings: COMPLIANCE grace period 36 h, reports valid 9 days"),
        "{summary}"
    );
    // Exit 0 means no delivery error and nothing unconfirmed; the summary says so too.
    assert!(summary.contains("delivery errors: 0"), "{summary}");
    assert!(!summary.contains("not confirmed"), "{summary}");
    let reports = summary
        .lines()
        .find_map(|l| l.strip_prefix("reports: "))
        .unwrap_or_else(|| panic!("no reports line:\n{summary}"));
    assert_eq!(
        number(reports.split(' ').next().unwrap()),
        4_000,
        "{summary}"
    );
    let sent = sent_by_topic(&summary);
    let t = &cfg.topics;
    assert_eq!(sent[&t.device_threats], 4_000, "{summary}");
    assert!(sent[&t.device_enrollments] > 0, "{summary}");
    assert!(sent[&t.policies] == 6 * 6, "{summary}");
    assert!(sent[&t.app_inventory] > 0, "{summary}");
    assert_eq!(sent[&t.tenant_settings], 6, "one per tenant\n{summary}");

    let topics: Vec<String> = [
        &t.device_threats,
        &t.connector_heartbeats,
        &t.connectors,
        &t.policies,
        &t.device_enrollments,
        &t.app_inventory,
        &t.tenant_settings,
    ]
    .map(String::clone)
    .to_vec();
    let want: HashMap<String, u64> = topics
        .iter()
        .map(|topic| (topic.clone(), sent[topic]))
        .collect();
    let got = read_all(&topics, &want);
    for topic in &topics {
        assert_eq!(
            got.get(topic).map_or(0, |v| v.len() as u64),
            sent[topic],
            "records on {topic}\n{summary}"
        );
    }
    let mut ids = HashSet::new();
    for (key, value) in &got[&cfg.topics.device_threats] {
        let r: DeviceThreatReport = mtdgate::codec::decode(value).unwrap();
        assert_eq!(key, &format!("{}/{}", r.tenant_id, r.device_id));
        assert!(ids.insert(r.event_id), "duplicate event id");
    }
    let levels: HashSet<String> = got[&cfg.topics.device_threats]
        .iter()
        .map(|(_, v)| {
            mtdgate::codec::decode::<DeviceThreatReport>(v)
                .unwrap()
                .health_state
                .to_string()
        })
        .collect();
    for l in ["SECURED", "MEDIUM", "HIGH", "COMPROMISED"] {
        assert!(levels.contains(l), "no {l} report in the mix: {levels:?}");
    }

    // COMPLIANCE policies with the grace period, APP_PROTECTION ones without.
    let mut compliance = 0;
    for (key, value) in &got[&t.policies] {
        let p: ThreatPolicy = mtdgate::codec::decode(value).unwrap();
        assert_eq!(key, &format!("{}/{}", p.tenant_id, p.policy_id));
        let want = match p.kind {
            PolicyKind::Compliance => {
                compliance += 1;
                36
            }
            PolicyKind::AppProtection => 0,
        };
        assert_eq!(p.grace_period_hours, want, "{key}");
    }
    assert_eq!(
        compliance,
        6 * 2,
        "one COMPLIANCE policy per tenant and platform"
    );
    // Tenant settings keyed by the tenant alone, with the validity asked for.
    let mut tenants = HashSet::new();
    for (key, value) in &got[&t.tenant_settings] {
        let s: TenantSettings = mtdgate::codec::decode(value).unwrap();
        assert_eq!(key, &s.tenant_id);
        assert_eq!(s.report_validity_days, Some(9), "{key}");
        assert!(tenants.insert(s.tenant_id), "settings sent twice for {key}");
    }
    assert_eq!(tenants.len(), 6);
}

/// The `simulate` command with a configuration file: exits 0 and prints its summary.
#[test]
fn simulate_command_uses_the_configuration_file() {
    let (cfg, stdout) = simulate(
        "simcli",
        "--rate 0 --reports 500 --tenants 2 --devices 100 --seed 3",
    );
    assert!(stdout.contains(&cfg.topics.device_threats), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("500  device threat reports")),
        "{stdout}"
    );
    assert!(stdout.contains("delivery errors: 0"), "{stdout}");
    // Without --grace-hours / --report-validity-days: no settings line, no tenant settings.
    assert!(!stdout.contains("settings:"), "{stdout}");
    assert_eq!(
        sent_by_topic(&stdout)[&cfg.topics.tenant_settings],
        0,
        "{stdout}"
    );

    // Out of range, or with nothing to attach them to: refused before anything is sent.
    for (args, want) in [
        (
            "--grace-hours 0",
            "--grace-hours 0: the grace period must be 1 to 8760 hours",
        ),
        ("--grace-hours 9000", "--grace-hours 9000"),
        (
            "--report-validity-days 121",
            "--report-validity-days 121: reports must stay valid 1 to 120 days",
        ),
        ("--grace-hours 2 --no-bootstrap", "--no-bootstrap"),
    ] {
        let out = Command::new(BIN)
            .args(["simulate", "--quiet", "--rate", "0", "--reports", "1"])
            .args(args.split_whitespace())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args}: accepted");
        assert!(err.contains(want), "{args}: {err}");
    }
}

/// Runs the binary with `args`, killing it after `limit`.
fn run_bin(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// The number on the summary line that starts with `name`.
fn summary_number(stdout: &str, name: &str) -> u64 {
    let after = stdout
        .split("\nsummary after")
        .nth(1)
        .unwrap_or_else(|| panic!("no final summary:\n{stdout}"));
    let line = after
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} line:\n{stdout}"));
    line[name.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap()
}

/// (b) `mtdgate demo` with nothing installed: mock cluster, service and simulator in one
/// process; live lines, then a summary with compliance changes and app protection actions.
#[test]
fn demo_runs_end_to_end_on_the_mock_cluster() {
    let out = run_bin(
        &[
            "demo",
            "--duration",
            "12",
            "--devices",
            "2000",
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(150),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("in-process mock cluster"), "{stdout}");
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains("compliance ["))
            .count()
            >= 5,
        "live lines missing:\n{stdout}"
    );
    assert!(
        summary_number(&stdout, "compliance changes") > 0,
        "{stdout}"
    );
    assert!(
        summary_number(&stdout, "app protection actions") > 0,
        "{stdout}"
    );
    assert!(
        summary_number(&stdout, "records consumed") > 10_000,
        "{stdout}"
    );
    assert!(stdout.contains("delivery errors: 0"), "{stdout}");
}

/// `mtdgate demo --grace-hours`: infected enrolled devices go IN_GRACE_PERIOD, and since
/// the grace outlasts the demo, none of them turns NONCOMPLIANT (the simulated tenants fail
/// devices only on their level, never on missing data).
#[test]
fn demo_with_a_grace_period_shows_devices_in_grace() {
    let out = run_bin(
        &[
            "demo",
            "--duration",
            "6",
            "--devices",
            "1000",
            "--listen",
            "127.0.0.1:0",
            "--grace-hours",
            "2",
            "--report-validity-days",
            "7",
        ],
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("; COMPLIANCE grace period 2 h, reports valid 7 days"),
        "{stdout}"
    );
    let after = stdout.split("\nsummary after").nth(1).unwrap_or_default();
    let changes = after
        .lines()
        .find(|l| l.starts_with("compliance changes"))
        .unwrap_or_else(|| panic!("no compliance changes line:\n{stdout}"));
    assert!(changes.contains("IN_GRACE_PERIOD "), "{stdout}");
    assert!(!changes.contains("NONCOMPLIANT"), "{stdout}");
    assert!(
        after.contains("settings: COMPLIANCE grace period 2 h"),
        "{stdout}"
    );
    let sent = sent_by_topic(after);
    assert_eq!(
        sent["mtd.tenant-settings.v1"], 10,
        "one per tenant:\n{stdout}"
    );
}

/// A demo whose service cannot start fails with the reason and a non-zero exit.
#[test]
fn demo_fails_clearly_when_the_service_cannot_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_bin(
        &[
            "demo",
            "--duration",
            "2",
            "--devices",
            "10",
            "--listen",
            &addr,
        ],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot bind"), "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
}

fn explain(args: &[&str], token_env: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.arg("explain")
        .args(args)
        .env_remove("MTDGATE_HTTP__EXPLAIN_TOKEN");
    if let Some(t) = token_env {
        c.env("MTDGATE_HTTP__EXPLAIN_TOKEN", t);
    }
    c.output().unwrap()
}

/// (c) `mtdgate explain` against an instance serving HTTP: the device's state and reasons,
/// the tenant's connectors, and clear errors for 401, 404 and a refused connection.
#[test]
fn explain_prints_device_and_connectors_of_a_running_instance() {
    let mut cfg = test_config("explain");
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.http.explain_token = Some("s3cret".into());
    let svc = Service::start(&cfg);
    let addr = mtdgate::service::start_http(&cfg, svc.status.clone()).unwrap();
    let url = format!("http://{addr}");
    let gw = Gateway::new();
    let t = &cfg.topics;
    let now = svc.now();
    gw.setup_tables(&compliance_tables(&cfg, "MEDIUM", now));
    gw.send(
        &t.device_enrollments,
        "acme/d1",
        Some(&enrollment_json("d1", now)),
    );
    let report = report_json("e1", "lookout", "d1", "MDM", "HIGH", now);
    gw.send(&t.device_threats, "acme/d1", Some(&report));
    gw.flush();

    let deadline = Instant::now() + Duration::from_secs(30);
    let stdout = loop {
        let out = explain(&["acme", "d1", "--url", &url, "--token", "s3cret"], None);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && stdout.contains("NONCOMPLIANT") {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "device never explained as NONCOMPLIANT:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stdout.contains("device acme/d1"), "{stdout}");
    assert!(stdout.contains("compliance    NONCOMPLIANT"), "{stdout}");
    assert!(stdout.contains("lookout"), "{stdout}");
    assert!(stdout.contains("HIGH"), "{stdout}");
    assert!(stdout.contains("LEVEL_EXCEEDS_POLICY"), "{stdout}");

    // The token from the environment works too.
    let out = explain(&["acme", "d1", "--url", &url], Some("s3cret"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = explain(
        &["acme", "--connectors", "--url", &url, "--token", "s3cret"],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("lookout"), "{text}");
    assert!(text.contains("ENABLED"), "{text}");
    assert!(text.contains("UNRESPONSIVE AT"), "{text}");

    let out = explain(&["acme", "d1", "--url", &url], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("401") && err.contains("token"), "{err}");

    let out = explain(&["acme", "d1", "--url", &url, "--token", "wrong"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));

    let out = explain(
        &["acme", "nosuch", "--url", &url, "--token", "s3cret"],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("404") && err.contains("acme/nosuch"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = explain(&["acme", "d1", "--url", &closed_url], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach"), "{err}");

    svc.stop();
}
