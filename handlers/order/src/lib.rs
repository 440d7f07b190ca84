//! The order component (ADR-0003 `mini_order`): wasm glue around [`logic`].
//!
//! Consumes `orders.requests`, `billing.payments` and `orders.timeouts`; publishes
//! `orders.created`, `orders.status`, `billing.refunds` and (by timer) `orders.timeouts`.

pub mod logic;

use switchyard_sdk::events::{OrderCreationRequested, PaymentProcessed, PaymentTimedOut, topics};
use switchyard_sdk::json::{self, Versioned};
use switchyard_sdk::{Event, HandleError, Handler, config, log, storage, timers};

use logic::{Order, PaymentDecision, Transition};

struct OrderHandler;

impl Handler for OrderHandler {
    fn handle(event: Event) -> Result<(), HandleError> {
        // The event's own timestamp, not the wall clock, so a replay decides the same.
        let now = event.timestamp_ms;
        match event.topic.as_str() {
            topics::ORDERS_REQUESTS => on_request(json::payload(&event)?, now),
            topics::BILLING_PAYMENTS => on_payment(json::payload(&event)?, now),
            topics::ORDERS_TIMEOUTS => on_timeout(json::payload(&event)?, now),
            other => Err(HandleError::fatal(format!("order does not handle topic {other:?}"))),
        }
    }
}

fn on_request(req: OrderCreationRequested, now: i64) -> Result<(), HandleError> {
    let valid = match logic::validate(&req) {
        Ok(valid) => valid,
        Err(reason) => {
            // A bad order is an answer for the client, not a failure of the handler.
            switchyard_sdk::log(
                log::Level::Info,
                "order request rejected",
                &[("requestId", &req.request_id), ("reason", &reason)],
            );
            let update = logic::rejection(&req, &reason, now);
            return json::publish(
                topics::ORDERS_STATUS,
                status_key(&update.username, &update.request_id),
                &update,
            );
        }
    };

    let index_key = logic::request_key(&valid.request_id);
    if let Some(order_id) = json::get::<i64>(&index_key)? {
        let order = load(order_id)?.value;
        switchyard_sdk::log(
            log::Level::Info,
            "repeated order request, no new order",
            &[("requestId", &valid.request_id), ("orderId", &order_id.to_string())],
        );
        if let Some(update) = logic::reannounce(&order) {
            json::publish(topics::ORDERS_STATUS, &order.username, &update)?;
        }
        return Ok(());
    }

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
    switchyard_sdk::log(
        log::Level::Info,
        "order created",
        &[
            ("orderId", &order_id.to_string()),
            ("requestId", &created.order.request_id),
        ],
    );
    Ok(())
}

fn on_payment(payment: PaymentProcessed, now: i64) -> Result<(), HandleError> {
    let stored = load(payment.order_id)?;
    match logic::on_payment(&stored.value, &payment, now).map_err(HandleError::fatal)? {
        PaymentDecision::Settle(transition) => apply(&stored, *transition),
        PaymentDecision::Refund(refund) => {
            switchyard_sdk::log(
                log::Level::Warn,
                "payment arrived after the order closed; requesting a refund",
                &[("orderId", &refund.order_id.to_string()), ("reason", &refund.reason)],
            );
            json::publish(topics::BILLING_REFUNDS, &refund.username, &refund)
        }
        PaymentDecision::Ignore(why) => {
            switchyard_sdk::log(log::Level::Info, "payment ignored", &[("reason", &why)]);
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
    switchyard_sdk::log(
        log::Level::Info,
        "order status changed",
        &[
            ("orderId", &t.order.order_id.to_string()),
            ("status", t.update.status.as_str()),
        ],
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
