//! Notification decisions as pure functions. Two roles share the component:
//!
//! - notifier: an `OrderStatusUpdated` waits as a pending entry until the user's profile
//!   arrives, then becomes a `NotificationRequested`;
//! - sender: a `NotificationRequested` is delivered once (recorded as an outbox entry)
//!   and reported as `NotificationSent`.

use saga_events::{
    NotificationRequested, NotificationSent, NotificationType, OrderStatus, OrderStatusUpdated, UserProfileRequested,
    UserProfileResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_sdk::{keys, money};

/// `replyTo` of our profile requests.
pub const REPLY_TO: &str = "notif";
/// The one delivery channel: every notification goes out as an email.
pub const CHANNEL_EMAIL: &str = "email";
/// `NotificationSent.failureReason` values.
pub const UNSUPPORTED_CHANNEL: &str = "UNSUPPORTED_CHANNEL";
pub const NO_RECIPIENT: &str = "NO_RECIPIENT";

/// Prefix of the pending notifications of one request of one user. Scoped per user:
/// two users may send the same requestId, and neither may overwrite the other's entry.
pub fn pending_prefix(username: &str, request_id: &str) -> String {
    format!("pending/{}/{}/", keys::segment(username), keys::segment(request_id))
}

/// Storage key of the pending notification for one status of one request.
pub fn pending_key(username: &str, request_id: &str, status: &str) -> String {
    format!("{}{}", pending_prefix(username, request_id), keys::segment(status))
}

/// Storage key of a delivery (the sender's outbox record).
pub fn sent_key(notification_id: &str) -> String {
    format!("sent/{}", keys::segment(notification_id))
}

/// The same status of the same request of the same user always yields the same id, so
/// a redelivered status update cannot produce a second, differently named notification,
/// and another user's request with the same requestId cannot pass for a repeat. `%` and
/// `:` in the parts are escaped so that no two triples share an id.
pub fn notification_id(username: &str, request_id: &str, status: &str) -> String {
    let part = |text: &str| text.replace('%', "%25").replace(':', "%3A");
    format!("{}:{}:{}", part(username), part(request_id), part(status))
}

/// A status update waiting for the user's contact data, under [`pending_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub update: OrderStatusUpdated,
    pub received_at: i64,
}

/// A status update becomes a pending entry plus a request for the user's profile.
pub fn on_status(update: &OrderStatusUpdated, now: i64) -> (Pending, UserProfileRequested) {
    let request = UserProfileRequested {
        request_id: update.request_id.clone(),
        username: update.username.clone(),
        reply_to: REPLY_TO.to_string(),
        requested_at: now,
    };
    (
        Pending {
            update: update.clone(),
            received_at: now,
        },
        request,
    )
}

/// The kind of notification a status calls for.
pub fn notification_type(status: &str) -> NotificationType {
    match OrderStatus::parse(status) {
        Some(OrderStatus::Paid) => NotificationType::OrderPaid,
        Some(OrderStatus::InsufficientFunds) => NotificationType::PaymentFailed,
        Some(OrderStatus::Rejected | OrderStatus::PaymentTimeout) => NotificationType::OrderCancelled,
        _ => NotificationType::OrderUpdate,
    }
}

/// What a profile response does to one pending entry.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileOutcome {
    /// Publish this, then drop the entry.
    Notify(NotificationRequested),
    /// Nobody to notify (unknown user, no address): drop the entry, with a warning.
    Drop(String),
    /// The response is about another user: leave the entry alone.
    NotThisOne,
}

