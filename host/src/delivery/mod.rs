//! The delivery worker: carries out the outbound effects (wit `outbound`) that committed
//! invocations recorded, after the commit and at least once.
//!
//! - Claim: due rows are leased ([`Db::claim_effects`]), so hosts sharing a database do
//!   not work on one row at once; a host that dies mid-delivery lets the lease run out
//!   and another tries again, with the same idempotency key.
//! - Idempotency: the delivery id goes out on every attempt, as the `Idempotency-Key`
//!   header ([`http`]) or as `Message-ID: <id@switchyard>` ([`smtp`]), so a receiver can
//!   tell a retry from a new request.
//! - Retries: a transient failure (connection refused, timeout, HTTP 5xx/408/425/429, SMTP 4xx)
//!   waits an exponentially growing pause (the component's `reach.retry`); after the last
//!   attempt the delivery is a dead letter. A permanent refusal (HTTP 4xx, SMTP 5xx) ends
//!   it at once.
//! - Outcome: finishing a delivery writes its outcome event to the outbox in the same
//!   transaction, once ([`Db::finish_effect`]), so the component hears exactly once.
//!
//! Woken in-process when a transaction with effects commits, and by a poll otherwise
//! (rows committed by other hosts, retries coming due).

pub mod http;
pub mod smtp;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::RetryPolicy;
use crate::event::{TraceContext, headers};
use crate::store::{ClaimedEffect, Db, OutboundMessage, now_ms};

/// How the worker runs. The retry policy is per component (`reach.retry`), stored with
/// each row.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest pause between looks at the table when nothing wakes the worker.
    pub poll: Duration,
    /// How long a claimed row is the worker's; longer than any attempt can take.
    pub lease: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Bound of one HTTP attempt (connect to last byte).
    pub http_timeout: Duration,
    /// Bound of one SMTP attempt.
    pub smtp_timeout: Duration,
    /// How long finished deliveries are kept for operators.
    pub keep_done: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(120),
            concurrency: 16,
            http_timeout: Duration::from_secs(30),
            smtp_timeout: Duration::from_secs(60),
            keep_done: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A recorded request, as stored in `effects.request` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Request {
    Http(http::HttpRequest),
    Email(smtp::Email),
}

impl Request {
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Http(_) => "http",
            Request::Email(_) => "email",
        }
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// Accepted (HTTP 2xx, SMTP 250).
    Delivered { status: u16 },
    /// Refused for good: trying again cannot help.
    Refused { status: Option<u16>, reason: String },
    /// Failed for now: worth another attempt.
    Failed { status: Option<u16>, reason: String },
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Finish with this outcome (`delivered`, `failed`, `dead`) and event.
    Finish { outcome: &'static str, event: Outcome },
    /// Try again after this pause.
    RetryIn { delay: Duration, reason: String },
}

/// The outcome event the component receives on its result topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub delivery_id: String,
    pub kind: String,
    pub success: bool,
    /// HTTP status or SMTP reply code of the last attempt, when there was one.
    pub status: Option<u16>,
    /// Why it failed; none on success.
    pub reason: Option<String>,
    pub attempts: u32,
    pub context: String,
    pub finished_at: i64,
}

/// The decision after attempt `effect.attempt` went as `attempt`.
pub fn next(effect: &ClaimedEffect, attempt: Attempt, now: i64) -> Next {
    let outcome = |success: bool, status: Option<u16>, reason: Option<String>| Outcome {
        delivery_id: effect.id.clone(),
        kind: effect.kind.clone(),
        success,
        status,
        reason,
        attempts: effect.attempt,
        context: effect.context.clone(),
        finished_at: now,
    };
    match attempt {
        Attempt::Delivered { status } => Next::Finish {
            outcome: "delivered",
            event: outcome(true, Some(status), None),
        },
        Attempt::Refused { status, reason } => Next::Finish {
            outcome: "failed",
            event: outcome(false, status, Some(reason)),
        },
        Attempt::Failed { status, reason } if effect.attempt >= effect.max_attempts => Next::Finish {
            outcome: "dead",
            event: outcome(
                false,
                status,
                Some(format!("gave up after {} attempts: {reason}", effect.attempt)),
            ),
        },
        Attempt::Failed { reason, .. } => {
            let policy = RetryPolicy {
                attempts: effect.max_attempts,
                initial_backoff: Duration::from_millis(effect.initial_backoff_ms.max(1) as u64),
                max_backoff: Duration::from_millis(effect.max_backoff_ms.max(1) as u64),
            };
            Next::RetryIn {
                delay: policy.backoff(effect.attempt),
                reason,
            }
        }
    }
}

