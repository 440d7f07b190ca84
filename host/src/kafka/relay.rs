//! The outbox relay, the timer pump and retention.
//!
//! The relay produces committed outbox rows to Kafka and marks them sent only after the
//! broker acknowledged them. A crash in between produces them again with the same event
//! id; consumers' inboxes absorb the duplicate. It wakes as soon as a transaction with
//! outbox rows commits in this process, and every [`POLL`] for rows other processes
//! wrote. Timers move due rows into the outbox in one transaction, so each fires once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use crate::protocol::Signer;
use crate::store::{Db, OutboxRow, RelayLock, StoreError, now_ms};

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

/// How long a stopping relay keeps sending the rows in hand: shorter than the host's
/// default shutdown grace (30 s), so a silent broker ends the stop cleanly.
pub const LAST_ROUNDS: Duration = Duration::from_secs(10);
/// Rows the relay keeps enqueued in the producer and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 2 * BATCH as usize;
/// How often a relay with rows in flight reads every unsent row again, not only those
/// past what its reads covered: ids are taken at insert, so a row with a lower id
/// (another host's, the gateway's, a timer's) can become visible later.
const FULL_READ: Duration = Duration::from_secs(1);

/// Relays until `shutdown` turns true, then sends what is left once more (for at most
/// [`LAST_ROUNDS`]) and returns.
///
/// Pipelined: rows committed while earlier ones wait for the broker's acknowledgement are
/// read and enqueued at once, behind them in the producer's queue, so per-key order
/// holds. Under `just load 100` on Kafka + PostgreSQL with a broker acknowledging slowly
/// (10 ms median, 26 ms p90, right after it started), rounds that awaited every
/// acknowledgement before reading again left a committed row waiting 23 ms (median) for
/// its send, and the relay sat in those waits 85 % of the time; pipelined, 3 ms.
pub async fn run_relay(db: Db, producer_config: ClientConfig, mut shutdown: watch::Receiver<bool>) {
    let me = relay_name();
    let mut producer: Option<FutureProducer> = None;
    let mut lock: Option<RelayLock> = None;
    let mut rebalanced_at: Option<Instant> = None;
    let mut listener = None;
    let mut flight = InFlight::default();
    // Whether unsent rows may be waiting: after a wake-up, a full read or a refusal.
    let mut look = true;
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
                    look = true;
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
        if !stopping && held.shards().is_some() && rebalanced_at.is_none_or(|at| at.elapsed() >= REBALANCE) {
            // Shards change hands with nothing of theirs in flight, so the next owner of
            // a shard never sends ahead of this relay. The wait for acknowledgements
            // gives way to a stop, whose last rounds are bounded (a broker that never
            // answers held it to the grace period); the shards stay until then.
            let drained = tokio::select! {
                drained = flight.drain(&db, &me) => Some(drained),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            match drained {
                Some(Err(err)) => tracing::warn!(error = %err, "outbox relay failed to mark rows sent"),
                Some(Ok(_)) => {}
                None => continue,
            }
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
        if stopping {
            // The last rounds, each awaited whole, for at most LAST_ROUNDS: the producer
            // never gives up on a message, so a broker that does not answer would hold
            // the stop forever. Rows not marked go out after the next start.
            let last_rounds = async {
                if let Err(err) = flight.drain(&db, &me).await {
                    tracing::warn!(error = %err, "outbox relay failed to mark rows sent");
                }
                loop {
                    let rows = match held.unsent(&db, BATCH, 0).await {
                        Ok(rows) => rows,
                        Err(err) => {
                            tracing::warn!(error = %err, "outbox relay could not read its last rows");
                            return;
                        }
                    };
                    match relay_rows(&db, active, rows, &me).await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => return,
                        Err(err) => {
                            tracing::warn!(error = %err, "outbox relay's last round failed");
                            return;
                        }
                    }
                }
            };
            if tokio::time::timeout(LAST_ROUNDS, last_rounds).await.is_err() {
                tracing::warn!(
                    limit_ms = LAST_ROUNDS.as_millis() as u64,
                    "the brokers did not acknowledge the relay's last rows in time; \
                     they stay unsent and go out after the next start"
                );
            }
            return;
        }
        if look && flight.len() < MAX_IN_FLIGHT && !held.shards().is_some_and(<[i16]>::is_empty) {
            // Past what reads covered, or all, rows in flight included (skipped).
            let full_read = flight.is_empty() || flight.read_all_at.elapsed() >= FULL_READ;
            let (after, limit) = if full_read {
                flight.read_all_at = Instant::now();
                (0, BATCH + flight.len() as i64)
            } else {
                (flight.highest, BATCH)
            };
            match held.unsent(&db, limit, after).await {
                Ok(rows) => {
                    let full = rows.len() as i64 == limit;
                    let refused = flight.enqueue(active, db.signer(), rows);
                    // Refused (queue full, failing producer): look again once
                    // acknowledgements made room, or after a pause when none will come.
                    look = full && !refused;
                    if refused && flight.is_empty() {
                        tokio::time::sleep(BACKOFF).await;
                        look = true;
                    }
                    if look {
                        continue;
                    }
                    if refused {
                        flight.refused = true;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "lost the relay session; other hosts take its shards");
                    if let Err(err) = flight.drain(&db, &me).await {
                        tracing::warn!(error = %err, "outbox relay failed to mark rows sent");
                    }
                    lock = None;
                    continue;
                }
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
            Some(first) = flight.acks.next(), if !flight.is_empty() => {
                let settled = flight.settle(first, &db, &me).await;
                if let Some((code, reason)) = active.client().fatal_error() {
                    tracing::warn!(code = ?code, %reason, "the relay's producer failed for good; it is recreated");
                    producer = None;
                    if let Err(err) = flight.drain(&db, &me).await {
                        tracing::warn!(error = %err, "outbox relay failed to mark rows sent");
                    }
                    tokio::time::sleep(BACKOFF).await;
                    look = true;
                    continue;
                }
                match settled {
                    Ok(Settled { retry: Some(err), .. }) => {
                        tracing::warn!(error = %err, "outbox relay round failed");
                        tokio::time::sleep(BACKOFF).await;
                        look = true;
                    }
                    Ok(_) => look |= std::mem::take(&mut flight.refused),
                    Err(err) => {
                        tracing::warn!(error = %err, "outbox relay failed to mark rows sent");
                        tokio::time::sleep(BACKOFF).await;
                        look = true;
                    }
                }
            }
            _ = db.signals().outbox.notified() => look = true,
            ok = notified => {
                if !ok {
                    listener = None;
                }
                look = true;
            }
            _ = tokio::time::sleep(POLL) => look = true,
            _ = shutdown.changed() => look = true,
        }
    }
}

/// Rows enqueued in the producer whose acknowledgements the relay has not settled.
struct InFlight {
    /// Ids of rows enqueued and not yet marked: a read returns them as unsent until then.
    ids: HashSet<i64>,
    acks: FuturesUnordered<BoxFuture<'static, (OutboxRow, Verdict)>>,
    /// How far reads have covered, in id order: the last row of the last read handled
    /// (enqueued, or skipped as in flight). Incremental reads go on from here. Not the
    /// highest id ever enqueued: after taking over a shard with a backlog longer than
    /// one read, that ran ahead of the backlog's rest, and a key's newer rows went out
    /// before its older ones until the next full read.
    highest: i64,
    /// When every unsent row was last read.
    read_all_at: Instant,
    /// The producer refused a row since the last acknowledgement.
    refused: bool,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            ids: HashSet::new(),
            acks: FuturesUnordered::new(),
            highest: 0,
            read_all_at: Instant::now(),
            refused: false,
        }
    }
}

