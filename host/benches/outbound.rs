//! `cargo bench -p switchyard --bench outbound`: what an outbound effect (wit `outbound`)
//! costs from the handler's call to the webhook receiving it, beside the baselines
//! measured in the same run: the same POST sent directly with reqwest, and the same
//! invocation without the delivery. On SQLite and PostgreSQL; a burst of deliveries
//! gives the worker's throughput.
//!
//! Needs the components (`just handlers`) and `SWITCHYARD_TEST_DATABASE_URL`
//! (`scripts/services.sh env`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::config::{HttpPrefix, Reach};
use switchyard::delivery::{self, Settings};
use switchyard::event::{InboundEvent, headers};
use switchyard::runtime::{LoadedComponent, Outcome, Runtime};
use switchyard::store::Db;
use tokio::sync::mpsc;

#[path = "../tests/it/common.rs"]
mod common;

const RUNS: usize = 200;
const BURST: usize = 500;

fn event(plan: Value) -> InboundEvent {
    InboundEvent::from_message(
        &common::at("probe.in"),
        None,
        serde_json::to_vec(&plan).unwrap(),
        vec![(headers::EVENT_ID.into(), uuid::Uuid::new_v4().to_string())],
        Some(1_700_000_000_000),
    )
}

async fn invoke(runtime: &Runtime, probe: &LoadedComponent, db: &Db, plan: Value) {
    let outcome = runtime.invoke(probe, db, &event(plan)).await.unwrap();
    assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");
}

/// A receiver answering 200 that reports every request's idempotency key.
async fn receiver() -> (u16, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let tx = tx.clone();
        async move {
            let key = headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let _ = tx.send(key);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, rx)
}

fn percentiles(mut samples: Vec<Duration>) -> [Duration; 3] {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    [at(0.50), at(0.95), at(0.99)]
}

fn row(name: &str, p: [Duration; 3], base: Duration) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| {name:<48} | {:>9.0}µs | {:>9.0}µs | {:>9.0}µs | {:>7.2}x |",
        us(p[0]),
        us(p[1]),
        us(p[2]),
        p[0].as_secs_f64() / base.as_secs_f64()
    );
}

async fn bench(backend: common::Backend) {
    let db = common::test_db(backend).await.unwrap();
    let db = &db.db;
    let (port, mut received) = receiver().await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut spec = common::spec("probe", "probe", &["probe.done"]);
    spec.reach = Reach {
        http: vec![HttpPrefix::try_from(format!("http://127.0.0.1:{port}/")).unwrap()],
        ..Reach::default()
    };
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(delivery::run(db.clone(), Settings::default(), shutdown));
    let post = json!({"op": "post-json", "url": url, "body": {"n": 1}, "result_topic": "probe.done", "context": "c", "record": null});
    let put = json!({"op": "put", "key": "k", "value": "v"});

    // Baseline 1: the POST itself, straight from reqwest.
    let client = reqwest::Client::new();
    let mut direct = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        client.post(&url).json(&json!({"n": 1})).send().await.unwrap();
        received.recv().await.unwrap();
        direct.push(started.elapsed());
    }
    // Baseline 2: the invocation without the delivery (a storage write, commit).
    let mut plain = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        invoke(&runtime, &probe, db, json!({"steps": [put]})).await;
        plain.push(started.elapsed());
    }
    // The effect: invocation with `deliver`, commit, worker wake-up, POST received.
    let mut effect = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        invoke(&runtime, &probe, db, json!({"steps": [put, post]})).await;
        received.recv().await.unwrap();
        effect.push(started.elapsed());
    }
    // Throughput: a burst committed in invocations of 50, until all are received.
    let started = Instant::now();
    for _ in 0..BURST / 50 {
        let steps: Vec<Value> = (0..50).map(|_| post.clone()).collect();
        invoke(&runtime, &probe, db, json!({ "steps": steps })).await;
    }
    for _ in 0..BURST {
        received.recv().await.unwrap();
    }
    let burst = started.elapsed();
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    let base = percentiles(direct.clone())[0];
    println!(
        "\n{} ({RUNS} runs each; ratio of p50 to the direct POST's)\n",
        db.kind()
    );
    println!(
        "| {:<48} | {:>11} | {:>11} | {:>11} | {:>8} |",
        "", "p50", "p95", "p99", "vs POST"
    );
    println!(
        "|{}|-------------|-------------|-------------|----------|",
        "-".repeat(50)
    );
    row("POST sent directly (baseline)", percentiles(direct), base);
    row("invocation without delivery (baseline)", percentiles(plain), base);
    row("invocation with deliver -> webhook received", percentiles(effect), base);
    println!(
        "\nburst: {BURST} deliveries committed in {} invocations, all received in {:.0} ms ({:.0}/s)",
        BURST / 50,
        burst.as_secs_f64() * 1e3,
        BURST as f64 / burst.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    bench(common::Backend::Sqlite).await;
    bench(common::Backend::Postgres).await;
}
