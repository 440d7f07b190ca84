//! The order component (ADR-0003 `mini_order`): wasm glue around [`logic`].
//!
//! Consumes `orders.requests`, `billing.payments` and `orders.timeouts`; publishes
//! `orders.created`, `orders.status`, `billing.refunds` and (by timer) `orders.timeouts`.
//! Answers the queries `orders` and `order`.

pub mod logic;

use saga_events::{OrderCreationRequested, PaymentProcessed, PaymentTimedOut, topics};
use switchyard_sdk::json::{self, Versioned};
use switchyard_sdk::{Event, HandleError, Handler, QueryError, QueryRouter, Router, config, storage, timers};

use logic::{Order, PaymentDecision, RequestDecision, Transition};

struct OrderHandler;

impl Handler for OrderHandler {
    fn handle(event: Event) -> Result<(), HandleError> {
        // The event's own timestamp, not the wall clock, so a replay decides the same.
        Router::new("order", &event)
            .on(topics::ORDERS_REQUESTS, |req, e| on_request(req, e.timestamp_ms))
            .on(topics::BILLING_PAYMENTS, |payment, e| {
                on_payment(payment, e.timestamp_ms)
            })
            .on(topics::ORDERS_TIMEOUTS, |timeout, e| {
                on_timeout(timeout, e.timestamp_ms)
            })
            .finish()
    }

    fn query(name: String, args: Vec<u8>) -> Result<Vec<u8>, QueryError> {
        QueryRouter::new("order", &name, &args)
            .on(logic::ORDERS_QUERY, orders_query)
            .on(logic::ORDER_QUERY, order_query)
            .finish()
    }
}

/// The user's orders, newest first.
fn orders_query(args: logic::OrdersArgs) -> Result<logic::OrderList, QueryError> {
    let limit = logic::orders_limit(&args)?;
    let index = json::list_prefix::<i64>(&logic::user_requests_prefix(&args.username))?;
    let ids = logic::newest(index.into_iter().map(|(_, id)| id).collect(), limit);
    let mut orders = Vec::with_capacity(ids.len());
    for id in ids {
        orders.push((&load(id)?.value).into());
    }
    Ok(logic::OrderList {
        username: args.username,
        orders,
    })
}

/// One of the user's orders, by requestId.
fn order_query(args: logic::OrderArgs) -> Result<logic::OrderView, QueryError> {
    let order = match json::get::<i64>(&logic::request_key(&args.username, &args.request_id))? {
        Some(id) => Some(load(id)?.value),
        None => None,
    };
    logic::order_for(order.as_ref(), &args)
}

fn on_request(req: OrderCreationRequested, now: i64) -> Result<(), HandleError> {
    let index_key = logic::request_key(&req.username, &req.request_id);
    let existing = match json::get::<i64>(&index_key)? {
        Some(order_id) => Some(load(order_id)?.value),
        None => None,
    };
    let valid = match logic::decide_request(existing.as_ref(), &req, now) {
        RequestDecision::Create(valid) => valid,
        RequestDecision::Repeat { order_id, update } => {
            switchyard_sdk::info!(
                "repeated order request, no new order",
                requestId = req.request_id,
                orderId = order_id
            );
            if let Some(update) = update {
                json::publish(topics::ORDERS_STATUS, &update.username, &update)?;
            }
            return Ok(());
        }
        RequestDecision::Reject(update) => {
            // A bad order is an answer for the client, not a failure of the handler.
            let reason = update.metadata.get("reason").map(|r| r.to_string()).unwrap_or_default();
            switchyard_sdk::info!("order request rejected", requestId = req.request_id, reason = reason);
            return json::publish(
                topics::ORDERS_STATUS,
                status_key(&update.username, &update.request_id),
                &update,
            );
        }
    };

    let timeout_ms =
        logic::payment_timeout_ms(config::get(logic::PAYMENT_TIMEOUT_CONFIG).as_deref()).map_err(HandleError::fatal)?;
    let order_id = storage::increment(logic::ORDER_SEQ_KEY, 1)?;
    let mut created = logic::create(valid, order_id, now, timeout_ms);
    let username = created.order.username.clone();
    created.order.payment_timer = Some(json::schedule(
        created.delay_ms,
        topics::ORDERS_TIMEOUTS,
        &username,
        &created.timeout,
    )?);
    json::put(&logic::order_key(order_id), &created.order)?;
    // Absent-only write: a concurrent twin of this request makes one of the two retry,
    // and the retry then finds the index.
    json::put_if_unchanged(&index_key, None, &order_id)?;
    json::publish(topics::ORDERS_CREATED, &username, &created.event)?;
    switchyard_sdk::info!(
        "order created",
        orderId = order_id,
        requestId = created.order.request_id
    );
    Ok(())
}

fn on_payment(payment: PaymentProcessed, now: i64) -> Result<(), HandleError> {
    let stored = load(payment.order_id)?;
    match logic::on_payment(&stored.value, &payment, now).map_err(HandleError::fatal)? {
        PaymentDecision::Settle(transition) => apply(&stored, *transition),
        PaymentDecision::Refund(refund) => {
            switchyard_sdk::warn!(
                "payment arrived after the order closed; requesting a refund",
                orderId = refund.order_id,
                reason = refund.reason
            );
            json::publish(topics::BILLING_REFUNDS, &refund.username, &refund)
        }
        PaymentDecision::Ignore(why) => {
            switchyard_sdk::info!("payment ignored", reason = why);
            Ok(())
        }
    }
}

fn on_timeout(timeout: PaymentTimedOut, now: i64) -> Result<(), HandleError> {
    let stored = load(timeout.order_id)?;
    match logic::on_timeout(&stored.value, &timeout, now) {
        Some(transition) => apply(&stored, transition),
        // Paid or failed before the deadline: the timer had nothing left to do.
        None => Ok(()),
    }
}

/// Stores a status change (only if nobody changed the order meanwhile) and announces it.
fn apply(stored: &Versioned<Order>, t: Transition) -> Result<(), HandleError> {
    json::put_if_unchanged(&logic::order_key(t.order.order_id), Some(stored.raw()), &t.order)?;
    if let Some(timer) = &t.cancel_timer {
        // False only when it already fired; its event then finds a settled order.
        timers::cancel(timer)?;
    }
    json::publish(topics::ORDERS_STATUS, &t.order.username, &t.update)?;
    switchyard_sdk::info!(
        "order status changed",
        orderId = t.order.order_id,
        status = t.update.status.as_str()
    );
    Ok(())
}

/// Loads an order that must exist: orders are stored in the same transaction that
/// publishes `OrderCreated` and schedules the timeout, so an unknown id can never
/// become known and retrying would only spin.
fn load(order_id: i64) -> Result<Versioned<Order>, HandleError> {
    json::get_versioned(&logic::order_key(order_id))?
        .ok_or_else(|| HandleError::fatal(format!("unknown order {order_id}: no such order was ever created here")))
}

/// orders.status is keyed by user; a request rejected for lacking one uses its requestId.
fn status_key<'a>(username: &'a str, request_id: &'a str) -> &'a str {
    if username.trim().is_empty() {
        request_id
    } else {
        username
    }
}

switchyard_sdk::export_handler!(OrderHandler);

#[cfg(test)]
mod glue_tests;
