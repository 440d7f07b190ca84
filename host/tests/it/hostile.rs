//! Hostile input against a real host: guests that sleep, flood or try to escape, and
//! messages with broken or forged metadata. Each case ends in a clear failure or a dead
//! letter, loses nothing, and leaves every other event flowing.

use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::json;
use switchyard::event::{InboundEvent, LogPosition, headers};
use switchyard::kafka::{admin, headers_of, relay};
use switchyard::protocol::names;
use switchyard::runtime::{FailureKind, Outcome, Runtime};
use switchyard::store::{Db, OutboundMessage, Table};

use crate::common::{Backend, spec, test_db};
use crate::kafka::{brokers_for, counter, prefix, producer, routing, send, wait_for, with_service};

fn event(id: &str, plan: serde_json::Value) -> InboundEvent {
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
        vec![(headers::EVENT_ID.into(), id.into())],
        Some(0),
    )
}

fn failure_of(outcome: Outcome) -> switchyard::runtime::Failure {
    match outcome {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn committed(outcome: &Outcome) {
    assert!(
        matches!(outcome, Outcome::Committed(_)),
        "expected a commit, got {outcome:?}"
    );
}

async fn nothing_committed(db: &Db) {
    for table in [Table::Kv, Table::Inbox, Table::Outbox, Table::Timers] {
        assert_eq!(db.count(table).await.unwrap(), 0, "{table:?} should be empty");
    }
}

async fn a_guest_asleep_in_a_host_call_is_stopped_at_its_deadline(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let mut tight = spec("probe", "probe", &[]);
    tight.limits.deadline = Duration::from_millis(300);
    let probe = runtime.load(&tight).unwrap();
    let started = Instant::now();
    let plan = json!({"steps": [{"op": "put", "key": "a", "value": "1"}, {"op": "sleep", "ms": 60_000}]});
    let failure = failure_of(runtime.invoke(&probe, db, &event("sleeper", plan)).await.unwrap());
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure:?}");
    assert!(failure.reason.contains("deadline of 300 ms"), "{failure:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    nothing_committed(db).await;
    // The write lock is free again: the next event commits.
    let ok = json!({"steps": [{"op": "put", "key": "after", "value": "1"}]});
    committed(&runtime.invoke(&probe, db, &event("next", ok)).await.unwrap());
}

async fn floods_of_publishes_and_writes_fail_the_invocation_with_the_cap_named(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &["probe.out"])).unwrap();
    let publishes = json!({"steps": [{"op": "repeat", "times": 1001, "step":
        {"op": "publish", "topic": "probe.out", "key": "k", "payload": "x"}}]});
    let failure = failure_of(runtime.invoke(&probe, db, &event("flood-1", publishes)).await.unwrap());
    assert_eq!(failure.kind, FailureKind::Limit, "{failure:?}");
    assert!(failure.reason.contains("more than 1000 messages"), "{failure:?}");
    let writes =
        json!({"steps": [{"op": "repeat", "times": 40, "step": {"op": "put-big", "key": "big", "kib": 1024}}]});
    let failure = failure_of(runtime.invoke(&probe, db, &event("flood-2", writes)).await.unwrap());
    assert_eq!(failure.kind, FailureKind::Limit, "{failure:?}");
    assert!(failure.reason.contains("bytes written"), "{failure:?}");
    nothing_committed(db).await;
}

async fn floods_of_logs_and_stdout_are_cut_not_fatal(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    let line = "x".repeat(100);
    let plan = json!({"steps": [
        {"op": "repeat", "times": 3000, "step": {"op": "log", "message": "spam"}},
        {"op": "repeat", "times": 3000, "step": {"op": "print", "line": line}},
        {"op": "put", "key": "done", "value": "1"}
    ]});
    committed(&runtime.invoke(&probe, db, &event("chatty", plan)).await.unwrap());
    assert_eq!(db.peek("probe", "done").await.unwrap().as_deref(), Some(&b"1"[..]));
}

async fn a_list_over_the_byte_cap_is_refused_not_allocated(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    let fill = json!({"steps": (0..9).map(|i| json!({"op": "put-big", "key": format!("big/{i}"), "kib": 1024})).collect::<Vec<_>>()});
    committed(&runtime.invoke(&probe, db, &event("fill", fill)).await.unwrap());
    let list = json!({"steps": [{"op": "expect-prefix", "prefix": "big/", "keys": []}]});
    let failure = failure_of(runtime.invoke(&probe, db, &event("list", list)).await.unwrap());
    assert!(failure.reason.contains("list-prefix"), "{failure:?}");
}

