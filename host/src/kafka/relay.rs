//! The outbox relay, the timer pump and retention.
//!
//! The relay produces committed outbox rows to Kafka and marks them sent only after the
//! broker acknowledged them. A crash in between produces them again with the same event
//! id; consumers' inboxes absorb the duplicate. It wakes as soon as a transaction with
//! outbox rows commits in this process, and every [`POLL`] for rows other processes
//! wrote. Timers move due rows into the outbox in one transaction, so each fires once.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use crate::store::{Db, OutboxRow, RelayLock, now_ms};

use super::to_kafka_headers;

/// Rows relayed per round: all of them are enqueued in the producer before the first
/// acknowledgement is awaited.
const BATCH: i64 = 512;
/// How often the relay looks for rows written by other processes when nothing woke it:
/// rows of this process wake it at once, rows of other hosts on PostgreSQL through
/// LISTEN/NOTIFY; this poll covers `switchyard gateway` beside `run` on one SQLite file,
/// and a lost notification connection.
const POLL: Duration = Duration::from_millis(50);
const BACKOFF: Duration = Duration::from_millis(500);
/// How often a host that is not the relay tries to become it.
const FOLLOWER_POLL: Duration = Duration::from_secs(1);
/// How often a relay takes its fair share of the outbox shards again.
const REBALANCE: Duration = Duration::from_secs(1);
/// Longest sleep of the timer pump: timers other hosts set are seen this soon.
const TIMER_POLL: Duration = Duration::from_millis(200);

/// Producer settings of the relay: idempotent, acknowledged by all in-sync replicas, and
/// never giving up on a message by time (`message.timeout.ms=0`): a broker that is down
/// holds the batch until it is back, so a message can only fail for a reason that will
/// not pass (too large, no such topic), and is then parked. With the gapless guarantee a
/// failure that could leave a gap in a partition stops the producer instead (a fatal
/// error); it is recreated and the unmarked rows go out again in order.
pub fn relay_producer_config(base: &ClientConfig) -> ClientConfig {
    let mut config = super::producer_config(base);
    config
        .set("message.timeout.ms", "0")
        .set("enable.gapless.guarantee", "true")
        // Larger than any message the host lets in (protocol::limits), so dead letters of
        // the largest events are not refused locally; the broker's topic limit still rules.
        .set("message.max.bytes", "4194304");
    config
}

/// Why a round of the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading or marking the outbox: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the producer failed for good ({0}); it is recreated")]
    ProducerFatal(String),
    #[error("sending outbox row {id} to {topic}: {error}; it is retried")]
    Transient { id: i64, topic: String, error: KafkaError },
}

