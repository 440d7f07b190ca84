//! Billing decisions as pure functions: (event, stored account / payment, now) in,
//! new records and the event to publish out. Balances are integer minor units.

use saga_events::{DepositRequested, OrderCreated, PaymentProcessed, RefundRequested, UserRegistered};
use serde::{Deserialize, Serialize};
use switchyard_sdk::{QueryError, keys, money};

/// Config key: the balance a new account starts with, decimal major units ("100.00").
pub const INITIAL_BALANCE_CONFIG: &str = "initial-balance";
/// `failureReason` when the user has no account.
pub const NO_ACCOUNT: &str = "NO_ACCOUNT";
/// `failureReason` when the balance does not cover the order.
pub const INSUFFICIENT_FUNDS: &str = "INSUFFICIENT_FUNDS";

/// Storage key of a user's account.
pub fn account_key(username: &str) -> String {
    format!("account/{}", keys::segment(username))
}

/// Storage key of the payment made (or refused) for an order.
pub fn payment_key(order_id: i64) -> String {
    format!("payment/{order_id}")
}

/// Storage key of an applied deposit, by user and requestId: scoped per user, so one
/// user's requestId never makes another user's deposit look like a repeat.
pub fn deposit_key(username: &str, request_id: &str) -> String {
    format!("deposit/{}/{}", keys::segment(username), keys::segment(request_id))
}

/// The starting balance from the component's config (`None`: not set, 0).
pub fn initial_balance(configured: Option<&str>) -> Result<i64, String> {
    match configured {
        None => Ok(0),
        Some(text) => money::parse_major(text).map_err(|e| format!("config {INITIAL_BALANCE_CONFIG}: {e}")),
    }
}

/// Query `balance`: a user's balance.
pub const BALANCE_QUERY: &str = "balance";

/// Arguments of queries about one user.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ByUser {
    pub username: String,
}

/// The answer to [`BALANCE_QUERY`]: the balance as a decimal number of major units and
/// as exact minor units.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    pub username: String,
    pub balance: f64,
    pub balance_cents: i64,
}

/// Answers [`BALANCE_QUERY`] from the user's account, if there is one.
pub fn balance(account: Option<&Account>, username: &str) -> Result<Balance, QueryError> {
    let account = account.ok_or_else(|| QueryError::NotFound(format!("user {username:?} has no account")))?;
    Ok(Balance {
        username: account.username.clone(),
        balance: money::to_major(account.balance_minor),
        balance_cents: account.balance_minor,
    })
}

/// Why an event cannot be applied, and whether trying again later may help.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Another event has to be handled first (e.g. the account does not exist yet).
    Retry(String),
    /// The event can never apply.
    Fatal(String),
}

/// A user's account under [`account_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub username: String,
    pub balance_minor: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The result of charging an order, under [`payment_key`]. Kept so a repeated
/// `OrderCreated` gets the same answer instead of a second debit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRecord {
    pub order_id: i64,
    pub request_id: String,
    pub username: String,
    pub amount_minor: i64,
    pub success: bool,
    pub failure_reason: Option<String>,
    pub processed_at: i64,
    /// Set once the payment was given back (saga compensation).
    pub refunded_at: Option<i64>,
}

impl PaymentRecord {
    /// The `PaymentProcessed` this record stands for.
    pub fn event(&self) -> PaymentProcessed {
        PaymentProcessed {
            request_id: self.request_id.clone(),
            order_id: self.order_id,
            username: self.username.clone(),
            amount: money::to_major(self.amount_minor),
            success: self.success,
            failure_reason: self.failure_reason.clone(),
            processed_at: self.processed_at,
        }
    }
}

/// An applied deposit under [`deposit_key`], so a repeated request credits once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositRecord {
    pub request_id: String,
    pub username: String,
    pub amount_minor: i64,
    pub deposited_at: i64,
}

/// Opens an account for a new user; `None` when it already has one (a repeated
/// registration must not reset the balance).
pub fn open_account(existing: Option<&Account>, reg: &UserRegistered, initial_minor: i64, now: i64) -> Option<Account> {
    existing.is_none().then(|| Account {
        username: reg.username.clone(),
        balance_minor: initial_minor,
        created_at: now,
        updated_at: now,
    })
}

/// What a deposit does.
#[derive(Debug, Clone, PartialEq)]
pub enum DepositDecision {
    Credit {
        account: Account,
        record: DepositRecord,
    },
    /// This requestId was already credited.
    Duplicate,
}