async fn oversized_keys_and_headers_are_refused_at_publish(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &["probe.out"])).unwrap();
    let many: Vec<(String, String)> = (0..60).map(|i| (format!("x-{i}"), "v".into())).collect();
    for (i, step) in [
        json!({"op": "publish-raw", "topic": "probe.out", "key_bytes": 5000, "headers": [], "payload_kib": 1}),
        json!({"op": "publish-raw", "topic": "probe.out", "key_bytes": 1, "headers": many, "payload_kib": 1}),
        json!({"op": "publish-raw", "topic": "probe.out", "key_bytes": 1, "headers": [["x-big", "v".repeat(40_000)]], "payload_kib": 1}),
        json!({"op": "publish-raw", "topic": "probe.out", "key_bytes": 1, "headers": [], "payload_kib": 1000}),
    ]
    .into_iter()
    .enumerate()
    {
        let plan = json!({"steps": [step]});
        let failure = failure_of(runtime.invoke(&probe, db, &event(&format!("big{i}"), plan)).await.unwrap());
        assert!(failure.reason.contains("TooLarge"), "case {i}: {failure:?}");
    }
    nothing_committed(db).await;
}

async fn the_sandbox_has_no_files_env_sockets_or_memory_of_earlier_events(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    for i in 0..2 {
        let plan = json!({"steps": [{"op": "sandbox-escape"}]});
        let outcome = runtime
            .invoke(&probe, db, &event(&format!("escape{i}"), plan))
            .await
            .unwrap();
        committed(&outcome);
    }
}

async fn event_ids_with_nul_bytes_or_over_the_index_limit_are_claimed_once(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    for id in ["a\0b".to_string(), "x".repeat(5000)] {
        let plan = json!({"steps": [{"op": "increment", "key": "n", "delta": 1}]});
        let e = event(&id, plan);
        assert!(!e.id.contains('\0') && e.id.len() < 200, "{}", e.id);
        committed(&runtime.invoke(&probe, db, &e).await.unwrap());
        assert!(matches!(
            runtime.invoke(&probe, db, &e).await.unwrap(),
            Outcome::Duplicate
        ));
    }
    assert_eq!(db.peek("probe", "n").await.unwrap().as_deref(), Some(&b"2"[..]));
    // The same for a requestId (the inbox keeps it, indexed, for timelines): taken as
    // it came, PostgreSQL refused the event's commit and its dead letter alike, and
    // the partition retried it for good.
    for (n, request_id) in ["r\0id".to_string(), "r".repeat(5000)].into_iter().enumerate() {
        let plan = json!({"steps": [{"op": "increment", "key": "n", "delta": 1}]});
        let mut e = event(&format!("with-request-id-{n}"), plan.clone());
        e = InboundEvent::from_message(
            &LogPosition {
                origin: "test",
                topic: "probe.in",
                partition: 0,
                offset: 0,
            },
            None,
            e.payload,
            vec![
                (headers::EVENT_ID.into(), e.id),
                (headers::REQUEST_ID.into(), request_id),
            ],
            Some(0),
        );
        let kept = e.request_id.clone().unwrap();
        assert!(!kept.contains('\0') && kept.len() < 200, "{kept}");
        committed(&runtime.invoke(&probe, db, &e).await.unwrap());
    }
    assert_eq!(db.peek("probe", "n").await.unwrap().as_deref(), Some(&b"4"[..]));
}

/// Prefixes a guest may pass to `list-prefix` that break naive range or `LIKE` bounds:
/// the empty prefix, the last code point (no successor), the code points beside the
/// surrogate gap, and `LIKE`'s wildcards and escape.
async fn hostile_list_prefixes_from_a_guest_list_exactly_their_keys(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    let keys = [
        "\\c",
        "%a",
        "_b",
        "a",
        "a%",
        "a\u{10FFFF}",
        "b",
        "\u{D7FF}",
        "\u{D7FF}x",
        "\u{E000}",
        "\u{10FFFF}",
        "\u{10FFFF}\u{10FFFF}",
    ]
    .map(String::from);
    let puts: Vec<_> = keys
        .iter()
        .map(|k| json!({"op": "put", "key": k, "value": "v"}))
        .collect();
    committed(
        &runtime
            .invoke(&probe, db, &event("fill", json!({"steps": puts})))
            .await
            .unwrap(),
    );
    let mut sorted = keys.to_vec();
    sorted.sort();
    for (i, prefix) in [
        "",
        "\u{10FFFF}",
        "\u{D7FF}",
        "\u{E000}",
        "a",
        "a\u{10FFFF}",
        "%",
        "_",
        "\\",
        "a%",
        "z",
    ]
    .map(String::from)
    .into_iter()
    .enumerate()
    {
        let expected: Vec<&String> = sorted.iter().filter(|k| k.starts_with(&prefix)).collect();
        let plan = json!({"steps": [{"op": "expect-prefix", "prefix": prefix, "keys": expected}]});
        let outcome = runtime
            .invoke(&probe, db, &event(&format!("list{i}"), plan))
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Committed(_)),
            "prefix {prefix:?}: expected {expected:?}, got {outcome:?}"
        );
    }
}