/// Matches a profile response with a pending entry of the same requestId.
pub fn on_profile(pending: &Pending, profile: &UserProfileResponse, now: i64) -> ProfileOutcome {
    let update = &pending.update;
    if profile.username != update.username {
        return ProfileOutcome::NotThisOne;
    }
    if !profile.found {
        return ProfileOutcome::Drop(format!("user {:?} has no profile", update.username));
    }
    let Some(email) = profile.email.as_deref().map(str::trim).filter(|e| !e.is_empty()) else {
        return ProfileOutcome::Drop(format!("user {:?} has no email address", update.username));
    };
    let name = profile
        .display_name
        .as_deref()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or(&update.username);
    let kind = notification_type(&update.status);
    let (subject, content) = render(kind, update, name);
    ProfileOutcome::Notify(NotificationRequested {
        notification_id: notification_id(&update.username, &update.request_id, &update.status),
        request_id: update.request_id.clone(),
        username: update.username.clone(),
        kind,
        subject,
        content,
        metadata: [
            ("channel", CHANNEL_EMAIL.to_string()),
            ("recipient", email.to_string()),
            ("orderId", update.order_id.to_string()),
            ("status", update.status.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        scheduled_at: now,
    })
}

/// Subject and body of a notification.
fn render(kind: NotificationType, update: &OrderStatusUpdated, name: &str) -> (String, String) {
    let id = update.order_id;
    let amount = update.metadata.get("amount").and_then(Value::as_f64).map(format_amount);
    let text = |key: &str| update.metadata.get(key).and_then(Value::as_str).map(str::to_string);
    match kind {
        NotificationType::OrderPaid => (
            format!("Order #{id} is paid"),
            match amount {
                Some(amount) => format!("Hello {name}, we received your payment of {amount} for order #{id}."),
                None => format!("Hello {name}, we received your payment for order #{id}."),
            },
        ),
        NotificationType::PaymentFailed => {
            let why = match text("failureReason").as_deref() {
                Some("INSUFFICIENT_FUNDS") => "your balance is too low".to_string(),
                Some("NO_ACCOUNT") => "you have no billing account".to_string(),
                Some(other) => other.to_string(),
                None => "the payment was refused".to_string(),
            };
            let what = amount.map(|a| format!("{a} ")).unwrap_or_default();
            (
                format!("Payment for order #{id} failed"),
                format!("Hello {name}, we could not charge {what}for order #{id}: {why}."),
            )
        }
        NotificationType::OrderCancelled if update.status == OrderStatus::Rejected.as_str() => (
            "Your order was not accepted".to_string(),
            format!(
                "Hello {name}, your order request {} was rejected: {}.",
                update.request_id,
                text("reason").unwrap_or_else(|| "invalid order".to_string())
            ),
        ),
        NotificationType::OrderCancelled => (
            format!("Order #{id} is cancelled"),
            format!("Hello {name}, order #{id} was cancelled because the payment did not arrive in time."),
        ),
        NotificationType::OrderUpdate => (
            format!("Order #{id}: {}", update.status),
            format!("Hello {name}, order #{id} is now {}.", update.status),
        ),
    }
}

/// Money from the wire, shown with two decimals (the metadata holds major units).
fn format_amount(major: f64) -> String {
    match money::to_minor(major) {
        Ok(minor) => format!(
            "{}.{:02}",
            minor / money::MINOR_PER_MAJOR,
            minor % money::MINOR_PER_MAJOR
        ),
        Err(_) => major.to_string(),
    }
}

/// The sender's outbox record under [`sent_key`]: what was delivered to whom. There is
/// no mail server in Switchyard, so recording the rendered message is the delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub notification_id: String,
    pub request_id: String,
    pub username: String,
    pub channel: String,
    pub recipient: String,
    /// The message as it would go out (RFC 5322 style headers, blank line, body).
    pub message: String,
    pub success: bool,
    pub failure_reason: Option<String>,
    pub sent_at: i64,
}

/// A delivery: the record to store and the report to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub record: Delivery,
    pub event: NotificationSent,
}

/// Delivers a notification once. A notification that cannot be delivered (no address,
/// unknown channel) is reported as failed rather than retried: retrying cannot fix it.
/// `None` when `previous` shows it went out before: sending again would spam the user.
pub fn send(previous: Option<&Delivery>, req: &NotificationRequested, now: i64) -> Option<Sent> {
    if previous.is_some() {
        return None;
    }
    let channel = req.metadata.get("channel").map(String::as_str).unwrap_or(CHANNEL_EMAIL);
    let recipient = req
        .metadata
        .get("recipient")
        .map(|r| one_line(r).trim().to_string())
        .unwrap_or_default();
    let failure = if channel != CHANNEL_EMAIL {
        Some(UNSUPPORTED_CHANNEL)
    } else if recipient.is_empty() {
        Some(NO_RECIPIENT)
    } else {
        None
    };
    let message = format!(
        "To: {recipient}\r\nSubject: {}\r\n\r\n{}\r\n",
        one_line(&req.subject),
        req.content
    );
    let record = Delivery {
        notification_id: req.notification_id.clone(),
        request_id: req.request_id.clone(),
        username: req.username.clone(),
        channel: channel.to_string(),
        recipient,
        message,
        success: failure.is_none(),
        failure_reason: failure.map(String::from),
        sent_at: now,
    };
    let event = NotificationSent {
        notification_id: record.notification_id.clone(),
        request_id: record.request_id.clone(),
        username: record.username.clone(),
        channel: record.channel.clone(),
        recipient: record.recipient.clone(),
        success: record.success,
        failure_reason: record.failure_reason.clone(),
        sent_at: now,
    };
    Some(Sent { record, event })
}

