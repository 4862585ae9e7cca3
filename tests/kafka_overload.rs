//! Overload: a burst far above what the service processes per second waits in Kafka, not in
//! memory. Intake is paced by bounded prefetch and a bounded producer queue (a full queue
//! blocks the loop), so resident memory stays flat however large the backlog is.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        })
        .unwrap()
}

#[test]
fn a_large_backlog_does_not_grow_memory() {
    let mut cfg = test_config("overload");
    cfg.http.listen = "127.0.0.1:0".into();
    create_topics(&cfg);
    let gw = Gateway::new();
    let t = cfg.topics.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    setup_mam_tenant(&gw, &cfg, now);
    // The burst: 150,000 reports (~45 MB of input, padded with threats) for 500 devices, all
    // waiting before the service starts.
    let burst = 150_000;
    let threats: Vec<_> = (0..3).map(|i| json!({"category": "network", "name": format!("rogue-access-point-{i}-padding-padding-padding"), "severity": "HIGH"})).collect();
    for i in 0..burst {
        let d = i % 500;
        let state = if (i / 500) % 2 == 0 {
            "HIGH"
        } else {
            "SECURED"
        };
        gw.send(&t.device_threats, &format!("acme/m{d}"), Some(&json!({
            "event_id": format!("e{i}"), "tenant_id": "acme", "partner_id": "lookout", "device_id": format!("m{d}"),
            "platform": "IOS", "management": "MAM", "health_state": state, "threats": threats,
            "observed_at": now + (i / 500) as i64,
        })));
    }
    gw.flush();
    drop(gw);
    let process = Process::start(&cfg, "overload");
    let pid = process.child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if s.contains("VmRSS") {
                        peak.fetch_max(rss_kb(pid), Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Every round flips all 500 devices: one action per report once all is consumed.
    let n = count_records(&t.app_protection_actions, burst, Duration::from_secs(600));
    assert_eq!(n, burst);
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak_mb = peak.load(Ordering::SeqCst) as f64 / 1024.0;
    println!("peak resident memory {peak_mb:.1} MB while draining a backlog of {burst} records");
    // The backlog is ~45 MB of input plus as much output; bounded intake keeps the whole
    // process (librdkafka buffers included) under a fixed bound.
    assert!(peak_mb < 200.0, "peak resident memory {peak_mb:.1} MB");
    assert!(process.terminate().success());
}

/// Counts committed records on `topic` without keeping them.
fn count_records(topic: &str, want: usize, timeout: Duration) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", format!("count-{topic}"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut n = 0;
    while n < want && std::time::Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(200)) {
            n += 1;
        }
    }
    n
}
