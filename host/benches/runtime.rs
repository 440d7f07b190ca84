//! `just bench`: what an event costs. Prints tables; every row is measured in this run,
//! next to a baseline measured the same way, so ratios hold across machines.
//!
//! Needs `target/components/probe.wasm` (`just handlers`); PostgreSQL rows need
//! `SWITCHYARD_TEST_DATABASE_URL`, Kafka rows `SWITCHYARD_TEST_KAFKA_BROKERS`
//! (`scripts/services.sh env`); rows whose service is missing are skipped.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use switchyard::config::{ComponentSpec, Routing};
use switchyard::event::{InboundEvent, headers};
use switchyard::kafka::{Brokers, admin, producer_config};
use switchyard::runtime::{Outcome, Runtime};
use switchyard::store::{Db, InboxEntry, OutboundMessage, Table};

// The test suite's helpers: built components, specs, per-run PostgreSQL databases.
#[path = "../tests/it/common.rs"]
mod common;

fn spec(publishes: &[&str]) -> ComponentSpec {
    common::spec("bench", "probe", publishes)
}

fn event(i: usize, plan: &serde_json::Value, pad_to: usize) -> InboundEvent {
    let mut payload = serde_json::to_vec(plan).unwrap();
    payload.resize(pad_to.max(payload.len()), b' ');
    InboundEvent::from_message(
        &common::at("bench.in"),
        None,
        payload,
        vec![(headers::EVENT_ID.into(), format!("{}-{i}", uuid::Uuid::new_v4()))],
        0,
    )
}

struct Row {
    name: String,
    per_op: Duration,
    baseline: Option<Duration>,
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "| {:<58} | {:>12} | {:>12} | {:>8} |",
        "case", "per event", "ops/s", "vs base"
    );
    println!("|{:-<60}|{:->14}|{:->14}|{:->10}|", "", "", "", "");
    for row in rows {
        let ratio = row.baseline.map_or("-".to_string(), |b| {
            format!("{:.2}x", row.per_op.as_secs_f64() / b.as_secs_f64())
        });
        println!(
            "| {:<58} | {:>10.1}µs | {:>12.0} | {:>8} |",
            row.name,
            row.per_op.as_secs_f64() * 1e6,
            1.0 / row.per_op.as_secs_f64(),
            ratio
        );
    }
}

async fn time_invocations(
    runtime: &Runtime,
    db: &Db,
    spec: &ComponentSpec,
    plan: &serde_json::Value,
    n: usize,
) -> Duration {
    let loaded = runtime.load(spec).unwrap();
    for i in 0..20 {
        runtime.invoke(&loaded, db, &event(i, plan, 1024)).await.unwrap();
    }
    let start = Instant::now();
    for i in 0..n {
        let outcome = runtime.invoke(&loaded, db, &event(i, plan, 1024)).await.unwrap();
        assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");
    }
    start.elapsed() / n as u32
}

/// The same database work as a write+publish invocation, without wasm: the baseline.
async fn time_bare_transactions(db: &Db, n: usize) -> Duration {
    let message = OutboundMessage {
        topic: "bench.out".into(),
        key: None,
        payload: vec![b'x'; 64],
        headers: vec![],
    };
    let start = Instant::now();
    for i in 0..n {
        let id = format!("bare-{}-{i}", uuid::Uuid::new_v4());
        let mut tx = db.begin().await.unwrap();
        let entry = InboxEntry {
            component: "bare",
            event_id: &id,
            topic: "bench.in",
            partition: 0,
            offset: i as i64,
        };
        assert!(tx.claim_inbox(&entry).await.unwrap());
        tx.put("bare", "k", b"v").await.unwrap();
        tx.insert_outbox(&id, "bare", &message).await.unwrap();
        tx.commit().await.unwrap();
    }
    start.elapsed() / n as u32
}

async fn postgres_db() -> Option<Db> {
    common::postgres_database().await.map(|(db, _)| db)
}

