//! The component runtime with real components built from handlers/, on SQLite and on
//! PostgreSQL: isolation, atomicity, deduplication, containment of bad guests, and
//! rejection of components that do not fit the world.

use serde_json::json;
use switchyard::event::{InboundEvent, LogPosition, headers};
use switchyard::runtime::{FailureKind, LoadError, Outcome, Runtime};
use switchyard::store::{Db, InboxRecord, OutboundMessage, Overlay, Staged, Table, UnitResult};

use crate::common::spec;

fn event(id: &str, plan: serde_json::Value) -> InboundEvent {
    let at = LogPosition {
        origin: "test",
        topic: "probe.in",
        partition: 0,
        offset: 0,
    };
    InboundEvent::from_message(
        &at,
        Some(b"k".to_vec()),
        serde_json::to_vec(&plan).unwrap(),
        vec![
            (headers::EVENT_ID.into(), id.into()),
            (headers::REQUEST_ID.into(), format!("req-{id}")),
            (
                headers::TRACEPARENT.into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
        ],
        Some(1_700_000_000_000),
    )
}

fn committed(outcome: Outcome) -> switchyard::runtime::Effects {
    match outcome {
        Outcome::Committed(effects) => effects,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn failed(outcome: Outcome) -> switchyard::runtime::Failure {
    match outcome {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

async fn nothing_committed(db: &Db) {
    for table in [Table::Kv, Table::Inbox, Table::Outbox, Table::Timers] {
        assert_eq!(db.count(table).await.unwrap(), 0, "{table:?} should be empty");
    }
}

async fn components_cannot_see_each_others_data(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let alpha = runtime.load(&spec("alpha", "probe", &[])).unwrap();
    let beta = runtime.load(&spec("beta", "probe", &[])).unwrap();
    let put = json!({"steps": [{"op": "put", "key": "secret", "value": "alpha's"}, {"op": "put", "key": "s/1", "value": "x"}]});
    committed(runtime.invoke(&alpha, db, &event("e1", put)).await.unwrap());
    // beta sees neither the key nor the prefix, and its own write does not touch alpha's.
    let look = json!({"steps": [
        {"op": "expect", "key": "secret", "value": null},
        {"op": "expect-prefix", "prefix": "s/", "keys": []},
        {"op": "put", "key": "secret", "value": "beta's"}
    ]});
    committed(runtime.invoke(&beta, db, &event("e2", look)).await.unwrap());
    assert_eq!(
        db.peek("alpha", "secret").await.unwrap().as_deref(),
        Some(&b"alpha's"[..])
    );
    assert_eq!(
        db.peek("beta", "secret").await.unwrap().as_deref(),
        Some(&b"beta's"[..])
    );
}

async fn a_failed_handler_leaves_nothing_behind(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &["probe.out"])).unwrap();
    for retryable in [false, true] {
        let plan = json!({"steps": [
            {"op": "put", "key": "a", "value": "1"},
            {"op": "increment", "key": "n", "delta": 1},
            {"op": "publish", "topic": "probe.out", "key": "k", "payload": "hello"},
            {"op": "schedule", "topic": "probe.out", "delay_ms": 1000, "payload": "later"},
            {"op": "fail", "retryable": retryable, "reason": "changed my mind"}
        ]});
        let failure = failed(runtime.invoke(&probe, db, &event("e1", plan)).await.unwrap());
        let kind = if retryable {
            FailureKind::Retryable
        } else {
            FailureKind::Fatal
        };
        assert_eq!(
            failure,
            switchyard::runtime::Failure {
                kind,
                reason: "changed my mind".into()
            }
        );
        nothing_committed(db).await;
    }
    // The failed attempts did not consume the event id: a fixed run of it goes through.
    let plan = json!({"steps": [{"op": "put", "key": "a", "value": "1"}]});
    committed(runtime.invoke(&probe, db, &event("e1", plan)).await.unwrap());
    assert_eq!(db.count(Table::Kv).await.unwrap(), 1);
}

async fn a_repeated_event_id_runs_once(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &["probe.out"])).unwrap();
    let plan = json!({"steps": [
        {"op": "increment", "key": "count", "delta": 1},
        {"op": "publish", "topic": "probe.out", "key": null, "payload": "once"}
    ]});
    committed(runtime.invoke(&probe, db, &event("same", plan.clone())).await.unwrap());
    assert!(matches!(
        runtime.invoke(&probe, db, &event("same", plan.clone())).await.unwrap(),
        Outcome::Duplicate
    ));
    assert_eq!(db.peek("probe", "count").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.count(Table::Outbox).await.unwrap(), 1);
    // Another component handling the same event id is a different inbox entry.
    let other = runtime.load(&spec("other", "probe", &["probe.out"])).unwrap();
    committed(runtime.invoke(&other, db, &event("same", plan)).await.unwrap());
}

async fn effects_carry_ids_trace_and_config(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &["probe.out"])).unwrap();
    let plan = json!({"steps": [
        {"op": "config-to-storage", "name": "greeting", "key": "g"},
        {"op": "config-to-storage", "name": "missing", "key": "m"},
        {"op": "publish", "topic": "probe.out", "key": "k1", "payload": "p1"},
        {"op": "schedule", "topic": "probe.out", "delay_ms": 60000, "payload": "p2"},
        {"op": "log", "message": "hi"},
        {"op": "print", "line": "to stdout"}
    ]});
    let effects = committed(runtime.invoke(&probe, db, &event("e1", plan)).await.unwrap());
    assert_eq!(db.peek("probe", "g").await.unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(db.peek("probe", "m").await.unwrap().as_deref(), Some(&b"<unset>"[..]));
    assert_eq!(effects.timers.len(), 1);
    assert_eq!(db.count(Table::Timers).await.unwrap(), 1);

    let rows = db.unsent_outbox(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let header = |name: &str| {
        row.message
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header(headers::EVENT_ID), Some(row.event_id.clone()));
    assert_eq!(header(headers::REQUEST_ID).as_deref(), Some("req-e1"));
    assert_eq!(header(headers::SOURCE).as_deref(), Some("probe"));
    assert_eq!(header(headers::CAUSED_BY).as_deref(), Some("e1"));
    let traceparent = header(headers::TRACEPARENT).unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "a child span gets a new id: {traceparent}"
    );
    assert_eq!(row.message.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(row.message.payload, b"p1");
}

async fn publishing_outside_the_allowed_topics_is_a_guest_error(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &["probe.out"])).unwrap();
    let plan = json!({"steps": [{"op": "publish", "topic": "billing.payments", "key": null, "payload": "forged"}]});
    let failure = failed(runtime.invoke(&probe, db, &event("e1", plan)).await.unwrap());
    // The probe turns the import's error into a fatal handle error: no trap.
    assert_eq!(failure.kind, FailureKind::Fatal);
    assert!(
        failure.reason.contains("TopicNotAllowed(\"billing.payments\")"),
        "{}",
        failure.reason
    );
    nothing_committed(db).await;
}

