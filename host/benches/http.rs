//! `just bench`, HTTP table: `POST /orders` latency (p50 / p95 / p99) at fixed open-loop
//! rates, through the gateway and the whole saga, on the embedded default and on the
//! real stack, beside one raw Kafka produce→consume round trip measured in the same run.
//!
//! Open loop: requests start on a fixed schedule whatever the answers do, and latency
//! counts from the scheduled start, so a stall shows up instead of slowing the load.
//! Needs `target/components/*.wasm` (`just handlers`) and, for the real stack,
//! `SWITCHYARD_TEST_DATABASE_URL`, `SWITCHYARD_TEST_KAFKA_BROKERS` and
//! `SWITCHYARD_TEST_REDIS_URL` (`scripts/services.sh env`). `SWITCHYARD_BENCH_HTTP_SECS`
//! shortens each rate's window (default 20 s).

// The test suite's helpers: the shipped routing for one run, groups at the end.
#[path = "../tests/it/common.rs"]
mod common;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use switchyard::gateway::{self, GatewayArgs, GatewayConfig};
use switchyard::kafka::{Brokers, admin, producer_config};
use switchyard::store::Db;
use tokio::sync::watch;

const RATES: [u32; 2] = [50, 200];
const USERS: usize = 20;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run `just bench`, which exports the services"))
}