/// Keys with a NUL, which SQLite stores (PostgreSQL's text refuses them): listed by a
/// prefix that holds the NUL, exactly. SQLite's `length` and `substr` stop at a NUL, so
/// a test built on them found no stored key.
#[tokio::test]
async fn keys_with_a_nul_are_listed_by_their_prefix_on_sqlite() {
    let db = test_db(Backend::Sqlite).await.unwrap();
    let db = &db.db;
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    let puts: Vec<_> = ["t", "t\0a", "t\0b", "t\u{1}"]
        .iter()
        .map(|k| json!({"op": "put", "key": k, "value": "v"}))
        .collect();
    committed(
        &runtime
            .invoke(&probe, db, &event("fill", json!({"steps": puts})))
            .await
            .unwrap(),
    );
    let plan = json!({"steps": [{"op": "expect-prefix", "prefix": "t\0", "keys": ["t\0a", "t\0b"]}]});
    let outcome = runtime.invoke(&probe, db, &event("list", plan)).await.unwrap();
    assert!(matches!(outcome, Outcome::Committed(_)), "{outcome:?}");
}

on_both_backends!(
    a_relay_whose_broker_never_answers_stops_at_its_limit_and_keeps_the_row,
    hostile_list_prefixes_from_a_guest_list_exactly_their_keys,
    a_guest_asleep_in_a_host_call_is_stopped_at_its_deadline,
    floods_of_publishes_and_writes_fail_the_invocation_with_the_cap_named,
    floods_of_logs_and_stdout_are_cut_not_fatal,
    a_list_over_the_byte_cap_is_refused_not_allocated,
    oversized_keys_and_headers_are_refused_at_publish,
    the_sandbox_has_no_files_env_sockets_or_memory_of_earlier_events,
    event_ids_with_nul_bytes_or_over_the_index_limit_are_claimed_once,
);

// ---- messages through a running host ---------------------------------------------------

const HOSTILE: &str = r#"
[topics."{p}.in"]
partitions = 2
[topics."{p}.out"]
partitions = 1
[components.worker]
artifact = "{probe}"
publishes = ["{p}.out"]
limits = { deadline-ms = 1000 }
[components.sink]
artifact = "{probe}"
[[routes]]
topic = "{p}.in"
component = "worker"
group = "{p}-worker"
dead-letter = "{p}.in.dead"
retry = { attempts = 2, initial-backoff-ms = 20, max-backoff-ms = 50 }
[[routes]]
topic = "{p}.out"
component = "sink"
group = "{p}-sink"
"#;

/// Produces one message with kcat, whose `-H` takes header names as raw bytes (the
/// Rust client only takes UTF-8 names).
fn kcat(bootstrap: &str, topic: &str, partition: i32, header: &[u8], payload: &[u8]) {
    let mut child = Command::new("kcat")
        .args([
            "-b",
            bootstrap,
            "-P",
            "-t",
            topic,
            "-p",
            &partition.to_string(),
            "-k",
            "raw",
            "-H",
        ])
        .arg(std::ffi::OsStr::from_bytes(header))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat is installed by scripts/services.sh");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(payload).unwrap();
    assert!(child.wait().unwrap().success(), "kcat failed");
}

/// What the stack scenarios below start from: a fresh prefix, the [`HOSTILE`] routing
/// under it, its brokers (created topics included) and a database. The directory and the
/// test database live as long as the returned values.
async fn hostile_stack(
    real: bool,
    backend: Backend,
) -> (
    tempfile::TempDir,
    String,
    switchyard::config::Routing,
    switchyard::kafka::Brokers,
    crate::common::TestDb,
) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, HOSTILE);
    let brokers = brokers_for(real, &routing).await.unwrap();
    let db = test_db(backend).await.unwrap();
    (dir, p, routing, brokers, db)
}

