//! The glue of lib.rs on the SDK's in-memory host, natively: a status update becomes a
//! profile request, the profile a notification, the notification one delivery per
//! channel: at once on the log, through the host's outbound effects for e-mail and
//! webhook, reported from their outcome.

use saga_events::{NotificationRequested, NotificationSent, UserProfileRequested, topics};
use serde_json::{Value, json};
use switchyard_sdk::outbound::Request;
use switchyard_sdk::testing::{TestHost, event};

use super::NotifHandler;

fn host() -> TestHost {
    TestHost::new().allow_publishing(&[
        topics::USERS_PROFILE,
        topics::NOTIFICATIONS_REQUESTED,
        topics::NOTIFICATIONS_SENT,
        crate::logic::RESULT_TOPIC,
    ])
}

fn requested(user: &str) -> Value {
    json!({"notificationId": format!("{user}:r-1:PAID"), "requestId": "r-1", "username": user, "type": "ORDER_PAID",
           "subject": "Order #1 is paid", "content": "Hello", "metadata": {"recipient": format!("{user}@example.org")},
           "scheduledAt": 5})
}

#[test]
fn email_and_webhook_report_what_the_host_delivered() {
    let mut host = host()
        .with_config("channels", "email,webhook")
        .with_config("webhook-url", "http://127.0.0.1:9/hook")
        .allow_reaching(&["http://127.0.0.1:9/"]);
    for _ in 0..2 {
        host.deliver::<NotifHandler>(event(topics::NOTIFICATIONS_REQUESTED, &requested("alice")))
            .unwrap();
    }
    let deliveries = host.state.deliveries.clone();
    assert_eq!(deliveries.len(), 2, "one e-mail and one webhook, not repeated");
    assert!(matches!(&deliveries[0].delivery.request, Request::Email(e) if e.recipients == ["alice@example.org"]));
    assert!(matches!(&deliveries[1].delivery.request, Request::Http(h) if h.url == "http://127.0.0.1:9/hook"));
    assert!(
        host.published_on::<Value>(topics::NOTIFICATIONS_SENT).is_empty(),
        "nothing is reported before the outcome"
    );

    let refused = host.outcome_of(&deliveries[0].id, false, Some("550 mailbox unavailable"));
    let accepted = host.outcome_of(&deliveries[1].id, true, None);
    host.deliver::<NotifHandler>(refused).unwrap();
    host.deliver::<NotifHandler>(accepted).unwrap();
    let sent: Vec<NotificationSent> = host.published_on(topics::NOTIFICATIONS_SENT);
    assert_eq!(sent.len(), 2);
    assert_eq!(
        (
            sent[0].channel.as_str(),
            sent[0].success,
            sent[0].failure_reason.as_deref()
        ),
        ("email", false, Some("550 mailbox unavailable"))
    );
    assert_eq!((sent[1].channel.as_str(), sent[1].success), ("webhook", true));
}

#[test]
fn a_webhook_outside_reach_is_reported_as_failed_not_retried() {
    let mut host = host()
        .with_config("channels", "webhook")
        .with_config("webhook-url", "http://elsewhere.example.com/hook")
        .allow_reaching(&["http://127.0.0.1:9/"]);
    host.deliver::<NotifHandler>(event(topics::NOTIFICATIONS_REQUESTED, &requested("bob")))
        .unwrap();
    assert!(host.state.deliveries.is_empty());
    let sent: Vec<NotificationSent> = host.published_on(topics::NOTIFICATIONS_SENT);
    assert!(!sent[0].success);
    assert!(
        sent[0]
            .failure_reason
            .as_deref()
            .unwrap()
            .starts_with("not-allowed: URL \"http://elsewhere.example.com/hook\""),
        "{sent:?}"
    );
}

#[test]
fn a_paid_order_is_notified_once_by_email() {
    let mut host = host();
    let paid = json!({"requestId": "r-1", "orderId": 1, "username": "alice", "status": "PAID",
                      "previousStatus": "PENDING_VALIDATION", "updatedAt": 5, "metadata": {"amount": 5.0}});
    host.deliver::<NotifHandler>(event(topics::ORDERS_STATUS, &paid))
        .unwrap();
    let asked: Vec<UserProfileRequested> = host.published_on(topics::USERS_PROFILE);
    assert_eq!(
        (asked[0].request_id.as_str(), asked[0].username.as_str()),
        ("r-1", "alice")
    );

    let profile = json!({"requestId": "r-1", "username": "alice", "found": true, "email": "alice@example.org",
                         "displayName": "Alice", "respondedAt": 6});
    host.deliver::<NotifHandler>(event(topics::USERS_PROFILE_RESPONSE, &profile))
        .unwrap();
    let requested: Vec<NotificationRequested> = host.published_on(topics::NOTIFICATIONS_REQUESTED);
    assert_eq!(requested.len(), 1);
    assert!(
        host.state.storage.keys().all(|k| !k.starts_with("pending/")),
        "pending entry consumed"
    );

    let notification = serde_json::to_value(&requested[0]).unwrap();
    for _ in 0..2 {
        host.deliver::<NotifHandler>(event(topics::NOTIFICATIONS_REQUESTED, &notification))
            .unwrap();
    }
    let sent: Vec<NotificationSent> = host.published_on(topics::NOTIFICATIONS_SENT);
    assert_eq!(sent.len(), 1, "a repeated request is delivered once");
    assert!(sent[0].success);
    assert_eq!(sent[0].recipient, "alice@example.org");
    assert_eq!(sent[0].channel, "log", "the default channel needs no server");
    let _: Value = host.get_json(&format!("sent/{}/log", sent[0].notification_id)).unwrap();
}

#[test]
fn two_users_with_the_same_request_id_are_both_notified() {
    let mut host = host();
    for user in ["alice", "bob"] {
        let paid = json!({"requestId": "r-1", "orderId": 1, "username": user, "status": "PAID",
                          "previousStatus": "PENDING_VALIDATION", "updatedAt": 5, "metadata": {}});
        host.deliver::<NotifHandler>(event(topics::ORDERS_STATUS, &paid))
            .unwrap();
    }
    for user in ["alice", "bob"] {
        let profile = json!({"requestId": "r-1", "username": user, "found": true,
                             "email": format!("{user}@example.org"), "displayName": user, "respondedAt": 6});
        host.deliver::<NotifHandler>(event(topics::USERS_PROFILE_RESPONSE, &profile))
            .unwrap();
    }
    let requested: Vec<NotificationRequested> = host.published_on(topics::NOTIFICATIONS_REQUESTED);
    assert_eq!(requested.len(), 2, "neither entry overwrote the other");
    for notification in &requested {
        let notification = serde_json::to_value(notification).unwrap();
        host.deliver::<NotifHandler>(event(topics::NOTIFICATIONS_REQUESTED, &notification))
            .unwrap();
    }
    let sent: Vec<NotificationSent> = host.published_on(topics::NOTIFICATIONS_SENT);
    let mut recipients: Vec<&str> = sent.iter().map(|s| s.recipient.as_str()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["alice@example.org", "bob@example.org"],
        "neither counted as a repeat"
    );
}
