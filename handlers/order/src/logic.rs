//! The order side of the saga as pure functions: (event, stored order, now) in,
//! decisions (new order state, events to emit) out. No host imports here, so all of it
//! is tested natively.

use std::collections::BTreeMap;

use saga_events::{
    OrderCreated, OrderCreationRequested, OrderItem, OrderStatus, OrderStatusUpdated, PaymentProcessed,
    PaymentTimedOut, RefundRequested,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_sdk::{QueryError, keys, money};

/// Counter that allocates order ids (1, 2, ...); 0 therefore never names an order and
/// marks a `REJECTED` request on the wire.
pub const ORDER_SEQ_KEY: &str = "seq/order";
/// Config key: how long an order waits for its payment, in milliseconds.
pub const PAYMENT_TIMEOUT_CONFIG: &str = "payment-timeout-ms";
/// The ADR's "payment within 30 seconds".
pub const DEFAULT_PAYMENT_TIMEOUT_MS: u64 = 30_000;
/// `orderId` of a status update for a request that never became an order.
pub const NO_ORDER: i64 = 0;
/// Refund reason for a payment that arrived after the order was closed.
pub const LATE_PAYMENT: &str = "LATE_PAYMENT";

/// Storage key of an order.
pub fn order_key(order_id: i64) -> String {
    format!("order/{order_id}")
}

/// Storage key of the (username, requestId) → orderId index that makes creation
/// idempotent. Scoped per user: another user's request with the same id is a request
/// of its own, never an answer about someone else's order.
pub fn request_key(username: &str, request_id: &str) -> String {
    format!("{}{}", user_requests_prefix(username), keys::segment(request_id))
}

/// Prefix of one user's entries in the request index: the user's orders.
pub fn user_requests_prefix(username: &str) -> String {
    format!("request/{}/", keys::segment(username))
}

/// The payment timeout from the component's config (`None`: not set).
pub fn payment_timeout_ms(configured: Option<&str>) -> Result<u64, String> {
    match configured {
        None => Ok(DEFAULT_PAYMENT_TIMEOUT_MS),
        Some(text) => text.trim().parse::<u64>().ok().filter(|ms| *ms > 0).ok_or_else(|| {
            format!("config {PAYMENT_TIMEOUT_CONFIG} = {text:?} is not a positive number of milliseconds")
        }),
    }
}

/// An order line as stored: the price in integer minor units so totals never drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredItem {
    pub product_id: String,
    pub quantity: i64,
    pub price_minor: i64,
}

/// The order record under [`order_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: i64,
    pub request_id: String,
    pub username: String,
    pub items: Vec<StoredItem>,
    pub total_minor: i64,
    pub delivery_address: String,
    pub payment_method: String,
    pub status: OrderStatus,
    pub previous_status: Option<OrderStatus>,
    /// Metadata of the last status change, kept so that change can be announced again.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The pending payment-timeout timer, cancelled once the payment settles the order.
    pub payment_timer: Option<String>,
}

impl Order {
    /// The status update describing the order's current status.
    pub fn status_update(&self) -> OrderStatusUpdated {
        OrderStatusUpdated {
            request_id: self.request_id.clone(),
            order_id: self.order_id,
            username: self.username.clone(),
            status: self.status.as_str().to_string(),
            previous_status: self.previous_status.map(|s| s.as_str().to_string()),
            updated_at: self.updated_at,
            metadata: self.metadata.clone(),
        }
    }

    /// Moves to `status`, returning the new record and its announcement.
    fn transition(&self, status: OrderStatus, metadata: BTreeMap<String, Value>, now: i64) -> Transition {
        let order = Order {
            status,
            previous_status: Some(self.status),
            metadata,
            updated_at: now,
            payment_timer: None,
            ..self.clone()
        };
        Transition {
            update: order.status_update(),
            cancel_timer: self.payment_timer.clone(),
            order,
        }
    }
}

