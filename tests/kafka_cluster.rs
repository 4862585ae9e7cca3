//! Scale-out and crash tests on the real broker: two instances in one group with partitions
//! moving while events flow, an instance killed with SIGKILL mid-stream, and a run driven only
//! by kcat as an outside client would.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::world;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn setup_tenant(gw: &Gateway, cfg: &mtdgate::config::Config) {
    setup_mam_tenant(gw, cfg, now_ms());
}

fn send_round(gw: &Gateway, cfg: &mtdgate::config::Config, round: usize, devices: usize) {
    gw.send_all(&mam_round(cfg, round, devices));
    gw.flush();
}

/// Every device must see exactly BLOCK, UNBLOCK, BLOCK, ... for `rounds` rounds: a lost output
/// leaves a gap, a duplicate repeats an action, lost state skips an UNBLOCK.
/// Two instances in one group: the second joins and later the first leaves while events flow;
/// a read_committed reader sees every expected output exactly once, and devices that moved keep
/// their state (an UNBLOCK needs the BLOCK remembered by the previous owner).
#[test]
fn two_instances_partitions_move_exactly_once() {
    let mut cfg = test_config("scale");
    cfg.topics.partitions = 6;
    create_topics(&cfg);
    let gw = Gateway::new();
    setup_tenant(&gw, &cfg);
    let devices = 60;
    let a = Service::start(&cfg);
    send_round(&gw, &cfg, 0, devices);

    let mut cfg_b = cfg.clone();
    cfg_b.kafka.instance_id = format!("{}-b", cfg.kafka.instance_id);
    std::thread::sleep(Duration::from_millis(300));
    let b_thread = std::thread::spawn(move || Service::start(&cfg_b));
    // Events keep flowing while the group rebalances.
    send_round(&gw, &cfg, 1, devices);
    let b = b_thread.join().unwrap();
    send_round(&gw, &cfg, 2, devices);
    std::thread::sleep(Duration::from_millis(500));
    a.stop();
    send_round(&gw, &cfg, 3, devices);

    let mut reader = Reader::new(&cfg.topics.app_protection_actions);
    reader.wait_for(devices * 4, WAIT);
    let all = reader.drain(Duration::from_secs(2)).to_vec();
    assert_exactly_once(&all, devices, 4);
    b.stop();
}

/// An instance killed with SIGKILL mid-stream and restarted: no output lost, none duplicated.
#[test]
fn sigkill_mid_stream_loses_and_duplicates_nothing() {
    let mut cfg = test_config("kill");
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.processing.commit_interval_ms = 200;
    create_topics(&cfg);
    let gw = Gateway::new();
    setup_tenant(&gw, &cfg);
    let devices = 200;
    let rounds = 6;
    let p = Process::start(&cfg, "kill-1");
    for round in 0..3 {
        send_round(&gw, &cfg, round, devices);
        std::thread::sleep(Duration::from_millis(150));
    }
    // Kill while the third round is being processed.
    p.kill();
    for round in 3..rounds {
        send_round(&gw, &cfg, round, devices);
    }
    let p = Process::start(&cfg, "kill-2");
    let mut reader = Reader::new(&cfg.topics.app_protection_actions);
    reader.wait_for(devices * rounds, Duration::from_secs(90));
    let all = reader.drain(Duration::from_secs(2)).to_vec();
    assert_exactly_once(&all, devices, rounds);
    assert!(p.terminate().success(), "clean exit on SIGTERM");
}

