//! Clear start-up errors: Kafka unreachable, a topic missing, device topics not co-partitioned,
//! a bad configuration value. The service refuses to start and says what to fix.

mod support;

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use mtdgate::runtime::{self, clock::SystemClock, Status};
use support::*;

fn run_err(cfg: mtdgate::config::Config) -> String {
    let r = runtime::run(
        cfg,
        Arc::new(SystemClock),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Status::default()),
    );
    format!("{:#}", r.expect_err("start-up must fail"))
}

#[test]
fn unreachable_broker_is_named() {
    let mut cfg = test_config("unreachable");
    cfg.kafka.bootstrap_servers = "127.0.0.1:1".into();
    cfg.topics.create = false;
    let e = run_err(cfg);
    assert!(e.contains("cannot reach Kafka at 127.0.0.1:1"), "{e}");
}

#[test]
fn missing_topic_is_named() {
    let mut cfg = test_config("missing");
    cfg.topics.create = false;
    let e = run_err(cfg.clone());
    assert!(
        e.contains("is missing") && e.contains("mtdgate topics create"),
        "{e}"
    );
}

#[test]
fn device_topics_must_be_co_partitioned() {
    let mut cfg = test_config("copart");
    create_topics(&cfg);
    // Recreate the enrollments topic under a new name with another partition count.
    let mut other = cfg.clone();
    other.topics.partitions = 2;
    other.topics.device_enrollments = format!("{}.two", cfg.topics.device_enrollments);
    create_topics(&other);
    cfg.topics.device_enrollments = other.topics.device_enrollments.clone();
    cfg.topics.create = false;
    std::thread::sleep(Duration::from_millis(500));
    let e = run_err(cfg);
    assert!(
        e.contains("same partition count") && e.contains("=2") && e.contains("=3"),
        "{e}"
    );
}

#[test]
fn bad_config_value_names_the_key() {
    let dir = std::env::temp_dir().join("mtdgate-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[processing]\nmax_batch = \"lots\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mtdgate"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_batch"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_mtdgate"))
        .args(["run", "--config", "/nonexistent/mtdgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mtdgate.toml"));
    // Environment overrides are checked the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_mtdgate"))
        .args(["config"])
        .env("MTDGATE_PROCESSING__OUTPUT_ENCODING", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("output_encoding"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