async fn bad_guests_are_stopped_and_the_host_keeps_serving(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    let cases = [
        (
            json!({"steps": [{"op": "put", "key": "a", "value": "1"}, {"op": "panic"}]}),
            FailureKind::Trap,
            "wasm trap",
        ),
        (
            json!({"steps": [{"op": "put", "key": "a", "value": "1"}, {"op": "loop"}]}),
            FailureKind::Deadline,
            "deadline of 2000 ms exceeded",
        ),
        (
            json!({"steps": [{"op": "put", "key": "a", "value": "1"}, {"op": "alloc", "mib": 256}]}),
            FailureKind::Memory,
            "memory cap of 33554432 bytes exceeded",
        ),
    ];
    for (i, (plan, kind, reason)) in cases.into_iter().enumerate() {
        let failure = failed(
            runtime
                .invoke(&probe, db, &event(&format!("bad{i}"), plan))
                .await
                .unwrap(),
        );
        assert_eq!(failure.kind, kind, "{failure:?}");
        assert!(failure.reason.contains(reason), "{failure:?}");
        nothing_committed(db).await;
    }
    // Still serving, with the same loaded component.
    let ok = json!({"steps": [{"op": "put", "key": "after", "value": "fine"}]});
    committed(runtime.invoke(&probe, db, &event("good", ok)).await.unwrap());
}

