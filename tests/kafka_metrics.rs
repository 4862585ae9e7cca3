//! `/metrics`, `/healthz` and `/readyz` while the service runs on the real broker: every
//! metric family is present with the values this test's own traffic implies.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

use mtdgate::runtime::Status;
use mtdgate::telemetry::{self, MetricDef, MetricKind};

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}

#[test]
fn metrics_and_readiness_reflect_the_traffic() {
    let mut cfg = test_config("metrics");
    cfg.http.listen = "127.0.0.1:0".into();
    mtdgate::service::prometheus().expect("recorder installs");
    // HTTP first: readiness must say "not ready" before tables and partitions are in.
    let status = Arc::new(Status::default());
    let addr = mtdgate::service::start_http(&cfg, status.clone()).unwrap();
    let base = format!("http://{addr}");
    assert_eq!(http_get(&format!("{base}/healthz"), None).unwrap().0, 200);
    let (code, body) = http_get(&format!("{base}/readyz"), None).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("loading"), "{body}");

    let svc = Service::start_with_status(&cfg, status);
    let (code, _) = http_get(&format!("{base}/readyz"), None).unwrap();
    assert_eq!(code, 200);

    let gw = Gateway::new();
    let t = &cfg.topics;
    let now = svc.now();
    let policies = [
        policy_json("cp", "IOS", "LOW", None, now),
        policy_json("ap", "IOS", "LOW", Some("BLOCK"), now),
    ];
    let mut tables = acme_tables(&cfg, &["ios_enabled", "ios_mam_enabled"], &policies, now);
    tables.push(connector_record(
        &cfg,
        "acme",
        "pradeo",
        &["provisioned"],
        now,
    ));
    gw.setup_tables(&tables);
    // 10 MDM devices go noncompliant, 4 MAM devices get blocked, 3 reports are rejected.
    for d in 0..10 {
        gw.send(&t.device_threats, &format!("acme/d{d}"), Some(&json!({"event_id": format!("d{d}"), "tenant_id": "acme", "partner_id": "lookout", "device_id": format!("d{d}"), "platform": "IOS", "management": "MDM", "health_state": "HIGH", "observed_at": now})));
    }
    for d in 0..4 {
        gw.send(&t.device_threats, &format!("acme/m{d}"), Some(&json!({"event_id": format!("m{d}"), "tenant_id": "acme", "partner_id": "lookout", "device_id": format!("m{d}"), "platform": "IOS", "management": "MAM", "health_state": "HIGH", "observed_at": now})));
    }
    gw.send_raw(
        &t.device_threats,
        b"acme/x1",
        Some(b"\x00\x00\x00\x00\x07garbage"),
    );
    gw.send(&t.device_threats, "acme/x2", Some(&json!({"event_id": "x2", "tenant_id": "acme", "partner_id": "pradeo", "device_id": "x2", "platform": "IOS", "management": "MDM", "health_state": "HIGH", "observed_at": now})));
    gw.send(&t.device_threats, "acme/x3", Some(&json!({"event_id": "x3", "tenant_id": "acme", "partner_id": "lookout", "device_id": "x3", "platform": "WINDOWS", "management": "MDM", "health_state": "HIGH", "observed_at": now})));
    gw.flush();
    let mut actions = Reader::new(&t.app_protection_actions);
    actions.wait_for(4, Duration::from_secs(30));
    let mut changes = Reader::new(&t.compliance_changes);
    changes.wait_for(10, Duration::from_secs(30));
    // Gauges refresh every second.
    std::thread::sleep(Duration::from_millis(1500));

    // librdkafka statistics (consumer lag) arrive every 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let (code, text) = http_get(&format!("{base}/metrics"), None).unwrap();
        assert_eq!(code, 200);
        if text.contains("mtdgate_consumer_lag_records{") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let threats = &t.device_threats;
    let check = |series: String, want: f64| {
        assert_eq!(metric(&text, &series), Some(want), "{series}\n{text}");
    };
    check(
        format!("mtdgate_events_consumed_total{{topic=\"{threats}\"}}"),
        17.0,
    );
    check(
        "mtdgate_compliance_changes_total{state=\"NONCOMPLIANT\"}".into(),
        10.0,
    );
    check(
        "mtdgate_app_protection_actions_total{action=\"BLOCK\"}".into(),
        4.0,
    );
    check(
        "mtdgate_rejected_total{reason=\"UNKNOWN_SCHEMA\"}".into(),
        1.0,
    );
    check(
        "mtdgate_rejected_total{reason=\"CONNECTOR_NOT_SET_UP\"}".into(),
        1.0,
    );
    check(
        "mtdgate_rejected_total{reason=\"UNSUPPORTED_PLATFORM\"}".into(),
        1.0,
    );
    check("mtdgate_devices_tracked".into(), 14.0);
    check("mtdgate_devices_noncompliant".into(), 10.0);
    check("mtdgate_connectors{status=\"ENABLED\"}".into(), 1.0);
    check("mtdgate_connectors{status=\"NOT_SET_UP\"}".into(), 1.0);
    check("mtdgate_ready".into(), 1.0);
    check(
        format!(
            "mtdgate_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    assert!(
        metric(
            &text,
            "mtdgate_connector_status_changes_total{status=\"ENABLED\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric(&text, "mtdgate_transactions_total{result=\"commit\"}").unwrap() >= 1.0);
    assert!(metric(&text, "mtdgate_rebalances_total{kind=\"assign\"}").unwrap() >= 1.0);
    assert!(metric(&text, "mtdgate_restore_records_total").is_some());
    assert!(metric(&text, "mtdgate_processing_seconds_count").unwrap() >= 17.0);
    for family in [
        "mtdgate_processing_seconds_bucket{le=\"0.001\"}",
        "mtdgate_end_to_end_latency_seconds_count",
        "mtdgate_commit_duration_seconds_count",
        "mtdgate_restore_duration_seconds_count",
        "mtdgate_consumer_lag_seconds",
    ] {
        assert!(metric(&text, family).is_some(), "{family} missing\n{text}");
    }
    assert!(
        text.contains("mtdgate_consumer_lag_records{"),
        "lag from librdkafka statistics\n{text}"
    );
    assert!(!text.contains("device=\""), "no per-device labels");
    svc.stop();
}

/// One `/metrics` scrape, parsed: `# TYPE` and `# HELP` per family, label keys per sample.
/// Every line counts, not only `mtdgate_` ones, so an undeclared family of any name shows.
#[derive(Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    /// (sample name, sorted label keys, value)
    samples: Vec<(String, Vec<String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                assert!(
                    s.types.insert(name.into(), kind.into()).is_none(),
                    "{name} typed twice"
                );
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("# HELP name text");
                s.helps.insert(name.into(), help.into());
            } else if line.starts_with('#') {
                panic!("unexpected comment line in the scrape: {line}");
            } else {
                let (series, value) = line.rsplit_once(' ').expect("sample value");
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                let mut keys: Vec<String> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
                    .collect();
                keys.sort();
                let value = value.parse().unwrap_or_else(|_| panic!("sample {line}"));
                s.samples.push((name.into(), keys, value));
            }
        }
        s
    }

    fn value(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, k, _)| n == name && k.is_empty())
            .map(|s| s.2)
    }
}