/// Relays until `shutdown` turns true, then sends what is left once more and returns.
pub async fn run_relay(db: Db, producer_config: ClientConfig, mut shutdown: watch::Receiver<bool>) {
    let me = relay_name();
    let mut producer: Option<FutureProducer> = None;
    let mut lock: Option<RelayLock> = None;
    let mut rebalanced_at: Option<Instant> = None;
    let mut listener = None;
    loop {
        let stopping = *shutdown.borrow();
        if lock.is_none() {
            match db.try_relay_lock().await {
                Ok(Some(l)) => {
                    match l.shards() {
                        Some(shards) => tracing::info!(?shards, "this host relays outbox shards"),
                        None => tracing::info!("this host relays the outbox"),
                    }
                    lock = Some(l);
                    rebalanced_at = Some(Instant::now());
                }
                Ok(None) => {} // another process relays
                Err(err) => tracing::warn!(error = %err, "relay lock failed"),
            }
            if lock.is_none() {
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
        let held = lock.as_mut().expect("taken above");
        if rebalanced_at.is_none_or(|at| at.elapsed() >= REBALANCE) {
            rebalanced_at = Some(Instant::now());
            match held.rebalance().await {
                Ok(true) => tracing::info!(shards = ?held.shards(), "this host now relays outbox shards"),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "lost the relay session; other hosts take its shards");
                    lock = None;
                    continue;
                }
            }
        }
        let active = match &producer {
            Some(p) => p,
            None => match producer_config.create::<FutureProducer>() {
                Ok(p) => producer.insert(p),
                Err(err) => {
                    tracing::error!(error = %err, "cannot create the relay's Kafka producer; retrying");
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            },
        };
        let rows = if held.shards().is_some_and(<[i16]>::is_empty) {
            Vec::new() // every shard is another relay's for now
        } else {
            match held.unsent(&db, BATCH).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(error = %err, "lost the relay session; other hosts take its shards");
                    lock = None;
                    continue;
                }
            }
        };
        let read = rows.len();
        let round = tokio::select! {
            round = relay_rows(&db, active, rows, &me) => round,
            // A broker that is down holds a round forever; shutdown does not wait for it
            // (the unmarked rows go out after the next start).
            _ = shutdown.wait_for(|stop| *stop), if !stopping => continue,
        };
        match round {
            // A full batch: more may wait; some failed: try them again. Otherwise wait, as
            // a commit of this process during the round left a wake-up.
            Ok(n) if n > 0 && (stopping || read as i64 == BATCH || n < read) => continue,
            Ok(_) if stopping => return,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "outbox relay round failed");
                if matches!(err, RelayError::ProducerFatal(_)) {
                    producer = None;
                }
                if stopping {
                    return;
                }
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        }
        if listener.is_none() {
            listener = db.outbox_listener().await.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "cannot listen for other hosts' outbox rows; polling");
                None
            });
        }
        // Another host's rows; this process's own commits notify too, and were signalled
        // in-process already.
        let notified = async {
            match listener.as_mut() {
                Some(l) => loop {
                    match l.recv().await {
                        Ok(n) if n.payload() == db.signals().origin => continue,
                        Ok(_) => break true,
                        Err(_) => break false,
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = db.signals().outbox.notified() => {}
            ok = notified => if !ok { listener = None },
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// What the broker's answer means for a row.
enum Verdict {
    Sent,
    /// The broker will never take it: set it aside with the reason.
    Park(String),
    Retry(KafkaError),
}

fn verdict(error: KafkaError) -> Verdict {
    use RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(
            MessageSizeTooLarge
            | InvalidMessageSize
            | InvalidMessage
            | MessageBatchTooLarge
            | InvalidRecord
            | UnknownTopic
            | UnknownTopicOrPartition
            | UnknownPartition
            | InvalidTopic
            | TopicAuthorizationFailed
            | InvalidArgument,
        ) => Verdict::Park(error.to_string()),
        _ => Verdict::Retry(error),
    }
}

/// The name a relay marks the rows it sent with: host and process.
fn relay_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Sends one batch of every shard (see [`relay_rows`]).
pub async fn relay_once(db: &Db, producer: &FutureProducer) -> Result<usize, RelayError> {
    let rows = db.unsent_outbox(BATCH).await?;
    relay_rows(db, producer, rows, &relay_name()).await
}

/// Sends `rows` (unsent, oldest first): enqueues every row, then awaits the
/// acknowledgements, marks the delivered rows sent by `me` in one statement and parks
/// the refused ones. Returns how many rows were settled (sent or parked).
pub async fn relay_rows(
    db: &Db,
    producer: &FutureProducer,
    rows: Vec<OutboxRow>,
    me: &str,
) -> Result<usize, RelayError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let signer = db.signer();
    let mut pending = Vec::with_capacity(rows.len());
    let mut verdicts: Vec<(&OutboxRow, Verdict)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let message = &row.message;
        let mut headers = message.headers.clone();
        let _send = crate::observe::tracing::send_span(&message.topic, &mut headers);
        signer.seal(&message.topic, message.key.as_deref(), &message.payload, &mut headers);
        let kafka_headers = to_kafka_headers(&headers);
        let mut record = FutureRecord::to(&message.topic)
            .payload(&message.payload)
            .headers(kafka_headers);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        // `send_result` enqueues now; `FutureProducer::send` would only enqueue when
        // awaited, one acknowledgement after another.
        match producer.send_result(record) {
            Ok(delivery) => pending.push((row, delivery)),
            Err((error, _)) => match verdict(error) {
                Verdict::Retry(error) => {
                    // Queue full or the producer is failing: stop here, keep the order.
                    verdicts.push((row, Verdict::Retry(error)));
                    break;
                }
                other => verdicts.push((row, other)),
            },
        }
    }
    for (row, delivery) in pending {
        let v = match delivery.await {
            Ok(Ok(_)) => Verdict::Sent,
            Ok(Err((error, _))) => verdict(error),
            Err(_) => Verdict::Retry(KafkaError::Canceled),
        };
        verdicts.push((row, v));
    }
    let sent: Vec<i64> = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Sent))
        .map(|(row, _)| row.id)
        .collect();
    db.mark_sent(&sent, me).await?;
    let mut settled = sent.len();
    let mut retry = None;
    for (row, v) in verdicts {
        crate::observe::metrics().relayed(
            &row.message.topic,
            match &v {
                Verdict::Sent => None,
                Verdict::Park(_) => Some("parked"),
                Verdict::Retry(_) => Some("retried"),
            },
        );
        match v {
            Verdict::Sent => {}
            Verdict::Park(reason) => {
                tracing::error!(
                    outbox_id = row.id,
                    event_id = %row.event_id,
                    component = %row.component,
                    topic = %row.message.topic,
                    reason = %reason,
                    "the broker refused an outbox row for good; parked (see `switchyard outbox parked`)"
                );
                db.park(row.id, &reason).await?;
                settled += 1;
            }
            Verdict::Retry(error) => {
                retry.get_or_insert(RelayError::Transient {
                    id: row.id,
                    topic: row.message.topic.clone(),
                    error,
                });
            }
        }
    }
    if let Some((code, reason)) = producer.client().fatal_error() {
        return Err(RelayError::ProducerFatal(format!("{code:?}: {reason}")));
    }
    match retry {
        Some(err) if settled == 0 => Err(err),
        _ => Ok(settled),
    }
}

/// Moves due timers into the outbox until `shutdown`: sleeps until the earliest timer is
/// due, or a new timer commits in this process, or [`TIMER_POLL`] passes (timers set by
/// other hosts).
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
        let wait = match db.next_timer_due().await {
            Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(0, TIMER_POLL.as_millis() as i64) as u64),
            _ => TIMER_POLL,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = db.signals().timers.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Prunes inbox claims and sent outbox rows older than `window`, every `every`.
pub async fn run_retention(db: Db, window: Duration, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match db.prune(window, 10_000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, window_s = window.as_secs(), "pruned inbox and outbox"),
            Err(err) => tracing::warn!(error = %err, "pruning failed; retrying later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
