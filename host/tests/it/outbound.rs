//! Outbound effects (wit `outbound`) against real receivers: an SMTP server (Debian's
//! python3-aiosmtpd, recording what it accepts and refusing `reject*` addresses) and a
//! webhook receiver (axum in this process, failing the first attempt of every request).
//!
//! - The probe, on SQLite and PostgreSQL: a rolled-back invocation sends nothing, a URL
//!   outside reach is refused at the call, a committed request goes out once per
//!   idempotency key with two workers on one database, and one that keeps failing ends
//!   as a dead letter with its outcome.
//! - The saga's notification, on the embedded broker with SQLite and on Kafka with
//!   PostgreSQL: an order's notification reaches the SMTP server (down at first) and the
//!   webhook once in effect, and a refused address comes back as `success: false`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use switchyard::config::{HttpPrefix, Reach, RetryPolicy};
use switchyard::delivery::{self, Settings};
use switchyard::event::{InboundEvent, LogPosition, headers};
use switchyard::runtime::{Outcome, Runtime};
use switchyard::store::Db;

use crate::common::{Backend, spec, test_db};
use crate::saga::eventually;

// ---- receivers ------------------------------------------------------------------------

/// A port nobody listens on yet.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const SMTP_SERVER: &str = r#"
import json, sys, threading
from email import message_from_bytes
from aiosmtpd.controller import Controller

port, log = int(sys.argv[1]), sys.argv[2]

class Recorder:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.content)
        with open(log, "a") as f:
            f.write(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                "messageId": msg["Message-ID"], "subject": msg["Subject"],
                                "date": msg["Date"], "body": msg.get_payload()}) + "\n")
        return "250 Message accepted for delivery"

