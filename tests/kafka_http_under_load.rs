//! The HTTP surface never waits for the pipeline (issue 12), on the real broker.
//!
//! The changelog of tenant `acme` holds 200,000 device states (Avro single-object
//! `DeviceStateRecord`s, each in its key's partition, written as the service writes them). The
//! service starts with its HTTP listener on a free port and restores them. Throughout the
//! restore (and the reconcile that follows it), one thread asks for `/healthz`, `/readyz` and
//! `/metrics` every 50 ms and another keeps asking the explain API about restored devices and
//! the tenant's connectors. Every health, readiness and metrics answer comes within 100 ms;
//! every explain call answers 200, 404 or a 503 with a JSON body (busy or restoring) and a
//! `Retry-After`, within its 2 s bound. Once ready, a report on a restored device produces
//! the change its restored state implies (COMPLIANT -> NONCOMPLIANT), so processing went on
//! unaffected.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use support::*;

use mtdgate::codec::{self, OutputEncoding};
use mtdgate::engine::partitioner::partition_for;
use mtdgate::model::*;
use mtdgate::runtime::Status;

/// Device states in the changelog: the issue asks for a restore of at least 200,000.
const DEVICES: usize = 200_000;
/// Every health and metrics answer must come within this.
const BOUND: Duration = Duration::from_millis(100);
const POLL_EVERY: Duration = Duration::from_millis(50);

fn device_id(i: usize) -> String {
    format!("d{i:06}")
}

/// Device `i`: iOS, enrolled (MDM), Lookout's latest report SECURED, COMPLIANT, as the engine
/// keeps it under [`compliance_tables`] with max LOW.
fn state(i: usize, now: i64) -> DeviceStateRecord {
    DeviceStateRecord {
        tenant_id: "acme".into(),
        device_id: device_id(i),
        user_id: Some(format!("u{}", i % 1_000)),
        platform: Platform::Ios,
        management: Management::Mdm,
        ownership: Some(Ownership::Corporate),
        os_version: Some("17.4".into()),
        enrolled: true,
        compliance: ComplianceState::Compliant,
        mam_blocked: false,
        mam_wipe_incident: false,
        output_seq: 1,
        partners: vec![PartnerObservation {
            partner_id: "lookout".into(),
            health_state: HealthState::Secured,
            observed_at: now - 60_000,
            event_fingerprint: i as i32,
            threats: Vec::new(),
            earlier_event_fingerprints: Vec::new(),
        }],
        graces: Vec::new(),
    }
}