/// A request that passed validation, money already in minor units.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder {
    pub request_id: String,
    pub username: String,
    pub items: Vec<StoredItem>,
    pub total_minor: i64,
    pub delivery_address: String,
    pub payment_method: String,
}

/// Checks an order request; the error lists every problem found, for the client.
pub fn validate(req: &OrderCreationRequested) -> Result<ValidOrder, String> {
    let mut problems = Vec::new();
    for (field, value) in [
        ("requestId", &req.request_id),
        ("username", &req.username),
        ("deliveryAddress", &req.delivery_address),
        ("paymentMethod", &req.payment_method),
    ] {
        if value.trim().is_empty() {
            problems.push(format!("{field} is empty"));
        }
    }
    if req.items.is_empty() {
        problems.push("items is empty".to_string());
    }
    let mut items = Vec::with_capacity(req.items.len());
    let mut total: Option<i64> = Some(0);
    for (i, item) in req.items.iter().enumerate() {
        match validate_item(item) {
            Ok(stored) => {
                total = total.and_then(|t| {
                    stored
                        .price_minor
                        .checked_mul(stored.quantity)
                        .and_then(|line| t.checked_add(line))
                });
                items.push(stored);
            }
            Err(why) => problems.push(format!("items[{i}].{why}")),
        }
    }
    if problems.is_empty() && total.is_none() {
        problems.push("order total is too large".to_string());
    }
    match (problems.is_empty(), total) {
        (true, Some(total_minor)) => Ok(ValidOrder {
            request_id: req.request_id.clone(),
            username: req.username.clone(),
            items,
            total_minor,
            delivery_address: req.delivery_address.clone(),
            payment_method: req.payment_method.clone(),
        }),
        _ => Err(problems.join("; ")),
    }
}

fn validate_item(item: &OrderItem) -> Result<StoredItem, String> {
    if item.product_id.trim().is_empty() {
        return Err("productId is empty".to_string());
    }
    if item.quantity <= 0 {
        return Err(format!("quantity must be positive, got {}", item.quantity));
    }
    let price_minor = money::to_minor(item.price).map_err(|e| format!("price: {e}"))?;
    Ok(StoredItem {
        product_id: item.product_id.clone(),
        quantity: item.quantity,
        price_minor,
    })
}

/// The `REJECTED` answer to an invalid request. No order exists, so `orderId` is
/// [`NO_ORDER`]; the client learns why from `metadata.reason`.
pub fn rejection(req: &OrderCreationRequested, reason: &str, now: i64) -> OrderStatusUpdated {
    OrderStatusUpdated {
        request_id: req.request_id.clone(),
        order_id: NO_ORDER,
        username: req.username.clone(),
        status: OrderStatus::Rejected.as_str().to_string(),
        previous_status: None,
        updated_at: now,
        metadata: BTreeMap::from([("reason".to_string(), json!(reason))]),
    }
}

/// What an `OrderCreationRequested` does.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestDecision {
    /// The user sent this requestId before and it made an order: no new order, whatever
    /// the body says now; the order's settled status is announced again (`None` while it
    /// is pending: its answer is still to come).
    Repeat {
        order_id: i64,
        update: Option<OrderStatusUpdated>,
    },
    /// The request is invalid: answer `REJECTED`.
    Reject(OrderStatusUpdated),
    /// A new valid request: create the order.
    Create(ValidOrder),
}

/// Decides a request given the order its (username, requestId) already made, if any.
/// The repeat check comes first, so a retry with a changed or broken body still gets the
/// original order rather than a rejection.
pub fn decide_request(existing: Option<&Order>, req: &OrderCreationRequested, now: i64) -> RequestDecision {
    if let Some(order) = existing {
        return RequestDecision::Repeat {
            order_id: order.order_id,
            update: reannounce(order),
        };
    }
    match validate(req) {
        Ok(valid) => RequestDecision::Create(valid),
        Err(reason) => RequestDecision::Reject(rejection(req, &reason, now)),
    }
}