controller = Controller(Recorder(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// A real SMTP server (aiosmtpd) on `port`, logging accepted mail to a file; stopped on drop.
struct SmtpServer {
    child: Child,
    log: PathBuf,
}

impl SmtpServer {
    fn start(dir: &Path, port: u16) -> SmtpServer {
        let script = dir.join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let log = dir.join("smtp.jsonl");
        // Debian's python3 has python3-aiosmtpd (scripts/bootstrap.sh installs it).
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting /usr/bin/python3 with aiosmtpd (run scripts/bootstrap.sh)");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "aiosmtpd did not start (is python3-aiosmtpd installed?)"
        );
        SmtpServer { child, log }
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    key: Option<String>,
    authorization: Option<String>,
    traceparent: Option<String>,
    body: Value,
    status: u16,
}

/// The webhook receiver: answers 503 to the first attempt of every idempotency key (and
/// to every attempt under `/down/`, with a binary body holding a NUL, which PostgreSQL's
/// text refuses as a failure reason), 200 after, and records every attempt.
#[derive(Clone, Default)]
struct Webhook {
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Webhook {
    async fn start() -> (Webhook, u16) {
        let hook = Webhook::default();
        let app = axum::Router::new()
            .fallback(
                |State(hook): State<Webhook>, uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| async move {
                    let key = headers.get("idempotency-key").map(|v| v.to_str().unwrap().to_string());
                    let mut hits = hook.hits.lock().unwrap();
                    let seen = hits.iter().any(|h| h.key.is_some() && h.key == key);
                    let status = if uri.path().starts_with("/down/") || !seen { 503 } else { 200 };
                    hits.push(Hit {
                        path: uri.path().to_string(),
                        key,
                        authorization: headers.get("authorization").map(|v| v.to_str().unwrap().to_string()),
                        traceparent: headers.get("traceparent").map(|v| v.to_str().unwrap().to_string()),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        status,
                    });
                    let body = if uri.path().starts_with("/down/") { b"down\0\x01".to_vec() } else { Vec::new() };
                    (StatusCode::from_u16(status).unwrap(), body)
                },
            )
            .with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, port)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

// ---- the probe, on one database ------------------------------------------------------

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn event(id: &str, plan: Value) -> InboundEvent {
    let at = LogPosition {
        origin: "test",
        topic: "probe.in",
        partition: 0,
        offset: 0,
    };
    InboundEvent::from_message(
        &at,
        None,
        serde_json::to_vec(&plan).unwrap(),
        vec![
            (headers::EVENT_ID.into(), id.into()),
            (headers::REQUEST_ID.into(), format!("req-{id}")),
            (
                headers::TRACEPARENT.into(),
                format!("00-{TRACE_ID}-00f067aa0ba902b7-01"),
            ),
        ],
        Some(1_700_000_000_000),
    )
}

fn post(url: &str, record: Option<&str>) -> Value {
    json!({"op": "post-json", "url": url, "body": {"hello": "world"}, "result_topic": "probe.done",
           "context": "ctx-1", "record": record})
}

/// The outcome events in the outbox, by delivery id.
async fn outcomes(db: &Db) -> BTreeMap<String, Value> {
    db.unsent_outbox(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.message.topic == "probe.done")
        .map(|row| {
            let outcome: Value = serde_json::from_slice(&row.message.payload).unwrap();
            (outcome["deliveryId"].as_str().unwrap().to_string(), outcome)
        })
        .collect()
}

fn fast_settings() -> Settings {
    Settings {
        poll: Duration::from_millis(200),
        lease: Duration::from_secs(30),
        http_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

async fn probe_deliveries(db: &Db) {
    let (hook, port) = Webhook::start().await;
    let mut probe = spec("probe", "probe", &["probe.done"]);
    probe.reach = Reach {
        http: vec![
            HttpPrefix::try_from(format!("http://127.0.0.1:{port}/ok/")).unwrap(),
            HttpPrefix::try_from(format!("http://127.0.0.1:{port}/down/")).unwrap(),
        ],
        smtp: vec![],
        retry: RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
        },
    };
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&probe).unwrap();
    // The receiver's credentials, from the host's environment (this test's port only).
    let credentials = format!("SWITCHYARD_HTTP_127_0_0_1_{port}_AUTHORIZATION");
    // SAFETY: set before the workers start; no other test reads this variable.
    unsafe { std::env::set_var(&credentials, "Bearer probe-secret") };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    // Two workers on one database, as two hosts would be.
    let workers = [
        tokio::spawn(delivery::run(db.clone(), fast_settings(), shutdown.clone())),
        tokio::spawn(delivery::run(db.clone(), fast_settings(), shutdown.clone())),
    ];

    // Rolled back: the request was made, then the handler failed.
    let rolled_back = json!({"steps": [post(&format!("http://127.0.0.1:{port}/ok/rolled-back"), None),
                                       {"op": "fail", "retryable": false, "reason": "changed my mind"}]});
    assert!(matches!(
        runtime.invoke(&probe, db, &event("e1", rolled_back)).await.unwrap(),
        Outcome::Failed(_)
    ));
    // Outside reach: refused at the call, as a guest error the handler sees.
    let outside = json!({"steps": [post(&format!("http://127.0.0.1:{port}/elsewhere"), Some("refused"))]});
    let outcome = runtime.invoke(&probe, db, &event("e2", outside)).await.unwrap();
    assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");
    let refused = String::from_utf8(db.peek("probe", "refused").await.unwrap().unwrap()).unwrap();
    assert!(
        refused.starts_with("error: not-allowed: URL") && refused.contains("/elsewhere"),
        "{refused}"
    );
    assert!(db.effects_of("probe").await.unwrap().is_empty(), "neither was recorded");

    // Ten committed requests, each failing its first attempt, and one that never passes.
    let many: Vec<Value> = (0..10)
        .map(|i| post(&format!("http://127.0.0.1:{port}/ok/{i}"), None))
        .collect();
    let calls_before = outbound_host_calls();
    let Outcome::Committed(effects) = runtime
        .invoke(&probe, db, &event("e3", json!({"steps": many})))
        .await
        .unwrap()
    else {
        panic!("the requests commit")
    };
    assert_eq!(effects.deliveries.len(), 10);
    // Each call is counted under its interface (at least: tests beside this one call too).
    assert!(
        outbound_host_calls() >= calls_before + 10,
        "switchyard_host_calls_total{{interface=\"outbound\"}} went from {calls_before} to {}",
        outbound_host_calls()
    );
    let down = json!({"steps": [post(&format!("http://127.0.0.1:{port}/down/x"), None)]});
    assert!(matches!(
        runtime.invoke(&probe, db, &event("e4", down)).await.unwrap(),
        Outcome::Committed(_)
    ));

    let done = eventually("every outcome", || async {
        let done = outcomes(db).await;
        (done.len() == 11).then_some(done)
    })
    .await;
    let hits = hook.hits();
    assert!(
        !hits
            .iter()
            .any(|h| h.path.contains("rolled-back") || h.path.contains("elsewhere")),
        "{hits:?}"
    );
    for delivery in &effects.deliveries {
        let attempts: Vec<&Hit> = hits
            .iter()
            .filter(|h| h.key.as_deref() == Some(delivery.id.as_str()))
            .collect();
        // First attempt refused with 503, the retry accepted: same key on both, and no
        // third send although two workers share the table.
        assert_eq!(
            attempts.iter().map(|h| h.status).collect::<Vec<_>>(),
            [503, 200],
            "{attempts:?}"
        );
        assert_eq!(attempts[0].body, json!({"hello": "world"}));
        assert_eq!(attempts[0].authorization.as_deref(), Some("Bearer probe-secret"));
        // The request continues the invocation's trace.
        assert!(
            attempts[0].traceparent.as_deref().is_some_and(|t| t.contains(TRACE_ID)),
            "{attempts:?}"
        );
        let outcome = &done[&delivery.id];
        assert_eq!(
            (outcome["success"].as_bool(), outcome["status"].as_u64()),
            (Some(true), Some(200))
        );
        assert_eq!(
            (outcome["attempts"].as_u64(), outcome["context"].as_str()),
            (Some(2), Some("ctx-1"))
        );
    }
    // The one that never passes: a dead letter after its 3 attempts, with the reason.
    let dead = db
        .effects_of("probe")
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.outcome.as_deref() == Some("dead"));
    let dead = dead.expect("a dead letter");
    assert_eq!(dead.attempts, 3);
    let outcome = &done[&dead.id];
    assert_eq!(outcome["success"], false);
    assert!(
        outcome["reason"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 3 attempts: HTTP 503"),
        "{outcome}"
    );
    assert_eq!(hits.iter().filter(|h| h.path == "/down/x").count(), 3);

    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
}

on_both_backends!(probe_deliveries);

/// `switchyard_host_calls_total{interface="outbound"}` in this process's metrics.
fn outbound_host_calls() -> u64 {
    crate::observe::Scrape(switchyard::observe::metrics().encode())
        .value("switchyard_host_calls_total", &[("interface", "outbound")])
        .unwrap_or(0.0) as u64
}

/// A receiver that accepts and never answers holds a delivery until its HTTP timeout; the
/// worker's stop waits for it at most 5 s, and the delivery is tried again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_a_delivery_to_a_silent_receiver_at_most_five_seconds() {
    let db = test_db(Backend::Sqlite).await.unwrap();
    let db = &db.db;
    // Accepts, reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, mut connected) = tokio::sync::watch::channel(false);
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = accepted.send(true);
        }
    });
    let mut probe = spec("probe", "probe", &["probe.done"]);
    probe.reach = Reach {
        http: vec![HttpPrefix::try_from(format!("http://127.0.0.1:{port}/")).unwrap()],
        smtp: vec![],
        retry: RetryPolicy::default(),
    };
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&probe).unwrap();
    let plan = json!({"steps": [post(&format!("http://127.0.0.1:{port}/hook"), None)]});
    let outcome = runtime.invoke(&probe, db, &event("e1", plan)).await.unwrap();
    assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let settings = Settings {
        http_timeout: Duration::from_secs(120),
        ..fast_settings()
    };
    let worker = tokio::spawn(delivery::run(db.clone(), settings, shutdown));
    tokio::time::timeout(Duration::from_secs(30), connected.wait_for(|c| *c))
        .await
        .expect("the delivery reached the receiver within 30 s")
        .unwrap();
    let started = Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker stopped within 60 s")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert!(
        outcomes(db).await.is_empty(),
        "no outcome: the delivery is still to be made"
    );
    silent.abort();
}