/// Writes the changelog as the service's changelog producer does (lz4, large batches, each
/// record in its key's partition).
fn write_changelog(topic: &str, partitions: i32, now: i64) {
    let producer: BaseProducer = client(broker())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .unwrap();
    let mut buf = Vec::with_capacity(256);
    for i in 0..DEVICES {
        let r = state(i, now);
        buf.clear();
        codec::encode(&r, OutputEncoding::Avro, &mut buf).unwrap();
        let key = format!("acme/{}", r.device_id);
        let partition = partition_for(key.as_bytes(), partitions);
        let mut record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(&buf[..])
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    // Queue full: serve delivery reports, then try again.
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// What the health poller saw: per path, answers and the slowest; answers taken while the
/// service was restoring.
#[derive(Default, Debug)]
struct Probes {
    answers: usize,
    during_restore: usize,
    slowest: [(Duration, &'static str); 3],
    slow: Vec<(String, Duration)>,
    failures: Vec<String>,
}

/// What the explain caller saw.
#[derive(Default, Debug)]
struct Explains {
    ok: usize,
    not_found: usize,
    busy: usize,
    restoring: usize,
    during_restore: usize,
    slowest: Duration,
    failures: Vec<String>,
}

#[test]
fn health_and_metrics_answer_at_once_while_200k_devices_restore() {
    let t0 = Instant::now();
    let mut cfg = test_config("http-load");
    cfg.http.listen = format!("127.0.0.1:{}", free_port());
    create_topics(&cfg);
    let now = now_ms();
    let gw = Gateway::new();
    gw.send_all(&compliance_tables(&cfg, "LOW", now));
    gw.flush();
    write_changelog(&cfg.topics.device_state, cfg.topics.partitions, now);
    eprintln!(
        "[{:.1} s] changelog of {DEVICES} device states written",
        t0.elapsed().as_secs_f64()
    );

    let status = Arc::new(Status::default());
    let addr = mtdgate::service::start_http(&cfg, status.clone()).unwrap();
    let base = format!("http://{addr}");
    wait_http_ok(&format!("{base}/healthz"), Duration::from_secs(5));

    let done = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(Mutex::new(Probes::default()));
    let poller = {
        let (base, done, probes, status) =
            (base.clone(), done.clone(), probes.clone(), status.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let tick = Instant::now();
                let restoring = status.restoring();
                for (i, path) in ["/healthz", "/readyz", "/metrics"].into_iter().enumerate() {
                    let started = Instant::now();
                    let answer = http_get(&format!("{base}{path}"), None);
                    let took = started.elapsed();
                    let mut p = probes.lock().unwrap();
                    p.answers += 1;
                    p.during_restore += restoring as usize;
                    if took > p.slowest[i].0 {
                        p.slowest[i] = (took, path);
                    }
                    if took >= BOUND {
                        p.slow.push((path.to_owned(), took));
                    }
                    match answer {
                        Ok((200, body)) if path != "/metrics" || body.contains("mtdgate_") => {}
                        Ok((503, body)) if path == "/readyz" && body.starts_with("not ready") => {}
                        other => p.failures.push(format!("{path}: {other:?}")),
                    }
                }
                std::thread::sleep(POLL_EVERY.saturating_sub(tick.elapsed()));
            }
        })
    };
    let explains = Arc::new(Mutex::new(Explains::default()));
    let explainer = {
        let (base, done, explains, status) =
            (base.clone(), done.clone(), explains.clone(), status.clone());
        std::thread::spawn(move || {
            let mut k = 0usize;
            while !done.load(Ordering::SeqCst) {
                k += 1;
                let path = if k % 5 == 0 {
                    "/v1/tenants/acme/connectors".to_owned()
                } else {
                    // Devices all over the changelog, so all over the partitions.
                    let i = (k * 7_919) % DEVICES;
                    format!("/v1/tenants/acme/devices/{}", device_id(i))
                };
                let restoring = status.restoring();
                let started = Instant::now();
                let answer = http_get(&format!("{base}{path}"), None);
                let took = started.elapsed();
                let mut x = explains.lock().unwrap();
                x.during_restore += restoring as usize;
                x.slowest = x.slowest.max(took);
                match answer {
                    Ok((200, body)) if serde_json::from_str::<Value>(&body).is_ok() => x.ok += 1,
                    Ok((404, body)) if body.contains("not held") => x.not_found += 1,
                    Ok((503, body)) => match serde_json::from_str::<Value>(&body) {
                        Ok(v) if v["error"] == "busy" => x.busy += 1,
                        Ok(v) if v["error"] == "restoring" || v["error"] == "not_started" => {
                            x.restoring += 1
                        }
                        _ => x.failures.push(format!("{path}: 503 {body}")),
                    },
                    other => x.failures.push(format!("{path}: {other:?}")),
                }
                drop(x);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let started = Instant::now();
    let svc = Service::start_with_status(&cfg, status.clone());
    let restore_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "[{:.1} s] ready after {restore_secs:.1} s (tables, assignment, restore, reconcile)",
        t0.elapsed().as_secs_f64()
    );
    // A little longer with the service ready and processing.
    std::thread::sleep(Duration::from_millis(500));

    // Processing unaffected: a restored device's state is the one its report is judged on.
    let device = device_id(4_242);
    let (code, body) = http_get(&format!("{base}/v1/tenants/acme/devices/{device}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let x: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(x["compliance"], "COMPLIANT", "{x}");
    assert_eq!(x["enrolled"], true, "{x}");
    let mut changes = Reader::new(&cfg.topics.compliance_changes);
    let report = report_json("r-high", "lookout", &device, "MDM", "HIGH", svc.now());
    gw.send(
        &cfg.topics.device_threats,
        &format!("acme/{device}"),
        Some(&report),
    );
    gw.flush();
    let key = format!("acme/{device}");
    let records = changes.wait_until(
        "the report's compliance change",
        Duration::from_secs(30),
        |r| r.iter().any(|(k, _)| *k == key),
    );
    let change = &records.iter().find(|(k, _)| *k == key).unwrap().1;
    assert_eq!(change["previous"], "COMPLIANT", "{change}");
    assert_eq!(change["current"], "NONCOMPLIANT", "{change}");
    assert_eq!(
        records.len(),
        1,
        "reconcile found every restored device as restored: {records:?}"
    );

    done.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    explainer.join().unwrap();
    let p = probes.lock().unwrap();
    let x = explains.lock().unwrap();
    eprintln!(
        "[{:.1} s] health/readiness/metrics: {} answers ({} while restoring), slowest {:?}; \
         explain: {} ok, {} not found, {} busy, {} restoring ({} calls while restoring), \
         slowest {:?}",
        t0.elapsed().as_secs_f64(),
        p.answers,
        p.during_restore,
        p.slowest,
        x.ok,
        x.not_found,
        x.busy,
        x.restoring,
        x.during_restore,
        x.slowest
    );
    assert!(p.failures.is_empty(), "{:#?}", p.failures);
    assert!(p.slow.is_empty(), "answers over {BOUND:?}: {:?}", p.slow);
    // The probes really ran while the service restored (every 50 ms, three paths).
    assert!(p.during_restore >= 30, "{p:?}");
    assert!(x.failures.is_empty(), "{:#?}", x.failures);
    assert!(x.during_restore >= 10, "{x:?}");
    assert!(x.ok > 0, "{x:?}");
    // Within the 2 s bound of an explain call, plus the HTTP exchange.
    assert!(x.slowest < Duration::from_millis(2_500), "{x:?}");
    svc.stop();
}
