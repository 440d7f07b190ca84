//! Read-only queries (`Runtime::query`) against the real components on SQLite and
//! PostgreSQL: billing's `balance`, user's `profile`, order's `orders` and `order` answer
//! from what the saga stored, and a query can change nothing.

use serde_json::{Value, json};
use switchyard::event::{InboundEvent, headers};
use switchyard::runtime::{LoadedComponent, Outcome, QueryError, Runtime};
use switchyard::store::{Db, Table};

use crate::common::spec;

/// Delivers `payload` on `topic` to `component` and insists that it commits.
async fn deliver(runtime: &Runtime, component: &LoadedComponent, db: &Db, topic: &str, payload: Value) {
    let event = InboundEvent::from_message(
        &crate::common::at(topic),
        payload["username"].as_str().map(|u| u.as_bytes().to_vec()),
        serde_json::to_vec(&payload).unwrap(),
        vec![(headers::EVENT_ID.into(), uuid::Uuid::new_v4().to_string())],
        Some(1_700_000_000_000),
    );
    match runtime.invoke(component, db, &event).await.unwrap() {
        Outcome::Committed(_) => {}
        other => panic!("{topic} to {}: expected a commit, got {other:?}", component.spec.name),
    }
}

async fn ask(
    runtime: &Runtime,
    component: &LoadedComponent,
    db: &Db,
    name: &str,
    args: Value,
) -> Result<Value, QueryError> {
    let bytes = runtime
        .query(component, db, name, &serde_json::to_vec(&args).unwrap())
        .await?;
    Ok(serde_json::from_slice(&bytes).expect("a query answers JSON"))
}

fn order_request(username: &str, request_id: &str, price: f64) -> Value {
    json!({"requestId": request_id, "username": username, "items": [{"productId": "p1", "quantity": 2, "price": price}],
           "deliveryAddress": "1 Main St", "paymentMethod": "card", "createdAt": 1})
}

async fn components_answer_their_queries_from_their_own_state(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let billing = runtime
        .load(&spec("billing", "billing", &["billing.payments"]))
        .unwrap();
    let user = runtime
        .load(&spec("user", "user", &["users.profile.response"]))
        .unwrap();
    let order = runtime
        .load(&spec(
            "order",
            "order",
            &["orders.created", "orders.status", "orders.timeouts", "billing.refunds"],
        ))
        .unwrap();

    let registered = json!({"username": "alice", "email": "alice@example.org", "registeredAt": 5, "source": "auth"});
    deliver(&runtime, &billing, db, "users.registered", registered.clone()).await;
    deliver(&runtime, &user, db, "users.registered", registered).await;
    deliver(
        &runtime,
        &billing,
        db,
        "billing.deposits",
        json!({"requestId": "d1", "username": "alice", "amount": 20.29, "requestedAt": 6}),
    )
    .await;
    deliver(
        &runtime,
        &order,
        db,
        "orders.requests",
        order_request("alice", "r-1", 1.5),
    )
    .await;
    deliver(
        &runtime,
        &order,
        db,
        "orders.requests",
        order_request("alice", "r-2", 2.25),
    )
    .await;
    // bob reuses alice's requestId: his own order, not an answer about hers.
    deliver(
        &runtime,
        &order,
        db,
        "orders.requests",
        order_request("bob", "r-1", 9.0),
    )
    .await;

    assert_eq!(
        ask(&runtime, &billing, db, "balance", json!({"username": "alice"}))
            .await
            .unwrap(),
        json!({"username": "alice", "balance": 20.29, "balanceCents": 2029})
    );
    assert_eq!(
        ask(&runtime, &user, db, "profile", json!({"username": "alice"}))
            .await
            .unwrap(),
        json!({"username": "alice", "email": "alice@example.org", "displayName": "alice",
               "registeredAt": 5, "source": "auth"})
    );

    let listed = ask(&runtime, &order, db, "orders", json!({"username": "alice"}))
        .await
        .unwrap();
    let requests: Vec<&str> = listed["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["requestId"].as_str().unwrap())
        .collect();
    assert_eq!(requests, ["r-2", "r-1"], "alice's orders only, newest first: {listed}");
    assert_eq!(listed["orders"][0]["totalCost"], json!(4.5));
    assert_eq!(listed["orders"][0]["status"], json!("PENDING_VALIDATION"));

    let one = ask(
        &runtime,
        &order,
        db,
        "order",
        json!({"username": "bob", "requestId": "r-1"}),
    )
    .await
    .unwrap();
    assert_eq!(
        (one["username"].clone(), one["totalCost"].clone()),
        (json!("bob"), json!(18.0))
    );
    // Someone else's order and no order are the same answer.
    for (username, request_id) in [("carol", "r-1"), ("alice", "r-9")] {
        let err = ask(
            &runtime,
            &order,
            db,
            "order",
            json!({"username": username, "requestId": request_id}),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, QueryError::NotFound { .. }), "{err}");
    }
    let err = ask(&runtime, &billing, db, "balance", json!({"username": "nobody"}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::NotFound { .. }), "{err}");
    let err = ask(&runtime, &user, db, "profile", json!({"username": "nobody"}))
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::NotFound { .. }), "{err}");

    // Bad arguments and unknown names are told apart, each naming what is wrong.
    let err = ask(&runtime, &billing, db, "balance", json!({"user": "alice"}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueryError::Invalid { .. }) && err.to_string().contains("username"),
        "{err}"
    );
    let err = ask(&runtime, &billing, db, "statement", json!({})).await.unwrap_err();
    assert!(
        matches!(err, QueryError::Unknown { .. }) && err.to_string().contains("balance"),
        "{err}"
    );
    assert!(!err.is_transient());
}