/// Runs the worker until `shutdown` turns true. Deliveries in flight then get a few
/// seconds to end; one cut short is tried again later (same idempotency key).
pub async fn run(db: Db, settings: Settings, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let client = http::client(&settings)?;
    let mut inflight: JoinSet<()> = JoinSet::new();
    let mut last_purge = std::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let room = settings.concurrency.saturating_sub(inflight.len());
        if room > 0 {
            match db
                .claim_effects(now_ms(), settings.lease.as_millis() as i64, room as i64)
                .await
            {
                Ok(claimed) => {
                    for effect in claimed {
                        let span = span_of(&effect);
                        let (db, client, settings) = (db.clone(), client.clone(), settings.clone());
                        inflight.spawn(async move { deliver(&db, &client, &settings, effect).await }.instrument(span));
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot claim outbound deliveries; trying again"),
            }
        }
        if last_purge.elapsed() > Duration::from_secs(600) {
            last_purge = std::time::Instant::now();
            let before = now_ms() - settings.keep_done.as_millis() as i64;
            if let Err(err) = db.purge_effects(before).await {
                tracing::warn!(error = %err, "cannot purge finished deliveries");
            }
        }
        let wait = match db.next_effect_due().await {
            Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(0, settings.poll.as_millis() as i64) as u64),
            _ => settings.poll,
        };
        tokio::select! {
            _ = db.signals().effects.notified() => {}
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            _ = tokio::time::sleep(wait) => {}
            changed = shutdown.changed() => if changed.is_err() { break },
        }
    }
    let drain = async { while inflight.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        tracing::info!("deliveries still in flight at shutdown; they are tried again after their lease");
    }
    Ok(())
}

/// The span of one attempt, with the invocation's request id and trace id.
fn span_of(effect: &ClaimedEffect) -> tracing::Span {
    let header = |name: &str| {
        effect
            .result_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let trace_id = header(headers::TRACEPARENT)
        .and_then(|t| TraceContext::parse(t, ""))
        .map(|t| t.trace_id.to_string())
        .unwrap_or_default();
    tracing::info_span!(
        "deliver",
        delivery_id = %effect.id,
        component = %effect.component,
        kind = %effect.kind,
        attempt = effect.attempt,
        request_id = header(headers::REQUEST_ID).unwrap_or(""),
        trace_id = %trace_id,
    )
}

/// One attempt of `effect`, and its bookkeeping.
async fn deliver(db: &Db, client: &reqwest::Client, settings: &Settings, effect: ClaimedEffect) {
    let attempt = match serde_json::from_str::<Request>(&effect.request) {
        Ok(Request::Http(request)) => {
            let traceparent = effect
                .result_headers
                .iter()
                .find(|(n, _)| n == headers::TRACEPARENT)
                .map(|(_, v)| v.as_str());
            http::send(client, &effect.id, &request, traceparent).await
        }
        Ok(Request::Email(email)) => smtp::send(&effect.id, &email, settings.smtp_timeout).await,
        Err(err) => Attempt::Refused {
            status: None,
            reason: format!("stored request is unreadable: {err}"),
        },
    };
    let now = now_ms();
    let result = match next(&effect, attempt, now) {
        Next::Finish { outcome, event } => {
            match &event.reason {
                None => tracing::info!(status = event.status, "delivered"),
                Some(reason) => {
                    tracing::warn!(outcome, status = event.status, reason = %reason, "delivery failed for good")
                }
            }
            let message = OutboundMessage {
                topic: effect.result_topic.clone(),
                key: Some(effect.id.clone().into_bytes()),
                payload: serde_json::to_vec(&event).expect("an outcome serializes"),
                headers: effect.result_headers.clone(),
            };
            db.finish_effect(&effect, outcome, event.reason.as_deref(), &message)
                .await
                .map(|_| ())
        }
        Next::RetryIn { delay, reason } => {
            tracing::info!(retry_in_ms = delay.as_millis() as u64, reason = %reason, "delivery attempt failed; will retry");
            db.retry_effect(&effect.id, now + delay.as_millis() as i64, &reason)
                .await
        }
    };
    if let Err(err) = result {
        // The lease runs out and the row is claimed again: at least once, same key.
        tracing::warn!(error = %err, "cannot record a delivery attempt; it is tried again after its lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(attempt: u32) -> ClaimedEffect {
        ClaimedEffect {
            id: "d1".into(),
            component: "notif".into(),
            kind: "http".into(),
            request: "{}".into(),
            result_topic: "t".into(),
            result_event_id: "e".into(),
            result_headers: vec![],
            context: "c".into(),
            attempt,
            max_attempts: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 150,
        }
    }

    fn failed() -> Attempt {
        Attempt::Failed {
            status: Some(503),
            reason: "busy".into(),
        }
    }

    #[test]
    fn transient_failures_back_off_then_become_dead_letters() {
        assert_eq!(
            next(&effect(1), failed(), 0),
            Next::RetryIn {
                delay: Duration::from_millis(100),
                reason: "busy".into()
            }
        );
        assert!(
            matches!(next(&effect(2), failed(), 0), Next::RetryIn { delay, .. } if delay == Duration::from_millis(150))
        );
        let Next::Finish { outcome, event } = next(&effect(3), failed(), 7) else {
            panic!("the last attempt must finish")
        };
        assert_eq!(outcome, "dead");
        assert!(!event.success);
        assert_eq!(event.reason.as_deref(), Some("gave up after 3 attempts: busy"));
        assert_eq!((event.attempts, event.status, event.finished_at), (3, Some(503), 7));
    }

    #[test]
    fn refusals_end_at_once_and_successes_report_the_status() {
        let refused = Attempt::Refused {
            status: Some(550),
            reason: "no such user".into(),
        };
        let Next::Finish { outcome, event } = next(&effect(1), refused, 0) else {
            panic!("a refusal is final")
        };
        assert_eq!((outcome, event.success, event.status), ("failed", false, Some(550)));
        let Next::Finish { outcome, event } = next(&effect(2), Attempt::Delivered { status: 250 }, 0) else {
            panic!("a success is final")
        };
        assert_eq!((outcome, event.success, event.reason), ("delivered", true, None));
        assert_eq!(event.context, "c");
    }
}
