//! mtdgate with a real schema registry (Apicurio Registry 3.3.3, Confluent API, started by
//! `scripts/registry`) and the clients users actually run: Python `confluent-kafka` with its
//! `SchemaRegistryClient`, `AvroSerializer` (schemas registered by the producer, its default
//! partitioner) and `AvroDeserializer` reading mtdgate's `avro-confluent` outputs
//! (`tests/python/avro_clients.py`). Contract 1.1, "Schema registry".

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mtdgate::codec::OutputEncoding;
use mtdgate::config::Config;
use serde_json::{json, Value};
use support::broker::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The registry's Confluent API: `MTDGATE_TEST_REGISTRY` (set by `scripts/test`), else the
/// project's registry, started if it is not running.
fn registry() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("MTDGATE_TEST_REGISTRY") {
            return u;
        }
        let script = root().join("scripts/registry");
        let ok = Command::new("bash")
            .arg(&script)
            .arg("start")
            .status()
            .expect("run scripts/registry start");
        assert!(ok.success(), "scripts/registry start failed");
        let out = Command::new("bash")
            .arg(&script)
            .arg("url")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// Runs `tests/python/avro_clients.py` with `args`, feeding `stdin`; (exit code, stdout lines
/// parsed as JSON, stderr).
fn python(args: &[&str], stdin: &str) -> (i32, Vec<Value>, String) {
    let mut child = Command::new("python3")
        .arg(root().join("tests/python/avro_clients.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 tests/python/avro_clients.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Produces `records` (key, value) to `topic` with the Python AvroSerializer and schema file
/// `schema` (relative to the repository); returns the schema ids used.
fn produce(cfg: &Config, registry: &str, topic: &str, schema: &str, records: &[(String, Value)]) {
    let stdin: String = records
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}).to_string() + "\n")
        .collect();
    let schema = root().join(schema);
    let (code, lines, err) = python(
        &[
            "produce",
            "--bootstrap",
            &cfg.kafka.bootstrap_servers,
            "--registry",
            registry,
            "--topic",
            topic,
            "--schema",
            schema.to_str().unwrap(),
        ],
        &stdin,
    );
    assert_eq!(code, 0, "python produce to {topic}: {err}");
    assert_eq!(lines.len(), records.len(), "{err}");
}

/// Reads `topic` with the Python AvroDeserializer (read_committed) until `count` records or
/// `timeout`; returns what it read.
fn consume(cfg: &Config, topic: &str, count: usize, timeout: Duration) -> Vec<Value> {
    let (code, lines, err) = python(
        &[
            "consume",
            "--bootstrap",
            &cfg.kafka.bootstrap_servers,
            "--registry",
            registry(),
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--timeout",
            &timeout.as_secs().to_string(),
        ],
        "",
    );
    assert!(
        code == 0 || code == 2,
        "python consume {topic}: exit {code}: {err}"
    );
    lines
}

/// The id the registry holds for the latest schema under `subject`.
fn subject_id(subject: &str) -> u64 {
    let url = format!("{}/subjects/{subject}/versions/latest", registry());
    let text = ureq::get(&url).call().unwrap().into_string().unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    body["id"].as_u64().unwrap()
}

fn registry_config(name: &str, url: &str) -> Config {
    let mut cfg = test_config(name);
    cfg.schema_registry.url = url.to_owned();
    cfg.processing.output_encoding = OutputEncoding::AvroConfluent;
    cfg
}

/// Tenant `acme`'s tables and four iOS devices, produced through the registry: Lookout
/// judging iOS compliance over LOW; d1 HIGH, d2 SECURED, d3 HIGH written with a newer writer
/// schema (an added optional field), d4 SECURED.
fn produce_fleet(cfg: &Config, registry: &str, now: i64) {
    let t = &cfg.topics;
    let tables = compliance_tables(cfg, "LOW", now);
    for (topic, key, value) in tables {
        let schema = if topic == t.connectors {
            "schemas/ConnectorConfig.avsc"
        } else if topic == t.policies {
            "schemas/ThreatPolicy.avsc"
        } else {
            "schemas/ConnectorHeartbeat.avsc"
        };
        produce(cfg, registry, &topic, schema, &[(key, value)]);
    }
    let enrollments: Vec<(String, Value)> = ["d1", "d2", "d3", "d4"]
        .iter()
        .map(|d| (format!("acme/{d}"), enrollment_json(d, now)))
        .collect();
    produce(
        cfg,
        registry,
        &t.device_enrollments,
        "schemas/DeviceEnrollment.avsc",
        &enrollments,
    );
    let report = |d: &str, state: &str| {
        (
            format!("acme/{d}"),
            report_json(&format!("e-{d}"), "lookout", d, "MDM", state, now),
        )
    };
    produce(
        cfg,
        registry,
        &t.device_threats,
        "schemas/DeviceThreatReport.avsc",
        &[report("d1", "HIGH"), report("d2", "SECURED")],
    );
    let (key, mut newer) = report("d3", "HIGH");
    newer["x_extra"] = json!("from a newer gateway");
    produce(
        cfg,
        registry,
        &t.device_threats,
        "tests/python/DeviceThreatReport-v1.2-extra.avsc",
        &[(key, newer), report("d4", "SECURED")],
    );
}

