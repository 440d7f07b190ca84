//! Notification decisions as pure functions. Two roles share the component:
//!
//! - notifier: an `OrderStatusUpdated` waits as a pending entry until the user's profile
//!   arrives, then becomes a `NotificationRequested`;
//! - sender: a `NotificationRequested` goes out once on each of its channels: the log
//!   (the default, no server needed), an e-mail or a webhook. The last two are outbound
//!   effects the host carries out after the commit; their outcome comes back on
//!   [`RESULT_TOPIC`] and becomes the `NotificationSent`, so it reports what happened.

use saga_events::{
    NotificationRequested, NotificationSent, NotificationType, OrderStatus, OrderStatusUpdated, UserProfileRequested,
    UserProfileResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_sdk::{keys, money, outbound};

/// `replyTo` of our profile requests.
pub const REPLY_TO: &str = "notif";
/// The e-mail channel (through the host's SMTP delivery).
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

/// Storage key of a notification's delivery on one channel (the sender's record).
pub fn sent_key(notification_id: &str, channel: &str) -> String {
    format!("sent/{}/{}", keys::segment(notification_id), keys::segment(channel))
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
    // The user's own choice of channels travels with the notification.
    let channel = profile.notify.as_deref().map(str::trim).filter(|c| !c.is_empty());
    ProfileOutcome::Notify(NotificationRequested {
        notification_id: notification_id(&update.username, &update.request_id, &update.status),
        request_id: update.request_id.clone(),
        username: update.username.clone(),
        kind,
        subject,
        content,
        metadata: [
            ("recipient", email.to_string()),
            ("orderId", update.order_id.to_string()),
            ("status", update.status.clone()),
        ]
        .into_iter()
        .chain(channel.map(|c| ("channel", c.to_string())))
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

/// How the component is set up (its `config` in topics.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Channels a notification goes out on when it names none (`channels`, comma
    /// separated; default `log`, which needs no server).
    pub channels: Vec<String>,
    /// Where the webhook channel POSTs (`webhook-url`); must be in `reach.http`.
    pub webhook_url: Option<String>,
    /// Sender of e-mails (`mail-from`).
    pub mail_from: String,
    /// SMTP relay to use (`smtp-relay`), as written in `reach.smtp`; none: the only one.
    pub smtp_relay: Option<String>,
}

impl Settings {
    /// Reads the settings from config lookups.
    pub fn from_config(get: impl Fn(&str) -> Option<String>) -> Settings {
        let channels = get("channels")
            .map(|c| split_channels(&c))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| vec![CHANNEL_LOG.to_string()]);
        Settings {
            channels,
            webhook_url: get("webhook-url").filter(|u| !u.trim().is_empty()),
            mail_from: get("mail-from").unwrap_or_else(|| DEFAULT_MAIL_FROM.to_string()),
            smtp_relay: get("smtp-relay").filter(|r| !r.trim().is_empty()),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(|_| None)
    }
}

/// Channels: the log (the embedded default), an e-mail through SMTP, a webhook.
pub const CHANNEL_LOG: &str = "log";
pub const CHANNEL_WEBHOOK: &str = "webhook";
pub const DEFAULT_MAIL_FROM: &str = "Switchyard <notifications@switchyard.local>";
/// `NotificationSent.failureReason` when the webhook channel has no URL configured.
pub const NO_WEBHOOK_URL: &str = "NO_WEBHOOK_URL";

fn split_channels(text: &str) -> Vec<String> {
    text.split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect()
}

/// The channels of one notification: its own `channel` metadata (comma separated), else
/// the component's default ones.
pub fn channels(req: &NotificationRequested, settings: &Settings) -> Vec<String> {
    match req.metadata.get("channel").map(|c| split_channels(c)) {
        Some(channels) if !channels.is_empty() => channels,
        _ => settings.channels.clone(),
    }
}

/// The sender's record of one notification on one channel, under [`sent_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub notification_id: String,
    pub request_id: String,
    pub username: String,
    pub channel: String,
    /// The e-mail address, or the webhook URL.
    pub recipient: String,
    /// The host's delivery id while the host delivers (e-mail, webhook).
    pub delivery_id: Option<String>,
    /// True until the outcome is known.
    pub pending: bool,
    pub success: bool,
    pub failure_reason: Option<String>,
    pub sent_at: i64,
}

/// A finished delivery: the record to store and the report to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub record: Delivery,
    pub event: NotificationSent,
}

/// What the host is asked to deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Email {
        relay: Option<String>,
        sender: String,
        to: String,
        subject: String,
        text: String,
    },
    /// POST the notification as JSON.
    Webhook { url: String, body: NotificationRequested },
}