/// Credits a deposit. `previous` is the record of an earlier deposit with the same
/// requestId, if any.
pub fn deposit(
    account: Option<&Account>,
    previous: Option<&DepositRecord>,
    dep: &DepositRequested,
    now: i64,
) -> Result<DepositDecision, Refusal> {
    if previous.is_some() {
        return Ok(DepositDecision::Duplicate);
    }
    let amount_minor = money::to_minor(dep.amount).map_err(|e| Refusal::Fatal(format!("deposit amount: {e}")))?;
    if amount_minor == 0 {
        return Err(Refusal::Fatal("deposit amount must be positive".to_string()));
    }
    // users.registered and billing.deposits are different topics, so a top-up can
    // overtake the registration that opens the account: wait for it.
    let account = account.ok_or_else(|| Refusal::Retry(format!("no account for user {:?} (yet)", dep.username)))?;
    let balance_minor = account
        .balance_minor
        .checked_add(amount_minor)
        .ok_or_else(|| Refusal::Fatal(format!("deposit would overflow the balance of {:?}", dep.username)))?;
    Ok(DepositDecision::Credit {
        account: Account {
            balance_minor,
            updated_at: now,
            ..account.clone()
        },
        record: DepositRecord {
            request_id: dep.request_id.clone(),
            username: dep.username.clone(),
            amount_minor,
            deposited_at: now,
        },
    })
}

/// What charging an order amounts to.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The debited account, when money moved.
    pub account: Option<Account>,
    /// The new payment record; `None` when the order was charged before.
    pub record: Option<PaymentRecord>,
    /// For `billing.payments`.
    pub event: PaymentProcessed,
}

/// Charges `order` to the user's account, once per order id. With no account yet and
/// `may_wait` (see [`switchyard_sdk::late`]), the order waits for the registration that
/// may still be on its way; once waiting is over, it is refused with `NO_ACCOUNT`.
pub fn charge(
    account: Option<&Account>,
    previous: Option<&PaymentRecord>,
    order: &OrderCreated,
    now: i64,
    may_wait: bool,
) -> Result<Charge, Refusal> {
    if let Some(previous) = previous {
        return Ok(Charge {
            account: None,
            record: None,
            event: previous.event(),
        });
    }
    let amount_minor =
        money::to_minor(order.total_cost).map_err(|e| Refusal::Fatal(format!("order totalCost: {e}")))?;
    if account.is_none() && may_wait {
        return Err(Refusal::Retry(format!(
            "no account for user {:?} yet: waiting for users.registered",
            order.username
        )));
    }
    let record = |success: bool, failure: Option<&str>| PaymentRecord {
        order_id: order.order_id,
        request_id: order.request_id.clone(),
        username: order.username.clone(),
        amount_minor,
        success,
        failure_reason: failure.map(String::from),
        processed_at: now,
        refunded_at: None,
    };
    let (account, record) = match account {
        None => (None, record(false, Some(NO_ACCOUNT))),
        Some(acc) if acc.balance_minor < amount_minor => (None, record(false, Some(INSUFFICIENT_FUNDS))),
        Some(acc) => (
            Some(Account {
                balance_minor: acc.balance_minor - amount_minor,
                updated_at: now,
                ..acc.clone()
            }),
            record(true, None),
        ),
    };
    Ok(Charge {
        account,
        event: record.event(),
        record: Some(record),
    })
}

/// What a refund request does.
#[derive(Debug, Clone, PartialEq)]
pub enum RefundDecision {
    Credit {
        account: Account,
        record: PaymentRecord,
    },
    /// Nothing to give back (refused payment, or refunded already).
    Ignore(String),
}