/// The latest `current` state per device among compliance changes.
fn states(changes: &[Value]) -> BTreeMap<String, String> {
    changes
        .iter()
        .map(|c| {
            let v = &c["value"];
            (
                v["device_id"].as_str().unwrap().to_owned(),
                v["current"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected_states() -> BTreeMap<String, String> {
    [
        ("d1", "NONCOMPLIANT"),
        ("d2", "COMPLIANT"),
        ("d3", "NONCOMPLIANT"),
        ("d4", "COMPLIANT"),
    ]
    .iter()
    .map(|(d, s)| ((*d).to_owned(), (*s).to_owned()))
    .collect()
}

/// Reads compliance changes until every device has its expected state (or `timeout`).
fn wait_for_states(cfg: &Config, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = consume(
            cfg,
            &cfg.topics.compliance_changes,
            100,
            Duration::from_secs(4),
        );
        if states(&got) == expected_states() || Instant::now() > deadline {
            return got;
        }
    }
}

#[test]
fn python_avro_clients_through_the_registry_end_to_end() {
    let url = registry();
    let cfg = registry_config("registry", url);
    let svc = Service::start(&cfg);
    let now = svc.now();
    produce_fleet(&cfg, url, now);
    // A value framed with an id the registry does not have.
    let gw = Gateway::new();
    let mut unknown = vec![0u8];
    unknown.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
    unknown.extend_from_slice(b"\x02x");
    gw.send_raw(&cfg.topics.device_threats, b"acme/d9", Some(&unknown));
    gw.flush();

    let changes = wait_for_states(&cfg, Duration::from_secs(60));
    assert_eq!(states(&changes), expected_states(), "{changes:#?}");
    // Written with the id the registry gave the output topic's subject.
    let id = subject_id(&format!("{}-value", cfg.topics.compliance_changes));
    for c in &changes {
        assert_eq!(c["schema_id"].as_u64(), Some(id), "{c}");
    }
    // Every producer-registered schema was read: nothing rejected but the unknown id.
    let rejected = consume(&cfg, &cfg.topics.rejected, 10, Duration::from_secs(5));
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    let r = &rejected[0]["value"];
    assert_eq!(r["reason"], "UNKNOWN_SCHEMA", "{r}");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("not in the schema registry"),
        "{r}"
    );
    assert_eq!(
        rejected[0]["schema_id"].as_u64(),
        Some(subject_id(&format!("{}-value", cfg.topics.rejected)))
    );
    svc.stop();
}

/// A TCP forwarder to the registry that can be cut: while down it accepts connections and
/// closes them at once (as a crashed registry behind a load balancer does), and every
/// connection it was forwarding is cut.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let live = Arc::new(Mutex::new(Vec::new()));
        let target = target.to_owned();
        let (u, l) = (up.clone(), live.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !u.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut live = l.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, up, live }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for s in self.live.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

#[test]
fn a_registry_outage_delays_records_and_rejects_none() {
    let real = registry();
    let (authority, path) = real
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .expect("registry URL http://host:port/path");
    let proxy = Proxy::start(authority);
    let mut cfg = registry_config("registry-outage", &proxy.url(&format!("/{path}")));
    cfg.schema_registry.max_backoff_ms = 1_000;
    let svc = Service::start(&cfg);
    let now = svc.now();

    // The registry goes away; producers (which reach it directly) go on registering and
    // producing: every schema id is new to this service.
    proxy.set_up(false);
    produce_fleet(&cfg, real, now);
    let during = consume(
        &cfg,
        &cfg.topics.compliance_changes,
        1,
        Duration::from_secs(6),
    );
    assert!(
        during.is_empty(),
        "nothing is applied without the schemas: {during:#?}"
    );
    let rejected = consume(&cfg, &cfg.topics.rejected, 1, Duration::from_secs(2));
    assert!(rejected.is_empty(), "nothing is rejected: {rejected:#?}");
    assert!(
        svc.status.ready(),
        "waiting for the registry is not a failure"
    );

    // Back: every record waited and is applied, in order, none rejected.
    proxy.set_up(true);
    let changes = wait_for_states(&cfg, Duration::from_secs(60));
    assert_eq!(states(&changes), expected_states(), "{changes:#?}");
    let rejected = consume(&cfg, &cfg.topics.rejected, 1, Duration::from_secs(3));
    assert!(rejected.is_empty(), "{rejected:#?}");
    svc.stop();
}
