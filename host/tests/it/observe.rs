//! Metrics and traces of a running host (`switchyard run` as a subprocess): `/metrics`
//! parsed while events are retried, dead-lettered and held up, and one order's spans
//! received by a real OTLP/HTTP receiver in this process, forming one trace.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::common::{Backend, artifact, kafka_brokers, postgres_database, workspace};
use crate::saga::eventually;

const SECRET: &str = "a-test-secret-that-is-32-bytes-or-more";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `switchyard run` process, stopped with SIGTERM (so it flushes its spans) when dropped.
struct Host {
    child: Child,
    http: String,
    metrics: String,
    _data: tempfile::TempDir,
}

impl Host {
    fn start(config: &Path, brokers: Option<&str>, database_url: Option<&str>, env: &[(&str, String)]) -> Host {
        let data = tempfile::tempdir().unwrap();
        let (http, metrics) = (free_addr(), free_addr());
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWITCHYARD_") || n.starts_with("OTEL_")) {
            command.env_remove(name);
        }
        command
            .current_dir(workspace())
            .arg("--config")
            .arg(config)
            .args(["run"])
            .env("SWITCHYARD_DATA_DIR", data.path())
            .env("SWITCHYARD_HTTP_ADDR", http.to_string())
            .env("SWITCHYARD_ADMIN_ADDR", "127.0.0.1:0")
            .env("SWITCHYARD_METRICS_ADDR", metrics.to_string())
            .env("SWITCHYARD_JWT_SECRET", SECRET)
            .env("SWITCHYARD_METRICS_INTERVAL_MS", "200")
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(brokers) = brokers {
            command.env("SWITCHYARD_BROKERS", brokers);
        }
        if let Some(url) = database_url {
            command.env("SWITCHYARD_DATABASE_URL", url);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        Host {
            child: command.spawn().expect("starting switchyard run"),
            http: format!("http://{http}"),
            metrics: format!("http://{metrics}/metrics"),
            _data: data,
        }
    }

    async fn ready(&self) {
        let client = reqwest::Client::new();
        eventually("the host to be ready", || async {
            let ready = client.get(format!("{}/ready", self.http)).send().await.ok()?;
            let metrics = client.get(&self.metrics).send().await.ok()?;
            (ready.status().is_success() && metrics.status().is_success()).then_some(())
        })
        .await;
    }

    /// Registers `user` (password `password-1`) through the gateway.
    async fn register(&self, http: &reqwest::Client, user: &str) {
        let registered = http
            .post(format!("{}/auth/register", self.http))
            .json(&json!({"username": user, "email": format!("{user}@example.org"), "password": "password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201);
    }

    async fn scrape(&self) -> Scrape {
        let text = reqwest::get(&self.metrics).await.unwrap().text().await.unwrap();
        Scrape(text)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `/metrics` answer in the Prometheus text format.
pub(crate) struct Scrape(pub(crate) String);

impl Scrape {
    /// The value of the series `name` whose labels include all of `labels`, summed
    /// over the series that match.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let pairs: Vec<(String, String)> = series_labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            if labels
                .iter()
                .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v))
            {
                *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
            }
        }
        found
    }

    fn at_least(&self, name: &str, labels: &[(&str, &str)], min: f64) -> bool {
        self.value(name, labels).is_some_and(|v| v >= min)
    }
}

const PROBE_ROUTING: &str = r#"
[topics."{p}.in"]
partitions = 1
[topics."{p}.out"]
[components.probe]
artifact = "{probe}"
publishes = ["{p}.out"]
[[routes]]
topic = "{p}.in"
component = "probe"
group = "{p}-probe"
retry = { attempts = 4, initial-backoff-ms = 1500, max-backoff-ms = 1500 }
"#;

/// Retries and dead letters move their counters, the handler histogram fills, and lag
/// rises while a retrying event holds its partition up and falls once it is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_retries_dead_letters_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let p = format!("obs-{}", uuid::Uuid::new_v4().simple());
    let config = dir.path().join("topics.toml");
    std::fs::write(
        &config,
        PROBE_ROUTING
            .replace("{p}", &p)
            .replace("{probe}", &artifact("probe").display().to_string()),
    )
    .unwrap();
    let brokers = kafka_brokers();
    let (db, url) = postgres_database().await.unwrap();
    let host = Host::start(&config, Some(&brokers), Some(&url), &[]);
    host.ready().await;
    let topic = format!("{p}.in");
    let route = [("topic", topic.as_str()), ("component", "probe")];
    let partition = [("topic", topic.as_str()), ("component", "probe"), ("partition", "0")];
    eventually("the lag gauge of the route", || async {
        host.scrape()
            .await
            .value("switchyard_consumer_lag_messages", &partition)
            .filter(|v| *v == 0.0)
    })
    .await;

