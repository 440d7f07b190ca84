//! `cargo bench -p switchyard --bench query`: what a read-only query costs (fresh
//! instance, read-only transaction, always rolled back), printed beside the baseline of
//! the same component handling an event (a deposit: instance, transaction, inbox claim,
//! writes, commit), measured in the same run on SQLite and PostgreSQL.
//!
//! Needs the components (`just handlers`) and `SWITCHYARD_TEST_DATABASE_URL`
//! (`scripts/services.sh env`).

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::event::{InboundEvent, headers};
use switchyard::runtime::{LoadedComponent, Outcome, Runtime};
use switchyard::store::Db;

// The test suite's helpers: built components, specs, per-run PostgreSQL databases.
#[path = "../tests/it/common.rs"]
mod common;

const RUNS: usize = 300;

fn event(topic: &str, payload: serde_json::Value) -> InboundEvent {
    InboundEvent::from_message(
        &common::at(topic),
        None,
        serde_json::to_vec(&payload).unwrap(),
        vec![(headers::EVENT_ID.into(), uuid::Uuid::new_v4().to_string())],
        Some(1_700_000_000_000),
    )
}

async fn deliver(runtime: &Runtime, component: &LoadedComponent, db: &Db, topic: &str, payload: serde_json::Value) {
    let outcome = runtime.invoke(component, db, &event(topic, payload)).await.unwrap();
    assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");
}

/// p50, p95 and p99 of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> [Duration; 3] {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    [at(0.50), at(0.95), at(0.99)]
}

fn row(name: &str, p: [Duration; 3], base: Duration) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| {name:<44} | {:>9.0}µs | {:>9.0}µs | {:>9.0}µs | {:>7.2}x |",
        us(p[0]),
        us(p[1]),
        us(p[2]),
        p[0].as_secs_f64() / base.as_secs_f64()
    );
}

async fn bench(backend: common::Backend) {
    let db = common::test_db(backend).await.unwrap();
    let db = &db.db;
    let runtime = Runtime::new().unwrap();
    let billing = runtime
        .load(&common::spec("billing", "billing", &["billing.payments"]))
        .unwrap();
    let order = runtime
        .load(&common::spec(
            "order",
            "order",
            &["orders.created", "orders.status", "orders.timeouts", "billing.refunds"],
        ))
        .unwrap();
    let registered = json!({"username": "alice", "email": "a@example.org", "registeredAt": 1, "source": "bench"});
    deliver(&runtime, &billing, db, "users.registered", registered).await;
    for i in 0..20 {
        let request = json!({"requestId": format!("r-{i}"), "username": "alice",
            "items": [{"productId": "p", "quantity": 1, "price": 1.5}],
            "deliveryAddress": "1 Main St", "paymentMethod": "card", "createdAt": 1});
        deliver(&runtime, &order, db, "orders.requests", request).await;
    }

    // Warm up: the first instantiation of each component pays for lazy initialisation.
    for _ in 0..10 {
        runtime
            .query(&billing, db, "balance", br#"{"username":"alice"}"#)
            .await
            .unwrap();
    }

    let mut samples = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let deposit = json!({"requestId": format!("d-{i}"), "username": "alice", "amount": 1.0, "requestedAt": 2});
        let started = Instant::now();
        deliver(&runtime, &billing, db, "billing.deposits", deposit).await;
        samples.push(started.elapsed());
    }
    let base = percentiles(samples);

    let cases: [(&str, &LoadedComponent, &str, &[u8]); 3] = [
        ("query billing balance", &billing, "balance", br#"{"username":"alice"}"#),
        (
            "query order orders (20 orders)",
            &order,
            "orders",
            br#"{"username":"alice"}"#,
        ),
        (
            "query order order",
            &order,
            "order",
            br#"{"username":"alice","requestId":"r-7"}"#,
        ),
    ];
    println!("\nread-only queries on {backend:?} ({RUNS} runs each, sequential)");
    println!(
        "| {:<44} | {:>11} | {:>11} | {:>11} | {:>8} |",
        "case", "p50", "p95", "p99", "p50/base"
    );
    println!("|{:-<46}|{:->13}|{:->13}|{:->13}|{:->10}|", "", "", "", "", "");
    row("baseline: billing handles a deposit (event)", base, base[0]);
    for (name, component, query, args) in cases {
        let mut samples = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let started = Instant::now();
            runtime.query(component, db, query, args).await.unwrap();
            samples.push(started.elapsed());
        }
        row(name, percentiles(samples), base[0]);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    bench(common::Backend::Sqlite).await;
    bench(common::Backend::Postgres).await;
}