/// Header values must not carry line breaks (they would inject headers).
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn update(status: &str, metadata: &[(&str, Value)]) -> OrderStatusUpdated {
        OrderStatusUpdated {
            request_id: "req-1".into(),
            order_id: 7,
            username: "alice".into(),
            status: status.into(),
            previous_status: Some("PENDING_VALIDATION".into()),
            updated_at: NOW,
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }

    fn profile(found: bool) -> UserProfileResponse {
        UserProfileResponse {
            request_id: "req-1".into(),
            username: "alice".into(),
            found,
            email: found.then(|| "alice@example.org".to_string()),
            display_name: found.then(|| "Alice".to_string()),
            responded_at: NOW,
        }
    }

    fn notify(update: OrderStatusUpdated) -> NotificationRequested {
        let (pending, _) = on_status(&update, NOW);
        match on_profile(&pending, &profile(true), NOW + 1) {
            ProfileOutcome::Notify(n) => n,
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    #[test]
    fn status_update_asks_for_the_profile() {
        let u = update("PAID", &[]);
        let (pending, req) = on_status(&u, NOW);
        assert_eq!(pending.update, u);
        assert_eq!(
            req,
            UserProfileRequested {
                request_id: "req-1".into(),
                username: "alice".into(),
                reply_to: "notif".into(),
                requested_at: NOW
            }
        );
    }

    #[test]
    fn type_follows_status() {
        assert_eq!(notification_type("PAID"), NotificationType::OrderPaid);
        assert_eq!(notification_type("INSUFFICIENT_FUNDS"), NotificationType::PaymentFailed);
        assert_eq!(notification_type("REJECTED"), NotificationType::OrderCancelled);
        assert_eq!(notification_type("PAYMENT_TIMEOUT"), NotificationType::OrderCancelled);
        assert_eq!(notification_type("PENDING_VALIDATION"), NotificationType::OrderUpdate);
        assert_eq!(notification_type("SHIPPED"), NotificationType::OrderUpdate);
    }

    #[test]
    fn paid_notification_is_complete_and_deterministic() {
        let n = notify(update("PAID", &[("amount", json!(20.29))]));
        assert_eq!(n.notification_id, "alice:req-1:PAID");
        assert_eq!(n.kind, NotificationType::OrderPaid);
        assert_eq!(n.subject, "Order #7 is paid");
        assert_eq!(
            n.content,
            "Hello Alice, we received your payment of 20.29 for order #7."
        );
        assert_eq!(n.scheduled_at, NOW + 1);
        assert_eq!(
            n.metadata,
            BTreeMap::from([
                ("channel".to_string(), "email".to_string()),
                ("recipient".to_string(), "alice@example.org".to_string()),
                ("orderId".to_string(), "7".to_string()),
                ("status".to_string(), "PAID".to_string()),
            ])
        );
        // A redelivered update renders the very same notification id.
        assert_eq!(
            notify(update("PAID", &[("amount", json!(20.29))])).notification_id,
            n.notification_id
        );
    }

    #[test]
    fn failure_and_cancellation_texts() {
        let n = notify(update(
            "INSUFFICIENT_FUNDS",
            &[("amount", json!(5.0)), ("failureReason", json!("NO_ACCOUNT"))],
        ));
        assert_eq!(
            n.content,
            "Hello Alice, we could not charge 5.00 for order #7: you have no billing account."
        );
        let n = notify(update("PAYMENT_TIMEOUT", &[]));
        assert_eq!(n.kind, NotificationType::OrderCancelled);
        assert_eq!(n.subject, "Order #7 is cancelled");
        let n = notify(update("REJECTED", &[("reason", json!("items is empty"))]));
        assert_eq!(n.subject, "Your order was not accepted");
        assert_eq!(
            n.content,
            "Hello Alice, your order request req-1 was rejected: items is empty."
        );
        let n = notify(update("SHIPPED", &[]));
        assert_eq!(
            (n.kind, n.subject.as_str()),
            (NotificationType::OrderUpdate, "Order #7: SHIPPED")
        );
    }

    #[test]
    fn unknown_or_unreachable_users_are_dropped() {
        let (pending, _) = on_status(&update("PAID", &[]), NOW);
        assert!(matches!(
            on_profile(&pending, &profile(false), NOW),
            ProfileOutcome::Drop(_)
        ));
        let no_email = UserProfileResponse {
            email: Some(" ".into()),
            ..profile(true)
        };
        assert!(matches!(on_profile(&pending, &no_email, NOW), ProfileOutcome::Drop(_)));
        let someone_else = UserProfileResponse {
            username: "bob".into(),
            ..profile(true)
        };
        assert_eq!(on_profile(&pending, &someone_else, NOW), ProfileOutcome::NotThisOne);
    }

    #[test]
    fn sender_delivers_once() {
        let n = notify(update("PAID", &[("amount", json!(1.5))]));
        let Some(Sent { record, event }) = send(None, &n, NOW + 2) else {
            panic!("expected a delivery")
        };
        assert!(record.success);
        assert_eq!(record.recipient, "alice@example.org");
        assert_eq!(
            record.message,
            "To: alice@example.org\r\nSubject: Order #7 is paid\r\n\r\n\
             Hello Alice, we received your payment of 1.50 for order #7.\r\n"
        );
        assert_eq!(event.notification_id, "alice:req-1:PAID");
        assert_eq!(
            (event.channel.as_str(), event.success, event.sent_at),
            ("email", true, NOW + 2)
        );
        assert_eq!(send(Some(&record), &n, NOW + 3), None);
    }

    #[test]
    fn sender_reports_undeliverable_notifications() {
        let mut n = notify(update("PAID", &[]));
        n.metadata.remove("recipient");
        let Some(Sent { event, .. }) = send(None, &n, NOW) else {
            panic!("expected a report")
        };
        assert_eq!(
            (event.success, event.failure_reason.as_deref()),
            (false, Some(NO_RECIPIENT))
        );
        n.metadata.insert("channel".into(), "sms".into());
        let Some(Sent { event, .. }) = send(None, &n, NOW) else {
            panic!("expected a report")
        };
        assert_eq!(event.failure_reason.as_deref(), Some(UNSUPPORTED_CHANNEL));
    }

    #[test]
    fn headers_cannot_be_injected() {
        let mut n = notify(update("PAID", &[]));
        n.subject = "hi\r\nBcc: everyone@example.org".into();
        let Some(Sent { record, .. }) = send(None, &n, NOW) else {
            panic!("expected a delivery")
        };
        assert!(
            record
                .message
                .starts_with("To: alice@example.org\r\nSubject: hi  Bcc: everyone@example.org\r\n\r\n")
        );
    }

    #[test]
    fn keys_escape_user_text() {
        assert_eq!(pending_prefix("a/b", "r/1"), "pending/a%2Fb/r%2F1/");
        assert_eq!(pending_key("alice", "r/1", "PAID"), "pending/alice/r%2F1/PAID");
        assert_eq!(sent_key("alice:r/1:PAID"), "sent/alice:r%2F1:PAID");
    }

    #[test]
    fn notifications_are_scoped_per_user() {
        // Two users' requests with one requestId are two notifications, two entries.
        assert_ne!(
            notification_id("alice", "r-1", "PAID"),
            notification_id("bob", "r-1", "PAID")
        );
        assert_ne!(pending_key("alice", "r-1", "PAID"), pending_key("bob", "r-1", "PAID"));
        // Separators inside the parts cannot make two triples collide.
        assert_ne!(notification_id("a:b", "c", "PAID"), notification_id("a", "b:c", "PAID"));
    }
}