async fn forged_and_broken_metadata_never_stops_a_route(real: bool, backend: Backend) {
    let (_dir, p, routing, brokers, test_db) = hostile_stack(real, backend).await;
    let db = test_db.db.clone();
    let base = brokers.client_config();
    let input = format!("{p}.in");
    let dead = vec![format!("{p}.in.dead")];
    let inc = json!({"steps": [{"op": "increment", "key": "count", "delta": 1}]});
    let inc_bytes = serde_json::to_vec(&inc).unwrap();
    with_service(&routing, &db, &brokers, async {
        let producer = producer(&base);
        // 1. A header name that is not UTF-8 (rdkafka's own iterator panics on it).
        kcat(&brokers.bootstrap_servers(), &input, 0, b"\xff\xfe-name=v", &inc_bytes);
        // 2. Two different events forging one switchyard-event-id: both run.
        // 3. A forged replay-for naming another component: it runs anyway.
        for forged in [
            vec![(names::EVENT_ID, "forged-id")],
            vec![(names::EVENT_ID, "forged-id")],
            vec![(names::REPLAY_FOR, "someone-else"), (names::SIGNATURE, "00")],
        ] {
            let headers = forged.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
            producer
                .send(
                    FutureRecord::to(&input)
                        .partition(0)
                        .key("k")
                        .payload(&inc_bytes)
                        .headers(headers),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        // 4. A NUL in the key and in a header value.
        let headers = OwnedHeaders::new().insert(Header {
            key: "x-nul",
            value: Some(&b"a\0b"[..]),
        });
        producer
            .send(
                FutureRecord::to(&input)
                    .partition(0)
                    .key(&b"k\0ey"[..])
                    .payload(&inc_bytes)
                    .headers(headers),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        // 5. Forged dead-letter headers on a failing event, 6. a 100 KiB failure reason,
        // 7. a payload that is not even UTF-8: each becomes one dead letter of ours.
        let forged_dlq = OwnedHeaders::new()
            .insert(Header {
                key: names::DLQ_COMPONENT,
                value: Some(&b"billing"[..]),
            })
            .insert(Header {
                key: names::DLQ_TOPIC,
                value: Some(&b"billing.payments"[..]),
            });
        let fail = serde_json::to_vec(&json!({"steps": [{"op": "fail", "retryable": false, "reason": "no"}]})).unwrap();
        producer
            .send(
                FutureRecord::to(&input)
                    .partition(0)
                    .key("k")
                    .payload(&fail)
                    .headers(forged_dlq),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        send(
            &producer,
            &input,
            "k",
            Some(0),
            &json!({"steps": [{"op": "fail-long", "kib": 100}]}),
        )
        .await;
        producer
            .send(
                FutureRecord::to(&input)
                    .partition(0)
                    .key("k")
                    .payload(&b"\xff\xfe not utf-8"[..])
                    // 8. with a header value that is not UTF-8 either: kept as text.
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "x-bin",
                        value: Some(&b"\xff\xfe"[..]),
                    })),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        // 9. A tombstone (no payload at all): a dead letter with an empty payload.
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&input).partition(0).key("k"),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        // Behind all of that on partition 0, and beside it on partition 1: plain events.
        for i in 0..10 {
            send(&producer, &input, "k", Some(i % 2), &inc).await;
        }
        wait_for(&db, "worker", "count", 5 + 10, Duration::from_secs(60)).await;
        let start = Instant::now();
        let letters = loop {
            let letters = admin::list_dead_letters(&base, &dead, db.signer(), admin::Reading::All)
                .unwrap()
                .letters;
            if letters.len() >= 4 {
                break letters;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "dead letters: {letters:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(letters.len(), 4, "{letters:?}");
        for letter in &letters {
            assert!(letter.signed, "{letter:?}");
            assert_eq!(
                letter.component, "worker",
                "forged dlq headers are not kept: {letter:?}"
            );
            assert_eq!(letter.source_topic, input);
            assert_eq!(letter.source_partition, "0");
        }
        assert_eq!(letters[0].reason, "no");
        assert!(
            letters[1].reason.len() <= 2048 && letters[1].reason.ends_with("[cut at 102400 B]"),
            "{}",
            letters[1].reason
        );
        assert!(letters[2].reason.contains("bad plan"), "{}", letters[2].reason);
        assert_eq!(
            letters[2].payload, b"\xff\xfe not utf-8",
            "the original payload is kept"
        );
        let bin = letters[2].headers.iter().find(|(n, _)| n == "x-bin");
        assert_eq!(
            bin.map(|(_, v)| v.as_str()),
            Some("\u{fffd}\u{fffd}"),
            "{:?}",
            letters[2].headers
        );
        assert!(letters[3].reason.contains("bad plan"), "{}", letters[3].reason);
        assert_eq!(
            (letters[3].payload.len(), letters[3].payload_bytes),
            (0, 0),
            "a tombstone's letter is empty"
        );

        // A forged dead letter, produced straight into the dead-letter topic, is not replayed.
        let forged = OwnedHeaders::new()
            .insert(Header {
                key: names::DLQ_COMPONENT,
                value: Some(&b"worker"[..]),
            })
            .insert(Header {
                key: names::DLQ_TOPIC,
                value: Some(input.as_bytes()),
            });
        producer
            .send(
                FutureRecord::to(&dead[0]).key("k").payload(&inc_bytes).headers(forged),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        let all = loop {
            let letters = admin::list_dead_letters(&base, &dead, db.signer(), admin::Reading::All)
                .unwrap()
                .letters;
            if letters.len() == 5 {
                break letters;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let err = admin::replay(&base, &routing, db.signer(), &all[4..])
            .await
            .unwrap_err();
        assert!(matches!(err, admin::ReplayError::Unsigned { .. }), "{err}");
    })
    .await;
    assert_eq!(counter(&db, "worker", "count").await, 15, "every good event ran once");
}

async fn an_outbox_row_the_broker_refuses_is_parked_and_blocks_nothing(real: bool, backend: Backend) {
    let (_dir, p, routing, brokers, test_db) = hostile_stack(real, backend).await;
    let db = test_db.db.clone();
    let out = format!("{p}.out");
    let message = |payload: Vec<u8>| OutboundMessage {
        topic: out.clone(),
        key: Some(b"k".to_vec()),
        payload,
        headers: vec![],
    };
    let inc = serde_json::to_vec(&json!({"steps": [{"op": "increment", "key": "count", "delta": 1}]})).unwrap();
    with_service(&routing, &db, &brokers, async {
        // Written by hand: components cannot publish messages this large. One too large
        // for any broker, one to a topic that does not exist, then ordinary rows.
        let mut tx = db.begin().await.unwrap();
        tx.insert_outbox("too-big", "worker", &message(vec![b'x'; 5 << 20]))
            .await
            .unwrap();
        for i in 0..5 {
            tx.insert_outbox(&format!("fine-{i}"), "worker", &message(inc.clone()))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        wait_for(&db, "sink", "count", 5, Duration::from_secs(60)).await;
        let start = Instant::now();
        while db.count(Table::ParkedOutbox).await.unwrap() < 1 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the refused row was not parked"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let parked = db.parked_outbox(10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].event_id, "too-big");
    assert!(
        parked[0].reason.to_lowercase().contains("size") || parked[0].reason.contains("large"),
        "{parked:?}"
    );
    assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 0);
    assert_eq!(counter(&db, "sink", "count").await, 5);
}

async fn a_relay_crash_between_produce_and_mark_sent_duplicates_nothing_downstream(real: bool, backend: Backend) {
    let (_dir, p, routing, brokers, test_db) = hostile_stack(real, backend).await;
    let db = test_db.db.clone();
    let inc = serde_json::to_vec(&json!({"steps": [{"op": "increment", "key": "count", "delta": 1}]})).unwrap();
    let mut tx = db.begin().await.unwrap();
    for i in 0..20 {
        let message = OutboundMessage {
            topic: format!("{p}.out"),
            key: Some(format!("k{i}").into_bytes()),
            payload: inc.clone(),
            headers: vec![(names::EVENT_ID.to_string(), format!("row-{i}"))],
        };
        tx.insert_outbox(&format!("row-{i}"), "worker", &message).await.unwrap();
    }
    tx.commit().await.unwrap();
    // The relay sends the rows, then "crashes" before marking them: the marks are undone.
    let producer: rdkafka::producer::FutureProducer =
        relay::relay_producer_config(&brokers.client_config()).create().unwrap();
    assert_eq!(relay::relay_once(&db, &producer).await.unwrap(), 20);
    let unmark = "UPDATE outbox SET sent_at_ms = NULL";
    match (db.sqlite_pool(), db.postgres_pool()) {
        (Some(pool), _) => drop(sqlx::query(unmark).execute(pool).await.unwrap()),
        (_, Some(pool)) => drop(sqlx::query(unmark).execute(pool).await.unwrap()),
        _ => unreachable!(),
    }
    assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 20);
    with_service(&routing, &db, &brokers, async {
        // The restarted host sends all 20 again; the sink sees 40 messages, runs 20.
        wait_for(&db, "sink", "count", 20, Duration::from_secs(60)).await;
        let start = Instant::now();
        while db.count(Table::UnsentOutbox).await.unwrap() > 0 {
            assert!(start.elapsed() < Duration::from_secs(30), "not resent");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await; // room for a duplicate
    })
    .await;
    assert_eq!(counter(&db, "sink", "count").await, 20, "each resent row ran once");
}

/// Outbox ids are taken at insert, so on PostgreSQL a row can become visible after rows
/// with higher ids were read and sent. The relay reads above the highest id it has in
/// flight; the late row must still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_after_higher_ids_were_relayed_is_relayed_too() {
    let (_dir, p, routing, brokers, test_db) = hostile_stack(true, Backend::Postgres).await;
    let db = test_db.db.clone();
    let inc = serde_json::to_vec(&json!({"steps": [{"op": "increment", "key": "count", "delta": 1}]})).unwrap();
    let row = |id: &str| OutboundMessage {
        topic: format!("{p}.out"),
        key: Some(id.as_bytes().to_vec()),
        payload: inc.clone(),
        headers: vec![(names::EVENT_ID.to_string(), id.to_string())],
    };
    with_service(&routing, &db, &brokers, async {
        let mut late = db.begin().await.unwrap();
        late.insert_outbox("late", "worker", &row("late")).await.unwrap();
        let mut early = db.begin().await.unwrap();
        for i in 0..3 {
            let id = format!("early-{i}");
            early.insert_outbox(&id, "worker", &row(&id)).await.unwrap();
        }
        early.commit().await.unwrap();
        wait_for(&db, "sink", "count", 3, Duration::from_secs(60)).await;
        late.commit().await.unwrap();
        wait_for(&db, "sink", "count", 4, Duration::from_secs(30)).await;
    })
    .await;
    assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 0);
}

/// The relay's `retried` count of `topic` in this process's metrics.
fn relay_retries(topic: &str) -> f64 {
    crate::observe::Scrape(switchyard::observe::metrics().encode())
        .value(
            "switchyard_relay_failures_total",
            &[("topic", topic), ("reason", "retried")],
        )
        .unwrap_or(0.0)
}

async fn a_backlog_larger_than_the_producer_queue_goes_out_over_rounds_in_order(real: bool, backend: Backend) {
    let (_dir, p, _routing, brokers, test_db) = hostile_stack(real, backend).await;
    let db = test_db.db.clone();
    let topic = format!("{p}.out");
    let mut tx = db.begin().await.unwrap();
    for i in 0..6 {
        let message = OutboundMessage {
            topic: topic.clone(),
            key: Some(b"one-key".to_vec()),
            payload: format!("{i}").into_bytes(),
            headers: vec![(names::EVENT_ID.to_string(), format!("row-{i}"))],
        };
        tx.insert_outbox(&format!("row-{i}"), "worker", &message).await.unwrap();
    }
    tx.commit().await.unwrap();
    // A producer queue of two messages: the third row of a round finds it full.
    let mut config = relay::relay_producer_config(&brokers.client_config());
    config.set("queue.buffering.max.messages", "2");
    let producer: rdkafka::producer::FutureProducer = config.create().unwrap();
    let before = relay_retries(&topic);
    let first = relay::relay_once(&db, &producer).await.unwrap();
    assert!((1..6).contains(&first), "the first round settled {first} of 6 rows");
    assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 6 - first as i64);
    assert!(
        relay_retries(&topic) > before,
        "the row that found the queue full was not counted as retried"
    );
    // Later rounds send the rest.
    let start = Instant::now();
    while db.count(Table::UnsentOutbox).await.unwrap() > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the rest was not relayed");
        let _ = relay::relay_once(&db, &producer).await;
    }
    // In the order they were written, each once.
    use rdkafka::Message;
    let consumer = reader(&brokers, &p, &topic);
    let mut payloads = Vec::new();
    while payloads.len() < 6 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the relayed rows to be readable")
            .unwrap();
        payloads.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
    }
    assert_eq!(payloads, ["0", "1", "2", "3", "4", "5"]);
}

/// A consumer of `topic` from its start, in a group of its own.
fn reader(brokers: &switchyard::kafka::Brokers, p: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let mut config = brokers.client_config();
    config
        .set("group.id", format!("{p}-reader"))
        .set("auto.offset.reset", "earliest");
    let consumer: rdkafka::consumer::StreamConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// The running relay reads and sends rows committed while earlier ones still wait for
/// the broker's acknowledgement: they queue behind them, and one key's rows go out in the
/// order they committed.
async fn rows_committed_while_earlier_ones_are_in_flight_go_out_in_order(real: bool, backend: Backend) {
    let (_dir, p, routing, brokers, test_db) = hostile_stack(real, backend).await;
    let db = test_db.db.clone();
    let topic = format!("{p}.out");
    let inc = serde_json::to_vec(&json!({"steps": [{"op": "increment", "key": "count", "delta": 1}]})).unwrap();
    const ROWS: usize = 60;
    with_service(&routing, &db, &brokers, async {
        // One row per transaction, back to back: the relay wakes on each commit.
        for i in 0..ROWS {
            let id = format!("row-{i}");
            let message = OutboundMessage {
                topic: topic.clone(),
                key: Some(b"one-key".to_vec()),
                payload: inc.clone(),
                headers: vec![(names::EVENT_ID.to_string(), id.clone())],
            };
            let mut tx = db.begin().await.unwrap();
            tx.insert_outbox(&id, "worker", &message).await.unwrap();
            tx.commit().await.unwrap();
        }
        wait_for(&db, "sink", "count", ROWS as i64, Duration::from_secs(60)).await;
    })
    .await;
    let consumer = reader(&brokers, &p, &topic);
    let mut ids = Vec::new();
    while ids.len() < ROWS {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the relayed rows to be readable")
            .unwrap();
        let id = headers_of(&message)
            .into_iter()
            .find(|(name, _)| name == names::EVENT_ID)
            .map(|(_, value)| value)
            .unwrap_or_default();
        ids.push(id);
    }
    let expected: Vec<String> = (0..ROWS).map(|i| format!("row-{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(db.count(Table::UnsentOutbox).await.unwrap(), 0);
}

on_both_stacks!(
    forged_and_broken_metadata_never_stops_a_route,
    an_outbox_row_the_broker_refuses_is_parked_and_blocks_nothing,
    a_relay_crash_between_produce_and_mark_sent_duplicates_nothing_downstream,
    a_backlog_larger_than_the_producer_queue_goes_out_over_rounds_in_order,
    rows_committed_while_earlier_ones_are_in_flight_go_out_in_order,
    every_failure_kind_is_dead_lettered_with_its_record_and_replayed_by_the_cli,
);

const FAILURES: &str = r#"
[topics."{p}.in"]
partitions = 1
[components.worker]
artifact = "{probe}"
limits = { deadline-ms = 500, memory-mib = 32 }
config = { {config} }
[[routes]]
topic = "{p}.in"
component = "worker"
group = "{p}-worker"
dead-letter = "{p}.in.dead"
retry = { attempts = 2, initial-backoff-ms = 20, max-backoff-ms = 50 }
"#;

/// Every way an event can fail ends in a dead letter with the full record and the
/// original payload and headers; `switchyard dlq replay` (the CLI) brings one back.
async fn every_failure_kind_is_dead_lettered_with_its_record_and_replayed_by_the_cli(real: bool, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let broken = routing(dir.path(), &p, &FAILURES.replace("{config}", ""));
    let brokers = brokers_for(real, &broken).await.unwrap();
    // A database the CLI can open too (it holds the key that signs dead letters).
    let (db, db_args): (Db, Vec<String>) = match backend {
        Backend::Sqlite => (
            Db::open(None, &dir.path().join("data")).await.unwrap(),
            vec!["--data-dir".into(), dir.path().join("data").display().to_string()],
        ),
        Backend::Postgres => {
            let (db, url) = crate::common::postgres_database().await.unwrap();
            (db, vec!["--database-url".into(), url])
        }
    };
    let base = brokers.client_config();
    let input = format!("{p}.in");
    let dead = vec![format!("{p}.in.dead")];
    let cases = [
        (
            json!({"steps": [{"op": "fail", "retryable": true, "reason": "still down"}]}),
            "retryable",
            "2",
        ),
        (json!({"steps": [{"op": "panic"}]}), "trap", "1"),
        (json!({"steps": [{"op": "loop"}]}), "deadline", "2"),
        (json!({"steps": [{"op": "alloc", "mib": 256}]}), "memory", "1"),
        (
            json!({"steps": [{"op": "require-config", "name": "fixed"}, {"op": "increment", "key": "fixed", "delta": 1}]}),
            "fatal",
            "1",
        ),
    ];
    with_service(&broken, &db, &brokers, async {
        let producer = producer(&base);
        for (i, (plan, _, _)) in cases.iter().enumerate() {
            let body = serde_json::to_vec(plan).unwrap();
            let headers = OwnedHeaders::new().insert(Header {
                key: "x-case",
                value: Some(i.to_string().as_bytes()),
            });
            producer
                .send(
                    FutureRecord::to(&input).key("k").payload(&body).headers(headers),
                    Timeout::After(Duration::from_secs(10)),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        let start = Instant::now();
        let letters = loop {
            let letters = admin::list_dead_letters(&base, &dead, db.signer(), admin::Reading::All)
                .unwrap()
                .letters;
            if letters.len() == cases.len() {
                break letters;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dead letters so far: {letters:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for (i, (letter, (plan, kind, attempts))) in letters.iter().zip(&cases).enumerate() {
            assert_eq!(letter.kind, *kind, "{letter:?}");
            assert_eq!(letter.attempts, *attempts, "{letter:?}");
            assert_eq!(letter.component, "worker");
            assert_eq!(
                (letter.source_topic.as_str(), letter.source_partition.as_str()),
                (input.as_str(), "0")
            );
            assert_eq!(letter.source_offset, i.to_string());
            assert!(letter.failed_at_ms.parse::<i64>().unwrap() > 0);
            assert!(!letter.reason.is_empty() && !letter.event_id.is_empty());
            assert!(letter.signed);
            assert_eq!(
                letter.payload,
                serde_json::to_vec(plan).unwrap(),
                "original payload kept"
            );
            assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
            assert!(
                letter.headers.iter().any(|(n, v)| n == "x-case" && *v == i.to_string()),
                "original headers kept: {:?}",
                letter.headers
            );
        }
    })
    .await;
    // Fixed: the component now has its setting. The operator replays the fatal one.
    let fixed = routing(dir.path(), &p, &FAILURES.replace("{config}", "fixed = \"yes\""));
    with_service(&fixed, &db, &brokers, async {
        let mut args: Vec<String> = vec!["--config".into(), dir.path().join("topics.toml").display().to_string()];
        args.extend(db_args.clone());
        args.extend(["--brokers".into(), brokers.bootstrap_servers()]);
        args.extend(
            [
                "dlq",
                "replay",
                "--topic",
                &dead[0],
                "--partition",
                "0",
                "--offset",
                "4",
            ]
            .map(String::from),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&args)
            .env_remove("SWITCHYARD_DATABASE_URL")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait_for(&db, "worker", "fixed", 1, Duration::from_secs(60)).await;
    })
    .await;
    assert_eq!(counter(&db, "worker", "fixed").await, 1);
}

/// On PostgreSQL the relays share the outbox shards, each shard held by one session at a
/// time: a second relay gets half once the first gives them up, and the shards of a
/// relay whose session died are noticed as lost by it and taken over by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_share_the_outbox_shards_and_take_over_a_dead_ones() {
    let (db, _url) = crate::common::postgres_database().await.unwrap();
    let all: Vec<i16> = (0..switchyard::store::RELAY_SHARDS).collect();
    let mut first = db.try_relay_lock().await.unwrap().expect("a relay on PostgreSQL");
    assert_eq!(first.shards(), Some(&all[..]), "alone, a relay takes every shard");
    let mut second = db.try_relay_lock().await.unwrap().expect("a relay on PostgreSQL");
    assert_eq!(second.shards(), Some(&[][..]), "every shard is taken");
    assert!(
        first.rebalance().await.unwrap(),
        "the first gives up shards over its share"
    );
    assert!(second.rebalance().await.unwrap(), "the second takes the free ones");
    let (a, b) = (first.shards().unwrap().to_vec(), second.shards().unwrap().to_vec());
    assert_eq!(a.len(), all.len() / 2);
    assert_eq!(b.len(), all.len() / 2);
    let mut both: Vec<i16> = a.iter().chain(&b).copied().collect();
    both.sort_unstable();
    assert_eq!(both, all, "disjoint, and together every shard");
    first
        .unsent(&db, 10, 0)
        .await
        .expect("the holder reads its shards' rows on its session");

    // The first relay's session is killed (a restarted server, an operator's pg_terminate_backend).
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
         AND objid::int8 = 7243101 + $1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(i64::from(a[0]))
    .execute(db.postgres_pool().unwrap())
    .await
    .unwrap();
    assert!(
        first.unsent(&db, 10, 0).await.is_err(),
        "the holder must notice: its read of the rows fails"
    );
    // The server frees a terminated session's locks as that backend exits, a moment
    // later; the relay loop rebalances every second, so the survivor tries again.
    let start = Instant::now();
    while second.shards() != Some(&all[..]) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the survivor never took every shard over: it holds {:?}",
            second.shards()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        second.rebalance().await.unwrap();
    }
}

const DEEP: &str = r#"
[topics."{p}.in"]
partitions = 1
[components.worker]
artifact = "{probe}"
[[routes]]
topic = "{p}.in"
component = "worker"
group = "{p}-worker"
retry = { attempts = 3, initial-backoff-ms = 500, max-backoff-ms = 1000 }
"#;

/// More events than the pause window wait behind a retrying head of one partition: the
/// partition is paused and resumed, and every event runs once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_pause_window_behind_a_retrying_event_keeps_order_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = prefix();
    let routing = routing(dir.path(), &p, DEEP);
    let brokers = brokers_for(false, &routing).await.unwrap();
    let db = test_db(Backend::Sqlite).await.unwrap();
    let db = db.db.clone();
    const N: usize = 5000; // the pause window is 4096 queued events
    let producer = producer(&brokers.client_config());
    let head =
        json!({"steps": [{"op": "fail-until-attempt", "attempt": 3}, {"op": "put", "key": "seq", "value": "0"}]});
    send(&producer, &format!("{p}.in"), "k", Some(0), &head).await;
    // Each event checks that the one before it ran, then records itself.
    let bodies: Vec<Vec<u8>> = (1..=N)
        .map(|i| {
            serde_json::to_vec(&json!({"steps": [
                {"op": "expect", "key": "seq", "value": (i - 1).to_string()},
                {"op": "put", "key": "seq", "value": i.to_string()},
                {"op": "increment", "key": "count", "delta": 1}
            ]}))
            .unwrap()
        })
        .collect();
    let topic = format!("{p}.in");
    let mut sends = Vec::new();
    for body in &bodies {
        let record = FutureRecord::to(&topic).partition(0).key("k").payload(body);
        sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for s in sends {
        s.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    with_service(&routing, &db, &brokers, async {
        wait_for(&db, "worker", "count", N as i64, Duration::from_secs(240)).await;
    })
    .await;
    assert_eq!(counter(&db, "worker", "count").await, N as i64);
    assert_eq!(
        db.peek("worker", "seq").await.unwrap(),
        Some(N.to_string().into_bytes())
    );
    assert_eq!(db.count(Table::Inbox).await.unwrap(), N as i64 + 1);
}

/// A relay whose broker accepts and never answers stops within its last rounds' limit
/// and keeps the row for the next start. On PostgreSQL the relay owns outbox shards and,
/// every second, waits for what it has in flight before shards change hands; a stop that
/// came during that wait waited for the host's grace period.
async fn a_relay_whose_broker_never_answers_stops_at_its_limit_and_keeps_the_row(db: &Db) {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    // Requests are accepted and never answered: the row is never acknowledged.
    cluster.broker_round_trip_time(1, Duration::from_secs(3600)).unwrap();
    let mut tx = db.begin().await.unwrap();
    let message = OutboundMessage {
        topic: "t".into(),
        key: Some(b"k".to_vec()),
        payload: b"{}".to_vec(),
        headers: Vec::new(),
    };
    tx.insert_outbox("e1", "c", &message).await.unwrap();
    tx.commit().await.unwrap();
    let mut base = rdkafka::ClientConfig::new();
    base.set("bootstrap.servers", cluster.bootstrap_servers());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(relay::run_relay(
        db.clone(),
        relay::relay_producer_config(&base),
        shutdown,
    ));
    // Past the first rebalance (every second, with shards): the relay waits for the row's answer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(relay::LAST_ROUNDS + Duration::from_secs(20), relay)
        .await
        .expect("the relay stopped")
        .unwrap();
    assert!(
        started.elapsed() < relay::LAST_ROUNDS + Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        db.unsent_outbox(10).await.unwrap().len(),
        1,
        "the row stays for the next start"
    );
    // Its producer may still be talking to the cluster.
    std::mem::forget(cluster);
}
