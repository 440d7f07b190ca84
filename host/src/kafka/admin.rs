//! Operator tools on a cluster: create the declared topics, list and replay dead letters.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Routing;
use crate::protocol::{DeadLetterRecord, Signer, names};

use super::{headers_of, producer_config, to_kafka_headers};

const TIMEOUT: Duration = Duration::from_secs(15);

/// What `topics sync` did to one topic.
#[derive(Debug, Serialize, PartialEq)]
pub struct TopicChange {
    pub topic: String,
    pub partitions: u32,
    pub action: &'static str,
}

/// Creates every declared topic and dead-letter topic that is missing, and adds
/// partitions where the declaration asks for more. Kafka cannot remove partitions, so
/// fewer declared than present is reported and left alone.
pub async fn sync_topics(base: &ClientConfig, routing: &Routing) -> anyhow::Result<Vec<TopicChange>> {
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(base.create().context("creating the Kafka admin client")?);
    let mut wanted: Vec<(String, u32)> = routing
        .topics
        .values()
        .map(|t| (t.name.to_string(), t.partitions))
        .collect();
    for dlq in routing.dead_letter_topics() {
        if !routing.topics.contains_key(&dlq) {
            wanted.push((dlq.to_string(), 1));
        }
    }
    let metadata = cluster_metadata(&admin).await?;
    let existing: std::collections::HashMap<String, usize> = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let mut changes = Vec::new();
    let mut create = Vec::new();
    let mut grow = Vec::new();
    for (topic, partitions) in &wanted {
        match existing.get(topic) {
            None => create.push((topic.clone(), *partitions)),
            Some(&have) if (have as u32) < *partitions => grow.push((topic.clone(), *partitions)),
            Some(&have) => changes.push(TopicChange {
                topic: topic.clone(),
                partitions: have as u32,
                action: if (have as u32) > *partitions {
                    "has more partitions than declared"
                } else {
                    "unchanged"
                },
            }),
        }
    }
    if !create.is_empty() {
        let new: Vec<NewTopic> = create
            .iter()
            .map(|(t, p)| NewTopic::new(t, *p as i32, TopicReplication::Fixed(-1)))
            .collect();
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(topic) | Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let partitions = create.iter().find(|(t, _)| *t == topic).map_or(1, |(_, p)| *p);
                    changes.push(TopicChange {
                        topic,
                        partitions,
                        action: "created",
                    });
                }
                Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
            }
        }
    }
    if !grow.is_empty() {
        let new: Vec<NewPartitions> = grow.iter().map(|(t, p)| NewPartitions::new(t, *p as usize)).collect();
        for result in admin.create_partitions(&new, &options).await? {
            match result {
                Ok(topic) => {
                    let partitions = grow.iter().find(|(t, _)| *t == topic).map_or(1, |(_, p)| *p);
                    changes.push(TopicChange {
                        topic,
                        partitions,
                        action: "partitions added",
                    });
                }
                Err((topic, code)) => anyhow::bail!("cannot add partitions to {topic}: {code}"),
            }
        }
    }
    if !create.is_empty() || !grow.is_empty() {
        wait_for_leaders(&admin, &wanted).await?;
    }
    changes.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(changes)
}

/// The cluster's metadata, read on a blocking thread: the read blocks its thread (up to
/// [`TIMEOUT`] while a broker is slow), and a routing edit of a running host calls
/// [`sync_topics`] from a runtime worker that the routes need.
async fn cluster_metadata(admin: &Arc<AdminClient<DefaultClientContext>>) -> anyhow::Result<Metadata> {
    let admin = admin.clone();
    tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, TIMEOUT))
        .await?
        .context("reading cluster metadata")
}