async fn runtime_table() {
    let runtime = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Db::open(None, dir.path()).await.unwrap();
    let noop = json!({"steps": []});
    let effect = json!({"steps": [
        {"op": "put", "key": "k", "value": "v"},
        {"op": "publish", "topic": "bench.out", "key": null, "payload": "x".repeat(64)}
    ]});
    const N: usize = 400;
    let mut rows = Vec::new();
    let base = time_bare_transactions(&sqlite, N).await;
    rows.push(Row {
        name: "sqlite: bare tx (inbox + put + outbox), no wasm".into(),
        per_op: base,
        baseline: Some(base),
    });
    rows.push(Row {
        name: "sqlite: fresh instance + handle(1 KB), no effects".into(),
        per_op: time_invocations(&runtime, &sqlite, &spec(&[]), &noop, N).await,
        baseline: Some(base),
    });
    rows.push(Row {
        name: "sqlite: fresh instance + handle(1 KB), 1 write + 1 publish".into(),
        per_op: time_invocations(&runtime, &sqlite, &spec(&["bench.out"]), &effect, N).await,
        baseline: Some(base),
    });
    if let Some(pg) = postgres_db().await {
        let base = time_bare_transactions(&pg, N).await;
        rows.push(Row {
            name: "postgres: bare tx (inbox + put + outbox), no wasm".into(),
            per_op: base,
            baseline: Some(base),
        });
        rows.push(Row {
            name: "postgres: fresh instance + handle(1 KB), 1 write + 1 publish".into(),
            per_op: time_invocations(&runtime, &pg, &spec(&["bench.out"]), &effect, N).await,
            baseline: Some(base),
        });
    } else {
        println!("(SWITCHYARD_TEST_DATABASE_URL not set: PostgreSQL rows skipped)");
    }
    print_table("Runtime: one event, end to end through the inbox transaction", &rows);
}

/// Raw rdkafka consumption of `n` messages vs. dispatching them through a route.
async fn kafka_table() {
    let Ok(servers) = std::env::var("SWITCHYARD_TEST_KAFKA_BROKERS") else {
        println!("\n(SWITCHYARD_TEST_KAFKA_BROKERS not set: Kafka throughput skipped)");
        return;
    };
    const N: usize = 3000;
    let mut rows = Vec::new();
    for (label, plan, database) in [
        ("no-op component, sqlite", json!({"steps": []}), None),
        (
            "1 write + 1 publish, postgres",
            json!({"steps": [{"op": "put", "key": "k", "value": "v"}, {"op": "publish", "topic": "{p}.out", "key": null, "payload": "x"}]}),
            postgres_db().await,
        ),
    ] {
        let p = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[topics.\"{p}.in\"]\npartitions = 3\n[topics.\"{p}.out\"]\n[components.bench]\nartifact = \"{}\"\npublishes = [\"{p}.out\"]\n[[routes]]\ntopic = \"{p}.in\"\ncomponent = \"bench\"\ngroup = \"{p}-route\"\n",
            common::artifact("probe").display()
        );
        let path = dir.path().join("topics.toml");
        std::fs::write(&path, text).unwrap();
        let routing = Routing::load(&path).unwrap();
        let brokers = Brokers::start(Some(&servers), &routing).unwrap();
        let base = brokers.client_config();
        admin::sync_topics(&base, &routing).await.unwrap();
        let producer: FutureProducer = producer_config(&base).create().unwrap();
        let payload = serde_json::to_vec(&plan).unwrap();
        let payload = String::from_utf8(payload).unwrap().replace("{p}", &p);
        let topic = format!("{p}.in");
        let mut deliveries = Vec::with_capacity(N);
        for i in 0..N {
            let key = format!("k{i}");
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        }

        // Baseline: a plain consumer reading the same topic to the end.
        let mut config = base.clone();
        config
            .set("group.id", format!("{p}-raw"))
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = config.create().unwrap();
        consumer.subscribe(&[&format!("{p}.in")]).unwrap();
        consumer.recv().await.unwrap();
        let start = Instant::now();
        for _ in 1..N {
            consumer.recv().await.unwrap();
        }
        let raw = start.elapsed() / (N as u32 - 1);
        drop(consumer);

        let tmp = tempfile::tempdir().unwrap();
        let db = match database {
            Some(db) => db,
            None => Db::open(None, tmp.path()).await.unwrap(),
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let service = switchyard::service::serve(&routing, db.clone(), &brokers, shutdown);
        // Both clocks start at the first event received or handled, so joining the group
        // (and, for the route, loading the component) is not counted: N-1 events are.
        let watch = async {
            while db.count(Table::Inbox).await.unwrap() < 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let start = Instant::now();
            while db.count(Table::Inbox).await.unwrap() < N as i64 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let elapsed = start.elapsed();
            stop.send(true).unwrap();
            elapsed
        };
        let (served, elapsed) = tokio::join!(service, watch);
        served.unwrap();
        let name = format!("route dispatch, {label} (3 partitions)");
        rows.push(Row {
            name: format!("raw rdkafka consume, same topic ({label})"),
            per_op: raw,
            baseline: Some(raw),
        });
        rows.push(Row {
            name,
            per_op: elapsed / (N as u32 - 1),
            baseline: Some(raw),
        });
    }
    print_table(
        &format!("Kafka: {N} events, routed vs raw consumption (real broker)"),
        &rows,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        runtime_table().await;
        kafka_table().await;
    });
}