/// What a notification on one channel comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Send {
    /// `previous` shows it went out (or is going out) before: sending again would spam.
    Repeat,
    /// Over at once: written to the log, or undeliverable (no address, unknown channel:
    /// retrying cannot fix it), reported as failed.
    Report(Sent),
    /// Ask the host to deliver `request`; store `record` (pending) with the delivery
    /// id, and report when the outcome arrives on [`RESULT_TOPIC`].
    Deliver {
        record: Delivery,
        request: Outbound,
        context: Context,
    },
}

/// Where the host publishes delivery outcomes for this component.
pub const RESULT_TOPIC: &str = "notifications.delivered";

/// What a delivery's outcome needs to find its record again (the delivery's context).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub notification_id: String,
    pub channel: String,
}

/// Decides how notification `req` goes out on `channel`.
pub fn send(
    previous: Option<&Delivery>,
    req: &NotificationRequested,
    channel: &str,
    settings: &Settings,
    now: i64,
) -> Send {
    if previous.is_some() {
        return Send::Repeat;
    }
    let email = req
        .metadata
        .get("recipient")
        .map(|r| one_line(r).trim().to_string())
        .unwrap_or_default();
    let recipient = match channel {
        CHANNEL_WEBHOOK => settings.webhook_url.clone().unwrap_or_default(),
        _ => email.clone(),
    };
    let record = Delivery {
        notification_id: req.notification_id.clone(),
        request_id: req.request_id.clone(),
        username: req.username.clone(),
        channel: channel.to_string(),
        recipient,
        delivery_id: None,
        pending: true,
        success: false,
        failure_reason: None,
        sent_at: now,
    };
    let context = Context {
        notification_id: req.notification_id.clone(),
        channel: channel.to_string(),
    };
    match channel {
        CHANNEL_LOG => Send::Report(finish(record, Ok(()), now)),
        CHANNEL_EMAIL if email.is_empty() => Send::Report(finish(record, Err(NO_RECIPIENT.into()), now)),
        CHANNEL_EMAIL => Send::Deliver {
            request: Outbound::Email {
                relay: settings.smtp_relay.clone(),
                sender: settings.mail_from.clone(),
                to: email,
                subject: one_line(&req.subject),
                text: req.content.clone(),
            },
            record,
            context,
        },
        CHANNEL_WEBHOOK => match &settings.webhook_url {
            None => Send::Report(finish(record, Err(NO_WEBHOOK_URL.into()), now)),
            Some(url) => Send::Deliver {
                request: Outbound::Webhook {
                    url: url.clone(),
                    body: req.clone(),
                },
                record,
                context,
            },
        },
        _ => Send::Report(finish(record, Err(UNSUPPORTED_CHANNEL.into()), now)),
    }
}

/// A delivery over: success, or failure with its reason.
pub fn finish(mut record: Delivery, result: Result<(), String>, now: i64) -> Sent {
    record.pending = false;
    record.success = result.is_ok();
    record.failure_reason = result.err();
    record.sent_at = now;
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
    Sent { record, event }
}

