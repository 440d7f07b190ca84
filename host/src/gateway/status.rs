//! The order status cache (ADR steps 10-11): the gateway consumes `orders.status`,
//! stores every status by `requestId` and completes the requests waiting for it.
//!
//! With Redis (`--redis-url`), a status is `SET` and then `PUBLISH`ed, and every replica
//! keeps one subscription open from start-up, so a status consumed by one replica
//! completes a request waiting on another. Without Redis the cache is in-process.
//! A waiter subscribes first and then reads the cache: a status stored before it
//! subscribed is in the cache, one stored after reaches it through the subscription.
//! When the Redis subscription reconnects, waiters read the cache again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;

use crate::kafka::close;

/// Statuses after which an order never changes (docs/events.md, "Order statuses").
pub const FINAL_STATUSES: [&str; 4] = ["PAID", "INSUFFICIENT_FUNDS", "PAYMENT_TIMEOUT", "REJECTED"];
/// How long Redis keeps a status.
const REDIS_TTL_SECS: u64 = 7 * 24 * 3600;
const REDIS_CHANNEL: &str = "switchyard:order-status";
const REDIS_PREFIX: &str = "switchyard:order-status:";
/// Longest wait for Redis to connect or answer a command; it answers in well under a
/// millisecond on a healthy network.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the status subscription pings Redis. A subscribed connection only
/// receives, so without it a Redis that went silent (hung, restarted behind a network that
/// dropped the reset) would leave this replica deaf to the statuses other replicas store,
/// and its waiters would time out, while the subscription still counted as open.
pub const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);
/// How long the gateway's start waits for Redis to connect and the subscription to open.
const SUBSCRIBE_AT_START: Duration = Duration::from_secs(10);
/// How many statuses the in-process cache keeps (oldest dropped first).
const MEMORY_CAPACITY: usize = 100_000;
/// How many bytes of statuses (as JSON) it keeps, whatever their count (oldest dropped first).
const MEMORY_BYTES: usize = 64 << 20;
/// Largest `orders.status` message taken: the order component's are a few hundred bytes,
/// and anything any producer writes there is kept by every gateway replica.
pub const MAX_STATUS_BYTES: usize = 64 << 10;

/// `OrderStatusUpdated` as the gateway keeps and answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatus {
    pub request_id: String,
    /// 0 for a `REJECTED` request (no order was created).
    pub order_id: i64,
    pub username: String,
    /// PAID, INSUFFICIENT_FUNDS, PAYMENT_TIMEOUT, REJECTED, or an update.
    pub status: String,
    #[serde(default)]
    pub previous_status: Option<String>,
    pub updated_at: i64,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

impl OrderStatus {
    pub fn is_final(&self) -> bool {
        FINAL_STATUSES.contains(&self.status.as_str())
    }
}

/// What the local subscription carries.
#[derive(Debug, Clone)]
enum Signal {
    Status(Arc<OrderStatus>),
    /// Statuses may have been missed (a reconnect): read the cache again.
    Resync,
}

/// A cache failure.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cached status of {0:?} is not valid JSON: {1}")]
    Corrupt(String, serde_json::Error),
}

enum Backend {
    Memory(Mutex<Memory>),
    Redis {
        commands: Arc<Commands>,
        /// True while the subscription is open.
        subscribed: watch::Receiver<bool>,
    },
}

#[derive(Default)]
struct Memory {
    /// Each status with its size as JSON.
    map: HashMap<String, (Arc<OrderStatus>, usize)>,
    order: VecDeque<String>,
    /// Sum of the sizes in `map`.
    bytes: usize,
}

/// The status cache shared by the consumer, the waiting requests and the reads.
pub struct StatusCache {
    backend: Backend,
    local: broadcast::Sender<Signal>,
}

/// The outcome of waiting for a final status.
#[derive(Debug)]
pub enum Wait {
    Final(Arc<OrderStatus>),
    /// The reply timeout passed, or the gateway is shutting down.
    Pending,
}

/// A registration for statuses, taken before the request is published.
pub struct Subscription {
    rx: broadcast::Receiver<Signal>,
}