/// New topics and partitions take a moment to get a leader; until then producing and
/// reading offsets fail. Waits until every wanted partition has one.
async fn wait_for_leaders(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    wanted: &[(String, u32)],
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let metadata = cluster_metadata(admin).await?;
        let pending: Vec<&str> = wanted
            .iter()
            .filter(|(topic, partitions)| {
                let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
                    return true;
                };
                meta.error().is_some()
                    || meta.partitions().len() < *partitions as usize
                    || meta.partitions().iter().any(|p| p.leader() < 0 || p.error().is_some())
            })
            .map(|(topic, _)| topic.as_str())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "topics without a partition leader after {TIMEOUT:?}: {}",
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One dead letter as `dlq list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    pub dlq_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub component: String,
    pub source_topic: String,
    pub source_partition: String,
    pub source_offset: String,
    pub kind: String,
    pub reason: String,
    pub attempts: String,
    pub failed_at_ms: String,
    /// Signed by a host of this database: its record can be trusted for replay.
    pub signed: bool,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    /// In a [`Reading::Newest`] listing, at most [`LISTED_PAYLOAD_BYTES`] of it.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// The payload's whole length.
    pub payload_bytes: usize,
    #[serde(skip)]
    pub headers: Vec<(String, String)>,
}

/// The dead letters read, and how many could not be read in time.
#[derive(Debug, Default)]
pub struct Listing {
    pub letters: Vec<DeadLetter>,
    /// Dead letters below the high watermark not read before the timeout: the listing
    /// is incomplete when this is not 0, and says so.
    pub unread: i64,
    /// Older dead letters left out of a [`Reading::Newest`] listing.
    pub older: i64,
}

/// How much of the dead-letter topics a listing reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    /// The newest [`NEWEST_PER_PARTITION`] letters of each partition, payloads cut to
    /// [`LISTED_PAYLOAD_BYTES`]: what a person browses. A topic of a million letters of
    /// a megabyte each costs the host a few megabytes, not its memory.
    Newest,
    /// Every letter, whole: what a bulk replay sends again.
    All,
}

/// Letters per partition in a [`Reading::Newest`] listing.
pub const NEWEST_PER_PARTITION: i64 = 500;
/// Payload bytes kept per letter in a [`Reading::Newest`] listing (`payload_bytes` says
/// how long it was).
pub const LISTED_PAYLOAD_BYTES: usize = 16 << 10;

fn dlq_reader(base: &ClientConfig) -> anyhow::Result<BaseConsumer> {
    let mut config = base.clone();
    config
        .set("group.id", "switchyard-dlq-reader")
        .set("enable.auto.commit", "false");
    Ok(config.create()?)
}

/// Reads the dead letters currently in `topics` (up to the high watermark; see
/// [`Reading`] for how far back), without joining a group or committing anything,
/// checking each one's signature with `signer`.
pub fn list_dead_letters(
    base: &ClientConfig,
    topics: &[String],
    signer: &Signer,
    reading: Reading,
) -> anyhow::Result<Listing> {
    let consumer = dlq_reader(base)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut older = 0i64;
    let metadata = consumer.fetch_metadata(None, TIMEOUT)?;
    for topic in topics {
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
            anyhow::bail!("dead-letter topic {topic} does not exist (run `switchyard topics sync`)");
        };
        for p in meta.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
            let from = match reading {
                Reading::Newest => low.max(high - NEWEST_PER_PARTITION),
                Reading::All => low,
            };
            if high > from {
                assignment.add_partition_offset(topic, p.id(), Offset::Offset(from))?;
                remaining += high - from;
                older += from - low;
            }
        }
    }
    let mut letters = Vec::new();
    if remaining == 0 {
        return Ok(Listing {
            older,
            ..Listing::default()
        });
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut highs = std::collections::HashMap::new();
    for element in assignment.elements() {
        let (_, high) = consumer.fetch_watermarks(element.topic(), element.partition(), TIMEOUT)?;
        highs.insert((element.topic().to_string(), element.partition()), high);
    }
    while remaining > 0 && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let key = (message.topic().to_string(), message.partition());
        if message.offset() >= highs[&key] {
            continue;
        }
        remaining -= 1;
        let mut letter = dead_letter_of(&message, signer);
        if reading == Reading::Newest && letter.payload.len() > LISTED_PAYLOAD_BYTES {
            letter.payload.truncate(LISTED_PAYLOAD_BYTES);
            letter.payload.shrink_to_fit();
        }
        letters.push(letter);
    }
    letters.sort_by(|a, b| (&a.dlq_topic, a.partition, a.offset).cmp(&(&b.dlq_topic, b.partition, b.offset)));
    Ok(Listing {
        letters,
        unread: remaining,
        older,
    })
}

/// The dead letter at `topic[partition]@offset`, whole, read straight from there: None
/// when the partition holds no message at that offset (any more).
pub fn read_dead_letter(
    base: &ClientConfig,
    topic: &str,
    partition: i32,
    offset: i64,
    signer: &Signer,
) -> anyhow::Result<Option<DeadLetter>> {
    let consumer = dlq_reader(base)?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
    if offset < low || offset >= high {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        if message.offset() == offset {
            return Ok(Some(dead_letter_of(&message, signer)));
        }
        if message.offset() > offset {
            return Ok(None); // compacted or a transaction marker: no letter there
        }
    }
    anyhow::bail!("{topic}[{partition}]@{offset} could not be read within {TIMEOUT:?}; try again")
}

fn dead_letter_of(message: &BorrowedMessage<'_>, signer: &Signer) -> DeadLetter {
    let headers = headers_of(message);
    let key = message.key().map(<[u8]>::to_vec);
    let payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
    let signed = signer.verify(message.topic(), key.as_deref(), &payload, &headers);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    DeadLetter {
        dlq_topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        event_id: header(names::EVENT_ID),
        component: header(names::DLQ_COMPONENT),
        source_topic: header(names::DLQ_TOPIC),
        source_partition: header(names::DLQ_PARTITION),
        source_offset: header(names::DLQ_OFFSET),
        kind: header(names::DLQ_KIND),
        reason: header(names::DLQ_REASON),
        attempts: header(names::DLQ_ATTEMPTS),
        failed_at_ms: header(names::DLQ_FAILED_AT),
        signed,
        key,
        payload_bytes: payload.len(),
        payload,
        headers,
    }
}

/// Why a dead letter cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "{at} is not signed by a host of this database: its switchyard-dlq-* headers may be forged, so it is not replayed (produce the event to its topic yourself if you trust it)"
    )]
    Unsigned { at: String },
    #[error("{at}: {source}")]
    Malformed {
        at: String,
        source: crate::protocol::ProtocolError,
    },
    #[error(
        "{at} names component {component:?} on topic {topic:?}, which topics.toml does not route; fix the routing or drop the dead letter"
    )]
    NotRouted {
        at: String,
        component: String,
        topic: String,
    },
    #[error("replaying {at} to {topic}[{partition}]: {error}")]
    Send {
        at: String,
        topic: String,
        partition: i32,
        error: rdkafka::error::KafkaError,
    },
}

/// Sends dead letters back to the partition they failed on, for the component that
/// failed them only. Only signed dead letters whose component still routes their topic
/// are replayed; everything is checked before anything is sent. The replay's event id
/// is derived from the dead letter's position, so replaying the same dead letter twice
/// still runs it once.
pub async fn replay(
    base: &ClientConfig,
    routing: &Routing,
    signer: &Signer,
    letters: &[DeadLetter],
) -> Result<usize, ReplayError> {
    let mut plan = Vec::with_capacity(letters.len());
    for letter in letters {
        let at = format!("{}[{}]@{}", letter.dlq_topic, letter.partition, letter.offset);
        if !signer.verify(
            &letter.dlq_topic,
            letter.key.as_deref(),
            &letter.payload,
            &letter.headers,
        ) {
            return Err(ReplayError::Unsigned { at });
        }
        let record = DeadLetterRecord::from_headers(&letter.headers)
            .map_err(|source| ReplayError::Malformed { at: at.clone(), source })?;
        if !routing
            .routes
            .iter()
            .any(|r| r.topic.as_str() == record.topic && r.component.as_str() == record.component)
        {
            return Err(ReplayError::NotRouted {
                at,
                component: record.component,
                topic: record.topic,
            });
        }
        let mut headers: Vec<(String, String)> = letter
            .headers
            .iter()
            .filter(|(n, _)| {
                !n.starts_with(names::DLQ_PREFIX)
                    && n != names::EVENT_ID
                    && n != names::REPLAY_FOR
                    && n != names::SIGNATURE
            })
            .cloned()
            .collect();
        let replay_id = crate::protocol::bounded_event_id(&format!(
            "{}:replay:{}:{}:{}",
            letter.event_id, letter.dlq_topic, letter.partition, letter.offset
        ));
        headers.push((names::EVENT_ID.to_string(), replay_id));
        headers.push((names::REPLAY_FOR.to_string(), record.component.clone()));
        signer.seal(&record.topic, letter.key.as_deref(), &letter.payload, &mut headers);
        plan.push((at, record, headers, letter));
    }
    let producer: FutureProducer = producer_config(base).create().map_err(|error| ReplayError::Send {
        at: "-".into(),
        topic: "-".into(),
        partition: -1,
        error,
    })?;
    for (at, record, headers, letter) in &plan {
        // Back to the partition it was read from: the key's other events live there, and
        // the default partitioner of this client need not agree with the original producer's.
        let mut out = FutureRecord::to(&record.topic)
            .partition(record.partition)
            .payload(&letter.payload)
            .headers(to_kafka_headers(headers));
        if let Some(key) = &letter.key {
            out = out.key(key);
        }
        producer
            .send(out, Timeout::After(TIMEOUT))
            .await
            .map_err(|(error, _)| ReplayError::Send {
                at: at.clone(),
                topic: record.topic.clone(),
                partition: record.partition,
                error,
            })?;
    }
    Ok(plan.len())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rdkafka::mocking::MockCluster;

    use super::*;

    /// A routing edit syncs topics from a runtime worker: a broker slow to answer must
    /// not take that worker from everything else. One thread here, so a blocking read
    /// would stop the ticker for as long as the broker takes.
    #[tokio::test(flavor = "current_thread")]
    async fn syncing_topics_with_a_slow_broker_leaves_the_runtime_free() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.broker_round_trip_time(1, Duration::from_secs(2)).unwrap();
        let routing = Routing::parse(
            std::path::Path::new("topics.toml"),
            "[topics.t]\n[components.c]\nartifact = \"c.wasm\"\n[[routes]]\ntopic = \"t\"\ncomponent = \"c\"\n",
        )
        .unwrap();
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", cluster.bootstrap_servers());
        let ticks = Arc::new(AtomicU32::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        // Whether the sync finishes in this time does not matter, only that others ran.
        let _ = tokio::time::timeout(Duration::from_secs(3), sync_topics(&base, &routing)).await;
        ticker.abort();
        let ticks = ticks.load(Ordering::SeqCst);
        assert!(
            ticks >= 30,
            "the ticker ran {ticks} times in 3 s of syncing (60 if never held up)"
        );
    }
}
