//! The operator tools: `simulate` against the real broker (what it says it sent is what a
//! read_committed reader finds), `demo` end to end on the mock cluster, and `explain` against
//! a running instance.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::json;

use mtdgate::model::DeviceThreatReport;
use mtdgate::simulate::{self, Input, InputEncoding, Options};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mtdgate");

/// Reads every record of `topics` with a read_committed consumer until `want` per topic is
/// reached (or 60 s pass), then a little longer to catch any extra record.
fn read_all(
    topics: &[String],
    want: &HashMap<String, u64>,
) -> HashMap<String, Vec<(String, Vec<u8>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", format!("sim-count-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).unwrap();
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

/// (a) The simulator against the real broker: every count in its summary is what a
/// read_committed consumer finds on the input topics; the reports decode, are keyed
/// `tenant/device` and have unique event ids.
#[test]
fn simulate_sends_what_it_reports_to_the_real_broker() {
    let cfg = test_config("simulate");
    create_topics(&cfg);
    let mut opts = Options::new(cfg.clone());
    opts.tenants = 6;
    opts.devices = 1_500;
    opts.rate = 0.0;
    opts.reports = Some(4_000);
    opts.encoding = InputEncoding::Avro;
    opts.seed = 7;
    opts.settle = Duration::ZERO;
    opts.inventory_rate = 0.05;
    let summary = simulate::run(&opts, Arc::new(AtomicBool::new(false))).unwrap();
    assert_eq!(summary.delivery_errors, 0, "{summary}");
    assert_eq!(summary.undelivered, 0, "{summary}");
    assert_eq!(summary.reports, 4_000);
    assert_eq!(summary.sent(Input::DeviceThreats), 4_000);
    assert!(summary.sent(Input::DeviceEnrollments) > 0, "{summary}");
    assert!(summary.sent(Input::Policies) == 6 * 6, "{summary}");
    assert!(summary.sent(Input::AppInventory) > 0, "{summary}");

    let topics: Vec<String> = Input::ALL
        .iter()
        .map(|i| i.topic(&cfg).to_owned())
        .collect();
    let want: HashMap<String, u64> = Input::ALL
        .iter()
        .map(|i| (i.topic(&cfg).to_owned(), summary.sent(*i)))
        .collect();
    let got = read_all(&topics, &want);
    for i in Input::ALL {
        let t = i.topic(&cfg);
        assert_eq!(
            got.get(t).map_or(0, |v| v.len() as u64),
            summary.sent(i),
            "records on {t}\n{summary}"
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
}

/// The `simulate` command with a configuration file: exits 0 and prints its summary.
#[test]
fn simulate_command_uses_the_configuration_file() {
    let cfg = test_config("simcli");
    create_topics(&cfg);
    let path = std::env::temp_dir().join(format!(
        "mtdgate-simulate-{}-{}.toml",
        std::process::id(),
        cfg.kafka.group_id
    ));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let out = Command::new(BIN)
        .args(["simulate", "--quiet", "--rate", "0", "--reports", "500"])
        .args([
            "--tenants",
            "2",
            "--devices",
            "100",
            "--seed",
            "3",
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&cfg.topics.device_threats), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("500  device threat reports")),
        "{stdout}"
    );
    assert!(stdout.contains("delivery errors: 0"), "{stdout}");
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
    gw.send(
        &t.connectors,
        "acme/lookout",
        Some(&connector_json(
            "acme",
            "lookout",
            &["provisioned", "setup_complete", "ios_enabled"],
            now,
        )),
    );
    gw.send(&t.policies, "acme/cp", Some(&json!({"tenant_id": "acme", "policy_id": "cp", "kind": "COMPLIANCE", "platform": "IOS", "max_level": "MEDIUM", "updated_at": now})));
    gw.send(
        &t.connector_heartbeats,
        "acme/lookout",
        Some(&json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now})),
    );
    gw.flush();
    std::thread::sleep(Duration::from_millis(500));
    gw.send(&t.device_enrollments, "acme/d1", Some(&json!({"tenant_id": "acme", "device_id": "d1", "user_id": "alice", "platform": "IOS", "management": "MDM", "ownership": "CORPORATE", "os_version": "17.4", "enrolled_at": now})));
    gw.send(
        &t.device_threats,
        "acme/d1",
        Some(&json!({
            "event_id": "e1", "tenant_id": "acme", "partner_id": "lookout", "device_id": "d1",
            "platform": "IOS", "management": "MDM", "health_state": "HIGH", "threats": [],
            "observed_at": now,
        })),
    );
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