impl StatusCache {
    /// The in-process cache.
    pub fn memory() -> Arc<StatusCache> {
        let (local, _) = broadcast::channel(4096);
        Arc::new(StatusCache {
            backend: Backend::Memory(Mutex::new(Memory::default())),
            local,
        })
    }

    /// The Redis cache; returns once the subscription is open.
    pub async fn redis(url: &str, shutdown: watch::Receiver<bool>) -> Result<Arc<StatusCache>, CacheError> {
        let client = redis::Client::open(url)?;
        let commands = Arc::new(Commands::connect(client.clone()).await?);
        let (local, _) = broadcast::channel(4096);
        let (up, subscribed) = watch::channel(false);
        tokio::spawn(run_subscription(client, local.clone(), up, shutdown));
        let mut ready = subscribed.clone();
        // The subscription must be open before any request waits on it.
        tokio::time::timeout(SUBSCRIBE_AT_START, ready.wait_for(|up| *up))
            .await
            .map_err(|_| {
                CacheError::Redis(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "the Redis subscription did not open within 10 s",
                )))
            })?
            .map_err(|_| {
                CacheError::Redis(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "the Redis subscription task stopped",
                )))
            })?;
        Ok(Arc::new(StatusCache {
            backend: Backend::Redis { commands, subscribed },
            local,
        }))
    }

    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis { .. } => "redis",
        }
    }

    /// Stores a status and tells every waiter (on every replica, with Redis).
    pub async fn put(&self, status: OrderStatus) -> Result<(), CacheError> {
        match &self.backend {
            Backend::Memory(memory) => {
                let size = serde_json::to_vec(&status).map_or(0, |json| json.len());
                let status = Arc::new(status);
                {
                    let mut m = memory.lock().expect("status cache lock");
                    m.bytes += size;
                    match m.map.insert(status.request_id.clone(), (status.clone(), size)) {
                        Some((_, replaced)) => m.bytes -= replaced,
                        None => m.order.push_back(status.request_id.clone()),
                    }
                    while m.order.len() > MEMORY_CAPACITY || (m.bytes > MEMORY_BYTES && m.order.len() > 1) {
                        if let Some(old) = m.order.pop_front()
                            && let Some((_, size)) = m.map.remove(&old)
                        {
                            m.bytes -= size;
                        }
                    }
                }
                let _ = self.local.send(Signal::Status(status));
            }
            Backend::Redis { commands, .. } => {
                let text = serde_json::to_string(&status).expect("a status always serializes");
                let (generation, mut conn) = commands.current();
                // SET before PUBLISH: whoever misses the message finds the key.
                let stored: Result<(), _> = conn
                    .set_ex(format!("{REDIS_PREFIX}{}", status.request_id), &text, REDIS_TTL_SECS)
                    .await;
                commands.check(generation, stored)?;
                let published: Result<i64, _> = conn.publish(REDIS_CHANNEL, &text).await;
                commands.check(generation, published)?;
            }
        }
        Ok(())
    }

    pub async fn get(&self, request_id: &str) -> Result<Option<Arc<OrderStatus>>, CacheError> {
        match &self.backend {
            Backend::Memory(memory) => Ok(memory
                .lock()
                .expect("status cache lock")
                .map
                .get(request_id)
                .map(|(status, _)| status.clone())),
            Backend::Redis { commands, .. } => {
                let (generation, mut conn) = commands.current();
                let text: Option<String> =
                    commands.check(generation, conn.get(format!("{REDIS_PREFIX}{request_id}")).await)?;
                text.map(|t| {
                    serde_json::from_str(&t)
                        .map(Arc::new)
                        .map_err(|e| CacheError::Corrupt(request_id.to_string(), e))
                })
                .transpose()
            }
        }
    }

    /// Registers for statuses; take it before publishing the request.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.local.subscribe(),
        }
    }

    /// Waits up to `timeout` (or until `shutdown`) for the final status of `request_id`.
    pub async fn wait_final(
        &self,
        mut sub: Subscription,
        request_id: &str,
        timeout: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Wait, CacheError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Read the cache after subscribing (and after every possible gap).
            if let Some(status) = self.get(request_id).await?.filter(|s| s.is_final()) {
                return Ok(Wait::Final(status));
            }
            loop {
                if *shutdown.borrow() {
                    return Ok(Wait::Pending);
                }
                tokio::select! {
                    signal = sub.rx.recv() => match signal {
                        Ok(Signal::Status(s)) if s.request_id == request_id && s.is_final() => return Ok(Wait::Final(s)),
                        Ok(Signal::Status(_)) => {}
                        Ok(Signal::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(Wait::Pending),
                    },
                    _ = tokio::time::sleep_until(deadline) => return Ok(Wait::Pending),
                    _ = shutdown.changed() => return Ok(Wait::Pending),
                }
            }
        }
    }

    /// Answers when the cache can be used: Redis answers PING and the subscription is open.
    pub async fn check(&self) -> Result<(), String> {
        match &self.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Redis { commands, subscribed } => {
                if !*subscribed.borrow() {
                    return Err("the Redis subscription is reconnecting".into());
                }
                let (generation, mut conn) = commands.current();
                let pong: Result<String, _> = tokio::time::timeout(
                    REDIS_TIMEOUT + Duration::from_millis(500),
                    redis::cmd("PING").query_async(&mut conn),
                )
                .await
                .map_err(|_| format!("Redis did not answer PING within {} s", REDIS_TIMEOUT.as_secs()))?;
                commands
                    .check(generation, pong)
                    .map(|_| ())
                    .map_err(|e| format!("Redis: {e}"))
            }
        }
    }
}