impl InFlight {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Enqueues `rows` (unsent, oldest first) that are not in flight already; stops at
    /// the first the producer refuses for now, so no later row of its key goes ahead of
    /// it. Rows refused for good are settled with their acknowledgements. Returns whether
    /// one was refused for now.
    fn enqueue(&mut self, producer: &FutureProducer, signer: &Signer, rows: Vec<OutboxRow>) -> bool {
        for row in rows {
            let id = row.id;
            if self.ids.contains(&id) {
                self.highest = id;
                continue;
            }
            let verdict: BoxFuture<'static, (OutboxRow, Verdict)> = match send(producer, signer, &row) {
                Ok(delivery) => Box::pin(async move {
                    let verdict = acknowledged(delivery.await);
                    (row, verdict)
                }),
                Err(Verdict::Retry(_)) => return true,
                Err(other) => Box::pin(std::future::ready((row, other))),
            };
            self.ids.insert(id);
            self.highest = id;
            self.acks.push(verdict);
        }
        false
    }

    /// Settles `first` and every other acknowledgement already in.
    async fn settle(&mut self, first: (OutboxRow, Verdict), db: &Db, me: &str) -> Result<Settled, StoreError> {
        let mut done = vec![first];
        while let Some(Some(next)) = self.acks.next().now_or_never() {
            done.push(next);
        }
        let ids: Vec<i64> = done.iter().map(|(row, _)| row.id).collect();
        let settled = settle(db, me, done).await;
        // Only now: a read before the mark would have returned them as unsent.
        for id in ids {
            self.ids.remove(&id);
        }
        settled
    }

    /// Awaits and settles every row in flight.
    async fn drain(&mut self, db: &Db, me: &str) -> Result<(), StoreError> {
        let mut failed = None;
        while let Some(first) = self.acks.next().await {
            if let Err(err) = self.settle(first, db, me).await {
                failed.get_or_insert(err);
            }
        }
        self.ids.clear();
        failed.map_or(Ok(()), Err)
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
    let mut pending = Vec::with_capacity(rows.len());
    let mut verdicts: Vec<(OutboxRow, Verdict)> = Vec::with_capacity(rows.len());
    for row in rows {
        match send(producer, db.signer(), &row) {
            Ok(delivery) => pending.push((row, delivery)),
            Err(Verdict::Retry(error)) => {
                // Queue full or the producer is failing: stop here, keep the order.
                verdicts.push((row, Verdict::Retry(error)));
                break;
            }
            Err(other) => verdicts.push((row, other)),
        }
    }
    for (row, delivery) in pending {
        verdicts.push((row, acknowledged(delivery.await)));
    }
    let Settled { settled, retry } = settle(db, me, verdicts).await?;
    if let Some((code, reason)) = producer.client().fatal_error() {
        return Err(RelayError::ProducerFatal(format!("{code:?}: {reason}")));
    }
    match retry {
        Some(err) if settled == 0 => Err(err),
        _ => Ok(settled),
    }
}