/// What creating an order amounts to.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The record to store (its `payment_timer` is filled in once the timer exists).
    pub order: Order,
    /// For `orders.created`.
    pub event: OrderCreated,
    /// For `orders.timeouts`, delivered after `delay_ms` unless cancelled.
    pub timeout: PaymentTimedOut,
    pub delay_ms: u64,
}

/// Creates order `order_id` from a valid request at `now`.
pub fn create(valid: ValidOrder, order_id: i64, now: i64, timeout_ms: u64) -> Created {
    let event = OrderCreated {
        request_id: valid.request_id.clone(),
        username: valid.username.clone(),
        order_id,
        items: valid
            .items
            .iter()
            .map(|i| OrderItem {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
                price: money::to_major(i.price_minor),
            })
            .collect(),
        total_cost: money::to_major(valid.total_minor),
        created_at: now,
    };
    let timeout = PaymentTimedOut {
        request_id: valid.request_id.clone(),
        order_id,
        username: valid.username.clone(),
        deadline_at: now.saturating_add(i64::try_from(timeout_ms).unwrap_or(i64::MAX)),
    };
    let order = Order {
        order_id,
        request_id: valid.request_id,
        username: valid.username,
        items: valid.items,
        total_minor: valid.total_minor,
        delivery_address: valid.delivery_address,
        payment_method: valid.payment_method,
        status: OrderStatus::PendingValidation,
        previous_status: None,
        metadata: BTreeMap::new(),
        created_at: now,
        updated_at: now,
        payment_timer: None,
    };
    Created {
        order,
        event,
        timeout,
        delay_ms: timeout_ms,
    }
}

/// A repeated request (same requestId) creates nothing. If its order is already
/// settled, the current status is announced again so a retrying caller still gets an
/// answer; while pending, the answer is still to come.
pub fn reannounce(order: &Order) -> Option<OrderStatusUpdated> {
    (order.status != OrderStatus::PendingValidation).then(|| order.status_update())
}

/// A status change: the record to store, its announcement, and the payment timer that
/// is no longer needed.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub order: Order,
    pub update: OrderStatusUpdated,
    pub cancel_timer: Option<String>,
}

/// What a `PaymentProcessed` does to an order.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentDecision {
    /// The order was waiting: it becomes `PAID` or `INSUFFICIENT_FUNDS`.
    Settle(Box<Transition>),
    /// Money was taken for an order that is already closed (it timed out first): the
    /// saga's compensation gives it back.
    Refund(RefundRequested),
    /// A duplicate or late result that changes nothing.
    Ignore(String),
}

/// Applies a payment result to `order`. An error means the event contradicts the order
/// (wrong user or amount) and can never be applied.
pub fn on_payment(order: &Order, payment: &PaymentProcessed, now: i64) -> Result<PaymentDecision, String> {
    if payment.username != order.username {
        return Err(format!(
            "payment for order {} names user {:?}, the order belongs to {:?}",
            order.order_id, payment.username, order.username
        ));
    }
    let amount_minor = money::to_minor(payment.amount).map_err(|e| format!("payment amount: {e}"))?;
    if payment.success && amount_minor != order.total_minor {
        return Err(format!(
            "payment of {} for order {} does not match its total {}",
            payment.amount,
            order.order_id,
            money::to_major(order.total_minor)
        ));
    }
    let amount = json!(money::to_major(order.total_minor));
    match (order.status, payment.success) {
        (OrderStatus::PendingValidation, true) => Ok(PaymentDecision::Settle(Box::new(order.transition(
            OrderStatus::Paid,
            BTreeMap::from([("amount".to_string(), amount)]),
            now,
        )))),
        (OrderStatus::PendingValidation, false) => {
            let reason = payment.failure_reason.clone().unwrap_or_else(|| "UNKNOWN".to_string());
            Ok(PaymentDecision::Settle(Box::new(order.transition(
                OrderStatus::InsufficientFunds,
                BTreeMap::from([
                    ("amount".to_string(), amount),
                    ("failureReason".to_string(), json!(reason)),
                ]),
                now,
            ))))
        }
        // Billing charges an order once and repeats that same result, so a success for
        // a paid order is the same payment again.
        (OrderStatus::Paid, _) => Ok(PaymentDecision::Ignore(format!(
            "order {} is already PAID",
            order.order_id
        ))),
        (status, true) => Ok(PaymentDecision::Refund(RefundRequested {
            request_id: order.request_id.clone(),
            order_id: order.order_id,
            username: order.username.clone(),
            amount: payment.amount,
            reason: format!("{LATE_PAYMENT}: order is {status}"),
            requested_at: now,
        })),
        (status, false) => Ok(PaymentDecision::Ignore(format!(
            "order {} is already {status}; failed payment changes nothing",
            order.order_id
        ))),
    }
}

