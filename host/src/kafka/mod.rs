//! Kafka: the broker connection (a real cluster or the embedded mock), consuming routes
//! ([`dispatch`]), relaying the outbox ([`relay`]), and operator tools ([`admin`]).

pub mod admin;
pub mod dispatch;
pub mod relay;

use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::Routing;

/// Header names of dead letters.
pub mod dlq_headers {
    /// Why the event failed (the handler's reason or the trap).
    pub const REASON: &str = "switchyard-dlq-reason";
    /// retryable | fatal | trap | deadline | memory.
    pub const KIND: &str = "switchyard-dlq-kind";
    /// The component that failed it.
    pub const COMPONENT: &str = "switchyard-dlq-component";
    /// Where the event was read from.
    pub const TOPIC: &str = "switchyard-dlq-topic";
    pub const PARTITION: &str = "switchyard-dlq-partition";
    pub const OFFSET: &str = "switchyard-dlq-offset";
    /// How many times it was tried.
    pub const ATTEMPTS: &str = "switchyard-dlq-attempts";
    /// When it was dead-lettered, epoch ms.
    pub const FAILED_AT: &str = "switchyard-dlq-failed-at";
    /// Prefix of all of the above.
    pub const PREFIX: &str = "switchyard-dlq-";
}

/// Set on a replayed event: only this component's route handles it, so components
/// that handled the original are not run twice.
pub const REPLAY_FOR: &str = "switchyard-replay-for";
/// Set by the host on the event handed to a component: which try this is (1-based).
pub const ATTEMPT: &str = "switchyard-attempt";

/// Where the brokers are.
pub enum Brokers {
    /// A real cluster's bootstrap servers.
    External(String),
    /// librdkafka's in-process mock cluster: the embedded default. It lives as long as
    /// this value, so it must outlive everything that talks to it.
    Embedded(MockCluster<'static, DefaultProducerContext>),
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
                Ok(Brokers::Embedded(cluster))
            }
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Brokers::External(servers) => servers.clone(),
            Brokers::Embedded(cluster) => cluster.bootstrap_servers(),
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
}

/// Producer settings for everything Switchyard sends: idempotent, acknowledged by all
/// in-sync replicas, so a message is either in the log once or reported failed.
pub fn producer_config(base: &ClientConfig) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000");
    config
}

/// Kafka headers as (name, UTF-8 value) pairs; binary values are decoded lossily.
pub fn headers_of(headers: Option<&BorrowedHeaders>) -> Vec<(String, String)> {
    headers
        .map(|h| {
            h.iter()
                .map(|header| {
                    let value = header
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    (header.key.to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
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
