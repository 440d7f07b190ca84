//! The notification component (ADR-0003 `mini_notif`, notifier and sender roles): wasm
//! glue around [`logic`].
//!
//! Consumes `orders.status`, `users.profile.response` and `notifications.requested`;
//! publishes `users.profile`, `notifications.requested` and `notifications.sent`.

pub mod logic;

use saga_events::{NotificationRequested, OrderStatusUpdated, UserProfileResponse, topics};
use switchyard_sdk::{Event, HandleError, Handler, Router, json, log};

use logic::{Delivery, Pending, ProfileOutcome, Sent};

struct NotifHandler;

impl Handler for NotifHandler {
    fn handle(event: Event) -> Result<(), HandleError> {
        // The event's own timestamp, not the wall clock, so a replay decides the same.
        Router::new("notif", &event)
            .on(topics::ORDERS_STATUS, |update, e| on_status(update, e.timestamp_ms))
            .on(topics::USERS_PROFILE_RESPONSE, |profile, e| {
                on_profile(profile, e.timestamp_ms)
            })
            .on(topics::NOTIFICATIONS_REQUESTED, |req, e| {
                on_notification(req, e.timestamp_ms)
            })
            .finish()
    }
}

fn on_status(update: OrderStatusUpdated, now: i64) -> Result<(), HandleError> {
    let (pending, request) = logic::on_status(&update, now);
    json::put(
        &logic::pending_key(&update.username, &update.request_id, &update.status),
        &pending,
    )?;
    json::publish(topics::USERS_PROFILE, &request.username, &request)
}

fn on_profile(profile: UserProfileResponse, now: i64) -> Result<(), HandleError> {
    let waiting = json::list_prefix::<Pending>(&logic::pending_prefix(&profile.username, &profile.request_id))?;
    if waiting.is_empty() {
        // Someone else's request, or one we answered already.
        switchyard_sdk::debug!("profile response with nothing pending", requestId = profile.request_id);
    }
    for (key, pending) in waiting {
        match logic::on_profile(&pending, &profile, now) {
            ProfileOutcome::Notify(notification) => {
                json::publish(topics::NOTIFICATIONS_REQUESTED, &notification.username, &notification)?;
                json::delete(&key)?;
            }
            ProfileOutcome::Drop(why) => {
                switchyard_sdk::warn!("notification dropped", key = key, reason = why);
                json::delete(&key)?;
            }
            ProfileOutcome::NotThisOne => {}
        }
    }
    Ok(())
}

fn on_notification(req: NotificationRequested, now: i64) -> Result<(), HandleError> {
    let key = logic::sent_key(&req.notification_id);
    let previous = json::get::<Delivery>(&key)?;
    match logic::send(previous.as_ref(), &req, now) {
        Some(Sent { record, event }) => {
            // Absent-only: two concurrent deliveries of one notification cannot both succeed.
            json::put_if_unchanged(&key, None, &record)?;
            json::publish(topics::NOTIFICATIONS_SENT, &event.username, &event)?;
            let level = if event.success {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            switchyard_sdk::log_at!(
                level,
                "notification delivered",
                notificationId = event.notification_id,
                channel = event.channel,
                failureReason = event.failure_reason.as_deref().unwrap_or("")
            );
        }
        None => switchyard_sdk::info!("notification sent before", notificationId = req.notification_id),
    }
    Ok(())
}

switchyard_sdk::export_handler!(NotifHandler);

#[cfg(test)]
mod glue_tests;
