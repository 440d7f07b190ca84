//! `just bench-observe` (also run by `just bench`): what metrics and tracing cost per
//! event, measured in one process beside the same path with them off.
//!
//! A real route (`switchyard::service::serve_with`: consume, invoke the probe component
//! with a storage write and a publish, commit, relay) runs once per stack; runs of
//! `OBSERVE_EVENTS` events alternate between observability on (every metric recorded,
//! every span exported over OTLP/HTTP to a receiver in this process) and off
//! ([`switchyard::observe::set_enabled`]`(false)`: no metric recorded, no span made).
//! The clock of a run starts before the first send and stops when the last output is
//! relayed. `BENCH_RUNS` (default 5) runs per mode; `OBSERVE_EVENTS` (default 1000).

mod support;

#[path = "../tests/it/common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchyard::config::Routing;
use switchyard::kafka::{Brokers, producer_config};
use switchyard::store::{Db, Table as DbTable};

use support::{Spread, Table};

const WARMUP: usize = 200;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    if !support::run_by_cargo_bench("bench-observe") {
        return std::process::ExitCode::SUCCESS;
    }
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn number(var: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(var) {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{var}={v:?} is not a positive whole number; unset it or give e.g. 3")),
        Err(_) => Ok(default),
    }
}

fn bench() -> anyhow::Result<()> {
    let runs = number("BENCH_RUNS", 5)?;
    let events = number("OBSERVE_EVENTS", 1000)?;
    for var in ["SWITCHYARD_TEST_DATABASE_URL", "SWITCHYARD_TEST_KAFKA_BROKERS"] {
        if std::env::var_os(var).is_none() {
            bail!(
                "{var} is not set: run `just bench-observe`, which starts PostgreSQL and Kafka (scripts/services.sh) and exports it"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let received = Received::default();
    let endpoint = rt.block_on(receiver(received.clone()))?;
    // The exporter is configured the way an operator does it, before the subscriber.
    // SAFETY: no other thread reads the environment yet (the runtime's workers are idle).
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
        std::env::set_var("SWITCHYARD_LOG", "error");
    }
    let guard = switchyard::observe::init_tracing(false);
    anyhow::ensure!(
        switchyard::observe::tracing::exporting(),
        "the OTLP exporter did not start"
    );

    println!(
        "Switchyard observability cost · commit {} · {}",
        support::commit(&common::workspace()),
        support::machine()
    );
    let mut table = Table::new(
        format!(
            "Observability cost: {events} events per run (probe: storage put + publish, 1 partition), {runs} runs per mode alternating, after {WARMUP} warm-up events"
        ),
        &["stack", "off µs/event", "on µs/event", "overhead (medians)"],
    );
    let local = tokio::task::LocalSet::new();
    rt.block_on(local.run_until(async {
        for (name, real) in [("embedded broker + SQLite", false), ("Kafka + PostgreSQL", true)] {
            let (off, on) = measure(real, runs, events).await?;
            let overhead = (on.median() / off.median() - 1.0) * 100.0;
            table.row(vec![
                name.into(),
                off.show(|s| format!("{:.0}", s * 1e6)),
                on.show(|s| format!("{:.0}", s * 1e6)),
                format!("{overhead:+.1} %"),
            ]);
        }
        anyhow::Ok(())
    }))?;
    switchyard::observe::set_enabled(true);
    drop(guard); // flushes the last spans
    let spans = received.spans();
    table.note("Each cell: median (min–max) over the runs. A run's clock starts before its first send and stops when its last output row is relayed (counted through a second connection).");
    table.note(format!(
        "On: every metric recorded and every span (process, host calls, send) exported over OTLP/HTTP protobuf to a receiver in this process, which keeps the requests and decodes them after the runs, since decoding is the collector's work, not the host's ({} spans). Off: `observe::set_enabled(false)`; the subscriber stays installed, so off is a little slower than a host run without OTEL_EXPORTER_OTLP_ENDPOINT.",
        spans
    ));
    table.note(
        "Target: overhead under 5 %. On a shared 2-core machine the spread of a mode can be wider than the difference.",
    );
    table.print();
    Ok(())
}

/// The OTLP requests a receiver took, undecoded.
#[derive(Clone, Default)]
struct Received(Arc<std::sync::Mutex<Vec<axum::body::Bytes>>>);

impl Received {
    /// Spans in every request taken so far.
    fn spans(&self) -> usize {
        let bodies = std::mem::take(&mut *self.0.lock().expect("received lock"));
        bodies
            .into_iter()
            .filter_map(|body| ExportTraceServiceRequest::decode(body).ok())
            .flat_map(|request| request.resource_spans)
            .flat_map(|r| r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

/// An OTLP/HTTP receiver keeping each request; returns its base URL.
async fn receiver(received: Received) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                received.0.lock().expect("received lock").push(body);
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Seconds per event with observability off and on, over `runs` runs each.
async fn measure(real: bool, runs: usize, events: usize) -> anyhow::Result<(Spread, Spread)> {
    let dir = tempfile::tempdir()?;
    let p = format!("obs-bench-{}", uuid::Uuid::new_v4().simple());
    let config = dir.path().join("topics.toml");
    std::fs::write(
        &config,
        format!(
            "[topics.\"{p}.in\"]\n[topics.\"{p}.out\"]\n[components.probe]\nartifact = \"{}\"\npublishes = [\"{p}.out\"]\n[[routes]]\ntopic = \"{p}.in\"\ncomponent = \"probe\"\ngroup = \"{p}\"\n",
            common::artifact("probe").display()
        ),
    )?;
    let routing = Routing::load(&config)?;
    let brokers = Brokers::start(real.then(common::kafka_brokers).as_deref(), &routing)?;
    if real {
        switchyard::kafka::admin::sync_topics(&brokers.client_config(), &routing).await?;
    }
    let (db, observer, _data) = if real {
        let (db, url) = common::postgres_database().await.context("PostgreSQL")?;
        let observer = Db::open(Some(&url), std::path::Path::new(".")).await?;
        (db, observer, None)
    } else {
        let data = tempfile::tempdir()?;
        let db = Db::open(None, data.path()).await?;
        let url = format!("sqlite://{}", data.path().join("switchyard.db").display());
        let observer = Db::open(Some(&url), std::path::Path::new(".")).await?;
        (db, observer, Some(data))
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut producer_settings = producer_config(&brokers.client_config());
    producer_settings.set("linger.ms", "1");
    let producer: FutureProducer = producer_settings.create()?;
    let topic = format!("{p}.in");
    let payload = serde_json::to_vec(&serde_json::json!({"steps": [
        {"op": "increment", "key": "n", "delta": 1},
        {"op": "publish", "topic": format!("{p}.out"), "payload": "done"},
    ]}))?;
    let service = {
        let (routing, db) = (routing.clone(), db.clone());
        let brokers = &brokers;
        async move { switchyard::service::serve_with(&routing, db, brokers, Default::default(), shutdown).await }
    };
    let work = async {
        let mut relayed = 0i64;
        let mut run = |n: usize| {
            let (producer, topic, payload, observer) = (&producer, &topic, &payload, &observer);
            relayed += n as i64;
            let target = relayed;
            async move {
                let started = Instant::now();
                let mut sends = Vec::with_capacity(n);
                for _ in 0..n {
                    let record = FutureRecord::<(), [u8]>::to(topic).payload(payload);
                    sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
                }
                for send in sends {
                    send.await?.map_err(|(e, _)| e)?;
                }
                loop {
                    let sent = observer.count(DbTable::Outbox).await? - observer.count(DbTable::UnsentOutbox).await?;
                    if sent >= target {
                        return anyhow::Ok(started.elapsed().as_secs_f64() / n as f64);
                    }
                    anyhow::ensure!(
                        started.elapsed() < RUN_TIMEOUT,
                        "only {sent} of {target} outputs relayed"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        switchyard::observe::set_enabled(true);
        run(WARMUP).await?;
        let (mut off, mut on) = (Spread::default(), Spread::default());
        for i in 0..runs {
            // Alternate which mode goes first, so a drift in the machine's load hits both.
            for enabled in if i % 2 == 0 { [false, true] } else { [true, false] } {
                switchyard::observe::set_enabled(enabled);
                let per_event = run(events).await?;
                if enabled {
                    on.push(per_event)
                } else {
                    off.push(per_event)
                }
            }
        }
        switchyard::observe::set_enabled(true);
        stop.send(true).ok();
        anyhow::Ok((off, on))
    };
    let (served, measured) = tokio::join!(service, work);
    served?;
    observer.close().await;
    db.close().await;
    measured
}