/// Applies a payment timeout: only an order still waiting for its payment times out.
pub fn on_timeout(order: &Order, timeout: &PaymentTimedOut, now: i64) -> Option<Transition> {
    (order.status == OrderStatus::PendingValidation).then(|| {
        order.transition(
            OrderStatus::PaymentTimeout,
            BTreeMap::from([
                ("reason".to_string(), json!("payment did not arrive in time")),
                ("deadlineAt".to_string(), json!(timeout.deadline_at)),
            ]),
            now,
        )
    })
}

/// Query `orders`: the user's orders, newest first.
pub const ORDERS_QUERY: &str = "orders";
/// Query `order`: one order of the user, by its requestId.
pub const ORDER_QUERY: &str = "order";
/// Orders listed by [`ORDERS_QUERY`] when `limit` is not given, and the most it allows.
pub const DEFAULT_ORDERS_LIMIT: usize = 100;
pub const MAX_ORDERS_LIMIT: usize = 1000;

/// Arguments of [`ORDERS_QUERY`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrdersArgs {
    pub username: String,
    /// At most this many orders (default [`DEFAULT_ORDERS_LIMIT`]).
    pub limit: Option<usize>,
}

/// Arguments of [`ORDER_QUERY`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderArgs {
    pub username: String,
    pub request_id: String,
}

/// An order as queries show it: money in major units like the events.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: i64,
    pub request_id: String,
    pub username: String,
    pub status: String,
    pub previous_status: Option<String>,
    pub items: Vec<OrderItem>,
    pub total_cost: f64,
    pub delivery_address: String,
    pub payment_method: String,
    pub metadata: BTreeMap<String, Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        OrderView {
            order_id: o.order_id,
            request_id: o.request_id.clone(),
            username: o.username.clone(),
            status: o.status.as_str().to_string(),
            previous_status: o.previous_status.map(|s| s.as_str().to_string()),
            items: o
                .items
                .iter()
                .map(|i| OrderItem {
                    product_id: i.product_id.clone(),
                    quantity: i.quantity,
                    price: money::to_major(i.price_minor),
                })
                .collect(),
            total_cost: money::to_major(o.total_minor),
            delivery_address: o.delivery_address.clone(),
            payment_method: o.payment_method.clone(),
            metadata: o.metadata.clone(),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// The answer to [`ORDERS_QUERY`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderList {
    pub username: String,
    pub orders: Vec<OrderView>,
}

