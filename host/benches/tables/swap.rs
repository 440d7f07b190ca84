//! The `swap` table: how long a hot swap takes to reach traffic, from the API call made
//! (or the artifact file written) to the first event handled by the new version.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use switchyard::admin::client::AdminClient;
use switchyard::config::Routing;
use switchyard::kafka::{Brokers, admin, producer_config};
use switchyard::runtime::version_of;
use switchyard::service::{self, Options};
use switchyard::store::{Db, now_ms};
use tokio::sync::watch;

use crate::common;
use crate::support::{Table, ms, percentile};

/// Swaps measured per case (alternating between the two builds of the probe).
const SWAPS: usize = 20;
/// Events per second of the "under load" cases.
const LOAD_RATE: u64 = 500;

#[derive(Clone, Copy)]
enum Trigger {
    Api,
    File,
}

/// The newest `handled_at_ms` of an event run by `version` since `since_ms`, if any.
async fn first_handled(db: &Db, version: &str, since_ms: i64) -> anyhow::Result<Option<i64>> {
    const SQL: &str =
        "SELECT MIN(handled_at_ms) FROM inbox WHERE component = 'stamp' AND version = $1 AND handled_at_ms >= $2";
    Ok(if let Some(pool) = db.postgres_pool() {
        sqlx::query_scalar(SQL)
            .bind(version)
            .bind(since_ms)
            .fetch_one(pool)
            .await?
    } else {
        sqlx::query_scalar(SQL)
            .bind(version)
            .bind(since_ms)
            .fetch_one(db.sqlite_pool().context("sqlite")?)
            .await?
    })
}

async fn send(producer: &FutureProducer, topic: &str, n: u64) -> anyhow::Result<()> {
    let key = n.to_string();
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(r#"{"steps": []}"#),
            Timeout::Never,
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// One stack's rows: idle and under load, through the API and by writing the file.
async fn measure(real: bool, table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let artifact = dir.path().join("stamp.wasm");
    let v1 = std::fs::read(common::artifact("probe"))?;
    let v2 = std::fs::read(common::artifact("probe-v2"))?;
    std::fs::write(&artifact, &v1)?;
    let prefix = format!("swap{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let topic = format!("{prefix}.in");
    std::fs::write(
        dir.path().join("topics.toml"),
        format!(
            "[topics.\"{topic}\"]\npartitions = 3\n[components.stamp]\nartifact = \"stamp.wasm\"\n\
             [[routes]]\ntopic = \"{topic}\"\ncomponent = \"stamp\"\ngroup = \"{prefix}\"\n"
        ),
    )?;
    let routing = Routing::load(&dir.path().join("topics.toml"))?;
    let (db, _guard) = if real {
        (common::postgres_database().await.context("postgres")?.0, None)
    } else {
        let data = tempfile::tempdir()?;
        (Db::open(None, data.path()).await?, Some(data))
    };
    let brokers = if real {
        let brokers = Brokers::start(Some(&common::kafka_brokers()), &routing)?;
        admin::sync_topics(&brokers.client_config(), &routing).await?;
        brokers
    } else {
        Brokers::start(None, &routing)?
    };
    let (stop, shutdown) = watch::channel(false);
    let options = Options {
        admin_addr: Some("127.0.0.1:0".parse()?),
        admin_token: Some("bench".into()),
        ..Default::default()
    };
    let host = service::start(&routing, db.clone(), &brokers, options, shutdown).await?;
    let client = AdminClient::new(
        &format!("http://{}", host.admin_addr.context("admin")?),
        Some("bench".into()),
    );
    let running = tokio::spawn(host.run());
    let mut config = producer_config(&brokers.client_config());
    config.set("linger.ms", "0");
    let producer: FutureProducer = config.create()?;
    // Warm up: the route is assigned and both builds are compiled once (the cache).
    send(&producer, &topic, 0).await?;
    client.deploy("stamp", v2.clone()).await?;
    client.deploy("stamp", v1.clone()).await?;

    let stack = if real {
        "Kafka + PostgreSQL"
    } else {
        "embedded + SQLite"
    };
    for (trigger, loaded) in [(Trigger::Api, false), (Trigger::Api, true), (Trigger::File, false)] {
        let (stop_load, mut load_stopped) = watch::channel(false);
        let load = loaded.then(|| {
            let (producer, topic) = (producer.clone(), topic.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / LOAD_RATE));
                let mut n = 1;
                while !*load_stopped.borrow_and_update() {
                    tick.tick().await;
                    let (producer, topic) = (producer.clone(), topic.clone());
                    tokio::spawn(async move { send(&producer, &topic, n).await });
                    n += 1;
                }
            })
        });
        let mut samples = Vec::with_capacity(SWAPS);
        for i in 0..SWAPS {
            let bytes = if i % 2 == 0 { &v2 } else { &v1 };
            let version = version_of(bytes);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (t0, start) = (now_ms(), Instant::now());
            match trigger {
                Trigger::Api => {
                    client.deploy("stamp", bytes.clone()).await?;
                }
                Trigger::File => {
                    let tmp = dir.path().join("stamp.wasm.tmp");
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, &artifact)?;
                }
            }
            // Idle: an event every 10 ms until one runs on the new version.
            let mut n = 0;
            let handled = loop {
                if let Some(at) = first_handled(&db, &version, t0).await? {
                    break at;
                }
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(30),
                    "swap {i} never reached traffic"
                );
                if !loaded && n % 5 == 0 {
                    send(&producer, &topic, n).await?;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            samples.push(Duration::from_millis((handled - t0).max(0) as u64));
        }
        let _ = stop_load.send(true);
        if let Some(load) = load {
            let _ = load.await;
        }
        samples.sort();
        let case = match (trigger, loaded) {
            (Trigger::Api, false) => "deploy through the admin API, idle",
            (Trigger::Api, true) => "deploy through the admin API, 500 events/s",
            (Trigger::File, _) => "artifact file written, idle",
        };
        table.row(vec![
            stack.into(),
            case.into(),
            ms(percentile(&samples, 50.0)),
            ms(percentile(&samples, 99.0)),
            ms(*samples.last().unwrap()),
        ]);
    }
    let _ = stop.send(true);
    running.await??;
    Ok(())
}

pub async fn swap_table() -> anyhow::Result<()> {
    let mut table = Table::new(
        format!(
            "Hot swap: from the call (or the file written) to the first event handled by the new version; {SWAPS} swaps per case"
        ),
        &["stack", "case", "p50", "p99", "max"],
    );
    for real in [false, true] {
        measure(real, &mut table).await?;
    }
    table.note("Idle cases send an event every 10 ms after the swap starts, so the figure includes one hop. The API call returns once the new version is compiled (cached after the first time), checked, instantiated once, recorded and active.");
    table.note("A written file is acted on once it stayed the same for one 250 ms tick (so half-written files are never loaded): expect 250–500 ms more than the API.");
    table.note("In milliseconds, from the database's handled_at_ms (1 ms resolution).");
    table.print();
    Ok(())
}
