//! The glue of lib.rs (routing, storage layout, what is published) on the SDK's
//! in-memory host, natively.

use saga_events::{PaymentProcessed, topics};
use serde_json::{Value, json};
use switchyard_sdk::HandleError;
use switchyard_sdk::testing::{TestHost, attempt, event};

use super::BillingHandler;

fn host() -> TestHost {
    TestHost::new().allow_publishing(&[topics::BILLING_PAYMENTS])
}

fn registered(user: &str) -> Value {
    json!({"username": user, "email": format!("{user}@example.org"), "registeredAt": 1, "source": "test"})
}

fn deposit(user: &str, request_id: &str, amount: f64) -> Value {
    json!({"requestId": request_id, "username": user, "amount": amount, "requestedAt": 2})
}

fn order(user: &str, order_id: i64, total: f64) -> Value {
    json!({"requestId": format!("r-{order_id}"), "username": user, "orderId": order_id,
           "items": [{"productId": "p", "quantity": 1, "price": total}], "totalCost": total, "createdAt": 3})
}

fn balance(host: &mut TestHost, user: &str) -> Value {
    let bytes = host
        .ask::<BillingHandler>("balance", json!({ "username": user }).to_string().as_bytes())
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn deposit_then_order_is_charged_and_the_balance_query_shows_it() {
    let mut host = host();
    host.deliver::<BillingHandler>(event(topics::USERS_REGISTERED, &registered("alice")))
        .unwrap();
    host.deliver::<BillingHandler>(event(topics::BILLING_DEPOSITS, &deposit("alice", "d1", 30.0)))
        .unwrap();
    host.deliver::<BillingHandler>(event(topics::ORDERS_CREATED, &order("alice", 1, 12.5)))
        .unwrap();
    let payments: Vec<PaymentProcessed> = host.published_on(topics::BILLING_PAYMENTS);
    assert_eq!(payments.len(), 1);
    assert!(payments[0].success);
    assert_eq!(
        balance(&mut host, "alice"),
        json!({"username": "alice", "balance": 17.5, "balanceCents": 1750})
    );
}

#[test]
fn an_order_that_overtakes_the_registration_waits_then_is_charged() {
    let mut host = host();
    host.deliver::<BillingHandler>(event(topics::USERS_REGISTERED, &registered("bob")))
        .unwrap();
    let early = event(topics::ORDERS_CREATED, &order("carol", 7, 1.0));
    let result = host.deliver::<BillingHandler>(attempt(early.clone(), 1));
    assert!(matches!(result, Err(HandleError::Retryable(_))), "{result:?}");
    assert!(host.state.published.is_empty(), "no NO_ACCOUNT while waiting");
    assert!(host.get_json::<Value>("payment/7").is_none(), "nothing recorded");

    host.deliver::<BillingHandler>(event(topics::USERS_REGISTERED, &registered("carol")))
        .unwrap();
    host.deliver::<BillingHandler>(attempt(early, 2)).unwrap();
    let payments: Vec<PaymentProcessed> = host.published_on(topics::BILLING_PAYMENTS);
    assert_eq!(payments[0].failure_reason.as_deref(), Some("INSUFFICIENT_FUNDS"));

    // Waiting is bounded: the attempt after `wait-attempts` answers NO_ACCOUNT for good.
    let mut host = host.clone();
    host.clear_published();
    let never = event(topics::ORDERS_CREATED, &order("nobody", 8, 1.0));
    host.deliver::<BillingHandler>(attempt(never, 5)).unwrap();
    let payments: Vec<PaymentProcessed> = host.published_on(topics::BILLING_PAYMENTS);
    assert_eq!(payments[0].failure_reason.as_deref(), Some("NO_ACCOUNT"));
}

#[test]
fn a_refund_naming_another_user_credits_nobody() {
    let mut host = host();
    for user in ["alice", "mallory"] {
        host.deliver::<BillingHandler>(event(topics::USERS_REGISTERED, &registered(user)))
            .unwrap();
    }
    host.deliver::<BillingHandler>(event(topics::BILLING_DEPOSITS, &deposit("alice", "d1", 10.0)))
        .unwrap();
    host.deliver::<BillingHandler>(event(topics::ORDERS_CREATED, &order("alice", 1, 10.0)))
        .unwrap();
    let theft = json!({"requestId": "r-1", "orderId": 1, "username": "mallory", "amount": 10.0,
                       "reason": "LATE_PAYMENT: order is PAYMENT_TIMEOUT", "requestedAt": 9});
    let result = host.deliver::<BillingHandler>(event(topics::BILLING_REFUNDS, &theft));
    assert!(
        matches!(result, Err(HandleError::Fatal(ref why)) if why.contains("mallory")),
        "{result:?}"
    );
    assert_eq!(balance(&mut host, "mallory")["balanceCents"], 0);
    assert_eq!(balance(&mut host, "alice")["balanceCents"], 0);
}

#[test]
fn two_users_may_use_the_same_deposit_request_id() {
    let mut host = host();
    for user in ["alice", "bob"] {
        host.deliver::<BillingHandler>(event(topics::USERS_REGISTERED, &registered(user)))
            .unwrap();
        host.deliver::<BillingHandler>(event(topics::BILLING_DEPOSITS, &deposit(user, "dep-1", 5.0)))
            .unwrap();
    }
    // A real repeat of alice's deposit still credits once.
    host.deliver::<BillingHandler>(event(topics::BILLING_DEPOSITS, &deposit("alice", "dep-1", 5.0)))
        .unwrap();
    assert_eq!(balance(&mut host, "alice")["balanceCents"], 500);
    assert_eq!(balance(&mut host, "bob")["balanceCents"], 500);
}

#[test]
fn unknown_topics_and_queries_are_named() {
    let mut host = host();
    let result = host.deliver::<BillingHandler>(event("elsewhere", &json!({})));
    assert!(
        matches!(result, Err(HandleError::Fatal(ref why)) if why.contains("billing.deposits")),
        "{result:?}"
    );
    let err = host.ask::<BillingHandler>("nope", b"{}").unwrap_err();
    assert!(
        matches!(err, switchyard_sdk::QueryError::Unknown(ref why) if why.contains("balance")),
        "{err:?}"
    );
}