/// Bounds are checked in code, not by guard pages: a guest reading past the end of its
/// memory traps, even after an earlier instance of the same component grew its memory
/// (a pooled slot stays read/write up to the largest size it reached), and commits
/// nothing; the host keeps serving.
async fn a_guest_reading_past_its_memory_traps(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    let grow = json!({"steps": [{"op": "alloc", "mib": 16}]});
    committed(runtime.invoke(&probe, db, &event("grow", grow)).await.unwrap());
    let before = db.count(Table::Inbox).await.unwrap();
    for pages in [0, 1, 64] {
        let plan = json!({"steps": [
            {"op": "put", "key": "past", "value": "1"},
            {"op": "read-past-memory", "pages": pages},
        ]});
        let failure = failed(
            runtime
                .invoke(&probe, db, &event(&format!("past{pages}"), plan))
                .await
                .unwrap(),
        );
        assert_eq!(failure.kind, FailureKind::Trap, "{pages} pages past: {failure:?}");
        assert!(failure.reason.contains("out of bounds memory access"), "{failure:?}");
    }
    assert_eq!(
        db.count(Table::Inbox).await.unwrap(),
        before,
        "a trapped event claimed nothing"
    );
    assert_eq!(db.count(Table::Kv).await.unwrap(), 0, "a trapped event wrote nothing");
    let ok = json!({"steps": [{"op": "put", "key": "after", "value": "fine"}]});
    committed(runtime.invoke(&probe, db, &event("good", ok)).await.unwrap());
}

async fn storage_operations_work_through_the_guest(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    let plan = json!({"steps": [
        {"op": "increment", "key": "n", "delta": 40},
        {"op": "increment", "key": "n", "delta": 2},
        {"op": "expect", "key": "n", "value": "42"},
        {"op": "cas", "key": "lock", "expected": null, "new": "me", "swapped": true},
        {"op": "cas", "key": "lock", "expected": null, "new": "you", "swapped": false},
        {"op": "put", "key": "o/2", "value": "b"},
        {"op": "put", "key": "o/1", "value": "a"},
        {"op": "put", "key": "o/10", "value": "c"},
        {"op": "put", "key": "p", "value": "z"},
        {"op": "delete", "key": "o/2"},
        {"op": "expect-prefix", "prefix": "o/", "keys": ["o/1", "o/10"]},
        {"op": "expect", "key": "lock", "value": "me"}
    ]});
    committed(runtime.invoke(&probe, db, &event("e1", plan)).await.unwrap());
}

/// A staged unit of component "g": `work` stages its reads and writes on `base`.
async fn unit_of(
    db: &Db,
    event_id: &str,
    base: Overlay,
    work: impl AsyncFnOnce(&mut Staged),
) -> (switchyard::store::Unit, Overlay) {
    let mut staged = Staged::new(db, "g", base);
    work(&mut staged).await;
    staged.insert_outbox(
        &format!("out-{event_id}"),
        OutboundMessage {
            topic: "g.out".into(),
            key: None,
            payload: event_id.as_bytes().to_vec(),
            headers: vec![],
        },
    );
    let record = InboxRecord {
        component: "g".into(),
        event_id: event_id.into(),
        topic: "g.in".into(),
        outcome: "committed",
        ..Default::default()
    };
    staged.finish(record).await
}

