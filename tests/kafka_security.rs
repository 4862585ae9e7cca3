//! SASL/SCRAM and TLS against a real, secured broker: a second Kafka started by
//! `scripts/kafka start --tls` on its own ports and data dir (SASL_PLAINTEXT with SCRAM-SHA-512
//! on 19092, SASL_SSL on 19095 with a self-signed CA), so the plaintext broker other tests use
//! is never touched.
//!
//! The service runs as a process over SASL_SSL with `kafka.properties`; a gateway produces over
//! SASL_PLAINTEXT and a read_committed reader sees the verdict. Clients with a wrong password
//! (on both listeners) and a TLS client that does not trust the CA are refused. The password
//! appears neither in the service's log nor in what `mtdgate config` prints.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtdgate::config::Config;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use serde_json::Value;
use support::{
    committed_reader, config_file, create_topics, mam_tenant_records, now_ms, report_json, Gateway,
    Process, ScriptBroker,
};

const PORT: u16 = 19092;
const SSL_PORT: u16 = 19095;
const DIR: &str = "/tmp/mtdgate-kafka-sasl";
const USER: &str = "mtdgate";
/// Distinctive, so that a leak is found by a plain substring search.
const PASSWORD: &str = "scram-Pw-4f1d9c0b7e";
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The secured broker

/// The secured broker (SASL_PLAINTEXT and, with `--tls`, SASL_SSL), fresh for this test.
fn secured_broker() -> ScriptBroker {
    ScriptBroker::start(
        PORT,
        DIR,
        vec![
            ("KAFKA_SASL_USER", USER.to_owned()),
            ("KAFKA_SASL_PASSWORD", PASSWORD.to_owned()),
        ],
        &["--tls"],
    )
}

fn ca() -> String {
    format!("{DIR}/tls/ca.pem")
}

/// librdkafka settings of a client of the secured broker.
fn sasl_plaintext(password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("bootstrap.servers", format!("127.0.0.1:{PORT}")),
        ("security.protocol", "SASL_PLAINTEXT".into()),
        ("sasl.mechanism", "SCRAM-SHA-512".into()),
        ("sasl.username", USER.into()),
        ("sasl.password", password.into()),
    ]
}

/// The same over TLS (SASL_SSL), trusting the test CA.
fn sasl_ssl(password: &str) -> Vec<(&'static str, String)> {
    let mut props = sasl_plaintext(password);
    props[0].1 = format!("127.0.0.1:{SSL_PORT}");
    props[1].1 = "SASL_SSL".into();
    props.push(("ssl.ca.location", ca()));
    props
}

fn client_config(props: &[(&'static str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in props {
        c.set(*k, v);
    }
    c
}

/// A configuration with unique topic names, for the secured broker over SASL_SSL.
fn secured_config(name: &str) -> Config {
    let mut c = support::config_on(&format!("127.0.0.1:{SSL_PORT}"), name);
    for (k, v) in sasl_ssl(PASSWORD) {
        if k != "bootstrap.servers" {
            c.kafka.properties.insert(k.to_owned(), v);
        }
    }
    c.topics.partitions = 2;
    c.http.listen = "127.0.0.1:0".into();
    c
}

// ---------------------------------------------------------------------------------------------
// Clients that record what librdkafka reports

#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl Errors {
    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

impl ClientContext for Errors {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, msg: &str) {
        self.0.lock().unwrap().push(format!("log {fac}: {msg}"));
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("error {error}: {reason}"));
    }
}

impl ConsumerContext for Errors {}