/// The limit an [`ORDERS_QUERY`] asks for, checked.
pub fn orders_limit(args: &OrdersArgs) -> Result<usize, QueryError> {
    match args.limit {
        None => Ok(DEFAULT_ORDERS_LIMIT),
        Some(n) if (1..=MAX_ORDERS_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(QueryError::Invalid(format!(
            "limit must be 1 to {MAX_ORDERS_LIMIT}, got {n}"
        ))),
    }
}

/// Which of a user's order ids (from the request index) to load: the newest `limit`,
/// newest first. Ids grow with creation, so the highest is the newest.
pub fn newest(mut order_ids: Vec<i64>, limit: usize) -> Vec<i64> {
    order_ids.sort_unstable_by(|a, b| b.cmp(a));
    order_ids.dedup();
    order_ids.truncate(limit);
    order_ids
}

/// Answers [`ORDER_QUERY`]: the order, only if it belongs to `username`. Someone
/// else's order and no order at all are the same answer, so nobody can probe for
/// another user's requestIds.
pub fn order_for(order: Option<&Order>, args: &OrderArgs) -> Result<OrderView, QueryError> {
    match order {
        Some(o) if o.username == args.username && o.request_id == args.request_id => Ok(o.into()),
        _ => Err(QueryError::NotFound(format!(
            "user {:?} has no order with requestId {:?}",
            args.username, args.request_id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn request() -> OrderCreationRequested {
        OrderCreationRequested {
            request_id: "req-1".into(),
            username: "alice".into(),
            items: vec![
                OrderItem {
                    product_id: "book".into(),
                    quantity: 3,
                    price: 0.1,
                },
                OrderItem {
                    product_id: "pen".into(),
                    quantity: 1,
                    price: 19.99,
                },
            ],
            delivery_address: "1 Main St".into(),
            payment_method: "card".into(),
            created_at: NOW - 5,
        }
    }

    fn created() -> Created {
        create(validate(&request()).unwrap(), 7, NOW, 30_000)
    }

    fn pending() -> Order {
        let mut order = created().order;
        order.payment_timer = Some("timer-1".into());
        order
    }

    fn payment(success: bool, amount: f64, reason: Option<&str>) -> PaymentProcessed {
        PaymentProcessed {
            request_id: "req-1".into(),
            order_id: 7,
            username: "alice".into(),
            amount,
            success,
            failure_reason: reason.map(String::from),
            processed_at: NOW + 10,
        }
    }

    #[test]
    fn valid_request_sums_in_minor_units() {
        let valid = validate(&request()).unwrap();
        // 3 × 0.10 + 19.99 is 20.29 exactly, not 20.290000000000003.
        assert_eq!(valid.total_minor, 2029);
        assert_eq!(
            valid.items[0],
            StoredItem {
                product_id: "book".into(),
                quantity: 3,
                price_minor: 10
            }
        );
    }

    #[test]
    fn invalid_request_lists_every_problem() {
        let mut req = request();
        req.username = " ".into();
        req.payment_method = String::new();
        req.items[0].quantity = 0;
        req.items[1].price = 1.005;
        let why = validate(&req).unwrap_err();
        assert_eq!(
            why,
            "username is empty; paymentMethod is empty; items[0].quantity must be positive, got 0; \
             items[1].price: amount 1.005 has more than two decimals"
        );
    }

    #[test]
    fn rejects_empty_items_negative_prices_and_overflow() {
        let mut req = request();
        req.items.clear();
        assert_eq!(validate(&req).unwrap_err(), "items is empty");

        let mut req = request();
        req.items[1].price = -1.0;
        assert_eq!(validate(&req).unwrap_err(), "items[1].price: amount -1 is negative");

        let mut req = request();
        req.items = vec![OrderItem {
            product_id: "gold".into(),
            quantity: i64::MAX,
            price: 2.0,
        }];
        assert_eq!(validate(&req).unwrap_err(), "order total is too large");
    }

    #[test]
    fn rejection_carries_the_reason_and_no_order() {
        let update = rejection(&request(), "items is empty", NOW);
        assert_eq!(update.status, "REJECTED");
        assert_eq!(update.order_id, NO_ORDER);
        assert_eq!(update.previous_status, None);
        assert_eq!(update.metadata["reason"], json!("items is empty"));
        assert_eq!(update.updated_at, NOW);
    }

    #[test]
    fn create_builds_order_event_and_timeout() {
        let c = created();
        assert_eq!(c.order.status, OrderStatus::PendingValidation);
        assert_eq!(c.order.total_minor, 2029);
        assert_eq!(c.event.order_id, 7);
        assert_eq!(c.event.total_cost, 20.29);
        assert_eq!(c.event.items[0].price, 0.1);
        assert_eq!(c.event.created_at, NOW);
        assert_eq!(c.timeout.deadline_at, NOW + 30_000);
        assert_eq!(c.delay_ms, 30_000);
    }

    #[test]
    fn stored_order_keeps_money_as_integers() {
        let stored = serde_json::to_value(created().order).unwrap();
        assert_eq!(stored["totalMinor"], json!(2029));
        assert_eq!(stored["items"][1]["priceMinor"], json!(1999));
        assert_eq!(stored["status"], json!("PENDING_VALIDATION"));
    }

    #[test]
    fn successful_payment_pays_and_cancels_the_timer() {
        let PaymentDecision::Settle(t) = on_payment(&pending(), &payment(true, 20.29, None), NOW + 20).unwrap() else {
            panic!("expected a settlement");
        };
        assert_eq!(t.order.status, OrderStatus::Paid);
        assert_eq!(t.order.payment_timer, None);
        assert_eq!(t.cancel_timer.as_deref(), Some("timer-1"));
        assert_eq!(t.update.status, "PAID");
        assert_eq!(t.update.previous_status.as_deref(), Some("PENDING_VALIDATION"));
        assert_eq!(t.update.metadata["amount"], json!(20.29));
        assert_eq!(t.update.updated_at, NOW + 20);
    }

    #[test]
    fn failed_payment_records_the_reason() {
        let p = payment(false, 20.29, Some("INSUFFICIENT_FUNDS"));
        let PaymentDecision::Settle(t) = on_payment(&pending(), &p, NOW).unwrap() else {
            panic!("expected a settlement")
        };
        assert_eq!(t.order.status, OrderStatus::InsufficientFunds);
        assert_eq!(t.update.metadata["failureReason"], json!("INSUFFICIENT_FUNDS"));
    }

    #[test]
    fn duplicate_payment_is_ignored() {
        let PaymentDecision::Settle(t) = on_payment(&pending(), &payment(true, 20.29, None), NOW).unwrap() else {
            panic!("expected a settlement");
        };
        let again = on_payment(&t.order, &payment(true, 20.29, None), NOW + 1).unwrap();
        assert!(matches!(again, PaymentDecision::Ignore(_)));
    }

    #[test]
    fn late_success_after_timeout_is_refunded() {
        let timeout = created().timeout;
        let timed_out = on_timeout(&pending(), &timeout, NOW + 30_000).unwrap().order;
        let decision = on_payment(&timed_out, &payment(true, 20.29, None), NOW + 30_001).unwrap();
        let PaymentDecision::Refund(refund) = decision else {
            panic!("expected a refund")
        };
        assert_eq!(refund.order_id, 7);
        assert_eq!(refund.amount, 20.29);
        assert!(refund.reason.starts_with(LATE_PAYMENT));
        // A late failure took no money, so there is nothing to give back.
        let late_failure = on_payment(&timed_out, &payment(false, 20.29, Some("NO_ACCOUNT")), NOW).unwrap();
        assert!(matches!(late_failure, PaymentDecision::Ignore(_)));
    }

    #[test]
    fn contradicting_payments_are_errors() {
        assert!(
            on_payment(&pending(), &payment(true, 1.0, None), NOW)
                .unwrap_err()
                .contains("does not match")
        );
        let mut p = payment(true, 20.29, None);
        p.username = "mallory".into();
        assert!(on_payment(&pending(), &p, NOW).unwrap_err().contains("mallory"));
        assert!(on_payment(&pending(), &payment(true, f64::NAN, None), NOW).is_err());
    }

    #[test]
    fn timeout_only_hits_pending_orders() {
        let timeout = created().timeout;
        let t = on_timeout(&pending(), &timeout, NOW + 30_000).unwrap();
        assert_eq!(t.order.status, OrderStatus::PaymentTimeout);
        assert_eq!(t.update.previous_status.as_deref(), Some("PENDING_VALIDATION"));
        assert_eq!(t.update.metadata["deadlineAt"], json!(NOW + 30_000));
        assert_eq!(on_timeout(&t.order, &timeout, NOW + 30_001), None);
    }

    #[test]
    fn reannounces_only_settled_orders() {
        assert_eq!(reannounce(&pending()), None);
        let PaymentDecision::Settle(t) = on_payment(&pending(), &payment(true, 20.29, None), NOW).unwrap() else {
            panic!("expected a settlement");
        };
        assert_eq!(reannounce(&t.order), Some(t.update));
    }

    #[test]
    fn payment_timeout_config() {
        assert_eq!(payment_timeout_ms(None), Ok(30_000));
        assert_eq!(payment_timeout_ms(Some(" 500 ")), Ok(500));
        assert!(payment_timeout_ms(Some("0")).is_err());
        assert!(
            payment_timeout_ms(Some("30s"))
                .unwrap_err()
                .contains(PAYMENT_TIMEOUT_CONFIG)
        );
    }

    #[test]
    fn request_keys_cannot_escape_their_prefix() {
        assert_eq!(request_key("alice", "a/b"), "request/alice/a%2Fb");
        assert_eq!(request_key("a/b", "c"), "request/a%2Fb/c");
        assert_eq!(order_key(7), "order/7");
    }

    #[test]
    fn request_ids_are_scoped_per_user() {
        // Two users may pick the same requestId; neither may see the other's order.
        assert_ne!(request_key("alice", "r-1"), request_key("bob", "r-1"));
        assert!(request_key("alice", "r-1").starts_with(&user_requests_prefix("alice")));
        assert!(!request_key("alice/x", "r").starts_with(&user_requests_prefix("alice")));
    }

    #[test]
    fn a_repeated_request_with_a_broken_body_gets_the_original_order() {
        let mut broken = request();
        broken.items.clear();
        // A settled order is announced again; a pending one answers later.
        let PaymentDecision::Settle(paid) = on_payment(&pending(), &payment(true, 20.29, None), NOW).unwrap() else {
            panic!("expected a settlement");
        };
        assert_eq!(
            decide_request(Some(&paid.order), &broken, NOW + 1),
            RequestDecision::Repeat {
                order_id: 7,
                update: Some(paid.update.clone())
            }
        );
        assert_eq!(
            decide_request(Some(&pending()), &broken, NOW + 1),
            RequestDecision::Repeat {
                order_id: 7,
                update: None
            }
        );
        assert!(matches!(decide_request(None, &broken, NOW), RequestDecision::Reject(u) if u.status == "REJECTED"));
        assert!(matches!(
            decide_request(None, &request(), NOW),
            RequestDecision::Create(_)
        ));
    }

    #[test]
    fn order_query_shows_only_the_users_own_order() {
        let order = pending();
        let mine = OrderArgs {
            username: "alice".into(),
            request_id: "req-1".into(),
        };
        let view = order_for(Some(&order), &mine).unwrap();
        assert_eq!(view.total_cost, 20.29);
        assert_eq!(view.items[0].price, 0.1);
        assert_eq!(view.status, "PENDING_VALIDATION");
        let theirs = OrderArgs {
            username: "mallory".into(),
            ..mine.clone()
        };
        assert!(matches!(order_for(Some(&order), &theirs), Err(QueryError::NotFound(_))));
        assert!(matches!(order_for(None, &mine), Err(QueryError::NotFound(_))));
    }

    #[test]
    fn orders_query_lists_newest_first_within_the_limit() {
        assert_eq!(newest(vec![3, 10, 7, 3], 2), vec![10, 7]);
        let args = |limit| OrdersArgs {
            username: "alice".into(),
            limit,
        };
        assert_eq!(orders_limit(&args(None)).unwrap(), DEFAULT_ORDERS_LIMIT);
        assert_eq!(orders_limit(&args(Some(5))).unwrap(), 5);
        assert!(matches!(orders_limit(&args(Some(0))), Err(QueryError::Invalid(_))));
        assert!(matches!(
            orders_limit(&args(Some(MAX_ORDERS_LIMIT + 1))),
            Err(QueryError::Invalid(_))
        ));
    }
}