/// One group commit decides each chain's events in order, as if they had committed one
/// at a time: a chain's later event sees its earlier one's writes; a stale read is a
/// conflict that stops its chain; an event claimed before commits nothing (and sends the
/// group down the one-by-one path on PostgreSQL); timers cancelled and set in a chain.
async fn a_group_commit_decides_each_event_as_if_alone(db: &Db) {
    let (seed, _) = unit_of(db, "seed", Overlay::default(), async |s| {
        s.put("n", b"1");
        s.insert_timer(
            "t1",
            switchyard::store::now_ms() + 3_600_000,
            OutboundMessage {
                topic: "g.later".into(),
                key: None,
                payload: b"x".to_vec(),
                headers: vec![],
            },
        );
    })
    .await;
    assert_eq!(db.commit_chain(vec![seed]).await.unwrap(), vec![UnitResult::Committed]);

    // Chain A: a1 increments n and cancels t1; a2 reads a1's writes.
    let (a1, overlay) = unit_of(db, "a1", Overlay::default(), async |s| {
        assert_eq!(s.increment("n", 1).await.unwrap(), 2);
        assert!(s.cancel_timer("t1").await.unwrap());
    })
    .await;
    let (a2, _) = unit_of(db, "a2", overlay, async |s| {
        assert_eq!(s.get("n").await.unwrap().as_deref(), Some(&b"2"[..]));
        assert!(!s.cancel_timer("t1").await.unwrap(), "a1 cancelled it");
        s.put("a2", b"done");
    })
    .await;
    // Chain B read n before chain A commits: a conflict, and b2 after it does not run.
    let (b1, overlay) = unit_of(db, "b1", Overlay::default(), async |s| {
        assert_eq!(s.increment("n", 10).await.unwrap(), 11);
    })
    .await;
    let (b2, _) = unit_of(db, "b2", overlay, async |s| s.put("b2", b"done")).await;
    // Chain C: a blind write, independent of the others.
    let (c1, _) = unit_of(db, "c1", Overlay::default(), async |s| s.put("c1", b"done")).await;
    let results = db.commit_chains(vec![vec![a1, a2], vec![b1, b2], vec![c1]]).await;
    let results: Vec<Vec<UnitResult>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results,
        vec![
            vec![UnitResult::Committed, UnitResult::Committed],
            vec![UnitResult::Conflict, UnitResult::NotRun],
            vec![UnitResult::Committed],
        ]
    );
    assert_eq!(db.peek("g", "n").await.unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.peek("g", "b2").await.unwrap(), None);
    assert_eq!(db.count(Table::Timers).await.unwrap(), 0, "t1 cancelled");
    assert_eq!(db.count(Table::Outbox).await.unwrap(), 4, "seed, a1, a2, c1");

    // b1 again on fresh data commits; a1 again (a redelivery) is a duplicate and
    // applies nothing, and d1 beside it in the group still commits.
    let (b1, overlay) = unit_of(db, "b1", Overlay::default(), async |s| {
        assert_eq!(s.increment("n", 10).await.unwrap(), 12);
    })
    .await;
    let (b2, _) = unit_of(db, "b2", overlay, async |s| s.put("b2", b"done")).await;
    let (again, _) = unit_of(db, "a1", Overlay::default(), async |s| s.put("again", b"x")).await;
    let (d1, _) = unit_of(db, "d1", Overlay::default(), async |s| s.put("d1", b"done")).await;
    let results = db.commit_chains(vec![vec![b1, b2], vec![again], vec![d1]]).await;
    let results: Vec<Vec<UnitResult>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results,
        vec![
            vec![UnitResult::Committed, UnitResult::Committed],
            vec![UnitResult::Duplicate],
            vec![UnitResult::Committed],
        ]
    );
    assert_eq!(db.peek("g", "n").await.unwrap().as_deref(), Some(&b"12"[..]));
    assert_eq!(db.peek("g", "again").await.unwrap(), None);
    assert_eq!(db.count(Table::Inbox).await.unwrap(), 7, "seed, a1, a2, c1, b1, b2, d1");
    let relayed: Vec<String> = db
        .unsent_outbox(100)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.event_id)
        .collect();
    assert_eq!(
        relayed,
        ["out-seed", "out-a1", "out-a2", "out-c1", "out-b1", "out-b2", "out-d1"],
        "the relay sends in the order the events committed"
    );

    // Timers in one group as one unit after another: e1 sets t2 and e2 cancels it (an
    // order and its payment in one group); e3 sets t3 and e4 cancels it and sets it again.
    let timer = |topic: &str| OutboundMessage {
        topic: topic.into(),
        key: None,
        payload: b"x".to_vec(),
        headers: vec![],
    };
    let later = switchyard::store::now_ms() + 3_600_000;
    let (e1, overlay) = unit_of(db, "e1", Overlay::default(), async |s| {
        s.insert_timer("t2", later, timer("g.t2"))
    })
    .await;
    let (e2, _) = unit_of(db, "e2", overlay, async |s| {
        assert!(s.cancel_timer("t2").await.unwrap(), "e1 set it");
    })
    .await;
    let (e3, overlay) = unit_of(db, "e3", Overlay::default(), async |s| {
        s.insert_timer("t3", later, timer("g.first"))
    })
    .await;
    let (e4, _) = unit_of(db, "e4", overlay, async |s| {
        assert!(s.cancel_timer("t3").await.unwrap(), "e3 set it");
        s.insert_timer("t3", later, timer("g.second"));
    })
    .await;
    let results = db.commit_chains(vec![vec![e1, e2], vec![e3, e4]]).await;
    let results: Vec<Vec<UnitResult>> = results.into_iter().map(Result::unwrap).collect();
    assert!(
        results.iter().flatten().all(|r| *r == UnitResult::Committed),
        "{results:?}"
    );
    assert_eq!(
        db.count(Table::Timers).await.unwrap(),
        1,
        "t2 set and cancelled, t3 set again"
    );
    assert_eq!(db.fire_due_timers(later + 1, 10).await.unwrap(), 1);
    let fired = db.unsent_outbox(100).await.unwrap().pop().unwrap();
    assert_eq!(fired.message.topic, "g.second", "the last setting of t3 stands");
}

