//! Gauges sampled by a periodic task rather than computed on the hot path: consumer lag
//! per route and partition (from the broker's watermarks and the group's committed
//! offsets) and the outbox and timer backlogs (from the database).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::metrics::{PartitionLabels, metrics};
use crate::config::{Route, Routing};
use crate::store::{Db, now_ms, on_pool};

/// How often the gauges are sampled unless `SWITCHYARD_METRICS_INTERVAL_MS` says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one answer of the broker.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The sampling interval: `SWITCHYARD_METRICS_INTERVAL_MS`, else 5 s.
pub fn interval() -> Duration {
    std::env::var("SWITCHYARD_METRICS_INTERVAL_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_INTERVAL)
}

/// Samples lag and backlogs every [`interval`] until `shutdown`. `routing` is read at
/// every sample, so routes a live edit adds are sampled from then on and the series of
/// removed ones go away.
pub fn spawn_samplers(
    routing: impl Fn() -> Routing + Send + 'static,
    db: Db,
    consumer_base: rdkafka::ClientConfig,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(sample_until_shutdown(routing, db, consumer_base, shutdown));
}

/// A route being sampled, with its offsets-reading consumer (made once per route: it
/// never joins the group).
type Sampled = (Route, u32, Option<Arc<BaseConsumer>>);

async fn sample_until_shutdown(
    routing: impl Fn() -> Routing,
    db: Db,
    base: ClientConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = interval();
    let mut sampled: HashMap<String, Sampled> = HashMap::new();
    loop {
        if let Err(err) = sample_backlogs(&db).await {
            tracing::debug!(error = %err, "sampling the outbox and timers failed");
        }
        sampled = follow(&routing(), sampled, &base);
        let now: Vec<Sampled> = sampled.values().cloned().collect();
        let lag = tokio::task::spawn_blocking(move || {
            for (route, partitions, consumer) in &now {
                if let Some(consumer) = consumer
                    && let Err(err) = sample_lag(consumer, route, *partitions)
                {
                    tracing::debug!(topic = %route.topic, error = %err, "sampling lag failed");
                }
            }
        });
        tokio::select! {
            _ = lag => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The routes of `routing`, keyed by group, keeping the consumers of routes sampled
/// before; the lag series of routes no longer there are removed.
fn follow(routing: &Routing, mut before: HashMap<String, Sampled>, base: &ClientConfig) -> HashMap<String, Sampled> {
    let mut next = HashMap::new();
    for route in &routing.routes {
        let partitions = routing.topics.get(&route.topic).map_or(1, |t| t.partitions);
        let kept = match before.remove(&route.group) {
            Some((old, old_partitions, consumer)) if old.topic == route.topic => {
                // Same group and topic: only series the route no longer has go.
                if old.component != route.component {
                    forget(&old, 0..old_partitions);
                } else {
                    forget(&old, partitions..old_partitions);
                }
                Some(consumer)
            }
            Some((old, old_partitions, _)) => {
                // The group now reads another topic: the old topic's series go.
                forget(&old, 0..old_partitions);
                None
            }
            None => None,
        };
        let consumer = match kept {
            Some(consumer) => consumer,
            None => crate::kafka::dispatch::consumer_config(base, route)
                .set("client.id", "switchyard-metrics")
                .create::<BaseConsumer>()
                .map_err(|err| tracing::warn!(topic = %route.topic, error = %err, "cannot sample the lag of a route"))
                .ok()
                .map(Arc::new),
        };
        next.insert(route.group.clone(), (route.clone(), partitions, consumer));
    }
    for (route, partitions, _) in before.into_values() {
        forget(&route, 0..partitions);
    }
    next
}

/// Removes the lag series of `route`'s `partitions`.
fn forget(route: &Route, partitions: std::ops::Range<u32>) {
    let m = metrics();
    for partition in partitions {
        let labels = PartitionLabels {
            topic: route.topic.to_string(),
            component: route.component.to_string(),
            partition: partition as i32,
        };
        m.lag_messages.remove(&labels);
        m.lag_seconds.remove(&labels);
        forget_first_seen(&labels);
    }
}

/// Lag of one route on each of its partitions, in messages and in seconds.
fn sample_lag(consumer: &BaseConsumer, route: &Route, partitions: u32) -> Result<(), rdkafka::error::KafkaError> {
    let mut list = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        list.add_partition(route.topic.as_str(), p);
    }
    let committed = consumer.committed_offsets(list, BROKER_TIMEOUT)?;
    let m = metrics();
    for element in committed.elements() {
        let partition = element.partition();
        let (low, high) = consumer.fetch_watermarks(route.topic.as_str(), partition, BROKER_TIMEOUT)?;
        // No committed offset yet: the group starts from the earliest event.
        let at = match element.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        let lag = (high - at).max(0);
        let labels = PartitionLabels {
            topic: route.topic.to_string(),
            component: route.component.to_string(),
            partition,
        };
        m.lag_messages.get_or_create(&labels).set(lag);
        let seconds = if lag == 0 {
            0.0
        } else {
            // Behind by the age of the newest message handled, but never by more than
            // the lag has lasted: after an idle hour one new message is not an hour
            // behind. Never handled here: from the first sample that saw the lag.
            let seen = first_seen(&labels);
            let since = m.handled_at(&labels).map_or(seen, |handled| handled.max(seen));
            ((now_ms() - since).max(0) as f64) / 1000.0
        };
        if lag == 0 {
            forget_first_seen(&labels);
        }
        m.lag_seconds.get_or_create(&labels).set(seconds);
    }
    Ok(())
}

static FIRST_SEEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PartitionLabels, i64>>> =
    std::sync::LazyLock::new(Default::default);

fn first_seen(labels: &PartitionLabels) -> i64 {
    *FIRST_SEEN
        .lock()
        .expect("first-seen lock")
        .entry(labels.clone())
        .or_insert_with(now_ms)
}

fn forget_first_seen(labels: &PartitionLabels) {
    FIRST_SEEN.lock().expect("first-seen lock").remove(labels);
}

/// Outbox backlog and the age of its oldest row; timers pending.
async fn sample_backlogs(db: &Db) -> Result<(), sqlx::Error> {
    let (backlog, oldest): (i64, Option<i64>) = on_pool!(db, |p| {
        sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at_ms) FROM outbox WHERE sent_at_ms IS NULL AND parked_at_ms IS NULL",
        )
        .fetch_one(p)
        .await
    })?;
    let (timers,): (i64,) = on_pool!(db, |p| sqlx::query_as("SELECT COUNT(*) FROM timers").fetch_one(p).await)?;
    let m = metrics();
    m.outbox_backlog.set(backlog);
    m.outbox_oldest_age
        .set(oldest.map_or(0.0, |at| ((now_ms() - at).max(0) as f64) / 1000.0));
    m.timers_pending.set(timers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(topic: &str, component: &str, partitions: u32) -> Routing {
        let text = format!(
            "[topics.\"{topic}\"]\npartitions = {partitions}\n[components.{component}]\nartifact = \"x.wasm\"\n\
             [[routes]]\ntopic = \"{topic}\"\ncomponent = \"{component}\"\ngroup = \"sampler-test\"\n"
        );
        Routing::parse(std::path::Path::new("topics.toml"), &text).unwrap()
    }

    fn series(topic: &str, component: &str, partition: i32) -> bool {
        let labels = PartitionLabels {
            topic: topic.into(),
            component: component.into(),
            partition,
        };
        let m = metrics();
        m.lag_messages.get(&labels).is_some()
    }

    fn sample(routing: &Routing) {
        for route in &routing.routes {
            let partitions = routing.topics.get(&route.topic).map_or(1, |t| t.partitions);
            for partition in 0..partitions as i32 {
                let labels = PartitionLabels {
                    topic: route.topic.to_string(),
                    component: route.component.to_string(),
                    partition,
                };
                metrics().lag_messages.get_or_create(&labels).set(1);
            }
        }
    }

    #[test]
    fn a_route_that_keeps_its_group_leaves_no_series_of_what_it_no_longer_reads() {
        let base = ClientConfig::new();
        let first = routing("sampler.a", "one", 3);
        let sampled = follow(&first, HashMap::new(), &base);
        sample(&first);
        assert!(series("sampler.a", "one", 2));

        // Fewer partitions: the dropped partition's series goes.
        let fewer = routing("sampler.a", "one", 2);
        let sampled = follow(&fewer, sampled, &base);
        assert!(series("sampler.a", "one", 1) && !series("sampler.a", "one", 2));

        // Another component on the same group and topic.
        let other_component = routing("sampler.a", "two", 2);
        let sampled = follow(&other_component, sampled, &base);
        sample(&other_component);
        assert!(!series("sampler.a", "one", 0) && series("sampler.a", "two", 0));

        // Another topic on the same group.
        let other_topic = routing("sampler.b", "two", 2);
        let sampled = follow(&other_topic, sampled, &base);
        sample(&other_topic);
        assert!(!series("sampler.a", "two", 0) && series("sampler.b", "two", 0));

        // The route removed.
        let empty = Routing::parse(std::path::Path::new("topics.toml"), "").unwrap();
        follow(&empty, sampled, &base);
        assert!(!series("sampler.b", "two", 0));
    }
}