async fn database(real: bool, dir: &std::path::Path) -> Db {
    if !real {
        return Db::open(None, dir).await.unwrap();
    }
    let url = env("SWITCHYARD_TEST_DATABASE_URL");
    let name = format!("sy_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
    Db::open(Some(&url), dir).await.unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Row {
    case: String,
    sent: usize,
    ok: usize,
    latencies: Vec<Duration>,
}

/// One Kafka produce→consume round trip at a time, `n` times.
async fn kafka_round_trips(base: &rdkafka::ClientConfig, topic: &str, n: usize) -> Vec<Duration> {
    let producer: FutureProducer = producer_config(base).create().unwrap();
    let mut config = base.clone();
    config
        .set("group.id", format!("bench-rtt-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "10");
    let consumer: StreamConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    // Wait for the assignment with a probe message.
    let probe = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    'ready: loop {
        assert!(
            Instant::now() < deadline,
            "the round-trip consumer never got its partition"
        );
        producer
            .send(
                FutureRecord::to(topic).key("rtt").payload(&probe),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            if m.payload() == Some(probe.as_bytes()) {
                break 'ready;
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = format!("{probe}-{i}");
        let started = Instant::now();
        producer
            .send(
                FutureRecord::to(topic).key("rtt").payload(&body),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        loop {
            let m = consumer.recv().await.unwrap();
            if m.payload() == Some(body.as_bytes()) {
                break;
            }
        }
        out.push(started.elapsed());
    }
    out
}

async fn call(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http.post(url).json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The saga and one gateway on `real` services; returns the rows of this stack.
async fn stack_rows(real: bool, window: Duration) -> Vec<Row> {
    // Embedded: in-process broker, SQLite, in-process cache. Real: Kafka, PostgreSQL, Redis.
    let label = if real { "real" } else { "embedded" };
    let dir = tempfile::tempdir().unwrap();
    let run = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let routing = common::saga_routing(dir.path(), &run);
    let brokers = if real {
        let brokers = Brokers::start(Some(&env("SWITCHYARD_TEST_KAFKA_BROKERS")), &routing).unwrap();
        admin::sync_topics(&brokers.client_config(), &routing).await.unwrap();
        common::start_groups_at_the_end(&brokers.client_config(), &routing);
        // The gateway's status readers too: a new group reads orders.status from its
        // start, and after a few `just load` runs (228,000 statuses) it had not reached
        // this run's within the 30 s reply timeout.
        let statuses = routing.topics.values().find(|t| t.name.as_str() == "orders.status");
        let partitions = statuses.map_or(1, |t| t.partitions);
        common::start_group_at_the_end(
            &brokers.client_config(),
            &format!("{run}-gateway"),
            "orders.status",
            partitions,
        );
        brokers
    } else {
        Brokers::start(None, &routing).unwrap()
    };
    let db = database(real, dir.path()).await;
    let base = brokers.consumer_config(); // as `switchyard run` hands its gateway
    let (stop, shutdown) = watch::channel(false);

    let mut args = GatewayArgs {
        http_addr: "127.0.0.1:0".into(),
        jwt_secret: Some("bench-secret-bench-secret-bench-secret".into()),
        gateway_group: format!("{run}-gateway"),
        ..GatewayArgs::default()
    };
    if real {
        args.redis_url = Some(env("SWITCHYARD_TEST_REDIS_URL"));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let queries = switchyard::gateway_components::load(&routing, &db).await.unwrap();
    let gateway_task = tokio::spawn(gateway::serve_on(
        listener,
        GatewayConfig::from_args(&args).unwrap(),
        db.clone(),
        base.clone(),
        queries,
        false,
        shutdown.clone(),
    ));

    let routes = switchyard::service::serve(&routing, db.clone(), &brokers, shutdown);
    let measure = async {
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
        // Users with money enough for every order of the run.
        let mut tokens = Vec::new();
        for i in 0..USERS {
            let user = format!("{run}u{i}");
            let (status, body) = call(
                &http,
                format!("{url}/auth/register"),
                None,
                json!({"username": user, "email": format!("{user}@example.org"), "password": "password-1"}),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            let (_, body) = call(
                &http,
                format!("{url}/auth/login"),
                None,
                json!({"username": user, "password": "password-1"}),
            )
            .await;
            let token = body["accessToken"].as_str().unwrap().to_string();
            tokens.push(token);
        }
        // Deposits once the accounts are open (409 until then).
        for token in &tokens {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (status, body) = call(
                    &http,
                    format!("{url}/billing/deposits"),
                    Some(token),
                    json!({"amount": 100000}),
                )
                .await;
                if status == 202 {
                    break;
                }
                assert!(status == 409 && Instant::now() < deadline, "deposit: {status} {body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for token in &tokens {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r = http
                    .get(format!("{url}/billing/balance"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                let balance: Value = r.json().await.unwrap_or(Value::Null);
                if balance["balanceCents"].as_i64() == Some(10_000_000) {
                    break;
                }
                assert!(Instant::now() < deadline, "deposits never applied");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // One warm-up order per user.
        for token in &tokens {
            let (status, body) = call(&http, format!("{url}/orders"), Some(token), order()).await;
            assert_eq!(status, 201, "{label}: warm-up order: {body}");
        }

        let mut rows = Vec::new();
        rows.push(Row {
            case: format!("{label}: Kafka produce→consume round trip (baseline)"),
            sent: 200,
            ok: 200,
            latencies: kafka_round_trips(&base, "notifications.sent", 200).await,
        });
        for rate in RATES {
            let total = (rate as f64 * window.as_secs_f64()) as usize;
            let tokens = Arc::new(tokens.clone());
            let started = tokio::time::Instant::now();
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..total {
                let at = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(at).await;
                let (http, url, tokens) = (http.clone(), url.clone(), tokens.clone());
                calls.spawn(async move {
                    let (status, _) = call(&http, format!("{url}/orders"), Some(&tokens[i % USERS]), order()).await;
                    (status, at.elapsed())
                });
            }
            let mut latencies = Vec::with_capacity(total);
            let mut ok = 0;
            while let Some(result) = calls.join_next().await {
                let (status, latency) = result.unwrap();
                if status == 201 {
                    ok += 1;
                }
                latencies.push(latency);
            }
            rows.push(Row {
                case: format!("{label}: POST /orders at {rate}/s for {}s", window.as_secs()),
                sent: total,
                ok,
                latencies,
            });
        }
        stop.send(true).unwrap();
        rows
    };
    let (served, rows) = tokio::join!(routes, measure);
    served.unwrap();
    gateway_task.await.unwrap().unwrap();
    rows
}

fn order() -> Value {
    json!({"items": [{"productId": "p1", "quantity": 1, "price": 0.01}], "deliveryAddress": "1 Main St", "paymentMethod": "card"})
}

fn main() {
    let window = Duration::from_secs(
        std::env::var("SWITCHYARD_BENCH_HTTP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = runtime.block_on(stack_rows(false, window));
    rows.extend(runtime.block_on(stack_rows(true, window)));
    println!("\nHTTP: POST /orders through the gateway and the saga (201 = paid), open loop");
    println!("embedded = in-process broker + SQLite + in-process cache; real = Kafka + PostgreSQL + Redis");
    println!(
        "| {:<54} | {:>6} | {:>6} | {:>9} | {:>9} | {:>9} |",
        "case", "sent", "201", "p50", "p95", "p99"
    );
    println!(
        "|{:-<56}|{:->8}|{:->8}|{:->11}|{:->11}|{:->11}|",
        "", "", "", "", "", ""
    );
    for mut row in rows {
        row.latencies.sort();
        let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
        println!(
            "| {:<54} | {:>6} | {:>6} | {:>9} | {:>9} | {:>9} |",
            row.case,
            row.sent,
            row.ok,
            ms(percentile(&row.latencies, 0.50)),
            ms(percentile(&row.latencies, 0.95)),
            ms(percentile(&row.latencies, 0.99)),
        );
    }
}
