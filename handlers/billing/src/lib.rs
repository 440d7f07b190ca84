//! The billing component (ADR-0003 `mini_billing`): wasm glue around [`logic`].
//!
//! Consumes `users.registered`, `billing.deposits`, `orders.created` and
//! `billing.refunds`; publishes `billing.payments`. Answers the query `balance`.

pub mod logic;

use saga_events::{DepositRequested, OrderCreated, RefundRequested, UserRegistered, topics};
use switchyard_sdk::json::{self, Versioned};
use switchyard_sdk::{Event, HandleError, Handler, QueryError, QueryRouter, Router, config, late};

use logic::{Account, DepositDecision, DepositRecord, PaymentRecord, RefundDecision, Refusal};

struct BillingHandler;

impl Handler for BillingHandler {
    fn handle(event: Event) -> Result<(), HandleError> {
        // The event's own timestamp, not the wall clock, so a replay decides the same.
        Router::new("billing", &event)
            .on(topics::USERS_REGISTERED, |reg, e| on_registered(reg, e.timestamp_ms))
            .on(topics::BILLING_DEPOSITS, |dep, e| on_deposit(dep, e.timestamp_ms))
            .on(topics::ORDERS_CREATED, |order, e| {
                on_order(order, e.timestamp_ms, may_wait(e)?)
            })
            .on(topics::BILLING_REFUNDS, |req, e| on_refund(req, e.timestamp_ms))
            .finish()
    }

    fn query(name: String, args: Vec<u8>) -> Result<Vec<u8>, QueryError> {
        QueryRouter::new("billing", &name, &args)
            .on(logic::BALANCE_QUERY, |by: logic::ByUser| {
                let account = json::get::<Account>(&logic::account_key(&by.username))?;
                logic::balance(account.as_ref(), &by.username)
            })
            .finish()
    }
}

fn on_registered(reg: UserRegistered, now: i64) -> Result<(), HandleError> {
    let key = logic::account_key(&reg.username);
    let existing = json::get_versioned::<Account>(&key)?;
    let initial =
        logic::initial_balance(config::get(logic::INITIAL_BALANCE_CONFIG).as_deref()).map_err(HandleError::fatal)?;
    match logic::open_account(value(&existing), &reg, initial, now) {
        Some(account) => {
            json::put_if_unchanged(&key, None, &account)?;
            switchyard_sdk::info!(
                "account opened",
                username = reg.username,
                balanceMinor = account.balance_minor
            );
        }
        None => switchyard_sdk::info!("account exists already", username = reg.username),
    }
    Ok(())
}

fn on_deposit(dep: DepositRequested, now: i64) -> Result<(), HandleError> {
    let account_key = logic::account_key(&dep.username);
    let deposit_key = logic::deposit_key(&dep.username, &dep.request_id);
    let account = json::get_versioned::<Account>(&account_key)?;
    let previous = json::get::<DepositRecord>(&deposit_key)?;
    match logic::deposit(value(&account), previous.as_ref(), &dep, now).map_err(refusal)? {
        DepositDecision::Credit {
            account: updated,
            record,
        } => {
            json::put_if_unchanged(&account_key, raw(&account), &updated)?;
            json::put_if_unchanged(&deposit_key, None, &record)?;
            switchyard_sdk::info!(
                "deposit credited",
                username = dep.username,
                amountMinor = record.amount_minor
            );
        }
        DepositDecision::Duplicate => switchyard_sdk::info!("deposit applied before", requestId = dep.request_id),
    }
    Ok(())
}

fn on_order(order: OrderCreated, now: i64, may_wait: bool) -> Result<(), HandleError> {
    let account_key = logic::account_key(&order.username);
    let payment_key = logic::payment_key(order.order_id);
    let account = json::get_versioned::<Account>(&account_key)?;
    let previous = json::get::<PaymentRecord>(&payment_key)?;
    let charge = logic::charge(value(&account), previous.as_ref(), &order, now, may_wait).map_err(refusal)?;
    if let Some(updated) = &charge.account {
        json::put_if_unchanged(&account_key, raw(&account), updated)?;
    }
    if let Some(record) = &charge.record {
        json::put_if_unchanged(&payment_key, None, record)?;
    }
    json::publish(topics::BILLING_PAYMENTS, &order.username, &charge.event)?;
    let outcome = charge.event.failure_reason.as_deref().unwrap_or("PAID");
    switchyard_sdk::info!(
        "order charged",
        orderId = order.order_id,
        outcome = outcome,
        repeated = charge.record.is_none()
    );
    Ok(())
}

fn on_refund(req: RefundRequested, now: i64) -> Result<(), HandleError> {
    let account_key = logic::account_key(&req.username);
    let payment_key = logic::payment_key(req.order_id);
    let account = json::get_versioned::<Account>(&account_key)?;
    let payment = json::get_versioned::<PaymentRecord>(&payment_key)?;
    match logic::refund(value(&account), value(&payment), &req, now).map_err(HandleError::fatal)? {
        RefundDecision::Credit {
            account: updated,
            record,
        } => {
            json::put_if_unchanged(&account_key, raw(&account), &updated)?;
            json::put_if_unchanged(&payment_key, raw(&payment), &record)?;
            switchyard_sdk::info!("payment refunded", orderId = req.order_id, reason = req.reason);
        }
        RefundDecision::Ignore(why) => switchyard_sdk::info!("refund ignored", reason = why),
    }
    Ok(())
}

/// Whether this delivery may still wait for a late registration (see [`late`]).
fn may_wait(event: &Event) -> Result<bool, HandleError> {
    let wait = late::wait_attempts(config::get(late::WAIT_ATTEMPTS_CONFIG).as_deref()).map_err(HandleError::fatal)?;
    Ok(late::may_wait(switchyard_sdk::attempt(event), wait))
}

fn value<T>(stored: &Option<Versioned<T>>) -> Option<&T> {
    stored.as_ref().map(|v| &v.value)
}

fn raw<T>(stored: &Option<Versioned<T>>) -> Option<&[u8]> {
    stored.as_ref().map(Versioned::raw)
}

fn refusal(r: Refusal) -> HandleError {
    match r {
        Refusal::Retry(why) => HandleError::retryable(why),
        Refusal::Fatal(why) => HandleError::fatal(why),
    }
}

switchyard_sdk::export_handler!(BillingHandler);

#[cfg(test)]
mod glue_tests;
