//! The host's Prometheus metrics: one registry, a typed handle per family, and the
//! `/metrics` router. Names follow the OpenTelemetry messaging conventions where they
//! have one and Prometheus habits everywhere (`_total`, `_seconds`, `_bytes`); every
//! family is described in `docs/observability.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Route;
use crate::event::InboundEvent;

/// A route: the topic it consumes and the component it feeds.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub topic: String,
    pub component: String,
}

impl RouteLabels {
    pub fn of(route: &Route) -> RouteLabels {
        RouteLabels {
            topic: route.topic.to_string(),
            component: route.component.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub component: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub topic: String,
    pub component: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterfaceLabels {
    pub interface: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub topic: String,
    /// `parked` (the broker refused the row for good) or `retried`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    /// `exported`, `queue_full` (dropped before export) or `export_failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route template (`/orders/{request_id}`), never the raw path: bounded cardinality.
    pub route: String,
    pub status: u16,
}

/// Seconds buckets from 100 µs to about 15 s.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.5, 14)
}

/// Every family of the host, registered once in [`Metrics::registry`].
pub struct Metrics {
    registry: Registry,
    /// `switchyard_consumer_lag_messages{topic,component,partition}`.
    pub lag_messages: Family<PartitionLabels, Gauge>,
    /// `switchyard_consumer_lag_seconds{topic,component,partition}`.
    pub lag_seconds: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    /// `switchyard_events_total{topic,component,outcome}`.
    pub events: Family<OutcomeLabels, Counter>,
    /// `switchyard_handler_duration_seconds{component,version}`.
    pub handler_duration: Family<ComponentLabels, Histogram>,
    /// `switchyard_host_calls_total{interface}`.
    pub host_calls: Family<InterfaceLabels, Counter>,
    /// `switchyard_instance_memory_peak_bytes`.
    pub memory_peak: Gauge,
    /// `switchyard_outbox_backlog_messages`.
    pub outbox_backlog: Gauge,
    /// `switchyard_outbox_oldest_age_seconds`.
    pub outbox_oldest_age: Gauge<f64, AtomicU64>,
    /// `switchyard_timers_pending`.
    pub timers_pending: Gauge,
    /// `switchyard_relay_sent_total{topic}`.
    pub relay_sent: Family<TopicLabels, Counter>,
    /// `switchyard_relay_failures_total{topic,reason}`.
    pub relay_failures: Family<FailureLabels, Counter>,
    /// `switchyard_dead_letters_total{topic}` (the dead-letter topic).
    pub dead_letters: Family<TopicLabels, Counter>,
    /// `switchyard_trace_spans_total{outcome}`.
    pub trace_spans: Family<SpanLabels, Counter>,
    /// `http_server_request_duration_seconds{method,route,status}`.
    pub http_duration: Family<HttpLabels, Histogram>,
    /// `switchyard_component_info{component,version}`: 1 per loaded version.
    pub component_info: Family<ComponentLabels, Gauge>,
    /// Version of each loaded component, for the labels above.
    versions: RwLock<HashMap<String, String>>,
    /// Timestamp (ms) of the newest message handled per route and partition: the lag in seconds.
    handled_at: RwLock<HashMap<PartitionLabels, AtomicI64>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let histogram =
            || Family::<ComponentLabels, Histogram>::new_with_constructor(|| Histogram::new(duration_buckets()));
        let http_histogram =
            || Family::<HttpLabels, Histogram>::new_with_constructor(|| Histogram::new(duration_buckets()));
        let m = Metrics {
            lag_messages: Family::default(),
            lag_seconds: Family::default(),
            events: Family::default(),
            handler_duration: histogram(),
            host_calls: Family::default(),
            memory_peak: Gauge::default(),
            outbox_backlog: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            timers_pending: Gauge::default(),
            relay_sent: Family::default(),
            relay_failures: Family::default(),
            dead_letters: Family::default(),
            trace_spans: Family::default(),
            http_duration: http_histogram(),
            component_info: Family::default(),
            versions: RwLock::default(),
            handled_at: RwLock::default(),
            registry: Registry::default(),
        };
        registry.register(
            "switchyard_consumer_lag_messages",
            "Messages of a partition not yet handled by a route: high watermark minus the group's committed offset",
            m.lag_messages.clone(),
        );
        registry.register(
            "switchyard_consumer_lag_seconds",
            "How far a route is behind in time on a partition: now minus the timestamp of the newest handled message, 0 when caught up",
            m.lag_seconds.clone(),
        );
        registry.register(
            "switchyard_events",
            "Events handled per route by outcome: committed, duplicate, retried (one per extra try), dead_lettered",
            m.events.clone(),
        );
        registry.register(
            "switchyard_handler_duration_seconds",
            "Wall time of one run of a component (instantiation, handle, staging its effects; not the commit) per component and version",
            m.handler_duration.clone(),
        );
        registry.register(
            "switchyard_host_calls",
            "Host functions called by components, per WIT interface",
            m.host_calls.clone(),
        );
        registry.register(
            "switchyard_instance_memory_peak_bytes",
            "Largest linear memory any component instance asked for since the host started",
            m.memory_peak.clone(),
        );
        registry.register(
            "switchyard_outbox_backlog_messages",
            "Outbox rows committed but not yet relayed to Kafka (parked rows excluded)",
            m.outbox_backlog.clone(),
        );
        registry.register(
            "switchyard_outbox_oldest_age_seconds",
            "Age of the oldest outbox row not yet relayed, 0 when the outbox is empty",
            m.outbox_oldest_age.clone(),
        );
        registry.register(
            "switchyard_timers_pending",
            "Timers scheduled and not yet fired",
            m.timers_pending.clone(),
        );
        registry.register(
            "switchyard_relay_sent",
            "Outbox rows the broker acknowledged, per topic",
            m.relay_sent.clone(),
        );
        registry.register(
            "switchyard_relay_failures",
            "Outbox rows the broker did not take, per topic and reason (parked: refused for good; retried: sent again later)",
            m.relay_failures.clone(),
        );
        registry.register(
            "switchyard_dead_letters",
            "Events sent to a dead-letter topic, per dead-letter topic",
            m.dead_letters.clone(),
        );
        registry.register(
            "switchyard_trace_spans",
            "Spans handed to the OTLP exporter, by outcome (exported; queue_full: dropped because OTEL_BSP_MAX_QUEUE_SIZE spans waited; export_failed: the collector refused or did not answer)",
            m.trace_spans.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Gateway requests by method, route template and status, with their duration",
            m.http_duration.clone(),
        );
        registry.register(
            "switchyard_component_info",
            "Active component versions (1 per component and version)",
            m.component_info.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String never fails");
        out
    }

    /// Counts `n` spans with `outcome` (see [`SpanLabels`]).
    pub fn spans(&self, outcome: &'static str, n: u64) {
        self.spans_counter(outcome).inc_by(n);
    }

    /// The counter of spans with `outcome`, to keep where spans are counted one by one.
    pub fn spans_counter(&self, outcome: &'static str) -> Counter {
        self.trace_spans.get_or_create(&SpanLabels { outcome }).clone()
    }

    /// Records a loaded component's version (the info metric and the duration label).
    pub fn component_loaded(&self, component: &str, version: &str) {
        let previous = self
            .versions
            .write()
            .expect("versions lock")
            .insert(component.to_string(), version.to_string());
        if let Some(previous) = previous.filter(|p| p != version) {
            self.component_info.remove(&ComponentLabels {
                component: component.to_string(),
                version: previous,
            });
        }
        self.component_info
            .get_or_create(&ComponentLabels {
                component: component.to_string(),
                version: version.to_string(),
            })
            .set(1);
    }

    /// A component a routing edit removed: it has no active version any more.
    pub fn component_removed(&self, component: &str) {
        if let Some(version) = self.versions.write().expect("versions lock").remove(component) {
            self.component_info.remove(&ComponentLabels {
                component: component.to_string(),
                version,
            });
        }
    }

    /// The version of `component` as last loaded, `unknown` before.
    pub fn version_of(&self, component: &str) -> String {
        self.versions
            .read()
            .expect("versions lock")
            .get(component)
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    }

    /// One invocation of `component` took `elapsed`.
    pub fn handler_duration(&self, component: &str, version: &str, elapsed: Duration) {
        if !super::enabled() {
            return;
        }
        let labels = ComponentLabels {
            component: component.to_string(),
            version: version.to_string(),
        };
        self.handler_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an event of `route` by outcome.
    pub fn event(&self, route: &Route, outcome: &'static str) {
        if !super::enabled() {
            return;
        }
        self.events
            .get_or_create(&OutcomeLabels {
                topic: route.topic.to_string(),
                component: route.component.to_string(),
                outcome,
            })
            .inc();
    }

    /// `event` of `route` is finished as `outcome` (`committed` or `duplicate`): counts
    /// it and remembers its timestamp for the lag in seconds.
    pub fn handled(&self, route: &Route, event: &InboundEvent, outcome: &'static str) {
        if !super::enabled() {
            return;
        }
        self.event(route, outcome);
        let key = PartitionLabels {
            topic: route.topic.to_string(),
            component: route.component.to_string(),
            partition: event.partition,
        };
        if let Some(at) = self.handled_at.read().expect("handled_at lock").get(&key) {
            at.fetch_max(event.timestamp_ms, Ordering::Relaxed);
            return;
        }
        self.handled_at
            .write()
            .expect("handled_at lock")
            .entry(key)
            .or_default()
            .fetch_max(event.timestamp_ms, Ordering::Relaxed);
    }

    /// The timestamp (ms) of the newest message handled on a partition, if any.
    pub fn handled_at(&self, key: &PartitionLabels) -> Option<i64> {
        self.handled_at
            .read()
            .expect("handled_at lock")
            .get(key)
            .map(|at| at.load(Ordering::Relaxed))
    }

    /// `route` dead-lettered an event (to its dead-letter topic).
    pub fn dead_lettered(&self, route: &Route) {
        if !super::enabled() {
            return;
        }
        self.event(route, "dead_lettered");
        self.dead_letters
            .get_or_create(&TopicLabels {
                topic: route.dead_letter.to_string(),
            })
            .inc();
    }

    /// A component called a host function of `interface`.
    pub fn host_call(&self, interface: &'static str) {
        if !super::enabled() {
            return;
        }
        self.host_calls.get_or_create(&InterfaceLabels { interface }).inc();
    }

    /// An instance asked for `bytes` of linear memory.
    pub fn memory_grew(&self, bytes: usize) {
        if !super::enabled() {
            return;
        }
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.memory_peak.inner().fetch_max(bytes, Ordering::Relaxed);
    }

    /// The broker's answer to one relayed row: `None` when it took it.
    pub fn relayed(&self, topic: &str, failure: Option<&'static str>) {
        if !super::enabled() {
            return;
        }
        match failure {
            None => self
                .relay_sent
                .get_or_create(&TopicLabels { topic: topic.into() })
                .inc(),
            Some(reason) => self
                .relay_failures
                .get_or_create(&FailureLabels {
                    topic: topic.into(),
                    reason,
                })
                .inc(),
        };
    }
}

/// `GET /metrics` in the Prometheus text format.
pub fn router() -> Router {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics().encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_in_the_prometheus_text_format() {
        let m = Metrics::new();
        m.component_loaded("order", "abc");
        m.component_loaded("order", "def");
        m.handler_duration("order", "def", Duration::from_millis(3));
        m.host_call("storage");
        m.relayed("orders", None);
        m.relayed("orders", Some("parked"));
        m.memory_grew(1 << 20);
        m.memory_grew(1 << 10);
        m.spans("exported", 3);
        let text = m.encode();
        assert!(
            text.contains("switchyard_component_info{component=\"order\",version=\"def\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("version=\"abc\""),
            "a replaced version is no longer active: {text}"
        );
        m.component_loaded("audit", "123");
        assert!(
            m.encode()
                .contains("switchyard_component_info{component=\"audit\",version=\"123\"} 1")
        );
        m.component_removed("audit");
        assert!(
            !m.encode().contains("component=\"audit\""),
            "a removed component has no active version"
        );
        assert!(text.contains("switchyard_handler_duration_seconds_count{component=\"order\",version=\"def\"} 1"));
        assert!(text.contains("switchyard_host_calls_total{interface=\"storage\"} 1"));
        assert!(text.contains("switchyard_relay_sent_total{topic=\"orders\"} 1"));
        assert!(text.contains("switchyard_relay_failures_total{topic=\"orders\",reason=\"parked\"} 1"));
        assert!(text.contains("switchyard_instance_memory_peak_bytes 1048576"));
        assert!(text.contains("switchyard_trace_spans_total{outcome=\"exported\"} 3"));
        assert!(text.contains("# TYPE switchyard_handler_duration_seconds histogram"));
    }
}