/// Connects with `props` and asks for metadata: Ok, or Err with what librdkafka reported
/// (returns as soon as a connection attempt failed, not after the whole timeout).
fn try_connect(props: &[(&'static str, String)]) -> Result<(), String> {
    let errors = Errors::default();
    let consumer: BaseConsumer<Errors> = client_config(props)
        .set("group.id", "mtdgate-security-probe")
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(errors.clone())
        .map_err(|e| format!("client creation: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match consumer.fetch_metadata(None, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => {
                // Serves error events to the context; logs arrive on their own.
                let _ = consumer.poll(Duration::from_millis(10));
                let seen = errors.text();
                if seen.contains("log FAIL") || Instant::now() > deadline {
                    return Err(format!("{e}\n{seen}"));
                }
            }
        }
    }
}

fn mtdgate(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mtdgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

// ---------------------------------------------------------------------------------------------

#[test]
fn sasl_scram_and_tls_against_a_secured_broker() {
    let started = Instant::now();
    let _broker = secured_broker();
    let cfg = secured_config("sasl");
    let t = cfg.topics.clone();

    // ---- credentials are checked, on both listeners; TLS verifies the broker
    try_connect(&sasl_plaintext(PASSWORD)).expect("SASL_PLAINTEXT with the right password");
    try_connect(&sasl_ssl(PASSWORD)).expect("SASL_SSL with the right password and the CA");
    for (listener, props) in [
        ("SASL_PLAINTEXT", sasl_plaintext("wrong-password")),
        ("SASL_SSL", sasl_ssl("wrong-password")),
    ] {
        let e = try_connect(&props).expect_err(listener);
        assert!(
            e.contains("Authentication failed") || e.contains("invalid credentials"),
            "{listener}, wrong password: not an authentication error:\n{e}"
        );
    }
    let mut untrusted = sasl_ssl(PASSWORD);
    untrusted.retain(|(k, _)| *k != "ssl.ca.location");
    // The system's CAs (Debian's bundle), which never signed the broker's certificate.
    untrusted.push((
        "ssl.ca.location",
        "/etc/ssl/certs/ca-certificates.crt".into(),
    ));
    let e = try_connect(&untrusted).expect_err("TLS without the CA");
    assert!(
        e.to_lowercase().contains("ssl") || e.contains("certificate"),
        "TLS client without the CA: {e}"
    );
    let mut no_sasl = sasl_plaintext(PASSWORD);
    no_sasl.retain(|(k, _)| k.starts_with("bootstrap"));
    assert!(
        try_connect(&no_sasl).is_err(),
        "a PLAINTEXT client must not get metadata from the SASL listener"
    );

    let phase = |what: &str| eprintln!("{:5.1} s  {what}", started.elapsed().as_secs_f64());
    phase("right credentials accepted, wrong ones and an untrusted CA refused");

    // ---- the service over SASL_SSL; inputs and outputs over SASL_PLAINTEXT
    create_topics(&cfg);
    let gw = Gateway::on(client_config(&sasl_plaintext(PASSWORD)));
    gw.send_all(&mam_tenant_records(&cfg, now_ms()));
    gw.flush();

    let process = Process::start(&cfg, "sasl");
    let config_path = process.config_path.clone();
    let log_path: PathBuf = std::env::temp_dir()
        .join("mtdgate-tests")
        .join(format!("sasl-{}.log", std::process::id()));
    let reader = committed_reader(
        client_config(&sasl_plaintext(PASSWORD)),
        &format!("reader-{}", t.app_protection_actions),
        &[&t.app_protection_actions],
    );
    let report = report_json("sasl-1", "lookout", "m1", "MAM", "HIGH", now_ms());
    gw.send(&t.device_threats, "acme/m1", Some(&report));
    gw.flush();
    let deadline = Instant::now() + WAIT;
    let verdict: Value = loop {
        assert!(
            Instant::now() < deadline,
            "no verdict over SASL within {WAIT:?}; service log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        if let Some(m) = reader.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            break serde_json::from_slice(m.payload().unwrap()).unwrap();
        }
    };
    phase("verdict read over SASL");
    assert_eq!(verdict["action"], "BLOCK", "{verdict}");
    assert_eq!(verdict["device_id"], "m1");
    assert!(process.terminate().success(), "clean exit on SIGTERM");

    // ---- the password stays out of the log (which did log the run)
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("topics verified"), "service log:\n{log}");
    assert!(
        !log.contains(PASSWORD),
        "the SASL password is in the service log {}",
        log_path.display()
    );

    // ---- a wrong password: the service says so, without printing it
    let mut wrong = cfg.clone();
    wrong
        .kafka
        .properties
        .insert("sasl.password".into(), "Wrong-Pw-91ac".into());
    let wrong_path = config_file(&wrong, "sasl-wrong");
    let (ok, out) = mtdgate(
        &["topics", "verify", "--config", wrong_path.to_str().unwrap()],
        &[("RUST_LOG", "trace")],
    );
    assert!(!ok, "topics verify with a wrong password succeeded:\n{out}");
    assert!(
        out.contains("refused this client") && out.contains("Authentication failed"),
        "a wrong password is not reported as refused credentials:\n{out}"
    );
    assert!(
        !out.contains("Wrong-Pw-91ac"),
        "the wrong password is printed:\n{out}"
    );

    phase("service refuses a wrong password");

    // ---- `mtdgate config` does not print the password, from the file or the environment
    let (ok, printed) = mtdgate(&["config", "--config", config_path.to_str().unwrap()], &[]);
    assert!(ok, "{printed}");
    assert!(printed.contains("sasl.username"), "{printed}");
    let (ok, printed_env) = mtdgate(
        &["config"],
        &[(
            "MTDGATE_KAFKA__PROPERTIES",
            &format!("{{\"sasl.password\" = \"{PASSWORD}\"}}"),
        )],
    );
    assert!(ok, "{printed_env}");
    let leaks: Vec<&str> = [("file", &printed), ("environment", &printed_env)]
        .iter()
        .filter(|(_, p)| p.contains(PASSWORD))
        .map(|(from, _)| *from)
        .collect();
    assert!(
        leaks.is_empty(),
        "`mtdgate config` prints the SASL password (given in the {}):\n{printed}",
        leaks.join(" and the ")
    );
    eprintln!(
        "secured broker test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
