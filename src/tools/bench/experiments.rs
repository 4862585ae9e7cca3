//! Experiment-only parts of `mtdgate bench`, compiled with the cargo feature `experiments`
//! (off in the release binary): extra librdkafka settings for the clients under test, and
//! `bench --diag`, where produce -> visible time goes on this broker, one record at a time.
//!
//! Probes of `--diag`: a plain (non-transactional) produce seen by a read_committed reader;
//! the same seen by a reader with mtdgate's consumer settings; a one-record transaction
//! (commit duration and visibility), committed directly and after serving delivery reports.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use mtdgate::config::Config;
use mtdgate::runtime::kafka::{await_deliveries, consumer_config, producer_config};

use super::kafka::{flush, warm, BenchEnv};

/// Options for experiments.
#[derive(Debug, Clone, clap::Args)]
pub struct ExperimentArgs {
    /// Extra librdkafka consumer setting for mtdgate's, the pipes' and the restore consumers
    /// (repeatable), e.g. `--consumer-property fetch.queue.backoff.ms=10`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub consumer_property: Vec<String>,
    /// Extra librdkafka producer setting for mtdgate's and the pipes' producers (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub producer_property: Vec<String>,
    /// Instead of the benchmark: time one-record produce -> visible paths on this broker.
    #[arg(long)]
    pub diag: bool,
}

impl ExperimentArgs {
    /// `env` with the extra client settings.
    pub fn configure(&self, mut env: BenchEnv) -> anyhow::Result<BenchEnv> {
        env.consumer_properties = properties("--consumer-property", &self.consumer_property)?;
        env.producer_properties = properties("--producer-property", &self.producer_property)?;
        for (what, p) in [
            ("producer", &env.producer_properties),
            ("consumer", &env.consumer_properties),
        ] {
            if !p.is_empty() {
                println!("{what} properties: {p:?}");
            }
        }
        Ok(env)
    }
}

/// `KEY=VALUE` arguments of `flag` as pairs.
fn properties(flag: &str, args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    args.iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{flag} {p:?}: expected KEY=VALUE"))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Hands one record with key `i` to `p`.
fn send_one(p: &BaseProducer, topic: &str, i: usize) -> anyhow::Result<()> {
    let k = i.to_string();
    p.send(
        BaseRecord::<[u8], [u8]>::to(topic)
            .key(k.as_bytes())
            .payload(b"x"),
    )
    .map_err(|(e, _)| e)?;
    Ok(())
}

/// A transactional producer of `cfg` with `id`, transactions initialised.
fn transactional(cfg: &Config, id: &str) -> anyhow::Result<BaseProducer> {
    let p: BaseProducer = producer_config(cfg, Some(id)).create()?;
    p.init_transactions(Duration::from_secs(30))?;
    Ok(p)
}

/// `samples` one-record transactions on `topic`, each committed (after serving its delivery
/// reports if `drained`) and read back by `reader`; prints the commit and visibility times.
fn transactions(
    p: &BaseProducer,
    reader: &BaseConsumer,
    topic: &str,
    samples: usize,
    drained: bool,
) -> anyhow::Result<()> {
    let (mut commit, mut visible) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let t0 = Instant::now();
        p.begin_transaction()?;
        send_one(p, topic, i)?;
        let t1 = Instant::now();
        if drained {
            await_deliveries(p, Duration::from_secs(30))?;
        }
        p.commit_transaction(Duration::from_secs(30))?;
        let t2 = Instant::now();
        let seen = wait_one(reader)?;
        commit.push(ms(t2 - t1));
        visible.push(ms(seen - t0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (commit_name, visible_name) = if drained {
        (
            "drained, then commit_transaction",
            "drained: begin -> visible (read_committed)",
        )
    } else {
        (
            "one-record transaction: commit_transaction",
            "one-record transaction: begin -> visible (read_committed)",
        )
    };
    show(commit_name, &mut commit);
    show(visible_name, &mut visible);
    Ok(())
}

/// `bench --diag`: prints the probes' latencies, `samples` records each.
pub fn diag(env: &BenchEnv, samples: usize) -> anyhow::Result<()> {
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
        send_one(&producer, &plain, i)?;
        producer.poll(Duration::ZERO);
        let seen = wait_one(&reader)?;
        let seen2 = wait_one(&mtd_reader)?;
        a.push(ms(seen - t0));
        b.push(ms(seen2 - t0));
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
    let p = transactional(&cfg, "bench-diag")?;
    transactions(&p, &reader, &txn, samples, false)?;
    if std::env::var_os("MTDGATE_BENCH_DIAG_DEBUG").is_some() {
        // Three more transactions with librdkafka's transaction and protocol debug log.
        let mut c = cfg.clone();
        c.kafka
            .producer
            .insert("debug".into(), "eos,protocol,msg".into());
        let p = transactional(&c, "bench-diag-debug")?;
        for i in 0..3 {
            let t0 = Instant::now();
            p.begin_transaction()?;
            send_one(&p, &txn, i)?;
            p.commit_transaction(Duration::from_secs(30))?;
            eprintln!("=== debug transaction {i}: {:?}", t0.elapsed());
        }
    }
    transactions(&p, &reader, &txn, samples, true)
}
