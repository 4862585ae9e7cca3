//! Fault injection with librdkafka's mock cluster: request errors on produce, offset commit and
//! transaction calls, a coordinator move and a broker down and up mid-stream. The pipeline must
//! recover without loss. (The mock cluster writes no abort markers, so a reader may see records
//! of aborted transactions: outputs are compared after de-duplication by their deterministic id,
//! which is exactly what a consumer of a replay would do. Fatal transaction errors are tested on
//! the real broker instead (`kafka_cluster.rs`): the mock keeps records of aborted transactions,
//! so recovery from an abort cannot be judged on it.)

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::{json, Value};
use support::Service;

use mtdgate::config::Config;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn pipeline_recovers_from_injected_faults_without_loss() {
    let mock = MockCluster::new(3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let mut cfg = Config::default();
    cfg.kafka.bootstrap_servers = bootstrap.clone();
    cfg.kafka.group_id = "mock-faults".into();
    cfg.kafka.instance_id = "mock-1".into();
    cfg.topics.partitions = 3;
    cfg.processing.commit_interval_ms = 50;
    let catalogue = mtdgate::runtime::load_catalogue(&cfg).unwrap();
    for (topic, _) in mtdgate::runtime::kafka::all_topics(&cfg, &catalogue) {
        mock.create_topic(&topic, 3, 1).unwrap();
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let send = |topic: &str, key: &str, v: &Value| {
        let payload = serde_json::to_vec(v).unwrap();
        producer
            .send(
                BaseRecord::<str, [u8]>::to(topic)
                    .key(key)
                    .payload(&payload),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    };
    let t = cfg.topics.clone();
    let now = now_ms();
    send(
        &t.connectors,
        "acme/lookout",
        &json!({"tenant_id": "acme", "partner_id": "lookout", "provisioned": true, "setup_complete": true, "ios_mam_enabled": true, "updated_at": now}),
    );
    send(
        &t.policies,
        "acme/block",
        &json!({"tenant_id": "acme", "policy_id": "block", "kind": "APP_PROTECTION", "platform": "IOS", "max_level": "LOW", "action": "BLOCK", "updated_at": now}),
    );
    send(
        &t.connector_heartbeats,
        "acme/lookout",
        &json!({"tenant_id": "acme", "partner_id": "lookout", "sent_at": now}),
    );
    producer.flush(Duration::from_secs(10)).unwrap();

    let svc = Service::start(&cfg);
    let devices = 30;
    let rounds = 6;
    let round = |r: usize| {
        for d in 0..devices {
            let state = if r % 2 == 0 { "HIGH" } else { "SECURED" };
            send(
                &t.device_threats,
                &format!("acme/m{d}"),
                &json!({
                    "event_id": format!("r{r}-m{d}"), "tenant_id": "acme", "partner_id": "lookout",
                    "device_id": format!("m{d}"), "platform": "IOS", "management": "MAM",
                    "health_state": state, "threats": [], "observed_at": now_ms(),
                }),
            );
        }
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    round(0);
    // Produce requests fail a few times (retriable).
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    round(1);
    std::thread::sleep(Duration::from_millis(500));
    // Transactional offset commits and transaction ends fail.
    mock.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 2],
    );
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 2],
    );
    round(2);
    std::thread::sleep(Duration::from_millis(500));
    // The transaction coordinator moves.
    mock.coordinator(
        MockCoordinator::Transaction(format!("mtdgate-{}", cfg.kafka.instance_id)),
        2,
    )
    .unwrap();
    round(3);
    std::thread::sleep(Duration::from_millis(500));
    // A broker goes down and comes back.
    mock.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    mock.broker_up(1).unwrap();
    round(4);
    round(5);

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "mock-reader")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    reader.subscribe(&[&t.app_protection_actions]).unwrap();
    let mut ids = HashSet::new();
    let mut per_device: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids.len() < devices * rounds {
        assert!(
            Instant::now() < deadline,
            "only {} of {} distinct actions arrived: {per_device:?}",
            ids.len(),
            devices * rounds
        );
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if ids.insert(v["action_id"].as_str().unwrap().to_owned()) {
                let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
                per_device
                    .entry(key)
                    .or_default()
                    .push((m.offset(), v["action"].as_str().unwrap().to_owned()));
            }
        }
    }
    let expected: Vec<String> = (0..rounds)
        .map(|r| if r % 2 == 0 { "BLOCK" } else { "UNBLOCK" }.to_owned())
        .collect();
    for (device, actions) in per_device {
        let got: Vec<String> = actions.into_iter().map(|(_, a)| a).collect();
        assert_eq!(got, expected, "device {device}");
    }
    svc.stop();
}
