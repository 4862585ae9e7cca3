//! The broker stopped and started again mid-stream. This test runs its own broker (a third
//! instance of `scripts/kafka`, port 29092, data dir /tmp/mtdgate-kafka-restart), so stopping
//! it disturbs no other test; it is stopped and wiped at the end.
//!
//! The service (a process, as deployed) evaluates a stream of alternating HIGH / SECURED
//! reports for MAM devices, so each device must see exactly BLOCK, UNBLOCK, BLOCK, ...; the
//! broker is stopped with `scripts/kafka stop` while a round is in flight, a round is produced
//! while it is down, and the stream goes on once it is back. A read_committed reader then sees
//! every device's action sequence exactly as expected: nothing lost, nothing duplicated, no
//! state forgotten. The service must have noticed the outage (its log names the broker it
//! lost) and recovered by itself (it answers /readyz again and keeps processing).

mod support;

use std::time::{Duration, Instant};

use mtdgate::config::Config;
use support::{
    assert_exactly_once, client, create_topics, free_port, http_get, mam_round, mam_tenant_records,
    now_ms, Gateway, Process, Reader, ScriptBroker,
};

const PORT: u16 = 29092;
const DIR: &str = "/tmp/mtdgate-kafka-restart";
const DEVICES: usize = 60;
const ROUNDS: usize = 6;

fn bootstrap() -> String {
    format!("127.0.0.1:{PORT}")
}

/// A configuration with unique topic names on this test's broker.
fn restart_config(http_port: u16) -> Config {
    let mut c = support::config_on(&bootstrap(), "restart");
    c.processing.commit_interval_ms = 100;
    c.http.listen = format!("127.0.0.1:{http_port}");
    c
}

/// A vendor gateway: murmur2 partitioning, idempotent (a retry after the outage neither
/// duplicates nor reorders), and patient (records wait in its queue while the broker is down).
fn gateway() -> Gateway {
    let mut c = client(&bootstrap());
    c.set("enable.idempotence", "true")
        .set("message.timeout.ms", "300000")
        .set("linger.ms", "5");
    Gateway::on(c)
}

/// Every device sees exactly BLOCK, UNBLOCK, BLOCK, ... for `rounds` rounds, each action id
/// once: the actions once `n` arrived, and 3 s more (a duplicate would come now).
fn read_actions(topic: &str, n: usize, timeout: Duration) -> Vec<(String, serde_json::Value)> {
    let mut reader = Reader::on(client(&bootstrap()), topic);
    reader.wait_for(n, timeout);
    reader.drain(Duration::from_secs(3)).to_vec()
}

/// Waits until the service's log satisfies `done`.
fn wait_log(log: &std::path::Path, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if done(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn broker_stopped_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("{:6.1} s  {what}", started.elapsed().as_secs_f64());
    let broker = ScriptBroker::start(PORT, DIR, Vec::new(), &[]);
    phase("broker up");
    let http_port = free_port();
    let cfg = restart_config(http_port);
    let http = cfg.http.listen.clone();
    create_topics(&cfg);
    let gw = gateway();
    let now = now_ms();
    let t = &cfg.topics;
    gw.send_all(&mam_tenant_records(&cfg, now));
    gw.flush();

    let p = Process::start(&cfg, "broker-restart");
    let log = std::env::temp_dir()
        .join("mtdgate-tests")
        .join(format!("broker-restart-{}.log", std::process::id()));
    wait_log(
        &log,
        "tables loaded, partitions restored",
        Duration::from_secs(60),
        |t| t.contains("tables loaded") && t.contains("restored partition state"),
    );
    phase("service ready");
    for round in 0..3 {
        gw.send_all(&mam_round(&cfg, round, DEVICES));
        gw.flush();
        std::thread::sleep(Duration::from_millis(300));
    }
    // Round 2 is still being processed (or its transaction committed) when the broker goes.
    let log_before = std::fs::read_to_string(&log).unwrap_or_default().len();
    phase("rounds 0-2 sent; stopping the broker");
    broker.run(&["stop"]);
    phase("broker stopped");
    // Produced while the broker is down: waits in the gateway's queue.
    gw.send_all(&mam_round(&cfg, 3, DEVICES));
    std::thread::sleep(Duration::from_secs(4));
    broker.run(&["start"]);
    phase("broker started again");
    for round in 4..ROUNDS {
        gw.send_all(&mam_round(&cfg, round, DEVICES));
        gw.flush_within(Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(200));
    }
    phase("rounds 3-5 delivered");

    let all = read_actions(
        &t.app_protection_actions,
        DEVICES * ROUNDS,
        Duration::from_secs(120),
    );
    phase(&format!("{} actions read", all.len()));
    assert_exactly_once(&all, DEVICES, ROUNDS);

    // The outage was noticed and logged; the service recovered by itself (the rounds after
    // the restart were processed above, by the same process).
    let text = std::fs::read_to_string(&log).unwrap();
    let during = &text[log_before.min(text.len())..];
    assert!(
        during.contains(&format!("127.0.0.1:{PORT}"))
            && (during.contains("Connection refused")
                || during.contains("Disconnected")
                || during.contains("transport failure")),
        "the service log says nothing of the lost broker:\n{during}"
    );
    let restarts = during
        .matches("pipeline failed; restarting from committed state")
        .count();
    // `/metrics`, where the binary serves it.
    let metric = http_get(&format!("http://{http}/metrics"), None)
        .ok()
        .and_then(|(_, m)| {
            m.lines()
                .find(|l| l.starts_with("mtdgate_pipeline_restarts_total"))
                .map(str::to_owned)
        });
    eprintln!(
        "pipeline restarts logged during the outage: {restarts}; /metrics: {}",
        metric.as_deref().unwrap_or("not served")
    );
    assert!(p.terminate().success(), "clean exit on SIGTERM");
    phase("done");
}
