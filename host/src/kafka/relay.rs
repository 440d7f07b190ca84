//! The outbox relay and the timer pump.
//!
//! The relay produces committed outbox rows to Kafka in commit order and marks them
//! sent only after the broker acknowledged them. A crash in between produces them again
//! with the same event id; consumers' inboxes absorb the duplicate. Timers move due rows
//! into the outbox in one transaction, so each fires once.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::watch;

use crate::store::{Db, now_ms};

use super::to_kafka_headers;

/// Rows relayed per round.
const BATCH: i64 = 512;
/// Pause when there is nothing to send, or after a failure.
const IDLE: Duration = Duration::from_millis(10);
const BACKOFF: Duration = Duration::from_millis(500);
/// How often a host that is not the relay tries to become it.
const FOLLOWER_POLL: Duration = Duration::from_secs(1);

/// Relays until `shutdown` turns true, then sends what is left once more and returns.
pub async fn run_relay(db: Db, producer: FutureProducer, mut shutdown: watch::Receiver<bool>) {
    let mut lock = None;
    loop {
        let stopping = *shutdown.borrow();
        if lock.is_none() {
            match db.try_relay_lock().await {
                Ok(Some(l)) => lock = Some(l),
                Ok(None) => {} // another host relays
                Err(err) => tracing::warn!(error = %err, "relay lock failed"),
            }
            if lock.is_none() {
                // Another host is the relay; check now and then whether it is still there.
                if stopping {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOWER_POLL) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        }
        let sent = relay_once(&db, &producer).await;
        match sent {
            Ok(n) if n > 0 => continue,
            Ok(_) if stopping => return,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "outbox relay failed; retrying");
                if stopping {
                    return;
                }
                tokio::time::sleep(BACKOFF).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Sends one batch; returns how many rows were sent.
pub async fn relay_once(db: &Db, producer: &FutureProducer) -> anyhow::Result<usize> {
    let rows = db.unsent_outbox(BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Enqueue the whole batch first (the producer keeps per-partition order), then wait.
    let deliveries: Vec<_> = rows
        .iter()
        .map(|row| {
            let mut record = FutureRecord::to(&row.message.topic)
                .payload(&row.message.payload)
                .headers(to_kafka_headers(&row.message.headers));
            if let Some(key) = &row.message.key {
                record = record.key(key);
            }
            producer.send(record, Timeout::After(Duration::from_secs(30)))
        })
        .collect();
    let mut delivered = Vec::with_capacity(rows.len());
    let mut failure = None;
    for (row, delivery) in rows.iter().zip(deliveries) {
        match delivery.await {
            Ok(_) if failure.is_none() => delivered.push(row.id),
            Ok(_) => {}
            Err((err, _)) => {
                failure.get_or_insert(format!("sending outbox row {} to {}: {err}", row.id, row.message.topic));
            }
        }
    }
    // Only the prefix before a failure is marked, so a retry keeps commit order.
    db.mark_sent(&delivered).await?;
    match failure {
        Some(why) => anyhow::bail!(why),
        None => Ok(delivered.len()),
    }
}

/// Moves due timers into the outbox until `shutdown`.
pub async fn run_timers(db: Db, mut shutdown: watch::Receiver<bool>) {
    loop {
        match db.fire_due_timers(now_ms(), BATCH).await {
            Ok(n) if n > 0 => {
                tracing::debug!(fired = n, "timers fired");
                continue;
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "firing timers failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
