//! `bench --diag`: where produce -> visible time goes on this broker, one record at a time.
//! Probes: a plain (non-transactional) produce seen by a read_committed reader; the same seen
//! by a reader with mtdgate's consumer settings; a one-record transaction (commit duration and
//! visibility).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use mtdgate::runtime::kafka::{consumer_config, producer_config};

use super::kafka::{flush, warm, BenchEnv};

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn wait_one(c: &BaseConsumer) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = c.poll(Duration::from_millis(5)) {
            r?;
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "record not seen within 10 s");
    }
}

fn show(name: &str, v: &mut [f64]) {
    println!(
        "  {name}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms ({} samples)",
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 1.0),
        v.len()
    );
}

pub fn run(env: &BenchEnv, samples: usize) -> anyhow::Result<()> {
    let plain = env.topic("diag.plain");
    let txn = env.topic("diag.txn");
    env.create_topic(&plain, 1, false)?;
    env.create_topic(&txn, 1, false)?;
    let cfg = env.config("diag", true);

    let reader = env.reader(&plain, 1)?;
    let mtd_reader: BaseConsumer = {
        let mut c = consumer_config(&cfg);
        c.set("group.id", "bench-diag");
        c.create()?
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&plain, 0, Offset::Beginning)?;
    mtd_reader.assign(&tpl)?;
    warm(&reader, Duration::from_secs(1));
    warm(&mtd_reader, Duration::from_secs(1));
    let producer = env.producer()?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let t0 = Instant::now();
        let k = i.to_string();
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&plain)
                    .key(k.as_bytes())
                    .payload(b"x"),
            )
            .map_err(|(e, _)| e)?;
        producer.poll(Duration::ZERO);
        let seen = wait_one(&reader)?;
        let seen2 = wait_one(&mtd_reader)?;
        a.push((seen - t0).as_secs_f64() * 1e3);
        b.push((seen2 - t0).as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    flush(&producer)?;
    show(
        "plain produce -> bench reader (fetch.wait.max.ms=10)",
        &mut a,
    );
    show("plain produce -> mtdgate's consumer settings", &mut b);

    let reader = env.reader(&txn, 1)?;
    warm(&reader, Duration::from_secs(1));
    let p: BaseProducer = producer_config(&cfg, Some("bench-diag")).create()?;
    p.init_transactions(Duration::from_secs(30))?;
    let (mut commit, mut visible) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let t0 = Instant::now();
        p.begin_transaction()?;
        let k = i.to_string();
        p.send(
            BaseRecord::<[u8], [u8]>::to(&txn)
                .key(k.as_bytes())
                .payload(b"x"),
        )
        .map_err(|(e, _)| e)?;
        let t1 = Instant::now();
        p.commit_transaction(Duration::from_secs(30))?;
        let t2 = Instant::now();
        let seen = wait_one(&reader)?;
        commit.push((t2 - t1).as_secs_f64() * 1e3);
        visible.push((seen - t0).as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    if std::env::var_os("MTDGATE_BENCH_DIAG_DEBUG").is_some() {
        // Three more transactions with librdkafka's transaction and protocol debug log.
        let mut c = cfg.clone();
        c.kafka
            .producer
            .insert("debug".into(), "eos,protocol,msg".into());
        let p: BaseProducer = producer_config(&c, Some("bench-diag-debug")).create()?;
        p.init_transactions(Duration::from_secs(30))?;
        for i in 0..3 {
            let t0 = Instant::now();
            p.begin_transaction()?;
            let k = i.to_string();
            p.send(
                BaseRecord::<[u8], [u8]>::to(&txn)
                    .key(k.as_bytes())
                    .payload(b"x"),
            )
            .map_err(|(e, _)| e)?;
            p.commit_transaction(Duration::from_secs(30))?;
            eprintln!("=== debug transaction {i}: {:?}", t0.elapsed());
        }
    }
    show("one-record transaction: commit_transaction", &mut commit);
    show(
        "one-record transaction: begin -> visible (read_committed)",
        &mut visible,
    );
    let (mut commit, mut visible) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let t0 = Instant::now();
        p.begin_transaction()?;
        let k = i.to_string();
        p.send(
            BaseRecord::<[u8], [u8]>::to(&txn)
                .key(k.as_bytes())
                .payload(b"x"),
        )
        .map_err(|(e, _)| e)?;
        let t1 = Instant::now();
        super::pipe::drain(&p, Duration::from_secs(30))?;
        p.commit_transaction(Duration::from_secs(30))?;
        let t2 = Instant::now();
        let seen = wait_one(&reader)?;
        commit.push((t2 - t1).as_secs_f64() * 1e3);
        visible.push((seen - t0).as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    show("drained, then commit_transaction", &mut commit);
    show("drained: begin -> visible (read_committed)", &mut visible);
    Ok(())
}