/// The host's outcome of a delivery, for the record it belongs to. `None` when the
/// record is not waiting for this delivery (finished already, or another delivery).
pub fn on_outcome(record: Option<&Delivery>, outcome: &outbound::Outcome, now: i64) -> Option<Sent> {
    let record = record?;
    if !record.pending || record.delivery_id.as_deref() != Some(outcome.delivery_id.as_str()) {
        return None;
    }
    let result = if outcome.success {
        Ok(())
    } else {
        Err(outcome.reason.clone().unwrap_or_else(|| "delivery failed".to_string()))
    };
    Some(finish(record.clone(), result, now))
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
            notify: None,
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
        // A user's own channels go with the notification and win over the default.
        let chooses_webhook = UserProfileResponse {
            notify: Some("webhook".into()),
            ..profile(true)
        };
        let ProfileOutcome::Notify(n) = on_profile(&pending, &chooses_webhook, NOW) else {
            panic!("expected a notification")
        };
        assert_eq!(channels(&n, &Settings::default()), vec!["webhook"]);
        let someone_else = UserProfileResponse {
            username: "bob".into(),
            ..profile(true)
        };
        assert_eq!(on_profile(&pending, &someone_else, NOW), ProfileOutcome::NotThisOne);
    }

    fn settings(channels: &str) -> Settings {
        Settings::from_config(|key| match key {
            "channels" => Some(channels.to_string()),
            "webhook-url" => Some("http://127.0.0.1:9/hook".to_string()),
            _ => None,
        })
    }

    #[test]
    fn the_log_channel_is_the_default_and_reports_at_once() {
        assert_eq!(Settings::default().channels, vec!["log"]);
        let n = notify(update("PAID", &[("amount", json!(1.5))]));
        let Send::Report(Sent { record, event }) = send(None, &n, "log", &Settings::default(), NOW + 2) else {
            panic!("the log channel is over at once")
        };
        assert!(record.success && !record.pending);
        assert_eq!(event.notification_id, "alice:req-1:PAID");
        assert_eq!(
            (
                event.channel.as_str(),
                event.recipient.as_str(),
                event.success,
                event.sent_at
            ),
            ("log", "alice@example.org", true, NOW + 2)
        );
        assert_eq!(
            send(Some(&record), &n, "log", &Settings::default(), NOW + 3),
            Send::Repeat
        );
    }

    #[test]
    fn email_and_webhook_are_asked_of_the_host_and_reported_from_its_outcome() {
        let n = notify(update("PAID", &[]));
        let settings = settings("email, webhook");
        assert_eq!(channels(&n, &settings), vec!["email", "webhook"]);
        let Send::Deliver {
            record,
            request,
            context,
        } = send(None, &n, "email", &settings, NOW)
        else {
            panic!("e-mail goes through the host")
        };
        assert!(record.pending);
        assert_eq!(
            request,
            Outbound::Email {
                relay: None,
                sender: DEFAULT_MAIL_FROM.into(),
                to: "alice@example.org".into(),
                subject: "Order #7 is paid".into(),
                text: "Hello Alice, we received your payment for order #7.".into(),
            }
        );
        assert_eq!(context.channel, "email");
        let Send::Deliver {
            request, record: hook, ..
        } = send(None, &n, "webhook", &settings, NOW)
        else {
            panic!("the webhook goes through the host")
        };
        assert!(matches!(request, Outbound::Webhook { url, body } if url == "http://127.0.0.1:9/hook" && body == n));
        assert_eq!(hook.recipient, "http://127.0.0.1:9/hook");

        let waiting = Delivery {
            delivery_id: Some("d-1".into()),
            ..record
        };
        let refused = outbound::Outcome {
            delivery_id: "d-1".into(),
            kind: "email".into(),
            success: false,
            status: Some(550),
            reason: Some("550 no such user".into()),
            attempts: 1,
            context: String::new(),
            finished_at: NOW,
        };
        let Some(Sent { record, event }) = on_outcome(Some(&waiting), &refused, NOW + 5) else {
            panic!("the outcome finishes the delivery")
        };
        assert_eq!(
            (event.success, event.failure_reason.as_deref()),
            (false, Some("550 no such user"))
        );
        assert!(!record.pending);
        // A finished record, or another delivery's outcome, changes nothing.
        assert_eq!(on_outcome(Some(&record), &refused, NOW + 6), None);
        let other = outbound::Outcome {
            delivery_id: "d-2".into(),
            ..refused
        };
        assert_eq!(on_outcome(Some(&waiting), &other, NOW + 6), None);
    }

    #[test]
    fn undeliverable_notifications_are_reported_as_failed() {
        let mut n = notify(update("PAID", &[]));
        n.metadata.remove("recipient");
        let Send::Report(Sent { event, .. }) = send(None, &n, "email", &settings("email"), NOW) else {
            panic!("expected a report")
        };
        assert_eq!(
            (event.success, event.failure_reason.as_deref()),
            (false, Some(NO_RECIPIENT))
        );
        let Send::Report(Sent { event, .. }) = send(None, &n, "sms", &settings("sms"), NOW) else {
            panic!("expected a report")
        };
        assert_eq!(event.failure_reason.as_deref(), Some(UNSUPPORTED_CHANNEL));
        let Send::Report(Sent { event, .. }) = send(None, &n, "webhook", &Settings::default(), NOW) else {
            panic!("expected a report")
        };
        assert_eq!(event.failure_reason.as_deref(), Some(NO_WEBHOOK_URL));
        // A notification may name its own channels.
        n.metadata.insert("channel".into(), "webhook".into());
        assert_eq!(channels(&n, &settings("email")), vec!["webhook"]);
    }

    #[test]
    fn subjects_cannot_inject_headers() {
        let mut n = notify(update("PAID", &[]));
        n.subject = "hi\r\nBcc: everyone@example.org".into();
        let Send::Deliver {
            request: Outbound::Email { subject, .. },
            ..
        } = send(None, &n, "email", &settings("email"), NOW)
        else {
            panic!("expected an e-mail")
        };
        assert_eq!(subject, "hi  Bcc: everyone@example.org");
    }

    #[test]
    fn keys_escape_user_text() {
        assert_eq!(pending_prefix("a/b", "r/1"), "pending/a%2Fb/r%2F1/");
        assert_eq!(pending_key("alice", "r/1", "PAID"), "pending/alice/r%2F1/PAID");
        assert_eq!(sent_key("alice:r/1:PAID", "email"), "sent/alice:r%2F1:PAID/email");
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
