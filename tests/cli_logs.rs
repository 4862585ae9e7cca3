//! Logs and the command line as operators expect them (README, "Running, logs and exit codes"):
//! `--log-format json` writes one JSON object per line, no colour escapes reach a pipe, a failing
//! start says why exactly once with the documented exit status, `--help` documents the
//! environment, and a stray `MTDGATE_*` variable is not taken for configuration.

use std::path::PathBuf;
use std::process::{Command, Output};

fn mtdgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mtdgate"));
    // The test's own environment must not decide the outcome.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("MTDGATE_") || k == "RUST_LOG" || k == "NO_COLOR" {
            c.env_remove(k);
        }
    }
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration file of this test's own.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("mtdgate-cli-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn bad_config_value_is_reported_once_with_status_2() {
    let path = config_file("bad", "[processing]\nmax_batch = \"lots\"\n");
    let out = mtdgate()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(count(&err, "max_batch"), 1, "{err}");
    assert_eq!(count(&err, "expected usize"), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains("\x1b["), "no colour when piped: {err:?}");

    let out = mtdgate()
        .args(["run", "--config", "/nonexistent/mtdgate.toml"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(count(&err, "/nonexistent/mtdgate.toml"), 1, "{err}");
    assert_eq!(count(&err, "not found"), 1, "{err}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    for how in ["flag", "env"] {
        let mut c = mtdgate();
        match how {
            "flag" => c.args(["--log-format", "json", "config"]),
            _ => c.env("MTDGATE_LOG_FORMAT", "json").arg("config"),
        };
        let out = c
            .env("MTDGATE_PROCESSING__OUTPUT_ENCODING", "xml")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{how}: {err}");
        assert!(!err.trim().is_empty(), "{how}");
        let mut fatal = 0;
        for line in err.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{how}: not one JSON object per line ({e}): {line}"));
            assert!(v.is_object(), "{line}");
            if v["level"] == "ERROR" {
                fatal += 1;
                let msg = v["message"].as_str().unwrap();
                assert_eq!(
                    count(msg, "MTDGATE_PROCESSING__OUTPUT_ENCODING"),
                    1,
                    "the variable, named once: {line}"
                );
                assert_eq!(v["exit_code"], 2, "{line}");
            }
        }
        assert_eq!(fatal, 1, "{how}: {err}");
    }
}

#[test]
fn log_format_is_checked() {
    for c in [
        mtdgate().args(["--log-format", "xml", "config"]).output(),
        mtdgate()
            .env("MTDGATE_LOG_FORMAT", "xml")
            .arg("config")
            .output(),
    ] {
        let out = c.unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("xml") && err.contains("text") && err.contains("json"),
            "{err}"
        );
    }
    let out = mtdgate().args(["run", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage status");
}

#[test]
fn unreachable_kafka_fails_once_with_status_1() {
    for format in ["text", "json"] {
        let out = mtdgate()
            .args(["--log-format", format, "run"])
            .env("MTDGATE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .env("MTDGATE_HTTP__LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{format}: {err}");
        assert_eq!(count(&err, "cannot reach Kafka at 127.0.0.1:1"), 1, "{err}");
        assert!(!err.contains("\x1b["), "no colour when piped: {err:?}");
        if format == "json" {
            for line in err.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v.is_object(), "{line}");
            }
        }
    }
}

/// Needs the broker at 127.0.0.1:9092, like the `kafka_*` tests.
#[test]
fn missing_topic_fails_once_with_status_1() {
    let topic = format!("mtdgate-cli-logs-missing-{}", std::process::id());
    let out = mtdgate()
        .arg("run")
        .env("MTDGATE_TOPICS__DEVICE_THREATS", &topic)
        .env("MTDGATE_TOPICS__CREATE", "false")
        .env("MTDGATE_HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(count(&err, "is missing"), 1, "{err}");
    assert_eq!(count(&err, "mtdgate topics create"), 1, "{err}");
}

#[test]
fn help_documents_config_environment_and_exit_codes() {
    let top = stdout(&mtdgate().arg("--help").output().unwrap());
    for want in [
        "MTDGATE_<SECTION>__<KEY>",
        "RUST_LOG",
        "--log-format",
        "Exit status",
    ] {
        assert!(top.contains(want), "mtdgate --help lacks {want}:\n{top}");
    }
    for cmd in [
        &["run"][..],
        &["config"],
        &["topics", "create"],
        &["simulate"],
        &["demo"],
    ] {
        let out = mtdgate().args(cmd).arg("--help").output().unwrap();
        assert!(out.status.success());
        let help = stdout(&out);
        for want in [
            "MTDGATE_<SECTION>__<KEY>",
            "MTDGATE_KAFKA__BOOTSTRAP_SERVERS=broker:9092",
            "kafka",
            "topics",
            "processing",
            "http",
            "schema_registry",
            "README.md, \"Configuration\"",
            "RUST_LOG",
            "--log-format",
            "Exit status",
        ] {
            assert!(help.contains(want), "{cmd:?} --help lacks {want}:\n{help}");
        }
    }
}

#[test]
fn only_section_key_variables_are_configuration() {
    let out = mtdgate()
        .arg("config")
        .env("MTDGATE_SRC", "/opt/src")
        .env("MTDGATE_BENCH_CLOCK", "thread-cpu")
        .env("MTDGATE_LOG_FORMAT", "text")
        .env("MTDGATE_SRC__DIR", "/opt/src")
        .env("MTDGATE_KAFKA__BOOTSTRAP_SERVERS", "broker:9093")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("bootstrap_servers = \"broker:9093\""),
        "{}",
        stdout(&out)
    );
    // A mistyped key in a known section is still refused, naming the variable.
    let out = mtdgate()
        .arg("config")
        .env("MTDGATE_KAFKA__BOOTSTRAP_SERVRES", "broker:9093")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(count(&err, "MTDGATE_KAFKA__BOOTSTRAP_SERVRES"), 1, "{err}");
}