/// A unit that listed keys is decided in a group as if alone too: against what the
/// group's earlier units wrote (a delete pulls the next key into its window, an insert
/// pushes one out), not only against what the database held before the group.
async fn a_listing_in_a_group_sees_the_earlier_units_writes(db: &Db) {
    let (seed, _) = unit_of(db, "seed", Overlay::default(), async |s| {
        for key in ["p/1", "p/2", "p/3"] {
            s.put(key, b"v");
        }
    })
    .await;
    assert_eq!(db.commit_chain(vec![seed]).await.unwrap(), vec![UnitResult::Committed]);
    let listed = async |s: &mut Staged, after: Option<&str>, limit: u32| -> Vec<String> {
        let rows = s.list_prefix("p/", after, limit, usize::MAX).await.unwrap().unwrap();
        rows.into_iter().map(|(key, _)| key).collect()
    };

    // All read before x1 commits.
    let (x1, _) = unit_of(db, "x1", Overlay::default(), async |s| {
        assert!(s.delete("p/1").await.unwrap());
        s.put("p/0", b"new");
    })
    .await;
    // y1's first two keys become p/0 and p/2: a conflict.
    let (y1, _) = unit_of(db, "y1", Overlay::default(), async |s| {
        assert_eq!(listed(s, None, 2).await, ["p/1", "p/2"]);
    })
    .await;
    // After p/1 nothing moved: w1 holds.
    let (w1, _) = unit_of(db, "w1", Overlay::default(), async |s| {
        assert_eq!(listed(s, Some("p/1"), 1).await, ["p/2"]);
        s.put("w1", b"done");
    })
    .await;
    // z1 saw p/3 as the last key; its own write p/4 is in its answer.
    let (z1, _) = unit_of(db, "z1", Overlay::default(), async |s| {
        s.put("p/4", b"own");
        assert_eq!(listed(s, Some("p/2"), 5).await, ["p/3", "p/4"]);
    })
    .await;
    let results = db.commit_chains(vec![vec![x1], vec![y1], vec![w1], vec![z1]]).await;
    let results: Vec<Vec<UnitResult>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results,
        vec![
            vec![UnitResult::Committed],
            vec![UnitResult::Conflict],
            vec![UnitResult::Committed],
            vec![UnitResult::Committed],
        ]
    );

    // v1 listed one key after p/0 while p/2 stood; u1, before it in the group, deletes
    // p/2, so p/3 is what v1 would see now.
    let (v1, _) = unit_of(db, "v1", Overlay::default(), async |s| {
        assert_eq!(listed(s, Some("p/0"), 1).await, ["p/2"]);
    })
    .await;
    let (u1, _) = unit_of(db, "u1", Overlay::default(), async |s| {
        assert!(s.delete("p/2").await.unwrap());
    })
    .await;
    let results = db.commit_chains(vec![vec![u1], vec![v1]]).await;
    let results: Vec<Vec<UnitResult>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, vec![vec![UnitResult::Committed], vec![UnitResult::Conflict]]);
    assert_eq!(db.peek("g", "p/1").await.unwrap(), None);
    assert_eq!(db.peek("g", "p/4").await.unwrap().as_deref(), Some(&b"own"[..]));
}

