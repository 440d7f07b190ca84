//! Event schemas of the order saga (ADR-0003), JSON with camelCase field names, shared by
//! the order, billing, user and notif handlers; the SDK itself stays generic.
//! Timestamps are epoch milliseconds; money is a JSON number with at most two decimals
//! (`switchyard_sdk::money` converts it). docs/events.md documents each one and its topic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Topic names from the ADR.
pub mod topics {
    pub const ORDERS_REQUESTS: &str = "orders.requests";
    pub const ORDERS_CREATED: &str = "orders.created";
    pub const BILLING_PAYMENTS: &str = "billing.payments";
    pub const BILLING_DEPOSITS: &str = "billing.deposits";
    pub const BILLING_REFUNDS: &str = "billing.refunds";
    pub const ORDERS_STATUS: &str = "orders.status";
    pub const ORDERS_TIMEOUTS: &str = "orders.timeouts";
    pub const NOTIFICATIONS_REQUESTED: &str = "notifications.requested";
    pub const NOTIFICATIONS_SENT: &str = "notifications.sent";
    pub const USERS_REGISTERED: &str = "users.registered";
    pub const USERS_PROFILE: &str = "users.profile";
    pub const USERS_PROFILE_RESPONSE: &str = "users.profile.response";
}

/// One line of an order. Not defined by the ADR: a product, how many, and the unit price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrderItem {
    pub product_id: String,
    /// Signed so that a zero or negative quantity reaches validation and becomes a
    /// `REJECTED` order instead of an undecodable payload.
    pub quantity: i64,
    /// Unit price, major units.
    pub price: f64,
}

/// `orders.requests`: the gateway asks for an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreationRequested {
    pub request_id: String,
    pub username: String,
    pub items: Vec<OrderItem>,
    pub delivery_address: String,
    pub payment_method: String,
    pub created_at: i64,
}

/// `orders.created`: the order exists with status `PENDING_VALIDATION`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub request_id: String,
    pub username: String,
    pub order_id: i64,
    pub items: Vec<OrderItem>,
    pub total_cost: f64,
    pub created_at: i64,
}

/// `billing.payments`: the outcome of charging an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentProcessed {
    pub request_id: String,
    pub order_id: i64,
    pub username: String,
    pub amount: f64,
    pub success: bool,
    pub failure_reason: Option<String>,
    pub processed_at: i64,
}

/// Order statuses carried in [`OrderStatusUpdated::status`]. The wire field stays a
/// string so that a consumer built before a new status appears still decodes the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Created, waiting for billing's `PaymentProcessed`.
    PendingValidation,
    /// Billing debited the total.
    Paid,
    /// Billing refused the payment (`metadata.failureReason` says why).
    InsufficientFunds,
    /// No payment result arrived within the payment timeout.
    PaymentTimeout,
    /// The request failed validation; no order was created (`orderId` is 0).
    Rejected,
}

impl OrderStatus {
    /// The wire spelling, e.g. `PENDING_VALIDATION`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingValidation => "PENDING_VALIDATION",
            OrderStatus::Paid => "PAID",
            OrderStatus::InsufficientFunds => "INSUFFICIENT_FUNDS",
            OrderStatus::PaymentTimeout => "PAYMENT_TIMEOUT",
            OrderStatus::Rejected => "REJECTED",
        }
    }

    /// Parses the wire spelling; `None` for a status this SDK does not know.
    pub fn parse(status: &str) -> Option<OrderStatus> {
        [
            OrderStatus::PendingValidation,
            OrderStatus::Paid,
            OrderStatus::InsufficientFunds,
            OrderStatus::PaymentTimeout,
            OrderStatus::Rejected,
        ]
        .into_iter()
        .find(|s| s.as_str() == status)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `orders.status`: an order changed status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusUpdated {
    pub request_id: String,
    /// 0 for `REJECTED`: the request never became an order (ids start at 1).
    pub order_id: i64,
    pub username: String,
    /// An [`OrderStatus`] spelling; consumers must tolerate ones they do not know.
    pub status: String,
    pub previous_status: Option<String>,
    pub updated_at: i64,
    /// Details by status (`amount`, `failureReason`, `reason`, ...; docs/events.md).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Kind of notification, chosen from the order status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationType {
    OrderPaid,
    PaymentFailed,
    OrderCancelled,
    OrderUpdate,
}

/// `notifications.requested`: notif asks the sender to deliver a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRequested {
    pub notification_id: String,
    pub request_id: String,
    pub username: String,
    #[serde(rename = "type")]
    pub kind: NotificationType,
    pub subject: String,
    pub content: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub scheduled_at: i64,
}

/// `notifications.sent`: the sender's record of a delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSent {
    pub notification_id: String,
    pub request_id: String,
    pub username: String,
    pub channel: String,
    pub recipient: String,
    pub success: bool,
    pub failure_reason: Option<String>,
    pub sent_at: i64,
}

/// `users.registered`: the auth part created a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    pub username: String,
    pub email: String,
    pub registered_at: i64,
    pub source: String,
    /// How the user wants to be notified: channels, comma separated (`email`, `webhook`,
    /// `log`); absent: the notifier's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// `users.profile`: a request for a user's contact data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserProfileRequested {
    pub request_id: String,
    pub username: String,
    /// Who asks; the response is correlated by `requestId` and this.
    pub reply_to: String,
    pub requested_at: i64,
}

/// `users.profile.response`: the contact data, or `found = false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserProfileResponse {
    pub request_id: String,
    pub username: String,
    pub found: bool,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub responded_at: i64,
    /// How the user wants to be notified: channels, comma separated (`email`, `webhook`,
    /// `log`); absent: the notifier's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// `billing.deposits`: money added to a user's account (top-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositRequested {
    pub request_id: String,
    pub username: String,
    pub amount: f64,
    pub requested_at: i64,
}

/// `billing.refunds`: the saga's compensation. order asks billing to give back a
/// successful payment that arrived after the order was already closed (e.g. timed out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundRequested {
    pub request_id: String,
    pub order_id: i64,
    pub username: String,
    pub amount: f64,
    /// Why the payment is given back: a code, a colon, and the detail; today always
    /// `LATE_PAYMENT: order is <STATUS>` (the payment arrived after the order closed).
    pub reason: String,
    pub requested_at: i64,
}

/// `orders.timeouts`: fired by a timer when a payment did not arrive in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentTimedOut {
    pub request_id: String,
    pub order_id: i64,
    pub username: String,
    pub deadline_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_status_round_trips_its_wire_spelling() {
        for status in [
            OrderStatus::PendingValidation,
            OrderStatus::Paid,
            OrderStatus::PaymentTimeout,
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("SHIPPED"), None);
    }

    #[test]
    fn order_item_uses_camel_case_and_refuses_unknown_fields() {
        let item: OrderItem = serde_json::from_str(r#"{"productId":"p1","quantity":2,"price":9.99}"#).unwrap();
        assert_eq!(
            item,
            OrderItem {
                product_id: "p1".into(),
                quantity: 2,
                price: 9.99
            }
        );
        assert!(serde_json::from_str::<OrderItem>(r#"{"productId":"p1","quantity":2,"price":1,"x":1}"#).is_err());
    }

    #[test]
    fn missing_optional_fields_decode_as_none() {
        let p: PaymentProcessed = serde_json::from_str(
            r#"{"requestId":"r","orderId":1,"username":"u","amount":1.5,"success":true,"processedAt":5}"#,
        )
        .unwrap();
        assert_eq!(p.failure_reason, None);
    }
}
