//! Kafka: the broker connection (a real cluster or the embedded mock), consuming routes
//! ([`dispatch`]), relaying the outbox ([`relay`]), and operator tools ([`admin`]).

pub mod admin;
pub mod close;
pub mod dispatch;
pub mod relay;

use std::sync::Arc;

use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::Routing;

/// Where the brokers are.
pub enum Brokers {
    /// A real cluster's bootstrap servers.
    External(String),
    /// librdkafka's in-process mock cluster: the embedded default. It lives as long as
    /// this value, so it must outlive everything that talks to it. It keeps its log in
    /// memory only; `origin` is fresh for every start, so the events of a new embedded
    /// broker (whose offsets start again at 0) are never taken for old ones.
    Embedded {
        cluster: Arc<EmbeddedCluster>,
        origin: String,
    },
}

/// The embedded mock cluster, shareable with the tasks that add topics to it.
pub struct EmbeddedCluster(MockCluster<'static, DefaultProducerContext>);

// SAFETY: librdkafka's mock-cluster calls (topic creation, bootstrap servers) post
// operations to the cluster's own thread and wait for the answer; they are safe to make
// from any thread. The handle is freed once, when the last Arc drops.
unsafe impl Send for EmbeddedCluster {}
unsafe impl Sync for EmbeddedCluster {}

impl EmbeddedCluster {
    /// Creates the topics and dead-letter topics of `routing` it lacks (a topic that
    /// exists keeps its partitions).
    pub fn create_topics(&self, routing: &Routing) -> anyhow::Result<()> {
        let existing: std::collections::BTreeSet<String> = {
            use rdkafka::consumer::Consumer;
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", self.0.bootstrap_servers());
            let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
            let metadata = consumer.fetch_metadata(None, std::time::Duration::from_secs(5))?;
            metadata.topics().iter().map(|t| t.name().to_string()).collect()
        };
        for topic in routing.topics.values() {
            if !existing.contains(topic.name.as_str()) {
                self.0.create_topic(topic.name.as_str(), topic.partitions as i32, 1)?;
            }
        }
        for dlq in routing.dead_letter_topics() {
            if !routing.topics.contains_key(&dlq) && !existing.contains(dlq.as_str()) {
                self.0.create_topic(dlq.as_str(), 1, 1)?;
            }
        }
        Ok(())
    }
}

/// Makes sure a routing's topics exist, on whichever kind of cluster.
#[derive(Clone)]
pub enum TopicMaker {
    External(ClientConfig),
    Embedded(Arc<EmbeddedCluster>),
}

impl TopicMaker {
    pub async fn ensure(&self, routing: &Routing) -> anyhow::Result<()> {
        match self {
            TopicMaker::External(base) => admin::sync_topics(base, routing).await.map(|_| ()),
            TopicMaker::Embedded(cluster) => {
                let (cluster, routing) = (cluster.clone(), routing.clone());
                tokio::task::spawn_blocking(move || cluster.create_topics(&routing)).await?
            }
        }
    }
}

impl Brokers {
    /// Connects to `bootstrap` or, without it, starts the embedded broker with every
    /// topic and dead-letter topic of `routing` created.
    pub fn start(bootstrap: Option<&str>, routing: &Routing) -> anyhow::Result<Brokers> {
        match bootstrap {
            Some(servers) => Ok(Brokers::External(servers.to_string())),
            None => {
                let cluster = MockCluster::new(1)?;
                for topic in routing.topics.values() {
                    cluster.create_topic(topic.name.as_str(), topic.partitions as i32, 1)?;
                }
                for dlq in routing.dead_letter_topics() {
                    if !routing.topics.contains_key(&dlq) {
                        cluster.create_topic(dlq.as_str(), 1, 1)?;
                    }
                }
                tracing::info!(bootstrap = %cluster.bootstrap_servers(), "embedded Kafka broker started");
                Ok(Brokers::Embedded {
                    cluster: Arc::new(EmbeddedCluster(cluster)),
                    origin: format!("embedded-{}", uuid::Uuid::now_v7().simple()),
                })
            }
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Brokers::External(servers) => servers.clone(),
            Brokers::Embedded { cluster, .. } => cluster.0.bootstrap_servers(),
        }
    }

    /// What creates the topics of a routing edit on this cluster.
    pub fn topic_maker(&self) -> TopicMaker {
        match self {
            Brokers::External(_) => TopicMaker::External(self.client_config()),
            Brokers::Embedded { cluster, .. } => TopicMaker::Embedded(cluster.clone()),
        }
    }

    /// The name of the log events come from, part of the fallback event id of messages
    /// without a `switchyard-event-id` (see [`crate::event::InboundEvent::from_message`]):
    /// the cluster id of a real cluster, a fresh id per embedded broker.
    pub async fn origin(&self) -> anyhow::Result<String> {
        match self {
            Brokers::Embedded { origin, .. } => Ok(origin.clone()),
            Brokers::External(_) => {
                let config = self.client_config();
                tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::Consumer;
                    let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
                    consumer
                        .client()
                        .fetch_cluster_id(std::time::Duration::from_secs(10))
                        .ok_or_else(|| anyhow::anyhow!("the cluster did not tell its id within 10 s"))
                })
                .await?
            }
        }
    }

    /// Base client settings for this cluster.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("client.id", "switchyard");
        config
    }

    /// Base settings for consumers of this cluster.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        if let Brokers::Embedded { .. } = self {
            // librdkafka's mock broker answers a fetch only when fetch.wait.max.ms is
            // over, even when an event arrived meanwhile (a real broker answers at once):
            // with the default 500 ms every hop of the embedded saga took ~400 ms.
            config.set("fetch.wait.max.ms", "5");
        }
        config
    }
}

/// Producer settings for everything Switchyard sends: idempotent, acknowledged by all
/// in-sync replicas, so a message is either in the log once or reported failed.
pub fn producer_config(base: &ClientConfig) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // No lingering: the relay enqueues a whole batch before it awaits any
        // acknowledgement, so batches form anyway; waiting only added to every hop.
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000");
    config
}

/// A message's headers as (name, value) pairs, names and values decoded lossily (invalid
/// UTF-8 becomes U+FFFD). Read through librdkafka directly: rdkafka's own header iterator
/// panics on a name that is not UTF-8, which any producer can send.
pub fn headers_of(message: &BorrowedMessage<'_>) -> Vec<(String, String)> {
    use rdkafka::bindings as rd;
    let mut out = Vec::new();
    // SAFETY: the message pointer is valid for the borrow; librdkafka owns the headers
    // and every pointer it hands out lives as long as the message. Names are
    // NUL-terminated; values come with their size.
    unsafe {
        let mut headers: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        if rd::rd_kafka_message_headers(message.ptr(), &mut headers)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return out;
        }
        let count = rd::rd_kafka_header_cnt(headers);
        for idx in 0..count {
            let mut name: *const std::os::raw::c_char = std::ptr::null();
            let mut value: *const std::os::raw::c_void = std::ptr::null();
            let mut size: usize = 0;
            if rd::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                continue;
            }
            let name = String::from_utf8_lossy(std::ffi::CStr::from_ptr(name).to_bytes()).into_owned();
            let value = if value.is_null() {
                String::new()
            } else {
                String::from_utf8_lossy(std::slice::from_raw_parts(value.cast::<u8>(), size)).into_owned()
            };
            out.push((name, value));
        }
    }
    out
}

/// The same pairs as owned Kafka headers.
pub fn to_kafka_headers(headers: &[(String, String)]) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new_with_capacity(headers.len()), |acc, (k, v)| {
            acc.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
}
