//! Closing a group's consumer without letting librdkafka hang the caller.
//!
//! Dropping a consumer that joined a group commits its offsets and leaves the group, and
//! the drop waits until both are done. When the brokers stop answering, that wait can be
//! forever: librdkafka keeps looking for the group's coordinator
//! (confluentinc/librdkafka#3740). Measured on the embedded broker with it silenced
//! after the consumer joined: the final commit and the drop together ended after 6 and
//! 12 s in some runs and had not ended after 30 s in others; with the broker accepting
//! requests and never answering, the drop alone never ended. On a runtime worker that
//! blocks every task queued behind it, and a route, the gateway or a whole host never
//! finish stopping.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a consumer gets to commit and leave its group when it stops. A broker that
/// answers takes a round trip or two; past this the close goes on by itself.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// How a close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Committed, left the group, dropped.
    InTime,
    /// Still waiting for the brokers after the limit: it goes on, on its own thread, and
    /// ends if they answer again. What it had not committed is read again by the
    /// partitions' next owner, and the inbox absorbs what ran before.
    LeftClosing,
}

/// Runs `close` (the final commit, leaving the group, dropping the consumer) on a thread
/// of its own, and waits for it at most `limit`. `group` names the consumer in the warning
/// logged past the limit.
pub async fn close_within(group: &str, limit: Duration, close: impl FnOnce() + Send + 'static) -> Closed {
    let started = Instant::now();
    let (done, closed) = oneshot::channel();
    // A thread, not `spawn_blocking`: a runtime waits for its blocking tasks when it is
    // dropped, so one stuck close would hang the host's exit.
    let spawned = std::thread::Builder::new().name("kafka-close".into()).spawn(move || {
        close();
        let _ = done.send(());
    });
    if let Err(err) = spawned {
        tracing::warn!(group, error = %err, "no thread to close the consumer on; it is left open");
        return Closed::LeftClosing;
    }
    match tokio::time::timeout(limit, closed).await {
        Ok(_) => {
            tracing::debug!(
                group,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "consumer closed"
            );
            Closed::InTime
        }
        Err(_) => {
            tracing::warn!(
                group,
                limit_ms = limit.as_millis() as u64,
                "the consumer did not commit and leave its group in time (are the brokers answering?); \
                 it goes on closing in the background, and what it did not commit is consumed again"
            );
            Closed::LeftClosing
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::ClientConfig;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::*;

    /// A consumer of group `g` that joined it and stored the offset of one message of `t`.
    async fn joined(bootstrap: &str) -> StreamConsumer {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        producer
            .send(
                FutureRecord::<str, str>::to("t").payload("x").key("k"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "g")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["t"]).unwrap();
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("a message within 20 s")
            .unwrap();
        consumer.store_offset_from_message(&message).unwrap();
        drop(message);
        consumer
    }

    fn final_close(consumer: StreamConsumer) -> impl FnOnce() + Send + 'static {
        move || {
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
            consumer.unsubscribe();
            drop(consumer);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_the_brokers_never_answer_ends_at_the_limit() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let consumer = joined(&cluster.bootstrap_servers()).await;
        // Requests are accepted and never answered (an hour is forever here).
        cluster.broker_round_trip_time(1, Duration::from_secs(3600)).unwrap();
        let started = Instant::now();
        let closed = tokio::time::timeout(
            Duration::from_secs(20),
            close_within("g", Duration::from_secs(2), final_close(consumer)),
        )
        .await
        .expect("the close returned at its limit, not when librdkafka gave up");
        assert_eq!(closed, Closed::LeftClosing);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // The consumer's thread still waits for the broker; the mock cluster must outlive it.
        std::mem::forget(cluster);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_the_brokers_answer_commits_before_it_returns() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let consumer = joined(&bootstrap).await;
        let closed = close_within("g", Duration::from_secs(15), final_close(consumer)).await;
        assert_eq!(closed, Closed::InTime);
        // The stored offset was committed: the group resumes after the message.
        let reader: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "g")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition("t", 0);
        let committed = reader.committed_offsets(list, Duration::from_secs(10)).unwrap();
        assert_eq!(
            committed.find_partition("t", 0).unwrap().offset(),
            rdkafka::Offset::Offset(1)
        );
    }
}