/// Enqueues one row in the producer (with its `send` span and signature); the error is
/// the verdict on a row the producer would not take.
fn send(producer: &FutureProducer, signer: &Signer, row: &OutboxRow) -> Result<DeliveryFuture, Verdict> {
    let message = &row.message;
    let mut headers = message.headers.clone();
    let _send = crate::observe::tracing::send_span(&message.topic, &mut headers);
    signer.seal(&message.topic, message.key.as_deref(), &message.payload, &mut headers);
    let mut record = FutureRecord::to(&message.topic)
        .payload(&message.payload)
        .headers(to_kafka_headers(&headers));
    if let Some(key) = &message.key {
        record = record.key(key);
    }
    // `send_result` enqueues now; `FutureProducer::send` would only enqueue when
    // awaited, one acknowledgement after another.
    producer.send_result(record).map_err(|(error, _)| verdict(error))
}

/// The verdict on a row from its delivery report.
fn acknowledged<Canceled>(report: Result<OwnedDeliveryResult, Canceled>) -> Verdict {
    match report {
        Ok(Ok(_)) => Verdict::Sent,
        Ok(Err((error, _))) => verdict(error),
        Err(_) => Verdict::Retry(KafkaError::Canceled),
    }
}

/// What settling some verdicts did.
struct Settled {
    /// Rows marked sent or parked.
    settled: usize,
    /// The first row left for a later round, if any.
    retry: Option<RelayError>,
}

/// Marks the sent rows in one statement, parks the refused ones and counts every row.
async fn settle(db: &Db, me: &str, verdicts: Vec<(OutboxRow, Verdict)>) -> Result<Settled, StoreError> {
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
                    topic: row.message.topic,
                    error,
                });
            }
        }
    }
    Ok(Settled { settled, retry })
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

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::store::OutboundMessage;

    /// After taking over a shard whose backlog is longer than one read, the read covers
    /// only the backlog's first rows: incremental reads must go on from there, not from
    /// the highest id this relay had in flight before, or a key's newer rows go out
    /// ahead of its older ones.
    #[tokio::test]
    async fn reads_go_on_from_what_the_last_read_covered_not_from_the_highest_id_in_flight() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        cluster.broker_round_trip_time(1, Duration::from_secs(3600)).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", cluster.bootstrap_servers());
        let producer: FutureProducer = relay_producer_config(&base).create().unwrap();
        let signer = Signer::new(b"test");
        let row = |id: i64| OutboxRow {
            id,
            event_id: format!("e{id}"),
            component: "c".into(),
            message: OutboundMessage {
                topic: "t".into(),
                key: Some(b"k".to_vec()),
                payload: b"{}".to_vec(),
                headers: Vec::new(),
            },
        };
        let mut flight = InFlight::default();
        // This relay's own rows, in flight.
        assert!(!flight.enqueue(&producer, &signer, (5000..5010).map(row).collect()));
        assert_eq!(flight.highest, 5009);
        // A full read after the takeover: the older backlog's first rows, then its own.
        let read: Vec<OutboxRow> = (1000..1100).chain(5000..5010).map(row).collect();
        assert!(!flight.enqueue(&producer, &signer, read));
        assert_eq!(
            flight.highest, 5009,
            "a read that reached the rows in flight covers up to them"
        );
        // A full read that stops inside the backlog covers only that far.
        let read: Vec<OutboxRow> = (1100..1200).map(row).collect();
        assert!(!flight.enqueue(&producer, &signer, read));
        assert_eq!(
            flight.highest, 1199,
            "the next read goes on from the backlog, not from 5009"
        );
        std::mem::forget(producer);
        std::mem::forget(cluster);
    }
}