/// Listings whose prefix has no successor (empty, or only `char::MAX`) and prefixes
/// beside the surrogate gap are decided in a group on the database's own key order.
async fn listings_of_edge_prefixes_are_decided_in_a_group(db: &Db) {
    let keys = ["a\u{D7FF}x", "a\u{E000}", "b", "\u{10FFFF}\u{10FFFF}k"];
    let (seed, _) = unit_of(db, "seed", Overlay::default(), async |s| {
        for key in keys {
            s.put(key, b"v");
        }
    })
    .await;
    assert_eq!(db.commit_chain(vec![seed]).await.unwrap(), vec![UnitResult::Committed]);
    let listing = |prefix: &'static str, expected: Vec<&'static str>| {
        unit_of(db, prefix, Overlay::default(), async move |s| {
            let rows = s.list_prefix(prefix, None, 10, usize::MAX).await.unwrap().unwrap();
            let got: Vec<String> = rows.into_iter().map(|(key, _)| key).collect();
            assert_eq!(got, expected, "prefix {prefix:?}");
        })
    };
    let (near_gap, _) = listing("a\u{D7FF}", vec!["a\u{D7FF}x"]).await;
    let (top, _) = listing("\u{10FFFF}", vec!["\u{10FFFF}\u{10FFFF}k"]).await;
    let (all, _) = listing("", keys.to_vec()).await;
    let (delete, _) = unit_of(db, "delete", Overlay::default(), async |s| {
        assert!(s.delete("b").await.unwrap());
    })
    .await;
    let results = db
        .commit_chains(vec![vec![delete], vec![near_gap], vec![top], vec![all]])
        .await;
    let results: Vec<Vec<UnitResult>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        results,
        vec![
            vec![UnitResult::Committed],
            vec![UnitResult::Committed],
            vec![UnitResult::Committed],
            vec![UnitResult::Conflict],
        ],
        "only the listing of every key saw b"
    );
}

/// More invocations at once than the engine's pool has room for wait their turn: none
/// fails to instantiate (a failure the dispatcher would count against the event and end
/// in a dead letter).
async fn invocations_past_the_pools_room_wait_their_turn(db: &Db) {
    let runtime = std::sync::Arc::new(Runtime::with_instance_limit(2).unwrap());
    let probe = std::sync::Arc::new(runtime.load(&spec("probe", "probe", &[])).unwrap());
    let started = std::time::Instant::now();
    let runs = (0..5).map(|i| {
        let (runtime, probe, db) = (runtime.clone(), probe.clone(), db.clone());
        tokio::spawn(async move {
            let plan =
                json!({"steps": [{"op": "sleep", "ms": 200}, {"op": "put", "key": format!("k{i}"), "value": "v"}]});
            runtime.invoke(&probe, &db, &event(&format!("wait-{i}"), plan)).await
        })
    });
    for run in futures_util::future::join_all(runs).await {
        committed(run.unwrap().expect("waits for room instead of failing to instantiate"));
    }
    // Two at a time: three rounds of 200 ms at least.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(db.count(Table::Inbox).await.unwrap(), 5);
}

