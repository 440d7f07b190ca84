//! The glue of lib.rs (routing, storage layout, timers, what is published) on the SDK's
//! in-memory host, natively.

use saga_events::{OrderCreated, OrderStatusUpdated, topics};
use serde_json::{Value, json};
use switchyard_sdk::testing::{TestHost, event};
use switchyard_sdk::{HandleError, QueryError};

use super::OrderHandler;

fn host() -> TestHost {
    TestHost::new().allow_publishing(&[
        topics::ORDERS_CREATED,
        topics::ORDERS_STATUS,
        topics::ORDERS_TIMEOUTS,
        topics::BILLING_REFUNDS,
    ])
}

fn request(user: &str, request_id: &str, price: f64) -> Value {
    json!({"requestId": request_id, "username": user, "items": [{"productId": "p", "quantity": 2, "price": price}],
           "deliveryAddress": "1 Main St", "paymentMethod": "card", "createdAt": 1})
}

fn paid(created: &OrderCreated) -> Value {
    json!({"requestId": created.request_id, "orderId": created.order_id, "username": created.username,
           "amount": created.total_cost, "success": true, "failureReason": null, "processedAt": 5})
}

fn ask(host: &mut TestHost, name: &str, args: Value) -> Result<Value, QueryError> {
    let bytes = host.ask::<OrderHandler>(name, args.to_string().as_bytes())?;
    Ok(serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn a_request_creates_an_order_with_a_timeout_and_payment_settles_it() {
    let mut host = host();
    host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &request("alice", "r-1", 2.5)))
        .unwrap();
    let created: Vec<OrderCreated> = host.published_on(topics::ORDERS_CREATED);
    assert_eq!((created[0].order_id, created[0].total_cost), (1, 5.0));
    assert_eq!(host.state.timers.len(), 1, "payment timeout scheduled");
    assert_eq!(host.state.timers[0].message.topic, topics::ORDERS_TIMEOUTS);

    host.deliver::<OrderHandler>(event(topics::BILLING_PAYMENTS, &paid(&created[0])))
        .unwrap();
    let status: Vec<OrderStatusUpdated> = host.published_on(topics::ORDERS_STATUS);
    assert_eq!(status[0].status, "PAID");
    assert!(host.state.timers.is_empty(), "timeout cancelled");
}

#[test]
fn a_repeated_request_id_with_an_invalid_body_is_answered_with_the_original_order() {
    let mut host = host();
    host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &request("alice", "r-1", 2.5)))
        .unwrap();
    let created: Vec<OrderCreated> = host.published_on(topics::ORDERS_CREATED);
    host.deliver::<OrderHandler>(event(topics::BILLING_PAYMENTS, &paid(&created[0])))
        .unwrap();
    host.clear_published();

    let mut broken = request("alice", "r-1", 2.5);
    broken["items"] = json!([]);
    host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &broken))
        .unwrap();
    let status: Vec<OrderStatusUpdated> = host.published_on(topics::ORDERS_STATUS);
    assert_eq!(status.len(), 1);
    assert_eq!((status[0].status.as_str(), status[0].order_id), ("PAID", 1));
    assert!(
        host.published_on::<Value>(topics::ORDERS_CREATED).is_empty(),
        "no second order"
    );
}

#[test]
fn request_ids_are_per_user_and_queries_show_only_the_users_orders() {
    let mut host = host();
    host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &request("alice", "r-1", 1.0)))
        .unwrap();
    host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &request("alice", "r-2", 2.0)))
        .unwrap();
    // bob's r-1 is an order of his own, not a repeat of alice's.
    host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &request("bob", "r-1", 3.0)))
        .unwrap();
    assert_eq!(host.published_on::<OrderCreated>(topics::ORDERS_CREATED).len(), 3);

    let list = ask(&mut host, "orders", json!({"username": "alice"})).unwrap();
    let ids: Vec<i64> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["orderId"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [2, 1], "newest first");
    let one = ask(&mut host, "orders", json!({"username": "alice", "limit": 1})).unwrap();
    assert_eq!(one["orders"].as_array().unwrap().len(), 1);

    let bobs = ask(&mut host, "order", json!({"username": "bob", "requestId": "r-1"})).unwrap();
    assert_eq!(
        (bobs["orderId"].clone(), bobs["totalCost"].clone()),
        (json!(3), json!(6.0))
    );
    let err = ask(&mut host, "order", json!({"username": "mallory", "requestId": "r-1"})).unwrap_err();
    assert!(matches!(err, QueryError::NotFound(_)), "{err:?}");
    let err = ask(&mut host, "orders", json!({"user": "alice"})).unwrap_err();
    assert!(matches!(err, QueryError::Invalid(_)), "{err:?}");
}

#[test]
fn an_invalid_request_is_rejected_with_every_problem() {
    let mut host = host();
    let mut bad = request("alice", "r-9", 1.0);
    bad["paymentMethod"] = json!("");
    host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &bad))
        .unwrap();
    let status: Vec<OrderStatusUpdated> = host.published_on(topics::ORDERS_STATUS);
    assert_eq!(status[0].status, "REJECTED");
    assert_eq!(status[0].metadata["reason"], json!("paymentMethod is empty"));
    assert!(host.state.storage.keys().all(|k| !k.starts_with("order/")));
    let result = host.deliver::<OrderHandler>(event(topics::ORDERS_REQUESTS, &json!({"nope": 1})));
    assert!(matches!(result, Err(HandleError::Fatal(_))), "{result:?}");
}
