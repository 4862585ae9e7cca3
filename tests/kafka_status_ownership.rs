//! Connector status changes are published exactly once while ownership moves between two
//! instances: the owner of a connector's partition writes the status it published to that
//! partition of the changelog in the same transaction, and a new owner restores it, so it
//! never publishes again what its predecessor committed, nor misses what it did not.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::broker::*;

const CONNECTORS: usize = 24;

fn tenant(i: usize) -> String {
    format!("t{i}")
}

/// Heartbeats of every connector at `at`, with `error_code` (0: clean).
fn heartbeats(cfg: &mtdgate::config::Config, at: i64, error_code: i32) -> Vec<Record> {
    (0..CONNECTORS)
        .map(|i| {
            let mut hb = json!({"tenant_id": tenant(i), "partner_id": "lookout", "sent_at": at});
            if error_code != 0 {
                hb["error_code"] = error_code.into();
            }
            (
                cfg.topics.connector_heartbeats.clone(),
                format!("{}/lookout", tenant(i)),
                hb,
            )
        })
        .collect()
}

/// The `current` statuses published per connector, in order.
fn sequences(records: &[(String, Value)]) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, v) in records {
        by.entry(key.clone())
            .or_default()
            .push(v["current"].as_str().unwrap_or_default().to_owned());
    }
    by
}

/// The connector statuses in the device-state changelog (read_committed, latest per key).
fn changelog_statuses(cfg: &mtdgate::config::Config) -> BTreeMap<String, String> {
    use mtdgate::engine::ownership::{is_status_key, STATUS_KEY_PREFIX};
    use mtdgate::model::ConnectorStatusChange;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let mut c = client(&cfg.kafka.bootstrap_servers);
    c.set(
        "group.id",
        format!("status-changelog-{}", std::process::id()),
    )
    .set("isolation.level", "read_committed")
    .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = c.create().unwrap();
    consumer.subscribe(&[&cfg.topics.device_state]).unwrap();
    let mut out = BTreeMap::new();
    let mut idle = 0;
    while idle < 30 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if is_status_key(m.key().unwrap_or_default()) => {
                idle = 0;
                let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
                let s: ConnectorStatusChange =
                    mtdgate::codec::decode(m.payload().unwrap()).unwrap();
                let status = serde_json::to_value(s.current).unwrap();
                out.insert(
                    key.trim_start_matches(STATUS_KEY_PREFIX).to_owned(),
                    status.as_str().unwrap().to_owned(),
                );
            }
            Some(Ok(_)) => idle = 0,
            _ => idle += 1,
        }
    }
    out
}

#[test]
fn connector_status_changes_are_published_once_across_ownership_moves() {
    let mut cfg = test_config("status-owner");
    cfg.topics.partitions = 6;
    create_topics(&cfg);
    let gw = Gateway::new();
    let now = now_ms();
    let tables: Vec<Record> = (0..CONNECTORS)
        .map(|i| {
            let c = connector_json(
                &tenant(i),
                "lookout",
                &["provisioned", "setup_complete", "ios_enabled"],
                now,
            );
            (
                cfg.topics.connectors.clone(),
                format!("{}/lookout", tenant(i)),
                c,
            )
        })
        .collect();
    gw.send_all(&tables);
    gw.send_all(&heartbeats(&cfg, now, 0));
    gw.flush();

    cfg.http.listen = format!("127.0.0.1:{}", free_port());
    let mut cfg_b = cfg.clone();
    cfg_b.kafka.instance_id = format!("{}-b", cfg.kafka.instance_id);
    cfg_b.http.listen = format!("127.0.0.1:{}", free_port());
    let mut a = Some(Process::start(&cfg, "status-a"));
    let mut b: Option<Process> = None;
    let mut reader = Reader::new(&cfg.topics.connector_status);
    reader.wait_for(CONNECTORS, Duration::from_secs(60));
    // Error and clean heartbeats in turn, each followed at once by an ownership move: B joins,
    // A leaves, A joins, B is killed (SIGKILL: its open transaction is aborted, not committed).
    let mut turns = 0;
    for step in 0..6 {
        let code = if step % 2 == 0 { 7 } else { 0 };
        // The change is published by the current owner in the moments the ownership moves:
        // its last transaction before a revoke, or one a SIGKILL aborts.
        gw.send_all(&heartbeats(&cfg, now + 1_000 * (step as i64 + 1), code));
        gw.flush();
        std::thread::sleep(Duration::from_millis(150));
        match step % 4 {
            0 => b = Some(Process::start(&cfg_b, &format!("status-b{step}"))),
            1 => assert!(a.take().unwrap().terminate().success()),
            2 => a = Some(Process::start(&cfg, &format!("status-a{step}"))),
            _ => b.take().unwrap().kill(),
        }
        turns += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
    // The last turn is clean: every connector ends healthy.
    let settled = |r: &[(String, Value)]| {
        let seqs = sequences(r);
        seqs.len() == CONNECTORS
            && seqs
                .values()
                .all(|s| s.len() >= 3 && s.first() == s.last() && s[0] != "ERROR")
    };
    reader.wait_until(
        "every connector healthy again",
        Duration::from_secs(90),
        settled,
    );
    let all = reader.drain(Duration::from_secs(5)).to_vec();
    let mut by: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for (key, v) in &all {
        by.entry(key.as_str()).or_default().push(v);
    }
    let mut published = 0;
    for (connector, changes) in &by {
        let healthy = changes[0]["current"].as_str().unwrap();
        for pair in changes.windows(2) {
            // Each change follows the last one published: none is published twice, and a
            // consumer never sees a "change" to the status it already has.
            assert_eq!(
                pair[1]["previous"], pair[0]["current"],
                "{connector}: {changes:#?}"
            );
            assert_ne!(
                pair[1]["current"], pair[1]["previous"],
                "{connector}: {changes:#?}"
            );
        }
        for c in changes {
            assert!(
                c["current"] == healthy || c["current"] == "ERROR",
                "{connector}: {c}"
            );
        }
        published += changes.len();
    }
    // A change undone while its partition had no owner (after the SIGKILL, until the
    // session timeout) is never seen, as if it had not happened; every other is published.
    assert!(
        published >= CONNECTORS * (1 + turns) / 2,
        "{published} changes for {turns} turns"
    );
    // The owner's changelog holds, per connector, the status last published (committed in the
    // same transactions as the publications): what a new owner restores.
    let last: BTreeMap<String, String> = by
        .iter()
        .map(|(k, c)| {
            let s = c.last().unwrap()["current"].as_str().unwrap().to_owned();
            ((*k).to_owned(), s)
        })
        .collect();
    assert_eq!(changelog_statuses(&cfg), last);
    for p in [a.take(), b.take()].into_iter().flatten() {
        assert!(p.terminate().success());
    }
}
