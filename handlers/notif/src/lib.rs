//! The notification component (ADR-0003 `mini_notif`, notifier and sender roles): wasm
//! glue around [`logic`].
//!
//! Consumes `orders.status`, `users.profile.response`, `notifications.requested` and
//! `notifications.delivered` (outcomes of its e-mails and webhooks); publishes
//! `users.profile`, `notifications.requested` and `notifications.sent`, and asks the host
//! for e-mails and webhooks through `outbound`.

pub mod logic;

use saga_events::{NotificationRequested, OrderStatusUpdated, UserProfileResponse, topics};
use switchyard_sdk::{Event, HandleError, Handler, Router, config, json, log, outbound, storage};

use logic::{Context, Delivery, Outbound, Pending, ProfileOutcome, Send, Sent, Settings};

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
            .on(logic::RESULT_TOPIC, |outcome, e| on_outcome(outcome, e.timestamp_ms))
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
    let settings = Settings::from_config(config::get);
    for channel in logic::channels(&req, &settings) {
        let key = logic::sent_key(&req.notification_id, &channel);
        let previous = json::get::<Delivery>(&key)?;
        match logic::send(previous.as_ref(), &req, &channel, &settings, now) {
            Send::Repeat => {
                switchyard_sdk::info!(
                    "notification sent before",
                    notificationId = req.notification_id,
                    channel = channel
                )
            }
            Send::Report(sent) => {
                if channel == logic::CHANNEL_LOG {
                    switchyard_sdk::info!(
                        "notification",
                        to = sent.record.recipient,
                        subject = req.subject,
                        text = req.content
                    );
                }
                report(&key, None, sent)?;
            }
            Send::Deliver {
                mut record,
                request,
                context,
            } => match ask_host(request, &context) {
                Ok(id) => {
                    record.delivery_id = Some(id);
                    // Absent-only: two concurrent deliveries of one notification cannot both succeed.
                    json::put_if_unchanged(&key, None, &record)?;
                }
                // The host could not record it: the event is retried.
                Err(outbound::Error::Unavailable(why)) => return Err(HandleError::retryable(why)),
                // Refused by the host (outside reach, a bad address): retrying cannot help.
                Err(refused) => report(&key, None, logic::finish(record, Err(outbound::reason(&refused)), now))?,
            },
        }
    }
    Ok(())
}

/// Asks the host to deliver `request`; its outcome comes back on the result topic.
fn ask_host(request: Outbound, context: &Context) -> Result<String, outbound::Error> {
    let context = serde_json::to_string(context).expect("a context serializes");
    match request {
        Outbound::Email {
            relay,
            sender,
            to,
            subject,
            text,
        } => outbound::send_email(
            outbound::Email {
                relay,
                sender,
                recipients: vec![to],
                reply_to: None,
                subject,
                text,
            },
            logic::RESULT_TOPIC,
            &context,
        ),
        Outbound::Webhook { url, body } => outbound::post_json(&url, &body, logic::RESULT_TOPIC, &context),
    }
}

fn on_outcome(outcome: outbound::Outcome, now: i64) -> Result<(), HandleError> {
    let context: Context = serde_json::from_str(&outcome.context)
        .map_err(|e| HandleError::fatal(format!("outcome {} has a foreign context: {e}", outcome.delivery_id)))?;
    let key = logic::sent_key(&context.notification_id, &context.channel);
    // Raw too: the finished record replaces exactly the one read.
    let raw = storage::get(&key)?;
    let record = match raw.as_deref().map(serde_json::from_slice::<Delivery>) {
        Some(Ok(record)) => Some(record),
        Some(Err(e)) => return Err(HandleError::fatal(format!("{key}: unreadable record: {e}"))),
        None => None,
    };
    match logic::on_outcome(record.as_ref(), &outcome, now) {
        Some(sent) => report(&key, raw.as_deref(), sent),
        None => {
            switchyard_sdk::warn!("outcome for no waiting delivery", deliveryId = outcome.delivery_id);
            Ok(())
        }
    }
}

/// Stores the finished record (if the stored one is still `previous`) and publishes the
/// report.
fn report(key: &str, previous: Option<&[u8]>, Sent { record, event }: Sent) -> Result<(), HandleError> {
    json::put_if_unchanged(key, previous, &record)?;
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
    Ok(())
}

switchyard_sdk::export_handler!(NotifHandler);

#[cfg(test)]
mod glue_tests;