/// Gives back a successful payment, once.
pub fn refund(
    account: Option<&Account>,
    payment: Option<&PaymentRecord>,
    req: &RefundRequested,
    now: i64,
) -> Result<RefundDecision, String> {
    let payment = payment.ok_or_else(|| format!("refund for order {}: no payment was recorded", req.order_id))?;
    // The credit goes to the requester's account, so only the payer may ask for it.
    if req.username != payment.username {
        return Err(format!(
            "refund for order {} names user {:?}, but the payment was made by {:?}",
            req.order_id, req.username, payment.username
        ));
    }
    if !payment.success {
        return Ok(RefundDecision::Ignore(format!(
            "order {} was never charged",
            req.order_id
        )));
    }
    if payment.refunded_at.is_some() {
        return Ok(RefundDecision::Ignore(format!(
            "order {} was refunded already",
            req.order_id
        )));
    }
    let amount_minor = money::to_minor(req.amount).map_err(|e| format!("refund amount: {e}"))?;
    if amount_minor != payment.amount_minor {
        return Err(format!(
            "refund of {} for order {} does not match the payment of {}",
            req.amount,
            req.order_id,
            money::to_major(payment.amount_minor)
        ));
    }
    // The account was debited for this payment, so it exists unless storage was edited.
    let account = account.ok_or_else(|| {
        format!(
            "refund for order {}: account {:?} is gone",
            req.order_id, payment.username
        )
    })?;
    let balance_minor = account
        .balance_minor
        .checked_add(amount_minor)
        .ok_or_else(|| format!("refund would overflow the balance of {:?}", payment.username))?;
    Ok(RefundDecision::Credit {
        account: Account {
            balance_minor,
            updated_at: now,
            ..account.clone()
        },
        record: PaymentRecord {
            refunded_at: Some(now),
            ..payment.clone()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_events::OrderItem;

    const NOW: i64 = 1_700_000_000_000;

    fn registered() -> UserRegistered {
        UserRegistered {
            username: "alice".into(),
            email: "a@x.org".into(),
            registered_at: NOW,
            source: "auth".into(),
            notify: None,
        }
    }

    fn account(balance_minor: i64) -> Account {
        Account {
            username: "alice".into(),
            balance_minor,
            created_at: NOW,
            updated_at: NOW,
        }
    }

    fn order(total_cost: f64) -> OrderCreated {
        OrderCreated {
            request_id: "req-1".into(),
            username: "alice".into(),
            order_id: 7,
            items: vec![OrderItem {
                product_id: "p".into(),
                quantity: 1,
                price: total_cost,
            }],
            total_cost,
            created_at: NOW,
        }
    }

    fn deposit_req(amount: f64) -> DepositRequested {
        DepositRequested {
            request_id: "dep-1".into(),
            username: "alice".into(),
            amount,
            requested_at: NOW,
        }
    }

    #[test]
    fn initial_balance_is_exact_decimal_config() {
        assert_eq!(initial_balance(None), Ok(0));
        assert_eq!(initial_balance(Some("100.50")), Ok(10_050));
        assert!(
            initial_balance(Some("lots"))
                .unwrap_err()
                .contains(INITIAL_BALANCE_CONFIG)
        );
    }

    #[test]
    fn opens_an_account_once() {
        let opened = open_account(None, &registered(), 10_000, NOW).unwrap();
        assert_eq!(opened, account(10_000));
        let mut spent = opened.clone();
        spent.balance_minor = 5;
        assert_eq!(open_account(Some(&spent), &registered(), 10_000, NOW + 1), None);
    }

    #[test]
    fn deposits_add_minor_units_once() {
        let DepositDecision::Credit { account: acc, record } =
            deposit(Some(&account(29)), None, &deposit_req(0.1), NOW + 1).unwrap()
        else {
            panic!("expected a credit");
        };
        assert_eq!(acc.balance_minor, 39);
        assert_eq!(acc.updated_at, NOW + 1);
        assert_eq!(record.amount_minor, 10);
        assert_eq!(
            deposit(Some(&acc), Some(&record), &deposit_req(0.1), NOW + 2),
            Ok(DepositDecision::Duplicate)
        );
    }

    #[test]
    fn deposit_refusals() {
        assert!(matches!(
            deposit(None, None, &deposit_req(5.0), NOW),
            Err(Refusal::Retry(_))
        ));
        assert!(matches!(
            deposit(Some(&account(0)), None, &deposit_req(0.0), NOW),
            Err(Refusal::Fatal(_))
        ));
        assert!(matches!(
            deposit(Some(&account(0)), None, &deposit_req(-5.0), NOW),
            Err(Refusal::Fatal(_))
        ));
        assert!(matches!(
            deposit(Some(&account(0)), None, &deposit_req(0.001), NOW),
            Err(Refusal::Fatal(_))
        ));
        assert!(matches!(
            deposit(Some(&account(i64::MAX)), None, &deposit_req(1.0), NOW),
            Err(Refusal::Fatal(_))
        ));
    }

    #[test]
    fn charge_debits_when_covered() {
        let c = charge(Some(&account(2029)), None, &order(20.29), NOW + 5, true).unwrap();
        assert_eq!(c.account.unwrap().balance_minor, 0);
        let record = c.record.unwrap();
        assert!(record.success);
        assert_eq!(record.amount_minor, 2029);
        assert_eq!(
            c.event,
            PaymentProcessed {
                request_id: "req-1".into(),
                order_id: 7,
                username: "alice".into(),
                amount: 20.29,
                success: true,
                failure_reason: None,
                processed_at: NOW + 5,
            }
        );
    }

    #[test]
    fn charge_refuses_without_account_or_funds() {
        let c = charge(None, None, &order(1.0), NOW, false).unwrap();
        assert_eq!(
            (c.account, c.event.success, c.event.failure_reason.as_deref()),
            (None, false, Some(NO_ACCOUNT))
        );
        let c = charge(Some(&account(2028)), None, &order(20.29), NOW, true).unwrap();
        assert_eq!(c.account, None);
        assert_eq!(c.event.failure_reason.as_deref(), Some(INSUFFICIENT_FUNDS));
        assert_eq!(c.event.amount, 20.29);
        assert!(
            c.record.is_some(),
            "a refusal is recorded too, so a repeat answers the same"
        );
    }

    #[test]
    fn second_charge_for_an_order_repeats_the_first_answer() {
        let first = charge(Some(&account(5000)), None, &order(20.29), NOW, true).unwrap();
        let record = first.record.clone().unwrap();
        let again = charge(first.account.as_ref(), Some(&record), &order(20.29), NOW + 99, true).unwrap();
        assert_eq!(again.account, None, "no second debit");
        assert_eq!(again.record, None);
        assert_eq!(again.event, first.event);
    }

    #[test]
    fn charge_refuses_bad_totals() {
        assert!(matches!(
            charge(Some(&account(0)), None, &order(-1.0), NOW, true),
            Err(Refusal::Fatal(_))
        ));
        assert!(matches!(
            charge(Some(&account(0)), None, &order(1.234), NOW, true),
            Err(Refusal::Fatal(_))
        ));
    }

    #[test]
    fn refund_gives_a_payment_back_once() {
        let c = charge(Some(&account(5000)), None, &order(20.29), NOW, true).unwrap();
        let (acc, payment) = (c.account.unwrap(), c.record.unwrap());
        let req = RefundRequested {
            request_id: "req-1".into(),
            order_id: 7,
            username: "alice".into(),
            amount: 20.29,
            reason: "LATE_PAYMENT".into(),
            requested_at: NOW + 1,
        };
        let RefundDecision::Credit { account: acc, record } =
            refund(Some(&acc), Some(&payment), &req, NOW + 1).unwrap()
        else {
            panic!("expected a credit");
        };
        assert_eq!(acc.balance_minor, 5000);
        assert_eq!(record.refunded_at, Some(NOW + 1));
        assert!(matches!(
            refund(Some(&acc), Some(&record), &req, NOW + 2),
            Ok(RefundDecision::Ignore(_))
        ));

        assert!(refund(Some(&acc), None, &req, NOW).is_err());
        let wrong = RefundRequested {
            amount: 1.0,
            ..req.clone()
        };
        assert!(
            refund(Some(&acc), Some(&payment), &wrong, NOW)
                .unwrap_err()
                .contains("does not match")
        );
        let refused = charge(None, None, &order(20.29), NOW, false).unwrap().record.unwrap();
        assert!(matches!(
            refund(None, Some(&refused), &req, NOW),
            Ok(RefundDecision::Ignore(_))
        ));
    }

    #[test]
    fn balance_answers_in_decimal_and_cents_or_not_found() {
        let answer = balance(Some(&account(2029)), "alice").unwrap();
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            serde_json::json!({"username": "alice", "balance": 20.29, "balanceCents": 2029})
        );
        assert!(matches!(balance(None, "bob"), Err(QueryError::NotFound(why)) if why.contains("bob")));
    }

    #[test]
    fn keys_escape_user_text() {
        assert_eq!(account_key("a/b"), "account/a%2Fb");
        assert_eq!(payment_key(7), "payment/7");
        assert_eq!(deposit_key("alice", "d-1"), "deposit/alice/d-1");
        assert_eq!(deposit_key("a/b", "c"), "deposit/a%2Fb/c");
    }

    #[test]
    fn an_order_that_overtakes_the_registration_waits_for_it() {
        // While waiting is allowed, a missing account is "not yet", never NO_ACCOUNT.
        assert!(matches!(
            charge(None, None, &order(1.0), NOW, true),
            Err(Refusal::Retry(why)) if why.contains("alice")
        ));
        // Once the account is there, the retried order is charged.
        let c = charge(Some(&account(100)), None, &order(1.0), NOW, true).unwrap();
        assert!(c.event.success);
        // Waiting over: the answer is final.
        let c = charge(None, None, &order(1.0), NOW, false).unwrap();
        assert_eq!(c.event.failure_reason.as_deref(), Some(NO_ACCOUNT));
    }

    #[test]
    fn a_refund_for_someone_elses_payment_is_refused() {
        let c = charge(Some(&account(5000)), None, &order(20.29), NOW, true).unwrap();
        let payment = c.record.unwrap();
        let mallory = Account {
            username: "mallory".into(),
            ..account(0)
        };
        let req = RefundRequested {
            request_id: "req-1".into(),
            order_id: 7,
            username: "mallory".into(),
            amount: 20.29,
            reason: "LATE_PAYMENT: order is PAYMENT_TIMEOUT".into(),
            requested_at: NOW,
        };
        let why = refund(Some(&mallory), Some(&payment), &req, NOW).unwrap_err();
        assert!(why.contains("mallory") && why.contains("alice"), "{why}");
    }

    #[test]
    fn deposit_ids_are_scoped_per_user() {
        // bob's deposit "dep-1" is not a repeat of alice's "dep-1".
        assert_ne!(deposit_key("alice", "dep-1"), deposit_key("bob", "dep-1"));
    }
}