/// `deploy/metrics.txt`: (name, type, sorted label keys) per family.
fn metrics_txt() -> BTreeMap<String, (String, Vec<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/metrics.txt");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 3, "deploy/metrics.txt: {l:?}");
            let mut labels: Vec<String> = match cols[2] {
                "-" => Vec::new(),
                ls => ls.split(',').map(str::to_owned).collect(),
            };
            labels.sort();
            (cols[0].to_owned(), (cols[1].to_owned(), labels))
        })
        .collect()
}

/// A stand-in for a Confluent-compatible schema registry (the subset mtdgate asks: register or
/// look up a schema under a subject, a schema by id), so the `mtdgate_schema_registry_*`
/// families, exported only with a registry configured, are in the scrape too. Ids it has not
/// given out are answered 404 / 40403, as Confluent's and Apicurio's registries do.
fn fake_registry() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/apis/ccompat/v7", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        // (subject, schema) -> id; ids are content ids: the same schema text, the same id.
        let mut subjects: BTreeMap<(String, String), u32> = BTreeMap::new();
        let mut schemas: Vec<String> = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let schema = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["schema"].as_str().map(str::to_owned));
            let mut words = request_line.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let path = path.strip_prefix("/apis/ccompat/v7").unwrap_or(path);
            let not_found = |what: &str| {
                (
                    404,
                    json!({"error_code": 40403, "message": format!("{what} not found")}),
                )
            };
            let parts: Vec<&str> = path.split('/').collect();
            let (status, answer) = match (method, parts.as_slice()) {
                ("POST", ["", "subjects", subject, "versions"]) if schema.is_some() => {
                    let schema = schema.unwrap();
                    let id = match schemas.iter().position(|s| *s == schema) {
                        Some(i) => i as u32 + 1,
                        None => {
                            schemas.push(schema.clone());
                            schemas.len() as u32
                        }
                    };
                    subjects.insert(((*subject).to_owned(), schema), id);
                    (200, json!({"id": id}))
                }
                ("POST", ["", "subjects", subject]) if schema.is_some() => {
                    let schema = schema.unwrap();
                    match subjects.get(&((*subject).to_owned(), schema.clone())) {
                        Some(id) => (
                            200,
                            json!({"subject": subject, "id": id, "version": 1, "schema": schema}),
                        ),
                        None => not_found("Schema"),
                    }
                }
                ("GET", ["", "schemas", "ids", id]) => {
                    match id
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| schemas.get(i.wrapping_sub(1)))
                    {
                        Some(schema) => (200, json!({"schema": schema})),
                        None => not_found(&format!("Schema {id}")),
                    }
                }
                _ => not_found(path),
            };
            let body = answer.to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// The scrape of the shipped binary (`mtdgate run`, in a process of its own, with a schema