/// Driven only by kcat: JSON inputs produced with kcat, outputs read with kcat (read_committed).
#[test]
fn kcat_as_outside_client() {
    let mut cfg = test_config("kcat");
    cfg.http.listen = "127.0.0.1:0".into();
    create_topics(&cfg);
    let p = Process::start(&cfg, "kcat");
    let t = &cfg.topics;
    let now = now_ms();
    let kcat_produce = |topic: &str, lines: &[String]| {
        let mut child = Command::new("kcat")
            .args([
                "-b",
                broker(),
                "-P",
                "-t",
                topic,
                "-K",
                "|",
                "-X",
                "partitioner=murmur2_random",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("kcat installed (scripts/install-deps)");
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
    };
    kcat_produce(
        &t.connectors,
        &[format!(
            r#"acme/lookout|{{"tenant_id":"acme","partner_id":"lookout","provisioned":true,"setup_complete":true,"android_enabled":true,"updated_at":{now}}}"#
        )],
    );
    kcat_produce(
        &t.policies,
        &[format!(
            r#"acme/cp|{{"tenant_id":"acme","policy_id":"cp","kind":"COMPLIANCE","platform":"ANDROID","max_level":"LOW","updated_at":{now}}}"#
        )],
    );
    kcat_produce(
        &t.connector_heartbeats,
        &[format!(
            r#"acme/lookout|{{"tenant_id":"acme","partner_id":"lookout","sent_at":{now}}}"#
        )],
    );
    std::thread::sleep(Duration::from_secs(2));
    kcat_produce(
        &t.device_threats,
        &[
            format!(
                r#"acme/k1|{{"event_id":"k1","tenant_id":"acme","partner_id":"lookout","device_id":"k1","platform":"ANDROID","management":"MDM","health_state":"MEDIUM","observed_at":{now}}}"#
            ),
            "acme/k2|{not json".to_owned(),
            format!(
                r#"acme/k3|{{"event_id":"k3","tenant_id":"acme","partner_id":"lookout","device_id":"k3","platform":"ANDROID","management":"MDM","health_state":"PURPLE","observed_at":{now}}}"#
            ),
        ],
    );
    let kcat_read = |topic: &str, n: usize| -> Vec<Value> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let out = Command::new("kcat")
                .args([
                    "-b",
                    broker(),
                    "-C",
                    "-t",
                    topic,
                    "-o",
                    "beginning",
                    "-e",
                    "-q",
                    "-X",
                    "isolation.level=read_committed",
                    "-f",
                    "%s\n",
                ])
                .output()
                .unwrap();
            let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if rows.len() >= n || std::time::Instant::now() > deadline {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let changes = kcat_read(&t.compliance_changes, 1);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["current"], "NONCOMPLIANT");
    assert_eq!(changes[0]["device_id"], "k1");
    let rejected = kcat_read(&t.rejected, 2);
    let mut rejected = rejected;
    rejected.sort_by_key(|r| r["key"].as_str().unwrap().to_owned());
    let reasons: Vec<_> = rejected
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons,
        vec!["UNDECODABLE", "INVALID_FIELD"],
        "{rejected:?}"
    );
    assert!(
        rejected[1]["detail"]
            .as_str()
            .unwrap()
            .contains("health_state"),
        "{}",
        rejected[1]["detail"]
    );
    assert!(
        rejected[1]["detail"].as_str().unwrap().contains("PURPLE"),
        "{}",
        rejected[1]["detail"]
    );
    let status = kcat_read(&t.connector_status, 1);
    assert_eq!(status[0]["current"], "ENABLED");
    assert!(p.terminate().success());
}

/// A zombie with the service's transactional id fences its producer mid-stream: the pipeline
/// is rebuilt from committed state and nothing is lost or duplicated.
#[test]
fn fenced_producer_is_rebuilt_without_loss() {
    use rdkafka::producer::{BaseProducer, Producer};
    let cfg = test_config("fence");
    create_topics(&cfg);
    let gw = Gateway::new();
    setup_tenant(&gw, &cfg);
    let devices = 50;
    let rounds = 4;
    let svc = Service::start(&cfg);
    send_round(&gw, &cfg, 0, devices);
    std::thread::sleep(Duration::from_millis(300));
    let zombie: BaseProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set(
            "transactional.id",
            format!(
                "{}-{}",
                cfg.kafka.transactional_id_prefix, cfg.kafka.instance_id
            ),
        )
        .create()
        .unwrap();
    zombie.init_transactions(Duration::from_secs(30)).unwrap();
    for round in 1..rounds {
        send_round(&gw, &cfg, round, devices);
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut reader = Reader::new(&cfg.topics.app_protection_actions);
    reader.wait_for(devices * rounds, WAIT);
    let all = reader.drain(Duration::from_secs(2)).to_vec();
    assert_exactly_once(&all, devices, rounds);
    svc.stop();
}

/// Chaos: two instances in one group over a long stream, killed with SIGKILL at seeded random
/// points and restarted, several times. Every expected output appears exactly once, and the
/// final state of every device (read from the changelog) equals a replay of the same input
/// through the pure engine.
#[test]
fn chaos_random_sigkills_two_instances() {
    use mtdgate::engine::{Body, Engine};
    use mtdgate::model::{DeviceStateRecord, DeviceThreatReport};
    let mut cfg = test_config("chaos");
    cfg.topics.partitions = 4;
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.processing.commit_interval_ms = 100;
    create_topics(&cfg);
    let gw = Gateway::new();
    setup_tenant(&gw, &cfg);
    let devices = 120;
    let rounds = 12;
    let mut cfg_b = cfg.clone();
    cfg_b.kafka.instance_id = format!("{}-b", cfg.kafka.instance_id);
    let mut a = Some(Process::start(&cfg, "chaos-a"));
    let mut b = Some(Process::start(&cfg_b, "chaos-b"));
    // A small deterministic generator: the same kill schedule on every run.
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sent: Vec<(String, DeviceThreatReport)> = Vec::new();
    for round in 0..rounds {
        let records = mam_round(&cfg, round, devices);
        for (_, key, r) in &records {
            sent.push((key.clone(), serde_json::from_value(r.clone()).unwrap()));
        }
        gw.send_all(&records);
        gw.flush();
        std::thread::sleep(Duration::from_millis(next() % 400));
        match next() % 3 {
            0 => {
                a.take().unwrap().kill();
                std::thread::sleep(Duration::from_millis(next() % 500));
                a = Some(Process::start(&cfg, "chaos-a"));
            }
            1 => {
                b.take().unwrap().kill();
                std::thread::sleep(Duration::from_millis(next() % 500));
                b = Some(Process::start(&cfg_b, "chaos-b"));
            }
            _ => {}
        }
    }
    let mut reader = Reader::new(&cfg.topics.app_protection_actions);
    reader.wait_for(devices * rounds, Duration::from_secs(180));
    let all = reader.drain(Duration::from_secs(3)).to_vec();
    assert_exactly_once(&all, devices, rounds);
    assert!(a.take().unwrap().terminate().success());
    assert!(b.take().unwrap().terminate().success());

    // The final changelog state per device...
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", format!("chaos-state-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[&cfg.topics.device_state]).unwrap();
    let mut state: BTreeMap<String, DeviceStateRecord> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut idle = 0;
    while std::time::Instant::now() < deadline && idle < 20 {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle = 0;
                // Connector statuses published share the changelog; devices are compared.
                if mtdgate::engine::ownership::is_status_key(m.key().unwrap()) {
                    continue;
                }
                // A changelog batch holds device states as if written at its place.
                if mtdgate::runtime::changelog_batches::is_batch_key(m.key().unwrap()) {
                    if let Some(v) = m.payload() {
                        let entries = mtdgate::runtime::changelog_batches::chunk_entries(v);
                        for (k, v) in entries.unwrap() {
                            let rec = mtdgate::codec::decode::<DeviceStateRecord>(&v).unwrap();
                            state.insert(String::from_utf8_lossy(&k).into_owned(), rec);
                        }
                    }
                    continue;
                }
                let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
                let rec =
                    mtdgate::codec::decode::<DeviceStateRecord>(m.payload().unwrap()).unwrap();
                state.insert(key, rec);
            }
            _ => idle += 1,
        }
    }
    // ...equals a replay of the same input through the pure engine.
    let catalogue = std::sync::Arc::new(mtdgate::runtime::load_catalogue(&cfg).unwrap());
    let mut engine = Engine::new(catalogue, Default::default());
    let now = now_ms();
    // The MAM tenant's connector settings and policy (the replay needs no heartbeat).
    let tables = world::Tables {
        heartbeats: vec![],
        ..world::mam_tables("acme", now - 60_000, now)
    };
    let mut out = tables.apply(&mut engine, now);
    for (key, r) in &sent {
        let body = Body::Threat(r.clone());
        world::apply(&mut engine, 0, key, body, now, &mut out);
    }
    assert_eq!(state.len(), devices);
    for d in 0..devices {
        let replayed = engine.device_record(0, "acme", &format!("m{d}")).unwrap();
        let stored = &state[&format!("acme/m{d}")];
        assert_eq!(stored, &replayed, "device m{d}");
    }
}