/// The connection for Redis commands, replaced after a command times out.
///
/// redis-rs's `ConnectionManager` reconnects after a reset or a refused connection, but
/// keeps a connection whose answers time out (it retries such errors on the same
/// connection). A Redis that went silent behind a connection that was never reset (a
/// restart behind a dropped reset, a network that black-holes) would then fail every
/// status read and write long after it answers again; a fresh connection recovers.
struct Commands {
    client: redis::Client,
    current: Mutex<(u64, redis::aio::ConnectionManager)>,
    replacing: std::sync::atomic::AtomicBool,
}

impl Commands {
    async fn connect(client: redis::Client) -> Result<Commands, redis::RedisError> {
        let manager = Self::manager(&client).await?;
        Ok(Commands {
            client,
            current: Mutex::new((0, manager)),
            replacing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn manager(client: &redis::Client) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        // redis-rs waits forever by default: a Redis that accepts and stops answering
        // would hold every status read and write, and the gateway's stop behind them.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        // Bounded as a whole too: the handshake of a new connection to a Redis that
        // accepts and never answers is not covered by either timeout. The bound is that of
        // the subscription at start, so a Redis still starting is waited for as before.
        tokio::time::timeout(
            SUBSCRIBE_AT_START,
            redis::aio::ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
    }

    /// The connection to use, with its generation for [`Commands::check`].
    fn current(&self) -> (u64, redis::aio::ConnectionManager) {
        self.current.lock().expect("redis commands lock").clone()
    }

    /// Passes `result` on; after a timeout, starts replacing the connection of
    /// `generation` (once, in the background: the caller gets its error at once).
    fn check<T>(self: &Arc<Self>, generation: u64, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(err) = &result
            && err.is_timeout()
            && !self.replacing.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let this = self.clone();
            tokio::spawn(async move {
                match Self::manager(&this.client).await {
                    Ok(manager) => {
                        let mut current = this.current.lock().expect("redis commands lock");
                        if current.0 == generation {
                            *current = (generation + 1, manager);
                            tracing::info!("Redis timed out; commands use a new connection");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "Redis timed out and reconnecting failed; retried at the next timeout")
                    }
                }
                this.replacing.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        result
    }
}

/// Keeps the Redis subscription open, reconnecting after failures, and fans its
/// messages out to this replica's waiters.
async fn run_subscription(
    client: redis::Client,
    local: broadcast::Sender<Signal>,
    up: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let connected = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(REDIS_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let connected = match tokio::time::timeout(REDIS_TIMEOUT, connected).await {
            Ok(connected) => connected,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "Redis did not answer SUBSCRIBE in time",
            ))),
        };
        match connected {
            Ok(pubsub) => {
                let _ = up.send(true);
                // Anything published while we were away is in the cache.
                let _ = local.send(Signal::Resync);
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.tick().await; // the first tick is now
                loop {
                    tokio::select! {
                        _ = ping.tick() => {
                            match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(err)) => {
                                    tracing::warn!(error = %err, "Redis status subscription failed its ping");
                                    break;
                                }
                                Err(_) => {
                                    tracing::warn!(
                                        limit_ms = REDIS_TIMEOUT.as_millis() as u64,
                                        "Redis did not answer the status subscription's ping in time"
                                    );
                                    break;
                                }
                            }
                        }
                        message = messages.next() => match message {
                            Some(message) => {
                                let payload: String = match message.get_payload() {
                                    Ok(p) => p,
                                    Err(err) => { tracing::warn!(error = %err, "unreadable status message"); continue; }
                                };
                                match serde_json::from_str::<OrderStatus>(&payload) {
                                    Ok(status) => { let _ = local.send(Signal::Status(Arc::new(status))); }
                                    Err(err) => tracing::warn!(error = %err, "status message is not an OrderStatusUpdated"),
                                }
                            }
                            None => break,
                        },
                        _ = shutdown.changed() => return,
                    }
                }
                let _ = up.send(false);
                tracing::warn!("Redis status subscription closed; reconnecting");
            }
            Err(err) => tracing::warn!(error = %err, "Redis status subscription failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Consumer settings for `orders.status`: one group shared by the replicas, offsets
/// stored only after the status is in the cache.
pub fn consumer_config(base: &ClientConfig, group: &str) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    config
}

/// Consumes `orders.status` into the cache until `shutdown`, then commits and leaves
/// `group` (bounded by [`close::CLOSE_LIMIT`], see [`close`]).
pub async fn run_consumer(
    consumer: StreamConsumer,
    group: String,
    cache: Arc<StatusCache>,
    shutdown: watch::Receiver<bool>,
) {
    consume(&consumer, &cache, shutdown).await;
    close::close_within(&group, close::CLOSE_LIMIT, move || drop(consumer)).await;
}

/// The status an `orders.status` message carries, or why it is skipped.
fn status_of(payload: &[u8]) -> Result<OrderStatus, String> {
    if payload.len() > MAX_STATUS_BYTES {
        return Err(format!(
            "{} bytes, larger than any status (at most {MAX_STATUS_BYTES})",
            payload.len()
        ));
    }
    serde_json::from_slice(payload).map_err(|err| format!("not an OrderStatusUpdated: {err}"))
}

async fn consume(consumer: &StreamConsumer, cache: &StatusCache, mut shutdown: watch::Receiver<bool>) {
    loop {
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.changed() => return,
        };
        let message = match message {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, "reading orders.status failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match status_of(message.payload().unwrap_or_default()) {
            Ok(status) => {
                let span =
                    tracing::info_span!("order status", request_id = %status.request_id, status = %status.status);
                let _enter = span.enter();
                // Keep trying: skipping a status would leave its request waiting.
                let mut backoff = Duration::from_millis(100);
                loop {
                    match cache.put(status.clone()).await {
                        Ok(()) => break,
                        Err(err) => {
                            tracing::warn!(error = %err, "caching the status failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = shutdown.changed() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                tracing::debug!("status cached");
            }
            // Not ours to fix: notif reads the same topic; log it and move on.
            Err(err) => tracing::warn!(
                error = %err,
                partition = message.partition(),
                offset = message.offset(),
                "orders.status message skipped"
            ),
        }
        if let Err(err) = consumer.store_offset(message.topic(), message.partition(), message.offset()) {
            tracing::warn!(error = %err, "storing the orders.status offset failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, s: &str) -> OrderStatus {
        OrderStatus {
            request_id: id.into(),
            order_id: 1,
            username: "u".into(),
            status: s.into(),
            previous_status: None,
            updated_at: 1,
            metadata: Map::new(),
        }
    }

    /// Statuses are kept by bytes as well as by count: a producer writing big statuses
    /// to orders.status cannot grow a replica's memory past the budget.
    #[tokio::test]
    async fn the_memory_cache_keeps_a_byte_budget() {
        let cache = StatusCache::memory();
        let big = |id: &str| {
            let mut s = status(id, "PAID");
            s.metadata
                .insert("pad".into(), Value::String("x".repeat(MAX_STATUS_BYTES - 200)));
            s
        };
        let count = 2 * MEMORY_BYTES / MAX_STATUS_BYTES;
        for i in 0..count {
            cache.put(big(&format!("r{i}"))).await.unwrap();
        }
        let Backend::Memory(memory) = &cache.backend else {
            unreachable!()
        };
        let (kept, bytes) = {
            let m = memory.lock().unwrap();
            (m.map.len(), m.bytes)
        };
        assert!(bytes <= MEMORY_BYTES && kept < count, "{kept} statuses, {bytes} bytes");
        assert!(
            cache.get(&format!("r{}", count - 1)).await.unwrap().is_some(),
            "the newest stays"
        );
        assert!(cache.get("r0").await.unwrap().is_none(), "the oldest went first");
        // Replacing a status counts its new size, not both.
        cache.put(status(&format!("r{}", count - 1), "PAID")).await.unwrap();
        assert!(memory.lock().unwrap().bytes < bytes);
        // Nor does a status bigger than any the order component writes get in.
        let huge = serde_json::to_vec(&big("huge")).unwrap();
        assert!(status_of(&huge).is_ok());
        let mut padded = big("huge");
        padded.metadata.insert("more".into(), Value::String("x".repeat(300)));
        let err = status_of(&serde_json::to_vec(&padded).unwrap()).unwrap_err();
        assert!(err.contains("larger than any status"), "{err}");
        assert!(status_of(b"[1]").unwrap_err().contains("not an OrderStatusUpdated"));
    }

    #[tokio::test]
    async fn a_status_stored_before_the_wait_is_found_and_one_after_completes_it() {
        let cache = StatusCache::memory();
        let (_stop, shutdown) = watch::channel(false);
        cache.put(status("early", "PAID")).await.unwrap();
        let sub = cache.subscribe();
        let found = cache
            .wait_final(sub, "early", Duration::from_secs(1), shutdown.clone())
            .await
            .unwrap();
        assert!(matches!(found, Wait::Final(s) if s.status == "PAID"));

        let sub = cache.subscribe();
        let c = cache.clone();
        let writer = tokio::spawn(async move {
            c.put(status("late", "PENDING_VALIDATION")).await.unwrap();
            c.put(status("other", "PAID")).await.unwrap();
            c.put(status("late", "REJECTED")).await.unwrap();
        });
        let found = cache
            .wait_final(sub, "late", Duration::from_secs(5), shutdown.clone())
            .await
            .unwrap();
        assert!(matches!(found, Wait::Final(s) if s.status == "REJECTED"));
        writer.await.unwrap();

        let sub = cache.subscribe();
        let pending = cache
            .wait_final(sub, "never", Duration::from_millis(50), shutdown)
            .await
            .unwrap();
        assert!(matches!(pending, Wait::Pending));
    }

    /// The gateway's stop waits for this consumer; librdkafka can wait forever to commit
    /// and leave a group whose brokers stopped answering (see `kafka::close`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_status_consumer_stops_within_the_close_limit_when_the_broker_stops_answering() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::{FutureProducer, FutureRecord};

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("orders.status", 1, 1).unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", cluster.bootstrap_servers());
        let producer: FutureProducer = base.create().unwrap();
        let payload = serde_json::to_string(&status("r1", "PAID")).unwrap();
        producer
            .send(
                FutureRecord::<str, str>::to("orders.status")
                    .key("r1")
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let consumer: StreamConsumer = consumer_config(&base, "gateway").create().unwrap();
        consumer.subscribe(&["orders.status"]).unwrap();
        let cache = StatusCache::memory();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run_consumer(consumer, "gateway".into(), cache.clone(), shutdown));
        // Cached, so its offset is stored and not yet committed.
        let cached = async {
            while cache.get("r1").await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), cached)
            .await
            .expect("cached within 30 s");
        // Requests are accepted and never answered.
        cluster.broker_round_trip_time(1, Duration::from_secs(3600)).unwrap();
        let started = std::time::Instant::now();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stopped within 30 s")
            .unwrap();
        assert!(
            started.elapsed() < close::CLOSE_LIMIT + Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // The consumer left closing still talks to the cluster.
        std::mem::forget(cluster);
    }
}