/// registry configured) after traffic carries exactly the families `src/telemetry.rs` declares
/// and `deploy/metrics.txt` lists, with their `# TYPE`, help text and label keys, and nothing
/// else: the check that `deploy/metrics.txt`, the README, the dashboard and the alerts (all
/// checked against the declarations) describe what Prometheus really receives.
#[test]
fn scrape_of_the_running_binary_matches_the_declarations() {
    let mut cfg = test_config("metrics-decl");
    cfg.http.listen = format!("127.0.0.1:{}", free_port());
    cfg.schema_registry.url = fake_registry();
    let base = format!("http://{}", cfg.http.listen);
    let process = Process::start(&cfg, "metrics-decl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(&format!("{base}/readyz"), None).is_ok_and(|(c, _)| c == 200) {
        assert!(Instant::now() < deadline, "mtdgate never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Traffic that reaches every event family: a connector set up for MDM and MAM, policies
    // that turn a HIGH report noncompliant / blocked, and one undecodable report.
    let gw = Gateway::new();
    let t = &cfg.topics;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let setup = [
        "provisioned",
        "setup_complete",
        "ios_enabled",
        "ios_mam_enabled",
    ];
    gw.send(
        &t.connectors,
        "acme/lookout",
        Some(&connector_json("acme", "lookout", &setup, now)),
    );
    gw.send(&t.policies, "acme/cp", Some(&json!({"tenant_id": "acme", "policy_id": "cp", "kind": "COMPLIANCE", "platform": "IOS", "max_level": "LOW", "updated_at": now})));
    gw.send(&t.policies, "acme/ap", Some(&json!({"tenant_id": "acme", "policy_id": "ap", "kind": "APP_PROTECTION", "platform": "IOS", "max_level": "LOW", "action": "BLOCK", "updated_at": now})));
    gw.send(
        &t.connector_heartbeats,
        "acme/lookout",
        Some(&json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now})),
    );
    gw.flush();
    std::thread::sleep(Duration::from_millis(500));
    gw.send(&t.device_threats, "acme/d1", Some(&json!({"event_id": "d1", "tenant_id": "acme", "partner_id": "lookout", "device_id": "d1", "platform": "IOS", "management": "MDM", "health_state": "HIGH", "observed_at": now})));
    gw.send(&t.device_threats, "acme/m1", Some(&json!({"event_id": "m1", "tenant_id": "acme", "partner_id": "lookout", "device_id": "m1", "platform": "IOS", "management": "MAM", "health_state": "HIGH", "observed_at": now})));
    gw.send_raw(
        &t.device_threats,
        b"acme/x1",
        Some(b"\x00\x00\x00\x00\x07garbage"),
    );
    gw.flush();

    // Poll until every declared family is in (consumer lag comes with librdkafka's statistics,
    // every 5 s), then compare the last scrape.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, scrape) = loop {
        let (code, text) = http_get(&format!("{base}/metrics"), None).unwrap();
        assert_eq!(code, 200, "{text}");
        let scrape = Scrape::parse(&text);
        let complete = telemetry::ALL
            .iter()
            .all(|d| scrape.types.contains_key(d.name));
        if complete || Instant::now() > deadline {
            break (text, scrape);
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    let declared: BTreeMap<String, String> = telemetry::ALL
        .iter()
        .map(|d| (d.name.to_owned(), d.kind.as_str().to_owned()))
        .collect();
    assert_eq!(
        scrape.types, declared,
        "# TYPE lines vs src/telemetry.rs\n{text}"
    );
    assert_eq!(
        scrape.helps.keys().collect::<Vec<_>>(),
        declared.keys().collect::<Vec<_>>(),
        "# HELP lines vs src/telemetry.rs\n{text}"
    );
    for d in telemetry::ALL {
        assert_eq!(
            scrape.helps.get(d.name).map(String::as_str),
            Some(d.help),
            "# HELP {}\n{text}",
            d.name
        );
    }
    // Every sample belongs to a declared family and carries exactly its label keys.
    let mut with_samples = BTreeSet::new();
    for (name, keys, _) in &scrape.samples {
        let (def, extra) = match MetricDef::find(name) {
            Some(d) => (d, None),
            None => {
                let (base, suffix) = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).map(|b| (b, *s)))
                    .unwrap_or_else(|| panic!("undeclared sample {name}\n{text}"));
                let d = MetricDef::find(base)
                    .filter(|d| d.kind == MetricKind::Histogram)
                    .unwrap_or_else(|| panic!("undeclared sample {name}\n{text}"));
                (d, (suffix == "_bucket").then_some("le"))
            }
        };
        let mut want: Vec<String> = def.labels.iter().map(|l| l.to_string()).collect();
        want.extend(extra.map(String::from));
        want.sort();
        assert_eq!(keys, &want, "label keys of {name}\n{text}");
        with_samples.insert(def.name);
    }
    let declared_names: BTreeSet<&str> = telemetry::ALL.iter().map(|d| d.name).collect();
    assert_eq!(
        with_samples, declared_names,
        "families without samples\n{text}"
    );

    // deploy/metrics.txt, read as the operator reads it, against the scrape itself: each family
    // with its type and the label keys its samples carry (histograms: `le` on buckets only).
    let mut scraped: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (name, kind) in &scrape.types {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for (sample, k, _) in &scrape.samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter(|_| kind == "histogram")
                .find_map(|s| sample.strip_suffix(s))
                .unwrap_or(sample);
            if family == name {
                keys.extend(k.iter().filter(|k| *k != "le").cloned());
            }
        }
        scraped.insert(name.clone(), (kind.clone(), keys.into_iter().collect()));
    }
    assert_eq!(
        metrics_txt(),
        scraped,
        "deploy/metrics.txt vs the scrape (name, type, label keys)\n{text}"
    );
    // With the registry answering (404 for the undecodable record's id 7 is an answer).
    if let Some(up) = MetricDef::find("mtdgate_schema_registry_up") {
        assert_eq!(scrape.value(up.name), Some(1.0), "{text}");
    }

    // The traffic shows up under the declared names; the event-only counters start at zero
    // (a healthy run neither restarts nor aborts).
    assert_eq!(
        scrape.value(telemetry::PIPELINE_RESTARTS.name),
        Some(0.0),
        "{text}"
    );
    assert_eq!(scrape.value(telemetry::READY.name), Some(1.0), "{text}");
    let series = |name: &str, labels: &str| {
        let key = format!("{name}{{{labels}}}");
        text.lines()
            .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == key))
            .map(|(_, v)| v.parse::<f64>().unwrap())
    };
    assert_eq!(
        series(telemetry::TRANSACTIONS.name, "result=\"abort\""),
        Some(0.0),
        "{text}"
    );
    assert!(series(telemetry::TRANSACTIONS.name, "result=\"commit\"").unwrap() >= 1.0);
    assert_eq!(
        series(
            telemetry::EVENTS_CONSUMED.name,
            &format!("topic=\"{}\"", t.device_threats)
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series(telemetry::COMPLIANCE_CHANGES.name, "state=\"NONCOMPLIANT\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(telemetry::APP_PROTECTION_ACTIONS.name, "action=\"BLOCK\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(telemetry::REJECTED.name, "reason=\"UNKNOWN_SCHEMA\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(process.terminate().code(), Some(0), "clean exit on SIGTERM");
}