async fn a_write_attempted_in_a_query_fails_and_leaves_nothing(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime
        .load(&spec("probe", "probe", &["probe.out", "probe.later"]))
        .unwrap();
    let plan = json!({"steps": [
        {"op": "put", "key": "k", "value": "1"},
        {"op": "delete", "key": "k"},
        {"op": "increment", "key": "n", "delta": 1},
        {"op": "cas", "key": "k", "expected": null, "new": "2", "swapped": true},
        {"op": "publish", "topic": "probe.out", "key": null, "payload": "x"},
        {"op": "schedule", "topic": "probe.later", "delay_ms": 10, "payload": "y"},
        {"op": "expect", "key": "k", "value": null}
    ]});
    let answer = ask(&runtime, &probe, db, "run", plan).await.unwrap();
    let outcomes: Vec<&str> = answer["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(outcomes.len(), 7, "{answer}");
    for (i, outcome) in outcomes[..6].iter().enumerate() {
        assert!(
            outcome.contains("ReadOnly") && outcome.contains("read-only query"),
            "step {i} must be refused as read-only: {outcome}"
        );
    }
    assert_eq!(outcomes[6], "ok", "reads work and see no write: {answer}");
    for table in [Table::Kv, Table::Inbox, Table::Outbox, Table::Timers] {
        assert_eq!(
            db.count(table).await.unwrap(),
            0,
            "{table:?} must stay empty after a query"
        );
    }

    // What an event stored is visible to a query, and survives the query's write attempt.
    let event = InboundEvent::from_message(
        &crate::common::at("probe.in"),
        None,
        serde_json::to_vec(&json!({"steps": [{"op": "put", "key": "k", "value": "kept"}]})).unwrap(),
        vec![(headers::EVENT_ID.into(), "e1".into())],
        Some(1),
    );
    assert!(matches!(
        runtime.invoke(&probe, db, &event).await.unwrap(),
        Outcome::Committed(_)
    ));
    let plan = json!({"steps": [
        {"op": "expect", "key": "k", "value": "kept"},
        {"op": "put", "key": "k", "value": "changed"},
        {"op": "expect", "key": "k", "value": "kept"}
    ]});
    let answer = ask(&runtime, &probe, db, "run", plan).await.unwrap();
    assert_eq!(answer["outcomes"][0], json!("ok"), "{answer}");
    assert_eq!(answer["outcomes"][2], json!("ok"), "{answer}");
    assert_eq!(db.peek("probe", "k").await.unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(db.count(Table::Outbox).await.unwrap(), 0);
}

async fn a_query_is_bounded_like_an_event(db: &Db) {
    let runtime = Runtime::new().unwrap();
    let probe = runtime.load(&spec("probe", "probe", &[])).unwrap();
    for (step, kind) in [
        (json!({"op": "loop"}), "deadline"),
        (json!({"op": "alloc", "mib": 64}), "memory"),
        (json!({"op": "panic"}), "trap"),
    ] {
        let err = ask(&runtime, &probe, db, "run", json!({"steps": [step]}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QueryError::Stopped { kind: k, .. } if *k == kind),
            "expected {kind}: {err}"
        );
    }
    // The host keeps answering after each kill.
    let ok = ask(&runtime, &probe, db, "run", json!({"steps": []})).await.unwrap();
    assert_eq!(ok, json!({"outcomes": []}));
    assert_eq!(db.count(Table::Kv).await.unwrap(), 0);
}

on_both_backends!(
    components_answer_their_queries_from_their_own_state,
    a_write_attempted_in_a_query_fails_and_leaves_nothing,
    a_query_is_bounded_like_an_event,
);

/// Behind the host's own checks (writes of a query are refused, and an invocation's
/// writes never go through its snapshot), PostgreSQL itself refuses a write in a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_writes_in_a_query_transaction() {
    let db = crate::common::test_db(crate::common::Backend::Postgres).await.unwrap();
    let mut tx = db.db.begin_snapshot().await.unwrap();
    let err = tx.put("probe", "k", b"v").await.unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    drop(tx);
    assert_eq!(db.db.count(Table::Kv).await.unwrap(), 0);
}
