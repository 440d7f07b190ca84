//! The glue of lib.rs on the SDK's in-memory host, natively: a status update becomes a
//! profile request, the profile a notification, the notification one delivery.

use saga_events::{NotificationRequested, NotificationSent, UserProfileRequested, topics};
use serde_json::{Value, json};
use switchyard_sdk::testing::{TestHost, event};

use super::NotifHandler;

fn host() -> TestHost {
    TestHost::new().allow_publishing(&[
        topics::USERS_PROFILE,
        topics::NOTIFICATIONS_REQUESTED,
        topics::NOTIFICATIONS_SENT,
    ])
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
    let _: Value = host.get_json(&format!("sent/{}", sent[0].notification_id)).unwrap();
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