on_both_backends!(
    invocations_past_the_pools_room_wait_their_turn,
    a_group_commit_decides_each_event_as_if_alone,
    listings_of_edge_prefixes_are_decided_in_a_group,
    a_listing_in_a_group_sees_the_earlier_units_writes,
    components_cannot_see_each_others_data,
    a_failed_handler_leaves_nothing_behind,
    a_repeated_event_id_runs_once,
    effects_carry_ids_trace_and_config,
    publishing_outside_the_allowed_topics_is_a_guest_error,
    bad_guests_are_stopped_and_the_host_keeps_serving,
    a_guest_reading_past_its_memory_traps,
    storage_operations_work_through_the_guest,
    concurrent_increments_are_never_lost,
    closing_takes_back_the_connections_kept_between_events,
);

/// A component that imports an interface the host does not have.
const UNKNOWN_IMPORT: &str = r#"(component
  (import "acme:net/socket" (instance (export "connect" (func (param "addr" string)))))
)"#;

/// A component with no `handle` export.
const NO_HANDLE: &str = r#"(component
  (core module $m (func (export "nothing")))
  (core instance $i (instantiate $m))
  (func (export "nothing") (canon lift (core func $i "nothing")))
)"#;

#[test]
fn components_of_the_wrong_world_are_rejected_with_the_fault_named() {
    let runtime = Runtime::new().unwrap();
    let spec = spec("bad", "probe", &[]);
    let err = runtime
        .load_bytes(&spec, UNKNOWN_IMPORT.as_bytes())
        .err()
        .expect("must be rejected");
    assert!(matches!(err, LoadError::World { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("component \"bad\"") && text.contains("acme:net/socket"),
        "{text}"
    );

    let err = runtime
        .load_bytes(&spec, NO_HANDLE.as_bytes())
        .err()
        .expect("must be rejected");
    let text = err.to_string();
    assert!(text.contains("does not fit world") && text.contains("handle"), "{text}");

    let err = runtime
        .load_bytes(&spec, b"\0asm garbage")
        .err()
        .expect("must be rejected");
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
}

#[test]
fn every_handler_under_handlers_loads() {
    let runtime = Runtime::new().unwrap();
    for name in ["order", "billing", "notif", "user", "probe"] {
        runtime
            .load(&spec(name, name, &[]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Concurrent increments of one absent key from many events must all count (on
/// PostgreSQL they run in concurrent transactions).
async fn concurrent_increments_are_never_lost(db: &Db) {
    let runtime = std::sync::Arc::new(Runtime::new().unwrap());
    let probe = std::sync::Arc::new(runtime.load(&spec("probe", "probe", &[])).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (runtime, probe, db) = (runtime.clone(), probe.clone(), db.clone());
        tasks.spawn(async move {
            let plan = json!({"steps": [{"op": "increment", "key": "hits", "delta": 1}]});
            committed(
                runtime
                    .invoke(&probe, &db, &event(&format!("c{i}"), plan))
                    .await
                    .unwrap(),
            );
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(db.peek("probe", "hits").await.unwrap().as_deref(), Some(&b"24"[..]));
}

/// Between events the host keeps connections out of the pool: the readers of
/// invocations that read (`store/spare.rs`). Closing the database gives them back instead
/// of waiting for them.
async fn closing_takes_back_the_connections_kept_between_events(db: &Db) {
    let (unit, _) = unit_of(db, "kept-1", Overlay::default(), async |s: &mut Staged| {
        assert_eq!(s.get("k").await.unwrap(), None);
        s.put("k", b"v");
    })
    .await;
    assert_eq!(db.commit_chain(vec![unit]).await.unwrap(), vec![UnitResult::Committed]);
    tokio::time::timeout(std::time::Duration::from_secs(3), db.close())
        .await
        .expect("the database closes without waiting for the kept connections");
}