    let mut producer_config = rdkafka::ClientConfig::new();
    producer_config.set("bootstrap.servers", &brokers);
    let producer: FutureProducer = producer_config.create().unwrap();
    let send = |payload: Value| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let body = serde_json::to_vec(&payload).unwrap();
            producer
                .send(
                    FutureRecord::<str, [u8]>::to(&topic).payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    };
    // The first event fails four times, 1.5 s apart, holding the partition up; the
    // twenty behind it wait.
    send(json!({"steps": [{"op": "fail", "retryable": true, "reason": "still down"}]})).await;
    for i in 0..20 {
        send(json!({"steps": [{"op": "put", "key": format!("k{i}"), "value": "v"}, {"op": "publish", "topic": format!("{p}.out"), "payload": "done"}]})).await;
    }
    let held_up = eventually("lag to rise while the partition is held up", || async {
        let scrape = host.scrape().await;
        scrape
            .at_least("switchyard_consumer_lag_messages", &partition, 20.0)
            .then_some(scrape)
    })
    .await;
    assert_eq!(
        held_up.value(
            "switchyard_events_total",
            &[route[0], route[1], ("outcome", "committed")]
        ),
        None,
        "nothing behind the retrying event is handled yet"
    );
    eventually("lag in seconds while held up", || async {
        host.scrape()
            .await
            .at_least("switchyard_consumer_lag_seconds", &partition, 0.5)
            .then_some(())
    })
    .await;
    let after = eventually("lag to fall once the event is dead-lettered", || async {
        let scrape = host.scrape().await;
        (scrape.value("switchyard_consumer_lag_messages", &partition) == Some(0.0)
            && scrape.at_least(
                "switchyard_events_total",
                &[route[0], route[1], ("outcome", "committed")],
                20.0,
            ))
        .then_some(scrape)
    })
    .await;
    let dlq = format!("{p}.in.dlq");
    assert_eq!(
        after.value("switchyard_events_total", &[route[0], route[1], ("outcome", "retried")]),
        Some(3.0)
    );
    assert_eq!(
        after.value(
            "switchyard_events_total",
            &[route[0], route[1], ("outcome", "dead_lettered")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.value(
            "switchyard_events_total",
            &[route[0], route[1], ("outcome", "committed")]
        ),
        Some(20.0)
    );
    assert_eq!(
        after.value("switchyard_dead_letters_total", &[("topic", dlq.as_str())]),
        Some(1.0)
    );
    assert_eq!(after.value("switchyard_consumer_lag_seconds", &partition), Some(0.0));
    // 4 failed tries + 20 handled events, each timed.
    assert_eq!(
        after.value("switchyard_handler_duration_seconds_count", &[("component", "probe")]),
        Some(24.0)
    );
    assert!(after.at_least(
        "switchyard_handler_duration_seconds_bucket",
        &[("component", "probe"), ("le", "+Inf")],
        24.0
    ));
    assert!(after.at_least(
        "switchyard_handler_duration_seconds_sum",
        &[("component", "probe")],
        0.0001
    ));
    assert!(after.at_least("switchyard_host_calls_total", &[("interface", "storage")], 20.0));
    assert!(after.at_least("switchyard_host_calls_total", &[("interface", "publish")], 20.0));
    assert!(after.at_least("switchyard_instance_memory_peak_bytes", &[], 65536.0));
    assert!(after.at_least("switchyard_component_info", &[("component", "probe")], 1.0));
    // The relay sends the dead letter and the 20 published messages.
    let relayed = eventually("the relay to send everything", || async {
        let scrape = host.scrape().await;
        (scrape.at_least("switchyard_relay_sent_total", &[("topic", &format!("{p}.out"))], 20.0)
            && scrape.at_least("switchyard_relay_sent_total", &[("topic", dlq.as_str())], 1.0)
            && scrape.value("switchyard_outbox_backlog_messages", &[]) == Some(0.0))
        .then_some(scrape)
    })
    .await;
    assert_eq!(relayed.value("switchyard_outbox_oldest_age_seconds", &[]), Some(0.0));
    assert_eq!(relayed.value("switchyard_timers_pending", &[]), Some(0.0));
    // A row no broker takes (written by hand: components cannot publish this much) is
    // parked, and counted as a relay failure of its topic.
    let mut tx = db.begin().await.unwrap();
    let too_big = switchyard::store::OutboundMessage {
        topic: format!("{p}.out"),
        key: None,
        payload: vec![b'x'; 5 << 20],
        headers: vec![],
    };
    tx.insert_outbox("too-big", "probe", &too_big).await.unwrap();
    tx.commit().await.unwrap();
    eventually("the refused row to be counted", || async {
        host.scrape()
            .await
            .value(
                "switchyard_relay_failures_total",
                &[("topic", &format!("{p}.out")), ("reason", "parked")],
            )
            .filter(|v| *v == 1.0)
    })
    .await;
    // A message sent again with its event id (a relay that died between the broker's
    // acknowledgement and marking the row sent) is counted as a duplicate, not handled.
    let committed = |scrape: &Scrape| {
        scrape
            .value(
                "switchyard_events_total",
                &[route[0], route[1], ("outcome", "committed")],
            )
            .unwrap_or(0.0)
    };
    let before = committed(&host.scrape().await);
    let no_op = switchyard::store::OutboundMessage {
        topic: topic.clone(),
        key: None,
        payload: br#"{"steps": []}"#.to_vec(),
        headers: vec![(
            switchyard::protocol::names::EVENT_ID.to_string(),
            "sent-twice".to_string(),
        )],
    };
    let mut tx = db.begin().await.unwrap();
    tx.insert_outbox("sent-twice", "probe", &no_op).await.unwrap();
    tx.commit().await.unwrap();
    eventually("the event to be handled once", || async {
        (committed(&host.scrape().await) == before + 1.0).then_some(())
    })
    .await;
    sqlx::query("UPDATE outbox SET sent_at_ms = NULL WHERE event_id = 'sent-twice'")
        .execute(&sqlx::PgPool::connect(&url).await.unwrap())
        .await
        .unwrap();
    let again = eventually("the second delivery to be counted a duplicate", || async {
        let scrape = host.scrape().await;
        scrape
            .at_least(
                "switchyard_events_total",
                &[route[0], route[1], ("outcome", "duplicate")],
                1.0,
            )
            .then_some(scrape)
    })
    .await;
    assert_eq!(committed(&again), before + 1.0, "the duplicate was not handled again");
    db.close().await;
    // The gateway's requests, by route template and status.
    reqwest::get(format!("{}/orders/some-id", host.http)).await.unwrap();
    // A made-up method is counted as "other": clients cannot add series without end.
    let made_up = reqwest::Method::from_bytes(b"MADEUP1").unwrap();
    let http = reqwest::Client::new();
    http.request(made_up, format!("{}/health", host.http))
        .send()
        .await
        .unwrap();
    let gateway = host.scrape().await;
    assert!(!gateway.0.contains("MADEUP1"), "a series per made-up method");
    assert!(gateway.at_least(
        "http_server_request_duration_seconds_count",
        &[("method", "other"), ("route", "/health")],
        1.0
    ));
    assert!(gateway.at_least(
        "http_server_request_duration_seconds_count",
        &[("method", "GET"), ("route", "/ready"), ("status", "200")],
        1.0
    ));
    assert!(gateway.at_least(
        "http_server_request_duration_seconds_count",
        &[("method", "GET"), ("route", "/orders/{request_id}"), ("status", "401")],
        1.0
    ));
}

/// Spans received by the test's OTLP/HTTP endpoint.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    /// Serves `POST /v1/traces` (OTLP/HTTP, protobuf) on a free port; returns its base URL.
    async fn start(&self) -> String {
        let spans = self.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export request");
                    let mut all = spans.lock().unwrap();
                    for resource in request.resource_spans {
                        for scope in resource.scope_spans {
                            all.extend(scope.spans);
                        }
                    }
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// One order, `POST /orders` to `NotificationSent`, is one trace: every `process` span
/// hangs below the `send` span of the message it handles, every `send` below the span
/// that wrote the message (the request, or a host call of an invocation), all sharing
/// the request's trace id.
async fn one_order_is_one_trace(real: bool, _backend: Backend) {
    let _saga = crate::common::saga_topics(real).await;
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let dir = tempfile::tempdir().unwrap();
    let run = format!("otel-{}", uuid::Uuid::new_v4().simple());
    let routing = crate::common::saga_routing(dir.path(), &run);
    let config = dir.path().join("topics.toml");
    let (brokers, database) = if real {
        let brokers = kafka_brokers();
        let mut base = rdkafka::ClientConfig::new();
        base.set("bootstrap.servers", &brokers);
        switchyard::kafka::admin::sync_topics(&base, &routing).await.unwrap();
        crate::common::start_groups_at_the_end(&base, &routing);
        let (_db, url) = postgres_database().await.unwrap();
        (Some(brokers), Some(url))
    } else {
        (None, None)
    };
    let host = Host::start(
        &config,
        brokers.as_deref(),
        database.as_deref(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    host.ready().await;
    let http = reqwest::Client::new();
    let user = format!("u{}", &run[5..17]);
    host.register(&http, &user).await;
    let login: Value = http
        .post(format!("{}/auth/login", host.http))
        .json(&json!({"username": user, "password": "password-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().unwrap().to_string();
    let order = json!({"items": [{"productId": "p", "quantity": 1, "price": 1.0}], "deliveryAddress": "x", "paymentMethod": "card"});
    let answer = http
        .post(format!("{}/orders", host.http))
        .bearer_auth(&token)
        .json(&order)
        .send()
        .await
        .unwrap();
    // The gateway waits for the saga's answer: paid, or 402 for a new account without funds.
    assert!(
        answer.status().is_success() || answer.status() == 402,
        "{:?}",
        answer.status()
    );

    let name = |s: &Span| s.name.clone();
    let trace = eventually("the order's trace to reach notifications.sent", || async {
        let spans = receiver.spans();
        let root = spans.iter().find(|s| s.name == "POST /orders")?;
        let trace: Vec<Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).cloned().collect();
        // Complete: the last hop sent, and every span's parent exported too (the batch
        // exporter may deliver a parent after its children on a loaded machine).
        let complete = trace.iter().any(|s| s.name == "send notifications.sent")
            && trace
                .iter()
                .all(|s| s.parent_span_id.is_empty() || trace.iter().any(|p| p.span_id == s.parent_span_id));
        complete.then_some(trace)
    })
    .await;
    // Spans of the last hop end a little after the send of NotificationSent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let root_trace = trace[0].trace_id.clone();
    let trace: Vec<Span> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == root_trace)
        .collect();
    let names: Vec<String> = trace.iter().map(name).collect();
    let by_id = |id: &[u8]| trace.iter().find(|s| s.span_id == id);
    eprintln!("the order's trace: {} spans: {names:?}", trace.len());

    let roots: Vec<&Span> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {names:?}");
    assert_eq!(roots[0].name, "POST /orders");
    assert_eq!(attribute(roots[0], "http.route").as_deref(), Some("/orders"));
    for span in &trace {
        if !span.parent_span_id.is_empty() {
            assert!(
                by_id(&span.parent_span_id).is_some(),
                "{} has a parent outside the trace: {names:?}",
                span.name
            );
        }
    }
    for hop in [
        "orders.requests",
        "orders.created",
        "billing.payments",
        "orders.status",
        "users.profile",
        "users.profile.response",
        "notifications.requested",
    ] {
        let process: Vec<&Span> = trace.iter().filter(|s| s.name == format!("process {hop}")).collect();
        assert!(!process.is_empty(), "no process {hop}: {names:?}");
        for span in process {
            let parent = by_id(&span.parent_span_id).unwrap();
            assert_eq!(parent.name, format!("send {hop}"), "the parent of process {hop}");
            assert_eq!(attribute(span, "messaging.system").as_deref(), Some("kafka"));
            assert_eq!(attribute(span, "messaging.destination.name").as_deref(), Some(hop));
            for key in [
                "messaging.kafka.destination.partition",
                "messaging.kafka.message.offset",
                "messaging.consumer.group.name",
                "messaging.message.id",
                "switchyard.component",
                "switchyard.component.version",
            ] {
                assert!(
                    attribute(span, key).is_some_and(|v| !v.is_empty()),
                    "process {hop} lacks {key}"
                );
            }
            assert!(
                attribute(span, "messaging.consumer.group.name")
                    .unwrap()
                    .starts_with(&run)
            );
        }
    }
    for send in trace.iter().filter(|s| s.name.starts_with("send ")) {
        let parent = by_id(&send.parent_span_id).unwrap();
        assert!(
            parent.name == "POST /orders" || parent.name == "publish.send" || parent.name == "timers.schedule",
            "{} hangs below {}",
            send.name,
            parent.name
        );
    }
    assert!(
        names.iter().any(|n| n == "storage.put"),
        "host calls are spans: {names:?}"
    );
    // The exporter counts what it sent.
    let exported = host
        .scrape()
        .await
        .value("switchyard_trace_spans_total", &[("outcome", "exported")]);
    assert!(exported.is_some_and(|n| n >= 1.0), "{exported:?}");
}

on_both_stacks!(one_order_is_one_trace);

/// A ready `switchyard run` of the saga on the embedded defaults, exporting spans to a
/// fresh receiver with the `OTEL_*` settings `env`; with the run's id and its directory.
async fn embedded_host_exporting(env: &[(&str, &str)]) -> (Receiver, Host, String, tempfile::TempDir) {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let dir = tempfile::tempdir().unwrap();
    let run = format!("otel-{}", uuid::Uuid::new_v4().simple());
    crate::common::saga_routing(dir.path(), &run);
    let mut vars = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)];
    vars.extend(env.iter().map(|(name, value)| (*name, value.to_string())));
    let host = Host::start(&dir.path().join("topics.toml"), None, None, &vars);
    host.ready().await;
    (receiver, host, run, dir)
}

/// A bad `OTEL_*` value turns exporting off and nothing else: the host serves requests,
/// and not even the flush at shutdown posts a span to the configured receiver. (The
/// message naming the value is checked by
/// `cli::a_bad_trace_setting_is_named_at_start_and_the_host_runs_without_exporting`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bad_trace_setting_the_host_serves_and_posts_no_span() {
    let (receiver, mut host, run, _dir) = embedded_host_exporting(&[("OTEL_BSP_SCHEDULE_DELAY", "5s")]).await;
    host.register(&reqwest::Client::new(), &format!("u{}", &run[5..17]))
        .await;
    // SIGTERM: a running exporter would send what it holds now.
    host.stop();
    assert_eq!(host.child.try_wait().unwrap().map(|s| s.success()), Some(true));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> = receiver.spans().iter().map(|s| s.name.clone()).collect();
    assert!(names.is_empty(), "spans were exported: {names:?}");
}

/// `OTEL_TRACES_SAMPLER` rules the whole process, every hop included: with
/// `parentbased_traceidratio` at 0 a request that starts its own trace exports nothing,
/// at the gateway or in the routes its event passes through, while a request whose
/// caller sampled its trace (`traceparent` flags 01) is exported whole, hops included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_setting_keeps_or_drops_whole_traces_across_hops() {
    let (receiver, mut host, run, _dir) = embedded_host_exporting(&[
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ])
    .await;
    let http = reqwest::Client::new();
    // Its own trace, dropped by the ratio of 0.
    host.register(&http, &format!("a{}", &run[5..17])).await;
    // The caller's sampled trace, kept.
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let registered = http
        .post(format!("{}/auth/register", host.http))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"username": format!("b{}", &run[5..17]), "email": "b@example.org", "password": "password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    eventually("the sampled request's event to be processed and exported", || async {
        receiver
            .spans()
            .iter()
            .any(|s| hex(&s.trace_id) == trace_id && s.name.starts_with("process "))
            .then_some(())
    })
    .await;
    // Both users' events are handled by the same routes; give the unsampled one the same
    // time, then flush everything with the stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    host.stop();
    let spans = receiver.spans();
    let foreign: Vec<String> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) != trace_id)
        .map(|s| format!("{} ({})", s.name, hex(&s.trace_id)))
        .collect();
    assert!(
        foreign.is_empty(),
        "spans of a trace the ratio of 0 dropped: {foreign:?}"
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"POST /auth/register"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("send ")), "{names:?}");
}