// ---- the saga's notifications ---------------------------------------------------------

/// The shipped topics.toml with notif sending e-mails and webhooks to the test's servers.
fn notifying_routing(dir: &Path, run: &str, smtp_port: u16, hook_port: u16) -> switchyard::config::Routing {
    crate::common::saga_routing(dir, run);
    let path = dir.join("topics.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let configured = format!(
        "config = {{ channels = \"log\", webhook-url = \"http://127.0.0.1:{hook_port}/hook/{run}\", mail-from = \"Shop <shop@example.com>\" }}\n\
         reach = {{ http = [\"http://127.0.0.1:*/hook/\"], smtp = [\"127.0.0.1:{smtp_port}\"], retry = {{ attempts = 50, initial-backoff-ms = 200, max-backoff-ms = 1000 }} }}\n"
    );
    assert!(text.contains("config = { channels = \"log\" }\n"));
    std::fs::write(&path, text.replace("config = { channels = \"log\" }\n", &configured)).unwrap();
    switchyard::config::Routing::load(&path).unwrap()
}

async fn notifications_reach_smtp_and_webhook(real: bool, backend: Backend) {
    let _saga = crate::common::saga_topics(real).await;
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use switchyard::kafka::{Brokers, admin, producer_config};

    let dir = tempfile::tempdir().unwrap();
    let run = format!("out{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (hook, hook_port) = Webhook::start().await;
    let smtp_port = free_port();
    let routing = notifying_routing(dir.path(), &run, smtp_port, hook_port);
    let brokers = if real {
        let brokers = Brokers::start(Some(&crate::common::kafka_brokers()), &routing).unwrap();
        admin::sync_topics(&brokers.client_config(), &routing).await.unwrap();
        crate::common::start_groups_at_the_end(&brokers.client_config(), &routing);
        brokers
    } else {
        Brokers::start(None, &routing).unwrap()
    };
    let Some(db) = test_db(backend).await else { return };
    let db = db.db.clone();
    let base = brokers.client_config();
    let user = format!("alice-{run}");
    let email = format!("{user}@example.com");
    let rejected = format!("reject-{run}@example.com");

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let scenario = async {
        let producer: FutureProducer = producer_config(&base).create().unwrap();
        let send = |topic: &'static str, key: String, value: Value| {
            let producer = producer.clone();
            async move {
                let body = value.to_string();
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&body),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        };
        let mut observer = base.clone();
        observer
            .set("group.id", format!("{run}-observer"))
            .set("auto.offset.reset", "earliest");
        let observer: StreamConsumer = observer.create().unwrap();
        observer.subscribe(&["notifications.sent"]).unwrap();

        // An order, paid: its notification goes out by e-mail and webhook.
        send(
            "users.registered",
            user.clone(),
            json!({"username": user, "email": email, "registeredAt": 1, "source": "test", "notify": "email,webhook"}),
        )
        .await;
        eventually("the account", || async {
            crate::saga::stored(&db, "billing", &format!("account/{user}")).await
        })
        .await;
        eventually("the profile", || async {
            crate::saga::stored(&db, "user", &format!("profile/{user}")).await
        })
        .await;
        send(
            "billing.deposits",
            user.clone(),
            json!({"requestId": format!("{run}-dep"), "username": user, "amount": 25.0, "requestedAt": 2}),
        )
        .await;
        eventually("the deposit", || async {
            let account = crate::saga::stored(&db, "billing", &format!("account/{user}")).await?;
            (account["balanceMinor"] == 2500).then_some(())
        })
        .await;
        let paid = format!("{run}-paid");
        send(
            "orders.requests",
            user.clone(),
            json!({"requestId": paid, "username": user,
            "items": [{"productId": "p1", "quantity": 2, "price": 9.99}], "deliveryAddress": "1 Main St",
            "paymentMethod": "card", "createdAt": 3}),
        )
        .await;
        // A notification to an address the server refuses, by e-mail only.
        send("notifications.requested", rejected.clone(), json!({"notificationId": format!("{run}-rejected"),
            "requestId": format!("{run}-rej"), "username": rejected, "type": "ORDER_UPDATE", "subject": "s", "content": "c",
            "metadata": {"recipient": rejected, "channel": "email"}, "scheduledAt": 4})).await;

        // The SMTP server is down: the e-mails fail and wait; then it comes up.
        eventually("a failed e-mail attempt", || async {
            let effects = db.effects_of("notif").await.unwrap();
            effects
                .iter()
                .any(|e| e.kind == "email" && e.attempts >= 1 && e.last_error.is_some())
                .then_some(())
        })
        .await;
        let smtp = SmtpServer::start(dir.path(), smtp_port);

        let mut reports: BTreeMap<(String, String), Value> = BTreeMap::new();
        let start = Instant::now();
        while reports.len() < 3 {
            assert!(start.elapsed() < Duration::from_secs(90), "reports so far: {reports:?}");
            let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), observer.recv()).await else {
                continue;
            };
            let Ok(report) = serde_json::from_slice::<Value>(message.payload().unwrap_or_default()) else {
                continue;
            };
            let id = report["notificationId"].as_str().unwrap_or_default().to_string();
            if id.contains(&run) {
                let channel = report["channel"].as_str().unwrap().to_string();
                assert!(
                    reports.insert((id, channel), report).is_none(),
                    "one report per notification and channel"
                );
            }
        }
        let effects = db.effects_of("notif").await.unwrap();
        let paid_id = format!("{user}:{paid}:PAID");
        let mail = &reports[&(paid_id.clone(), "email".to_string())];
        assert_eq!(
            (mail["success"].as_bool(), mail["recipient"].as_str()),
            (Some(true), Some(email.as_str()))
        );
        let webhook = &reports[&(paid_id.clone(), "webhook".to_string())];
        assert_eq!(webhook["success"], true);
        let refused = &reports[&(format!("{run}-rejected"), "email".to_string())];
        assert_eq!(refused["success"], false);
        let reason = refused["failureReason"].as_str().unwrap();
        assert!(
            reason.contains("550") && reason.contains("mailbox unavailable"),
            "{reason}"
        );

        // The mail arrived once, with the delivery id as Message-ID.
        let messages = smtp.messages();
        let to_user: Vec<&Value> = messages.iter().filter(|m| m["to"][0] == email.as_str()).collect();
        assert_eq!(to_user.len(), 1, "{messages:?}");
        let mail_effect = effects
            .iter()
            .find(|e| e.kind == "email" && e.outcome.as_deref() == Some("delivered"))
            .unwrap();
        assert_eq!(
            to_user[0]["messageId"],
            format!("<{}@switchyard>", mail_effect.id).as_str()
        );
        let subject = to_user[0]["subject"].as_str().unwrap();
        assert!(
            subject.starts_with("Order #") && subject.ends_with(" is paid"),
            "{subject}"
        );
        assert!(
            to_user[0]["body"]
                .as_str()
                .unwrap()
                .contains("we received your payment of 19.98"),
            "{:?}",
            to_user[0]
        );
        assert!(
            !messages.iter().any(|m| m["to"].to_string().contains("reject")),
            "refused mail was not accepted"
        );

        // The webhook: the first attempt refused, the retry with the same key accepted.
        let hits: Vec<Hit> = hook
            .hits()
            .into_iter()
            .filter(|h| h.path == format!("/hook/{run}"))
            .collect();
        assert_eq!(
            hits.iter().map(|h| h.status).collect::<Vec<_>>(),
            [503, 200],
            "{hits:?}"
        );
        assert!(hits[0].key.is_some() && hits[0].key == hits[1].key);
        let hook_effect = effects.iter().find(|e| e.kind == "http").unwrap();
        assert_eq!(hits[0].key.as_deref(), Some(hook_effect.id.as_str()));
        assert_eq!(hits[1].body["notificationId"], paid_id.as_str());
        assert_eq!(hits[1].authorization, None, "no credentials were configured");
        stop.send(true).unwrap();
    };
    let (served, ()) = tokio::join!(
        switchyard::service::serve(&routing, db.clone(), &brokers, shutdown),
        scenario
    );
    served.unwrap();
}

on_both_stacks!(notifications_reach_smtp_and_webhook);
